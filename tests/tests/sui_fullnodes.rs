//! Sui full nodes as servers, end to end: the real `daas-lb run` with
//! in-process fake Sui full nodes
//! ([`lb_userspace::demo::fake_node::FakeChain`], real `sui.rpc.v2` gRPC on
//! `127.0.0.1:<ephemeral>` in the test's network namespace).
//!
//! - A pool of three full nodes as configured servers, no `chain` block:
//!   `sui_sync` asks each at its own address and compares it with the
//!   others; a member that lags fails with a reason naming the pool's
//!   highest member, the selected one lagging fails over to an in-sync one,
//!   and a member that catches up comes back.
//! - `discovery.max_servers`: a registry with more eligible nodes than the
//!   cap keeps the daemon running with the highest stakes as servers; the
//!   rest are counted in status and `daas_lb_discovered_servers_capped`, a
//!   stake raised changes who is in, and when the registry shrinks the
//!   left-out nodes come back.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use aya::maps::{Array, Map, MapData};
use lb_common::{BACKEND_DOWN, Backend, ip_from_bytes};
use lb_tests::{Daemon, Node, SuiChain, TestEnv, metric, service, service_yaml};
use lb_userspace::{
    api::status::{ServerStatus, Status},
    chain::registry,
    demo::fake_node::FakeChain,
    policy::state_machine::ServerState,
};
use sui_sdk_types::Address;

/// The service every test uses.
const SVC: &str = "fullnodes";
/// Its VIP.
const VIP: &str = "127.0.0.1:6444";
/// The fake chains' id.
const CHAIN_ID: &str = "4c78adac";
/// The bound of the waits (a few check intervals, the pool answers' reuse
/// of 1 s, and slack).
const REACT: Duration = Duration::from_secs(6);
/// Top-level config lines.
const TOP: &str = "connection_poll_interval: 100ms\n";
/// The service port of the registry's nodes (`discovery.port`).
const PORT: u16 = 6443;

fn find_server(status: &Status, addr: SocketAddr) -> Option<&ServerStatus> {
    service(status, SVC)
        .servers
        .iter()
        .find(|s| s.address == addr.to_string())
}

/// Waits until the server at `addr` is in one of `states`.
fn wait_state(daemon: &mut Daemon, addr: SocketAddr, states: &[ServerState]) -> Status {
    daemon.wait_for(REACT, &format!("{addr} in {states:?}"), |s| {
        find_server(s, addr).is_some_and(|srv| states.contains(&srv.state))
    })
}

const READY: &[ServerState] = &[ServerState::Preferred, ServerState::Active];

/// The reason of the last check of the server at `addr`.
fn reason(status: &Status, addr: SocketAddr) -> String {
    find_server(status, addr)
        .and_then(|s| s.last_check.as_ref())
        .map(|check| check.reason.clone())
        .unwrap_or_default()
}

