//! Copying a proxied connection's bytes both ways: through a small buffer
//! while a direction is young, then with `splice(2)` through a pipe, so
//! bulk transfers never pass through userspace (as Go's `io.Copy` between
//! TCP connections and HAProxy's splicing do).
//!
//! Invariants: each direction copies exactly what it reads, in order; a
//! direction that reaches its end of stream passes it on as a `shutdown`
//! of the other socket's write side, unless the other direction has ended
//! already (then both sockets are closed right after, which sends the FIN).
//! The pipe of a spliced direction is empty whenever that direction reads
//! again (everything moved into it is moved out before), so a splice into
//! it never waits for room. A direction starts splicing only after
//! [`SPLICE_AFTER`] bytes: a request or a short answer costs no pipe (two
//! file descriptors and their creation); a direction that cannot get a pipe
//! (out of file descriptors) keeps copying through its buffer.

use std::{
    io,
    net::Shutdown,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicU8, Ordering},
};

use socket2::SockRef;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, Interest},
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
};

/// Buffer of each direction before it splices: enough for a TLS record
/// (16 KiB) in one read. Allocated, never zeroed: only what a read fills is
/// ever touched.
const BUFFER: usize = 16 * 1024;
/// Bytes a direction copies through its buffer before it moves to
/// `splice`.
pub(super) const SPLICE_AFTER: u64 = 128 * 1024;
/// Bytes moved per splice at most (a pipe's default capacity).
const CHUNK: usize = 64 * 1024;

/// Copies `a` to `b` and `b` to `a` until both directions have ended or
/// either fails.
pub(super) async fn both_ways(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<()> {
    let ended = AtomicU8::new(0);
    let (a_read, a_write) = a.split();
    let (b_read, b_write) = b.split();
    tokio::try_join!(
        one_way(a_read, b_write, &ended),
        one_way(b_read, a_write, &ended)
    )?;
    Ok(())
}

/// One direction, `from` to `to`; `ended` counts the directions that
/// reached their end of stream. The buffered phase reads through tokio's
/// `AsyncRead`, which takes a read that did not fill the buffer as proof
/// that the socket is drained (no extra read that would only say
/// `EAGAIN`).
async fn one_way(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    ended: &AtomicU8,
) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(BUFFER);
    let mut copied = 0u64;
    // Cleared when no pipe could be had: the direction stays buffered.
    let mut may_splice = true;
    loop {
        if may_splice && copied >= SPLICE_AFTER {
            match Pipe::new() {
                Ok(pipe) => return splice_rest(from.as_ref(), to.as_ref(), &pipe, ended).await,
                Err(_) => may_splice = false,
            }
        }
        buffer.clear();
        let read = from.read_buf(&mut buffer).await?;
        if read == 0 {
            return end(to.as_ref(), ended);
        }
        to.write_all(&buffer).await?;
        copied += read as u64;
    }
}

/// The rest of a direction through `pipe`: splice in what `from` has, then
/// all of it out to `to`, until the end of the stream.
async fn splice_rest(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    ended: &AtomicU8,
) -> io::Result<()> {
    loop {
        let moved = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)
            }) {
                Ok(moved) => break moved,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        };
        if moved == 0 {
            return end(to, ended);
        }
        let mut left = moved;
        while left > 0 {
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(out) => left -= out,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(err) => return Err(err),
            }
        }
    }
}

/// The end of one direction's stream: passed on to `to` unless the other
/// direction has ended too.
fn end(to: &TcpStream, ended: &AtomicU8) -> io::Result<()> {
    if ended.fetch_add(1, Ordering::Relaxed) == 0 {
        match SockRef::from(to).shutdown(Shutdown::Write) {
            // The peer is gone already: nothing to pass on.
            Err(err) if err.kind() == io::ErrorKind::NotConnected => {}
            other => other?,
        }
    }
    Ok(())
}

/// A non-blocking pipe, closed on drop.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds: [RawFd; 2] = [-1; 2];
        // SAFETY: `fds` is a writable array of two ints, as pipe2 wants.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both are open descriptors nobody else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self { read, write })
    }
}

/// One non-blocking `splice` of at most `len` bytes from `from` to `to`
/// (one of them a pipe); the bytes moved (0: end of stream).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both are open descriptors borrowed for the call; null offsets
    // (the pipe and the socket have none).
    let moved = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(moved).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_buffered_then_spliced_and_half_closes_pass_on() {
        // client <-> (a | proxy | b) <-> server
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let (mut a, mut b) = (a, b);
        let proxy = tokio::spawn(async move { both_ways(&mut a, &mut b).await });
        // Well past SPLICE_AFTER, with a pattern that shows reordering or loss.
        let size = 4 * SPLICE_AFTER as usize + 12_345;
        let sent: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let upload = sent.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&upload).await.unwrap();
            // The client's end of stream reaches the server.
            client.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert!(
            received == sent,
            "the server got {} bytes, not what was sent",
            received.len()
        );
        // The half-closed connection still carries the answer back.
        let answer: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
        server.write_all(&answer).await.unwrap();
        drop(server);
        let got = writer.await.unwrap();
        assert!(
            got == answer,
            "the client got {} bytes, not the answer",
            got.len()
        );
        proxy.await.unwrap().unwrap();
    }
}
