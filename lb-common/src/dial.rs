//! Kernel-observed dials: what the socket hooks and the `sock_ops` program
//! share to see each TCP connect through a VIP succeed or fail, move new
//! connects off a backend that just failed, and tell userspace.
//!
//! The flow, all in the kernel until the last step:
//! 1. `connect()` to a VIP: the socket hook picks the backend as before,
//!    then skips it if it is suspect ([`BackendDial::suspect_since_ns`]),
//!    taking the first usable id of the service's [`Failover`] list (the
//!    controller's K3s order); when every one is suspect it keeps its first
//!    pick (fail open, as the state machine does). It records the dial in
//!    `dials` under the socket cookie ([`DialStart`]).
//! 2. `sock_ops` sees the connect (`TCP_CONNECT_CB`) and asks for state
//!    and RTO callbacks for that socket only; on `ESTABLISHED` it reports a
//!    success with the dial's duration and clears the backend's marks; on
//!    `SYN_SENT → CLOSE` it marks the backend suspect and reports a reset
//!    (no retransmission) or a timeout; on a SYN retransmission it marks
//!    the backend suspect (stalled).
//! 3. A backend with a SYN outstanding for longer than the service's
//!    [`Failover::suspect_after_ns`] and no success since is suspect too:
//!    the next connect notices and reports it ([`dial_kind::STALLED`]),
//!    after checking that the dial it is timing is still outstanding.
//! 4. An established connection is remembered in `conns` (cookie →
//!    backend) and counted in `backend_conns` until it leaves
//!    `ESTABLISHED`: the controller's connection counts for tracked
//!    services, exact and without a `sock_diag` dump.
//! 5. Every outcome goes to userspace through the `dial_events` ring buffer
//!    ([`DialEvent`]); the controller feeds it to the K3s state machine,
//!    rewrites the maps, and clears a backend's mark once it is usable
//!    again.
//!
//! Only services whose [`Failover`] entry has [`failover_flag::TRACK`] take
//! part. UDP has no dial: UDP services stay probe-driven.

/// Capacity of the `dials` LRU map: TCP connects through a VIP whose
/// outcome has not been seen yet.
pub const MAX_DIALS: u32 = 65_536;
/// Capacity of the `conns` hash: established TCP connections through a
/// tracked VIP that the kernel counts (beyond it, new ones are counted as
/// [`BackendConns::untracked`]).
pub const MAX_TRACKED_CONNS: u32 = 65_536;
/// Backend ids in a service's failover list.
pub const MAX_FAILOVER: usize = 8;
/// Size of the `dial_events` ring buffer in bytes (a power of two and a
/// multiple of the page size): successes are written without waking the
/// reader, which drains the ring every few tens of milliseconds, so it
/// holds that long of them (32 768 records of 32 bytes).
pub const DIAL_EVENTS_BYTES: u32 = 1024 * 1024;

/// Value of the `dials` map (key: the socket cookie): one TCP connect the
/// socket hooks sent to a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DialStart {
    /// `bpf_ktime_get_ns()` at `connect()`.
    pub start_ns: u64,
    /// The backend the connect went to.
    pub backend_id: u32,
    /// Its service.
    pub service_id: u32,
}

const _: () = assert!(size_of::<DialStart>() == 16);

