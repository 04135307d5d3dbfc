//! The `flows` map: XDP's connection table (both directions of each
//! forwarded flow), an LRU hash the kernel evicts from on its own. The
//! kernel programs create and refresh entries; the controller's flow
//! collector reads them in chunks ([`Flows::walk`]) and removes the expired
//! ones ([`Flows::remove`]).
//!
//! Each handle counts the entries it removes into its own `flow_stats`
//! counter ([`Flows::record_removals`]; the controller's handle
//! [`flow_stat::REMOVED_CONTROLLER`], the collector's
//! [`flow_stat::REMOVED_COLLECTOR`]), so that evictions can be told apart.

use std::{
    ops::ControlFlow,
    os::fd::{AsFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, Map, MapData, MapError};
use lb_common::{FlowKey, FlowValue, flow_stat, map_names};
use tracing::warn;

use super::FlowStatsMap;
use crate::{kernel::bpf_sys, policy::flow_expiry::FlowTotals};

/// Chunks grow up to this many entries when a hash bucket holds more than a
/// chunk (`ENOSPC`).
const MAX_CHUNK: u32 = 1 << 16;

/// The `flows` map.
pub struct Flows {
    map: HashMap<MapData, FlowKey, FlowValue>,
    /// A second descriptor of the same map, for `BPF_MAP_LOOKUP_BATCH`.
    fd: OwnedFd,
    capacity: u32,
    /// `flow_stats`, where this handle's removals are counted.
    stats: FlowStatsMap,
    /// This handle's removal counter ([`flow_stat`] index).
    removal_counter: u32,
    /// Removals not yet added to it.
    unrecorded: u64,
}

/// How a [`Flows::walk`] read the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkMode {
    /// `BPF_MAP_LOOKUP_BATCH`, a chunk per system call.
    Batch,
    /// One key after the other (`BPF_MAP_GET_NEXT_KEY` and a lookup each):
    /// kernels whose LRU hash has no batch operations.
    PerKey,
}

impl Flows {
    /// The typed wrapper of the object's `flows` map, counting its removals
    /// in `stats` as the controller's ([`flow_stat::REMOVED_CONTROLLER`]).
    pub(super) fn from_map(map: Map, stats: FlowStatsMap) -> anyhow::Result<Self> {
        let name = map_names::FLOWS;
        let (Map::LruHashMap(data) | Map::HashMap(data)) = map else {
            bail!("the {name} map has an unexpected type");
        };
        Self::from_data(data, stats, flow_stat::REMOVED_CONTROLLER)
    }

    fn from_data(data: MapData, stats: FlowStatsMap, removal_counter: u32) -> anyhow::Result<Self> {
        let name = map_names::FLOWS;
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating the {name} map's descriptor"))?;
        let capacity = data
            .info()
            .with_context(|| format!("reading the {name} map's info"))?
            .max_entries();
        let map = HashMap::try_from(Map::LruHashMap(data))
            .with_context(|| format!("the {name} map has an unexpected type"))?;
        Ok(Self {
            map,
            fd,
            capacity,
            stats,
            removal_counter,
            unrecorded: 0,
        })
    }

    /// Another handle of the same map (for the flow collector's thread),
    /// counting its removals in `removal_counter` ([`flow_stat`] index,
    /// which no other handle may write).
    pub fn try_clone(&self, removal_counter: u32) -> anyhow::Result<Self> {
        let fd = self
            .fd
            .try_clone()
            .context("duplicating the flows map's descriptor")?;
        let data = MapData::from_fd(fd).context("opening the flows map again")?;
        Self::from_data(data, self.stats.try_clone()?, removal_counter)
    }

    /// The `flow_stats` counters, summed over CPUs (this handle's removals
    /// not yet recorded are not in them).
    pub fn totals(&self) -> anyhow::Result<FlowTotals> {
        self.stats.totals()
    }

