//! Test harness for daas-lb integration tests on the real kernel.
//!
//! Every test builds its own little world and tears it down on drop, also
//! when it panics: a network namespace with only loopback (no route out), a
//! child cgroup under the cgroup2 mount (the programs attach there, never to
//! the root), a bpffs pin directory, backend servers on threads, and the real
//! `daas-lb` binary as a child process. Clients run as separate processes
//! placed in the child cgroup.
//!
//! Privileged tests call [`privileged`] first: without root/bpffs/cgroup2 they
//! skip with a message, unless `CI=true`, where that is a failure.
//!
//! For the K3s scenarios: [`Node`] stands in for a K3s server (service
//! listener + HTTP health endpoint on its own `127.0.0.X`),
//! [`HeldConnection`] is a long-lived client connection through a VIP that
//! reports when it is closed under it, [`put_servers`] drives the server-list
//! API (on the control socket), [`metric`] reads Prometheus samples and [`closed_connection_logs`]
//! the daemon's `closed connections` log lines.

use std::{
    fmt::Write as _,
    fs::{self, File, OpenOptions},
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use lb_userspace::api::status::{ServiceStatus, Status};
use serde::Deserialize;

pub mod topology;

pub mod xdp_fixture;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, for cgroups, pins and files.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether privileged tests can run here. Without root, bpffs or cgroup2
/// this returns false (the test should return), except under `CI=true`,
/// where it panics: CI must never skip silently.
pub fn privileged(test: &str) -> bool {
    let missing = missing_capability();
    match missing {
        None => true,
        Some(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: cannot run under CI=true: {why}"
            );
            eprintln!("skipping {test}: {why} (set CI=true to make this a failure)");
            false
        }
    }
}

fn missing_capability() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
    {
        return Some("bpffs is not mounted (mount -t bpf bpf /sys/fs/bpf)".into());
    }
    if cgroup2_root().is_none() {
        return Some("no cgroup2 mount".into());
    }
    None
}

/// The first cgroup2 mount point.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_, mount_point, fs_type) = (f.next()?, f.next()?, f.next()?);
        (fs_type == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// Path of a binary next to the test executable (`target/<profile>/NAME`),
/// or from the environment variable `env`.
fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build it first (`cargo xtask test` does) or set {env}",
        path.display()
    );
    path
}

/// The `daas-lb` binary under test.
pub fn daas_lb_bin() -> PathBuf {
    binary("DAAS_LB_BIN", "daas-lb")
}

/// The test client binary.
pub fn client_bin() -> PathBuf {
    binary("LB_TEST_CLIENT", "lb-test-client")
}

/// Runs a command to completion, panicking with its output on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network namespace private to the calling thread (only loopback, no
/// route out). Threads and processes started from this thread while it is
/// alive live in it. Dropping it moves the thread back.
pub struct NetNs {
    original: OwnedFd,
}

