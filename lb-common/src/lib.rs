//! Map keys and values shared by the daas-lb kernel programs (`lb-ebpf`) and the
//! controller (`lb-userspace`).
//!
//! Every type is `#[repr(C)]`, has only integer fields, spells out its padding
//! as `pad` fields (so no byte of a key is ever uninitialised) and has its
//! size asserted at compile time. Addresses are 16 bytes in network order
//! (IPv4 in the first four) and ports are in host order, so that
//! `bpftool map dump` shows them readably (`[127,0,0,1,0,...]`, `6444`);
//! the kernel programs convert when they read or write a socket address.
//!
//! The maps themselves (name, kind, key and value size, capacity, flags)
//! are declared once, in [`maps`].
#![no_std]

pub mod csum;
pub mod dial;
pub mod maps;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use dial::{
    BackendConns, BackendDial, DialEvent, DialStart, Failover, MAX_DIALS, MAX_FAILOVER,
    MAX_TRACKED_CONNS, dial_kind, failover_flag,
};

/// Linux `AF_INET`.
pub const AF_INET: u8 = 2;
/// Linux `AF_INET6`.
pub const AF_INET6: u8 = 10;
/// `IPPROTO_TCP`.
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u8 = 17;

/// Backend id meaning "this service has no backend": connects are refused.
pub const NO_BACKEND: u32 = 0;

/// Capacity of the `backends` and `backend_stats` arrays (ids `1..MAX_BACKENDS`;
/// id 0 is [`NO_BACKEND`]).
pub const MAX_BACKENDS: u32 = 4096;
/// Capacity of the `services` hash map and of the `service_stats` array.
pub const MAX_SERVICES: u32 = 1024;
/// Capacity of the `rev_nat` LRU map (one entry per socket and backend).
pub const MAX_REV_NAT: u32 = 65536;
/// Capacity of the `maglev` map: the slots of every `spread` service's
/// table together.
pub const MAX_MAGLEV_SLOTS: u32 = 262_144;
/// [`Service::flags`] bit: pick the backend from the service's Maglev table
/// (`policy: spread`) instead of using [`Service::backend_id`].
pub const SERVICE_SPREAD: u32 = 1;
/// [`Service::flags`] bit: the XDP program serves this VIP to remote clients
/// (`remote: true`); without it XDP passes the VIP's packets untouched.
pub const SERVICE_REMOTE: u32 = 2;
/// [`Backend::flags`] bit: the server is failed or invalid. XDP flows pinned
/// to it are re-hashed to a usable backend on their next packet.
pub const BACKEND_DOWN: u8 = 1;
/// Capacity of the `flows` LRU map. Every forwarded flow takes two entries
/// (client→VIP and backend→SNAT address).
pub const MAX_FLOWS: u32 = 262_144;
/// Capacity of the `if_addrs` map (interfaces whose primary addresses the
/// XDP program may use as SNAT source).
pub const MAX_INTERFACES: u32 = 256;
/// How many SNAT ports a new XDP flow tries before it is dropped
/// (`snat_ports_exhausted`).
pub const SNAT_PORT_ATTEMPTS: u32 = 16;
/// [`FlowValue::flags`] bit: the entry translates a reply (backend → client).
pub const FLOW_REPLY: u32 = 1;
/// [`FlowValue::flags`] bit: a TCP FIN went through in this entry's
/// direction (cleared by a new SYN).
pub const FLOW_FIN: u32 = 2;
/// [`FlowValue::flags`] bit: a TCP RST went through in this entry's
/// direction (cleared by a new SYN).
pub const FLOW_RST: u32 = 4;
/// [`FlowValue::flags`] bit: the cached next hop's interface is a veth (or
/// netkit) whose peer lives in another network namespace
/// ([`IF_PEER_NETNS`]): the tc program sends the flow's packets straight
/// into the peer with `bpf_redirect_peer`.
pub const FLOW_HOP_PEER: u32 = 8;
/// [`FlowValue::last_seen`] is rewritten only when it is older than this
/// (1 s): fewer writes to a shared cache line, and the flow collector's
/// timeouts are whole seconds anyway.
pub const FLOW_TOUCH_NS: u64 = 1_000_000_000;
/// [`XdpConfig::flags`] bit: [`XdpConfig::snat_v4`] is set.
pub const XDP_SNAT_V4: u32 = 1;
/// [`XdpConfig::flags`] bit: [`XdpConfig::snat_v6`] is set.
pub const XDP_SNAT_V6: u32 = 2;
/// [`XdpConfig::flags`] bit: drop a packet to a SNAT address and a port of
/// the SNAT range that has no flow entry ([`xdp_counter::DROP_ORPHAN_REPLY`])
/// instead of passing it. Set by the controller only when the SNAT range
/// and the node's `ip_local_port_range` do not overlap and no socket
/// listens on or is bound to a port of the range at start (otherwise such
/// a packet may belong to one of the node's own sockets).
pub const XDP_DROP_ORPHANS: u32 = 4;
/// [`IfAddrs::flags`] bit: [`IfAddrs::v4`] is set.
pub const IF_HAS_V4: u32 = 1;
/// [`IfAddrs::flags`] bit: [`IfAddrs::v6`] is set.
pub const IF_HAS_V6: u32 = 2;
/// [`IfAddrs::flags`] bit: the interface is a veth (or netkit) whose peer
/// lives in another network namespace (rtnetlink's `IFLA_LINK_NETNSID`),
/// so a tc program can hand a packet for it to the peer's ingress directly
/// (`bpf_redirect_peer`), without the trip through the veth's transmit
/// path and the backlog queue. Such an interface has an entry even without
/// an address.
pub const IF_PEER_NETNS: u32 = 4;

