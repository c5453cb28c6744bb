//! The operations a host's machine asks for, as futures the driver polls
//! (the serial one, and the inspects beside it), and the resources they
//! leave behind (the master, the Docker channels).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fwd_core::{
    classify_ssh_failure, ContainerId, EngineRoute, Failure, FailureKind, Op, OpId, Outcome,
};
use fwd_docker::{ApiError, DockerApi, EventStream};
use fwd_ssh::{Master, MasterError, MuxClient, SocketState};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::state::Host;
use crate::serve::ServeContext;

/// Aborts a spawned task when dropped.
pub(super) struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One channel to the engine's API: a stream-local channel (nothing to
/// diagnose but the error), or a `docker system dial-stdio` session.
pub(super) struct DockerChannel {
    session: Option<fwd_ssh::Session>,
    stderr_tail: Rc<RefCell<VecDeque<String>>>,
    _tasks: Vec<TaskGuard>,
}

impl DockerChannel {
    /// Why the channel failed, from the remote side's point of view: a
    /// missing docker CLI exits 127 with "not found" on stderr.
    async fn diagnose(self, err: impl std::fmt::Display) -> Failure {
        let Some(session) = self.session else {
            return Failure::new(FailureKind::StreamEnded, err.to_string());
        };
        let status = tokio::time::timeout(Duration::from_secs(2), session.wait()).await;
        let stderr: Vec<String> = self.stderr_tail.borrow().iter().cloned().collect();
        let stderr = stderr.join("; ");
        match status {
            Ok(Ok(Some(127))) => Failure::new(
                FailureKind::DockerMissing,
                format!("docker not found on the host: {stderr}"),
            ),
            Ok(Ok(Some(code))) => Failure::new(
                FailureKind::StreamEnded,
                format!("remote docker exited with status {code}: {err}; {stderr}"),
            ),
            _ => Failure::new(FailureKind::StreamEnded, format!("{err} {stderr}")),
        }
    }
}

async fn open_docker(
    host: &Host,
    route: EngineRoute,
) -> Result<(DockerApi, DockerChannel), Failure> {
    match route {
        EngineRoute::StreamLocal => open_stream_local(host).await,
        EngineRoute::DialStdio => open_dial_stdio(host).await,
    }
}

/// A connection to the master's forward of the engine socket: a channel,
/// not a session (nothing runs on the remote host for it).
async fn open_stream_local(host: &Host) -> Result<(DockerApi, DockerChannel), Failure> {
    let stream = tokio::net::UnixStream::connect(&host.engine_forward)
        .await
        .map_err(|e| {
            Failure::new(
                FailureKind::MasterDied,
                format!(
                    "the master's forward {} does not answer: {e}",
                    host.engine_forward.display()
                ),
            )
        })?;
    let (api, driver) = fwd_docker::connect(stream)
        .await
        .map_err(|e| Failure::new(FailureKind::StreamEnded, e.to_string()))?;
    Ok((
        api,
        DockerChannel {
            session: None,
            stderr_tail: Rc::default(),
            _tasks: vec![TaskGuard(tokio::task::spawn_local(driver))],
        },
    ))
}

/// A session running the constant `command`; failing to open one says the
/// master is in trouble, not Docker.
async fn open_session(host: &Host, command: &str) -> Result<fwd_ssh::RemoteProcess, Failure> {
    fwd_ssh::spawn_remote(&host.control_path, command)
        .await
        .map_err(|e| {
            Failure::new(
                FailureKind::MasterDied,
                format!("opening a session on the master failed: {e}"),
            )
        })
}

/// Longest line of a remote `docker system dial-stdio`'s stderr that is
/// read; the rest of a longer line is dropped.
const STDERR_LINE_MAX: usize = 4096;
/// Of that stderr, the last lines kept for an error report, each cut to
/// `STDERR_TAIL_CHARS` characters.
const STDERR_TAIL_LINES: usize = 5;
const STDERR_TAIL_CHARS: usize = 500;

