//! One service (name, VIP, servers, policy, Maglev size) and the checks
//! across services (duplicate VIPs, servers that are VIPs, backend and
//! Maglev slot budgets).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use serde_saphyr::{Location, Spanned};

use super::{AddrRole, Checker, MAX_NAME_LEN, ServiceDraft, family_name};
use crate::config::{
    Config, DialStall, Policy, Protocol, ServerName, ServerTarget, ServiceConfig, ServiceDataplane,
    is_prime, parse_server, raw::RawService,
};

/// The server `raw` as a DNS name, when it is written as one (a name that
/// parses; anything else is checked as an address, which reports it).
fn server_name(raw: &Spanned<String>) -> Option<Spanned<ServerName>> {
    match parse_server(&raw.value) {
        Ok(ServerTarget::Name { host, port }) if port != 0 => Some(Spanned::new(
            ServerName { host, port },
            raw.referenced,
            raw.defined,
        )),
        _ => None,
    }
}

impl Checker {
    /// A `dial_stall_timeout`: `auto`, `0s` (off) or a duration up to
    /// [`ServiceConfig::MAX_DIAL_STALL_TIMEOUT`].
    fn dial_stall(&mut self, raw: &Spanned<String>, path: &str) -> Option<DialStall> {
        let text = raw.value.trim();
        if text == "auto" {
            return Some(DialStall::Auto);
        }
        let problem = match humantime::parse_duration(text) {
            Ok(bound) if bound <= ServiceConfig::MAX_DIAL_STALL_TIMEOUT => {
                return Some(DialStall::Fixed(bound));
            }
            Ok(bound) => format!(
                "{} is too long; expected at most {}",
                humantime::format_duration(bound),
                humantime::format_duration(ServiceConfig::MAX_DIAL_STALL_TIMEOUT)
            ),
            Err(error) => format!(
                "invalid value {text:?} ({error}); expected auto, 0s (off) or a duration such as 250ms"
            ),
        };
        self.report(raw.referenced, path, problem);
        None
    }

