//! What applying a configuration changes, decided without touching the
//! kernel: which running services are kept, replaced or retired, which
//! service entries must be rewritten, which backend slots get which entry
//! (keeping each server's `BACKEND_DOWN` flag), and which servers' check
//! tasks start or stop. Pure: [`reconcile`](super::reconcile) builds the
//! inputs from the running state and the maps, then carries the plan out.

use std::{collections::HashMap, net::SocketAddr};

use lb_common::{Backend, VipKey, ip_to_bytes};

use crate::{
    config::{Config, Policy, ServiceConfig, ServiceDataplane},
    policy::map_ids::{IdPlan, ServiceSpec, backend_entry},
};

/// The VIP key of a service.
pub fn vip_key(service: &ServiceConfig) -> VipKey {
    let (addr, family) = ip_to_bytes(service.vip.ip());
    VipKey {
        addr,
        port: service.vip.port(),
        proto: service.protocol.number(),
        family,
    }
}

/// Every address a service may select: servers, then the default server.
pub(super) fn backend_addresses(service: &ServiceConfig) -> Vec<SocketAddr> {
    let mut all = service.servers.clone();
    if let Some(default) = service.default_server
        && !all.contains(&default)
    {
        all.push(default);
    }
    all
}

/// What the map id planning needs of each configured service.
pub(super) fn specs(config: &Config) -> Vec<ServiceSpec> {
    config
        .services
        .iter()
        .map(|s| ServiceSpec {
            key: vip_key(s),
            backends: backend_addresses(s),
        })
        .collect()
}

/// A running service, as far as planning needs it.
#[derive(Debug, Clone)]
pub(super) struct Running {
    pub(super) name: String,
    pub(super) key: VipKey,
    pub(super) id: u32,
    pub(super) policy: Policy,
    pub(super) maglev_table_size: u32,
    pub(super) remote: bool,
    /// What carries it: a change replaces the service (new listener or
    /// `services` entry, old connections closed).
    pub(super) dataplane: ServiceDataplane,
    /// Its servers with the backend flags last written for each.
    pub(super) servers: Vec<(SocketAddr, u8)>,
}

impl Running {
    /// The planning view of a running service.
    pub(super) fn of(
        config: &ServiceConfig,
        key: VipKey,
        id: u32,
        servers: Vec<(SocketAddr, u8)>,
    ) -> Self {
        Self {
            name: config.name.clone(),
            key,
            id,
            policy: config.policy,
            maglev_table_size: config.maglev_table_size,
            remote: config.remote,
            dataplane: config.dataplane,
            servers,
        }
    }
}

/// What happens to the running service of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Previous {
    /// None runs under this name: a new service.
    None,
    /// Same VIP and id: it is updated in place (servers keep their state).
    Kept,
    /// Same name, another VIP (or id): the running one retires and this
    /// one starts fresh.
    Replaced,
}

/// The plan for one configured service (same order as `config.services`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServicePlan {
    pub(super) id: u32,
    pub(super) previous: Previous,
    /// `remote`, `policy` or the Maglev table size changed on a kept
    /// service: its entry's flags change, so the entry is rewritten.
    pub(super) entry_changed: bool,
    /// A kept service stopped being `remote`: its XDP flows are forgotten.
    pub(super) remote_off: bool,
    /// Servers (and the default server) without a check task yet.
    pub(super) start_checks: Vec<SocketAddr>,
    /// Servers of the kept service that are gone: their check tasks stop.
    pub(super) stop_checks: Vec<SocketAddr>,
}

impl ServicePlan {
    /// A service that is written from scratch (new or replaced).
    pub(super) fn fresh(&self) -> bool {
        self.previous != Previous::Kept
    }
}

/// Everything applying a configuration changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApplyPlan {
    pub(super) services: Vec<ServicePlan>,
    /// Running services that go (not configured any more, or replaced),
    /// by name.
    pub(super) retired: Vec<String>,
    /// Every backend slot to write: (id, entry, service name, address).
    pub(super) backends: Vec<(u32, Backend, String, SocketAddr)>,
}

