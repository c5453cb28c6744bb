//! Retry pacing: first retry immediate, then exponential with jitter, capped,
//! and forgotten once a connection has been healthy for a while.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct BackoffPolicy {
    /// Delay before the second retry; doubles per further failure.
    pub base: Duration,
    pub cap: Duration,
    /// Relative spread, 0.25 = ±25 %, so that many runners that lost the same
    /// host do not all knock again in the same instant.
    pub jitter: f64,
    /// A connection that stayed up this long resets the failure count.
    pub healthy_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        use crate::defaults;
        BackoffPolicy {
            base: defaults::BACKOFF_BASE,
            cap: defaults::BACKOFF_CAP,
            jitter: defaults::BACKOFF_JITTER,
            healthy_after: defaults::HEALTHY_AFTER,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            failures: 0,
        }
    }

    /// Takes new numbers (a configuration reload) without forgetting the
    /// failures seen so far.
    pub fn set_policy(&mut self, policy: BackoffPolicy) {
        self.policy = policy;
    }

    /// Consecutive failures recorded since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure and returns how long to wait before the next try.
    /// `unit_random` is a sample from [0, 1) supplied by the caller (the core
    /// owns no randomness, so tests can pin it).
    pub fn next_delay(&mut self, unit_random: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 {
            return Duration::ZERO;
        }
        let exp = (self.failures - 2).min(30);
        let raw = self
            .policy
            .base
            .saturating_mul(1u32 << exp)
            .min(self.policy.cap);
        let spread = self.policy.jitter.clamp(0.0, 1.0) * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
        raw.mul_f64(1.0 + spread)
    }

    /// Called when a connection ends (or is checked) after having been up for
    /// `uptime`: long enough counts as healthy and forgives past failures.
    pub fn record_uptime(&mut self, uptime: Duration) {
        if uptime >= self.policy.healthy_after {
            self.failures = 0;
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Carries on from `failures` (a binary upgrade hands them over).
    pub fn resume(&mut self, failures: u32) {
        self.failures = failures;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_retry_is_immediate_then_doubles_to_the_cap() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let delays: Vec<u64> = (0..10)
            .map(|_| b.next_delay(0.5).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            vec![0, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn healthy_uptime_resets_but_a_short_one_does_not() {
        let mut b = Backoff::new(BackoffPolicy::default());
        b.next_delay(0.5);
        b.next_delay(0.5);
        b.record_uptime(Duration::from_secs(5));
        assert_eq!(b.failures(), 2);
        b.record_uptime(Duration::from_secs(60));
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(0.9), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn jitter_stays_within_a_quarter(n in 2u32..40, r in 0.0f64..1.0) {
            let mut b = Backoff::new(BackoffPolicy::default());
            let mut d = Duration::ZERO;
            for _ in 0..n { d = b.next_delay(r); }
            let mut center = Backoff::new(BackoffPolicy::default());
            let mut c = Duration::ZERO;
            for _ in 0..n { c = center.next_delay(0.5); }
            prop_assert!(d.as_secs_f64() >= c.as_secs_f64() * 0.75 - 1e-9);
            prop_assert!(d.as_secs_f64() <= c.as_secs_f64() * 1.25 + 1e-9);
            prop_assert!(d <= Duration::from_millis(37_500));
        }
    }
}