    /// Checks one service's own fields.
    pub(super) fn service(&mut self, index: usize, raw: &Spanned<RawService>) -> ServiceDraft {
        let path = format!("services[{index}]");
        let service = &raw.value;

        let name = self
            .required(service.name.as_ref(), raw.referenced, &path, "name", "")
            .and_then(|name| self.service_name(name, &format!("{path}.name")));
        let vip = self
            .required(service.vip.as_ref(), raw.referenced, &path, "vip", "")
            .and_then(|vip| self.vip(vip, &format!("{path}.vip")));
        let protocol = match &service.protocol {
            None => Some(Protocol::Tcp),
            Some(protocol) => self.parse(protocol, &format!("{path}.protocol")),
        };

        let family = vip.as_ref().map(|vip| vip.value);
        let mut servers: Vec<(String, Spanned<SocketAddr>)> = Vec::new();
        // With `discovery`, static servers are optional.
        let servers_list = if service.discovery.is_some() {
            service.servers.as_ref()
        } else {
            self.required(
                service.servers.as_ref(),
                raw.referenced,
                &path,
                "servers",
                "",
            )
        };
        let mut server_names: Vec<(String, Spanned<ServerName>)> = Vec::new();
        if let Some(list) = servers_list {
            for (server_index, server) in list.value.iter().enumerate() {
                let server_path = format!("{path}.servers[{server_index}]");
                if let Some(name) = server_name(server) {
                    if let Some((first_path, first)) = server_names
                        .iter()
                        .find(|(_, other)| other.value == name.value)
                    {
                        self.report(
                            name.referenced,
                            &server_path,
                            format!(
                                "duplicate server {}, already listed as {first_path} (line {})",
                                name.value,
                                first.referenced.line()
                            ),
                        );
                    } else {
                        server_names.push((server_path, name));
                    }
                    continue;
                }
                let Some(addr) = self.server(server, &server_path, family, "server") else {
                    continue;
                };
                if let Some((first_path, first)) =
                    servers.iter().find(|(_, other)| other.value == addr.value)
                {
                    self.report(
                        addr.referenced,
                        &server_path,
                        format!(
                            "duplicate server {}, already listed as {first_path} (line {})",
                            addr.value,
                            first.referenced.line()
                        ),
                    );
                } else {
                    servers.push((server_path, addr));
                }
            }
        }
        let default_server_name = service.default_server.as_ref().and_then(server_name);
        let default_server = service
            .default_server
            .as_ref()
            .filter(|_| default_server_name.is_none())
            .and_then(|server| {
                self.server(
                    server,
                    &format!("{path}.default_server"),
                    family,
                    "default_server",
                )
            });
        let policy = match &service.policy {
            None => Some(Spanned::new(
                Policy::Failover,
                Location::UNKNOWN,
                Location::UNKNOWN,
            )),
            Some(raw) => self
                .parse(raw, &format!("{path}.policy"))
                .map(|policy| Spanned::new(policy, raw.referenced, raw.defined)),
        };
        let default_is_listed = default_server.as_ref().is_none_or(|default| {
            servers
                .iter()
                .any(|(_, server)| server.value == default.value)
        }) && default_server_name.as_ref().is_none_or(|default| {
            server_names
                .iter()
                .any(|(_, name)| name.value == default.value)
        });
        // A name counts as one server here (it may resolve to more).
        let server_count = servers.len() + server_names.len() + usize::from(!default_is_listed);
        let maglev_table_size = self.maglev_table_size(
            service.maglev_table_size.as_ref(),
            &path,
            policy.as_ref(),
            server_count,
        );
        let nautilus_before = self.nautilus_kinds.len();
        let health_check = self.health_check(raw, &path, protocol);
        let nautilus_kinds = self.nautilus_kinds.split_off(nautilus_before);
        let discovery = match &service.discovery {
            None => Some(None),
            Some(raw) => self.discovery(raw, &format!("{path}.discovery")).map(Some),
        };
        let remote = match &service.remote {
            None => Some(Spanned::new(false, Location::UNKNOWN, Location::UNKNOWN)),
            Some(raw) => self
                .boolean(raw, &format!("{path}.remote"))
                .map(|remote| Spanned::new(remote, raw.referenced, raw.defined)),
        };

        let dial_tracking = match &service.dial_tracking {
            None => Some(true),
            Some(raw) => self.boolean(raw, &format!("{path}.dial_tracking")),
        };
        let dial_stall_timeout = service
            .dial_stall_timeout
            .as_ref()
            .map_or(Some(DialStall::Auto), |raw| {
                self.dial_stall(raw, &format!("{path}.dial_stall_timeout"))
            });

        let (dataplane, dial_timeout, keepalive) = self.proxy_settings(service, &path, protocol);

        ServiceDraft {
            path,
            name,
            vip,
            protocol,
            servers,
            default_server,
            server_names: server_names.into_iter().map(|(_, n)| n.value).collect(),
            default_server_name: default_server_name.map(|n| n.value),
            policy,
            maglev_table_size,
            health_check,
            remote,
            dial_tracking,
            dial_stall_timeout,
            discovery,
            discovery_at: service.discovery.as_ref().map(|raw| raw.referenced),
            nautilus_kinds,
            dataplane,
            dial_timeout,
            keepalive,
        }
    }

