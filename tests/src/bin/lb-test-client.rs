//! A tiny socket client the integration tests run inside the test cgroup
//! (so the cgroup programs apply to it). It does one exchange and prints one
//! JSON line: what `connect`/`send` returned, how long `connect` took, which peer
//! address the socket reports, and the reply.
//!
//! Usage:
//! ```text
//! lb-test-client tcp ADDR [PAYLOAD]         connect, getpeername, send, read reply
//! lb-test-client tcp-mapped ADDR [PAYLOAD]  same over an AF_INET6 socket to ::ffff:a.b.c.d
//! lb-test-client udp ADDR PAYLOAD           unconnected sendto + recvfrom
//! lb-test-client udp-connected ADDR PAYLOAD connect, getpeername, send, recv
//! lb-test-client hold ADDR SECONDS          long-lived TCP connection, see below
//! lb-test-client udp-hold ADDR SECONDS      the same with a connected UDP socket
//! lb-test-client storm ADDR RATE DURATION_MS CONNECT_MS ANSWER_MS START_NS
//!                                           RATE new TCP connects/s, see below
//! lb-test-client connects ADDR CONCURRENCY WARMUP_MS WINDOW_MS
//!                                           closed-loop connects, see below
//! ```
//!
//! `hold` prints several lines: it connects, sends `HOLD\n`, reads the reply
//! and prints `{"event":"connected","peer":…,"local":…,"reply":…,"connect_us":…}`;
//! then it blocks reading. When the read fails or hits EOF it prints
//! `{"event":"closed","error":…,"errno":…,"eof":bool}`; if nothing happens
//! for SECONDS it prints `{"event":"timeout"}`. If no connection is made it
//! prints `{"event":"failed","error":…,"errno":…}`. It always exits 0 after
//! its last line.
//!
//! `storm` is the client of the failover scenarios (`lb_tests::failover`):
//! from `START_NS` (`CLOCK_MONOTONIC`) on it starts `RATE` connects per second
//! for `DURATION_MS`, each waiting up to `CONNECT_MS` for its TCP connect and up
//! to `ANSWER_MS` (connect included) for the server's first byte, and once
//! all have ended prints one `lb_tests::failover::Connect`
//! JSON object per connect, in start order. It exits 0 unless it could not
//! run at all.
//!
//! `connects` is the client of the happy-path connect bench
//! (`lb_tests::connects`): `CONCURRENCY` threads each open one new TCP
//! connection after the other (connect, read the server's first byte,
//! close with `SO_LINGER` 0) for `WARMUP_MS`, then for `WINDOW_MS`
//! (counted), and it prints one `lb_tests::connects::LoopReport` JSON
//! object with every counted connect's latency. Failed connects are
//! counted in it, not fatal; it exits 0 unless it could not run at all.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

use serde::Serialize;

#[derive(Serialize, Default)]
struct Outcome {
    ok: bool,
    error: Option<String>,
    errno: Option<i32>,
    connect_us: Option<u128>,
    peer: Option<String>,
    reply: Option<String>,
    reply_from: Option<String>,
}

const TIMEOUT: Duration = Duration::from_secs(3);

fn fail(outcome: &mut Outcome, err: &std::io::Error) {
    outcome.ok = false;
    outcome.error = Some(err.to_string());
    outcome.errno = err.raw_os_error();
}

fn tcp(addr: SocketAddr, payload: &str, outcome: &mut Outcome) {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT);
    outcome.connect_us = Some(start.elapsed().as_micros());
    let mut stream = match stream {
        Ok(s) => s,
        Err(err) => return fail(outcome, &err),
    };
    outcome.peer = stream.peer_addr().ok().map(|p| p.to_string());
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    if let Err(err) = stream.write_all(payload.as_bytes()) {
        return fail(outcome, &err);
    }
    let mut buf = vec![0u8; 4096];
    match stream.read(&mut buf) {
        Ok(n) => {
            outcome.reply = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            outcome.ok = true;
        }
        Err(err) => fail(outcome, &err),
    }
}

