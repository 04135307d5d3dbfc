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
//! - the K3s watcher, with each changed reading of K3s's balancer state
//!   files ([`k3s`]);
//! - the DNS resolver, with each round of lookups of the servers' names
//!   ([`dns`]);
//! - the next-hop watcher (`xdp` only), when routes, neighbours or links
//!   changed ([`hop_watch`]);
//! - the API and signals: status, metrics, reloads, `PUT
//!   /services/{name}/servers`, `PUT /kernel-log`, each with a reply
//!   channel.
//!
//! With an `xdp` block one more thread runs beside the controller's: the
//! flow collector ([`flow_gc`]), which removes expired XDP flows on its own
//! handle of the `flows` map and touches nothing else.
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
mod dials;
mod discovery;
mod dns;
mod events;
mod failover;
mod flow_gc;
mod handlers;
mod hop_watch;
mod k3s;
mod kernel_log;
pub mod persist;
mod plan;
mod poller;
mod proxies;
mod reconcile;
mod registry;
mod runtime;
mod settle;
mod spread;
mod status;

use std::{panic::AssertUnwindSafe, thread::JoinHandle};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tracing::error;

pub use self::{
    events::{Controller, ServersError, Stopped},
    flow_gc::FlowGcStats,
    plan::vip_key,
};
use self::{
    events::{Event, QUEUE},
    handlers::Next,
    runtime::State,
};
use crate::{config::Config, kernel::dataplane::Dataplane};

impl Controller {
    /// Starts the controller thread with `dataplane`, writes `config` into
    /// the maps (adopting what is there, with the servers saved at
    /// runtime), and starts the health checks, the poller and discovery.
    /// Without a data plane (`None`: the daemon runs without eBPF) every
    /// service is proxied; `fallback` says why when `dataplane: auto` fell
    /// back to that (shown in the status). Must run inside the tokio
    /// runtime. On an error the thread has ended.
    pub async fn start(
        config: Config,
        dataplane: Option<Dataplane>,
        fallback: Option<String>,
    ) -> anyhow::Result<Self> {
        let (events, receiver) = mpsc::channel(QUEUE);
        let controller = Self { events };
        let mut state = State::new(
            &config,
            dataplane,
            controller.events.downgrade(),
            tokio::runtime::Handle::current(),
        )?;
        state.dataplane_fallback = fallback;
        let thread: JoinHandle<()> = std::thread::Builder::new()
            .name("controller".to_owned())
            .spawn(move || run(state, receiver))
            .context("starting the controller thread")?;
        // Services start with the servers their names resolve to, when
        // that is quick; otherwise the resolver adds them soon after.
        let hosts = dns::hosts_of(&config);
        let resolved = if hosts.is_empty() {
            None
        } else {
            tokio::time::timeout(
                dns::START_TIMEOUT,
                dns::lookup_all(&hosts, dns::START_TIMEOUT),
            )
            .await
            .ok()
        };
        let started = controller
            .ask(|reply| Event::Start {
                config: Box::new(config),
                resolved,
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
}

/// The controller thread: handles events in order until a shutdown, a
/// failed start, or every handle is gone. A handler that panics loses its
/// event (its caller sees [`Stopped`]) but not the thread: every map write
/// is a whole entry, so the state stays usable, as a poisoned lock's did.
fn run(mut state: State, mut events: mpsc::Receiver<Event>) {
    while let Some(event) = events.blocking_recv() {
        let name = event.name();
        let handled = std::panic::catch_unwind(AssertUnwindSafe(|| state.handle_event(event)));
        match handled {
            Ok(Next::Continue) => {}
            Ok(Next::Stop) => break,
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
