//! When the flow collector removes an XDP flow (`xdp.flow_timeouts`): the
//! pure verdict on one flow, from its two entries' `last_seen` (coarse
//! `CLOCK_MONOTONIC` nanoseconds, 0 = no packet yet) and TCP flag bits, and
//! "now" on the same clock.
//!
//! A whole flow (forward and reply entry) is expired when the later of its
//! two `last_seen` is older than:
//! - `tcp_closing` for TCP when either direction saw a RST or both saw a FIN;
//! - `tcp_unreplied` for TCP when the reply entry never saw a packet;
//! - `tcp` for other TCP flows, `udp` for UDP (and any other protocol).
//!
//! A half whose partner is missing (the kernel's LRU evicted it, or the
//! kernel moved the flow and left it) is an orphan. The collector dates it
//! by the pass that first saw it alone (`lone_since`), so a pair the kernel
//! is creating while the collector walks is never taken for one:
//! - a forward entry without its reply cannot translate the backend's
//!   answers: it goes once it has been alone for [`ORPHAN_GRACE`];
//! - a reply entry without its forward still translates the backend's
//!   answers to the client: it goes after the timeout its own flags give,
//!   counted from the later of its `last_seen` and `lone_since`.
//!
//! Clock edges: a `last_seen` later than "now" (written after the collector
//! read the clock) is age 0; ages saturate, never wrap.
//!
//! Evictions ([`evicted_at_least`]): the kernel does not report the entries
//! its LRU evicts, so they are what the `flow_stats` counts of created and
//! removed entries do not explain once a walk has counted the entries
//! still there.

use std::time::Duration;

use lb_common::{FLOW_FIN, FLOW_RST, PROTO_TCP, flow_stat};

use crate::config::FlowTimeouts;

/// How long a forward entry may be seen without its reply entry before it
/// is removed: longer than it takes the kernel to insert the two entries of
/// a new flow or to move a flow (microseconds), and at most one collector
/// pass (intervals are at least 1 s).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// One entry of a flow as the verdict needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Half {
    /// `FlowValue::last_seen`: coarse monotonic ns of its last packet, 0 = none.
    pub last_seen: u64,
    /// `FlowValue::flags` ([`FLOW_FIN`], [`FLOW_RST`] matter here).
    pub flags: u32,
}

/// What the collector found of one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Both entries.
    Pair {
        /// The client → VIP entry.
        forward: Half,
        /// The backend → SNAT address entry.
        reply: Half,
    },
    /// A forward entry whose reply entry is missing, alone since `lone_since`.
    ForwardOnly {
        /// The entry.
        forward: Half,
        /// When the collector first saw it alone (same clock as `last_seen`).
        lone_since: u64,
    },
    /// A reply entry whose forward entry is missing, alone since `lone_since`.
    ReplyOnly {
        /// The entry.
        reply: Half,
        /// When the collector first saw it alone.
        lone_since: u64,
    },
}

/// Why a flow was removed; the metric label of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// TCP after a RST, or a FIN both ways, idle for `tcp_closing`.
    TcpClosed,
    /// TCP idle for `tcp`.
    TcpIdle,
    /// TCP whose backend never answered, idle for `tcp_unreplied`.
    TcpUnreplied,
    /// UDP idle for `udp`.
    UdpIdle,
    /// One entry without the other.
    Orphan,
}

impl Reason {
    /// Every reason, in metric order.
    pub const ALL: [Self; 5] = [
        Self::TcpClosed,
        Self::TcpIdle,
        Self::TcpUnreplied,
        Self::UdpIdle,
        Self::Orphan,
    ];

    /// The metric and status label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TcpClosed => "tcp_closed",
            Self::TcpIdle => "tcp_idle",
            Self::TcpUnreplied => "tcp_unreplied",
            Self::UdpIdle => "udp_idle",
            Self::Orphan => "orphan",
        }
    }
}

/// Nanoseconds from `then` to `now`, 0 when `then` is later.
const fn age(now: u64, then: u64) -> Duration {
    Duration::from_nanos(now.saturating_sub(then))
}

/// The kind of a flow (the reason it would be removed for) and its timeout.
fn kind(proto: u8, forward: Half, reply: Half, timeouts: &FlowTimeouts) -> (Reason, Duration) {
    if proto != PROTO_TCP {
        return (Reason::UdpIdle, timeouts.udp);
    }
    let rst = (forward.flags | reply.flags) & FLOW_RST != 0;
    let fin_both = forward.flags & reply.flags & FLOW_FIN != 0;
    if rst || fin_both {
        (Reason::TcpClosed, timeouts.tcp_closing)
    } else if reply.last_seen == 0 {
        (Reason::TcpUnreplied, timeouts.tcp_unreplied)
    } else {
        (Reason::TcpIdle, timeouts.tcp)
    }
}

