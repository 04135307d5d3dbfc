//! The socket-level data path on the real kernel: connects and sends to a VIP
//! from a process in the test cgroup reach the selected backend, the
//! application only ever sees the VIP, non-VIP traffic is untouched, failover
//! and fail-fast work.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{TcpBackend, TestEnv, UdpBackend, service};
use lb_userspace::policy::state_machine::ServerState;

fn tcp_service(name: &str, vip: &str, servers: &[SocketAddr], interval_ms: u64) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "  - name: {name}\n    vip: \"{vip}\"\n    protocol: tcp\n    servers: [{}]\n    health_check: {{ kind: tcp, interval: {interval_ms}ms, timeout: {}ms }}\n",
        servers.join(", "),
        interval_ms / 2
    )
}

#[test]
fn tcp_vip_reaches_the_selected_backend_and_the_app_sees_only_the_vip() {
    let Some(env) = TestEnv::new("tcp_vip") else {
        return;
    };
    let b1 = TcpBackend::v4("b1");
    let b2 = TcpBackend::v4("b2");
    let mut daemon = env.start(&tcp_service(
        "web",
        "127.0.0.1:6444",
        &[b1.addr, b2.addr],
        200,
    ));
    // Two passing checks: unchecked -> recovering -> preferred.
    let status = daemon.wait_for(Duration::from_secs(5), "both servers preferred", |s| {
        service(s, "web")
            .servers
            .iter()
            .all(|srv| srv.state == ServerState::Preferred)
    });
    assert_eq!(service(&status, "web").selected, Some(b1.addr.to_string()));

    let out = env.cgroup.client(&["tcp", "127.0.0.1:6444", "ping"]);
    assert!(out.ok, "{out:?}");
    assert_eq!(out.reply.as_deref(), Some("b1:ping"));
    assert_eq!(
        out.peer.as_deref(),
        Some("127.0.0.1:6444"),
        "getpeername must show the VIP"
    );

    // A real third-party client: curl through the VIP.
    let curl = env.cgroup.output(Command::new("curl").args([
        "-s",
        "--max-time",
        "3",
        "http://127.0.0.1:6444/",
    ]));
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "b1", "{curl:?}");

    // A dual-stack (AF_INET6) socket connecting to ::ffff:127.0.0.1 is balanced too.
    let mapped = env.cgroup.client(&["tcp-mapped", "127.0.0.1:6444", "m"]);
    assert_eq!(mapped.reply.as_deref(), Some("b1:m"), "{mapped:?}");
    assert_eq!(mapped.peer.as_deref(), Some("[::ffff:127.0.0.1]:6444"));

    // Non-VIP traffic is untouched: a direct connect to b2 reaches b2.
    let direct = env.cgroup.client(&["tcp", &b2.addr.to_string(), "d"]);
    assert_eq!(direct.reply.as_deref(), Some("b2:d"));
    assert_eq!(direct.peer, Some(b2.addr.to_string()));
    // Same VIP address, other port: not a VIP, nothing listens, refused by the stack.
    let other_port = env.cgroup.client(&["tcp", "127.0.0.1:6445"]);
    assert_eq!(other_port.errno, Some(libc::ECONNREFUSED), "{other_port:?}");

    // Processes outside the cgroup are not affected (nothing listens on the VIP).
    assert!(std::net::TcpStream::connect("127.0.0.1:6444").is_err());

    // Kernel counters: client + curl + mapped = 3 connects to b1, none to b2.
    let status = daemon.wait_for(Duration::from_secs(2), "connect counters", |s| {
        service(s, "web").servers[0].connects >= 3
            && service(s, "web").servers[0].state == ServerState::Active
    });
    let web = service(&status, "web");
    assert_eq!(web.servers[0].connects, 3, "{web:?}");
    assert_eq!(web.servers[1].connects, 0, "{web:?}");
    // The server that took the connects is active; the other passed its
    // checks and waits as preferred.
    assert_eq!(web.servers[0].state, ServerState::Active);
    assert_eq!(web.servers[1].state, ServerState::Preferred);

    let metrics = lb_userspace::api::client::get(lb_tests::METRICS, "/metrics").unwrap();
    assert!(
        metrics.contains(&format!(
            "k3s_loadbalancer_server_health{{name=\"web\",server=\"{}\"}} 7",
            b1.addr
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "daas_lb_backend_connects_total{{name=\"web\",server=\"{}\"}} 3",
            b1.addr
        )),
        "{metrics}"
    );

    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn ipv6_vip_reaches_the_selected_backend() {
    let Some(env) = TestEnv::new("ipv6_vip") else {
        return;
    };
    let b1 = TcpBackend::v6("b1");
    let b2 = TcpBackend::v6("b2");
    let mut daemon = env.start(&tcp_service("web6", "[::1]:6444", &[b1.addr, b2.addr], 200));
    daemon.wait_checked();
    let out = env.cgroup.client(&["tcp", "[::1]:6444", "six"]);
    assert!(out.ok, "{out:?}");
    assert_eq!(out.reply.as_deref(), Some("b1:six"));
    assert_eq!(out.peer.as_deref(), Some("[::1]:6444"));
    let curl = env.cgroup.output(Command::new("curl").args([
        "-s",
        "-g",
        "--max-time",
        "3",
        "http://[::1]:6444/",
    ]));
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "b1", "{curl:?}");
}

