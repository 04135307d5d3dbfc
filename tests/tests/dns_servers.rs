//! Servers written as DNS names, resolved by the real system resolver
//! (glibc `getaddrinfo`, `files` first in nsswitch): the daemon runs in a
//! mount namespace of its own where a temp file is bind-mounted over
//! `/etc/hosts` ([`Daemon::spawn_with_hosts`]); glibc reads `/etc/hosts`
//! on every lookup, so rewriting that file in place changes the answers.
//! The host's `/etc/hosts` is never touched.
//!
//! Traffic is checked end to end: a client in the test cgroup connects to
//! the VIP and the reply names the backend that answered.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{API, Daemon, TcpBackend, TestEnv, server_addresses, service};
use lb_userspace::api::status::{DnsNameStatus, Status};

const SVC: &str = "web";
const VIP: &str = "127.0.0.1:6444";
const TOP: &str = "dns_refresh: 1s\nconnection_poll_interval: 100ms\n";
const CHECK: &str = "{ kind: tcp, interval: 250ms, timeout: 200ms, jitter: 0% }";
/// `dns_refresh` plus the time a lookup round and an apply may take.
const FOLLOW: Duration = Duration::from_secs(4);

fn loopback(octet: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet))
}

/// A backend named `name` on `127.0.0.<octet>:port` (port 0: any).
fn backend(name: &str, octet: u8, port: u16) -> TcpBackend {
    TcpBackend::bind(name, SocketAddr::new(loopback(octet), port))
}

/// Rewrites the daemon's `/etc/hosts` in place (same inode: the bind mount
/// pins it).
fn write_hosts(hosts: &Path, lines: &str) {
    fs::write(hosts, format!("127.0.0.1 localhost\n{lines}"))
        .unwrap_or_else(|e| panic!("write {}: {e}", hosts.display()));
}

fn start(env: &TestEnv, hosts: &Path, services: &str) -> Daemon {
    let config = env.config_with(TOP, services);
    Daemon::spawn_with_hosts(&["--config", &config], env.tmp.path(), API, hosts)
}

fn dns_of(status: &Status) -> Vec<DnsNameStatus> {
    status
        .services
        .iter()
        .find(|s| s.name == SVC)
        .map(|s| s.dns.clone())
        .unwrap_or_default()
}

/// Connects through the VIP from the test cgroup until the reply comes
/// from `backend` (or panics after `within`); returns how long it took.
fn wait_reply_from(env: &TestEnv, daemon: &Daemon, backend: &str, within: Duration) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < within {
        let out = env.cgroup.client(&["tcp", VIP, "ping"]);
        if out.ok && out.reply.as_deref() == Some(&format!("{backend}:ping")) {
            return start.elapsed();
        }
        last = Some(out);
        thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "no reply from {backend} through {VIP} within {within:?}; last {last:?}\nlog:\n{}",
        daemon.log()
    );
}

