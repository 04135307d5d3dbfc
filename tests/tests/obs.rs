//! The monitoring files of `scripts/monitoring/` against the real tools and
//! a live daemon: `promtool check rules` on the alerting rules, `promtool
//! check metrics` on a live `GET /metrics`, and a real Prometheus (Debian
//! package `prometheus`) that scrapes the daemon every second, loads the
//! rules and evaluates, through its HTTP API, every query of every
//! dashboard panel and every rule's expression, each parsed from the files.
//!
//! The daemon runs in the test's network namespace with everything that
//! makes the interesting series exist: a K3s-style service with a live and
//! a dead server (`k3s`), a service whose only server is dead so it fails
//! open (`lonely`, also `remote: true` with XDP attached in generic mode to
//! a veth pair, so the XDP families exist), a service without servers
//! (`empty`), and a service discovered from a fake Sui full node (`api`)
//! whose two nodes each have their own fake full node and fake Nautilus
//! enclave: node0 in sync with a good enclave, node1 100 checkpoints behind
//! with an enclave whose signatures do not verify. After Prometheus's first
//! scrapes the test connects through the VIPs (a success, a reset from the
//! dead server, refusals), has the metrics listener refuse a `POST` and
//! emits a registry event, so the counters move between scrapes.
//!
//! How each rule is checked: every rule's expression without its threshold
//! (`X > 50` -> `X`) must return series, which proves the metrics it reads
//! exist with the labels it uses. The alerts the test induces (every one
//! but `DaasLbRegistryStale`, `DaasLbRegistryNotSynced` and
//! `DaasLbXdpDrops`, whose conditions take minutes or foreign traffic) must
//! also reach `pending` or `firing` in `/api/v1/rules`. Dashboard queries
//! are evaluated with Grafana's variables set to their "All" value and
//! `$__rate_interval` to 10 s, and must return series.
//!
//! Every wait is bounded; Prometheus, the daemon, the doubles and the
//! namespace are torn down on drop, also when an assertion fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    Daemon, METRICS, Node, SuiChain, TestEnv, monitoring, parse_metrics, service_yaml, sh,
};
use lb_userspace::{
    chain::registry,
    demo::{
        fake_deployment::{APP, default_pcrs, fake_address, publish_config, publish_enclave},
        fake_enclave::{FakeEnclave, FakeScores},
        fake_node::FakeChain,
    },
};
use sui_sdk_types::Address;

/// The fake chain's id.
const CHAIN_ID: &str = "4c78adac";
/// Every registered node's stake, MIST (4 SUI).
const STAKE: u64 = 4_000_000_000;
/// The discovered nodes' service port.
const PORT: u16 = 7000;
/// node1's own full node lags this many checkpoints (the rule's bound is 50).
const LAG: u64 = 100;
/// Where the test's Prometheus listens (inside the test's namespace).
const PROMETHEUS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
/// A scrape target where nothing listens: `up == 0` for `DaasLbDown`.
const DEAD_TARGET: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9463);
/// What replaces Grafana's `$__rate_interval` (ten scrapes).
const RATE_INTERVAL: &str = "10s";
/// The bound of the daemon's start (first checks, registry sync).
const START: Duration = Duration::from_secs(15);
/// The bound of the wait for every expression and alert.
const EVALUATE: Duration = Duration::from_secs(30);
/// Alerts whose condition the test cannot bring about within its time:
/// only their expression without the threshold is checked.
const NOT_INDUCED: [&str; 3] = [
    "DaasLbRegistryStale",
    "DaasLbRegistryNotSynced",
    "DaasLbXdpDrops",
];

/// `k3s`: a live server and a dead one.
const K3S_VIP: &str = "127.0.0.1:6445";
/// `lonely`: only a dead server, so it fails open.
const LONELY_VIP: &str = "127.0.0.1:6446";
/// `empty`: no server at all, so connects are refused.
const EMPTY_VIP: &str = "127.0.0.1:6447";
/// The veth end XDP attaches to.
const XDP_IF: &str = "obs0";

/// A registry key (node address) ending in `byte`.
fn key(byte: u8) -> Address {
    let mut bytes = [0x3c; Address::LENGTH];
    bytes[Address::LENGTH - 1] = byte;
    Address::new(bytes)
}

/// The on-chain `EnclaveConfig`.
fn config_id() -> Address {
    fake_address(0xc0, 1)
}

/// Everything the daemon talks to; dropped before the namespace.
struct Rig {
    daemon: Daemon,
    /// K3s and Sui node stand-ins, kept for their listeners.
    _nodes: Vec<Node>,
    /// The nodes' enclaves, kept running (on the chain's runtime).
    _enclaves: Vec<FakeEnclave>,
    /// The nodes' own full nodes, kept running (on the chain's runtime).
    _own_nodes: Vec<FakeChain>,
    chain: SuiChain,
}

