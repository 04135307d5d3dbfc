//! Applying a configuration to a running controller: at start, on SIGHUP,
//! when a server list is replaced through the API and when discovery
//! changes one. [`plan`] decides what changes; this module writes it.
//!
//! Everything that can fail is checked before the first map write (map ids,
//! probers with their CA files), so a bad change leaves the running setup
//! untouched. Servers that stay keep their state; removed ones go through
//! the state machine's removal path (invalid, connections closed). A
//! proxied service's prober is given the HTTP CONNECT proxy settings its
//! dials use, so that its checks go through the same proxy.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::Instant,
};

use anyhow::{Context as _, bail};
use lb_common::{Backend, MaglevKey, NO_BACKEND, Service, VipKey};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{
    checks,
    events::ServersError,
    persist,
    plan::{self, ApplyPlan, Previous, Running, ServicePlan},
    proxies,
    runtime::{ServerRuntime, ServiceRuntime, State},
    settle::settle,
    spread,
};
use crate::{
    config::{Config, Policy, Protocol, ServiceDataplane},
    health::Prober,
    kernel::dataplane::Dataplane,
    policy::{
        dial_stall::DialTime,
        map_ids::{IdPlan, ServiceSpec, backend_entry, plan_ids},
        state_machine::{Effects, Selection, ServerState, ServiceMachine},
    },
};

/// `config` with each service's servers replaced by those saved in its state
/// file, when that file belongs to the configured default server (K3s
/// semantics; see [`persist`]). Not for a service with DNS names among its
/// servers: its list follows the names.
pub(super) fn with_saved_servers(mut config: Config) -> Config {
    for service in &mut config.services {
        if !service.server_names.is_empty() || service.default_server_name.is_some() {
            continue;
        }
        let loaded = persist::load(
            &config.data_dir,
            &service.name,
            service.default_server,
            service.vip.is_ipv4(),
            Config::MAX_BACKENDS,
        );
        if let persist::Loaded::Servers(servers) = loaded
            && servers != service.servers
        {
            info!(service = %service.name, saved = ?servers, configured = ?service.servers, "using the server list saved at runtime instead of the config's (reload with SIGHUP to use the config's)");
            service.servers = servers;
        }
    }
    config
}

/// Fields that only take effect at start: keep the running values and say so.
pub(super) fn keep_restart_only_fields(running: &Config, new: &mut Config) {
    macro_rules! keep {
        ($($($field:ident).+),*) => {$(
            if new.$($field).+ != running.$($field).+ {
                warn!(field = stringify!($($field).+), running = ?running.$($field).+, new = ?new.$($field).+, "this setting changes only on restart; keeping the running value");
                new.$($field).+ = running.$($field).+.clone();
            }
        )*};
    }
    keep!(
        bpffs_dir,
        cgroup,
        data_dir,
        metrics_addr,
        api_addr,
        // The control socket is bound, and its file's group set, at start.
        control_socket,
        control_group,
        max_concurrent_checks,
        connection_poll_interval,
        xdp,
        chain,
        // The K3s watcher starts at start.
        k3s,
        // The attester (nautilus checks) is built at start.
        features.nautilus_health_checks,
        features.stake_validation
    );
}

/// Why `address` cannot be a server of the service `name` (of
/// `protocol`) in `running`: it cannot be connected to (port 0, an
/// unspecified or multicast address), or it is a VIP of the same protocol
/// (a forwarding loop: it would send the service's clients, and the
/// controller's own probes when it runs in the balanced cgroup, to whatever
/// that VIP selects). The rule of `PUT /services/{name}/servers`, also
/// applied to the addresses a server's DNS name resolves to.
pub(super) fn server_problem(
    running: &Config,
    name: &str,
    protocol: Protocol,
    address: SocketAddr,
) -> Option<String> {
    if address.port() == 0 || address.ip().is_unspecified() || address.ip().is_multicast() {
        return Some(format!(
            "{address} cannot be connected to (port 0, unspecified or multicast address)"
        ));
    }
    let owner = running
        .services
        .iter()
        .find(|s| s.protocol == protocol && s.vip == address)?;
    let whose = if owner.name == name {
        "the service's own VIP".to_owned()
    } else {
        format!("the VIP of service {}", owner.name)
    };
    Some(format!(
        "forwarding loop: {address} is {whose}; a server must be a real server"
    ))
}

