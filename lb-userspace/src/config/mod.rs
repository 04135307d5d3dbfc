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
pub mod ports;
mod raw;
mod server;
#[cfg(test)]
mod tests;
pub mod tls;
mod validate;

use std::{
    fmt, fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use serde::{
    Deserialize, Serialize, Serializer,
    ser::{SerializeMap as _, SerializeStruct as _},
};
use serde_saphyr::Location;

pub use self::server::{ServerName, ServerTarget, parse_server};
pub(crate) use self::validate::is_dns_name;
use self::{raw::parse_raw, validate::Checker};

/// `as_str`, `Display` and `FromStr` for an enum of words used in the file;
/// the parse error names the field and lists every accepted word.
macro_rules! config_words {
    ($vis:vis $ty:ident, $what:literal, { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// The word used in the configuration file.
            $vis const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word,)+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($word => Ok(Self::$variant),)+
                    _ => Err(format!(
                        "unknown {} {text:?}; expected {}",
                        $what,
                        $crate::config::one_of(&[$($word),+])
                    )),
                }
            }
        }
    };
}
pub(crate) use config_words;

/// `a`, `a or b`, `a, b or c`.
pub(crate) fn one_of(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}
pub use self::ports::{ChainPort, ChainPortKind};
use crate::policy::state_machine::ServerState;

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
    /// Listen address of the `GET /status` API (read-only unless
    /// `api_token_file` is set).
    pub api_addr: SocketAddr,
    /// The Unix socket every change goes through (`control_socket`, default
    /// `/run/daas-lb/control.sock`); only root, or `control_group`, may use it.
    pub control_socket: PathBuf,
    /// A group whose members may use the control socket besides root
    /// (`control_group`, a group name or a numeric gid; default none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_group: Option<ControlGroup>,
    /// A root-owned 0600 file holding the bearer token that opens changes
    /// on `api_addr` (`api_token_file`; default none: `api_addr` is read-only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token_file: Option<PathBuf>,
    /// The balanced services; may be empty.
    pub services: Vec<ServiceConfig>,
    /// Most health probes running at once across all services
    /// (`max_concurrent_checks`, default 64, 1 to 4096).
    pub max_concurrent_checks: usize,
    /// How often connections per server are counted from the kernel
    /// (`connection_poll_interval`, default 200ms, 10ms to 10s).
    #[serde(serialize_with = "serialize_duration")]
    pub connection_poll_interval: Duration,
    /// How often the DNS names among servers and default servers are
    /// resolved again (`dns_refresh`, default 30s, 1s to 1h; reloadable).
    #[serde(serialize_with = "serialize_duration")]
    pub dns_refresh: Duration,
    /// XDP forwarding for remote clients (`xdp`); `None` = no XDP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpSettings>,
    /// Sui on-chain discovery (`chain`); `None` = no discovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainSettings>,
    /// Follow K3s's own agent load balancers (`k3s`); `None` = do not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k3s: Option<K3sSettings>,
    /// Feature gates (`features`).
    pub features: Features,
    /// What the kernel programs log (`kernel_log`: off, warn or debug;
    /// default off). Reloadable; `daas-lb kernel-log` changes it until the
    /// next reload.
    pub kernel_log: KernelLog,
    /// Whether the daemon loads its eBPF programs (`dataplane`, default
    /// `ebpf`; read at start only).
    pub dataplane: DaemonDataplane,
    /// Whether proxied services dial their servers through the HTTP CONNECT
    /// proxy of `HTTPS_PROXY` (`http_proxy_allowed`, default `auto`: as
    /// `K3S_AGENT_HTTP_PROXY_ALLOWED` says; read at start only).
    pub http_proxy_allowed: HttpProxyAllowed,
}

/// The top-level `http_proxy_allowed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpProxyAllowed {
    /// As the daemon's `K3S_AGENT_HTTP_PROXY_ALLOWED` says, like K3s (the
    /// default).
    #[default]
    Auto,
    /// Always, whatever that variable says.
    True,
    /// Never.
    False,
}

config_words!(pub HttpProxyAllowed, "http_proxy_allowed", { Auto => "auto", True => "true", False => "false" });

/// Whether the daemon loads its eBPF programs (the top-level `dataplane`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DaemonDataplane {
    /// Loads and attaches them; failing to is an error (the default).
    #[default]
    Ebpf,
    /// Loads nothing: every service is proxied (`dataplane: proxy` is
    /// every service's default then).
    Proxy,
    /// Loads them, and when that fails (no BPF, no cgroup v2, missing
    /// capabilities, a cgroup it cannot attach to) runs every service in
    /// proxy mode instead, saying so in the log and the status.
    Auto,
}

config_words!(pub DaemonDataplane, "dataplane", { Ebpf => "ebpf", Proxy => "proxy", Auto => "auto" });

impl ServiceConfig {
    /// Why this service cannot run in proxy mode (`None`: it can): proxy
    /// mode carries TCP, one server at a time, for local clients.
    pub fn proxy_refusal(&self) -> Option<&'static str> {
        if self.protocol == Protocol::Udp {
            Some("it is UDP and proxy mode carries TCP only")
        } else if self.policy == Policy::Spread {
            Some("it uses policy spread and proxy mode dials in K3s order (failover)")
        } else if self.remote {
            Some("it serves remote clients (`remote`), which needs the XDP/tc programs")
        } else {
            None
        }
    }
}

/// What the kernel programs log through aya-log (`kernel_log`), into the
/// daemon's log under the target `daas_lb::kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelLog {
    /// Nothing (the default): the programs never touch the log ring.
    #[default]
    Off,
    /// Refused connects (no usable backend), failed and stalled dials.
    Warn,
    /// Also connects moved past a suspect backend and every XDP drop.
    Debug,
}

impl KernelLog {
    /// The level as the `kernel_log` map holds it (`lb_common::kernel_log`).
    pub const fn map_value(self) -> u32 {
        match self {
            Self::Off => lb_common::kernel_log::OFF,
            Self::Warn => lb_common::kernel_log::WARN,
            Self::Debug => lb_common::kernel_log::DEBUG,
        }
    }
}

/// The largest score in basis points (100 %): attested performance and
/// reputation, and `min_performance_score`.
pub const MAX_BASIS_POINTS: u64 = 10_000;

/// MIST per SUI (stakes are in MIST).
pub const MIST_PER_SUI: u64 = 1_000_000_000;

