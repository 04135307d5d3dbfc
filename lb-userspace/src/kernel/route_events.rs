//! rtnetlink notifications of the changes that can make a cached next hop
//! stale: routes (IPv4 and IPv6), neighbours and links. The kernel programs
//! cache each flow's egress interface and MACs; the controller bumps
//! `xdp_config`'s `hop_gen` when one of these changes, which makes every
//! flow look its next hop up again.
//!
//! Every route and link message counts. Neighbour messages are frequent
//! (each NUD state change is one) and mostly harmless, so only those that
//! can invalidate a cached MAC count ([`NeighbourTracker`]): a neighbour
//! removed, failed or incomplete, a MAC different from the last one seen
//! for that (interface, address), and the first message about a neighbour
//! (it may have changed before the watch began).
//!
//! Wire formats: `linux/rtnetlink.h` (`RTNLGRP_*`, `RTM_*`) and
//! `linux/neighbour.h` (`struct ndmsg`, `NDA_*`, `NUD_*`).

use std::{collections::HashMap, io};

use anyhow::Context as _;

use super::netlink::{self, Message, RECV_BUFFER_LEN};

/// `RTNLGRP_LINK`.
const RTNLGRP_LINK: u32 = 1;
/// `RTNLGRP_NEIGH`.
const RTNLGRP_NEIGH: u32 = 3;
/// `RTNLGRP_IPV4_ROUTE`.
const RTNLGRP_IPV4_ROUTE: u32 = 7;
/// `RTNLGRP_IPV6_ROUTE`.
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// `RTM_NEWLINK`.
pub const RTM_NEWLINK: u16 = 16;
/// `RTM_DELLINK`.
pub const RTM_DELLINK: u16 = 17;
/// `RTM_NEWROUTE`.
pub const RTM_NEWROUTE: u16 = 24;
/// `RTM_DELROUTE`.
pub const RTM_DELROUTE: u16 = 25;
/// `RTM_NEWNEIGH`.
pub const RTM_NEWNEIGH: u16 = 28;
/// `RTM_DELNEIGH`.
pub const RTM_DELNEIGH: u16 = 29;

/// `sizeof(struct ndmsg)`: family (u8), two pad fields (u8, u16), ifindex
/// (i32), state (u16), flags (u8), type (u8).
const NDMSG_LEN: usize = 12;
/// `NDA_DST`: the neighbour's address.
const NDA_DST: u16 = 1;
/// `NDA_LLADDR`: its link-layer address.
const NDA_LLADDR: u16 = 2;
/// `NUD_INCOMPLETE`: resolution running, no MAC.
pub const NUD_INCOMPLETE: u16 = 0x01;
/// `NUD_FAILED`: resolution failed.
pub const NUD_FAILED: u16 = 0x20;

/// A socket subscribed to route, neighbour and link notifications.
pub struct RouteEvents {
    socket: netlink::Socket,
    buf: Vec<u8>,
    neighbours: NeighbourTracker,
}

impl RouteEvents {
    /// Opens the socket (in the calling thread's network namespace) and
    /// joins the four groups.
    pub fn open() -> anyhow::Result<Self> {
        let socket = netlink::Socket::open(libc::NETLINK_ROUTE, "NETLINK_ROUTE")?;
        for (group, name) in [
            (RTNLGRP_LINK, "RTNLGRP_LINK"),
            (RTNLGRP_NEIGH, "RTNLGRP_NEIGH"),
            (RTNLGRP_IPV4_ROUTE, "RTNLGRP_IPV4_ROUTE"),
            (RTNLGRP_IPV6_ROUTE, "RTNLGRP_IPV6_ROUTE"),
        ] {
            socket
                .join_group(group)
                .with_context(|| format!("joining rtnetlink group {name}"))?;
        }
        Ok(Self {
            socket,
            buf: vec![0; RECV_BUFFER_LEN],
            neighbours: NeighbourTracker::default(),
        })
    }

