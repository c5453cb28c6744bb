//! The supervisor's policies, driven with a fake clock: every test runs in
//! microseconds however many minutes it covers.

use std::collections::BTreeMap;

use super::tracker::EVENTS_QUEUED_MAX;
use super::*;
use crate::backoff::BackoffPolicy;
use crate::model::EventAction;

const STREAM_LOCAL: EngineRoute = EngineRoute::StreamLocal;

fn id(n: u8) -> ContainerId {
    ContainerId::parse(&format!("{n:02x}{}", "0".repeat(10))).expect("valid id")
}

fn container(n: u8, started_at_ns: i64) -> Container {
    Container {
        id: id(n),
        name: format!("c{n}"),
        compose_project: None,
        started_at_ns,
        pending: false,
        ports: vec![],
        labels: BTreeMap::new(),
        networks: vec![],
        exposed_ports: vec![],
        aliases: vec![],
    }
}

fn policy() -> HostPolicy {
    HostPolicy {
        backoff: BackoffPolicy {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            jitter: 0.25,
            healthy_after: Duration::from_secs(60),
        },
        permanent_retry: Duration::from_secs(300),
        health_interval: Duration::from_secs(30),
        resync_interval: Duration::from_secs(300),
        master_ready_timeout: Duration::from_secs(25),
        request_timeout: Duration::from_secs(10),
        wake_probe_timeout: Duration::from_secs(2),
        summary_every: Duration::from_secs(300),
        engine_socket: None,
        pending_timeout: Duration::from_secs(60),
        engine_gone_after: Duration::from_secs(300),
    }
}

/// The machine, a fake clock, and everything it said so far.
struct Rig {
    m: HostMachine,
    now: Instant,
    /// Commands not yet looked at by the test.
    out: VecDeque<Command>,
    /// Every log record ever emitted.
    logs: Vec<Record>,
    /// The operation in flight, as the shell would hold it.
    op: Option<(OpId, Op)>,
    /// The inspects running beside it, oldest first.
    inspects: VecDeque<(OpId, ContainerId)>,
}

impl Rig {
    fn new() -> Rig {
        Rig::with(policy(), true)
    }

    fn with(p: HostPolicy, net: bool) -> Rig {
        let now = Instant::now();
        let mut r = Rig {
            m: HostMachine::new(p, net, 7, now),
            now,
            out: VecDeque::new(),
            logs: Vec::new(),
            op: None,
            inspects: VecDeque::new(),
        };
        r.drain();
        r
    }

    fn drain(&mut self) {
        while let Some(c) = self.m.poll_command() {
            match &c {
                Command::Start(id, op) => self.op = Some((*id, op.clone())),
                Command::Inspect(id, c) => self.inspects.push_back((*id, c.clone())),
                Command::StopMaster | Command::CloseChannels => {
                    self.op = None;
                    self.inspects.clear();
                }
                Command::Log(r) => self.logs.push(r.clone()),
                _ => {}
            }
            self.out.push_back(c);
        }
    }

    fn input(&mut self, i: Input) {
        self.m.handle(i, self.now);
        self.drain();
    }

    /// Moves the clock to `at`, firing the machine's timer on the way
    /// whenever it is due (as the shell's sleep would).
    fn advance_to(&mut self, at: Instant) {
        while let Some(t) = self.m.poll_timeout() {
            if t > at {
                break;
            }
            self.now = self.now.max(t);
            self.m.handle_timeout(self.now);
            self.drain();
        }
        self.now = self.now.max(at);
    }

    fn advance(&mut self, d: Duration) {
        let at = self.now + d;
        self.advance_to(at);
    }

    /// The operation in flight, else the oldest inspect beside it; panics
    /// (failing the test) if there is none.
    fn op(&self) -> Op {
        match (&self.op, self.inspects.front()) {
            (Some((_, op)), _) => op.clone(),
            (None, Some((_, c))) => Op::Inspect(c.clone()),
            (None, None) => panic!("no operation in flight; commands: {:?}", self.out),
        }
    }

    /// Answers what [`op`](Self::op) names.
    fn answer(&mut self, o: Outcome) {
        let id = match self.op.take() {
            Some((id, _)) => id,
            None => self.inspects.pop_front().expect("an operation to answer").0,
        };
        self.input(Input::Done(id, o));
    }

    /// Answers the inspect of `c` running beside the serial operation.
    fn answer_inspect(&mut self, c: &ContainerId, o: Outcome) {
        let i = self
            .inspects
            .iter()
            .position(|(_, x)| x == c)
            .unwrap_or_else(|| panic!("no inspect of {c} running: {:?}", self.inspects));
        let (id, _) = self.inspects.remove(i).expect("position is in range");
        self.input(Input::Done(id, o));
    }

    fn inspecting(&self) -> Vec<ContainerId> {
        self.inspects.iter().map(|(_, c)| c.clone()).collect()
    }

    /// Answers `op` after `after` of fake time.
    fn answer_after(&mut self, after: Duration, o: Outcome) {
        self.now += after;
        self.answer(o);
    }

    fn expect_op(&self, want: Op) {
        assert_eq!(self.op(), want, "commands so far: {:?}", self.out);
    }

    fn saw(&self, c: &Command) -> bool {
        self.out.iter().any(|x| x == c)
    }

    fn clear(&mut self) {
        self.out.clear();
    }

    /// The master answers; the engine is found and forwarded.
    fn master_ready(&mut self, pid: u32) {
        self.answer(Outcome::MasterReady { pid });
        if self.op() == Op::DiscoverEngine {
            self.answer(Outcome::Discovered(
                "env\t/run/docker.sock\tsocket\ndocker\t/var/run/docker.sock\tmissing\n".into(),
            ));
        }
        self.expect_op(Op::ForwardEngine {
            remote_socket: "/run/docker.sock".into(),
        });
        self.answer(Outcome::Answered);
    }

    /// Spawn → version → subscribe → list (the given containers) → inspect
    /// each → published.
    fn connect(&mut self, pid: u32, running: &[Container]) {
        self.expect_op(Op::SpawnMaster);
        self.master_ready(pid);
        self.resync_on(STREAM_LOCAL, running);
        assert_eq!(self.m.health().master, MasterPhase::Connected);
    }

    /// From the API channel's opening on `route` to the resync's end,
    /// with `running` the engine's containers.
    fn resync_on(&mut self, route: EngineRoute, running: &[Container]) {
        self.expect_op(Op::OpenApi { route });
        self.answer(Outcome::ApiReady {
            version: "20.10.24 (API 1.41)".into(),
        });
        assert!(matches!(self.op(), Op::Subscribe { .. }));
        self.answer(Outcome::Subscribed);
        self.expect_op(Op::ListContainers);
        self.answer(Outcome::Listed(
            running.iter().map(|c| c.id.clone()).collect(),
        ));
        for c in running {
            self.expect_op(Op::Inspect(c.id.clone()));
            self.answer(Outcome::Inspected(Some(c.clone())));
        }
    }

    fn fail_master(&mut self, kind: FailureKind) {
        self.answer(Outcome::Failed(Failure::new(kind, "ssh said no")));
    }

    fn retry_delay(&self) -> Duration {
        self.m
            .poll_timeout()
            .expect("a retry is scheduled")
            .saturating_duration_since(self.now)
    }

    fn count_logs(&self, event: &str) -> usize {
        self.logs.iter().filter(|r| r.event() == event).count()
    }
}

#[test]
fn resync_order_is_subscribe_list_inspect_then_publish() {
    let mut r = Rig::new();
    let c1 = container(1, 10);
    r.expect_op(Op::SpawnMaster);
    r.master_ready(42);
    r.expect_op(Op::OpenApi {
        route: STREAM_LOCAL,
    });
    r.answer(Outcome::ApiReady {
        version: "v".into(),
    });
    r.expect_op(Op::Subscribe {
        since_ns: None,
        route: STREAM_LOCAL,
    });
    assert!(!r.out.iter().any(|c| matches!(c, Command::Publish { .. })));
    r.answer(Outcome::Subscribed);
    r.expect_op(Op::ListContainers);
    r.answer(Outcome::Listed(vec![c1.id.clone()]));
    r.expect_op(Op::Inspect(c1.id.clone()));
    assert!(!r.out.iter().any(|c| matches!(c, Command::Publish { .. })));
    r.answer(Outcome::Inspected(Some(c1.clone())));
    let publish = r
        .out
        .iter()
        .position(|c| matches!(c, Command::Publish { .. }))
        .expect("published");
    let changed = r
        .out
        .iter()
        .position(|c| *c == Command::ContainersChanged)
        .expect("containers changed");
    assert!(changed < publish, "reconcile before publish: {:?}", r.out);
    assert_eq!(r.m.containers().get(&c1.id), Some(&c1));
    assert!(r.m.wants_events());
    assert_eq!(r.count_logs("link_up"), 1);
}

