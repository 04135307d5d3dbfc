//! Semantic validation: turns the raw file into a [`Config`], collecting
//! every problem with its position and field path.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use serde_saphyr::{Location, Spanned};

use super::{
    ChainPort, ChainPortKind, ChainSettings, CheckSpec, Config, ControlGroup, DiscoveryConfig,
    DiscoveryPort, Features, HealthCheckConfig, HttpCheck, Intervals, Issue, MAX_BASIS_POINTS,
    MIST_PER_SUI, NautilusCheck, Policy, PortRange, Protocol, RegistrySettings, ServiceConfig,
    StakeWeight, SuiSyncCheck, TlsOptions, XdpAttachMode, XdpSettings, is_prime,
    raw::{
        RawChain, RawConfig, RawDiscovery, RawDiscoveryPort, RawFeatures, RawHealthCheck,
        RawHttpFields, RawIntervals, RawNautilusFields, RawRegistry, RawService, RawSuiFields,
        RawXdp,
    },
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
    /// Every `kind: sui_sync` seen so far: its path and position.
    sui_sync_kinds: Vec<(String, Location)>,
    /// Every `kind: nautilus` seen so far: its path and position.
    nautilus_kinds: Vec<(String, Location)>,
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
    /// Without a position when not written (the default).
    policy: Option<Spanned<Policy>>,
    /// Without a position when not written (the default).
    maglev_table_size: Option<Spanned<u32>>,
    health_check: Option<HealthCheckConfig>,
    /// Without a position when not written (the default).
    remote: Option<Spanned<bool>>,
    /// `Some(None)` without `discovery`; `None` when invalid.
    #[expect(
        clippy::option_option,
        reason = "like the other fields: None = invalid, then the value"
    )]
    discovery: Option<Option<DiscoveryConfig>>,
    /// The `discovery` block's position, when written.
    discovery_at: Option<Location>,
    /// The `kind: sui_sync` of its health check (path and position).
    sui_sync_kinds: Vec<(String, Location)>,
    /// The `kind: nautilus` of its health check (path and position).
    nautilus_kinds: Vec<(String, Location)>,
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
            policy: self.policy?.value,
            maglev_table_size: self.maglev_table_size?.value,
            health_check: self.health_check?,
            remote: self.remote?.value,
            discovery: self.discovery?,
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

        let services = self.required(
            top.services.as_ref(),
            raw.referenced,
            "services",
            "services",
            "; write `services: []` to balance nothing",
        )?;
        let drafts: Vec<ServiceDraft> = services
            .value
            .iter()
            .enumerate()
            .map(|(index, service)| self.service(index, service))
            .collect();
        self.cross_check(services.referenced, &drafts);
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
            max_concurrent_checks: max_concurrent_checks?,
            connection_poll_interval: connection_poll_interval?,
            xdp: xdp?,
            chain: chain?,
            features: features?,
        })
    }

    /// The `features` block; `chain`: whether there is a `chain` block.
    fn features(&mut self, raw: &Spanned<RawFeatures>, chain: bool) -> Option<Features> {
        let features = &raw.value;
        let mut ok = true;
        let mut flag = |this: &mut Self, field: &Option<Spanned<String>>, name: &str, default| {
            let path = format!("features.{name}");
            match field {
                None => Some((default, None)),
                Some(value) => this
                    .boolean(value, &path)
                    .map(|on| (on, Some(value.referenced))),
            }
            .or_else(|| {
                ok = false;
                None
            })
        };
        let nautilus = flag(
            self,
            &features.nautilus_health_checks,
            "nautilus_health_checks",
            chain,
        );
        let discovery = flag(
            self,
            &features.blockchain_discovery,
            "blockchain_discovery",
            chain,
        );
        let stake = flag(self, &features.stake_validation, "stake_validation", chain);
        let ranking = flag(
            self,
            &features.performance_ranking,
            "performance_ranking",
            false,
        );
        let stake_weight = match &features.stake_weight {
            None => Some(StakeWeight::default()),
            Some(raw) => self.parse(raw, "features.stake_weight"),
        };
        for (flag, name, what) in [
            (
                discovery,
                "blockchain_discovery",
                "the Sui full node and registry to read",
            ),
            (
                nautilus,
                "nautilus_health_checks",
                "the full node the enclave objects are read from",
            ),
            (
                stake,
                "stake_validation",
                "the full node the on-chain stake is read from",
            ),
        ] {
            if let Some((true, Some(location))) = flag
                && !chain
            {
                self.report(
                    location,
                    &format!("features.{name}"),
                    format!("needs the top-level `chain` block ({what})"),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        Some(Features {
            nautilus_health_checks: nautilus?.0,
            blockchain_discovery: discovery?.0,
            stake_validation: stake?.0,
            performance_ranking: ranking?.0,
            stake_weight: stake_weight?,
        })
    }

    /// The `chain` block; `stake_off`: `features.stake_validation` is
    /// false.
    fn chain(&mut self, raw: &Spanned<RawChain>, stake_off: bool) -> Option<ChainSettings> {
        let chain = &raw.value;
        let sui_rpc_url = self
            .required(
                chain.sui_rpc_url.as_ref(),
                raw.referenced,
                "chain",
                "sui_rpc_url",
                ": the gRPC URL of the Sui full node the registry is read from, e.g. http://127.0.0.1:9000",
            )
            .and_then(|url| self.rpc_url(url, "chain.sui_rpc_url"));
        let reference_rpc_urls = match &chain.reference_rpc_urls {
            None => Some(Vec::new()),
            Some(list) => self.reference_rpc_urls(list),
        };
        let registry = self
            .required(
                chain.registry.as_ref(),
                raw.referenced,
                "chain",
                "registry",
                ": { package, module, object } of the on-chain node registry",
            )
            .and_then(|registry| self.registry(registry));
        let min_stake_mist = match &chain.min_stake_mist {
            None => Some(0),
            Some(raw) => {
                let mist = self.whole_number(raw, "chain.min_stake_mist", u64::MAX, |text| {
                    format!(
                        "invalid stake {text:?}; expected a whole number of MIST from 0 to {} (1 SUI = {MIST_PER_SUI} MIST)",
                        u64::MAX
                    )
                });
                match mist {
                    Some(mist) if mist > 0 && stake_off => {
                        self.report(
                            raw.referenced,
                            "chain.min_stake_mist",
                            format!(
                                "{mist} needs features.stake_validation, which is false; with it off no stake is enforced, so write 0 (or leave it out) or switch stake_validation on"
                            ),
                        );
                        None
                    }
                    mist => mist,
                }
            }
        };
        let discovery_interval = match &chain.discovery_interval {
            None => Some(ChainSettings::DEFAULT_DISCOVERY_INTERVAL),
            Some(raw) => self.discovery_interval(raw),
        };
        let enclave_config = match &chain.enclave_config {
            None => Some(None),
            Some(raw) => self.sui_address(raw, "chain.enclave_config").map(Some),
        };
        Some(ChainSettings {
            sui_rpc_url: sui_rpc_url?,
            reference_rpc_urls: reference_rpc_urls?,
            registry: registry?,
            min_stake_mist: min_stake_mist?,
            discovery_interval: discovery_interval?,
            enclave_config: enclave_config?,
        })
    }

    /// An `http://` or `https://` URL with a host (a Sui full node's gRPC).
    fn rpc_url(&mut self, raw: &Spanned<String>, path: &str) -> Option<String> {
        let text = raw.value.trim();
        let problem = match reqwest::Url::parse(text) {
            Err(error) => format!(
                "invalid URL {text:?}: {error}; expected the gRPC URL of a Sui full node, e.g. http://127.0.0.1:9000 or https://fullnode.mainnet.sui.io"
            ),
            Ok(url) if !matches!(url.scheme(), "http" | "https") => format!(
                "{text:?} is not an http or https URL; Sui full nodes serve gRPC over http(s) (JSON-RPC is not used)"
            ),
            Ok(url) if url.host_str().is_none_or(str::is_empty) => {
                format!("{text:?} has no host")
            }
            Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                format!("{text:?} has a query or fragment; gRPC URLs have neither")
            }
            Ok(_) => return Some(text.to_owned()),
        };
        self.report(raw.referenced, path, problem);
        None
    }

    /// `chain.reference_rpc_urls`: distinct URLs.
    fn reference_rpc_urls(&mut self, list: &Spanned<Vec<Spanned<String>>>) -> Option<Vec<String>> {
        let path = "chain.reference_rpc_urls";
        let mut urls: Vec<(String, Location)> = Vec::with_capacity(list.value.len());
        let mut valid = true;
        for (index, raw) in list.value.iter().enumerate() {
            let entry_path = format!("{path}[{index}]");
            let Some(url) = self.rpc_url(raw, &entry_path) else {
                valid = false;
                continue;
            };
            if let Some(first) = urls.iter().position(|(other, _)| *other == url) {
                self.report(
                    raw.referenced,
                    &entry_path,
                    format!(
                        "duplicate URL {url}, already listed as {path}[{first}] (line {})",
                        urls[first].1.line()
                    ),
                );
                valid = false;
            }
            urls.push((url, raw.referenced));
        }
        valid.then(|| urls.into_iter().map(|(url, _)| url).collect())
    }

    /// `chain.registry`.
    fn registry(&mut self, raw: &Spanned<RawRegistry>) -> Option<RegistrySettings> {
        let registry = &raw.value;
        let mut address = |field: Option<&Spanned<String>>, name: &str, what: &str| {
            self.required(
                field,
                raw.referenced,
                "chain.registry",
                name,
                &format!(": {what}"),
            )
            .and_then(|raw| self.sui_address(raw, &format!("chain.registry.{name}")))
        };
        let package = address(
            registry.package.as_ref(),
            "package",
            "the package that defines the registry's event types",
        );
        let object = address(
            registry.object.as_ref(),
            "object",
            "the id of the shared Registry object",
        );
        let module = match &registry.module {
            None => Some(RegistrySettings::DEFAULT_MODULE.to_owned()),
            Some(raw) => {
                let name = raw.value.trim();
                if name.parse::<sui_sdk_types::Identifier>().is_ok() {
                    Some(name.to_owned())
                } else {
                    self.report(
                        raw.referenced,
                        "chain.registry.module",
                        format!(
                            "invalid Move module name {name:?}; expected an identifier such as registry"
                        ),
                    );
                    None
                }
            }
        };
        Some(RegistrySettings {
            package: package?,
            module: module?,
            object: object?,
        })
    }

    /// A Sui address: `0x` and up to 64 hex digits.
    fn sui_address(&mut self, raw: &Spanned<String>, path: &str) -> Option<sui_sdk_types::Address> {
        let text = raw.value.trim();
        // Short forms (`0x2`) mean leading zeros.
        if text.starts_with("0x")
            && let Ok(address) = text.parse::<sui_sdk_types::Address>()
        {
            return Some(address);
        }
        self.report(
            raw.referenced,
            path,
            format!("invalid Sui address {text:?}; expected 0x followed by up to 64 hex digits"),
        );
        None
    }

    fn discovery_interval(&mut self, raw: &Spanned<String>) -> Option<Duration> {
        self.duration_in_range(
            raw,
            "chain.discovery_interval",
            MIN_DISCOVERY_INTERVAL,
            MAX_DISCOVERY_INTERVAL,
        )
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

    /// A service's `discovery` block.
    fn discovery(&mut self, raw: &Spanned<RawDiscovery>, path: &str) -> Option<DiscoveryConfig> {
        let discovery = &raw.value;
        let source = self
            .required(
                discovery.source.as_ref(),
                raw.referenced,
                path,
                "source",
                "; the only source is sui",
            )
            .and_then(|source| self.parse(source, &format!("{path}.source")));
        let port = self
            .required(
                discovery.port.as_ref(),
                raw.referenced,
                path,
                "port",
                ": the port of every discovered server, a number or { from_chain_id, kind }",
            )
            .and_then(|port| self.discovery_port(port, &format!("{path}.port")));
        Some(DiscoveryConfig {
            source: source?,
            port: port?,
        })
    }

    fn discovery_port(
        &mut self,
        raw: &Spanned<RawDiscoveryPort>,
        path: &str,
    ) -> Option<DiscoveryPort> {
        match &raw.value {
            RawDiscoveryPort::Number(text) => {
                let spanned = Spanned::new(text.clone(), raw.referenced, raw.defined);
                self.port(&spanned, path).map(DiscoveryPort::Fixed)
            }
            RawDiscoveryPort::Chain(chain) => {
                let chain_id = match self.required(
                    chain.from_chain_id.as_ref(),
                    raw.referenced,
                    path,
                    "from_chain_id",
                    ": the chain id the port is derived from",
                ) {
                    None => None,
                    Some(id) if id.value.trim().is_empty() => {
                        self.report(
                            id.referenced,
                            &format!("{path}.from_chain_id"),
                            "must not be empty".to_owned(),
                        );
                        None
                    }
                    Some(id) => Some(id.value.trim().to_owned()),
                };
                let kind = self
                    .required(
                        chain.kind.as_ref(),
                        raw.referenced,
                        path,
                        "kind",
                        ": p2p, rpc or grpc",
                    )
                    .and_then(|kind| self.parse::<ChainPortKind>(kind, &format!("{path}.kind")));
                Some(DiscoveryPort::Chain(ChainPort {
                    chain_id: chain_id?,
                    kind: kind?,
                }))
            }
        }
    }

    /// `discovery`, `kind: sui_sync` and `kind: nautilus` need the `chain`
    /// block; `sui_sync` and `nautilus` need `discovery` (they check what
    /// each discovered node registered); `nautilus` needs
    /// `chain.enclave_config` and `features.nautilus_health_checks`.
    fn check_discovery_needs(&mut self, drafts: &[ServiceDraft], context: ChainContext) {
        let ChainContext {
            chain,
            discovery_off: off,
            ..
        } = context;
        for draft in drafts {
            if let Some(location) = draft.discovery_at {
                if !chain {
                    self.report(
                        location,
                        &format!("{}.discovery", draft.path),
                        "`discovery` needs the top-level `chain` block (the Sui full node and registry to read)"
                            .to_owned(),
                    );
                } else if off {
                    self.report(
                        location,
                        &format!("{}.discovery", draft.path),
                        "`discovery` needs features.blockchain_discovery, which is false"
                            .to_owned(),
                    );
                }
            }
            for (path, location) in &draft.sui_sync_kinds {
                if !chain {
                    self.report(
                        *location,
                        path,
                        "kind sui_sync needs the top-level `chain` block (the reference full nodes)"
                            .to_owned(),
                    );
                } else if draft.discovery_at.is_none() {
                    self.report(
                        *location,
                        path,
                        "kind sui_sync needs the service's `discovery` block: it checks the full node each discovered server registered"
                            .to_owned(),
                    );
                }
            }
            for (path, location) in &draft.nautilus_kinds {
                self.check_nautilus_needs(path, *location, draft, context);
            }
        }
    }

    /// What a `kind: nautilus` at `path` needs besides its own fields.
    fn check_nautilus_needs(
        &mut self,
        path: &str,
        location: Location,
        draft: &ServiceDraft,
        context: ChainContext,
    ) {
        if !context.chain {
            self.report(
                location,
                path,
                "kind nautilus needs the top-level `chain` block (the full node the enclave objects are read from, and chain.enclave_config)"
                    .to_owned(),
            );
            return;
        }
        if !context.enclave_config {
            self.report(
                location,
                path,
                "kind nautilus needs chain.enclave_config: the EnclaveConfig object whose enclaves are trusted"
                    .to_owned(),
            );
        }
        if draft.discovery_at.is_none() {
            self.report(
                location,
                path,
                "kind nautilus needs the service's `discovery` block: it checks the enclave each discovered server registered (nautilus_url, enclave_id)"
                    .to_owned(),
            );
        }
        if context.nautilus_off {
            self.report(
                location,
                path,
                "kind nautilus needs features.nautilus_health_checks, which is false".to_owned(),
            );
        }
    }

    /// The `xdp` block.
    fn xdp(&mut self, raw: &Spanned<RawXdp>) -> Option<XdpSettings> {
        let xdp = &raw.value;
        let interfaces = self
            .required(
                xdp.interfaces.as_ref(),
                raw.referenced,
                "xdp",
                "interfaces",
                ": the interfaces remote clients' packets arrive on, e.g. [eth0]",
            )
            .and_then(|list| self.interfaces(list));
        let mode = match &xdp.mode {
            None => Some(XdpAttachMode::Auto),
            Some(raw) => self.parse(raw, "xdp.mode"),
        };
        let snat_ipv4 = match &xdp.snat_ipv4 {
            None => Some(None),
            Some(raw) => match self.snat_address(raw, "xdp.snat_ipv4", true)? {
                IpAddr::V4(v4) => Some(Some(v4)),
                IpAddr::V6(_) => None,
            },
        };
        let snat_ipv6 = match &xdp.snat_ipv6 {
            None => Some(None),
            Some(raw) => match self.snat_address(raw, "xdp.snat_ipv6", false)? {
                IpAddr::V6(v6) => Some(Some(v6)),
                IpAddr::V4(_) => None,
            },
        };
        let snat_ports = match &xdp.snat_ports {
            None => Some(PortRange::DEFAULT_SNAT),
            Some(raw) => self.port_range(raw, "xdp.snat_ports"),
        };
        Some(XdpSettings {
            interfaces: interfaces?,
            mode: mode?,
            snat_ipv4: snat_ipv4?,
            snat_ipv6: snat_ipv6?,
            snat_ports: snat_ports?,
        })
    }

    /// `xdp.interfaces`: a non-empty list of distinct, well-formed names.
    fn interfaces(&mut self, list: &Spanned<Vec<Spanned<String>>>) -> Option<Vec<String>> {
        let path = "xdp.interfaces";
        if list.value.is_empty() {
            self.report(
                list.referenced,
                path,
                "must not be empty; list the interfaces remote clients' packets arrive on, e.g. [eth0]"
                    .to_owned(),
            );
            return None;
        }
        let mut names: Vec<&Spanned<String>> = Vec::with_capacity(list.value.len());
        let mut valid = true;
        for (index, raw) in list.value.iter().enumerate() {
            let entry_path = format!("{path}[{index}]");
            let name = raw.value.trim();
            if let Some(problem) = interface_name_problem(name) {
                self.report(raw.referenced, &entry_path, problem);
                valid = false;
            } else if let Some(first) = names.iter().position(|other| other.value.trim() == name) {
                self.report(
                    raw.referenced,
                    &entry_path,
                    format!(
                        "duplicate interface {name}, already listed as {path}[{first}] (line {})",
                        names[first].referenced.line()
                    ),
                );
                valid = false;
            }
            names.push(raw);
        }
        valid.then(|| {
            names
                .into_iter()
                .map(|name| name.value.trim().to_owned())
                .collect()
        })
    }

    /// `xdp.snat_ipv4` (`v4`) or `xdp.snat_ipv6`: a unicast address literal
    /// of that family.
    fn snat_address(&mut self, raw: &Spanned<String>, path: &str, v4: bool) -> Option<IpAddr> {
        let text = raw.value.trim();
        let (family, other, example) = if v4 {
            ("IPv4", "snat_ipv6", "192.0.2.10")
        } else {
            ("IPv6", "snat_ipv4", "2001:db8::10")
        };
        let problem = match text.parse::<IpAddr>() {
            Err(_) => format!(
                "invalid address {text:?}; expected an {family} address literal such as {example} (no port, host names are not resolved)"
            ),
            Ok(ip) if ip.is_ipv4() != v4 => {
                format!("{ip} is not an {family} address; write it in `{other}`")
            }
            Ok(ip) if ip.is_unspecified() => format!(
                "{ip} is the unspecified address; the SNAT source must be a unicast address of this node"
            ),
            Ok(ip) if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) => format!(
                "{ip} is a multicast or broadcast address; the SNAT source must be a unicast address of this node"
            ),
            Ok(ip) => return Some(ip),
        };
        self.report(raw.referenced, path, problem);
        None
    }

    /// `first-last`, 1 <= first <= last <= 65535.
    fn port_range(&mut self, raw: &Spanned<String>, path: &str) -> Option<PortRange> {
        let text = raw.value.trim();
        let parsed = text.split_once('-').and_then(|(first, last)| {
            Some((
                first.trim().parse::<u64>().ok()?,
                last.trim().parse::<u64>().ok()?,
            ))
        });
        let problem = match parsed {
            None => format!("invalid port range {text:?}; expected first-last, e.g. 61000-65535"),
            Some((first, last)) if first == 0 || last == 0 => {
                format!("{first}-{last}: port 0 is not allowed; expected ports from 1 to 65535")
            }
            Some((first, last)) if first > 65535 || last > 65535 => {
                format!("{first}-{last}: ports go up to 65535")
            }
            Some((first, last)) if first > last => {
                format!("{first}-{last} is empty: the first port is above the last")
            }
            Some((first, last)) => {
                return Some(PortRange {
                    first: first as u16,
                    last: last as u16,
                });
            }
        };
        self.report(raw.referenced, path, problem);
        None
    }

    /// `remote: true` needs the `xdp` block (called when it is absent).
    fn check_remote_needs_xdp(&mut self, drafts: &[ServiceDraft]) {
        for draft in drafts {
            if let Some(remote) = &draft.remote
                && remote.value
            {
                self.report(
                    remote.referenced,
                    &format!("{}.remote", draft.path),
                    "`remote: true` needs the top-level `xdp` block (the interfaces remote clients' packets arrive on)"
                        .to_owned(),
                );
            }
        }
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

    /// Checks one service's own fields.
    fn service(&mut self, index: usize, raw: &Spanned<RawService>) -> ServiceDraft {
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
        if let Some(list) = servers_list {
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
        });
        let server_count = servers.len() + usize::from(!default_is_listed);
        let maglev_table_size = self.maglev_table_size(
            service.maglev_table_size.as_ref(),
            &path,
            policy.as_ref(),
            server_count,
        );
        let kinds_before = self.sui_sync_kinds.len();
        let nautilus_before = self.nautilus_kinds.len();
        let health_check = self.health_check(raw, &path, protocol);
        let sui_sync_kinds = self.sui_sync_kinds.split_off(kinds_before);
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

        ServiceDraft {
            path,
            name,
            vip,
            protocol,
            servers,
            default_server,
            policy,
            maglev_table_size,
            health_check,
            remote,
            discovery,
            discovery_at: service.discovery.as_ref().map(|raw| raw.referenced),
            sui_sync_kinds,
            nautilus_kinds,
        }
    }

    /// `maglev_table_size`: only with policy spread; a prime of at most
    /// [`ServiceConfig::MAX_MAGLEV_TABLE_SIZE`] with at least
    /// [`ServiceConfig::MIN_MAGLEV_SLOTS_PER_SERVER`] slots per server (or
    /// the largest size, when that is more than it). The default is checked
    /// too with policy spread; an invalid policy skips the checks that
    /// depend on it.
    fn maglev_table_size(
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
        let Some(raw) = &service.value.health_check else {
            return Some(HealthCheckConfig::default_for(
                protocol.unwrap_or(Protocol::Tcp),
            ));
        };
        let path = format!("{path}.health_check");
        let check = &raw.value;

        let spec = self.check_spec(check, &path, protocol);
        let intervals = self.intervals(check, &path);
        // A sui_sync check may take its max_response_time by default.
        let default_timeout = spec
            .as_ref()
            .and_then(longest_response_time)
            .map_or(HealthCheckConfig::DEFAULT_TIMEOUT, |response| {
                response.max(HealthCheckConfig::DEFAULT_TIMEOUT)
            });
        let timeout = match &check.timeout {
            // Intervals shorter than the default timeout shorten it.
            None => intervals
                .as_ref()
                .map(|intervals| default_timeout.min(intervals.shortest())),
            Some(timeout) => self.timeout(timeout, &format!("{path}.timeout"), intervals.as_ref()),
        };
        if let Some(timeout) = timeout {
            self.check_response_times(check, &path, timeout);
        }
        let jitter_percent = match &check.jitter {
            None => Some(HealthCheckConfig::DEFAULT_JITTER_PERCENT),
            Some(jitter) => self.jitter(jitter, &format!("{path}.jitter")),
        };
        Some(HealthCheckConfig {
            check: spec?,
            timeout: timeout?,
            intervals: intervals?,
            jitter_percent: jitter_percent?,
        })
    }

    /// `kind` and its fields, `checks` for kind all.
    fn check_spec(
        &mut self,
        check: &RawHealthCheck,
        path: &str,
        protocol: Option<Protocol>,
    ) -> Option<CheckSpec> {
        let kind = match &check.kind {
            None => match protocol.unwrap_or(Protocol::Tcp) {
                Protocol::Tcp => Kind::Tcp,
                Protocol::Udp => Kind::Udp,
            },
            Some(raw) => self.kind(raw, &format!("{path}.kind"), protocol, false)?,
        };
        if kind != Kind::All {
            if let Some(checks) = &check.checks {
                self.report(
                    checks.referenced,
                    &format!("{path}.checks"),
                    format!("`checks` is only valid with kind all, not with kind {kind}"),
                );
            }
            return self.single_check(
                kind,
                &check.http_fields(),
                &check.sui_fields(),
                &check.nautilus_fields(),
                path,
            );
        }

        let sui = check
            .sui_fields()
            .present()
            .into_iter()
            .map(|field| (field, "sui_sync"));
        let nautilus = check
            .nautilus_fields()
            .present()
            .into_iter()
            .map(|field| (field, "nautilus"));
        for ((name, location), kind) in sui.chain(nautilus) {
            self.report(
                location,
                &format!("{path}.{name}"),
                format!(
                    "`{name}` is only valid with kind {kind}; with kind all, write it in an entry of `checks`"
                ),
            );
        }

        for (name, location) in check.http_fields().present() {
            self.report(
                location,
                &format!("{path}.{name}"),
                format!(
                    "`{name}` is only valid with kind {}; with kind all, write it in an entry of `checks`",
                    if is_tls_field(name) { "https" } else { "http or https" }
                ),
            );
        }
        let Some(checks) = &check.checks else {
            let location = check
                .kind
                .as_ref()
                .map_or(Location::UNKNOWN, |kind| kind.referenced);
            self.report(
                location,
                &format!("{path}.kind"),
                "kind all needs `checks`: a list of the checks that must all pass".to_owned(),
            );
            return None;
        };
        if checks.value.is_empty() {
            self.report(
                checks.referenced,
                &format!("{path}.checks"),
                "must not be empty with kind all; list the checks that must all pass".to_owned(),
            );
            return None;
        }
        let mut parts = Vec::with_capacity(checks.value.len());
        for (index, part) in checks.value.iter().enumerate() {
            let part_path = format!("{path}.checks[{index}]");
            let kind = self
                .required(
                    part.value.kind.as_ref(),
                    part.referenced,
                    &part_path,
                    "kind",
                    "",
                )
                .and_then(|raw| self.kind(raw, &format!("{part_path}.kind"), protocol, true));
            parts.push(kind.and_then(|kind| {
                self.single_check(
                    kind,
                    &part.value.http_fields(),
                    &part.value.sui_fields(),
                    &part.value.nautilus_fields(),
                    &part_path,
                )
            }));
        }
        parts
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .map(CheckSpec::All)
    }

    /// A `kind` word; `nested` for an entry of `checks`.
    fn kind(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
        protocol: Option<Protocol>,
        nested: bool,
    ) -> Option<Kind> {
        let kind = self.parse::<Kind>(raw, path)?;
        match kind {
            Kind::SuiSync => self.sui_sync_kinds.push((path.to_owned(), raw.referenced)),
            Kind::Nautilus => self.nautilus_kinds.push((path.to_owned(), raw.referenced)),
            _ => {}
        }
        let problem = match kind {
            Kind::All if nested => {
                "kind all cannot be nested; list its checks in this `checks` directly"
            }
            Kind::Udp if protocol == Some(Protocol::Tcp) => {
                "kind udp cannot check a tcp service; use kind tcp (or leave it out)"
            }
            _ => return Some(kind),
        };
        self.report(raw.referenced, path, problem.to_owned());
        None
    }

    /// A check of one kind other than all, with that kind's fields.
    fn single_check(
        &mut self,
        kind: Kind,
        fields: &RawHttpFields<'_>,
        sui: &RawSuiFields<'_>,
        nautilus: &RawNautilusFields<'_>,
        path: &str,
    ) -> Option<CheckSpec> {
        if kind != Kind::SuiSync {
            for (name, location) in sui.present() {
                self.report(
                    location,
                    &format!("{path}.{name}"),
                    format!("`{name}` is only valid with kind sui_sync, not with kind {kind}"),
                );
            }
        }
        if kind != Kind::Nautilus {
            for (name, location) in nautilus.present() {
                self.report(
                    location,
                    &format!("{path}.{name}"),
                    format!("`{name}` is only valid with kind nautilus, not with kind {kind}"),
                );
            }
        }
        match kind {
            Kind::Tcp | Kind::Udp => {
                for (name, location) in fields.present() {
                    self.report(
                        location,
                        &format!("{path}.{name}"),
                        format!(
                            "`{name}` is only valid with kind {}, not with kind {kind}",
                            if is_tls_field(name) {
                                "https"
                            } else {
                                "http or https"
                            }
                        ),
                    );
                }
                Some(if kind == Kind::Tcp {
                    CheckSpec::Tcp
                } else {
                    CheckSpec::Udp
                })
            }
            Kind::Http | Kind::Https => self
                .http_check(fields, path, kind == Kind::Https)
                .map(CheckSpec::Http),
            Kind::SuiSync | Kind::Nautilus => {
                for (name, location) in fields.present() {
                    self.report(
                        location,
                        &format!("{path}.{name}"),
                        format!(
                            "`{name}` is only valid with kind {}, not with kind {kind}",
                            if is_tls_field(name) {
                                "https"
                            } else {
                                "http or https"
                            }
                        ),
                    );
                }
                if kind == Kind::SuiSync {
                    self.sui_sync_check(sui, path).map(CheckSpec::SuiSync)
                } else {
                    self.nautilus_check(nautilus, path).map(CheckSpec::Nautilus)
                }
            }
            // Reported by `kind`.
            Kind::All => None,
        }
    }

    fn http_check(
        &mut self,
        fields: &RawHttpFields<'_>,
        path: &str,
        https: bool,
    ) -> Option<HttpCheck> {
        let http_path = match fields.path {
            None => Some(HttpCheck::DEFAULT_PATH.to_owned()),
            Some(raw) => self.http_path(raw, &format!("{path}.path")),
        };
        let port = match fields.port {
            None => Some(None),
            Some(raw) => self.port(raw, &format!("{path}.port")).map(Some),
        };
        let host = match fields.host {
            None => Some(None),
            Some(raw) => self.host(raw, &format!("{path}.host")).map(Some),
        };
        let expected_status = match fields.expected_status {
            None => Some(vec![HttpCheck::DEFAULT_STATUS]),
            Some(raw) => self.expected_status(raw, &format!("{path}.expected_status")),
        };
        let body_contains = match fields.body_contains {
            None => Some(None),
            Some(raw) => self
                .body_contains(raw, &format!("{path}.body_contains"))
                .map(Some),
        };
        let tls = if https {
            self.tls(fields, path).map(Some)
        } else {
            for (name, location) in fields.present() {
                if is_tls_field(name) {
                    self.report(
                        location,
                        &format!("{path}.{name}"),
                        format!("`{name}` is only valid with kind https, not with kind http"),
                    );
                }
            }
            Some(None)
        };
        Some(HttpCheck {
            tls: tls?,
            path: http_path?,
            port: port?,
            host: host?,
            expected_status: expected_status?,
            body_contains: body_contains?,
        })
    }

    fn sui_sync_check(&mut self, sui: &RawSuiFields<'_>, path: &str) -> Option<SuiSyncCheck> {
        let max_checkpoint_lag = match sui.max_checkpoint_lag {
            None => Some(SuiSyncCheck::DEFAULT_MAX_CHECKPOINT_LAG),
            Some(raw) => self.whole_number(
                raw,
                &format!("{path}.max_checkpoint_lag"),
                u64::MAX,
                |text| {
                    format!(
                        "invalid number {text:?}; expected a whole number of checkpoints (0 = at the reference's tip)"
                    )
                },
            ),
        };
        let max_sync_age = match sui.max_sync_age {
            None => Some(SuiSyncCheck::DEFAULT_MAX_SYNC_AGE),
            Some(raw) => self
                .duration(raw, &format!("{path}.max_sync_age"))
                .map(|age| age.value),
        };
        let max_response_time = match sui.max_response_time {
            None => Some(SuiSyncCheck::DEFAULT_MAX_RESPONSE_TIME),
            Some(raw) => self
                .duration(raw, &format!("{path}.max_response_time"))
                .map(|time| time.value),
        };
        Some(SuiSyncCheck {
            max_checkpoint_lag: max_checkpoint_lag?,
            max_sync_age: max_sync_age?,
            max_response_time: max_response_time?,
        })
    }

    /// A `nautilus` check's fields; a `cache_ttl` left out is at most
    /// `max_age`.
    fn nautilus_check(
        &mut self,
        fields: &RawNautilusFields<'_>,
        path: &str,
    ) -> Option<NautilusCheck> {
        let max_age = match fields.max_age {
            None => Some(NautilusCheck::DEFAULT_MAX_AGE),
            Some(raw) => self.duration_in_range(
                raw,
                &format!("{path}.max_age"),
                MIN_ATTESTATION_MAX_AGE,
                MAX_ATTESTATION_MAX_AGE,
            ),
        };
        let cache_ttl = match fields.cache_ttl {
            None => Some(NautilusCheck::DEFAULT_CACHE_TTL.min(max_age.unwrap_or(Duration::MAX))),
            Some(raw) => self.cache_ttl(raw, &format!("{path}.cache_ttl"), max_age),
        };
        let min_performance_score = match fields.min_performance_score {
            None => Some(NautilusCheck::DEFAULT.min_performance_score),
            Some(raw) => self.whole_number(
                raw,
                &format!("{path}.min_performance_score"),
                MAX_BASIS_POINTS,
                |text| {
                    format!(
                        "invalid score {text:?}; expected a whole number of basis points from 0 to {MAX_BASIS_POINTS} (10000 = 100%)"
                    )
                },
            ),
        };
        let intent = match fields.intent {
            None => Some(NautilusCheck::DEFAULT.intent),
            Some(raw) => {
                let intent = raw.value.trim().parse::<u8>().ok();
                if intent.is_none() {
                    self.report(
                        raw.referenced,
                        &format!("{path}.intent"),
                        format!(
                            "invalid intent scope {:?}; expected a whole number from 0 to 255, the app's intent scope (0 = ProcessData in the Nautilus examples)",
                            raw.value
                        ),
                    );
                }
                intent
            }
        };
        let verify_attestation_document = match fields.verify_attestation_document {
            None => Some(NautilusCheck::DEFAULT.verify_attestation_document),
            Some(raw) => self.boolean(raw, &format!("{path}.verify_attestation_document")),
        };
        Some(NautilusCheck {
            cache_ttl: cache_ttl?,
            max_age: max_age?,
            min_performance_score: min_performance_score?,
            intent: intent?,
            verify_attestation_document: verify_attestation_document?,
        })
    }

    /// A nautilus `cache_ttl`: 0s (no reuse) up to `max_age`, when that is
    /// valid.
    fn cache_ttl(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
        max_age: Option<Duration>,
    ) -> Option<Duration> {
        let ttl = match humantime::parse_duration(raw.value.trim()) {
            Ok(ttl) => ttl,
            Err(error) => {
                self.report(
                    raw.referenced,
                    path,
                    format!(
                        "invalid duration {:?}: {error}; expected e.g. 30s, 0s (no reuse) or 1m",
                        raw.value
                    ),
                );
                return None;
            }
        };
        if let Some(max_age) = max_age
            && ttl > max_age
        {
            self.report(
                raw.referenced,
                path,
                format!(
                    "{} is longer than max_age {}: a cached verdict would outlive max_age; expected at most max_age",
                    humantime::format_duration(ttl),
                    humantime::format_duration(max_age)
                ),
            );
            return None;
        }
        Some(ttl)
    }

    /// A written `max_response_time` longer than the check's timeout could
    /// never be reached.
    fn check_response_times(&mut self, check: &RawHealthCheck, path: &str, timeout: Duration) {
        let mut written = vec![(path.to_owned(), check.max_response_time.as_ref())];
        if let Some(checks) = &check.checks {
            for (index, part) in checks.value.iter().enumerate() {
                written.push((
                    format!("{path}.checks[{index}]"),
                    part.value.max_response_time.as_ref(),
                ));
            }
        }
        for (part_path, raw) in written {
            let Some(raw) = raw else {
                continue;
            };
            let Ok(response) = humantime::parse_duration(raw.value.trim()) else {
                continue;
            };
            if response > timeout {
                self.report(
                    raw.referenced,
                    &format!("{part_path}.max_response_time"),
                    format!(
                        "{} is longer than the check's timeout {}; raise `timeout` or lower `max_response_time`",
                        humantime::format_duration(response),
                        humantime::format_duration(timeout)
                    ),
                );
            }
        }
    }

    fn http_path(&mut self, raw: &Spanned<String>, path: &str) -> Option<String> {
        let value = &raw.value;
        let problem = if !value.starts_with('/') {
            format!("{value:?} does not start with /; expected a path such as /healthz")
        } else if value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
        {
            format!(
                "{value:?} contains a space, control character or #; percent-encode it (e.g. %20)"
            )
        } else {
            return Some(value.clone());
        };
        self.report(raw.referenced, path, problem);
        None
    }

    fn port(&mut self, raw: &Spanned<String>, path: &str) -> Option<u16> {
        let problem = match raw.value.trim().parse::<u16>() {
            Ok(0) => "port 0 is not allowed; expected a port from 1 to 65535".to_owned(),
            Ok(port) => return Some(port),
            Err(_) => format!(
                "{:?} is not a port number; expected a port from 1 to 65535",
                raw.value
            ),
        };
        self.report(raw.referenced, path, problem);
        None
    }

    fn host(&mut self, raw: &Spanned<String>, path: &str) -> Option<String> {
        let host = raw.value.trim();
        let problem = if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            format!(
                "{host:?} is an IP address; leave `host` out to use the server's IP, or give a DNS name"
            )
        } else if !is_dns_name(host) {
            format!(
                "invalid host name {host:?}; expected a DNS name such as api.example (the port goes in `port`)"
            )
        } else {
            return Some(host.to_owned());
        };
        self.report(raw.referenced, path, problem);
        None
    }

    fn expected_status(
        &mut self,
        raw: &Spanned<Vec<Spanned<String>>>,
        path: &str,
    ) -> Option<Vec<u16>> {
        if raw.value.is_empty() {
            self.report(
                raw.referenced,
                path,
                "must not be empty; list the accepted status codes, e.g. [200]".to_owned(),
            );
            return None;
        }
        let mut codes = Vec::with_capacity(raw.value.len());
        let mut valid = true;
        for (index, status) in raw.value.iter().enumerate() {
            let problem = match status.value.trim().parse::<u64>() {
                Ok(code @ 100..=599) => {
                    codes.push(code as u16);
                    continue;
                }
                Ok(code) => format!("status {code} is out of range; expected 100 to 599"),
                Err(_) => format!(
                    "invalid status code {:?}; expected a number from 100 to 599",
                    status.value
                ),
            };
            self.report(status.referenced, &format!("{path}[{index}]"), problem);
            valid = false;
        }
        valid.then_some(codes)
    }

    fn body_contains(&mut self, raw: &Spanned<String>, path: &str) -> Option<String> {
        let problem = if raw.value.is_empty() {
            "must not be empty; leave `body_contains` out to accept any body".to_owned()
        } else if raw.value.len() > HttpCheck::BODY_LIMIT {
            format!(
                "is {} bytes long; only the first {} bytes of a body are read",
                raw.value.len(),
                HttpCheck::BODY_LIMIT
            )
        } else {
            return Some(raw.value.clone());
        };
        self.report(raw.referenced, path, problem);
        None
    }

    /// `ca_file` and `insecure` of an https check.
    fn tls(&mut self, fields: &RawHttpFields<'_>, path: &str) -> Option<TlsOptions> {
        let ca_file = match fields.ca_file {
            None => Some(None),
            Some(raw) => self.ca_file(raw, &format!("{path}.ca_file")).map(Some),
        };
        let insecure = match fields.insecure {
            None => Some(false),
            Some(raw) => {
                let insecure_path = format!("{path}.insecure");
                let insecure = self.boolean(raw, &insecure_path);
                if insecure == Some(true) && fields.ca_file.is_some() {
                    self.report(
                        raw.referenced,
                        &insecure_path,
                        "`insecure: true` accepts any certificate, so `ca_file` would be ignored; use one or the other"
                            .to_owned(),
                    );
                    None
                } else {
                    insecure
                }
            }
        };
        Some(TlsOptions {
            ca_file: ca_file?,
            insecure: insecure?,
        })
    }

    /// An absolute path to a readable PEM file with at least one CA
    /// certificate.
    fn ca_file(&mut self, raw: &Spanned<String>, path: &str) -> Option<PathBuf> {
        let file = self.absolute_path(raw, path)?;
        match super::tls::read_ca_file(&file) {
            Ok(_) => Some(file),
            Err(error) => {
                self.report(raw.referenced, path, format!("{error:#}"));
                None
            }
        }
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

    /// The intervals: the profile's (or the defaults), then `interval` for
    /// every state, then each `intervals.<state>`.
    fn intervals(&mut self, check: &RawHealthCheck, path: &str) -> Option<Intervals> {
        let mut valid = true;
        let mut intervals = Intervals::DEFAULT;
        if let Some(profile) = &check.profile {
            match profile.value.trim() {
                "k3s" => intervals = Intervals::K3S,
                other => {
                    self.report(
                        profile.referenced,
                        &format!("{path}.profile"),
                        format!("unknown profile {other:?}; expected k3s (every interval 1s)"),
                    );
                    valid = false;
                }
            }
        }
        if let Some(interval) = &check.interval {
            match self.interval(interval, &format!("{path}.interval")) {
                Some(interval) => intervals = Intervals::uniform(interval.value),
                None => valid = false,
            }
        }
        if let Some(by_state) = &check.intervals {
            for (name, raw, field) in interval_fields(&by_state.value) {
                let Some(raw) = raw else {
                    continue;
                };
                match self.interval(raw, &format!("{path}.intervals.{name}")) {
                    Some(interval) => *field(&mut intervals) = interval.value,
                    None => valid = false,
                }
            }
        }
        valid.then_some(intervals)
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
        intervals: Option<&Intervals>,
    ) -> Option<Duration> {
        let timeout = self.duration(raw, path)?.value;
        let Some(intervals) = intervals else {
            return Some(timeout);
        };
        let shortest = intervals.shortest();
        if timeout <= shortest {
            return Some(timeout);
        }
        let entries = intervals.entries();
        let interval = if entries.iter().all(|(_, interval)| *interval == shortest) {
            format!("interval {}", humantime::format_duration(shortest))
        } else {
            let state = entries
                .iter()
                .find(|(_, interval)| *interval == shortest)
                .map_or("", |(state, _)| state);
            format!(
                "the {state} interval {}, the shortest",
                humantime::format_duration(shortest)
            )
        };
        self.report(
            raw.referenced,
            path,
            format!(
                "timeout {} is longer than {interval}; expected at most the shortest interval",
                humantime::format_duration(timeout)
            ),
        );
        None
    }

    /// `N%` or a plain `N`, 0 to 50.
    fn jitter(&mut self, raw: &Spanned<String>, path: &str) -> Option<u8> {
        let text = raw.value.trim();
        let number = text.strip_suffix('%').unwrap_or(text).trim();
        let max = HealthCheckConfig::MAX_JITTER_PERCENT;
        let problem = match number.parse::<u64>() {
            Ok(percent) if percent <= u64::from(max) => return u8::try_from(percent).ok(),
            Ok(percent) => format!("jitter {percent}% is out of range; expected 0% to {max}%"),
            Err(_) => format!(
                "invalid jitter {:?}; expected a percentage from 0% to {max}%, e.g. 10%",
                raw.value
            ),
        };
        self.report(raw.referenced, path, problem);
        None
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
        self.check_maglev_slots(drafts);
    }

    /// The Maglev tables of all spread services must fit the kernel map
    /// together; reported once, on the service that crosses the limit.
    fn check_maglev_slots(&mut self, drafts: &[ServiceDraft]) {
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
fn min_maglev_table_size(servers: usize) -> u32 {
    let max = ServiceConfig::MAX_MAGLEV_TABLE_SIZE;
    u32::try_from(servers)
        .ok()
        .and_then(|servers| servers.checked_mul(ServiceConfig::MIN_MAGLEV_SLOTS_PER_SERVER))
        .map_or(max, |needed| needed.min(max))
}

/// The largest prime below `number`, if any.
fn prev_prime(number: u32) -> Option<u32> {
    (2..number).rev().find(|candidate| is_prime(*candidate))
}

/// The smallest prime of at least `number` that is a valid table size.
fn next_prime(number: u32) -> Option<u32> {
    (number..=ServiceConfig::MAX_MAGLEV_TABLE_SIZE).find(|candidate| is_prime(*candidate))
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

/// The longest `max_response_time` of the `sui_sync` checks in `spec`.
fn longest_response_time(spec: &CheckSpec) -> Option<Duration> {
    match spec {
        CheckSpec::SuiSync(sui) => Some(sui.max_response_time),
        CheckSpec::All(parts) => parts.iter().filter_map(longest_response_time).max(),
        _ => None,
    }
}

/// Whether `name` is a field of https checks only.
fn is_tls_field(name: &str) -> bool {
    matches!(name, "ca_file" | "insecure")
}

/// Which field of [`Intervals`] an `intervals.<state>` entry sets.
type IntervalField = fn(&mut Intervals) -> &mut Duration;

/// The entries of `intervals` with their names and the field each sets.
fn interval_fields(
    raw: &RawIntervals,
) -> [(&'static str, Option<&Spanned<String>>, IntervalField); 6] {
    [
        ("active", raw.active.as_ref(), |i| &mut i.active),
        ("preferred", raw.preferred.as_ref(), |i| &mut i.preferred),
        ("healthy", raw.healthy.as_ref(), |i| &mut i.healthy),
        ("recovering", raw.recovering.as_ref(), |i| &mut i.recovering),
        ("failed", raw.failed.as_ref(), |i| &mut i.failed),
        ("other", raw.other.as_ref(), |i| &mut i.other),
    ]
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

/// Why `name` cannot be a Linux network interface name, if it cannot
/// (the kernel's `dev_valid_name`).
fn interface_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("interface name must not be empty".to_owned())
    } else if name.len() > MAX_INTERFACE_NAME_LEN {
        Some(format!(
            "interface name {name:?} is {} bytes long; Linux allows at most {MAX_INTERFACE_NAME_LEN}",
            name.len()
        ))
    } else if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        Some(format!(
            "invalid interface name {name:?}; it may not be . or .. nor contain /, : or spaces"
        ))
    } else {
        None
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
