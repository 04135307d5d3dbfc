//! Sui discovery end to end: the real `daas-lb run` with a `chain:` block
//! pointing at an in-process fake Sui full node
//! ([`lb_userspace::demo::fake_node::FakeChain`], real `sui.rpc.v2` gRPC
//! services on `127.0.0.1:<ephemeral>` in the test's network namespace), and
//! a service with `discovery: { source: sui, port: 6443 }`.
//!
//! The registry's nodes register endpoints `127.0.0.5X`, where K3s server
//! stand-ins ([`Node`]) listen (service port 6443, health on 8080); the
//! default server is `127.0.0.50`. Checked: the event path reaches the BPF
//! `backends` map within a second (measured and printed), the stake filter,
//! reconnection with gap repair (exact event counts), foreign and malformed
//! events, the `sui_sync` check against a node's own full node, and a
//! registry that cannot be read at start. The filtered stream
//! (`SubscribeEvents`) is the default: registry events arrive through it
//! with mainnet-like foreign noise on the chain and none of the noise on
//! the wire (the fake's counters), a drop is repaired with `ListEvents`,
//! and a node that answers `UNIMPLEMENTED` is followed through every
//! checkpoint instead (warning, status and metric name the mode).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use lb_common::{BACKEND_DOWN, Backend, ip_from_bytes};
use lb_tests::{
    Daemon, HeldConnection, Node, SuiChain as Chain, TestEnv, metric, service, service_yaml,
};
use lb_userspace::{
    api::status::{ServerStatus, Status},
    chain::registry::{self, NodeRegistered, NodeRemoved},
    policy::state_machine::ServerState,
};
use sui_sdk_types::Address;

/// The service every test uses.
const SVC: &str = "api";
/// Its VIP.
const VIP: &str = "127.0.0.1:6444";
/// The service port of every node (`discovery.port`).
const PORT: u16 = 6443;
/// Top-level config lines: count connections often.
const TOP: &str = "connection_poll_interval: 100ms\n";
/// K3s-like health check, fast.
const HTTP_CHECK: &str =
    "{ kind: http, path: /healthz, port: 8080, interval: 150ms, timeout: 150ms, jitter: 0% }";
/// The fake chain's id.
const CHAIN_ID: &str = "4c78adac";
/// The bound from an on-chain event to the BPF map.
const EVENT_TO_MAP: Duration = Duration::from_secs(1);
/// How long the tests poll for it (so a slow run reports its latency).
const EVENT_PATIENCE: Duration = Duration::from_secs(3);
/// The bound of the other waits (a few check intervals and slack).
const REACT: Duration = Duration::from_secs(5);

/// A K3s server stand-in on `127.0.0.<octet>:6443` (health on `:8080`).
fn node(name: &str, octet: u8) -> Node {
    Node::start(name, Ipv4Addr::new(127, 0, 0, octet), PORT)
}

/// A registry key (node address) ending in `byte`.
fn key(byte: u8) -> Address {
    let mut bytes = [0x3c; Address::LENGTH];
    bytes[Address::LENGTH - 1] = byte;
    Address::new(bytes)
}

/// A registry `Node` serving at `endpoint` with `stake` MIST and its own
/// full node at `sui_rpc`.
fn info(endpoint: &str, stake: u64, sui_rpc: &str) -> registry::Node {
    registry::Node {
        operator: key(0xee),
        endpoint: endpoint.to_owned(),
        stake,
        sui_rpc: sui_rpc.to_owned(),
        nautilus_url: String::new(),
        enclave_id: Address::ZERO,
    }
}

/// The `services:` entry: [`SVC`] with static `servers`, `default`, the
/// health check `check` and `discovery` on [`PORT`].
fn api(servers: &[&Node], default: Option<&Node>, check: &str) -> String {
    let servers: Vec<SocketAddr> = servers.iter().map(|n| n.addr).collect();
    let mut yaml = service_yaml(SVC, VIP, &servers, default.map(|n| n.addr), check);
    let _ = writeln!(yaml, "    discovery: {{ source: sui, port: {PORT} }}");
    yaml
}

/// Starts the daemon and waits for the first full sync of the registry.
fn start_synced(env: &TestEnv, top: &str, services: &str) -> Daemon {
    let mut daemon = env.start_with(top, services);
    daemon.wait_for(REACT, "registry synced", |s| {
        s.registry.as_ref().is_some_and(|r| r.synced)
    });
    daemon
}

