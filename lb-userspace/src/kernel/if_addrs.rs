//! The primary addresses of the node's interfaces, which the XDP program
//! uses as SNAT source when `xdp.snat_ipv4`/`snat_ipv6` are not set: an
//! rtnetlink `RTM_GETADDR` dump, the pure choice of each interface's
//! addresses, and the difference to what the `if_addrs` map holds.
//!
//! Per interface (by index):
//! - IPv4: the first address in kernel order that is not secondary and not
//!   host-scoped (`127.0.0.1` on `lo` is never a source for forwarded packets);
//! - IPv6: the first global-scope address that is not temporary (privacy
//!   extension), tentative (duplicate address detection running), failed
//!   DAD, or deprecated.
//!
//! Interfaces with neither get no entry, unless they are a veth (or
//! netkit) whose peer lives in another network namespace: those get
//! [`IF_PEER_NETNS`] (with or without addresses), which lets the tc
//! program send packets for them straight into the peer
//! (`bpf_redirect_peer`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, ensure};
use lb_common::{
    IF_HAS_V4, IF_HAS_V6, IF_PEER_NETNS, IfAddrs, MAX_INTERFACES, ip_from_bytes, ip_to_bytes,
};

use crate::kernel::netlink::{
    self, DumpProgress, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_HDRLEN, RECV_BUFFER_LEN,
    put_header, walk_dump,
};

/// `RTM_NEWADDR`: one address in a dump.
const RTM_NEWADDR: u16 = 20;
/// `RTM_GETADDR`: the dump request.
const RTM_GETADDR: u16 = 22;
/// `struct ifaddrmsg`: family, prefix length, flags, scope (u8 each), index (u32).
const IFADDRMSG_LEN: usize = 8;
/// Length of the dump request.
pub const REQUEST_LEN: usize = NLMSG_HDRLEN + IFADDRMSG_LEN;
/// `struct rtattr` header.
const RTA_HDRLEN: usize = 4;
/// `IFA_ADDRESS`: the address (the peer's on point-to-point links).
const IFA_ADDRESS: u16 = 1;
/// `IFA_LOCAL`: the local address (only sent when it differs from `IFA_ADDRESS`).
const IFA_LOCAL: u16 = 2;
/// `IFA_FLAGS`: all 32 flag bits (`ifa_flags` holds only the low 8).
const IFA_FLAGS: u16 = 8;
/// `IFA_F_SECONDARY` (IPv4), the same bit as `IFA_F_TEMPORARY` (IPv6).
pub const IFA_F_SECONDARY: u32 = 0x01;
/// `IFA_F_TEMPORARY`: an IPv6 privacy address.
pub const IFA_F_TEMPORARY: u32 = 0x01;
/// `IFA_F_DADFAILED`.
pub const IFA_F_DADFAILED: u32 = 0x08;
/// `IFA_F_DEPRECATED`.
pub const IFA_F_DEPRECATED: u32 = 0x20;
/// `IFA_F_TENTATIVE`: duplicate address detection still running.
pub const IFA_F_TENTATIVE: u32 = 0x40;
/// `RT_SCOPE_UNIVERSE`: a global address.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// `RT_SCOPE_HOST`: usable on this host only (loopback).
pub const RT_SCOPE_HOST: u8 = 254;
/// Dumps interrupted by an address change are repeated this often.
const DUMP_ATTEMPTS: usize = 3;

/// One address of an interface, as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// Interface index.
    pub ifindex: u32,
    /// The local address.
    pub addr: IpAddr,
    /// `IFA_F_*` flags.
    pub flags: u32,
    /// `RT_SCOPE_*`.
    pub scope: u8,
}

/// The `RTM_GETADDR` dump request of both families.
pub fn dump_request(seq: u32) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    put_header(
        &mut out,
        REQUEST_LEN,
        RTM_GETADDR,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    );
    // ifaddrmsg all zero: AF_UNSPEC = every family.
    out
}

