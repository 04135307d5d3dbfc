//! What following the Sui registry costs on a busy chain: the bytes and
//! messages the full node sends, the discovery task's CPU and the latency
//! from a registry event to the view, with the filtered stream
//! (`SubscribeEvents`, the default) next to the checkpoint stream (today's
//! fallback, and the behaviour before filtered streams: the baseline).
//!
//! Everything runs in this process on loopback, no root needed: a fake Sui
//! full node appends `--rate` checkpoints a second, each with `--noise`
//! foreign events (another package, 160 bytes of contents each), and a
//! registry event every 2 s; the discovery task runs alone on its own
//! thread (a current-thread runtime), whose CPU time is read with
//! `pthread_getcpuclockid`. Bytes are what the fake encoded (protobuf plus
//! the 5-byte gRPC frame header; HTTP/2 framing not counted). `cargo xtask
//! bench chain` runs it from a release build; prints a markdown table on
//! stdout, progress on stderr.
//!
//! ```text
//! lb-chain-bench [--duration SECONDS (30)] [--noise EVENTS (2000)] [--rate CHECKPOINTS_PER_S (4)]
//! ```

use std::{
    fmt::Write as _,
    process::ExitCode,
    sync::{Arc, atomic::Ordering, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use lb_tests::connects::percentile;
use lb_userspace::{
    chain::{
        discovery::{Discovery, DiscoverySettings, DiscoveryStats},
        registry::Node,
        view::RegistryView,
    },
    demo::fake_node::FakeChain,
};
use sui_sdk_types::Address;
use tokio::sync::{oneshot, watch};

const USAGE: &str =
    "usage: lb-chain-bench [--duration 1..=3600] [--noise 0..=100000] [--rate 1..=100]";

/// A registry event every this long.
const EVENT_EVERY: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let (mut duration, mut noise, mut rate) = (30u64, 2000usize, 4u64);
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse::<u64>().ok());
        match (pair[0].as_str(), value) {
            ("--duration", Some(v)) if (1..=3600).contains(&v) => duration = v,
            ("--noise", Some(v)) if v <= 100_000 => noise = usize::try_from(v).unwrap_or(0),
            ("--rate", Some(v)) if (1..=100).contains(&v) => rate = v,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lb-chain-bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let load = Load {
        duration: Duration::from_secs(duration),
        noise,
        rate,
    };
    let mut rows = Vec::new();
    for filtered in [false, true] {
        match runtime.block_on(measure(load, filtered)) {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("lb-chain-bench: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{}", table(load, &rows));
    ExitCode::SUCCESS
}

/// The chain's traffic and how long to measure it.
#[derive(Debug, Clone, Copy)]
struct Load {
    duration: Duration,
    noise: usize,
    rate: u64,
}

/// One mode's figures, per minute.
struct Row {
    mode: &'static str,
    bytes: f64,
    messages: f64,
    events: f64,
    foreign: f64,
    cpu_percent: f64,
    latencies: Vec<Duration>,
}

fn address(i: u64) -> Address {
    let mut bytes = [0x42; Address::LENGTH];
    bytes[Address::LENGTH - 8..].copy_from_slice(&i.to_be_bytes());
    Address::new(bytes)
}

fn node(i: u64) -> Node {
    Node {
        operator: address(0),
        endpoint: format!("10.1.{}.{}", i / 250, i % 250 + 1),
        stake: 1_000_000_000 + i,
        sui_rpc: String::new(),
        nautilus_url: String::new(),
        enclave_id: Address::ZERO,
    }
}

/// The discovery task on its own thread: its view, the thread's CPU
/// clock, and the switch that stops it.
struct Task {
    rx: watch::Receiver<RegistryView>,
    stats: Arc<DiscoveryStats>,
    clock: libc::clockid_t,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Task {
    fn start(settings: DiscoverySettings) -> Result<Self> {
        let stats = Arc::new(DiscoveryStats::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("discovery".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("discovery runtime: {e}")));
                        return;
                    }
                };
                let mut clock: libc::clockid_t = 0;
                // SAFETY: pthread_self() is this live thread; the out
                // pointer is a valid local.
                let rc =
                    unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &raw mut clock) };
                runtime.block_on(async move {
                    let (rx, task) = Discovery::spawn(settings, task_stats);
                    let sent = if rc == 0 {
                        ready_tx.send(Ok((rx, clock)))
                    } else {
                        ready_tx.send(Err(anyhow!("pthread_getcpuclockid: error {rc}")))
                    };
                    if sent.is_ok() {
                        let _ = stopped.await;
                    }
                    task.abort();
                });
            })
            .context("spawning the discovery thread")?;
        let (rx, clock) = ready_rx
            .recv()
            .context("the discovery thread did not start")??;
        Ok(Self {
            rx,
            stats,
            clock,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The discovery thread's CPU time so far.
    fn cpu(&self) -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `clock` came from pthread_getcpuclockid for a thread that
        // runs until `self` is dropped; `ts` is a valid local.
        let rc = unsafe { libc::clock_gettime(self.clock, &raw mut ts) };
        if rc != 0 {
            return Duration::ZERO;
        }
        Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        )
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts per run are far below 2^52: exact as f64"
)]
async fn measure(load: Load, filtered: bool) -> Result<Row> {
    let mode = if filtered { "filtered" } else { "checkpoints" };
    eprintln!(
        "lb-chain-bench: {mode}: {} checkpoints/s, {} foreign events each, {:?}",
        load.rate, load.noise, load.duration
    );
    let chain = FakeChain::start("4c78adac").await?;
    chain.set_filtered_streams(filtered);
    chain.set_noise(load.noise);
    for i in 0..20 {
        chain.register(address(1_000 + i), node(1_000 + i));
    }
    let mut task = Task::start(DiscoverySettings::new(
        chain.url(),
        chain.registry(),
        Duration::from_hours(1),
    ))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while task.stats.stream().is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "discovery did not start following"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = chain.calls();
    let counters = || {
        [
            calls.bytes_sent.load(Ordering::Relaxed),
            calls.messages_sent.load(Ordering::Relaxed),
            calls.events_sent.load(Ordering::Relaxed),
            calls.foreign_events_sent.load(Ordering::Relaxed),
        ]
    };
    let before = counters();
    let cpu_before = task.cpu();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / load.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_event = start + EVENT_EVERY;
    let mut latencies = Vec::new();
    let mut i = 0;
    while start.elapsed() < load.duration {
        tick.tick().await;
        if Instant::now() < next_event {
            chain.tick();
            continue;
        }
        next_event += EVENT_EVERY;
        i += 1;
        let key = address(i);
        let t0 = Instant::now();
        chain.register(key, node(i));
        tokio::time::timeout(
            Duration::from_secs(2),
            task.rx.wait_for(|v| v.nodes.contains_key(&key)),
        )
        .await
        .context("a registry event did not reach the view within 2 s")?
        .context("discovery stopped")?;
        latencies.push(t0.elapsed());
    }
    let wall = start.elapsed();
    let cpu = task.cpu().saturating_sub(cpu_before);
    let after = counters();
    let per_minute = |k: usize| (after[k] - before[k]) as f64 * 60.0 / wall.as_secs_f64();
    let row = Row {
        mode,
        bytes: per_minute(0),
        messages: per_minute(1),
        events: per_minute(2),
        foreign: per_minute(3),
        cpu_percent: cpu.as_secs_f64() * 100.0 / wall.as_secs_f64(),
        latencies,
    };
    drop(task);
    Ok(row)
}

