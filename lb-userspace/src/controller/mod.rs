//! The running controller: keeps the maps in line with the config and the
//! K3s state machine of every service.
//!
//! Events come from three sources:
//! - health-check tasks, one per (service, server), at an interval that
//!   depends on the server's state ([`checks`]);
//! - the connection poller, which counts connections per server from the
//!   kernel and turns new connects into dial successes ([`Controller::poll`]);
//! - configuration changes: SIGHUP reloads and `PUT /services/{name}/servers`
//!   ([`reconcile`]).
//!
//! Every event goes through the pure [`ServiceMachine`]; its [`Effects`] are
//! carried out here: transitions logged and counted, the service entry
//! rewritten when the selection changes, the backends' `BACKEND_DOWN` flags
//! (for XDP flows) updated, and connections closed with `SOCK_DESTROY` after
//! that (so reconnecting clients land on the new server).
//!
//! With an `xdp` block, the poller also keeps the `if_addrs` map (the
//! interfaces' primary addresses, XDP's default SNAT sources) up to date
//! ([`Controller::refresh_if_addrs`]).
//!
//! All mutable state sits behind one mutex; probes run without it.

mod backend_flags;
mod checks;
mod discovery;
pub mod persist;
mod reconcile;
mod spread;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, atomic::Ordering},
    time::{Instant, SystemTime},
};

use lb_common::{NO_BACKEND, VipKey, ip_to_bytes};
use tokio::{runtime::Handle, sync::Semaphore, task::AbortHandle};
use tracing::{info, warn};

pub use self::reconcile::ServersError;
use crate::{
    api::status::{
        AttestationStatus, CheckStatus, RegistryStatus, ServerStatus, ServiceStatus, Status,
        XdpDrops, XdpStatus,
    },
    config::{Config, Policy, Protocol, ServiceConfig},
    health::{
        CheckOutcome, Prober,
        nautilus::{Attester, system_clock, unix_ms},
    },
    kernel::{
        connections::{self, Connections},
        dataplane::Dataplane,
        if_addrs,
    },
    metrics::{Counters, DialStatus},
    nautilus::attestation::{Rejection, Verified},
    policy::{
        ranking::{Score, StakeWeight},
        state_machine::{Effects, Selection, ServerState, ServiceMachine},
    },
};

/// One server as the controller tracks it (besides its state-machine entry).
struct ServerRuntime {
    backend_id: u32,
    /// The [`lb_common::Backend::flags`] last written to its slot.
    backend_flags: u8,
    last_check: Option<(CheckOutcome, SystemTime)>,
    /// The last attestation a `nautilus` check verified.
    attestation: Option<Verified>,
    /// The kernel's connect counter at the last poll.
    last_connects: Option<u64>,
    check_task: AbortHandle,
}

/// One service as the controller tracks it.
struct ServiceRuntime {
    /// The effective config: `servers` may come from a state file or the API.
    config: ServiceConfig,
    key: VipKey,
    id: u32,
    machine: ServiceMachine,
    servers: HashMap<SocketAddr, ServerRuntime>,
    prober: Arc<Prober>,
    selection: Selection,
    /// The Maglev table the kernel holds for this service (`policy: spread`;
    /// empty when none or unknown).
    table: Vec<u32>,
    /// The (backend id, address) pairs `table` was built from.
    table_members: Vec<(u32, SocketAddr)>,
    /// The Maglev weights of `table_members` (same order).
    table_weights: Vec<u32>,
}

struct State {
    dataplane: Dataplane,
    connections: Connections,
    /// The effective config (see [`ServiceRuntime::config`]).
    config: Config,
    services: Vec<ServiceRuntime>,
    counters: Counters,
    /// Whether the last read of the interfaces' addresses failed (logged once).
    if_addrs_failing: bool,
    /// Whether more interfaces have addresses than `if_addrs` holds (logged once).
    if_addrs_overflow: bool,
    /// Sui discovery: static and discovered servers, the last view.
    discovery: discovery::DiscoveryState,
}

struct Inner {
    state: Mutex<State>,
    /// The poller's own `sock_diag` socket: dumps run without the state lock.
    poller: Mutex<Connections>,
    /// Bounds the probes running at once across all services.
    probe_slots: Arc<Semaphore>,
    /// Runs `nautilus` checks (with `chain.enclave_config` and
    /// `features.nautilus_health_checks`).
    attester: Option<Arc<Attester>>,
    runtime: Handle,
}

