//! The controller thread's event handlers: each runs to the end before the
//! next event is taken, so they need no locks and may do kernel and file
//! work (map writes, `sock_diag`, `SOCK_DESTROY`, state files) directly.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use lb_common::{DialEvent, IfAddrs, dial_kind};
use tracing::{debug, info, warn};

use super::{
    attestation, checks,
    dials::{self, monotonic_ns},
    discovery, dns,
    events::{Event, ServersError},
    flow_gc::FlowGc,
    hop_watch::HopWatch,
    k3s, kernel_log, poller, proxies, reconcile,
    runtime::{State, Suspicion},
    settle::{self, settle},
    status,
};
use crate::{
    config::{Config, Protocol},
    health::CheckOutcome,
    kernel::{connections, dataplane, if_addrs, sock_diag::SocketInfo},
    metrics::DialStatus,
    policy::state_machine::{Effects, ServerState},
};

/// What the controller thread does after an event.
pub(super) enum Next {
    Continue,
    Stop,
}

impl State {
    /// Handles one event.
    pub(super) fn handle_event(&mut self, event: Event) -> Next {
        match event {
            Event::Start {
                config,
                resolved,
                reply,
            } => {
                let started = self.start(*config, resolved.as_ref());
                let failed = started.is_err();
                let _ = reply.send(started);
                if failed {
                    return Next::Stop;
                }
            }
            Event::NextCheck {
                service,
                server,
                first,
                bits,
                reply,
            } => {
                let _ = reply.send(checks::plan(self, &service, server, first, bits));
            }
            Event::Checked {
                service,
                server,
                outcome,
            } => self.record_check(&service, server, outcome),
            Event::PollTargets { reply } => {
                let _ = reply.send(self.poll_targets());
            }
            Event::Polled {
                servers,
                sockets,
                started,
            } => self.polled(&servers, &sockets, started),
            Event::PollFailed { error } => {
                warn!(
                    error = format!("{error:#}"),
                    "could not count connections (sock_diag)"
                );
            }
            Event::IfAddrs(wanted) => self.sync_if_addrs(wanted),
            Event::NextHopsChanged { messages } => self.bump_hop_gen(messages),
            Event::Dials(events) => self.dials(&events),
            Event::ProxyDials(reports) => self.proxy_dials(&reports),
            Event::DiscoveryWanted { reply } => {
                let _ = reply.send(discovery::wanted(self));
            }
            Event::View { view, resolved } => discovery::apply_view(self, view, resolved),
            Event::K3sFile { service, reading } => k3s::apply_reading(self, &service, reading),
            Event::Resolved { lookups, at } => dns::apply_lookups(self, &lookups, at),
            Event::Reload { config, reply } => {
                let _ = reply.send(self.reload(*config));
            }
            Event::SetServers {
                service,
                servers,
                reply,
            } => {
                let result = self
                    .set_servers(&service, &servers)
                    .map(|()| status::build(self));
                let _ = reply.send(result);
            }
            Event::SetKernelLog { level, reply } => {
                let _ = reply.send(self.set_kernel_log(level, "kernel-log request"));
            }
            Event::Snapshot { reply } => {
                let _ = reply.send((status::build(self), self.counters.clone()));
            }
            Event::Ping { reply } => {
                let _ = reply.send(());
            }
            Event::Shutdown { reply } => {
                self.stop_tasks();
                let cleaned = self
                    .dataplane
                    .as_ref()
                    .map_or(Ok(()), |d| dataplane::cleanup(d.pin_dir()).map(drop));
                let _ = reply.send(cleaned);
                return Next::Stop;
            }
        }
        Next::Continue
    }

