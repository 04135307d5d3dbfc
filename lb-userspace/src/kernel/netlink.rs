//! What [`sock_diag`](crate::kernel::sock_diag) (`NETLINK_SOCK_DIAG`) and
//! [`if_addrs`](crate::kernel::if_addrs) (`NETLINK_ROUTE`) share of netlink: the
//! `nlmsghdr` of a request, a socket connected to the kernel with its send
//! and receive loops, splitting a datagram into messages, and following a
//! dump or an acknowledgement by sequence number.
//!
//! Wire formats come from the kernel's uapi header `linux/netlink.h`.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

/// `sizeof(struct nlmsghdr)`: `__u32 len; __u16 type; __u16 flags; __u32 seq; __u32 pid`.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `NLMSG_ALIGNTO`: every message starts on a 4-byte boundary.
const NLMSG_ALIGNTO: usize = 4;
/// `NLMSG_NOOP`: to be ignored.
pub(crate) const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: payload `struct nlmsgerr { int error; struct nlmsghdr msg; … }`.
pub(crate) const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: end of a dump; payload is the dump's `int` result.
pub(crate) const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`: data lost.
pub(crate) const NLMSG_OVERRUN: u16 = 4;
/// `NLM_F_REQUEST`.
pub(crate) const NLM_F_REQUEST: u16 = 0x01;
/// `NLM_F_ACK`: reply with an `NLMSG_ERROR` carrying 0 or `-errno`.
pub(crate) const NLM_F_ACK: u16 = 0x04;
/// `NLM_F_DUMP_INTR`: the dumped state changed during the dump.
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_DUMP` = `NLM_F_ROOT | NLM_F_MATCH`.
pub(crate) const NLM_F_DUMP: u16 = 0x100 | 0x200;

/// Size of a receive buffer. The kernel sizes dump messages after the
/// largest read it has seen, capped at 32 KiB (`netlink_dump`), so a 32 KiB
/// read always takes a whole datagram.
pub(crate) const RECV_BUFFER_LEN: usize = 32 * 1024;
/// How long one read waits for the kernel (`SO_RCVTIMEO`).
pub(crate) const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes the `nlmsghdr` of a request of `len` bytes into `out[..16]`;
/// `nlmsg_pid` stays 0 (the kernel fills in the sender).
pub(crate) fn put_header(out: &mut [u8], len: usize, msg_type: u16, flags: u16, seq: u32) {
    out[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    out[4..6].copy_from_slice(&msg_type.to_ne_bytes());
    out[6..8].copy_from_slice(&flags.to_ne_bytes());
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    out[12..16].fill(0);
}

/// A netlink socket (close-on-exec) connected to the kernel, in the network
/// namespace of the thread that opened it.
#[derive(Debug)]
pub(crate) struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Opens a socket of netlink `protocol` (`libc::NETLINK_*`), named
    /// `name` in errors, with a receive timeout of [`RECV_TIMEOUT`].
    pub(crate) fn open(protocol: libc::c_int, name: &str) -> anyhow::Result<Self> {
        // SAFETY: socket(2) takes no pointers; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("socket(AF_NETLINK, {name})"));
        }
        // SAFETY: `raw` is a new, valid file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // Connecting to the kernel (port id 0) makes the socket refuse
        // messages from other user-space netlink sockets.
        // SAFETY: all-zero bytes are a valid `sockaddr_nl` (a C struct of integers).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `kernel` is a live sockaddr_nl and the length passed is its size.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&raw const kernel).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("connect({name}) to the kernel"));
        }

        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a live timeval and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast::<libc::c_void>(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("setsockopt(SO_RCVTIMEO) on the {name} socket"));
        }
        Ok(Self { fd })
    }

    /// Sends one request (a whole datagram), retrying on `EINTR`.
    pub(crate) fn send(&self, request: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: `request` is a live buffer of `request.len()` bytes the kernel only reads.
            let sent = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    request.as_ptr().cast::<libc::c_void>(),
                    request.len(),
                    0,
                )
            };
            if sent >= 0 {
                return if sent as usize == request.len() {
                    Ok(())
                } else {
                    Err(io::Error::other(format!(
                        "short netlink send: {sent} of {} bytes",
                        request.len()
                    )))
                };
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// Reads one datagram into `buf`, retrying on `EINTR`; returns its
    /// length. A datagram larger than `buf` and no reply within
    /// [`RECV_TIMEOUT`] are errors.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_flags(buf, 0)
    }

    /// Like [`Self::recv`] but returns at once: `Ok(None)` when no datagram
    /// is waiting.
    pub(crate) fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.recv_flags(buf, libc::MSG_DONTWAIT) {
            Ok(len) => Ok(Some(len)),
            Err(err) if err.kind() == io::ErrorKind::TimedOut => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Subscribes the socket to the multicast group `group`
    /// (`RTNLGRP_*`: the kernel then sends its notifications of that kind).
    pub(crate) fn join_group(&self, group: u32) -> io::Result<()> {
        // SAFETY: `group` is a live u32 and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                (&raw const group).cast::<libc::c_void>(),
                size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn recv_flags(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        loop {
            // MSG_TRUNC makes netlink return the datagram's real length, so a
            // datagram larger than the buffer is detected instead of cut.
            // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
            let received = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    libc::MSG_TRUNC | flags,
                )
            };
            if received >= 0 {
                let received = received as usize;
                if received > buf.len() {
                    return Err(io::Error::other(format!(
                        "netlink datagram of {received} bytes does not fit the {}-byte buffer",
                        buf.len()
                    )));
                }
                return Ok(received);
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no reply from the kernel within {RECV_TIMEOUT:?}"),
                    ));
                }
                _ => return Err(error),
            }
        }
    }
}

