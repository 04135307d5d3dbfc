//! Map keys and values shared by the daas-lb kernel programs (`lb-ebpf`) and the
//! controller (`lb-userspace`).
//!
//! Every type is `#[repr(C)]`, has only integer fields, spells out its padding
//! as `pad` fields (so no byte of a key is ever uninitialised) and has its
//! size asserted at compile time. Addresses are 16 bytes in network order
//! (IPv4 in the first four) and ports are in host order, so that
//! `bpftool map dump` shows them readably (`[127,0,0,1,0,...]`, `6444`);
//! the kernel programs convert when they read or write a socket address.
#![no_std]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Linux `AF_INET`.
pub const AF_INET: u8 = 2;
/// Linux `AF_INET6`.
pub const AF_INET6: u8 = 10;
/// `IPPROTO_TCP`.
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u8 = 17;

/// Backend id meaning "this service has no backend": connects are refused.
pub const NO_BACKEND: u32 = 0;

/// Capacity of the `backends` and `backend_stats` arrays (ids `1..MAX_BACKENDS`;
/// id 0 is [`NO_BACKEND`]).
pub const MAX_BACKENDS: u32 = 4096;
/// Capacity of the `services` hash map and of the `service_stats` array.
pub const MAX_SERVICES: u32 = 1024;
/// Capacity of the `rev_nat` LRU map (one entry per socket and backend).
pub const MAX_REV_NAT: u32 = 65536;
/// Capacity of the `maglev` map: the slots of every `spread` service's
/// table together.
pub const MAX_MAGLEV_SLOTS: u32 = 262_144;
/// [`Service::flags`] bit: pick the backend from the service's Maglev table
/// (`policy: spread`) instead of using [`Service::backend_id`].
pub const SERVICE_SPREAD: u32 = 1;

/// Names of the maps, which are also their pin file names under the bpffs
/// directory (kernel object names are at most 15 bytes).
pub mod map_names {
    /// [`crate::VipKey`] → [`crate::Service`].
    pub const SERVICES: &str = "services";
    /// backend id → [`crate::Backend`].
    pub const BACKENDS: &str = "backends";
    /// backend id → per-CPU [`crate::BackendStats`].
    pub const BACKEND_STATS: &str = "backend_stats";
    /// service id → per-CPU [`crate::ServiceStats`].
    pub const SERVICE_STATS: &str = "service_stats";
    /// [`crate::RevNatKey`] → [`crate::RevNatValue`].
    pub const REV_NAT: &str = "rev_nat";
    /// [`crate::MaglevKey`] → backend id.
    pub const MAGLEV: &str = "maglev";
    /// Every map, in the order the README documents them.
    pub const ALL: [&str; 6] = [
        SERVICES,
        BACKENDS,
        BACKEND_STATS,
        SERVICE_STATS,
        REV_NAT,
        MAGLEV,
    ];
}

/// Names of the kernel programs (function names in `lb-ebpf`).
pub mod program_names {
    /// TCP and UDP `connect()` over IPv4.
    pub const CONNECT4: &str = "lb_connect4";
    /// TCP and UDP `connect()` over IPv6 (including v4-mapped addresses).
    pub const CONNECT6: &str = "lb_connect6";
    /// `getpeername()` over IPv4: shows the VIP again.
    pub const GETPEERNAME4: &str = "lb_getpeername4";
    /// `getpeername()` over IPv6.
    pub const GETPEERNAME6: &str = "lb_getpeername6";
    /// Unconnected UDP `sendmsg()` over IPv4.
    pub const SENDMSG4: &str = "lb_sendmsg4";
    /// Unconnected UDP `sendmsg()` over IPv6.
    pub const SENDMSG6: &str = "lb_sendmsg6";
    /// UDP `recvmsg()` over IPv4: the reply's source becomes the VIP.
    pub const RECVMSG4: &str = "lb_recvmsg4";
    /// UDP `recvmsg()` over IPv6.
    pub const RECVMSG6: &str = "lb_recvmsg6";
    /// Every program.
    pub const ALL: [&str; 8] = [
        CONNECT4,
        CONNECT6,
        GETPEERNAME4,
        GETPEERNAME6,
        SENDMSG4,
        SENDMSG6,
        RECVMSG4,
        RECVMSG6,
    ];
}

/// An address as the maps hold it: 16 bytes in network order, IPv4 in the
/// first four bytes and zeros after them.
pub type AddrBytes = [u8; 16];

/// The map form of an address, and its family.
pub const fn ip_to_bytes(addr: IpAddr) -> (AddrBytes, u8) {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            ([a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], AF_INET)
        }
        IpAddr::V6(v6) => (v6.octets(), AF_INET6),
    }
}

/// The address an entry holds, given its family.
pub const fn ip_from_bytes(bytes: AddrBytes, family: u8) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from_octets(bytes))
    }
}