    /// `dataplane` and the proxy mode's `dial_timeout` and `keepalive`:
    /// proxy mode carries TCP only and dials in the K3s order of one
    /// server at a time, so it takes neither `protocol: udp` nor `policy:
    /// spread` nor `remote`, and the kernel's dial settings do not apply to
    /// it; the two proxy settings need it.
    fn proxy_settings(
        &mut self,
        service: &RawService,
        path: &str,
        protocol: Option<Protocol>,
    ) -> (Option<ServiceDataplane>, Option<Duration>, Option<Duration>) {
        let default = if self.daemon_proxy {
            ServiceDataplane::Proxy
        } else {
            ServiceDataplane::Ebpf
        };
        let dataplane = match &service.dataplane {
            None => Some(default),
            Some(raw) => {
                let parsed = self.parse(raw, &format!("{path}.dataplane"));
                if self.daemon_proxy && parsed == Some(ServiceDataplane::Ebpf) {
                    self.report(
                        raw.referenced,
                        &format!("{path}.dataplane"),
                        "the daemon loads no eBPF programs (top-level `dataplane: proxy`); use `dataplane: ebpf` or `auto` at the top level for this service".to_owned(),
                    );
                }
                parsed
            }
        };
        let dial_timeout = service.dial_timeout.as_ref().map_or(
            Some(ServiceConfig::DEFAULT_DIAL_TIMEOUT),
            |raw| {
                self.duration_in_range(
                    raw,
                    &format!("{path}.dial_timeout"),
                    ServiceConfig::MIN_DIAL_TIMEOUT,
                    ServiceConfig::MAX_DIAL_TIMEOUT,
                )
            },
        );
        let keepalive =
            service
                .keepalive
                .as_ref()
                .map_or(Some(ServiceConfig::DEFAULT_KEEPALIVE), |raw| {
                    // `0s` turns it off; anything else is a probe interval.
                    if humantime::parse_duration(raw.value.trim()) == Ok(Duration::ZERO) {
                        return Some(Duration::ZERO);
                    }
                    self.duration_in_range(
                        raw,
                        &format!("{path}.keepalive"),
                        Duration::from_secs(1),
                        ServiceConfig::MAX_KEEPALIVE,
                    )
                });
        let proxy = dataplane == Some(ServiceDataplane::Proxy);
        if proxy {
            if protocol == Some(Protocol::Udp) {
                // At `dataplane` when written, else at `protocol` (the
                // daemon's `dataplane: proxy` made it a proxied service).
                let (at, field) = match (&service.dataplane, &service.protocol) {
                    (Some(raw), _) => (raw.referenced, "dataplane"),
                    (None, Some(raw)) => (raw.referenced, "protocol"),
                    (None, None) => (Location::UNKNOWN, "dataplane"),
                };
                self.report(
                    at,
                    &format!("{path}.{field}"),
                    "proxy mode carries TCP only; a UDP service needs `dataplane: ebpf`".to_owned(),
                );
            }
            let not_with_proxy = [
                (
                    service
                        .policy
                        .as_ref()
                        .filter(|raw| raw.value.trim() == "spread"),
                    "policy",
                    "proxy mode dials one server at a time in the K3s order (policy failover); spread needs `dataplane: ebpf`",
                ),
                (
                    service.remote.as_ref(),
                    "remote",
                    "remote clients are forwarded by the XDP/tc programs; the proxy serves whoever reaches its listener, so `remote` needs `dataplane: ebpf`",
                ),
                (
                    service.dial_tracking.as_ref(),
                    "dial_tracking",
                    "the proxy sees every dial itself; `dial_tracking` is the kernel's (dataplane: ebpf)",
                ),
                (
                    service.dial_stall_timeout.as_ref(),
                    "dial_stall_timeout",
                    "the kernel's stall bound does not apply to the proxy, whose dials end at `dial_timeout`",
                ),
            ];
            for (raw, field, why) in not_with_proxy {
                if let Some(raw) = raw {
                    self.report(raw.referenced, &format!("{path}.{field}"), why.to_owned());
                }
            }
        } else if dataplane.is_some() {
            for (raw, field) in [
                (service.dial_timeout.as_ref(), "dial_timeout"),
                (service.keepalive.as_ref(), "keepalive"),
            ] {
                if let Some(raw) = raw {
                    self.report(
                        raw.referenced,
                        &format!("{path}.{field}"),
                        format!("`{field}` applies to proxy mode only (`dataplane: proxy`); the kernel's connects have no dial timer of the daemon's"),
                    );
                }
            }
        }
        (dataplane, dial_timeout, keepalive)
    }

