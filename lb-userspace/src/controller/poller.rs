//! The poller: every `connection_poll_interval` it asks the controller
//! which servers to watch (those of services the kernel does not count:
//! UDP, `dial_tracking: false`), dumps the established connections to them
//! with its own `sock_diag` socket on a blocking thread (the controller
//! keeps handling events meanwhile), and hands the sockets over (the
//! controller reads the kernel's counts for the other services then); with `xdp` it
//! then reads the interfaces' primary addresses the same way (XDP's SNAT
//! sources follow address changes).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::{
    runtime::Handle,
    task::{JoinHandle, spawn_blocking},
    time::MissedTickBehavior,
};

use super::events::{Controller, Event};
use crate::kernel::{connections::Connections, if_addrs};

/// Starts the poller task.
pub(super) fn spawn(
    runtime: &Handle,
    controller: Controller,
    every: Duration,
    xdp: bool,
) -> anyhow::Result<JoinHandle<()>> {
    let connections = Connections::open().context("opening the poller's sock_diag socket")?;
    Ok(runtime.spawn(poll_loop(controller, connections, every, xdp)))
}

async fn poll_loop(
    controller: Controller,
    mut connections: Connections,
    every: Duration,
    xdp: bool,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Ok(servers) = controller.ask(|reply| Event::PollTargets { reply }).await else {
            return;
        };
        let started = Instant::now();
        let Ok((back, servers, dumped)) = spawn_blocking(move || {
            // Nothing to dump when the kernel counts every service.
            let dumped = if servers.is_empty() {
                Ok(Vec::new())
            } else {
                connections.established(&servers)
            };
            (connections, servers, dumped)
        })
        .await
        else {
            // The runtime is shutting down.
            return;
        };
        connections = back;
        let event = match dumped {
            Ok(sockets) => Event::Polled {
                servers,
                sockets,
                started,
            },
            Err(error) => Event::PollFailed { error },
        };
        controller.tell(event).await;
        if xdp {
            let Ok(addresses) = spawn_blocking(if_addrs::read).await else {
                return;
            };
            controller.tell(Event::IfAddrs(addresses)).await;
        }
    }
}