/// Three full nodes as the static servers of a service without a `chain`
/// block: all in sync, all pass and one is selected; another lagging 20
/// checkpoints behind the others (bound 5) fails its check (unhealthy) with
/// the reason and lag in status and metrics while the selection stays; then the selected one
/// lags too and new connections fail over to the one still in sync;
/// caught up, they pass again.
#[test]
fn a_pool_of_full_nodes_fails_over_from_the_one_that_lags() {
    let Some(env) = TestEnv::new("sui_pool") else {
        return;
    };
    let chain = SuiChain::start(CHAIN_ID);
    let others = [chain.another(CHAIN_ID), chain.another(CHAIN_ID)];
    let fakes = [&chain.fake, &others[0], &others[1]];
    for _ in 0..30 {
        for fake in fakes {
            fake.tick();
        }
    }
    let servers = fakes.map(FakeChain::addr);
    // No chain block: the pool is the reference. A generous sync age: the
    // fakes only move when the test ticks them.
    let check = "{ kind: sui_sync, interval: 300ms, timeout: 300ms, jitter: 0%, max_checkpoint_lag: 5, max_sync_age: 1h, max_response_time: 250ms }";
    let mut daemon = env.start_with(TOP, &service_yaml(SVC, VIP, &servers, None, check));
    let status = daemon.wait_for(REACT, "all three pass, one selected", |s| {
        servers.iter().all(|addr| {
            find_server(s, *addr).is_some_and(|srv| {
                srv.state >= ServerState::Recovering && srv.sync_lag_blocks == Some(0)
            })
        }) && service(s, SVC).selected.is_some()
    });
    let selected = service(&status, SVC).selected.clone().unwrap_or_default();
    let first = servers
        .iter()
        .position(|addr| addr.to_string() == selected)
        .expect("a pool member is selected");
    let (spare, laggard) = ((first + 1) % 3, (first + 2) % 3);
    let in_sync = reason(&status, servers[spare]);
    eprintln!("in sync: {in_sync}");
    assert!(
        in_sync.starts_with("sui_sync: checkpoint 30 (lag 0 ≤ 5 behind "),
        "{in_sync}"
    );

    // A member that is not selected falls behind its peers.
    fakes[laggard].set_lag(20, Duration::ZERO);
    let status = daemon.wait_for(REACT, "the laggard fails its check", |s| {
        find_server(s, servers[laggard])
            .is_some_and(|srv| !srv.healthy && srv.sync_lag_blocks == Some(20))
    });
    let lagging = reason(&status, servers[laggard]);
    eprintln!("lagging: {lagging}");
    assert!(
        lagging.starts_with(
            "sui_sync: checkpoint lag 20 > 5 behind the highest pool member (http://127.0.0.1:"
        ),
        "{lagging}"
    );
    let metrics = daemon.metrics();
    assert_eq!(
        metric(
            &metrics,
            "k3s_blockchain_sync_lag_blocks",
            &[("name", SVC), ("server", &servers[laggard].to_string())]
        ),
        Some(20.0),
        "{metrics}"
    );
    // The others still pass; the selection stays.
    let status = daemon.status();
    for index in [first, spare] {
        let server = find_server(&status, servers[index]).expect("listed");
        assert!(server.healthy, "{server:?}");
    }
    assert_eq!(
        service(&status, SVC).selected.as_deref(),
        Some(selected.as_str())
    );

    // The selected one falls behind: new connections go to the spare.
    fakes[first].set_lag(20, Duration::ZERO);
    let status = daemon.wait_for(REACT, "failed over to the spare", |s| {
        service(s, SVC).selected == Some(servers[spare].to_string())
    });
    let server = find_server(&status, servers[first]).expect("listed");
    assert!(!server.healthy, "{server:?}");
    let why = reason(&status, servers[first]);
    eprintln!("selected lagging: {why}");
    assert!(
        why.contains("checkpoint lag 20 > 5 behind the highest pool member"),
        "{why}"
    );

    // Caught up: both come back.
    for index in [first, laggard] {
        fakes[index].set_lag(0, Duration::ZERO);
    }
    for index in [first, laggard] {
        daemon.wait_for(REACT, "caught up and passing", |s| {
            find_server(s, servers[index])
                .is_some_and(|srv| srv.healthy && srv.sync_lag_blocks == Some(0))
        });
    }
}

/// A registry key (node address) ending in `byte`.
fn key(byte: u8) -> Address {
    let mut bytes = [0x5a; Address::LENGTH];
    bytes[Address::LENGTH - 1] = byte;
    Address::new(bytes)
}

/// A registry node serving at `endpoint` with `stake` MIST.
fn info(endpoint: &str, stake: u64) -> registry::Node {
    registry::Node {
        operator: key(0xee),
        endpoint: endpoint.to_owned(),
        stake,
        sui_rpc: String::new(),
        nautilus_url: String::new(),
        enclave_id: Address::ZERO,
    }
}

/// The discovered servers' addresses in status (not invalid), sorted.
fn listed(status: &Status) -> Vec<String> {
    let mut listed: Vec<String> = service(status, SVC)
        .servers
        .iter()
        .filter(|s| s.state != ServerState::Invalid)
        .map(|s| s.address.clone())
        .collect();
    listed.sort();
    listed
}

/// Whether `addr` has a usable slot (not `BACKEND_DOWN`) in the pinned
/// BPF `backends` map.
fn usable_in_map(env: &TestEnv, addr: SocketAddr) -> bool {
    let data = MapData::from_pin(env.pins.path().join("backends")).expect("open pinned backends");
    let map = Map::from_map_data(data).expect("backends map");
    let array: Array<_, Backend> = Array::try_from(map).expect("backends is an array");
    array.iter().map(|b| b.expect("read backends")).any(|b| {
        b.family != 0
            && SocketAddr::new(ip_from_bytes(b.addr, b.family), b.port) == addr
            && b.flags & BACKEND_DOWN == 0
    })
}

