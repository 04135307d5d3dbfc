//! Kernel-observed dials under load: the issue's goals at 100 and 1000
//! connects/s, a flapping server, fail-back to a recovered server, and a
//! service whose every server dies.
//!
//! Each test runs in its own network namespace with two [`ByteServer`]s
//! (`127.0.0.11:7000`, `127.0.0.12:7000`; each answers a connection with one
//! byte) behind the VIP `127.0.0.1:6444`. The client is `lb-test-client
//! storm` in the test cgroup: it starts new TCP connects through the VIP at
//! a fixed rate, each waiting at most 3 s for its connect and 4 s for the
//! byte, and reports every one ([`lb_tests::failover`]). The goals are
//! asserted loosely here (CI machines are loaded); `cargo xtask bench
//! failover` measures them.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    Daemon, TestEnv,
    failover::{
        ByteServer, Connect, ConnectResult, KillMode, Outcome, Scenario, StormClient, monotonic_ns,
        run_scenario, sleep_until_ns,
    },
    metric, put_servers, service_yaml,
};
use lb_userspace::{api::status::ServiceStatus, policy::state_machine::ServerState};

/// The service every test uses.
const SVC: &str = "api";
/// Its VIP.
const VIP: &str = "127.0.0.1:6444";
/// Fast checks until a server is up, then one probe every 30 s: only the
/// kernel's view of client dials can react within a test.
const SLOW_CHECK: &str = "{ kind: tcp, timeout: 80ms, jitter: 0%, intervals: { other: 100ms, recovering: 100ms, preferred: 30s, healthy: 30s, active: 30s, failed: 30s } }";
/// A failed server is probed every 300 ms: it comes back within a test.
const RECOVER_CHECK: &str = "{ kind: tcp, timeout: 80ms, jitter: 0%, intervals: { other: 100ms, recovering: 100ms, preferred: 1s, healthy: 1s, active: 30s, failed: 300ms } }";
/// The longest any client connect may wait (the issue's goal).
const LONGEST_WAIT: Duration = Duration::from_millis(1500);

/// Two servers behind the VIP, the first one selected.
struct Rig {
    daemon: Daemon,
    servers: Vec<ByteServer>,
    env: TestEnv,
}

impl Rig {
    /// Starts the servers and the daemon with `check`; with
    /// `default_server` only the first server is listed and the second is
    /// the default. Waits until the first one is selected and every listed
    /// one is preferred.
    fn start(test: &str, check: &str, default_server: bool) -> Option<Self> {
        let env = TestEnv::new(test)?;
        let servers: Vec<ByteServer> = ["127.0.0.11:7000", "127.0.0.12:7000"]
            .iter()
            .map(|a| ByteServer::bind(a.parse().unwrap()).expect("a server binds"))
            .collect();
        let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
        let services = if default_server {
            service_yaml(SVC, VIP, &addrs[..1], Some(addrs[1]), check)
        } else {
            service_yaml(SVC, VIP, &addrs, None, check)
        };
        let mut daemon = env.start_with("connection_poll_interval: 100ms\n", &services);
        let first = addrs[0].to_string();
        daemon.wait_for(
            Duration::from_secs(10),
            "the first server selected, every listed one preferred",
            |s| {
                let service = &s.services[0];
                service.selected.as_deref() == Some(first.as_str())
                    && service
                        .servers
                        .iter()
                        .filter(|srv| !srv.default)
                        .all(|srv| srv.state == ServerState::Preferred)
            },
        );
        Some(Self {
            daemon,
            servers,
            env,
        })
    }

    fn service(&self) -> ServiceStatus {
        self.daemon.status().services.remove(0)
    }

    /// A `daas_lb_dial_failures_total` sample of server `index`.
    fn dial_failures(&self, index: usize, reason: &str) -> f64 {
        let server = self.servers[index].addr.to_string();
        metric(
            &self.daemon.metrics(),
            "daas_lb_dial_failures_total",
            &[("name", SVC), ("server", &server), ("reason", reason)],
        )
        .unwrap_or(0.0)
    }

