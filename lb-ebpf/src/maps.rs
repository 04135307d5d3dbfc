//! Every map of the kernel programs, as the `#[btf_map]` statics the
//! programs use. Their shapes are declared once, in [`lb_common::maps`]:
//! each static takes its capacity and flags from its entry there, and the
//! assertions at the end of this file stop the build when a static's kind,
//! key size or value size differs from its entry. The names given to
//! `#[btf_map]` are the `lb_common::map_names` constants (the attribute
//! takes only a literal); userspace pins the maps under the bpffs directory
//! by these names, and a privileged test in `lb-userspace` checks the built
//! object's maps, names included, against the table.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, MapDef, PerCpuArray, RingBuf},
    macros::btf_map,
};
use lb_common::{
    Backend, BackendConns, BackendDial, BackendStats, DialEvent, DialStart, Failover, FlowKey,
    FlowValue, IfAddrs, MaglevKey, RevNatKey, RevNatValue, Service, ServiceStats, VipKey,
    XdpConfig,
    maps::{self as spec, MapKind, MapSpec},
};

/// VIP (address, port, protocol) → service and its selected backend.
#[btf_map(name = "services")]
pub(crate) static SERVICES: HashMap<
    VipKey,
    Service,
    { spec::SERVICES.capacity() },
    { spec::SERVICES.flag_bits() },
> = HashMap::new();

/// Backend id → backend address.
#[btf_map(name = "backends")]
pub(crate) static BACKENDS: Array<
    Backend,
    { spec::BACKENDS.capacity() },
    { spec::BACKENDS.flag_bits() },
> = Array::new();

/// Backend id → per-CPU counters.
#[btf_map(name = "backend_stats")]
pub(crate) static BACKEND_STATS: PerCpuArray<
    BackendStats,
    { spec::BACKEND_STATS.capacity() },
    { spec::BACKEND_STATS.flag_bits() },
> = PerCpuArray::new();

/// Service id → per-CPU counters.
#[btf_map(name = "service_stats")]
pub(crate) static SERVICE_STATS: PerCpuArray<
    ServiceStats,
    { spec::SERVICE_STATS.capacity() },
    { spec::SERVICE_STATS.flag_bits() },
> = PerCpuArray::new();

/// (socket cookie, backend address) → the VIP the application asked for.
#[btf_map(name = "rev_nat")]
pub(crate) static REV_NAT: LruHashMap<
    RevNatKey,
    RevNatValue,
    { spec::REV_NAT.capacity() },
    { spec::REV_NAT.flag_bits() },
> = LruHashMap::new();

/// (service id, slot) → backend id: the Maglev tables of `spread` services
/// (not preallocated: memory only for the slots of the tables that exist).
#[btf_map(name = "maglev")]
pub(crate) static MAGLEV: HashMap<
    MaglevKey,
    u32,
    { spec::MAGLEV.capacity() },
    { spec::MAGLEV.flag_bits() },
> = HashMap::new();

/// XDP's connection table: each forwarded flow has a client→VIP entry and a
/// backend→SNAT-address entry, each holding the rewrite for its direction.
#[btf_map(name = "flows")]
pub(crate) static FLOWS: LruHashMap<
    FlowKey,
    FlowValue,
    { spec::FLOWS.capacity() },
    { spec::FLOWS.flag_bits() },
> = LruHashMap::new();

/// Index 0: SNAT addresses and port range (all zero until the controller
/// configures XDP; the program then passes everything).
#[btf_map(name = "xdp_config")]
pub(crate) static XDP_CONFIG: Array<
    XdpConfig,
    { spec::XDP_CONFIG.capacity() },
    { spec::XDP_CONFIG.flag_bits() },
> = Array::new();

/// Interface index → its primary addresses (SNAT source when none is configured).
#[btf_map(name = "if_addrs")]
pub(crate) static IF_ADDRS: HashMap<
    u32,
    IfAddrs,
    { spec::IF_ADDRS.capacity() },
    { spec::IF_ADDRS.flag_bits() },
> = HashMap::new();

