//! The flow collector: a thread the controller starts with an `xdp` block
//! that removes expired XDP flows every `xdp.flow_gc_interval`.
//!
//! Each pass reads the `flows` map in chunks (`BPF_MAP_LOOKUP_BATCH`, one
//! key at a time where the kernel lacks it), looks up each entry's partner
//! (a forward entry's reply key is its rewrite reversed, and the other way
//! round), asks the pure [`flow_expiry::verdict`] and removes what it
//! condemns: a pair forward entry first (so no reply arrives untranslated
//! while the forward entry still sends), an orphaned half alone. Before a
//! removal both entries are read again and judged again, so a flow the
//! kernel refreshed or moved meanwhile stays (what remains is the window
//! between that read and the delete: microseconds, as with any LRU map).
//!
//! Why a thread of its own and not the controller's: a pass over a full
//! table is thousands of batch reads and up to one partner lookup (a
//! system call) per entry, and the controller must keep handling checks
//! and dials meanwhile. The collector is still part of the
//! controller (this module, started and stopped by it), it owns a handle
//! of only this one map, removes only flow entries the kernel programs
//! created, and writes nothing else; the architecture's "only the
//! controller writes maps" holds at module level, and "nothing holds a lock
//! across a syscall" holds: the shared [`FlowGcStats`] lock is taken after
//! a pass, never during one.
//!
//! Evictions: the kernel does not report the entries its LRU evicts. Each
//! complete pass reads the `flow_stats` counts (entries created, entries
//! removed by the kernel, this collector and the controller) just before
//! and just after its walk, and [`flow_expiry::evicted_at_least`] turns
//! them and the entries the walk saw into a lower bound of the evictions so
//! far; [`FlowGcStats::evicted`] is the largest bound yet (exact when the
//! table was quiet during the walk). The collector counts its own removals
//! into `flow_stats` after each pass.
//!
//! Bounds: a pass stops after [`PASS_TIME_LIMIT`] or after reading twice
//! the map's capacity (a walk of a changing hash may see entries twice);
//! the thread stops within one interval of [`FlowGc`] being dropped.

use std::{
    collections::HashMap,
    ops::ControlFlow,
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_common::{FLOW_REPLY, FlowKey, FlowValue, flow_stat};
use tracing::{debug, info, warn};

use crate::{
    config::FlowTimeouts,
    kernel::maps::{Flows, WalkMode},
    policy::flow_expiry::{self, Flow, Half, Reason},
};

/// Entries read per `BPF_MAP_LOOKUP_BATCH` call.
const CHUNK: u32 = 1024;
/// A pass stops after this long (and warns): the rest waits for the next.
pub(super) const PASS_TIME_LIMIT: Duration = Duration::from_secs(5);

/// What the collector reports (status, metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowGcStats {
    /// Forward (client → VIP) entries the last pass read.
    pub forward_entries: u64,
    /// Reply (backend → SNAT address) entries the last pass read.
    pub reply_entries: u64,
    /// The map's capacity (entries; two per flow).
    pub capacity: u64,
    /// Flows removed since the start, by [`Reason`] (a pair counts once, an
    /// orphaned half once).
    pub removed: [u64; Reason::ALL.len()],
    /// Entries the kernel programs created since the counts began (the
    /// `flow_stats` map's creation).
    pub created: u64,
    /// Entries the LRU evicted since the counts began, at least: the
    /// largest bound a complete pass found (see the module's doc).
    pub evicted: u64,
    /// How long the last pass took.
    pub last_pass: Duration,
    /// Passes since the start.
    pub passes: u64,
}

impl FlowGcStats {
    /// Removed flows by reason label, every reason present.
    pub fn removed_by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Reason::ALL
            .iter()
            .zip(self.removed)
            .map(|(reason, n)| (reason.as_str(), n))
    }
}

/// The running collector; dropping it stops the thread (within one interval).
pub(super) struct FlowGc {
    pub(super) stats: Arc<Mutex<FlowGcStats>>,
    /// Dropped to stop the thread.
    _stop: mpsc::Sender<()>,
    _thread: JoinHandle<()>,
}