impl Rig {
    /// Starts the doubles, the veth pair and the daemon, and waits until
    /// the registry is synced, `lonely` fails open and both discovered
    /// nodes were checked.
    fn start(env: &TestEnv) -> Self {
        sh(
            "ip",
            &[
                "link", "add", XDP_IF, "type", "veth", "peer", "name", "obs1",
            ],
        );
        sh("ip", &["addr", "add", "192.0.2.1/24", "dev", XDP_IF]);
        sh("ip", &["link", "set", XDP_IF, "up"]);
        sh("ip", &["link", "set", "obs1", "up"]);

        let chain = SuiChain::start(CHAIN_ID);
        publish_config(&chain.fake, config_id(), default_pcrs(), 1);
        let (mut nodes, mut enclaves, mut own_nodes) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..2u8 {
            let enclave = chain
                .block_on(FakeEnclave::start())
                .expect("start a fake enclave");
            enclave.set_scores(FakeScores {
                performance_score: 9_000 - 1_000 * u64::from(i),
                reputation_score: 8_000,
                stake_amount: STAKE,
                ..FakeScores::default()
            });
            let own = chain.another(CHAIN_ID);
            let octet = 51 + i;
            let node = Node::start(&format!("node{i}"), Ipv4Addr::new(127, 0, 0, octet), PORT);
            chain.fake.register(
                key(i + 1),
                registry::Node {
                    operator: key(0xee),
                    endpoint: format!("127.0.0.{octet}"),
                    stake: STAKE,
                    sui_rpc: own.url(),
                    nautilus_url: enclave.url(),
                    enclave_id: fake_address(0xe0, i),
                },
            );
            publish_enclave(
                &chain.fake,
                fake_address(0xe0, i),
                enclave.public_key(),
                1,
                APP,
            );
            nodes.push(node);
            enclaves.push(enclave);
            own_nodes.push(own);
        }
        // Enough checkpoints for node1's full node to be LAG behind.
        for _ in 0..LAG + 20 {
            chain.fake.tick();
            for own in &own_nodes {
                own.tick();
            }
        }
        own_nodes[1].set_lag(LAG, Duration::ZERO);
        enclaves[1]
            .set_bad_signature(true)
            .expect("generate a key for the bad signatures");

        let tcp = "{ kind: tcp, interval: 200ms, timeout: 200ms, jitter: 0% }";
        let sui = "{ kind: all, interval: 500ms, timeout: 500ms, jitter: 0%, checks: [\
                   { kind: sui_sync, max_checkpoint_lag: 50, max_response_time: 400ms }, \
                   { kind: nautilus, max_age: 30s, cache_ttl: 0s }] }";
        let live = Node::start("k3s-live", Ipv4Addr::new(127, 0, 0, 11), 6443);
        let dead = |octet| SocketAddr::new(Ipv4Addr::new(127, 0, 0, octet).into(), 6443);
        let mut services = service_yaml("k3s", K3S_VIP, &[live.addr, dead(12)], None, tcp);
        services.push_str(&service_yaml("lonely", LONELY_VIP, &[dead(13)], None, tcp));
        services.push_str("    remote: true\n");
        services.push_str(&service_yaml("empty", EMPTY_VIP, &[], None, tcp));
        services.push_str(&service_yaml("api", "127.0.0.1:6444", &[], None, sui));
        let _ = writeln!(services, "    discovery: {{ source: sui, port: {PORT} }}");
        nodes.push(live);
        let top = format!(
            "connection_poll_interval: 100ms\nxdp:\n  interfaces: [{XDP_IF}]\n  mode: skb\n\
             features:\n  performance_ranking: true\n{}",
            chain.yaml(&format!("  enclave_config: \"{}\"\n", config_id()))
        );
        let mut daemon = env.start_with(&top, &services);
        daemon.wait_for(
            START,
            "registry synced, lonely failing open, nodes checked",
            |s| {
                let svc = |name: &str| s.services.iter().find(|svc| svc.name == name);
                s.registry.as_ref().is_some_and(|r| r.synced)
                    && svc("lonely").is_some_and(|svc| svc.fail_open)
                    && svc("api").is_some_and(|svc| {
                        svc.servers.len() == 2
                            && svc.servers.iter().all(|srv| srv.sync_lag_blocks.is_some())
                    })
            },
        );
        Self {
            daemon,
            _nodes: nodes,
            _enclaves: enclaves,
            _own_nodes: own_nodes,
            chain,
        }
    }

