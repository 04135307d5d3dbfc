//! Packet fixtures for the XDP program, run through `BPF_PROG_TEST_RUN`.
//!
//! Three parts, each usable on its own:
//!
//! - [`Packet`]: a from-scratch packet builder (Ethernet, IPv4 with options
//!   and fragment bits or IPv6 with a hop-by-hop header, TCP/UDP/ICMP/raw,
//!   payload). Every checksum is computed here over the whole header and
//!   payload, never updated incrementally, so a test that builds the expected
//!   output with it checks the kernel's incremental updates against an
//!   independent computation.
//! - [`XdpFixture`]: the embedded eBPF object loaded standalone (no pins,
//!   gone when dropped), the forwarder's programs for both hooks (`lb_xdp`,
//!   `lb_tc`) and their empty baselines loaded but not attached, and typed
//!   handles to the maps the forwarder reads and writes. [`Hook`] says
//!   which program [`XdpFixture::run`] runs; a tc verdict is reported as
//!   the XDP verdict of the same meaning, so one fixture checks both hooks.
//! - [`Network`]: veth pairs with fixed MACs, addresses and permanent
//!   neighbours inside the calling thread's network namespace (a
//!   [`crate::NetNs`]), so `bpf_fib_lookup` answers `SUCCESS` with known MACs
//!   (and `NO_NEIGH` for [`Addrs::no_neigh`]).

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader, TestRunOptions,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, Xdp},
};
use lb_common::{
    AF_INET, AF_INET6, Backend, BackendStats, FlowKey, FlowValue, IfAddrs, MaglevKey, PROTO_TCP,
    PROTO_UDP, Service, ServiceStats, VipFilter, VipKey, XdpConfig, flow_stat, ip_to_bytes,
    map_names, program_names, xdp_counter,
};
use lb_userspace::{
    kernel::{
        dataplane::load_retrying,
        maps::{sum_backend_stats, sum_service_stats},
    },
    policy::flow_expiry::FlowTotals,
};

use crate::sh;

/// `XDP_ABORTED`.
pub const XDP_ABORTED: u32 = 0;
/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`.
pub const XDP_TX: u32 = 3;
/// `XDP_REDIRECT`.
pub const XDP_REDIRECT: u32 = 4;

/// `TC_ACT_OK`.
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT`.
pub const TC_ACT_REDIRECT: u32 = 7;

/// Which of the forwarder's hooks a fixture runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `lb_xdp`, with an `xdp_md` context.
    Xdp,
    /// `lb_tc`, with an `__sk_buff` context.
    Tc,
}

impl Hook {
    /// The program of this hook.
    pub const fn program(self) -> &'static str {
        match self {
            Self::Xdp => program_names::XDP,
            Self::Tc => program_names::TC,
        }
    }

    /// The empty baseline program of this hook.
    pub const fn empty_program(self) -> &'static str {
        match self {
            Self::Xdp => program_names::XDP_EMPTY,
            Self::Tc => program_names::TC_EMPTY,
        }
    }
}

/// The XDP verdict of the same meaning as tc verdict `tc`: `TC_ACT_OK` is
/// `XDP_PASS`, `TC_ACT_SHOT` is `XDP_DROP`, `TC_ACT_REDIRECT` is
/// `XDP_REDIRECT` (whether it leaves by the ingress interface, `tx`, or
/// with the kernel resolving the neighbour, `redirect_neigh`, only the
/// `xdp_stats` counters say). Anything else is `u32::MAX` ("unknown").
pub const fn tc_as_xdp(tc: u32) -> u32 {
    match tc {
        TC_ACT_OK => XDP_PASS,
        TC_ACT_SHOT => XDP_DROP,
        TC_ACT_REDIRECT => XDP_REDIRECT,
        _ => u32::MAX,
    }
}

/// The name of an XDP verdict, for messages.
pub fn verdict_name(verdict: u32) -> &'static str {
    match verdict {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown verdict",
    }
}

