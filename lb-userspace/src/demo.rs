//! The embedded demo of `daas-lb run --demo` (what `cargo xtask run` starts
//! without a config): three echo backends per service on loopback inside the
//! process, and VIP `127.0.0.1:6444` (TCP and UDP) plus `[::1]:6444` (TCP)
//! in front of them.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
    task::JoinSet,
};
use tracing::debug;

use crate::config::{
    CheckSpec, Config, HealthCheckConfig, Intervals, Policy, Protocol, ServiceConfig,
};

/// The demo's VIP port.
pub const DEMO_PORT: u16 = 6444;
/// First port tried for the demo backends (then +1, +2).
const FIRST_BACKEND_PORT: u16 = 16441;

/// Where the demo keeps its state files: emptied at every start, because the
/// demo backends' ports may differ from one run to the next.
pub const DATA_DIR: &str = "/run/daas-lb-demo";

/// Starts the demo backends and returns the config that fronts them.
pub async fn start(base: Config, tasks: &mut JoinSet<()>) -> anyhow::Result<Config> {
    let check = |check| HealthCheckConfig {
        check,
        timeout: Duration::from_millis(500),
        intervals: Intervals::uniform(Duration::from_secs(1)),
        jitter_percent: HealthCheckConfig::DEFAULT_JITTER_PERCENT,
    };
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut services = Vec::new();

    let tcp = spawn_tcp_backends(v4, tasks).await?;
    services.push(ServiceConfig {
        name: "demo-tcp".into(),
        vip: SocketAddr::new(v4, DEMO_PORT),
        protocol: Protocol::Tcp,
        servers: tcp,
        default_server: None,
        policy: Policy::Failover,
        maglev_table_size: ServiceConfig::DEFAULT_MAGLEV_TABLE_SIZE,
        health_check: check(CheckSpec::Tcp),
        remote: false,
        discovery: None,
    });
    let udp = spawn_udp_backends(v4, tasks).await?;
    services.push(ServiceConfig {
        name: "demo-udp".into(),
        vip: SocketAddr::new(v4, DEMO_PORT),
        protocol: Protocol::Udp,
        servers: udp,
        default_server: None,
        policy: Policy::Failover,
        maglev_table_size: ServiceConfig::DEFAULT_MAGLEV_TABLE_SIZE,
        health_check: check(CheckSpec::Udp),
        remote: false,
        discovery: None,
    });
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    match spawn_tcp_backends(v6, tasks).await {
        Ok(tcp6) => services.push(ServiceConfig {
            name: "demo-tcp6".into(),
            vip: SocketAddr::new(v6, DEMO_PORT),
            protocol: Protocol::Tcp,
            servers: tcp6,
            default_server: None,
            policy: Policy::Failover,
            maglev_table_size: ServiceConfig::DEFAULT_MAGLEV_TABLE_SIZE,
            health_check: check(CheckSpec::Tcp),
            remote: false,
            discovery: None,
        }),
        Err(err) => tracing::warn!(
            error = format!("{err:#}"),
            "no IPv6 loopback: demo runs IPv4 only"
        ),
    }
    match std::fs::remove_dir_all(DATA_DIR) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("emptying {DATA_DIR}")),
    }
    Ok(Config {
        services,
        data_dir: DATA_DIR.into(),
        ..base
    })
}

/// Binds a port near `FIRST_BACKEND_PORT + index`, or any free port.
async fn bind_tcp(ip: IpAddr, index: u16) -> anyhow::Result<TcpListener> {
    if let Ok(l) = TcpListener::bind((ip, FIRST_BACKEND_PORT + index)).await {
        return Ok(l);
    }
    TcpListener::bind((ip, 0))
        .await
        .with_context(|| format!("binding a demo backend on {ip}"))
}

