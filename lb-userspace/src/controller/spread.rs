//! `policy: spread`: keeps each spread service's Maglev table in the kernel's
//! `maglev` map in line with the servers that may take new connections
//! (listed and healthy, preferred or active). Each has weight 1, or with
//! `features.performance_ranking` its score's share of the best
//! ([`ranking::maglev_weights`]).
//!
//! The table is rebuilt only when that set changes, from the table the
//! kernel holds (so a removed server's slots are the only ones that move),
//! and only changed slots are written. While no server qualifies every slot
//! is empty and the kernel uses the service's selected server instead (the
//! failover selection, including fail-open).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use lb_common::{MaglevKey, NO_BACKEND, SERVICE_REMOTE, SERVICE_SPREAD, Service};
use tracing::{info, warn};

use super::runtime::ServiceRuntime;
use crate::{
    config::Policy,
    kernel::dataplane::Dataplane,
    policy::{
        maglev::{self, MaglevBackend},
        ranking,
        state_machine::{ServerState, ServiceMachine},
    },
};

/// The servers that get slots, as `(backend id, address)`, sorted.
fn members(service: &ServiceRuntime) -> Vec<(u32, SocketAddr)> {
    let mut members: Vec<(u32, SocketAddr)> = service
        .machine
        .servers()
        .iter()
        .filter(|s| {
            s.listed
                && matches!(
                    s.state,
                    ServerState::Healthy | ServerState::Preferred | ServerState::Active
                )
        })
        .filter_map(|s| {
            service
                .servers
                .get(&s.address)
                .map(|r| (r.backend_id, s.address))
        })
        .collect();
    members.sort_unstable();
    members
}

/// The Maglev weights of `members` (same order): 1 each, or from their
/// scores while ranking is on.
fn weights(machine: &ServiceMachine, members: &[(u32, SocketAddr)]) -> Vec<u32> {
    if !machine.ranking() {
        return vec![1; members.len()];
    }
    let scores: Vec<Option<u64>> = members
        .iter()
        .map(|&(_, address)| machine.server(address).and_then(|s| s.score))
        .collect();
    ranking::maglev_weights(&scores)
}

/// The `services` entry of a service whose new connections go to
/// `backend_id` (for spread: when the table slot is empty); `remote: true`
/// adds [`SERVICE_REMOTE`].
pub(super) fn entry(service: &ServiceRuntime, backend_id: u32) -> Service {
    let spread = service.config.policy == Policy::Spread;
    let remote = if service.config.remote {
        SERVICE_REMOTE
    } else {
        0
    };
    Service {
        id: service.id,
        backend_id,
        flags: remote | if spread { SERVICE_SPREAD } else { 0 },
        table_size: if spread {
            service.config.maglev_table_size
        } else {
            0
        },
    }
}

