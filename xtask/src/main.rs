//! `cargo xtask`: bootstraps, builds, runs, tests and lints daas-lb.
//!
//! Every subcommand that needs the toolchain runs `setup` first; it is
//! idempotent and takes well under two seconds when everything is present.

mod bench;
mod cargo;
mod install;
mod lint;
mod process;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Developer tasks for daas-lb.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check and install what building and running daas-lb needs (idempotent):
    /// the nightly toolchain with rust-src, bpf-linker 0.13.0 built against the
    /// nightly's LLVM, bpftool/ip/nc/curl/ethtool/iptables (apt) and the bpffs mount.
    Setup,
    /// Set up, then build daas-lb (lb-userspace's build.rs builds and embeds
    /// the eBPF object).
    Build(BuildArgs),
    /// Set up, build, then exec `daas-lb run ARGS...` (needs root). Without
    /// `--config` in ARGS the embedded demo configuration is used (`--demo`).
    Run(RunArgs),
    /// Set up, run the unit tests, then (as root) build daas-lb and run the
    /// privileged integration tests in lb-tests.
    Test(TestArgs),
    /// clippy on the host crates and on lb-ebpf for the bpf target, then
    /// `cargo +nightly fmt --check`.
    Lint,
    /// Format the workspace with nightly rustfmt (rustfmt.toml needs it).
    Fmt,
    /// Build the release binary and install daas-lb the Debian way:
    /// PREFIX/bin/daas-lb, the systemd unit (/lib/systemd/system with
    /// --prefix /usr), /etc/daas-lb/config.yaml (never overwritten), the docs
    /// under PREFIX/share/doc/daas-lb and /var/lib/daas-lb. Needs root
    /// without --destdir.
    Install(InstallArgs),
    /// Set up, build release binaries, then run benchmarks (`xdp`,
    /// `failover`, `connect` and `socket` as root) and print their markdown
    /// tables.
    /// Not part of `test`.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
}

#[derive(Args)]
struct InstallArgs {
    /// Installation prefix of the binary and docs.
    #[arg(long, default_value = "/usr")]
    prefix: std::path::PathBuf,
    /// Staging directory put in front of every installed path (packaging, tests).
    #[arg(long)]
    destdir: Option<std::path::PathBuf>,
    /// Install this daas-lb binary instead of building the release one.
    #[arg(long)]
    binary: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Build and run the release binary.
    #[arg(long)]
    release: bool,
    /// Arguments for `daas-lb run` (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// What to benchmark: `xdp` (as root: per-packet cost of `lb_xdp`,
    /// forwarding rate over veth vs iptables DNAT, Maglev table build and map
    /// write), `nautilus` (no root: the cost of a `nautilus` check, fresh
    /// and cached, next to a plain HTTP GET and gRPC calls, on loopback) or
    /// `failover` (as root: failed connects and waits at 100 and 1000
    /// connects/s while the server in use dies, through daas-lb, HAProxy and
    /// a K3s-style proxy; installs haproxy and golang-go when missing) or
    /// `connect` (as root: happy-path connects/s and connect + first-byte
    /// latency through a daas-lb VIP with and without dial tracking, HAProxy
    /// and the K3s-style proxy, next to direct connects; installs them too)
    /// or `socket` (as root: HTTP connections/s and keep-alive requests/s
    /// with p50/p99 from wrk against nginx, iperf3 bulk throughput and the
    /// node's CPU per request through a daas-lb socket-LB VIP, HAProxy and
    /// the K3s-style proxy, as ratios to direct; also installs nginx, wrk
    /// and iperf3) or `chain` (no root: bytes, messages, CPU and latency of
    /// the Sui discovery's filtered event stream vs the checkpoint stream
    /// on a busy fake chain, on loopback).
    target: bench::Target,
    /// Arguments (after `--`) for lb-rate-bench with `xdp`, e.g. `--duration
    /// 3 --runs 1`, for lb-attest-bench with `nautilus`, e.g. `--reps 20`,
    /// for lb-failover-bench with `failover`, e.g. `--rates 100 --events rst`,
    /// for lb-connect-bench with `connect`, e.g. `--rounds 3 --concurrency 8`,
    /// for lb-socket-bench with `socket`, e.g. `--duration 2 --rounds 1
    /// --systems direct,daas-lb --no-bulk`, or for lb-chain-bench with
    /// `chain`, e.g. `--duration 10 --noise 2000 --rate 4`.
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct TestArgs {
    /// Arguments for the test binaries (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::put_cargo_bin_on_path();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build(args) => cargo::build(args.release).map(drop),
        Command::Run(args) => run::run(args.release, &args.args),
        Command::Test(args) => test::test(&args.args),
        Command::Install(args) => install::install(&install::Options {
            prefix: args.prefix,
            destdir: args.destdir,
            binary: args.binary,
        }),
        Command::Lint => lint::lint(),
        Command::Fmt => lint::fmt(),
        Command::Bench(args) => bench::bench(args.target, &args.args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
