//! How a server is written: `IP:port`, `[v6]:port`, `host:port` or a URL
//! `http(s)://host[:port][/]` as K3s's `--server` and `ServerURL` take it.
//! Pure parsing: names are not resolved here.

use std::net::{IpAddr, SocketAddr};

use super::validate::is_dns_name;

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
    if is_dns_name(host) {
        return Ok(ServerTarget::Name {
            host: host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase(),
            port,
        });
    }
    Err(format!(
        "{host:?} is neither an IP address nor a DNS name in {trimmed:?}"
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
}