/// Key of the `services` map: a virtual address (VIP), port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// VIP address, see [`AddrBytes`].
    pub addr: AddrBytes,
    /// VIP port (host order).
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
}

const _: () = assert!(size_of::<VipKey>() == 20);

/// Value of the `services` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index into `service_stats` (`0..MAX_SERVICES`).
    pub id: u32,
    /// Selected backend (index into `backends`), or [`NO_BACKEND`]. With
    /// [`SERVICE_SPREAD`] the fallback when the table slot is empty.
    pub backend_id: u32,
    /// [`SERVICE_SPREAD`] or 0.
    pub flags: u32,
    /// Slots of the service's Maglev table (a prime; 0 without [`SERVICE_SPREAD`]).
    pub table_size: u32,
}

const _: () = assert!(size_of::<Service>() == 16);

/// Value of the `backends` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Backend address, see [`AddrBytes`].
    pub addr: AddrBytes,
    /// Backend port (host order).
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`]; 0 marks an unused slot.
    pub family: u8,
    /// Explicit padding, always 0.
    pub pad: u8,
    /// The service this backend belongs to (lets a restarted controller adopt ids).
    pub service_id: u32,
}

const _: () = assert!(size_of::<Backend>() == 24);

/// Per-CPU counters of one backend (`backend_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// `connect()` calls rewritten to this backend (TCP and connected UDP).
    pub connects: u64,
    /// Unconnected UDP `sendmsg()` calls rewritten to this backend.
    pub sendmsgs: u64,
}

const _: () = assert!(size_of::<BackendStats>() == 16);

/// Per-CPU counters of one service (`service_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Connects and sends refused with `ECONNREFUSED` because the service had no backend.
    pub refused: u64,
    /// Reverse-NAT entries that could not be stored (the socket still works,
    /// but `getpeername`/`recvmsg` show the backend instead of the VIP).
    pub rev_nat_failed: u64,
}

const _: () = assert!(size_of::<ServiceStats>() == 16);

/// Key of the `rev_nat` map: a socket and the backend it was sent to, as the
/// kernel shows it to the socket hooks (a v4-mapped IPv6 address stays v6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// `bpf_get_socket_cookie()` of the socket.
    pub cookie: u64,
    /// Backend address as written into the socket address.
    pub addr: AddrBytes,
    /// Backend port (host order).
    pub port: u16,
    /// Socket address family ([`AF_INET`] or [`AF_INET6`]).
    pub family: u8,
    /// Explicit padding, always 0.
    pub pad: [u8; 5],
}

const _: () = assert!(size_of::<RevNatKey>() == 32);

/// Value of the `rev_nat` map: the address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNatValue {
    /// VIP address as the application wrote it.
    pub addr: AddrBytes,
    /// VIP port (host order).
    pub port: u16,
    /// Explicit padding, always 0.
    pub pad: u16,
    /// The service, for diagnostics.
    pub service_id: u32,
}

const _: () = assert!(size_of::<RevNatValue>() == 24);

/// Key of the `maglev` map: one slot of a service's Maglev table. The value
/// is a backend id ([`NO_BACKEND`] for an empty slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MaglevKey {
    /// The service id.
    pub service_id: u32,
    /// The slot, `0..table_size`.
    pub slot: u32,
}

const _: () = assert!(size_of::<MaglevKey>() == 8);

#[cfg(feature = "user")]
mod pod {
    use super::{
        Backend, BackendStats, MaglevKey, RevNatKey, RevNatValue, Service, ServiceStats, VipKey,
    };

    // SAFETY (for each impl below): the type is `#[repr(C)]`, `Copy`, made only
    // of integers and integer arrays, and has no implicit padding (sizes are
    // asserted above), so every bit pattern is valid and all bytes are initialised.
    macro_rules! pod {
        ($($t:ty),+) => {$(
            // SAFETY: see the comment above the macro.
            unsafe impl aya::Pod for $t {}
        )+};
    }
    pod!(
        VipKey,
        Service,
        Backend,
        BackendStats,
        ServiceStats,
        RevNatKey,
        RevNatValue,
        MaglevKey
    );
}

#[cfg(test)]
mod tests {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::{AF_INET, AF_INET6, ip_from_bytes, ip_to_bytes};

    #[test]
    fn address_round_trip() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let (bytes, family) = ip_to_bytes(v4);
        assert_eq!(family, AF_INET);
        assert_eq!(bytes[..4], [10, 0, 0, 1]);
        assert_eq!(bytes[4..], [0; 12]);
        assert_eq!(ip_from_bytes(bytes, family), v4);
        let v6 = IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap());
        let (bytes, family) = ip_to_bytes(v6);
        assert_eq!(family, AF_INET6);
        assert_eq!(ip_from_bytes(bytes, family), v6);
    }
}