#[test]
fn first_retry_is_immediate_then_jittered_backoff_grows_to_the_cap() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    r.input(Input::MasterExited {
        how: "signal 9".into(),
        stderr_tail: String::new(),
    });
    assert!(r.saw(&Command::StopMaster) && r.saw(&Command::Withdraw));
    // The first retry spawns at once.
    r.expect_op(Op::SpawnMaster);
    let mut delays = Vec::new();
    for _ in 0..10 {
        r.fail_master(FailureKind::ConnectionRefused);
        delays.push(r.retry_delay());
        r.advance(r.retry_delay());
        r.expect_op(Op::SpawnMaster);
    }
    // 500 ms ± 25 %, then doubling, capped at 30 s ± 25 %.
    let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
    assert!((375..=625).contains(&ms[0]), "{ms:?}");
    assert!((750..=1250).contains(&ms[1]), "{ms:?}");
    for d in &ms[7..] {
        assert!((22_500..=37_500).contains(d), "{ms:?}");
    }
    assert!(ms.windows(2).take(5).all(|w| w[1] > w[0]), "{ms:?}");
    assert_eq!(r.m.health().consecutive_failures, 11);
}

#[test]
fn backoff_is_forgotten_after_a_healthy_stretch() {
    let mut r = Rig::new();
    r.fail_master(FailureKind::ConnectionRefused);
    r.expect_op(Op::SpawnMaster);
    r.fail_master(FailureKind::ConnectionRefused);
    r.advance(r.retry_delay());
    r.connect(1, &[]);
    // Up for longer than healthy_after (answering its probes meanwhile).
    let until = r.now + Duration::from_secs(61);
    while r.now < until {
        r.advance(Duration::from_secs(30));
        if r.op.as_ref().is_some_and(|(_, o)| *o == Op::Probe) {
            r.answer(Outcome::Answered);
        }
    }
    r.input(Input::MasterExited {
        how: "exit 255".into(),
        stderr_tail: String::new(),
    });
    // Healthy long enough: a new first failure, retried at once.
    assert_eq!(r.m.health().consecutive_failures, 1);
    r.expect_op(Op::SpawnMaster);
}

#[test]
fn a_permanent_failure_is_retried_only_every_permanent_retry_or_on_request() {
    let mut r = Rig::new();
    r.answer(Outcome::Failed(Failure::new(
        FailureKind::AuthRefused,
        "Permission denied (publickey)",
    )));
    assert_eq!(r.retry_delay(), Duration::from_secs(300));
    // A network change does not cut a permanent wait short.
    r.advance(Duration::from_secs(5));
    r.input(Input::Network { usable: true });
    r.input(Input::Resumed);
    assert!(r.op.is_none(), "{:?}", r.out);
    r.advance(Duration::from_secs(294));
    assert!(r.op.is_none());
    r.advance(Duration::from_secs(1));
    r.expect_op(Op::SpawnMaster);
    // Refused again: one line for the whole episode.
    r.answer(Outcome::Failed(Failure::new(
        FailureKind::AuthRefused,
        "again",
    )));
    assert_eq!(r.count_logs("link_failed"), 1);
    // `fwdctl reconnect` tries at once.
    r.advance(Duration::from_secs(10));
    r.input(Input::ReconnectRequested);
    r.expect_op(Op::SpawnMaster);
}

#[test]
fn no_retry_while_no_network_is_usable_and_at_once_when_one_is() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    r.input(Input::Network { usable: false });
    r.input(Input::MasterExited {
        how: "exit 255".into(),
        stderr_tail: "Timeout, server not responding.".into(),
    });
    // The retry is due at once, but there is no network: nothing happens,
    // however long, and the watchdog is promised nothing.
    assert!(r.op.is_none(), "{:?}", r.out);
    assert_eq!(r.m.poll_timeout(), None);
    r.advance(Duration::from_secs(3600));
    assert!(r.op.is_none());
    assert_eq!(r.count_logs("waiting_for_network"), 1);
    r.input(Input::Network { usable: true });
    r.expect_op(Op::SpawnMaster);
}

#[test]
fn a_network_change_cuts_a_transient_backoff_short_but_not_within_a_second() {
    let mut r = Rig::new();
    r.fail_master(FailureKind::Unreachable);
    r.expect_op(Op::SpawnMaster);
    r.fail_master(FailureKind::Unreachable);
    let delay = r.retry_delay();
    assert!(delay >= Duration::from_millis(375));
    r.advance(Duration::from_millis(200));
    r.input(Input::Network { usable: true });
    assert!(r.op.is_none(), "woke within a second of the failure");
    r.now += Duration::from_millis(900);
    r.input(Input::Network { usable: true });
    // A second later: at once, however long the backoff was.
    r.expect_op(Op::SpawnMaster);
}

#[test]
fn a_network_change_or_resume_probes_the_link_at_once() {
    for wake in [Input::Network { usable: true }, Input::Resumed] {
        let mut r = Rig::new();
        r.connect(1, &[]);
        assert!(r.op.is_none());
        r.advance(Duration::from_secs(3));
        r.input(wake);
        r.expect_op(Op::Probe);
        // The wake probe has the short deadline.
        assert_eq!(r.m.poll_timeout(), Some(r.now + Duration::from_secs(2)));
        r.answer_after(Duration::from_millis(3), Outcome::Answered);
        assert_eq!(r.m.health().last_probe_rtt, Some(Duration::from_millis(3)));
        assert!(!r.saw(&Command::StopMaster));
    }
}

#[test]
fn every_request_without_an_answer_replaces_the_master() {
    // An inspect after an event (once diagnosed as a stream end), an inspect
    // during a resync, the listing, the health probe: all the same rule.
    let c1 = container(1, 10);
    type Scenario = (&'static str, Box<dyn Fn(&mut Rig)>);
    let scenarios: Vec<Scenario> = vec![
        (
            "event inspect",
            Box::new(|r: &mut Rig| {
                r.input(Input::Events(vec![ContainerEvent {
                    id: id(1),
                    action: EventAction::Start,
                    time_nano: 5,
                }]));
                r.expect_op(Op::Inspect(id(1)));
            }),
        ),
        (
            "resync",
            Box::new(|r: &mut Rig| {
                r.input(Input::ResyncRequested);
                r.expect_op(Op::ListContainers);
            }),
        ),
        (
            "resync inspect",
            Box::new(move |r: &mut Rig| {
                r.input(Input::ResyncRequested);
                r.answer(Outcome::Listed(vec![c1.id.clone()]));
                r.expect_op(Op::Inspect(c1.id.clone()));
            }),
        ),
        (
            "health probe",
            Box::new(|r: &mut Rig| {
                r.advance(Duration::from_secs(30));
                r.expect_op(Op::Probe);
            }),
        ),
    ];
    for (name, start) in scenarios {
        let mut r = Rig::new();
        r.connect(1, &[]);
        start(&mut r);
        r.clear();
        r.advance(Duration::from_secs(11));
        assert!(r.saw(&Command::StopMaster), "{name}: {:?}", r.out);
        let err = r.m.health().last_error.clone().expect("an error");
        assert_eq!(err.kind, FailureKind::Timeout, "{name}: {err:?}");
        assert!(err.message.contains("got no answer"), "{name}: {err:?}");
        r.expect_op(Op::SpawnMaster);
    }
}

#[test]
fn a_docker_channel_failure_on_a_live_master_keeps_the_master() {
    let mut r = Rig::new();
    let c1 = container(1, 10);
    r.connect(1, std::slice::from_ref(&c1));
    r.clear();
    r.input(Input::StreamFailed(Failure::new(
        FailureKind::StreamEnded,
        "the docker event stream ended",
    )));
    assert!(r.saw(&Command::CloseChannels));
    r.expect_op(Op::CheckMaster);
    r.answer(Outcome::Answered);
    assert!(!r.saw(&Command::StopMaster) && !r.saw(&Command::Withdraw));
    assert_eq!(r.m.health().master, MasterPhase::Connected);
    assert_eq!(r.m.health().stream_restarts, 1);
    // Reopened at once (first retry), resynced, and not published again.
    r.expect_op(Op::OpenApi {
        route: STREAM_LOCAL,
    });
    assert_eq!(r.m.health().stream, StreamPhase::Resyncing);
    r.answer(Outcome::ApiReady {
        version: "v".into(),
    });
    r.answer(Outcome::Subscribed);
    r.answer(Outcome::Listed(vec![]));
    assert_eq!(r.m.health().stream, StreamPhase::Streaming);
    assert!(!r.out.iter().any(|c| matches!(c, Command::Publish { .. })));
    assert!(r.m.containers().is_empty(), "the resync is the truth");
    // A second failure soon after waits (backoff), still on the same master.
    r.input(Input::StreamFailed(Failure::new(
        FailureKind::StreamEnded,
        "eof",
    )));
    r.answer(Outcome::Answered);
    assert_eq!(r.m.health().stream, StreamPhase::Down);
    assert!(r.op.is_none());
    assert!(r.retry_delay() >= Duration::from_millis(375));
    assert!(!r.saw(&Command::StopMaster));
}

#[test]
fn docker_missing_is_permanent_and_a_dead_master_is_a_master_failure() {
    let mut r = Rig::new();
    r.expect_op(Op::SpawnMaster);
    r.answer(Outcome::MasterReady { pid: 9 });
    // The first remote docker command finds no docker.
    r.expect_op(Op::DiscoverEngine);
    r.answer(Outcome::Failed(Failure::new(
        FailureKind::DockerMissing,
        "docker not found on the host",
    )));
    r.answer(Outcome::Answered); // the master is fine
    assert!(r.saw(&Command::StopMaster));
    assert_eq!(r.retry_delay(), Duration::from_secs(300));

    let mut r = Rig::new();
    r.connect(1, &[]);
    r.input(Input::StreamFailed(Failure::new(
        FailureKind::StreamEnded,
        "eof",
    )));
    r.answer(Outcome::Failed(Failure::new(
        FailureKind::MasterDied,
        "no mux",
    )));
    let err = r.m.health().last_error.clone().expect("error");
    assert_eq!(err.kind, FailureKind::MasterDied);
    assert!(
        err.message
            .starts_with("the connection to the host was lost: the ssh master no longer answers"),
        "{err:?}"
    );
    assert!(
        err.message.ends_with("(a Docker channel on it ended: eof)"),
        "{err:?}"
    );
    r.expect_op(Op::SpawnMaster);
}

#[test]
fn reconnects_are_counted_by_what_ended_the_link() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    assert!(
        r.m.health().reconnect_reasons.is_empty(),
        "the first link is no reconnect"
    );
    r.input(Input::MasterExited {
        how: "exit 255".into(),
        stderr_tail: String::new(),
    });
    r.connect(2, &[]);
    r.input(Input::ReconnectRequested);
    r.connect(3, &[]);
    let reasons: Vec<(&str, u64)> =
        r.m.health()
            .reconnect_reasons
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
    assert_eq!(reasons, [("master_died", 1), ("requested", 1)]);
    assert_eq!(r.m.health().reconnects, 2);
}

