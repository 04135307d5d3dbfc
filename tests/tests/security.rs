//! Only root steers traffic: the control socket takes every change, the
//! network listeners are read-only unless a bearer token opens `api_addr`,
//! and hostile clients neither change the selection nor exhaust the daemon.
//!
//! Unprivileged requests run as `nobody` (uid/gid 65534) with real `curl`
//! and a copy of the `daas-lb` binary that `nobody` can execute.

use std::{
    fs,
    io::Write as _,
    net::{SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt as _, net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    API, Daemon, METRICS, NOBODY, TcpBackend, TestEnv, as_nobody, binary_for_nobody, curl_code,
    daas_lb_bin, service_yaml,
};
use lb_userspace::api::client;

const VIP: &str = "127.0.0.1:6443";
const SVC: &str = "apiserver";
const CHECK: &str = "{ kind: tcp, interval: 100ms, timeout: 100ms }";

/// A daemon fronting `configured` (and, later, perhaps `other`).
struct World {
    env: TestEnv,
    configured: TcpBackend,
    other: TcpBackend,
    daemon: Daemon,
}

impl World {
    fn start(test: &str, top: &str) -> Option<Self> {
        let env = TestEnv::new(test)?;
        let configured = TcpBackend::v4("configured");
        let other = TcpBackend::v4("intruder");
        let mut daemon = env.start_with(
            top,
            &service_yaml(SVC, VIP, &[configured.addr], None, CHECK),
        );
        daemon.wait_checked();
        Some(Self {
            env,
            configured,
            other,
            daemon,
        })
    }

    /// The backend that answers a connect through the VIP from the test cgroup.
    fn answering(&self) -> String {
        let out = self.env.cgroup.client(&["tcp", VIP, "who"]);
        assert!(out.ok, "{out:?}");
        let reply = out.reply.unwrap_or_default();
        reply.split(':').next().unwrap_or_default().to_owned()
    }

    /// Waits until connects through the VIP reach `backend`.
    fn wait_answering(&self, backend: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.answering();
            if now == backend {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connects still reach {now}, not {backend}\n{}",
                self.daemon.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A copy of `daas-lb` that `nobody` can run.
    fn binary_for_nobody(&self) -> PathBuf {
        binary_for_nobody(&self.env)
    }
}

fn put_body(servers: &[SocketAddr]) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", list.join(","))
}

#[test]
fn unprivileged_users_cannot_steer_traffic() {
    let Some(w) = World::start("sec_nobody", "") else {
        return;
    };
    assert_eq!(w.answering(), "configured");
    let body = put_body(&[w.other.addr]);
    let path = format!("/services/{SVC}/servers");

    // The network listeners: every method but GET is refused.
    for (listener, addr, expected) in [("metrics", METRICS, "405"), ("api", API, "403")] {
        for (method, target) in [
            ("PUT", path.as_str()),
            ("POST", "/reload"),
            ("PATCH", path.as_str()),
        ] {
            let url = format!("http://{addr}{target}");
            let (code, out) = curl_code(
                true,
                &[
                    "-X",
                    method,
                    "-H",
                    "content-type: application/json",
                    "-d",
                    &body,
                    &url,
                ],
            );
            assert_eq!(
                code, expected,
                "{method} {url} on {listener} as nobody: {out:?}"
            );
        }
    }

    // The control socket: the kernel refuses nobody at connect().
    let socket = w.daemon.control.display().to_string();
    let put_over_socket = || {
        curl_code(
            true,
            &[
                "--unix-socket",
                &socket,
                "-X",
                "PUT",
                "-d",
                &body,
                &format!("http://localhost{path}"),
            ],
        )
    };
    let (code, out) = put_over_socket();
    assert_eq!(code, "000", "{out:?}");
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl: could not connect: {out:?}"
    );

    // The command line, as nobody, by default and with --api.
    let binary = w.binary_for_nobody();
    let other = w.other.addr.to_string();
    let set = as_nobody(&binary, &["set-servers", "--socket", &socket, SVC, &other]);
    assert!(!set.status.success(), "{set:?}");
    let stderr = String::from_utf8_lossy(&set.stderr);
    assert!(
        stderr.contains("Permission denied") && stderr.contains("only root"),
        "{stderr}"
    );
    let token = w.env.tmp.file("guess", "0123456789abcdef0123");
    fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).unwrap();
    let set = as_nobody(
        &binary,
        &[
            "set-servers",
            "--api",
            &API.to_string(),
            "--token-file",
            &token.display().to_string(),
            SVC,
            &other,
        ],
    );
    assert!(!set.status.success(), "{set:?}");
    assert!(
        String::from_utf8_lossy(&set.stderr).contains("answered 403"),
        "{set:?}"
    );

    // Even with the socket's file modes opened up, SO_PEERCRED refuses nobody.
    let dir = w.daemon.control.parent().unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&w.daemon.control, fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out) = put_over_socket();
    assert_eq!(code, "403", "{out:?}");
    let (code, out) = curl_code(true, &["--unix-socket", &socket, "http://localhost/status"]);
    assert_eq!(code, "403", "{out:?}");

    // Nothing moved: the configured server still answers, the list is intact.
    assert_eq!(w.answering(), "configured");
    let status = w.daemon.status();
    assert_eq!(
        lb_tests::server_addresses(&status, SVC),
        vec![w.configured.addr.to_string()]
    );
    let saved = fs::read_to_string(w.env.state_file(SVC)).unwrap_or_default();
    assert!(
        !saved.contains(&w.other.addr.to_string()),
        "the intruder's list was saved: {saved}"
    );

    // Each refusal was logged at warn with who asked, and counted.
    let log = w.daemon.log();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("refused:")).collect();
    assert!(
        refusals.len() >= 9,
        "{} refusals logged:\n{log}",
        refusals.len()
    );
    assert!(
        refusals.iter().any(|l| l.contains("WARN")
            && l.contains("listener=\"metrics\"")
            && l.contains("peer=127.0.0.1:")),
        "{log}"
    );
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("listener=\"control\"") && l.contains("uid 65534 gid 65534 pid ")),
        "{log}"
    );
    let metrics = w.daemon.metrics();
    for (listener, reason, at_least) in [
        ("metrics", "read_only", 3.0),
        ("api", "read_only", 4.0),
        ("control", "not_authorized", 2.0),
    ] {
        let n = lb_tests::metric(
            &metrics,
            "daas_lb_api_refused_total",
            &[("listener", listener), ("reason", reason)],
        )
        .unwrap_or_default();
        assert!(n >= at_least, "{listener}/{reason}: {n}\n{metrics}");
    }
}