/// Whether `number` is a prime (trial division; table sizes are small).
/// Maglev table sizes must be prime.
pub const fn is_prime(number: u32) -> bool {
    if number < 4 {
        return number >= 2;
    }
    if number.is_multiple_of(2) {
        return false;
    }
    let mut divisor = 3;
    while divisor <= number / divisor {
        if number.is_multiple_of(divisor) {
            return false;
        }
        divisor += 2;
    }
    true
}

/// How stake counts in a score (`features.stake_weight`; the formula is
/// `StakeWeight::weight` in [`crate::policy::ranking`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StakeWeight {
    /// Proportional to the stake (in whole SUI).
    Linear,
    /// The square root of the stake in MIST: big stakes count less.
    #[default]
    Sqrt,
    /// The base-2 logarithm of the stake in MIST: stake barely counts.
    Log,
}

config_words!(pub StakeWeight, "stake weight", {
    Linear => "linear",
    Sqrt => "sqrt",
    Log => "log",
});

/// `control_group`: a group, resolved to its gid when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlGroup {
    /// As written in the file (a name, or the gid itself).
    pub name: String,
    /// The group's id.
    pub gid: u32,
}

/// The `features` block: what the load balancer does besides the plain K3s
/// agent load balancer (everything off).
///
/// ```yaml
/// features:
///   blockchain_discovery: true     # default: true with a `chain` block, else false
///   nautilus_health_checks: true   # default: true with a `chain` block, else false
///   stake_validation: true         # default: true with a `chain` block, else false
///   performance_ranking: false     # default false
///   stake_weight: sqrt             # linear, sqrt (default) or log
/// ```
///
/// `true` for a chain feature without a `chain` block is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent on/off switches, named as in the file"
)]
pub struct Features {
    /// Services may use `kind: nautilus` health checks
    /// (`nautilus_health_checks`, needs the `chain` block; default: whether
    /// there is one). Off, `kind: nautilus` is refused.
    pub nautilus_health_checks: bool,
    /// Services may take servers from the chain (`blockchain_discovery`,
    /// needs the `chain` block; default: whether there is one). Off,
    /// `discovery` blocks are refused.
    pub blockchain_discovery: bool,
    /// Stake is enforced: `chain.min_stake_mist`, and a nautilus
    /// attestation's stake may not exceed the node's on-chain stake
    /// (`stake_validation`, needs the `chain` block; default: whether there
    /// is one). Off, nothing about stake is checked and
    /// `chain.min_stake_mist` must be 0.
    pub stake_validation: bool,
    /// Scores rank servers of equal state, and weight spread services'
    /// Maglev slots (`performance_ranking`, default false; see
    /// [`crate::policy::ranking`]).
    pub performance_ranking: bool,
    /// How stake counts in a score (`stake_weight`, default `sqrt`).
    #[serde(serialize_with = "serialize_display")]
    pub stake_weight: StakeWeight,
}

/// The `chain` block: where the Sui registry of nodes is read from.
///
/// ```yaml
/// chain:
///   sui_rpc_url: http://127.0.0.1:9000          # required: gRPC of a full node (http or https)
///   reference_rpc_urls: [https://fullnode.mainnet.sui.io]   # optional, for sui_sync checks
///   registry: { package: "0x…", module: registry, object: "0x…" }   # required
///   min_stake_mist: 1000000000                   # default 0; needs features.stake_validation
///   discovery_interval: 5m                       # full resync safety net, default 5m
///   enclave_config: "0x…"                        # for nautilus checks: the trusted EnclaveConfig
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainSettings {
    /// The full node the registry is read from and subscribed to
    /// (`sui_rpc_url`, sui-rpc gRPC; never JSON-RPC).
    pub sui_rpc_url: String,
    /// Full nodes whose height and chain id `sui_sync` checks compare
    /// against (`reference_rpc_urls`, default none: `sui_rpc_url` alone).
    pub reference_rpc_urls: Vec<String>,
    /// The registry's package, module and shared object (`registry`).
    pub registry: RegistrySettings,
    /// Nodes with less stake are never servers (`min_stake_mist`, MIST,
    /// default 0; above 0 needs `features.stake_validation`).
    pub min_stake_mist: u64,
    /// Time between full resyncs (`discovery_interval`, default 5m, 1s to
    /// 24h); events apply in between.
    #[serde(serialize_with = "serialize_duration")]
    pub discovery_interval: Duration,
    /// The `EnclaveConfig<T>` object whose enclaves are trusted
    /// (`enclave_config`, `0x` + hex); `kind: nautilus` needs it.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_option_display"
    )]
    pub enclave_config: Option<sui_sdk_types::Address>,
}

/// The `k3s` block: one service per K3s agent load balancer, whose servers
/// follow the state file K3s keeps for it (see `docs/k3s.md`):
///
/// ```yaml
/// k3s:
///   data_dir: /var/lib/rancher/k3s   # K3s's --data-dir
///   program: k3s                     # k3s or rke2 (default: rke2 when data_dir ends in rke2)
///   lb_server_port: 6444             # K3s's --lb-server-port
///   ipv6: false                      # K3s listens on [::1] instead of 127.0.0.1
///   balancers: [supervisor, api-server, etcd]
///   reread_interval: 10s             # re-read even without a file event
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct K3sSettings {
    /// K3s's data directory (`data_dir`, default `/var/lib/rancher/k3s`).
    pub data_dir: PathBuf,
    /// The program name K3s's files are named after (`program`: `k3s` or
    /// `rke2`).
    pub program: String,
    /// K3s's `--lb-server-port` (`lb_server_port`, default 6444).
    pub lb_server_port: u16,
    /// Whether K3s's balancers listen on `[::1]` (`ipv6`, default false).
    pub ipv6: bool,
    /// The balancers followed (`balancers`, default all three).
    pub balancers: Vec<K3sBalancer>,
    /// How often the files are read even without a file event
    /// (`reread_interval`, default 10s, 1s to 1h).
    #[serde(serialize_with = "serialize_duration")]
    pub reread_interval: Duration,
}

/// One of K3s's agent load balancers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum K3sBalancer {
    /// The supervisor balancer (`<program>-agent-load-balancer`) on
    /// `lb_server_port`.
    #[serde(rename = "supervisor")]
    Supervisor,
    /// The apiserver balancer (`<program>-api-server-agent-load-balancer`)
    /// on `lb_server_port - 1`; K3s starts it only when the apiserver port
    /// differs from the supervisor port (RKE2).
    #[serde(rename = "api-server")]
    ApiServer,
    /// The etcd balancer (`<program>-etcd-server-load-balancer`) on 2379,
    /// on servers that run without etcd.
    #[serde(rename = "etcd")]
    Etcd,
}