/// `ETH_P_IP`.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// `ETH_P_IPV6`.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// `ETH_P_ARP`.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// `ETH_P_8021Q`.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// `IPPROTO_ICMP`.
pub const PROTO_ICMP: u8 = 1;
/// `IPPROTO_ICMPV6`.
pub const PROTO_ICMPV6: u8 = 58;
/// IPv4 "more fragments" flag in the flags/fragment-offset field.
pub const IPV4_MF: u16 = 0x2000;
/// IPv4 "don't fragment" flag in the flags/fragment-offset field.
pub const IPV4_DF: u16 = 0x4000;
/// TCP flag bits.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// The transport part of a [`Packet`]. Ports live in [`Packet`] itself, so
/// a rewrite of addresses and ports is a struct update of the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A 20-byte TCP header without options.
    Tcp {
        /// Sequence number.
        seq: u32,
        /// Acknowledgement number.
        ack: u32,
        /// Flag bits ([`tcp_flags`]).
        flags: u8,
        /// Receive window.
        window: u16,
    },
    /// An 8-byte UDP header.
    Udp {
        /// Send checksum 0 ("no checksum", only legal over IPv4).
        zero_checksum: bool,
    },
    /// ICMP (IPv4) or `ICMPv6` (IPv6): type, code, checksum, 4 more bytes.
    Icmp {
        /// Message type (8 / 128: echo request).
        ty: u8,
        /// Code.
        code: u8,
        /// Identifier and sequence number of an echo.
        rest: [u8; 4],
    },
    /// Bytes placed verbatim after the IP header (no checksum computed)
    /// with this protocol number, e.g. a TCP header cut short while the IP
    /// length still covers every byte present.
    Raw {
        /// IP protocol / next header.
        proto: u8,
        /// The transport bytes.
        bytes: Vec<u8>,
    },
}

/// A packet description; [`Packet::bytes`] serialises it with every length
/// and checksum computed from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Ethernet destination.
    pub eth_dst: [u8; 6],
    /// Ethernet source.
    pub eth_src: [u8; 6],
    /// IP source (same family as `dst`).
    pub src: IpAddr,
    /// IP destination.
    pub dst: IpAddr,
    /// TCP/UDP source port (ignored for ICMP and raw).
    pub src_port: u16,
    /// TCP/UDP destination port.
    pub dst_port: u16,
    /// IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 identification.
    pub ipv4_id: u16,
    /// IPv4 flags and fragment offset (in 8-byte units): [`IPV4_DF`],
    /// [`IPV4_MF`], offset.
    pub ipv4_frag: u16,
    /// IPv4 options (a multiple of 4 bytes; IHL grows with them).
    pub ipv4_options: Vec<u8>,
    /// IPv6: put an 8-byte hop-by-hop options header (`PadN`) before the
    /// transport header.
    pub ipv6_hop_by_hop: bool,
    /// Transport header.
    pub l4: L4,
    /// Bytes after the transport header.
    pub payload: Vec<u8>,
}