/// Asserts which of `nodes` (1-based) are usable in the BPF map.
fn assert_in_map(env: &TestEnv, nodes: &[Node], usable: &[usize]) {
    for (index, node) in nodes.iter().enumerate() {
        assert_eq!(
            usable_in_map(env, node.addr),
            usable.contains(&(index + 1)),
            "node{} in the BPF map",
            index + 1
        );
    }
}

/// `daas_lb_discovered_servers_capped{name="fullnodes"}`.
fn capped_metric(daemon: &Daemon) -> Option<f64> {
    metric(
        &daemon.metrics(),
        "daas_lb_discovered_servers_capped",
        &[("name", SVC)],
    )
}

/// Four registered nodes, `max_servers: 2`: the daemon runs with the two
/// highest stakes as servers, 2 left out in status and the metric, one
/// warning logged; a stake raised above a kept node's swaps them (still one
/// warning); a kept node removed lets the best left-out one back in; at
/// the cap nothing is left out (one `info`).
#[test]
fn discovered_servers_beyond_max_servers_are_left_out_by_stake() {
    let Some(env) = TestEnv::new("sui_cap") else {
        return;
    };
    let chain = SuiChain::start(CHAIN_ID);
    let nodes: Vec<Node> = (1..=4u8)
        .map(|i| Node::start(&format!("node{i}"), Ipv4Addr::new(127, 0, 0, 50 + i), PORT))
        .collect();
    let addr = |i: usize| nodes[i - 1].addr.to_string();
    for (i, stake) in [(1, 10), (2, 40), (3, 30), (4, 20)] {
        chain
            .fake
            .register(key(i), info(&format!("127.0.0.{}", 50 + i), stake));
    }
    let check = "{ kind: tcp, interval: 150ms, timeout: 150ms, jitter: 0% }";
    let mut services = service_yaml(SVC, VIP, &[], None, check);
    let _ = writeln!(
        services,
        "    discovery: {{ source: sui, port: {PORT}, max_servers: 2 }}"
    );
    let mut daemon = env.start_with(&format!("{TOP}{}", chain.yaml("")), &services);
    let status = daemon.wait_for(REACT, "the two highest stakes listed", |s| {
        listed(s) == [addr(2), addr(3)]
    });
    assert_eq!(service(&status, SVC).discovered_capped, Some(2));
    assert_eq!(capped_metric(&daemon), Some(2.0));
    let warned = daemon.wait_log(REACT, "more registry nodes than discovery.max_servers", 1);
    eprintln!("logged: {}", warned[0]);
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    for i in [2, 3] {
        wait_state(&mut daemon, nodes[i - 1].addr, READY);
    }
    assert_in_map(&env, &nodes, &[2, 3]);

    // Node 1's stake rises above node 3's: it takes node 3's place.
    chain.fake.update(key(1), info("127.0.0.51", 35));
    daemon.wait_for(REACT, "node 1 in, node 3 out", |s| {
        listed(s) == [addr(1), addr(2)]
    });
    wait_state(&mut daemon, nodes[0].addr, READY);
    assert_in_map(&env, &nodes, &[1, 2]);
    assert_eq!(service(&daemon.status(), SVC).discovered_capped, Some(2));
    assert_eq!(
        daemon.log_count("more registry nodes than discovery.max_servers"),
        1,
        "one warning, not one per event"
    );

    // A kept node leaves: the best left-out node (3) comes back, node 4
    // is still left out.
    chain.fake.remove(key(2));
    let status = daemon.wait_for(REACT, "nodes 1 and 3 listed", |s| {
        listed(s) == [addr(1), addr(3)]
    });
    assert_eq!(service(&status, SVC).discovered_capped, Some(1));
    // The registry shrinks to the cap: nothing is left out any more.
    chain.fake.remove(key(4));
    daemon.wait_for(REACT, "nothing left out", |s| {
        service(s, SVC).discovered_capped == Some(0)
    });
    assert_eq!(listed(&daemon.status()), [addr(1), addr(3)]);
    daemon.wait_log(REACT, "within discovery.max_servers again", 1);
    assert_eq!(capped_metric(&daemon), Some(0.0));
    assert_eq!(
        daemon.log_count("more registry nodes than discovery.max_servers"),
        1
    );
    wait_state(&mut daemon, nodes[2].addr, READY);
    assert_in_map(&env, &nodes, &[1, 3]);
}
