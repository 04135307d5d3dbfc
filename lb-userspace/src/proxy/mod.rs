//! The userspace proxy data plane (`dataplane: proxy`): the daemon listens
//! on a service's VIP and carries each connection itself, dialing the
//! servers as K3s's agent load balancer does.
//!
//! A [`ProxyHandle`] is one service's proxy: listeners on the VIP (one per
//! CPU, `SO_REUSEPORT`, each served by a thread of its own with a
//! current-thread runtime, so the kernel spreads clients over the threads
//! and a client never leaves its thread), the
//! [`Route`] the controller publishes (the servers in the order K3s dials
//! them: the selected one, then the state machine's candidates), the
//! connections per server, and its counters. Each accepted client gets its
//! own task ([`session`]): dial the route's servers one after the other
//! until one answers (each dial bounded by the route's `dial_timeout`),
//! report every dial's outcome ([`DialReport`], the K3s
//! `recordSuccess`/`recordFailure(reasonDial)`; successes in batches every
//! 20 ms, a failure at once), then copy bytes both ways ([`copy`]: through
//! a buffer, then with `splice`) until either side closes or the
//! controller closes the server's connections ([`ProxyHandle::close`],
//! K3s's `closeAll`). Servers the HTTP CONNECT settings ([`connect`])
//! name a proxy for are dialed through it.
//!
//! Invariants: the proxy never decides where traffic goes; it dials what
//! the controller's route says, in its order. A dial that fails for the
//! daemon's own reasons (out of file descriptors, no buffer space, no
//! local port) is counted as the daemon's own error and is not reported
//! against the server. Dropping the handle stops its listeners and closes
//! every connection it carries.

pub mod connect;
mod copy;
mod session;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc, oneshot},
};
use tracing::warn;

pub use self::connect::ProxyEnv;

/// How late a successful dial may reach the state machine (as the kernel's
/// dial reports: see `controller::dials`).
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Listen backlog of each listener (the kernel caps it at `somaxconn`).
const BACKLOG: i32 = 4096;
/// How long an accept loop waits after the daemon ran out of file
/// descriptors before it accepts again (the pending clients wait in the
/// backlog meanwhile).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Where one service's connections go, in the order K3s dials them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The servers to dial, first to last (empty: clients are closed at
    /// once).
    pub servers: Vec<SocketAddr>,
    /// How long one dial may take.
    pub dial_timeout: Duration,
    /// TCP keepalive of the connections to the servers (zero: off).
    pub keepalive: Duration,
}

/// The outcome of one dial of the proxy, for the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialReport {
    /// The service (`ServiceRuntime::id`).
    pub service_id: u32,
    /// The server dialed.
    pub server: SocketAddr,
    /// `None` on success, else why it failed (`refused`, `timeout`,
    /// `unreachable`, `reset`, `error`; through an HTTP CONNECT proxy:
    /// `proxy_unreachable`, `proxy_refused`, `proxy_protocol`,
    /// `proxy_timeout`).
    pub failure: Option<&'static str>,
    /// From the start of the dial to its outcome.
    pub duration: Duration,
}

/// A service proxy's counters (since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// Clients accepted.
    pub accepted: u64,
    /// Clients closed because no server could be dialed.
    pub no_server: u64,
    /// Clients closed because of the daemon's own errors (file
    /// descriptors, buffers, local ports), not blamed on any server.
    pub local_errors: u64,
    /// Dial reports the controller's queue could not take (the state
    /// machine missed them).
    pub reports_dropped: u64,
    /// Connections carried now.
    pub active: u64,
}

/// One service's proxy; see the module documentation. Dropping it stops
/// the listeners and closes every connection.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    /// One per listener; `Drop` stops and joins them before it closes
    /// what connections are left.
    workers: Vec<Worker>,
    local: SocketAddr,
}

