//! Proxy mode (`dataplane: proxy`) on the real kernel: the daemon listens
//! on the VIP itself and dials the servers in the K3s order; IPv4 and IPv6;
//! a server that closes its listener costs no client connect (the next
//! server is dialed inside the same client connection, as K3s does); a
//! demoted server's proxied connections are closed (`closeAll`); dials
//! reach the state machine and the dial-duration metric; the kernel does
//! not redirect a proxied VIP; with `HTTPS_PROXY` (tinyproxy) the servers
//! are dialed and health-checked through the proxy, as K3s dials them.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{TcpBackend, TestEnv, service};
use lb_userspace::policy::state_machine::ServerState;

/// How long a daemon may take to start and check its servers once: the
/// kernel's verifier alone took 5 s on a loaded 2-CPU machine.
const STARTED_WITHIN: Duration = Duration::from_secs(20);

/// A proxy-mode TCP service on `vip` over `servers`, TCP checks every
/// `interval_ms`.
fn proxied(name: &str, vip: &str, servers: &[SocketAddr], interval_ms: u64) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "  - name: {name}\n    vip: \"{vip}\"\n    dataplane: proxy\n    dial_timeout: 2s\n    servers: [{}]\n    health_check: {{ kind: tcp, interval: {interval_ms}ms, timeout: {}ms, jitter: 0% }}\n",
        servers.join(", "),
        interval_ms / 2
    )
}

