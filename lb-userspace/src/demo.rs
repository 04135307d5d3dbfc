//! The embedded demo of `daas-lb run --demo` (what `cargo xtask run` starts
//! without a config): three echo backends per service on loopback inside the
//! process, and VIP `127.0.0.1:6444` (TCP and UDP) plus `[::1]:6444` (TCP)
//! in front of them.
//!
//! It also runs an in-process fake Sui full node ([`FakeChain`]) whose
//! registry lists four demo nodes on `127.0.0.2..127.0.0.5` (one below the
//! minimum stake), and a service `demo-sui` (`127.0.0.1:6445`) whose servers
//! come from that registry: three nodes at start, a fourth registered by an
//! event [`NEWCOMER_AFTER`] later, the chain advancing one checkpoint a
//! second so `sui_sync` sees a live full node.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use sui_sdk_types::Address;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
    task::JoinSet,
};
use tracing::{debug, info};

use crate::{
    chain::{fake_node::FakeChain, registry::Node},
    config::{
        CheckSpec, Config, Features, HealthCheckConfig, Intervals, Policy, Protocol, ServiceConfig,
    },
};

/// The demo's VIP port.
pub const DEMO_PORT: u16 = 6444;
/// First port tried for the demo backends (then +1, +2).
const FIRST_BACKEND_PORT: u16 = 16441;
/// The VIP port of `demo-sui`, the service discovered on the fake chain.
pub const SUI_DEMO_PORT: u16 = 6445;
/// The port tried first for the registry's nodes (one per loopback address).
const SUI_BACKEND_PORT: u16 = 16444;
/// The fake chain's id.
const DEMO_CHAIN_ID: &str = "daas-lb-demo";
/// 1 SUI in MIST.
const SUI: u64 = 1_000_000_000;
/// `chain.min_stake_mist` of the demo.
const MIN_STAKE_MIST: u64 = SUI;
/// How long after the start the fourth node registers.
pub const NEWCOMER_AFTER: Duration = Duration::from_secs(5);

/// One node of the demo registry: its loopback address, its stake, and
/// whether it registers at start or [`NEWCOMER_AFTER`] later.
struct DemoNode {
    name: &'static str,
    ip: Ipv4Addr,
    stake: u64,
    at_start: bool,
}

/// The demo registry: three nodes above the minimum stake at start, one
/// under it (never a server although it answers), and a newcomer.
const DEMO_NODES: [DemoNode; 4] = [
    DemoNode {
        name: "node-1",
        ip: Ipv4Addr::new(127, 0, 0, 2),
        stake: 3 * SUI,
        at_start: true,
    },
    DemoNode {
        name: "node-2",
        ip: Ipv4Addr::new(127, 0, 0, 3),
        stake: 2 * SUI,
        at_start: true,
    },
    DemoNode {
        name: "node-low-stake",
        ip: Ipv4Addr::new(127, 0, 0, 5),
        stake: SUI / 2,
        at_start: true,
    },
    DemoNode {
        name: "node-3",
        ip: Ipv4Addr::new(127, 0, 0, 4),
        stake: 3 * SUI / 2,
        at_start: false,
    },
];

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
    let chain_part = start_chain(tasks).await?;
    services.extend(chain_part.services);
    match std::fs::remove_dir_all(DATA_DIR) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("emptying {DATA_DIR}")),
    }
    Ok(Config {
        services,
        data_dir: DATA_DIR.into(),
        chain: chain_part.chain,
        // The demo's discovery service needs the gate its `chain` block implies.
        features: Features {
            blockchain_discovery: true,
            ..base.features
        },
        ..base
    })
}

