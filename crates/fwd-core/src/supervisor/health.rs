//! What status reports about one host's link.

use std::time::{Duration, Instant};

use super::io::{EngineRoute, Failure};
use crate::classify::FailureKind;

/// How the engine is reached, as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineHealth {
    /// `None` until the current master's route is settled.
    pub route: Option<EngineRoute>,
    /// The engine's socket on the remote host, when known.
    pub remote_socket: Option<String>,
    /// Why the route is `DialStdio`.
    pub reason: Option<String>,
    /// How the engine was found (`engine_remote_socket`, `DOCKER_HOST`,
    /// "rootless Podman's socket", …).
    pub found_by: Option<&'static str>,
    /// The engine runs rootless, as it says itself (Docker's `/info`,
    /// Podman's `/libpod/info`); `None` until it has said.
    pub rootless: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasterPhase {
    Connecting,
    Connected,
    Backoff,
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamPhase {
    Streaming,
    Resyncing,
    Down,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LastError {
    pub kind: FailureKind,
    pub message: String,
    pub at: Instant,
}

/// What status reports about one host's link.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub master: MasterPhase,
    pub master_pid: Option<u32>,
    /// When `master` last changed.
    pub since: Instant,
    pub last_probe_rtt: Option<Duration>,
    pub reconnects: u64,
    /// Reconnects by what ended the previous master's link: a failure
    /// kind (`master_died`, `timeout`, …) or `requested`.
    pub reconnect_reasons: std::collections::BTreeMap<&'static str, u64>,
    pub consecutive_failures: u32,
    pub last_error: Option<LastError>,
    pub next_retry: Option<Instant>,
    pub stream: StreamPhase,
    pub events_received: u64,
    pub last_event: Option<Instant>,
    pub stream_restarts: u64,
    pub docker_version: Option<String>,
    /// Since when no network is usable while the master is kept.
    pub network_lost_since: Option<Instant>,
    pub engine: EngineHealth,
}

impl Health {
    pub(super) fn new(now: Instant) -> Self {
        Health {
            master: MasterPhase::Connecting,
            master_pid: None,
            since: now,
            last_probe_rtt: None,
            reconnects: 0,
            reconnect_reasons: std::collections::BTreeMap::new(),
            consecutive_failures: 0,
            last_error: None,
            next_retry: None,
            stream: StreamPhase::Down,
            events_received: 0,
            last_event: None,
            stream_restarts: 0,
            docker_version: None,
            network_lost_since: None,
            engine: EngineHealth::default(),
        }
    }

    /// A failure, retried at `next_retry`: the stream is down until then.
    pub(super) fn failed(&mut self, f: &Failure, failures: u32, next_retry: Instant, now: Instant) {
        self.stream = StreamPhase::Down;
        self.consecutive_failures = failures;
        self.last_error = Some(LastError {
            kind: f.kind,
            message: f.message.clone(),
            at: now,
        });
        self.next_retry = Some(next_retry);
    }

    /// The master is connected: a reconnect is counted by why the last
    /// link ended.
    pub(super) fn connected(&mut self, reconnect: Option<&'static str>, now: Instant) {
        if let Some(reason) = reconnect {
            self.reconnects += 1;
            *self.reconnect_reasons.entry(reason).or_default() += 1;
        }
        self.set_master(MasterPhase::Connected, now);
    }

    /// Resynced and streaming on the master `pid`; `probe_rtt`: the setup's
    /// round trip, the first figure of the probe's.
    pub(super) fn streaming(&mut self, pid: Option<u32>, probe_rtt: Option<Duration>) {
        self.master_pid = pid;
        self.consecutive_failures = 0;
        self.next_retry = None;
        self.last_probe_rtt = probe_rtt;
        self.stream = StreamPhase::Streaming;
    }

    /// The master failed; the next attempt is at `next_retry`.
    pub(super) fn master_failed(
        &mut self,
        f: &Failure,
        failures: u32,
        next_retry: Instant,
        now: Instant,
    ) {
        self.set_master(MasterPhase::Backoff, now);
        self.master_pid = None;
        self.failed(f, failures, next_retry, now);
    }

    /// Waiting to retry at `next_retry` after `failures` failures (the
    /// upgraded image's wait, going on).
    pub(super) fn backing_off(&mut self, failures: u32, next_retry: Instant, now: Instant) {
        self.set_master(MasterPhase::Backoff, now);
        self.consecutive_failures = failures;
        self.next_retry = Some(next_retry);
    }

    /// The engine is Podman, as its version says.
    pub(super) fn is_podman(&self) -> bool {
        self.docker_version
            .as_deref()
            .is_some_and(|v| v.starts_with("Podman "))
    }

    /// How long the master has been connected; zero when it is not.
    pub(super) fn connected_for(&self, now: Instant) -> Duration {
        match self.master {
            MasterPhase::Connected => now.saturating_duration_since(self.since),
            _ => Duration::ZERO,
        }
    }

    /// fwd stops: nothing runs, nothing is retried.
    pub(super) fn stopped(&mut self, now: Instant) {
        self.set_master(MasterPhase::Stopped, now);
        self.stream = StreamPhase::Down;
        self.master_pid = None;
        self.next_retry = None;
        self.network_lost_since = None;
    }

    pub(super) fn set_master(&mut self, phase: MasterPhase, now: Instant) {
        if self.master != phase {
            self.master = phase;
            self.since = now;
        }
    }
}
