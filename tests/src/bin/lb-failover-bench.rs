//! What a dying server costs new clients, side by side: daas-lb (default
//! checks and `profile: k3s`), HAProxy and a K3s-style proxy, with the
//! client's direct connects to the surviving server as the floor.
//!
//! Each run has its own network namespace (only loopback, no route out):
//! two [`ByteServer`]s (`127.0.0.10:7000`, `127.0.0.11:7000`; each answers
//! a connection with one byte) behind the system under test, and a client
//! (`lb-test-client storm`) that starts RATE new TCP connects per second for
//! DURATION s, each waiting at most 10 s for its TCP connect and 15 s for
//! the server's byte (connect included: behind a proxy the connect succeeds
//! at once and the proxy's own 10 s dial timeout plays out while the client
//! waits for the byte). `--kill-after` (0.7 s) into the run, the server in use
//! dies: `rst` closes its listener (connects get a reset), `blackhole` drops
//! the SYNs to it (an iptables rule in the run's namespace). Systems:
//!
//! - `daas-lb`: `daas-lb run` with one `failover` service (VIP
//!   `127.0.0.1:6444`) over both servers, default health checks; its socket
//!   programs attach to a child cgroup the bench creates, and the client
//!   runs in it. The victim is the service's `selected` server.
//! - `daas-lb-k3s`: the same with `health_check: { profile: k3s }` (every
//!   interval 1 s).
//! - `haproxy`: Debian's HAProxy, TCP mode, `balance first` (servers in
//!   order, the first one dies), `check inter 1s`, `retries 3`, `option
//!   redispatch`, Debian's default timeouts (`timeout connect 5s`).
//! - `k3s-proxy`: `tests/k3s-proxy`, built with `go build`: per client it
//!   dials the servers in preference order (up, then recovering, then
//!   failed; list order within a state) with a 10 s dial timeout, marks a
//!   server failed on a dial error and dials the next one; a 1 s health loop.
//! - `direct`: the client connects straight to the surviving server.
//!
//! Columns, per (event, rate):
//!
//! - `failed`: connects that did not get the server's byte, of all started,
//!   with their kinds (`refused` = reset on connect, `reset`/`closed` = the
//!   proxy gave up on an accepted connection, `aborted` = the kernel aborted
//!   the connect, `timed out` = no connection within 10 s or no byte
//!   within 15 s).
//! - `longest wait`: the longest time any connect waited for its result,
//!   and how many waited at least 1 s.
//! - `last failure`: seconds from the death to the start of the last
//!   connect that failed (`–`: none failed): how long new connects still
//!   went wrong.
//!
//! Then, with daas-lb among the systems, the controller's reaction: see
//! [`measure_reaction`] (`--reaction-cycles`, default 100; 0 skips it).
//!
//! Needs root, haproxy and go (`apt-get install haproxy golang-go`);
//! `cargo xtask bench failover` builds the release binaries and runs it.
//! Prints the markdown table on stdout, progress on stderr.
//!
//! ```text
//! lb-failover-bench [--rates 100,1000] [--duration SECS (8)] [--events rst,blackhole]
//!                   [--systems daas-lb,daas-lb-k3s,haproxy,k3s-proxy,direct]
//!                   [--kill-after SECS (0.7)] [--reaction-cycles N (100)]
//! ```

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_tests::{
    API, Daemon, NetNs, PinDir, TempDir, TestCgroup, config_yaml,
    failover::{KillMode, Outcome, SLOW, Scenario, run_scenario},
    proxies::{
        HAPROXY_ADDR, K3S_PROXY_ADDR, Proxy, bind_bench_servers, haproxy_config, k3s_proxy_command,
        parse_systems, prepare_bench, wait_answered,
    },
    service,
};
use lb_userspace::policy::state_machine::ServerState;

