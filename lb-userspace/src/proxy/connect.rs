//! Dialing K3s servers through an HTTP CONNECT forward proxy, as the K3s
//! agent's load balancer does when `K3S_AGENT_HTTP_PROXY_ALLOWED=true`.
//!
//! Two halves:
//!
//! - [`ProxyEnv`]: which proxy, if any, a server is dialed through. It reads
//!   the variables K3s reads (through Go's `golang.org/x/net/http/httpproxy`)
//!   with the same precedence and `NO_PROXY` rules; see [`ProxyEnv::proxy_for`].
//! - [`dial`]: one TCP connect to the proxy, one `CONNECT host:port HTTP/1.1`
//!   exchange, and the socket handed over as the tunnel once the proxy
//!   answers 2xx.
//!
//! Invariants:
//!
//! - K3s servers are `https://` URLs, so only `HTTPS_PROXY`/`https_proxy`
//!   ever applies to them; `HTTP_PROXY` is never used (Go uses it for
//!   `http://` URLs only, and K3s passes the server URL as is).
//! - Loopback targets are never proxied, whatever the environment.
//! - A dial is bounded as a whole by its timeout (TCP connect to the proxy
//!   plus the CONNECT exchange).
//! - The proxy's answer head is read without buffering past its end (the
//!   bytes are peeked first and only the head is consumed), so whatever the
//!   proxy or the server sends after it stays in the socket for the caller;
//!   the head is capped at [`MAX_RESPONSE_HEAD`] bytes.
//! - Proxy passwords never reach `Display`, `Debug` or error messages.
//!
//! Where this differs from K3s (which decides once, for its `--server` URL,
//! and then dials every server through `github.com/mwitkow/go-http-dialer`):
//! the decision is per server address ([`ProxyEnv::proxy_for_host`] gives
//! K3s's for a URL host); any 2xx opens the tunnel (K3s: 200 only); URL
//! credentials are sent as basic auth (K3s's dialer drops them); the
//! CONNECT exchange is bounded too (K3s bounds the TCP connect only); and
//! `socks5://` and `https://` proxies are refused with an error where K3s
//! supports them.

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{Instant, timeout_at},
};

/// The variable that lets the K3s agent dial servers through a proxy at all
/// (parsed like Go's `strconv.ParseBool`; anything else counts as false).
pub const PROXY_ALLOWED_VAR: &str = "K3S_AGENT_HTTP_PROXY_ALLOWED";

/// The proxy port when the URL has none. K3s dials through
/// `github.com/mwitkow/go-http-dialer`, which appends `:8080` to an `http`
/// proxy without a port (Go's own `net/http` would use 80; K3s does not use
/// it for this dial).
pub const DEFAULT_PROXY_PORT: u16 = 8080;

/// The largest proxy answer head (status line and headers, with the blank
/// line) [`dial`] reads before giving up with [`ConnectError::Protocol`].
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// The variables read for the proxy of `https://` URLs, in Go's order: the
/// first one set to a non-empty value wins.
const HTTPS_PROXY_VARS: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];
/// Read only to say that they are ignored ([`ProxyEnv::ignored_http_proxy`]).
const HTTP_PROXY_VARS: [&str; 2] = ["HTTP_PROXY", "http_proxy"];
/// The exclusion list, in Go's order.
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// Whether [`PROXY_ALLOWED_VAR`] allows proxied dials: its value is true for
/// Go's `strconv.ParseBool` (`1`, `t`, `T`, `TRUE`, `true`, `True`). K3s
/// ignores the parse error of any other value, which then means false.
pub fn proxy_allowed(get: impl Fn(&str) -> Option<String>) -> bool {
    matches!(
        get(PROXY_ALLOWED_VAR).as_deref(),
        Some("1" | "t" | "T" | "TRUE" | "true" | "True")
    )
}

/// The first of `names` whose value is set and not empty (Go's `getEnvAny`).
fn first_set(
    get: &impl Fn(&str) -> Option<String>,
    names: [&'static str; 2],
) -> Option<(&'static str, String)> {
    names
        .into_iter()
        .find_map(|name| get(name).filter(|v| !v.is_empty()).map(|v| (name, v)))
}

/// Proxy settings as K3s reads them from the environment.
///
/// Only the `https` proxy is kept: K3s asks Go's `httpproxy` for the proxy of
/// its `https://` server URL, and Go then uses `HTTPS_PROXY` (or
/// `https_proxy`) and never falls back to `HTTP_PROXY`. A server is dialed
/// directly when no `HTTPS_PROXY` is set even if `HTTP_PROXY` is, exactly as
/// K3s does; [`ProxyEnv::ignored_http_proxy`] tells the caller so it can say
/// it in a log line.
///
/// K3s reads none of this unless [`proxy_allowed`]: the caller checks that
/// first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    https: Option<ProxyUrl>,
    ignored_http: Option<String>,
    no_proxy: NoProxy,
}

impl ProxyEnv {
    /// Settings with this proxy (`None`: every dial is direct) and these
    /// exclusions (config overrides).
    pub fn new(https: Option<ProxyUrl>, no_proxy: NoProxy) -> Self {
        Self {
            https,
            ignored_http: None,
            no_proxy,
        }
    }