/// [`lb_common::xdp_counter`] index → per-CPU packet count.
#[btf_map(name = "xdp_stats")]
pub(crate) static XDP_STATS: PerCpuArray<
    u64,
    { spec::XDP_STATS.capacity() },
    { spec::XDP_STATS.flag_bits() },
> = PerCpuArray::new();

/// Socket cookie → the TCP connect the socket hooks redirected, until
/// `sock_ops` sees its outcome.
#[btf_map(name = "dials")]
pub(crate) static DIALS: LruHashMap<
    u64,
    DialStart,
    { spec::DIALS.capacity() },
    { spec::DIALS.flag_bits() },
> = LruHashMap::new();

/// Backend id → its suspect mark and oldest outstanding SYN.
#[btf_map(name = "backend_dial")]
pub(crate) static BACKEND_DIAL: Array<
    BackendDial,
    { spec::BACKEND_DIAL.capacity() },
    { spec::BACKEND_DIAL.flag_bits() },
> = Array::new();

/// Service id → the backends a connect may take past a suspect one.
#[btf_map(name = "failover")]
pub(crate) static FAILOVER: Array<
    Failover,
    { spec::FAILOVER.capacity() },
    { spec::FAILOVER.flag_bits() },
> = Array::new();

/// Socket cookie → backend id: established connections `backend_conns`
/// counts, until they leave `ESTABLISHED`.
#[btf_map(name = "conns")]
pub(crate) static CONNS: HashMap<
    u64,
    u32,
    { spec::CONNS.capacity() },
    { spec::CONNS.flag_bits() },
> = HashMap::new();

/// Backend id → its established connections (atomic adds).
#[btf_map(name = "backend_conns")]
pub(crate) static BACKEND_CONNS: Array<
    BackendConns,
    { spec::BACKEND_CONNS.capacity() },
    { spec::BACKEND_CONNS.flag_bits() },
> = Array::new();

/// Dial outcomes for the controller.
#[btf_map(name = "dial_events")]
pub(crate) static DIAL_EVENTS: RingBuf<
    DialEvent,
    { spec::DIAL_EVENTS.capacity() },
    { spec::DIAL_EVENTS.flag_bits() },
> = RingBuf::new();

/// Index 0: the [`lb_common::kernel_log`] level, read only where a rare
/// event happened (see `klog`).
#[btf_map(name = "kernel_log")]
pub(crate) static KERNEL_LOG: Array<
    u32,
    { spec::KERNEL_LOG.capacity() },
    { spec::KERNEL_LOG.flag_bits() },
> = Array::new();

/// Per-CPU room for a new flow's two entries while they are built.
#[btf_map(name = "flow_scratch")]
pub(crate) static FLOW_SCRATCH: PerCpuArray<
    FlowValue,
    { spec::FLOW_SCRATCH.capacity() },
    { spec::FLOW_SCRATCH.flag_bits() },
> = PerCpuArray::new();

/// The remote VIPs' Bloom filter, 64 bits per entry, read by the forwarder
/// before every `services` lookup.
#[btf_map(name = "vip_filter")]
pub(crate) static VIP_FILTER: Array<
    u64,
    { spec::VIP_FILTER.capacity() },
    { spec::VIP_FILTER.flag_bits() },
> = Array::new();

/// Per-CPU counts of `flows` entries the forwarders created and removed
/// (`lb_common::flow_stat`).
#[btf_map(name = "flow_stats")]
pub(crate) static FLOW_STATS: PerCpuArray<
    u64,
    { spec::FLOW_STATS.capacity() },
    { spec::FLOW_STATS.flag_bits() },
> = PerCpuArray::new();

/// What the type of a `#[btf_map]` static says about its map (key and value
/// types come from aya's [`MapDef`]).
trait Declared: MapDef {
    const KIND: MapKind;
    const MAX_ENTRIES: usize;
    const FLAGS: usize;
}

impl<K, V, const M: usize, const F: usize> Declared for HashMap<K, V, M, F> {
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: usize = M;
    const FLAGS: usize = F;
}

