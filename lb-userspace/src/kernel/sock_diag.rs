//! Counting and closing the kernel's TCP/UDP sockets through the `sock_diag`
//! netlink interface (`NETLINK_SOCK_DIAG`).
//!
//! - A dump sends one `SOCK_DIAG_BY_FAMILY` request (`struct inet_diag_req_v2`
//!   with `NLM_F_DUMP`) per address family and reads `struct inet_diag_msg`
//!   replies until `NLMSG_DONE`.
//! - A dump to given peers ([`SockDiag::dump_to_peers`]) appends an
//!   `INET_DIAG_REQ_BYTECODE` attribute: a filter program the kernel runs on
//!   every socket before it formats a reply, so sockets to other peers cost
//!   neither a message nor a parse ([`peer_bytecode`]).
//! - A destroy sends `SOCK_DESTROY` (needs `CONFIG_INET_DIAG_DESTROY` and
//!   `CAP_NET_ADMIN`) naming one socket by its full identity (addresses,
//!   ports, interface, cookie) and waits for the kernel's acknowledgement. The
//!   kernel aborts it with `ECONNABORTED`: a TCP socket sends a reset to its
//!   peer and closes, a UDP socket is disconnected; the owner's next call on
//!   it fails with `ECONNABORTED`.
//!
//! Wire formats come from the kernel's uapi headers `linux/netlink.h`,
//! `linux/sock_diag.h` and `linux/inet_diag.h`. Encoding and decoding are pure
//! functions ([`encode_request`], [`parse_diag_msg`], …); [`SockDiag`] only
//! adds the socket and the read loops (both netlink's generic parts shared
//! with [`if_addrs`](crate::kernel::if_addrs)).
//!
//! The netlink socket belongs to the network namespace of the thread that
//! called [`SockDiag::open`]; dumps and destroys see only that namespace.

use std::{
    collections::HashSet,
    fmt,
    hash::BuildHasher,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::kernel::netlink::{
    self, DumpProgress, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_HDRLEN, RECV_BUFFER_LEN,
    find_ack, put_header, u32_at, walk_dump,
};

// --- linux/sock_diag.h -------------------------------------------------------

/// `SOCK_DIAG_BY_FAMILY`: query (dump) sockets of one family and protocol.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `SOCK_DESTROY`: abort one socket.
const SOCK_DESTROY: u16 = 21;

// --- linux/inet_diag.h -------------------------------------------------------

/// `INET_DIAG_NOCOOKIE`: in both cookie words, "do not check the cookie".
const INET_DIAG_NOCOOKIE: u32 = !0;
/// `sizeof(struct inet_diag_sockid)`: sport, dport (`__be16`), src, dst
/// (`__be32[4]`), if (`__u32`), cookie (`__u32[2]`).
const SOCKID_LEN: usize = 2 + 2 + 16 + 16 + 4 + 8;
/// `sizeof(struct inet_diag_req_v2)`: family, protocol, ext, pad (`__u8`),
/// states (`__u32`), id.
const REQ_V2_LEN: usize = 4 + 4 + SOCKID_LEN;
/// `sizeof(struct inet_diag_msg)`: family, state, timer, retrans (`__u8`), id,
/// expires, rqueue, wqueue, uid, inode (`__u32`).
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 5 * 4;
/// Length of every request this module sends without a filter.
pub const REQUEST_LEN: usize = NLMSG_HDRLEN + REQ_V2_LEN;
/// `INET_DIAG_REQ_BYTECODE`: the request attribute carrying a filter program.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `INET_DIAG_BC_JMP`: jump to `no`, unconditionally.
const INET_DIAG_BC_JMP: u8 = 1;
/// `INET_DIAG_BC_D_COND`: the peer ("destination") matches an
/// `inet_diag_hostcond`.
const INET_DIAG_BC_D_COND: u8 = 8;
/// `sizeof(struct inet_diag_bc_op)`: code, yes (`__u8`), no (`__u16`).
const BC_OP_LEN: usize = 4;
/// `sizeof(struct inet_diag_hostcond)`: family, `prefix_len` (`__u8`), 2
/// bytes of padding, port (`int`); the address (`__be32[]`) follows.
const HOSTCOND_LEN: usize = 8;

// --- linux/netlink.h: attributes ---------------------------------------------

/// `NLA_HDRLEN`: `struct nlattr { __u16 nla_len; __u16 nla_type; }`.
const NLA_HDRLEN: usize = 4;
/// The longest filter program a request can carry: `nla_len` (a `__u16`)
/// counts the 4-byte attribute header too, and a program is a whole number
/// of 4-byte ops.
pub const MAX_BYTECODE_LEN: usize = (u16::MAX as usize - NLA_HDRLEN) & !3;

// --- TCP states (include/net/tcp_states.h) ----------------------------------

/// `TCP_ESTABLISHED`; for UDP: connected.
pub const STATE_ESTABLISHED: u8 = 1;
/// `TCP_CLOSE`; for UDP: not connected.
pub const STATE_CLOSE: u8 = 7;
/// `TCP_LISTEN`.
pub const STATE_LISTEN: u8 = 10;
/// State mask with only [`STATE_ESTABLISHED`]: established TCP and connected UDP sockets.
pub const ESTABLISHED_ONLY: u32 = state_mask(STATE_ESTABLISHED);
/// State mask matching every state.
pub const ALL_STATES: u32 = u32::MAX;

/// The state mask bit of one state (bit n = state n).
pub const fn state_mask(state: u8) -> u32 {
    1 << state
}

/// Upper bound for a whole dump or destroy exchange.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(30);

/// Transport protocol of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP (`IPPROTO_TCP`).
    Tcp,
    /// UDP (`IPPROTO_UDP`).
    Udp,
}

