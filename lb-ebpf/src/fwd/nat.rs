//! The flow table's rules: which backend an existing flow may keep
//! ([`slot`], [`backend`]), what a new flow gets, its SNAT address and
//! port, stored for both directions ([`new_flow`]), how the entries live
//! ([`touch`], [`cache_hop`], [`cached_hop`]) and which packets are
//! orphaned replies ([`orphan`]). The lookup itself (existing entry, else
//! the VIP's service and `choice::pick`) is written out in
//! `super::forward`: as a function returning its result it needs more
//! stack than the program has left.
//!
//! The SNAT port search is the forwarder's one BPF-to-BPF function: each
//! attempt ([`try_port`]) runs as a `bpf_loop` callback, which the verifier
//! checks once, however many attempts there are. Written as a loop in the
//! program, its attempts (8 then) with their insert, lookup and compare
//! chain were walked for every path into a new flow, and a single extra
//! branch elsewhere (the `vip_filter` check) took `lb_tc` past the
//! verifier's million instructions.
//!
//! Invariants: a forwarded flow has two `flows` entries, the client→VIP
//! entry (the forward rewrite, pinned to a backend) and the backend→SNAT
//! entry (the reply rewrite, [`FLOW_REPLY`]). The reply entry is claimed
//! first with `BPF_NOEXIST`, so two flows never share a SNAT address and
//! port; a forward entry is stored only once its reply entry exists, and
//! a forward entry that finds its reply entry evicted re-creates it
//! ([`touch`]). A reply entry left by a rebuilt flow is removed only while
//! it still translates for that flow. Map values are read through their
//! pointers where a copy would not fit on the nearly full BPF stack.
//!
//! Failed and removed servers, cheaply: a forward entry keeps its backend
//! only while the backend's slot is a used slot of the flow's family and
//! service, not [`BACKEND_DOWN`], and still holds the address and port
//! the entry rewrites to ([`slot`]). Everything else is decided on the
//! flow's next packet: a down backend's flows move to the service's
//! current choice (unless that is the same down backend: fail-open), and
//! a freed or reused slot never lends its flows to the new server. So the
//! controller never walks the flow table to forget a server: it marks the
//! slot down, or frees or reuses it, and the flows follow lazily; the flow
//! collector removes entries that no packet revisits.
//!
//! Lifecycle, per entry and its own direction: `last_seen` (coarse
//! monotonic ns) is rewritten only when older than [`FLOW_TOUCH_NS`];
//! [`FLOW_FIN`]/[`FLOW_RST`] are set on the entry of the direction the
//! FIN/RST went; a SYN without ACK clears a forward entry's bits and a
//! SYN+ACK a reply entry's (a reused port starts a new connection). The
//! flags are updated without atomics: two CPUs updating one entry at
//! once (one direction is normally one CPU) may lose a bit, which the
//! collector's idle timeout still covers.

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_loop};
use lb_common::{
    AF_INET, AddrBytes, BACKEND_DOWN, Backend, FLOW_FIN, FLOW_HOP_PEER, FLOW_REPLY, FLOW_RST,
    FLOW_TOUCH_NS, FlowKey, FlowValue, IF_HAS_V4, IF_HAS_V6, NO_BACKEND, PROTO_TCP,
    SNAT_PORT_ATTEMPTS, XDP_DROP_ORPHANS, XDP_SNAT_V4, XDP_SNAT_V6, XdpConfig, flow_stat,
    maps::FLOW_SCRATCH_REPLY, snat_port, xdp_counter,
};

use super::{Hop, Verdict, drop, mac_words, parse::addr_words, pass, zero};
use crate::maps::{BACKENDS, FLOW_SCRATCH, FLOW_STATS, FLOWS, IF_ADDRS};

/// TCP flag bits (byte 13 of the header).
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Backend `id` if it can take new flows of `family` for service
/// `service_id`: a used slot of that family and service (a slot freed and
/// reused for another service does not inherit old flows). Whether it is
/// failed does not matter here: the controller only selects a failed server
/// when nothing better exists (K3s fail-open).
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(super) fn backend(id: u32, family: u8, service_id: u32) -> Option<Backend> {
    if id == NO_BACKEND {
        return None;
    }
    BACKENDS
        .get(id)
        .copied()
        .filter(|b| b.family == family && b.service_id == service_id)
}