config_words!(pub K3sBalancer, "K3s load balancer", {
    Supervisor => "supervisor",
    ApiServer => "api-server",
    Etcd => "etcd",
});

/// Where one followed K3s balancer is: its service name, state file and
/// local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K3sBalancerSpec {
    /// Which balancer.
    pub balancer: K3sBalancer,
    /// K3s's name for it, also the daas-lb service's name.
    pub name: String,
    /// K3s's state file for it.
    pub file: PathBuf,
    /// The address K3s's balancer listens on: the service's VIP.
    pub vip: SocketAddr,
}

impl K3sSettings {
    /// Default `data_dir`.
    pub const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
    /// Default `lb_server_port`.
    pub const DEFAULT_LB_SERVER_PORT: u16 = 6444;
    /// The etcd balancer's port (fixed in K3s).
    pub const ETCD_PORT: u16 = 2379;
    /// Default `reread_interval`.
    pub const DEFAULT_REREAD_INTERVAL: Duration = Duration::from_secs(10);
    /// Shortest `reread_interval`.
    pub const MIN_REREAD_INTERVAL: Duration = Duration::from_secs(1);
    /// Longest `reread_interval`.
    pub const MAX_REREAD_INTERVAL: Duration = Duration::from_hours(1);

    /// The directory K3s keeps its balancers' state files in:
    /// `<data_dir>/agent/etc`.
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("agent").join("etc")
    }

    /// The followed balancers' names, files and addresses.
    pub fn specs(&self) -> Vec<K3sBalancerSpec> {
        let host = if self.ipv6 {
            std::net::IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        let dir = self.state_dir();
        self.balancers
            .iter()
            .map(|balancer| {
                let (suffix, port) = match balancer {
                    K3sBalancer::Supervisor => ("agent-load-balancer", self.lb_server_port),
                    K3sBalancer::ApiServer => (
                        "api-server-agent-load-balancer",
                        self.lb_server_port.saturating_sub(1),
                    ),
                    K3sBalancer::Etcd => ("etcd-server-load-balancer", Self::ETCD_PORT),
                };
                let name = format!("{}-{suffix}", self.program);
                K3sBalancerSpec {
                    balancer: *balancer,
                    file: dir.join(format!("{name}.json")),
                    name,
                    vip: SocketAddr::new(host, port),
                }
            })
            .collect()
    }
}

impl K3sBalancerSpec {
    /// The service that stands in for this balancer, with `servers` and
    /// `default_server` from K3s's file: TCP, failover (K3s's own policy),
    /// the default TCP health check.
    pub fn service(
        &self,
        servers: Vec<SocketAddr>,
        default_server: Option<SocketAddr>,
    ) -> ServiceConfig {
        ServiceConfig {
            name: self.name.clone(),
            vip: self.vip,
            protocol: Protocol::Tcp,
            servers,
            default_server,
            server_names: Vec::new(),
            default_server_name: None,
            policy: Policy::Failover,
            maglev_table_size: ServiceConfig::DEFAULT_MAGLEV_TABLE_SIZE,
            health_check: HealthCheckConfig::default_for(Protocol::Tcp),
            remote: false,
            dial_tracking: true,
            dial_stall_timeout: DialStall::Auto,
            discovery: None,
            dataplane: ServiceDataplane::Ebpf,
            dial_timeout: ServiceConfig::DEFAULT_DIAL_TIMEOUT,
            keepalive: ServiceConfig::DEFAULT_KEEPALIVE,
        }
    }
}

/// `chain.registry`: the Move module that defines the registry's events and
/// the shared `Registry` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrySettings {
    /// The package that defines the event types (`package`).
    #[serde(serialize_with = "serialize_display")]
    pub package: sui_sdk_types::Address,
    /// The module name (`module`, default `registry`).
    pub module: String,
    /// The shared `Registry` object (`object`).
    #[serde(serialize_with = "serialize_display")]
    pub object: sui_sdk_types::Address,
}

/// A service's `discovery` block: servers come from the chain too.
///
/// ```yaml
/// discovery: { source: sui, port: 6443 }
/// discovery: { source: sui, port: { from_chain_id: "35834a8a", kind: grpc }, max_servers: 32 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiscoveryConfig {
    /// Where nodes come from (`source`; only `sui`).
    pub source: DiscoverySource,
    /// The port of every discovered server (`port`): a number, or derived
    /// from a chain id.
    pub port: DiscoveryPort,
    /// Most discovered servers the service takes (`max_servers`, default
    /// [`DiscoveryConfig::DEFAULT_MAX_SERVERS`], 1 to
    /// [`Config::MAX_BACKENDS`]); with more eligible nodes the highest
    /// stakes are taken (see [`crate::chain::servers::cap`]).
    pub max_servers: usize,
}

impl DiscoveryConfig {
    /// Default `max_servers`: a sixteenth of the kernel's `backends` map,
    /// which all services share.
    pub const DEFAULT_MAX_SERVERS: usize = lb_common::MAX_BACKENDS as usize / 16;
}

/// `discovery.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoverySource {
    /// The Sui registry of the `chain` block.
    Sui,
}

config_words!(pub DiscoverySource, "discovery source", { Sui => "sui" });

/// `discovery.port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum DiscoveryPort {
    /// A port number.
    Fixed(u16),
    /// `{ from_chain_id, kind }`: see [`crate::config::ports`].
    Chain(ChainPort),
}

impl DiscoveryPort {
    /// The port number.
    pub fn port(&self) -> u16 {
        match self {
            Self::Fixed(port) => *port,
            Self::Chain(chain) => chain.port(),
        }
    }
}

