//! What goes into the machine and what comes out: operations the shell
//! carries out and their answers, inputs, commands, and the state one fwdd
//! image hands to the next.

use std::time::Duration;

use super::policy::HostPolicy;
use super::record::Record;
use crate::classify::{classify_ssh_failure, FailureKind};
use crate::model::{Container, ContainerEvent, ContainerId};

/// Identifies one operation, so late answers to abandoned ones are ignored.
pub type OpId = u64;

/// Where the remote docker CLI would connect, when nothing is known.
pub const DEFAULT_ENGINE_SOCKET: &str = "/var/run/docker.sock";

/// How fwd reaches the remote engine over the master: its own API and
/// event channels, and every connection to the local engine socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineRoute {
    /// Through a stream-local forward registered on the master (a private
    /// socket in the runtime directory → the engine's socket): channels,
    /// not sessions, so sshd's MaxSessions does not apply and opening one
    /// costs no remote process.
    StreamLocal,
    /// One `docker system dial-stdio` session per connection: the engine is
    /// not on a Unix socket, or the server refuses stream-local channels.
    DialStdio,
}

impl EngineRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineRoute::StreamLocal => "stream_local",
            EngineRoute::DialStdio => "dial_stdio",
        }
    }
}

/// Work the shell carries out and answers with [`Input::Done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Clear a stale control socket, spawn `ssh -M` as a child, wait until
    /// it answers on its control socket. Answer: `MasterReady` or `Failed`.
    SpawnMaster,
    /// Ask the remote docker CLI where its engine listens (a constant
    /// command, in the master's first session). Answer: `Discovered`
    /// (`None`: the CLI could not say).
    DiscoverEngine,
    /// Run a constant no-op command in a session (the master's first
    /// session, when nothing needs discovering). Answer: `Answered`.
    FirstSession,
    /// Register the stream-local forward to the engine's socket on the
    /// master. Answer: `Answered` or `Failed`.
    ForwardEngine { remote_socket: String },
    /// Open the API channel and ask the engine its version (the end-to-end
    /// probe: master, sshd, the remote side, dockerd). Answer: `ApiReady`.
    OpenApi { route: EngineRoute },
    /// Open the event channel and subscribe from `since_ns` (engine clock).
    /// Answer: `Subscribed`; events then arrive as [`Input::Events`].
    Subscribe {
        since_ns: Option<i64>,
        route: EngineRoute,
    },
    /// Answer: `Listed`.
    ListContainers,
    /// Answer: `Inspected` or `Unparsable`.
    Inspect(ContainerId),
    /// Whether the engine runs rootless, asked on the API channel (on the
    /// dial-stdio route, where nothing runs beside it; `podman`: the
    /// engine said it is Podman). Answer: `Rootless`, or anything else
    /// for "not known".
    AskRootless { podman: bool },
    /// Health: the mux answers and a request crosses to dockerd. Answer: `Answered`.
    Probe,
    /// After a Docker channel failed: does the master still answer on its
    /// control socket? Answer: `Answered` or `Failed`.
    CheckMaster,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    MasterReady {
        pid: u32,
    },
    /// What [`crate::discovery::DISCOVERY_SCRIPT`] printed.
    Discovered(String),
    ApiReady {
        version: String,
    },
    Subscribed,
    Listed(Vec<ContainerId>),
    Inspected(Option<Container>),
    /// The engine's answer about a container could not be parsed: skip it.
    Unparsable(String),
    /// Whether the engine runs rootless.
    Rootless(bool),
    Answered,
    Failed(Failure),
}