    /// From the process environment: `HTTPS_PROXY`, else `https_proxy`, and
    /// `NO_PROXY`, else `no_proxy` (the first set to a non-empty value wins,
    /// as in Go). A value that is not UTF-8 counts as unset.
    pub fn from_env() -> Result<Self, ProxyEnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From any lookup of variable names (tests; config overrides); same
    /// rules as [`ProxyEnv::from_env`].
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ProxyEnvError> {
        let https = match first_set(&get, HTTPS_PROXY_VARS) {
            Some((var, value)) => {
                Some(value.parse::<ProxyUrl>().map_err(|error| ProxyEnvError {
                    var,
                    value: redact(&value),
                    error,
                })?)
            }
            None => None,
        };
        let ignored_http = if https.is_some() {
            None
        } else {
            first_set(&get, HTTP_PROXY_VARS).map(|(_, value)| redact(&value))
        };
        let no_proxy = first_set(&get, NO_PROXY_VARS)
            .map(|(_, value)| NoProxy::parse(&value))
            .unwrap_or_default();
        Ok(Self {
            https,
            ignored_http,
            no_proxy,
        })
    }

    /// The proxy of `https://` URLs, whatever the exclusions.
    pub fn https_proxy(&self) -> Option<&ProxyUrl> {
        self.https.as_ref()
    }

    /// The exclusions.
    pub fn no_proxy(&self) -> &NoProxy {
        &self.no_proxy
    }

    /// `HTTP_PROXY` (or `http_proxy`, password masked) when it is set while
    /// no `HTTPS_PROXY` is: K3s, like this module, then dials directly, which
    /// surprises operators who set only `HTTP_PROXY`.
    pub fn ignored_http_proxy(&self) -> Option<&str> {
        self.ignored_http.as_deref()
    }

    /// The proxy to dial `server` through, or `None` for a direct dial: no
    /// `HTTPS_PROXY` set, a loopback `server` (Go never proxies loopback
    /// addresses, nor `localhost`), or a `NO_PROXY` match (see [`NoProxy`]).
    ///
    /// K3s decides once, for the host of the agent's `--server` URL, and
    /// then dials every server of the load balancer the same way; this
    /// decides per server address. Where the `--server` URL names a host,
    /// [`ProxyEnv::proxy_for_host`] gives K3s's decision for it.
    pub fn proxy_for(&self, server: SocketAddr) -> Option<&ProxyUrl> {
        let ip = server.ip().to_canonical();
        self.decide(&ip.to_string(), Some(ip), server.port())
    }

    /// [`ProxyEnv::proxy_for`] for a URL's host (a name, an IPv4 address or
    /// an IPv6 address with or without brackets) and port.
    pub fn proxy_for_host(&self, host: &str, port: u16) -> Option<&ProxyUrl> {
        let host = host.trim();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_lowercase();
        if host == "localhost" {
            return None;
        }
        let ip = host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        self.decide(&host, ip, port)
    }

    fn decide(&self, host: &str, ip: Option<IpAddr>, port: u16) -> Option<&ProxyUrl> {
        let proxy = self.https.as_ref()?;
        if ip.is_some_and(|ip| ip.is_loopback()) || self.no_proxy.excludes(host, ip, port) {
            return None;
        }
        Some(proxy)
    }
}

/// A proxy variable that cannot be used: which variable, its value
/// (password masked) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyEnvError {
    /// The variable, e.g. `HTTPS_PROXY`.
    pub var: &'static str,
    /// Its value, with any password replaced by `***`.
    pub value: String,
    /// What is wrong with it.
    pub error: ProxyUrlError,
}

impl fmt::Display for ProxyEnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.var, self.value, self.error)
    }
}

impl std::error::Error for ProxyEnvError {}

/// `value` with the password of its user info (if any) replaced by `***`.
fn redact(value: &str) -> String {
    let start = value.find("://").map_or(0, |i| i + 3);
    let end = value[start..]
        .find(['/', '?', '#'])
        .map_or(value.len(), |i| start + i);
    let authority = &value[start..end];
    let Some(at) = authority.rfind('@') else {
        return value.to_owned();
    };
    match authority[..at].split_once(':') {
        Some((user, _)) => format!(
            "{}{user}:***@{}{}",
            &value[..start],
            &authority[at + 1..],
            &value[end..]
        ),
        None => value.to_owned(),
    }
}

/// An `http://` forward proxy: host, port and optional basic-auth
/// credentials.
///
/// Parsed from what `HTTPS_PROXY` may hold (as Go reads it):
/// `http://[user[:password]@]host[:port][/...]`, or the same without the
/// scheme (Go assumes `http`); the port defaults to [`DEFAULT_PROXY_PORT`],
/// user and password are percent-decoded, and a path is ignored. Refused:
/// `https://` (TLS to the proxy is not implemented), `socks5://` and any
/// other scheme.
///
/// Credentials go to the proxy as `Proxy-Authorization: Basic ...` on every
/// CONNECT (as Go's `net/http` does; K3s's dialer drops them). `Display`
/// shows `host:port` only and `Debug` masks the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
}

