use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use ServerState::{Active, Failed, Healthy, Invalid, Preferred, Recovering, Standby, Unchecked};
use proptest::prelude::*;

use super::*;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, n), 6443))
}

const DEFAULT: u8 = 9;

/// A paused clock: tests move it explicitly.
struct Clock(Instant);

impl Clock {
    fn new() -> Self {
        Self(Instant::now())
    }
    fn now(&self) -> Instant {
        self.0
    }
    fn advance(&mut self, d: Duration) -> Instant {
        self.0 += d;
        self.0
    }
}

fn state(m: &ServiceMachine, n: u8) -> ServerState {
    m.server(addr(n)).map_or(Invalid, |s| s.state)
}

fn selected(m: &ServiceMachine) -> Option<SocketAddr> {
    m.select().server
}

/// Servers 1..=n listed, 9 as default.
fn machine(n: u8, clock: &Clock) -> ServiceMachine {
    let servers: Vec<_> = (1..=n).map(addr).collect();
    ServiceMachine::new(&servers, Some(addr(DEFAULT)), clock.now())
}

/// Drives server `n` to `target` through legal events.
fn drive(m: &mut ServiceMachine, n: u8, target: ServerState, now: Instant) {
    let a = addr(n);
    match target {
        Recovering => {
            let _ = m.check(a, true, now);
        }
        Preferred => {
            let _ = m.check(a, true, now);
            let _ = m.check(a, true, now);
        }
        Active => {
            drive(m, n, Preferred, now);
            let _ = m.dial(a, true, now);
        }
        Failed => {
            let _ = m.dial(a, false, now);
        }
        _ => unreachable!("not a driven state"),
    }
    assert_eq!(state(m, n), target, "driving {a} to {target}");
}

#[test]
fn new_servers_are_unchecked_and_the_unlisted_default_is_standby() {
    let clock = Clock::new();
    let m = machine(2, &clock);
    assert_eq!(state(&m, 1), Unchecked);
    assert_eq!(state(&m, 2), Unchecked);
    assert_eq!(state(&m, DEFAULT), Standby);
    assert!(!m.server(addr(DEFAULT)).unwrap().listed);
    // Unchecked servers rank above the standby default: the first one is used.
    assert_eq!(selected(&m), Some(addr(1)));
}

#[test]
fn success_path_unchecked_recovering_preferred_active() {
    let clock = Clock::new();
    let mut m = machine(1, &clock);
    let e = m.check(addr(1), true, clock.now());
    assert_eq!(
        e.transitions,
        vec![Transition {
            server: addr(1),
            from: Unchecked,
            to: Recovering,
            cause: Cause::CheckPassed
        }]
    );
    let _ = m.check(addr(1), true, clock.now());
    assert_eq!(state(&m, 1), Preferred, "recovering without connections");
    let _ = m.dial(addr(1), true, clock.now());
    assert_eq!(state(&m, 1), Active);
}

#[test]
fn recovering_with_connections_becomes_active_on_a_check() {
    let clock = Clock::new();
    let mut m = machine(1, &clock);
    drive(&mut m, 1, Recovering, clock.now());
    m.set_connections(addr(1), 3);
    let _ = m.check(addr(1), true, clock.now());
    assert_eq!(state(&m, 1), Active);
}

#[test]
fn failed_recovers_by_check_or_dial() {
    let clock = Clock::new();
    let mut m = machine(2, &clock);
    drive(&mut m, 1, Failed, clock.now());
    let _ = m.check(addr(1), true, clock.now());
    assert_eq!(state(&m, 1), Recovering);
    drive(&mut m, 2, Failed, clock.now());
    let _ = m.dial(addr(2), true, clock.now());
    assert_eq!(state(&m, 2), Recovering);
}

