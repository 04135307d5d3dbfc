//! The embedded demo of `daas-lb run --demo` (what `cargo xtask run` starts
//! without a config): three echo backends per service on loopback inside the
//! process, and VIP `127.0.0.66:16440` (TCP and UDP) plus `[::1]:16440`
//! (TCP) in front of them.
//!
//! # It captures only its own traffic
//!
//! The demo attaches where the user's shell is (the root cgroup by
//! default) so that `curl` works as printed, so its VIPs are addresses no
//! real service uses: the loopback address [`DEMO_VIP_V4`] (nothing is
//! configured on it, yet all of `127.0.0.0/8` is local) and `[::1]`, both
//! on high ports next to the demo's backends; never K3s's `6443`/`6444`.
//! Before anything is attached, [`start`] binds every port it needs, VIPs
//! and backends, TCP and UDP, IPv4 and IPv6 ([`needed`]): if something
//! else holds one (a VIP someone listens on would be captured), the demo
//! refuses, naming every taken port, and attaches nothing. Its pins
//! ([`BPFFS_DIR`]), control socket and state files are its own too, so it
//! never adopts or replaces a real daemon's programs. A demo killed with
//! SIGKILL leaves its programs attached: they affect only the demo VIPs
//! (connects to them are refused once the backends are gone) until
//! `daas-lb cleanup --bpffs-dir /sys/fs/bpf/daas-lb-demo` or the next demo
//! start replaces them.
//!
//! It also runs an in-process fake Sui full node ([`FakeChain`]) whose
//! registry lists four demo nodes on `127.0.0.2..127.0.0.5` (one below the
//! minimum stake), and a service `demo-sui` (`127.0.0.66:16445`) whose servers
//! come from that registry: three nodes at start, a fourth registered by an
//! event [`NEWCOMER_AFTER`] later, the chain advancing one checkpoint a
//! second so `sui_sync` sees a live full node.
//!
//! Every demo node has its own fake Nautilus enclave ([`FakeEnclave`] on
//! `127.0.0.1:<ephemeral>`), registered on the fake chain as an `Enclave`
//! object current under the demo's `EnclaveConfig` (`chain.enclave_config`),
//! and named in the node's registry entry (`nautilus_url`, `enclave_id`).
//! `demo-sui` checks `tcp`, `sui_sync` and `nautilus`, with
//! `features.performance_ranking`: the enclaves attest different scores, so
//! `daas-lb status` shows each server's attestation and score, and node-1's
//! performance drops to [`DRIFT_PERFORMANCE`] every other [`DRIFT_EVERY`]
//! so the best-ranked node changes while the demo runs.
//!
//! The test doubles live here too, so that a production build
//! (`--no-default-features`) leaves them out: [`fake_node`] (a Sui full node
//! on sui-rpc's own tonic server traits), [`fake_enclave`] and
//! [`fake_deployment`] (Nautilus enclaves and their on-chain objects).

pub mod fake_deployment;
pub mod fake_enclave;
pub mod fake_node;

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
    chain::registry::Node,
    config::{
        CheckSpec, Config, DialStall, HealthCheckConfig, Intervals, Policy, Protocol,
        ServiceConfig, ServiceDataplane,
    },
    demo::{
        fake_deployment::{APP, publish_config, publish_enclave},
        fake_enclave::{FakeEnclave, FakeScores},
        fake_node::FakeChain,
    },
    nautilus::enclave::Pcrs,
};