/// Whether `flow` (of IP protocol `proto`) is to be removed at `now`, and why.
pub fn verdict(proto: u8, flow: &Flow, now: u64, timeouts: &FlowTimeouts) -> Option<Reason> {
    match *flow {
        Flow::Pair { forward, reply } => {
            let (reason, timeout) = kind(proto, forward, reply, timeouts);
            let last = forward.last_seen.max(reply.last_seen);
            (age(now, last) > timeout).then_some(reason)
        }
        Flow::ForwardOnly { lone_since, .. } => {
            (age(now, lone_since) >= ORPHAN_GRACE).then_some(Reason::Orphan)
        }
        Flow::ReplyOnly { reply, lone_since } => {
            // The missing forward entry's flags are unknown: only this
            // direction's count (a RST here closes; one FIN does not).
            let (_, timeout) = kind(proto, Half::default(), reply, timeouts);
            let last = reply.last_seen.max(lone_since);
            (age(now, last) > timeout).then_some(Reason::Orphan)
        }
    }
}

/// Whether an entry idle since `last_seen` may belong to a flow that is
/// expired at `now`: if not, the collector need not look up its partner
/// for the timeouts (a whole flow is never older than its newer entry).
pub fn may_be_expired(proto: u8, last_seen: u64, now: u64, timeouts: &FlowTimeouts) -> bool {
    let shortest = if proto == PROTO_TCP {
        timeouts
            .tcp
            .min(timeouts.tcp_closing)
            .min(timeouts.tcp_unreplied)
    } else {
        timeouts.udp
    };
    age(now, last_seen) > shortest
}

/// The `flow_stats` counters summed over CPUs, by [`flow_stat`] index.
pub type FlowTotals = [u64; flow_stat::COUNT as usize];

/// The fewest `flows` entries the LRU can have evicted by the end of a walk
/// of the table that saw `seen` entries, given the counters read just before
/// the walk (`before`) and just after it (`after`).
///
/// Every entry created before the walk started is, when it ends, removed by
/// someone (counted in `after`'s removals), evicted, or still there; and an
/// entry there throughout the walk was seen (a walk of a hash map visits
/// each bucket once, and entries never move between buckets). So at least
/// `created(before) − removed(after) − seen` were evicted; entries created
/// during the walk and seen only lower the bound. Exact on a quiet table;
/// 0 when the difference is negative (it says nothing then).
#[must_use]
pub fn evicted_at_least(before: &FlowTotals, after: &FlowTotals, seen: u64) -> u64 {
    let removed = after[flow_stat::REMOVED_KERNEL as usize]
        .saturating_add(after[flow_stat::REMOVED_COLLECTOR as usize])
        .saturating_add(after[flow_stat::REMOVED_CONTROLLER as usize]);
    before[flow_stat::CREATED as usize]
        .saturating_sub(removed)
        .saturating_sub(seen)
}

#[cfg(test)]
mod tests {
    use lb_common::PROTO_UDP;

    use super::*;

    const S: u64 = 1_000_000_000;

    fn timeouts() -> FlowTimeouts {
        FlowTimeouts {
            tcp: Duration::from_secs(100),
            tcp_closing: Duration::from_secs(10),
            tcp_unreplied: Duration::from_secs(30),
            udp: Duration::from_mins(1),
        }
    }

    fn half(last_seen_s: u64, flags: u32) -> Half {
        Half {
            last_seen: last_seen_s * S,
            flags,
        }
    }

    fn pair(forward: Half, reply: Half) -> Flow {
        Flow::Pair { forward, reply }
    }

    /// The verdict at `now_s` seconds.
    fn at(proto: u8, flow: Flow, now_s: u64) -> Option<Reason> {
        verdict(proto, &flow, now_s * S, &timeouts())
    }

    #[test]
    fn established_tcp_lives_until_the_tcp_timeout_of_its_newer_entry() {
        // Forward last at 1000 s, reply at 1050 s: the reply counts.
        let flow = pair(half(1000, 0), half(1050, 0));
        assert_eq!(at(PROTO_TCP, flow, 1150), None, "exactly the timeout");
        assert_eq!(
            verdict(PROTO_TCP, &flow, 1150 * S + 1, &timeouts()),
            Some(Reason::TcpIdle)
        );
        // Symmetric: the forward entry newer.
        let flow = pair(half(1050, 0), half(1000, 0));
        assert_eq!(at(PROTO_TCP, flow, 1100), None);
        assert_eq!(at(PROTO_TCP, flow, 1151), Some(Reason::TcpIdle));
    }

