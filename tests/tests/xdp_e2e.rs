//! XDP for remote clients, end to end: the real `daas-lb` runs in the node
//! namespace of a [`Topology`] with `lb_xdp` attached to the node's veths,
//! and a client in its own namespace talks to a VIP the node routes but does
//! not own. Every backend is a [`TcpBackend`]/[`UdpBackend`] whose sockets
//! live in that backend's namespace and answer with the backend's name.
//!
//! Checked: full NAT (the client sees only the VIP, the backends only the
//! node's address on their link and a port of the SNAT range), `policy:
//! spread` shares flows about equally, a failed backend moves only its own
//! flows, established flows survive a Maglev rebuild, `policy: failover`,
//! UDP, IPv6 and the XDP metrics.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{FLOW_REPLY, FlowKey, FlowValue, ip_from_bytes};
use lb_tests::{
    Daemon, PinDir, TcpBackend, TempDir, TestCgroup, UdpBackend, metric, privileged, put_servers,
    service,
    topology::{NsGuard, Topology, VIP_NET_V4},
    write_config,
};
use lb_userspace::{api::status::Status, policy::state_machine::ServerState};

const VIP: &str = "10.96.0.10:80";
const VIP6: &str = "[fd00:96::10]:80";
const UDP_VIP: &str = "10.96.0.10:53";
const SERVICE_PORT: u16 = 8080;
const TABLE: u32 = 16381;
/// The SNAT source ports the config asks for.
const SNAT_PORTS: (u16, u16) = (61000, 65535);
const CHECK: &str = "{ kind: tcp, interval: 100ms, timeout: 100ms, jitter: 0% }";
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// One test's world: the topology (dropped last), the node's cgroup, pins
/// and temp dir, and the daemon (dropped first).
///
/// The test's thread stays in the node namespace while the world lives, so
/// that the daemon's API (`127.0.0.1:9465`) is reachable.
struct World {
    daemon: Option<Daemon>,
    tmp: TempDir,
    pins: PinDir,
    cgroup: TestCgroup,
    _in_node: NsGuard,
    topo: Topology,
}

impl World {
    /// `None` when privileged tests cannot run here (see [`privileged`]).
    fn new(test: &str, backends: usize) -> Option<Self> {
        if !privileged(test) {
            return None;
        }
        let topo = Topology::new(backends);
        Some(Self {
            daemon: None,
            tmp: TempDir::new(),
            pins: PinDir::new(),
            cgroup: TestCgroup::new(),
            _in_node: topo.enter(&topo.node),
            topo,
        })
    }

    /// Writes the config (an `xdp:` block attaching to every node device,
    /// native mode) and starts the daemon in the node namespace.
    fn start(&mut self, services: &str) -> &mut Daemon {
        let interfaces = self.topo.node_interfaces().join(", ");
        let top = format!(
            "xdp:\n  interfaces: [{interfaces}]\n  mode: driver\n  snat_ports: {}-{}\n",
            SNAT_PORTS.0, SNAT_PORTS.1
        );
        let config = write_config(&self.tmp, &self.pins, &self.cgroup, &top, services);
        let daemon = self.topo.spawn_daemon(&self.tmp, &config);
        self.daemon.insert(daemon)
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("daemon started")
    }

    /// A TCP backend on the IPv4 address of each of `names`, and service
    /// `web` on [`VIP`] spreading over the first `in_table` of them, started
    /// and ready. Returns the backends.
    fn start_web_spread(&mut self, names: &[&str], in_table: usize) -> Vec<TcpBackend> {
        let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let backends: Vec<TcpBackend> = names.iter().map(|n| self.tcp_backend(n, v4)).collect();
        let servers: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        self.start(&remote_service(
            "web",
            VIP,
            "tcp",
            "spread",
            &servers[..in_table],
        ));
        self.wait_web_spread(in_table);
        backends
    }

    /// Waits until service `web`'s Maglev table holds `servers` servers.
    fn wait_web_spread(&mut self, servers: usize) {
        self.daemon().wait_for(
            Duration::from_secs(10),
            &format!("{servers} server(s) in web's table"),
            |s| spread_ready(s, "web", servers),
        );
    }

    /// A TCP backend in backend `name`'s namespace on its address of the
    /// family of `like`, port [`SERVICE_PORT`].
    fn tcp_backend(&self, name: &str, like: IpAddr) -> TcpBackend {
        let host = self.topo.backend(name);
        let _inside = self.topo.enter(&host.ns);
        TcpBackend::bind(name, SocketAddr::new(host.ip_like(like), SERVICE_PORT))
    }

