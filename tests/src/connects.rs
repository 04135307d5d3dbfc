//! Happy-path connects: a closed-loop client that opens new TCP
//! connections as fast as it can, for `cargo xtask bench connect`
//! (`lb-connect-bench`).
//!
//! - [`connect_loop`]: the client (run by `lb-test-client connects`, inside
//!   a test cgroup or not): `concurrency` threads, each in a loop of one
//!   [`connect_once`] after the other (new socket, connect, read the
//!   server's first byte, close), for a warm-up and then a measured
//!   window; it returns a [`LoopReport`] with every measured latency.
//! - [`run_loop`]: starts that client as a child process and reads its
//!   report.
//! - [`percentile`]: nearest-rank percentiles of the latencies.
//!
//! Invariants: every socket is closed with `SO_LINGER` 0, so the close is a
//! reset and neither end keeps a `TIME_WAIT` entry: at tens of thousands of
//! connects per second from one client address to one server address the
//! ephemeral ports are never used up. Every loop is bounded: a connect and
//! a read each give up after [`IO_TIMEOUT`] (`SO_SNDTIMEO` bounds a
//! blocking connect), a thread stops starting connects at the end of the
//! window and after [`MAX_PER_THREAD`] of them, and [`run_loop`] kills a
//! client that outlives its window by more than the timeouts plus slack
//! (the client is killed on drop, too). Only connects that *started*
//! inside the measured window count; connects/s is their number over the
//! window as the threads saw it end.

use std::{
    io::{self, Read as _},
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::env::{KillOnDrop, TestCgroup, client_bin};

/// How long a client runs before its window starts (not counted): thread
/// start-up, first page faults, caches.
pub const WARMUP: Duration = Duration::from_millis(200);

/// How long one connect, and then one read, may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// At most this many connects per thread and run (bounds the memory of the
/// latencies, ~16 MB per thread).
pub const MAX_PER_THREAD: usize = 4_000_000;

/// How long [`run_loop`] waits beyond the client's warm-up, window and
/// timeouts.
const CLIENT_SLACK: Duration = Duration::from_secs(10);

/// What one run of [`connect_loop`] measured (one JSON object on
/// `lb-test-client connects`'s stdout).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoopReport {
    /// Connects that got the server's byte and started in the window.
    pub connects: u64,
    /// Connects that failed (connect, read, or no byte), warm-up included.
    pub errors: u64,
    /// The first failure's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Every connect of the run, warm-up and failures included.
    pub total: u64,
    /// From the window's start to the end of its last connect (over all
    /// threads), ns.
    pub window_ns: u64,
    /// Each counted connect's time from `socket()` to the byte read, ns.
    pub latencies_ns: Vec<u32>,
}

impl LoopReport {
    /// Counted connects per second of window.
    #[expect(
        clippy::cast_precision_loss,
        reason = "connect counts stay far below 2^52"
    )]
    pub fn rate(&self) -> f64 {
        if self.window_ns == 0 {
            return 0.0;
        }
        self.connects as f64 / Duration::from_nanos(self.window_ns).as_secs_f64()
    }
}

/// One connect: a new TCP socket (`SO_LINGER` 0, both timeouts
/// [`IO_TIMEOUT`]), a blocking connect to `target`, one read that must
/// return the server's byte, and the close (a reset, see the module
/// documentation).
pub fn connect_once(target: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_linger(Some(Duration::ZERO))?;
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.connect(&target.into())?;
    let mut byte = [0u8; 1];
    match (&socket).read(&mut byte)? {
        1 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before the first byte",
        )),
    }
}

/// What one thread of [`connect_loop`] saw.
struct ThreadReport {
    latencies_ns: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    total: u64,
    last_end: Instant,
}