    /// The first configuration: static (or saved) servers are served
    /// whether or not the registry can be read, then discovery and the
    /// poller start.
    fn start(&mut self, mut config: Config, resolved: Option<&dns::Lookups>) -> anyhow::Result<()> {
        self.dns.set_config(&config);
        if let Some(lookups) = resolved {
            self.dns.record(&config, lookups, SystemTime::now());
        }
        self.dns.merge_into(&mut config);
        self.discovery.set_static(&config);
        let chain = config.chain.clone();
        let k3s_settings = config.k3s.clone();
        let every = config.connection_poll_interval;
        let xdp = config.xdp.is_some();
        let kernel_log = config.kernel_log;
        let config = reconcile::with_saved_servers(config);
        if let Err(err) = reconcile::apply(self, config) {
            self.stop_tasks();
            return Err(err);
        }
        // Always written: the pinned map may hold an earlier run's level.
        if let Err(err) = self.set_kernel_log(kernel_log, "config") {
            self.stop_tasks();
            return Err(err);
        }
        let Some(handle) = self.handle() else {
            return Ok(());
        };
        if let Some(chain) = &chain {
            discovery::start(self, &handle, chain);
        }
        if let Some(settings) = &k3s_settings {
            k3s::start(self, &handle, settings);
        }
        dns::start(self, &handle);
        if let Some(ring) = self
            .dataplane
            .as_mut()
            .and_then(|d| d.maps.dial_events.take())
        {
            self.dial_task = Some(dials::spawn(&self.runtime, handle.clone(), ring)?);
        }
        if let Some(reader) = self.dataplane.as_mut().and_then(|d| d.kernel_log.take()) {
            self.kernel_log_task = Some(kernel_log::spawn(&self.runtime, reader)?);
        }
        if let (Some(settings), Some(dataplane)) = (&self.config.xdp, &self.dataplane) {
            self.flow_gc = Some(FlowGc::start(
                &dataplane.maps.flows,
                settings.flow_timeouts,
                settings.flow_gc_interval,
            )?);
            self.hop_watch = Some(HopWatch::start(handle.clone())?);
        }
        if let Some(reports) = self.proxy_reports_rx.take() {
            self.proxy_forwarder = Some(proxies::spawn_forwarder(
                &self.runtime,
                handle.clone(),
                reports,
            ));
        }
        self.poller = Some(poller::spawn(&self.runtime, handle, every, xdp)?);
        Ok(())
    }

    /// Stops every task this thread started (checks, poller, discovery).
    pub(super) fn stop_tasks(&mut self) {
        self.discovery.stop();
        self.k3s.stop();
        self.dns.stop();
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
        if let Some(task) = self.dial_task.take() {
            task.abort();
        }
        if let Some(task) = self.kernel_log_task.take() {
            task.abort();
        }
        if let Some(task) = self.proxy_forwarder.take() {
            task.abort();
        }
        self.flow_gc = None;
        self.hop_watch = None;
        for service in &mut self.services {
            for server in service.servers.values() {
                server.check_task.abort();
            }
            // Its listeners stop and its connections close.
            service.proxy = None;
        }
    }

    /// Records a health-check result.
    fn record_check(&mut self, service_name: &str, address: SocketAddr, outcome: CheckOutcome) {
        let Some(service) = self
            .services
            .iter_mut()
            .find(|s| s.config.name == service_name)
        else {
            return;
        };
        let Some(server) = service.servers.get_mut(&address) else {
            return;
        };
        let was_ok = server.last_check.as_ref().map(|(o, _)| o.ok);
        if was_ok != Some(outcome.ok) {
            if outcome.ok {
                info!(service = service_name, server = %address, reason = %outcome.reason, "server passes its checks");
            } else {
                warn!(service = service_name, server = %address, reason = %outcome.reason, "server fails its checks");
            }
        }
        let now = Instant::now();
        let mut effects = attestation::record(
            service_name,
            address,
            server,
            &mut service.machine,
            &outcome,
            attestation::Context {
                stake_mist: self
                    .discovery
                    .server(service_name, address)
                    .map_or(0, |node| node.stake),
                stake_weight: self.config.features.stake_weight,
                counters: &mut self.counters,
                now,
            },
        );
        effects.merge(service.machine.check(address, outcome.ok, now));
        if let Some(dial) = outcome.dial {
            let status = if dial.ok {
                DialStatus::Success
            } else {
                DialStatus::Failure
            };
            self.counters
                .observe_probe_dial(service_name, status, dial.duration);
            if dial.ok {
                server.dial_time.observe(dial.duration);
            } else {
                if outcome.ok {
                    warn!(service = service_name, server = %address, reason = %outcome.reason, "check passes but connects to the server fail");
                }
                effects.merge(service.machine.dial(address, false, now));
            }
        }
        if outcome.ok {
            // The server answers: a suspect mark the kernel set on a failed
            // client dial was a false alarm, or the server is back.
            let suspicion = server.suspect.take();
            let cleared = self.dataplane.as_mut().map_or(Ok(false), |d| {
                d.maps.backend_dial.clear_suspect(server.backend_id)
            });
            match cleared {
                Ok(cleared) => {
                    if cleared || suspicion.is_some() {
                        info!(service = service_name, server = %address, reason = suspicion.map_or("", |s| s.reason), confirmed = suspicion.is_some_and(|s| s.confirmed), "probe passes: the server is no longer suspect, the kernel may send connects to it again");
                    }
                }
                Err(err) => {
                    warn!(service = service_name, server = %address, error = format!("{err:#}"), "could not clear the kernel's suspect mark");
                }
            }
        } else if let Some(suspicion) = server.suspect.as_mut()
            && !suspicion.confirmed
        {
            suspicion.confirmed = true;
            warn!(service = service_name, server = %address, reason = suspicion.reason, check = %outcome.reason, "probe confirms the failed client dial: the server stays suspect until a probe passes");
        }
        server.last_check = Some((outcome, SystemTime::now()));
        settle(
            &mut self.dataplane,
            &mut self.connections,
            &mut self.counters,
            service,
            effects,
        );
    }