impl NetNs {
    /// Unshares a new network namespace for this thread and brings `lo` up.
    pub fn new() -> Self {
        let original: OwnedFd = File::open("/proc/thread-self/ns/net")
            .expect("open /proc/thread-self/ns/net")
            .into();
        // SAFETY: unshare only changes this thread's namespace membership.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        let ns = Self { original };
        sh("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Adds a veth pair whose far end answers nothing, with `192.0.2.100/24`
    /// on the near end, and returns an address in that subnet: a TCP connect
    /// to it hangs (the SYN goes out and nobody answers), like a dead server.
    pub fn blackhole(&self) -> Ipv4Addr {
        sh(
            "ip",
            &["link", "add", "bh0", "type", "veth", "peer", "name", "bh1"],
        );
        sh("ip", &["addr", "add", "192.0.2.100/24", "dev", "bh0"]);
        sh("ip", &["link", "set", "bh0", "up"]);
        sh("ip", &["link", "set", "bh1", "up"]);
        Ipv4Addr::new(192, 0, 2, 1)
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // SAFETY: `original` is a namespace fd opened above; setns only
        // changes this thread's namespace membership.
        let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            eprintln!("setns back failed: {}", io::Error::last_os_error());
        }
    }
}

/// A child cgroup created for one test; processes in it are killed and the
/// cgroup removed on drop.
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `<cgroup2 root>/daas-lb-test-<unique>`.
    pub fn new() -> Self {
        let root = cgroup2_root().expect("cgroup2 mount");
        let path = root.join(unique("daas-lb-test"));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its cgroup id (inode number), as bpftool shows in `link show`.
    pub fn id(&self) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&self.path).expect("stat cgroup"))
    }

    /// Runs `command` inside this cgroup (the child moves itself in before exec).
    pub fn spawn(&self, command: &mut Command) -> Child {
        let procs = OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .expect("open cgroup.procs");
        let fd = procs.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only
        // calls write(2) on an fd inherited from the parent, which is
        // async-signal-safe; writing "0" moves the calling process.
        unsafe {
            command.pre_exec(move || {
                let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
                if rc == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let child = command.spawn().expect("spawn in cgroup");
        drop(procs);
        child
    }

    /// Runs `command` in this cgroup to completion.
    pub fn output(&self, command: &mut Command) -> Output {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.spawn(command)
            .wait_with_output()
            .expect("wait for child")
    }

    /// Runs the test client in this cgroup.
    pub fn client(&self, args: &[&str]) -> ClientOutcome {
        let output = self.output(Command::new(client_bin()).args(args));
        assert!(
            output.status.success(),
            "lb-test-client {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "client output {:?}: {e}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove cgroup {}", self.path.display());
    }
}

/// What `lb-test-client` printed.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientOutcome {
    /// The exchange completed.
    pub ok: bool,
    /// Error text if not.
    pub error: Option<String>,
    /// errno if not.
    pub errno: Option<i32>,
    /// `connect()` duration in microseconds.
    pub connect_us: Option<u64>,
    /// `getpeername()` of the socket.
    pub peer: Option<String>,
    /// The reply payload.
    pub reply: Option<String>,
    /// `recvfrom()` source address (UDP).
    pub reply_from: Option<String>,
}

/// A bpffs pin directory for one test; whatever is left in it is detached
/// and removed on drop.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// `/sys/fs/bpf/daas-lb-test-<unique>` (not created).
    pub fn new() -> Self {
        Self {
            path: PathBuf::from("/sys/fs/bpf").join(unique("daas-lb-test")),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = lb_userspace::kernel::dataplane::cleanup(&self.path);
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique("daas-lb-test"));
        fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    /// Writes a file in it and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        fs::write(&path, contents).expect("write temp file");
        path
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

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

/// A running `daas-lb run` child process; killed (SIGKILL) on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    log_dir: PathBuf,
    /// The network namespace it runs in (`None`: the caller's).
    netns: Option<PathBuf>,
    /// Where its status API listens.
    pub api: SocketAddr,
    /// Its metrics endpoint ([`METRICS`]).
    pub metrics: SocketAddr,
    /// Its control socket: `<log_dir>/run/control.sock`, where
    /// [`config_yaml`] puts it.
    pub control: PathBuf,
}

impl Daemon {
    /// Starts `daas-lb run` with `args`, logging to `log_dir/daemon-<unique>.log`.
    pub fn spawn(args: &[&str], log_dir: &Path, api: SocketAddr) -> Self {
        Self::spawn_with(args, log_dir, api, None)
    }

    /// Like [`Daemon::spawn`], in the network namespace at `netns` (e.g.
    /// `/run/netns/NAME`, see [`topology::enter_netns_on_exec`]); so is
    /// every [`Daemon::relaunch`].
    pub fn spawn_in_netns(args: &[&str], log_dir: &Path, api: SocketAddr, netns: &Path) -> Self {
        Self::spawn_with(args, log_dir, api, Some(netns.to_path_buf()))
    }

    fn spawn_with(args: &[&str], log_dir: &Path, api: SocketAddr, netns: Option<PathBuf>) -> Self {
        let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        let (child, log) = Self::launch(&args, log_dir, netns.as_deref());
        Self {
            child: Some(child),
            log,
            args,
            log_dir: log_dir.to_path_buf(),
            netns,
            api,
            metrics: METRICS,
            control: control_socket_in(log_dir),
        }
    }

    fn launch(args: &[String], log_dir: &Path, netns: Option<&Path>) -> (Child, PathBuf) {
        let log = log_dir.join(unique("daemon")).with_extension("log");
        let log_file = File::create(&log).expect("create daemon log");
        let mut command = Command::new(daas_lb_bin());
        if let Some(netns) = netns {
            topology::enter_netns_on_exec(&mut command, netns);
        }
        let child = command
            .arg("run")
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .expect("spawn daas-lb");
        (child, log)
    }

    /// Stops it with SIGTERM; it must exit 0 within 10 s. Returns its log.
    pub fn stop(&mut self) -> String {
        self.signal(libc::SIGTERM);
        let exit = self.wait_exit(Duration::from_secs(10));
        let log = self.log();
        assert!(
            exit.success(),
            "daas-lb exited with {exit} on SIGTERM:\n{log}"
        );
        log
    }

    /// Starts it again, after [`Daemon::stop`], with the same arguments.
    /// [`Daemon::log`] shows the new run's log from then on.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "daas-lb is still running");
        let (child, log) = Self::launch(&self.args, &self.log_dir, self.netns.as_deref());
        self.child = Some(child);
        self.log = log;
    }

    /// [`Daemon::stop`], then [`Daemon::relaunch`]; returns the previous run's log.
    pub fn restart(&mut self) -> String {
        let previous = self.stop();
        self.relaunch();
        previous
    }

    /// The status document now (panics if the API does not answer).
    pub fn status(&self) -> Status {
        lb_userspace::api::client::fetch_status(self.api)
            .unwrap_or_else(|e| panic!("GET /status: {e:#}\nlog:\n{}", self.log()))
    }

    /// `GET /metrics` on its metrics address.
    pub fn metrics(&self) -> String {
        lb_userspace::api::client::get(self.metrics, "/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics: {e:#}\nlog:\n{}", self.log()))
    }

    /// How many lines of its log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Polls the log until at least `count` lines contain `needle` (or
    /// panics after `within`); returns those lines.
    pub fn wait_log(&mut self, within: Duration, needle: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            let lines: Vec<String> = log
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_owned)
                .collect();
            if lines.len() >= count {
                return lines;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(code)) = child.try_wait()
            {
                panic!("daas-lb exited early ({code}) waiting for {needle:?} in its log:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {count} log lines with {needle:?}; log:\n{log}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `closed connections` lines of its log so far.
    pub fn closed_connections(&self) -> Vec<ClosedLog> {
        closed_connection_logs(&self.log())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/status` until `ready` accepts it (or panics after `within`).
    pub fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        ready: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(code)) = child.try_wait()
            {
                panic!(
                    "daas-lb exited early ({code}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            if let Ok(status) = lb_userspace::api::client::fetch_status(self.api) {
                if ready(&status) {
                    return status;
                }
                last = Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {within:?} waiting for {what}; last status {last:?}\nlog:\n{}",
            self.log()
        );
    }

    /// Waits until every server of every service has a finished check.
    pub fn wait_checked(&mut self) -> Status {
        self.wait_for(Duration::from_secs(10), "first health checks", |s| {
            s.services
                .iter()
                .all(|svc| svc.servers.iter().all(|srv| srv.last_check.is_some()))
        })
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            let rc = unsafe { libc::kill(child.id() as i32, signal) };
            assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
        }
    }

    /// Waits for the process to exit (bounded).
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon already reaped");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daas-lb did not exit within {within:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The service named `name` in a status document.
pub fn service<'a>(status: &'a Status, name: &str) -> &'a ServiceStatus {
    status
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("service {name} not in status {status:?}"))
}

/// The server addresses of service `name`, in status order.
pub fn server_addresses(status: &Status, name: &str) -> Vec<String> {
    service(status, name)
        .servers
        .iter()
        .map(|s| s.address.clone())
        .collect()
}

/// `bpftool -j ARGS` parsed as JSON.
pub fn bpftool(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = sh("bpftool", &all);
    if out.trim().is_empty() {
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool {args:?} output {out:?}: {e}"))
}

/// Programs attached to a cgroup, as `(attach_type, name)` pairs.
pub fn cgroup_programs(cgroup: &Path) -> Vec<(String, String)> {
    let value = bpftool(&["cgroup", "show", &cgroup.display().to_string()]);
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|p| {
                    (
                        p["attach_type"].as_str().unwrap_or_default().to_owned(),
                        p["name"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Ids of the BPF links attached to the cgroup with id `cgroup_id`.
pub fn cgroup_links(cgroup_id: u64) -> Vec<u64> {
    let value = bpftool(&["link", "show"]);
    value
        .as_array()
        .map(|links| {
            links
                .iter()
                .filter(|l| l["cgroup_id"].as_u64() == Some(cgroup_id))
                .filter_map(|l| l["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything one privileged test needs: a private network namespace, a
/// child cgroup, a pin directory and a temp directory, all removed on drop
/// (the namespace last).
pub struct TestEnv {
    /// The cgroup the programs attach to and clients run in.
    pub cgroup: TestCgroup,
    /// The bpffs pin directory.
    pub pins: PinDir,
    /// Config files and logs.
    pub tmp: TempDir,
    /// The network namespace of the calling thread.
    pub ns: NetNs,
}

impl TestEnv {
    /// The environment, or `None` when privileged tests cannot run here and
    /// `CI` is not `true` (see [`privileged`]).
    pub fn new(test: &str) -> Option<Self> {
        if !privileged(test) {
            return None;
        }
        let ns = NetNs::new();
        Some(Self {
            cgroup: TestCgroup::new(),
            pins: PinDir::new(),
            tmp: TempDir::new(),
            ns,
        })
    }

    /// Writes `config.yaml` with `services` (see [`config_yaml`]) and returns its path.
    pub fn config(&self, services: &str) -> String {
        self.config_with("", services)
    }

    /// Like [`TestEnv::config`], with `top` (whole top-level YAML lines,
    /// e.g. `"connection_poll_interval: 100ms\n"`) in front. Overwrites
    /// `config.yaml` (e.g. before a SIGHUP) and returns its path.
    pub fn config_with(&self, top: &str, services: &str) -> String {
        let yaml = format!(
            "{top}{}",
            config_yaml(&self.pins, &self.cgroup, &self.data_dir(), services)
        );
        self.tmp.file("config.yaml", &yaml).display().to_string()
    }

    /// The daemon's `data_dir` in this environment (`<tmp>/data`, created
    /// by the daemon when it first saves state).
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// The state file the daemon keeps for `service` (`<data_dir>/<service>.json`).
    pub fn state_file(&self, service: &str) -> PathBuf {
        self.data_dir().join(format!("{service}.json"))
    }

    /// Writes the config (see [`TestEnv::config_with`]) and starts `daas-lb run` on it.
    pub fn start_with(&self, top: &str, services: &str) -> Daemon {
        let config = self.config_with(top, services);
        self.spawn(&["--config", &config])
    }

    /// A long-lived connection to `addr` from a client in the test cgroup.
    pub fn hold(&self, addr: &str) -> HeldConnection {
        HeldConnection::open(&self.cgroup, addr)
    }

    /// Starts `daas-lb run ARGS...` logging into the temp directory.
    pub fn spawn(&self, args: &[&str]) -> Daemon {
        Daemon::spawn(args, self.tmp.path(), API)
    }

    /// Writes the config for `services` and starts `daas-lb run` on it.
    pub fn start(&self, services: &str) -> Daemon {
        let config = self.config(services);
        self.spawn(&["--config", &config])
    }
}

/// A config file for one test: pins, cgroup, data dir, API addresses and
/// the control socket (`run/control.sock` beside `data_dir`, see
/// [`control_socket_in`]) filled in.
pub fn config_yaml(pins: &PinDir, cgroup: &TestCgroup, data_dir: &Path, services: &str) -> String {
    let dir = data_dir.parent().expect("data_dir has a parent");
    format!(
        "bpffs_dir: {}\ncgroup: {}\ndata_dir: {}\nmetrics_addr: {METRICS}\napi_addr: {API}\ncontrol_socket: {}\nservices:\n{services}",
        pins.path().display(),
        cgroup.path().display(),
        data_dir.display(),
        control_socket_in(dir).display()
    )
}

/// The control socket of a daemon whose files are in `dir`.
pub fn control_socket_in(dir: &Path) -> PathBuf {
    dir.join("run").join("control.sock")
}

/// The metrics address used by [`config_yaml`].
pub const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

/// The status API address used by [`config_yaml`].
pub const API: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9465);

/// One line `lb-test-client hold` printed.
#[derive(Debug, Clone, Deserialize)]
pub struct HoldEvent {
    /// `connected`, `closed`, `timeout`, or `failed` (no connection made).
    pub event: String,
    /// `getpeername()` of the socket (`connected`).
    pub peer: Option<String>,
    /// `getsockname()` of the socket (`connected`).
    pub local: Option<String>,
    /// The backend's answer to `HOLD` (`connected`).
    pub reply: Option<String>,
    /// `connect()` duration in microseconds (`connected`).
    pub connect_us: Option<u64>,
    /// Error text (`closed` by an error, `failed`).
    pub error: Option<String>,
    /// errno (`closed` by an error, `failed`).
    pub errno: Option<i32>,
    /// The peer closed the connection in order (`closed`).
    pub eof: Option<bool>,
}

/// A [`HoldEvent`] and when the test process read it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the line was read (monotonic).
    pub at: Instant,
    /// When the line was read (wall clock, comparable with the daemon's
    /// RFC 3339 times).
    pub wall: SystemTime,
    /// What the client printed.
    pub event: HoldEvent,
}

/// A long-lived TCP connection made through a VIP by `lb-test-client hold`
/// running in a test cgroup: it connects, sends `HOLD`, and reports when
/// the connection is closed under it. The client is killed on drop.
pub struct HeldConnection {
    child: Child,
    events: mpsc::Receiver<Received>,
    connected: Received,
    closed: Option<Received>,
}

impl HeldConnection {
    /// How long the client keeps the connection before it gives up on its own.
    pub const SECONDS: u64 = 300;

    /// Connects to `addr` from `cgroup`; panics unless the connection is
    /// made and the backend answered `HOLD` within 5 s.
    pub fn open(cgroup: &TestCgroup, addr: &str) -> Self {
        Self::try_open(cgroup, addr).unwrap_or_else(|event| {
            panic!("hold {addr}: no connection: {event:?}");
        })
    }

    /// Connects to `addr` from `cgroup`; the client's `failed` event if no
    /// connection was made.
    pub fn try_open(cgroup: &TestCgroup, addr: &str) -> Result<Self, Box<HoldEvent>> {
        Self::try_open_mode(cgroup, "hold", addr)
    }

    /// A connected UDP socket to `addr` from `cgroup` that sent `HOLD` and
    /// got the backend's reply; "closed" when a receive fails.
    pub fn open_udp(cgroup: &TestCgroup, addr: &str) -> Self {
        Self::try_open_mode(cgroup, "udp-hold", addr).unwrap_or_else(|event| {
            panic!("udp-hold {addr}: no reply: {event:?}");
        })
    }

    fn try_open_mode(cgroup: &TestCgroup, mode: &str, addr: &str) -> Result<Self, Box<HoldEvent>> {
        let mut child = cgroup.spawn(
            Command::new(client_bin())
                .args([mode, addr, &Self::SECONDS.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, events) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let (at, wall) = (Instant::now(), SystemTime::now());
                let event: HoldEvent = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("lb-test-client hold printed {line:?}: {e}"));
                if sender.send(Received { at, wall, event }).is_err() {
                    return;
                }
            }
        });
        let first = match events.recv_timeout(Duration::from_secs(5)) {
            Ok(first) => first,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("hold {addr}: no first line from lb-test-client within 5 s: {err}");
            }
        };
        if first.event.event != "connected" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Box::new(first.event));
        }
        Ok(Self {
            child,
            events,
            connected: first,
            closed: None,
        })
    }

    /// The `connected` event.
    pub fn connected(&self) -> &Received {
        &self.connected
    }

    /// The backend's reply to `HOLD` (e.g. `node1:HOLD\n`).
    pub fn reply(&self) -> &str {
        self.connected.event.reply.as_deref().unwrap_or_default()
    }

    /// The name of the backend that answered (the reply up to `:`).
    pub fn backend(&self) -> &str {
        self.reply().split(':').next().unwrap_or_default()
    }

    /// Takes the next event, waiting at most `within`.
    fn next(&mut self, within: Duration) -> Option<&Received> {
        if self.closed.is_none() {
            match self.events.recv_timeout(within) {
                Ok(received) => {
                    assert!(
                        received.event.event == "closed",
                        "held connection to {}: unexpected event {:?}",
                        self.backend(),
                        received.event
                    );
                    self.closed = Some(received);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let exit = self.child.try_wait();
                    panic!(
                        "held connection to {}: lb-test-client exited without reporting ({exit:?})",
                        self.backend()
                    );
                }
            }
        }
        self.closed.as_ref()
    }

    /// Waits at most `within` for the connection to be closed under the
    /// client; when (as read by the test) and the errno of the failed read
    /// (`None` for an orderly EOF).
    pub fn wait_closed(&mut self, within: Duration) -> Option<(Instant, Option<i32>)> {
        self.next(within).map(|r| (r.at, r.event.errno))
    }

    /// The `closed` event, once seen.
    pub fn closed_event(&self) -> Option<&Received> {
        self.closed.as_ref()
    }

    /// Panics if the connection is closed within `duration` (or was before).
    pub fn assert_open_for(&mut self, duration: Duration) {
        let backend = self.backend().to_owned();
        let opened = self.connected.at;
        if let Some(closed) = self.next(duration) {
            panic!(
                "held connection to {backend} was closed {:?} after it was opened: {:?}",
                closed.at.duration_since(opened),
                closed.event
            );
        }
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `closed connections` line of the daemon's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedLog {
    /// `destroyed=N`.
    pub destroyed: u64,
    /// `micros=M`: from the state change to the last socket destroyed.
    pub micros: u64,
    /// The whole line.
    pub line: String,
}

/// The `closed connections` lines of a daemon log (fields `destroyed=N`
/// and `micros=M`; lines without them are skipped).
pub fn closed_connection_logs(log: &str) -> Vec<ClosedLog> {
    log.lines()
        .filter(|l| l.contains("closed connections"))
        .filter_map(|line| {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|token| token.strip_prefix(name))
                    .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
            };
            Some(ClosedLog {
                destroyed: field("destroyed=")?,
                micros: field("micros=")?,
                line: line.to_owned(),
            })
        })
        .collect()
}

/// `PUT path` with a JSON body on a control socket; the status code and the body.
pub fn http_put(control: &Path, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    lb_userspace::api::client::request(&control.into(), "PUT", path, Some(body))
}

/// `PUT /services/{service}/servers` with `servers` as a JSON list, on the
/// control socket `control`; the status code and the body parsed as JSON
/// (`null` if it is not JSON).
pub fn put_servers(control: &Path, service: &str, servers: &[&str]) -> (u16, serde_json::Value) {
    let body = serde_json::to_string(servers).expect("encode server list");
    let (code, text) = http_put(control, &format!("/services/{service}/servers"), &body)
        .unwrap_or_else(|e| panic!("PUT /services/{service}/servers: {e:#}"));
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` suffixes as written).
    pub name: String,
    /// Labels in written order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// Parses the samples of a Prometheus text exposition (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let Some(open) = line.find('{') else {
        let (name, value) = line.split_once(char::is_whitespace)?;
        return Some(Sample {
            name: name.to_owned(),
            labels: Vec::new(),
            value: parse_value(value)?,
        });
    };
    let (name, rest) = (&line[..open], &line[open + 1..]);
    let mut labels = Vec::new();
    let mut chars = rest.char_indices();
    let mut key = String::new();
    let end = loop {
        let (i, c) = chars.next()?;
        match c {
            '}' => break i,
            ',' | ' ' => {}
            '=' => {
                // Quoted value with \\, \" and \n escapes.
                let (_, quote) = chars.next()?;
                if quote != '"' {
                    return None;
                }
                let mut value = String::new();
                loop {
                    let (_, c) = chars.next()?;
                    match c {
                        '"' => break,
                        '\\' => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        other => value.push(other),
                    }
                }
                labels.push((std::mem::take(&mut key), value));
            }
            other => key.push(other),
        }
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value: parse_value(&rest[end + 1..])?,
    })
}

