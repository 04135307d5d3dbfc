//! How a server is written: `IP:port`, `[v6]:port`, `host:port` or a URL
//! `http(s)://host[:port][/]` as K3s's `--server` and `ServerURL` take it.
//! Pure parsing: names are not resolved here (the controller resolves them,
//! see `controller/dns.rs`). A name must be a valid DNS host name: labels of
//! 1 to 63 letters, digits and hyphens (RFC 1123), at most 253 characters,
//! the last one not all digits (so a mistyped IPv4 address is an error).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{Serialize, Serializer};

use super::validate::is_dns_name;

/// A server written as a DNS name and a port (`name:port`,
/// `https://name[:port]`): the name lower-cased, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerName {
    /// The host name.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Serialize for ServerName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why `host` is not a DNS host name (RFC 1123), in words.
fn name_problem(host: &str) -> String {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 {
        return format!(
            "the host name is {} characters long; at most 253 are allowed",
            name.len()
        );
    }
    for label in name.split('.') {
        if label.is_empty() {
            return format!("{host:?} has an empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > 63 {
            return format!(
                "the label {label:?} is {} characters long; at most 63 are allowed",
                label.len()
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return format!("the label {label:?} starts or ends with a hyphen");
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
        {
            return format!(
                "{bad:?} in {host:?} is not allowed in a host name (letters, digits, hyphens and dots)"
            );
        }
    }
    format!("{host:?} is not a valid host name")
}

/// A server as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTarget {
    /// A literal address.
    Address(SocketAddr),
    /// A DNS name and a port.
    Name {
        /// The name, without a trailing dot.
        host: String,
        /// The port.
        port: u16,
    },
}

/// Parses a server. A URL's scheme must be `http` or `https`; its port
/// defaults to 80 or 443 (as K3s does); its path must be empty or `/`.
/// Without a scheme the port is required. IPv6 addresses go in brackets.
/// Port 0 parses: whether it may be used is the caller's check.
pub fn parse_server(text: &str) -> Result<ServerTarget, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("it is empty; expected IP:port, host:port or https://host:port".to_owned());
    }
    let (rest, default_port) = match trimmed.split_once("://") {
        Some((scheme, rest)) => {
            let port = match scheme.to_ascii_lowercase().as_str() {
                "https" => 443,
                "http" => 80,
                _ => {
                    return Err(format!(
                        "unsupported scheme {scheme:?} in {trimmed:?}; expected https:// or http://"
                    ));
                }
            };
            (rest, Some(port))
        }
        None => (trimmed, None),
    };
    let authority = match rest.split_once('/') {
        Some((authority, "")) => authority,
        Some((_, path)) => {
            return Err(format!(
                "{trimmed:?} has a path (/{path}); a server is only host and port"
            ));
        }
        None => rest,
    };
    if authority.contains('@') || authority.contains('?') || authority.contains('#') {
        return Err(format!(
            "{trimmed:?} has user info, a query or a fragment; a server is only host and port"
        ));
    }
    let (host, port_text) = split_host_port(authority)?;
    let port = match port_text {
        // Port 0 parses; the caller says why it cannot be used.
        Some(port) => port
            .parse::<u16>()
            .ok()
            .ok_or_else(|| format!("{port:?} is not a port number (1 to 65535) in {trimmed:?}"))?,
        None => default_port.ok_or_else(|| {
            format!(
                "the port is missing in {trimmed:?}; expected e.g. {host}:6443 or https://{host}:6443"
            )
        })?,
    };
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|ip| ServerTarget::Address(SocketAddr::new(IpAddr::V6(ip), port)))
            .map_err(|_| format!("{v6:?} in brackets is not an IPv6 address in {trimmed:?}"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerTarget::Address(SocketAddr::new(ip, port)));
    }
    // A name's last label is never all digits (RFC 1123 2.1, RFC 3696 2):
    // such a host is a mistyped IPv4 address, not a name to look up.
    let last_label = host.strip_suffix('.').unwrap_or(host).rsplit('.').next();
    if last_label
        .is_some_and(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{host:?} is not a valid IPv4 address in {trimmed:?} (and not a host name: a name's last label is never all digits)"
        ));
    }
    if is_dns_name(host) {
        return Ok(ServerTarget::Name {
            host: host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase(),
            port,
        });
    }
    Err(format!(
        "{host:?} is neither an IP address nor a DNS name in {trimmed:?}: {}",
        name_problem(host)
    ))
}