#[test]
fn members_of_control_group_may_steer_and_nobody_else() {
    // nobody's own group (65534, "nogroup" on Debian) as control_group.
    let Some(w) = World::start("sec_group", "control_group: \"65534\"\n") else {
        return;
    };
    let socket = w.daemon.control.display().to_string();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&w.daemon.control), 0o660);
    assert_eq!(mode(w.daemon.control.parent().unwrap()), 0o710);
    let binary = w.binary_for_nobody();
    let other = w.other.addr.to_string();
    let set = as_nobody(&binary, &["set-servers", "--socket", &socket, SVC, &other]);
    assert!(set.status.success(), "{set:?}\n{}", w.daemon.log());
    w.wait_answering("intruder");
    assert!(
        w.daemon
            .log()
            .contains("server list replaced through the API")
            && w.daemon.log().contains("peer=uid 65534 gid 65534 pid "),
        "{}",
        w.daemon.log()
    );
    // Another unprivileged user outside the group is still refused.
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "--unix-socket",
            &socket,
            "http://localhost/status",
        ])
        .uid(NOBODY - 1)
        .gid(NOBODY - 1)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
}

#[test]
fn root_steers_through_the_control_socket_and_reloads() {
    let Some(w) = World::start("sec_root", "") else {
        return;
    };
    let socket = w.daemon.control.display().to_string();
    let other = w.other.addr.to_string();

    // The metrics port refuses a change even from root; api_addr too.
    let body = put_body(&[w.other.addr]);
    let url = format!("http://{METRICS}/services/{SVC}/servers");
    let (code, out) = curl_code(false, &["-X", "PUT", "-d", &body, &url]);
    assert_eq!(code, "405", "{out:?}");
    let (code, reply) = client::request(
        &API.into(),
        "PUT",
        &format!("/services/{SVC}/servers"),
        Some(&body),
    )
    .unwrap();
    assert_eq!(code, 403);
    assert!(
        reply.contains(&format!("control socket {socket}")),
        "{reply}"
    );
    // The read-only surfaces answer what they serve.
    assert_eq!(client::get(METRICS, "/healthz").unwrap(), "ok\n");
    let (code, _) = client::request(&METRICS.into(), "GET", "/status", None).unwrap();
    assert_eq!(code, 404, "metrics_addr does not serve the status");
    let table = answer(&w, &["status", "--api", &API.to_string()]);
    assert!(table.contains(&w.configured.addr.to_string()), "{table}");

    // set-servers goes through the control socket.
    let table = answer(&w, &["set-servers", "--socket", &socket, SVC, &other]);
    assert!(table.contains(&other), "{table}");
    w.wait_answering("intruder");

    // reload re-reads the file: back to its list.
    let out = answer(&w, &["reload", "--socket", &socket]);
    assert!(
        out.starts_with("reloaded ") && out.contains("config.yaml"),
        "{out}"
    );
    w.wait_answering("configured");

    // A broken file: the reload fails loudly, naming the problem, and the
    // running configuration stays.
    w.env.tmp.file(
        "config.yaml",
        &format!(
            "{}  - name: broken\n    vip: not-an-address\n",
            fs::read_to_string(w.env.tmp.path().join("config.yaml")).unwrap()
        ),
    );
    let failed = Command::new(daas_lb_bin())
        .args(["reload", "--socket", &socket])
        .output()
        .unwrap();
    assert!(!failed.status.success(), "{failed:?}");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("answered 400") && stderr.contains("services[1].vip"),
        "{stderr}"
    );
    assert_eq!(w.answering(), "configured");
    assert_eq!(w.daemon.status().services.len(), 1);

    // SIGHUP still reloads (the same path), and is refused the same way.
    let rejected = [("result", "rejected")];
    assert_eq!(
        w.daemon.counter("daas_lb_config_reloads_total", &rejected),
        1
    );
    w.daemon.signal(libc::SIGHUP);
    let mut daemon = w.daemon;
    daemon.wait_counter(
        Duration::from_secs(5),
        "daas_lb_config_reloads_total",
        &rejected,
        2,
    );

    // The socket is gone after a clean stop.
    daemon.stop();
    assert!(!Path::new(&socket).exists());
}