/// The running config with one service's servers replaced; checks the list
/// like the config file does.
pub(super) fn config_with_servers(
    running: &Config,
    name: &str,
    servers: &[String],
) -> Result<Config, ServersError> {
    let mut config = running.clone();
    let protocol = running
        .services
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ServersError::UnknownService(name.to_owned()))?
        .protocol;
    let service = config
        .services
        .iter_mut()
        .find(|s| s.name == name)
        .ok_or_else(|| ServersError::UnknownService(name.to_owned()))?;
    let mut parsed: Vec<SocketAddr> = Vec::with_capacity(servers.len());
    for (i, text) in servers.iter().enumerate() {
        let address: SocketAddr = match crate::config::parse_server(text) {
            Ok(crate::config::ServerTarget::Address(address)) => address,
            Ok(crate::config::ServerTarget::Name { host, .. }) => {
                return Err(ServersError::Invalid(format!(
                    "servers[{i}]: {text:?} names the host {host:?}; set-servers takes IP addresses only (DNS names are resolved only for servers written in the config file), write its IP address"
                )));
            }
            Err(problem) => {
                return Err(ServersError::Invalid(format!(
                    "servers[{i}]: {text:?} is not an IP:port address or https://IP:port URL: {problem}"
                )));
            }
        };
        if address.is_ipv4() != service.vip.is_ipv4() {
            return Err(ServersError::Invalid(format!(
                "servers[{i}]: address family mismatch: the VIP {} is {}, {address} is not",
                service.vip,
                if service.vip.is_ipv4() {
                    "IPv4"
                } else {
                    "IPv6"
                }
            )));
        }
        if let Some(problem) = server_problem(running, name, protocol, address) {
            return Err(ServersError::Invalid(format!("servers[{i}]: {problem}")));
        }
        if let Some(j) = parsed.iter().position(|p| *p == address) {
            return Err(ServersError::Invalid(format!(
                "servers[{i}]: duplicate address {address}, already servers[{j}]"
            )));
        }
        parsed.push(address);
    }
    service.servers = parsed;
    Ok(config)
}

/// Makes `config` the running configuration: everything that can fail
/// (probers, map ids) first, then the pure [`plan`], then the writes.
pub(super) fn apply(state: &mut State, config: Config) -> anyhow::Result<()> {
    let now = Instant::now();
    let config = if state.dataplane.is_none() {
        all_proxied(config)?
    } else {
        config
    };
    // Probers first: a bad CA file must fail before anything changes.
    let mut probers = Vec::with_capacity(config.services.len());
    for service in &config.services {
        let references = config.reference_urls();
        // A proxied service's checks go where its dials go: through the
        // HTTP CONNECT proxy when one is in force; a kernel redirect (eBPF
        // mode) connects directly, and so do its checks.
        let via = if service.dataplane == ServiceDataplane::Proxy {
            state.http_proxy.clone()
        } else {
            None
        };
        let prober = Prober::with_chain(
            &service.health_check.check,
            references,
            state.attester.clone(),
        )
        .with_context(|| format!("services {}: health_check", service.name))?
        .through(via);
        probers.push(Arc::new(prober));
    }
    let specs = plan::specs(&config);
    let (existing_services, existing_backends) = existing_ids(state)?;
    let ids = plan_ids(&existing_services, &existing_backends, &specs)?;
    let running: Vec<Running> = state
        .services
        .iter()
        .map(|s| {
            let servers = s
                .servers
                .iter()
                .map(|(address, r)| (*address, r.backend_flags))
                .collect();
            Running::of(&s.config, s.key, s.id, servers)
        })
        .collect();
    let plan = plan::plan(&running, &config, &specs, &ids);
    write(state, config, &specs, &ids, plan, probers, now)
}