/// Brings the service's table in the kernel up to date; returns whether
/// anything was written.
pub(super) fn sync(dataplane: &mut Option<Dataplane>, service: &mut ServiceRuntime) -> bool {
    // Without the kernel's data plane every service is proxied (failover).
    let Some(dataplane) = dataplane.as_mut() else {
        return false;
    };
    let name = service.config.name.clone();
    if service.config.policy != Policy::Spread {
        if service.table.is_empty() {
            return false;
        }
        let old = std::mem::take(&mut service.table);
        remove_slots(dataplane, service.id, 0..old.len(), &name);
        service.table_members.clear();
        service.table_weights.clear();
        return true;
    }
    let size = service.config.maglev_table_size as usize;
    let members = members(service);
    let weights = weights(&service.machine, &members);
    // Unchanged, unless a table adopted after a restart (whose servers are
    // still unchecked, so `members` is empty) names a server that failed or
    // is gone: stop using it.
    let unchanged = members == service.table_members
        && weights == service.table_weights
        && service.table.len() == size;
    if unchanged && (!members.is_empty() || !has_unusable(service)) {
        return false;
    }
    // A table adopted after a restart waits until every server it names has
    // qualified or failed: rebuilding for the first one that qualifies would
    // move the slots of the others, which are about to qualify too. A named
    // server that failed or is gone ends the wait at once.
    if service.table_members.is_empty() && awaits_first_checks(service) && !has_unusable(service) {
        return false;
    }
    // Once they have: an adopted table that spreads over exactly the servers
    // that qualify (with equal weights) is kept as it is, so a restart moves
    // no slot.
    if service.table_members.is_empty()
        && service.table.len() == size
        && !members.is_empty()
        && weights.windows(2).all(|w| w[0] == w[1])
    {
        let named: HashSet<u32> = service
            .table
            .iter()
            .copied()
            .filter(|&id| id != NO_BACKEND)
            .collect();
        let qualifying: HashSet<u32> = members.iter().map(|&(id, _)| id).collect();
        if named == qualifying {
            info!(service = %name, servers = members.len(), "kept the Maglev table adopted from the previous run");
            service.table_members = members;
            service.table_weights = weights;
            return false;
        }
    }
    let table = if members.is_empty() {
        vec![NO_BACKEND; size]
    } else {
        let backends: Vec<MaglevBackend> = members
            .iter()
            .zip(&weights)
            .map(|(&(id, address), &weight)| MaglevBackend {
                id,
                key: address.to_string().into_bytes(),
                weight,
            })
            .collect();
        let previous = (service.table.len() == size).then_some(service.table.as_slice());
        match maglev::build(&backends, service.config.maglev_table_size, previous) {
            Ok(table) => table,
            Err(err) => {
                warn!(service = %name, error = %err, "could not build the Maglev table; keeping the old one");
                return false;
            }
        }
    };
    let mut written = 0usize;
    let mut failed = 0usize;
    for (slot, &backend_id) in table.iter().enumerate() {
        if service.table.get(slot) == Some(&backend_id) {
            continue;
        }
        let result = if backend_id == NO_BACKEND {
            dataplane.maps.maglev.remove(&MaglevKey {
                service_id: service.id,
                slot: slot as u32,
            })
        } else {
            dataplane
                .maps
                .maglev
                .set(service.id, slot as u32, backend_id)
        };
        match result {
            Ok(()) => written += 1,
            Err(err) => {
                failed += 1;
                if failed == 1 {
                    warn!(service = %name, error = format!("{err:#}"), "could not write the Maglev table");
                }
            }
        }
    }
    if service.table.len() > size {
        remove_slots(dataplane, service.id, size..service.table.len(), &name);
    }
    if failed > 0 {
        // Unknown kernel content: write everything on the next change.
        service.table.clear();
        service.table_members.clear();
        service.table_weights.clear();
        return written > 0;
    }
    let servers: Vec<String> = members
        .iter()
        .zip(&weights)
        .map(|((_, a), w)| {
            if service.machine.ranking() {
                format!("{a}*{w}")
            } else {
                a.to_string()
            }
        })
        .collect();
    info!(service = %name, servers = servers.join(","), slots_written = written, "Maglev table updated");
    service.table = table;
    service.table_members = members;
    service.table_weights = weights;
    written > 0
}

/// Whether the kernel's table names a listed server that has not qualified
/// for slots yet but is on its way (unchecked, or recovering after its first
/// passed check): an adopted table before the first verdicts.
fn awaits_first_checks(service: &ServiceRuntime) -> bool {
    let unchecked: HashSet<u32> = service
        .machine
        .servers()
        .iter()
        .filter(|s| s.listed && matches!(s.state, ServerState::Unchecked | ServerState::Recovering))
        .filter_map(|s| service.servers.get(&s.address).map(|r| r.backend_id))
        .collect();
    !unchecked.is_empty() && service.table.iter().any(|id| unchecked.contains(id))
}

/// Whether the kernel's table names a backend that is failed or no longer
/// configured.
fn has_unusable(service: &ServiceRuntime) -> bool {
    let usable: HashSet<u32> = service
        .machine
        .servers()
        .iter()
        .filter(|s| s.listed && s.state != ServerState::Failed)
        .filter_map(|s| service.servers.get(&s.address).map(|r| r.backend_id))
        .collect();
    service
        .table
        .iter()
        .any(|&id| id != NO_BACKEND && !usable.contains(&id))
}

/// Removes `slots` of service `service_id`'s table.
pub(super) fn remove_slots(
    dataplane: &mut Dataplane,
    service_id: u32,
    slots: std::ops::Range<usize>,
    name: &str,
) {
    for slot in slots {
        let key = MaglevKey {
            service_id,
            slot: slot as u32,
        };
        if let Err(err) = dataplane.maps.maglev.remove(&key) {
            warn!(
                service = name,
                error = format!("{err:#}"),
                "could not remove a Maglev slot"
            );
            return;
        }
    }
}

/// How many slots each backend id owns in `table` (one pass).
pub(super) fn slot_counts(table: &[u32]) -> HashMap<u32, u32> {
    let mut counts = HashMap::new();
    for &id in table {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 443))
    }

    #[test]
    fn weights_follow_scores_only_while_ranking_is_on() {
        let servers = [addr(1), addr(2), addr(3)];
        let members: Vec<(u32, SocketAddr)> = (1..).zip(servers).collect();
        let mut machine = ServiceMachine::new(&servers, None, Instant::now());
        machine.set_score(addr(1), Some(800));
        machine.set_score(addr(2), Some(200));
        assert_eq!(weights(&machine, &members), [1, 1, 1]);
        machine.set_ranking(true);
        assert_eq!(weights(&machine, &members), [100, 25, 1]);
        machine.set_score(addr(3), Some(1_600));
        assert_eq!(weights(&machine, &members), [50, 13, 100]);
    }
}
