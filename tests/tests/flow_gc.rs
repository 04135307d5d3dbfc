//! The XDP flow lifecycle in userspace, end to end: the real `daas-lb`
//! runs in the node namespace of a [`Topology`] with an `xdp` block, and
//! the test writes flows straight into its pinned `flows` map, each with a
//! chosen `last_seen` (on `CLOCK_MONOTONIC_COARSE`, the kernel programs'
//! clock) and FIN/RST bits, as the kernel programs would have left them.
//!
//! Checked: the daemon's flow collector (`flow_gc_interval: 1s`) removes
//! exactly the expired flows and orphaned halves, both entries of a pair
//! together, keeps the live ones, and counts the removals by reason in its
//! metrics and status; a route change in the node namespace moves
//! `xdp_config`'s `hop_gen` within a second; `XDP_DROP_ORPHANS` follows
//! whether `snat_ports` and the namespace's `ip_local_port_range` overlap,
//! and whether a socket of the node listens on a SNAT port.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use lb_common::{
    AF_INET, FLOW_FIN, FLOW_REPLY, FLOW_RST, FlowKey, FlowValue, PROTO_TCP, PROTO_UDP,
    XDP_DROP_ORPHANS, XdpConfig, flow_stat, ip_to_bytes,
};
use lb_tests::{
    Daemon, PinDir, TcpBackend, TempDir, TestCgroup, metric, privileged,
    topology::{NsGuard, Topology},
    write_config,
};

const VIP: &str = "10.96.0.10:80";
const CHECK: &str = "{ kind: tcp, interval: 200ms, timeout: 200ms, jitter: 0% }";
/// Timeouts short enough to observe, long enough that a fresh flow outlives
/// the test (which ends within a few seconds of writing its flows).
const TIMEOUTS: &str = "{ tcp: 40s, tcp_closing: 2s, tcp_unreplied: 20s, udp: 30s }";
const SECOND: u64 = 1_000_000_000;

/// One test's world: topology (dropped last), cgroup, pins, temp dir, the
/// daemon (dropped first), and a TCP backend for the one service.
struct World {
    daemon: Option<Daemon>,
    _backend: TcpBackend,
    tmp: TempDir,
    pins: PinDir,
    cgroup: TestCgroup,
    _in_node: NsGuard,
    topo: Topology,
}

impl World {
    fn new(test: &str) -> Option<Self> {
        if !privileged(test) {
            return None;
        }
        let topo = Topology::new(1);
        let backend = {
            let b1 = topo.backend("b1");
            let _inside = topo.enter(&b1.ns);
            TcpBackend::bind("b1", SocketAddr::new(b1.v4.into(), 8080))
        };
        Some(Self {
            daemon: None,
            _backend: backend,
            tmp: TempDir::new(),
            pins: PinDir::new(),
            cgroup: TestCgroup::new(),
            _in_node: topo.enter(&topo.node),
            topo,
        })
    }

    /// Starts the daemon with an `xdp` block on every node device
    /// (`snat_ports` as given) and one remote service.
    fn start(&mut self, snat_ports: &str) -> &mut Daemon {
        let config = self.write_config(snat_ports, true);
        let daemon = self.topo.spawn_daemon(&self.tmp, &config);
        let daemon = self.daemon.insert(daemon);
        daemon.wait_checked();
        daemon
    }

    /// Writes the configuration: an `xdp` block on every node device
    /// (`snat_ports` as given) and one service, `remote` or not.
    fn write_config(&self, snat_ports: &str, remote: bool) -> String {
        let interfaces = self.topo.node_interfaces().join(", ");
        let backend = SocketAddr::new(self.topo.backend("b1").v4.into(), 8080);
        let top = format!(
            "xdp:\n  interfaces: [{interfaces}]\n  mode: skb\n  snat_ports: {snat_ports}\n  flow_timeouts: {TIMEOUTS}\n  flow_gc_interval: 1s\n"
        );
        let services = format!(
            "  - name: web\n    vip: \"{VIP}\"\n    protocol: tcp\n    servers: [\"{backend}\"]\n    remote: {remote}\n    health_check: {CHECK}\n"
        );
        write_config(&self.tmp, &self.pins, &self.cgroup, &top, &services)
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("daemon started")
    }

