//! The controller's Prometheus metrics, written in the text format 0.0.4 by
//! the `prometheus` crate's `TextEncoder`.
//!
//! Nearly every metric is a snapshot: the kernel's counters and the state
//! machines, read into a [`Status`] at scrape time. [`render`] turns one
//! `Status` and the controller's [`Counters`] into metric families per scrape,
//! so nothing is kept twice. `Counters` holds only what the controller itself
//! counts, the dial durations as the library's `Histogram`s. The API layer
//! keeps its own counts (refused requests, reloads, server-list changes) and
//! appends their families after the controller's ([`render_api_refusals`],
//! [`render_api_changes`]).
//!
//! Invariants: each family is declared once below, in the order it is
//! written (its name, type, help and label names; the README's table lists
//! them, `golden.rs` pins them); each sample carries its family's labels in
//! that order. A family without samples is not written (the encoder refuses
//! it, as every Prometheus client library drops it): a scrape carries no data
//! for it either way.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use prometheus::{
    HistogramOpts, TextEncoder,
    core::Metric as _,
    exponential_buckets,
    proto::{self, MetricFamily, MetricType},
};

use crate::{
    api::status::{ProxyStatus, RegistryStatus, ServerStatus, ServiceStatus, Status},
    chain::discovery::StreamMode,
    policy::state_machine::ServerState,
};

/// A metric family's declaration: what `# HELP` and `# TYPE` say and the
/// names of its `N` labels.
struct Family<const N: usize> {
    name: &'static str,
    kind: MetricType,
    help: &'static str,
    labels: [&'static str; N],
}

impl<const N: usize> Family<N> {
    const fn counter(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Self {
            name,
            kind: MetricType::COUNTER,
            help,
            labels,
        }
    }

    const fn gauge(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Self {
            name,
            kind: MetricType::GAUGE,
            help,
            labels,
        }
    }

    /// The family with `metrics`, `None` without any.
    fn with(&self, metrics: impl IntoIterator<Item = proto::Metric>) -> Option<MetricFamily> {
        let metrics: Vec<_> = metrics.into_iter().collect();
        if metrics.is_empty() {
            return None;
        }
        let mut family = MetricFamily::default();
        family.set_name(self.name.to_owned());
        family.set_help(self.help.to_owned());
        family.set_field_type(self.kind);
        family.set_metric(metrics);
        Some(family)
    }

    fn label_pairs(&self, values: [&str; N]) -> Vec<proto::LabelPair> {
        self.labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value(value.to_owned());
                pair
            })
            .collect()
    }

    /// A sample of this counter or gauge.
    fn sample(&self, labels: [&str; N], value: f64) -> proto::Metric {
        let mut metric = proto::Metric::from_label(self.label_pairs(labels));
        if self.kind == MetricType::COUNTER {
            let mut counter = proto::Counter::default();
            counter.set_value(value);
            metric.set_counter(counter);
        } else {
            let mut gauge = proto::Gauge::default();
            gauge.set_value(value);
            metric.set_gauge(gauge);
        }
        metric
    }
}

/// A count as a sample value (Prometheus values are float64: above 2^53 the
/// text loses the digits Prometheus would lose when parsing it anyway).
#[expect(
    clippy::cast_precision_loss,
    reason = "Prometheus sample values are float64"
)]
const fn float(n: u64) -> f64 {
    n as f64
}

// The families, in the order they are written.

/// A family labelled by service (`name`) and server, with a sample per
/// server, and the server's value.
type PerServer = (Family<2>, fn(&ServerStatus) -> u64);

const PER_SERVER: [PerServer; 7] = [
    (
        Family::gauge(
            "k3s_loadbalancer_server_health",
            "Server state as in the K3s agent load balancer: 0 invalid, 1 failed, 2 standby, 3 unchecked, 4 recovering, 5 healthy, 6 preferred, 7 active.",
            ["name", "server"],
        ),
        |server| server.state as u64,
    ),
    (
        Family::gauge(
            "k3s_loadbalancer_server_connections",
            "Connections made through the VIP to this server that are open now (counted from the kernel with sock_diag).",
            ["name", "server"],
        ),
        |server| u64::from(server.connections),
    ),
    (
        Family::counter(
            "daas_lb_backend_connects_total",
            "connect() calls the kernel redirected from the VIP to this server.",
            ["name", "server"],
        ),
        |server| server.connects,
    ),
    (
        Family::counter(
            "daas_lb_backend_sendmsgs_total",
            "Unconnected UDP datagrams the kernel redirected from the VIP to this server.",
            ["name", "server"],
        ),
        |server| server.sendmsgs,
    ),
    (
        Family::counter(
            "daas_lb_xdp_packets_total",
            "Packets of remote clients' flows the XDP program forwarded to or from this server (both directions).",
            ["name", "server"],
        ),
        |server| server.xdp_packets,
    ),
    (
        Family::counter(
            "daas_lb_xdp_bytes_total",
            "Bytes (from the Ethernet header on) of the packets in daas_lb_xdp_packets_total.",
            ["name", "server"],
        ),
        |server| server.xdp_bytes,
    ),
    (
        Family::counter(
            "daas_lb_xdp_flows_total",
            "New XDP flows (remote clients) pinned to this server.",
            ["name", "server"],
        ),
        |server| server.xdp_flows,
    ),
];

const XDP_DROPS: Family<2> = Family::counter(
    "daas_lb_xdp_drops_total",
    "Packets to a remote service's VIP the XDP program dropped, by reason: no_backend, snat_ports (no free SNAT port), flow_table (flow table full), unreachable (FIB).",
    ["name", "reason"],
);

/// Only with an `xdp` block.
const XDP_VERDICTS: Family<1> = Family::counter(
    "daas_lb_xdp_verdicts_total",
    "Every packet the XDP program saw, by what it did and why (redirect, tx, pass_*, drop_*; see the README).",
    ["reason"],
);

