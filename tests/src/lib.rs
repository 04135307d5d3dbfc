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

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use lb_userspace::status::{ServiceStatus, Status};
use serde::Deserialize;

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
            let _ = lb_userspace::dataplane::cleanup(&self.path);
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
/// message is an HTTP request). Stops listening on [`TcpBackend::stop`] or drop.
pub struct TcpBackend {
    /// Its name, echoed in replies.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpBackend {
    /// Listens on `ip:0`.
    pub fn start(name: &str, ip: std::net::IpAddr) -> Self {
        let listener = TcpListener::bind((ip, 0)).expect("bind backend");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (name_owned, stop_flag) = (name.to_owned(), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop_flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let name = name_owned.clone();
                thread::spawn(move || serve_tcp(stream, &name));
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            stop,
            thread: Some(thread),
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

    /// Closes the listening socket (new connects are refused from now on).
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            // Wake the accept loop so it sees the flag and drops the listener.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = thread.join();
        }
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_tcp(mut stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    let Ok(n) = stream.read(&mut buf) else { return };
    let request = &buf[..n];
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
    pub fn start(name: &str, ip: std::net::IpAddr) -> Self {
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
    /// Where its status API listens.
    pub api: SocketAddr,
}

impl Daemon {
    /// Starts `daas-lb run` with `args`, logging to `log_dir/daemon.log`.
    pub fn spawn(args: &[&str], log_dir: &Path, api: SocketAddr) -> Self {
        let log = log_dir.join(unique("daemon")).with_extension("log");
        let log_file = File::create(&log).expect("create daemon log");
        let child = Command::new(daas_lb_bin())
            .arg("run")
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .expect("spawn daas-lb");
        Self {
            child: Some(child),
            log,
            api,
        }
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
            if let Ok(status) = lb_userspace::status::fetch(self.api) {
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
        self.tmp
            .file(
                "config.yaml",
                &config_yaml(&self.pins, &self.cgroup, services),
            )
            .display()
            .to_string()
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

/// A config file for one test: pins, cgroup and API addresses filled in.
pub fn config_yaml(pins: &PinDir, cgroup: &TestCgroup, services: &str) -> String {
    format!(
        "bpffs_dir: {}\ncgroup: {}\ndata_dir: /tmp/daas-lb-test-data\nmetrics_addr: 127.0.0.1:9464\napi_addr: 127.0.0.1:9465\nservices:\n{services}",
        pins.path().display(),
        cgroup.path().display()
    )
}

/// The status API address used by [`config_yaml`].
pub const API: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9465);
