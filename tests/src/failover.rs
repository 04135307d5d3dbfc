//! Failover under load: what new clients see while the server in use dies.
//!
//! The pieces of one run, reusable by benchmarks and integration tests:
//!
//! - [`ByteServer`]: a real TCP listener on a thread that accepts every
//!   connection, writes one byte and closes; [`ByteServer::close`] closes
//!   the listener, so connects to it get a reset from then on.
//! - [`Blackhole`]: an iptables (ip6tables) rule that drops the SYNs to one
//!   address, tagged with a comment unique to this process and call, deleted
//!   on drop (also while unwinding from a panic).
//! - [`storm`]: the client loop (run by `lb-test-client storm` inside a test
//!   cgroup): `rate` new TCP connects per second from one timer, each a task
//!   of its own (thousands may be in flight), each bounded by a connect
//!   timeout and by an answer timeout that covers the connect and the
//!   server's byte. Every connect's outcome is a [`Connect`].
//! - [`run_scenario`]: starts that client, kills the victim server
//!   ([`KillMode`]) `kill_after` into the run, waits for the client and
//!   sums its connects up into an [`Outcome`].
//!
//! Invariants: both processes read `CLOCK_MONOTONIC` ([`monotonic_ns`]), so
//! the client's connect times and the moment of the kill share one clock. A
//! connect counts as `ok` only when the server's byte arrived: through a
//! proxy, a connect to the proxy itself always succeeds, and a failure shows
//! as the proxy closing the connection (or as no byte: the answer timeout
//! is longer than the connect timeout so that a proxy's own dial timeout
//! and its retry on the next server can play out behind a connect that
//! succeeded at once). Every run is bounded: the client stops starting
//! connects after `duration`, each connect gives up after its answer
//! timeout, and [`run_scenario`] kills a client that outlives both (plus
//! slack); the client process is killed on drop.

