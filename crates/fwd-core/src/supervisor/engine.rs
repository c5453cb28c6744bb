//! Which engine a host's channels reach, and by which route: discovery's
//! answer read against the engine pinned once it answered
//! ([`EnginePin`]), the other sockets found tried in turn while none has
//! answered yet, and the route — stream-local while the master holds a
//! forward to the engine's socket, dial-stdio when there is none or sshd
//! refuses such channels.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::io::{EngineRoute, Handover};
use super::pin::{EnginePin, Replaced};
use super::rootless::RootlessQuestion;
use crate::discovery::{self, State};

#[derive(Debug)]
pub struct EngineChoice {
    pin: EnginePin,
    /// Sockets found after the one in use, tried in turn when it does not
    /// answer (a socket left by an engine that is gone).
    alternatives: VecDeque<(String, &'static str)>,
    /// The master holds a stream-local forward to the engine's socket.
    forwarded: bool,
    /// The route the current master's channels take.
    route: EngineRoute,
    /// Whether the engine runs rootless: asked once per socket.
    rootless: RootlessQuestion,
}

/// What discovery's answer leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Forward to this socket.
    Socket {
        path: String,
        found_by: &'static str,
    },
    /// No socket, but the CLI reaches an engine elsewhere (`tcp://…`):
    /// dial-stdio sessions do.
    Elsewhere { found_by: &'static str, why: String },
    /// None: every place tried, and what was there.
    Nothing(String),
}

/// What a stream-local channel that ended at once means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The pinned engine is gone (restarting): wait for it, same master,
    /// same route; `waiting` says so for status.
    EngineGone { waiting: Option<String> },
    /// Try the next socket found.
    Next {
        path: String,
        found_by: &'static str,
    },
    /// Suspect stream-local channels: dial-stdio from now on this master.
    DialStdio,
}

impl EngineChoice {
    pub fn new() -> Self {
        EngineChoice {
            pin: EnginePin::default(),
            alternatives: VecDeque::new(),
            forwarded: false,
            route: EngineRoute::DialStdio,
            rootless: RootlessQuestion::default(),
        }
    }

    /// The question whether the engine runs rootless.
    pub fn rootless(&mut self) -> &mut RootlessQuestion {
        &mut self.rootless
    }

