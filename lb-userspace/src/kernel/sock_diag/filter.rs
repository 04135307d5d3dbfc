//! The filter program of a dump to given peers: `INET_DIAG_REQ_BYTECODE`,
//! "the peer is one of these", which the kernel runs on every socket before
//! it formats a reply ([`peer_bytecode`], [`encode_program`]), and the dump
//! request that carries it ([`filtered_dump_request`]).
//!
//! Invariants: a program passes the kernel's audit (`inet_diag_bc_audit`)
//! and accepts exactly the sockets whose peer is in the list (the tests run
//! a model of the kernel's audit and interpreter on every program); it is at
//! most [`MAX_BYTECODE_LEN`] bytes, so it fits in one attribute.

use std::{collections::HashSet, net::SocketAddr};

use anyhow::ensure;

use super::{
    AF_INET, AF_INET6, BC_OP_LEN, HOSTCOND_LEN, INET_DIAG_BC_D_COND, INET_DIAG_BC_JMP,
    INET_DIAG_REQ_BYTECODE, MAX_BYTECODE_LEN, NLA_HDRLEN, REQUEST_LEN, Transport,
    address::unmapped, request::dump_request,
};

/// The most peers one filter program checks (per address family); a longer
/// list is dumped without a filter and filtered in user space.
///
/// The kernel tries the conditions one after the other on every socket of
/// the dump, about 2 ns each; formatting, copying and parsing a socket that
/// a filter would have dropped costs about 0.75 µs (release build, this
/// project's test VM, 18,000 sockets: unfiltered dump 13.4 ms, filtered for 1
/// peer 1.8 ms, 100 peers 5.1 ms, 256 peers 10.6 ms, 512 peers 20.4 ms). The
/// break-even is about 330 peers; at 128 the filtered dump costs less
/// than half. The kernel's check of a program (`inet_diag_bc_audit`) also
/// grows with the square of its length: ~18 ms per request for 3,200 peers.
pub const MAX_FILTER_PEERS: usize = 128;

/// Length of one `INET_DIAG_BC_D_COND` op with its hostcond and address.
pub(super) const fn cond_len(peer: &SocketAddr) -> usize {
    BC_OP_LEN
        + HOSTCOND_LEN
        + match peer {
            SocketAddr::V4(_) => 4,
            SocketAddr::V6(_) => 16,
        }
}

// A program of MAX_FILTER_PEERS IPv6 conditions and the jumps between them
// fits in one attribute.
const _: () =
    assert!(MAX_FILTER_PEERS * (BC_OP_LEN + HOSTCOND_LEN + 16 + BC_OP_LEN) <= MAX_BYTECODE_LEN);

/// A filter program for the dump of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFilter {
    /// No socket of this family can have any of the peers (IPv6 peers and an
    /// `AF_INET` dump): no need to dump at all.
    Nothing,
    /// The program.
    Bytecode(Vec<u8>),
    /// More than [`MAX_FILTER_PEERS`] peers for this family (`peers` after
    /// [normalizing](normalized_peers)): dump without a filter and filter in
    /// user space instead.
    TooMany {
        /// How many peers the program would check.
        peers: usize,
    },
}

/// `peers` as the filter compares them: v4-mapped IPv6 addresses as IPv4
/// (the kernel matches an IPv4 condition against a dual-stack socket's
/// `::ffff:a.b.c.d` peer), duplicates dropped, first occurrence first.
pub fn normalized_peers(peers: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut seen = HashSet::with_capacity(peers.len());
    peers
        .iter()
        .map(|&peer| unmapped(peer))
        .filter(|&peer| seen.insert(peer))
        .collect()
}

/// Appends `struct inet_diag_bc_op`. `yes` and `no` are byte offsets from
/// the start of this op (`yes` a `__u8`, `no` a `__u16` in host order).
fn push_op(out: &mut Vec<u8>, code: u8, yes: usize, no: usize) {
    debug_assert!(u8::try_from(yes).is_ok() && u16::try_from(no).is_ok());
    out.push(code);
    out.push(yes as u8);
    out.extend_from_slice(&(no as u16).to_ne_bytes());
}

