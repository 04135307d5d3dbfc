//! Assigning map ids to services and backends: a pure function of what the
//! maps hold now and what the config wants.
//!
//! Ids that already point at the right thing are kept (so a restarted
//! controller adopts the crashed one's entries and counters, and the kernel
//! never sees a slot change meaning under a live service); new ids come only
//! from slots nobody uses.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::SocketAddr,
};

use anyhow::bail;
use lb_common::{
    BACKEND_DOWN, Backend, MAX_BACKENDS, MAX_SERVICES, NO_BACKEND, Service, VipKey, ip_from_bytes,
    ip_to_bytes,
};

use crate::policy::state_machine::ServerState;

/// One service as the controller wants it in the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The VIP key.
    pub key: VipKey,
    /// Every address the service may select (servers, then the default server
    /// if it is not among them), without duplicates.
    pub backends: Vec<SocketAddr>,
}

/// The ids to use, and what to clean up afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdPlan {
    /// Service id of each spec.
    pub service_ids: Vec<u32>,
    /// Backend ids of each spec, parallel to `ServiceSpec::backends`.
    pub backend_ids: Vec<Vec<u32>>,
    /// Backend currently selected in the maps for each spec, if it is one of
    /// the spec's backends (adopted after a restart).
    pub adopted_selection: Vec<Option<SocketAddr>>,
    /// Service ids that were not in the maps before (their counters start at 0).
    pub fresh_services: Vec<u32>,
    /// Backend ids that were not in the maps before (their counters start at 0).
    pub fresh_backends: Vec<u32>,
    /// Services in the maps that the config no longer has.
    pub stale_services: Vec<VipKey>,
    /// Backend slots in use that no spec uses any more.
    pub stale_backends: Vec<u32>,
}

/// The socket address a backend slot holds.
pub fn backend_address(backend: &Backend) -> SocketAddr {
    SocketAddr::new(ip_from_bytes(backend.addr, backend.family), backend.port)
}

/// The backend slot for an address.
pub fn backend_entry(address: SocketAddr, service_id: u32) -> Backend {
    let (addr, family) = ip_to_bytes(address.ip());
    Backend {
        addr,
        port: address.port(),
        family,
        flags: 0,
        service_id,
    }
}

/// [`Backend::flags`] for a server in `state`: [`BACKEND_DOWN`] when it is
/// failed or invalid, so the XDP program moves its flows to a usable backend.
pub const fn backend_flags(state: ServerState) -> u8 {
    match state {
        ServerState::Failed | ServerState::Invalid => BACKEND_DOWN,
        ServerState::Standby
        | ServerState::Unchecked
        | ServerState::Recovering
        | ServerState::Healthy
        | ServerState::Preferred
        | ServerState::Active => 0,
    }
}