/// The demo's IPv4 VIP address: a loopback address no real service uses.
pub const DEMO_VIP_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 66);
/// The VIP port of `demo-tcp`, `demo-udp` (on [`DEMO_VIP_V4`]) and
/// `demo-tcp6` (on `[::1]`).
pub const DEMO_PORT: u16 = 16440;
/// The ports of the three backends of each of `demo-tcp`, `demo-udp`
/// (`127.0.0.1`) and `demo-tcp6` (`[::1]`).
const BACKEND_PORTS: [u16; 3] = [16441, 16442, 16443];
/// The VIP port of `demo-sui` (on [`DEMO_VIP_V4`]), the service discovered
/// on the fake chain.
pub const SUI_DEMO_PORT: u16 = 16445;
/// The port of the registry's nodes' backends (one per loopback address).
const SUI_BACKEND_PORT: u16 = 16444;
/// Where the demo pins its maps and programs: not a real daemon's
/// (`/sys/fs/bpf/daas-lb`), so a demo never adopts or replaces those.
pub const BPFFS_DIR: &str = "/sys/fs/bpf/daas-lb-demo";
/// The demo's control socket, in its [`DATA_DIR`].
pub const CONTROL_SOCKET: &str = "/run/daas-lb-demo/control.sock";
/// The fake chain's id.
const DEMO_CHAIN_ID: &str = "daas-lb-demo";
/// 1 SUI in MIST.
const SUI: u64 = 1_000_000_000;
/// `chain.min_stake_mist` of the demo.
const MIN_STAKE_MIST: u64 = SUI;
/// How long after the start the fourth node registers.
pub const NEWCOMER_AFTER: Duration = Duration::from_secs(5);
/// node-1's enclave switches between its performance score and
/// [`DRIFT_PERFORMANCE`] this often.
pub const DRIFT_EVERY: Duration = Duration::from_secs(10);
/// node-1's performance score (basis points) every other [`DRIFT_EVERY`]:
/// low enough for node-2 to outrank it.
pub const DRIFT_PERFORMANCE: u64 = 4_000;

/// One node of the demo registry: its loopback address, its stake, whether
/// it registers at start or [`NEWCOMER_AFTER`] later, and what its enclave
/// attests (basis points).
struct DemoNode {
    name: &'static str,
    ip: Ipv4Addr,
    stake: u64,
    at_start: bool,
    performance: u64,
    reputation: u64,
}

/// The demo registry: three nodes above the minimum stake at start, one
/// under it (never a server although it answers), and a newcomer.
const DEMO_NODES: [DemoNode; 4] = [
    DemoNode {
        name: "node-1",
        ip: Ipv4Addr::new(127, 0, 0, 2),
        stake: 3 * SUI,
        at_start: true,
        performance: 9_500,
        reputation: 9_000,
    },
    DemoNode {
        name: "node-2",
        ip: Ipv4Addr::new(127, 0, 0, 3),
        stake: 2 * SUI,
        at_start: true,
        performance: 7_000,
        reputation: 8_000,
    },
    DemoNode {
        name: "node-low-stake",
        ip: Ipv4Addr::new(127, 0, 0, 5),
        stake: SUI / 2,
        at_start: true,
        performance: 6_000,
        reputation: 6_000,
    },
    DemoNode {
        name: "node-3",
        ip: Ipv4Addr::new(127, 0, 0, 4),
        stake: 3 * SUI / 2,
        at_start: false,
        performance: 5_000,
        reputation: 9_000,
    },
];

/// Where the demo keeps its state files: emptied at every start, because the
/// demo backends' ports may differ from one run to the next.
pub const DATA_DIR: &str = "/run/daas-lb-demo";

/// What a port the demo needs is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A VIP: bound only to see that nobody holds it, then let go.
    Vip,
    /// A demo backend: bound, then served.
    Backend,
}

/// One port the demo needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Need {
    protocol: Protocol,
    address: SocketAddr,
    role: Role,
    /// For the refusal: `demo-tcp VIP`, `demo-udp backend-2`, `demo-sui node-1`.
    what: String,
}

