//! Nautilus attestations end to end: the real `daas-lb run` with a `chain:`
//! block pointing at an in-process fake Sui full node
//! ([`lb_tests::SuiChain`]) that holds the registry and the Nautilus
//! `EnclaveConfig<T>` / `Enclave<T>` objects, one fake enclave
//! ([`FakeEnclave`], HTTP on `127.0.0.1:<ephemeral>`) per registered node,
//! and a discovered service checked with `kind: nautilus`.
//!
//! Each registry node `0x3c…0N` serves at `127.0.0.5X:7000` (a K3s server
//! stand-in, [`Node`]) and names its enclave (`nautilus_url`, `enclave_id`).
//! Checked: verified attestations in `GET /status` and `/metrics`; every
//! failure switch of the fake demotes its node with the specific reason and
//! `daas_lb_attestation_failures_total{reason}` label and the node recovers
//! when it is turned off; an `EnclaveConfig` version bump rejects the old
//! enclaves until they re-register; performance ranking in failover
//! selection (and its absence when the feature is off) and in the Maglev
//! weights of a spread service; the real, expired Nitro attestation
//! document; and `cache_ttl` sparing the enclaves.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant, SystemTime},
};

use lb_tests::{Daemon, Node, SuiChain, TestEnv, metric, parse_metrics, samples, service_yaml};
use lb_userspace::{
    chain::registry,
    demo::{
        fake_deployment::{APP, default_pcrs, fake_address, publish_config, publish_enclave},
        fake_enclave::{FakeEnclave, FakeScores},
    },
    health::nautilus::unix_ms,
    policy::ranking::{Score, StakeWeight},
};
use serde_json::Value;
use sui_sdk_types::Address;

/// The service every test uses.
const SVC: &str = "api";
/// Its VIP.
const VIP: &str = "127.0.0.1:6444";
/// The service port of every node (`discovery.port`).
const PORT: u16 = 7000;
/// Top-level config lines: count connections often.
const TOP: &str = "connection_poll_interval: 100ms\n";
/// The fake chain's id.
const CHAIN_ID: &str = "4c78adac";
/// Every node's stake in the registry, MIST (4 SUI).
const STAKE: u64 = 4_000_000_000;
/// The bound of the waits for a state change (a few check intervals and
/// slack).
const REACT: Duration = Duration::from_secs(5);
/// The bound of the first wait, for every node to pass its first checks.
const START: Duration = Duration::from_secs(10);
/// The default Maglev table size of a spread service.
const TABLE: u32 = 16381;

/// A registry key (node address) ending in `byte`.
fn key(byte: u8) -> Address {
    fake_address(0x3c, byte)
}

/// Node `i`'s registry key (`0x3c…0{i+1}`).
fn node_key(i: usize) -> Address {
    key(u8::try_from(i + 1).expect("few nodes"))
}

/// The `EnclaveConfig<T>` object's id.
fn config_id() -> Address {
    fake_address(0xc0, 1)
}

/// Node `i`'s `Enclave<T>` object id.
fn enclave_id(i: usize) -> Address {
    fake_address(0xe0, u8::try_from(i).expect("few nodes"))
}