    /// A UDP backend in backend `name`'s namespace (any port).
    fn udp_backend(&self, name: &str) -> UdpBackend {
        let host = self.topo.backend(name);
        let _inside = self.topo.enter(&host.ns);
        UdpBackend::start(name, host.v4.into())
    }

    /// One TCP exchange from the client: connect to `vip`, send `payload`,
    /// read the reply up to EOF. Returns the reply.
    fn tcp_once(&self, vip: &str, payload: &str) -> io::Result<String> {
        let _inside = self.topo.enter(&self.topo.client.ns);
        let addr: SocketAddr = vip.parse().expect("vip");
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        assert_eq!(stream.peer_addr()?, addr, "client sees the VIP as its peer");
        stream.write_all(payload.as_bytes())?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    }

    /// `n` exchanges through `vip`; how many each backend answered.
    fn spread(&self, vip: &str, n: usize) -> BTreeMap<String, usize> {
        let mut by_backend = BTreeMap::new();
        for i in 0..n {
            let reply = self
                .tcp_once(vip, &format!("x{i}"))
                .unwrap_or_else(|e| panic!("exchange {i} through {vip}: {e}\n{}", self.diag()));
            *by_backend.entry(backend_of(&reply)).or_insert(0) += 1;
        }
        by_backend
    }

    /// A held connection from the client through `vip`.
    fn hold(&self, vip: &str) -> Held {
        let _inside = self.topo.enter(&self.topo.client.ns);
        Held::open(vip).unwrap_or_else(|e| panic!("hold {vip}: {e}\n{}", self.diag()))
    }

    /// The `flows` map: (key, value) pairs.
    fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        let data = MapData::from_pin(self.pins.path().join("flows")).expect("open pinned flows");
        let map = Map::from_map_data(data).expect("flows map");
        let flows: BpfHashMap<_, FlowKey, FlowValue> =
            BpfHashMap::try_from(map).expect("flows is a hash map");
        flows.iter().map(|e| e.expect("read flows")).collect()
    }

    /// The forward entry of the client's flow from `local` to `vip`.
    fn forward_flow(&self, local: SocketAddr, vip: &str) -> Option<FlowValue> {
        let vip: SocketAddr = vip.parse().expect("vip");
        self.flows()
            .into_iter()
            .find(|(k, v)| {
                v.flags & FLOW_REPLY == 0
                    && addr_of(k.src, k.src_port, k.family) == local
                    && addr_of(k.dst, k.dst_port, k.family) == vip
            })
            .map(|(_, v)| v)
    }

    /// What to print when something fails: XDP counters and the log tail.
    fn diag(&self) -> String {
        let Some(daemon) = &self.daemon else {
            return String::new();
        };
        let metrics =
            lb_userspace::api::client::get(lb_tests::METRICS, "/metrics").unwrap_or_default();
        let xdp: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("daas_lb_xdp"))
            .collect();
        let stats = self.pins.path().join("xdp_stats").display().to_string();
        let xdp_stats = lb_tests::bpftool(&["map", "dump", "pinned", &stats]);
        let config = self.pins.path().join("xdp_config").display().to_string();
        let xdp_config = lb_tests::bpftool(&["map", "dump", "pinned", &config]);
        let if_addrs = self.pins.path().join("if_addrs").display().to_string();
        let if_addrs = lb_tests::bpftool(&["map", "dump", "pinned", &if_addrs]);
        eprintln!("xdp_stats: {xdp_stats}\nxdp_config: {xdp_config}\nif_addrs: {if_addrs}");
        let log = daemon.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        format!(
            "xdp metrics:\n{}\ndaemon log (last lines, newest first):\n{}",
            xdp.join("\n"),
            tail.join("\n")
        )
    }
}

/// A TCP connection held open from the client's namespace.
struct Held {
    stream: TcpStream,
    /// The backend that answered `HOLD`.
    backend: String,
    /// The client's address of the connection.
    local: SocketAddr,
}

