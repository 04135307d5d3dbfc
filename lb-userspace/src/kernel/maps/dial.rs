//! The maps of kernel-observed dials (see `lb_common::dial`): `dials`
//! (entries forgotten here before the controller aborts a connect, so the
//! abort is not reported as a failed dial), `backend_dial` (the kernel's suspect marks, cleared here once a server
//! is usable again), `failover` (each TCP service's candidates past a
//! suspect backend, written here), `backend_conns` (established
//! connections per backend, read by the poller's handler) and the
//! `dial_events` ring buffer (read by the controller's dial task, which
//! takes it). `conns` (cookie → backend) is the kernel's own.

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, MapError, RingBuf};
use lb_common::{BackendConns, BackendDial, DialStart, Failover};
use tracing::debug;

/// The `dials` map.
pub struct DialsMap(pub(super) HashMap<MapData, u64, DialStart>);

impl DialsMap {
    /// Forgets the dial of socket `cookie`: its end is not reported.
    pub fn forget(&mut self, cookie: u64) {
        match self.0.remove(&cookie) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(err) => {
                debug!(cookie, error = %err, "could not remove a dials entry; its abort will be reported as a failed dial");
            }
        }
    }
}

/// The `backend_dial` map.
pub struct BackendDialMap(pub(super) Array<MapData, BackendDial>);

impl BackendDialMap {
    /// A backend's entry.
    pub fn get(&self, id: u32) -> anyhow::Result<BackendDial> {
        self.0
            .get(&id, 0)
            .with_context(|| format!("reading backend_dial[{id}]"))
    }

    /// Clears a backend's suspect mark; returns whether it had one.
    pub fn clear_suspect(&mut self, id: u32) -> anyhow::Result<bool> {
        let entry = self.get(id)?;
        if entry.suspect_since_ns == 0 {
            return Ok(false);
        }
        self.0
            .set(id, BackendDial::default(), 0)
            .with_context(|| format!("clearing backend_dial[{id}]"))?;
        Ok(true)
    }

    /// Forgets everything about a backend slot (before it is reused).
    pub fn reset(&mut self, id: u32) -> anyhow::Result<()> {
        self.0
            .set(id, BackendDial::default(), 0)
            .with_context(|| format!("resetting backend_dial[{id}]"))
    }
}

/// The `backend_conns` map: established connections per backend, counted
/// by `sock_ops` for tracked services. Not reset when a slot is reused:
/// a connection of the slot's previous server that is still open is
/// subtracted when it closes, so the count stays a true sum.
pub struct BackendConnsMap(pub(super) Array<MapData, BackendConns>);

impl BackendConnsMap {
    /// A backend's counts.
    pub fn get(&self, id: u32) -> anyhow::Result<BackendConns> {
        self.0
            .get(&id, 0)
            .with_context(|| format!("reading backend_conns[{id}]"))
    }
}

/// The `failover` map.
pub struct FailoverMap(pub(super) Array<MapData, Failover>);

impl FailoverMap {
    /// Writes a service's failover list.
    pub fn set(&mut self, service_id: u32, failover: Failover) -> anyhow::Result<()> {
        self.0
            .set(service_id, failover, 0)
            .with_context(|| format!("writing failover[{service_id}]"))
    }
}

/// The `dial_events` ring buffer, until the controller's dial task takes it.
pub struct DialEvents(pub(super) Option<RingBuf<MapData>>);

impl DialEvents {
    /// The ring buffer (once).
    pub fn take(&mut self) -> Option<RingBuf<MapData>> {
        self.0.take()
    }
}
