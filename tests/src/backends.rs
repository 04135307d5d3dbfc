//! Backend servers on threads: [`TcpBackend`] (echo, HTTP, held
//! connections), [`BulkBackend`] (whole-stream echo for large payloads and
//! connection churn), [`UdpBackend`] (datagram echo) and [`Node`], a K3s
//! server stand-in with a service listener and an HTTP health endpoint.
//!
//! Every listener and connection thread stops on drop: listeners are closed
//! before drop returns, held connections notice within `CONN_POLL`.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// A TCP backend on a thread: answers each connection's first message with
/// `<name>:<message>` (or an HTTP response whose body is `<name>` when the
/// message is an HTTP request). A first message starting with `HOLD` keeps
/// the connection open: it is answered the same way, then every further
/// message is echoed as `<name>:<message>` until the client closes.
/// Stops listening on [`TcpBackend::stop`] or drop; held connections are
/// closed on drop.
pub struct TcpBackend {
    /// Its name, echoed in replies.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    listener: AcceptLoop,
    conns: Arc<ConnState>,
}

impl TcpBackend {
    /// Listens on `ip:0`.
    pub fn start(name: &str, ip: IpAddr) -> Self {
        Self::bind(name, SocketAddr::new(ip, 0))
    }

    /// Listens on `addr` (port 0: any free port).
    pub fn bind(name: &str, addr: SocketAddr) -> Self {
        let conns = Arc::new(ConnState::default());
        let listener = serve_echo(name, addr, &conns);
        Self {
            name: name.to_owned(),
            addr: listener.addr,
            listener,
            conns,
        }
    }

    /// On 127.0.0.1.
    pub fn v4(name: &str) -> Self {
        Self::start(name, Ipv4Addr::LOCALHOST.into())
    }

    /// On `::1`.
    pub fn v6(name: &str) -> Self {
        Self::start(name, Ipv6Addr::LOCALHOST.into())
    }

    /// Closes the listening socket (new connects are refused from now on;
    /// held connections stay open).
    pub fn stop(&mut self) {
        self.listener.stop();
    }

    /// Connections held open (`HOLD`) right now.
    pub fn held(&self) -> usize {
        self.conns.held.load(Ordering::SeqCst)
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.listener.stop();
        self.conns.closing.store(true, Ordering::SeqCst);
    }
}

/// Shared by a backend's connection threads.
#[derive(Default)]
struct ConnState {
    /// Set on drop: held connections close.
    closing: AtomicBool,
    /// Connections held open now.
    held: AtomicUsize,
}

/// How often connection threads look at [`ConnState::closing`].
const CONN_POLL: Duration = Duration::from_millis(50);

