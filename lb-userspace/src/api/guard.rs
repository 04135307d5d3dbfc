//! Limits on every HTTP listener (TCP and the control socket), so that
//! hostile or slow clients can neither exhaust the daemon nor lock out an
//! operator:
//!
//! - at most [`MAX_CONNECTIONS`] connections per listener. When the table is
//!   full, the oldest connection that has not yet sent a whole request head
//!   is closed to make room (slow-loris clients lose their place, a client
//!   that sends its request at once never does); when every connection is
//!   inside a request, the new one is closed at once;
//! - a request head must arrive within [`HEAD_TIMEOUT`] of the accept, and a
//!   connection lives at most [`CONNECTION_TIMEOUT`] (one request per
//!   connection: every response says `Connection: close`), so nothing is
//!   held open by a client that trickles bytes or never reads its response;
//! - request bodies are capped at [`MAX_BODY`] by the routers.
//!
//! [`Guarded`] wraps a listener; its connections are [`GuardedIo`]s, whose
//! reads and writes fail once evicted or past a deadline. [`Conn`] is the
//! connect info handlers see: who the peer is ([`Peer`]), and the hook that
//! marks the request head as received.

use std::{
    collections::BTreeMap,
    fmt, io,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use futures::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixStream},
    time::Sleep,
};
use tracing::{debug, warn};

use super::Refusals;

/// Most connections one listener holds at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Time from accept to a complete request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection (it carries one request).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body (a server list of 4,095 IPv6 entries is ~200 KiB;
/// mutations carry far less in practice, so lists that long go in the config).
pub const MAX_BODY: usize = 64 * 1024;
/// Warnings about closed slow or excess connections: at most one per this.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A process on the control socket, as the kernel saw it at `connect()`.
    Unix(Credentials),
}

/// A Unix socket peer's credentials (`SO_PEERCRED` and `SO_PEERGROUPS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Process id, when the kernel knows it in our pid namespace.
    pub pid: Option<i32>,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(creds) => {
                write!(f, "uid {} gid {}", creds.uid, creds.gid)?;
                if let Some(pid) = creds.pid {
                    write!(f, " pid {pid}")?;
                }
                Ok(())
            }
        }
    }
}

/// A connection type whose peer can be named.
pub trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The peer, read from the kernel.
    fn peer(&self) -> io::Result<Peer>;
}

impl PeerStream for TcpStream {
    fn peer(&self) -> io::Result<Peer> {
        self.peer_addr().map(Peer::Tcp)
    }
}

impl PeerStream for UnixStream {
    fn peer(&self) -> io::Result<Peer> {
        let cred = self.peer_cred()?;
        Ok(Peer::Unix(Credentials {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            groups: peer_groups(self)?,
        }))
    }
}

/// The peer's supplementary groups (`SO_PEERGROUPS`, Linux 4.13+).
fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    for _ in 0..2 {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for `len` bytes; the kernel writes at
        // most that many and stores the length it needs (or wrote) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            return Err(err);
        }
        groups.resize(count, 0);
    }
    Err(io::Error::other("SO_PEERGROUPS kept growing"))
}

/// One open connection's shared state.
#[derive(Debug, Default)]
struct Slot {
    /// The request head arrived (the router was called).
    started: AtomicBool,
    /// Closed to make room: its I/O fails from now on.
    evicted: AtomicBool,
    /// Wakes its task when evicted.
    waker: AtomicWaker,
}

/// The open connections of one listener, oldest first.
#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Arc<Slot>>,
    /// Closed slow or excess connections not yet reported, and when the
    /// last warning went out.
    unreported: u64,
    last_warning: Option<Instant>,
}

