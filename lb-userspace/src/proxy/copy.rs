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
//! it never waits for room. A direction starts splicing only once it
//! streams: after [`SPLICE_AFTER`] bytes read in a row by reads that each
//! filled the buffer. Requests and answers, however many a keep-alive
//! connection carries, stay buffered: for a short message a splice costs
//! what a read does, plus the pipe (two file descriptors) and one more call
//! per message (a splice that moved something does not prove the socket
//! drained, a short read does). A direction that cannot get a pipe (out of
//! file descriptors) keeps copying through its buffer.

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
/// Bytes a direction reads in a row, each read filling its buffer, before
/// it moves to `splice`.
pub(super) const SPLICE_AFTER: u64 = 128 * 1024;
/// The capacity a splicing direction asks for its pipe (`F_SETPIPE_SZ`;
/// Linux's default `pipe-max-size`): room for 256 pages, so one splice in
/// and one out move up to 1 MiB of a stream where the default pipe (16
/// pages) would take 64 KiB. The pages are the socket buffers' own,
/// referenced, not copied; a pipe that cannot grow keeps its default size.
const PIPE_SIZE: libc::c_int = 1024 * 1024;

/// Copies `a` to `b` and `b` to `a` until both directions have ended or
/// either fails; how many of the two directions ended up splicing.
pub(super) async fn both_ways(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<u8> {
    let ended = AtomicU8::new(0);
    let (a_read, a_write) = a.split();
    let (b_read, b_write) = b.split();
    let (there, back) = tokio::try_join!(
        one_way(a_read, b_write, &ended),
        one_way(b_read, a_write, &ended)
    )?;
    Ok(u8::from(there) + u8::from(back))
}

/// One direction, `from` to `to`; `ended` counts the directions that
/// reached their end of stream. Whether it spliced. The buffered phase
/// reads through tokio's `AsyncRead`, which takes a read that did not fill
/// the buffer as proof that the socket is drained (no extra read that
/// would only say `EAGAIN`).
async fn one_way(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    ended: &AtomicU8,
) -> io::Result<bool> {
    let mut buffer = Vec::with_capacity(BUFFER);
    // Bytes of the reads in a row that filled the buffer.
    let mut streak = 0u64;
    // Cleared when no pipe could be had: the direction stays buffered.
    let mut may_splice = true;
    loop {
        if may_splice && streak >= SPLICE_AFTER {
            match Pipe::new() {
                Ok(pipe) => {
                    splice_rest(from.as_ref(), to.as_ref(), &pipe, ended).await?;
                    return Ok(true);
                }
                Err(_) => may_splice = false,
            }
        }
        buffer.clear();
        let read = from.read_buf(&mut buffer).await?;
        if read == 0 {
            end(to.as_ref(), ended)?;
            return Ok(false);
        }
        to.write_all(&buffer).await?;
        if read == buffer.capacity() {
            streak += read as u64;
        } else {
            streak = 0;
        }
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
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), pipe.capacity)
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
    /// Its capacity in bytes.
    capacity: usize,
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
        // SAFETY: `write` is an open pipe descriptor; F_SETPIPE_SZ and
        // F_GETPIPE_SZ take an int argument and touch no memory of ours.
        let capacity = unsafe {
            let grown = libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
            if grown > 0 {
                grown
            } else {
                libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
            }
        };
        let capacity = usize::try_from(capacity).map_err(|_| io::Error::last_os_error())?;
        Ok(Self {
            read,
            write,
            capacity,
        })
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
        // Well past SPLICE_AFTER, in one write (the proxy reads full
        // buffers), with a pattern that shows reordering or loss.
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
        assert_eq!(
            proxy.await.unwrap().unwrap(),
            2,
            "both bulk directions splice"
        );
    }

    #[tokio::test]
    async fn requests_and_answers_stay_buffered_however_many_bytes_they_add_up_to() {
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let (mut a, mut b) = (a, b);
        let proxy = tokio::spawn(async move { both_ways(&mut a, &mut b).await });
        // Keep-alive traffic: one request, one answer, over and over; each
        // direction carries far more than SPLICE_AFTER in total.
        let rounds = 4 * SPLICE_AFTER as usize / 1024;
        let server_side = tokio::spawn(async move {
            let mut request = [0u8; 100];
            for _ in 0..rounds {
                server.read_exact(&mut request).await.unwrap();
                server.write_all(&[request[0]; 1024]).await.unwrap();
            }
        });
        let mut answer = [0u8; 1024];
        for round in 0..rounds {
            let tag = (round % 251) as u8;
            client.write_all(&[tag; 100]).await.unwrap();
            client.read_exact(&mut answer).await.unwrap();
            assert!(answer.iter().all(|&byte| byte == tag), "round {round}");
        }
        server_side.await.unwrap();
        drop(client);
        assert_eq!(
            proxy.await.unwrap().unwrap(),
            0,
            "a direction of short messages spliced"
        );
    }
}
