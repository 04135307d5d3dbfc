//! The K3s agent load balancer's server state machine, for one service.
//!
//! A pure module: no I/O, no clock of its own. Every method that depends on
//! time takes `now`, so tests drive it with a paused clock. The controller
//! feeds it events (health-check results, dial outcomes, connection counts,
//! server-list changes) and carries out what it returns in [`Effects`]:
//! closing connections, logging and counting transitions. [`ServiceMachine::select`]
//! says which server new connections go to.
//!
//! # States and transitions (K3s semantics)
//!
//! In increasing preference: invalid < failed < standby < unchecked <
//! recovering < healthy < preferred < active.
//!
//! - A new server is *unchecked*. The default server, while it is not in the
//!   server list, is *standby* (checks and dials do not change that). A
//!   removed server becomes *invalid* and its connections are closed; then it
//!   is forgotten. A default server removed from the list returns to
//!   *standby* and its connections are closed.
//! - Success: failed/unchecked → recovering (check or dial); recovering +
//!   passing check → active if it has connections, else preferred;
//!   healthy/preferred + dial → active; preferred for more than
//!   [`PREFERRED_DECAY`] without a dial → healthy.
//! - Failure: unchecked/recovering → failed only on a *dial* failure (a
//!   failing check alone does not demote them); healthy/preferred/active →
//!   failed on either, and their connections are closed.
//! - At most one active server: when one becomes active, another active
//!   server with fewer connections yields to preferred and its connections are
//!   closed (on a tie the older one yields); connections to failed, standby,
//!   recovering and healthy servers are closed.
//! - Fail-back: when a listed server reaches preferred, connections to the
//!   standby default and to failed servers are closed, so long-lived clients
//!   leave the fallback at once (K3s #11311) instead of when they next dial.
//!
//! # Selection
//!
//! Servers are ranked by state (descending), then score (descending, only
//! when performance ranking is on), then connections (descending), then list
//! order. New connections go to the best server above *failed*, excluding the
//! standby default. If there is none, they go to the default server unless its
//! last check failed; then, failing open, to the best-ranked failed server
//! (ignoring health), and finally to the default even if it fails. A service
//! with any server or a default therefore always has a backend (K3s #10240).
//!
//! Ties keep the current selection ([`ServiceMachine::select_from`]): while
//! the selected server is listed and above *failed*, another server replaces
//! it only when it is strictly better: a better state, or (ranking on) the
//! same state and a higher score. Healthy, preferred, and recovering while
//! its last check passed count as one state here (they differ only in how
//! recently the server was dialed or how many checks it has passed so far,
//! so a preferred server decaying to healthy does not hand the selection to
//! one that became preferred a moment later, nor does a server reaching
//! preferred one check before the selected one), and connections and list
//! order never replace it. So servers passing their first checks one after
//! the other at startup move the selection once (from the unchecked first
//! server to the first that passed), decays not at all; a server failing, a
//! failing check of a recovering selection, a better state or a better
//! score move it at once.

use std::{
    cmp::Ordering,
    fmt,
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// How long a server may stay preferred without a dial before it decays to
/// healthy.
pub const PREFERRED_DECAY: Duration = Duration::from_mins(1);

/// Server states, numbered like the K3s agent load balancer's (the number is
/// the value of `k3s_loadbalancer_server_health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Removed from the server list; never selected.
    Invalid = 0,
    /// Failed a dial (or, when it was in use, a check); its connections were closed.
    Failed = 1,
    /// The default server while it is not in the server list: a last resort.
    Standby = 2,
    /// Added but not checked yet.
    Unchecked = 3,
    /// Passed one check or dial after being failed or unchecked.
    Recovering = 4,
    /// Passing, but not dialed for a while.
    Healthy = 5,
    /// Passed its checks after recovering; waiting for a dial.
    Preferred = 6,
    /// Dialed successfully: the server in use.
    Active = 7,
}

impl ServerState {
    /// Every state, in increasing preference.
    pub const ALL: [Self; 8] = [
        Self::Invalid,
        Self::Failed,
        Self::Standby,
        Self::Unchecked,
        Self::Recovering,
        Self::Healthy,
        Self::Preferred,
        Self::Active,
    ];

    /// The lowercase word used in status output and metric labels.
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

/// What made a server change state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Added to the server list (or became the default).
    Added,
    /// Removed from the server list (or stopped being the default).
    Removed,
    /// A health check passed.
    CheckPassed,
    /// A health check failed.
    CheckFailed,
    /// A connection to it was made.
    DialSucceeded,
    /// A connection to it failed.
    DialFailed,
    /// Preferred for too long without a dial.
    Decayed,
    /// Another server became active and had at least as many connections.
    Yielded,
    /// Its enclave or the chain contradicts it (a forged attestation).
    Untrusted,
}

