//! A service's `health_check`: kinds, their fields, intervals, timeouts
//! and jitter.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde_saphyr::{Location, Spanned};

use super::{Checker, Kind, MAX_ATTESTATION_MAX_AGE, MIN_ATTESTATION_MAX_AGE, is_dns_name};
use crate::config::{
    CheckSpec, HealthCheckConfig, HttpCheck, Intervals, MAX_BASIS_POINTS, NautilusCheck, Protocol,
    RpcScheme, SuiSyncCheck, TlsOptions,
    raw::{
        RawHealthCheck, RawHttpFields, RawIntervals, RawNautilusFields, RawService, RawSuiFields,
    },
};

impl Checker {
    pub(super) fn health_check(
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
    pub(super) fn check_spec(
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
    pub(super) fn kind(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
        protocol: Option<Protocol>,
        nested: bool,
    ) -> Option<Kind> {
        let kind = self.parse::<Kind>(raw, path)?;
        if kind == Kind::Nautilus {
            self.nautilus_kinds.push((path.to_owned(), raw.referenced));
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
    pub(super) fn single_check(
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

    pub(super) fn http_check(
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

    pub(super) fn sui_sync_check(
        &mut self,
        sui: &RawSuiFields<'_>,
        path: &str,
    ) -> Option<SuiSyncCheck> {
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
        let scheme = match sui.scheme {
            None => Some(RpcScheme::default()),
            Some(raw) => self.parse::<RpcScheme>(raw, &format!("{path}.scheme")),
        };
        let reference_rpc_urls = match sui.reference_rpc_urls {
            None => Some(Vec::new()),
            Some(list) if list.value.is_empty() => {
                self.report(
                    list.referenced,
                    &format!("{path}.reference_rpc_urls"),
                    "must not be empty; leave it out to compare against the chain block's reference full nodes (or, without a chain block, the service's own servers)"
                        .to_owned(),
                );
                None
            }
            Some(list) => self.reference_rpc_urls(list, &format!("{path}.reference_rpc_urls")),
        };
        Some(SuiSyncCheck {
            max_checkpoint_lag: max_checkpoint_lag?,
            max_sync_age: max_sync_age?,
            max_response_time: max_response_time?,
            scheme: scheme?,
            reference_rpc_urls: reference_rpc_urls?,
        })
    }

    /// A `nautilus` check's fields; a `cache_ttl` left out is at most
    /// `max_age`.
    pub(super) fn nautilus_check(
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
    pub(super) fn cache_ttl(
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
    pub(super) fn check_response_times(
        &mut self,
        check: &RawHealthCheck,
        path: &str,
        timeout: Duration,
    ) {
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

    pub(super) fn http_path(&mut self, raw: &Spanned<String>, path: &str) -> Option<String> {
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

    pub(super) fn port(&mut self, raw: &Spanned<String>, path: &str) -> Option<u16> {
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

    pub(super) fn host(&mut self, raw: &Spanned<String>, path: &str) -> Option<String> {
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

    pub(super) fn expected_status(
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

    pub(super) fn body_contains(&mut self, raw: &Spanned<String>, path: &str) -> Option<String> {
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
    pub(super) fn tls(&mut self, fields: &RawHttpFields<'_>, path: &str) -> Option<TlsOptions> {
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
    pub(super) fn ca_file(&mut self, raw: &Spanned<String>, path: &str) -> Option<PathBuf> {
        let file = self.absolute_path(raw, path)?;
        match crate::config::tls::read_ca_file(&file) {
            Ok(_) => Some(file),
            Err(error) => {
                self.report(raw.referenced, path, format!("{error:#}"));
                None
            }
        }
    }

    /// The intervals: the profile's (or the defaults), then `interval` for
    /// every state, then each `intervals.<state>`.
    pub(super) fn intervals(&mut self, check: &RawHealthCheck, path: &str) -> Option<Intervals> {
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

    pub(super) fn interval(
        &mut self,
        raw: &Spanned<String>,
        path: &str,
    ) -> Option<Spanned<Duration>> {
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

    pub(super) fn timeout(
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
    pub(super) fn jitter(&mut self, raw: &Spanned<String>, path: &str) -> Option<u8> {
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
}

/// The longest `max_response_time` of the `sui_sync` checks in `spec`.
pub(super) fn longest_response_time(spec: &CheckSpec) -> Option<Duration> {
    match spec {
        CheckSpec::SuiSync(sui) => Some(sui.max_response_time),
        CheckSpec::All(parts) => parts.iter().filter_map(longest_response_time).max(),
        _ => None,
    }
}

/// Whether `name` is a field of https checks only.
pub(super) fn is_tls_field(name: &str) -> bool {
    matches!(name, "ca_file" | "insecure")
}

/// Which field of [`Intervals`] an `intervals.<state>` entry sets.
type IntervalField = fn(&mut Intervals) -> &mut Duration;

/// The entries of `intervals` with their names and the field each sets.
pub(super) fn interval_fields(
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
