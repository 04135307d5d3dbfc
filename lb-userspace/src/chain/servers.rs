//! Which registry nodes become servers of a service (pure): nodes with at
//! least `min_stake_mist`, at their endpoint's host and the service's port,
//! in the VIP's address family.
//!
//! A node's `endpoint` is `host` or `host:port` (`[v6]:port` for IPv6
//! literals); the port written there is ignored, the service's
//! `discovery.port` is used. A host that is not an IP literal is a DNS name
//! the caller resolves ([`Endpoint::Name`]). [`cap`] keeps a service's
//! `discovery.max_servers` of them: the highest stakes, ties by node key.

use std::net::{IpAddr, SocketAddr};

use sui_sdk_types::Address;

use super::{registry::Node, view::RegistryView};

/// One server found in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredServer {
    /// Where connections go: the endpoint's address and the service's port.
    pub address: SocketAddr,
    /// The node's key in the registry.
    pub node: Address,
    /// Its stake, in MIST.
    pub stake: u64,
    /// Its own Sui full node (`""` when none), for the `sui_sync` check.
    pub sui_rpc: String,
    /// Its Nautilus enclave's URL (`""` when none), for the `nautilus`
    /// check.
    pub nautilus_url: String,
    /// Its `Enclave` object (`0x0` when none).
    pub enclave_id: Address,
}

/// The host part of a node's endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An IP literal.
    Ip(IpAddr),
    /// A DNS name to resolve.
    Name(String),
}

/// A node the stake filter let through, before its host is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The node's key.
    pub node: Address,
    /// The host of its endpoint.
    pub host: Endpoint,
    /// Its stake, in MIST.
    pub stake: u64,
    /// Its `sui_rpc` URL.
    pub sui_rpc: String,
    /// Its `nautilus_url`.
    pub nautilus_url: String,
    /// Its `enclave_id`.
    pub enclave_id: Address,
}

/// The host of `endpoint` (`host`, `host:port`, `[v6]` or `[v6]:port`,
/// or a bare IPv6 literal); `None` when it is empty or malformed.
pub fn endpoint_host(endpoint: &str) -> Option<Endpoint> {
    let text = endpoint.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(Endpoint::Ip(ip));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(Endpoint::Ip(addr.ip()));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return inside.parse::<IpAddr>().ok().map(Endpoint::Ip);
    }
    let host = match text.rsplit_once(':') {
        Some((host, port)) if is_port(port) => host,
        Some(_) => return None,
        None => text,
    };
    crate::config::is_dns_name(host).then(|| Endpoint::Name(host.trim_end_matches('.').to_owned()))
}

fn is_port(text: &str) -> bool {
    text.parse::<u16>().is_ok()
}

/// The nodes of `view` with at least `min_stake_mist`, with their parsed
/// hosts, in key order. Nodes with a malformed endpoint are returned in the
/// second list (node key, endpoint) so the caller can log them.
pub fn candidates(
    view: &RegistryView,
    min_stake_mist: u64,
) -> (Vec<Candidate>, Vec<(Address, String)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (key, node) in &view.nodes {
        if node.stake < min_stake_mist {
            continue;
        }
        match endpoint_host(&node.endpoint) {
            Some(host) => ok.push(candidate(*key, node, host)),
            None => bad.push((*key, node.endpoint.clone())),
        }
    }
    (ok, bad)
}

fn candidate(node: Address, info: &Node, host: Endpoint) -> Candidate {
    Candidate {
        node,
        host,
        stake: info.stake,
        sui_rpc: info.sui_rpc.clone(),
        nautilus_url: info.nautilus_url.clone(),
        enclave_id: info.enclave_id,
    }
}

