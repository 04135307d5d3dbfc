//! What a client on the node pays for reaching a backend through daas-lb's
//! socket-level load balancing, side by side with a direct connect and with
//! the proxies a K3s node would otherwise use: HTTP connections/s and
//! keep-alive requests/s with their latency (wrk), bulk throughput (iperf3)
//! and the whole node's CPU per request, all as ratios to `direct`.
//!
//! One network namespace (only loopback, no route out) for the whole run,
//! everything started once:
//!
//! - backends: Debian's nginx on `127.0.0.10:8080` (foreground, generated
//!   config in a temp dir: `master_process off` (one process, which the
//!   bench kills: no orphaned worker keeps serving), `worker_processes 1`,
//!   `access_log off`,
//!   `keepalive_requests 1000000`, one static file of [`BODY_BYTES`]
//!   bytes) and an `iperf3 -s` on `127.0.0.10:5201`;
//! - one `daas-lb run` whose socket programs attach to a child cgroup the
//!   bench creates, with two `policy: failover` services of one server each:
//!   `web` (VIP `127.0.0.1:6444` → nginx, default checks) and `bulk` (VIP
//!   `127.0.0.1:6445` → iperf3, `health_check: { interval: 1h, intervals:
//!   { recovering: 200ms } }`: a check connect is one more iperf3 control
//!   connection, so only the checks that bring the server up at the start);
//! - HAProxy (TCP mode, `nbthread` = `--proxy-threads`, `listen web` on
//!   `127.0.0.1:7443` → nginx and `listen bulk` on `127.0.0.1:7453` →
//!   iperf3, one server each and no checks: nothing to fail over to);
//! - the K3s-style proxy of `tests/k3s-proxy` (built with `go build`,
//!   `GOMAXPROCS` = `--proxy-threads`), twice: `127.0.0.1:7444` → nginx
//!   (1 s checks) and `127.0.0.1:7454` → iperf3 (1 h checks, as above).
//!
//! Both proxies get the same number of threads, by default the CPUs the
//! bench may use (what each picks by itself on the node); the table's intro
//! names it. Systems (`--systems`, rows; see [`CASES`]), every client in
//! the cgroup:
//!
//! - `direct`: straight to nginx and iperf3; the cgroup's programs run but
//!   find no VIP.
//! - `daas-lb`: to the VIPs; the connect hook rewrites each connect to the
//!   backend, after which the socket is a direct one. Nothing listens on a
//!   VIP, so a connect that was not rewritten is refused (and shows as a
//!   wrk connect error or a failed iperf3 run); after the runs the bench
//!   also checks that the kernel counted at least as many connects to each
//!   service's server as the clients made through it.
//! - `haproxy`, `k3s-proxy`: to the proxies' listeners.
//! - `daas-lb-proxy`: to the VIPs of two more services of the same daemon,
//!   `web-proxy` (`127.0.0.1:6446` → nginx) and `bulk-proxy`
//!   (`127.0.0.1:6447` → iperf3), both `dataplane: proxy`: the daemon
//!   listens on them itself and proxies each connection, dialing in the K3s
//!   order (one listener and thread per CPU; the thread count is its own,
//!   not `--proxy-threads`).
//!
//! Each round runs every selected system once, in turn (rotated by one per
//! round so no system always follows the same one): a wrk run with
//! `Connection: close` (one request per TCP connection: new connections/s),
//! a keep-alive wrk run (requests/s and the latency percentiles of
//! `--latency`), then, unless `--no-bulk`, one `iperf3 -c` run (one stream,
//! `-J`). Each wrk run has `--connections` connections over `--threads`
//! threads for `--duration` seconds, `--timeout 2s`; each iperf3 run lasts
//! `--duration` seconds. Every client is killed if it outlives its
//! duration by [`CLIENT_SLACK`].
//!
//! Columns: `conn/s` = wrk's requests/s with `Connection: close` (median of
//! the rounds); `req/s` = the same with keep-alive; `p50`/`p99` = the
//! keep-alive run's latency percentiles (median of the rounds); `Gbit/s` =
//! iperf3's `end.sum_received.bits_per_second`; each `vs direct` = the
//! median over the rounds of the ratio to `direct`'s run of the same round;
//! `CPU µs/conn` and `CPU µs/req` = the whole node's busy CPU time
//! (`/proc/stat`: all but idle and iowait, every CPU, so whatever else the
//! machine runs is counted too) over the wrk run, divided by its requests
//! (median of the rounds); `errors` = wrk's socket errors (connect, read,
//! write, timeout) and responses with a status ≥ 400, summed over every
//! run of the row; every run that had any is listed under the table (and
//! on stderr as it happens).
//!
//! Needs root, nginx, wrk, iperf3, haproxy and go (`apt-get install nginx
//! wrk iperf3 haproxy golang-go`); `cargo xtask bench socket` installs the
//! missing ones, builds the release binaries and runs it. Prints the
//! markdown table on stdout, progress on stderr. Cleanup, also on panic:
//! the guards kill the daemon, nginx, iperf3, the proxies (also by
//! `PR_SET_PDEATHSIG`) and the clients (the same), remove the cgroup
//! (killing what is left in it), the pins and the temp directory; the
//! namespace goes with its last process.
//!
//! ```text
//! lb-socket-bench [--duration SECS (5)] [--rounds N (3)] [--connections N (32)]
//!                 [--threads N (1)] [--proxy-threads N (CPUs)] [--no-bulk]
//!                 [--systems direct,daas-lb,daas-lb-proxy,haproxy,k3s-proxy]
//! ```

