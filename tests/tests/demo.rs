//! The embedded demo (`cargo xtask run` without a config): the commands it
//! prints work, and `demo-sui` gets its servers from the demo's fake Sui
//! registry (the under-stake node never, the newcomer by event).

use std::{process::Command, time::Duration};

use lb_tests::{TestEnv, daas_lb_bin};

#[test]
fn demo_commands_work() {
    let Some(env) = TestEnv::new("demo") else {
        return;
    };
    let cgroup_path = env.cgroup.path().display().to_string();
    let pin_path = env.pins.path().display().to_string();
    let mut demo = env.spawn(&["--demo", "--cgroup", &cgroup_path, "--bpffs-dir", &pin_path]);
    let status = demo.wait_checked();
    assert_eq!(status.services.len(), 4, "{status:?}");
    let log = demo.log();
    for printed in [
        "curl -s http://127.0.0.1:6444/",
        "nc 127.0.0.1 6444",
        "status --api",
        "curl -s http://127.0.0.1:6445/",
        "grep -E 'registry|stake|sync_lag'",
        "Fake Sui full node http://127.0.0.1:",
        "bpftool map dump pinned",
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
        "http://127.0.0.1:6444/",
    ]));
    let body = String::from_utf8_lossy(&curl.stdout);
    assert!(
        body.starts_with("hello from daas-lb demo backend-1"),
        "{curl:?}"
    );

    let curl6 = env.cgroup.output(Command::new("curl").args([
        "-s",
        "-g",
        "--max-time",
        "3",
        "http://[::1]:6444/",
    ]));
    assert!(
        String::from_utf8_lossy(&curl6.stdout).starts_with("hello from daas-lb demo backend-1"),
        "{curl6:?}"
    );

    let nc = env
        .cgroup
        .output(Command::new("sh").args(["-c", "printf 'hi\\n' | nc -N -w 3 127.0.0.1 6444"]));
    let echoed = String::from_utf8_lossy(&nc.stdout);
    assert!(
        echoed.starts_with("[backend-1 ") && echoed.ends_with("] hi\n"),
        "{nc:?}"
    );

    let nc_udp = env
        .cgroup
        .output(Command::new("sh").args(["-c", "printf 'hi\\n' | nc -u -w 1 127.0.0.1 6444"]));
    assert!(
        String::from_utf8_lossy(&nc_udp.stdout).contains("] hi"),
        "{nc_udp:?}"
    );

    // demo-sui: node-1 and node-2 from the full sync, node-3 by its
    // NodeRegistered event a few seconds later, all passing tcp + sui_sync;
    // node-low-stake (127.0.0.5) is below min_stake_mist and never a server.
    let status = demo.wait_for(
        Duration::from_secs(20),
        "demo-sui's three registry nodes checked ok",
        |status| {
            let Some(service) = status.services.iter().find(|s| s.name == "demo-sui") else {
                return false;
            };
            ["127.0.0.2:", "127.0.0.3:", "127.0.0.4:"].iter().all(|ip| {
                service.servers.iter().any(|server| {
                    server.address.starts_with(ip)
                        && server.last_check.as_ref().is_some_and(|c| c.ok)
                })
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
        let server = service
            .servers
            .iter()
            .find(|s| s.address.starts_with(ip))
            .unwrap();
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

    let curl_sui = env.cgroup.output(Command::new("curl").args([
        "-s",
        "--max-time",
        "3",
        "http://127.0.0.1:6445/",
    ]));
    assert!(
        String::from_utf8_lossy(&curl_sui.stdout).starts_with("hello from daas-lb demo node-"),
        "{curl_sui:?}"
    );
    let metrics = demo.metrics();
    assert!(
        metrics.contains("k3s_server_stake_amount{service=\"demo-sui\",server=\"127.0.0.2:"),
        "{metrics}"
    );
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
        table.contains("demo-tcp 127.0.0.1:6444/tcp failover ->"),
        "{table}"
    );
    assert!(
        table.contains("registry: synced, 4 nodes, cursor "),
        "{table}"
    );
    assert!(
        table.contains("demo-sui 127.0.0.1:6445/tcp failover ->"),
        "{table}"
    );
    for node in ["127.0.0.2:", "127.0.0.3:", "127.0.0.4:"] {
        let line = table
            .lines()
            .find(|line| line.trim_start().starts_with(node))
            .unwrap_or_else(|| panic!("no {node} in\n{table}"));
        assert!(line.contains(" stake "), "{table}");
    }
    assert!(table.contains(" stake 1.5 SUI lag 0 "), "{table}");
    assert!(!table.contains("127.0.0.5:"), "{table}");

    let dump = Command::new("bpftool")
        .args(["map", "dump", "pinned", &format!("{pin_path}/services")])
        .output()
        .unwrap();
    assert!(dump.status.success(), "{dump:?}");
    assert!(
        String::from_utf8_lossy(&dump.stdout).contains("backend_id"),
        "BTF-formatted dump expected: {dump:?}"
    );

    demo.signal(libc::SIGINT);
    assert!(
        demo.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        demo.log()
    );
    assert!(!env.pins.path().exists());
}