/// Value of the `backend_dial` array (index: backend id): what the kernel
/// knows of the backend's recent dials.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendDial {
    /// When a dial to it failed or stalled (`bpf_ktime_get_ns()`); 0: not
    /// suspect. Set by the kernel; cleared by a successful dial or by the
    /// controller once the server is usable again.
    pub suspect_since_ns: u64,
    /// Since when a SYN to it has been waiting with no dial completing; 0:
    /// none waiting (reset by each success or failure). Set when `sock_ops`
    /// sees the SYN go out (`TCP_CONNECT_CB`), not at `connect()`: a connect
    /// that fails before sending one never makes the backend look stalled.
    pub pending_since_ns: u64,
    /// The socket cookie of the dial that set `pending_since_ns`. The
    /// stall check believes `pending_since_ns` only while that dial is
    /// still in `dials`: a dial whose end went unseen (its entry evicted,
    /// or forgotten by the controller before it aborted the connect) must
    /// not leave the backend looking stalled after an idle spell.
    pub pending_cookie: u64,
    /// When the last connect to it was recorded. A backend that got no
    /// connect for longer than the stall bound is idle: its timer restarts
    /// with the next SYN instead of judging a dial from before the idle
    /// spell (whose end may have gone unseen).
    pub last_dial_ns: u64,
}

const _: () = assert!(size_of::<BackendDial>() == 32);

/// Value of the `backend_conns` array (index: backend id): the
/// established TCP connections through a tracked VIP to the backend, as
/// `sock_ops` sees them open and close. One value for all CPUs, changed
/// with atomic adds (a connection opens in one context and closes in
/// another, possibly interrupting each other on one CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendConns {
    /// Connections that reached `ESTABLISHED`, minus those that left it.
    pub established: u64,
    /// Connections established while `conns` was full: not counted (the
    /// count is exact while this stays 0).
    pub untracked: u64,
}

const _: () = assert!(size_of::<BackendConns>() == 16);

/// Value of the `failover` array (index: service id), written by the
/// controller: where new TCP connects go when the backend picked is
/// suspect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failover {
    /// Backend ids in the order the state machine would select them.
    pub backend_ids: [u32; MAX_FAILOVER],
    /// How many of `backend_ids` are set.
    pub count: u32,
    /// [`failover_flag`] bits.
    pub flags: u32,
    /// A backend with a SYN outstanding this long, and no dial completed
    /// since, is suspect; 0 turns this off.
    pub suspect_after_ns: u64,
}

const _: () = assert!(size_of::<Failover>() == 48);

/// [`Failover::flags`] bits.
pub mod failover_flag {
    /// The service's TCP connects are tracked: the connect hooks skip
    /// suspect backends and record each dial for `sock_ops`. Without it
    /// (`dial_tracking: false`, or no entry written yet) connects go where
    /// the service entry says and no dial is seen.
    pub const TRACK: u32 = 1;
}

/// One record of the `dial_events` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DialEvent {
    /// From `connect()` to the outcome (for [`dial_kind::STALLED`]: how
    /// long the oldest SYN has waited, when known; else 0).
    pub duration_ns: u64,
    /// The backend the dial went to.
    pub backend_id: u32,
    /// Its service.
    pub service_id: u32,
    /// One of [`dial_kind`].
    pub kind: u32,
    /// Explicit padding (always zero).
    pub pad: u32,
    /// When the kernel saw the outcome (`bpf_ktime_get_ns()`,
    /// `CLOCK_MONOTONIC`): the controller measures its reaction from here.
    pub at_ns: u64,
}

const _: () = assert!(size_of::<DialEvent>() == 32);

/// [`DialEvent::kind`] values.
pub mod dial_kind {
    /// The connection was established.
    pub const SUCCESS: u32 = 1;
    /// `SYN_SENT → CLOSE` without a retransmission: refused (reset).
    pub const RESET: u32 = 2;
    /// `SYN_SENT → CLOSE` after retransmissions: timed out or aborted.
    pub const TIMEOUT: u32 = 3;
    /// A SYN went unanswered too long (retransmitted, or outstanding past
    /// the service's bound): the backend is suspect, the dial still waits.
    pub const STALLED: u32 = 4;

    /// The label of a kind in logs and metrics.
    pub const fn label(kind: u32) -> &'static str {
        match kind {
            SUCCESS => "success",
            RESET => "reset",
            TIMEOUT => "timeout",
            STALLED => "stalled",
            _ => "unknown",
        }
    }
}
