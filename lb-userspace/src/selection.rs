//! Which server a service uses: a pure function of the servers' health, the
//! current selection and the default server. No I/O, no clock.
//!
//! Interim policy (the full K3s state machine replaces it): stay on the
//! current server while its checks pass; when it fails, move to the next
//! passing server in config order (after the current one, wrapping around);
//! if none passes, try a server that has not been checked yet; then the
//! default server; otherwise no backend, and connects are refused at once.

use std::net::SocketAddr;

pub use crate::state_machine::ServerState;

/// Result of the most recent health check of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No check has finished yet.
    Unchecked,
    /// The last check passed.
    Passing,
    /// The last check failed.
    Failing,
}

/// One server of a service, in config order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The server's address.
    pub address: SocketAddr,
    /// Its health.
    pub health: Health,
}

/// Picks the backend for new connections.
///
/// `servers` in config order; `default_server` with its health if configured
/// (it may also appear in `servers`); `current` is what the maps hold now.
pub fn select(
    servers: &[Candidate],
    default_server: Option<Candidate>,
    current: Option<SocketAddr>,
) -> Option<SocketAddr> {
    let current_index = current.and_then(|c| servers.iter().position(|s| s.address == c));
    if let Some(i) = current_index
        && servers[i].health != Health::Failing
    {
        return current;
    }
    // Cyclic order starting after the current server (or at the top).
    let start = current_index.map_or(0, |i| i + 1);
    let in_turn = || (0..servers.len()).map(move |k| servers[(start + k) % servers.len()]);
    if let Some(next) = in_turn().find(|s| s.health == Health::Passing) {
        return Some(next.address);
    }
    if let Some(next) = in_turn().find(|s| s.health == Health::Unchecked) {
        return Some(next.address);
    }
    default_server.map(|d| d.address)
}

/// The state shown for a server given the selection.
pub fn state_of(
    candidate: &Candidate,
    in_server_list: bool,
    selected: Option<SocketAddr>,
) -> ServerState {
    if selected == Some(candidate.address) {
        return ServerState::Active;
    }
    if !in_server_list {
        return ServerState::Standby;
    }
    match candidate.health {
        Health::Unchecked => ServerState::Unchecked,
        Health::Passing => ServerState::Healthy,
        Health::Failing => ServerState::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(port: u16, health: Health) -> Candidate {
        Candidate {
            address: SocketAddr::from(([10, 0, 0, 1], port)),
            health,
        }
    }

    #[expect(
        clippy::unnecessary_wraps,
        reason = "selections are Option<SocketAddr>; this keeps the asserts short"
    )]
    fn a(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    use Health::{Failing, Passing, Unchecked};

    #[test]
    fn starts_on_first_server_before_any_check() {
        let servers = [c(1, Unchecked), c(2, Unchecked)];
        assert_eq!(select(&servers, None, None), a(1));
    }

    #[test]
    fn prefers_a_passing_server_over_an_unchecked_one() {
        let servers = [c(1, Unchecked), c(2, Passing)];
        assert_eq!(select(&servers, None, None), a(2));
    }

    #[test]
    fn stays_on_current_while_it_passes_even_if_earlier_servers_pass() {
        let servers = [c(1, Passing), c(2, Passing), c(3, Passing)];
        assert_eq!(select(&servers, None, a(2)), a(2));
        // Unchecked current (just adopted after a restart) is kept too.
        let servers = [c(1, Passing), c(2, Unchecked)];
        assert_eq!(select(&servers, None, a(2)), a(2));
    }

    #[test]
    fn moves_to_the_next_passing_server_in_config_order_wrapping() {
        let servers = [c(1, Passing), c(2, Failing), c(3, Passing)];
        assert_eq!(select(&servers, None, a(2)), a(3));
        let servers = [c(1, Passing), c(2, Passing), c(3, Failing)];
        assert_eq!(select(&servers, None, a(3)), a(1));
    }

    #[test]
    fn falls_back_to_the_default_server_then_to_nothing() {
        let servers = [c(1, Failing), c(2, Failing)];
        let default = c(9, Failing);
        assert_eq!(select(&servers, Some(default), a(1)), a(9));
        assert_eq!(select(&servers, None, a(1)), None);
        assert_eq!(select(&[], None, None), None);
    }

    #[test]
    fn leaves_the_default_server_when_a_server_passes_again() {
        let servers = [c(1, Failing), c(2, Passing)];
        assert_eq!(select(&servers, Some(c(9, Passing)), a(9)), a(2));
    }

    #[test]
    fn default_server_in_the_list_is_an_ordinary_server_too() {
        let servers = [c(1, Failing), c(2, Failing)];
        assert_eq!(select(&servers, Some(c(2, Failing)), a(1)), a(2));
    }

    #[test]
    fn states_follow_health_and_selection() {
        let sel = a(2);
        assert_eq!(state_of(&c(2, Passing), true, sel), ServerState::Active);
        assert_eq!(state_of(&c(1, Passing), true, sel), ServerState::Healthy);
        assert_eq!(state_of(&c(3, Failing), true, sel), ServerState::Failed);
        assert_eq!(
            state_of(&c(4, Unchecked), true, sel),
            ServerState::Unchecked
        );
        assert_eq!(state_of(&c(9, Passing), false, sel), ServerState::Standby);
        assert_eq!(ServerState::Active as u8, 7);
        assert_eq!(ServerState::Invalid as u8, 0);
    }
}