/// One netlink message of a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    /// Any other message type (e.g. an `inet_diag_msg` or an `ifaddrmsg`
    /// with attributes).
    Data {
        /// `nlmsg_type`.
        msg_type: u16,
        /// `nlmsg_flags`.
        flags: u16,
        /// `nlmsg_seq`.
        seq: u32,
        /// The bytes after the header, up to `nlmsg_len`.
        payload: &'a [u8],
    },
    /// `NLMSG_DONE` with the dump's result (0 or `-errno`; 0 if absent).
    Done {
        /// `nlmsg_seq`.
        seq: u32,
        /// 0 or a negative errno.
        error: i32,
    },
    /// `NLMSG_ERROR`: 0 is an acknowledgement, otherwise `-errno`.
    Error {
        /// `nlmsg_seq`.
        seq: u32,
        /// 0 or a negative errno.
        error: i32,
    },
}

const fn nlmsg_align(len: usize) -> usize {
    (len + NLMSG_ALIGNTO - 1) & !(NLMSG_ALIGNTO - 1)
}

/// The native-endian `u16` at `offset` of `buf`.
pub(crate) fn u16_at(buf: &[u8], offset: usize) -> u16 {
    u16::from_ne_bytes([buf[offset], buf[offset + 1]])
}

/// The native-endian `u32` at `offset` of `buf`.
pub(crate) fn u32_at(buf: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes([
        buf[offset],
        buf[offset + 1],
        buf[offset + 2],
        buf[offset + 3],
    ])
}

fn i32_at(buf: &[u8], offset: usize) -> i32 {
    u32_at(buf, offset) as i32
}

