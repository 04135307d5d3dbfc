//! The forwarder for remote clients, shared by two hooks: XDP (`lb_xdp`)
//! and tc ingress (`lb_tc`). parse → look up → rewrite → send.
//!
//! A packet to a `remote` VIP gets full NAT: the destination becomes the
//! chosen backend and the source the node's SNAT address and a SNAT port, so
//! the backend answers the node. The `flows` map keeps both directions: the
//! client→VIP entry pins the flow to its backend, the backend→SNAT entry
//! turns replies back into VIP→client packets. Both hooks share the flow
//! table, the Maglev choice and every counter.
//!
//! This module is the flow ([`run`]: [`parse`] → look up the flow or choose
//! its backend → next hop → SNAT for a new flow → lifecycle → rewrite →
//! counters → send) and the small types its parts share; [`parse`] reads
//! the packet, [`nat`] holds the flow table's rules (which backend a flow
//! keeps, a new flow's SNAT address and port, the entries' lifecycle),
//! [`xdp`] and [`tc`] are the two hooks ([`Hook`]): how each reads its
//! context, rewrites headers and checksums, and sends the packet.
//!
//! Lookups per packet: a packet whose destination port lies outside the
//! SNAT range and whose bit in `vip_filter` is clear is for no remote VIP
//! and is passed at once (an inlined array read and a multiply, no hash
//! lookup: [`for_us`]). A packet whose destination port lies in the SNAT
//! range may be a reply, so `flows` is looked up first; any other packet
//! is looked up in `services` first, and only a VIP's packet in `flows`.
//! An established packet then costs its flow lookup, the backend check (an
//! array slot, inlined by the verifier: it stays on every forward packet,
//! cached hop or not, because a server marked down or a slot freed must
//! move the flow on its very next packet), the cached next hop, the
//! rewrite and the counters.
//!
//! Next-hop cache: an existing entry's [`FlowValue::hop_ifindex`] and MACs
//! are used while [`FlowValue::hop_gen`] equals [`XdpConfig::hop_gen`]
//! (the controller bumps it on route, neighbour and link changes);
//! otherwise `bpf_fib_lookup` answers and the entry is updated. MTU: the
//! FIB also checks the packet against the egress MTU (XDP: `tot_len`;
//! tc: the skb, GSO aware), and a cached packet skips that check. A flow
//! starts with a FIB lookup (MTU checked), and a packet of an established
//! flow larger than the egress MTU (an MTU lowered since, or a client
//! sending more than its first packets) goes out as it is: the egress
//! device drops it, no ICMP "fragmentation needed" comes back. A route or
//! link change (MTU changes included) bumps the generation and so brings
//! the check back for every flow's next packet.
//!
//! Everything the program does not fully understand is passed to the stack
//! untouched (see [`lb_common::xdp_counter`] for each case); it drops only
//! packets for a VIP it cannot serve, orphaned replies (with
//! [`lb_common::XDP_DROP_ORPHANS`]) and, on tc, a packet a rewrite helper
//! failed on. Every packet is counted once in `xdp_stats`, at the end of
//! [`run`]. Every function is `#[inline(always)]` (and generic over the
//! hook, so each program gets its own monomorphised copy): one flat
//! program, no BPF-to-BPF calls (but a new flow's SNAT port attempts, a
//! `bpf_loop` callback, see [`nat`]), and the bounds checks next to the
//! accesses for the verifier.

mod nat;
mod parse;
pub(crate) mod tc;
pub(crate) mod xdp;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns},
};
use lb_common::{
    AF_INET, AddrBytes, FLOW_REPLY, FlowKey, FlowValue, IF_PEER_NETNS, SERVICE_REMOTE, VipFilter,
    VipKey, XdpConfig, flow_hash, maps::FLOW_SCRATCH_NEW, xdp_counter,
};

use self::parse::addr_words;
use crate::{
    choice, klog,
    maps::{
        BACKEND_STATS, FLOW_SCRATCH, FLOWS, IF_ADDRS, SERVICE_STATS, SERVICES, VIP_FILTER,
        XDP_CONFIG, XDP_STATS,
    },
};

/// What becomes of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// To the stack, untouched.
    Pass,
    /// Dropped.
    Drop,
    /// Sent on: the hook's own return code (redirect, `XDP_TX`).
    Sent(u32),
}

