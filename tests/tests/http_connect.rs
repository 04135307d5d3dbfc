//! `lb_userspace::proxy::connect` against a real forward proxy, Debian's
//! tinyproxy: tunnels carry bytes both ways, a proxy that is down is
//! `proxy_unreachable`, a CONNECT it refuses (a port outside its
//! `ConnectPort` list: 403; missing credentials: 407, wrong ones: 401) is
//! `proxy_refused` with the status, basic auth from the proxy URL gets
//! through, and a `NO_PROXY` match never reaches the proxy.
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
    time::{Duration, Instant},
};

use lb_tests::{
    NetNs, privileged,
    proxies::{Tinyproxy, find_program},
    sh,
};
use lb_userspace::proxy::connect::{ConnectError, ProxyEnv, ProxyUrl, dial};
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
