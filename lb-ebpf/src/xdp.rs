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
//! Everything the program does not fully understand is passed to the stack
//! untouched (see [`lb_common::xdp_counter`] for each case); it drops only
//! packets for a VIP it cannot serve. Every packet is counted once in
//! `xdp_stats`.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        BPF_NOEXIST, bpf_fib_lookup, xdp_action,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{
    AF_INET, AF_INET6, AddrBytes, BACKEND_DOWN, Backend, FLOW_REPLY, FlowKey, FlowValue, IF_HAS_V4,
    IF_HAS_V6, NO_BACKEND, PROTO_TCP, PROTO_UDP, SERVICE_REMOTE, SNAT_PORT_ATTEMPTS, VipKey,
    XDP_SNAT_V4, XDP_SNAT_V6, XdpConfig, csum, flow_hash, snat_port, xdp_counter,
};

use crate::{
    choice,
    maps::{
        BACKEND_STATS, BACKENDS, FLOWS, IF_ADDRS, SERVICE_STATS, SERVICES, XDP_CONFIG, XDP_STATS,
    },
};

/// Ethernet header length (no VLAN tags: tagged frames are passed).
const ETH_LEN: usize = 14;
/// Offset of the IP header.
const L3: usize = ETH_LEN;
/// Offset of the TCP/UDP header after a 20-byte IPv4 header.
const L4_V4: usize = L3 + 20;
/// Offset of the TCP/UDP header after the fixed IPv6 header.
const L4_V6: usize = L3 + 40;
/// Offset of the IPv4 TTL (the word at this offset is TTL, protocol).
const V4_TTL: usize = L3 + 8;
/// Offset of the IPv4 header checksum.
const V4_CHECK: usize = L3 + 10;
/// Offset of the IPv4 source address (the destination follows).
const V4_SRC: usize = L3 + 12;
/// Offset of the IPv6 hop limit.
const V6_HOP_LIMIT: usize = L3 + 7;
/// Offset of the IPv6 source address (the destination follows).
const V6_SRC: usize = L3 + 8;
/// Offset of the checksum within a TCP header.
const TCP_CHECK: usize = 16;
/// Offset of the checksum within a UDP header.
const UDP_CHECK: usize = 6;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;

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

/// The program's entry: every packet ends up counted in `xdp_stats`.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn run(ctx: &XdpContext) -> u32 {
    let verdict = match parse(ctx) {
        Ok(packet) => forward(ctx, &packet),
        Err(counter) => pass(counter),
    };
    if let Some(count) = XDP_STATS.get_ptr_mut(verdict.counter) {
        // SAFETY: per-CPU slot of this CPU; nothing else writes it meanwhile.
        unsafe { *count += 1 };
    }
    verdict.action
}

/// A bounds-checked pointer to `N` bytes at `offset` into the packet.
#[expect(
    clippy::inline_always,
    reason = "the verifier must see the bounds check next to the access"
)]
#[inline(always)]
fn at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<*mut [u8; N]> {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut [u8; N])
}

/// Reads `N` bytes at `offset`.
#[expect(
    clippy::inline_always,
    reason = "the verifier must see the bounds check next to the access"
)]
#[inline(always)]
fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    // SAFETY: `at` checked that the N bytes lie within the packet; byte arrays
    // have alignment 1.
    at::<N>(ctx, offset).map(|p| unsafe { p.read() })
}

/// Writes `N` bytes at `offset` (silently skipped when out of bounds, which
/// `parse` has already ruled out for every offset used).
#[expect(
    clippy::inline_always,
    reason = "the verifier must see the bounds check next to the access"
)]
#[inline(always)]
fn write<const N: usize>(ctx: &XdpContext, offset: usize, bytes: [u8; N]) {
    if let Some(p) = at::<N>(ctx, offset) {
        // SAFETY: as in `read`; the packet is writable in XDP.
        unsafe { p.write(bytes) };
    }
}

