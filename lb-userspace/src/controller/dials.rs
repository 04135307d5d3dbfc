//! Kernel-observed dials in the controller: a task reads the `dial_events`
//! ring buffer (see `lb_common::dial`) as soon as the kernel writes to it
//! and hands each batch to the controller thread, which feeds every outcome
//! to the K3s state machine as `recordSuccess/recordFailure(reasonDial)`
//! does: client dials, not probes, make a server active or failed. A failed
//! or stalled dial also wakes the server's check task (a probe at once:
//! a passing probe clears the kernel's suspect mark, see `handlers`).

use std::os::fd::AsRawFd as _;

use aya::maps::{MapData, RingBuf};
use lb_common::DialEvent;
use tokio::{io::unix::AsyncFd, runtime::Handle, task::JoinHandle};
use tracing::warn;

use super::events::{Controller, Event};

/// Events handed over at most per batch (the rest follow at once).
const BATCH: usize = 4096;

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
    loop {
        let mut ready = match ring.readable_mut().await {
            Ok(ready) => ready,
            Err(err) => {
                warn!(error = %err, fd = ring.get_ref().as_raw_fd(), "dial_events ring buffer: cannot wait for records; client dials are no longer seen");
                return;
            }
        };
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let Some(record) = ready.get_inner_mut().next() else {
                break;
            };
            if let Some(event) = decode(&record) {
                batch.push(event);
            }
        }
        if batch.len() < BATCH {
            ready.clear_ready();
        }
        drop(ready);
        if !batch.is_empty() {
            controller.tell(Event::Dials(batch)).await;
        }
    }
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
        };
        // SAFETY: DialEvent is plain integers without padding.
        let bytes: [u8; 24] = unsafe { core::mem::transmute(event) };
        assert_eq!(decode(&bytes), Some(event));
        assert_eq!(decode(&bytes[..20]), None);
    }
}
