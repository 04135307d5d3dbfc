//! The status document (`GET /status`, `daas-lb status`, the source of
//! most metrics): the services, their servers' states and the kernel's
//! counters, read now.

use std::{
    sync::atomic::Ordering,
    time::{Instant, SystemTime},
};

use tracing::warn;

use super::{
    attestation, failover,
    flow_gc::FlowGcStats,
    runtime::{ServerRuntime, State, Suspicion},
    spread,
};
use crate::{
    api::status::{
        CheckStatus, DataplaneStatus, DialStatus, ProxyStatus, RegistryStatus, ServerStatus,
        ServiceStatus, Status, XdpDrops, XdpFlowsStatus, XdpStatus,
    },
    config::{Policy, Protocol, ServiceConfig},
};

/// A server's dials as status shows them.
fn dial_status(server: &ServerRuntime) -> DialStatus {
    let state = match server.suspect {
        None => "ok",
        Some(Suspicion {
            confirmed: false, ..
        }) => "suspect",
        Some(Suspicion {
            confirmed: true, ..
        }) => "confirmed",
    };
    DialStatus {
        state: state.to_owned(),
        since: server
            .suspect
            .map(|s| humantime::format_rfc3339_millis(s.since).to_string()),
        reason: server.suspect.map(|s| s.reason.to_owned()),
        smoothed_ms: server
            .dial_time
            .smoothed()
            .map(|d| d.as_secs_f64() * 1000.0),
    }
}