use std::{
    fmt::Write as _,
    fs::OpenOptions,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command, ExitCode, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_tests::{
    API, Daemon, NetNs, PinDir, TempDir, TestCgroup, config_yaml,
    proxies::{
        HAPROXY_ADDR, K3S_PROXY_ADDR, Proxy, find_program, k3s_proxy_command, parse_systems,
        prepare_bench,
    },
    service, thousands,
};
use lb_userspace::{api::status::Status, policy::state_machine::ServerState};

/// nginx, the web backend.
const NGINX: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10)), 8080);
/// `iperf3 -s`, the bulk backend.
const IPERF: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10)), 5201);
/// daas-lb's socket-LB VIPs: service `web` → nginx, `bulk` → iperf3.
const WEB_VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6444);
const BULK_VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6445);
/// HAProxy's bulk listener (its web one is [`HAPROXY_ADDR`], `:7443`).
const HAPROXY_BULK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7453);
/// The bulk K3s-style proxy (the web one is on [`K3S_PROXY_ADDR`], `:7444`).
const K3S_BULK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7454);
/// The size of the page nginx serves.
const BODY_BYTES: usize = 1024;
/// How long a client may outlive its duration before it is killed.
const CLIENT_SLACK: Duration = Duration::from_secs(10);
/// wrk's `--timeout`: a response slower than this is a timeout error.
const WRK_TIMEOUT: &str = "2s";
/// The K3s-style proxy's dial timeout (K3s's) and check intervals: 1 s in
/// front of nginx, 1 h in front of iperf3 (see the module docs).
const K3S_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
const K3S_WEB_CHECKS: Duration = Duration::from_secs(1);
const K3S_BULK_CHECKS: Duration = Duration::from_hours(1);
/// How to install the tools of this bench on Debian.
const INSTALL: &str = "apt-get install nginx wrk iperf3 haproxy golang-go";

/// What stands between a case's client and the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Nothing: the client connects to the backends.
    Direct,
    /// Two services of the one daas-lb daemon: `web` (VIP [`Case::web`] →
    /// nginx) and `bulk` (VIP [`Case::bulk`] → iperf3), each with `extra`
    /// appended to its YAML entry (lines of 4-space-indented keys).
    /// `socket_lb`: the services are served by the cgroup's connect hook,
    /// so nothing listens on the VIPs and the kernel counts the connects
    /// (checked after the runs).
    Daemon {
        web: &'static str,
        bulk: &'static str,
        extra: &'static str,
        socket_lb: bool,
    },
    /// Debian's HAProxy, both listeners in one process.
    Haproxy,
    /// The K3s-style proxy, one process per listener.
    K3sProxy,
}

/// A system under test: a row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Case {
    /// Its `--systems` name.
    name: &'static str,
    /// Its row label.
    label: &'static str,
    via: Via,
    /// Where wrk connects.
    web: SocketAddr,
    /// Where iperf3 connects.
    bulk: SocketAddr,
    /// Whether its clients run in the cgroup daas-lb's socket programs
    /// attach to.
    in_cgroup: bool,
}

/// The systems, in their default order. `direct` must stay: the ratios
/// are to it.
const CASES: &[Case] = &[
    Case {
        name: "direct",
        label: "direct to nginx / iperf3 (client in the cgroup)",
        via: Via::Direct,
        web: NGINX,
        bulk: IPERF,
        in_cgroup: true,
    },
    Case {
        name: "daas-lb",
        label: "daas-lb socket-LB VIP (cgroup connect hook)",
        via: Via::Daemon {
            web: "web",
            bulk: "bulk",
            extra: "",
            socket_lb: true,
        },
        web: WEB_VIP,
        bulk: BULK_VIP,
        in_cgroup: true,
    },
    Case {
        name: "daas-lb-proxy",
        label: "daas-lb proxy mode (`dataplane: proxy`)",
        via: Via::Daemon {
            web: "web-proxy",
            bulk: "bulk-proxy",
            extra: "    dataplane: proxy\n",
            socket_lb: false,
        },
        web: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6446),
        bulk: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6447),
        in_cgroup: true,
    },
    // (`in_cgroup: false` would keep the socket programs out of its
    // clients' path, like a client on a node without them; `socket_lb:
    // false` skips the kernel's connect count check, which does not apply
    // when the daemon accepts the connects.)
    Case {
        name: "haproxy",
        label: "HAProxy (TCP mode)",
        via: Via::Haproxy,
        web: HAPROXY_ADDR,
        bulk: HAPROXY_BULK,
        in_cgroup: true,
    },
    Case {
        name: "k3s-proxy",
        label: "K3s-style proxy (Go)",
        via: Via::K3sProxy,
        web: K3S_PROXY_ADDR,
        bulk: K3S_BULK,
        in_cgroup: true,
    },
];

