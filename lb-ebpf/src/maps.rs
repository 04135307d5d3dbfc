//! Every map of the kernel programs. Userspace pins them under the bpffs
//! directory by these names (see `lb_common::map_names`).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    Backend, BackendStats, FlowKey, FlowValue, IfAddrs, MAX_BACKENDS, MAX_FLOWS, MAX_INTERFACES,
    MAX_MAGLEV_SLOTS, MAX_REV_NAT, MAX_SERVICES, MaglevKey, RevNatKey, RevNatValue, Service,
    ServiceStats, VipKey, XdpConfig, xdp_counter,
};

/// `BPF_F_NO_PREALLOC`: the `maglev` map takes memory only for the slots of
/// the tables that exist.
const NO_PREALLOC: usize = 1;

/// VIP (address, port, protocol) → service and its selected backend.
#[btf_map(name = "services")]
pub(crate) static SERVICES: HashMap<VipKey, Service, { MAX_SERVICES as usize }> = HashMap::new();

/// Backend id → backend address.
#[btf_map(name = "backends")]
pub(crate) static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// Backend id → per-CPU counters.
#[btf_map(name = "backend_stats")]
pub(crate) static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> =
    PerCpuArray::new();

/// Service id → per-CPU counters.
#[btf_map(name = "service_stats")]
pub(crate) static SERVICE_STATS: PerCpuArray<ServiceStats, { MAX_SERVICES as usize }> =
    PerCpuArray::new();

/// (socket cookie, backend address) → the VIP the application asked for.
#[btf_map(name = "rev_nat")]
pub(crate) static REV_NAT: LruHashMap<RevNatKey, RevNatValue, { MAX_REV_NAT as usize }> =
    LruHashMap::new();

/// (service id, slot) → backend id: the Maglev tables of `spread` services.
#[btf_map(name = "maglev")]
pub(crate) static MAGLEV: HashMap<MaglevKey, u32, { MAX_MAGLEV_SLOTS as usize }, NO_PREALLOC> =
    HashMap::new();

/// XDP's connection table: each forwarded flow has a client→VIP entry and a
/// backend→SNAT-address entry, each holding the rewrite for its direction.
#[btf_map(name = "flows")]
pub(crate) static FLOWS: LruHashMap<FlowKey, FlowValue, { MAX_FLOWS as usize }> = LruHashMap::new();

/// Index 0: SNAT addresses and port range (all zero until the controller
/// configures XDP; the program then passes everything).
#[btf_map(name = "xdp_config")]
pub(crate) static XDP_CONFIG: Array<XdpConfig, 1> = Array::new();

/// Interface index → its primary addresses (SNAT source when none is configured).
#[btf_map(name = "if_addrs")]
pub(crate) static IF_ADDRS: HashMap<u32, IfAddrs, { MAX_INTERFACES as usize }> = HashMap::new();

/// [`lb_common::xdp_counter`] index → per-CPU packet count.
#[btf_map(name = "xdp_stats")]
pub(crate) static XDP_STATS: PerCpuArray<u64, { xdp_counter::COUNT as usize }> = PerCpuArray::new();