/// Only with an `xdp` block.
const REMOTE_HOOK: Family<3> = Family::gauge(
    "daas_lb_remote_hook",
    "1 for the hook the forwarder for remote clients runs in on each interface: hook xdp (mode driver or skb) or tc (mode tcx or clsact).",
    ["interface", "hook", "mode"],
);

/// Only with an `xdp` block: the flow collector's view of the flow table.
const XDP_FLOW_ENTRIES: Family<1> = Family::gauge(
    "daas_lb_xdp_flow_entries",
    "Entries of the XDP flow table at the flow collector's last pass, by direction (forward: client to VIP, reply: backend to SNAT address; two per flow).",
    ["direction"],
);

const XDP_FLOW_CAPACITY: Family<0> = Family::gauge(
    "daas_lb_xdp_flow_capacity",
    "Capacity of the XDP flow table (entries, two per flow; an LRU map evicts beyond it).",
    [],
);

const XDP_FLOWS_REMOVED: Family<1> = Family::counter(
    "daas_lb_xdp_flows_removed_total",
    "XDP flows the flow collector removed, by reason (tcp_closed, tcp_idle, tcp_unreplied, udp_idle; orphan: one entry of the two, alone).",
    ["reason"],
);

const XDP_FLOW_GC_SECONDS: Family<0> = Family::gauge(
    "daas_lb_xdp_flow_gc_seconds",
    "How long the flow collector's last pass over the flow table took.",
    [],
);

const XDP_FLOW_CREATED: Family<0> = Family::counter(
    "daas_lb_xdp_flow_entries_created_total",
    "XDP flow table entries the kernel programs created (two per new flow, one per reply entry re-created after an eviction).",
    [],
);

const XDP_FLOW_EVICTIONS: Family<0> = Family::counter(
    "daas_lb_xdp_flow_evictions_total",
    "XDP flow table entries the LRU evicted, at least: created minus removed minus present at the flow collector's last complete pass (exact when the table was quiet during it).",
    [],
);

const MAGLEV_SLOTS: Family<2> = Family::gauge(
    "daas_lb_maglev_slots",
    "Slots a server owns in its service's Maglev table (policy spread).",
    ["name", "server"],
);

const DIAL_DURATION: Family<2> = Family {
    name: "k3s_loadbalancer_dial_duration_seconds",
    kind: MetricType::HISTOGRAM,
    help: "Duration of client connects through the VIP to servers, by outcome (TCP, seen by the kernel).",
    labels: ["name", "status"],
};

const PROBE_DIAL_DURATION: Family<2> = Family {
    name: "daas_lb_probe_dial_duration_seconds",
    kind: MetricType::HISTOGRAM,
    help: "Duration of the health probes' connects to servers, by outcome.",
    labels: ["name", "status"],
};

const DIAL_REACTION: Family<0> = Family {
    name: "daas_lb_dial_reaction_seconds",
    kind: MetricType::HISTOGRAM,
    help: "From the kernel seeing a client connect fail or stall to the controller having rewritten the maps for it (the server's connections are closed after).",
    labels: [],
};

const DIAL_FAILURES: Family<3> = Family::counter(
    "daas_lb_dial_failures_total",
    "Client connects through the VIP the kernel saw fail or stall, by service, server and reason (reset, timeout, stalled).",
    ["name", "server", "reason"],
);

const STATE_TRANSITIONS: Family<4> = Family::counter(
    "daas_lb_state_transitions_total",
    "Server state changes, by service, server and states.",
    ["name", "server", "from", "to"],
);

const POLL_SECONDS: Family<0> = Family::gauge(
    "daas_lb_connection_poll_seconds",
    "How long the last count of connections from the kernel took (sock_diag dump, rev_nat lookups, state machine).",
    [],
);

const POLL_SOCKETS: Family<0> = Family::gauge(
    "daas_lb_connection_poll_sockets",
    "Established TCP and connected UDP sockets to configured servers the last count saw.",
    [],
);

const FAIL_OPEN: Family<1> = Family::counter(
    "daas_lb_fail_open_total",
    "Times every server of the service failed and it failed open to the best-ranked one.",
    ["name"],
);

const CONNECTIONS_CLOSED: Family<1> = Family::counter(
    "daas_lb_connections_closed_total",
    "Connections destroyed (SOCK_DESTROY) because their server failed, was removed or lost to another.",
    ["name"],
);

const SERVICE_REFUSED: Family<1> = Family::counter(
    "daas_lb_service_refused_total",
    "Connects and sends to the VIP refused (ECONNREFUSED) because no server was usable.",
    ["name"],
);

const FAIL_OPEN_NOW: Family<1> = Family::gauge(
    "daas_lb_service_fail_open",
    "1 while every server of the service failed and it fails open to the best-ranked one, else 0.",
    ["name"],
);

const SELECTION_CHANGES: Family<1> = Family::counter(
    "daas_lb_selection_changes_total",
    "Times the selected backend of the service changed.",
    ["name"],
);

// Proxy mode, only for services the daemon proxies itself.

const PROXY_ACCEPTED: Family<1> = Family::counter(
    "daas_lb_proxy_accepted_total",
    "Clients the proxy-mode listener of the service accepted.",
    ["name"],
);

const PROXY_CONNECTIONS: Family<1> = Family::gauge(
    "daas_lb_proxy_connections",
    "Connections the proxy-mode service carries now.",
    ["name"],
);

const PROXY_NO_SERVER: Family<1> = Family::counter(
    "daas_lb_proxy_no_server_total",
    "Proxied clients closed because no server could be dialed.",
    ["name"],
);

