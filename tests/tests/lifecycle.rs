//! Attach, detach, crash and restart: what `daas-lb` leaves in the kernel.

use std::{path::Path, process::Command, time::Duration};

use lb_tests::{
    API, Daemon, TcpBackend, TestCgroup, TestEnv, cgroup_link_programs, cgroup_links,
    cgroup_programs, daas_lb_bin, service,
};

/// (attach type as bpftool 7 names it, our program on it).
const ATTACHMENTS: [(&str, &str); 9] = [
    ("cgroup_inet4_connect", "lb_connect4"),
    ("cgroup_inet6_connect", "lb_connect6"),
    ("cgroup_inet4_getpeername", "lb_getpeername4"),
    ("cgroup_inet6_getpeername", "lb_getpeername6"),
    ("cgroup_udp4_sendmsg", "lb_sendmsg4"),
    ("cgroup_udp6_sendmsg", "lb_sendmsg6"),
    ("cgroup_udp4_recvmsg", "lb_recvmsg4"),
    ("cgroup_udp6_recvmsg", "lb_recvmsg6"),
    ("cgroup_sock_ops", "lb_sock_ops"),
];

/// One test's environment with two backends and a config file for service
/// `sup` on `127.0.0.1:6444`.
struct World {
    config: String,
    backends: (TcpBackend, TcpBackend),
    env: TestEnv,
}

impl World {
    fn new(test: &str) -> Option<Self> {
        let env = TestEnv::new(test)?;
        let (b1, b2) = (TcpBackend::v4("b1"), TcpBackend::v4("b2"));
        let config = env.config(&format!(
            "  - name: sup\n    vip: 127.0.0.1:6444\n    servers: [\"{}\", \"{}\"]\n    health_check: {{ kind: tcp, interval: 200ms, timeout: 100ms }}\n",
            b1.addr, b2.addr
        ));
        Some(Self {
            config,
            backends: (b1, b2),
            env,
        })
    }

    /// Starts `daas-lb run --config <config> EXTRA...` and waits for its first checks.
    fn start(&self, extra: &[&str]) -> Daemon {
        let mut args = vec!["--config", self.config.as_str()];
        args.extend_from_slice(extra);
        let mut daemon = self.env.spawn(&args);
        daemon.wait_checked();
        daemon
    }
}

/// The reply of `b1`/`b2` to a connect through the VIP from `cgroup`.
fn reply_via(cgroup: &TestCgroup, payload: &str) -> Option<String> {
    cgroup.client(&["tcp", "127.0.0.1:6444", payload]).reply
}

/// SIGTERM, then a clean exit.
fn stop(mut daemon: Daemon) {
    daemon.signal(libc::SIGTERM);
    let exit = daemon.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "exit status {exit}\n{}", daemon.log());
}

/// SIGKILL, then reaped.
fn crash(mut daemon: Daemon) {
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5));
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
    assert_eq!(
        cgroup_links(cgroup.id()).len(),
        ATTACHMENTS.len(),
        "links on the cgroup"
    );
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
    let Some(world) = World::new("sigterm") else {
        return;
    };
    let daemon = world.start(&[]);
    assert_attached_once(&world.env.cgroup);
    for map in [
        "services",
        "backends",
        "backend_stats",
        "service_stats",
        "rev_nat",
    ] {
        let show = Command::new("bpftool")
            .args(["map", "show", "pinned"])
            .arg(world.env.pins.path().join(map))
            .output()
            .unwrap();
        assert!(
            show.status.success(),
            "bpftool map show pinned {map}: {show:?}"
        );
    }
    stop(daemon);
    assert_nothing_left(&world.env.cgroup, world.env.pins.path());
    // Without the programs the VIP is just an unused local port.
    let out = world.env.cgroup.client(&["tcp", "127.0.0.1:6444"]);
    assert_eq!(out.errno, Some(libc::ECONNREFUSED));
}