/// The `inet_diag` filter program "the peer is one of `peers`" for a dump of
/// `family` sockets (`AF_INET` or `AF_INET6`; any other family:
/// [`PeerFilter::Nothing`]), at most [`MAX_FILTER_PEERS`] peers.
///
/// Peers are [normalized](normalized_peers) first. An `AF_INET` dump gets
/// the IPv4 peers only (an IPv4 socket never has an IPv6 peer); an
/// `AF_INET6` dump gets every peer: IPv6 ones as `AF_INET6` conditions, IPv4
/// ones as `AF_INET` conditions, which the kernel matches against a
/// dual-stack socket's `::ffff:a.b.c.d` peer (`inet_diag_bc_run`, the
/// `entry->family == AF_INET6 && cond->family == AF_INET` case). See
/// [`encode_program`] for the encoding.
pub fn peer_bytecode(family: u8, peers: &[SocketAddr]) -> PeerFilter {
    let peers: Vec<SocketAddr> = match family {
        AF_INET => normalized_peers(peers)
            .into_iter()
            .filter(SocketAddr::is_ipv4)
            .collect(),
        AF_INET6 => normalized_peers(peers),
        _ => Vec::new(),
    };
    if peers.is_empty() {
        return PeerFilter::Nothing;
    }
    if peers.len() > MAX_FILTER_PEERS {
        return PeerFilter::TooMany { peers: peers.len() };
    }
    // Always fits (the assertion on MAX_FILTER_PEERS above).
    encode_program(&peers).map_or(
        PeerFilter::TooMany { peers: peers.len() },
        PeerFilter::Bytecode,
    )
}

/// Encodes "the peer is one of `peers`" as given (not normalized, not
/// deduplicated; IPv4 peers as `AF_INET` conditions, IPv6 ones as
/// `AF_INET6`); `None` when it would be longer than [`MAX_BYTECODE_LEN`]
/// (more than ~3,200 IPv4 or ~2,000 IPv6 peers) or `peers` is empty.
///
/// Each peer is one `INET_DIAG_BC_D_COND` op (`yes` = its own length, `no` =
/// its length + 4) with an `inet_diag_hostcond` (family, prefix length 32 or
/// 128, the port as a host-order `int`, the address in network order). Every
/// condition but the last is followed by an `INET_DIAG_BC_JMP` to the end of
/// the program:
///
/// ```text
/// cond(peer 1) jmp(end) cond(peer 2) jmp(end) … cond(peer n) | end
/// ```
///
/// A match goes on to the next op: the jump to the end, i.e. accept (the
/// last condition is followed by the end itself). A mismatch skips that
/// jump, to the next condition; after the last condition that lands 4 bytes
/// past the end, which rejects the socket (the kernel accepts only a run
/// that ends exactly at the end). The accept path cannot be the match jump
/// itself: the kernel's audit (`inet_diag_bc_audit`, `valid_cc`) requires
/// every `no` target inside the program to be reached by following `yes`
/// offsets from the start, and `yes` is a single byte.
pub fn encode_program(peers: &[SocketAddr]) -> Option<Vec<u8>> {
    if peers.is_empty() {
        return None;
    }
    let len = peers.iter().map(cond_len).sum::<usize>() + BC_OP_LEN * (peers.len() - 1);
    if len > MAX_BYTECODE_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    for (index, peer) in peers.iter().enumerate() {
        let cond = cond_len(peer);
        push_op(&mut out, INET_DIAG_BC_D_COND, cond, cond + BC_OP_LEN);
        let port = i32::from(peer.port()).to_ne_bytes();
        match peer {
            SocketAddr::V4(v4) => {
                out.extend_from_slice(&[AF_INET, 32, 0, 0]);
                out.extend_from_slice(&port);
                out.extend_from_slice(&v4.ip().octets());
            }
            SocketAddr::V6(v6) => {
                out.extend_from_slice(&[AF_INET6, 128, 0, 0]);
                out.extend_from_slice(&port);
                out.extend_from_slice(&v6.ip().octets());
            }
        }
        if index + 1 < peers.len() {
            // From this op to the end of the program.
            let to_end = len - out.len();
            push_op(&mut out, INET_DIAG_BC_JMP, BC_OP_LEN, to_end);
        }
    }
    debug_assert_eq!(out.len(), len);
    Some(out)
}