const PROXY_LOCAL_ERRORS: Family<1> = Family::counter(
    "daas_lb_proxy_local_errors_total",
    "Proxied clients closed for the daemon's own errors (file descriptors, buffers, local ports), not blamed on a server.",
    ["name"],
);

const PROXY_REPORTS_DROPPED: Family<1> = Family::counter(
    "daas_lb_proxy_reports_dropped_total",
    "Proxy dial reports the controller's queue could not take.",
    ["name"],
);

const DATAPLANE_EBPF: Family<1> = Family::gauge(
    "daas_lb_dataplane_ebpf",
    "1 while the eBPF programs are loaded and attached, 0 while every service is proxied (dataplane: proxy, or auto fell back).",
    ["configured"],
);

// Sui discovery, only with a `chain` block.

const STAKE: Family<2> = Family::gauge(
    "k3s_server_stake_amount",
    "Stake (MIST) the registry lists for a discovered server's node.",
    ["name", "server"],
);

const SYNC_LAG: Family<2> = Family::gauge(
    "k3s_blockchain_sync_lag_blocks",
    "Checkpoints a server's own Sui full node was behind the reference (or its pool's highest member) at its last sui_sync check.",
    ["name", "server"],
);

const REGISTRY_EVENTS: Family<1> = Family::counter(
    "daas_lb_registry_events_total",
    "Events seen in checkpoints by the Sui discovery: registered, updated, removed (applied), ignored (not the registry's), malformed (skipped).",
    ["kind"],
);

const REGISTRY_STREAM: Family<1> = Family::gauge(
    "daas_lb_registry_stream",
    "1 for the stream the Sui discovery follows the chain with: filtered (SubscribeEvents, registry events only), checkpoints (every checkpoint, the fallback) or polling (the latest checkpoint every second, without subscriptions); 0 for the others.",
    ["mode"],
);

const REGISTRY_CURSOR: Family<0> = Family::gauge(
    "daas_lb_registry_cursor",
    "Sequence number of the last checkpoint the Sui discovery applied.",
    [],
);

const REGISTRY_LAST_UPDATE: Family<0> = Family::gauge(
    "daas_lb_registry_last_update_timestamp_seconds",
    "Unix time the Sui discovery last moved its cursor (a full sync or a checkpoint applied); absent before the first full sync.",
    [],
);

const REGISTRY_RESYNCS: Family<0> = Family::counter(
    "daas_lb_registry_resyncs_total",
    "Full syncs of the Sui registry (the first one included).",
    [],
);

const DISCOVERED_CAPPED: Family<1> = Family::gauge(
    "daas_lb_discovered_servers_capped",
    "Eligible registry nodes a discovery service left out for its discovery.max_servers (0: none).",
    ["name"],
);

// Nautilus attestations and ranking, only with a `chain` block.

const PERFORMANCE_SCORE: Family<2> = Family::gauge(
    "k3s_nautilus_performance_score",
    "Performance score (basis points, 0-10000) of the server's last verified attestation, while its latest one verifies.",
    ["name", "server"],
);

const ATTESTATION_AGE: Family<2> = Family::gauge(
    "k3s_attestation_age_seconds",
    "Seconds since the enclave signed the server's last verified attestation.",
    ["name", "server"],
);

const ATTESTATION_FAILURES: Family<3> = Family::counter(
    "daas_lb_attestation_failures_total",
    "Attestations rejected by nautilus checks, by reason (bad_signature, wrong_key, stale, not_current, unreachable, ...).",
    ["name", "server", "reason"],
);

const SERVER_SCORE: Family<2> = Family::gauge(
    "daas_lb_server_score",
    "Ranking score (performance x reputation x stake weight) of a server, with features.performance_ranking.",
    ["name", "server"],
);

/// Appended by the API after the controller's families.
const API_REFUSED: Family<2> = Family::counter(
    "daas_lb_api_refused_total",
    "HTTP requests refused (read_only, no_token, bad_token, not_authorized) and connections closed early (head_timeout, timeout, evicted, over_capacity), per listener (metrics, api, control).",
    ["listener", "reason"],
);

/// Appended by the API after [`API_REFUSED`]; both `result`s always have a
/// sample.
const CONFIG_RELOADS: Family<1> = Family::counter(
    "daas_lb_config_reloads_total",
    "Configuration reloads (SIGHUP or POST /reload), by result: applied, or rejected (the running configuration stays).",
    ["result"],
);

/// Appended by the API after [`CONFIG_RELOADS`]: every configured service
/// has both `result`s; a name no service has is never a label value.
const SERVER_LIST_CHANGES: Family<2> = Family::counter(
    "daas_lb_server_list_changes_total",
    "Server lists replaced with PUT /services/{name}/servers, by service and result: applied, or rejected (the list stays); requests for unknown services are not counted.",
    ["name", "result"],
);

/// Outcome label of `k3s_loadbalancer_dial_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DialStatus {
    /// The connect succeeded.
    Success,
    /// The connect failed or timed out.
    Failure,
}

impl DialStatus {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// Result label of `daas_lb_config_reloads_total` and
/// `daas_lb_server_list_changes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeResult {
    /// The change took effect.
    Applied,
    /// The change was refused or could not be applied; what ran before
    /// stays.
    Rejected,
}

impl ChangeResult {
    /// Both, in the order their samples are written.
    pub const ALL: [Self; 2] = [Self::Applied, Self::Rejected];

    /// `Applied` for `Ok`, `Rejected` for `Err`.
    pub const fn of<T, E>(result: &Result<T, E>) -> Self {
        match result {
            Ok(_) => Self::Applied,
            Err(_) => Self::Rejected,
        }
    }

    /// The label value: `applied` or `rejected`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Rejected => "rejected",
        }
    }
}

/// Dial-duration buckets: upper bounds 1 ms × 2^k, k < 15 (as K3s), then
/// `+Inf`.
pub const DIAL_BUCKETS: usize = 15;

