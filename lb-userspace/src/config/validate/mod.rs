//! Semantic validation: turns the raw file into a [`Config`], collecting
//! every problem with its position and field path.
//!
//! This file holds the [`Checker`], the top level of the file and the value
//! checks every block shares (paths, addresses, numbers, durations); each
//! block has its own file: [`service`] (services, servers, Maglev sizes and
//! the checks across services), [`health`] (`health_check`), [`chain`]
//! (`features`, `chain`, `discovery`) and [`xdp`].

mod chain;
mod health;
mod k3s;
mod service;
mod xdp;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use serde_saphyr::{Location, Spanned};

use super::{
    Config, ControlGroup, DaemonDataplane, DialStall, DiscoveryConfig, Features, HealthCheckConfig,
    HttpProxyAllowed, Issue, KernelLog, Policy, Protocol, ServerName, ServiceConfig,
    ServiceDataplane, raw::RawConfig,
};

/// Longest service name.
const MAX_NAME_LEN: usize = 63;
/// Longest DNS name accepted as `health_check.host`.
const MAX_HOST_LEN: usize = 253;
/// Longest network interface name (`IFNAMSIZ` - 1).
const MAX_INTERFACE_NAME_LEN: usize = 15;

/// A `health_check.kind` word.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Udp,
    Http,
    Https,
    SuiSync,
    Nautilus,
    All,
}

super::config_words!(Kind, "health check kind", {
    Tcp => "tcp",
    Udp => "udp",
    Http => "http",
    Https => "https",
    SuiSync => "sui_sync",
    Nautilus => "nautilus",
    All => "all",
});

/// Shortest accepted `chain.discovery_interval`.
const MIN_DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// Longest accepted `chain.discovery_interval`.
const MAX_DISCOVERY_INTERVAL: Duration = Duration::from_hours(24);
/// Shortest accepted nautilus `max_age`.
const MIN_ATTESTATION_MAX_AGE: Duration = Duration::from_secs(1);
/// Longest accepted nautilus `max_age`.
const MAX_ATTESTATION_MAX_AGE: Duration = Duration::from_hours(24);

/// Collects every problem found while turning the raw file into a
/// [`Config`].
#[derive(Default)]
pub(super) struct Checker {
    pub(super) issues: Vec<Issue>,
    /// Every `kind: nautilus` seen so far: its path and position.
    nautilus_kinds: Vec<(String, Location)>,
    /// The top-level `dataplane` is `proxy`: services are proxied unless
    /// they say otherwise, which they may not.
    daemon_proxy: bool,
}