    /// Takes the kernel's dial outcomes: each is a K3s dial success or
    /// failure of its server; a failure also counts, logs and wakes the
    /// server's check task (a probe at once confirms or clears it).
    fn dials(&mut self, events: &[DialEvent]) {
        let now = Instant::now();
        let mut touched: Vec<(usize, Effects)> = Vec::new();
        // When the kernel saw each failure (`CLOCK_MONOTONIC` ns).
        let mut failed: Vec<u64> = Vec::new();
        for event in events {
            let Some(index) = self.services.iter().position(|s| s.id == event.service_id) else {
                continue;
            };
            let service = &mut self.services[index];
            let Some((&address, server)) = service
                .servers
                .iter_mut()
                .find(|(_, r)| r.backend_id == event.backend_id)
            else {
                continue;
            };
            let name = service.config.name.as_str();
            let duration = Duration::from_nanos(event.duration_ns);
            let effects = if event.kind == dial_kind::SUCCESS {
                self.counters
                    .observe_dial(name, DialStatus::Success, duration);
                server.dial_time.observe(duration);
                // The kernel cleared its mark on this success.
                if server.suspect.take().is_some() {
                    info!(service = name, server = %address, "client connect succeeded: the server is no longer suspect");
                }
                service.machine.dial(address, true, now)
            } else {
                failed.push(event.at_ns);
                let reason = dial_kind::label(event.kind);
                if event.kind != dial_kind::STALLED {
                    self.counters
                        .observe_dial(name, DialStatus::Failure, duration);
                }
                self.counters.dial_failed(name, address, reason);
                server.wake.notify_one();
                if server.suspect.is_none() {
                    server.suspect = Some(Suspicion {
                        since: SystemTime::now(),
                        reason,
                        confirmed: false,
                    });
                    warn!(service = name, server = %address, reason, millis = duration.as_secs_f64() * 1000.0, "client connect failed: the server is suspect, the kernel sends new connects to the next server; probing it now");
                } else {
                    debug!(service = name, server = %address, reason, millis = duration.as_secs_f64() * 1000.0, "client connect to a suspect server failed");
                }
                service.machine.dial(address, false, now)
            };
            match touched.iter_mut().find(|(i, _)| *i == index) {
                Some((_, all)) => all.merge(effects),
                None => touched.push((index, effects)),
            }
        }
        // The maps first, for every service; the reaction is measured
        // there (the kernel already skips the server; what follows, the
        // connections closed, does not change where connects go).
        let start = Instant::now();
        for (index, effects) in &touched {
            settle::rewrite(
                &mut self.dataplane,
                &mut self.counters,
                &mut self.services[*index],
                effects,
            );
        }
        if !failed.is_empty() {
            let done = monotonic_ns();
            for at in failed {
                self.counters
                    .observe_dial_reaction(Duration::from_nanos(done.saturating_sub(at)));
            }
        }
        for (index, effects) in touched {
            settle::close(
                &mut self.dataplane,
                &mut self.connections,
                &mut self.counters,
                &mut self.services[index],
                &effects,
                start,
            );
        }
    }