/// What happens to a packet, and which `xdp_stats` counter records it.
#[derive(Clone, Copy)]
pub(crate) struct Verdict {
    action: Action,
    counter: u32,
}

const fn pass(counter: u32) -> Verdict {
    Verdict {
        action: Action::Pass,
        counter,
    }
}

const fn drop(counter: u32) -> Verdict {
    Verdict {
        action: Action::Drop,
        counter,
    }
}

/// The fields of a TCP/UDP packet the program reads.
#[derive(Clone, Copy)]
pub(crate) struct Packet {
    key: FlowKey,
    /// The source and destination port as the word they form in the
    /// header (as it sits in memory).
    ports: u32,
    /// TTL or hop limit.
    ttl: u8,
    /// The TCP flag bits (0 for UDP).
    tcp_flags: u8,
    /// IP total length (IPv6: header plus payload), for the FIB's MTU check.
    ip_len: u16,
    /// The packet's length from the Ethernet header on, for the byte counters.
    frame_len: u64,
}

/// A packet's flow: its entry in `flows`, or a new flow (the rewrite
/// towards the chosen backend, the hash that chose it, and whether the flow
/// has a forward entry it may no longer use) to store.
enum Found<'scratch> {
    Existing(*mut FlowValue),
    /// The new flow is built in this CPU's `flow_scratch` slot.
    New(&'scratch mut FlowValue, u64, bool),
}

/// The next hop of a rewritten packet.
pub(crate) struct Hop {
    ifindex: u32,
    /// Destination then source MAC: the first 12 bytes of the Ethernet
    /// header, as six 16-bit words as they sit in memory.
    macs: [u16; 6],
    /// The MACs are known; without, the kernel resolves the neighbour
    /// (tc's `bpf_redirect_neigh`, never XDP).
    resolved: bool,
    /// The egress interface is a veth whose peer lives in another
    /// namespace (`if_addrs`' [`IF_PEER_NETNS`]; only looked up where
    /// [`Hook::PEER`]): tc hands the packet to the peer's ingress.
    peer: bool,
}

/// A hook the forwarder runs in: how it reads the packet, rewrites it and
/// sends it on.
pub(crate) trait Hook: EbpfContext {
    /// The hook's return code for "to the stack".
    const PASS: u32;
    /// The hook's return code for "drop".
    const DROP: u32;
    /// Whether a packet whose neighbour is not resolved yet can be sent
    /// with the kernel resolving it (`bpf_redirect_neigh`).
    const NEIGH: bool;
    /// Whether a packet can go straight into a veth's peer in another
    /// namespace (`bpf_redirect_peer`, tc ingress only).
    const PEER: bool;
    /// Start of the directly readable packet data.
    fn start(&self) -> usize;
    /// End of the directly readable packet data.
    fn end(&self) -> usize;
    /// The whole packet's length (tc: beyond the linear part too).
    fn packet_len(&self) -> usize;
    /// The interface the packet came in on.
    fn ingress(&self) -> u32;
    /// `tot_len` for `bpf_fib_lookup` (0: the kernel checks the packet
    /// itself against the egress MTU).
    fn fib_len(packet: &Packet) -> u16;
    /// Rewrites addresses, ports, TTL, checksums and (when resolved) MACs;
    /// false if the packet could not be rewritten (it must be dropped).
    fn rewrite(&self, packet: &Packet, flow: &FlowValue, hop: &Hop) -> bool;
    /// Sends the rewritten packet towards `hop`.
    fn send(&self, hop: &Hop) -> Verdict;
}

/// The program's entry: every packet ends up counted in `xdp_stats`.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn run<H: Hook>(ctx: &H) -> u32 {
    let verdict = match parse::parse(ctx) {
        Ok(packet) if !for_us(&packet.key) => pass(xdp_counter::PASS_NOT_VIP),
        Ok(packet) => {
            let verdict = forward(ctx, &packet);
            // Logged here, once `forward`'s locals are gone: the record
            // needs stack the forwarding path does not leave.
            if verdict.action == Action::Drop {
                klog::xdp_drop(ctx, verdict.counter, &packet.key);
            }
            verdict
        }
        Err(counter) => pass(counter),
    };
    if let Some(count) = XDP_STATS.get_ptr_mut(verdict.counter) {
        // SAFETY: per-CPU slot of this CPU; nothing else writes it meanwhile.
        unsafe { *count += 1 };
    }
    match verdict.action {
        Action::Pass => H::PASS,
        Action::Drop => H::DROP,
        Action::Sent(code) => code,
    }
}

