//! When to try again: exponential backoff with jitter, capped, and a maximum
//! age after which a recipient fails for good.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct RetrySchedule {
    pub initial: Duration,
    pub max: Duration,
    pub max_age: Duration,
}

/// ±20 % so that recipients deferred together do not all come back together.
const JITTER: f64 = 0.2;

impl RetrySchedule {
    /// Delay before the next attempt, given how many attempts failed so far
    /// (1 after the first failure).
    pub fn delay(&self, failed_attempts: u32) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        let factor = 1.0 + rand::rng().random_range(-JITTER..=JITTER);
        base.mul_f64(factor).min(self.max)
    }

    /// The time of the next attempt, or `None` when the message is too old
    /// for one (it must then fail and bounce).
    pub fn next_attempt(&self, received_at: i64, now: i64, failed_attempts: u32) -> Option<i64> {
        let next = now + self.delay(failed_attempts).as_millis() as i64;
        let deadline = received_at + self.max_age.as_millis() as i64;
        (next <= deadline).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(4 * 3600),
            max_age: Duration::from_secs(5 * 86_400),
        }
    }

    #[test]
    fn doubles_with_jitter_up_to_the_cap() {
        let s = schedule();
        for (attempt, base) in [(1u32, 60.0), (2, 120.0), (3, 240.0), (9, 14_400.0)] {
            let d = s.delay(attempt).as_secs_f64();
            assert!(
                d >= base * 0.8 - 0.001 && d <= (base * 1.2).min(14_400.0) + 0.001,
                "{attempt}: {d}"
            );
        }
        assert!(s.delay(40) <= s.max);
    }

    #[test]
    fn gives_up_after_max_age() {
        let s = schedule();
        let day = 86_400_000;
        assert!(s.next_attempt(0, day, 3).is_some());
        assert_eq!(s.next_attempt(0, 5 * day, 3), None);
    }
}