impl Cause {
    /// Words for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Removed => "removed",
            Self::CheckPassed => "check passed",
            Self::CheckFailed => "check failed",
            Self::DialSucceeded => "dial succeeded",
            Self::DialFailed => "dial failed",
            Self::Decayed => "preferred without a dial for 1m",
            Self::Yielded => "another server became active",
            Self::Untrusted => "attestation forged or not current",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The server.
    pub server: SocketAddr,
    /// Its state before.
    pub from: ServerState,
    /// Its state after.
    pub to: ServerState,
    /// Why.
    pub cause: Cause,
}

/// What the caller must do after an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// State changes, in order (for logs and metrics).
    pub transitions: Vec<Transition>,
    /// Servers whose connections must be closed now (each at most once).
    pub close: Vec<SocketAddr>,
}

impl Effects {
    fn close(&mut self, server: SocketAddr) {
        if !self.close.contains(&server) {
            self.close.push(server);
        }
    }

    /// Appends `other`.
    pub fn merge(&mut self, other: Self) {
        self.transitions.extend(other.transitions);
        for server in other.close {
            self.close(server);
        }
    }
}

/// One server of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// Its address.
    pub address: SocketAddr,
    /// Its state.
    pub state: ServerState,
    /// When it entered that state.
    pub since: Instant,
    /// Current connections through the VIP (counted by the caller from the kernel).
    pub connections: u32,
    /// Ranking score, higher is better (used only when ranking is on).
    pub score: Option<u64>,
    /// Whether it is in the server list (false: only the default server).
    pub listed: bool,
    /// Result of its last health check, if any.
    pub last_check_ok: Option<bool>,
}

impl ServerEntry {
    /// A server the machine does not know yet: invalid and unlisted until
    /// it [enters](Self::enter) its first state.
    const fn unknown(address: SocketAddr, now: Instant) -> Self {
        Self {
            address,
            state: ServerState::Invalid,
            since: now,
            connections: 0,
            score: None,
            listed: false,
            last_check_ok: None,
        }
    }

    /// Moves to `to` (if not there already), recording the transition.
    fn enter(&mut self, to: ServerState, cause: Cause, now: Instant, effects: &mut Effects) {
        if self.state == to {
            return;
        }
        effects.transitions.push(Transition {
            server: self.address,
            from: self.state,
            to,
            cause,
        });
        self.state = to;
        self.since = now;
    }
}

/// Which server new connections go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    /// The server, or `None` when the service has no server at all.
    pub server: Option<SocketAddr>,
    /// The server is known to fail: every other option failed too.
    pub fail_open: bool,
}

/// The servers of one service and their states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceMachine {
    /// Listed servers in list order, then the default server if not listed.
    servers: Vec<ServerEntry>,
    default: Option<SocketAddr>,
    ranking: bool,
    /// One server takes every new connection (`policy: failover`): the
    /// one-active rule and fail-back close connections elsewhere. Off for
    /// `policy: spread`, where several servers are in use at once.
    exclusive: bool,
}

impl ServiceMachine {
    /// A service with `servers` (all unchecked) and `default` (standby unless listed).
    pub fn new(servers: &[SocketAddr], default: Option<SocketAddr>, now: Instant) -> Self {
        let mut machine = Self {
            servers: Vec::new(),
            default: None,
            ranking: false,
            exclusive: true,
        };
        // The initial additions are not transitions anyone needs to hear about.
        let _ = machine.set_servers(servers, now);
        let _ = machine.set_default(default, now);
        machine
    }

    /// Turns score-based ranking on or off (the performance-ranking hook).
    pub const fn set_ranking(&mut self, on: bool) {
        self.ranking = on;
    }

    /// Whether score-based ranking is on.
    pub const fn ranking(&self) -> bool {
        self.ranking
    }

    /// Whether one server takes every new connection (the default). With
    /// `false` (`policy: spread`) several servers may be active and
    /// promotions close no connections; failures and removals still do.
    pub const fn set_exclusive(&mut self, exclusive: bool) {
        self.exclusive = exclusive;
    }

    /// Every server: listed ones in list order, then the unlisted default.
    pub fn servers(&self) -> &[ServerEntry] {
        &self.servers
    }

    /// The server `address`, if known.
    pub fn server(&self, address: SocketAddr) -> Option<&ServerEntry> {
        self.servers.iter().find(|s| s.address == address)
    }

    /// The default server.
    pub const fn default_server(&self) -> Option<SocketAddr> {
        self.default
    }