impl Packet {
    /// A TCP packet `src → dst` (ACK|PSH, fixed seq/ack/window), TTL 64,
    /// zero MACs, no payload.
    pub fn tcp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(
            src,
            dst,
            L4::Tcp {
                seq: 0x1122_3344,
                ack: 0x5566_7788,
                flags: tcp_flags::ACK | tcp_flags::PSH,
                window: 0xfaf0,
            },
        )
    }

    /// A UDP packet `src → dst` with its checksum, TTL 64, no payload.
    pub fn udp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(
            src,
            dst,
            L4::Udp {
                zero_checksum: false,
            },
        )
    }

    /// An ICMP (IPv4) or `ICMPv6` (IPv6) echo request `src → dst`.
    pub fn icmp_echo(src: IpAddr, dst: IpAddr) -> Self {
        let ty = if src.is_ipv4() { 8 } else { 128 };
        Self::new(
            SocketAddr::new(src, 0),
            SocketAddr::new(dst, 0),
            L4::Icmp {
                ty,
                code: 0,
                rest: [0x12, 0x34, 0x00, 0x01],
            },
        )
    }

    /// A packet with this transport header.
    pub fn new(src: SocketAddr, dst: SocketAddr, l4: L4) -> Self {
        assert_eq!(
            src.is_ipv4(),
            dst.is_ipv4(),
            "source and destination of different families"
        );
        Self {
            eth_dst: [0; 6],
            eth_src: [0; 6],
            src: src.ip(),
            dst: dst.ip(),
            src_port: src.port(),
            dst_port: dst.port(),
            ttl: 64,
            ipv4_id: 0x4d2e,
            ipv4_frag: IPV4_DF,
            ipv4_options: Vec::new(),
            ipv6_hop_by_hop: false,
            l4,
            payload: Vec::new(),
        }
    }

    /// Sets the Ethernet addresses.
    #[must_use]
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    /// Sets the payload.
    #[must_use]
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Source address and port.
    pub fn source(&self) -> SocketAddr {
        SocketAddr::new(self.src, self.src_port)
    }

    /// Destination address and port.
    pub fn destination(&self) -> SocketAddr {
        SocketAddr::new(self.dst, self.dst_port)
    }

    /// The IP protocol number of the transport header.
    pub fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp { .. } => PROTO_UDP,
            L4::Icmp { .. } if self.src.is_ipv4() => PROTO_ICMP,
            L4::Icmp { .. } => PROTO_ICMPV6,
            L4::Raw { proto, .. } => *proto,
        }
    }

    /// The flow key the XDP program derives from this packet as it arrives.
    pub fn flow_key(&self) -> FlowKey {
        flow_key(self.source(), self.destination(), self.proto())
    }

    /// The transport header and payload, checksum included.
    fn transport(&self) -> Vec<u8> {
        let proto = self.proto();
        let mut seg = Vec::new();
        let checksum_at = match &self.l4 {
            L4::Tcp {
                seq,
                ack,
                flags,
                window,
            } => {
                seg.extend_from_slice(&self.src_port.to_be_bytes());
                seg.extend_from_slice(&self.dst_port.to_be_bytes());
                seg.extend_from_slice(&seq.to_be_bytes());
                seg.extend_from_slice(&ack.to_be_bytes());
                seg.push(5 << 4); // data offset: 5 words
                seg.push(*flags);
                seg.extend_from_slice(&window.to_be_bytes());
                seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                seg.extend_from_slice(&self.payload);
                Some(16)
            }
            L4::Udp { zero_checksum } => {
                let len = u16::try_from(8 + self.payload.len()).expect("UDP length");
                seg.extend_from_slice(&self.src_port.to_be_bytes());
                seg.extend_from_slice(&self.dst_port.to_be_bytes());
                seg.extend_from_slice(&len.to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                seg.extend_from_slice(&self.payload);
                (!zero_checksum).then_some(6)
            }
            L4::Icmp { ty, code, rest } => {
                seg.extend_from_slice(&[*ty, *code, 0, 0]);
                seg.extend_from_slice(rest);
                seg.extend_from_slice(&self.payload);
                Some(2)
            }
            L4::Raw { bytes, .. } => {
                seg.extend_from_slice(bytes);
                seg.extend_from_slice(&self.payload);
                None
            }
        };
        if let Some(at) = checksum_at {
            // ICMPv4 has no pseudo-header; TCP, UDP and ICMPv6 do.
            let mut sum = if proto == PROTO_ICMP {
                0
            } else {
                pseudo_header_sum(self.src, self.dst, proto, seg.len())
            };
            sum = sum_words(sum, &seg);
            let mut check = !fold(sum);
            if proto == PROTO_UDP && check == 0 {
                // RFC 768: a computed 0 is sent as all ones.
                check = 0xffff;
            }
            seg[at..at + 2].copy_from_slice(&check.to_be_bytes());
        }
        seg
    }

    /// The whole frame, from the Ethernet header on.
    pub fn bytes(&self) -> Vec<u8> {
        let transport = self.transport();
        let mut out = Vec::with_capacity(14 + 60 + transport.len());
        out.extend_from_slice(&self.eth_dst);
        out.extend_from_slice(&self.eth_src);
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                assert!(
                    self.ipv4_options.len().is_multiple_of(4) && self.ipv4_options.len() <= 40,
                    "IPv4 options must be a multiple of 4 bytes, at most 40"
                );
                let header_len = 20 + self.ipv4_options.len();
                let total = u16::try_from(header_len + transport.len()).expect("IPv4 length");
                let mut ip = Vec::with_capacity(header_len);
                ip.push(0x40 | (header_len / 4) as u8);
                ip.push(0); // DSCP/ECN
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&self.ipv4_id.to_be_bytes());
                ip.extend_from_slice(&self.ipv4_frag.to_be_bytes());
                ip.push(self.ttl);
                ip.push(self.proto());
                ip.extend_from_slice(&[0, 0]);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                ip.extend_from_slice(&self.ipv4_options);
                let check = !fold(sum_words(0, &ip));
                ip[10..12].copy_from_slice(&check.to_be_bytes());
                out.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                out.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                let ext_len = if self.ipv6_hop_by_hop { 8 } else { 0 };
                let payload_len = u16::try_from(ext_len + transport.len()).expect("IPv6 length");
                // Version 6, traffic class 0, flow label 0x12345.
                out.extend_from_slice(&0x6001_2345_u32.to_be_bytes());
                out.extend_from_slice(&payload_len.to_be_bytes());
                out.push(if self.ipv6_hop_by_hop {
                    0
                } else {
                    self.proto()
                });
                out.push(self.ttl);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                if self.ipv6_hop_by_hop {
                    // Next header, length 0 (8 bytes), PadN option of 4 bytes.
                    out.extend_from_slice(&[self.proto(), 0, 1, 4, 0, 0, 0, 0]);
                }
            }
            _ => panic!("source and destination of different families"),
        }
        out.extend_from_slice(&transport);
        out
    }
}