/// Shared between a listener and its connections.
#[derive(Debug)]
struct Shared {
    listener: &'static str,
    table: Mutex<Table>,
    refusals: Arc<Refusals>,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection, evicting the oldest one still waiting
    /// for its request head when the table is full; `None`: no room.
    fn admit(&self) -> Option<(u64, Arc<Slot>)> {
        let mut table = self.table();
        let mut evicted = false;
        if table.open.len() >= MAX_CONNECTIONS {
            let victim = table
                .open
                .iter()
                .find(|(_, slot)| !slot.started.load(Ordering::Acquire))
                .map(|(id, _)| *id);
            let Some(slot) = victim.and_then(|id| table.open.remove(&id)) else {
                drop(table);
                self.closed_early("over_capacity");
                return None;
            };
            slot.evicted.store(true, Ordering::Release);
            slot.waker.wake();
            evicted = true;
        }
        let id = table.next_id;
        table.next_id += 1;
        let slot = Arc::new(Slot::default());
        table.open.insert(id, Arc::clone(&slot));
        drop(table);
        if evicted {
            self.closed_early("evicted");
        }
        Some((id, slot))
    }

    /// Counts a connection closed before it was served, and warns about such
    /// closes at most once per [`WARN_EVERY`] (outside the table's lock).
    fn closed_early(&self, reason: &'static str) {
        self.refusals.count(self.listener, reason);
        let report = {
            let mut table = self.table();
            table.unreported += 1;
            let now = Instant::now();
            let due = table
                .last_warning
                .is_none_or(|last| now.duration_since(last) >= WARN_EVERY);
            due.then(|| {
                table.last_warning = Some(now);
                std::mem::take(&mut table.unreported)
            })
        };
        if let Some(closed) = report {
            warn!(
                listener = self.listener,
                closed,
                reason,
                limit = MAX_CONNECTIONS,
                head_timeout = ?HEAD_TIMEOUT,
                "closed slow or excess HTTP connections (too slow to send a request, or too many at once)"
            );
        }
    }

    fn release(&self, id: u64) {
        self.table().open.remove(&id);
    }
}

/// A listener with the limits of this module.
pub struct Guarded<L> {
    inner: L,
    shared: Arc<Shared>,
}

impl<L> Guarded<L> {
    /// Wraps `inner`; `listener` names it in logs and metrics.
    pub fn new(inner: L, listener: &'static str, refusals: Arc<Refusals>) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                listener,
                table: Mutex::default(),
                refusals,
            }),
        }
    }
}

impl<L> Listener for Guarded<L>
where
    L: Listener,
    L::Io: PeerStream,
{
    type Io = GuardedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            let peer = match io.peer() {
                Ok(peer) => peer,
                Err(err) => {
                    debug!(listener = self.shared.listener, error = %err, "dropped a connection whose peer is unknown");
                    continue;
                }
            };
            let Some((id, slot)) = self.shared.admit() else {
                continue;
            };
            let now = tokio::time::Instant::now();
            let io = GuardedIo {
                inner: io,
                id,
                slot,
                shared: Arc::clone(&self.shared),
                peer,
                head_deadline: Box::pin(tokio::time::sleep_until(now + HEAD_TIMEOUT)),
                deadline: Box::pin(tokio::time::sleep_until(now + CONNECTION_TIMEOUT)),
                ended: None,
            };
            return (io, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection of a [`Guarded`] listener.
pub struct GuardedIo<S> {
    inner: S,
    id: u64,
    slot: Arc<Slot>,
    shared: Arc<Shared>,
    peer: Peer,
    head_deadline: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
    /// Why it ended, once it has (counted and logged once).
    ended: Option<&'static str>,
}

impl<S> GuardedIo<S> {
    /// `Some(error)` once the connection must end: evicted, no request head
    /// in time, or past its lifetime. Registers `cx` for all three.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if let Some(reason) = self.ended {
            return Some(io::Error::new(io::ErrorKind::TimedOut, reason));
        }
        self.slot.waker.register(cx.waker());
        let reason = if self.slot.evicted.load(Ordering::Acquire) {
            Some("closed to make room for a new connection")
        } else if !self.slot.started.load(Ordering::Acquire)
            && self.head_deadline.as_mut().poll(cx).is_ready()
        {
            self.shared.closed_early("head_timeout");
            Some("no request head in time")
        } else if self.deadline.as_mut().poll(cx).is_ready() {
            self.shared.refusals.count(self.shared.listener, "timeout");
            Some("connection lasted too long")
        } else {
            None
        };
        reason.map(|reason| {
            self.ended = Some(reason);
            debug!(listener = self.shared.listener, peer = %self.peer, reason, "closing HTTP connection");
            io::Error::new(io::ErrorKind::TimedOut, reason)
        })
    }
}

