//! Active health probes. Each probe returns a result with a human-readable
//! reason, shown in status and logs.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::net::{TcpStream, UdpSocket};

use crate::config::HealthCheckKind;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether the server counts as reachable.
    pub ok: bool,
    /// Why, in a few words.
    pub reason: String,
    /// How long the probe took.
    pub duration: Duration,
}

/// Runs one probe of `kind` against `address`, bounded by `timeout`.
pub async fn probe(kind: HealthCheckKind, address: SocketAddr, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let (ok, reason) = match kind {
        HealthCheckKind::Tcp => probe_tcp(address, timeout).await,
        HealthCheckKind::Udp => probe_udp(address, timeout).await,
    };
    ProbeResult {
        ok,
        reason,
        duration: start.elapsed(),
    }
}

/// TCP: the server accepts a connection within the timeout.
async fn probe_tcp(address: SocketAddr, timeout: Duration) -> (bool, String) {
    let start = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(_stream)) => (
            true,
            format!("tcp connect ok in {}", millis(start.elapsed())),
        ),
        Ok(Err(err)) => (false, format!("tcp connect failed: {err}")),
        Err(_) => (
            false,
            format!("tcp connect timed out after {}", millis(timeout)),
        ),
    }
}

/// UDP: reachable unless the network says otherwise. An empty datagram is
/// sent on a connected socket; an ICMP port/host unreachable comes back as
/// `ECONNREFUSED`/`EHOSTUNREACH` on the next receive. A reply, or silence for
/// the whole timeout, counts as reachable.
async fn probe_udp(address: SocketAddr, timeout: Duration) -> (bool, String) {
    let local: IpAddr = if address.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = match UdpSocket::bind((local, 0)).await {
        Ok(s) => s,
        Err(err) => return (false, format!("udp socket: {err}")),
    };
    if let Err(err) = socket.connect(address).await {
        return (false, format!("udp connect failed: {err}"));
    }
    if let Err(err) = socket.send(&[]).await {
        return (false, format!("udp send failed: {err}"));
    }
    let mut buf = [0u8; 512];
    match tokio::time::timeout(timeout, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => (true, format!("udp reply of {n} bytes")),
        Ok(Err(err)) if err.kind() == io::ErrorKind::ConnectionRefused => {
            (false, "udp port unreachable (ICMP)".to_owned())
        }
        Ok(Err(err)) => (false, format!("udp error: {err}")),
        Err(_) => (true, format!("no ICMP error within {}", millis(timeout))),
    }
}

/// Formats a duration as milliseconds with one decimal.
pub fn millis(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::net::{TcpListener, UdpSocket};

    use super::*;

    #[tokio::test]
    async fn tcp_probe_passes_for_a_listener_and_fails_for_a_closed_port() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ok = probe(HealthCheckKind::Tcp, addr, Duration::from_secs(2)).await;
        assert!(ok.ok, "{ok:?}");
        drop(listener);
        let bad = probe(HealthCheckKind::Tcp, addr, Duration::from_secs(2)).await;
        assert!(!bad.ok, "{bad:?}");
        assert!(bad.reason.contains("refused"), "{bad:?}");
    }

    #[tokio::test]
    async fn udp_probe_fails_only_on_port_unreachable() {
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = server.local_addr().unwrap();
        let ok = probe(HealthCheckKind::Udp, addr, Duration::from_millis(200)).await;
        assert!(ok.ok, "{ok:?}");
        drop(server);
        let closed: SocketAddr = addr;
        let bad = probe(HealthCheckKind::Udp, closed, Duration::from_secs(2)).await;
        assert!(!bad.ok, "{bad:?}");
        assert!(bad.reason.contains("unreachable"), "{bad:?}");
    }
}
