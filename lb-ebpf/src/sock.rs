//! The socket hooks' logic (cgroup `sock_addr`): connect/sendmsg rewrite a
//! socket address aimed at a service VIP to the service's backend, and
//! getpeername/recvmsg show the VIP again.
//!
//! Invariants: only TCP and UDP sockets whose destination is a VIP in
//! `services` are touched, everything else is allowed unchanged; a VIP
//! without a usable backend of the socket's family is refused with
//! `ECONNREFUSED`, never sent elsewhere; every rewrite records the VIP in
//! `rev_nat` under (socket cookie, backend address) so that the reverse
//! hooks can restore it; getpeername and recvmsg always allow (the kernel
//! requires them to return 1). Which backend a VIP gets is decided by the
//! controller (or the Maglev table, see `choice`), never here; a TCP
//! connect only skips a backend the kernel saw fail a dial (see `dial`).

use aya_ebpf::programs::SockAddrContext;
use lb_common::{AF_INET, NO_BACKEND, PROTO_TCP, PROTO_UDP, RevNatKey, RevNatValue, VipKey, mix64};

use crate::{
    choice,
    ctx::{self, SockAddr},
    dial, klog,
    maps::{BACKEND_STATS, BACKENDS, REV_NAT, SERVICE_STATS, SERVICES},
};

/// Let the socket call go ahead.
const ALLOW: i32 = 1;
/// Reject the socket call (errno set with `bpf_set_retval`).
const REJECT: i32 = 0;
/// Linux `ECONNREFUSED`.
const ECONNREFUSED: i32 = 111;

/// Which kind of call is being translated (selects the counter).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// `connect()`: TCP and connected UDP (`connects` counter).
    Connect,
    /// Unconnected UDP `sendmsg()` (`sendmsgs` counter).
    SendMsg,
}

/// The VIP key for an address; a v4-mapped IPv6 address is looked up as IPv4.
fn vip_key(to: &SockAddr, proto: u8) -> VipKey {
    VipKey {
        addr: to.key_bytes(),
        port: to.port,
        proto,
        family: if to.is_v4_mapped() {
            AF_INET
        } else {
            to.family
        },
    }
}

/// connect/sendmsg: rewrite a VIP destination to the selected backend.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn forward(ctx: &SockAddrContext, family: u8, call: Call) -> i32 {
    let proto = ctx::protocol(ctx);
    let proto = if proto == u32::from(PROTO_TCP) {
        PROTO_TCP
    } else if proto == u32::from(PROTO_UDP) {
        PROTO_UDP
    } else {
        return ALLOW;
    };
    let requested = ctx::read(ctx, family);
    let key = vip_key(&requested, proto);
    let Some(service) = SERVICES.get_ptr(key) else {
        return ALLOW;
    };
    // SAFETY: the pointer came from a successful lookup; the value is copied
    // at once (the controller may replace it concurrently, which is atomic).
    let service = unsafe { service.read() };
    let cookie = ctx::cookie(ctx);
    // The cookie is a counter: `mix64` spreads it over the table.
    let mut backend_id = choice::pick(&service, || mix64(cookie));
    // TCP connects of a tracked service are dials: they skip a backend that
    // just failed one, and `sock_ops` sees how they end (see `dial`).
    let failover = if call == Call::Connect && proto == PROTO_TCP {
        dial::tracked(service.id)
    } else {
        None
    };
    let dial = failover.is_some();
    let now = if dial { dial::now() } else { 0 };
    if let Some(failover) = failover
        && backend_id != NO_BACKEND
    {
        backend_id = dial::avoid_suspect(ctx, failover, service.id, backend_id, now);
    }
    let backend = if backend_id == NO_BACKEND {
        None
    } else {
        BACKENDS.get(backend_id).copied()
    };
    // An unused slot or a family that cannot be written into this socket is
    // treated like an empty backend table: refuse, never mis-forward.
    let Some(backend) = backend.filter(|b| b.family == key.family) else {
        if let Some(stats) = SERVICE_STATS.get_ptr_mut(service.id) {
            // SAFETY: per-CPU slot of this CPU; no other writer runs here.
            unsafe { (*stats).refused += 1 };
        }
        klog::refused(ctx, service.id, &key);
        ctx::set_errno(ECONNREFUSED);
        return REJECT;
    };
    let rewritten = SockAddr {
        words: SockAddr::words_of(backend.addr, requested.is_v4_mapped()),
        port: backend.port,
        family,
    };
    ctx::write(ctx, &rewritten);

    let rev_key = RevNatKey {
        cookie,
        addr: rewritten.bytes(),
        port: rewritten.port,
        family,
        pad: [0; 5],
    };
    // Unconnected UDP sends repeat for every datagram: only write when missing.
    if call == Call::Connect || REV_NAT.get_ptr(rev_key).is_none() {
        let rev_value = RevNatValue {
            addr: requested.bytes(),
            port: requested.port,
            pad: 0,
            service_id: service.id,
        };
        if REV_NAT.insert(rev_key, rev_value, 0).is_err()
            && let Some(stats) = SERVICE_STATS.get_ptr_mut(service.id)
        {
            // SAFETY: per-CPU slot of this CPU.
            unsafe { (*stats).rev_nat_failed += 1 };
        }
    }
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe {
            match call {
                Call::Connect => (*stats).connects += 1,
                Call::SendMsg => (*stats).sendmsgs += 1,
            }
        }
    }
    if dial {
        dial::record(cookie, backend_id, service.id, now);
    }
    ALLOW
}

/// getpeername/recvmsg: show the VIP instead of the backend the socket talks to.
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn reverse(ctx: &SockAddrContext, family: u8) -> i32 {
    let seen = ctx::read(ctx, family);
    let key = RevNatKey {
        cookie: ctx::cookie(ctx),
        addr: seen.bytes(),
        port: seen.port,
        family,
        pad: [0; 5],
    };
    if let Some(vip) = REV_NAT.get_ptr(key) {
        // SAFETY: pointer from a successful lookup, copied at once.
        let vip = unsafe { vip.read() };
        ctx::write(
            ctx,
            &SockAddr {
                words: SockAddr::words_of(vip.addr, false),
                port: vip.port,
                family,
            },
        );
    }
    // getpeername and recvmsg programs must always return 1.
    ALLOW
}
