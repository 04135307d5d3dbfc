//! Carrying out a state machine's [`Effects`] for one service: transitions
//! logged and counted, the service entry rewritten when the selection
//! changes, the Maglev table and the backends' `BACKEND_DOWN` flags brought
//! in line, then the connections of the servers to close destroyed with
//! `SOCK_DESTROY`, so reconnecting clients land on the new server.
//!
//! In proxy mode (`dataplane: proxy`) the service has no `services` entry:
//! its proxy's route follows the state machine instead, and the proxy
//! closes its own connections (client and server side) where the eBPF mode
//! destroys sockets.
//!
//! Remote clients' XDP flows are not walked here: the kernel moves a flow
//! whose backend slot is down, freed or given to another address on the
//! flow's next packet (and removes its old reply entry then), and the flow
//! collector ([`super::flow_gc`]) removes what is left after its timeout.

use std::{net::SocketAddr, time::Instant};

use lb_common::NO_BACKEND;
use tracing::{info, warn};

use super::{backend_flags, failover, proxies, runtime::ServiceRuntime, spread};
use crate::{
    kernel::{connections::Connections, dataplane::Dataplane},
    metrics::Counters,
    policy::state_machine::{Effects, ServerState},
};

/// Carries out a state machine's effects for one service: log and count the
/// transitions, rewrite the service entry if the selection changed, then
/// close connections.
pub(super) fn settle(
    dataplane: &mut Option<Dataplane>,
    connections: &mut Connections,
    counters: &mut Counters,
    service: &mut ServiceRuntime,
    effects: Effects,
) {
    let start = Instant::now();
    rewrite(dataplane, counters, service, &effects);
    close(dataplane, connections, counters, service, &effects, start);
}

/// The first half of [`settle`]: transitions logged and counted, the maps
/// brought in line with the state machine.
pub(super) fn rewrite(
    dataplane: &mut Option<Dataplane>,
    counters: &mut Counters,
    service: &mut ServiceRuntime,
    effects: &Effects,
) {
    let name = service.config.name.clone();
    let name = name.as_str();
    for t in &effects.transitions {
        counters.transition(name, t.server, t.from, t.to);
        if t.to == ServerState::Failed || t.to == ServerState::Invalid {
            warn!(service = name, server = %t.server, from = %t.from, to = %t.to, cause = %t.cause, "server state changed");
        } else {
            info!(service = name, server = %t.server, from = %t.from, to = %t.to, cause = %t.cause, "server state changed");
        }
    }
    reselect(dataplane, counters, service);
    spread::sync(dataplane, service);
    // After the new selection and table: flows moved off a down backend
    // land on the new choice.
    backend_flags::sync(dataplane, service);
    failover::sync(dataplane, service);
    proxies::sync(service);
}

/// The second half of [`settle`]: the connections of the servers the
/// effects name are destroyed (`start`: when settling began, for the log).
pub(super) fn close(
    dataplane: &mut Option<Dataplane>,
    connections: &mut Connections,
    counters: &mut Counters,
    service: &mut ServiceRuntime,
    effects: &Effects,
    start: Instant,
) {
    if effects.close.is_empty() {
        return;
    }
    let name = service.config.name.clone();
    let name = name.as_str();
    if let Some(closed) = proxies::close(service, &effects.close) {
        // Proxy mode: the proxy's own connections, closed both ways.
        counters.closed(name, u64::from(closed));
        for &server in &effects.close {
            service.machine.set_connections(server, 0);
        }
        if closed > 0 {
            let servers: Vec<String> = effects.close.iter().map(ToString::to_string).collect();
            // Worded like the eBPF mode's line: the proxy destroys both
            // of its sockets of each connection.
            info!(
                service = name,
                servers = servers.join(","),
                destroyed = closed,
                micros = start.elapsed().as_micros(),
                dataplane = "proxy",
                "closed connections"
            );
        }
        return;
    }
    let Some(dataplane) = dataplane.as_mut() else {
        return;
    };
    let closing = connections.close(
        service.id,
        &effects.close,
        |key| dataplane.maps.rev_nat.get(key),
        |cookie| dataplane.maps.dials.forget(cookie),
    );
    match closing {
        Ok(closed) => {
            counters.closed(name, closed.destroyed as u64);
            if closed.failed == 0 {
                for &server in &effects.close {
                    service.machine.set_connections(server, 0);
                }
            }
            if closed.destroyed + closed.failed > 0 {
                let servers: Vec<String> = effects.close.iter().map(ToString::to_string).collect();
                info!(
                    service = name,
                    servers = servers.join(","),
                    destroyed = closed.destroyed,
                    already_gone = closed.already_gone,
                    failed = closed.failed,
                    micros = start.elapsed().as_micros(),
                    destroy_micros = closed.micros,
                    "closed connections"
                );
            }
        }
        Err(err) => {
            warn!(
                service = name,
                error = format!("{err:#}"),
                "could not close connections (sock_diag)"
            );
        }
    }
}

/// Writes the service entry when the state machine's selection changed.
fn reselect(
    dataplane: &mut Option<Dataplane>,
    counters: &mut Counters,
    service: &mut ServiceRuntime,
) {
    // Ties keep what the map holds now: no churn at startup or on decay.
    let selection = service.machine.select_from(service.selection.server);
    if selection == service.selection {
        return;
    }
    let backend_id = selection
        .server
        .and_then(|a| service.servers.get(&a))
        .map_or(NO_BACKEND, |s| s.backend_id);
    let entry = spread::entry(service, backend_id);
    if service.in_kernel()
        && let Some(dataplane) = dataplane.as_mut()
        && let Err(err) = dataplane.maps.services.set(service.key, entry)
    {
        warn!(service = %service.config.name, error = format!("{err:#}"), "could not update the services map; will retry on the next event");
        return;
    }
    let name = service.config.name.as_str();
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "none".to_owned(), |a| a.to_string());
    if selection.server != service.selection.server {
        counters.selection_changed(name);
        match selection.server {
            Some(_) => {
                info!(service = name, from = %show(service.selection.server), to = %show(selection.server), "selected backend changed");
            }
            None => {
                warn!(service = name, from = %show(service.selection.server), "no server: connects to the VIP are refused");
            }
        }
    }
    if selection.fail_open {
        counters.failed_open(name);
        warn!(service = name, server = %show(selection.server), "every server fails: failing open to the best-ranked one");
    }
    service.selection = selection;
}
