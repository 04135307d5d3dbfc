//! Discovery's part of the controller state: each discovery service's own
//! servers, the servers the registry gave it (and how many its
//! `max_servers` left out), the last view, and the discovery tasks. Plain data; [`discovery`](super::discovery) fills it.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use tokio::{sync::Notify, task::JoinHandle};

use crate::{
    chain::{discovery::DiscoveryStats, servers::DiscoveredServer, view::RegistryView},
    config::Config,
};

/// Discovery's part of the controller state.
#[derive(Default)]
pub(super) struct DiscoveryState {
    /// Each discovery service's own servers (config file or API), by name.
    pub(super) static_servers: HashMap<String, Vec<SocketAddr>>,
    /// The registry's servers of each discovery service, by name, with
    /// their node, stake and `sui_rpc`.
    pub(super) discovered: HashMap<String, HashMap<SocketAddr, DiscoveredServer>>,
    /// How many eligible registry nodes each discovery service left out
    /// for its `discovery.max_servers`, by name (absent: none yet).
    pub(super) capped: HashMap<String, usize>,
    /// The last view published (`None` before the task started).
    pub(super) view: Option<RegistryView>,
    /// The task's counters (`None` without a `chain` block).
    pub(super) stats: Option<Arc<DiscoveryStats>>,
    /// Asks the watcher to apply the current view again (`None` without a
    /// `chain` block).
    pub(super) refresh: Option<Arc<Notify>>,
    /// The discovery task and the task applying its views.
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl DiscoveryState {
    /// Remembers the static servers of `config`'s discovery services.
    pub(super) fn set_static(&mut self, config: &Config) {
        self.static_servers = config
            .services
            .iter()
            .filter(|service| service.discovery.is_some())
            .map(|service| (service.name.clone(), service.servers.clone()))
            .collect();
        self.discovered
            .retain(|name, _| self.static_servers.contains_key(name));
        self.capped
            .retain(|name, _| self.static_servers.contains_key(name));
    }

    /// `config` with each discovery service's servers set to its static
    /// servers plus those discovered so far.
    pub(super) fn merge_into(&self, config: &mut Config) {
        for service in &mut config.services {
            if service.discovery.is_none() {
                continue;
            }
            let found = self.discovered.get(&service.name);
            service.servers = union(
                &service.servers,
                found
                    .map(|found| sorted(found.keys().copied()))
                    .unwrap_or_default(),
            );
        }
    }

    /// The metadata of a discovered server.
    pub(super) fn server(&self, service: &str, address: SocketAddr) -> Option<&DiscoveredServer> {
        self.discovered.get(service)?.get(&address)
    }

    /// Stops the tasks (shutdown).
    pub(super) fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

pub(super) fn sorted(addresses: impl Iterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    addresses.collect::<BTreeSet<_>>().into_iter().collect()
}

/// `first`, then the addresses of `more` not in it.
pub(super) fn union(first: &[SocketAddr], more: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut all = first.to_vec();
    for address in more {
        if !all.contains(&address) {
            all.push(address);
        }
    }
    all
}

impl DiscoveryState {
    /// Has the watcher apply the current view again (after a reload or a
    /// server list change).
    pub(super) fn refresh(&self) {
        if let Some(refresh) = &self.refresh {
            // A refresh asked for during an apply runs after it.
            refresh.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn static_servers_come_first_and_discovered_ones_are_added_once() {
        let statics = [addr("10.0.0.1:1"), addr("10.0.0.2:1")];
        let all = union(&statics, vec![addr("10.0.0.2:1"), addr("10.0.0.3:1")]);
        assert_eq!(
            all,
            [addr("10.0.0.1:1"), addr("10.0.0.2:1"), addr("10.0.0.3:1")]
        );
    }

    #[test]
    fn merge_adds_the_discovered_servers_to_the_static_ones() {
        let mut config = Config::from_yaml(
            "chain:\n  sui_rpc_url: http://a:1\n  registry: { package: \"0x1\", object: \"0x2\" }\nservices:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: [\"10.0.0.1:80\"]\n    discovery: { source: sui, port: 80 }\n  - name: b\n    vip: 127.0.0.1:81\n    servers: []\n",
            "t.yaml",
        )
        .unwrap();
        let mut state = DiscoveryState::default();
        state.set_static(&config);
        assert_eq!(state.static_servers["a"], [addr("10.0.0.1:80")]);
        assert!(!state.static_servers.contains_key("b"));
        let server = DiscoveredServer {
            address: addr("10.0.0.9:80"),
            node: sui_sdk_types::Address::ZERO,
            stake: 7,
            sui_rpc: String::new(),
            nautilus_url: String::new(),
            enclave_id: sui_sdk_types::Address::ZERO,
        };
        state.discovered.insert(
            "a".to_owned(),
            [(server.address, server)].into_iter().collect(),
        );
        state.merge_into(&mut config);
        assert_eq!(
            config.services[0].servers,
            [addr("10.0.0.1:80"), addr("10.0.0.9:80")]
        );
        assert!(config.services[1].servers.is_empty());
        assert_eq!(state.server("a", addr("10.0.0.9:80")).unwrap().stake, 7);
    }
}
