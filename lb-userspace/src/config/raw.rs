//! The file as written: private structs that keep every value with its
//! position, and the parse step that turns serde-saphyr's errors into an
//! [`Issue`].

use std::{borrow::Cow, fmt};

use serde::{Deserialize, Deserializer, de};
use serde_saphyr::{
    Localizer, Location, MessageFormatter, SnippetMode, Spanned, UserMessageFormatter,
};

use super::{Issue, field_path::field_path_at};

/// Top level of the file. Scalars are read as strings and converted by
/// [`Checker`](super::validate::Checker), so that bad values are reported
/// with their path and all together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) bpffs_dir: Option<Spanned<String>>,
    pub(super) cgroup: Option<Spanned<String>>,
    pub(super) data_dir: Option<Spanned<String>>,
    pub(super) metrics_addr: Option<Spanned<String>>,
    pub(super) api_addr: Option<Spanned<String>>,
    pub(super) control_socket: Option<Spanned<String>>,
    pub(super) control_group: Option<Spanned<String>>,
    pub(super) api_token_file: Option<Spanned<String>>,
    pub(super) services: Option<Spanned<Vec<Spanned<RawService>>>>,
    pub(super) max_concurrent_checks: Option<Spanned<String>>,
    pub(super) connection_poll_interval: Option<Spanned<String>>,
    pub(super) dns_refresh: Option<Spanned<String>>,
    pub(super) xdp: Option<Spanned<RawXdp>>,
    pub(super) chain: Option<Spanned<RawChain>>,
    pub(super) k3s: Option<Spanned<RawK3s>>,
    pub(super) features: Option<Spanned<RawFeatures>>,
    pub(super) kernel_log: Option<Spanned<String>>,
    pub(super) dataplane: Option<Spanned<String>>,
    pub(super) http_proxy_allowed: Option<Spanned<String>>,
}

/// The `features` block.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeatures {
    pub(super) nautilus_health_checks: Option<Spanned<String>>,
    pub(super) blockchain_discovery: Option<Spanned<String>>,
    pub(super) stake_validation: Option<Spanned<String>>,
    pub(super) performance_ranking: Option<Spanned<String>>,
    pub(super) stake_weight: Option<Spanned<String>>,
}

/// The `k3s` block.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawK3s {
    pub(super) data_dir: Option<Spanned<String>>,
    pub(super) program: Option<Spanned<String>>,
    pub(super) lb_server_port: Option<Spanned<String>>,
    pub(super) ipv6: Option<Spanned<String>>,
    pub(super) balancers: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) reread_interval: Option<Spanned<String>>,
}

/// The `chain` block.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChain {
    pub(super) sui_rpc_url: Option<Spanned<String>>,
    pub(super) reference_rpc_urls: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) registry: Option<Spanned<RawRegistry>>,
    pub(super) min_stake_mist: Option<Spanned<String>>,
    pub(super) discovery_interval: Option<Spanned<String>>,
    pub(super) enclave_config: Option<Spanned<String>>,
}

/// `chain.registry`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub(super) package: Option<Spanned<String>>,
    pub(super) module: Option<Spanned<String>>,
    pub(super) object: Option<Spanned<String>>,
}

/// A service's `discovery` block.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    pub(super) source: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<RawDiscoveryPort>>,
    pub(super) max_servers: Option<Spanned<String>>,
}

/// `discovery.port`: a number, or `{ from_chain_id, kind }`.
pub(super) enum RawDiscoveryPort {
    Number(String),
    Chain(RawChainPort),
}

/// `discovery.port` as a mapping.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChainPort {
    pub(super) from_chain_id: Option<Spanned<String>>,
    pub(super) kind: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawDiscoveryPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DiscoveryPortVisitor)
    }
}

/// Reads a scalar as [`RawDiscoveryPort::Number`] (checked later) and a
/// mapping as [`RawChainPort`].
struct DiscoveryPortVisitor;