    /// `daas_lb_dial_reaction_seconds`: (observations, within 5 ms, within
    /// 50 ms, sum in seconds), from one scrape.
    fn reaction(&self) -> (f64, f64, f64, f64) {
        let text = self.daemon.metrics();
        let bucket = |le: &str| {
            metric(&text, "daas_lb_dial_reaction_seconds_bucket", &[("le", le)]).unwrap_or(0.0)
        };
        let sum = metric(&text, "daas_lb_dial_reaction_seconds_sum", &[]).unwrap_or(0.0);
        (bucket("+Inf"), bucket("0.005"), bucket("0.05"), sum)
    }

    /// Starts a 100 connects/s client through the VIP for `duration` and
    /// returns once `after` has passed since its first connect was due.
    fn storm(&self, duration: Duration, after: Duration) -> (Scenario, StormClient) {
        let run = scenario(100, duration, KillMode::Rst);
        let client = StormClient::start(&run, Some(&self.env.cgroup)).expect("the client starts");
        sleep_until_ns(client.start_ns() + u64::try_from(after.as_nanos()).unwrap_or(u64::MAX));
        (run, client)
    }

    /// Waits until server `index`'s dial state (status) is `state`.
    fn wait_dial_state(&mut self, index: usize, state: &str) {
        let address = self.servers[index].addr.to_string();
        self.daemon.wait_for(
            Duration::from_secs(5),
            &format!("{address}'s dial state {state}"),
            |s| {
                s.services[0].servers.iter().any(|srv| {
                    srv.address == address && srv.dial.as_ref().is_some_and(|d| d.state == state)
                })
            },
        );
    }
}

fn scenario(rate: u32, duration: Duration, kill: KillMode) -> Scenario {
    Scenario {
        target: VIP.parse().unwrap(),
        rate,
        duration,
        connect_timeout: Duration::from_secs(3),
        answer_timeout: Duration::from_secs(4),
        kill_after: Duration::from_millis(700),
        kill,
    }
}

/// One line per run for the test's output.
fn describe(what: &str, outcome: &Outcome) -> String {
    format!(
        "{what}: {} of {} failed ({}), longest wait {:?}, {} failed before the kill, client lag {:?}",
        outcome.failed(),
        outcome.total,
        outcome.failure_kinds(),
        outcome.longest_wait,
        outcome.failed_before_kill,
        outcome.max_lag
    )
}

/// Checks the controller's reaction to the failed dials: at least one, every
/// one within 50 ms (the goal is 5 ms at the 99th percentile; the bench
/// measures it, a loaded CI machine may be slower).
fn assert_reaction(rig: &Rig) {
    let (count, fast, bounded, sum) = rig.reaction();
    eprintln!(
        "reaction: {fast} of {count} within 5 ms, {bounded} within 50 ms, mean {:.2} ms",
        sum / count.max(1.0) * 1000.0
    );
    assert!(count >= 1.0, "no reaction to a failed dial was measured");
    assert!(
        (bounded - count).abs() < 0.5,
        "{} of {count} reactions took over 50 ms\n{}",
        count - bounded,
        rig.daemon.log()
    );
}

/// A closed listener at `rate` connects/s: at most two failed connects.
fn closed_listener(test: &str, rate: u32) {
    let Some(mut rig) = Rig::start(test, SLOW_CHECK, false) else {
        return;
    };
    let run = scenario(rate, Duration::from_secs(3), KillMode::Rst);
    let outcome =
        run_scenario(&run, &mut rig.servers, 0, Some(&rig.env.cgroup)).expect("the client runs");
    eprintln!("{}", describe(&format!("rst at {rate}/s"), &outcome));
    assert!(
        outcome.failed() <= 2,
        "{}\nlog:\n{}",
        describe("rst", &outcome),
        rig.daemon.log()
    );
    assert!(
        outcome.longest_wait <= LONGEST_WAIT,
        "{}",
        describe("rst", &outcome)
    );
    // After the kill the second server took the connects (~77 % of them).
    let served = rig.servers[1].served();
    assert!(
        served * 10 >= outcome.total as u64 * 6,
        "the second server answered {served} of {} connects",
        outcome.total
    );
    assert!(rig.dial_failures(0, "reset") >= 1.0);
    // The state machine followed; a probe confirmed the kernel's suspicion.
    let service = rig.service();
    assert_eq!(
        service.selected,
        Some(rig.servers[1].addr.to_string()),
        "{service:#?}"
    );
    rig.wait_dial_state(0, "confirmed");
    assert_reaction(&rig);
    if std::env::var_os("DIALS_LOAD_LOG").is_some() {
        eprintln!("{}", rig.daemon.log());
    }
}

