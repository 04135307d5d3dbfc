//! Health-check scheduling: one task per (service, server). The wait before
//! each probe depends on the server's state (adaptive intervals) and is
//! jittered so that many servers do not probe in lockstep; probes across all
//! services share a bound on how many run at once. A task asks the
//! controller thread for its next probe and reports each result to it; the
//! probe itself runs on the task, never on the controller thread. A
//! service whose `sui_sync` check compares servers with each other gets its
//! current servers (the pool) with each probe plan.

use std::{
    hash::{BuildHasher as _, RandomState},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use tokio::{sync::Notify, task::AbortHandle};

use super::{
    events::{CheckPlan, Controller, Event},
    runtime::State,
};
use crate::{config::Protocol, policy::state_machine::ServerState};

/// The first check of a new server waits at most this long (plus jitter).
const FIRST_CHECK_SPREAD: Duration = Duration::from_secs(1);

/// A uniform number in `[0, 1)` from the top 32 bits of `bits`.
fn unit(bits: u64) -> f64 {
    f64::from((bits >> 32) as u32) / f64::from(u32::MAX)
}

/// `interval` stretched or shortened by `percent` % × `random` (a uniform
/// number in `[-1, 1]` scaled from `bits`). Pure, for tests.
pub(super) fn jittered(interval: Duration, percent: u8, bits: u64) -> Duration {
    let unit = unit(bits);
    let factor = 1.0 + f64::from(percent) / 100.0 * (2.0 * unit - 1.0);
    interval.mul_f64(factor.max(0.0))
}

/// The wait before a server's first check: spread over up to
/// [`FIRST_CHECK_SPREAD`] (or the jitter share of the interval, if smaller).
pub(super) fn first_wait(interval: Duration, percent: u8, bits: u64) -> Duration {
    let spread = interval
        .mul_f64(f64::from(percent) / 100.0)
        .min(FIRST_CHECK_SPREAD);
    spread.mul_f64(unit(bits))
}

/// Starts the check task of one server (it ends at once when the
/// controller is ending).
pub(super) fn spawn(
    state: &State,
    service: &str,
    server: SocketAddr,
    wake: Arc<Notify>,
) -> AbortHandle {
    let controller = state.handle();
    let service = service.to_owned();
    state
        .runtime
        .spawn(async move {
            if let Some(controller) = controller {
                check_loop(controller, service, server, wake).await;
            }
        })
        .abort_handle()
}

/// Asks the controller for the next probe, waits, probes (holding one of
/// the shared slots) and reports, until the server is gone.
async fn check_loop(
    controller: Controller,
    service: String,
    server: SocketAddr,
    wake: Arc<Notify>,
) {
    let random = RandomState::new();
    let mut round = 0u64;
    loop {
        let bits = random.hash_one((&service, server, round));
        let next = controller
            .ask(|reply| Event::NextCheck {
                service: service.clone(),
                server,
                first: round == 0,
                bits,
                reply,
            })
            .await;
        let Ok(Some(plan)) = next else {
            return;
        };
        round += 1;
        // A failed client dial wakes the task: the probe confirms or clears it.
        tokio::select! {
            () = tokio::time::sleep(plan.wait) => {}
            () = wake.notified() => {}
        }
        let Ok(permit) = plan.slots.acquire_owned().await else {
            return;
        };
        let outcome = plan
            .prober
            .probe_node(
                server,
                plan.timeout,
                plan.dial_probe,
                plan.node.as_ref(),
                &plan.pool,
            )
            .await;
        drop(permit);
        controller
            .tell(Event::Checked {
                service: service.clone(),
                server,
                outcome,
            })
            .await;
    }
}

/// The next probe of `server`, or `None` when it is no longer configured.
pub(super) fn plan(
    state: &State,
    service: &str,
    server: SocketAddr,
    first: bool,
    bits: u64,
) -> Option<CheckPlan> {
    let service = state.services.iter().find(|s| s.config.name == service)?;
    let entry = service.machine.server(server)?;
    let check = &service.config.health_check;
    let interval = check.intervals.for_state(entry.state);
    let wait = if first {
        first_wait(interval, check.jitter_percent, bits)
    } else {
        jittered(interval, check.jitter_percent, bits)
    };
    Some(CheckPlan {
        wait,
        prober: Arc::clone(&service.prober),
        slots: Arc::clone(&state.probe_slots),
        timeout: check.timeout,
        dial_probe: dial_probe(service.config.protocol) && entry.state != ServerState::Invalid,
        node: state
            .discovery
            .server(&service.config.name, server)
            .cloned(),
        pool: if service.prober.uses_pool() {
            service
                .machine
                .servers()
                .iter()
                .map(|entry| entry.address)
                .collect()
        } else {
            Vec::new()
        },
    })
}

/// Whether probes of this service should also report the connect to the
/// server's own address (TCP services).
const fn dial_probe(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_percentage() {
        let interval = Duration::from_secs(10);
        assert_eq!(jittered(interval, 0, u64::MAX), interval);
        assert_eq!(jittered(interval, 10, 0), Duration::from_secs(9));
        assert_eq!(jittered(interval, 10, u64::MAX), Duration::from_secs(11));
        let random = RandomState::new();
        let waits: Vec<_> = (0..1000u64)
            .map(|i| jittered(interval, 20, random.hash_one(i)))
            .collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_secs(8) && *w <= Duration::from_secs(12))
        );
        // Spread out, not in lockstep: both halves of the range are used.
        assert!(waits.iter().any(|w| *w < Duration::from_secs(9)));
        assert!(waits.iter().any(|w| *w > Duration::from_secs(11)));
    }

    #[test]
    fn first_checks_are_spread_over_at_most_a_second() {
        let interval = Duration::from_secs(30);
        assert_eq!(first_wait(interval, 10, 0), Duration::ZERO);
        assert!(first_wait(interval, 50, u64::MAX) <= FIRST_CHECK_SPREAD);
        let short = Duration::from_millis(100);
        assert!(first_wait(short, 10, u64::MAX) <= Duration::from_millis(10));
        assert_eq!(first_wait(short, 0, u64::MAX), Duration::ZERO);
    }
}