/// Indexes of the per-CPU `xdp_stats` array: what the XDP program did with
/// each packet, and why. Every packet is counted exactly once.
pub mod xdp_counter {
    /// Forwarded out of another interface (`bpf_redirect`).
    pub const REDIRECT: u32 = 0;
    /// Forwarded back out of the interface it came in on (`XDP_TX`; tc:
    /// `bpf_redirect` to that interface).
    pub const TX: u32 = 1;
    /// Passed: not IPv4/IPv6 (ARP, VLAN-tagged, ...).
    pub const PASS_NOT_IP: u32 = 2;
    /// Passed: a header ends beyond the packet.
    pub const PASS_TRUNCATED: u32 = 3;
    /// Passed: IPv4 with options (IHL > 5).
    pub const PASS_IP_OPTIONS: u32 = 4;
    /// Passed: an IPv4 fragment (MF set or offset > 0).
    pub const PASS_FRAGMENT: u32 = 5;
    /// Passed: IPv6 with an extension header (next header not TCP/UDP).
    pub const PASS_IPV6_EXT: u32 = 6;
    /// Passed: not TCP or UDP (ICMP, ...).
    pub const PASS_NOT_TCP_UDP: u32 = 7;
    /// Passed: no flow and no `remote` service for the destination.
    pub const PASS_NOT_VIP: u32 = 8;
    /// Passed: TTL / hop limit would expire (the stack sends the ICMP error).
    pub const PASS_TTL: u32 = 9;
    /// Passed (XDP only): the FIB knows the route but not the neighbour's
    /// MAC yet (tc sends such a packet, see [`REDIRECT_NEIGH`]).
    pub const PASS_NO_NEIGH: u32 = 10;
    /// Passed: the packet needs fragmenting on the way out.
    pub const PASS_FRAG_NEEDED: u32 = 11;
    /// Passed: forwarding is disabled on the ingress interface, or another
    /// FIB answer the stack should handle.
    pub const PASS_FIB_OTHER: u32 = 12;
    /// Passed: no SNAT address for the egress interface and family.
    pub const PASS_NO_SNAT_ADDR: u32 = 13;
    /// Passed: UDP over IPv6 with checksum 0 (invalid; the stack drops it).
    pub const PASS_UDP6_ZERO_CSUM: u32 = 14;
    /// Dropped: the service has no usable backend.
    pub const DROP_NO_BACKEND: u32 = 15;
    /// Dropped: no free SNAT port after [`crate::SNAT_PORT_ATTEMPTS`] tries.
    pub const DROP_SNAT_PORTS: u32 = 16;
    /// Dropped: the flow could not be stored in the `flows` map.
    pub const DROP_FLOW_TABLE: u32 = 17;
    /// Dropped: the FIB says the destination is unreachable/blackholed/prohibited.
    pub const DROP_UNREACHABLE: u32 = 18;
    /// Forwarded by the tc program with `bpf_redirect_neigh` (the kernel
    /// resolves the neighbour; XDP passes such packets as `pass_no_neigh`).
    pub const REDIRECT_NEIGH: u32 = 19;
    /// Dropped: a TCP/UDP packet to a SNAT address and a port of the SNAT
    /// range with no flow entry (its flow is gone; only with
    /// [`crate::XDP_DROP_ORPHANS`]): passed, the stack would see a reply
    /// it cannot translate.
    pub const DROP_ORPHAN_REPLY: u32 = 20;
    /// Dropped (tc only): a rewrite helper failed (the skb could not be
    /// made writable: an allocation failed), so the headers may be half
    /// rewritten.
    pub const DROP_REWRITE: u32 = 21;
    /// Forwarded by the tc program with `bpf_redirect_peer`: into the peer
    /// of a veth whose peer lives in another namespace
    /// ([`crate::IF_PEER_NETNS`]), straight to its ingress.
    pub const REDIRECT_PEER: u32 = 22;
    /// Number of counters.
    pub const COUNT: u32 = 23;
    /// Counter names, by index (the `reason` label in `/metrics`).
    pub const NAMES: [&str; COUNT as usize] = [
        "redirect",
        "tx",
        "pass_not_ip",
        "pass_truncated",
        "pass_ip_options",
        "pass_fragment",
        "pass_ipv6_ext",
        "pass_not_tcp_udp",
        "pass_not_vip",
        "pass_ttl",
        "pass_no_neigh",
        "pass_frag_needed",
        "pass_fib_other",
        "pass_no_snat_addr",
        "pass_udp6_zero_csum",
        "drop_no_backend",
        "drop_snat_ports",
        "drop_flow_table",
        "drop_unreachable",
        "redirect_neigh",
        "drop_orphan_reply",
        "drop_rewrite",
        "redirect_peer",
    ];
}

