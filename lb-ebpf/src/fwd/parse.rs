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

/// Reads the `W` 32-bit words (`N` = 4 × `W` bytes) at `offset`, as they
/// sit in the packet (native-order loads of network-order data), with one
/// bounds check.
///
/// Alignment: each word is read with a 4-byte load whatever the address
/// (a frame's IP header is usually 2 bytes off a 4-byte boundary). The BPF
/// instruction set has no alignment rule for packet memory: the JITs we
/// run on (x86-64, arm64) load from any address, and where the CPU needs
/// alignment the verifier refuses a misaligned packet access when the
/// program is loaded (it checks packet offsets against the IP-aligned
/// frame layout, which every access here respects). An unaligned read in
/// Rust would instead become four byte loads per word in LLVM's BPF
/// backend: with byte access both forwarder programs were 40 % longer.
#[expect(
    clippy::inline_always,
    reason = "the verifier must see the bounds check next to the access"
)]
#[inline(always)]
pub(super) fn read_words<const N: usize, const W: usize>(
    ctx: &impl Hook,
    offset: usize,
) -> Option<[u32; W]> {
    const {
        assert!(N == 4 * W);
    }
    let p = at::<N>(ctx, offset)?.cast::<u32>();
    let mut words = [0u32; W];
    let mut i = 0;
    while i < W {
        // SAFETY: `at` checked that the N bytes lie within the packet; word
        // i lies within them. Alignment: see above.
        words[i] = unsafe { p.add(i).read() };
        i += 1;
    }
    Some(words)
}

/// Reads the `T` (a `u16` or `u32`; `N` = its size in bytes) at `offset`
/// as it sits in the packet (see [`read_words`] on alignment).
#[expect(
    clippy::inline_always,
    reason = "the verifier must see the bounds check next to the access"
)]
#[inline(always)]
pub(super) fn load<T: Copy, const N: usize>(ctx: &impl Hook, offset: usize) -> Option<T> {
    const {
        assert!(N == size_of::<T>());
    }
    // SAFETY: `at` checked that the N bytes lie within the packet; a `T`
    // here is a plain integer. Alignment: see `read_words`.
    at::<N>(ctx, offset).map(|p| unsafe { p.cast::<T>().read() })
}

/// Writes `value` (a `u8`, `u16` or `u32` as it is to sit in the packet;
/// `N` = its size in bytes) at `offset`; silently skipped when out of
/// bounds, which `parse` has already ruled out for every offset used.
#[expect(
    clippy::inline_always,
    reason = "the verifier must see the bounds check next to the access"
)]
#[inline(always)]
pub(super) fn store<T: Copy, const N: usize>(ctx: &impl Hook, offset: usize, value: T) {
    const {
        assert!(N == size_of::<T>());
    }
    if let Some(p) = at::<N>(ctx, offset) {
        // SAFETY: `at` checked that the N bytes lie within the packet; only
        // the XDP hook writes directly, and the packet is writable in XDP.
        // Alignment: see `read_words`.
        unsafe { p.cast::<T>().write(value) };
    }
}

/// Writes the `W` 32-bit words `words` (as they are to sit in the packet;
/// `N` = 4 × `W` bytes) at `offset`, with one bounds check; skipped when out
/// of bounds, as [`store`].
#[expect(
    clippy::inline_always,
    reason = "the verifier must see the bounds check next to the access"
)]
#[inline(always)]
pub(super) fn write_words<const N: usize, const W: usize>(
    ctx: &impl Hook,
    offset: usize,
    words: [u32; W],
) {
    const {
        assert!(N == 4 * W);
    }
    let Some(p) = at::<N>(ctx, offset) else {
        return;
    };
    let p = p.cast::<u32>();
    let mut i = 0;
    while i < W {
        // SAFETY: as in `store`; word i lies within the N bytes `at`
        // checked. Alignment: see `read_words`.
        unsafe { p.add(i).write(words[i]) };
        i += 1;
    }
}