impl Transport {
    /// The IP protocol number (`IPPROTO_TCP` = 6, `IPPROTO_UDP` = 17).
    pub const fn protocol(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// `"tcp"` or `"udp"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `AF_INET` as the kernel reports it in `inet_diag_msg.idiag_family`.
pub const AF_INET: u8 = libc::AF_INET as u8;
/// `AF_INET6` as the kernel reports it in `inet_diag_msg.idiag_family`.
pub const AF_INET6: u8 = libc::AF_INET6 as u8;

fn family_name(family: u8) -> &'static str {
    match family {
        AF_INET => "ipv4",
        AF_INET6 => "ipv6",
        _ => "unknown-family",
    }
}

/// One socket as `sock_diag` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketInfo {
    /// TCP or UDP.
    pub transport: Transport,
    /// `AF_INET` or `AF_INET6` (as u8) – the socket's own family; an IPv4 peer
    /// of a dual-stack IPv6 socket is reported as `::ffff:a.b.c.d` inside a V6
    /// `SocketAddr`.
    pub family: u8,
    /// TCP state number (`TCP_ESTABLISHED` = 1, …); for UDP the kernel reports
    /// 1 (established = connected) or 7 (close = unconnected).
    pub state: u8,
    /// The socket's own address (`0.0.0.0`/`::` and port 0 when unbound).
    /// IPv6 addresses carry no scope id; see [`SocketInfo::interface`].
    pub local: SocketAddr,
    /// The peer (`0.0.0.0:0`/`[::]:0` when not connected).
    pub peer: SocketAddr,
    /// The interface the socket is bound to (`SO_BINDTODEVICE`), 0 if none.
    pub interface: u32,
    /// The socket cookie (same value as `bpf_get_socket_cookie` in BPF
    /// programs and `getsockopt(SO_COOKIE)`).
    pub cookie: u64,
}

impl SocketInfo {
    /// Whether this is a connection: TCP established, or a connected UDP
    /// socket (state 1 with a non-zero peer port).
    pub fn is_connected(&self) -> bool {
        self.state == STATE_ESTABLISHED && self.peer.port() != 0
    }

    /// The peer with a v4-mapped IPv6 address turned into IPv4.
    pub fn peer_unmapped(&self) -> SocketAddr {
        unmapped(self.peer)
    }
}

/// `[::ffff:a.b.c.d]:p` → `a.b.c.d:p`; every other address unchanged.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// `a.b.c.d:p` → `[::ffff:a.b.c.d]:p`; IPv6 addresses unchanged.
pub fn v4_mapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        SocketAddr::V6(_) => addr,
    }
}

/// `struct inet_diag_sockid` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockId {
    /// Source (local) port.
    pub sport: u16,
    /// Destination (peer) port.
    pub dport: u16,
    /// Source address as 16 bytes in network order (IPv4: first 4, rest 0).
    pub src: [u8; 16],
    /// Destination address, same encoding.
    pub dst: [u8; 16],
    /// Interface index.
    pub interface: u32,
    /// The cookie; `None` encodes `INET_DIAG_NOCOOKIE` in both words ("any").
    pub cookie: Option<u64>,
}

impl SockId {
    /// All-zero addresses and ports and no cookie: what a dump sends (the
    /// kernel's dumps skip sockets whose ports differ from non-zero ports
    /// here).
    pub const ANY: Self = Self {
        sport: 0,
        dport: 0,
        src: [0; 16],
        dst: [0; 16],
        interface: 0,
        cookie: None,
    };

    fn encode(&self, out: &mut [u8; SOCKID_LEN]) {
        out[0..2].copy_from_slice(&self.sport.to_be_bytes());
        out[2..4].copy_from_slice(&self.dport.to_be_bytes());
        out[4..20].copy_from_slice(&self.src);
        out[20..36].copy_from_slice(&self.dst);
        out[36..40].copy_from_slice(&self.interface.to_ne_bytes());
        // sock_diag_save_cookie(): word 0 = low 32 bits, word 1 = high 32 bits,
        // each in host order.
        let (low, high) = match self.cookie {
            Some(cookie) => (cookie as u32, (cookie >> 32) as u32),
            None => (INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE),
        };
        out[40..44].copy_from_slice(&low.to_ne_bytes());
        out[44..48].copy_from_slice(&high.to_ne_bytes());
    }
}

/// `struct inet_diag_req_v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagRequest {
    /// `sdiag_family`: `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// `sdiag_protocol`: `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// `idiag_states`: state mask (bit n = state n).
    pub states: u32,
    /// `id`.
    pub id: SockId,
}

