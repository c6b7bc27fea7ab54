//! Deadline arithmetic that cannot panic. `Instant + Duration` panics when the sum is past what
//! the clock can represent; every deadline the server computes goes through [`after`] instead,
//! so a duration that slipped past its option's range check gives a deadline that never comes,
//! never a crashed worker. The options are range-checked in [`crate::config`] as well.

use std::time::{Duration, Instant};

/// `at + d`; past the clock's end, the latest instant it can represent (a deadline that never
/// comes).
pub fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or_else(|| latest(at, d))
}

/// The latest instant reachable from `at` by adding at most `d`: add what fits, halving the
/// step when it does not (at most one addition per halving, so about 94 steps at worst).
fn latest(at: Instant, d: Duration) -> Instant {
    let (mut t, mut step) = (at, d);
    while !step.is_zero() {
        match t.checked_add(step) {
            Some(later) => t = later,
            None => step /= 2,
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_adds_and_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(after(now, Duration::ZERO), now);
        let far = after(now, Duration::MAX);
        let century = Duration::from_secs(100 * 365 * 86_400);
        assert!(far > now + century, "{:?}", far - now);
        // Nothing can be added to the end any more, and it is reached again from there.
        assert!(far.checked_add(Duration::from_secs(1)).is_none());
        assert_eq!(after(far, Duration::from_secs(1)), far);
        // 1e19 seconds, the number that made a worker panic.
        assert!(after(now, Duration::from_secs(10_000_000_000_000_000_000)) > now + century);
    }
}
