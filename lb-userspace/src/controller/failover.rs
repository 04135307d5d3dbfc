//! Keeps each TCP service's `failover` entry (see `lb_common::dial`) in
//! line with its state machine: the backends a connect may take past a
//! suspect one, in the order K3s dials them
//! ([`ServiceMachine::candidates`](crate::policy::state_machine::ServiceMachine::candidates)),
//! and how long a SYN may wait before its backend is suspect
//! (`dial_stall_timeout`). Written only
//! when it changes (usually: when a server's state does).

use lb_common::{Failover, MAX_FAILOVER};
use tracing::{debug, warn};

use super::runtime::ServiceRuntime;
use crate::{config::Protocol, kernel::dataplane::Dataplane};

/// Rewrites the service's `failover` entry when its candidates changed.
pub(super) fn sync(dataplane: &mut Dataplane, service: &mut ServiceRuntime) {
    if service.config.protocol != Protocol::Tcp {
        // UDP has no dial to observe: its connects never look at the list.
        return;
    }
    let ids: Vec<u32> = service
        .machine
        .candidates()
        .into_iter()
        .filter_map(|address| service.servers.get(&address).map(|r| r.backend_id))
        .take(MAX_FAILOVER)
        .collect();
    let bound = u64::try_from(service.config.dial_stall_timeout.as_nanos()).unwrap_or(u64::MAX);
    if service
        .failover
        .as_ref()
        .is_some_and(|(written, written_bound)| *written == ids && *written_bound == bound)
    {
        return;
    }
    let mut entry = Failover {
        count: ids.len() as u32,
        suspect_after_ns: bound,
        ..Failover::default()
    };
    entry.backend_ids[..ids.len()].copy_from_slice(&ids);
    match dataplane.maps.failover.set(service.id, entry) {
        Ok(()) => {
            debug!(service = %service.config.name, backends = ?ids, "failover list written");
            service.failover = Some((ids, bound));
        }
        Err(err) => {
            warn!(service = %service.config.name, error = format!("{err:#}"), "could not write the failover list; will retry on the next event");
        }
    }
}
