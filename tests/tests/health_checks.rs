//! Health-check scheduling on the real daemon: intervals follow the
//! server's state, and `max_concurrent_checks` bounds the probes in flight
//! across all servers. Observed from the servers' side: each test server
//! counts the requests it gets and the most connections it held at once.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use lb_tests::{TestEnv, service, service_yaml};
use lb_userspace::policy::state_machine::ServerState;

/// How a [`Probed`] server answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `200 ok`.
    Ok,
    /// `503 down`.
    Down,
    /// Accepts and never answers (the probe times out).
    Hang,
}

/// When the servers of one test accepted connections (each probe is one
/// connection).
#[derive(Default)]
struct Load {
    accepted: Mutex<Vec<Instant>>,
}

impl Load {
    /// The most probes that started within any `window`: with probes that
    /// each hold their connection longer than `window`, the most in flight
    /// at once (robust against the few microseconds a server needs to see
    /// a closed connection).
    fn most_started_within(&self, window: Duration) -> usize {
        let mut times = self.accepted.lock().expect("lock").clone();
        times.sort();
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| **t - times[i] < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

/// An HTTP server on `ip:6443` that counts what it gets.
struct Probed {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Probed {
    fn start(ip: Ipv4Addr, answer: Answer, load: &Arc<Load>) -> Self {
        let listener = TcpListener::bind((ip, 6443)).expect("bind test server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (requests2, stop2, load) = (Arc::clone(&requests), Arc::clone(&stop), Arc::clone(load));
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (requests, stop, load) = (
                            Arc::clone(&requests2),
                            Arc::clone(&stop2),
                            Arc::clone(&load),
                        );
                        thread::spawn(move || serve(stream, answer, &requests, &stop, &load));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(
    mut stream: TcpStream,
    answer: Answer,
    requests: &AtomicUsize,
    stop: &AtomicBool,
    load: &Load,
) {
    load.accepted.lock().expect("lock").push(Instant::now());
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 2048];
    // Bounded: the probe closes its side at its timeout; stop ends it too.
    for _ in 0..100 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {
                requests.fetch_add(1, Ordering::SeqCst);
                let reply: &[u8] = match answer {
                    Answer::Ok => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    Answer::Down => {
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown"
                    }
                    Answer::Hang => continue,
                };
                let _ = stream.write_all(reply);
                break;
            }
            Err(_) if stop.load(Ordering::SeqCst) => break,
            Err(_) => {}
        }
    }
}

impl Drop for Probed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn check_intervals_follow_the_server_state() {
    let Some(env) = TestEnv::new("adaptive_intervals") else {
        return;
    };
    let load = Arc::new(Load::default());
    let up = Probed::start(Ipv4Addr::new(127, 0, 0, 11), Answer::Ok, &load);
    // 503: a failing check alone never demotes an unchecked server, so it
    // stays unchecked and is probed at the `other` interval.
    let down = Probed::start(Ipv4Addr::new(127, 0, 0, 12), Answer::Down, &load);
    let check = "{ kind: http, path: /healthz, timeout: 50ms, jitter: 0%, intervals: { recovering: 50ms, preferred: 50ms, other: 1s } }";
    let mut daemon = env.start(&service_yaml(
        "api",
        "127.0.0.1:6444",
        &[up.addr, down.addr],
        None,
        check,
    ));
    daemon.wait_for(Duration::from_secs(5), "up preferred, down checked", |s| {
        let api = service(s, "api");
        api.servers[0].state == ServerState::Preferred && api.servers[1].last_check.is_some()
    });
    let (up_before, down_before) = (up.requests(), down.requests());
    thread::sleep(Duration::from_secs(3));
    let (up_probes, down_probes) = (up.requests() - up_before, down.requests() - down_before);
    eprintln!(
        "in 3 s: preferred server probed {up_probes} times (50 ms), unchecked {down_probes} times (1 s)"
    );
    let status = daemon.status();
    assert_eq!(
        service(&status, "api").servers[1].state,
        ServerState::Unchecked
    );
    // Generous bounds: ~60 vs ~3 expected.
    assert!(
        up_probes >= 15,
        "preferred server probed only {up_probes} times in 3 s"
    );
    assert!(
        (1..=6).contains(&down_probes),
        "unchecked server probed {down_probes} times in 3 s"
    );
}

#[test]
fn max_concurrent_checks_bounds_the_probes_in_flight() {
    // Unbounded (64), the four probes overlap: that is what the limit prevents.
    for (limit, expected) in [(1, 1..=1), (2, 1..=2), (64, 3..=4)] {
        let Some(env) = TestEnv::new("max_concurrent_checks") else {
            return;
        };
        let load = Arc::new(Load::default());
        // Four servers that never answer: every probe holds its connection
        // for the whole timeout, so unbounded probes would overlap.
        let servers: Vec<Probed> = (11..15)
            .map(|octet| Probed::start(Ipv4Addr::new(127, 0, 0, octet), Answer::Hang, &load))
            .collect();
        let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
        let check = "{ kind: http, path: /healthz, timeout: 200ms, interval: 200ms, jitter: 0% }";
        let mut daemon = env.start_with(
            &format!("max_concurrent_checks: {limit}\n"),
            &service_yaml("api", "127.0.0.1:6444", &addrs, None, check),
        );
        daemon.wait_for(Duration::from_secs(10), "every server checked", |s| {
            service(s, "api")
                .servers
                .iter()
                .all(|srv| srv.last_check.is_some())
        });
        // Each probe hangs for its whole 200 ms timeout.
        let most = load.most_started_within(Duration::from_millis(150));
        let probes: usize = servers.iter().map(Probed::requests).sum();
        eprintln!(
            "max_concurrent_checks {limit}: at most {most} probes in flight ({probes} probes)"
        );
        assert!(
            expected.contains(&most),
            "limit {limit}: {most} probes in flight at once, expected {expected:?}"
        );
        let reason = service(&daemon.status(), "api").servers[0]
            .last_check
            .as_ref()
            .map(|c| c.reason.clone())
            .unwrap_or_default();
        assert!(reason.contains("no answer"), "{reason}");
    }
}
