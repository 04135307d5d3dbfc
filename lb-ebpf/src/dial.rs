//! Kernel-observed dials (see `lb_common::dial` for the whole flow): the
//! connect hook's side (skip a suspect backend, record the dial) and the
//! `sock_ops` side (see the dial succeed or fail, mark the backend, report).
//! `sock_ops` also counts the established connections per backend
//! (`conns`, `backend_conns`).
//!
//! Invariants: only TCP connects the socket hooks redirected to a service
//! with [`failover_flag::TRACK`] are tracked (they have a `dials` entry;
//! `sock_ops` asks for callbacks on those sockets only; once the connection
//! is established it keeps only the state callback, to see it leave
//! `ESTABLISHED` and stop counting it, then none); a
//! connect is never refused or stranded here: when every candidate is
//! suspect it keeps the backend it was given (fail open); a report that
//! does not fit the ring buffer is dropped, never waited for.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
        BPF_TCP_ESTABLISHED, BPF_TCP_SYN_SENT,
    },
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockOpsContext,
};
use lb_common::{DialEvent, DialStart, Failover, MAX_FAILOVER, dial_kind, failover_flag};

use crate::{
    klog,
    maps::{BACKEND_CONNS, BACKEND_DIAL, CONNS, DIAL_EVENTS, DIALS, FAILOVER},
};

/// The kernel's clock for dials (`CLOCK_MONOTONIC`, ns).
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Sends one outcome to the controller (dropped when the ring is full).
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn report(kind: u32, backend_id: u32, service_id: u32, duration_ns: u64) {
    let event = DialEvent {
        duration_ns,
        backend_id,
        service_id,
        kind,
        pad: 0,
        at_ns: now(),
    };
    // A success wakes nobody (the controller drains the ring on a short
    // timer: at tens of thousands of connects per second a wake-up per
    // dial costs more than the dial); anything else wakes it at once.
    let flags = if kind == dial_kind::SUCCESS {
        BPF_RB_NO_WAKEUP
    } else {
        BPF_RB_FORCE_WAKEUP
    };
    let _ = DIAL_EVENTS.output(event, u64::from(flags));
}

/// How much longer than the stall bound a timed dial may have been in
/// `dials` before it is taken for one whose end went unseen.
const STALE_NS: u64 = 2_000_000_000;

/// Whether a new connect may go to `backend_id` at `now`: not suspect, and
/// no SYN outstanding for longer than `bound` ns (0: no bound). A backend
/// found stalled here becomes suspect and is reported once.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn usable<C: EbpfContext>(ctx: &C, backend_id: u32, service_id: u32, now: u64, bound: u64) -> bool {
    let Some(dial) = BACKEND_DIAL.get_ptr_mut(backend_id) else {
        return true;
    };
    // SAFETY: a pointer into the array's value from a successful lookup;
    // concurrent writers store whole u64s, and a lost update only delays
    // a mark by one connect.
    let dial = unsafe { &mut *dial };
    if dial.suspect_since_ns != 0 {
        return false;
    }
    let pending = dial.pending_since_ns;
    let waited = now.saturating_sub(pending);
    if bound != 0 && pending != 0 && waited > bound {
        // Believe the timer only while connects keep coming (after an idle
        // spell it restarts with the next SYN), while the dial it times is
        // outstanding, and while that dial is younger than a SYN can wait
        // unnoticed (past TCP's first retransmission, 1 s, the RTO
        // callback has marked the backend): a dial whose end went unseen
        // must not make an idle backend look stalled.
        let cookie = dial.pending_cookie;
        let timed = DIALS.get_ptr(cookie);
        // SAFETY: pointer from a successful lookup, read at once.
        let start_ns = timed.map_or(0, |start| unsafe { (*start).start_ns });
        let idle = now.saturating_sub(dial.last_dial_ns) > bound;
        if idle || timed.is_none() || now.saturating_sub(start_ns) > bound + STALE_NS {
            dial.pending_since_ns = 0;
            if timed.is_some() {
                let _ = DIALS.remove(cookie);
            }
            return true;
        }
        // The timed dial's own start is the second clock: it must agree.
        let waited = now.saturating_sub(start_ns).min(waited);
        if waited <= bound {
            return true;
        }
        dial.suspect_since_ns = now;
        report(dial_kind::STALLED, backend_id, service_id, waited);
        klog::dial_stalled(ctx, backend_id, service_id, waited);
        return false;
    }
    true
}

