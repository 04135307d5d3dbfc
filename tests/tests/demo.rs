//! The embedded demo (`cargo xtask run` without a config): the commands it
//! prints work, and `demo-sui` gets its servers from the demo's fake Sui
//! registry (the under-stake node never, the newcomer by event), checks
//! their fake Nautilus enclaves' attestations and ranks them by score, one
//! node's score drifting.
//!
//! The demo captures only its own VIPs: with a stand-in for K3s's agent
//! load balancer on `6444` (v4 and v6), connects to it in the attached
//! cgroup reach the stand-in, while the demo runs and after it was killed;
//! a demo whose ports are taken refuses, naming them, and attaches nothing.

use std::{
    io::{ErrorKind, Write as _},
    net::TcpListener,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{TestEnv, daas_lb_bin};
use lb_userspace::api::status::{ServerStatus, Status};

/// demo-sui's server on `ip` (`"127.0.0.2:"`), if listed.
fn sui_server<'a>(status: &'a Status, ip: &str) -> Option<&'a ServerStatus> {
    status
        .services
        .iter()
        .find(|s| s.name == "demo-sui")?
        .servers
        .iter()
        .find(|server| server.address.starts_with(ip))
}

/// What the stand-in for K3s's agent load balancer says to every client.
const STAND_IN: &str = "k3s agent load balancer stand-in\n";

/// A stand-in for K3s's own agent load balancer on `addr` (in the test's
/// network namespace): greets up to `max` connections with [`STAND_IN`],
/// for at most `within`; returns how many it greeted.
fn stand_in(addr: &str, max: usize, within: Duration) -> thread::JoinHandle<usize> {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let deadline = Instant::now() + within;
        let mut greeted = 0;
        while greeted < max && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.write_all(STAND_IN.as_bytes()).unwrap();
                    greeted += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("stand-in accept: {e}"),
            }
        }
        greeted
    })
}

/// Connects to `host` port 6444 from the test cgroup (where the programs
/// are attached) and asserts that the stand-in answers, not the demo.
fn assert_stand_in_answers(env: &TestEnv, host: &str, when: &str) {
    let nc = env
        .cgroup
        .output(Command::new("nc").args(["-N", "-w", "3", host, "6444"]));
    assert_eq!(
        String::from_utf8_lossy(&nc.stdout),
        STAND_IN,
        "{host} port 6444 {when}: {nc:?}"
    );
}

/// The programs attached to `cgroup`, as `bpftool cgroup show` lists them.
fn attached(cgroup: &str) -> String {
    let show = Command::new("bpftool")
        .args(["cgroup", "show", cgroup])
        .output()
        .unwrap();
    assert!(show.status.success(), "{show:?}");
    String::from_utf8_lossy(&show.stdout).into_owned()
}

