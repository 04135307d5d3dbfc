//! `http` and `https` probes: `GET http(s)://<host or server IP>:<port><path>`,
//! always connected to the server's IP, no redirects followed, a fresh
//! connection every time; the status must be expected and the body (first
//! 64 KiB) must contain `body_contains` when set. Failures are classified
//! (refused, timeout, TLS, status, body) for the reason shown in status and
//! logs.
//!
//! This is the direct path (reqwest, proxy settings of the environment
//! ignored); a check of a server dialed through an HTTP CONNECT proxy runs
//! over a tunnel instead ([`super::tunnel`]), judged by the same helpers
//! ([`status_failure`], [`body_failure`], [`passed`]).

use std::{
    error::Error as StdError,
    io,
    net::{IpAddr, SocketAddr},
    sync::PoisonError,
    time::{Duration, Instant},
};

use reqwest::{Client, Url};
use tokio::time::timeout_at;

use super::{
    Budget, ClientKey, DialOutcome, HttpPart, PartOutcome, Prober, RequestFailure, TlsSetting,
    Transport, millis,
};
use crate::config::HttpCheck;

impl Prober {
    pub(super) async fn probe_http(
        &self,
        part: &HttpPart,
        server: SocketAddr,
        budget: Budget,
    ) -> PartOutcome {
        let start = Instant::now();
        let check = &part.check;
        let label = &part.label;
        let target_port = check.port.unwrap_or(server.port());
        // The request's own connection is the dial when it goes to the server's port.
        let dial = |ok: bool, duration: Duration| {
            (target_port == server.port()).then_some((Transport::Tcp, DialOutcome { ok, duration }))
        };
        let no_connection = |reason: String| PartOutcome::plain(false, reason, None);

        let client = match self.client(part, server.ip()) {
            Ok(client) => client,
            Err(error) => return no_connection(format!("{label}: client: {}", root_cause(&error))),
        };
        let host = check.host.clone().unwrap_or_else(|| match server.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        });
        let url = format!("{}://{host}:{target_port}{}", scheme(check), check.path);
        let url = match Url::parse(&url) {
            Ok(url) => url,
            Err(error) => return no_connection(format!("{label}: bad URL {url}: {error}")),
        };

        let exchange = async {
            let response = client.get(url).send().await?;
            let answered = start.elapsed();
            let status = response.status().as_u16();
            if let Some(failure) = status_failure(label, check, status) {
                return Ok((false, failure, answered));
            }
            if let Some(needle) = &check.body_contains {
                let (body, truncated) = match read_body(response, HttpCheck::BODY_LIMIT).await {
                    Ok(body) => body,
                    Err(error) => {
                        return Ok((false, body_unread(label, status, &error), answered));
                    }
                };
                if let Some(failure) = body_failure(label, needle, &body, truncated) {
                    return Ok((false, failure, answered));
                }
            }
            Ok::<_, reqwest::Error>((true, passed(label, status, start.elapsed()), answered))
        };

        match timeout_at(budget.deadline, exchange).await {
            Ok(Ok((ok, reason, answered))) => PartOutcome::plain(ok, reason, dial(true, answered)),
            Ok(Err(error)) => {
                let elapsed = start.elapsed();
                match classify(&error) {
                    RequestFailure::Connect(what) => PartOutcome::plain(
                        false,
                        format!("{label}: connect {what}"),
                        dial(false, elapsed),
                    ),
                    RequestFailure::Tls(what) => PartOutcome::plain(
                        false,
                        format!("{label}: tls: {what}"),
                        dial(true, elapsed),
                    ),
                    RequestFailure::Other(what) => {
                        PartOutcome::plain(false, format!("{label}: {what}"), dial(true, elapsed))
                    }
                }
            }
            Err(_) => PartOutcome::plain(
                false,
                format!("{label}: no answer within {}", millis(budget.timeout)),
                dial(false, start.elapsed()),
            ),
        }
    }

    /// The client for `part` probing a server at `ip`.
    pub(super) fn client(&self, part: &HttpPart, ip: IpAddr) -> reqwest::Result<Client> {
        let key = ClientKey {
            tls: part.tls,
            resolve: part.check.host.clone().map(|host| (host, ip)),
        };
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = build_client(&self.inner.tls[part.tls], key.resolve.as_ref())?;
        tracing::debug!(host = ?key.resolve, "new HTTP client for health checks");
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// The `User-Agent` of health checks.
pub(super) const AGENT: &str = concat!("daas-lb/", env!("CARGO_PKG_VERSION"), " health-check");

pub(super) const fn scheme(check: &HttpCheck) -> &'static str {
    if check.tls.is_some() { "https" } else { "http" }
}

/// Names an http part of kind all, e.g. `http :8080/readyz`.
pub(super) fn describe_http(check: &HttpCheck) -> String {
    let host = check.host.as_deref().unwrap_or("");
    let port = check
        .port
        .map(|port| format!(":{port}"))
        .unwrap_or_default();
    format!("{} {host}{port}{}", scheme(check), check.path)
}

/// The reason of a check whose answer passed.
pub(super) fn passed(label: &str, status: u16, elapsed: Duration) -> String {
    format!("{label} {status} in {}", millis(elapsed))
}