/// One request through `addr` from outside any cgroup: the backend's echo.
fn echo(addr: &str, payload: &str) -> std::io::Result<String> {
    let mut stream =
        TcpStream::connect_timeout(&addr.parse().expect("address"), Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(payload.as_bytes())?;
    let mut reply = vec![0u8; 256];
    let n = stream.read(&mut reply)?;
    reply.truncate(n);
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[test]
fn the_proxy_carries_tcp_over_ipv4_and_ipv6_to_the_selected_server() {
    let Some(env) = TestEnv::new("proxy_v4_v6") else {
        return;
    };
    let b1 = TcpBackend::v4("b1");
    let b2 = TcpBackend::v4("b2");
    let c1 = TcpBackend::v6("c1");
    let services = format!(
        "{}{}",
        proxied("web", "127.0.0.1:6460", &[b1.addr, b2.addr], 200),
        proxied("web6", "[::1]:6460", &[c1.addr], 200)
    );
    let mut daemon = env.start(&services);
    daemon.wait_for(STARTED_WITHIN, "servers checked", |s| {
        service(s, "web")
            .servers
            .iter()
            .all(|srv| srv.state == ServerState::Preferred)
            && service(s, "web6").servers[0].state == ServerState::Preferred
    });

    // From the test cgroup (the kernel's hooks run there and must leave the
    // proxied VIP alone) and from outside it.
    let out = env.cgroup.client(&["tcp", "127.0.0.1:6460", "ping"]);
    assert!(out.ok, "{out:?}");
    assert_eq!(out.reply.as_deref(), Some("b1:ping"));
    assert_eq!(out.peer.as_deref(), Some("127.0.0.1:6460"));
    assert_eq!(
        echo("127.0.0.1:6460", "out").expect("proxied echo"),
        "b1:out"
    );
    assert_eq!(
        echo("[::1]:6460", "six").expect("proxied v6 echo"),
        "c1:six"
    );
    // A real third-party client: curl through the proxy (HTTP on the backend).
    let curl = Command::new("curl")
        .args(["-s", "--max-time", "3", "http://127.0.0.1:6460/"])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "b1", "{curl:?}");

    // The dials reached the state machine: the server in use is active.
    let status = daemon.wait_for(Duration::from_secs(3), "b1 active by dials", |s| {
        service(s, "web").servers[0].state == ServerState::Active
    });
    let web = service(&status, "web");
    assert_eq!(web.dataplane, "proxy");
    let proxy = web.proxy.as_ref().expect("proxy status");
    assert_eq!(proxy.listen, "127.0.0.1:6460");
    assert!(proxy.accepted >= 3, "{proxy:?}");
    assert_eq!(proxy.no_server, 0, "{proxy:?}");
    assert_eq!(web.servers[1].state, ServerState::Preferred, "{web:?}");
    // A proxied server's connects are the proxy's successful dials (the
    // test client's, the echo's and curl's), none of b2's.
    assert_eq!(web.servers[0].connects, 3, "{web:?}");
    assert_eq!(web.servers[1].connects, 0, "{web:?}");
    // Successes reach the state machine every 20 ms.
    let successes = daemon.wait_counter(
        Duration::from_secs(2),
        "k3s_loadbalancer_dial_duration_seconds_count",
        &[("name", "web"), ("status", "success")],
        3,
    );
    assert_eq!(successes, 3, "successful dials counted");

    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    // The listener is gone with the daemon.
    assert!(TcpStream::connect("127.0.0.1:6460").is_err());
}

#[test]
fn a_server_that_closes_its_listener_costs_no_client_connect() {
    let Some(env) = TestEnv::new("proxy_failover") else {
        return;
    };
    let mut b1 = TcpBackend::v4("b1");
    let b2 = TcpBackend::v4("b2");
    // Long checks: the dials, not the probes, must find the dead server.
    let mut daemon = env.start(&proxied("api", "127.0.0.1:6461", &[b1.addr, b2.addr], 2000));
    daemon.wait_for(Duration::from_secs(10), "servers checked", |s| {
        service(s, "api")
            .servers
            .iter()
            .all(|srv| srv.state == ServerState::Preferred)
    });
    assert_eq!(echo("127.0.0.1:6461", "a").expect("echo"), "b1:a");
    b1.stop();
    let start = Instant::now();
    for i in 0..200 {
        let reply = echo("127.0.0.1:6461", &format!("{i}"))
            .unwrap_or_else(|err| panic!("connect {i} failed: {err}\n{}", daemon.log()));
        assert_eq!(reply, format!("b2:{i}"), "connect {i}");
    }
    // The refused dial failed the server at once (K3s: recordFailure(reasonDial)).
    let status = daemon.wait_for(Duration::from_secs(3), "b1 failed", |s| {
        service(s, "api").servers[0].state == ServerState::Failed
    });
    let api = service(&status, "api");
    assert_eq!(api.selected, Some(b2.addr.to_string()), "{api:?}");
    let failures = daemon.counter(
        "k3s_loadbalancer_dial_duration_seconds_count",
        &[("name", "api"), ("status", "failure")],
    );
    // The first connect after the stop found b1 refusing; once failed it is
    // dialed last, so few connects pay for it.
    assert!((1..=5).contains(&failures), "{failures} failed dials");
    eprintln!(
        "200 connects in {:?}, {failures} refused dials",
        start.elapsed()
    );
}

#[test]
fn a_demoted_servers_proxied_connections_are_closed() {
    let Some(env) = TestEnv::new("proxy_close_all") else {
        return;
    };
    let mut b1 = TcpBackend::v4("b1");
    let b2 = TcpBackend::v4("b2");
    let mut daemon = env.start(&proxied("api", "127.0.0.1:6462", &[b1.addr, b2.addr], 200));
    daemon.wait_for(STARTED_WITHIN, "servers checked", |s| {
        service(s, "api")
            .servers
            .iter()
            .all(|srv| srv.state == ServerState::Preferred)
    });
    let mut held = env.hold("127.0.0.1:6462");
    assert_eq!(held.backend(), "b1", "{:?}", held.connected());
    daemon.wait_for(Duration::from_secs(3), "the held connection counted", |s| {
        service(s, "api").servers[0].connections == 1
            && service(s, "api").servers[0].state == ServerState::Active
    });
    assert_eq!(b1.held(), 1);
    // The active server fails its checks: it is demoted and its
    // connections are closed (K3s closeAll), the client sees them end.
    b1.stop();
    let closed = held.wait_closed(Duration::from_secs(5));
    assert!(
        closed.is_some(),
        "the held connection stayed open\n{}",
        daemon.log()
    );
    let status = daemon.wait_for(Duration::from_secs(3), "b1 failed, b2 selected", |s| {
        let api = service(s, "api");
        api.servers[0].state == ServerState::Failed && api.selected == Some(b2.addr.to_string())
    });
    assert_eq!(service(&status, "api").servers[0].connections, 0);
    let again = env.hold("127.0.0.1:6462");
    assert_eq!(again.backend(), "b2");
}

#[test]
fn dataplane_proxy_loads_no_ebpf_and_proxies_every_service() {
    let Some(env) = TestEnv::new("proxy_daemon") else {
        return;
    };
    let b1 = TcpBackend::v4("b1");
    // No `dataplane` on the service: the daemon's `dataplane: proxy` makes it
    // a proxied one.
    let service = format!(
        "  - name: web\n    vip: \"127.0.0.1:6463\"\n    servers: [\"{}\"]\n    health_check: {{ kind: tcp, interval: 200ms, timeout: 100ms }}\n",
        b1.addr
    );
    let config = env.config_with("dataplane: proxy\n", &service);
    // What an earlier eBPF run leaves behind (here an empty `links`
    // directory) is warned about, not undone.
    std::fs::create_dir_all(env.pins.path().join("links")).expect("pin directory");
    let mut daemon = env.spawn(&["--config", &config]);
    let status = daemon.wait_for(STARTED_WITHIN, "b1 preferred", |s| {
        service_of(s).servers[0].state == ServerState::Preferred
    });
    assert!(!status.dataplane.ebpf, "{:?}", status.dataplane);
    assert_eq!(status.dataplane.configured, "proxy");
    assert_eq!(service_of(&status).dataplane, "proxy");
    assert_eq!(echo("127.0.0.1:6463", "p").expect("proxied echo"), "b1:p");
    // Nothing was loaded or pinned.
    let pinned: Vec<_> = std::fs::read_dir(env.pins.path())
        .expect("pin directory")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(
        pinned,
        ["links"],
        "pins under {}",
        env.pins.path().display()
    );
    assert!(
        daemon.log().contains("an earlier eBPF run left pins here"),
        "{}",
        daemon.log()
    );
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn dataplane_auto_falls_back_to_proxy_mode_when_the_programs_cannot_attach() {
    let Some(env) = TestEnv::new("proxy_auto") else {
        return;
    };
    let b1 = TcpBackend::v4("b1");
    let service = format!(
        "  - name: web\n    vip: \"127.0.0.1:6464\"\n    servers: [\"{}\"]\n    health_check: {{ kind: tcp, interval: 200ms, timeout: 100ms }}\n",
        b1.addr
    );
    let config = env.config_with("dataplane: auto\n", &service);
    // A directory that is no cgroup: attaching is impossible.
    let not_a_cgroup = env.tmp.path().join("not-a-cgroup");
    std::fs::create_dir_all(&not_a_cgroup).expect("directory");
    let mut daemon = env.spawn(&[
        "--config",
        &config,
        "--cgroup",
        not_a_cgroup.to_str().expect("utf-8 path"),
    ]);
    let status = daemon.wait_for(STARTED_WITHIN, "b1 preferred", |s| {
        service_of(s).servers[0].state == ServerState::Preferred
    });
    assert!(!status.dataplane.ebpf, "{:?}", status.dataplane);
    assert_eq!(status.dataplane.configured, "auto");
    let why = status.dataplane.fallback.clone().unwrap_or_default();
    assert!(why.contains("cgroup"), "fallback reason {why:?}");
    assert_eq!(service_of(&status).dataplane, "proxy");
    assert!(
        daemon.log().contains("falls back to PROXY MODE"),
        "{}",
        daemon.log()
    );
    // Clients in the cgroup and outside it reach the server through the proxy.
    let out = env.cgroup.client(&["tcp", "127.0.0.1:6464", "ping"]);
    assert_eq!(out.reply.as_deref(), Some("b1:ping"), "{out:?}");
    assert_eq!(echo("127.0.0.1:6464", "x").expect("proxied echo"), "b1:x");
    // The fallback and the proxy's counters in /metrics, for alerting.
    let metrics = daemon.metrics();
    for line in [
        "daas_lb_dataplane_ebpf{configured=\"auto\"} 0",
        "daas_lb_proxy_accepted_total{name=\"web\"} 2",
        "daas_lb_proxy_no_server_total{name=\"web\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn a_reload_keeps_a_proxied_services_connections() {
    let Some(env) = TestEnv::new("proxy_reload") else {
        return;
    };
    let b1 = TcpBackend::v4("b1");
    let b2 = TcpBackend::v4("b2");
    let kernel = |name: &str, vip: &str| {
        format!(
            "  - name: {name}\n    vip: \"{vip}\"\n    servers: [\"{}\"]\n    health_check: {{ kind: tcp, interval: 200ms, timeout: 100ms }}\n",
            b2.addr
        )
    };
    let first = format!(
        "{}{}",
        proxied("web", "127.0.0.1:6465", &[b1.addr, b2.addr], 200),
        kernel("other", "127.0.0.1:6466")
    );
    let mut daemon = env.start(&first);
    daemon.wait_for(STARTED_WITHIN, "servers checked", |s| {
        service_of(s)
            .servers
            .iter()
            .all(|srv| srv.state == ServerState::Preferred)
    });
    let mut held = env.hold("127.0.0.1:6465");
    assert_eq!(held.backend(), "b1");
    // A new eBPF service in front, and the proxied one's check interval
    // changed: the proxied service is kept (its id too: it has no `services`
    // entry for the id planning to adopt), not replaced.
    let second = format!(
        "{}{}{}",
        kernel("newcomer", "127.0.0.1:6467"),
        proxied("web", "127.0.0.1:6465", &[b1.addr, b2.addr], 300),
        kernel("other", "127.0.0.1:6466")
    );
    env.config(&second);
    daemon.signal(libc::SIGHUP);
    daemon.wait_log(Duration::from_secs(5), "configuration reloaded", 1);
    assert!(
        held.wait_closed(Duration::from_secs(1)).is_none(),
        "the reload closed the proxied connection\n{}",
        daemon.log()
    );
    assert_eq!(echo("127.0.0.1:6465", "r").expect("proxied echo"), "b1:r");
    let status = daemon.status();
    let web = status
        .services
        .iter()
        .find(|s| s.name == "web")
        .expect("web");
    assert_eq!(web.proxy.as_ref().map(|p| p.active), Some(1), "{web:?}");
    // The eBPF services still work through the kernel.
    let out = env.cgroup.client(&["tcp", "127.0.0.1:6467", "k"]);
    assert_eq!(out.reply.as_deref(), Some("b2:k"), "{out:?}");
}

/// The only service of a test's status.
fn service_of(
    status: &lb_userspace::api::status::Status,
) -> &lb_userspace::api::status::ServiceStatus {
    &status.services[0]
}

/// Debian's tinyproxy; `None` (the test skips) only without `CI=true`.
fn tinyproxy() -> Option<std::path::PathBuf> {
    let found = lb_tests::proxies::find_program("tinyproxy");
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "tinyproxy is missing under CI=true (apt-get install tinyproxy)"
        );
        eprintln!("skipping: no tinyproxy (apt-get install tinyproxy)");
    }
    found
}

/// Puts `addresses` (/24) on a veth of the test's namespace, for servers
/// off loopback: nothing routes out.
fn servers_off_loopback(addresses: &[&str]) {
    lb_tests::sh(
        "ip",
        &[
            "link", "add", "srv0", "type", "veth", "peer", "name", "srv1",
        ],
    );
    for address in addresses {
        lb_tests::sh(
            "ip",
            &["addr", "add", &format!("{address}/24"), "dev", "srv0"],
        );
    }
    lb_tests::sh("ip", &["link", "set", "srv0", "up"]);
    lb_tests::sh("ip", &["link", "set", "srv1", "up"]);
}

#[test]
fn servers_are_dialed_through_the_https_proxy_as_k3s_does() {
    let Some(env) = TestEnv::new("proxy_connect") else {
        return;
    };
    let Some(tinyproxy_bin) = tinyproxy() else {
        return;
    };
    // Servers off loopback (loopback is never proxied, as in Go).
    servers_off_loopback(&["192.0.2.10", "192.0.2.11"]);
    let b1 = TcpBackend::bind("b1", "192.0.2.10:7000".parse().unwrap());
    let b2 = TcpBackend::bind("b2", "192.0.2.11:7000".parse().unwrap());
    let mut proxy = lb_tests::proxies::Tinyproxy::start(&tinyproxy_bin, 8888, &[7000], "");
    let config = env.config(&proxied("api", "127.0.0.1:6468", &[b1.addr, b2.addr], 200));
    let mut daemon = lb_tests::Daemon::spawn_with_env(
        &["--config", &config],
        env.tmp.path(),
        lb_tests::API,
        &[
            ("K3S_AGENT_HTTP_PROXY_ALLOWED", "true"),
            ("HTTPS_PROXY", "http://127.0.0.1:8888"),
            // b2 is dialed directly.
            ("NO_PROXY", "192.0.2.11"),
        ],
    );
    daemon.wait_for(STARTED_WITHIN, "servers checked", |s| {
        service_of(s)
            .servers
            .iter()
            .all(|srv| srv.state == ServerState::Preferred)
    });
    for i in 0..3 {
        assert_eq!(
            echo("127.0.0.1:6468", &format!("{i}")).expect("echo"),
            format!("b1:{i}")
        );
    }
    // The three client dials went through the proxy (b1's health checks
    // too, hence more CONNECTs in its log).
    let status = daemon.wait_for(Duration::from_secs(3), "b1's three dials", |s| {
        service_of(s).servers[0].connects == 3
    });
    assert_eq!(service_of(&status).servers[1].connects, 0);
    assert!(proxy.connects_to(b1.addr) > 3, "{}", proxy.logs());
    assert_eq!(proxy.connects_to(b2.addr), 0, "{}", proxy.logs());
    // The proxy goes down: its errors are dial failures that name it, and
    // the next server (not proxied: NO_PROXY) takes the client, in the same
    // client connection.
    proxy.kill();
    assert_eq!(echo("127.0.0.1:6468", "down").expect("echo"), "b2:down");
    // The failed dial failed the server in use (and its health checks,
    // through the same proxy, keep it failed).
    daemon.wait_log(
        Duration::from_secs(3),
        "server=192.0.2.10:7000 from=active to=failed",
        1,
    );
    let metrics = daemon.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("proxy_unreachable") && l.contains(&b1.addr.to_string())),
        "no dial failure counted with reason proxy_unreachable:\n{metrics}"
    );
    assert!(
        daemon.log().contains("proxy 127.0.0.1:8888"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_proxied_services_health_checks_go_through_the_https_proxy() {
    let Some(env) = TestEnv::new("proxy_connect_checks") else {
        return;
    };
    let Some(tinyproxy_bin) = tinyproxy() else {
        return;
    };
    // The server off loopback (never proxied).
    servers_off_loopback(&["192.0.2.10"]);
    let b1 = TcpBackend::bind("b1", "192.0.2.10:7000".parse().unwrap());
    let mut proxy = lb_tests::proxies::Tinyproxy::start(&tinyproxy_bin, 8888, &[7000], "");
    // The same server behind an eBPF-mode service: the kernel redirect
    // connects directly, and so do that service's checks.
    let kernel = format!(
        "  - name: kernel\n    vip: \"127.0.0.1:6470\"\n    servers: [\"{}\"]\n    health_check: {{ kind: tcp, interval: 200ms, timeout: 100ms, jitter: 0% }}\n",
        b1.addr
    );
    let config = env.config(&format!(
        "{}{kernel}",
        proxied("api", "127.0.0.1:6469", &[b1.addr], 200)
    ));
    let mut daemon = lb_tests::Daemon::spawn_with_env(
        &["--config", &config],
        env.tmp.path(),
        lb_tests::API,
        &[
            ("K3S_AGENT_HTTP_PROXY_ALLOWED", "true"),
            ("HTTPS_PROXY", "http://127.0.0.1:8888"),
        ],
    );
    // No client has connected: the CONNECTs are the health checks'.
    let status = daemon.wait_for(STARTED_WITHIN, "b1 preferred by checks", |s| {
        service(s, "api").servers[0].state == ServerState::Preferred
            && service(s, "kernel").servers[0].state == ServerState::Preferred
    });
    let direct = &service(&status, "kernel").servers[0];
    assert!(
        direct
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("tcp connect ok in ")),
        "{direct:?}"
    );
    let server = &service(&status, "api").servers[0];
    let reason = server.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("tcp via proxy 127.0.0.1:8888 ok in "),
        "{server:?}"
    );
    assert_eq!(server.connects, 0, "{server:?}");
    assert!(proxy.connects_to(b1.addr) >= 1, "{}", proxy.logs());

    // The proxy goes down: the checks fail, naming it, and so do their
    // dials, which fail the server (b1 itself still listens).
    proxy.kill();
    let status = daemon.wait_for(Duration::from_secs(5), "b1 failed by checks", |s| {
        let server = &service(s, "api").servers[0];
        server.state == ServerState::Failed
            && server
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("proxy 127.0.0.1:8888 unreachable"))
    });
    let server = &service(&status, "api").servers[0];
    assert!(!server.healthy, "{server:?}");
    assert!(
        server.reason.as_deref().is_some_and(|r| r
            .starts_with("tcp: proxy 127.0.0.1:8888 unreachable (for CONNECT to 192.0.2.10:7000)")),
        "{server:?}"
    );
    // Checked directly, b1 is fine for the eBPF-mode service.
    let direct = &service(&status, "kernel").servers[0];
    assert!(direct.healthy, "{direct:?}");
    assert!(
        direct
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("tcp connect ok in ")),
        "{direct:?}"
    );
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}