fn parse_value(text: &str) -> Option<f64> {
    match text.split_whitespace().next()? {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        value => value.parse().ok(),
    }
}

/// The samples of metric `name` that carry all of `labels`.
pub fn samples<'a>(all: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .collect()
}

/// The sum of the samples of metric `name` that carry all of `labels`, or
/// `None` when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let all = parse_metrics(text);
    let found = samples(&all, name, labels);
    (!found.is_empty()).then(|| found.iter().map(|s| s.value).sum())
}

/// Parses the RFC 3339 UTC times the daemon writes
/// (`2026-11-22T05:00:00.123Z`, also without fraction or with `+00:00`).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let nanos = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(9).collect();
        let value: u64 = digits.parse().ok()?;
        value * 10u64.pow(9 - digits.len() as u32)
    };
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// One `services:` entry in the config's YAML: a TCP service `name` on
/// `vip` with `servers`, an optional `default_server` and `health_check`
/// given as an inline YAML mapping (e.g. `"{ kind: tcp, interval: 200ms }"`).
pub fn service_yaml(
    name: &str,
    vip: &str,
    servers: &[SocketAddr],
    default_server: Option<SocketAddr>,
    health_check: &str,
) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let mut yaml = format!(
        "  - name: {name}\n    vip: \"{vip}\"\n    protocol: tcp\n    servers: [{}]\n",
        servers.join(", ")
    );
    if let Some(default) = default_server {
        let _ = writeln!(yaml, "    default_server: \"{default}\"");
    }
    let _ = writeln!(yaml, "    health_check: {health_check}");
    yaml
}

