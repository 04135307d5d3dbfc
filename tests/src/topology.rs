//! A small routed network of named network namespaces for the XDP/tc tests
//! and benchmarks: one client, one load-balancer node and N backends, each
//! host joined to the node by its own veth pair.
//!
//! ```text
//!   client                 node (forwarding on)                  backend k (1..=N)
//!   eth0 10.10.0.2/24 ─── to-client 10.10.0.1/24
//!        fd00:10::2/64         fd00:10::1/64
//!                          to-bk 10.20.k.1/24 ──────────────── eth0 10.20.k.2/24
//!                                fd00:20:k::1/64                     fd00:20:k::2/64
//! ```
//!
//! With [`TopologyBuilder::bridge`] the backends share one segment instead,
//! as pods (or Kind nodes) behind a Linux bridge do: the node's backend-side
//! addresses are on a bridge, [`BRIDGE_IF`], whose ports are the node's ends
//! of the backends' veths (no addresses on the ports).
//!
//! ```text
//!   node                                                       backend k (1..=N)
//!   br0 10.20.0.1/24, fd00:20::1/64
//!    ├─ to-b1 (port) ─────────────────────────────────────── eth0 10.20.0.11/24, fd00:20::11/64
//!    └─ to-bk (port) ─────────────────────────────────────── eth0 10.20.0.1k/24, fd00:20::1k/64
//! ```
//!
//! The client routes only [`VIP_NET_V4`]/[`VIP_NET_V6`] and the backend
//! subnets (`10.20.0.0/16`, `fd00:20::/32`) via the node; each backend routes
//! only the client subnet via the node. Nobody has a default route, so no
//! packet can leave the machine. The root namespace is not touched except
//! for creating and deleting the namespaces (`ip netns add/del`, which adds
//! the bind mounts under `/run/netns`).
//!
//! Also the child-process steps into namespaces: [`enter_netns_on_exec`]
//! and [`private_hosts_on_exec`] (a private `/etc/hosts` in a mount
//! namespace of the child's own).
//!
//! Names are `dlbt-<pid>-<n>-{client,node,b1,...}`. [`Topology`]'s drop
//! (also while unwinding from a panic) kills every process left in its
//! namespaces and deletes them; namespaces left by a test process that was
//! killed outright are deleted by the next [`Topology::new`].
//!
//! # Native XDP redirect into a veth (measured on Linux 6.18)
//!
//! `bpf_redirect` from an XDP program into a veth device hands the frame to
//! the veth's *peer*, which must run NAPI, or the frame is dropped: the
//! redirect fails inside `veth_xdp_xmit`, the *ingress* veth's
//! `rx_queue_0_drops` (`ethtool -S`) grows, while `lb_xdp` has already
//! counted a `redirect` verdict. The peer runs NAPI when it has an XDP
//! program attached or, without one, when GRO is enabled on it (`ethtool -K
//! <peer> gro on`, since Linux 5.13). Both checked on 6.18: with GRO off on
//! a backend's `eth0` a connect through the VIP times out; with GRO still off
//! but `lb_xdp_empty` attached there (driver mode) it works; with GRO on and
//! no program it works. [`Topology::new`] turns
//! GRO on for every host's `eth0` (the peers of the node's devices), so both
//! directions work (not with [`TopologyBuilder::default_offloads`]): client→backend redirects into `to-bk` (peer: backend
//! `eth0`) and replies redirect into `to-client` (peer: client `eth0`).
//! [`Topology::set_gro`] switches it for experiments.
//!
//! # Checksums: hosts send complete checksums, as from a wire
//!
//! A veth passes locally generated TCP/UDP packets on with
//! `CHECKSUM_PARTIAL`: the L4 checksum field holds only the pseudo-header
//! sum, to be completed by "hardware" that never comes. Native XDP sees the
//! raw bytes without that metadata, and a frame redirected into another
//! veth reaches the stack as `CHECKSUM_NONE`, so the receiver verifies the
//! partial sum and drops the segment (`TcpInCsumErrors` grows; a connect
//! through the VIP times out). Packets from a real NIC carry complete
//! checksums, so [`Topology::new`] turns transmit checksum offload off on
//! every host's `eth0` (`ethtool -K eth0 tx off`): the hosts' kernels then
//! compute full checksums like a remote machine's NIC would.
//! [`Topology::set_tx_checksum`] switches it back for experiments.
//!
//! # Default offloads
//!
//! [`TopologyBuilder::default_offloads`] leaves every device as the kernel
//! creates it (no `ethtool` at all): TX checksum offload on, so the hosts
//! send `CHECKSUM_PARTIAL` packets, and TSO/GSO on, so a TCP sender hands
//! the veth segments larger than the MTU; GRO off on veths. That is how
//! containers, pods and Kind nodes have them, and what a forwarder on the
//! node must handle without corrupting checksums.
//!
//! # Running things inside
//!
//! - [`Topology::command`] builds an `ip netns exec NS PROGRAM` command;
//!   [`Topology::sh`] runs one to completion, [`Topology::spawn`] starts one
//!   that is killed when its [`NsChild`] (or the topology) is dropped.
//! - [`enter_netns_on_exec`] makes a [`Command`] join a namespace just
//!   before `exec`, without `ip netns exec`. Use it for `daas-lb`: `ip netns
//!   exec` also unshares the mount namespace and remounts `/sys`, which hides
//!   `/sys/fs/bpf` and `/sys/fs/cgroup` from the program.
//! - [`NamedNetns`] is one named namespace on its own (only loopback), for
//!   a daemon started with `ip netns exec` itself.
//! - [`Topology::enter`] moves the calling thread into a namespace until
//!   the guard drops: sockets it creates meanwhile (a backend's listener, a
//!   client connection, an HTTP request to the daemon's API on the node's
//!   loopback) live in that namespace for good.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// Prefix of every namespace name this module creates.
pub const PREFIX: &str = "dlbt";
/// Where `ip netns` keeps its namespace bind mounts.
pub const NETNS_DIR: &str = "/run/netns";
/// The device name of every host's end of its link (client and backends).
pub const HOST_IF: &str = "eth0";
/// The node's end of the client link.
pub const CLIENT_IF: &str = "to-client";
/// The node's bridge of a bridged topology ([`TopologyBuilder::bridge`]).
pub const BRIDGE_IF: &str = "br0";
/// IPv4 VIPs: the client routes this subnet via the node.
pub const VIP_NET_V4: &str = "10.96.0.0/24";
/// IPv6 VIPs: the client routes this subnet via the node.
pub const VIP_NET_V6: &str = "fd00:96::/64";
/// The most backends a topology can have.
pub const MAX_BACKENDS: usize = 9;
/// The client's firewall chain that counts untranslated replies
/// ([`Topology::count_untranslated`]).
pub const UNTRANSLATED_CHAIN: &str = "UNTRANSLATED";
/// Upper bound for one `ip`/`ethtool`/`sysctl` command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One host (client or backend) and its link to the node.
#[derive(Debug, Clone)]
pub struct Host {
    /// Short name: `client`, `b1`, `b2`, ...
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its IPv4 address (on [`HOST_IF`]).
    pub v4: Ipv4Addr,
    /// Its IPv6 address.
    pub v6: Ipv6Addr,
    /// The node's IPv4 address on this link (the host's gateway).
    pub gw_v4: Ipv4Addr,
    /// The node's IPv6 address on this link.
    pub gw_v6: Ipv6Addr,
    /// The node's device on this link ([`CLIENT_IF`], `to-b1`, ...); in a
    /// bridged topology a backend's is a port of [`BRIDGE_IF`].
    pub node_if: String,
    /// The node's device that holds `gw_v4`/`gw_v6`: `node_if`, or
    /// [`BRIDGE_IF`] for a bridged backend.
    pub node_ip_if: String,
}

