//! Sui discovery in the controller: the discovery task publishes a
//! [`RegistryView`]; on each view with new nodes (and on a refresh after a
//! reload or a server list change) every service with `discovery` gets
//! its static servers plus the registry's nodes (stake filter, endpoint
//! host resolved, the service's port), applied like
//! `PUT /services/{name}/servers`, so removed and under-stake nodes take the
//! removal path (invalid, connections closed). One task (the watcher) hands
//! every view to the controller thread, in order, so an older view never
//! overwrites a newer one; it resolves the nodes' endpoint names itself, so
//! the controller thread only computes and applies the lists.
//!
//! A registry that cannot be read leaves the servers as they are (at start:
//! the static and default servers); the discovery task logs the error and
//! keeps retrying.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::future::join_all;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use super::{Controller, Event, reconcile, state::State};
use crate::{
    chain::{
        discovery::{Discovery, DiscoverySettings, DiscoveryStats},
        servers::{self, DiscoveredServer, Endpoint},
        view::RegistryView,
    },
    config::{ChainSettings, Config},
};

/// How long one DNS lookup of a node's endpoint may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Discovery's part of the controller state.
#[derive(Default)]
pub(super) struct DiscoveryState {
    /// Each discovery service's own servers (config file or API), by name.
    pub(super) static_servers: HashMap<String, Vec<SocketAddr>>,
    /// The registry's servers of each discovery service, by name, with
    /// their node, stake and `sui_rpc`.
    pub(super) discovered: HashMap<String, HashMap<SocketAddr, DiscoveredServer>>,
    /// The last view published (`None` before the task started).
    pub(super) view: Option<RegistryView>,
    /// The task's counters (`None` without a `chain` block).
    pub(super) stats: Option<Arc<DiscoveryStats>>,
    /// Asks the watcher to apply the current view again (`None` without a
    /// `chain` block).
    refresh: Option<Arc<Notify>>,
    /// The discovery task and the task applying its views.
    tasks: Vec<JoinHandle<()>>,
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

fn sorted(addresses: impl Iterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    addresses.collect::<BTreeSet<_>>().into_iter().collect()
}

/// `first`, then the addresses of `more` not in it.
fn union(first: &[SocketAddr], more: Vec<SocketAddr>) -> Vec<SocketAddr> {
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

/// Starts the discovery task and the watcher that hands its views to the
/// controller.
pub(super) fn start(state: &mut State, controller: &Controller, chain: &ChainSettings) {
    let registry_stats = Arc::new(DiscoveryStats::default());
    let settings = DiscoverySettings::new(
        chain.sui_rpc_url.clone(),
        (&chain.registry).into(),
        chain.discovery_interval,
    );
    let _guard = state.runtime.enter();
    let (views, task) = Discovery::spawn(settings, Arc::clone(&registry_stats));
    info!(url = %chain.sui_rpc_url, package = %chain.registry.package, module = %chain.registry.module, object = %chain.registry.object, "Sui discovery started");
    let refresh = Arc::new(Notify::new());
    let watcher = state.runtime.spawn(watch(
        controller.clone(),
        views,
        Arc::clone(&refresh),
        chain.min_stake_mist,
    ));
    state.discovery.stats = Some(registry_stats);
    state.discovery.refresh = Some(refresh);
    state.discovery.tasks.push(task);
    state.discovery.tasks.push(watcher);
}

/// The watcher: logs the registry's errors as they change, resolves the
/// endpoint names of each view with new nodes (off the controller thread)
/// and hands every view to the controller, in order, so an older view never
/// overwrites a newer one.
async fn watch(
    controller: Controller,
    mut views: watch::Receiver<RegistryView>,
    refreshed: Arc<Notify>,
    min_stake: u64,
) {
    // The last view seen; its nodes are the ones applied.
    let mut last: Option<RegistryView> = None;
    let mut again = false;
    loop {
        let view = views.borrow_and_update().clone();
        let last_error = last.as_ref().and_then(|v| v.last_error.as_ref());
        if view.last_error.as_ref() != last_error {
            if let Some(error) = &view.last_error {
                warn!(error = %error, synced = view.synced, "Sui registry: the full node cannot be read; servers stay as they are");
            } else if last_error.is_some() {
                info!(nodes = view.nodes.len(), "Sui registry readable again");
            }
        }
        let new_nodes = last
            .as_ref()
            .is_none_or(|v| v.synced != view.synced || v.nodes != view.nodes);
        last = Some(view.clone());
        // Only the error changed (status shows it), or nothing to apply.
        let mut resolved = None;
        if (new_nodes || again) && view.synced {
            let Ok(wanted) = controller
                .ask(|reply| Event::DiscoveryWanted { reply })
                .await
            else {
                return;
            };
            if wanted {
                let (candidates, malformed) = servers::candidates(&view, min_stake);
                for (node, endpoint) in &malformed {
                    warn!(%node, endpoint = %endpoint, "registry node with a malformed endpoint; skipped");
                }
                resolved = Some(resolve_names(&candidates).await);
            }
        }
        controller.tell(Event::View { view, resolved }).await;
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() {
                    return;
                }
                again = false;
            }
            () = refreshed.notified() => again = true,
        }
    }
}

