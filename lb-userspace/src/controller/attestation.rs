//! Attestations in the controller: what a check's `nautilus` verdict does
//! to a server (score set or cleared, a forgery fails it at once) and how
//! status shows a verified one.

use std::{
    net::SocketAddr,
    time::{Instant, SystemTime},
};

use tracing::{info, warn};

use super::runtime::ServerRuntime;
use crate::{
    api::status::AttestationStatus,
    health::{CheckOutcome, nautilus::unix_ms},
    metrics::Counters,
    nautilus::attestation::{Rejection, Verified},
    policy::{
        ranking::{Score, StakeWeight},
        state_machine::{Effects, ServiceMachine},
    },
};

/// The label of the rejection in a check's `nautilus` verdict, if any.
pub(super) fn failure(outcome: &CheckOutcome) -> Option<&'static str> {
    outcome
        .attestation
        .as_ref()
        .and_then(|verdict| verdict.result.as_ref().err())
        .map(Rejection::label)
}

/// What [`record`] needs besides the server.
pub(super) struct Context<'a> {
    /// The node's stake in the registry, MIST.
    pub(super) stake_mist: u64,
    pub(super) stake_weight: StakeWeight,
    pub(super) counters: &'a mut Counters,
    pub(super) now: Instant,
}

/// Takes a check's `nautilus` verdict into account: a verified attestation
/// sets the server's score, a rejection clears it and is counted (when
/// fresh) and logged (when its reason changes), and a forgery fails the
/// server at once, unchecked included ([`ServiceMachine::distrust`]). A
/// check without a `nautilus` part clears what an earlier one set. Runs
/// before the outcome replaces `server.last_check`.
pub(super) fn record(
    service: &str,
    address: SocketAddr,
    server: &mut ServerRuntime,
    machine: &mut ServiceMachine,
    outcome: &CheckOutcome,
    context: Context<'_>,
) -> Effects {
    let before = server.last_check.as_ref().and_then(|(o, _)| failure(o));
    let Some(verdict) = &outcome.attestation else {
        server.attestation = None;
        machine.set_score(address, None);
        return Effects::default();
    };
    match &verdict.result {
        Ok(verified) => {
            if before.is_some() {
                info!(service, server = %address, "attestation verified again");
            }
            let score = Score {
                performance: verified.attestation.performance_score,
                reputation: verified.attestation.reputation_score,
                stake_mist: context.stake_mist,
            };
            machine.set_score(address, Some(score.value(context.stake_weight)));
            server.attestation = Some(verified.clone());
            Effects::default()
        }
        Err(rejection) => {
            let label = rejection.label();
            if !verdict.cached {
                context.counters.attestation_failed(service, address, label);
                if before != Some(label) {
                    warn!(service, server = %address, reason = label, detail = %rejection, "attestation rejected; the server fails its nautilus check");
                }
            }
            machine.set_score(address, None);
            if rejection.is_forgery() {
                machine.distrust(address, context.now)
            } else {
                Effects::default()
            }
        }
    }
}

/// How status shows a verified attestation at `now`.
pub(super) fn status(verified: &Verified, now: SystemTime) -> AttestationStatus {
    let attestation = &verified.attestation;
    AttestationStatus {
        performance_score: attestation.performance_score,
        reputation_score: attestation.reputation_score,
        stake_mist: attestation.stake_amount,
        timestamp_ms: verified.timestamp_ms,
        age_seconds: verified.age_seconds(unix_ms(now)),
    }
}
