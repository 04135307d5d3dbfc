//! The proxy mode's services (`dataplane: proxy`) in the controller: each
//! has a [`ProxyHandle`] listening on its VIP (started by `reconcile`,
//! dropped with the service), whose [`Route`] follows the state machine
//! ([`sync`], after every change, like the kernel's maps for the eBPF
//! mode), whose connections per server are closed where the eBPF mode
//! destroys sockets ([`close`]), and whose dial outcomes reach the
//! controller thread in batches ([`spawn_forwarder`]) as the kernel's do.
//!
//! Route order, K3s's dial order: the selected server first (the one the
//! eBPF mode writes into `services`), then the other
//! [candidates](crate::policy::state_machine::ServiceMachine::candidates)
//! in rank order: usable listed servers, the default server, failed
//! servers last (fail open).

use std::{net::SocketAddr, num::NonZeroUsize, sync::Arc};

use tokio::{runtime::Handle, sync::mpsc, task::JoinHandle};

use super::{
    events::{Controller, Event},
    runtime::ServiceRuntime,
};
use crate::{
    config::{HttpProxyAllowed, ServiceDataplane},
    proxy::{DialReport, ProxyEnv, ProxyHandle, Route, connect},
};

/// Batches of dial reports waiting for the controller thread at most
/// (beyond, the proxies drop and count them): each proxy thread hands one
/// over every 20 ms, and one per failed dial.
pub(super) const QUEUE: usize = 4096;
/// Batches handed to the controller thread per event at most.
const BATCH: usize = 64;
/// Listeners (each with its thread) per proxied VIP at most (one per CPU
/// below that).
const MAX_LISTENERS: usize = 8;

/// The route of `service` as its state machine says now.
pub(super) fn route(service: &ServiceRuntime) -> Route {
    let mut servers: Vec<SocketAddr> = service.selection.server.into_iter().collect();
    for candidate in service.machine.candidates() {
        if !servers.contains(&candidate) {
            servers.push(candidate);
        }
    }
    Route {
        servers,
        dial_timeout: service.config.dial_timeout,
        keepalive: service.config.keepalive,
    }
}

/// Publishes `service`'s route to its proxy (proxy mode only).
pub(super) fn sync(service: &ServiceRuntime) {
    if let Some(proxy) = &service.proxy {
        proxy.set_route(route(service));
    }
}

/// The HTTP CONNECT proxy settings as `allowed` and the daemon's
/// environment say (K3s's `K3S_AGENT_HTTP_PROXY_ALLOWED`, `HTTPS_PROXY`,
/// `NO_PROXY`); `None` when servers are dialed directly. A variable that
/// does not parse is an error naming it.
pub(super) fn http_proxy(allowed: HttpProxyAllowed) -> anyhow::Result<Option<Arc<ProxyEnv>>> {
    let allowed = match allowed {
        HttpProxyAllowed::True => true,
        HttpProxyAllowed::False => false,
        HttpProxyAllowed::Auto => connect::proxy_allowed(|name| std::env::var(name).ok()),
    };
    if !allowed {
        return Ok(None);
    }
    let env = ProxyEnv::from_env().map_err(|err| anyhow::anyhow!("http_proxy_allowed: {err}"))?;
    match env.https_proxy() {
        Some(proxy) => {
            tracing::info!(proxy = %proxy, no_proxy_empty = env.no_proxy().is_empty(), "proxied services dial their servers through the HTTPS_PROXY forward proxy (HTTP CONNECT), as K3s does, and health-check them through it (tcp and http/https checks); servers of eBPF-mode services cannot be (a kernel redirect cannot speak CONNECT)");
        }
        None => {
            tracing::warn!(
                ignored_http_proxy = env.ignored_http_proxy(),
                "HTTP proxy dialing is allowed but HTTPS_PROXY is not set: servers are dialed directly (K3s uses HTTPS_PROXY only, not HTTP_PROXY)"
            );
        }
    }
    Ok(Some(Arc::new(env)))
}

/// Warns about `service` in eBPF mode when its servers would go through
/// the HTTP CONNECT proxy: the kernel connects them directly.
pub(super) fn warn_if_unproxyable(via: Option<&ProxyEnv>, service: &ServiceRuntime) {
    let Some(via) = via else {
        return;
    };
    if service.proxy.is_some() {
        return;
    }
    let through: Vec<String> = service
        .servers
        .keys()
        .filter(|&&server| via.proxy_for(server).is_some())
        .map(ToString::to_string)
        .collect();
    if !through.is_empty() {
        tracing::warn!(service = %service.config.name, servers = through.join(","), "these servers would be dialed through HTTPS_PROXY, but the service is in eBPF mode, whose kernel redirect cannot speak HTTP CONNECT: they are connected directly; set `dataplane: proxy` on the service to go through the proxy");
    }
}

/// Starts `service`'s proxy when it is in proxy mode and has none yet.
pub(super) fn start(
    via: Option<&Arc<ProxyEnv>>,
    reports: &mpsc::Sender<Vec<DialReport>>,
    service: &mut ServiceRuntime,
) -> anyhow::Result<()> {
    if service.config.dataplane != ServiceDataplane::Proxy || service.proxy.is_some() {
        return Ok(());
    }
    let listeners = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_LISTENERS);
    let proxy = ProxyHandle::start(
        &service.config.name,
        service.id,
        service.config.vip,
        listeners,
        route(service),
        via.cloned(),
        reports.clone(),
    )?;
    tracing::info!(service = %service.config.name, listen = %proxy.local_addr(), listeners, dial_timeout = ?service.config.dial_timeout, "proxy mode: listening on the VIP");
    service.proxy = Some(proxy);
    Ok(())
}

/// Closes the proxy's connections to `servers` (proxy mode only); returns
/// how many were closed, `None` for a service in eBPF mode.
pub(super) fn close(service: &ServiceRuntime, servers: &[SocketAddr]) -> Option<u32> {
    let proxy = service.proxy.as_ref()?;
    Some(servers.iter().map(|&server| proxy.close(server)).sum())
}

/// Starts the task that hands the proxies' dial reports to the controller
/// thread, in batches: whatever has queued up goes in one event.
pub(super) fn spawn_forwarder(
    runtime: &Handle,
    controller: Controller,
    mut reports: mpsc::Receiver<Vec<DialReport>>,
) -> JoinHandle<()> {
    runtime.spawn(async move {
        let mut batches = Vec::new();
        while reports.recv_many(&mut batches, BATCH).await > 0 {
            let batch: Vec<DialReport> = batches.drain(..).flatten().collect();
            controller.tell(Event::ProxyDials(batch)).await;
        }
    })
}