impl ProxyHandle {
    /// Binds `vip` (`threads` sockets with `SO_REUSEPORT`, at least one,
    /// each served by a thread of its own) and starts serving `route` for
    /// service `service_id` (`name` for logs and thread names); servers that
    /// `via` names a proxy for are dialed through it (HTTP CONNECT); dial
    /// outcomes go to `reports`. Binding happens before this returns: a VIP
    /// that cannot be bound is an error here.
    pub fn start(
        name: &str,
        service_id: u32,
        vip: SocketAddr,
        threads: usize,
        route: Route,
        via: Option<Arc<ProxyEnv>>,
        reports: mpsc::Sender<Vec<DialReport>>,
    ) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            service_id,
            via,
            route: RwLock::new(Arc::new(route)),
            servers: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            reports,
            accepted: AtomicU64::new(0),
            no_server: AtomicU64::new(0),
            local_errors: AtomicU64::new(0),
            reports_dropped: AtomicU64::new(0),
            active: AtomicU64::new(0),
        });
        let mut bound = Vec::new();
        for _ in 0..threads.max(1) {
            let socket = bind(vip).with_context(|| {
                format!("service {name}: proxy mode cannot listen on its VIP {vip}")
            })?;
            bound.push(socket);
        }
        let local = bound[0]
            .local_addr()
            .with_context(|| format!("service {name}: the proxy's listener on {vip}"))?;
        let mut workers = Vec::with_capacity(bound.len());
        for (index, listener) in bound.into_iter().enumerate() {
            // Dropping the workers started so far stops them.
            workers.push(Worker::start(name, index, listener, Arc::clone(&shared))?);
        }
        Ok(Self {
            shared,
            workers,
            local,
        })
    }

    /// The address the listeners are bound to.
    pub const fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Makes `route` the one new clients are dialed by.
    pub fn set_route(&self, route: Route) {
        let mut current = self
            .shared
            .route
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if **current != route {
            *current = Arc::new(route);
        }
    }

    /// Closes every connection carried to `server` now (K3s's
    /// `closeAll`); returns how many there were.
    pub fn close(&self, server: SocketAddr) -> u32 {
        // The next connection to `server` starts a new generation.
        let closer = self
            .shared
            .servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&server)
            .map(|carried| std::mem::take(&mut carried.closer));
        closer.map_or(0, |closer| closer.close())
    }

    /// The connections carried to `server` now.
    pub fn connections(&self, server: SocketAddr) -> u32 {
        self.shared
            .servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&server)
            .map_or(0, |carried| carried.closer.count.load(Ordering::Relaxed))
    }

    /// The connections carried to `server` since the proxy started (its
    /// successful dials: what the kernel's connect counter is in eBPF mode).
    pub fn connects(&self, server: SocketAddr) -> u64 {
        self.shared
            .servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&server)
            .map_or(0, |carried| carried.connects)
    }

    /// The counters.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            no_server: s.no_server.load(Ordering::Relaxed),
            local_errors: s.local_errors.load(Ordering::Relaxed),
            reports_dropped: s.reports_dropped.load(Ordering::Relaxed),
            active: s.active.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            worker.stop();
        }
        let all: Vec<Arc<Closer>> = self
            .shared
            .servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, carried)| carried.closer)
            .collect();
        for closer in all {
            closer.close();
        }
    }
}

/// What a service's listeners and sessions share.
struct Shared {
    name: String,
    service_id: u32,
    /// Where the HTTP CONNECT proxy settings say which servers go through a
    /// proxy (`None`: every server is dialed directly).
    via: Option<Arc<ProxyEnv>>,
    route: RwLock<Arc<Route>>,
    /// The connections carried per server: one lock per new connection.
    servers: Mutex<HashMap<SocketAddr, Carried>>,
    /// Dial outcomes not handed over yet.
    pending: Mutex<Vec<DialReport>>,
    reports: mpsc::Sender<Vec<DialReport>>,
    accepted: AtomicU64,
    no_server: AtomicU64,
    local_errors: AtomicU64,
    reports_dropped: AtomicU64,
    active: AtomicU64,
}