#[test]
fn since_is_carried_across_reconnects() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    for t in [100, 300, 200] {
        r.input(Input::Events(vec![ContainerEvent {
            id: id(1),
            action: EventAction::Ignore,
            time_nano: t,
        }]));
    }
    r.input(Input::MasterExited {
        how: "exit 255".into(),
        stderr_tail: String::new(),
    });
    r.master_ready(2);
    r.answer(Outcome::ApiReady {
        version: "v".into(),
    });
    r.expect_op(Op::Subscribe {
        since_ns: Some(300),
        route: STREAM_LOCAL,
    });
}

#[test]
fn events_keep_the_container_set_current() {
    let mut r = Rig::new();
    let c1 = container(1, 1_000);
    r.connect(1, std::slice::from_ref(&c1));
    r.clear();
    // A replayed die from before the container's current start is ignored.
    r.input(Input::Events(vec![ContainerEvent {
        id: id(1),
        action: EventAction::Die,
        time_nano: 999,
    }]));
    assert!(r.m.containers().contains_key(&id(1)));
    assert!(!r.saw(&Command::ContainersChanged));
    r.input(Input::Events(vec![ContainerEvent {
        id: id(1),
        action: EventAction::Die,
        time_nano: 1_001,
    }]));
    assert!(r.m.containers().is_empty());
    assert!(r.saw(&Command::ContainersChanged));
    // A start is inspected; a container gone by then is simply absent.
    r.input(Input::Events(vec![ContainerEvent {
        id: id(2),
        action: EventAction::Start,
        time_nano: 2_000,
    }]));
    r.expect_op(Op::Inspect(id(2)));
    r.answer(Outcome::Inspected(Some(container(2, 2_000))));
    assert!(r.m.containers().contains_key(&id(2)));
    r.input(Input::Events(vec![ContainerEvent {
        id: id(3),
        action: EventAction::Start,
        time_nano: 3_000,
    }]));
    r.answer(Outcome::Unparsable("bad json".into()));
    assert!(!r.m.containers().contains_key(&id(3)));
    assert_eq!(r.count_logs("inspect_unparsable"), 1);
    assert_eq!(r.m.health().events_received, 4);
}

fn event(n: u8, action: EventAction, time_nano: i64) -> Input {
    Input::Events(vec![ContainerEvent {
        id: id(n),
        action,
        time_nano,
    }])
}

#[test]
fn an_event_received_during_an_inspect_is_applied_after_its_answer() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    r.clear();
    r.input(event(2, EventAction::Start, 2_000));
    r.expect_op(Op::Inspect(id(2)));
    // The stream is read on while the inspect is in flight...
    assert!(r.m.wants_events());
    r.input(event(2, EventAction::Die, 2_500));
    // ...but the die waits: the inspect was asked before it happened, and
    // its answer (running) must not undo it.
    r.answer(Outcome::Inspected(Some(container(2, 2_000))));
    assert!(!r.m.containers().contains_key(&id(2)), "{:?}", r.out);
    assert_eq!(r.m.health().events_received, 2);
    assert!(r.op.is_none(), "nothing left to do: {:?}", r.op);
}

#[test]
fn a_start_seen_on_the_engine_socket_is_inspected_before_its_event_comes() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    r.clear();
    r.input(Input::StartSeen(id(7)));
    assert_eq!(r.inspecting(), vec![id(7)]);
    assert_eq!(r.m.health().events_received, 0, "not an event");
    r.answer_inspect(&id(7), Outcome::Inspected(Some(container(7, 700))));
    assert!(r.m.containers().contains_key(&id(7)));
    // Its late event asks once more (harmless: the same answer).
    r.input(event(7, EventAction::Start, 700));
    assert_eq!(r.inspecting(), vec![id(7)]);
    // Before the link is up there is nothing to inspect with: ignored.
    let mut r = Rig::new();
    r.input(Input::StartSeen(id(7)));
    r.master_ready(1);
    r.answer(Outcome::ApiReady {
        version: "v".into(),
    });
    r.answer(Outcome::Subscribed);
    r.answer(Outcome::Listed(vec![]));
    assert!(r.inspecting().is_empty() && r.op.is_none(), "{:?}", r.out);
}

/// A client sending start after start (ids of its choosing) holds no more
/// of the machine than the events' own bound; each is inspected once.
#[test]
fn starts_seen_queue_no_further_than_events_do() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    r.clear();
    for n in 0..3 * EVENTS_QUEUED_MAX {
        let id = ContainerId::parse(&format!("{n:012x}")).expect("valid id");
        r.input(Input::StartSeen(id.clone()));
        r.input(Input::StartSeen(id));
    }
    let queued = r.m.tracker.queued_inspects() + r.inspecting().len();
    assert!(
        queued <= EVENTS_QUEUED_MAX + INSPECTS_AT_ONCE,
        "{queued} queued"
    );
    assert_eq!(r.inspecting().len(), INSPECTS_AT_ONCE);
}

#[test]
fn the_engine_is_asked_once_per_socket_whether_it_runs_rootless() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    let asked: Vec<(OpId, bool)> = r
        .out
        .iter()
        .filter_map(|c| match c {
            Command::AskRootless(id, podman) => Some((*id, *podman)),
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 1, "{:?}", r.out);
    assert!(!asked[0].1, "Docker is asked in its own /info");
    assert_eq!(r.m.health().engine.rootless, None);
    r.input(Input::Done(asked[0].0, Outcome::Rootless(true)));
    assert_eq!(r.m.health().engine.rootless, Some(true));
    // A new master on the same socket: known, not asked again.
    r.clear();
    r.input(Input::MasterExited {
        how: "signal 9".into(),
        stderr_tail: String::new(),
    });
    r.advance(Duration::from_secs(1));
    r.connect(2, &[]);
    assert!(
        !r.out.iter().any(|c| matches!(c, Command::AskRootless(..))),
        "{:?}",
        r.out
    );
    assert_eq!(r.m.health().engine.rootless, Some(true));
    // An engine that cannot say leaves it unknown, and nothing fails.
    let mut r = Rig::new();
    r.connect(1, &[]);
    let id = rootless_question(&r);
    r.input(Input::Done(
        id,
        Outcome::Unparsable("no SecurityOptions".into()),
    ));
    assert_eq!(r.m.health().engine.rootless, None);
    assert_eq!(r.m.health().master, MasterPhase::Connected);
}

/// The operation that asks whether the engine runs rootless.
fn rootless_question(r: &Rig) -> OpId {
    r.out
        .iter()
        .find_map(|c| match c {
            Command::AskRootless(id, _) => Some(*id),
            _ => None,
        })
        .expect("asked")
}

