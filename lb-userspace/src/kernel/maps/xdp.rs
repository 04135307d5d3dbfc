//! The maps only the XDP forwarder reads: `xdp_config` (its settings, one
//! entry, written last at start: it switches forwarding on), `if_addrs`
//! (each interface's primary addresses, the default SNAT sources) and
//! `xdp_stats` (per-CPU verdict counters, `lb_common::xdp_counter` order).

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use lb_common::{IfAddrs, XdpConfig, xdp_counter};

use super::removed;
use crate::kernel::if_addrs;

/// The `xdp_config` map. Its `hop_gen` is the wrapper's: every write
/// moves it on from what the map held (also an earlier run's value in a
/// reused pinned map), so next hops cached before are never trusted again.
pub struct XdpConfigMap {
    map: Array<MapData, XdpConfig>,
    /// The entry last written (`None` before the first write).
    last: Option<XdpConfig>,
}

impl XdpConfigMap {
    pub(super) const fn new(map: Array<MapData, XdpConfig>) -> Self {
        Self { map, last: None }
    }

    /// Writes `entry` with the next hop generation (its own `hop_gen` is
    /// ignored); returns the generation written.
    pub fn set(&mut self, entry: XdpConfig) -> anyhow::Result<u32> {
        let current = match self.last {
            Some(last) => last.hop_gen,
            None => {
                self.map
                    .get(&0, 0)
                    .context("reading xdp_config[0]")?
                    .hop_gen
            }
        };
        let entry = XdpConfig {
            hop_gen: current.wrapping_add(1),
            ..entry
        };
        self.map.set(0, entry, 0).context("writing xdp_config[0]")?;
        self.last = Some(entry);
        Ok(entry.hop_gen)
    }

    /// Writes the last entry again with the next hop generation (routes,
    /// neighbours or links changed); returns the generation written.
    pub fn bump_hop_gen(&mut self) -> anyhow::Result<u32> {
        let entry = self
            .last
            .context("xdp_config[0] was never written by this run")?;
        self.set(entry)
    }

    /// The entry last written.
    pub const fn last(&self) -> Option<XdpConfig> {
        self.last
    }
}

/// The `if_addrs` map.
pub struct IfAddrsMap(pub(super) HashMap<MapData, u32, IfAddrs>);

impl IfAddrsMap {
    /// Brings the map to `wanted` (writing only what differs); returns what
    /// changed.
    pub fn sync(&mut self, wanted: &BTreeMap<u32, IfAddrs>) -> anyhow::Result<if_addrs::Changes> {
        let current = self
            .0
            .iter()
            .map(|entry| entry.context("reading the if_addrs map"))
            .collect::<anyhow::Result<BTreeMap<u32, IfAddrs>>>()?;
        let changes = if_addrs::changes(&current, wanted);
        for ifindex in &changes.remove {
            removed(self.0.remove(ifindex))
                .with_context(|| format!("removing if_addrs[{ifindex}]"))?;
        }
        for (ifindex, entry) in &changes.set {
            self.0
                .insert(ifindex, entry, 0)
                .with_context(|| format!("writing if_addrs[{ifindex}]"))?;
        }
        Ok(changes)
    }
}

/// The `xdp_stats` map.
pub struct XdpStats(pub(super) PerCpuArray<MapData, u64>);

impl XdpStats {
    /// The verdict counters ([`xdp_counter`] order), summed over CPUs.
    pub fn verdicts(&self) -> anyhow::Result<Vec<u64>> {
        (0..xdp_counter::COUNT)
            .map(|index| {
                let per_cpu = self
                    .0
                    .get(&index, 0)
                    .with_context(|| format!("reading xdp_stats[{index}]"))?;
                Ok(per_cpu.iter().sum())
            })
            .collect()
    }
}