/// Shared handle to the controller.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

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

impl Controller {
    /// Writes the config into the maps (adopting what is there), loads the
    /// servers saved at runtime, and starts the health checks. Must run
    /// inside the tokio runtime.
    pub fn new(config: Config, dataplane: Dataplane) -> anyhow::Result<Self> {
        let connections = Connections::open()?;
        let poller = Connections::open()?;
        let probe_slots = Arc::new(Semaphore::new(config.max_concurrent_checks));
        let attester = config
            .chain
            .as_ref()
            .filter(|_| config.features.nautilus_health_checks)
            .and_then(|chain| {
                let enclave_config = chain.enclave_config?;
                Some(Arc::new(Attester::new(
                    &chain.sui_rpc_url,
                    enclave_config,
                    config.features.stake_validation,
                    system_clock(),
                )))
            });
        let empty = Config {
            services: Vec::new(),
            ..config.clone()
        };
        let controller = Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    dataplane,
                    connections,
                    config: empty,
                    services: Vec::new(),
                    counters: Counters::default(),
                    if_addrs_failing: false,
                    if_addrs_overflow: false,
                    discovery: discovery::DiscoveryState::default(),
                }),
                poller: Mutex::new(poller),
                probe_slots,
                attester,
                runtime: Handle::current(),
            }),
        };
        controller.lock().discovery.set_static(&config);
        let chain = config.chain.clone();
        let config = reconcile::with_saved_servers(config);
        controller.apply(config)?;
        // After the first apply: static (or saved) servers are served
        // whether or not the registry can be read.
        if let Some(chain) = &chain {
            controller.start_discovery(chain);
        }
        Ok(controller)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every map
        // write is a whole entry), so a poisoned lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a health-check result.
    fn record_check(&self, service_name: &str, address: SocketAddr, outcome: CheckOutcome) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(service) = state
            .services
            .iter_mut()
            .find(|s| s.config.name == service_name)
        else {
            return;
        };
        let Some(server) = service.servers.get_mut(&address) else {
            return;
        };
        let was_ok = server.last_check.as_ref().map(|(o, _)| o.ok);
        if was_ok != Some(outcome.ok) {
            if outcome.ok {
                info!(service = service_name, server = %address, reason = %outcome.reason, "server passes its checks");
            } else {
                warn!(service = service_name, server = %address, reason = %outcome.reason, "server fails its checks");
            }
        }
        let now = Instant::now();
        let mut effects = record_attestation(
            service_name,
            address,
            server,
            &mut service.machine,
            &outcome,
            AttestationContext {
                stake_mist: state
                    .discovery
                    .server(service_name, address)
                    .map_or(0, |node| node.stake),
                stake_weight: state.config.features.stake_weight,
                counters: &mut state.counters,
                now,
            },
        );
        effects.merge(service.machine.check(address, outcome.ok, now));
        if let Some(dial) = outcome.dial {
            let status = if dial.ok {
                DialStatus::Success
            } else {
                DialStatus::Failure
            };
            state
                .counters
                .observe_dial(service_name, status, dial.duration);
            if !dial.ok {
                if outcome.ok {
                    warn!(service = service_name, server = %address, reason = %outcome.reason, "check passes but connects to the server fail");
                }
                effects.merge(service.machine.dial(address, false, now));
            }
        }
        server.last_check = Some((outcome, SystemTime::now()));
        settle(
            &mut state.dataplane,
            &mut state.connections,
            &mut state.counters,
            service,
            effects,
        );
    }

    /// Counts connections per server from the kernel, turns new connects
    /// into dial successes and applies time-based transitions.
    pub fn poll(&self) {
        let start = Instant::now();
        // The dump asks the kernel for sockets to these servers only; the
        // state lock is not held during the dump.
        let servers: HashSet<SocketAddr> = self
            .lock()
            .services
            .iter()
            .flat_map(|s| s.servers.keys().copied())
            .collect();
        let sockets = {
            let mut poller = self
                .inner
                .poller
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match poller.established(&servers) {
                Ok(sockets) => sockets,
                Err(err) => {
                    warn!(
                        error = format!("{err:#}"),
                        "could not count connections (sock_diag)"
                    );
                    return;
                }
            }
        };
        let mut guard = self.lock();
        let State {
            dataplane,
            connections,
            services,
            counters,
            ..
        } = &mut *guard;
        let counts = connections::count(&connections::via_vip(&sockets, &servers, |key| {
            dataplane.rev_nat(key)
        }));
        let now = Instant::now();
        for service in services.iter_mut() {
            let mut effects = Effects::default();
            for (&address, server) in &mut service.servers {
                if !servers.contains(&address) {
                    // Added since the dump started (not in its filter):
                    // counted from the next poll on.
                    continue;
                }
                let connections = counts.get(&(service.id, address)).copied().unwrap_or(0);
                service.machine.set_connections(address, connections);
                // Connects, and unconnected UDP datagrams, the kernel sent here.
                let connects = dataplane
                    .backend_stats(server.backend_id)
                    .map_or(0, |s| s.connects + s.sendmsgs);
                // New connects are successful dials when one is still open
                // or the last probe could connect too (failed connects are
                // reported by the probes).
                let probe_dial_ok = server
                    .last_check
                    .as_ref()
                    .and_then(|(o, _)| o.dial)
                    .is_some_and(|d| d.ok);
                if server.last_connects.is_some_and(|last| connects > last)
                    && (connections > 0 || probe_dial_ok)
                {
                    effects.merge(service.machine.dial(address, true, now));
                }
                server.last_connects = Some(connects);
            }
            effects.merge(service.machine.tick(now));
            settle(dataplane, connections, counters, service, effects);
        }
        counters.last_poll = start.elapsed();
        counters.last_poll_sockets = sockets.len();
    }

    /// Brings the `if_addrs` map (XDP's default SNAT source per interface)
    /// up to date with the interfaces' addresses; nothing without `xdp`.
    /// The dump runs without the state lock.
    pub fn refresh_if_addrs(&self) {
        if self.lock().config.xdp.is_none() {
            return;
        }
        let wanted = if_addrs::read();
        let mut guard = self.lock();
        let state = &mut *guard;
        let result = wanted.and_then(|wanted| {
            let overflow = wanted.len() > lb_common::MAX_INTERFACES as usize;
            if overflow && !state.if_addrs_overflow {
                warn!(
                    interfaces = wanted.len(),
                    max = lb_common::MAX_INTERFACES,
                    "more interfaces with addresses than the if_addrs map holds; the highest indexes get no SNAT address"
                );
            }
            state.if_addrs_overflow = overflow;
            state.dataplane.sync_if_addrs(&wanted)
        });
        match result {
            Ok(changes) => {
                if state.if_addrs_failing {
                    info!("interface addresses readable again");
                    state.if_addrs_failing = false;
                }
                for (ifindex, entry) in &changes.set {
                    info!(
                        ifindex,
                        addresses = %if_addrs::describe(entry),
                        "SNAT addresses of an interface (if_addrs)"
                    );
                }
                if !changes.remove.is_empty() {
                    info!(ifindexes = ?changes.remove, "interfaces without SNAT addresses now (if_addrs)");
                }
            }
            Err(err) => {
                if !state.if_addrs_failing {
                    warn!(
                        error = format!("{err:#}"),
                        "could not refresh the interfaces' addresses (if_addrs); retrying every poll"
                    );
                }
                state.if_addrs_failing = true;
            }
        }
    }

    /// Reloads the configuration (SIGHUP). A config that cannot be applied
    /// leaves everything as it was.
    pub fn reload(&self, mut config: Config) -> anyhow::Result<()> {
        {
            let mut state = self.lock();
            reconcile::keep_restart_only_fields(&state.config, &mut config);
            state.discovery.set_static(&config);
            state.discovery.merge_into(&mut config);
        }
        self.apply(config)?;
        self.refresh_discovery();
        Ok(())
    }

    /// Replaces the server list of one service (`PUT /services/{name}/servers`).
    pub fn set_servers(&self, service: &str, servers: &[String]) -> Result<(), ServersError> {
        let config = {
            let mut state = self.lock();
            let mut config = reconcile::config_with_servers(&state.config, service, servers)?;
            // A discovery service: the list replaces its static servers;
            // the discovered ones stay.
            if config
                .services
                .iter()
                .any(|s| s.name == service && s.discovery.is_some())
            {
                let mut statics = state.discovery.static_servers.clone();
                for s in &config.services {
                    if s.name == service {
                        statics.insert(s.name.clone(), s.servers.clone());
                    }
                }
                state.discovery.static_servers = statics;
                state.discovery.merge_into(&mut config);
            }
            config
        };
        self.apply(config).map_err(ServersError::Apply)
    }

    /// The status document, counters read from the kernel now.
    pub fn status(&self) -> Status {
        let state = self.lock();
        let now = Instant::now();
        let wall = SystemTime::now();
        let services = state
            .services
            .iter()
            .map(|service| {
                let kernel = state
                    .dataplane
                    .service_stats(service.id)
                    .unwrap_or_default();
                let slot_counts = spread::slot_counts(&service.table);
                let servers = service
                    .machine
                    .servers()
                    .iter()
                    .map(|entry| {
                        let runtime = service.servers.get(&entry.address);
                        let counters = runtime
                            .and_then(|r| state.dataplane.backend_stats(r.backend_id).ok())
                            .unwrap_or_default();
                        let last_check = runtime.and_then(|r| r.last_check.as_ref());
                        let since = wall
                            .checked_sub(now.saturating_duration_since(entry.since))
                            .unwrap_or(wall);
                        let slots = runtime
                            .filter(|_| service.config.policy == Policy::Spread)
                            .map(|r| slot_counts.get(&r.backend_id).copied().unwrap_or(0));
                        let node = state.discovery.server(&service.config.name, entry.address);
                        ServerStatus {
                            address: entry.address.to_string(),
                            slots,
                            state: entry.state,
                            state_since: humantime::format_rfc3339_millis(since).to_string(),
                            connections: entry.connections,
                            reason: last_check.map(|(o, _)| o.reason.clone()),
                            healthy: entry.last_check_ok == Some(true),
                            default: service.machine.default_server() == Some(entry.address),
                            connects: counters.connects,
                            sendmsgs: counters.sendmsgs,
                            xdp_packets: counters.xdp_packets,
                            xdp_bytes: counters.xdp_bytes,
                            xdp_flows: counters.xdp_flows,
                            last_check: last_check.map(|(o, at)| CheckStatus {
                                ok: o.ok,
                                reason: o.reason.clone(),
                                at: humantime::format_rfc3339_millis(*at).to_string(),
                                duration_ms: o.duration.as_secs_f64() * 1000.0,
                            }),
                            node: node.map(|n| n.node.to_string()),
                            stake_mist: node.map(|n| n.stake),
                            sui_rpc: node.map(|n| n.sui_rpc.clone()),
                            sync_lag_blocks: last_check.and_then(|(o, _)| o.sync_lag_blocks),
                            score: entry.score.filter(|_| service.machine.ranking()),
                            attestation: runtime
                                .and_then(|r| r.attestation.as_ref())
                                .map(|v| attestation_status(v, wall)),
                            attestation_failure: last_check
                                .and_then(|(o, _)| attestation_failure(o))
                                .map(str::to_owned),
                        }
                    })
                    .collect();
                ServiceStatus {
                    name: service.config.name.clone(),
                    vip: service.config.vip.to_string(),
                    protocol: service.config.protocol.to_string(),
                    selected: service.selection.server.map(|a| a.to_string()),
                    policy: service.config.policy.to_string(),
                    fail_open: service.selection.fail_open,
                    refused: kernel.refused,
                    remote: service.config.remote,
                    xdp_packets: kernel.xdp_packets,
                    xdp_flows: kernel.xdp_flows,
                    xdp_drops: XdpDrops {
                        no_backend: kernel.xdp_drop_no_backend,
                        snat_ports: kernel.xdp_drop_snat_ports,
                        flow_table: kernel.xdp_drop_flow_table,
                        unreachable: kernel.xdp_drop_unreachable,
                    },
                    servers,
                }
            })
            .collect();
        let xdp = state.config.xdp.as_ref().map(|xdp| {
            let counts = state.dataplane.xdp_verdicts().unwrap_or_else(|err| {
                warn!(
                    error = format!("{err:#}"),
                    "could not read the xdp_stats map"
                );
                Vec::new()
            });
            XdpStatus {
                interfaces: xdp.interfaces.clone(),
                mode: xdp.mode.to_string(),
                snat_ports: xdp.snat_ports.to_string(),
                verdicts: lb_common::xdp_counter::NAMES
                    .iter()
                    .enumerate()
                    .map(|(index, name)| {
                        ((*name).to_owned(), counts.get(index).copied().unwrap_or(0))
                    })
                    .collect(),
            }
        });
        let registry = state.discovery.stats.as_ref().map(|stats| {
            let view = state.discovery.view.as_ref();
            let synced = view.is_some_and(|v| v.synced);
            RegistryStatus {
                synced,
                nodes: view.map_or(0, |v| v.nodes.len()),
                // The task's counter follows every checkpoint applied, from
                // the first full sync on.
                cursor: synced.then(|| stats.cursor.load(Ordering::Relaxed)),
                last_error: view.and_then(|v| v.last_error.clone()),
                events: stats
                    .events()
                    .into_iter()
                    .map(|(kind, n)| (kind.to_owned(), n))
                    .collect(),
                resyncs: stats.resyncs_total.load(Ordering::Relaxed),
                reconnects: stats.reconnects_total.load(Ordering::Relaxed),
            }
        });
        Status {
            services,
            xdp,
            registry,
        }
    }

    /// The metric counters kept by the controller.
    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Stops the checks, detaches the programs and removes every pin
    /// (graceful shutdown). Map handles stay open until the process exits,
    /// which is harmless.
    pub fn shutdown(&self) -> anyhow::Result<()> {
        let pin_dir = {
            let mut state = self.lock();
            state.discovery.stop();
            for service in &state.services {
                for server in service.servers.values() {
                    server.check_task.abort();
                }
            }
            state.dataplane.pin_dir().to_path_buf()
        };
        crate::kernel::dataplane::cleanup(&pin_dir)
    }
}