    #[test]
    fn rst_either_way_or_fin_both_ways_is_closing() {
        for (fwd, reply) in [
            (FLOW_RST, 0),
            (0, FLOW_RST),
            (FLOW_FIN, FLOW_FIN),
            (FLOW_FIN | FLOW_RST, FLOW_FIN),
        ] {
            let flow = pair(half(1000, fwd), half(1000, reply));
            assert_eq!(at(PROTO_TCP, flow, 1010), None, "{fwd} {reply}");
            assert_eq!(
                at(PROTO_TCP, flow, 1011),
                Some(Reason::TcpClosed),
                "{fwd} {reply}"
            );
        }
        // A FIN one way only: still an established (half-closed) flow.
        for (fwd, reply) in [(FLOW_FIN, 0), (0, FLOW_FIN)] {
            let flow = pair(half(1000, fwd), half(1000, reply));
            assert_eq!(at(PROTO_TCP, flow, 1011), None);
            assert_eq!(at(PROTO_TCP, flow, 1101), Some(Reason::TcpIdle));
        }
    }

    #[test]
    fn a_backend_that_never_answered_is_unreplied() {
        let flow = pair(half(1000, 0), Half::default());
        assert_eq!(at(PROTO_TCP, flow, 1030), None);
        assert_eq!(at(PROTO_TCP, flow, 1031), Some(Reason::TcpUnreplied));
        // A RST (the client gave up) makes it closing, which is shorter.
        let flow = pair(half(1000, FLOW_RST), Half::default());
        assert_eq!(at(PROTO_TCP, flow, 1011), Some(Reason::TcpClosed));
    }

    #[test]
    fn udp_and_other_protocols_use_the_udp_timeout_and_ignore_flags() {
        let flow = pair(half(1000, FLOW_RST), Half::default());
        assert_eq!(at(PROTO_UDP, flow, 1060), None);
        assert_eq!(at(PROTO_UDP, flow, 1061), Some(Reason::UdpIdle));
        assert_eq!(at(132, flow, 1061), Some(Reason::UdpIdle));
    }

    #[test]
    fn clock_edges() {
        // last_seen after "now" (written after the clock was read): age 0.
        let flow = pair(half(2000, 0), half(2000, 0));
        assert_eq!(at(PROTO_TCP, flow, 1000), None);
        // now = 0 (a clock just started) and last_seen 0 on both sides.
        assert_eq!(
            at(PROTO_TCP, pair(Half::default(), Half::default()), 0),
            None
        );
        // The largest values do not wrap.
        let max = Half {
            last_seen: u64::MAX,
            flags: 0,
        };
        assert_eq!(verdict(PROTO_TCP, &pair(max, max), 0, &timeouts()), None);
        assert_eq!(
            verdict(
                PROTO_TCP,
                &pair(Half::default(), half(0, 0)),
                u64::MAX,
                &timeouts()
            ),
            Some(Reason::TcpUnreplied)
        );
    }

    #[test]
    fn a_forward_entry_alone_goes_after_the_grace() {
        // However fresh the entry: without its reply it cannot translate
        // the answers.
        let flow = Flow::ForwardOnly {
            forward: half(1000, 0),
            lone_since: 1000 * S,
        };
        assert_eq!(at(PROTO_TCP, flow, 1000), None, "first seen alone now");
        assert_eq!(
            verdict(PROTO_TCP, &flow, 1000 * S + 999_999_999, &timeouts()),
            None
        );
        assert_eq!(at(PROTO_TCP, flow, 1001), Some(Reason::Orphan));
        assert_eq!(at(PROTO_UDP, flow, 1001), Some(Reason::Orphan));
    }

