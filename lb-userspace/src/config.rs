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
//! The file is read into private "raw" structs that keep every value as
//! written together with its position ([`Spanned`]); the checks below then
//! turn them into the public types.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    fmt, fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use serde_saphyr::{
    DuplicateKeyPolicy, Localizer, Location, MessageFormatter, SnippetMode, Spanned,
    UserMessageFormatter,
};

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

// ---------------------------------------------------------------------------
// The file as written.
// ---------------------------------------------------------------------------

/// Top level of the file. Scalars are read as strings and converted by
/// [`Checker`], so that bad values are reported with their path and all
/// together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    bpffs_dir: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    metrics_addr: Option<Spanned<String>>,
    api_addr: Option<Spanned<String>>,
    services: Option<Spanned<Vec<Spanned<RawService>>>>,
}

/// One entry of `services`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<Spanned<String>>,
    vip: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    servers: Option<Spanned<Vec<Spanned<String>>>>,
    default_server: Option<Spanned<String>>,
    health_check: Option<Spanned<RawHealthCheck>>,
}

/// A service's `health_check` block.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    kind: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------
// Error reporting.
// ---------------------------------------------------------------------------

/// One problem in the file.
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

/// Turns a parser error into an [`Issue`] with the path of the node it
/// points at.
fn parse_raw(text: &str) -> Result<Spanned<RawConfig>, Issue> {
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options(text, options).map_err(|error| {
        let location = error.location().unwrap_or(Location::UNKNOWN);
        let path = field_path_at(text, location).or_else(|| {
            // A value of the wrong shape followed by a syntax error
            // (`vip: [::1]:6444`): the text before the value is still valid
            // YAML and ends with the value's key.
            let wrong_shape = matches!(error, serde_saphyr::Error::Unexpected { .. });
            let offset = usize::try_from(location.span().byte_offset()?).ok()?;
            field_path_at(text.get(..offset).filter(|_| wrong_shape)?, location)
        });
        Issue {
            location,
            path: path.unwrap_or_default(),
            message: error.render_with_options(serde_saphyr::render_options! {
                formatter: &ParseErrorFormatter,
                snippets: SnippetMode::Off,
            }),
        }
    })
}

/// serde-saphyr's user-facing messages, without its "at line X, column Y"
/// suffix (the position is printed in front instead) and with friendlier
/// words for the structural errors.
struct ParseErrorFormatter;

impl MessageFormatter for ParseErrorFormatter {
    fn localizer(&self) -> &dyn Localizer {
        &NoLocationSuffix
    }

    fn format_message<'a>(&self, error: &'a serde_saphyr::Error) -> Cow<'a, str> {
        match error {
            serde_saphyr::Error::Unexpected {
                expected: "sequence start",
                ..
            } => Cow::Borrowed("expected a list"),
            serde_saphyr::Error::Unexpected {
                expected: "mapping start",
                ..
            } => Cow::Borrowed("expected a mapping (`key: value` lines)"),
            serde_saphyr::Error::Unexpected {
                expected: "string scalar",
                ..
            } => Cow::Borrowed(
                "expected a single value, not a list or mapping (quote values that start with [ or {, e.g. \"[::1]:6444\")",
            ),
            _ => UserMessageFormatter.format_message(error),
        }
    }
}

/// A [`Localizer`] that leaves positions out of messages.
struct NoLocationSuffix;

impl Localizer for NoLocationSuffix {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _location: Location) -> Cow<'a, str> {
        base
    }
}

/// The path (`services[1].vip`) of the last node starting at or before
/// `target`, found by parsing `text` again into a [`Node`] tree. `None`
/// when the text is not valid YAML or the position is unknown.
fn field_path_at(text: &str, target: Location) -> Option<String> {
    if target.line() == 0 {
        return None;
    }
    let options = serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
    };
    let root: Node = serde_saphyr::from_str_with_options(text, options).ok()?;
    let mut best = None;
    root.find((target.line(), target.column()), "", &mut best);
    best
}

/// The shape of a YAML document with the position of every key and value.
enum Node {
    Map(Vec<(Spanned<String>, Spanned<Self>)>),
    Seq(Vec<Spanned<Self>>),
    Scalar,
}

