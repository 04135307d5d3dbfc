//! What daas-lb costs a new connection on the happy path, side by side:
//! connects/s and connect + first-byte latency through a VIP whose TCP
//! connects are tracked (`dial_tracking: true`, the default: the connect
//! hook looks the service up in `failover`, checks the backend in
//! `backend_dial` and records the dial in `dials`; `sock_ops` sees it end,
//! counts the connection and reports the dial to the daemon, which drains
//! successes every 20 ms), through a VIP of the same daemon over the
//! same servers that is not tracked (`dial_tracking: false`), and straight
//! to the server; HAProxy and a K3s-style proxy as baselines.
//!
//! One network namespace (only loopback, no route out) for the whole run:
//! two [`ByteServer`]s (`127.0.0.10:7000`, `127.0.0.11:7000`; each answers
//! a connection with one byte and closes it), one `daas-lb run` whose
//! socket programs attach to a child cgroup the bench creates, and the
//! proxies, all started once. Systems (`--systems`), each measured by its
//! own client process (`lb-test-client connects`, see
//! [`lb_tests::connects`]):
//!
//! - `direct`: the client, in the cgroup, connects straight to the server
//!   the VIPs select (`127.0.0.10:7000`); the cgroup's programs run but
//!   find no VIP.
//! - `daas-lb`: the client, in the cgroup, connects to service `tracked`'s
//!   VIP `127.0.0.1:6444` (`policy: failover` over both servers, default
//!   checks, `dial_tracking` default true).
//! - `daas-lb-paused`: `daas-lb` with the daemon stopped (`SIGSTOP`) for
//!   the client's run and continued (`SIGCONT`) after it, 0.5 s before the
//!   next run: the kernel's side of dial tracking alone, without the
//!   daemon draining and handling the reports. The `dial_events` ring
//!   buffer (1 MiB, ~26,000 reports) fills within a second or two at these
//!   rates; reports that do not fit are dropped at once, so this row
//!   leaves out some of the ring writes. The daemon's CPU is not shown.
//! - `daas-lb-untracked`: the same as `daas-lb` to service `untracked`'s VIP
//!   `127.0.0.1:6445`, identical but `dial_tracking: false`: the connect
//!   hook reads the service's `failover` entry, sees no tracking flag and
//!   does nothing more; `sock_ops` still runs for the socket, finds no
//!   `dials` entry and asks for no further callbacks.
//! - `haproxy`: the client, in the cgroup, connects to Debian's HAProxy
//!   (TCP mode, `127.0.0.1:7443`, `balance first`, the config of the
//!   failover bench, see [`haproxy_config`]).
//! - `k3s-proxy`: the same to the K3s-style proxy of `tests/k3s-proxy`
//!   (`127.0.0.1:7444`, built with `go build`, 10 s dial timeout, 1 s
//!   checks).
//! - `direct-outside`: the client connects straight to the server from
//!   outside the cgroup: no program of daas-lb runs at all.
//!
//! Nothing listens on the VIPs: a connect to one succeeds only when the
//! connect hook rewrote it (the bench checks the kernel's connect counts
//! against the clients'). Both services select `127.0.0.10:7000` at the
//! start (the bench checks), HAProxy and the K3s-style proxy use it too
//! (first server while it is up), so every system ends at the same
//! listener, unless a service's server is marked failed during the run:
//! the output ends with the dial failures the kernel reported and the
//! servers that failed (none of that is expected here, and it does not stop
//! the bench; a failed client connect does).
//!
//! The client is a closed loop: `--concurrency` threads, each one
//! connect after the other: a new TCP socket, a blocking connect, read the
//! server's byte, close. Every socket closes with `SO_LINGER` 0 (a reset,
//! no `TIME_WAIT` on either end), so the ephemeral ports of the one
//! client/server address pair never run out. Each client runs 0.2 s
//! unmeasured, then `--seconds` counted (connects that started in that
//! window). A failed connect fails the bench. Rounds (`--rounds`): in each,
//! for each concurrency, every system once, the order rotated by one system
//! per round (system `i` of `--systems` runs at position `i - round`,
//! modulo their number), so that a slow start or a drifting machine does
//! not always hit the same system.
//!
//! Columns, per concurrency: connects/s (median of the rounds, and the
//! rounds' min–max), its ratio to `direct`; connect + first-byte latency
//! p50 and p99 (µs, nearest rank over the connects of all rounds, from
//! `socket()` to the byte read, the close not included) and their ratios
//! to `direct`; the longest connect (µs); the daemon's CPU time (user +
//! system, from `/proc/PID/stat`) per connect of the client's whole run,
//! and for the proxies their own CPU time per connect. Then the key lines: `daas-lb`
//! (and `daas-lb-paused`) against `daas-lb-untracked`, the cost of dial
//! tracking (and of its kernel side). The intro names the load average
//! before and after the runs: the bench shares the machine.
//!
//! Needs root; haproxy and go for those systems (`apt-get install haproxy
//! golang-go`). `cargo xtask bench connect` builds the release binaries and
//! runs it. Prints the markdown tables on stdout, progress on stderr.
//! Cleanup, also on panic: the guards kill the daemon, the proxies (also
//! by `PR_SET_PDEATHSIG`) and the clients, remove the cgroup (killing what
//! is left in it), the pins and the temp directory, and the namespace
//! goes with its last process.
//!
//! ```text
//! lb-connect-bench [--rounds N (5)] [--seconds SECS (2)] [--concurrency 1,8]
//!                  [--systems direct,daas-lb,daas-lb-paused,daas-lb-untracked,haproxy,
//!                             k3s-proxy,direct-outside]
//! ```

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_tests::{
    API, Daemon, NetNs, PinDir, TempDir, TestCgroup, config_yaml,
    connects::{LoopReport, WARMUP, percentile, run_loop},
    metric,
    proxies::{
        HAPROXY_ADDR, K3S_PROXY_ADDR, Proxy, bind_bench_servers, haproxy_config, k3s_proxy_command,
        parse_systems, prepare_bench, wait_answered,
    },
    service, thousands,
};
use lb_userspace::{api::status::Status, policy::state_machine::ServerState};