#[test]
fn the_engine_saying_whether_it_runs_rootless_plans_the_routes_again() {
    let mut r = Rig::new();
    r.connect(1, &[container(1, 10)]);
    let asked = rootless_question(&r);
    r.clear();
    r.input(Input::Done(asked, Outcome::Rootless(false)));
    assert!(
        r.out.contains(&Command::ContainersChanged),
        "direct routes depend on the answer: {:?}",
        r.out
    );
}

#[test]
fn a_container_whose_inspect_waits_on_its_start_holds_back_no_other() {
    // dockerd answers an inspect only once the container's start is done:
    // under load, hundreds of ms. Another container created meanwhile must
    // have its port bound before its own `docker run` returns.
    let mut r = Rig::new();
    r.connect(1, &[]);
    r.clear();
    r.input(event(1, EventAction::Create, 1_000));
    r.input(event(1, EventAction::Start, 1_001));
    r.input(event(2, EventAction::Create, 1_100));
    assert_eq!(r.inspecting(), vec![id(1), id(2)]);
    assert!(r.op.is_none(), "nothing serial: {:?}", r.op);
    r.now += Duration::from_millis(3);
    let mut two = container(2, 0);
    two.pending = true;
    r.answer_inspect(&id(2), Outcome::Inspected(Some(two)));
    assert!(r.m.containers().contains_key(&id(2)));
    // Told once the burst's own limit passes, not when 1's start is done.
    r.advance(CHANGES_HELD_AT_MOST);
    assert!(r.saw(&Command::ContainersChanged), "{:?}", r.out);
    // 1's start came after its create's inspect was asked: it is asked
    // again once that answer is in.
    r.now += Duration::from_millis(400);
    let mut one = container(1, 0);
    one.pending = true;
    r.answer_inspect(&id(1), Outcome::Inspected(Some(one)));
    assert_eq!(r.inspecting(), vec![id(1)]);
    r.answer_inspect(&id(1), Outcome::Inspected(Some(container(1, 1_001))));
    assert!(r.inspecting().is_empty(), "{:?}", r.out);
    assert_eq!(r.m.containers().len(), 2);
    // Events not yet handled ask once for a container however many there are.
    r.input(Input::Events(vec![
        ContainerEvent {
            id: id(5),
            action: EventAction::Create,
            time_nano: 5_000,
        },
        ContainerEvent {
            id: id(5),
            action: EventAction::Start,
            time_nano: 5_001,
        },
    ]));
    assert_eq!(r.inspecting(), vec![id(5)]);
    r.answer_inspect(&id(5), Outcome::Inspected(Some(container(5, 5_001))));
    assert!(r.inspecting().is_empty(), "{:?}", r.out);
}

#[test]
fn an_event_waits_only_for_its_own_containers_inspect() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    r.clear();
    r.input(event(1, EventAction::Start, 1_000));
    assert_eq!(r.inspecting(), vec![id(1)]);
    // 1 dies while its inspect (asked before) is out; 2 starts.
    r.input(Input::Events(vec![
        ContainerEvent {
            id: id(1),
            action: EventAction::Die,
            time_nano: 1_500,
        },
        ContainerEvent {
            id: id(2),
            action: EventAction::Start,
            time_nano: 1_600,
        },
    ]));
    assert_eq!(r.inspecting(), vec![id(1), id(2)]);
    r.answer_inspect(&id(2), Outcome::Inspected(Some(container(2, 1_600))));
    // The answer for 1 says running: the die, applied after it, wins.
    r.answer_inspect(&id(1), Outcome::Inspected(Some(container(1, 1_000))));
    assert!(!r.m.containers().contains_key(&id(1)), "{:?}", r.out);
    assert!(r.m.containers().contains_key(&id(2)));
    // A start after an inspect is out asks again once it is answered.
    r.input(event(2, EventAction::Die, 2_000));
    r.input(event(3, EventAction::Start, 3_000));
    r.input(event(3, EventAction::Die, 3_100));
    r.input(event(3, EventAction::Start, 3_200));
    assert_eq!(r.inspecting(), vec![id(3)]);
    r.answer_inspect(&id(3), Outcome::Inspected(Some(container(3, 3_000))));
    assert_eq!(r.inspecting(), vec![id(3)], "the restart is inspected");
    r.answer_inspect(&id(3), Outcome::Inspected(Some(container(3, 3_200))));
    assert_eq!(r.m.containers()[&id(3)].started_at_ns, 3_200);
}

#[test]
fn at_most_a_few_inspects_run_at_once_and_a_resync_waits_for_them() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    r.clear();
    let burst = (10..20)
        .map(|n| ContainerEvent {
            id: id(n),
            action: EventAction::Start,
            time_nano: i64::from(n),
        })
        .collect();
    r.input(Input::Events(burst));
    assert_eq!(r.inspecting().len(), INSPECTS_AT_ONCE);
    r.input(Input::ResyncRequested);
    assert!(
        r.op.is_none(),
        "a resync began under the inspects: {:?}",
        r.op
    );
    let mut answered = 0;
    while let Some((_, c)) = r.inspects.front().cloned() {
        assert!(r.inspecting().len() <= INSPECTS_AT_ONCE);
        r.answer_inspect(&c, Outcome::Inspected(Some(container(0, 0))));
        answered += 1;
    }
    assert_eq!(answered, 10);
    r.expect_op(Op::ListContainers);
    // An inspect that never answers replaces the master like any request.
    r.answer(Outcome::Listed(vec![]));
    r.input(event(30, EventAction::Start, 30));
    r.clear();
    r.advance(policy().request_timeout);
    assert!(r.saw(&Command::StopMaster), "{:?}", r.out);
}

#[test]
fn over_dial_stdio_inspects_take_turns_on_the_one_channel() {
    let mut r = Rig::new();
    r.master_ready(3);
    r.answer(Outcome::Failed(Failure::new(
        FailureKind::StreamEnded,
        "connection closed before message completed",
    )));
    r.answer(Outcome::ApiReady {
        version: "v".into(),
    });
    r.answer(Outcome::Subscribed);
    r.answer(Outcome::Listed(vec![]));
    r.expect_op(Op::AskRootless { podman: false });
    r.answer(Outcome::Rootless(false));
    r.input(event(1, EventAction::Start, 1));
    r.input(event(2, EventAction::Start, 2));
    assert!(r.inspecting().is_empty());
    r.expect_op(Op::Inspect(id(1)));
    r.answer(Outcome::Inspected(Some(container(1, 1))));
    r.expect_op(Op::Inspect(id(2)));
}

#[test]
fn a_burst_of_events_is_told_as_one_change() {
    let mut r = Rig::new();
    r.connect(1, &[container(9, 900)]);
    r.clear();
    // Thirty containers started together: their events arrive at once
    // (the shell reads what the stream holds in one go), with a die first.
    let mut burst = vec![ContainerEvent {
        id: id(9),
        action: EventAction::Die,
        time_nano: 1_000,
    }];
    for n in 10..40 {
        burst.push(ContainerEvent {
            id: id(n),
            action: EventAction::Start,
            time_nano: 1_000 + i64::from(n),
        });
    }
    r.input(Input::Events(burst));
    for n in 10..40 {
        r.expect_op(Op::Inspect(id(n)));
        assert!(
            !r.saw(&Command::ContainersChanged),
            "told before the burst ended"
        );
        r.answer_after(
            Duration::from_micros(500),
            Outcome::Inspected(Some(container(n, 1_000 + i64::from(n)))),
        );
    }
    let told = r
        .out
        .iter()
        .filter(|c| **c == Command::ContainersChanged)
        .count();
    assert_eq!(told, 1, "{:?}", r.out);
    assert_eq!(r.m.containers().len(), 30);
    // A lone change later is told at once.
    r.clear();
    r.input(event(10, EventAction::Die, 5_000));
    assert!(r.saw(&Command::ContainersChanged));
}

#[test]
fn a_burst_that_goes_on_is_told_after_the_limit() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    r.clear();
    let first = r.now;
    let mut n = 10;
    // Each event's inspect is answered 5 ms later, and the next event has
    // already arrived by then: the burst never ends by itself.
    r.input(event(n, EventAction::Start, 1));
    while r.now < first + CHANGES_HELD_AT_MOST * 3 {
        n += 1;
        r.input(event(n, EventAction::Start, i64::from(n)));
        r.answer_after(
            Duration::from_millis(5),
            Outcome::Inspected(Some(container(n - 1, 1))),
        );
    }
    let told = r
        .out
        .iter()
        .filter(|c| **c == Command::ContainersChanged)
        .count();
    assert!(
        (2..=4).contains(&told),
        "told {told} times in 60 ms: {:?}",
        r.out
    );
    // While a change waits, the machine wants to be woken by its limit.
    assert!(r
        .m
        .poll_timeout()
        .is_some_and(|t| t <= r.now + CHANGES_HELD_AT_MOST));
}

