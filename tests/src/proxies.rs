//! The proxies the benchmarks compare daas-lb with, as child processes:
//! Debian's HAProxy in TCP mode ([`haproxy_config`]) and the K3s-style
//! proxy of `tests/k3s-proxy` ([`build_k3s_proxy`], [`k3s_proxy_command`]),
//! plus finding them ([`find_program`]) and waiting until one answers
//! ([`wait_answered`]).
//!
//! Invariants: a [`Proxy`] is killed and reaped on drop, and by the kernel
//! (`PR_SET_PDEATHSIG`) if the bench dies first; its output goes to a log
//! file that errors quote. Every wait is bounded.

use std::{
    fmt::Write as _,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::failover::ByteServer;

/// The benches' two one-byte servers, preferred first (port
/// [`BENCH_SERVER_PORT`]; see [`bind_bench_servers`]).
pub const BENCH_SERVERS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(127, 0, 0, 10), Ipv4Addr::new(127, 0, 0, 11)];
/// Their port.
pub const BENCH_SERVER_PORT: u16 = 7000;
/// Where the benches' HAProxy listens.
pub const HAPROXY_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7443);
/// Where the benches' K3s-style proxy listens.
pub const K3S_PROXY_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7444);

/// The benches' servers ([`BENCH_SERVERS`], in the calling thread's
/// network namespace) and their addresses.
pub fn bind_bench_servers() -> Result<(Vec<ByteServer>, Vec<SocketAddr>)> {
    let servers = BENCH_SERVERS
        .iter()
        .map(|&ip| ByteServer::bind(SocketAddr::new(ip.into(), BENCH_SERVER_PORT)))
        .collect::<Result<Vec<_>>>()?;
    let addrs = servers.iter().map(|s| s.addr).collect();
    Ok((servers, addrs))
}

/// How to install both proxies' tools on Debian.
pub const INSTALL: &str = "apt-get install haproxy golang-go";

/// HAProxy in TCP mode: `listen NAME` on `bind` in front of `servers`; the
/// first one is used while it is up (`balance first`), 1 s checks, 3
/// retries, redispatch, and the timeouts of Debian's default
/// `haproxy.cfg`. `maxconn 9000`: HAProxy needs two files per connection
/// and refuses to start when that is above its hard open-files limit
/// (20000 on this project's VMs, which root cannot raise there).
pub fn haproxy_config(name: &str, bind: SocketAddr, servers: &[SocketAddr]) -> String {
    let mut config = format!(
        "global\n    maxconn 9000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
         timeout client 50s\n    timeout server 50s\n    retries 3\n    option redispatch\n\n\
         listen {name}\n    bind {bind}\n    balance first\n"
    );
    for (i, server) in servers.iter().enumerate() {
        let _ = writeln!(config, "    server s{} {server} check inter 1s", i + 1);
    }
    config
}

/// The command that runs the K3s-style proxy `binary` on `listen` in front
/// of `servers` (preference order) with its dial timeout and health-check
/// interval.
pub fn k3s_proxy_command(
    binary: &Path,
    listen: SocketAddr,
    servers: &[SocketAddr],
    dial_timeout: Duration,
    check_interval: Duration,
) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("-listen")
        .arg(listen.to_string())
        .arg("-servers")
        .arg(
            servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .arg("-dial-timeout")
        .arg(format!("{}ms", dial_timeout.as_millis()))
        .arg("-check-interval")
        .arg(format!("{}ms", check_interval.as_millis()));
    command
}

/// A proxy process (HAProxy, k3s-proxy) with its output in a log file;
/// killed on drop, and by the kernel if the bench dies first. Both raise
/// their own open-files limit up to the hard one (Go does so at start,
/// HAProxy from `maxconn`).
pub struct Proxy {
    child: Child,
}