#[test]
fn after_sigkill_traffic_keeps_flowing_and_the_next_run_adopts_cleanly() {
    let Some(world) = World::new("sigkill") else {
        return;
    };
    let first = world.start(&[]);
    assert_eq!(reply_via(&world.env.cgroup, "a").as_deref(), Some("b1:a"));
    crash(first);

    // Nobody is managing the maps, but the pinned links and maps keep working.
    assert_attached_once(&world.env.cgroup);
    let out = world.env.cgroup.client(&["tcp", "127.0.0.1:6444", "b"]);
    assert_eq!(out.reply.as_deref(), Some("b1:b"), "{out:?}");
    assert_eq!(out.peer.as_deref(), Some("127.0.0.1:6444"));

    // The next run adopts links and maps: still one attachment per hook.
    let before = cgroup_link_programs(world.env.cgroup.id());
    assert_eq!(before.len(), ATTACHMENTS.len(), "{before:?}");
    let second = world.start(&[]);
    assert!(
        second.log().contains("adopted existing link"),
        "{}",
        second.log()
    );
    assert_attached_once(&world.env.cgroup);
    // Each link, sock_ops included, is the same one, now running the new
    // run's program (swapped in with BPF_LINK_UPDATE).
    let after = cgroup_link_programs(world.env.cgroup.id());
    assert_eq!(after.len(), before.len(), "{after:?}");
    for ((kind, link, old_prog), (new_kind, new_link, new_prog)) in before.iter().zip(&after) {
        assert_eq!((kind, link), (new_kind, new_link), "{before:?}\n{after:?}");
        assert_ne!(old_prog, new_prog, "{kind}: the program was not replaced");
    }
    let status = lb_userspace::api::client::fetch_status(API).unwrap();
    let sup = service(&status, "sup");
    assert_eq!(sup.selected, Some(world.backends.0.addr.to_string()));
    // Counters survived the crash: two connects so far.
    assert_eq!(sup.servers[0].connects, 2, "{sup:?}");
    assert_eq!(reply_via(&world.env.cgroup, "c").as_deref(), Some("b1:c"));

    // Crash again, then `daas-lb cleanup` removes everything.
    crash(second);
    let cleanup = Command::new(daas_lb_bin())
        .args(["cleanup", "--bpffs-dir"])
        .arg(world.env.pins.path())
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert_nothing_left(&world.env.cgroup, world.env.pins.path());
}

#[test]
fn a_pinned_link_on_another_cgroup_is_replaced_not_duplicated() {
    let Some(world) = World::new("moved_cgroup") else {
        return;
    };
    crash(world.start(&[]));

    let new_cgroup = TestCgroup::new();
    let new_path = new_cgroup.path().display().to_string();
    let second = world.start(&["--cgroup", &new_path]);
    assert_eq!(
        cgroup_programs(world.env.cgroup.path()),
        Vec::new(),
        "old cgroup still attached"
    );
    assert_attached_once(&new_cgroup);
    assert_eq!(reply_via(&new_cgroup, "n").as_deref(), Some("b1:n"));
    stop(second);
    assert_nothing_left(&new_cgroup, world.env.pins.path());
}

#[test]
fn a_second_controller_on_the_same_pins_is_refused() {
    let Some(world) = World::new("second_controller") else {
        return;
    };
    let first = world.start(&[]);

    // Same pins and cgroup, other HTTP ports and control socket (so they
    // are not what stops it).
    let other = std::fs::read_to_string(&world.config)
        .unwrap()
        .replace(":9464", ":9474")
        .replace(":9465", ":9475")
        .replace("/run/control.sock", "/run2/control.sock");
    let other_path = world.env.tmp.file("other.yaml", &other);
    let second = Command::new(daas_lb_bin())
        .args(["run", "--config"])
        .arg(&other_path)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another daas-lb is running"), "{stderr}");
    assert_attached_once(&world.env.cgroup);
    assert_eq!(reply_via(&world.env.cgroup, "x").as_deref(), Some("b1:x"));
    stop(first);
    assert_nothing_left(&world.env.cgroup, world.env.pins.path());
}