#[test]
fn udp_vip_round_trip_replies_come_from_the_vip() {
    let Some(env) = TestEnv::new("udp_vip") else {
        return;
    };
    let u1 = UdpBackend::start("u1", "127.0.0.1".parse().unwrap());
    let u2 = UdpBackend::start("u2", "127.0.0.1".parse().unwrap());
    let u6 = UdpBackend::start("u6", "::1".parse().unwrap());
    let services = format!(
        "  - name: dns\n    vip: 127.0.0.1:5353\n    protocol: udp\n    servers: [\"{}\", \"{}\"]\n    health_check: {{ kind: udp, interval: 200ms, timeout: 50ms }}\n\
         \x20 - name: dns6\n    vip: \"[::1]:5353\"\n    protocol: udp\n    servers: [\"{}\"]\n",
        u1.addr, u2.addr, u6.addr
    );
    let mut daemon = env.start(&services);
    let status = daemon.wait_checked();
    assert_eq!(service(&status, "dns").selected, Some(u1.addr.to_string()));

    // Unconnected socket: sendto(VIP) / recvfrom() shows the VIP as the source.
    let out = env.cgroup.client(&["udp", "127.0.0.1:5353", "q1"]);
    assert!(out.ok, "{out:?}");
    assert_eq!(out.reply.as_deref(), Some("u1:q1"));
    assert_eq!(out.reply_from.as_deref(), Some("127.0.0.1:5353"));

    // Connected socket: getpeername and recvfrom show the VIP.
    let out = env
        .cgroup
        .client(&["udp-connected", "127.0.0.1:5353", "q2"]);
    assert!(out.ok, "{out:?}");
    assert_eq!(out.reply.as_deref(), Some("u1:q2"));
    assert_eq!(out.peer.as_deref(), Some("127.0.0.1:5353"));
    assert_eq!(out.reply_from.as_deref(), Some("127.0.0.1:5353"));

    // IPv6 UDP.
    let out = env.cgroup.client(&["udp", "[::1]:5353", "q6"]);
    assert_eq!(out.reply.as_deref(), Some("u6:q6"), "{out:?}");
    assert_eq!(out.reply_from.as_deref(), Some("[::1]:5353"));

    let status = daemon.wait_for(Duration::from_secs(2), "udp counters", |s| {
        let dns = service(s, "dns");
        dns.servers[0].sendmsgs >= 1 && dns.servers[0].connects >= 1
    });
    let dns = service(&status, "dns");
    assert_eq!(
        (dns.servers[0].sendmsgs, dns.servers[0].connects),
        (1, 1),
        "{dns:?}"
    );
}

