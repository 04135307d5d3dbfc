//! Attach, detach, crash and restart: what `daas-lb` leaves in the kernel.

use std::{path::Path, process::Command, time::Duration};

use lb_tests::{
    API, Daemon, NetNs, PinDir, TcpBackend, TempDir, TestCgroup, cgroup_links, cgroup_programs,
    config_yaml, daas_lb_bin, privileged, service,
};

/// (attach type as bpftool 7 names it, our program on it).
const ATTACHMENTS: [(&str, &str); 8] = [
    ("cgroup_inet4_connect", "lb_connect4"),
    ("cgroup_inet6_connect", "lb_connect6"),
    ("cgroup_inet4_getpeername", "lb_getpeername4"),
    ("cgroup_inet6_getpeername", "lb_getpeername6"),
    ("cgroup_udp4_sendmsg", "lb_sendmsg4"),
    ("cgroup_udp6_sendmsg", "lb_sendmsg6"),
    ("cgroup_udp4_recvmsg", "lb_recvmsg4"),
    ("cgroup_udp6_recvmsg", "lb_recvmsg6"),
];

fn config(
    tmp: &TempDir,
    pins: &PinDir,
    cgroup: &TestCgroup,
    b1: &TcpBackend,
    b2: &TcpBackend,
) -> String {
    let services = format!(
        "  - name: sup\n    vip: 127.0.0.1:6444\n    servers: [\"{}\", \"{}\"]\n    health_check: {{ kind: tcp, interval: 200ms, timeout: 100ms }}\n",
        b1.addr, b2.addr
    );
    tmp.file("config.yaml", &config_yaml(pins, cgroup, &services))
        .display()
        .to_string()
}

/// Exactly one of our programs per attach type on the cgroup.
fn assert_attached_once(cgroup: &TestCgroup) {
    let mut programs = cgroup_programs(cgroup.path());
    programs.sort();
    let mut expected: Vec<(String, String)> = ATTACHMENTS
        .iter()
        .map(|(t, p)| ((*t).to_owned(), (*p).to_owned()))
        .collect();
    expected.sort();
    assert_eq!(programs, expected, "programs on the cgroup");
    assert_eq!(cgroup_links(cgroup.id()).len(), 8, "links on the cgroup");
}

fn assert_nothing_left(cgroup: &TestCgroup, pins: &Path) {
    assert_eq!(
        cgroup_programs(cgroup.path()),
        Vec::new(),
        "programs left on the cgroup"
    );
    assert_eq!(cgroup_links(cgroup.id()), Vec::<u64>::new(), "links left");
    assert!(
        !pins.exists(),
        "pin directory {} left behind",
        pins.display()
    );
}

#[test]
fn sigterm_detaches_and_unpins_everything() {
    if !privileged("sigterm") {
        return;
    }
    let _ns = NetNs::new();
    let (cgroup, pins, tmp) = (TestCgroup::new(), PinDir::new(), TempDir::new());
    let (b1, b2) = (TcpBackend::v4("b1"), TcpBackend::v4("b2"));
    let path = config(&tmp, &pins, &cgroup, &b1, &b2);
    let mut daemon = Daemon::spawn(&["--config", &path], tmp.path(), API);
    daemon.wait_checked();
    assert_attached_once(&cgroup);
    for map in [
        "services",
        "backends",
        "backend_stats",
        "service_stats",
        "rev_nat",
    ] {
        let dump = Command::new("bpftool")
            .args(["map", "show", "pinned"])
            .arg(pins.path().join(map))
            .output()
            .unwrap();
        assert!(
            dump.status.success(),
            "bpftool map show pinned {map}: {dump:?}"
        );
    }

    daemon.signal(libc::SIGTERM);
    let exit = daemon.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "exit status {exit}\n{}", daemon.log());
    assert_nothing_left(&cgroup, pins.path());
    // Without the programs the VIP is just an unused local port.
    assert_eq!(
        cgroup.client(&["tcp", "127.0.0.1:6444"]).errno,
        Some(libc::ECONNREFUSED)
    );
}

