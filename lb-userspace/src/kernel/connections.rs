//! Connections made through a VIP, as the kernel knows them: counted per
//! (service, server) and closed with `SOCK_DESTROY`.
//!
//! A socket belongs to a service's server when the kernel's `rev_nat` map
//! holds an entry for its cookie and peer address (written by the connect
//! program when it redirected the socket from the VIP) naming that service.
//! Sockets that reach a backend directly — the controller's own probes,
//! other programs — have no such entry and are neither counted nor closed.
//! The dumps ask the kernel for sockets to the given servers only, so the
//! namespace's other sockets are never read.
//!
//! The `sock_diag` dump sees the controller's network namespace only; the
//! socket programs see every process in the cgroup, so clients in other
//! namespaces are load balanced but not counted or closed.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher,
    net::SocketAddr,
    time::Instant,
};

use lb_common::{RevNatKey, RevNatValue, ip_to_bytes};

use crate::kernel::sock_diag::{SockDiag, SocketInfo, Transport, state_mask};

/// TCP states closed on demand: established, SYN sent (a connect still
/// waiting on a dead server), close-wait.
const TCP_CLOSED: u32 = state_mask(1) | state_mask(2) | state_mask(8);
/// The TCP state of a socket whose connect is still waiting.
const TCP_SYN_SENT: u8 = 2;
/// UDP: connected sockets report state 1.
const UDP_CONNECTED: u32 = state_mask(1);

/// The `rev_nat` key the connect program stored for `socket`: its cookie
/// and the peer address exactly as the socket holds it (a v4-mapped peer of
/// an IPv6 socket stays IPv6).
pub fn rev_nat_key(socket: &SocketInfo) -> RevNatKey {
    let (addr, _) = ip_to_bytes(socket.peer.ip());
    RevNatKey {
        cookie: socket.cookie,
        addr,
        port: socket.peer.port(),
        family: socket.family,
        pad: [0; 5],
    }
}

/// A socket connected through a service's VIP to one of its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaVip {
    /// The service id the kernel recorded.
    pub service_id: u32,
    /// The server, as configured (a v4-mapped peer shown as IPv4).
    pub server: SocketAddr,
    /// The socket.
    pub socket: SocketInfo,
}

/// Keeps the sockets to one of `servers` that went through a VIP (pure:
/// the map lookup is passed in; only sockets to a server cost a lookup).
pub fn via_vip<S: BuildHasher>(
    sockets: &[SocketInfo],
    servers: &HashSet<SocketAddr, S>,
    lookup: impl Fn(&RevNatKey) -> Option<RevNatValue>,
) -> Vec<ViaVip> {
    sockets
        .iter()
        .filter(|s| s.peer.port() != 0 && servers.contains(&s.peer_unmapped()))
        .filter_map(|socket| {
            let entry = lookup(&rev_nat_key(socket))?;
            Some(ViaVip {
                service_id: entry.service_id,
                server: socket.peer_unmapped(),
                socket: *socket,
            })
        })
        .collect()
}

/// Connections per (service id, server).
pub fn count(found: &[ViaVip]) -> HashMap<(u32, SocketAddr), u32> {
    let mut counts = HashMap::new();
    for f in found {
        *counts.entry((f.service_id, f.server)).or_insert(0) += 1;
    }
    counts
}

/// What one close found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closed {
    /// Sockets destroyed.
    pub destroyed: usize,
    /// Sockets that were gone before we got to them.
    pub already_gone: usize,
    /// Sockets the kernel refused to destroy.
    pub failed: usize,
    /// Microseconds from the start of the dump to the last destroy.
    pub micros: u128,
}

/// Reads connections from the kernel.
pub struct Connections {
    diag: SockDiag,
}

impl Connections {
    /// Opens the `sock_diag` socket.
    pub fn open() -> anyhow::Result<Self> {
        Ok(Self {
            diag: SockDiag::open()?,
        })
    }

    /// Established TCP and connected UDP sockets to one of `servers` (the
    /// kernel filters, so other sockets of the namespace cost nothing): the
    /// input of [`count`] after [`via_vip`]. Needs no controller state but
    /// the server addresses, so the poller runs it without holding the
    /// controller's lock.
    pub fn established<S: BuildHasher>(
        &mut self,
        servers: &HashSet<SocketAddr, S>,
    ) -> anyhow::Result<Vec<SocketInfo>> {
        let mut sockets = self.diag.established_to(Transport::Tcp, servers)?;
        sockets.extend(self.diag.established_to(Transport::Udp, servers)?);
        Ok(sockets)
    }