#[test]
fn a_closed_listener_at_100_connects_per_second_costs_at_most_two() {
    closed_listener("dials_load_rst_100", 100);
}

#[test]
fn a_closed_listener_at_1000_connects_per_second_costs_at_most_two() {
    closed_listener("dials_load_rst_1000", 1000);
}

/// Dropped SYNs at `rate` connects/s: nobody waits over 1.5 s, and only
/// the connects of about one stall bound fail.
fn dropped_syns(test: &str, rate: u32, max_failed: usize) {
    let Some(mut rig) = Rig::start(test, SLOW_CHECK, false) else {
        return;
    };
    // `auto` over loopback dials: the 100 ms floor.
    let stall = rig.service().dial_stall_after_ms;
    assert_eq!(stall, Some(100.0), "the stall bound `auto` derived");
    let run = scenario(rate, Duration::from_secs(3), KillMode::Blackhole);
    let outcome =
        run_scenario(&run, &mut rig.servers, 0, Some(&rig.env.cgroup)).expect("the client runs");
    eprintln!("{}", describe(&format!("blackhole at {rate}/s"), &outcome));
    assert!(
        outcome.longest_wait <= LONGEST_WAIT,
        "{}\nlog:\n{}",
        describe("blackhole", &outcome),
        rig.daemon.log()
    );
    assert!(
        outcome.failed() <= max_failed,
        "{}\nlog:\n{}",
        describe("blackhole", &outcome),
        rig.daemon.log()
    );
    assert!(rig.dial_failures(0, "stalled") >= 1.0);
    let service = rig.service();
    assert_eq!(
        service.selected,
        Some(rig.servers[1].addr.to_string()),
        "{service:#?}"
    );
    rig.wait_dial_state(0, "confirmed");
    assert_reaction(&rig);
}

#[test]
fn dropped_syns_at_100_connects_per_second() {
    // The goal: at most 30.
    dropped_syns("dials_load_blackhole_100", 100, 30);
}

#[test]
fn dropped_syns_at_1000_connects_per_second() {
    // ~1000/s × (100 ms bound + reaction): about 100 measured on an idle
    // machine, 200 with another build running; five times the idle figure.
    dropped_syns("dials_load_blackhole_1000", 1000, 500);
}

/// Connects (of `connects`) started at or after `from_ns` that failed.
fn failed_from(connects: &[Connect], from_ns: u64) -> usize {
    connects
        .iter()
        .filter(|c| c.start_ns >= from_ns && c.result != ConnectResult::Ok)
        .count()
}