/// Parses Ethernet, IP and the ports, or names the counter of the reason to
/// pass the packet.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Packet, u32> {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let ether_type = read::<2>(ctx, 12).ok_or(xdp_counter::PASS_TRUNCATED)?;
    let (family, proto, ttl, ip_len, l4, src, dst) = match u16::from_be_bytes(ether_type) {
        ETH_P_IP => {
            let ip = read::<20>(ctx, L3).ok_or(xdp_counter::PASS_TRUNCATED)?;
            let ihl = ip[0] & 0x0f;
            if ip[0] >> 4 != 4 || ihl < 5 {
                return Err(xdp_counter::PASS_TRUNCATED);
            }
            if ihl > 5 {
                return Err(xdp_counter::PASS_IP_OPTIONS);
            }
            let total = u16::from_be_bytes([ip[2], ip[3]]);
            if total < 20 || L3 + usize::from(total) > ctx.data_end() - ctx.data() {
                return Err(xdp_counter::PASS_TRUNCATED);
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & IPV4_FRAGMENT_MASK != 0 {
                return Err(xdp_counter::PASS_FRAGMENT);
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&ip[12..16]);
            dst[..4].copy_from_slice(&ip[16..20]);
            (AF_INET, ip[9], ip[8], total, L4_V4, src, dst)
        }
        ETH_P_IPV6 => {
            let ip = read::<40>(ctx, L3).ok_or(xdp_counter::PASS_TRUNCATED)?;
            if ip[0] >> 4 != 6 {
                return Err(xdp_counter::PASS_TRUNCATED);
            }
            let payload = u16::from_be_bytes([ip[4], ip[5]]);
            if L4_V6 + usize::from(payload) > ctx.data_end() - ctx.data() {
                return Err(xdp_counter::PASS_TRUNCATED);
            }
            let next = ip[6];
            if next != PROTO_TCP && next != PROTO_UDP {
                return Err(if is_ipv6_extension(next) {
                    xdp_counter::PASS_IPV6_EXT
                } else {
                    xdp_counter::PASS_NOT_TCP_UDP
                });
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&ip[8..24]);
            dst.copy_from_slice(&ip[24..40]);
            (
                AF_INET6,
                next,
                ip[7],
                payload.saturating_add(40),
                L4_V6,
                src,
                dst,
            )
        }
        _ => return Err(xdp_counter::PASS_NOT_IP),
    };
    let ports = match proto {
        PROTO_TCP => read::<20>(ctx, l4).map(|h| [h[0], h[1], h[2], h[3]]),
        PROTO_UDP => {
            let udp = read::<8>(ctx, l4).ok_or(xdp_counter::PASS_TRUNCATED)?;
            if family == AF_INET6 && udp[6] == 0 && udp[7] == 0 {
                // IPv6 requires a UDP checksum: the stack drops this one.
                return Err(xdp_counter::PASS_UDP6_ZERO_CSUM);
            }
            Some([udp[0], udp[1], udp[2], udp[3]])
        }
        _ => return Err(xdp_counter::PASS_NOT_TCP_UDP),
    }
    .ok_or(xdp_counter::PASS_TRUNCATED)?;
    Ok(Packet {
        key: FlowKey {
            src,
            dst,
            src_port: u16::from_be_bytes([ports[0], ports[1]]),
            dst_port: u16::from_be_bytes([ports[2], ports[3]]),
            proto,
            family,
            pad: [0; 2],
        },
        ttl,
        ip_len,
        frame_len,
    })
}

/// IPv6 extension headers (RFC 8200 and the IANA list): hop-by-hop,
/// routing, fragment, ESP, AH, destination options, mobility, HIP, shim6
/// and the two experimental values.
const fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// Backend `id` if it can take packets of `family` for service
/// `service_id`: a used slot of that family and service (a slot freed and
/// reused for another service does not inherit old flows). Whether it is
/// failed does not matter here: the controller only selects a failed server
/// when nothing better exists (K3s fail-open).
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn backend(id: u32, family: u8, service_id: u32) -> Option<Backend> {
    if id == NO_BACKEND {
        return None;
    }
    BACKENDS
        .get(id)
        .copied()
        .filter(|b| b.family == family && b.service_id == service_id)
}

