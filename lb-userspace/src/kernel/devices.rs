//! What the kernel says about a network device, for the choice of hook
//! (`policy::hook`): its kind (rtnetlink `IFLA_INFO_KIND`, else the
//! driver and bus of `ETHTOOL_GDRVINFO`), and for a veth the transmit
//! checksum offload of its peer, which may live in another network
//! namespace.
//!
//! Everything here goes through netlink and `SIOCETHTOOL` in daas-lb's own
//! network namespace, never through `/sys/class/net`: a daemon that joined
//! a namespace with `setns` still sees the sysfs of the namespace that
//! mounted it.
//!
//! Finding a veth peer in another namespace: `RTM_GETLINK` gives the peer's
//! index (`IFLA_LINK`) and, when it lives elsewhere, the id our namespace
//! has for its namespace (`IFLA_LINK_NETNSID`). The namespace files under
//! `/run/netns` and `/proc/<pid>/ns/net` (at most [`MAX_PROCS`] processes)
//! are opened one at a time and `RTM_GETNSID` maps each to its id; the one
//! with the peer's id is entered by a short-lived thread (`setns` changes
//! only the calling thread) that reads the peer's `ETHTOOL_GTXCSUM`. A
//! namespace that is not found leaves the offload "cannot be checked".
//!
//! The same attributes say which interfaces can take `bpf_redirect_peer`
//! ([`peer_netns_links`]): a veth or netkit device whose peer lives in
//! another namespace (the kernel sends `IFLA_LINK_NETNSID` only then).

use std::{
    collections::{BTreeSet, HashSet},
    ffi::{CStr, CString},
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    thread,
};

use anyhow::{Context as _, bail};

use super::netlink::{
    self, DumpProgress, Message, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_HDRLEN, RECV_BUFFER_LEN,
    walk_dump,
};
use crate::policy::hook::{DeviceFacts, DeviceKind, PeerCsum};

/// `RTM_NEWLINK`: a link's description.
const RTM_NEWLINK: u16 = 16;
/// `RTM_GETLINK`: ask for one link.
const RTM_GETLINK: u16 = 18;
/// `RTM_NEWNSID`: a namespace's id.
const RTM_NEWNSID: u16 = 88;
/// `RTM_GETNSID`: ask for the id of a namespace.
const RTM_GETNSID: u16 = 90;
/// `IFLA_LINK`: for a veth, the peer's ifindex.
const IFLA_LINK: u16 = 5;
/// `IFLA_LINKINFO`: nested, holds `IFLA_INFO_KIND`.
const IFLA_LINKINFO: u16 = 18;
/// `IFLA_INFO_KIND`: `veth`, `bridge`, `bond`, `vlan`, `tun`, ...
const IFLA_INFO_KIND: u16 = 1;
/// `IFLA_LINK_NETNSID`: the namespace id of the `IFLA_LINK` device.
const IFLA_LINK_NETNSID: u16 = 37;
/// `IFLA_XDP`: nested, holds `IFLA_XDP_ATTACHED`.
const IFLA_XDP: u16 = 43;
/// `IFLA_XDP_ATTACHED`: `XDP_ATTACHED_*`.
const IFLA_XDP_ATTACHED: u16 = 2;
/// `NETNSA_NSID`.
const NETNSA_NSID: u16 = 1;
/// `NETNSA_FD`.
const NETNSA_FD: u16 = 3;
/// `NLA_TYPE_MASK`: the type bits of `nla_type` (without nested/byte-order).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `sizeof(struct ifinfomsg)`.
const IFINFOMSG_LEN: usize = 16;
/// `IFF_LOOPBACK`.
const IFF_LOOPBACK: u32 = 0x8;

/// `SIOCETHTOOL`.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETHTOOL_GDRVINFO`.
const ETHTOOL_GDRVINFO: u32 = 0x3;
/// `ETHTOOL_GRXCSUM`.
const ETHTOOL_GRXCSUM: u32 = 0x14;
/// `ETHTOOL_GTXCSUM`.
const ETHTOOL_GTXCSUM: u32 = 0x16;

