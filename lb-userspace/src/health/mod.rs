//! Active health checks. A [`Prober`] is built once per service check
//! config ([`CheckSpec`]) and runs one check of a server at a time; every
//! check returns a [`CheckOutcome`] with a short reason, shown in status and
//! logs.
//!
//! Besides pass/fail, a check reports the "dial": whether a plain connect to
//! the server's own address worked. The K3s state machine demotes a server
//! whose dials fail even when its health endpoint answers (K3s bug #13149:
//! the health check passes while the server is unusable), while an HTTP-level
//! failure (status, body, TLS) is a health failure only.
//!
//! Kinds:
//!
//! - `tcp`: a TCP connect must succeed within the timeout;
//! - `udp`: an empty datagram is sent; the server passes unless an ICMP error
//!   (port or host unreachable) comes back within the timeout;
//! - `http`/`https`: `GET http(s)://<host or server IP>:<port><path>`, always
//!   connected to the server's IP, no redirects followed, a fresh connection
//!   every time; the status must be expected and the body (first 64 KiB)
//!   must contain `body_contains` when set;
//! - `sui_sync`: the server's own Sui full node (a discovered node's
//!   registry `sui_rpc`; a configured server is itself one, asked at its
//!   own address) is on the reference chain and in sync with it; without
//!   references, in sync with the service's other servers (the pool given
//!   to [`Prober::probe_node`]) ([`sui_sync`]);
//! - `nautilus`: the discovered node's enclave signs a fresh performance
//!   attestation with its current on-chain key ([`nautilus`]);
//! - `all`: every part runs at once; all must pass.
//!
//! Through a proxy: a service in proxy mode whose servers are dialed through
//! the `HTTPS_PROXY` forward proxy (HTTP CONNECT, as K3s does) checks them
//! the same way ([`Prober::through`]), so that a site that reaches its
//! servers only through the proxy does not see every check fail. For each
//! connection a check makes, [`ProxyEnv::proxy_for`] decides (`NO_PROXY` and
//! loopback as for the service's own dials): `tcp` and the extra dial are a
//! CONNECT that must be answered 2xx, `http`/`https` run over a CONNECT
//! tunnel ([`tunnel`]), and the dial is the CONNECT's outcome (a proxy that
//! is down or refuses is a failed dial, with the proxy's error as the
//! reason). `udp`, `sui_sync` and `nautilus` stay direct: proxy mode has no
//! UDP services, and the other two talk to chain endpoints (a `sui_sync`
//! check of a configured server asks the server's own address, directly
//! too; its extra dial goes through the proxy like any other). Without [`Prober::through`] (eBPF mode: the kernel
//! redirect connects directly) every check is direct.
//!
//! One file per kind: [`net`] (tcp, udp), [`http`] (http, https),
//! [`tunnel`] (http, https through a CONNECT tunnel), [`sui_sync`] and
//! [`nautilus`]; this file holds the interface ([`Prober`],
//! [`CheckOutcome`]) and the `all` composition.

mod http;
pub mod nautilus;
mod net;
pub mod sui_sync;
mod tunnel;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use reqwest::{Certificate, Client};
use tokio::time::timeout_at;

use self::{
    http::{build_client, describe_http, scheme},
    nautilus::{Attester, NodeEnclave, Verdict},
    net::{probe_tcp, probe_tcp_via, probe_udp},
    sui_sync::References,
};
use crate::{
    chain::servers::DiscoveredServer,
    config::{CheckSpec, HttpCheck, NautilusCheck, SuiSyncCheck, TlsOptions},
    proxy::{ProxyEnv, connect::ProxyUrl},
};

/// What one check found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    /// Whether the server passed.
    pub ok: bool,
    /// Why, in a few words (shown in status and logs), e.g.
    /// `http 503 (expected 200)`, `http: body lacks "ok"`, `tcp connect
    /// refused`, `https: tls: invalid peer certificate: UnknownIssuer`. For
    /// kind all: the failing parts' reasons joined with `; ` (all parts'
    /// when it passed).
    pub reason: String,
    /// How long the whole check took.
    pub duration: Duration,
    /// The outcome of connecting to the server's own address, when this
    /// check made such an attempt (see [`Prober::probe`]).
    pub dial: Option<DialOutcome>,
    /// Checkpoints the server's own Sui full node is behind the reference,
    /// when a `sui_sync` part could judge it.
    pub sync_lag_blocks: Option<u64>,
    /// A `nautilus` part's verdict (the verified attestation or why not).
    pub attestation: Option<Verdict>,
}

/// The outcome of connecting to a server's own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialOutcome {
    /// Whether the connect worked (for UDP: no ICMP error came back;
    /// through a proxy: it answered 2xx to the CONNECT).
    pub ok: bool,
    /// How long it took. When a direct HTTP check's own connection is
    /// reused, the time until the response (or error): the connect alone is
    /// not timed (through a proxy it is: the CONNECT's time).
    pub duration: Duration,
}