/// Runs `daas-lb ARGS` as root; its stdout (it must succeed).
fn answer(w: &World, args: &[&str]) -> String {
    let out = Command::new(daas_lb_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "daas-lb {args:?}: {out:?}\n{}",
        w.daemon.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused_and_a_stale_socket_is_replaced() {
    let Some(mut w) = World::start("sec_socket", "") else {
        return;
    };
    let socket = w.daemon.control.clone();
    let mode = fs::metadata(&socket).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let dir_mode = fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(dir_mode, 0o700);

    // Another daemon with its own pins and API ports but the same socket.
    let pins = lb_tests::PinDir::new();
    let yaml = format!(
        "bpffs_dir: {}\ncgroup: {}\ndata_dir: {}\nmetrics_addr: 127.0.0.1:19464\napi_addr: 127.0.0.1:19465\ncontrol_socket: {}\nservices: []\n",
        pins.path().display(),
        w.env.cgroup.path().display(),
        w.env.tmp.path().join("data2").display(),
        socket.display()
    );
    let config = w.env.tmp.file("second.yaml", &yaml);
    let second = Command::new(daas_lb_bin())
        .args(["run", "--config", &config.display().to_string()])
        .output()
        .unwrap();
    assert!(!second.status.success(), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another daas-lb (pid ")
            && stderr.contains("is serving the control socket"),
        "{stderr}"
    );
    assert!(
        socket.exists(),
        "the refusal left the running daemon's socket"
    );
    assert_eq!(w.answering(), "configured");
    let other = w.other.addr.to_string();
    answer(
        &w,
        &[
            "set-servers",
            "--socket",
            &socket.display().to_string(),
            SVC,
            &other,
        ],
    );
    w.wait_answering("intruder");

    // A crash leaves the socket file; the next start replaces it.
    w.daemon.signal(libc::SIGKILL);
    w.daemon.wait_exit(Duration::from_secs(5));
    assert!(socket.exists(), "SIGKILL leaves the file behind");
    w.daemon.relaunch();
    w.daemon.wait_log(
        Duration::from_secs(10),
        "replaced a control socket left behind",
        1,
    );
    w.daemon.wait_checked();
    let (code, _) = client::request(&socket.as_path().into(), "GET", "/status", None).unwrap();
    assert_eq!(code, 200);
}

#[test]
fn a_bearer_token_opens_changes_over_tcp_and_never_leaks() {
    let Some(env) = TestEnv::new("sec_token") else {
        return;
    };
    let secret = format!("tok-{}-{}", std::process::id(), "9f1c2e7a5b3d8c4f6a0e");
    let token = env.tmp.file("api.token", &format!("{secret}\n"));
    let token_arg = token.display().to_string();

    // A token file others can read stops the start, before the kernel is touched.
    fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).unwrap();
    let configured = TcpBackend::v4("configured");
    let other = TcpBackend::v4("intruder");
    let top = format!("api_token_file: {token_arg}\n");
    let services = service_yaml(SVC, VIP, &[configured.addr], None, CHECK);
    let config = env.config_with(&top, &services);
    let refused = Command::new(daas_lb_bin())
        .args(["run", "--config", &config])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("mode 0644 lets other users"), "{stderr}");
    assert!(!stderr.contains(&secret), "{stderr}");
    assert!(lb_tests::cgroup_programs(env.cgroup.path()).is_empty());
    assert!(!env.tmp.path().join("run/control.sock").exists());

    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let mut daemon = env.start_with(&top, &services);
    daemon.wait_checked();
    let w = World {
        env,
        configured,
        other,
        daemon,
    };
    let body = put_body(&[w.other.addr]);
    let url = format!("http://{API}/services/{SVC}/servers");
    for (header, what) in [
        (None, "no token"),
        (
            Some(format!("Authorization: Bearer {secret}x")),
            "a wrong token",
        ),
        (
            Some(format!("Authorization: Basic {secret}")),
            "another scheme",
        ),
    ] {
        let mut args = vec!["-X", "PUT", "-D", "-", "-d", &body, &url];
        if let Some(h) = &header {
            args.extend(["-H", h.as_str()]);
        }
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .args(&args)
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout);
        assert!(head.starts_with("HTTP/1.1 401"), "{what}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{what}: {head}"
        );
    }
    assert_eq!(w.answering(), "configured");

    // The right token, from the command line.
    let table = answer(
        &w,
        &[
            "set-servers",
            "--api",
            &API.to_string(),
            "--token-file",
            &token_arg,
            SVC,
            &w.other.addr.to_string(),
        ],
    );
    assert!(table.contains(&w.other.addr.to_string()), "{table}");
    w.wait_answering("intruder");
    // ... and from curl, with the token in a header.
    let (code, out) = curl_code(
        false,
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {secret}"),
            &format!("http://{API}/reload"),
        ],
    );
    assert_eq!(code, "200", "{out:?}");
    w.wait_answering("configured");

    // The token appears nowhere the daemon shows or writes.
    let status = client::get(API, "/status").unwrap();
    let metrics = w.daemon.metrics();
    let log = w.daemon.log();
    for (what, text) in [("status", &status), ("metrics", &metrics), ("log", &log)] {
        assert!(!text.contains(&secret), "the token leaked into the {what}");
    }
    assert!(log.contains("reason=\"bad_token\""), "{log}");
    assert!(log.contains("reason=\"no_token\""), "{log}");
}