/// Splits one datagram into netlink messages (`NLMSG_NOOP` skipped). A
/// truncated header or a length that is too small or runs past the buffer is
/// an error; `NLMSG_OVERRUN` too.
pub(crate) fn parse_messages(buf: &[u8]) -> anyhow::Result<Vec<Message<'_>>> {
    let mut messages = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        ensure!(
            rest.len() >= NLMSG_HDRLEN,
            "truncated netlink header at offset {offset}: {} bytes left",
            rest.len()
        );
        let len = u32_at(rest, 0) as usize;
        let msg_type = u16_at(rest, 4);
        let flags = u16_at(rest, 6);
        let seq = u32_at(rest, 8);
        ensure!(
            len >= NLMSG_HDRLEN,
            "netlink message at offset {offset} has length {len} < {NLMSG_HDRLEN}"
        );
        ensure!(
            len <= rest.len(),
            "truncated netlink message at offset {offset}: length {len}, {} bytes left",
            rest.len()
        );
        let payload = &rest[NLMSG_HDRLEN..len];
        match msg_type {
            NLMSG_NOOP => {}
            NLMSG_OVERRUN => bail!("netlink overrun (data lost)"),
            NLMSG_ERROR => {
                ensure!(
                    payload.len() >= 4,
                    "NLMSG_ERROR at offset {offset} too short: {} payload bytes",
                    payload.len()
                );
                messages.push(Message::Error {
                    seq,
                    error: i32_at(payload, 0),
                });
            }
            NLMSG_DONE => {
                let error = if payload.len() >= 4 {
                    i32_at(payload, 0)
                } else {
                    0
                };
                messages.push(Message::Done { seq, error });
            }
            _ => messages.push(Message::Data {
                msg_type,
                flags,
                seq,
                payload,
            }),
        }
        // The last message may lack its padding; never step past the end.
        offset = offset.saturating_add(nlmsg_align(len)).min(buf.len());
    }
    Ok(messages)
}

/// Where a dump stands after one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DumpProgress {
    /// `NLMSG_DONE` not seen yet.
    More,
    /// `NLMSG_DONE` seen.
    Done,
}

/// Hands the data messages of one dump datagram for request `seq` to
/// `on_data` (`nlmsg_type`, `nlmsg_flags`, payload), in order. Messages with
/// another sequence number (left over from an earlier, abandoned exchange)
/// are skipped; an `NLMSG_ERROR` or a negative `NLMSG_DONE` for `seq` is an
/// error, and so is an error of `on_data`.
pub(crate) fn walk_dump<'a>(
    buf: &'a [u8],
    seq: u32,
    mut on_data: impl FnMut(u16, u16, &'a [u8]) -> anyhow::Result<()>,
) -> anyhow::Result<DumpProgress> {
    for message in parse_messages(buf)? {
        match message {
            Message::Data { seq: s, .. }
            | Message::Done { seq: s, .. }
            | Message::Error { seq: s, .. }
                if s != seq => {}
            Message::Data {
                msg_type,
                flags,
                payload,
                ..
            } => on_data(msg_type, flags, payload)?,
            Message::Done { error, .. } => {
                if error < 0 {
                    return Err(io::Error::from_raw_os_error(-error))
                        .context("the kernel ended the dump with an error");
                }
                return Ok(DumpProgress::Done);
            }
            Message::Error { error, .. } => {
                if error < 0 {
                    return Err(io::Error::from_raw_os_error(-error))
                        .context("the kernel refused the dump request");
                }
                bail!("unexpected acknowledgement in a dump");
            }
        }
    }
    Ok(DumpProgress::More)
}

