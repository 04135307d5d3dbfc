//! Kernel logging of rare events through aya-log (`aya_log_ebpf`): refused
//! connects, failed and stalled dials, connects moved past a suspect
//! backend, XDP drops by reason. The controller drains aya-log's ring
//! buffer into its log (target `daas_lb::kernel`).
//!
//! Invariants: every function here is called only from the branch where
//! its event has already happened, never on the path of a connect or a
//! packet that goes through; each reads the level (`kernel_log[0]`, see
//! [`lb_common::kernel_log`]) first and returns at once below it, so with
//! logging off (the default) the ring buffer is never touched. A record
//! that does not fit the ring is dropped by aya-log, never waited for.
//! Messages carry only integers, addresses and literals (constant sizes,
//! which the verifier needs for the copies into the ring).

use aya_ebpf::EbpfContext;
use aya_log_ebpf::{debug, warn};
use lb_common::{AF_INET, AddrBytes, Backend, FlowKey, VipKey, dial_kind, kernel_log, xdp_counter};

use crate::maps::{BACKENDS, KERNEL_LOG};

/// Whether events of `level` are logged now.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn enabled(level: u32) -> bool {
    KERNEL_LOG.get(0).is_some_and(|current| *current >= level)
}

/// The IPv4 address in the first four bytes of a map address.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
const fn v4(addr: &AddrBytes) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

/// A connect or send to `vip` of service `service_id` was refused with
/// `ECONNREFUSED`: the service has no usable backend of the socket's family.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn refused<C: EbpfContext>(ctx: &C, service_id: u32, vip: &VipKey) {
    if !enabled(kernel_log::WARN) {
        return;
    }
    if vip.family == AF_INET {
        warn!(
            ctx,
            "connect to VIP {:i}:{} (service id {}) refused with ECONNREFUSED: no usable backend",
            v4(&vip.addr),
            vip.port,
            service_id
        );
    } else {
        warn!(
            ctx,
            "connect to VIP [{:i}]:{} (service id {}) refused with ECONNREFUSED: no usable backend",
            vip.addr,
            vip.port,
            service_id
        );
    }
}

/// Backend `backend_id`'s entry (all zero for a slot cleared meanwhile:
/// the record is still written, with the ids).
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn backend(backend_id: u32) -> Backend {
    BACKENDS.get(backend_id).copied().unwrap_or(Backend {
        addr: [0; 16],
        port: 0,
        family: 0,
        flags: 0,
        service_id: 0,
    })
}

/// A tracked dial to `backend_id` ended without a connection (`kind`:
/// [`dial_kind::RESET`] or [`dial_kind::TIMEOUT`]) after `duration_ns`.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn dial_failed<C: EbpfContext>(
    ctx: &C,
    kind: u32,
    backend_id: u32,
    service_id: u32,
    duration_ns: u64,
) {
    if !enabled(kernel_log::WARN) {
        return;
    }
    let ms = duration_ns / 1_000_000;
    // One length for both: a copy into the ring must have a known size.
    let reason = if kind == dial_kind::RESET {
        "refused"
    } else {
        "timeout"
    };
    let to = backend(backend_id);
    if to.family == AF_INET {
        warn!(
            ctx,
            "dial failed: backend {:i}:{} (id {}, service id {}): {} after {} ms; backend suspect",
            v4(&to.addr),
            to.port,
            backend_id,
            service_id,
            reason,
            ms
        );
    } else {
        warn!(
            ctx,
            "dial failed: backend [{:i}]:{} (id {}, service id {}): {} after {} ms; backend suspect",
            to.addr,
            to.port,
            backend_id,
            service_id,
            reason,
            ms
        );
    }
}

/// A SYN of a tracked dial to `backend_id` went unanswered for
/// `waited_ns` (retransmitted, or past the service's bound): the backend
/// has just become suspect.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn dial_stalled<C: EbpfContext>(
    ctx: &C,
    backend_id: u32,
    service_id: u32,
    waited_ns: u64,
) {
    if !enabled(kernel_log::WARN) {
        return;
    }
    let ms = waited_ns / 1_000_000;
    let to = backend(backend_id);
    if to.family == AF_INET {
        warn!(
            ctx,
            "dial stalled: backend {:i}:{} (id {}, service id {}): SYN unanswered for {} ms; backend suspect",
            v4(&to.addr),
            to.port,
            backend_id,
            service_id,
            ms
        );
    } else {
        warn!(
            ctx,
            "dial stalled: backend [{:i}]:{} (id {}, service id {}): SYN unanswered for {} ms; backend suspect",
            to.addr,
            to.port,
            backend_id,
            service_id,
            ms
        );
    }
}

/// A new connect of service `service_id` skipped suspect backend
/// `picked`: it goes to `taken` (`taken == picked`: every candidate is
/// suspect and it stays, fail open).
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn suspect_skipped<C: EbpfContext>(ctx: &C, service_id: u32, picked: u32, taken: u32) {
    if !enabled(kernel_log::DEBUG) {
        return;
    }
    if taken == picked {
        debug!(
            ctx,
            "suspect: backend id {} (service id {}) and every failover candidate are suspect; connect kept on it (fail open)",
            picked,
            service_id
        );
    } else {
        debug!(
            ctx,
            "suspect: backend id {} (service id {}) skipped; connect goes to backend id {}",
            picked,
            service_id,
            taken
        );
    }
}

/// The forwarder (XDP or tc; logged as `xdp dropped`) dropped a packet of
/// flow `key` (to a VIP, or an orphaned reply to a SNAT address) for the
/// reason of
/// `xdp_stats` counter `counter` (one of the `DROP_*` of
/// [`xdp_counter`]).
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn xdp_drop<C: EbpfContext>(ctx: &C, counter: u32, key: &FlowKey) {
    if !enabled(kernel_log::DEBUG) {
        return;
    }
    // The counter's name, padded to one length: a copy into the ring must
    // have a size the verifier knows.
    let reason: &str = match counter {
        xdp_counter::DROP_NO_BACKEND => "drop_no_backend  ",
        xdp_counter::DROP_SNAT_PORTS => "drop_snat_ports  ",
        xdp_counter::DROP_FLOW_TABLE => "drop_flow_table  ",
        xdp_counter::DROP_ORPHAN_REPLY => "drop_orphan_reply",
        xdp_counter::DROP_REWRITE => "drop_rewrite     ",
        _ => "drop_unreachable ",
    };
    if key.family == AF_INET {
        debug!(
            ctx,
            "xdp dropped {:i}:{} -> {:i}:{}: {}",
            v4(&key.src),
            key.src_port,
            v4(&key.dst),
            key.dst_port,
            reason
        );
    } else {
        debug!(
            ctx,
            "xdp dropped [{:i}]:{} -> [{:i}]:{}: {}",
            key.src,
            key.src_port,
            key.dst,
            key.dst_port,
            reason
        );
    }
}
