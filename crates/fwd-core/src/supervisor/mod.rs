//! The host supervisor as a sans-I/O state machine.
//!
//! One [`HostMachine`] per Docker host decides everything about its link:
//! when to spawn the ControlMaster, what to ask the engine and in which
//! order, when a request has waited too long, when to retry and how soon,
//! when to publish or withdraw the link, and what to log. It never performs
//! I/O and never reads a clock: the daemon feeds it [`Input`]s with the
//! current `Instant`, carries out the [`Command`]s it returns
//! ([`HostMachine::poll_command`]) and calls [`HostMachine::handle_timeout`]
//! at [`HostMachine::poll_timeout`] — the same instant the daemon promises
//! to systemd's watchdog, so the promise cannot drift from what the machine
//! will do.
//!
//! The shape follows quinn-proto's `Connection`: inputs in, commands out,
//! one deadline. Policies (backoff, the no-network rule, the link-flap rule,
//! "a request without an answer indicts the connection") are therefore unit
//! tests with a fake clock, not minute-long end-to-end runs.
//!
//! Invariants:
//! - at most one operation is in flight ([`Command::Start`]), besides up to
//!   [`INSPECTS_AT_ONCE`] inspects after events ([`Command::Inspect`]); every
//!   answer is matched by [`OpId`], so one from before a teardown is ignored;
//! - an event waits while its container is being inspected, so an answer
//!   asked before the event is never applied after it;
//! - every operation has a deadline, and an operation that misses it while a
//!   network is usable replaces the master;
//! - the link is published only after subscribe → list → inspect, in that order;
//! - while no network is usable nothing is retried, and a live master is not
//!   torn down (OpenSSH's keepalive ends it if the outage outlasts its budget).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::classify::{FailureClass, FailureKind};
use crate::model::{Container, ContainerEvent, ContainerId};
use crate::repeat::UpLog;

mod engine;
mod health;
mod io;
mod link;
mod ops;
mod phase;
mod pin;
mod policy;
mod record;
mod retry;
mod rootless;
mod said;
mod schedule;
mod tracker;

pub use crate::defaults::ENGINE_GONE_AFTER;
use engine::{Ended, EngineChoice, Found};
pub use health::{EngineHealth, Health, LastError, MasterPhase, StreamPhase};
pub use io::{
    Command, EngineRoute, Failure, Handover, Input, Op, OpId, Outcome, DEFAULT_ENGINE_SOCKET,
};
use link::Link;
use ops::{InFlight, Operations, Purpose};
use phase::Phase;
pub use policy::HostPolicy;
pub use record::Record;
use retry::Retry;
use rootless::Ask;
#[cfg(test)]
use said::without_numbers;
use said::Said;
use schedule::Schedule;
use tracker::Tracker;
pub use tracker::CHANGES_HELD_AT_MOST;

/// dockerd drops an API connection idle for 5 minutes: probe more often.
const API_IDLE_LIMIT: Duration = Duration::from_secs(240);

/// The master's own ready timeout fires first and carries ssh's stderr;
/// the machine's deadline on the spawn is only a backstop.
const SPAWN_SLACK: Duration = Duration::from_secs(5);

/// Is the master alive after a channel failed? A local mux round trip.
const CHECK_MASTER_TIMEOUT: Duration = Duration::from_secs(2);

/// Inspects after events that run at once, each on an API channel of its
/// own, beside the one serial operation. dockerd answers an inspect only
/// once the container's `start` is done (it holds the container's lock), a
/// few hundred ms under load: one at a time, a container's start would hold
/// back every other container's event behind it (a `create` whose port is
/// then bound after `docker run` has returned). Only over stream-local
/// channels: dial-stdio would spend an SSH session on each.
pub const INSPECTS_AT_ONCE: usize = 4;

pub struct HostMachine {
    policy: HostPolicy,
    phase: Phase,
    health: Health,
    health_changed: bool,
    commands: VecDeque<Command>,
    /// The serial operation out, and the inspects beside it.
    ops: Operations,
    rng: u64,

    /// The containers, their events, inspects and resync.
    tracker: Tracker,

    /// The master's connection: its backoff and what was said of it.
    master: Retry,
    /// The master, its generation, whether the link is published.
    link: Link,
    /// Which engine, and the route its channels take.
    engine: EngineChoice,

    /// The Docker channels on a live master, likewise.
    channels: Retry,

    /// The up link's health probes and resyncs.
    schedule: Schedule,

    net_usable: bool,

    /// What is said only now and then.
    said: Said,
}

