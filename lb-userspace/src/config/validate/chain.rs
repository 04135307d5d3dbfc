//! The `features`, `chain` and per-service `discovery` blocks (with its
//! `max_servers` cap), and what they need from each other (a chain for
//! discovery, an enclave config for `nautilus` checks).

use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::{ChainContext, Checker, MAX_DISCOVERY_INTERVAL, MIN_DISCOVERY_INTERVAL, ServiceDraft};
use crate::config::{
    ChainPort, ChainPortKind, ChainSettings, Config, DiscoveryConfig, DiscoveryPort, Features,
    MIST_PER_SUI, RegistrySettings, StakeWeight,
    raw::{RawChain, RawDiscovery, RawDiscoveryPort, RawFeatures, RawRegistry},
};

impl Checker {
    /// The `features` block; `chain`: whether there is a `chain` block.
    pub(super) fn features(&mut self, raw: &Spanned<RawFeatures>, chain: bool) -> Option<Features> {
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
    pub(super) fn chain(
        &mut self,
        raw: &Spanned<RawChain>,
        stake_off: bool,
    ) -> Option<ChainSettings> {
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
            Some(list) => self.reference_rpc_urls(list, "chain.reference_rpc_urls"),
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
    pub(super) fn rpc_url(&mut self, raw: &Spanned<String>, path: &str) -> Option<String> {
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

    /// `reference_rpc_urls` (of the `chain` block or a `sui_sync` check)
    /// at `path`: distinct URLs.
    pub(super) fn reference_rpc_urls(
        &mut self,
        list: &Spanned<Vec<Spanned<String>>>,
        path: &str,
    ) -> Option<Vec<String>> {
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
    pub(super) fn registry(&mut self, raw: &Spanned<RawRegistry>) -> Option<RegistrySettings> {
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
    pub(super) fn sui_address(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
    ) -> Option<sui_sdk_types::Address> {
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

    pub(super) fn discovery_interval(&mut self, raw: &Spanned<String>) -> Option<Duration> {
        self.duration_in_range(
            raw,
            "chain.discovery_interval",
            MIN_DISCOVERY_INTERVAL,
            MAX_DISCOVERY_INTERVAL,
        )
    }

    /// A service's `discovery` block.
    pub(super) fn discovery(
        &mut self,
        raw: &Spanned<RawDiscovery>,
        path: &str,
    ) -> Option<DiscoveryConfig> {
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
        let max_servers = match &discovery.max_servers {
            None => Some(DiscoveryConfig::DEFAULT_MAX_SERVERS),
            Some(raw) => self.max_servers(raw, &format!("{path}.max_servers")),
        };
        Some(DiscoveryConfig {
            source: source?,
            port: port?,
            max_servers: max_servers?,
        })
    }

    /// `discovery.max_servers`: 1 to [`Config::MAX_BACKENDS`].
    pub(super) fn max_servers(&mut self, raw: &Spanned<String>, path: &str) -> Option<usize> {
        let max = Config::MAX_BACKENDS;
        let count = raw
            .value
            .trim()
            .replace('_', "")
            .parse::<usize>()
            .ok()
            .filter(|count| (1..=max).contains(count));
        if count.is_none() {
            self.report(
                raw.referenced,
                path,
                format!(
                    "invalid server count {:?}; expected a whole number from 1 to {max} (the kernel's backends map holds {max} servers for all services together; default {})",
                    raw.value,
                    DiscoveryConfig::DEFAULT_MAX_SERVERS
                ),
            );
        }
        count
    }

    pub(super) fn discovery_port(
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

    /// `discovery` and `kind: nautilus` need the `chain` block; `nautilus`
    /// needs `discovery` (it checks the enclave each discovered node
    /// registered), `chain.enclave_config` and
    /// `features.nautilus_health_checks`. `kind: sui_sync` needs neither: a
    /// configured server is checked at its own address, and without a
    /// `chain` block against its pool.
    pub(super) fn check_discovery_needs(&mut self, drafts: &[ServiceDraft], context: ChainContext) {
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
            for (path, location) in &draft.nautilus_kinds {
                self.check_nautilus_needs(path, *location, draft, context);
            }
        }
    }

    /// What a `kind: nautilus` at `path` needs besides its own fields.
    pub(super) fn check_nautilus_needs(
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
}
