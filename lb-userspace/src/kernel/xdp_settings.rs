//! What the `xdp` block becomes in the kernel (the one `xdp_config` entry),
//! and the start-time check of its SNAT ports against the node's ephemeral
//! port range, which also decides `XDP_DROP_ORPHANS`: a packet to a SNAT
//! port without a flow can be dropped only when no socket of the node can
//! own that port (no ephemeral port in the range, and no TCP listener or
//! bound UDP socket on one at start: see [`bound_ports_in`]).

use std::{fs, net::IpAddr, path::Path};

use lb_common::{XDP_DROP_ORPHANS, XDP_SNAT_V4, XDP_SNAT_V6, XdpConfig, ip_to_bytes};
use tracing::warn;

use crate::config::{PortRange, XdpSettings};

/// Where Linux keeps the ephemeral (local) port range of IPv4 and IPv6.
pub const LOCAL_PORT_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Where Linux lists the sockets of the reader's network namespace.
pub const PROC_NET: &str = "/proc/net";

/// Whether a packet to a SNAT port with no flow entry may be dropped: the
/// node's ephemeral port range (`local_ports`, `None`: unknown) is known
/// and does not overlap `snat_ports`, and no socket listens on or is bound
/// to a port of the range (`bound`, from [`bound_ports_in`]).
pub fn orphans_droppable(
    settings: &XdpSettings,
    local_ports: Option<PortRange>,
    bound: &[u16],
) -> bool {
    bound.is_empty() && local_ports.is_some_and(|local| !settings.snat_ports.overlaps(local))
}

/// The `xdp_config[0]` entry for `settings`. Without an `xdp` block the
/// entry is all zeros, which keeps the XDP program passing every packet.
/// [`XDP_DROP_ORPHANS`] is set exactly when `drop_orphans` (see
/// [`orphans_droppable`]). `hop_gen` is left 0: the map's wrapper sets it.
pub fn xdp_config_entry(settings: Option<&XdpSettings>, drop_orphans: bool) -> XdpConfig {
    let Some(settings) = settings else {
        return XdpConfig::default();
    };
    let mut entry = XdpConfig {
        port_min: settings.snat_ports.first,
        port_max: settings.snat_ports.last,
        ..XdpConfig::default()
    };
    if drop_orphans {
        entry.flags |= XDP_DROP_ORPHANS;
    }
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

/// The node's ephemeral port range from `file` (normally
/// [`LOCAL_PORT_RANGE_FILE`]); `None` when it cannot be read or parsed
/// (the start-time check warns about that).
pub fn read_local_port_range(file: &Path) -> Option<PortRange> {
    parse_local_port_range(&fs::read_to_string(file).ok()?)
}

/// Parses `ip_local_port_range` ("32768\t60999\n").
pub fn parse_local_port_range(text: &str) -> Option<PortRange> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    let (first, last) = (numbers.next()?.ok()?, numbers.next()?.ok()?);
    (numbers.next().is_none() && first <= last).then_some(PortRange { first, last })
}

