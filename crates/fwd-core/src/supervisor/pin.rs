//! Which engine a host uses once one has answered: the pin.
//!
//! Discovery lists every engine a host has, and on a host with two (dockerd
//! and a rootful Podman, say) the first one that answers is the host's
//! engine from then on. While it restarts its socket is gone or dead, and
//! the next engine found would answer at once: taking it would leave every
//! container started on the first one afterwards unforwarded. So an engine
//! that answered is kept across its own restarts (fwd waits for it, status
//! says so), and another one is taken only when it has been gone for good
//! (`engine_gone_after`), loudly. An engine the host names (`DOCKER_HOST`, a
//! docker context of the user's, `engine_remote_socket`) is never replaced:
//! the remote CLI would use no other.

use std::time::{Duration, Instant};

use crate::discovery::{self, Candidate};

/// How often a channel to a gone engine's socket is tried, at most.
pub const ENGINE_WAIT_POLL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// The engine's socket on the remote host.
    pub path: String,
    /// How it was found (`EngineHealth::found_by`).
    pub found_by: &'static str,
    /// The host names it: never replaced.
    pub named: bool,
    /// It answered over a stream-local channel: a channel to it that fails
    /// now says the engine is gone, not that sshd forbids such channels.
    pub over_stream_local: bool,
    /// Since when it has not answered.
    pub gone_since: Option<Instant>,
}

/// Another engine answered in place of one gone for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    pub from: String,
    pub from_found_by: &'static str,
    pub to: String,
    pub to_found_by: &'static str,
    pub gone_for: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct EnginePin {
    pinned: Option<Pinned>,
    /// The engine given up after it was gone for good, and since when it
    /// was gone, until another one answers.
    given_up: Option<(Pinned, Instant)>,
}

impl EnginePin {
    /// The engine on `path` answered (`GET /version`). Returns what it
    /// replaced, when an engine gone for good was given up for it.
    pub fn answered(
        &mut self,
        path: &str,
        found_by: &'static str,
        over_stream_local: bool,
        now: Instant,
    ) -> Option<Replaced> {
        let replaced = self.given_up.take().and_then(|(old, gone)| {
            (old.path != path).then(|| Replaced {
                from: old.path,
                from_found_by: old.found_by,
                to: path.to_string(),
                to_found_by: found_by,
                gone_for: now.saturating_duration_since(gone),
            })
        });
        let over_stream_local = over_stream_local
            || self
                .pinned
                .as_ref()
                .is_some_and(|p| p.path == path && p.over_stream_local);
        self.pinned = Some(Pinned {
            path: path.to_string(),
            found_by,
            named: discovery::names_the_engine(found_by, path),
            over_stream_local,
            gone_since: None,
        });
        replaced
    }

    /// The pinned engine, if any.
    #[cfg(test)]
    pub fn pinned(&self) -> Option<&Pinned> {
        self.pinned.as_ref()
    }

    /// Whether `path` is the pinned engine's and it answered over a
    /// stream-local channel: a channel to it that fails the way a missing
    /// engine makes it fail then says the engine is gone (restarting,
    /// stopped), not that sshd forbids such channels.
    pub fn answers_over_stream_local(&self, path: &str) -> bool {
        self.pinned
            .as_ref()
            .is_some_and(|p| p.path == path && p.over_stream_local)
    }

    /// The pinned engine has not answered since it was lost.
    pub fn is_gone(&self) -> bool {
        self.pinned.as_ref().is_some_and(|p| p.gone_since.is_some())
    }

    /// The pinned engine did not answer: its gone clock starts, unless it
    /// runs already.
    pub fn lost(&mut self, now: Instant) {
        if let Some(p) = &mut self.pinned {
            p.gone_since.get_or_insert(now);
        }
    }

    /// Discovery answered: the pinned engine's socket, where it is kept
    /// (found again, or waited for); `None` where discovery's own choice
    /// applies: nothing pinned, the host names another engine now, or the
    /// pinned one was found by the search and has been gone for good (it is
    /// then given up, and the engine that answers next replaces it).
    pub fn keep(
        &mut self,
        candidates: &[Candidate],
        gone_after: Duration,
        now: Instant,
    ) -> Option<(String, &'static str)> {
        let p = self.pinned.as_ref()?;
        let keep = match discovery::named(candidates) {
            // What the host names is the operator's word: a change of it
            // is taken at once; the same one is waited for.
            Some(n) => n.path == p.path,
            None => !p.named && !self.gone_for_good(gone_after, now),
        };
        if keep {
            return Some((p.path.clone(), p.found_by));
        }
        if let Some(p) = self.pinned.take() {
            let gone = p.gone_since.unwrap_or(now);
            self.given_up = Some((p, gone));
        }
        None
    }