/// The first server's listener toggles every 300 ms for 20 s under 100
/// connects/s: the service never wedges (nearly every connect succeeds, none
/// waits long), and once the server stays up it is used again: when the
/// second server then dies, the connects move back to it at once.
#[test]
fn a_flapping_server_never_wedges_the_service_and_is_used_again() {
    let Some(mut rig) = Rig::start("dials_load_flapping", RECOVER_CHECK, false) else {
        return;
    };
    let flapping = Duration::from_secs(20);
    let (_, client) = rig.storm(
        flapping + Duration::from_secs(1),
        Duration::from_millis(500),
    );
    let flap_ns = monotonic_ns();
    let until = Instant::now() + flapping;
    let mut toggles = 0;
    while Instant::now() < until {
        if rig.servers[0].is_open() {
            rig.servers[0].close();
        } else {
            rig.servers[0].reopen().expect("the server listens again");
        }
        toggles += 1;
        thread::sleep(Duration::from_millis(300));
    }
    rig.servers[0].reopen().expect("the server listens again");
    let connects = client.finish().expect("the client runs");
    let outcome = Outcome::summarize(&connects, flap_ns);
    eprintln!(
        "{}",
        describe(&format!("flapping ({toggles} toggles)"), &outcome)
    );
    assert!(toggles >= 40, "only {toggles} toggles");
    assert!(
        outcome.failed() <= 10,
        "{}\nlog:\n{}",
        describe("flapping", &outcome),
        rig.daemon.log()
    );
    assert!(
        outcome.longest_wait <= LONGEST_WAIT,
        "{}",
        describe("flapping", &outcome)
    );

    // It stays up now: probes bring it back to preferred and clear the
    // kernel's mark.
    let first = rig.servers[0].addr.to_string();
    rig.daemon.wait_for(
        Duration::from_secs(10),
        "the first server preferred again",
        |s| {
            s.services[0].servers.iter().any(|srv| {
                srv.address == first
                    && srv.state == ServerState::Preferred
                    && srv.dial.as_ref().is_some_and(|d| d.state == "ok")
            })
        },
    );
    let before = rig.servers[0].served();
    let run = scenario(100, Duration::from_secs(2), KillMode::Rst);
    let outcome =
        run_scenario(&run, &mut rig.servers, 1, Some(&rig.env.cgroup)).expect("the client runs");
    eprintln!("{}", describe("second server dies", &outcome));
    assert!(
        outcome.failed() <= 2,
        "{}",
        describe("second server dies", &outcome)
    );
    let took = rig.servers[0].served() - before;
    assert!(
        took >= 100,
        "the first server answered only {took} connects after the second died"
    );
}

/// The only listed server dies under load: connects move to the default
/// server at once; when it comes back, probes make it preferred, the
/// service fails back to it, and the kernel sends new connects to it again
/// (the suspect mark its failure left is cleared).
#[test]
fn fail_back_to_the_recovered_server_under_load() {
    let Some(mut rig) = Rig::start("dials_load_failback", RECOVER_CHECK, true) else {
        return;
    };
    let (run, client) = rig.storm(Duration::from_secs(6), Duration::from_millis(700));
    rig.servers[0].close();
    let kill_ns = monotonic_ns();
    thread::sleep(Duration::from_millis(1500));
    rig.servers[0].reopen().expect("the server listens again");
    let reopened = rig.servers[0].served();
    let connects = client.finish().expect("the client runs");
    let outcome = Outcome::summarize(&connects, kill_ns);
    eprintln!("{}", describe("fail-back", &outcome));
    // One reset at the death; a fail-back closes the default server's
    // connections, which may abort one in flight.
    assert!(
        outcome.failed() <= 4,
        "{}\nlog:\n{}",
        describe("fail-back", &outcome),
        rig.daemon.log()
    );
    let back = rig.servers[0].served() - reopened;
    assert!(
        back >= 100,
        "the recovered server answered only {back} connects\nlog:\n{}",
        rig.daemon.log()
    );
    let service = rig.service();
    assert_eq!(
        service.selected,
        Some(rig.servers[0].addr.to_string()),
        "{service:#?}"
    );
    let first = service
        .servers
        .iter()
        .find(|s| s.address == rig.servers[0].addr.to_string())
        .expect("the first server in status");
    assert_eq!(first.dial.as_ref().map(|d| d.state.as_str()), Some("ok"));
    // The last connects all went to it.
    let (first_before, second_before) = (rig.servers[0].served(), rig.servers[1].served());
    let tail = Scenario {
        duration: Duration::from_millis(400),
        rate: 50,
        ..run
    };
    let connects = StormClient::start(&tail, Some(&rig.env.cgroup))
        .and_then(StormClient::finish)
        .expect("the client runs");
    assert!(connects.iter().all(|c| c.result == ConnectResult::Ok));
    let first_took = rig.servers[0].served() - first_before;
    let second_took = rig.servers[1].served() - second_before;
    assert!(
        first_took >= 20 && second_took < 10,
        "after fail-back: first {first_took}, default {second_took}"
    );
}