fn udp(addr: SocketAddr, payload: &str, connected: bool, outcome: &mut Outcome) {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(addr)
    } else {
        "[::]:0".parse().unwrap_or(addr)
    };
    let socket = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(err) => return fail(outcome, &err),
    };
    let _ = socket.set_read_timeout(Some(TIMEOUT));
    let sent = if connected {
        let start = Instant::now();
        let connected = socket.connect(addr);
        outcome.connect_us = Some(start.elapsed().as_micros());
        if let Err(err) = connected {
            return fail(outcome, &err);
        }
        outcome.peer = socket.peer_addr().ok().map(|p| p.to_string());
        socket.send(payload.as_bytes())
    } else {
        socket.send_to(payload.as_bytes(), addr)
    };
    if let Err(err) = sent {
        return fail(outcome, &err);
    }
    let mut buf = vec![0u8; 4096];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => {
            outcome.reply = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            outcome.reply_from = Some(from.to_string());
            outcome.ok = true;
        }
        Err(err) => fail(outcome, &err),
    }
}

/// One line of `hold` output.
#[derive(Serialize, Default)]
struct HoldEvent {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_us: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eof: Option<bool>,
}

/// Prints one event line and flushes it (the test reads it as it comes).
fn emit(event: &HoldEvent) {
    let line = serde_json::to_string(event).unwrap_or_else(|e| format!("{{\"event\":\"{e}\"}}"));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn failed(err: &std::io::Error) -> HoldEvent {
    HoldEvent {
        event: "failed",
        error: Some(err.to_string()),
        errno: err.raw_os_error(),
        ..HoldEvent::default()
    }
}

/// `hold ADDR SECONDS`: see the module documentation.
fn hold(addr: SocketAddr, seconds: u64) {
    let start = Instant::now();
    let mut stream = match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Ok(stream) => stream,
        Err(err) => return emit(&failed(&err)),
    };
    let connect_us = start.elapsed().as_micros();
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    if let Err(err) = stream.write_all(b"HOLD\n") {
        return emit(&failed(&err));
    }
    let mut buf = vec![0u8; 4096];
    let reply = match stream.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(err) => return emit(&failed(&err)),
    };
    emit(&HoldEvent {
        event: "connected",
        peer: stream.peer_addr().ok().map(|p| p.to_string()),
        local: stream.local_addr().ok().map(|p| p.to_string()),
        reply: Some(reply),
        connect_us: Some(connect_us),
        ..HoldEvent::default()
    });
    wait_until_closed(seconds, |timeout, buf| {
        stream.set_read_timeout(Some(timeout))?;
        stream.read(buf)
    });
}

/// `udp-hold`: a connected UDP socket that sends `HOLD`, prints the reply,
/// then waits in `recv` until the socket fails (the daemon destroyed it).
fn hold_udp(addr: SocketAddr, seconds: u64) {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = match UdpSocket::bind(local).and_then(|s| s.connect(addr).map(|()| s)) {
        Ok(socket) => socket,
        Err(err) => return emit(&failed(&err)),
    };
    let _ = socket.set_read_timeout(Some(TIMEOUT));
    let mut buf = vec![0u8; 4096];
    let reply = match socket.send(b"HOLD").and_then(|_| socket.recv(&mut buf)) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(err) => return emit(&failed(&err)),
    };
    emit(&HoldEvent {
        event: "connected",
        peer: socket.peer_addr().ok().map(|p| p.to_string()),
        local: socket.local_addr().ok().map(|p| p.to_string()),
        reply: Some(reply),
        ..HoldEvent::default()
    });
    wait_until_closed(seconds, |timeout, buf| {
        socket.set_read_timeout(Some(timeout))?;
        socket.recv(buf)
    });
}

/// Reads until the socket fails or hits EOF (prints `closed`) or `seconds`
/// pass (prints `timeout`).
fn wait_until_closed(
    seconds: u64,
    mut read: impl FnMut(Duration, &mut [u8]) -> std::io::Result<usize>,
) {
    let mut buf = vec![0u8; 4096];
    let until = Instant::now() + Duration::from_secs(seconds);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return emit(&HoldEvent {
                event: "timeout",
                ..HoldEvent::default()
            });
        }
        match read(left, &mut buf) {
            Ok(0) => {
                return emit(&HoldEvent {
                    event: "closed",
                    eof: Some(true),
                    ..HoldEvent::default()
                });
            }
            Ok(_) => {}
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => {
                return emit(&HoldEvent {
                    event: "closed",
                    error: Some(err.to_string()),
                    errno: err.raw_os_error(),
                    eof: Some(false),
                    ..HoldEvent::default()
                });
            }
        }
    }
}