impl HostMachine {
    /// A machine about to connect: the first command is `SpawnMaster` (or a
    /// wait for a network when none is usable). `seed` feeds the jitter.
    pub fn new(policy: HostPolicy, net_usable: bool, seed: u64, now: Instant) -> Self {
        let mut m = Self::idle(policy, net_usable, seed, now);
        m.handle_timeout(now);
        m
    }

    /// A machine that takes over from the fwdd image it replaced (a binary
    /// upgrade): it knows the containers and the event position, so nothing
    /// is withdrawn while it resumes. With a master, the first command is a
    /// mux alive check of it; once it answers, the link is published at
    /// once (the forwards keep serving through the same master) and the
    /// Docker channels are reopened and resynced behind it. Without one (the
    /// old image was between masters), it connects as [`new`](Self::new)
    /// does.
    pub fn adopt(
        policy: HostPolicy,
        net_usable: bool,
        seed: u64,
        now: Instant,
        from: Handover,
    ) -> Self {
        let mut m = Self::idle(policy, net_usable, seed, now);
        m.engine = EngineChoice::from_handover(&from, now);
        m.tracker = Tracker::adopt(from.containers, from.since_ns, now);
        m.health.docker_version = from.docker_version.clone();
        m.said.version_said(from.docker_version);
        m.health.engine.rootless = from.rootless;
        m.health.engine.remote_socket = from.remote_socket;
        m.health.engine.found_by = from.found_by;
        m.master.resume(from.failures, from.episode, now);
        m.commands.push_back(Command::ContainersChanged);
        match from.master_pid {
            Some(pid) => {
                m.link = Link::adopted(pid);
                m.health.master_pid = Some(pid);
                // Connected as far as anyone can tell: the old image's
                // tunnels flow through it. The alive check below says
                // otherwise within a second if it must.
                m.phase = Phase::Setup;
                m.health.set_master(MasterPhase::Connected, now);
                m.health.since = now.checked_sub(from.connected_for).unwrap_or(now);
                m.start(Purpose::Adopt, Op::CheckMaster, CHECK_MASTER_TIMEOUT, now);
            }
            None => {
                if let Some(wait) = from.retry_in.filter(|d| !d.is_zero()) {
                    // Backing off: the wait goes on where the old image left it.
                    m.phase = Phase::Backoff {
                        until: now + wait,
                        early_wake: true,
                        failed_at: now,
                    };
                    m.health.backing_off(from.failures, now + wait, now);
                }
                m.handle_timeout(now);
            }
        }
        m
    }

    /// What the next fwdd image needs to resume this host without a new
    /// master: the master (when one is up), the route its channels take,
    /// the containers and the event position.
    pub fn handover(&self, now: Instant) -> Handover {
        let master_up = self.phase.master_up();
        Handover {
            master_pid: self.link.master_pid().filter(|_| master_up),
            route: self.engine.route(),
            engine_forwarded: self.engine.forwarded(),
            remote_socket: self.health.engine.remote_socket.clone(),
            found_by: self.health.engine.found_by,
            since_ns: self.tracker.since_ns(),
            containers: self.tracker.containers().values().cloned().collect(),
            docker_version: self.health.docker_version.clone(),
            rootless: self.health.engine.rootless,
            connected_for: self.health.connected_for(now),
            failures: self.master.failures(),
            retry_in: match self.phase {
                Phase::Backoff { until, .. } => Some(until.saturating_duration_since(now)),
                _ => None,
            },
            episode: self.master.snapshot(),
        }
    }

    fn idle(policy: HostPolicy, net_usable: bool, seed: u64, now: Instant) -> Self {
        HostMachine {
            master: Retry::new(&policy.backoff, policy.summary_every, now),
            channels: Retry::new(&policy.backoff, policy.summary_every, now),
            said: Said::new(policy.summary_every),
            policy,
            phase: Phase::Backoff {
                until: now,
                early_wake: true,
                failed_at: now,
            },
            health: Health::new(now),
            health_changed: true,
            commands: VecDeque::new(),
            ops: Operations::default(),
            rng: seed | 1,
            tracker: Tracker::default(),
            link: Link::default(),
            engine: EngineChoice::new(),
            schedule: Schedule::new(now),
            net_usable,
        }
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next;
    /// `None`: nothing happens until an input arrives (waiting for a
    /// network, or stopped).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let tell = self.tracker.change_deadline();
        self.next_deadline().into_iter().chain(tell).min()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let ops = self.ops.next_deadline();
        if self.ops.serial().is_some() {
            return ops;
        }
        ops.into_iter().chain(self.phase_deadline()).min()
    }

