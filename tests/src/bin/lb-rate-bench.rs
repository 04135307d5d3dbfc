//! UDP forwarding rate through the node of a [`Topology`] with default
//! offloads (no `ethtool`: what containers and pods have): client → three
//! backends over veth, the same `lb-loadgen` traffic each time; then a
//! connection churn through daas-lb's default hook.
//!
//! - `direct`: the client sends to the backends' own addresses; the node
//!   only routes (no NAT, no BPF): the reference.
//! - `tc`: the client sends to a VIP; `daas-lb` runs in the node with an
//!   `xdp:` block that names only the node's veths, so `hook: auto` picks
//!   `lb_tc` on tc ingress (`remote: true`, `policy: spread`).
//! - `xdp-skb`: the same with `hook: xdp, mode: skb` (generic XDP, after the
//!   skb is built).
//! - `xdp`: `hook: xdp, mode: driver` (native XDP) where it is safe: the
//!   hosts' `eth0` with TX checksum offload off (complete checksums) and GRO
//!   on (the NAPI a native redirect into a veth needs); the one scenario not
//!   on default offloads.
//! - `iptables`: the client sends to the VIP; the node does DNAT to the three
//!   backends (`-m statistic --mode nth`, per new conntrack flow) and
//!   MASQUERADE, as kube-proxy's iptables mode does.
//!
//! Every backend runs `lb-loadgen sink`; a scenario's rate is what the three
//! sinks received over the sender's duration (the median of `--runs` runs).
//!
//! The churn (`--churn N` short TCP connections, default 1,000,000, or
//! `LB_CHURN_FLOWS` for quicker runs; at most `--churn-secs` seconds,
//! default 600): client threads connect through the VIP, send 16 bytes,
//! read the backend's answer and close (the client closes first, as an
//! HTTP/1.0 client does), through daas-lb's default hook (`hook: auto` →
//! tc) with `flow_timeouts.tcp_closing: 2s`, `flow_gc_interval: 1s` and a
//! wide `snat_ports` (see [`TCP_CLOSING`] and [`CHURN_SNAT_PORTS`] for why).
//! It reports connections per second, failures, the flow table's entries
//! right after the last connection closed and `tcp_closing` + one
//! `flow_gc_interval` (+ 1 s) later, and the TCP/UDP packets that reached
//! the client from a source other than the VIP (untranslated replies,
//! counted by the client's firewall; any through daas-lb makes the bench
//! fail). The same churn then runs through the iptables baseline (DNAT and
//! MASQUERADE, conntrack's defaults) on a fresh topology, side by side in
//! the table, with conntrack's entries as its flow table.
//! `--churn 0` skips both.
//!
//! Run as root from a release build (`cargo xtask bench xdp` does);
//! prints markdown tables on stdout, progress on stderr.
//!
//! ```text
//! lb-rate-bench [--duration SECS (5, at most 10)] [--runs N (3)] [--flows N (256)]
//!               [--size BYTES (64)] [--threads N (1)] [--only tc,xdp,xdp-skb (all)]
//!               [--churn N (1000000)] [--churn-secs SECS (600)]
//! ```
//!
//! `--only` picks which daas-lb scenarios to measure; the baselines
//! `direct` and `iptables` always run, so no rate is ever reported without
//! the two it is compared with (naming them in `--only` is allowed and
//! changes nothing).

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    process::{ExitCode, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{FlowKey, FlowValue};
use lb_tests::{
    BulkBackend, PinDir, TcpBackend, TempDir, TestCgroup, bulk_reply, service,
    topology::{HOST_IF, NsChild, Topology, sibling_binary},
    write_config,
};
use lb_userspace::policy::state_machine::ServerState;
use serde_json::Value;

const VIP: &str = "10.96.0.10";
/// Every scenario, in the order each round runs them.
const SCENARIOS: [&str; 5] = ["direct", "tc", "xdp-skb", "xdp", "iptables"];
/// The scenarios every other one is compared with: they always run.
const BASELINES: [&str; 2] = ["direct", "iptables"];
const PORT: u16 = 9000;

struct Options {
    duration: u64,
    runs: usize,
    flows: usize,
    size: usize,
    threads: usize,
    /// The scenarios to run: the baselines and those `--only` names.
    only: Vec<String>,
    /// Short TCP connections of the churn (0: no churn).
    churn: u64,
    /// The churn's time bound.
    churn_secs: u64,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let mut o = Self {
            duration: 5,
            runs: 3,
            flows: 256,
            size: 64,
            threads: 1,
            only: SCENARIOS.iter().map(|&s| s.to_owned()).collect(),
            churn: 1_000_000,
            churn_secs: 600,
        };
        if let Some(n) = std::env::var_os("LB_CHURN_FLOWS") {
            let n = n.to_string_lossy();
            o.churn = n.parse().map_err(|e| format!("LB_CHURN_FLOWS {n}: {e}"))?;
        }
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--duration" => o.duration = value.parse().map_err(|e| bad(&e))?,
                "--runs" => o.runs = value.parse().map_err(|e| bad(&e))?,
                "--flows" => o.flows = value.parse().map_err(|e| bad(&e))?,
                "--size" => o.size = value.parse().map_err(|e| bad(&e))?,
                "--threads" => o.threads = value.parse().map_err(|e| bad(&e))?,
                "--churn" => o.churn = value.parse().map_err(|e| bad(&e))?,
                "--churn-secs" => o.churn_secs = value.parse().map_err(|e| bad(&e))?,
                "--only" => {
                    o.only = BASELINES.iter().map(|&s| s.to_owned()).collect();
                    for name in value.split(',') {
                        if !SCENARIOS.contains(&name) {
                            return Err(format!(
                                "--only {value}: unknown scenario {name} (one of {})",
                                SCENARIOS.join(", ")
                            ));
                        }
                        o.only.push(name.to_owned());
                    }
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        if !(1..=10).contains(&o.duration) || !(1..=9).contains(&o.runs) {
            return Err("--duration 1..=10, --runs 1..=9".into());
        }
        if o.churn > 10_000_000 || !(1..=3600).contains(&o.churn_secs) {
            return Err("--churn 0..=10000000, --churn-secs 1..=3600".into());
        }
        Ok(o)
    }
}

/// One run's outcome.
#[derive(Debug, Clone, Default)]
struct Run {
    sent_pps: f64,
    /// Datagrams the sinks received per second of sending.
    delivered_pps: f64,
    /// Per backend, datagrams received.
    per_backend: Vec<u64>,
    /// Send errors.
    errors: u64,
}

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lb-rate-bench: {e}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("lb-rate-bench: needs root (network namespaces, XDP)");
        return ExitCode::FAILURE;
    }
    if (options.churn > 0
        || options
            .only
            .iter()
            .any(|o| o != "direct" && o != "iptables"))
        && std::env::var_os("DAAS_LB_BIN").is_none()
    {
        let bin = sibling_binary("DAAS_LB_BIN", "daas-lb");
        // SAFETY: still single-threaded: nothing reads the environment concurrently.
        unsafe { std::env::set_var("DAAS_LB_BIN", bin) };
    }
    let scenarios: Vec<&str> = SCENARIOS
        .into_iter()
        .filter(|s| options.only.iter().any(|o| o == s))
        .collect();
    let mut results: Vec<(String, Vec<Run>)> = scenarios
        .iter()
        .map(|s| ((*s).to_owned(), Vec::new()))
        .collect();
    // Rounds of every scenario in turn, each on a fresh topology: no state
    // (conntrack, XDP, neighbours) carries over, and a slow drift of the
    // machine's speed hits every scenario alike.
    for run in 0..options.runs {
        for (scenario, runs) in &mut results {
            let topo = Topology::builder().default_offloads().backends(3).build();
            let measured = match scenario.as_str() {
                "direct" => {
                    let dst: Vec<String> = topo
                        .backends
                        .iter()
                        .map(|b| format!("{}:{PORT}", b.v4))
                        .collect();
                    measure(&topo, &options, &dst.join(","), scenario, run)
                }
                "tc" | "xdp" | "xdp-skb" => {
                    if scenario == "xdp" {
                        // Native XDP where it is safe (see the module docs).
                        topo.set_tx_checksum(false);
                        topo.set_gro(true);
                    }
                    with_daemon(&topo, scenario, |topo| {
                        measure(topo, &options, &format!("{VIP}:{PORT}"), scenario, run)
                    })
                }
                _ => {
                    iptables_dnat(&topo, "udp", PORT);
                    measure(&topo, &options, &format!("{VIP}:{PORT}"), scenario, run)
                }
            };
            runs.push(measured);
        }
    }
    print!("{}", table(&options, &results));
    if options.churn > 0 {
        let churns = [
            churn(&options, ChurnPath::DaasLb),
            churn(&options, ChurnPath::Iptables),
        ];
        print!("{}", churn_table(&options, &churns));
        if churns[0].untranslated > 0 {
            eprintln!(
                "lb-rate-bench: {} untranslated replies reached the client",
                churns[0].untranslated
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The `xdp:` block (the whole block, its first line included) for
/// `scenario` over `interfaces`: names only for `tc` (every setting
/// default), `{ name, hook: xdp, mode }` entries for the XDP scenarios.
fn xdp_block(scenario: &str, interfaces: &[String]) -> String {
    let mode = match scenario {
        "xdp" => "driver",
        "xdp-skb" => "skb",
        _ => return format!("xdp:\n  interfaces: [{}]\n", interfaces.join(", ")),
    };
    let entries: Vec<String> = interfaces
        .iter()
        .map(|i| format!("    - {{ name: {i}, hook: xdp, mode: {mode} }}\n"))
        .collect();
    format!("xdp:\n  interfaces:\n{}", entries.concat())
}

/// Runs `f` while daas-lb forwards the VIP to the backends with the hook
/// of `scenario` ([`xdp_block`]).
fn with_daemon(topo: &Topology, scenario: &str, f: impl FnOnce(&Topology) -> Run) -> Run {
    let (tmp, pins, cgroup) = (TempDir::new(), PinDir::new(), TestCgroup::new());
    // TCP listeners on the UDP port number: the health checks' target.
    let _checked: Vec<TcpBackend> = topo
        .backends
        .iter()
        .map(|b| {
            let _inside = topo.enter(&b.ns);
            TcpBackend::bind(&b.name, SocketAddr::new(b.v4.into(), PORT))
        })
        .collect();
    let servers: Vec<String> = topo
        .backends
        .iter()
        .map(|b| format!("\"{}:{PORT}\"", b.v4))
        .collect();
    let services = format!(
        "  - name: rate\n    vip: \"{VIP}:{PORT}\"\n    protocol: udp\n    servers: [{}]\n    policy: spread\n    remote: true\n    health_check: {{ kind: tcp, interval: 1s }}\n",
        servers.join(", ")
    );
    let top = xdp_block(scenario, &topo.node_interfaces());
    let config = write_config(&tmp, &pins, &cgroup, &top, &services);
    let _in_node = topo.enter(&topo.node);
    let mut daemon = topo.spawn_daemon(&tmp, &config);
    wait_checked(&mut daemon, "rate");
    let run = f(topo);
    let metrics = daemon.metrics();
    let verdicts: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("daas_lb_xdp_verdicts_total") && !l.ends_with(" 0"))
        .map(|l| l.trim_start_matches("daas_lb_xdp_verdicts_total"))
        .collect();
    eprintln!("  verdicts (non-zero): {}", verdicts.join(" "));
    daemon.stop();
    run
}

/// Waits (at most 15 s) until every server of service `name` passed its
/// checks (preferred or active).
fn wait_checked(daemon: &mut lb_tests::Daemon, name: &str) {
    daemon.wait_for(Duration::from_secs(15), "every backend checked", |s| {
        service(s, name)
            .servers
            .iter()
            .all(|srv| matches!(srv.state, ServerState::Preferred | ServerState::Active))
    });
}

/// The kube-proxy-like DNAT rules in the node, for `proto` (`udp`,
/// `tcp`) to the VIP's `port`, the backends on the same port.
fn iptables_dnat(topo: &Topology, proto: &str, port: u16) {
    let n = topo.backends.len();
    let port_text = port.to_string();
    for (i, b) in topo.backends.iter().enumerate() {
        let to = format!("{}:{port}", b.v4);
        let every = (n - i).to_string();
        let mut args = vec![
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            VIP,
            "-p",
            proto,
            "--dport",
            &port_text,
        ];
        if n - i > 1 {
            args.extend([
                "-m",
                "statistic",
                "--mode",
                "nth",
                "--every",
                &every,
                "--packet",
                "0",
            ]);
        }
        args.extend(["-j", "DNAT", "--to-destination", &to]);
        topo.sh(&topo.node, "iptables", &args);
    }
    topo.sh(
        &topo.node,
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "to-b+",
            "-j",
            "MASQUERADE",
        ],
    );
}

/// Starts a sink in every backend, runs the sender, collects.
fn measure(topo: &Topology, o: &Options, dst: &str, scenario: &str, run: usize) -> Run {
    let loadgen = sibling_binary("LB_LOADGEN", "lb-loadgen");
    let sink_secs = (o.duration + 8).to_string();
    // Sender on CPU 0 (the forwarding runs in its softirqs too), sinks on
    // the last CPU, so that they do not take turns with the sender.
    let sink_cpu = (thread_count() - 1).to_string();
    let mut sinks: Vec<NsChild> = topo
        .backends
        .iter()
        .map(|b| {
            let mut cmd = topo.command(&b.ns, &loadgen);
            cmd.args(["sink", "--bind", &format!("{}:{PORT}", b.v4)])
                .args(["--duration", &sink_secs, "--idle-ms", "700"])
                .args(["--cpu", &sink_cpu])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            topo.spawn(&mut cmd)
        })
        .collect();
    for (sink, b) in sinks.iter_mut().zip(&topo.backends) {
        let stderr = sink.child().stderr.take().expect("piped stderr");
        let mut line = String::new();
        let _ = BufReader::new(stderr).read_line(&mut line);
        assert!(
            line.starts_with("listening"),
            "sink in {}: {line:?}",
            b.name
        );
    }
    let rx_before: Vec<u64> = topo
        .backends
        .iter()
        .map(|b| topo.rx_packets(&b.ns, HOST_IF))
        .collect();
    let started = Instant::now();
    let mut cmd = topo.command(&topo.client.ns, &loadgen);
    cmd.args(["send", "--dst", dst])
        .args(["--flows", &o.flows.to_string()])
        .args(["--size", &o.size.to_string()])
        .args(["--duration", &o.duration.to_string()])
        .args(["--threads", &o.threads.to_string()])
        .args(["--cpu", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let sender = topo
        .spawn(&mut cmd)
        .wait_output(Duration::from_secs(o.duration + 10));
    let sent: Value = serde_json::from_slice(&sender.stdout).unwrap_or_else(|e| {
        panic!(
            "sender output {:?} {:?}: {e}",
            String::from_utf8_lossy(&sender.stdout),
            String::from_utf8_lossy(&sender.stderr)
        )
    });
    let send_secs = sent["duration_s"].as_f64().unwrap_or(float(o.duration));
    let mut per_backend = Vec::new();
    for (sink, b) in sinks.into_iter().zip(&topo.backends) {
        let out = sink.wait_output(Duration::from_secs(o.duration + 12));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sink {} output {:?}: {e}",
                b.name,
                String::from_utf8_lossy(&out.stdout)
            )
        });
        per_backend.push(v["received"].as_u64().unwrap_or(0));
    }
    let rx: Vec<u64> = topo
        .backends
        .iter()
        .zip(&rx_before)
        .map(|(b, before)| topo.rx_packets(&b.ns, HOST_IF) - before)
        .collect();
    // UDP errors in the backends (a fresh topology per run: counts are this run's).
    let udp_errors: Vec<String> = topo
        .backends
        .iter()
        .map(|b| {
            let out = topo.sh(
                &b.ns,
                "nstat",
                &["-az", "UdpInErrors", "UdpRcvbufErrors", "UdpInCsumErrors"],
            );
            out.lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let (name, value) = (f.next()?, f.next()?);
                    (value != "0" && name.starts_with("Udp")).then(|| format!("{name}={value}"))
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let total: u64 = per_backend.iter().sum();
    let result = Run {
        sent_pps: sent["pps"].as_f64().unwrap_or(0.0),
        delivered_pps: float(total) / send_secs,
        per_backend,
        errors: sent["errors"].as_u64().unwrap_or(0),
    };
    eprintln!(
        "[{scenario} run {}] sent {:.0} pps, delivered {:.0} pps, per backend {:?} (eth0 rx {:?}, \
         UDP errors {:?}), {} send errors, {:.1}s",
        run + 1,
        result.sent_pps,
        result.delivered_pps,
        result.per_backend,
        rx,
        udp_errors,
        result.errors,
        started.elapsed().as_secs_f64()
    );
    result
}

/// What the churn's connections go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChurnPath {
    /// daas-lb with its default hook (tc on these veths).
    DaasLb,
    /// The baseline: kube-proxy-like iptables DNAT and MASQUERADE
    /// (conntrack keeps the flows).
    Iptables,
}

/// The churn's outcome.
#[derive(Debug)]
struct Churn {
    /// What the connections went through.
    path: ChurnPath,
    /// Connections answered in full.
    ok: u64,
    /// Connections that failed (connect, I/O or a wrong answer).
    failed: u64,
    /// Seconds the connections took.
    secs: f64,
    /// Connections per backend.
    per_backend: Vec<u64>,
    /// Flows the kernel created (`daas_lb_xdp_flows_total`; iptables:
    /// none counted).
    new_flows: Option<u64>,
    /// `flows` entries (iptables: conntrack entries) right after the last
    /// connection closed.
    entries_end: usize,
    /// The same `tcp_closing` + one `flow_gc_interval` later.
    entries_after: usize,
    /// Seconds waited for `entries_after`.
    waited: f64,
    /// The flow table's capacity (entries; iptables: `nf_conntrack_max`).
    capacity: u32,
    /// Packets from a source other than the VIP that reached the client.
    untranslated: u64,
    /// Non-zero flow/drop samples of the daemon's metrics at the end.
    metrics: Vec<String>,
}

/// The churn's port on the VIP and on the backends.
const CHURN_PORT: u16 = 8080;
/// Client threads of the churn.
const CHURN_THREADS: usize = 8;
/// Client addresses of the churn (`10.10.0.2` and up), so that a client
/// port comes round again only after the flow it had left the table.
const CHURN_CLIENT_ADDRS: u8 = 8;
/// The churn's request.
const CHURN_REQUEST: &[u8] = b"churn-0123456789";
/// The churn's `flow_timeouts.tcp_closing` and `flow_gc_interval`: the
/// defaults (10 s, 10 s) keep a closed flow up to 20 s, which at ~7,000
/// connections/s is 140,000 flows, more than the 131,072 the table holds.
const TCP_CLOSING: Duration = Duration::from_secs(2);
const GC_INTERVAL: Duration = Duration::from_secs(1);
/// SNAT ports of the churn: the default 61000-65535 (4536 per backend
/// address and port) would run out while closed flows linger; the node's
/// own ephemeral range moves above it ([`CHURN_NODE_PORTS`]).
const CHURN_SNAT_PORTS: &str = "1024-60999";
/// The node's `ip_local_port_range` during the churn.
const CHURN_NODE_PORTS: &str = "61000 65535";

/// `o.churn` short TCP connections through `path` (daas-lb's default
/// hook, or iptables), bounded by `o.churn_secs`; see the module docs.
#[expect(
    clippy::too_many_lines,
    reason = "one measurement, set up, run and read in order"
)]
fn churn(o: &Options, path: ChurnPath) -> Churn {
    let topo = Topology::builder().default_offloads().backends(3).build();
    // Client: every port for connects, TIME_WAIT ports reused (timestamps
    // are on), so the client does not run out of source ports.
    topo.sh(
        &topo.client.ns,
        "sysctl",
        &["-qw", "net.ipv4.ip_local_port_range=1024 65535"],
    );
    topo.sh(
        &topo.client.ns,
        "sysctl",
        &["-qw", "net.ipv4.tcp_tw_reuse=1"],
    );
    let node_ports = format!("net.ipv4.ip_local_port_range={CHURN_NODE_PORTS}");
    topo.sh(&topo.node, "sysctl", &["-qw", &node_ports]);
    let addrs: Vec<Ipv4Addr> = (0..CHURN_CLIENT_ADDRS)
        .map(|i| Ipv4Addr::new(10, 10, 0, 2 + i))
        .collect();
    for addr in &addrs[1..] {
        let cidr = format!("{addr}/24");
        topo.sh(
            &topo.client.ns,
            "ip",
            &["addr", "add", &cidr, "dev", HOST_IF],
        );
    }
    topo.count_untranslated();
    let backends: Vec<BulkBackend> = topo
        .backends
        .iter()
        .map(|b| {
            let _inside = topo.enter(&b.ns);
            BulkBackend::bind(&b.name, SocketAddr::new(b.v4.into(), CHURN_PORT), 4)
        })
        .collect();
    let _in_node = topo.enter(&topo.node);
    let daas_lb = (path == ChurnPath::DaasLb).then(|| start_churn_daemon(&topo, &backends));
    if path == ChurnPath::Iptables {
        iptables_dnat(&topo, "tcp", CHURN_PORT);
    }
    let vip: SocketAddr = format!("{VIP}:{CHURN_PORT}").parse().expect("vip");
    let names: Vec<String> = topo.backends.iter().map(|b| b.name.clone()).collect();
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let until = started + Duration::from_secs(o.churn_secs);
    let results: Vec<(u64, u64, Vec<u64>)> = thread::scope(|s| {
        let handles: Vec<_> = (0..CHURN_THREADS)
            .map(|t| {
                let (topo, next, names, addrs) = (&topo, &next, &names, &addrs);
                s.spawn(move || {
                    let _inside = topo.enter(&topo.client.ns);
                    let (mut ok, mut failed) = (0u64, 0u64);
                    let mut per_backend = vec![0u64; names.len()];
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= o.churn || Instant::now() >= until {
                            break;
                        }
                        let from = addrs[(n as usize + t) % addrs.len()];
                        match churn_once(from, vip) {
                            Ok(name) => {
                                ok += 1;
                                if let Some(i) = names.iter().position(|n| *n == name) {
                                    per_backend[i] += 1;
                                }
                            }
                            Err(_) => failed += 1,
                        }
                    }
                    (ok, failed, per_backend)
                })
            })
            .collect();
        let mut reported = 0;
        while handles.iter().any(|h| !h.is_finished()) {
            thread::sleep(Duration::from_millis(200));
            let done = next.load(Ordering::Relaxed).min(o.churn);
            if done >= reported + 100_000 {
                reported = done;
                eprintln!(
                    "  churn ({path:?}): {done} connections started in {:.0}s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let entries = || match &daas_lb {
        Some(d) => flow_entries(&d.pins.path().join("flows")),
        None => usize::try_from(conntrack_sysctl(&topo, "nf_conntrack_count")).unwrap_or(0),
    };
    let entries_end = entries();
    let closed = Instant::now();
    // tcp_closing + one gc interval, plus a second for a pass in progress.
    let wait = TCP_CLOSING + GC_INTERVAL + Duration::from_secs(1);
    thread::sleep(wait);
    let entries_after = entries();
    let waited = closed.elapsed().as_secs_f64();
    let untranslated = topo.untranslated();
    let mut churn = Churn {
        path,
        ok: 0,
        failed: 0,
        secs,
        entries_end,
        entries_after,
        waited,
        capacity: 0,
        new_flows: None,
        untranslated,
        metrics: Vec::new(),
        per_backend: vec![0; names.len()],
    };
    if let Some(mut d) = daas_lb {
        let metrics = d.daemon.metrics();
        churn.metrics = metrics
            .lines()
            .filter(|l| {
                (l.starts_with("daas_lb_xdp_flow")
                    || l.starts_with("daas_lb_flow")
                    || l.starts_with("daas_lb_xdp_drops"))
                    && !l.ends_with(" 0")
            })
            .map(ToOwned::to_owned)
            .collect();
        churn.capacity = flow_capacity(&d.pins.path().join("flows"));
        churn.new_flows = Some(
            lb_tests::metric(&metrics, "daas_lb_xdp_flows_total", &[("name", "churn")])
                .unwrap_or(0.0) as u64,
        );
        d.daemon.stop();
    } else {
        churn.capacity = u32::try_from(conntrack_sysctl(&topo, "nf_conntrack_max")).unwrap_or(0);
    }
    for (ok, failed, per_backend) in results {
        churn.ok += ok;
        churn.failed += failed;
        for (sum, n) in churn.per_backend.iter_mut().zip(per_backend) {
            *sum += n;
        }
    }
    eprintln!("churn: {churn:?}");
    churn
}

/// A netfilter conntrack sysctl of the node's namespace
/// (`/proc/sys/net/netfilter/<name>`), 0 if it cannot be read.
fn conntrack_sysctl(topo: &Topology, name: &str) -> u64 {
    topo.sh(
        &topo.node,
        "cat",
        &[&format!("/proc/sys/net/netfilter/{name}")],
    )
    .trim()
    .parse()
    .unwrap_or(0)
}

/// daas-lb running the churn's service in the node, and what it needs
/// kept alive (its pins, files and cgroup).
struct ChurnDaemon {
    daemon: lb_tests::Daemon,
    pins: PinDir,
    _tmp: TempDir,
    _cgroup: TestCgroup,
}

/// Starts daas-lb in the node (the caller is inside its namespace) with
/// the churn's settings, and waits until every backend is checked.
fn start_churn_daemon(topo: &Topology, backends: &[BulkBackend]) -> ChurnDaemon {
    let servers: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let services = format!(
        "  - name: churn\n    vip: \"{VIP}:{CHURN_PORT}\"\n    protocol: tcp\n    servers: [{}]\n    policy: spread\n    remote: true\n    health_check: {{ kind: tcp, interval: 1s }}\n",
        servers.join(", ")
    );
    let (tmp, pins, cgroup) = (TempDir::new(), PinDir::new(), TestCgroup::new());
    let top = format!(
        "xdp:\n  interfaces: [{}]\n  snat_ports: {CHURN_SNAT_PORTS}\n  flow_timeouts: {{ tcp_closing: {}s }}\n  flow_gc_interval: {}s\n",
        topo.node_interfaces().join(", "),
        TCP_CLOSING.as_secs(),
        GC_INTERVAL.as_secs(),
    );
    let config = write_config(&tmp, &pins, &cgroup, &top, &services);
    let mut daemon = topo.spawn_daemon(&tmp, &config);
    wait_checked(&mut daemon, "churn");
    ChurnDaemon {
        daemon,
        pins,
        _tmp: tmp,
        _cgroup: cgroup,
    }
}

/// One short connection from `from`: connect, send [`CHURN_REQUEST`], shut
/// down the sending side, read the answer to EOF, check it, close. The
/// backend's name.
fn churn_once(from: Ipv4Addr, vip: SocketAddr) -> std::io::Result<String> {
    let timeout = Duration::from_secs(2);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    // The port is chosen at connect, for the whole 4-tuple, so TIME_WAIT
    // ports can be reused (`tcp_tw_reuse`).
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&on`, which
    // lives through the call; the socket is open.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind(&SocketAddr::new(from.into(), 0).into())?;
    socket.connect_timeout(&vip.into(), timeout)?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(CHURN_REQUEST)?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    let expected = bulk_reply(CHURN_REQUEST);
    let Some(newline) = reply.iter().position(|&b| b == b'\n') else {
        return Err(std::io::Error::other("no name line"));
    };
    if reply[newline + 1..] != expected[..] {
        return Err(std::io::Error::other("wrong answer"));
    }
    Ok(String::from_utf8_lossy(&reply[..newline]).into_owned())
}

/// Entries in the pinned `flows` map now (keys walked with
/// `BPF_MAP_GET_NEXT_KEY`).
fn flow_entries(pin: &std::path::Path) -> usize {
    let data = MapData::from_pin(pin).unwrap_or_else(|e| panic!("open {}: {e}", pin.display()));
    let map = Map::from_map_data(data).expect("flows map");
    let flows: BpfHashMap<_, FlowKey, FlowValue> =
        BpfHashMap::try_from(map).expect("flows is a hash map");
    flows.keys().flatten().count()
}

/// The pinned `flows` map's capacity.
fn flow_capacity(pin: &std::path::Path) -> u32 {
    aya::maps::MapInfo::from_pin(pin).map_or(0, |i| i.max_entries())
}

fn churn_table(o: &Options, churns: &[Churn]) -> String {
    let rate = |c: &Churn| float(c.ok + c.failed) / c.secs.max(0.001);
    let baseline = churns
        .iter()
        .find(|c| c.path == ChurnPath::Iptables)
        .map(rate);
    let mut out = format!(
        "\n### Connection churn: daas-lb (`hook: auto` → tc) and iptables\n\n\
         {} short TCP connections requested per path (`--churn`/`LB_CHURN_FLOWS`), at most {} s; \
         {} client threads over {CHURN_CLIENT_ADDRS} client addresses, 16-byte request, the \
         client closes first; 3 backends, a fresh topology per path. daas-lb: `snat_ports: \
         {CHURN_SNAT_PORTS}` (the node's own ports moved to {CHURN_NODE_PORTS}), \
         `flow_timeouts.tcp_closing` {} s, `flow_gc_interval` {} s, every other setting default; \
         new flows are the flows the kernel created (a connection that reuses the address and \
         port of a flow still in the table continues it); entries are the `flows` map's (two \
         per flow). iptables: kube-proxy-like DNAT (`statistic nth`) and MASQUERADE, the \
         kernel's conntrack defaults; entries are conntrack's (one per connection, closed ones \
         kept in TIME_WAIT for 120 s). Capacity: the `flows` map's, or `nf_conntrack_max`.\n\n\
         | path | connections | failed | seconds | connections/s | vs iptables | new flows | per backend | entries at the end | entries {:.0} s later | capacity | untranslated replies |\n\
         |---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n",
        o.churn,
        o.churn_secs,
        CHURN_THREADS,
        TCP_CLOSING.as_secs(),
        GC_INTERVAL.as_secs(),
        churns.first().map_or(0.0, |c| c.waited),
    );
    for c in churns {
        let shares: Vec<String> = c
            .per_backend
            .iter()
            .map(|&n| format!("{:.0}%", 100.0 * float(n) / float(c.ok.max(1))))
            .collect();
        let vs = baseline
            .filter(|b| *b > 0.0)
            .map_or_else(|| "–".to_owned(), |b| format!("{:.2}×", rate(c) / b));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.0} | {vs} | {} | {} | {} | {} | {} | {} |",
            match c.path {
                ChurnPath::DaasLb => "daas-lb tc",
                ChurnPath::Iptables => "iptables DNAT + MASQUERADE",
            },
            c.ok + c.failed,
            c.failed,
            c.secs,
            rate(c),
            c.new_flows
                .map_or_else(|| "–".to_owned(), |n| n.to_string()),
            shares.join(" / "),
            c.entries_end,
            c.entries_after,
            c.capacity,
            c.untranslated
        );
    }
    for c in churns.iter().filter(|c| !c.metrics.is_empty()) {
        let _ = writeln!(
            out,
            "\nFlow metrics at the end: `{}`",
            c.metrics.join("`, `")
        );
    }
    out
}

/// The run with the median delivered rate.
fn median(runs: &[Run]) -> Run {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.delivered_pps.total_cmp(&b.delivered_pps));
    sorted.get(sorted.len() / 2).cloned().unwrap_or_default()
}

fn table(o: &Options, results: &[(String, Vec<Run>)]) -> String {
    let medians: Vec<(&str, Run)> = results
        .iter()
        .map(|(name, runs)| (name.as_str(), median(runs)))
        .collect();
    let rate = |name: &str| {
        medians
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.delivered_pps)
    };
    let ratio = |value: f64, base: Option<f64>| {
        base.filter(|b| *b > 0.0)
            .map_or_else(|| "–".to_owned(), |b| format!("{:.2}×", value / b))
    };
    let mut out = format!(
        "\n### UDP forwarding over veth: client → node → 3 backends\n\n\
         {} B payload, {} flows (source ports), {} sender thread(s), {} s per run, median of {} \
         run(s), scenarios interleaved, a fresh topology each; {} CPUs, sender pinned to CPU 0, \
         sinks to the last. Rate = datagrams the backends' sockets received per second of \
         sending. The softirq work of the whole path (client stack, node, backend stack) runs \
         on the sender's CPU, so ns/packet is that CPU's time per delivered datagram.\n\n\
         Gbit/s = delivered UDP payload bits per second. Every path on the veths' default \
         offloads except native XDP (hosts' TX checksum offload off, GRO on: its safe case).\n\n\
         | path | sent pps | delivered pps | Gbit/s | ns/packet | delivered/sent | vs iptables | vs direct | per backend |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        o.size,
        o.flows,
        o.threads,
        o.duration,
        o.runs,
        thread_count()
    );
    for (name, run) in &medians {
        let total: u64 = run.per_backend.iter().sum();
        let shares: Vec<String> = run
            .per_backend
            .iter()
            .map(|&n| format!("{:.0}%", 100.0 * float(n) / float(total.max(1))))
            .collect();
        let label = match *name {
            "direct" => "direct (routing only, no NAT)",
            "tc" => "daas-lb tc (`hook: auto` on veth)",
            "xdp" => "daas-lb XDP native (`mode: driver`; hosts' tx off)",
            "xdp-skb" => "daas-lb XDP generic (`mode: skb`)",
            _ => "iptables DNAT + MASQUERADE",
        };
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.0} | {:.3} | {:.0} | {:.2} | {} | {} | {} |",
            run.sent_pps,
            run.delivered_pps,
            run.delivered_pps * float(o.size as u64) * 8.0 / 1e9,
            1e9 / run.delivered_pps.max(1.0),
            run.delivered_pps / run.sent_pps.max(1.0),
            ratio(run.delivered_pps, rate("iptables")),
            ratio(run.delivered_pps, rate("direct")),
            shares.join(" / ")
        );
    }
    out
}

#[expect(
    clippy::cast_precision_loss,
    reason = "packet counts and seconds stay far below 2^52"
)]
fn float(n: u64) -> f64 {
    n as f64
}

fn thread_count() -> usize {
    thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
