//! Semantic validation: turns the raw file into a [`Config`], collecting
//! every problem with its position and field path.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use serde_saphyr::{Location, Spanned};

use super::{
    Config, HealthCheckConfig, HealthCheckKind, Issue, Protocol, ServiceConfig,
    raw::{RawConfig, RawService},
};

/// Longest service name.
const MAX_NAME_LEN: usize = 63;

/// Collects every problem found while turning the raw file into a
/// [`Config`].
#[derive(Default)]
pub(super) struct Checker {
    pub(super) issues: Vec<Issue>,
}

/// What an address is used for, which decides the checks applied to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AddrRole {
    /// `metrics_addr` / `api_addr`: anything we can bind to.
    Listen,
    /// A service's VIP.
    Vip,
    /// A server or default server.
    Server,
}

impl AddrRole {
    const fn noun(self) -> &'static str {
        match self {
            Self::Listen => "listen address",
            Self::Vip => "VIP",
            Self::Server => "server",
        }
    }
}

/// A service after its own fields were checked; `None` marks a field that
/// was missing or invalid (and already reported).
struct ServiceDraft {
    path: String,
    name: Option<Spanned<String>>,
    vip: Option<Spanned<SocketAddr>>,
    protocol: Option<Protocol>,
    servers: Vec<(String, Spanned<SocketAddr>)>,
    default_server: Option<Spanned<SocketAddr>>,
    health_check: Option<HealthCheckConfig>,
}

impl ServiceDraft {
    /// The finished service, if nothing was missing or invalid.
    fn finish(self) -> Option<ServiceConfig> {
        Some(ServiceConfig {
            name: self.name?.value,
            vip: self.vip?.value,
            protocol: self.protocol?,
            servers: self
                .servers
                .into_iter()
                .map(|(_, server)| server.value)
                .collect(),
            default_server: self.default_server.map(|server| server.value),
            health_check: self.health_check?,
        })
    }

    /// The VIP and protocol, when both are valid.
    fn vip_key(&self) -> Option<((SocketAddr, Protocol), Location)> {
        let vip = self.vip.as_ref()?;
        Some(((vip.value, self.protocol?), vip.referenced))
    }

    /// Servers and default server with their paths.
    fn all_servers(&self) -> impl Iterator<Item = (String, &Spanned<SocketAddr>)> {
        let default = self
            .default_server
            .iter()
            .map(|server| (format!("{}.default_server", self.path), server));
        self.servers
            .iter()
            .map(|(path, server)| (path.clone(), server))
            .chain(default)
    }
}

impl Checker {
    fn report(&mut self, location: Location, path: &str, message: String) {
        self.issues.push(Issue {
            location,
            path: path.to_owned(),
            message,
        });
    }

    /// All issues in file order, one per line.
    pub(super) fn render(&mut self, origin: &str) -> String {
        if self.issues.is_empty() {
            return format!("{origin}: invalid configuration");
        }
        self.issues
            .sort_by_key(|issue| (issue.location.line(), issue.location.column()));
        let lines: Vec<String> = self
            .issues
            .iter()
            .map(|issue| issue.render(origin))
            .collect();
        lines.join("\n")
    }

    pub(super) fn config(&mut self, raw: &Spanned<RawConfig>) -> Option<Config> {
        let top = &raw.value;
        let bpffs_dir = self.dir(
            top.bpffs_dir.as_ref(),
            "bpffs_dir",
            Config::DEFAULT_BPFFS_DIR,
        );
        let cgroup = top
            .cgroup
            .as_ref()
            .and_then(|cgroup| self.absolute_path(cgroup, "cgroup"));
        let data_dir = self.dir(top.data_dir.as_ref(), "data_dir", Config::DEFAULT_DATA_DIR);
        let metrics_addr = self.listen_addr(
            top.metrics_addr.as_ref(),
            "metrics_addr",
            Config::DEFAULT_METRICS_ADDR,
        );
        let api_addr =
            self.listen_addr(top.api_addr.as_ref(), "api_addr", Config::DEFAULT_API_ADDR);
        if let (Some(metrics), Some(api)) = (&metrics_addr, &api_addr)
            && metrics.value == api.value
            && api.value.port() != 0
        {
            // Point at the address written in the file: api_addr, unless it
            // is the default (which has no position) and metrics_addr took it.
            let (location, path, other) = if api.referenced.line() == 0 {
                (metrics.referenced, "metrics_addr", "api_addr (its default)")
            } else {
                (api.referenced, "api_addr", "metrics_addr")
            };
            self.report(
                location,
                path,
                format!(
                    "{} is also {other}; the two endpoints need different addresses",
                    api.value
                ),
            );
        }

        let Some(services) = &top.services else {
            self.report(
                raw.referenced,
                "services",
                "missing required field `services`; write `services: []` to balance nothing"
                    .to_owned(),
            );
            return None;
        };
        let drafts: Vec<ServiceDraft> = services
            .value
            .iter()
            .enumerate()
            .map(|(index, service)| self.service(index, service))
            .collect();
        self.cross_check(services.referenced, &drafts);

        let services = drafts
            .into_iter()
            .map(ServiceDraft::finish)
            .collect::<Option<Vec<_>>>();
        Some(Config {
            bpffs_dir: bpffs_dir?,
            cgroup,
            data_dir: data_dir?,
            metrics_addr: metrics_addr?.value,
            api_addr: api_addr?.value,
            services: services?,
        })
    }