/// `storm ADDR RATE DURATION_MS CONNECT_MS ANSWER_MS START_NS`: see the
/// module documentation.
fn storm(addr: SocketAddr, args: &[String]) -> ExitCode {
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let [rate, duration_ms, connect_ms, answer_ms, start_ns] = numbers[..] else {
        eprintln!(
            "usage: lb-test-client storm ADDR RATE DURATION_MS CONNECT_MS ANSWER_MS START_NS"
        );
        return ExitCode::from(2);
    };
    let Ok(rate) = u32::try_from(rate) else {
        eprintln!("storm: rate {rate} is too large");
        return ExitCode::from(2);
    };
    let scenario = lb_tests::failover::Scenario {
        target: addr,
        rate,
        duration: Duration::from_millis(duration_ms),
        connect_timeout: Duration::from_millis(connect_ms),
        answer_timeout: Duration::from_millis(answer_ms),
        kill_after: Duration::ZERO,
        kill: lb_tests::failover::KillMode::Rst,
    };
    let connects = match lb_tests::failover::storm(&scenario, start_ns) {
        Ok(connects) => connects,
        Err(e) => {
            eprintln!("storm {addr}: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for connect in &connects {
        let written = serde_json::to_string(connect)
            .map_err(std::io::Error::other)
            .and_then(|line| writeln!(out, "{line}"));
        if let Err(e) = written {
            eprintln!("storm: writing stdout: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = out.flush() {
        eprintln!("storm: writing stdout: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `connects ADDR CONCURRENCY WARMUP_MS WINDOW_MS`: see the module
/// documentation.
fn connects(addr: SocketAddr, args: &[String]) -> ExitCode {
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let [concurrency, warmup_ms, window_ms] = numbers[..] else {
        eprintln!("usage: lb-test-client connects ADDR CONCURRENCY WARMUP_MS WINDOW_MS");
        return ExitCode::from(2);
    };
    let Ok(concurrency) = usize::try_from(concurrency) else {
        eprintln!("connects: concurrency {concurrency} is too large");
        return ExitCode::from(2);
    };
    let report = match lb_tests::connects::connect_loop(
        addr,
        concurrency,
        Duration::from_millis(warmup_ms),
        Duration::from_millis(window_ms),
    ) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("connects {addr}: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_string(&report)
        .map_err(std::io::Error::other)
        .and_then(|line| writeln!(out, "{line}"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        eprintln!("connects: writing stdout: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(addr)) = (args.first(), args.get(1)) else {
        eprintln!(
            "usage: lb-test-client tcp|tcp-mapped|udp|udp-connected ADDR [PAYLOAD]\n       lb-test-client hold|udp-hold ADDR SECONDS\n       lb-test-client storm ADDR RATE DURATION_MS CONNECT_MS ANSWER_MS START_NS\n       lb-test-client connects ADDR CONCURRENCY WARMUP_MS WINDOW_MS"
        );
        return ExitCode::from(2);
    };
    let Ok(mut addr) = addr.parse::<SocketAddr>() else {
        eprintln!("bad address {addr}");
        return ExitCode::from(2);
    };
    if mode == "storm" {
        return storm(addr, &args[2..]);
    }
    if mode == "connects" {
        return connects(addr, &args[2..]);
    }
    if mode == "hold" || mode == "udp-hold" {
        let Some(Ok(seconds)) = args.get(2).map(|s| s.parse::<u64>()) else {
            eprintln!("usage: lb-test-client hold|udp-hold ADDR SECONDS");
            return ExitCode::from(2);
        };
        if mode == "hold" {
            hold(addr, seconds);
        } else {
            hold_udp(addr, seconds);
        }
        return ExitCode::SUCCESS;
    }
    let payload = args.get(2).map_or("hello\n", String::as_str);
    let mut outcome = Outcome::default();
    match mode.as_str() {
        "tcp" => tcp(addr, payload, &mut outcome),
        "tcp-mapped" => {
            if let SocketAddr::V4(v4) = addr {
                addr = SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port());
            }
            tcp(addr, payload, &mut outcome);
        }
        "udp" => udp(addr, payload, false, &mut outcome),
        "udp-connected" => udp(addr, payload, true, &mut outcome),
        other => {
            eprintln!("unknown mode {other}");
            return ExitCode::from(2);
        }
    }
    match serde_json::to_string(&outcome) {
        Ok(line) => println!("{line}"),
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
