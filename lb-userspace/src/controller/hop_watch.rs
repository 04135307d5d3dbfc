//! The next-hop watcher: a thread that listens to rtnetlink's route,
//! neighbour and link notifications ([`RouteEvents`]) and tells the
//! controller ([`Event::NextHopsChanged`]) when cached next hops may be
//! stale; the controller bumps `xdp_config`'s `hop_gen` (it stays the only
//! writer of that map).
//!
//! Bursts are coalesced: after the first notification that matters the
//! thread waits [`COALESCE`] and reads everything that came meanwhile, so a
//! route table reload or an interface going down costs one bump, not
//! hundreds. The thread ends within the socket's receive timeout (5 s) of
//! [`HopWatch`] being dropped, or at once when the controller is gone.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use tracing::{debug, warn};

use super::events::{Controller, Event};
use crate::kernel::route_events::RouteEvents;

/// How long a burst of notifications is gathered before one bump.
pub(super) const COALESCE: Duration = Duration::from_millis(50);
/// Pause after a failed receive before the next (no busy loop).
const RETRY: Duration = Duration::from_secs(1);

/// The running watcher; dropping it stops the thread.
pub(super) struct HopWatch {
    stop: Arc<AtomicBool>,
    _thread: JoinHandle<()>,
}

impl Drop for HopWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl HopWatch {
    /// Subscribes (in the controller's network namespace) and starts the
    /// thread, which tells `controller`.
    pub(super) fn start(controller: Controller) -> anyhow::Result<Self> {
        let events = RouteEvents::open().context("watching routes, neighbours and links")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("hop-watch".to_owned())
            .spawn(move || run(events, &controller, &stopped))
            .context("starting the next-hop watcher thread")?;
        Ok(Self {
            stop,
            _thread: thread,
        })
    }
}

fn run(mut events: RouteEvents, controller: &Controller, stop: &AtomicBool) {
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        let first = match events.wait() {
            Ok(n) => n,
            Err(err) => {
                if !failing {
                    warn!(error = %err, "reading route notifications failed; cached next hops are revalidated on every failure");
                    failing = true;
                }
                // A lost notification may hide a change: count it.
                std::thread::sleep(RETRY);
                1
            }
        };
        if first == 0 {
            continue;
        }
        std::thread::sleep(COALESCE);
        let rest = events.drain().unwrap_or(1);
        let messages = first + rest;
        debug!(messages, "route, neighbour or link change");
        if controller
            .events
            .blocking_send(Event::NextHopsChanged { messages })
            .is_err()
        {
            // The controller is gone.
            return;
        }
        if failing && events.drain().is_ok() {
            failing = false;
        }
    }
}
