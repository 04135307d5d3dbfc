//! Every map of the kernel programs. Userspace pins them under the bpffs
//! directory by these names (see `lb_common::map_names`).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    Backend, BackendStats, MAX_BACKENDS, MAX_MAGLEV_SLOTS, MAX_REV_NAT, MAX_SERVICES, MaglevKey,
    RevNatKey, RevNatValue, Service, ServiceStats, VipKey,
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
