//! The `flow_stats` map: per-CPU counts of `flows` entries created and
//! removed, by [`flow_stat`] index. The forwarders write
//! [`flow_stat::CREATED`] and [`flow_stat::REMOVED_KERNEL`]; the flow
//! collector and the controller each own one removal counter, which they
//! write in CPU 0's slot. What the counts do not explain of the entries a
//! walk finds is what the LRU evicted
//! ([`crate::policy::flow_expiry::evicted_at_least`]).

use std::os::fd::AsFd as _;

use anyhow::Context as _;
use aya::maps::{IterableMap as _, Map, MapData, PerCpuArray, PerCpuValues};
use lb_common::{flow_stat, map_names};

use crate::policy::flow_expiry::FlowTotals;

/// The `flow_stats` map.
pub struct FlowStatsMap {
    map: PerCpuArray<MapData, u64>,
    nr_cpus: usize,
}

impl FlowStatsMap {
    pub(super) const fn new(map: PerCpuArray<MapData, u64>, nr_cpus: usize) -> Self {
        Self { map, nr_cpus }
    }

    /// Another handle of the same map (for the flow collector's thread).
    pub fn try_clone(&self) -> anyhow::Result<Self> {
        let name = map_names::FLOW_STATS;
        let fd = self
            .map
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating the {name} map's descriptor"))?;
        let data = MapData::from_fd(fd).with_context(|| format!("opening the {name} map again"))?;
        let map = PerCpuArray::try_from(Map::PerCpuArray(data))
            .with_context(|| format!("the {name} map has an unexpected type"))?;
        Ok(Self::new(map, self.nr_cpus))
    }

    /// Every counter, summed over CPUs.
    pub fn totals(&self) -> anyhow::Result<FlowTotals> {
        let mut totals = FlowTotals::default();
        for (index, total) in (0..flow_stat::COUNT).zip(totals.iter_mut()) {
            let per_cpu = self
                .map
                .get(&index, 0)
                .with_context(|| format!("reading {}[{index}]", map_names::FLOW_STATS))?;
            *total = per_cpu.iter().fold(0u64, |sum, n| sum.wrapping_add(*n));
        }
        Ok(totals)
    }

    /// Adds `delta` (negative: takes back) to counter `index`, one of the
    /// removal counters only the caller writes
    /// ([`flow_stat::REMOVED_COLLECTOR`], [`flow_stat::REMOVED_CONTROLLER`]):
    /// CPU 0's slot holds its total.
    pub fn add(&mut self, index: u32, delta: i64) -> anyhow::Result<()> {
        if delta == 0 {
            return Ok(());
        }
        let name = map_names::FLOW_STATS;
        let per_cpu = self
            .map
            .get(&index, 0)
            .with_context(|| format!("reading {name}[{index}]"))?;
        let total = per_cpu.iter().fold(0u64, |sum, n| sum.wrapping_add(*n));
        self.set(index, total.wrapping_add_signed(delta))
    }

    /// Sets counter `index` to `total` (in CPU 0's slot, the others 0).
    /// For a counter the forwarders also write, only while no loaded
    /// program can (at start, before anything is attached to this map).
    pub fn set(&mut self, index: u32, total: u64) -> anyhow::Result<()> {
        let name = map_names::FLOW_STATS;
        let mut values = vec![0u64; self.nr_cpus];
        if let Some(first) = values.first_mut() {
            *first = total;
        }
        let values = PerCpuValues::try_from(values)
            .with_context(|| format!("building per-CPU values for {name}[{index}]"))?;
        self.map
            .set(index, values, 0)
            .with_context(|| format!("writing {name}[{index}]"))
    }
}
