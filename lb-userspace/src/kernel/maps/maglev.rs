//! The `maglev` map: (service id, slot) → backend id, the Maglev tables of
//! `policy: spread` services.

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use lb_common::MaglevKey;

use super::removed;

/// The `maglev` map.
pub struct Maglev(pub(super) HashMap<MapData, MaglevKey, u32>);

impl Maglev {
    /// Writes one slot of a service's table.
    pub fn set(&mut self, service_id: u32, slot: u32, backend_id: u32) -> anyhow::Result<()> {
        self.0
            .insert(MaglevKey { service_id, slot }, backend_id, 0)
            .with_context(|| format!("writing maglev[service {service_id}, slot {slot}]"))
    }

    /// Removes one slot (nothing when it is not there).
    pub fn remove(&mut self, key: &MaglevKey) -> anyhow::Result<()> {
        removed(self.0.remove(key)).with_context(|| {
            format!(
                "removing maglev[service {}, slot {}]",
                key.service_id, key.slot
            )
        })
    }

    /// Every slot (to find what a crashed or earlier run left).
    pub fn all(&self) -> anyhow::Result<Vec<(MaglevKey, u32)>> {
        self.0
            .iter()
            .map(|entry| entry.context("reading the maglev map"))
            .collect()
    }
}
