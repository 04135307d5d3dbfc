//! The controller's mailbox: the [`Event`]s its thread handles, and the
//! [`Controller`] handle everyone else holds (API, signals, check tasks,
//! the poller, the discovery watcher, the DNS resolver). A request carries the channel its
//! answer comes back on; the handle's methods send and await.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::{DialEvent, IfAddrs};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    api::status::Status,
    chain::{servers::DiscoveredServer, view::RegistryView},
    config::{Config, KernelLog},
    health::{CheckOutcome, Prober},
    kernel::sock_diag::SocketInfo,
    metrics::Counters,
};

/// How many events may wait for the controller before senders wait too.
pub(super) const QUEUE: usize = 1024;

/// What the controller thread receives. Requests carry the channel their
/// answer goes back on.
pub(super) enum Event {
    /// Apply the first configuration and start checks, discovery and the
    /// poller (once, right after the thread starts).
    Start {
        config: Box<Config>,
        /// The DNS names among the servers, looked up before the start
        /// (`None`: not within the time allowed; the resolver does it).
        resolved: Option<super::dns::Lookups>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    /// A check task asks how long to wait and how to probe next; `None`:
    /// the server is gone, the task ends.
    NextCheck {
        service: String,
        server: SocketAddr,
        first: bool,
        bits: u64,
        reply: oneshot::Sender<Option<CheckPlan>>,
    },
    /// A probe's result.
    Checked {
        service: String,
        server: SocketAddr,
        outcome: CheckOutcome,
    },
    /// The poller asks which servers to count connections to.
    PollTargets {
        reply: oneshot::Sender<HashSet<SocketAddr>>,
    },
    /// The poller's dump: sockets to `servers`, started at `started`.
    Polled {
        servers: HashSet<SocketAddr>,
        sockets: Vec<SocketInfo>,
        started: Instant,
    },
    /// The poller could not dump the connections.
    PollFailed { error: anyhow::Error },
    /// Dial outcomes the kernel reported (`dial_events`), in order.
    Dials(Vec<DialEvent>),
    /// Dial outcomes of the proxy mode's services, in order.
    ProxyDials(Vec<crate::proxy::DialReport>),
    /// The interfaces' primary addresses, read by the poller (`xdp` only).
    IfAddrs(anyhow::Result<BTreeMap<u32, IfAddrs>>),
    /// Routes, neighbours or links changed (`xdp` only): `messages`
    /// rtnetlink notifications since the last such event.
    NextHopsChanged { messages: usize },
    /// The discovery watcher asks whether any service follows the registry.
    DiscoveryWanted { reply: oneshot::Sender<bool> },
    /// A registry view, with the endpoint names it needs resolved
    /// (`None`: only its error changed; nothing to apply).
    View {
        view: RegistryView,
        resolved: Option<HashMap<String, Vec<IpAddr>>>,
    },
    /// The K3s watcher read a followed balancer's state file anew.
    K3sFile {
        service: String,
        reading: super::k3s::Reading,
    },
    /// The resolver looked the servers' DNS names up (at `at`).
    Resolved {
        lookups: super::dns::Lookups,
        at: std::time::SystemTime,
    },
    /// `SIGHUP` or `POST /reload`: the new configuration.
    Reload {
        config: Box<Config>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    /// `PUT /services/{name}/servers`; answers with the status after it.
    SetServers {
        service: String,
        servers: Vec<String>,
        reply: oneshot::Sender<Result<Status, ServersError>>,
    },
    /// `PUT /kernel-log`: the kernel programs' log level until the next
    /// reload.
    SetKernelLog {
        level: KernelLog,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    /// The status document and the counters (for `/status`, `/metrics`).
    Snapshot {
        reply: oneshot::Sender<(Status, Counters)>,
    },
    /// Liveness: answered as soon as the thread gets to it.
    Ping { reply: oneshot::Sender<()> },
    /// Stop the tasks, detach and unpin everything, end the thread.
    Shutdown {
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
}

impl Event {
    /// The event's name, for the log of a handler that panicked.
    pub(super) const fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "start",
            Self::NextCheck { .. } => "next check",
            Self::Checked { .. } => "check result",
            Self::PollTargets { .. } => "poll targets",
            Self::Polled { .. } => "poll result",
            Self::PollFailed { .. } => "poll failure",
            Self::IfAddrs(_) => "interface addresses",
            Self::NextHopsChanged { .. } => "next hops changed",
            Self::Dials(_) => "dial events",
            Self::ProxyDials(_) => "proxy dials",
            Self::DiscoveryWanted { .. } => "discovery wanted",
            Self::View { .. } => "registry view",
            Self::K3sFile { .. } => "K3s state file",
            Self::Resolved { .. } => "DNS lookups",
            Self::Reload { .. } => "reload",
            Self::SetServers { .. } => "set servers",
            Self::SetKernelLog { .. } => "set kernel log",
            Self::Snapshot { .. } => "snapshot",
            Self::Ping { .. } => "ping",
            Self::Shutdown { .. } => "shutdown",
        }
    }
}

/// The controller thread has stopped (after a shutdown, or a failed start).
#[derive(Debug)]
pub struct Stopped;

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the controller has stopped")
    }
}

