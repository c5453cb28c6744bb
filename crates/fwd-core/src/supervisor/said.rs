//! What the machine says only now and then, however often it happens:
//! skipped event lines, network losses (a flapping interface), the master's
//! stderr lines (numbers folded, so a line that differs only in a pid or a
//! port is the same line), and the engine's version (once per version).

use std::time::{Duration, Instant};

use crate::repeat::{RecentLines, RepeatGate, Verdict};

#[derive(Debug)]
pub struct Said {
    skipped: RepeatGate,
    network_lost: RepeatGate,
    stderr: RecentLines,
    version: Option<String>,
}

impl Said {
    pub fn new(summary_every: Duration) -> Self {
        Said {
            skipped: RepeatGate::new(summary_every),
            network_lost: RepeatGate::new(summary_every),
            stderr: RecentLines::new(summary_every, 32),
            version: None,
        }
    }

    /// A version a predecessor (the upgraded image) already said.
    pub fn version_said(&mut self, version: Option<String>) {
        self.version = version;
    }

    /// Whether a skipped event line is said now.
    pub fn skipped_event(&mut self, now: Instant) -> bool {
        self.skipped.observe("skipped", now) != Verdict::Suppress
    }

    /// Whether (and how) a network loss is said now.
    pub fn network_lost(&mut self, now: Instant) -> Verdict {
        self.network_lost.observe("network_lost", now)
    }

    /// Whether a line of the master's stderr is said now.
    pub fn stderr_line(&mut self, line: &str, now: Instant) -> bool {
        self.stderr.is_fresh(&without_numbers(line), now)
    }

    /// Whether the engine's version `v` is news.
    pub fn new_version(&mut self, v: &str) -> bool {
        if self.version.as_deref() == Some(v) {
            return false;
        }
        self.version = Some(v.to_string());
        true
    }
}

/// Folds the numbers out of a line (pids, ports, channel numbers), so
/// repeats of the same message count as the same line.
pub fn without_numbers(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_number = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_that_differs_only_in_numbers_is_said_once_and_a_version_once() {
        let t0 = Instant::now();
        let mut said = Said::new(Duration::from_secs(300));
        assert!(said.stderr_line("channel 3: open failed: port 8080", t0));
        assert!(!said.stderr_line("channel 7: open failed: port 9090", t0));
        assert_eq!(without_numbers("pid 1234 port 80"), "pid # port #");
        said.version_said(Some("20.10.24".into()));
        assert!(!said.new_version("20.10.24"));
        assert!(said.new_version("26.1.5"));
        assert!(said.skipped_event(t0));
        assert!(!said.skipped_event(t0));
    }
}