/// Works out ids for `specs` given the current map contents.
pub fn plan_ids(
    existing_services: &[(VipKey, Service)],
    existing_backends: &[(u32, Backend)],
    specs: &[ServiceSpec],
) -> anyhow::Result<IdPlan> {
    let mut plan = IdPlan::default();
    let existing_by_key: HashMap<VipKey, Service> = existing_services.iter().copied().collect();
    let backends_by_id: HashMap<u32, Backend> = existing_backends.iter().copied().collect();

    // Service ids: keep the id of a VIP that is already there.
    let mut used_service_ids: BTreeSet<u32> = existing_services.iter().map(|(_, s)| s.id).collect();
    let mut assigned_service_ids = BTreeSet::new();
    for spec in specs {
        let kept = existing_by_key
            .get(&spec.key)
            .map(|s| s.id)
            .filter(|id| !assigned_service_ids.contains(id));
        let id = if let Some(id) = kept {
            id
        } else {
            let Some(id) = (0..MAX_SERVICES).find(|id| !used_service_ids.contains(id)) else {
                bail!("more than {MAX_SERVICES} services");
            };
            used_service_ids.insert(id);
            plan.fresh_services.push(id);
            id
        };
        assigned_service_ids.insert(id);
        plan.service_ids.push(id);
    }

    // Backend ids: keep a slot that holds the same address for the same service id.
    let mut used_backend_ids: BTreeSet<u32> = existing_backends.iter().map(|(id, _)| *id).collect();
    let mut assigned_backend_ids = BTreeSet::new();
    for (spec, &service_id) in specs.iter().zip(&plan.service_ids) {
        let mut ids = Vec::with_capacity(spec.backends.len());
        for &address in &spec.backends {
            let kept = existing_backends.iter().find(|(id, b)| {
                b.service_id == service_id
                    && backend_address(b) == address
                    && !assigned_backend_ids.contains(id)
            });
            let id = if let Some((id, _)) = kept {
                *id
            } else {
                let Some(id) = (1..MAX_BACKENDS).find(|id| !used_backend_ids.contains(id)) else {
                    bail!("more than {} backends in total", MAX_BACKENDS - 1);
                };
                used_backend_ids.insert(id);
                plan.fresh_backends.push(id);
                id
            };
            assigned_backend_ids.insert(id);
            ids.push(id);
        }
        // The backend the kernel uses now, if the config still has it.
        let adopted = existing_by_key
            .get(&spec.key)
            .filter(|s| s.id == service_id && s.backend_id != NO_BACKEND)
            .and_then(|s| backends_by_id.get(&s.backend_id).map(|b| (s.backend_id, b)))
            .and_then(|(id, b)| ids.contains(&id).then(|| backend_address(b)));
        plan.adopted_selection.push(adopted);
        plan.backend_ids.push(ids);
    }

    let wanted: HashSet<VipKey> = specs.iter().map(|s| s.key).collect();
    plan.stale_services = existing_services
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !wanted.contains(k))
        .collect();
    plan.stale_backends = existing_backends
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !assigned_backend_ids.contains(id))
        .collect();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use lb_common::{NO_BACKEND, PROTO_TCP, Service};

    use super::*;

    fn key(port: u16) -> VipKey {
        let (addr, family) = ip_to_bytes(IpAddr::V4(Ipv4Addr::LOCALHOST));
        VipKey {
            addr,
            port,
            proto: PROTO_TCP,
            family,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn fresh_maps_get_lowest_ids_and_backend_zero_is_never_used() {
        let specs = [
            ServiceSpec {
                key: key(1),
                backends: vec![addr("10.0.0.1:1"), addr("10.0.0.2:1")],
            },
            ServiceSpec {
                key: key(2),
                backends: vec![addr("10.0.0.3:1")],
            },
        ];
        let plan = plan_ids(&[], &[], &specs).unwrap();
        assert_eq!(plan.service_ids, [0, 1]);
        assert_eq!(plan.backend_ids, [vec![1, 2], vec![3]]);
        assert_eq!(plan.fresh_backends, [1, 2, 3]);
        assert_eq!(plan.fresh_services, [0, 1]);
        assert_eq!(plan.adopted_selection, [None, None]);
        assert!(plan.stale_backends.is_empty() && plan.stale_services.is_empty());
    }

    #[test]
    fn restart_adopts_ids_and_selection() {
        let services = [(
            key(1),
            Service {
                id: 7,
                backend_id: 12,
                flags: 0,
                table_size: 0,
            },
        )];
        let backends = [
            (11, backend_entry(addr("10.0.0.1:1"), 7)),
            (12, backend_entry(addr("10.0.0.2:1"), 7)),
            (13, backend_entry(addr("10.0.0.9:1"), 7)),
        ];
        let specs = [ServiceSpec {
            key: key(1),
            backends: vec![addr("10.0.0.1:1"), addr("10.0.0.2:1"), addr("10.0.0.4:1")],
        }];
        let plan = plan_ids(&services, &backends, &specs).unwrap();
        assert_eq!(plan.service_ids, [7]);
        // .4 is new and must not take a slot that is still in use (11..13).
        assert_eq!(plan.backend_ids, [vec![11, 12, 1]]);
        assert_eq!(plan.fresh_backends, [1]);
        assert!(plan.fresh_services.is_empty());
        assert_eq!(plan.adopted_selection, [Some(addr("10.0.0.2:1"))]);
        assert_eq!(plan.stale_backends, [13]);
    }

    #[test]
    fn removed_services_and_selection_outside_config_are_not_adopted() {
        let services = [
            (
                key(1),
                Service {
                    id: 0,
                    backend_id: 1,
                    flags: 0,
                    table_size: 0,
                },
            ),
            (
                key(2),
                Service {
                    id: 1,
                    backend_id: NO_BACKEND,
                    flags: 0,
                    table_size: 0,
                },
            ),
        ];
        let backends = [(1, backend_entry(addr("10.0.0.1:1"), 0))];
        let specs = [ServiceSpec {
            key: key(1),
            backends: vec![addr("10.0.0.5:1")],
        }];
        let plan = plan_ids(&services, &backends, &specs).unwrap();
        assert_eq!(plan.service_ids, [0]);
        assert_eq!(plan.backend_ids, [vec![2]]);
        assert_eq!(plan.adopted_selection, [None]);
        assert_eq!(plan.stale_services, [key(2)]);
        assert_eq!(plan.stale_backends, [1]);
    }

    #[test]
    fn running_out_of_backend_slots_is_an_error() {
        let specs = [ServiceSpec {
            key: key(1),
            backends: (0..MAX_BACKENDS)
                .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + i)), 1))
                .collect(),
        }];
        let err = plan_ids(&[], &[], &specs).unwrap_err();
        assert!(err.to_string().contains("backends"), "{err}");
    }

    #[test]
    fn only_failed_and_invalid_servers_are_down() {
        for state in ServerState::ALL {
            let down = matches!(state, ServerState::Failed | ServerState::Invalid);
            assert_eq!(
                backend_flags(state),
                if down { BACKEND_DOWN } else { 0 },
                "{state}"
            );
        }
        assert_eq!(backend_entry(addr("10.0.0.1:1"), 0).flags, 0);
    }

    #[test]
    fn backend_entry_round_trips() {
        for a in ["10.1.2.3:9345", "[2001:db8::7]:6443"] {
            assert_eq!(backend_address(&backend_entry(addr(a), 3)), addr(a));
        }
    }
}
