//! `lb_userspace::kernel::sock_diag` on the real kernel: dumps find TCP and UDP
//! connections (IPv4, IPv6 and dual-stack IPv6 sockets with v4-mapped
//! addresses) with the right addresses and cookies, dumps filtered by peer
//! (the kernel runs our bytecode) return exactly the sockets to those peers,
//! and `SOCK_DESTROY` aborts them at once. Every test runs in its own network
//! namespace, so only its own sockets are visible.

use std::{
    collections::HashSet,
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{NetNs, privileged};
use lb_userspace::kernel::sock_diag::{
    AF_INET, AF_INET6, ALL_STATES, ESTABLISHED_ONLY, MAX_FILTER_PEERS, PeerFilter, STATE_CLOSE,
    STATE_ESTABLISHED, STATE_LISTEN, SockDiag, SocketInfo, Transport, peer_bytecode, state_mask,
    unmapped, v4_mapped,
};

/// The socket cookie of `fd` (`getsockopt(SO_COOKIE)`).
fn cookie(fd: BorrowedFd<'_>) -> u64 {
    let mut value: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals of the sizes passed; the
    // kernel writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut value).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt(SO_COOKIE): {}",
        io::Error::last_os_error()
    );
    value
}

/// Makes `close()` of `fd` send a reset and skip `TIME_WAIT` (`SO_LINGER` 0).
fn linger_zero(fd: BorrowedFd<'_>) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a live local of the size passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast::<libc::c_void>(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

/// The sockets in `sockets` with exactly this local and peer address.
fn matching(sockets: &[SocketInfo], local: SocketAddr, peer: SocketAddr) -> Vec<SocketInfo> {
    sockets
        .iter()
        .filter(|s| s.local == local && s.peer == peer)
        .copied()
        .collect()
}

/// The one socket in `sockets` with this local and peer address.
fn find_one(sockets: &[SocketInfo], local: SocketAddr, peer: SocketAddr) -> SocketInfo {
    let found = matching(sockets, local, peer);
    assert_eq!(
        found.len(),
        1,
        "expected one socket {local} -> {peer}, found {found:?} in {sockets:#?}"
    );
    found[0]
}

/// The dump entry of a connected std socket, checked against its addresses
/// and `SO_COOKIE`.
fn entry_of(
    sockets: &[SocketInfo],
    fd: BorrowedFd<'_>,
    local: SocketAddr,
    peer: SocketAddr,
) -> SocketInfo {
    let info = find_one(sockets, local, peer);
    assert_eq!(info.cookie, cookie(fd), "cookie of {info:?}");
    assert_eq!(info.state, STATE_ESTABLISHED, "{info:?}");
    assert_eq!(info.interface, 0, "{info:?}");
    info
}

/// A TCP connection on loopback: both ends (accepted at once, so the
/// listen backlog never fills).
struct Conn {
    client: TcpStream,
    server: TcpStream,
}

impl Conn {
    fn open(listener: &TcpListener, target: SocketAddr) -> Self {
        let client = TcpStream::connect_timeout(&target, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect {target}: {e}"));
        let (server, _) = listener.accept().expect("accept");
        for stream in [&client, &server] {
            stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .expect("read timeout");
        }
        Self { client, server }
    }

    fn client_entry(&self, sockets: &[SocketInfo]) -> SocketInfo {
        entry_of(
            sockets,
            self.client.as_fd(),
            self.client.local_addr().unwrap(),
            self.client.peer_addr().unwrap(),
        )
    }

    fn server_entry(&self, sockets: &[SocketInfo]) -> SocketInfo {
        entry_of(
            sockets,
            self.server.as_fd(),
            self.server.local_addr().unwrap(),
            self.server.peer_addr().unwrap(),
        )
    }
}

fn localhost_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Polls `established_to(peers)` until it is empty (at most 2 s, 1000 polls);
/// returns how many polls it took.
fn wait_until_gone(
    diag: &mut SockDiag,
    transport: Transport,
    peers: &HashSet<SocketAddr>,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    for poll in 1..=1000 {
        let left = diag.established_to(transport, peers).expect("dump");
        if left.is_empty() {
            return poll;
        }
        assert!(
            Instant::now() < deadline,
            "{} {transport} sockets still there after 2 s: {left:?}",
            left.len()
        );
        thread::sleep(Duration::from_millis(1));
    }
    panic!("sockets still there after 1000 polls");
}

fn errno(result: &io::Result<usize>) -> Option<i32> {
    result.as_ref().err().and_then(io::Error::raw_os_error)
}

#[test]
fn dump_finds_tcp_v4_v6_and_v4_mapped_connections() {
    if !privileged("dump_finds_tcp_v4_v6_and_v4_mapped_connections") {
        return;
    }
    let _ns = NetNs::new();
    let (listener4, addr4) = localhost_listener();
    let listener6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind ::1");
    let addr6 = listener6.local_addr().unwrap();

    let plain4 = Conn::open(&listener4, addr4);
    let plain6 = Conn::open(&listener6, addr6);
    // std makes an AF_INET6 socket for a V6 target; with IPV6_V6ONLY off (the
    // namespace default) it reaches the IPv4 listener through ::ffff:127.0.0.1.
    let mapped = Conn::open(&listener4, v4_mapped(addr4));
    assert!(mapped.client.local_addr().unwrap().is_ipv6());
    assert!(mapped.server.peer_addr().unwrap().is_ipv4());

    let mut diag = SockDiag::open().expect("open sock_diag");
    let started = Instant::now();
    let all = diag.dump(Transport::Tcp, ESTABLISHED_ONLY).expect("dump");
    eprintln!(
        "tcp dump of {} established sockets took {:?}",
        all.len(),
        started.elapsed()
    );
    assert_eq!(all.len(), 6, "three connections, two ends each: {all:#?}");
    assert!(all.iter().all(|s| s.transport == Transport::Tcp));

    for (conn, client_family, server_family) in [
        (&plain4, AF_INET, AF_INET),
        (&plain6, AF_INET6, AF_INET6),
        (&mapped, AF_INET6, AF_INET),
    ] {
        let client = conn.client_entry(&all);
        assert_eq!(client.family, client_family, "{client:?}");
        let server = conn.server_entry(&all);
        assert_eq!(server.family, server_family, "{server:?}");
        assert_ne!(client.cookie, server.cookie);
    }
    let mapped_entry = mapped.client_entry(&all);
    eprintln!("dual-stack IPv6 client connected to {addr4}: {mapped_entry:?}");
    assert_eq!(mapped_entry.peer, v4_mapped(addr4));
    assert_eq!(mapped_entry.peer_unmapped(), addr4);

    // established_to: clients only (the servers' peers are ephemeral ports),
    // the dual-stack client matched through its v4-mapped peer.
    let to4 = diag
        .established_to(Transport::Tcp, &HashSet::from([addr4]))
        .expect("established_to v4");
    let cookies: HashSet<u64> = to4.iter().map(|s| s.cookie).collect();
    assert_eq!(
        cookies,
        HashSet::from([cookie(plain4.client.as_fd()), cookie(mapped.client.as_fd())]),
        "{to4:#?}"
    );
    let to6 = diag
        .established_to(Transport::Tcp, &HashSet::from([addr6]))
        .expect("established_to v6");
    assert_eq!(to6.len(), 1, "{to6:#?}");
    assert_eq!(to6[0].cookie, cookie(plain6.client.as_fd()));

    // Listeners only show up when asked for.
    let listening = diag
        .dump(Transport::Tcp, state_mask(STATE_LISTEN))
        .expect("dump listeners");
    let unspecified4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let unspecified6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
    assert_eq!(find_one(&listening, addr4, unspecified4).family, AF_INET);
    assert_eq!(find_one(&listening, addr6, unspecified6).family, AF_INET6);
    assert_eq!(listening.len(), 2, "{listening:#?}");
    let everything = diag.dump(Transport::Tcp, ALL_STATES).expect("dump all");
    assert_eq!(everything.len(), 8, "{everything:#?}");
    // Nothing of this in the UDP tables.
    assert!(
        diag.dump(Transport::Udp, ALL_STATES)
            .expect("dump udp")
            .is_empty()
    );
}

#[test]
fn destroy_tcp_aborts_clients_and_resets_servers() {
    const N: usize = 200;
    if !privileged("destroy_tcp_aborts_clients_and_resets_servers") {
        return;
    }
    let _ns = NetNs::new();
    let (listener, addr) = localhost_listener();
    let mut conns: Vec<Conn> = (0..N).map(|_| Conn::open(&listener, addr)).collect();
    // One client has unread data when it is destroyed.
    conns[0].server.write_all(b"hello").unwrap();
    let peers = HashSet::from([addr]);

    let mut diag = SockDiag::open().expect("open sock_diag");
    let dump_started = Instant::now();
    let targets = diag
        .established_to(Transport::Tcp, &peers)
        .expect("established_to");
    let dump_took = dump_started.elapsed();
    assert_eq!(targets.len(), N);
    let expected: HashSet<u64> = conns.iter().map(|c| cookie(c.client.as_fd())).collect();
    assert_eq!(
        targets.iter().map(|s| s.cookie).collect::<HashSet<_>>(),
        expected
    );

    let started = Instant::now();
    for target in &targets {
        assert!(diag.destroy(target).expect("destroy"), "{target:?}");
    }
    let destroyed_after = started.elapsed();
    let polls = wait_until_gone(&mut diag, Transport::Tcp, &peers);
    let gone_after = started.elapsed();

    // Data received before the destroy stays readable...
    let mut buf = [0u8; 64];
    let pending = conns[0].client.read(&mut buf);
    assert_eq!(pending.as_ref().ok(), Some(&5), "{pending:?}");
    assert_eq!(&buf[..5], b"hello");
    // ...after that, every client's next read fails with ECONNABORTED at once.
    let mut slowest_client = Duration::ZERO;
    for (i, conn) in conns.iter_mut().enumerate() {
        let t = Instant::now();
        let read = conn.client.read(&mut buf);
        slowest_client = slowest_client.max(t.elapsed());
        assert_eq!(
            errno(&read),
            Some(libc::ECONNABORTED),
            "client {i}: {read:?}"
        );
    }
    let clients_checked_after = started.elapsed();
    // Every server sees a reset (or EOF) within the 1 s read timeout.
    let mut resets = 0;
    let mut eofs = 0;
    for (i, conn) in conns.iter_mut().enumerate() {
        match conn.server.read(&mut buf) {
            Ok(0) => eofs += 1,
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => resets += 1,
            other => panic!("server {i}: expected reset or EOF, got {other:?}"),
        }
    }
    let servers_checked_after = started.elapsed();
    assert!(
        servers_checked_after < Duration::from_secs(1),
        "server side took {servers_checked_after:?}"
    );
    // The server ends are gone from the tables too.
    let left: Vec<SocketInfo> = diag
        .dump(Transport::Tcp, ALL_STATES)
        .expect("dump all")
        .into_iter()
        .filter(|s| s.state != STATE_LISTEN)
        .collect();
    assert!(left.is_empty(), "left over: {left:#?}");

    // What an aborted client sees afterwards.
    let conn = &mut conns[0];
    let second_read = conn.client.read(&mut buf);
    let write = conn.client.write(b"x");
    eprintln!(
        "sock_diag TCP: dump of {N} connections (+{N} server ends) {dump_took:?}; \
         {N} SOCK_DESTROY calls took {destroyed_after:?} ({:?} each); \
         dump empty after {gone_after:?} ({polls} dump(s)); \
         slowest client read after destroy {slowest_client:?}; clients all saw ECONNABORTED by {clients_checked_after:?}; \
         servers: {resets} ECONNRESET + {eofs} EOF, all by {servers_checked_after:?} after the first destroy; \
         client afterwards: second read {second_read:?}, write {write:?}",
        destroyed_after / N as u32,
    );
}

#[test]
fn destroy_connected_udp_sockets() {
    if !privileged("destroy_connected_udp_sockets") {
        return;
    }
    let _ns = NetNs::new();
    let server4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let server6 = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind");
    let (addr4, addr6) = (server4.local_addr().unwrap(), server6.local_addr().unwrap());
    let client4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    client4.connect(addr4).expect("connect");
    let client6 = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind");
    client6.connect(addr6).expect("connect");
    // Dual-stack: an unbound IPv6 socket connected to the IPv4 server.
    let mapped = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).expect("bind [::]");
    mapped.connect(v4_mapped(addr4)).expect("connect mapped");
    let udp_clients = [
        (&client4, AF_INET),
        (&client6, AF_INET6),
        (&mapped, AF_INET6),
    ];
    let mut buf = [0u8; 64];
    for (client, _) in udp_clients {
        client
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        client.send(b"ping").expect("send");
    }
    server4
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    for _ in 0..2 {
        server4.recv_from(&mut buf).expect("server4 recv");
    }

    let mut diag = SockDiag::open().expect("open sock_diag");
    let connected = diag.dump(Transport::Udp, ESTABLISHED_ONLY).expect("dump");
    assert_eq!(connected.len(), 3, "only the clients: {connected:#?}");
    let mut entries = Vec::new();
    for (client, family) in udp_clients {
        let info = entry_of(
            &connected,
            client.as_fd(),
            client.local_addr().unwrap(),
            client.peer_addr().unwrap(),
        );
        assert_eq!(info.family, family, "{info:?}");
        assert_eq!(info.transport, Transport::Udp);
        assert!(info.is_connected());
        entries.push(info);
    }
    eprintln!(
        "dual-stack UDP client connected to {addr4}: {:?}",
        entries[2]
    );
    let to4 = diag
        .established_to(Transport::Udp, &HashSet::from([addr4]))
        .expect("established_to");
    assert_eq!(to4.len(), 2, "{to4:#?}");

    // Unconnected servers are state 7 (TCP_CLOSE) with peer port 0.
    let all = diag.dump(Transport::Udp, ALL_STATES).expect("dump all");
    for server in [&server4, &server6] {
        let local = server.local_addr().unwrap();
        let info = all
            .iter()
            .find(|s| s.local == local)
            .unwrap_or_else(|| panic!("server {local} not in {all:#?}"));
        assert_eq!(info.state, STATE_CLOSE, "{info:?}");
        assert_eq!(info.peer.port(), 0, "{info:?}");
        assert!(!info.is_connected());
    }

    let started = Instant::now();
    for entry in &entries {
        assert!(diag.destroy(entry).expect("destroy"), "{entry:?}");
    }
    let destroyed_after = started.elapsed();
    for (client, _) in udp_clients {
        let t = Instant::now();
        let recv = client.recv(&mut buf);
        assert_eq!(
            errno(&recv),
            Some(libc::ECONNABORTED),
            "{:?}: {recv:?}",
            client.local_addr()
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "recv took {:?}",
            t.elapsed()
        );
    }
    assert!(
        diag.dump(Transport::Udp, ESTABLISHED_ONLY)
            .expect("dump")
            .is_empty()
    );
    // Destroying them again: already gone.
    for entry in &entries {
        assert!(!diag.destroy(entry).expect("destroy again"), "{entry:?}");
    }

    // What an aborted UDP client sees afterwards.
    let after = diag.dump(Transport::Udp, ALL_STATES).expect("dump all");
    client4
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let second_recv = client4.recv(&mut buf);
    let send = client4.send(b"x");
    eprintln!(
        "sock_diag UDP: 3 SOCK_DESTROY calls took {destroyed_after:?}; client4 afterwards: \
         local_addr {:?}, peer_addr {:?}, second recv {second_recv:?}, send {send:?}; \
         UDP sockets left in the namespace: {after:?}",
        client4.local_addr(),
        client4.peer_addr().map_err(|e| e.to_string()),
    );
}

#[test]
fn destroy_of_a_gone_socket_returns_false() {
    if !privileged("destroy_of_a_gone_socket_returns_false") {
        return;
    }
    let _ns = NetNs::new();
    let (listener, addr) = localhost_listener();
    let mut diag = SockDiag::open().expect("open sock_diag");

    // Closed with a reset: no TIME_WAIT, nothing left to find.
    let conn = Conn::open(&listener, addr);
    let all = diag.dump(Transport::Tcp, ESTABLISHED_ONLY).expect("dump");
    let (client, server) = (conn.client_entry(&all), conn.server_entry(&all));
    linger_zero(conn.client.as_fd());
    drop(conn);
    assert!(!diag.destroy(&client).expect("destroy closed client"));
    assert!(!diag.destroy(&server).expect("destroy reset server"));

    // Right tuple, wrong cookie (as if the port had been reused by a new
    // socket): reported as gone, and the live socket is left alone.
    let mut conn = Conn::open(&listener, addr);
    let all = diag.dump(Transport::Tcp, ESTABLISHED_ONLY).expect("dump");
    let live = conn.client_entry(&all);
    let stale = SocketInfo {
        cookie: live.cookie ^ 1,
        ..live
    };
    assert!(!diag.destroy(&stale).expect("destroy stale"));
    conn.client.write_all(b"still there").expect("write");
    let mut buf = [0u8; 64];
    assert_eq!(conn.server.read(&mut buf).expect("server read"), 11);
    // Destroyed once, then gone.
    assert!(diag.destroy(&live).expect("destroy"));
    assert!(!diag.destroy(&live).expect("destroy again"));

    // TIME_WAIT (orderly close from the client): only observed, printed.
    let conn = Conn::open(&listener, addr);
    let all = diag.dump(Transport::Tcp, ESTABLISHED_ONLY).expect("dump");
    let client = conn.client_entry(&all);
    drop(conn);
    thread::sleep(Duration::from_millis(50));
    let states: Vec<u8> = diag
        .dump(Transport::Tcp, ALL_STATES)
        .expect("dump all")
        .iter()
        .filter(|s| s.local == client.local)
        .map(|s| s.state)
        .collect();
    let first = diag.destroy(&client).map_err(|e| format!("{e:#}"));
    let second = diag.destroy(&client).map_err(|e| format!("{e:#}"));
    eprintln!(
        "sock_diag TIME_WAIT: client states after close {states:?}; destroy -> {first:?}, again -> {second:?}"
    );

    // A dropped connected UDP socket.
    let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    udp.connect(server.local_addr().unwrap()).expect("connect");
    let all = diag.dump(Transport::Udp, ESTABLISHED_ONLY).expect("dump");
    let entry = entry_of(
        &all,
        udp.as_fd(),
        udp.local_addr().unwrap(),
        udp.peer_addr().unwrap(),
    );
    drop(udp);
    assert!(!diag.destroy(&entry).expect("destroy dropped udp"));
}

/// The sockets of an unfiltered dump whose peer is one of `peers` (v4-mapped
/// peers compared as IPv4): what `dump_to_peers` must return.
fn expected_to_peers(
    diag: &mut SockDiag,
    transport: Transport,
    states: u32,
    peers: &[SocketAddr],
) -> HashSet<SocketInfo> {
    let wanted: HashSet<SocketAddr> = peers.iter().map(|&p| unmapped(p)).collect();
    diag.dump(transport, states)
        .expect("dump")
        .into_iter()
        .filter(|s| wanted.contains(&s.peer_unmapped()))
        .collect()
}

/// `dump_to_peers(peers)` as a set, checked against [`expected_to_peers`];
/// also checks that it holds no duplicates.
fn filtered(
    diag: &mut SockDiag,
    transport: Transport,
    states: u32,
    peers: &[SocketAddr],
) -> HashSet<SocketInfo> {
    let list = diag
        .dump_to_peers(transport, states, peers)
        .expect("dump_to_peers");
    let set: HashSet<SocketInfo> = list.iter().copied().collect();
    assert_eq!(set.len(), list.len(), "duplicates in {list:#?}");
    let expected = expected_to_peers(diag, transport, states, peers);
    assert_eq!(
        set,
        expected,
        "{transport} dump_to_peers({} peers) differs from a filtered full dump",
        peers.len()
    );
    set
}

/// `count` IPv4 addresses in 10.0.0.0/8 with port 1: peers nothing here is
/// connected to, to make long peer lists.
fn bogus_peers(count: u32) -> Vec<SocketAddr> {
    (0..count)
        .map(|i| SocketAddr::new(Ipv4Addr::from(0x0a00_0000 + i).into(), 1))
        .collect()
}

#[test]
fn dump_to_peers_returns_exactly_the_tcp_sockets_to_the_backends() {
    const UNRELATED: usize = 50;
    if !privileged("dump_to_peers_returns_exactly_the_tcp_sockets_to_the_backends") {
        return;
    }
    let _ns = NetNs::new();
    let backend4 = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).expect("bind backend4");
    let addr4 = backend4.local_addr().unwrap();
    let backend6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind backend6");
    let addr6 = backend6.local_addr().unwrap();
    // Decoys: the backend's address with another port, its port on another
    // address, and plain IPv6.
    let same_ip = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).expect("bind same ip");
    let same_port = TcpListener::bind((Ipv4Addr::LOCALHOST, addr4.port())).expect("bind same port");
    let other6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind other6");
    let decoys = [&same_ip, &same_port, &other6];
    let unrelated: Vec<Conn> = (0..UNRELATED)
        .map(|i| {
            let listener = decoys[i % decoys.len()];
            Conn::open(listener, listener.local_addr().unwrap())
        })
        .collect();
    // Dual-stack decoy: an IPv6 socket to the backend's address, other port.
    let unrelated_mapped = Conn::open(&same_ip, v4_mapped(same_ip.local_addr().unwrap()));

    let to4: Vec<Conn> = (0..3).map(|_| Conn::open(&backend4, addr4)).collect();
    let to6: Vec<Conn> = (0..2).map(|_| Conn::open(&backend6, addr6)).collect();
    let mapped: Vec<Conn> = (0..2)
        .map(|_| Conn::open(&backend4, v4_mapped(addr4)))
        .collect();

    let mut diag = SockDiag::open().expect("open sock_diag");
    let all = diag.dump(Transport::Tcp, ESTABLISHED_ONLY).expect("dump");
    assert_eq!(all.len(), 2 * (UNRELATED + 1 + 3 + 2 + 2), "{all:#?}");

    let peers = [addr4, addr6];
    let found = filtered(&mut diag, Transport::Tcp, ESTABLISHED_ONLY, &peers);
    let cookies: HashSet<u64> = found.iter().map(|s| s.cookie).collect();
    let clients: HashSet<u64> = to4
        .iter()
        .chain(&to6)
        .chain(&mapped)
        .map(|c| cookie(c.client.as_fd()))
        .collect();
    assert_eq!(cookies, clients, "{found:#?}");
    for conn in &mapped {
        let entry = conn.client_entry(&all);
        assert_eq!(entry.family, AF_INET6);
        assert!(
            found.contains(&entry),
            "dual-stack {entry:?} not in {found:#?}"
        );
    }
    assert!(
        !found
            .iter()
            .any(|s| s.cookie == cookie(unrelated_mapped.client.as_fd()))
    );
    assert!(!found.iter().any(|s| {
        unrelated
            .iter()
            .any(|c| s.cookie == cookie(c.client.as_fd()))
    }));

    // Subsets, the v4-mapped spelling, other state masks.
    assert_eq!(
        filtered(&mut diag, Transport::Tcp, ESTABLISHED_ONLY, &[addr6]).len(),
        2
    );
    assert_eq!(
        filtered(
            &mut diag,
            Transport::Tcp,
            ESTABLISHED_ONLY,
            &[v4_mapped(addr4)]
        )
        .len(),
        5
    );
    assert_eq!(
        filtered(&mut diag, Transport::Tcp, ALL_STATES, &peers).len(),
        7
    );
    let closing = state_mask(1) | state_mask(2) | state_mask(8);
    assert_eq!(
        filtered(&mut diag, Transport::Tcp, closing, &peers).len(),
        7
    );
    assert!(
        diag.dump_to_peers(Transport::Tcp, ESTABLISHED_ONLY, &[])
            .expect("no peers")
            .is_empty()
    );
    assert!(filtered(&mut diag, Transport::Udp, ALL_STATES, &peers).is_empty());

    // Peer lists at the limit (filtered by the kernel), one past it for the
    // IPv6 dump only, and far past it (unfiltered dumps, filtered here): the
    // same sockets.
    let with_bogus = |count: usize| {
        let mut list = bogus_peers(count as u32);
        list.insert(count / 2, addr4);
        list.push(addr6);
        list
    };
    let at_limit = with_bogus(MAX_FILTER_PEERS - 2);
    let past_limit_v6 = with_bogus(MAX_FILTER_PEERS - 1);
    let far_past = with_bogus(4 * MAX_FILTER_PEERS);
    let filters = |list: &[SocketAddr]| {
        [AF_INET, AF_INET6].map(|family| match peer_bytecode(family, list) {
            PeerFilter::Bytecode(_) => "filtered",
            PeerFilter::TooMany { .. } => "unfiltered",
            PeerFilter::Nothing => "skipped",
        })
    };
    assert_eq!(filters(&at_limit), ["filtered", "filtered"]);
    assert_eq!(filters(&past_limit_v6), ["filtered", "unfiltered"]);
    assert_eq!(filters(&far_past), ["unfiltered", "unfiltered"]);
    assert_eq!(filters(&[addr6]), ["skipped", "filtered"]);
    for list in [&at_limit, &past_limit_v6, &far_past] {
        let started = Instant::now();
        let long = filtered(&mut diag, Transport::Tcp, ESTABLISHED_ONLY, list);
        eprintln!(
            "dump_to_peers with {} peers ({:?}), and a full dump to check it: {:?}",
            list.len(),
            filters(list),
            started.elapsed()
        );
        assert_eq!(long, found);
    }
}