    /// Waits up to the socket's receive timeout for one datagram; returns
    /// how many of its messages matter (0 also on a timeout). A lost
    /// notification (`ENOBUFS`: the socket's buffer overflowed) counts as
    /// one that matters.
    pub fn wait(&mut self) -> io::Result<usize> {
        match self.socket.recv(&mut self.buf) {
            Ok(len) => Ok(self.count(len)),
            Err(err) if err.kind() == io::ErrorKind::TimedOut => Ok(0),
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => Ok(1),
            Err(err) => Err(err),
        }
    }

    /// Reads every datagram already waiting; returns how many of their
    /// messages matter.
    pub fn drain(&mut self) -> io::Result<usize> {
        let mut relevant = 0;
        // Bounded: at most this many datagrams per call.
        for _ in 0..1024 {
            match self.socket.try_recv(&mut self.buf) {
                Ok(Some(len)) => relevant += self.count(len),
                Ok(None) => return Ok(relevant),
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => relevant += 1,
                Err(err) => return Err(err),
            }
        }
        Ok(relevant)
    }

    fn count(&mut self, len: usize) -> usize {
        let Ok(messages) = netlink::parse_messages(&self.buf[..len]) else {
            // A datagram we cannot read: assume the worst.
            return 1;
        };
        messages
            .iter()
            .filter(|message| match message {
                Message::Data {
                    msg_type, payload, ..
                } => self.neighbours.matters(*msg_type, payload),
                Message::Done { .. } | Message::Error { .. } => false,
            })
            .count()
    }
}

/// The last MAC seen per neighbour, to tell the neighbour messages that can
/// make a cached next hop stale from the rest.
#[derive(Debug, Default)]
pub struct NeighbourTracker {
    macs: HashMap<(i32, Vec<u8>), Vec<u8>>,
}

/// Bound of [`NeighbourTracker`]'s memory: past it, it starts over (every
/// neighbour's next message counts once more).
const MAX_NEIGHBOURS: usize = 65536;

impl NeighbourTracker {
    /// Whether a notification of `msg_type` with `payload` can make a
    /// cached next hop stale.
    pub fn matters(&mut self, msg_type: u16, payload: &[u8]) -> bool {
        match msg_type {
            RTM_NEWROUTE | RTM_DELROUTE | RTM_NEWLINK | RTM_DELLINK => true,
            RTM_NEWNEIGH | RTM_DELNEIGH => self.neighbour(msg_type, payload),
            _ => false,
        }
    }

    fn neighbour(&mut self, msg_type: u16, payload: &[u8]) -> bool {
        let Some(Neighbour {
            ifindex,
            state,
            dst,
            lladdr,
        }) = parse_neighbour(payload)
        else {
            // Unreadable: assume the worst.
            return true;
        };
        let key = (ifindex, dst);
        if msg_type == RTM_DELNEIGH || state & (NUD_FAILED | NUD_INCOMPLETE) != 0 {
            return self.macs.remove(&key).is_some() || msg_type == RTM_DELNEIGH;
        }
        let Some(lladdr) = lladdr else {
            return false;
        };
        if self.macs.len() >= MAX_NEIGHBOURS && !self.macs.contains_key(&key) {
            self.macs.clear();
        }
        self.macs.insert(key, lladdr.clone()) != Some(lladdr)
    }
}

/// What a neighbour message says.
struct Neighbour {
    ifindex: i32,
    /// `NUD_*` bits.
    state: u16,
    /// Its address (`NDA_DST`).
    dst: Vec<u8>,
    /// Its MAC (`NDA_LLADDR`), absent while unresolved.
    lladdr: Option<Vec<u8>>,
}