/// Indices of `flow_stats`: `flows` entries counted by who created or
/// removed them, so that the entries the LRU evicted (which the kernel does
/// not report) can be told from the rest: evicted = created − removed −
/// still present (see the controller's flow collector). Each index has one
/// writer.
pub mod flow_stat {
    /// Entries the forwarders stored where none was (a new flow's two
    /// entries, a reply entry re-created after an eviction); an entry
    /// overwritten in place is not counted.
    pub const CREATED: u32 = 0;
    /// Entries the forwarders removed themselves (a moved flow's old reply
    /// entry, a forward entry whose SNAT port went to another flow, a
    /// reply entry whose forward entry could not be stored).
    pub const REMOVED_KERNEL: u32 = 1;
    /// Entries the flow collector removed (written by it, CPU 0's slot).
    pub const REMOVED_COLLECTOR: u32 = 2;
    /// Entries the controller removed (a service whose `remote` was
    /// switched off; written by it, CPU 0's slot).
    pub const REMOVED_CONTROLLER: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
}

/// Levels of the kernel programs' logging (the value of `kernel_log[0]`):
/// which rare events the programs write to aya-log's ring buffer. The
/// programs read the level only once such an event has happened, never on
/// the path of a connect or packet that goes through.
pub mod kernel_log {
    /// Nothing is logged (the default): the ring buffer is never touched.
    pub const OFF: u32 = 0;
    /// Refused connects (no usable backend) and failed or stalled dials.
    pub const WARN: u32 = 1;
    /// Also: a connect moved past a suspect backend (or kept on one, fail
    /// open) and every XDP drop, by reason.
    pub const DEBUG: u32 = 2;
    /// The name of aya-log's ring buffer in the object (declared by
    /// `aya-log-ebpf`, not in [`crate::maps::MAPS`]: each run's programs
    /// get a new one, read by that run's controller, so it is never pinned).
    pub const RING: &str = "AYA_LOGS";
}

/// Names of the maps, which are also their pin file names under the bpffs
/// directory (kernel object names are at most 15 bytes).
pub mod map_names {
    /// [`crate::VipKey`] → [`crate::Service`].
    pub const SERVICES: &str = "services";
    /// backend id → [`crate::Backend`].
    pub const BACKENDS: &str = "backends";
    /// backend id → per-CPU [`crate::BackendStats`].
    pub const BACKEND_STATS: &str = "backend_stats";
    /// service id → per-CPU [`crate::ServiceStats`].
    pub const SERVICE_STATS: &str = "service_stats";
    /// [`crate::RevNatKey`] → [`crate::RevNatValue`].
    pub const REV_NAT: &str = "rev_nat";
    /// [`crate::MaglevKey`] → backend id.
    pub const MAGLEV: &str = "maglev";
    /// [`crate::FlowKey`] → [`crate::FlowValue`]: XDP's connection table.
    pub const FLOWS: &str = "flows";
    /// Index 0 → [`crate::XdpConfig`].
    pub const XDP_CONFIG: &str = "xdp_config";
    /// Interface index → [`crate::IfAddrs`].
    pub const IF_ADDRS: &str = "if_addrs";
    /// [`crate::xdp_counter`] index → per-CPU packet count.
    pub const XDP_STATS: &str = "xdp_stats";
    /// Socket cookie → [`crate::DialStart`]: TCP connects not answered yet.
    pub const DIALS: &str = "dials";
    /// Backend id → [`crate::BackendDial`]: suspect marks.
    pub const BACKEND_DIAL: &str = "backend_dial";
    /// Service id → [`crate::Failover`]: where connects go past a suspect backend.
    pub const FAILOVER: &str = "failover";
    /// Ring buffer of [`crate::DialEvent`]s for the controller.
    pub const DIAL_EVENTS: &str = "dial_events";
    /// Socket cookie → backend id: established TCP connections counted.
    pub const CONNS: &str = "conns";
    /// Backend id → [`crate::BackendConns`].
    pub const BACKEND_CONNS: &str = "backend_conns";
    /// Index 0 → the [`crate::kernel_log`] level.
    pub const KERNEL_LOG: &str = "kernel_log";
    /// `lb_common::maps::FLOW_SCRATCH`.
    pub const FLOW_SCRATCH: &str = "flow_scratch";
    /// Word index → 64 bits of the [`crate::VipFilter`]: which VIPs may be
    /// remote services.
    pub const VIP_FILTER: &str = "vip_filter";
    /// [`crate::flow_stat`] index → per-CPU count of `flows` entries
    /// created and removed.
    pub const FLOW_STATS: &str = "flow_stats";
    /// Every map, in the order the README documents them: the names of
    /// [`crate::maps::MAPS`].
    pub const ALL: [&str; crate::maps::MAPS.len()] = {
        let mut all = [""; crate::maps::MAPS.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = crate::maps::MAPS[i].name;
            i += 1;
        }
        all
    };
}