/// Encodes `nlmsghdr` + `inet_diag_req_v2` (no attributes, `idiag_ext` = 0).
pub fn encode_request(
    msg_type: u16,
    flags: u16,
    seq: u32,
    request: &DiagRequest,
) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    put_header(&mut out, REQUEST_LEN, msg_type, flags, seq);
    // inet_diag_req_v2; idiag_ext and pad stay 0.
    out[16] = request.family;
    out[17] = request.protocol;
    out[20..24].copy_from_slice(&request.states.to_ne_bytes());
    let mut id = [0u8; SOCKID_LEN];
    request.id.encode(&mut id);
    out[24..].copy_from_slice(&id);
    out
}

/// The `SOCK_DIAG_BY_FAMILY` dump request for one family and transport.
pub fn dump_request(seq: u32, family: u8, transport: Transport, states: u32) -> [u8; REQUEST_LEN] {
    encode_request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        &DiagRequest {
            family,
            protocol: transport.protocol(),
            states,
            id: SockId::ANY,
        },
    )
}

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
const fn cond_len(peer: &SocketAddr) -> usize {
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

/// The `SOCK_DESTROY` request (with `NLM_F_ACK`) naming exactly `socket`.
pub fn destroy_request(seq: u32, socket: &SocketInfo) -> anyhow::Result<[u8; REQUEST_LEN]> {
    let src = address_bytes(socket.family, socket.local.ip())?;
    let dst = address_bytes(socket.family, socket.peer.ip())?;
    Ok(encode_request(
        SOCK_DESTROY,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        &DiagRequest {
            family: socket.family,
            protocol: socket.transport.protocol(),
            // Not looked at for a single-socket request.
            states: 0,
            id: SockId {
                sport: socket.local.port(),
                dport: socket.peer.port(),
                src,
                dst,
                interface: socket.interface,
                cookie: Some(socket.cookie),
            },
        },
    ))
}

/// An address as the 16 bytes of `idiag_src`/`idiag_dst` for a socket of
/// `family`: IPv4 in the first 4 bytes, IPv6 (an IPv4 address of an IPv6
/// socket as `::ffff:a.b.c.d`) in all 16.
pub fn address_bytes(family: u8, ip: IpAddr) -> anyhow::Result<[u8; 16]> {
    let v4 = |v4: Ipv4Addr| {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&v4.octets());
        out
    };
    match (family, ip) {
        (AF_INET, IpAddr::V4(ip)) => Ok(v4(ip)),
        (AF_INET, IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
            Some(ip) => Ok(v4(ip)),
            None => bail!("IPv6 address {ip} on an AF_INET socket"),
        },
        (AF_INET6, IpAddr::V6(ip)) => Ok(ip.octets()),
        (AF_INET6, IpAddr::V4(ip)) => Ok(ip.to_ipv6_mapped().octets()),
        (other, _) => bail!("address family {other} is neither AF_INET nor AF_INET6"),
    }
}

/// The inverse of [`address_bytes`]: a socket address of `family` from the 16
/// address bytes and a port.
pub fn socket_addr(family: u8, address: [u8; 16], port: u16) -> anyhow::Result<SocketAddr> {
    match family {
        AF_INET => {
            let [a, b, c, d, ..] = address;
            Ok(SocketAddr::new(Ipv4Addr::new(a, b, c, d).into(), port))
        }
        AF_INET6 => Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(address),
            port,
            0,
            0,
        ))),
        other => bail!("address family {other} is neither AF_INET nor AF_INET6"),
    }
}