/// Reads `r` to its end (or an error) line by line, each line cut at `max`
/// bytes (the rest of it read and dropped, never held): a peer that writes
/// without a newline costs at most `max` bytes and the reader's buffer.
async fn bounded_lines<R: tokio::io::AsyncRead + Unpin>(
    r: R,
    max: usize,
    mut each: impl FnMut(String),
) {
    let mut r = tokio::io::BufReader::new(r);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let (consumed, ended) = match r.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => {
                let newline = buf.iter().position(|b| *b == b'\n');
                let part = &buf[..newline.unwrap_or(buf.len())];
                let room = max.saturating_sub(line.len());
                line.extend_from_slice(&part[..part.len().min(room)]);
                match newline {
                    Some(i) => (i + 1, true),
                    None => (buf.len(), false),
                }
            }
        };
        r.consume(consumed);
        if ended {
            each(String::from_utf8_lossy(&line).into_owned());
            line.clear();
        }
    }
    if !line.is_empty() {
        each(String::from_utf8_lossy(&line).into_owned());
    }
}

async fn open_dial_stdio(host: &Host) -> Result<(DockerApi, DockerChannel), Failure> {
    let remote = open_session(host, fwd_docker::DIAL_STDIO_COMMAND).await?;
    let stderr_tail = Rc::new(RefCell::new(VecDeque::new()));
    let tail = stderr_tail.clone();
    let host_key = host.key.clone();
    let stderr_task =
        tokio::task::spawn_local(bounded_lines(remote.stderr, STDERR_LINE_MAX, move |line| {
            tracing::debug!(host = %host_key, line = %line, "remote docker stderr");
            let mut t = tail.borrow_mut();
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.chars().take(STDERR_TAIL_CHARS).collect());
        }));
    let (api, driver) = fwd_docker::connect(remote.stdio)
        .await
        .map_err(|e| Failure::new(FailureKind::StreamEnded, e.to_string()))?;
    let driver = tokio::task::spawn_local(driver);
    Ok((
        api,
        DockerChannel {
            session: Some(remote.session),
            stderr_tail,
            _tasks: vec![TaskGuard(stderr_task), TaskGuard(driver)],
        },
    ))
}

/// What a finished operation hands back: its resources and its result.
pub(super) enum Done {
    Master(Result<(Master, mpsc::Receiver<String>), Failure>),
    Api(Result<(DockerApi, DockerChannel, String), Failure>),
    Events(Result<(EventStream, DockerChannel), Failure>),
    /// A request on the API channel, which comes back with the answer.
    Request(DockerApi, Result<Reply, ApiError>),
    Probe(DockerApi, Result<(), Failure>),
    /// A request beside the serial operation (an inspect, the rootless
    /// question), on a channel of its own.
    Aside(Result<Inspector, Failure>, Result<Outcome, ApiError>),
    Plain(Outcome),
}

/// An API channel of the inspects that run beside the serial operation.
pub(super) struct Inspector {
    api: DockerApi,
    channel: DockerChannel,
    idle_since: Instant,
}

/// dockerd drops an API connection idle for 5 minutes; one idle for this
/// long is closed rather than reused.
const INSPECTOR_IDLE_MAX: Duration = Duration::from_secs(60);

pub(super) enum Reply {
    Listed(Vec<ContainerId>),
    Inspected(Option<fwd_core::Container>),
    /// `None`: the engine could not say.
    Rootless(Option<bool>),
}

pub(super) type OpFuture = Pin<Box<dyn Future<Output = Done>>>;

/// What the driver holds for the machine: processes, channels, the one
/// operation in flight.
#[derive(Default)]
pub(super) struct Resources {
    pub(super) master: Option<Master>,
    /// The master's stderr lines (the machine decides which to log).
    pub(super) stderr: Option<mpsc::Receiver<String>>,
    pub(super) api: Option<DockerApi>,
    pub(super) api_channel: Option<DockerChannel>,
    pub(super) events: Option<EventStream>,
    pub(super) events_channel: Option<DockerChannel>,
    pub(super) inflight: Option<(OpId, OpFuture)>,
    /// The inspects in flight beside it ([`fwd_core::Command::Inspect`]).
    pub(super) inspects: Vec<(OpId, OpFuture)>,
    /// Their channels between inspects.
    pub(super) idle_inspectors: Vec<Inspector>,
}