#[test]
fn dump_to_peers_returns_exactly_the_connected_udp_sockets_to_the_backends() {
    const UNRELATED: usize = 50;
    if !privileged("dump_to_peers_returns_exactly_the_connected_udp_sockets_to_the_backends") {
        return;
    }
    let _ns = NetNs::new();
    let backend4 = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).expect("bind backend4");
    let addr4 = backend4.local_addr().unwrap();
    let backend6 = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind backend6");
    let addr6 = backend6.local_addr().unwrap();
    let other4 = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).expect("bind other4");
    let other6 = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind other6");

    let connected = |bind: SocketAddr, target: SocketAddr| {
        let socket = UdpSocket::bind(bind).expect("bind client");
        socket.connect(target).expect("connect");
        socket
    };
    let any4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
    let unrelated: Vec<UdpSocket> = (0..UNRELATED)
        .map(|i| match i % 3 {
            0 => connected(any4, other4.local_addr().unwrap()),
            1 => connected(any6, other6.local_addr().unwrap()),
            _ => connected(any6, v4_mapped(other4.local_addr().unwrap())),
        })
        .collect();
    let clients = [
        connected(any4, addr4),
        connected(any4, addr4),
        connected(any6, addr6),
        connected(any6, v4_mapped(addr4)),
    ];

    let mut diag = SockDiag::open().expect("open sock_diag");
    let peers = [addr4, addr6];
    let found = filtered(&mut diag, Transport::Udp, ESTABLISHED_ONLY, &peers);
    let cookies: HashSet<u64> = found.iter().map(|s| s.cookie).collect();
    let expected: HashSet<u64> = clients.iter().map(|c| cookie(c.as_fd())).collect();
    assert_eq!(cookies, expected, "{found:#?}");
    assert_eq!(
        found.iter().filter(|s| s.family == AF_INET6).count(),
        2,
        "{found:#?}"
    );
    assert_eq!(
        diag.dump(Transport::Udp, ESTABLISHED_ONLY).unwrap().len(),
        UNRELATED + 4
    );
    // Unconnected sockets (the backends themselves) are no match either.
    assert_eq!(
        filtered(&mut diag, Transport::Udp, ALL_STATES, &peers).len(),
        4
    );
    assert_eq!(
        filtered(&mut diag, Transport::Udp, ESTABLISHED_ONLY, &[addr6]).len(),
        1
    );
    assert!(filtered(&mut diag, Transport::Tcp, ALL_STATES, &peers).is_empty());

    let mut too_long = bogus_peers(4 * MAX_FILTER_PEERS as u32);
    too_long.extend(peers);
    assert_eq!(
        filtered(&mut diag, Transport::Udp, ESTABLISHED_ONLY, &too_long),
        found
    );
    drop(unrelated);
}

