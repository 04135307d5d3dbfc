//! `cargo xtask bench xdp|nautilus|failover|connect|socket|chain`:
//! benchmarks on release builds.
//!
//! `xdp`, as root:
//!
//! 1. `lb-xdp-bench`: nanoseconds per packet of `lb_xdp` (and the empty
//!    baseline program) with `BPF_PROG_TEST_RUN`.
//! 2. `lb-rate-bench`: UDP forwarding rate over veth with default offloads
//!    through a node running daas-lb's tc path (the default on veth),
//!    generic XDP, native XDP (in its safe case), iptables DNAT, and plain
//!    routing (reference); then 1 M short TCP connections through the tc
//!    path and again through iptables (`LB_CHURN_FLOWS=N` for a quicker
//!    run) with the flow tables' occupancy after they closed and
//!    untranslated replies counted.
//! 3. `lb-maglev-bench`: building a 1000-backend, 65537-slot Maglev table
//!    and writing it into the kernel map.
//!
//! `nautilus`, no root needed (loopback only):
//!
//! 1. `lb-attest-bench`: what a `nautilus` health check costs (signed
//!    attestation and Nitro document verification, fresh and cached checks
//!    against an in-process fake full node and fake enclave) next to a plain
//!    HTTP `GET` and gRPC round trips.
//!
//! `failover`, as root (installs haproxy and golang-go with apt when missing):
//!
//! 1. `lb-failover-bench`: what a dying server costs new clients (100 and
//!    1000 connects/s, the server in use closes its listener or drops SYNs)
//!    through daas-lb (default checks and `profile: k3s`), HAProxy and a
//!    K3s-style proxy built with `go build`, next to direct connects.
//!
//! `connect`, as root (installs haproxy and golang-go with apt when missing):
//!
//! 1. `lb-connect-bench`: the happy path: new connects/s and connect +
//!    first-byte latency through a daas-lb VIP with and without
//!    `dial_tracking`, HAProxy and the K3s-style proxy, next to direct
//!    connects from inside and outside the cgroup, interleaved in rounds.
//!
//! `socket`, as root (installs haproxy, golang-go, nginx, wrk and iperf3
//! with apt when missing):
//!
//! 1. `lb-socket-bench`: HTTP connections/s (`Connection: close`),
//!    keep-alive requests/s with p50/p99 latency (wrk against nginx), bulk
//!    throughput (iperf3) and the whole node's CPU per request, through a
//!    daas-lb socket-LB VIP, HAProxy and the K3s-style proxy, as ratios to
//!    direct connects, interleaved in rounds.
//!
//! `chain`, no root needed (loopback only):
//!
//! 1. `lb-chain-bench`: what following the Sui registry costs on a busy
//!    chain (4 checkpoints/s, 2,000 foreign events each by default): bytes
//!    and messages per minute, the discovery task's CPU and event -> view
//!    latency with the filtered stream next to the checkpoint stream (the
//!    fallback and the behaviour before filtered streams: the baseline).
//!
//! Each prints a markdown table on stdout (collected and printed together at
//! the end) and its progress on stderr (streamed). Not part of `cargo xtask
//! test`: the numbers depend on the machine and take a while to measure.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, ensure};
use clap::ValueEnum;

use crate::{
    cargo::{Workspace, build_daas_lb},
    process::{is_root, log},
    setup,
};

const TAG: &str = "bench";

/// What to benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Target {
    /// XDP and tc (as root): per-packet cost, forwarding rate vs iptables,
    /// connection churn, Maglev build/write.
    Xdp,
    /// Nautilus checks (no root): attestation and document verification,
    /// fresh and cached checks, next to a plain HTTP GET and gRPC calls.
    Nautilus,
    /// Failover (as root): failed connects and waits while the server in use
    /// dies, daas-lb next to HAProxy and a K3s-style proxy.
    Failover,
    /// Happy-path connects (as root): connects/s and latency through a
    /// VIP with and without dial tracking, proxies and direct connects.
    Connect,
    /// Socket-level load balancing (as root): HTTP conn/s, keep-alive
    /// req/s and latency, bulk throughput and CPU per request through a
    /// VIP and the proxies, vs direct.
    Socket,
    /// Sui discovery on a busy chain (no root): bytes, messages, CPU and
    /// latency of the filtered event stream vs the checkpoint stream.
    Chain,
}