impl<K, V, const M: usize, const F: usize> Declared for LruHashMap<K, V, M, F> {
    const KIND: MapKind = MapKind::LruHash;
    const MAX_ENTRIES: usize = M;
    const FLAGS: usize = F;
}

impl<T, const M: usize, const F: usize> Declared for Array<T, M, F> {
    const KIND: MapKind = MapKind::Array;
    const MAX_ENTRIES: usize = M;
    const FLAGS: usize = F;
}

impl<T, const M: usize, const F: usize> Declared for RingBuf<T, M, F> {
    const KIND: MapKind = MapKind::RingBuf;
    const MAX_ENTRIES: usize = M;
    const FLAGS: usize = F;
}

impl<T, const M: usize, const F: usize> Declared for PerCpuArray<T, M, F> {
    const KIND: MapKind = MapKind::PerCpuArray;
    const MAX_ENTRIES: usize = M;
    const FLAGS: usize = F;
}

/// Stops the build unless `map` (a static, only its type is used) has the
/// shape `spec` declares; returns `spec`.
const fn declared_as<'a, M: Declared>(_map: &M, spec: &'a MapSpec) -> &'a MapSpec {
    assert!(
        M::KIND.same(spec.kind),
        "map kind differs from lb_common::maps"
    );
    assert!(
        size_of::<M::Key>() == spec.key_size as usize,
        "key size differs from lb_common::maps"
    );
    // A ring buffer's BTF value type is its record type; the map itself
    // has no value size.
    assert!(
        spec.kind.is_ring() || size_of::<M::Value>() == spec.value_size as usize,
        "value size differs from lb_common::maps"
    );
    assert!(
        M::MAX_ENTRIES == spec.capacity(),
        "max_entries differs from lb_common::maps"
    );
    assert!(
        M::FLAGS == spec.flag_bits(),
        "flags differ from lb_common::maps"
    );
    spec
}

/// Every static above with its table entry. The array's length is the
/// table's, so a map in the table without a static here (or one too many)
/// stops the build, as does a static checked against the wrong entry twice.
const DECLARED: [&MapSpec; spec::MAPS.len()] = [
    declared_as(&SERVICES, &spec::SERVICES),
    declared_as(&BACKENDS, &spec::BACKENDS),
    declared_as(&BACKEND_STATS, &spec::BACKEND_STATS),
    declared_as(&SERVICE_STATS, &spec::SERVICE_STATS),
    declared_as(&REV_NAT, &spec::REV_NAT),
    declared_as(&MAGLEV, &spec::MAGLEV),
    declared_as(&FLOWS, &spec::FLOWS),
    declared_as(&XDP_CONFIG, &spec::XDP_CONFIG),
    declared_as(&IF_ADDRS, &spec::IF_ADDRS),
    declared_as(&XDP_STATS, &spec::XDP_STATS),
    declared_as(&DIALS, &spec::DIALS),
    declared_as(&BACKEND_DIAL, &spec::BACKEND_DIAL),
    declared_as(&FAILOVER, &spec::FAILOVER),
    declared_as(&DIAL_EVENTS, &spec::DIAL_EVENTS),
    declared_as(&CONNS, &spec::CONNS),
    declared_as(&BACKEND_CONNS, &spec::BACKEND_CONNS),
    declared_as(&KERNEL_LOG, &spec::KERNEL_LOG),
    declared_as(&FLOW_SCRATCH, &spec::FLOW_SCRATCH),
    declared_as(&VIP_FILTER, &spec::VIP_FILTER),
    declared_as(&FLOW_STATS, &spec::FLOW_STATS),
];

const _: () = {
    let mut i = 0;
    while i < DECLARED.len() {
        let Some(index) = spec::index_of(DECLARED[i].name) else {
            panic!("a static is checked against a map that is not in lb_common::maps::MAPS");
        };
        let mut j = 0;
        while j < i {
            assert!(
                !matches!(spec::index_of(DECLARED[j].name), Some(other) if other == index),
                "two statics are checked against the same lb_common::maps entry"
            );
            j += 1;
        }
        i += 1;
    }
};
