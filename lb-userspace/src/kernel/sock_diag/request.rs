//! The requests without a filter: `SOCK_DIAG_BY_FAMILY` dumps of one family
//! and transport, and `SOCK_DESTROY` of one socket; `nlmsghdr` followed by
//! `struct inet_diag_req_v2`, [`REQUEST_LEN`] bytes.
//!
//! Invariant: a dump names no socket ([`SockId::ANY`]: the kernel skips
//! sockets whose ports differ from non-zero ports in the request); a destroy
//! names exactly one, by every field of its identity including the cookie.

use super::{
    INET_DIAG_NOCOOKIE, REQUEST_LEN, SOCK_DESTROY, SOCK_DIAG_BY_FAMILY, SOCKID_LEN, SocketInfo,
    Transport, address::address_bytes,
};
use crate::kernel::netlink::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, put_header};

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

#[cfg(test)]
mod tests {
    //! Expected bytes by hand from the uapi structs (laid out in the tests of
    //! `mod.rs`); host-order fields as little-endian literals.

    use super::*;
    use crate::kernel::sock_diag::{
        AF_INET, AF_INET6, ALL_STATES, ESTABLISHED_ONLY, STATE_ESTABLISHED,
        tests::{v4, v6},
    };

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
}
