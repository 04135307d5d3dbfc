//! Socket addresses as `sock_diag` carries them: the 16 address bytes of
//! `struct inet_diag_sockid` (IPv4 in the first 4), and the v4-mapped
//! spelling (`[::ffff:a.b.c.d]:p`) a dual-stack IPv6 socket reports for an
//! IPv4 peer.
//!
//! Invariant: [`socket_addr`] undoes [`address_bytes`] for an address of the
//! socket's own family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use anyhow::bail;

use super::{AF_INET, AF_INET6};

/// `[::ffff:a.b.c.d]:p` → `a.b.c.d:p`; every other address unchanged.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// `a.b.c.d:p` → `[::ffff:a.b.c.d]:p`; IPv6 addresses unchanged.
pub fn v4_mapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        SocketAddr::V6(_) => addr,
    }
}

/// An address as the 16 bytes of `idiag_src`/`idiag_dst` for a socket of
/// `family`: IPv4 in the first 4 bytes, IPv6 (an IPv4 address of an IPv6
/// socket as `::ffff:a.b.c.d`) in all 16.
pub fn address_bytes(family: u8, ip: IpAddr) -> anyhow::Result<[u8; 16]> {
    let v4 = |v4: Ipv4Addr| {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&v4.octets());
        out
    };
    match (family, ip) {
        (AF_INET, IpAddr::V4(ip)) => Ok(v4(ip)),
        (AF_INET, IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
            Some(ip) => Ok(v4(ip)),
            None => bail!("IPv6 address {ip} on an AF_INET socket"),
        },
        (AF_INET6, IpAddr::V6(ip)) => Ok(ip.octets()),
        (AF_INET6, IpAddr::V4(ip)) => Ok(ip.to_ipv6_mapped().octets()),
        (other, _) => bail!("address family {other} is neither AF_INET nor AF_INET6"),
    }
}

/// The inverse of [`address_bytes`]: a socket address of `family` from the 16
/// address bytes and a port.
pub fn socket_addr(family: u8, address: [u8; 16], port: u16) -> anyhow::Result<SocketAddr> {
    match family {
        AF_INET => {
            let [a, b, c, d, ..] = address;
            Ok(SocketAddr::new(Ipv4Addr::new(a, b, c, d).into(), port))
        }
        AF_INET6 => Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(address),
            port,
            0,
            0,
        ))),
        other => bail!("address family {other} is neither AF_INET nor AF_INET6"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kernel::sock_diag::tests::{v4, v6};

    #[test]
    fn address_conversion() {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            address_bytes(AF_INET, Ipv4Addr::LOCALHOST.into()).unwrap(),
            bytes
        );
        assert_eq!(
            socket_addr(AF_INET, bytes, 80).unwrap(),
            v4(127, 0, 0, 1, 80)
        );
        // For AF_INET only the first word counts.
        bytes[4] = 9;
        assert_eq!(
            socket_addr(AF_INET, bytes, 80).unwrap(),
            v4(127, 0, 0, 1, 80)
        );
        let mut loopback6 = [0u8; 16];
        loopback6[15] = 1;
        assert_eq!(
            address_bytes(AF_INET6, Ipv6Addr::LOCALHOST.into()).unwrap(),
            loopback6
        );
        assert_eq!(socket_addr(AF_INET6, loopback6, 1).unwrap(), v6("::1", 1));
        assert!(socket_addr(0, loopback6, 1).is_err());
        assert!(address_bytes(0, Ipv6Addr::LOCALHOST.into()).is_err());

        assert_eq!(unmapped(v6("::ffff:10.0.0.1", 9)), v4(10, 0, 0, 1, 9));
        assert_eq!(unmapped(v6("::1", 9)), v6("::1", 9));
        assert_eq!(unmapped(v4(10, 0, 0, 1, 9)), v4(10, 0, 0, 1, 9));
        assert_eq!(v4_mapped(v4(10, 0, 0, 1, 9)), v6("::ffff:10.0.0.1", 9));
        assert_eq!(v4_mapped(v6("::1", 9)), v6("::1", 9));
    }

    proptest! {
        #[test]
        fn address_bytes_round_trip(ip in any::<IpAddr>(), port in any::<u16>()) {
            let family = if ip.is_ipv4() { AF_INET } else { AF_INET6 };
            let bytes = address_bytes(family, ip).unwrap();
            prop_assert_eq!(socket_addr(family, bytes, port).unwrap(), SocketAddr::new(ip, port));
        }
    }
}