/// Runs the checks of one service's check config. Holds the HTTP clients
/// (one per TLS setting, plus one per server for checks with a `host`),
/// reused across probes, and the proxy settings the service's servers are
/// dialed with ([`Prober::through`]); cheap to clone.
#[derive(Debug, Clone)]
pub struct Prober {
    inner: Arc<Inner>,
    /// Set for a service whose connections go through the userspace proxy
    /// with an HTTP CONNECT proxy allowed; `None`: every check is direct.
    via: Option<Arc<ProxyEnv>>,
}

#[derive(Debug)]
struct Inner {
    /// The leaves of the check: one, or the parts of `all`.
    parts: Vec<Part>,
    /// Runs `nautilus` parts.
    attester: Option<Arc<Attester>>,
    /// Kind all: reasons name their part.
    combined: bool,
    /// The distinct TLS settings of the http parts; [`HttpPart::tls`]
    /// indexes it.
    tls: Vec<TlsSetting>,
    clients: Mutex<HashMap<ClientKey, Client>>,
}

#[derive(Debug)]
enum Part {
    Tcp,
    Udp,
    Http(HttpPart),
    SuiSync(SyncPart),
    Nautilus(NautilusCheck),
}

#[derive(Debug)]
struct SyncPart {
    check: SuiSyncCheck,
    /// The check's own references, or the `chain` block's (shared by the
    /// prober's parts: their answers serve every server checked about the
    /// same time), or (neither) the pool's members are asked through it.
    references: Arc<References>,
    /// Compare with the pool (no reference configured).
    pool: bool,
}

#[derive(Debug)]
struct HttpPart {
    check: HttpCheck,
    /// Index into [`Inner::tls`].
    tls: usize,
    /// Starts its reasons: `http`, or with kind all e.g. `http :8080/readyz`.
    label: String,
}

/// `None` for plain http.
#[derive(Debug)]
struct TlsSetting {
    options: Option<TlsOptions>,
    /// The CA file's certificates; empty for the built-in roots.
    roots: Vec<Certificate>,
    /// The same setting for TLS over a CONNECT tunnel (https only).
    tunnel: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    tls: usize,
    /// The `host` that is resolved to the server's IP.
    resolve: Option<(String, IpAddr)>,
}

/// The time a check may take.
#[derive(Clone, Copy)]
struct Budget {
    timeout: Duration,
    deadline: tokio::time::Instant,
}

impl Budget {
    /// What is left of it, rounded up to whole milliseconds (the proxy
    /// dialer's errors show it; the deadline moves by less than 1 ms).
    fn remaining(self) -> Duration {
        let left = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        Duration::from_millis(u64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u64::MAX))
    }
}

/// Which kind of dial a part's connection counts as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

/// What one part of a check found.
struct PartOutcome {
    ok: bool,
    reason: String,
    /// Set when the part connected to exactly the server's address.
    dial: Option<(Transport, DialOutcome)>,
    /// What a chain-aware part learned besides pass/fail.
    found: Found,
}

impl PartOutcome {
    /// An outcome that learned nothing besides pass/fail and the dial.
    fn plain(ok: bool, reason: String, dial: Option<(Transport, DialOutcome)>) -> Self {
        Self {
            ok,
            reason,
            dial,
            found: Found::default(),
        }
    }
}

/// What `sui_sync` and `nautilus` parts learn about a node.
#[derive(Default)]
struct Found {
    /// A `sui_sync` part's lag, when it could judge it.
    lag: Option<u64>,
    /// A `nautilus` part's verdict.
    attestation: Option<Verdict>,
}

/// How an HTTP request that got no response failed.
enum RequestFailure {
    /// The TCP connect failed ("refused", "host unreachable", ...).
    Connect(String),
    /// The TLS handshake failed.
    Tls(String),
    /// Anything after the connect, e.g. the connection closed early.
    Other(String),
}

impl Prober {
    /// Prepares `check`. Fails if a CA file cannot be read or parsed (the
    /// error names the file), or for an `all` without checks.
    pub fn new(check: &CheckSpec) -> anyhow::Result<Self> {
        Self::with_chain(check, Vec::new(), None)
    }