#[test]
fn healthy_and_preferred_become_active_only_on_a_dial() {
    let mut clock = Clock::new();
    let mut m = machine(1, &clock);
    drive(&mut m, 1, Preferred, clock.now());
    let _ = m.check(addr(1), true, clock.now());
    assert_eq!(state(&m, 1), Preferred, "a check does not activate");
    let now = clock.advance(PREFERRED_DECAY + Duration::from_secs(1));
    let _ = m.tick(now);
    assert_eq!(state(&m, 1), Healthy);
    let _ = m.check(addr(1), true, now);
    assert_eq!(state(&m, 1), Healthy);
    let _ = m.dial(addr(1), true, now);
    assert_eq!(state(&m, 1), Active);
}

#[test]
fn preferred_decays_to_healthy_after_one_minute_without_a_dial() {
    let mut clock = Clock::new();
    let mut m = machine(1, &clock);
    drive(&mut m, 1, Preferred, clock.now());
    let e = m.tick(clock.advance(PREFERRED_DECAY));
    assert!(e.transitions.is_empty(), "exactly one minute is not more");
    assert_eq!(state(&m, 1), Preferred);
    let e = m.tick(clock.advance(Duration::from_millis(1)));
    assert_eq!(e.transitions[0].cause, Cause::Decayed);
    assert_eq!(state(&m, 1), Healthy);
    assert_eq!(m.server(addr(1)).unwrap().since, clock.now());
    // A passing check after the minute decays too (K3s evaluates it there).
    let mut m = machine(1, &clock);
    drive(&mut m, 1, Preferred, clock.now());
    let _ = m.check(addr(1), true, clock.advance(Duration::from_secs(61)));
    assert_eq!(state(&m, 1), Healthy);
}

#[test]
fn check_failure_alone_does_not_demote_unchecked_or_recovering() {
    let clock = Clock::new();
    let mut m = machine(2, &clock);
    let e = m.check(addr(1), false, clock.now());
    assert_eq!(e, Effects::default());
    assert_eq!(state(&m, 1), Unchecked);
    drive(&mut m, 2, Recovering, clock.now());
    let _ = m.check(addr(2), false, clock.now());
    assert_eq!(state(&m, 2), Recovering);
    // A dial failure does.
    let e = m.dial(addr(1), false, clock.now());
    assert_eq!(state(&m, 1), Failed);
    assert_eq!(e.close, vec![addr(1)]);
    let _ = m.dial(addr(2), false, clock.now());
    assert_eq!(state(&m, 2), Failed);
}

#[test]
fn distrust_fails_any_usable_server_unchecked_included() {
    let clock = Clock::new();
    for target in [Unchecked, Recovering, Preferred, Active] {
        let mut m = machine(2, &clock);
        if target != Unchecked {
            drive(&mut m, 1, target, clock.now());
        }
        m.set_connections(addr(1), 2);
        let e = m.distrust(addr(1), clock.now());
        assert_eq!(state(&m, 1), Failed, "from {target}");
        assert_eq!(e.close, vec![addr(1)]);
        assert_eq!(e.transitions[0].cause, Cause::Untrusted);
        // Already failed: nothing more happens.
        assert_eq!(m.distrust(addr(1), clock.now()), Effects::default());
        // The other server takes the traffic.
        assert_eq!(selected(&m), Some(addr(2)));
    }
    // Standby (the unlisted default) and invalid servers are not usable
    // anyway.
    let mut m = machine(1, &clock);
    assert_eq!(m.distrust(addr(DEFAULT), clock.now()), Effects::default());
    assert_eq!(state(&m, DEFAULT), Standby);
}

#[test]
fn in_use_servers_fail_on_a_check_or_dial_and_lose_their_connections() {
    let clock = Clock::new();
    for (target, by_dial) in [
        (Healthy, false),
        (Preferred, false),
        (Active, false),
        (Active, true),
        (Preferred, true),
    ] {
        let mut m = machine(1, &clock);
        if target == Healthy {
            drive(&mut m, 1, Preferred, clock.now());
            let _ = m.tick(clock.now() + Duration::from_secs(61));
        } else {
            drive(&mut m, 1, target, clock.now());
        }
        assert_eq!(state(&m, 1), target);
        m.set_connections(addr(1), 4);
        let e = if by_dial {
            m.dial(addr(1), false, clock.now())
        } else {
            m.check(addr(1), false, clock.now())
        };
        assert_eq!(state(&m, 1), Failed, "{target} by_dial={by_dial}");
        assert_eq!(e.close, vec![addr(1)]);
    }
}