/// What an existing forward entry's backend slot says about the flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// The flow keeps its backend.
    Usable,
    /// Its server is failed or invalid ([`BACKEND_DOWN`]): the flow moves
    /// unless the service still picks it (fail-open).
    Down,
    /// The slot is free, or holds another server now: the flow moves.
    Gone,
}

/// The state of forward entry `flow`'s backend: [`Slot::Usable`] while its
/// slot is a used slot of `family` and the flow's service, not down, and
/// still holds the address and port the entry rewrites to.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(super) fn slot(flow: &FlowValue, family: u8) -> Slot {
    if flow.backend_id == NO_BACKEND {
        return Slot::Gone;
    }
    let Some(backend) = BACKENDS.get_ptr(flow.backend_id) else {
        return Slot::Gone;
    };
    // SAFETY: pointer into the array (its slots live as long as the map);
    // only its fields are read.
    let backend = unsafe { &*backend };
    if backend.family != family
        || backend.service_id != flow.service_id
        || backend.port != flow.dst_port
        || !same_addr(backend.addr, flow.dst)
    {
        return Slot::Gone;
    }
    if backend.flags & BACKEND_DOWN == 0 {
        Slot::Usable
    } else {
        Slot::Down
    }
}

/// Stores `hop` as `flow`'s cached next hop, valid for generation `generation`.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(super) fn cache_hop(flow: &mut FlowValue, hop: &Hop, generation: u32) {
    flow.hop_ifindex = hop.ifindex;
    flow.hop_gen = generation;
    if hop.peer {
        flow.flags |= FLOW_HOP_PEER;
    } else {
        flow.flags &= !FLOW_HOP_PEER;
    }
    let mut word = 0;
    while word < 3 {
        let [dst_0, dst_1] = hop.macs[word].to_ne_bytes();
        let [src_0, src_1] = hop.macs[word + 3].to_ne_bytes();
        flow.hop_dmac[2 * word] = dst_0;
        flow.hop_dmac[2 * word + 1] = dst_1;
        flow.hop_smac[2 * word] = src_0;
        flow.hop_smac[2 * word + 1] = src_1;
        word += 1;
    }
}

/// Entry `flow`'s cached next hop (the caller has checked it is valid).
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(super) fn cached_hop(flow: &FlowValue) -> Hop {
    Hop {
        ifindex: flow.hop_ifindex,
        macs: mac_words(flow.hop_dmac, flow.hop_smac),
        resolved: true,
        peer: flow.flags & FLOW_HOP_PEER != 0,
    }
}

/// The lifecycle of entry `flow` (of packet `key`, whose TCP flags are
/// `tcp_flags`) at time `now`: FIN/RST bits, `last_seen`, and for a
/// forward entry whose `last_seen` was due, its reply entry re-created if
/// the LRU evicted it (see the module's invariants).
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(super) fn touch(flow: &mut FlowValue, key: &FlowKey, tcp_flags: u8, now: u64) {
    let reply = flow.flags & FLOW_REPLY != 0;
    if key.proto == PROTO_TCP {
        let mut flags = flow.flags;
        // A forward SYN (no ACK) or a reply SYN+ACK: a new connection on
        // this tuple.
        if tcp_flags & TCP_SYN != 0 && (tcp_flags & TCP_ACK == 0) != reply {
            flags &= !(FLOW_FIN | FLOW_RST);
        }
        if tcp_flags & TCP_FIN != 0 {
            flags |= FLOW_FIN;
        }
        if tcp_flags & TCP_RST != 0 {
            flags |= FLOW_RST;
        }
        // Written only when it changes: the entry's cache line stays clean.
        if flags != flow.flags {
            flow.flags = flags;
        }
    }
    if now.saturating_sub(flow.last_seen) < FLOW_TOUCH_NS {
        return;
    }
    flow.last_seen = now;
    if !reply && !ensure_reply(flow, key, now) {
        // The reply entry's SNAT port went to another flow after the LRU
        // evicted it: this flow's replies can no longer reach its client.
        // Forget it; its next packet starts a new flow with a new port.
        if FLOWS.remove(key).is_ok() {
            count_entries(flow_stat::REMOVED_KERNEL, 1);
        }
    }
}