fn case_name(case: &'static Case) -> &'static str {
    case.name
}

struct Options {
    duration: Duration,
    rounds: usize,
    connections: usize,
    threads: usize,
    proxy_threads: usize,
    bulk: bool,
    systems: Vec<&'static Case>,
}

impl Options {
    fn parse() -> Result<Self> {
        let mut o = Self {
            duration: Duration::from_secs(5),
            rounds: 3,
            connections: 32,
            threads: 1,
            proxy_threads: thread::available_parallelism().map_or(1, std::num::NonZero::get),
            bulk: true,
            systems: CASES.iter().collect(),
        };
        let all: Vec<&'static Case> = CASES.iter().collect();
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--no-bulk" {
                o.bulk = false;
                continue;
            }
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let number = |range: std::ops::RangeInclusive<usize>| -> Result<usize> {
                let n: usize = value.parse().with_context(|| format!("{flag} {value}"))?;
                ensure!(
                    range.contains(&n),
                    "{flag} {value}: {} to {}",
                    range.start(),
                    range.end()
                );
                Ok(n)
            };
            match flag.as_str() {
                "--duration" => o.duration = Duration::from_secs(number(1..=600)? as u64),
                "--rounds" => o.rounds = number(1..=50)?,
                "--connections" => o.connections = number(1..=10_000)?,
                "--threads" => o.threads = number(1..=64)?,
                "--proxy-threads" => o.proxy_threads = number(1..=64)?,
                "--systems" => o.systems = parse_systems(value, &all, case_name)?,
                other => bail!("unknown option {other}"),
            }
        }
        ensure!(!o.systems.is_empty(), "--systems needs at least one system");
        ensure!(
            o.connections >= o.threads,
            "--connections {} is below --threads {} (wrk needs one per thread)",
            o.connections,
            o.threads
        );
        Ok(o)
    }

    fn needs(&self, via: impl Fn(Via) -> bool) -> bool {
        self.systems.iter().any(|case| via(case.via))
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-socket-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let options = Options::parse()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    ensure!(euid == 0, "needs root (network namespaces, cgroups, BPF)");
    for tool in ["nginx", "wrk", "iperf3"] {
        find_program(tool).with_context(|| format!("{tool} is not installed: {INSTALL}"))?;
    }
    let haproxy_needed = options.needs(|via| via == Via::Haproxy);
    let k3s_needed = options.needs(|via| via == Via::K3sProxy);
    // SAFETY: still single-threaded: nothing reads the environment concurrently.
    let k3s_binary = unsafe { prepare_bench("socket", haproxy_needed, k3s_needed) }?;
    let started = Instant::now();
    let load_before = load_average();

    // Declared first, dropped last: everything below lives in it.
    let _ns = NetNs::new();
    let tmp = TempDir::new();
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new());
    let _nginx = start_nginx(&tmp)?;
    let _iperf = start_iperf_server(&tmp)?;
    // Dropped before the cgroup and the pins: killed before they go.
    let mut daemon = start_daas_lb(&tmp, &pins, &cgroup, &options);
    let proxies = start_proxies(&tmp, &options, k3s_binary.as_deref())?;

    let cells = options.systems.len();
    let mut runs: Vec<Run> = Vec::new();
    for round in 0..options.rounds {
        for i in 0..cells {
            let case = options.systems[(i + round) % cells];
            let client_cgroup = case.in_cgroup.then_some(&cgroup);
            let close = wrk(&options, case.web, true, client_cgroup)
                .with_context(|| format!("{}: wrk with Connection: close", case.name))?;
            let keepalive = wrk(&options, case.web, false, client_cgroup)
                .with_context(|| format!("{}: wrk with keep-alive", case.name))?;
            let bulk = if options.bulk {
                Some(
                    iperf(case.bulk, options.duration, client_cgroup)
                        .with_context(|| format!("{}: iperf3", case.name))?,
                )
            } else {
                None
            };
            let run = Run {
                case,
                round,
                close,
                keepalive,
                bulk_bps: bulk,
            };
            eprintln!(
                "[socket] round {}/{} {}: {:.0} conn/s, {:.0} req/s (p50 {:.3} ms, p99 {:.3} ms), \
                 {}, CPU {:.1}/{:.1} µs per conn/req{}",
                round + 1,
                options.rounds,
                case.name,
                run.close.rate,
                run.keepalive.rate,
                run.keepalive.p50_ms,
                run.keepalive.p99_ms,
                run.bulk_bps.map_or_else(
                    || "no bulk".to_owned(),
                    |b| format!("{:.2} Gbit/s", b / 1e9)
                ),
                run.close.cpu_us_per_request(),
                run.keepalive.cpu_us_per_request(),
                run.error_note()
                    .map_or_else(String::new, |e| format!(" — ERRORS: {e}")),
            );
            runs.push(run);
        }
    }

    let verified = check_vips(&mut daemon, &options, &runs)?;
    let load = (load_before, load_average());
    print!("{}", table(&options, &runs, &load, &verified));
    drop(proxies);
    daemon.stop();
    eprintln!(
        "[socket] {} runs in {:.1}s",
        runs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One system's measurements in one round.
struct Run {
    case: &'static Case,
    round: usize,
    /// wrk with `Connection: close`.
    close: Wrk,
    /// wrk with keep-alive.
    keepalive: Wrk,
    /// iperf3's received bits/s (`None` with `--no-bulk`).
    bulk_bps: Option<f64>,
}

impl Run {
    /// Its wrk runs' errors, `None` without any.
    fn error_note(&self) -> Option<String> {
        let notes: Vec<String> = [("close", &self.close), ("keep-alive", &self.keepalive)]
            .iter()
            .filter(|(_, wrk)| wrk.errors.total() > 0)
            .map(|(what, wrk)| format!("{what}: {}", wrk.errors))
            .collect();
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

/// What one wrk run reported, and the node's busy CPU time over it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Wrk {
    /// Completed requests.
    requests: u64,
    /// Requests/s.
    rate: f64,
    /// Latency percentiles (`--latency`), ms.
    p50_ms: f64,
    p99_ms: f64,
    errors: WrkErrors,
    /// Busy CPU time of the whole node over the run, µs.
    busy_us: f64,
}

impl Wrk {
    /// The node's CPU time per completed request, µs.
    #[expect(
        clippy::cast_precision_loss,
        reason = "request counts stay far below 2^52"
    )]
    fn cpu_us_per_request(&self) -> f64 {
        self.busy_us / self.requests.max(1) as f64
    }
}