/// The label of the rejection in a check's `nautilus` verdict, if any.
fn attestation_failure(outcome: &CheckOutcome) -> Option<&'static str> {
    outcome
        .attestation
        .as_ref()
        .and_then(|verdict| verdict.result.as_ref().err())
        .map(Rejection::label)
}

/// What [`record_attestation`] needs besides the server.
struct AttestationContext<'a> {
    /// The node's stake in the registry, MIST.
    stake_mist: u64,
    stake_weight: StakeWeight,
    counters: &'a mut Counters,
    now: Instant,
}

/// Takes a check's `nautilus` verdict into account: a verified attestation
/// sets the server's score, a rejection clears it and is counted (when
/// fresh) and logged (when its reason changes), and a forgery fails the
/// server at once, unchecked included ([`ServiceMachine::distrust`]). A
/// check without a `nautilus` part clears what an earlier one set. Runs
/// before the outcome replaces `server.last_check`.
fn record_attestation(
    service: &str,
    address: SocketAddr,
    server: &mut ServerRuntime,
    machine: &mut ServiceMachine,
    outcome: &CheckOutcome,
    context: AttestationContext<'_>,
) -> Effects {
    let before = server
        .last_check
        .as_ref()
        .and_then(|(o, _)| attestation_failure(o));
    let Some(verdict) = &outcome.attestation else {
        server.attestation = None;
        machine.set_score(address, None);
        return Effects::default();
    };
    match &verdict.result {
        Ok(verified) => {
            if before.is_some() {
                info!(service, server = %address, "attestation verified again");
            }
            let score = Score {
                performance: verified.attestation.performance_score,
                reputation: verified.attestation.reputation_score,
                stake_mist: context.stake_mist,
            };
            machine.set_score(address, Some(score.value(context.stake_weight)));
            server.attestation = Some(verified.clone());
            Effects::default()
        }
        Err(rejection) => {
            let label = rejection.label();
            if !verdict.cached {
                context.counters.attestation_failed(service, address, label);
                if before != Some(label) {
                    warn!(service, server = %address, reason = label, detail = %rejection, "attestation rejected; the server fails its nautilus check");
                }
            }
            machine.set_score(address, None);
            if rejection.is_forgery() {
                machine.distrust(address, context.now)
            } else {
                Effects::default()
            }
        }
    }
}