/// The status document, counters read from the kernel now.
pub(super) fn build(state: &State) -> Status {
    let now = Instant::now();
    let wall = SystemTime::now();
    let services = state
        .services
        .iter()
        .map(|service| {
            let kernel = state
                .dataplane
                .as_ref()
                .and_then(|d| d.maps.service_stats.get(service.id).ok())
                .unwrap_or_default();
            let slot_counts = spread::slot_counts(&service.table);
            let tracked = service.counted_by_kernel() && service.config.protocol == Protocol::Tcp;
            let proxied = service.proxy.is_some();
            let servers = service
                .machine
                .servers()
                .iter()
                .map(|entry| {
                    let runtime = service.servers.get(&entry.address);
                    let counters = runtime
                        .and_then(|r| {
                            let dataplane = state.dataplane.as_ref()?;
                            dataplane.maps.backend_stats.get(r.backend_id).ok()
                        })
                        .unwrap_or_default();
                    let last_check = runtime.and_then(|r| r.last_check.as_ref());
                    let since = wall
                        .checked_sub(now.saturating_duration_since(entry.since))
                        .unwrap_or(wall);
                    let slots = runtime
                        .filter(|_| service.config.policy == Policy::Spread)
                        .map(|r| slot_counts.get(&r.backend_id).copied().unwrap_or(0));
                    let node = state.discovery.server(&service.config.name, entry.address);
                    ServerStatus {
                        address: entry.address.to_string(),
                        slots,
                        state: entry.state,
                        state_since: humantime::format_rfc3339_millis(since).to_string(),
                        connections: entry.connections,
                        reason: last_check.map(|(o, _)| o.reason.clone()),
                        healthy: entry.last_check_ok == Some(true),
                        default: service.machine.default_server() == Some(entry.address),
                        connects: service
                            .proxy
                            .as_ref()
                            .map_or(counters.connects, |proxy| proxy.connects(entry.address)),
                        sendmsgs: counters.sendmsgs,
                        xdp_packets: counters.xdp_packets,
                        xdp_bytes: counters.xdp_bytes,
                        xdp_flows: counters.xdp_flows,
                        last_check: last_check.map(|(o, at)| CheckStatus {
                            ok: o.ok,
                            reason: o.reason.clone(),
                            at: humantime::format_rfc3339_millis(*at).to_string(),
                            duration_ms: o.duration.as_secs_f64() * 1000.0,
                        }),
                        node: node.map(|n| n.node.to_string()),
                        stake_mist: node.map(|n| n.stake),
                        sui_rpc: node.map(|n| n.sui_rpc.clone()),
                        sync_lag_blocks: last_check.and_then(|(o, _)| o.sync_lag_blocks),
                        score: entry.score.filter(|_| service.machine.ranking()),
                        attestation: runtime
                            .and_then(|r| r.attestation.as_ref())
                            .map(|v| attestation::status(v, wall)),
                        attestation_failure: last_check
                            .and_then(|(o, _)| attestation::failure(o))
                            .map(str::to_owned),
                        dial: runtime.filter(|_| tracked || proxied).map(dial_status),
                    }
                })
                .collect();
            ServiceStatus {
                name: service.config.name.clone(),
                vip: service.config.vip.to_string(),
                protocol: service.config.protocol.to_string(),
                selected: service.selection.server.map(|a| a.to_string()),
                policy: service.config.policy.to_string(),
                fail_open: service.selection.fail_open,
                refused: kernel.refused,
                remote: service.config.remote,
                xdp_packets: kernel.xdp_packets,
                xdp_flows: kernel.xdp_flows,
                xdp_drops: XdpDrops {
                    no_backend: kernel.xdp_drop_no_backend,
                    snat_ports: kernel.xdp_drop_snat_ports,
                    flow_table: kernel.xdp_drop_flow_table,
                    unreachable: kernel.xdp_drop_unreachable,
                },
                dial_stall_after_ms: tracked.then(|| {
                    service
                        .failover
                        .as_ref()
                        .map_or_else(|| failover::stall_bound(service), |w| w.bound)
                        .as_secs_f64()
                        * 1000.0
                }),
                source: source(state, &service.config),
                dataplane: service.config.dataplane.to_string(),
                proxy: service.proxy.as_ref().map(|proxy| {
                    let counts = proxy.stats();
                    ProxyStatus {
                        listen: proxy.local_addr().to_string(),
                        accepted: counts.accepted,
                        active: counts.active,
                        no_server: counts.no_server,
                        local_errors: counts.local_errors,
                        reports_dropped: counts.reports_dropped,
                    }
                }),
                discovered_capped: service.config.discovery.as_ref().map(|_| {
                    state
                        .discovery
                        .capped
                        .get(&service.config.name)
                        .map_or(0, |left_out| u64::try_from(*left_out).unwrap_or(u64::MAX))
                }),
                servers,
                dns: state.dns.status(&service.config.name),
            }
        })
        .collect();
    let xdp = state
        .config
        .xdp
        .as_ref()
        .zip(state.dataplane.as_ref())
        .map(|(xdp, dataplane)| {
            let counts = dataplane.maps.xdp_stats.verdicts().unwrap_or_else(|err| {
                warn!(
                    error = format!("{err:#}"),
                    "could not read the xdp_stats map"
                );
                Vec::new()
            });
            let gc = state
                .flow_gc
                .as_ref()
                .map_or_else(FlowGcStats::default, |gc| {
                    gc.stats
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone()
                });
            XdpStatus {
                interfaces: xdp.interface_names(),
                mode: xdp.mode.to_string(),
                hooks: dataplane.hooks.clone(),
                snat_ports: xdp.snat_ports.to_string(),
                verdicts: lb_common::xdp_counter::NAMES
                    .iter()
                    .enumerate()
                    .map(|(index, name)| {
                        ((*name).to_owned(), counts.get(index).copied().unwrap_or(0))
                    })
                    .collect(),
                flows: XdpFlowsStatus {
                    entries: gc.forward_entries + gc.reply_entries,
                    forward: gc.forward_entries,
                    reply: gc.reply_entries,
                    capacity: gc.capacity,
                    removed_by_reason: gc
                        .removed_by_reason()
                        .map(|(reason, n)| (reason.to_owned(), n))
                        .collect(),
                    last_pass_ms: gc.last_pass.as_secs_f64() * 1000.0,
                    passes: gc.passes,
                    created: gc.created,
                    evicted: gc.evicted,
                },
                hop_gen: dataplane
                    .maps
                    .xdp_config
                    .last()
                    .map_or(0, |entry| entry.hop_gen),
            }
        });
    let registry = state.discovery.stats.as_ref().map(|stats| {
        let view = state.discovery.view.as_ref();
        let synced = view.is_some_and(|v| v.synced);
        let min_stake = state.config.chain.as_ref().map_or(0, |c| c.min_stake_mist);
        RegistryStatus {
            synced,
            nodes: view.map_or(0, |v| v.nodes.len()),
            below_min_stake: view.map_or(0, |v| {
                v.nodes.values().filter(|n| n.stake < min_stake).count()
            }),
            // The task's counter follows every checkpoint applied, from
            // the first full sync on.
            cursor: synced.then(|| stats.cursor.load(Ordering::Relaxed)),
            last_error: view.and_then(|v| v.last_error.clone()),
            events: stats
                .events()
                .into_iter()
                .map(|(kind, n)| (kind.to_owned(), n))
                .collect(),
            resyncs: stats.resyncs_total.load(Ordering::Relaxed),
            reconnects: stats.reconnects_total.load(Ordering::Relaxed),
            last_advance_unix_ms: synced
                .then(|| stats.advanced_unix_ms.load(Ordering::Relaxed))
                .filter(|&ms| ms != 0),
            stream: stats.stream().map(|mode| mode.as_str().to_owned()),
        }
    });
    Status {
        services,
        xdp,
        registry,
        kernel_log: state.kernel_log,
        k3s: state.k3s.status(),
        dataplane: DataplaneStatus {
            configured: state.config.dataplane.to_string(),
            ebpf: state.dataplane.is_some(),
            fallback: state.dataplane_fallback.clone(),
        },
    }
}

/// Where a service's server list comes from (see [`ServiceStatus::source`]).
///
/// [`ServiceStatus::source`]: crate::api::status::ServiceStatus::source
fn source(state: &State, service: &ServiceConfig) -> String {
    if let Some(file) = state.k3s.file_of(&service.name) {
        format!("k3s:{}", file.display())
    } else if service.discovery.is_some() {
        "config+sui".to_owned()
    } else {
        "config".to_owned()
    }
}