    /// The listed servers, in list order.
    pub fn listed(&self) -> Vec<SocketAddr> {
        self.servers
            .iter()
            .filter(|s| s.listed)
            .map(|s| s.address)
            .collect()
    }

    fn index(&self, address: SocketAddr) -> Option<usize> {
        self.servers.iter().position(|s| s.address == address)
    }

    /// Moves server `i` to `to`, recording the transition.
    fn transition(
        &mut self,
        i: usize,
        to: ServerState,
        cause: Cause,
        now: Instant,
        effects: &mut Effects,
    ) {
        self.servers[i].enter(to, cause, now, effects);
    }

    /// Replaces the server list. New servers start unchecked; removed ones
    /// become invalid, have their connections closed and are forgotten (the
    /// default server returns to standby instead).
    pub fn set_servers(&mut self, servers: &[SocketAddr], now: Instant) -> Effects {
        let mut effects = Effects::default();
        let mut kept = Vec::with_capacity(servers.len() + 1);
        for &address in servers {
            if kept.iter().any(|s: &ServerEntry| s.address == address) {
                continue;
            }
            // A known server keeps its state; the unlisted default joins the
            // list and is checked like any other.
            let mut entry = match self.index(address) {
                Some(i) => self.servers.remove(i),
                None => ServerEntry::unknown(address, now),
            };
            if !entry.listed {
                entry.listed = true;
                entry.enter(ServerState::Unchecked, Cause::Added, now, &mut effects);
            }
            kept.push(entry);
        }
        // What is left was removed from the list (or is the unlisted default).
        for mut entry in std::mem::take(&mut self.servers) {
            if !entry.listed {
                kept.push(entry);
                continue;
            }
            effects.close(entry.address);
            if Some(entry.address) == self.default {
                entry.listed = false;
                entry.enter(ServerState::Standby, Cause::Removed, now, &mut effects);
                kept.push(entry);
            } else {
                entry.enter(ServerState::Invalid, Cause::Removed, now, &mut effects);
            }
        }
        self.servers = kept;
        effects
    }

    /// Sets (or clears) the default server. A new unlisted default is
    /// standby; an old unlisted default becomes invalid, has its connections
    /// closed and is forgotten.
    pub fn set_default(&mut self, default: Option<SocketAddr>, now: Instant) -> Effects {
        let mut effects = Effects::default();
        if default == self.default {
            return effects;
        }
        if let Some(old) = self.default
            && let Some(i) = self.index(old)
            && !self.servers[i].listed
        {
            let mut entry = self.servers.remove(i);
            effects.close(old);
            entry.enter(ServerState::Invalid, Cause::Removed, now, &mut effects);
        }
        self.default = default;
        if let Some(new) = default
            && self.index(new).is_none()
        {
            let mut entry = ServerEntry::unknown(new, now);
            entry.enter(ServerState::Standby, Cause::Added, now, &mut effects);
            self.servers.push(entry);
        }
        effects
    }

    /// Records a health-check result.
    pub fn check(&mut self, server: SocketAddr, ok: bool, now: Instant) -> Effects {
        let mut effects = Effects::default();
        let Some(i) = self.index(server) else {
            return effects;
        };
        self.servers[i].last_check_ok = Some(ok);
        let state = self.servers[i].state;
        if ok {
            match state {
                ServerState::Failed | ServerState::Unchecked => {
                    self.transition(
                        i,
                        ServerState::Recovering,
                        Cause::CheckPassed,
                        now,
                        &mut effects,
                    );
                }
                ServerState::Recovering => {
                    let to = if self.servers[i].connections > 0 {
                        ServerState::Active
                    } else {
                        ServerState::Preferred
                    };
                    self.transition(i, to, Cause::CheckPassed, now, &mut effects);
                    self.after_promotion(i, now, &mut effects);
                }
                ServerState::Preferred => self.decay(i, now, &mut effects),
                ServerState::Invalid
                | ServerState::Standby
                | ServerState::Healthy
                | ServerState::Active => {}
            }
        } else if matches!(
            state,
            ServerState::Healthy | ServerState::Preferred | ServerState::Active
        ) {
            self.transition(
                i,
                ServerState::Failed,
                Cause::CheckFailed,
                now,
                &mut effects,
            );
            effects.close(server);
        }
        effects
    }