/// The `SOCK_DIAG_BY_FAMILY` dump request for one family and transport with
/// a filter program: [`dump_request`] followed by an `INET_DIAG_REQ_BYTECODE`
/// attribute carrying `bytecode` (a whole number of 4-byte ops, at most
/// [`MAX_BYTECODE_LEN`] bytes).
pub fn filtered_dump_request(
    seq: u32,
    family: u8,
    transport: Transport,
    states: u32,
    bytecode: &[u8],
) -> anyhow::Result<Vec<u8>> {
    ensure!(
        !bytecode.is_empty()
            && bytecode.len() <= MAX_BYTECODE_LEN
            && bytecode.len().is_multiple_of(4),
        "a filter program of {} bytes: need a multiple of 4 between 4 and {MAX_BYTECODE_LEN}",
        bytecode.len()
    );
    let attribute_len = NLA_HDRLEN + bytecode.len();
    let total = REQUEST_LEN + attribute_len;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&dump_request(seq, family, transport, states));
    out[0..4].copy_from_slice(&(total as u32).to_ne_bytes());
    out.extend_from_slice(&(attribute_len as u16).to_ne_bytes());
    out.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    out.extend_from_slice(bytecode);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::kernel::{
        netlink::u16_at,
        sock_diag::{
            ESTABLISHED_ONLY,
            address::{address_bytes, v4_mapped},
            tests::{v4, v6},
        },
    };
    // --- filter programs ------------------------------------------------------
    //
    // `audit` and `run` model the kernel's `inet_diag_bc_audit` (with
    // `valid_cc` and `valid_hostcond`) and `inet_diag_bc_run` for the two ops
    // this module emits, from net/ipv4/inet_diag.c.

    /// `(code, yes, no)` of the op at `pos`.
    #[cfg(target_endian = "little")]
    fn op_at(bc: &[u8], pos: usize) -> (u8, i32, i32) {
        (
            bc[pos],
            i32::from(bc[pos + 1]),
            i32::from(u16::from_le_bytes([bc[pos + 2], bc[pos + 3]])),
        )
    }

    /// `valid_cc`: offset `cc` (counted back from the end) is reached by
    /// following `yes` from the start.
    #[cfg(target_endian = "little")]
    fn valid_cc(bc: &[u8], cc: i32) -> bool {
        let mut len = bc.len() as i32;
        let mut pos = 0;
        while len >= 0 {
            if cc > len {
                return false;
            }
            if cc == len {
                return true;
            }
            let (_, yes, _) = op_at(bc, pos);
            if yes < 4 || yes % 4 != 0 {
                return false;
            }
            len -= yes;
            pos += yes as usize;
        }
        false
    }

    #[cfg(target_endian = "little")]
    fn audit(bc: &[u8]) -> Result<(), String> {
        let total = bc.len() as i32;
        if total < 4 {
            return Err(format!("{total} bytes"));
        }
        let mut len = total;
        let mut pos = 0usize;
        while len > 0 {
            let (code, yes, no) = op_at(bc, pos);
            let mut min_len = 4;
            match code {
                INET_DIAG_BC_D_COND => {
                    min_len += 8;
                    if len < min_len {
                        return Err(format!("hostcond at {pos} cut off"));
                    }
                    let addr_len = match bc[pos + 4] {
                        0 => 0,
                        AF_INET => 4,
                        AF_INET6 => 16,
                        other => return Err(format!("family {other} at {pos}")),
                    };
                    min_len += addr_len;
                    if len < min_len {
                        return Err(format!("address at {pos} cut off"));
                    }
                    if i32::from(bc[pos + 5]) > 8 * addr_len {
                        return Err(format!("prefix length at {pos}"));
                    }
                }
                INET_DIAG_BC_JMP => {}
                other => return Err(format!("op {other} at {pos}")),
            }
            if no < min_len || no > len + 4 || no % 4 != 0 {
                return Err(format!("no = {no} at {pos} (len {len})"));
            }
            if no < len && !valid_cc(bc, len - no) {
                return Err(format!("no = {no} at {pos} is not on an op"));
            }
            if yes < min_len || yes > len + 4 || yes % 4 != 0 {
                return Err(format!("yes = {yes} at {pos} (len {len})"));
            }
            pos += yes as usize;
            len -= yes;
        }
        if len == 0 {
            Ok(())
        } else {
            Err(format!("ends at {len}"))
        }
    }

    /// Whether the first `bits` bits of `a` and `b` are equal.
    fn prefix_equal(a: &[u8], b: &[u8], bits: usize) -> bool {
        let bytes = bits / 8;
        if a[..bytes] != b[..bytes] {
            return false;
        }
        let rest = bits % 8;
        rest == 0 || (a[bytes] ^ b[bytes]) & (0xff << (8 - rest)) == 0
    }

    /// `inet_diag_bc_run` on a socket of `family` connected to `peer`.
    #[cfg(target_endian = "little")]
    fn run(bc: &[u8], family: u8, peer: SocketAddr) -> bool {
        let addr = address_bytes(family, peer.ip()).unwrap();
        let mut len = bc.len() as i32;
        let mut pos = 0usize;
        while len > 0 {
            let (code, yes, no) = op_at(bc, pos);
            let matched = match code {
                INET_DIAG_BC_JMP => false,
                INET_DIAG_BC_D_COND => {
                    let cond_family = bc[pos + 4];
                    let prefix = usize::from(bc[pos + 5]);
                    let port = i32::from_le_bytes(bc[pos + 8..pos + 12].try_into().unwrap());
                    let cond_addr = &bc[pos + 12..];
                    if port != -1 && port != i32::from(peer.port()) {
                        false
                    } else if cond_family != 0 && cond_family != family {
                        family == AF_INET6
                            && cond_family == AF_INET
                            && addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
                            && prefix_equal(&addr[12..], cond_addr, prefix)
                    } else {
                        prefix == 0 || prefix_equal(&addr, cond_addr, prefix)
                    }
                }
                other => panic!("op {other}"),
            };
            let step = if matched { yes } else { no };
            len -= step;
            pos = pos.wrapping_add(step as usize);
        }
        len == 0
    }

    fn bytecode(family: u8, peers: &[SocketAddr]) -> Vec<u8> {
        match peer_bytecode(family, peers) {
            PeerFilter::Bytecode(bytecode) => bytecode,
            other => panic!("{other:?}"),
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn one_ipv4_peer_program_bytes() {
        let peer = v4(10, 0, 0, 1, 6443);
        #[rustfmt::skip]
        let expected = vec![
            // op: INET_DIAG_BC_D_COND, yes 16 (the end: accept),
            // no 20 (4 bytes past the end: reject)
            8, 16,  20, 0,
            // hostcond: AF_INET, prefix 32, padding, port 6443 (0x192b) as int
            2, 32, 0, 0,  0x2b, 0x19, 0, 0,
            // address
            10, 0, 0, 1,
        ];
        assert_eq!(bytecode(AF_INET, &[peer]), expected);
        // The IPv6 dump uses the same IPv4 condition (it matches
        // ::ffff:10.0.0.1), also when the peer is given v4-mapped.
        assert_eq!(bytecode(AF_INET6, &[peer]), expected);
        assert_eq!(bytecode(AF_INET6, &[v4_mapped(peer), peer]), expected);
        audit(&expected).unwrap();

        let request =
            filtered_dump_request(5, AF_INET, Transport::Tcp, ESTABLISHED_ONLY, &expected).unwrap();
        assert_eq!(request.len(), 72 + 4 + 16);
        // nlmsg_len covers the attribute; the header is dump_request's.
        assert_eq!(&request[0..4], &[92, 0, 0, 0]);
        assert_eq!(
            &request[4..72],
            &dump_request(5, AF_INET, Transport::Tcp, ESTABLISHED_ONLY)[4..]
        );
        // nlattr: nla_len 20 (header + program), nla_type 1 (INET_DIAG_REQ_BYTECODE)
        assert_eq!(&request[72..76], &[20, 0, 1, 0]);
        assert_eq!(&request[76..], &expected[..]);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn mixed_peers_program_bytes_and_jumps() {
        let peers = [v4(10, 0, 0, 1, 6443), v6("fd00::2", 443)];
        let program = bytecode(AF_INET6, &peers);
        #[rustfmt::skip]
        let expected = vec![
            // offset 0: D_COND 10.0.0.1:6443; yes 16 -> 16 (the jump),
            // no 20 -> 20 (the next condition)
            8, 16,  20, 0,
            2, 32, 0, 0,  0x2b, 0x19, 0, 0,
            10, 0, 0, 1,
            // offset 16: JMP; yes 4 (never taken), no 32 -> 48 = the end: accept
            1, 4,  32, 0,
            // offset 20: D_COND [fd00::2]:443; yes 28 -> 48 = the end: accept,
            // no 32 -> 52 = 4 past the end: reject
            8, 28,  32, 0,
            10, 128, 0, 0,  0xbb, 0x01, 0, 0,
            0xfd, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 2,
        ];
        assert_eq!(program, expected);
        assert_eq!(program.len(), 48);
        audit(&program).unwrap();
        // The IPv4 dump gets the IPv4 peer only.
        assert_eq!(bytecode(AF_INET, &peers), expected[..16].to_vec());
        // The same IPv6-only list has nothing for an IPv4 dump.
        assert_eq!(peer_bytecode(AF_INET, &peers[1..]), PeerFilter::Nothing);
        assert_eq!(peer_bytecode(AF_INET6, &[]), PeerFilter::Nothing);
        assert_eq!(peer_bytecode(1, &peers), PeerFilter::Nothing);

        // Jumps as the kernel takes them.
        for (family, peer, accepted) in [
            (AF_INET6, v6("::ffff:10.0.0.1", 6443), true),
            (AF_INET6, v6("::ffff:10.0.0.1", 6444), false),
            (AF_INET6, v6("::ffff:10.0.0.2", 6443), false),
            (AF_INET6, v6("fd00::2", 443), true),
            (AF_INET6, v6("fd00::3", 443), false),
            (AF_INET6, v6("fd00::2", 6443), false),
            // The first 4 bytes of fd00::2 are no IPv4 address.
            (AF_INET6, v6("a00:1::", 6443), false),
            (AF_INET, v4(10, 0, 0, 1, 6443), true),
            (AF_INET, v4(10, 0, 0, 1, 443), false),
        ] {
            assert_eq!(run(&program, family, peer), accepted, "{family} {peer}");
        }
    }

    fn v4_peers(count: u32) -> Vec<SocketAddr> {
        (0..count)
            .map(|i| SocketAddr::new(Ipv4Addr::from(0x0a00_0000 + i).into(), 80))
            .collect()
    }

    fn v6_peers(count: u32) -> Vec<SocketAddr> {
        (0..count)
            .map(|i| {
                SocketAddr::new(
                    Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i)).into(),
                    80,
                )
            })
            .collect()
    }

    #[test]
    fn more_than_max_filter_peers_are_not_filtered_by_the_kernel() {
        let v4s = v4_peers(MAX_FILTER_PEERS as u32 + 1);
        let v6s = v6_peers(10);
        let max = &v4s[..MAX_FILTER_PEERS];
        match peer_bytecode(AF_INET, max) {
            // 20 bytes per IPv4 peer, but the last (16).
            PeerFilter::Bytecode(program) => assert_eq!(program.len(), 128 * 20 - 4),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            peer_bytecode(AF_INET, &v4s),
            PeerFilter::TooMany { peers: 129 }
        );
        // Per family: the IPv6 peers do not count for the IPv4 dump.
        let mut mixed = max.to_vec();
        mixed.extend(&v6s);
        assert!(matches!(
            peer_bytecode(AF_INET, &mixed),
            PeerFilter::Bytecode(_)
        ));
        assert_eq!(
            peer_bytecode(AF_INET6, &mixed),
            PeerFilter::TooMany { peers: 138 }
        );
        // Duplicates (also in the v4-mapped spelling) do not count.
        let mut doubled = max.to_vec();
        doubled.extend(max.iter().map(|&p| v4_mapped(p)));
        doubled.extend_from_slice(max);
        assert_eq!(
            peer_bytecode(AF_INET6, &doubled),
            peer_bytecode(AF_INET, max)
        );
    }

    #[test]
    fn programs_up_to_the_attribute_limit() {
        // 32 bytes per IPv6 peer but the last (28): 2047 peers take 65500
        // bytes, 2048 would take 65532 > 65528.
        let peers = v6_peers(2048);
        let program = encode_program(&peers[..2047]).unwrap();
        assert_eq!(program.len(), 65500);
        #[cfg(target_endian = "little")]
        {
            audit(&program).unwrap();
            // The first jump spans nearly the whole program.
            assert_eq!(op_at(&program, 28), (INET_DIAG_BC_JMP, 4, 65500 - 28));
            assert!(run(&program, AF_INET6, peers[2046]));
            assert!(run(&program, AF_INET6, peers[0]));
            assert!(!run(&program, AF_INET6, peers[2047]));
        }
        assert_eq!(encode_program(&peers), None);
        assert_eq!(encode_program(&[]), None);
        let request = filtered_dump_request(1, AF_INET6, Transport::Tcp, 2, &program).unwrap();
        assert_eq!(request.len(), 72 + 4 + 65500);
        assert_eq!(u16_at(&request, 72), 65504);
        assert!(
            filtered_dump_request(
                1,
                AF_INET,
                Transport::Tcp,
                2,
                &vec![0; MAX_BYTECODE_LEN + 4]
            )
            .is_err()
        );
        assert!(filtered_dump_request(1, AF_INET, Transport::Tcp, 2, &[0; 6]).is_err());
        assert!(filtered_dump_request(1, AF_INET, Transport::Tcp, 2, &[]).is_err());
    }

    #[test]
    fn normalized_peers_unmap_and_dedupe_in_order() {
        let peers = [
            v6("::ffff:10.0.0.2", 80),
            v6("fd00::1", 80),
            v4(10, 0, 0, 2, 80),
            v4(10, 0, 0, 1, 80),
            v6("fd00::1", 80),
        ];
        assert_eq!(
            normalized_peers(&peers),
            vec![v4(10, 0, 0, 2, 80), v6("fd00::1", 80), v4(10, 0, 0, 1, 80)]
        );
    }

    /// A peer out of a small pool, so lists and sockets share some.
    fn pool_peer() -> impl Strategy<Value = SocketAddr> {
        let v4s = (0u8..4, 0u16..3).prop_map(|(host, port)| v4(10, 0, 0, host, 80 + port));
        let v6s = (0u16..4, 0u16..3).prop_map(|(host, port)| {
            SocketAddr::new(
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, host).into(),
                80 + port,
            )
        });
        prop_oneof![v4s.clone(), v6s, v4s.prop_map(v4_mapped)]
    }

    proptest! {
        #[cfg(target_endian = "little")]
        #[test]
        fn programs_pass_the_audit_and_accept_exactly_the_peers(
            peers in proptest::collection::vec(pool_peer(), 0..12),
            sockets in proptest::collection::vec(pool_peer(), 1..12),
        ) {
            let wanted: HashSet<SocketAddr> = peers.iter().map(|&p| unmapped(p)).collect();
            for family in [AF_INET, AF_INET6] {
                let program = match peer_bytecode(family, &peers) {
                    PeerFilter::Bytecode(program) => {
                        prop_assert!(audit(&program).is_ok(), "{:?}", audit(&program));
                        Some(program)
                    }
                    PeerFilter::Nothing => None,
                    PeerFilter::TooMany { peers } => panic!("{peers}"),
                };
                for &peer in &sockets {
                    // An AF_INET socket only ever has an IPv4 peer.
                    let peer = match family {
                        AF_INET => unmapped(peer),
                        _ => v4_mapped(peer),
                    };
                    if family == AF_INET && peer.is_ipv6() {
                        continue;
                    }
                    let accepted = program.as_ref().is_some_and(|p| run(p, family, peer));
                    prop_assert_eq!(accepted, wanted.contains(&unmapped(peer)), "{} {}", family, peer);
                }
            }
        }
    }
}
