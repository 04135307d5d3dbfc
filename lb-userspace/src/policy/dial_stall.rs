//! How long a SYN may wait before the kernel calls its server suspect
//! (`dial_stall_timeout`), and the smoothed dial time `auto` derives it
//! from.
//!
//! `auto` follows what a normal dial to the service's servers costs: a
//! bound of [`AUTO_FACTOR`] times the slowest server's smoothed dial time
//! (client dials seen by the kernel and probe dials alike), kept between
//! [`AUTO_FLOOR`] and [`AUTO_CEILING`]; [`AUTO_UNKNOWN`] until a dial has
//! been timed. The floor keeps a loaded node's scheduling delays from
//! looking like stalls; the ceiling sits at TCP's first SYN retransmission
//! (1 s), which marks the server suspect anyway.

use std::time::Duration;

use crate::config::DialStall;

/// `auto`: the bound is this many times the smoothed dial time.
pub const AUTO_FACTOR: u32 = 10;
/// `auto`: the shortest bound.
pub const AUTO_FLOOR: Duration = Duration::from_millis(100);
/// `auto`: the longest bound.
pub const AUTO_CEILING: Duration = Duration::from_secs(1);
/// `auto`: the bound before any dial was timed.
pub const AUTO_UNKNOWN: Duration = Duration::from_millis(250);

/// A server's smoothed dial time: an exponentially weighted mean with
/// weight 1/8 per new dial (TCP's SRTT gain).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DialTime {
    smoothed: Option<Duration>,
}

impl DialTime {
    /// Takes one successful dial's duration.
    pub fn observe(&mut self, dial: Duration) {
        self.smoothed = Some(match self.smoothed {
            None => dial,
            Some(old) => old.saturating_sub(old / 8) + dial / 8,
        });
    }

    /// The smoothed dial time, once a dial was timed.
    pub const fn smoothed(&self) -> Option<Duration> {
        self.smoothed
    }
}

/// The bound the kernel applies for `setting`, given the smoothed dial
/// times of the service's servers (`None`: not timed yet). Zero: off.
pub fn bound(setting: DialStall, servers: impl IntoIterator<Item = Option<Duration>>) -> Duration {
    match setting {
        DialStall::Fixed(bound) => bound,
        DialStall::Auto => servers
            .into_iter()
            .flatten()
            .max()
            .map_or(AUTO_UNKNOWN, |slowest| {
                slowest
                    .saturating_mul(AUTO_FACTOR)
                    .clamp(AUTO_FLOOR, AUTO_CEILING)
            }),
    }
}

/// Whether a bound `new` differs enough from the one the kernel holds
/// (`written`) to be written again: any change to or from zero or from a
/// fixed setting, else a change of more than a quarter (a smoothed time
/// moves a little with every dial; the map is not rewritten for that).
pub fn worth_writing(written: Duration, new: Duration) -> bool {
    if written.is_zero() || new.is_zero() {
        return written != new;
    }
    let (low, high) = if written < new {
        (written, new)
    } else {
        (new, written)
    };
    high.saturating_sub(low) > written / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_smoothed_time_starts_at_the_first_dial_and_moves_an_eighth() {
        let mut time = DialTime::default();
        assert_eq!(time.smoothed(), None);
        time.observe(8 * MS);
        assert_eq!(time.smoothed(), Some(8 * MS));
        time.observe(16 * MS);
        assert_eq!(time.smoothed(), Some(9 * MS));
        for _ in 0..100 {
            time.observe(16 * MS);
        }
        let settled = time.smoothed().unwrap();
        assert!(settled > 15 * MS && settled <= 16 * MS, "{settled:?}");
    }

    #[test]
    fn auto_follows_the_slowest_server_within_its_bounds() {
        // Not timed yet.
        assert_eq!(bound(DialStall::Auto, [None, None]), AUTO_UNKNOWN);
        assert_eq!(bound(DialStall::Auto, []), AUTO_UNKNOWN);
        // Loopback and LAN dials: the floor.
        assert_eq!(
            bound(DialStall::Auto, [Some(Duration::from_micros(40)), None]),
            AUTO_FLOOR
        );
        // A remote server 30 ms away sets the bound for the service.
        assert_eq!(bound(DialStall::Auto, [Some(MS), Some(30 * MS)]), 300 * MS);
        // Far away: the ceiling (TCP's first SYN retransmission).
        assert_eq!(bound(DialStall::Auto, [Some(500 * MS)]), AUTO_CEILING);
    }

    #[test]
    fn a_fixed_setting_is_used_as_written() {
        assert_eq!(bound(DialStall::Fixed(40 * MS), [Some(30 * MS)]), 40 * MS);
        assert_eq!(
            bound(DialStall::Fixed(Duration::ZERO), [Some(MS)]),
            Duration::ZERO
        );
    }

    #[test]
    fn small_moves_are_not_written_again() {
        assert!(!worth_writing(100 * MS, 100 * MS));
        assert!(!worth_writing(200 * MS, 240 * MS));
        assert!(!worth_writing(200 * MS, 160 * MS));
        assert!(worth_writing(200 * MS, 260 * MS));
        assert!(worth_writing(200 * MS, 140 * MS));
        assert!(worth_writing(Duration::ZERO, MS));
        assert!(worth_writing(MS, Duration::ZERO));
        assert!(!worth_writing(Duration::ZERO, Duration::ZERO));
    }
}
