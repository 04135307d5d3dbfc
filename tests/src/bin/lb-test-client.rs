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
//! ```

use std::{
    io::{Read as _, Write as _},
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(addr)) = (args.first(), args.get(1)) else {
        eprintln!("usage: lb-test-client tcp|tcp-mapped|udp|udp-connected ADDR [PAYLOAD]");
        return ExitCode::from(2);
    };
    let Ok(mut addr) = addr.parse::<SocketAddr>() else {
        eprintln!("bad address {addr}");
        return ExitCode::from(2);
    };
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