    /// Records proof that `server` cannot be trusted (a forged or outdated
    /// attestation): failed from any usable state, unchecked included, like
    /// a failed dial. K3s spares an unchecked server on a failed health
    /// check because the check may not be up yet; a bad signature is not a
    /// slow start.
    pub fn distrust(&mut self, server: SocketAddr, now: Instant) -> Effects {
        let mut effects = Effects::default();
        if let Some(i) = self.index(server) {
            self.servers[i].last_check_ok = Some(false);
            self.fail_usable(i, Cause::Untrusted, now, &mut effects);
        }
        effects
    }

    /// Fails server `i` and closes its connections if it is usable
    /// (unchecked, recovering, healthy, preferred or active).
    fn fail_usable(&mut self, i: usize, cause: Cause, now: Instant, effects: &mut Effects) {
        if matches!(
            self.servers[i].state,
            ServerState::Unchecked
                | ServerState::Recovering
                | ServerState::Healthy
                | ServerState::Preferred
                | ServerState::Active
        ) {
            self.transition(i, ServerState::Failed, cause, now, effects);
            effects.close(self.servers[i].address);
        }
    }

    /// Records the outcome of a connection attempt to `server`.
    pub fn dial(&mut self, server: SocketAddr, ok: bool, now: Instant) -> Effects {
        let mut effects = Effects::default();
        let Some(i) = self.index(server) else {
            return effects;
        };
        let state = self.servers[i].state;
        if ok {
            match state {
                ServerState::Failed | ServerState::Unchecked => {
                    self.transition(
                        i,
                        ServerState::Recovering,
                        Cause::DialSucceeded,
                        now,
                        &mut effects,
                    );
                }
                ServerState::Healthy | ServerState::Preferred => {
                    self.transition(
                        i,
                        ServerState::Active,
                        Cause::DialSucceeded,
                        now,
                        &mut effects,
                    );
                    self.after_promotion(i, now, &mut effects);
                }
                ServerState::Invalid
                | ServerState::Standby
                | ServerState::Recovering
                | ServerState::Active => {}
            }
        } else {
            self.fail_usable(i, Cause::DialFailed, now, &mut effects);
        }
        effects
    }

    /// Sets the number of connections `server` has now.
    pub fn set_connections(&mut self, server: SocketAddr, connections: u32) {
        if let Some(i) = self.index(server) {
            self.servers[i].connections = connections;
        }
    }

    /// Sets the ranking score of `server`.
    pub fn set_score(&mut self, server: SocketAddr, score: Option<u64>) {
        if let Some(i) = self.index(server) {
            self.servers[i].score = score;
        }
    }

    /// Applies time-based transitions (preferred → healthy).
    pub fn tick(&mut self, now: Instant) -> Effects {
        let mut effects = Effects::default();
        for i in 0..self.servers.len() {
            if self.servers[i].state == ServerState::Preferred {
                self.decay(i, now, &mut effects);
            }
        }
        effects
    }

    fn decay(&mut self, i: usize, now: Instant, effects: &mut Effects) {
        if now.saturating_duration_since(self.servers[i].since) > PREFERRED_DECAY {
            self.transition(i, ServerState::Healthy, Cause::Decayed, now, effects);
        }
    }

    /// Enforces the one-active rule and fail-back after server `i` became
    /// preferred or active.
    fn after_promotion(&mut self, i: usize, now: Instant, effects: &mut Effects) {
        if !self.exclusive {
            return;
        }
        match self.servers[i].state {
            ServerState::Active => {
                for j in 0..self.servers.len() {
                    if j == i {
                        continue;
                    }
                    match self.servers[j].state {
                        ServerState::Active => {
                            let loser = if self.servers[j].connections > self.servers[i].connections
                            {
                                i
                            } else {
                                j
                            };
                            self.transition(
                                loser,
                                ServerState::Preferred,
                                Cause::Yielded,
                                now,
                                effects,
                            );
                            effects.close(self.servers[loser].address);
                        }
                        ServerState::Failed
                        | ServerState::Standby
                        | ServerState::Recovering
                        | ServerState::Healthy => effects.close(self.servers[j].address),
                        ServerState::Invalid | ServerState::Unchecked | ServerState::Preferred => {}
                    }
                }
            }
            ServerState::Preferred if self.servers[i].listed => {
                for j in 0..self.servers.len() {
                    if matches!(
                        self.servers[j].state,
                        ServerState::Failed | ServerState::Standby
                    ) && self.servers[j].connections > 0
                    {
                        effects.close(self.servers[j].address);
                    }
                }
            }
            _ => {}
        }
    }

    /// Orders two servers: better first.
    fn rank(&self, a: &ServerEntry, b: &ServerEntry) -> Ordering {
        b.state
            .cmp(&a.state)
            .then_with(|| {
                if self.ranking {
                    b.score.cmp(&a.score)
                } else {
                    Ordering::Equal
                }
            })
            .then_with(|| b.connections.cmp(&a.connections))
    }