/// The sum of the IPv4 or IPv6 pseudo-header for a transport segment of
/// `len` bytes.
fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&u16::try_from(len).expect("length").to_be_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&u32::try_from(len).expect("length").to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("source and destination of different families"),
    }
    sum_words(0, &pseudo)
}

/// Adds `bytes` as big-endian 16-bit words (an odd last byte padded with 0).
fn sum_words(mut sum: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

/// Folds a one's-complement sum to 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An ARP request (`who-has target tell sender`) from `src_mac`, broadcast.
pub fn arp_request(src_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::with_capacity(42);
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&src_mac);
    out.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
    out.extend_from_slice(&src_mac);
    out.extend_from_slice(&sender.octets());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&target.octets());
    out
}

/// `frame` with an 802.1Q tag (VLAN `vid`) after the MAC addresses.
pub fn vlan_tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// A [`FlowKey`] for `src → dst`.
pub fn flow_key(src: SocketAddr, dst: SocketAddr, proto: u8) -> FlowKey {
    let (src_bytes, family) = ip_to_bytes(src.ip());
    let (dst_bytes, _) = ip_to_bytes(dst.ip());
    FlowKey {
        src: src_bytes,
        dst: dst_bytes,
        src_port: src.port(),
        dst_port: dst.port(),
        proto,
        family,
        pad: [0; 2],
    }
}

/// A [`VipKey`] for `vip`.
pub fn vip_key(vip: SocketAddr, proto: u8) -> VipKey {
    let (addr, family) = ip_to_bytes(vip.ip());
    VipKey {
        addr,
        port: vip.port(),
        proto,
        family,
    }
}

/// A [`Backend`] at `addr`.
pub fn backend(addr: SocketAddr, service_id: u32, flags: u8) -> Backend {
    let (bytes, family) = ip_to_bytes(addr.ip());
    Backend {
        addr: bytes,
        port: addr.port(),
        family,
        flags,
        service_id,
    }
}

/// Panics with an offset-by-offset hex diff when `actual != expected`.
pub fn assert_frame_eq(what: &str, actual: &[u8], expected: &[u8]) {
    if actual == expected {
        return;
    }
    panic!("{what}: frames differ\n{}", hex_diff(actual, expected));
}

/// A hex dump of both frames, 16 bytes a line, with a line of `^^` under
/// every differing byte.
pub fn hex_diff(actual: &[u8], expected: &[u8]) -> String {
    let mut out = format!(
        "actual {} bytes, expected {} bytes (offsets in hex; Ethernet header is 0..e)\n",
        actual.len(),
        expected.len()
    );
    let len = actual.len().max(expected.len());
    let cell =
        |bytes: &[u8], i: usize| bytes.get(i).map_or("--".to_owned(), |b| format!("{b:02x}"));
    for line in (0..len).step_by(16) {
        let end = (line + 16).min(len);
        let (mut a, mut e, mut marks, mut differs) =
            (String::new(), String::new(), String::new(), false);
        for i in line..end {
            let _ = write!(a, " {}", cell(actual, i));
            let _ = write!(e, " {}", cell(expected, i));
            if actual.get(i) == expected.get(i) {
                marks.push_str("   ");
            } else {
                marks.push_str(" ^^");
                differs = true;
            }
        }
        let _ = writeln!(out, "{line:04x} actual  {a}");
        let _ = writeln!(out, "{line:04x} expected{e}");
        if differs {
            let _ = writeln!(out, "               {marks}");
        }
    }
    out
}

/// What one test run of a program returned.
#[derive(Debug)]
pub struct Run {
    /// The XDP verdict (for tc, see [`tc_as_xdp`]; [`XdpFixture::run_program`]
    /// returns tc's own).
    pub verdict: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Kernel-measured time per repetition (`duration` of the test run).
    pub duration: Duration,
}