/// Decodes a `struct inet_diag_msg` (attributes after it are ignored).
pub fn parse_diag_msg(transport: Transport, payload: &[u8]) -> anyhow::Result<SocketInfo> {
    ensure!(
        payload.len() >= DIAG_MSG_LEN,
        "inet_diag_msg too short: {} bytes, need {DIAG_MSG_LEN}",
        payload.len()
    );
    let family = payload[0];
    let state = payload[1];
    // id starts at offset 4.
    let sport = u16::from_be_bytes([payload[4], payload[5]]);
    let dport = u16::from_be_bytes([payload[6], payload[7]]);
    let mut src = [0u8; 16];
    src.copy_from_slice(&payload[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&payload[24..40]);
    let interface = u32_at(payload, 40);
    let cookie = u64::from(u32_at(payload, 44)) | (u64::from(u32_at(payload, 48)) << 32);
    Ok(SocketInfo {
        transport,
        family,
        state,
        local: socket_addr(family, src, sport)?,
        peer: socket_addr(family, dst, dport)?,
        interface,
        cookie,
    })
}

/// Adds the sockets of one dump datagram to `out`. Messages with another
/// sequence number (left over from an earlier, abandoned exchange) are
/// skipped; an `NLMSG_ERROR` or a negative `NLMSG_DONE` for `seq` is an error.
pub(crate) fn collect_dump(
    buf: &[u8],
    seq: u32,
    transport: Transport,
    out: &mut Vec<SocketInfo>,
) -> anyhow::Result<DumpProgress> {
    // inet_diag dumps walk the hash tables without a generation count, so they
    // never set NLM_F_DUMP_INTR: a socket opened or closed during the dump may
    // or may not be in it.
    walk_dump(buf, seq, |msg_type, _flags, payload| {
        ensure!(
            msg_type == SOCK_DIAG_BY_FAMILY,
            "unexpected netlink message type {msg_type} in a dump"
        );
        out.push(parse_diag_msg(transport, payload)?);
        Ok(())
    })
}

/// A `NETLINK_SOCK_DIAG` socket.
pub struct SockDiag {
    socket: netlink::Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl fmt::Debug for SockDiag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SockDiag")
            .field("socket", &self.socket)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl SockDiag {
    /// Opens a `NETLINK_SOCK_DIAG` socket (close-on-exec) connected to the
    /// kernel, in the calling thread's network namespace.
    pub fn open() -> anyhow::Result<Self> {
        Ok(Self {
            socket: netlink::Socket::open(libc::NETLINK_SOCK_DIAG, "NETLINK_SOCK_DIAG")?,
            buf: vec![0; RECV_BUFFER_LEN],
            seq: 0,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    /// Every socket of `transport` in both families whose state is in
    /// `states` (bit n = state n, e.g. [`ESTABLISHED_ONLY`], [`ALL_STATES`]),
    /// in the network namespace this socket was opened in. IPv4 sockets come
    /// first, then IPv6 ones (dual-stack sockets included).
    pub fn dump(&mut self, transport: Transport, states: u32) -> anyhow::Result<Vec<SocketInfo>> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump_family(transport, family, states, None, &mut out)
                .with_context(|| {
                    format!(
                        "sock_diag dump of {transport}/{} sockets",
                        family_name(family)
                    )
                })?;
        }
        Ok(out)
    }

    /// Like [`dump`](Self::dump), but only the sockets whose peer is one of
    /// `peers`; a v4-mapped peer (`[::ffff:a.b.c.d]:p`) of a dual-stack
    /// socket matches `a.b.c.d:p` in `peers` and the other way round. No
    /// peers: no sockets, without asking the kernel.
    ///
    /// The kernel filters ([`peer_bytecode`]), so the other sockets of the
    /// namespace cost no reply; the `AF_INET` dump is skipped when no peer is
    /// IPv4. More than [`MAX_FILTER_PEERS`] peers for one family (where a
    /// filter would cost the kernel more than it saves) fall back to an
    /// unfiltered dump of that family. Either way the result is checked
    /// against `peers` again in user space.
    pub fn dump_to_peers(
        &mut self,
        transport: Transport,
        states: u32,
        peers: &[SocketAddr],
    ) -> anyhow::Result<Vec<SocketInfo>> {
        let mut out = Vec::new();
        if peers.is_empty() {
            return Ok(out);
        }
        for family in [AF_INET, AF_INET6] {
            let bytecode = match peer_bytecode(family, peers) {
                PeerFilter::Nothing => continue,
                PeerFilter::Bytecode(bytecode) => Some(bytecode),
                PeerFilter::TooMany { .. } => None,
            };
            let context = || {
                format!(
                    "sock_diag dump of {transport}/{} sockets to {} peer(s)",
                    family_name(family),
                    peers.len()
                )
            };
            let before = out.len();
            let filtered =
                self.dump_family(transport, family, states, bytecode.as_deref(), &mut out);
            match filtered {
                Ok(()) => {}
                Err(err) if bytecode.is_some() => {
                    // A kernel that refuses the filter still gets the right
                    // answer: dump everything, filter below.
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "{}: the kernel refused the peer filter; dumping unfiltered",
                        context()
                    );
                    out.truncate(before);
                    self.dump_family(transport, family, states, None, &mut out)
                        .with_context(context)?;
                }
                Err(err) => return Err(err.context(context())),
            }
        }
        let wanted: HashSet<SocketAddr> = normalized_peers(peers).into_iter().collect();
        out.retain(|socket| wanted.contains(&socket.peer_unmapped()));
        Ok(out)
    }

    /// One family's dump, filtered by `bytecode` if given.
    fn dump_family(
        &mut self,
        transport: Transport,
        family: u8,
        states: u32,
        bytecode: Option<&[u8]>,
        out: &mut Vec<SocketInfo>,
    ) -> anyhow::Result<()> {
        let seq = self.next_seq();
        let request = match bytecode {
            Some(bytecode) => filtered_dump_request(seq, family, transport, states, bytecode)?,
            None => dump_request(seq, family, transport, states).to_vec(),
        };
        self.socket.send(&request).context("sending the request")?;
        let deadline = Instant::now() + EXCHANGE_DEADLINE;
        loop {
            let len = self
                .socket
                .recv(&mut self.buf)
                .context("reading the reply")?;
            if collect_dump(&self.buf[..len], seq, transport, out)? == DumpProgress::Done {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "dump did not finish within {EXCHANGE_DEADLINE:?}"
            );
        }
    }

    /// Destroys one socket (found by a previous dump: family, protocol,
    /// addresses, ports, interface and cookie must all match).
    ///
    /// `Ok(true)`: destroyed. `Ok(false)`: it was already gone – `ENOENT`
    /// (nothing has that address tuple any more) or `ESTALE` (a different
    /// socket, with another cookie, now has it; that one is left alone).
    /// Needs `CAP_NET_ADMIN` (`EPERM` otherwise).
    pub fn destroy(&mut self, socket: &SocketInfo) -> anyhow::Result<bool> {
        self.destroy_inner(socket).with_context(|| {
            format!(
                "sock_diag destroy of {} socket {} -> {} (cookie {})",
                socket.transport, socket.local, socket.peer, socket.cookie
            )
        })
    }

    fn destroy_inner(&mut self, socket: &SocketInfo) -> anyhow::Result<bool> {
        let seq = self.next_seq();
        let request = destroy_request(seq, socket)?;
        self.socket.send(&request).context("sending the request")?;
        let deadline = Instant::now() + EXCHANGE_DEADLINE;
        let error = loop {
            let len = self
                .socket
                .recv(&mut self.buf)
                .context("reading the acknowledgement")?;
            if let Some(error) = find_ack(&self.buf[..len], seq)? {
                break error;
            }
            ensure!(
                Instant::now() < deadline,
                "no acknowledgement within {EXCHANGE_DEADLINE:?}"
            );
        };
        match -error {
            0 => Ok(true),
            libc::ENOENT | libc::ESTALE => Ok(false),
            errno @ libc::EPERM => {
                Err(io::Error::from_raw_os_error(errno)).context("SOCK_DESTROY needs CAP_NET_ADMIN")
            }
            errno @ libc::EOPNOTSUPP => Err(io::Error::from_raw_os_error(errno))
                .context("SOCK_DESTROY unsupported (kernel without CONFIG_INET_DIAG_DESTROY?)"),
            errno => Err(io::Error::from_raw_os_error(errno)).context("SOCK_DESTROY failed"),
        }
    }

    /// The connections of `transport` to any of `peers`: established TCP, or
    /// connected UDP (state 1 with a non-zero peer port), whose peer is in
    /// `peers`. A v4-mapped peer (`[::ffff:a.b.c.d]:p`) of a dual-stack socket
    /// matches `a.b.c.d:p` in `peers` and the other way round.
    ///
    /// Every process's sockets in the namespace are included, also this
    /// process's own (e.g. health probes).
    pub fn established_to(
        &mut self,
        transport: Transport,
        peers: &HashSet<SocketAddr, impl BuildHasher>,
    ) -> anyhow::Result<Vec<SocketInfo>> {
        let peers: Vec<SocketAddr> = peers.iter().copied().collect();
        let mut sockets = self.dump_to_peers(transport, ESTABLISHED_ONLY, &peers)?;
        sockets.retain(SocketInfo::is_connected);
        Ok(sockets)
    }
}

#[cfg(test)]
mod tests {
    //! Expected bytes are written out by hand from the uapi structs:
    //!
    //! ```text
    //! struct nlmsghdr         { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }        16 bytes
    //! struct inet_diag_sockid { be16 sport, dport; be32 src[4], dst[4]; u32 if; u32 cookie[2]; } 48
    //! struct inet_diag_req_v2 { u8 family, protocol, ext, pad; u32 states; sockid id; }  56
    //! struct inet_diag_msg    { u8 family, state, timer, retrans; sockid id;
    //!                           u32 expires, rqueue, wqueue, uid, inode; }               72
    //! ```
    //!
    //! Host-order fields are written as little-endian literals, so these tests
    //! only run on little-endian targets.

    use proptest::prelude::*;

    use super::*;
    use crate::kernel::netlink::{
        Message, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, parse_messages, u16_at,
    };

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::new(a, b, c, d).into(), port)
    }

    fn v6(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse::<Ipv6Addr>().unwrap().into(), port)
    }

    #[test]
    fn sizes_match_the_uapi_structs() {
        assert_eq!(SOCKID_LEN, 48);
        assert_eq!(REQ_V2_LEN, 56);
        assert_eq!(DIAG_MSG_LEN, 72);
        assert_eq!(REQUEST_LEN, 72);
        assert_eq!(NLM_F_DUMP, 0x300);
        assert_eq!(ESTABLISHED_ONLY, 0b10);
        assert_eq!(state_mask(STATE_LISTEN), 0x400);
        assert_eq!(MAX_BYTECODE_LEN, 65528);
        assert_eq!(INET_DIAG_BC_D_COND, 8);
        assert_eq!(cond_len(&v4(1, 2, 3, 4, 5)), 16);
        assert_eq!(cond_len(&v6("::1", 5)), 28);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn dump_request_bytes() {
        let bytes = dump_request(7, AF_INET6, Transport::Tcp, ESTABLISHED_ONLY);
        #[rustfmt::skip]
        let expected: [u8; 72] = [
            // nlmsghdr: len 72, type 20 (SOCK_DIAG_BY_FAMILY), flags 0x301, seq 7, pid 0
            72, 0, 0, 0,  20, 0,  0x01, 0x03,  7, 0, 0, 0,  0, 0, 0, 0,
            // family 10 (AF_INET6), protocol 6 (TCP), ext 0, pad 0, states 1 << 1
            10, 6, 0, 0,  2, 0, 0, 0,
            // sockid: sport 0, dport 0
            0, 0,  0, 0,
            // src
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            // dst
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            // if 0
            0, 0, 0, 0,
            // cookie: INET_DIAG_NOCOOKIE in both words
            0xff, 0xff, 0xff, 0xff,  0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(bytes, expected);

        let udp = dump_request(0x0102_0304, AF_INET, Transport::Udp, ALL_STATES);
        assert_eq!(&udp[8..12], &[4, 3, 2, 1]);
        assert_eq!(&udp[16..24], &[2, 17, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn destroy_request_v4_bytes() {
        let socket = SocketInfo {
            transport: Transport::Tcp,
            family: AF_INET,
            state: STATE_ESTABLISHED,
            local: v4(10, 1, 2, 3, 8080),
            peer: v4(192, 168, 0, 9, 443),
            interface: 3,
            cookie: 0x0000_0001_0000_0002,
        };
        let bytes = destroy_request(9, &socket).unwrap();
        #[rustfmt::skip]
        let expected: [u8; 72] = [
            // nlmsghdr: len 72, type 21 (SOCK_DESTROY), flags 0x5 (REQUEST|ACK), seq 9, pid 0
            72, 0, 0, 0,  21, 0,  0x05, 0x00,  9, 0, 0, 0,  0, 0, 0, 0,
            // family 2 (AF_INET), protocol 6, ext 0, pad 0, states 0
            2, 6, 0, 0,  0, 0, 0, 0,
            // sport 8080 = 0x1f90, dport 443 = 0x01bb, big-endian
            0x1f, 0x90,  0x01, 0xbb,
            // src 10.1.2.3 in word 0
            10, 1, 2, 3,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            // dst 192.168.0.9
            192, 168, 0, 9,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            // if 3
            3, 0, 0, 0,
            // cookie: word 0 = low half (2), word 1 = high half (1)
            2, 0, 0, 0,  1, 0, 0, 0,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn destroy_request_v6_and_v4_mapped() {
        let mapped = SocketInfo {
            transport: Transport::Udp,
            family: AF_INET6,
            state: STATE_ESTABLISHED,
            local: v6("::ffff:127.0.0.1", 1),
            // An IPv4 address given for an IPv6 socket is mapped.
            peer: v4(127, 0, 0, 2, 2),
            interface: 0,
            cookie: u64::from(u32::MAX) + 1,
        };
        let bytes = destroy_request(1, &mapped).unwrap();
        assert_eq!(&bytes[16..18], &[10, 17]);
        assert_eq!(&bytes[24..28], &[0, 1, 0, 2]);
        let mut src = [0u8; 16];
        src[10] = 0xff;
        src[11] = 0xff;
        src[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(&bytes[28..44], &src);
        src[15] = 2;
        assert_eq!(&bytes[44..60], &src);
        // low word 0, high word 1
        assert_eq!(&bytes[64..72], &[0, 0, 0, 0, 1, 0, 0, 0]);

        let plain = SocketInfo {
            family: AF_INET6,
            local: v6("2001:db8::1", 5),
            peer: v6("fe80::2", 6),
            ..mapped
        };
        let bytes = destroy_request(1, &plain).unwrap();
        assert_eq!(
            &bytes[28..44],
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            &bytes[44..60],
            &[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
        );
    }

    #[test]
    fn destroy_request_rejects_impossible_addresses() {
        let socket = SocketInfo {
            transport: Transport::Tcp,
            family: AF_INET,
            state: STATE_ESTABLISHED,
            local: v6("2001:db8::1", 1),
            peer: v4(1, 2, 3, 4, 5),
            interface: 0,
            cookie: 1,
        };
        assert!(destroy_request(1, &socket).is_err());
        // A v4-mapped address on an AF_INET socket is fine (taken as IPv4).
        let mapped = SocketInfo {
            local: v6("::ffff:1.2.3.4", 1),
            ..socket
        };
        let bytes = destroy_request(1, &mapped).unwrap();
        assert_eq!(&bytes[28..32], &[1, 2, 3, 4]);
        assert_eq!(&bytes[32..44], &[0; 12]);
        let unknown = SocketInfo {
            family: 1,
            local: v4(1, 2, 3, 4, 1),
            ..socket
        };
        assert!(destroy_request(1, &unknown).is_err());
    }

    #[test]
    fn address_conversion() {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            address_bytes(AF_INET, Ipv4Addr::LOCALHOST.into()).unwrap(),
            bytes
        );
        assert_eq!(
            socket_addr(AF_INET, bytes, 80).unwrap(),
            v4(127, 0, 0, 1, 80)
        );
        // For AF_INET only the first word counts.
        bytes[4] = 9;
        assert_eq!(
            socket_addr(AF_INET, bytes, 80).unwrap(),
            v4(127, 0, 0, 1, 80)
        );
        let mut loopback6 = [0u8; 16];
        loopback6[15] = 1;
        assert_eq!(
            address_bytes(AF_INET6, Ipv6Addr::LOCALHOST.into()).unwrap(),
            loopback6
        );
        assert_eq!(socket_addr(AF_INET6, loopback6, 1).unwrap(), v6("::1", 1));
        assert!(socket_addr(0, loopback6, 1).is_err());
        assert!(address_bytes(0, Ipv6Addr::LOCALHOST.into()).is_err());

        assert_eq!(unmapped(v6("::ffff:10.0.0.1", 9)), v4(10, 0, 0, 1, 9));
        assert_eq!(unmapped(v6("::1", 9)), v6("::1", 9));
        assert_eq!(unmapped(v4(10, 0, 0, 1, 9)), v4(10, 0, 0, 1, 9));
        assert_eq!(v4_mapped(v4(10, 0, 0, 1, 9)), v6("::ffff:10.0.0.1", 9));
        assert_eq!(v4_mapped(v6("::1", 9)), v6("::1", 9));
    }

    #[test]
    fn connected_means_state_1_and_a_peer_port() {
        let mut s = SocketInfo {
            transport: Transport::Udp,
            family: AF_INET,
            state: STATE_ESTABLISHED,
            local: v4(127, 0, 0, 1, 5000),
            peer: v4(127, 0, 0, 1, 53),
            interface: 0,
            cookie: 1,
        };
        assert!(s.is_connected());
        s.peer = v4(0, 0, 0, 0, 0);
        assert!(!s.is_connected());
        s.peer = v4(127, 0, 0, 1, 53);
        s.state = STATE_CLOSE;
        assert!(!s.is_connected());
    }

    /// A netlink message: header (len, type, flags, seq, pid 0) + payload,
    /// padded to 4 bytes when `pad`.
    #[cfg(target_endian = "little")]
    fn message(msg_type: u16, flags: u16, seq: u32, payload: &[u8], pad: bool) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&[len as u8, (len >> 8) as u8, 0, 0]);
        out.extend_from_slice(&[msg_type as u8, (msg_type >> 8) as u8]);
        out.extend_from_slice(&[flags as u8, (flags >> 8) as u8]);
        out.extend_from_slice(&[
            seq as u8,
            (seq >> 8) as u8,
            (seq >> 16) as u8,
            (seq >> 24) as u8,
        ]);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(payload);
        while pad && out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    /// `inet_diag_msg` of 127.0.0.1:40000 -> 127.0.0.1:6443, established,
    /// if 2, cookie 0x1122334455667788, followed by a 5-byte attribute.
    #[cfg(target_endian = "little")]
    #[rustfmt::skip]
    fn diag_msg_v4() -> Vec<u8> {
        let mut msg = vec![
            2, 1, 0, 0,                       // AF_INET, ESTABLISHED, timer, retrans
            0x9c, 0x40,  0x19, 0x2b,          // sport 40000, dport 6443
            127, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            127, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            2, 0, 0, 0,                       // if 2
            0x88, 0x77, 0x66, 0x55,  0x44, 0x33, 0x22, 0x11, // cookie low, high
            0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0, // expires..inode
        ];
        // rtattr { len 5, type 8 (INET_DIAG_SHUTDOWN) } + 1 byte: ignored.
        msg.extend_from_slice(&[5, 0, 8, 0, 0]);
        msg
    }

    /// `inet_diag_msg` of a dual-stack socket `[::ffff:127.0.0.1]:50000` ->
    /// `[::ffff:127.0.0.1]:6443` (UDP, connected), cookie 5.
    #[cfg(target_endian = "little")]
    #[rustfmt::skip]
    fn diag_msg_v6_mapped() -> Vec<u8> {
        vec![
            10, 1, 0, 0,
            0xc3, 0x50,  0x19, 0x2b,          // sport 50000, dport 6443
            0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0xff, 0xff,  127, 0, 0, 1,
            0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0xff, 0xff,  127, 0, 0, 1,
            0, 0, 0, 0,
            5, 0, 0, 0,  0, 0, 0, 0,
            0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
        ]
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_diag_messages() {
        let info = parse_diag_msg(Transport::Tcp, &diag_msg_v4()).unwrap();
        assert_eq!(
            info,
            SocketInfo {
                transport: Transport::Tcp,
                family: AF_INET,
                state: 1,
                local: v4(127, 0, 0, 1, 40000),
                peer: v4(127, 0, 0, 1, 6443),
                interface: 2,
                cookie: 0x1122_3344_5566_7788,
            }
        );
        let info = parse_diag_msg(Transport::Udp, &diag_msg_v6_mapped()).unwrap();
        assert_eq!(info.family, AF_INET6);
        assert_eq!(info.local, v6("::ffff:127.0.0.1", 50000));
        assert_eq!(info.peer, v6("::ffff:127.0.0.1", 6443));
        assert_eq!(info.peer_unmapped(), v4(127, 0, 0, 1, 6443));
        assert_eq!(info.cookie, 5);
        assert!(info.is_connected());

        assert!(parse_diag_msg(Transport::Tcp, &diag_msg_v4()[..71]).is_err());
        let mut bad_family = diag_msg_v4();
        bad_family[0] = 1;
        assert!(parse_diag_msg(Transport::Tcp, &bad_family).is_err());
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_several_messages_with_alignment() {
        let mut buf = message(20, 2, 3, &diag_msg_v4(), true);
        // 16 + 77 = 93 bytes, padded to 96
        assert_eq!(buf.len(), 96);
        buf.extend(message(NLMSG_NOOP, 0, 3, &[], true));
        buf.extend(message(20, 2, 3, &diag_msg_v6_mapped(), true));
        // NLMSG_DONE carrying int 0
        buf.extend(message(NLMSG_DONE, 2, 3, &[0, 0, 0, 0], true));
        let messages = parse_messages(&buf).unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[0],
            Message::Data {
                msg_type: 20,
                flags: 2,
                seq: 3,
                payload: &diag_msg_v4(),
            }
        );
        assert!(matches!(messages[1], Message::Data { payload, .. } if payload.len() == 72));
        assert_eq!(messages[2], Message::Done { seq: 3, error: 0 });

        // An unpadded last message is accepted.
        let unpadded = message(20, 0, 1, &[1, 2, 3], false);
        assert_eq!(unpadded.len(), 19);
        assert_eq!(parse_messages(&unpadded).unwrap().len(), 1);
        // NLMSG_DONE without the int counts as success.
        assert_eq!(
            parse_messages(&message(NLMSG_DONE, 0, 1, &[], true)).unwrap(),
            vec![Message::Done { seq: 1, error: 0 }]
        );
        assert!(parse_messages(&[]).unwrap().is_empty());
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn truncated_or_malformed_buffers_are_errors() {
        let good = message(20, 2, 3, &diag_msg_v4(), true);
        // Header cut off.
        assert!(parse_messages(&good[..10]).is_err());
        // Length says 93, only 50 bytes there.
        assert!(parse_messages(&good[..50]).is_err());
        // Length below the header size.
        let mut short = good.clone();
        short[0] = 8;
        assert!(parse_messages(&short).is_err());
        // A good message followed by half a header.
        let mut tail = good.clone();
        tail.extend_from_slice(&[1, 2, 3]);
        assert!(parse_messages(&tail).is_err());
        // NLMSG_ERROR without its int.
        assert!(parse_messages(&message(NLMSG_ERROR, 0, 1, &[1, 2], true)).is_err());
        // Overrun.
        assert!(parse_messages(&message(NLMSG_OVERRUN, 0, 1, &[], true)).is_err());
        // A data message too short for inet_diag_msg fails in collect_dump.
        let mut out = Vec::new();
        assert!(
            collect_dump(
                &message(20, 2, 3, &[0; 40], true),
                3,
                Transport::Tcp,
                &mut out
            )
            .is_err()
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_nlmsg_error() {
        // struct nlmsgerr: int error = -2 (ENOENT), then the request's header.
        let mut payload = vec![0xfe, 0xff, 0xff, 0xff];
        payload.extend_from_slice(&[72, 0, 0, 0, 21, 0, 5, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        let buf = message(NLMSG_ERROR, 0x100, 9, &payload, true);
        assert_eq!(
            parse_messages(&buf).unwrap(),
            vec![Message::Error { seq: 9, error: -2 }]
        );
        assert_eq!(find_ack(&buf, 9).unwrap(), Some(-libc::ENOENT));
        assert_eq!(find_ack(&buf, 8).unwrap(), None);
        // Success ack.
        let ack = message(NLMSG_ERROR, 0x100, 4, &[0; 20], true);
        assert_eq!(find_ack(&ack, 4).unwrap(), Some(0));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn collect_dump_follows_sequence_and_done() {
        let mut out = Vec::new();
        // A stale message of an earlier exchange (seq 2) is skipped.
        let mut buf = message(20, 2, 2, &diag_msg_v6_mapped(), true);
        buf.extend(message(20, 2, 3, &diag_msg_v4(), true));
        assert_eq!(
            collect_dump(&buf, 3, Transport::Tcp, &mut out).unwrap(),
            DumpProgress::More
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].local, v4(127, 0, 0, 1, 40000));

        let mut buf = message(20, 2, 3, &diag_msg_v6_mapped(), true);
        buf.extend(message(NLMSG_DONE, 2, 2, &[0; 4], true));
        assert_eq!(
            collect_dump(&buf, 3, Transport::Udp, &mut out).unwrap(),
            DumpProgress::More
        );
        assert_eq!(out.len(), 2);
        let done = message(NLMSG_DONE, 2, 3, &[0; 4], true);
        assert_eq!(
            collect_dump(&done, 3, Transport::Udp, &mut out).unwrap(),
            DumpProgress::Done
        );

        // DONE carrying -EINVAL, NLMSG_ERROR carrying -EPERM.
        let failed = message(NLMSG_DONE, 2, 3, &(-libc::EINVAL).to_le_bytes(), true);
        let error = collect_dump(&failed, 3, Transport::Tcp, &mut out).unwrap_err();
        assert_eq!(
            error.root_cause().to_string(),
            io::Error::from_raw_os_error(libc::EINVAL).to_string()
        );
        let mut payload = (-libc::EPERM).to_le_bytes().to_vec();
        payload.extend_from_slice(&[0; 16]);
        let refused = message(NLMSG_ERROR, 0, 3, &payload, true);
        let error = collect_dump(&refused, 3, Transport::Tcp, &mut out).unwrap_err();
        assert!(format!("{error:#}").contains("refused"), "{error:#}");
        // The same error for another seq is not ours.
        assert_eq!(
            collect_dump(&refused, 4, Transport::Tcp, &mut out).unwrap(),
            DumpProgress::More
        );
        // A data message of an unexpected type is an error.
        let other = message(99, 2, 3, &diag_msg_v4(), true);
        assert!(collect_dump(&other, 3, Transport::Tcp, &mut out).is_err());
    }

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

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_messages(&bytes);
            let _ = find_ack(&bytes, 1);
            let _ = collect_dump(&bytes, 1, Transport::Tcp, &mut Vec::new());
            let _ = parse_diag_msg(Transport::Udp, &bytes);
        }

        #[test]
        fn address_bytes_round_trip(ip in any::<IpAddr>(), port in any::<u16>()) {
            let family = if ip.is_ipv4() { AF_INET } else { AF_INET6 };
            let bytes = address_bytes(family, ip).unwrap();
            prop_assert_eq!(socket_addr(family, bytes, port).unwrap(), SocketAddr::new(ip, port));
        }
    }
}
