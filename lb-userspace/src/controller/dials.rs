//! Kernel-observed dials in the controller: a task reads the `dial_events`
//! ring buffer (see `lb_common::dial`) as soon as the kernel reports a
//! failure, and every [`DRAIN_EVERY`] for the successes (written without a
//! wake-up: one per connect would cost more than the connect), and hands
//! each batch to the controller thread, which feeds every outcome
//! to the K3s state machine as `recordSuccess/recordFailure(reasonDial)`
//! does: client dials, not probes, make a server active or failed. A failed
//! or stalled dial also wakes the server's check task (a probe at once:
//! a passing probe clears the kernel's suspect mark, see `handlers`).

use std::{os::fd::AsRawFd as _, time::Duration};

use aya::maps::{MapData, RingBuf};
use lb_common::DialEvent;
use tokio::{io::unix::AsyncFd, runtime::Handle, task::JoinHandle, time::MissedTickBehavior};
use tracing::warn;

use super::events::{Controller, Event};

/// Events handed over at most per batch (the rest follow at once).
const BATCH: usize = 4096;
/// How often the ring is drained of the records written without a wake-up
/// (successful dials): how late a success may reach the state machine.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Starts the task reading `ring`.
pub(super) fn spawn(
    runtime: &Handle,
    controller: Controller,
    ring: RingBuf<MapData>,
) -> anyhow::Result<JoinHandle<()>> {
    let _guard = runtime.enter();
    // SAFETY: the ring buffer owns its map fd, which stays open and the
    // same for as long as the AsyncFd owns the ring buffer.
    let ring = unsafe { AsyncFd::register(ring) }.map_err(|err| {
        anyhow::anyhow!("watching the dial_events ring buffer for readiness: {err}")
    })?;
    Ok(runtime.spawn(read_loop(controller, ring)))
}

async fn read_loop(controller: Controller, mut ring: AsyncFd<RingBuf<MapData>>) {
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // Failures wake the reader at once; successes are written without a
        // wake-up and are picked up by the next drain (or with a failure).
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut ready = match ready {
                    Ok(ready) => ready,
                    Err(err) => {
                        warn!(error = %err, fd = ring.get_ref().as_raw_fd(), "dial_events ring buffer: cannot wait for records; client dials are no longer seen");
                        return;
                    }
                };
                let batch = read_batch(ready.get_inner_mut());
                if batch.len() < BATCH {
                    ready.clear_ready();
                }
                drop(ready);
                if !batch.is_empty() {
                    controller.tell(Event::Dials(batch)).await;
                }
            }
            _ = drain.tick() => {
                loop {
                    let batch = read_batch(ring.get_mut());
                    let more = batch.len() == BATCH;
                    if !batch.is_empty() {
                        controller.tell(Event::Dials(batch)).await;
                    }
                    if !more {
                        break;
                    }
                }
            }
        }
    }
}

/// Up to [`BATCH`] records from `ring`, in order.
fn read_batch(ring: &mut RingBuf<MapData>) -> Vec<DialEvent> {
    let mut batch = Vec::new();
    while batch.len() < BATCH {
        let Some(record) = ring.next() else {
            break;
        };
        if let Some(event) = decode(&record) {
            batch.push(event);
        }
    }
    batch
}

/// The clock of [`DialEvent::at_ns`] (`bpf_ktime_get_ns`: `CLOCK_MONOTONIC`),
/// in ns.
pub(super) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    if rc != 0 {
        // CLOCK_MONOTONIC always exists on Linux; 0 makes every reaction
        // read as 0 rather than panicking the controller.
        return 0;
    }
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// A record as the kernel wrote it (`None`: not a [`DialEvent`]).
fn decode(record: &[u8]) -> Option<DialEvent> {
    if record.len() != size_of::<DialEvent>() {
        return None;
    }
    // SAFETY: the length matches; DialEvent is plain integers (`aya::Pod`),
    // valid for any bytes, and read unaligned.
    Some(unsafe { record.as_ptr().cast::<DialEvent>().read_unaligned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_another_size_are_ignored() {
        let event = DialEvent {
            duration_ns: 1_500,
            backend_id: 3,
            service_id: 1,
            kind: lb_common::dial_kind::RESET,
            pad: 0,
            at_ns: 77,
        };
        // SAFETY: DialEvent is plain integers without padding.
        let bytes: [u8; 32] = unsafe { core::mem::transmute(event) };
        assert_eq!(decode(&bytes), Some(event));
        assert_eq!(decode(&bytes[..24]), None);
    }

    #[test]
    fn the_clock_is_the_kernels_monotonic_one() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b - a >= 2_000_000, "{a} {b}");
        // CLOCK_MONOTONIC counts from boot: far below the wall clock's ns.
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        assert!(u128::from(b) < wall / 2);
    }
}