/// daas-lb's VIP.
const VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6444);
/// The daas-lb service.
const SERVICE: &str = "failover";
/// How long one TCP connect may take (K3s's dial timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connect may wait for the server's byte, connect included.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    DaasLb,
    DaasLbK3s,
    Haproxy,
    K3sProxy,
    Direct,
}

impl System {
    const ALL: [Self; 5] = [
        Self::DaasLb,
        Self::DaasLbK3s,
        Self::Haproxy,
        Self::K3sProxy,
        Self::Direct,
    ];

    const fn name(self) -> &'static str {
        match self {
            Self::DaasLb => "daas-lb",
            Self::DaasLbK3s => "daas-lb-k3s",
            Self::Haproxy => "haproxy",
            Self::K3sProxy => "k3s-proxy",
            Self::Direct => "direct",
        }
    }

    const fn label(self) -> &'static str {
        match self {
            Self::DaasLb => "daas-lb, default checks",
            Self::DaasLbK3s => "daas-lb, `profile: k3s` (1 s)",
            Self::Haproxy => "HAProxy, `check inter 1s`, `option redispatch`",
            Self::K3sProxy => "K3s-style proxy (Go, 10 s dial timeout)",
            Self::Direct => "direct to the surviving server (floor)",
        }
    }
}

struct Options {
    rates: Vec<u32>,
    duration: Duration,
    events: Vec<KillMode>,
    systems: Vec<System>,
    kill_after: Duration,
    reaction_cycles: u32,
}

impl Options {
    fn parse() -> Result<Self> {
        let mut o = Self {
            rates: vec![100, 1000],
            duration: Duration::from_secs(8),
            events: KillMode::ALL.to_vec(),
            systems: System::ALL.to_vec(),
            kill_after: Duration::from_millis(700),
            reaction_cycles: 100,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let list = || value.split(',').filter(|s| !s.is_empty());
            let seconds = || -> Result<Duration> {
                let secs: f64 = value.parse().with_context(|| format!("{flag} {value}"))?;
                ensure!(
                    (0.0..=60.0).contains(&secs),
                    "{flag} {value}: 0 to 60 seconds"
                );
                Ok(Duration::from_secs_f64(secs))
            };
            match flag.as_str() {
                "--rates" => {
                    o.rates = list()
                        .map(|r| r.parse().with_context(|| format!("--rates: {r}")))
                        .collect::<Result<_>>()?;
                    ensure!(
                        o.rates.iter().all(|r| (1..=5000).contains(r)),
                        "--rates {value}: each 1 to 5000 connects per second"
                    );
                }
                "--duration" => o.duration = seconds()?,
                "--reaction-cycles" => {
                    o.reaction_cycles = value
                        .parse()
                        .with_context(|| format!("--reaction-cycles {value}"))?;
                    ensure!(
                        o.reaction_cycles <= 1000,
                        "--reaction-cycles {value}: at most 1000"
                    );
                }
                "--kill-after" => o.kill_after = seconds()?,
                "--events" => {
                    o.events = list()
                        .map(|e| e.parse().map_err(anyhow::Error::msg))
                        .collect::<Result<_>>()?;
                }
                "--systems" => o.systems = parse_systems(value, &System::ALL, System::name)?,
                other => bail!("unknown option {other}"),
            }
        }
        ensure!(
            o.kill_after < o.duration,
            "--kill-after must be shorter than --duration"
        );
        ensure!(
            !o.rates.is_empty() && !o.events.is_empty() && !o.systems.is_empty(),
            "--rates, --events and --systems need at least one value each"
        );
        Ok(o)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-failover-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let options = Options::parse()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "needs root (network namespaces, cgroups, BPF, iptables)"
    );
    let needs = |system| options.systems.contains(&system);
    // SAFETY: still single-threaded: nothing reads the environment concurrently.
    let k3s_proxy =
        unsafe { prepare_bench("failover", needs(System::Haproxy), needs(System::K3sProxy)) }?;

