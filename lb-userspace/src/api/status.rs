//! The status document served at `GET /status` and its table rendering
//! (the client that fetches it is [`crate::api::client`]).
//!
//! Field names are a stable interface: scripts and tests parse them.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use crate::{config::KernelLog, policy::state_machine::ServerState};

/// The whole status document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// One entry per configured service, in config order.
    pub services: Vec<ServiceStatus>,
    /// The XDP forwarder for remote clients; absent without an `xdp` block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpStatus>,
    /// Sui discovery; absent without a `chain` block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryStatus>,
    /// What the kernel programs log now (`kernel_log`: the config's level,
    /// or the last `daas-lb kernel-log` since the last reload).
    #[serde(default)]
    pub kernel_log: KernelLog,
    /// The followed K3s balancers' state files; empty without a `k3s` block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub k3s: Vec<K3sFileStatus>,
    /// What carries the daemon's services.
    #[serde(default)]
    pub dataplane: DataplaneStatus,
}

/// The daemon's data plane (`dataplane` in the status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneStatus {
    /// The top-level `dataplane` setting: `ebpf`, `proxy` or `auto`.
    pub configured: String,
    /// Whether the eBPF programs are loaded and attached: false means
    /// every service is proxied.
    pub ebpf: bool,
    /// Why `auto` runs without them: the error loading or attaching gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl Default for DataplaneStatus {
    fn default() -> Self {
        Self {
            configured: "ebpf".to_owned(),
            ebpf: true,
            fallback: None,
        }
    }
}

/// One followed K3s balancer's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct K3sFileStatus {
    /// `supervisor`, `api-server` or `etcd`.
    pub balancer: String,
    /// The daas-lb service standing in for it (K3s's name for it).
    pub service: String,
    /// K3s's state file.
    pub file: String,
    /// The address K3s's balancer listens on: the service's VIP.
    pub vip: String,
    /// The last good file's `ServerURL` (absent before the first).
    pub server_url: Option<String>,
    /// Why the file is not followed right now (missing, invalid, refused),
    /// or null.
    pub problem: Option<String>,
}

/// The Sui registry as discovery last read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStatus {
    /// Whether a full sync succeeded (false while the full node cannot be
    /// read at start).
    pub synced: bool,
    /// Registered nodes (all, before the stake filter).
    pub nodes: usize,
    /// Of those, the nodes below `chain.min_stake_mist`: never servers.
    #[serde(default)]
    pub below_min_stake: usize,
    /// The last checkpoint applied.
    pub cursor: Option<u64>,
    /// The last error talking to the full node, if it still fails.
    pub last_error: Option<String>,
    /// Registry events seen, by kind (`registered`, `updated`, `removed`,
    /// `ignored`, `malformed`).
    pub events: BTreeMap<String, u64>,
    /// Full syncs done.
    pub resyncs: u64,
    /// Subscriptions lost or not established.
    pub reconnects: u64,
    /// When the cursor last moved (a full sync or a checkpoint applied), in
    /// milliseconds since the Unix epoch; absent before the first full sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_advance_unix_ms: Option<u64>,
    /// How discovery follows the chain: `filtered` (`SubscribeEvents`,
    /// registry events only), `checkpoints` (every checkpoint, the fallback
    /// for a node that does not serve filtered streams) or `polling` (the
    /// latest checkpoint every second, for a node that serves no
    /// subscription); absent until a stream has caught up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// The forwarder for remote clients as configured, the hook it runs in on
/// each interface, what it did with packets, and the flow collector's view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XdpStatus {
    /// Interfaces the program is attached to.
    pub interfaces: Vec<String>,
    /// The block's `mode`: `auto`, `driver` or `skb`.
    pub mode: String,
    /// Per interface: the hook and mode actually in use, and why.
    #[serde(default)]
    pub hooks: Vec<crate::kernel::HookInUse>,
    /// SNAT source ports, `first-last`.
    pub snat_ports: String,
    /// Packets per verdict (`lb_common::xdp_counter::NAMES`: `redirect`,
    /// `tx`, `pass_*`, `drop_*`), summed over CPUs.
    pub verdicts: BTreeMap<String, u64>,
    /// The flow table as the flow collector saw it last (absent from
    /// daemons before issue 16: zeros).
    #[serde(default)]
    pub flows: XdpFlowsStatus,
    /// The next-hop generation in `xdp_config` (moves on each route,
    /// neighbour or link change).
    #[serde(default)]
    pub hop_gen: u32,
}

/// The flow table (`flows` map) as the flow collector's last pass saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct XdpFlowsStatus {
    /// Entries (two per flow): `forward` + `reply`.
    pub entries: u64,
    /// Client → VIP entries.
    pub forward: u64,
    /// Backend → SNAT address entries.
    pub reply: u64,
    /// The map's capacity (entries).
    pub capacity: u64,
    /// Flows the collector removed since the start, by reason
    /// (`tcp_closed`, `tcp_idle`, `tcp_unreplied`, `udp_idle`, `orphan`).
    pub removed_by_reason: BTreeMap<String, u64>,
    /// How long the collector's last pass took (ms).
    pub last_pass_ms: f64,
    /// Collector passes since the start.
    pub passes: u64,
    /// Entries the kernel programs created since the `flow_stats` map was
    /// (daemons before the eviction count: 0).
    #[serde(default)]
    pub created: u64,
    /// Entries the LRU evicted since then, at least (exact when the table
    /// was quiet during a collector pass).
    #[serde(default)]
    pub evicted: u64,
}