/// Every port the demo needs, VIPs first; the IPv6 ones only with `v6`
/// (an IPv6 loopback exists).
fn needed(v6: bool) -> Vec<Need> {
    let need = |protocol, address: SocketAddr, role, what: String| Need {
        protocol,
        address,
        role,
        what,
    };
    let vip4 = IpAddr::V4(DEMO_VIP_V4);
    let lo4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let lo6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let mut needs = vec![
        need(
            Protocol::Tcp,
            SocketAddr::new(vip4, DEMO_PORT),
            Role::Vip,
            "demo-tcp VIP".into(),
        ),
        need(
            Protocol::Udp,
            SocketAddr::new(vip4, DEMO_PORT),
            Role::Vip,
            "demo-udp VIP".into(),
        ),
    ];
    if v6 {
        needs.push(need(
            Protocol::Tcp,
            SocketAddr::new(lo6, DEMO_PORT),
            Role::Vip,
            "demo-tcp6 VIP".into(),
        ));
    }
    needs.push(need(
        Protocol::Tcp,
        SocketAddr::new(vip4, SUI_DEMO_PORT),
        Role::Vip,
        "demo-sui VIP".into(),
    ));
    let mut backends = vec![
        ("demo-tcp", Protocol::Tcp, lo4),
        ("demo-udp", Protocol::Udp, lo4),
    ];
    if v6 {
        backends.push(("demo-tcp6", Protocol::Tcp, lo6));
    }
    for (service, protocol, ip) in backends {
        for (index, port) in BACKEND_PORTS.iter().enumerate() {
            needs.push(need(
                protocol,
                SocketAddr::new(ip, *port),
                Role::Backend,
                format!("{service} backend-{}", index + 1),
            ));
        }
    }
    for node in &DEMO_NODES {
        needs.push(need(
            Protocol::Tcp,
            SocketAddr::new(IpAddr::V4(node.ip), SUI_BACKEND_PORT),
            Role::Backend,
            format!("demo-sui {}", node.name),
        ));
    }
    needs
}

/// A bound demo backend socket.
enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Binds every port in `needs` (TCP with `SO_REUSEADDR`, as any server
/// does, so only a socket that listens there or holds it counts). Returns
/// the backends' sockets in `needs` order; the VIPs' are let go. When
/// something else holds any of them, fails naming every one: a VIP someone
/// listens on would have its traffic captured by the demo.
async fn bind_needed(needs: &[Need]) -> anyhow::Result<Vec<(Need, Bound)>> {
    let mut taken = Vec::new();
    let mut bound = Vec::new();
    let mut probes = Vec::new();
    for need in needs {
        let result = match need.protocol {
            Protocol::Tcp => TcpListener::bind(need.address).await.map(Bound::Tcp),
            Protocol::Udp => UdpSocket::bind(need.address).await.map(Bound::Udp),
        };
        match result {
            Ok(socket) if need.role == Role::Vip => probes.push(socket),
            Ok(socket) => bound.push((need.clone(), socket)),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => taken.push(need),
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "binding {} {} ({}) for the demo",
                        need.protocol, need.address, need.what
                    )
                });
            }
        }
    }
    if taken.is_empty() {
        return Ok(bound);
    }
    let mut message = String::from(
        "the demo refuses to start: ports it needs are taken, and nothing was attached:",
    );
    for need in taken {
        let why = match need.role {
            Role::Vip => "something listens on this demo VIP; the demo would capture its traffic",
            Role::Backend => "a demo backend must listen here",
        };
        let _ = write!(
            message,
            "\n  {} {} ({}): {why}",
            need.protocol, need.address, need.what
        );
    }
    message.push_str(
        "\nStop what holds them (`ss -ltnup` names it) or run daas-lb with --config FILE.",
    );
    anyhow::bail!(message)
}

/// Whether the IPv6 loopback can be bound (it is absent when IPv6 is off).
async fn ipv6_loopback() -> bool {
    match TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await {
        Ok(_) => true,
        Err(err) => {
            tracing::warn!(
                error = %err,
                "no IPv6 loopback ([::1]): demo runs IPv4 only"
            );
            false
        }
    }
}