    /// Adds the removals made since the last call to this handle's
    /// `flow_stats` counter (one read and one write of the map).
    pub fn record_removals(&mut self) -> anyhow::Result<()> {
        let n = std::mem::take(&mut self.unrecorded);
        self.stats
            .add(self.removal_counter, i64::try_from(n).unwrap_or(i64::MAX))
            .inspect_err(|_| {
                self.unrecorded += n;
            })
    }

    /// The `flow_stats` map itself (start-up bookkeeping).
    pub(crate) const fn stats_mut(&mut self) -> &mut FlowStatsMap {
        &mut self.stats
    }

    /// The map's capacity (entries: two per flow).
    pub const fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The entry of `key`, if there is one.
    pub fn get(&self, key: &FlowKey) -> anyhow::Result<Option<FlowValue>> {
        match self.map.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(err).context("reading from the flows map"),
        }
    }

    /// Removes the entry of `key`; returns whether it was there. Counted
    /// for `flow_stats` once [`Self::record_removals`] runs.
    pub fn remove(&mut self, key: &FlowKey) -> anyhow::Result<bool> {
        match self.map.remove(key) {
            Ok(()) => {
                self.unrecorded += 1;
                Ok(true)
            }
            Err(MapError::KeyNotFound) => Ok(false),
            Err(err) => Err(err).context("removing from the flows map"),
        }
    }

    /// Removes the flows (both directions) whose value `matches`, so their
    /// next packet finds the maps as they are now; returns how many entries
    /// went. Walks the whole map: for rare events only (a service that
    /// stops being `remote`).
    ///
    /// The entries are counted as removed before they go, and the ones
    /// that were gone already are taken back after: the collector may be
    /// walking meanwhile, and an entry that went uncounted until the end
    /// would look evicted to it for good (its bound only grows), while
    /// counting early only lowers the bound of a pass in between.
    pub fn forget(&mut self, matches: impl Fn(&FlowValue) -> bool) -> anyhow::Result<usize> {
        let mut doomed = Vec::new();
        self.walk(1024, |entries| {
            doomed.extend(
                entries
                    .iter()
                    .filter(|(_, value)| matches(value))
                    .map(|(key, _)| *key),
            );
            ControlFlow::Continue(())
        })?;
        let doomed_count = i64::try_from(doomed.len()).unwrap_or(i64::MAX);
        let counted_ahead = self
            .stats
            .add(self.removal_counter, doomed_count)
            .inspect_err(|err| {
                warn!(
                    error = format!("{err:#}"),
                    "counting flow entries to remove in flow_stats failed; counting them after"
                );
            })
            .is_ok();
        let mut removed = 0;
        let mut result = Ok(());
        for key in &doomed {
            match self.map.remove(key) {
                Ok(()) => removed += 1,
                Err(MapError::KeyNotFound) => {}
                Err(err) => {
                    result = Err(err).context("removing from the flows map");
                    break;
                }
            }
        }
        let recorded = if counted_ahead {
            let missed = doomed.len() - removed;
            self.stats.add(
                self.removal_counter,
                -i64::try_from(missed).unwrap_or(i64::MAX),
            )
        } else {
            self.unrecorded += removed as u64;
            self.record_removals()
        };
        if let Err(err) = recorded {
            warn!(
                error = format!("{err:#}"),
                "counting removed flow entries in flow_stats failed"
            );
        }
        result.map(|()| removed)
    }

    /// Reads the map `chunk` entries at a time and hands each chunk to
    /// `visit` until the end or until `visit` breaks. No lock is held and
    /// the kernel keeps changing the map meanwhile: an entry may be missed
    /// or seen twice, which a collector that runs again tolerates. `visit`
    /// may remove entries. Returns how the map was read.
    pub fn walk(
        &self,
        chunk: u32,
        mut visit: impl FnMut(&[(FlowKey, FlowValue)]) -> ControlFlow<()>,
    ) -> anyhow::Result<WalkMode> {
        if self.walk_batch(chunk.max(1), &mut visit)?.is_some() {
            return Ok(WalkMode::Batch);
        }
        self.walk_per_key(chunk.max(1), &mut visit)?;
        Ok(WalkMode::PerKey)
    }

    /// The batch walk; `None` when the kernel has no batch lookup for this
    /// map (`EINVAL` on the first call).
    fn walk_batch(
        &self,
        mut chunk: u32,
        visit: &mut impl FnMut(&[(FlowKey, FlowValue)]) -> ControlFlow<()>,
    ) -> anyhow::Result<Option<()>> {
        let sizes = (size_of::<FlowKey>(), size_of::<FlowValue>());
        let mut token_in = [0u8; size_of::<FlowKey>()];
        let mut token_out = [0u8; size_of::<FlowKey>()];
        let mut keys: Vec<u8> = Vec::new();
        let mut values: Vec<u8> = Vec::new();
        let mut entries: Vec<(FlowKey, FlowValue)> = Vec::new();
        let mut first = true;
        loop {
            keys.resize(chunk as usize * sizes.0, 0);
            values.resize(chunk as usize * sizes.1, 0);
            let result = bpf_sys::map_lookup_batch(
                self.fd.as_fd(),
                sizes,
                (!first).then_some(&token_in[..]),
                &mut token_out,
                (&mut keys, &mut values),
                chunk,
            );
            let batch = match result {
                Ok(batch) => batch,
                Err(err) if first && err.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
                Err(err) if err.raw_os_error() == Some(libc::ENOSPC) && chunk < MAX_CHUNK => {
                    chunk = (chunk * 2).min(MAX_CHUNK);
                    continue;
                }
                Err(err) => {
                    return Err(err).context("BPF_MAP_LOOKUP_BATCH on the flows map");
                }
            };
            first = false;
            entries.clear();
            for index in 0..batch.count as usize {
                entries.push((
                    read_pod::<FlowKey>(&keys[index * sizes.0..(index + 1) * sizes.0]),
                    read_pod::<FlowValue>(&values[index * sizes.1..(index + 1) * sizes.1]),
                ));
            }
            if !entries.is_empty() && visit(&entries).is_break() {
                return Ok(Some(()));
            }
            if batch.done {
                return Ok(Some(()));
            }
            token_in = token_out;
        }
    }

    /// The fallback walk. The keys of a chunk are read first, then their
    /// values, then `visit` runs, so its removals never make the key
    /// iteration restart (`BPF_MAP_GET_NEXT_KEY` starts over when the
    /// current key is gone).
    fn walk_per_key(
        &self,
        chunk: u32,
        visit: &mut impl FnMut(&[(FlowKey, FlowValue)]) -> ControlFlow<()>,
    ) -> anyhow::Result<()> {
        let mut keys = Vec::new();
        for key in self.map.keys() {
            match key {
                Ok(key) => keys.push(key),
                Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("walking the flows map's keys"),
            }
            if keys.len() == self.capacity as usize {
                // The map holds at most this many: the iteration restarted.
                break;
            }
        }
        for keys in keys.chunks(chunk as usize) {
            let mut entries = Vec::with_capacity(keys.len());
            for key in keys {
                if let Some(value) = self.get(key)? {
                    entries.push((*key, value));
                }
            }
            if !entries.is_empty() && visit(&entries).is_break() {
                break;
            }
        }
        Ok(())
    }
}

/// A `repr(C)` value of integers from the bytes the kernel wrote.
fn read_pod<T: aya::Pod>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= size_of::<T>(), "short buffer");
    // `T: Pod`: the `lb_common` map types (`repr(C)`, integer fields,
    // explicit padding).
    // SAFETY: `bytes` holds `size_of::<T>()` bytes (checked above), every
    // byte pattern is a valid `T: Pod`, and `read_unaligned` needs no alignment.
    unsafe { bytes.as_ptr().cast::<T>().read_unaligned() }
}