    /// Moves the counters the alerts and panels read: a connect through
    /// each VIP (a success, a reset from `lonely`'s dead server, a refusal
    /// by `empty`), a `POST` the metrics listener refuses, and a registry
    /// event (node0 updated).
    fn traffic(&self, env: &TestEnv) {
        for vip in [K3S_VIP, LONELY_VIP, EMPTY_VIP] {
            let out = env.cgroup.client(&["tcp", vip, "ping"]);
            assert_eq!(out.ok, vip == K3S_VIP, "connect to {vip}: {out:?}");
        }
        let refused = lb_userspace::api::client::request(&METRICS.into(), "POST", "/reload", None)
            .expect("POST /reload on the metrics listener");
        assert_ne!(refused.0, 200, "{refused:?}");
        let node0 = self.chain.fake.nodes()[&key(1)].clone();
        self.chain.fake.update(key(1), node0);
        self.chain.fake.tick();
    }
}

/// `promtool check rules` accepts the shipped rules file, which has every
/// alert the README lists, each with `for`, `severity`, summary,
/// description and runbook.
#[test]
fn promtool_accepts_the_alerting_rules() {
    let rules = monitoring::alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    for alert in [
        "DaasLbDown",
        "DaasLbServerFailed",
        "DaasLbFailOpen",
        "DaasLbNoBackend",
        "DaasLbAttestationFailures",
        "DaasLbSyncLag",
        "DaasLbRegistryStale",
        "DaasLbRegistryNotSynced",
        "DaasLbXdpDrops",
    ] {
        assert!(names.contains(alert), "no alert {alert} in {names:?}");
    }
    for rule in &rules {
        assert!(!rule.for_.is_empty(), "{}: no for", rule.name);
        assert!(
            matches!(
                rule.labels.get("severity").map(String::as_str),
                Some("critical" | "warning")
            ),
            "{}: severity {:?}",
            rule.name,
            rule.labels.get("severity")
        );
        for annotation in ["summary", "description", "runbook"] {
            assert!(
                rule.annotations
                    .get(annotation)
                    .is_some_and(|a| !a.is_empty()),
                "{}: no {annotation}",
                rule.name
            );
        }
        assert!(
            rule.annotations["runbook"].contains(&format!("README.md#alerts ({})", rule.name))
                || rule.annotations["runbook"].starts_with("README.md#alerts ("),
            "{}: runbook {:?}",
            rule.name,
            rule.annotations["runbook"]
        );
    }
    let Some(promtool) = monitoring::prometheus_tool("promtool") else {
        return;
    };
    let output = Command::new(promtool)
        .args(["check", "rules"])
        .arg(monitoring::rules_file())
        .output()
        .expect("run promtool check rules");
    assert!(
        output.status.success(),
        "promtool check rules: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The families and label names the golden exposition (a sample in every
/// family, see lb-userspace `metrics/golden.rs`) has, plus Prometheus's own
/// `up` and target labels.
fn exported() -> (BTreeSet<String>, BTreeSet<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lb-userspace/src/metrics/testdata/exposition-0.0.4.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let samples = parse_metrics(&text);
    let mut names: BTreeSet<String> = samples.iter().map(|s| s.name.clone()).collect();
    names.insert("up".to_owned());
    let mut labels: BTreeSet<String> = samples
        .iter()
        .flat_map(|s| s.labels.iter().map(|(k, _)| k.clone()))
        .collect();
    labels.extend(["instance".to_owned(), "job".to_owned()]);
    (names, labels)
}

/// Every metric the dashboard and the rules read is one daas-lb exports
/// (or `up`), with labels it has: the service label is `name` everywhere.
#[test]
fn dashboard_and_rules_read_only_exported_families_and_labels() {
    let (names, labels) = exported();
    assert!(!labels.contains("service"), "{labels:?}");
    let dashboard = monitoring::dashboard();
    assert_eq!(dashboard["schemaVersion"], 39);
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let variables = monitoring::dashboard_variables(&dashboard);
    assert_eq!(
        variables.keys().map(String::as_str).collect::<Vec<_>>(),
        ["instance", "name"]
    );
    let queries = monitoring::dashboard_queries(&dashboard);
    assert!(queries.len() >= 30, "{} queries", queries.len());
    let exprs = queries
        .iter()
        .map(|q| (format!("panel {:?} {}", q.panel, q.ref_id), q.expr.clone()))
        .chain(
            monitoring::alert_rules()
                .into_iter()
                .map(|r| (format!("rule {}", r.name), r.expr)),
        );
    for (what, expr) in exprs {
        let (metrics, used) = monitoring::names_in(&expr);
        assert!(!metrics.is_empty(), "{what}: no metric in {expr}");
        for metric in metrics {
            assert!(names.contains(&metric), "{what}: {metric} is not exported");
        }
        for label in used {
            assert!(
                labels.contains(&label) || label == "le",
                "{what}: label {label} is not exported"
            );
        }
    }
}

/// `promtool check metrics` accepts a live `GET /metrics` of a daemon
/// with every kind of service (see the header).
#[test]
fn promtool_checks_a_live_scrape() {
    let Some(env) = TestEnv::new("obs_promtool") else {
        return;
    };
    let Some(promtool) = monitoring::prometheus_tool("promtool") else {
        return;
    };
    let rig = Rig::start(&env);
    rig.traffic(&env);
    let text = rig.daemon.metrics();
    for family in [
        "daas_lb_service_fail_open",
        "daas_lb_registry_last_update_timestamp_seconds",
        "daas_lb_attestation_failures_total",
        "daas_lb_xdp_verdicts_total",
        "k3s_blockchain_sync_lag_blocks",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no {family}:\n{text}"
        );
    }
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start promtool");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("piped stdin"),
        text.as_bytes(),
    )
    .expect("write the scrape to promtool");
    let output = child.wait_with_output().expect("wait for promtool");
    assert!(
        output.status.success(),
        "promtool check metrics: {}\n{}{}\nscrape:\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What one evaluation round found wrong, by expression.
fn evaluate_all(
    prometheus: &monitoring::Prometheus,
    queries: &[(String, String)],
    rules: &[monitoring::AlertRule],
) -> BTreeMap<String, String> {
    let mut problems = BTreeMap::new();
    for (what, promql) in queries {
        match prometheus.query(promql) {
            Ok(series) if series.is_empty() => {
                problems.insert(what.clone(), format!("no series: {promql}"));
            }
            Ok(_) => {}
            Err(e) => {
                problems.insert(what.clone(), format!("{e:#}"));
            }
        }
    }
    match prometheus.alert_states() {
        Ok(states) => {
            for rule in rules {
                let state = states.get(&rule.name).map_or("not loaded", String::as_str);
                if state == "not loaded"
                    || (!NOT_INDUCED.contains(&rule.name.as_str())
                        && !matches!(state, "pending" | "firing"))
                {
                    problems.insert(format!("alert {}", rule.name), state.to_owned());
                }
            }
        }
        Err(e) => {
            problems.insert("GET /api/v1/rules".to_owned(), format!("{e:#}"));
        }
    }
    problems
}

/// A real Prometheus scrapes the daemon and evaluates every dashboard
/// query and every rule expression (without its threshold) with series in
/// the result, and the induced alerts reach pending or firing.
#[test]
fn prometheus_evaluates_every_panel_and_rule_against_a_live_daemon() {
    let Some(env) = TestEnv::new("obs_prometheus") else {
        return;
    };
    let Some(binary) = monitoring::prometheus_tool("prometheus") else {
        return;
    };
    let started = Instant::now();
    let rig = Rig::start(&env);
    let dir = env.tmp.path().join("prometheus");
    std::fs::create_dir_all(&dir).expect("create the Prometheus directory");
    let prometheus =
        monitoring::Prometheus::start(&binary, &dir, PROMETHEUS, &[METRICS, DEAD_TARGET]);

    // The first scrapes of the daemon before the counters move.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let series = prometheus
            .query("daas_lb_service_refused_total{name=\"empty\"}")
            .unwrap_or_default();
        if !series.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped the daemon; targets {:?}\n{}",
            prometheus.targets(),
            prometheus.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(Duration::from_millis(1_500));
    rig.traffic(&env);

    let dashboard = monitoring::dashboard();
    let variables = monitoring::dashboard_variables(&dashboard);
    let rules = monitoring::alert_rules();
    let mut queries: Vec<(String, String)> = monitoring::dashboard_queries(&dashboard)
        .into_iter()
        .map(|q| {
            (
                format!("panel {:?} {}", q.panel, q.ref_id),
                monitoring::grafana_to_promql(&q.expr, &variables, RATE_INTERVAL),
            )
        })
        .collect();
    for rule in &rules {
        let underlying = monitoring::strip_threshold(&rule.expr)
            .unwrap_or_else(|| panic!("{}: no threshold in {}", rule.name, rule.expr));
        queries.push((
            format!("rule {} without its threshold", rule.name),
            underlying,
        ));
    }

    let deadline = Instant::now() + EVALUATE;
    let problems = loop {
        let problems = evaluate_all(&prometheus, &queries, &rules);
        if problems.is_empty() || Instant::now() >= deadline {
            break problems;
        }
        thread::sleep(Duration::from_millis(500));
    };
    assert!(
        problems.is_empty(),
        "after {EVALUATE:?}: {problems:#?}\ntargets {:?}\nprometheus log:\n{}\ndaemon log:\n{}",
        prometheus.targets(),
        prometheus.log(),
        rig.daemon.log()
    );
    eprintln!(
        "{} queries and {} alerts evaluated, all with series, in {:.1}s since the start",
        queries.len(),
        rules.len(),
        started.elapsed().as_secs_f64()
    );
    drop(prometheus);
    drop(rig);
}