impl Resources {
    pub(super) fn close_channels(&mut self) {
        self.inflight = None;
        self.inspects.clear();
        self.idle_inspectors.clear();
        self.api = None;
        self.api_channel = None;
        self.events = None;
        self.events_channel = None;
    }
}

pub(super) async fn diagnose(
    channel: &mut Option<DockerChannel>,
    err: impl std::fmt::Display,
) -> Failure {
    match channel.take() {
        Some(c) => c.diagnose(err).await,
        None => Failure::new(FailureKind::StreamEnded, err.to_string()),
    }
}

/// Keeps what a finished operation brought and tells the machine how it went.
pub(super) async fn absorb(res: &mut Resources, done: Done) -> Outcome {
    match done {
        Done::Master(Ok((master, stderr))) => {
            let pid = master.pid;
            res.stderr = Some(stderr);
            res.master = Some(master);
            Outcome::MasterReady { pid }
        }
        Done::Master(Err(f)) => Outcome::Failed(f),
        Done::Api(Ok((api, channel, version))) => {
            res.api = Some(api);
            res.api_channel = Some(channel);
            Outcome::ApiReady { version }
        }
        Done::Events(Ok((stream, channel))) => {
            res.events = Some(stream);
            res.events_channel = Some(channel);
            Outcome::Subscribed
        }
        Done::Api(Err(f)) | Done::Events(Err(f)) => Outcome::Failed(f),
        Done::Request(api, Ok(reply)) => {
            res.api = Some(api);
            match reply {
                Reply::Listed(ids) => Outcome::Listed(ids),
                Reply::Inspected(c) => Outcome::Inspected(c),
                Reply::Rootless(Some(rootless)) => Outcome::Rootless(rootless),
                Reply::Rootless(None) => Outcome::Answered,
            }
        }
        Done::Request(api, Err(ApiError::Parse(e))) => {
            res.api = Some(api);
            Outcome::Unparsable(e.to_string())
        }
        Done::Request(_, Err(e)) => Outcome::Failed(diagnose(&mut res.api_channel, e).await),
        Done::Probe(api, r) => {
            res.api = Some(api);
            match r {
                Ok(()) => Outcome::Answered,
                Err(f) => Outcome::Failed(f),
            }
        }
        Done::Aside(Err(f), _) => Outcome::Failed(f),
        Done::Aside(Ok(mut inspector), answer) => {
            let outcome = match answer {
                Ok(outcome) => outcome,
                Err(ApiError::Parse(e)) => Outcome::Unparsable(e.to_string()),
                Err(e) => return Outcome::Failed(inspector.channel.diagnose(e).await),
            };
            if res.idle_inspectors.len() < fwd_core::INSPECTS_AT_ONCE {
                inspector.idle_since = Instant::now();
                res.idle_inspectors.push(inspector);
            }
            outcome
        }
        Done::Plain(o) => o,
    }
}

/// The future of an inspect beside the serial operation.
pub(super) fn start_inspect(host: &Rc<Host>, res: &mut Resources, id: ContainerId) -> OpFuture {
    let drivers = host.network_drivers.clone();
    start_aside(host, res, async move |api: &mut DockerApi| {
        api.inspect(&id, &drivers).await.map(Outcome::Inspected)
    })
}

/// The future of the rootless question beside the serial operation.
pub(super) fn start_ask_rootless(host: &Rc<Host>, res: &mut Resources, podman: bool) -> OpFuture {
    start_aside(host, res, async move |api: &mut DockerApi| {
        api.rootless(podman).await.map(Outcome::Rootless)
    })
}