/// The `xdp` block: where the forwarder for remote clients runs (which
/// hook on which interface) and how it translates their packets.
///
/// ```yaml
/// xdp:
///   interfaces:              # required, non-empty, no duplicates
///     - eth0                 # a name: the block's hook and mode
///     - { name: veth1, hook: tc }
///   hook: auto               # auto | xdp | tc (default for every entry)
///   mode: auto               # auto | driver | skb (XDP only)
///   snat_ipv4: 192.0.2.10    # optional; default: the egress interface's primary address
///   snat_ipv6: 2001:db8::10  # optional; default: its first global IPv6 address
///   snat_ports: 61000-65535  # SNAT source ports (default)
///   flow_timeouts:           # when an idle flow is forgotten (defaults)
///     tcp: 2h
///     tcp_closing: 10s
///     tcp_unreplied: 60s
///     udp: 60s
///   flow_gc_interval: 10s    # how often the flow collector runs (default)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XdpSettings {
    /// Interfaces the forwarder is attached to (`interfaces`), each with
    /// its hook and mode (the block's unless the entry sets its own).
    /// Their existence is checked at start, not when the file is read.
    pub interfaces: Vec<XdpInterface>,
    /// Default hook of the entries (`hook`, default auto).
    pub hook: XdpHook,
    /// Default XDP attach mode of the entries (`mode`, default auto).
    pub mode: XdpAttachMode,
    /// IPv4 source of translated packets (`snat_ipv4`); `None` = the egress
    /// interface's primary IPv4 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_ipv4: Option<Ipv4Addr>,
    /// IPv6 source of translated packets (`snat_ipv6`); `None` = the egress
    /// interface's first global IPv6 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_ipv6: Option<Ipv6Addr>,
    /// Source ports of translated packets (`snat_ports`, default
    /// [`PortRange::DEFAULT_SNAT`]).
    pub snat_ports: PortRange,
    /// How long an idle flow of each kind lives (`flow_timeouts`, default
    /// [`FlowTimeouts::DEFAULT`]).
    pub flow_timeouts: FlowTimeouts,
    /// How often the flow collector walks the flow table
    /// (`flow_gc_interval`, default [`FlowTimeouts::DEFAULT_GC_INTERVAL`]).
    #[serde(serialize_with = "serialize_duration")]
    pub flow_gc_interval: Duration,
}

/// `xdp.flow_timeouts`: how long a flow (both its entries) may stay idle
/// before the flow collector removes it, by kind. The closing, unreplied
/// and UDP defaults are Cilium's connection-tracking defaults
/// (`bpf-ct-timeout-regular-tcp-fin` 10s, `-tcp-syn` 1m, `-any` 1m); an
/// idle established flow lives 2h, less than Cilium's 6h or conntrack's
/// 5 days, so that abandoned flows leave the table sooner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FlowTimeouts {
    /// An established TCP flow (`tcp`).
    #[serde(serialize_with = "serialize_duration")]
    pub tcp: Duration,
    /// A TCP flow after a RST in either direction or a FIN in both
    /// (`tcp_closing`).
    #[serde(serialize_with = "serialize_duration")]
    pub tcp_closing: Duration,
    /// A TCP flow whose backend never answered (`tcp_unreplied`).
    #[serde(serialize_with = "serialize_duration")]
    pub tcp_unreplied: Duration,
    /// A UDP flow (`udp`).
    #[serde(serialize_with = "serialize_duration")]
    pub udp: Duration,
}

impl FlowTimeouts {
    /// The defaults: 2h, 10s, 60s, 60s.
    pub const DEFAULT: Self = Self {
        tcp: Duration::from_hours(2),
        tcp_closing: Duration::from_secs(10),
        tcp_unreplied: Duration::from_mins(1),
        udp: Duration::from_mins(1),
    };
    /// Default `xdp.flow_gc_interval`.
    pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(10);
    /// Bounds of every timeout and of the interval: at least 1 s (the
    /// kernel refreshes a flow's `last_seen` once a second), at most 7 days.
    pub const MIN: Duration = Duration::from_secs(1);
    /// See [`Self::MIN`].
    pub const MAX: Duration = Duration::from_hours(7 * 24);
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl XdpSettings {
    /// The configured interface names, in order.
    pub fn interface_names(&self) -> Vec<String> {
        self.interfaces.iter().map(|i| i.name.clone()).collect()
    }
}

/// One entry of `xdp.interfaces`, with the block's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XdpInterface {
    /// The interface name.
    pub name: String,
    /// Which hook is asked for (`hook`).
    pub hook: XdpHook,
    /// Which XDP attach mode is asked for (`mode`; `auto` with `hook: tc`).
    pub mode: XdpAttachMode,
}

impl XdpInterface {
    /// `name` with the default hook and mode (both auto).
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            hook: XdpHook::Auto,
            mode: XdpAttachMode::Auto,
        }
    }
}

/// Where the forwarder runs on an interface (`xdp.hook`, `interfaces[].hook`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpHook {
    /// daas-lb decides per device (see `policy::hook`; the default).
    Auto,
    /// XDP, in the `mode` asked for.
    Xdp,
    /// tc ingress (a tcx link, or clsact on kernels before 6.6).
    Tc,
}

/// How the XDP program is attached (`xdp.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// With `hook: auto`: daas-lb decides. With `hook: xdp`: native if the
    /// driver takes it, generic otherwise (the default).
    Auto,
    /// Native (driver) XDP only; attaching fails if the driver lacks it.
    Driver,
    /// Generic (skb) XDP, in the network stack: attaches to every interface
    /// and sees complete checksums, but passes TSO super-packets (larger
    /// than the MTU) to the stack, so bulk TCP from a local veth sender
    /// with default offloads stalls; tc handles those.
    Skb,
}

/// An inclusive port range, written `first-last` in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port (at least 1).
    pub first: u16,
    /// Last port (at least `first`).
    pub last: u16,
}

/// One virtual address (VIP) and the servers connections to it are sent to.
///
/// Serialized (for `check-config` and tests) like the file;
/// `maglev_table_size` only with `policy: spread`, so that the output of a
/// failover service reads back.
#[derive(Debug, Clone, PartialEq)]
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
    /// The entries of `servers` written as DNS names (`name:port`,
    /// `https://name[:port]`), in file order. The file's literal addresses
    /// are in `servers`; at runtime the controller adds each name's
    /// current addresses (of the VIP's family) to `servers`.
    pub server_names: Vec<ServerName>,
    /// `default_server` written as a DNS name; at runtime `default_server`
    /// is its first address of the VIP's family.
    pub default_server_name: Option<ServerName>,
    /// How a new connection's server is picked (`policy`, default failover).
    pub policy: Policy,
    /// Maglev table slots (a prime); only used with [`Policy::Spread`]
    /// (`maglev_table_size`, default
    /// [`ServiceConfig::DEFAULT_MAGLEV_TABLE_SIZE`]).
    pub maglev_table_size: u32,
    /// How servers are checked.
    pub health_check: HealthCheckConfig,
    /// Whether the XDP program forwards remote clients' packets to this VIP
    /// (`remote`, default false; needs the `xdp` block).
    pub remote: bool,
    /// Whether the kernel watches this service's TCP connects: skips a
    /// backend whose dial just failed and reports every dial's outcome
    /// (`dial_tracking`, default true; TCP only).
    pub dial_tracking: bool,
    /// How long a SYN to a server may wait with no dial to it completing
    /// before the kernel stops sending new connects there
    /// (`dial_stall_timeout`, default `auto`; TCP).
    pub dial_stall_timeout: DialStall,
    /// Servers discovered on chain besides `servers` (`discovery`; needs
    /// the `chain` block).
    pub discovery: Option<DiscoveryConfig>,
    /// What carries the service's connections (`dataplane`, default
    /// `ebpf`): the kernel's connect hook, or the daemon as a proxy
    /// listening on the VIP.
    pub dataplane: ServiceDataplane,
    /// Proxy mode: how long one dial to a server may take before the next
    /// server is dialed (`dial_timeout`, default
    /// [`ServiceConfig::DEFAULT_DIAL_TIMEOUT`], K3s's).
    pub dial_timeout: Duration,
    /// Proxy mode: TCP keepalive of the connections to the servers
    /// (`keepalive`, default [`ServiceConfig::DEFAULT_KEEPALIVE`], K3s's;
    /// `0s`: off).
    pub keepalive: Duration,
}