    let started = Instant::now();
    let mut results = Vec::new();
    for &kill in &options.events {
        for &rate in &options.rates {
            for &system in &options.systems {
                let scenario = Scenario {
                    target: VIP,
                    rate,
                    duration: options.duration,
                    connect_timeout: CONNECT_TIMEOUT,
                    answer_timeout: ANSWER_TIMEOUT,
                    kill_after: options.kill_after,
                    kill,
                };
                let run_started = Instant::now();
                let outcome = measure(system, scenario, k3s_proxy.as_deref())
                    .with_context(|| format!("{} {kill} {rate}/s", system.name()))?;
                eprintln!(
                    "[failover] {} {kill} {rate}/s: {} of {} failed ({}), longest wait {:.2}s, {} \
                     waited >= {}s, last failure {}, {} failed before the death; client: {:.0} \
                     connects/s, max lag {:.1} ms; {:.1}s",
                    system.name(),
                    outcome.failed(),
                    outcome.total,
                    outcome.failure_kinds(),
                    outcome.longest_wait.as_secs_f64(),
                    outcome.slow,
                    SLOW.as_secs(),
                    last_failure(&outcome),
                    outcome.failed_before_kill,
                    outcome.achieved_rate,
                    outcome.max_lag.as_secs_f64() * 1000.0,
                    run_started.elapsed().as_secs_f64()
                );
                results.push((system, kill, rate, outcome));
            }
        }
    }
    print!("{}", table(&options, &results));
    eprintln!(
        "[failover] {} runs in {:.1}s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    if options.reaction_cycles > 0 && needs(System::DaasLb) {
        let started = Instant::now();
        let reaction = measure_reaction(options.reaction_cycles)?;
        eprintln!(
            "[failover] reaction: {} cycles in {:.1}s",
            options.reaction_cycles,
            started.elapsed().as_secs_f64()
        );
        print!("{reaction}");
    }
    Ok(())
}

/// One run of `system` in a fresh network namespace.
fn measure(system: System, mut scenario: Scenario, k3s_proxy: Option<&Path>) -> Result<Outcome> {
    // Declared first, dropped last: everything below lives in it.
    let _ns = NetNs::new();
    let (mut servers, addrs) = bind_bench_servers()?;
    let tmp = TempDir::new();
    match system {
        System::DaasLb | System::DaasLbK3s => {
            let (pins, cgroup) = (PinDir::new(), TestCgroup::new());
            let check = (system == System::DaasLbK3s).then_some("{ profile: k3s }");
            let mut daemon = start_daas_lb(&tmp, &pins, &cgroup, &addrs, check);
            let status = daemon.wait_for(
                Duration::from_secs(20),
                "both servers preferred or active",
                |s| {
                    service(s, SERVICE).servers.iter().all(|srv| {
                        matches!(srv.state, ServerState::Preferred | ServerState::Active)
                    })
                },
            );
            let victim = selected_index(&status, &addrs)?;
            let outcome = run_scenario(&scenario, &mut servers, victim, Some(&cgroup))?;
            daemon.stop();
            Ok(outcome)
        }
        System::Haproxy => {
            let config = tmp.file(
                "haproxy.cfg",
                &haproxy_config(SERVICE, HAPROXY_ADDR, &addrs),
            );
            let log = tmp.path().join("haproxy.log");
            let mut command = Command::new("haproxy");
            command.arg("-db").arg("-f").arg(&config);
            let _proxy = Proxy::spawn(command, &log)?;
            scenario.target = HAPROXY_ADDR;
            wait_answered(HAPROXY_ADDR, &log)?;
            run_scenario(&scenario, &mut servers, 0, None)
        }
        System::K3sProxy => {
            let binary = k3s_proxy.context("k3s-proxy was not built")?;
            let log = tmp.path().join("k3s-proxy.log");
            let command = k3s_proxy_command(
                binary,
                K3S_PROXY_ADDR,
                &addrs,
                CONNECT_TIMEOUT,
                Duration::from_secs(1),
            );
            let _proxy = Proxy::spawn(command, &log)?;
            scenario.target = K3S_PROXY_ADDR;
            wait_answered(K3S_PROXY_ADDR, &log)?;
            run_scenario(&scenario, &mut servers, 0, None)
        }
        System::Direct => {
            scenario.target = addrs[1];
            run_scenario(&scenario, &mut servers, 0, None)
        }
    }
}

