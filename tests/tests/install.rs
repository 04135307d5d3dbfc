//! The operator's side of daas-lb: the install route (`cargo xtask install`
//! into a staging root), the systemd unit (`systemd-analyze verify`), the
//! command line (`--version`, `check-config FILE`, `cleanup`) and running
//! under `ip netns exec` (bpffs and cgroup2 mounted by the daemon itself).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    API, Daemon, TcpBackend, TempDir, TestCgroup, TestEnv, cgroup_programs, cgroup2_root,
    control_socket_in, daas_lb_bin, privileged, service,
    topology::{NamedNetns, sibling_binary},
    unique,
};

/// Bound for one command (install, verify, check-config, cleanup).
const COMMAND_TIMEOUT: Duration = Duration::from_mins(1);

/// Whether `CI=true`: a missing tool is then a failure, never a skip.
fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether `program` is in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs `command` to completion (at most [`COMMAND_TIMEOUT`]).
fn output(command: &mut Command) -> Output {
    lb_tests::topology::output_within(command, COMMAND_TIMEOUT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `daas-lb ARGS...`.
fn daas_lb(args: &[&str]) -> Output {
    output(Command::new(daas_lb_bin()).args(args))
}

/// `cargo xtask install --destdir ROOT --binary <daas-lb under test>`,
/// through the xtask binary `cargo xtask` runs (no cargo build inside the
/// test). Panics unless it succeeds; returns its log.
fn install_into(root: &Path) -> String {
    let xtask = sibling_binary("XTASK_BIN", "xtask");
    let out = output(
        Command::new(xtask)
            .args(["install", "--destdir"])
            .arg(root)
            .arg("--binary")
            .arg(daas_lb_bin()),
    );
    assert!(
        out.status.success(),
        "xtask install: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The files of the Debian layout, their modes, the installed binary's
/// `--version` and `check-config` of the installed default config; a
/// second install keeps an edited config (a conffile) and replaces the rest.
#[test]
fn install_puts_the_debian_layout_in_place_and_keeps_an_edited_config() {
    let tmp = TempDir::new();
    let root = tmp.path().join("root");
    install_into(&root);

    let bin = root.join("usr/bin/daas-lb");
    let unit = root.join("lib/systemd/system/daas-lb.service");
    let config = root.join("etc/daas-lb/config.yaml");
    let readme = root.join("usr/share/doc/daas-lb/README.md");
    let guide = root.join("usr/share/doc/daas-lb/k3s.md");
    let example = root.join("usr/share/doc/daas-lb/examples/config.yaml");
    let state = root.join("var/lib/daas-lb");
    for (path, expected) in [
        (&bin, 0o755),
        (&unit, 0o644),
        (&config, 0o644),
        (&readme, 0o644),
        (&guide, 0o644),
        (&example, 0o644),
        (&state, 0o700),
    ] {
        assert_eq!(mode(path), expected, "mode of {}", path.display());
    }
    assert!(state.is_dir());
    let unit_text = fs::read_to_string(&unit).unwrap();
    assert!(
        unit_text.contains("ExecStart=/usr/bin/daas-lb run --config /etc/daas-lb/config.yaml\n")
            && unit_text.contains("ExecReload=/usr/bin/daas-lb reload\n"),
        "{unit_text}"
    );

    assert_names_daas_lb(&output(Command::new(&bin).arg("--version")));
    let check = output(Command::new(&bin).arg("check-config").arg(&config));
    assert!(
        check.status.success(),
        "{}{}",
        text(&check.stdout),
        text(&check.stderr)
    );
    assert_eq!(
        text(&check.stdout),
        format!("{}: valid (0 services, 0 warnings)\n", config.display())
    );

    // The operator edits the config; installing again must keep it.
    let edited = format!(
        "{}# edited by the operator\n",
        fs::read_to_string(&config).unwrap()
    );
    fs::write(&config, &edited).unwrap();
    fs::write(&bin, b"stale").unwrap();
    let log = install_into(&root);
    assert_eq!(fs::read_to_string(&config).unwrap(), edited);
    assert!(log.contains("kept the existing"), "{log}");
    assert_eq!(
        fs::read(&bin).unwrap(),
        fs::read(daas_lb_bin()).unwrap(),
        "the binary was not replaced"
    );
}

/// `systemd-analyze verify` of the installed unit, against a root holding
/// the host's own units (for `multi-user.target`, `network-online.target`,
/// ...) and the installed tree. It must print nothing (an unknown key is
/// only a warning there) and exit 0; a unit whose `ExecStart` binary is
/// missing must fail, so the check is known to bite.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if !on_path("systemd-analyze") {
        assert!(
            !in_ci(),
            "systemd-analyze is missing under CI=true (cargo xtask setup installs `systemd`)"
        );
        eprintln!("skipping: no systemd-analyze (apt-get install systemd)");
        return;
    }
    let tmp = TempDir::new();
    let root = tmp.path().join("root");
    let units = root.join("lib/systemd/system");
    fs::create_dir_all(&units).unwrap();
    for entry in fs::read_dir("/lib/systemd/system").expect("the host's systemd units") {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), units.join(entry.file_name())).unwrap();
        }
    }
    install_into(&root);
    let unit = units.join("daas-lb.service");

    let verify = |unit: &Path| {
        output(
            Command::new("systemd-analyze")
                .arg("verify")
                .arg(format!("--root={}", root.display()))
                .arg(unit),
        )
    };
    let out = verify(&unit);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned:\n{said}"
    );

    // The same unit with a typo'd key and a binary that is not there.
    let broken = units.join("daas-lb-broken.service");
    let text_of_unit = fs::read_to_string(&unit).unwrap();
    fs::write(
        &broken,
        text_of_unit.replace("/usr/bin/daas-lb", "/usr/bin/daas-lb-missing")
            + "\n[Service]\nRestartSecs=1\n",
    )
    .unwrap();
    let out = verify(&broken);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "a broken unit passed:\n{said}");
    assert!(
        said.contains("daas-lb-missing") && said.contains("RestartSecs"),
        "{said}"
    );
}