/// The service's failover entry when its TCP connects are tracked
/// ([`failover_flag::TRACK`]).
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn tracked(service_id: u32) -> Option<&'static Failover> {
    FAILOVER
        .get(service_id)
        .filter(|f| f.flags & failover_flag::TRACK != 0)
}

/// The backend a new TCP connect of service `service_id` takes: `picked`
/// when it is usable, else the first usable one of the service's failover
/// list, else `picked` (fail open).
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn avoid_suspect<C: EbpfContext>(
    ctx: &C,
    failover: &Failover,
    service_id: u32,
    picked: u32,
    now: u64,
) -> u32 {
    let bound = failover.suspect_after_ns;
    if usable(ctx, picked, service_id, now, bound) {
        return picked;
    }
    let count = failover.count as usize;
    let mut taken = picked;
    let mut i = 0;
    while i < MAX_FAILOVER && i < count {
        let candidate = failover.backend_ids[i];
        if candidate != picked && usable(ctx, candidate, service_id, now, bound) {
            taken = candidate;
            break;
        }
        i += 1;
    }
    klog::suspect_skipped(ctx, service_id, picked, taken);
    taken
}

/// Records a TCP connect to `backend_id` (after the socket hook rewrote
/// it) so `sock_ops` can see its outcome.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn record(cookie: u64, backend_id: u32, service_id: u32, now: u64) {
    let start = DialStart {
        start_ns: now,
        backend_id,
        service_id,
    };
    // A full map evicts the oldest entry (LRU): that dial goes unseen.
    let _ = DIALS.insert(cookie, start, 0);
    if let Some(dial) = BACKEND_DIAL.get_ptr_mut(backend_id) {
        // SAFETY: see `usable`.
        unsafe { (*dial).last_dial_ns = now };
    }
}

/// The SYN of tracked dial `cookie` goes out: if none to its backend is
/// being timed, this one is (see `lb_common::BackendDial::pending_cookie`).
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn syn_sent(cookie: u64, backend_id: u32) {
    if let Some(dial) = BACKEND_DIAL.get_ptr_mut(backend_id) {
        // SAFETY: see `usable`.
        let dial = unsafe { &mut *dial };
        if dial.pending_since_ns == 0 {
            dial.pending_cookie = cookie;
            dial.pending_since_ns = now();
        }
    }
}

/// The `sock_ops` program's logic.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn sock_ops(ctx: &SockOpsContext) {
    // Runs for every TCP socket of the cgroup: the cookie is read only by
    // the callbacks that use it.
    // SAFETY: bpf_get_socket_cookie accepts the sock_ops context pointer.
    let cookie = || unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // Callbacks only for the sockets the connect hooks redirected.
            let cookie = cookie();
            if let Some(start) = DIALS.get_ptr(cookie) {
                // SAFETY: pointer from a successful lookup, read at once.
                let backend_id = unsafe { (*start).backend_id };
                syn_sent(cookie, backend_id);
                let _ = ctx
                    .set_cb_flags((BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG) as i32);
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let cookie = cookie();
            if let Some(backend_id) = finish(ctx, cookie, dial_kind::SUCCESS) {
                // From now on only its leaving ESTABLISHED matters.
                let flags = if opened(cookie, backend_id) {
                    BPF_SOCK_OPS_STATE_CB_FLAG
                } else {
                    0
                };
                let _ = ctx.set_cb_flags(flags as i32);
            }
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(0) == BPF_TCP_ESTABLISHED => {
            if closed(cookie()) {
                let _ = ctx.set_cb_flags(0);
            }
        }
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(0) == BPF_TCP_SYN_SENT && ctx.arg(1) == BPF_TCP_CLOSE {
                // SAFETY: the context pointer is valid for the program's run;
                // total_retrans is a readable field of bpf_sock_ops.
                let retransmitted = unsafe { (*ctx.ops).total_retrans } > 0;
                let kind = if retransmitted {
                    dial_kind::TIMEOUT
                } else {
                    dial_kind::RESET
                };
                let _ = finish(ctx, cookie(), kind);
            }
        }
        // SAFETY: as above; state is a readable field of bpf_sock_ops.
        BPF_SOCK_OPS_RTO_CB if unsafe { (*ctx.ops).state } == BPF_TCP_SYN_SENT => {
            stalled(ctx, cookie());
        }
        _ => {}
    }
}