/// Starts the nodes' backends and the fake full node (on this runtime,
/// `127.0.0.1:0`), registers the nodes due at start, and spawns the task
/// that advances the chain every second and registers the newcomer.
/// Returns the `chain` block and the `demo-sui` service, parsed from YAML
/// like a config file.
async fn start_chain(tasks: &mut JoinSet<()>) -> anyhow::Result<Config> {
    let port = spawn_node_backends(tasks).await?;
    let chain = FakeChain::start(DEMO_CHAIN_ID)
        .await
        .context("starting the demo's fake Sui full node")?;
    let url = chain.url();
    let registry = chain.registry();
    let node = |index: usize, spec: &DemoNode| {
        let key = demo_address(0xd0, index);
        let info = Node {
            operator: demo_address(0x0e, index),
            endpoint: spec.ip.to_string(),
            stake: spec.stake,
            sui_rpc: url.clone(),
            nautilus_url: String::new(),
            enclave_id: Address::ZERO,
        };
        (key, info)
    };
    let mut newcomers = Vec::new();
    for (index, spec) in DEMO_NODES.iter().enumerate() {
        let (key, info) = node(index, spec);
        if spec.at_start {
            chain.register(key, info);
        } else {
            newcomers.push((spec.name, key, info));
        }
    }
    let yaml = format!(
        "chain:
  sui_rpc_url: \"{url}\"
  registry: {{ package: \"{package}\", module: {module}, object: \"{object}\" }}
  min_stake_mist: {MIN_STAKE_MIST}
  discovery_interval: 1m
services:
  - name: demo-sui
    vip: 127.0.0.1:{SUI_DEMO_PORT}
    servers: []
    discovery: {{ source: sui, port: {port} }}
    health_check:
      kind: all
      checks: [{{ kind: tcp }}, {{ kind: sui_sync, max_response_time: 500ms }}]
      interval: 1s
      timeout: 1s
",
        package = registry.package,
        module = registry.module,
        object = registry.object,
    );
    let config = Config::from_yaml(&yaml, "<demo>")?;
    tasks.spawn(async move {
        let started = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if started.elapsed() >= NEWCOMER_AFTER {
                for (name, key, info) in newcomers.drain(..) {
                    let checkpoint = chain.register(key, info);
                    info!(node = name, %key, checkpoint, "demo chain: NodeRegistered");
                }
            }
            chain.tick();
        }
    });
    Ok(config)
}

/// A demo registry address: `prefix` repeated, the node's index last.
fn demo_address(prefix: u8, index: usize) -> Address {
    let mut bytes = [prefix; Address::LENGTH];
    bytes[Address::LENGTH - 1] = u8::try_from(index).unwrap_or(u8::MAX);
    Address::new(bytes)
}

/// Starts one TCP echo/HTTP backend per demo node, all on one port (a node's
/// servers are its endpoint host and the service's port); returns the port.
async fn spawn_node_backends(tasks: &mut JoinSet<()>) -> anyhow::Result<u16> {
    let mut last_error = None;
    for wanted in [SUI_BACKEND_PORT, 0] {
        let mut listeners = Vec::new();
        let mut port = wanted;
        for spec in &DEMO_NODES {
            match TcpListener::bind((IpAddr::V4(spec.ip), port)).await {
                Ok(listener) => {
                    port = listener.local_addr()?.port();
                    listeners.push((spec.name, listener));
                }
                Err(err) => {
                    last_error = Some(anyhow::Error::new(err).context(format!(
                        "binding demo node {} on {}:{port}",
                        spec.name, spec.ip
                    )));
                    break;
                }
            }
        }
        if listeners.len() == DEMO_NODES.len() {
            for (name, listener) in listeners {
                let address = listener.local_addr()?;
                spawn_tcp_backend(listener, format!("{name} {address}"), tasks);
            }
            return Ok(port);
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("binding the demo nodes")))
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
        spawn_tcp_backend(listener, format!("backend-{} {address}", index + 1), tasks);
    }
    Ok(addresses)
}

/// Serves `listener`: HTTP requests get a greeting naming `name`, anything
/// else is echoed back prefixed with `[name] `.
fn spawn_tcp_backend(listener: TcpListener, name: String, tasks: &mut JoinSet<()>) {
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
        let mut servers: Vec<String> = service.servers.iter().map(ToString::to_string).collect();
        if let Some(discovery) = &service.discovery {
            servers.push(format!(
                "the Sui registry's nodes at port {}",
                discovery.port.port()
            ));
        }
        let _ = writeln!(
            out,
            "  {:<10} {}/{} -> {}",
            service.name,
            service.vip,
            service.protocol,
            servers.join(", ")
        );
    }
    if let Some(chain) = &config.chain {
        let _ = writeln!(
            out,
            "\nFake Sui full node {} (chain {DEMO_CHAIN_ID}, a checkpoint a second), registry object {}:\n\
             \x20 node-1 127.0.0.2 3 SUI, node-2 127.0.0.3 2 SUI, node-low-stake 127.0.0.5 0.5 SUI (below\n\
             \x20 min_stake_mist {MIN_STAKE_MIST}: never a server) at start; node-3 127.0.0.4 1.5 SUI registers\n\
             \x20 {}s later by a NodeRegistered event: watch it join demo-sui without a resync.",
            chain.sui_rpc_url,
            chain.registry.object,
            NEWCOMER_AFTER.as_secs()
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
         \x20 {binary} status --api {api}               # states, time in state, connections, last check;\n\
         \x20                                              # the registry line, demo-sui's nodes with their stake\n\
         \x20 curl -s http://127.0.0.1:{SUI_DEMO_PORT}/            # demo-sui: answered by a node from the registry\n\
         \x20 curl -s http://{metrics}/metrics | grep -E 'registry|stake|sync_lag'   # discovery metrics\n\
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
