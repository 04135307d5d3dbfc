//! Decoding the replies of a dump: `struct inet_diag_msg` into a
//! [`SocketInfo`] ([`parse_diag_msg`]), and the messages of one datagram
//! into the dump's sockets ([`collect_dump`]).
//!
//! Invariant: decoding never panics, whatever the bytes (a proptest feeds it
//! arbitrary ones); what does not parse is an error naming what was wrong.

use anyhow::ensure;

use super::{DIAG_MSG_LEN, SOCK_DIAG_BY_FAMILY, SocketInfo, Transport, address::socket_addr};
use crate::kernel::netlink::{DumpProgress, u32_at, walk_dump};

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
pub(super) fn collect_dump(
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

#[cfg(test)]
mod tests {
    //! Expected bytes by hand from the uapi structs (laid out in the tests of
    //! `mod.rs`); host-order fields as little-endian literals.

    use std::io;

    use proptest::prelude::*;

    use super::*;
    use crate::kernel::{
        netlink::{
            Message, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, find_ack, parse_messages,
        },
        sock_diag::{
            AF_INET, AF_INET6,
            tests::{v4, v6},
        },
    };

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

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_messages(&bytes);
            let _ = find_ack(&bytes, 1);
            let _ = collect_dump(&bytes, 1, Transport::Tcp, &mut Vec::new());
            let _ = parse_diag_msg(Transport::Udp, &bytes);
        }
    }
}