#[test]
fn failed_stays_failed_and_is_not_closed_again() {
    let clock = Clock::new();
    let mut m = machine(1, &clock);
    drive(&mut m, 1, Failed, clock.now());
    assert_eq!(m.check(addr(1), false, clock.now()), Effects::default());
    assert_eq!(m.dial(addr(1), false, clock.now()), Effects::default());
}

#[test]
fn becoming_active_closes_connections_to_lesser_servers() {
    let clock = Clock::new();
    let mut m = ServiceMachine::new(
        &[addr(1), addr(2), addr(3), addr(4), addr(5)],
        Some(addr(DEFAULT)),
        clock.now(),
    );
    drive(&mut m, 2, Failed, clock.now());
    drive(&mut m, 3, Recovering, clock.now());
    drive(&mut m, 4, Preferred, clock.now());
    let _ = m.tick(clock.now() + Duration::from_secs(61));
    assert_eq!(state(&m, 4), Healthy);
    drive(&mut m, 5, Preferred, clock.now() + Duration::from_secs(61));
    drive(&mut m, 1, Preferred, clock.now());
    let e = m.dial(addr(1), true, clock.now());
    assert_eq!(state(&m, 1), Active);
    let mut closed = e.close.clone();
    closed.sort();
    // failed 2, recovering 3, healthy 4, standby default; not preferred 5.
    assert_eq!(closed, vec![addr(2), addr(3), addr(4), addr(DEFAULT)]);
}

#[test]
fn of_two_active_servers_the_one_with_fewer_connections_yields() {
    let clock = Clock::new();
    let mut m = machine(2, &clock);
    drive(&mut m, 1, Active, clock.now());
    m.set_connections(addr(1), 5);
    drive(&mut m, 2, Recovering, clock.now());
    m.set_connections(addr(2), 2);
    let e = m.check(addr(2), true, clock.now());
    assert_eq!(
        state(&m, 2),
        Preferred,
        "fewer connections: the new one yields"
    );
    assert_eq!(state(&m, 1), Active);
    assert!(e.close.contains(&addr(2)));
    assert!(
        e.transitions
            .iter()
            .any(|t| t.server == addr(2) && t.cause == Cause::Yielded)
    );

    let mut m = machine(2, &clock);
    drive(&mut m, 1, Active, clock.now());
    m.set_connections(addr(1), 1);
    drive(&mut m, 2, Recovering, clock.now());
    m.set_connections(addr(2), 7);
    let e = m.check(addr(2), true, clock.now());
    assert_eq!(state(&m, 2), Active);
    assert_eq!(state(&m, 1), Preferred, "the old one has fewer: it yields");
    assert_eq!(e.close, vec![addr(1), addr(DEFAULT)]);
}

#[test]
fn without_exclusivity_several_servers_are_active_and_promotions_close_nothing() {
    let clock = Clock::new();
    let mut m = machine(3, &clock);
    m.set_exclusive(false);
    drive(&mut m, 3, Failed, clock.now());
    m.set_connections(addr(3), 2);
    drive(&mut m, 1, Active, clock.now());
    m.set_connections(addr(1), 5);
    drive(&mut m, 2, Preferred, clock.now());
    let e = m.dial(addr(2), true, clock.now());
    assert_eq!((state(&m, 1), state(&m, 2)), (Active, Active));
    assert!(e.close.is_empty(), "{e:?}");
    // Failures still close.
    let e = m.check(addr(1), false, clock.now());
    assert_eq!(e.close, vec![addr(1)]);
}