/// A dial-duration histogram of `family` with the [`DIAL_BUCKETS`] buckets.
fn dial_histogram(family: &Family<2>) -> prometheus::Result<prometheus::Histogram> {
    let buckets = exponential_buckets(0.001, 2.0, DIAL_BUCKETS)?;
    prometheus::Histogram::with_opts(HistogramOpts::new(family.name, family.help).buckets(buckets))
}

/// Reaction buckets (seconds): 0.1 ms to 250 ms in 1-2.5-5 steps, then
/// `+Inf`; 5 ms (the goal for the 99th percentile) is a bound.
pub const REACTION_BUCKETS: [f64; 11] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// Counters the controller keeps (the rest of the metrics is read from the
/// status document, i.e. from the kernel and the state machines). A clone
/// shares the dial histograms.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// State transitions per (service, server, from, to).
    pub transitions: BTreeMap<(String, String, ServerState, ServerState), u64>,
    /// Times each service failed open.
    pub fail_open: BTreeMap<String, u64>,
    /// Connections closed (destroyed) per service.
    pub closed_connections: BTreeMap<String, u64>,
    /// Times the selected backend changed, per service.
    pub selection_changes: BTreeMap<String, u64>,
    /// Client dial durations per (service, outcome), from the kernel.
    pub dials: BTreeMap<(String, DialStatus), prometheus::Histogram>,
    /// Probe dial durations per (service, outcome).
    pub probe_dials: BTreeMap<(String, DialStatus), prometheus::Histogram>,
    /// From a failed client dial in the kernel to the maps rewritten.
    pub dial_reaction: Option<prometheus::Histogram>,
    /// Client dials the kernel saw fail, per (service, server, reason).
    pub dial_failures: BTreeMap<(String, String, &'static str), u64>,
    /// How long the last connection count took (dump, lookups, events).
    pub last_poll: Duration,
    /// Sockets to configured servers the last dump returned.
    pub last_poll_sockets: usize,
    /// Rejected attestations per (service, server, reason label).
    pub attestation_failures: BTreeMap<(String, String, &'static str), u64>,
}

impl Counters {
    /// Counts a state transition.
    pub fn transition(
        &mut self,
        service: &str,
        server: SocketAddr,
        from: ServerState,
        to: ServerState,
    ) {
        *self
            .transitions
            .entry((service.to_owned(), server.to_string(), from, to))
            .or_default() += 1;
    }

    /// Counts a fail-open selection.
    pub fn failed_open(&mut self, service: &str) {
        *self.fail_open.entry(service.to_owned()).or_default() += 1;
    }

    /// Counts closed connections.
    pub fn closed(&mut self, service: &str, n: u64) {
        *self
            .closed_connections
            .entry(service.to_owned())
            .or_default() += n;
    }

    /// Counts a selection change.
    pub fn selection_changed(&mut self, service: &str) {
        *self
            .selection_changes
            .entry(service.to_owned())
            .or_default() += 1;
    }

    /// Counts a rejected attestation.
    pub fn attestation_failed(&mut self, service: &str, server: SocketAddr, reason: &'static str) {
        *self
            .attestation_failures
            .entry((service.to_owned(), server.to_string(), reason))
            .or_default() += 1;
    }

    /// Records a client dial's duration (seen by the kernel).
    pub fn observe_dial(&mut self, service: &str, status: DialStatus, duration: Duration) {
        self.dials
            .entry((service.to_owned(), status))
            .or_insert_with(|| {
                dial_histogram(&DIAL_DURATION)
                    .expect("constant, valid name and buckets (see the tests)")
            })
            .observe(duration.as_secs_f64());
    }

    /// Records a probe's dial duration.
    pub fn observe_probe_dial(&mut self, service: &str, status: DialStatus, duration: Duration) {
        self.probe_dials
            .entry((service.to_owned(), status))
            .or_insert_with(|| {
                dial_histogram(&PROBE_DIAL_DURATION)
                    .expect("constant, valid name and buckets (see the tests)")
            })
            .observe(duration.as_secs_f64());
    }

    /// Records how long the controller took from a failed client dial in
    /// the kernel to the maps rewritten.
    pub fn observe_dial_reaction(&mut self, reaction: Duration) {
        self.dial_reaction
            .get_or_insert_with(|| {
                prometheus::Histogram::with_opts(
                    HistogramOpts::new(DIAL_REACTION.name, DIAL_REACTION.help)
                        .buckets(REACTION_BUCKETS.to_vec()),
                )
                .expect("constant, valid name and buckets (see the tests)")
            })
            .observe(reaction.as_secs_f64());
    }

    /// Counts a client dial the kernel saw fail or stall.
    pub fn dial_failed(&mut self, service: &str, server: SocketAddr, reason: &'static str) {
        *self
            .dial_failures
            .entry((service.to_owned(), server.to_string(), reason))
            .or_default() += 1;
    }
}

/// Writes `families` in the text format 0.0.4.
fn encode(families: &[MetricFamily], out: &mut String) {
    TextEncoder::new()
        .encode_utf8(families, out)
        .expect("every family has a name and samples, and a String takes any text");
}

/// `daas_lb_api_refused_total`: refused requests and connections closed
/// early, per (listener, reason), appended to `out`.
pub fn render_api_refusals(out: &mut String, refusals: &[((&str, &str), u64)]) {
    let family = API_REFUSED.with(
        refusals
            .iter()
            .map(|&((listener, reason), n)| API_REFUSED.sample([listener, reason], float(n))),
    );
    encode(family.as_slice(), out);
}

/// `daas_lb_config_reloads_total` per result and
/// `daas_lb_server_list_changes_total` per (service, result): the changes
/// made through the API, appended to `out` after [`render_api_refusals`].
/// Written as given: the API supplies the zeros that make both families
/// appear from the first scrape.
pub fn render_api_changes(
    out: &mut String,
    reloads: &[(ChangeResult, u64)],
    server_lists: &[((String, ChangeResult), u64)],
) {
    let families = [
        CONFIG_RELOADS.with(
            reloads
                .iter()
                .map(|&(result, n)| CONFIG_RELOADS.sample([result.as_str()], float(n))),
        ),
        SERVER_LIST_CHANGES.with(server_lists.iter().map(|((service, result), n)| {
            SERVER_LIST_CHANGES.sample([service, result.as_str()], float(*n))
        })),
    ];
    let families: Vec<MetricFamily> = families.into_iter().flatten().collect();
    encode(&families, out);
}

/// Renders every metric.
pub fn render(status: &Status, counters: &Counters) -> String {
    let mut families = Vec::new();
    for (family, value) in &PER_SERVER {
        families.push(per_server(status, family, |server| {
            Some(float(value(server)))
        }));
    }
    families.push(XDP_DROPS.with(status.services.iter().flat_map(|service| {
        service
            .xdp_drops
            .by_reason()
            .map(|(reason, n)| XDP_DROPS.sample([&service.name, reason], float(n)))
    })));
    if let Some(xdp) = &status.xdp {
        families.push(
            XDP_VERDICTS.with(lb_common::xdp_counter::NAMES.map(|reason| {
                let n = xdp.verdicts.get(reason).copied().unwrap_or(0);
                XDP_VERDICTS.sample([reason], float(n))
            })),
        );
        families.push(
            REMOTE_HOOK.with(
                xdp.hooks
                    .iter()
                    .map(|hook| REMOTE_HOOK.sample([&hook.interface, &hook.hook, &hook.mode], 1.0)),
            ),
        );
        let flows = &xdp.flows;
        families.push(XDP_FLOW_ENTRIES.with([
            XDP_FLOW_ENTRIES.sample(["forward"], float(flows.forward)),
            XDP_FLOW_ENTRIES.sample(["reply"], float(flows.reply)),
        ]));
        families
            .push(XDP_FLOW_CAPACITY.with([XDP_FLOW_CAPACITY.sample([], float(flows.capacity))]));
        families.push(
            XDP_FLOWS_REMOVED.with(crate::policy::flow_expiry::Reason::ALL.map(|reason| {
                let n = flows
                    .removed_by_reason
                    .get(reason.as_str())
                    .copied()
                    .unwrap_or(0);
                XDP_FLOWS_REMOVED.sample([reason.as_str()], float(n))
            })),
        );
        families.push(
            XDP_FLOW_GC_SECONDS.with([XDP_FLOW_GC_SECONDS.sample([], flows.last_pass_ms / 1000.0)]),
        );
        families.push(XDP_FLOW_CREATED.with([XDP_FLOW_CREATED.sample([], float(flows.created))]));
        families
            .push(XDP_FLOW_EVICTIONS.with([XDP_FLOW_EVICTIONS.sample([], float(flows.evicted))]));
    }
    families.push(per_server(status, &MAGLEV_SLOTS, |server| {
        server.slots.map(f64::from)
    }));
    for (family, dials) in [
        (&DIAL_DURATION, &counters.dials),
        (&PROBE_DIAL_DURATION, &counters.probe_dials),
    ] {
        families.push(
            family.with(dials.iter().map(|((name, outcome), histogram)| {
                let mut metric = histogram.metric();
                metric.set_label(family.label_pairs([name, outcome.as_str()]));
                metric
            })),
        );
    }
    families.push(
        DIAL_REACTION.with(
            counters
                .dial_reaction
                .iter()
                .map(prometheus::core::Metric::metric),
        ),
    );
    families.push(
        DIAL_FAILURES.with(
            counters
                .dial_failures
                .iter()
                .map(|((name, server, reason), &n)| {
                    DIAL_FAILURES.sample([name, server, reason], float(n))
                }),
        ),
    );
    families.push(
        STATE_TRANSITIONS.with(counters.transitions.iter().map(
            |((name, server, from, to), &n)| {
                STATE_TRANSITIONS.sample([name, server, from.as_str(), to.as_str()], float(n))
            },
        )),
    );
    families.push(POLL_SECONDS.with([POLL_SECONDS.sample([], counters.last_poll.as_secs_f64())]));
    families.push(
        POLL_SOCKETS.with([POLL_SOCKETS.sample([], float(counters.last_poll_sockets as u64))]),
    );
    let get = |map: &BTreeMap<String, u64>, service: &ServiceStatus| {
        float(map.get(&service.name).copied().unwrap_or(0))
    };
    families.push(per_service(status, &FAIL_OPEN, |service| {
        get(&counters.fail_open, service)
    }));
    families.push(per_service(status, &CONNECTIONS_CLOSED, |service| {
        get(&counters.closed_connections, service)
    }));
    families.push(per_service(status, &SERVICE_REFUSED, |service| {
        float(service.refused)
    }));
    families.push(per_service(status, &FAIL_OPEN_NOW, |service| {
        float(u64::from(service.fail_open))
    }));
    families.push(per_service(status, &SELECTION_CHANGES, |service| {
        get(&counters.selection_changes, service)
    }));
    proxies(status, &mut families);
    // Also without a `chain` block: a pool of full nodes checked by sui_sync.
    families.push(per_server(status, &SYNC_LAG, |server| {
        server.sync_lag_blocks.map(float)
    }));
    if let Some(registry) = &status.registry {
        chain(status, registry, &mut families);
        attestations(status, counters, &mut families);
    }
    let families: Vec<MetricFamily> = families.into_iter().flatten().collect();
    let mut out = String::new();
    encode(&families, &mut out);
    out
}

/// A sample per server `value` has a value for, labelled by service and
/// server.
fn per_server(
    status: &Status,
    family: &Family<2>,
    value: impl Fn(&ServerStatus) -> Option<f64>,
) -> Option<MetricFamily> {
    family.with(status.services.iter().flat_map(|service| {
        service.servers.iter().filter_map(|server| {
            Some(family.sample([&service.name, &server.address], value(server)?))
        })
    }))
}

/// A sample per service, labelled by its name.
fn per_service(
    status: &Status,
    family: &Family<1>,
    value: impl Fn(&ServiceStatus) -> f64,
) -> Option<MetricFamily> {
    family.with(
        status
            .services
            .iter()
            .map(|service| family.sample([&service.name], value(service))),
    )
}

/// One number of a proxied service's [`ProxyStatus`].
type ProxyValue = fn(&ProxyStatus) -> u64;

/// The proxy-mode metrics: the data plane in use, and a sample per proxied
/// service in each proxy family.
fn proxies(status: &Status, families: &mut Vec<Option<MetricFamily>>) {
    let dataplane = &status.dataplane;
    families.push(
        DATAPLANE_EBPF.with([
            DATAPLANE_EBPF.sample([&dataplane.configured], float(u64::from(dataplane.ebpf)))
        ]),
    );
    let counters: [(&Family<1>, ProxyValue); 5] = [
        (&PROXY_ACCEPTED, |proxy| proxy.accepted),
        (&PROXY_CONNECTIONS, |proxy| proxy.active),
        (&PROXY_NO_SERVER, |proxy| proxy.no_server),
        (&PROXY_LOCAL_ERRORS, |proxy| proxy.local_errors),
        (&PROXY_REPORTS_DROPPED, |proxy| proxy.reports_dropped),
    ];
    for (family, value) in counters {
        families.push(family.with(status.services.iter().filter_map(|service| {
            let proxy = service.proxy.as_ref()?;
            Some(family.sample([&service.name], float(value(proxy))))
        })));
    }
}

/// The Sui discovery metrics.
fn chain(status: &Status, registry: &RegistryStatus, families: &mut Vec<Option<MetricFamily>>) {
    families.push(per_server(status, &STAKE, |server| {
        server.stake_mist.map(float)
    }));
    families.push(
        REGISTRY_EVENTS.with(
            registry
                .events
                .iter()
                .map(|(kind, &n)| REGISTRY_EVENTS.sample([kind], float(n))),
        ),
    );
    families.push(
        REGISTRY_CURSOR.with([REGISTRY_CURSOR.sample([], float(registry.cursor.unwrap_or(0)))]),
    );
    families.push(
        REGISTRY_LAST_UPDATE.with(registry.last_advance_unix_ms.map(|ms| {
            // Millisecond resolution, as the cursor moves several times a
            // second on a live chain.
            REGISTRY_LAST_UPDATE.sample([], float(ms) / 1000.0)
        })),
    );
    families.push(REGISTRY_RESYNCS.with([REGISTRY_RESYNCS.sample([], float(registry.resyncs))]));
    families.push(
        DISCOVERED_CAPPED.with(status.services.iter().filter_map(|service| {
            let left_out = service.discovered_capped?;
            Some(DISCOVERED_CAPPED.sample([&service.name], float(left_out)))
        })),
    );
    // Absent until a stream has caught up.
    families.push(
        REGISTRY_STREAM.with(
            registry
                .stream
                .as_deref()
                .map(|in_use| {
                    StreamMode::ALL.map(|mode| {
                        let on = mode.as_str() == in_use;
                        REGISTRY_STREAM.sample([mode.as_str()], if on { 1.0 } else { 0.0 })
                    })
                })
                .into_iter()
                .flatten(),
        ),
    );
}

/// The Nautilus attestation and ranking metrics.
fn attestations(status: &Status, counters: &Counters, families: &mut Vec<Option<MetricFamily>>) {
    families.push(per_server(status, &PERFORMANCE_SCORE, |server| {
        match (&server.attestation, &server.attestation_failure) {
            (Some(attestation), None) => Some(float(attestation.performance_score)),
            _ => None,
        }
    }));
    families.push(per_server(status, &ATTESTATION_AGE, |server| {
        // Millisecond resolution (the age is whole milliseconds already).
        let age = server.attestation.as_ref()?.age_seconds;
        Some((age * 1000.0).round() / 1000.0)
    }));
    families.push(
        ATTESTATION_FAILURES.with(counters.attestation_failures.iter().map(
            |((service, server, reason), &n)| {
                ATTESTATION_FAILURES.sample([service, server, reason], float(n))
            },
        )),
    );
    families.push(per_server(status, &SERVER_SCORE, |server| {
        server.score.map(float)
    }));
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::{ServerStatus, ServiceStatus, XdpDrops, XdpStatus};

    fn server(address: &str, state: ServerState, connections: u32) -> ServerStatus {
        ServerStatus {
            address: address.into(),
            state,
            state_since: "2026-11-22T05:00:00.000Z".into(),
            connections,
            reason: None,
            slots: None,
            healthy: true,
            default: false,
            connects: 9,
            sendmsgs: 0,
            xdp_packets: 5,
            xdp_bytes: 700,
            xdp_flows: 1,
            last_check: None,
            node: None,
            stake_mist: None,
            sui_rpc: None,
            sync_lag_blocks: None,
            score: None,
            attestation: None,
            attestation_failure: None,
            dial: None,
        }
    }

    fn sample() -> Status {
        Status {
            services: vec![ServiceStatus {
                name: "sup\"er".into(),
                vip: "127.0.0.1:6444".into(),
                protocol: "tcp".into(),
                selected: Some("10.0.0.1:1".into()),
                policy: "failover".into(),
                fail_open: false,
                refused: 4,
                remote: true,
                xdp_packets: 10,
                xdp_flows: 2,
                xdp_drops: XdpDrops {
                    snat_ports: 3,
                    ..XdpDrops::default()
                },
                dial_stall_after_ms: None,
                source: "config".into(),
                dataplane: "ebpf".into(),
                proxy: None,
                discovered_capped: None,
                servers: vec![
                    server("10.0.0.1:1", ServerState::Active, 3),
                    server("10.0.0.2:1", ServerState::Failed, 0),
                ],
                dns: Vec::new(),
            }],
            xdp: Some(XdpStatus {
                interfaces: vec!["eth0".into()],
                mode: "auto".into(),
                hooks: vec![crate::kernel::HookInUse {
                    interface: "eth0".into(),
                    hook: "tc".into(),
                    mode: "tcx".into(),
                    why: "auto: veth -> tc".into(),
                }],
                snat_ports: "61000-65535".into(),
                verdicts: [("redirect".to_owned(), 8), ("pass_ttl".to_owned(), 1)]
                    .into_iter()
                    .collect(),
                flows: crate::api::status::XdpFlowsStatus {
                    entries: 5,
                    forward: 3,
                    reply: 2,
                    capacity: 262_144,
                    removed_by_reason: [("orphan".to_owned(), 1), ("udp_idle".to_owned(), 7)]
                        .into_iter()
                        .collect(),
                    last_pass_ms: 1.5,
                    passes: 4,
                    created: 40,
                    evicted: 17,
                },
                hop_gen: 2,
            }),
            registry: None,
            kernel_log: crate::config::KernelLog::Off,
            k3s: Vec::new(),
            dataplane: crate::api::status::DataplaneStatus::default(),
        }
    }

    #[test]
    fn renders_health_as_k3s_state_numbers_and_counters() {
        let mut counters = Counters::default();
        counters.selection_changed("sup\"er");
        counters.selection_changed("sup\"er");
        counters.failed_open("sup\"er");
        counters.closed("sup\"er", 5);
        let text = render(&sample(), &counters);
        for line in [
            "k3s_loadbalancer_server_health{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 7",
            "k3s_loadbalancer_server_health{name=\"sup\\\"er\",server=\"10.0.0.2:1\"} 1",
            "k3s_loadbalancer_server_connections{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 3",
            "daas_lb_backend_connects_total{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 9",
            "daas_lb_service_refused_total{name=\"sup\\\"er\"} 4",
            "daas_lb_selection_changes_total{name=\"sup\\\"er\"} 2",
            "daas_lb_fail_open_total{name=\"sup\\\"er\"} 1",
            "daas_lb_connections_closed_total{name=\"sup\\\"er\"} 5",
            "daas_lb_service_fail_open{name=\"sup\\\"er\"} 0",
            "daas_lb_connection_poll_sockets 0",
            "# TYPE daas_lb_backend_connects_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn renders_xdp_counters() {
        let text = render(&sample(), &Counters::default());
        for line in [
            "daas_lb_xdp_packets_total{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 5",
            "daas_lb_xdp_bytes_total{name=\"sup\\\"er\",server=\"10.0.0.2:1\"} 700",
            "daas_lb_xdp_flows_total{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 1",
            "daas_lb_xdp_drops_total{name=\"sup\\\"er\",reason=\"snat_ports\"} 3",
            "daas_lb_xdp_drops_total{name=\"sup\\\"er\",reason=\"no_backend\"} 0",
            "daas_lb_xdp_drops_total{name=\"sup\\\"er\",reason=\"unreachable\"} 0",
            "daas_lb_xdp_verdicts_total{reason=\"redirect\"} 8",
            "daas_lb_xdp_verdicts_total{reason=\"pass_ttl\"} 1",
            "daas_lb_xdp_verdicts_total{reason=\"drop_flow_table\"} 0",
            "daas_lb_xdp_flow_entries{direction=\"forward\"} 3",
            "daas_lb_xdp_flow_entries{direction=\"reply\"} 2",
            "daas_lb_xdp_flow_capacity 262144",
            "daas_lb_xdp_flows_removed_total{reason=\"orphan\"} 1",
            "daas_lb_xdp_flows_removed_total{reason=\"udp_idle\"} 7",
            "daas_lb_xdp_flows_removed_total{reason=\"tcp_idle\"} 0",
            "daas_lb_xdp_flow_gc_seconds 0.0015",
            "daas_lb_xdp_flow_entries_created_total 40",
            "daas_lb_xdp_flow_evictions_total 17",
            "# TYPE daas_lb_xdp_flow_evictions_total counter",
            "# TYPE daas_lb_xdp_verdicts_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let verdicts = text
            .lines()
            .filter(|l| l.starts_with("daas_lb_xdp_verdicts_total{"))
            .count();
        assert_eq!(verdicts, lb_common::xdp_counter::COUNT as usize);

        // Without an xdp block there are no verdicts, but the per-service
        // and per-server families are there (with zeros).
        let mut status = sample();
        status.xdp = None;
        let text = render(&status, &Counters::default());
        assert!(!text.contains("daas_lb_xdp_verdicts_total"), "{text}");
        assert!(!text.contains("daas_lb_xdp_flow_entries"), "{text}");
        assert!(!text.contains("daas_lb_xdp_flows_removed_total"), "{text}");
        assert!(text.contains("daas_lb_xdp_drops_total{"), "{text}");
    }

    fn with_registry() -> Status {
        let mut status = sample();
        let server = &mut status.services[0].servers[0];
        server.node = Some(format!("0x{:0>64}", "1"));
        server.stake_mist = Some(u64::MAX);
        server.sync_lag_blocks = Some(3);
        status.services[0].servers[1].stake_mist = Some(5);
        status.registry = Some(RegistryStatus {
            synced: true,
            nodes: 2,
            below_min_stake: 0,
            cursor: Some(42),
            last_error: None,
            events: [("registered".to_owned(), 2), ("malformed".to_owned(), 1)]
                .into_iter()
                .collect(),
            resyncs: 1,
            reconnects: 0,
            last_advance_unix_ms: Some(1_779_426_000_250),
            stream: Some("filtered".to_owned()),
        });
        status
    }

    #[test]
    fn renders_chain_metrics() {
        let text = render(&with_registry(), &Counters::default());
        for line in [
            // u64::MAX as the float64 Prometheus stores (2^64).
            "k3s_server_stake_amount{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 18446744073709552000",
            "k3s_server_stake_amount{name=\"sup\\\"er\",server=\"10.0.0.2:1\"} 5",
            "k3s_blockchain_sync_lag_blocks{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 3",
            "daas_lb_registry_events_total{kind=\"registered\"} 2",
            "daas_lb_registry_events_total{kind=\"malformed\"} 1",
            "daas_lb_registry_cursor 42",
            "daas_lb_registry_resyncs_total 1",
            "daas_lb_registry_last_update_timestamp_seconds 1779426000.25",
            "# TYPE daas_lb_registry_resyncs_total counter",
            "daas_lb_registry_stream{mode=\"filtered\"} 1",
            "daas_lb_registry_stream{mode=\"checkpoints\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("sync_lag_blocks{name=\"sup\\\"er\",server=\"10.0.0.2:1\"}"));
        let text = render(&sample(), &Counters::default());
        assert!(!text.contains("registry"), "{text}");
    }

    #[test]
    fn renders_attestation_metrics() {
        let mut status = with_registry();
        let servers = &mut status.services[0].servers;
        servers[0].attestation = Some(crate::api::status::AttestationStatus {
            performance_score: 9_000,
            reputation_score: 8_000,
            stake_mist: 5,
            timestamp_ms: 1,
            age_seconds: 2.5,
        });
        servers[0].score = Some(720);
        // A server whose latest attestation was rejected keeps its age but
        // loses its score gauge.
        servers[1].attestation = servers[0].attestation.clone();
        servers[1].attestation_failure = Some("stale".to_owned());
        let mut counters = Counters::default();
        let second = "10.0.0.2:1".parse().unwrap();
        counters.attestation_failed("sup\"er", second, "stale");
        counters.attestation_failed("sup\"er", second, "stale");
        counters.attestation_failed("sup\"er", second, "bad_signature");
        let text = render(&status, &counters);
        for line in [
            "k3s_nautilus_performance_score{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 9000",
            "k3s_attestation_age_seconds{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 2.5",
            "k3s_attestation_age_seconds{name=\"sup\\\"er\",server=\"10.0.0.2:1\"} 2.5",
            "daas_lb_attestation_failures_total{name=\"sup\\\"er\",server=\"10.0.0.2:1\",reason=\"stale\"} 2",
            "daas_lb_attestation_failures_total{name=\"sup\\\"er\",server=\"10.0.0.2:1\",reason=\"bad_signature\"} 1",
            "daas_lb_server_score{name=\"sup\\\"er\",server=\"10.0.0.1:1\"} 720",
            "# TYPE daas_lb_attestation_failures_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains(
                "k3s_nautilus_performance_score{name=\"sup\\\"er\",server=\"10.0.0.2:1\"}"
            ),
            "{text}"
        );
        // Without a chain block: none of these families.
        let text = render(&sample(), &counters);
        assert!(!text.contains("attestation"), "{text}");
    }

    #[test]
    fn each_family_is_one_contiguous_group() {
        let mut counters = Counters::default();
        counters.observe_dial("a", DialStatus::Success, Duration::from_millis(1));
        counters.transition(
            "a",
            "10.0.0.1:1".parse().unwrap(),
            ServerState::Unchecked,
            ServerState::Recovering,
        );
        counters.attestation_failed("a", "10.0.0.1:1".parse().unwrap(), "stale");
        let text = render(&with_registry(), &counters);
        let mut seen = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            if seen.last() != Some(&family.to_owned()) {
                assert!(
                    !seen.contains(&family.to_owned()),
                    "{family} split in\n{text}"
                );
                seen.push(family.to_owned());
            }
        }
    }

    #[test]
    fn dial_histogram_has_fifteen_doubling_buckets_from_one_millisecond() {
        let mut counters = Counters::default();
        for ms in [0.5, 1.0, 1.5, 3.0, 20_000.0] {
            counters.observe_dial(
                "a",
                DialStatus::Failure,
                Duration::from_secs_f64(ms / 1000.0),
            );
        }
        let text = render(&sample(), &counters);
        let bucket = |le: &str| {
            let prefix = format!(
                "k3s_loadbalancer_dial_duration_seconds_bucket{{name=\"a\",status=\"failure\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no bucket {le} in\n{text}"))
                .to_owned()
        };
        assert_eq!(bucket("0.001"), "2");
        assert_eq!(bucket("0.002"), "3");
        assert_eq!(bucket("0.004"), "4");
        assert_eq!(bucket("16.384"), "4");
        assert_eq!(bucket("+Inf"), "5");
        let bounds: Vec<&str> = text
            .lines()
            .filter_map(|l| {
                l.strip_prefix("k3s_loadbalancer_dial_duration_seconds_bucket{name=\"a\"")?
                    .split("le=\"")
                    .nth(1)?
                    .split('"')
                    .next()
            })
            .collect();
        assert_eq!(
            bounds,
            [
                "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256",
                "0.512", "1.024", "2.048", "4.096", "8.192", "16.384", "+Inf"
            ]
        );
        assert_eq!(bounds.len(), DIAL_BUCKETS + 1);
        assert!(text.contains(
            "k3s_loadbalancer_dial_duration_seconds_count{name=\"a\",status=\"failure\"} 5"
        ));
    }
}