    /// When the current phase's wait ends, or its next piece of work is due.
    fn phase_deadline(&self) -> Option<Instant> {
        if let Some(until) = self.phase.wait_ends() {
            return Some(until);
        }
        let working = self.phase == Phase::Up && self.health.network_lost_since.is_none();
        working.then(|| {
            let expiry = self.tracker.pending_expiry(self.policy.pending_timeout);
            self.schedule.deadline(expiry)
        })
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// True once since the last call if anything in [`health`](Self::health) changed.
    pub fn take_health_changed(&mut self) -> bool {
        std::mem::take(&mut self.health_changed)
    }

    /// The host's running containers as last seen.
    pub fn containers(&self) -> &HashMap<ContainerId, Container> {
        self.tracker.containers()
    }

    /// Whether the shell should read the event stream now: once the link is
    /// up, while the machine's queue has room. Events are read during an
    /// operation too, so a burst is seen whole; they are handled in order,
    /// between operations.
    pub fn wants_events(&self) -> bool {
        self.phase == Phase::Up && self.tracker.wants_events()
    }

    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.step(now);
        self.tell_changes(now);
    }

    /// Whatever is due now: an operation's deadline, the end of a wait, the
    /// next piece of work.
    fn step(&mut self, now: Instant) {
        if let Some(op) = self.ops.take_late(now) {
            return self.op_timed_out(op, now);
        }
        if self.ops.serial().is_some() {
            return;
        }
        match self.phase {
            Phase::Backoff { until, .. } if now >= until => {
                if self.net_usable {
                    self.connect(now);
                } else {
                    self.phase = Phase::NoNetwork;
                    self.log(Record::WaitingForNetwork);
                }
            }
            Phase::ChannelBackoff { until } if now >= until => self.open_channels(now),
            Phase::Up => self.next_work(now),
            _ => {}
        }
    }

    pub fn handle(&mut self, input: Input, now: Instant) {
        if self.phase == Phase::Stopped {
            return;
        }
        match input {
            Input::Done(id, outcome) => self.answered(id, outcome, now),
            Input::MasterExited { how, stderr_tail } => self.master_exited(&how, &stderr_tail, now),
            Input::MasterStderr(line) => self.master_said(line, now),
            Input::Events(events) => {
                for ev in events {
                    self.receive_event(ev, now);
                }
            }
            Input::StartSeen(id) => {
                if self.phase == Phase::Up {
                    self.tracker.start_seen(id);
                }
            }
            Input::EventSkipped(reason) => {
                if self.said.skipped_event(now) {
                    self.log(Record::EventSkipped { reason });
                }
            }
            Input::StreamFailed(f) => {
                if matches!(self.phase, Phase::Setup | Phase::Up) {
                    self.channel_failed(f, now);
                }
            }
            Input::Network { usable } => self.on_network(usable, now),
            Input::Resumed => self.on_wake(now),
            Input::ReconnectRequested => {
                if self.phase == Phase::Up {
                    self.link.lost("requested");
                }
                self.log(Record::ReconnectRequested);
                self.master.reset();
                self.teardown();
                self.connect(now);
            }
            Input::ResyncRequested => {
                if self.phase == Phase::Up {
                    self.log(Record::ResyncRequested);
                    self.schedule.want_resync();
                }
            }
            Input::PolicyChanged(p) => {
                self.master.set_policy(p.backoff.clone());
                self.channels.set_policy(p.backoff.clone());
                self.policy = p;
            }
            Input::Shutdown => return self.shut_down(now),
        }
        self.handle_timeout(now);
    }

    /// An operation (or the rootless question) answered; an answer to an
    /// operation abandoned meanwhile is ignored.
    fn answered(&mut self, id: OpId, outcome: Outcome, now: Instant) {
        if let Some(op) = self.ops.answered(id) {
            self.op_done(op, outcome, now);
        } else if self.engine.rootless().is_answer(id) {
            self.answered_rootless(outcome);
        }
    }

    /// The master exited: its stderr says why, when it says anything known.
    fn master_exited(&mut self, how: &str, stderr_tail: &str, now: Instant) {
        if self.link.master_pid().is_none() {
            return;
        }
        self.master_failed(Failure::master_exited(how, stderr_tail), now);
    }

    /// A line of the master's stderr: a refused channel is about a
    /// container, not the link (debug only); anything else is said once in
    /// a while.
    fn master_said(&mut self, line: String, now: Instant) {
        if line.contains("open failed") {
            self.log(Record::ChannelOpenFailed { line });
        } else if self.said.stderr_line(&line, now) {
            self.log(Record::SshStderr { line });
        }
    }

    fn shut_down(&mut self, now: Instant) {
        self.teardown();
        self.phase = Phase::Stopped;
        self.health.stopped(now);
        self.health_changed = true;
    }

    // ---- operations ----