    /// The pinned `flows` map (a handle of the test's own).
    fn flows(&self) -> BpfHashMap<MapData, FlowKey, FlowValue> {
        let data = MapData::from_pin(self.pins.path().join("flows")).expect("open pinned flows");
        BpfHashMap::try_from(Map::from_map_data(data).expect("flows map"))
            .expect("flows is a hash map")
    }

    /// The pinned `flow_stats` map (a handle of the test's own).
    fn flow_stats(&self) -> PerCpuArray<MapData, u64> {
        let data =
            MapData::from_pin(self.pins.path().join("flow_stats")).expect("open pinned flow_stats");
        PerCpuArray::try_from(Map::from_map_data(data).expect("flow_stats map"))
            .expect("flow_stats is a per-CPU array")
    }

    /// `flow_stats` counter `index`, summed over CPUs.
    fn flow_stat(&self, index: u32) -> u64 {
        self.flow_stats()
            .get(&index, 0)
            .expect("read flow_stats")
            .iter()
            .sum()
    }

    /// Sets `flow_stats`' created count to `total` (CPU 0's slot), as if
    /// the kernel programs had created that many entries.
    fn set_created(&self, total: u64) {
        let mut stats = self.flow_stats();
        let mut values = vec![0u64; nr_cpus().expect("CPU count")];
        values[0] = total;
        stats
            .set(
                flow_stat::CREATED,
                PerCpuValues::try_from(values).expect("per-CPU values"),
                0,
            )
            .expect("write flow_stats");
    }

    /// `xdp_config[0]` as the daemon wrote it.
    fn xdp_config(&self) -> XdpConfig {
        let data =
            MapData::from_pin(self.pins.path().join("xdp_config")).expect("open pinned xdp_config");
        let array: Array<MapData, XdpConfig> =
            Array::try_from(Map::from_map_data(data).expect("xdp_config map"))
                .expect("xdp_config is an array");
        array.get(&0, 0).expect("xdp_config[0]")
    }

    fn diag(&self) -> String {
        self.daemon.as_ref().map_or_else(String::new, |d| {
            let log = d.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            format!("daemon log (newest first):\n{}", tail.join("\n"))
        })
    }
}

/// `CLOCK_MONOTONIC_COARSE` now, in ns (what `last_seen` is stamped with).
fn coarse_now() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a live, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE)");
    now.tv_sec as u64 * SECOND + now.tv_nsec as u64
}

/// A synthetic flow: client `10.10.9.<n>:<40000+n>` → the VIP, pinned to
/// a documentation-range backend, SNAT port `62000+n`.
struct Synthetic {
    name: &'static str,
    forward: (FlowKey, FlowValue),
    reply: (FlowKey, FlowValue),
}

fn addr(ip: [u8; 4]) -> [u8; 16] {
    ip_to_bytes(IpAddr::V4(Ipv4Addr::from(ip))).0
}

fn synthetic(name: &'static str, n: u8, proto: u8) -> Synthetic {
    let client = addr([10, 10, 9, n]);
    let vip = addr([10, 96, 0, 10]);
    let backend = addr([192, 0, 2, 7]);
    let snat = addr([198, 51, 100, 1]);
    let (client_port, vip_port, backend_port) = (40_000 + u16::from(n), 80, 8080);
    let snat_port = 62_000 + u16::from(n);
    let key = |src, dst, src_port, dst_port| FlowKey {
        src,
        dst,
        src_port,
        dst_port,
        proto,
        family: AF_INET,
        pad: [0; 2],
    };
    let value = |src, dst, src_port, dst_port, flags| FlowValue {
        src,
        dst,
        src_port,
        dst_port,
        backend_id: 1,
        service_id: 0,
        flags,
        ..FlowValue::default()
    };
    Synthetic {
        name,
        forward: (
            key(client, vip, client_port, vip_port),
            value(snat, backend, snat_port, backend_port, 0),
        ),
        reply: (
            key(backend, snat, backend_port, snat_port),
            value(vip, client, vip_port, client_port, FLOW_REPLY),
        ),
    }
}