/// The eBPF object loaded standalone with `lb_xdp`, `lb_xdp_empty`,
/// `lb_tc` and `lb_tc_empty` loaded (not attached), and typed handles to
/// the forwarder's maps. Nothing is pinned; everything is released on drop.
pub struct XdpFixture {
    ebpf: Ebpf,
    /// The hook [`XdpFixture::run`] runs (XDP unless changed).
    pub hook: Hook,
    /// `services`.
    pub services: HashMap<MapData, VipKey, Service>,
    /// `vip_filter` (kept by [`XdpFixture::set_service`]).
    pub vip_filter: Array<MapData, u64>,
    /// `backends`.
    pub backends: Array<MapData, Backend>,
    /// `maglev`.
    pub maglev: HashMap<MapData, MaglevKey, u32>,
    /// `flows` (an LRU hash).
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
    /// `xdp_config`.
    pub xdp_config: Array<MapData, XdpConfig>,
    /// `if_addrs`.
    pub if_addrs: HashMap<MapData, u32, IfAddrs>,
    /// `xdp_stats`.
    pub xdp_stats: PerCpuArray<MapData, u64>,
    /// `service_stats`.
    pub service_stats: PerCpuArray<MapData, ServiceStats>,
    /// `backend_stats`.
    pub backend_stats: PerCpuArray<MapData, BackendStats>,
    /// `flow_stats`.
    pub flow_stats: PerCpuArray<MapData, u64>,
}