    fn start(&mut self, purpose: Purpose, op: Op, timeout: Duration, now: Instant) {
        let serial = self.ops.issue(purpose, timeout, self.net_usable, now);
        self.commands.push_back(Command::Start(serial.id, op));
        self.ops.set_serial(serial);
    }

    /// An event's inspect beside the serial operation.
    fn start_inspect(&mut self, id: ContainerId, now: Instant) {
        let timeout = self.policy.request_timeout;
        let purpose = Purpose::EventInspect(id.clone());
        let op = self.ops.issue(purpose, timeout, self.net_usable, now);
        self.commands.push_back(Command::Inspect(op.id, id));
        self.ops.add_inspect(op);
    }

    fn request(&mut self, purpose: Purpose, op: Op, now: Instant) {
        let timeout = self.policy.request_timeout;
        self.start(purpose, op, timeout, now);
    }

    fn op_done(&mut self, op: InFlight, outcome: Outcome, now: Instant) {
        let rtt = now.saturating_duration_since(op.issued);
        match (op.purpose, outcome) {
            (Purpose::Spawn, Outcome::MasterReady { pid }) => self.master_ready(pid, now),
            (Purpose::Spawn, Outcome::Failed(f)) => self.master_failed(f, now),
            (Purpose::Adopt, Outcome::Answered) => self.adopted_master_answers(now),
            (Purpose::Adopt, Outcome::Failed(f)) => self.master_failed(f, now),
            (Purpose::Adopt, other) => self.master_failed(Failure::unexpected(other), now),
            (Purpose::Discover, Outcome::Discovered(answer)) => {
                self.engine_discovered(&answer, now)
            }
            (Purpose::ForwardEngine, Outcome::Answered) => {
                self.engine.forward_registered();
                self.open_channels(now);
            }
            (Purpose::ForwardEngine, Outcome::Failed(f)) if f.kind != FailureKind::MasterDied => {
                self.health.engine.reason = Some(format!(
                    "the master could not forward to the engine's socket: {}",
                    f.message
                ));
                self.open_channels(now);
            }
            (Purpose::FirstSession, Outcome::Answered) => {
                self.health.engine.found_by = Some("engine_remote_socket");
                let path = self.policy.engine_socket.clone();
                self.forward_engine(path.unwrap_or_else(|| DEFAULT_ENGINE_SOCKET.into()), now);
            }
            (Purpose::OpenApi(EngineRoute::StreamLocal), Outcome::Failed(f))
                if f.kind == FailureKind::StreamEnded =>
            {
                self.stream_local_ended(f, now)
            }
            (Purpose::OpenApi(route), Outcome::ApiReady { version }) => {
                self.api_ready(route, version, rtt, now)
            }
            (Purpose::Subscribe, Outcome::Subscribed) => self.begin_resync(now),
            (Purpose::List, Outcome::Listed(ids)) => {
                self.tracker.resync_listed(ids);
                self.continue_resync(now);
            }
            (Purpose::ResyncInspect(id), Outcome::Inspected(c)) => {
                self.tracker.resync_inspected(id, c);
                self.continue_resync(now);
            }
            (Purpose::ResyncInspect(id), Outcome::Unparsable(error)) => {
                self.log(Record::InspectUnparsable {
                    container: id,
                    error,
                });
                self.continue_resync(now);
            }
            (Purpose::EventInspect(id), Outcome::Inspected(c)) => {
                self.tracker.inspected(id, c, now);
            }
            (Purpose::EventInspect(id), Outcome::Unparsable(error)) => {
                self.log(Record::InspectUnparsable {
                    container: id,
                    error,
                });
            }
            (Purpose::Rootless, Outcome::Failed(f)) => self.channel_failed(f, now),
            // Not knowing is no failure.
            (Purpose::Rootless, outcome) => self.answered_rootless(outcome),
            (Purpose::Probe, Outcome::Answered) => {
                self.health.last_probe_rtt = Some(rtt);
                self.health_changed = true;
            }
            (Purpose::CheckMaster(f), Outcome::Answered) => self.channels_down(f, now),
            (Purpose::CheckMaster(f), _) => {
                // The channel failed because the connection under it did:
                // said as that, since the channel's own words (hyper's
                // "error reading a body") name only the symptom.
                let message = format!(
                    "the connection to the host was lost: the ssh master no longer answers \
                     (a Docker channel on it ended: {})",
                    f.message.trim()
                );
                self.master_failed(Failure::new(FailureKind::MasterDied, message), now);
            }
            (Purpose::Spawn, other) => self.master_failed(Failure::unexpected(other), now),
            (_, Outcome::Failed(f)) => self.channel_failed(f, now),
            (_, other) => self.channel_failed(Failure::unexpected(other), now),
        }
    }