/// `config` for a daemon running without its eBPF data plane: every service
/// proxied, or an error naming the first that cannot be (and the blocks
/// that need the kernel).
fn all_proxied(mut config: Config) -> anyhow::Result<Config> {
    if config.xdp.is_some() {
        bail!("the daemon runs without its eBPF data plane, which the `xdp` block needs");
    }
    if config.k3s.is_some() {
        bail!(
            "the daemon runs without its eBPF data plane: the `k3s` block's VIPs are K3s's own listeners, which only the kernel's connect hook can take over"
        );
    }
    for service in &mut config.services {
        if service.dataplane == ServiceDataplane::Ebpf {
            if let Some(why) = service.proxy_refusal() {
                bail!(
                    "service {}: the daemon runs without its eBPF data plane and the service cannot be proxied: {why}",
                    service.name
                );
            }
            service.dataplane = ServiceDataplane::Proxy;
        }
    }
    Ok(config)
}

/// The `services` and `backends` entries the id planning adopts.
type Existing = (Vec<(VipKey, Service)>, Vec<(u32, Backend)>);

/// What the id planning adopts: the kernel's `services` and `backends`
/// entries, plus the running proxied services, which have no `services`
/// entry (without a data plane, the running services are all there is), so
/// that a reload keeps their ids and does not replace them.
fn existing_ids(state: &State) -> anyhow::Result<Existing> {
    let (mut services, backends) = match &state.dataplane {
        Some(dataplane) => (
            dataplane.maps.services.all()?,
            dataplane.maps.backends.used()?,
        ),
        None => (
            Vec::new(),
            state
                .services
                .iter()
                .flat_map(|s| {
                    s.servers
                        .iter()
                        .map(|(&address, r)| (r.backend_id, backend_entry(address, s.id)))
                })
                .collect(),
        ),
    };
    for service in state.services.iter().filter(|s| !s.in_kernel()) {
        if !services.iter().any(|(key, _)| *key == service.key) {
            services.push((service.key, spread::entry(service, NO_BACKEND)));
        }
    }
    Ok((services, backends))
}

