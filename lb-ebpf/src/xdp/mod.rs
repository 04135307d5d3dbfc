//! The XDP forwarder for remote clients: parse → look up → rewrite.
//!
//! A packet to a `remote` VIP gets full NAT: the destination becomes the
//! chosen backend and the source the node's SNAT address and a SNAT port, so
//! the backend answers the node. The `flows` map keeps both directions: the
//! client→VIP entry pins the flow to its backend, the backend→SNAT entry
//! turns replies back into VIP→client packets. The next hop comes from
//! `bpf_fib_lookup`; the packet leaves with `bpf_redirect`, or `XDP_TX` when
//! it goes back out of the interface it came in on.
//!
//! This module is the flow ([`run`]: [`parse`] → look up the flow or choose
//! its backend → FIB → SNAT for a new flow → [`rewrite`] → counters) and the
//! small types its parts share; [`parse`] reads the packet, [`nat`] holds
//! the flow table's rules (which backend a flow keeps, a new flow's SNAT
//! address and port), [`rewrite`] changes the headers and checksums.
//!
//! Everything the program does not fully understand is passed to the stack
//! untouched (see [`lb_common::xdp_counter`] for each case); it drops only
//! packets for a VIP it cannot serve. Every packet is counted once in
//! `xdp_stats`, at the end of [`run`]. Every function is
//! `#[inline(always)]`: one flat program, no BPF-to-BPF calls, and the
//! bounds checks next to the accesses for the verifier.

mod nat;
mod parse;
mod rewrite;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        bpf_fib_lookup, xdp_action,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{
    AF_INET, AddrBytes, FlowKey, FlowValue, SERVICE_REMOTE, VipKey, flow_hash,
    maps::FLOW_SCRATCH_NEW, xdp_counter,
};

use crate::{
    choice, klog,
    maps::{BACKEND_STATS, FLOW_SCRATCH, FLOWS, SERVICE_STATS, SERVICES, XDP_CONFIG, XDP_STATS},
};

/// What happens to a packet, and which `xdp_stats` counter records it.
#[derive(Clone, Copy)]
struct Verdict {
    action: u32,
    counter: u32,
}

const fn pass(counter: u32) -> Verdict {
    Verdict {
        action: xdp_action::XDP_PASS,
        counter,
    }
}

const fn drop(counter: u32) -> Verdict {
    Verdict {
        action: xdp_action::XDP_DROP,
        counter,
    }
}

/// The fields of a TCP/UDP packet the program reads.
#[derive(Clone, Copy)]
struct Packet {
    key: FlowKey,
    /// TTL or hop limit.
    ttl: u8,
    /// IP total length (IPv6: header plus payload), for the FIB's MTU check.
    ip_len: u16,
    /// The frame length, for the byte counters.
    frame_len: u64,
}