    /// `maglev_table_size`: only with policy spread; a prime of at most
    /// [`ServiceConfig::MAX_MAGLEV_TABLE_SIZE`] with at least
    /// [`ServiceConfig::MIN_MAGLEV_SLOTS_PER_SERVER`] slots per server (or
    /// the largest size, when that is more than it). The default is checked
    /// too with policy spread; an invalid policy skips the checks that
    /// depend on it.
    pub(super) fn maglev_table_size(
        &mut self,
        raw: Option<&Spanned<String>>,
        path: &str,
        policy: Option<&Spanned<Policy>>,
        servers: usize,
    ) -> Option<Spanned<u32>> {
        let default = ServiceConfig::DEFAULT_MAGLEV_TABLE_SIZE;
        let max = ServiceConfig::MAX_MAGLEV_TABLE_SIZE;
        let per_server = ServiceConfig::MIN_MAGLEV_SLOTS_PER_SERVER;
        let size_path = format!("{path}.maglev_table_size");
        let Some(raw) = raw else {
            let size = Spanned::new(default, Location::UNKNOWN, Location::UNKNOWN);
            let Some(policy) = policy.filter(|policy| policy.value == Policy::Spread) else {
                return Some(size);
            };
            let needed = min_maglev_table_size(servers);
            if default >= needed {
                return Some(size);
            }
            self.report(
                policy.referenced,
                &format!("{path}.policy"),
                format!(
                    "spread over {servers} servers needs at least {needed} Maglev table slots ({per_server} per server for an even spread, at most {max}), more than the default maglev_table_size {default}; set `maglev_table_size` to a prime such as {}",
                    next_prime(needed).unwrap_or(max)
                ),
            );
            return None;
        };
        if let Some(policy) = policy
            && policy.value != Policy::Spread
        {
            let default_note = if policy.referenced.line() == 0 {
                " (the default)"
            } else {
                ""
            };
            self.report(
                raw.referenced,
                &size_path,
                format!(
                    "`maglev_table_size` is only valid with policy spread, not with policy {}{default_note}",
                    policy.value
                ),
            );
            return None;
        }
        let Ok(size) = raw.value.trim().parse::<u32>() else {
            self.report(
                raw.referenced,
                &size_path,
                format!(
                    "invalid number {:?}; expected a prime number of table slots, at most {max} (default {default})",
                    raw.value
                ),
            );
            return None;
        };
        let needed = min_maglev_table_size(servers);
        let problem = if size > max {
            format!("{size} is too large; at most {max} Maglev table slots are supported")
        } else if size < needed && needed == max {
            format!(
                "{size} is too small for {servers} servers: Maglev needs at least {per_server} slots per server for an even spread, and {max} is the most supported; use {max}"
            )
        } else if size < needed {
            format!(
                "{size} is too small for {servers} servers: Maglev needs at least {per_server} slots per server for an even spread; use a prime of at least {needed}, such as {}",
                next_prime(needed).unwrap_or(max)
            )
        } else if !is_prime(size) {
            let below = prev_prime(size).filter(|below| *below >= needed);
            match (below, next_prime(size)) {
                (Some(below), Some(above)) => {
                    format!("{size} is not a prime; try {below} or {above}")
                }
                (None, Some(above)) => format!("{size} is not a prime; try {above}"),
                // Unreachable: the largest size is a prime.
                (_, None) => format!("{size} is not a prime"),
            }
        } else {
            return Some(Spanned::new(size, raw.referenced, raw.defined));
        };
        self.report(raw.referenced, &size_path, problem);
        None
    }

    pub(super) fn service_name(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
    ) -> Option<Spanned<String>> {
        let name = &raw.value;
        let problem = if name.is_empty() {
            "service name must not be empty".to_owned()
        } else if name.len() > MAX_NAME_LEN
            || !name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        {
            format!(
                "invalid service name {name:?}; expected 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ -"
            )
        } else {
            return Some(raw.clone());
        };
        self.report(raw.referenced, path, problem);
        None
    }

    pub(super) fn vip(&mut self, raw: &Spanned<String>, path: &str) -> Option<Spanned<SocketAddr>> {
        let vip = self.address(raw, path, AddrRole::Vip)?;
        if let SocketAddr::V6(v6) = vip.value
            && let Some(v4) = v6.ip().to_ipv4_mapped()
        {
            self.report(
                vip.referenced,
                path,
                format!(
                    "{} is an IPv4-mapped IPv6 address; write it as IPv4: {}:{}",
                    vip.value,
                    v4,
                    v6.port()
                ),
            );
            return None;
        }
        Some(vip)
    }

    /// A server or default server: a valid address of the VIP's family.
    pub(super) fn server(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
        vip: Option<SocketAddr>,
        noun: &str,
    ) -> Option<Spanned<SocketAddr>> {
        let addr = self.address(raw, path, AddrRole::Server)?;
        if let Some(vip) = vip
            && vip.is_ipv4() != addr.value.is_ipv4()
        {
            self.report(
                addr.referenced,
                path,
                format!(
                    "address family mismatch: VIP is {}, {noun} is {} ({}); a service's servers must use the VIP's family",
                    family_name(vip),
                    family_name(addr.value),
                    addr.value
                ),
            );
            return None;
        }
        Some(addr)
    }