impl Host {
    /// Its address of the family of `like`.
    pub fn ip_like(&self, like: IpAddr) -> IpAddr {
        if like.is_ipv4() {
            self.v4.into()
        } else {
            self.v6.into()
        }
    }
}

/// Client, node and backends in their own namespaces; see the module docs.
pub struct Topology {
    prefix: String,
    /// The client host.
    pub client: Host,
    /// The node's namespace (the load balancer runs here).
    pub node: String,
    /// The backend hosts, `b1..=bN`.
    pub backends: Vec<Host>,
    /// [`BRIDGE_IF`] when the backends are ports of a bridge.
    bridge: Option<String>,
}

/// How to build a [`Topology`]: `Topology::builder().default_offloads()
/// .bridge().backends(3).build()`. Without the optional steps it is
/// [`Topology::new`]'s: routed links, GRO on and TX checksum offload off on
/// every host's `eth0`.
#[derive(Debug, Clone, Copy)]
pub struct TopologyBuilder {
    backends: usize,
    default_offloads: bool,
    bridge: bool,
}

impl TopologyBuilder {
    /// `n` backends (1..=9; default 1).
    #[must_use]
    pub fn backends(mut self, n: usize) -> Self {
        self.backends = n;
        self
    }

    /// Leave every device's offloads as the kernel sets them: no `ethtool`
    /// anywhere (see the module docs).
    #[must_use]
    pub fn default_offloads(mut self) -> Self {
        self.default_offloads = true;
        self
    }

