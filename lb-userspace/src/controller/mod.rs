//! The running controller: keeps the maps in line with the config and the
//! K3s state machine of every service.
//!
//! One thread owns the controller's state ([`state::State`]: the data plane,
//! the services with their state machines, the counters, discovery) and
//! handles one [`Event`] at a time. Nothing else touches that state, and no
//! lock guards it: map writes, `sock_diag` dumps, `SOCK_DESTROY` and the
//! state files all run on that thread, never on a tokio worker.
//!
//! Events come from:
//! - health-check tasks, one per (service, server), at an interval that
//!   depends on the server's state ([`checks`]);
//! - the poller ([`poller`]), which dumps the connections to the servers
//!   (on a blocking thread of its own) and hands the sockets over, then the
//!   interfaces' addresses for XDP's SNAT sources;
//! - the discovery watcher, with each registry view ([`discovery`]);
//! - the API and signals: status, metrics, reloads, `PUT
//!   /services/{name}/servers`, each with a reply channel.
//!
//! Every event goes through the pure [`ServiceMachine`]; configuration
//! changes are planned by the pure [`plan`] and written by [`reconcile`];
//! the machines' [`Effects`] are carried out by [`settle`].
//!
//! [`ServiceMachine`]: crate::policy::state_machine::ServiceMachine
//! [`Effects`]: crate::policy::state_machine::Effects

mod attestation;
mod backend_flags;
mod checks;
mod discovery;
pub mod persist;
mod plan;
mod poller;
mod reconcile;
mod settle;
mod spread;
mod state;
mod status;

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    panic::AssertUnwindSafe,
    thread::JoinHandle,
    time::Instant,
};

use anyhow::Context as _;
use lb_common::{VipKey, ip_to_bytes};
use tokio::sync::{mpsc, oneshot};
use tracing::error;

pub use self::reconcile::ServersError;
use crate::{
    api::status::Status,
    chain::view::RegistryView,
    config::{Config, ServiceConfig},
    health::CheckOutcome,
    kernel::{dataplane::Dataplane, sock_diag::SocketInfo},
    metrics::Counters,
};

/// How many events may wait for the controller before senders wait too.
const QUEUE: usize = 1024;

/// What the controller thread receives. Requests carry the channel their
/// answer goes back on.
enum Event {
    /// Apply the first configuration and start checks, discovery and the
    /// poller (once, right after the thread starts).
    Start {
        config: Box<Config>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    /// A check task asks how long to wait and how to probe next; `None`:
    /// the server is gone, the task ends.
    NextCheck {
        service: String,
        server: SocketAddr,
        first: bool,
        bits: u64,
        reply: oneshot::Sender<Option<checks::Plan>>,
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
    /// The interfaces' primary addresses, read by the poller (`xdp` only).
    IfAddrs(anyhow::Result<std::collections::BTreeMap<u32, lb_common::IfAddrs>>),
    /// The discovery watcher asks whether any service follows the registry.
    DiscoveryWanted { reply: oneshot::Sender<bool> },
    /// A registry view, with the endpoint names it needs resolved
    /// (`None`: only its error changed; nothing to apply).
    View {
        view: RegistryView,
        resolved: Option<std::collections::HashMap<String, Vec<IpAddr>>>,
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
    const fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "start",
            Self::NextCheck { .. } => "next check",
            Self::Checked { .. } => "check result",
            Self::PollTargets { .. } => "poll targets",
            Self::Polled { .. } => "poll result",
            Self::PollFailed { .. } => "poll failure",
            Self::IfAddrs(_) => "interface addresses",
            Self::DiscoveryWanted { .. } => "discovery wanted",
            Self::View { .. } => "registry view",
            Self::Reload { .. } => "reload",
            Self::SetServers { .. } => "set servers",
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
    events: mpsc::Sender<Event>,
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
    /// Starts the controller thread with `dataplane`, writes `config` into
    /// the maps (adopting what is there, with the servers saved at
    /// runtime), and starts the health checks, the poller and discovery.
    /// Must run inside the tokio runtime. On an error the thread has ended.
    pub async fn start(config: Config, dataplane: Dataplane) -> anyhow::Result<Self> {
        let (events, receiver) = mpsc::channel(QUEUE);
        let controller = Self { events };
        let state = state::State::new(
            &config,
            dataplane,
            controller.events.downgrade(),
            tokio::runtime::Handle::current(),
        )?;
        let thread: JoinHandle<()> = std::thread::Builder::new()
            .name("controller".to_owned())
            .spawn(move || run(state, receiver))
            .context("starting the controller thread")?;
        let started = controller
            .ask(|reply| Event::Start {
                config: Box::new(config),
                reply,
            })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|result| result);
        if let Err(err) = started {
            // The thread ends after a failed start; wait so the data plane
            // is closed when this returns.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            return Err(err);
        }
        Ok(controller)
    }

    /// Sends an event that wants an answer and waits for it.
    async fn ask<T>(&self, event: impl FnOnce(oneshot::Sender<T>) -> Event) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.events.send(event(reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Sends an event without an answer (dropped once the thread stopped).
    async fn tell(&self, event: Event) {
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

/// The controller thread: handles events in order until a shutdown, a
/// failed start, or every handle is gone. A handler that panics loses its
/// event (its caller sees [`Stopped`]) but not the thread: every map write
/// is a whole entry, so the state stays usable, as a poisoned lock's did.
fn run(mut state: state::State, mut events: mpsc::Receiver<Event>) {
    while let Some(event) = events.blocking_recv() {
        let name = event.name();
        let handled = std::panic::catch_unwind(AssertUnwindSafe(|| state.handle_event(event)));
        match handled {
            Ok(state::Next::Continue) => {}
            Ok(state::Next::Stop) => break,
            Err(_) => error!(
                event = name,
                "the controller's handler panicked; event dropped"
            ),
        }
    }
    // Tasks still running hold handles: end them so none waits on a
    // thread that is gone.
    state.stop_tasks();
}