    /// Like [`Prober::new`], with the reference full nodes `sui_sync`
    /// parts compare a server's own full node against (the `chain`
    /// block's; a part's own `reference_rpc_urls` come first; with neither
    /// it compares the server with its pool, see [`Prober::probe_node`]),
    /// and the attester that runs `nautilus` parts (they need one).
    pub fn with_chain(
        check: &CheckSpec,
        references: Vec<String>,
        attester: Option<Arc<Attester>>,
    ) -> anyhow::Result<Self> {
        let mut leaves = Vec::new();
        flatten(check, &mut leaves);
        if leaves.is_empty() {
            bail!("health check of kind all has no checks");
        }
        let combined = matches!(check, CheckSpec::All(_));
        let chain_references = !references.is_empty();
        let shared = Arc::new(References::new(references));
        let mut tls: Vec<TlsSetting> = Vec::new();
        let mut parts = Vec::with_capacity(leaves.len());
        for leaf in leaves {
            let http = match leaf {
                CheckSpec::Tcp => {
                    parts.push(Part::Tcp);
                    continue;
                }
                CheckSpec::Udp => {
                    parts.push(Part::Udp);
                    continue;
                }
                CheckSpec::SuiSync(sui) => {
                    let (references, pool) =
                        match (sui.reference_rpc_urls.is_empty(), chain_references) {
                            (false, _) => (
                                Arc::new(References::new(sui.reference_rpc_urls.clone())),
                                false,
                            ),
                            (true, true) => (Arc::clone(&shared), false),
                            (true, false) => (Arc::new(References::new(Vec::new())), true),
                        };
                    parts.push(Part::SuiSync(SyncPart {
                        check: sui.clone(),
                        references,
                        pool,
                    }));
                    continue;
                }
                CheckSpec::Nautilus(nautilus) => {
                    if attester.is_none() {
                        bail!(
                            "kind nautilus needs chain.enclave_config and features.nautilus_health_checks when the daemon starts (both change only on restart)"
                        );
                    }
                    parts.push(Part::Nautilus(*nautilus));
                    continue;
                }
                CheckSpec::Http(http) => http,
                CheckSpec::All(_) => unreachable!("flatten leaves no kind all"),
            };
            let index =
                if let Some(index) = tls.iter().position(|setting| setting.options == http.tls) {
                    index
                } else {
                    let (roots, ca) = match &http.tls {
                        Some(TlsOptions {
                            ca_file: Some(path),
                            ..
                        }) => (
                            crate::config::tls::read_ca_file(path)?,
                            tunnel::read_ca_der(path)?,
                        ),
                        _ => (Vec::new(), Vec::new()),
                    };
                    let tunnel = http
                        .tls
                        .as_ref()
                        .map(|options| tunnel::tls_config(options, &ca))
                        .transpose()
                        .with_context(|| {
                            format!(
                                "cannot set up TLS for health checks through a proxy{}",
                                describe_ca(http.tls.as_ref())
                            )
                        })?;
                    tls.push(TlsSetting {
                        options: http.tls.clone(),
                        roots,
                        tunnel,
                    });
                    tls.len() - 1
                };
            let label = if combined {
                describe_http(http)
            } else {
                scheme(http).to_owned()
            };
            parts.push(Part::Http(HttpPart {
                check: http.clone(),
                tls: index,
                label,
            }));
        }

        let mut clients = HashMap::new();
        for (index, setting) in tls.iter().enumerate() {
            let client = build_client(setting, None).with_context(|| {
                format!(
                    "cannot set up the HTTP client for health checks{}",
                    describe_ca(setting.options.as_ref())
                )
            })?;
            clients.insert(
                ClientKey {
                    tls: index,
                    resolve: None,
                },
                client,
            );
        }
        tracing::debug!(
            kind = check.kind(),
            parts = parts.len(),
            "health prober ready"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                parts,
                attester,
                combined,
                tls,
                clients: Mutex::new(clients),
            }),
            via: None,
        })
    }

    /// The same prober for a service whose servers are dialed through the
    /// HTTP CONNECT proxy of `via` (proxy mode with `http_proxy_allowed`):
    /// for each connection a check makes to a server's address (the `tcp`
    /// part, `http`/`https` parts, the extra dial), `via`'s
    /// [`ProxyEnv::proxy_for`] of that address decides between a CONNECT
    /// through the proxy and a direct connect (see the module docs). `None`
    /// (as from [`Prober::with_chain`]): every check is direct.
    #[must_use]
    pub fn through(mut self, via: Option<Arc<ProxyEnv>>) -> Self {
        if let Some(proxy) = via.as_ref().and_then(|via| via.https_proxy()) {
            tracing::debug!(%proxy, "health checks go through the HTTP CONNECT proxy (NO_PROXY honoured)");
        }
        self.via = via;
        self
    }

    /// The proxy a connection of a check to `target` goes through, if any.
    fn proxy_for(&self, target: SocketAddr) -> Option<&ProxyUrl> {
        self.via.as_deref()?.proxy_for(target)
    }

    /// A TCP connect to `server`, or a CONNECT through the proxy that
    /// decides for it: whether it worked and the reason.
    async fn connect_probe(&self, server: SocketAddr, budget: Budget) -> (bool, String) {
        match self.proxy_for(server) {
            Some(proxy) => probe_tcp_via(proxy, server, budget).await,
            None => probe_tcp(server, budget).await,
        }
    }

    /// Runs the check against `server` within `timeout` (the whole check,
    /// all parts of `all` at once, is bounded by it).
    ///
    /// `dial_probe` is true for TCP services: then [`CheckOutcome::dial`] is
    /// always `Some`. If the check itself connected to exactly `server`
    /// (kind tcp, or http/https on the server's own port, where a failed TCP
    /// connect is a failed dial and a TLS or HTTP failure is not), that
    /// result is reused; a direct HTTP check that runs out of time counts as
    /// a failed dial too, since the server did not answer. Otherwise one
    /// extra plain TCP connect to `server` is made at the same time as the
    /// check. Through a proxy ([`Prober::through`]) the connect is a CONNECT
    /// and the dial is its outcome: a proxy that is down or refuses fails
    /// it, anything after the tunnel is up does not. With `dial_probe` false (UDP services), kind udp reports its own
    /// result as the dial (ICMP port unreachable = failed) and other kinds
    /// report none.
    pub async fn probe(
        &self,
        server: SocketAddr,
        timeout: Duration,
        dial_probe: bool,
    ) -> CheckOutcome {
        self.probe_node(server, timeout, dial_probe, None, &[])
            .await
    }

    /// Whether `sui_sync` parts compare a server with its pool (no
    /// reference configured): then [`Prober::probe_node`] needs the pool.
    pub fn uses_pool(&self) -> bool {
        self.inner
            .parts
            .iter()
            .any(|part| matches!(part, Part::SuiSync(SyncPart { pool: true, .. })))
    }

    /// [`Prober::probe`] with what chain-aware parts need: `node` is the
    /// registry entry of a server discovered on chain, whose own Sui full
    /// node `sui_sync` parts check and whose enclave `nautilus` parts ask
    /// (without it, `sui_sync` checks the server's own address as a full
    /// node and `nautilus` fails); `pool` is the service's servers, which a
    /// `sui_sync` part without references compares the server with (empty:
    /// the server alone).
    pub async fn probe_node(
        &self,
        server: SocketAddr,
        timeout: Duration,
        dial_probe: bool,
        node: Option<&DiscoveredServer>,
        pool: &[SocketAddr],
    ) -> CheckOutcome {
        let start = Instant::now();
        let budget = Budget {
            timeout,
            deadline: tokio::time::Instant::now() + timeout,
        };
        let inner = &self.inner;
        let reuses_dial = inner.parts.iter().any(|part| part.dials(server));
        let extra_dial = async {
            if dial_probe && !reuses_dial {
                let (ok, why) = self.connect_probe(server, budget).await;
                Some((
                    DialOutcome {
                        ok,
                        duration: start.elapsed(),
                    },
                    why,
                ))
            } else {
                None
            }
        };
        let parts = futures::future::join_all(
            inner
                .parts
                .iter()
                .map(|part| self.probe_part(part, server, budget, node, pool)),
        );
        let (mut outcomes, extra_dial) = tokio::join!(parts, extra_dial);

        let ok = outcomes.iter().all(|outcome| outcome.ok);
        let mut reason = if inner.combined {
            let reasons: Vec<&str> = outcomes
                .iter()
                .filter(|outcome| ok || !outcome.ok)
                .map(|outcome| outcome.reason.as_str())
                .collect();
            reasons.join("; ")
        } else {
            outcomes
                .first()
                .map(|outcome| outcome.reason.clone())
                .unwrap_or_default()
        };
        let transport = if dial_probe {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        // The check passed but the service port does not connect (K3s
        // #13149): say so, the state machine demotes the server for it.
        if let Some((extra, why)) = &extra_dial
            && !extra.ok
        {
            reason = format!("{reason}; but the service port {server}: {why}");
        }
        let mut dial = extra_dial
            .map(|(d, _)| d)
            .or_else(|| pick_dial(&outcomes, transport));
        if dial_probe && dial.is_none() {
            // Only when the HTTP client could not even be set up.
            tracing::warn!(%server, %reason, "health check made no connection; counting it as a failed dial");
            dial = Some(DialOutcome {
                ok: false,
                duration: start.elapsed(),
            });
        }
        let sync_lag_blocks = outcomes.iter().find_map(|outcome| outcome.found.lag);
        let attestation = outcomes
            .iter_mut()
            .find_map(|outcome| outcome.found.attestation.take());
        let outcome = CheckOutcome {
            ok,
            reason,
            duration: start.elapsed(),
            dial,
            sync_lag_blocks,
            attestation,
        };
        tracing::trace!(%server, ?outcome, "health check done");
        outcome
    }

    async fn probe_part(
        &self,
        part: &Part,
        server: SocketAddr,
        budget: Budget,
        node: Option<&DiscoveredServer>,
        pool: &[SocketAddr],
    ) -> PartOutcome {
        let start = Instant::now();
        match part {
            Part::Tcp => {
                let (ok, reason) = self.connect_probe(server, budget).await;
                let dial = DialOutcome {
                    ok,
                    duration: start.elapsed(),
                };
                PartOutcome::plain(ok, reason, Some((Transport::Tcp, dial)))
            }
            Part::Udp => {
                let (ok, reason) = probe_udp(server, budget).await;
                let dial = DialOutcome {
                    ok,
                    duration: start.elapsed(),
                };
                PartOutcome::plain(ok, reason, Some((Transport::Udp, dial)))
            }
            Part::Http(http) => {
                let target = SocketAddr::new(server.ip(), http.check.port.unwrap_or(server.port()));
                match self.proxy_for(target) {
                    Some(proxy) => self.probe_http_via(http, server, proxy, budget).await,
                    None => self.probe_http(http, server, budget).await,
                }
            }
            Part::SuiSync(part) => Self::probe_sync(part, server, budget, node, pool).await,
            Part::Nautilus(check) => self.probe_nautilus(check, budget, node).await,
        }
    }

    /// A `sui_sync` part: a discovered node's registry `sui_rpc`, else
    /// the server's own address as a full node; against the references,
    /// or the pool.
    async fn probe_sync(
        part: &SyncPart,
        server: SocketAddr,
        budget: Budget,
        node: Option<&DiscoveredServer>,
        pool: &[SocketAddr],
    ) -> PartOutcome {
        let scheme = part.check.scheme;
        let url = node.map_or_else(
            || sui_sync::server_url(scheme, server),
            |node| node.sui_rpc.clone(),
        );
        let members: Vec<String> = match (part.pool, pool.is_empty()) {
            (false, _) => Vec::new(),
            (true, true) => vec![url.clone()],
            (true, false) => pool
                .iter()
                .map(|member| sui_sync::server_url(scheme, *member))
                .collect(),
        };
        let probe = async {
            if part.pool {
                sui_sync::probe_pool(&url, &part.references, &members, &part.check).await
            } else {
                sui_sync::probe(&url, &part.references, &part.check).await
            }
        };
        match timeout_at(budget.deadline, probe).await {
            Ok(verdict) => PartOutcome {
                ok: verdict.ok,
                reason: format!("sui_sync: {}", verdict.reason),
                dial: None,
                found: Found {
                    lag: verdict.lag_blocks,
                    ..Found::default()
                },
            },
            Err(_) => PartOutcome::plain(
                false,
                format!(
                    "sui_sync: no verdict within the timeout {}",
                    millis(budget.timeout)
                ),
                None,
            ),
        }
    }

    async fn probe_nautilus(
        &self,
        check: &NautilusCheck,
        budget: Budget,
        node: Option<&DiscoveredServer>,
    ) -> PartOutcome {
        let (Some(attester), Some(node)) = (&self.inner.attester, node) else {
            return PartOutcome::plain(
                false,
                "nautilus: not a discovered node (no enclave known)".to_owned(),
                None,
            );
        };
        let node = NodeEnclave::from(node);
        // Parts start together with the probe: the whole timeout is left.
        let verdict = attester.check(check, &node, budget.timeout).await;
        PartOutcome {
            ok: verdict.result.is_ok(),
            reason: format!("nautilus: {}", verdict.reason(attester.now_ms())),
            dial: None,
            found: Found {
                lag: None,
                attestation: Some(verdict),
            },
        }
    }
}