impl<'de> de::Visitor<'de> for DiscoveryPortVisitor {
    type Value = RawDiscoveryPort;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number or a mapping { from_chain_id, kind }")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(RawDiscoveryPort::Number(value.to_string()))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(RawDiscoveryPort::Number(value.to_string()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Ok(RawDiscoveryPort::Number(value.to_string()))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(RawDiscoveryPort::Number(value.to_string()))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(RawDiscoveryPort::Number(value.to_owned()))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        RawChainPort::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(RawDiscoveryPort::Chain)
    }
}

/// The `xdp` block.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXdp {
    pub(super) interfaces: Option<Spanned<Vec<Spanned<RawInterface>>>>,
    pub(super) hook: Option<Spanned<String>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) snat_ipv4: Option<Spanned<String>>,
    pub(super) snat_ipv6: Option<Spanned<String>>,
    pub(super) snat_ports: Option<Spanned<String>>,
    pub(super) flow_timeouts: Option<Spanned<RawFlowTimeouts>>,
    pub(super) flow_gc_interval: Option<Spanned<String>>,
}

/// `xdp.flow_timeouts`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlowTimeouts {
    pub(super) tcp: Option<Spanned<String>>,
    pub(super) tcp_closing: Option<Spanned<String>>,
    pub(super) tcp_unreplied: Option<Spanned<String>>,
    pub(super) udp: Option<Spanned<String>>,
}

/// One entry of `xdp.interfaces`: a name, or `{ name, hook, mode }`.
pub(super) enum RawInterface {
    Name(String),
    Map(Box<RawInterfaceMap>),
}

/// An `xdp.interfaces` entry written as a mapping.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterfaceMap {
    pub(super) name: Option<Spanned<String>>,
    pub(super) hook: Option<Spanned<String>>,
    pub(super) mode: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawInterface {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(InterfaceVisitor)
    }
}

/// Reads a scalar as [`RawInterface::Name`] (checked later) and a mapping
/// as [`RawInterfaceMap`].
struct InterfaceVisitor;

impl<'de> de::Visitor<'de> for InterfaceVisitor {
    type Value = RawInterface;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an interface name or a mapping { name, hook, mode }")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(RawInterface::Name(value.to_string()))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(RawInterface::Name(value.to_string()))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(RawInterface::Name(value.to_owned()))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        RawInterfaceMap::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(|map| RawInterface::Map(Box::new(map)))
    }
}

/// One entry of `services`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Option<Spanned<String>>,
    pub(super) vip: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) servers: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) default_server: Option<Spanned<String>>,
    pub(super) policy: Option<Spanned<String>>,
    pub(super) maglev_table_size: Option<Spanned<String>>,
    pub(super) health_check: Option<Spanned<RawHealthCheck>>,
    pub(super) remote: Option<Spanned<String>>,
    pub(super) dial_tracking: Option<Spanned<String>>,
    pub(super) dial_stall_timeout: Option<Spanned<String>>,
    pub(super) discovery: Option<Spanned<RawDiscovery>>,
    pub(super) dataplane: Option<Spanned<String>>,
    pub(super) dial_timeout: Option<Spanned<String>>,
    pub(super) keepalive: Option<Spanned<String>>,
}

/// A service's `health_check` block. The fields of `http`/`https` checks
/// are repeated in [`RawCheckPart`] because serde cannot flatten a struct
/// that denies unknown fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub(super) profile: Option<Spanned<String>>,
    pub(super) kind: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) intervals: Option<Spanned<RawIntervals>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) jitter: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) expected_status: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) body_contains: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) insecure: Option<Spanned<String>>,
    pub(super) max_checkpoint_lag: Option<Spanned<String>>,
    pub(super) max_sync_age: Option<Spanned<String>>,
    pub(super) max_response_time: Option<Spanned<String>>,
    pub(super) scheme: Option<Spanned<String>>,
    pub(super) reference_rpc_urls: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) cache_ttl: Option<Spanned<String>>,
    pub(super) max_age: Option<Spanned<String>>,
    pub(super) min_performance_score: Option<Spanned<String>>,
    pub(super) intent: Option<Spanned<String>>,
    pub(super) verify_attestation_document: Option<Spanned<String>>,
    pub(super) checks: Option<Spanned<Vec<Spanned<RawCheckPart>>>>,
}