    /// Checks between services: unique names and VIPs, no forwarding loops,
    /// and the kernel maps' capacity.
    pub(super) fn cross_check(&mut self, services_location: Location, drafts: &[ServiceDraft]) {
        let mut names: HashMap<&str, (&str, Location)> = HashMap::new();
        let mut vips: HashMap<(SocketAddr, Protocol), (&str, Location)> = HashMap::new();
        for draft in drafts {
            if let Some(name) = &draft.name {
                if let Some((first, line)) = names.get(name.value.as_str()) {
                    self.report(
                        name.referenced,
                        &format!("{}.name", draft.path),
                        format!(
                            "duplicate service name {:?}, already used by {first} (line {})",
                            name.value,
                            line.line()
                        ),
                    );
                } else {
                    names.insert(&name.value, (&draft.path, name.referenced));
                }
            }
            if let Some((key, location)) = draft.vip_key() {
                if let Some((first, first_location)) = vips.get(&key) {
                    self.report(
                        location,
                        &format!("{}.vip", draft.path),
                        format!(
                            "duplicate VIP {}/{}, already used by {first} (line {})",
                            key.0,
                            key.1,
                            first_location.line()
                        ),
                    );
                } else {
                    vips.insert(key, (&draft.path, location));
                }
            }
        }

        for draft in drafts {
            let Some(protocol) = draft.protocol else {
                continue;
            };
            for (path, server) in draft.all_servers() {
                if let Some((owner, location)) = vips.get(&(server.value, protocol)) {
                    self.report(
                        server.referenced,
                        &path,
                        format!(
                            "forwarding loop: {}/{protocol} is the VIP of {owner} (line {}); a server must be a real server",
                            server.value,
                            location.line()
                        ),
                    );
                }
            }
        }

        if drafts.len() > Config::MAX_SERVICES {
            self.report(
                services_location,
                "services",
                format!(
                    "too many services: {}; at most {} are supported",
                    drafts.len(),
                    Config::MAX_SERVICES
                ),
            );
        }
        let backends: usize = drafts
            .iter()
            .map(|draft| {
                draft
                    .all_servers()
                    .map(|(_, server)| server.value)
                    .collect::<HashSet<_>>()
                    .len()
            })
            .sum();
        if backends > Config::MAX_BACKENDS {
            self.report(
                services_location,
                "services",
                format!(
                    "too many backends: {backends} distinct (service, server) pairs in total; at most {} are supported",
                    Config::MAX_BACKENDS
                ),
            );
        }
        self.check_maglev_slots(drafts);
    }

    /// The Maglev tables of all spread services must fit the kernel map
    /// together; reported once, on the service that crosses the limit.
    pub(super) fn check_maglev_slots(&mut self, drafts: &[ServiceDraft]) {
        let max = u64::from(Config::MAX_MAGLEV_SLOTS);
        let total: u64 = drafts
            .iter()
            .filter_map(ServiceDraft::maglev_slots)
            .map(|size| u64::from(size.value))
            .sum();
        if total <= max {
            return;
        }
        let mut slots = 0;
        for draft in drafts {
            let Some(size) = draft.maglev_slots() else {
                continue;
            };
            slots += u64::from(size.value);
            if slots <= max {
                continue;
            }
            let (location, path, what) = if size.referenced.line() == 0 {
                let policy = draft
                    .policy
                    .as_ref()
                    .map_or(Location::UNKNOWN, |policy| policy.referenced);
                (
                    policy,
                    format!("{}.policy", draft.path),
                    format!(
                        " (this one with the default maglev_table_size {})",
                        size.value
                    ),
                )
            } else {
                (
                    size.referenced,
                    format!("{}.maglev_table_size", draft.path),
                    String::new(),
                )
            };
            self.report(
                location,
                &path,
                format!(
                    "too many Maglev table slots: the spread services up to this one{what} need {slots}, all spread services {total}; at most {max} are supported in total, use smaller maglev_table_size values"
                ),
            );
            return;
        }
    }
}

/// The smallest `maglev_table_size` for a service with `servers` servers:
/// [`ServiceConfig::MIN_MAGLEV_SLOTS_PER_SERVER`] each, but at most
/// [`ServiceConfig::MAX_MAGLEV_TABLE_SIZE`].
pub(super) fn min_maglev_table_size(servers: usize) -> u32 {
    let max = ServiceConfig::MAX_MAGLEV_TABLE_SIZE;
    u32::try_from(servers)
        .ok()
        .and_then(|servers| servers.checked_mul(ServiceConfig::MIN_MAGLEV_SLOTS_PER_SERVER))
        .map_or(max, |needed| needed.min(max))
}

/// The largest prime below `number`, if any.
pub(super) fn prev_prime(number: u32) -> Option<u32> {
    (2..number).rev().find(|candidate| is_prime(*candidate))
}

/// The smallest prime of at least `number` that is a valid table size.
pub(super) fn next_prime(number: u32) -> Option<u32> {
    (number..=ServiceConfig::MAX_MAGLEV_TABLE_SIZE).find(|candidate| is_prime(*candidate))
}