/// A packet's flow: its entry in `flows`, or a new flow (the rewrite
/// towards the chosen backend, and the hash that chose it) to store.
enum Found {
    Existing(*const FlowValue),
    New(&'static mut FlowValue, u64),
}

/// The next hop of a rewritten packet.
struct Hop {
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// The program's entry: every packet ends up counted in `xdp_stats`.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn run(ctx: &XdpContext) -> u32 {
    let verdict = match parse::parse(ctx) {
        Ok(packet) => {
            let verdict = forward(ctx, &packet);
            // Logged here, once `forward`'s locals are gone: the record
            // needs stack the forwarding path does not leave.
            if verdict.action == xdp_action::XDP_DROP {
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
    verdict.action
}

/// Looks the packet up and forwards it, or says why not.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn forward(ctx: &XdpContext, packet: &Packet) -> Verdict {
    let Some(config) = XDP_CONFIG.get(0).copied() else {
        return pass(xdp_counter::PASS_NOT_VIP);
    };
    if config.port_max == 0 {
        return pass(xdp_counter::PASS_NOT_VIP);
    }
    let key = &packet.key;
    // The flow's entry, or the backend chosen for a new flow. This stays
    // written out here: returned from a function in `nat`, the pair costs
    // stack the program does not have.
    let existing = FLOWS.get_ptr(key);
    // SAFETY (both reads): pointer from a successful lookup; the entry's
    // memory stays valid for the program's run (RCU), and a concurrent
    // update at worst shows a mix of the old and new rewrite, as with any
    // map read.
    let found = match existing {
        Some(flow) if nat::keeps_backend(unsafe { &*flow }, key.family) => Found::Existing(flow),
        stale => {
            let vip = VipKey {
                addr: key.dst,
                port: key.dst_port,
                proto: key.proto,
                family: key.family,
            };
            let Some(service) = SERVICES.get_ptr(vip) else {
                return pass(xdp_counter::PASS_NOT_VIP);
            };
            // SAFETY: pointer from a successful lookup, copied at once.
            let service = unsafe { service.read() };
            if service.flags & SERVICE_REMOTE == 0 {
                return pass(xdp_counter::PASS_NOT_VIP);
            }
            let hash = flow_hash(key);
            let backend_id = choice::pick(&service, || hash);
            // A failed backend that is still the one to use (fail-open):
            // the flow keeps its SNAT port and reply entry instead of
            // being rebuilt.
            let keep = stale.filter(|flow| {
                // SAFETY: as above.
                let flow = unsafe { &**flow };
                flow.backend_id == backend_id && flow.service_id == service.id
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
                // SAFETY: this CPU's scratch slot; nothing else uses it
                // while the program runs.
                let flow = unsafe { &mut *flow };
                // The source is filled in once the egress interface is known.
                *flow = FlowValue {
                    src: [0; 16],
                    dst: backend.addr,
                    src_port: 0,
                    dst_port: backend.port,
                    backend_id,
                    service_id: service.id,
                    ..FlowValue::default()
                };
                Found::New(flow, hash)
            }
        }
    };
    if packet.ttl <= 1 {
        return pass(xdp_counter::PASS_TTL);
    }
    let (dst, service_id) = match &found {
        // SAFETY: as above.
        Found::Existing(flow) => unsafe { ((**flow).dst, (**flow).service_id) },
        Found::New(flow, _) => (flow.dst, flow.service_id),
    };
    let hop = match next_hop(ctx, packet, &key.src, &dst) {
        Ok(hop) => hop,
        Err(verdict) => {
            if verdict.action == xdp_action::XDP_DROP {
                count_drop(service_id, ServiceDrop::Unreachable);
            }
            return verdict;
        }
    };
    let new = matches!(found, Found::New(..));
    let flow = match found {
        Found::New(flow, hash) => {
            if let Err(verdict) = nat::new_flow(key, hash, flow, &config, hop.ifindex) {
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
            let Some(flow) = FLOWS.get_ptr(key) else {
                count_drop(service_id, ServiceDrop::FlowTable);
                return drop(xdp_counter::DROP_FLOW_TABLE);
            };
            flow
        }
        Found::Existing(flow) => flow,
    };
    // SAFETY: as above.
    let flow = unsafe { &*flow };
    rewrite::rewrite(ctx, packet, flow, &hop);
    count_forwarded(flow, packet.frame_len, new);
    let ingress = ctx.ingress_ifindex() as u32;
    if hop.ifindex == ingress {
        return Verdict {
            action: xdp_action::XDP_TX,
            counter: xdp_counter::TX,
        };
    }
    // SAFETY: bpf_redirect only records the target; it returns XDP_REDIRECT
    // on success and XDP_ABORTED for bad flags (we pass none).
    let action = unsafe { bpf_redirect(hop.ifindex, 0) } as u32;
    Verdict {
        action,
        counter: xdp_counter::REDIRECT,
    }
}

/// Asks the FIB for the next hop towards `dst`, as if the packet (source
/// `src`) were routed by the stack from the ingress interface.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    packet: &Packet,
    src: &AddrBytes,
    dst: &AddrBytes,
) -> Result<Hop, Verdict> {
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = packet.key.family;
    params.l4_protocol = packet.key.proto;
    params.__bindgen_anon_1.tot_len = packet.ip_len;
    params.ifindex = ctx.ingress_ifindex() as u32;
    if packet.key.family == AF_INET {
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    } else {
        params.__bindgen_anon_3.ipv6_src = words(src);
        params.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    // SAFETY: `params` is a valid bpf_fib_lookup on the stack and the size
    // passed is its size; the helper accepts the XDP context.
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
            smac: params.smac,
            dmac: params.dmac,
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(pass(xdp_counter::PASS_NO_NEIGH)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(pass(xdp_counter::PASS_FRAG_NEEDED)),
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Err(drop(xdp_counter::DROP_UNREACHABLE))
        }
        _ => Err(pass(xdp_counter::PASS_FIB_OTHER)),
    }
}

/// An address as four native-order words (the FIB helper's IPv6 layout).
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
const fn words(bytes: &AddrBytes) -> [u32; 4] {
    [
        u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        u32::from_ne_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
    ]
}

/// The per-service drop counters (besides `xdp_stats`).
#[derive(Clone, Copy)]
enum ServiceDrop {
    NoBackend,
    SnatPorts,
    FlowTable,
    Unreachable,
}

/// Counts a dropped packet of service `service_id` in its `service_stats`.
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
