//! Servers written as DNS names (`name:port`, `https://name[:port]` in
//! `servers` and `default_server`): one task (the resolver) looks every
//! name up with the system resolver (`getaddrinfo`: `/etc/hosts`, then DNS
//! as nsswitch says) every `dns_refresh`, at once after a reload, each
//! lookup within [`LOOKUP_TIMEOUT`], and hands the answers to the
//! controller thread, which never waits on DNS. There the pure
//! [`policy::dns`](crate::policy::dns) turns them into each service's list
//! (literal servers first, then each name's addresses of the VIP's family),
//! applied like `PUT /services/{name}/servers`: a server whose address went
//! away takes the removal path, a new one starts unchecked.
//!
//! Invariants:
//! - A failed lookup keeps the name's last good addresses; the error shows
//!   in the status and is logged once per change.
//! - Addresses that cannot be servers (a VIP of the same protocol,
//!   multicast, unspecified, port 0: [`reconcile::server_problem`]) are
//!   dropped with a warning.
//! - At start the names are looked up before the first apply, within
//!   [`START_TIMEOUT`] in all, so services start with their servers.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime},
};

use futures::future::join_all;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use super::{
    events::{Controller, Event},
    reconcile,
    runtime::State,
};
use crate::{
    api::status::DnsNameStatus,
    config::{Config, Protocol, ServerName},
    policy::dns::{self, Lookup, NameState},
};

/// How long one lookup may take.
pub(super) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the lookups before the first apply may take in all.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(2);

/// The answers of one round of lookups, by host name.
pub(super) type Lookups = BTreeMap<String, Lookup>;

/// What the resolver looks up, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    hosts: BTreeSet<String>,
    every: Duration,
}

/// One service with DNS names among its servers.
#[derive(Debug, Clone)]
pub(super) struct Named {
    /// The servers written as addresses (file, or `set-servers`).
    literal: Vec<SocketAddr>,
    /// `default_server` written as an address.
    literal_default: Option<SocketAddr>,
    /// The servers written as names, in order.
    names: Vec<ServerName>,
    /// `default_server` written as a name.
    default_name: Option<ServerName>,
    vip: SocketAddr,
    protocol: Protocol,
    /// What each name (of `names` and `default_name`) resolved to.
    states: BTreeMap<ServerName, NameState>,
}

impl Named {
    /// `names`, then `default_name` unless it is among them.
    fn all_names(&self) -> impl Iterator<Item = &ServerName> {
        let default = self
            .default_name
            .iter()
            .filter(|name| !self.names.contains(name));
        self.names.iter().chain(default)
    }
}

/// The DNS part of the controller state.
#[derive(Default)]
pub(super) struct DnsState {
    /// Per service name.
    pub(super) services: BTreeMap<String, Named>,
    /// Tells the resolver what to look up (a new value: look up at once).
    wanted: Option<watch::Sender<Wanted>>,
    task: Option<JoinHandle<()>>,
}

impl DnsState {
    /// Takes the names of `config` (a start's or a reload's, as written);
    /// a name a service keeps keeps its last good addresses.
    pub(super) fn set_config(&mut self, config: &Config) {
        let mut next = BTreeMap::new();
        for service in &config.services {
            if service.server_names.is_empty() && service.default_server_name.is_none() {
                continue;
            }
            let mut named = Named {
                literal: service.servers.clone(),
                literal_default: service.default_server,
                names: service.server_names.clone(),
                default_name: service.default_server_name.clone(),
                vip: service.vip,
                protocol: service.protocol,
                states: BTreeMap::new(),
            };
            let old = self.services.get(&service.name);
            let same_family = old.is_some_and(|old| old.vip.is_ipv4() == service.vip.is_ipv4());
            named.states = named
                .all_names()
                .map(|name| {
                    let kept = old
                        .filter(|_| same_family)
                        .and_then(|old| old.states.get(name).cloned())
                        .unwrap_or_default();
                    (name.clone(), kept)
                })
                .collect();
            next.insert(service.name.clone(), named);
        }
        self.services = next;
    }