/// Both servers die: every candidate is suspect, so the kernel keeps its
/// pick (fail open: connects reach a server and are reset by it, none is
/// refused by the VIP); the state machine fails open too. When one server
/// comes back, connects succeed again. With an empty server list, the VIP
/// refuses connects.
#[test]
fn every_server_dead_fails_open_then_recovers_and_an_empty_list_refuses() {
    let Some(mut rig) = Rig::start("dials_load_all_dead", RECOVER_CHECK, false) else {
        return;
    };
    let (_, client) = rig.storm(Duration::from_secs(5), Duration::from_millis(500));
    rig.servers[0].close();
    rig.servers[1].close();
    let dead_ns = monotonic_ns();
    rig.daemon
        .wait_for(Duration::from_secs(3), "the service fails open", |s| {
            s.services[0].fail_open && s.services[0].selected.is_some()
        });
    let service = rig.service();
    assert_eq!(service.refused, 0, "the VIP refused connects: {service:#?}");
    sleep_until_ns(dead_ns + 2_000_000_000);
    rig.servers[1].reopen().expect("the server listens again");
    let back_ns = monotonic_ns();
    let connects = client.finish().expect("the client runs");
    let outcome = Outcome::summarize(&connects, dead_ns);
    eprintln!("{}", describe("all dead", &outcome));
    // Refused by the servers (fail open), not timed out or aborted.
    assert!(
        outcome.count(ConnectResult::Refused) >= 50,
        "{}",
        describe("all dead", &outcome)
    );
    assert_eq!(
        outcome.failed(),
        outcome.count(ConnectResult::Refused),
        "{}",
        describe("all dead", &outcome)
    );
    assert_eq!(rig.service().refused, 0, "the VIP never refused a connect");
    // A probe finds the server back within ~300 ms; a second later every
    // connect succeeds.
    let late = failed_from(&connects, back_ns + 1_000_000_000);
    assert_eq!(
        late,
        0,
        "{late} connects failed over a second after a server came back\nlog:\n{}",
        rig.daemon.log()
    );

    let (code, body) = put_servers(&rig.daemon.control, SVC, &[]);
    assert_eq!(code, 200, "{body}");
    let refused = rig.env.cgroup.client(&["tcp", VIP, "ping"]);
    assert!(!refused.ok, "a connect to a VIP without servers succeeded");
    assert!(
        rig.service().refused >= 1,
        "the VIP did not count the refusal"
    );
}

/// Established connections through `backend_conns`, summed over every
/// backend slot (`bpftool map dump`).
fn kernel_established(pins: &std::path::Path) -> u64 {
    let dump = lb_tests::bpftool(&[
        "map",
        "dump",
        "pinned",
        &pins.join("backend_conns").display().to_string(),
    ]);
    dump.as_array()
        .expect("bpftool prints an array")
        .iter()
        .filter_map(|entry| {
            entry.get("formatted").map_or(entry, |f| f)["value"]["established"].as_u64()
        })
        .fold(0, u64::wrapping_add)
}

