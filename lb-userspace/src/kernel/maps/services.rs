//! The `services` map: VIP key → service entry. The socket hooks and XDP
//! look every VIP up here; an entry is written whole (atomic for them).

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use lb_common::{Service, VipKey};

use super::removed;

/// The `services` map.
pub struct Services(pub(super) HashMap<MapData, VipKey, Service>);

impl Services {
    /// Every entry.
    pub fn all(&self) -> anyhow::Result<Vec<(VipKey, Service)>> {
        self.0
            .iter()
            .map(|entry| entry.context("reading the services map"))
            .collect()
    }

    /// Writes a service entry.
    pub fn set(&mut self, key: VipKey, service: Service) -> anyhow::Result<()> {
        self.0
            .insert(key, service, 0)
            .context("updating the services map")
    }

    /// Removes a service entry (nothing when it is not there).
    pub fn remove(&mut self, key: &VipKey) -> anyhow::Result<()> {
        removed(self.0.remove(key)).context("removing from the services map")
    }
}
