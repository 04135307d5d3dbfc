//! The test's world: privilege checks, unique names, the binaries under
//! test, and the guards that build and tear down one test's environment (a
//! private network namespace, a child cgroup, a bpffs pin directory, a temp
//! directory) plus the daemon config that points into them.
//!
//! Every guard removes what it made on drop, also while unwinding from a
//! panic; [`TestEnv`] drops the namespace last.

use std::{
    fs::{self, File, OpenOptions},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::{
    clients::{ClientOutcome, HeldConnection},
    daemon::Daemon,
};

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

/// A child process killed (and reaped) on drop.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl KillOnDrop {
    /// Spawns `command` (in `cgroup` when given, so the cgroup's socket
    /// programs see it).
    pub(crate) fn spawn(
        command: &mut Command,
        cgroup: Option<&TestCgroup>,
    ) -> anyhow::Result<Self> {
        Ok(Self(match cgroup {
            Some(cgroup) => cgroup.spawn(command),
            None => anyhow::Context::with_context(command.spawn(), || {
                format!("spawning {}", command.get_program().to_string_lossy())
            })?,
        }))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

/// Writes `config.yaml` in `tmp` — `top` (e.g. an `xdp:` block, or
/// nothing), then [`config_yaml`] with `tmp/data` and `services` — and
/// returns its path.
pub fn write_config(
    tmp: &TempDir,
    pins: &PinDir,
    cgroup: &TestCgroup,
    top: &str,
    services: &str,
) -> String {
    let yaml = format!(
        "{top}{}",
        config_yaml(pins, cgroup, &tmp.path().join("data"), services)
    );
    tmp.file("config.yaml", &yaml).display().to_string()
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

/// The uid and gid of `nobody`: the unprivileged user of the security tests.
pub const NOBODY: u32 = 65534;

/// A copy of `daas-lb` in `env`'s temp directory that `nobody` can run
/// (the build tree may sit below a directory only root can enter).
pub fn binary_for_nobody(env: &TestEnv) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = env.tmp.path().join("bin");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("daas-lb");
    fs::copy(daas_lb_bin(), &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// Runs `program args` as `nobody` (from `/`), to completion.
///
/// A freshly copied binary can be briefly "busy" (`ETXTBSY`): a process
/// another test thread forks while the copy's write descriptor is open
/// holds it until that child execs. That passes within milliseconds, so
/// the exec is retried (at most 50 times, 20 ms apart).
pub fn as_nobody(program: &Path, args: &[&str]) -> Output {
    let mut tries = 0;
    loop {
        match Command::new(program)
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .current_dir("/")
            .output()
        {
            Ok(output) => return output,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("running {} as nobody: {e}", program.display()),
        }
    }
}

/// `curl -s -o /dev/null -w %{http_code} --max-time 5 ARGS...`, as `nobody`
/// or as the caller: the HTTP code it printed, and its whole output.
pub fn curl_code(nobody: bool, args: &[&str]) -> (String, Output) {
    let mut all = vec![
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ];
    all.extend_from_slice(args);
    let out = if nobody {
        as_nobody(Path::new("curl"), &all)
    } else {
        Command::new("curl").args(&all).output().expect("run curl")
    };
    (String::from_utf8_lossy(&out.stdout).into_owned(), out)
}
