//! What the controller owns: [`State`] (held only by the controller
//! thread) and, per service and server, what it tracks besides the state
//! machine ([`ServiceRuntime`], [`ServerRuntime`]). The handlers that change
//! it live in [`handlers`](super::handlers).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use lb_common::VipKey;
use tokio::{
    runtime::Handle,
    sync::{
        Notify, Semaphore,
        mpsc::{self, WeakSender},
    },
    task::{AbortHandle, JoinHandle},
};

use super::{
    dns::DnsState,
    events::{Controller, Event},
    flow_gc::FlowGc,
    hop_watch::HopWatch,
    k3s::K3sState,
    registry::DiscoveryState,
};
use crate::{
    config::{Config, DialStall, KernelLog, Protocol, ServiceConfig, ServiceDataplane},
    health::{CheckOutcome, Prober, nautilus::Attester},
    kernel::{connections::Connections, dataplane::Dataplane},
    metrics::Counters,
    nautilus::attestation::Verified,
    policy::{
        dial_stall::DialTime,
        state_machine::{Selection, ServiceMachine},
    },
    proxy::{DialReport, ProxyEnv, ProxyHandle},
};

/// One server as the controller tracks it (besides its state-machine entry).
pub(super) struct ServerRuntime {
    pub(super) backend_id: u32,
    /// The [`lb_common::Backend::flags`] last written to its slot.
    pub(super) backend_flags: u8,
    pub(super) last_check: Option<(CheckOutcome, SystemTime)>,
    /// The last attestation a `nautilus` check verified.
    pub(super) attestation: Option<Verified>,
    /// The kernel's connect counter at the last poll.
    pub(super) last_connects: Option<u64>,
    pub(super) check_task: AbortHandle,
    /// Wakes the check task for a probe at once (after a failed client dial).
    pub(super) wake: Arc<Notify>,
    /// Its smoothed dial time (client and probe dials that succeeded).
    pub(super) dial_time: DialTime,
    /// Set while a failed client dial made it suspect (see [`Suspicion`]).
    pub(super) suspect: Option<Suspicion>,
}

/// A server a client dial failed to: the kernel skips it until a dial to
/// it succeeds or a probe passes; a probe that fails confirms it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Suspicion {
    /// When the controller heard of the first failed dial.
    pub(super) since: SystemTime,
    /// The kernel's reason (`reset`, `timeout`, `stalled`).
    pub(super) reason: &'static str,
    /// Whether a probe since then failed too.
    pub(super) confirmed: bool,
}

/// The `failover` entry last written for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WrittenFailover {
    pub(super) ids: Vec<u32>,
    /// The stall bound (zero: off).
    pub(super) bound: Duration,
    /// [`lb_common::failover_flag`] bits.
    pub(super) flags: u32,
    /// The setting the bound came from.
    pub(super) setting: DialStall,
}

/// One service as the controller tracks it.
pub(super) struct ServiceRuntime {
    /// The effective config: `servers` may come from a state file or the API.
    pub(super) config: ServiceConfig,
    pub(super) key: VipKey,
    pub(super) id: u32,
    pub(super) machine: ServiceMachine,
    pub(super) servers: HashMap<SocketAddr, ServerRuntime>,
    pub(super) prober: Arc<Prober>,
    pub(super) selection: Selection,
    /// The Maglev table the kernel holds for this service (`policy: spread`;
    /// empty when none or unknown).
    pub(super) table: Vec<u32>,
    /// The (backend id, address) pairs `table` was built from.
    pub(super) table_members: Vec<(u32, SocketAddr)>,
    /// The Maglev weights of `table_members` (same order).
    pub(super) table_weights: Vec<u32>,
    /// The `failover` entry last written for this service; `None` before
    /// the first write.
    pub(super) failover: Option<WrittenFailover>,
    /// Its proxy (`dataplane: proxy`; `None` in eBPF mode).
    pub(super) proxy: Option<ProxyHandle>,
}

impl ServiceRuntime {
    /// Whether the kernel counts this service's connections (`sock_ops`,
    /// `backend_conns`): TCP with `dial_tracking`. The others are counted
    /// from a `sock_diag` dump.
    pub(super) fn counted_by_kernel(&self) -> bool {
        self.in_kernel() && self.config.protocol == Protocol::Tcp && self.config.dial_tracking
    }

    /// Whether the kernel carries this service (its VIP is in `services`):
    /// not in proxy mode.
    pub(super) fn in_kernel(&self) -> bool {
        self.config.dataplane == ServiceDataplane::Ebpf
    }
}

