//! The XDP hook (`lb_xdp`): the frame is read and written directly, the
//! packet leaves with `bpf_redirect`, or `XDP_TX` when it goes back out of
//! the interface it came in on. A next hop whose neighbour is unresolved
//! is passed to the stack (`pass_no_neigh`), which resolves it.
//!
//! Rewriting a forwarded packet in place: addresses and ports (the flow's
//! rewrite), TTL or hop limit, the next hop's MACs, and the checksums.
//! XDP cannot see an skb's checksum state: a packet carrying a partial
//! checksum (`CHECKSUM_PARTIAL`, sent from a local veth with TX checksum
//! offload) gets a wrong one here; on such devices tc is the hook to use.
//!
//! Invariants: called only for a packet [`super::parse::parse`] accepted
//! (so every offset written lies within the frame; the accesses are still
//! bounds-checked for the verifier) with a TTL above 1. Checksums are
//! updated incrementally ([`lb_common::csum`], RFC 1624) over exactly the
//! bytes that change: the IPv4 header checksum over addresses and TTL, the
//! TCP/UDP checksum over ports and addresses (its pseudo-header). A UDP/IPv4
//! packet without a checksum (0) keeps none; a computed UDP checksum of 0
//! is sent as 0xffff (RFC 768).

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, programs::XdpContext};
use lb_common::{AF_INET, AddrBytes, FlowValue, PROTO_TCP, PROTO_UDP, csum, xdp_counter};

use super::{
    Action, Hook, Hop, Packet, Verdict,
    parse::{
        L4_V4, L4_V6, TCP_CHECK, UDP_CHECK, V4_CHECK, V4_SRC, V4_TTL, V6_HOP_LIMIT, V6_SRC, read,
        write,
    },
};

#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
impl Hook for XdpContext {
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;
    const NEIGH: bool = false;

    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    #[inline(always)]
    fn packet_len(&self) -> usize {
        self.data_end() - self.data()
    }

    #[inline(always)]
    fn ingress(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn fib_len(packet: &Packet) -> u16 {
        packet.ip_len
    }

    #[inline(always)]
    fn rewrite(&self, packet: &Packet, flow: &FlowValue, hop: &Hop) -> bool {
        rewrite(self, packet, flow, hop);
        true
    }

    #[inline(always)]
    fn send(&self, hop: &Hop) -> Verdict {
        if hop.ifindex == self.ingress() {
            return Verdict {
                action: Action::Sent(xdp_action::XDP_TX),
                counter: xdp_counter::TX,
            };
        }
        // SAFETY: bpf_redirect only records the target; it returns
        // XDP_REDIRECT on success and XDP_ABORTED for bad flags (we pass
        // none).
        let code = unsafe { bpf_redirect(hop.ifindex, 0) } as u32;
        Verdict {
            action: Action::Sent(code),
            counter: xdp_counter::REDIRECT,
        }
    }
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