/// The servers of a service from the registry: nodes with at least
/// `min_stake_mist` whose endpoint host is an IP of the VIP's family
/// (`ipv4`), at `port`. Names are resolved by the caller (`resolve` maps a
/// name to its addresses; return an empty list when it does not resolve):
/// the first address of the VIP's family is used. An address two nodes
/// share is used once (the first node in key order keeps it).
pub fn discovered_servers(
    view: &RegistryView,
    min_stake_mist: u64,
    port: u16,
    ipv4: bool,
    mut resolve: impl FnMut(&str) -> Vec<IpAddr>,
) -> Vec<DiscoveredServer> {
    let (candidates, _) = candidates(view, min_stake_mist);
    let mut servers: Vec<DiscoveredServer> = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let ip = match &candidate.host {
            Endpoint::Ip(ip) => Some(unmap(*ip)).filter(|ip| ip.is_ipv4() == ipv4),
            Endpoint::Name(name) => resolve(name)
                .into_iter()
                .map(unmap)
                .find(|ip| ip.is_ipv4() == ipv4),
        };
        let Some(ip) = ip else {
            continue;
        };
        if ip.is_unspecified() || ip.is_multicast() {
            continue;
        }
        let address = SocketAddr::new(ip, port);
        if servers.iter().any(|server| server.address == address) {
            continue;
        }
        servers.push(DiscoveredServer {
            address,
            node: candidate.node,
            stake: candidate.stake,
            sui_rpc: candidate.sui_rpc,
            nautilus_url: candidate.nautilus_url,
            enclave_id: candidate.enclave_id,
        });
    }
    servers
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// At most `max` of `servers` (a service's `discovery.max_servers`): the
/// highest stakes, ties broken by the lower node key, so that the same
/// registry always gives the same servers; the kept ones stay in their
/// order. Returns them and how many were left out.
pub fn cap(mut servers: Vec<DiscoveredServer>, max: usize) -> (Vec<DiscoveredServer>, usize) {
    if servers.len() <= max {
        return (servers, 0);
    }
    let mut ranked: Vec<(u64, Address, usize)> = servers
        .iter()
        .enumerate()
        .map(|(index, server)| (server.stake, server.node, index))
        .collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut keep = vec![false; servers.len()];
    for &(_, _, index) in ranked.iter().take(max) {
        keep[index] = true;
    }
    let left_out = servers.len() - max;
    let mut flags = keep.into_iter();
    servers.retain(|_| flags.next().unwrap_or(false));
    (servers, left_out)
}