    /// `PUT /services/{name}/servers` replaced `service`'s servers with
    /// addresses: its `servers` names are no longer followed (until a
    /// reload); a `default_server` name still is.
    pub(super) fn servers_set(&mut self, service: &str, servers: &[SocketAddr]) {
        let Some(named) = self.services.get_mut(service) else {
            return;
        };
        named.literal = servers.to_vec();
        named.names.clear();
        let default = named.default_name.clone();
        named
            .states
            .retain(|name, _| Some(name) == default.as_ref());
        if named.default_name.is_none() {
            self.services.remove(service);
        }
    }

    /// The host names to look up.
    fn hosts(&self) -> BTreeSet<String> {
        self.services
            .values()
            .flat_map(Named::all_names)
            .map(|name| name.host.clone())
            .collect()
    }

    /// Records `lookups` (made at `at`) for every name; `config` gives the
    /// VIPs an address must not be. Logs what changed; returns whether any
    /// service's addresses changed.
    pub(super) fn record(&mut self, config: &Config, lookups: &Lookups, at: SystemTime) -> bool {
        let mut changed = false;
        for (service, named) in &mut self.services {
            let ipv4 = named.vip.is_ipv4();
            let protocol = named.protocol;
            for (name, state) in &mut named.states {
                let Some(lookup) = lookups.get(&name.host) else {
                    continue;
                };
                let refuse =
                    |address| reconcile::server_problem(config, service, protocol, address);
                let update = state.update(name, lookup, ipv4, refuse, at);
                for (address, reason) in &update.dropped {
                    if update.addresses_changed || update.error_changed {
                        warn!(service, name = %name, %address, reason, "an address of a server's DNS name cannot be a server; skipped");
                    }
                }
                if update.error_changed {
                    match &state.error {
                        Some(error) => {
                            warn!(service, name = %name, error, addresses = ?state.addresses, "a server's DNS name does not resolve; keeping its last good addresses");
                        }
                        None => {
                            info!(service, name = %name, addresses = ?state.addresses, "a server's DNS name resolves again");
                        }
                    }
                }
                if update.addresses_changed {
                    info!(service, name = %name, addresses = ?state.addresses, "a server's DNS name resolves to new addresses");
                    changed = true;
                }
            }
        }
        changed
    }

    /// `config` with each named service's servers and default server set
    /// from its literal ones and its names' current addresses.
    pub(super) fn merge_into(&self, config: &mut Config) {
        for service in &mut config.services {
            let Some(named) = self.services.get(&service.name) else {
                continue;
            };
            let states: Vec<&NameState> = named
                .names
                .iter()
                .filter_map(|name| named.states.get(name))
                .collect();
            service.servers = dns::servers(&named.literal, &states);
            service.default_server = dns::default_server(
                named.literal_default,
                named
                    .default_name
                    .as_ref()
                    .and_then(|name| named.states.get(name)),
            );
        }
    }

    /// The names of `service` for the status document.
    pub(super) fn status(&self, service: &str) -> Vec<DnsNameStatus> {
        let Some(named) = self.services.get(service) else {
            return Vec::new();
        };
        named
            .all_names()
            .filter_map(|name| {
                let state = named.states.get(name)?;
                Some(DnsNameStatus {
                    name: name.host.clone(),
                    port: name.port,
                    default: named.default_name.as_ref() == Some(name),
                    addresses: state.addresses.iter().map(ToString::to_string).collect(),
                    error: state.error.clone(),
                    resolved_at: state
                        .resolved_at
                        .map(|at| humantime::format_rfc3339_millis(at).to_string()),
                })
            })
            .collect()
    }

    /// Has the resolver look the current names up at once, then every
    /// `every` (after a start or a reload).
    pub(super) fn refresh(&self, every: Duration) {
        if let Some(wanted) = &self.wanted {
            wanted.send_replace(Wanted {
                hosts: self.hosts(),
                every,
            });
        }
    }