#[test]
fn a_change_waiting_on_a_stalled_inspect_is_told_by_the_timer() {
    let mut r = Rig::new();
    r.connect(1, &[container(9, 900)]);
    r.clear();
    r.input(Input::Events(vec![
        ContainerEvent {
            id: id(9),
            action: EventAction::Die,
            time_nano: 1_000,
        },
        ContainerEvent {
            id: id(10),
            action: EventAction::Start,
            time_nano: 1_001,
        },
    ]));
    // Handled together: the die changed the set, the start's inspect is out.
    r.expect_op(Op::Inspect(id(10)));
    assert!(!r.saw(&Command::ContainersChanged));
    r.advance(CHANGES_HELD_AT_MOST);
    assert!(r.saw(&Command::ContainersChanged), "{:?}", r.out);
    r.expect_op(Op::Inspect(id(10)));
}

#[test]
fn flapping_is_logged_once_per_episode() {
    let mut r = Rig::new();
    // Ten minutes of a link that comes up and drops again every few seconds.
    let end = r.now + Duration::from_secs(600);
    while r.now < end {
        r.connect(1, &[]);
        r.now += Duration::from_secs(3);
        r.input(Input::MasterExited {
            how: "exit 255".into(),
            stderr_tail: "Connection reset by peer".into(),
        });
        if r.op.is_none() {
            r.advance(r.retry_delay());
        }
    }
    let lines = r
        .logs
        .iter()
        .filter(|l| !matches!(l, Record::DockerVersion { .. }));
    let n = lines.count();
    assert!(n <= 6, "{n} lines: {:?}", r.logs);
    assert_eq!(r.count_logs("link_failed"), 1);
}

#[test]
fn a_short_link_outage_keeps_the_master() {
    let mut r = Rig::new();
    r.connect(7, &[]);
    r.clear();
    r.advance(Duration::from_secs(1));
    r.input(Input::Network { usable: false });
    assert_eq!(r.m.health().network_lost_since, Some(r.now));
    // No probes, no deadlines while nothing can answer: ssh's keepalive is
    // the judge of an outage that lasts.
    assert_eq!(r.m.poll_timeout(), None);
    r.advance(Duration::from_secs(5));
    assert!(r.op.is_none());
    r.input(Input::Network { usable: true });
    // Probed at once, with the short deadline.
    r.expect_op(Op::Probe);
    assert_eq!(r.m.poll_timeout(), Some(r.now + Duration::from_secs(2)));
    r.answer_after(Duration::from_millis(4), Outcome::Answered);
    assert!(!r.saw(&Command::StopMaster), "{:?}", r.out);
    assert!(!r.saw(&Command::Withdraw));
    assert_eq!(r.m.health().master_pid, Some(7));
    assert_eq!(r.m.health().network_lost_since, None);
    assert_eq!(r.count_logs("network_lost"), 1);
}

#[test]
fn a_master_that_did_not_survive_the_outage_is_replaced_quickly() {
    let mut r = Rig::new();
    r.connect(7, &[]);
    r.input(Input::Network { usable: false });
    r.advance(Duration::from_secs(20));
    r.input(Input::Network { usable: true });
    r.expect_op(Op::Probe);
    r.clear();
    r.advance(Duration::from_secs(2));
    assert!(r.saw(&Command::StopMaster));
    // Replaced at once: a new master within the probe's deadline.
    r.expect_op(Op::SpawnMaster);
}

#[test]
fn a_request_in_flight_when_the_link_drops_waits_for_it() {
    let mut r = Rig::new();
    r.connect(7, &[]);
    r.input(Input::Events(vec![ContainerEvent {
        id: id(4),
        action: EventAction::Start,
        time_nano: 1,
    }]));
    r.expect_op(Op::Inspect(id(4)));
    r.input(Input::Network { usable: false });
    r.clear();
    r.advance(Duration::from_secs(30));
    assert!(!r.saw(&Command::StopMaster));
    r.input(Input::Network { usable: true });
    // A probe must answer soon; the inspect keeps waiting beside it.
    r.expect_op(Op::Probe);
    assert_eq!(r.m.poll_timeout(), Some(r.now + Duration::from_secs(2)));
    assert_eq!(r.inspecting(), vec![id(4)]);
    r.now += Duration::from_millis(50);
    r.answer_inspect(&id(4), Outcome::Inspected(Some(container(4, 1))));
    r.answer(Outcome::Answered);
    assert!(r.m.containers().contains_key(&id(4)));
    assert!(!r.saw(&Command::StopMaster));
}