/// The client: `concurrency` threads connect to `target` one connect after
/// the other for `warmup`, then for `window` (counted).
pub fn connect_loop(
    target: SocketAddr,
    concurrency: usize,
    warmup: Duration,
    window: Duration,
) -> Result<LoopReport> {
    ensure!(concurrency > 0, "a concurrency of 0");
    let start = Instant::now();
    let window_start = start + warmup;
    let end = window_start + window;
    let threads: Vec<ThreadReport> = thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|i| {
                thread::Builder::new()
                    .name(format!("connects {i}"))
                    .spawn_scoped(scope, move || connect_thread(target, window_start, end))
                    .context("spawning a client thread")
            })
            .collect::<Result<_>>()?;
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a client thread panicked"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut report = LoopReport::default();
    let mut last_end = window_start;
    for t in threads {
        report.connects += t.latencies_ns.len() as u64;
        report.latencies_ns.extend(t.latencies_ns);
        report.errors += t.errors;
        report.total += t.total;
        if report.first_error.is_none() {
            report.first_error = t.first_error;
        }
        last_end = last_end.max(t.last_end);
    }
    report.window_ns = u64::try_from((last_end - window_start).as_nanos()).unwrap_or(u64::MAX);
    Ok(report)
}

fn connect_thread(target: SocketAddr, window_start: Instant, end: Instant) -> ThreadReport {
    let mut report = ThreadReport {
        latencies_ns: Vec::new(),
        errors: 0,
        first_error: None,
        total: 0,
        last_end: window_start,
    };
    for _ in 0..MAX_PER_THREAD {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let result = connect_once(target);
        let ended = Instant::now();
        report.total += 1;
        report.last_end = ended;
        match result {
            Ok(()) if started >= window_start => {
                let ns = (ended - started).as_nanos();
                report
                    .latencies_ns
                    .push(u32::try_from(ns).unwrap_or(u32::MAX));
            }
            Ok(()) => {}
            Err(e) => {
                report.errors += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("{target}: {e}"));
                // No busy loop against a refusing target.
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    report
}

/// Runs `lb-test-client connects` (in `cgroup` when given, so the cgroup's
/// socket programs see it) against `target` with `concurrency` threads for
/// [`WARMUP`] plus `window`; returns its report.
pub fn run_loop(
    target: SocketAddr,
    concurrency: usize,
    window: Duration,
    cgroup: Option<&TestCgroup>,
) -> Result<LoopReport> {
    let mut command = Command::new(client_bin());
    command
        .arg("connects")
        .arg(target.to_string())
        .arg(concurrency.to_string())
        .arg(WARMUP.as_millis().to_string())
        .arg(window.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut client = KillOnDrop::spawn(&mut command, cgroup)?;
    let mut stdout = client.0.stdout.take().context("the client's stdout")?;
    let reader = thread::spawn(move || -> Result<LoopReport> {
        let mut text = String::new();
        stdout
            .read_to_string(&mut text)
            .context("reading the client's stdout")?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "the client printed {:?}",
                text.chars().take(200).collect::<String>()
            )
        })
    });
    let deadline = Instant::now() + WARMUP + window + 2 * IO_TIMEOUT + CLIENT_SLACK;
    let status = loop {
        if let Some(status) = client.0.try_wait().context("waiting for the client")? {
            break status;
        }
        if Instant::now() >= deadline {
            bail!(
                "the client ({concurrency} threads to {target}) still runs {:?} after its window",
                2 * IO_TIMEOUT + CLIENT_SLACK
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    ensure!(
        status.success(),
        "the client ({concurrency} threads to {target}) failed: {status}"
    );
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the client's reader thread panicked"))?
}

/// The `p`-th percentile (0 < `p` ≤ 100, nearest rank) of `sorted`
/// (ascending); the default (0) when it is empty.
#[expect(
    clippy::cast_precision_loss,
    reason = "sample counts stay far below 2^52"
)]
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&[7], 1.0), 7);
        assert_eq!(percentile::<u32>(&[], 50.0), 0);
    }

    #[test]
    fn the_rate_counts_connects_over_the_window() {
        let report = LoopReport {
            connects: 3000,
            window_ns: 1_500_000_000,
            ..LoopReport::default()
        };
        assert!((report.rate() - 2000.0).abs() < 1e-9);
        assert!(LoopReport::default().rate().abs() < f64::EPSILON);
    }
}
