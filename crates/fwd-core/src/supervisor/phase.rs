//! Where a host's link is in its life: waiting to retry, connecting,
//! setting up the Docker channels, up, checking the master after a channel
//! failed, waiting to reopen the channels, or stopped.

use std::time::{Duration, Instant};

/// A network change cuts a transient backoff short, but not more than once
/// a second (a flapping interface must not become a retry loop).
const MIN_EARLY_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Phase {
    /// Waiting before the next attempt; a network change may cut a
    /// transient wait short.
    Backoff {
        until: Instant,
        early_wake: bool,
        failed_at: Instant,
    },
    /// A retry is due, but no network is usable.
    NoNetwork,
    /// `SpawnMaster` in flight.
    Spawning,
    /// The master is up; the Docker channels are being set up and resynced.
    Setup,
    /// Published and streaming.
    Up,
    /// A Docker channel failed; `CheckMaster` in flight.
    CheckingMaster,
    /// The master is fine but the Docker channels failed: reopen at `until`.
    ChannelBackoff {
        until: Instant,
    },
    Stopped,
}

impl Phase {
    /// A master is up (the channels may be down).
    pub fn master_up(self) -> bool {
        matches!(
            self,
            Phase::Setup | Phase::Up | Phase::CheckingMaster | Phase::ChannelBackoff { .. }
        )
    }

    /// When the current wait ends.
    pub fn wait_ends(self) -> Option<Instant> {
        match self {
            Phase::Backoff { until, .. } | Phase::ChannelBackoff { until } => Some(until),
            _ => None,
        }
    }

    /// A network came (back) or the machine woke: whether a retry that
    /// waits is tried now — after a transient failure (not more than once
    /// a second: a flapping interface must not become a retry loop), or
    /// when it waited for a network.
    pub fn retries_on_wake(self, now: Instant) -> bool {
        match self {
            Phase::Backoff {
                early_wake: true,
                failed_at,
                ..
            } => now.saturating_duration_since(failed_at) >= MIN_EARLY_RETRY,
            Phase::NoNetwork => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_retries_a_transient_wait_at_most_once_a_second() {
        let t0 = Instant::now();
        let transient = Phase::Backoff {
            until: t0 + Duration::from_secs(30),
            early_wake: true,
            failed_at: t0,
        };
        assert!(!transient.retries_on_wake(t0 + Duration::from_millis(500)));
        assert!(transient.retries_on_wake(t0 + MIN_EARLY_RETRY));
        let permanent = Phase::Backoff {
            until: t0 + Duration::from_secs(30),
            early_wake: false,
            failed_at: t0,
        };
        assert!(!permanent.retries_on_wake(t0 + Duration::from_secs(60)));
        assert!(Phase::NoNetwork.retries_on_wake(t0));
        assert_eq!(transient.wait_ends(), Some(t0 + Duration::from_secs(30)));
        assert!(Phase::CheckingMaster.master_up() && !Phase::Spawning.master_up());
    }
}