use std::{
    fmt,
    io::{self, BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use serde::{Deserialize, Serialize};

use crate::env::{KillOnDrop, TestCgroup, client_bin, unique};

/// Connects that waited at least this long for their answer count as slow
/// in [`Outcome::slow`].
pub const SLOW: Duration = Duration::from_secs(1);

/// How often a [`ByteServer`]'s thread looks at its stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the client and the driver
/// share (across processes, unlike [`Instant`]).
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    assert_eq!(rc, 0, "clock_gettime: {}", io::Error::last_os_error());
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A TCP server that answers every connection with one byte (`!`) and
/// closes it. The listener's backlog is raised to 4096 so that a burst of
/// connects is not dropped before the thread accepts it.
pub struct ByteServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl ByteServer {
    /// Listens on `addr` (port 0: any free port).
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("binding a server on {addr}"))?;
        let addr = listener.local_addr().context("local address of a server")?;
        // SAFETY: `listener` is a bound, listening TCP socket that outlives
        // the call; listen(2) on it again only changes its backlog.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), 4096) };
        ensure!(
            rc == 0,
            "listen({addr}, 4096): {}",
            io::Error::last_os_error()
        );
        listener
            .set_nonblocking(true)
            .with_context(|| format!("nonblocking listener on {addr}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&served));
        let thread = thread::Builder::new()
            .name(format!("server {addr}"))
            .spawn(move || serve(&listener, &flag, &count))
            .with_context(|| format!("spawning the thread of server {addr}"))?;
        Ok(Self {
            addr,
            stop,
            served,
            thread: Some(thread),
        })
    }

    /// Listens again on the same address after [`ByteServer::close`]
    /// (a no-op while it listens); the count of answered connections goes on.
    pub fn reopen(&mut self) -> Result<()> {
        if self.is_open() {
            return Ok(());
        }
        let served = self.served();
        *self = Self::bind(self.addr)?;
        self.served.store(served, Ordering::SeqCst);
        Ok(())
    }

    /// Connections it answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// Closes the listening socket; when this returns, connects to
    /// [`ByteServer::addr`] are refused (reset). Connections still in its
    /// accept queue are reset too.
    pub fn close(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
    }

    /// Whether it still listens.
    pub fn is_open(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for ByteServer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The accept loop: answer every connection with one byte, until `stop`.
fn serve(listener: &TcpListener, stop: &AtomicBool, served: &AtomicU64) {
    while !stop.load(Ordering::SeqCst) {
        let mut fd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `fd` is one live pollfd for a socket that outlives the call.
        let rc = unsafe { libc::poll(&raw mut fd, 1, ACCEPT_POLL.as_millis() as libc::c_int) };
        if rc <= 0 {
            continue;
        }
        // Drain the accept queue; accepted sockets are blocking (accept4
        // does not inherit O_NONBLOCK), and one byte never blocks.
        while let Ok((stream, _)) = listener.accept() {
            answer(&stream);
            served.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn answer(mut stream: &TcpStream) {
    use std::io::Write as _;
    let _ = stream.write_all(b"!");
}

/// How the victim server dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMode {
    /// Its listener is closed: connects get a reset (`ECONNREFUSED`).
    Rst,
    /// SYNs to it are dropped ([`Blackhole`]): connects hang.
    Blackhole,
}

impl KillMode {
    /// Both modes, in table order.
    pub const ALL: [Self; 2] = [Self::Rst, Self::Blackhole];

    /// Its name on the command line and in tables.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rst => "rst",
            Self::Blackhole => "blackhole",
        }
    }
}

impl fmt::Display for KillMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KillMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.name() == s)
            .ok_or_else(|| format!("unknown kill mode {s:?} (rst or blackhole)"))
    }
}

/// An iptables rule (in the caller's network namespace) that drops TCP SYNs
/// to one address; deleted on drop. Its comment is unique to this process
/// and call, so deleting it never touches another rule.
pub struct Blackhole {
    program: &'static str,
    spec: Vec<String>,
}

impl Blackhole {
    /// Drops SYNs to `addr` from now on (`iptables -I INPUT`, `ip6tables`
    /// for IPv6; loopback traffic passes INPUT too).
    pub fn add(addr: SocketAddr) -> Result<Self> {
        let program = if addr.is_ipv4() {
            "iptables"
        } else {
            "ip6tables"
        };
        let spec: Vec<String> = [
            "INPUT",
            "-p",
            "tcp",
            "-d",
            &addr.ip().to_string(),
            "--dport",
            &addr.port().to_string(),
            "--syn",
            "-m",
            "comment",
            "--comment",
            &unique("daas-lb-failover-blackhole"),
            "-j",
            "DROP",
        ]
        .map(str::to_owned)
        .into();
        iptables(program, "-I", &spec)
            .with_context(|| format!("dropping SYNs to {addr} with {program}"))?;
        Ok(Self { program, spec })
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        if let Err(e) = iptables(self.program, "-D", &self.spec) {
            eprintln!("removing the blackhole rule: {e:#}");
        }
    }
}

/// `PROGRAM -w ACTION SPEC...` (`-w`: wait for the xtables lock).
fn iptables(program: &str, action: &str, spec: &[String]) -> Result<()> {
    let output = Command::new(program)
        .arg("-w")
        .arg(action)
        .args(spec)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        output.status.success(),
        "{program} {action} {}: {}: {}",
        spec.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// What one connect of the client ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectResult {
    /// Connected and the server's byte arrived.
    Ok,
    /// `ECONNREFUSED`: the connect got a reset.
    Refused,
    /// `ECONNRESET`: reset after the connection was made (a proxy that gave up).
    Reset,
    /// `ECONNABORTED`: the kernel aborted it (e.g. `SOCK_DESTROY`).
    Aborted,
    /// An orderly close before the byte (a proxy that gave up).
    Closed,
    /// No connection within the connect timeout, or no byte within the
    /// answer timeout (or the kernel's `ETIMEDOUT`).
    TimedOut,
    /// Any other error (see [`Connect::errno`]).
    Other,
}

impl ConnectResult {
    /// Every kind, in table order.
    pub const ALL: [Self; 7] = [
        Self::Ok,
        Self::Refused,
        Self::Reset,
        Self::Aborted,
        Self::Closed,
        Self::TimedOut,
        Self::Other,
    ];

    /// Its name in tables.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Aborted => "aborted",
            Self::Closed => "closed",
            Self::TimedOut => "timed out",
            Self::Other => "other",
        }
    }
}