/// A metric value as Prometheus shows it.
#[expect(
    clippy::cast_precision_loss,
    reason = "the test's values are exact in an f64 (below 2^53)"
)]
const fn as_f64(value: u64) -> f64 {
    value as f64
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Scores with `performance` and `reputation`, attesting `stake` MIST.
fn scores(performance: u64, reputation: u64, stake: u64) -> FakeScores {
    FakeScores {
        performance_score: performance,
        reputation_score: reputation,
        stake_amount: stake,
        ..FakeScores::default()
    }
}

/// The ranking value of a node with these attested scores and [`STAKE`] on
/// chain, with the default stake weight.
fn ranking_value(s: &FakeScores) -> u64 {
    Score {
        performance: s.performance_score,
        reputation: s.reputation_score,
        stake_mist: STAKE,
    }
    .value(StakeWeight::Sqrt)
}

/// Registered nodes, each with its own fake enclave, and the fake chain
/// holding the registry and the enclave objects. Dropped nodes first, the
/// chain's runtime last.
struct Fleet {
    nodes: Vec<Node>,
    enclaves: Vec<FakeEnclave>,
    chain: SuiChain,
}

impl Fleet {
    /// Starts the fake chain, publishes `EnclaveConfig` version 1 and, for
    /// each of `scores`, a fake enclave attesting them, its `Enclave`
    /// (version 1), a K3s stand-in `node{i}` on `127.0.0.{51+i}:7000` and
    /// its registration (key `0x3c…0{i+1}`, [`STAKE`]). Call it after the
    /// test environment exists (everything listens in its namespace).
    fn start(scores: &[FakeScores]) -> Self {
        let chain = SuiChain::start(CHAIN_ID);
        let mut fleet = Self {
            nodes: Vec::new(),
            enclaves: Vec::new(),
            chain,
        };
        fleet.publish_config(1);
        for (i, s) in scores.iter().enumerate() {
            let enclave = fleet
                .chain
                .block_on(FakeEnclave::start())
                .expect("start a fake enclave");
            enclave.set_scores(*s);
            let octet = 51 + u8::try_from(i).expect("few nodes");
            let node = Node::start(&format!("node{i}"), Ipv4Addr::new(127, 0, 0, octet), PORT);
            fleet.chain.fake.register(
                node_key(i),
                registry::Node {
                    operator: key(0xee),
                    endpoint: format!("127.0.0.{octet}"),
                    stake: STAKE,
                    sui_rpc: String::new(),
                    nautilus_url: enclave.url(),
                    enclave_id: enclave_id(i),
                },
            );
            fleet.enclaves.push(enclave);
            fleet.nodes.push(node);
            fleet.publish_enclave(i, 1);
        }
        fleet
    }

    /// Node `i`'s service address, as the status and metrics show it.
    fn addr(&self, i: usize) -> String {
        self.nodes[i].addr.to_string()
    }

    /// Puts the `EnclaveConfig` (the fake deployment's PCRs) at `version`.
    fn publish_config(&self, version: u64) {
        publish_config(&self.chain.fake, config_id(), default_pcrs(), version);
    }

    /// Puts node `i`'s `Enclave` (its fake's key), registered under
    /// config `version`.
    fn publish_enclave(&self, i: usize, config_version: u64) {
        publish_enclave(
            &self.chain.fake,
            enclave_id(i),
            self.enclaves[i].public_key(),
            config_version,
            APP,
        );
    }

    /// The top-level config: [`TOP`], the `chain:` block naming the
    /// `EnclaveConfig`, and `features` lines (whole lines, may be empty).
    fn top(&self, features: &str) -> String {
        format!(
            "{TOP}{}{features}",
            self.chain
                .yaml(&format!("  enclave_config: \"{}\"\n", config_id()))
        )
    }

    /// Starts the daemon on [`Fleet::top`] and the [`SVC`] service checked
    /// by `check`, discovered from the registry (no static servers), with
    /// `extra` service lines (e.g. `    policy: spread\n`).
    fn daemon(&self, env: &TestEnv, features: &str, check: &str, extra: &str) -> Daemon {
        let mut services = service_yaml(SVC, VIP, &[], None, check);
        let _ = writeln!(services, "    discovery: {{ source: sui, port: {PORT} }}");
        services.push_str(extra);
        env.start_with(&self.top(features), &services)
    }
}

/// A `nautilus` check every 500 ms with `extra` fields (`, key: value…`);
/// a generous timeout, as a debug build's first checks are slow under load.
fn nautilus_check(extra: &str) -> String {
    format!("{{ kind: nautilus, interval: 500ms, timeout: 500ms, jitter: 0%, max_age: 5s{extra} }}")
}

/// `GET /status` as JSON (the attestation fields are read from it).
fn status_json(daemon: &Daemon) -> anyhow::Result<Value> {
    let body = lb_userspace::api::client::get(daemon.api, "/status")?;
    Ok(serde_json::from_str(&body)?)
}

/// The [`SVC`] service in a status document (`null` if absent).
fn service_json(status: &Value) -> &Value {
    status["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == SVC))
        .unwrap_or(&Value::Null)
}

/// The server `addr` of [`SVC`] in a status document (`null` if absent).
fn server_json<'a>(status: &'a Value, addr: &str) -> &'a Value {
    service_json(status)["servers"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["address"] == addr))
        .unwrap_or(&Value::Null)
}

/// A server's state word.
fn state(server: &Value) -> &str {
    server["state"].as_str().unwrap_or("absent")
}

/// Whether a server is preferred or active.
fn ready(server: &Value) -> bool {
    matches!(state(server), "preferred" | "active")
}

/// Its last check's reason (empty before the first check).
fn last_reason(server: &Value) -> &str {
    server["last_check"]["reason"].as_str().unwrap_or_default()
}

