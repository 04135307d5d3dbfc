//! What attaching did in this run, for the start-up log, the status and the
//! metrics ([`super::dataplane::Dataplane::start`] and the per-interface
//! links of [`super::links`]).

use serde::{Deserialize, Serialize};

/// How each program got attached in this run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttachReport {
    /// Programs swapped into links left by an earlier run (same cgroup).
    pub adopted: Vec<&'static str>,
    /// Programs attached with a new link.
    pub attached: Vec<&'static str>,
    /// Links of an earlier run on another cgroup, detached and replaced.
    pub replaced: Vec<&'static str>,
    /// Maps reused with their contents.
    pub reused_maps: Vec<&'static str>,
    /// The XDP links, by interface.
    pub xdp: InterfaceLinks,
    /// The tc links, by interface.
    pub tc: InterfaceLinks,
    /// The hook in use on each configured interface, in config order.
    pub hooks: Vec<HookInUse>,
}

/// What happened to the links of one kind (XDP or tc), by interface name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InterfaceLinks {
    /// Links left by an earlier run that got the new program.
    pub adopted: Vec<String>,
    /// New links.
    pub attached: Vec<String>,
    /// Stale links (interface recreated) that were replaced.
    pub replaced: Vec<String>,
    /// Links of interfaces no longer configured (or now on the other hook), detached.
    pub detached: Vec<String>,
}

/// The hook the forwarder for remote clients runs in on one interface, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookInUse {
    /// The interface.
    pub interface: String,
    /// `xdp` or `tc`.
    pub hook: String,
    /// XDP: `driver` or `skb` (as the kernel reports it); tc: `tcx` or `clsact`.
    pub mode: String,
    /// Why this hook (`auto: veth -> tc`, `hook: tc`, ...).
    pub why: String,
}