fn table(load: Load, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Sui discovery on a chain of {} checkpoints/s, {} foreign events each, a registry event every {}s ({:?} per mode)\n",
        load.rate,
        load.noise,
        EVENT_EVERY.as_secs(),
        load.duration
    );
    let _ = writeln!(
        out,
        "| stream | bytes/min | messages/min | events/min (foreign) | discovery CPU | event -> view p50 / p99 |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let mut sorted = row.latencies.clone();
        sorted.sort();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} ({}) | {:.2} % of a core | {:.1} / {:.1} ms ({} events) |",
            row.mode,
            lb_tests::thousands(row.bytes),
            lb_tests::thousands(row.messages),
            lb_tests::thousands(row.events),
            lb_tests::thousands(row.foreign),
            row.cpu_percent,
            percentile(&sorted, 50.0).as_secs_f64() * 1000.0,
            percentile(&sorted, 99.0).as_secs_f64() * 1000.0,
            sorted.len()
        );
    }
    if let [baseline, filtered] = rows
        && filtered.bytes > 0.0
    {
        let _ = writeln!(
            out,
            "\nfiltered / checkpoints: {:.0}x fewer bytes, {:.0}x fewer messages; bytes per hour {} vs {}",
            baseline.bytes / filtered.bytes,
            baseline.messages / filtered.messages.max(1.0),
            lb_tests::thousands(filtered.bytes * 60.0),
            lb_tests::thousands(baseline.bytes * 60.0)
        );
    }
    out
}
