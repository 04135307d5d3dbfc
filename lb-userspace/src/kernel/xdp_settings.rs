//! What the `xdp` block becomes in the kernel (the one `xdp_config` entry),
//! and the start-time check of its SNAT ports against the node's ephemeral
//! port range.

use std::{fs, net::IpAddr, path::Path};

use lb_common::{XDP_SNAT_V4, XDP_SNAT_V6, XdpConfig, ip_to_bytes};
use tracing::warn;

use crate::config::{PortRange, XdpSettings};

/// Where Linux keeps the ephemeral (local) port range of IPv4 and IPv6.
pub const LOCAL_PORT_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The `xdp_config[0]` entry for `settings`. Without an `xdp` block the entry
/// is all zeros, which keeps the XDP program passing every packet.
pub fn xdp_config_entry(settings: Option<&XdpSettings>) -> XdpConfig {
    let Some(settings) = settings else {
        return XdpConfig::default();
    };
    let mut entry = XdpConfig {
        port_min: settings.snat_ports.first,
        port_max: settings.snat_ports.last,
        ..XdpConfig::default()
    };
    if let Some(v4) = settings.snat_ipv4 {
        entry.snat_v4 = ip_to_bytes(IpAddr::V4(v4)).0;
        entry.flags |= XDP_SNAT_V4;
    }
    if let Some(v6) = settings.snat_ipv6 {
        entry.snat_v6 = ip_to_bytes(IpAddr::V6(v6)).0;
        entry.flags |= XDP_SNAT_V6;
    }
    entry
}

/// Parses `ip_local_port_range` ("32768\t60999\n").
pub fn parse_local_port_range(text: &str) -> Option<PortRange> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    let (first, last) = (numbers.next()?.ok()?, numbers.next()?.ok()?);
    (numbers.next().is_none() && first <= last).then_some(PortRange { first, last })
}

/// Warns when the SNAT ports overlap the ephemeral port range in `file`
/// (normally [`LOCAL_PORT_RANGE_FILE`]): a reply to one of the node's own
/// connections from such a port could then be taken for a reply of an XDP
/// flow and be translated away from the socket waiting for it.
pub fn warn_if_snat_ports_overlap(settings: &XdpSettings, file: &Path) {
    let local = match fs::read_to_string(file) {
        Ok(text) => parse_local_port_range(&text),
        Err(err) => {
            warn!(file = %file.display(), error = %err, "cannot read the local port range: xdp.snat_ports not checked against it");
            return;
        }
    };
    let Some(local) = local else {
        warn!(file = %file.display(), "cannot parse the local port range: xdp.snat_ports not checked against it");
        return;
    };
    if settings.snat_ports.overlaps(local) {
        warn!(
            snat_ports = %settings.snat_ports,
            local_port_range = %local,
            file = %file.display(),
            "xdp.snat_ports overlaps the node's ephemeral port range: replies to the node's own \
             connections could be taken for replies of XDP flows and be mis-translated; move \
             snat_ports out of it, or shrink it (sysctl net.ipv4.ip_local_port_range)"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::config::{XdpAttachMode, XdpHook, XdpInterface};

    fn settings() -> XdpSettings {
        XdpSettings {
            interfaces: vec![XdpInterface::named("eth0")],
            hook: XdpHook::Auto,
            mode: XdpAttachMode::Auto,
            snat_ipv4: None,
            snat_ipv6: None,
            snat_ports: PortRange::DEFAULT_SNAT,
        }
    }

    #[test]
    fn no_xdp_block_is_an_all_zero_entry() {
        assert_eq!(xdp_config_entry(None), XdpConfig::default());
        assert_eq!(xdp_config_entry(None).port_max, 0);
    }

    #[test]
    fn entry_carries_ports_and_configured_sources() {
        let entry = xdp_config_entry(Some(&settings()));
        assert_eq!((entry.port_min, entry.port_max), (61000, 65535));
        assert_eq!(entry.flags, 0);
        assert_eq!(entry.snat_v4, [0; 16]);

        let with_sources = XdpSettings {
            snat_ipv4: Some(Ipv4Addr::new(192, 0, 2, 10)),
            snat_ipv6: Some("2001:db8::10".parse::<Ipv6Addr>().unwrap()),
            snat_ports: PortRange {
                first: 1000,
                last: 1001,
            },
            ..settings()
        };
        let entry = xdp_config_entry(Some(&with_sources));
        assert_eq!(entry.flags, XDP_SNAT_V4 | XDP_SNAT_V6);
        assert_eq!(entry.snat_v4[..4], [192, 0, 2, 10]);
        assert_eq!(entry.snat_v4[4..], [0; 12]);
        assert_eq!(
            entry.snat_v6,
            "2001:db8::10".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!((entry.port_min, entry.port_max), (1000, 1001));

        let v6_only = XdpSettings {
            snat_ipv6: Some(Ipv6Addr::LOCALHOST),
            ..settings()
        };
        assert_eq!(xdp_config_entry(Some(&v6_only)).flags, XDP_SNAT_V6);
    }

    #[test]
    fn local_port_range_parsing() {
        assert_eq!(
            parse_local_port_range("32768\t60999\n"),
            Some(PortRange {
                first: 32768,
                last: 60999
            })
        );
        assert_eq!(
            parse_local_port_range("1024 65535"),
            Some(PortRange {
                first: 1024,
                last: 65535
            })
        );
        for bad in ["", "32768", "a b", "60999 32768", "1 2 3", "1 70000"] {
            assert_eq!(parse_local_port_range(bad), None, "{bad:?}");
        }
        let local = parse_local_port_range("32768 60999").unwrap();
        assert!(!PortRange::DEFAULT_SNAT.overlaps(local));
        assert!(
            PortRange {
                first: 60000,
                last: 61000
            }
            .overlaps(local)
        );
    }
}