impl Shared {
    fn route(&self) -> Arc<Route> {
        Arc::clone(&self.route.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records a dial's outcome for the controller: a failure is handed
    /// over at once (with the successes before it, in order), successes
    /// every [`FLUSH_EVERY`] (a wake-up of the controller per connection
    /// would cost more than the connection).
    fn report(&self, server: SocketAddr, failure: Option<&'static str>, duration: Duration) {
        let report = DialReport {
            service_id: self.service_id,
            server,
            failure,
            duration,
        };
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(report);
        if failure.is_some() {
            self.flush();
        }
    }

    /// Hands the recorded outcomes to the controller without waiting: a
    /// full queue drops them (counted).
    fn flush(&self) {
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        if self.reports.try_send(batch).is_err() {
            self.reports_dropped.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// Registers a connection to `server`: the closer it must watch, and
    /// the count it is in (until [`Closer::leave`]).
    fn enter(&self, server: SocketAddr) -> Arc<Closer> {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        let carried = servers.entry(server).or_default();
        carried.connects += 1;
        carried.closer.count.fetch_add(1, Ordering::Relaxed);
        Arc::clone(&carried.closer)
    }
}

/// The connections carried to one server.
#[derive(Default)]
struct Carried {
    /// The current generation (replaced when its connections are closed).
    closer: Arc<Closer>,
    /// Connections carried since the proxy started.
    connects: u64,
}

/// One generation of a server's connections: closing it ends every one of
/// them (sessions that entered it watch [`Closer::closed`]).
#[derive(Default)]
struct Closer {
    closed: AtomicBool,
    notify: Notify,
    count: AtomicU32,
}

impl Closer {
    /// Ends every connection of this generation; returns how many there were.
    /// Counted before they are woken: a woken connection on another thread
    /// may leave (and uncount itself) before this thread reads the count.
    fn close(&self) -> u32 {
        let count = self.count.load(Ordering::SeqCst);
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        count
    }

    /// Resolves once the generation is closed.
    async fn closed(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// A connection of this generation ended.
    fn leave(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One thread serving one of a service's listeners: a current-thread tokio
/// runtime, so a client's accept, dials and copies stay on the thread
/// whose listener the kernel gave it to (no wake-ups across threads, as
/// HAProxy's threads do with their own listeners). Stopping it drops the
/// runtime, and with it every connection the thread carries.
struct Worker {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn start(
        name: &str,
        index: usize,
        listener: std::net::TcpListener,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("service {name}: a runtime for proxy thread {index}"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{index}-{name}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(err) => {
                            warn!(service = %shared.name, error = %err, "proxy: cannot serve a listener");
                            return;
                        }
                    };
                    tokio::select! {
                        () = accept_loop(listener, Arc::clone(&shared)) => {}
                        () = flush_every(&shared) => {}
                        _ = stopped => {}
                    }
                    shared.flush();
                });
            })
            .with_context(|| format!("service {name}: starting proxy thread {index}"))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (its connections are closed).
    fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listening socket on `vip` with `SO_REUSEPORT` (the other listeners of
/// the service, and a replacement during a reload, share the port) and
/// `IP_FREEBIND` (the VIP need not be configured yet).
fn bind(vip: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(vip), Type::STREAM, Some(Protocol::TCP))
        .context("creating a TCP socket")?;
    socket.set_reuse_address(true).context("SO_REUSEADDR")?;
    socket.set_reuse_port(true).context("SO_REUSEPORT")?;
    if vip.is_ipv6() {
        socket.set_only_v6(true).context("IPV6_V6ONLY")?;
        socket.set_freebind_v6(true).context("IPV6_FREEBIND")?;
    } else {
        socket.set_freebind_v4(true).context("IP_FREEBIND")?;
    }
    socket.set_nonblocking(true).context("O_NONBLOCK")?;
    // Accepted sockets inherit it (Go, and so K3s, sets it on every TCP
    // connection): one system call less per client.
    socket.set_tcp_nodelay(true).context("TCP_NODELAY")?;
    socket.bind(&vip.into()).context("bind")?;
    socket.listen(BACKLOG).context("listen")?;
    Ok(socket.into())
}

/// Hands the recorded dial outcomes over every [`FLUSH_EVERY`], forever.
async fn flush_every(shared: &Shared) {
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        shared.flush();
    }
}

/// Accepts clients until aborted; each gets its own session task.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut out_of_files = false;
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                out_of_files = false;
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(session::run(Arc::clone(&shared), client));
            }
            Err(err) if session::is_local_error(&err) => {
                if !out_of_files {
                    warn!(service = %shared.name, error = %err, "proxy: cannot accept clients (the daemon's own resources); retrying");
                    out_of_files = true;
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            Err(err) => {
                // ECONNABORTED and the like: that client is gone.
                tracing::debug!(service = %shared.name, error = %err, "proxy: accept failed");
            }
        }
    }
}