/// Names of the kernel programs (function names in `lb-ebpf`).
pub mod program_names {
    /// TCP and UDP `connect()` over IPv4.
    pub const CONNECT4: &str = "lb_connect4";
    /// TCP and UDP `connect()` over IPv6 (including v4-mapped addresses).
    pub const CONNECT6: &str = "lb_connect6";
    /// `getpeername()` over IPv4: shows the VIP again.
    pub const GETPEERNAME4: &str = "lb_getpeername4";
    /// `getpeername()` over IPv6.
    pub const GETPEERNAME6: &str = "lb_getpeername6";
    /// Unconnected UDP `sendmsg()` over IPv4.
    pub const SENDMSG4: &str = "lb_sendmsg4";
    /// Unconnected UDP `sendmsg()` over IPv6.
    pub const SENDMSG6: &str = "lb_sendmsg6";
    /// UDP `recvmsg()` over IPv4: the reply's source becomes the VIP.
    pub const RECVMSG4: &str = "lb_recvmsg4";
    /// UDP `recvmsg()` over IPv6.
    pub const RECVMSG6: &str = "lb_recvmsg6";
    /// The XDP forwarder for remote clients (attached to `xdp.interfaces`).
    pub const XDP: &str = "lb_xdp";
    /// The tc ingress forwarder for remote clients: the same parse, flow
    /// lookup and NAT as [`XDP`] on an skb (attached where native XDP is not
    /// safe: veth, bridges, virtio).
    pub const TC: &str = "lb_tc";
    /// A tc program that only returns `TC_ACT_OK`: the tc baseline of
    /// `cargo xtask bench xdp`. Never attached by the controller.
    pub const TC_EMPTY: &str = "lb_tc_empty";
    /// An XDP program that only returns `XDP_PASS`: the baseline of
    /// `cargo xtask bench xdp`. Never attached by the controller.
    pub const XDP_EMPTY: &str = "lb_xdp_empty";
    /// The `sock_ops` program on the same cgroup: sees each redirected TCP
    /// connect succeed or fail.
    pub const SOCK_OPS: &str = "lb_sock_ops";
    /// Every cgroup `sock_addr` program (`sock_ops` and the XDP programs
    /// are handled separately).
    pub const ALL: [&str; 8] = [
        CONNECT4,
        CONNECT6,
        GETPEERNAME4,
        GETPEERNAME6,
        SENDMSG4,
        SENDMSG6,
        RECVMSG4,
        RECVMSG6,
    ];
}

/// An address as the maps hold it: 16 bytes in network order, IPv4 in the
/// first four bytes and zeros after them.
///
/// Every map struct holding one is 8-byte aligned (4 for [`VipKey`]) with
/// its addresses at offsets that are multiples of 8: a copy of the field
/// is then known to be aligned, and the kernel programs load and compare it
/// a word at a time instead of byte by byte (the sizes do not change).
pub type AddrBytes = [u8; 16];

/// The map form of an address, and its family.
pub const fn ip_to_bytes(addr: IpAddr) -> (AddrBytes, u8) {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            ([a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], AF_INET)
        }
        IpAddr::V6(v6) => (v6.octets(), AF_INET6),
    }
}

/// The address an entry holds, given its family.
pub const fn ip_from_bytes(bytes: AddrBytes, family: u8) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from_octets(bytes))
    }
}

/// Key of the `services` map: a virtual address (VIP), port and protocol.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// VIP address, see [`AddrBytes`].
    pub addr: AddrBytes,
    /// VIP port (host order).
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
}

const _: () = assert!(size_of::<VipKey>() == 20);

/// Bits of the [`VipFilter`] (a power of two).
pub const VIP_FILTER_BITS: u32 = 1 << 15;
/// Entries (64-bit words) of the `vip_filter` array.
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 64;

/// What the `vip_filter` array holds, entry `i` being `words[i]`: a
/// one-hash Bloom filter over the `services` keys of remote services
/// ([`SERVICE_REMOTE`]). The
/// forwarder looks a packet's destination up in `services` only when its
/// bit is set, so a packet for no remote VIP (most of a node's traffic)
/// costs a few instructions instead of a hash lookup. A set bit proves
/// nothing (the `services` lookup decides); a clear bit means "no remote
/// service here".
///
/// Invariant (kept by the controller's `services` wrapper): every remote
/// service in `services` has its bit set. Words are rewritten one by one;
/// a bit set in both the old and the new filter stays set throughout, so
/// a VIP that stays remote is never filtered out. One word per entry (not
/// one 4 KiB value): the forwarder reads the word through an array lookup,
/// and the bit's hash never becomes a pointer offset the verifier must
/// track precisely (that multiplied its states past the limit).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipFilter {
    /// The bits, [`VipFilter::bit`] → bit `bit % 64` of word `bit / 64`.
    pub words: [u64; VIP_FILTER_WORDS as usize],
}

