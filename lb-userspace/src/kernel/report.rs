//! What attaching did in this run, for the start-up log
//! ([`super::dataplane::Dataplane::start`] and the XDP links).

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
    /// Interfaces whose XDP link left by an earlier run got the new program.
    pub xdp_adopted: Vec<String>,
    /// Interfaces the XDP program was attached to with a new link.
    pub xdp_attached: Vec<String>,
    /// Interfaces whose pinned XDP link was stale (interface recreated) and replaced.
    pub xdp_replaced: Vec<String>,
    /// Interfaces no longer configured whose XDP link was detached.
    pub xdp_detached: Vec<String>,
}
