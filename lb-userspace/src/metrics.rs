//! Prometheus text exposition (format 0.0.4) of the controller's state.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, time::Duration};

use crate::{
    state_machine::ServerState,
    status::{ServerStatus, ServiceStatus, Status},
};
/// Escapes a label value (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family with a sample per (service, server).
fn per_server(
    out: &mut String,
    status: &Status,
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&ServerStatus) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for service in &status.services {
        for server in &service.servers {
            let _ = writeln!(
                out,
                "{name}{{name=\"{}\",server=\"{}\"}} {}",
                label(&service.name),
                label(&server.address),
                value(server)
            );
        }
    }
}

/// One metric family with a sample per service.
fn per_service(
    out: &mut String,
    status: &Status,
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&ServiceStatus) -> u64,
) {
    family(out, name, kind, help);
    for service in &status.services {
        let _ = writeln!(
            out,
            "{name}{{name=\"{}\"}} {}",
            label(&service.name),
            value(service)
        );
    }
}

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

/// Upper bounds of the dial-duration buckets: 1 ms × 2^k, 15 buckets (as K3s).
pub const DIAL_BUCKETS: usize = 15;

/// A cumulative Prometheus histogram with the dial buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below each bucket's bound (not yet cumulative).
    buckets: [u64; DIAL_BUCKETS],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// The upper bound of bucket `k`, in seconds.
    pub fn bound(k: usize) -> f64 {
        0.001 * f64::from(1u32 << k)
    }

    /// Records one observation.
    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        if let Some(k) = (0..DIAL_BUCKETS).find(|&k| seconds <= Self::bound(k)) {
            self.buckets[k] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Cumulative counts per bucket, then the total (the `+Inf` bucket).
    pub fn cumulative(&self) -> ([u64; DIAL_BUCKETS], u64) {
        let mut out = [0; DIAL_BUCKETS];
        let mut running = 0;
        for (k, n) in self.buckets.iter().enumerate() {
            running += n;
            out[k] = running;
        }
        (out, self.count)
    }
}

