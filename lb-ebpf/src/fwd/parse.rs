//! Packet parsing for the forwarder (either hook): the header layout
//! (offsets the rewrites use too) and the bounds-checked access to packet
//! bytes that every part of the forwarder goes through.
//!
//! Invariants: every read or write of packet bytes goes through [`at`],
//! which checks the access against `data_end` right before it (the verifier
//! must see that check next to the access, hence `#[inline(always)]`).
//! [`parse`] accepts only an untagged Ethernet frame carrying IPv4 without
//! options and not fragmented, or IPv6 without extension headers, with a
//! complete TCP or UDP header inside the IP length; for anything else it
//! names the `xdp_stats` pass counter of the reason. Once it accepted a
//! packet, every offset below lies within the directly readable data (for
//! tc, the hook pulls the headers into the linear area first). The IP
//! length is checked against the whole packet ([`Hook::packet_len`]: on
//! tc, beyond the linear area too).

use lb_common::{AF_INET, AF_INET6, AddrBytes, FlowKey, PROTO_TCP, PROTO_UDP, xdp_counter};

use super::{Hook, Packet};

/// Ethernet header length (no VLAN tags: tagged frames are passed).
const ETH_LEN: usize = 14;
/// Offset of the IP header.
const L3: usize = ETH_LEN;
/// Offset of the TCP/UDP header after a 20-byte IPv4 header.
pub(super) const L4_V4: usize = L3 + 20;
/// Offset of the TCP/UDP header after the fixed IPv6 header.
pub(super) const L4_V6: usize = L3 + 40;
/// Offset of the IPv4 TTL (the word at this offset is TTL, protocol).
pub(super) const V4_TTL: usize = L3 + 8;
/// Offset of the IPv4 header checksum.
pub(super) const V4_CHECK: usize = L3 + 10;
/// Offset of the IPv4 source address (the destination follows).
pub(super) const V4_SRC: usize = L3 + 12;
/// Offset of the IPv6 hop limit.
pub(super) const V6_HOP_LIMIT: usize = L3 + 7;
/// Offset of the IPv6 source address (the destination follows).
pub(super) const V6_SRC: usize = L3 + 8;
/// The longest headers [`parse`] reads (IPv6 and TCP): what tc pulls into
/// the linear area.
pub(super) const HEADERS_MAX: usize = L4_V6 + 20;
/// Offset of the checksum within a TCP header.
pub(super) const TCP_CHECK: usize = 16;
/// Offset of the checksum within a UDP header.
pub(super) const UDP_CHECK: usize = 6;

/// Ethernet type of IPv4.
const ETH_P_IP: u16 = 0x0800;
/// Ethernet type of IPv6.
const ETH_P_IPV6: u16 = 0x86dd;
/// The IPv4 "more fragments" flag and fragment offset bits.
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;

/// A bounds-checked pointer to `N` bytes at `offset` into the packet.
#[expect(
    clippy::inline_always,
    reason = "the verifier must see the bounds check next to the access"
)]
#[inline(always)]
fn at<const N: usize>(ctx: &impl Hook, offset: usize) -> Option<*mut [u8; N]> {
    let start = ctx.start();
    if start + offset + N > ctx.end() {
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
pub(super) fn read<const N: usize>(ctx: &impl Hook, offset: usize) -> Option<[u8; N]> {
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
pub(super) fn write<const N: usize>(ctx: &impl Hook, offset: usize, bytes: [u8; N]) {
    if let Some(p) = at::<N>(ctx, offset) {
        // SAFETY: as in `read`; only the XDP hook writes directly, and the
        // packet is writable in XDP.
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
pub(super) fn parse<H: Hook>(ctx: &H) -> Result<Packet, u32> {
    let packet_len = ctx.packet_len();
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
            if total < 20 || L3 + usize::from(total) > packet_len {
                return Err(xdp_counter::PASS_TRUNCATED);
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & IPV4_FRAGMENT_MASK != 0 {
                return Err(xdp_counter::PASS_FRAGMENT);
            }
            let src = v4_addr([ip[12], ip[13], ip[14], ip[15]]);
            let dst = v4_addr([ip[16], ip[17], ip[18], ip[19]]);
            (AF_INET, ip[9], ip[8], total, L4_V4, src, dst)
        }
        ETH_P_IPV6 => {
            let ip = read::<40>(ctx, L3).ok_or(xdp_counter::PASS_TRUNCATED)?;
            if ip[0] >> 4 != 6 {
                return Err(xdp_counter::PASS_TRUNCATED);
            }
            let payload = u16::from_be_bytes([ip[4], ip[5]]);
            if L4_V6 + usize::from(payload) > packet_len {
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
    let mut tcp_flags = 0;
    let ports = match proto {
        PROTO_TCP => read::<20>(ctx, l4).map(|h| {
            tcp_flags = h[13];
            [h[0], h[1], h[2], h[3]]
        }),
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
        tcp_flags,
        ip_len,
        frame_len: packet_len as u64,
    })
}

/// An IPv4 address in the maps' 16-byte form, built from four words: a
/// zero-filled byte array with a partial copy becomes a `memset` call
/// (a BPF-to-BPF call and a byte loop) in the compiled program.
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
fn v4_addr(bytes: [u8; 4]) -> AddrBytes {
    let words = [u32::from_ne_bytes(bytes), 0, 0, 0];
    // SAFETY: [u32; 4] and [u8; 16] have the same size and every bit
    // pattern is valid for both.
    unsafe { core::mem::transmute::<[u32; 4], AddrBytes>(words) }
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
