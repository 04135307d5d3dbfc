//! Applying a configuration to a running controller: at start, on SIGHUP
//! and when a server list is replaced through the API.
//!
//! Everything that can fail is checked before the first map write (map ids,
//! probers with their CA files), so a bad change leaves the running setup
//! untouched. Servers that stay keep their state; removed ones go through
//! the state machine's removal path (invalid, connections closed).

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::SocketAddr,
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use lb_common::{Backend, MaglevKey, NO_BACKEND};
use tracing::{info, warn};

use super::{Controller, ServerRuntime, ServiceRuntime, settle, spread, vip_key};
use crate::{
    config::{Config, Policy, ServiceConfig},
    controller::persist,
    health::Prober,
    kernel::dataplane::Dataplane,
    policy::{
        map_ids::{ServiceSpec, backend_entry, plan_ids},
        state_machine::{Effects, Selection, ServerState, ServiceMachine},
    },
};

/// Why `PUT /services/{name}/servers` was refused.
#[derive(Debug)]
pub enum ServersError {
    /// No service has that name.
    UnknownService(String),
    /// The list is invalid; the message names the entry.
    Invalid(String),
    /// The change could not be applied.
    Apply(anyhow::Error),
}

impl fmt::Display for ServersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownService(name) => write!(f, "no service named {name:?}"),
            Self::Invalid(message) => f.write_str(message),
            Self::Apply(err) => write!(f, "{err:#}"),
        }
    }
}

impl std::error::Error for ServersError {}

/// Every address a service may select: servers, then the default server.
fn backend_addresses(service: &ServiceConfig) -> Vec<SocketAddr> {
    let mut all = service.servers.clone();
    if let Some(default) = service.default_server
        && !all.contains(&default)
    {
        all.push(default);
    }
    all
}