/// Looks the packet up and forwards it, or says why not.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
#[expect(
    clippy::too_many_lines,
    reason = "the lookup stays written out: returned from functions, its values cost stack the program does not have"
)]
fn forward<H: Hook>(ctx: &H, packet: &Packet) -> Verdict {
    let Some(config) = XDP_CONFIG.get_ptr(0) else {
        return pass(xdp_counter::PASS_NOT_VIP);
    };
    // SAFETY: pointer to the array's only slot, valid for the program's
    // run; only its fields are read.
    let config: &XdpConfig = unsafe { &*config };
    if config.port_max == 0 {
        return pass(xdp_counter::PASS_NOT_VIP);
    }
    let key = &packet.key;
    // Replies are addressed to a SNAT port; anything else can only be a
    // VIP's packet, whose service is looked up first.
    let maybe_reply = key.dst_port >= config.port_min && key.dst_port <= config.port_max;
    let early = if maybe_reply {
        FLOWS.get_ptr_mut(key)
    } else {
        None
    };
    // Every dereference of a `flows` pointer below: the pointer comes from a
    // successful lookup; the entry's memory stays valid for the program's
    // run (RCU), and a concurrent update at worst shows a mix of the old and
    // new rewrite, as with any map read.
    let found = match early {
        // SAFETY: a `flows` pointer, see above.
        Some(flow) if unsafe { (*flow).flags } & FLOW_REPLY != 0 => Found::Existing(flow),
        _ => {
            let vip = VipKey {
                addr: key.dst,
                port: key.dst_port,
                proto: key.proto,
                family: key.family,
            };
            let Some(service) = SERVICES.get_ptr(vip) else {
                if early.is_none() && maybe_reply && nat::orphan(config, key, ctx.ingress()) {
                    return drop(xdp_counter::DROP_ORPHAN_REPLY);
                }
                return pass(xdp_counter::PASS_NOT_VIP);
            };
            // SAFETY: pointer from a successful lookup, copied at once.
            let service = unsafe { service.read() };
            if service.flags & SERVICE_REMOTE == 0 {
                return pass(xdp_counter::PASS_NOT_VIP);
            }
            let existing = if maybe_reply {
                early
            } else {
                FLOWS.get_ptr_mut(key)
            };
            let slot = match existing {
                // SAFETY: a `flows` pointer, see above.
                Some(flow) => nat::slot(unsafe { &*flow }, key.family),
                None => nat::Slot::Gone,
            };
            match existing {
                Some(flow) if slot == nat::Slot::Usable => Found::Existing(flow),
                stale => {
                    let hash = flow_hash(key);
                    let backend_id = choice::pick(&service, || hash);
                    // A failed backend that is still the one to use
                    // (fail-open): the flow keeps its SNAT port and reply
                    // entry instead of being rebuilt. A slot reused for
                    // another server (`Gone`) is never kept.
                    let keep = stale.filter(|flow| {
                        // SAFETY: a `flows` pointer, see above.
                        let flow = unsafe { &**flow };
                        slot == nat::Slot::Down
                            && flow.backend_id == backend_id
                            && flow.service_id == service.id
                    });
                    if let Some(flow) = keep {
                        Found::Existing(flow)
                    } else {
                        let Some(backend) = nat::backend(backend_id, key.family, service.id) else {
                            count_drop(service.id, ServiceDrop::NoBackend);
                            return drop(xdp_counter::DROP_NO_BACKEND);
                        };
                        let Some(flow) = FLOW_SCRATCH.get_ptr_mut(FLOW_SCRATCH_NEW) else {
                            return drop(xdp_counter::DROP_FLOW_TABLE);
                        };
                        // SAFETY: this CPU's scratch slot; nothing else uses
                        // it while the program runs.
                        let flow = unsafe { &mut *flow };
                        // The source is filled in once the egress interface
                        // is known.
                        zero(flow);
                        flow.dst = backend.addr;
                        flow.dst_port = backend.port;
                        flow.backend_id = backend_id;
                        flow.service_id = service.id;
                        Found::New(flow, hash, stale.is_some())
                    }
                }
            }
        }
    };
    if packet.ttl <= 1 {
        return pass(xdp_counter::PASS_TTL);
    }
    let cached = match &found {
        Found::Existing(flow) => {
            // SAFETY: a `flows` pointer, see above.
            let flow = unsafe { &**flow };
            flow.hop_ifindex != 0 && flow.hop_gen == config.hop_gen
        }
        Found::New(..) => false,
    };
    let hop = match &found {
        // SAFETY: a `flows` pointer, see above.
        Found::Existing(flow) if cached => nat::cached_hop(unsafe { &**flow }),
        _ => {
            let (dst, service_id) = match &found {
                // SAFETY: a `flows` pointer, see above.
                Found::Existing(flow) => unsafe { ((**flow).dst, (**flow).service_id) },
                Found::New(flow, ..) => (flow.dst, flow.service_id),
            };
            match next_hop(ctx, packet, dst) {
                Ok(hop) => hop,
                Err(verdict) => {
                    if verdict.action == Action::Drop {
                        count_drop(service_id, ServiceDrop::Unreachable);
                    }
                    return verdict;
                }
            }
        }
    };
    // SAFETY: the coarse clock helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let new = matches!(found, Found::New(..));
    let flow: &FlowValue = match found {
        Found::New(flow, hash, stale) => {
            let service_id = flow.service_id;
            flow.last_seen = now;
            if hop.resolved {
                nat::cache_hop(flow, &hop, config.hop_gen);
            }
            // Its first packet's FIN/RST bits go in before it is stored.
            nat::touch(flow, key, packet.tcp_flags, now);
            if let Err(verdict) = nat::new_flow(key, hash, flow, config, hop.ifindex, stale, now) {
                match verdict.counter {
                    xdp_counter::DROP_SNAT_PORTS => {
                        count_drop(service_id, ServiceDrop::SnatPorts);
                    }
                    xdp_counter::DROP_FLOW_TABLE => {
                        count_drop(service_id, ServiceDrop::FlowTable);
                    }
                    _ => {}
                }
                return verdict;
            }
            // Stored as it is in the scratch slot: the packet is rewritten
            // from there, without looking the new entry up again.
            flow
        }
        Found::Existing(flow) => {
            // SAFETY: a `flows` pointer, see above; the entry is written in
            // place (the hop is a cache: a racing write is as good; for
            // `touch`, see `nat` for what racing writers may lose).
            let flow = unsafe { &mut *flow };
            if !cached && hop.resolved {
                nat::cache_hop(flow, &hop, config.hop_gen);
            }
            nat::touch(flow, key, packet.tcp_flags, now);
            flow
        }
    };
    if !ctx.rewrite(packet, flow, &hop) {
        return drop(xdp_counter::DROP_REWRITE);
    }
    count_forwarded(flow, packet.frame_len, new);
    ctx.send(&hop)
}

