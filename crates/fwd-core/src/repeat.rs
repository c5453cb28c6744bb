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

/// Log decisions for a link that may flap.
///
/// An *episode* of trouble starts with the first failure and ends only once
/// the link has then stayed up for `healthy_after`. Within an episode each
/// kind of failure is logged once, the first recovery once, and everything
/// else is folded into a summary at most every `summary_every`. A link that
/// flaps for ten minutes therefore costs a handful of lines, not hundreds.
#[derive(Clone, Debug)]
pub struct EpisodeLog {
    healthy_after: Duration,
    summary_every: Duration,
    up_since: Option<Instant>,
    episode: Option<Episode>,
    announced_first_up: bool,
}

#[derive(Clone, Debug)]
struct Episode {
    kinds: Vec<String>,
    failures: u64,
    unreported: u64,
    last_line: Instant,
    recovery_logged: bool,
}

/// An [`EpisodeLog`]'s state as a binary upgrade carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpisodeSnapshot {
    /// Failure kinds already logged in the current episode.
    pub kinds: Vec<String>,
    pub failures: u64,
    pub recovery_logged: bool,
    pub announced_first_up: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpLog {
    /// The first connection since start: worth a line.
    First,
    /// Back after `failures` failed attempts in this episode.
    Recovered { failures: u64 },
    /// Already said: stay quiet.
    Quiet,
}

impl EpisodeLog {
    pub fn new(healthy_after: Duration, summary_every: Duration) -> Self {
        EpisodeLog {
            healthy_after,
            summary_every,
            up_since: None,
            episode: None,
            announced_first_up: false,
        }
    }

    /// A failure of kind `key` (a stable name such as "connection_refused").
    pub fn on_failure(&mut self, key: &str, now: Instant) -> Verdict {
        if let Some(up) = self.up_since.take() {
            if now.saturating_duration_since(up) >= self.healthy_after {
                self.episode = None;
            }
        }
        let ep = self.episode.get_or_insert_with(|| Episode {
            kinds: Vec::new(),
            failures: 0,
            unreported: 0,
            last_line: now,
            recovery_logged: false,
        });
        ep.failures += 1;
        if !ep.kinds.iter().any(|k| k == key) {
            if ep.kinds.len() < 16 {
                ep.kinds.push(key.to_string());
            }
            ep.last_line = now;
            return Verdict::Log;
        }
        ep.unreported += 1;
        if now.saturating_duration_since(ep.last_line) >= self.summary_every {
            ep.last_line = now;
            Verdict::Summary {
                repeats: std::mem::take(&mut ep.unreported),
            }
        } else {
            Verdict::Suppress
        }
    }

    /// What the next fwdd image needs so it neither repeats lines already
    /// logged nor announces a link that has been up all along.
    pub fn snapshot(&self) -> EpisodeSnapshot {
        EpisodeSnapshot {
            kinds: self
                .episode
                .as_ref()
                .map(|e| e.kinds.clone())
                .unwrap_or_default(),
            failures: self.episode.as_ref().map_or(0, |e| e.failures),
            recovery_logged: self.episode.as_ref().is_some_and(|e| e.recovery_logged),
            announced_first_up: self.announced_first_up,
        }
    }

    /// Carries on from a [`snapshot`](Self::snapshot) taken by the previous image.
    pub fn resume(&mut self, s: EpisodeSnapshot, now: Instant) {
        self.announced_first_up = s.announced_first_up;
        self.episode = (s.failures > 0 || !s.kinds.is_empty()).then_some(Episode {
            kinds: s.kinds,
            failures: s.failures,
            unreported: 0,
            last_line: now,
            recovery_logged: s.recovery_logged,
        });
    }

    /// The link is up.
    pub fn on_up(&mut self, now: Instant) -> UpLog {
        self.up_since = Some(now);
        let first = !std::mem::replace(&mut self.announced_first_up, true);
        match &mut self.episode {
            Some(ep) if !ep.recovery_logged => {
                ep.recovery_logged = true;
                UpLog::Recovered {
                    failures: ep.failures,
                }
            }
            Some(_) => UpLog::Quiet,
            None if first => UpLog::First,
            None => UpLog::Quiet,
        }
    }
}

#[cfg(test)]
mod episode_tests {
    use super::*;

    #[test]
    fn ten_minutes_of_flapping_is_a_handful_of_lines() {
        let t0 = Instant::now();
        let mut log = EpisodeLog::new(Duration::from_secs(60), Duration::from_secs(300));
        assert_eq!(log.on_up(t0), UpLog::First);
        let mut lines = 1;
        // Down 5 s, up 5 s, alternating failure kinds, for ten minutes.
        for i in 0..60u64 {
            let t = t0 + Duration::from_secs(10 * i + 5);
            let kind = if i % 2 == 0 {
                "master_died"
            } else {
                "connection_refused"
            };
            if log.on_failure(kind, t) != Verdict::Suppress {
                lines += 1;
            }
            if log.on_up(t + Duration::from_secs(5)) != UpLog::Quiet {
                lines += 1;
            }
        }
        assert!(lines <= 6, "{lines} lines");
    }

    #[test]
    fn a_healthy_period_ends_the_episode() {
        let t0 = Instant::now();
        let mut log = EpisodeLog::new(Duration::from_secs(60), Duration::from_secs(300));
        log.on_up(t0);
        assert_eq!(
            log.on_failure("refused", t0 + Duration::from_secs(1)),
            Verdict::Log
        );
        assert_eq!(
            log.on_failure("refused", t0 + Duration::from_secs(2)),
            Verdict::Suppress
        );
        assert_eq!(
            log.on_up(t0 + Duration::from_secs(3)),
            UpLog::Recovered { failures: 2 }
        );
        // Up for two minutes: the next failure is news again.
        assert_eq!(
            log.on_failure("refused", t0 + Duration::from_secs(123)),
            Verdict::Log
        );
        assert_eq!(
            log.on_up(t0 + Duration::from_secs(124)),
            UpLog::Recovered { failures: 1 }
        );
    }

    #[test]
    fn first_connection_after_failures_is_a_recovery() {
        let t0 = Instant::now();
        let mut log = EpisodeLog::new(Duration::from_secs(60), Duration::from_secs(300));
        assert_eq!(log.on_failure("refused", t0), Verdict::Log);
        assert_eq!(log.on_up(t0), UpLog::Recovered { failures: 1 });
    }
}