impl Default for VipFilter {
    fn default() -> Self {
        Self {
            words: [0; VIP_FILTER_WORDS as usize],
        }
    }
}

impl VipFilter {
    /// The bit of `key`: its words mixed with a multiplicative hash (cheap
    /// enough for every packet), the top bits taken.
    #[expect(
        clippy::inline_always,
        reason = "the kernel program must not make a BPF-to-BPF call per packet"
    )]
    #[inline(always)]
    pub const fn bit(key: &VipKey) -> u32 {
        // A by-value copy of the aligned key: word loads, not byte loads.
        let a = key.addr;
        let w = [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ];
        let rest = key.port as u32 | (key.proto as u32) << 16 | (key.family as u32) << 24;
        let h = w[0]
            ^ w[1].rotate_left(8)
            ^ w[2].rotate_left(16)
            ^ w[3].rotate_left(24)
            ^ rest.rotate_left(4);
        h.wrapping_mul(0x9e37_79b1) >> (32 - VIP_FILTER_BITS.trailing_zeros())
    }

    /// The entry of `vip_filter` holding `bit`, and the bit's mask in it.
    #[expect(
        clippy::inline_always,
        reason = "the kernel program must not make a BPF-to-BPF call per packet"
    )]
    #[inline(always)]
    pub const fn word_and_mask(bit: u32) -> (u32, u64) {
        (bit / 64, 1 << (bit % 64))
    }

    /// Sets `key`'s bit.
    pub const fn insert(&mut self, key: &VipKey) {
        let (word, mask) = Self::word_and_mask(Self::bit(key));
        self.words[word as usize] |= mask;
    }

    /// Whether `key`'s bit is set (`key` may be a remote service).
    pub const fn may_contain(&self, key: &VipKey) -> bool {
        let (word, mask) = Self::word_and_mask(Self::bit(key));
        self.words[word as usize] & mask != 0
    }
}

/// Value of the `services` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index into `service_stats` (`0..MAX_SERVICES`).
    pub id: u32,
    /// Selected backend (index into `backends`), or [`NO_BACKEND`]. With
    /// [`SERVICE_SPREAD`] the fallback when the table slot is empty.
    pub backend_id: u32,
    /// [`SERVICE_SPREAD`] or 0.
    pub flags: u32,
    /// Slots of the service's Maglev table (a prime; 0 without [`SERVICE_SPREAD`]).
    pub table_size: u32,
}

const _: () = assert!(size_of::<Service>() == 16);

/// Value of the `backends` array.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Backend address, see [`AddrBytes`].
    pub addr: AddrBytes,
    /// Backend port (host order).
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`]; 0 marks an unused slot.
    pub family: u8,
    /// [`BACKEND_DOWN`] or 0.
    pub flags: u8,
    /// The service this backend belongs to (lets a restarted controller adopt ids).
    pub service_id: u32,
}

const _: () = assert!(size_of::<Backend>() == 24);

/// Per-CPU counters of one backend (`backend_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// `connect()` calls rewritten to this backend (TCP and connected UDP).
    pub connects: u64,
    /// Unconnected UDP `sendmsg()` calls rewritten to this backend.
    pub sendmsgs: u64,
    /// Packets XDP forwarded to or from this backend (both directions).
    pub xdp_packets: u64,
    /// Bytes of those packets (from the Ethernet header on).
    pub xdp_bytes: u64,
    /// New XDP flows pinned to this backend.
    pub xdp_flows: u64,
}

const _: () = assert!(size_of::<BackendStats>() == 40);

/// Per-CPU counters of one service (`service_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Connects and sends refused with `ECONNREFUSED` because the service had no backend.
    pub refused: u64,
    /// Reverse-NAT entries that could not be stored (the socket still works,
    /// but `getpeername`/`recvmsg` show the backend instead of the VIP).
    pub rev_nat_failed: u64,
    /// Packets XDP forwarded for this service (both directions).
    pub xdp_packets: u64,
    /// Bytes of those packets.
    pub xdp_bytes: u64,
    /// New XDP flows.
    pub xdp_flows: u64,
    /// XDP packets dropped: no usable backend.
    pub xdp_drop_no_backend: u64,
    /// XDP packets dropped: no free SNAT port.
    pub xdp_drop_snat_ports: u64,
    /// XDP packets dropped: the flow table refused the entry.
    pub xdp_drop_flow_table: u64,
    /// XDP packets dropped: the FIB says the backend is unreachable.
    pub xdp_drop_unreachable: u64,
}

const _: () = assert!(size_of::<ServiceStats>() == 72);

/// Key of the `rev_nat` map: a socket and the backend it was sent to, as the
/// kernel shows it to the socket hooks (a v4-mapped IPv6 address stays v6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// `bpf_get_socket_cookie()` of the socket.
    pub cookie: u64,
    /// Backend address as written into the socket address.
    pub addr: AddrBytes,
    /// Backend port (host order).
    pub port: u16,
    /// Socket address family ([`AF_INET`] or [`AF_INET6`]).
    pub family: u8,
    /// Explicit padding, always 0.
    pub pad: [u8; 5],
}