    /// Dial outcomes of the proxy mode's services: each goes to the state
    /// machine as K3s's `recordSuccess`/`recordFailure(reasonDial)`, is
    /// counted in `k3s_loadbalancer_dial_duration_seconds` (and a failure
    /// in the dial failures by reason), and a failure wakes the server's
    /// check task for a probe at once.
    fn proxy_dials(&mut self, reports: &[crate::proxy::DialReport]) {
        let now = Instant::now();
        let mut touched: Vec<(usize, Effects)> = Vec::new();
        for report in reports {
            let Some(index) = self.services.iter().position(|s| s.id == report.service_id) else {
                continue;
            };
            let service = &mut self.services[index];
            if service.proxy.is_none() {
                // A report from before a reload that replaced the service.
                continue;
            }
            let Some(server) = service.servers.get_mut(&report.server) else {
                continue;
            };
            let name = service.config.name.as_str();
            let effects = if let Some(reason) = report.failure {
                self.counters
                    .observe_dial(name, DialStatus::Failure, report.duration);
                self.counters.dial_failed(name, report.server, reason);
                server.wake.notify_one();
                // One warning per server going bad, not one per client
                // while it is failed (every client still dials it last).
                let failed_already = service
                    .machine
                    .server(report.server)
                    .is_some_and(|entry| entry.state == ServerState::Failed);
                if failed_already {
                    debug!(service = name, server = %report.server, reason, "proxy: dial to a failed server failed again");
                } else {
                    warn!(service = name, server = %report.server, reason, millis = report.duration.as_secs_f64() * 1000.0, "proxy: dial failed; the client's connection tries the next server; probing it now");
                }
                service.machine.dial(report.server, false, now)
            } else {
                self.counters
                    .observe_dial(name, DialStatus::Success, report.duration);
                server.dial_time.observe(report.duration);
                service.machine.dial(report.server, true, now)
            };
            match touched.iter_mut().find(|(i, _)| *i == index) {
                Some((_, all)) => all.merge(effects),
                None => touched.push((index, effects)),
            }
        }
        for (index, effects) in touched {
            settle(
                &mut self.dataplane,
                &mut self.connections,
                &mut self.counters,
                &mut self.services[index],
                effects,
            );
        }
    }

    /// Every server the poller should count connections to.
    fn poll_targets(&self) -> HashSet<SocketAddr> {
        self.services
            .iter()
            .filter(|s| s.in_kernel() && !s.counted_by_kernel())
            .flat_map(|s| s.servers.keys().copied())
            .collect()
    }

    /// Takes the poller's dump: counts connections per server, turns new
    /// connects into dial successes and applies time-based transitions.
    fn polled(&mut self, servers: &HashSet<SocketAddr>, sockets: &[SocketInfo], started: Instant) {
        let Self {
            dataplane,
            connections,
            services,
            counters,
            ..
        } = self;
        let counts = connections::count(&connections::via_vip(sockets, servers, |key| {
            dataplane.as_ref().and_then(|d| d.maps.rev_nat.get(key))
        }));
        let now = Instant::now();
        for service in services.iter_mut() {
            let mut effects = Effects::default();
            let by_kernel = service.counted_by_kernel();
            for (&address, server) in &mut service.servers {
                let connections = if let Some(proxy) = &service.proxy {
                    // The proxy counts the connections it carries.
                    proxy.connections(address)
                } else if let (true, Some(dataplane)) = (by_kernel, dataplane.as_ref()) {
                    // `sock_ops` counts them as they open and close.
                    match dataplane.maps.backend_conns.get(server.backend_id) {
                        Ok(conns) => u32::try_from(conns.established).unwrap_or(u32::MAX),
                        Err(err) => {
                            warn!(service = %service.config.name, server = %address, error = format!("{err:#}"), "could not read the connection count");
                            continue;
                        }
                    }
                } else if servers.contains(&address) {
                    counts.get(&(service.id, address)).copied().unwrap_or(0)
                } else {
                    // Added since the dump started (not in its filter):
                    // counted from the next poll on.
                    continue;
                };
                service.machine.set_connections(address, connections);
                // Connects, and unconnected UDP datagrams, the kernel sent here.
                let connects = dataplane.as_ref().map_or(0, |d| {
                    d.maps
                        .backend_stats
                        .get(server.backend_id)
                        .map_or(0, |s| s.connects + s.sendmsgs)
                });
                // New connects are successful dials when one is still open
                // or the last probe could connect too (failed connects are
                // reported by the probes).
                let probe_dial_ok = server
                    .last_check
                    .as_ref()
                    .and_then(|(o, _)| o.dial)
                    .is_some_and(|d| d.ok);
                // TCP dials are reported by the kernel (`dials`).
                if service.config.protocol != Protocol::Tcp
                    && server.last_connects.is_some_and(|last| connects > last)
                    && (connections > 0 || probe_dial_ok)
                {
                    effects.merge(service.machine.dial(address, true, now));
                }
                server.last_connects = Some(connects);
            }
            effects.merge(service.machine.tick(now));
            settle(dataplane, connections, counters, service, effects);
        }
        counters.last_poll = started.elapsed();
        counters.last_poll_sockets = sockets.len();
    }