/// Takes map `name` out of `ebpf` as the typed handle `T`.
fn take<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl XdpFixture {
    /// Loads the embedded object (needs a real eBPF build and root).
    pub fn load() -> anyhow::Result<Self> {
        let object = lb_userspace::kernel::ebpf_object::ebpf_object()?;
        let mut ebpf = EbpfLoader::new()
            .load(object)
            .context("loading the eBPF object")?;
        for name in [program_names::XDP, program_names::XDP_EMPTY] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {name} is not an XDP program"))?;
            load_retrying(|| program.load())
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        for name in [program_names::TC, program_names::TC_EMPTY] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a tc classifier"))?;
            load_retrying(|| program.load())
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        Ok(Self {
            hook: Hook::Xdp,
            services: take(&mut ebpf, map_names::SERVICES)?,
            vip_filter: take(&mut ebpf, map_names::VIP_FILTER)?,
            backends: take(&mut ebpf, map_names::BACKENDS)?,
            maglev: take(&mut ebpf, map_names::MAGLEV)?,
            flows: take(&mut ebpf, map_names::FLOWS)?,
            xdp_config: take(&mut ebpf, map_names::XDP_CONFIG)?,
            if_addrs: take(&mut ebpf, map_names::IF_ADDRS)?,
            xdp_stats: take(&mut ebpf, map_names::XDP_STATS)?,
            service_stats: take(&mut ebpf, map_names::SERVICE_STATS)?,
            backend_stats: take(&mut ebpf, map_names::BACKEND_STATS)?,
            flow_stats: take(&mut ebpf, map_names::FLOW_STATS)?,
            ebpf,
        })
    }

    /// The loaded `lb_tc` program (to attach it, e.g. through the clsact
    /// path).
    pub fn tc_program(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(program_names::TC)
            .expect("lb_tc is loaded")
            .try_into()
            .expect("lb_tc is a tc classifier")
    }

    /// Runs program `name` once (`repeat` times on the same buffer) on
    /// `frame`, with its own verdict (XDP or tc). With `ingress_ifindex`
    /// the frame arrives on that interface (an `xdp_md` or `__sk_buff`
    /// context is passed in); without, the kernel uses the namespace's
    /// loopback.
    pub fn run_program(
        &self,
        name: &str,
        frame: &[u8],
        ingress_ifindex: Option<u32>,
        repeat: u32,
    ) -> anyhow::Result<Run> {
        let mut out = vec![0_u8; frame.len() + 256];
        let program = self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} not loaded"))?;
        let tc = name == program_names::TC || name == program_names::TC_EMPTY;
        let ctx: Option<Vec<u8>> = ingress_ifindex.map(|ifindex| {
            if tc {
                // struct __sk_buff (192 bytes): the kernel accepts only a
                // few fields set; ingress_ifindex at 36 and ifindex at 40
                // (the device the skb is on) are two of them.
                let mut ctx = vec![0_u8; 192];
                ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
                ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
                ctx
            } else {
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
                // rx_queue_index, egress_ifindex (all u32).
                let len = u32::try_from(frame.len()).expect("frame length");
                let mut ctx = vec![0_u8; 24];
                ctx[4..8].copy_from_slice(&len.to_ne_bytes());
                ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
                ctx
            }
        });
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx.as_deref(),
            repeat,
            ..TestRunOptions::default()
        };
        let result = if tc {
            <&SchedClassifier>::try_from(program)
                .map_err(|e| anyhow!("{name} is not a tc classifier: {e}"))?
                .test_run(options)
        } else {
            <&Xdp>::try_from(program)
                .map_err(|e| anyhow!("{name} is not an XDP program: {e}"))?
                .test_run(options)
        }
        .map_err(|e| anyhow!("test run of {name}: {e} ({e:?})"))?;
        out.truncate(result.data_size_out as usize);
        Ok(Run {
            verdict: result.return_value,
            frame: out,
            duration: result.duration,
        })
    }

    /// Runs the program of [`XdpFixture::hook`] once on `frame`, see
    /// [`XdpFixture::run_program`]; a tc verdict comes back as the XDP
    /// verdict of the same meaning ([`tc_as_xdp`]).
    pub fn run(&self, frame: &[u8], ingress_ifindex: Option<u32>) -> Run {
        let mut run = self
            .run_program(self.hook.program(), frame, ingress_ifindex, 1)
            .unwrap_or_else(|e| panic!("{e:#}"));
        if self.hook == Hook::Tc {
            run.verdict = tc_as_xdp(run.verdict);
        }
        run
    }

    /// Writes the `xdp_config` entry.
    pub fn configure(&mut self, config: XdpConfig) {
        self.xdp_config.set(0, config, 0).expect("set xdp_config");
    }

    /// Adds or replaces a service; a remote one also gets its
    /// `vip_filter` bit, as the controller does (bits are never cleared
    /// here: a set bit only costs the forwarder a lookup).
    pub fn set_service(&mut self, vip: SocketAddr, proto: u8, service: Service) {
        let key = vip_key(vip, proto);
        self.services
            .insert(key, service, 0)
            .expect("insert service");
        if service.flags & lb_common::SERVICE_REMOTE != 0 {
            let (word, mask) = VipFilter::word_and_mask(VipFilter::bit(&key));
            let bits = self.vip_filter.get(&word, 0).expect("read vip_filter");
            self.vip_filter
                .set(word, bits | mask, 0)
                .expect("set vip_filter");
        }
    }

    /// Clears every bit of `vip_filter` (the forwarder then treats no
    /// destination as a remote VIP).
    pub fn clear_vip_filter(&mut self) {
        for word in 0..lb_common::VIP_FILTER_WORDS {
            self.vip_filter.set(word, 0, 0).expect("clear vip_filter");
        }
    }

    /// Writes backend slot `id`.
    pub fn set_backend(&mut self, id: u32, backend: Backend) {
        self.backends.set(id, backend, 0).expect("set backend");
    }

    /// Writes Maglev slot `slot` of service `service_id`.
    pub fn set_maglev(&mut self, service_id: u32, slot: u32, backend_id: u32) {
        self.maglev
            .insert(MaglevKey { service_id, slot }, backend_id, 0)
            .expect("insert maglev slot");
    }

    /// Writes the `if_addrs` entry of `ifindex`.
    pub fn set_if_addrs(&mut self, ifindex: u32, addrs: IfAddrs) {
        self.if_addrs
            .insert(ifindex, addrs, 0)
            .expect("insert if_addrs");
    }

    /// The flow entry for `key`, if any.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        match self.flows.get(key, 0) {
            Ok(value) => Some(value),
            Err(aya::maps::MapError::KeyNotFound) => None,
            Err(e) => panic!("flows lookup: {e}"),
        }
    }

    /// The entry for `key` with only what the packets are rewritten to and
    /// whom they count for (its `last_seen` and cached next hop zeroed,
    /// its flags without [`lb_common::FLOW_FIN`]/[`lb_common::FLOW_RST`]).
    pub fn flow_rewrite(&self, key: &FlowKey) -> Option<FlowValue> {
        self.flow(key).map(|value| FlowValue {
            flags: value.flags & lb_common::FLOW_REPLY,
            last_seen: 0,
            hop_ifindex: 0,
            hop_gen: 0,
            hop_dmac: [0; 6],
            hop_smac: [0; 6],
            ..value
        })
    }

    /// Writes the entry for `key`.
    pub fn set_flow(&mut self, key: &FlowKey, value: FlowValue) {
        self.flows.insert(key, value, 0).expect("insert flow");
    }

    /// Removes the entry for `key` (if any).
    pub fn remove_flow(&mut self, key: &FlowKey) {
        let _ = self.flows.remove(key);
    }

    /// Number of entries in `flows`.
    pub fn flow_count(&self) -> usize {
        self.flows.keys().count()
    }

    /// Removes every entry from `flows`.
    pub fn clear_flows(&mut self) {
        let keys: Vec<FlowKey> = self.flows.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = self.flows.remove(&key);
        }
    }

    /// `xdp_stats`, summed over CPUs, indexed by [`xdp_counter`].
    pub fn xdp_counters(&self) -> [u64; xdp_counter::COUNT as usize] {
        let mut out = [0; xdp_counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let index = u32::try_from(i).expect("counter index");
            *slot = self
                .xdp_stats
                .get(&index, 0)
                .expect("read xdp_stats")
                .iter()
                .sum();
        }
        out
    }

    /// `flow_stats`, summed over CPUs, indexed by [`flow_stat`].
    pub fn flow_totals(&self) -> FlowTotals {
        let mut out = FlowTotals::default();
        for (index, slot) in (0..flow_stat::COUNT).zip(out.iter_mut()) {
            *slot = self
                .flow_stats
                .get(&index, 0)
                .expect("read flow_stats")
                .iter()
                .sum();
        }
        out
    }

    /// The counters of service `id`, summed over CPUs.
    pub fn service_counters(&self, id: u32) -> ServiceStats {
        let per_cpu = self.service_stats.get(&id, 0).expect("read service_stats");
        sum_service_stats(&per_cpu)
    }

    /// The counters of backend `id`, summed over CPUs.
    pub fn backend_counters(&self, id: u32) -> BackendStats {
        let per_cpu = self.backend_stats.get(&id, 0).expect("read backend_stats");
        sum_backend_stats(&per_cpu)
    }
}