    /// Established connections through any VIP to one of `servers`, per
    /// (service id, server).
    pub fn count<S: BuildHasher>(
        &mut self,
        servers: &HashSet<SocketAddr, S>,
        lookup: impl Fn(&RevNatKey) -> Option<RevNatValue>,
    ) -> anyhow::Result<HashMap<(u32, SocketAddr), u32>> {
        Ok(count(&via_vip(
            &self.established(servers)?,
            servers,
            lookup,
        )))
    }

    /// Destroys every connection of `service_id` to each of `servers`
    /// (TCP: established, connecting or half-closed; UDP: connected), so
    /// their clients see an error at once. `aborting` gets the cookie of
    /// each TCP socket still connecting just before it is destroyed (so the
    /// kernel does not report the abort as the server's failed dial).
    pub fn close(
        &mut self,
        service_id: u32,
        servers: &[SocketAddr],
        lookup: impl Fn(&RevNatKey) -> Option<RevNatValue>,
        mut aborting: impl FnMut(u64),
    ) -> anyhow::Result<Closed> {
        let start = Instant::now();
        let mut sockets = self
            .diag
            .dump_to_peers(Transport::Tcp, TCP_CLOSED, servers)?;
        sockets.extend(
            self.diag
                .dump_to_peers(Transport::Udp, UDP_CONNECTED, servers)?,
        );
        let mut closed = Closed::default();
        let wanted: HashSet<SocketAddr> = servers.iter().copied().collect();
        for found in via_vip(&sockets, &wanted, lookup) {
            if found.service_id != service_id {
                continue;
            }
            if found.socket.transport == Transport::Tcp && found.socket.state == TCP_SYN_SENT {
                aborting(found.socket.cookie);
            }
            match self.diag.destroy(&found.socket) {
                Ok(true) => closed.destroyed += 1,
                Ok(false) => closed.already_gone += 1,
                Err(err) => {
                    closed.failed += 1;
                    tracing::warn!(socket = ?found.socket, error = format!("{err:#}"), "could not destroy a socket");
                }
            }
        }
        closed.micros = start.elapsed().as_micros();
        Ok(closed)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use lb_common::{AF_INET, AF_INET6};

    use super::*;

    fn socket(family: u8, peer: SocketAddr, cookie: u64) -> SocketInfo {
        SocketInfo {
            transport: Transport::Tcp,
            family,
            state: 1,
            local: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
            peer,
            interface: 0,
            cookie,
        }
    }

    #[test]
    fn key_keeps_the_address_as_the_socket_holds_it() {
        let v4 = socket(AF_INET, "10.0.0.1:80".parse().unwrap(), 7);
        let key = rev_nat_key(&v4);
        assert_eq!(key.cookie, 7);
        assert_eq!(&key.addr[..4], &[10, 0, 0, 1]);
        assert_eq!(key.addr[4..], [0; 12]);
        assert_eq!((key.port, key.family), (80, AF_INET));

        let mapped = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        let dual = socket(AF_INET6, SocketAddr::from((mapped, 80)), 8);
        let key = rev_nat_key(&dual);
        assert_eq!(key.addr, mapped.octets());
        assert_eq!(key.family, AF_INET6);
    }

    #[test]
    fn only_sockets_with_a_rev_nat_entry_count_per_service_and_server() {
        let server: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let other: SocketAddr = "[fd00::2]:80".parse().unwrap();
        let mapped = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped(), 80));
        let sockets = [
            socket(AF_INET, server, 1),
            socket(AF_INET6, mapped, 2),
            socket(AF_INET, server, 3), // a direct connection (probe)
            socket(AF_INET6, other, 4),
            socket(AF_INET6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), 5),
        ];
        let lookup = |key: &RevNatKey| match key.cookie {
            1 | 2 => Some(RevNatValue {
                service_id: 4,
                ..RevNatValue::default()
            }),
            4 | 5 => Some(RevNatValue {
                service_id: 9,
                ..RevNatValue::default()
            }),
            _ => None,
        };
        let servers: HashSet<SocketAddr> = [server, other].into_iter().collect();
        let found = via_vip(&sockets, &servers, lookup);
        assert_eq!(found.len(), 3);
        // Sockets to other peers are not even looked up.
        let only: HashSet<SocketAddr> = [other].into_iter().collect();
        assert_eq!(via_vip(&sockets, &only, lookup).len(), 1);
        assert_eq!(found[1].server, server, "v4-mapped peer shown as IPv4");
        let counts = count(&found);
        assert_eq!(counts.get(&(4, server)), Some(&2));
        assert_eq!(counts.get(&(9, other)), Some(&1));
        assert_eq!(counts.len(), 2);
    }
}