/// What carries a service's connections (`dataplane`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceDataplane {
    /// The kernel: the cgroup connect hook sends each connect to the
    /// selected server (the default).
    Ebpf,
    /// The daemon listens on the VIP and proxies each connection, dialing
    /// the servers in the state machine's order as K3s's agent load
    /// balancer does (TCP only).
    Proxy,
}

config_words!(pub ServiceDataplane, "dataplane", { Ebpf => "ebpf", Proxy => "proxy" });

/// A service's `dial_stall_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialStall {
    /// `auto`: derived from the servers' normal dial time
    /// ([`crate::policy::dial_stall`]).
    Auto,
    /// A fixed bound; zero turns stall detection off.
    Fixed(Duration),
}

impl fmt::Display for DialStall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(bound) => write!(f, "{}", humantime::format_duration(*bound)),
        }
    }
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

/// How a service picks the backend of a new connection (`policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// K3s semantics: every new connection goes to the selected server
    /// (the default).
    Failover,
    /// Maglev consistent hashing over the servers in healthy, preferred or
    /// active state.
    Spread,
}

/// Health checking of a service's servers: the `health_check` block.
///
/// ```yaml
/// health_check:
///   profile: k3s        # optional; the only profile: every interval 1s
///   kind: http          # tcp | udp | http | https | all
///   interval: 2s        # optional: every state's interval
///   intervals: { recovering: 1s, failed: 10s }   # optional, any subset
///   timeout: 1s
///   jitter: 10%         # or a plain number
///   path: /healthz      # http and https only, like port, host,
///   port: 8080          # expected_status and body_contains
///   host: api.example
///   expected_status: [200, 204]
///   body_contains: ok
///   ca_file: /etc/daas-lb/ca.pem   # https only
///   insecure: false                # https only
/// ```
///
/// Intervals are taken from the profile (or [`Intervals::DEFAULT`]), then
/// `interval`, then each `intervals.<state>`. With `kind: all`, `checks`
/// lists the checks that must all pass, each with its `kind` (not `all`)
/// and that kind's fields.
///
/// Serialized (for `check-config` and tests) in the same shape as it is
/// written, with the check's fields next to `timeout`, `intervals` and
/// `jitter`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckConfig {
    /// What a check does (`kind` and the kind's fields).
    #[serde(flatten)]
    pub check: CheckSpec,
    /// Per-probe timeout (`timeout`, default 1s, shortened to the shortest
    /// interval if that is shorter); bounds the whole check.
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    /// Time between checks of one server, by its state.
    pub intervals: Intervals,
    /// Each wait is stretched or shortened by a random amount up to this
    /// percentage (`jitter`, default 10, 0 to 50).
    #[serde(rename = "jitter", serialize_with = "serialize_percent")]
    pub jitter_percent: u8,
}

/// What one health check of a server does (`health_check.kind`).
///
/// Serialized as a mapping with `kind` (`tcp`, `udp`, `http`, `https` or
/// `all`) and the kind's fields, like the file.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckSpec {
    /// `tcp`: a TCP connect to the server must succeed within the timeout.
    Tcp,
    /// `udp`: an empty datagram is sent; the server passes unless an ICMP
    /// error comes back within the timeout.
    Udp,
    /// `http` or `https` (when [`HttpCheck::tls`] is set): a GET request
    /// must be answered with an expected status (and body).
    Http(HttpCheck),
    /// `sui_sync`: the server's own Sui full node (a discovered server's
    /// registry `sui_rpc`, a configured server's own address) must be on
    /// the reference chain and in sync with it.
    SuiSync(SuiSyncCheck),
    /// `nautilus`: the server's node must hold a verified, fresh
    /// performance attestation signed by its current on-chain enclave.
    Nautilus(NautilusCheck),
    /// `all`: every listed check must pass; never nested.
    All(Vec<CheckSpec>),
}

/// A `nautilus` check: the node's Nautilus enclave (its registry
/// `nautilus_url` and `enclave_id`) must be registered under the `chain`
/// block's `enclave_config`, report its on-chain key, and sign a fresh
/// performance attestation of the node (see [`crate::nautilus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct NautilusCheck {
    /// How long a verdict is reused before the enclave and the chain are
    /// asked again (`cache_ttl`, default 30s or `max_age` when shorter, 0s
    /// = never reused, at most `max_age`).
    #[serde(serialize_with = "serialize_duration")]
    pub cache_ttl: Duration,
    /// How far the signed timestamp may be from now (`max_age`, default 1m,
    /// 1s to 24h).
    #[serde(serialize_with = "serialize_duration")]
    pub max_age: Duration,
    /// The lowest accepted performance score in basis points
    /// (`min_performance_score`, default 0, 0 to 10000).
    pub min_performance_score: u64,
    /// The intent scope the signed message must carry (`intent`, default
    /// 0, 0 to 255).
    pub intent: u8,
    /// Also fetch `/get_attestation` and verify the Nitro attestation
    /// document against the AWS root, the config's PCRs and the on-chain
    /// key (`verify_attestation_document`, default false).
    pub verify_attestation_document: bool,
}

impl NautilusCheck {
    /// Default `cache_ttl`.
    pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);
    /// Default `max_age`.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_mins(1);
    /// The check with every default.
    pub const DEFAULT: Self = Self {
        cache_ttl: Self::DEFAULT_CACHE_TTL,
        max_age: Self::DEFAULT_MAX_AGE,
        min_performance_score: 0,
        intent: 0,
        verify_attestation_document: false,
    };
}