/// The soft open-files limit, raised to `wanted` if the hard limit (or
/// `CAP_SYS_RESOURCE`) allows.
fn open_files_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live rlimit the kernel writes.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
    assert_eq!(rc, 0, "getrlimit: {}", io::Error::last_os_error());
    if limit.rlim_cur >= wanted {
        return limit.rlim_cur;
    }
    for raised in [
        libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        },
        libc::rlimit {
            rlim_cur: wanted.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        },
    ] {
        // SAFETY: `raised` is a live rlimit the kernel only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut found = 0;
    for _ in 0..runs {
        let started = Instant::now();
        found = f();
        times.push(started.elapsed());
    }
    times.sort();
    (times[runs / 2], found)
}

#[test]
fn filtered_dump_timing() {
    const UNRELATED: u64 = 10_000;
    const TO_BACKEND: u64 = 1_000;
    /// Open files left for the rest of the test process.
    const RESERVE: u64 = 2_000;
    if !privileged("filtered_dump_timing") {
        return;
    }
    // Two descriptors per connection; scale down to stay below the limit.
    let limit = open_files_limit(2 * (UNRELATED + TO_BACKEND) + RESERVE);
    let room = (limit.saturating_sub(RESERVE) / 2).min(UNRELATED + TO_BACKEND);
    let unrelated_count = (UNRELATED * room / (UNRELATED + TO_BACKEND)) as usize;
    let backend_count = (TO_BACKEND * room / (UNRELATED + TO_BACKEND)) as usize;
    let _ns = NetNs::new();
    let (other, other_addr) = localhost_listener();
    let backend = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).expect("bind backend");
    let backend_addr = backend.local_addr().unwrap();
    let started = Instant::now();
    let unrelated: Vec<Conn> = (0..unrelated_count)
        .map(|_| Conn::open(&other, other_addr))
        .collect();
    let to_backend: Vec<Conn> = (0..backend_count)
        .map(|_| Conn::open(&backend, backend_addr))
        .collect();
    let setup = started.elapsed();

    let mut diag = SockDiag::open().expect("open sock_diag");
    let (full, all) = median(5, || {
        diag.dump(Transport::Tcp, ESTABLISHED_ONLY)
            .expect("dump")
            .len()
    });
    assert_eq!(all, 2 * (unrelated_count + backend_count));
    let mut lines = Vec::new();
    for extra in [0, 99, MAX_FILTER_PEERS - 1, MAX_FILTER_PEERS, 999] {
        let mut peers = bogus_peers(extra as u32);
        peers.insert(peers.len() / 2, backend_addr);
        let how = match peer_bytecode(AF_INET, &peers) {
            PeerFilter::Bytecode(_) => "filtered",
            _ => "unfiltered + filtered here",
        };
        let (took, found) = median(5, || {
            diag.dump_to_peers(Transport::Tcp, ESTABLISHED_ONLY, &peers)
                .expect("dump_to_peers")
                .len()
        });
        assert_eq!(found, backend_count);
        lines.push(format!("{} peer(s) {took:?} ({how})", peers.len()));
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    eprintln!(
        "sock_diag timing ({profile}; open-files limit {limit}; setup {setup:?}): \
         {} TCP sockets established, {} of them to the backend; median of 5: \
         unfiltered dump {full:?}; dump_to_peers with {}",
        all,
        backend_count,
        lines.join(", "),
    );
    drop(to_backend);
    drop(unrelated);
}