/// Counters the controller keeps (the rest of the metrics is read from the
/// status document, i.e. from the kernel and the state machines).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// State transitions per (service, server, from, to).
    pub transitions: BTreeMap<(String, String, ServerState, ServerState), u64>,
    /// Times each service failed open.
    pub fail_open: BTreeMap<String, u64>,
    /// Connections closed (destroyed) per service.
    pub closed_connections: BTreeMap<String, u64>,
    /// Times the selected backend changed, per service.
    pub selection_changes: BTreeMap<String, u64>,
    /// Dial durations per (service, outcome).
    pub dials: BTreeMap<(String, DialStatus), Histogram>,
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

    /// Records a dial duration.
    pub fn observe_dial(&mut self, service: &str, status: DialStatus, duration: Duration) {
        self.dials
            .entry((service.to_owned(), status))
            .or_default()
            .observe(duration);
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `daas_lb_api_refused_total`: refused requests and connections closed
/// early, per (listener, reason), appended to `out`.
pub fn render_api_refusals(out: &mut String, refusals: &[((&str, &str), u64)]) {
    family(
        out,
        "daas_lb_api_refused_total",
        "counter",
        "HTTP requests refused (read_only, no_token, bad_token, not_authorized) and connections closed early (head_timeout, timeout, evicted, over_capacity), per listener (metrics, api, control).",
    );
    for ((listener, reason), n) in refusals {
        let _ = writeln!(
            out,
            "daas_lb_api_refused_total{{listener=\"{}\",reason=\"{}\"}} {n}",
            label(listener),
            label(reason)
        );
    }
}

/// Renders every metric.
pub fn render(status: &Status, counters: &Counters) -> String {
    let mut out = String::new();
    per_server(
        &mut out,
        status,
        (
            "k3s_loadbalancer_server_health",
            "gauge",
            "Server state as in the K3s agent load balancer: 0 invalid, 1 failed, 2 standby, 3 unchecked, 4 recovering, 5 healthy, 6 preferred, 7 active.",
        ),
        |server| server.state as u64,
    );
    per_server(
        &mut out,
        status,
        (
            "k3s_loadbalancer_server_connections",
            "gauge",
            "Connections made through the VIP to this server that are open now (counted from the kernel with sock_diag).",
        ),
        |server| u64::from(server.connections),
    );
    per_server(
        &mut out,
        status,
        (
            "daas_lb_backend_connects_total",
            "counter",
            "connect() calls the kernel redirected from the VIP to this server.",
        ),
        |server| server.connects,
    );
    per_server(
        &mut out,
        status,
        (
            "daas_lb_backend_sendmsgs_total",
            "counter",
            "Unconnected UDP datagrams the kernel redirected from the VIP to this server.",
        ),
        |server| server.sendmsgs,
    );
    per_server(
        &mut out,
        status,
        (
            "daas_lb_xdp_packets_total",
            "counter",
            "Packets of remote clients' flows the XDP program forwarded to or from this server (both directions).",
        ),
        |server| server.xdp_packets,
    );
    per_server(
        &mut out,
        status,
        (
            "daas_lb_xdp_bytes_total",
            "counter",
            "Bytes (from the Ethernet header on) of the packets in daas_lb_xdp_packets_total.",
        ),
        |server| server.xdp_bytes,
    );
    per_server(
        &mut out,
        status,
        (
            "daas_lb_xdp_flows_total",
            "counter",
            "New XDP flows (remote clients) pinned to this server.",
        ),
        |server| server.xdp_flows,
    );
    family(
        &mut out,
        "daas_lb_xdp_drops_total",
        "counter",
        "Packets to a remote service's VIP the XDP program dropped, by reason: no_backend, snat_ports (no free SNAT port), flow_table (flow table full), unreachable (FIB).",
    );
    for service in &status.services {
        for (reason, n) in service.xdp_drops.by_reason() {
            let _ = writeln!(
                out,
                "daas_lb_xdp_drops_total{{name=\"{}\",reason=\"{reason}\"}} {n}",
                label(&service.name)
            );
        }
    }
    if let Some(xdp) = &status.xdp {
        family(
            &mut out,
            "daas_lb_xdp_verdicts_total",
            "counter",
            "Every packet the XDP program saw, by what it did and why (redirect, tx, pass_*, drop_*; see the README).",
        );
        for reason in lb_common::xdp_counter::NAMES {
            let n = xdp.verdicts.get(reason).copied().unwrap_or(0);
            let _ = writeln!(out, "daas_lb_xdp_verdicts_total{{reason=\"{reason}\"}} {n}");
        }
    }

    family(
        &mut out,
        "daas_lb_maglev_slots",
        "gauge",
        "Slots a server owns in its service's Maglev table (policy spread).",
    );
    for service in &status.services {
        for server in &service.servers {
            if let Some(slots) = server.slots {
                let _ = writeln!(
                    out,
                    "daas_lb_maglev_slots{{name=\"{}\",server=\"{}\"}} {slots}",
                    label(&service.name),
                    label(&server.address)
                );
            }
        }
    }
    family(
        &mut out,
        "k3s_loadbalancer_dial_duration_seconds",
        "histogram",
        "Duration of connects to servers, by outcome (observed by the health probes).",
    );
    for ((name, status_label), histogram) in &counters.dials {
        let (buckets, count) = histogram.cumulative();
        let labels = format!(
            "name=\"{}\",status=\"{}\"",
            label(name),
            status_label.as_str()
        );
        for (k, n) in buckets.iter().enumerate() {
            let _ = writeln!(
                out,
                "k3s_loadbalancer_dial_duration_seconds_bucket{{{labels},le=\"{}\"}} {n}",
                Histogram::bound(k)
            );
        }
        let _ = writeln!(
            out,
            "k3s_loadbalancer_dial_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "k3s_loadbalancer_dial_duration_seconds_sum{{{labels}}} {}",
            histogram.sum
        );
        let _ = writeln!(
            out,
            "k3s_loadbalancer_dial_duration_seconds_count{{{labels}}} {count}"
        );
    }

    family(
        &mut out,
        "daas_lb_state_transitions_total",
        "counter",
        "Server state changes, by service, server and states.",
    );
    for ((name, server, from, to), n) in &counters.transitions {
        let _ = writeln!(
            out,
            "daas_lb_state_transitions_total{{name=\"{}\",server=\"{}\",from=\"{from}\",to=\"{to}\"}} {n}",
            label(name),
            label(server)
        );
    }

    family(
        &mut out,
        "daas_lb_connection_poll_seconds",
        "gauge",
        "How long the last count of connections from the kernel took (sock_diag dump, rev_nat lookups, state machine).",
    );
    let _ = writeln!(
        out,
        "daas_lb_connection_poll_seconds {}",
        counters.last_poll.as_secs_f64()
    );
    family(
        &mut out,
        "daas_lb_connection_poll_sockets",
        "gauge",
        "Established TCP and connected UDP sockets to configured servers the last count saw.",
    );
    let _ = writeln!(
        out,
        "daas_lb_connection_poll_sockets {}",
        counters.last_poll_sockets
    );
    let get = |map: &BTreeMap<String, u64>, name: &str| map.get(name).copied().unwrap_or(0);
    per_service(
        &mut out,
        status,
        (
            "daas_lb_fail_open_total",
            "counter",
            "Times every server of the service failed and it failed open to the best-ranked one.",
        ),
        |service| get(&counters.fail_open, &service.name),
    );
    per_service(
        &mut out,
        status,
        (
            "daas_lb_connections_closed_total",
            "counter",
            "Connections destroyed (SOCK_DESTROY) because their server failed, was removed or lost to another.",
        ),
        |service| get(&counters.closed_connections, &service.name),
    );
    per_service(
        &mut out,
        status,
        (
            "daas_lb_service_refused_total",
            "counter",
            "Connects and sends to the VIP refused (ECONNREFUSED) because no server was usable.",
        ),
        |service| service.refused,
    );
    per_service(
        &mut out,
        status,
        (
            "daas_lb_selection_changes_total",
            "counter",
            "Times the selected backend of the service changed.",
        ),
        |service| get(&counters.selection_changes, &service.name),
    );
    render_chain(&mut out, status);
    render_attestations(&mut out, status, counters);
    out
}

/// The Nautilus attestation and ranking metrics (only with a `chain`
/// block).
fn render_attestations(out: &mut String, status: &Status, counters: &Counters) {
    if status.registry.is_none() {
        return;
    }
    per_node(
        out,
        status,
        (
            "k3s_nautilus_performance_score",
            "gauge",
            "Performance score (basis points, 0-10000) of the server's last verified attestation, while its latest one verifies.",
        ),
        |server| match (&server.attestation, &server.attestation_failure) {
            (Some(attestation), None) => Some(attestation.performance_score.to_string()),
            _ => None,
        },
    );
    per_node(
        out,
        status,
        (
            "k3s_attestation_age_seconds",
            "gauge",
            "Seconds since the enclave signed the server's last verified attestation.",
        ),
        |server| {
            server
                .attestation
                .as_ref()
                .map(|attestation| format!("{:.3}", attestation.age_seconds))
        },
    );
    family(
        out,
        "daas_lb_attestation_failures_total",
        "counter",
        "Attestations rejected by nautilus checks, by reason (bad_signature, wrong_key, stale, not_current, unreachable, ...).",
    );
    for ((service, server, reason), n) in &counters.attestation_failures {
        let _ = writeln!(
            out,
            "daas_lb_attestation_failures_total{{service=\"{}\",server=\"{}\",reason=\"{reason}\"}} {n}",
            label(service),
            label(server)
        );
    }
    per_node(
        out,
        status,
        (
            "daas_lb_server_score",
            "gauge",
            "Ranking score (performance x reputation x stake weight) of a server, with features.performance_ranking.",
        ),
        |server| server.score.map(|score| score.to_string()),
    );
}

/// One family with labels `service` and `server`, a sample for each server
/// `value` has a value for.
fn per_node(
    out: &mut String,
    status: &Status,
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&ServerStatus) -> Option<String>,
) {
    family(out, name, kind, help);
    for service in &status.services {
        for server in &service.servers {
            if let Some(value) = value(server) {
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{}\",server=\"{}\"}} {value}",
                    label(&service.name),
                    label(&server.address)
                );
            }
        }
    }
}

