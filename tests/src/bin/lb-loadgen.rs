//! A bounded UDP load generator and sink for the forwarding benchmarks.
//!
//! ```text
//! lb-loadgen send --dst IP:PORT[,IP:PORT...] [--flows 256] [--size 64]
//!                 [--duration 5] [--max-packets 100000000] [--threads 1] [--batch 64]
//!                 [--cpu N]
//! lb-loadgen sink --bind IP:PORT [--duration 10] [--idle-ms 1000] [--cpu N]
//! ```
//!
//! `--cpu N` pins the process (all its threads) to CPU `N`.
//!
//! `send` opens `--flows` UDP sockets (each its own source port, connected
//! to the destinations in turn) and sends `--size`-byte datagrams with
//! `sendmmsg(2)` in batches of `--batch`, round robin over the sockets, from
//! `--threads` threads, until `--duration` seconds (at most 10) pass or
//! `--max-packets` were sent. Send errors (e.g. `ECONNREFUSED` after an ICMP
//! error) are counted, not fatal. It prints one JSON object.
//!
//! `sink` counts the non-empty datagrams arriving on `--bind` (empty ones
//! are health probes) with `recvmmsg(2)` on a socket with a 256 MiB receive
//! buffer (`SO_RCVBUFFORCE`: a frame that came through an XDP redirect is
//! charged a whole page, so 16 MiB overflowed within a burst); it says `listening` on stderr once
//! bound, and stops after `--duration` seconds (at most 30) or `--idle-ms`
//! without a datagram once the first one arrived. It prints one JSON object
//! with the total, the rate between the first and the last datagram and a
//! count per second.

use std::{
    io::Write as _,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

/// The longest a sender runs.
const MAX_SEND: Duration = Duration::from_secs(10);
/// The longest a sink runs.
const MAX_SINK: Duration = Duration::from_secs(30);
/// Largest batch for sendmmsg/recvmmsg.
const MAX_BATCH: usize = 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("send") => Options::parse(&args[1..]).and_then(|o| send(&o)),
        Some("sink") => Options::parse(&args[1..]).and_then(|o| sink(&o)),
        _ => Err(
            "usage: lb-loadgen send --dst IP:PORT[,...] [--flows N] [--size B] [--duration S] \
             [--max-packets N] [--threads T] [--batch N]\n       lb-loadgen sink --bind \
             IP:PORT [--duration S] [--idle-ms MS]"
                .to_owned(),
        ),
    };
    match result {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lb-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

struct Options {
    dst: Vec<SocketAddr>,
    bind: Option<SocketAddr>,
    flows: usize,
    size: usize,
    duration: Duration,
    max_packets: u64,
    threads: usize,
    batch: usize,
    idle: Duration,
    cpu: Option<usize>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Self {
            dst: Vec::new(),
            bind: None,
            flows: 256,
            size: 64,
            duration: Duration::from_secs(5),
            max_packets: 100_000_000,
            threads: 1,
            batch: 64,
            idle: Duration::from_secs(1),
            cpu: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--dst" => {
                    o.dst = value
                        .split(',')
                        .map(|a| a.parse().map_err(|e| bad(&e)))
                        .collect::<Result<_, _>>()?;
                }
                "--bind" => o.bind = Some(value.parse().map_err(|e| bad(&e))?),
                "--flows" => o.flows = value.parse().map_err(|e| bad(&e))?,
                "--size" => o.size = value.parse().map_err(|e| bad(&e))?,
                "--duration" => {
                    o.duration = Duration::from_secs_f64(value.parse().map_err(|e| bad(&e))?);
                }
                "--max-packets" => o.max_packets = value.parse().map_err(|e| bad(&e))?,
                "--threads" => o.threads = value.parse().map_err(|e| bad(&e))?,
                "--batch" => o.batch = value.parse().map_err(|e| bad(&e))?,
                "--idle-ms" => {
                    o.idle = Duration::from_millis(value.parse().map_err(|e| bad(&e))?);
                }
                "--cpu" => o.cpu = Some(value.parse().map_err(|e| bad(&e))?),
                other => return Err(format!("unknown option {other}")),
            }
        }
        if !(1..=65_000).contains(&o.flows) {
            return Err("--flows must be 1..=65000".into());
        }
        if !(1..=1472).contains(&o.size) {
            return Err("--size must be 1..=1472".into());
        }
        if !(1..=64).contains(&o.threads) || o.threads > o.flows {
            return Err("--threads must be 1..=64 and at most --flows".into());
        }
        if !(1..=MAX_BATCH).contains(&o.batch) {
            return Err(format!("--batch must be 1..={MAX_BATCH}"));
        }
        if let Some(cpu) = o.cpu {
            pin_to(cpu)?;
        }
        Ok(o)
    }
}