/// Decodes an `RTM_NEWADDR` payload (`ifaddrmsg` and its attributes); other
/// families than IPv4/IPv6 give `None`.
pub fn parse_address(payload: &[u8]) -> anyhow::Result<Option<InterfaceAddress>> {
    ensure!(
        payload.len() >= IFADDRMSG_LEN,
        "ifaddrmsg too short: {} bytes, need {IFADDRMSG_LEN}",
        payload.len()
    );
    let family = i32::from(payload[0]);
    let addr_len = match family {
        libc::AF_INET => 4,
        libc::AF_INET6 => 16,
        _ => return Ok(None),
    };
    let mut flags = u32::from(payload[2]);
    let scope = payload[3];
    let ifindex = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
    let (mut address, mut local) = (None, None);
    let mut offset = IFADDRMSG_LEN;
    while offset + RTA_HDRLEN <= payload.len() {
        let len = usize::from(u16::from_ne_bytes([payload[offset], payload[offset + 1]]));
        let kind = u16::from_ne_bytes([payload[offset + 2], payload[offset + 3]]);
        ensure!(
            len >= RTA_HDRLEN && offset + len <= payload.len(),
            "bad attribute length {len} at offset {offset} of an address message ({} bytes)",
            payload.len()
        );
        let data = &payload[offset + RTA_HDRLEN..offset + len];
        match kind {
            IFA_ADDRESS | IFA_LOCAL => {
                ensure!(
                    data.len() == addr_len,
                    "address attribute of {} bytes for family {family}",
                    data.len()
                );
                let ip = if addr_len == 4 {
                    IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3]))
                } else {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(data);
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                if kind == IFA_LOCAL {
                    local = Some(ip);
                } else {
                    address = Some(ip);
                }
            }
            IFA_FLAGS if data.len() >= 4 => {
                flags = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
            }
            _ => {}
        }
        offset += len.next_multiple_of(4);
    }
    Ok(local.or(address).map(|addr| InterfaceAddress {
        ifindex,
        addr,
        flags,
        scope,
    }))
}

/// Whether `address` may be its interface's IPv4 SNAT source.
const fn usable_v4(address: &InterfaceAddress) -> bool {
    address.flags & IFA_F_SECONDARY == 0 && address.scope < RT_SCOPE_HOST
}

/// Whether `address` may be its interface's IPv6 SNAT source.
const fn usable_v6(address: &InterfaceAddress) -> bool {
    address.scope == RT_SCOPE_UNIVERSE
        && address.flags & (IFA_F_TEMPORARY | IFA_F_TENTATIVE | IFA_F_DADFAILED | IFA_F_DEPRECATED)
            == 0
}

/// Each interface's entry of the `if_addrs` map, chosen from `addresses`
/// (in kernel order); interfaces without a usable address are left out.
pub fn primary_addresses(addresses: &[InterfaceAddress]) -> BTreeMap<u32, IfAddrs> {
    let mut entries: BTreeMap<u32, IfAddrs> = BTreeMap::new();
    for address in addresses {
        let (usable, bit) = match address.addr {
            IpAddr::V4(_) => (usable_v4(address), IF_HAS_V4),
            IpAddr::V6(_) => (usable_v6(address), IF_HAS_V6),
        };
        let entry = entries.entry(address.ifindex).or_default();
        if !usable || entry.flags & bit != 0 {
            continue;
        }
        let bytes = ip_to_bytes(address.addr).0;
        if bit == IF_HAS_V4 {
            entry.v4 = bytes;
        } else {
            entry.v6 = bytes;
        }
        entry.flags |= bit;
    }
    entries.retain(|_, entry| entry.flags != 0);
    entries
}