const _: () = assert!(size_of::<RevNatKey>() == 32);

/// Value of the `rev_nat` map: the address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNatValue {
    /// VIP address as the application wrote it.
    pub addr: AddrBytes,
    /// VIP port (host order).
    pub port: u16,
    /// Explicit padding, always 0.
    pub pad: u16,
    /// The service, for diagnostics.
    pub service_id: u32,
}

const _: () = assert!(size_of::<RevNatValue>() == 24);

/// Key of the `maglev` map: one slot of a service's Maglev table. The value
/// is a backend id ([`NO_BACKEND`] for an empty slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MaglevKey {
    /// The service id.
    pub service_id: u32,
    /// The slot, `0..table_size`.
    pub slot: u32,
}

const _: () = assert!(size_of::<MaglevKey>() == 8);

/// Key of the `flows` map: a packet's addresses and ports as they arrive.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address, see [`AddrBytes`].
    pub src: AddrBytes,
    /// Destination address.
    pub dst: AddrBytes,
    /// Source port (host order).
    pub src_port: u16,
    /// Destination port (host order).
    pub dst_port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
    /// Explicit padding, always 0.
    pub pad: [u8; 2],
}

const _: () = assert!(size_of::<FlowKey>() == 40);

/// Value of the `flows` map: what a packet of the flow is rewritten to,
/// when the flow last saw a packet in this entry's direction, what TCP
/// ended it, and the cached next hop.
///
/// A flow is two entries (forward: client→VIP, [`FLOW_REPLY`]: backend→SNAT
/// address), created together by the kernel programs and removed together
/// by the controller's flow collector. Each entry records its own
/// direction: `last_seen` and the [`FLOW_FIN`]/[`FLOW_RST`] bits.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// New source address (the SNAT address, or the VIP for a reply).
    pub src: AddrBytes,
    /// New destination address (the backend, or the client for a reply).
    pub dst: AddrBytes,
    /// New source port (host order).
    pub src_port: u16,
    /// New destination port (host order).
    pub dst_port: u16,
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// The service (index into `service_stats`).
    pub service_id: u32,
    /// [`FLOW_REPLY`], [`FLOW_FIN`], [`FLOW_RST`], [`FLOW_HOP_PEER`].
    pub flags: u32,
    /// `CLOCK_MONOTONIC` (coarse) nanoseconds of the last packet in this
    /// entry's direction, refreshed at most every [`FLOW_TOUCH_NS`].
    pub last_seen: u64,
    /// The cached next hop's egress interface (0: none cached).
    pub hop_ifindex: u32,
    /// [`XdpConfig::hop_gen`] when the next hop was cached: the cache is
    /// used only while the two are equal.
    pub hop_gen: u32,
    /// The cached next hop's destination MAC.
    pub hop_dmac: [u8; 6],
    /// The cached next hop's source MAC (the egress interface's).
    pub hop_smac: [u8; 6],
    /// Explicit padding, always 0.
    pub pad: [u8; 4],
}

const _: () = assert!(size_of::<FlowValue>() == 80);

/// Value of the one-entry `xdp_config` array.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// Configured IPv4 SNAT source (first 4 bytes), valid with [`XDP_SNAT_V4`].
    pub snat_v4: AddrBytes,
    /// Configured IPv6 SNAT source, valid with [`XDP_SNAT_V6`].
    pub snat_v6: AddrBytes,
    /// First SNAT source port (host order).
    pub port_min: u16,
    /// Last SNAT source port (host order, inclusive). Both 0 = not configured:
    /// the program passes everything until the controller writes this entry.
    pub port_max: u16,
    /// [`XDP_SNAT_V4`] | [`XDP_SNAT_V6`] | [`XDP_DROP_ORPHANS`].
    pub flags: u32,
    /// Next-hop generation: the controller bumps it when a route, neighbour
    /// or link changes; a flow's cached next hop is valid only while its
    /// [`FlowValue::hop_gen`] equals this.
    pub hop_gen: u32,
    /// Explicit padding, always 0.
    pub pad: u32,
}

const _: () = assert!(size_of::<XdpConfig>() == 48);

/// Value of the `if_addrs` map: an interface's primary addresses, the SNAT
/// source for flows leaving through it when none is configured.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfAddrs {
    /// Primary IPv4 address (first 4 bytes), valid with [`IF_HAS_V4`].
    pub v4: AddrBytes,
    /// Primary global IPv6 address, valid with [`IF_HAS_V6`].
    pub v6: AddrBytes,
    /// [`IF_HAS_V4`] | [`IF_HAS_V6`] | [`IF_PEER_NETNS`].
    pub flags: u32,
    /// Explicit padding, always 0.
    pub pad: u32,
}

const _: () = assert!(size_of::<IfAddrs>() == 40);

