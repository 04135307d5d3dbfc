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
//! words that change: the IPv4 header checksum over addresses and TTL, the
//! TCP/UDP checksum over ports and addresses (its pseudo-header). A UDP/IPv4
//! packet without a checksum (0) keeps none; a computed UDP checksum of 0
//! is sent as 0xffff (RFC 768).

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, programs::XdpContext};
use lb_common::{AF_INET, FlowValue, PROTO_TCP, PROTO_UDP, csum::Delta, xdp_counter};

use super::{
    Action, Hook, Hop, Packet, Verdict,
    parse::{
        L4_V4, L4_V6, TCP_CHECK, UDP_CHECK, V4_CHECK, V4_SRC, V4_TTL, V6_HOP_LIMIT, V6_SRC,
        addr_words, load, store, write_words,
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
    const PEER: bool = false;

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

/// Rewrites addresses, ports, TTL, checksums and MACs in place, a word at
/// a time (words as they sit in the packet, see [`lb_common::csum`]).
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn rewrite(ctx: &XdpContext, packet: &Packet, flow: &FlowValue, hop: &Hop) {
    let key = &packet.key;
    let (l4, check_at) = match (key.family, key.proto) {
        (AF_INET, PROTO_TCP) => (L4_V4, L4_V4 + TCP_CHECK),
        (AF_INET, _) => (L4_V4, L4_V4 + UDP_CHECK),
        (_, PROTO_TCP) => (L4_V6, L4_V6 + TCP_CHECK),
        _ => (L4_V6, L4_V6 + UDP_CHECK),
    };
    let Some(old_check) = load::<u16, 2>(ctx, check_at) else {
        return;
    };
    let udp = key.proto == PROTO_UDP;
    let new_ports = ports_word(flow.src_port, flow.dst_port);
    let (old_src, old_dst) = (addr_words(key.src), addr_words(key.dst));
    let (new_src, new_dst) = (addr_words(flow.src), addr_words(flow.dst));
    let mut l4_delta = Delta::ZERO.replace32(packet.ports, new_ports);
    let ttl = packet.ttl - 1;
    if key.family == AF_INET {
        let addrs = Delta::ZERO
            .replace32(old_src[0], new_src[0])
            .replace32(old_dst[0], new_dst[0]);
        write_words::<8, 2>(ctx, V4_SRC, [new_src[0], new_dst[0]]);
        let old_ttl_proto = u16::from_ne_bytes([packet.ttl, key.proto]);
        let new_ttl_proto = u16::from_ne_bytes([ttl, key.proto]);
        store::<u8, 1>(ctx, V4_TTL, ttl);
        if let Some(check) = load::<u16, 2>(ctx, V4_CHECK) {
            let check = addrs.replace16(old_ttl_proto, new_ttl_proto).apply(check);
            store::<u16, 2>(ctx, V4_CHECK, check);
        }
        l4_delta = l4_delta.plus(addrs);
    } else {
        write_words::<32, 8>(
            ctx,
            V6_SRC,
            [
                new_src[0], new_src[1], new_src[2], new_src[3], new_dst[0], new_dst[1], new_dst[2],
                new_dst[3],
            ],
        );
        store::<u8, 1>(ctx, V6_HOP_LIMIT, ttl);
        l4_delta = l4_delta
            .replace_addr(old_src, new_src)
            .replace_addr(old_dst, new_dst);
    }
    write_words::<4, 1>(ctx, l4, [new_ports]);
    // UDP over IPv4 may carry no checksum (0): it stays 0. A computed UDP
    // checksum of 0 is sent as 0xffff (RFC 768; the same bytes in either
    // order).
    if !(udp && old_check == 0) {
        let mut check = l4_delta.apply(old_check);
        if udp && check == 0 {
            check = 0xffff;
        }
        store::<u16, 2>(ctx, check_at, check);
    }
    let mut i = 0;
    while i < 6 {
        store::<u16, 2>(ctx, 2 * i, hop.macs[i]);
        i += 1;
    }
}

/// Source and destination port (host order) as the word they form in the
/// header (network order, as it sits in memory).
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
pub(super) const fn ports_word(src: u16, dst: u16) -> u32 {
    let [a, b] = src.to_be_bytes();
    let [c, d] = dst.to_be_bytes();
    u32::from_ne_bytes([a, b, c, d])
}