/// `daas-lb --version` names the program, not the crate.
#[test]
fn version_names_daas_lb() {
    assert_names_daas_lb(&daas_lb(&["--version"]));
}

/// `--version`'s output is `daas-lb X.Y.Z` and a newline.
fn assert_names_daas_lb(out: &Output) {
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    let version = stdout
        .strip_prefix("daas-lb ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("--version printed {stdout:?}"));
    let parts: Vec<&str> = version.split('.').collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
        "--version printed {stdout:?}"
    );
}

/// `check-config FILE` and `check-config --config FILE` say the same; an
/// invalid file fails both ways; neither form together with the other.
#[test]
fn check_config_takes_the_file_as_an_argument_or_with_config() {
    let tmp = TempDir::new();
    let good = tmp.file(
        "good.yaml",
        "services:\n  - name: a\n    vip: 127.0.0.1:6444\n    servers: [\"127.0.0.1:1\"]\n",
    );
    let bad = tmp.file("bad.yaml", "services:\n  - name: a\n    vipp: 1\n");
    let good_arg = good.display().to_string();
    let bad_arg = bad.display().to_string();
    let expected = format!("{good_arg}: valid (1 services, 0 warnings)\n");
    for args in [
        vec!["check-config", good_arg.as_str()],
        vec!["check-config", "--config", good_arg.as_str()],
    ] {
        let out = daas_lb(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), expected, "{args:?}");
    }
    for args in [
        vec!["check-config", bad_arg.as_str()],
        vec!["check-config", "--config", bad_arg.as_str()],
    ] {
        let out = daas_lb(&args);
        assert!(!out.status.success(), "{args:?} accepted a bad config");
        assert!(text(&out.stderr).contains("vipp"), "{args:?}: {out:?}");
    }
    let both = daas_lb(&["check-config", &good_arg, "--config", &good_arg]);
    assert!(!both.status.success(), "{both:?}");
    let neither = daas_lb(&["check-config"]);
    assert!(!neither.status.success(), "{neither:?}");
}