/// Adds `n` to this CPU's `flow_stats` counter `index` ([`flow_stat`]):
/// every entry the forwarders create or remove is counted, so the
/// controller can tell the LRU's evictions from the rest.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn count_entries(index: u32, n: u64) {
    if let Some(count) = FLOW_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot of this CPU; nothing else writes it meanwhile.
        unsafe { *count += n };
    }
}

/// Makes sure forward entry `flow` (of `key`) has its reply entry:
/// re-creates it (`BPF_NOEXIST`) when it is gone; false when its key now
/// belongs to another flow.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn ensure_reply(flow: &FlowValue, key: &FlowKey, now: u64) -> bool {
    let reply_key = FlowKey {
        src: flow.dst,
        dst: flow.src,
        src_port: flow.dst_port,
        dst_port: flow.src_port,
        proto: key.proto,
        family: key.family,
        pad: [0; 2],
    };
    if let Some(reply) = FLOWS.get_ptr(reply_key) {
        // SAFETY: pointer from a successful lookup; only its fields are read.
        return translates_for(unsafe { &*reply }, key);
    }
    let Some(reply) = FLOW_SCRATCH.get_ptr_mut(FLOW_SCRATCH_REPLY) else {
        return true;
    };
    // SAFETY: this CPU's scratch slot; nothing else uses it meanwhile.
    let reply = unsafe { &mut *reply };
    reply_of(reply, key, flow, now);
    let reply: &FlowValue = reply;
    // Lost a race with another CPU re-creating it: that one is as good.
    if FLOWS
        .insert(reply_key, reply, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        count_entries(flow_stat::CREATED, 1);
    }
    true
}

/// Writes into `reply` the reply entry of forward entry `flow` (of `key`),
/// seen at `now`.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn reply_of(reply: &mut FlowValue, key: &FlowKey, flow: &FlowValue, now: u64) {
    zero(reply);
    reply.src = key.dst;
    reply.dst = key.src;
    reply.src_port = key.dst_port;
    reply.dst_port = key.src_port;
    reply.backend_id = flow.backend_id;
    reply.service_id = flow.service_id;
    reply.flags = FLOW_REPLY;
    reply.last_seen = now;
}

/// Whether `reply` is a reply entry that turns packets back into packets
/// of flow `key` (VIP → this client and port).
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn translates_for(reply: &FlowValue, key: &FlowKey) -> bool {
    reply.flags & FLOW_REPLY != 0
        && reply.src_port == key.dst_port
        && reply.dst_port == key.src_port
        && same_addr(reply.src, key.dst)
        && same_addr(reply.dst, key.src)
}

/// Whether a packet without a flow entry and without a service is an
/// orphaned reply to drop: [`XDP_DROP_ORPHANS`] is set, and its
/// destination is the SNAT address of its family (the configured one, or
/// else the ingress interface's primary address, where replies arrive).
/// The caller has checked that the destination port lies in the SNAT range.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(super) fn orphan(config: &XdpConfig, key: &FlowKey, ingress: u32) -> bool {
    if config.flags & XDP_DROP_ORPHANS == 0 {
        return false;
    }
    let v4 = key.family == AF_INET;
    let flag = if v4 { XDP_SNAT_V4 } else { XDP_SNAT_V6 };
    if config.flags & flag != 0 {
        let configured = if v4 { &config.snat_v4 } else { &config.snat_v6 };
        return same_addr(*configured, key.dst);
    }
    let Some(addrs) = IF_ADDRS.get_ptr(ingress) else {
        return false;
    };
    // SAFETY: pointer from a successful lookup; only its fields are read.
    let addrs = unsafe { &*addrs };
    if v4 {
        addrs.flags & IF_HAS_V4 != 0 && same_addr(addrs.v4, key.dst)
    } else {
        addrs.flags & IF_HAS_V6 != 0 && same_addr(addrs.v6, key.dst)
    }
}

