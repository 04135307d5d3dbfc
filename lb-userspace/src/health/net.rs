//! `tcp` and `udp` probes: a TCP connect within the timeout (or, for a
//! server dialed through an HTTP CONNECT proxy, a tunnel the proxy opens
//! within it); an empty datagram that passes unless an ICMP error comes back
//! in time (always direct: proxy mode has no UDP services).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use tokio::{
    net::{TcpStream, UdpSocket},
    time::timeout_at,
};

use super::{Budget, http::describe_io, millis};
use crate::proxy::connect::{self, ProxyUrl};

/// TCP: the server accepts a connection within the budget.
pub(super) async fn probe_tcp(address: SocketAddr, budget: Budget) -> (bool, String) {
    let start = Instant::now();
    match timeout_at(budget.deadline, TcpStream::connect(address)).await {
        Ok(Ok(_stream)) => (
            true,
            format!("tcp connect ok in {}", millis(start.elapsed())),
        ),
        Ok(Err(error)) => (false, format!("tcp connect {}", describe_io(&error))),
        Err(_) => (
            false,
            format!("tcp connect timed out after {}", millis(budget.timeout)),
        ),
    }
}

/// TCP through `proxy`: it answers 2xx to `CONNECT address` within the
/// budget (the proxy connected to the server). A failure's reason is the
/// dialer's error, which names the proxy and the server.
pub(super) async fn probe_tcp_via(
    proxy: &ProxyUrl,
    address: SocketAddr,
    budget: Budget,
) -> (bool, String) {
    let start = Instant::now();
    match connect::dial(proxy, address, budget.remaining()).await {
        Ok(_tunnel) => (
            true,
            format!("tcp via proxy {proxy} ok in {}", millis(start.elapsed())),
        ),
        Err(error) => (false, format!("tcp: {error}")),
    }
}

/// UDP: reachable unless the network says otherwise. An empty datagram is
/// sent on a connected socket; an ICMP port/host unreachable comes back as
/// `ECONNREFUSED`/`EHOSTUNREACH` on the next receive. A reply, or silence for
/// the whole budget, counts as reachable.
pub(super) async fn probe_udp(address: SocketAddr, budget: Budget) -> (bool, String) {
    let local: IpAddr = if address.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = match UdpSocket::bind((local, 0)).await {
        Ok(socket) => socket,
        Err(error) => return (false, format!("udp socket: {error}")),
    };
    if let Err(error) = socket.connect(address).await {
        return (false, format!("udp connect failed: {error}"));
    }
    if let Err(error) = socket.send(&[]).await {
        return (false, format!("udp send failed: {error}"));
    }
    let mut buf = [0u8; 512];
    match timeout_at(budget.deadline, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => (true, format!("udp reply of {n} bytes")),
        Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionRefused => {
            (false, "udp port unreachable (ICMP)".to_owned())
        }
        Ok(Err(error)) if error.kind() == io::ErrorKind::HostUnreachable => {
            (false, "udp host unreachable (ICMP)".to_owned())
        }
        Ok(Err(error)) => (false, format!("udp error: {error}")),
        Err(_) => (
            true,
            format!("no ICMP error within {}", millis(budget.timeout)),
        ),
    }
}