/// Packets the XDP program dropped for one service, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpDrops {
    /// The service had no usable backend.
    pub no_backend: u64,
    /// No free SNAT port.
    pub snat_ports: u64,
    /// The flow table refused the entry.
    pub flow_table: u64,
    /// The FIB says the backend is unreachable.
    pub unreachable: u64,
}

impl XdpDrops {
    /// `(reason label, count)` in a fixed order.
    pub const fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("no_backend", self.no_backend),
            ("snat_ports", self.snat_ports),
            ("flow_table", self.flow_table),
            ("unreachable", self.unreachable),
        ]
    }

    /// All drops together.
    pub const fn total(&self) -> u64 {
        self.no_backend + self.snat_ports + self.flow_table + self.unreachable
    }
}

/// A proxy-mode service's listener and counters (`services[].proxy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// Where it listens (the VIP).
    pub listen: String,
    /// Clients accepted since it started.
    pub accepted: u64,
    /// Connections carried now.
    pub active: u64,
    /// Clients closed because no server could be dialed.
    pub no_server: u64,
    /// Clients closed because of the daemon's own errors (file
    /// descriptors, buffers, local ports), not blamed on a server.
    pub local_errors: u64,
    /// Dial reports the controller's queue could not take.
    pub reports_dropped: u64,
}

fn ebpf() -> String {
    "ebpf".to_owned()
}

/// One service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Virtual address, e.g. `127.0.0.1:6444` or `[::1]:6444`.
    pub vip: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The backend new connections go to, or null when connects are refused.
    pub selected: Option<String>,
    /// `failover` or `spread`.
    #[serde(default = "failover")]
    pub policy: String,
    /// True when every server fails and the selected one is used anyway.
    #[serde(default)]
    pub fail_open: bool,
    /// Connects and sends refused because the service had no backend.
    pub refused: u64,
    /// Whether the XDP program serves this VIP to remote clients (`remote: true`).
    #[serde(default)]
    pub remote: bool,
    /// Packets XDP forwarded for this service (both directions).
    #[serde(default)]
    pub xdp_packets: u64,
    /// New XDP flows of this service.
    #[serde(default)]
    pub xdp_flows: u64,
    /// Packets XDP dropped for this service, by reason.
    #[serde(default)]
    pub xdp_drops: XdpDrops,
    /// How long a SYN may wait before the kernel skips its server, as
    /// applied now (`dial_stall_timeout`; 0: off); absent when the
    /// service's connects are not tracked (UDP, `dial_tracking: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_stall_after_ms: Option<f64>,
    /// Where the server list comes from: `config` (the file, `set-servers`),
    /// `config+sui` (plus the Sui registry) or `k3s:<state file>`.
    #[serde(default = "from_config")]
    pub source: String,
    /// What carries the connections: `ebpf` (the kernel's connect hook)
    /// or `proxy` (the daemon listens on the VIP).
    #[serde(default = "ebpf")]
    pub dataplane: String,
    /// Proxy mode only: the listener and its counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,
    /// With `discovery`: how many eligible registry nodes were left out
    /// because of `discovery.max_servers` (0 when all are servers); absent
    /// for services without discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovered_capped: Option<u64>,
    /// Servers in config order, then the default server if it is not among them.
    pub servers: Vec<ServerStatus>,
    /// The servers (and default server) written as DNS names, with what
    /// they resolve to; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<DnsNameStatus>,
}

/// A server (or the default server) written as a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsNameStatus {
    /// The host name as written (lower case, no trailing dot).
    pub name: String,
    /// The port its servers use.
    pub port: u16,
    /// Whether it is the `default_server` (which uses its first address).
    pub default: bool,
    /// Its current addresses (`IP:port`, of the VIP's family): the last
    /// good lookup's; empty before the first.
    pub addresses: Vec<String>,
    /// Why the last lookup failed (the addresses are then the last good
    /// ones), or null.
    pub error: Option<String>,
    /// When the last good lookup was made, RFC 3339 UTC (null before it).
    pub resolved_at: Option<String>,
}

fn from_config() -> String {
    "config".to_owned()
}

fn failover() -> String {
    "failover".to_owned()
}

/// One server of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// `IP:port`.
    pub address: String,
    /// State, serialized as a lowercase word (`active`, `healthy`, `failed`, ...).
    pub state: ServerState,
    /// When it entered that state, RFC 3339 UTC.
    pub state_since: String,
    /// Connections through the VIP open now.
    pub connections: u32,
    /// Why its last check passed or failed (null before the first check).
    pub reason: Option<String>,
    /// Slots it owns in the service's Maglev table (`policy: spread` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Whether the last health check passed.
    pub healthy: bool,
    /// Whether this is the service's default server.
    pub default: bool,
    /// `connect()` calls the kernel sent to this server.
    pub connects: u64,
    /// Unconnected UDP datagrams the kernel sent to this server.
    pub sendmsgs: u64,
    /// Packets XDP forwarded to or from this server (both directions).
    #[serde(default)]
    pub xdp_packets: u64,
    /// Bytes of those packets.
    #[serde(default)]
    pub xdp_bytes: u64,
    /// New XDP flows pinned to this server.
    #[serde(default)]
    pub xdp_flows: u64,
    /// The most recent health check, if any finished.
    pub last_check: Option<CheckStatus>,
    /// The registry node this server was discovered from (`0x` + 64 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Its stake, in MIST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stake_mist: Option<u64>,
    /// Its own Sui full node (`""` when it registered none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sui_rpc: Option<String>,
    /// Checkpoints its full node was behind at the last `sui_sync` check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_lag_blocks: Option<u64>,
    /// Its ranking score (`features.performance_ranking`), once a
    /// `nautilus` check verified an attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<u64>,
    /// The last attestation a `nautilus` check verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationStatus>,
    /// While the latest `nautilus` verdict is a rejection: its label
    /// (`bad_signature`, `stale`, `wrong_key`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation_failure: Option<String>,
    /// Client dials the kernel saw (TCP services with `dial_tracking`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial: Option<DialStatus>,
}