/// Starts the demo backends and returns the config that fronts them; fails
/// before anything is attached when a port it needs is taken
/// ([`bind_needed`]).
pub async fn start(base: Config, tasks: &mut JoinSet<()>) -> anyhow::Result<Config> {
    let check = |check| HealthCheckConfig {
        check,
        timeout: Duration::from_millis(500),
        intervals: Intervals::uniform(Duration::from_secs(1)),
        jitter_percent: HealthCheckConfig::DEFAULT_JITTER_PERCENT,
    };
    let v6 = ipv6_loopback().await;
    let bound = bind_needed(&needed(v6)).await?;
    let vip4 = SocketAddr::new(IpAddr::V4(DEMO_VIP_V4), DEMO_PORT);
    let vip6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), DEMO_PORT);
    let mut services: Vec<ServiceConfig> = [
        ("demo-tcp", vip4, Protocol::Tcp, CheckSpec::Tcp),
        ("demo-udp", vip4, Protocol::Udp, CheckSpec::Udp),
        ("demo-tcp6", vip6, Protocol::Tcp, CheckSpec::Tcp),
    ]
    .into_iter()
    .filter(|(_, vip, ..)| v6 || vip.is_ipv4())
    .map(|(name, vip, protocol, spec)| ServiceConfig {
        name: name.into(),
        vip,
        protocol,
        servers: Vec::new(),
        default_server: None,
        server_names: Vec::new(),
        default_server_name: None,
        policy: Policy::Failover,
        maglev_table_size: ServiceConfig::DEFAULT_MAGLEV_TABLE_SIZE,
        health_check: check(spec),
        remote: false,
        dial_tracking: true,
        dial_stall_timeout: DialStall::Auto,
        discovery: None,
        dataplane: ServiceDataplane::Ebpf,
        dial_timeout: ServiceConfig::DEFAULT_DIAL_TIMEOUT,
        keepalive: ServiceConfig::DEFAULT_KEEPALIVE,
    })
    .collect();
    let mut nodes = Vec::new();
    for (need, socket) in bound {
        let address = need.address;
        let (service, name) = need.what.split_once(' ').unwrap_or((&need.what, ""));
        let name = format!("{name} {address}");
        if service == "demo-sui" {
            if let Bound::Tcp(listener) = socket {
                nodes.push((name, listener));
            }
            continue;
        }
        if let Some(config) = services.iter_mut().find(|s| s.name == service) {
            config.servers.push(address);
        }
        match socket {
            Bound::Tcp(listener) => spawn_tcp_backend(listener, name, tasks),
            Bound::Udp(socket) => spawn_udp_backend(socket, name, tasks),
        }
    }
    for (name, listener) in nodes {
        spawn_tcp_backend(listener, name, tasks);
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
        bpffs_dir: BPFFS_DIR.into(),
        control_socket: CONTROL_SOCKET.into(),
        chain: chain_part.chain,
        // The features parsed with the `chain` block: the gates it implies
        // (discovery, Nautilus checks, stake validation) and the ranking.
        features: chain_part.features,
        ..base
    })
}

/// Starts the fake full node (on this runtime,
/// `127.0.0.1:0`) and the nodes' fake enclaves ([`publish_nodes`]), and
/// spawns the task that advances the chain every second, registers the
/// newcomer and makes node-1's score drift (it owns the fake enclaves).
/// Returns the `chain` block, the features and the `demo-sui` service,
/// parsed from YAML like a config file.
async fn start_chain(tasks: &mut JoinSet<()>) -> anyhow::Result<Config> {
    let port = SUI_BACKEND_PORT;
    let chain = FakeChain::start(DEMO_CHAIN_ID)
        .await
        .context("starting the demo's fake Sui full node")?;
    let DemoNodes {
        enclave_config,
        enclaves,
        mut newcomers,
    } = publish_nodes(&chain).await?;
    let config = Config::from_yaml(&chain_yaml(&chain, enclave_config, port), "<demo>")?;
    tasks.spawn(async move {
        let started = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drifted = false;
        loop {
            ticker.tick().await;
            let elapsed = started.elapsed();
            if elapsed >= NEWCOMER_AFTER {
                for (name, key, info) in newcomers.drain(..) {
                    let checkpoint = chain.register(key, info);
                    info!(node = name, %key, checkpoint, "demo chain: NodeRegistered");
                }
            }
            let drift = (elapsed.as_secs() / DRIFT_EVERY.as_secs()) % 2 == 1;
            if drift != drifted {
                drifted = drift;
                let (spec, enclave) = (&DEMO_NODES[0], &enclaves[0]);
                let performance = if drift {
                    DRIFT_PERFORMANCE
                } else {
                    spec.performance
                };
                enclave.set_scores(scores(spec, performance));
                info!(
                    node = spec.name,
                    performance, "demo enclave: performance score changed"
                );
            }
            chain.tick();
        }
    });
    Ok(config)
}