impl Default for NautilusCheck {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A `sui_sync` check: `GetServiceInfo` on a server's own Sui full node
/// against reference full nodes.
///
/// The server's full node: a discovered server's registry `sui_rpc`; a
/// configured (static) server is itself a full node, reached at
/// `<scheme>://<server IP>:<port>`. The references: the check's own
/// `reference_rpc_urls`, else the `chain` block's
/// ([`Config::reference_urls`]), else (no `chain` block) the pool: the
/// service's own servers, the highest checkpoint among those on the
/// majority chain being the reference (see [`crate::health::sui_sync`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SuiSyncCheck {
    /// Most checkpoints the node may be behind the highest reference
    /// (`max_checkpoint_lag`, default 10).
    pub max_checkpoint_lag: u64,
    /// Oldest its latest checkpoint may be (`max_sync_age`, default 30s).
    #[serde(serialize_with = "serialize_duration")]
    pub max_sync_age: Duration,
    /// Longest its answer may take (`max_response_time`, default 2s; the
    /// check's `timeout` bounds it too).
    #[serde(serialize_with = "serialize_duration")]
    pub max_response_time: Duration,
    /// How a configured server's own gRPC is reached (`scheme`, default
    /// `http`); discovered servers use their registry `sui_rpc` as is.
    #[serde(serialize_with = "serialize_display")]
    pub scheme: RpcScheme,
    /// The reference full nodes of this check (`reference_rpc_urls`,
    /// default none: the `chain` block's, or the pool without one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reference_rpc_urls: Vec<String>,
}

/// How a configured server's own Sui full node is reached
/// (`health_check.scheme` of `kind: sui_sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RpcScheme {
    /// Plain HTTP/2 (the default).
    #[default]
    Http,
    /// TLS; the certificate must be valid for the server's IP address
    /// (the URL carries no name).
    Https,
}

config_words!(pub RpcScheme, "scheme", { Http => "http", Https => "https" });

impl SuiSyncCheck {
    /// Default `max_checkpoint_lag`.
    pub const DEFAULT_MAX_CHECKPOINT_LAG: u64 = 10;
    /// Default `max_sync_age`.
    pub const DEFAULT_MAX_SYNC_AGE: Duration = Duration::from_secs(30);
    /// Default `max_response_time`.
    pub const DEFAULT_MAX_RESPONSE_TIME: Duration = Duration::from_secs(2);
    /// The check with every default.
    pub const DEFAULT: Self = Self {
        max_checkpoint_lag: Self::DEFAULT_MAX_CHECKPOINT_LAG,
        max_sync_age: Self::DEFAULT_MAX_SYNC_AGE,
        max_response_time: Self::DEFAULT_MAX_RESPONSE_TIME,
        scheme: RpcScheme::Http,
        reference_rpc_urls: Vec::new(),
    };
}

impl Default for SuiSyncCheck {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// An `http` or `https` check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpCheck {
    /// `Some(..)` for kind `https`.
    pub tls: Option<TlsOptions>,
    /// Request path (`path`), default `/`, must start with `/`. May include
    /// a query.
    pub path: String,
    /// Port to probe (`port`); `None` = the server's own port.
    pub port: Option<u16>,
    /// `Host` header and TLS server name (`host`); `None` = the server's IP.
    /// The connection always goes to the server's IP.
    pub host: Option<String>,
    /// Accepted status codes (`expected_status`), default `[200]`; each 100
    /// to 599. Redirects are not followed: a 3xx is judged like any status.
    pub expected_status: Vec<u16>,
    /// The body must contain this substring (`body_contains`); only the
    /// first [`HttpCheck::BODY_LIMIT`] bytes of the body are read.
    pub body_contains: Option<String>,
}

/// TLS settings of an `https` check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) to trust instead of the built-in
    /// web PKI roots (`ca_file`, an absolute path).
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate (`insecure`, default false); not
    /// allowed together with `ca_file`.
    pub insecure: bool,
}

/// Time between checks of one server, by its state (`health_check.intervals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Intervals {
    /// The selected server.
    #[serde(serialize_with = "serialize_duration")]
    pub active: Duration,
    /// A preferred server (after recovery).
    #[serde(serialize_with = "serialize_duration")]
    pub preferred: Duration,
    /// A passing server that is not selected.
    #[serde(serialize_with = "serialize_duration")]
    pub healthy: Duration,
    /// A server recovering after a failure.
    #[serde(serialize_with = "serialize_duration")]
    pub recovering: Duration,
    /// A failed server.
    #[serde(serialize_with = "serialize_duration")]
    pub failed: Duration,
    /// Every other state: invalid, standby and unchecked.
    #[serde(serialize_with = "serialize_duration")]
    pub other: Duration,
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
    /// Default for `control_socket`.
    pub const DEFAULT_CONTROL_SOCKET: &str = "/run/daas-lb/control.sock";
    /// Longest `control_socket` path: `sun_path` holds 108 bytes with the NUL.
    pub const MAX_SOCKET_PATH: usize = 107;
    /// Most services one configuration may hold (the kernel map's capacity).
    pub const MAX_SERVICES: usize = lb_common::MAX_SERVICES as usize;
    /// Most distinct (service, server) pairs in total, `default_server`
    /// included (backend id 0 means "no backend").
    pub const MAX_BACKENDS: usize = lb_common::MAX_BACKENDS as usize - 1;
    /// Default for `max_concurrent_checks`.
    pub const DEFAULT_MAX_CONCURRENT_CHECKS: usize = 64;
    /// Largest accepted `max_concurrent_checks`.
    pub const MAX_CONCURRENT_CHECKS: usize = 4096;
    /// Default for `connection_poll_interval`.
    pub const DEFAULT_CONNECTION_POLL_INTERVAL: Duration = Duration::from_millis(200);
    /// Shortest accepted `connection_poll_interval`.
    pub const MIN_CONNECTION_POLL_INTERVAL: Duration = Duration::from_millis(10);
    /// Longest accepted `connection_poll_interval`.
    pub const MAX_CONNECTION_POLL_INTERVAL: Duration = Duration::from_secs(10);
    /// Default for `dns_refresh`.
    pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);
    /// Shortest accepted `dns_refresh`.
    pub const MIN_DNS_REFRESH: Duration = Duration::from_secs(1);
    /// Longest accepted `dns_refresh`.
    pub const MAX_DNS_REFRESH: Duration = Duration::from_hours(1);
    /// All spread services' tables together must fit the kernel's `maglev`
    /// map: the sum of their `maglev_table_size` is at most this.
    pub const MAX_MAGLEV_SLOTS: u32 = lb_common::MAX_MAGLEV_SLOTS;

    /// The reference full nodes of `sui_sync` checks: `reference_rpc_urls`,
    /// or the registry's full node when none is listed (none without `chain`).
    pub fn reference_urls(&self) -> Vec<String> {
        match &self.chain {
            None => Vec::new(),
            Some(chain) if chain.reference_rpc_urls.is_empty() => vec![chain.sui_rpc_url.clone()],
            Some(chain) => chain.reference_rpc_urls.clone(),
        }
    }

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
            Some(config) if checker.issues.is_empty() => Ok(config),
            _ => Err(anyhow!("{}", checker.render(origin))),
        }
    }
}

