//! One proxied client: the K3s dial loop, then the bytes both ways.
//!
//! The route is read once, when the client arrives; its servers are dialed
//! in order, each for at most the route's `dial_timeout` (directly, or
//! through the HTTP CONNECT proxy the settings name for it), until one
//! answers. Every dial is reported (success or the reason it failed); a
//! dial that failed for the daemon's own reasons ([`is_local_error`]) is
//! not, and the client is closed without trying further servers (they
//! would fail the same way). With no server answering the client is closed
//! (K3s returns the dial error to the client the same way). A connection
//! is counted under its server from the moment the dial succeeded until
//! either side closes or the controller closes the server's connections.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, BorrowedFd},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use super::{Route, Shared, connect, copy};

/// How long a connection lives before its server side gets TCP keepalive.
const KEEPALIVE_AFTER: Duration = Duration::from_secs(1);

/// Serves one client until it or its server closes.
pub(super) async fn run(shared: Arc<Shared>, mut client: TcpStream) {
    let route = shared.route();
    // The client's socket has TCP_NODELAY from the listener.
    let Some((server, mut upstream)) = dial_in_order(&shared, &route).await else {
        return;
    };
    let closer = shared.enter(server);
    shared.active.fetch_add(1, Ordering::Relaxed);
    let keepalive = route.keepalive;
    let upstream_fd = upstream.as_raw_fd();
    let copy = copy::both_ways(&mut client, &mut upstream);
    tokio::pin!(copy);
    let demoted = closer.closed();
    tokio::pin!(demoted);
    // Keepalive is set once the connection has lived `KEEPALIVE_AFTER`:
    // a connection that ends sooner never idles long enough for a probe,
    // and spares the three system calls.
    let armed = tokio::time::sleep(KEEPALIVE_AFTER);
    tokio::pin!(armed);
    let mut keepalive_set = keepalive.is_zero();
    loop {
        tokio::select! {
            _ = &mut copy => break,
            () = &mut demoted => break,
            () = &mut armed, if !keepalive_set => {
                keepalive_set = true;
                // SAFETY: `upstream` owns the descriptor and outlives this
                // loop (the copy only borrows it).
                let fd = unsafe { BorrowedFd::borrow_raw(upstream_fd) };
                set_keepalive(fd, keepalive);
            }
        }
    }
    shared.active.fetch_sub(1, Ordering::Relaxed);
    closer.leave();
}

/// Dials `route`'s servers in order; the first that answers, with its
/// connection. `None` (counted) when none did or the daemon could not dial.
async fn dial_in_order(shared: &Shared, route: &Route) -> Option<(SocketAddr, TcpStream)> {
    for &server in &route.servers {
        let start = Instant::now();
        let via = shared.via.as_deref().and_then(|env| env.proxy_for(server));
        let dialed = match via {
            Some(proxy) => connect::dial(proxy, server, route.dial_timeout)
                .await
                .map_err(Failure::Proxy),
            None => {
                match tokio::time::timeout(route.dial_timeout, TcpStream::connect(server)).await {
                    Ok(Ok(upstream)) => Ok(upstream),
                    Ok(Err(err)) => Err(Failure::Direct(err)),
                    Err(_) => Err(Failure::Direct(io::Error::from(io::ErrorKind::TimedOut))),
                }
            }
        };
        let duration = start.elapsed();
        let failure = match dialed {
            Ok(upstream) => {
                shared.report(server, None, duration);
                let _ = upstream.set_nodelay(true);
                return Some((server, upstream));
            }
            Err(failure) => failure,
        };
        if failure.is_local() {
            shared.local_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(service = %shared.name, server = %server, error = %failure, "proxy: could not dial (the daemon's own resources); the server is not blamed");
            return None;
        }
        if let Failure::Proxy(err) = &failure {
            tracing::warn!(service = %shared.name, server = %server, error = %err, "proxy: dial through the HTTP CONNECT proxy failed");
        }
        shared.report(server, Some(failure.reason()), duration);
    }
    shared.no_server.fetch_add(1, Ordering::Relaxed);
    None
}

/// Why one dial failed.
enum Failure {
    /// The direct connect to the server.
    Direct(io::Error),
    /// The dial through the HTTP CONNECT proxy (its errors name the proxy).
    Proxy(connect::ConnectError),
}

impl Failure {
    /// Whether it is the daemon's own problem ([`is_local_error`]).
    fn is_local(&self) -> bool {
        match self {
            Self::Direct(err)
            | Self::Proxy(connect::ConnectError::Unreachable { source: err, .. }) => {
                is_local_error(err)
            }
            Self::Proxy(_) => false,
        }
    }

    /// The reason label of the failed dial.
    fn reason(&self) -> &'static str {
        match self {
            Self::Direct(err) => failure_reason(err),
            Self::Proxy(err) => err.reason(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct(err) => err.fmt(f),
            Self::Proxy(err) => err.fmt(f),
        }
    }
}

/// TCP keepalive as Go's dialer sets it: the first probe after `every`
/// idle, then every `every` (the caller skips a zero `every`: off).
fn set_keepalive(socket: BorrowedFd<'_>, every: Duration) {
    let keepalive = TcpKeepalive::new().with_time(every).with_interval(every);
    let _ = SockRef::from(&socket).set_tcp_keepalive(&keepalive);
}

/// Whether `err` is the daemon's own problem rather than the server's: out
/// of file descriptors or memory, no buffer space, no local address or
/// port left.
pub(super) fn is_local_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// The reason label of a failed dial (`k3s`-style `reasonDial` detail).
fn failure_reason(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::TimedOut => "timeout",
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => "reset",
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => "unreachable",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_own_errors_are_told_from_the_servers() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(is_local_error(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert!(!is_local_error(&io::Error::from_raw_os_error(errno)));
        }
        assert_eq!(
            failure_reason(&io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            "refused"
        );
        assert_eq!(
            failure_reason(&io::Error::from_raw_os_error(libc::EHOSTUNREACH)),
            "unreachable"
        );
        assert_eq!(
            failure_reason(&io::Error::from(io::ErrorKind::TimedOut)),
            "timeout"
        );
    }
}