/// `health_check.intervals`: any subset of the states.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntervals {
    pub(super) active: Option<Spanned<String>>,
    pub(super) preferred: Option<Spanned<String>>,
    pub(super) healthy: Option<Spanned<String>>,
    pub(super) recovering: Option<Spanned<String>>,
    pub(super) failed: Option<Spanned<String>>,
    pub(super) other: Option<Spanned<String>>,
}

/// One entry of `health_check.checks` (with `kind: all`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheckPart {
    pub(super) kind: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) expected_status: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) body_contains: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) insecure: Option<Spanned<String>>,
    pub(super) max_checkpoint_lag: Option<Spanned<String>>,
    pub(super) max_sync_age: Option<Spanned<String>>,
    pub(super) max_response_time: Option<Spanned<String>>,
    pub(super) scheme: Option<Spanned<String>>,
    pub(super) reference_rpc_urls: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) cache_ttl: Option<Spanned<String>>,
    pub(super) max_age: Option<Spanned<String>>,
    pub(super) min_performance_score: Option<Spanned<String>>,
    pub(super) intent: Option<Spanned<String>>,
    pub(super) verify_attestation_document: Option<Spanned<String>>,
}

/// The fields of a `sui_sync` check, borrowed from a [`RawHealthCheck`] or
/// a [`RawCheckPart`].
pub(super) struct RawSuiFields<'a> {
    pub(super) max_checkpoint_lag: Option<&'a Spanned<String>>,
    pub(super) max_sync_age: Option<&'a Spanned<String>>,
    pub(super) max_response_time: Option<&'a Spanned<String>>,
    pub(super) scheme: Option<&'a Spanned<String>>,
    pub(super) reference_rpc_urls: Option<&'a Spanned<Vec<Spanned<String>>>>,
}

impl RawSuiFields<'_> {
    /// The fields that were written, each with its name and position.
    pub(super) fn present(&self) -> Vec<(&'static str, Location)> {
        [
            (
                "max_checkpoint_lag",
                self.max_checkpoint_lag.map(|raw| raw.referenced),
            ),
            ("max_sync_age", self.max_sync_age.map(|raw| raw.referenced)),
            (
                "max_response_time",
                self.max_response_time.map(|raw| raw.referenced),
            ),
            ("scheme", self.scheme.map(|raw| raw.referenced)),
            (
                "reference_rpc_urls",
                self.reference_rpc_urls.map(|raw| raw.referenced),
            ),
        ]
        .into_iter()
        .filter_map(|(name, location)| Some((name, location?)))
        .collect()
    }
}

/// The fields of a `nautilus` check, borrowed from a [`RawHealthCheck`] or
/// a [`RawCheckPart`].
pub(super) struct RawNautilusFields<'a> {
    pub(super) cache_ttl: Option<&'a Spanned<String>>,
    pub(super) max_age: Option<&'a Spanned<String>>,
    pub(super) min_performance_score: Option<&'a Spanned<String>>,
    pub(super) intent: Option<&'a Spanned<String>>,
    pub(super) verify_attestation_document: Option<&'a Spanned<String>>,
}

impl RawNautilusFields<'_> {
    /// The fields that were written, each with its name and position.
    pub(super) fn present(&self) -> Vec<(&'static str, Location)> {
        [
            ("cache_ttl", self.cache_ttl),
            ("max_age", self.max_age),
            ("min_performance_score", self.min_performance_score),
            ("intent", self.intent),
            (
                "verify_attestation_document",
                self.verify_attestation_document,
            ),
        ]
        .into_iter()
        .filter_map(|(name, raw)| Some((name, raw?.referenced)))
        .collect()
    }
}