/// Carries out `plan`: counters of fresh slots reset, backend slots
/// written, runtimes built (checks started and stopped), retired services
/// removed, entries and tables written, stale slots cleared, server lists
/// saved, and the new runtimes installed.
fn write(
    state: &mut State,
    config: Config,
    specs: &[ServiceSpec],
    ids: &IdPlan,
    plan: ApplyPlan,
    probers: Vec<Arc<Prober>>,
    now: Instant,
) -> anyhow::Result<()> {
    if let Some(dataplane) = state.dataplane.as_mut() {
        for &id in &ids.fresh_backends {
            dataplane.maps.backend_stats.reset(id)?;
            // A reused slot must not carry its last owner's suspect mark.
            dataplane.maps.backend_dial.reset(id)?;
        }
        for &id in &ids.fresh_services {
            dataplane.maps.service_stats.reset(id)?;
        }
        for (backend_id, backend, service, address) in &plan.backends {
            dataplane
                .maps
                .backends
                .set(*backend_id, *backend)
                .with_context(|| format!("service {service}: backend {address}"))?;
        }
    }
    // Connections that exist now (after a restart: through the old
    // controller's entries) rank servers before the first check.
    let all_servers: HashSet<SocketAddr> = specs
        .iter()
        .flat_map(|s| s.backends.iter().copied())
        .collect();
    let counts = state
        .connections
        .count(&all_servers, |key| {
            state
                .dataplane
                .as_ref()
                .and_then(|d| d.maps.rev_nat.get(key))
        })
        .unwrap_or_default();
    let flags: HashMap<(u32, SocketAddr), u8> = plan
        .backends
        .iter()
        .map(|(_, backend, _, address)| ((backend.service_id, *address), backend.flags))
        .collect();

    let mut old: HashMap<String, ServiceRuntime> = std::mem::take(&mut state.services)
        .into_iter()
        .map(|s| (s.config.name.clone(), s))
        .collect();
    let mut runtimes = Vec::with_capacity(config.services.len());
    let mut effects_of = Vec::with_capacity(config.services.len());
    for (index, ((service_config, spec), service_plan)) in config
        .services
        .iter()
        .zip(specs)
        .zip(&plan.services)
        .enumerate()
    {
        let service_id = service_plan.id;
        // A replaced service stays in `old` until it retires below.
        let previous = if service_plan.previous == Previous::Kept {
            old.remove(&service_config.name)
        } else {
            None
        };
        let mut table = (Vec::new(), Vec::new(), Vec::new());
        let mut proxy = None;
        let (mut machine, mut servers, selection, effects) = if let Some(p) = previous {
            proxy = p.proxy;
            let mut machine = p.machine;
            let mut effects = machine.set_servers(&service_config.servers, now);
            effects.merge(machine.set_default(service_config.default_server, now));
            table = (p.table, p.table_members, p.table_weights);
            (machine, p.servers, p.selection, effects)
        } else {
            let machine =
                ServiceMachine::new(&service_config.servers, service_config.default_server, now);
            let selection = Selection {
                server: ids.adopted_selection[index],
                fail_open: false,
            };
            (machine, HashMap::new(), selection, Effects::default())
        };
        machine.set_exclusive(service_config.policy == Policy::Failover);
        machine.set_ranking(config.features.performance_ranking);
        for address in &service_plan.stop_checks {
            if let Some(gone) = servers.remove(address) {
                gone.check_task.abort();
            }
        }
        let mut kept = HashMap::with_capacity(spec.backends.len());
        for (&address, &backend_id) in spec.backends.iter().zip(&ids.backend_ids[index]) {
            machine.set_connections(
                address,
                counts.get(&(service_id, address)).copied().unwrap_or(0),
            );
            let backend_flags = flags.get(&(service_id, address)).copied().unwrap_or(0);
            let runtime = if let Some(r) = servers.remove(&address) {
                ServerRuntime {
                    backend_id,
                    backend_flags,
                    ..r
                }
            } else {
                let wake = Arc::new(Notify::new());
                ServerRuntime {
                    backend_id,
                    backend_flags,
                    last_check: None,
                    attestation: None,
                    last_connects: None,
                    check_task: checks::spawn(
                        state,
                        &service_config.name,
                        address,
                        Arc::clone(&wake),
                    ),
                    wake,
                    dial_time: DialTime::default(),
                    suspect: None,
                }
            };
            kept.insert(address, runtime);
        }
        runtimes.push(ServiceRuntime {
            config: service_config.clone(),
            key: spec.key,
            id: service_id,
            machine,
            servers: kept,
            prober: Arc::clone(&probers[index]),
            selection,
            table: table.0,
            table_members: table.1,
            table_weights: table.2,
            failover: None,
            proxy,
        });
        effects_of.push(effects);
    }
    if plan.services.iter().any(ServicePlan::fresh)
        && let Some(dataplane) = state.dataplane.as_mut()
    {
        adopt_tables(dataplane, &mut runtimes, &plan.services);
    }
    // Services that are gone or replaced: refuse their VIP first, then close.
    for name in &plan.retired {
        if let Some(gone) = old.remove(name) {
            retire(state, gone);
        }
    }
    debug_assert!(old.is_empty(), "every running service is kept or retired");
    // From here on nothing returns early: the new runtimes are installed
    // whatever happens, and map errors are reported at the end.
    let mut problems: Vec<String> = Vec::new();
    for ((service, service_plan), effects) in
        runtimes.iter_mut().zip(&plan.services).zip(effects_of)
    {
        if service_plan.entry_changed {
            // `remote`, `policy` or the table size changed: same
            // selection, new flags (settle writes a new selection).
            let backend_id = service
                .selection
                .server
                .and_then(|a| service.servers.get(&a))
                .map_or(NO_BACKEND, |s| s.backend_id);
            let entry = spread::entry(service, backend_id);
            let written = match state.dataplane.as_mut() {
                Some(dataplane) if service.in_kernel() => {
                    dataplane.maps.services.set(service.key, entry)
                }
                _ => Ok(()),
            };
            match written {
                Ok(()) => {
                    info!(service = %service.config.name, remote = service.config.remote, policy = %service.config.policy, "service entry rewritten");
                }
                Err(err) => problems.push(format!("service {}: {err:#}", service.config.name)),
            }
        }
        if service_plan.remote_off {
            // Flows XDP forwarded while the VIP was remote stop now: their
            // next packet finds a service without `remote`.
            let id = service.id;
            if let Some(dataplane) = state.dataplane.as_mut()
                && let Err(err) = dataplane.maps.flows.forget(|flow| flow.service_id == id)
            {
                problems.push(format!("service {}: {err:#}", service.config.name));
            }
        }
        if service_plan.fresh() {
            // Make sure the entry exists and points where the machine says.
            // The selection adopted from before a restart stays unless a
            // server is strictly better.
            let selection = service.machine.select_from(service.selection.server);
            let backend_id = selection
                .server
                .and_then(|a| service.servers.get(&a))
                .map_or(NO_BACKEND, |s| s.backend_id);
            let written = match state.dataplane.as_mut() {
                Some(dataplane) if service.in_kernel() => dataplane
                    .maps
                    .services
                    .set(service.key, spread::entry(service, backend_id)),
                _ if service.in_kernel() => Err(anyhow::anyhow!(
                    "the daemon runs without its eBPF data plane: the service needs `dataplane: proxy`"
                )),
                dataplane => {
                    // Proxy mode: the kernel must not redirect the VIP (an
                    // entry adopted from an eBPF-mode run goes), the proxy
                    // listens on it.
                    dataplane
                        .map_or(Ok(()), |d| d.maps.services.remove(&service.key))
                        .and_then(|()| {
                            service.selection = selection;
                            proxies::start(state.http_proxy.as_ref(), &state.proxy_reports, service)
                        })
                }
            };
            if let Err(err) = written {
                problems.push(format!("service {}: {err:#}", service.config.name));
                // A selection `select()` never returns: the next event
                // sees a change and writes the entry again.
                service.selection = Selection {
                    server: None,
                    fail_open: true,
                };
                continue;
            }
            if selection.server != service.selection.server
                && let Some(adopted) = service.selection.server
            {
                info!(service = %service.config.name, before_restart = %adopted, now = ?selection.server, "selection after restart");
            }
            service.selection = selection;
        }
        if service_plan.fresh() {
            proxies::warn_if_unproxyable(state.http_proxy.as_deref(), service);
        }
        settle(
            &mut state.dataplane,
            &mut state.connections,
            &mut state.counters,
            service,
            effects,
        );
        // A discovery service has none until the registry is read.
        if service.config.servers.is_empty()
            && service.config.default_server.is_none()
            && service.config.discovery.is_none()
        {
            warn!(service = %service.config.name, "service has no servers: connects to its VIP are refused");
        }
    }
    for key in &ids.stale_services {
        let Some(dataplane) = state.dataplane.as_mut() else {
            break;
        };
        if let Err(err) = dataplane.maps.services.remove(key) {
            problems.push(format!("removing a stale service entry: {err:#}"));
        }
    }
    for &id in &ids.stale_backends {
        let Some(dataplane) = state.dataplane.as_mut() else {
            break;
        };
        if let Err(err) = dataplane.maps.backends.clear(id) {
            problems.push(format!("clearing backend slot {id}: {err:#}"));
        }
    }
    for service in &runtimes {
        if let Err(err) = persist::store(
            &config.data_dir,
            &service.config.name,
            service.config.default_server,
            &service.config.servers,
        ) {
            warn!(service = %service.config.name, error = format!("{err:#}"), "could not save the server list");
        }
    }
    state.services = runtimes;
    state.config = config;
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "applied, but the maps could not be fully updated: {}",
            problems.join("; ")
        )
    }
}