/// The acknowledgement for request `seq` in one datagram: `Some(0)` for
/// success, `Some(-errno)` for failure, `None` if this datagram has none.
pub(crate) fn find_ack(buf: &[u8], seq: u32) -> anyhow::Result<Option<i32>> {
    for message in parse_messages(buf)? {
        if let Message::Error { seq: s, error } = message
            && s == seq
        {
            return Ok(Some(error));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One message: header (native endian), `payload`, padded to 4 bytes.
    fn message(msg_type: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut out = vec![0; NLMSG_HDRLEN];
        put_header(&mut out, len, msg_type, flags, seq);
        out.extend_from_slice(payload);
        out.resize(nlmsg_align(out.len()), 0);
        out
    }

    #[test]
    fn header_fields() {
        let mut out = [0xaa; 20];
        put_header(&mut out, 20, 22, 0x301, 7);
        let mut expected = Vec::new();
        expected.extend_from_slice(&20u32.to_ne_bytes());
        expected.extend_from_slice(&22u16.to_ne_bytes());
        expected.extend_from_slice(&0x301u16.to_ne_bytes());
        expected.extend_from_slice(&7u32.to_ne_bytes());
        expected.extend_from_slice(&[0; 4]);
        assert_eq!(out[..16], expected[..]);
        assert_eq!(out[16..], [0xaa; 4], "payload bytes untouched");
    }

    #[test]
    fn walk_dump_follows_sequence_flags_and_done() {
        // A stale message of an earlier exchange (seq 2) is skipped.
        let mut buf = message(20, 0, 2, &[9]);
        buf.extend(message(20, NLM_F_DUMP_INTR, 3, &[1, 2]));
        buf.extend(message(NLMSG_NOOP, 0, 3, &[]));
        buf.extend(message(21, 0, 3, &[3]));
        let mut seen = Vec::new();
        let progress = walk_dump(&buf, 3, |msg_type, flags, payload| {
            seen.push((msg_type, flags, payload.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(progress, DumpProgress::More);
        assert_eq!(seen, [(20, NLM_F_DUMP_INTR, vec![1, 2]), (21, 0, vec![3])]);

        // Done ends the dump; what follows it is not looked at.
        let mut done = message(NLMSG_DONE, 0, 3, &0i32.to_ne_bytes());
        done.extend(message(20, 0, 3, &[]));
        let mut calls = 0;
        let progress = walk_dump(&done, 3, |_, _, _| {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((progress, calls), (DumpProgress::Done, 0));
        // Another request's Done does not end this one.
        assert_eq!(
            walk_dump(&done[..20], 4, |_, _, _| Ok(())).unwrap(),
            DumpProgress::More
        );
    }

    #[test]
    fn walk_dump_errors() {
        let ok = |_: u16, _: u16, _: &[u8]| Ok(());
        let failed = message(NLMSG_DONE, 0, 3, &(-libc::EBUSY).to_ne_bytes());
        let error = walk_dump(&failed, 3, ok).unwrap_err();
        assert!(format!("{error:#}").contains("ended the dump"), "{error:#}");
        let refused = message(NLMSG_ERROR, 0, 3, &(-libc::EINVAL).to_ne_bytes());
        let error = walk_dump(&refused, 3, ok).unwrap_err();
        assert!(format!("{error:#}").contains("refused"), "{error:#}");
        let ack = message(NLMSG_ERROR, 0, 3, &0i32.to_ne_bytes());
        assert!(walk_dump(&ack, 3, ok).is_err());
        let data = message(20, 0, 3, &[]);
        assert!(walk_dump(&data, 3, |_, _, _| bail!("bad payload")).is_err());
        assert!(walk_dump(&message(NLMSG_OVERRUN, 0, 3, &[]), 3, ok).is_err());
    }

    #[test]
    fn sockets_of_both_protocols_open_and_errors_name_the_protocol() {
        // Needs no privilege.
        for (protocol, name) in [
            (libc::NETLINK_ROUTE, "NETLINK_ROUTE"),
            (libc::NETLINK_SOCK_DIAG, "NETLINK_SOCK_DIAG"),
        ] {
            let socket = Socket::open(protocol, name).unwrap();
            assert!(format!("{socket:?}").contains("fd"));
        }
        let error = Socket::open(-1, "NETLINK_NONSENSE").unwrap_err();
        assert!(
            format!("{error:#}").starts_with("socket(AF_NETLINK, NETLINK_NONSENSE)"),
            "{error:#}"
        );
    }
}