    /// The backends behind a bridge ([`BRIDGE_IF`]) in the node instead of
    /// one routed link each (see the module docs).
    #[must_use]
    pub fn bridge(mut self) -> Self {
        self.bridge = true;
        self
    }

    /// Builds it; panics (after cleaning up) on failure.
    pub fn build(self) -> Topology {
        Topology::with(self)
    }
}

impl Topology {
    /// Builds the client, the node and `backends` backends (1..=9), GRO on
    /// and transmit checksum offload off on every host's `eth0`, forwarding
    /// on in the node, and resolves the neighbours on every link. Panics (after cleaning up) on failure.
    pub fn new(backends: usize) -> Self {
        Self::builder().backends(backends).build()
    }

    /// A [`TopologyBuilder`] for other shapes (default offloads, a bridge).
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder {
            backends: 1,
            default_offloads: false,
            bridge: false,
        }
    }

    fn with(options: TopologyBuilder) -> Self {
        let backends = options.backends;
        assert!(
            (1..=MAX_BACKENDS).contains(&backends),
            "1..={MAX_BACKENDS} backends"
        );
        remove_stale();
        let prefix = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // A host numbered `own` on a /24 (v4 prefix `net`) and /64 (v6
        // prefix `v6`) whose node side is `.1` / `::1`.
        let host =
            |name: &str, node_if: &str, node_ip_if: &str, net: [u8; 3], v6: &str, own: u8| Host {
                name: name.to_owned(),
                ns: format!("{prefix}-{name}"),
                v4: Ipv4Addr::new(net[0], net[1], net[2], own),
                v6: format!("{v6}::{own:x}").parse().expect("literal"),
                gw_v4: Ipv4Addr::new(net[0], net[1], net[2], 1),
                gw_v6: format!("{v6}::1").parse().expect("literal"),
                node_if: node_if.to_owned(),
                node_ip_if: node_ip_if.to_owned(),
            };
        let topology = Self {
            client: host("client", CLIENT_IF, CLIENT_IF, [10, 10, 0], "fd00:10", 2),
            node: format!("{prefix}-node"),
            backends: (1..=backends)
                .map(|k| {
                    let k8 = k as u8;
                    let port = format!("to-b{k}");
                    if options.bridge {
                        // 10.20.0.1k, fd00:20::1k (hex digits, same text).
                        let own = 0x10 + k8;
                        let mut h = host(
                            &format!("b{k}"),
                            &port,
                            BRIDGE_IF,
                            [10, 20, 0],
                            "fd00:20",
                            own,
                        );
                        h.v4 = Ipv4Addr::new(10, 20, 0, 10 + k8);
                        h
                    } else {
                        host(
                            &format!("b{k}"),
                            &port,
                            &port,
                            [10, 20, k8],
                            &format!("fd00:20:{k}"),
                            2,
                        )
                    }
                })
                .collect(),
            prefix,
            bridge: options.bridge.then(|| BRIDGE_IF.to_owned()),
        };
        // From here on, a panic drops `topology`, which deletes what exists.
        topology.build(options.default_offloads);
        topology
    }

    fn build(&self, default_offloads: bool) {
        let node = self.node.as_str();
        for ns in self.namespaces() {
            run_checked("ip", &["netns", "add", &ns]);
            run_checked("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        for sysctl in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            self.sh(node, "sysctl", &["-qw", sysctl]);
        }
        if let Some(bridge) = &self.bridge {
            run_checked("ip", &["-n", node, "link", "add", bridge, "type", "bridge"]);
            let gw = &self.backends[0];
            Self::address(node, bridge, gw.gw_v4, gw.gw_v6);
        }
        for host in self.hosts() {
            let ns = host.ns.as_str();
            run_checked(
                "ip",
                &[
                    "-n",
                    node,
                    "link",
                    "add",
                    &host.node_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    HOST_IF,
                    "netns",
                    ns,
                ],
            );
            if host.node_if == host.node_ip_if {
                Self::address(node, &host.node_if, host.gw_v4, host.gw_v6);
            } else {
                run_checked(
                    "ip",
                    &[
                        "-n",
                        node,
                        "link",
                        "set",
                        &host.node_if,
                        "master",
                        &host.node_ip_if,
                        "up",
                    ],
                );
            }
            Self::address(ns, HOST_IF, host.v4, host.v6);
        }
        let client = self.client.clone();
        let routes: [(&str, &str); 4] = [
            (VIP_NET_V4, "4"),
            (VIP_NET_V6, "6"),
            ("10.20.0.0/16", "4"),
            ("fd00:20::/32", "6"),
        ];
        for (net, family) in routes {
            let via = if family == "4" {
                client.gw_v4.to_string()
            } else {
                client.gw_v6.to_string()
            };
            run_checked("ip", &["-n", &client.ns, "route", "add", net, "via", &via]);
        }
        for backend in &self.backends {
            let routes = [
                ("10.10.0.0/24", backend.gw_v4.to_string()),
                ("fd00:10::/64", backend.gw_v6.to_string()),
            ];
            for (net, via) in routes {
                run_checked("ip", &["-n", &backend.ns, "route", "add", net, "via", &via]);
            }
        }
        if !default_offloads {
            self.set_gro(true);
            self.set_tx_checksum(false);
        }
        self.resolve_neighbours();
    }

    /// Puts `v4/24` and `v6/64` (no DAD) on `dev` in `ns` and sets it up.
    fn address(ns: &str, dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
        run_checked(
            "ip",
            &["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev],
        );
        run_checked(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ],
        );
        run_checked("ip", &["-n", ns, "link", "set", dev, "up"]);
    }

    /// The namespace name prefix of this topology (`dlbt-<pid>-<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Client and backends.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        std::iter::once(&self.client).chain(&self.backends)
    }

    /// Every namespace: client, node, backends.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.client.ns.clone(), self.node.clone()];
        all.extend(self.backends.iter().map(|b| b.ns.clone()));
        all
    }

    /// The node's ends of the veths: [`CLIENT_IF`], `to-b1`, ... (where XDP
    /// attaches; in a bridged topology the backends' are the bridge's ports).
    pub fn node_interfaces(&self) -> Vec<String> {
        self.hosts().map(|h| h.node_if.clone()).collect()
    }

    /// The node's devices that hold its addresses: [`CLIENT_IF`] and, per
    /// backend, its link (`to-b1`, ...) or, bridged, [`BRIDGE_IF`] once.
    /// These are the devices whose ingress sees every packet the node
    /// forwards: a backend's reply to the node's MAC enters its bridge port
    /// first and then, passed up by the bridge, the bridge device itself.
    pub fn node_ip_interfaces(&self) -> Vec<String> {
        let mut all: Vec<String> = self.hosts().map(|h| h.node_ip_if.clone()).collect();
        all.dedup();
        all
    }

    /// [`BRIDGE_IF`] in a bridged topology.
    pub fn bridge_if(&self) -> Option<&str> {
        self.bridge.as_deref()
    }

    /// Backend `name` (`b1`, ...).
    pub fn backend(&self, name: &str) -> &Host {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// `/run/netns/<ns>`.
    pub fn ns_path(ns: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(ns)
    }

    /// The real daemon started in the node namespace with `config` (see
    /// [`crate::write_config`]), its state in `tmp`, its API on [`crate::API`].
    pub fn spawn_daemon(&self, tmp: &crate::TempDir, config: &str) -> crate::Daemon {
        crate::Daemon::spawn_in_netns(
            &["--config", config],
            tmp.path(),
            crate::API,
            &Self::ns_path(&self.node),
        )
    }

    /// GRO (hence veth NAPI, hence native XDP redirect into the node's
    /// device) on or off on every host's `eth0`.
    pub fn set_gro(&self, on: bool) {
        let state = if on { "on" } else { "off" };
        for host in self.hosts() {
            self.sh(&host.ns, "ethtool", &["-K", HOST_IF, "gro", state]);
        }
    }

    /// Transmit checksum offload on or off on every host's `eth0` (off:
    /// complete checksums, as from a wire; see the module docs).
    pub fn set_tx_checksum(&self, on: bool) {
        let state = if on { "on" } else { "off" };
        for host in self.hosts() {
            self.sh(&host.ns, "ethtool", &["-K", HOST_IF, "tx", state]);
        }
    }

    /// Sends one datagram each way over every link (to the discard port) and
    /// waits until both ends have a usable neighbour entry (IPv4 and IPv6),
    /// so the first forwarded packet finds the MAC addresses.
    pub fn resolve_neighbours(&self) {
        let poke = |ns: &str, targets: &[IpAddr]| {
            let _inside = self.enter(ns);
            for &ip in targets {
                let bind: SocketAddr = if ip.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                if let Ok(socket) = UdpSocket::bind(bind) {
                    let _ = socket.send_to(b"", (ip, 9));
                }
            }
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut missing = Vec::new();
            for host in self.hosts() {
                let node_side = [IpAddr::from(host.v4), IpAddr::from(host.v6)];
                let host_side = [IpAddr::from(host.gw_v4), IpAddr::from(host.gw_v6)];
                for (ns, dev, targets) in [
                    (self.node.as_str(), host.node_ip_if.as_str(), node_side),
                    (host.ns.as_str(), HOST_IF, host_side),
                ] {
                    let known = Self::neighbours(ns, dev);
                    let absent: Vec<IpAddr> = targets
                        .into_iter()
                        .filter(|ip| !known.contains(ip))
                        .collect();
                    if !absent.is_empty() {
                        poke(ns, &absent);
                        missing.push(format!("{ns}/{dev}: {absent:?}"));
                    }
                }
            }
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "neighbours not resolved within 5 s: {missing:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Addresses with a usable (not INCOMPLETE/FAILED) neighbour entry on `dev`.
    fn neighbours(ns: &str, dev: &str) -> Vec<IpAddr> {
        let out = run_checked("ip", &["-n", ns, "-j", "neigh", "show", "dev", dev]);
        let entries: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                e["lladdr"].is_string()
                    && !e["state"].as_array().is_some_and(|s| {
                        s.iter()
                            .any(|v| v == "INCOMPLETE" || v == "FAILED" || v == "NONE")
                    })
            })
            .filter_map(|e| e["dst"].as_str()?.parse().ok())
            .collect()
    }

    /// `ip netns exec NS PROGRAM` (add arguments, stdio, ... and run it).
    pub fn command(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// Runs `program args` in `ns` to completion (at most 10 s); panics
    /// with its output unless it succeeds. Returns stdout.
    pub fn sh(&self, ns: &str, program: &str, args: &[&str]) -> String {
        let output = self.output(ns, program, args);
        assert!(
            output.status.success(),
            "in {ns}: {program} {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `program args` in `ns` to completion (at most 10 s; killed then).
    pub fn output(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        let mut cmd = self.command(ns, program);
        cmd.args(args);
        output_within(&mut cmd, COMMAND_TIMEOUT)
    }

    /// Starts `cmd` (e.g. from [`Topology::command`]); the process is killed
    /// when the returned [`NsChild`] is dropped, and anything still running
    /// in the namespaces when the topology is dropped is killed then.
    pub fn spawn(&self, cmd: &mut Command) -> NsChild {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        NsChild { child: Some(child) }
    }

    /// Moves the calling thread into `ns` until the guard is dropped.
    pub fn enter(&self, ns: &str) -> NsGuard {
        NsGuard::enter(&Self::ns_path(ns))
    }

    /// From now on the client's firewall counts every TCP/UDP packet that
    /// reaches it from a source outside [`VIP_NET_V4`]/[`VIP_NET_V6`]: a
    /// reply a forwarder failed to translate back to the VIP (when the
    /// client talks only to VIPs). Each goes through chain
    /// [`UNTRANSLATED_CHAIN`] (iptables and ip6tables), whose one rule
    /// counts and accepts it: nothing is hidden from the client.
    pub fn count_untranslated(&self) {
        let ns = &self.client.ns;
        for (tool, vips) in [("iptables", VIP_NET_V4), ("ip6tables", VIP_NET_V6)] {
            self.sh(ns, tool, &["-w", "-N", UNTRANSLATED_CHAIN]);
            self.sh(ns, tool, &["-w", "-A", UNTRANSLATED_CHAIN, "-j", "ACCEPT"]);
            for proto in ["tcp", "udp"] {
                self.sh(
                    ns,
                    tool,
                    &[
                        "-w",
                        "-A",
                        "INPUT",
                        "-i",
                        HOST_IF,
                        "!",
                        "-s",
                        vips,
                        "-p",
                        proto,
                        "-j",
                        UNTRANSLATED_CHAIN,
                    ],
                );
            }
        }
    }

    /// Packets counted by [`Topology::count_untranslated`]'s chains so far
    /// (IPv4 and IPv6).
    pub fn untranslated(&self) -> u64 {
        ["iptables", "ip6tables"]
            .iter()
            .map(|tool| {
                let out = self.sh(&self.client.ns, tool, &["-w", "-nvxL", UNTRANSLATED_CHAIN]);
                // Two header lines, then `pkts bytes target ...` rows.
                out.lines()
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum()
    }

    /// Sets [`Topology::untranslated`] back to 0.
    pub fn reset_untranslated(&self) {
        for tool in ["iptables", "ip6tables"] {
            self.sh(&self.client.ns, tool, &["-w", "-Z", UNTRANSLATED_CHAIN]);
        }
    }

    /// Packets received on `dev` in `ns` (the kernel's `rx_packets`).
    pub fn rx_packets(&self, ns: &str, dev: &str) -> u64 {
        link_stat(ns, dev, "rx", "packets")
    }

    /// A statistic of `dev` in `ns`: `ip -s -s -j link`'s `stats64[dir][name]`
    /// (dir `rx` or `tx`; names such as `packets`, `dropped`, `errors`).
    pub fn link_stat(&self, ns: &str, dev: &str, dir: &str, name: &str) -> u64 {
        link_stat(ns, dev, dir, name)
    }
}

fn link_stat(ns: &str, dev: &str, dir: &str, name: &str) -> u64 {
    let out = run_checked("ip", &["-n", ns, "-s", "-s", "-j", "link", "show", dev]);
    let value: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j link {dev}: {out:?}: {e}"));
    value[0]["stats64"][dir][name].as_u64().unwrap_or(0)
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces() {
            delete_namespace(&ns);
        }
    }
}

/// A process started in a namespace; killed (SIGKILL) and reaped on drop.
pub struct NsChild {
    child: Option<Child>,
}

impl NsChild {
    /// The process.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("not yet waited for")
    }

    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to it.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Waits at most `within` for it to exit (killing it then) and returns
    /// what it printed (stdout/stderr as far as they were piped).
    pub fn wait_output(mut self, within: Duration) -> Output {
        let child = self.child.take().expect("not yet waited for");
        wait_output_within(child, within)
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The calling thread's network namespace is another one until drop (drop
/// it on the thread that made it).
pub struct NsGuard {
    original: OwnedFd,
}

/// One named network namespace (`ip netns add`, name `dlbt-<pid>-<n>`)
/// with only loopback, up; on drop (also while unwinding) every process
/// left in it is killed and it is deleted.
pub struct NamedNetns {
    name: String,
}

impl NamedNetns {
    /// Adds the namespace and brings its `lo` up.
    pub fn new() -> Self {
        remove_stale();
        let ns = Self {
            name: crate::env::unique(PREFIX),
        };
        run_checked("ip", &["netns", "add", &ns.name]);
        run_checked("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Its name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the calling thread into it until the guard is dropped.
    pub fn enter(&self) -> NsGuard {
        NsGuard::enter(&Topology::ns_path(&self.name))
    }
}

impl Default for NamedNetns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        delete_namespace(&self.name);
    }
}

impl NsGuard {
    fn enter(path: &Path) -> Self {
        let original: OwnedFd = File::open("/proc/thread-self/ns/net")
            .expect("open /proc/thread-self/ns/net")
            .into();
        let target =
            File::open(path).unwrap_or_else(|e| panic!("open netns {}: {e}", path.display()));
        // SAFETY: setns only changes the calling thread's network namespace;
        // `target` is an open namespace file.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
        Self { original }
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        // SAFETY: `original` is the namespace the thread was in; setns only
        // changes the calling thread's membership.
        let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            eprintln!("setns back failed: {}", io::Error::last_os_error());
        }
    }
}

/// Makes `cmd`'s process join the network namespace at `netns` (e.g.
/// `/run/netns/NAME`) right before it execs. Unlike `ip netns exec`, the
/// mount namespace stays the same: bpffs and cgroup2 stay visible.
pub fn enter_netns_on_exec(cmd: &mut Command, netns: &Path) {
    let file = File::open(netns).unwrap_or_else(|e| panic!("open netns {}: {e}", netns.display()));
    let fd: OwnedFd = file.into();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setns(2), which is async-signal-safe, on an fd the closure owns (it is
    // moved in, so it stays open in the parent's copy of the closure too
    // and is closed when the Command is dropped).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// Makes `cmd` run in a mount namespace of its own (`unshare(CLONE_NEWNS)`,
/// every mount made private so nothing propagates back) where `hosts` is
/// bind-mounted over `/etc/hosts`. Only the child's namespace changes: the
/// host's `/etc/hosts` is never written, and the namespace (with the bind
/// mount) is gone when the child exits, also when the test panics. The bind
/// mount pins `hosts`' inode: rewrite it in place (truncate and write, as
/// `fs::write` does), never by rename.
pub fn private_hosts_on_exec(cmd: &mut Command, hosts: &Path) {
    let source = CString::new(hosts.as_os_str().as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", hosts.display()));
    // SAFETY: the closure runs in the forked child before exec and only
    // calls unshare(2) and mount(2), which are async-signal-safe, on
    // NUL-terminated strings prepared before the fork (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::mount(
                source.as_ptr(),
                c"/etc/hosts".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `cmd` capturing its output, killing it after `within`.
pub fn output_within(cmd: &mut Command, within: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    wait_output_within(child, within)
}

fn wait_output_within(mut child: Child, within: Duration) -> Output {
    // Drain the pipes on threads so a chatty child cannot block on them.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Reads `pipe` to its end on a thread.
fn drain(pipe: Option<impl io::Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs a command in the current namespace (at most 10 s); panics unless it
/// succeeds. Returns stdout.
fn run_checked(program: &str, args: &[&str]) -> String {
    let output = output_within(Command::new(program).args(args), COMMAND_TIMEOUT);
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Kills every process in namespace `ns` (except this one, whose threads
/// may have entered it) and deletes it. Never panics.
fn delete_namespace(ns: &str) {
    let me = std::process::id();
    for _ in 0..50 {
        let pids: Vec<i32> = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .filter(|&p: &i32| p as u32 != me)
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is
            // a process inside a namespace this module created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
    match Command::new("ip").args(["netns", "del", ns]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "ip netns del {ns}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("ip netns del {ns}: {e}"),
    }
}

/// Deletes namespaces `dlbt-<pid>-...` whose process is gone (a test run
/// that was killed before it could clean up).
fn remove_stale() {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            eprintln!("removing stale namespace {name} (process {pid} is gone)");
            delete_namespace(&name);
        }
    }
}

/// A binary built with the tests (`lb-loadgen`, ...): `$env` when set, else
/// next to the running executable (a bin in `target/<profile>/`) or one
/// level up (a test in `target/<profile>/deps/`).
pub fn sibling_binary(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found next to {}; build it first (`cargo build -p lb-tests --bins`) or set {env}",
                exe.display()
            )
        })
}
