//! System prerequisites: command-line tools from Debian packages (bpftool,
//! ip, nc, curl, ethtool, iptables, python3, openssl; promtool and systemd-analyze under `CI=true`; haproxy and
//! go for `cargo xtask bench failover`, `connect` and `socket` only; nginx, wrk
//! and iperf3 for `socket` only) and the bpffs mount. Installing and mounting need root; without it these steps only
//! warn (`run` and `test` check root themselves).

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail, ensure};

use super::{Progress, doing, ok};
use crate::process::{find_program, in_ci, is_root, run};

/// (command, Debian package that provides it)
/// ethtool: GRO and checksum offload on the XDP tests' veths; iptables: the
/// DNAT baseline of `cargo xtask bench xdp`.
/// python3: a `dials_load` test's raw client and `scripts/inspect-maps.sh`'s
/// summaries; openssl: the https health-check unit tests' certificates and
/// TLS server.
const TOOLS: [(&str, &str); 8] = [
    ("bpftool", "bpftool"),
    ("ip", "iproute2"),
    ("nc", "netcat-openbsd"),
    ("curl", "curl"),
    ("ethtool", "ethtool"),
    ("iptables", "iptables"),
    ("python3", "python3"),
    ("openssl", "openssl"),
];

/// Only under `CI=true`: promtool checks the `/metrics` text in a unit test
/// (lb-userspace `metrics/golden.rs`) and the alerting rules and a live
/// scrape in `tests/tests/obs.rs`; its package also brings the Prometheus
/// server that test runs to evaluate the dashboard and the rules.
/// `systemd-analyze verify` checks the systemd unit (lb-tests `install.rs`);
/// a container may lack systemd. tinyproxy is the real forward proxy the
/// proxy mode's HTTP CONNECT dials go through (lb-tests `http_connect.rs`,
/// `proxy_mode.rs`).
const CI_TOOLS: [(&str, &str); 3] = [
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
    ("tinyproxy", "tinyproxy"),
];

const BPFFS: &str = "/sys/fs/bpf";

/// Only for `cargo xtask bench failover`, `connect` and `socket` (CI runs no benchmark): the
/// systems it compares daas-lb with, HAProxy and a K3s-style proxy built
/// with `go build`.
const FAILOVER_TOOLS: [(&str, &str); 2] = [("haproxy", "haproxy"), ("go", "golang-go")];

/// Only for `cargo xtask bench socket`: its backends (nginx, an iperf3
/// server) and load generators (wrk, iperf3).
const SOCKET_TOOLS: [(&str, &str); 3] = [("nginx", "nginx"), ("wrk", "wrk"), ("iperf3", "iperf3")];

/// Installs the packages of the missing tools with apt (as root).
pub(super) fn ensure_tools(progress: &mut Progress) -> Result<()> {
    let item = if in_ci() {
        "bpftool, ip, nc, curl, ethtool, iptables, python3, openssl, promtool, systemd-analyze, tinyproxy"
    } else {
        "bpftool, ip, nc, curl, ethtool, iptables, python3, openssl"
    };
    let ci_tools: &[_] = if in_ci() { &CI_TOOLS } else { &[] };
    let tools: Vec<(&str, &str)> = TOOLS.iter().chain(ci_tools).copied().collect();
    ensure_installed(
        item,
        &tools,
        "`cargo xtask run` and the integration tests need them",
        progress,
    )
}

/// Installs haproxy and go with apt (as root) when missing.
pub(super) fn ensure_failover_tools(progress: &mut Progress) -> Result<()> {
    ensure_installed(
        "haproxy, go",
        &FAILOVER_TOOLS,
        "`cargo xtask bench failover`, `connect` and `socket` need them",
        progress,
    )
}

/// Installs nginx, wrk and iperf3 with apt (as root) when missing.
pub(super) fn ensure_socket_tools(progress: &mut Progress) -> Result<()> {
    ensure_installed(
        "nginx, wrk, iperf3",
        &SOCKET_TOOLS,
        "`cargo xtask bench socket` needs them",
        progress,
    )
}

/// Installs the Debian packages of those of `tools` (command, package) that
/// are missing, as root; without root it only warns, saying `who_needs`.
fn ensure_installed(
    item: &str,
    tools: &[(&'static str, &'static str)],
    who_needs: &str,
    progress: &mut Progress,
) -> Result<()> {
    let missing = missing_tools(tools);
    if missing.is_empty() {
        ok(item, "present");
        return Ok(());
    }
    let commands = missing
        .iter()
        .map(|&(cmd, _)| cmd)
        .collect::<Vec<_>>()
        .join(", ");
    let packages: Vec<&str> = missing.iter().map(|&(_, package)| package).collect();
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    if !is_root() {
        progress.warn(format_args!(
            "missing {commands}; install them as root: `sudo apt-get update && sudo {install}` \
             ({who_needs})"
        ));
        return Ok(());
    }
    if find_program("apt-get").is_none() {
        bail!("missing {commands} and no apt-get to install them; install: {packages:?}");
    }
    doing(item, format_args!("missing {commands}; {install}"));
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let still_missing = missing_tools(tools);
    ensure!(
        still_missing.is_empty(),
        "installed {packages:?}, but {still_missing:?} are still not found"
    );
    ok(item, format_args!("installed {}", packages.join(" ")));
    Ok(())
}

fn missing_tools(tools: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    tools
        .iter()
        .copied()
        .filter(|&(cmd, _)| find_program(cmd).is_none())
        .collect()
}

/// Mounts the bpf filesystem at /sys/fs/bpf (as root) unless it already is.
pub(super) fn ensure_bpffs(progress: &mut Progress) -> Result<()> {
    let item = format!("bpffs at {BPFFS}");
    if bpffs_mounted()? {
        ok(&item, "mounted");
        return Ok(());
    }
    if !is_root() {
        progress.warn(format_args!(
            "no bpffs at {BPFFS}; mount it as root: `sudo mount -t bpf bpf {BPFFS}`"
        ));
        return Ok(());
    }
    if !Path::new(BPFFS).is_dir() {
        fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    ok(&item, "mounted now");
    Ok(())
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    // "<source> <mount point> <fs type> <options> 0 0"
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}