/// `cleanup` on what is not a daas-lb pin directory fails with a message
/// saying why and removes nothing: a path that does not exist (a typo), a
/// directory that is not on bpffs, a bpffs directory holding something
/// daas-lb does not create, an empty one.
#[test]
fn cleanup_refuses_what_is_not_a_pin_directory_and_removes_nothing() {
    if !privileged("cleanup_refuses") {
        return;
    }
    let refused = |dir: &Path, why: &str| {
        let out = daas_lb(&["cleanup", "--bpffs-dir", &dir.display().to_string()]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "cleanup {} succeeded", dir.display());
        assert!(
            stderr.contains(why) && stderr.contains("nothing removed"),
            "expected {why:?} in:\n{stderr}"
        );
    };
    refused(
        Path::new("/sys/fs/bpf/daas-lb-typo-that-does-not-exist"),
        "does not exist",
    );

    let tmp = TempDir::new();
    let kept = tmp.file("lb_services", "not a pin");
    refused(tmp.path(), "is not on bpffs");
    assert!(kept.exists());

    let dir = BpffsDir::new();
    let foreign = dir.0.join("someone-elses");
    fs::create_dir(&foreign).unwrap();
    refused(
        &dir.0,
        "holds entries daas-lb does not create (someone-elses)",
    );
    assert!(foreign.is_dir());
    fs::remove_dir(&foreign).unwrap();
    refused(&dir.0, "is empty");
    assert!(dir.0.is_dir());
}

/// A directory on bpffs made by the test, removed (when empty) on drop.
struct BpffsDir(PathBuf);

impl BpffsDir {
    fn new() -> Self {
        let path = Path::new("/sys/fs/bpf").join(unique("daas-lb-test-foreign"));
        fs::create_dir(&path).unwrap();
        Self(path)
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir(self.0.join("someone-elses"));
        let _ = fs::remove_dir(&self.0);
    }
}

/// `cleanup` refuses a pin directory a running daas-lb holds (it would
/// detach it); after a crash (SIGKILL) it detaches and unpins what the run
/// left, lists every link and map it removed, and leaves nothing behind.
#[test]
fn cleanup_lists_what_a_crashed_run_left_and_refuses_a_running_one() {
    let Some(env) = TestEnv::new("cleanup_lists") else {
        return;
    };
    let backend = TcpBackend::v4("b1");
    let mut daemon = env.start(&format!(
        "  - name: sup\n    vip: 127.0.0.1:6444\n    servers: [\"{}\"]\n",
        backend.addr
    ));
    daemon.wait_checked();
    let pins = env.pins.path().display().to_string();

    let out = daas_lb(&["cleanup", "--bpffs-dir", &pins]);
    assert!(
        !out.status.success(),
        "cleanup under a running daemon: {out:?}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("another daas-lb is running") && stderr.contains("stop it first"),
        "{stderr}"
    );
    assert!(
        cgroup_programs(env.cgroup.path())
            .iter()
            .any(|(_, name)| name == "lb_connect4"),
        "cleanup detached a running daemon"
    );
    let via_vip = env.cgroup.client(&["tcp", "127.0.0.1:6444", "x"]);
    assert_eq!(via_vip.reply.as_deref(), Some("b1:x"), "{via_vip:?}");

    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5));
    let out = daas_lb(&["cleanup", "--bpffs-dir", &pins]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for link in [
        "links/lb_connect4",
        "links/lb_connect6",
        "links/lb_sendmsg4",
        "links/lb_recvmsg6",
        "links/lb_getpeername4",
        "links/lb_sock_ops",
    ] {
        assert!(stdout.contains(link), "{link} not listed:\n{stdout}");
    }
    assert!(
        stdout.contains("detached and unpinned 9 link(s)"),
        "{stdout}"
    );
    for map in ["services", "backends"] {
        assert!(stdout.contains(map), "{map} not listed:\n{stdout}");
    }
    assert!(stdout.contains(&format!("{pins}: removed")), "{stdout}");
    assert!(!env.pins.path().exists());
    assert_eq!(cgroup_programs(env.cgroup.path()), Vec::new());
}