#[test]
fn reaching_preferred_closes_connections_to_the_default_and_failed_servers() {
    let clock = Clock::new();
    let mut m = machine(2, &clock);
    drive(&mut m, 1, Failed, clock.now());
    drive(&mut m, 2, Failed, clock.now());
    assert_eq!(selected(&m), Some(addr(DEFAULT)));
    m.set_connections(addr(DEFAULT), 3);
    m.set_connections(addr(2), 1);
    let _ = m.check(addr(1), true, clock.now());
    assert_eq!(selected(&m), Some(addr(1)), "recovering beats the default");
    let e = m.check(addr(1), true, clock.now());
    assert_eq!(state(&m, 1), Preferred);
    let mut closed = e.close;
    closed.sort();
    assert_eq!(closed, vec![addr(2), addr(DEFAULT)]);
}

#[test]
fn removed_servers_become_invalid_are_closed_and_forgotten() {
    let clock = Clock::new();
    let mut m = machine(3, &clock);
    drive(&mut m, 2, Active, clock.now());
    let e = m.set_servers(&[addr(1), addr(3), addr(4)], clock.now());
    assert_eq!(e.close, vec![addr(2)]);
    assert!(e.transitions.contains(&Transition {
        server: addr(2),
        from: Active,
        to: Invalid,
        cause: Cause::Removed
    }));
    assert!(e.transitions.contains(&Transition {
        server: addr(4),
        from: Invalid,
        to: Unchecked,
        cause: Cause::Added
    }));
    assert!(m.server(addr(2)).is_none());
    assert_eq!(m.listed(), vec![addr(1), addr(3), addr(4)]);
    assert_ne!(selected(&m), Some(addr(2)));
}

#[test]
fn kept_servers_keep_their_state_and_take_the_new_order() {
    let clock = Clock::new();
    let mut m = machine(3, &clock);
    drive(&mut m, 3, Preferred, clock.now());
    let e = m.set_servers(&[addr(3), addr(1), addr(2)], clock.now());
    assert_eq!(e, Effects::default());
    assert_eq!(state(&m, 3), Preferred);
    assert_eq!(m.listed(), vec![addr(3), addr(1), addr(2)]);
}

#[test]
fn the_default_joins_and_leaves_the_list() {
    let clock = Clock::new();
    let mut m = machine(1, &clock);
    let _ = m.set_servers(&[addr(1), addr(DEFAULT)], clock.now());
    assert_eq!(state(&m, DEFAULT), Unchecked);
    assert!(m.server(addr(DEFAULT)).unwrap().listed);
    drive(&mut m, DEFAULT, Active, clock.now());
    let e = m.set_servers(&[addr(1)], clock.now());
    assert_eq!(
        state(&m, DEFAULT),
        Standby,
        "a removed default returns to standby"
    );
    assert_eq!(e.close, vec![addr(DEFAULT)]);
    assert!(!m.server(addr(DEFAULT)).unwrap().listed);
}

#[test]
fn switching_the_default_forgets_the_old_unlisted_one() {
    let clock = Clock::new();
    let mut m = machine(1, &clock);
    let e = m.set_default(Some(addr(8)), clock.now());
    assert_eq!(e.close, vec![addr(DEFAULT)]);
    assert!(m.server(addr(DEFAULT)).is_none());
    assert_eq!(state(&m, 8), Standby);
    assert_eq!(m.default_server(), Some(addr(8)));
    // A listed server made default keeps its state.
    drive(&mut m, 1, Preferred, clock.now());
    let _ = m.set_default(Some(addr(1)), clock.now());
    assert_eq!(state(&m, 1), Preferred);
    assert!(m.server(addr(8)).is_none());
    let _ = m.set_default(None, clock.now());
    assert_eq!(m.servers().len(), 1);
}

