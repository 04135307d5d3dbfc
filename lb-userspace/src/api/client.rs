//! The command line's client: one HTTP/1.1 request per connection to a
//! running daemon, over the control socket (every change) or TCP
//! (`api_addr`: status; changes only with the bearer token).

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::status::{ServiceStatus, Status};

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

    fn connect(&self) -> anyhow::Result<Box<dyn ReadWrite>> {
        match self {
            Self::Socket(path) => {
                let stream = UnixStream::connect(path).map_err(|err| socket_error(path, err))?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                stream.set_write_timeout(Some(TIMEOUT))?;
                Ok(Box::new(stream))
            }
            Self::Tcp { addr, .. } => {
                let stream = TcpStream::connect_timeout(addr, TIMEOUT).with_context(|| {
                    format!("connecting to the daas-lb API at {addr} (is `daas-lb run` running?)")
                })?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                stream.set_write_timeout(Some(TIMEOUT))?;
                Ok(Box::new(stream))
            }
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn socket_error(path: &Path, err: io::Error) -> anyhow::Error {
    let hint = match err.kind() {
        io::ErrorKind::PermissionDenied => {
            " (only root, or members of the daemon's control_group, may change the load balancer)"
        }
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            " (is `daas-lb run` running? its config's control_socket names the path)"
        }
        _ => "",
    };
    anyhow::Error::new(err).context(format!(
        "connecting to the control socket {}{hint}",
        path.display()
    ))
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

/// One request (`Connection: close`) with an optional JSON body; the status
/// code and the (de-chunked) body.
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = endpoint.connect()?;
    let body = body.unwrap_or_default();
    let (host, auth) = match endpoint {
        Endpoint::Socket(_) => ("localhost".to_owned(), String::new()),
        Endpoint::Tcp { addr, token } => (
            addr.to_string(),
            token
                .as_ref()
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default(),
        ),
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}Accept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .with_context(|| format!("sending the request to {endpoint}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading the response from {endpoint}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed HTTP response from {endpoint}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("malformed status line from {endpoint}: {status_line:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

/// Decodes a chunked body (enough for our own server's responses).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

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
            err.contains("connecting to the control socket /nonexistent/daas-lb/control.sock (is `daas-lb run` running?"),
            "{err}"
        );
    }
}