    /// Stops the resolver.
    pub(super) fn stop(&mut self) {
        self.wanted = None;
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The host names among `config`'s servers and default servers.
pub(super) fn hosts_of(config: &Config) -> BTreeSet<String> {
    config
        .services
        .iter()
        .flat_map(|s| s.server_names.iter().chain(s.default_server_name.iter()))
        .map(|name| name.host.clone())
        .collect()
}

/// Starts the resolver (also without names: a reload may add some).
pub(super) fn start(state: &mut State, controller: &Controller) {
    let (wanted, watched) = watch::channel(Wanted {
        hosts: state.dns.hosts(),
        every: state.config.dns_refresh,
    });
    state.dns.wanted = Some(wanted);
    state.dns.task = Some(state.runtime.spawn(resolve(controller.clone(), watched)));
}

/// The resolver: looks the wanted names up at once, then every period or as
/// soon as the wanted names change, and hands each round to the controller.
async fn resolve(controller: Controller, mut watched: watch::Receiver<Wanted>) {
    loop {
        let wanted = watched.borrow_and_update().clone();
        if !wanted.hosts.is_empty() {
            let lookups = lookup_all(&wanted.hosts, LOOKUP_TIMEOUT).await;
            controller
                .tell(Event::Resolved {
                    lookups,
                    at: SystemTime::now(),
                })
                .await;
        }
        tokio::select! {
            changed = watched.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(wanted.every) => {}
        }
    }
}

/// Looks every host up at once, each within `timeout`.
pub(super) async fn lookup_all(hosts: &BTreeSet<String>, timeout: Duration) -> Lookups {
    join_all(hosts.iter().map(|host| async move {
        let answer =
            tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), 0))).await;
        let lookup = match answer {
            Ok(Ok(found)) => {
                Lookup::Found(found.map(|address| address.ip()).collect::<Vec<IpAddr>>())
            }
            Ok(Err(err)) => Lookup::Failed(format!("cannot resolve {host}: {err}")),
            Err(_) => Lookup::Failed(format!(
                "resolving {host} timed out after {}",
                humantime::format_duration(timeout)
            )),
        };
        (host.clone(), lookup)
    }))
    .await
    .into_iter()
    .collect()
}

/// Applies a round of lookups: records them and, when a service's
/// addresses changed, applies its new list like `PUT
/// /services/{name}/servers` (a discovery service keeps its discovered
/// servers on top).
pub(super) fn apply_lookups(state: &mut State, lookups: &Lookups, at: SystemTime) {
    let running = state.config.clone();
    if !state.dns.record(&running, lookups, at) {
        return;
    }
    let mut config = running;
    state.dns.merge_into(&mut config);
    let names: Vec<String> = state.dns.services.keys().cloned().collect();
    let mut discovery_changed = false;
    for name in &names {
        let Some(service) = config.services.iter().find(|s| s.name == *name) else {
            continue;
        };
        if service.discovery.is_some() {
            state
                .discovery
                .static_servers
                .insert(name.clone(), service.servers.clone());
            discovery_changed = true;
        }
        // The file's checks (count, family, loops) on the whole list.
        let list: Vec<String> = service.servers.iter().map(ToString::to_string).collect();
        if let Err(err) = reconcile::config_with_servers(&config, name, &list) {
            warn!(service = %name, error = %err, "servers from DNS names not applied; keeping the last list");
            if let (Some(wanted), Some(before)) = (
                config.services.iter_mut().find(|s| s.name == *name),
                state.config.services.iter().find(|s| s.name == *name),
            ) {
                wanted.servers.clone_from(&before.servers);
                wanted.default_server = before.default_server;
            }
        }
    }
    if discovery_changed {
        state.discovery.merge_into(&mut config);
    }
    if let Err(err) = reconcile::apply(state, config) {
        warn!(
            error = format!("{err:#}"),
            "could not apply the servers of DNS names"
        );
    }
}