/// wrk's `Socket errors` line and its `Non-2xx or 3xx responses` count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct WrkErrors {
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
    /// Responses with a status ≥ 400 (wrk's "Non-2xx or 3xx responses").
    status: u64,
}

impl WrkErrors {
    const fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout + self.status
    }

    fn add(&mut self, other: &Self) {
        self.connect += other.connect;
        self.read += other.read;
        self.write += other.write;
        self.timeout += other.timeout;
        self.status += other.status;
    }
}

impl std::fmt::Display for WrkErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            ("connect", self.connect),
            ("read", self.read),
            ("write", self.write),
            ("timeout", self.timeout),
            ("status ≥ 400", self.status),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what} {n}"))
        .collect();
        if parts.is_empty() {
            f.write_str("–")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Parses wrk's report (`--latency`). Needs the `requests in` and
/// `Requests/sec` lines and the 50 % and 99 % lines of the latency
/// distribution; the error lines are optional (absent when zero).
fn parse_wrk(text: &str) -> Result<Wrk> {
    let mut wrk = Wrk::default();
    let (mut requests, mut rate, mut p50, mut p99) = (None, None, None, None);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            rate = Some(
                value
                    .trim()
                    .parse::<f64>()
                    .with_context(|| format!("wrk: {line:?}"))?,
            );
        } else if words.get(1) == Some(&"requests") && words.get(2) == Some(&"in") {
            requests = Some(
                words[0]
                    .parse::<u64>()
                    .with_context(|| format!("wrk: {line:?}"))?,
            );
        } else if words.len() == 2 && words[0] == "50%" {
            p50 = Some(parse_wrk_time(words[1]).with_context(|| format!("wrk: {line:?}"))?);
        } else if words.len() == 2 && words[0] == "99%" {
            p99 = Some(parse_wrk_time(words[1]).with_context(|| format!("wrk: {line:?}"))?);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 3, write 0, timeout 0"
            for part in rest.split(',') {
                let mut kv = part.split_whitespace();
                let (Some(kind), Some(n)) = (kv.next(), kv.next()) else {
                    bail!("wrk: {line:?}");
                };
                let n: u64 = n.parse().with_context(|| format!("wrk: {line:?}"))?;
                match kind {
                    "connect" => wrk.errors.connect = n,
                    "read" => wrk.errors.read = n,
                    "write" => wrk.errors.write = n,
                    "timeout" => wrk.errors.timeout = n,
                    _ => bail!("wrk: unknown socket error kind in {line:?}"),
                }
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            wrk.errors.status = n.trim().parse().with_context(|| format!("wrk: {line:?}"))?;
        }
    }
    wrk.requests = requests.context("wrk printed no `N requests in` line")?;
    wrk.rate = rate.context("wrk printed no `Requests/sec:` line")?;
    wrk.p50_ms = p50.context("wrk printed no 50% latency line (--latency)")?;
    wrk.p99_ms = p99.context("wrk printed no 99% latency line (--latency)")?;
    Ok(wrk)
}

/// A wrk time (`245.00us`, `1.23ms`, `2.00s`, `1.50m`, `1.00h`) in ms.
fn parse_wrk_time(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("{text:?}: no unit"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().with_context(|| format!("{text:?}"))?;
    let ms = match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        "h" => number * 3_600_000.0,
        other => bail!("{text:?}: unknown unit {other:?}"),
    };
    Ok(ms)
}

/// One wrk run against `target` (`close`: with `Connection: close`), in
/// `cgroup` when given; the whole node's busy CPU time measured around it.
fn wrk(o: &Options, target: SocketAddr, close: bool, cgroup: Option<&TestCgroup>) -> Result<Wrk> {
    let mut command = Command::new("wrk");
    command
        .arg("-t")
        .arg(o.threads.to_string())
        .arg("-c")
        .arg(o.connections.to_string())
        .arg("-d")
        .arg(format!("{}s", o.duration.as_secs()))
        .args(["--timeout", WRK_TIMEOUT, "--latency"]);
    if close {
        command.args(["-H", "Connection: close"]);
    }
    command.arg(format!("http://{target}/"));
    let before = busy_cpu()?;
    let output = run_client(command, cgroup, o.duration + CLIENT_SLACK)?;
    let busy = busy_cpu()?.saturating_sub(before);
    ensure!(
        output.status.success(),
        "wrk to {target} failed ({}): {}{}",
        output.status,
        output.stdout,
        output.stderr
    );
    let mut wrk = parse_wrk(&output.stdout)
        .with_context(|| format!("wrk to {target} printed:\n{}", output.stdout))?;
    ensure!(
        wrk.requests > 0,
        "wrk to {target}: no request completed ({}):\n{}",
        wrk.errors,
        output.stdout
    );
    wrk.busy_us = busy.as_secs_f64() * 1e6;
    if wrk.errors.total() > 0 {
        eprintln!(
            "[socket] warning: wrk to {target} ({}): {}",
            if close { "close" } else { "keep-alive" },
            wrk.errors
        );
    }
    Ok(wrk)
}