    #[test]
    fn a_reply_entry_alone_goes_after_its_own_timeout() {
        // Replied TCP: the tcp timeout from the later of last_seen and
        // lone_since.
        let flow = Flow::ReplyOnly {
            reply: half(1000, 0),
            lone_since: 1050 * S,
        };
        assert_eq!(at(PROTO_TCP, flow, 1150), None);
        assert_eq!(at(PROTO_TCP, flow, 1151), Some(Reason::Orphan));
        // Never saw a packet (last_seen 0): dated by lone_since, unreplied.
        let flow = Flow::ReplyOnly {
            reply: Half::default(),
            lone_since: 1000 * S,
        };
        assert_eq!(at(PROTO_TCP, flow, 1000), None, "just found alone");
        assert_eq!(at(PROTO_TCP, flow, 1031), Some(Reason::Orphan));
        // A RST in its direction: closing.
        let flow = Flow::ReplyOnly {
            reply: half(1000, FLOW_RST),
            lone_since: 1000 * S,
        };
        assert_eq!(at(PROTO_TCP, flow, 1011), Some(Reason::Orphan));
        // One FIN alone does not close.
        let flow = Flow::ReplyOnly {
            reply: half(1000, FLOW_FIN),
            lone_since: 1000 * S,
        };
        assert_eq!(at(PROTO_TCP, flow, 1011), None);
        // UDP.
        let flow = Flow::ReplyOnly {
            reply: half(1000, 0),
            lone_since: 1000 * S,
        };
        assert_eq!(at(PROTO_UDP, flow, 1060), None);
        assert_eq!(at(PROTO_UDP, flow, 1061), Some(Reason::Orphan));
    }

    #[test]
    fn the_prefilter_never_hides_an_expired_flow() {
        let t = timeouts();
        // Exhaustive over small times and all flag combinations: whenever
        // a pair is expired, both entries pass the prefilter.
        let flags = [0, FLOW_FIN, FLOW_RST, FLOW_FIN | FLOW_RST];
        for proto in [PROTO_TCP, PROTO_UDP] {
            for fwd_seen in [0, 1, 5, 50] {
                for reply_seen in [0, 1, 5, 50] {
                    for &ff in &flags {
                        for &rf in &flags {
                            for now in [0, 11, 31, 61, 101, 200] {
                                let (fwd, reply) = (half(fwd_seen, ff), half(reply_seen, rf));
                                if at(proto, pair(fwd, reply), now).is_some() {
                                    assert!(may_be_expired(proto, fwd.last_seen, now * S, &t));
                                    assert!(may_be_expired(proto, reply.last_seen, now * S, &t));
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(!may_be_expired(PROTO_TCP, 1000 * S, 1010 * S, &t));
        assert!(may_be_expired(PROTO_TCP, 1000 * S, 1011 * S, &t));
        assert!(!may_be_expired(PROTO_UDP, 1000 * S, 1060 * S, &t));
    }

    #[test]
    fn reason_labels() {
        let labels: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "tcp_closed",
                "tcp_idle",
                "tcp_unreplied",
                "udp_idle",
                "orphan"
            ]
        );
    }
    /// Totals with `created` entries created and `removed` removed by the
    /// kernel, the collector and the controller.
    fn totals(created: u64, removed: [u64; 3]) -> FlowTotals {
        let mut t = [0; flow_stat::COUNT as usize];
        t[flow_stat::CREATED as usize] = created;
        t[flow_stat::REMOVED_KERNEL as usize] = removed[0];
        t[flow_stat::REMOVED_COLLECTOR as usize] = removed[1];
        t[flow_stat::REMOVED_CONTROLLER as usize] = removed[2];
        t
    }

    #[test]
    fn evictions_are_what_creations_minus_removals_and_present_entries_leave() {
        // Quiet table: 1000 created, 100 + 50 + 25 removed, 800 there: 25
        // evicted, whoever removed the others.
        let quiet = totals(1000, [100, 50, 25]);
        assert_eq!(evicted_at_least(&quiet, &quiet, 800), 25);
        // Nothing evicted.
        assert_eq!(evicted_at_least(&quiet, &quiet, 825), 0);
        // Entries created during the walk and seen lower the bound, never
        // raise it: created before = 1000, 30 more created and seen.
        let after = totals(1030, [100, 50, 25]);
        assert_eq!(evicted_at_least(&quiet, &after, 830), 0);
        // 10 entries the walk had seen, removed before it ended, count
        // twice (seen and removed): 15, still a lower bound of the 25.
        let after = totals(1000, [110, 50, 25]);
        assert_eq!(evicted_at_least(&quiet, &after, 800), 15);
        // More seen than explained (entries from before the counters
        // existed): 0, not a wrap.
        assert_eq!(evicted_at_least(&quiet, &quiet, 5000), 0);
        assert_eq!(
            evicted_at_least(&totals(0, [0; 3]), &totals(0, [u64::MAX; 3]), 0),
            0
        );
    }
}