/// Why `status` fails `check`, or `None` when it is expected.
pub(super) fn status_failure(label: &str, check: &HttpCheck, status: u16) -> Option<String> {
    (!check.expected_status.contains(&status)).then(|| {
        format!(
            "{label} {status} (expected {})",
            expected_list(&check.expected_status)
        )
    })
}

/// Why a check failed whose answer's body could not be read.
pub(super) fn body_unread(label: &str, status: u16, error: &(dyn StdError + 'static)) -> String {
    format!(
        "{label} {status}: reading the body failed: {}",
        root_cause(error)
    )
}

/// Why `body` (its first bytes when `truncated`) fails `body_contains:
/// needle`, or `None` when it holds the needle.
pub(super) fn body_failure(
    label: &str,
    needle: &str,
    body: &[u8],
    truncated: bool,
) -> Option<String> {
    if contains(body, needle.as_bytes()) {
        return None;
    }
    let within = if truncated {
        " in its first 64 KiB"
    } else {
        ""
    };
    Some(format!("{label}: body lacks {needle:?}{within}"))
}

/// `200`, `200 or 204`, `200, 204 or 301`.
pub(super) fn expected_list(codes: &[u16]) -> String {
    match codes {
        [] => String::new(),
        [only] => only.to_string(),
        [rest @ .., last] => {
            let rest: Vec<String> = rest.iter().map(ToString::to_string).collect();
            format!("{} or {last}", rest.join(", "))
        }
    }
}

/// A client that connects anew for every request (no pooled connections,
/// so every check exercises the connect), follows no redirects and ignores
/// proxy settings from the environment. `resolve` maps a `host` to the
/// server's IP.
pub(super) fn build_client(
    setting: &TlsSetting,
    resolve: Option<&(String, IpAddr)>,
) -> reqwest::Result<Client> {
    let mut builder = Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .user_agent(AGENT);
    if let Some(options) = &setting.options {
        if !setting.roots.is_empty() {
            builder = builder.tls_built_in_root_certs(false);
            for root in &setting.roots {
                builder = builder.add_root_certificate(root.clone());
            }
        }
        if options.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
    }
    if let Some((host, ip)) = resolve {
        // The port comes from the URL.
        builder = builder.resolve(host, SocketAddr::new(*ip, 0));
    }
    builder.build()
}

/// Reads at most `limit` bytes of the body; `true` when it stopped early.
pub(super) async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> reqwest::Result<(Vec<u8>, bool)> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if keep_up_to(&mut body, &chunk, limit) {
            return Ok((body, true));
        }
    }
    Ok((body, false))
}

/// Appends what of `chunk` fits in `body` below `limit` bytes; `true` when
/// the limit is reached (the rest of the body is not read).
pub(super) fn keep_up_to(body: &mut Vec<u8>, chunk: &[u8], limit: usize) -> bool {
    let room = limit - body.len();
    if chunk.len() >= room {
        body.extend_from_slice(&chunk[..room]);
        return true;
    }
    body.extend_from_slice(chunk);
    false
}

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// Sorts a failed request: the TCP connect (a failed dial), the TLS
/// handshake, or later.
pub(super) fn classify(error: &reqwest::Error) -> RequestFailure {
    let connecting = error.is_connect();
    // hyper-util's connector wraps TCP connect errors in an error with this text.
    let mut tcp_connect = false;
    let mut last: Option<&(dyn StdError + 'static)> = None;
    let mut source = error.source();
    while let Some(cause) = source {
        if connecting && cause.to_string() == "tcp connect error" {
            tcp_connect = true;
        }
        if let Some(io_error) = cause.downcast_ref::<io::Error>().map(innermost_io) {
            // rustls errors reach us as InvalidData I/O errors.
            if connecting && io_error.kind() == io::ErrorKind::InvalidData && !tcp_connect {
                return RequestFailure::Tls(io_error.to_string());
            }
            let connect_kind = matches!(
                io_error.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::AddrNotAvailable
            );
            if tcp_connect || (connecting && connect_kind) {
                return RequestFailure::Connect(describe_io(io_error));
            }
        }
        last = Some(cause);
        source = cause.source();
    }
    if tcp_connect {
        return RequestFailure::Connect("failed".to_owned());
    }
    RequestFailure::Other(last.map_or_else(|| error.to_string(), ToString::to_string))
}

/// The innermost of I/O errors wrapped in each other (which
/// [`StdError::source`] skips).
pub(super) fn innermost_io(mut error: &io::Error) -> &io::Error {
    while let Some(inner) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<io::Error>())
    {
        error = inner;
    }
    error
}

/// The innermost cause of `error`, which says what went wrong.
pub(super) fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// `refused`, `host unreachable`, ... for connect errors.
pub(super) fn describe_io(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "refused".to_owned(),
        io::ErrorKind::HostUnreachable => "host unreachable".to_owned(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".to_owned(),
        io::ErrorKind::TimedOut => "timed out".to_owned(),
        io::ErrorKind::ConnectionReset => "reset".to_owned(),
        _ => format!("failed: {error}"),
    }
}