/// How status shows a verified attestation at `now`.
fn attestation_status(verified: &Verified, now: SystemTime) -> AttestationStatus {
    let attestation = &verified.attestation;
    AttestationStatus {
        performance_score: attestation.performance_score,
        reputation_score: attestation.reputation_score,
        stake_mist: attestation.stake_amount,
        timestamp_ms: verified.timestamp_ms,
        age_seconds: verified.age_seconds(unix_ms(now)),
    }
}

/// Carries out a state machine's effects for one service: log and count the
/// transitions, rewrite the service entry if the selection changed, then
/// close connections.
fn settle(
    dataplane: &mut Dataplane,
    connections: &mut Connections,
    counters: &mut Counters,
    service: &mut ServiceRuntime,
    effects: Effects,
) {
    let start = Instant::now();
    let name = service.config.name.clone();
    let name = name.as_str();
    for t in &effects.transitions {
        counters.transition(name, t.server, t.from, t.to);
        if t.to == ServerState::Failed || t.to == ServerState::Invalid {
            warn!(service = name, server = %t.server, from = %t.from, to = %t.to, cause = %t.cause, "server state changed");
        } else {
            info!(service = name, server = %t.server, from = %t.from, to = %t.to, cause = %t.cause, "server state changed");
        }
    }
    reselect(dataplane, counters, service);
    spread::sync(dataplane, service);
    // After the new selection and table: flows moved off a down backend
    // land on the new choice.
    backend_flags::sync(dataplane, service);
    if effects.close.is_empty() {
        return;
    }
    if service.config.remote {
        forget_xdp_flows(dataplane, service, &effects.close);
    }
    match connections.close(service.id, &effects.close, |key| dataplane.rev_nat(key)) {
        Ok(closed) => {
            counters.closed(name, closed.destroyed as u64);
            if closed.failed == 0 {
                for &server in &effects.close {
                    service.machine.set_connections(server, 0);
                }
            }
            if closed.destroyed + closed.failed > 0 {
                let servers: Vec<String> = effects.close.iter().map(ToString::to_string).collect();
                info!(
                    service = name,
                    servers = servers.join(","),
                    destroyed = closed.destroyed,
                    already_gone = closed.already_gone,
                    failed = closed.failed,
                    micros = start.elapsed().as_micros(),
                    destroy_micros = closed.micros,
                    "closed connections"
                );
            }
        }
        Err(err) => {
            warn!(
                service = name,
                error = format!("{err:#}"),
                "could not close connections (sock_diag)"
            );
        }
    }
}