/// The most `/proc/<pid>` entries looked at when searching a namespace.
pub(crate) const MAX_PROCS: usize = 4096;
/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// What `RTM_GETLINK` says about one device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct LinkAttrs {
    /// The device's index (`ifinfomsg`).
    index: u32,
    flags: u32,
    kind: Option<String>,
    link: Option<u32>,
    link_netnsid: Option<i32>,
    xdp_attached: Option<u8>,
}

/// The facts about device `name` (index `ifindex`) in daas-lb's namespace.
pub(crate) fn facts(name: &str, ifindex: u32) -> anyhow::Result<DeviceFacts> {
    let attrs = get_link(ifindex).with_context(|| format!("RTM_GETLINK of interface {name}"))?;
    let kind = if attrs.flags & IFF_LOOPBACK != 0 {
        DeviceKind::Loopback
    } else {
        match attrs.kind.as_deref() {
            Some("veth") => DeviceKind::Veth {
                peer: peer_csum(&attrs),
            },
            Some("bridge") => DeviceKind::Bridge,
            Some("tun") => DeviceKind::TunTap,
            Some(kind) => DeviceKind::OtherVirtual {
                kind: kind.to_owned(),
            },
            None => kind_from_driver(name)?,
        }
    };
    Ok(DeviceFacts {
        name: name.to_owned(),
        kind,
    })
}

/// The kind of a device without `IFLA_INFO_KIND`: from its driver and bus.
fn kind_from_driver(name: &str) -> anyhow::Result<DeviceKind> {
    let (driver, bus) = match drvinfo(name) {
        Ok(info) => info,
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            return Ok(DeviceKind::OtherVirtual {
                kind: "no driver info".to_owned(),
            });
        }
        Err(err) => {
            return Err(err).with_context(|| format!("ETHTOOL_GDRVINFO on interface {name}"));
        }
    };
    Ok(match driver.as_str() {
        "virtio_net" => DeviceKind::VirtioNet {
            guest_csum: ethtool_value(name, ETHTOOL_GRXCSUM).ok().map(|on| on != 0),
        },
        "tun" => DeviceKind::TunTap,
        "bridge" => DeviceKind::Bridge,
        _ if !bus.is_empty() && bus != "N/A" && bus != "tun" && bus != "tap" => {
            DeviceKind::Physical { driver }
        }
        _ => DeviceKind::OtherVirtual { kind: driver },
    })
}

/// Transmit checksum offload of the peer of the veth described by `attrs`.
fn peer_csum(attrs: &LinkAttrs) -> PeerCsum {
    let Some(peer) = attrs.link.filter(|index| *index != 0) else {
        return PeerCsum::Unknown {
            why: "the kernel names no peer".to_owned(),
        };
    };
    let read = match attrs.link_netnsid {
        None => tx_csum_by_index(peer),
        Some(nsid) => match find_netns(nsid) {
            Ok(Some(path)) => tx_csum_in(&path, peer),
            Ok(None) => Err(anyhow::anyhow!(
                "its peer is in network namespace id {nsid}, which is neither under {NETNS_DIR} \
                 nor the namespace of any process"
            )),
            Err(err) => Err(err),
        },
    };
    match read {
        Ok((_, false)) => PeerCsum::Off,
        Ok((peer, true)) => PeerCsum::On { peer },
        Err(err) => PeerCsum::Unknown {
            why: format!("{err:#}"),
        },
    }
}

/// The name and transmit checksum offload of device `ifindex` in the
/// calling thread's namespace.
fn tx_csum_by_index(ifindex: u32) -> anyhow::Result<(String, bool)> {
    let name = index_to_name(ifindex)?;
    let on = ethtool_value(&name, ETHTOOL_GTXCSUM)
        .with_context(|| format!("ETHTOOL_GTXCSUM on {name}"))?;
    Ok((name, on != 0))
}