impl FlowGc {
    /// Starts the collector on its own handle of `flows`.
    pub(super) fn start(
        flows: &Flows,
        timeouts: FlowTimeouts,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let flows = flows.try_clone(flow_stat::REMOVED_COLLECTOR)?;
        let stats = Arc::new(Mutex::new(FlowGcStats {
            capacity: u64::from(flows.capacity()),
            ..FlowGcStats::default()
        }));
        let (stop, stopped) = mpsc::channel();
        let shared = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("flow-gc".to_owned())
            .spawn(move || run(flows, &timeouts, interval, &stopped, &shared))
            .context("starting the flow collector thread")?;
        info!(
            interval = %humantime::format_duration(interval),
            "flow collector started"
        );
        Ok(Self {
            stats,
            _stop: stop,
            _thread: thread,
        })
    }
}

/// The thread: a pass every `interval` until `stopped` disconnects.
fn run(
    mut flows: Flows,
    timeouts: &FlowTimeouts,
    interval: Duration,
    stopped: &mpsc::Receiver<()>,
    stats: &Mutex<FlowGcStats>,
) {
    let mut collector = Collector::default();
    let mut failing = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
        let started = Instant::now();
        match collector.pass(&mut flows, timeouts, coarse_now()) {
            Ok(pass) => {
                if failing {
                    info!("flow collector reads the flows map again");
                    failing = false;
                }
                let elapsed = started.elapsed();
                debug!(
                    forward = pass.forward,
                    reply = pass.reply,
                    removed = pass.removed.iter().sum::<u64>(),
                    mode = ?pass.mode,
                    complete = pass.complete,
                    micros = elapsed.as_micros(),
                    "flow collector pass"
                );
                if !pass.complete {
                    warn!(
                        read = pass.forward + pass.reply,
                        seconds = elapsed.as_secs_f64(),
                        "flow collector pass cut short at its bound; the rest waits for the next pass"
                    );
                }
                let mut shared = stats
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                shared.forward_entries = pass.forward;
                shared.reply_entries = pass.reply;
                if let Some(created) = pass.created {
                    shared.created = created;
                }
                if let Some(evicted) = pass.evicted_at_least {
                    shared.evicted = shared.evicted.max(evicted);
                }
                for (total, n) in shared.removed.iter_mut().zip(pass.removed) {
                    *total += n;
                }
                shared.last_pass = elapsed;
                shared.passes += 1;
            }
            Err(err) => {
                if !failing {
                    warn!(
                        error = format!("{err:#}"),
                        "flow collector pass failed; retrying every interval"
                    );
                    failing = true;
                }
            }
        }
    }
    debug!("flow collector stopped");
}

/// The `flow_stats` counts, or `None` (logged at debug) when they cannot
/// be read.
fn counts(flows: &Flows) -> Option<flow_expiry::FlowTotals> {
    flows
        .totals()
        .inspect_err(|err| debug!(error = format!("{err:#}"), "reading flow_stats failed"))
        .ok()
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock the kernel programs
/// stamp `last_seen` with (`bpf_ktime_get_coarse_ns`).
pub(crate) fn coarse_now() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a live, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut now) };
    if rc != 0 {
        // The clock exists since Linux 2.6.32; 0 makes every flow look
        // fresh (nothing is removed) rather than panicking.
        return 0;
    }
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// What one pass saw and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pass {
    pub(super) forward: u64,
    pub(super) reply: u64,
    pub(super) removed: [u64; Reason::ALL.len()],
    pub(super) mode: WalkMode,
    /// Whether the walk reached the end (not cut by a bound).
    pub(super) complete: bool,
    /// `flow_stats`' created entries, read after the walk (`None`: not read).
    pub(super) created: Option<u64>,
    /// The evictions so far, at least (a complete walk only).
    pub(super) evicted_at_least: Option<u64>,
}

/// The collector's memory between passes: the halves found alone, and
/// when first.
#[derive(Debug, Default)]
pub(super) struct Collector {
    lone_since: HashMap<FlowKey, u64>,
}

/// The reply entry's key of a forward entry (`key` rewritten by `value`,
/// reversed); also the forward key of a reply entry.
pub(super) fn partner_key(key: &FlowKey, value: &FlowValue) -> FlowKey {
    FlowKey {
        src: value.dst,
        dst: value.src,
        src_port: value.dst_port,
        dst_port: value.src_port,
        proto: key.proto,
        family: key.family,
        pad: [0; 2],
    }
}

