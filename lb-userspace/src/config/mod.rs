//! The YAML configuration file: loading, defaults and validation.
//!
//! [`Config::load`] reads the file, [`Config::from_yaml`] parses and checks
//! text. Everything is validated here, before anything touches the kernel.
//! Every error names the file, the line and column, and the field path in
//! the form `services[1].servers[0]`, for example
//!
//! ```text
//! config.yaml:12:10: services[1].vip: duplicate VIP 127.0.0.1:6444/tcp, already used by services[0] (line 4)
//! ```
//!
//! All semantic errors are reported together, one per line. YAML syntax and
//! type errors stop the parser, so only the first one is reported.
//!
//! The work is done in three private steps:
//!
//! - `raw`: the file is read into private "raw" structs that keep every value
//!   as written together with its position
//!   ([`Spanned`](serde_saphyr::Spanned)); a parser error becomes one issue;
//! - `field_path`: finds the field path (`services[1].vip`) a parser error
//!   points at, which serde-saphyr does not report;
//! - `validate`: checks the raw values and turns them into the public types,
//!   collecting every problem it finds.

mod field_path;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::{
    fmt, fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Serialize, Serializer};
use serde_saphyr::Location;

use self::{raw::parse_raw, validate::Checker};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Directory under the BPF filesystem where maps and links are pinned.
    pub bpffs_dir: PathBuf,
    /// cgroup v2 directory the programs are attached to; `None` means the
    /// first cgroup2 mount (resolved by the loader).
    pub cgroup: Option<PathBuf>,
    /// Directory for state that must survive restarts.
    pub data_dir: PathBuf,
    /// Listen address of the Prometheus `/metrics` endpoint.
    pub metrics_addr: SocketAddr,
    /// Listen address of the `GET /status` API.
    pub api_addr: SocketAddr,
    /// The balanced services; may be empty.
    pub services: Vec<ServiceConfig>,
}

/// One virtual address (VIP) and the servers connections to it are sent to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceConfig {
    /// Unique name, `[A-Za-z0-9._-]{1,63}`; used as Prometheus label value
    /// and on the command line.
    pub name: String,
    /// The address clients connect to.
    pub vip: SocketAddr,
    /// Transport protocol of the VIP and its servers.
    pub protocol: Protocol,
    /// The real servers, all of the VIP's address family. May be empty: the
    /// service then refuses every connect (unless `default_server` is set).
    pub servers: Vec<SocketAddr>,
    /// Server used as a last resort when no server is healthy.
    pub default_server: Option<SocketAddr>,
    /// How servers are checked.
    pub health_check: HealthCheckConfig,
}

/// Transport protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

/// Health checking of a service's servers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckConfig {
    /// How a server is probed.
    pub kind: HealthCheckKind,
    /// Time between two probes of one server.
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    /// How long one probe may take.
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
}

/// How a server is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP connect must succeed.
    Tcp,
    /// A UDP probe must not be refused.
    Udp,
}

impl Config {
    /// Default for `bpffs_dir`.
    pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/daas-lb";
    /// Default for `data_dir`.
    pub const DEFAULT_DATA_DIR: &str = "/var/lib/daas-lb";
    /// Default for `metrics_addr`.
    pub const DEFAULT_METRICS_ADDR: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));
    /// Default for `api_addr`.
    pub const DEFAULT_API_ADDR: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9465));
    /// Most services one configuration may hold (the kernel map's capacity).
    pub const MAX_SERVICES: usize = lb_common::MAX_SERVICES as usize;
    /// Most distinct (service, server) pairs in total, `default_server`
    /// included (backend id 0 means "no backend").
    pub const MAX_BACKENDS: usize = lb_common::MAX_BACKENDS as usize - 1;

    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config = Self::from_yaml(&text, &path.display().to_string())?;
        tracing::debug!(
            path = %path.display(),
            services = config.services.len(),
            "configuration loaded"
        );
        Ok(config)
    }

    /// Parses and validates configuration text; `origin` (usually the file
    /// name) starts every error message.
    pub fn from_yaml(text: &str, origin: &str) -> anyhow::Result<Self> {
        let raw = parse_raw(text).map_err(|issue| anyhow!("{}", issue.render(origin)))?;
        let mut checker = Checker::default();
        let config = checker.config(&raw);
        match config {
            Some(config) if checker.issues.is_empty() => {
                warn_about_unreachable_services(&config);
                Ok(config)
            }
            _ => Err(anyhow!("{}", checker.render(origin))),
        }
    }
}

impl Protocol {
    /// The IP protocol number (`IPPROTO_TCP` or `IPPROTO_UDP`).
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::PROTO_TCP,
            Self::Udp => lb_common::PROTO_UDP,
        }
    }

    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(format!("unknown protocol {text:?}; expected tcp or udp")),
        }
    }
}

impl HealthCheckConfig {
    /// Default `interval`.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    /// Default `timeout` (or `interval`, if that is shorter).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    /// Shortest accepted `interval`.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

    /// The health check used when a service has no `health_check` block.
    pub const fn default_for(protocol: Protocol) -> Self {
        Self {
            kind: HealthCheckKind::default_for(protocol),
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

impl HealthCheckKind {
    /// The kind used when `health_check.kind` is not given.
    pub const fn default_for(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Tcp => Self::Tcp,
            Protocol::Udp => Self::Udp,
        }
    }

    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for HealthCheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HealthCheckKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(format!(
                "unknown health check kind {text:?}; expected tcp or udp"
            )),
        }
    }
}

/// Shows durations the way they are written in the file ("1s", "500ms").
fn serialize_duration<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

/// Logs services that accept connects only to refuse them.
fn warn_about_unreachable_services(config: &Config) {
    for service in &config.services {
        if service.servers.is_empty() && service.default_server.is_none() {
            tracing::warn!(
                service = %service.name,
                vip = %service.vip,
                "service has no servers and no default_server: every connect will be refused"
            );
        }
    }
}

/// One problem in the file, found by the parser or by validation.
struct Issue {
    location: Location,
    /// Field path such as `services[1].servers[0]`; empty when unknown.
    path: String,
    message: String,
}

impl Issue {
    /// `origin:line:column: path: message`, leaving out what is unknown.
    fn render(&self, origin: &str) -> String {
        let position = match (self.location.line(), self.location.column()) {
            (0, _) => String::new(),
            (line, 0) => format!(":{line}"),
            (line, column) => format!(":{line}:{column}"),
        };
        if self.path.is_empty() {
            format!("{origin}{position}: {}", self.message)
        } else {
            format!("{origin}{position}: {}: {}", self.path, self.message)
        }
    }
}