/// What [`publish_nodes`] set up.
struct DemoNodes {
    /// The `EnclaveConfig` object the nodes' enclaves are registered under.
    enclave_config: Address,
    /// One per [`DEMO_NODES`] entry, in order; they stop when dropped.
    enclaves: Vec<FakeEnclave>,
    /// The nodes to register [`NEWCOMER_AFTER`] the start: name, registry
    /// key, entry.
    newcomers: Vec<(&'static str, Address, Node)>,
}

/// Starts one fake enclave per demo node, publishes the demo's
/// `EnclaveConfig` (version 0, zero PCRs) and every node's `Enclave`
/// (the fake's key, current under that config) on `chain`, and registers
/// the nodes due at start with their `nautilus_url` and `enclave_id`.
async fn publish_nodes(chain: &FakeChain) -> anyhow::Result<DemoNodes> {
    let enclave_config = demo_address(0xec, 0);
    let zero_pcrs = Pcrs(vec![0; 48], vec![0; 48], vec![0; 48]);
    publish_config(chain, enclave_config, zero_pcrs, 0);
    let mut enclaves = Vec::new();
    let mut newcomers = Vec::new();
    for (index, spec) in DEMO_NODES.iter().enumerate() {
        let enclave = FakeEnclave::start()
            .await
            .with_context(|| format!("starting the fake enclave of {}", spec.name))?;
        enclave.set_scores(scores(spec, spec.performance));
        let operator = demo_address(0x0e, index);
        let enclave_id = demo_address(0xe1, index);
        publish_enclave(chain, enclave_id, enclave.public_key(), 0, APP);
        let key = demo_address(0xd0, index);
        let info = Node {
            operator,
            endpoint: spec.ip.to_string(),
            stake: spec.stake,
            sui_rpc: chain.url(),
            nautilus_url: enclave.url(),
            enclave_id,
        };
        if spec.at_start {
            chain.register(key, info);
        } else {
            newcomers.push((spec.name, key, info));
        }
        enclaves.push(enclave);
    }
    Ok(DemoNodes {
        enclave_config,
        enclaves,
        newcomers,
    })
}

/// The demo's `chain` block, features and `demo-sui` service (servers from
/// `chain`'s registry at `port`) as a config file.
fn chain_yaml(chain: &FakeChain, enclave_config: Address, port: u16) -> String {
    let registry = chain.registry();
    format!(
        "chain:
  sui_rpc_url: \"{url}\"
  registry: {{ package: \"{package}\", module: {module}, object: \"{object}\" }}
  min_stake_mist: {MIN_STAKE_MIST}
  discovery_interval: 1m
  enclave_config: \"{enclave_config}\"
features:
  performance_ranking: true
services:
  - name: demo-sui
    vip: {DEMO_VIP_V4}:{SUI_DEMO_PORT}
    servers: []
    discovery: {{ source: sui, port: {port} }}
    health_check:
      kind: all
      checks:
        - {{ kind: tcp }}
        - {{ kind: sui_sync, max_response_time: 500ms }}
        - {{ kind: nautilus, cache_ttl: 2s, max_age: 1m }}
      interval: 1s
      timeout: 1s
",
        url = chain.url(),
        package = registry.package,
        module = registry.module,
        object = registry.object,
    )
}

/// What `spec`'s enclave attests: `performance`, its reputation, and its
/// registry stake (never more than the chain holds).
fn scores(spec: &DemoNode, performance: u64) -> FakeScores {
    FakeScores {
        performance_score: performance,
        reputation_score: spec.reputation,
        stake_amount: spec.stake,
        ..FakeScores::default()
    }
}

/// A demo registry address: `prefix` repeated, the node's index last.
fn demo_address(prefix: u8, index: usize) -> Address {
    let mut bytes = [prefix; Address::LENGTH];
    bytes[Address::LENGTH - 1] = u8::try_from(index).unwrap_or(u8::MAX);
    Address::new(bytes)
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

/// Serves `socket`: every non-empty datagram is echoed back to its sender
/// prefixed with `[name] `.
fn spawn_udp_backend(socket: UdpSocket, name: String, tasks: &mut JoinSet<()>) {
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
        let attested = DEMO_NODES
            .iter()
            .map(|n| format!("{} {}/{}", n.name, n.performance, n.reputation))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "Each node has a fake Nautilus enclave registered under EnclaveConfig {}; they attest\n\
             \x20 performance/reputation {attested} (basis points); node-1's performance\n\
             \x20 drops to {DRIFT_PERFORMANCE} every other {}s. demo-sui checks the attestations and ranks its\n\
             \x20 servers by score (features.performance_ranking): watch `status` follow the drift.",
            chain
                .enclave_config
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            DRIFT_EVERY.as_secs()
        );
    }
    let api = config.api_addr;
    let metrics = config.metrics_addr;
    let second = config
        .services
        .first()
        .and_then(|s| s.servers.get(1))
        .map_or_else(
            || format!("127.0.0.1:{}", BACKEND_PORTS[1]),
            ToString::to_string,
        );
    let dir = pin_dir.display();
    // `--socket` only where the socket is not where the command looks by default.
    let socket = if config.control_socket == Path::new(Config::DEFAULT_CONTROL_SOCKET) {
        String::new()
    } else {
        format!(" --socket {}", config.control_socket.display())
    };
    let vip = format!("{DEMO_VIP_V4}:{DEMO_PORT}");
    let sui = format!("{DEMO_VIP_V4}:{SUI_DEMO_PORT}");
    let _ = writeln!(
        out,
        "\nTry these in another shell (as root for bpftool):\n\
         \x20 curl -s http://{vip}/          # answered by the selected backend, no proxy hop\n\
         \x20 nc {vip_nc}                        # type a line, the backend echoes it\n\
         \x20 echo hi | nc -u -w1 {vip_nc}       # UDP: the reply comes from the VIP\n\
         \x20 curl -s -g 'http://[::1]:{DEMO_PORT}/'          # IPv6 VIP\n\
         \x20 {binary} status --api {api}               # states, time in state, open connections,\n\
         \x20                                              # last check; the registry line, demo-sui's\n\
         \x20                                              # nodes with their stake and score share\n\
         \x20 {binary} status --api {api} --wide        # also perf/rep and raw scores, whole check reasons\n\
         \x20 curl -s http://{sui}/          # demo-sui: answered by a node from the registry\n\
         \x20 curl -s http://{metrics}/metrics | grep -E 'registry|stake|sync_lag'   # discovery metrics\n\
         \x20 curl -s http://{metrics}/metrics | grep -E 'nautilus|attestation|score' # attestation metrics\n\
         \x20 {binary} set-servers{socket} demo-tcp {second}   # replace the list at runtime (root: control socket)\n\
         \x20 curl -s http://{api}/status\n\
         \x20 curl -s http://{metrics}/metrics\n\
         \x20 bpftool map dump pinned {dir}/services\n\
         \x20 bpftool map lookup pinned {dir}/backends key 1 0 0 0\n\
         \x20 bpftool map lookup pinned {dir}/backend_stats key 1 0 0 0\n\
         \x20 scripts/inspect-maps.sh {dir}                 # every map, non-empty slots only\n\
         \x20 bpftool cgroup show {}\n\
         Only the demo VIPs above are redirected; nothing else in the cgroup is touched.\n\
         Stop with Ctrl-C: programs are detached and pins removed. After a crash or SIGKILL:\n\
         \x20 {binary} cleanup --bpffs-dir {dir}",
        cgroup.display(),
        vip_nc = format_args!("{DEMO_VIP_V4} {DEMO_PORT}"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::nautilus::{Attester, NodeEnclave, system_clock};

    #[tokio::test]
    async fn demo_nodes_attest_through_their_on_chain_enclaves() {
        let chain = FakeChain::start("demo-test").await.unwrap();
        let demo = publish_nodes(&chain).await.unwrap();
        assert_eq!(demo.enclaves.len(), DEMO_NODES.len());
        assert_eq!(demo.newcomers.len(), 1);
        let (_, key, info) = demo.newcomers[0].clone();
        chain.register(key, info);
        let registered = chain.nodes();
        assert_eq!(registered.len(), DEMO_NODES.len());
        let attester = Attester::new(&chain.url(), demo.enclave_config, true, system_clock());
        let check = crate::config::NautilusCheck {
            cache_ttl: Duration::ZERO,
            ..crate::config::NautilusCheck::DEFAULT
        };
        let node_enclave = |node: &Address, info: &Node| NodeEnclave {
            node: *node,
            nautilus_url: info.nautilus_url.clone(),
            enclave_id: info.enclave_id,
            stake_mist: info.stake,
        };
        for (node, info) in &registered {
            let spec = DEMO_NODES
                .iter()
                .find(|spec| spec.ip.to_string() == info.endpoint)
                .unwrap();
            let verdict = attester
                .check(&check, &node_enclave(node, info), Duration::from_secs(5))
                .await;
            let verified = verdict
                .result
                .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
            assert_eq!(verified.attestation.node, *node);
            assert_eq!(verified.attestation.performance_score, spec.performance);
            assert_eq!(verified.attestation.reputation_score, spec.reputation);
            assert!(verified.attestation.stake_amount <= info.stake);
        }

        // The drift: node-1's enclave attests less, and node-2 outranks it.
        demo.enclaves[0].set_scores(scores(&DEMO_NODES[0], DRIFT_PERFORMANCE));
        let (node_1, info_1) = registered
            .iter()
            .find(|(_, info)| info.endpoint == "127.0.0.2")
            .unwrap();
        let verified = attester
            .check(
                &check,
                &node_enclave(node_1, info_1),
                Duration::from_secs(5),
            )
            .await
            .result
            .unwrap();
        assert_eq!(verified.attestation.performance_score, DRIFT_PERFORMANCE);
        let value = |spec: &DemoNode, performance| {
            crate::policy::ranking::Score {
                performance,
                reputation: spec.reputation,
                stake_mist: spec.stake,
            }
            .value(crate::policy::ranking::StakeWeight::default())
        };
        let [node_1, node_2, _, node_3] = &DEMO_NODES;
        assert!(value(node_1, node_1.performance) > value(node_2, node_2.performance));
        assert!(value(node_2, node_2.performance) > value(node_3, node_3.performance));
        assert!(value(node_1, DRIFT_PERFORMANCE) < value(node_2, node_2.performance));
    }

    #[tokio::test]
    async fn demo_chain_config_ranks_and_checks_attestations() {
        let chain = FakeChain::start("demo-test").await.unwrap();
        let enclave_config = demo_address(0xec, 0);
        let config = Config::from_yaml(&chain_yaml(&chain, enclave_config, 7000), "<demo>")
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(config.features.performance_ranking);
        assert!(config.features.blockchain_discovery);
        assert!(config.features.nautilus_health_checks);
        assert!(config.features.stake_validation);
        assert_eq!(
            config.chain.as_ref().and_then(|c| c.enclave_config),
            Some(enclave_config)
        );
        let [service] = config.services.as_slice() else {
            panic!("{:?}", config.services);
        };
        let CheckSpec::All(checks) = &service.health_check.check else {
            panic!("{:?}", service.health_check);
        };
        let kinds: Vec<_> = checks.iter().map(CheckSpec::kind).collect();
        assert_eq!(kinds, ["tcp", "sui_sync", "nautilus"]);
        assert!(checks.iter().any(|c| matches!(
            c,
            CheckSpec::Nautilus(n) if n.cache_ttl == Duration::from_secs(2)
                && n.max_age == Duration::from_mins(1)
        )));
    }
}