#[test]
fn demo_commands_work() {
    let Some(env) = TestEnv::new("demo") else {
        return;
    };
    // K3s's agent load balancer listens on 6444; the demo must leave it
    // alone (two connections each: while the demo runs, after a SIGKILL).
    let stand_ins = [
        stand_in("127.0.0.1:6444", 2, Duration::from_mins(5)),
        stand_in("[::1]:6444", 2, Duration::from_mins(5)),
    ];
    let cgroup_path = env.cgroup.path().display().to_string();
    let pin_path = env.pins.path().display().to_string();
    let socket = lb_tests::control_socket_in(env.tmp.path());
    let socket_path = socket.display().to_string();
    let mut demo = spawn_demo(&env);
    let status = demo.wait_checked();
    assert_eq!(status.services.len(), 4, "{status:?}");
    let log = demo.log();
    for printed in [
        "curl -s http://127.0.0.66:16440/",
        "nc 127.0.0.66 16440",
        "echo hi | nc -u -w1 127.0.0.66 16440",
        "curl -s -g 'http://[::1]:16440/'",
        "status --api",
        "status --api 127.0.0.1:9465 --wide",
        "curl -s http://127.0.0.66:16445/",
        &format!("cleanup --bpffs-dir {pin_path}"),
        "grep -E 'registry|stake|sync_lag'",
        "grep -E 'nautilus|attestation|score'",
        "Each node has a fake Nautilus enclave registered under EnclaveConfig 0x",
        "Fake Sui full node http://127.0.0.1:",
        "bpftool map dump pinned",
        &format!("set-servers --socket {socket_path} demo-tcp 127.0.0.1:"),
    ] {
        assert!(
            log.contains(printed),
            "demo does not print {printed:?}:\n{log}"
        );
    }

    let curl = env.cgroup.output(Command::new("curl").args([
        "-s",
        "--max-time",
        "3",
        "http://127.0.0.66:16440/",
    ]));
    // Which backend answers is the one the daemon selected: the first to
    // pass its check keeps the selection (ties never move it), as the first
    // server K3s dials stays active, so it is not always backend-1.
    let tcp_backend = selected_backend(&demo, "demo-tcp");
    let body = String::from_utf8_lossy(&curl.stdout);
    assert!(
        body.starts_with(&format!("hello from daas-lb demo {tcp_backend} ")),
        "{curl:?}"
    );

    let curl6 = env.cgroup.output(Command::new("curl").args([
        "-s",
        "-g",
        "--max-time",
        "3",
        "http://[::1]:16440/",
    ]));
    let v6_backend = selected_backend(&demo, "demo-tcp6");
    assert!(
        String::from_utf8_lossy(&curl6.stdout)
            .starts_with(&format!("hello from daas-lb demo {v6_backend} ")),
        "{curl6:?}"
    );

    let nc = env
        .cgroup
        .output(Command::new("sh").args(["-c", "printf 'hi\\n' | nc -N -w 3 127.0.0.66 16440"]));
    let echoed = String::from_utf8_lossy(&nc.stdout);
    assert!(
        echoed.starts_with(&format!("[{tcp_backend} ")) && echoed.ends_with("] hi\n"),
        "{nc:?}"
    );

    let nc_udp = env
        .cgroup
        .output(Command::new("sh").args(["-c", "printf 'hi\\n' | nc -u -w 1 127.0.0.66 16440"]));
    assert!(
        String::from_utf8_lossy(&nc_udp.stdout).contains("] hi"),
        "{nc_udp:?}"
    );
    // K3s's port is not the demo's: the stand-in answers, v4 and v6.
    assert_stand_in_answers(&env, "127.0.0.1", "while the demo runs");
    assert_stand_in_answers(&env, "::1", "while the demo runs");

    // demo-sui: node-1 and node-2 from the full sync, node-3 by its
    // NodeRegistered event a few seconds later, all passing tcp + sui_sync;
    // node-low-stake (127.0.0.5) is below min_stake_mist and never a server.
    let status = demo.wait_for(
        Duration::from_secs(20),
        "demo-sui's three registry nodes checked ok",
        |status| {
            ["127.0.0.2:", "127.0.0.3:", "127.0.0.4:"].iter().all(|ip| {
                sui_server(status, ip)
                    .and_then(|server| server.last_check.as_ref())
                    .is_some_and(|c| c.ok)
            })
        },
    );
    let service = status
        .services
        .iter()
        .find(|s| s.name == "demo-sui")
        .unwrap();
    assert_eq!(service.servers.len(), 3, "{service:?}");
    for (ip, stake) in [
        ("127.0.0.2:", 3_000_000_000),
        ("127.0.0.3:", 2_000_000_000),
        ("127.0.0.4:", 1_500_000_000),
    ] {
        let server = sui_server(&status, ip).unwrap();
        assert_eq!(server.stake_mist, Some(stake), "{server:?}");
        assert!(server.node.is_some(), "{server:?}");
        assert_eq!(server.sync_lag_blocks, Some(0), "{server:?}");
    }
    assert!(
        !service
            .servers
            .iter()
            .any(|s| s.address.starts_with("127.0.0.5:")),
        "{service:?}"
    );
    let registry = status.registry.as_ref().expect("registry status");
    assert!(registry.synced, "{registry:?}");
    assert_eq!(registry.nodes, 4, "{registry:?}");
    assert_eq!(registry.events.get("registered"), Some(&1), "{registry:?}");
    assert_eq!(demo.log_count("demo chain: NodeRegistered"), 1);

    // Every demo-sui server's enclave attested (tcp + sui_sync + nautilus
    // passed), and ranking gives each a score: node-2 7000/8000 with 2 SUI
    // above node-3 5000/9000 with 1.5 SUI; node-1 9500/9000 (or 4000/9000
    // while its score drifts) with 3 SUI.
    let status = demo.wait_for(
        Duration::from_secs(10),
        "demo-sui's servers attested and scored",
        |status| {
            ["127.0.0.2:", "127.0.0.3:", "127.0.0.4:"].iter().all(|ip| {
                sui_server(status, ip).is_some_and(|s| s.attestation.is_some() && s.score.is_some())
            })
        },
    );
    for (ip, performance, reputation, stake) in [
        (
            "127.0.0.2:",
            [9_500, 4_000].as_slice(),
            9_000,
            3_000_000_000,
        ),
        ("127.0.0.3:", &[7_000], 8_000, 2_000_000_000),
        ("127.0.0.4:", &[5_000], 9_000, 1_500_000_000),
    ] {
        let server = sui_server(&status, ip).unwrap();
        let attestation = server.attestation.as_ref().unwrap();
        assert!(
            performance.contains(&attestation.performance_score),
            "{server:?}"
        );
        assert_eq!(attestation.reputation_score, reputation, "{server:?}");
        assert!(attestation.stake_mist <= stake, "{server:?}");
        assert!(attestation.timestamp_ms > 0, "{server:?}");
        assert!((0.0..60.0).contains(&attestation.age_seconds), "{server:?}");
        assert!(server.score.unwrap() > 0, "{server:?}");
        assert_eq!(server.attestation_failure, None, "{server:?}");
        let check = server.last_check.as_ref().unwrap();
        assert!(check.ok, "{server:?}");
    }
    let score = |ip| sui_server(&status, ip).and_then(|s| s.score).unwrap();
    assert!(score("127.0.0.3:") > score("127.0.0.4:"), "{status:?}");

    let curl_sui = env.cgroup.output(Command::new("curl").args([
        "-s",
        "--max-time",
        "3",
        "http://127.0.0.66:16445/",
    ]));
    assert!(
        String::from_utf8_lossy(&curl_sui.stdout).starts_with("hello from daas-lb demo node-"),
        "{curl_sui:?}"
    );
    let metrics = demo.metrics();
    assert!(
        metrics.contains("k3s_server_stake_amount{name=\"demo-sui\",server=\"127.0.0.2:"),
        "{metrics}"
    );
    for metric in [
        "k3s_nautilus_performance_score{name=\"demo-sui\",server=\"127.0.0.3:",
        "k3s_attestation_age_seconds{name=\"demo-sui\",server=\"127.0.0.3:",
        "daas_lb_server_score{name=\"demo-sui\",server=\"127.0.0.3:",
    ] {
        assert!(metrics.contains(metric), "no {metric} in\n{metrics}");
    }
    assert!(
        metrics.contains("daas_lb_registry_events_total{kind=\"registered\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("127.0.0.5:"), "{metrics}");

    let table = Command::new(daas_lb_bin())
        .args(["status", "--api", "127.0.0.1:9465"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("demo-tcp 127.0.0.66:16440/tcp failover ->"),
        "{table}"
    );
    assert!(
        table.contains("registry: synced, 4 nodes (1 excluded: stake below minimum), cursor "),
        "{table}"
    );
    assert!(
        table.contains("demo-sui 127.0.0.66:16445/tcp failover ->"),
        "{table}"
    );
    // The server tables fit a terminal: columns sized to their content,
    // the reasons cut.
    for line in table.lines().filter(|line| line.starts_with("  ")) {
        assert!(line.chars().count() <= 100, "{line}\n{table}");
    }
    let sui_header = table
        .lines()
        .skip_while(|line| !line.starts_with("demo-sui "))
        .nth(1)
        .unwrap_or_else(|| panic!("no demo-sui table in\n{table}"));
    assert_eq!(
        sui_header.split_whitespace().collect::<Vec<_>>(),
        [
            "SERVER", "STATE", "FOR", "OPEN", "TOTAL", "STAKE", "LAG", "SCORE", "LAST", "CHECK"
        ],
        "{table}"
    );
    assert!(
        table.contains("OPEN: connections open now; TOTAL: connects"),
        "{table}"
    );
    for node in ["127.0.0.2:", "127.0.0.3:", "127.0.0.4:"] {
        let line = table
            .lines()
            .find(|line| line.trim_start().starts_with(node))
            .unwrap_or_else(|| panic!("no {node} in\n{table}"));
        assert!(line.contains(" SUI "), "{table}");
        assert!(line.contains("% "), "score share: {table}");
    }
    assert!(table.contains(" 1.5 SUI    0 "), "{table}");
    assert!(!table.contains("127.0.0.5:"), "{table}");
    let wide = Command::new(daas_lb_bin())
        .args(["status", "--api", "127.0.0.1:9465", "--wide"])
        .output()
        .unwrap();
    let wide = String::from_utf8_lossy(&wide.stdout);
    assert!(wide.contains(" STAKE  LAG  PERF   REP"), "{wide}");
    assert!(wide.contains(" 2 SUI    0  7000  8000 "), "{wide}");
    assert!(wide.contains(" 1.5 SUI    0  5000  9000 "), "{wide}");

    // node-1's score drifts every 10 s: both of its values show up, and
    // while it attests 4000 node-2 outranks it.
    let score = |status: &Status, ip| sui_server(status, ip).and_then(|s| s.score);
    for (performance, what) in [
        (4_000, "node-1 attesting its drifted score"),
        (9_500, "node-1 attesting its usual score"),
    ] {
        let status = demo.wait_for(Duration::from_secs(25), what, |status| {
            sui_server(status, "127.0.0.2:")
                .and_then(|s| s.attestation.as_ref())
                .is_some_and(|a| a.performance_score == performance)
                && score(status, "127.0.0.2:").is_some()
                && score(status, "127.0.0.3:").is_some()
        });
        let node_1 = score(&status, "127.0.0.2:").expect("node-1 has a score");
        let node_2 = score(&status, "127.0.0.3:").expect("node-2 has a score");
        if performance == 4_000 {
            assert!(node_1 < node_2, "{status:?}");
        } else {
            assert!(node_1 > node_2, "{status:?}");
        }
    }

    let dump = Command::new("bpftool")
        .args(["map", "dump", "pinned", &format!("{pin_path}/services")])
        .output()
        .unwrap();
    assert!(dump.status.success(), "{dump:?}");
    assert!(
        String::from_utf8_lossy(&dump.stdout).contains("backend_id"),
        "BTF-formatted dump expected: {dump:?}"
    );

    // The printed set-servers line, as root, moves demo-tcp to backend-2.
    let line = log
        .lines()
        .find(|l| l.contains(" set-servers --socket "))
        .expect("set-servers line");
    let args: Vec<&str> = line
        .split('#')
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .collect();
    let set = Command::new(daas_lb_bin()).args(&args).output().unwrap();
    assert!(set.status.success(), "{args:?}: {set:?}");
    assert!(
        String::from_utf8_lossy(&set.stdout).contains("demo-tcp 127.0.0.66:16440/tcp failover"),
        "{set:?}"
    );
    let curl = env.cgroup.output(Command::new("curl").args([
        "-s",
        "--max-time",
        "3",
        "http://127.0.0.66:16440/",
    ]));
    assert!(
        String::from_utf8_lossy(&curl.stdout).starts_with("hello from daas-lb demo backend-2"),
        "{curl:?}"
    );
    // The demo's configuration is built in: a reload says so and changes nothing.
    let reload = Command::new(daas_lb_bin())
        .args(["reload", "--socket", &socket_path])
        .output()
        .unwrap();
    assert!(!reload.status.success(), "{reload:?}");
    assert!(
        String::from_utf8_lossy(&reload.stderr).contains("built in and cannot be reloaded"),
        "{reload:?}"
    );

    demo.signal(libc::SIGINT);
    assert!(
        demo.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        demo.log()
    );
    assert!(!env.pins.path().exists());
    assert!(!socket.exists(), "the control socket is removed on exit");

    // A demo killed with SIGKILL leaves its programs attached: they still
    // take only the demo VIPs (refused now, the backends are gone); 6444
    // reaches the stand-in. The printed cleanup command detaches them.
    demo.relaunch();
    demo.wait_checked();
    demo.signal(libc::SIGKILL);
    assert!(!demo.wait_exit(Duration::from_secs(10)).success());
    assert!(!attached(&cgroup_path).trim().is_empty(), "left attached");
    assert_stand_in_answers(&env, "127.0.0.1", "after a SIGKILL of the demo");
    assert_stand_in_answers(&env, "::1", "after a SIGKILL of the demo");
    let dead = env.cgroup.output(Command::new("curl").args([
        "-s",
        "--max-time",
        "3",
        "http://127.0.0.66:16440/",
    ]));
    assert!(!dead.status.success(), "{dead:?}");
    let cleanup = Command::new(daas_lb_bin())
        .args(["cleanup", "--bpffs-dir", &pin_path])
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(attached(&cgroup_path).trim().is_empty(), "{cleanup:?}");
    for stand_in in stand_ins {
        assert_eq!(
            stand_in.join().unwrap(),
            2,
            "the stand-in served both rounds"
        );
    }
}

/// A demo whose ports are taken (a VIP someone listens on: its traffic
/// would be captured; a backend port) refuses before it attaches anything,
/// naming every taken port, and exits non-zero.
#[test]
fn demo_refuses_when_its_ports_are_taken() {
    let Some(env) = TestEnv::new("demo-refuses") else {
        return;
    };
    let cgroup_path = env.cgroup.path().display().to_string();
    let socket = lb_tests::control_socket_in(env.tmp.path());
    // Every address on the port: the demo's VIP 127.0.0.66:16440 included.
    let _vip = TcpListener::bind("0.0.0.0:16440").unwrap();
    let _v6_vip = TcpListener::bind("[::1]:16440").unwrap();
    let _backend = std::net::UdpSocket::bind("127.0.0.1:16442").unwrap();
    let mut demo = spawn_demo(&env);
    let exit = demo.wait_exit(Duration::from_secs(30));
    let log = demo.log();
    assert!(!exit.success(), "{exit}: {log}");
    for taken in [
        "error: the demo refuses to start: ports it needs are taken, and nothing was attached:",
        "tcp 127.0.0.66:16440 (demo-tcp VIP): something listens on this demo VIP; the demo would capture its traffic",
        "tcp [::1]:16440 (demo-tcp6 VIP): something listens",
        "udp 127.0.0.1:16442 (demo-udp backend-2): a demo backend must listen here",
    ] {
        assert!(log.contains(taken), "no {taken:?} in\n{log}");
    }
    // The UDP VIP is free (a TCP listener does not hold it), so is the rest.
    assert!(!log.contains("udp 127.0.0.66:16440"), "{log}");
    assert!(!log.contains("tcp 127.0.0.1:16441"), "{log}");
    assert!(attached(&cgroup_path).trim().is_empty(), "{log}");
    assert!(!env.pins.path().exists(), "{log}");
    assert!(!socket.exists(), "{log}");
}

/// The demo backend (`backend-N`, listening on port 16440 + N) that
/// `service` selects now, from the daemon's status.
fn selected_backend(demo: &lb_tests::Daemon, service: &str) -> String {
    let status = demo.status();
    let selected = status
        .services
        .iter()
        .find(|s| s.name == service)
        .and_then(|s| s.selected.clone())
        .unwrap_or_else(|| panic!("{service} selects nothing: {status:?}"));
    let port: u16 = selected
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{service} selects {selected:?}"));
    assert!(
        (16441..=16443).contains(&port),
        "{service} selects {selected}, not a demo backend"
    );
    format!("backend-{}", port - 16440)
}

/// Starts `daas-lb run --demo` on `env`'s cgroup, pin directory and
/// control socket (never the root cgroup or the demo's own pins).
fn spawn_demo(env: &TestEnv) -> lb_tests::Daemon {
    let socket = lb_tests::control_socket_in(env.tmp.path());
    env.spawn(&[
        "--demo",
        "--cgroup",
        &env.cgroup.path().display().to_string(),
        "--bpffs-dir",
        &env.pins.path().display().to_string(),
        "--control-socket",
        &socket.display().to_string(),
    ])
}