/// Adds `n` to `*counter` atomically (BPF's atomic add: the BPF target has
/// no `AtomicU64::fetch_add` in `core`, but LLVM lowers the intrinsic to
/// the instruction every kernel with BPF supports).
///
/// # Safety
/// `counter` must point to a valid, aligned u64 that other writers change
/// only with atomic adds.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
unsafe fn atomic_add(counter: *mut u64, n: u64) {
    // SAFETY: the caller's promise; the previous value is not used.
    let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// An established connection to `backend_id` is counted and remembered
/// until it leaves `ESTABLISHED`. Returns false when `conns` is full (it
/// is counted as untracked instead).
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn opened(cookie: u64, backend_id: u32) -> bool {
    let remembered = CONNS.insert(cookie, backend_id, 0).is_ok();
    if let Some(conns) = BACKEND_CONNS.get_ptr_mut(backend_id) {
        // SAFETY: a valid, aligned u64 in the array's value from a
        // successful lookup; every writer uses atomic adds.
        unsafe {
            atomic_add(
                if remembered {
                    &raw mut (*conns).established
                } else {
                    &raw mut (*conns).untracked
                },
                1,
            );
        }
    }
    remembered
}

/// A counted connection left `ESTABLISHED`: it is no longer counted.
/// Returns whether `cookie` was one.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn closed(cookie: u64) -> bool {
    let Some(backend_id) = CONNS.get_ptr(cookie) else {
        return false;
    };
    // SAFETY: pointer from a successful lookup, copied at once.
    let backend_id = unsafe { backend_id.read() };
    let _ = CONNS.remove(cookie);
    if let Some(conns) = BACKEND_CONNS.get_ptr_mut(backend_id) {
        // Adding 2^64 - 1 subtracts one.
        // SAFETY: as in `opened`.
        unsafe { atomic_add(&raw mut (*conns).established, u64::MAX) };
    }
    true
}

/// A dial's outcome: the backend's marks follow it, the controller hears
/// of it, the dial is forgotten. Returns the dial's backend when `cookie`
/// was a tracked dial (a socket the connect hooks did not redirect, or one
/// whose connect the controller aborted, is not).
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn finish(ctx: &SockOpsContext, cookie: u64, kind: u32) -> Option<u32> {
    let start = DIALS.get_ptr(cookie)?;
    // SAFETY: pointer from a successful lookup, copied at once.
    let start = unsafe { start.read() };
    let now = now();
    if let Some(dial) = BACKEND_DIAL.get_ptr_mut(start.backend_id) {
        // SAFETY: see `usable`.
        let dial = unsafe { &mut *dial };
        if kind == dial_kind::SUCCESS {
            dial.suspect_since_ns = 0;
        } else if dial.suspect_since_ns == 0 {
            dial.suspect_since_ns = now;
        }
        dial.pending_since_ns = 0;
    }
    let duration_ns = now.saturating_sub(start.start_ns);
    report(kind, start.backend_id, start.service_id, duration_ns);
    // `kind` is a constant at each call site: nothing of this is left in
    // the success path.
    if kind != dial_kind::SUCCESS {
        klog::dial_failed(ctx, kind, start.backend_id, start.service_id, duration_ns);
    }
    let _ = DIALS.remove(cookie);
    Some(start.backend_id)
}

/// A SYN of a tracked dial was retransmitted: its backend is suspect
/// (reported when it was not yet).
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn stalled(ctx: &SockOpsContext, cookie: u64) {
    let Some(start) = DIALS.get_ptr(cookie) else {
        return;
    };
    // SAFETY: pointer from a successful lookup, copied at once.
    let start = unsafe { start.read() };
    let Some(dial) = BACKEND_DIAL.get_ptr_mut(start.backend_id) else {
        return;
    };
    // SAFETY: see `usable`.
    let dial = unsafe { &mut *dial };
    if dial.suspect_since_ns == 0 {
        let now = now();
        dial.suspect_since_ns = now;
        let waited = now.saturating_sub(start.start_ns);
        report(
            dial_kind::STALLED,
            start.backend_id,
            start.service_id,
            waited,
        );
        klog::dial_stalled(ctx, start.backend_id, start.service_id, waited);
    }
}