/// Parses Ethernet, IP and the ports, or names the counter of the reason to
/// pass the packet. Header fields are read a word at a time ([`read_words`]).
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(super) fn parse<H: Hook>(ctx: &H) -> Result<Packet, u32> {
    let packet_len = ctx.packet_len();
    let ether_type = load::<u16, 2>(ctx, 12).ok_or(xdp_counter::PASS_TRUNCATED)?;
    let (family, proto, ttl, ip_len, l4, src, dst) = if ether_type == ETH_P_IP.to_be() {
        let ip = read_words::<20, 5>(ctx, L3).ok_or(xdp_counter::PASS_TRUNCATED)?;
        let [version_ihl, _, len_hi, len_lo] = ip[0].to_ne_bytes();
        let ihl = version_ihl & 0x0f;
        if version_ihl >> 4 != 4 || ihl < 5 {
            return Err(xdp_counter::PASS_TRUNCATED);
        }
        if ihl > 5 {
            return Err(xdp_counter::PASS_IP_OPTIONS);
        }
        let total = u16::from_be_bytes([len_hi, len_lo]);
        if total < 20 || L3 + usize::from(total) > packet_len {
            return Err(xdp_counter::PASS_TRUNCATED);
        }
        let [_, _, frag_hi, frag_lo] = ip[1].to_ne_bytes();
        if u16::from_be_bytes([frag_hi, frag_lo]) & IPV4_FRAGMENT_MASK != 0 {
            return Err(xdp_counter::PASS_FRAGMENT);
        }
        let [ttl, proto, _, _] = ip[2].to_ne_bytes();
        (
            AF_INET,
            proto,
            ttl,
            total,
            L4_V4,
            words_to_addr([ip[3], 0, 0, 0]),
            words_to_addr([ip[4], 0, 0, 0]),
        )
    } else if ether_type == ETH_P_IPV6.to_be() {
        let ip = read_words::<40, 10>(ctx, L3).ok_or(xdp_counter::PASS_TRUNCATED)?;
        if ip[0].to_ne_bytes()[0] >> 4 != 6 {
            return Err(xdp_counter::PASS_TRUNCATED);
        }
        let [len_hi, len_lo, next, hop_limit] = ip[1].to_ne_bytes();
        let payload = u16::from_be_bytes([len_hi, len_lo]);
        if L4_V6 + usize::from(payload) > packet_len {
            return Err(xdp_counter::PASS_TRUNCATED);
        }
        if next != PROTO_TCP && next != PROTO_UDP {
            return Err(if is_ipv6_extension(next) {
                xdp_counter::PASS_IPV6_EXT
            } else {
                xdp_counter::PASS_NOT_TCP_UDP
            });
        }
        (
            AF_INET6,
            next,
            hop_limit,
            payload.saturating_add(40),
            L4_V6,
            words_to_addr([ip[2], ip[3], ip[4], ip[5]]),
            words_to_addr([ip[6], ip[7], ip[8], ip[9]]),
        )
    } else {
        return Err(xdp_counter::PASS_NOT_IP);
    };
    let mut tcp_flags = 0;
    let ports = match proto {
        PROTO_TCP => {
            let tcp = read_words::<20, 5>(ctx, l4).ok_or(xdp_counter::PASS_TRUNCATED)?;
            tcp_flags = tcp[3].to_ne_bytes()[1];
            tcp[0]
        }
        PROTO_UDP => {
            let udp = read_words::<8, 2>(ctx, l4).ok_or(xdp_counter::PASS_TRUNCATED)?;
            let [_, _, check_hi, check_lo] = udp[1].to_ne_bytes();
            if family == AF_INET6 && check_hi == 0 && check_lo == 0 {
                // IPv6 requires a UDP checksum: the stack drops this one.
                return Err(xdp_counter::PASS_UDP6_ZERO_CSUM);
            }
            udp[0]
        }
        _ => return Err(xdp_counter::PASS_NOT_TCP_UDP),
    };
    let [sp_hi, sp_lo, dp_hi, dp_lo] = ports.to_ne_bytes();
    Ok(Packet {
        key: FlowKey {
            src,
            dst,
            src_port: u16::from_be_bytes([sp_hi, sp_lo]),
            dst_port: u16::from_be_bytes([dp_hi, dp_lo]),
            proto,
            family,
            pad: [0; 2],
        },
        ports,
        ttl,
        tcp_flags,
        ip_len,
        frame_len: packet_len as u64,
    })
}

/// An address in the maps' 16-byte form from its four words as they sit
/// in memory (IPv4: the address, then three zero words).
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
pub(super) const fn words_to_addr(words: [u32; 4]) -> AddrBytes {
    // SAFETY: [u32; 4] and [u8; 16] have the same size and every bit
    // pattern is valid for both (a by-value reinterpretation).
    unsafe { core::mem::transmute::<[u32; 4], AddrBytes>(words) }
}

/// The four words of an address in the maps' 16-byte form, as they sit in
/// memory. By value: copied out of an aligned struct field (every struct
/// holding an address is 8-byte aligned, the address at a multiple of 8),
/// the compiler loads whole words instead of bytes.
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
pub(super) const fn addr_words(addr: AddrBytes) -> [u32; 4] {
    // SAFETY: as in `words_to_addr`.
    unsafe { core::mem::transmute::<AddrBytes, [u32; 4]>(addr) }
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
