//! Log hygiene: a failure that repeats is reported once, then only as a
//! periodic summary with a count, and a closing line when it stops.

use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New (or different) failure: log it in full.
    Log,
    /// Same failure again, already reported: stay quiet.
    Suppress,
    /// Same failure, and it is time for a reminder: `repeats` since the last line.
    Summary { repeats: u64 },
}

#[derive(Clone, Debug)]
pub struct RepeatGate {
    summary_every: Duration,
    current: Option<String>,
    last_line_at: Option<Instant>,
    unreported: u64,
    total: u64,
}

impl RepeatGate {
    pub fn new(summary_every: Duration) -> Self {
        RepeatGate {
            summary_every,
            current: None,
            last_line_at: None,
            unreported: 0,
            total: 0,
        }
    }

    /// Records one occurrence of failure `key` (a stable description, e.g.
    /// the failure kind) and says whether to log it.
    pub fn observe(&mut self, key: &str, now: Instant) -> Verdict {
        if self.current.as_deref() != Some(key) {
            self.current = Some(key.to_string());
            self.last_line_at = Some(now);
            self.unreported = 0;
            self.total = 1;
            return Verdict::Log;
        }
        self.total += 1;
        self.unreported += 1;
        let due = self
            .last_line_at
            .is_none_or(|t| now.saturating_duration_since(t) >= self.summary_every);
        if due {
            self.last_line_at = Some(now);
            let repeats = std::mem::take(&mut self.unreported);
            Verdict::Summary { repeats }
        } else {
            Verdict::Suppress
        }
    }

    /// The failure is over. Returns how many times it happened in total, if
    /// it happened at all, so the recovery line can carry the count.
    pub fn clear(&mut self) -> Option<u64> {
        self.current.take()?;
        self.unreported = 0;
        self.last_line_at = None;
        Some(std::mem::take(&mut self.total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_folded_into_periodic_summaries() {
        let t0 = Instant::now();
        let mut g = RepeatGate::new(Duration::from_secs(60));
        assert_eq!(g.observe("refused", t0), Verdict::Log);
        let mut lines = 1;
        // A failure every second for ten minutes.
        for s in 1..600 {
            match g.observe("refused", t0 + Duration::from_secs(s)) {
                Verdict::Suppress => {}
                Verdict::Summary { repeats } => {
                    lines += 1;
                    assert_eq!(repeats, 60);
                }
                Verdict::Log => panic!("same failure logged in full again"),
            }
        }
        assert!(lines <= 11, "{lines} lines");
        assert_eq!(g.clear(), Some(600));
        assert_eq!(g.clear(), None);
    }

    #[test]
    fn a_different_failure_is_logged_at_once() {
        let t0 = Instant::now();
        let mut g = RepeatGate::new(Duration::from_secs(60));
        assert_eq!(g.observe("refused", t0), Verdict::Log);
        assert_eq!(g.observe("refused", t0), Verdict::Suppress);
        assert_eq!(g.observe("timeout", t0), Verdict::Log);
    }
}