/// One `iperf3 -c` run (one stream, `-J`) to `target` for `duration`, in
/// `cgroup` when given; returns the received bits/s. A server still busy
/// with the previous test is asked again (three tries, 0.5 s apart).
fn iperf(target: SocketAddr, duration: Duration, cgroup: Option<&TestCgroup>) -> Result<f64> {
    let mut tries = 0;
    loop {
        tries += 1;
        let mut command = Command::new("iperf3");
        command
            .arg("-c")
            .arg(target.ip().to_string())
            .arg("-p")
            .arg(target.port().to_string())
            .arg("-t")
            .arg(duration.as_secs().to_string())
            .args(["-P", "1", "-J"]);
        let output = run_client(command, cgroup, duration + CLIENT_SLACK)?;
        let json: serde_json::Value = serde_json::from_str(&output.stdout).with_context(|| {
            format!(
                "iperf3 to {target} ({}) printed no JSON: {}{}",
                output.status, output.stdout, output.stderr
            )
        })?;
        if let Some(error) = json.get("error").and_then(serde_json::Value::as_str) {
            if error.contains("busy") && tries < 3 {
                eprintln!("[socket] iperf3 to {target}: {error}; again in 0.5 s");
                thread::sleep(Duration::from_millis(500));
                continue;
            }
            bail!("iperf3 to {target}: {error}");
        }
        ensure!(
            output.status.success(),
            "iperf3 to {target} failed ({}): {}",
            output.status,
            output.stderr
        );
        let bps = json
            .pointer("/end/sum_received/bits_per_second")
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("iperf3 to {target}: no end.sum_received.bits_per_second"))?;
        ensure!(bps > 0.0, "iperf3 to {target}: received nothing");
        return Ok(bps);
    }
}

/// What a client printed.
struct ClientOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// A child killed and reaped on drop (also while unwinding).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` (in `cgroup` when given, so that the cgroup's socket
/// programs see its connects) to completion; kills it when it outlives
/// `limit`, and the kernel kills it if the bench dies first.
fn run_client(
    mut command: Command,
    cgroup: Option<&TestCgroup>,
    limit: Duration,
) -> Result<ClientOutput> {
    let program = command.get_program().to_string_lossy().into_owned();
    let procs = cgroup
        .map(|cgroup| {
            let path = cgroup.path().join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))
        })
        .transpose()?;
    let fd = procs.as_ref().map(AsRawFd::as_raw_fd);
    // SAFETY: runs in the forked child before exec and only calls write(2)
    // on an fd inherited from the parent and prctl(2), both async-signal-safe,
    // with valid arguments; writing "0" to cgroup.procs moves the caller.
    unsafe {
        command.pre_exec(move || {
            if let Some(fd) = fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = KillOnDrop(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?,
    );
    drop(procs);
    let stdout = read_all(child.0.stdout.take());
    let stderr = read_all(child.0.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child
            .0
            .try_wait()
            .with_context(|| format!("waiting for {program}"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            bail!("{program} still runs after {limit:?}: killed");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let join = |handle: thread::JoinHandle<String>| {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("{program}'s reader thread panicked"))
    };
    Ok(ClientOutput {
        status,
        stdout: join(stdout)?,
        stderr: join(stderr)?,
    })
}

/// A thread reading `stream` to its end (lossy: a read error ends it).
fn read_all(stream: Option<impl std::io::Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_string(&mut text);
        }
        text
    })
}

/// The busy CPU time of the whole node so far: the `cpu` line of
/// `/proc/stat` without idle and iowait (guest time is already in user).
fn busy_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat: no `cpu` line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().with_context(|| format!("/proc/stat: {line:?}")))
        .collect::<Result<_>>()?;
    ensure!(fields.len() >= 8, "/proc/stat: short `cpu` line {line:?}");
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) = {per_second}");
    let per_second = per_second.unsigned_abs() as u64;
    Ok(Duration::from_nanos(busy * 1_000_000_000 / per_second))
}

/// Starts nginx in the foreground on [`NGINX`] with a config, page, pid
/// file, logs and temp paths of its own in `tmp/nginx`; answers a `GET /`
/// before it returns.
fn start_nginx(tmp: &TempDir) -> Result<Proxy> {
    let dir = tmp.path().join("nginx");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
    let page = www.join("index.html");
    std::fs::write(&page, page_body()).with_context(|| format!("writing {}", page.display()))?;
    let d = dir.display();
    let config = format!(
        "user root;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{\n    worker_connections 4096;\n}}\n\
         http {{\n    access_log off;\n    sendfile on;\n    tcp_nopush on;\n    \
         keepalive_requests 1000000;\n    keepalive_timeout 65s;\n    \
         default_type text/html;\n    \
         client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n    \
         fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    \
         scgi_temp_path {d}/scgi;\n    \
         server {{\n        listen {NGINX} backlog=4096;\n        root {www};\n        \
         location / {{\n            index index.html;\n        }}\n    }}\n}}\n",
        www = www.display()
    );
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let log = dir.join("nginx.out");
    let mut command = Command::new(find_program("nginx").context("nginx is not installed")?);
    command
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&config_path)
        .args(["-g", "daemon off;"]);
    let nginx = Proxy::spawn(command, &log)?;
    wait_http(NGINX, &[&log, &dir.join("error.log")])?;
    eprintln!("[socket] nginx on {NGINX} ({BODY_BYTES}-byte page, 1 worker)");
    Ok(nginx)
}