/// What the kernel's view of client dials says about one server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialStatus {
    /// `ok`; `suspect` (a client dial failed: the kernel skips the server
    /// and a probe is on its way); `confirmed` (a probe failed too).
    pub state: String,
    /// Since when it is suspect, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// How the dial failed: `reset`, `timeout` or `stalled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its smoothed dial time (client and probe dials), once one was timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothed_ms: Option<f64>,
}

/// A verified performance attestation, as status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttestationStatus {
    /// Performance, basis points.
    pub performance_score: u64,
    /// Reputation, basis points.
    pub reputation_score: u64,
    /// The attested stake, MIST.
    pub stake_mist: u64,
    /// When the enclave signed it (Unix ms).
    pub timestamp_ms: u64,
    /// How old it is now, seconds.
    pub age_seconds: f64,
}

/// One finished health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// Whether it passed.
    pub ok: bool,
    /// Why, in a few words.
    pub reason: String,
    /// When it finished, RFC 3339 UTC.
    pub at: String,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
}

/// How wide `daas-lb status` may print: [`Layout::Fit`] keeps each server
/// row within [`FIT_WIDTH`] columns (the last check's reason is cut with `…`),
/// [`Layout::Wide`] shows everything (raw scores, perf and rep, whole
/// reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// At most [`FIT_WIDTH`] columns a server row (unless the other columns
    /// leave the last check fewer than 24 characters).
    Fit,
    /// Every field, however long the lines get.
    Wide,
}

/// The widest server row [`Layout::Fit`] prints.
pub const FIT_WIDTH: usize = 100;

/// The fewest characters [`Layout::Fit`] leaves the last column.
const MIN_LAST_COLUMN: usize = 24;

/// One column of a server table: its header, whether it is right-aligned,
/// one cell per server.
struct Column {
    header: &'static str,
    right: bool,
    cells: Vec<String>,
}

impl Column {
    fn new(header: &'static str, right: bool, cells: Vec<String>) -> Self {
        Self {
            header,
            right,
            cells,
        }
    }

    fn width(&self) -> usize {
        self.cells
            .iter()
            .map(|c| c.chars().count())
            .chain([self.header.len()])
            .max()
            .unwrap_or(0)
    }
}