#[test]
fn fallback_goes_to_the_default_then_fails_open() {
    let clock = Clock::new();
    let mut m = machine(2, &clock);
    drive(&mut m, 1, Failed, clock.now());
    drive(&mut m, 2, Failed, clock.now());
    assert_eq!(
        m.select(),
        Selection {
            server: Some(addr(DEFAULT)),
            fail_open: false
        }
    );
    let _ = m.check(addr(DEFAULT), false, clock.now());
    assert_eq!(state(&m, DEFAULT), Standby, "checks do not move standby");
    m.set_connections(addr(2), 1);
    assert_eq!(
        m.select(),
        Selection {
            server: Some(addr(2)),
            fail_open: true
        },
        "best-ranked failed server: more connections"
    );
    // Without listed servers the failing default is still used.
    let mut m = ServiceMachine::new(&[], Some(addr(DEFAULT)), clock.now());
    let _ = m.check(addr(DEFAULT), false, clock.now());
    assert_eq!(
        m.select(),
        Selection {
            server: Some(addr(DEFAULT)),
            fail_open: true
        }
    );
    // And a lone failing server without default too (K3s #10240).
    let mut m = ServiceMachine::new(&[addr(1)], None, clock.now());
    drive(&mut m, 1, Failed, clock.now());
    assert_eq!(
        m.select(),
        Selection {
            server: Some(addr(1)),
            fail_open: true
        }
    );
    let empty = ServiceMachine::new(&[], None, clock.now());
    assert_eq!(
        empty.select(),
        Selection {
            server: None,
            fail_open: false
        }
    );
}

#[test]
fn fails_back_to_a_recovered_server() {
    let clock = Clock::new();
    let mut m = machine(1, &clock);
    drive(&mut m, 1, Active, clock.now());
    let _ = m.check(addr(1), false, clock.now());
    assert_eq!(selected(&m), Some(addr(DEFAULT)));
    let _ = m.check(addr(1), true, clock.now());
    assert_eq!(state(&m, 1), Recovering);
    assert_eq!(selected(&m), Some(addr(1)), "K3s #11311: fail back");
}

#[test]
fn selection_order_is_state_then_score_then_connections_then_list_order() {
    let clock = Clock::new();
    let mut m = machine(3, &clock);
    for n in 1..=3 {
        drive(&mut m, n, Preferred, clock.now());
    }
    assert_eq!(selected(&m), Some(addr(1)), "list order breaks ties");
    m.set_connections(addr(3), 2);
    assert_eq!(selected(&m), Some(addr(3)), "more connections wins");
    m.set_score(addr(2), Some(10));
    assert_eq!(
        selected(&m),
        Some(addr(3)),
        "scores ignored while ranking is off"
    );
    m.set_ranking(true);
    assert_eq!(selected(&m), Some(addr(2)), "score beats connections");
    let _ = m.dial(addr(1), true, clock.now());
    assert_eq!(selected(&m), Some(addr(1)), "state beats score");
    // A second dial elsewhere: the other active server yields.
    let _ = m.dial(addr(2), true, clock.now());
    assert_eq!(
        state(&m, 1),
        Preferred,
        "addr(2) active took over: addr(1) yields"
    );
    let _ = m.dial(addr(1), true, clock.now());
    let order: Vec<_> = m.ranked().iter().map(|s| s.address).collect();
    assert_eq!(order, vec![addr(1), addr(2), addr(3), addr(DEFAULT)]);
}

// ---- properties over random event sequences ----

#[derive(Debug, Clone)]
enum Event {
    Check(u8, bool),
    Dial(u8, bool),
    Connections(u8, u32),
    Advance(u64),
    SetServers(Vec<u8>),
    SetDefault(Option<u8>),
    Score(u8, Option<u64>),
}

fn event() -> impl Strategy<Value = Event> {
    let server = 1u8..=6;
    prop_oneof![
        4 => (server.clone(), any::<bool>()).prop_map(|(s, ok)| Event::Check(s, ok)),
        4 => (server.clone(), any::<bool>()).prop_map(|(s, ok)| Event::Dial(s, ok)),
        2 => (server.clone(), 0u32..5).prop_map(|(s, c)| Event::Connections(s, c)),
        1 => (0u64..90_000).prop_map(Event::Advance),
        1 => proptest::collection::vec(1u8..=6, 0..5).prop_map(Event::SetServers),
        1 => proptest::option::of(1u8..=6).prop_map(Event::SetDefault),
        1 => (server, proptest::option::of(0u64..4)).prop_map(|(s, v)| Event::Score(s, v)),
    ]
}