impl ProxyUrl {
    /// A proxy at `host` (a name or an IP address, IPv6 without brackets)
    /// and `port`, without credentials.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            user: None,
            password: None,
        }
    }

    /// The same proxy with basic-auth credentials.
    #[must_use]
    pub fn with_basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Its host (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The basic-auth user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The value of the `Proxy-Authorization` header, if credentials are set
    /// (a user without a password sends `user:`, as Go does).
    fn authorization(&self) -> Option<String> {
        let user = self.user.as_deref()?;
        let password = self.password.as_deref().unwrap_or_default();
        Some(format!(
            "Basic {}",
            base64(format!("{user}:{password}").as_bytes())
        ))
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl FromStr for ProxyUrl {
    type Err = ProxyUrlError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| Err(ProxyUrlError { reason });
        let value = value.trim();
        if value.is_empty() {
            return err("empty proxy URL".into());
        }
        let rest = match value.split_once("://") {
            Some((scheme, rest)) if is_scheme(scheme) => match scheme.to_ascii_lowercase().as_str()
            {
                "http" => rest,
                "https" => {
                    return err(
                        "https:// proxies (TLS to the proxy) are not supported; use an http:// proxy"
                            .into(),
                    );
                }
                other => {
                    return err(format!(
                        "unsupported proxy scheme {other}:// (only http:// proxies are supported)"
                    ));
                }
            },
            // Go: a value without a scheme is `host[:port]` of an http proxy.
            _ => value,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (userinfo, None),
                };
                let user = percent_decode(user).map_err(|reason| ProxyUrlError { reason })?;
                let password = password
                    .map(percent_decode)
                    .transpose()
                    .map_err(|reason| ProxyUrlError { reason })?;
                (Some(user), password)
            }
        };
        let (host, port) = split_proxy_host(hostport).map_err(|reason| ProxyUrlError { reason })?;
        Ok(Self {
            host,
            port,
            user,
            password,
        })
    }
}

/// Whether `s` is a URL scheme (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`).
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `host[:port]` or `[v6][:port]` of a proxy URL: the host (lower case, no
/// brackets) and the port ([`DEFAULT_PROXY_PORT`] when absent).
fn split_proxy_host(hostport: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("unclosed [ in the proxy host {hostport:?}"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("[{host}] is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {after:?} after [{host}]"))?,
            ),
        };
        (host, port)
    } else {
        match hostport.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err(format!(
                    "{hostport:?}: an IPv6 proxy address must be in brackets, as [addr]:port"
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("no proxy host".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
    {
        return Err(format!("invalid proxy host {host:?}"));
    }
    let port = match port {
        None => DEFAULT_PROXY_PORT,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("invalid proxy port {port:?}")),
            Ok(_) if !port.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(format!("invalid proxy port {port:?}"));
            }
            Ok(port) => port,
        },
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// Decodes `%XX` escapes of a URL's user info.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("invalid %-escape in the proxy user info")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the proxy user info is not UTF-8 once decoded".into())
}

/// Standard base64 with padding (RFC 4648), for `Proxy-Authorization`.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A proxy URL that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyUrlError {
    reason: String,
}

impl fmt::Display for ProxyUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ProxyUrlError {}

/// The `NO_PROXY` exclusions, with Go's `httpproxy` rules. Entries are
/// comma-separated, trimmed and lower-cased; empty ones are skipped, and a
/// malformed one is ignored (never an error, as in Go):
///
/// - `*`: nothing is proxied;
/// - `10.0.0.0/8`, `fd00::/8`: any address in the CIDR, any port;
/// - `10.0.0.1`, `fd00::1`: that address, any port; `10.0.0.1:6443`,
///   `[fd00::1]:6443`: that address and port only;
/// - `example.com`: that name and its subdomains; `.example.com` and
///   `*.example.com`: subdomains only; each may end in `:port`.
///
/// Name rules compare text suffixes, so they never match a server given by
/// IP address unless the rule is itself a tail of the address text (Go's
/// quirk, kept: `0.0.1` excludes `10.0.0.1`). Non-ASCII names are not
/// converted to punycode (Go does); they cannot match an address either way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoProxy {
    rules: Vec<Rule>,
}

/// One `NO_PROXY` entry. A port of `""` matches any port.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    All,
    Cidr {
        net: IpAddr,
        prefix: u8,
    },
    Ip {
        ip: IpAddr,
        port: String,
    },
    Domain {
        suffix: String,
        port: String,
        or_exact: bool,
    },
}

impl NoProxy {
    /// Parses a `NO_PROXY` value (never fails; see [`NoProxy`]).
    pub fn parse(value: &str) -> Self {
        let mut rules = Vec::new();
        for entry in value.split(',') {
            let entry = entry.trim().to_lowercase();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                return Self {
                    rules: vec![Rule::All],
                };
            }
            if let Some((net, prefix)) = parse_cidr(&entry) {
                rules.push(Rule::Cidr { net, prefix });
                continue;
            }
            let (host, port) = match split_host_port(&entry) {
                Some(("", _)) => continue,
                Some((host, port)) => (host, port),
                None => (entry.as_str(), ""),
            };
            if let Ok(ip) = host.parse::<IpAddr>() {
                rules.push(Rule::Ip {
                    ip: ip.to_canonical(),
                    port: port.to_owned(),
                });
                continue;
            }
            let host = host
                .strip_prefix('*')
                .filter(|h| h.starts_with('.'))
                .unwrap_or(host);
            let (suffix, or_exact) = match host.strip_prefix('.') {
                Some(_) => (host.to_owned(), false),
                None => (format!(".{host}"), true),
            };
            rules.push(Rule::Domain {
                suffix,
                port: port.to_owned(),
                or_exact,
            });
        }
        Self { rules }
    }

    /// Whether a dial to `host` (lower case; the address text when `ip` is
    /// set) and `port` is excluded from proxying.
    fn excludes(&self, host: &str, ip: Option<IpAddr>, port: u16) -> bool {
        let target_port = port.to_string();
        let port_ok = |rule_port: &str| rule_port.is_empty() || rule_port == target_port;
        self.rules.iter().any(|rule| match rule {
            Rule::All => true,
            Rule::Cidr { net, prefix } => ip.is_some_and(|ip| cidr_contains(*net, *prefix, ip)),
            Rule::Ip { ip: rule_ip, port } => ip == Some(*rule_ip) && port_ok(port),
            Rule::Domain {
                suffix,
                port,
                or_exact,
            } => {
                (host.ends_with(suffix.as_str()) || (*or_exact && host == &suffix[1..]))
                    && port_ok(port)
            }
        })
    }

    /// Whether nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// `addr/prefix` (Go's `net.ParseCIDR`): the address (IPv4-mapped IPv6 as