/// Writes `columns` (all with as many cells) as aligned rows under their
/// headers, each line indented by two spaces, columns two spaces apart,
/// each sized to its widest cell. The last column is not padded; with
/// `limit`, it is cut so that lines stay within it (keeping at least
/// [`MIN_LAST_COLUMN`] characters).
fn write_columns(out: &mut String, columns: &[Column], limit: Option<usize>) {
    let Some((last, fixed)) = columns.split_last() else {
        return;
    };
    let widths: Vec<usize> = fixed.iter().map(Column::width).collect();
    let used = 2 + widths.iter().map(|w| w + 2).sum::<usize>();
    let room = limit.map(|limit| limit.saturating_sub(used).max(MIN_LAST_COLUMN));
    let rows = last.cells.len();
    let headers = std::iter::once(None).chain((0..rows).map(Some));
    for row in headers {
        let mut line = String::from(" ");
        for (column, &width) in fixed.iter().zip(&widths) {
            let cell = row.map_or(column.header, |r| column.cells[r].as_str());
            if column.right {
                let _ = write!(line, " {cell:>width$} ");
            } else {
                let _ = write!(line, " {cell:<width$} ");
            }
        }
        let cell = row.map_or(last.header, |r| last.cells[r].as_str());
        line.push(' ');
        line.push_str(&cut(cell, room));
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// `text`, cut to `room` characters (the last one `…`) when longer.
fn cut(text: &str, room: Option<usize>) -> String {
    match room {
        Some(room) if text.chars().count() > room => {
            let mut kept: String = text.chars().take(room.saturating_sub(1)).collect();
            kept.push('…');
            kept
        }
        _ => text.to_owned(),
    }
}

/// Each score's share of the scores' sum, in whole percent (`-` when
/// unscored; `0%` for every scored server while the sum is 0).
fn score_shares(scores: &[Option<u64>]) -> Vec<String> {
    let sum: u128 = scores.iter().flatten().map(|s| u128::from(*s)).sum();
    scores
        .iter()
        .map(|score| match score {
            None => "-".to_owned(),
            Some(_) if sum == 0 => "0%".to_owned(),
            Some(score) => format!("{}%", (u128::from(*score) * 100 + sum / 2) / sum),
        })
        .collect()
}

/// What the table says about the columns it showed.
const LEGEND: &str = "  OPEN: connections open now; TOTAL: connects the kernel sent to the server since it started\n";
/// The legend's line about scores, when a SCORE column was shown.
const SCORE_LEGEND: &str =
    "  SCORE: the server's share of its service's summed ranking scores (raw: --wide, --json)\n";

impl Status {
    /// Renders the human-readable table of `daas-lb status`, within
    /// [`FIT_WIDTH`] columns.
    pub fn to_table(&self) -> String {
        self.render(Layout::Fit)
    }

    /// Renders the table of `daas-lb status` in `layout`.
    pub fn render(&self, layout: Layout) -> String {
        let mut out = String::new();
        if self.services.is_empty() {
            out.push_str("no services configured\n");
        }
        let now = std::time::SystemTime::now();
        if let Some(xdp) = &self.xdp {
            let _ = writeln!(
                out,
                "xdp on {} ({}, SNAT ports {}): {}",
                xdp.interfaces.join(","),
                xdp.mode,
                xdp.snat_ports,
                verdict_summary(&xdp.verdicts)
            );
            for hook in &xdp.hooks {
                let _ = writeln!(
                    out,
                    "  {}: {} {} ({})",
                    hook.interface, hook.hook, hook.mode, hook.why
                );
            }
        }
        if let Some(registry) = &self.registry {
            let _ = writeln!(out, "{}", registry_line(registry));
        }
        if self.kernel_log != KernelLog::Off {
            let _ = writeln!(
                out,
                "kernel log: {} (tracing target {})",
                self.kernel_log,
                crate::kernel::kernel_log::TARGET
            );
        }
        let mut scored = false;
        for service in &self.services {
            let remote = if service.remote {
                format!(
                    ", xdp: {} packets, {} flows, {} dropped",
                    service.xdp_packets,
                    service.xdp_flows,
                    service.xdp_drops.total()
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{} {}/{} {}{} -> {}{} (refused: {}{remote})",
                service.name,
                service.vip,
                service.protocol,
                service.policy,
                if service.remote { " remote" } else { "" },
                service
                    .selected
                    .as_deref()
                    .unwrap_or("none (connects refused)"),
                if service.fail_open { " FAIL-OPEN" } else { "" },
                service.refused
            );
            for name in &service.dns {
                let _ = writeln!(out, "  {}", dns_line(name));
            }
            if let Some(left_out) = service.discovered_capped.filter(|n| *n > 0) {
                let _ = writeln!(
                    out,
                    "  discovery: {left_out} eligible registry node{} left out (discovery.max_servers; the highest stakes are servers)",
                    if left_out == 1 { "" } else { "s" }
                );
            }
            let columns = server_columns(&service.servers, layout, now);
            scored |= columns.iter().any(|c| c.header == "SCORE");
            let limit = (layout == Layout::Fit).then_some(FIT_WIDTH);
            write_columns(&mut out, &columns, limit);
        }
        if !self.services.is_empty() {
            out.push_str(LEGEND);
            if scored {
                out.push_str(SCORE_LEGEND);
            }
        }
        out
    }
}

/// One DNS name of a service under its header: the name, what it
/// resolves to, and its lookup error if the last one failed.
fn dns_line(name: &DnsNameStatus) -> String {
    let role = if name.default {
        "default_server"
    } else {
        "servers"
    };
    let addresses = if name.addresses.is_empty() {
        "no address yet".to_owned()
    } else {
        name.addresses.join(", ")
    };
    let error = name.error.as_ref().map_or_else(String::new, |error| {
        format!(" (last lookup failed: {error})")
    });
    format!("{role} {}:{} -> {addresses}{error}", name.name, name.port)
}

/// The columns of one service's server table. STAKE, LAG and SCORE only
/// when some server has one, SLOTS only for a spread service, PERF and REP
/// only in [`Layout::Wide`].
fn server_columns(
    servers: &[ServerStatus],
    layout: Layout,
    now: std::time::SystemTime,
) -> Vec<Column> {
    let wide = layout == Layout::Wide;
    let cells = |f: &dyn Fn(&ServerStatus) -> String| servers.iter().map(f).collect::<Vec<_>>();
    let mut columns = vec![
        Column::new(
            "SERVER",
            false,
            cells(&|s| {
                if s.default {
                    format!("{} (default)", s.address)
                } else {
                    s.address.clone()
                }
            }),
        ),
        Column::new("STATE", false, cells(&|s| s.state.as_str().to_owned())),
        Column::new("FOR", true, cells(&|s| age(&s.state_since, now))),
        Column::new("OPEN", true, cells(&|s| s.connections.to_string())),
        Column::new("TOTAL", true, cells(&|s| s.connects.to_string())),
    ];
    if servers.iter().any(|s| s.slots.is_some()) {
        columns.push(Column::new(
            "SLOTS",
            true,
            cells(&|s| s.slots.map_or_else(|| "-".to_owned(), |n| n.to_string())),
        ));
    }
    if servers.iter().any(|s| s.stake_mist.is_some()) {
        columns.push(Column::new(
            "STAKE",
            true,
            cells(&|s| s.stake_mist.map_or_else(|| "-".to_owned(), sui_amount)),
        ));
    }
    if servers.iter().any(|s| s.sync_lag_blocks.is_some()) {
        columns.push(Column::new(
            "LAG",
            true,
            cells(&|s| {
                s.sync_lag_blocks
                    .map_or_else(|| "-".to_owned(), |n| n.to_string())
            }),
        ));
    }
    if wide && servers.iter().any(|s| s.attestation.is_some()) {
        let attested = |f: fn(&AttestationStatus) -> u64| {
            move |s: &ServerStatus| {
                s.attestation
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |a| f(a).to_string())
            }
        };
        columns.push(Column::new(
            "PERF",
            true,
            cells(&attested(|a| a.performance_score)),
        ));
        columns.push(Column::new(
            "REP",
            true,
            cells(&attested(|a| a.reputation_score)),
        ));
    }
    if servers.iter().any(|s| s.score.is_some()) {
        let scores: Vec<Option<u64>> = servers.iter().map(|s| s.score).collect();
        let mut shares = score_shares(&scores);
        if wide {
            for (share, score) in shares.iter_mut().zip(&scores) {
                if let Some(score) = score {
                    let _ = write!(share, " {score}");
                }
            }
        }
        columns.push(Column::new("SCORE", true, shares));
    }
    columns.push(Column::new(
        "LAST CHECK",
        false,
        cells(&|s| last_check_cell(s, now)),
    ));
    columns
}

/// The LAST CHECK cell: what is wrong beyond the check first (a rejected
/// attestation, suspect dials), then the check's verdict, age and reason.
fn last_check_cell(server: &ServerStatus, now: std::time::SystemTime) -> String {
    let mut cell = String::new();
    if let Some(failure) = &server.attestation_failure {
        let _ = write!(cell, "ATTESTATION {failure}; ");
    }
    if let Some(dial) = server.dial.as_ref().filter(|d| d.state != "ok") {
        let _ = write!(cell, "DIAL {}", dial.state.to_uppercase());
        if let Some(reason) = &dial.reason {
            let _ = write!(cell, " {reason}");
        }
        cell.push_str("; ");
    }
    match &server.last_check {
        None => cell.push('-'),
        Some(c) => {
            let _ = write!(
                cell,
                "{} {}: {}",
                if c.ok { "ok" } else { "FAIL" },
                ago(&c.at, now),
                c.reason
            );
        }
    }
    cell
}

/// `registry: synced, 4 nodes (1 excluded: stake below minimum), cursor 12,
/// events registered 4 updated 1, resyncs 1, reconnects 0, stream filtered`
/// (the stream once one has caught up, and the last error while it fails).
fn registry_line(registry: &RegistryStatus) -> String {
    let events: Vec<String> = registry
        .events
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    let excluded = if registry.below_min_stake > 0 {
        format!(
            " ({} excluded: stake below minimum)",
            registry.below_min_stake
        )
    } else {
        String::new()
    };
    let mut line = format!(
        "registry: {}, {} nodes{excluded}, cursor {}, events {}, resyncs {}, reconnects {}",
        if registry.synced {
            "synced"
        } else {
            "NOT synced"
        },
        registry.nodes,
        registry
            .cursor
            .map_or_else(|| "-".to_owned(), |c| c.to_string()),
        if events.is_empty() {
            "none".to_owned()
        } else {
            events.join(" ")
        },
        registry.resyncs,
        registry.reconnects
    );
    if let Some(stream) = &registry.stream {
        let _ = write!(line, ", stream {stream}");
    }
    if let Some(error) = &registry.last_error {
        let _ = write!(line, ", error: {error}");
    }
    line
}

/// MIST as SUI without trailing zeros: `3 SUI`, `1.5 SUI`, `0.000000001 SUI`.
fn sui_amount(mist: u64) -> String {
    use crate::config::MIST_PER_SUI;
    let whole = mist / MIST_PER_SUI;
    let fraction = mist % MIST_PER_SUI;
    if fraction == 0 {
        format!("{whole} SUI")
    } else {
        let digits = format!("{fraction:09}");
        format!("{whole}.{} SUI", digits.trim_end_matches('0'))
    }
}

/// The non-zero verdicts, largest first: `redirect 12, pass_not_vip 3`.
fn verdict_summary(verdicts: &BTreeMap<String, u64>) -> String {
    let mut counted: Vec<(&String, &u64)> = verdicts.iter().filter(|(_, n)| **n > 0).collect();
    if counted.is_empty() {
        return "no packets yet".to_owned();
    }
    counted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = counted
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    parts.join(", ")
}

/// How long ago an RFC 3339 time was, rounded to a short form ("4s", "2m13s").
fn age(at: &str, now: std::time::SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339(at) else {
        return "?".to_owned();
    };
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}

/// "4s ago".
fn ago(at: &str, now: std::time::SystemTime) -> String {
    format!("{} ago", age(at, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            services: vec![ServiceStatus {
                name: "supervisor".into(),
                vip: "127.0.0.1:6444".into(),
                protocol: "tcp".into(),
                selected: Some("10.0.0.1:9345".into()),
                policy: "failover".into(),
                fail_open: false,
                refused: 0,
                remote: false,
                xdp_packets: 0,
                xdp_flows: 0,
                xdp_drops: XdpDrops::default(),
                servers: vec![ServerStatus {
                    address: "10.0.0.1:9345".into(),
                    state: ServerState::Active,
                    state_since: "2026-11-22T04:58:00.000Z".into(),
                    connections: 2,
                    reason: Some("tcp connect ok in 0.2ms".into()),
                    slots: None,
                    healthy: true,
                    default: false,
                    connects: 3,
                    sendmsgs: 0,
                    xdp_packets: 0,
                    xdp_bytes: 0,
                    xdp_flows: 0,
                    last_check: Some(CheckStatus {
                        ok: true,
                        reason: "tcp connect ok in 0.2ms".into(),
                        at: "2026-11-22T05:00:00Z".into(),
                        duration_ms: 0.2,
                    }),
                    node: None,
                    stake_mist: None,
                    sui_rpc: None,
                    sync_lag_blocks: None,
                    score: None,
                    attestation: None,
                    attestation_failure: None,
                    dial: None,
                }],
                dial_stall_after_ms: Some(100.0),
                source: "config".into(),
                dataplane: "ebpf".into(),
                proxy: None,
                discovered_capped: None,
                dns: Vec::new(),
            }],
            xdp: None,
            registry: None,
            kernel_log: KernelLog::Off,
            k3s: Vec::new(),
            dataplane: DataplaneStatus::default(),
        }
    }

    #[test]
    fn json_field_names_are_stable() {
        let json = serde_json::to_value(sample()).unwrap();
        let service = &json["services"][0];
        for field in ["name", "vip", "protocol", "selected", "servers"] {
            assert!(service.get(field).is_some(), "missing {field}");
        }
        let server = &service["servers"][0];
        for field in [
            "address",
            "state",
            "state_since",
            "connections",
            "reason",
            "healthy",
            "connects",
            "last_check",
        ] {
            assert!(server.get(field).is_some(), "missing {field}");
        }
        assert_eq!(server["state"], "active");
    }

    #[test]
    fn table_shows_selection_and_servers() {
        let table = sample().to_table();
        assert!(
            table.contains("supervisor 127.0.0.1:6444/tcp failover -> 10.0.0.1:9345"),
            "{table}"
        );
        assert!(table.contains("active"), "{table}");
        assert!(table.contains(" OPEN  TOTAL "), "{table}");
        assert!(
            table.contains("OPEN: connections open now; TOTAL: connects"),
            "{table}"
        );
        assert!(!table.contains("SCORE"), "no scores, no column: {table}");
        let now = humantime::parse_rfc3339("2026-11-22T05:00:10Z").unwrap();
        assert_eq!(age("2026-11-22T04:58:00.000Z", now), "2m10s");
        assert_eq!(age("2026-11-22T05:00:06Z", now), "4s");
        assert_eq!(age("garbage", now), "?");
    }

    #[test]
    fn table_shows_dns_names_and_their_errors() {
        let mut status = sample();
        status.services[0].dns = vec![
            DnsNameStatus {
                name: "k3s.example.com".into(),
                port: 9345,
                default: false,
                addresses: vec!["10.0.0.1:9345".into()],
                error: Some("cannot resolve k3s.example.com: not found".into()),
                resolved_at: Some("2026-11-22T05:00:00.000Z".into()),
            },
            DnsNameStatus {
                name: "new.example.com".into(),
                port: 6443,
                default: true,
                addresses: Vec::new(),
                error: None,
                resolved_at: None,
            },
        ];
        let table = status.to_table();
        assert!(
            table.contains("  servers k3s.example.com:9345 -> 10.0.0.1:9345 (last lookup failed: cannot resolve k3s.example.com: not found)"),
            "{table}"
        );
        assert!(
            table.contains("  default_server new.example.com:6443 -> no address yet\n"),
            "{table}"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["services"][0]["dns"][0]["name"], "k3s.example.com");
        assert_eq!(
            json["services"][0]["dns"][1]["resolved_at"],
            serde_json::Value::Null
        );
        // Without names there is no `dns` field.
        let plain = serde_json::to_value(sample()).unwrap();
        assert!(plain["services"][0].get("dns").is_none());
    }

    #[test]
    fn table_and_json_show_discovered_servers_left_out() {
        let mut status = sample();
        let plain = serde_json::to_value(&status).unwrap();
        assert!(plain["services"][0].get("discovered_capped").is_none());
        status.services[0].discovered_capped = Some(0);
        assert!(!status.to_table().contains("left out"));
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["services"][0]["discovered_capped"], 0);
        status.services[0].discovered_capped = Some(3);
        let table = status.to_table();
        assert!(
            table.contains(
                "  discovery: 3 eligible registry nodes left out (discovery.max_servers; the highest stakes are servers)\n"
            ),
            "{table}"
        );
        let back: Status = serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(back.services[0].discovered_capped, Some(3));
    }

    #[test]
    fn table_and_json_show_a_suspect_server() {
        let mut status = sample();
        status.services[0].servers[0].dial = Some(DialStatus {
            state: "confirmed".into(),
            since: Some("2026-11-22T05:00:00.000Z".into()),
            reason: Some("reset".into()),
            smoothed_ms: Some(0.05),
        });
        let table = status.to_table();
        assert!(table.contains("  DIAL CONFIRMED reset; ok "), "{table}");
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["services"][0]["servers"][0]["dial"]["state"],
            "confirmed"
        );
        assert_eq!(json["services"][0]["dial_stall_after_ms"], 100.0);
        // A server whose dials are fine is not flagged in the table.
        status.services[0].servers[0].dial = Some(DialStatus {
            state: "ok".into(),
            since: None,
            reason: None,
            smoothed_ms: None,
        });
        assert!(!status.to_table().contains("DIAL"));
    }

    #[test]
    fn table_shows_registry_and_stakes() {
        let mut status = sample();
        status.registry = Some(RegistryStatus {
            synced: true,
            nodes: 4,
            below_min_stake: 0,
            cursor: Some(12),
            last_error: None,
            events: BTreeMap::from([("registered".to_owned(), 4), ("removed".to_owned(), 0)]),
            resyncs: 1,
            reconnects: 0,
            last_advance_unix_ms: None,
            stream: None,
        });
        status.services[0].servers[0].stake_mist = Some(1_500_000_000);
        status.services[0].servers[0].sync_lag_blocks = Some(2);
        let table = status.to_table();
        assert!(
            table.contains(
                "registry: synced, 4 nodes, cursor 12, events registered 4, resyncs 1, reconnects 0\n"
            ),
            "{table}"
        );
        assert!(table.contains(" STAKE  LAG  LAST CHECK\n"), "{table}");
        assert!(table.contains(" 1.5 SUI    2  ok "), "{table}");
        status.registry.as_mut().unwrap().below_min_stake = 1;
        assert!(
            status.to_table().contains(
                "registry: synced, 4 nodes (1 excluded: stake below minimum), cursor 12,"
            ),
            "{table}"
        );
        status.registry.as_mut().unwrap().stream = Some("checkpoints".to_owned());
        let table = status.to_table();
        assert!(
            table.contains("resyncs 1, reconnects 0, stream checkpoints\n"),
            "{table}"
        );
        let server = &mut status.services[0].servers[0];
        server.attestation = Some(AttestationStatus {
            performance_score: 9_000,
            reputation_score: 8_000,
            stake_mist: 1,
            timestamp_ms: 1,
            age_seconds: 1.0,
        });
        server.score = Some(72);
        let table = status.to_table();
        assert!(
            table.contains(" STAKE  LAG  SCORE  LAST CHECK\n"),
            "{table}"
        );
        assert!(table.contains(" 1.5 SUI    2   100%  ok "), "{table}");
        assert!(table.contains("SCORE: the server's share"), "{table}");
        let wide = status.render(Layout::Wide);
        assert!(
            wide.contains(" STAKE  LAG  PERF   REP    SCORE  LAST CHECK\n"),
            "{wide}"
        );
        assert!(
            wide.contains(" 1.5 SUI    2  9000  8000  100% 72  ok "),
            "{wide}"
        );
        status.services[0].servers[0].attestation_failure = Some("stale".to_owned());
        let table = status.to_table();
        assert!(table.contains("  ATTESTATION stale; ok "), "{table}");
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["services"][0]["servers"][0]["attestation"]["performance_score"],
            9_000
        );
        assert_eq!(
            json["services"][0]["servers"][0]["attestation_failure"],
            "stale"
        );
        assert_eq!(sui_amount(3_000_000_000), "3 SUI");
        assert_eq!(sui_amount(1), "0.000000001 SUI");
        assert_eq!(sui_amount(0), "0 SUI");
    }

    #[test]
    fn xdp_fields_are_additions() {
        let json = serde_json::to_value(sample()).unwrap();
        assert!(json.get("xdp").is_none(), "{json}");
        assert_eq!(json["services"][0]["remote"], false);
        assert_eq!(json["services"][0]["xdp_drops"]["no_backend"], 0);
        assert_eq!(json["services"][0]["servers"][0]["xdp_packets"], 0);
        // A document without the XDP fields (an older controller) still parses.
        let mut old = json.clone();
        let service = old["services"][0].as_object_mut().unwrap();
        for field in ["remote", "xdp_packets", "xdp_flows", "xdp_drops"] {
            service.remove(field);
        }
        let server = old["services"][0]["servers"][0].as_object_mut().unwrap();
        for field in ["xdp_packets", "xdp_bytes", "xdp_flows"] {
            server.remove(field);
        }
        assert_eq!(serde_json::from_value::<Status>(old).unwrap(), sample());

        let mut status = sample();
        status.services[0].remote = true;
        status.services[0].xdp_packets = 10;
        status.services[0].xdp_flows = 2;
        status.services[0].xdp_drops.snat_ports = 1;
        status.xdp = Some(XdpStatus {
            interfaces: vec!["eth0".into(), "eth1".into()],
            mode: "skb".into(),
            hooks: vec![crate::kernel::HookInUse {
                interface: "eth0".into(),
                hook: "xdp".into(),
                mode: "skb".into(),
                why: "mode: skb -> generic XDP".into(),
            }],
            snat_ports: "61000-65535".into(),
            verdicts: BTreeMap::from([
                ("redirect".to_owned(), 7),
                ("pass_not_vip".to_owned(), 30),
                ("tx".to_owned(), 0),
            ]),
            flows: XdpFlowsStatus {
                entries: 6,
                forward: 3,
                reply: 3,
                capacity: 262_144,
                removed_by_reason: BTreeMap::from([("tcp_closed".to_owned(), 4)]),
                last_pass_ms: 0.5,
                passes: 2,
                created: 10,
                evicted: 0,
            },
            hop_gen: 3,
        });
        let table = status.to_table();
        assert!(
            table.starts_with(
                "xdp on eth0,eth1 (skb, SNAT ports 61000-65535): pass_not_vip 30, redirect 7\n  eth0: xdp skb (mode: skb -> generic XDP)\n"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "supervisor 127.0.0.1:6444/tcp failover remote -> 10.0.0.1:9345 (refused: 0, xdp: 10 packets, 2 flows, 1 dropped)"
            ),
            "{table}"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["xdp"]["verdicts"]["redirect"], 7);
        assert_eq!(json["xdp"]["hooks"][0]["hook"], "xdp");
        assert_eq!(json["xdp"]["hooks"][0]["why"], "mode: skb -> generic XDP");
        assert_eq!(json["xdp"]["flows"]["entries"], 6);
        assert_eq!(json["xdp"]["flows"]["removed_by_reason"]["tcp_closed"], 4);
        assert_eq!(serde_json::from_value::<Status>(json).unwrap(), status);
    }

    /// A service with `n` discovered servers, scored `scores`, each with a
    /// long check reason (a `sui_sync` + `nautilus` check's).
    fn discovered(scores: &[Option<u64>]) -> Status {
        let mut status = sample();
        let template = status.services[0].servers[0].clone();
        status.services[0].servers = scores
            .iter()
            .enumerate()
            .map(|(i, score)| {
                let mut server = template.clone();
                server.address = format!("127.0.0.{}:16444", i + 2);
                server.stake_mist = Some(3_000_000_000);
                server.sync_lag_blocks = Some(0);
                server.node = Some(format!("0x{}", "d0".repeat(32)));
                server.score = *score;
                server.attestation = score.map(|_| AttestationStatus {
                    performance_score: 9_500,
                    reputation_score: 9_000,
                    stake_mist: 3_000_000_000,
                    timestamp_ms: 1,
                    age_seconds: 1.0,
                });
                server.last_check.as_mut().unwrap().reason = format!(
                    "tcp connect ok in 0.1ms; sui_sync lag 0 checkpoints in 2.1ms; nautilus attestation of 0x{} verified in 3.2ms",
                    "e1".repeat(32)
                );
                server
            })
            .collect();
        status
    }

    #[test]
    fn fit_lines_stay_within_the_width_and_columns_align() {
        let status = discovered(&[Some(8_550_000_000_000), Some(2_504_000_000_000), None]);
        let table = status.to_table();
        for line in table.lines() {
            assert!(
                line.chars().count() <= FIT_WIDTH,
                "{} chars: {line}\n{table}",
                line.chars().count()
            );
        }
        // The cut reason ends in an ellipsis; --wide keeps it whole.
        assert!(table.contains("…\n"), "{table}");
        let wide = status.render(Layout::Wide);
        assert!(wide.contains("verified in 3.2ms\n"), "{wide}");
        assert!(
            wide.lines().any(|l| l.chars().count() > FIT_WIDTH),
            "{wide}"
        );
        // Every column starts where its header does.
        let lines: Vec<&str> = table.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.trim_start().starts_with("SERVER"))
            .unwrap();
        for name in ["STATE", "LAST CHECK"] {
            let at = lines[header].find(name).unwrap();
            for row in &lines[header + 1..header + 4] {
                assert_ne!(&row[at..=at], " ", "{name} misaligned:\n{table}");
                assert_eq!(&row[at - 2..at], "  ", "{name} misaligned:\n{table}");
            }
        }
        // The SERVER column is as wide as its longest address, not 42.
        assert!(
            lines[header].starts_with("  SERVER           STATE "),
            "{table}"
        );
        // Right-aligned numbers end where their header does.
        let score_end = lines[header].find("SCORE").unwrap() + "SCORE".len();
        assert_eq!(
            &lines[header + 1][score_end - 3..score_end],
            "77%",
            "{table}"
        );
        assert_eq!(
            &lines[header + 2][score_end - 3..score_end],
            "23%",
            "{table}"
        );
        assert_eq!(&lines[header + 3][score_end - 1..score_end], "-", "{table}");
    }

    #[test]
    fn scores_show_as_shares_of_the_service_total() {
        assert_eq!(score_shares(&[Some(3), Some(1), None]), ["75%", "25%", "-"]);
        assert_eq!(score_shares(&[Some(0), Some(0)]), ["0%", "0%"]);
        assert_eq!(
            score_shares(&[Some(u64::MAX), Some(u64::MAX)]),
            ["50%", "50%"]
        );
        assert_eq!(score_shares(&[Some(2), Some(1)]), ["67%", "33%"]);
        assert_eq!(score_shares(&[None]), ["-"]);
        // The JSON keeps the raw score.
        let status = discovered(&[Some(8_550_000_000_000)]);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["services"][0]["servers"][0]["score"],
            8_550_000_000_000_u64
        );
        assert!(!status.to_table().contains("8550000000000"));
        assert!(status.render(Layout::Wide).contains("100% 8550000000000"));
    }

    #[test]
    fn cut_keeps_short_text_and_marks_a_cut() {
        assert_eq!(cut("abc", Some(3)), "abc");
        assert_eq!(cut("abcd", Some(3)), "ab…");
        assert_eq!(cut("abcd", None), "abcd");
    }
}
