//! The up link's periodic work: the health probe, the full resync (which
//! repairs any drift of the event stream), and the one-off wants — a probe
//! after a network change or a wake-up, a resync on request. One table, so
//! the next deadline is read in one place.

use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    next_health: Instant,
    next_resync: Instant,
    resync_wanted: bool,
    wake_probe_wanted: bool,
}

impl Schedule {
    pub fn new(now: Instant) -> Self {
        Schedule {
            next_health: now,
            next_resync: now,
            resync_wanted: false,
            wake_probe_wanted: false,
        }
    }

    /// The link is up: the first health probe is `period` away.
    pub fn link_up(&mut self, period: Duration, now: Instant) {
        self.next_health = now + period;
    }

    /// A resync ended: the next is `interval` away.
    pub fn resynced(&mut self, interval: Duration, now: Instant) {
        self.next_resync = now + interval;
    }

    pub fn want_resync(&mut self) {
        self.resync_wanted = true;
    }

    pub fn want_wake_probe(&mut self) {
        self.wake_probe_wanted = true;
    }

    /// The link went: what was wanted of it goes with it.
    pub fn forget_wants(&mut self) {
        self.resync_wanted = false;
        self.wake_probe_wanted = false;
    }

    /// A probe after a network change or a wake-up is due (once).
    pub fn take_wake_probe(&mut self) -> bool {
        std::mem::take(&mut self.wake_probe_wanted)
    }

    /// Whether a resync is to start now. One that falls due while inspects
    /// are queued or out waits for them (it replaces what they would tell),
    /// and its deadline moves, or the machine would spin.
    pub fn take_resync(&mut self, inspects_due: bool, interval: Duration, now: Instant) -> bool {
        if inspects_due {
            if now >= self.next_resync {
                self.resync_wanted = true;
                self.next_resync = now + interval;
            }
            return false;
        }
        std::mem::take(&mut self.resync_wanted) || now >= self.next_resync
    }

    /// Whether the health probe is due now; the next is `period` away.
    pub fn take_health_probe(&mut self, period: Duration, now: Instant) -> bool {
        if now < self.next_health {
            return false;
        }
        self.next_health = now + period;
        true
    }

    /// When the next periodic work is due, with `also` (a created
    /// container's expiry) if any.
    pub fn deadline(&self, also: Option<Instant>) -> Instant {
        self.next_health
            .min(self.next_resync)
            .min(also.unwrap_or(self.next_resync))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn probes_and_resyncs_fall_due_on_their_periods() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.link_up(MIN / 2, t0);
        s.resynced(5 * MIN, t0);
        assert_eq!(s.deadline(None), t0 + MIN / 2);
        assert_eq!(s.deadline(Some(t0 + MIN / 4)), t0 + MIN / 4);
        assert!(!s.take_health_probe(MIN / 2, t0 + MIN / 4));
        assert!(s.take_health_probe(MIN / 2, t0 + MIN / 2));
        assert_eq!(s.deadline(None), t0 + MIN);
        assert!(!s.take_resync(false, 5 * MIN, t0 + MIN));
        assert!(s.take_resync(false, 5 * MIN, t0 + 5 * MIN));
    }

    #[test]
    fn a_resync_due_while_inspects_are_out_waits_for_them_without_spinning() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.resynced(5 * MIN, t0);
        let due = t0 + 5 * MIN;
        assert!(!s.take_resync(true, 5 * MIN, due));
        // Its deadline moved: no busy loop while the inspects run.
        assert_eq!(s.deadline(None), t0);
        s.link_up(MIN, due);
        assert_eq!(s.deadline(None), due + MIN);
        // Once they are done it runs, wanted.
        assert!(s.take_resync(false, 5 * MIN, due));
        assert!(!s.take_resync(false, 5 * MIN, due), "once");
    }

    #[test]
    fn wants_are_taken_once_and_forgotten_with_the_link() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.resynced(5 * MIN, t0);
        s.want_wake_probe();
        assert!(s.take_wake_probe());
        assert!(!s.take_wake_probe());
        s.want_resync();
        s.want_wake_probe();
        s.forget_wants();
        assert!(!s.take_wake_probe());
        assert!(!s.take_resync(false, 5 * MIN, t0));
    }
}