/// Everything the controller owns.
pub(super) struct State {
    /// The kernel's data plane: programs, links and maps (`None` when the
    /// daemon runs without eBPF: every service is proxied).
    pub(super) dataplane: Option<Dataplane>,
    /// The `sock_diag` socket that closes connections and counts them on a
    /// configuration change (the poller has its own).
    pub(super) connections: Connections,
    /// The effective config (see [`ServiceRuntime::config`]).
    pub(super) config: Config,
    pub(super) services: Vec<ServiceRuntime>,
    pub(super) counters: Counters,
    /// Whether the last read of the interfaces' addresses failed (logged once).
    pub(super) if_addrs_failing: bool,
    /// Whether more interfaces have addresses than `if_addrs` holds (logged once).
    pub(super) if_addrs_overflow: bool,
    /// Sui discovery: static and discovered servers, the last view.
    pub(super) discovery: DiscoveryState,
    /// The followed K3s balancers (the `k3s` block).
    pub(super) k3s: K3sState,
    /// The servers written as DNS names and what they resolve to.
    pub(super) dns: DnsState,
    /// Bounds the probes running at once across all services.
    pub(super) probe_slots: Arc<Semaphore>,
    /// Runs `nautilus` checks (with `chain.enclave_config` and
    /// `features.nautilus_health_checks`).
    pub(super) attester: Option<Arc<Attester>>,
    /// Where tasks (checks, poller, discovery) run.
    pub(super) runtime: Handle,
    /// The thread's own channel, for the tasks it starts; weak, so the
    /// thread ends once every outside handle is gone.
    pub(super) events: WeakSender<Event>,
    /// The poller task (`None` before the start).
    pub(super) poller: Option<JoinHandle<()>>,
    /// The task reading the kernel's dial events (`None` before the start).
    pub(super) dial_task: Option<JoinHandle<()>>,
    /// The level the kernel programs log at now (`kernel_log` map): the
    /// config's, or the last `daas-lb kernel-log` since the last reload.
    pub(super) kernel_log: KernelLog,
    /// The task draining the kernel programs' log (`None` before the start).
    pub(super) kernel_log_task: Option<JoinHandle<()>>,
    /// The flow collector (`xdp` only; `None` before the start).
    pub(super) flow_gc: Option<FlowGc>,
    /// The watcher of routes, neighbours and links that bumps the next-hop
    /// generation (`xdp` only; `None` before the start).
    pub(super) hop_watch: Option<HopWatch>,
    /// Why `dataplane: auto` runs without the eBPF data plane (the error
    /// that loading or attaching it gave); `None` when it did not fall back.
    pub(super) dataplane_fallback: Option<String>,
    /// The HTTP CONNECT proxy settings proxied services dial and
    /// health-check their servers through (`http_proxy_allowed`; `None`:
    /// every dial and check is direct).
    pub(super) http_proxy: Option<Arc<ProxyEnv>>,
    /// Where the proxy mode's services report their dials.
    pub(super) proxy_reports: mpsc::Sender<Vec<DialReport>>,
    /// The other end, until the start hands it to the forwarder task.
    pub(super) proxy_reports_rx: Option<mpsc::Receiver<Vec<DialReport>>>,
    /// The task handing the proxies' dial reports over (`None` before the
    /// start).
    pub(super) proxy_forwarder: Option<JoinHandle<()>>,
}

impl State {
    /// The state before the first configuration is applied.
    pub(super) fn new(
        config: &Config,
        dataplane: Option<Dataplane>,
        events: WeakSender<Event>,
        runtime: Handle,
    ) -> anyhow::Result<Self> {
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
                    crate::health::nautilus::system_clock(),
                )))
            });
        let (proxy_reports, proxy_reports_rx) = mpsc::channel(super::proxies::QUEUE);
        let http_proxy = super::proxies::http_proxy(config.http_proxy_allowed)?;
        Ok(Self {
            dataplane,
            connections: Connections::open()?,
            config: Config {
                services: Vec::new(),
                ..config.clone()
            },
            services: Vec::new(),
            counters: Counters::default(),
            if_addrs_failing: false,
            if_addrs_overflow: false,
            discovery: DiscoveryState::default(),
            k3s: K3sState::default(),
            dns: DnsState::default(),
            probe_slots: Arc::new(Semaphore::new(config.max_concurrent_checks)),
            attester,
            runtime,
            events,
            poller: None,
            dial_task: None,
            kernel_log: KernelLog::Off,
            kernel_log_task: None,
            flow_gc: None,
            hop_watch: None,
            dataplane_fallback: None,
            http_proxy,
            proxy_reports,
            proxy_reports_rx: Some(proxy_reports_rx),
            proxy_forwarder: None,
        })
    }

    /// A handle for a task this thread starts (`None` once every outside
    /// handle is gone: the thread is about to end).
    pub(super) fn handle(&self) -> Option<Controller> {
        self.events.upgrade().map(|events| Controller { events })
    }
}
