//! The kernel programs' logging in the controller: the level it writes to
//! the `kernel_log` map (the config's `kernel_log` at start and on every
//! reload, `daas-lb kernel-log` in between) and the task that drains
//! aya-log's ring buffer into the daemon's log (see
//! [`crate::kernel::kernel_log`]).
//!
//! Invariants: the level in the map is the one [`State::kernel_log`]
//! shows (a failed write leaves both as they were); the task only reads:
//! with logging off the programs write nothing and it sleeps on the ring.

use std::os::fd::AsRawFd as _;

use anyhow::Context as _;
use tokio::{
    io::{Interest, unix::AsyncFd},
    runtime::Handle,
    task::JoinHandle,
};
use tracing::{info, warn};

use super::runtime::State;
use crate::{
    config::KernelLog,
    kernel::kernel_log::{KernelLogReader, TARGET},
};

/// Starts the task draining `reader` into the log.
pub(super) fn spawn(runtime: &Handle, reader: KernelLogReader) -> anyhow::Result<JoinHandle<()>> {
    let _guard = runtime.enter();
    // SAFETY: the logger owns its ring buffer's map fd, which stays open
    // and the same for as long as the AsyncFd owns the logger.
    let reader = unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) }
        .context("watching aya-log's ring buffer for readiness")?;
    Ok(runtime.spawn(read_loop(reader)))
}

async fn read_loop(mut reader: AsyncFd<KernelLogReader>) {
    loop {
        let mut ready = match reader.readable_mut().await {
            Ok(ready) => ready,
            Err(err) => {
                warn!(error = %err, fd = reader.get_ref().as_raw_fd(), "aya-log ring buffer: cannot wait for records; the kernel programs' log is no longer read");
                return;
            }
        };
        // Reads every record written so far (the ring is bounded, so is this).
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

impl State {
    /// Makes the kernel programs log at `level` (`source` says who asked,
    /// for the log line); the map and [`State::kernel_log`] change together.
    pub(super) fn set_kernel_log(
        &mut self,
        level: KernelLog,
        source: &'static str,
    ) -> anyhow::Result<()> {
        if let Some(dataplane) = self.dataplane.as_mut() {
            dataplane
                .maps
                .kernel_log
                .set(level.map_value())
                .with_context(|| format!("switching the kernel programs' log to {level}"))?;
        }
        if level != self.kernel_log {
            info!(from = %self.kernel_log, to = %level, source, target_name = TARGET, "kernel programs' log level changed");
        }
        self.kernel_log = level;
        Ok(())
    }
}
