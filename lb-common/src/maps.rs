//! The map table: every map of the kernel programs declared once, with its
//! name, kind, key and value size, capacity and flags.
//!
//! Everything else follows this table. `lb-ebpf` declares each `#[btf_map]`
//! static with the capacity and flags of its entry and asserts at compile
//! time that the static's kind, key and value sizes match it;
//! `lb-userspace` checks pinned maps against it before reusing them, and a
//! privileged test loads the built object and checks that it holds exactly
//! these maps with exactly these shapes.
//!
//! Invariants (asserted below at compile time): [`MAPS`] holds each map
//! once; names are the [`crate::map_names`] constants and fit a kernel
//! object name (at most 15 bytes); array keys are `u32` indexes; no size or
//! capacity is 0 (a ring buffer has no key or value).

use crate::{
    Backend, BackendConns, BackendDial, BackendStats, DialStart, Failover, FlowKey, FlowValue,
    IfAddrs, MAX_BACKENDS, MAX_DIALS, MAX_FLOWS, MAX_INTERFACES, MAX_MAGLEV_SLOTS, MAX_REV_NAT,
    MAX_SERVICES, MAX_TRACKED_CONNS, MaglevKey, RevNatKey, RevNatValue, Service, ServiceStats,
    VIP_FILTER_WORDS, VipKey, XdpConfig, dial::DIAL_EVENTS_BYTES, flow_stat, map_names,
    xdp_counter,
};

