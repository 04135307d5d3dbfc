//! The running controller: fills the maps from the config, runs the health
//! checks, keeps each service's entry pointing at the selected backend, and
//! builds the status document.
//!
//! All mutable state sits behind one mutex; health-check tasks lock it only
//! to record a result and apply the (pure) selection.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use anyhow::Context as _;
use lb_common::{NO_BACKEND, Service, VipKey, ip_to_bytes};
use tokio::{task::JoinSet, time::MissedTickBehavior};
use tracing::{info, warn};

use crate::{
    config::{Config, HealthCheckConfig, ServiceConfig},
    dataplane::Dataplane,
    health::{self, ProbeResult},
    map_ids::{IdPlan, ServiceSpec, backend_entry, plan_ids},
    selection::{Candidate, Health, select, state_of},
    status::{CheckStatus, ServerStatus, ServiceStatus, Status},
};

/// One server as the controller tracks it.
#[derive(Debug, Clone)]
struct ServerRuntime {
    address: SocketAddr,
    backend_id: u32,
    in_server_list: bool,
    health: Health,
    last_check: Option<(ProbeResult, SystemTime)>,
}

/// One service as the controller tracks it.
#[derive(Debug, Clone)]
struct ServiceRuntime {
    config: ServiceConfig,
    key: VipKey,
    id: u32,
    /// Servers in config order, then the default server if not among them.
    servers: Vec<ServerRuntime>,
    selected: Option<SocketAddr>,
    selection_changes: u64,
}

impl ServerRuntime {
    const fn candidate(&self) -> Candidate {
        Candidate {
            address: self.address,
            health: self.health,
        }
    }
}

impl ServiceRuntime {
    fn candidates(&self) -> Vec<Candidate> {
        self.servers
            .iter()
            .filter(|s| s.in_server_list)
            .map(ServerRuntime::candidate)
            .collect()
    }

    fn default_candidate(&self) -> Option<Candidate> {
        let default = self.config.default_server?;
        self.servers
            .iter()
            .find(|s| s.address == default)
            .map(ServerRuntime::candidate)
    }

    fn backend_id_of(&self, address: Option<SocketAddr>) -> u32 {
        address
            .and_then(|a| self.servers.iter().find(|s| s.address == a))
            .map_or(NO_BACKEND, |s| s.backend_id)
    }
}

struct State {
    dataplane: Dataplane,
    services: Vec<ServiceRuntime>,
}