    /// A directory with a default; must be absolute.
    fn dir(&mut self, raw: Option<&Spanned<String>>, path: &str, default: &str) -> Option<PathBuf> {
        match raw {
            Some(raw) => self.absolute_path(raw, path),
            None => Some(PathBuf::from(default)),
        }
    }

    fn absolute_path(&mut self, raw: &Spanned<String>, path: &str) -> Option<PathBuf> {
        let dir = PathBuf::from(&raw.value);
        if dir.is_absolute() {
            Some(dir)
        } else {
            self.report(
                raw.referenced,
                path,
                format!(
                    "{:?} is not an absolute path; expected a path starting with /",
                    raw.value
                ),
            );
            None
        }
    }

    fn listen_addr(
        &mut self,
        raw: Option<&Spanned<String>>,
        path: &str,
        default: SocketAddr,
    ) -> Option<Spanned<SocketAddr>> {
        match raw {
            Some(raw) => self.address(raw, path, AddrRole::Listen),
            None => Some(Spanned::new(default, Location::UNKNOWN, Location::UNKNOWN)),
        }
    }

    /// Parses a literal `IP:port` and applies the checks of its role.
    fn address(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
        role: AddrRole,
    ) -> Option<Spanned<SocketAddr>> {
        let problem = match parse_socket_addr(raw.value.trim()) {
            Ok(addr) => match address_problem(addr, role) {
                None => return Some(Spanned::new(addr, raw.referenced, raw.defined)),
                Some(problem) => problem,
            },
            Err(problem) => problem,
        };
        self.report(raw.referenced, path, problem);
        None
    }