/// What the checks that need the chain look at besides the service.
#[derive(Clone, Copy)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about the file"
)]
struct ChainContext {
    /// There is a `chain` block.
    chain: bool,
    /// `features.blockchain_discovery` is false.
    discovery_off: bool,
    /// `features.nautilus_health_checks` is false.
    nautilus_off: bool,
    /// `chain.enclave_config` is written.
    enclave_config: bool,
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
    /// The servers written as DNS names, in file order.
    server_names: Vec<ServerName>,
    /// `default_server` written as a DNS name.
    default_server_name: Option<ServerName>,
    /// Without a position when not written (the default).
    policy: Option<Spanned<Policy>>,
    /// Without a position when not written (the default).
    maglev_table_size: Option<Spanned<u32>>,
    health_check: Option<HealthCheckConfig>,
    /// Without a position when not written (the default).
    remote: Option<Spanned<bool>>,
    dial_tracking: Option<bool>,
    dial_stall_timeout: Option<DialStall>,
    /// `Some(None)` without `discovery`; `None` when invalid.
    #[expect(
        clippy::option_option,
        reason = "like the other fields: None = invalid, then the value"
    )]
    discovery: Option<Option<DiscoveryConfig>>,
    /// The `discovery` block's position, when written.
    discovery_at: Option<Location>,
    /// The `kind: nautilus` of its health check (path and position).
    nautilus_kinds: Vec<(String, Location)>,
    dataplane: Option<ServiceDataplane>,
    dial_timeout: Option<Duration>,
    keepalive: Option<Duration>,
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
            server_names: self.server_names,
            default_server_name: self.default_server_name,
            policy: self.policy?.value,
            maglev_table_size: self.maglev_table_size?.value,
            health_check: self.health_check?,
            remote: self.remote?.value,
            dial_tracking: self.dial_tracking?,
            dial_stall_timeout: self.dial_stall_timeout?,
            discovery: self.discovery?,
            dataplane: self.dataplane?,
            dial_timeout: self.dial_timeout?,
            keepalive: self.keepalive?,
        })
    }

    /// The Maglev table size of a valid spread service.
    fn maglev_slots(&self) -> Option<&Spanned<u32>> {
        if self.policy.as_ref()?.value == Policy::Spread {
            self.maglev_table_size.as_ref()
        } else {
            None
        }
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
        let dataplane = match &top.dataplane {
            None => Some(DaemonDataplane::Ebpf),
            Some(raw) => self.parse(raw, "dataplane"),
        };
        self.daemon_proxy = dataplane == Some(DaemonDataplane::Proxy);
        let http_proxy_allowed = match &top.http_proxy_allowed {
            None => Some(HttpProxyAllowed::Auto),
            Some(raw) => self.parse(raw, "http_proxy_allowed"),
        };
        if self.daemon_proxy {
            for (written, field, why) in [
                (
                    top.xdp.as_ref().map(|raw| raw.referenced),
                    "xdp",
                    "forwarding remote clients needs the XDP/tc programs, which `dataplane: proxy` does not load",
                ),
                (
                    top.k3s.as_ref().map(|raw| raw.referenced),
                    "k3s",
                    "K3s's own balancer listens on the VIPs it follows: only the eBPF data plane can take them over (`dataplane: proxy` cannot listen there)",
                ),
            ] {
                if let Some(at) = written {
                    self.report(at, field, why.to_owned());
                }
            }
        }
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
        let control_socket = match &top.control_socket {
            None => Some(PathBuf::from(Config::DEFAULT_CONTROL_SOCKET)),
            Some(raw) => self.socket_path(raw, "control_socket"),
        };
        let control_group = match &top.control_group {
            None => Some(None),
            Some(raw) => self.group(raw, "control_group").map(Some),
        };
        let api_token_file = match &top.api_token_file {
            None => Some(None),
            Some(raw) => self.absolute_path(raw, "api_token_file").map(Some),
        };

        let max_concurrent_checks = match &top.max_concurrent_checks {
            None => Some(Config::DEFAULT_MAX_CONCURRENT_CHECKS),
            Some(raw) => self.max_concurrent_checks(raw),
        };
        let connection_poll_interval = match &top.connection_poll_interval {
            None => Some(Config::DEFAULT_CONNECTION_POLL_INTERVAL),
            Some(raw) => self.connection_poll_interval(raw),
        };
        let kernel_log = match &top.kernel_log {
            None => Some(KernelLog::Off),
            Some(raw) => self.parse(raw, "kernel_log"),
        };
        let dns_refresh = match &top.dns_refresh {
            None => Some(Config::DEFAULT_DNS_REFRESH),
            Some(raw) => self.duration_in_range(
                raw,
                "dns_refresh",
                Config::MIN_DNS_REFRESH,
                Config::MAX_DNS_REFRESH,
            ),
        };
        let xdp = match &top.xdp {
            None => Some(None),
            Some(raw) => self.xdp(raw).map(Some),
        };
        let features = match &top.features {
            None => Some(default_features(top.chain.is_some())),
            Some(raw) => self.features(raw, top.chain.is_some()),
        };
        let stake_off = features.as_ref().is_some_and(|f| !f.stake_validation);
        let chain = match &top.chain {
            None => Some(None),
            Some(raw) => self.chain(raw, stake_off).map(Some),
        };

        let k3s = match &top.k3s {
            None => Some(None),
            Some(raw) => self.k3s(raw).map(Some),
        };
        // With a `k3s` block, `services` may be left out.
        let no_services = Spanned::new(Vec::new(), Location::UNKNOWN, Location::UNKNOWN);
        let services = if top.k3s.is_some() && top.services.is_none() {
            &no_services
        } else {
            self.required(
                top.services.as_ref(),
                raw.referenced,
                "services",
                "services",
                "; write `services: []` to balance nothing",
            )?
        };
        let drafts: Vec<ServiceDraft> = services
            .value
            .iter()
            .enumerate()
            .map(|(index, service)| self.service(index, service))
            .collect();
        self.cross_check(services.referenced, &drafts);
        if let Some(Some(k3s)) = &k3s {
            self.check_k3s_against_services(k3s, &drafts);
        }
        if top.xdp.is_none() {
            self.check_remote_needs_xdp(&drafts);
        }
        let context = ChainContext {
            chain: top.chain.is_some(),
            discovery_off: features.as_ref().is_some_and(|f| !f.blockchain_discovery),
            nautilus_off: features.as_ref().is_some_and(|f| !f.nautilus_health_checks),
            enclave_config: top
                .chain
                .as_ref()
                .is_some_and(|chain| chain.value.enclave_config.is_some()),
        };
        self.check_discovery_needs(&drafts, context);

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
            control_socket: control_socket?,
            control_group: control_group?,
            api_token_file: api_token_file?,
            services: services?,
            dataplane: dataplane?,
            http_proxy_allowed: http_proxy_allowed?,
            max_concurrent_checks: max_concurrent_checks?,
            connection_poll_interval: connection_poll_interval?,
            dns_refresh: dns_refresh?,
            xdp: xdp?,
            chain: chain?,
            k3s: k3s?,
            features: features?,
            kernel_log: kernel_log?,
        })
    }

    /// A duration within `min..=max`, or an error at `path` saying which
    /// bound it crosses.
    fn duration_in_range(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let interval = self.duration(raw, path)?.value;
        let problem = if interval < min {
            format!(
                "is too short; expected at least {}",
                humantime::format_duration(min)
            )
        } else if interval > max {
            format!(
                "is too long; expected at most {}",
                humantime::format_duration(max)
            )
        } else {
            return Some(interval);
        };
        self.report(
            raw.referenced,
            path,
            format!("{} {problem}", humantime::format_duration(interval)),
        );
        None
    }

    fn max_concurrent_checks(&mut self, raw: &Spanned<String>) -> Option<usize> {
        let path = "max_concurrent_checks";
        let max = Config::MAX_CONCURRENT_CHECKS;
        match raw.value.trim().parse::<u64>() {
            Ok(count) if (1..=max as u64).contains(&count) => usize::try_from(count).ok(),
            Ok(count) => {
                self.report(
                    raw.referenced,
                    path,
                    format!("{count} is out of range; expected 1 to {max}"),
                );
                None
            }
            Err(_) => {
                self.report(
                    raw.referenced,
                    path,
                    format!(
                        "invalid number {:?}; expected a whole number from 1 to {max}",
                        raw.value
                    ),
                );
                None
            }
        }
    }

    fn connection_poll_interval(&mut self, raw: &Spanned<String>) -> Option<Duration> {
        self.duration_in_range(
            raw,
            "connection_poll_interval",
            Config::MIN_CONNECTION_POLL_INTERVAL,
            Config::MAX_CONNECTION_POLL_INTERVAL,
        )
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

    /// An absolute path that fits a Unix socket address.
    fn socket_path(&mut self, raw: &Spanned<String>, path: &str) -> Option<PathBuf> {
        let socket = self.absolute_path(raw, path)?;
        let len = socket.as_os_str().len();
        if len > Config::MAX_SOCKET_PATH {
            self.report(
                raw.referenced,
                path,
                format!(
                    "{len} bytes is too long for a Unix socket path; at most {} allowed",
                    Config::MAX_SOCKET_PATH
                ),
            );
            return None;
        }
        if socket.file_name().is_none() {
            self.report(
                raw.referenced,
                path,
                format!(
                    "{:?} names no file; expected e.g. /run/daas-lb/control.sock",
                    raw.value
                ),
            );
            return None;
        }
        Some(socket)
    }

    /// A group name or numeric gid that exists on this host.
    fn group(&mut self, raw: &Spanned<String>, path: &str) -> Option<ControlGroup> {
        let name = raw.value.trim();
        let gid = if let Ok(gid) = name.parse::<u32>() {
            Some(gid)
        } else {
            gid_of_group(name)
        };
        if let Some(gid) = gid {
            Some(ControlGroup {
                name: name.to_owned(),
                gid,
            })
        } else {
            self.report(
                raw.referenced,
                path,
                format!("no group {name:?} on this host (see /etc/group); expected a group name or a numeric gid"),
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
        let parsed = if role == AddrRole::Server {
            server_addr(raw.value.trim())
        } else {
            parse_socket_addr(raw.value.trim())
        };
        let problem = match parsed {
            Ok(addr) => match address_problem(addr, role) {
                None => return Some(Spanned::new(addr, raw.referenced, raw.defined)),
                Some(problem) => problem,
            },
            Err(problem) => problem,
        };
        self.report(raw.referenced, path, problem);
        None
    }

    /// A required field `name` of the block at `path` (written at `at`);
    /// reports it when missing, with `hint` (e.g. `: what it is`) appended.
    fn required<'a, T>(
        &mut self,
        field: Option<&'a T>,
        at: Location,
        path: &str,
        name: &str,
        hint: &str,
    ) -> Option<&'a T> {
        if field.is_none() {
            self.report(at, path, format!("missing required field `{name}`{hint}"));
        }
        field
    }

    /// A whole number up to `max` (underscores allowed as separators);
    /// reports `problem(written text)` otherwise.
    fn whole_number(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
        max: u64,
        problem: impl FnOnce(&str) -> String,
    ) -> Option<u64> {
        let number = raw
            .value
            .trim()
            .replace('_', "")
            .parse::<u64>()
            .ok()
            .filter(|number| *number <= max);
        if number.is_none() {
            self.report(raw.referenced, path, problem(&raw.value));
        }
        number
    }

    fn boolean(&mut self, raw: &Spanned<String>, path: &str) -> Option<bool> {
        match raw.value.trim() {
            "true" => Some(true),
            "false" => Some(false),
            other => {
                self.report(
                    raw.referenced,
                    path,
                    format!("invalid value {other:?}; expected true or false"),
                );
                None
            }
        }
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
}

/// The features without a `features` block: the plain K3s load balancer,
/// and everything the chain serves when there is a `chain` block.
fn default_features(chain: bool) -> Features {
    Features {
        nautilus_health_checks: chain,
        blockchain_discovery: chain,
        stake_validation: chain,
        ..Features::default()
    }
}

/// A DNS name: dot-separated labels of letters, digits and `-` (not at a
/// label's start or end), optionally with a final dot.
pub(crate) fn is_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= MAX_HOST_LEN
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
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

/// Parses a server or default server written as an address: `IP:port`,
/// `[v6]:port` or a URL `https://IP:port` (see
/// [`crate::config::parse_server`]). Names are taken before this.
fn server_addr(text: &str) -> Result<SocketAddr, String> {
    match crate::config::parse_server(text) {
        Ok(crate::config::ServerTarget::Address(addr)) => Ok(addr),
        // Names with a port are taken before (`server_name`): only port 0 is left.
        Ok(crate::config::ServerTarget::Name { host, port }) => Err(format!(
            "{host}:{port}: port 0 is not allowed for a server; expected a port from 1 to 65535"
        )),
        Err(problem) => Err(format!(
            "invalid server {text:?}: {problem}; expected IP:port, [IPv6]:port, name:port or https://host[:port]"
        )),
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

/// The gid of the group called `name` (`getgrnam_r`), if there is one.
fn gid_of_group(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buffer = vec![0_u8; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid value to be overwritten.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buffer.len()` is its
    // size; on success `found` points at `group`, whose strings live in `buffer`.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &raw mut group,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &raw mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(group.gr_gid)
}