    /// A new master answers: every master opens one session first, even
    /// when nothing is to be discovered: OpenSSH turns on TCP_NODELAY for
    /// the connection at its first session and never otherwise, and without
    /// it every forwarded connection waits out Nagle against delayed ACKs
    /// (~40 ms).
    fn master_ready(&mut self, pid: u32, now: Instant) {
        self.link.master_ready(pid);
        self.health.master_pid = Some(pid);
        self.health.engine = EngineHealth::default();
        self.health_changed = true;
        self.channels.reset();
        self.engine.new_master();
        self.phase = Phase::Setup;
        match self.policy.engine_socket {
            Some(_) => self.request(Purpose::FirstSession, Op::FirstSession, now),
            None => self.request(Purpose::Discover, Op::DiscoverEngine, now),
        }
    }

    /// The master the old image handed over answers: its forwards were
    /// serving through it a moment ago, so serve at once, resync behind it.
    fn adopted_master_answers(&mut self, now: Instant) {
        let route = self.engine.route();
        self.link.publish(route);
        self.commands.push_back(Command::Publish {
            generation: self.link.generation(),
            engine: route,
        });
        self.health_changed = true;
        self.open_channels(now);
    }

    /// Discovery's answer: the pinned engine, else the one chosen, else
    /// the engine the CLI reaches over dial-stdio, else none.
    fn engine_discovered(&mut self, answer: &str, now: Instant) {
        let gone_after = self.policy.engine_gone_after;
        match self.engine.discovered(answer, gone_after, now) {
            Found::Socket { path, found_by } => {
                self.health.engine.found_by = Some(found_by);
                self.forward_engine(path, now);
            }
            Found::Elsewhere { found_by, why } => {
                self.health.engine.found_by = Some(found_by);
                self.health.engine.reason = Some(why);
                self.open_channels(now);
            }
            Found::Nothing(none) => {
                self.master_failed(Failure::new(FailureKind::EngineNotFound, none), now)
            }
        }
    }

    /// A stream-local channel to the engine's socket ended at once.
    fn stream_local_ended(&mut self, f: Failure, now: Instant) {
        let socket = self.engine_socket().to_string();
        match self
            .engine
            .stream_local_ended(&socket, self.policy.engine_gone_after, now)
        {
            Ended::EngineGone { waiting } => {
                // The engine that answered here is gone (restarting,
                // stopped): wait for it on the same master, every tunnel
                // kept; neither another engine nor dial-stdio.
                self.health.engine.reason = waiting.clone();
                let message = match waiting {
                    Some(w) => format!("{w}: {}", f.message.trim()),
                    None => f.message,
                };
                self.channel_failed(Failure::new(FailureKind::StreamEnded, message), now);
            }
            Ended::Next { path, found_by } => {
                // A socket whose engine is gone answers nothing: the next
                // one found is tried before stream-local channels are
                // suspected (they fail the same way for every socket).
                self.health.engine.reason = Some(format!(
                    "{socket} did not answer ({}); trying {path}",
                    f.message.trim()
                ));
                self.health.engine.found_by = Some(found_by);
                self.commands.push_back(Command::CloseChannels);
                self.forward_engine(path, now);
            }
            Ended::DialStdio => {
                // The server may forbid stream-local channels
                // (AllowStreamLocalForwarding, DisableForwarding, a
                // `restrict` key): the sessions of dial-stdio still work.
                self.health.engine.reason = Some(format!(
                    "a stream-local channel to {socket} failed ({}); is stream-local forwarding allowed by sshd (AllowStreamLocalForwarding)?",
                    f.message.trim()
                ));
                self.commands.push_back(Command::CloseChannels);
                let route = EngineRoute::DialStdio;
                self.request(Purpose::OpenApi(route), Op::OpenApi { route }, now);
            }
        }
    }

    /// The engine answered `GET /version` on `route`: subscribe, then resync.
    fn api_ready(&mut self, route: EngineRoute, version: String, rtt: Duration, now: Instant) {
        self.health.engine.route = Some(route);
        if route == EngineRoute::StreamLocal {
            self.health.engine.reason = None;
        }
        self.engine_answered(route, now);
        self.link.setup_answered(rtt);
        if self.health.docker_version.as_deref() != Some(version.as_str()) {
            self.health.docker_version = Some(version);
            self.health_changed = true;
        }
        // Subscribe before listing, so nothing that happens during
        // the resync is missed; events replaying what the resync
        // saw are harmless (handling is idempotent).
        let since_ns = self.tracker.since_ns();
        self.request(Purpose::Subscribe, Op::Subscribe { since_ns, route }, now);
    }