/// Chooses the SNAT address and port of a new flow (`hash` is its
/// [`lb_common::flow_hash`], which also picked the backend) and stores
/// both directions in `flows`, both seen at `now`. A SNAT port whose reply
/// entry already translates for this very flow (its forward entry was
/// evicted alone) is taken again rather than another port. `stale`: the
/// flow has a forward entry already (one it may no longer use), whose reply
/// entry goes first; without one, nothing is looked up for it.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(super) fn new_flow(
    key: &FlowKey,
    hash: u64,
    flow: &mut FlowValue,
    config: &XdpConfig,
    egress: u32,
    stale: bool,
    now: u64,
) -> Result<(), Verdict> {
    let (configured, flag, if_flag) = if key.family == AF_INET {
        (config.snat_v4, XDP_SNAT_V4, IF_HAS_V4)
    } else {
        (config.snat_v6, XDP_SNAT_V6, IF_HAS_V6)
    };
    flow.src = if config.flags & flag != 0 {
        configured
    } else {
        match IF_ADDRS.get_ptr(egress) {
            Some(addrs) => {
                // SAFETY: pointer from a successful lookup, copied at once.
                let addrs = unsafe { addrs.read() };
                if addrs.flags & if_flag == 0 {
                    return Err(pass(xdp_counter::PASS_NO_SNAT_ADDR));
                }
                if key.family == AF_INET {
                    addrs.v4
                } else {
                    addrs.v6
                }
            }
            None => return Err(pass(xdp_counter::PASS_NO_SNAT_ADDR)),
        }
    };
    if stale {
        remove_stale_reply(key);
    }
    let Some(reply) = FLOW_SCRATCH.get_ptr_mut(FLOW_SCRATCH_REPLY) else {
        return Err(drop(xdp_counter::DROP_FLOW_TABLE));
    };
    // SAFETY: this CPU's scratch slot; nothing else uses it meanwhile
    // (the program runs to completion on one CPU without preemption).
    let reply = unsafe { &mut *reply };
    reply_of(reply, key, flow, now);
    let reply: &FlowValue = reply;
    let mut search = PortSearch {
        reply_key: FlowKey {
            src: flow.dst,
            dst: flow.src,
            src_port: flow.dst_port,
            dst_port: 0,
            proto: key.proto,
            family: key.family,
            pad: [0; 2],
        },
        key,
        reply,
        hash,
        port_min: config.port_min,
        port_max: config.port_max,
        claimed: 0,
    };
    // `try_port` takes the loop index and the context pointer, as bpf_loop
    // calls it. Its result is not needed: should the helper fail (it can
    // only refuse its flags or a count above 8M), nothing is claimed and
    // the packet is dropped as `drop_snat_ports`.
    // SAFETY: `search` lives on this stack until bpf_loop returns.
    let _ = unsafe {
        bpf_loop(
            SNAT_PORT_ATTEMPTS,
            try_port as *mut c_void,
            (&raw mut search).cast(),
            0,
        )
    };
    if search.claimed == 0 {
        return Err(drop(xdp_counter::DROP_SNAT_PORTS));
    }
    let reply_key = search.reply_key;
    let reply_created = search.claimed == CLAIMED_NEW;
    flow.src_port = reply_key.dst_port;
    let flow: &FlowValue = flow;
    if FLOWS.insert(*key, flow, 0).is_err() {
        // A reply entry created here and removed again was never counted.
        if FLOWS.remove(reply_key).is_ok() && !reply_created {
            count_entries(flow_stat::REMOVED_KERNEL, 1);
        }
        return Err(drop(xdp_counter::DROP_FLOW_TABLE));
    }
    count_entries(
        flow_stat::CREATED,
        u64::from(reply_created) + u64::from(!stale),
    );
    Ok(())
}