/// Which of `addrs` the daas-lb service selects.
fn selected_index(
    status: &lb_userspace::api::status::Status,
    addrs: &[SocketAddr],
) -> Result<usize> {
    let selected = service(status, SERVICE)
        .selected
        .clone()
        .context("daas-lb selected no server")?;
    addrs
        .iter()
        .position(|a| a.to_string() == selected)
        .with_context(|| format!("daas-lb selected {selected}, not one of {addrs:?}"))
}

/// Health checks for [`measure_reaction`]: a failed server is probed every
/// 100 ms, so it is back within a cycle; probes of the server in use are 30 s
/// apart, so only client dials fail it.
const REACTION_CHECK: &str = "{ kind: tcp, timeout: 100ms, jitter: 0%, intervals: { other: 100ms, \
                              recovering: 100ms, preferred: 30s, healthy: 30s, active: 30s, failed: 100ms } }";

/// How fast the controller follows a failed client dial: `cycles` times,
/// the selected server's listener closes, one client connect through the
/// VIP (from the cgroup) fails on it, and the listener reopens; the next
/// cycle starts once status shows both servers usable again. Reads
/// `daas_lb_dial_reaction_seconds` (from the kernel's event to the maps
/// rewritten) at the end and returns its summary as markdown.
fn measure_reaction(cycles: u32) -> Result<String> {
    let _ns = NetNs::new();
    let (mut servers, addrs) = bind_bench_servers()?;
    let tmp = TempDir::new();
    let (pins, cgroup) = (PinDir::new(), TestCgroup::new());
    let mut daemon = start_daas_lb(&tmp, &pins, &cgroup, &addrs, Some(REACTION_CHECK));
    let usable = |s: &lb_userspace::api::status::Status| {
        let service = service(s, SERVICE);
        service.selected.is_some()
            && service.servers.iter().all(|srv| {
                matches!(srv.state, ServerState::Preferred | ServerState::Active)
                    && srv.dial.as_ref().is_none_or(|d| d.state == "ok")
            })
    };
    daemon.wait_for(Duration::from_secs(20), "both servers usable", usable);
    let vip = VIP.to_string();
    let mut failed_connects = 0;
    for cycle in 0..cycles {
        let victim = selected_index(&daemon.status(), &addrs)?;
        servers[victim].close();
        // The first connect fails (reset); the ones after it go elsewhere.
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = cgroup.client(&["tcp", &vip, "ping"]);
            if outcome.error.is_some() {
                failed_connects += 1;
                break;
            }
            ensure!(
                tries < 20,
                "cycle {cycle}: 20 connects through the VIP succeeded after {} closed",
                addrs[victim]
            );
        }
        servers[victim].reopen()?;
        daemon.wait_for(Duration::from_secs(10), "both servers usable again", usable);
    }
    let text = daemon.metrics();
    let value =
        |name: &str, labels: &[(&str, &str)]| lb_tests::metric(&text, name, labels).unwrap_or(0.0);
    let count = value("daas_lb_dial_reaction_seconds_count", &[]);
    let sum = value("daas_lb_dial_reaction_seconds_sum", &[]);
    ensure!(
        count >= f64::from(cycles),
        "{count} reactions measured for {cycles} failed connects"
    );
    daemon.stop();
    let mut out = format!(
        "\n### Reaction: from a failed client dial in the kernel to the maps rewritten\n\n\
         {cycles} cycles (the selected server's listener closes, one client connect through the VIP \
         fails on it, the listener reopens, probes bring the server back), {failed_connects} failed \
         connects; `daas_lb_dial_reaction_seconds` of the daemon afterwards: {count:.0} \
         observations, mean {:.3} ms.\n\n| within | share |\n|---|---:|\n",
        sum / count * 1000.0
    );
    for le in ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.05"] {
        let within = value("daas_lb_dial_reaction_seconds_bucket", &[("le", le)]);
        let ms: f64 = le.parse::<f64>().unwrap_or(0.0) * 1000.0;
        let _ = writeln!(out, "| {ms} ms | {:.1} % |", within / count * 100.0);
    }
    Ok(out)
}