impl Proxy {
    /// Starts `command` with stdout and stderr in `log`.
    pub fn spawn(mut command: Command, log: &Path) -> Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = file
            .try_clone()
            .with_context(|| format!("duplicating {}", log.display()))?;
        // SAFETY: runs in the forked child before exec and only calls
        // prctl(2), which is async-signal-safe, with valid arguments.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        Ok(Self { child })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (at most 10 s) until a connect to `addr` gets a server's byte;
/// the error shows the proxy's `log`.
pub fn wait_answered(addr: SocketAddr, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        match answered(addr) {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = std::fs::read_to_string(log).unwrap_or_default();
    bail!(
        "nothing answered through {addr} within 10 s (last: {last}); {}:\n{output}",
        log.display()
    )
}

fn answered(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut byte = [0u8; 1];
    let n = stream
        .read(&mut byte)
        .with_context(|| format!("reading from {addr}"))?;
    ensure!(n == 1, "{addr} closed without an answer");
    Ok(())
}

/// A bench's `--systems` list: each comma-separated name among `all`
/// (named by `name`), in the order given, repeats dropped.
pub fn parse_systems<T: Copy + PartialEq>(
    value: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<Vec<T>> {
    let mut systems: Vec<T> = Vec::new();
    for s in value.split(',').filter(|s| !s.is_empty()) {
        let system = all
            .iter()
            .copied()
            .find(|&system| name(system) == s)
            .with_context(|| {
                let names: Vec<&str> = all.iter().map(|&system| name(system)).collect();
                format!(
                    "--systems: unknown system {s} (one of {})",
                    names.join(", ")
                )
            })?;
        if !systems.contains(&system) {
            systems.push(system);
        }
    }
    Ok(systems)
}

/// What a bench (`tag`: its name) needs before it starts: the tools of the
/// proxies it measures (`haproxy`, `k3s_proxy`), with an error naming the
/// install command when one is missing; `DAAS_LB_BIN` and `LB_TEST_CLIENT`
/// pointing at the binaries next to the bench unless already set; and the
/// K3s-style proxy built next to the bench. Returns the proxy's path when
/// it was built.
///
/// # Safety
/// Sets environment variables: call it while the process has one thread.
pub unsafe fn prepare_bench(tag: &str, haproxy: bool, k3s_proxy: bool) -> Result<Option<PathBuf>> {
    if haproxy {
        find_program("haproxy").with_context(|| format!("haproxy is not installed: {INSTALL}"))?;
    }
    if k3s_proxy {
        find_program("go").with_context(|| format!("go is not installed: {INSTALL}"))?;
    }
    for (env, name) in [
        ("DAAS_LB_BIN", "daas-lb"),
        ("LB_TEST_CLIENT", "lb-test-client"),
    ] {
        if std::env::var_os(env).is_none() {
            let bin = crate::topology::sibling_binary(env, name);
            // SAFETY: the caller's promise: nothing reads the environment
            // concurrently.
            unsafe { std::env::set_var(env, bin) };
        }
    }
    if !k3s_proxy {
        return Ok(None);
    }
    let exe = std::env::current_exe().with_context(|| format!("locating lb-{tag}-bench"))?;
    let dir = exe
        .parent()
        .with_context(|| format!("lb-{tag}-bench has no directory"))?;
    let built = Instant::now();
    let binary = build_k3s_proxy(dir)?;
    eprintln!(
        "[{tag}] k3s-proxy: {} ({:.1}s)",
        binary.display(),
        built.elapsed().as_secs_f64()
    );
    Ok(Some(binary))
}

/// A program on PATH or in the sbin directories (haproxy is in /usr/sbin).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The Go source of the K3s-style proxy (`tests/k3s-proxy`).
pub fn k3s_proxy_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k3s-proxy")
}

/// Builds the K3s-style proxy with `go build` into `out_dir/k3s-proxy`
/// (Go's build cache in `out_dir/go-build`), unless the binary there is
/// newer than every file of [`k3s_proxy_source`]; returns its path. Needs
/// no network: the proxy uses the standard library only (`GOPROXY=off`).
pub fn build_k3s_proxy(out_dir: &Path) -> Result<PathBuf> {
    let source = k3s_proxy_source();
    let binary = out_dir.join("k3s-proxy");
    let newest_source = std::fs::read_dir(&source)
        .with_context(|| format!("reading {}", source.display()))?
        .filter_map(|entry| entry.ok()?.metadata().ok()?.modified().ok())
        .max()
        .with_context(|| format!("{} is empty", source.display()))?;
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    if built.is_some_and(|built| built >= newest_source) {
        return Ok(binary);
    }
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&source)
        .env("GOCACHE", out_dir.join("go-build"))
        .env("GOPATH", out_dir.join("go-path"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .output()
        .with_context(|| format!("running go build in {} ({INSTALL})", source.display()))?;
    ensure!(
        output.status.success(),
        "go build in {} into {}: {}: {}",
        source.display(),
        binary.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(binary)
}

/// Debian's tinyproxy, a real HTTP CONNECT forward proxy, in the foreground
/// on `127.0.0.1:PORT` with its config, log and pid file in a temp dir;
/// killed on drop (also on panic).
pub struct Tinyproxy {
    process: Option<Proxy>,
    dir: crate::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Tinyproxy {
    /// Starts `bin` on `127.0.0.1:port`, tunnelling to `connect_ports` only
    /// (`ConnectPort`; any other port is answered 403), with `extra` config
    /// lines; waits (at most 10 s) until it accepts connections.
    pub fn start(bin: &Path, port: u16, connect_ports: &[u16], extra: &str) -> Self {
        let dir = crate::TempDir::new();
        let d = dir.path().display();
        let mut ports = String::new();
        for port in connect_ports {
            let _ = writeln!(ports, "ConnectPort {port}");
        }
        let config = dir.file(
            "tinyproxy.conf",
            &format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 10\nMaxClients 64\n\
                 LogFile \"{d}/tinyproxy.log\"\nLogLevel Info\nPidFile \"{d}/tinyproxy.pid\"\n\
                 Allow 127.0.0.1\n{ports}DisableViaHeader Yes\n{extra}\n"
            ),
        );
        let mut command = Command::new(bin);
        command.arg("-d").arg("-c").arg(&config);
        let process = Proxy::spawn(command, &dir.path().join("tinyproxy.out"))
            .unwrap_or_else(|e| panic!("starting tinyproxy: {e:#}"));
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let proxy = Self {
            process: Some(process),
            dir,
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen on {addr} within 10 s; {}",
                proxy.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    /// Its output and log file, for failure messages.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "tinyproxy output:\n{}\ntinyproxy.log:\n{}",
            read("tinyproxy.out"),
            read("tinyproxy.log")
        )
    }

    /// How many CONNECT requests for `target` its log shows.
    pub fn connects_to(&self, target: SocketAddr) -> usize {
        let log =
            std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default();
        log.matches(&format!("CONNECT {target} HTTP/1.1")).count()
    }

    /// Kills it now (the port is closed once this returns).
    pub fn kill(&mut self) {
        self.process = None;
    }
}
