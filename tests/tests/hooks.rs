//! Which hook the forwarder for remote clients runs in on each interface,
//! on real veths: the real `daas-lb` in the node namespace of a
//! [`Topology`] (client and backend behind veth pairs), with the hosts'
//! transmit checksum offload as each test sets it.
//!
//! Checked: with default offloads `hook: auto` puts every veth on tc (tcx
//! links pinned at `links/tc@<if>`, no XDP program on the device); native
//! XDP asked for on a veth whose peer sends partial checksums is refused at
//! start with the reason, and attached once the peer's offload is off;
//! `mode: skb` is generic XDP; a native attach the driver refuses (a peer
//! MTU above veth's native-XDP limit: ERANGE) falls back to generic XDP
//! under `hook: xdp, mode: auto` and fails under `mode: driver`; tc links
//! survive SIGKILL, are adopted by the next run (same link), and `daas-lb
//! cleanup` removes them; an interface switching hook loses its old link.
//! The clsact path of kernels without tcx (this one has tcx) is driven
//! directly: a filter at daas-lb's preference and handle that a second
//! run's program replaces and that leaves with its program.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use lb_tests::{
    API, Daemon, NetNs, PinDir, TempDir, TestCgroup, bpftool, daas_lb_bin, metric, privileged, sh,
    topology::{CLIENT_IF, HOST_IF, NsGuard, Topology},
    write_config,
    xdp_fixture::XdpFixture,
};
use lb_userspace::{
    api::status::Status,
    kernel::{HookInUse, attach_clsact},
};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One test's world: the topology (dropped last), the node's cgroup, pins
/// and temp dir, and the daemon (dropped first). The test's thread stays
/// in the node namespace, where the daemon's API listens.
struct World {
    daemon: Option<Daemon>,
    tmp: TempDir,
    pins: PinDir,
    cgroup: TestCgroup,
    _in_node: NsGuard,
    topo: Topology,
}

impl World {
    /// `None` when privileged tests cannot run here (see [`privileged`]).
    /// Transmit checksum offload on the hosts' `eth0` is `tx_csum`
    /// (`true` = the kernel's default for a veth).
    fn new(test: &str, tx_csum: bool) -> Option<Self> {
        if !privileged(test) {
            return None;
        }
        let topo = Topology::new(1);
        topo.set_tx_checksum(tx_csum);
        Some(Self {
            daemon: None,
            tmp: TempDir::new(),
            pins: PinDir::new(),
            cgroup: TestCgroup::new(),
            _in_node: topo.enter(&topo.node),
            topo,
        })
    }

    /// Writes the config (`xdp_block` as the `xdp:` block's lines, one
    /// remote service) and returns its path.
    fn write_config(&self, xdp_block: &str) -> String {
        let services = format!(
            "  - name: web\n    vip: \"10.96.0.10:80\"\n    servers: [\"{}:8080\"]\n    remote: true\n",
            self.topo.backend("b1").v4
        );
        write_config(
            &self.tmp,
            &self.pins,
            &self.cgroup,
            &format!("xdp:\n{xdp_block}"),
            &services,
        )
    }

    /// Starts the daemon in the node namespace with `xdp_block`.
    fn spawn(&mut self, xdp_block: &str) -> &mut Daemon {
        let config = self.write_config(xdp_block);
        let daemon = self.topo.spawn_daemon(&self.tmp, &config);
        self.daemon.insert(daemon)
    }

    /// [`World::spawn`], then waits until the status shows every hook.
    fn start(&mut self, xdp_block: &str) -> Vec<HookInUse> {
        let interfaces = self.topo.node_interfaces().len();
        let status = self
            .spawn(xdp_block)
            .wait_for(START_TIMEOUT, "hooks in status", |s| {
                s.xdp.as_ref().is_some_and(|x| x.hooks.len() == interfaces)
            });
        hooks(&status)
    }

    /// [`World::spawn`], expecting the start to fail; returns the log.
    fn start_fails(&mut self, xdp_block: &str) -> String {
        let daemon = self.spawn(xdp_block);
        let exit = daemon.wait_exit(START_TIMEOUT);
        let log = daemon.log();
        assert!(!exit.success(), "daas-lb started:\n{log}");
        self.daemon = None;
        log
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("daemon started")
    }