/// `key`'s partner entry, if present and pointing back at `key`.
fn partner(flows: &Flows, key: &FlowKey, value: &FlowValue) -> anyhow::Result<Option<FlowValue>> {
    let other = partner_key(key, value);
    Ok(flows
        .get(&other)?
        .filter(|found| partner_key(&other, found) == *key))
}

const fn half(value: &FlowValue) -> Half {
    Half {
        last_seen: value.last_seen,
        flags: value.flags,
    }
}

const fn is_reply(value: &FlowValue) -> bool {
    value.flags & FLOW_REPLY != 0
}

impl Collector {
    /// One pass at `now` (coarse monotonic ns).
    pub(super) fn pass(
        &mut self,
        flows: &mut Flows,
        timeouts: &FlowTimeouts,
        now: u64,
    ) -> anyhow::Result<Pass> {
        let started = Instant::now();
        let limit = u64::from(flows.capacity()) * 2;
        let mut pass = Pass {
            forward: 0,
            reply: 0,
            removed: [0; Reason::ALL.len()],
            mode: WalkMode::Batch,
            complete: true,
            created: None,
            evicted_at_least: None,
        };
        // The counts only feed the eviction bound: failing to read or write
        // them never stops the collector.
        let before = counts(flows);
        let mut lone = HashMap::new();
        let mut doomed: Vec<(FlowKey, Option<FlowKey>)> = Vec::new();
        let mut error = None;
        let handle: &Flows = flows;
        pass.mode = handle.walk(CHUNK, |entries| {
            for (key, value) in entries {
                if is_reply(value) {
                    pass.reply += 1;
                } else {
                    pass.forward += 1;
                }
                match self.judge(handle, timeouts, now, key, value, &mut lone) {
                    Ok(Some(victims)) => doomed.push(victims),
                    Ok(None) => {}
                    Err(err) => {
                        error = Some(err);
                        return ControlFlow::Break(());
                    }
                }
            }
            if pass.forward + pass.reply >= limit || started.elapsed() >= PASS_TIME_LIMIT {
                pass.complete = false;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        if let Some(err) = error {
            return Err(err);
        }
        let after = counts(flows);
        pass.created = after.map(|after| after[flow_stat::CREATED as usize]);
        if let (true, Some(before), Some(after)) = (pass.complete, &before, &after) {
            pass.evicted_at_least = Some(flow_expiry::evicted_at_least(
                before,
                after,
                pass.forward + pass.reply,
            ));
        }
        self.lone_since = lone;
        let removals = self.remove_all(flows, timeouts, now, doomed, &mut pass.removed);
        // Counted even when a removal failed half way; kept for the next
        // pass when the write fails.
        if let Err(err) = flows.record_removals() {
            debug!(
                error = format!("{err:#}"),
                "counting removed flow entries in flow_stats failed"
            );
        }
        removals?;
        Ok(pass)
    }

    /// Removes the `doomed` flows that are still condemned (see
    /// [`Self::remove`]), counting them by reason in `removed`.
    fn remove_all(
        &self,
        flows: &mut Flows,
        timeouts: &FlowTimeouts,
        now: u64,
        doomed: Vec<(FlowKey, Option<FlowKey>)>,
        removed: &mut [u64; Reason::ALL.len()],
    ) -> anyhow::Result<()> {
        for (key, partner_key) in doomed {
            if let Some(reason) = self.remove(flows, timeouts, now, &key, partner_key)? {
                removed[reason as usize] += 1;
            }
        }
        Ok(())
    }

    /// The verdict on the flow of one entry: `Some((key, partner))` when
    /// it is to go (the partner's key for a pair).
    fn judge(
        &self,
        flows: &Flows,
        timeouts: &FlowTimeouts,
        now: u64,
        key: &FlowKey,
        value: &FlowValue,
        lone: &mut HashMap<FlowKey, u64>,
    ) -> anyhow::Result<Option<(FlowKey, Option<FlowKey>)>> {
        if is_reply(value)
            && !flow_expiry::may_be_expired(key.proto, value.last_seen, now, timeouts)
        {
            // A fresh reply entry: its pair, if any, is judged from the
            // forward entry; alone, it is not old enough to go.
            return Ok(None);
        }
        let flow = match partner(flows, key, value)? {
            // A pair is judged from its forward entry.
            Some(_) if is_reply(value) => return Ok(None),
            Some(reply) => Flow::Pair {
                forward: half(value),
                reply: half(&reply),
            },
            None => {
                let since = self.lone_since.get(key).copied().unwrap_or(now);
                lone.insert(*key, since);
                if is_reply(value) {
                    Flow::ReplyOnly {
                        reply: half(value),
                        lone_since: since,
                    }
                } else {
                    Flow::ForwardOnly {
                        forward: half(value),
                        lone_since: since,
                    }
                }
            }
        };
        let partner = matches!(flow, Flow::Pair { .. }).then(|| partner_key(key, value));
        Ok(flow_expiry::verdict(key.proto, &flow, now, timeouts).map(|_| (*key, partner)))
    }

    /// Reads the flow of `key` again, judges it again and removes it if it
    /// is still condemned; returns why.
    fn remove(
        &self,
        flows: &mut Flows,
        timeouts: &FlowTimeouts,
        now: u64,
        key: &FlowKey,
        expected_partner: Option<FlowKey>,
    ) -> anyhow::Result<Option<Reason>> {
        let Some(value) = flows.get(key)? else {
            return Ok(None);
        };
        let flow = match (partner(flows, key, &value)?, expected_partner) {
            (Some(reply), Some(expected)) if expected == partner_key(key, &value) => Flow::Pair {
                forward: half(&value),
                reply: half(&reply),
            },
            (None, None) => {
                let since = self.lone_since.get(key).copied().unwrap_or(now);
                if is_reply(&value) {
                    Flow::ReplyOnly {
                        reply: half(&value),
                        lone_since: since,
                    }
                } else {
                    Flow::ForwardOnly {
                        forward: half(&value),
                        lone_since: since,
                    }
                }
            }
            // Changed since the walk (moved, or its partner came or went).
            _ => return Ok(None),
        };
        let Some(reason) = flow_expiry::verdict(key.proto, &flow, now, timeouts) else {
            return Ok(None);
        };
        flows
            .remove(key)
            .with_context(|| format!("removing flow entry {key:?}"))?;
        if let Some(reply) = expected_partner {
            flows
                .remove(&reply)
                .with_context(|| format!("removing flow entry {reply:?}"))?;
        }
        Ok(Some(reason))
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{AF_INET, PROTO_TCP};

    use super::*;

    #[test]
    fn partner_keys_are_mutual() {
        let forward = FlowKey {
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 43, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 40000,
            dst_port: 6443,
            proto: PROTO_TCP,
            family: AF_INET,
            pad: [0; 2],
        };
        let rewrite = FlowValue {
            src: [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 61001,
            dst_port: 6443,
            ..FlowValue::default()
        };
        let reply_key = partner_key(&forward, &rewrite);
        assert_eq!(reply_key.src, rewrite.dst);
        assert_eq!(reply_key.dst, rewrite.src);
        assert_eq!((reply_key.src_port, reply_key.dst_port), (6443, 61001));
        let reply = FlowValue {
            src: forward.dst,
            dst: forward.src,
            src_port: forward.dst_port,
            dst_port: forward.src_port,
            flags: FLOW_REPLY,
            ..FlowValue::default()
        };
        assert_eq!(partner_key(&reply_key, &reply), forward);
    }

    #[test]
    fn coarse_clock_moves_forward() {
        let a = coarse_now();
        std::thread::sleep(Duration::from_millis(20));
        let b = coarse_now();
        assert!(a > 0 && b > a, "{a} {b}");
    }

    #[test]
    fn stats_list_every_reason() {
        let stats = FlowGcStats {
            removed: [1, 2, 3, 4, 5],
            ..FlowGcStats::default()
        };
        let listed: Vec<_> = stats.removed_by_reason().collect();
        assert_eq!(
            listed,
            [
                ("tcp_closed", 1),
                ("tcp_idle", 2),
                ("tcp_unreplied", 3),
                ("udp_idle", 4),
                ("orphan", 5)
            ]
        );
    }
}
