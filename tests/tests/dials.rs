//! Kernel-observed dials: when the server in use dies, the kernel moves the
//! connects that follow to the next server at once, long before a probe
//! would notice (the probes here run every 30 s once a server is up).
//!
//! Every test runs in its own network namespace with two K3s server
//! stand-ins on `127.0.0.11` and `127.0.0.12` (service port 6443) behind
//! the VIP `127.0.0.1:6444`; a client loop in the test cgroup connects
//! through the VIP at a steady pace while the first server dies, by closing
//! its listener (connects get a reset) or by dropping SYNs (an iptables rule
//! in the test's namespace, removed on drop).

use std::{
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{ClientOutcome, Daemon, Node, TestEnv, metric, service_yaml};
use lb_userspace::{api::status::Status, policy::state_machine::ServerState};

/// The service every test uses.
const SVC: &str = "api";
/// Its VIP.
const VIP: &str = "127.0.0.1:6444";
/// Fast checks until a server is up, then one probe every 30 s: only the
/// kernel's view of client dials can react within a test.
const SLOW_CHECK: &str = "{ kind: tcp, timeout: 80ms, jitter: 0%, intervals: { other: 100ms, recovering: 100ms, preferred: 30s, healthy: 30s, active: 30s, failed: 30s } }";
/// How long each client loop runs.
const RUN: Duration = Duration::from_secs(3);
/// When the first server dies, into the run.
const KILL_AT: Duration = Duration::from_millis(700);
/// Time between two client connects (~50 connects/s).
const PACE: Duration = Duration::from_millis(20);

/// One client connect of the loop: when it started (since the loop
/// started) and what it saw.
struct Connect {
    at: Duration,
    outcome: ClientOutcome,
}

impl Connect {
    fn backend(&self) -> Option<&str> {
        let reply = self.outcome.reply.as_deref()?;
        self.outcome
            .ok
            .then(|| reply.split(':').next().unwrap_or_default())
    }
}

/// Two listed servers, node1 first; returns once both are preferred.
struct TwoServers {
    daemon: Daemon,
    node1: Node,
    node2: Node,
    env: TestEnv,
}

impl TwoServers {
    fn start(test: &str) -> Option<Self> {
        let env = TestEnv::new(test)?;
        let node1 = Node::start("node1", "127.0.0.11".parse().unwrap(), 6443);
        let node2 = Node::start("node2", "127.0.0.12".parse().unwrap(), 6443);
        let services = service_yaml(SVC, VIP, &[node1.addr, node2.addr], None, SLOW_CHECK);
        let mut daemon = env.start_with("connection_poll_interval: 100ms\n", &services);
        daemon.wait_for(Duration::from_secs(10), "both servers preferred", |s| {
            s.services[0]
                .servers
                .iter()
                .all(|srv| srv.state == ServerState::Preferred)
        });
        Some(Self {
            daemon,
            node1,
            node2,
            env,
        })
    }

    fn status(&self) -> Status {
        self.daemon.status()
    }
}

/// Connects through the VIP every [`PACE`] for [`RUN`], each from its own
/// client process in the test cgroup (so a connect that waits does not hold
/// up the next); runs `kill` on `victim` at [`KILL_AT`]. Every connect, in
/// start order.
fn storm(env: &TestEnv, victim: &mut Node, kill: impl FnOnce(&mut Node)) -> Vec<Connect> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut kill = Some(kill);
    let mut next = start;
    thread::scope(|scope| {
        while start.elapsed() < RUN {
            if start.elapsed() >= KILL_AT
                && let Some(kill) = kill.take()
            {
                kill(victim);
            }
            let at = start.elapsed();
            let tx = tx.clone();
            let cgroup = &env.cgroup;
            scope.spawn(move || {
                let outcome = cgroup.client(&["tcp", VIP, "ping"]);
                let _ = tx.send(Connect { at, outcome });
            });
            next += PACE;
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    drop(tx);
    let mut connects: Vec<Connect> = rx.into_iter().collect();
    connects.sort_by_key(|c| c.at);
    connects
}

/// The connects that failed, as one line each (for messages).
fn failures(connects: &[Connect]) -> Vec<String> {
    connects
        .iter()
        .filter(|c| !c.outcome.ok)
        .map(|c| {
            format!(
                "{:?}: {:?} after {:?} µs",
                c.at, c.outcome.error, c.outcome.connect_us
            )
        })
        .collect()
}

/// A `daas_lb_dial_failures_total` sample of node1.
fn dial_failures(daemon: &Daemon, node: &Node, reason: &str) -> f64 {
    let server = node.addr.to_string();
    metric(
        &daemon.metrics(),
        "daas_lb_dial_failures_total",
        &[("name", SVC), ("server", &server), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// A closed listener: the first connect to it gets a reset, the kernel
/// marks it suspect, and every later connect goes to node2, while node1's
/// next probe is 30 s away. K3s's proxy would retry that first connect on
/// node2 too; a kernel redirect cannot, so one failed connect (two if two
/// were under way at once) is the cost.
#[test]
fn a_closed_listener_costs_at_most_two_client_connects() {
    let Some(mut w) = TwoServers::start("dials_reset") else {
        return;
    };
    let connects = storm(&w.env, &mut w.node1, Node::stop_service);
    let failed = failures(&connects);
    eprintln!(
        "reset: {} of {} connects failed: {failed:#?}",
        failed.len(),
        connects.len()
    );
    assert!(
        connects.len() >= 50,
        "the client loop made only {} connects",
        connects.len()
    );
    assert!(
        failed.len() <= 2,
        "{} of {} connects failed after node1's listener closed: {failed:#?}\nlog:\n{}",
        failed.len(),
        connects.len(),
        w.daemon.log()
    );
    // Before the kill node1 took them; the last ones went to node2.
    assert!(
        connects
            .iter()
            .filter(|c| c.at + PACE < KILL_AT)
            .all(|c| c.backend() == Some("node1")),
        "before the kill every connect reaches node1"
    );
    let last = connects.last().expect("connects were made");
    assert_eq!(last.backend(), Some("node2"));
    assert!(dial_failures(&w.daemon, &w.node1, "reset") >= 1.0);
    // The state machine followed the kernel: node1 failed, node2 selected.
    let status = w.status();
    let service = &status.services[0];
    let node1 = w.node1.addr.to_string();
    let node2 = w.node2.addr.to_string();
    assert_eq!(service.selected.as_deref(), Some(node2.as_str()));
    assert!(
        service
            .servers
            .iter()
            .any(|s| s.address == node1 && s.state == ServerState::Failed),
        "{service:#?}"
    );
}

/// An iptables rule in the test's namespace that drops the SYNs to one
/// address; deleted on drop.
struct DropSyns(String);

impl DropSyns {
    fn add(node: &Node) -> Self {
        let spec = format!(
            "OUTPUT -p tcp -d {} --dport {} --syn -j DROP",
            node.addr.ip(),
            node.addr.port()
        );
        iptables("-I", &spec);
        Self(spec)
    }
}

impl Drop for DropSyns {
    fn drop(&mut self) {
        iptables("-D", &self.0);
    }
}

fn iptables(action: &str, spec: &str) {
    let mut args = vec![action];
    args.extend(spec.split(' '));
    let out = Command::new("iptables")
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("iptables {args:?}: {e}"));
    assert!(
        out.status.success(),
        "iptables {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SYNs dropped: no reset ever comes, so the kernel notices when a SYN has
/// waited longer than the stall bound (`dial_stall_timeout: auto`: 100 ms
/// over loopback) with no dial to node1 completing; new connects then go to node2, and the connects still
/// waiting for node1 are destroyed (they fail at once instead of waiting
/// for TCP's SYN retries).
#[test]
fn dropped_syns_cost_the_connects_of_one_stall_timeout_and_nobody_waits_long() {
    let Some(mut w) = TwoServers::start("dials_blackhole") else {
        return;
    };
    let mut rule = None;
    let connects = storm(&w.env, &mut w.node1, |node| {
        rule = Some(DropSyns::add(node));
    });
    drop(rule);
    let failed = failures(&connects);
    let longest = connects
        .iter()
        .filter_map(|c| c.outcome.connect_us)
        .max()
        .unwrap_or(0);
    eprintln!(
        "blackhole: {} of {} connects failed, longest connect {longest} µs: {failed:#?}",
        failed.len(),
        connects.len()
    );
    // ~50 connects/s × 100 ms, plus the reaction and slack for a loaded CI.
    assert!(
        failed.len() <= 30,
        "{} of {} connects failed while node1 dropped SYNs: {failed:#?}\nlog:\n{}",
        failed.len(),
        connects.len(),
        w.daemon.log()
    );
    assert!(
        longest <= 1_500_000,
        "a client waited {longest} µs for its connect"
    );
    let last = connects.last().expect("connects were made");
    assert_eq!(last.backend(), Some("node2"));
    assert!(dial_failures(&w.daemon, &w.node1, "stalled") >= 1.0);
    // The connects the controller aborted are its own doing, not resets
    // from node1.
    let resets = dial_failures(&w.daemon, &w.node1, "reset");
    assert!(resets < 0.5, "{resets} resets counted for node1");
}