/// Whether the packet of `key` may be for the forwarder at all: a reply
/// (its destination port lies in the SNAT range) or a packet for a remote
/// VIP (its bit in `vip_filter` is set, see [`lb_common::VipFilter`]).
/// False means no `flows` or `services` lookup is needed: checked in
/// [`run`] before [`forward`], so most of a node's traffic leaves before
/// any of the forwarder's state is built.
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
fn for_us(key: &FlowKey) -> bool {
    let Some(config) = XDP_CONFIG.get(0) else {
        return false;
    };
    if key.dst_port >= config.port_min && key.dst_port <= config.port_max {
        return true;
    }
    let vip = VipKey {
        addr: key.dst,
        port: key.dst_port,
        proto: key.proto,
        family: key.family,
    };
    let (word, mask) = VipFilter::word_and_mask(VipFilter::bit(&vip));
    VIP_FILTER.get(word).is_some_and(|bits| bits & mask != 0)
}

/// Asks the FIB for the next hop towards `dst`, as if the packet were
/// routed by the stack from the ingress interface.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn next_hop<H: Hook>(ctx: &H, packet: &Packet, dst: AddrBytes) -> Result<Hop, Verdict> {
    let src = addr_words(packet.key.src);
    let dst = addr_words(dst);
    let mut params = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    zero(params.as_mut_ptr());
    // SAFETY: bpf_fib_lookup is plain old data, now all zero (a valid value).
    let mut params = unsafe { params.assume_init() };
    params.family = packet.key.family;
    params.l4_protocol = packet.key.proto;
    params.__bindgen_anon_1.tot_len = H::fib_len(packet);
    params.ifindex = ctx.ingress();
    if packet.key.family == AF_INET {
        params.__bindgen_anon_3.ipv4_src = src[0];
        params.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        params.__bindgen_anon_3.ipv6_src = src;
        params.__bindgen_anon_4.ipv6_dst = dst;
    }
    // SAFETY: `params` is a valid bpf_fib_lookup on the stack and the size
    // passed is its size; the helper accepts both the XDP and the skb
    // context.
    let ret = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &raw mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match ret as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(Hop {
            ifindex: params.ifindex,
            macs: mac_words(params.dmac, params.smac),
            resolved: true,
            peer: H::PEER && peer_in_other_netns(params.ifindex),
        }),
        // The FIB has filled in the egress interface; tc lets the kernel
        // resolve the neighbour.
        BPF_FIB_LKUP_RET_NO_NEIGH if H::NEIGH => Ok(Hop {
            ifindex: params.ifindex,
            macs: [0; 6],
            resolved: false,
            peer: false,
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(pass(xdp_counter::PASS_NO_NEIGH)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(pass(xdp_counter::PASS_FRAG_NEEDED)),
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Err(drop(xdp_counter::DROP_UNREACHABLE))
        }
        _ => Err(pass(xdp_counter::PASS_FIB_OTHER)),
    }
}

