//! The K3s server state machine (placeholder; filled in by the controller-brain work).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Server states, numbered like the K3s agent load balancer's (the number is
/// the value of `k3s_loadbalancer_server_health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Removed from the config; never selected.
    Invalid = 0,
    /// Its last check failed.
    Failed = 1,
    /// The default server while it is not in the server list and not in use.
    Standby = 2,
    /// Not checked yet.
    Unchecked = 3,
    /// Recovering after a failure (used by the full state machine).
    Recovering = 4,
    /// Its last check passed; not selected.
    Healthy = 5,
    /// Preferred after recovery (used by the full state machine).
    Preferred = 6,
    /// The selected server: new connections go here.
    Active = 7,
}

impl ServerState {
    /// The lowercase word used in status output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Failed => "failed",
            Self::Standby => "standby",
            Self::Unchecked => "unchecked",
            Self::Recovering => "recovering",
            Self::Healthy => "healthy",
            Self::Preferred => "preferred",
            Self::Active => "active",
        }
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