    /// The pinned engine was found by the search and has been gone for at
    /// least `gone_after`: time to search again.
    pub fn gone_for_good(&self, gone_after: Duration, now: Instant) -> bool {
        self.pinned.as_ref().is_some_and(|p| {
            !p.named
                && p.gone_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= gone_after)
        })
    }

    /// What status says while the pinned engine is gone.
    pub fn waiting(&self, gone_after: Duration, now: Instant) -> Option<String> {
        let p = self.pinned.as_ref()?;
        let since = p.gone_since?;
        let gone = secs(now.saturating_duration_since(since));
        Some(if p.named {
            format!(
                "the engine at {} ({}) has not answered for {gone}: waiting for it (the host \
                 names it; no other engine is taken)",
                p.path, p.found_by
            )
        } else {
            format!(
                "the engine at {} ({}) has not answered for {gone}: waiting for it (another \
                 engine found on the host is taken after {} gone: engine_gone_after)",
                p.path,
                p.found_by,
                secs(gone_after)
            )
        })
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(lines: &[(&str, &str, &str)]) -> Vec<Candidate> {
        let text: String = lines
            .iter()
            .map(|(s, p, st)| format!("{s}\t{p}\t{st}\n"))
            .collect();
        discovery::parse(&text)
    }

    const DOCKER: &str = "/var/run/docker.sock";
    const PODMAN: &str = "/run/podman/podman.sock";
    const GONE_AFTER: Duration = Duration::from_secs(300);

    #[test]
    fn nothing_pinned_leaves_the_choice_to_discovery() {
        let mut pin = EnginePin::default();
        let now = Instant::now();
        let found = cands(&[("docker", DOCKER, "socket")]);
        assert_eq!(pin.keep(&found, GONE_AFTER, now), None);
        assert!(!pin.answers_over_stream_local(DOCKER));
        pin.lost(now);
        assert_eq!(pin.waiting(GONE_AFTER, now), None);
    }

    #[test]
    fn a_found_engine_that_restarts_is_waited_for_then_given_up_loudly() {
        let t0 = Instant::now();
        let mut pin = EnginePin::default();
        assert_eq!(
            pin.answered(DOCKER, "Docker's default socket", true, t0),
            None
        );
        // dockerd stops: its socket is gone, Podman's answers beside it.
        let t1 = t0 + Duration::from_secs(60);
        assert!(pin.answers_over_stream_local(DOCKER));
        pin.lost(t1);
        let restarting = cands(&[("podman", PODMAN, "socket"), ("docker", DOCKER, "missing")]);
        for later in [0, 10, 299] {
            let now = t1 + Duration::from_secs(later);
            assert!(!pin.gone_for_good(GONE_AFTER, now));
            assert_eq!(
                pin.keep(&restarting, GONE_AFTER, now),
                Some((DOCKER.to_string(), "Docker's default socket")),
                "{later} s after it went"
            );
            let waiting = pin.waiting(GONE_AFTER, now).expect("status says so");
            assert!(
                waiting.contains(DOCKER) && waiting.contains("engine_gone_after"),
                "{waiting}"
            );
        }
        // It comes back: the same engine, the clock stops.
        let back = t1 + Duration::from_secs(20);
        assert_eq!(
            pin.answered(DOCKER, "Docker's default socket", true, back),
            None
        );
        assert_eq!(pin.waiting(GONE_AFTER, back), None);
        // Gone again, now for good: discovery chooses, and the engine that
        // answers next is reported as the replacement.
        let t2 = back + Duration::from_secs(5);
        pin.lost(t2);
        pin.lost(t2 + Duration::from_secs(100));
        assert!(
            pin.gone_for_good(GONE_AFTER, t2 + GONE_AFTER),
            "the clock runs from the first loss"
        );
        let late = t2 + GONE_AFTER;
        assert!(pin.gone_for_good(GONE_AFTER, late));
        assert_eq!(pin.keep(&restarting, GONE_AFTER, late), None);
        assert_eq!(pin.pinned(), None);
        let replaced = pin
            .answered(
                PODMAN,
                "Podman's socket",
                true,
                late + Duration::from_secs(1),
            )
            .expect("a replacement");
        assert_eq!(replaced.from, DOCKER);
        assert_eq!(replaced.to, PODMAN);
        assert_eq!(replaced.gone_for, GONE_AFTER + Duration::from_secs(1));
        assert_eq!(pin.pinned().map(|p| p.path.as_str()), Some(PODMAN));
    }

    #[test]
    fn the_same_engine_found_again_after_giving_up_is_no_replacement() {
        let t0 = Instant::now();
        let mut pin = EnginePin::default();
        pin.answered(DOCKER, "Docker's default socket", true, t0);
        pin.lost(t0);
        let later = t0 + GONE_AFTER;
        assert_eq!(
            pin.keep(&cands(&[("docker", DOCKER, "socket")]), GONE_AFTER, later),
            None
        );
        assert_eq!(
            pin.answered(DOCKER, "Docker's default socket", true, later),
            None
        );
    }

    #[test]
    fn an_engine_the_host_names_is_never_given_up() {
        let t0 = Instant::now();
        let mut pin = EnginePin::default();
        pin.answered("/srv/docker.sock", "DOCKER_HOST", true, t0);
        pin.lost(t0);
        let found = cands(&[
            ("env", "/srv/docker.sock", "missing"),
            ("podman", PODMAN, "socket"),
        ]);
        let much_later = t0 + GONE_AFTER * 100;
        assert!(!pin.gone_for_good(GONE_AFTER, much_later));
        assert_eq!(
            pin.keep(&found, GONE_AFTER, much_later),
            Some(("/srv/docker.sock".to_string(), "DOCKER_HOST"))
        );
        assert!(pin
            .waiting(GONE_AFTER, much_later)
            .is_some_and(|w| w.contains("no other engine")));
        // engine_remote_socket, and a context of the user's, name it too.
        for (found_by, path) in [
            ("engine_remote_socket", DOCKER),
            ("docker context", "/home/u/podman.sock"),
        ] {
            let mut pin = EnginePin::default();
            pin.answered(path, found_by, true, t0);
            pin.lost(t0);
            assert!(!pin.gone_for_good(GONE_AFTER, much_later), "{found_by}");
        }
        // The default context names Docker's default socket: no choice.
        let mut pin = EnginePin::default();
        pin.answered(DOCKER, "docker context", true, t0);
        pin.lost(t0);
        assert!(pin.gone_for_good(GONE_AFTER, t0 + GONE_AFTER));
    }

    #[test]
    fn a_new_name_from_the_host_is_taken_at_once() {
        let t0 = Instant::now();
        let mut pin = EnginePin::default();
        pin.answered(DOCKER, "Docker's default socket", true, t0);
        let now_named = cands(&[("env", PODMAN, "socket"), ("docker", DOCKER, "socket")]);
        assert_eq!(pin.keep(&now_named, GONE_AFTER, t0), None);
        let mut pin = EnginePin::default();
        pin.answered("/srv/a.sock", "DOCKER_HOST", true, t0);
        let renamed = cands(&[("env", "/srv/b.sock", "socket")]);
        assert_eq!(pin.keep(&renamed, GONE_AFTER, t0), None);
    }

    #[test]
    fn a_failed_channel_to_an_engine_never_reached_over_stream_local_is_not_a_loss() {
        // sshd may forbid stream-local channels: that is the route's
        // question, not the engine's.
        let t0 = Instant::now();
        let mut pin = EnginePin::default();
        pin.answered(DOCKER, "Docker's default socket", false, t0);
        assert!(!pin.answers_over_stream_local(DOCKER));
        pin.answered(DOCKER, "Docker's default socket", true, t0);
        assert!(
            !pin.answers_over_stream_local(PODMAN),
            "not the pinned engine"
        );
        assert!(pin.answers_over_stream_local(DOCKER));
        // Once it did, it still does after an answer over dial-stdio.
        pin.answered(DOCKER, "Docker's default socket", false, t0);
        assert!(pin.answers_over_stream_local(DOCKER));
    }
}