impl Node {
    /// Walks the tree in document order, remembering in `best` the path of
    /// the last key or value that starts at or before `target`.
    fn find(&self, target: (u64, u64), path: &str, best: &mut Option<String>) {
        let starts_before = |location: &Location| (location.line(), location.column()) <= target;
        match self {
            Self::Map(entries) => {
                for (key, value) in entries {
                    let child = if path.is_empty() {
                        key.value.clone()
                    } else {
                        format!("{path}.{}", key.value)
                    };
                    if starts_before(&key.referenced) || starts_before(&value.referenced) {
                        *best = Some(child.clone());
                    }
                    value.value.find(target, &child, best);
                }
            }
            Self::Seq(items) => {
                for (index, item) in items.iter().enumerate() {
                    let child = format!("{path}[{index}]");
                    if starts_before(&item.referenced) {
                        *best = Some(child.clone());
                    }
                    item.value.find(target, &child, best);
                }
            }
            Self::Scalar => {}
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Builds a [`Node`] from any YAML value.
struct NodeVisitor;

impl<'de> de::Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

// ---------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------

/// Longest service name.
const MAX_NAME_LEN: usize = 63;

/// Collects every problem found while turning the raw file into a
/// [`Config`].
#[derive(Default)]
struct Checker {
    issues: Vec<Issue>,
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
    fn render(&mut self, origin: &str) -> String {
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

    fn config(&mut self, raw: &Spanned<RawConfig>) -> Option<Config> {
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
            self.report(
                api.referenced,
                "api_addr",
                format!(
                    "{} is also metrics_addr; the two endpoints need different addresses",
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

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    const EXAMPLE: &str = "\
bpffs_dir: /sys/fs/bpf/daas-lb
cgroup: /sys/fs/cgroup/unified
data_dir: /var/lib/daas-lb
metrics_addr: 127.0.0.1:9464
api_addr: 127.0.0.1:9465
services:
  - name: supervisor
    vip: 127.0.0.1:6444
    protocol: tcp
    servers: [\"10.0.0.1:9345\", \"10.0.0.2:9345\"]
    default_server: \"10.0.0.1:9345\"
    health_check: { kind: tcp, interval: 1s, timeout: 500ms }
";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn parse(yaml: &str) -> Config {
        match Config::from_yaml(yaml, "test.yaml") {
            Ok(config) => config,
            Err(error) => panic!("unexpected error:\n{error:#}"),
        }
    }

    fn error(yaml: &str) -> String {
        match Config::from_yaml(yaml, "test.yaml") {
            Ok(config) => panic!("expected an error, got {config:#?}"),
            Err(error) => format!("{error:#}"),
        }
    }

    /// Asserts that one line of the error for `yaml` names `path` at `line`
    /// and contains `text`.
    #[track_caller]
    fn assert_error(yaml: &str, path: &str, line: u64, text: &str) {
        let error = error(yaml);
        let prefix = format!("test.yaml:{line}:");
        let found = error.lines().any(|message| {
            message.starts_with(&prefix)
                && message.contains(&format!(" {path}: "))
                && message.contains(text)
        });
        assert!(
            found,
            "no line with {prefix:?}, {path:?} and {text:?} in:\n{error}"
        );
    }

    /// One valid service (lines 1-4) followed by `rest`.
    fn with_service(rest: &str) -> String {
        format!(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: [\"10.0.0.1:80\"]\n{rest}"
        )
    }

    #[test]
    fn full_example() {
        let config = parse(EXAMPLE);
        assert_eq!(
            config,
            Config {
                bpffs_dir: PathBuf::from("/sys/fs/bpf/daas-lb"),
                cgroup: Some(PathBuf::from("/sys/fs/cgroup/unified")),
                data_dir: PathBuf::from("/var/lib/daas-lb"),
                metrics_addr: addr("127.0.0.1:9464"),
                api_addr: addr("127.0.0.1:9465"),
                services: vec![ServiceConfig {
                    name: "supervisor".to_owned(),
                    vip: addr("127.0.0.1:6444"),
                    protocol: Protocol::Tcp,
                    servers: vec![addr("10.0.0.1:9345"), addr("10.0.0.2:9345")],
                    default_server: Some(addr("10.0.0.1:9345")),
                    health_check: HealthCheckConfig {
                        kind: HealthCheckKind::Tcp,
                        interval: Duration::from_secs(1),
                        timeout: Duration::from_millis(500),
                    },
                }],
            }
        );
    }

    #[test]
    fn defaults() {
        let config = parse(
            "services:\n  - name: dns\n    vip: 10.96.0.10:53\n    protocol: udp\n    servers: []\n",
        );
        assert_eq!(config.bpffs_dir, Path::new(Config::DEFAULT_BPFFS_DIR));
        assert_eq!(config.cgroup, None);
        assert_eq!(config.data_dir, Path::new(Config::DEFAULT_DATA_DIR));
        assert_eq!(config.metrics_addr, addr("127.0.0.1:9464"));
        assert_eq!(config.api_addr, addr("127.0.0.1:9465"));
        let service = &config.services[0];
        assert_eq!(service.protocol, Protocol::Udp);
        assert!(service.servers.is_empty());
        assert_eq!(service.default_server, None);
        assert_eq!(
            service.health_check,
            HealthCheckConfig {
                kind: HealthCheckKind::Udp,
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
            }
        );

        let config = parse(&with_service(""));
        assert_eq!(config.services[0].protocol, Protocol::Tcp);
        assert_eq!(
            config.services[0].health_check,
            HealthCheckConfig::default_for(Protocol::Tcp)
        );
        assert_eq!(config.services[0].health_check.kind, HealthCheckKind::Tcp);
    }

    #[test]
    fn partial_health_check_block() {
        let config = parse(&with_service("    health_check: { interval: 200ms }\n"));
        let check = &config.services[0].health_check;
        assert_eq!(check.kind, HealthCheckKind::Tcp);
        assert_eq!(check.interval, Duration::from_millis(200));
        // The default timeout (1s) is shortened to the interval.
        assert_eq!(check.timeout, Duration::from_millis(200));

        let config = parse(&with_service("    health_check: { timeout: 3s }\n"));
        assert_eq!(
            config.services[0].health_check.interval,
            Duration::from_secs(5)
        );
        assert_eq!(
            config.services[0].health_check.timeout,
            Duration::from_secs(3)
        );

        // A udp service may be checked with tcp connects.
        let config = parse(
            "services:\n  - name: a\n    vip: 127.0.0.1:53\n    protocol: udp\n    servers: []\n    health_check: { kind: tcp }\n",
        );
        assert_eq!(config.services[0].health_check.kind, HealthCheckKind::Tcp);
    }

    #[test]
    fn empty_services() {
        assert!(parse("services: []\n").services.is_empty());
    }

    #[test]
    fn ipv6() {
        let config = parse(
            "services:\n  - name: v6\n    vip: \"[::1]:6444\"\n    servers: [\"[fd00::1]:9345\"]\n    default_server: \"[fd00::2]:9345\"\n",
        );
        let service = &config.services[0];
        assert_eq!(service.vip, addr("[::1]:6444"));
        assert_eq!(service.servers, vec![addr("[fd00::1]:9345")]);
        assert_eq!(service.default_server, Some(addr("[fd00::2]:9345")));
    }

    #[test]
    fn same_vip_with_tcp_and_udp() {
        let config = parse(
            "services:\n  - name: dns-tcp\n    vip: 127.0.0.1:53\n    servers: [\"10.0.0.1:53\"]\n  - name: dns-udp\n    vip: 127.0.0.1:53\n    protocol: udp\n    servers: [\"10.0.0.1:53\"]\n",
        );
        assert_eq!(config.services.len(), 2);
    }

    #[test]
    fn protocol_and_kind_strings() {
        assert_eq!(Protocol::Tcp.to_string(), "tcp");
        assert_eq!(Protocol::Udp.to_string(), "udp");
        assert_eq!(Protocol::Tcp.number(), 6);
        assert_eq!(Protocol::Udp.number(), 17);
        assert_eq!("udp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert!("sctp".parse::<Protocol>().is_err());
        assert_eq!(HealthCheckKind::Udp.to_string(), "udp");
        assert_eq!("tcp".parse::<HealthCheckKind>(), Ok(HealthCheckKind::Tcp));
    }

    #[test]
    fn serializes_for_status() {
        let json = serde_json::to_value(parse(EXAMPLE)).unwrap();
        let service = &json["services"][0];
        assert_eq!(service["protocol"], "tcp");
        assert_eq!(service["vip"], "127.0.0.1:6444");
        assert_eq!(service["health_check"]["kind"], "tcp");
        assert_eq!(service["health_check"]["interval"], "1s");
        assert_eq!(service["health_check"]["timeout"], "500ms");
    }

    #[test]
    fn load_reads_file_and_names_missing_file() {
        let dir = std::env::temp_dir().join(format!("daas-lb-config-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(Config::load(&path).unwrap(), parse(EXAMPLE));

        fs::write(&path, "services: []\nbogus: 1\n").unwrap();
        let error = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(
            error.starts_with(&format!("{}:2:1: bogus: ", path.display())),
            "{error}"
        );

        let missing = dir.join("missing.yaml");
        let error = format!("{:#}", Config::load(&missing).unwrap_err());
        assert!(error.contains(&missing.display().to_string()), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_fields() {
        assert_error(
            "services: []\nmetrics: 1\n",
            "metrics",
            2,
            "unknown field `metrics`",
        );
        assert_error("services: []\nmetrics: 1\n", "metrics", 2, "metrics_addr");
        assert_error(
            &with_service("    weight: 3\n"),
            "services[0].weight",
            5,
            "unknown field `weight`",
        );
        assert_error(
            &with_service("    health_check:\n      kind: tcp\n      retries: 3\n"),
            "services[0].health_check.retries",
            7,
            "expected one of kind, interval, timeout",
        );
    }

    #[test]
    fn syntax_and_type_errors() {
        assert_error("services: 5\n", "services", 1, "expected a list");
        // Unquoted IPv6: a flow list followed by a syntax error.
        assert_error(
            "services:\n  - name: a\n    vip: [::1]:6444\n    servers: []\n",
            "services[0].vip",
            3,
            "quote values that start with [",
        );
        assert_error(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: [\"10.0.0.1:80\", {a: b}]\n",
            "services[0].servers[1]",
            4,
            "expected a single value",
        );
        assert_error("services:\n  - 5\n", "services[0]", 2, "mapping");
        let message = error("services: [\n");
        assert!(
            message.starts_with("test.yaml:1:11: unclosed bracket"),
            "{message}"
        );
        let message = error("services: []\nservices: []\n");
        assert!(
            message.starts_with("test.yaml:2:1: services: duplicate"),
            "{message}"
        );
    }

    #[test]
    fn missing_fields() {
        assert_error(
            "bpffs_dir: /x\n",
            "services",
            1,
            "missing required field `services`",
        );
        assert_error(
            "services:\n  - vip: 127.0.0.1:80\n    servers: []\n",
            "services[0]",
            2,
            "`name`",
        );
        assert_error(
            "services:\n  - name: a\n    servers: []\n",
            "services[0]",
            2,
            "`vip`",
        );
        assert_error(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n",
            "services[0]",
            2,
            "`servers`",
        );
    }

    #[test]
    fn bad_addresses() {
        let vip =
            |vip: &str| format!("services:\n  - name: a\n    vip: \"{vip}\"\n    servers: []\n");
        assert_error(
            &vip("localhost:80"),
            "services[0].vip",
            3,
            "host names are not resolved",
        );
        assert_error(&vip("127.0.0.1"), "services[0].vip", 3, "port is missing");
        assert_error(&vip("::1:80"), "services[0].vip", 3, "brackets");
        assert_error(&vip("fe80::1%eth0:80"), "services[0].vip", 3, "brackets");
        assert_error(
            &vip("127.0.0.1:99999"),
            "services[0].vip",
            3,
            "not a port number",
        );
        assert_error(&vip("127.0.0.1:0"), "services[0].vip", 3, "port 0");
        assert_error(&vip("0.0.0.0:80"), "services[0].vip", 3, "unspecified");
        assert_error(&vip("[::]:80"), "services[0].vip", 3, "unspecified");
        assert_error(&vip("224.0.0.1:80"), "services[0].vip", 3, "multicast");
        assert_error(
            &vip("[::ffff:1.2.3.4]:80"),
            "services[0].vip",
            3,
            "write it as IPv4: 1.2.3.4:80",
        );

        assert_error(
            &with_service("    default_server: 10.0.0.9:0\n"),
            "services[0].default_server",
            5,
            "port 0",
        );
        assert_error(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers:\n      - 10.0.0.1:80\n      - 0.0.0.0:80\n",
            "services[0].servers[1]",
            6,
            "unspecified",
        );
        assert_error(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: [\"ff02::1:80\"]\n",
            "services[0].servers[0]",
            4,
            "brackets",
        );
        assert_error(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: [\"[ff02::1]:80\"]\n",
            "services[0].servers[0]",
            4,
            "multicast",
        );
        assert_error(
            "services: []\nmetrics_addr: example.com:9464\n",
            "metrics_addr",
            2,
            "host names are not resolved",
        );
        assert_error(
            "services: []\napi_addr: 9465\n",
            "api_addr",
            2,
            "expected a literal IP:port",
        );
        assert_error(
            "services: []\nmetrics_addr: 127.0.0.1:9000\napi_addr: 127.0.0.1:9000\n",
            "api_addr",
            3,
            "also metrics_addr",
        );
        // Listen addresses may use any address and port 0.
        let config = parse("services: []\nmetrics_addr: 0.0.0.0:0\napi_addr: \"[::]:0\"\n");
        assert_eq!(config.api_addr, addr("[::]:0"));
    }

    #[test]
    fn bad_names() {
        let name = |name: &str| {
            format!("services:\n  - name: \"{name}\"\n    vip: 127.0.0.1:80\n    servers: []\n")
        };
        assert_error(&name(""), "services[0].name", 2, "must not be empty");
        assert_error(&name("a b"), "services[0].name", 2, "A-Z a-z 0-9 . _ -");
        assert_error(
            &name("grüße"),
            "services[0].name",
            2,
            "invalid service name",
        );
        assert_error(
            &name(&"x".repeat(64)),
            "services[0].name",
            2,
            "1 to 63 characters",
        );
        parse(&name(&"x".repeat(63)));
        parse(&name("Kube-API_server.1"));
        assert_error(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: []\n  - name: a\n    vip: 127.0.0.1:81\n    servers: []\n",
            "services[1].name",
            5,
            "duplicate service name \"a\", already used by services[0] (line 2)",
        );
    }

    #[test]
    fn duplicate_vip() {
        assert_error(
            "services:\n  - name: a\n    vip: 127.0.0.1:6444\n    servers: []\n  - name: b\n    vip: 127.0.0.1:6444\n    protocol: tcp\n    servers: []\n",
            "services[1].vip",
            6,
            "duplicate VIP 127.0.0.1:6444/tcp, already used by services[0] (line 3)",
        );
    }

    #[test]
    fn family_mismatch() {
        assert_error(
            &with_service("    default_server: \"[::1]:80\"\n"),
            "services[0].default_server",
            5,
            "VIP is IPv4, default_server is IPv6",
        );
        assert_error(
            "services:\n  - name: a\n    vip: \"[::1]:80\"\n    servers: [\"10.0.0.1:80\"]\n",
            "services[0].servers[0]",
            4,
            "VIP is IPv6, server is IPv4",
        );
    }

    #[test]
    fn duplicate_server() {
        assert_error(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers:\n      - 10.0.0.1:80\n      - 10.0.0.1:80\n",
            "services[0].servers[1]",
            6,
            "duplicate server 10.0.0.1:80, already listed as services[0].servers[0] (line 5)",
        );
    }

    #[test]
    fn forwarding_loop() {
        assert_error(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    servers: []\n  - name: b\n    vip: 127.0.0.1:81\n    servers: [\"127.0.0.1:80\"]\n",
            "services[1].servers[0]",
            7,
            "forwarding loop: 127.0.0.1:80/tcp is the VIP of services[0] (line 3)",
        );
        assert_error(
            &with_service("    default_server: 127.0.0.1:80\n"),
            "services[0].default_server",
            5,
            "forwarding loop",
        );
        // Another protocol's VIP is not a loop.
        parse(
            "services:\n  - name: a\n    vip: 127.0.0.1:80\n    protocol: udp\n    servers: []\n  - name: b\n    vip: 127.0.0.1:81\n    servers: [\"127.0.0.1:80\"]\n",
        );
    }

    #[test]
    fn bad_protocol_and_kind() {
        assert_error(
            &with_service("    protocol: sctp\n"),
            "services[0].protocol",
            5,
            "expected tcp or udp",
        );
        assert_error(
            &with_service("    protocol: TCP\n"),
            "services[0].protocol",
            5,
            "expected tcp or udp",
        );
        assert_error(
            &with_service("    health_check:\n      kind: http\n"),
            "services[0].health_check.kind",
            6,
            "expected tcp or udp",
        );
        assert_error(
            &with_service("    health_check: { kind: udp }\n"),
            "services[0].health_check.kind",
            5,
            "kind udp cannot check a tcp service",
        );
    }

    #[test]
    fn bad_durations() {
        let check = |block: &str| with_service(&format!("    health_check:\n{block}"));
        assert_error(
            &check("      interval: 0s\n"),
            "services[0].health_check.interval",
            6,
            "must not be zero",
        );
        assert_error(
            &check("      timeout: 0ms\n"),
            "services[0].health_check.timeout",
            6,
            "must not be zero",
        );
        assert_error(
            &check("      interval: 5ms\n"),
            "services[0].health_check.interval",
            6,
            "at least 10ms",
        );
        assert_error(
            &check("      interval: 5\n"),
            "services[0].health_check.interval",
            6,
            "invalid duration",
        );
        assert_error(
            &check("      interval: soon\n"),
            "services[0].health_check.interval",
            6,
            "expected e.g. 1s",
        );
        assert_error(
            &check("      interval: 1s\n      timeout: 2s\n"),
            "services[0].health_check.timeout",
            7,
            "timeout 2s is longer than interval 1s",
        );
        assert_error(
            &check("      timeout: 6s\n"),
            "services[0].health_check.timeout",
            6,
            "longer than interval 5s",
        );
        parse(&check("      interval: 10ms\n      timeout: 10ms\n"));
        parse(&check("      interval: 1m\n      timeout: 1m\n"));
    }

    #[test]
    fn relative_paths() {
        assert_error(
            "bpffs_dir: bpf\nservices: []\n",
            "bpffs_dir",
            1,
            "not an absolute path",
        );
        assert_error(
            "services: []\ncgroup: ./cg\n",
            "cgroup",
            2,
            "not an absolute path",
        );
        assert_error(
            "services: []\ndata_dir: \"\"\n",
            "data_dir",
            2,
            "not an absolute path",
        );
    }

    /// `count` services, each with `servers_each` servers (the same ones).
    fn many_services(count: usize, servers_each: usize) -> String {
        let mut yaml = String::from("services:\n");
        for index in 0..count {
            let (high, low) = (index / 256, index % 256);
            write!(
                yaml,
                "  - name: s{index}\n    vip: 10.1.{high}.{low}:80\n    servers: ["
            )
            .unwrap();
            for server in 0..servers_each {
                write!(yaml, "\"10.2.{}.{}:80\",", server / 256, server % 256).unwrap();
            }
            yaml.push_str("]\n");
        }
        yaml
    }

    #[test]
    fn capacity_limits() {
        assert_eq!(parse(&many_services(1024, 0)).services.len(), 1024);
        assert_error(
            &many_services(1025, 0),
            "services",
            2,
            "too many services: 1025; at most 1024",
        );

        // 4095 backends fit, 4096 do not; a default_server counts unless it is also a server.
        assert_eq!(parse(&many_services(5, 819)).services.len(), 5);
        let mut yaml = many_services(5, 819);
        yaml.push_str("    default_server: \"10.2.0.0:80\"\n");
        parse(&yaml);
        yaml.push_str("  - name: extra\n    vip: 10.3.0.1:80\n    servers: []\n    default_server: \"10.2.0.0:80\"\n");
        assert_error(&yaml, "services", 2, "too many backends: 4096");
    }

    #[test]
    fn several_errors_together() {
        let yaml = "\
bpffs_dir: relative
services:
  - name: a
    vip: 127.0.0.1:80
    servers: [\"[::1]:80\"]
  - name: a
    vip: 127.0.0.1:80
    servers: []
    health_check: { interval: 0s }
";
        let error = error(yaml);
        let lines: Vec<&str> = error.lines().collect();
        assert_eq!(lines.len(), 5, "{error}");
        assert!(
            lines[0].starts_with("test.yaml:1:12: bpffs_dir: "),
            "{error}"
        );
        assert!(
            lines[1].starts_with("test.yaml:5:15: services[0].servers[0]: "),
            "{error}"
        );
        assert!(
            lines[2].starts_with("test.yaml:6:11: services[1].name: "),
            "{error}"
        );
        assert!(
            lines[3].starts_with("test.yaml:7:10: services[1].vip: "),
            "{error}"
        );
        assert!(
            lines[4].starts_with("test.yaml:9:31: services[1].health_check.interval: "),
            "{error}"
        );
    }
}