/// `ask` beside the serial operation: on an idle inspector's channel, or a
/// new one (also when the idle one turns out to be closed).
fn start_aside(
    host: &Rc<Host>,
    res: &mut Resources,
    ask: impl AsyncFn(&mut DockerApi) -> Result<Outcome, ApiError> + 'static,
) -> OpFuture {
    let host = host.clone();
    res.idle_inspectors
        .retain(|i| i.idle_since.elapsed() < INSPECTOR_IDLE_MAX);
    let idle = res.idle_inspectors.pop();
    Box::pin(async move {
        if let Some(mut inspector) = idle {
            match ask(&mut inspector.api).await {
                Err(ApiError::Http(e)) => {
                    tracing::debug!(host = %host.key, error = %e, "an idle inspect channel was closed");
                }
                answer => return Done::Aside(Ok(inspector), answer),
            }
        }
        match open_docker(&host, EngineRoute::StreamLocal).await {
            Ok((mut api, channel)) => {
                let answer = ask(&mut api).await;
                let inspector = Inspector {
                    api,
                    channel,
                    idle_since: Instant::now(),
                };
                Done::Aside(Ok(inspector), answer)
            }
            Err(f) => Done::Aside(Err(f), Ok(Outcome::Answered)),
        }
    })
}

/// The future that performs `op`.
pub(super) fn start_op(
    serve: &Rc<ServeContext>,
    host: &Rc<Host>,
    res: &mut Resources,
    op: Op,
) -> OpFuture {
    let host = host.clone();
    match op {
        Op::SpawnMaster => Box::pin(async move { Done::Master(spawn_master(&host).await) }),
        Op::DiscoverEngine => Box::pin(async move {
            Done::Plain(match discover_engine(&host).await {
                Ok(endpoint) => Outcome::Discovered(endpoint),
                Err(f) => Outcome::Failed(f),
            })
        }),
        Op::FirstSession => Box::pin(async move {
            Done::Plain(match run_remote(&host, FIRST_SESSION_COMMAND).await {
                Ok(_) => Outcome::Answered,
                Err(f) => Outcome::Failed(f),
            })
        }),
        Op::ForwardEngine { remote_socket } => {
            Box::pin(async move { Done::Plain(forward_engine(&host, &remote_socket).await) })
        }
        Op::OpenApi { route } => Box::pin(async move { open_api(&host, route).await }),
        Op::Subscribe { since_ns, route } => {
            Box::pin(async move { subscribe(&host, since_ns, route).await })
        }
        Op::ListContainers => {
            let Some(mut api) = res.api.take() else {
                return no_channel();
            };
            Box::pin(async move {
                let r = api.running_containers().await.map(Reply::Listed);
                Done::Request(api, r)
            })
        }
        Op::Inspect(id) => {
            let Some(mut api) = res.api.take() else {
                return no_channel();
            };
            let drivers = host.network_drivers.clone();
            Box::pin(async move {
                let r = api.inspect(&id, &drivers).await.map(Reply::Inspected);
                Done::Request(api, r)
            })
        }
        Op::AskRootless { podman } => {
            let Some(mut api) = res.api.take() else {
                return no_channel();
            };
            Box::pin(async move {
                let r = ask_rootless(&mut api, podman).await;
                Done::Request(api, r)
            })
        }
        Op::Probe => {
            let Some(mut api) = res.api.take() else {
                return no_channel();
            };
            let serve = serve.clone();
            Box::pin(async move {
                let r = probe(&serve, &host, &mut api).await;
                Done::Probe(api, r)
            })
        }
        Op::CheckMaster => Box::pin(async move {
            Done::Plain(match alive_check(&host).await {
                Ok(_) => Outcome::Answered,
                Err(e) => Outcome::Failed(Failure::new(
                    FailureKind::MasterDied,
                    format!("mux alive check failed: {e}"),
                )),
            })
        }),
    }
}

/// Requests need the API channel; the machine issues them only while it is
/// open, so its absence is a failed channel.
fn no_channel() -> OpFuture {
    Box::pin(async {
        Done::Plain(Outcome::Failed(Failure::new(
            FailureKind::StreamEnded,
            "the Docker API channel is closed",
        )))
    })
}

/// Registers the engine's forward on the master. A mux that cannot be
/// reached or closes is the master's death; any other refusal is the
/// channel's, so the master is kept.
async fn forward_engine(host: &Host, remote_socket: &str) -> Outcome {
    let forward = async {
        let mut mux = MuxClient::connect(&host.control_path).await?;
        mux.open_local_path_forward(&host.engine_forward, remote_socket)
            .await
    };
    match forward.await {
        Ok(()) => Outcome::Answered,
        Err(e @ (fwd_ssh::MuxError::Connect { .. } | fwd_ssh::MuxError::Closed)) => {
            Outcome::Failed(Failure::new(FailureKind::MasterDied, e.to_string()))
        }
        Err(e) => Outcome::Failed(Failure::new(FailureKind::StreamEnded, e.to_string())),
    }
}