#[test]
fn after_sigkill_traffic_keeps_flowing_and_the_next_run_adopts_cleanly() {
    if !privileged("sigkill") {
        return;
    }
    let _ns = NetNs::new();
    let (cgroup, pins, tmp) = (TestCgroup::new(), PinDir::new(), TempDir::new());
    let (b1, b2) = (TcpBackend::v4("b1"), TcpBackend::v4("b2"));
    let path = config(&tmp, &pins, &cgroup, &b1, &b2);

    let mut first = Daemon::spawn(&["--config", &path], tmp.path(), API);
    first.wait_checked();
    assert_eq!(
        cgroup
            .client(&["tcp", "127.0.0.1:6444", "a"])
            .reply
            .as_deref(),
        Some("b1:a")
    );
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(5));

    // Nobody is managing the maps, but the pinned links and maps keep working.
    assert_attached_once(&cgroup);
    let out = cgroup.client(&["tcp", "127.0.0.1:6444", "b"]);
    assert_eq!(out.reply.as_deref(), Some("b1:b"), "{out:?}");
    assert_eq!(out.peer.as_deref(), Some("127.0.0.1:6444"));

    // The next run adopts links and maps: still one attachment per hook.
    let mut second = Daemon::spawn(&["--config", &path], tmp.path(), API);
    let status = second.wait_checked();
    assert!(
        second.log().contains("adopted existing link"),
        "{}",
        second.log()
    );
    assert_attached_once(&cgroup);
    let sup = service(&status, "sup");
    assert_eq!(sup.selected, Some(b1.addr.to_string()));
    // Counters survived the crash: two connects so far.
    assert_eq!(sup.servers[0].connects, 2, "{sup:?}");
    assert_eq!(
        cgroup
            .client(&["tcp", "127.0.0.1:6444", "c"])
            .reply
            .as_deref(),
        Some("b1:c")
    );

    // Crash again, then `daas-lb cleanup` removes everything.
    second.signal(libc::SIGKILL);
    second.wait_exit(Duration::from_secs(5));
    let cleanup = Command::new(daas_lb_bin())
        .args(["cleanup", "--bpffs-dir"])
        .arg(pins.path())
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert_nothing_left(&cgroup, pins.path());
}

#[test]
fn a_pinned_link_on_another_cgroup_is_replaced_not_duplicated() {
    if !privileged("moved_cgroup") {
        return;
    }
    let _ns = NetNs::new();
    let (old_cgroup, new_cgroup) = (TestCgroup::new(), TestCgroup::new());
    let (pins, tmp) = (PinDir::new(), TempDir::new());
    let (b1, b2) = (TcpBackend::v4("b1"), TcpBackend::v4("b2"));
    let path = config(&tmp, &pins, &old_cgroup, &b1, &b2);
    let mut first = Daemon::spawn(&["--config", &path], tmp.path(), API);
    first.wait_checked();
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(5));

    let new_path = new_cgroup.path().display().to_string();
    let mut second = Daemon::spawn(&["--config", &path, "--cgroup", &new_path], tmp.path(), API);
    second.wait_checked();
    assert_eq!(
        cgroup_programs(old_cgroup.path()),
        Vec::new(),
        "old cgroup still attached"
    );
    assert_attached_once(&new_cgroup);
    assert_eq!(
        new_cgroup
            .client(&["tcp", "127.0.0.1:6444", "n"])
            .reply
            .as_deref(),
        Some("b1:n")
    );
    second.signal(libc::SIGTERM);
    assert!(second.wait_exit(Duration::from_secs(10)).success());
    assert_nothing_left(&new_cgroup, pins.path());
}

#[test]
fn a_second_controller_on_the_same_pins_is_refused() {
    if !privileged("second_controller") {
        return;
    }
    let _ns = NetNs::new();
    let (cgroup, pins, tmp) = (TestCgroup::new(), PinDir::new(), TempDir::new());
    let (b1, b2) = (TcpBackend::v4("b1"), TcpBackend::v4("b2"));
    let path = config(&tmp, &pins, &cgroup, &b1, &b2);
    let mut first = Daemon::spawn(&["--config", &path], tmp.path(), API);
    first.wait_checked();

    // Same pins and cgroup, other HTTP ports (so the ports are not what stops it).
    let other = std::fs::read_to_string(&path)
        .unwrap()
        .replace(":9464", ":9474")
        .replace(":9465", ":9475");
    let other_path = tmp.file("other.yaml", &other);
    let second = Command::new(daas_lb_bin())
        .args(["run", "--config"])
        .arg(&other_path)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another daas-lb is running"), "{stderr}");
    assert_attached_once(&cgroup);
    assert_eq!(
        cgroup
            .client(&["tcp", "127.0.0.1:6444", "x"])
            .reply
            .as_deref(),
        Some("b1:x")
    );
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(Duration::from_secs(10)).success());
    assert_nothing_left(&cgroup, pins.path());
}