#[test]
fn a_name_follows_its_address_and_keeps_the_last_good_one_while_it_does_not_resolve() {
    let Some(env) = TestEnv::new("dns_follow") else {
        return;
    };
    let b2 = backend("b2", 2, 0);
    let port = b2.addr.port();
    let b3 = backend("b3", 3, port);
    let at2 = b2.addr.to_string();
    let at3 = b3.addr.to_string();
    let hosts = env.tmp.file("hosts", "");
    write_hosts(&hosts, "127.0.0.2 backend.test\n");
    let services = format!(
        "  - name: {SVC}\n    vip: \"{VIP}\"\n    servers: [\"backend.test:{port}\"]\n    health_check: {CHECK}\n"
    );
    let mut daemon = start(&env, &hosts, &services);

    // Resolved before the first apply: the service starts with its server.
    let status = daemon.wait_for(Duration::from_secs(10), "backend.test resolved", |s| {
        s.services.iter().any(|svc| svc.name == SVC)
    });
    assert_eq!(
        server_addresses(&status, SVC),
        std::slice::from_ref(&at2),
        "{status:#?}"
    );
    let dns = dns_of(&status);
    assert_eq!(dns.len(), 1, "{dns:?}");
    assert_eq!(dns[0].name, "backend.test");
    assert_eq!(dns[0].port, port);
    assert_eq!(dns[0].addresses, std::slice::from_ref(&at2));
    assert_eq!(dns[0].error, None);
    assert!(dns[0].resolved_at.is_some());
    wait_reply_from(&env, &daemon, "b2", Duration::from_secs(10));

    // The name moves: the list follows within dns_refresh (+ margin).
    write_hosts(&hosts, "127.0.0.3 backend.test\n");
    let moved = Instant::now();
    let status = daemon.wait_for(FOLLOW, "backend.test -> 127.0.0.3", |s| {
        s.services.iter().any(|svc| svc.name == SVC) && server_addresses(s, SVC) == [at3.clone()]
    });
    eprintln!("servers followed the name in {:?}", moved.elapsed());
    assert_eq!(dns_of(&status)[0].addresses, std::slice::from_ref(&at3));
    wait_reply_from(&env, &daemon, "b3", Duration::from_secs(10));

    // The name disappears: the error shows, the last good address stays.
    let errors_before = daemon.log_count("a server's DNS name does not resolve");
    write_hosts(&hosts, "");
    let status = daemon.wait_for(FOLLOW, "backend.test's lookup error", |s| {
        dns_of(s).first().is_some_and(|d| d.error.is_some())
    });
    let dns = dns_of(&status);
    assert!(
        dns[0].error.as_deref().unwrap().contains("backend.test"),
        "{dns:?}"
    );
    assert_eq!(dns[0].addresses, std::slice::from_ref(&at3));
    assert_eq!(server_addresses(&status, SVC), std::slice::from_ref(&at3));
    // Traffic still flows, for a few refresh periods.
    let hold_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < hold_until {
        let out = env.cgroup.client(&["tcp", VIP, "ping"]);
        assert_eq!(
            out.reply.as_deref(),
            Some("b3:ping"),
            "{out:?}\nlog:\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let status = daemon.status();
    assert_eq!(server_addresses(&status, SVC), std::slice::from_ref(&at3));
    assert_eq!(
        daemon.log_count("a server's DNS name does not resolve"),
        errors_before + 1,
        "the error is logged once per change:\n{}",
        daemon.log()
    );

    // It resolves again: the error clears.
    write_hosts(&hosts, "127.0.0.3 backend.test\n");
    let status = daemon.wait_for(FOLLOW, "backend.test's error cleared", |s| {
        dns_of(s).first().is_some_and(|d| d.error.is_none())
    });
    assert_eq!(server_addresses(&status, SVC), [at3]);
    daemon.wait_log(FOLLOW, "a server's DNS name resolves again", 1);
    drop(daemon);
    drop((b2, b3));
}

#[test]
fn a_name_with_two_addresses_is_two_servers_and_a_default_server_url_works() {
    let Some(env) = TestEnv::new("dns_multi") else {
        return;
    };
    let mut b2 = backend("b2", 2, 0);
    let port = b2.addr.port();
    let mut b3 = backend("b3", 3, port);
    let b4 = backend("b4", 4, port);
    let hosts = env.tmp.file("hosts", "");
    write_hosts(
        &hosts,
        "127.0.0.3 multi.test\n127.0.0.2 multi.test\n127.0.0.4 default.test\n",
    );
    let services = format!(
        "  - name: {SVC}\n    vip: \"{VIP}\"\n    servers: [\"multi.test:{port}\"]\n    default_server: \"https://default.test:{port}\"\n    health_check: {CHECK}\n"
    );
    let mut daemon = start(&env, &hosts, &services);
    let status = daemon.wait_for(Duration::from_secs(10), "names resolved", |s| {
        s.services.iter().any(|svc| svc.name == SVC)
    });
    // Sorted; then the default server (not among them).
    assert_eq!(
        server_addresses(&status, SVC),
        [
            b2.addr.to_string(),
            b3.addr.to_string(),
            b4.addr.to_string()
        ],
        "{status:#?}"
    );
    let default = service(&status, SVC)
        .servers
        .iter()
        .find(|s| s.default)
        .map(|s| s.address.clone());
    assert_eq!(default, Some(b4.addr.to_string()));
    let dns = dns_of(&status);
    assert_eq!(dns.len(), 2, "{dns:?}");
    assert_eq!(
        (dns[0].name.as_str(), dns[0].default),
        ("multi.test", false)
    );
    assert_eq!(dns[0].addresses, [b2.addr.to_string(), b3.addr.to_string()]);
    assert_eq!(
        (dns[1].name.as_str(), dns[1].default),
        ("default.test", true)
    );
    assert_eq!(dns[1].addresses, [b4.addr.to_string()]);

    // Both named servers fail: connects go to the default server.
    b2.stop();
    b3.stop();
    wait_reply_from(&env, &daemon, "b4", Duration::from_secs(10));
    drop(daemon);
    drop(b4);
}

#[test]
fn a_reload_resolves_a_new_name_at_once() {
    let Some(env) = TestEnv::new("dns_reload") else {
        return;
    };
    let b2 = backend("b2", 2, 0);
    let port = b2.addr.port();
    let b3 = backend("b3", 3, port);
    let hosts = env.tmp.file("hosts", "");
    write_hosts(&hosts, "127.0.0.2 one.test\n127.0.0.3 two.test\n");
    // A long refresh: only the reload can make the new name resolve soon.
    let top = "dns_refresh: 1h\nconnection_poll_interval: 100ms\n";
    let yaml = |name: &str| {
        format!(
            "  - name: {SVC}\n    vip: \"{VIP}\"\n    servers: [\"{name}:{port}\"]\n    health_check: {CHECK}\n"
        )
    };
    let config = env.config_with(top, &yaml("one.test"));
    let mut daemon = Daemon::spawn_with_hosts(&["--config", &config], env.tmp.path(), API, &hosts);
    daemon.wait_for(Duration::from_secs(10), "one.test resolved", |s| {
        s.services.iter().any(|svc| svc.name == SVC)
            && server_addresses(s, SVC) == [b2.addr.to_string()]
    });
    env.config_with(top, &yaml("two.test"));
    daemon.signal(libc::SIGHUP);
    let status = daemon.wait_for(FOLLOW, "two.test resolved after the reload", |s| {
        server_addresses(s, SVC) == [b3.addr.to_string()]
    });
    let dns = dns_of(&status);
    assert_eq!(dns.len(), 1, "{dns:?}");
    assert_eq!(dns[0].name, "two.test");
    wait_reply_from(&env, &daemon, "b3", Duration::from_secs(10));
    drop(daemon);
    drop((b2, b3));
}
