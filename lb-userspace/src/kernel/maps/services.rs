//! The `services` map: VIP key → service entry, and `vip_filter`, the Bloom
//! filter over its remote keys. The socket hooks and the forwarder look
//! every VIP up in `services`; an entry is written whole (atomic for them).
//! The forwarder reads `vip_filter` first and skips the lookup for a
//! destination whose bit is clear.
//!
//! Invariant: every remote service ([`SERVICE_REMOTE`]) in `services` has
//! its bit set in `vip_filter`. This wrapper is the only writer of both and
//! keeps it: an entry is written before its bit is set, and a bit is
//! cleared only after the last remote entry needing it is gone (or lost
//! `remote`). In between, a packet sees either a set bit and the `services`
//! lookup deciding, or a clear bit for a VIP that is not (yet or any more)
//! a remote service: both are right.

use std::collections::HashSet;

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData};
use lb_common::{SERVICE_REMOTE, Service, VipFilter, VipKey};
use tracing::debug;

use super::removed;

/// The `services` map and its `vip_filter`.
pub struct Services {
    map: HashMap<MapData, VipKey, Service>,
    /// `vip_filter`: word `i` of the [`VipFilter`] at index `i`.
    filter: Array<MapData, u64>,
    /// The keys of the remote services in `map`.
    remote: HashSet<VipKey>,
    /// What `filter` holds (`None`: not known to match `remote`, so the
    /// next change writes it whatever it holds).
    written: Option<VipFilter>,
}

impl Services {
    /// Wraps the two maps; brings `vip_filter` in line with what `services`
    /// holds (a pinned pair from an earlier run, or a new filter).
    pub(super) fn new(
        map: HashMap<MapData, VipKey, Service>,
        filter: Array<MapData, u64>,
    ) -> anyhow::Result<Self> {
        let mut services = Self {
            map,
            filter,
            remote: HashSet::new(),
            written: None,
        };
        services.remote = services
            .all()?
            .into_iter()
            .filter(|(_, service)| service.flags & SERVICE_REMOTE != 0)
            .map(|(key, _)| key)
            .collect();
        services.write_filter()?;
        Ok(services)
    }

    /// Every entry.
    pub fn all(&self) -> anyhow::Result<Vec<(VipKey, Service)>> {
        self.map
            .iter()
            .map(|entry| entry.context("reading the services map"))
            .collect()
    }

    /// Writes a service entry (and then its `vip_filter` bit).
    pub fn set(&mut self, key: VipKey, service: Service) -> anyhow::Result<()> {
        self.map
            .insert(key, service, 0)
            .context("updating the services map")?;
        if service.flags & SERVICE_REMOTE == 0 {
            self.remote.remove(&key);
        } else {
            self.remote.insert(key);
        }
        self.write_filter()
    }

    /// Removes a service entry (nothing when it is not there), then its
    /// `vip_filter` bit if no other remote service shares it.
    pub fn remove(&mut self, key: &VipKey) -> anyhow::Result<()> {
        removed(self.map.remove(key)).context("removing from the services map")?;
        self.remote.remove(key);
        self.write_filter()
    }

    /// The filter of the remote keys.
    fn wanted(&self) -> VipFilter {
        let mut filter = VipFilter::default();
        for key in &self.remote {
            filter.insert(key);
        }
        filter
    }

    /// Writes the words of `vip_filter` that differ from what it should
    /// hold (all of them the first time).
    fn write_filter(&mut self) -> anyhow::Result<()> {
        let wanted = self.wanted();
        let mut changed = 0;
        for (index, word) in wanted.words.iter().enumerate() {
            if self
                .written
                .as_ref()
                .is_some_and(|written| written.words[index] == *word)
            {
                continue;
            }
            let index = u32::try_from(index).context("vip_filter index")?;
            self.filter
                .set(index, word, 0)
                .with_context(|| format!("writing vip_filter[{index}]"))?;
            changed += 1;
        }
        if changed > 0 {
            debug!(
                remote_vips = self.remote.len(),
                words = changed,
                "vip_filter written"
            );
        }
        self.written = Some(wanted);
        Ok(())
    }
}