impl Held {
    fn open(vip: &str) -> io::Result<Self> {
        let addr: SocketAddr = vip.parse().expect("vip");
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.write_all(b"HOLD")?;
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf)?;
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        Ok(Self {
            backend: backend_of(&reply),
            local: stream.local_addr()?,
            stream,
        })
    }

    /// Sends `message` and returns the reply (`<backend>:<message>`).
    fn ping(&mut self, message: &str) -> io::Result<String> {
        self.stream.write_all(message.as_bytes())?;
        let mut buf = [0u8; 256];
        let n = self.stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// The backend name a reply starts with (`b2:...`).
fn backend_of(reply: &str) -> String {
    reply.split(':').next().unwrap_or_default().to_owned()
}

fn addr_of(bytes: [u8; 16], port: u16, family: u8) -> SocketAddr {
    SocketAddr::new(ip_from_bytes(bytes, family), port)
}

/// A `remote: true` service on `vip` over `servers`.
fn remote_service(
    name: &str,
    vip: &str,
    protocol: &str,
    policy: &str,
    servers: &[SocketAddr],
) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let check = if protocol == "udp" {
        "{ kind: udp, interval: 100ms, timeout: 100ms, jitter: 0% }"
    } else {
        CHECK
    };
    format!(
        "  - name: {name}\n    vip: \"{vip}\"\n    protocol: {protocol}\n    servers: [{}]\n    policy: {policy}\n    remote: true\n    health_check: {check}\n",
        servers.join(", ")
    )
}

/// Slots per server address of service `name`.
fn slots(status: &Status, name: &str) -> HashMap<String, u32> {
    service(status, name)
        .servers
        .iter()
        .map(|s| (s.address.clone(), s.slots.unwrap_or(0)))
        .collect()
}

/// Every server of `name` passed its checks and the table is full.
fn spread_ready(status: &Status, name: &str, servers: usize) -> bool {
    let svc = service(status, name);
    svc.servers.len() == servers
        && svc
            .servers
            .iter()
            .all(|s| matches!(s.state, ServerState::Preferred | ServerState::Active))
        && slots(status, name).values().sum::<u32>() == TABLE
}

/// The established TCP peers of `port` in `ns` (`ss`), as `ip:port` strings.
fn established_peers(topo: &Topology, ns: &str, port: u16) -> Vec<SocketAddr> {
    let out = topo.sh(
        ns,
        "ss",
        &[
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ],
    );
    out.lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|peer| {
            peer.replace(['[', ']'], "")
                .rsplit_once(':')
                .and_then(|(ip, port)| Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?)))
        })
        .collect()
}

/// The XDP counters exported as metrics, summed over `labels`.
fn xdp_metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = lb_userspace::api::client::get(lb_tests::METRICS, "/metrics").expect("GET /metrics");
    metric(&text, name, labels).unwrap_or(0.0)
}