/// A listening socket whose connections are handled on threads; closed on
/// [`AcceptLoop::stop`] or drop.
struct AcceptLoop {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AcceptLoop {
    fn spawn(listener: TcpListener, handler: impl Fn(TcpStream) + Clone + Send + 'static) -> Self {
        let addr = listener.local_addr().expect("local addr");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !stop_flag.load(Ordering::SeqCst) {
                if !readable(&listener, CONN_POLL) {
                    continue;
                }
                let Ok((stream, _)) = listener.accept() else {
                    continue;
                };
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                let handler = handler.clone();
                thread::spawn(move || handler(stream));
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listening socket; when it returns, connects are refused.
    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
    }
}

/// Waits up to `timeout` for `listener` to have a connection to accept.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `fd` is one live pollfd for a socket that outlives the call.
    let rc = unsafe { libc::poll(&raw mut fd, 1, timeout.as_millis() as libc::c_int) };
    rc > 0 && fd.revents & libc::POLLIN != 0
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `addr` and serves the echo protocol of [`TcpBackend`] on it.
fn serve_echo(name: &str, addr: SocketAddr, conns: &Arc<ConnState>) -> AcceptLoop {
    let listener =
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind backend {name} on {addr}: {e}"));
    let (name, conns) = (name.to_owned(), Arc::clone(conns));
    AcceptLoop::spawn(listener, move |stream| serve_tcp(stream, &name, &conns))
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn serve_tcp(mut stream: TcpStream, name: &str, conns: &ConnState) {
    let _ = stream.set_read_timeout(Some(CONN_POLL));
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    let n = loop {
        match stream.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if is_timeout(&e) => {
                if conns.closing.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return;
                }
            }
            Err(_) => return,
        }
    };
    let request = &buf[..n];
    if request.starts_with(b"HOLD") {
        conns.held.fetch_add(1, Ordering::SeqCst);
        hold(stream, name, request, conns);
        conns.held.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let reply = if request.starts_with(b"GET ") || request.starts_with(b"HEAD ") {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
            name.len()
        )
    } else {
        format!("{name}:{}", String::from_utf8_lossy(request))
    };
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

/// A held connection: echo every message until the client closes (or the
/// backend is dropped).
fn hold(mut stream: TcpStream, name: &str, first: &[u8], conns: &ConnState) {
    let mut message = first.to_vec();
    let mut buf = [0u8; 4096];
    loop {
        let reply = format!("{name}:{}", String::from_utf8_lossy(&message));
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    message = buf[..n].to_vec();
                    break;
                }
                Err(e) if is_timeout(&e) => {
                    if conns.closing.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

/// The port of every [`Node`]'s HTTP health endpoint.
pub const HEALTH_PORT: u16 = 8080;

/// A K3s server stand-in on its own loopback address (`127.0.0.X`; all of
/// 127/8 is on `lo`): the service listener of a [`TcpBackend`] on `ip:port`
/// (echo, `HOLD` for long-lived connections) and an HTTP health endpoint on
/// `ip:8080` that answers `GET /healthz` with 200 `ok` or 503 `down`
/// ([`Node::set_healthy`]). Everything closes on drop.
pub struct Node {
    /// Its name, echoed in replies (`<name>:<payload>`).
    pub name: String,
    /// The service address (`ip:port`), as listed in the config.
    pub addr: SocketAddr,
    /// The health endpoint (`ip:8080`).
    pub health_addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    conns: Arc<ConnState>,
    service: Option<AcceptLoop>,
    health: AcceptLoop,
}

impl Node {
    /// Starts a healthy node with its service on `ip:port` and its health
    /// endpoint on `ip:8080`.
    pub fn start(name: &str, ip: Ipv4Addr, port: u16) -> Self {
        let addr = SocketAddr::new(ip.into(), port);
        let health_addr = SocketAddr::new(ip.into(), HEALTH_PORT);
        let healthy = Arc::new(AtomicBool::new(true));
        let listener = TcpListener::bind(health_addr)
            .unwrap_or_else(|e| panic!("bind health endpoint of {name} on {health_addr}: {e}"));
        let health = {
            let healthy = Arc::clone(&healthy);
            AcceptLoop::spawn(listener, move |stream| serve_health(stream, &healthy))
        };
        let conns = Arc::new(ConnState::default());
        let service = Some(serve_echo(name, addr, &conns));
        Self {
            name: name.to_owned(),
            addr,
            health_addr,
            healthy,
            conns,
            service,
            health,
        }
    }

    /// Makes `/healthz` answer 200 `ok` (true) or 503 `down` (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// What `/healthz` answers now.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Closes the service listener: connects to [`Node::addr`] are refused
    /// from now on. Established connections and the health endpoint stay.
    pub fn stop_service(&mut self) {
        if let Some(mut service) = self.service.take() {
            service.stop();
        }
    }

    /// Listens on the service address again (after [`Node::stop_service`]).
    pub fn start_service(&mut self) {
        if self.service.is_none() {
            self.service = Some(serve_echo(&self.name, self.addr, &self.conns));
        }
    }

    /// Whether the service listener is open.
    pub fn service_running(&self) -> bool {
        self.service.is_some()
    }

    /// A whole-node outage: health 503 and the service listener closed.
    pub fn down(&mut self) {
        self.set_healthy(false);
        self.stop_service();
    }

    /// The node is back: service listening and health 200.
    pub fn up(&mut self) {
        self.start_service();
        self.set_healthy(true);
    }

    /// Connections held open (`HOLD`) to its service right now.
    pub fn held(&self) -> usize {
        self.conns.held.load(Ordering::SeqCst)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_service();
        self.health.stop();
        self.conns.closing.store(true, Ordering::SeqCst);
    }
}

/// Answers one HTTP request on the health endpoint.
fn serve_health(mut stream: TcpStream, healthy: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or_default();
    let (status, body) = if path != "/healthz" {
        ("404 Not Found", "not found")
    } else if healthy.load(Ordering::SeqCst) {
        ("200 OK", "ok")
    } else {
        ("503 Service Unavailable", "down")
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

/// A UDP backend on a thread: answers each datagram with `<name>:<payload>`
/// (empty datagrams, i.e. health probes, get no answer).
pub struct UdpBackend {
    /// Its name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    /// Listens on `ip:0`.
    pub fn start(name: &str, ip: IpAddr) -> Self {
        let socket = UdpSocket::bind((ip, 0)).expect("bind udp backend");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = socket.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (name_owned, stop_flag) = (name.to_owned(), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop_flag.load(Ordering::SeqCst) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if n == 0 {
                    continue;
                }
                let reply = format!("{name_owned}:{}", String::from_utf8_lossy(&buf[..n]));
                let _ = socket.send_to(reply.as_bytes(), peer);
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The most a [`BulkBackend`] reads from one connection.
pub const BULK_MAX: usize = 64 << 20;

/// A TCP backend for streams: each connection's whole request (up to
/// [`BULK_MAX`] bytes, read until the client shuts its side down) is
/// answered with `<name>\n` followed by [`bulk_reply`] of the request, then
/// the backend closes. The client closes first, so `TIME_WAIT` stays on the
/// client side, as with short HTTP/1.0 requests.
///
/// A fixed pool of `workers` threads accepts on one listener (no thread per
/// connection), so it also serves connection churn; each connection is
/// bounded by [`BULK_IO_TIMEOUT`] per read/write. Stops on drop.
pub struct BulkBackend {
    /// Its name, the first line of every reply.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

/// A [`BulkBackend`] connection's longest wait for the peer.
pub const BULK_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The payload part of a [`BulkBackend`]'s reply to `request`: every byte
/// complemented, in reverse order (so a reply can only be right when every
/// request byte arrived, in order).
pub fn bulk_reply(request: &[u8]) -> Vec<u8> {
    request.iter().rev().map(|b| !b).collect()
}

impl BulkBackend {
    /// Listens on `addr` (in the calling thread's network namespace) with
    /// `workers` (1..=64) accepting threads.
    pub fn bind(name: &str, addr: SocketAddr, workers: usize) -> Self {
        assert!((1..=64).contains(&workers), "1..=64 workers");
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("bind bulk backend {name} on {addr}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|_| {
                let (listener, stop, served) = (
                    Arc::clone(&listener),
                    Arc::clone(&stop),
                    Arc::clone(&served),
                );
                let name = name.to_owned();
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if !readable(&listener, CONN_POLL) {
                            continue;
                        }
                        let Ok((stream, _)) = listener.accept() else {
                            continue;
                        };
                        if serve_bulk(stream, &name).is_ok() {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Self {
            name: name.to_owned(),
            addr,
            served,
            stop,
            workers,
        }
    }

    /// Connections answered in full so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for BulkBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn serve_bulk(mut stream: TcpStream, name: &str) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(BULK_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(BULK_IO_TIMEOUT))?;
    let mut request = Vec::new();
    (&mut stream)
        .take(BULK_MAX as u64)
        .read_to_end(&mut request)?;
    let mut reply = Vec::with_capacity(name.len() + 1 + request.len());
    reply.extend_from_slice(name.as_bytes());
    reply.push(b'\n');
    reply.extend(bulk_reply(&request));
    stream.write_all(&reply)?;
    stream.shutdown(Shutdown::Write)
}