/// The kernel's `BPF_F_NO_PREALLOC` map flag: a hash map takes memory only
/// for the entries it holds.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// The kind of a map (the kernel's `bpf_map_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    Hash,
    /// `BPF_MAP_TYPE_LRU_HASH`: a hash map that evicts the least recently
    /// used entry when it is full.
    LruHash,
    /// `BPF_MAP_TYPE_ARRAY`, indexed by `u32`.
    Array,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`, indexed by `u32`, one value per CPU.
    PerCpuArray,
    /// `BPF_MAP_TYPE_RINGBUF`: records from the kernel to userspace; no
    /// key or value, `max_entries` is its size in bytes.
    RingBuf,
}

impl MapKind {
    /// Whether the map is an array (keys are `u32` indexes).
    pub const fn is_array(self) -> bool {
        matches!(self, Self::Array | Self::PerCpuArray)
    }

    /// Whether the map is a ring buffer (no key, no value).
    pub const fn is_ring(self) -> bool {
        matches!(self, Self::RingBuf)
    }

    /// Equality usable in constant expressions.
    pub const fn same(self, other: Self) -> bool {
        self as u8 == other as u8
    }
}

/// The shape of one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// The map's name: its BTF name in the object and its pin file name.
    pub name: &'static str,
    /// The map's kind.
    pub kind: MapKind,
    /// Key size in bytes (the size of the key type; 4 for arrays).
    pub key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// Map flags (`BPF_F_*`), e.g. [`BPF_F_NO_PREALLOC`].
    pub flags: u32,
}

impl MapSpec {
    /// The shape of a map from key type `K` to value type `V`.
    pub const fn of<K, V>(name: &'static str, kind: MapKind, max_entries: u32, flags: u32) -> Self {
        Self {
            name,
            kind,
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            max_entries,
            flags,
        }
    }

    /// [`Self::max_entries`] as the kernel-side map types take it.
    pub const fn capacity(&self) -> usize {
        self.max_entries as usize
    }

    /// [`Self::flags`] as the kernel-side map types take them.
    pub const fn flag_bits(&self) -> usize {
        self.flags as usize
    }
}

/// [`VipKey`] → [`Service`]: each VIP and its service.
pub const SERVICES: MapSpec =
    MapSpec::of::<VipKey, Service>(map_names::SERVICES, MapKind::Hash, MAX_SERVICES, 0);

/// Backend id → [`Backend`].
pub const BACKENDS: MapSpec =
    MapSpec::of::<u32, Backend>(map_names::BACKENDS, MapKind::Array, MAX_BACKENDS, 0);

/// Backend id → per-CPU [`BackendStats`].
pub const BACKEND_STATS: MapSpec = MapSpec::of::<u32, BackendStats>(
    map_names::BACKEND_STATS,
    MapKind::PerCpuArray,
    MAX_BACKENDS,
    0,
);

/// Service id → per-CPU [`ServiceStats`].
pub const SERVICE_STATS: MapSpec = MapSpec::of::<u32, ServiceStats>(
    map_names::SERVICE_STATS,
    MapKind::PerCpuArray,
    MAX_SERVICES,
    0,
);

/// [`RevNatKey`] → [`RevNatValue`]: the VIP each socket asked for.
pub const REV_NAT: MapSpec =
    MapSpec::of::<RevNatKey, RevNatValue>(map_names::REV_NAT, MapKind::LruHash, MAX_REV_NAT, 0);

/// [`MaglevKey`] → backend id: the Maglev tables of `spread` services. Not
/// preallocated: it takes memory only for the slots of the tables that exist.
pub const MAGLEV: MapSpec = MapSpec::of::<MaglevKey, u32>(
    map_names::MAGLEV,
    MapKind::Hash,
    MAX_MAGLEV_SLOTS,
    BPF_F_NO_PREALLOC,
);

/// [`FlowKey`] → [`FlowValue`]: XDP's connection table.
pub const FLOWS: MapSpec =
    MapSpec::of::<FlowKey, FlowValue>(map_names::FLOWS, MapKind::LruHash, MAX_FLOWS, 0);

/// Index 0 → [`XdpConfig`] (one entry).
pub const XDP_CONFIG: MapSpec =
    MapSpec::of::<u32, XdpConfig>(map_names::XDP_CONFIG, MapKind::Array, 1, 0);

/// Interface index → [`IfAddrs`].
pub const IF_ADDRS: MapSpec =
    MapSpec::of::<u32, IfAddrs>(map_names::IF_ADDRS, MapKind::Hash, MAX_INTERFACES, 0);

/// [`xdp_counter`] index → per-CPU packet count.
pub const XDP_STATS: MapSpec = MapSpec::of::<u32, u64>(
    map_names::XDP_STATS,
    MapKind::PerCpuArray,
    xdp_counter::COUNT,
    0,
);

/// Socket cookie → [`DialStart`]: redirected TCP connects not answered yet.
pub const DIALS: MapSpec =
    MapSpec::of::<u64, DialStart>(map_names::DIALS, MapKind::LruHash, MAX_DIALS, 0);

/// Backend id → [`BackendDial`]: suspect marks and outstanding SYNs.
pub const BACKEND_DIAL: MapSpec =
    MapSpec::of::<u32, BackendDial>(map_names::BACKEND_DIAL, MapKind::Array, MAX_BACKENDS, 0);

/// Service id → [`Failover`]: the candidates past a suspect backend.
pub const FAILOVER: MapSpec =
    MapSpec::of::<u32, Failover>(map_names::FAILOVER, MapKind::Array, MAX_SERVICES, 0);

/// The ring buffer of [`crate::DialEvent`]s (no key or value; its size in bytes).
pub const DIAL_EVENTS: MapSpec = MapSpec {
    name: map_names::DIAL_EVENTS,
    kind: MapKind::RingBuf,
    key_size: 0,
    value_size: 0,
    max_entries: DIAL_EVENTS_BYTES,
    flags: 0,
};

/// Socket cookie → backend id: the established TCP connections
/// `backend_conns` counts (a plain hash: an evicted entry would never be
/// subtracted).
pub const CONNS: MapSpec =
    MapSpec::of::<u64, u32>(map_names::CONNS, MapKind::Hash, MAX_TRACKED_CONNS, 0);

/// Backend id → [`BackendConns`] (one value for all CPUs: the kernel adds
/// and subtracts atomically).
pub const BACKEND_CONNS: MapSpec =
    MapSpec::of::<u32, BackendConns>(map_names::BACKEND_CONNS, MapKind::Array, MAX_BACKENDS, 0);

/// Index 0 → the [`crate::kernel_log`] level (one entry; 0, off, until the
/// controller writes it).
pub const KERNEL_LOG: MapSpec =
    MapSpec::of::<u32, u32>(map_names::KERNEL_LOG, MapKind::Array, 1, 0);

/// [`FLOW_SCRATCH_NEW`]/[`FLOW_SCRATCH_REPLY`] → a per-CPU [`FlowValue`]:
/// where the forwarders build a new flow's two entries (the BPF stack has
/// no room for them). Never read by userspace.
pub const FLOW_SCRATCH: MapSpec =
    MapSpec::of::<u32, FlowValue>(map_names::FLOW_SCRATCH, MapKind::PerCpuArray, 2, 0);

/// Index of the new forward entry in `flow_scratch`.
pub const FLOW_SCRATCH_NEW: u32 = 0;
/// Index of the new reply entry in `flow_scratch`.
pub const FLOW_SCRATCH_REPLY: u32 = 1;

/// Word index → 64 bits of the [`VipFilter`]: the remote VIPs' bits, so
/// the forwarder skips the `services` lookup for every other packet.
pub const VIP_FILTER: MapSpec =
    MapSpec::of::<u32, u64>(map_names::VIP_FILTER, MapKind::Array, VIP_FILTER_WORDS, 0);

/// [`flow_stat`] index → per-CPU count of `flows` entries created and
/// removed (the LRU's evictions are what the counts do not explain).
pub const FLOW_STATS: MapSpec = MapSpec::of::<u32, u64>(
    map_names::FLOW_STATS,
    MapKind::PerCpuArray,
    flow_stat::COUNT,
    0,
);

/// Every map, in the order the README documents them.
pub const MAPS: [MapSpec; 20] = [
    SERVICES,
    BACKENDS,
    BACKEND_STATS,
    SERVICE_STATS,
    REV_NAT,
    MAGLEV,
    FLOWS,
    XDP_CONFIG,
    IF_ADDRS,
    XDP_STATS,
    DIALS,
    BACKEND_DIAL,
    FAILOVER,
    DIAL_EVENTS,
    CONNS,
    BACKEND_CONNS,
    KERNEL_LOG,
    FLOW_SCRATCH,
    VIP_FILTER,
    FLOW_STATS,
];

/// The index in [`MAPS`] of the map named `name`.
pub const fn index_of(name: &str) -> Option<usize> {
    let mut i = 0;
    while i < MAPS.len() {
        if same_name(MAPS[i].name, name) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Byte-wise string equality usable in constant expressions.
const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = {
    let mut i = 0;
    while i < MAPS.len() {
        let spec = &MAPS[i];
        assert!(
            !spec.name.is_empty() && spec.name.len() <= 15,
            "a map name must fit a kernel object name (1 to 15 bytes)"
        );
        assert!(
            spec.max_entries > 0
                && (spec.kind.is_ring() || (spec.key_size > 0 && spec.value_size > 0)),
            "a map needs a key, a value (but a ring buffer) and a capacity"
        );
        assert!(
            !spec.kind.is_array() || spec.key_size == size_of::<u32>() as u32,
            "array keys are u32 indexes"
        );
        assert!(
            matches!(index_of(spec.name), Some(first) if first == i),
            "two maps have the same name"
        );
        i += 1;
    }
};
