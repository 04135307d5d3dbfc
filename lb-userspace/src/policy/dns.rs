//! DNS names among a service's servers: what one lookup of a name means for
//! the service's server list. Pure: the lookups are done elsewhere
//! (`controller/dns.rs`), the time is passed in.
//!
//! Invariants:
//! - A name's addresses are those of the VIP's address family only, sorted
//!   and without duplicates; each becomes a server (with the name's port).
//! - An address that cannot be a server (the caller's rule: a VIP of the
//!   same protocol, multicast, unspecified, port 0) is dropped and reported.
//! - A failed lookup (no answer, timeout, no usable address of the family)
//!   keeps the last good addresses and records the error; the next good
//!   lookup clears it.
//! - The service's list is its literal servers first, then each name's
//!   addresses not already listed, in the order the names were written.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

use crate::config::ServerName;

/// The answer of one lookup of a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The addresses the resolver returned, in its order.
    Found(Vec<IpAddr>),
    /// Why the lookup failed (resolver error, timeout), in words.
    Failed(String),
}

/// What a service knows of one of its names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NameState {
    /// The last good addresses (sorted, deduplicated); empty before the
    /// first good lookup.
    pub addresses: Vec<SocketAddr>,
    /// The last good lookup's first usable address in the resolver's order
    /// (what a `default_server` written as this name uses).
    pub first: Option<SocketAddr>,
    /// The last lookup's error, or `None` when it succeeded.
    pub error: Option<String>,
    /// When the last good lookup was made.
    pub resolved_at: Option<SystemTime>,
}

/// What [`NameState::update`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// The addresses (or the first one) changed.
    pub addresses_changed: bool,
    /// The error changed (appeared, changed or cleared).
    pub error_changed: bool,
    /// Addresses dropped, each with the reason.
    pub dropped: Vec<(SocketAddr, String)>,
}