impl ChainSettings {
    /// Default `discovery_interval`.
    pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_mins(5);
}

impl RegistrySettings {
    /// Default `module`.
    pub const DEFAULT_MODULE: &str = "registry";
}

impl Protocol {
    /// The IP protocol number (`IPPROTO_TCP` or `IPPROTO_UDP`).
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::PROTO_TCP,
            Self::Udp => lb_common::PROTO_UDP,
        }
    }
}

config_words!(pub Protocol, "protocol", { Tcp => "tcp", Udp => "udp" });

impl ServiceConfig {
    /// Default `maglev_table_size`: a prime, enough for 163 servers at 100
    /// slots each.
    pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16381;
    /// Largest accepted `maglev_table_size` (a prime).
    pub const MAX_MAGLEV_TABLE_SIZE: u32 = 65537;
    /// Largest accepted fixed `dial_stall_timeout`.
    pub const MAX_DIAL_STALL_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `dial_timeout` (proxy mode): K3s's dialer timeout.
    pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
    /// Bounds of `dial_timeout`.
    pub const MIN_DIAL_TIMEOUT: Duration = Duration::from_millis(10);
    /// See [`Self::MIN_DIAL_TIMEOUT`].
    pub const MAX_DIAL_TIMEOUT: Duration = Duration::from_mins(5);
    /// Default `keepalive` (proxy mode): K3s's dialer keepalive.
    pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);
    /// Largest accepted `keepalive`.
    pub const MAX_KEEPALIVE: Duration = Duration::from_hours(2);
    /// Maglev spreads connections evenly only with at least this many table
    /// slots per server.
    pub const MIN_MAGLEV_SLOTS_PER_SERVER: u32 = 100;
}

impl Serialize for ServiceConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Destructured so that a new field cannot be forgotten here.
        let Self {
            name,
            vip,
            protocol,
            servers,
            default_server,
            server_names,
            default_server_name,
            policy,
            maglev_table_size,
            health_check,
            remote,
            dial_tracking,
            dial_stall_timeout,
            discovery,
            dataplane,
            dial_timeout,
            keepalive,
        } = self;
        let spread = *policy == Policy::Spread;
        let proxy = *dataplane == ServiceDataplane::Proxy;
        let fields =
            11 + usize::from(spread) + usize::from(discovery.is_some()) + 2 * usize::from(proxy);
        let mut service = serializer.serialize_struct("ServiceConfig", fields)?;
        service.serialize_field("name", name)?;
        service.serialize_field("vip", vip)?;
        service.serialize_field("protocol", protocol)?;
        // As written: the literal addresses, then the names.
        let written: Vec<String> = servers
            .iter()
            .map(ToString::to_string)
            .chain(server_names.iter().map(ToString::to_string))
            .collect();
        service.serialize_field("servers", &written)?;
        let default = default_server_name
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| default_server.map(|address| address.to_string()));
        service.serialize_field("default_server", &default)?;
        service.serialize_field("policy", policy)?;
        if spread {
            service.serialize_field("maglev_table_size", maglev_table_size)?;
        } else {
            service.skip_field("maglev_table_size")?;
        }
        service.serialize_field("health_check", health_check)?;
        service.serialize_field("remote", remote)?;
        service.serialize_field("dial_tracking", dial_tracking)?;
        service.serialize_field("dial_stall_timeout", &dial_stall_timeout.to_string())?;
        if let Some(discovery) = discovery {
            service.serialize_field("discovery", discovery)?;
        } else {
            service.skip_field("discovery")?;
        }
        service.serialize_field("dataplane", dataplane)?;
        if proxy {
            service.serialize_field(
                "dial_timeout",
                &humantime::format_duration(*dial_timeout).to_string(),
            )?;
            service.serialize_field(
                "keepalive",
                &humantime::format_duration(*keepalive).to_string(),
            )?;
        } else {
            service.skip_field("dial_timeout")?;
            service.skip_field("keepalive")?;
        }
        service.end()
    }
}

config_words!(pub Policy, "policy", { Failover => "failover", Spread => "spread" });

config_words!(pub XdpAttachMode, "xdp mode", { Auto => "auto", Driver => "driver", Skb => "skb" });

config_words!(pub XdpHook, "hook", { Auto => "auto", Xdp => "xdp", Tc => "tc" });

config_words!(pub KernelLog, "kernel_log level", { Off => "off", Warn => "warn", Debug => "debug" });

impl PortRange {
    /// Default `xdp.snat_ports`: above Linux's default ephemeral range
    /// (32768-60999), so replies to the node's own connections are never
    /// taken for XDP flows.
    pub const DEFAULT_SNAT: Self = Self {
        first: 61000,
        last: 65535,
    };

    /// Whether the two ranges share a port.
    pub const fn overlaps(self, other: Self) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl HealthCheckConfig {
    /// Default `timeout` (or the shortest interval, if that is shorter).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    /// Shortest accepted interval.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
    /// Default `jitter`, in percent.
    pub const DEFAULT_JITTER_PERCENT: u8 = 10;
    /// Largest accepted `jitter`, in percent.
    pub const MAX_JITTER_PERCENT: u8 = 50;

    /// The health check used when a service has no `health_check` block:
    /// `tcp` for tcp services, `udp` for udp ones, default intervals, 1s
    /// timeout, 10% jitter.
    pub const fn default_for(protocol: Protocol) -> Self {
        Self {
            check: CheckSpec::default_for(protocol),
            timeout: Self::DEFAULT_TIMEOUT,
            intervals: Intervals::DEFAULT,
            jitter_percent: Self::DEFAULT_JITTER_PERCENT,
        }
    }
}

impl CheckSpec {
    /// The kind used when `health_check.kind` is not given.
    pub const fn default_for(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Tcp => Self::Tcp,
            Protocol::Udp => Self::Udp,
        }
    }

    /// The `kind` word used in the configuration file.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Http(HttpCheck { tls: None, .. }) => "http",
            Self::Http(HttpCheck { tls: Some(_), .. }) => "https",
            Self::SuiSync(_) => "sui_sync",
            Self::Nautilus(_) => "nautilus",
            Self::All(_) => "all",
        }
    }
}