/// [`tx_csum_by_index`] inside the namespace at `path`, from a thread that
/// enters it and ends.
fn tx_csum_in(path: &Path, ifindex: u32) -> anyhow::Result<(String, bool)> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let where_ = path.display().to_string();
    thread::Builder::new()
        .name("netns-peer".to_owned())
        .spawn(move || {
            // SAFETY: `ns` is an open namespace file; setns changes only this
            // thread, which ends right after the read.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("setns into {where_}"));
            }
            tx_csum_by_index(ifindex).with_context(|| format!("in {where_}"))
        })
        .context("spawning the thread that reads the veth peer")?
        .join()
        .map_err(|_| anyhow::anyhow!("the thread reading the veth peer panicked"))?
}

/// The namespace file whose id in our namespace is `nsid`, if any: those of
/// `ip netns` first, then those of at most [`MAX_PROCS`] processes.
fn find_netns(nsid: i32) -> anyhow::Result<Option<PathBuf>> {
    let socket = netlink::Socket::open(libc::NETLINK_ROUTE, "NETLINK_ROUTE")?;
    let mut seen = HashSet::new();
    let mut candidates: Vec<PathBuf> = fs::read_dir(NETNS_DIR)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    candidates.sort();
    let procs = fs::read_dir("/proc")
        .context("listing /proc")?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .take(MAX_PROCS)
        .map(|e| e.path().join("ns/net"));
    for (seq, path) in (1u32..).zip(candidates.into_iter().chain(procs)) {
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if nsid_of(&socket, &file, seq)? == Some(nsid) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The id our namespace has for the namespace open as `ns` (`None`: none
/// assigned).
fn nsid_of(socket: &netlink::Socket, ns: &File, seq: u32) -> anyhow::Result<Option<i32>> {
    // nlmsghdr, struct rtgenmsg (1 byte, padded to 4), NETNSA_FD (u32).
    const LEN: usize = NLMSG_HDRLEN + 4 + 8;
    let mut request = [0u8; LEN];
    netlink::put_header(&mut request, LEN, RTM_GETNSID, NLM_F_REQUEST, seq);
    request[NLMSG_HDRLEN] = libc::AF_UNSPEC as u8;
    put_attr_u32(
        &mut request[NLMSG_HDRLEN + 4..],
        NETNSA_FD,
        ns.as_raw_fd() as u32,
    );
    socket.send(&request).context("sending RTM_GETNSID")?;
    let mut buf = vec![0u8; RECV_BUFFER_LEN];
    loop {
        let len = socket.recv(&mut buf).context("receiving RTM_NEWNSID")?;
        for message in netlink::parse_messages(&buf[..len])? {
            match message {
                Message::Data {
                    msg_type: RTM_NEWNSID,
                    seq: s,
                    payload,
                    ..
                } if s == seq => {
                    let nsid = attrs(payload.get(4..).unwrap_or_default())
                        .find(|(kind, _)| *kind == NETNSA_NSID)
                        .and_then(|(_, data)| {
                            Some(i32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
                        });
                    return Ok(nsid.filter(|id| *id >= 0));
                }
                Message::Error { seq: s, error } if s == seq && error < 0 => {
                    return Err(io::Error::from_raw_os_error(-error))
                        .context("RTM_GETNSID refused");
                }
                _ => {}
            }
        }
    }
}

/// `RTM_GETLINK` of one device.
fn get_link(ifindex: u32) -> anyhow::Result<LinkAttrs> {
    const LEN: usize = NLMSG_HDRLEN + IFINFOMSG_LEN;
    let socket = netlink::Socket::open(libc::NETLINK_ROUTE, "NETLINK_ROUTE")?;
    let seq = 1;
    let mut request = [0u8; LEN];
    netlink::put_header(&mut request, LEN, RTM_GETLINK, NLM_F_REQUEST, seq);
    request[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&ifindex.to_ne_bytes());
    socket.send(&request).context("sending RTM_GETLINK")?;
    let mut buf = vec![0u8; RECV_BUFFER_LEN];
    loop {
        let len = socket.recv(&mut buf).context("receiving RTM_NEWLINK")?;
        for message in netlink::parse_messages(&buf[..len])? {
            match message {
                Message::Data {
                    msg_type: RTM_NEWLINK,
                    seq: s,
                    payload,
                    ..
                } if s == seq => return parse_link(payload),
                Message::Error { seq: s, error } if s == seq && error < 0 => {
                    return Err(io::Error::from_raw_os_error(-error))
                        .context("RTM_GETLINK refused");
                }
                _ => {}
            }
        }
    }
}

/// Whether a packet for `link` can go straight into its peer's ingress
/// (`bpf_redirect_peer`): a veth or netkit device whose peer lives in
/// another network namespace.
fn has_peer_in_other_netns(link: &LinkAttrs) -> bool {
    matches!(link.kind.as_deref(), Some("veth" | "netkit")) && link.link_netnsid.is_some()
}

/// The indexes of the devices of daas-lb's namespace whose peer lives in
/// another namespace (see [`has_peer_in_other_netns`]), from an
/// `RTM_GETLINK` dump.
pub(crate) fn peer_netns_links() -> anyhow::Result<BTreeSet<u32>> {
    const LEN: usize = NLMSG_HDRLEN + IFINFOMSG_LEN;
    let socket = netlink::Socket::open(libc::NETLINK_ROUTE, "NETLINK_ROUTE")?;
    let seq = 1;
    let mut request = [0u8; LEN];
    netlink::put_header(
        &mut request,
        LEN,
        RTM_GETLINK,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    );
    socket
        .send(&request)
        .context("sending the RTM_GETLINK dump request")?;
    let mut buf = vec![0u8; RECV_BUFFER_LEN];
    let mut peers = BTreeSet::new();
    loop {
        let len = socket
            .recv(&mut buf)
            .context("receiving the RTM_GETLINK dump")?;
        let progress = walk_dump(&buf[..len], seq, |msg_type, _, payload| {
            if msg_type == RTM_NEWLINK {
                let link = parse_link(payload)?;
                if has_peer_in_other_netns(&link) {
                    peers.insert(link.index);
                }
            }
            Ok(())
        })
        .context("RTM_GETLINK dump")?;
        if progress == DumpProgress::Done {
            return Ok(peers);
        }
    }
}

/// Decodes an `RTM_NEWLINK` payload (`ifinfomsg`, then attributes).
fn parse_link(payload: &[u8]) -> anyhow::Result<LinkAttrs> {
    if payload.len() < IFINFOMSG_LEN {
        bail!(
            "RTM_NEWLINK of {} bytes, shorter than ifinfomsg",
            payload.len()
        );
    }
    let mut link = LinkAttrs {
        index: netlink::u32_at(payload, 4),
        flags: netlink::u32_at(payload, 8),
        ..LinkAttrs::default()
    };
    let u32_of = |data: &[u8]| Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?));
    for (kind, data) in attrs(&payload[IFINFOMSG_LEN..]) {
        match kind {
            IFLA_LINK => link.link = u32_of(data),
            IFLA_LINK_NETNSID => link.link_netnsid = u32_of(data).map(|v| v as i32),
            IFLA_LINKINFO => {
                link.kind = attrs(data)
                    .find(|(k, _)| *k == IFLA_INFO_KIND)
                    .and_then(|(_, name)| CStr::from_bytes_until_nul(name).ok())
                    .map(|name| name.to_string_lossy().into_owned());
            }
            IFLA_XDP => {
                link.xdp_attached = attrs(data)
                    .find(|(k, _)| *k == IFLA_XDP_ATTACHED)
                    .and_then(|(_, v)| v.first().copied());
            }
            _ => {}
        }
    }
    Ok(link)
}

/// The XDP attach mode the kernel reports for `ifindex` (`driver`, `skb`,
/// `offload`), `None` without an XDP program.
pub(crate) fn xdp_attached_mode(ifindex: u32) -> anyhow::Result<Option<&'static str>> {
    Ok(match get_link(ifindex)?.xdp_attached {
        Some(1) => Some("driver"),
        Some(2) => Some("skb"),
        Some(3) => Some("offload"),
        Some(4) => Some("multi"),
        _ => None,
    })
}

/// The netlink attributes in `buf`, as (type without flags, data); stops at
/// the first malformed one.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let rest = buf.get(offset..)?;
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(netlink::u16_at(rest, 0));
        let kind = netlink::u16_at(rest, 2) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        offset += (len + 3) & !3;
        Some((kind, &rest[4..len]))
    })
}