/// An in-process fake Sui full node
/// ([`lb_userspace::demo::fake_node::FakeChain`]) and the tokio runtime it
/// (and any fake enclave started with [`SuiChain::block_on`]) runs on;
/// dropped in that order.
pub struct SuiChain {
    /// The fake full node (registry, checkpoints, objects).
    pub fake: lb_userspace::demo::fake_node::FakeChain,
    /// The runtime its services run on.
    pub runtime: tokio::runtime::Runtime,
}

impl SuiChain {
    /// Starts a fake full node of chain `chain_id`; call it after the test
    /// environment exists so it listens in the test's network namespace.
    pub fn start(chain_id: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let fake = runtime
            .block_on(lb_userspace::demo::fake_node::FakeChain::start(chain_id))
            .expect("start the fake Sui full node");
        Self { fake, runtime }
    }

    /// Another fake full node (a node's own `sui_rpc`) on the same runtime.
    pub fn another(&self, chain_id: &str) -> lb_userspace::demo::fake_node::FakeChain {
        self.runtime
            .block_on(lb_userspace::demo::fake_node::FakeChain::start(chain_id))
            .expect("start a second fake Sui full node")
    }

    /// Runs `future` to completion on the chain's runtime (e.g. starting a
    /// fake enclave, whose server then keeps running on it).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The `chain:` block for this registry, with `extra` lines (indented
    /// by two spaces) appended.
    pub fn yaml(&self, extra: &str) -> String {
        let r = self.fake.registry();
        format!(
            "chain:\n  sui_rpc_url: {}\n  registry: {{ package: \"{}\", module: {}, object: \"{}\" }}\n{extra}",
            self.fake.url(),
            r.package,
            r.module,
            r.object
        )
    }

