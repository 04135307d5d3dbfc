//! UDP forwarding rate through the node of a [`Topology`]: client → three
//! backends over veth, the same `lb-loadgen` traffic each time.
//!
//! - `direct`: the client sends to the backends' own addresses; the node
//!   only routes (no NAT, no XDP): the reference.
//! - `xdp`: the client sends to a VIP; `daas-lb` runs in the node with `lb_xdp`
//!   attached natively to the node's veths (`remote: true`, `policy: spread`).
//! - `xdp-skb`: the same with `mode: skb` (generic XDP, after the skb is built).
//! - `iptables`: the client sends to the VIP; the node does DNAT to the three
//!   backends (`-m statistic --mode nth`, per new conntrack flow) and
//!   MASQUERADE, as kube-proxy's iptables mode does.
//!
//! Every backend runs `lb-loadgen sink`; a scenario's rate is what the three
//! sinks received over the sender's duration (the median of `--runs` runs).
//! Run as root from a release build (`cargo xtask bench xdp` does);
//! prints a markdown table on stdout, progress on stderr.
//!
//! ```text
//! lb-rate-bench [--duration SECS (5, at most 10)] [--runs N (3)] [--flows N (256)]
//!               [--size BYTES (64)] [--threads N (1)] [--only xdp,xdp-skb (both)]
//! ```
//!
//! `--only` picks which XDP scenarios to measure; the baselines `direct`
//! and `iptables` always run, so no rate is ever reported without the two
//! it is compared with (naming them in `--only` is allowed and changes
//! nothing).

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    API, Daemon, PinDir, TcpBackend, TempDir, TestCgroup, config_yaml, service,
    topology::{HOST_IF, NsChild, Topology, sibling_binary},
};
use lb_userspace::policy::state_machine::ServerState;
use serde_json::Value;

const VIP: &str = "10.96.0.10";
/// Every scenario, in the order each round runs them.
const SCENARIOS: [&str; 4] = ["direct", "xdp", "xdp-skb", "iptables"];
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
        };
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
    if options.only.iter().any(|o| o.starts_with("xdp"))
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
            let topo = Topology::new(3);
            let measured = match scenario.as_str() {
                "direct" => {
                    let dst: Vec<String> = topo
                        .backends
                        .iter()
                        .map(|b| format!("{}:{PORT}", b.v4))
                        .collect();
                    measure(&topo, &options, &dst.join(","), scenario, run)
                }
                "xdp" | "xdp-skb" => with_daemon(&topo, scenario == "xdp-skb", |topo| {
                    measure(topo, &options, &format!("{VIP}:{PORT}"), scenario, run)
                }),
                _ => {
                    iptables_dnat(&topo);
                    measure(&topo, &options, &format!("{VIP}:{PORT}"), scenario, run)
                }
            };
            runs.push(measured);
        }
    }
    print!("{}", table(&options, &results));
    ExitCode::SUCCESS
}

/// Runs `f` while daas-lb forwards the VIP to the backends with XDP.
fn with_daemon(topo: &Topology, generic: bool, f: impl FnOnce(&Topology) -> Run) -> Run {
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
    let yaml = format!(
        "xdp:\n  interfaces: [{}]\n  mode: {}\n{}",
        topo.node_interfaces().join(", "),
        if generic { "skb" } else { "driver" },
        config_yaml(&pins, &cgroup, &tmp.path().join("data"), &services)
    );
    let config = tmp.file("config.yaml", &yaml).display().to_string();
    let _in_node = topo.enter(&topo.node);
    let mut daemon = Daemon::spawn_in_netns(
        &["--config", &config],
        tmp.path(),
        API,
        &Topology::ns_path(&topo.node),
    );
    daemon.wait_for(Duration::from_secs(15), "every backend checked", |s| {
        service(s, "rate")
            .servers
            .iter()
            .all(|srv| matches!(srv.state, ServerState::Preferred | ServerState::Active))
    });
    let run = f(topo);
    let metrics = daemon.metrics();
    let verdicts: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("daas_lb_xdp_verdicts_total") && !l.ends_with(" 0"))
        .map(|l| l.trim_start_matches("daas_lb_xdp_verdicts_total"))
        .collect();
    eprintln!("  XDP verdicts (non-zero): {}", verdicts.join(" "));
    daemon.stop();
    run
}

/// The kube-proxy-like DNAT rules in the node.
fn iptables_dnat(topo: &Topology) {
    let n = topo.backends.len();
    let port = PORT.to_string();
    for (i, b) in topo.backends.iter().enumerate() {
        let to = format!("{}:{PORT}", b.v4);
        let every = (n - i).to_string();
        let mut args = vec![
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            VIP,
            "-p",
            "udp",
            "--dport",
            &port,
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
         | path | sent pps | delivered pps | ns/packet | delivered/sent | vs iptables | vs direct | per backend |\n\
         |---|---:|---:|---:|---:|---:|---:|---|\n",
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
            "xdp" => "daas-lb XDP, native (driver) mode",
            "xdp-skb" => "daas-lb XDP, generic (skb) mode",
            _ => "iptables DNAT + MASQUERADE",
        };
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} | {} |",
            run.sent_pps,
            run.delivered_pps,
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
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