/// Plans applying `config` (with its `specs` and the map `ids` planned for
/// them) over the `running` services.
pub(super) fn plan(
    running: &[Running],
    config: &Config,
    specs: &[ServiceSpec],
    ids: &IdPlan,
) -> ApplyPlan {
    let by_name: HashMap<&str, &Running> = running.iter().map(|r| (r.name.as_str(), r)).collect();
    // Servers keep their BACKEND_DOWN flag through a reload.
    let flags: HashMap<(u32, SocketAddr), u8> = running
        .iter()
        .flat_map(|r| {
            r.servers
                .iter()
                .map(move |&(address, flags)| ((r.id, address), flags))
        })
        .collect();
    let mut services = Vec::with_capacity(config.services.len());
    let mut retired = Vec::new();
    let mut backends = Vec::new();
    for (index, (service, spec)) in config.services.iter().zip(specs).enumerate() {
        let id = ids.service_ids[index];
        for (&address, &backend_id) in spec.backends.iter().zip(&ids.backend_ids[index]) {
            let backend = Backend {
                flags: flags.get(&(id, address)).copied().unwrap_or(0),
                ..backend_entry(address, id)
            };
            backends.push((backend_id, backend, service.name.clone(), address));
        }
        let old = by_name.get(service.name.as_str());
        let previous = match old {
            None => Previous::None,
            Some(old)
                if old.key == spec.key && old.id == id && old.dataplane == service.dataplane =>
            {
                Previous::Kept
            }
            Some(old) => {
                retired.push(old.name.clone());
                Previous::Replaced
            }
        };
        let kept = old.filter(|_| previous == Previous::Kept);
        let entry_changed = kept.is_some_and(|old| {
            (old.policy, old.maglev_table_size, old.remote)
                != (service.policy, service.maglev_table_size, service.remote)
        });
        let remote_off = kept.is_some_and(|old| old.remote && !service.remote);
        let has = |address: &SocketAddr| {
            kept.is_some_and(|old| old.servers.iter().any(|(a, _)| a == address))
        };
        services.push(ServicePlan {
            id,
            previous,
            entry_changed,
            remote_off,
            start_checks: spec.backends.iter().copied().filter(|a| !has(a)).collect(),
            stop_checks: kept
                .map(|old| {
                    old.servers
                        .iter()
                        .map(|&(address, _)| address)
                        .filter(|address| !spec.backends.contains(address))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    for old in running {
        if !config.services.iter().any(|s| s.name == old.name) {
            retired.push(old.name.clone());
        }
    }
    ApplyPlan {
        services,
        retired,
        backends,
    }
}

#[cfg(test)]
mod tests {
    use lb_common::BACKEND_DOWN;

    use super::*;
    use crate::policy::map_ids::plan_ids;

    fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml, "test.yaml").unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    const TWO: &str = "xdp:
  interfaces: [eth0]
services:
  - name: api
    vip: 127.0.0.1:6444
    servers: [10.0.0.1:6443, 10.0.0.2:6443]
  - name: dns
    vip: 127.0.0.1:53
    protocol: udp
    servers: [10.0.0.9:53]
";

    /// Plans `next` over the services `before` left running (ids planned
    /// from the maps `before` would have written), `down` marking servers
    /// whose backend is flagged down.
    fn replan(before: &str, next: &str, down: &[&str]) -> ApplyPlan {
        let before = config(before);
        let next = config(next);
        let first_specs = specs(&before);
        let first_ids = plan_ids(&[], &[], &first_specs).unwrap();
        let first = plan(&[], &before, &first_specs, &first_ids);
        // The maps and the running services after the first apply.
        let maps_services: Vec<_> = before
            .services
            .iter()
            .zip(&first.services)
            .map(|(s, p)| {
                (
                    vip_key(s),
                    lb_common::Service {
                        id: p.id,
                        ..lb_common::Service::default()
                    },
                )
            })
            .collect();
        let maps_backends: Vec<_> = first
            .backends
            .iter()
            .map(|(id, b, _, _)| (*id, *b))
            .collect();
        let running: Vec<Running> = before
            .services
            .iter()
            .zip(&first.services)
            .map(|(s, p)| {
                let servers = backend_addresses(s)
                    .into_iter()
                    .map(|a| {
                        let flags = if down.contains(&a.to_string().as_str()) {
                            BACKEND_DOWN
                        } else {
                            0
                        };
                        (a, flags)
                    })
                    .collect();
                Running::of(s, vip_key(s), p.id, servers)
            })
            .collect();
        let specs = specs(&next);
        let ids = plan_ids(&maps_services, &maps_backends, &specs).unwrap();
        plan(&running, &next, &specs, &ids)
    }

    #[test]
    fn the_same_config_again_changes_nothing() {
        let plan = replan(TWO, TWO, &[]);
        assert!(plan.retired.is_empty());
        for service in &plan.services {
            assert_eq!(service.previous, Previous::Kept);
            assert!(!service.entry_changed && !service.remote_off);
            assert!(service.start_checks.is_empty() && service.stop_checks.is_empty());
        }
    }

    #[test]
    fn a_first_apply_starts_every_service_fresh() {
        let next = config(TWO);
        let specs = specs(&next);
        let ids = plan_ids(&[], &[], &specs).unwrap();
        let plan = plan(&[], &next, &specs, &ids);
        assert!(plan.services.iter().all(ServicePlan::fresh));
        assert_eq!(plan.services[0].start_checks.len(), 2);
        assert_eq!(plan.backends.len(), 3);
        assert!(plan.backends.iter().all(|(_, b, _, _)| b.flags == 0));
    }

    #[test]
    fn servers_added_and_removed_start_and_stop_their_checks_only() {
        let next = TWO.replace(
            "[10.0.0.1:6443, 10.0.0.2:6443]",
            "[10.0.0.2:6443, 10.0.0.3:6443]",
        );
        let plan = replan(TWO, &next, &[]);
        let api = &plan.services[0];
        assert_eq!(api.previous, Previous::Kept);
        assert_eq!(api.start_checks, [addr("10.0.0.3:6443")]);
        assert_eq!(api.stop_checks, [addr("10.0.0.1:6443")]);
        assert!(!api.entry_changed);
        assert!(plan.services[1].start_checks.is_empty());
    }

    #[test]
    fn a_reload_keeps_backend_down_flags() {
        let plan = replan(TWO, TWO, &["10.0.0.2:6443"]);
        let flags: HashMap<SocketAddr, u8> = plan
            .backends
            .iter()
            .map(|(_, b, _, a)| (*a, b.flags))
            .collect();
        assert_eq!(flags[&addr("10.0.0.2:6443")], BACKEND_DOWN);
        assert_eq!(flags[&addr("10.0.0.1:6443")], 0);
    }

    #[test]
    fn a_new_vip_under_the_same_name_replaces_the_service() {
        let next = TWO.replace("127.0.0.1:6444", "127.0.0.1:7444");
        let plan = replan(TWO, &next, &[]);
        assert_eq!(plan.services[0].previous, Previous::Replaced);
        assert!(plan.services[0].fresh());
        assert_eq!(plan.retired, ["api"]);
        // Fresh: every server starts checking again.
        assert_eq!(plan.services[0].start_checks.len(), 2);
    }

    #[test]
    fn a_service_no_longer_configured_retires() {
        let next = "xdp:
  interfaces: [eth0]
services:
  - name: api
    vip: 127.0.0.1:6444
    servers: [10.0.0.1:6443, 10.0.0.2:6443]
";
        let plan = replan(TWO, next, &[]);
        assert_eq!(plan.retired, ["dns"]);
        assert_eq!(plan.services.len(), 1);
        assert_eq!(plan.services[0].previous, Previous::Kept);
    }

    #[test]
    fn policy_and_remote_changes_rewrite_the_entry() {
        let spread = TWO.replace(
            "    servers: [10.0.0.1:6443, 10.0.0.2:6443]\n",
            "    servers: [10.0.0.1:6443, 10.0.0.2:6443]\n    policy: spread\n",
        );
        let plan = replan(TWO, &spread, &[]);
        assert!(plan.services[0].entry_changed);
        assert!(!plan.services[0].remote_off);
        assert!(!plan.services[1].entry_changed);

        let remote = TWO.replace(
            "    servers: [10.0.0.1:6443, 10.0.0.2:6443]\n",
            "    servers: [10.0.0.1:6443, 10.0.0.2:6443]\n    remote: true\n",
        );
        let on = replan(TWO, &remote, &[]);
        assert!(on.services[0].entry_changed && !on.services[0].remote_off);
        let off = replan(&remote, TWO, &[]);
        assert!(off.services[0].entry_changed && off.services[0].remote_off);
    }
}
