//! The command line's client: one request per call to a running daemon,
//! over the control socket (every change) or TCP (`api_addr`: status;
//! changes only with the bearer token), through reqwest's blocking client.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use reqwest::{
    Method,
    blocking::Client,
    header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE},
};

use super::status::{ServiceStatus, Status};
use crate::config::KernelLog;

/// How long one request may take (connect, send, answer).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a running daemon listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The control socket (`control_socket`).
    Socket(PathBuf),
    /// `api_addr`, with the bearer token for changes if there is one.
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The token of `api_token_file`.
        token: Option<String>,
    },
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self::Tcp { addr, token: None }
    }
}

impl From<&Path> for Endpoint {
    fn from(path: &Path) -> Self {
        Self::Socket(path.to_path_buf())
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Socket(path) => write!(f, "{}", path.display()),
            Self::Tcp { addr, .. } => write!(f, "{addr}"),
        }
    }
}

impl Endpoint {
    /// `api_addr` with the token read from `token_file` (one line).
    pub fn tcp_with_token_file(addr: SocketAddr, token_file: &Path) -> anyhow::Result<Self> {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading the token file {}", token_file.display()))?;
        Ok(Self::Tcp {
            addr,
            token: Some(token.trim().to_owned()),
        })
    }

    /// A client for this endpoint and the URL of `path` on it.
    fn client(&self, path: &str) -> anyhow::Result<(Client, String)> {
        let builder = Client::builder().timeout(TIMEOUT).no_proxy();
        let (builder, url) = match self {
            // The host part is not used on a Unix socket.
            Self::Socket(socket) => (
                builder.unix_socket(socket.as_path()),
                format!("http://localhost{path}"),
            ),
            Self::Tcp { addr, .. } => (builder, format!("http://{addr}{path}")),
        };
        let client = builder
            .build()
            .context("building the HTTP client of the command line")?;
        Ok((client, url))
    }

    /// The error of a request that got no answer, with what to check.
    fn unreachable(&self, err: reqwest::Error) -> anyhow::Error {
        let hint = match self {
            Self::Socket(path) => {
                let cause = std::error::Error::source(&err).and_then(|mut e| {
                    loop {
                        if let Some(io) = e.downcast_ref::<std::io::Error>() {
                            break Some(io.kind());
                        }
                        e = e.source()?;
                    }
                });
                let why = match cause {
                    Some(std::io::ErrorKind::PermissionDenied) => {
                        " (Permission denied: only root, or members of the daemon's \
                         control_group, may change the load balancer)"
                    }
                    Some(std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                        " (is `daas-lb run` running? its config's control_socket names the path)"
                    }
                    _ => "",
                };
                format!("connecting to the control socket {}{why}", path.display())
            }
            Self::Tcp { addr, .. } => {
                format!("connecting to the daas-lb API at {addr} (is `daas-lb run` running?)")
            }
        };
        anyhow::Error::new(err).context(hint)
    }
}

/// `GET /status`.
pub fn fetch_status(endpoint: impl Into<Endpoint>) -> anyhow::Result<Status> {
    let endpoint = endpoint.into();
    let body = get(endpoint.clone(), "/status")?;
    serde_json::from_str(&body).with_context(|| format!("parsing the status JSON from {endpoint}"))
}

/// `GET path`; the body of a 200.
pub fn get(endpoint: impl Into<Endpoint>, path: &str) -> anyhow::Result<String> {
    let endpoint = endpoint.into();
    let (code, body) = request(&endpoint, "GET", path, None)?;
    if code != 200 {
        bail!("{endpoint}{path} answered {code}: {}", error_text(&body));
    }
    Ok(body)
}

/// Replaces a service's servers (`PUT /services/{name}/servers`); the
/// service's new status.
pub fn put_servers(
    endpoint: &Endpoint,
    service: &str,
    servers: &[String],
) -> anyhow::Result<ServiceStatus> {
    let path = format!("/services/{service}/servers");
    let body = serde_json::to_string(servers)?;
    let (code, reply) = request(endpoint, "PUT", &path, Some(&body))?;
    if code != 200 {
        bail!("{endpoint}{path} answered {code}: {}", error_text(&reply));
    }
    serde_json::from_str(&reply).with_context(|| format!("parsing the reply from {endpoint}{path}"))
}

/// Sets what the kernel programs log (`PUT /kernel-log`) until the
/// daemon's next reload; the level the daemon confirms.
pub fn put_kernel_log(endpoint: &Endpoint, level: KernelLog) -> anyhow::Result<KernelLog> {
    let path = "/kernel-log";
    let body = serde_json::to_string(&level)?;
    let (code, reply) = request(endpoint, "PUT", path, Some(&body))?;
    if code != 200 {
        bail!("{endpoint}{path} answered {code}: {}", error_text(&reply));
    }
    let reply: serde_json::Value = serde_json::from_str(&reply)
        .with_context(|| format!("parsing the reply from {endpoint}{path}"))?;
    serde_json::from_value(reply["kernel_log"].clone())
        .with_context(|| format!("the reply from {endpoint}{path} has no kernel_log level"))
}

/// Reloads the daemon's config file (`POST /reload`); the daemon's message.
pub fn reload(endpoint: &Endpoint) -> anyhow::Result<String> {
    let (code, reply) = request(endpoint, "POST", "/reload", None)?;
    if code != 200 {
        bail!("{endpoint}/reload answered {code}: {}", error_text(&reply));
    }
    Ok(serde_json::from_str::<serde_json::Value>(&reply)
        .ok()
        .and_then(|v| v["reloaded"].as_str().map(str::to_owned))
        .unwrap_or(reply))
}

/// The `error` field of a JSON error body, or the body itself.
fn error_text(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

/// One request with an optional JSON body; the status code and the body.
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let method = Method::from_bytes(method.as_bytes())
        .with_context(|| format!("{method:?} is not an HTTP method"))?;
    let (client, url) = endpoint.client(path)?;
    let mut request = client
        .request(method, &url)
        .header(CONNECTION, "close")
        .header(CONTENT_TYPE, "application/json");
    if let Endpoint::Tcp {
        token: Some(token), ..
    } = endpoint
    {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let response = request.send().map_err(|err| endpoint.unreachable(err))?;
    let code = response.status().as_u16();
    let text = response
        .text()
        .with_context(|| format!("reading the response from {endpoint}{path}"))?;
    Ok((code, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_says_what_to_check() {
        let err = format!(
            "{:#}",
            request(
                &Endpoint::Socket("/nonexistent/daas-lb/control.sock".into()),
                "POST",
                "/reload",
                None
            )
            .unwrap_err()
        );
        assert!(
            err.contains(
                "connecting to the control socket /nonexistent/daas-lb/control.sock (is `daas-lb run` running?"
            ),
            "{err}"
        );
    }
}