// The alignment promise of [`AddrBytes`]: every address field of a map
// struct sits at a multiple of 8 in an 8-byte aligned struct (of 4 in the
// 4-byte aligned `VipKey`).
const _: () = {
    use core::mem::offset_of;
    assert!(align_of::<VipKey>() == 4 && offset_of!(VipKey, addr) == 0);
    assert!(align_of::<Backend>() == 8 && offset_of!(Backend, addr) == 0);
    assert!(align_of::<FlowKey>() == 8);
    assert!(offset_of!(FlowKey, src) == 0 && offset_of!(FlowKey, dst) == 16);
    assert!(align_of::<FlowValue>() == 8);
    assert!(offset_of!(FlowValue, src) == 0 && offset_of!(FlowValue, dst) == 16);
    assert!(align_of::<XdpConfig>() == 8);
    assert!(offset_of!(XdpConfig, snat_v4) == 0 && offset_of!(XdpConfig, snat_v6) == 16);
    assert!(align_of::<IfAddrs>() == 8);
    assert!(offset_of!(IfAddrs, v4) == 0 && offset_of!(IfAddrs, v6) == 16);
};

/// The hash that places a new XDP flow in a Maglev table and chooses its
/// SNAT port: source address and port, destination port and protocol
/// (the destination address is the VIP, the same for every flow).
/// Shared by the kernel program and the tests that predict its choices.
#[expect(
    clippy::inline_always,
    reason = "the kernel program must not make a BPF-to-BPF call per packet"
)]
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0;
    while i < 16 {
        h = mix64(
            h ^ u64::from_le_bytes([
                key.src[i],
                key.src[i + 1],
                key.src[i + 2],
                key.src[i + 3],
                key.src[i + 4],
                key.src[i + 5],
                key.src[i + 6],
                key.src[i + 7],
            ]),
        );
        i += 8;
    }
    let ports = ((key.src_port as u64) << 32) | ((key.dst_port as u64) << 16) | key.proto as u64;
    mix64(h ^ ports)
}

/// The `splitmix64` finaliser: spreads nearby inputs over the whole range.
#[expect(
    clippy::inline_always,
    reason = "the kernel program must not make a BPF-to-BPF call per packet"
)]
#[inline(always)]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The SNAT port a new flow tries on attempt `attempt`
/// (`0..SNAT_PORT_ATTEMPTS`) within `port_min..=port_max`: from a
/// hash-chosen start, the attempts step by 0, 1, 2, 3, … ports (start +
/// attempt·(attempt+1)/2, quadratic probing). Consecutive ports (linear
/// probing) made taken ports cluster into runs that a start inside one
/// walks through. Ranges shorter than 128 ports take consecutive ports
/// (the steps would wrap onto ports already tried); the attempts of one
/// flow are distinct ports either way.
#[expect(
    clippy::inline_always,
    reason = "the kernel program must not make a BPF-to-BPF call per packet"
)]
#[inline(always)]
pub const fn snat_port(hash: u64, attempt: u32, port_min: u16, port_max: u16) -> u16 {
    let span = (port_max as u64).saturating_sub(port_min as u64) + 1;
    let attempt = attempt as u64;
    let step = if span < 128 {
        attempt
    } else {
        attempt * (attempt + 1) / 2
    };
    let offset = ((hash >> 16).wrapping_add(step)) % span;
    port_min + offset as u16
}

// The last quadratic step stays below 128, so the attempts never wrap onto
// each other in a range of 128 ports or more.
const _: () = assert!(SNAT_PORT_ATTEMPTS * (SNAT_PORT_ATTEMPTS - 1) / 2 < 128);

#[cfg(feature = "user")]
mod pod {
    use super::{
        Backend, BackendConns, BackendDial, BackendStats, DialEvent, DialStart, Failover, FlowKey,
        FlowValue, IfAddrs, MaglevKey, RevNatKey, RevNatValue, Service, ServiceStats, VipKey,
        XdpConfig,
    };

    // SAFETY (for each impl below): the type is `#[repr(C)]`, `Copy`, made only
    // of integers and integer arrays, and has no implicit padding (sizes are
    // asserted above), so every bit pattern is valid and all bytes are initialised.
    macro_rules! pod {
        ($($t:ty),+) => {$(
            // SAFETY: see the comment above the macro.
            unsafe impl aya::Pod for $t {}
        )+};
    }
    pod!(
        BackendConns,
        VipKey,
        Service,
        Backend,
        BackendStats,
        ServiceStats,
        RevNatKey,
        RevNatValue,
        MaglevKey,
        FlowKey,
        FlowValue,
        XdpConfig,
        IfAddrs,
        DialStart,
        BackendDial,
        Failover,
        DialEvent
    );
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::collections::HashSet;

    use super::{
        AF_INET, AF_INET6, FlowKey, PROTO_TCP, PROTO_UDP, SNAT_PORT_ATTEMPTS, VIP_FILTER_BITS,
        VipFilter, VipKey, flow_hash, ip_from_bytes, ip_to_bytes, snat_port,
    };