/// Its path inside a mount namespace where daas-lb mounted cgroup2 on
/// `/sys/fs/cgroup` (`ip netns exec`): relative to the host's cgroup2 root.
fn path_under_fresh_cgroup2_mount(cgroup: &TestCgroup) -> PathBuf {
    let root = cgroup2_root().expect("cgroup2 mount");
    Path::new("/sys/fs/cgroup").join(cgroup.path().strip_prefix(root).expect("below the root"))
}

/// Polls `check` every 20 ms until it holds or `within` passes.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `ip netns exec NAME daas-lb run` works: `ip` gives the daemon a fresh
/// sysfs on `/sys`, without bpffs or cgroup2; the daemon mounts both (and
/// says so), attaches to the test's cgroup through its path under the new
/// cgroup2 mount, and connects through the VIP in that namespace reach the
/// backend. Its pins live in its own bpffs (the host's `/sys/fs/bpf` never
/// sees them). SIGTERM detaches everything; after a SIGKILL the mount
/// namespace, and with it the pins, goes away, so the programs are detached
/// too, as the warning says. A cgroup path that does not exist under the
/// new mount gets an error that says what to pass.
#[test]
fn runs_under_ip_netns_exec_mounting_bpffs_and_cgroup2() {
    if !privileged("ip_netns_exec") {
        return;
    }
    let ns = NamedNetns::new();
    let _inside = ns.enter();
    let backend = TcpBackend::v4("b1");
    let cgroup = TestCgroup::new();
    let tmp = TempDir::new();
    let pin_dir = Path::new("/sys/fs/bpf").join(unique("daas-lb-test"));
    let inner_cgroup = path_under_fresh_cgroup2_mount(&cgroup);
    let config = |cgroup: &Path| {
        format!(
            "bpffs_dir: {}\ncgroup: {}\ndata_dir: {}\napi_addr: {API}\ncontrol_socket: {}\n\
             services:\n  - name: sup\n    vip: 127.0.0.1:6444\n    servers: [\"{}\"]\n",
            pin_dir.display(),
            cgroup.display(),
            tmp.path().join("data").display(),
            control_socket_in(tmp.path()).display(),
            backend.addr
        )
    };
    let config_file = tmp.file("config.yaml", &config(&inner_cgroup));
    let config_arg = config_file.display().to_string();

    let mut daemon =
        Daemon::spawn_with_ip_netns_exec(&["--config", &config_arg], tmp.path(), API, ns.name());
    let status = daemon.wait_checked();
    assert_eq!(
        service(&status, "sup").selected,
        Some(backend.addr.to_string())
    );
    let log = daemon.log();
    assert!(
        log.contains("no bpffs was mounted here") && log.contains("mounted a new one"),
        "{log}"
    );
    assert!(log.contains("no cgroup2 was mounted here"), "{log}");
    assert!(
        !pin_dir.exists(),
        "the pins are in the host's bpffs, not the daemon's own"
    );
    let attached = cgroup_programs(cgroup.path());
    assert!(
        attached.iter().any(|(_, name)| name == "lb_connect4"),
        "{attached:?}"
    );
    let out = cgroup.client(&["tcp", "127.0.0.1:6444", "x"]);
    assert_eq!(out.reply.as_deref(), Some("b1:x"), "{out:?}");
    assert_eq!(out.peer.as_deref(), Some("127.0.0.1:6444"), "{out:?}");

    daemon.stop();
    assert_eq!(cgroup_programs(cgroup.path()), Vec::new());

    daemon.relaunch();
    daemon.wait_checked();
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(10), || cgroup_programs(cgroup.path())
            .is_empty()),
        "still attached after the crash: {:?}",
        cgroup_programs(cgroup.path())
    );

    let missing = Path::new("/sys/fs/cgroup/daas-lb-no-such-cgroup");
    let bad_config = tmp.file("bad.yaml", &config(missing));
    let out = output(
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(daas_lb_bin())
            .arg("run")
            .arg("--config")
            .arg(&bad_config),
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("daas-lb-no-such-cgroup does not exist")
            && stderr.contains("relative to that mount")
            && stderr.contains("pass --cgroup"),
        "{stderr}"
    );
}
