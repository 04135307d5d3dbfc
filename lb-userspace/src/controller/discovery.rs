//! Sui discovery in the controller: the discovery task publishes a
//! [`RegistryView`]; on each view with new nodes (and on a refresh after a
//! reload or a server list change) every service with `discovery` gets
//! its static servers plus the registry's nodes (stake filter, endpoint
//! host resolved, the service's port, at most its `max_servers` of them:
//! the highest stakes, see [`servers::cap`]; one `warn!` when the cap
//! starts leaving nodes out, one `info!` when it stops), applied like
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
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::{
    events::{Controller, Event},
    reconcile,
    registry::{sorted, union},
    runtime::State,
};
use crate::{
    chain::{
        discovery::{Discovery, DiscoverySettings, DiscoveryStats},
        servers::{self, DiscoveredServer, Endpoint},
        view::RegistryView,
    },
    config::{ChainSettings, Protocol},
};

/// How long one DNS lookup of a node's endpoint may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

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
    // A node whose address is a VIP (of this protocol) is never a server:
    // it would loop, as the config file's validation says of static servers.
    let vips: Vec<(SocketAddr, Protocol)> = state
        .config
        .services
        .iter()
        .map(|service| (service.vip, service.protocol))
        .collect();
    let targets: Vec<(String, SocketAddr, Protocol, u16, usize)> = state
        .config
        .services
        .iter()
        .filter_map(|service| {
            let discovery = service.discovery.as_ref()?;
            Some((
                service.name.clone(),
                service.vip,
                service.protocol,
                discovery.port.port(),
                discovery.max_servers,
            ))
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
    for (name, vip, protocol, port, max_servers) in &targets {
        let eligible: Vec<DiscoveredServer> =
            servers::discovered_servers(&view, min_stake, *port, vip.is_ipv4(), lookup)
                .into_iter()
                .filter(|server| !vips.contains(&(server.address, *protocol)))
                .collect();
        let eligible_count = eligible.len();
        let (found, left_out) = servers::cap(eligible, *max_servers);
        let before = state
            .discovery
            .capped
            .insert(name.clone(), left_out)
            .unwrap_or_default();
        if left_out > 0 && before == 0 {
            warn!(service = %name, max_servers, eligible = eligible_count, left_out, "more registry nodes than discovery.max_servers: the highest stakes are taken, the rest left out (status discovered_capped, metric daas_lb_discovered_servers_capped)");
        } else if left_out == 0 && before > 0 {
            info!(service = %name, max_servers, eligible = eligible_count, "registry nodes within discovery.max_servers again: none left out");
        }
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