/// The XDP attach mode of node device `dev` (`ip -d -j link`), if any.
fn xdp_mode(topo: &Topology, dev: &str) -> Option<String> {
    let out = topo.sh(&topo.node, "ip", &["-j", "-d", "link", "show", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    // 1 = native (driver), 2 = generic (skb), 3 = offload
    v[0]["xdp"]["mode"].as_u64().map(|m| match m {
        1 => "driver".to_owned(),
        2 => "skb".to_owned(),
        other => other.to_string(),
    })
}

#[test]
fn topology_routes_between_namespaces_without_a_balancer() {
    if !privileged("topology_routes_between_namespaces_without_a_balancer") {
        return;
    }
    let topo = Topology::new(3);
    let b2 = topo.backend("b2").clone();
    let backend = {
        let _inside = topo.enter(&b2.ns);
        TcpBackend::bind("b2", SocketAddr::new(b2.v4.into(), SERVICE_PORT))
    };
    // The client reaches a backend through the node (plain forwarding).
    let out = topo.sh(
        &topo.client.ns,
        "curl",
        &[
            "-s",
            "-m",
            "2",
            &format!("http://{}:{SERVICE_PORT}/", b2.v4),
        ],
    );
    assert_eq!(out, "b2");
    // No namespace has a default route.
    for ns in topo.namespaces() {
        let routes = topo.sh(&ns, "ip", &["route", "show", "default"]);
        assert!(
            routes.trim().is_empty(),
            "{ns} has a default route: {routes}"
        );
    }
    // The client routes the VIP range via the node.
    let route = topo.sh(&topo.client.ns, "ip", &["route", "get", "10.96.0.10"]);
    assert!(route.contains("via 10.10.0.1"), "{VIP_NET_V4}: {route}");
    drop(backend);
    let names = topo.namespaces();
    drop(topo);
    let left = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| names.contains(n))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left after drop: {left:?}");
}

#[test]
fn xdp_spread_balances_remote_tcp_flows_with_full_nat() {
    let Some(mut world) = World::new("xdp_spread_balances_remote_tcp_flows_with_full_nat", 3)
    else {
        return;
    };
    let _backends = world.start_web_spread(&["b1", "b2", "b3"], 3);

    // The test client, as a process in the client namespace.
    let client = world.topo.sh(
        &world.topo.client.ns,
        &lb_tests::client_bin().display().to_string(),
        &["tcp", VIP, "hello"],
    );
    let outcome: serde_json::Value = serde_json::from_str(&client).expect("client JSON");
    assert_eq!(outcome["ok"], true, "{outcome}\n{}", world.diag());
    assert_eq!(outcome["peer"], VIP, "{outcome}");

    let flows_before = xdp_metric("daas_lb_xdp_flows_total", &[("name", "web")]);
    let n: u32 = 300;
    let counts = world.spread(VIP, n as usize);
    eprintln!("{n} connects over three backends: {counts:?}");
    for name in ["b1", "b2", "b3"] {
        let got = counts.get(name).copied().unwrap_or(0);
        assert!(
            (60..=140).contains(&got),
            "{name} got {got} of {n}: {counts:?}"
        );
    }
    let flows_after = xdp_metric("daas_lb_xdp_flows_total", &[("name", "web")]);
    assert!(
        flows_after - flows_before >= f64::from(n),
        "daas_lb_xdp_flows_total grew by {} for {n} new connections\n{}",
        flows_after - flows_before,
        world.diag()
    );
    let packets = xdp_metric("daas_lb_xdp_packets_total", &[("name", "web")]);
    assert!(
        packets >= f64::from(n * 4),
        "{packets} XDP packets\n{}",
        world.diag()
    );
    let redirected = xdp_metric("daas_lb_xdp_verdicts_total", &[("reason", "redirect")]);
    assert!(
        redirected >= f64::from(n * 4),
        "{redirected} redirects\n{}",
        world.diag()
    );

    // Full NAT: a held connection is seen by the client as going to the VIP,
    // by its backend as coming from the node's address on the backend link
    // and a port of the SNAT range.
    let held: Vec<Held> = (0..12).map(|_| world.hold(VIP)).collect();
    for h in &held {
        assert_eq!(h.stream.peer_addr().unwrap().to_string(), VIP);
        let host = world.topo.backend(&h.backend);
        let flow = world
            .forward_flow(h.local, VIP)
            .unwrap_or_else(|| panic!("no flow entry for {}", h.local));
        assert_eq!(flow.src, lb_common::ip_to_bytes(host.gw_v4.into()).0);
        assert!(
            (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&flow.src_port),
            "{flow:?}"
        );
        let peers = established_peers(&world.topo, &host.ns, SERVICE_PORT);
        let snat = SocketAddr::new(host.gw_v4.into(), flow.src_port);
        assert!(
            peers.contains(&snat),
            "{} should see {snat} as a peer; it sees {peers:?}",
            h.backend
        );
        assert!(
            peers.iter().all(|p| p.ip() == IpAddr::from(host.gw_v4)),
            "{} sees a peer other than the node: {peers:?}",
            h.backend
        );
    }
    // The client never appears at a backend.
    let client_ip = IpAddr::from(world.topo.client.v4);
    for b in &world.topo.backends {
        let peers = established_peers(&world.topo, &b.ns, SERVICE_PORT);
        assert!(!peers.iter().any(|p| p.ip() == client_ip), "{peers:?}");
    }
}

#[test]
fn xdp_failed_backend_moves_only_its_flows() {
    let Some(mut world) = World::new("xdp_failed_backend_moves_only_its_flows", 3) else {
        return;
    };
    let mut backends = world.start_web_spread(&["b1", "b2", "b3"], 3);

    // Held connections until every backend has at least two.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ["b1", "b2", "b3"]
        .iter()
        .any(|n| held.iter().filter(|h: &&Held| h.backend == *n).count() < 2)
    {
        assert!(
            Instant::now() < deadline,
            "could not spread held connections"
        );
        held.push(world.hold(VIP));
        assert!(
            held.len() <= 60,
            "60 held connections and still a backend without two"
        );
    }
    let pinned: Vec<u32> = held
        .iter()
        .map(|h| world.forward_flow(h.local, VIP).expect("flow").backend_id)
        .collect();

    // b3 stops listening: its checks fail, the controller marks it down.
    let b3_addr = backends[2].addr.to_string();
    backends[2].stop();
    world.daemon().wait_for(
        Duration::from_secs(10),
        "b3 failed and out of the table",
        |s| {
            let web = service(s, "web");
            web.servers
                .iter()
                .any(|srv| srv.address == b3_addr && srv.state == ServerState::Failed)
                && slots(s, "web").get(&b3_addr).copied().unwrap_or(0) == 0
        },
    );

    // Connections to b1 and b2 keep their backend and their flow entry;
    // connections to b3 are re-hashed to another backend, which resets them.
    let mut reset = Vec::new();
    for (i, h) in held.iter_mut().enumerate() {
        let reply = h.ping(&format!("after{i}"));
        if h.backend == "b3" {
            match reply {
                Ok(r) => panic!("held connection {i} to b3 answered {r:?} after b3 failed"),
                Err(e) => reset.push(e.kind()),
            }
            // Its next packet was re-hashed to a usable backend (which did
            // not know the connection and reset it).
            let now = world.forward_flow(h.local, VIP).expect("flow still there");
            assert_ne!(now.backend_id, pinned[i], "flow {i} still pinned to b3");
        } else {
            let reply = reply.unwrap_or_else(|e| {
                panic!(
                    "held connection {i} to {} broke after b3 failed: {e}\n{}",
                    h.backend,
                    world.diag()
                )
            });
            assert_eq!(reply, format!("{}:after{i}", h.backend));
            let now = world.forward_flow(h.local, VIP).expect("flow still there");
            assert_eq!(now.backend_id, pinned[i], "flow {i} moved");
        }
    }
    eprintln!("connections to b3 after it failed: {reset:?}");
    assert!(
        reset.len() >= 2
            && reset.iter().all(|k| matches!(
                k,
                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
            )),
        "connections to b3 should be reset by their new backend: {reset:?}"
    );

    let counts = world.spread(VIP, 100);
    eprintln!("100 connects with b3 failed: {counts:?}");
    assert_eq!(counts.get("b3"), None, "{counts:?}");
    for name in ["b1", "b2"] {
        let got = counts.get(name).copied().unwrap_or(0);
        assert!(
            (25..=75).contains(&got),
            "{name} got {got} of 100: {counts:?}"
        );
    }
}

#[test]
fn xdp_established_flows_survive_a_maglev_rebuild() {
    let Some(mut world) = World::new("xdp_established_flows_survive_a_maglev_rebuild", 4) else {
        return;
    };
    let backends = world.start_web_spread(&["b1", "b2", "b3", "b4"], 3);
    let mut held: Vec<Held> = (0..30).map(|_| world.hold(VIP)).collect();

    // Add b4 at runtime: about a quarter of the slots move to it.
    let all: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let (code, body) = put_servers(&world.daemon().control, "web", &refs);
    assert_eq!(code, 200, "{body}");
    world.wait_web_spread(4);
    for (i, h) in held.iter_mut().enumerate() {
        let reply = h.ping(&format!("rebuilt{i}")).unwrap_or_else(|e| {
            panic!(
                "held connection {i} to {} broke in the rebuild: {e}\n{}",
                h.backend,
                world.diag()
            )
        });
        assert_eq!(
            reply,
            format!("{}:rebuilt{i}", h.backend),
            "connection {i} moved"
        );
    }
    let counts = world.spread(VIP, 200);
    eprintln!("200 connects over four backends: {counts:?}");
    for name in ["b1", "b2", "b3", "b4"] {
        let got = counts.get(name).copied().unwrap_or(0);
        assert!(
            (25..=80).contains(&got),
            "{name} got {got} of 200: {counts:?}"
        );
    }

    // A SIGHUP that reloads the same file (three servers) rebuilds again,
    // dropping b4: connections to b1..b3 still stay where they are.
    world.daemon().signal(libc::SIGHUP);
    world.wait_web_spread(3);
    for (i, h) in held.iter_mut().enumerate() {
        let reply = h.ping(&format!("reloaded{i}")).unwrap_or_else(|e| {
            panic!("held connection {i} to {} broke on SIGHUP: {e}", h.backend)
        });
        assert_eq!(reply, format!("{}:reloaded{i}", h.backend));
    }
}

#[test]
fn xdp_udp_echo_and_failover_and_ipv6() {
    let Some(mut world) = World::new("xdp_udp_echo_and_failover_and_ipv6", 3) else {
        return;
    };
    let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let v6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let names = ["b1", "b2", "b3"];
    let tcp4: Vec<TcpBackend> = names.iter().map(|n| world.tcp_backend(n, v4)).collect();
    let tcp6: Vec<TcpBackend> = names.iter().map(|n| world.tcp_backend(n, v6)).collect();
    let udp: Vec<UdpBackend> = names.iter().map(|n| world.udp_backend(n)).collect();
    let addrs = |b: &[TcpBackend]| b.iter().map(|b| b.addr).collect::<Vec<_>>();
    let udp_addrs: Vec<SocketAddr> = udp.iter().map(|b| b.addr).collect();
    let services = [
        remote_service("fo", VIP, "tcp", "failover", &addrs(&tcp4)),
        remote_service("web6", VIP6, "tcp", "spread", &addrs(&tcp6)),
        remote_service("dns", UDP_VIP, "udp", "spread", &udp_addrs),
    ]
    .concat();
    world.start(&services);
    world
        .daemon()
        .wait_for(Duration::from_secs(10), "every server checked", |s| {
            spread_ready(s, "web6", 3)
                && spread_ready(s, "dns", 3)
                && service(s, "fo").servers.iter().all(|srv| srv.healthy)
        });

    // failover: every connection goes to the one selected server.
    let counts = world.spread(VIP, 20);
    assert_eq!(counts.len(), 1, "failover spread connections: {counts:?}");

    // IPv6 spread.
    let counts = world.spread(VIP6, 90);
    eprintln!("90 IPv6 connects: {counts:?}");
    for name in names {
        let got = counts.get(name).copied().unwrap_or(0);
        assert!(
            (10..=55).contains(&got),
            "{name} got {got} of 90: {counts:?}"
        );
    }

    // UDP: the reply comes from the VIP; different source ports spread.
    let mut seen = BTreeMap::new();
    {
        let _inside = world.topo.enter(&world.topo.client.ns);
        // Every socket stays open until the end, so the 60 source ports
        // (and thus flows) are distinct: a closed socket's port may be
        // handed out again.
        let mut open = Vec::new();
        for i in 0..60 {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let payload = format!("q{i}");
            socket.send_to(payload.as_bytes(), UDP_VIP).expect("send");
            let mut buf = [0u8; 512];
            let (n, from) = socket
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("UDP reply {i}: {e}"));
            assert_eq!(from.to_string(), UDP_VIP, "reply source");
            let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(reply.ends_with(&format!(":{payload}")), "{reply}");
            *seen.entry(backend_of(&reply)).or_insert(0) += 1;
            open.push(socket);
        }
    }
    eprintln!("60 UDP flows: {seen:?}");
    assert_eq!(seen.len(), 3, "UDP flows reached {seen:?}");
    let flows = xdp_metric("daas_lb_xdp_flows_total", &[("name", "dns")]);
    assert!(flows >= 60.0, "dns flows {flows}\n{}", world.diag());
}

/// `ip -d link` shows `xdp` (native) on every node device while the daemon
/// runs, and nothing once it stopped.
#[test]
fn xdp_is_attached_natively_to_the_configured_devices_and_detached_on_stop() {
    let Some(mut world) = World::new(
        "xdp_is_attached_natively_to_the_configured_devices_and_detached_on_stop",
        1,
    ) else {
        return;
    };
    let b1 = world.tcp_backend("b1", IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    world.start(&remote_service("web", VIP, "tcp", "spread", &[b1.addr]));
    world.wait_web_spread(1);
    for dev in world.topo.node_interfaces() {
        assert_eq!(
            xdp_mode(&world.topo, &dev).as_deref(),
            Some("driver"),
            "{dev}"
        );
    }
    let reply = world
        .tcp_once(VIP, "x")
        .unwrap_or_else(|e| panic!("exchange: {e}\n{}", world.diag()));
    assert_eq!(reply, "b1:x");
    world.daemon().stop();
    for dev in world.topo.node_interfaces() {
        assert_eq!(
            xdp_mode(&world.topo, &dev),
            None,
            "{dev} still has XDP after stop"
        );
    }
}