/// Whether interface `ifindex` is a veth (or netkit) whose peer lives in
/// another network namespace, as the controller marks it in `if_addrs`
/// ([`IF_PEER_NETNS`]).
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
fn peer_in_other_netns(ifindex: u32) -> bool {
    IF_ADDRS
        .get_ptr(ifindex)
        // SAFETY: pointer from a successful lookup; one field is read.
        .is_some_and(|addrs| unsafe { (*addrs).flags } & IF_PEER_NETNS != 0)
}

/// Sets every byte of `*value` to zero, four at a time. Volatile stores:
/// the compiler would turn plain zeroing into a `memset` call (a BPF-to-BPF
/// call running a byte loop, hundreds of instructions for a FIB request).
/// `T` must be plain old data whose size is a multiple of 4 and whose
/// alignment is at least 4 (checked at compile time).
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
fn zero<T>(value: *mut T) {
    const {
        assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4);
    }
    let words = value.cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: `value` points to a writable T (the callers pass a map
        // value or a local); word i lies within it, and the alignment
        // suffices for u32 (checked above).
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Destination and source MAC as the six 16-bit words they form at the
/// start of the Ethernet header (as they sit in memory).
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
const fn mac_words(dst: [u8; 6], src: [u8; 6]) -> [u16; 6] {
    [
        u16::from_ne_bytes([dst[0], dst[1]]),
        u16::from_ne_bytes([dst[2], dst[3]]),
        u16::from_ne_bytes([dst[4], dst[5]]),
        u16::from_ne_bytes([src[0], src[1]]),
        u16::from_ne_bytes([src[2], src[3]]),
        u16::from_ne_bytes([src[4], src[5]]),
    ]
}

/// Why a VIP's packet was dropped, for its service's counters.
#[derive(Clone, Copy)]
enum ServiceDrop {
    NoBackend,
    SnatPorts,
    FlowTable,
    Unreachable,
}

/// Counts a dropped packet of service `service_id`.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn count_drop(service_id: u32, reason: ServiceDrop) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe {
            match reason {
                ServiceDrop::NoBackend => (*stats).xdp_drop_no_backend += 1,
                ServiceDrop::SnatPorts => (*stats).xdp_drop_snat_ports += 1,
                ServiceDrop::FlowTable => (*stats).xdp_drop_flow_table += 1,
                ServiceDrop::Unreachable => (*stats).xdp_drop_unreachable += 1,
            }
        }
    }
}

/// Packet, byte and new-flow counters of the flow's service and backend.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn count_forwarded(flow: &FlowValue, bytes: u64, new: bool) {
    let new = u64::from(new);
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(flow.service_id) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe {
            (*stats).xdp_packets += 1;
            (*stats).xdp_bytes += bytes;
            (*stats).xdp_flows += new;
        }
    }
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(flow.backend_id) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe {
            (*stats).xdp_packets += 1;
            (*stats).xdp_bytes += bytes;
            (*stats).xdp_flows += new;
        }
    }
}