/// IPv4, its prefix less 96, as Go masks it) and the prefix length.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return None;
    }
    match addr.to_canonical() {
        IpAddr::V4(v4) if addr.is_ipv6() => Some((IpAddr::V4(v4), prefix.saturating_sub(96))),
        canonical => Some((canonical, prefix)),
    }
}

/// Whether `ip` is in `net/prefix` (same family only).
fn cidr_contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// Go's `net.SplitHostPort`: `host:port` or `[host]:port` (the port may be
/// empty), or `None` when there is no port or too many colons.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return (!port.contains([':', '[', ']'])).then_some((host, port));
    }
    let (host, port) = s.rsplit_once(':')?;
    (!host.contains([':', '[', ']']) && !port.contains([']'])).then_some((host, port))
}

/// Why [`dial`] failed; every variant names the proxy and the server.
#[derive(Debug)]
pub enum ConnectError {
    /// No TCP connection to the proxy (refused, unroutable, name not found,
    /// or none within the timeout).
    Unreachable {
        /// The proxy (`host:port`).
        proxy: String,
        /// The server the tunnel was for.
        server: SocketAddr,
        /// What the connect returned.
        source: io::Error,
    },
    /// The proxy answered CONNECT with a status other than 2xx.
    Refused {
        /// The proxy (`host:port`).
        proxy: String,
        /// The server the tunnel was for.
        server: SocketAddr,
        /// The answer's status code.
        status: u16,
        /// The answer's reason phrase (at most 200 characters).
        reason: String,
    },
    /// The proxy's answer was not an HTTP/1.x answer head within
    /// [`MAX_RESPONSE_HEAD`] bytes, or the connection failed or closed
    /// before its end.
    Protocol {
        /// The proxy (`host:port`).
        proxy: String,
        /// The server the tunnel was for.
        server: SocketAddr,
        /// What was wrong.
        detail: String,
    },
    /// The proxy took the connection but the CONNECT exchange did not end
    /// within the dial's timeout.
    Timeout {
        /// The proxy (`host:port`).
        proxy: String,
        /// The server the tunnel was for.
        server: SocketAddr,
        /// The dial's whole timeout.
        timeout: Duration,
    },
}

impl ConnectError {
    /// A short label for metrics and logs: `proxy_unreachable`,
    /// `proxy_refused`, `proxy_protocol` or `proxy_timeout`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "proxy_unreachable",
            Self::Refused { .. } => "proxy_refused",
            Self::Protocol { .. } => "proxy_protocol",
            Self::Timeout { .. } => "proxy_timeout",
        }
    }

    /// The proxy's status code, for [`ConnectError::Refused`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable {
                proxy,
                server,
                source,
            } => write!(
                f,
                "proxy {proxy} unreachable (for CONNECT to {server}): {source}"
            ),
            Self::Refused {
                proxy,
                server,
                status,
                reason,
            } => write!(
                f,
                "proxy {proxy} refused CONNECT to {server}: {status} {reason}"
            ),
            Self::Protocol {
                proxy,
                server,
                detail,
            } => write!(f, "proxy {proxy}, CONNECT to {server}: {detail}"),
            Self::Timeout {
                proxy,
                server,
                timeout,
            } => write!(
                f,
                "proxy {proxy} did not complete CONNECT to {server} within {timeout:?}"
            ),
        }
    }
}

impl std::error::Error for ConnectError {}

/// What went wrong in the CONNECT exchange itself.
enum Exchange {
    Refused { status: u16, reason: String },
    Protocol(String),
}

/// Dials `server` through `proxy` with HTTP/1.1 CONNECT and returns the
/// tunnel once the proxy answers 2xx (K3s's dialer wants exactly 200;
/// RFC 9110 makes any 2xx a tunnel). The whole dial (TCP connect to the
/// proxy, request, answer head) is bounded by `timeout`: a connect that does
/// not finish in time is [`ConnectError::Unreachable`], an exchange that
/// does not is [`ConnectError::Timeout`].
///
/// The request is `CONNECT <server> HTTP/1.1` with `Host`, `User-Agent` and,
/// with credentials, `Proxy-Authorization: Basic ...`. The answer head is
/// consumed exactly (bytes after it stay readable on the returned socket).
/// The socket has `TCP_NODELAY` set, as Go sets it on every TCP connection.
pub async fn dial(
    proxy: &ProxyUrl,
    server: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let deadline = Instant::now() + timeout;
    let connected = timeout_at(deadline, TcpStream::connect((proxy.host(), proxy.port()))).await;
    let mut stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(ConnectError::Unreachable {
                proxy: proxy.to_string(),
                server,
                source,
            });
        }
        Err(_) => {
            return Err(ConnectError::Unreachable {
                proxy: proxy.to_string(),
                server,
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TCP connection within {timeout:?}"),
                ),
            });
        }
    };
    // Go's default; a failure only costs latency, never correctness.
    let _ = stream.set_nodelay(true);
    match timeout_at(deadline, exchange(&mut stream, proxy, server)).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(Exchange::Refused { status, reason })) => Err(ConnectError::Refused {
            proxy: proxy.to_string(),
            server,
            status,
            reason,
        }),
        Ok(Err(Exchange::Protocol(detail))) => Err(ConnectError::Protocol {
            proxy: proxy.to_string(),
            server,
            detail,
        }),
        Err(_) => Err(ConnectError::Timeout {
            proxy: proxy.to_string(),
            server,
            timeout,
        }),
    }
}