#[test]
fn stopping_the_selected_backend_moves_new_connects_within_two_intervals() {
    let Some(env) = TestEnv::new("failover") else {
        return;
    };
    let mut b1 = TcpBackend::v4("b1");
    let b2 = TcpBackend::v4("b2");
    let b3 = TcpBackend::v4("b3");
    let interval = Duration::from_millis(300);
    let mut daemon = env.start(&tcp_service(
        "api",
        "127.0.0.1:6443",
        &[b1.addr, b2.addr, b3.addr],
        300,
    ));
    daemon.wait_for(Duration::from_secs(5), "every server preferred", |s| {
        service(s, "api")
            .servers
            .iter()
            .all(|srv| srv.state == ServerState::Preferred)
    });
    assert_eq!(
        env.cgroup
            .client(&["tcp", "127.0.0.1:6443"])
            .reply
            .as_deref(),
        Some("b1:hello\n")
    );

    b1.stop();
    let stopped = Instant::now();
    let moved = loop {
        let out = env.cgroup.client(&["tcp", "127.0.0.1:6443"]);
        if out.reply.as_deref() == Some("b2:hello\n") {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < interval * 10,
            "never moved to b2; last {out:?}\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(10));
    };
    eprintln!("failover: new connects reached the next server {moved:?} after the backend stopped");
    assert!(
        moved <= interval * 2,
        "took {moved:?}, more than two check intervals"
    );
    let status = daemon.wait_for(Duration::from_secs(2), "b1 failed", |s| {
        service(s, "api").servers[0].state == ServerState::Failed
    });
    let api = service(&status, "api");
    assert_eq!(api.selected, Some(b2.addr.to_string()));
    assert_eq!(
        api.servers[0].state,
        ServerState::Failed,
        "{api:?}\n{}",
        daemon.log()
    );
    assert!(
        api.servers[0]
            .last_check
            .as_ref()
            .is_some_and(|c| c.reason.contains("refused"))
    );
}

#[test]
fn a_service_without_a_reachable_server_refuses_connects_at_once() {
    let Some(env) = TestEnv::new("fail_fast") else {
        return;
    };
    // One closed port and one server that never answers (SYNs go into a void).
    let blackhole = SocketAddr::new(env.ns.blackhole().into(), 9345);
    let closed = {
        let b = TcpBackend::v4("gone");
        b.addr
    };
    let services = format!(
        "{}  - name: empty\n    vip: 127.0.0.1:7000\n    servers: []\n  - name: empty-udp\n    vip: 127.0.0.1:7000\n    protocol: udp\n    servers: []\n",
        tcp_service("dead", "127.0.0.1:6444", &[closed, blackhole], 200)
    );
    let mut daemon = env.start(&services);
    // Every server fails: the service is not left empty (K3s #10240) but
    // fails open to the best-ranked server.
    let status = daemon.wait_for(Duration::from_secs(5), "both servers failed", |s| {
        let dead = service(s, "dead");
        dead.fail_open
            && dead
                .servers
                .iter()
                .all(|srv| srv.state == ServerState::Failed)
    });
    let dead = service(&status, "dead");
    assert_eq!(dead.selected, Some(closed.to_string()), "{dead:?}");
    assert!(
        dead.servers[1]
            .last_check
            .as_ref()
            .is_some_and(|c| c.reason.contains("timed out")),
        "{status:?}"
    );
    // Failing open forwards: the closed port refuses in the kernel's stack,
    // not in our program (the refused counter stays 0).
    let out = env.cgroup.client(&["tcp", "127.0.0.1:6444"]);
    assert_eq!(out.errno, Some(libc::ECONNREFUSED), "{out:?}");

    // A service without any server refuses at once.
    let out = env.cgroup.client(&["tcp", "127.0.0.1:7000"]);
    assert_eq!(out.errno, Some(libc::ECONNREFUSED), "{out:?}");
    let took = Duration::from_micros(out.connect_us.unwrap());
    assert!(
        took < Duration::from_millis(10),
        "connect failed after {took:?}"
    );
    eprintln!("127.0.0.1:7000: connect refused in {took:?}");
    // UDP: sendto() and connect() on a service without backends fail too.
    let out = env.cgroup.client(&["udp", "127.0.0.1:7000", "q"]);
    assert_eq!(out.errno, Some(libc::ECONNREFUSED), "{out:?}");
    let out = env.cgroup.client(&["udp-connected", "127.0.0.1:7000", "q"]);
    assert_eq!(out.errno, Some(libc::ECONNREFUSED), "{out:?}");

    let status = daemon.wait_for(Duration::from_secs(2), "refused counters", |s| {
        service(s, "empty").refused >= 1 && service(s, "empty-udp").refused >= 2
    });
    assert_eq!(service(&status, "dead").refused, 0);
    assert_eq!(service(&status, "empty").refused, 1);
    assert_eq!(service(&status, "empty-udp").refused, 2);
}

#[test]
fn a_corrupt_backend_slot_is_refused_never_mis_forwarded() {
    let Some(env) = TestEnv::new("corrupt_slot") else {
        return;
    };
    let b1 = TcpBackend::v4("b1");
    let mut daemon = env.start(&tcp_service("web", "127.0.0.1:6444", &[b1.addr], 200));
    daemon.wait_checked();
    assert_eq!(
        env.cgroup
            .client(&["tcp", "127.0.0.1:6444"])
            .reply
            .as_deref(),
        Some("b1:hello\n")
    );

    // Overwrite backend slot 1 (b1) behind the controller's back: same
    // address and port, but family AF_INET6, which cannot be written into an
    // IPv4 socket. The kernel program must refuse rather than guess.
    let port = b1.addr.port().to_le_bytes();
    let mut value = vec!["127", "0", "0", "1"];
    value.extend(["0"; 12]);
    let (p0, p1) = (port[0].to_string(), port[1].to_string());
    value.extend([p0.as_str(), p1.as_str(), "10", "0", "0", "0", "0", "0"]);
    let map = env.pins.path().join("backends").display().to_string();
    let mut args = vec![
        "map",
        "update",
        "pinned",
        map.as_str(),
        "key",
        "1",
        "0",
        "0",
        "0",
        "value",
    ];
    args.extend(value.iter().copied());
    lb_tests::sh("bpftool", &args);

    let out = env.cgroup.client(&["tcp", "127.0.0.1:6444"]);
    assert_eq!(out.errno, Some(libc::ECONNREFUSED), "{out:?}");
    let status = daemon.wait_for(Duration::from_secs(2), "refused counter", |s| {
        service(s, "web").refused >= 1
    });
    assert_eq!(service(&status, "web").refused, 1);
}

#[test]
fn a_failed_udp_server_s_connected_sockets_are_closed_and_new_ones_move() {
    let Some(env) = TestEnv::new("udp_close") else {
        return;
    };
    let b1 = UdpBackend::start("u1", Ipv4Addr::LOCALHOST.into());
    let b2 = UdpBackend::start("u2", Ipv4Addr::LOCALHOST.into());
    let mut daemon = env.start(&format!(
        "  - name: dns\n    vip: 127.0.0.1:5353\n    protocol: udp\n    servers: [\"{}\", \"{}\"]\n    health_check: {{ kind: udp, interval: 200ms, timeout: 100ms, jitter: 0% }}\n",
        b1.addr, b2.addr
    ));
    daemon.wait_for(Duration::from_secs(5), "both servers preferred", |s| {
        service(s, "dns")
            .servers
            .iter()
            .all(|srv| srv.state == ServerState::Preferred)
    });
    let mut held = lb_tests::HeldConnection::open_udp(&env.cgroup, "127.0.0.1:5353");
    assert_eq!(held.backend(), "u1", "{}", held.reply());
    daemon.wait_for(
        Duration::from_secs(3),
        "u1 counts the connected socket",
        |s| service(s, "dns").servers[0].connections == 1,
    );

    // u1 goes away: its port answers ICMP unreachable, the probe's dial
    // fails, u1 is demoted and the client's connected socket destroyed.
    let stopped = Instant::now();
    drop(b1);
    let (closed_at, errno) = held
        .wait_closed(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("UDP socket not closed\n{}", daemon.log()));
    eprintln!(
        "udp: connected socket closed {:?} after the server stopped (errno {errno:?})",
        closed_at.duration_since(stopped)
    );
    assert_eq!(errno, Some(libc::ECONNABORTED));
    let out = env.cgroup.client(&["udp-connected", "127.0.0.1:5353", "q"]);
    assert_eq!(out.reply.as_deref(), Some("u2:q"), "{out:?}");
    let status = daemon.status();
    assert_eq!(
        service(&status, "dns").servers[0].state,
        ServerState::Failed
    );
    assert_eq!(service(&status, "dns").servers[0].connections, 0);
}