/// Takes over the Maglev tables the kernel holds for fresh spread services
/// (after a restart: the previous run's tables, so the first rebuild moves
/// only what must move) and removes slots nobody owns any more.
fn adopt_tables(dataplane: &mut Dataplane, runtimes: &mut [ServiceRuntime], plans: &[ServicePlan]) {
    let slots = match dataplane.maps.maglev.all() {
        Ok(slots) => slots,
        Err(err) => {
            warn!(
                error = format!("{err:#}"),
                "could not read the maglev map; tables are written in full"
            );
            return;
        }
    };
    let mut found: HashMap<u32, Vec<(u32, u32)>> = HashMap::new();
    for (key, backend_id) in slots {
        found
            .entry(key.service_id)
            .or_default()
            .push((key.slot, backend_id));
    }
    for (service, plan) in runtimes.iter_mut().zip(plans) {
        let owned = found.remove(&service.id).unwrap_or_default();
        let spread = service.config.policy == Policy::Spread;
        let size = if spread {
            service.config.maglev_table_size
        } else {
            0
        };
        let mut table = vec![NO_BACKEND; size as usize];
        for (slot, backend_id) in owned {
            if slot < size {
                table[slot as usize] = backend_id;
            } else if let Err(err) = dataplane.maps.maglev.remove(&MaglevKey {
                service_id: service.id,
                slot,
            }) {
                warn!(
                    error = format!("{err:#}"),
                    "could not remove a stale Maglev slot"
                );
            }
        }
        if plan.fresh() && spread {
            service.table = table;
        }
    }
    // Tables of service ids no service uses.
    for (service_id, owned) in found {
        for (slot, _) in owned {
            let _ = dataplane
                .maps
                .maglev
                .remove(&MaglevKey { service_id, slot });
        }
    }
}