/// The Sui discovery metrics (only with a `chain` block).
fn render_chain(out: &mut String, status: &Status) {
    let Some(registry) = &status.registry else {
        return;
    };
    per_node(
        out,
        status,
        (
            "k3s_server_stake_amount",
            "gauge",
            "Stake (MIST) the registry lists for a discovered server's node.",
        ),
        |server| server.stake_mist.map(|stake| stake.to_string()),
    );
    per_node(
        out,
        status,
        (
            "k3s_blockchain_sync_lag_blocks",
            "gauge",
            "Checkpoints a discovered server's own Sui full node was behind the reference at its last sui_sync check.",
        ),
        |server| server.sync_lag_blocks.map(|lag| lag.to_string()),
    );
    family(
        out,
        "daas_lb_registry_events_total",
        "counter",
        "Events seen in checkpoints by the Sui discovery: registered, updated, removed (applied), ignored (not the registry's), malformed (skipped).",
    );
    for (kind, n) in &registry.events {
        let _ = writeln!(
            out,
            "daas_lb_registry_events_total{{kind=\"{}\"}} {n}",
            label(kind)
        );
    }
    family(
        out,
        "daas_lb_registry_cursor",
        "gauge",
        "Sequence number of the last checkpoint the Sui discovery applied.",
    );
    let _ = writeln!(
        out,
        "daas_lb_registry_cursor {}",
        registry.cursor.unwrap_or(0)
    );
    family(
        out,
        "daas_lb_registry_resyncs_total",
        "counter",
        "Full syncs of the Sui registry (the first one included).",
    );
    let _ = writeln!(out, "daas_lb_registry_resyncs_total {}", registry.resyncs);
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ServerStatus, ServiceStatus, XdpDrops, XdpStatus};

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
                servers: vec![
                    server("10.0.0.1:1", ServerState::Active, 3),
                    server("10.0.0.2:1", ServerState::Failed, 0),
                ],
            }],
            xdp: Some(XdpStatus {
                interfaces: vec!["eth0".into()],
                mode: "auto".into(),
                snat_ports: "61000-65535".into(),
                verdicts: [("redirect".to_owned(), 8), ("pass_ttl".to_owned(), 1)]
                    .into_iter()
                    .collect(),
            }),
            registry: None,
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
        assert!(text.contains("daas_lb_xdp_drops_total{"), "{text}");
    }

    fn with_registry() -> Status {
        let mut status = sample();
        let server = &mut status.services[0].servers[0];
        server.node = Some(format!("0x{:0>64}", "1"));
        server.stake_mist = Some(u64::MAX);
        server.sync_lag_blocks = Some(3);
        status.services[0].servers[1].stake_mist = Some(5);
        status.registry = Some(crate::status::RegistryStatus {
            synced: true,
            nodes: 2,
            cursor: Some(42),
            last_error: None,
            events: [("registered".to_owned(), 2), ("malformed".to_owned(), 1)]
                .into_iter()
                .collect(),
            resyncs: 1,
            reconnects: 0,
        });
        status
    }

    #[test]
    fn renders_chain_metrics() {
        let text = render(&with_registry(), &Counters::default());
        for line in [
            "k3s_server_stake_amount{service=\"sup\\\"er\",server=\"10.0.0.1:1\"} 18446744073709551615",
            "k3s_server_stake_amount{service=\"sup\\\"er\",server=\"10.0.0.2:1\"} 5",
            "k3s_blockchain_sync_lag_blocks{service=\"sup\\\"er\",server=\"10.0.0.1:1\"} 3",
            "daas_lb_registry_events_total{kind=\"registered\"} 2",
            "daas_lb_registry_events_total{kind=\"malformed\"} 1",
            "daas_lb_registry_cursor 42",
            "daas_lb_registry_resyncs_total 1",
            "# TYPE daas_lb_registry_resyncs_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("sync_lag_blocks{service=\"sup\\\"er\",server=\"10.0.0.2:1\"}"));
        let text = render(&sample(), &Counters::default());
        assert!(!text.contains("registry"), "{text}");
    }

    #[test]
    fn renders_attestation_metrics() {
        let mut status = with_registry();
        let servers = &mut status.services[0].servers;
        servers[0].attestation = Some(crate::status::AttestationStatus {
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
            "k3s_nautilus_performance_score{service=\"sup\\\"er\",server=\"10.0.0.1:1\"} 9000",
            "k3s_attestation_age_seconds{service=\"sup\\\"er\",server=\"10.0.0.1:1\"} 2.500",
            "k3s_attestation_age_seconds{service=\"sup\\\"er\",server=\"10.0.0.2:1\"} 2.500",
            "daas_lb_attestation_failures_total{service=\"sup\\\"er\",server=\"10.0.0.2:1\",reason=\"stale\"} 2",
            "daas_lb_attestation_failures_total{service=\"sup\\\"er\",server=\"10.0.0.2:1\",reason=\"bad_signature\"} 1",
            "daas_lb_server_score{service=\"sup\\\"er\",server=\"10.0.0.1:1\"} 720",
            "# TYPE daas_lb_attestation_failures_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains(
                "k3s_nautilus_performance_score{service=\"sup\\\"er\",server=\"10.0.0.2:1\"}"
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
        assert!((Histogram::bound(0) - 0.001).abs() < 1e-12);
        assert!((Histogram::bound(14) - 16.384).abs() < 1e-9);
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
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("k3s_loadbalancer_dial_duration_seconds_bucket{name=\"a\""))
            .count();
        assert_eq!(buckets, DIAL_BUCKETS + 1);
        assert!(text.contains(
            "k3s_loadbalancer_dial_duration_seconds_count{name=\"a\",status=\"failure\"} 5"
        ));
    }
}
