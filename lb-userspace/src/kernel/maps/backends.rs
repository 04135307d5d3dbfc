//! The `backends` array: backend id → address, owning service and flags. A
//! slot whose family is 0 is unused.

use anyhow::Context as _;
use aya::maps::{Array, MapData};
use lb_common::Backend;

/// The `backends` map.
pub struct Backends(pub(super) Array<MapData, Backend>);

impl Backends {
    /// Every used slot, by id.
    pub fn used(&self) -> anyhow::Result<Vec<(u32, Backend)>> {
        let mut used = Vec::new();
        for (id, backend) in self.0.iter().enumerate() {
            let backend = backend.context("reading the backends map")?;
            if backend.family != 0 {
                used.push((id as u32, backend));
            }
        }
        Ok(used)
    }

    /// Writes a slot.
    pub fn set(&mut self, id: u32, backend: Backend) -> anyhow::Result<()> {
        self.0
            .set(id, backend, 0)
            .with_context(|| format!("writing backends[{id}]"))
    }

    /// Marks a slot unused.
    pub fn clear(&mut self, id: u32) -> anyhow::Result<()> {
        self.set(id, Backend::default())
    }
}