/// The addresses of an entry, for logs: `10.0.0.1 2001:db8::1`, or `none`.
pub fn describe(entry: &IfAddrs) -> String {
    let mut parts = Vec::new();
    if entry.flags & IF_HAS_V4 != 0 {
        parts.push(ip_from_bytes(entry.v4, lb_common::AF_INET).to_string());
    }
    if entry.flags & IF_HAS_V6 != 0 {
        parts.push(ip_from_bytes(entry.v6, lb_common::AF_INET6).to_string());
    }
    if entry.flags & IF_PEER_NETNS != 0 {
        parts.push("(peer in another namespace)".to_owned());
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(" ")
    }
}

/// What to write to bring the map from `current` to `wanted`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Entries to write (new or changed).
    pub set: Vec<(u32, IfAddrs)>,
    /// Interface indexes to remove.
    pub remove: Vec<u32>,
}

impl Changes {
    /// Whether nothing changes.
    pub const fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// The writes that turn `current` into `wanted`, keeping at most
/// [`MAX_INTERFACES`] entries (the lowest indexes; the rest is reported by
/// the caller).
pub fn changes(current: &BTreeMap<u32, IfAddrs>, wanted: &BTreeMap<u32, IfAddrs>) -> Changes {
    let wanted: BTreeMap<u32, IfAddrs> = wanted
        .iter()
        .take(MAX_INTERFACES as usize)
        .map(|(ifindex, entry)| (*ifindex, *entry))
        .collect();
    Changes {
        remove: current
            .keys()
            .filter(|ifindex| !wanted.contains_key(ifindex))
            .copied()
            .collect(),
        set: wanted
            .into_iter()
            .filter(|(ifindex, entry)| current.get(ifindex) != Some(entry))
            .collect(),
    }
}

/// The addresses of every interface in the calling thread's network
/// namespace, from the kernel, in kernel order.
pub fn dump() -> anyhow::Result<Vec<InterfaceAddress>> {
    let socket = netlink::Socket::open(libc::NETLINK_ROUTE, "NETLINK_ROUTE")?;
    let mut buf = vec![0u8; RECV_BUFFER_LEN];
    let mut attempt = 1;
    loop {
        let (addresses, interrupted) =
            dump_once(&socket, &mut buf, attempt as u32).context("RTM_GETADDR dump")?;
        if !interrupted || attempt >= DUMP_ATTEMPTS {
            return Ok(addresses);
        }
        attempt += 1;
    }
}

/// The `if_addrs` entries of the node's interfaces now.
pub fn read() -> anyhow::Result<BTreeMap<u32, IfAddrs>> {
    let peers =
        super::devices::peer_netns_links().context("finding veths with a peer elsewhere")?;
    Ok(with_peers(primary_addresses(&dump()?), &peers))
}

/// `entries` with [`IF_PEER_NETNS`] set for each interface of `peers`
/// (an entry created for one without addresses).
pub fn with_peers(
    mut entries: BTreeMap<u32, IfAddrs>,
    peers: &BTreeSet<u32>,
) -> BTreeMap<u32, IfAddrs> {
    for ifindex in peers {
        entries.entry(*ifindex).or_default().flags |= IF_PEER_NETNS;
    }
    entries
}

/// One dump through `socket` (replies read into `buf`); also says whether
/// the kernel flagged it as interrupted.
fn dump_once(
    socket: &netlink::Socket,
    buf: &mut [u8],
    seq: u32,
) -> anyhow::Result<(Vec<InterfaceAddress>, bool)> {
    socket
        .send(&dump_request(seq))
        .context("sending the request")?;
    let mut addresses = Vec::new();
    let mut interrupted = false;
    loop {
        let len = socket.recv(buf).context("receiving the dump")?;
        let progress = walk_dump(&buf[..len], seq, |msg_type, flags, payload| {
            interrupted |= flags & NLM_F_DUMP_INTR != 0;
            if msg_type == RTM_NEWADDR
                && let Some(address) = parse_address(payload)?
            {
                addresses.push(address);
            }
            Ok(())
        })?;
        if progress == DumpProgress::Done {
            return Ok((addresses, interrupted));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `RTM_NEWADDR` payload: ifaddrmsg, then (type, data) attributes.
    fn payload(family: u8, flags: u8, scope: u8, ifindex: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut out = vec![family, 24, flags, scope];
        out.extend_from_slice(&ifindex.to_ne_bytes());
        for (kind, data) in attrs {
            let len = (RTA_HDRLEN + data.len()) as u16;
            out.extend_from_slice(&len.to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(text: &str) -> IpAddr {
        IpAddr::V6(text.parse().unwrap())
    }

    fn address(ifindex: u32, addr: IpAddr, flags: u32, scope: u8) -> InterfaceAddress {
        InterfaceAddress {
            ifindex,
            addr,
            flags,
            scope,
        }
    }

    #[test]
    fn request_bytes() {
        let request = dump_request(7);
        let mut expected = Vec::new();
        expected.extend_from_slice(&24u32.to_ne_bytes());
        expected.extend_from_slice(&22u16.to_ne_bytes());
        expected.extend_from_slice(&0x301u16.to_ne_bytes());
        expected.extend_from_slice(&7u32.to_ne_bytes());
        expected.extend_from_slice(&[0; 4 + 8]);
        assert_eq!(request.to_vec(), expected);
    }

    #[test]
    fn parses_ipv4_with_local_and_flags_attribute() {
        // eth0 (index 2) 10.0.0.1/24 with IFA_ADDRESS, IFA_LOCAL, a label and IFA_FLAGS.
        let bytes = payload(
            2,
            0,
            0,
            2,
            &[
                (IFA_ADDRESS, &[10, 0, 0, 9]),
                (IFA_LOCAL, &[10, 0, 0, 1]),
                (3, b"eth0\0"),
                (IFA_FLAGS, &0x80u32.to_ne_bytes()),
            ],
        );
        assert_eq!(
            parse_address(&bytes).unwrap(),
            Some(address(2, v4(10, 0, 0, 1), 0x80, 0))
        );
    }

    #[test]
    fn parses_ipv6_from_ifa_address_and_byte_flags() {
        let ip = "2001:db8::5".parse::<Ipv6Addr>().unwrap().octets();
        let bytes = payload(10, 0x40, 0, 3, &[(IFA_ADDRESS, &ip)]);
        assert_eq!(
            parse_address(&bytes).unwrap(),
            Some(address(3, v6("2001:db8::5"), 0x40, 0))
        );
    }

    #[test]
    fn other_families_and_bad_messages() {
        assert_eq!(parse_address(&payload(17, 0, 0, 1, &[])).unwrap(), None);
        // No address attribute at all.
        assert_eq!(parse_address(&payload(2, 0, 0, 1, &[])).unwrap(), None);
        assert!(parse_address(&[2, 0, 0]).is_err());
        // An IPv6-sized address in an IPv4 message.
        assert!(parse_address(&payload(2, 0, 0, 1, &[(IFA_ADDRESS, &[0; 16])])).is_err());
        // An attribute running past the end.
        let mut bytes = payload(2, 0, 0, 1, &[(IFA_LOCAL, &[10, 0, 0, 1])]);
        bytes[8] = 200;
        assert!(parse_address(&bytes).is_err());
    }

    /// A veth with its peer elsewhere gets the flag on its entry, or an
    /// entry of its own without addresses; the others are left alone.
    #[test]
    fn peers_in_another_namespace_are_flagged() {
        let addresses = [
            address(2, v4(10, 0, 0, 1), 0, 0),
            address(3, v4(10, 0, 1, 1), 0, 0),
        ];
        let entries = with_peers(primary_addresses(&addresses), &BTreeSet::from([3, 9]));
        assert_eq!(entries[&2].flags, IF_HAS_V4);
        assert_eq!(entries[&3].flags, IF_HAS_V4 | IF_PEER_NETNS);
        assert_eq!(entries[&3].v4, ip_to_bytes(v4(10, 0, 1, 1)).0);
        assert_eq!(
            entries[&9],
            IfAddrs {
                flags: IF_PEER_NETNS,
                ..IfAddrs::default()
            }
        );
        assert_eq!(describe(&entries[&9]), "(peer in another namespace)");
        assert_eq!(entries.len(), 3);
    }

    #[test]
    fn choice_of_primary_addresses() {
        let addresses = [
            // lo: host scope only.
            address(1, v4(127, 0, 0, 1), 0x80, RT_SCOPE_HOST),
            address(1, v6("::1"), 0x80, RT_SCOPE_HOST),
            // eth0: a secondary listed first is skipped; then the primary, then another.
            address(2, v4(10, 0, 0, 2), IFA_F_SECONDARY, 0),
            address(2, v4(10, 0, 0, 1), 0, 0),
            address(2, v4(10, 1, 0, 1), 0, 0),
            address(2, v6("fe80::1"), 0x80, 253),
            address(2, v6("2001:db8::7"), IFA_F_TEMPORARY, 0),
            address(2, v6("2001:db8::8"), IFA_F_TENTATIVE, 0),
            address(2, v6("2001:db8::9"), IFA_F_DEPRECATED, 0),
            address(2, v6("2001:db8::a"), IFA_F_DADFAILED, 0),
            address(2, v6("2001:db8::1"), 0x80, 0),
            address(2, v6("2001:db8::2"), 0, 0),
            // eth1: IPv6 only; eth2: link-local only.
            address(3, v6("fd00::3"), 0, 0),
            address(4, v6("fe80::4"), 0, 253),
        ];
        let entries = primary_addresses(&addresses);
        assert_eq!(entries.keys().copied().collect::<Vec<_>>(), [2, 3]);
        let eth0 = entries[&2];
        assert_eq!(eth0.flags, IF_HAS_V4 | IF_HAS_V6);
        assert_eq!(eth0.v4, ip_to_bytes(v4(10, 0, 0, 1)).0);
        assert_eq!(eth0.v6, ip_to_bytes(v6("2001:db8::1")).0);
        let eth1 = entries[&3];
        assert_eq!(eth1.flags, IF_HAS_V6);
        assert_eq!(eth1.v4, [0; 16]);
        assert_eq!(eth1.v6, ip_to_bytes(v6("fd00::3")).0);
        assert_eq!(describe(&eth0), "10.0.0.1 2001:db8::1");
        assert_eq!(describe(&eth1), "fd00::3");
        assert_eq!(describe(&IfAddrs::default()), "none");
    }

    #[test]
    fn changes_write_only_differences_and_remove_stale_indexes() {
        let entry = |last: u8| IfAddrs {
            v4: ip_to_bytes(v4(10, 0, 0, last)).0,
            flags: IF_HAS_V4,
            ..IfAddrs::default()
        };
        let current = BTreeMap::from([(2, entry(1)), (3, entry(3)), (9, entry(9))]);
        let wanted = BTreeMap::from([(2, entry(1)), (3, entry(4)), (5, entry(5))]);
        assert_eq!(
            changes(&current, &wanted),
            Changes {
                set: vec![(3, entry(4)), (5, entry(5))],
                remove: vec![9],
            }
        );
        assert!(changes(&wanted, &wanted).is_empty());

        // At most MAX_INTERFACES entries: the lowest indexes.
        let many: BTreeMap<u32, IfAddrs> =
            (1..=MAX_INTERFACES + 2).map(|i| (i, entry(1))).collect();
        let planned = changes(&BTreeMap::new(), &many);
        assert_eq!(planned.set.len(), MAX_INTERFACES as usize);
        assert_eq!(planned.set.last().unwrap().0, MAX_INTERFACES);
    }

    #[test]
    fn dump_of_this_namespace() {
        // Needs no privilege. `lo`'s 127.0.0.1 is host-scoped and never chosen.
        let addresses = dump().unwrap();
        let entries = primary_addresses(&addresses);
        assert!(
            entries
                .values()
                .all(|entry| entry.flags & IF_HAS_V4 == 0 || entry.v4[0] != 127),
            "{entries:?}"
        );
    }
}