    /// What the upgraded image had: its master's route and forward, and the
    /// engine it served (`pinned`: its socket, how it was found, and whether
    /// it answered over stream-local channels).
    fn adopt(
        route: EngineRoute,
        forwarded: bool,
        pinned: Option<(&str, &'static str, bool)>,
        now: Instant,
    ) -> Self {
        let mut e = EngineChoice {
            route,
            forwarded,
            ..EngineChoice::new()
        };
        if let Some((path, found_by, over_stream_local)) = pinned {
            e.pin.answered(path, found_by, over_stream_local, now);
        }
        e
    }

    /// What the upgraded image's handover says: an engine that was serving
    /// is the host's engine, as before the upgrade (and whether it runs
    /// rootless, known for its socket: not asked again, and the first plan
    /// decides the same routes); the route and forward are the master's, if
    /// it has one.
    pub fn from_handover(from: &Handover, now: Instant) -> Self {
        let pinned = match (&from.remote_socket, &from.docker_version) {
            (Some(path), Some(_)) => Some((
                path.as_str(),
                from.found_by.unwrap_or("unknown"),
                from.route == EngineRoute::StreamLocal,
            )),
            _ => None,
        };
        let (route, forwarded) = match from.master_pid {
            Some(_) => (from.route, from.engine_forwarded),
            None => (EngineRoute::DialStdio, false),
        };
        let mut e = EngineChoice::adopt(route, forwarded, pinned, now);
        if let Some(rootless) = from.rootless {
            let socket = from.remote_socket.clone().unwrap_or_default();
            e.rootless = RootlessQuestion::known_for(socket, rootless);
        }
        e
    }

    /// A new master: no forward on it yet, nothing to try in turn.
    pub fn new_master(&mut self) {
        self.forwarded = false;
        self.alternatives.clear();
    }

    pub fn route(&self) -> EngineRoute {
        self.route
    }

    pub fn forwarded(&self) -> bool {
        self.forwarded
    }

    /// The master holds the forward to the engine's socket now.
    pub fn forward_registered(&mut self) {
        self.forwarded = true;
    }

    /// The route to open channels on: stream-local whenever the forward
    /// exists (every attempt tries the cheap route first: it may have
    /// failed only while the engine was away).
    pub fn open_route(&mut self) -> EngineRoute {
        self.route = if self.forwarded {
            EngineRoute::StreamLocal
        } else {
            EngineRoute::DialStdio
        };
        self.route
    }

    /// Discovery answered: the pinned engine (found again or waited for,
    /// never another beside it), else the one it chooses, else one the CLI
    /// reaches elsewhere, else none.
    pub fn discovered(&mut self, answer: &str, gone_after: Duration, now: Instant) -> Found {
        let candidates = discovery::parse(answer);
        if let Some((path, found_by)) = self.pin.keep(&candidates, gone_after, now) {
            self.alternatives.clear();
            return Found::Socket { path, found_by };
        }
        match discovery::choose(&candidates) {
            Ok(found) => {
                self.alternatives = discovery::usable(&candidates)
                    .into_iter()
                    .skip(1)
                    .map(|c| (c.path.clone(), c.source.as_str()))
                    .collect();
                Found::Socket {
                    path: found.path.clone(),
                    found_by: found.source.as_str(),
                }
            }
            Err(none) => match discovery::named(&candidates).filter(|c| c.state == State::Other) {
                Some(other) => Found::Elsewhere {
                    found_by: other.source.as_str(),
                    why: format!(
                        "the remote engine listens at {}, not on a Unix socket",
                        other.path
                    ),
                },
                None => Found::Nothing(none),
            },
        }
    }

    /// A stream-local channel to `socket` ended at once.
    pub fn stream_local_ended(
        &mut self,
        socket: &str,
        gone_after: Duration,
        now: Instant,
    ) -> Ended {
        if self.pin.answers_over_stream_local(socket) {
            self.pin.lost(now);
            return Ended::EngineGone {
                waiting: self.pin.waiting(gone_after, now),
            };
        }
        if let Some((path, found_by)) = self.alternatives.pop_front() {
            return Ended::Next { path, found_by };
        }
        self.route = EngineRoute::DialStdio;
        Ended::DialStdio
    }

    /// The engine on `socket` answered on `route`: the host's engine from
    /// now on; what it replaced, if one gone for good was given up for it.
    pub fn answered(
        &mut self,
        socket: &str,
        found_by: &'static str,
        route: EngineRoute,
        now: Instant,
    ) -> Option<Replaced> {
        self.alternatives.clear();
        self.pin
            .answered(socket, found_by, route == EngineRoute::StreamLocal, now)
    }

    /// The engine found by the search has been gone for `gone_after`:
    /// search again.
    pub fn search_again(&self, gone_after: Duration, now: Instant) -> bool {
        self.pin.gone_for_good(gone_after, now)
    }

    /// The pinned engine is away: it is looked for often.
    pub fn engine_gone(&self) -> bool {
        self.pin.is_gone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GONE_AFTER: Duration = Duration::from_secs(300);

    #[test]
    fn before_any_answer_the_next_socket_is_tried_then_dial_stdio() {
        let t0 = Instant::now();
        let mut e = EngineChoice::new();
        let found = e.discovered(
            "docker\t/var/run/docker.sock\tsocket\npodman\t/run/podman/podman.sock\tsocket\n",
            GONE_AFTER,
            t0,
        );
        assert_eq!(
            found,
            Found::Socket {
                path: "/var/run/docker.sock".into(),
                found_by: "Docker's default socket"
            }
        );
        e.forward_registered();
        assert_eq!(e.open_route(), EngineRoute::StreamLocal);
        assert_eq!(
            e.stream_local_ended("/var/run/docker.sock", GONE_AFTER, t0),
            Ended::Next {
                path: "/run/podman/podman.sock".into(),
                found_by: "Podman's socket"
            }
        );
        assert_eq!(
            e.stream_local_ended("/run/podman/podman.sock", GONE_AFTER, t0),
            Ended::DialStdio
        );
        assert_eq!(e.route(), EngineRoute::DialStdio);
    }

    #[test]
    fn once_an_engine_answered_a_channel_that_ends_means_it_is_gone() {
        let t0 = Instant::now();
        let mut e = EngineChoice::new();
        e.discovered(
            "docker\t/var/run/docker.sock\tsocket\npodman\t/run/podman/podman.sock\tsocket\n",
            GONE_AFTER,
            t0,
        );
        e.forward_registered();
        e.open_route();
        let sock = "/var/run/docker.sock";
        assert_eq!(
            e.answered(
                sock,
                "Docker's default socket",
                EngineRoute::StreamLocal,
                t0
            ),
            None
        );
        match e.stream_local_ended(sock, GONE_AFTER, t0) {
            Ended::EngineGone { waiting: Some(w) } => assert!(w.contains(sock), "{w}"),
            other => panic!("{other:?}"),
        }
        assert!(e.engine_gone());
        assert_eq!(
            e.route(),
            EngineRoute::StreamLocal,
            "no dial-stdio for a gone engine"
        );
        assert!(!e.search_again(GONE_AFTER, t0));
        assert!(e.search_again(GONE_AFTER, t0 + GONE_AFTER));
    }

    #[test]
    fn an_engine_elsewhere_or_none_is_said() {
        let t0 = Instant::now();
        let mut e = EngineChoice::new();
        assert!(matches!(
            e.discovered("env\ttcp://10.0.0.5:2375\tother\n", GONE_AFTER, t0),
            Found::Elsewhere {
                found_by: "DOCKER_HOST",
                ..
            }
        ));
        assert!(matches!(
            e.discovered("docker\t/var/run/docker.sock\tmissing\n", GONE_AFTER, t0),
            Found::Nothing(_)
        ));
    }
}