    /// `links/<name>` under the pin directory.
    fn pin(&self, name: &str) -> PathBuf {
        self.pins.path().join("links").join(name)
    }

    /// The XDP attach mode of node device `dev` (`ip -d -j link`), if any.
    fn xdp_mode(&self, dev: &str) -> Option<String> {
        let out = self
            .topo
            .sh(&self.topo.node, "ip", &["-j", "-d", "link", "show", dev]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
        // 1 = native (driver), 2 = generic (skb), 3 = offload
        v[0]["xdp"]["mode"].as_u64().map(|m| match m {
            1 => "driver".to_owned(),
            2 => "skb".to_owned(),
            other => other.to_string(),
        })
    }

    /// The programs on node device `dev`'s tcx ingress, as (name, id),
    /// from the kernel (`BPF_PROG_QUERY`; the test's thread is in the node
    /// namespace). bpftool 7.1 does not list tcx programs.
    fn tcx_programs(dev: &str) -> Vec<(String, u64)> {
        let (_, programs) = SchedClassifier::query_tcx(dev, TcAttachType::Ingress)
            .unwrap_or_else(|e| panic!("BPF_PROG_QUERY of {dev}'s tcx ingress: {e}"));
        programs
            .iter()
            .map(|p| {
                (
                    p.name_as_str().unwrap_or_default().to_owned(),
                    u64::from(p.id()),
                )
            })
            .collect()
    }

    /// Waits (at most 5 s) until node device `dev` has no tcx program: the
    /// kernel releases an unpinned link's attachment once bpffs frees the
    /// pin's inode, an RCU grace period after the unlink.
    fn wait_no_tcx(dev: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let programs = Self::tcx_programs(dev);
            if programs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{dev} still has {programs:?} on tcx ingress 5 s after its link was unpinned"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ifindex of node device `dev`.
    fn ifindex(&self, dev: &str) -> u64 {
        let out = self
            .topo
            .sh(&self.topo.node, "ip", &["-j", "link", "show", dev]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
        v[0]["ifindex"].as_u64().expect("ifindex")
    }

    /// Asserts that `lb_tc` runs on every node device through a tcx link
    /// pinned at `links/tc@<dev>` and that no XDP program is attached;
    /// returns each link's (id, program id).
    fn assert_on_tc(&self) -> Vec<(u64, u64)> {
        let mut links = Vec::new();
        for dev in self.topo.node_interfaces() {
            assert!(!self.pin(&format!("xdp@{dev}")).exists(), "{dev}: XDP pin");
            assert_eq!(self.xdp_mode(&dev), None, "{dev} has an XDP program");
            let pin = self.pin(&format!("tc@{dev}"));
            let link = bpftool(&["link", "show", "pinned", &pin.display().to_string()]);
            // Newer bpftool names the type (`tcx`); 7.1 prints
            // BPF_LINK_TYPE_TCX's number and no ifindex.
            assert!(
                link["type"] == "tcx" || link["type"] == 11,
                "{dev}: not a tcx link: {link}"
            );
            if let Some(ifindex) = link["ifindex"].as_u64() {
                assert_eq!(ifindex, self.ifindex(&dev), "{dev}: {link}");
            }
            let prog_id = link["prog_id"].as_u64().expect("prog id");
            assert_eq!(
                Self::tcx_programs(&dev),
                [("lb_tc".to_owned(), prog_id)],
                "{dev}: tcx ingress"
            );
            links.push((link["id"].as_u64().expect("link id"), prog_id));
        }
        links
    }
}

/// The hooks of the status document.
fn hooks(status: &Status) -> Vec<HookInUse> {
    status
        .xdp
        .as_ref()
        .map(|x| x.hooks.clone())
        .unwrap_or_default()
}

/// The `xdp:` block lines listing every node device, then `rest`.
fn block(topo: &Topology, rest: &str) -> String {
    format!(
        "  interfaces: [{}]\n{rest}",
        topo.node_interfaces().join(", ")
    )
}

/// With the kernel's default offloads (partial checksums from the hosts)
/// and default settings, every veth gets tc; the status, the start-up log
/// and the metrics say so and why.
#[test]
fn auto_puts_veths_with_default_offloads_on_tc() {
    let Some(mut world) = World::new("auto_puts_veths_with_default_offloads_on_tc", true) else {
        return;
    };
    let hooks = world.start(&block(&world.topo, ""));
    for (hook, dev) in hooks.iter().zip(world.topo.node_interfaces()) {
        assert_eq!(
            (
                hook.interface.as_str(),
                hook.hook.as_str(),
                hook.mode.as_str()
            ),
            (dev.as_str(), "tc", "tcx"),
            "{hooks:?}"
        );
        assert_eq!(hook.why, "auto: veth -> tc");
    }
    world.assert_on_tc();
    let text = world.daemon().metrics();
    for dev in world.topo.node_interfaces() {
        assert_eq!(
            metric(
                &text,
                "daas_lb_remote_hook",
                &[("interface", &dev), ("hook", "tc"), ("mode", "tcx")]
            ),
            Some(1.0),
            "{text}"
        );
    }
    let log = world.daemon().log();
    assert!(
        log.contains("forwarding remote clients' packets") && log.contains("auto: veth -> tc"),
        "{log}"
    );
    let table = Command::new(daas_lb_bin())
        .args(["status", "--api"])
        .arg(API.to_string())
        .output()
        .expect("daas-lb status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!("  {CLIENT_IF}: tc tcx (auto: veth -> tc)")),
        "{table}"
    );
    world.daemon().stop();
    for dev in world.topo.node_interfaces() {
        assert!(!world.pin(&format!("tc@{dev}")).exists(), "{dev}");
        World::wait_no_tcx(&dev);
    }
}

/// `hook: xdp` on a veth whose peer has transmit checksum offload on (the
/// peer in another namespace, found through `/run/netns`) is refused at
/// start with the reason and what to use, and nothing stays attached; with
/// the offload off on the peers, native XDP is attached.
#[test]
fn native_xdp_on_a_veth_whose_peer_sends_partial_checksums_is_refused() {
    let Some(mut world) = World::new(
        "native_xdp_on_a_veth_whose_peer_sends_partial_checksums_is_refused",
        true,
    ) else {
        return;
    };
    let xdp = block(&world.topo, "  hook: xdp\n");
    let log = world.start_fails(&xdp);
    for part in [
        format!(
            "xdp.interfaces[0]: interface {CLIENT_IF}: `hook: xdp, mode: auto` asks for native XDP, which is refused because it is a veth whose peer {HOST_IF} has transmit checksum offload on"
        ),
        "CHECKSUM_PARTIAL".to_owned(),
        "use `hook: tc` (or `hook: auto`), or `mode: skb`".to_owned(),
        format!("`ethtool -K {HOST_IF} tx off` in the peer's network namespace"),
    ] {
        assert!(log.contains(&part), "{part:?} not in:\n{log}");
    }
    for dev in world.topo.node_interfaces() {
        assert_eq!(world.xdp_mode(&dev), None, "{dev}");
        assert!(!world.pin(&format!("xdp@{dev}")).exists(), "{dev}");
    }
    // `mode: driver` alone asks for native XDP too.
    let log = world.start_fails(&block(&world.topo, "  mode: driver\n"));
    assert!(
        log.contains(&format!(
            "interface {CLIENT_IF}: `mode: driver` asks for native XDP, which is refused"
        )),
        "{log}"
    );

    world.topo.set_tx_checksum(false);
    let hooks = world.start(&xdp);
    for (hook, dev) in hooks.iter().zip(world.topo.node_interfaces()) {
        assert_eq!(
            (hook.hook.as_str(), hook.mode.as_str(), hook.why.as_str()),
            ("xdp", "driver", "hook: xdp on veth"),
            "{hooks:?}"
        );
        assert_eq!(world.xdp_mode(&dev).as_deref(), Some("driver"), "{dev}");
        assert!(world.pin(&format!("xdp@{dev}")).exists(), "{dev}");
        assert!(!world.pin(&format!("tc@{dev}")).exists(), "{dev}");
    }
}

/// `hook: xdp, mode: skb` is generic XDP, whatever the peers' offloads.
#[test]
fn xdp_in_skb_mode_is_generic_xdp() {
    let Some(mut world) = World::new("xdp_in_skb_mode_is_generic_xdp", true) else {
        return;
    };
    let hooks = world.start(&block(&world.topo, "  hook: xdp\n  mode: skb\n"));
    for (hook, dev) in hooks.iter().zip(world.topo.node_interfaces()) {
        assert_eq!(
            (hook.hook.as_str(), hook.mode.as_str(), hook.why.as_str()),
            ("xdp", "skb", "mode: skb -> generic XDP"),
        );
        assert_eq!(world.xdp_mode(&dev).as_deref(), Some("skb"), "{dev}");
    }
}

/// A native attach the driver refuses: veth refuses native XDP (ERANGE)
/// while its peer's MTU is above what one page holds. Under `hook: xdp,
/// mode: auto` the interface falls back to generic XDP with a warning
/// naming it and the errno; `mode: driver` fails with the hint; the other
/// interface keeps native XDP.
#[test]
fn a_native_attach_the_driver_refuses_falls_back_unless_driver_mode_was_asked() {
    let Some(mut world) = World::new(
        "a_native_attach_the_driver_refuses_falls_back_unless_driver_mode_was_asked",
        false,
    ) else {
        return;
    };
    let client_ns = world.topo.client.ns.clone();
    world
        .topo
        .sh(&client_ns, "ip", &["link", "set", HOST_IF, "mtu", "9000"]);

    let log = world.start_fails(&block(&world.topo, "  hook: xdp\n  mode: driver\n"));
    assert!(
        log.contains(&format!(
            "attaching lb_xdp to interface {CLIENT_IF} in mode driver; the driver refused it: use `hook: tc` (or `hook: auto`), or `mode: skb`"
        )),
        "{log}"
    );
    assert_eq!(world.xdp_mode(CLIENT_IF), None);

    let hooks = world.start(&block(&world.topo, "  hook: xdp\n"));
    assert_eq!(
        (
            hooks[0].interface.as_str(),
            hooks[0].hook.as_str(),
            hooks[0].mode.as_str()
        ),
        (CLIENT_IF, "xdp", "skb"),
        "{hooks:?}"
    );
    assert_eq!(
        hooks[0].why,
        "hook: xdp on veth; the driver refused it (ERANGE) -> generic XDP"
    );
    assert_eq!(world.xdp_mode(CLIENT_IF).as_deref(), Some("skb"));
    assert_eq!(
        (hooks[1].hook.as_str(), hooks[1].mode.as_str()),
        ("xdp", "driver")
    );
    let log = world.daemon().log();
    assert!(
        log.contains("the driver refused native XDP; falling back")
            && log.contains(&format!("interface=\"{CLIENT_IF}\""))
            && log.contains("errno=\"ERANGE\""),
        "{log}"
    );
}

/// tc links outlive a daemon killed by SIGKILL (still attached and pinned), the
/// next run adopts the same links with its own program, an interface that
/// switches hook loses its old link, and `daas-lb cleanup` removes the rest.
#[test]
fn tc_links_survive_sigkill_are_adopted_and_cleaned_up() {
    let Some(mut world) = World::new("tc_links_survive_sigkill_are_adopted_and_cleaned_up", true)
    else {
        return;
    };
    world.start(&block(&world.topo, ""));
    let before = world.assert_on_tc();
    world.daemon().signal(libc::SIGKILL);
    world.daemon().wait_exit(Duration::from_secs(10));
    world.daemon = None;
    assert_eq!(world.assert_on_tc(), before, "links changed by the crash");

    world.start(&block(&world.topo, ""));
    let after = world.assert_on_tc();
    for ((link, prog), (new_link, new_prog)) in before.iter().zip(&after) {
        assert_eq!(link, new_link, "a new link instead of adopting");
        assert_ne!(prog, new_prog, "the new run's program was not swapped in");
    }
    let log = world.daemon().log();
    assert!(log.contains("adopted existing link"), "{log}");

    // Crash again; the next run puts the client's interface on generic
    // XDP: its tc link goes, the backend's is adopted.
    world.daemon().signal(libc::SIGKILL);
    world.daemon().wait_exit(Duration::from_secs(10));
    world.daemon = None;
    let backend_if = world.topo.backend("b1").node_if.clone();
    let hooks = world.start(&format!(
        "  interfaces: [{{ name: {CLIENT_IF}, hook: xdp, mode: skb }}, {backend_if}]\n"
    ));
    assert_eq!(
        (hooks[0].hook.as_str(), hooks[0].mode.as_str()),
        ("xdp", "skb")
    );
    assert_eq!(
        (hooks[1].hook.as_str(), hooks[1].mode.as_str()),
        ("tc", "tcx")
    );
    assert_eq!(world.xdp_mode(CLIENT_IF).as_deref(), Some("skb"));
    assert!(!world.pin(&format!("tc@{CLIENT_IF}")).exists());
    World::wait_no_tcx(CLIENT_IF);
    let backend_link = bpftool(&[
        "link",
        "show",
        "pinned",
        &world.pin(&format!("tc@{backend_if}")).display().to_string(),
    ]);
    assert_eq!(backend_link["id"].as_u64(), Some(after[1].0));

    world.daemon().signal(libc::SIGKILL);
    world.daemon().wait_exit(Duration::from_secs(10));
    world.daemon = None;
    let cleanup = Command::new(daas_lb_bin())
        .args(["cleanup", "--bpffs-dir"])
        .arg(world.pins.path())
        .output()
        .expect("daas-lb cleanup");
    let out = String::from_utf8_lossy(&cleanup.stdout);
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(out.contains(&format!("links/tc@{backend_if}")), "{out}");
    assert!(out.contains(&format!("links/xdp@{CLIENT_IF}")), "{out}");
    assert!(!world.pins.path().exists(), "pins left");
    for dev in world.topo.node_interfaces() {
        World::wait_no_tcx(&dev);
        assert_eq!(world.xdp_mode(&dev), None, "{dev}");
    }
}

/// The `bpf` filters on `dev`'s clsact ingress as `(pref, handle, program
/// id, program name)`, from `tc -j filter show`.
fn clsact_filters(dev: &str) -> Vec<(u64, String, u64, String)> {
    let out = Command::new("tc")
        .args(["-j", "filter", "show", "dev", dev, "ingress"])
        .output()
        .expect("run tc");
    assert!(out.status.success(), "tc filter show: {out:?}");
    let filters: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("tc -j filter show prints JSON");
    filters
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|f| {
            let options = f.get("options")?;
            Some((
                f["pref"].as_u64().expect("pref"),
                options["handle"].as_str().expect("handle").to_owned(),
                options["prog"]["id"].as_u64().expect("prog id"),
                options["prog"]["name"]
                    .as_str()
                    .expect("prog name")
                    .to_owned(),
            ))
        })
        .collect()
}

/// Kernels without tcx (before 6.6) get `lb_tc` as a filter of the
/// interface's clsact qdisc, preference 49 and handle 1. This kernel has
/// tcx, so the path is driven directly on a veth: the first
/// attach creates the qdisc and the filter; a second run's program
/// replaces that filter in place (one filter, the new program); the filter
/// leaves with the program that holds it, and the older program's exit
/// finds nothing left to remove.
#[test]
fn clsact_fallback_attaches_replaces_and_leaves_with_its_program() {
    if !privileged("clsact_fallback_attaches_replaces_and_leaves_with_its_program") {
        return;
    }
    let _ns = NetNs::new();
    let dev = "lbclsact0";
    sh(
        "ip",
        &[
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            "lbclsact1",
        ],
    );
    sh("ip", &["link", "set", dev, "up"]);
    let mut first = XdpFixture::load().expect("load the programs");
    let first_id = first.tc_program().info().expect("lb_tc info").id();
    attach_clsact(first.tc_program(), dev).expect("first attach");
    assert_eq!(
        clsact_filters(dev),
        vec![(
            49,
            "0x1".to_owned(),
            u64::from(first_id),
            "lb_tc".to_owned()
        )],
        "one filter at daas-lb's preference and handle"
    );

    let mut second = XdpFixture::load().expect("load the programs again");
    let second_id = second.tc_program().info().expect("lb_tc info").id();
    assert_ne!(first_id, second_id);
    attach_clsact(second.tc_program(), dev).expect("second attach replaces");
    assert_eq!(
        clsact_filters(dev),
        vec![(
            49,
            "0x1".to_owned(),
            u64::from(second_id),
            "lb_tc".to_owned()
        )],
        "the second run's program replaced the filter"
    );

    drop(second);
    assert_eq!(
        clsact_filters(dev),
        vec![],
        "the filter left with its program"
    );
    drop(first);
    assert_eq!(clsact_filters(dev), vec![], "nothing left after both exits");
}
