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
//!
//! This file holds the uapi constants and the types every part shares
//! ([`Transport`], [`SocketInfo`], the state masks); each part has its own
//! file, with its tests, and everything public is re-exported here:
//! `address` (the 16 address bytes of `inet_diag_sockid` and v4-mapped
//! addresses), `request` (the `SOCK_DIAG_BY_FAMILY` and `SOCK_DESTROY`
//! requests), `filter` (the peer filter program of a dump), `reply` (decoding
//! the dump's replies) and `socket` ([`SockDiag`]: the netlink socket and its
//! exchanges).

mod address;
mod filter;
mod reply;
mod request;
mod socket;

use std::{fmt, net::SocketAddr};

pub use self::{
    address::{address_bytes, socket_addr, unmapped, v4_mapped},
    filter::{
        MAX_FILTER_PEERS, PeerFilter, encode_program, filtered_dump_request, normalized_peers,
        peer_bytecode,
    },
    reply::parse_diag_msg,
    request::{DiagRequest, SockId, destroy_request, dump_request, encode_request},
    socket::SockDiag,
};
use crate::kernel::netlink::NLMSG_HDRLEN;

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

#[cfg(test)]
mod tests {
    //! Expected bytes (here and in the tests of each part) are written out by
    //! hand from the uapi structs:
    //!
    //! ```text
    //! struct nlmsghdr         { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }        16 bytes
    //! struct inet_diag_sockid { be16 sport, dport; be32 src[4], dst[4]; u32 if; u32 cookie[2]; } 48
    //! struct inet_diag_req_v2 { u8 family, protocol, ext, pad; u32 states; sockid id; }  56
    //! struct inet_diag_msg    { u8 family, state, timer, retrans; sockid id;
    //!                           u32 expires, rqueue, wqueue, uid, inode; }               72
    //! ```
    //!
    //! Host-order fields are written as little-endian literals, so those tests
    //! only run on little-endian targets.

    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::{filter::cond_len, *};
    use crate::kernel::netlink::NLM_F_DUMP;

    /// `a.b.c.d:port`.
    pub(super) fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::new(a, b, c, d).into(), port)
    }

    /// `[ip]:port`.
    pub(super) fn v6(ip: &str, port: u16) -> SocketAddr {
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
}