/// Writes a `u32` attribute into `out[..8]`.
fn put_attr_u32(out: &mut [u8], kind: u16, value: u32) {
    out[0..2].copy_from_slice(&8u16.to_ne_bytes());
    out[2..4].copy_from_slice(&kind.to_ne_bytes());
    out[4..8].copy_from_slice(&value.to_ne_bytes());
}

/// `if_indextoname` in the calling thread's namespace.
fn index_to_name(ifindex: u32) -> anyhow::Result<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("if_indextoname({ifindex})"));
    }
    Ok(CStr::from_bytes_until_nul(&buf)
        .context("if_indextoname without NUL")?
        .to_string_lossy()
        .into_owned())
}

/// A datagram socket of the calling thread's namespace, for `SIOCETHTOOL`.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs `SIOCETHTOOL` on device `name` with `data` (a `struct ethtool_*`
/// whose first `u32` is the command).
fn ethtool(name: &str, data: &mut [u8]) -> io::Result<()> {
    let c_name = CString::new(name).map_err(io::Error::other)?;
    let bytes = c_name.as_bytes_with_nul();
    if bytes.len() > libc::IF_NAMESIZE {
        return Err(io::Error::other(format!("interface name {name} too long")));
    }
    let socket = ioctl_socket()?;
    // SAFETY: all-zero bytes are a valid `ifreq` (a C struct of integers,
    // arrays and a pointer union).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = data.as_mut_ptr().cast();
    // SAFETY: `ifr` names the device and points at `data`, a live, writable
    // buffer large enough for the command it holds; the kernel writes at
    // most that struct's size.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &raw mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An `ETHTOOL_G*` command answered with a `struct ethtool_value`.
fn ethtool_value(name: &str, cmd: u32) -> io::Result<u32> {
    let mut value = [0u8; 8];
    value[..4].copy_from_slice(&cmd.to_ne_bytes());
    ethtool(name, &mut value)?;
    Ok(netlink::u32_at(&value, 4))
}

/// `ETHTOOL_GDRVINFO`: (driver, `bus_info`).
fn drvinfo(name: &str) -> io::Result<(String, String)> {
    // struct ethtool_drvinfo: cmd, driver[32], version[32], fw_version[32],
    // bus_info[32], erom_version[32], reserved2[12], 5 x u32.
    let mut info = [0u8; 196];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    ethtool(name, &mut info)?;
    let text = |range: std::ops::Range<usize>| {
        CStr::from_bytes_until_nul(&info[range])
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    Ok((text(4..36), text(100..132)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    #[test]
    fn link_attributes_are_decoded() {
        let mut payload = vec![0u8; IFINFOMSG_LEN];
        payload[4..8].copy_from_slice(&12u32.to_ne_bytes());
        payload[8..12].copy_from_slice(&0x1003u32.to_ne_bytes());
        payload.extend(attr(IFLA_LINK, &7u32.to_ne_bytes()));
        payload.extend(attr(IFLA_LINK_NETNSID, &2i32.to_ne_bytes()));
        payload.extend(attr(
            IFLA_LINKINFO | 0x8000,
            &attr(IFLA_INFO_KIND, b"veth\0"),
        ));
        payload.extend(attr(IFLA_XDP | 0x8000, &attr(IFLA_XDP_ATTACHED, &[2])));
        assert_eq!(
            parse_link(&payload).unwrap(),
            LinkAttrs {
                index: 12,
                flags: 0x1003,
                kind: Some("veth".to_owned()),
                link: Some(7),
                link_netnsid: Some(2),
                xdp_attached: Some(2),
            }
        );
        assert!(parse_link(&[0; 4]).is_err());
        // A truncated attribute ends the walk instead of reading past it.
        let mut short = vec![0u8; IFINFOMSG_LEN];
        short.extend_from_slice(&[40, 0, 5, 0, 1, 0]);
        assert_eq!(parse_link(&short).unwrap().link, None);
    }

    /// Only a veth or netkit device whose peer lives in another namespace
    /// (the kernel adds `IFLA_LINK_NETNSID` only then) takes
    /// `bpf_redirect_peer`.
    #[test]
    fn peers_in_another_namespace_are_recognised() {
        let link = |kind: &str, netnsid: Option<i32>| LinkAttrs {
            kind: Some(kind.to_owned()),
            link: Some(3),
            link_netnsid: netnsid,
            ..LinkAttrs::default()
        };
        assert!(has_peer_in_other_netns(&link("veth", Some(0))));
        assert!(has_peer_in_other_netns(&link("netkit", Some(4))));
        assert!(!has_peer_in_other_netns(&link("veth", None)));
        assert!(!has_peer_in_other_netns(&link("vlan", Some(1))));
        assert!(!has_peer_in_other_netns(&link("bridge", None)));
        assert!(!has_peer_in_other_netns(&LinkAttrs::default()));
    }

    /// Needs no privilege: the dump of this namespace's devices works, and
    /// loopback is never one with a peer.
    #[test]
    fn the_link_dump_never_lists_loopback() {
        let peers = peer_netns_links().unwrap();
        assert!(!peers.contains(&1), "{peers:?}");
    }

    /// Needs no privilege: loopback is the loopback device.
    #[test]
    fn loopback_is_recognised() {
        let facts = facts("lo", 1).unwrap();
        assert_eq!(facts.kind, DeviceKind::Loopback);
    }

    /// The machine's own `virtio_net` NICs (this VM and CI have one, the
    /// uplink in the root namespace) are read as virtio and `hook: auto`
    /// puts them on tc, never native XDP (issue 16: `mode: auto` on
    /// `virtio_net` failed to start). Read-only: nothing is attached. A
    /// machine without such a NIC checks the other devices it has against
    /// the same rule: only a physical NIC may get native XDP from `auto`.
    #[test]
    fn the_machines_virtio_nics_get_tc_from_auto() {
        use crate::{
            config::{XdpAttachMode, XdpHook},
            policy::hook::{Plan, decide},
        };
        let mut seen = Vec::new();
        for entry in fs::read_dir("/sys/class/net").unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Ok(index) = fs::read_to_string(format!("/sys/class/net/{name}/ifindex")) else {
                continue;
            };
            let ifindex: u32 = index.trim().parse().unwrap();
            let driver = fs::read_link(format!("/sys/class/net/{name}/device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
            let Ok(facts) = facts(&name, ifindex) else {
                continue;
            };
            let decision = decide(&facts, XdpHook::Auto, XdpAttachMode::Auto).unwrap();
            if driver.as_deref() == Some("virtio_net") {
                assert!(
                    matches!(facts.kind, DeviceKind::VirtioNet { .. }),
                    "{name}: {facts:?}"
                );
                assert_eq!(decision.plan, Plan::Tc, "{name}: {decision:?}");
                seen.push(name);
            } else if !matches!(facts.kind, DeviceKind::Physical { .. }) {
                assert_eq!(decision.plan, Plan::Tc, "{name}: {decision:?}");
            }
        }
        eprintln!("virtio_net NICs checked: {seen:?}");
    }
}