/// Whether an existing flow may stay on its backend: a reply entry always,
/// a forward entry while its backend is a valid slot that is not failed or
/// invalid.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn keeps_backend(flow: &FlowValue, family: u8) -> bool {
    flow.flags & FLOW_REPLY != 0
        || backend(flow.backend_id, family, flow.service_id)
            .is_some_and(|b| b.flags & BACKEND_DOWN == 0)
}

/// The next hop of a rewritten packet.
struct Hop {
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
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
    let existing = FLOWS.get_ptr(key).map(|value| {
        // SAFETY: pointer from a successful lookup, copied at once.
        unsafe { value.read() }
    });
    let (flow, new_flow_hash) = match existing {
        Some(flow) if keeps_backend(&flow, key.family) => (flow, None),
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
            match stale {
                // A failed backend that is still the one to use (fail-open):
                // the flow keeps its SNAT port and reply entry instead of
                // being rebuilt.
                Some(flow) if flow.backend_id == backend_id && flow.service_id == service.id => {
                    (flow, None)
                }
                _ => {
                    let Some(backend) = backend(backend_id, key.family, service.id) else {
                        count_drop(service.id, ServiceDrop::NoBackend);
                        return drop(xdp_counter::DROP_NO_BACKEND);
                    };
                    // The source is filled in once the egress interface is known.
                    let flow = FlowValue {
                        src: [0; 16],
                        dst: backend.addr,
                        src_port: 0,
                        dst_port: backend.port,
                        backend_id,
                        service_id: service.id,
                        flags: 0,
                    };
                    (flow, Some(hash))
                }
            }
        }
    };
    if packet.ttl <= 1 {
        return pass(xdp_counter::PASS_TTL);
    }
    let hop = match next_hop(ctx, packet, &key.src, &flow.dst) {
        Ok(hop) => hop,
        Err(verdict) => {
            if verdict.action == xdp_action::XDP_DROP {
                count_drop(flow.service_id, ServiceDrop::Unreachable);
            }
            return verdict;
        }
    };
    let flow = match new_flow_hash {
        None => flow,
        Some(hash) => match new_flow(key, hash, flow, &config, hop.ifindex) {
            Ok(flow) => flow,
            Err(verdict) => {
                match verdict.counter {
                    xdp_counter::DROP_SNAT_PORTS => {
                        count_drop(flow.service_id, ServiceDrop::SnatPorts);
                    }
                    xdp_counter::DROP_FLOW_TABLE => {
                        count_drop(flow.service_id, ServiceDrop::FlowTable);
                    }
                    _ => {}
                }
                return verdict;
            }
        },
    };
    rewrite(ctx, packet, &flow, &hop);
    count_forwarded(&flow, packet.frame_len, new_flow_hash.is_some());
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

/// Chooses the SNAT address and port of a new flow (`hash` is its
/// [`flow_hash`], which also picked the backend) and stores both
/// directions in `flows`.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn new_flow(
    key: &FlowKey,
    hash: u64,
    mut flow: FlowValue,
    config: &XdpConfig,
    egress: u32,
) -> Result<FlowValue, Verdict> {
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
    remove_stale_reply(key);
    let reply = FlowValue {
        src: key.dst,
        dst: key.src,
        src_port: key.dst_port,
        dst_port: key.src_port,
        backend_id: flow.backend_id,
        service_id: flow.service_id,
        flags: FLOW_REPLY,
    };
    let mut reply_key = FlowKey {
        src: flow.dst,
        dst: flow.src,
        src_port: flow.dst_port,
        dst_port: 0,
        proto: key.proto,
        family: key.family,
        pad: [0; 2],
    };
    let mut claimed = false;
    let mut attempt = 0;
    while attempt < SNAT_PORT_ATTEMPTS {
        reply_key.dst_port = snat_port(hash, attempt, config.port_min, config.port_max);
        if FLOWS
            .insert(reply_key, reply, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            claimed = true;
            break;
        }
        attempt += 1;
    }
    if !claimed {
        return Err(drop(xdp_counter::DROP_SNAT_PORTS));
    }
    flow.src_port = reply_key.dst_port;
    if FLOWS.insert(*key, flow, 0).is_err() {
        let _ = FLOWS.remove(reply_key);
        return Err(drop(xdp_counter::DROP_FLOW_TABLE));
    }
    Ok(flow)
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
    if reply.flags & FLOW_REPLY != 0
        && reply.src_port == key.dst_port
        && reply.dst_port == key.src_port
        && same_addr(&reply.src, &key.dst)
        && same_addr(&reply.dst, &key.src)
    {
        let _ = FLOWS.remove(reply_key);
    }
}