/// One connect of [`storm`], as `lb-test-client storm` prints it (one JSON
/// object a line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connect {
    /// When the schedule wanted it started ([`monotonic_ns`]).
    pub due_ns: u64,
    /// When it was started ([`monotonic_ns`]).
    pub start_ns: u64,
    /// From its start to its result (the byte, an error or the timeout).
    pub wait_us: u64,
    /// How it ended.
    pub result: ConnectResult,
    /// The errno of [`ConnectResult::Other`] (and of the named errors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
}

/// What the client of one run does.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Where it connects (a VIP, a proxy, or a server).
    pub target: SocketAddr,
    /// New connects per second.
    pub rate: u32,
    /// How long it starts new connects.
    pub duration: Duration,
    /// How long the TCP connect itself may take.
    pub connect_timeout: Duration,
    /// How long one connect may wait for the server's byte, its TCP
    /// connect included (at least `connect_timeout`).
    pub answer_timeout: Duration,
    /// When, after the client's first connect, the victim dies.
    pub kill_after: Duration,
    /// How the victim dies.
    pub kill: KillMode,
}

impl Scenario {
    /// How many connects the client starts.
    pub fn connects(&self) -> u64 {
        (u128::from(self.rate) * self.duration.as_millis() / 1000) as u64
    }
}

/// A run summed up.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Connects started.
    pub total: usize,
    /// Per [`ConnectResult`], how many connects ended so (same order as
    /// [`ConnectResult::ALL`]).
    pub by_result: [usize; 7],
    /// The longest wait of any connect, failed or not.
    pub longest_wait: Duration,
    /// Connects that waited at least [`SLOW`] (failed or not).
    pub slow: usize,
    /// Seconds from the death to the start of the last failed connect
    /// (negative if it started before the death, e.g. one in flight that
    /// the death reset); `None` without failures.
    pub last_failure: Option<f64>,
    /// Failed connects that were started before the death.
    pub failed_before_kill: usize,
    /// The client's worst lateness against its schedule: above a few
    /// milliseconds, the client (or the machine) limited the rate.
    pub max_lag: Duration,
    /// Connects started per second, first to last.
    pub achieved_rate: f64,
}

impl Outcome {
    /// Sums `connects` up; `kill_ns` is when the victim died ([`monotonic_ns`]).
    pub fn summarize(connects: &[Connect], kill_ns: u64) -> Self {
        let mut outcome = Self {
            total: connects.len(),
            ..Self::default()
        };
        for c in connects {
            let index = ConnectResult::ALL
                .iter()
                .position(|&r| r == c.result)
                .unwrap_or_default();
            outcome.by_result[index] += 1;
            let wait = Duration::from_micros(c.wait_us);
            outcome.longest_wait = outcome.longest_wait.max(wait);
            if wait >= SLOW {
                outcome.slow += 1;
            }
            outcome.max_lag = outcome
                .max_lag
                .max(Duration::from_nanos(c.start_ns.saturating_sub(c.due_ns)));
            if c.result != ConnectResult::Ok {
                let after = signed_seconds(c.start_ns, kill_ns);
                if after < 0.0 {
                    outcome.failed_before_kill += 1;
                }
                outcome.last_failure = Some(outcome.last_failure.map_or(after, |t| t.max(after)));
            }
        }
        let first = connects.iter().map(|c| c.start_ns).min().unwrap_or(0);
        let last = connects.iter().map(|c| c.start_ns).max().unwrap_or(0);
        if last > first {
            let intervals = u32::try_from(connects.len() - 1).unwrap_or(u32::MAX);
            outcome.achieved_rate =
                f64::from(intervals) / Duration::from_nanos(last - first).as_secs_f64();
        }
        outcome
    }

    /// Connects that ended as `result`.
    pub fn count(&self, result: ConnectResult) -> usize {
        ConnectResult::ALL
            .iter()
            .position(|&r| r == result)
            .map_or(0, |i| self.by_result[i])
    }

    /// Connects that did not end `ok`.
    pub fn failed(&self) -> usize {
        self.total - self.count(ConnectResult::Ok)
    }

