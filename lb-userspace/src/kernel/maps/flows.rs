//! The `flows` map: XDP's connection table (both directions of each
//! forwarded flow), an LRU hash the kernel evicts from on its own.

use anyhow::Context as _;
use aya::maps::{HashMap, MapData, MapError};
use lb_common::{FlowKey, FlowValue};

/// The `flows` map.
pub struct Flows(pub(super) HashMap<MapData, FlowKey, FlowValue>);

impl Flows {
    /// Removes the flows (both directions) whose value `matches`, so their
    /// next packet picks a backend again; returns how many entries went.
    /// Walks the whole map: for rare events only (a server whose
    /// connections must be closed, a service that stops being `remote`).
    pub fn forget(&mut self, matches: impl Fn(&FlowValue) -> bool) -> anyhow::Result<usize> {
        let mut doomed = Vec::new();
        for entry in &self.0 {
            match entry {
                Ok((key, value)) if matches(&value) => doomed.push(key),
                // Another flow, or one evicted by the kernel while we walk.
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("reading the flows map"),
            }
        }
        let mut removed = 0;
        for key in &doomed {
            match self.0.remove(key) {
                Ok(()) => removed += 1,
                Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("removing from the flows map"),
            }
        }
        Ok(removed)
    }
}