    /// Whether `challenger` may take the selection from `current`: a better
    /// state (healthy, preferred, and recovering with a passing last check
    /// count as one), or the same one and,
    /// with ranking on, a higher score. Connections and list order never
    /// displace a selection.
    fn strictly_better(&self, challenger: &ServerEntry, current: &ServerEntry) -> bool {
        /// Healthy and preferred are one tier: both pass their checks; so
        /// is recovering while its last check passed (its next passing
        /// check makes it preferred).
        const fn tier(server: &ServerEntry) -> ServerState {
            match (server.state, server.last_check_ok) {
                (ServerState::Preferred, _) | (ServerState::Recovering, Some(true)) => {
                    ServerState::Healthy
                }
                (other, _) => other,
            }
        }
        match tier(challenger).cmp(&tier(current)) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => self.ranking && challenger.score > current.score,
        }
    }

    /// Every server, best first (the order K3s dials them in).
    pub fn ranked(&self) -> Vec<&ServerEntry> {
        let mut all: Vec<&ServerEntry> = self.servers.iter().collect();
        // Stable: equal servers keep list order.
        all.sort_by(|a, b| self.rank(a, b));
        all
    }

    /// The servers a new TCP connect may take when the kernel finds the
    /// one it picked suspect, in the order K3s dials them: usable listed
    /// servers by rank, then the default server, then failed listed
    /// servers by rank (fail open). Invalid servers never.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        let ranked = self.ranked();
        let mut candidates: Vec<SocketAddr> = ranked
            .iter()
            .filter(|s| s.listed && s.state > ServerState::Failed)
            .map(|s| s.address)
            .collect();
        if let Some(default) = self
            .default
            .and_then(|d| self.server(d))
            .filter(|d| d.state != ServerState::Invalid)
            && !candidates.contains(&default.address)
        {
            candidates.push(default.address);
        }
        for failed in ranked
            .iter()
            .filter(|s| s.listed && s.state == ServerState::Failed)
        {
            if !candidates.contains(&failed.address) {
                candidates.push(failed.address);
            }
        }
        candidates
    }

    /// Where new connections go with no selection to keep: the best-ranked
    /// usable server; see the module documentation.
    pub fn select(&self) -> Selection {
        self.select_from(None)
    }

    /// Where new connections go when `current` is selected now: `current`
    /// stays while it is listed, above *failed* and in use (active, or
    /// holding connections) and no usable server is
    /// [strictly better](Self::strictly_better). With a selection nobody
    /// uses, the first listed server that no usable server is strictly
    /// better than: K3s dials equal servers in list order, and a selection
    /// nobody uses moves at no cost, so where it settles does not depend on
    /// which check happened to finish first. Without one (`None`), as
    /// [`Self::select`].
    pub fn select_from(&self, current: Option<SocketAddr>) -> Selection {
        let ranked = self.ranked();
        let mut usable = ranked
            .iter()
            .filter(|s| s.listed && s.state > ServerState::Failed);
        let current = current.and_then(|c| self.server(c));
        let kept = current.filter(|c| {
            c.listed
                && c.state > ServerState::Failed
                && (c.state == ServerState::Active || c.connections > 0)
        });
        let best = match (current, kept) {
            (_, Some(kept)) => Some(
                usable
                    .find(|s| self.strictly_better(s, kept))
                    .copied()
                    .unwrap_or(kept),
            ),
            (Some(_), None) => {
                let listed = || {
                    self.servers
                        .iter()
                        .filter(|s| s.listed && s.state > ServerState::Failed)
                };
                listed().find(|s| !listed().any(|other| self.strictly_better(other, s)))
            }
            (None, None) => usable.next().copied(),
        };
        if let Some(best) = best {
            return Selection {
                server: Some(best.address),
                fail_open: false,
            };
        }
        let default = self
            .default
            .and_then(|d| self.server(d))
            .filter(|d| d.state != ServerState::Invalid);
        if let Some(default) = default
            && default.last_check_ok != Some(false)
            && default.state != ServerState::Failed
        {
            return Selection {
                server: Some(default.address),
                fail_open: false,
            };
        }
        // Fail open: every server fails. Prefer a failed listed server by
        // rank, then the default even though it fails.
        if let Some(best) = ranked
            .iter()
            .find(|s| s.listed && s.state == ServerState::Failed)
        {
            return Selection {
                server: Some(best.address),
                fail_open: true,
            };
        }
        Selection {
            server: default.map(|d| d.address),
            fail_open: default.is_some(),
        }
    }
}

#[cfg(test)]
mod tests;
