//! The per-CPU counter arrays the socket hooks and XDP add to:
//! `backend_stats` (per backend id) and `service_stats` (per service id).
//! Reads are summed over CPUs; a slot's counters are reset before the slot
//! is given to another backend or service.

use anyhow::Context as _;
use aya::{
    Pod,
    maps::{MapData, PerCpuArray, PerCpuValues},
};
use lb_common::{BackendStats, ServiceStats};

/// Zeroes slot `id` of `map` (named `name` in errors) on every CPU.
fn reset<T: Pod + Default>(
    map: &mut PerCpuArray<MapData, T>,
    nr_cpus: usize,
    name: &str,
    id: u32,
) -> anyhow::Result<()> {
    let zero = PerCpuValues::try_from(vec![T::default(); nr_cpus]).context("per-CPU values")?;
    map.set(id, zero, 0)
        .with_context(|| format!("resetting {name}[{id}]"))
}

/// The `backend_stats` map.
pub struct BackendStatsMap {
    map: PerCpuArray<MapData, BackendStats>,
    nr_cpus: usize,
}

impl BackendStatsMap {
    pub(super) const fn new(map: PerCpuArray<MapData, BackendStats>, nr_cpus: usize) -> Self {
        Self { map, nr_cpus }
    }

    /// A backend's counters, summed over CPUs.
    pub fn get(&self, id: u32) -> anyhow::Result<BackendStats> {
        let per_cpu = self
            .map
            .get(&id, 0)
            .with_context(|| format!("reading backend_stats[{id}]"))?;
        Ok(sum_backend_stats(&per_cpu))
    }

    /// Resets a backend slot's counters (before the slot is reused).
    pub fn reset(&mut self, id: u32) -> anyhow::Result<()> {
        reset(&mut self.map, self.nr_cpus, "backend_stats", id)
    }
}

/// The `service_stats` map.
pub struct ServiceStatsMap {
    map: PerCpuArray<MapData, ServiceStats>,
    nr_cpus: usize,
}

impl ServiceStatsMap {
    pub(super) const fn new(map: PerCpuArray<MapData, ServiceStats>, nr_cpus: usize) -> Self {
        Self { map, nr_cpus }
    }

    /// A service's counters, summed over CPUs.
    pub fn get(&self, id: u32) -> anyhow::Result<ServiceStats> {
        let per_cpu = self
            .map
            .get(&id, 0)
            .with_context(|| format!("reading service_stats[{id}]"))?;
        Ok(sum_service_stats(&per_cpu))
    }

    /// Resets a service slot's counters.
    pub fn reset(&mut self, id: u32) -> anyhow::Result<()> {
        reset(&mut self.map, self.nr_cpus, "service_stats", id)
    }
}

/// The sum of a backend's per-CPU `backend_stats` values.
pub fn sum_backend_stats(per_cpu: &[BackendStats]) -> BackendStats {
    per_cpu
        .iter()
        .fold(BackendStats::default(), |sum, s| BackendStats {
            connects: sum.connects + s.connects,
            sendmsgs: sum.sendmsgs + s.sendmsgs,
            xdp_packets: sum.xdp_packets + s.xdp_packets,
            xdp_bytes: sum.xdp_bytes + s.xdp_bytes,
            xdp_flows: sum.xdp_flows + s.xdp_flows,
        })
}

/// The sum of a service's per-CPU `service_stats` values.
pub fn sum_service_stats(per_cpu: &[ServiceStats]) -> ServiceStats {
    per_cpu
        .iter()
        .fold(ServiceStats::default(), |sum, s| ServiceStats {
            refused: sum.refused + s.refused,
            rev_nat_failed: sum.rev_nat_failed + s.rev_nat_failed,
            xdp_packets: sum.xdp_packets + s.xdp_packets,
            xdp_bytes: sum.xdp_bytes + s.xdp_bytes,
            xdp_flows: sum.xdp_flows + s.xdp_flows,
            xdp_drop_no_backend: sum.xdp_drop_no_backend + s.xdp_drop_no_backend,
            xdp_drop_snat_ports: sum.xdp_drop_snat_ports + s.xdp_drop_snat_ports,
            xdp_drop_flow_table: sum.xdp_drop_flow_table + s.xdp_drop_flow_table,
            xdp_drop_unreachable: sum.xdp_drop_unreachable + s.xdp_drop_unreachable,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_sums_add_every_field() {
        let backend = |n: u64| BackendStats {
            connects: n,
            sendmsgs: 2 * n,
            xdp_packets: 3 * n,
            xdp_bytes: 4 * n,
            xdp_flows: 5 * n,
        };
        assert_eq!(sum_backend_stats(&[backend(1), backend(10)]), backend(11));
        assert_eq!(sum_backend_stats(&[]), BackendStats::default());
        let service = |n: u64| ServiceStats {
            refused: n,
            rev_nat_failed: 2 * n,
            xdp_packets: 3 * n,
            xdp_bytes: 4 * n,
            xdp_flows: 5 * n,
            xdp_drop_no_backend: 6 * n,
            xdp_drop_snat_ports: 7 * n,
            xdp_drop_flow_table: 8 * n,
            xdp_drop_unreachable: 9 * n,
        };
        assert_eq!(
            sum_service_stats(&[service(1), service(2), service(4)]),
            service(7)
        );
    }
}