/// Pins this process (threads started later inherit it) to CPU `cpu`.
fn pin_to(cpu: usize) -> Result<(), String> {
    // SAFETY: cpu_set_t is a plain bit set; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("--cpu {cpu}: out of range"));
    }
    // SAFETY: CPU_SET writes one bit of `set` below CPU_SETSIZE (checked);
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    let rc = unsafe {
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("--cpu {cpu}: {}", std::io::Error::last_os_error()))
    }
}

/// One thread's share of the flows; returns (sent, errors).
fn send_loop(sockets: &[UdpSocket], o: &Options, until: Instant, budget: u64) -> (u64, u64) {
    let payload = vec![0x5a_u8; o.size];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: mmsghdr is a plain C struct; all-zero is a valid value.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; o.batch];
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &raw mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let (mut sent, mut errors) = (0u64, 0u64);
    'outer: loop {
        for socket in sockets {
            if sent >= budget {
                break 'outer;
            }
            let n = o.batch.min((budget - sent) as usize);
            // SAFETY: `msgs` holds `n` initialised headers whose only buffer,
            // `payload` (through `iov`), outlives the call; the socket is open.
            let rc = unsafe {
                libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0)
            };
            if rc < 0 {
                errors += 1;
            } else {
                sent += rc as u64;
            }
        }
        if Instant::now() >= until {
            break;
        }
    }
    (sent, errors)
}

fn send(o: &Options) -> Result<serde_json::Value, String> {
    if o.dst.is_empty() {
        return Err("send needs --dst".into());
    }
    if o.duration > MAX_SEND {
        return Err(format!("--duration is at most {}s", MAX_SEND.as_secs()));
    }
    let mut sockets = Vec::with_capacity(o.flows);
    for i in 0..o.flows {
        let dst = o.dst[i % o.dst.len()];
        let local: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let socket = UdpSocket::bind(local).map_err(|e| format!("bind: {e}"))?;
        socket
            .connect(dst)
            .map_err(|e| format!("connect {dst}: {e}"))?;
        sockets.push(socket);
    }
    let per_thread = o.flows.div_ceil(o.threads);
    let budget = o.max_packets / o.threads as u64;
    let start = Instant::now();
    let until = start + o.duration;
    let results: Vec<(u64, u64)> = thread::scope(|s| {
        let handles: Vec<_> = sockets
            .chunks(per_thread)
            .map(|chunk| s.spawn(move || send_loop(chunk, o, until, budget)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0)))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let sent: u64 = results.iter().map(|r| r.0).sum();
    let errors: u64 = results.iter().map(|r| r.1).sum();
    Ok(json!({
        "mode": "send",
        "dst": o.dst.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "flows": o.flows,
        "size": o.size,
        "threads": o.threads,
        "sent": sent,
        "errors": errors,
        "duration_s": elapsed,
        "pps": float(sent) / elapsed,
    }))
}

fn sink(o: &Options) -> Result<serde_json::Value, String> {
    let bind = o.bind.ok_or("sink needs --bind")?;
    if o.duration > MAX_SINK {
        return Err(format!("--duration is at most {}s", MAX_SINK.as_secs()));
    }
    let socket = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let size: libc::c_int = 256 << 20;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&size`, which lives
    // through the call. Failure (not root: no SO_RCVBUFFORCE) only leaves the default.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "listening {bind}");
        let _ = err.flush();
    }
    let batch = o.batch;
    let mut buffers = vec![[0u8; 2048]; batch];
    let mut iovs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is a plain C struct; all-zero is a valid value.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; batch];
    for (m, iov) in msgs.iter_mut().zip(&mut iovs) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let (mut received, mut bytes, mut empty) = (0u64, 0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = start;
    let mut per_second: Vec<u64> = Vec::new();
    loop {
        let now = Instant::now();
        if now.duration_since(start) >= o.duration
            || first.is_some() && now.duration_since(last) >= o.idle
        {
            break;
        }
        // SAFETY: `msgs` holds `batch` headers, each pointing at its own
        // live 2 KiB buffer through `iovs`; the socket is open.
        let rc = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                batch as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc <= 0 {
            continue;
        }
        let now = Instant::now();
        let mut got = 0;
        for m in &msgs[..rc as usize] {
            if m.msg_len == 0 {
                empty += 1;
            } else {
                got += 1;
                bytes += u64::from(m.msg_len);
            }
        }
        if got == 0 {
            continue;
        }
        let first_at = *first.get_or_insert(now);
        last = now;
        received += got;
        let second = now.duration_since(first_at).as_secs() as usize;
        if per_second.len() <= second {
            per_second.resize(second + 1, 0);
        }
        per_second[second] += got;
    }
    let span = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    Ok(json!({
        "mode": "sink",
        "bind": bind.to_string(),
        "received": received,
        "bytes": bytes,
        "empty": empty,
        "first_to_last_s": span,
        "pps": if span > 0.0 { float(received) / span } else { 0.0 },
        "per_second": per_second,
    }))
}

#[expect(
    clippy::cast_precision_loss,
    reason = "packet counts stay far below 2^52"
)]
fn float(n: u64) -> f64 {
    n as f64
}