/// Name of the node's client-side interface (the client's frames arrive here).
pub const CLIENT_IF: &str = "xc0";
/// Its veth peer.
pub const CLIENT_PEER: &str = "xc1";
/// Name of the node's backend-side interface.
pub const BACKEND_IF: &str = "xb0";
/// Its veth peer.
pub const BACKEND_PEER: &str = "xb1";
/// MAC of [`CLIENT_IF`].
pub const CLIENT_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc0, 0x01];
/// MAC of [`CLIENT_PEER`].
pub const CLIENT_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc0, 0x02];
/// MAC of [`BACKEND_IF`].
pub const BACKEND_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x01];
/// MAC of [`BACKEND_PEER`].
pub const BACKEND_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x02];
/// The client's MAC (permanent neighbour on [`CLIENT_IF`]).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc1, 0x10];
/// The near client's MAC (permanent neighbour on [`BACKEND_IF`]).
pub const NEAR_CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb1, 0x50];
/// Backend MACs (permanent neighbours on [`BACKEND_IF`]), by index into
/// [`Addrs::backends`].
pub const BACKEND_MACS: [[u8; 6]; 4] = [
    [0x02, 0, 0, 0, 0xbe, 0x01],
    [0x02, 0, 0, 0, 0xbe, 0x02],
    [0x02, 0, 0, 0, 0xbe, 0x03],
    [0x02, 0, 0, 0, 0xbe, 0x04],
];

/// The addresses of one family in the fixture network.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    /// Prefix length of both subnets.
    pub prefix: u8,
    /// The node's address on [`CLIENT_IF`].
    pub node_client_side: IpAddr,
    /// The node's address on [`BACKEND_IF`] (used as configured SNAT source).
    pub node_backend_side: IpAddr,
    /// A second node address on [`BACKEND_IF`] (used as the `if_addrs` SNAT source).
    pub node_backend_side2: IpAddr,
    /// A remote client behind [`CLIENT_IF`] ([`CLIENT_MAC`]).
    pub client: IpAddr,
    /// A client on the backend subnet ([`NEAR_CLIENT_MAC`]): its flows
    /// leave the way they came in (`XDP_TX`).
    pub near_client: IpAddr,
    /// Backends on the backend subnet ([`BACKEND_MACS`]).
    pub backends: [IpAddr; 4],
    /// An address on the backend subnet without a neighbour entry.
    pub no_neigh: IpAddr,
    /// An address with a blackhole route.
    pub blackholed: IpAddr,
    /// The VIP (not an address of the node; services are keyed by it).
    pub vip: IpAddr,
    /// Another address that is no VIP.
    pub not_vip: IpAddr,
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(net: u16, host: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, host))
}

/// IPv4 addresses: client side 10.2.0.0/24, backend side 10.1.0.0/24,
/// VIP 10.9.0.1, blackhole route 10.66.0.1/32.
pub const V4: Addrs = Addrs {
    prefix: 24,
    node_client_side: v4(10, 2, 0, 1),
    node_backend_side: v4(10, 1, 0, 1),
    node_backend_side2: v4(10, 1, 0, 2),
    client: v4(10, 2, 0, 10),
    near_client: v4(10, 1, 0, 50),
    backends: [
        v4(10, 1, 0, 11),
        v4(10, 1, 0, 12),
        v4(10, 1, 0, 13),
        v4(10, 1, 0, 14),
    ],
    no_neigh: v4(10, 1, 0, 99),
    blackholed: v4(10, 66, 0, 1),
    vip: v4(10, 9, 0, 1),
    not_vip: v4(10, 9, 0, 2),
};