/// Splits `host[:port]`; an IPv6 address must be in brackets.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let (host, after) = authority.split_at(end + 1);
                match after {
                    "" => Ok((host, None)),
                    _ => after
                        .strip_prefix(':')
                        .map(|port| (host, Some(port)))
                        .ok_or_else(|| format!("unexpected {after:?} after {host}")),
                }
            }
            None => Err(format!("{authority:?} opens a bracket it does not close")),
        };
    }
    match authority.matches(':').count() {
        0 => Ok((authority, None)),
        1 => Ok(authority
            .split_once(':')
            .map_or((authority, None), |(host, port)| (host, Some(port)))),
        _ => Err(format!(
            "{authority:?}: IPv6 addresses must be written in brackets, e.g. [fd00::1]:6443"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> ServerTarget {
        ServerTarget::Address(text.parse().unwrap())
    }

    #[test]
    fn literal_addresses_and_urls() {
        assert_eq!(parse_server("10.0.0.1:6443"), Ok(address("10.0.0.1:6443")));
        assert_eq!(
            parse_server("[fd00::1]:6443"),
            Ok(address("[fd00::1]:6443"))
        );
        assert_eq!(
            parse_server("https://10.0.0.1:6443"),
            Ok(address("10.0.0.1:6443"))
        );
        assert_eq!(
            parse_server("HTTPS://[fd00::1]:9345/"),
            Ok(address("[fd00::1]:9345"))
        );
        assert_eq!(
            parse_server("https://10.0.0.1"),
            Ok(address("10.0.0.1:443"))
        );
        assert_eq!(parse_server("http://10.0.0.1"), Ok(address("10.0.0.1:80")));
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_server("https://K3s.Example.com:6443"),
            Ok(ServerTarget::Name {
                host: "k3s.example.com".to_owned(),
                port: 6443
            })
        );
        assert_eq!(
            parse_server("server-1:9345"),
            Ok(ServerTarget::Name {
                host: "server-1".to_owned(),
                port: 9345
            })
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = parse_server("name").unwrap_err();
        assert!(err.contains("the port is missing"), "{err}");
        assert!(!err.contains("brackets"), "{err}");
        let err = parse_server("ftp://10.0.0.1:21").unwrap_err();
        assert!(err.contains("unsupported scheme"), "{err}");
        let err = parse_server("https://a:6443/v1").unwrap_err();
        assert!(err.contains("has a path"), "{err}");
        let err = parse_server("fd00::1:6443").unwrap_err();
        assert!(err.contains("brackets"), "{err}");
        let err = parse_server("a:99999").unwrap_err();
        assert!(err.contains("not a port number"), "{err}");
        let err = parse_server("bad_name!:1").unwrap_err();
        assert!(
            err.contains("neither an IP address nor a DNS name"),
            "{err}"
        );
        let err = parse_server("https://user@a:1").unwrap_err();
        assert!(err.contains("user info"), "{err}");
    }

    #[test]
    fn name_errors_name_the_rule() {
        let err = parse_server("bad_name:1").unwrap_err();
        assert!(err.contains("'_'"), "{err}");
        let long_label = format!("{}.example:1", "a".repeat(64));
        let err = parse_server(&long_label).unwrap_err();
        assert!(err.contains("at most 63"), "{err}");
        let long_name = format!("{}:1", vec!["a".repeat(60); 5].join("."));
        let err = parse_server(&long_name).unwrap_err();
        assert!(err.contains("at most 253"), "{err}");
        let err = parse_server("a..b:1").unwrap_err();
        assert!(err.contains("empty label"), "{err}");
        let err = parse_server("10.0.0.300:1").unwrap_err();
        assert!(err.contains("not a valid IPv4 address"), "{err}");
        let err = parse_server("https://1234").unwrap_err();
        assert!(err.contains("not a valid IPv4 address"), "{err}");
        assert!(parse_server("3com.example:1").is_ok());
        let err = parse_server("-a.b:1").unwrap_err();
        assert!(err.contains("hyphen"), "{err}");
        // A trailing dot (fully qualified) is accepted and dropped.
        assert_eq!(
            parse_server("backend.test.:80"),
            Ok(ServerTarget::Name {
                host: "backend.test".to_owned(),
                port: 80
            })
        );
        assert_eq!(
            ServerName {
                host: "backend.test".to_owned(),
                port: 443
            }
            .to_string(),
            "backend.test:443"
        );
    }
}