    /// Waits until the daemon subscribed to checkpoints (the fake counts a
    /// subscription once later checkpoints reach it).
    pub fn wait_subscribed(&self, daemon: &Daemon) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.fake.calls().subscribe.load(Ordering::Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "the daemon never subscribed to checkpoints; log:\n{}",
                daemon.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_are_parsed_with_their_labels() {
        let text = "# TYPE x counter\n\
                    daas_lb_fail_open_total{name=\"a\\\"b\"} 2\n\
                    k3s_loadbalancer_dial_duration_seconds_bucket{name=\"api\",status=\"success\",le=\"+Inf\"} 3\n\
                    k3s_loadbalancer_dial_duration_seconds_sum{name=\"api\",status=\"success\"} 0.0125\n\
                    up 1\n";
        assert_eq!(
            metric(text, "daas_lb_fail_open_total", &[("name", "a\"b")]),
            Some(2.0)
        );
        assert_eq!(
            metric(
                text,
                "k3s_loadbalancer_dial_duration_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Some(3.0)
        );
        assert_eq!(
            metric(text, "k3s_loadbalancer_dial_duration_seconds_sum", &[]),
            Some(0.0125)
        );
        assert_eq!(metric(text, "up", &[]), Some(1.0));
        assert_eq!(metric(text, "up", &[("name", "x")]), None);
    }

    #[test]
    fn rfc3339_times_are_parsed() {
        let t = parse_rfc3339("2026-11-22T05:00:00.123Z").unwrap();
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(secs, Duration::from_millis(1_795_323_600_123));
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:01Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn closed_connection_lines_are_found() {
        let log = "2026-11-22T05:47:29.554939Z  INFO lb_userspace::controller: closed connections \
                   service=\"api\" servers=\"127.0.0.11:6443\" destroyed=1 already_gone=0 failed=0 \
                   micros=1880 destroy_micros=1705\nother line\n";
        let found = closed_connection_logs(log);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].destroyed, found[0].micros), (1, 1880));
    }
}