    /// The failed connects by kind, e.g. `731 refused, 2 reset` (empty
    /// without failures).
    pub fn failure_kinds(&self) -> String {
        ConnectResult::ALL[1..]
            .iter()
            .filter(|&&r| self.count(r) > 0)
            .map(|&r| format!("{} {}", self.count(r), r.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `a - b` in seconds (negative when `a` is earlier).
fn signed_seconds(a: u64, b: u64) -> f64 {
    if a >= b {
        Duration::from_nanos(a - b).as_secs_f64()
    } else {
        -Duration::from_nanos(b - a).as_secs_f64()
    }
}

/// How long the client may take beyond its duration and answer timeout.
const CLIENT_SLACK: Duration = Duration::from_secs(10);
/// When the client's first connect is due after it is spawned (its exec
/// and runtime start-up happen before).
const CLIENT_LEAD: Duration = Duration::from_millis(300);

/// A running `lb-test-client storm` ([`StormClient::start`]); killed on drop.
pub struct StormClient {
    client: KillOnDrop,
    reader: JoinHandle<Result<Vec<Connect>>>,
    scenario: Scenario,
    start_ns: u64,
}

impl StormClient {
    /// Starts the client of `scenario` (in `cgroup` when given, so the
    /// cgroup's socket programs see it); its first connect is due at
    /// [`StormClient::start_ns`].
    pub fn start(scenario: &Scenario, cgroup: Option<&TestCgroup>) -> Result<Self> {
        ensure!(scenario.rate > 0, "a rate of 0 connects per second");
        let start_ns = monotonic_ns() + CLIENT_LEAD.as_nanos() as u64;
        let mut command = Command::new(client_bin());
        command
            .arg("storm")
            .arg(scenario.target.to_string())
            .arg(scenario.rate.to_string())
            .arg(scenario.duration.as_millis().to_string())
            .arg(scenario.connect_timeout.as_millis().to_string())
            .arg(scenario.answer_timeout.as_millis().to_string())
            .arg(start_ns.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut client = KillOnDrop::spawn(&mut command, cgroup)?;
        let stdout = client.0.stdout.take().context("the client's stdout")?;
        let reader = thread::spawn(move || -> Result<Vec<Connect>> {
            let mut connects = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.context("reading the client's stdout")?;
                connects.push(
                    serde_json::from_str(&line)
                        .with_context(|| format!("the client printed {line:?}"))?,
                );
            }
            Ok(connects)
        });
        Ok(Self {
            client,
            reader,
            scenario: *scenario,
            start_ns,
        })
    }

    /// When its first connect is due ([`monotonic_ns`]).
    pub const fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// Waits for the client to end (bounded: its duration, the longer
    /// timeout and some slack from its start) and returns every connect, in
    /// the order they were reported.
    pub fn finish(mut self) -> Result<Vec<Connect>> {
        let scenario = self.scenario;
        let deadline_ns = self.start_ns
            + (scenario.duration
                + scenario.answer_timeout.max(scenario.connect_timeout)
                + CLIENT_SLACK)
                .as_nanos() as u64;
        let status = loop {
            if let Some(status) = self.client.0.try_wait().context("waiting for the client")? {
                break status;
            }
            ensure!(
                monotonic_ns() < deadline_ns,
                "the client ({} connects/s to {}) still runs past its deadline",
                scenario.rate,
                scenario.target
            );
            thread::sleep(Duration::from_millis(50));
        };
        ensure!(
            status.success(),
            "the client ({} connects/s to {}) failed: {status}",
            scenario.rate,
            scenario.target
        );
        let connects = self
            .reader
            .join()
            .map_err(|_| anyhow::anyhow!("the client's reader thread panicked"))??;
        ensure!(
            connects.len() as u64 == scenario.connects(),
            "the client reported {} connects, expected {}",
            connects.len(),
            scenario.connects()
        );
        Ok(connects)
    }
}

/// Runs `scenario`: `lb-test-client storm` (in `cgroup` when given, so the
/// cgroup's socket programs see it) connects to `scenario.target`;
/// `scenario.kill_after` after its first connect, `servers[victim]` dies.
/// Returns the summed-up connects; the [`Blackhole`] rule, if any, is gone
/// when this returns.
pub fn run_scenario(
    scenario: &Scenario,
    servers: &mut [ByteServer],
    victim: usize,
    cgroup: Option<&TestCgroup>,
) -> Result<Outcome> {
    ensure!(
        victim < servers.len(),
        "victim {victim} out of {} servers",
        servers.len()
    );
    let client = StormClient::start(scenario, cgroup)?;
    sleep_until_ns(client.start_ns() + scenario.kill_after.as_nanos() as u64);
    let victim_addr = servers[victim].addr;
    let _blackhole = match scenario.kill {
        KillMode::Rst => {
            servers[victim].close();
            None
        }
        KillMode::Blackhole => Some(Blackhole::add(victim_addr)?),
    };
    let kill_ns = monotonic_ns();
    let connects = client.finish()?;
    Ok(Outcome::summarize(&connects, kill_ns))
}

/// Sleeps until `at_ns` ([`monotonic_ns`]).
pub fn sleep_until_ns(at_ns: u64) {
    let now = monotonic_ns();
    if at_ns > now {
        thread::sleep(Duration::from_nanos(at_ns - now));
    }
}

/// The client loop of `lb-test-client storm`: from `start_ns`
/// ([`monotonic_ns`]) on, starts `scenario.rate` connects per second to
/// `scenario.target` for `scenario.duration`, each bounded by the
/// scenario's connect and answer timeouts; returns every connect once all
/// have ended. Raises its open-files limit first (thousands of connects may
/// hang at once).
pub fn storm(scenario: &Scenario, start_ns: u64) -> Result<Vec<Connect>> {
    let Scenario {
        target,
        rate,
        connect_timeout,
        answer_timeout,
        ..
    } = *scenario;
    ensure!(rate > 0, "a rate of 0 connects per second");
    raise_open_files(1 << 16);
    let count = scenario.connects();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the client's tokio runtime")?;
    runtime.block_on(async move {
        let period_ns = 1_000_000_000 / u64::from(rate);
        let first = tokio::time::Instant::now()
            + Duration::from_nanos(start_ns.saturating_sub(monotonic_ns()));
        let mut ticks = tokio::time::interval_at(first, Duration::from_nanos(period_ns));
        // A late tick is made up at once: the count stays exact and
        // `Connect::due_ns` shows the lateness.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::with_capacity(count as usize);
        for i in 0..count {
            ticks.tick().await;
            let due_ns = start_ns + i * period_ns;
            tasks.push(tokio::spawn(connect_once(
                target,
                connect_timeout,
                answer_timeout,
                due_ns,
            )));
        }
        let mut connects = Vec::with_capacity(tasks.len());
        for task in tasks {
            connects.push(task.await.context("a connect task failed")?);
        }
        Ok(connects)
    })
}

/// One connect: connect within `connect_timeout`, then read the server's
/// byte, all within `answer_timeout`.
async fn connect_once(
    target: SocketAddr,
    connect_timeout: Duration,
    answer_timeout: Duration,
    due_ns: u64,
) -> Connect {
    use tokio::io::AsyncReadExt as _;
    let start_ns = monotonic_ns();
    let started = Instant::now();
    let attempt = tokio::time::timeout(answer_timeout, async {
        let connect = tokio::net::TcpStream::connect(target);
        let Ok(connected) = tokio::time::timeout(connect_timeout, connect).await else {
            return Err(io::ErrorKind::TimedOut.into());
        };
        let mut stream = connected?;
        let mut byte = [0u8; 1];
        stream.read(&mut byte).await
    })
    .await;
    let wait_us = started.elapsed().as_micros() as u64;
    let (result, errno) = match attempt {
        Err(_elapsed) => (ConnectResult::TimedOut, None),
        Ok(Ok(0)) => (ConnectResult::Closed, None),
        Ok(Ok(_)) => (ConnectResult::Ok, None),
        Ok(Err(e)) => {
            let result = match e.kind() {
                io::ErrorKind::ConnectionRefused => ConnectResult::Refused,
                io::ErrorKind::ConnectionReset => ConnectResult::Reset,
                io::ErrorKind::ConnectionAborted => ConnectResult::Aborted,
                io::ErrorKind::TimedOut => ConnectResult::TimedOut,
                _ => ConnectResult::Other,
            };
            (result, e.raw_os_error())
        }
    };
    Connect {
        due_ns,
        start_ns,
        wait_us,
        result,
        errno,
    }
}

/// Raises this process's `RLIMIT_NOFILE` to `want` (as root), or at least
/// its soft limit to its hard one.
fn raise_open_files(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: want.max(limit.rlim_cur),
        rlim_max: want.max(limit.rlim_max),
    };
    // SAFETY: `raised` is a valid rlimit; a refusal (not root) leaves the limit as it was.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
        return;
    }
    let soft = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above; raising the soft limit up to the hard one is always allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const soft) };
}
