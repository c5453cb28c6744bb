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

/// Remembers recently seen lines so a process that prints the same thing
/// on every retry (ssh's "Connection refused") is logged once per `ttl`.
#[derive(Clone, Debug)]
pub struct RecentLines {
    ttl: Duration,
    max: usize,
    seen: Vec<(String, Instant)>,
}

impl RecentLines {
    pub fn new(ttl: Duration, max: usize) -> Self {
        RecentLines {
            ttl,
            max: max.max(1),
            seen: Vec::new(),
        }
    }

    /// True if `line` was not seen within `ttl` (and records it).
    pub fn is_fresh(&mut self, line: &str, now: Instant) -> bool {
        self.seen
            .retain(|(_, at)| now.saturating_duration_since(*at) < self.ttl);
        if self.seen.iter().any(|(l, _)| l == line) {
            return false;
        }
        if self.seen.len() == self.max {
            self.seen.remove(0);
        }
        self.seen.push((line.to_string(), now));
        true
    }
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    #[test]
    fn a_line_is_fresh_once_per_ttl() {
        let t0 = Instant::now();
        let mut r = RecentLines::new(Duration::from_secs(600), 4);
        assert!(r.is_fresh("refused", t0));
        assert!(!r.is_fresh("refused", t0 + Duration::from_secs(599)));
        assert!(r.is_fresh("other", t0));
        assert!(r.is_fresh("refused", t0 + Duration::from_secs(601)));
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut r = RecentLines::new(Duration::from_secs(600), 2);
        for i in 0..100 {
            assert!(r.is_fresh(&i.to_string(), t0));
        }
        assert!(r.seen.len() <= 2);
    }
}