/// A host's state as one fwdd image hands it to the next (binary upgrade):
/// see [`HostMachine::handover`] and [`HostMachine::adopt`].
#[derive(Clone, Debug, PartialEq)]
pub struct Handover {
    /// The live master, a child of the process (which stays the same
    /// process across the upgrade); `None` when none was up.
    pub master_pid: Option<u32>,
    pub route: EngineRoute,
    /// The master holds the stream-local forward to the engine's socket.
    pub engine_forwarded: bool,
    pub remote_socket: Option<String>,
    /// How the engine was found (see `EngineHealth::found_by`).
    pub found_by: Option<&'static str>,
    /// Engine time of the last event seen: the new event stream resumes there.
    pub since_ns: Option<i64>,
    pub containers: Vec<Container>,
    pub docker_version: Option<String>,
    /// Whether the engine runs rootless, once it said.
    pub rootless: Option<bool>,
    /// How long the master had been connected (status keeps its "since").
    pub connected_for: Duration,
    /// Consecutive failures, and when the next attempt is due (without a
    /// master): the new image keeps the backoff instead of retrying at once.
    pub failures: u32,
    pub retry_in: Option<Duration>,
    /// What was logged of the current failure episode (not logged again).
    pub episode: crate::EpisodeSnapshot,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// The master exited `how`; its stderr says why when it says anything
    /// known (a refused key, a changed host key, …).
    pub fn master_exited(how: &str, stderr_tail: &str) -> Self {
        let kind = match classify_ssh_failure(stderr_tail) {
            FailureKind::Unknown => FailureKind::MasterDied,
            k => k,
        };
        let last = stderr_tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let message = format!("ssh master exited ({how}) {last}");
        Failure::new(kind, message.trim_end())
    }

    /// An operation got no answer within `timeout`: `what` says which.
    pub fn no_answer(what: &str, timeout: Duration) -> Self {
        let message = format!("{what} within {:.1}s", timeout.as_secs_f64());
        Failure::new(FailureKind::Timeout, message)
    }

    /// The shell answered an operation with something it cannot mean.
    pub fn unexpected(outcome: Outcome) -> Self {
        Failure::new(
            FailureKind::Unknown,
            format!("unexpected answer from the shell: {outcome:?}"),
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Done(OpId, Outcome),
    /// The master process exited; `stderr_tail` says why (classified here).
    MasterExited {
        how: String,
        stderr_tail: String,
    },
    /// A line the master printed on stderr.
    MasterStderr(String),
    /// Events read from the stream together (what it held at once): a burst
    /// is told as one change of the containers.
    Events(Vec<ContainerEvent>),
    /// A line of the event stream that was malformed or too long.
    EventSkipped(String),
    /// A client started this container through fwd's engine socket: it is
    /// inspected at once, as after its `start` event (which some engines
    /// send only after `docker run` has returned).
    StartSeen(ContainerId),
    /// The event stream ended or failed.
    StreamFailed(Failure),
    /// A network interface changed; `usable`: some link is usable now.
    Network {
        usable: bool,
    },
    /// The machine woke from suspend.
    Resumed,
    ReconnectRequested,
    ResyncRequested,
    PolicyChanged(HostPolicy),
    Shutdown,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Start(OpId, Op),
    /// Inspect a container beside the operation in flight, on an API
    /// channel of its own (opened when none is idle, kept for the next);
    /// answered with [`Input::Done`]: `Inspected`, `Unparsable` or `Failed`.
    Inspect(OpId, ContainerId),
    /// Ask the engine whether it runs rootless (`podman`: in Podman's own
    /// API), beside the rest like an inspect, once per engine socket;
    /// answered with `Rootless`, or anything else when it could not say.
    AskRootless(OpId, bool),
    /// End the master (every channel and tunnel on it goes too) and drop
    /// the Docker channels and any operation in flight.
    StopMaster,
    /// Drop the Docker channels (API, events, inspects) and any operation
    /// in flight; the master stays.
    CloseChannels,
    /// The link is usable: hand connections to the master of `generation`;
    /// engine connections take `engine`. Sent again when the route changes.
    Publish {
        generation: u64,
        engine: EngineRoute,
    },
    /// Connections must wait: no usable master.
    Withdraw,
    /// The host's set of running containers changed: once for every burst
    /// of changes (the events received together and their inspects), or
    /// after [`CHANGES_HELD_AT_MOST`] if the burst goes on.
    ContainersChanged,
    Log(Record),
}
