//! The K3s agent load balancer's behaviour on the real kernel, replaying the
//! scenarios of K3s's own `loadbalancer_test.go` and its bug history
//! (#10240, #11311, #11349, #13149) against `daas-lb run`.
//!
//! Every test runs in its own network namespace with K3s server stand-ins
//! ([`Node`]) on `127.0.0.10` (the default server), `127.0.0.11`,
//! `127.0.0.12`, ...: a service port (6443) and an HTTP health endpoint on
//! port 8080. Clients run in the test cgroup and connect to the VIP
//! `127.0.0.1:6444`; long-lived clients ([`HeldConnection`]) report when the
//! daemon closes their connection.

use std::{
    net::{Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant, SystemTime},
};

use lb_tests::{
    Daemon, HeldConnection, Node, TestEnv, metric, parse_metrics, parse_rfc3339, samples, service,
    service_yaml,
};
use lb_userspace::{
    api::status::{ServerStatus, Status},
    policy::state_machine::ServerState,
};

/// The service every test uses.
const SVC: &str = "api";
/// Its VIP.
const VIP: &str = "127.0.0.1:6444";
/// The service port of every node.
const PORT: u16 = 6443;
/// Top-level config lines: count connections often.
const TOP: &str = "connection_poll_interval: 100ms\n";
/// K3s-like health check: `/healthz` on port 8080 (every probe also
/// connects to the service port).
const HTTP_CHECK: &str =
    "{ kind: http, path: /healthz, port: 8080, interval: 250ms, timeout: 200ms, jitter: 0% }";
/// A plain TCP connect to the service port.
const TCP_CHECK: &str = "{ kind: tcp, interval: 250ms, timeout: 200ms, jitter: 0% }";
/// Longest time from a failure or recovery of a node to the daemon acting
/// on it, on a loaded 2-core CI machine: a few check intervals and slack.
const REACT: Duration = Duration::from_secs(3);

/// A node on `127.0.0.<octet>:6443` (health on `:8080`).
fn node(name: &str, octet: u8) -> Node {
    Node::start(name, Ipv4Addr::new(127, 0, 0, octet), PORT)
}

/// What carries the scenario's connections: the kernel's connect hook
/// (`dataplane: ebpf`, every test) or the daemon's proxy (`dataplane:
/// proxy`, the tests of [`proxy_mode`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ebpf,
    Proxy,
}

thread_local! {
    /// This test thread's [`Mode`].
    static MODE: std::cell::Cell<Mode> = const { std::cell::Cell::new(Mode::Ebpf) };
}

fn mode() -> Mode {
    MODE.with(std::cell::Cell::get)
}

/// The config's `services:` entry for [`SVC`].
fn api(servers: &[&Node], default: Option<&Node>, check: &str) -> String {
    let servers: Vec<SocketAddr> = servers.iter().map(|n| n.addr).collect();
    let mut yaml = service_yaml(SVC, VIP, &servers, default.map(|n| n.addr), check);
    if mode() == Mode::Proxy {
        yaml.push_str("    dataplane: proxy\n");
    }
    yaml
}

fn find_server(status: &Status, addr: SocketAddr) -> Option<&ServerStatus> {
    service(status, SVC)
        .servers
        .iter()
        .find(|s| s.address == addr.to_string())
}

fn server(status: &Status, addr: SocketAddr) -> &ServerStatus {
    find_server(status, addr).unwrap_or_else(|| panic!("{addr} not in status {status:#?}"))
}

fn addresses(status: &Status) -> Vec<String> {
    lb_tests::server_addresses(status, SVC)
}

/// Waits until `node` is in one of `states`.
fn wait_state(
    daemon: &mut Daemon,
    node: &Node,
    states: &[ServerState],
    within: Duration,
) -> Status {
    daemon.wait_for(within, &format!("{} in {states:?}", node.name), |s| {
        find_server(s, node.addr).is_some_and(|srv| states.contains(&srv.state))
    })
}

/// Waits until `node` is preferred or active, i.e. checked twice and ready.
fn wait_ready(daemon: &mut Daemon, node: &Node) -> Status {
    wait_state(
        daemon,
        node,
        &[ServerState::Preferred, ServerState::Active],
        Duration::from_secs(5),
    )
}

/// Waits until `node` is failed.
fn wait_failed(daemon: &mut Daemon, node: &Node) -> Status {
    wait_state(daemon, node, &[ServerState::Failed], REACT)
}