impl Target {
    /// The benchmark binaries of lb-tests, in the order they run.
    const fn benches(self) -> &'static [&'static str] {
        match self {
            Self::Xdp => &["lb-xdp-bench", "lb-rate-bench", "lb-maglev-bench"],
            Self::Nautilus => &["lb-attest-bench"],
            Self::Failover => &["lb-failover-bench"],
            Self::Connect => &["lb-connect-bench"],
            Self::Socket => &["lb-socket-bench"],
            Self::Chain => &["lb-chain-bench"],
        }
    }

    /// The bench that gets the arguments after `--`.
    const fn takes_args(self) -> &'static str {
        match self {
            Self::Xdp => "lb-rate-bench",
            Self::Nautilus => "lb-attest-bench",
            Self::Failover => "lb-failover-bench",
            Self::Connect => "lb-connect-bench",
            Self::Socket => "lb-socket-bench",
            Self::Chain => "lb-chain-bench",
        }
    }
}

/// Runs `target`'s benches; `args` go to [`Target::takes_args`].
pub(crate) fn bench(target: Target, args: &[String]) -> Result<()> {
    ensure!(
        target != Target::Xdp || is_root(),
        "`cargo xtask bench xdp` needs root (it loads XDP programs and builds network \
         namespaces); run `sudo -E cargo xtask bench xdp`"
    );
    ensure!(
        target != Target::Failover || is_root(),
        "`cargo xtask bench failover` needs root (it runs daas-lb and builds network \
         namespaces and iptables rules); run `sudo -E cargo xtask bench failover`"
    );
    ensure!(
        target != Target::Connect || is_root(),
        "`cargo xtask bench connect` needs root (it runs daas-lb and builds a network \
         namespace and a cgroup); run `sudo -E cargo xtask bench connect`"
    );
    ensure!(
        target != Target::Socket || is_root(),
        "`cargo xtask bench socket` needs root (it runs daas-lb and builds a network \
         namespace and a cgroup); run `sudo -E cargo xtask bench socket`"
    );
    let start = Instant::now();
    setup::run()?;
    if matches!(target, Target::Failover | Target::Connect | Target::Socket) {
        setup::ensure_failover_tools()?;
    }
    if target == Target::Socket {
        setup::ensure_socket_tools()?;
    }
    let workspace = Workspace::locate()?;
    // Builds every binary of the selection, the benches of lb-tests included.
    let daas_lb = build_daas_lb(&workspace, true)?;
    let bin_dir = daas_lb
        .parent()
        .context("daas-lb has no parent directory")?;

    let mut tables = Vec::new();
    for &bench in target.benches() {
        let path = bin_dir.join(bench);
        ensure!(
            path.is_file(),
            "{} was not built (is it a [[bin]] of lb-tests?)",
            path.display()
        );
        let args: &[String] = if bench == target.takes_args() {
            args
        } else {
            &[]
        };
        tables.push(run_bench(&path, args, &daas_lb, bin_dir)?);
    }
    println!("{}", tables.join("\n"));
    log(
        TAG,
        format_args!("done in {:.1}s", start.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// Runs one bench binary; returns what it printed on stdout.
fn run_bench(path: &Path, args: &[String], daas_lb: &Path, bin_dir: &Path) -> Result<String> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    log(TAG, format_args!("{name} {}", args.join(" ")));
    let start = Instant::now();
    let output = Command::new(path)
        .args(args)
        .env("DAAS_LB_BIN", daas_lb)
        .env("LB_LOADGEN", bin_dir.join("lb-loadgen"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    ensure!(
        output.status.success(),
        "{name} failed ({}); its stdout:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    log(
        TAG,
        format_args!("{name} took {:.1}s", start.elapsed().as_secs_f64()),
    );
    String::from_utf8(output.stdout).with_context(|| format!("{name}: stdout is not UTF-8"))
}
