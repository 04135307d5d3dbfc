//! The `kernel_log` map: index 0 holds the level of the kernel programs'
//! logging ([`lb_common::kernel_log`]); the programs read it only once a
//! rare event has happened. Pinned like every map, so a restarted
//! controller finds the last level until it writes its own.

use anyhow::Context as _;
use aya::maps::{Array, MapData};

/// The `kernel_log` map.
pub struct KernelLogMap(pub(super) Array<MapData, u32>);

impl KernelLogMap {
    /// Writes the level.
    pub fn set(&mut self, level: u32) -> anyhow::Result<()> {
        self.0
            .set(0, level, 0)
            .with_context(|| format!("writing kernel_log[0] = {level}"))
    }

    /// The level the programs see now.
    pub fn get(&self) -> anyhow::Result<u32> {
        self.0.get(&0, 0).context("reading kernel_log[0]")
    }
}