    /// A required field of a service; reports it when missing.
    fn required<'a, T>(
        &mut self,
        field: Option<&'a T>,
        service: &Spanned<RawService>,
        path: &str,
        name: &str,
    ) -> Option<&'a T> {
        if field.is_none() {
            self.report(
                service.referenced,
                path,
                format!("missing required field `{name}`"),
            );
        }
        field
    }

    /// Checks one service's own fields.
    fn service(&mut self, index: usize, raw: &Spanned<RawService>) -> ServiceDraft {
        let path = format!("services[{index}]");
        let service = &raw.value;

        let name = self
            .required(service.name.as_ref(), raw, &path, "name")
            .and_then(|name| self.service_name(name, &format!("{path}.name")));
        let vip = self
            .required(service.vip.as_ref(), raw, &path, "vip")
            .and_then(|vip| self.vip(vip, &format!("{path}.vip")));
        let protocol = match &service.protocol {
            None => Some(Protocol::Tcp),
            Some(protocol) => self.parse(protocol, &format!("{path}.protocol")),
        };

        let family = vip.as_ref().map(|vip| vip.value);
        let mut servers: Vec<(String, Spanned<SocketAddr>)> = Vec::new();
        if let Some(list) = self.required(service.servers.as_ref(), raw, &path, "servers") {
            for (server_index, server) in list.value.iter().enumerate() {
                let server_path = format!("{path}.servers[{server_index}]");
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
        let default_server = service.default_server.as_ref().and_then(|server| {
            self.server(
                server,
                &format!("{path}.default_server"),
                family,
                "default_server",
            )
        });
        let health_check = self.health_check(raw, &path, protocol);

        ServiceDraft {
            path,
            name,
            vip,
            protocol,
            servers,
            default_server,
            health_check,
        }
    }

    fn service_name(&mut self, raw: &Spanned<String>, path: &str) -> Option<Spanned<String>> {
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

    fn vip(&mut self, raw: &Spanned<String>, path: &str) -> Option<Spanned<SocketAddr>> {
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
    fn server(
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

    fn health_check(
        &mut self,
        service: &Spanned<RawService>,
        path: &str,
        protocol: Option<Protocol>,
    ) -> Option<HealthCheckConfig> {
        let default = HealthCheckConfig::default_for(protocol.unwrap_or(Protocol::Tcp));
        let Some(raw) = &service.value.health_check else {
            return Some(default);
        };
        let path = format!("{path}.health_check");
        let check = &raw.value;

        let kind = match &check.kind {
            None => Some(default.kind),
            Some(kind_raw) => {
                let kind_path = format!("{path}.kind");
                let kind = self.parse::<HealthCheckKind>(kind_raw, &kind_path);
                if kind == Some(HealthCheckKind::Udp) && protocol == Some(Protocol::Tcp) {
                    self.report(
                        kind_raw.referenced,
                        &kind_path,
                        "kind udp cannot check a tcp service; use kind tcp (or leave it out)"
                            .to_owned(),
                    );
                    None
                } else {
                    kind
                }
            }
        };

        let interval = match &check.interval {
            None => Some(Spanned::new(default.interval, raw.referenced, raw.defined)),
            Some(interval) => self.interval(interval, &format!("{path}.interval")),
        };
        let timeout = match &check.timeout {
            // An explicit interval shorter than the default timeout shortens it.
            None => interval.as_ref().map(|interval| {
                Spanned::new(
                    default.timeout.min(interval.value),
                    raw.referenced,
                    raw.defined,
                )
            }),
            Some(timeout) => self.timeout(timeout, &format!("{path}.timeout"), interval.as_ref()),
        };
        Some(HealthCheckConfig {
            kind: kind?,
            interval: interval?.value,
            timeout: timeout?.value,
        })
    }

    fn interval(&mut self, raw: &Spanned<String>, path: &str) -> Option<Spanned<Duration>> {
        let interval = self.duration(raw, path)?;
        if interval.value < HealthCheckConfig::MIN_INTERVAL {
            self.report(
                raw.referenced,
                path,
                format!(
                    "interval {} is too short; expected at least {}",
                    humantime::format_duration(interval.value),
                    humantime::format_duration(HealthCheckConfig::MIN_INTERVAL)
                ),
            );
            return None;
        }
        Some(interval)
    }

    fn timeout(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
        interval: Option<&Spanned<Duration>>,
    ) -> Option<Spanned<Duration>> {
        let timeout = self.duration(raw, path)?;
        if let Some(interval) = interval
            && timeout.value > interval.value
        {
            self.report(
                raw.referenced,
                path,
                format!(
                    "timeout {} is longer than interval {}; expected at most the interval",
                    humantime::format_duration(timeout.value),
                    humantime::format_duration(interval.value)
                ),
            );
            return None;
        }
        Some(timeout)
    }

    /// A non-zero humantime duration.
    fn duration(&mut self, raw: &Spanned<String>, path: &str) -> Option<Spanned<Duration>> {
        match humantime::parse_duration(raw.value.trim()) {
            Ok(duration) if duration.is_zero() => {
                self.report(raw.referenced, path, "must not be zero".to_owned());
                None
            }
            Ok(duration) => Some(Spanned::new(duration, raw.referenced, raw.defined)),
            Err(error) => {
                self.report(
                    raw.referenced,
                    path,
                    format!(
                        "invalid duration {:?}: {error}; expected e.g. 1s, 500ms or 1m",
                        raw.value
                    ),
                );
                None
            }
        }
    }

    /// Parses a scalar with its [`FromStr`] impl, reporting the error.
    fn parse<T: FromStr<Err = String>>(&mut self, raw: &Spanned<String>, path: &str) -> Option<T> {
        raw.value
            .parse()
            .map_err(|problem| self.report(raw.referenced, path, problem))
            .ok()
    }

    /// Checks between services: unique names and VIPs, no forwarding loops,
    /// and the kernel maps' capacity.
    fn cross_check(&mut self, services_location: Location, drafts: &[ServiceDraft]) {
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
    }
}

const fn family_name(addr: SocketAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Why `addr` cannot serve in `role`, if it cannot.
fn address_problem(addr: SocketAddr, role: AddrRole) -> Option<String> {
    if role == AddrRole::Listen {
        return None;
    }
    let noun = role.noun();
    let ip = addr.ip();
    if addr.port() == 0 {
        Some(format!(
            "{addr}: port 0 is not allowed for a {noun}; expected a port from 1 to 65535"
        ))
    } else if ip.is_unspecified() {
        Some(format!(
            "{ip} is the unspecified address; a {noun} must be a unicast address"
        ))
    } else if ip.is_multicast() {
        Some(format!(
            "{ip} is a multicast address; a {noun} must be a unicast address"
        ))
    } else {
        None
    }
}

/// Parses a literal `IP:port`, explaining what is wrong otherwise.
fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let reason = if text.is_empty() {
        "it is empty".to_owned()
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        if ip.is_ipv4() {
            "the port is missing".to_owned()
        } else {
            "the port is missing (IPv6 addresses must be written in brackets, e.g. [::1]:6444)"
                .to_owned()
        }
    } else if let Some((host, port)) = text.rsplit_once(':') {
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        if host.contains(':') && !host.starts_with('[') {
            "IPv6 addresses must be written in brackets, e.g. [::1]:6444".to_owned()
        } else if bare_host.parse::<IpAddr>().is_err() {
            format!("{host:?} is not an IP address and host names are not resolved")
        } else if port.parse::<u16>().is_err() {
            format!("{port:?} is not a port number (1 to 65535)")
        } else {
            "it is not a valid socket address".to_owned()
        }
    } else {
        format!("{text:?} has no port and is not an IP address (host names are not resolved)")
    };
    Err(format!(
        "invalid address {text:?}: {reason}; expected a literal IP:port such as 127.0.0.1:6444 or [::1]:6444"
    ))
}