/// Opens the API channel and asks the engine its version: the end-to-end
/// probe. A failed request is diagnosed on the channel it used.
async fn open_api(host: &Host, route: EngineRoute) -> Done {
    let opened = async {
        let (mut api, channel) = open_docker(host, route).await?;
        match api.version().await {
            Ok(v) => Ok((api, channel, v)),
            Err(e) => Err(channel.diagnose(e).await),
        }
    };
    Done::Api(opened.await)
}

/// Opens the event channel and subscribes from `since_ns`.
async fn subscribe(host: &Host, since_ns: Option<i64>, route: EngineRoute) -> Done {
    let opened = async {
        let (api, channel) = open_docker(host, route).await?;
        match api.events(since_ns).await {
            Ok(stream) => Ok((stream, channel)),
            Err(e) => Err(channel.diagnose(e).await),
        }
    };
    Done::Events(opened.await)
}

/// Whether the engine runs rootless. An engine that cannot say (an error
/// answer, one not understood) leaves it not known; the channel is fine.
async fn ask_rootless(api: &mut DockerApi, podman: bool) -> Result<Reply, ApiError> {
    match api.rootless(podman).await {
        Ok(rootless) => Ok(Reply::Rootless(Some(rootless))),
        Err(ApiError::Status { .. } | ApiError::Parse(_)) => Ok(Reply::Rootless(None)),
        Err(e) => Err(e),
    }
}

/// The master's first session when there is nothing to discover.
const FIRST_SESSION_COMMAND: &str = "exit 0";

/// Lists where the host's engine may be (`fwd_core::discovery`): one
/// constant command; the machine chooses from its answer.
async fn discover_engine(host: &Host) -> Result<String, Failure> {
    let (status, out, stderr) = run_remote(host, fwd_core::discovery::DISCOVERY_SCRIPT).await?;
    match status {
        Some(0) => Ok(out),
        other => Err(Failure::new(
            FailureKind::DockerMissing,
            format!(
                "the host could not run fwd's command to find its engine (exit {}): {}",
                other.map_or("unknown".into(), |s| s.to_string()),
                stderr.trim()
            ),
        )),
    }
}

/// Runs a constant command in a session: its exit status and (bounded)
/// stdout and stderr.
async fn run_remote(host: &Host, command: &str) -> Result<(Option<u32>, String, String), Failure> {
    use tokio::io::AsyncReadExt;
    let mut remote = open_session(host, command).await?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut stdout = (&mut remote.stdio).take(4096);
    let mut stderr = (&mut remote.stderr).take(4096);
    let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
    let status = remote.session.wait().await.map_err(|e| {
        Failure::new(
            FailureKind::StreamEnded,
            format!("a remote command did not finish: {e}"),
        )
    })?;
    Ok((
        status,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    ))
}

/// EnsureAlive: nothing stale may sit at the ControlPath; then `ssh -M` as
/// our child, ready when its control socket answers.
async fn spawn_master(host: &Host) -> Result<(Master, mpsc::Receiver<String>), Failure> {
    let ctl = &host.control_path;
    match fwd_ssh::clear_stale_control_socket(ctl, Duration::from_secs(2)).await {
        Ok(SocketState::Live(pid)) => {
            // A master we did not spawn (an earlier fwdd was killed): we
            // cannot watch its exit, so end it and start our own.
            tracing::info!(event = "foreign_master_ended", host = %host.key, pid, "ending a leftover ssh master (pid {pid})");
            if let Ok(c) = MuxClient::connect(ctl).await {
                let _ = tokio::time::timeout(Duration::from_secs(2), c.terminate()).await;
            }
            let _ = std::fs::remove_file(ctl);
        }
        Ok(SocketState::Absent | SocketState::RemovedStale) => {}
        Err(e) => {
            return Err(Failure::new(
                FailureKind::InvalidConfig,
                format!(
                    "cannot clear the control socket {}: {e}; remove it by hand or fix the runtime directory's permissions",
                    ctl.display()
                ),
            ))
        }
    }
    let cfg = &host.cfg.ssh;
    Master::spawn(cfg, ctl, cfg.ready_timeout())
        .await
        .map_err(master_failure)
}

