//! `lb_userspace::proxy::connect` against a real forward proxy, Debian's
//! tinyproxy: tunnels carry bytes both ways, a proxy that is down is
//! `proxy_unreachable`, a CONNECT it refuses (a port outside its
//! `ConnectPort` list: 403; missing credentials: 407, wrong ones: 401) is
//! `proxy_refused` with the status, basic auth from the proxy URL gets
//! through, and a `NO_PROXY` match never reaches the proxy.
//!
//! Health checks through the same proxy (`Prober::through`, what a proxied
//! service's checks do): a tcp check is a CONNECT whose reason names the
//! proxy; a proxy that is down or refuses (403) fails the check and its
//! dial, naming the proxy, while a direct check of the same server passes;
//! an http check runs over the tunnel (status, body; a wrong status is a
//! check failure with the dial ok); a `NO_PROXY` match is checked directly
//! even with the proxy down.
//!
//! Every test runs in its own network namespace: tinyproxy listens on
//! `127.0.0.1:8888`, and the server it tunnels to is on `192.0.2.10` (a
//! veth address in the namespace, not loopback, since loopback servers are
//! never proxied), so nothing routes out. tinyproxy runs in the foreground
//! (`-d`) with its config, log and pid file in a temp dir, is waited for
//! (bounded) and killed on drop, also on panic. Without tinyproxy the tests
//! skip, except under `CI=true`, where that is a failure.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_tests::{
    NetNs, privileged,
    proxies::{Tinyproxy, find_program},
    sh,
};
use lb_userspace::{
    config::{CheckSpec, HttpCheck},
    health::{CheckOutcome, Prober},
    proxy::connect::{ConnectError, ProxyEnv, ProxyUrl, dial},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// Where tinyproxy listens.
const PROXY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8888);
/// The server address, on a veth of the test's namespace.
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The server's port, the only one tinyproxy tunnels to (`ConnectPort`).
const SERVER_PORT: u16 = 7000;
/// A port tinyproxy refuses to CONNECT to.
const REFUSED_PORT: u16 = 7001;
/// Bound of one dial.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The server's first words on every connection.
const GREETING: &[u8] = b"hello from the server\n";

fn server() -> SocketAddr {
    SocketAddr::new(SERVER_IP.into(), SERVER_PORT)
}

/// tinyproxy's path, or `None` (the test returns) when the test cannot run
/// here; under `CI=true` a missing tool is a failure.
fn tinyproxy_bin(test: &str) -> Option<PathBuf> {
    if !privileged(test) {
        return None;
    }
    let found = find_program("tinyproxy");
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: tinyproxy is missing under CI=true (apt-get install tinyproxy)"
        );
        eprintln!("skipping {test}: no tinyproxy (apt-get install tinyproxy)");
    }
    found
}

/// The test's world and tinyproxy (with `extra` config lines), or `None`
/// (the test returns) when it cannot run here.
fn start(test: &str, extra: &str) -> Option<(World, Tinyproxy)> {
    let bin = tinyproxy_bin(test)?;
    let world = World::new();
    let tinyproxy = Tinyproxy::start(&bin, PROXY.port(), &[SERVER_PORT], extra);
    Some((world, tinyproxy))
}

/// The test's namespace (with the server address on a veth) and a
/// current-thread runtime whose sockets live in it.
struct World {
    runtime: tokio::runtime::Runtime,
    _ns: NetNs,
}