fn apply(m: &mut ServiceMachine, event: &Event, now: &mut Instant) -> Effects {
    match *event {
        Event::Check(s, ok) => m.check(addr(s), ok, *now),
        Event::Dial(s, ok) => m.dial(addr(s), ok, *now),
        Event::Connections(s, c) => {
            m.set_connections(addr(s), c);
            Effects::default()
        }
        Event::Advance(ms) => {
            *now += Duration::from_millis(ms);
            m.tick(*now)
        }
        Event::SetServers(ref list) => {
            let list: Vec<_> = list.iter().copied().map(addr).collect();
            m.set_servers(&list, *now)
        }
        Event::SetDefault(d) => m.set_default(d.map(addr), *now),
        Event::Score(s, v) => {
            m.set_score(addr(s), v);
            Effects::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn invariants_hold_over_random_event_sequences(
        initial in proptest::collection::vec(1u8..=6, 0..4),
        default in proptest::option::of(1u8..=6),
        ranking in any::<bool>(),
        exclusive in any::<bool>(),
        events in proptest::collection::vec(event(), 0..60),
    ) {
        let mut now = Instant::now();
        let initial: Vec<_> = initial.into_iter().map(addr).collect();
        let mut m = ServiceMachine::new(&initial, default.map(addr), now);
        m.set_ranking(ranking);
        m.set_exclusive(exclusive);
        let mut current = m.select().server;
        for event in &events {
            let effects = apply(&mut m, event, &mut now);
            // Hysteresis: where the kept selection differs from the
            // best-ranked one, it is a listed server above failed (the
            // previous selection, or one strictly better than it).
            let kept = m.select_from(current);
            if kept.server != m.select().server {
                let kept = m.server(kept.server.expect("kept a server")).expect("known");
                prop_assert!(kept.listed && kept.state > Failed, "{:?}", m);
            }
            current = kept.server;
            for t in &effects.transitions {
                prop_assert_ne!(t.from, t.to, "{:?}", event);
            }
            // At most one active server.
            let active = m.servers().iter().filter(|s| s.state == Active).count();
            prop_assert!(!exclusive || active <= 1, "{} active after {:?}: {:?}", active, event, m);
            // Never zero candidates while any server is configured.
            let configured = !m.servers().is_empty();
            let selection = m.select();
            prop_assert_eq!(selection.server.is_some(), configured, "{:?}", m);
            if let Some(chosen) = selection.server {
                let chosen = m.server(chosen).expect("selected server is known");
                prop_assert_ne!(chosen.state, Invalid);
                // A failed server is never selected while a better one exists.
                if chosen.state == Failed {
                    prop_assert!(
                        !m.servers().iter().any(|s| s.listed && s.state > Failed),
                        "failed {} selected over a better server: {:?}", chosen.address, m
                    );
                    let default_usable = m.default_server().and_then(|d| m.server(d))
                        .is_some_and(|d| !d.listed && d.last_check_ok != Some(false));
                    prop_assert!(!default_usable, "failed server chosen over a usable default: {:?}", m);
                    prop_assert!(selection.fail_open);
                }
                // The best listed server above failed is the one selected.
                if let Some(best) = m.ranked().into_iter().find(|s| s.listed && s.state > Failed) {
                    prop_assert_eq!(chosen.address, best.address);
                }
            }
            // Invalid servers are forgotten, never kept.
            prop_assert!(m.servers().iter().all(|s| s.state != Invalid));
            // Unlisted servers are exactly the default.
            for s in m.servers() {
                if !s.listed {
                    prop_assert_eq!(Some(s.address), m.default_server());
                    prop_assert_eq!(s.state, Standby);
                }
            }
        }
    }
}

/// The kernel's failover list: usable listed servers best first, then the
/// default, then failed servers (fail open); the first entry is what
/// `select` picks while a usable server exists.
#[test]
fn candidates_follow_the_dial_order() {
    let clock = Clock::new();
    let mut m = machine(3, &clock);
    drive(&mut m, 1, Failed, clock.now());
    drive(&mut m, 2, Active, clock.now());
    drive(&mut m, 3, Preferred, clock.now());
    assert_eq!(m.candidates(), [addr(2), addr(3), addr(DEFAULT), addr(1)]);
    assert_eq!(m.candidates().first().copied(), selected(&m));
    // Removed servers are never candidates.
    let _ = m.set_servers(&[addr(1), addr(3)], clock.now());
    assert!(!m.candidates().contains(&addr(2)));
    assert_eq!(m.candidates(), [addr(3), addr(DEFAULT), addr(1)]);
}

/// Counts how often the selection moves over `steps`, each step applying
/// events and then asking for the selection: `keep` uses
/// [`ServiceMachine::select_from`] with the previous selection (what the
/// controller does), otherwise the stateless [`ServiceMachine::select`].
fn selection_changes(
    m: &mut ServiceMachine,
    steps: &[(Duration, u8)],
    clock: &mut Clock,
    keep: bool,
) -> usize {
    let mut current = m.select().server;
    let mut changes = 0;
    for &(after, server) in steps {
        let now = clock.advance(after);
        let _ = m.tick(now);
        let _ = m.check(addr(server), true, now);
        let next = if keep {
            m.select_from(current)
        } else {
            m.select()
        };
        if next.server != current {
            changes += 1;
            current = next.server;
        }
    }
    changes
}

/// Three servers checked every second, their first checks passing in the
/// order 2, 1, 3 (jitter): server 2 recovers first and takes the unchecked
/// selection, server 1 passing hands it back (nobody uses it yet, so list
/// order decides, as K3s dials equal servers), and then it stays while the
/// rest catch up: one change per real state change. Without the tiers the
/// selection went 1 → 2 → 1 → 2 → 1 (recovering, preferred and list order
/// each won a round).
#[test]
fn startup_checks_move_the_selection_at_most_twice() {
    let steps: Vec<(Duration, u8)> = (0..3)
        .flat_map(|_| {
            [
                (Duration::from_millis(100), 2),
                (Duration::from_millis(300), 1),
                (Duration::from_millis(600), 3),
            ]
        })
        .collect();
    for (keep, expected) in [(true, 2), (false, 4)] {
        let mut clock = Clock::new();
        let mut m = machine(3, &clock);
        assert_eq!(selected(&m), Some(addr(1)));
        let changes = selection_changes(&mut m, &steps, &mut clock, keep);
        assert_eq!(changes, expected, "keep {keep}: {m:?}");
        if keep {
            // Nobody uses server 2: the selection settles on list order.
            assert_eq!(m.select_from(Some(addr(2))).server, Some(addr(1)));
            // In use, it keeps the selection against equal servers.
            m.set_connections(addr(2), 1);
            assert_eq!(m.select_from(Some(addr(2))).server, Some(addr(2)));
            m.set_connections(addr(2), 0);
        }
        assert!(
            [1, 2, 3].iter().all(|&n| state(&m, n) == Preferred),
            "{m:?}"
        );
    }
}

/// Preferred servers that are never dialed decay to healthy a minute
/// later, each at its own next check: the selected one decays first and
/// keeps the selection (healthy and preferred are one tier), where the
/// stateless ranking handed it to a still-preferred server and back.
#[test]
fn decay_does_not_move_the_selection() {
    // Startup as above, then a minute of checks in the same order.
    let steps: Vec<(Duration, u8)> = (0..70)
        .flat_map(|_| {
            [
                (Duration::from_millis(100), 2),
                (Duration::from_millis(300), 1),
                (Duration::from_millis(600), 3),
            ]
        })
        .collect();
    for (keep, expected) in [(true, 2), (false, 6)] {
        let mut clock = Clock::new();
        let mut m = machine(3, &clock);
        let changes = selection_changes(&mut m, &steps, &mut clock, keep);
        assert!([1, 2, 3].iter().all(|&n| state(&m, n) == Healthy), "{m:?}");
        assert_eq!(changes, expected, "keep {keep}: {m:?}");
    }
}

/// What does move a kept selection: a better state, a higher score with
/// ranking on, the selected server failing or leaving the list. What does
/// not: connections, list order, an equal or lower score.
#[test]
fn only_a_strictly_better_server_takes_the_selection() {
    let clock = Clock::new();
    let now = clock.now();
    let mut m = machine(3, &clock);
    m.set_ranking(true);
    drive(&mut m, 2, Preferred, now);
    drive(&mut m, 1, Preferred, now);
    let current = Some(addr(2));
    // Nobody uses it: list order among equals.
    assert_eq!(m.select_from(current).server, Some(addr(1)));
    // In use (one connection): kept.
    m.set_connections(addr(2), 1);
    assert_eq!(m.select_from(current).server, current);
    // More connections on another server: kept.
    m.set_connections(addr(1), 5);
    assert_eq!(m.select_from(current).server, current);
    assert_eq!(
        selected(&m),
        Some(addr(1)),
        "ranked: connections break ties"
    );
    // Equal scores: kept; a lower one for the challenger: kept.
    m.set_score(addr(1), Some(100));
    m.set_score(addr(2), Some(100));
    assert_eq!(m.select_from(current).server, current);
    m.set_score(addr(1), Some(99));
    assert_eq!(m.select_from(current).server, current);
    // A higher score takes it.
    m.set_score(addr(1), Some(101));
    assert_eq!(m.select_from(current).server, Some(addr(1)));
    // Ranking off: scores do not count.
    m.set_ranking(false);
    assert_eq!(m.select_from(current).server, current);
    // A better state takes it: server 3 dialed (active).
    drive(&mut m, 3, Active, now);
    assert_eq!(m.select_from(current).server, Some(addr(3)));
    // The selected server failing moves it to the best of the rest.
    let current = Some(addr(3));
    let _ = m.dial(addr(3), false, now);
    assert_eq!(m.select_from(current).server, Some(addr(1)));
    // A removed selection moves too.
    let _ = m.set_servers(&[addr(2), addr(3)], now);
    assert_eq!(m.select_from(Some(addr(1))).server, Some(addr(2)));
    // A default in standby is never kept over a usable listed server.
    assert_eq!(m.select_from(Some(addr(DEFAULT))).server, Some(addr(2)));
}

/// A recovering selection whose last check passed is as good as a
/// preferred server: a server reaching preferred one check earlier does not
/// take it (the demo's jittered checks did that at startup); a failing
/// check, which leaves a recovering server recovering, lets it go.
#[test]
fn a_recovering_selection_with_a_passing_check_keeps_it() {
    let clock = Clock::new();
    let now = clock.now();
    let mut m = machine(3, &clock);
    let _ = m.check(addr(2), true, now);
    let current = m.select_from(Some(addr(1))).server;
    assert_eq!(current, Some(addr(2)), "recovering beats unchecked");
    // Clients took it (e.g. connections adopted after a restart).
    m.set_connections(addr(2), 1);
    drive(&mut m, 1, Preferred, now);
    assert_eq!(m.select_from(current).server, current);
    assert_eq!(selected(&m), Some(addr(1)), "ranked: preferred first");
    // A failing check does not demote a recovering server, but it no
    // longer holds the selection against a preferred one.
    let _ = m.check(addr(2), false, now);
    assert_eq!(state(&m, 2), Recovering);
    assert_eq!(m.select_from(current).server, Some(addr(1)));
    // Against an active server it never holds.
    m.set_connections(addr(2), 0);
    let _ = m.check(addr(2), true, now);
    assert_eq!(state(&m, 2), Preferred);
    let _ = m.dial(addr(3), true, now);
    let _ = m.check(addr(3), true, now);
    let _ = m.check(addr(3), true, now);
    let _ = m.dial(addr(3), true, now);
    assert_eq!(state(&m, 3), Active);
    assert_eq!(m.select_from(Some(addr(2))).server, Some(addr(3)));
}