impl Part {
    /// Whether this part connects (by TCP) to exactly `server`.
    fn dials(&self, server: SocketAddr) -> bool {
        match self {
            Self::Tcp => true,
            Self::Udp | Self::SuiSync(_) | Self::Nautilus(_) => false,
            Self::Http(http) => http.check.port.is_none_or(|port| port == server.port()),
        }
    }
}

/// The leaves of `check` in order: `all` is replaced by its parts.
fn flatten<'a>(check: &'a CheckSpec, leaves: &mut Vec<&'a CheckSpec>) {
    match check {
        CheckSpec::All(parts) => {
            for part in parts {
                flatten(part, leaves);
            }
        }
        leaf => leaves.push(leaf),
    }
}

/// The dial to report among the parts' own connections: the first failed
/// one, else the first.
fn pick_dial(outcomes: &[PartOutcome], transport: Transport) -> Option<DialOutcome> {
    let dials = || {
        outcomes
            .iter()
            .filter_map(|outcome| outcome.dial)
            .filter(move |(kind, _)| *kind == transport)
            .map(|(_, dial)| dial)
    };
    dials().find(|dial| !dial.ok).or_else(|| dials().next())
}

/// ` with CA file <path>` when `tls` names one, for error context.
fn describe_ca(tls: Option<&TlsOptions>) -> String {
    tls.and_then(|options| options.ca_file.as_ref())
        .map(|file| format!(" with CA file {}", file.display()))
        .unwrap_or_default()
}