/// `ss` (iproute2, through `sock_diag`): established TCP sockets to `server`.
fn ss_established(server: SocketAddr) -> usize {
    let out = lb_tests::sh(
        "ss",
        &["-Htn", "state", "established", "dst", &server.to_string()],
    );
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

/// A tracked service's connections are counted by the kernel as they open
/// and close (status agrees with `ss` at every step, and destroyed
/// connections are subtracted), while an untracked service's are still
/// counted from the `sock_diag` dump, which no longer covers the tracked one.
#[test]
fn the_kernel_counts_a_tracked_services_connections_exactly() {
    let Some(env) = TestEnv::new("dials_load_counts") else {
        return;
    };
    let tracked = lb_tests::TcpBackend::v4("b1");
    let plain = lb_tests::TcpBackend::v4("b2");
    let check = "{ kind: tcp, interval: 200ms, timeout: 100ms }";
    let mut services = service_yaml(SVC, VIP, &[tracked.addr], None, check);
    services.push_str(&service_yaml(
        "plain",
        "127.0.0.1:6445",
        &[plain.addr],
        None,
        check,
    ));
    services.push_str("    dial_tracking: false\n");
    let mut daemon = env.start_with("connection_poll_interval: 100ms\n", &services);
    daemon.wait_checked();
    let count_is = |daemon: &mut Daemon, name: &str, n: u32| {
        daemon.wait_for(
            Duration::from_secs(5),
            &format!("{name}: {n} connections"),
            |s| {
                s.services
                    .iter()
                    .find(|svc| svc.name == name)
                    .is_some_and(|svc| svc.servers[0].connections == n)
            },
        );
    };
    let mut held: Vec<_> = (0..30).map(|_| env.hold(VIP)).collect();
    let plain_held: Vec<_> = (0..12).map(|_| env.hold("127.0.0.1:6445")).collect();
    count_is(&mut daemon, SVC, 30);
    count_is(&mut daemon, "plain", 12);
    assert_eq!(ss_established(tracked.addr), 30);
    assert_eq!(kernel_established(env.pins.path()), 30);
    // The dump saw only the untracked service's sockets.
    let dumped = metric(&daemon.metrics(), "daas_lb_connection_poll_sockets", &[]);
    assert_eq!(dumped, Some(12.0));

    held.truncate(18);
    count_is(&mut daemon, SVC, 18);
    assert_eq!(ss_established(tracked.addr), 18);
    drop(plain_held);
    count_is(&mut daemon, "plain", 0);

    // Removing the server destroys its connections: each is subtracted.
    let (code, body) = put_servers(&daemon.control, SVC, &[&plain.addr.to_string()]);
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while kernel_established(env.pins.path()) != 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections still counted after their server was removed",
            kernel_established(env.pins.path())
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ss_established(tracked.addr), 0);
    assert!(
        held.iter_mut()
            .all(|h| h.wait_closed(Duration::from_secs(2)).is_some())
    );
}

/// A connect that fails before its SYN goes out (here `EADDRNOTAVAIL`: the
/// same 4-tuple is already connected) never makes its backend look stalled
/// later: after an idle spell longer than the stall bound, the next connect
/// still goes to the selected server and no dial failure is counted.
#[test]
fn a_connect_that_never_sent_a_syn_does_not_make_an_idle_server_stalled() {
    let Some(mut rig) = Rig::start("dials_load_no_syn", SLOW_CHECK, false) else {
        return;
    };
    // One process in the test cgroup: a connect through the VIP from a
    // bound port, a second one from the same port (refused by the kernel
    // after the connect hook ran, before any SYN), 300 ms idle (three
    // times the `auto` bound), then a third connect.
    let script = r#"
import errno, socket, sys, time
vip = ("127.0.0.1", 6444)
def sock(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    return s
first = sock(0)
first.connect(vip)
second = sock(first.getsockname()[1])
try:
    second.connect(vip)
    sys.exit("the second connect succeeded")
except OSError as e:
    if e.errno != errno.EADDRNOTAVAIL:
        raise
time.sleep(0.3)
third = socket.create_connection(vip, timeout=2)
print("ok", third.getpeername())
"#;
    let out = rig
        .env
        .cgroup
        .output(std::process::Command::new("python3").args(["-c", script]));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let first = rig.servers[0].addr.to_string();
    thread::sleep(Duration::from_millis(200));
    let service = rig.service();
    assert_eq!(
        service.selected.as_deref(),
        Some(first.as_str()),
        "{service:#?}"
    );
    for reason in ["stalled", "reset", "timeout"] {
        assert!(
            rig.dial_failures(0, reason) < 0.5,
            "a {reason} dial failure was counted\nlog:\n{}",
            rig.daemon.log()
        );
    }
    rig.wait_dial_state(0, "ok");
}