    /// An operation got no answer in time. The mux alive check only proves
    /// that the local ssh process lives, and a black-holed connection keeps
    /// it alive for a whole keepalive budget: silence indicts the connection.
    fn op_timed_out(&mut self, op: InFlight, now: Instant) {
        let f = Failure::no_answer(op.purpose.silence(), op.timeout);
        self.master_failed(f, now);
    }

    // ---- the master ----

    fn connect(&mut self, now: Instant) {
        self.master.attempt(now);
        self.phase = Phase::Spawning;
        self.health.set_master(MasterPhase::Connecting, now);
        self.health.next_retry = None;
        self.health_changed = true;
        let timeout = self.policy.master_ready_timeout + SPAWN_SLACK;
        self.start(Purpose::Spawn, Op::SpawnMaster, timeout, now);
    }

    /// Forgets everything asked or queued on the Docker channels: their
    /// answers, if any still come, are ignored (the one place that does).
    fn drop_channel_work(&mut self) {
        self.ops.drop_all();
        self.engine.rootless().forget_asks();
        self.tracker.drop_work();
    }

    /// Ends whatever runs: the master (and so every channel), the link.
    fn teardown(&mut self) {
        self.drop_channel_work();
        self.schedule.forget_wants();
        if self.link.withdraw() {
            self.commands.push_back(Command::Withdraw);
        }
        if self.link.end_master() || self.phase == Phase::Spawning {
            self.commands.push_back(Command::StopMaster);
        }
        self.health.network_lost_since = None;
    }

    fn master_failed(&mut self, f: Failure, now: Instant) {
        // The first failure since the link was up is what ended it.
        self.link.lost(f.kind.as_str());
        self.teardown();
        let delay = match f.kind.class() {
            FailureClass::Permanent => {
                self.master.failed(0.5, now);
                self.policy.permanent_retry
            }
            FailureClass::Transient => {
                let r = self.unit_random();
                self.master.failed(r, now)
            }
        };
        let failures = self.master.failures();
        self.health.master_failed(&f, failures, now + delay, now);
        self.health_changed = true;
        let verdict = self.master.say(f.kind.as_str(), now);
        if let Some(r) = Record::link_failed(verdict, f.kind, failures, delay, f.message) {
            self.log(r);
        }
        self.phase = Phase::Backoff {
            until: now + delay,
            early_wake: f.kind.class() == FailureClass::Transient,
            failed_at: now,
        };
    }

    // ---- the Docker channels ----

    /// Registers the forward to the engine's socket on the master.
    fn forward_engine(&mut self, remote_socket: String, now: Instant) {
        self.health.engine.remote_socket = Some(remote_socket.clone());
        self.request(
            Purpose::ForwardEngine,
            Op::ForwardEngine { remote_socket },
            now,
        );
    }

    /// The engine answered on `route`: it is the host's engine from now on
    /// (and said loudly if it replaced one gone for good).
    fn engine_answered(&mut self, route: EngineRoute, now: Instant) {
        let Some(path) = self.health.engine.remote_socket.clone() else {
            return;
        };
        let found_by = self.health.engine.found_by.unwrap_or("unknown");
        if let Some(r) = self.engine.answered(&path, found_by, route, now) {
            self.log(Record::EngineReplaced {
                from: r.from,
                from_found_by: r.from_found_by,
                to: r.to,
                to_found_by: r.to_found_by,
                gone_for: r.gone_for,
            });
        }
    }

    fn engine_socket(&self) -> &str {
        self.health.engine.remote_socket.as_deref().unwrap_or("")
    }

    fn open_channels(&mut self, now: Instant) {
        if self.policy.engine_socket.is_none()
            && self.engine.search_again(self.policy.engine_gone_after, now)
        {
            // The engine found first has been gone for good: search again
            // (the pin then gives it up for what the search finds).
            self.phase = Phase::Setup;
            return self.request(Purpose::Discover, Op::DiscoverEngine, now);
        }
        self.phase = Phase::Setup;
        self.channels.attempt(now);
        self.health.stream = StreamPhase::Resyncing;
        self.health_changed = true;
        let route = self.engine.open_route();
        self.request(Purpose::OpenApi(route), Op::OpenApi { route }, now);
    }

    /// A Docker request or the event stream failed on a live master.
    fn channel_failed(&mut self, f: Failure, now: Instant) {
        if matches!(f.kind, FailureKind::MasterDied | FailureKind::Timeout) {
            return self.master_failed(f, now);
        }
        self.drop_channel_work();
        self.commands.push_back(Command::CloseChannels);
        // Is the master itself still fine? Then only the channel failed.
        self.phase = Phase::CheckingMaster;
        self.start(
            Purpose::CheckMaster(f),
            Op::CheckMaster,
            CHECK_MASTER_TIMEOUT,
            now,
        );
    }