/// The page nginx serves: [`BODY_BYTES`] of HTML.
fn page_body() -> String {
    let head = "<!DOCTYPE html>\n<html><body><p>daas-lb socket bench</p><!-- ";
    let tail = " --></body></html>\n";
    let filler = BODY_BYTES - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(filler))
}

/// Waits (at most 10 s) until `GET /` on `addr` answers `200`; the error
/// shows the `logs`.
fn wait_http(addr: SocketAddr, logs: &[&Path]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        match http_status(addr) {
            Ok(line) if line.starts_with("HTTP/1.1 200") => return Ok(()),
            Ok(line) => last = format!("answered {line:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "no HTTP 200 from {addr} within 10 s (last: {last}); {}",
        show_logs(logs)
    )
}

/// The status line of `GET /` on `addr`.
fn http_status(addr: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .with_context(|| format!("writing to {addr}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .with_context(|| format!("reading from {addr}"))?;
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

/// Waits (at most 10 s) until `log` contains `needle`; the error shows it.
fn wait_log(log: &Path, needle: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::fs::read_to_string(log).is_ok_and(|text| text.contains(needle)) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("no {needle:?} within 10 s; {}", show_logs(&[log]))
}

fn show_logs(logs: &[&Path]) -> String {
    logs.iter()
        .map(|log| {
            format!(
                "{}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts `iperf3 -s` on [`IPERF`] and waits until it listens.
fn start_iperf_server(tmp: &TempDir) -> Result<Proxy> {
    let log = tmp.path().join("iperf3-server.log");
    let mut command = Command::new("iperf3");
    command
        .args(["-s", "--forceflush", "-B"])
        .arg(IPERF.ip().to_string())
        .arg("-p")
        .arg(IPERF.port().to_string());
    let server = Proxy::spawn(command, &log)?;
    wait_log(&log, "Server listening")?;
    eprintln!("[socket] iperf3 -s on {IPERF}");
    Ok(server)
}

/// The daemon's `services:` entries: two per selected [`Via::Daemon`]
/// case (see there); `  []` without any.
fn daemon_services(o: &Options) -> String {
    let mut yaml = String::new();
    for case in &o.systems {
        let Via::Daemon {
            web, bulk, extra, ..
        } = case.via
        else {
            continue;
        };
        let _ = write!(
            yaml,
            "  - name: {web}\n    vip: \"{}\"\n    protocol: tcp\n    policy: failover\n    \
             servers: [\"{NGINX}\"]\n{extra}\
             \x20 - name: {bulk}\n    vip: \"{}\"\n    protocol: tcp\n    policy: failover\n    \
             servers: [\"{IPERF}\"]\n    health_check: {{ interval: 1h, intervals: {{ recovering: 200ms }} }}\n\
             {extra}",
            case.web, case.bulk
        );
    }
    if yaml.is_empty() {
        yaml.push_str("  []\n");
    }
    yaml
}

/// Starts `daas-lb run` with [`daemon_services`], its programs on `cgroup`,
/// and waits (at most 20 s) until every service selected its server.
fn start_daas_lb(tmp: &TempDir, pins: &PinDir, cgroup: &TestCgroup, o: &Options) -> Daemon {
    let yaml = config_yaml(pins, cgroup, &tmp.path().join("data"), &daemon_services(o));
    let config = tmp.file("config.yaml", &yaml);
    let mut daemon = Daemon::spawn(
        &["--config", &config.display().to_string()],
        tmp.path(),
        API,
    );
    daemon.wait_for(
        Duration::from_secs(20),
        "every service's server selected and preferred or active",
        |s| {
            s.services.iter().all(|service| {
                service.selected.is_some()
                    && service.servers.iter().all(|srv| {
                        matches!(srv.state, ServerState::Preferred | ServerState::Active)
                    })
            })
        },
    );
    eprintln!(
        "[socket] daas-lb ready ({} services)",
        daemon.status().services.len()
    );
    daemon
}

/// The proxies the selected systems need, killed on drop.
fn start_proxies(tmp: &TempDir, o: &Options, k3s_binary: Option<&Path>) -> Result<Vec<Proxy>> {
    let mut proxies = Vec::new();
    if o.needs(|via| via == Via::Haproxy) {
        let config = tmp.file("haproxy.cfg", &haproxy_config(o.proxy_threads));
        let log = tmp.path().join("haproxy.log");
        let mut command =
            Command::new(find_program("haproxy").context("haproxy is not installed")?);
        command.arg("-db").arg("-f").arg(&config);
        proxies.push(Proxy::spawn(command, &log)?);
        wait_http(HAPROXY_ADDR, &[&log])?;
        eprintln!(
            "[socket] haproxy on {HAPROXY_ADDR} and {HAPROXY_BULK} (nbthread {})",
            o.proxy_threads
        );
    }
    if let Some(binary) = k3s_binary {
        for (listen, backend, checks, name) in [
            (K3S_PROXY_ADDR, NGINX, K3S_WEB_CHECKS, "web"),
            (K3S_BULK, IPERF, K3S_BULK_CHECKS, "bulk"),
        ] {
            let log = tmp.path().join(format!("k3s-proxy-{name}.log"));
            let mut command =
                k3s_proxy_command(binary, listen, &[backend], K3S_DIAL_TIMEOUT, checks);
            command.env("GOMAXPROCS", o.proxy_threads.to_string());
            proxies.push(Proxy::spawn(command, &log)?);
            wait_log(&log, "listening")?;
        }
        wait_http(K3S_PROXY_ADDR, &[&tmp.path().join("k3s-proxy-web.log")])?;
        eprintln!(
            "[socket] k3s-proxy on {K3S_PROXY_ADDR} and {K3S_BULK} (GOMAXPROCS {})",
            o.proxy_threads
        );
    }
    Ok(proxies)
}

/// HAProxy in TCP mode with `nbthread threads`: `listen web` on
/// [`HAPROXY_ADDR`] → nginx, `listen bulk` on [`HAPROXY_BULK`] → iperf3,
/// one server each without checks; `maxconn` and the timeouts as in
/// [`lb_tests::proxies::haproxy_config`].
fn haproxy_config(threads: usize) -> String {
    format!(
        "global\n    maxconn 9000\n    nbthread {threads}\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 50s\n    \
         timeout server 50s\n\n\
         listen web\n    bind {HAPROXY_ADDR}\n    server s1 {NGINX}\n\n\
         listen bulk\n    bind {HAPROXY_BULK}\n    server s1 {IPERF}\n"
    )
}

/// After the runs, for each selected socket-LB case: the kernel counted
/// at least as many connects to each service's server as its clients
/// made through the VIP (one per `Connection: close` request, one per
/// keep-alive connection, two per iperf3 run); waits up to 3 s for the
/// daemon's counts (polled every 200 ms). Returns the lines saying so.
fn check_vips(daemon: &mut Daemon, o: &Options, runs: &[Run]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for case in &o.systems {
        let Via::Daemon {
            web,
            bulk,
            socket_lb: true,
            ..
        } = case.via
        else {
            continue;
        };
        let of_case = || runs.iter().filter(|r| r.case.name == case.name);
        let web_made: u64 = of_case()
            .map(|r| r.close.requests + o.connections as u64)
            .sum();
        let bulk_made: u64 = of_case().filter(|r| r.bulk_bps.is_some()).count() as u64 * 2;
        let services = [(web, case.web, web_made), (bulk, case.bulk, bulk_made)];
        // With --no-bulk no client used the bulk VIP: nothing to check there.
        let checked = if o.bulk {
            &services[..]
        } else {
            &services[..1]
        };
        for &(name, vip, made) in checked {
            let counted = |status: &Status| -> u64 {
                service(status, name)
                    .servers
                    .iter()
                    .map(|s| s.connects)
                    .sum()
            };
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut seen = counted(&daemon.status());
            while seen < made && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
                seen = counted(&daemon.status());
            }
            ensure!(
                seen >= made,
                "service {name} (VIP {vip}): the kernel counted {seen} connects to its server, \
                 the clients made at least {made} through the VIP"
            );
            let line = format!(
                "`{}`: service `{name}` (VIP {vip}): {seen} connects counted by the kernel, at \
                 least {made} made through the VIP",
                case.name
            );
            eprintln!("[socket] {line}");
            lines.push(line);
        }
    }
    Ok(lines)
}

/// The 1-minute load average (`/proc/loadavg`), `?` when unreadable.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some(f64::midpoint(values[n / 2 - 1], values[n / 2])),
    }
}

/// One row: the medians over the rounds of `case`'s runs.
struct Row {
    close: f64,
    close_vs: Option<f64>,
    keepalive: f64,
    keepalive_vs: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
    bulk_gbps: Option<f64>,
    bulk_vs: Option<f64>,
    cpu_conn: f64,
    cpu_req: f64,
    errors: WrkErrors,
}

fn row(case: &Case, runs: &[Run]) -> Option<Row> {
    let of: Vec<&Run> = runs.iter().filter(|r| r.case.name == case.name).collect();
    let direct = |round: usize| {
        runs.iter()
            .find(|r| r.case.name == "direct" && r.round == round)
    };
    let stat = |f: &dyn Fn(&Run) -> Option<f64>| median(of.iter().filter_map(|r| f(r)).collect());
    // The median over the rounds of this run's value / direct's same round.
    let vs = |f: &dyn Fn(&Run) -> Option<f64>| {
        median(
            of.iter()
                .filter_map(|r| Some(f(r)? / f(direct(r.round)?)?))
                .collect(),
        )
    };
    let mut errors = WrkErrors::default();
    for r in &of {
        errors.add(&r.close.errors);
        errors.add(&r.keepalive.errors);
    }
    Some(Row {
        close: stat(&|r| Some(r.close.rate))?,
        close_vs: vs(&|r| Some(r.close.rate)),
        keepalive: stat(&|r| Some(r.keepalive.rate))?,
        keepalive_vs: vs(&|r| Some(r.keepalive.rate)),
        p50_ms: stat(&|r| Some(r.keepalive.p50_ms))?,
        p99_ms: stat(&|r| Some(r.keepalive.p99_ms))?,
        bulk_gbps: stat(&|r| r.bulk_bps.map(|b| b / 1e9)),
        bulk_vs: vs(&|r| r.bulk_bps),
        cpu_conn: stat(&|r| Some(r.close.cpu_us_per_request()))?,
        cpu_req: stat(&|r| Some(r.keepalive.cpu_us_per_request()))?,
        errors,
    })
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |r| format!("{r:.3}×"))
}

fn table(o: &Options, runs: &[Run], load: &(String, String), verified: &[String]) -> String {
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut out = format!(
        "\n### Socket-level load balancing vs proxies: HTTP and bulk through each system\n\n\
         One network namespace on loopback: nginx (1 worker, {BODY_BYTES}-byte page) and an \
         iperf3 server as backends, one daas-lb daemon whose socket programs attach to the \
         cgroup every client runs in; proxies with {pt} thread(s) each (HAProxy in TCP mode: \
         `nbthread {pt}`; the K3s-style proxy in Go: `GOMAXPROCS={pt}`). wrk: {c} \
         connections, {t} thread(s), {d} s per run, `Connection: close` for conn/s, keep-alive \
         for req/s and p50/p99; {bulk}. {r} round(s), systems rotated per round; values are medians of the \
         rounds, each `vs direct` the median of the same round's ratios. CPU = the whole \
         node's busy time (`/proc/stat`, {cpus} CPUs, everything running counted) per request \
         over the wrk run. Load average {} before, {} after.\n\n\
         | system | conn/s (close) | vs direct | req/s (keep-alive) | vs direct | p50 ms | p99 \
         ms | bulk Gbit/s | vs direct | CPU µs/conn | CPU µs/req | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        load.0,
        load.1,
        pt = o.proxy_threads,
        c = o.connections,
        t = o.threads,
        d = o.duration.as_secs(),
        r = o.rounds,
        bulk = if o.bulk {
            format!("iperf3: one stream, {} s", o.duration.as_secs())
        } else {
            "iperf3 skipped (--no-bulk)".to_owned()
        },
    );
    for case in &o.systems {
        let Some(row) = row(case, runs) else { continue };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {} | {} | {:.1} | {:.1} | {} |",
            case.label,
            thousands(row.close),
            ratio(row.close_vs),
            thousands(row.keepalive),
            ratio(row.keepalive_vs),
            row.p50_ms,
            row.p99_ms,
            row.bulk_gbps
                .map_or_else(|| "–".to_owned(), |g| format!("{g:.2}")),
            ratio(row.bulk_vs),
            row.cpu_conn,
            row.cpu_req,
            row.errors,
        );
    }
    if !verified.is_empty() {
        let _ = writeln!(
            out,
            "\nThrough the VIPs (nothing listens on them): {}.",
            verified.join("; ")
        );
    }
    let errors: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.error_note()
                .map(|e| format!("{} round {}: {e}", r.case.name, r.round + 1))
        })
        .collect();
    if errors.is_empty() {
        out.push_str("\nNo wrk run had a socket error or a status ≥ 400.\n");
    } else {
        let _ = writeln!(
            out,
            "\n**Runs with errors (counted in their medians):** {}.",
            errors.join("; ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_CLOSE: &str = "Running 2s test @ http://127.0.0.1:6444/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.46ms    1.10ms  20.79ms   86.54%
    Req/Sec    12.95k     1.02k   14.16k    75.00%
  Latency Distribution
     50%    2.29ms
     75%    2.70ms
     90%    3.42ms
     99%    6.68ms
  25766 requests in 2.00s, 30.98MB read
  Socket errors: connect 0, read 12, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  12880.63
Transfer/sec:     15.49MB
";

    #[test]
    fn wrk_reports_are_parsed() {
        let wrk = parse_wrk(WRK_CLOSE).unwrap();
        assert_eq!(wrk.requests, 25766);
        assert!((wrk.rate - 12880.63).abs() < 1e-9);
        assert!((wrk.p50_ms - 2.29).abs() < 1e-9);
        assert!((wrk.p99_ms - 6.68).abs() < 1e-9);
        assert_eq!(
            wrk.errors,
            WrkErrors {
                connect: 0,
                read: 12,
                write: 0,
                timeout: 3,
                status: 7
            }
        );
        assert_eq!(wrk.errors.to_string(), "read 12, timeout 3, status ≥ 400 7");
        let clean = WRK_CLOSE
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse_wrk(&clean).unwrap().errors, WrkErrors::default());
        assert!(parse_wrk("Running 2s test\n").is_err());
    }

    #[test]
    fn wrk_times_are_in_ms() {
        assert!((parse_wrk_time("245.00us").unwrap() - 0.245).abs() < 1e-12);
        assert!((parse_wrk_time("1.50s").unwrap() - 1500.0).abs() < 1e-9);
        assert!((parse_wrk_time("2.00m").unwrap() - 120_000.0).abs() < 1e-9);
        assert!(parse_wrk_time("3.00").is_err());
        assert!(parse_wrk_time("3.00xs").is_err());
    }

    #[test]
    fn the_page_has_its_size() {
        assert_eq!(page_body().len(), BODY_BYTES);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