/// Whether two addresses are equal, compared word by word (a byte array
/// comparison may become a `memcmp` call, which BPF does not have).
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
const fn same_addr(a: &AddrBytes, b: &AddrBytes) -> bool {
    let (a, b) = (words(a), words(b));
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// Rewrites addresses, ports, TTL, checksums and MACs in place.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn rewrite(ctx: &XdpContext, packet: &Packet, flow: &FlowValue, hop: &Hop) {
    let key = &packet.key;
    let old_ports = port_bytes(key.src_port, key.dst_port);
    let new_ports = port_bytes(flow.src_port, flow.dst_port);
    let (l4, check_at) = match (key.family, key.proto) {
        (AF_INET, PROTO_TCP) => (L4_V4, L4_V4 + TCP_CHECK),
        (AF_INET, _) => (L4_V4, L4_V4 + UDP_CHECK),
        (_, PROTO_TCP) => (L4_V6, L4_V6 + TCP_CHECK),
        _ => (L4_V6, L4_V6 + UDP_CHECK),
    };
    let Some(old_check) = read::<2>(ctx, check_at) else {
        return;
    };
    let old_check = u16::from_be_bytes(old_check);
    let udp = key.proto == PROTO_UDP;
    let mut l4_sum = csum::Update::new(old_check).replace(&old_ports, &new_ports);

    if key.family == AF_INET {
        let old_addrs = v4_pair(&key.src, &key.dst);
        let new_addrs = v4_pair(&flow.src, &flow.dst);
        write(ctx, V4_SRC, new_addrs);
        let ttl_proto = u16::from_be_bytes([packet.ttl, key.proto]);
        let new_ttl_proto = u16::from_be_bytes([packet.ttl - 1, key.proto]);
        write(ctx, V4_TTL, [packet.ttl - 1]);
        if let Some(check) = read::<2>(ctx, V4_CHECK) {
            let check = csum::Update::new(u16::from_be_bytes(check))
                .replace(&old_addrs, &new_addrs)
                .replace_word(ttl_proto, new_ttl_proto)
                .finish();
            write(ctx, V4_CHECK, check.to_be_bytes());
        }
        l4_sum = l4_sum.replace(&old_addrs, &new_addrs);
    } else {
        write(ctx, V6_SRC, flow.src);
        write(ctx, V6_SRC + 16, flow.dst);
        write(ctx, V6_HOP_LIMIT, [packet.ttl - 1]);
        l4_sum = l4_sum
            .replace(&key.src, &flow.src)
            .replace(&key.dst, &flow.dst);
    }
    write(ctx, l4, new_ports);
    // UDP over IPv4 may carry no checksum (0): it stays 0. A computed UDP
    // checksum of 0 is sent as 0xffff (RFC 768).
    if !(udp && old_check == 0) {
        let mut check = l4_sum.finish();
        if udp && check == 0 {
            check = 0xffff;
        }
        write(ctx, check_at, check.to_be_bytes());
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&hop.dmac);
    macs[6..].copy_from_slice(&hop.smac);
    write(ctx, 0, macs);
}

/// Source and destination port as the 4 bytes they occupy in the header.
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
const fn port_bytes(src: u16, dst: u16) -> [u8; 4] {
    let [a, b] = src.to_be_bytes();
    let [c, d] = dst.to_be_bytes();
    [a, b, c, d]
}

/// An IPv4 source and destination as the 8 bytes they occupy in the header.
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
const fn v4_pair(src: &AddrBytes, dst: &AddrBytes) -> [u8; 8] {
    [
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3],
    ]
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
