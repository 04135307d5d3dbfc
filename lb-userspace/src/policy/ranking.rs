//! Performance ranking (`features.performance_ranking`): one number per
//! server from its attested scores and its stake, and the Maglev weights of
//! a spread service derived from those numbers.
//!
//! A pure module: no I/O, no clock.
//!
//! # Score
//!
//! ```text
//! score = P × R × W(stake)
//! ```
//!
//! - `P`, `R`: the performance and reputation scores in basis points,
//!   `0..=10000` (larger values count as 10000);
//! - `W`, chosen by `features.stake_weight` ([`StakeWeight`]), from the stake
//!   in MIST (10⁻⁹ SUI):
//!   - `linear`: `⌊stake / 10⁹⌋`, the stake in whole SUI;
//!   - `sqrt` (the default): `⌊√stake⌋`;
//!   - `log`: `⌊log₂(stake + 1)⌋`.
//!
//! Higher is better; a server with no stake or a zero score scores 0. The
//! product never overflows `u64`: `P × R ≤ 10⁸` and `W ≤ 1.9 × 10¹⁰`.
//!
//! # Use
//!
//! The state machine ranks servers by state, then score, then connections
//! ([`crate::policy::state_machine`]); an unscored server ranks below every scored
//! one. A spread service gives each server Maglev slots in proportion to
//! its score ([`maglev_weights`]).

pub use crate::config::{MAX_BASIS_POINTS, MIST_PER_SUI, StakeWeight};

/// The Maglev weight of the best-scored server; the others get their score's
/// share of it, in percent (at least 1).
pub const MAX_MAGLEV_WEIGHT: u32 = 100;

impl StakeWeight {
    /// `W(stake)`; see the module documentation.
    pub const fn weight(self, stake_mist: u64) -> u64 {
        match self {
            Self::Linear => stake_mist / MIST_PER_SUI,
            Self::Sqrt => stake_mist.isqrt(),
            Self::Log => match stake_mist.checked_add(1) {
                Some(n) => n.ilog2() as u64,
                None => u64::BITS as u64,
            },
        }
    }
}

/// What a server's attestation says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Score {
    /// Performance in basis points (`0..=10000`).
    pub performance: u64,
    /// Reputation in basis points (`0..=10000`).
    pub reputation: u64,
    /// Stake in MIST.
    pub stake_mist: u64,
}

impl Score {
    /// `P × R × W(stake)`; see the module documentation.
    pub const fn value(&self, stake_weight: StakeWeight) -> u64 {
        let performance = if self.performance < MAX_BASIS_POINTS {
            self.performance
        } else {
            MAX_BASIS_POINTS
        };
        let reputation = if self.reputation < MAX_BASIS_POINTS {
            self.reputation
        } else {
            MAX_BASIS_POINTS
        };
        (performance * reputation).saturating_mul(stake_weight.weight(self.stake_mist))
    }
}