impl World {
    fn new() -> Self {
        let ns = NetNs::new();
        sh(
            "ip",
            &[
                "link", "add", "srv0", "type", "veth", "peer", "name", "srv1",
            ],
        );
        sh(
            "ip",
            &["addr", "add", &format!("{SERVER_IP}/24"), "dev", "srv0"],
        );
        sh("ip", &["link", "set", "srv0", "up"]);
        sh("ip", &["link", "set", "srv1", "up"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Self { runtime, _ns: ns }
    }
}

/// The server: greets every connection with [`GREETING`], then echoes.
async fn start_server() {
    let listener = TcpListener::bind(server())
        .await
        .unwrap_or_else(|e| panic!("binding the server on {}: {e}", server()));
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if conn.write_all(GREETING).await.is_err() {
                    return;
                }
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// The environment K3s would see: `HTTPS_PROXY` pointing at tinyproxy
/// (`userinfo`, e.g. `alice:s3cret@`, in front of the host) and `NO_PROXY`.
fn proxy_env(userinfo: &str, no_proxy: &str) -> ProxyEnv {
    let https = format!("http://{userinfo}{PROXY}");
    ProxyEnv::from_lookup(|name| match name {
        "HTTPS_PROXY" => Some(https.clone()),
        "NO_PROXY" => Some(no_proxy.to_owned()),
        _ => None,
    })
    .expect("a valid proxy environment")
}

/// Reads the greeting, then sends `len` bytes and reads them back.
async fn exchange(stream: &mut TcpStream, len: usize) {
    let mut greeting = vec![0u8; GREETING.len()];
    stream.read_exact(&mut greeting).await.expect("greeting");
    assert_eq!(greeting, GREETING);
    let sent: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = stream.split();
    let mut echoed = vec![0u8; len];
    let (wrote, read) = tokio::join!(w.write_all(&sent), r.read_exact(&mut echoed));
    wrote.expect("writing through the tunnel");
    read.expect("reading the echo through the tunnel");
    assert!(echoed == sent, "the echo differs from what was sent");
}

#[test]
fn a_connect_tunnel_carries_bytes_both_ways() {
    let test = "a_connect_tunnel_carries_bytes_both_ways";
    let Some((world, tinyproxy)) = start(test, "") else {
        return;
    };
    world.runtime.block_on(async {
        start_server().await;
        let env = proxy_env("", "10.0.0.0/8,example.com");
        let proxy = env
            .proxy_for(server())
            .expect("192.0.2.10 is not excluded, so it goes through the proxy");
        let mut tunnel = dial(proxy, server(), DIAL_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}; {}", tinyproxy.logs()));
        exchange(&mut tunnel, 256 * 1024).await;
    });
    assert_eq!(tinyproxy.connects_to(server()), 1, "{}", tinyproxy.logs());
}

#[test]
fn a_proxy_that_is_down_is_unreachable() {
    let test = "a_proxy_that_is_down_is_unreachable";
    let Some((world, mut tinyproxy)) = start(test, "") else {
        return;
    };
    world.runtime.block_on(async {
        start_server().await;
        let env = proxy_env("", "");
        let proxy = env.proxy_for(server()).expect("proxied");
        let mut tunnel = dial(proxy, server(), DIAL_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}; {}", tinyproxy.logs()));
        exchange(&mut tunnel, 1024).await;
        tinyproxy.kill();
        let started = Instant::now();
        let err = dial(proxy, server(), DIAL_TIMEOUT)
            .await
            .expect_err("nothing listens on the proxy port any more");
        assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
        assert_eq!(err.reason(), "proxy_unreachable");
        let message = err.to_string();
        assert!(
            message
                .starts_with("proxy 127.0.0.1:8888 unreachable (for CONNECT to 192.0.2.10:7000): "),
            "{message}"
        );
        assert!(message.contains("refused"), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a refused connect is immediate"
        );
    });
}

#[test]
fn a_connect_port_the_proxy_refuses_is_a_403() {
    let test = "a_connect_port_the_proxy_refuses_is_a_403";
    let Some((world, tinyproxy)) = start(test, "") else {
        return;
    };
    let target = SocketAddr::new(SERVER_IP.into(), REFUSED_PORT);
    world.runtime.block_on(async {
        let env = proxy_env("", "");
        let proxy = env.proxy_for(target).expect("proxied");
        let err = dial(proxy, target, DIAL_TIMEOUT)
            .await
            .expect_err("tinyproxy refuses CONNECT outside ConnectPort");
        assert_eq!(err.reason(), "proxy_refused", "{err}");
        assert_eq!(err.status(), Some(403), "{err}");
        assert_eq!(
            err.to_string(),
            "proxy 127.0.0.1:8888 refused CONNECT to 192.0.2.10:7001: 403 Access violation"
        );
    });
    assert_eq!(tinyproxy.connects_to(target), 1, "{}", tinyproxy.logs());
}

#[test]
fn basic_auth_from_the_proxy_url_gets_through() {
    let test = "basic_auth_from_the_proxy_url_gets_through";
    let Some((world, tinyproxy)) = start(test, "BasicAuth alice s3cret") else {
        return;
    };
    world.runtime.block_on(async {
        start_server().await;
        // tinyproxy answers 407 without credentials and 401 to wrong ones.
        for (userinfo, status) in [("", 407), ("alice:wrong@", 401), ("mallory:s3cret@", 401)] {
            let env = proxy_env(userinfo, "");
            let proxy = env.proxy_for(server()).expect("proxied");
            let err = dial(proxy, server(), DIAL_TIMEOUT)
                .await
                .expect_err("tinyproxy wants alice's credentials");
            assert_eq!(err.reason(), "proxy_refused", "{userinfo}: {err}");
            assert_eq!(err.status(), Some(status), "{userinfo}: {err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
        // `%33` is `3`: user info is percent-decoded, as Go does.
        let env = proxy_env("alice:s%33cret@", "");
        let proxy: &ProxyUrl = env.proxy_for(server()).expect("proxied");
        assert_eq!(proxy.user(), Some("alice"));
        let mut tunnel = dial(proxy, server(), DIAL_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}; {}", tinyproxy.logs()));
        exchange(&mut tunnel, 4096).await;
    });
}

#[test]
fn a_no_proxy_match_dials_directly() {
    let test = "a_no_proxy_match_dials_directly";
    let Some((world, tinyproxy)) = start(test, "") else {
        return;
    };
    world.runtime.block_on(async {
        start_server().await;
        for no_proxy in ["192.0.2.0/24", "192.0.2.10", "192.0.2.10:7000", "*"] {
            let env = proxy_env("", &format!(" example.com, ,{no_proxy} "));
            assert!(env.proxy_for(server()).is_none(), "{no_proxy}");
            let mut direct = TcpStream::connect(server()).await.expect("direct dial");
            exchange(&mut direct, 1024).await;
        }
        // A rule for another port does not exclude this one.
        let env = proxy_env("", "192.0.2.10:6443");
        let proxy = env.proxy_for(server()).expect("proxied");
        let mut tunnel = dial(proxy, server(), DIAL_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}; {}", tinyproxy.logs()));
        exchange(&mut tunnel, 1024).await;
    });
    assert_eq!(tinyproxy.connects_to(server()), 1, "{}", tinyproxy.logs());
}

/// A small HTTP/1.1 server on the server's address, one request per
/// connection: `GET /` is answered `200 OK` with the body `all ok`, any
/// other path `503 Service Unavailable` with `down`.
async fn start_http_server() {
    let listener = TcpListener::bind(server())
        .await
        .unwrap_or_else(|e| panic!("binding the HTTP server on {}: {e}", server()));
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let (status, body) = if head.starts_with("GET / HTTP/1.1\r\n") {
                    ("200 OK", "all ok")
                } else {
                    ("503 Service Unavailable", "down")
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
}

/// The prober of `check` for a proxied service whose servers are dialed
/// with `env` (what the daemon builds in proxy mode).
fn through(check: &CheckSpec, env: ProxyEnv) -> Prober {
    Prober::new(check)
        .expect("prober")
        .through(Some(Arc::new(env)))
}

/// A TCP service's check of `target`, bounded by [`DIAL_TIMEOUT`].
async fn check(prober: &Prober, target: SocketAddr) -> CheckOutcome {
    prober.probe(target, DIAL_TIMEOUT, true).await
}

fn dial_ok(outcome: &CheckOutcome) -> bool {
    outcome
        .dial
        .expect("a TCP service's check reports a dial")
        .ok
}

#[test]
fn a_tcp_health_check_through_the_proxy_passes_and_names_it() {
    let test = "a_tcp_health_check_through_the_proxy_passes_and_names_it";
    let Some((world, tinyproxy)) = start(test, "") else {
        return;
    };
    world.runtime.block_on(async {
        start_server().await;
        let tcp = through(&CheckSpec::Tcp, proxy_env("", ""));
        let outcome = check(&tcp, server()).await;
        assert!(outcome.ok, "{outcome:?}; {}", tinyproxy.logs());
        assert!(
            outcome
                .reason
                .starts_with("tcp via proxy 127.0.0.1:8888 ok in "),
            "{outcome:?}"
        );
        assert!(dial_ok(&outcome), "{outcome:?}");
    });
    assert_eq!(tinyproxy.connects_to(server()), 1, "{}", tinyproxy.logs());
}

#[test]
fn a_proxy_that_is_down_fails_the_health_check_and_its_dial() {
    let test = "a_proxy_that_is_down_fails_the_health_check_and_its_dial";
    let Some((world, mut tinyproxy)) = start(test, "") else {
        return;
    };
    tinyproxy.kill();
    world.runtime.block_on(async {
        start_server().await;
        for (kind, label) in [
            (CheckSpec::Tcp, "tcp"),
            (CheckSpec::Http(HttpCheck::new()), "http"),
        ] {
            let outcome = check(&through(&kind, proxy_env("", "")), server()).await;
            assert!(!outcome.ok, "{outcome:?}");
            assert!(!dial_ok(&outcome), "{outcome:?}");
            let prefix = format!(
                "{label}: proxy 127.0.0.1:8888 unreachable (for CONNECT to 192.0.2.10:7000): "
            );
            assert!(outcome.reason.starts_with(&prefix), "{outcome:?}");
        }
        // The server itself is fine: checked directly, it passes.
        let direct = Prober::new(&CheckSpec::Tcp).expect("prober");
        let outcome = check(&direct, server()).await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(dial_ok(&outcome), "{outcome:?}");
    });
}

#[test]
fn a_connect_the_proxy_refuses_fails_the_dial_with_its_403() {
    let test = "a_connect_the_proxy_refuses_fails_the_dial_with_its_403";
    let Some((world, tinyproxy)) = start(test, "") else {
        return;
    };
    let refused = SocketAddr::new(SERVER_IP.into(), REFUSED_PORT);
    world.runtime.block_on(async {
        // Something listens on the refused port: only the proxy says no.
        let _listener = TcpListener::bind(refused).await.expect("bind");
        let outcome = check(&through(&CheckSpec::Tcp, proxy_env("", "")), refused).await;
        assert!(!outcome.ok, "{outcome:?}");
        assert!(!dial_ok(&outcome), "{outcome:?}");
        assert_eq!(
            outcome.reason,
            "tcp: proxy 127.0.0.1:8888 refused CONNECT to 192.0.2.10:7001: 403 Access violation"
        );
        // An http check on a port the proxy tunnels to passes, but the
        // extra dial of the service port goes through the proxy too and is
        // refused (K3s #13149: the server is demoted for it).
        start_http_server().await;
        let http_on_7000 = through(
            &CheckSpec::Http(HttpCheck {
                port: Some(SERVER_PORT),
                ..HttpCheck::new()
            }),
            proxy_env("", ""),
        );
        let outcome = check(&http_on_7000, refused).await;
        assert!(outcome.ok, "{outcome:?}; {}", tinyproxy.logs());
        assert!(!dial_ok(&outcome), "{outcome:?}");
        assert!(
            outcome.reason.ends_with(
                "; but the service port 192.0.2.10:7001: tcp: proxy 127.0.0.1:8888 refused \
                 CONNECT to 192.0.2.10:7001: 403 Access violation"
            ),
            "{outcome:?}"
        );
    });
    assert_eq!(tinyproxy.connects_to(refused), 2, "{}", tinyproxy.logs());
    assert_eq!(tinyproxy.connects_to(server()), 1, "{}", tinyproxy.logs());
}

#[test]
fn http_health_checks_run_through_a_connect_tunnel() {
    let test = "http_health_checks_run_through_a_connect_tunnel";
    let Some((world, tinyproxy)) = start(test, "") else {
        return;
    };
    world.runtime.block_on(async {
        start_http_server().await;
        let http = |path: &str, body_contains: Option<&str>| {
            through(
                &CheckSpec::Http(HttpCheck {
                    path: path.to_owned(),
                    body_contains: body_contains.map(str::to_owned),
                    ..HttpCheck::new()
                }),
                proxy_env("", ""),
            )
        };
        let outcome = check(&http("/", None), server()).await;
        assert!(outcome.ok, "{outcome:?}; {}", tinyproxy.logs());
        assert!(
            outcome
                .reason
                .starts_with("http via proxy 127.0.0.1:8888 200 in "),
            "{outcome:?}"
        );
        assert!(dial_ok(&outcome), "{outcome:?}");

        // A wrong status is a health failure; the dial (the CONNECT) is ok.
        let outcome = check(&http("/fail", None), server()).await;
        assert!(!outcome.ok, "{outcome:?}");
        assert_eq!(
            outcome.reason,
            "http via proxy 127.0.0.1:8888 503 (expected 200)"
        );
        assert!(dial_ok(&outcome), "{outcome:?}");

        let outcome = check(&http("/", Some("all ok")), server()).await;
        assert!(outcome.ok, "{outcome:?}");
        let outcome = check(&http("/", Some("nope")), server()).await;
        assert!(!outcome.ok, "{outcome:?}");
        assert_eq!(
            outcome.reason,
            "http via proxy 127.0.0.1:8888: body lacks \"nope\""
        );
        assert!(dial_ok(&outcome), "{outcome:?}");
    });
    // A fresh tunnel for every check.
    assert_eq!(tinyproxy.connects_to(server()), 4, "{}", tinyproxy.logs());
}

#[test]
fn a_no_proxy_match_is_health_checked_directly_with_the_proxy_down() {
    let test = "a_no_proxy_match_is_health_checked_directly_with_the_proxy_down";
    let Some((world, mut tinyproxy)) = start(test, "") else {
        return;
    };
    tinyproxy.kill();
    world.runtime.block_on(async {
        start_http_server().await;
        let env = || proxy_env("", "example.com,192.0.2.10");
        let outcome = check(&through(&CheckSpec::Tcp, env()), server()).await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(
            outcome.reason.starts_with("tcp connect ok in "),
            "{outcome:?}"
        );
        let outcome = check(
            &through(&CheckSpec::Http(HttpCheck::new()), env()),
            server(),
        )
        .await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(outcome.reason.starts_with("http 200 in "), "{outcome:?}");
        assert!(dial_ok(&outcome), "{outcome:?}");
    });
    assert_eq!(tinyproxy.connects_to(server()), 0, "{}", tinyproxy.logs());
}