/// The VIP of the service with `dial_tracking: true` (the default).
const TRACKED_VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6444);
/// The VIP of the service with `dial_tracking: false`.
const UNTRACKED_VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6445);
const TRACKED: &str = "tracked";
const UNTRACKED: &str = "untracked";
/// The K3s-style proxy's dial timeout (K3s's) and check interval.
const K3S_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
const K3S_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Direct,
    Tracked,
    Paused,
    Untracked,
    Haproxy,
    K3sProxy,
    Outside,
}

impl System {
    const ALL: [Self; 7] = [
        Self::Direct,
        Self::Tracked,
        Self::Paused,
        Self::Untracked,
        Self::Haproxy,
        Self::K3sProxy,
        Self::Outside,
    ];

    const fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Tracked => "daas-lb",
            Self::Paused => "daas-lb-paused",
            Self::Untracked => "daas-lb-untracked",
            Self::Haproxy => "haproxy",
            Self::K3sProxy => "k3s-proxy",
            Self::Outside => "direct-outside",
        }
    }

    const fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct to the server (client in the cgroup)",
            Self::Tracked => "daas-lb VIP, `dial_tracking: true` (default)",
            Self::Paused => "daas-lb VIP, `dial_tracking: true`, daemon stopped (kernel side only)",
            Self::Untracked => "daas-lb VIP, `dial_tracking: false`",
            Self::Haproxy => "HAProxy (TCP mode)",
            Self::K3sProxy => "K3s-style proxy (Go)",
            Self::Outside => "direct, client outside the cgroup (no programs)",
        }
    }

    /// Whether its client runs in the cgroup the daemon's programs attach to.
    const fn in_cgroup(self) -> bool {
        !matches!(self, Self::Outside)
    }
}