/// The sum of the stakes of `servers`, in MIST (u128: no overflow).
pub fn total_stake(servers: &[DiscoveredServer]) -> u128 {
    servers.iter().map(|server| u128::from(server.stake)).sum()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn key(byte: u8) -> Address {
        Address::new([byte; Address::LENGTH])
    }

    fn node(endpoint: &str, stake: u64) -> Node {
        Node {
            operator: key(0xee),
            endpoint: endpoint.to_owned(),
            stake,
            sui_rpc: format!("http://{endpoint}:9000"),
            nautilus_url: String::new(),
            enclave_id: Address::ZERO,
        }
    }

    fn view(nodes: &[(u8, &str, u64)]) -> RegistryView {
        RegistryView {
            nodes: nodes
                .iter()
                .map(|(k, endpoint, stake)| (key(*k), node(endpoint, *stake)))
                .collect::<BTreeMap<_, _>>(),
            synced: true,
            last_error: None,
        }
    }

    fn no_dns(_: &str) -> Vec<IpAddr> {
        Vec::new()
    }

    fn addresses(servers: &[DiscoveredServer]) -> Vec<String> {
        servers.iter().map(|s| s.address.to_string()).collect()
    }

    #[test]
    fn endpoints_parse_to_hosts() {
        let ip = |text: &str| Some(Endpoint::Ip(text.parse().unwrap()));
        let name = |text: &str| Some(Endpoint::Name(text.to_owned()));
        assert_eq!(endpoint_host("10.0.0.1"), ip("10.0.0.1"));
        assert_eq!(endpoint_host(" 10.0.0.1:8080 "), ip("10.0.0.1"));
        assert_eq!(endpoint_host("fd00::1"), ip("fd00::1"));
        assert_eq!(endpoint_host("[fd00::1]"), ip("fd00::1"));
        assert_eq!(endpoint_host("[fd00::1]:9000"), ip("fd00::1"));
        assert_eq!(endpoint_host("node-1.example"), name("node-1.example"));
        assert_eq!(endpoint_host("node-1.example.:443"), name("node-1.example"));
        for bad in [
            "",
            "host:port",
            "[fd00::1",
            "[fd00::1]x",
            "-bad.example",
            "a b",
            "x:99999",
        ] {
            assert_eq!(endpoint_host(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn nodes_below_the_minimum_stake_are_never_servers() {
        let view = view(&[
            (1, "10.0.0.1", 5),
            (2, "10.0.0.2", 4),
            (3, "10.0.0.3", u64::MAX),
        ]);
        let servers = discovered_servers(&view, 5, 6443, true, no_dns);
        assert_eq!(addresses(&servers), ["10.0.0.1:6443", "10.0.0.3:6443"]);
        assert_eq!(servers[0].node, key(1));
        assert_eq!(servers[0].stake, 5);
        assert_eq!(servers[0].sui_rpc, "http://10.0.0.1:9000");
        assert_eq!(total_stake(&servers), 5 + u128::from(u64::MAX));
        assert_eq!(discovered_servers(&view, 0, 1, true, no_dns).len(), 3);
        assert!(discovered_servers(&view, u64::MAX, 1, true, no_dns).len() == 1);
    }

    #[test]
    fn the_service_port_and_family_are_used_and_names_resolved() {
        let view = view(&[
            (1, "10.0.0.1:9999", 1),
            (2, "[fd00::2]:1", 1),
            (3, "node.example", 1),
            (4, "gone.example", 1),
            (5, "::ffff:10.0.0.5", 1),
            (6, "bad endpoint", 1),
            (7, "0.0.0.0", 1),
        ]);
        let resolve = |name: &str| match name {
            "node.example" => vec!["fd00::3".parse().unwrap(), "10.0.0.3".parse().unwrap()],
            _ => Vec::new(),
        };
        let v4 = discovered_servers(&view, 0, 6443, true, resolve);
        assert_eq!(
            addresses(&v4),
            ["10.0.0.1:6443", "10.0.0.3:6443", "10.0.0.5:6443"]
        );
        let v6 = discovered_servers(&view, 0, 6443, false, resolve);
        assert_eq!(addresses(&v6), ["[fd00::2]:6443", "[fd00::3]:6443"]);
        let (ok, bad) = candidates(&view, 0);
        assert_eq!(ok.len(), 6);
        assert_eq!(bad, [(key(6), "bad endpoint".to_owned())]);
    }

    #[test]
    fn a_shared_address_is_used_once() {
        let view = view(&[(1, "10.0.0.1", 1), (2, "10.0.0.1:1", 2)]);
        let servers = discovered_servers(&view, 0, 80, true, no_dns);
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].node, key(1));
    }

    #[test]
    fn the_cap_keeps_the_highest_stakes_ties_by_node_key() {
        let view = view(&[
            (1, "10.0.0.1", 10),
            (2, "10.0.0.2", 30),
            (3, "10.0.0.3", 20),
            (4, "10.0.0.4", 30),
            (5, "10.0.0.5", 10),
        ]);
        let servers = discovered_servers(&view, 0, 80, true, no_dns);
        let (kept, left_out) = cap(servers.clone(), 3);
        // 30 (key 2), 30 (key 4), 20 (key 3); in their original order.
        assert_eq!(
            addresses(&kept),
            ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]
        );
        assert_eq!(left_out, 2);
        // Equal stakes: the lower key wins.
        let (kept, left_out) = cap(servers.clone(), 4);
        assert_eq!(
            addresses(&kept),
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]
        );
        assert_eq!(left_out, 1);
        // Not over the cap: all, nothing left out.
        assert_eq!(cap(servers.clone(), 5), (servers.clone(), 0));
        assert_eq!(cap(servers.clone(), 9), (servers.clone(), 0));
        // The same set whatever the input order.
        let mut reversed = servers;
        reversed.reverse();
        let (kept, _) = cap(reversed, 3);
        let mut got = addresses(&kept);
        got.sort();
        assert_eq!(got, ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
    }
}