/// Waits until the daemon counts at least one connection to `node`.
fn wait_counted(daemon: &mut Daemon, node: &Node) -> Status {
    daemon.wait_for(
        Duration::from_secs(3),
        &format!("a connection to {} counted", node.name),
        |s| find_server(s, node.addr).is_some_and(|srv| srv.connections >= 1),
    )
}

/// The name of the node a fresh connect through the VIP reaches, or what
/// the client saw instead.
fn connect_backend(env: &TestEnv) -> Result<String, String> {
    let out = env.cgroup.client(&["tcp", VIP, "ping"]);
    match &out.reply {
        Some(reply) if out.ok => Ok(reply.split(':').next().unwrap_or_default().to_owned()),
        _ => Err(format!("{out:?}")),
    }
}

/// Connects through the VIP every 20 ms until a connect reaches `node`;
/// when it did. Panics at `deadline`.
fn wait_connects_reach(env: &TestEnv, daemon: &Daemon, node: &Node, deadline: Instant) -> Instant {
    let mut last;
    loop {
        last = connect_backend(env);
        if last.as_deref() == Ok(node.name.as_str()) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "new connects never reached {}; last {last:?}; status {:#?}\nlog:\n{}",
            node.name,
            lb_userspace::api::client::fetch_status(daemon.api).ok(),
            daemon.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `held` is closed under its client by an error (`SOCK_DESTROY`:
/// `ECONNABORTED`, or a reset), at most until `deadline`; when. In proxy
/// mode the proxy closes both of its sockets, as K3s's `closeAll` does:
/// the client reads the end of the stream (or a reset).
fn expect_reset(
    held: &mut HeldConnection,
    deadline: Instant,
    daemon: &Daemon,
    what: &str,
) -> Instant {
    let within = deadline.saturating_duration_since(Instant::now());
    let Some((at, errno)) = held.wait_closed(within) else {
        panic!(
            "{what}: the held connection to {} is still open; status {:#?}\nlog:\n{}",
            held.backend(),
            lb_userspace::api::client::fetch_status(daemon.api).ok(),
            daemon.log()
        );
    };
    let expected = match mode() {
        Mode::Ebpf => matches!(errno, Some(libc::ECONNABORTED | libc::ECONNRESET)),
        Mode::Proxy => matches!(errno, None | Some(libc::ECONNRESET)),
    };
    assert!(
        expected,
        "{what}: expected the read to fail with ECONNABORTED or ECONNRESET (proxy mode: end of stream or ECONNRESET), got {:?}",
        held.closed_event()
    );
    at
}

/// `a - b` in milliseconds, negative when `a` is earlier.
fn signed_ms(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

/// When `node` entered its current state, per the daemon.
fn state_since(status: &Status, node: &Node) -> SystemTime {
    let since = &server(status, node.addr).state_since;
    parse_rfc3339(since).unwrap_or_else(|| panic!("state_since {since:?} is not RFC 3339"))
}

/// The `micros=` of the daemon's last `closed connections` line that
/// destroyed something (waits up to 2 s for it).
fn last_close_micros(daemon: &mut Daemon) -> u64 {
    daemon.wait_log(Duration::from_secs(2), "closed connections", 1);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(found) = daemon
            .closed_connections()
            .into_iter()
            .rev()
            .find(|c| c.destroyed >= 1)
        {
            return found.micros;
        }
        assert!(
            Instant::now() < deadline,
            "no `closed connections` line with destroyed=N (N >= 1) and micros=M; log:\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// One service with `node1` listed and `node0` as the default, both healthy;
/// returns once node1 is preferred.
struct OneServer {
    daemon: Daemon,
    node1: Node,
    node0: Node,
    env: TestEnv,
}

impl OneServer {
    fn start(test: &str, check: &str) -> Option<Self> {
        let env = TestEnv::new(test)?;
        let (node0, node1) = (node("node0", 10), node("node1", 11));
        let mut daemon = env.start_with(TOP, &api(&[&node1], Some(&node0), check));
        wait_ready(&mut daemon, &node1);
        Some(Self {
            daemon,
            node1,
            node0,
            env,
        })
    }

    /// A held connection through the VIP that reaches node1, which then
    /// becomes active.
    fn hold_node1(&mut self) -> HeldConnection {
        let held = self.env.hold(VIP);
        assert_eq!(held.backend(), "node1", "{:?}", held.connected());
        self.daemon
            .wait_for(Duration::from_secs(3), "node1 active", |s| {
                let n1 = server(s, self.node1.addr);
                n1.state == ServerState::Active && n1.connections >= 1
            });
        held
    }

    /// Takes node1 down completely; returns once it is failed and new
    /// connects reach the default server.
    fn fail_over(&mut self) {
        self.node1.down();
        wait_failed(&mut self.daemon, &self.node1);
        wait_connects_reach(&self.env, &self.daemon, &self.node0, Instant::now() + REACT);
    }
}

// K3s loadbalancer_test.go: "server becomes preferred and takes new connections".
#[test]
fn a_healthy_server_becomes_preferred_and_takes_new_connections() {
    let Some(mut w) = OneServer::start("k3s_preferred", HTTP_CHECK) else {
        return;
    };
    let status = w.daemon.status();
    let svc = service(&status, SVC);
    assert_eq!(svc.selected, Some(w.node1.addr.to_string()), "{svc:#?}");
    assert!(!svc.fail_open, "{svc:#?}");
    let n1 = server(&status, w.node1.addr);
    assert!(n1.healthy && !n1.default, "{n1:#?}");
    assert!(
        n1.last_check
            .as_ref()
            .is_some_and(|c| c.ok && c.reason.contains("200")),
        "{n1:#?}"
    );
    let n0 = server(&status, w.node0.addr);
    assert!(n0.default, "{n0:#?}");
    assert_eq!(n0.state, ServerState::Standby, "{n0:#?}");
    assert_eq!(
        addresses(&status),
        [w.node1.addr.to_string(), w.node0.addr.to_string()],
        "servers in list order, then the unlisted default"
    );

    assert_eq!(connect_backend(&w.env).as_deref(), Ok("node1"));
    let held = w.hold_node1();
    assert_eq!(
        held.connected().event.peer.as_deref(),
        Some(VIP),
        "getpeername must show the VIP"
    );
    let status = w.daemon.status();
    let n1 = server(&status, w.node1.addr);
    assert!(n1.connects >= 2, "{n1:#?}");
    assert_eq!(server(&status, w.node0.addr).state, ServerState::Standby);
    assert_eq!(server(&status, w.node0.addr).connects, 0);
}

// K3s loadbalancer_test.go: "server fails health check: its connections are
// closed and new connections go to the default server".
#[test]
fn a_failing_health_check_closes_existing_connections_and_moves_new_ones_to_the_default() {
    let Some(mut w) = OneServer::start("k3s_health_failure", HTTP_CHECK) else {
        return;
    };
    let mut held = w.hold_node1();

    let failed_at = Instant::now();
    w.node1.set_healthy(false);
    let reset = expect_reset(&mut held, failed_at + REACT, &w.daemon, "health failure");
    let status = wait_failed(&mut w.daemon, &w.node1);
    let n1 = server(&status, w.node1.addr);
    assert!(!n1.healthy, "{n1:#?}");
    assert!(
        n1.last_check
            .as_ref()
            .is_some_and(|c| !c.ok && c.reason.contains("503")),
        "{n1:#?}"
    );
    let demotion_to_reset = signed_ms(
        held.closed_event().expect("closed").wall,
        state_since(&status, &w.node1),
    );
    let micros = last_close_micros(&mut w.daemon);
    eprintln!(
        "health failure: client reset {:?} after /healthz turned 503, {demotion_to_reset:.1} ms after \
         the daemon's demotion (state_since, ms resolution); daemon micros={micros}; closed by {:?}",
        reset.duration_since(failed_at),
        held.closed_event().map(|c| &c.event)
    );
    assert!(
        demotion_to_reset < 2000.0,
        "reset {demotion_to_reset} ms after the demotion"
    );
    assert!(micros < 2_000_000, "micros={micros}");

    wait_connects_reach(&w.env, &w.daemon, &w.node0, Instant::now() + REACT);
    let status = w.daemon.status();
    let svc = service(&status, SVC);
    assert_eq!(svc.selected, Some(w.node0.addr.to_string()), "{svc:#?}");
    assert!(!svc.fail_open, "{svc:#?}");
    assert_eq!(server(&status, w.node0.addr).state, ServerState::Standby);
}

// K3s loadbalancer_test.go: "the default server's connection is not closed
// while the failed server stays failed".
#[test]
fn a_healthy_defaults_connection_is_not_closed_while_the_server_stays_failed() {
    let Some(mut w) = OneServer::start("k3s_default_kept", HTTP_CHECK) else {
        return;
    };
    w.fail_over();
    let mut held = w.env.hold(VIP);
    assert_eq!(held.backend(), "node0", "{:?}", held.connected());
    wait_counted(&mut w.daemon, &w.node0);
    held.assert_open_for(Duration::from_secs(3));
    let status = w.daemon.status();
    assert_eq!(server(&status, w.node1.addr).state, ServerState::Failed);
    let n0 = server(&status, w.node0.addr);
    assert_eq!(n0.state, ServerState::Standby, "{n0:#?}");
    assert!(n0.connections >= 1, "{n0:#?}");
    assert_eq!(
        service(&status, SVC).selected,
        Some(w.node0.addr.to_string())
    );
    assert_eq!(w.node0.held(), 1, "the default still holds the connection");
}

// K3s loadbalancer_test.go: "server's listener closed: new connections go to
// the default server" (here with plain TCP checks).
#[test]
fn a_closed_listener_moves_new_connections_to_the_default() {
    let Some(mut w) = OneServer::start("k3s_listener_closed", TCP_CHECK) else {
        return;
    };
    let mut held = w.hold_node1();
    let stopped = Instant::now();
    w.node1.stop_service();
    let reset = expect_reset(&mut held, stopped + REACT, &w.daemon, "listener closed");
    eprintln!(
        "listener closed: client reset {:?} after the listener closed",
        reset.duration_since(stopped)
    );
    let status = wait_failed(&mut w.daemon, &w.node1);
    let n1 = server(&status, w.node1.addr);
    assert!(
        n1.last_check
            .as_ref()
            .is_some_and(|c| !c.ok && c.reason.contains("refused")),
        "{n1:#?}"
    );
    let reached = wait_connects_reach(&w.env, &w.daemon, &w.node0, stopped + REACT);
    eprintln!(
        "listener closed: new connects reach the default {:?} after the listener closed",
        reached.duration_since(stopped)
    );
}

// K3s loadbalancer_test.go: "replacement server: the server list is
// replaced, the new server becomes preferred and connections to the
// default are closed".
#[test]
fn a_replacement_server_takes_over_and_the_defaults_connections_close() {
    let Some(mut w) = OneServer::start("k3s_replacement", HTTP_CHECK) else {
        return;
    };
    let node2 = node("node2", 12);
    w.fail_over();
    let mut held = w.env.hold(VIP);
    assert_eq!(held.backend(), "node0");
    wait_counted(&mut w.daemon, &w.node0);

    let put_at = Instant::now();
    let (code, body) = lb_tests::put_servers(&w.daemon.control, SVC, &[&node2.addr.to_string()]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["name"], SVC, "{body}");
    let listed: Vec<&str> = body["servers"]
        .as_array()
        .map(|servers| {
            servers
                .iter()
                .filter_map(|s| s["address"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        listed,
        [node2.addr.to_string(), w.node0.addr.to_string()],
        "{body}"
    );

    let reset = expect_reset(&mut held, put_at + REACT, &w.daemon, "replacement");
    let status = wait_ready(&mut w.daemon, &node2);
    assert!(find_server(&status, w.node1.addr).is_none(), "{status:#?}");
    let reached = wait_connects_reach(&w.env, &w.daemon, &node2, put_at + REACT);
    eprintln!(
        "replacement: default's connection reset {:?}, new connects reach the new server {:?} after the PUT",
        reset.duration_since(put_at),
        reached.duration_since(put_at)
    );
    let status = w.daemon.status();
    assert_eq!(service(&status, SVC).selected, Some(node2.addr.to_string()));
    assert_eq!(server(&status, w.node0.addr).state, ServerState::Standby);
}

// K3s loadbalancer_test.go: "default server changed at runtime".
#[test]
fn switching_the_default_server_at_runtime_closes_the_old_defaults_connections() {
    let Some(env) = TestEnv::new("k3s_default_switch") else {
        return;
    };
    let (node0, mut node1, node3) = (node("node0", 10), node("node1", 11), node("node3", 13));
    node1.down();
    let mut daemon = env.start_with(TOP, &api(&[&node1], Some(&node0), HTTP_CHECK));
    wait_failed(&mut daemon, &node1);
    wait_connects_reach(&env, &daemon, &node0, Instant::now() + REACT);
    let mut held = env.hold(VIP);
    assert_eq!(held.backend(), "node0");
    wait_counted(&mut daemon, &node0);

    env.config_with(TOP, &api(&[&node1], Some(&node3), HTTP_CHECK));
    let reload_at = Instant::now();
    daemon.signal(libc::SIGHUP);
    daemon.wait_counter(
        REACT,
        "daas_lb_config_reloads_total",
        &[("result", "applied")],
        1,
    );
    let reset = expect_reset(&mut held, reload_at + REACT, &daemon, "default switched");
    let status = daemon.wait_for(REACT, "node3 listed as the default", |s| {
        find_server(s, node3.addr).is_some() && find_server(s, node0.addr).is_none()
    });
    let n3 = server(&status, node3.addr);
    assert!(n3.default, "{n3:#?}");
    assert_eq!(n3.state, ServerState::Standby, "{n3:#?}");
    let reached = wait_connects_reach(&env, &daemon, &node3, reload_at + REACT);
    eprintln!(
        "default switched: old default's connection reset {:?}, new connects reach the new default {:?} after SIGHUP",
        reset.duration_since(reload_at),
        reached.duration_since(reload_at)
    );
}

// K3s loadbalancer_test.go: "no valid address: connects fail fast".
#[test]
fn a_service_without_any_address_refuses_connects_at_once() {
    let Some(env) = TestEnv::new("k3s_fail_fast") else {
        return;
    };
    let mut daemon = env.start_with(
        TOP,
        &format!("  - name: {SVC}\n    vip: \"{VIP}\"\n    protocol: tcp\n    servers: []\n"),
    );
    let status = daemon.wait_for(Duration::from_secs(5), "service up", |s| {
        s.services.iter().any(|svc| svc.name == SVC)
    });
    let svc = service(&status, SVC);
    assert_eq!(svc.selected, None, "{svc:#?}");
    assert!(svc.servers.is_empty(), "{svc:#?}");
    for _ in 0..3 {
        let out = env.cgroup.client(&["tcp", VIP]);
        assert_eq!(out.errno, Some(libc::ECONNREFUSED), "{out:?}");
        let took = Duration::from_micros(out.connect_us.expect("connect_us"));
        eprintln!("no valid address: connect refused in {took:?}");
        assert!(took < Duration::from_millis(10), "refused after {took:?}");
    }
    daemon.wait_for(Duration::from_secs(2), "refused counter", |s| {
        service(s, SVC).refused >= 3
    });
}

// K3s #11349: alternating outages of the servers must never leave the agent
// stuck (on the default server or on a dead server).
#[test]
fn alternating_outages_always_move_new_connections_to_the_node_that_is_up() {
    let Some(env) = TestEnv::new("k3s_11349") else {
        return;
    };
    let node0 = node("node0", 10);
    let mut pair = [node("node1", 11), node("node2", 12)];
    let check = "{ profile: k3s, kind: http, path: /healthz, port: 8080, timeout: 200ms, \
                 intervals: { active: 300ms, preferred: 200ms, healthy: 300ms, recovering: 200ms, \
                 failed: 250ms, other: 200ms } }";
    let mut daemon = env.start_with(TOP, &api(&[&pair[0], &pair[1]], Some(&node0), check));
    wait_ready(&mut daemon, &pair[0]);
    wait_ready(&mut daemon, &pair[1]);

    let phase = Duration::from_secs(6);
    let mut held: Option<HeldConnection> = None;
    let (mut worst_reach, mut worst_reset) = (Duration::ZERO, Duration::ZERO);
    for round in 0..10 {
        let (down, up) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
        let start = Instant::now();
        pair[up].up();
        pair[down].down();
        let what = format!(
            "phase {round}: {} down, {} up",
            pair[down].name, pair[up].name
        );
        if let Some(mut previous) = held.take() {
            assert_eq!(previous.backend(), pair[down].name, "{what}");
            let reset = expect_reset(&mut previous, start + REACT, &daemon, &what);
            worst_reset = worst_reset.max(reset.duration_since(start));
        }
        let reached = wait_connects_reach(&env, &daemon, &pair[up], start + REACT);
        worst_reach = worst_reach.max(reached.duration_since(start));
        let connection = env.hold(VIP);
        assert_eq!(connection.backend(), pair[up].name, "{what}");
        held = Some(connection);
        // For the rest of the phase every new connect reaches the node that is up.
        while start.elapsed() < phase {
            assert_eq!(
                connect_backend(&env).as_deref(),
                Ok(pair[up].name.as_str()),
                "{what}, {:?} in; status {:#?}",
                start.elapsed(),
                lb_userspace::api::client::fetch_status(daemon.api).ok()
            );
            thread::sleep(Duration::from_millis(200));
        }
        let status = daemon.status();
        let svc = service(&status, SVC);
        assert!(!svc.fail_open, "{what}: {svc:#?}");
        assert_eq!(svc.selected, Some(pair[up].addr.to_string()), "{what}");
        assert_eq!(
            server(&status, pair[up].addr).state,
            ServerState::Active,
            "{what}: {svc:#?}"
        );
    }
    eprintln!(
        "#11349: worst time from a phase change to new connects on the node that is up: \
         {worst_reach:?}; worst reset of a connection to the node going down: {worst_reset:?}"
    );

    // Both up again: the service settles on a listed server, not the default.
    let down = pair
        .iter()
        .position(|n| !n.service_running())
        .expect("one node down");
    pair[down].up();
    drop(held);
    wait_ready(&mut daemon, &pair[down]);
    let _final = env.hold(VIP);
    let status = daemon.wait_for(REACT, "a listed server active", |s| {
        let svc = service(s, SVC);
        svc.servers
            .iter()
            .any(|srv| !srv.default && srv.state == ServerState::Active)
            && svc.selected.as_deref() != Some(node0.addr.to_string().as_str())
    });
    let svc = service(&status, SVC);
    assert!(!svc.fail_open, "{svc:#?}");
    assert_eq!(server(&status, node0.addr).state, ServerState::Standby);
    let metrics = daemon.metrics();
    assert_eq!(
        metric(&metrics, "daas_lb_fail_open_total", &[("name", SVC)]),
        Some(0.0),
        "never failed open while the default was healthy"
    );
    for n in &pair {
        assert!(
            server(&status, n.addr).state >= ServerState::Recovering,
            "{} should be usable again: {svc:#?}",
            n.name
        );
    }
}

// K3s #13149: the health endpoint answers OK but connects to the service
// port fail; the server must be demoted anyway.
#[test]
fn a_server_whose_health_is_ok_but_whose_port_refuses_is_demoted() {
    let Some(env) = TestEnv::new("k3s_13149") else {
        return;
    };
    let (node0, mut node1, node2) = (node("node0", 10), node("node1", 11), node("node2", 12));
    let mut daemon = env.start_with(TOP, &api(&[&node1, &node2], Some(&node0), HTTP_CHECK));
    wait_ready(&mut daemon, &node1);
    wait_ready(&mut daemon, &node2);
    let mut held = env.hold(VIP);
    assert_eq!(held.backend(), "node1");

    let stopped = Instant::now();
    node1.stop_service();
    assert!(node1.is_healthy());
    let reset = expect_reset(&mut held, stopped + REACT, &daemon, "#13149");
    let status = wait_failed(&mut daemon, &node1);
    let n1 = server(&status, node1.addr);
    eprintln!(
        "#13149: client reset {:?} after the port closed; node1 reason {:?}, last check {:?}",
        reset.duration_since(stopped),
        n1.reason,
        n1.last_check
    );
    assert!(
        n1.last_check.as_ref().is_some_and(|c| c.ok),
        "the health endpoint still answers 200: {n1:#?}"
    );
    assert!(
        n1.reason.as_deref().is_some_and(|r| r.contains("connect"))
            || n1
                .last_check
                .as_ref()
                .is_some_and(|c| c.reason.contains("connect")),
        "the reason must name the failed connect: {n1:#?}\nlog lines about node1:\n{}",
        daemon
            .log()
            .lines()
            .filter(|l| l.contains("127.0.0.11"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    wait_connects_reach(&env, &daemon, &node2, stopped + REACT);
    // And it stays demoted while its port refuses, even though /healthz is OK.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(connect_backend(&env).as_deref(), Ok("node2"));
        let status = daemon.status();
        assert_eq!(
            server(&status, node1.addr).state,
            ServerState::Failed,
            "{status:#?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

// K3s #10240: when every server fails the service is never left without a
// backend: the default server, then (failing open) the best failed server.
#[test]
fn when_every_server_fails_connects_are_still_forwarded() {
    let Some(env) = TestEnv::new("k3s_10240") else {
        return;
    };
    let (node0, node1, node2) = (node("node0", 10), node("node1", 11), node("node2", 12));
    let mut daemon = env.start_with(TOP, &api(&[&node1, &node2], Some(&node0), HTTP_CHECK));
    wait_ready(&mut daemon, &node1);
    wait_ready(&mut daemon, &node2);

    // Both listed servers fail their health checks (their ports still accept).
    node1.set_healthy(false);
    node2.set_healthy(false);
    wait_failed(&mut daemon, &node1);
    let status = wait_failed(&mut daemon, &node2);
    let svc = service(&status, SVC);
    assert_eq!(svc.selected, Some(node0.addr.to_string()), "{svc:#?}");
    assert!(!svc.fail_open, "{svc:#?}");
    wait_connects_reach(&env, &daemon, &node0, Instant::now() + REACT);

    // The default fails too: fail open to the best-ranked server.
    node0.set_healthy(false);
    let status = daemon.wait_for(REACT, "fail open", |s| service(s, SVC).fail_open);
    let svc = service(&status, SVC);
    assert_eq!(
        svc.selected,
        Some(node1.addr.to_string()),
        "the best-ranked failed server (list order): {svc:#?}"
    );
    let metrics = daemon.metrics();
    let fail_open = metric(&metrics, "daas_lb_fail_open_total", &[("name", SVC)]);
    assert!(
        fail_open.is_some_and(|n| n >= 1.0),
        "{fail_open:?}\n{metrics}"
    );
    for _ in 0..3 {
        assert_eq!(connect_backend(&env).as_deref(), Ok("node1"));
    }
    assert_eq!(service(&daemon.status(), SVC).refused, 0, "nothing refused");
}

// K3s #11311: fail-back. Once the server recovers, long-lived connections
// to the default server are closed so clients come back at once.
#[test]
fn when_the_server_recovers_connections_to_the_default_are_closed() {
    let Some(mut w) = OneServer::start("k3s_11311", HTTP_CHECK) else {
        return;
    };
    w.fail_over();
    let mut held = w.env.hold(VIP);
    assert_eq!(held.backend(), "node0");
    wait_counted(&mut w.daemon, &w.node0);

    let recovered = Instant::now();
    w.node1.up();
    let reset = expect_reset(&mut held, recovered + REACT, &w.daemon, "fail-back");
    let status = wait_ready(&mut w.daemon, &w.node1);
    let since_preferred = signed_ms(
        held.closed_event().expect("closed").wall,
        state_since(&status, &w.node1),
    );
    let micros = last_close_micros(&mut w.daemon);
    eprintln!(
        "#11311 fail-back: default's connection reset {:?} after node1 came back, \
         {since_preferred:.1} ms after node1 became {} (state_since); daemon micros={micros}",
        reset.duration_since(recovered),
        server(&status, w.node1.addr).state
    );
    wait_connects_reach(&w.env, &w.daemon, &w.node1, recovered + REACT);
    let held = w.env.hold(VIP);
    assert_eq!(held.backend(), "node1");
}

#[test]
fn metrics_count_transitions_closed_connections_and_dials() {
    let Some(mut w) = OneServer::start("k3s_metrics", HTTP_CHECK) else {
        return;
    };
    let mut held = w.hold_node1();
    let (n0, n1) = (w.node0.addr.to_string(), w.node1.addr.to_string());
    let (n0, n1) = (n0.as_str(), n1.as_str());
    // Every value checked here is a count or a state number.
    let value = |text: &str, name: &str, labels: &[(&str, &str)]| -> u64 {
        let v =
            metric(text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"));
        assert!(v >= 0.0 && v.fract() == 0.0, "{name}{labels:?} = {v}");
        v as u64
    };
    let health = "k3s_loadbalancer_server_health";
    let connections = "k3s_loadbalancer_server_connections";
    let text = w.daemon.metrics();
    assert_eq!(value(&text, health, &[("name", SVC), ("server", n1)]), 7);
    assert_eq!(value(&text, health, &[("name", SVC), ("server", n0)]), 2);
    assert!(value(&text, connections, &[("name", SVC), ("server", n1)]) >= 1);
    assert_eq!(
        value(&text, connections, &[("name", SVC), ("server", n0)]),
        0
    );

    w.node1.down();
    expect_reset(
        &mut held,
        Instant::now() + REACT,
        &w.daemon,
        "metrics failover",
    );
    wait_failed(&mut w.daemon, &w.node1);
    wait_connects_reach(&w.env, &w.daemon, &w.node0, Instant::now() + REACT);
    // The closed-connection count is updated right after the close.
    let deadline = Instant::now() + Duration::from_secs(2);
    let text = loop {
        let text = w.daemon.metrics();
        if metric(&text, "daas_lb_connections_closed_total", &[("name", SVC)])
            .is_some_and(|n| n >= 1.0)
            || Instant::now() > deadline
        {
            break text;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(value(&text, health, &[("name", SVC), ("server", n1)]), 1);
    for (from, to) in [
        ("unchecked", "recovering"),
        ("recovering", "preferred"),
        ("preferred", "active"),
        ("active", "failed"),
    ] {
        let labels = [("name", SVC), ("server", n1), ("from", from), ("to", to)];
        assert_eq!(
            value(&text, "daas_lb_state_transitions_total", &labels),
            1,
            "{from} -> {to}"
        );
    }
    assert!(value(&text, "daas_lb_connections_closed_total", &[("name", SVC)]) >= 1);
    assert_eq!(value(&text, "daas_lb_fail_open_total", &[("name", SVC)]), 0);
    let all = parse_metrics(&text);
    // Client dials (seen by the kernel) succeeded: the held connection and
    // the connects that reached node0. The probes' dials both succeeded
    // and failed (node1 went down).
    for (family, status) in [
        ("k3s_loadbalancer_dial_duration_seconds", "success"),
        ("daas_lb_probe_dial_duration_seconds", "success"),
        ("daas_lb_probe_dial_duration_seconds", "failure"),
    ] {
        let labels = [("name", SVC), ("status", status)];
        let count = value(&text, &format!("{family}_count"), &labels);
        assert!(count >= 1, "no {family} {status} samples:\n{text}");
        let inf = samples(&all, &format!("{family}_bucket"), &labels)
            .into_iter()
            .find(|s| s.labels.iter().any(|(k, v)| k == "le" && v == "+Inf"))
            .unwrap_or_else(|| panic!("no {family} +Inf bucket for {status}:\n{text}"))
            .value;
        assert!(
            inf as u64 == count,
            "{family} {status}: +Inf bucket {inf} != count {count}"
        );
        let sum = metric(&text, &format!("{family}_sum"), &labels)
            .unwrap_or_else(|| panic!("no {family} {status} sum:\n{text}"));
        assert!(
            sum >= 0.0 && (sum as u64) < count,
            "{family} {status}: {sum} s for {count} dials"
        );
    }
    // Metrics are served on metrics_addr only; api_addr serves the status.
    let (code, _) =
        lb_userspace::api::client::request(&w.daemon.api.into(), "GET", "/metrics", None)
            .expect("GET /metrics on api_addr");
    assert_eq!(code, 404, "api_addr serves GET /status only");
}

/// The scenarios again with `dataplane: proxy`: the daemon listens on the
/// VIP and dials the nodes in the K3s order itself, as K3s's own agent load
/// balancer does. Left out: the metrics test, which counts connections the
/// daemon destroys when a node goes down; a node that goes down closes its
/// side first, and the proxy's copy of that connection ends on its own
/// before the state machine's `closeAll` (nothing left to destroy), where
/// the kernel path still finds the client's socket.
mod proxy_mode {
    use super::{MODE, Mode};

    macro_rules! proxied {
        ($($name:ident),+ $(,)?) => {
            $(
                #[test]
                fn $name() {
                    MODE.with(|mode| mode.set(Mode::Proxy));
                    super::$name();
                }
            )+
        };
    }

    proxied!(
        a_healthy_server_becomes_preferred_and_takes_new_connections,
        a_failing_health_check_closes_existing_connections_and_moves_new_ones_to_the_default,
        a_healthy_defaults_connection_is_not_closed_while_the_server_stays_failed,
        a_closed_listener_moves_new_connections_to_the_default,
        a_replacement_server_takes_over_and_the_defaults_connections_close,
        switching_the_default_server_at_runtime_closes_the_old_defaults_connections,
        a_service_without_any_address_refuses_connects_at_once,
        alternating_outages_always_move_new_connections_to_the_node_that_is_up,
        a_server_whose_health_is_ok_but_whose_port_refuses_is_demoted,
        when_every_server_fails_connects_are_still_forwarded,
        when_the_server_recovers_connections_to_the_default_are_closed,
    );
}
