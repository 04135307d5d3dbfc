//! [`SockDiag`]: the `NETLINK_SOCK_DIAG` socket and its exchanges (dumps,
//! filtered dumps, destroys), built on the pure encoders and decoders of the
//! other parts.
//!
//! Invariants: every exchange has its own sequence number and ends within
//! [`EXCHANGE_DEADLINE`]; replies to an earlier, abandoned exchange are
//! skipped; a filtered dump's result is checked against the peers again in
//! user space, so a kernel that refuses or ignores the filter still gives
//! the right answer.

use std::{
    collections::HashSet,
    fmt,
    hash::BuildHasher,
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};

use super::{
    AF_INET, AF_INET6, ESTABLISHED_ONLY, SocketInfo, Transport, family_name,
    filter::{PeerFilter, filtered_dump_request, normalized_peers, peer_bytecode},
    reply::collect_dump,
    request::{destroy_request, dump_request},
};
use crate::kernel::netlink::{self, DumpProgress, RECV_BUFFER_LEN, find_ack};

/// Upper bound for a whole dump or destroy exchange.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(30);

/// A `NETLINK_SOCK_DIAG` socket.
pub struct SockDiag {
    socket: netlink::Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl fmt::Debug for SockDiag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SockDiag")
            .field("socket", &self.socket)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl SockDiag {
    /// Opens a `NETLINK_SOCK_DIAG` socket (close-on-exec) connected to the
    /// kernel, in the calling thread's network namespace.
    pub fn open() -> anyhow::Result<Self> {
        Ok(Self {
            socket: netlink::Socket::open(libc::NETLINK_SOCK_DIAG, "NETLINK_SOCK_DIAG")?,
            buf: vec![0; RECV_BUFFER_LEN],
            seq: 0,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    /// Every socket of `transport` in both families whose state is in
    /// `states` (bit n = state n, e.g. [`ESTABLISHED_ONLY`],
    /// [`ALL_STATES`](super::ALL_STATES)), in the network namespace this
    /// socket was opened in. IPv4 sockets come first, then IPv6 ones
    /// (dual-stack sockets included).
    pub fn dump(&mut self, transport: Transport, states: u32) -> anyhow::Result<Vec<SocketInfo>> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump_family(transport, family, states, None, &mut out)
                .with_context(|| {
                    format!(
                        "sock_diag dump of {transport}/{} sockets",
                        family_name(family)
                    )
                })?;
        }
        Ok(out)
    }

    /// Like [`dump`](Self::dump), but only the sockets whose peer is one of
    /// `peers`; a v4-mapped peer (`[::ffff:a.b.c.d]:p`) of a dual-stack
    /// socket matches `a.b.c.d:p` in `peers` and the other way round. No
    /// peers: no sockets, without asking the kernel.
    ///
    /// The kernel filters ([`peer_bytecode`]), so the other sockets of the
    /// namespace cost no reply; the `AF_INET` dump is skipped when no peer is
    /// IPv4. More than [`MAX_FILTER_PEERS`](super::MAX_FILTER_PEERS) peers
    /// for one family (where a filter would cost the kernel more than it
    /// saves) fall back to an unfiltered dump of that family. Either way the result is checked
    /// against `peers` again in user space.
    pub fn dump_to_peers(
        &mut self,
        transport: Transport,
        states: u32,
        peers: &[SocketAddr],
    ) -> anyhow::Result<Vec<SocketInfo>> {
        let mut out = Vec::new();
        if peers.is_empty() {
            return Ok(out);
        }
        for family in [AF_INET, AF_INET6] {
            let bytecode = match peer_bytecode(family, peers) {
                PeerFilter::Nothing => continue,
                PeerFilter::Bytecode(bytecode) => Some(bytecode),
                PeerFilter::TooMany { .. } => None,
            };
            let context = || {
                format!(
                    "sock_diag dump of {transport}/{} sockets to {} peer(s)",
                    family_name(family),
                    peers.len()
                )
            };
            let before = out.len();
            let filtered =
                self.dump_family(transport, family, states, bytecode.as_deref(), &mut out);
            match filtered {
                Ok(()) => {}
                Err(err) if bytecode.is_some() => {
                    // A kernel that refuses the filter still gets the right
                    // answer: dump everything, filter below.
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "{}: the kernel refused the peer filter; dumping unfiltered",
                        context()
                    );
                    out.truncate(before);
                    self.dump_family(transport, family, states, None, &mut out)
                        .with_context(context)?;
                }
                Err(err) => return Err(err.context(context())),
            }
        }
        let wanted: HashSet<SocketAddr> = normalized_peers(peers).into_iter().collect();
        out.retain(|socket| wanted.contains(&socket.peer_unmapped()));
        Ok(out)
    }

    /// One family's dump, filtered by `bytecode` if given.
    fn dump_family(
        &mut self,
        transport: Transport,
        family: u8,
        states: u32,
        bytecode: Option<&[u8]>,
        out: &mut Vec<SocketInfo>,
    ) -> anyhow::Result<()> {
        let seq = self.next_seq();
        let request = match bytecode {
            Some(bytecode) => filtered_dump_request(seq, family, transport, states, bytecode)?,
            None => dump_request(seq, family, transport, states).to_vec(),
        };
        self.socket.send(&request).context("sending the request")?;
        let deadline = Instant::now() + EXCHANGE_DEADLINE;
        loop {
            let len = self
                .socket
                .recv(&mut self.buf)
                .context("reading the reply")?;
            if collect_dump(&self.buf[..len], seq, transport, out)? == DumpProgress::Done {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "dump did not finish within {EXCHANGE_DEADLINE:?}"
            );
        }
    }

    /// Destroys one socket (found by a previous dump: family, protocol,
    /// addresses, ports, interface and cookie must all match).
    ///
    /// `Ok(true)`: destroyed. `Ok(false)`: it was already gone – `ENOENT`
    /// (nothing has that address tuple any more) or `ESTALE` (a different
    /// socket, with another cookie, now has it; that one is left alone).
    /// Needs `CAP_NET_ADMIN` (`EPERM` otherwise).
    pub fn destroy(&mut self, socket: &SocketInfo) -> anyhow::Result<bool> {
        self.destroy_inner(socket).with_context(|| {
            format!(
                "sock_diag destroy of {} socket {} -> {} (cookie {})",
                socket.transport, socket.local, socket.peer, socket.cookie
            )
        })
    }

    fn destroy_inner(&mut self, socket: &SocketInfo) -> anyhow::Result<bool> {
        let seq = self.next_seq();
        let request = destroy_request(seq, socket)?;
        self.socket.send(&request).context("sending the request")?;
        let deadline = Instant::now() + EXCHANGE_DEADLINE;
        let error = loop {
            let len = self
                .socket
                .recv(&mut self.buf)
                .context("reading the acknowledgement")?;
            if let Some(error) = find_ack(&self.buf[..len], seq)? {
                break error;
            }
            ensure!(
                Instant::now() < deadline,
                "no acknowledgement within {EXCHANGE_DEADLINE:?}"
            );
        };
        match -error {
            0 => Ok(true),
            libc::ENOENT | libc::ESTALE => Ok(false),
            errno @ libc::EPERM => {
                Err(io::Error::from_raw_os_error(errno)).context("SOCK_DESTROY needs CAP_NET_ADMIN")
            }
            errno @ libc::EOPNOTSUPP => Err(io::Error::from_raw_os_error(errno))
                .context("SOCK_DESTROY unsupported (kernel without CONFIG_INET_DIAG_DESTROY?)"),
            errno => Err(io::Error::from_raw_os_error(errno)).context("SOCK_DESTROY failed"),
        }
    }

    /// The connections of `transport` to any of `peers`: established TCP, or
    /// connected UDP (state 1 with a non-zero peer port), whose peer is in
    /// `peers`. A v4-mapped peer (`[::ffff:a.b.c.d]:p`) of a dual-stack socket
    /// matches `a.b.c.d:p` in `peers` and the other way round.
    ///
    /// Every process's sockets in the namespace are included, also this
    /// process's own (e.g. health probes).
    pub fn established_to(
        &mut self,
        transport: Transport,
        peers: &HashSet<SocketAddr, impl BuildHasher>,
    ) -> anyhow::Result<Vec<SocketInfo>> {
        let peers: Vec<SocketAddr> = peers.iter().copied().collect();
        let mut sockets = self.dump_to_peers(transport, ESTABLISHED_ONLY, &peers)?;
        sockets.retain(SocketInfo::is_connected);
        Ok(sockets)
    }
}