impl NameState {
    /// Takes the `lookup` of `name` for a service whose VIP is of the
    /// family `ipv4`; `refuse` says why an address cannot be one of its
    /// servers. A failed lookup, or one without a usable address, keeps
    /// the last good addresses and records why.
    pub fn update(
        &mut self,
        name: &ServerName,
        lookup: &Lookup,
        ipv4: bool,
        refuse: impl Fn(SocketAddr) -> Option<String>,
        now: SystemTime,
    ) -> Update {
        let mut update = Update::default();
        let family = if ipv4 { "IPv4" } else { "IPv6" };
        let error = match lookup {
            Lookup::Failed(reason) => Some(reason.clone()),
            Lookup::Found(found) => {
                let mut usable: Vec<SocketAddr> = Vec::new();
                let mut of_family = 0_usize;
                for ip in found.iter().filter(|ip| ip.is_ipv4() == ipv4) {
                    of_family += 1;
                    let address = SocketAddr::new(*ip, name.port);
                    if let Some(reason) = refuse(address) {
                        if !update.dropped.iter().any(|(a, _)| *a == address) {
                            update.dropped.push((address, reason));
                        }
                    } else if !usable.contains(&address) {
                        usable.push(address);
                    }
                }
                if of_family == 0 {
                    Some(format!(
                        "{} resolves to no {family} address (the VIP's family){}",
                        name.host,
                        if found.is_empty() {
                            String::new()
                        } else {
                            format!(", only {found:?}")
                        }
                    ))
                } else if usable.is_empty() {
                    Some(format!(
                        "{} resolves to no address that can be a server ({})",
                        name.host,
                        update
                            .dropped
                            .iter()
                            .map(|(address, reason)| format!("{address}: {reason}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))
                } else {
                    let first = usable.first().copied();
                    let sorted: Vec<SocketAddr> = usable
                        .into_iter()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    update.addresses_changed = sorted != self.addresses || first != self.first;
                    self.addresses = sorted;
                    self.first = first;
                    self.resolved_at = Some(now);
                    None
                }
            }
        };
        update.error_changed = error != self.error;
        self.error = error;
        update
    }
}

/// The service's servers: `literal` first, then the addresses of each
/// name (in `names`' order) not already listed.
pub fn servers(literal: &[SocketAddr], names: &[&NameState]) -> Vec<SocketAddr> {
    let mut all = literal.to_vec();
    for name in names {
        for address in &name.addresses {
            if !all.contains(address) {
                all.push(*address);
            }
        }
    }
    all
}

/// The service's default server: the literal one, or the first address of
/// its name (none while the name never resolved).
pub fn default_server(literal: Option<SocketAddr>, name: Option<&NameState>) -> Option<SocketAddr> {
    literal.or_else(|| name.and_then(|state| state.first))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn name(host: &str, port: u16) -> ServerName {
        ServerName {
            host: host.to_owned(),
            port,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn none(_: SocketAddr) -> Option<String> {
        None
    }

    #[test]
    fn several_addresses_become_several_sorted_servers_of_the_vip_family() {
        let mut state = NameState::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let found = Lookup::Found(vec![
            ip("10.0.0.3"),
            ip("fd00::1"),
            ip("10.0.0.2"),
            ip("10.0.0.3"),
        ]);
        let update = state.update(&name("b.test", 80), &found, true, none, now);
        assert!(update.addresses_changed);
        assert!(!update.error_changed);
        assert_eq!(state.addresses, [addr("10.0.0.2:80"), addr("10.0.0.3:80")]);
        assert_eq!(state.first, Some(addr("10.0.0.3:80")));
        assert_eq!(state.resolved_at, Some(now));
        // The same answer again changes nothing.
        let again = state.update(&name("b.test", 80), &found, true, none, now);
        assert_eq!(again, Update::default());
        // IPv6 VIP: only the IPv6 address.
        let mut v6 = NameState::default();
        v6.update(&name("b.test", 80), &found, false, none, now);
        assert_eq!(v6.addresses, [addr("[fd00::1]:80")]);
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_good_addresses_until_it_resolves_again() {
        let mut state = NameState::default();
        let at = SystemTime::UNIX_EPOCH;
        let good = Lookup::Found(vec![ip("10.0.0.2")]);
        state.update(&name("b.test", 80), &good, true, none, at);
        let failed = Lookup::Failed("cannot resolve b.test: not found".to_owned());
        let later = at + Duration::from_secs(30);
        let update = state.update(&name("b.test", 80), &failed, true, none, later);
        assert!(update.error_changed);
        assert!(!update.addresses_changed);
        assert_eq!(state.addresses, [addr("10.0.0.2:80")]);
        assert_eq!(state.resolved_at, Some(at));
        assert_eq!(
            state.error.as_deref(),
            Some("cannot resolve b.test: not found")
        );
        // The same error again is no change (logged once).
        let same = state.update(&name("b.test", 80), &failed, true, none, later);
        assert!(!same.error_changed);
        // Only addresses of the other family: an error, last good kept.
        let v6_only = Lookup::Found(vec![ip("fd00::9")]);
        state.update(&name("b.test", 80), &v6_only, true, none, later);
        assert!(
            state.error.as_deref().unwrap().contains("no IPv4 address"),
            "{:?}",
            state.error
        );
        assert_eq!(state.addresses, [addr("10.0.0.2:80")]);
        // Resolves again, to a new address: error cleared, address replaced.
        let moved = Lookup::Found(vec![ip("10.0.0.3")]);
        let update = state.update(&name("b.test", 80), &moved, true, none, later);
        assert!(update.error_changed && update.addresses_changed);
        assert_eq!(state.error, None);
        assert_eq!(state.addresses, [addr("10.0.0.3:80")]);
        assert_eq!(state.resolved_at, Some(later));
    }

    #[test]
    fn refused_addresses_are_dropped_and_reported() {
        let vip = addr("127.0.0.1:80");
        let refuse = |address: SocketAddr| {
            (address == vip || address.ip().is_multicast() || address.ip().is_unspecified())
                .then(|| "cannot be a server".to_owned())
        };
        let mut state = NameState::default();
        let found = Lookup::Found(vec![
            ip("127.0.0.1"),
            ip("224.0.0.1"),
            ip("10.0.0.2"),
            ip("0.0.0.0"),
        ]);
        let update = state.update(
            &name("b.test", 80),
            &found,
            true,
            refuse,
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(state.addresses, [addr("10.0.0.2:80")]);
        assert_eq!(
            update.dropped.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            [
                addr("127.0.0.1:80"),
                addr("224.0.0.1:80"),
                addr("0.0.0.0:80")
            ]
        );
        // Only refused addresses: an error, nothing kept from this lookup.
        let mut only_vip = NameState::default();
        only_vip.update(
            &name("b.test", 80),
            &Lookup::Found(vec![ip("127.0.0.1")]),
            true,
            refuse,
            SystemTime::UNIX_EPOCH,
        );
        assert!(only_vip.addresses.is_empty());
        assert!(
            only_vip
                .error
                .as_deref()
                .unwrap()
                .contains("no address that can be a server")
        );
    }

    #[test]
    fn literal_servers_come_first_then_each_names_new_addresses() {
        let one = NameState {
            addresses: vec![addr("10.0.0.1:80"), addr("10.0.0.5:80")],
            first: Some(addr("10.0.0.5:80")),
            ..NameState::default()
        };
        let two = NameState {
            addresses: vec![addr("10.0.0.4:80"), addr("10.0.0.5:80")],
            first: Some(addr("10.0.0.4:80")),
            ..NameState::default()
        };
        let never = NameState::default();
        assert_eq!(
            servers(&[addr("10.0.0.1:80")], &[&one, &never, &two]),
            [
                addr("10.0.0.1:80"),
                addr("10.0.0.5:80"),
                addr("10.0.0.4:80")
            ]
        );
        assert_eq!(default_server(None, Some(&one)), Some(addr("10.0.0.5:80")));
        assert_eq!(
            default_server(Some(addr("10.0.0.9:80")), Some(&one)),
            Some(addr("10.0.0.9:80"))
        );
        assert_eq!(default_server(None, Some(&never)), None);
    }
}