/// The CONNECT request for `server` through `proxy`.
fn connect_request(proxy: &ProxyUrl, server: SocketAddr) -> String {
    let mut request = format!(
        "CONNECT {server} HTTP/1.1\r\nHost: {server}\r\nUser-Agent: daas-lb/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(authorization) = proxy.authorization() {
        request.push_str("Proxy-Authorization: ");
        request.push_str(&authorization);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

/// Sends the CONNECT request and reads the answer head.
async fn exchange(
    stream: &mut TcpStream,
    proxy: &ProxyUrl,
    server: SocketAddr,
) -> Result<(), Exchange> {
    stream
        .write_all(connect_request(proxy, server).as_bytes())
        .await
        .map_err(|e| Exchange::Protocol(format!("sending the request: {e}")))?;
    let head = read_head(stream).await?;
    let (status, reason) = parse_status_line(&head)?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(Exchange::Refused { status, reason })
    }
}

/// Reads the answer head (through its blank line) and nothing more: each
/// round peeks at what has arrived and consumes only up to the head's end.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, Exchange> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let room = MAX_RESPONSE_HEAD - head.len();
        if room == 0 {
            return Err(Exchange::Protocol(format!(
                "the answer's header block is longer than {MAX_RESPONSE_HEAD} bytes"
            )));
        }
        let want = room.min(buf.len());
        let peeked = stream
            .peek(&mut buf[..want])
            .await
            .map_err(|e| Exchange::Protocol(format!("reading the answer: {e}")))?;
        if peeked == 0 {
            return Err(Exchange::Protocol(if head.is_empty() {
                "the proxy closed the connection without answering".into()
            } else {
                "the proxy closed the connection before the end of the answer's header".into()
            }));
        }
        let old = head.len();
        head.extend_from_slice(&buf[..peeked]);
        let end = head_end(&head, old.saturating_sub(2));
        let take = end.map_or(peeked, |end| end - old);
        head.truncate(old + take);
        stream
            .read_exact(&mut buf[..take])
            .await
            .map_err(|e| Exchange::Protocol(format!("reading the answer: {e}")))?;
        debug_assert_eq!(buf[..take], head[old..]);
        if end.is_some() {
            return Ok(head);
        }
    }
}

/// The index just past the blank line ending a header block (`\n\r\n` or a
/// bare `\n\n`), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find_map(|i| {
        if buf[i] != b'\n' {
            return None;
        }
        match buf.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        }
    })
}