/// A health probe: the mux answers, and a request crosses to dockerd.
async fn probe(serve: &ServeContext, host: &Host, api: &mut DockerApi) -> Result<(), Failure> {
    let link = host.link.borrow().clone();
    let alive = match &link {
        // On the idle spare connection: one request instead of three.
        Some(link) => serve.alive_check(&host.key, link).await,
        None => alive_check(host).await,
    };
    if let Err(e) = alive {
        return Err(Failure::new(
            FailureKind::MasterDied,
            format!("mux alive check failed: {e}"),
        ));
    }
    api.version().await.map(|_| ()).map_err(|e| {
        Failure::new(
            FailureKind::StreamEnded,
            format!("health probe failed: {e}"),
        )
    })
}

async fn alive_check(host: &Host) -> Result<u32, fwd_ssh::MuxError> {
    MuxClient::connect(&host.control_path)
        .await?
        .alive_check()
        .await
}

fn master_failure(e: MasterError) -> Failure {
    match &e {
        MasterError::Exited { stderr_tail, .. } | MasterError::Timeout { stderr_tail, .. } => {
            let tail = stderr_tail.join("\n");
            let kind = match classify_ssh_failure(&tail) {
                FailureKind::Unknown if matches!(e, MasterError::Timeout { .. }) => {
                    FailureKind::Timeout
                }
                FailureKind::Unknown => FailureKind::MasterDied,
                k => k,
            };
            let last = tail.lines().rev().find(|l| !l.trim().is_empty());
            Failure::new(
                kind,
                format!("ssh master failed to start: {}", last.unwrap_or("")),
            )
        }
        // Out of descriptors, processes or memory: passes with the flood,
        // unlike a missing ssh (a permanent failure, retried slowly).
        MasterError::Spawn { source, .. } if spawn_out_of_resources(source) => Failure::new(
            FailureKind::OutOfResources,
            format!("cannot start ssh now: {source}"),
        ),
        MasterError::InvalidDestination(_)
        | MasterError::InvalidOption(_)
        | MasterError::InvalidValue { .. }
        | MasterError::ControlPathTooLong { .. }
        | MasterError::Spawn { .. } => Failure::new(FailureKind::InvalidConfig, e.to_string()),
        _ => Failure::new(FailureKind::MasterDied, e.to_string()),
    }
}

/// A spawn that failed for want of resources, not for a missing program.
fn spawn_out_of_resources(e: &std::io::Error) -> bool {
    use nix::libc::{EAGAIN, EMFILE, ENFILE, ENOMEM};
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE | EAGAIN | ENOMEM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawn_out_of_descriptors_is_transient_a_missing_ssh_is_not() {
        let spawn = |source| MasterError::Spawn {
            program: "ssh".into(),
            source,
        };
        let emfile = master_failure(spawn(std::io::Error::from_raw_os_error(nix::libc::EMFILE)));
        assert_eq!(emfile.kind, FailureKind::OutOfResources);
        assert_eq!(emfile.kind.class(), fwd_core::FailureClass::Transient);
        let missing = master_failure(spawn(std::io::Error::from_raw_os_error(nix::libc::ENOENT)));
        assert_eq!(missing.kind, FailureKind::InvalidConfig);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stderr_line_is_cut_at_its_bound_and_the_rest_dropped() {
        let mut text = b"short\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 100_000));
        text.extend(b"\nafter\nno newline at the end");
        let mut lines = Vec::new();
        bounded_lines(&text[..], 4096, |l| lines.push(l)).await;
        assert_eq!(
            lines.len(),
            4,
            "{:?}",
            lines.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], "short");
        assert_eq!(lines[1], "x".repeat(4096));
        assert_eq!(lines[2], "after");
        assert_eq!(lines[3], "no newline at the end");
    }
}