/// The XDP side of "close the connections of these servers": their flows
/// are forgotten, so the next packet of each is hashed to a backend again
/// (for TCP the new backend answers with a reset, as after a close).
fn forget_xdp_flows(dataplane: &mut Dataplane, service: &ServiceRuntime, servers: &[SocketAddr]) {
    let ids: Vec<u32> = servers
        .iter()
        .filter_map(|server| service.servers.get(server))
        .map(|server| server.backend_id)
        .collect();
    if ids.is_empty() {
        return;
    }
    let start = Instant::now();
    match dataplane
        .forget_flows(|flow| flow.service_id == service.id && ids.contains(&flow.backend_id))
    {
        Ok(0) => {}
        Ok(removed) => info!(
            service = %service.config.name,
            entries = removed,
            micros = start.elapsed().as_micros(),
            "forgot XDP flows of closed servers"
        ),
        Err(err) => warn!(
            service = %service.config.name,
            error = format!("{err:#}"),
            "could not forget XDP flows"
        ),
    }
}

/// Writes the service entry when the state machine's selection changed.
fn reselect(dataplane: &mut Dataplane, counters: &mut Counters, service: &mut ServiceRuntime) {
    let selection = service.machine.select();
    if selection == service.selection {
        return;
    }
    let backend_id = selection
        .server
        .and_then(|a| service.servers.get(&a))
        .map_or(NO_BACKEND, |s| s.backend_id);
    let entry = spread::entry(service, backend_id);
    if let Err(err) = dataplane.set_service(service.key, entry) {
        warn!(service = %service.config.name, error = format!("{err:#}"), "could not update the services map; will retry on the next event");
        return;
    }
    let name = service.config.name.as_str();
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "none".to_owned(), |a| a.to_string());
    if selection.server != service.selection.server {
        counters.selection_changed(name);
        match selection.server {
            Some(_) => {
                info!(service = name, from = %show(service.selection.server), to = %show(selection.server), "selected backend changed");
            }
            None => {
                warn!(service = name, from = %show(service.selection.server), "no server: connects to the VIP are refused");
            }
        }
    }
    if selection.fail_open {
        counters.failed_open(name);
        warn!(service = name, server = %show(selection.server), "every server fails: failing open to the best-ranked one");
    }
    service.selection = selection;
}

/// Whether probes of this service should also report the connect to the
/// server's own address (TCP services).
const fn dial_probe(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Tcp)
}