impl Serialize for CheckSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", self.kind())?;
        match self {
            Self::Tcp | Self::Udp => {}
            Self::Http(http) => {
                map.serialize_entry("path", &http.path)?;
                if let Some(port) = http.port {
                    map.serialize_entry("port", &port)?;
                }
                if let Some(host) = &http.host {
                    map.serialize_entry("host", host)?;
                }
                map.serialize_entry("expected_status", &http.expected_status)?;
                if let Some(body) = &http.body_contains {
                    map.serialize_entry("body_contains", body)?;
                }
                if let Some(tls) = &http.tls {
                    if let Some(ca_file) = &tls.ca_file {
                        map.serialize_entry("ca_file", ca_file)?;
                    }
                    map.serialize_entry("insecure", &tls.insecure)?;
                }
            }
            Self::SuiSync(sui) => {
                map.serialize_entry("max_checkpoint_lag", &sui.max_checkpoint_lag)?;
                map.serialize_entry(
                    "max_sync_age",
                    &humantime::format_duration(sui.max_sync_age).to_string(),
                )?;
                map.serialize_entry(
                    "max_response_time",
                    &humantime::format_duration(sui.max_response_time).to_string(),
                )?;
                map.serialize_entry("scheme", sui.scheme.as_str())?;
                if !sui.reference_rpc_urls.is_empty() {
                    map.serialize_entry("reference_rpc_urls", &sui.reference_rpc_urls)?;
                }
            }
            Self::Nautilus(nautilus) => {
                map.serialize_entry(
                    "cache_ttl",
                    &humantime::format_duration(nautilus.cache_ttl).to_string(),
                )?;
                map.serialize_entry(
                    "max_age",
                    &humantime::format_duration(nautilus.max_age).to_string(),
                )?;
                map.serialize_entry("min_performance_score", &nautilus.min_performance_score)?;
                map.serialize_entry("intent", &nautilus.intent)?;
                map.serialize_entry(
                    "verify_attestation_document",
                    &nautilus.verify_attestation_document,
                )?;
            }
            Self::All(checks) => map.serialize_entry("checks", checks)?,
        }
        map.end()
    }
}

impl HttpCheck {
    /// Default `path`.
    pub const DEFAULT_PATH: &str = "/";
    /// Default `expected_status`.
    pub const DEFAULT_STATUS: u16 = 200;
    /// How much of the body is searched for `body_contains`.
    pub const BODY_LIMIT: usize = 64 * 1024;

    /// An `http` check of `/` on the server's own port, expecting 200.
    pub fn new() -> Self {
        Self {
            tls: None,
            path: Self::DEFAULT_PATH.to_owned(),
            port: None,
            host: None,
            expected_status: vec![Self::DEFAULT_STATUS],
            body_contains: None,
        }
    }
}

impl Default for HttpCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl Intervals {
    /// The intervals used without profile and overrides: active 5s,
    /// preferred 10s, healthy 10s, recovering 3s, failed 30s, other 15s.
    pub const DEFAULT: Self = Self {
        active: Duration::from_secs(5),
        preferred: Duration::from_secs(10),
        healthy: Duration::from_secs(10),
        recovering: Duration::from_secs(3),
        failed: Duration::from_secs(30),
        other: Duration::from_secs(15),
    };
    /// `profile: k3s`: 1s in every state, like the K3s agent load balancer.
    pub const K3S: Self = Self::uniform(Duration::from_secs(1));
    /// The names of the states in `intervals`, in field order.
    pub const STATE_NAMES: [&str; 6] = [
        "active",
        "preferred",
        "healthy",
        "recovering",
        "failed",
        "other",
    ];

    /// The same interval in every state.
    pub const fn uniform(interval: Duration) -> Self {
        Self {
            active: interval,
            preferred: interval,
            healthy: interval,
            recovering: interval,
            failed: interval,
            other: interval,
        }
    }

    /// The interval for a server in `state`; `other` covers invalid,
    /// standby and unchecked.
    pub const fn for_state(&self, state: ServerState) -> Duration {
        match state {
            ServerState::Active => self.active,
            ServerState::Preferred => self.preferred,
            ServerState::Healthy => self.healthy,
            ServerState::Recovering => self.recovering,
            ServerState::Failed => self.failed,
            ServerState::Invalid | ServerState::Standby | ServerState::Unchecked => self.other,
        }
    }

    /// The shortest interval of all states.
    pub fn shortest(&self) -> Duration {
        self.entries()
            .into_iter()
            .map(|(_, interval)| interval)
            .min()
            .unwrap_or(self.other)
    }

    /// Every state name of [`Intervals::STATE_NAMES`] with its interval.
    pub const fn entries(&self) -> [(&'static str, Duration); 6] {
        let names = Self::STATE_NAMES;
        [
            (names[0], self.active),
            (names[1], self.preferred),
            (names[2], self.healthy),
            (names[3], self.recovering),
            (names[4], self.failed),
            (names[5], self.other),
        ]
    }
}

impl Default for Intervals {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Shows durations the way they are written in the file ("1s", "500ms").
fn serialize_duration<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

/// Shows a value with its `Display` (addresses as `0x` + 64 hex digits).
fn serialize_display<S: Serializer, T: fmt::Display>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Shows an optional value with its `Display` (`None` is skipped).
#[expect(
    clippy::ref_option,
    reason = "serde's serialize_with passes a reference to the field"
)]
fn serialize_option_display<S: Serializer, T: fmt::Display>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

/// Shows a percentage the way it is written in the file ("10%").
#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with passes a reference"
)]
fn serialize_percent<S: Serializer>(percent: &u8, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{percent}%"))
}

impl Config {
    /// What is valid but almost certainly not meant, one sentence each
    /// naming the service: a service that refuses every connect, `remote`
    /// on a loopback VIP. `daas-lb run` logs them (`warn!`) at every load,
    /// `daas-lb check-config` prints them as `warning: …` on stderr.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (index, service) in self.services.iter().enumerate() {
            let name = format!("services[{index}] ({}, vip {})", service.name, service.vip);
            // A discovery service's servers come from the chain after the start.
            if service.servers.is_empty()
                && service.server_names.is_empty()
                && service.default_server.is_none()
                && service.default_server_name.is_none()
                && service.discovery.is_none()
            {
                warnings.push(format!(
                    "{name}: no servers and no default_server: every connect will be refused"
                ));
            }
            if service.remote && service.vip.ip().is_loopback() {
                warnings.push(format!(
                    "{name}: remote: true on a loopback VIP: packets from remote clients never carry it"
                ));
            }
        }
        warnings
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