#[test]
fn the_deadline_is_what_the_machine_will_act_on() {
    // The watchdog promise is poll_timeout: check that the machine does
    // act at it, and never has a deadline in the past while idle.
    let mut r = Rig::new();
    r.connect(1, &[]);
    let t = r.m.poll_timeout().expect("health tick");
    assert_eq!(t, r.now + Duration::from_secs(30));
    r.advance_to(t);
    r.expect_op(Op::Probe);
    r.answer(Outcome::Answered);
    assert!(r.m.poll_timeout().expect("next tick") > r.now);
    // Resync every resync_interval.
    let mut resyncs = 0;
    let end = r.now + Duration::from_secs(301);
    while r.now < end {
        if r.op.is_none() {
            let t = r.m.poll_timeout().expect("a timer");
            assert!(t > r.now, "an idle deadline in the past would spin");
            r.advance_to(t);
        }
        match r.op() {
            Op::Probe => r.answer(Outcome::Answered),
            Op::ListContainers => {
                resyncs += 1;
                r.answer(Outcome::Listed(vec![]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(resyncs, 1);
}

#[test]
fn stale_answers_are_ignored_and_shutdown_stops_everything() {
    let mut r = Rig::new();
    r.expect_op(Op::SpawnMaster);
    let (old, _) = r.op.clone().expect("op");
    r.input(Input::ReconnectRequested);
    r.expect_op(Op::SpawnMaster);
    // The abandoned spawn answers late: ignored.
    r.input(Input::Done(old, Outcome::MasterReady { pid: 1 }));
    assert_eq!(r.m.health().master_pid, None);
    r.answer(Outcome::MasterReady { pid: 2 });
    assert_eq!(r.m.health().master_pid, Some(2));
    r.clear();
    r.input(Input::Shutdown);
    assert!(r.saw(&Command::StopMaster));
    assert!(r.m.is_stopped());
    assert_eq!(r.m.poll_timeout(), None);
    assert_eq!(r.m.health().master, MasterPhase::Stopped);
}

#[test]
fn ssh_stderr_is_logged_once_per_kind_of_line() {
    let mut r = Rig::new();
    for n in 0..50 {
        r.input(Input::MasterStderr(format!(
            "channel {n}: open failed: connect failed: Connection refused"
        )));
        r.input(Input::MasterStderr(format!(
            "Connection to 10.0.0.1 port 22 closed after {n} tries"
        )));
    }
    assert_eq!(r.count_logs("ssh_stderr"), 1);
    assert_eq!(r.count_logs("ssh_channel_open_failed"), 50);
}

#[test]
fn numbers_do_not_make_a_line_new() {
    assert_eq!(
        without_numbers("channel 7: open failed: connect failed: Connection refused"),
        without_numbers("channel 12: open failed: connect failed: Connection refused")
    );
    assert_eq!(without_numbers("port 22 pid 4021"), "port # pid #");
}

#[test]
fn the_engine_is_found_forwarded_and_used_for_fwds_own_channels() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    let link = r
        .out
        .iter()
        .find(|c| matches!(c, Command::Publish { .. }))
        .cloned();
    assert_eq!(
        link,
        Some(Command::Publish {
            generation: 1,
            engine: STREAM_LOCAL
        })
    );
    let e = &r.m.health().engine;
    assert_eq!(e.route, Some(STREAM_LOCAL));
    assert_eq!(e.remote_socket.as_deref(), Some("/run/docker.sock"));
    assert_eq!(e.reason, None);
}

#[test]
fn a_configured_engine_socket_needs_no_discovery_but_a_first_session() {
    let p = HostPolicy {
        engine_socket: Some("/srv/docker.sock".into()),
        ..policy()
    };
    let mut r = Rig::with(p, true);
    r.answer(Outcome::MasterReady { pid: 3 });
    // Still one session first: it is what turns on TCP_NODELAY.
    r.expect_op(Op::FirstSession);
    r.answer(Outcome::Answered);
    r.expect_op(Op::ForwardEngine {
        remote_socket: "/srv/docker.sock".into(),
    });
}

#[test]
fn an_engine_not_on_a_unix_socket_is_reached_by_dial_stdio() {
    let mut r = Rig::new();
    r.answer(Outcome::MasterReady { pid: 3 });
    r.answer(Outcome::Discovered(
        "env\ttcp://10.0.0.5:2375\tother\ndocker\t/var/run/docker.sock\tmissing\n".into(),
    ));
    r.expect_op(Op::OpenApi {
        route: EngineRoute::DialStdio,
    });
    r.answer(Outcome::ApiReady {
        version: "v".into(),
    });
    r.expect_op(Op::Subscribe {
        since_ns: None,
        route: EngineRoute::DialStdio,
    });
    let reason = r.m.health().engine.reason.clone().expect("a reason");
    assert!(reason.contains("tcp://10.0.0.5:2375"), "{reason}");
}

#[test]
fn the_first_socket_found_is_used_and_none_is_one_error_naming_each_place() {
    let mut r = Rig::new();
    r.answer(Outcome::MasterReady { pid: 3 });
    r.answer(Outcome::Discovered(
        "rootless-docker\t/run/user/0/docker.sock\tmissing\n\
         rootless-podman\t/run/user/0/podman/podman.sock\tsocket\n\
         docker\t/var/run/docker.sock\tsocket\n"
            .into(),
    ));
    r.expect_op(Op::ForwardEngine {
        remote_socket: "/run/user/0/podman/podman.sock".into(),
    });
    assert_eq!(
        r.m.health().engine.found_by,
        Some("rootless Podman's socket")
    );

    let mut r = Rig::new();
    r.answer(Outcome::MasterReady { pid: 3 });
    r.answer(Outcome::Discovered(
        "podman\t/run/podman/podman.sock\tmissing\ndocker\t/var/run/docker.sock\tmissing\n".into(),
    ));
    let e = r.m.health().last_error.clone().expect("an error");
    assert_eq!(e.kind, FailureKind::EngineNotFound);
    // An engine may be starting: tried again on the backoff, not as permanent.
    assert_eq!(e.kind.class(), crate::FailureClass::Transient);
    assert!(
        e.message
            .contains("/run/podman/podman.sock (Podman's socket): no such file"),
        "{}",
        e.message
    );
    assert!(e.message.contains("engine_remote_socket"), "{}", e.message);
}

#[test]
fn a_socket_that_does_not_answer_gives_way_to_the_next_one_found() {
    let mut r = Rig::new();
    r.answer(Outcome::MasterReady { pid: 3 });
    r.answer(Outcome::Discovered(
        "docker\t/var/run/docker.sock\tsocket\n\
         podman\t/run/podman/podman.sock\tsocket\n"
            .into(),
    ));
    r.expect_op(Op::ForwardEngine {
        remote_socket: "/var/run/docker.sock".into(),
    });
    r.answer(Outcome::Answered);
    r.expect_op(Op::OpenApi {
        route: STREAM_LOCAL,
    });
    // A socket left behind by an engine that is gone.
    r.answer(Outcome::Failed(Failure::new(
        FailureKind::StreamEnded,
        "connection closed before message completed",
    )));
    r.expect_op(Op::ForwardEngine {
        remote_socket: "/run/podman/podman.sock".into(),
    });
    assert_eq!(r.m.health().engine.found_by, Some("Podman's socket"));
    r.answer(Outcome::Answered);
    r.expect_op(Op::OpenApi {
        route: STREAM_LOCAL,
    });
    // No socket answers either: stream-local channels are suspected.
    r.answer(Outcome::Failed(Failure::new(
        FailureKind::StreamEnded,
        "connection closed before message completed",
    )));
    r.expect_op(Op::OpenApi {
        route: EngineRoute::DialStdio,
    });
}

#[test]
fn a_server_that_refuses_stream_local_channels_gets_dial_stdio() {
    let mut r = Rig::new();
    r.master_ready(3);
    r.expect_op(Op::OpenApi {
        route: STREAM_LOCAL,
    });
    r.clear();
    r.answer(Outcome::Failed(Failure::new(
        FailureKind::StreamEnded,
        "connection closed before message completed",
    )));
    // Retried at once the other way, on the same master.
    assert!(r.saw(&Command::CloseChannels));
    assert!(!r.saw(&Command::StopMaster));
    r.expect_op(Op::OpenApi {
        route: EngineRoute::DialStdio,
    });
    r.answer(Outcome::ApiReady {
        version: "v".into(),
    });
    r.answer(Outcome::Subscribed);
    r.answer(Outcome::Listed(vec![]));
    assert!(r.saw(&Command::Publish {
        generation: 1,
        engine: EngineRoute::DialStdio
    }));
    let reason = r.m.health().engine.reason.clone().expect("a reason");
    assert!(reason.contains("AllowStreamLocalForwarding"), "{reason}");
    // A master whose forward cannot even be registered: dial-stdio too.
    let mut r = Rig::new();
    r.answer(Outcome::MasterReady { pid: 4 });
    r.answer(Outcome::Discovered(
        "docker\t/var/run/docker.sock\tsocket\n".into(),
    ));
    r.answer(Outcome::Failed(Failure::new(
        FailureKind::StreamEnded,
        "Port forwarding failed",
    )));
    r.expect_op(Op::OpenApi {
        route: EngineRoute::DialStdio,
    });
}

/// On dial-stdio nothing runs beside the API channel: the rootless
/// question waits until it is idle, is asked on it once, and an engine that
/// cannot say leaves it not known (no failure, not asked again).
#[test]
fn on_dial_stdio_the_rootless_question_is_asked_on_the_idle_api_channel() {
    let dial_stdio_up = |r: &mut Rig, running: &[Container]| {
        r.master_ready(3);
        r.answer(Outcome::Failed(Failure::new(
            FailureKind::StreamEnded,
            "connection closed before message completed",
        )));
        r.resync_on(EngineRoute::DialStdio, running);
    };
    let mut r = Rig::new();
    dial_stdio_up(&mut r, &[container(1, 10)]);
    assert!(
        !r.out.iter().any(|c| matches!(c, Command::AskRootless(..))),
        "nothing is asked beside the API channel: {:?}",
        r.out
    );
    r.expect_op(Op::AskRootless { podman: false });
    r.clear();
    r.answer(Outcome::Rootless(false));
    assert_eq!(r.m.health().engine.rootless, Some(false));
    assert!(r.saw(&Command::ContainersChanged), "{:?}", r.out);

    let mut r = Rig::new();
    dial_stdio_up(&mut r, &[]);
    r.expect_op(Op::AskRootless { podman: false });
    r.answer(Outcome::Answered);
    assert_eq!(r.m.health().engine.rootless, None);
    assert_eq!(r.m.health().master, MasterPhase::Connected);
    assert!(
        r.op.as_ref()
            .is_none_or(|(_, op)| !matches!(op, Op::AskRootless { .. })),
        "asked again: {:?}",
        r.op
    );
}

#[test]
fn a_created_container_is_bound_until_it_starts_goes_or_expires() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    let mut created = container(5, 100);
    created.pending = true;
    r.input(Input::Events(vec![ContainerEvent {
        id: id(5),
        action: EventAction::Create,
        time_nano: 100,
    }]));
    r.expect_op(Op::Inspect(id(5)));
    r.clear();
    r.answer(Outcome::Inspected(Some(created.clone())));
    assert!(r.saw(&Command::ContainersChanged));
    assert!(r.m.containers()[&id(5)].pending);
    // A resync (which lists running containers only) keeps it.
    r.input(Input::ResyncRequested);
    r.answer(Outcome::Listed(vec![]));
    assert!(r.m.containers().contains_key(&id(5)));
    // Started: the running container replaces the pending one.
    r.input(Input::Events(vec![ContainerEvent {
        id: id(5),
        action: EventAction::Start,
        time_nano: 101,
    }]));
    r.answer(Outcome::Inspected(Some(container(5, 101))));
    assert!(!r.m.containers()[&id(5)].pending);
    // Another, created and never started, is given back after the timeout
    // (the machine's deadline says when).
    let mut idle = container(6, 200);
    idle.pending = true;
    r.input(Input::Events(vec![ContainerEvent {
        id: id(6),
        action: EventAction::Create,
        time_nano: 200,
    }]));
    r.answer(Outcome::Inspected(Some(idle)));
    let created_at = r.now;
    r.clear();
    let healthy_until = |r: &mut Rig, t: Instant| {
        while r.now < t {
            match &r.op {
                Some((_, Op::Probe)) => r.answer(Outcome::Answered),
                _ => r.advance(Duration::from_secs(1)),
            }
        }
    };
    healthy_until(&mut r, created_at + Duration::from_secs(59));
    assert!(r.m.containers().contains_key(&id(6)));
    healthy_until(&mut r, created_at + Duration::from_secs(61));
    assert!(!r.m.containers().contains_key(&id(6)));
    assert!(r.saw(&Command::ContainersChanged));
    assert!(
        r.m.containers().contains_key(&id(5)),
        "the running one stays"
    );
}

#[test]
fn destroying_a_created_container_releases_it_at_once() {
    let mut r = Rig::new();
    r.connect(1, &[]);
    let mut created = container(7, 100);
    created.pending = true;
    r.input(Input::Events(vec![ContainerEvent {
        id: id(7),
        action: EventAction::Create,
        time_nano: 100,
    }]));
    r.answer(Outcome::Inspected(Some(created)));
    r.input(Input::Events(vec![ContainerEvent {
        id: id(7),
        action: EventAction::Destroy,
        time_nano: 150,
    }]));
    assert!(r.m.containers().is_empty());
}

fn handed_over(pid: Option<u32>, containers: Vec<Container>) -> Handover {
    Handover {
        master_pid: pid,
        route: STREAM_LOCAL,
        engine_forwarded: true,
        remote_socket: Some("/run/docker.sock".into()),
        found_by: Some("DOCKER_HOST"),
        since_ns: Some(1_000),
        containers,
        docker_version: Some("20.10.24 (API 1.41)".into()),
        rootless: Some(false),
        connected_for: Duration::from_secs(90),
        failures: 0,
        retry_in: None,
        episode: crate::EpisodeSnapshot {
            announced_first_up: true,
            ..Default::default()
        },
    }
}

fn adopting(from: Handover) -> Rig {
    let now = Instant::now() + Duration::from_secs(3600);
    let mut r = Rig {
        m: HostMachine::adopt(policy(), true, 7, now, from),
        now,
        out: VecDeque::new(),
        logs: Vec::new(),
        op: None,
        inspects: VecDeque::new(),
    };
    r.drain();
    r
}

#[test]
fn an_adopted_master_serves_at_once_and_resyncs_behind() {
    let c1 = container(1, 10);
    let mut r = adopting(handed_over(Some(42), vec![c1.clone()]));
    // The handed-over containers are the forwards' truth until the resync,
    // and what the engine said of itself decides the same routes.
    assert!(r.saw(&Command::ContainersChanged));
    assert_eq!(r.m.containers().len(), 1);
    assert_eq!(r.m.health().engine.rootless, Some(false));
    assert!(!r.saw(&Command::StopMaster), "the master is kept");
    r.expect_op(Op::CheckMaster);
    assert!(
        !r.out.iter().any(|c| matches!(c, Command::Publish { .. })),
        "nothing is published before the master answers"
    );
    // Its tunnels flow meanwhile: status says connected, since it first was.
    assert_eq!(r.m.health().master, MasterPhase::Connected);
    r.answer_after(Duration::from_millis(1), Outcome::Answered);
    assert!(r.saw(&Command::Publish {
        generation: 1,
        engine: STREAM_LOCAL
    }));
    assert_eq!(r.m.health().master, MasterPhase::Connected);
    assert_eq!(r.m.health().master_pid, Some(42));
    assert_eq!(
        r.now.saturating_duration_since(r.m.health().since),
        Duration::from_secs(90) + Duration::from_millis(1),
        "status keeps the master's age"
    );
    // Channels reopen on the same route; events resume where the old image was.
    r.expect_op(Op::OpenApi {
        route: STREAM_LOCAL,
    });
    r.answer(Outcome::ApiReady {
        version: "20.10.24 (API 1.41)".into(),
    });
    r.expect_op(Op::Subscribe {
        since_ns: Some(1_000),
        route: STREAM_LOCAL,
    });
    r.answer(Outcome::Subscribed);
    r.expect_op(Op::ListContainers);
    r.clear();
    r.answer(Outcome::Listed(vec![c1.id.clone()]));
    r.answer(Outcome::Inspected(Some(c1.clone())));
    assert!(
        !r.out.iter().any(|c| matches!(c, Command::Publish { .. })),
        "published once: {:?}",
        r.out
    );
    assert_eq!(
        r.count_logs("docker_version"),
        0,
        "the version was logged by the old image"
    );
    assert!(
        !r.out.iter().any(|c| matches!(c, Command::AskRootless(..))),
        "the engine's answer carried over: not asked again"
    );
    assert!(r.m.wants_events());
}

#[test]
fn an_adopted_master_that_does_not_answer_is_replaced() {
    let mut r = adopting(handed_over(Some(42), vec![container(1, 10)]));
    r.expect_op(Op::CheckMaster);
    r.fail_master(FailureKind::MasterDied);
    assert!(r.saw(&Command::StopMaster), "the dead master is reaped");
    assert!(r.m.health().master_pid.is_none());
    // The first retry is immediate, like any first failure.
    r.advance(Duration::ZERO);
    r.expect_op(Op::SpawnMaster);
    // Its containers stay known (forwards keep waiting, not refusing).
    assert_eq!(r.m.containers().len(), 1);
}

#[test]
fn a_silent_adopted_master_times_out_like_any_request() {
    let mut r = adopting(handed_over(Some(42), vec![]));
    r.expect_op(Op::CheckMaster);
    r.advance(CHECK_MASTER_TIMEOUT);
    assert!(r.saw(&Command::StopMaster));
    assert!(r.logs.iter().any(
        |l| matches!(l, Record::LinkFailed { message, .. } if message.contains("handed over"))
    ));
}

#[test]
fn without_a_master_the_new_image_connects_and_keeps_the_containers() {
    let mut r = adopting(handed_over(None, vec![container(1, 10)]));
    assert!(r.saw(&Command::ContainersChanged));
    r.expect_op(Op::SpawnMaster);
    r.connect(7, &[container(1, 10)]);
}

#[test]
fn handover_round_trips_through_adopt() {
    let mut r = Rig::new();
    r.connect(42, &[container(1, 10), container(2, 20)]);
    r.input(Input::Events(vec![ContainerEvent {
        id: id(3),
        action: EventAction::Die,
        time_nano: 5_000,
    }]));
    r.advance(Duration::from_secs(30));
    let h = r.m.handover(r.now);
    assert_eq!(h.master_pid, Some(42));
    assert_eq!(h.since_ns, Some(5_000));
    assert!(h.engine_forwarded);
    assert_eq!(h.containers.len(), 2);
    assert_eq!(h.connected_for, Duration::from_secs(30));
    let next = HostMachine::adopt(policy(), true, 7, r.now, h.clone());
    assert_eq!(next.handover(r.now).containers.len(), 2);
    assert_eq!(next.handover(r.now).since_ns, Some(5_000));
}

#[test]
fn a_host_between_masters_hands_over_no_master() {
    let mut r = Rig::new();
    r.connect(42, &[]);
    r.input(Input::MasterExited {
        how: "signal 9".into(),
        stderr_tail: String::new(),
    });
    assert_eq!(r.m.handover(r.now).master_pid, None);
}

#[test]
fn an_adopted_link_is_not_announced_again() {
    let c1 = container(1, 10);
    let mut r = adopting(handed_over(Some(42), vec![c1.clone()]));
    r.answer(Outcome::Answered);
    r.answer(Outcome::ApiReady {
        version: "20.10.24 (API 1.41)".into(),
    });
    r.answer(Outcome::Subscribed);
    r.answer(Outcome::Listed(vec![c1.id.clone()]));
    r.answer(Outcome::Inspected(Some(c1)));
    assert_eq!(r.count_logs("link_up"), 0, "{:?}", r.logs);
}

#[test]
fn a_host_backing_off_keeps_its_backoff_and_its_episode_across_an_upgrade() {
    let mut r = Rig::new();
    // The first retry is immediate, the next ones wait.
    r.fail_master(FailureKind::ConnectionRefused);
    r.expect_op(Op::SpawnMaster);
    for _ in 0..2 {
        r.fail_master(FailureKind::ConnectionRefused);
        let wait = r.retry_delay();
        r.advance(wait);
        r.expect_op(Op::SpawnMaster);
    }
    r.fail_master(FailureKind::ConnectionRefused);
    let h = r.m.handover(r.now);
    assert_eq!(h.master_pid, None);
    assert_eq!(h.failures, 4);
    let wait = h.retry_in.expect("backing off");
    assert!(wait > Duration::ZERO);
    assert_eq!(h.episode.kinds, vec!["connection_refused".to_string()]);

    let mut next = adopting(h);
    assert!(next.op.is_none(), "no attempt before the wait is over");
    assert_eq!(next.m.health().master, MasterPhase::Backoff);
    assert_eq!(next.m.health().consecutive_failures, 4);
    next.advance(wait);
    next.expect_op(Op::SpawnMaster);
    next.fail_master(FailureKind::ConnectionRefused);
    assert_eq!(
        next.count_logs("link_failed"),
        0,
        "already logged by the old image"
    );
    assert_eq!(next.m.health().consecutive_failures, 5);
}

const DOCKER_AND_PODMAN: &str =
    "docker\t/var/run/docker.sock\tsocket\npodman\t/run/podman/podman.sock\tsocket\n";

/// Up on the engine `discovered` names first, with one running container.
fn up_on(discovered: &str, socket: &str) -> Rig {
    let mut r = Rig::new();
    r.answer(Outcome::MasterReady { pid: 3 });
    r.answer(Outcome::Discovered(discovered.into()));
    r.expect_op(Op::ForwardEngine {
        remote_socket: socket.into(),
    });
    r.answer(Outcome::Answered);
    r.resync_on(STREAM_LOCAL, &[container(1, 10)]);
    r.clear();
    r
}

/// The engine stops: its event stream ends, and every channel opened to
/// its socket until `until` ends at once (no engine behind it). Returns
/// the channel reopenings seen.
fn engine_gone_until(r: &mut Rig, until: Instant) -> usize {
    let gone = || {
        Outcome::Failed(Failure::new(
            FailureKind::StreamEnded,
            "connection closed before message completed",
        ))
    };
    r.input(Input::StreamFailed(Failure::new(
        FailureKind::StreamEnded,
        "the event stream ended",
    )));
    r.expect_op(Op::CheckMaster);
    r.answer(Outcome::Answered);
    let mut reopened = 0;
    while r.now < until {
        if r.op.is_none() {
            let at = r.m.poll_timeout().expect("a retry is scheduled");
            r.advance_to(at);
        }
        if r.op()
            != (Op::OpenApi {
                route: STREAM_LOCAL,
            })
        {
            break;
        }
        reopened += 1;
        r.answer(gone());
        r.expect_op(Op::CheckMaster);
        r.answer(Outcome::Answered);
    }
    reopened
}

fn forwarded_to(r: &Rig) -> Vec<String> {
    r.out
        .iter()
        .filter_map(|c| match c {
            Command::Start(_, Op::ForwardEngine { remote_socket }) => Some(remote_socket.clone()),
            _ => None,
        })
        .collect()
}

/// dockerd restarts on a host where rootful Podman answers beside it: the
/// engine that answered is waited for on the same master, with every
/// tunnel kept, and neither Podman nor dial-stdio is taken meanwhile.
#[test]
fn an_engine_that_answered_is_waited_for_across_its_restart() {
    let mut r = up_on(DOCKER_AND_PODMAN, "/var/run/docker.sock");
    let t0 = r.now;
    let reopened = engine_gone_until(&mut r, t0 + Duration::from_secs(120));
    // Looked for every 2 s at most, however long it is gone.
    assert!(reopened >= 60, "reopened {reopened} times");
    assert!(forwarded_to(&r).is_empty(), "{:?}", r.out);
    assert!(!r.saw(&Command::StopMaster));
    assert!(!r.out.iter().any(|c| matches!(
        c,
        Command::Start(
            _,
            Op::OpenApi {
                route: EngineRoute::DialStdio
            }
        )
    )));
    let reason = r.m.health().engine.reason.clone().expect("status says so");
    assert!(
        reason.contains("/var/run/docker.sock") && reason.contains("waiting for it"),
        "{reason}"
    );
    // It is back: the same engine, nothing said about another.
    if r.op.is_none() {
        r.advance_to(r.m.poll_timeout().expect("a retry"));
    }
    r.resync_on(STREAM_LOCAL, &[container(1, 10)]);
    assert_eq!(r.m.health().engine.reason, None);
    assert_eq!(
        r.m.health().engine.remote_socket.as_deref(),
        Some("/var/run/docker.sock")
    );
    assert_eq!(r.count_logs("engine_replaced"), 0);
}

/// A new master while the engine is gone (the connection dropped too):
/// discovery finds only Podman now, and the engine that answered is still
/// the one forwarded, to be waited for.
#[test]
fn a_new_master_keeps_the_engine_that_answered_while_it_is_gone() {
    let mut r = up_on(DOCKER_AND_PODMAN, "/var/run/docker.sock");
    let t0 = r.now;
    engine_gone_until(&mut r, t0 + Duration::from_secs(10));
    r.input(Input::MasterExited {
        how: "signal 9".into(),
        stderr_tail: String::new(),
    });
    if r.op.is_none() {
        let at = r.m.poll_timeout().expect("a respawn");
        r.advance_to(at);
    }
    r.expect_op(Op::SpawnMaster);
    r.answer(Outcome::MasterReady { pid: 4 });
    r.answer(Outcome::Discovered(
        "podman\t/run/podman/podman.sock\tsocket\ndocker\t/var/run/docker.sock\tmissing\n".into(),
    ));
    r.expect_op(Op::ForwardEngine {
        remote_socket: "/var/run/docker.sock".into(),
    });
}

/// Gone for good (`engine_gone_after`): the host is searched again, the
/// engine found answers, and that is said once, loudly.
#[test]
fn an_engine_gone_for_good_is_replaced_loudly() {
    let mut r = up_on(DOCKER_AND_PODMAN, "/var/run/docker.sock");
    let t0 = r.now;
    engine_gone_until(&mut r, t0 + Duration::from_secs(400));
    assert!(
        r.now >= t0 + Duration::from_secs(300),
        "searched only once gone for good"
    );
    r.expect_op(Op::DiscoverEngine);
    r.answer(Outcome::Discovered(
        "podman\t/run/podman/podman.sock\tsocket\ndocker\t/var/run/docker.sock\tmissing\n".into(),
    ));
    r.expect_op(Op::ForwardEngine {
        remote_socket: "/run/podman/podman.sock".into(),
    });
    r.answer(Outcome::Answered);
    assert_eq!(r.count_logs("engine_replaced"), 0, "not before it answers");
    r.resync_on(STREAM_LOCAL, &[]);
    assert_eq!(r.count_logs("engine_replaced"), 1);
    let Some(Record::EngineReplaced {
        from, to, gone_for, ..
    }) = r.logs.iter().find(|l| l.event() == "engine_replaced")
    else {
        unreachable!("counted above")
    };
    assert_eq!(
        (from.as_str(), to.as_str()),
        ("/var/run/docker.sock", "/run/podman/podman.sock")
    );
    assert!(*gone_for >= Duration::from_secs(300), "{gone_for:?}");
    assert!(!r.saw(&Command::StopMaster));
}

/// An engine the host names (`DOCKER_HOST`) is never replaced, however
/// long it is gone.
#[test]
fn an_engine_the_host_names_is_waited_for_however_long() {
    let mut r = up_on(
        "env\t/srv/docker.sock\tsocket\npodman\t/run/podman/podman.sock\tsocket\n",
        "/srv/docker.sock",
    );
    let t0 = r.now;
    let reopened = engine_gone_until(&mut r, t0 + Duration::from_secs(3600));
    assert!(reopened >= 10, "reopened {reopened} times");
    assert!(forwarded_to(&r).is_empty(), "{:?}", r.out);
    assert!(!r
        .out
        .iter()
        .any(|c| matches!(c, Command::Start(_, Op::DiscoverEngine))));
    let reason = r.m.health().engine.reason.clone().expect("status says so");
    assert!(reason.contains("no other engine"), "{reason}");
}

/// The same holds for `engine_remote_socket`, which skips the search.
#[test]
fn a_configured_engine_socket_is_waited_for_not_given_up_for_dial_stdio() {
    let mut p = policy();
    p.engine_socket = Some("/srv/docker.sock".into());
    let mut r = Rig::with(p, true);
    r.answer(Outcome::MasterReady { pid: 3 });
    r.expect_op(Op::FirstSession);
    r.answer(Outcome::Answered);
    r.answer(Outcome::Answered);
    r.resync_on(STREAM_LOCAL, &[]);
    r.clear();
    let t0 = r.now;
    let reopened = engine_gone_until(&mut r, t0 + Duration::from_secs(600));
    assert!(reopened >= 5, "reopened {reopened} times");
    assert!(!r.out.iter().any(|c| matches!(
        c,
        Command::Start(
            _,
            Op::OpenApi {
                route: EngineRoute::DialStdio
            } | Op::DiscoverEngine
        )
    )));
}

/// After an upgrade the adopted engine is the host's engine, as before.
#[test]
fn an_adopted_engine_is_kept_across_its_restart() {
    let r = up_on(DOCKER_AND_PODMAN, "/var/run/docker.sock");
    let handover = r.m.handover(r.now);
    let mut r2 = Rig {
        m: HostMachine::adopt(policy(), true, 9, r.now, handover),
        now: r.now,
        out: VecDeque::new(),
        logs: Vec::new(),
        op: None,
        inspects: VecDeque::new(),
    };
    r2.drain();
    r2.expect_op(Op::CheckMaster);
    r2.answer(Outcome::Answered);
    r2.resync_on(STREAM_LOCAL, &[container(1, 10)]);
    r2.clear();
    let t0 = r2.now;
    engine_gone_until(&mut r2, t0 + Duration::from_secs(60));
    assert!(forwarded_to(&r2).is_empty(), "{:?}", r2.out);
}