/// Shared handle to the controller state.
#[derive(Clone)]
pub struct Controller {
    state: Arc<Mutex<State>>,
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

impl Controller {
    /// Writes the config into the maps (adopting what is there) and returns
    /// the controller. Health checks start with [`Controller::spawn_checks`].
    pub fn new(config: &Config, mut dataplane: Dataplane) -> anyhow::Result<Self> {
        let specs: Vec<ServiceSpec> = config
            .services
            .iter()
            .map(|s| ServiceSpec {
                key: vip_key(s),
                backends: backend_addresses(s),
            })
            .collect();
        let plan = plan_ids(&dataplane.services()?, &dataplane.backends()?, &specs)?;
        let services = apply_plan(&mut dataplane, config, &specs, &plan)?;
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                dataplane,
                services,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every write
        // is a whole map entry), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts one health-check loop per server.
    pub fn spawn_checks(&self, tasks: &mut JoinSet<()>) {
        let state = self.lock();
        for (service_index, service) in state.services.iter().enumerate() {
            for (server_index, server) in service.servers.iter().enumerate() {
                let controller = self.clone();
                let check = service.config.health_check.clone();
                let address = server.address;
                tasks.spawn(async move {
                    controller
                        .check_loop(service_index, server_index, address, check)
                        .await;
                });
            }
        }
    }

    async fn check_loop(
        self,
        service_index: usize,
        server_index: usize,
        address: SocketAddr,
        check: HealthCheckConfig,
    ) {
        let mut ticker = tokio::time::interval(check.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = health::probe(check.kind, address, check.timeout).await;
            self.record(service_index, server_index, result);
        }
    }

    /// Records a probe result and re-selects the service's backend.
    fn record(&self, service_index: usize, server_index: usize, result: ProbeResult) {
        let mut guard = self.lock();
        let State {
            dataplane,
            services,
        } = &mut *guard;
        let service = &mut services[service_index];
        let server = &mut service.servers[server_index];
        let health = if result.ok {
            Health::Passing
        } else {
            Health::Failing
        };
        if health != server.health {
            if result.ok {
                info!(service = %service.config.name, server = %server.address, reason = %result.reason, "server passes its checks");
            } else {
                warn!(service = %service.config.name, server = %server.address, reason = %result.reason, "server fails its checks");
            }
        }
        server.health = health;
        server.last_check = Some((result, SystemTime::now()));
        reselect(dataplane, service);
    }

    /// The status document, counters read from the kernel now.
    pub fn status(&self) -> Status {
        let state = self.lock();
        let services = state
            .services
            .iter()
            .map(|service| {
                let refused = state
                    .dataplane
                    .service_stats(service.id)
                    .map_or(0, |s| s.refused);
                ServiceStatus {
                    name: service.config.name.clone(),
                    vip: service.config.vip.to_string(),
                    protocol: service.config.protocol.to_string(),
                    selected: service.selected.map(|a| a.to_string()),
                    refused,
                    servers: service
                        .servers
                        .iter()
                        .map(|server| {
                            let counters = state
                                .dataplane
                                .backend_stats(server.backend_id)
                                .unwrap_or_default();
                            ServerStatus {
                                address: server.address.to_string(),
                                state: state_of(
                                    &server.candidate(),
                                    server.in_server_list,
                                    service.selected,
                                ),
                                healthy: server.health == Health::Passing,
                                default: service.config.default_server == Some(server.address),
                                connects: counters.connects,
                                sendmsgs: counters.sendmsgs,
                                last_check: server.last_check.as_ref().map(|(r, at)| CheckStatus {
                                    ok: r.ok,
                                    reason: r.reason.clone(),
                                    at: humantime::format_rfc3339_millis(*at).to_string(),
                                    duration_ms: r.duration.as_secs_f64() * 1000.0,
                                }),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Status { services }
    }

    /// How many times each service's selection changed (for metrics).
    pub fn selection_changes(&self) -> Vec<(String, u64)> {
        self.lock()
            .services
            .iter()
            .map(|s| (s.config.name.clone(), s.selection_changes))
            .collect()
    }

    /// Detaches the programs and removes every pin (graceful shutdown). Call
    /// it after the health-check tasks stopped; map handles stay open until
    /// the process exits, which is harmless.
    pub fn shutdown(&self) -> anyhow::Result<()> {
        let pin_dir = self.lock().dataplane.pin_dir().to_path_buf();
        crate::dataplane::cleanup(&pin_dir)
    }
}

/// Applies the selection policy and writes the service entry if it changed.
fn reselect(dataplane: &mut Dataplane, service: &mut ServiceRuntime) {
    let selected = select(
        &service.candidates(),
        service.default_candidate(),
        service.selected,
    );
    if selected == service.selected {
        return;
    }
    let entry = Service {
        id: service.id,
        backend_id: service.backend_id_of(selected),
        flags: 0,
        pad: 0,
    };
    match dataplane.set_service(service.key, entry) {
        Ok(()) => {
            let show =
                |a: Option<SocketAddr>| a.map_or_else(|| "none".to_owned(), |a| a.to_string());
            if selected.is_some() {
                info!(service = %service.config.name, from = %show(service.selected), to = %show(selected), "selected backend changed");
            } else {
                warn!(service = %service.config.name, from = %show(service.selected), "no usable server: connects to the VIP are refused");
            }
            service.selected = selected;
            service.selection_changes += 1;
        }
        Err(err) => {
            warn!(service = %service.config.name, error = format!("{err:#}"), "could not update the services map; will retry on the next check");
        }
    }
}

/// Writes backends and services in an order that never leaves a live service
/// pointing at a slot with another meaning, then removes what is stale.
fn apply_plan(
    dataplane: &mut Dataplane,
    config: &Config,
    specs: &[ServiceSpec],
    plan: &IdPlan,
) -> anyhow::Result<Vec<ServiceRuntime>> {
    for &id in &plan.fresh_backends {
        dataplane.reset_backend_stats(id)?;
    }
    for &id in &plan.fresh_services {
        dataplane.reset_service_stats(id)?;
    }
    let mut runtimes = Vec::with_capacity(specs.len());
    for (index, (service_config, spec)) in config.services.iter().zip(specs).enumerate() {
        let service_id = plan.service_ids[index];
        let mut servers = Vec::with_capacity(spec.backends.len());
        for (&address, &backend_id) in spec.backends.iter().zip(&plan.backend_ids[index]) {
            dataplane
                .set_backend(backend_id, backend_entry(address, service_id))
                .with_context(|| format!("service {}: backend {address}", service_config.name))?;
            servers.push(ServerRuntime {
                address,
                backend_id,
                in_server_list: service_config.servers.contains(&address),
                health: Health::Unchecked,
                last_check: None,
            });
        }
        let mut runtime = ServiceRuntime {
            config: service_config.clone(),
            key: spec.key,
            id: service_id,
            servers,
            selected: None,
            selection_changes: 0,
        };
        // Start from what the kernel uses now (after a restart), else from the
        // policy's choice among unchecked servers.
        let initial = plan.adopted_selection[index]
            .or_else(|| select(&runtime.candidates(), runtime.default_candidate(), None));
        let entry = Service {
            id: service_id,
            backend_id: runtime.backend_id_of(initial),
            flags: 0,
            pad: 0,
        };
        dataplane
            .set_service(spec.key, entry)
            .with_context(|| format!("service {}", service_config.name))?;
        runtime.selected = initial;
        if plan.adopted_selection[index].is_some() {
            info!(service = %service_config.name, backend = ?initial, "kept the backend selected before the restart");
        }
        if service_config.servers.is_empty() && service_config.default_server.is_none() {
            warn!(service = %service_config.name, "service has no servers: connects to its VIP are refused");
        }
        runtimes.push(runtime);
    }
    for key in &plan.stale_services {
        dataplane.remove_service(key)?;
    }
    for &id in &plan.stale_backends {
        dataplane.clear_backend(id)?;
    }
    Ok(runtimes)
}