fn find_server(status: &Status, addr: SocketAddr) -> Option<&ServerStatus> {
    service(status, SVC)
        .servers
        .iter()
        .find(|s| s.address == addr.to_string())
}

/// Whether `addr` is one of the service's servers (not invalid).
fn listed(status: &Status, addr: SocketAddr) -> bool {
    find_server(status, addr).is_some_and(|s| s.state != ServerState::Invalid)
}

/// The used slots of the pinned `backends` array: address and flags.
fn backends(env: &TestEnv) -> Vec<(SocketAddr, u8)> {
    let data = MapData::from_pin(env.pins.path().join("backends")).expect("open pinned backends");
    let map = Map::from_map_data(data).expect("backends map");
    let array: Array<_, Backend> = Array::try_from(map).expect("backends is an array");
    array
        .iter()
        .map(|b| b.expect("read backends"))
        .filter(|b| b.family != 0)
        .map(|b| {
            (
                SocketAddr::new(ip_from_bytes(b.addr, b.family), b.port),
                b.flags,
            )
        })
        .collect()
}

/// Whether `addr` has a usable slot (not `BACKEND_DOWN`) in the BPF map.
fn usable_in_map(env: &TestEnv, addr: SocketAddr) -> bool {
    backends(env)
        .iter()
        .any(|(a, flags)| *a == addr && flags & BACKEND_DOWN == 0)
}

/// Polls `ready` every 2 ms until it holds; how long that took since
/// `since`. Panics after [`EVENT_PATIENCE`].
fn measure(daemon: &Daemon, since: Instant, what: &str, ready: impl Fn() -> bool) -> Duration {
    loop {
        if ready() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < EVENT_PATIENCE,
            "{what}: not seen within {EVENT_PATIENCE:?}; status {:#?}\nlog:\n{}",
            lb_userspace::api::client::fetch_status(daemon.api).ok(),
            daemon.log()
        );
        thread::sleep(Duration::from_millis(2));
    }
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