/// Starts `daas-lb run` with one failover service over `servers`;
/// `check` is the `health_check` block (`None`: the defaults).
fn start_daas_lb(
    tmp: &TempDir,
    pins: &PinDir,
    cgroup: &TestCgroup,
    servers: &[SocketAddr],
    check: Option<&str>,
) -> Daemon {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let mut services = format!(
        "  - name: {SERVICE}\n    vip: \"{VIP}\"\n    protocol: tcp\n    policy: failover\n    \
         servers: [{}]\n",
        list.join(", ")
    );
    if let Some(check) = check {
        let _ = writeln!(services, "    health_check: {check}");
    }
    let yaml = config_yaml(pins, cgroup, &tmp.path().join("data"), &services);
    let config = tmp.file("config.yaml", &yaml);
    Daemon::spawn(
        &["--config", &config.display().to_string()],
        tmp.path(),
        API,
    )
}

fn last_failure(outcome: &Outcome) -> String {
    outcome
        .last_failure
        .map_or_else(|| "–".to_owned(), |t| format!("{t:+.2} s"))
}

fn table(o: &Options, results: &[(System, KillMode, u32, Outcome)]) -> String {
    let mut out = format!(
        "\n### Failover: new connects while the server in use dies\n\n\
         Per run, a fresh network namespace: two servers on loopback behind the system; a client \
         starts RATE new TCP connects per second for {:.0} s, each waiting at most {} s for its TCP \
         connect and {} s for the server's first byte (connect included). {:.1} s into the run the server in use dies: \
         `rst` closes its listener (connects get a reset), `blackhole` drops SYNs to it \
         (iptables). failed = connects without the byte, of all; longest wait = the longest any \
         connect waited (in brackets: how many waited ≥ {} s); last failure = seconds from the \
         death to the start of the last failed connect. {} CPUs.\n\n| system |",
        o.duration.as_secs_f64(),
        CONNECT_TIMEOUT.as_secs(),
        ANSWER_TIMEOUT.as_secs(),
        o.kill_after.as_secs_f64(),
        SLOW.as_secs(),
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );
    let mut rule = String::from("|---|");
    for kill in &o.events {
        for rate in &o.rates {
            let _ = write!(
                out,
                " {kill} {rate}/s failed | {kill} {rate}/s longest wait | {kill} {rate}/s last failure |"
            );
            rule.push_str("---:|---:|---:|");
        }
    }
    let _ = writeln!(out, "\n{rule}");
    for system in &o.systems {
        let _ = write!(out, "| {} |", system.label());
        for &kill in &o.events {
            for &rate in &o.rates {
                let Some((.., outcome)) = results
                    .iter()
                    .find(|(s, k, r, _)| s == system && *k == kill && *r == rate)
                else {
                    out.push_str(" – | – | – |");
                    continue;
                };
                let kinds = outcome.failure_kinds();
                let failed = if kinds.is_empty() {
                    format!("{} of {}", outcome.failed(), outcome.total)
                } else {
                    format!("{} of {} ({kinds})", outcome.failed(), outcome.total)
                };
                let _ = write!(
                    out,
                    " {failed} | {:.2} s ({}) | {} |",
                    outcome.longest_wait.as_secs_f64(),
                    outcome.slow,
                    last_failure(outcome)
                );
            }
        }
        out.push('\n');
    }
    out
}