/// Whether any service follows the registry.
pub(super) fn wanted(state: &State) -> bool {
    state.config.chain.is_some() && state.config.services.iter().any(|s| s.discovery.is_some())
}

/// Records `view`; with its endpoint names `resolved`, recomputes every
/// discovery service's servers from it and applies the changed lists.
pub(super) fn apply_view(
    state: &mut State,
    view: RegistryView,
    resolved: Option<HashMap<String, Vec<IpAddr>>>,
) {
    state.discovery.view = Some(view.clone());
    let Some(resolved) = resolved else {
        return;
    };
    let Some(chain) = &state.config.chain else {
        return;
    };
    let min_stake = chain.min_stake_mist;
    let targets: Vec<(String, SocketAddr, u16)> = state
        .config
        .services
        .iter()
        .filter_map(|service| {
            let discovery = service.discovery.as_ref()?;
            Some((service.name.clone(), service.vip, discovery.port.port()))
        })
        .collect();
    let cursor = state
        .discovery
        .stats
        .as_ref()
        .map(|stats| stats.cursor.load(Ordering::Relaxed));
    let lookup = |name: &str| resolved.get(name).cloned().unwrap_or_default();
    let mut config = state.config.clone();
    let mut changed = false;
    for (name, vip, port) in &targets {
        let found: Vec<DiscoveredServer> =
            servers::discovered_servers(&view, min_stake, *port, vip.is_ipv4(), lookup)
                .into_iter()
                .filter(|server| server.address != *vip)
                .collect();
        let statics = state
            .discovery
            .static_servers
            .get(name)
            .cloned()
            .unwrap_or_default();
        let wanted = union(&statics, sorted(found.iter().map(|s| s.address)));
        state.discovery.discovered.insert(
            name.clone(),
            found.into_iter().map(|s| (s.address, s)).collect(),
        );
        let Some(service) = config.services.iter().find(|s| s.name == *name) else {
            continue;
        };
        if service.servers == wanted {
            continue;
        }
        let list: Vec<String> = wanted.iter().map(ToString::to_string).collect();
        match reconcile::config_with_servers(&config, name, &list) {
            Ok(next) => {
                info!(service = %name, servers = ?wanted, cursor = ?cursor, "servers from the Sui registry");
                config = next;
                changed = true;
            }
            Err(err) => {
                warn!(service = %name, error = %err, "discovered servers not applied");
            }
        }
    }
    if changed && let Err(err) = reconcile::apply(state, config) {
        warn!(
            error = format!("{err:#}"),
            "could not apply the servers discovered on chain"
        );
    }
}

/// Resolves the DNS names among `candidates` (each once, all at once, each
/// within [`RESOLVE_TIMEOUT`]); a name that does not resolve maps to
/// nothing.
async fn resolve_names(candidates: &[servers::Candidate]) -> HashMap<String, Vec<IpAddr>> {
    let names: BTreeSet<&str> = candidates
        .iter()
        .filter_map(|candidate| match &candidate.host {
            Endpoint::Name(name) => Some(name.as_str()),
            Endpoint::Ip(_) => None,
        })
        .collect();
    join_all(names.into_iter().map(|name| async move {
        let lookup =
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, 0))).await;
        let addresses: Vec<IpAddr> = match lookup {
            Ok(Ok(addresses)) => addresses.map(|address| address.ip()).collect(),
            Ok(Err(err)) => {
                warn!(host = name, error = %err, "cannot resolve a registry node's endpoint");
                Vec::new()
            }
            Err(_) => {
                warn!(
                    host = name,
                    "resolving a registry node's endpoint timed out"
                );
                Vec::new()
            }
        };
        (name.to_owned(), addresses)
    }))
    .await
    .into_iter()
    .collect()
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