struct Options {
    rounds: usize,
    seconds: Duration,
    concurrency: Vec<usize>,
    systems: Vec<System>,
}

impl Options {
    fn parse() -> Result<Self> {
        let mut o = Self {
            rounds: 5,
            seconds: Duration::from_secs(2),
            concurrency: vec![1, 8],
            systems: System::ALL.to_vec(),
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let list = || value.split(',').filter(|s| !s.is_empty());
            match flag.as_str() {
                "--rounds" => {
                    o.rounds = value.parse().with_context(|| format!("--rounds {value}"))?;
                    ensure!((1..=50).contains(&o.rounds), "--rounds {value}: 1 to 50");
                }
                "--seconds" => {
                    let secs: f64 = value
                        .parse()
                        .with_context(|| format!("--seconds {value}"))?;
                    ensure!(
                        (0.1..=60.0).contains(&secs),
                        "--seconds {value}: 0.1 to 60 seconds"
                    );
                    o.seconds = Duration::from_secs_f64(secs);
                }
                "--concurrency" => {
                    o.concurrency = list()
                        .map(|c| c.parse().with_context(|| format!("--concurrency: {c}")))
                        .collect::<Result<_>>()?;
                    ensure!(
                        o.concurrency.iter().all(|c| (1..=256).contains(c)),
                        "--concurrency {value}: each 1 to 256 connects in flight"
                    );
                }
                "--systems" => o.systems = parse_systems(value, &System::ALL, System::name)?,
                other => bail!("unknown option {other}"),
            }
        }
        ensure!(
            !o.concurrency.is_empty() && !o.systems.is_empty(),
            "--concurrency and --systems need at least one value each"
        );
        Ok(o)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-connect-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One client run of one system.
struct Run {
    system: System,
    concurrency: usize,
    round: usize,
    report: LoopReport,
    /// The daemon's CPU time during the client's run.
    daemon_cpu: Duration,
    /// The proxy's CPU time during the client's run (proxies only).
    proxy_cpu: Option<Duration>,
}

fn run() -> Result<()> {
    let options = Options::parse()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    ensure!(euid == 0, "needs root (network namespaces, cgroups, BPF)");
    let needs = |system| options.systems.contains(&system);
    // SAFETY: still single-threaded: nothing reads the environment concurrently.
    let k3s_proxy =
        unsafe { prepare_bench("connect", needs(System::Haproxy), needs(System::K3sProxy)) }?;
    let started = Instant::now();
    let load_before = load_average();

    // Declared first, dropped last: everything below lives in it.
    let _ns = NetNs::new();
    // Kept until the end: the servers answer every run.
    let (_servers, addrs) = bind_bench_servers()?;
    let tmp = TempDir::new();
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new());
    // Dropped before the cgroup and the pins: killed before they go.
    let mut daemon = start_daas_lb(&tmp, &pins, &cgroup, &addrs);
    let status = daemon.wait_for(
        Duration::from_secs(20),
        "both services' servers preferred or active",
        |s| {
            [TRACKED, UNTRACKED].iter().all(|&name| {
                let service = service(s, name);
                service.selected.is_some()
                    && service.servers.iter().all(|srv| {
                        matches!(srv.state, ServerState::Preferred | ServerState::Active)
                    })
            })
        },
    );
    let server = check_setup(&status, &addrs)?;
    let daemon_pid = daemon.pid().context("the daemon has no pid")?;

    let haproxy = if needs(System::Haproxy) {
        let config = tmp.file(
            "haproxy.cfg",
            &haproxy_config("connect", HAPROXY_ADDR, &addrs),
        );
        let log = tmp.path().join("haproxy.log");
        let mut command = Command::new("haproxy");
        command.arg("-db").arg("-f").arg(&config);
        let proxy = Proxy::spawn(command, &log)?;
        wait_answered(HAPROXY_ADDR, &log)?;
        Some(proxy)
    } else {
        None
    };
    let k3s = if let Some(binary) = &k3s_proxy {
        let log = tmp.path().join("k3s-proxy.log");
        let command = k3s_proxy_command(
            binary,
            K3S_PROXY_ADDR,
            &addrs,
            K3S_DIAL_TIMEOUT,
            K3S_CHECK_INTERVAL,
        );
        let proxy = Proxy::spawn(command, &log)?;
        wait_answered(K3S_PROXY_ADDR, &log)?;
        Some(proxy)
    } else {
        None
    };
    let target = |system: System| match system {
        System::Direct | System::Outside => server,
        System::Tracked | System::Paused => TRACKED_VIP,
        System::Untracked => UNTRACKED_VIP,
        System::Haproxy => HAPROXY_ADDR,
        System::K3sProxy => K3S_PROXY_ADDR,
    };
    let proxy_pid = |system: System| match system {
        System::Haproxy => haproxy.as_ref().map(Proxy::pid),
        System::K3sProxy => k3s.as_ref().map(Proxy::pid),
        _ => None,
    };

    let systems = &options.systems;
    let mut runs = Vec::new();
    for round in 0..options.rounds {
        for &concurrency in &options.concurrency {
            for i in 0..systems.len() {
                let system = systems[(i + round) % systems.len()];
                let cgroup = system.in_cgroup().then_some(&cgroup);
                let proxy = proxy_pid(system);
                let daemon_before = cpu_time(daemon_pid)?;
                let proxy_before = proxy.map(cpu_time).transpose()?;
                let stopped = (system == System::Paused).then(|| Stopped::new(&daemon));
                let report = run_loop(target(system), concurrency, options.seconds, cgroup)
                    .with_context(|| format!("{} with {concurrency} in flight", system.name()))?;
                let daemon_cpu = cpu_time(daemon_pid)?.saturating_sub(daemon_before);
                if let Some(stopped) = stopped {
                    drop(stopped);
                    // It reads the reports the ring buffer kept before the next run.
                    std::thread::sleep(Duration::from_millis(500));
                }
                let proxy_cpu = match (proxy, proxy_before) {
                    (Some(pid), Some(before)) => Some(cpu_time(pid)?.saturating_sub(before)),
                    _ => None,
                };
                ensure!(
                    report.errors == 0,
                    "{} with {concurrency} in flight: {} of {} connects failed, the first: {}",
                    system.name(),
                    report.errors,
                    report.total,
                    report.first_error.as_deref().unwrap_or("?")
                );
                let mut sorted = report.latencies_ns.clone();
                sorted.sort_unstable();
                eprintln!(
                    "[connect] round {}/{} c={concurrency} {}: {:.0} connects/s, p50 {:.1} µs, \
                     p99 {:.1} µs, max {:.1} µs, daemon CPU {:.0} ms",
                    round + 1,
                    options.rounds,
                    system.name(),
                    report.rate(),
                    micros(percentile(&sorted, 50.0)),
                    micros(percentile(&sorted, 99.0)),
                    micros(sorted.last().copied().unwrap_or(0)),
                    daemon_cpu.as_secs_f64() * 1000.0
                );
                runs.push(Run {
                    system,
                    concurrency,
                    round,
                    report,
                    daemon_cpu,
                    proxy_cpu,
                });
            }
        }
    }

    let status = daemon.status();
    let metrics = daemon.metrics();
    let incidents = check_after(&status, &metrics, &runs).map_err(|e| {
        let log = daemon.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        e.context(format!("the daemon's log ends:\n{}", tail.join("\n")))
    })?;
    let load = (load_before, load_average());
    // What the daemon logged about dials that went wrong (none expected).
    for line in daemon
        .log()
        .lines()
        .filter(|l| l.contains("client connect"))
    {
        eprintln!("[connect] daemon: {line}");
    }
    print!("{}{incidents}", tables(&options, &runs, &load));
    drop((haproxy, k3s));
    daemon.stop();
    eprintln!(
        "[connect] {} runs in {:.1}s",
        runs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The daemon stopped (`SIGSTOP`) while it lives, continued on drop (also
/// while unwinding).
struct Stopped<'a>(&'a Daemon);

impl<'a> Stopped<'a> {
    fn new(daemon: &'a Daemon) -> Self {
        daemon.signal(libc::SIGSTOP);
        Self(daemon)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
    }
}

/// The 1-minute load average (`/proc/loadavg`), `?` when unreadable.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Starts `daas-lb run` with the two services over `servers`: `tracked`
/// (defaults) and `untracked` (`dial_tracking: false`).
fn start_daas_lb(
    tmp: &TempDir,
    pins: &PinDir,
    cgroup: &TestCgroup,
    servers: &[SocketAddr],
) -> Daemon {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let list = list.join(", ");
    let services = format!(
        "  - name: {TRACKED}\n    vip: \"{TRACKED_VIP}\"\n    protocol: tcp\n    policy: failover\n    \
         servers: [{list}]\n\
         \x20 - name: {UNTRACKED}\n    vip: \"{UNTRACKED_VIP}\"\n    protocol: tcp\n    policy: failover\n    \
         servers: [{list}]\n    dial_tracking: false\n"
    );
    let yaml = config_yaml(pins, cgroup, &tmp.path().join("data"), &services);
    let config = tmp.file("config.yaml", &yaml);
    Daemon::spawn(
        &["--config", &config.display().to_string()],
        tmp.path(),
        API,
    )
}

/// Both services select the first server (the one HAProxy and the
/// K3s-style proxy use as well), only `tracked` has its dials tracked;
/// returns that server.
fn check_setup(status: &Status, servers: &[SocketAddr]) -> Result<SocketAddr> {
    let first = servers[0];
    for name in [TRACKED, UNTRACKED] {
        let selected = service(status, name).selected.as_deref();
        ensure!(
            selected == Some(first.to_string().as_str()),
            "service {name} selected {selected:?}, not the first server {first}"
        );
    }
    ensure!(
        service(status, TRACKED).dial_stall_after_ms.is_some(),
        "service {TRACKED}: its dials are not tracked (no dial_stall_after_ms in status)"
    );
    ensure!(
        service(status, UNTRACKED).dial_stall_after_ms.is_none(),
        "service {UNTRACKED}: its dials are tracked despite dial_tracking: false"
    );
    Ok(first)
}

/// After the runs: the kernel counted at least the clients' connects to
/// each VIP (over the service's servers: the server in use may have
/// changed). Returns a note on what else happened to the services: the
/// failed or stalled dials the kernel reported (`daas_lb_dial_failures_total`)
/// and the servers that went to `failed` (`daas_lb_state_transitions_total`);
/// none of it stops the bench, none of it is expected on the happy path.
fn check_after(status: &Status, metrics: &str, runs: &[Run]) -> Result<String> {
    let mut incidents = Vec::new();
    for (name, systems) in [
        (TRACKED, [System::Tracked, System::Paused]),
        (UNTRACKED, [System::Untracked; 2]),
    ] {
        let made: u64 = runs
            .iter()
            .filter(|r| systems.contains(&r.system))
            .map(|r| r.report.total)
            .sum();
        let service = service(status, name);
        let counted: u64 = service.servers.iter().map(|s| s.connects).sum();
        eprintln!(
            "[connect] service {name}: {counted} connects counted by the kernel, {made} made by \
             the bench's clients; selected {:?}; servers {:?}",
            service.selected,
            service
                .servers
                .iter()
                .map(|s| format!(
                    "{} {:?} {} connects, dial {:?}",
                    s.address, s.state, s.connects, s.dial
                ))
                .collect::<Vec<_>>()
        );
        ensure!(
            counted >= made,
            "service {name}: the kernel counted {counted} connects, the clients made {made}"
        );
        for reason in ["reset", "timeout", "stalled"] {
            let labels = [("name", name), ("reason", reason)];
            let n = metric(metrics, "daas_lb_dial_failures_total", &labels).unwrap_or(0.0);
            if n > 0.0 {
                incidents.push(format!("{n} `{reason}` dials reported on `{name}`"));
            }
        }
        let labels = [("name", name), ("to", "failed")];
        let n = metric(metrics, "daas_lb_state_transitions_total", &labels).unwrap_or(0.0);
        if n > 0.0 {
            incidents.push(format!("a server of `{name}` went to `failed` {n} times"));
        }
    }
    Ok(if incidents.is_empty() {
        "\nNo dial failure reported, no server failed.\n".to_owned()
    } else {
        format!(
            "\n**During the bench:** {} (no client connect failed; see the longest connects \
             above). The service's traffic then goes to its other server for a while.\n",
            incidents.join("; ")
        )
    })
}

/// User + system CPU time of process `pid` so far (`/proc/PID/stat`).
fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command name, which is in parentheses and may
    // contain anything: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("{path}: no command name"))?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("{path}: field {} missing", i + 3))?
            .parse()
            .with_context(|| format!("{path}: field {}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) = {per_second}");
    let per_second = per_second.unsigned_abs() as u64;
    Ok(Duration::from_nanos(total * 1_000_000_000 / per_second))
}

fn micros(ns: u32) -> f64 {
    f64::from(ns) / 1000.0
}

/// One system at one concurrency, over all rounds.
struct Summary {
    /// Connects/s: the median, min and max of the rounds.
    rate: (f64, f64, f64),
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    daemon_us_per_connect: f64,
    proxy_us_per_connect: Option<f64>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        f64::midpoint(values[n / 2 - 1], values[n / 2])
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "connect counts stay far below 2^52"
)]
fn summarize(runs: &[&Run]) -> Option<Summary> {
    if runs.is_empty() {
        return None;
    }
    let mut rates: Vec<f64> = runs.iter().map(|r| r.report.rate()).collect();
    let rate = median(&mut rates);
    let (min, max) = (rates[0], rates[rates.len() - 1]);
    let mut latencies: Vec<u32> = runs
        .iter()
        .flat_map(|r| r.report.latencies_ns.iter().copied())
        .collect();
    latencies.sort_unstable();
    let total: u64 = runs.iter().map(|r| r.report.total).sum();
    let per_connect = |cpu: Duration| cpu.as_secs_f64() * 1e6 / total.max(1) as f64;
    let daemon: Duration = runs.iter().map(|r| r.daemon_cpu).sum();
    let proxy: Option<Duration> = runs.iter().map(|r| r.proxy_cpu).sum();
    Some(Summary {
        rate: (rate, min, max),
        p50_us: micros(percentile(&latencies, 50.0)),
        p99_us: micros(percentile(&latencies, 99.0)),
        max_us: micros(latencies.last().copied().unwrap_or(0)),
        daemon_us_per_connect: per_connect(daemon),
        proxy_us_per_connect: proxy.map(per_connect),
    })
}

fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(base) if base > 0.0 => format!("{:.3}×", value / base),
        _ => "–".to_owned(),
    }
}