/// IPv6 addresses: client side `2001:db8:2::/64`, backend side
/// `2001:db8:1::/64`, VIP `2001:db8:9::1`, blackhole route `2001:db8:66::1/128`.
pub const V6: Addrs = Addrs {
    prefix: 64,
    node_client_side: v6(2, 1),
    node_backend_side: v6(1, 1),
    node_backend_side2: v6(1, 2),
    client: v6(2, 0x10),
    near_client: v6(1, 0x50),
    backends: [v6(1, 0x11), v6(1, 0x12), v6(1, 0x13), v6(1, 0x14)],
    no_neigh: v6(1, 0x99),
    blackholed: v6(0x66, 1),
    vip: v6(9, 1),
    not_vip: v6(9, 2),
};

/// Formats a MAC for `ip`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fixture network inside the calling thread's network namespace.
#[derive(Clone, Copy, Debug)]
pub struct Network {
    /// Interface index of [`CLIENT_IF`].
    pub client_if: u32,
    /// Interface index of [`BACKEND_IF`].
    pub backend_if: u32,
}

impl Network {
    /// Creates the veth pairs, addresses, neighbours and routes of
    /// [`V4`]/[`V6`] and turns forwarding on. Call it inside a fresh
    /// [`crate::NetNs`] (it changes that namespace only, which vanishes
    /// with it) and stay on the same thread.
    pub fn setup() -> Self {
        for (near, near_mac, peer, peer_mac) in [
            (CLIENT_IF, CLIENT_IF_MAC, CLIENT_PEER, CLIENT_PEER_MAC),
            (BACKEND_IF, BACKEND_IF_MAC, BACKEND_PEER, BACKEND_PEER_MAC),
        ] {
            sh(
                "ip",
                &["link", "add", near, "type", "veth", "peer", "name", peer],
            );
            sh(
                "ip",
                &["link", "set", "dev", near, "address", &mac_string(near_mac)],
            );
            sh(
                "ip",
                &["link", "set", "dev", peer, "address", &mac_string(peer_mac)],
            );
            sh("ip", &["link", "set", "dev", near, "up"]);
            sh("ip", &["link", "set", "dev", peer, "up"]);
        }
        for addrs in [V4, V6] {
            let family = if addrs.client.is_ipv4() { "-4" } else { "-6" };
            let add_addr = |addr: IpAddr, dev: &str| {
                let cidr = format!("{addr}/{}", addrs.prefix);
                let mut args = vec![family, "addr", "add", &cidr, "dev", dev];
                if addr.is_ipv6() {
                    args.push("nodad");
                }
                sh("ip", &args);
            };
            add_addr(addrs.node_client_side, CLIENT_IF);
            add_addr(addrs.node_backend_side, BACKEND_IF);
            add_addr(addrs.node_backend_side2, BACKEND_IF);
            let neighbours = [
                (addrs.client, CLIENT_MAC, CLIENT_IF),
                (addrs.near_client, NEAR_CLIENT_MAC, BACKEND_IF),
            ]
            .into_iter()
            .chain(
                addrs
                    .backends
                    .iter()
                    .zip(BACKEND_MACS)
                    .map(|(addr, mac)| (*addr, mac, BACKEND_IF)),
            );
            for (addr, mac, dev) in neighbours {
                sh(
                    "ip",
                    &[
                        family,
                        "neigh",
                        "add",
                        &addr.to_string(),
                        "lladdr",
                        &mac_string(mac),
                        "nud",
                        "permanent",
                        "dev",
                        dev,
                    ],
                );
            }
            let host_len = if addrs.blackholed.is_ipv4() { 32 } else { 128 };
            let blackhole = format!("{}/{host_len}", addrs.blackholed);
            sh("ip", &[family, "route", "add", "blackhole", &blackhole]);
        }
        // Writes through /proc/sys/net apply to the writing thread's namespace.
        for path in [
            "/proc/sys/net/ipv4/conf/all/forwarding",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ] {
            fs::write(path, "1").unwrap_or_else(|e| panic!("writing {path}: {e}"));
        }
        Self {
            client_if: ifindex(CLIENT_IF),
            backend_if: ifindex(BACKEND_IF),
        }
    }
}

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    let cname = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(index, 0, "no interface {name}");
    index
}

/// The `family` field for an address.
pub fn family_of(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { AF_INET } else { AF_INET6 }
}