impl<S> Drop for GuardedIo<S> {
    fn drop(&mut self) {
        self.shared.release(self.id);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(err) = self.expired(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(err) = self.expired(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(err) = self.expired(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What handlers know about their connection (`ConnectInfo<Conn>`).
#[derive(Debug, Clone)]
pub struct Conn {
    /// Who is asking.
    pub peer: Peer,
    slot: Arc<Slot>,
}

impl Conn {
    /// The request head arrived: the connection may no longer be evicted
    /// and is past its head deadline.
    pub fn mark_started(&self) {
        self.slot.started.store(true, Ordering::Release);
    }
}

impl<L> Connected<IncomingStream<'_, Guarded<L>>> for Conn
where
    L: Listener,
    L::Io: PeerStream,
{
    fn connect_info(stream: IncomingStream<'_, Guarded<L>>) -> Self {
        let io = stream.io();
        Self {
            peer: io.peer.clone(),
            slot: Arc::clone(&io.slot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            listener: "test",
            table: Mutex::default(),
            refusals: Arc::new(Refusals::default()),
        }
    }

    #[test]
    fn a_full_table_evicts_the_oldest_connection_without_a_request_head() {
        let shared = shared();
        let slots: Vec<(u64, Arc<Slot>)> = (0..MAX_CONNECTIONS)
            .map(|_| shared.admit().expect("room"))
            .collect();
        // The two oldest are inside a request: the third is the victim.
        slots[0].1.started.store(true, Ordering::Release);
        slots[1].1.started.store(true, Ordering::Release);
        let (id, _) = shared.admit().expect("room after an eviction");
        assert_eq!(id, MAX_CONNECTIONS as u64);
        assert!(slots[2].1.evicted.load(Ordering::Acquire));
        assert!(!slots[0].1.evicted.load(Ordering::Acquire));
        assert!(!slots[3].1.evicted.load(Ordering::Acquire));
        assert_eq!(shared.table().open.len(), MAX_CONNECTIONS);
        assert_eq!(shared.refusals.get("test", "evicted"), 1);

        // Everyone inside a request: no room, nobody evicted.
        for slot in shared.table().open.values() {
            slot.started.store(true, Ordering::Release);
        }
        assert!(shared.admit().is_none());
        assert_eq!(shared.refusals.get("test", "over_capacity"), 1);
        // A connection that ends frees its slot.
        shared.release(5);
        assert!(shared.admit().is_some());
    }

    #[test]
    fn peers_name_themselves() {
        let tcp = Peer::Tcp("127.0.0.1:4242".parse().unwrap());
        assert_eq!(tcp.to_string(), "127.0.0.1:4242");
        let unix = Peer::Unix(Credentials {
            uid: 65534,
            gid: 65534,
            pid: Some(7),
            groups: vec![],
        });
        assert_eq!(unix.to_string(), "uid 65534 gid 65534 pid 7");
    }

    #[tokio::test]
    async fn unix_peers_carry_their_credentials() {
        let (a, _b) = UnixStream::pair().unwrap();
        let Peer::Unix(creds) = a.peer().unwrap() else {
            panic!("not a unix peer");
        };
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!((creds.uid, creds.gid), (uid, gid));
        assert_eq!(creds.pid, Some(std::process::id() as i32));
    }
}