fn tables(o: &Options, runs: &[Run], load: &(String, String)) -> String {
    let mut out = format!(
        "\n### Happy-path connects: new TCP connections through each system\n\n\
         One network namespace on loopback: two servers that answer each connection with one \
         byte, one daas-lb daemon with two VIPs over them (`dial_tracking` true and false), \
         HAProxy and a K3s-style proxy. A closed-loop client with N connects in flight, each a \
         new socket, connect, read the first byte, close (`SO_LINGER` 0); {:.1} s counted per \
         run after {:.1} s warm-up; {} rounds, systems rotated per round. connects/s = median of \
         the rounds (min–max); p50/p99/max = connect + first byte over all rounds' connects; \
         CPU = the process's user + system time per connect. {} CPUs, load average {} before, {} \
         after.\n",
        o.seconds.as_secs_f64(),
        WARMUP.as_secs_f64(),
        o.rounds,
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        load.0,
        load.1
    );
    for &concurrency in &o.concurrency {
        let summary = |system: System| {
            let of: Vec<&Run> = runs
                .iter()
                .filter(|r| r.system == system && r.concurrency == concurrency)
                .collect();
            summarize(&of)
        };
        let direct = summary(System::Direct);
        let _ = write!(
            out,
            "\n#### {concurrency} in flight\n\n\
             | system | connects/s | rounds min–max | vs direct | p50 µs | vs direct | p99 µs | \
             vs direct | max µs | daemon CPU µs/connect | proxy CPU µs/connect |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        );
        for &system in &o.systems {
            let Some(s) = summary(system) else { continue };
            let _ = writeln!(
                out,
                "| {} | {} | {}–{} | {} | {:.1} | {} | {:.1} | {} | {:.0} | {} | {} |",
                system.label(),
                thousands(s.rate.0),
                thousands(s.rate.1),
                thousands(s.rate.2),
                ratio(s.rate.0, direct.as_ref().map(|d| d.rate.0)),
                s.p50_us,
                ratio(s.p50_us, direct.as_ref().map(|d| d.p50_us)),
                s.p99_us,
                ratio(s.p99_us, direct.as_ref().map(|d| d.p99_us)),
                s.max_us,
                if system == System::Paused {
                    "(stopped)".to_owned()
                } else {
                    format!("{:.2}", s.daemon_us_per_connect)
                },
                s.proxy_us_per_connect
                    .map_or_else(|| "–".to_owned(), |us| format!("{us:.2}"))
            );
        }
        for (system, what) in [
            (System::Tracked, "tracked"),
            (System::Paused, "tracked with the daemon stopped"),
        ] {
            if let Some(line) = key_line(o, runs, concurrency, system, what) {
                out.push_str(&line);
            }
        }
    }
    out
}

/// `system` against `daas-lb-untracked` at `concurrency`: the ratio of the
/// median connects/s (and the range of the same rounds' ratios), of the
/// p50 and p99, and both daemons' CPU per connect; `None` without both.
fn key_line(
    o: &Options,
    runs: &[Run],
    concurrency: usize,
    system: System,
    what: &str,
) -> Option<String> {
    let of = |system: System| {
        let of: Vec<&Run> = runs
            .iter()
            .filter(|r| r.system == system && r.concurrency == concurrency)
            .collect();
        summarize(&of)
    };
    let (tracked, untracked) = (of(system)?, of(System::Untracked)?);
    // The same round's two runs, side by side.
    let mut paired: Vec<f64> = (0..o.rounds)
        .filter_map(|round| {
            let rate = |system| {
                runs.iter()
                    .find(|r| {
                        r.system == system && r.concurrency == concurrency && r.round == round
                    })
                    .map(|r| r.report.rate())
            };
            Some(rate(system)? / rate(System::Untracked)?)
        })
        .collect();
    paired.sort_by(f64::total_cmp);
    let cpu = if system == System::Paused {
        String::new()
    } else {
        format!(
            "; daemon CPU {:.2} vs {:.2} µs per connect",
            tracked.daemon_us_per_connect, untracked.daemon_us_per_connect
        )
    };
    Some(format!(
        "\n**{concurrency} in flight, {what} / untracked:** connects/s {:.3}× (per round \
         {:.3}–{:.3}×), p50 {:.3}×, p99 {:.3}×{cpu}.\n",
        tracked.rate.0 / untracked.rate.0,
        paired.first().copied().unwrap_or(0.0),
        paired.last().copied().unwrap_or(0.0),
        tracked.p50_us / untracked.p50_us,
        tracked.p99_us / untracked.p99_us,
    ))
}