impl std::error::Error for Stopped {}

/// A handle to the controller thread: every method sends it an event.
#[derive(Clone)]
pub struct Controller {
    pub(super) events: mpsc::Sender<Event>,
}

/// What the next probe of a server needs.
pub(super) struct CheckPlan {
    pub(super) wait: Duration,
    pub(super) prober: Arc<Prober>,
    /// Shared by every check task: bounds the probes running at once.
    pub(super) slots: Arc<Semaphore>,
    pub(super) timeout: Duration,
    pub(super) dial_probe: bool,
    /// The node's registry entry, for `sui_sync` and `nautilus` checks.
    pub(super) node: Option<DiscoveredServer>,
    /// The service's servers, for a `sui_sync` check that compares a server
    /// with its pool (empty otherwise).
    pub(super) pool: Vec<SocketAddr>,
}

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

impl Controller {
    /// Sends an event that wants an answer and waits for it.
    pub(super) async fn ask<T>(
        &self,
        event: impl FnOnce(oneshot::Sender<T>) -> Event,
    ) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.events.send(event(reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Sends an event without an answer (dropped once the thread stopped).
    pub(super) async fn tell(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    /// Reloads the configuration (SIGHUP, `POST /reload`). A config that
    /// cannot be applied leaves everything as it was.
    pub async fn reload(&self, config: Config) -> anyhow::Result<()> {
        self.ask(|reply| Event::Reload {
            config: Box::new(config),
            reply,
        })
        .await?
    }

    /// Replaces the server list of one service (`PUT
    /// /services/{name}/servers`); returns the status right after.
    pub async fn set_servers(
        &self,
        service: &str,
        servers: Vec<String>,
    ) -> Result<Status, ServersError> {
        self.ask(|reply| Event::SetServers {
            service: service.to_owned(),
            servers,
            reply,
        })
        .await
        .map_err(|stopped| ServersError::Apply(stopped.into()))?
    }

    /// Switches the kernel programs' log to `level` (`PUT /kernel-log`)
    /// until the next reload, which goes back to the config's `kernel_log`.
    pub async fn set_kernel_log(&self, level: KernelLog) -> anyhow::Result<()> {
        self.ask(|reply| Event::SetKernelLog { level, reply })
            .await?
    }

    /// The status document (counters read from the kernel now) and the
    /// metric counters the controller keeps.
    pub async fn snapshot(&self) -> Result<(Status, Counters), Stopped> {
        self.ask(|reply| Event::Snapshot { reply }).await
    }

    /// The status document.
    pub async fn status(&self) -> Result<Status, Stopped> {
        Ok(self.snapshot().await?.0)
    }

    /// Whether the controller thread answers.
    pub async fn ping(&self) -> Result<(), Stopped> {
        self.ask(|reply| Event::Ping { reply }).await
    }

    /// Stops the checks, the poller and discovery, detaches the programs
    /// and removes every pin (graceful shutdown); the thread ends.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.ask(|reply| Event::Shutdown { reply }).await?
    }
}