/// The ports of `range` that a TCP socket listens on or a UDP socket is
/// bound to, IPv4 or IPv6, in the reader's network namespace, read from
/// `proc_net` (normally [`PROC_NET`]: its `tcp`, `tcp6`, `udp`, `udp6`).
/// A remote client's packets to such a port would look like orphaned
/// replies. Files that cannot be read are skipped (`/proc/net/tcp6` is
/// missing without IPv6).
pub fn bound_ports_in(range: PortRange, proc_net: &Path) -> Vec<u16> {
    let mut ports = Vec::new();
    for (file, listeners_only) in [
        ("tcp", true),
        ("tcp6", true),
        ("udp", false),
        ("udp6", false),
    ] {
        if let Ok(text) = fs::read_to_string(proc_net.join(file)) {
            ports.extend(
                socket_ports(&text, listeners_only)
                    .filter(|port| (range.first..=range.last).contains(port)),
            );
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The local ports of a `/proc/net/{tcp,udp}[6]` table: every socket's, or
/// only those in state `LISTEN` (`0A`) with `listeners_only`. Lines that
/// do not parse are skipped (the first is the header).
fn socket_ports(table: &str, listeners_only: bool) -> impl Iterator<Item = u16> + '_ {
    table.lines().skip(1).filter_map(move |line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if listeners_only && state != "0A" {
            return None;
        }
        let (_, port) = local.rsplit_once(':')?;
        u16::from_str_radix(port, 16).ok()
    })
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
            flow_timeouts: crate::config::FlowTimeouts::DEFAULT,
            flow_gc_interval: crate::config::FlowTimeouts::DEFAULT_GC_INTERVAL,
        }
    }

    #[test]
    fn no_xdp_block_is_an_all_zero_entry() {
        assert_eq!(xdp_config_entry(None, false), XdpConfig::default());
        assert_eq!(xdp_config_entry(None, true), XdpConfig::default());
    }

    #[test]
    fn entry_carries_ports_and_configured_sources() {
        let entry = xdp_config_entry(Some(&settings()), false);
        assert_eq!((entry.port_min, entry.port_max), (61000, 65535));
        assert_eq!(entry.flags, 0);
        assert_eq!(entry.hop_gen, 0);
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
        let entry = xdp_config_entry(Some(&with_sources), false);
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
        assert_eq!(xdp_config_entry(Some(&v6_only), false).flags, XDP_SNAT_V6);
    }

    /// Linux's default `ip_local_port_range`.
    const LINUX_DEFAULT: PortRange = PortRange {
        first: 32768,
        last: 60999,
    };

    #[test]
    fn orphans_are_dropped_only_when_the_ranges_are_apart() {
        let flags = |snat: PortRange, local: Option<PortRange>| {
            let settings = XdpSettings {
                snat_ports: snat,
                ..settings()
            };
            let drop = orphans_droppable(&settings, local, &[]);
            xdp_config_entry(Some(&settings), drop).flags
        };
        // The defaults are apart.
        assert_eq!(
            flags(PortRange::DEFAULT_SNAT, Some(LINUX_DEFAULT)),
            XDP_DROP_ORPHANS
        );
        // Adjacent is apart; one shared port is not.
        let below = PortRange {
            first: 20000,
            last: 32767,
        };
        assert_eq!(flags(below, Some(LINUX_DEFAULT)), XDP_DROP_ORPHANS);
        let touching = PortRange {
            first: 20000,
            last: 32768,
        };
        assert_eq!(flags(touching, Some(LINUX_DEFAULT)), 0);
        let inside = PortRange {
            first: 40000,
            last: 40010,
        };
        assert_eq!(flags(inside, Some(LINUX_DEFAULT)), 0);
        // Unknown range: never drop.
        assert_eq!(flags(PortRange::DEFAULT_SNAT, None), 0);
        // With a configured source the flags combine.
        let with_v4 = XdpSettings {
            snat_ipv4: Some(Ipv4Addr::new(192, 0, 2, 10)),
            ..settings()
        };
        let drop = orphans_droppable(&with_v4, Some(LINUX_DEFAULT), &[]);
        assert_eq!(
            xdp_config_entry(Some(&with_v4), drop).flags,
            XDP_SNAT_V4 | XDP_DROP_ORPHANS
        );
        // A socket bound to a port of the range: never drop.
        assert!(!orphans_droppable(
            &settings(),
            Some(LINUX_DEFAULT),
            &[62000]
        ));
    }

    /// `/proc/net` tables as Linux 6.18 writes them: TCP counts only
    /// listeners (state 0A), UDP every socket; IPv6 addresses are 32 hex
    /// digits; ports outside the range and unreadable files are ignored.
    #[test]
    fn bound_ports_come_from_the_proc_net_tables() {
        let dir = std::env::temp_dir().join(format!("daas-lb-proc-net-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        // 0xF230 = 62000 listening; 0xF231 = 62001 established (not counted);
        // 0x1F90 = 8080 listening (outside the range).
        let tcp = format!(
            "{header}   0: 00000000:F230 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0100007F:F231 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n"
        );
        // 0xFDE8 = 65000 bound, IPv6.
        let udp6 = format!(
            "{header}  10: 00000000000000000000000000000000:FDE8 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 2 0000000000000000 0\n"
        );
        fs::write(dir.join("tcp"), tcp).unwrap();
        fs::write(dir.join("udp6"), udp6).unwrap();
        let ports = bound_ports_in(PortRange::DEFAULT_SNAT, &dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(ports, vec![62000, 65000]);
    }

    #[test]
    fn local_port_range_file() {
        let dir = std::env::temp_dir().join(format!("daas-lb-ports-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ip_local_port_range");
        fs::write(&file, "1024\t9999\n").unwrap();
        assert_eq!(
            read_local_port_range(&file),
            Some(PortRange {
                first: 1024,
                last: 9999
            })
        );
        fs::write(&file, "garbage").unwrap();
        assert_eq!(read_local_port_range(&file), None);
        assert_eq!(read_local_port_range(&dir.join("missing")), None);
        fs::remove_dir_all(&dir).unwrap();
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