async fn spawn_tcp_backends(
    ip: IpAddr,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addresses = Vec::new();
    for index in 0..3u16 {
        let listener = bind_tcp(ip, index).await?;
        let address = listener.local_addr()?;
        addresses.push(address);
        let name = format!("backend-{} {address}", index + 1);
        tasks.spawn(async move {
            loop {
                let Ok((mut stream, peer)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                tokio::spawn(async move {
                    debug!(%peer, backend = %name, "demo connection");
                    let mut buf = vec![0u8; 4096];
                    let mut first = true;
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let request = &buf[..n];
                        if first && is_http(request) {
                            let body = format!("hello from daas-lb demo {name}\n");
                            let mut response = String::new();
                            let _ = write!(
                                response,
                                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = stream.write_all(response.as_bytes()).await;
                            return;
                        }
                        first = false;
                        let mut reply = format!("[{name}] ").into_bytes();
                        reply.extend_from_slice(request);
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    Ok(addresses)
}

async fn spawn_udp_backends(
    ip: IpAddr,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addresses = Vec::new();
    for index in 0..3u16 {
        let socket = match UdpSocket::bind((ip, FIRST_BACKEND_PORT + index)).await {
            Ok(s) => s,
            Err(_) => UdpSocket::bind((ip, 0))
                .await
                .with_context(|| format!("binding a demo UDP backend on {ip}"))?,
        };
        let address = socket.local_addr()?;
        addresses.push(address);
        let name = format!("backend-{} {address}", index + 1);
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                if n == 0 {
                    // Health probes send empty datagrams; no reply needed.
                    continue;
                }
                let mut reply = format!("[{name}] ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
    Ok(addresses)
}

fn is_http(request: &[u8]) -> bool {
    ["GET ", "HEAD ", "POST ", "PUT "]
        .iter()
        .any(|m| request.starts_with(m.as_bytes()))
}

/// The commands printed when the demo is up.
pub fn instructions(config: &Config, pin_dir: &Path, cgroup: &Path, binary: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ndaas-lb demo is running. Programs are attached to cgroup {}",
        cgroup.display()
    );
    for service in &config.services {
        let servers: Vec<String> = service.servers.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  {:<10} {}/{} -> {}",
            service.name,
            service.vip,
            service.protocol,
            servers.join(", ")
        );
    }
    let api = config.api_addr;
    let metrics = config.metrics_addr;
    let second = config
        .services
        .first()
        .and_then(|s| s.servers.get(1))
        .map_or_else(|| "127.0.0.1:16442".to_owned(), ToString::to_string);
    let dir = pin_dir.display();
    let _ = writeln!(
        out,
        "\nTry these in another shell (as root for bpftool):\n\
         \x20 curl -s http://127.0.0.1:{DEMO_PORT}/            # answered by the selected backend, no proxy hop\n\
         \x20 nc 127.0.0.1 {DEMO_PORT}                          # type a line, the backend echoes it\n\
         \x20 echo hi | nc -u -w1 127.0.0.1 {DEMO_PORT}         # UDP: the reply comes from the VIP\n\
         \x20 curl -s -g 'http://[::1]:{DEMO_PORT}/'            # IPv6 VIP\n\
         \x20 {binary} status --api {api}               # states, time in state, connections, last check\n\
         \x20 {binary} set-servers --api {api} demo-tcp {second}   # replace the list at runtime\n\
         \x20 curl -s http://{api}/status\n\
         \x20 curl -s http://{metrics}/metrics\n\
         \x20 bpftool map dump pinned {dir}/services\n\
         \x20 bpftool map lookup pinned {dir}/backends key 1 0 0 0\n\
         \x20 bpftool map lookup pinned {dir}/backend_stats key 1 0 0 0\n\
         \x20 scripts/inspect-maps.sh {dir}                 # every map, non-empty slots only\n\
         \x20 bpftool cgroup show {}\n\
         Stop with Ctrl-C: programs are detached and pins removed.",
        cgroup.display()
    );
    out
}