/// `config` with each service's servers replaced by those saved in its state
/// file, when that file belongs to the configured default server (K3s
/// semantics; see [`persist`]).
pub(super) fn with_saved_servers(mut config: Config) -> Config {
    for service in &mut config.services {
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

/// What applying one service left to do once every runtime is installed.
struct Pending {
    /// The state machine's effects to settle.
    effects: Effects,
    /// A new service: its entry (and table) must be written.
    fresh: bool,
    /// `remote`, `policy` or the table size changed: rewrite the entry.
    entry_changed: bool,
    /// `remote` was switched off: forget the service's XDP flows.
    remote_off: bool,
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
        // The attester (nautilus checks) is built at start.
        features.nautilus_health_checks,
        features.stake_validation
    );
}

/// The running config with one service's servers replaced; checks the list
/// like the config file does.
pub(super) fn config_with_servers(
    running: &Config,
    name: &str,
    servers: &[String],
) -> Result<Config, ServersError> {
    let mut config = running.clone();
    let service = config
        .services
        .iter_mut()
        .find(|s| s.name == name)
        .ok_or_else(|| ServersError::UnknownService(name.to_owned()))?;
    let mut parsed: Vec<SocketAddr> = Vec::with_capacity(servers.len());
    for (i, text) in servers.iter().enumerate() {
        let address: SocketAddr = text.trim().parse().map_err(|_| {
            ServersError::Invalid(format!(
                "servers[{i}]: {text:?} is not an IP:port address (IPv6 in brackets: \"[fd00::1]:6443\")"
            ))
        })?;
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
        if address.port() == 0 || address.ip().is_unspecified() {
            return Err(ServersError::Invalid(format!(
                "servers[{i}]: {address} cannot be connected to (port 0 or unspecified address)"
            )));
        }
        if address == service.vip {
            return Err(ServersError::Invalid(format!(
                "servers[{i}]: {address} is the service's own VIP (a loop)"
            )));
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

impl Controller {
    /// Makes `config` the running configuration.
    pub(super) fn apply(&self, config: Config) -> anyhow::Result<()> {
        let now = Instant::now();
        // Probers first: a bad CA file must fail before anything changes.
        let mut probers = Vec::with_capacity(config.services.len());
        for service in &config.services {
            let references = config.reference_urls();
            let prober = Prober::with_chain(
                &service.health_check.check,
                references,
                self.inner.attester.clone(),
            )
            .with_context(|| format!("services {}: health_check", service.name))?;
            probers.push(Arc::new(prober));
        }
        let specs: Vec<ServiceSpec> = config
            .services
            .iter()
            .map(|s| ServiceSpec {
                key: vip_key(s),
                backends: backend_addresses(s),
            })
            .collect();

        let mut guard = self.lock();
        let state = &mut *guard;
        let plan = plan_ids(
            &state.dataplane.services()?,
            &state.dataplane.backends()?,
            &specs,
        )?;
        for &id in &plan.fresh_backends {
            state.dataplane.reset_backend_stats(id)?;
        }
        for &id in &plan.fresh_services {
            state.dataplane.reset_service_stats(id)?;
        }
        // Servers keep their BACKEND_DOWN flag through a reload.
        let flags: HashMap<(u32, SocketAddr), u8> = state
            .services
            .iter()
            .flat_map(|s| {
                s.servers
                    .iter()
                    .map(move |(address, r)| ((s.id, *address), r.backend_flags))
            })
            .collect();
        let flags_of = |service_id: u32, address: SocketAddr| {
            flags.get(&(service_id, address)).copied().unwrap_or(0)
        };
        for (index, (service, spec)) in config.services.iter().zip(&specs).enumerate() {
            let service_id = plan.service_ids[index];
            for (&address, &backend_id) in spec.backends.iter().zip(&plan.backend_ids[index]) {
                let backend = Backend {
                    flags: flags_of(service_id, address),
                    ..backend_entry(address, service_id)
                };
                state
                    .dataplane
                    .set_backend(backend_id, backend)
                    .with_context(|| format!("service {}: backend {address}", service.name))?;
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
            .count(&all_servers, |key| state.dataplane.rev_nat(key))
            .unwrap_or_default();

        let mut old: HashMap<String, ServiceRuntime> = std::mem::take(&mut state.services)
            .into_iter()
            .map(|s| (s.config.name.clone(), s))
            .collect();
        let mut runtimes = Vec::with_capacity(config.services.len());
        let mut pending = Vec::with_capacity(config.services.len());
        for (index, (service_config, spec)) in config.services.iter().zip(&specs).enumerate() {
            let service_id = plan.service_ids[index];
            let previous = match old.remove(&service_config.name) {
                Some(p) if p.key == spec.key && p.id == service_id => Some(p),
                Some(p) => {
                    // Same name, another VIP: a different service.
                    retire(state, p);
                    None
                }
                None => None,
            };
            let fresh = previous.is_none();
            // The entry's flags come from these: rewrite it when one changed.
            // Flows XDP forwarded while the VIP was remote must stop.
            let remote_off = previous
                .as_ref()
                .is_some_and(|p| p.config.remote && !service_config.remote);
            let entry_changed = previous.as_ref().is_some_and(|p| {
                (p.config.policy, p.config.maglev_table_size, p.config.remote)
                    != (
                        service_config.policy,
                        service_config.maglev_table_size,
                        service_config.remote,
                    )
            });
            let mut table = (Vec::new(), Vec::new(), Vec::new());
            let (mut machine, mut servers, selection, effects) = if let Some(p) = previous {
                let mut machine = p.machine;
                let mut effects = machine.set_servers(&service_config.servers, now);
                effects.merge(machine.set_default(service_config.default_server, now));
                table = (p.table, p.table_members, p.table_weights);
                (machine, p.servers, p.selection, effects)
            } else {
                let machine = ServiceMachine::new(
                    &service_config.servers,
                    service_config.default_server,
                    now,
                );
                let selection = Selection {
                    server: plan.adopted_selection[index],
                    fail_open: false,
                };
                (machine, HashMap::new(), selection, Effects::default())
            };
            machine.set_exclusive(service_config.policy == Policy::Failover);
            machine.set_ranking(config.features.performance_ranking);
            // Server runtimes: keep the known ones, start checks for new ones.
            let mut kept = HashMap::with_capacity(spec.backends.len());
            for (&address, &backend_id) in spec.backends.iter().zip(&plan.backend_ids[index]) {
                machine.set_connections(
                    address,
                    counts.get(&(service_id, address)).copied().unwrap_or(0),
                );
                let runtime = match servers.remove(&address) {
                    Some(mut r) => {
                        r.backend_id = backend_id;
                        r.backend_flags = flags_of(service_id, address);
                        r
                    }
                    None => ServerRuntime {
                        backend_id,
                        backend_flags: flags_of(service_id, address),
                        last_check: None,
                        attestation: None,
                        last_connects: None,
                        check_task: self.spawn_check(&service_config.name, address),
                    },
                };
                kept.insert(address, runtime);
            }
            for (_, gone) in servers {
                gone.check_task.abort();
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
            });
            pending.push(Pending {
                effects,
                fresh,
                entry_changed,
                remote_off,
            });
        }
        if pending.iter().any(|p| p.fresh) {
            adopt_tables(&mut state.dataplane, &mut runtimes, &pending);
        }
        // Services that are gone: refuse their VIP first, then close.
        for (_, gone) in old {
            retire(state, gone);
        }
        // From here on nothing returns early: the new runtimes are installed
        // whatever happens, and map errors are reported at the end.
        let mut problems: Vec<String> = Vec::new();
        for (service, pending) in runtimes.iter_mut().zip(pending) {
            let Pending {
                effects,
                fresh,
                entry_changed,
                remote_off,
            } = pending;
            if entry_changed {
                // `remote`, `policy` or the table size changed: same
                // selection, new flags (settle writes a new selection).
                let backend_id = service
                    .selection
                    .server
                    .and_then(|a| service.servers.get(&a))
                    .map_or(NO_BACKEND, |s| s.backend_id);
                let entry = spread::entry(service, backend_id);
                match state.dataplane.set_service(service.key, entry) {
                    Ok(()) => {
                        info!(service = %service.config.name, remote = service.config.remote, policy = %service.config.policy, "service entry rewritten");
                    }
                    Err(err) => problems.push(format!("service {}: {err:#}", service.config.name)),
                }
                if remote_off {
                    // Flows XDP forwarded while the VIP was remote stop now:
                    // their next packet finds a service without `remote`.
                    let id = service.id;
                    if let Err(err) = state.dataplane.forget_flows(|flow| flow.service_id == id) {
                        problems.push(format!("service {}: {err:#}", service.config.name));
                    }
                }
            }
            if fresh {
                // Make sure the entry exists and points where the machine says.
                let selection = service.machine.select();
                let backend_id = selection
                    .server
                    .and_then(|a| service.servers.get(&a))
                    .map_or(NO_BACKEND, |s| s.backend_id);
                let written = state
                    .dataplane
                    .set_service(service.key, spread::entry(service, backend_id));
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
        for key in &plan.stale_services {
            if let Err(err) = state.dataplane.remove_service(key) {
                problems.push(format!("removing a stale service entry: {err:#}"));
            }
        }
        for &id in &plan.stale_backends {
            if let Err(err) = state.dataplane.clear_backend(id) {
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
}

/// Takes over the Maglev tables the kernel holds for fresh spread services
/// (after a restart: the previous run's tables, so the first rebuild moves
/// only what must move) and removes slots nobody owns any more.
fn adopt_tables(dataplane: &mut Dataplane, runtimes: &mut [ServiceRuntime], pending: &[Pending]) {
    let slots = match dataplane.maglev_slots() {
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
    for (service, Pending { fresh, .. }) in runtimes.iter_mut().zip(pending) {
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
            } else if let Err(err) = dataplane.remove_maglev_slot(&MaglevKey {
                service_id: service.id,
                slot,
            }) {
                warn!(
                    error = format!("{err:#}"),
                    "could not remove a stale Maglev slot"
                );
            }
        }
        if *fresh && spread {
            service.table = table;
        }
    }
    // Tables of service ids no service uses.
    for (service_id, owned) in found {
        for (slot, _) in owned {
            let _ = dataplane.remove_maglev_slot(&MaglevKey { service_id, slot });
        }
    }
}

/// Removes a service that is no longer configured (or whose VIP changed):
/// its entry goes first so new connects are no longer redirected, then its
/// checks stop and its connections are closed.
fn retire(state: &mut super::State, mut service: ServiceRuntime) {
    if let Err(err) = state.dataplane.remove_service(&service.key) {
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
    let name = service.config.name.clone();
    spread::remove_slots(
        &mut state.dataplane,
        service.id,
        0..service.table.len(),
        &name,
    );
    let servers: Vec<SocketAddr> = service.servers.keys().copied().collect();
    match state
        .connections
        .close(service.id, &servers, |key| state.dataplane.rev_nat(key))
    {
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
            "services:\n  - name: api\n    vip: 127.0.0.1:6444\n    servers: [10.0.0.1:6443]\n",
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
            interfaces: vec!["eth0".to_owned()],
            mode: crate::config::XdpAttachMode::Skb,
            snat_ipv4: None,
            snat_ipv6: None,
            snat_ports: crate::config::PortRange::DEFAULT_SNAT,
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