    /// Routes, neighbours or links changed (`messages` rtnetlink
    /// notifications, coalesced): the next hops the kernel programs cached
    /// in flow entries are stale, so the generation in `xdp_config` moves.
    fn bump_hop_gen(&mut self, messages: usize) {
        let (Some(_), Some(dataplane)) = (&self.config.xdp, self.dataplane.as_mut()) else {
            return;
        };
        match dataplane.maps.xdp_config.bump_hop_gen() {
            Ok(generation) => debug!(generation, messages, "next hops changed: hop_gen bumped"),
            Err(err) => warn!(
                error = format!("{err:#}"),
                "could not bump the next-hop generation (xdp_config); cached next hops may be stale until the next change"
            ),
        }
    }

    /// Brings the `if_addrs` map (XDP's default SNAT source per interface)
    /// up to date with the interfaces' addresses the poller read.
    fn sync_if_addrs(&mut self, wanted: anyhow::Result<BTreeMap<u32, IfAddrs>>) {
        let (Some(_), Some(dataplane)) = (&self.config.xdp, self.dataplane.as_mut()) else {
            return;
        };
        let result = wanted.and_then(|wanted| {
            let overflow = wanted.len() > lb_common::MAX_INTERFACES as usize;
            if overflow && !self.if_addrs_overflow {
                warn!(
                    interfaces = wanted.len(),
                    max = lb_common::MAX_INTERFACES,
                    "more interfaces with addresses than the if_addrs map holds; the highest indexes get no SNAT address"
                );
            }
            self.if_addrs_overflow = overflow;
            dataplane.maps.if_addrs.sync(&wanted)
        });
        match result {
            Ok(changes) => {
                if self.if_addrs_failing {
                    info!("interface addresses readable again");
                    self.if_addrs_failing = false;
                }
                for (ifindex, entry) in &changes.set {
                    info!(
                        ifindex,
                        addresses = %if_addrs::describe(entry),
                        "SNAT addresses of an interface (if_addrs)"
                    );
                }
                if !changes.remove.is_empty() {
                    info!(ifindexes = ?changes.remove, "interfaces without SNAT addresses now (if_addrs)");
                }
            }
            Err(err) => {
                if !self.if_addrs_failing {
                    warn!(
                        error = format!("{err:#}"),
                        "could not refresh the interfaces' addresses (if_addrs); retrying every poll"
                    );
                }
                self.if_addrs_failing = true;
            }
        }
    }

    /// Reloads the configuration. A config that cannot be applied leaves
    /// everything as it was.
    fn reload(&mut self, mut config: Config) -> anyhow::Result<()> {
        reconcile::keep_restart_only_fields(&self.config, &mut config);
        let dns_before = self.dns.services.clone();
        self.dns.set_config(&config);
        self.dns.merge_into(&mut config);
        self.discovery.set_static(&config);
        self.discovery.merge_into(&mut config);
        let kernel_log = config.kernel_log;
        self.k3s.merge_into(&mut config);
        if let Err(err) = reconcile::apply(self, config) {
            // Nothing changed: the names stay as they were.
            self.dns.services = dns_before;
            return Err(err);
        }
        self.discovery.refresh();
        // The new names are looked up at once, then every `dns_refresh`.
        self.dns.refresh(self.config.dns_refresh);
        // A reload goes back to the config's level (as it goes back to the
        // config's server lists).
        self.set_kernel_log(kernel_log, "reload")
    }

    /// Replaces the server list of one service.
    fn set_servers(&mut self, service: &str, servers: &[String]) -> Result<(), ServersError> {
        if let Some(file) = self.k3s.file_of(service) {
            return Err(ServersError::Invalid(format!(
                "service {service:?} follows K3s's state file {}; its servers change when K3s rewrites that file",
                file.display()
            )));
        }
        let mut config = reconcile::config_with_servers(&self.config, service, servers)?;
        // Its `servers` names are no longer followed (until a reload).
        let dns_before = self.dns.services.clone();
        if let Some(changed) = config.services.iter_mut().find(|s| s.name == service) {
            changed.server_names.clear();
            self.dns.servers_set(service, &changed.servers);
        }
        // A discovery service: the list replaces its static servers; the
        // discovered ones stay.
        if let Some(changed) = config
            .services
            .iter()
            .find(|s| s.name == service && s.discovery.is_some())
        {
            self.discovery
                .static_servers
                .insert(changed.name.clone(), changed.servers.clone());
            self.discovery.merge_into(&mut config);
        }
        reconcile::apply(self, config).map_err(|err| {
            self.dns.services = dns_before;
            ServersError::Apply(err)
        })
    }
}