    /// The master answers but its Docker channels failed: reopen them with
    /// their own backoff, keeping the master and every tunnel on it.
    fn channels_down(&mut self, f: Failure, now: Instant) {
        if f.kind.class() == FailureClass::Permanent {
            return self.master_failed(f, now);
        }
        let r = self.unit_random();
        let mut delay = self.channels.failed(r, now);
        if self.engine.engine_gone() {
            // Waiting for the engine (restarting): a channel to its socket
            // costs sshd no process, so look often and serve again within
            // moments of its return, not after a backoff grown meanwhile.
            delay = delay.min(pin::ENGINE_WAIT_POLL);
        }
        self.health.stream_restarts += 1;
        let failures = self.channels.failures();
        self.health.failed(&f, failures, now + delay, now);
        self.health_changed = true;
        let verdict = self.channels.say(f.kind.as_str(), now);
        if let Some(r) = Record::stream_restarting(verdict, delay, f.message) {
            self.log(r);
        }
        self.phase = Phase::ChannelBackoff { until: now + delay };
    }

    fn begin_resync(&mut self, now: Instant) {
        self.request(Purpose::List, Op::ListContainers, now);
    }

    fn continue_resync(&mut self, now: Instant) {
        if let Some(id) = self.tracker.next_resync_inspect() {
            return self.request(Purpose::ResyncInspect(id.clone()), Op::Inspect(id), now);
        }
        if self.tracker.finish_resync(now) {
            // Told now, whatever else is queued: the plan for what the
            // resync found is asked for before the link is published.
            self.tell_changes_now();
        }
        self.schedule.resynced(self.policy.resync_interval, now);
        if self.phase == Phase::Setup {
            self.go_up(now);
        }
    }

    /// Resynced: the link is usable.
    fn go_up(&mut self, now: Instant) {
        self.phase = Phase::Up;
        self.ask_rootless();
        let route = self.engine.route();
        if self.link.publish(route) {
            self.commands.push_back(Command::Publish {
                generation: self.link.generation(),
                engine: route,
            });
        }
        let pid = self.link.master_pid().unwrap_or(0);
        if self.health.master != MasterPhase::Connected {
            let reconnect = self.link.connected();
            self.health.connected(reconnect, now);
        }
        self.health
            .streaming(self.link.master_pid(), self.link.setup_rtt());
        self.health_changed = true;
        self.channels.up(now);
        let failures_before = match self.master.up(now) {
            UpLog::Quiet => None,
            UpLog::First => Some(0),
            UpLog::Recovered { failures } => Some(failures),
        };
        if let Some(failures_before) = failures_before {
            self.log(Record::LinkUp {
                master_pid: pid,
                failures_before,
            });
        }
        if let Some(v) = self.health.docker_version.clone() {
            if self.said.new_version(&v) {
                self.log(Record::DockerVersion { version: v });
            }
        }
        self.schedule.link_up(self.health_period(), now);
    }

    fn health_period(&self) -> Duration {
        self.policy.health_interval.min(API_IDLE_LIMIT)
    }

    /// Up and idle: the next thing to do, if anything is due.
    fn next_work(&mut self, now: Instant) {
        if self.ops.serial().is_some() {
            return;
        }
        // An event of a container being inspected waits for the answer.
        let ops = &self.ops;
        self.tracker.apply_events(|id| ops.inspecting(id), now);
        if self.health.network_lost_since.is_some() {
            return;
        }
        self.tracker
            .expire_pending(self.policy.pending_timeout, now);
        if self.schedule.take_wake_probe() {
            let timeout = self.policy.wake_probe_timeout;
            return self.start(Purpose::Probe, Op::Probe, timeout, now);
        }
        if self.engine.route() == EngineRoute::StreamLocal {
            self.start_inspects(now);
        } else if let Some(id) = self.tracker.next_to_inspect(|_| false) {
            return self.request(Purpose::EventInspect(id.clone()), Op::Inspect(id), now);
        } else if self.engine.rootless().take_wanted() {
            let podman = self.health.is_podman();
            return self.request(Purpose::Rootless, Op::AskRootless { podman }, now);
        }
        let inspects_due = self.ops.inspects_running() > 0 || self.tracker.inspects_queued();
        let interval = self.policy.resync_interval;
        if self.schedule.take_resync(inspects_due, interval, now) {
            return self.begin_resync(now);
        }
        if self.schedule.take_health_probe(self.health_period(), now) {
            let timeout = self.policy.health_interval.min(self.policy.request_timeout);
            self.start(Purpose::Probe, Op::Probe, timeout, now);
        }
    }