/// Removes a service that is no longer configured (or whose VIP changed):
/// its entry goes first so new connects are no longer redirected, then its
/// checks stop and its connections are closed.
fn retire(state: &mut State, mut service: ServiceRuntime) {
    if let Some(proxy) = service.proxy.take() {
        // Its listeners stop and every connection it carries closes.
        let carried = proxy.stats().active;
        drop(proxy);
        info!(service = %service.config.name, closed = carried, "proxied service removed; its listener and connections were closed");
    }
    if let Some(dataplane) = state.dataplane.as_mut()
        && let Err(err) = dataplane.maps.services.remove(&service.key)
    {
        warn!(service = %service.config.name, error = format!("{err:#}"), "could not remove the service entry");
    }
    for server in service.servers.values() {
        server.check_task.abort();
    }
    let mut effects = service.machine.set_servers(&[], Instant::now());
    effects.merge(service.machine.set_default(None, Instant::now()));
    for t in &effects.transitions {
        state
            .counters
            .transition(&service.config.name, t.server, t.from, ServerState::Invalid);
    }
    let Some(dataplane) = state.dataplane.as_mut() else {
        return;
    };
    let name = service.config.name.clone();
    spread::remove_slots(dataplane, service.id, 0..service.table.len(), &name);
    let servers: Vec<SocketAddr> = service.servers.keys().copied().collect();
    let closing = state.connections.close(
        service.id,
        &servers,
        |key| dataplane.maps.rev_nat.get(key),
        |cookie| dataplane.maps.dials.forget(cookie),
    );
    match closing {
        Ok(closed) => {
            info!(service = %service.config.name, destroyed = closed.destroyed, "service removed; its connections were closed");
        }
        Err(err) => {
            warn!(service = %service.config.name, error = format!("{err:#}"), "could not close the removed service's connections");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Config {
        Config::from_yaml(
            "services:\n  - name: api\n    vip: 127.0.0.1:6444\n    servers: [10.0.0.1:6443]\n  - name: other\n    vip: 127.0.0.1:6445\n    servers: [10.0.0.1:6443]\n  - name: other-udp\n    vip: 127.0.0.1:6446\n    protocol: udp\n    servers: [10.0.0.1:6443]\n",
            "test.yaml",
        )
        .unwrap()
    }

    fn err(list: &[&str]) -> String {
        let list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        match config_with_servers(&running(), "api", &list) {
            Err(ServersError::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn without_the_ebpf_data_plane_every_service_is_proxied_or_the_start_fails() {
        let tcp = Config::from_yaml(
            "services:\n  - name: api\n    vip: 127.0.0.1:6444\n    servers: [10.0.0.1:6443]\n",
            "test.yaml",
        )
        .unwrap();
        let proxied = all_proxied(tcp).unwrap();
        assert_eq!(proxied.services[0].dataplane, ServiceDataplane::Proxy);
        let message = format!("{:#}", all_proxied(running()).unwrap_err());
        assert!(message.contains("service other-udp"), "{message}");
        assert!(message.contains("UDP"), "{message}");
    }

    #[test]
    fn a_server_list_replaces_only_that_service_s_servers() {
        let list = vec!["10.0.0.2:6443".to_owned(), " 10.0.0.3:6443".to_owned()];
        let config = config_with_servers(&running(), "api", &list).unwrap();
        assert_eq!(
            config.services[0].servers,
            vec![
                "10.0.0.2:6443".parse::<SocketAddr>().unwrap(),
                "10.0.0.3:6443".parse().unwrap()
            ]
        );
        assert!(config_with_servers(&running(), "api", &[]).is_ok());
        assert!(matches!(
            config_with_servers(&running(), "nope", &list),
            Err(ServersError::UnknownService(_))
        ));
    }

    #[test]
    fn bad_server_lists_name_the_entry() {
        assert!(err(&["10.0.0.2:6443", "bogus"]).starts_with("servers[1]: \"bogus\""));
        assert!(err(&["[fd00::1]:6443"]).contains("family mismatch"));
        assert!(err(&["10.0.0.2:0"]).contains("port 0"));
        assert!(err(&["127.0.0.1:6444"]).contains("own VIP"));
        assert!(err(&["224.0.0.1:6443"]).contains("multicast"));
        // Another service's VIP is a loop too; a VIP of another protocol is not.
        assert!(err(&["127.0.0.1:6445"]).contains("the VIP of service other"));
        assert!(config_with_servers(&running(), "api", &["127.0.0.1:6446".to_owned()]).is_ok());
        assert!(err(&["10.0.0.2:1", "10.0.0.2:1"]).contains("duplicate"));
    }

    #[test]
    fn restart_only_fields_keep_their_running_values() {
        let running = running();
        let mut new = running.clone();
        new.api_addr = "127.0.0.1:1".parse().unwrap();
        new.data_dir = "/elsewhere".into();
        new.services.clear();
        new.xdp = Some(crate::config::XdpSettings {
            interfaces: vec![crate::config::XdpInterface::named("eth0")],
            hook: crate::config::XdpHook::Auto,
            mode: crate::config::XdpAttachMode::Skb,
            snat_ipv4: None,
            snat_ipv6: None,
            snat_ports: crate::config::PortRange::DEFAULT_SNAT,
            flow_timeouts: crate::config::FlowTimeouts::DEFAULT,
            flow_gc_interval: crate::config::FlowTimeouts::DEFAULT_GC_INTERVAL,
        });
        new.features.nautilus_health_checks = !running.features.nautilus_health_checks;
        new.features.stake_validation = !running.features.stake_validation;
        new.features.performance_ranking = !running.features.performance_ranking;
        keep_restart_only_fields(&running, &mut new);
        assert_eq!(new.api_addr, running.api_addr);
        assert_eq!(new.data_dir, running.data_dir);
        assert_eq!(new.xdp, None, "xdp changes only on restart");
        assert!(new.services.is_empty(), "services do change");
        // The attester is built at start; ranking changes on reload.
        assert_eq!(
            new.features.nautilus_health_checks,
            running.features.nautilus_health_checks
        );
        assert_eq!(
            new.features.stake_validation,
            running.features.stake_validation
        );
        assert_ne!(
            new.features.performance_ranking,
            running.features.performance_ranking
        );
    }
}
