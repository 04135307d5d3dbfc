//! `policy: spread` on the socket path: local connects are spread over the
//! healthy servers by the Maglev table the controller writes into the
//! kernel (one slot per socket cookie hash), a removed server loses only its
//! own slots, and connections made before a rebuild stay where they are.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use lb_tests::{TcpBackend, TestEnv, put_servers, service};
use lb_userspace::{api::status::Status, policy::state_machine::ServerState};

const VIP: &str = "127.0.0.1:6444";
const TABLE: u32 = 16381;

fn spread_service(servers: &[SocketAddr]) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "  - name: web\n    vip: \"{VIP}\"\n    servers: [{}]\n    policy: spread\n    health_check: {{ kind: tcp, interval: 100ms, timeout: 100ms, jitter: 0% }}\n",
        servers.join(", ")
    )
}

/// Slots per server address.
fn slots(status: &Status) -> HashMap<String, u32> {
    service(status, "web")
        .servers
        .iter()
        .map(|s| (s.address.clone(), s.slots.unwrap_or(0)))
        .collect()
}

/// `n` connects through the VIP from the test cgroup; replies per backend name.
fn spread_connects(env: &TestEnv, n: usize) -> HashMap<String, usize> {
    let mut by_backend = HashMap::new();
    for _ in 0..n {
        let out = env.cgroup.client(&["tcp", VIP, "x"]);
        assert!(out.ok, "{out:?}");
        let reply = out.reply.unwrap_or_default();
        let name = reply.split(':').next().unwrap_or_default().to_owned();
        *by_backend.entry(name).or_insert(0) += 1;
    }
    by_backend
}

#[test]
fn spread_balances_local_connects_and_a_removed_server_loses_only_its_slots() {
    let Some(env) = TestEnv::new("spread") else {
        return;
    };
    let b1 = TcpBackend::v4("b1");
    let b2 = TcpBackend::v4("b2");
    let b3 = TcpBackend::v4("b3");
    let mut daemon = env.start(&spread_service(&[b1.addr, b2.addr, b3.addr]));
    let status = daemon.wait_for(
        Duration::from_secs(5),
        "a full table over three servers",
        |s| {
            let web = service(s, "web");
            web.policy == "spread"
                && web
                    .servers
                    .iter()
                    .all(|srv| srv.state == ServerState::Preferred)
                && slots(s).values().sum::<u32>() == TABLE
        },
    );
    let before = slots(&status);
    eprintln!("slots over three servers: {before:?}");
    for (server, n) in &before {
        // Maglev balance: within 1% of a third.
        let share = f64::from(*n) / f64::from(TABLE);
        assert!((share - 1.0 / 3.0).abs() < 0.01, "{server}: {n} slots");
    }

    // A connection made now must survive the rebuild below (unless its
    // server is the one removed, which closes it).
    let mut held = env.hold(VIP);
    let held_on = held.backend().to_owned();

    let counts = spread_connects(&env, 300);
    eprintln!("300 connects over three servers: {counts:?}");
    for name in ["b1", "b2", "b3"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((50..=150).contains(&n), "{name} got {n} of 300: {counts:?}");
    }

    // Remove b3: only its slots move.
    let (code, body) = put_servers(
        &daemon.control,
        "web",
        &[&b1.addr.to_string(), &b2.addr.to_string()],
    );
    assert_eq!(code, 200, "{body}");
    let status = daemon.wait_for(
        Duration::from_secs(5),
        "a full table over two servers",
        |s| {
            let now = slots(s);
            now.len() == 2 && now.values().sum::<u32>() == TABLE
        },
    );
    let after = slots(&status);
    eprintln!("slots over two servers: {after:?}");
    for server in [b1.addr.to_string(), b2.addr.to_string()] {
        assert!(
            after[&server] >= before[&server],
            "{server} lost slots: {} -> {}",
            before[&server],
            after[&server]
        );
    }
    if held_on == "b3" {
        assert!(
            held.wait_closed(Duration::from_secs(3)).is_some(),
            "connection to the removed server not closed"
        );
    } else {
        held.assert_open_for(Duration::from_secs(1));
    }

    let counts = spread_connects(&env, 200);
    eprintln!("200 connects over two servers: {counts:?}");
    assert_eq!(counts.get("b3"), None, "{counts:?}");
    for name in ["b1", "b2"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((60..=140).contains(&n), "{name} got {n} of 200: {counts:?}");
    }

    let metrics = lb_userspace::api::client::get(lb_tests::METRICS, "/metrics").expect("metrics");
    assert!(
        metrics.contains(&format!(
            "daas_lb_maglev_slots{{name=\"web\",server=\"{}\"}}",
            b1.addr
        )),
        "{metrics}"
    );
    let maglev = env.pins.path().join("maglev").display().to_string();
    let entries = lb_tests::bpftool(&["map", "dump", "pinned", &maglev]);
    assert_eq!(entries.as_array().map(Vec::len), Some(TABLE as usize));

    // A crash keeps the table in the kernel; the next run adopts it and
    // moves nothing.
    let table_before = lb_tests::bpftool(&["map", "dump", "pinned", &maglev]);
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5));
    let counts = spread_connects(&env, 20);
    assert_eq!(
        counts.get("b3"),
        None,
        "kernel keeps spreading while the controller is down: {counts:?}"
    );
    daemon.relaunch();
    let status = daemon.wait_for(Duration::from_secs(5), "the table adopted", |s| {
        slots(s).values().sum::<u32>() == TABLE
    });
    assert_eq!(slots(&status), after, "slots after the restart");
    let table_after = lb_tests::bpftool(&["map", "dump", "pinned", &maglev]);
    let sorted = |v: &serde_json::Value| {
        let mut entries: Vec<String> = v
            .as_array()
            .map(|a| a.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        entries.sort();
        entries
    };
    let (before, after_restart) = (sorted(&table_before), sorted(&table_after));
    let moved = before.iter().filter(|e| !after_restart.contains(e)).count();
    assert!(
        moved == 0 && before.len() == after_restart.len(),
        "the restart moved {moved} Maglev slots (entries {} before, {} after); log:\n{}",
        before.len(),
        after_restart.len(),
        daemon.log()
    );

    // Back to failover (SIGHUP): the table leaves the kernel and every
    // connect goes to the selected server.
    let failover = spread_service(&[b1.addr, b2.addr]).replace("    policy: spread\n", "");
    env.config(&failover);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for(Duration::from_secs(5), "policy failover", |s| {
        let web = service(s, "web");
        web.policy == "failover" && web.servers.iter().all(|srv| srv.slots.is_none())
    });
    let entries = lb_tests::bpftool(&["map", "dump", "pinned", &maglev]);
    assert_eq!(entries.as_array().map(Vec::len), Some(0), "{entries}");
    let counts = spread_connects(&env, 20);
    assert_eq!(
        counts.len(),
        1,
        "failover sends every connect to one server: {counts:?}"
    );
}