/// Polls `/status` every 20 ms until `check` accepts it; panics after
/// `within` with the last complaint, the status and the log.
fn wait_until(
    daemon: &Daemon,
    within: Duration,
    what: &str,
    check: impl Fn(&Value) -> Result<(), String>,
) -> Value {
    let deadline = Instant::now() + within;
    let mut last = (String::from("no status"), Value::Null);
    loop {
        match status_json(daemon) {
            Ok(status) => match check(&status) {
                Ok(()) => return status,
                Err(why) => last = (why, status),
            },
            Err(e) => last.0 = format!("GET /status: {e:#}"),
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}: {}\nstatus {:#}\nlog:\n{}",
            last.0,
            last.1,
            daemon.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `Err` naming the first of `nodes` (indexes into `fleet`) that is not
/// ready with a verified attestation.
fn all_verified(fleet: &Fleet, nodes: &[usize], status: &Value) -> Result<(), String> {
    for &i in nodes {
        let server = server_json(status, &fleet.addr(i));
        if !ready(server)
            || !server["attestation"].is_object()
            || !server["attestation_failure"].is_null()
            || !last_reason(server).starts_with("nautilus: performance ")
        {
            return Err(format!("node{i} not verified: {server}"));
        }
    }
    Ok(())
}

/// Waits until every node of `fleet` is ready with a verified attestation.
fn wait_all_verified(daemon: &Daemon, fleet: &Fleet, within: Duration) -> Value {
    let all: Vec<usize> = (0..fleet.nodes.len()).collect();
    wait_until(daemon, within, "every node verified", |s| {
        all_verified(fleet, &all, s)
    })
}

/// The value of `name{name="api", server=addr, extra…}` in `metrics`.
fn server_metric(metrics: &str, name: &str, addr: &str, extra: &[(&str, &str)]) -> Option<f64> {
    let mut labels = vec![("name", SVC), ("server", addr)];
    labels.extend_from_slice(extra);
    metric(metrics, name, &labels)
}

/// `daas_lb_attestation_failures_total` of `addr` with `reason`.
fn failures(metrics: &str, addr: &str, reason: &str) -> f64 {
    server_metric(
        metrics,
        "daas_lb_attestation_failures_total",
        addr,
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// The `daas_lb_attestation_failures_total` samples of `addr` above 0,
/// except `unreachable`: under load a debug build's first check may
/// outlast its timeout, before the first attestation verifies.
fn rejections(metrics: &str, addr: &str) -> Vec<(String, f64)> {
    let all = parse_metrics(metrics);
    samples(
        &all,
        "daas_lb_attestation_failures_total",
        &[("name", SVC), ("server", addr)],
    )
    .into_iter()
    .filter(|s| s.value > 0.0)
    .filter_map(|s| {
        let reason = s.labels.iter().find(|(k, _)| k == "reason")?;
        (reason.1 != "unreachable").then(|| (reason.1.clone(), s.value))
    })
    .collect()
}

/// The name of the node a fresh connect through the VIP reaches, or what
/// the client saw instead.
fn connect_backend(env: &TestEnv) -> Result<String, String> {
    let out = env.cgroup.client(&["tcp", VIP, "ping"]);
    match &out.reply {
        Some(reply) if out.ok => Ok(reply.split(':').next().unwrap_or_default().to_owned()),
        _ => Err(format!("{out:?}")),
    }
}

/// Three nodes with their own enclaves and different scores: `GET /status`
/// shows each server's verified attestation (scores, attested stake,
/// signing time, age), its ranking `score` and a `nautilus: performance …`
/// check reason; `/metrics` has `k3s_nautilus_performance_score`,
/// `k3s_attestation_age_seconds` and `daas_lb_server_score` with the same
/// values, and no attestation failure (but a slow first check under load).
#[test]
fn verified_attestations_show_in_status_and_metrics() {
    let Some(env) = TestEnv::new("nautilus_verified") else {
        return;
    };
    let attested = [
        scores(9_000, 8_000, 1_000_000_000),
        scores(7_000, 6_000, 2_000_000_000),
        scores(5_000, 9_500, 0),
    ];
    let fleet = Fleet::start(&attested);
    let before_ms = unix_ms(SystemTime::now());
    let daemon = fleet.daemon(
        &env,
        "features:\n  performance_ranking: true\n",
        &nautilus_check(", cache_ttl: 0s"),
        "",
    );
    let status = wait_all_verified(&daemon, &fleet, START);
    let after_ms = unix_ms(SystemTime::now());
    let metrics = daemon.metrics();
    for (i, want) in attested.iter().enumerate() {
        let addr = fleet.addr(i);
        let server = server_json(&status, &addr);
        eprintln!("node{i}: {server}");
        let attestation = &server["attestation"];
        assert_eq!(
            attestation["performance_score"].as_u64(),
            Some(want.performance_score),
            "{server}"
        );
        assert_eq!(
            attestation["reputation_score"].as_u64(),
            Some(want.reputation_score),
            "{server}"
        );
        assert_eq!(
            attestation["stake_mist"].as_u64(),
            Some(want.stake_amount),
            "{server}"
        );
        let signed = attestation["timestamp_ms"].as_u64().unwrap_or_default();
        assert!(
            (before_ms..=after_ms).contains(&signed),
            "timestamp_ms {signed} not in [{before_ms}, {after_ms}]: {server}"
        );
        let age = attestation["age_seconds"].as_f64().unwrap_or(-1.0);
        assert!((0.0..5.0).contains(&age), "age_seconds {age}: {server}");
        assert_eq!(
            server["score"].as_u64(),
            Some(ranking_value(want)),
            "{server}"
        );
        assert_eq!(server["node"], node_key(i).to_string(), "{server}");
        assert_eq!(server["stake_mist"].as_u64(), Some(STAKE), "{server}");
        assert_eq!(server["last_check"]["ok"], true, "{server}");
        let reason = last_reason(server);
        let want_reason = format!(
            "nautilus: performance {}, reputation {}, signed ",
            want.performance_score, want.reputation_score
        );
        assert!(reason.starts_with(&want_reason), "{reason}");

        assert_eq!(
            server_metric(&metrics, "k3s_nautilus_performance_score", &addr, &[]),
            Some(as_f64(want.performance_score)),
            "{metrics}"
        );
        let age = server_metric(&metrics, "k3s_attestation_age_seconds", &addr, &[]);
        assert!(
            age.is_some_and(|a| (0.0..5.0).contains(&a)),
            "k3s_attestation_age_seconds of {addr}: {age:?}\n{metrics}"
        );
        assert_eq!(
            server_metric(&metrics, "daas_lb_server_score", &addr, &[]),
            Some(as_f64(ranking_value(want))),
            "{metrics}"
        );
        let rejected = rejections(&metrics, &addr);
        assert!(rejected.is_empty(), "{rejected:?}\n{metrics}");
    }
}

/// A failure switch of the fake enclave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    WrongKey,
    BadSignature,
    Stale,
    WrongIntent,
    WrongNode,
    EnclaveError,
    Slow,
    BelowThreshold,
    StakeAboveChain,
}

/// The scores every node of the switch test attests normally.
const NORMAL: FakeScores = FakeScores {
    performance_score: 9_000,
    reputation_score: 9_000,
    stake_amount: 1_000_000_000,
    valid_for: Duration::from_mins(1),
};

/// The node the `wrong_node` switch attests instead.
fn other_node() -> Address {
    key(0x99)
}

impl Switch {
    const ALL: [Self; 9] = [
        Self::WrongKey,
        Self::BadSignature,
        Self::Stale,
        Self::WrongIntent,
        Self::WrongNode,
        Self::EnclaveError,
        Self::Slow,
        Self::BelowThreshold,
        Self::StakeAboveChain,
    ];

    /// The `reason` label of `daas_lb_attestation_failures_total`.
    const fn label(self) -> &'static str {
        match self {
            Self::WrongKey => "wrong_key",
            Self::BadSignature => "bad_signature",
            Self::Stale => "stale",
            Self::WrongIntent => "wrong_intent",
            Self::WrongNode => "wrong_node",
            Self::EnclaveError => "enclave_error",
            Self::Slow => "unreachable",
            Self::BelowThreshold => "below_threshold",
            Self::StakeAboveChain => "stake_above_chain",
        }
    }

    /// Turns the switch on or off on `enclave`.
    fn set(self, enclave: &FakeEnclave, on: bool) {
        match self {
            Self::WrongKey => enclave.set_wrong_key(on).expect("generate a key"),
            Self::BadSignature => enclave.set_bad_signature(on).expect("generate a key"),
            Self::Stale => enclave.set_age(if on {
                Duration::from_secs(30)
            } else {
                Duration::ZERO
            }),
            Self::WrongIntent => enclave.set_intent(if on { 7 } else { 0 }),
            Self::WrongNode => enclave.set_node(on.then(other_node)),
            Self::EnclaveError => enclave.set_error(on.then(|| "overloaded".to_owned())),
            Self::Slow => enclave.set_delay(if on {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            }),
            Self::BelowThreshold => enclave.set_scores(if on {
                FakeScores {
                    performance_score: 500,
                    ..NORMAL
                }
            } else {
                NORMAL
            }),
            Self::StakeAboveChain => enclave.set_scores(if on {
                FakeScores {
                    stake_amount: STAKE + 1,
                    ..NORMAL
                }
            } else {
                NORMAL
            }),
        }
    }

    /// Texts the check's reason must contain while the switch is on, for a
    /// node with key `node` whose enclave's key is `pk`.
    fn texts(self, node: Address, pk: &[u8; 32]) -> Vec<String> {
        match self {
            Self::WrongKey => vec![
                "nautilus: the enclave reports key ".to_owned(),
                format!("the chain has {}", hex(pk)),
            ],
            Self::BadSignature => vec![
                "nautilus: the signature does not verify with the enclave's on-chain key"
                    .to_owned(),
            ],
            Self::Stale => vec![
                "nautilus: timestamp ".to_owned(),
                " ms old ".to_owned(),
                "at most 5000 ms allowed".to_owned(),
            ],
            Self::WrongIntent => vec!["nautilus: intent scope 7, expected 0".to_owned()],
            Self::WrongNode => vec![format!(
                "nautilus: the attestation is about node {}, expected {node}",
                other_node()
            )],
            Self::EnclaveError => {
                vec!["nautilus: the enclave answered HTTP 400: overloaded".to_owned()]
            }
            Self::Slow => vec!["nautilus: unreachable: ".to_owned()],
            Self::BelowThreshold => {
                vec!["nautilus: performance score 500 is below the minimum 1000".to_owned()]
            }
            Self::StakeAboveChain => vec![format!(
                "nautilus: attested stake {} MIST is above the on-chain stake {STAKE} MIST",
                STAKE + 1
            )],
        }
    }
}

/// Ten nodes: node0 untouched, nodes 1–9 each with one failure switch of
/// its enclave (wrong key, bad signature, stale timestamp, wrong intent,
/// wrong node, HTTP 400, slower than the check's timeout, performance below
/// `min_performance_score`, attested stake above the registry's). Once all
/// are preferred, every switch is turned on at once: each node fails with
/// its specific reason, `attestation_failure` label and
/// `daas_lb_attestation_failures_total{reason}`, and loses its
/// `k3s_nautilus_performance_score`; node0 stays preferred. With the
/// switches off, every node recovers.
#[test]
fn each_failure_switch_demotes_its_node_with_the_right_reason_and_metric() {
    let Some(env) = TestEnv::new("nautilus_switches") else {
        return;
    };
    let fleet = Fleet::start(&[NORMAL; 10]);
    let daemon = fleet.daemon(
        &env,
        "",
        &nautilus_check(", cache_ttl: 0s, min_performance_score: 1000"),
        "",
    );
    wait_all_verified(&daemon, &fleet, START);
    let cases: Vec<(usize, Switch)> = Switch::ALL
        .iter()
        .enumerate()
        .map(|(i, s)| (i + 1, *s))
        .collect();

    for &(i, switch) in &cases {
        switch.set(&fleet.enclaves[i], true);
    }
    let status = wait_until(&daemon, REACT, "every switched node failed", |s| {
        all_verified(&fleet, &[0], s)?;
        for &(i, switch) in &cases {
            let server = server_json(s, &fleet.addr(i));
            let reason = last_reason(server);
            let texts = switch.texts(node_key(i), &fleet.enclaves[i].public_key());
            if state(server) != "failed"
                || server["attestation_failure"] != switch.label()
                || server["last_check"]["ok"] != false
                || !texts.iter().all(|t| reason.contains(t.as_str()))
            {
                return Err(format!(
                    "node{i} ({}) not failed with {texts:?}: {server}",
                    switch.label()
                ));
            }
        }
        Ok(())
    });
    let metrics = daemon.metrics();
    for &(i, switch) in &cases {
        let addr = fleet.addr(i);
        eprintln!(
            "{}: {}",
            switch.label(),
            last_reason(server_json(&status, &addr))
        );
        assert!(
            failures(&metrics, &addr, switch.label()) > 0.0,
            "no daas_lb_attestation_failures_total{{server=\"{addr}\",reason=\"{}\"}}\n{metrics}",
            switch.label()
        );
        assert_eq!(
            server_metric(&metrics, "k3s_nautilus_performance_score", &addr, &[]),
            None,
            "{addr} ({}) still has a performance score\n{metrics}",
            switch.label()
        );
    }
    let control = fleet.addr(0);
    assert_eq!(
        server_metric(&metrics, "k3s_nautilus_performance_score", &control, &[]),
        Some(as_f64(NORMAL.performance_score)),
        "{metrics}"
    );
    let rejected = rejections(&metrics, &control);
    assert!(rejected.is_empty(), "{rejected:?}\n{metrics}");

    for &(i, switch) in &cases {
        switch.set(&fleet.enclaves[i], false);
    }
    wait_all_verified(&daemon, &fleet, REACT);
    let metrics = daemon.metrics();
    for i in 0..fleet.nodes.len() {
        assert_eq!(
            server_metric(
                &metrics,
                "k3s_nautilus_performance_score",
                &fleet.addr(i),
                &[]
            ),
            Some(as_f64(NORMAL.performance_score)),
            "node{i}\n{metrics}"
        );
    }
}

/// Publishing the `EnclaveConfig` at version 2 (a PCR update) makes both
/// enclaves, registered under version 1, not current: their nodes fail
/// with `not_current` and the versions in the reason. Re-registering the
/// enclaves under version 2 brings them back.
#[test]
fn a_config_version_bump_rejects_the_old_enclaves_until_they_re_register() {
    let Some(env) = TestEnv::new("nautilus_version") else {
        return;
    };
    let fleet = Fleet::start(&[NORMAL, NORMAL]);
    let daemon = fleet.daemon(&env, "", &nautilus_check(", cache_ttl: 0s"), "");
    wait_all_verified(&daemon, &fleet, START);

    fleet.publish_config(2);
    let want =
        "nautilus: the enclave was registered for config version 1, the config is at version 2";
    let status = wait_until(&daemon, REACT, "both nodes not current", |s| {
        for i in 0..2 {
            let server = server_json(s, &fleet.addr(i));
            if state(server) != "failed"
                || server["attestation_failure"] != "not_current"
                || !last_reason(server).contains(want)
            {
                return Err(format!("node{i}: {server}"));
            }
        }
        Ok(())
    });
    eprintln!("{}", last_reason(server_json(&status, &fleet.addr(0))));
    let metrics = daemon.metrics();
    for i in 0..2 {
        assert!(
            failures(&metrics, &fleet.addr(i), "not_current") > 0.0,
            "node{i}\n{metrics}"
        );
    }

    for i in 0..2 {
        fleet.publish_enclave(i, 2);
    }
    wait_all_verified(&daemon, &fleet, REACT);
}

/// The service's `selected` server.
fn selected(status: &Value) -> &str {
    service_json(status)["selected"].as_str().unwrap_or("none")
}

/// `policy: failover` with `performance_ranking`: while the three nodes are
/// all preferred, the best-scored one (not the first listed) is selected;
/// when another node's attested score becomes the best, the selection
/// moves to it, and real connects through the VIP land there. Once that
/// node is active, a better score elsewhere no longer moves the selection
/// (ranking only breaks ties between equal states).
#[test]
fn performance_ranking_selects_the_best_scored_node_when_states_tie() {
    let Some(env) = TestEnv::new("nautilus_failover_ranking") else {
        return;
    };
    let attested = [
        scores(5_000, 9_000, 0),
        scores(9_000, 9_000, 0),
        scores(7_000, 9_000, 0),
    ];
    let fleet = Fleet::start(&attested);
    let daemon = fleet.daemon(
        &env,
        "features:\n  performance_ranking: true\n",
        &nautilus_check(", cache_ttl: 0s"),
        "",
    );
    let status = wait_until(&daemon, START, "all preferred, node1 selected", |s| {
        all_verified(&fleet, &[0, 1, 2], s)?;
        for i in 0..3 {
            if state(server_json(s, &fleet.addr(i))) != "preferred" {
                return Err(format!("node{i} not preferred"));
            }
        }
        if selected(s) == fleet.addr(1) {
            Ok(())
        } else {
            Err(format!("selected {}", selected(s)))
        }
    });
    let listed: Vec<&str> = service_json(&status)["servers"]
        .as_array()
        .map(|all| all.iter().filter_map(|s| s["address"].as_str()).collect())
        .unwrap_or_default();
    eprintln!(
        "servers in list order: {listed:?}; selected {}",
        selected(&status)
    );
    assert_eq!(listed.first().copied(), Some(fleet.addr(0).as_str()));

    // node2 becomes the best: the selection moves before any connect.
    fleet.enclaves[2].set_scores(scores(9_500, 9_000, 0));
    wait_until(&daemon, REACT, "node2 selected", |s| {
        if selected(s) == fleet.addr(2) {
            Ok(())
        } else {
            Err(format!("selected {}", selected(s)))
        }
    });
    assert_eq!(connect_backend(&env).as_deref(), Ok("node2"));
    for _ in 0..5 {
        assert_eq!(connect_backend(&env).as_deref(), Ok("node2"));
    }
    wait_until(&daemon, REACT, "node2 active", |s| {
        let server = server_json(s, &fleet.addr(2));
        if state(server) == "active" {
            Ok(())
        } else {
            Err(format!("{server}"))
        }
    });

    // A better score for the preferred node0 does not beat the active node2.
    let best = scores(10_000, 10_000, 0);
    fleet.enclaves[0].set_scores(best);
    wait_until(&daemon, REACT, "node0's new score", |s| {
        let server = server_json(s, &fleet.addr(0));
        if server["score"].as_u64() == Some(ranking_value(&best)) {
            Ok(())
        } else {
            Err(format!("{server}"))
        }
    });
    thread::sleep(Duration::from_millis(500));
    let status = status_json(&daemon).expect("status");
    assert_eq!(selected(&status), fleet.addr(2), "{status:#}");
    assert_eq!(connect_backend(&env).as_deref(), Ok("node2"));
}

/// The same fleet without `performance_ranking`: attestations are verified
/// (and gate health) but the scores do not rank: the first listed node is
/// selected although another has the best score, no server shows a
/// `score`, and connects land on the first node.
#[test]
fn without_performance_ranking_scores_do_not_change_the_selection() {
    let Some(env) = TestEnv::new("nautilus_no_ranking") else {
        return;
    };
    let fleet = Fleet::start(&[
        scores(5_000, 9_000, 0),
        scores(9_000, 9_000, 0),
        scores(7_000, 9_000, 0),
    ]);
    let daemon = fleet.daemon(&env, "", &nautilus_check(", cache_ttl: 0s"), "");
    let status = wait_until(&daemon, START, "all preferred", |s| {
        all_verified(&fleet, &[0, 1, 2], s)?;
        for i in 0..3 {
            if state(server_json(s, &fleet.addr(i))) != "preferred" {
                return Err(format!("node{i} not preferred"));
            }
        }
        Ok(())
    });
    assert_eq!(selected(&status), fleet.addr(0), "{status:#}");
    for i in 0..3 {
        let server = server_json(&status, &fleet.addr(i));
        assert!(server["score"].is_null(), "{server}");
    }
    fleet.enclaves[2].set_scores(scores(10_000, 10_000, 0));
    thread::sleep(Duration::from_millis(600));
    let status = status_json(&daemon).expect("status");
    assert_eq!(selected(&status), fleet.addr(0), "{status:#}");
    assert_eq!(connect_backend(&env).as_deref(), Ok("node0"));
}

/// Each server's share of the Maglev table (0..1) from its `slots`.
fn shares(fleet: &Fleet, status: &Value) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    let mut total = 0;
    for i in 0..fleet.nodes.len() {
        let server = server_json(status, &fleet.addr(i));
        let slots = server["slots"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("node{i} has no slots: {server}"))?;
        total += slots;
        out.push(f64::from(slots) / f64::from(TABLE));
    }
    if total == TABLE {
        Ok(out)
    } else {
        Err(format!("{total} slots in all"))
    }
}

/// `Ok` when `shares` are within 3 percentage points of `weights`' shares.
fn proportional(shares: &[f64], weights: &[f64]) -> Result<(), String> {
    let sum: f64 = weights.iter().sum();
    for (share, weight) in shares.iter().zip(weights) {
        if (share - weight / sum).abs() > 0.03 {
            return Err(format!("shares {shares:?}, weights {weights:?}"));
        }
    }
    Ok(())
}

/// `policy: spread` with `performance_ranking`: performance 10000, 5000
/// and 2500 (same reputation and stake) give Maglev weights 100, 50 and
/// 25, so the servers own 4/7, 2/7 and 1/7 of the table (±3 points);
/// raising the third node's score to 10000 re-weights to 2/5, 1/5, 2/5.
#[test]
fn spread_weights_follow_the_attested_scores() {
    let Some(env) = TestEnv::new("nautilus_spread") else {
        return;
    };
    let fleet = Fleet::start(&[
        scores(10_000, 10_000, 0),
        scores(5_000, 10_000, 0),
        scores(2_500, 10_000, 0),
    ]);
    let daemon = fleet.daemon(
        &env,
        "features:\n  performance_ranking: true\n",
        &nautilus_check(", cache_ttl: 0s"),
        "    policy: spread\n",
    );
    let status = wait_until(&daemon, START, "slots 100:50:25", |s| {
        all_verified(&fleet, &[0, 1, 2], s)?;
        proportional(&shares(&fleet, s)?, &[100.0, 50.0, 25.0])
    });
    eprintln!("100:50:25 -> {:?}", shares(&fleet, &status));

    fleet.enclaves[2].set_scores(scores(10_000, 10_000, 0));
    let status = wait_until(&daemon, REACT, "slots 100:50:100", |s| {
        all_verified(&fleet, &[0, 1, 2], s)?;
        proportional(&shares(&fleet, s)?, &[100.0, 50.0, 100.0])
    });
    eprintln!("100:50:100 -> {:?}", shares(&fleet, &status));
}

/// `verify_attestation_document: true`: the fake enclave serves the real
/// Nitro attestation document of the Nautilus weather example, whose
/// certificates expired long ago; the node never becomes preferred, its
/// check fails with `bad_document` and a reason saying a certificate is not
/// valid, and the failure is counted. A bad document is proof, not a slow
/// start: the node fails although it never passed a check (K3s would leave
/// an unchecked server unchecked on a failed health check).
#[test]
fn an_expired_attestation_document_is_refused() {
    let Some(env) = TestEnv::new("nautilus_document") else {
        return;
    };
    let fleet = Fleet::start(&[NORMAL]);
    let daemon = fleet.daemon(
        &env,
        "",
        &nautilus_check(", cache_ttl: 0s, verify_attestation_document: true"),
        "",
    );
    let addr = fleet.addr(0);
    let status = wait_until(&daemon, START, "bad_document", |s| {
        let server = server_json(s, &addr);
        if server["attestation_failure"] == "bad_document"
            && state(server) == "failed"
            && server["last_check"]["ok"] == false
            && last_reason(server).starts_with("nautilus: ")
            && last_reason(server).contains("is not valid at")
        {
            Ok(())
        } else {
            Err(format!("{server}"))
        }
    });
    eprintln!("{}", last_reason(server_json(&status, &addr)));
    for _ in 0..5 {
        let status = status_json(&daemon).expect("status");
        let server = server_json(&status, &addr);
        assert!(!ready(server), "{server}");
        assert!(server["attestation"].is_null(), "{server}");
        thread::sleep(Duration::from_millis(200));
    }
    let metrics = daemon.metrics();
    assert!(failures(&metrics, &addr, "bad_document") > 0.0, "{metrics}");
    assert_eq!(
        server_metric(&metrics, "k3s_nautilus_performance_score", &addr, &[]),
        None,
        "{metrics}"
    );
}

/// `cache_ttl: 2s` with checks every 150 ms: over 3 s each enclave is asked
/// for at most three attestations (a fresh verdict at most every 2 s), the
/// checks in between reuse the verdict (`(cached)` in the reason) and the
/// nodes stay preferred.
#[test]
fn cached_verdicts_spare_the_enclaves() {
    let Some(env) = TestEnv::new("nautilus_cache") else {
        return;
    };
    let fleet = Fleet::start(&[NORMAL, NORMAL]);
    let daemon = fleet.daemon(
        &env,
        "",
        "{ kind: nautilus, interval: 150ms, timeout: 150ms, jitter: 0%, max_age: 5s, cache_ttl: 2s }",
        "",
    );
    wait_all_verified(&daemon, &fleet, START);
    let before: Vec<u64> = fleet
        .enclaves
        .iter()
        .map(|e| e.calls().process_data.load(Ordering::Relaxed))
        .collect();
    let mut cached = [false; 2];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let status = status_json(&daemon).expect("status");
        all_verified(&fleet, &[0, 1], &status).unwrap_or_else(|e| panic!("{e}"));
        for (i, seen) in cached.iter_mut().enumerate() {
            *seen |= last_reason(server_json(&status, &fleet.addr(i))).ends_with(" (cached)");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let elapsed = start.elapsed();
    for (i, enclave) in fleet.enclaves.iter().enumerate() {
        let calls = enclave.calls().process_data.load(Ordering::Relaxed) - before[i];
        eprintln!("node{i}: {calls} process_data calls in {elapsed:?}");
        assert!(
            (1..=3).contains(&calls),
            "node{i}: {calls} process_data calls in {elapsed:?}"
        );
    }
    assert_eq!(cached, [true, true], "no `(cached)` reason seen");
}