/// Formats a duration as milliseconds with one decimal.
pub fn millis(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        net::{Ipv4Addr, SocketAddr},
        path::PathBuf,
        process::{Child, Command, Stdio},
        sync::atomic::{AtomicUsize, Ordering},
    };

    use axum::{Router, http::StatusCode, routing::get};
    use tokio::net::{TcpListener, TcpStream, UdpSocket};

    use super::*;

    /// Generous upper bound on test timings.
    pub(super) const SLACK: Duration = Duration::from_secs(3);

    pub(super) fn prober(check: &CheckSpec) -> Prober {
        Prober::new(check).expect("prober")
    }

    pub(super) fn http(path: &str) -> HttpCheck {
        HttpCheck {
            path: path.to_owned(),
            ..HttpCheck::new()
        }
    }

    /// An HTTP server on 127.0.0.1: `/` answers "all ok", `/fail` 503,
    /// `/redirect` 302 and `/host` echoes the Host header.
    pub(super) async fn http_server() -> SocketAddr {
        let app = Router::new()
            .route("/", get(|| async { "all ok" }))
            .route(
                "/fail",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
            )
            .route(
                "/redirect",
                get(|| async { (StatusCode::FOUND, [("location", "/")], "") }),
            )
            .route(
                "/host",
                get(|headers: axum::http::HeaderMap| async move {
                    format!("host={:?}", headers.get("host"))
                }),
            );
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// An address nothing listens on (connects are refused).
    pub(super) async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        listener.local_addr().unwrap()
    }

    /// A server that accepts connections and never answers.
    pub(super) async fn silent_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_probe_passes_for_a_listener_and_fails_for_a_closed_port() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = prober(&CheckSpec::Tcp);
        let ok = tcp.probe(addr, Duration::from_secs(2), true).await;
        assert!(ok.ok, "{ok:?}");
        assert!(ok.dial.is_some_and(|dial| dial.ok), "{ok:?}");
        drop(listener);
        let bad = tcp.probe(addr, Duration::from_secs(2), true).await;
        assert!(!bad.ok, "{bad:?}");
        assert_eq!(bad.reason, "tcp connect refused");
        assert!(bad.dial.is_some_and(|dial| !dial.ok), "{bad:?}");
    }

    #[tokio::test]
    async fn udp_probe_fails_only_on_port_unreachable() {
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = server.local_addr().unwrap();
        let udp = prober(&CheckSpec::Udp);
        let ok = udp.probe(addr, Duration::from_millis(200), false).await;
        assert!(ok.ok, "{ok:?}");
        assert!(ok.dial.is_some_and(|dial| dial.ok), "{ok:?}");
        drop(server);
        let bad = udp.probe(addr, Duration::from_secs(2), false).await;
        assert!(!bad.ok, "{bad:?}");
        assert!(bad.reason.contains("unreachable"), "{bad:?}");
        assert!(bad.dial.is_some_and(|dial| !dial.ok), "{bad:?}");
    }

    #[tokio::test]
    async fn http_probe_passes() {
        let server = http_server().await;
        let check = prober(&CheckSpec::Http(HttpCheck::new()));
        let outcome = check.probe(server, Duration::from_secs(2), true).await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(outcome.reason.starts_with("http 200 in "), "{outcome:?}");
        // The request's own connection is the dial.
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");
        // UDP services get no dial from an http check.
        let outcome = check.probe(server, Duration::from_secs(2), false).await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.dial, None);
    }

    #[tokio::test]
    async fn http_probe_judges_the_status() {
        let server = http_server().await;
        let outcome = prober(&CheckSpec::Http(http("/fail")))
            .probe(server, Duration::from_secs(2), true)
            .await;
        assert!(!outcome.ok, "{outcome:?}");
        assert_eq!(outcome.reason, "http 503 (expected 200)");
        // An HTTP-level failure is not a failed dial.
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");

        let accept_503 = HttpCheck {
            expected_status: vec![200, 503],
            ..http("/fail")
        };
        let outcome = prober(&CheckSpec::Http(accept_503))
            .probe(server, Duration::from_secs(2), true)
            .await;
        assert!(outcome.ok, "{outcome:?}");

        // Redirects are not followed: the 302 itself is judged.
        let outcome = prober(&CheckSpec::Http(http("/redirect")))
            .probe(server, Duration::from_secs(2), true)
            .await;
        assert_eq!(outcome.reason, "http 302 (expected 200)");
        let accept_302 = HttpCheck {
            expected_status: vec![204, 301, 302],
            ..http("/redirect")
        };
        let outcome = prober(&CheckSpec::Http(accept_302.clone()))
            .probe(server, Duration::from_secs(2), true)
            .await;
        assert!(outcome.ok, "{outcome:?}");
        let failing = HttpCheck {
            path: "/fail".to_owned(),
            ..accept_302
        };
        let outcome = prober(&CheckSpec::Http(failing))
            .probe(server, Duration::from_secs(2), true)
            .await;
        assert_eq!(outcome.reason, "http 503 (expected 204, 301 or 302)");
    }

    #[tokio::test]
    async fn http_probe_checks_the_body() {
        let server = http_server().await;
        let with_body = |needle: &str| {
            CheckSpec::Http(HttpCheck {
                body_contains: Some(needle.to_owned()),
                ..HttpCheck::new()
            })
        };
        let outcome = prober(&with_body("ok"))
            .probe(server, Duration::from_secs(2), true)
            .await;
        assert!(outcome.ok, "{outcome:?}");
        let outcome = prober(&with_body("nope"))
            .probe(server, Duration::from_secs(2), true)
            .await;
        assert!(!outcome.ok, "{outcome:?}");
        assert_eq!(outcome.reason, "http: body lacks \"nope\"");
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");
    }

    #[tokio::test]
    async fn http_probe_sends_host_but_connects_to_the_server() {
        let server = http_server().await;
        // The name does not resolve: the connection must go to the server's IP.
        let check = CheckSpec::Http(HttpCheck {
            host: Some("health.invalid".to_owned()),
            body_contains: Some(format!("host=Some(\"health.invalid:{}\")", server.port())),
            ..http("/host")
        });
        let outcome = prober(&check)
            .probe(server, Duration::from_secs(2), true)
            .await;
        assert!(outcome.ok, "{outcome:?}");
        // Without host, the Host header is the server's IP.
        let check = CheckSpec::Http(HttpCheck {
            body_contains: Some(format!("host=Some(\"{server}\")")),
            ..http("/host")
        });
        let outcome = prober(&check)
            .probe(server, Duration::from_secs(2), true)
            .await;
        assert!(outcome.ok, "{outcome:?}");
    }

    #[tokio::test]
    async fn http_connection_refused_is_a_failed_dial() {
        let closed = closed_port().await;
        let outcome = prober(&CheckSpec::Http(HttpCheck::new()))
            .probe(closed, Duration::from_secs(2), true)
            .await;
        assert!(!outcome.ok, "{outcome:?}");
        assert_eq!(outcome.reason, "http: connect refused");
        assert!(outcome.dial.is_some_and(|dial| !dial.ok), "{outcome:?}");
    }

    #[tokio::test]
    async fn http_on_another_port_passes_while_the_service_port_is_closed() {
        let health = http_server().await;
        let closed = closed_port().await;
        let check = prober(&CheckSpec::Http(HttpCheck {
            port: Some(health.port()),
            ..HttpCheck::new()
        }));
        let outcome = check.probe(closed, Duration::from_secs(2), true).await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(outcome.dial.is_some_and(|dial| !dial.ok), "{outcome:?}");
        // And a working service port dials fine.
        let outcome = check.probe(health, Duration::from_secs(2), true).await;
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");
        let outcome = check.probe(closed, Duration::from_secs(2), false).await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.dial, None);
    }

    #[tokio::test]
    async fn http_probe_times_out() {
        let silent = silent_server().await;
        let timeout = Duration::from_millis(300);
        let start = Instant::now();
        let outcome = prober(&CheckSpec::Http(HttpCheck::new()))
            .probe(silent, timeout, true)
            .await;
        let elapsed = start.elapsed();
        assert!(!outcome.ok, "{outcome:?}");
        assert_eq!(outcome.reason, "http: no answer within 300.0ms");
        assert!(
            elapsed >= timeout && elapsed < timeout + SLACK,
            "{elapsed:?}"
        );
        assert!(outcome.dial.is_some(), "{outcome:?}");
    }

    #[tokio::test]
    async fn all_passes_only_when_every_part_passes() {
        let server = http_server().await;
        let all = |parts: Vec<CheckSpec>| prober(&CheckSpec::All(parts));

        let outcome = all(vec![CheckSpec::Tcp, CheckSpec::Http(HttpCheck::new())])
            .probe(server, Duration::from_secs(2), true)
            .await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(
            outcome.reason.starts_with("tcp connect ok in "),
            "{outcome:?}"
        );
        assert!(outcome.reason.contains("; http / 200 in "), "{outcome:?}");
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");

        let outcome = all(vec![
            CheckSpec::Tcp,
            CheckSpec::Http(http("/fail")),
            CheckSpec::Http(HttpCheck {
                port: Some(server.port()),
                ..HttpCheck::new()
            }),
        ])
        .probe(server, Duration::from_secs(2), true)
        .await;
        assert!(!outcome.ok, "{outcome:?}");
        assert_eq!(outcome.reason, "http /fail 503 (expected 200)");

        // Health on another port passes; the tcp part fails and names itself.
        let closed = closed_port().await;
        let outcome = all(vec![
            CheckSpec::Http(HttpCheck {
                port: Some(server.port()),
                ..HttpCheck::new()
            }),
            CheckSpec::Tcp,
        ])
        .probe(closed, Duration::from_secs(2), true)
        .await;
        assert!(!outcome.ok, "{outcome:?}");
        assert_eq!(outcome.reason, "tcp connect refused");
        assert!(outcome.dial.is_some_and(|dial| !dial.ok), "{outcome:?}");
    }

    #[tokio::test]
    async fn sui_sync_checks_a_configured_server_at_its_own_address() {
        use crate::{
            config::{RpcScheme, SuiSyncCheck},
            demo::fake_node::FakeChain,
        };
        let a = FakeChain::start("35834a8a").await.expect("fake a");
        let b = FakeChain::start("35834a8a").await.expect("fake b");
        for _ in 0..20 {
            a.tick();
            b.tick();
        }
        b.set_lag(15, Duration::ZERO);
        let pool = [a.addr(), b.addr()];
        let limit = Duration::from_secs(3);

        // No reference: the pool's highest member is the reference.
        let check = prober(&CheckSpec::SuiSync(SuiSyncCheck::DEFAULT));
        assert!(check.uses_pool());
        let ok = check.probe_node(a.addr(), limit, true, None, &pool).await;
        assert!(ok.ok, "{ok:?}");
        assert_eq!(ok.sync_lag_blocks, Some(0));
        assert!(ok.dial.is_some_and(|dial| dial.ok), "{ok:?}");
        let bad = check.probe_node(b.addr(), limit, true, None, &pool).await;
        assert!(!bad.ok);
        assert_eq!(bad.sync_lag_blocks, Some(15));
        assert_eq!(
            bad.reason,
            format!(
                "sui_sync: checkpoint lag 15 > 10 behind the highest pool member ({}: 20)",
                a.url()
            )
        );

        // The check's own references: compared with them, not the pool.
        let own = prober(&CheckSpec::SuiSync(SuiSyncCheck {
            reference_rpc_urls: vec![a.url()],
            ..SuiSyncCheck::DEFAULT
        }));
        assert!(!own.uses_pool());
        let bad = own.probe(b.addr(), limit, true).await;
        assert!(!bad.ok);
        assert!(
            bad.reason
                .contains(&format!("behind the highest reference ({}: 20)", a.url())),
            "{bad:?}"
        );

        // https to a node that serves plain HTTP/2: unreachable, the URL named.
        let tls = prober(&CheckSpec::SuiSync(SuiSyncCheck {
            scheme: RpcScheme::Https,
            ..SuiSyncCheck::DEFAULT
        }));
        let out = tls.probe(a.addr(), limit, true).await;
        assert!(!out.ok);
        assert!(
            out.reason
                .starts_with(&format!("sui_sync: unreachable: https://{}: ", a.addr())),
            "{out:?}"
        );
    }

    #[test]
    fn prober_names_an_unreadable_ca_file() {
        let check = CheckSpec::Http(HttpCheck {
            tls: Some(TlsOptions {
                ca_file: Some(PathBuf::from("/nonexistent/daas-lb/ca.pem")),
                insecure: false,
            }),
            ..HttpCheck::new()
        });
        let error = format!("{:#}", Prober::new(&check).unwrap_err());
        assert!(error.contains("/nonexistent/daas-lb/ca.pem"), "{error}");
    }

    /// An `openssl s_server -www` on 127.0.0.1 with a fresh self-signed
    /// certificate for `localhost` and 127.0.0.1; stopped and cleaned up
    /// when dropped (also when a test panics).
    pub(super) struct TlsServer {
        child: Child,
        dir: PathBuf,
        pub(super) addr: SocketAddr,
    }

    impl TlsServer {
        pub(super) async fn start() -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "daas-lb-health-tls-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            let status = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .arg("ec_paramgen_curve:prime256v1")
                .args(["-nodes", "-subj", "/CN=localhost", "-addext"])
                .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
                // webpki refuses a CA certificate as the server's own.
                .args(["-addext", "basicConstraints=critical,CA:FALSE"])
                .args(["-days", "1", "-keyout"])
                .arg(dir.join("key.pem"))
                .arg("-out")
                .arg(dir.join("cert.pem"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run openssl req");
            assert!(status.success(), "openssl req failed");

            let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let child = Command::new("openssl")
                .args(["s_server", "-www", "-quiet", "-accept"])
                .arg(addr.to_string())
                .arg("-cert")
                .arg(dir.join("cert.pem"))
                .arg("-key")
                .arg(dir.join("key.pem"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start openssl s_server");
            let server = Self { child, dir, addr };
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(addr).await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "openssl s_server does not accept on {addr}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            server
        }

        pub(super) fn cert(&self) -> PathBuf {
            self.dir.join("cert.pem")
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    pub(super) fn https(ca_file: Option<PathBuf>, insecure: bool) -> HttpCheck {
        HttpCheck {
            tls: Some(TlsOptions { ca_file, insecure }),
            ..HttpCheck::new()
        }
    }

    #[tokio::test]
    async fn https_probe_against_openssl() {
        let server = TlsServer::start().await;
        let timeout = Duration::from_secs(5);

        let trusted = prober(&CheckSpec::Http(https(Some(server.cert()), false)));
        let outcome = trusted.probe(server.addr, timeout, true).await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(outcome.reason.starts_with("https 200 in "), "{outcome:?}");

        // The certificate's DNS name, sent as SNI, connecting to the server's IP.
        let by_name = prober(&CheckSpec::Http(HttpCheck {
            host: Some("localhost".to_owned()),
            ..https(Some(server.cert()), false)
        }));
        let outcome = by_name.probe(server.addr, timeout, true).await;
        assert!(outcome.ok, "{outcome:?}");

        let default_roots = prober(&CheckSpec::Http(https(None, false)));
        let outcome = default_roots.probe(server.addr, timeout, true).await;
        assert!(!outcome.ok, "{outcome:?}");
        assert!(outcome.reason.starts_with("https: tls: "), "{outcome:?}");
        assert!(outcome.reason.contains("certificate"), "{outcome:?}");
        // A TLS failure is not a failed dial.
        assert!(outcome.dial.is_some_and(|dial| dial.ok), "{outcome:?}");

        let insecure = prober(&CheckSpec::Http(https(None, true)));
        let outcome = insecure.probe(server.addr, timeout, true).await;
        assert!(outcome.ok, "{outcome:?}");
    }
}
