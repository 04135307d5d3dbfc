//! Kernel logging (`kernel_log`): the kernel programs write aya-log records
//! of rare events only while the level says so, and the daemon logs them
//! under the target `daas_lb::kernel`.
//!
//! Checked on the real kernel, with real connects from the test cgroup:
//! with logging off a refused connect leaves no kernel line; switched on at
//! runtime (`daas-lb kernel-log`, the control socket) a refused connect and
//! a failed dial each leave one naming the VIP or backend and the reason;
//! switched off again, nothing more; a reload goes back to the config's
//! level; unprivileged users cannot switch it; at `debug` an XDP drop is
//! logged with its reason.
//!
//! A "nothing logged" check waits [`QUIET`] after the event: the daemon
//! reads the ring as soon as the kernel writes to it (milliseconds), and
//! the records that do come show up well within that wait.

use std::{
    fs,
    io::{self, Read as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    process::{Command, Output},
    thread,
    time::Duration,
};

use lb_tests::{
    API, Daemon, Node, PinDir, TempDir, TestCgroup, TestEnv, as_nobody, binary_for_nobody,
    config_yaml, curl_code, daas_lb_bin, privileged, service_yaml, topology::Topology,
};
use lb_userspace::config::KernelLog;

/// The service with a server.
const SVC: &str = "api";
const VIP: &str = "127.0.0.1:6444";
/// A service without servers: every connect to it is refused.
const EMPTY: &str = "empty";
const EMPTY_VIP: &str = "127.0.0.1:6445";
/// Fast checks until a server is up, then one probe every 30 s: a dial
/// failure is the kernel's to see, not a probe's.
const SLOW_CHECK: &str = "{ kind: tcp, timeout: 80ms, jitter: 0%, intervals: { other: 100ms, recovering: 100ms, preferred: 30s, healthy: 30s, active: 30s, failed: 30s } }";
/// Every kernel record's tracing target, as the daemon's log shows it.
const KERNEL: &str = "daas_lb::kernel";
/// How long a "nothing logged" check waits.
const QUIET: Duration = Duration::from_millis(700);
/// How long a record may take to reach the log.
const WITHIN: Duration = Duration::from_secs(5);

/// The services: `api` on two nodes (node1 first), `empty` on none.
fn services(node1: &Node, node2: &Node) -> String {
    [
        service_yaml(SVC, VIP, &[node1.addr, node2.addr], None, SLOW_CHECK),
        service_yaml(EMPTY, EMPTY_VIP, &[], None, SLOW_CHECK),
    ]
    .concat()
}

fn start(test: &str, top: &str) -> Option<(TestEnv, Node, Node, Daemon)> {
    let env = TestEnv::new(test)?;
    let node1 = Node::start("node1", Ipv4Addr::new(127, 0, 0, 11), 6443);
    let node2 = Node::start("node2", Ipv4Addr::new(127, 0, 0, 12), 6443);
    let mut daemon = env.start_with(top, &services(&node1, &node2));
    daemon.wait_for(Duration::from_secs(10), "api's servers up", |s| {
        s.services
            .iter()
            .any(|svc| svc.name == SVC && svc.servers.iter().all(|srv| srv.last_check.is_some()))
    });
    Some((env, node1, node2, daemon))
}

/// One connect through `vip` from the test cgroup; it must fail.
fn failed_connect(env: &TestEnv, vip: &str) -> String {
    let out = env.cgroup.client(&["tcp", vip, "ping"]);
    assert!(!out.ok, "a connect through {vip} should fail: {out:?}");
    out.error.unwrap_or_default()
}

/// `daas-lb kernel-log LEVEL` on the daemon's control socket, as root.
fn switch(daemon: &Daemon, level: &str) -> Output {
    Command::new(daas_lb_bin())
        .args(["kernel-log", "--socket"])
        .arg(&daemon.control)
        .arg(level)
        .output()
        .expect("run daas-lb kernel-log")
}

fn switch_ok(daemon: &Daemon, level: &str) {
    let out = switch(daemon, level);
    assert!(out.status.success(), "kernel-log {level}: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("kernel log: {level}")),
        "kernel-log {level} printed {stdout:?}"
    );
}

/// The kernel's lines in the daemon's log so far.
fn kernel_lines(daemon: &Daemon) -> Vec<String> {
    daemon
        .log()
        .lines()
        .filter(|l| l.contains(KERNEL) && !l.contains("log level changed"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn kernel_log_is_silent_when_off_and_names_refused_connects_and_failed_dials_when_on() {
    let Some((env, mut node1, mut node2, mut daemon)) = start("klog_switch", "") else {
        return;
    };
    assert_eq!(daemon.status().kernel_log, KernelLog::Off);

    // Off (the default): a refused connect leaves no kernel line.
    let error = failed_connect(&env, EMPTY_VIP);
    assert!(error.contains("refused"), "{error}");
    thread::sleep(QUIET);
    assert_eq!(kernel_lines(&daemon), Vec::<String>::new());

    // Switched on at runtime: the refused connect names the VIP and why.
    switch_ok(&daemon, "warn");
    assert_eq!(daemon.status().kernel_log, KernelLog::Warn);
    failed_connect(&env, EMPTY_VIP);
    let refused = daemon.wait_log(WITHIN, "daas_lb::kernel: connect to VIP", 1);
    assert!(
        refused[0].contains("WARN")
            && refused[0].contains(KERNEL)
            && refused[0].contains(&format!("connect to VIP {EMPTY_VIP}"))
            && refused[0].contains("no usable backend"),
        "{refused:?}"
    );

    // A failed dial: node1's listener is closed, the connect gets a reset.
    node1.stop_service();
    failed_connect(&env, VIP);
    let failed = daemon.wait_log(WITHIN, "daas_lb::kernel: dial failed", 1);
    assert!(
        failed[0].contains("WARN")
            && failed[0].contains(KERNEL)
            && failed[0].contains(&format!("backend {} (id ", node1.addr))
            && failed[0].contains(": refused after "),
        "{failed:?}"
    );
    // Exactly these two: nothing from the time it was off came late.
    assert_eq!(
        kernel_lines(&daemon).len(),
        2,
        "{:#?}",
        kernel_lines(&daemon)
    );

    // Off again: neither a refused connect nor a failed dial is logged.
    switch_ok(&daemon, "off");
    assert_eq!(daemon.status().kernel_log, KernelLog::Off);
    failed_connect(&env, EMPTY_VIP);
    node2.stop_service();
    let _ = env.cgroup.client(&["tcp", VIP, "ping"]);
    thread::sleep(QUIET);
    assert_eq!(
        kernel_lines(&daemon).len(),
        2,
        "{:#?}",
        kernel_lines(&daemon)
    );

    // A bad level is refused with the words it takes, and changes nothing.
    let out = switch(&daemon, "verbose");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected off, warn or debug"),
        "{out:?}"
    );
    assert_eq!(daemon.status().kernel_log, KernelLog::Off);
}

#[test]
fn the_config_sets_kernel_log_and_a_reload_goes_back_to_it() {
    let Some((env, node1, node2, mut daemon)) = start("klog_config", "kernel_log: warn\n") else {
        return;
    };
    assert_eq!(daemon.status().kernel_log, KernelLog::Warn);
    failed_connect(&env, EMPTY_VIP);
    daemon.wait_log(WITHIN, "refused with ECONNREFUSED", 1);

    switch_ok(&daemon, "off");
    failed_connect(&env, EMPTY_VIP);
    thread::sleep(QUIET);
    assert_eq!(daemon.log_count("refused with ECONNREFUSED"), 1);

    // SIGHUP: the config's level again.
    env.config_with("kernel_log: warn\n", &services(&node1, &node2));
    daemon.signal(libc::SIGHUP);
    daemon.wait_for(WITHIN, "kernel_log back to warn", |s| {
        s.kernel_log == KernelLog::Warn
    });
    failed_connect(&env, EMPTY_VIP);
    daemon.wait_log(WITHIN, "refused with ECONNREFUSED", 2);

    // A reload that turns it off.
    env.config_with("kernel_log: off\n", &services(&node1, &node2));
    daemon.signal(libc::SIGHUP);
    daemon.wait_for(WITHIN, "kernel_log off", |s| s.kernel_log == KernelLog::Off);
    failed_connect(&env, EMPTY_VIP);
    thread::sleep(QUIET);
    assert_eq!(daemon.log_count("refused with ECONNREFUSED"), 2);
}

#[test]
fn unprivileged_users_cannot_switch_kernel_log() {
    let Some((env, _node1, _node2, daemon)) = start("klog_nobody", "") else {
        return;
    };
    let binary = binary_for_nobody(&env);
    let socket = daemon.control.display().to_string();
    let out = as_nobody(&binary, &["kernel-log", "--socket", &socket, "debug"]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Permission denied") && stderr.contains("only root"),
        "{stderr}"
    );

    // Over TCP without a token: api_addr is read-only.
    let url = format!("http://{API}/kernel-log");
    let (code, out) = curl_code(
        true,
        &[
            "-X",
            "PUT",
            "-H",
            "content-type: application/json",
            "-d",
            "\"debug\"",
            &url,
        ],
    );
    assert_eq!(code, "403", "{out:?}");

    // Even with the socket's file modes opened up, SO_PEERCRED refuses nobody.
    let dir = daemon.control.parent().unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&daemon.control, fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&binary, &["kernel-log", "--socket", &socket, "debug"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("answered 403"),
        "{out:?}"
    );

    // Nothing changed: the level is off and a refused connect stays silent.
    assert_eq!(daemon.status().kernel_log, KernelLog::Off);
    failed_connect(&env, EMPTY_VIP);
    thread::sleep(QUIET);
    assert_eq!(kernel_lines(&daemon), Vec::<String>::new());
}

/// The XDP VIP of the drop test (a `remote` service without servers).
const XDP_VIP: &str = "10.96.0.10:80";

#[test]
fn at_debug_an_xdp_drop_is_logged_with_its_reason() {
    if !privileged("klog_xdp_drop") {
        return;
    }
    let topo = Topology::new(1);
    let _in_node = topo.enter(&topo.node);
    let (tmp, pins, cgroup) = (TempDir::new(), PinDir::new(), TestCgroup::new());
    let interfaces = topo.node_interfaces().join(", ");
    let top = format!("kernel_log: debug\nxdp:\n  interfaces: [{interfaces}]\n  mode: skb\n");
    let services = format!(
        "  - name: gone\n    vip: \"{XDP_VIP}\"\n    protocol: tcp\n    servers: []\n    remote: true\n    health_check: {SLOW_CHECK}\n"
    );
    let yaml = format!(
        "{top}{}",
        config_yaml(&pins, &cgroup, &tmp.path().join("data"), &services)
    );
    let config = tmp.file("config.yaml", &yaml).display().to_string();
    let mut daemon = Daemon::spawn_in_netns(
        &["--config", &config],
        tmp.path(),
        API,
        &Topology::ns_path(&topo.node),
    );
    daemon.wait_for(Duration::from_secs(10), "the service is up", |s| {
        s.kernel_log == KernelLog::Debug && s.services.iter().any(|svc| svc.name == "gone")
    });

    // The client's SYN reaches the node, which has no backend for the VIP.
    let connect = {
        let _inside = topo.enter(&topo.client.ns);
        let addr: SocketAddr = XDP_VIP.parse().unwrap();
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).and_then(|mut stream| {
            let mut byte = [0u8; 1];
            stream.read(&mut byte).map(|_| ())
        })
    };
    assert!(
        connect
            .as_ref()
            .is_err_and(|e| e.kind() != io::ErrorKind::ConnectionRefused),
        "the SYN should be dropped, not answered: {connect:?}"
    );
    let lines = daemon.wait_log(WITHIN, "daas_lb::kernel: xdp dropped", 1);
    assert!(
        lines[0].contains("DEBUG")
            && lines[0].contains(&format!("-> {XDP_VIP}: drop_no_backend"))
            && lines[0].contains(&format!("{}:", topo.client.v4)),
        "{lines:?}"
    );
}
