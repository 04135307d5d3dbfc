//! The tc ingress hook (`lb_tc`): the forwarder on an skb. `TC_ACT_OK`
//! passes a packet to the stack, `TC_ACT_SHOT` drops it, and a forwarded
//! packet leaves with `bpf_redirect` to the egress interface (counted
//! `tx` when that is the ingress interface), with `bpf_redirect_peer`
//! when the egress interface is a veth whose peer lives in another
//! namespace (a pod's or a container's: the packet enters the peer's
//! ingress directly, skipping the veth's transmit path and the backlog
//! queue; counted `redirect_peer`), or with `bpf_redirect_neigh` when the
//! FIB knows the route but not the neighbour yet (the kernel resolves it;
//! counted `redirect_neigh`).
//!
//! Why a second hook: an skb knows its checksum state. A packet sent from
//! a local veth with TX checksum offload (containers, pods, Kind nodes)
//! carries `CHECKSUM_PARTIAL`: its L4 checksum field holds only the
//! pseudo-header sum, which XDP cannot tell from a full checksum. Here the
//! checksums change only through the kernel's helpers, which know:
//! `bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR` for the addresses (the
//! pseudo-header: updated in a partial checksum too), without it for the
//! ports (data: a partial checksum leaves them to the device), and
//! `BPF_F_MARK_MANGLED_0` for UDP (0 stays "no checksum" on IPv4, a
//! computed 0 becomes 0xffff); `bpf_l3_csum_replace` for the IPv4 header.
//! For IPv6, `BPF_F_IPV6` keeps a `CHECKSUM_COMPLETE` skb's `csum` right on
//! kernels that know the flag (6.16 on; older ones refuse it, and the
//! update is retried without), and `bpf_csum_update` accounts the hop
//! limit. Addresses, ports and TTL are written with `bpf_skb_store_bytes`;
//! the helpers invalidate packet pointers, so none is kept across them
//! (every write names an offset that `parse` checked).
//!
//! `bpf_fib_lookup` gets the skb and `tot_len = 0`: the kernel checks the
//! skb itself against the egress MTU, GSO aware (a GSO skb is within the
//! MTU once segmented, and is not refused for its total length).
//!
//! Invariants: the headers [`super::parse`] reads are in the linear area
//! (pulled once with `bpf_skb_pull_data` when they are not) before the
//! forwarder runs. The first helper that writes makes the skb writable
//! (private and linear over the written range); when that fails (an
//! allocation), nothing has changed and the packet is dropped as
//! `drop_rewrite`, as it is if a later helper fails.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{
        bpf_csum_update, bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_redirect,
        bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_pull_data, bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use lb_common::{AF_INET, FlowValue, PROTO_TCP, PROTO_UDP, csum::Delta, xdp_counter};

use super::{
    Action, Hook, Hop, Packet, Verdict,
    parse::{
        HEADERS_MAX, L4_V4, L4_V6, TCP_CHECK, UDP_CHECK, V4_CHECK, V4_SRC, V4_TTL, V6_HOP_LIMIT,
        V6_SRC, addr_words,
    },
    xdp::ports_word,
};

/// `BPF_F_IPV6` of `bpf_l4_csum_replace` (Linux 6.16; not in aya's
/// bindings yet).
const BPF_F_IPV6: u64 = 1 << 7;

/// The program's entry: pulls the headers into the linear area if they
/// are not there, then runs the forwarder.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn run(ctx: &TcContext) -> i32 {
    let len = ctx.len() as usize;
    let want = if len < HEADERS_MAX { len } else { HEADERS_MAX };
    if ctx.data() + want > ctx.data_end() {
        // SAFETY: the helper takes the skb context and a length no longer
        // than the packet; on failure the packet stays as it was (and
        // `parse` passes it as truncated).
        let _ = unsafe { bpf_skb_pull_data(skb(ctx), want as u32) };
    }
    super::run(ctx) as i32
}

/// The raw skb pointer the helpers take.
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
fn skb(ctx: &TcContext) -> *mut __sk_buff {
    ctx.as_ptr().cast()
}

#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
impl Hook for TcContext {
    const PASS: u32 = TC_ACT_OK as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;
    const NEIGH: bool = true;
    const PEER: bool = true;

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
        self.len() as usize
    }

    #[inline(always)]
    fn ingress(&self) -> u32 {
        // SAFETY: the kernel's skb context; `ifindex` (the device the skb
        // is on: at tc ingress, the one it arrived on) is a readable field.
        unsafe { (*skb(self)).ifindex }
    }

    #[inline(always)]
    fn fib_len(_packet: &Packet) -> u16 {
        0
    }

    #[inline(always)]
    fn rewrite(&self, packet: &Packet, flow: &FlowValue, hop: &Hop) -> bool {
        rewrite(self, packet, flow, hop).is_ok()
    }

    #[inline(always)]
    fn send(&self, hop: &Hop) -> Verdict {
        if !hop.resolved {
            // SAFETY: no neighbour parameters (the kernel looks the next
            // hop up itself); returns TC_ACT_REDIRECT, or TC_ACT_SHOT for
            // bad flags (we pass none).
            let code = unsafe { bpf_redirect_neigh(hop.ifindex, core::ptr::null_mut(), 0, 0) };
            return Verdict {
                action: Action::Sent(code as u32),
                counter: xdp_counter::REDIRECT_NEIGH,
            };
        }
        if hop.peer && hop.ifindex != self.ingress() {
            // The kernel drops the packet should the interface no longer
            // have a peer in another namespace (moved since `if_addrs` said
            // so).
            // SAFETY: bpf_redirect_peer only records the target; returns
            // TC_ACT_REDIRECT, or TC_ACT_SHOT for bad flags (none).
            let code = unsafe { bpf_redirect_peer(hop.ifindex, 0) };
            return Verdict {
                action: Action::Sent(code as u32),
                counter: xdp_counter::REDIRECT_PEER,
            };
        }
        let counter = if hop.ifindex == self.ingress() {
            xdp_counter::TX
        } else {
            xdp_counter::REDIRECT
        };
        // SAFETY: bpf_redirect only records the target (its egress);
        // returns TC_ACT_REDIRECT, or TC_ACT_SHOT for bad flags (none).
        let code = unsafe { bpf_redirect(hop.ifindex, 0) };
        Verdict {
            action: Action::Sent(code as u32),
            counter,
        }
    }
}