    /// Whether the engine runs rootless: known for its socket, or asked
    /// (over stream-local channels only, beside the rest; it costs Podman a
    /// quarter of a second, so once per socket).
    fn ask_rootless(&mut self) {
        let said = self.health.engine.rootless;
        let stream_local = self.engine.route() == EngineRoute::StreamLocal;
        // (Over dial-stdio it is asked on the API channel once it is idle:
        // `next_work`.)
        let socket = self.health.engine.remote_socket.as_deref().unwrap_or("");
        match self.engine.rootless().on_up(socket, said, stream_local) {
            Ask::Nothing => {}
            Ask::Known(rootless) => {
                self.health.engine.rootless = Some(rootless);
                self.routes_changed();
            }
            Ask::Beside => {
                let podman = self.health.is_podman();
                let id = self.ops.next_id();
                self.engine.rootless().asked_as(id);
                self.commands.push_back(Command::AskRootless(id, podman));
            }
        }
    }

    /// Not knowing is no failure: status says nothing then.
    fn answered_rootless(&mut self, outcome: Outcome) {
        if let Outcome::Rootless(rootless) = outcome {
            let socket = self.engine_socket().to_string();
            self.engine.rootless().answered(socket, rootless);
            self.health.engine.rootless = Some(rootless);
            self.health_changed = true;
            self.routes_changed();
        }
    }

    /// What the routes depend on changed (see `fwd_core::route`): the
    /// containers are planned again.
    fn routes_changed(&mut self) {
        if !self.tracker.containers().is_empty() {
            self.commands.push_back(Command::ContainersChanged);
        }
    }

    /// Starts the queued inspects there is room for; a container already
    /// being inspected is asked again once its answer is in.
    fn start_inspects(&mut self, now: Instant) {
        while self.ops.inspects_running() < INSPECTS_AT_ONCE {
            let ops = &self.ops;
            let Some(id) = self.tracker.next_to_inspect(|id| ops.inspecting(id)) else {
                return;
            };
            self.start_inspect(id, now);
        }
    }

    /// An event arrived: it is handled once no operation is in flight, in
    /// order (an inspect asked before an event must not be answered after
    /// it is applied).
    fn receive_event(&mut self, ev: ContainerEvent, now: Instant) {
        self.health.events_received += 1;
        self.health.last_event = Some(now);
        self.health_changed = true;
        self.tracker.receive(ev);
    }

    /// Tells a change of the containers once its burst is over: no event is
    /// waiting and no event's inspect is queued or in flight; or once it
    /// has waited [`CHANGES_HELD_AT_MOST`].
    fn tell_changes(&mut self, now: Instant) {
        if self.tracker.take_change(self.ops.any_event_inspect(), now) {
            self.commands.push_back(Command::ContainersChanged);
        }
    }

    fn tell_changes_now(&mut self) {
        if self.tracker.take_change_now() {
            self.commands.push_back(Command::ContainersChanged);
        }
    }

    // ---- the network ----

    fn on_network(&mut self, usable: bool, now: Instant) {
        let was_usable = std::mem::replace(&mut self.net_usable, usable);
        let master_up = self.link.master_pid().is_some();
        if !usable {
            // Nothing can be answered now, and the master may well survive
            // a short outage: suspend every deadline instead of letting
            // silence condemn the connection.
            self.ops.suspend_deadlines();
            if master_up && self.health.network_lost_since.is_none() {
                self.health.network_lost_since = Some(now);
                self.health_changed = true;
                if let Some(r) = Record::network_lost(self.said.network_lost(now)) {
                    self.log(r);
                }
            }
            return;
        }
        if !was_usable {
            if let Some(lost) = self.health.network_lost_since.take() {
                self.health_changed = true;
                self.log(Record::NetworkBack {
                    after: now.saturating_duration_since(lost),
                });
            }
        }
        self.on_wake(now);
    }

    /// The network changed (and is usable) or the machine resumed: the link
    /// may be dead, or a retry may now succeed. Find out at once.
    fn on_wake(&mut self, now: Instant) {
        if !self.net_usable {
            return;
        }
        // Whatever is in flight is the probe: it must answer soon.
        if self.ops.on_wake(self.policy.wake_probe_timeout, now) {
            return;
        }
        if self.phase == Phase::Up {
            self.schedule.want_wake_probe();
        } else if self.phase.retries_on_wake(now) {
            self.connect(now);
        }
    }

    fn log(&mut self, r: Record) {
        self.commands.push_back(Command::Log(r));
    }

    /// A jitter sample in [0, 1) (xorshift64*: only runners must disagree).
    fn unit_random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let n = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (n >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests;
