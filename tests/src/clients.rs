//! Client processes in the test cgroup: what `lb-test-client` prints
//! ([`ClientOutcome`], [`HoldEvent`]) and [`HeldConnection`], a long-lived
//! connection through a VIP that reports when it is closed under it.
//!
//! Clients always run as separate processes inside a [`TestCgroup`], so the
//! cgroup programs see them; a held connection's client is killed on drop.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde::Deserialize;

use crate::env::{TestCgroup, client_bin};

/// What `lb-test-client` printed.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientOutcome {
    /// The exchange completed.
    pub ok: bool,
    /// Error text if not.
    pub error: Option<String>,
    /// errno if not.
    pub errno: Option<i32>,
    /// `connect()` duration in microseconds.
    pub connect_us: Option<u64>,
    /// `getpeername()` of the socket.
    pub peer: Option<String>,
    /// The reply payload.
    pub reply: Option<String>,
    /// `recvfrom()` source address (UDP).
    pub reply_from: Option<String>,
}

/// One line `lb-test-client hold` printed.
#[derive(Debug, Clone, Deserialize)]
pub struct HoldEvent {
    /// `connected`, `closed`, `timeout`, or `failed` (no connection made).
    pub event: String,
    /// `getpeername()` of the socket (`connected`).
    pub peer: Option<String>,
    /// `getsockname()` of the socket (`connected`).
    pub local: Option<String>,
    /// The backend's answer to `HOLD` (`connected`).
    pub reply: Option<String>,
    /// `connect()` duration in microseconds (`connected`).
    pub connect_us: Option<u64>,
    /// Error text (`closed` by an error, `failed`).
    pub error: Option<String>,
    /// errno (`closed` by an error, `failed`).
    pub errno: Option<i32>,
    /// The peer closed the connection in order (`closed`).
    pub eof: Option<bool>,
}

/// A [`HoldEvent`] and when the test process read it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the line was read (monotonic).
    pub at: Instant,
    /// When the line was read (wall clock, comparable with the daemon's
    /// RFC 3339 times).
    pub wall: SystemTime,
    /// What the client printed.
    pub event: HoldEvent,
}

/// A long-lived TCP connection made through a VIP by `lb-test-client hold`
/// running in a test cgroup: it connects, sends `HOLD`, and reports when
/// the connection is closed under it. The client is killed on drop.
pub struct HeldConnection {
    child: Child,
    events: mpsc::Receiver<Received>,
    connected: Received,
    closed: Option<Received>,
}

impl HeldConnection {
    /// How long the client keeps the connection before it gives up on its own.
    pub const SECONDS: u64 = 300;

    /// Connects to `addr` from `cgroup`; panics unless the connection is
    /// made and the backend answered `HOLD` within 5 s.
    pub fn open(cgroup: &TestCgroup, addr: &str) -> Self {
        Self::try_open(cgroup, addr).unwrap_or_else(|event| {
            panic!("hold {addr}: no connection: {event:?}");
        })
    }

    /// Connects to `addr` from `cgroup`; the client's `failed` event if no
    /// connection was made.
    pub fn try_open(cgroup: &TestCgroup, addr: &str) -> Result<Self, Box<HoldEvent>> {
        Self::try_open_mode(cgroup, "hold", addr)
    }

    /// A connected UDP socket to `addr` from `cgroup` that sent `HOLD` and
    /// got the backend's reply; "closed" when a receive fails.
    pub fn open_udp(cgroup: &TestCgroup, addr: &str) -> Self {
        Self::try_open_mode(cgroup, "udp-hold", addr).unwrap_or_else(|event| {
            panic!("udp-hold {addr}: no reply: {event:?}");
        })
    }

    fn try_open_mode(cgroup: &TestCgroup, mode: &str, addr: &str) -> Result<Self, Box<HoldEvent>> {
        let mut child = cgroup.spawn(
            Command::new(client_bin())
                .args([mode, addr, &Self::SECONDS.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, events) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let (at, wall) = (Instant::now(), SystemTime::now());
                let event: HoldEvent = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("lb-test-client hold printed {line:?}: {e}"));
                if sender.send(Received { at, wall, event }).is_err() {
                    return;
                }
            }
        });
        let first = match events.recv_timeout(Duration::from_secs(5)) {
            Ok(first) => first,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("hold {addr}: no first line from lb-test-client within 5 s: {err}");
            }
        };
        if first.event.event != "connected" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Box::new(first.event));
        }
        Ok(Self {
            child,
            events,
            connected: first,
            closed: None,
        })
    }

    /// The `connected` event.
    pub fn connected(&self) -> &Received {
        &self.connected
    }

    /// The backend's reply to `HOLD` (e.g. `node1:HOLD\n`).
    pub fn reply(&self) -> &str {
        self.connected.event.reply.as_deref().unwrap_or_default()
    }

    /// The name of the backend that answered (the reply up to `:`).
    pub fn backend(&self) -> &str {
        self.reply().split(':').next().unwrap_or_default()
    }

    /// Takes the next event, waiting at most `within`.
    fn next(&mut self, within: Duration) -> Option<&Received> {
        if self.closed.is_none() {
            match self.events.recv_timeout(within) {
                Ok(received) => {
                    assert!(
                        received.event.event == "closed",
                        "held connection to {}: unexpected event {:?}",
                        self.backend(),
                        received.event
                    );
                    self.closed = Some(received);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let exit = self.child.try_wait();
                    panic!(
                        "held connection to {}: lb-test-client exited without reporting ({exit:?})",
                        self.backend()
                    );
                }
            }
        }
        self.closed.as_ref()
    }

    /// Waits at most `within` for the connection to be closed under the
    /// client; when (as read by the test) and the errno of the failed read
    /// (`None` for an orderly EOF).
    pub fn wait_closed(&mut self, within: Duration) -> Option<(Instant, Option<i32>)> {
        self.next(within).map(|r| (r.at, r.event.errno))
    }

    /// The `closed` event, once seen.
    pub fn closed_event(&self) -> Option<&Received> {
        self.closed.as_ref()
    }

    /// Panics if the connection is closed within `duration` (or was before).
    pub fn assert_open_for(&mut self, duration: Duration) {
        let backend = self.backend().to_owned();
        let opened = self.connected.at;
        if let Some(closed) = self.next(duration) {
            panic!(
                "held connection to {backend} was closed {:?} after it was opened: {:?}",
                closed.at.duration_since(opened),
                closed.event
            );
        }
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
