//! `cargo xtask setup`: checks, and installs when missing, everything that
//! building, running and testing daas-lb needs. Each step prints one
//! `[setup] <item> ... <outcome>` line; with everything present the whole
//! check is a handful of quick process spawns.

mod bpf_linker;
mod system;
mod toolchain;

use std::{fmt::Display, time::Instant};

use anyhow::Result;

use crate::process::log;

const TAG: &str = "setup";

/// Runs every setup step. Warnings (what a non-root user has to fix by hand,
/// an unexpected nightly, ...) do not fail it.
pub(crate) fn run() -> Result<()> {
    let start = Instant::now();
    let mut progress = Progress::default();

    let nightly = toolchain::ensure_nightly(&mut progress)?;
    toolchain::ensure_components(&nightly, &mut progress)?;
    bpf_linker::ensure(&nightly)?;
    system::ensure_tools(&mut progress)?;
    system::ensure_bpffs(&mut progress)?;

    let elapsed = start.elapsed().as_secs_f64();
    match progress.warnings {
        0 => log(
            TAG,
            format_args!(
                "ready in {elapsed:.2}s: nightly {} (LLVM {}), bpf-linker {}, system tools, bpffs",
                nightly.commit_date,
                nightly.llvm_version,
                bpf_linker::VERSION
            ),
        ),
        n => log(
            TAG,
            format_args!("done in {elapsed:.2}s with {n} warning(s), see above"),
        ),
    }
    Ok(())
}

/// What `cargo xtask bench failover`, `connect` and `socket` need besides [`run`]: haproxy and
/// go (installed with apt as root when missing).
pub(crate) fn ensure_failover_tools() -> Result<()> {
    let mut progress = Progress::default();
    system::ensure_failover_tools(&mut progress)
}

/// What `cargo xtask bench socket` needs besides [`run`] and
/// [`ensure_failover_tools`]: nginx, wrk and iperf3 (installed with apt as
/// root when missing).
pub(crate) fn ensure_socket_tools() -> Result<()> {
    let mut progress = Progress::default();
    system::ensure_socket_tools(&mut progress)
}

/// `[setup] <item> ... ok (<detail>)`
fn ok(item: &str, detail: impl Display) {
    log(TAG, format_args!("{item} ... ok ({detail})"));
}

/// `[setup] <item> ... <what is being done>`, before a slow step whose output
/// streams below.
fn doing(item: &str, what: impl Display) {
    log(TAG, format_args!("{item} ... {what}"));
}

/// Counts the warnings printed.
#[derive(Default)]
struct Progress {
    warnings: usize,
}

impl Progress {
    /// `[setup] warning: <message>`
    fn warn(&mut self, message: impl Display) {
        self.warnings += 1;
        log(TAG, format_args!("warning: {message}"));
    }
}
