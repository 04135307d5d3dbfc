//! Keeps each TCP service's `failover` entry (see `lb_common::dial`) in
//! line with its state machine and settings: whether its connects are
//! tracked (`dial_tracking`), the backends a connect may take past a
//! suspect one, in the order K3s dials them
//! ([`ServiceMachine::candidates`](crate::policy::state_machine::ServiceMachine::candidates)),
//! and how long a SYN may wait before its backend is suspect
//! (`dial_stall_timeout`, see [`dial_stall`]). Written only when it
//! changes (usually: when a server's state does).

use std::time::Duration;

use lb_common::{Failover, MAX_FAILOVER, failover_flag};
use tracing::{debug, info, warn};

use super::runtime::{ServiceRuntime, WrittenFailover};
use crate::{
    config::{DialStall, Protocol},
    kernel::dataplane::Dataplane,
    policy::dial_stall,
};

/// The stall bound the service's setting and its servers' dial times give
/// now (zero: off).
pub(super) fn stall_bound(service: &ServiceRuntime) -> Duration {
    dial_stall::bound(
        service.config.dial_stall_timeout,
        service.servers.values().map(|r| r.dial_time.smoothed()),
    )
}

/// Rewrites the service's `failover` entry when it changed.
pub(super) fn sync(dataplane: &mut Option<Dataplane>, service: &mut ServiceRuntime) {
    let Some(dataplane) = dataplane.as_mut() else {
        return;
    };
    if service.config.protocol != Protocol::Tcp || !service.in_kernel() {
        // UDP has no dial to observe: its sends never look at the entry;
        // a proxied VIP is not the kernel's.
        return;
    }
    let ids: Vec<u32> = service
        .machine
        .candidates()
        .into_iter()
        .filter_map(|address| service.servers.get(&address).map(|r| r.backend_id))
        .take(MAX_FAILOVER)
        .collect();
    let setting = service.config.dial_stall_timeout;
    let flags = if service.config.dial_tracking {
        failover_flag::TRACK
    } else {
        0
    };
    let mut bound = stall_bound(service);
    if let Some(written) = &service.failover {
        let same_bound = match setting {
            // A smoothed time moves with every dial: keep the written bound
            // until it is off by more than a quarter.
            DialStall::Auto if written.setting == setting => {
                if !dial_stall::worth_writing(written.bound, bound) {
                    bound = written.bound;
                }
                written.bound == bound
            }
            _ => written.setting == setting && written.bound == bound,
        };
        if same_bound && written.ids == ids && written.flags == flags {
            return;
        }
    }
    let mut entry = Failover {
        count: ids.len() as u32,
        flags,
        suspect_after_ns: u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX),
        ..Failover::default()
    };
    entry.backend_ids[..ids.len()].copy_from_slice(&ids);
    match dataplane.maps.failover.set(service.id, entry) {
        Ok(()) => {
            let name = service.config.name.as_str();
            if service.failover.as_ref().is_none_or(|w| w.bound != bound) {
                info!(service = name, stall_after_ms = bound.as_secs_f64() * 1000.0, setting = %setting, tracked = service.config.dial_tracking, "dial stall bound set");
            }
            debug!(service = name, backends = ?ids, "failover list written");
            service.failover = Some(WrittenFailover {
                ids,
                bound,
                flags,
                setting,
            });
        }
        Err(err) => {
            warn!(service = %service.config.name, error = format!("{err:#}"), "could not write the failover list; will retry on the next event");
        }
    }
}