/// A helper's error (its negative return value).
struct Failed;

/// Turns a helper's return value into a result.
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
const fn ok(ret: i64) -> Result<(), Failed> {
    if ret < 0 { Err(Failed) } else { Ok(()) }
}

/// Writes `value` (plain bytes or words as they are to sit in the packet)
/// at `offset` with `bpf_skb_store_bytes` (no checksum flags: the checksums
/// are updated by the replace helpers).
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
fn store<T: Copy>(ctx: &TcContext, offset: usize, value: &T) -> Result<(), Failed> {
    // SAFETY: `value` is size_of::<T>() readable bytes on the stack or in a
    // map value; the helper copies them into the packet after checking the
    // range.
    ok(unsafe {
        bpf_skb_store_bytes(
            skb(ctx),
            offset as u32,
            (&raw const *value).cast(),
            size_of::<T>() as u32,
            0,
        )
    })
}

/// `bpf_l4_csum_replace` of the checksum at `at`.
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
fn l4_replace(ctx: &TcContext, at: usize, from: u64, to: u64, flags: u64) -> Result<(), Failed> {
    // SAFETY: the helper takes the skb context; it checks the offset and
    // makes the range writable itself.
    ok(unsafe { bpf_l4_csum_replace(skb(ctx), at as u32, from, to, flags) })
}

/// Rewrites addresses, ports, TTL, checksums and (when resolved) MACs,
/// through the skb helpers.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn rewrite(ctx: &TcContext, packet: &Packet, flow: &FlowValue, hop: &Hop) -> Result<(), Failed> {
    let key = &packet.key;
    let (l4, check_at) = match (key.family, key.proto) {
        (AF_INET, PROTO_TCP) => (L4_V4, L4_V4 + TCP_CHECK),
        (AF_INET, _) => (L4_V4, L4_V4 + UDP_CHECK),
        (_, PROTO_TCP) => (L4_V6, L4_V6 + TCP_CHECK),
        _ => (L4_V6, L4_V6 + UDP_CHECK),
    };
    let mangled_0 = if key.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let new_ports = ports_word(flow.src_port, flow.dst_port);
    // Ports: data, not pseudo-header (size 4 in the low flag bits).
    l4_replace(
        ctx,
        check_at,
        u64::from(packet.ports),
        u64::from(new_ports),
        4 | mangled_0,
    )?;
    let (old_src, old_dst) = (addr_words(key.src), addr_words(key.dst));
    let (new_src, new_dst) = (addr_words(flow.src), addr_words(flow.dst));
    let ttl = packet.ttl - 1;
    if key.family == AF_INET {
        let addrs = Delta::ZERO
            .replace32(old_src[0], new_src[0])
            .replace32(old_dst[0], new_dst[0]);
        // Addresses: pseudo-header, by difference (size 0).
        l4_replace(
            ctx,
            check_at,
            0,
            u64::from(addrs.wsum()),
            u64::from(BPF_F_PSEUDO_HDR) | mangled_0,
        )?;
        let ip = addrs.replace16(
            u16::from_ne_bytes([packet.ttl, key.proto]),
            u16::from_ne_bytes([ttl, key.proto]),
        );
        // SAFETY: as in `l4_replace`.
        ok(unsafe { bpf_l3_csum_replace(skb(ctx), V4_CHECK as u32, 0, u64::from(ip.wsum()), 0) })?;
        let new_addrs = [new_src[0], new_dst[0]];
        store(ctx, V4_SRC, &new_addrs)?;
        store(ctx, V4_TTL, &[ttl])?;
    } else {
        let addrs = Delta::ZERO
            .replace_addr(old_src, new_src)
            .replace_addr(old_dst, new_dst)
            .wsum();
        let flags = u64::from(BPF_F_PSEUDO_HDR) | mangled_0;
        if l4_replace(ctx, check_at, 0, u64::from(addrs), flags | BPF_F_IPV6).is_err() {
            // A kernel older than BPF_F_IPV6 refuses the flag (and changed
            // nothing).
            l4_replace(ctx, check_at, 0, u64::from(addrs), flags)?;
        }
        let new_addrs = [
            new_src[0], new_src[1], new_src[2], new_src[3], new_dst[0], new_dst[1], new_dst[2],
            new_dst[3],
        ];
        store(ctx, V6_SRC, &new_addrs)?;
        // The hop limit is data no checksum covers: only a
        // `CHECKSUM_COMPLETE` skb's `csum` changes (the helper does nothing
        // otherwise).
        let hop_limit = Delta::ZERO
            .replace16(
                u16::from_ne_bytes([key.proto, packet.ttl]),
                u16::from_ne_bytes([key.proto, ttl]),
            )
            .wsum();
        store(ctx, V6_HOP_LIMIT, &[ttl])?;
        // SAFETY: the helper takes the skb context and a checksum difference.
        let _ = unsafe { bpf_csum_update(skb(ctx), hop_limit) };
    }
    store(ctx, l4, &[new_ports])?;
    if hop.resolved {
        store(ctx, 0, &hop.macs)?;
    }
    Ok(())
}