/// The Maglev weights of servers with these scores (same order).
///
/// While no server has a score above 0 every weight is 1 (equal shares, as
/// without ranking). Otherwise the best server gets [`MAX_MAGLEV_WEIGHT`]
/// and each other its score's share of the best, rounded to the nearest
/// percent; unscored servers and those below ½ % get 1, so ranking alone
/// never drains a server (its state decides that).
pub fn maglev_weights(scores: &[Option<u64>]) -> Vec<u32> {
    let best = scores.iter().flatten().copied().max().unwrap_or(0);
    if best == 0 {
        return vec![1; scores.len()];
    }
    scores
        .iter()
        .map(|score| {
            let Some(score) = *score else { return 1 };
            let share = (u128::from(score) * u128::from(MAX_MAGLEV_WEIGHT) + u128::from(best) / 2)
                / u128::from(best);
            // `share ≤ MAX_MAGLEV_WEIGHT` since `score ≤ best`.
            u32::try_from(share).unwrap_or(MAX_MAGLEV_WEIGHT).max(1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Instant};

    use super::*;
    use crate::policy::{
        maglev::{self, MaglevBackend},
        state_machine::{ServerState, ServiceMachine},
    };

    const SUI: u64 = MIST_PER_SUI;

    fn score(performance: u64, reputation: u64, stake_mist: u64) -> Score {
        Score {
            performance,
            reputation,
            stake_mist,
        }
    }

    #[test]
    fn stake_weights_follow_the_documented_formulas() {
        assert_eq!(StakeWeight::Linear.weight(0), 0);
        assert_eq!(StakeWeight::Linear.weight(SUI - 1), 0);
        assert_eq!(StakeWeight::Linear.weight(25 * SUI + 7), 25);
        assert_eq!(StakeWeight::Sqrt.weight(0), 0);
        assert_eq!(StakeWeight::Sqrt.weight(99), 9);
        assert_eq!(StakeWeight::Sqrt.weight(100), 10);
        assert_eq!(StakeWeight::Sqrt.weight(u64::MAX), 4_294_967_295);
        assert_eq!(StakeWeight::Log.weight(0), 0);
        assert_eq!(StakeWeight::Log.weight(1), 1);
        assert_eq!(StakeWeight::Log.weight(2), 1);
        assert_eq!(StakeWeight::Log.weight(3), 2);
        assert_eq!(StakeWeight::Log.weight(SUI), 29);
        assert_eq!(StakeWeight::Log.weight(u64::MAX), 64);
    }

    #[test]
    fn stake_weight_words_and_default() {
        assert_eq!(StakeWeight::default(), StakeWeight::Sqrt);
        for w in [StakeWeight::Linear, StakeWeight::Sqrt, StakeWeight::Log] {
            assert_eq!(w.as_str().parse::<StakeWeight>(), Ok(w));
            assert_eq!(serde_json::to_value(w).unwrap(), w.as_str());
        }
        let err = "cubic".parse::<StakeWeight>().unwrap_err();
        assert!(err.contains("linear, sqrt or log"), "{err}");
    }

    #[test]
    fn score_is_performance_times_reputation_times_stake_weight() {
        let s = score(9_000, 5_000, 400 * SUI);
        assert_eq!(s.value(StakeWeight::Linear), 9_000 * 5_000 * 400);
        assert_eq!(s.value(StakeWeight::Sqrt), 9_000 * 5_000 * 632_455);
        assert_eq!(s.value(StakeWeight::Log), 9_000 * 5_000 * 38);
        // Basis points are capped at 100 %.
        assert_eq!(
            score(20_000, 10_001, 4).value(StakeWeight::Sqrt),
            10_000 * 10_000 * 2
        );
        // No stake or a zero score: 0.
        assert_eq!(score(10_000, 10_000, 0).value(StakeWeight::Log), 0);
        assert_eq!(score(0, 10_000, SUI).value(StakeWeight::Sqrt), 0);
    }

    #[test]
    fn score_never_overflows() {
        let max = score(u64::MAX, u64::MAX, u64::MAX);
        assert_eq!(
            max.value(StakeWeight::Linear),
            100_000_000 * (u64::MAX / SUI)
        );
        assert_eq!(max.value(StakeWeight::Sqrt), 100_000_000 * 4_294_967_295);
        assert_eq!(max.value(StakeWeight::Log), 100_000_000 * 64);
    }

    #[test]
    fn weights_are_percent_of_the_best() {
        assert_eq!(
            maglev_weights(&[Some(1_000), Some(500), Some(333), Some(4), Some(0), None]),
            [100, 50, 33, 1, 1, 1]
        );
        assert_eq!(
            maglev_weights(&[Some(u64::MAX), Some(u64::MAX / 4)]),
            [100, 25]
        );
    }

    #[test]
    fn unscored_servers_share_equally() {
        assert_eq!(maglev_weights(&[None, None, None]), [1, 1, 1]);
        assert_eq!(maglev_weights(&[Some(0), None]), [1, 1]);
        assert!(maglev_weights(&[]).is_empty());
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 443))
    }

    #[test]
    fn a_better_scored_server_wins_when_states_tie() {
        let now = Instant::now();
        let servers = [addr(1), addr(2), addr(3)];
        let mut m = ServiceMachine::new(&servers, None, now);
        for &s in &servers {
            let _ = m.check(s, true, now);
            let _ = m.check(s, true, now);
        }
        assert!(
            m.servers()
                .iter()
                .all(|s| s.state == ServerState::Preferred)
        );
        m.set_connections(addr(1), 5);
        let low = score(5_000, 5_000, 100 * SUI).value(StakeWeight::Sqrt);
        let high = score(9_000, 9_000, 100 * SUI).value(StakeWeight::Sqrt);
        m.set_score(addr(1), Some(low));
        m.set_score(addr(3), Some(high));
        assert_eq!(m.select().server, Some(addr(1)), "ranking off: connections");
        m.set_ranking(true);
        assert_eq!(m.select().server, Some(addr(3)), "ranking on: best score");
        let order: Vec<SocketAddr> = m.ranked().iter().map(|s| s.address).collect();
        assert_eq!(order, [addr(3), addr(1), addr(2)], "unscored last");
    }

    #[test]
    fn maglev_shares_follow_scores() {
        let scores = [
            score(10_000, 10_000, 400 * SUI),
            score(10_000, 5_000, 400 * SUI),
            score(2_500, 10_000, 400 * SUI),
            score(10_000, 10_000, 100 * SUI),
        ]
        .map(|s| Some(s.value(StakeWeight::Linear)));
        let weights = maglev_weights(&scores);
        assert_eq!(weights, [100, 50, 25, 25]);
        let backends: Vec<MaglevBackend> = (1..)
            .zip(&weights)
            .map(|(id, &weight)| MaglevBackend {
                id,
                key: format!("10.0.0.{id}:443").into_bytes(),
                weight,
            })
            .collect();
        let size = maglev::DEFAULT_TABLE_SIZE;
        let table = maglev::build(&backends, size, None).unwrap();
        let total: u32 = weights.iter().sum();
        for b in &backends {
            let owned = table.iter().filter(|&&id| id == b.id).count();
            let target = f64::from(size) * f64::from(b.weight) / f64::from(total);
            #[expect(clippy::cast_precision_loss, reason = "slot counts are far below 2^52")]
            let error = (owned as f64 - target).abs() / target;
            assert!(
                error <= 0.01,
                "backend {}: {owned} slots, target {target}",
                b.id
            );
        }
    }
}