impl Synthetic {
    /// Sets both entries' `last_seen` (0: never) and direction flags.
    fn stamped(mut self, forward: (u64, u32), reply: (u64, u32)) -> Self {
        self.forward.1.last_seen = forward.0;
        self.forward.1.flags = forward.1;
        self.reply.1.last_seen = reply.0;
        self.reply.1.flags = FLOW_REPLY | reply.1;
        self
    }
}

/// Sample `name` with `labels` now (gauge or counter; panics if absent).
fn sample(world: &mut World, name: &str, labels: &[(&str, &str)]) -> u64 {
    world.daemon().counter(name, labels)
}

#[test]
fn the_flow_collector_removes_exactly_the_expired_flows_and_orphans() {
    let Some(mut world) =
        World::new("the_flow_collector_removes_exactly_the_expired_flows_and_orphans")
    else {
        return;
    };
    world.start("61000-65535");
    let now = coarse_now();
    let old = now.saturating_sub(100 * SECOND);
    let fresh = now;
    // (flow, whether it must go, what it is counted as)
    let cases: Vec<(Synthetic, Option<&str>)> = vec![
        // Expired pairs, one per reason.
        (
            synthetic("rst, idle past tcp_closing", 1, PROTO_TCP)
                .stamped((old, FLOW_RST), (old, 0)),
            Some("tcp_closed"),
        ),
        (
            synthetic("fin both ways, idle past tcp_closing", 2, PROTO_TCP)
                .stamped((old, FLOW_FIN), (old, FLOW_FIN)),
            Some("tcp_closed"),
        ),
        (
            synthetic("established, idle past tcp", 3, PROTO_TCP).stamped((old, 0), (old, 0)),
            Some("tcp_idle"),
        ),
        (
            synthetic("never replied, past tcp_unreplied", 4, PROTO_TCP).stamped((old, 0), (0, 0)),
            Some("tcp_unreplied"),
        ),
        (
            synthetic("udp, idle past udp", 5, PROTO_UDP).stamped((old, 0), (old, 0)),
            Some("udp_idle"),
        ),
        // Live pairs: fresh, or old on one side only.
        (
            synthetic("established, forward fresh", 11, PROTO_TCP).stamped((fresh, 0), (old, 0)),
            None,
        ),
        (
            synthetic("established, reply fresh", 12, PROTO_TCP).stamped((old, 0), (fresh, 0)),
            None,
        ),
        (
            synthetic("half closed (one FIN), fresh", 13, PROTO_TCP)
                .stamped((fresh, FLOW_FIN), (fresh, 0)),
            None,
        ),
        (
            synthetic("not replied yet, fresh", 14, PROTO_TCP).stamped((fresh, 0), (0, 0)),
            None,
        ),
        (
            synthetic("udp, fresh", 15, PROTO_UDP).stamped((fresh, 0), (old, 0)),
            None,
        ),
    ];
    // Orphans: a fresh forward entry alone, an old closed reply entry alone.
    let lone_forward = synthetic("forward alone", 21, PROTO_TCP).stamped((fresh, 0), (0, 0));
    let lone_reply = synthetic("reply alone", 22, PROTO_TCP).stamped((0, 0), (old, FLOW_RST));

    let removed_before: Vec<u64> = [
        "tcp_closed",
        "tcp_idle",
        "tcp_unreplied",
        "udp_idle",
        "orphan",
    ]
    .iter()
    .map(|reason| {
        sample(
            &mut world,
            "daas_lb_xdp_flows_removed_total",
            &[("reason", reason)],
        )
    })
    .collect();
    assert!(
        removed_before.iter().all(|n| *n == 0),
        "nothing removed before the test's flows: {removed_before:?}\n{}",
        world.diag()
    );
    let mut flows = world.flows();
    for (flow, _) in &cases {
        flows
            .insert(flow.forward.0, flow.forward.1, 0)
            .expect("insert forward");
        flows
            .insert(flow.reply.0, flow.reply.1, 0)
            .expect("insert reply");
    }
    flows
        .insert(lone_forward.forward.0, lone_forward.forward.1, 0)
        .expect("insert lone forward");
    flows
        .insert(lone_reply.reply.0, lone_reply.reply.1, 0)
        .expect("insert lone reply");
    // Counted as the kernel programs would have: the 22 entries written,
    // and 3 more that are gone without anyone removing them (as evicted).
    world.set_created(25);
    let written = Instant::now();

    // Expired pairs go within two intervals (2 s), both entries together.
    let present = |key: &FlowKey| world.flows().get(key, 0).is_ok();
    let expired: Vec<&Synthetic> = cases
        .iter()
        .filter(|(_, reason)| reason.is_some())
        .map(|(flow, _)| flow)
        .collect();
    while expired
        .iter()
        .any(|flow| present(&flow.forward.0) || present(&flow.reply.0))
    {
        assert!(
            written.elapsed() < Duration::from_millis(2_500),
            "expired flows still present after 2.5 s: {:?}\n{}",
            expired
                .iter()
                .filter(|f| present(&f.forward.0) || present(&f.reply.0))
                .map(|f| f.name)
                .collect::<Vec<_>>(),
            world.diag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("expired pairs gone after {:?}", written.elapsed());

    // Orphans go after their grace (forward: two passes) or their own
    // timeout counted from the first pass that found them alone (the reply:
    // RST, tcp_closing 2 s): within 6 s.
    while present(&lone_forward.forward.0) || present(&lone_reply.reply.0) {
        assert!(
            written.elapsed() < Duration::from_secs(6),
            "orphans still present after 6 s: forward {}, reply {}\n{}",
            present(&lone_forward.forward.0),
            present(&lone_reply.reply.0),
            world.diag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("orphans gone after {:?}", written.elapsed());

    // The live flows are all still there, both entries, untouched.
    let flows = world.flows();
    for (flow, reason) in &cases {
        if reason.is_none() {
            for (key, value) in [flow.forward, flow.reply] {
                assert_eq!(
                    flows.get(&key, 0).ok(),
                    Some(value),
                    "live flow {:?} lost an entry\n{}",
                    flow.name,
                    world.diag()
                );
            }
        }
    }

    // Counted by reason, in metrics and status; the last pass saw the five
    // live pairs. Give the pass that removed the orphans time to publish.
    let expected = [
        ("tcp_closed", 2),
        ("tcp_idle", 1),
        ("tcp_unreplied", 1),
        ("udp_idle", 1),
        ("orphan", 2),
    ];
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let counted: Vec<u64> = expected
            .iter()
            .map(|(reason, _)| {
                sample(
                    &mut world,
                    "daas_lb_xdp_flows_removed_total",
                    &[("reason", reason)],
                )
            })
            .collect();
        let forward = sample(
            &mut world,
            "daas_lb_xdp_flow_entries",
            &[("direction", "forward")],
        );
        let reply = sample(
            &mut world,
            "daas_lb_xdp_flow_entries",
            &[("direction", "reply")],
        );
        let want: Vec<u64> = expected.iter().map(|(_, n)| *n).collect();
        if counted == want && forward == 5 && reply == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "removed by reason {counted:?}, want {want:?}; entries forward {forward} reply {reply}, want 5 and 5\n{}",
            world.diag()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        sample(&mut world, "daas_lb_xdp_flow_capacity", &[]),
        u64::from(lb_common::MAX_FLOWS)
    );
    let text = world.daemon().metrics();
    let pass = metric(&text, "daas_lb_xdp_flow_gc_seconds", &[]).expect("pass duration");
    assert!((0.0..1.0).contains(&pass), "last pass took {pass} s");
    let status = world.daemon().status();
    let xdp = status.xdp.expect("xdp in status");
    assert_eq!(xdp.flows.entries, 10);
    assert_eq!(xdp.flows.capacity, u64::from(lb_common::MAX_FLOWS));
    for (reason, n) in expected {
        assert_eq!(
            xdp.flows.removed_by_reason.get(reason).copied(),
            Some(n),
            "{reason}"
        );
    }
    assert!(xdp.flows.passes >= 2, "{:?}", xdp.flows);
    // Evictions by elimination: 25 created − 12 removed by the collector
    // (counted by it in flow_stats) − 10 still there.
    assert_eq!(
        (xdp.flows.created, xdp.flows.evicted),
        (25, 3),
        "{:?}",
        xdp.flows
    );
    assert_eq!(
        sample(&mut world, "daas_lb_xdp_flow_evictions_total", &[]),
        3
    );
    assert_eq!(
        sample(&mut world, "daas_lb_xdp_flow_entries_created_total", &[]),
        25
    );
    world.daemon().stop();
}

#[test]
fn a_route_change_moves_hop_gen_and_orphan_drops_follow_the_port_ranges() {
    let Some(mut world) =
        World::new("a_route_change_moves_hop_gen_and_orphan_drops_follow_the_port_ranges")
    else {
        return;
    };
    // The namespace's ephemeral ports are Linux's default, 32768-60999:
    // apart from the SNAT ports, so orphan replies are dropped.
    world.start("61000-65535");
    let first = world.xdp_config();
    assert_eq!(
        first.flags & XDP_DROP_ORPHANS,
        XDP_DROP_ORPHANS,
        "{first:?}\n{}",
        world.diag()
    );
    assert_eq!((first.port_min, first.port_max), (61000, 65535));
    assert!(first.hop_gen >= 1, "a start moves hop_gen on: {first:?}");

    // Let the neighbour entries the health checks touch settle, then a
    // route change must move hop_gen within a second.
    std::thread::sleep(Duration::from_millis(300));
    let before = world.xdp_config().hop_gen;
    let via = world.topo.backend("b1").v4.to_string();
    world.topo.sh(
        &world.topo.node,
        "ip",
        &["route", "add", "10.99.0.0/24", "via", &via],
    );
    let changed = Instant::now();
    loop {
        let now = world.xdp_config().hop_gen;
        if now != before {
            eprintln!("hop_gen {before} -> {now} after {:?}", changed.elapsed());
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "hop_gen still {before} 1 s after a route was added\n{}",
            world.diag()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The rest of the entry is unchanged by a bump.
    let bumped = world.xdp_config();
    assert_eq!(
        XdpConfig {
            hop_gen: first.hop_gen,
            ..bumped
        },
        first
    );
    // IPv6 routes count too.
    let before = bumped.hop_gen;
    let via6 = world.topo.backend("b1").v6.to_string();
    world.topo.sh(
        &world.topo.node,
        "ip",
        &["-6", "route", "add", "fd00:99::/64", "via", &via6],
    );
    let changed = Instant::now();
    while world.xdp_config().hop_gen == before {
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "hop_gen still {before} 1 s after an IPv6 route was added\n{}",
            world.diag()
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Ephemeral ports overlapping the SNAT ports: no orphan drops after a
    // restart, which reads the range again. The restart follows a SIGKILL,
    // so the pinned xdp_config survives and the new run moves its hop_gen
    // on (next hops the old run's flows cached are not trusted).
    world.topo.sh(
        &world.topo.node,
        "sysctl",
        &["-qw", "net.ipv4.ip_local_port_range=1024 65000"],
    );
    let last = world.xdp_config().hop_gen;
    world.daemon().signal(libc::SIGKILL);
    world.daemon().wait_exit(Duration::from_secs(10));
    world.daemon().relaunch();
    world.daemon().wait_checked();
    let after = world.xdp_config();
    assert_eq!(
        after.flags & XDP_DROP_ORPHANS,
        0,
        "{after:?}\n{}",
        world.diag()
    );
    assert!(
        after.hop_gen > last,
        "a restart moves hop_gen on: {last} -> {}",
        after.hop_gen
    );

    // Ranges apart again, but a TCP listener of the node (this thread is in
    // the node's namespace) on a SNAT port: a remote client's packets to it
    // would look like orphaned replies, so no drops; without it, drops.
    world.topo.sh(
        &world.topo.node,
        "sysctl",
        &["-qw", "net.ipv4.ip_local_port_range=32768 60999"],
    );
    let listener = std::net::TcpListener::bind("0.0.0.0:62000").expect("listen on 62000");
    world.daemon().restart();
    world.daemon().wait_checked();
    let with_listener = world.xdp_config();
    assert_eq!(
        with_listener.flags & XDP_DROP_ORPHANS,
        0,
        "a listener on SNAT port 62000: {with_listener:?}\n{}",
        world.diag()
    );
    drop(listener);
    world.daemon().restart();
    world.daemon().wait_checked();
    let without = world.xdp_config();
    assert_eq!(
        without.flags & XDP_DROP_ORPHANS,
        XDP_DROP_ORPHANS,
        "the listener is gone: {without:?}\n{}",
        world.diag()
    );
    world.daemon().stop();
}

/// The eviction count across restarts that keep one of `flows` and
/// `flow_stats` but not the other (SIGKILL keeps the pins; a pin removed
/// by hand stands for a map an upgrade recreates): entries found in a kept
/// `flows` next to a new `flow_stats` count as created, so they are not
/// taken for evictions later; a new `flows` starts the counts from zero.
#[test]
fn restarts_that_recreate_one_map_keep_the_eviction_count_honest() {
    let Some(mut world) =
        World::new("restarts_that_recreate_one_map_keep_the_eviction_count_honest")
    else {
        return;
    };
    world.start("61000-65535");
    // Two live pairs (fresh, kept by the collector).
    let now = coarse_now();
    let pairs = [
        synthetic("live 1", 31, PROTO_TCP).stamped((now, 0), (now, 0)),
        synthetic("live 2", 32, PROTO_UDP).stamped((now, 0), (now, 0)),
    ];
    let mut flows = world.flows();
    for pair in &pairs {
        for (key, value) in [pair.forward, pair.reply] {
            flows.insert(key, value, 0).expect("insert flow entry");
        }
    }
    // Counts after at least one more pass of a (re)started daemon.
    let counts_after_a_pass = |world: &mut World| {
        let passes = world.daemon().status().xdp.expect("xdp").flows.passes;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let flows = world.daemon().status().xdp.expect("xdp").flows;
            if flows.passes > passes {
                return (flows.created, flows.evicted, flows.entries);
            }
            assert!(
                Instant::now() < deadline,
                "no collector pass within 5 s\n{}",
                world.diag()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let relaunch_without = |world: &mut World, pin: &str| {
        let daemon = world.daemon();
        daemon.signal(libc::SIGKILL);
        daemon.wait_exit(Duration::from_secs(10));
        std::fs::remove_file(world.pins.path().join(pin)).expect("remove the pin");
        let daemon = world.daemon();
        daemon.relaunch();
        daemon.wait_checked();
    };

    relaunch_without(&mut world, "flow_stats");
    assert_eq!(
        counts_after_a_pass(&mut world),
        (4, 0, 4),
        "the four entries already there count as created, none as evicted\n{}",
        world.diag()
    );

    world.set_created(99);
    relaunch_without(&mut world, "flows");
    assert_eq!(
        counts_after_a_pass(&mut world),
        (0, 0, 0),
        "a new flows map: the counts start from zero\n{}",
        world.diag()
    );
    world.daemon().stop();
}

/// Switching a service's `remote` off (a reload) forgets its flows, and the
/// controller counts the entries it removed in `flow_stats`: they are not
/// taken for evictions.
#[test]
fn switching_remote_off_forgets_the_flows_and_counts_them() {
    let Some(mut world) = World::new("switching_remote_off_forgets_the_flows_and_counts_them")
    else {
        return;
    };
    world.start("61000-65535");
    // Three live pairs of service 0 ("web"), as the kernel would have made
    // them (and counted them).
    let now = coarse_now();
    let pairs = [41, 42, 43].map(|n| synthetic("live", n, PROTO_TCP).stamped((now, 0), (now, 0)));
    let mut flows = world.flows();
    for pair in &pairs {
        for (key, value) in [pair.forward, pair.reply] {
            flows.insert(key, value, 0).expect("insert flow entry");
        }
    }
    world.set_created(6);
    world.write_config("61000-65535", false);
    world.daemon().signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while world.flows().keys().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "flows of a service no longer remote still there after 5 s\n{}",
            world.diag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        world.flow_stat(flow_stat::REMOVED_CONTROLLER),
        6,
        "{}",
        world.diag()
    );
    // A collector pass after the removal: nothing evicted.
    let passes = world.daemon().status().xdp.expect("xdp").flows.passes;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let flows = world.daemon().status().xdp.expect("xdp").flows;
        if flows.passes > passes + 1 {
            assert_eq!((flows.created, flows.evicted, flows.entries), (6, 0, 0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no collector pass within 5 s\n{}",
            world.diag()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    world.daemon().stop();
}