/// The body size of the oversized requests.
const BIG: usize = 30 * 1024 * 1024;

/// Sends a request with a `size`-byte body, as fast as the daemon reads it;
/// the status code if an answer came before the daemon closed.
fn big_request(
    mut stream: impl std::io::Read + std::io::Write,
    path: &str,
    size: usize,
) -> Option<u16> {
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n["
    );
    stream.write_all(head.as_bytes()).ok()?;
    let chunk = vec![b'1'; 64 * 1024];
    let mut sent = 0;
    while sent < size {
        if stream.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn hostile_clients_neither_exhaust_nor_block_the_daemon() {
    let Some(w) = World::start("sec_hostile", "") else {
        return;
    };
    let pid = w.daemon.pid().expect("running");
    let rss_before = rss_kib(pid);

    // 30 MB bodies on every listener.
    let path = format!("/services/{SVC}/servers");
    let started = Instant::now();
    let metrics_code = big_request(TcpStream::connect(METRICS).unwrap(), &path, BIG);
    let api_code = big_request(TcpStream::connect(API).unwrap(), &path, BIG);
    let control_code = big_request(UnixStream::connect(&w.daemon.control).unwrap(), &path, BIG);
    eprintln!(
        "30 MB bodies answered in {:?}: metrics {metrics_code:?}, api {api_code:?}, control {control_code:?}",
        started.elapsed()
    );
    for code in [metrics_code, api_code, control_code].into_iter().flatten() {
        assert!((400..500).contains(&code), "{code}");
    }

    // A few hundred slow clients for 10 s: each sends its request head one
    // byte a second and reconnects when closed, on both TCP listeners and
    // the control socket; meanwhile status must answer within 1 s.
    let attack = Duration::from_secs(10);
    let attackers: Vec<_> = [(Some(API), 200), (Some(METRICS), 100), (None, 100)]
        .into_iter()
        .map(|(addr, n)| {
            let control = w.daemon.control.clone();
            thread::spawn(move || slow_clients(addr, &control, n, attack))
        })
        .collect();
    let deadline = Instant::now() + attack;
    let mut slowest = Duration::ZERO;
    let mut answers = 0;
    let mut peak = rss_before;
    while Instant::now() < deadline {
        let asked = Instant::now();
        let status = client::fetch_status(API);
        let took = asked.elapsed();
        assert!(status.is_ok(), "status failed under attack: {status:?}");
        slowest = slowest.max(took);
        answers += 1;
        let over_socket = Instant::now();
        client::fetch_status(w.daemon.control.as_path()).expect("status on the control socket");
        slowest = slowest.max(over_socket.elapsed());
        peak = peak.max(rss_kib(pid));
        thread::sleep(Duration::from_millis(100));
    }
    let connects: usize = attackers.into_iter().map(|t| t.join().unwrap()).sum();
    let rss_after = rss_kib(pid);
    eprintln!(
        "slow clients: {connects} connections in {attack:?}; {answers} status answers, slowest {slowest:?}; \
         RSS {rss_before} KiB before, peak {peak} KiB, {rss_after} KiB after"
    );
    assert!(slowest < Duration::from_secs(1), "status took {slowest:?}");
    assert!(
        connects >= 400,
        "only {connects} attacking connections were opened"
    );
    // Generous: the limits keep this to a few MiB; unbounded buffering of
    // 30 MB bodies or 400 connections' state would blow past it.
    assert!(
        peak < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {peak} KiB"
    );

    // The slow and excess connections were closed and counted, and nothing moved.
    let metrics = w.daemon.metrics();
    let closed: f64 = ["evicted", "head_timeout"]
        .iter()
        .map(|reason| {
            lb_tests::metric(
                &metrics,
                "daas_lb_api_refused_total",
                &[("listener", "api"), ("reason", reason)],
            )
            .unwrap_or_default()
        })
        .sum();
    assert!(closed >= 1.0, "{metrics}");
    assert!(
        w.daemon
            .log()
            .contains("closed slow or excess HTTP connections")
    );
    assert_eq!(w.answering(), "configured");
}

/// Keeps `n` connections to `addr` (or the control socket) sending a request
/// head one byte a second for `duration`, reconnecting any that the daemon
/// closes; returns how many connections it opened.
fn slow_clients(addr: Option<SocketAddr>, control: &Path, n: usize, duration: Duration) -> usize {
    enum Conn {
        Tcp(TcpStream),
        Unix(UnixStream),
    }
    let open = || -> Option<Conn> {
        match addr {
            Some(addr) => TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .ok()
                .map(Conn::Tcp),
            None => UnixStream::connect(control).ok().map(Conn::Unix),
        }
    };
    let head = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let deadline = Instant::now() + duration;
    let mut opened = 0;
    let mut conns: Vec<(Option<Conn>, usize)> = Vec::new();
    for _ in 0..n {
        conns.push((open(), 0));
        opened += 1;
    }
    while Instant::now() < deadline {
        for (conn, sent) in &mut conns {
            let byte = [head[*sent % head.len()]];
            let ok = match conn {
                Some(Conn::Tcp(s)) => s.write_all(&byte).is_ok(),
                Some(Conn::Unix(s)) => s.write_all(&byte).is_ok(),
                None => false,
            };
            *sent += 1;
            if !ok && opened < 20_000 {
                *conn = open();
                *sent = 0;
                opened += 1;
            }
        }
        thread::sleep(Duration::from_secs(1));
    }
    opened
}
