//! One typed wrapper per BPF map the controller reads or writes. Each
//! wrapper owns its aya map handle, speaks the map's key and value types
//! from `lb_common`, names the map (and the key) in every error, and keeps
//! the map's own rules in one place: a missing key on removal is not an
//! error, per-CPU counters are summed, a slot is "unused" when its family
//! is 0. The maps' shapes are declared once in `lb_common::maps::MAPS` and
//! checked against the pins before loading ([`super::dataplane`]).

mod backends;
mod dial;
mod flow_stats;
mod flows;
mod kernel_log;
mod maglev;
mod rev_nat;
mod services;
mod stats;
mod xdp;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Map, MapError},
};
use lb_common::map_names;

pub use self::{
    backends::Backends,
    dial::{BackendConnsMap, BackendDialMap, DialEvents, DialsMap, FailoverMap},
    flow_stats::FlowStatsMap,
    flows::{Flows, WalkMode},
    kernel_log::KernelLogMap,
    maglev::Maglev,
    rev_nat::RevNat,
    services::Services,
    stats::{BackendStatsMap, ServiceStatsMap, sum_backend_stats, sum_service_stats},
    xdp::{IfAddrsMap, XdpConfigMap, XdpStats},
};

/// Every map of the loaded object, typed.
pub struct Maps {
    /// `services`: VIP → service entry (id, selected backend, flags), with
    /// `vip_filter`, the Bloom filter over its remote VIPs.
    pub services: Services,
    /// `backends`: backend id → address, service and flags.
    pub backends: Backends,
    /// `backend_stats`: per-CPU counters per backend id.
    pub backend_stats: BackendStatsMap,
    /// `service_stats`: per-CPU counters per service id.
    pub service_stats: ServiceStatsMap,
    /// `rev_nat`: (socket cookie, backend) → the VIP it was connected through.
    pub rev_nat: RevNat,
    /// `maglev`: (service id, slot) → backend id.
    pub maglev: Maglev,
    /// `xdp_config`: the XDP program's settings (one entry).
    pub xdp_config: XdpConfigMap,
    /// `if_addrs`: interface index → its primary addresses (SNAT sources).
    pub if_addrs: IfAddrsMap,
    /// `xdp_stats`: per-CPU verdict counters.
    pub xdp_stats: XdpStats,
    /// `flows`: XDP's connection table, with `flow_stats`, the counts of
    /// its entries created and removed.
    pub flows: Flows,
    /// `dials`: TCP connects through a VIP awaiting their outcome.
    pub dials: DialsMap,
    /// `backend_dial`: the kernel's suspect marks per backend.
    pub backend_dial: BackendDialMap,
    /// `failover`: each TCP service's candidates past a suspect backend.
    pub failover: FailoverMap,
    /// `dial_events`: dial outcomes from the kernel.
    pub dial_events: DialEvents,
    /// `backend_conns`: established connections per backend (tracked
    /// services).
    pub backend_conns: BackendConnsMap,
    /// `kernel_log`: the level of the kernel programs' logging.
    pub kernel_log: KernelLogMap,
}

impl Maps {
    /// Takes every map out of the loaded object.
    pub(super) fn take(ebpf: &mut Ebpf, nr_cpus: usize) -> anyhow::Result<Self> {
        Ok(Self {
            services: Services::new(
                take(ebpf, map_names::SERVICES)?,
                take(ebpf, map_names::VIP_FILTER)?,
            )?,
            backends: Backends(take(ebpf, map_names::BACKENDS)?),
            backend_stats: BackendStatsMap::new(take(ebpf, map_names::BACKEND_STATS)?, nr_cpus),
            service_stats: ServiceStatsMap::new(take(ebpf, map_names::SERVICE_STATS)?, nr_cpus),
            rev_nat: RevNat(take(ebpf, map_names::REV_NAT)?),
            maglev: Maglev(take(ebpf, map_names::MAGLEV)?),
            xdp_config: XdpConfigMap::new(take(ebpf, map_names::XDP_CONFIG)?),
            if_addrs: IfAddrsMap(take(ebpf, map_names::IF_ADDRS)?),
            xdp_stats: XdpStats(take(ebpf, map_names::XDP_STATS)?),
            flows: Flows::from_map(
                ebpf.take_map(map_names::FLOWS)
                    .context("the flows map is missing from the eBPF object")?,
                FlowStatsMap::new(take(ebpf, map_names::FLOW_STATS)?, nr_cpus),
            )?,
            dials: DialsMap(take(ebpf, map_names::DIALS)?),
            backend_dial: BackendDialMap(take(ebpf, map_names::BACKEND_DIAL)?),
            failover: FailoverMap(take(ebpf, map_names::FAILOVER)?),
            dial_events: DialEvents(Some(take(ebpf, map_names::DIAL_EVENTS)?)),
            backend_conns: BackendConnsMap(take(ebpf, map_names::BACKEND_CONNS)?),
            kernel_log: KernelLogMap(take(ebpf, map_names::KERNEL_LOG)?),
        })
    }
}

/// The map `name` of `ebpf` as aya's typed map `T`.
fn take<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("the {name} map is missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("the {name} map has an unexpected type"))
}

/// A removal's result with "the key was not there" counted as done (aya
/// reports it for a hash map's delete as the syscall's `ENOENT`).
fn removed(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}
