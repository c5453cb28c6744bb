//! How one kind of attempt is retried and said: the master's connection,
//! and the Docker channels on a live master, each have one. A failure
//! records how long the attempt lasted (a link that stayed up long enough
//! forgets its failures), takes the next delay of the doubling backoff, and
//! is logged once per episode, then summarised (`EpisodeLog`).

use std::time::{Duration, Instant};

use crate::backoff::{Backoff, BackoffPolicy};
use crate::repeat::{EpisodeLog, EpisodeSnapshot, UpLog, Verdict};

#[derive(Debug)]
pub struct Retry {
    backoff: Backoff,
    /// When the current attempt started.
    started: Instant,
    episodes: EpisodeLog,
}

impl Retry {
    pub fn new(policy: &BackoffPolicy, summary_every: Duration, now: Instant) -> Self {
        Retry {
            backoff: Backoff::new(policy.clone()),
            started: now,
            episodes: EpisodeLog::new(policy.healthy_after, summary_every),
        }
    }

    pub fn set_policy(&mut self, policy: BackoffPolicy) {
        self.backoff.set_policy(policy);
    }

    /// An attempt starts now.
    pub fn attempt(&mut self, now: Instant) {
        self.started = now;
    }

    /// The attempt failed: the next delay, `jitter` in [0, 1).
    pub fn failed(&mut self, jitter: f64, now: Instant) -> Duration {
        self.backoff
            .record_uptime(now.saturating_duration_since(self.started));
        self.backoff.next_delay(jitter)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// Whether a failure of `kind` is said now (once per episode, then a
    /// summary now and then).
    pub fn say(&mut self, kind: &str, now: Instant) -> Verdict {
        self.episodes.on_failure(kind, now)
    }

    /// Up again: what to say of the recovery.
    pub fn up(&mut self, now: Instant) -> UpLog {
        self.episodes.on_up(now)
    }

    /// Start over: no failures (a new master, or a request to reconnect).
    pub fn reset(&mut self) {
        self.backoff.reset();
    }

    /// What the upgraded image had: its failures and what it said of them.
    pub fn resume(&mut self, failures: u32, episode: EpisodeSnapshot, now: Instant) {
        self.backoff.resume(failures);
        self.episodes.resume(episode, now);
    }

    pub fn snapshot(&self) -> EpisodeSnapshot {
        self.episodes.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_double_the_delay_and_are_said_once_per_episode() {
        let t0 = Instant::now();
        let policy = BackoffPolicy::default();
        let mut r = Retry::new(&policy, Duration::from_secs(300), t0);
        r.attempt(t0);
        let first = r.failed(0.5, t0);
        let second = r.failed(0.5, t0 + first);
        assert!(second > first, "{first:?} then {second:?}");
        assert_eq!(r.failures(), 2);
        assert_eq!(r.say("timeout", t0), Verdict::Log);
        assert_eq!(
            r.say("timeout", t0 + Duration::from_secs(1)),
            Verdict::Suppress
        );
        r.reset();
        assert_eq!(r.failures(), 0);
    }
}