/// Connects through the VIP every 20 ms until a connect reaches `node`.
fn wait_connects_reach(env: &TestEnv, daemon: &Daemon, node: &Node) {
    let deadline = Instant::now() + REACT;
    loop {
        let last = connect_backend(env);
        if last.as_deref() == Ok(node.name.as_str()) {
            return;
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

/// Waits until `node` is in one of `states`.
fn wait_state(daemon: &mut Daemon, node: &Node, states: &[ServerState]) -> Status {
    daemon.wait_for(REACT, &format!("{} in {states:?}", node.name), |s| {
        find_server(s, node.addr).is_some_and(|srv| states.contains(&srv.state))
    })
}

/// Waits until `node` is preferred or active.
fn wait_ready(daemon: &mut Daemon, node: &Node) -> Status {
    wait_state(daemon, node, &[ServerState::Preferred, ServerState::Active])
}

/// A held connection through the VIP that must reach `node`.
fn hold_on(env: &TestEnv, node: &Node) -> HeldConnection {
    let held = env.hold(VIP);
    assert_eq!(held.backend(), node.name, "{:?}", held.connected());
    held
}

/// Waits until `held` is closed under its client by an error (the removal
/// path's `SOCK_DESTROY`: `ECONNABORTED`, or a reset).
fn expect_reset(held: &mut HeldConnection, daemon: &Daemon, what: &str) {
    let Some((_, errno)) = held.wait_closed(REACT) else {
        panic!(
            "{what}: the held connection to {} is still open; status {:#?}\nlog:\n{}",
            held.backend(),
            lb_userspace::api::client::fetch_status(daemon.api).ok(),
            daemon.log()
        );
    };
    assert!(
        matches!(errno, Some(libc::ECONNABORTED | libc::ECONNRESET)),
        "{what}: expected ECONNABORTED or ECONNRESET, got {:?}",
        held.closed_event()
    );
}

/// The registry's event counts by kind, from `GET /status`.
fn events(daemon: &Daemon) -> BTreeMap<String, u64> {
    daemon
        .status()
        .registry
        .expect("status has `registry`")
        .events
}

/// Asserts the event counts in `GET /status` and in `/metrics`
/// (`daas_lb_registry_events_total{kind}`) are exactly `want`, for every
/// kind.
fn assert_events(daemon: &Daemon, want: [u32; 5]) {
    let kinds = ["registered", "updated", "removed", "ignored", "malformed"];
    let got = events(daemon);
    let metrics = daemon.metrics();
    for (kind, want) in kinds.into_iter().zip(want) {
        assert_eq!(
            got.get(kind).copied().unwrap_or_default(),
            u64::from(want),
            "status events[{kind}] in {got:?}"
        );
        let from_metrics = metric(&metrics, "daas_lb_registry_events_total", &[("kind", kind)]);
        assert_eq!(
            from_metrics,
            Some(f64::from(want)),
            "daas_lb_registry_events_total{{kind=\"{kind}\"}}"
        );
    }
}

/// Register, update (endpoint change) and remove events each reach the BPF
/// `backends` map within a second of the checkpoint being appended
/// (measured and printed), the status lists the node's key and stake, and
/// real connects through the VIP follow: to the registered node once it is
/// checked, to the node's new address after the update (the connection
/// held to the old one is closed), to the default server after the removal.
#[test]
fn register_update_and_remove_events_reach_the_bpf_map_within_a_second() {
    let Some(env) = TestEnv::new("sui_events_to_map") else {
        return;
    };
    let chain = Chain::start(CHAIN_ID);
    let (node0, node_a, node_b) = (node("node0", 50), node("nodeA", 51), node("nodeB", 52));
    let mut daemon = start_synced(
        &env,
        &format!("{TOP}{}", chain.yaml("")),
        &api(&[], Some(&node0), HTTP_CHECK),
    );
    chain.wait_subscribed(&daemon);
    wait_connects_reach(&env, &daemon, &node0);

    // Register: the node's endpoint is a bare host; the service's port is used.
    let since = Instant::now();
    chain.fake.register(key(1), info("127.0.0.51", 7, ""));
    let registered = measure(&daemon, since, "registered node in the BPF map", || {
        usable_in_map(&env, node_a.addr)
    });
    let status = daemon.wait_for(REACT, "nodeA listed", |s| listed(s, node_a.addr));
    let server = find_server(&status, node_a.addr).expect("nodeA in status");
    assert_eq!(server.node.as_deref(), Some(key(1).to_string().as_str()));
    assert_eq!(server.stake_mist, Some(7));
    wait_ready(&mut daemon, &node_a);
    wait_connects_reach(&env, &daemon, &node_a);
    let mut held = hold_on(&env, &node_a);

    // Update: the endpoint moves to nodeB (its port is ignored).
    let since = Instant::now();
    chain.fake.update(key(1), info("127.0.0.52:9999", 7, ""));
    let updated = measure(&daemon, since, "updated endpoint in the BPF map", || {
        usable_in_map(&env, node_b.addr) && !usable_in_map(&env, node_a.addr)
    });
    expect_reset(&mut held, &daemon, "after the endpoint moved away");
    let status = daemon.status();
    assert!(!listed(&status, node_a.addr), "{status:#?}");
    wait_ready(&mut daemon, &node_b);
    wait_connects_reach(&env, &daemon, &node_b);

    // Remove: new connects go to the default server.
    let since = Instant::now();
    chain.fake.remove(key(1));
    let removed = measure(&daemon, since, "removed node gone from the BPF map", || {
        !usable_in_map(&env, node_b.addr)
    });
    wait_connects_reach(&env, &daemon, &node0);

    eprintln!("event -> BPF map: register {registered:?}, update {updated:?}, remove {removed:?}");
    for (what, took) in [
        ("register", registered),
        ("update", updated),
        ("remove", removed),
    ] {
        assert!(
            took < EVENT_TO_MAP,
            "{what} took {took:?} to reach the BPF map"
        );
    }
    assert_events(&daemon, [1, 1, 1, 0, 0]);
}

/// A node with less than `min_stake_mist` is never listed nor selected (new
/// connects keep going to the default server); an update raising its stake
/// makes it a server that takes connections; lowering it again removes it:
/// invalid, and the connection held to it is closed.
#[test]
fn an_under_stake_node_is_never_a_server_until_its_stake_is_raised() {
    let Some(env) = TestEnv::new("sui_stake") else {
        return;
    };
    let chain = Chain::start(CHAIN_ID);
    let (node0, node_a) = (node("node0", 50), node("nodeA", 51));
    let mut daemon = start_synced(
        &env,
        &format!("{TOP}{}", chain.yaml("  min_stake_mist: 1000\n")),
        &api(&[], Some(&node0), HTTP_CHECK),
    );
    chain.wait_subscribed(&daemon);

    chain.fake.register(key(1), info("127.0.0.51", 999, ""));
    daemon.wait_for(REACT, "the registration applied", |s| {
        s.registry
            .as_ref()
            .is_some_and(|r| r.nodes == 1 && r.events.get("registered") == Some(&1))
    });
    // Several check intervals: still never a server.
    for _ in 0..5 {
        let status = daemon.status();
        assert!(find_server(&status, node_a.addr).is_none(), "{status:#?}");
        assert!(!usable_in_map(&env, node_a.addr));
        assert_eq!(connect_backend(&env).as_deref(), Ok("node0"));
        thread::sleep(Duration::from_millis(100));
    }
    let metrics = daemon.metrics();
    assert_eq!(
        metric(
            &metrics,
            "k3s_server_stake_amount",
            &[("server", "127.0.0.51:6443")]
        ),
        None,
        "{metrics}"
    );

    // Exactly the minimum: a server.
    chain.fake.update(key(1), info("127.0.0.51", 1000, ""));
    daemon.wait_for(REACT, "nodeA listed", |s| listed(s, node_a.addr));
    assert!(usable_in_map(&env, node_a.addr));
    wait_ready(&mut daemon, &node_a);
    wait_connects_reach(&env, &daemon, &node_a);
    let metrics = daemon.metrics();
    assert_eq!(
        metric(
            &metrics,
            "k3s_server_stake_amount",
            &[("name", SVC), ("server", "127.0.0.51:6443")]
        ),
        Some(1000.0),
        "{metrics}"
    );
    let mut held = hold_on(&env, &node_a);

    // Below again: removed, its connection closed.
    chain.fake.update(key(1), info("127.0.0.51", 999, ""));
    expect_reset(
        &mut held,
        &daemon,
        "after the stake dropped below the minimum",
    );
    daemon.wait_for(REACT, "nodeA no longer listed", |s| !listed(s, node_a.addr));
    assert!(!usable_in_map(&env, node_a.addr));
    wait_connects_reach(&env, &daemon, &node0);
    assert_events(&daemon, [1, 2, 0, 0, 0]);
}

/// The checkpoint stream is dropped (`end_streams`) and, another time, the
/// full node is unavailable for a while; events appended meanwhile reach no
/// subscriber. After reconnecting, discovery repairs the gap: every event
/// is applied and none twice (exact `daas_lb_registry_events_total{kind}`
/// counts, still exact a while later).
#[test]
fn a_dropped_stream_is_repaired_without_losing_or_repeating_events() {
    let Some(env) = TestEnv::new("sui_reconnect") else {
        return;
    };
    let chain = Chain::start(CHAIN_ID);
    let nodes = [
        node("nodeA", 51),
        node("nodeB", 52),
        node("nodeC", 53),
        node("nodeD", 54),
    ];
    let default_node = node("node0", 50);
    // Known before the daemon starts: the full sync lists it, no event.
    chain.fake.register(key(1), info("127.0.0.51", 10, ""));
    let mut daemon = start_synced(
        &env,
        &format!("{TOP}{}", chain.yaml("")),
        &api(&[], Some(&default_node), HTTP_CHECK),
    );
    daemon.wait_for(REACT, "nodeA listed", |s| listed(s, nodes[0].addr));
    chain.wait_subscribed(&daemon);
    assert_events(&daemon, [0, 0, 0, 0, 0]);

    // The stream ends; three events before the daemon can resubscribe.
    chain.fake.end_streams();
    chain.fake.register(key(2), info("127.0.0.52", 10, ""));
    chain.fake.update(key(1), info("127.0.0.51", 20, ""));
    chain.fake.register(key(3), info("127.0.0.53", 10, ""));
    daemon.wait_for(REACT, "B and C listed, A's stake 20", |s| {
        listed(s, nodes[1].addr)
            && listed(s, nodes[2].addr)
            && find_server(s, nodes[0].addr).and_then(|srv| srv.stake_mist) == Some(20)
    });
    let registry = daemon.status().registry.expect("registry");
    assert!(registry.reconnects >= 1, "{registry:?}");
    assert_events(&daemon, [2, 1, 0, 0, 0]);

    // Unavailable for a while: two more events meanwhile.
    chain.fake.set_unavailable(true);
    chain.fake.remove(key(2));
    chain.fake.register(key(4), info("127.0.0.54", 10, ""));
    thread::sleep(Duration::from_millis(400));
    chain.fake.set_unavailable(false);
    daemon.wait_for(REACT, "B gone, D listed", |s| {
        !listed(s, nodes[1].addr) && listed(s, nodes[3].addr)
    });
    assert_events(&daemon, [3, 1, 1, 0, 0]);

    // Nothing is applied again later (the chain moves on, empty).
    for _ in 0..3 {
        chain.fake.tick();
    }
    let cursor = chain.fake.latest();
    daemon.wait_for(REACT, "cursor at the chain's latest", |s| {
        s.registry.as_ref().and_then(|r| r.cursor) == Some(cursor)
    });
    thread::sleep(Duration::from_millis(300));
    assert_events(&daemon, [3, 1, 1, 0, 0]);
    let status = daemon.status();
    let registry = status.registry.as_ref().expect("registry");
    assert_eq!(registry.nodes, 3, "{registry:?}");
    assert!(registry.last_error.is_none(), "{registry:?}");
    assert_eq!(
        lb_tests::server_addresses(&status, SVC),
        [
            "127.0.0.51:6443",
            "127.0.0.53:6443",
            "127.0.0.54:6443",
            "127.0.0.50:6443"
        ],
    );
}

/// Events whose type names the same struct in another package or another
/// module (with valid BCS) never reach the daemon (the filtered stream
/// leaves them on the node: `ignored` stays 0); our own event type with
/// malformed BCS (garbage, or trailing bytes) is skipped, counted as
/// `malformed` and logged; a valid event after them is applied.
#[test]
fn foreign_events_are_ignored_and_malformed_ones_skipped_and_counted() {
    let Some(env) = TestEnv::new("sui_foreign") else {
        return;
    };
    let chain = Chain::start(CHAIN_ID);
    let (node0, node_a, node_b) = (node("node0", 50), node("nodeA", 51), node("nodeB", 52));
    let daemon_top = format!("{TOP}{}", chain.yaml(""));
    let mut daemon = start_synced(&env, &daemon_top, &api(&[], Some(&node0), HTTP_CHECK));
    chain.wait_subscribed(&daemon);

    let registry = chain.fake.registry();
    let valid = bcs::to_bytes(&NodeRegistered {
        node: key(1),
        info: info("127.0.0.51", 10, ""),
    })
    .expect("BCS");
    let other_package = Address::new([0x77; Address::LENGTH]);
    chain.fake.emit_raw(
        format!("{other_package}::{}::NodeRegistered", registry.module),
        valid.clone(),
    );
    chain.fake.emit_raw(
        format!("{}::other::NodeRegistered", registry.package),
        valid.clone(),
    );
    chain
        .fake
        .emit_raw(registry.type_string("NodeRegistered"), vec![1, 2, 3]);
    let mut trailing = bcs::to_bytes(&NodeRemoved { node: key(1) }).expect("BCS");
    trailing.push(0);
    chain
        .fake
        .emit_raw(registry.type_string("NodeRemoved"), trailing);
    // A valid event after them.
    chain.fake.register(key(2), info("127.0.0.52", 10, ""));

    daemon.wait_for(REACT, "nodeB listed", |s| listed(s, node_b.addr));
    let status = daemon.status();
    assert!(find_server(&status, node_a.addr).is_none(), "{status:#?}");
    assert!(!usable_in_map(&env, node_a.addr));
    assert_eq!(status.registry.as_ref().map(|r| r.nodes), Some(1));
    assert_events(&daemon, [1, 0, 0, 0, 2]);
    assert_eq!(
        chain
            .fake
            .calls()
            .foreign_events_sent
            .load(Ordering::Relaxed),
        0
    );
    let skipped = daemon.wait_log(REACT, "registry event skipped", 2);
    eprintln!("logged:\n{}", skipped.join("\n"));
    assert!(
        skipped.iter().all(|l| l.contains("malformed BCS")),
        "{skipped:?}"
    );
}

/// `sui_sync` checks a discovered node's own full node (a second fake)
/// against the registry's full node: in sync it passes; lagging 20
/// checkpoints (bound 5) or on another chain it fails with the reason
/// naming the bound; back in sync it recovers.
#[test]
fn sui_sync_fails_a_lagging_or_foreign_node_and_recovers_it() {
    let Some(env) = TestEnv::new("sui_sync") else {
        return;
    };
    let chain = Chain::start(CHAIN_ID);
    let own = chain.another(CHAIN_ID);
    for _ in 0..30 {
        chain.fake.tick();
        own.tick();
    }
    let node_a = node("nodeA", 51);
    let check = "{ kind: sui_sync, interval: 300ms, timeout: 300ms, jitter: 0%, max_checkpoint_lag: 5, max_response_time: 250ms }";
    let mut daemon = start_synced(
        &env,
        &format!("{TOP}{}", chain.yaml("")),
        &api(&[], None, check),
    );
    chain
        .fake
        .register(key(1), info("127.0.0.51", 10, &own.url()));
    own.tick();
    let status = wait_ready(&mut daemon, &node_a);
    let server = find_server(&status, node_a.addr).expect("nodeA");
    assert_eq!(server.sui_rpc.as_deref(), Some(own.url().as_str()));
    eprintln!("in sync: {:?}", server.reason);
    wait_connects_reach(&env, &daemon, &node_a);

    own.set_lag(20, Duration::ZERO);
    let status = wait_state(&mut daemon, &node_a, &[ServerState::Failed]);
    let server = find_server(&status, node_a.addr).expect("nodeA");
    let reason = server.reason.clone().unwrap_or_default();
    eprintln!("lagging: {reason}");
    assert!(reason.contains("checkpoint lag 20 > 5"), "{reason}");
    daemon.wait_for(REACT, "sync lag 20 in status", |s| {
        find_server(s, node_a.addr).and_then(|srv| srv.sync_lag_blocks) == Some(20)
    });
    let metrics = daemon.metrics();
    assert_eq!(
        metric(
            &metrics,
            "k3s_blockchain_sync_lag_blocks",
            &[("server", "127.0.0.51:6443")]
        ),
        Some(20.0),
        "{metrics}"
    );

    own.set_lag(0, Duration::ZERO);
    wait_ready(&mut daemon, &node_a);

    own.set_chain_id("deadbeef".to_owned());
    let status = wait_state(&mut daemon, &node_a, &[ServerState::Failed]);
    let reason = find_server(&status, node_a.addr)
        .and_then(|s| s.reason.clone())
        .unwrap_or_default();
    eprintln!("other chain: {reason}");
    assert!(
        reason.contains(&format!("chain id deadbeef ≠ reference {CHAIN_ID}")),
        "{reason}"
    );

    own.set_chain_id(CHAIN_ID.to_owned());
    wait_ready(&mut daemon, &node_a);
    wait_connects_reach(&env, &daemon, &node_a);
}

/// The registry's full node is unavailable when the daemon starts: the
/// static and default servers are served anyway (connects through the VIP
/// work), the error is logged and shown in `GET /status` (`registry.synced`
/// false, `last_error` naming the call and the URL); when the node comes
/// back, the registered nodes are added after the static servers.
#[test]
fn an_unreachable_registry_at_start_leaves_the_static_servers_serving() {
    let Some(env) = TestEnv::new("sui_unreachable") else {
        return;
    };
    let chain = Chain::start(CHAIN_ID);
    chain.fake.register(key(2), info("127.0.0.52", 10, ""));
    chain.fake.set_unavailable(true);
    let (node0, node_a, node_b) = (node("node0", 50), node("nodeA", 51), node("nodeB", 52));
    let mut daemon = env.start_with(
        &format!("{TOP}{}", chain.yaml("")),
        &api(&[&node_a], Some(&node0), HTTP_CHECK),
    );
    wait_ready(&mut daemon, &node_a);
    wait_connects_reach(&env, &daemon, &node_a);
    let status = daemon.wait_for(REACT, "registry error in status", |s| {
        s.registry.as_ref().is_some_and(|r| r.last_error.is_some())
    });
    let registry = status.registry.as_ref().expect("registry");
    assert!(!registry.synced, "{registry:?}");
    let error = registry.last_error.clone().unwrap_or_default();
    eprintln!("status registry.last_error: {error}");
    assert!(
        error.contains("UNAVAILABLE") && error.contains(&chain.fake.url()),
        "{error}"
    );
    assert!(!listed(&status, node_b.addr));
    let logged = daemon.wait_log(REACT, "registry discovery failed", 1);
    eprintln!("logged: {}", logged[0]);
    assert!(logged[0].contains("ERROR"), "{}", logged[0]);

    thread::sleep(Duration::from_millis(500));
    assert_eq!(connect_backend(&env).as_deref(), Ok("nodeA"));
    chain.fake.set_unavailable(false);
    let status = daemon.wait_for(Duration::from_secs(10), "nodeB discovered", |s| {
        listed(s, node_b.addr)
    });
    assert_eq!(
        lb_tests::server_addresses(&status, SVC),
        ["127.0.0.51:6443", "127.0.0.52:6443", "127.0.0.50:6443"]
    );
    let status = daemon.wait_for(REACT, "registry synced", |s| {
        s.registry
            .as_ref()
            .is_some_and(|r| r.synced && r.last_error.is_none())
    });
    assert_eq!(status.registry.as_ref().map(|r| r.nodes), Some(1));
    assert_eq!(connect_backend(&env).as_deref(), Ok("nodeA"));
}

/// The stream mode in `GET /status` and `daas_lb_registry_stream{mode}`:
/// `want` is 1, the other modes 0.
fn assert_stream(daemon: &mut Daemon, want: &str) {
    let status = daemon.wait_for(REACT, &format!("stream {want}"), |s| {
        s.registry.as_ref().and_then(|r| r.stream.as_deref()) == Some(want)
    });
    assert!(status.to_table().contains(&format!("stream {want}")));
    let metrics = daemon.metrics();
    for mode in ["filtered", "checkpoints", "polling"] {
        assert_eq!(
            metric(&metrics, "daas_lb_registry_stream", &[("mode", mode)]),
            Some(if mode == want { 1.0 } else { 0.0 }),
            "daas_lb_registry_stream{{mode=\"{mode}\"}} in\n{metrics}"
        );
    }
}

/// With 2,000 foreign events in every checkpoint (another package, like a
/// busy mainnet), a registration reaches the BPF map within a second
/// through the filtered stream, and the fake full node sent no foreign
/// event at all: its counters show only the registry's events crossed the
/// wire.
#[test]
fn registry_events_reach_the_bpf_map_through_the_filtered_stream_under_foreign_noise() {
    let Some(env) = TestEnv::new("sui_filtered_noise") else {
        return;
    };
    let chain = Chain::start(CHAIN_ID);
    chain.fake.set_noise(2_000);
    let (node0, node_a) = (node("node0", 50), node("nodeA", 51));
    let mut daemon = start_synced(
        &env,
        &format!("{TOP}{}", chain.yaml("")),
        &api(&[], Some(&node0), HTTP_CHECK),
    );
    chain.wait_subscribed(&daemon);
    assert_stream(&mut daemon, "filtered");
    for _ in 0..4 {
        chain.fake.tick();
    }
    let since = Instant::now();
    let last = chain.fake.register(key(1), info("127.0.0.51", 7, ""));
    let took = measure(&daemon, since, "registered node in the BPF map", || {
        usable_in_map(&env, node_a.addr)
    });
    eprintln!("event -> BPF map under 2,000 foreign events a checkpoint: {took:?}");
    assert!(took < EVENT_TO_MAP, "{took:?}");
    daemon.wait_for(REACT, "cursor at the registration", |s| {
        s.registry.as_ref().and_then(|r| r.cursor) >= Some(last)
    });
    let calls = chain.fake.calls();
    let (events, foreign) = (
        calls.events_sent.load(Ordering::Relaxed),
        calls.foreign_events_sent.load(Ordering::Relaxed),
    );
    eprintln!(
        "fake sent {} messages, {} bytes, {events} events ({foreign} foreign) for 5 checkpoints of 2,000 foreign events",
        calls.messages_sent.load(Ordering::Relaxed),
        calls.bytes_sent.load(Ordering::Relaxed)
    );
    assert_eq!((events, foreign), (1, 0));
    assert_events(&daemon, [1, 0, 0, 0, 0]);
}

/// The filtered stream is dropped and three events land meanwhile: after
/// reconnecting, discovery replays them with `ListEvents` (the fake saw
/// the calls; every event applied exactly once, still once a while later),
/// without reading a single checkpoint.
#[test]
fn a_dropped_filtered_stream_is_repaired_with_list_events() {
    let Some(env) = TestEnv::new("sui_filtered_gap") else {
        return;
    };
    let chain = Chain::start(CHAIN_ID);
    chain.fake.set_noise(100);
    let nodes = [node("nodeA", 51), node("nodeB", 52), node("nodeC", 53)];
    let default_node = node("node0", 50);
    let mut daemon = start_synced(
        &env,
        &format!("{TOP}{}", chain.yaml("")),
        &api(&[], Some(&default_node), HTTP_CHECK),
    );
    chain.wait_subscribed(&daemon);
    assert_stream(&mut daemon, "filtered");
    let lists_before = chain.fake.calls().list_events.load(Ordering::Relaxed);

    chain.fake.end_streams();
    chain.fake.register(key(1), info("127.0.0.51", 10, ""));
    chain.fake.register(key(2), info("127.0.0.52", 10, ""));
    chain.fake.update(key(1), info("127.0.0.53", 10, ""));
    daemon.wait_for(REACT, "B and C listed, A moved", |s| {
        listed(s, nodes[1].addr) && listed(s, nodes[2].addr) && !listed(s, nodes[0].addr)
    });
    let registry = daemon.status().registry.expect("registry");
    assert!(registry.reconnects >= 1, "{registry:?}");
    let calls = chain.fake.calls();
    assert!(
        calls.list_events.load(Ordering::Relaxed) > lists_before,
        "the gap was replayed with ListEvents"
    );
    assert_eq!(calls.checkpoints_by_sequence.load(Ordering::Relaxed), 0);
    assert_events(&daemon, [2, 1, 0, 0, 0]);

    for _ in 0..3 {
        chain.fake.tick();
    }
    let cursor = chain.fake.latest();
    daemon.wait_for(REACT, "cursor at the chain's latest", |s| {
        s.registry.as_ref().and_then(|r| r.cursor) == Some(cursor)
    });
    thread::sleep(Duration::from_millis(300));
    assert_events(&daemon, [2, 1, 0, 0, 0]);
    assert_eq!(
        chain
            .fake
            .calls()
            .foreign_events_sent
            .load(Ordering::Relaxed),
        0
    );
}

/// A full node that answers `UNIMPLEMENTED` to `SubscribeEvents` is
/// followed through every checkpoint: one warning names the node and the
/// reason, the status and `daas_lb_registry_stream` say `checkpoints`, and
/// registrations still reach the BPF map; foreign events now arrive and
/// are counted as ignored.
#[test]
fn a_node_without_filtered_streams_falls_back_to_checkpoints() {
    let Some(env) = TestEnv::new("sui_filtered_fallback") else {
        return;
    };
    let chain = Chain::start(CHAIN_ID);
    chain.fake.set_filtered_streams(false);
    let (node0, node_a) = (node("node0", 50), node("nodeA", 51));
    let mut daemon = start_synced(
        &env,
        &format!("{TOP}{}", chain.yaml("")),
        &api(&[], Some(&node0), HTTP_CHECK),
    );
    chain.wait_subscribed(&daemon);
    assert_stream(&mut daemon, "checkpoints");
    let warned = daemon.wait_log(REACT, "does not serve filtered event streams", 1);
    eprintln!("logged: {}", warned[0]);
    assert!(
        warned[0].contains("WARN")
            && warned[0].contains(&chain.fake.url())
            && warned[0].contains("UNIMPLEMENTED"),
        "{}",
        warned[0]
    );

    let other_package = Address::new([0x77; Address::LENGTH]);
    let valid = bcs::to_bytes(&NodeRegistered {
        node: key(9),
        info: info("127.0.0.59", 10, ""),
    })
    .expect("BCS");
    chain.fake.emit_raw(
        format!(
            "{other_package}::{}::NodeRegistered",
            chain.fake.registry().module
        ),
        valid,
    );
    let since = Instant::now();
    chain.fake.register(key(1), info("127.0.0.51", 7, ""));
    let took = measure(&daemon, since, "registered node in the BPF map", || {
        usable_in_map(&env, node_a.addr)
    });
    eprintln!("event -> BPF map through the checkpoint stream: {took:?}");
    assert_events(&daemon, [1, 0, 0, 1, 0]);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        daemon.log_count("does not serve filtered event streams"),
        1,
        "one warning"
    );
}