/// The status code and reason of an answer head's `HTTP/1.x NNN reason`.
fn parse_status_line(head: &[u8]) -> Result<(u16, String), Exchange> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let shown = || {
        let text = String::from_utf8_lossy(line);
        let cut: String = text.chars().take(80).collect();
        Exchange::Protocol(format!("not an HTTP/1.x status line: {cut:?}"))
    };
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
        .ok_or_else(shown)?;
    let (code, reason) = match rest {
        [a, b, c] => ([*a, *b, *c], &[][..]),
        [a, b, c, b' ', reason @ ..] => ([*a, *b, *c], reason),
        _ => return Err(shown()),
    };
    if !code.iter().all(u8::is_ascii_digit) || code[0] == b'0' {
        return Err(shown());
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let reason: String = String::from_utf8_lossy(reason)
        .trim()
        .chars()
        .take(200)
        .collect();
    Ok((status, reason))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::Ipv4Addr};

    use tokio::{net::TcpListener, sync::oneshot};

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A proxy env with `HTTPS_PROXY=http://proxy:3128` and this `NO_PROXY`.
    fn with_no_proxy(no_proxy: &str) -> ProxyEnv {
        ProxyEnv::from_lookup(env(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", no_proxy),
        ]))
        .unwrap()
    }

    fn proxied(env: &ProxyEnv, server: &str) -> bool {
        env.proxy_for(addr(server)).is_some()
    }

    #[test]
    fn no_proxy_ip_entries_match_the_address_and_port_given() {
        let env = with_no_proxy("10.0.0.1, 10.0.0.2:6443, [fd00::2]:6443, fd00::1");
        assert!(!proxied(&env, "10.0.0.1:6443"));
        assert!(!proxied(&env, "10.0.0.1:9345"));
        assert!(!proxied(&env, "10.0.0.2:6443"));
        assert!(proxied(&env, "10.0.0.2:9345"));
        assert!(!proxied(&env, "[fd00::2]:6443"));
        assert!(proxied(&env, "[fd00::2]:9345"));
        assert!(!proxied(&env, "[fd00::1]:1"));
        assert!(proxied(&env, "10.0.0.3:6443"));
        // An IPv4-mapped server is its IPv4 address, as Go's IP.Equal has it.
        assert!(!proxied(&env, "[::ffff:10.0.0.1]:6443"));
    }

    #[test]
    fn no_proxy_cidrs_match_any_port_of_their_family() {
        let env = with_no_proxy("10.1.0.0/16,fd00:1::/32,192.168.1.7/32");
        assert!(!proxied(&env, "10.1.200.3:6443"));
        assert!(proxied(&env, "10.2.0.1:6443"));
        assert!(!proxied(&env, "[fd00:1:ffff::9]:6443"));
        assert!(proxied(&env, "[fd00:2::9]:6443"));
        assert!(!proxied(&env, "192.168.1.7:1"));
        assert!(proxied(&env, "192.168.1.8:1"));
        // Malformed CIDRs are ignored, never errors.
        let env = with_no_proxy("10.0.0.0/33,10.0.0.0/,10.0.0.0/+8");
        assert!(proxied(&env, "10.0.0.1:6443"));
        // An IPv4-mapped CIDR covers the IPv4 addresses, as Go masks it.
        let env = with_no_proxy("::ffff:10.0.0.0/104");
        assert!(!proxied(&env, "10.0.0.9:6443"));
        assert!(proxied(&env, "11.0.0.9:6443"));
    }

    #[test]
    fn no_proxy_star_disables_every_proxy() {
        assert!(!proxied(&with_no_proxy("*"), "10.0.0.1:6443"));
        assert!(!proxied(
            &with_no_proxy("example.com, * ,10.0.0.9"),
            "10.0.0.1:6443"
        ));
        // `*` only as a whole entry.
        assert!(proxied(&with_no_proxy("*.1"), "10.0.0.2:6443"));
    }

    #[test]
    fn no_proxy_names_cannot_match_a_server_address() {
        let env =
            with_no_proxy("example.com,.example.com,*.example.com,example.com:6443,localhost");
        assert!(proxied(&env, "10.0.0.1:6443"));
        assert!(proxied(&env, "[fd00::1]:6443"));
        // They match names, as K3s decides for its --server URL.
        assert!(env.proxy_for_host("example.com", 6443).is_none());
        assert!(env.proxy_for_host("api.EXAMPLE.com", 6443).is_none());
        assert!(env.proxy_for_host("example.org", 6443).is_some());
    }

    #[test]
    fn no_proxy_name_forms_follow_go() {
        let exact_or_sub = with_no_proxy("example.com");
        assert!(exact_or_sub.proxy_for_host("example.com", 1).is_none());
        assert!(exact_or_sub.proxy_for_host("a.b.example.com", 1).is_none());
        assert!(exact_or_sub.proxy_for_host("badexample.com", 1).is_some());
        for sub_only in ["*.example.com", ".example.com"] {
            let env = with_no_proxy(sub_only);
            assert!(env.proxy_for_host("example.com", 1).is_some(), "{sub_only}");
            assert!(
                env.proxy_for_host("a.example.com", 1).is_none(),
                "{sub_only}"
            );
        }
        let with_port = with_no_proxy("example.com:6443");
        assert!(with_port.proxy_for_host("example.com", 6443).is_none());
        assert!(with_port.proxy_for_host("example.com", 9345).is_some());
        // Go's quirk: a name rule is a text suffix, also of an address.
        assert!(!proxied(&with_no_proxy("0.0.1"), "10.0.0.1:6443"));
    }

    #[test]
    fn no_proxy_skips_whitespace_empty_and_hostless_entries() {
        let env = with_no_proxy(" , ,\t10.0.0.1 ,,  :6443, [::1],10.0.0.2 ");
        assert!(!proxied(&env, "10.0.0.1:6443"));
        assert!(!proxied(&env, "10.0.0.2:6443"));
        assert!(proxied(&env, "10.0.0.3:6443"));
        assert!(NoProxy::parse(" , ,").is_empty());
        assert!(NoProxy::parse(":6443").is_empty());
    }

    #[test]
    fn loopback_servers_are_never_proxied() {
        let env = with_no_proxy("");
        assert!(!proxied(&env, "127.0.0.1:6443"));
        assert!(!proxied(&env, "127.9.9.9:6443"));
        assert!(!proxied(&env, "[::1]:6443"));
        assert!(!proxied(&env, "[::ffff:127.0.0.1]:6443"));
        assert!(env.proxy_for_host("localhost", 6443).is_none());
        assert!(env.proxy_for_host("[::1]", 6443).is_none());
        assert_eq!(
            env.proxy_for(addr("10.0.0.1:6443"))
                .map(ToString::to_string),
            Some("proxy:3128".into())
        );
    }

    #[test]
    fn upper_case_variables_win_unless_empty() {
        let get = env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
            ("NO_PROXY", "10.0.0.1"),
            ("no_proxy", "10.0.0.2"),
        ]);
        let env_ = ProxyEnv::from_lookup(get).unwrap();
        assert_eq!(env_.https_proxy().unwrap().host(), "upper");
        assert!(!proxied(&env_, "10.0.0.1:6443"));
        assert!(proxied(&env_, "10.0.0.2:6443"));

        let get = env(&[
            ("HTTPS_PROXY", ""),
            ("https_proxy", "http://lower:2"),
            ("NO_PROXY", ""),
            ("no_proxy", "10.0.0.2"),
        ]);
        let env_ = ProxyEnv::from_lookup(get).unwrap();
        assert_eq!(env_.https_proxy().unwrap().to_string(), "lower:2");
        assert!(!proxied(&env_, "10.0.0.2:6443"));
    }

    #[test]
    fn http_proxy_is_never_used_for_servers() {
        let env_ = ProxyEnv::from_lookup(env(&[("HTTP_PROXY", "http://u:secret@p:1")])).unwrap();
        assert_eq!(env_.proxy_for(addr("10.0.0.1:6443")), None);
        assert_eq!(env_.ignored_http_proxy(), Some("http://u:***@p:1"));
        // Not even parsed: an unusable HTTP_PROXY does not stop the daemon.
        let env_ = ProxyEnv::from_lookup(env(&[("http_proxy", "socks5://p:1")])).unwrap();
        assert_eq!(env_.ignored_http_proxy(), Some("socks5://p:1"));
        let both = ProxyEnv::from_lookup(env(&[
            ("HTTP_PROXY", "http://a:1"),
            ("HTTPS_PROXY", "http://b:2"),
        ]))
        .unwrap();
        assert_eq!(both.ignored_http_proxy(), None);
        assert_eq!(both.proxy_for(addr("10.0.0.1:1")).unwrap().host(), "b");
        assert_eq!(
            ProxyEnv::from_lookup(env(&[])).unwrap(),
            ProxyEnv::default()
        );
    }

    #[test]
    fn proxy_allowed_parses_like_go() {
        for yes in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(proxy_allowed(env(&[(PROXY_ALLOWED_VAR, yes)])), "{yes}");
        }
        for no in ["", "0", "false", "yes", "on", " true", "tRUE"] {
            assert!(!proxy_allowed(env(&[(PROXY_ALLOWED_VAR, no)])), "{no}");
        }
        assert!(!proxy_allowed(env(&[])));
    }

    fn url(s: &str) -> ProxyUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn proxy_urls_parse_as_go_reads_them() {
        assert_eq!(
            url("http://proxy.corp:3128"),
            ProxyUrl::new("proxy.corp", 3128)
        );
        assert_eq!(
            url("HTTP://Proxy.Corp:3128/"),
            ProxyUrl::new("proxy.corp", 3128)
        );
        assert_eq!(
            url("  proxy.corp:3128  "),
            ProxyUrl::new("proxy.corp", 3128)
        );
        assert_eq!(
            url("10.0.0.5:3128/path?x#y"),
            ProxyUrl::new("10.0.0.5", 3128)
        );
        // No port: K3s's dialer uses 8080.
        assert_eq!(
            url("http://proxy.corp"),
            ProxyUrl::new("proxy.corp", DEFAULT_PROXY_PORT)
        );
        assert_eq!(url("proxy.corp").port(), 8080);
        assert_eq!(url("http://[fd00::5]:3128"), ProxyUrl::new("fd00::5", 3128));
        assert_eq!(url("http://[fd00::5]").port(), 8080);
        assert_eq!(url("http://[fd00::5]:3128").to_string(), "[fd00::5]:3128");
    }

    #[test]
    fn proxy_urls_carry_basic_auth() {
        let u = url("http://alice:p%40ss%3Aword@proxy:3128");
        assert_eq!(
            u,
            ProxyUrl::new("proxy", 3128).with_basic_auth("alice", "p@ss:word")
        );
        assert_eq!(u.user(), Some("alice"));
        assert_eq!(
            u.authorization().unwrap(),
            format!("Basic {}", base64(b"alice:p@ss:word"))
        );
        // A user without a password sends `user:`; no scheme is fine too.
        let u = url("bob@proxy:3128");
        assert_eq!(u.authorization().unwrap(), "Basic Ym9iOg==");
        assert_eq!(url("http://proxy:1").authorization(), None);
        // Neither Display nor Debug shows the password.
        let u = url("http://alice:hunter2@proxy:3128");
        assert_eq!(u.to_string(), "proxy:3128");
        assert!(!format!("{u:?}").contains("hunter2"), "{u:?}");
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, out) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(input.as_bytes()), out, "{input}");
        }
    }

    #[test]
    fn unusable_proxy_urls_are_refused_naming_the_variable() {
        for (value, needle) in [
            ("socks5://proxy:1080", "unsupported proxy scheme socks5://"),
            (
                "socks5h://proxy:1080",
                "unsupported proxy scheme socks5h://",
            ),
            ("ftp://proxy:21", "unsupported proxy scheme ftp://"),
            (
                "https://proxy:3128",
                "https:// proxies (TLS to the proxy) are not supported",
            ),
            ("http://", "no proxy host"),
            ("http://:3128", "no proxy host"),
            ("http://user:pw@", "no proxy host"),
            ("http://proxy:", "invalid proxy port \"\""),
            ("http://proxy:http", "invalid proxy port"),
            ("http://proxy:0", "invalid proxy port"),
            ("http://proxy:70000", "invalid proxy port"),
            ("http://proxy:+80", "invalid proxy port"),
            ("http://fd00::1:3128", "must be in brackets"),
            ("http://[fd00::1", "unclosed ["),
            ("http://[nope]:1", "is not an IPv6 address"),
            ("http://[fd00::1]x", "unexpected"),
            ("proxy proxy", "invalid proxy host"),
            ("http://a%zz:b@proxy:1", "invalid %-escape"),
            ("   ", "empty proxy URL"),
        ] {
            let err = ProxyEnv::from_lookup(env(&[("https_proxy", value)])).unwrap_err();
            assert_eq!(err.var, "https_proxy");
            let text = err.to_string();
            assert!(text.starts_with("https_proxy="), "{value}: {text}");
            assert!(text.contains(needle), "{value}: {text}");
        }
        let err =
            ProxyEnv::from_lookup(env(&[("HTTPS_PROXY", "socks5://u:hunter2@p:1")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "HTTPS_PROXY=\"socks5://u:***@p:1\": unsupported proxy scheme socks5:// \
             (only http:// proxies are supported)"
        );
    }

    /// A fake proxy on loopback for one connection: it records the request
    /// head, sends `answer`, then echoes what it gets (until EOF).
    async fn fake_proxy(answer: &'static [u8]) -> (ProxyUrl, oneshot::Receiver<String>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                if conn.read(&mut byte).await.unwrap() == 0 {
                    return;
                }
                request.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8(request).unwrap());
            let _ = conn.write_all(answer).await;
            let (mut r, mut w) = conn.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        (ProxyUrl::new("127.0.0.1", port), rx)
    }

    const SERVER: &str = "10.0.0.1:6443";
    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_2xx_answer_hands_over_the_tunnel_with_bytes_after_the_head() {
        let (proxy, request) =
            fake_proxy(b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\nearly").await;
        let proxy = proxy.with_basic_auth("alice", "secret");
        let mut tunnel = dial(&proxy, addr(SERVER), SECOND).await.unwrap();
        let request = request.await.unwrap();
        assert_eq!(
            request,
            format!(
                "CONNECT 10.0.0.1:6443 HTTP/1.1\r\nHost: 10.0.0.1:6443\r\nUser-Agent: daas-lb/{}\r\n\
                 Proxy-Authorization: Basic {}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                base64(b"alice:secret")
            )
        );
        let mut early = [0u8; 5];
        tunnel.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"early");
        tunnel.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        tunnel.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
    }

    #[tokio::test]
    async fn bare_lf_answers_and_http_1_0_are_accepted() {
        let (proxy, _request) = fake_proxy(b"HTTP/1.0 200\n\nrest").await;
        let mut tunnel = dial(&proxy, addr("[fd00::1]:6443"), SECOND).await.unwrap();
        let mut rest = [0u8; 4];
        tunnel.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"rest");
    }

    #[tokio::test]
    async fn a_non_2xx_answer_is_refused_with_its_status() {
        let (proxy, _request) = fake_proxy(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
        )
        .await;
        let err = dial(&proxy, addr(SERVER), SECOND).await.unwrap_err();
        assert_eq!(err.reason(), "proxy_refused");
        assert_eq!(err.status(), Some(407));
        assert_eq!(
            err.to_string(),
            format!(
                "proxy {proxy} refused CONNECT to 10.0.0.1:6443: 407 Proxy Authentication Required"
            )
        );
    }

    #[tokio::test]
    async fn malformed_answers_are_protocol_errors() {
        for (answer, needle) in [
            (
                &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
                "not an HTTP/1.x status line",
            ),
            (b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/1.1 20x OK\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x status line"),
            (b"", "closed the connection without answering"),
            (
                b"HTTP/1.1 200 OK\r\n",
                "before the end of the answer's header",
            ),
        ] {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let proxy = ProxyUrl::new("127.0.0.1", listener.local_addr().unwrap().port());
            tokio::spawn(async move {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(answer).await;
                // Dropped: EOF after the answer.
            });
            let err = dial(&proxy, addr(SERVER), SECOND).await.unwrap_err();
            assert_eq!(err.reason(), "proxy_protocol", "{err}");
            assert!(err.to_string().contains(needle), "{err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("proxy {proxy}, CONNECT to 10.0.0.1:6443: ")),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn an_endless_answer_head_is_cut_at_the_cap() {
        static HUGE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
            let mut v = b"HTTP/1.1 200 OK\r\n".to_vec();
            while v.len() < 3 * MAX_RESPONSE_HEAD {
                v.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
            }
            v
        });
        let (proxy, _request) = fake_proxy(HUGE.as_slice()).await;
        let err = dial(&proxy, addr(SERVER), SECOND).await.unwrap_err();
        assert_eq!(err.reason(), "proxy_protocol", "{err}");
        assert!(err.to_string().contains("longer than 8192 bytes"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_proxy_times_out() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let proxy = ProxyUrl::new("127.0.0.1", listener.local_addr().unwrap().port());
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err = dial(&proxy, addr(SERVER), timeout).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(err.reason(), "proxy_timeout", "{err}");
        assert_eq!(
            err.to_string(),
            format!("proxy {proxy} did not complete CONNECT to 10.0.0.1:6443 within 200ms")
        );
        drop(listener);
    }

    #[tokio::test]
    async fn a_closed_proxy_port_is_unreachable() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let proxy = ProxyUrl::new("127.0.0.1", port);
        let err = dial(&proxy, addr(SERVER), SECOND).await.unwrap_err();
        assert_eq!(err.reason(), "proxy_unreachable", "{err}");
        assert!(
            err.to_string().starts_with(&format!(
                "proxy 127.0.0.1:{port} unreachable (for CONNECT to 10.0.0.1:6443): "
            )),
            "{err}"
        );
    }
}
