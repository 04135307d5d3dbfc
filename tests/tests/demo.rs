//! The embedded demo (`cargo xtask run` without a config): the commands it
//! prints work.

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
    assert_eq!(status.services.len(), 3, "{status:?}");
    let log = demo.log();
    for printed in [
        "curl -s http://127.0.0.1:6444/",
        "nc 127.0.0.1 6444",
        "status --api",
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

    let table = Command::new(daas_lb_bin())
        .args(["status", "--api", "127.0.0.1:9465"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("demo-tcp 127.0.0.1:6444/tcp failover ->"),
        "{table}"
    );

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