    /// Every attempt stays in the range, including the full range and a
    /// range of one port, and the attempts of one flow are distinct ports.
    #[test]
    fn snat_ports_stay_in_range() {
        for (min, max) in [
            (61000, 65535),
            (1, 65535),
            (0, 65535),
            (5000, 5000),
            (7, 9),
            (1000, 1126),
            (1000, 1127),
        ] {
            for hash in [0, 1, u64::MAX, 0xdead_beef_0000_ffff, 1 << 40] {
                let ports: [u16; SNAT_PORT_ATTEMPTS as usize] =
                    core::array::from_fn(|attempt| snat_port(hash, attempt as u32, min, max));
                assert!(ports.iter().all(|p| (min..=max).contains(p)), "{ports:?}");
                let span = usize::from(max - min) + 1;
                let distinct = ports
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| !ports[..*i].contains(p))
                    .count();
                assert_eq!(distinct, span.min(ports.len()), "{ports:?}");
            }
        }
    }

    /// The SNAT port attempts of flows with random hashes fill a range of
    /// 59,976 ports to 60 % with at most a flow or two running out:
    /// consecutive attempts (linear probing, the earlier rule) let taken
    /// ports cluster and fail far more often under the same load.
    #[test]
    fn snat_port_attempts_do_not_cluster() {
        let (min, max) = (1024u16, 60999u16);
        let span = usize::from(max - min) + 1;
        let fill = |port_of: &dyn Fn(u64, u32) -> u16| {
            let mut taken = std::vec![false; span];
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut failed = 0;
            for _ in 0..span * 6 / 10 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let free = (0..SNAT_PORT_ATTEMPTS)
                    .map(|attempt| usize::from(port_of(state, attempt) - min))
                    .find(|&i| !taken[i]);
                match free {
                    Some(i) => taken[i] = true,
                    None => failed += 1,
                }
            }
            failed
        };
        let quadratic = fill(&|hash, attempt| snat_port(hash, attempt, min, max));
        let linear =
            fill(&|hash, attempt| min + (((hash >> 16) + u64::from(attempt)) % span as u64) as u16);
        assert!(
            quadratic <= 2 && linear >= 20 * quadratic.max(1),
            "failed new flows: quadratic {quadratic}, linear {linear}"
        );
    }

    /// Consecutive client ports (what a busy client produces) spread evenly
    /// over a prime-sized table.
    /// A key's bit is set once inserted; the bits of many VIPs (one
    /// address, every port of a range; many addresses, one port) spread
    /// over the filter, so non-VIP traffic rarely needs a lookup.
    #[test]
    fn vip_filter_holds_inserted_keys_and_spreads_them() {
        let key = |ip: IpAddr, port: u16| {
            let (addr, family) = ip_to_bytes(ip);
            VipKey {
                addr,
                port,
                proto: PROTO_TCP,
                family,
            }
        };
        let mut filter = VipFilter::default();
        let vip = key(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)), 443);
        assert!(!filter.may_contain(&vip));
        filter.insert(&vip);
        assert!(filter.may_contain(&vip));
        let udp = VipKey {
            proto: PROTO_UDP,
            ..vip
        };
        assert_ne!(
            VipFilter::bit(&vip),
            VipFilter::bit(&udp),
            "protocol counts"
        );
        let ports: HashSet<u32> = (30000..32000)
            .map(|port| VipFilter::bit(&key(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)), port)))
            .collect();
        let hosts: HashSet<u32> = (0..2000u32)
            .map(|i| VipFilter::bit(&key(IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i)), 80)))
            .collect();
        let v6: HashSet<u32> = (0..2000u16)
            .map(|i| {
                VipFilter::bit(&key(
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)),
                    80,
                ))
            })
            .collect();
        // 2000 keys in 32768 bits: about 60 collide by chance.
        for (what, bits) in [("ports", ports), ("hosts", hosts), ("v6 hosts", v6)] {
            assert!(
                bits.len() > 1850,
                "{what}: only {} distinct bits",
                bits.len()
            );
            assert!(bits.iter().all(|bit| *bit < VIP_FILTER_BITS));
        }
    }

    #[test]
    fn flow_hash_spreads_client_ports() {
        const TABLE: u64 = 251;
        let mut buckets = [0u32; TABLE as usize];
        let mut key = FlowKey {
            src: ip_to_bytes(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))).0,
            dst: ip_to_bytes(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))).0,
            dst_port: 80,
            proto: PROTO_TCP,
            family: AF_INET,
            ..FlowKey::default()
        };
        for port in 32768..(32768 + 251 * 100) {
            key.src_port = port;
            buckets[(flow_hash(&key) % TABLE) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*min > 50 && *max < 150, "uneven: {min}..{max}");
    }

    #[test]
    fn address_round_trip() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let (bytes, family) = ip_to_bytes(v4);
        assert_eq!(family, AF_INET);
        assert_eq!(bytes[..4], [10, 0, 0, 1]);
        assert_eq!(bytes[4..], [0; 12]);
        assert_eq!(ip_from_bytes(bytes, family), v4);
        let v6 = IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap());
        let (bytes, family) = ip_to_bytes(v6);
        assert_eq!(family, AF_INET6);
        assert_eq!(ip_from_bytes(bytes, family), v6);
    }
}