/// The [`Neighbour`] of an `RTM_*NEIGH` payload (`None`: unreadable).
fn parse_neighbour(payload: &[u8]) -> Option<Neighbour> {
    if payload.len() < NDMSG_LEN {
        return None;
    }
    let ifindex = i32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
    let state = u16::from_ne_bytes([payload[8], payload[9]]);
    let (mut dst, mut lladdr) = (None, None);
    let mut offset = NDMSG_LEN;
    while offset + 4 <= payload.len() {
        let len = usize::from(u16::from_ne_bytes([payload[offset], payload[offset + 1]]));
        let kind = u16::from_ne_bytes([payload[offset + 2], payload[offset + 3]]);
        if len < 4 || offset + len > payload.len() {
            return None;
        }
        let data = payload[offset + 4..offset + len].to_vec();
        match kind {
            NDA_DST => dst = Some(data),
            NDA_LLADDR => lladdr = Some(data),
            _ => {}
        }
        offset += len.next_multiple_of(4);
    }
    Some(Neighbour {
        ifindex,
        state,
        dst: dst?,
        lladdr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NUD_REACHABLE: u16 = 0x02;
    const NUD_STALE: u16 = 0x04;

    /// An `RTM_*NEIGH` payload.
    fn neigh(ifindex: i32, state: u16, dst: &[u8], mac: Option<&[u8]>) -> Vec<u8> {
        let mut out = vec![2, 0, 0, 0];
        out.extend_from_slice(&ifindex.to_ne_bytes());
        out.extend_from_slice(&state.to_ne_bytes());
        out.extend_from_slice(&[0, 1]);
        let mut attr = |kind: u16, data: &[u8]| {
            out.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(4), 0);
        };
        attr(NDA_DST, dst);
        if let Some(mac) = mac {
            attr(NDA_LLADDR, mac);
        }
        out
    }

    const IP: [u8; 4] = [10, 0, 0, 2];
    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    #[test]
    fn routes_and_links_always_matter() {
        let mut tracker = NeighbourTracker::default();
        for msg_type in [RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWLINK, RTM_DELLINK] {
            assert!(tracker.matters(msg_type, &[]), "{msg_type}");
        }
        // Addresses (RTM_NEWADDR) and others do not.
        assert!(!tracker.matters(20, &[]));
        assert!(!tracker.matters(3, &[]));
    }

    #[test]
    fn neighbour_messages_matter_only_when_a_mac_may_change() {
        let mut t = NeighbourTracker::default();
        // First sight: counts (it may have changed before the watch).
        assert!(t.matters(RTM_NEWNEIGH, &neigh(2, NUD_REACHABLE, &IP, Some(&MAC_A))));
        // The same MAC again (REACHABLE -> STALE -> REACHABLE): no.
        assert!(!t.matters(RTM_NEWNEIGH, &neigh(2, NUD_STALE, &IP, Some(&MAC_A))));
        assert!(!t.matters(RTM_NEWNEIGH, &neigh(2, NUD_REACHABLE, &IP, Some(&MAC_A))));
        // No MAC in the message (a probe): no.
        assert!(!t.matters(RTM_NEWNEIGH, &neigh(2, 0x10, &IP, None)));
        // Another MAC: yes, once.
        assert!(t.matters(RTM_NEWNEIGH, &neigh(2, NUD_REACHABLE, &IP, Some(&MAC_B))));
        assert!(!t.matters(RTM_NEWNEIGH, &neigh(2, NUD_REACHABLE, &IP, Some(&MAC_B))));
        // The same address on another interface is another neighbour.
        assert!(t.matters(RTM_NEWNEIGH, &neigh(3, NUD_REACHABLE, &IP, Some(&MAC_B))));
        // Failed: yes (a known neighbour), then it is forgotten.
        assert!(t.matters(RTM_NEWNEIGH, &neigh(2, NUD_FAILED, &IP, None)));
        assert!(!t.matters(RTM_NEWNEIGH, &neigh(2, NUD_INCOMPLETE, &IP, None)));
        assert!(t.matters(RTM_NEWNEIGH, &neigh(2, NUD_REACHABLE, &IP, Some(&MAC_B))));
        // Deleted: always.
        assert!(t.matters(RTM_DELNEIGH, &neigh(2, NUD_STALE, &IP, Some(&MAC_B))));
        assert!(t.matters(RTM_DELNEIGH, &neigh(9, NUD_STALE, &IP, Some(&MAC_B))));
        // Unreadable: assume it matters.
        assert!(t.matters(RTM_NEWNEIGH, &[2, 0, 0]));
        let mut bad = neigh(2, NUD_REACHABLE, &IP, Some(&MAC_A));
        bad[12] = 200;
        assert!(t.matters(RTM_NEWNEIGH, &bad));
    }

    #[test]
    fn subscribing_needs_no_privilege() {
        let mut events = RouteEvents::open().unwrap();
        // Nothing waiting in a quiet namespace is fine either way; the
        // call must not block.
        events.drain().unwrap();
    }
}