/// Removes the reply entry of the forward entry that flow `key` has now,
/// if any (one whose backend it may no longer use: the caller is about to
/// rebuild it): left behind, it would keep its SNAT port claimed and keep
/// turning the old backend's packets into replies to the client until the
/// LRU evicts it. Its key is the reverse of the old rewrite (old backend →
/// SNAT address and port); it is removed only while it still translates
/// for this flow (after an LRU eviction the same backend, address and port
/// may serve another one). Called before the new SNAT port is claimed,
/// which may be this very one again. If the rebuild then fails (SNAT ports
/// or table full) the old forward entry stays and the next packet tries
/// again; the old backend's packets are no longer translated meanwhile.
///
/// The entry is looked up again rather than handed over by the caller: the
/// program's stack is nearly full, and a copy kept alive until here does
/// not fit.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn remove_stale_reply(key: &FlowKey) {
    let Some(stale) = FLOWS.get_ptr(key) else {
        return;
    };
    // SAFETY: pointer from a successful lookup; only its fields are read.
    let stale = unsafe { &*stale };
    if stale.flags & FLOW_REPLY != 0 {
        return;
    }
    let reply_key = FlowKey {
        src: stale.dst,
        dst: stale.src,
        src_port: stale.dst_port,
        dst_port: stale.src_port,
        proto: key.proto,
        family: key.family,
        pad: [0; 2],
    };
    let Some(reply) = FLOWS.get_ptr(reply_key) else {
        return;
    };
    // SAFETY: pointer from a successful lookup; only its fields are read
    // (no copy of the whole value on the small BPF stack).
    let reply = unsafe { &*reply };
    if translates_for(reply, key) && FLOWS.remove(reply_key).is_ok() {
        count_entries(flow_stat::REMOVED_KERNEL, 1);
    }
}

/// Whether two addresses are equal, compared word by word (a byte array
/// comparison may become a `memcmp` call, which BPF does not have). By
/// value: see [`addr_words`].
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
const fn same_addr(a: AddrBytes, b: AddrBytes) -> bool {
    let (a, b) = (addr_words(a), addr_words(b));
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// A new flow's search for a free SNAT port, on the program's stack and
/// shared with [`try_port`] through `bpf_loop`: the kernel verifies the
/// attempt once, not once per attempt and per path into the search.
#[repr(C)]
struct PortSearch {
    /// The reply entry's key; each attempt writes the port it tries.
    reply_key: FlowKey,
    /// The new flow's key (to recognise its own old reply entry).
    key: *const FlowKey,
    /// The reply entry to store (this CPU's scratch slot).
    reply: *const FlowValue,
    /// The flow's hash, which spreads its attempts over the range.
    hash: u64,
    /// First SNAT port ([`XdpConfig::port_min`]).
    port_min: u16,
    /// Last SNAT port ([`XdpConfig::port_max`]).
    port_max: u16,
    /// Once a port is claimed: [`CLAIMED_NEW`] (its reply entry created) or
    /// [`CLAIMED_OWN`] (this flow's own reply entry, overwritten); 0 before.
    claimed: u32,
}

/// [`PortSearch::claimed`]: a reply entry was created.
const CLAIMED_NEW: u32 = 1;
/// [`PortSearch::claimed`]: the flow's own reply entry was taken again.
const CLAIMED_OWN: u32 = 2;

/// SNAT port attempt `attempt` of the search at `ctx` (a [`PortSearch`]):
/// claims the port when its reply entry is free (`BPF_NOEXIST`) or already
/// translates for this very flow; returns 1 (stop) once claimed, 0 to try
/// the next port.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference, the key stays on the caller's stack: a copy would sit in this \
              callback's frame, which counts against the same 512 bytes"
)]
extern "C" fn try_port(attempt: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the context pointer given to it: the caller's
    // `PortSearch`, alive until bpf_loop returns; its pointers are the
    // flow's key on the caller's stack and this CPU's scratch reply entry.
    let search = unsafe { &mut *ctx.cast::<PortSearch>() };
    search.reply_key.dst_port = snat_port(
        search.hash,
        attempt as u32,
        search.port_min,
        search.port_max,
    );
    // SAFETY: see above.
    let (reply, key) = unsafe { (&*search.reply, &*search.key) };
    if FLOWS
        .insert(&search.reply_key, reply, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        search.claimed = CLAIMED_NEW;
        return 1;
    }
    if let Some(old) = FLOWS.get_ptr(&search.reply_key) {
        // SAFETY: pointer from a successful lookup; only its fields are read.
        if translates_for(unsafe { &*old }, key) {
            let _ = FLOWS.insert(&search.reply_key, reply, 0);
            search.claimed = CLAIMED_OWN;
            return 1;
        }
    }
    0
}