/// The fields of an `http`/`https` check, borrowed from a
/// [`RawHealthCheck`] or a [`RawCheckPart`].
pub(super) struct RawHttpFields<'a> {
    pub(super) path: Option<&'a Spanned<String>>,
    pub(super) port: Option<&'a Spanned<String>>,
    pub(super) host: Option<&'a Spanned<String>>,
    pub(super) expected_status: Option<&'a Spanned<Vec<Spanned<String>>>>,
    pub(super) body_contains: Option<&'a Spanned<String>>,
    pub(super) ca_file: Option<&'a Spanned<String>>,
    pub(super) insecure: Option<&'a Spanned<String>>,
}

impl RawHealthCheck {
    pub(super) const fn nautilus_fields(&self) -> RawNautilusFields<'_> {
        RawNautilusFields {
            cache_ttl: self.cache_ttl.as_ref(),
            max_age: self.max_age.as_ref(),
            min_performance_score: self.min_performance_score.as_ref(),
            intent: self.intent.as_ref(),
            verify_attestation_document: self.verify_attestation_document.as_ref(),
        }
    }

    pub(super) const fn sui_fields(&self) -> RawSuiFields<'_> {
        RawSuiFields {
            max_checkpoint_lag: self.max_checkpoint_lag.as_ref(),
            max_sync_age: self.max_sync_age.as_ref(),
            max_response_time: self.max_response_time.as_ref(),
            scheme: self.scheme.as_ref(),
            reference_rpc_urls: self.reference_rpc_urls.as_ref(),
        }
    }

    pub(super) fn http_fields(&self) -> RawHttpFields<'_> {
        RawHttpFields {
            path: self.path.as_ref(),
            port: self.port.as_ref(),
            host: self.host.as_ref(),
            expected_status: self.expected_status.as_ref(),
            body_contains: self.body_contains.as_ref(),
            ca_file: self.ca_file.as_ref(),
            insecure: self.insecure.as_ref(),
        }
    }
}

impl RawCheckPart {
    pub(super) const fn nautilus_fields(&self) -> RawNautilusFields<'_> {
        RawNautilusFields {
            cache_ttl: self.cache_ttl.as_ref(),
            max_age: self.max_age.as_ref(),
            min_performance_score: self.min_performance_score.as_ref(),
            intent: self.intent.as_ref(),
            verify_attestation_document: self.verify_attestation_document.as_ref(),
        }
    }

    pub(super) const fn sui_fields(&self) -> RawSuiFields<'_> {
        RawSuiFields {
            max_checkpoint_lag: self.max_checkpoint_lag.as_ref(),
            max_sync_age: self.max_sync_age.as_ref(),
            max_response_time: self.max_response_time.as_ref(),
            scheme: self.scheme.as_ref(),
            reference_rpc_urls: self.reference_rpc_urls.as_ref(),
        }
    }

    pub(super) fn http_fields(&self) -> RawHttpFields<'_> {
        RawHttpFields {
            path: self.path.as_ref(),
            port: self.port.as_ref(),
            host: self.host.as_ref(),
            expected_status: self.expected_status.as_ref(),
            body_contains: self.body_contains.as_ref(),
            ca_file: self.ca_file.as_ref(),
            insecure: self.insecure.as_ref(),
        }
    }
}

impl RawHttpFields<'_> {
    /// The fields that were written, each with its name and position, in
    /// file order of declaration.
    pub(super) fn present(&self) -> Vec<(&'static str, Location)> {
        [
            ("path", self.path.map(|raw| raw.referenced)),
            ("port", self.port.map(|raw| raw.referenced)),
            ("host", self.host.map(|raw| raw.referenced)),
            (
                "expected_status",
                self.expected_status.map(|raw| raw.referenced),
            ),
            (
                "body_contains",
                self.body_contains.map(|raw| raw.referenced),
            ),
            ("ca_file", self.ca_file.map(|raw| raw.referenced)),
            ("insecure", self.insecure.map(|raw| raw.referenced)),
        ]
        .into_iter()
        .filter_map(|(name, location)| Some((name, location?)))
        .collect()
    }
}

/// Turns a parser error into an [`Issue`] with the path of the node it
/// points at.
pub(super) fn parse_raw(text: &str) -> Result<Spanned<RawConfig>, Issue> {
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
