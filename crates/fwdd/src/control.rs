//! The control socket: a Unix stream socket in the runtime directory that answers
//! newline-delimited JSON requests from `fwdctl` (protocol in the `fwd-proto` crate,
//! schema in `docs/control-api.md`).
//!
//! Safety properties:
//! * the socket is mode 0600 in a directory that is not writable by other users
//!   (created 0700 if missing), and every peer's uid is checked with `SO_PEERCRED`
//!   (`peer_cred`): only the daemon's own effective uid and root are served;
//! * a request line is bounded ([`ControlConfig::max_line`]); an over-long line gets an
//!   error response and the connection is closed;
//! * each read of a request and each write of a response must finish within
//!   [`ControlConfig::idle_timeout`], otherwise the connection is closed;
//! * at most [`ControlConfig::max_connections`] connections are served at once; further
//!   ones get an error response and are closed at once.
//!
//! * a `watch` connection gets the difference between the last snapshot it was sent and
//!   the current one whenever the daemon's state changes, so a slow reader sees changes
//!   coalesced (memory stays bounded: one snapshot and one batch of lines); a watcher
//!   that leaves a write blocked for `idle_timeout` is disconnected.
//!
//! Runtime: everything runs on the calling thread with [`tokio::task::spawn_local`], so
//! [`ControlServer::run`] must be polled inside a [`tokio::task::LocalSet`]
//! (they panic otherwise). The handler need not be `Send`.

use crate::handler::ControlHandler;
use crate::private_socket::{self, uid_allowed, RefusalLog, SocketFileGuard};
use fwd_proto::{
    decode_request, diff, encode_line, error_code, DecodeError, Event, Request, Response,
};
use std::cell::{Cell, RefCell};
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Limits of the control server.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Time allowed to receive one complete request line, and to write one response.
    pub idle_timeout: Duration,
    /// Connections served concurrently; more are refused with an error response.
    pub max_connections: usize,
    /// Longest accepted request line in bytes, excluding the newline.
    pub max_line: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            idle_timeout: Duration::from_secs(10),
            max_connections: 64,
            max_line: fwd_proto::MAX_LINE,
        }
    }
}

/// A bound control socket, ready to [`run`](ControlServer::run).
///
/// Binding is separate from serving so the daemon can fail fast at startup (e.g. when
/// another fwdd already answers on the socket). Dropping the server (or `run` returning)
/// removes the socket file if it is still the one this server created.
#[derive(Debug)]
pub struct ControlServer {
    listener: std::os::unix::net::UnixListener,
    config: ControlConfig,
    guard: SocketFileGuard,
}

impl ControlServer {
    /// Binds the socket at `path`; needs no runtime.
    ///
    /// * Creates the parent directory (mode 0700) if missing, and refuses a parent that is
    ///   not a directory, is owned by another user than us or root, or is writable by
    ///   group/others without the sticky bit.
    /// * If `path` exists: a live socket (something accepts a connection) is an error
    ///   `"another fwdd is running (control socket PATH answers)"` (kind `AddrInUse`); a
    ///   stale socket is removed; anything that is not a socket is left alone and is an
    ///   error.
    /// * The new socket gets mode 0600.
    pub fn bind(path: &Path, config: ControlConfig) -> io::Result<ControlServer> {
        let (listener, guard) = private_socket::bind(path, "control socket")?;
        info!(socket = %path.display(), "control socket listening");
        Ok(ControlServer {
            listener,
            config,
            guard,
        })
    }

    /// Serves connections until `shutdown` becomes `true` or its sender is dropped, then
    /// closes open connections, removes the socket file and returns. Requests are answered
    /// through `handler`. Must run inside a [`tokio::task::LocalSet`].
    pub async fn run(
        self,
        handler: impl ControlHandler + 'static,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        let ControlServer {
            listener,
            config,
            guard,
        } = self;
        let listener = UnixListener::from_std(listener)?;
        let shared = Rc::new(Shared {
            handler: Box::new(handler),
            config,
            euid: fwd_proto::effective_uid(),
            active: Cell::new(0),
            refusals: RefCell::new(RefusalLog::default()),
        });
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break; // sender gone: the daemon is going away
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => admit(&shared, stream, &shutdown),
                    Err(e) => {
                        // E.g. EMFILE: don't spin, the condition may clear.
                        warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        drop(guard);
        debug!("control socket closed");
        Ok(())
    }
}

struct Shared {
    handler: Box<dyn ControlHandler>,
    config: ControlConfig,
    euid: u32,
    active: Cell<usize>,
    refusals: RefCell<RefusalLog>,
}

/// Best effort, never blocks: used for refusals, where we don't spend time on the peer.
fn try_send_error(stream: &UnixStream, message: &str) {
    let _ = stream.try_write(&encode_line(&Response::error(message)));
}

fn admit(shared: &Rc<Shared>, stream: UnixStream, shutdown: &watch::Receiver<bool>) {
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    if !uid.is_some_and(|u| uid_allowed(u, shared.euid)) {
        if let Some(suppressed) = shared.refusals.borrow_mut().note(uid, Instant::now()) {
            warn!(
                peer_uid = ?uid,
                suppressed,
                "refused control connection from another user"
            );
        }
        let msg = match uid {
            Some(u) => format!("permission denied: uid {u} may not use this control socket"),
            None => "permission denied: cannot determine peer credentials".to_string(),
        };
        try_send_error(&stream, &msg);
        return;
    }
    if shared.active.get() >= shared.config.max_connections {
        debug!(
            limit = shared.config.max_connections,
            "control connection refused: too many connections"
        );
        try_send_error(
            &stream,
            &format!(
                "too many control connections (limit {}), try again",
                shared.config.max_connections
            ),
        );
        return;
    }
    shared.active.set(shared.active.get() + 1);
    let slot = ConnectionSlot(shared.clone());
    let shutdown = shutdown.clone();
    tokio::task::spawn_local(async move {
        let shared = slot.0.clone();
        handle_connection(&shared, stream, shutdown).await;
        drop(slot);
    });
}

/// Frees a connection slot when the connection task ends (or is dropped).
struct ConnectionSlot(Rc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
    }
}

enum LineRead {
    /// A line is in the buffer (without its newline). At end of stream, a final
    /// unterminated line also counts.
    Line,
    /// End of stream and nothing buffered.
    Eof,
    /// The line exceeded the limit; the rest of it was not read.
    TooLong,
}

/// Reads one `\n`-terminated line into `buf` (cleared first), never buffering more than
/// `max + 1` bytes of it.
async fn read_line_bounded<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if buf.len() + chunk.len() > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(chunk);
        let consumed = done.unwrap_or(chunk.len());
        reader.consume(consumed);
        if done.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(LineRead::Line);
        }
    }
}

/// Answers every request except `watch` (see [`serve_watch`]).
async fn answer(shared: &Shared, request: Request) -> Response {
    let h = &shared.handler;
    match request {
        Request::Status => Response::Status(h.status()),
        Request::Probe { port } => match h.probe_port(port).await {
            Ok(()) => Response::Probe { port },
            Err(e) => Response::error_with_code(e, error_code::PROBE_FAILED),
        },
        Request::Reconnect { host } => match h.reconnect(host.as_deref()) {
            Ok(hosts) => {
                info!(event = "control_reconnect", hosts = ?hosts, "reconnect requested");
                Response::Reconnect { hosts }
            }
            Err(e) => Response::error_with_code(e, error_code::UNKNOWN_HOST),
        },
        Request::Resync { host } => match h.resync(host.as_deref()) {
            Ok(hosts) => {
                info!(event = "control_resync", hosts = ?hosts, "resync requested");
                Response::Resync { hosts }
            }
            Err(e) => Response::error_with_code(e, error_code::UNKNOWN_HOST),
        },
        Request::Watch => Response::error("watch cannot be answered with one response"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Streams a snapshot, then the difference to the last sent state after every change,
/// until the client disconnects, a write stays blocked for `idle_timeout`, or shutdown.
/// Input from the client is read and discarded (to notice its EOF).
async fn serve_watch<R, W>(
    shared: &Shared,
    reader: &mut BufReader<R>,
    wr: &mut W,
    shutdown: &mut watch::Receiver<bool>,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let idle = shared.config.idle_timeout;
    let mut changes = shared.handler.changes();
    changes.borrow_and_update();
    let mut last = shared.handler.status();
    let first = Response::Event(Event::Snapshot {
        at_ms: now_ms(),
        status: last.clone(),
    });
    let mut out = encode_line(&first);
    let mut sink = [0u8; 1024];
    loop {
        if !out.is_empty() {
            match tokio::time::timeout(idle, wr.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(error = %e, "watch client gone");
                    return;
                }
                Err(_) => {
                    debug!(timeout = ?idle, "watch client not reading, closing");
                    return;
                }
            }
            out.clear();
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            r = reader.read(&mut sink) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            c = changes.changed() => if c.is_err() { return },
        }
        // Changes usually come in bursts (a reconcile touches several forwards):
        // let the burst finish so it is reported once.
        tokio::task::yield_now().await;
        changes.borrow_and_update();
        let now = shared.handler.status();
        for e in diff(&last, &now, now_ms()) {
            out.extend_from_slice(&encode_line(&Response::Event(e)));
        }
        last = now;
    }
}

async fn handle_connection(
    shared: &Shared,
    stream: UnixStream,
    mut shutdown: watch::Receiver<bool>,
) {
    let idle = shared.config.idle_timeout;
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::with_capacity(16 * 1024, rd);
    let mut line = Vec::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let read = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(idle, read_line_bounded(&mut reader, &mut line, shared.config.max_line)) => r,
        };
        let response = match read {
            Err(_elapsed) => {
                debug!(timeout = ?idle, "control connection idle, closing");
                return;
            }
            Ok(Err(e)) => {
                debug!(error = %e, "control connection read failed");
                return;
            }
            Ok(Ok(LineRead::Eof)) => return,
            Ok(Ok(LineRead::TooLong)) => {
                let err = DecodeError::TooLong {
                    len: shared.config.max_line + 1,
                    max: shared.config.max_line,
                };
                debug!("control request too long, closing");
                let msg = format!("request {err}; closing connection");
                let _ =
                    tokio::time::timeout(idle, wr.write_all(&encode_line(&Response::error(msg))))
                        .await;
                let _ = wr.shutdown().await;
                // Drain a little of what the client is still sending, so that closing
                // with unread data does not reset the connection before it reads the error.
                let drain = async {
                    let mut sink = [0u8; 8192];
                    let mut budget = 1usize << 20;
                    while budget > 0 {
                        match reader.read(&mut sink).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => budget = budget.saturating_sub(n),
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
                return;
            }
            Ok(Ok(LineRead::Line)) => {
                let started = Instant::now();
                match decode_request(&line) {
                    Ok(Request::Watch) => {
                        debug!("control watch started");
                        serve_watch(shared, &mut reader, &mut wr, &mut shutdown).await;
                        return;
                    }
                    Ok(request) => {
                        let cmd = request.cmd();
                        let r = answer(shared, request).await;
                        debug!(cmd, elapsed = ?started.elapsed(), "control request answered");
                        r
                    }
                    Err(e) => {
                        debug!(error = %e, "bad control request");
                        Response::error(e.to_string())
                    }
                }
            }
        };
        match tokio::time::timeout(idle, wr.write_all(&encode_line(&response))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "control connection write failed");
                return;
            }
            Err(_) => {
                debug!("control client not reading, closing");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::LocalFuture;
    use fwd_proto::{decode_response, encode_request, DaemonInfo, ForwardState, Status};
    use std::fs;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::task::LocalSet;

    /// A daemon stand-in: a settable status, a change counter, canned probe answers and
    /// one host named "h1".
    #[derive(Clone)]
    struct Fake(Rc<FakeInner>);
    struct FakeInner {
        status: RefCell<Status>,
        changed: watch::Sender<u64>,
        reconnects: Cell<u32>,
    }
    impl Fake {
        fn new() -> Fake {
            Fake(Rc::new(FakeInner {
                status: RefCell::new(fixture()),
                changed: watch::channel(0).0,
                reconnects: Cell::new(0),
            }))
        }
        fn set(&self, f: impl FnOnce(&mut Status)) {
            f(&mut self.0.status.borrow_mut());
            self.0.changed.send_modify(|v| *v += 1);
        }
        fn hosts(host: Option<&str>) -> Result<Vec<String>, String> {
            match host {
                None | Some("h1") => Ok(vec!["h1".into()]),
                Some(other) => Err(format!("no host named {other:?} (configured: h1)")),
            }
        }
    }
    impl ControlHandler for Fake {
        fn status(&self) -> Status {
            self.0.status.borrow().clone()
        }
        fn changes(&self) -> watch::Receiver<u64> {
            self.0.changed.subscribe()
        }
        fn probe_port(&self, port: u16) -> LocalFuture<'_, Result<(), String>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if port == 80 {
                    Ok(())
                } else {
                    Err(format!("port {port} is not forwarded"))
                }
            })
        }
        fn reconnect(&self, host: Option<&str>) -> Result<Vec<String>, String> {
            let r = Fake::hosts(host);
            if r.is_ok() {
                self.0.reconnects.set(self.0.reconnects.get() + 1);
            }
            r
        }
        fn resync(&self, host: Option<&str>) -> Result<Vec<String>, String> {
            Fake::hosts(host)
        }
    }

    fn forward(port: u16) -> fwd_proto::ForwardStatus {
        fwd_proto::ForwardStatus {
            host: "h1".into(),
            local_port: port,
            local_addrs: vec![format!("127.0.0.1:{port}")],
            remote: format!("127.0.0.1:{port}"),
            container_id: format!("{port:064x}"),
            container_name: format!("svc-{port}"),
            compose_project: None,
            container_port: "80/tcp".into(),
            state: ForwardState::Active,
            reason: None,
            since_ms: 1,
            connections_open: 0,
            connections_total: 0,
        }
    }

    fn fixture() -> Status {
        Status {
            daemon: DaemonInfo {
                version: "test".into(),
                pid: std::process::id(),
                started_at_ms: 1,
            },
            hosts: vec![],
            forwards: vec![],
            health: None,
        }
    }

    /// A fresh private directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "fwdd-ctl-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::DirBuilder::new().mode(0o700).create(&p).unwrap();
            TempDir(p)
        }
        fn sock(&self) -> PathBuf {
            self.0.join("control.sock")
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Runs `body` against a server on `sock` with `config`, then shuts it down and
    /// checks that it exits and removes its socket.
    async fn with_server<F, Fut>(sock: &Path, config: ControlConfig, body: F)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        with_handler(sock, config, Fake::new(), body).await
    }

    async fn with_handler<F, Fut>(sock: &Path, config: ControlConfig, handler: Fake, body: F)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let server = ControlServer::bind(sock, config).unwrap();
        let (tx, rx) = watch::channel(false);
        let task = tokio::task::spawn_local(server.run(handler, rx));
        body().await;
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
        assert!(!sock.exists(), "socket file left behind");
    }

    async fn read_response(stream: &mut BufReader<UnixStream>) -> Option<Response> {
        let mut line = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read_until(b'\n', &mut line))
            .await
            .expect("no response in time")
            .ok()?;
        (n > 0).then(|| decode_response(&line).expect("undecodable response"))
    }

    async fn request(sock: &Path, line: &[u8]) -> Option<Response> {
        let mut s = BufReader::new(UnixStream::connect(sock).await.unwrap());
        s.get_mut().write_all(line).await.unwrap();
        read_response(&mut s).await
    }

    fn error_message(r: Option<Response>) -> String {
        match r {
            Some(Response::Error { message, .. }) => message,
            other => panic!("expected an error response, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn status_request_is_answered() {
        let dir = TempDir::new();
        let sock = dir.sock();
        LocalSet::new()
            .run_until(with_server(&sock, ControlConfig::default(), || async {
                let r = request(&sock, &encode_request(&Request::Status)).await;
                assert_eq!(r, Some(Response::Status(fixture())));
            }))
            .await;
    }

    #[tokio::test]
    async fn probe_reconnect_resync() {
        let dir = TempDir::new();
        let sock = dir.sock();
        let fake = Fake::new();
        LocalSet::new()
            .run_until(with_handler(
                &sock,
                ControlConfig::default(),
                fake.clone(),
                || async {
                    let r = request(&sock, &encode_request(&Request::Probe { port: 80 })).await;
                    assert_eq!(r, Some(Response::Probe { port: 80 }));
                    let r = request(&sock, b"{\"v\":1,\"cmd\":\"probe\",\"port\":81}\n").await;
                    assert_eq!(
                        r,
                        Some(Response::error_with_code(
                            "port 81 is not forwarded",
                            error_code::PROBE_FAILED
                        ))
                    );
                    let r =
                        request(&sock, b"{\"v\":1,\"cmd\":\"reconnect\",\"host\":null}\n").await;
                    assert_eq!(
                        r,
                        Some(Response::Reconnect {
                            hosts: vec!["h1".into()]
                        })
                    );
                    assert_eq!(fake.0.reconnects.get(), 1);
                    let r =
                        request(&sock, b"{\"v\":1,\"cmd\":\"reconnect\",\"host\":\"zz\"}\n").await;
                    assert_eq!(
                        r,
                        Some(Response::error_with_code(
                            "no host named \"zz\" (configured: h1)",
                            error_code::UNKNOWN_HOST
                        ))
                    );
                    assert_eq!(fake.0.reconnects.get(), 1);
                    let r = request(&sock, b"{\"v\":1,\"cmd\":\"resync\",\"host\":\"h1\"}\n").await;
                    assert_eq!(
                        r,
                        Some(Response::Resync {
                            hosts: vec!["h1".into()]
                        })
                    );
                    let msg = error_message(request(&sock, b"{\"v\":1,\"cmd\":\"probe\"}\n").await);
                    assert!(msg.contains("missing field `port`"), "{msg}");
                },
            ))
            .await;
    }

    fn event(r: Option<Response>) -> Event {
        match r {
            Some(Response::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn watch_streams_snapshot_then_changes() {
        let dir = TempDir::new();
        let sock = dir.sock();
        let fake = Fake::new();
        LocalSet::new()
            .run_until(with_handler(
                &sock,
                ControlConfig::default(),
                fake.clone(),
                || async {
                    let mut s = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                    s.get_mut()
                        .write_all(&encode_request(&Request::Watch))
                        .await
                        .unwrap();
                    match event(read_response(&mut s).await) {
                        Event::Snapshot { status, .. } => assert_eq!(status, fixture()),
                        e => panic!("{e:?}"),
                    }
                    fake.set(|st| st.forwards.push(forward(5432)));
                    match event(read_response(&mut s).await) {
                        Event::ForwardAdded { forward, .. } => assert_eq!(forward.local_port, 5432),
                        e => panic!("{e:?}"),
                    }
                    // A change nobody can see (a counter) sends nothing; the next real one does.
                    fake.set(|st| st.forwards[0].connections_total += 1);
                    fake.set(|st| {
                        st.forwards[0].state = ForwardState::Conflict;
                        st.forwards[0].reason = Some("busy".into());
                    });
                    match event(read_response(&mut s).await) {
                        Event::ForwardStateChanged {
                            previous_state,
                            forward,
                            ..
                        } => {
                            assert_eq!(previous_state, ForwardState::Active);
                            assert_eq!(forward.reason.as_deref(), Some("busy"));
                        }
                        e => panic!("{e:?}"),
                    }
                    fake.set(|st| st.forwards.clear());
                    assert_eq!(event(read_response(&mut s).await).kind(), "forward_removed");
                    // Whatever the client sends is ignored; closing ends the watch.
                    s.get_mut().write_all(b"anything\n").await.unwrap();
                    fake.set(|st| st.forwards.push(forward(1)));
                    assert_eq!(event(read_response(&mut s).await).kind(), "forward_added");
                },
            ))
            .await;
    }

    /// A watcher that never reads must not hold up anyone else, must not make the
    /// daemon buffer without bound, and is eventually disconnected.
    #[tokio::test]
    async fn watch_client_that_never_reads_blocks_nobody() {
        let dir = TempDir::new();
        let sock = dir.sock();
        let fake = Fake::new();
        // Big snapshots fill the socket buffer quickly.
        fake.set(|st| st.forwards = (1..=500).map(forward).collect());
        let config = ControlConfig {
            idle_timeout: Duration::from_millis(500),
            ..ControlConfig::default()
        };
        LocalSet::new()
            .run_until(with_handler(&sock, config, fake.clone(), || async {
                let mut stuck = UnixStream::connect(&sock).await.unwrap();
                stuck
                    .write_all(&encode_request(&Request::Watch))
                    .await
                    .unwrap();
                let started = Instant::now();
                let mut worst = Duration::ZERO;
                let mut n = 0u32;
                while started.elapsed() < Duration::from_millis(900) {
                    // Flip every forward's state: each diff is as big as it gets.
                    fake.set(|st| {
                        for f in &mut st.forwards {
                            f.state = if f.state == ForwardState::Active {
                                ForwardState::Pending
                            } else {
                                ForwardState::Active
                            };
                        }
                    });
                    let t = Instant::now();
                    let r = request(&sock, &encode_request(&Request::Status)).await;
                    worst = worst.max(t.elapsed());
                    assert!(matches!(r, Some(Response::Status(st)) if st.forwards.len() == 500));
                    n += 1;
                }
                assert!(worst < Duration::from_millis(250), "a status took {worst:?}");
                // By now the stuck watcher was disconnected: reading gives what was
                // queued in the socket, then EOF — not one line per change.
                let mut got = Vec::new();
                tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut got))
                    .await
                    .expect("watcher not disconnected")
                    .unwrap();
                let lines = got.iter().filter(|&&b| b == b'\n').count();
                assert!(lines >= 1, "no snapshot");
                assert!(lines < 500 * n as usize, "{lines} lines for {n} changes");
                println!("{n} status requests while a watcher was stuck; worst {worst:?}; watcher got {} bytes", got.len());
            }))
            .await;
    }

    /// Not a benchmark with assertions: how long a status request with 500 forwards
    /// takes over the socket, for the record.
    #[tokio::test]
    async fn status_with_500_forwards_timing() {
        let dir = TempDir::new();
        let sock = dir.sock();
        let fake = Fake::new();
        fake.set(|st| st.forwards = (1..=500).map(forward).collect());
        LocalSet::new()
            .run_until(with_handler(&sock, ControlConfig::default(), fake, || async {
                let mut s = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                let mut times = Vec::new();
                for _ in 0..50 {
                    let t = Instant::now();
                    s.get_mut()
                        .write_all(&encode_request(&Request::Status))
                        .await
                        .unwrap();
                    let mut line = Vec::new();
                    s.read_until(b'\n', &mut line).await.unwrap();
                    times.push(t.elapsed());
                    assert!(line.len() > 100_000);
                }
                times.sort();
                println!(
                    "status round trip with 500 forwards (fake handler, same thread as client): median {:?}, max {:?}",
                    times[times.len() / 2],
                    times[times.len() - 1]
                );
            }))
            .await;
    }

    #[tokio::test]
    async fn socket_is_owner_only() {
        let dir = TempDir::new();
        let sock = dir.0.join("sub/control.sock");
        let server = ControlServer::bind(&sock, ControlConfig::default()).unwrap();
        let mode = fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(dir.0.join("sub"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        drop(server);
        assert!(!sock.exists());
    }

    #[tokio::test]
    async fn garbage_gets_error_and_daemon_keeps_serving() {
        let dir = TempDir::new();
        let sock = dir.sock();
        LocalSet::new()
            .run_until(with_server(&sock, ControlConfig::default(), || async {
                let mut s = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                s.get_mut().write_all(b"garbage\n").await.unwrap();
                let msg = error_message(read_response(&mut s).await);
                assert!(msg.starts_with("invalid JSON"), "{msg}");
                // Framing is intact, so the same connection still works...
                s.get_mut()
                    .write_all(
                        b"\xff\xfe\n{\"v\":9,\"cmd\":\"status\"}\n{\"v\":1,\"cmd\":\"nope\"}\n",
                    )
                    .await
                    .unwrap();
                assert!(error_message(read_response(&mut s).await).contains("UTF-8"));
                assert!(error_message(read_response(&mut s).await)
                    .contains("unsupported protocol version 9"));
                assert!(
                    error_message(read_response(&mut s).await).contains("unknown command \"nope\"")
                );
                s.get_mut()
                    .write_all(&encode_request(&Request::Status))
                    .await
                    .unwrap();
                assert_eq!(
                    read_response(&mut s).await,
                    Some(Response::Status(fixture()))
                );
                drop(s);
                // ...and so does a new one.
                let r = request(&sock, &encode_request(&Request::Status)).await;
                assert_eq!(r, Some(Response::Status(fixture())));
            }))
            .await;
    }

    #[tokio::test]
    async fn oversize_line_gets_error_and_close() {
        let dir = TempDir::new();
        let sock = dir.sock();
        LocalSet::new()
            .run_until(with_server(&sock, ControlConfig::default(), || async {
                let mut s = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                // Keep sending without a newline; the server must not buffer it all.
                let chunk = vec![b'x'; 64 * 1024];
                let writer = async {
                    for _ in 0..32 {
                        if s.get_mut().write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
                let msg = error_message(read_response(&mut s).await);
                assert!(msg.contains("line too long"), "{msg}");
                assert_eq!(read_response(&mut s).await, None, "connection not closed");
                // A concurrent/next client is unaffected.
                let r = request(&sock, &encode_request(&Request::Status)).await;
                assert_eq!(r, Some(Response::Status(fixture())));
            }))
            .await;
    }

    #[tokio::test]
    async fn idle_client_is_disconnected() {
        let dir = TempDir::new();
        let sock = dir.sock();
        let config = ControlConfig {
            idle_timeout: Duration::from_millis(200),
            ..ControlConfig::default()
        };
        LocalSet::new()
            .run_until(with_server(&sock, config, || async {
                let started = Instant::now();
                let mut silent = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                let mut slow = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                slow.get_mut().write_all(b"{\"v\":1,").await.unwrap();
                assert_eq!(read_response(&mut silent).await, None);
                assert_eq!(read_response(&mut slow).await, None);
                let took = started.elapsed();
                assert!(
                    took >= Duration::from_millis(190) && took < Duration::from_secs(3),
                    "{took:?}"
                );
            }))
            .await;
    }

    #[tokio::test]
    async fn connection_cap() {
        let dir = TempDir::new();
        let sock = dir.sock();
        let config = ControlConfig {
            max_connections: 2,
            ..ControlConfig::default()
        };
        LocalSet::new()
            .run_until(with_server(&sock, config, || async {
                let mut a = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                let _b = UnixStream::connect(&sock).await.unwrap();
                // Make sure both were admitted before the third arrives.
                a.get_mut()
                    .write_all(&encode_request(&Request::Status))
                    .await
                    .unwrap();
                assert!(matches!(
                    read_response(&mut a).await,
                    Some(Response::Status(_))
                ));
                tokio::time::sleep(Duration::from_millis(50)).await;
                let msg = error_message(request(&sock, &encode_request(&Request::Status)).await);
                assert!(msg.contains("too many control connections"), "{msg}");
                drop(a);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let r = request(&sock, &encode_request(&Request::Status)).await;
                assert_eq!(r, Some(Response::Status(fixture())));
            }))
            .await;
    }

    #[tokio::test]
    async fn live_socket_refused_stale_socket_replaced() {
        let dir = TempDir::new();
        let sock = dir.sock();
        LocalSet::new()
            .run_until(with_server(&sock, ControlConfig::default(), || async {
                let err = ControlServer::bind(&sock, ControlConfig::default()).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
                assert_eq!(
                    err.to_string(),
                    format!(
                        "another fwdd is running (control socket {} answers)",
                        sock.display()
                    )
                );
                // The live server still works.
                let r = request(&sock, &encode_request(&Request::Status)).await;
                assert_eq!(r, Some(Response::Status(fixture())));
            }))
            .await;

        // A stale socket file (nobody listening) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let server = ControlServer::bind(&sock, ControlConfig::default()).unwrap();
        drop(server);

        // A regular file is never removed.
        fs::write(&sock, b"precious").unwrap();
        let err = ControlServer::bind(&sock, ControlConfig::default()).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(fs::read(&sock).unwrap(), b"precious");
    }

    #[test]
    fn unsafe_runtime_dir_refused() {
        let dir = TempDir::new();
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ControlServer::bind(&dir.sock(), ControlConfig::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("writable by other users"), "{err}");
        // Sticky, like /tmp: accepted.
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o1777)).unwrap();
        drop(ControlServer::bind(&dir.sock(), ControlConfig::default()).unwrap());
    }

    #[test]
    fn shutdown_before_start_returns_at_once() {
        let dir = TempDir::new();
        let sock = dir.sock();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = watch::channel(true);
        LocalSet::new().block_on(&rt, async {
            let server = ControlServer::bind(&sock, ControlConfig::default()).unwrap();
            tokio::time::timeout(Duration::from_secs(2), server.run(Fake::new(), rx))
                .await
                .unwrap()
                .unwrap();
        });
        drop(tx);
        assert!(!sock.exists());
    }

    #[test]
    fn peer_policy() {
        assert!(uid_allowed(1000, 1000));
        assert!(uid_allowed(0, 1000));
        assert!(uid_allowed(0, 0));
        assert!(!uid_allowed(1001, 1000));
        assert!(!uid_allowed(1000, 0));
    }

    #[test]
    fn refusal_log_is_rate_limited() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note(Some(5), t0), Some(0));
        assert_eq!(log.note(Some(5), t0 + Duration::from_secs(1)), None);
        assert_eq!(log.note(Some(5), t0 + Duration::from_secs(2)), None);
        assert_eq!(log.note(Some(6), t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(log.note(Some(5), t0 + Duration::from_secs(61)), Some(2));
    }

    const CHILD_ENV: &str = "FWDD_CONTROL_TEST_CHILD_SOCKET";

    /// Child half of `other_uid_is_refused`: run by the test binary re-executed as
    /// another user; connects and prints the first response line.
    #[test]
    #[ignore = "helper, run by other_uid_is_refused"]
    fn peer_child() {
        use std::io::BufRead;
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // A refused peer is answered and closed at once, so our request may
        // meet a closed socket (EPIPE); the refusal is still there to read.
        let _ = std::io::Write::write_all(&mut &s, &encode_request(&Request::Status));
        let mut line = String::new();
        std::io::BufReader::new(&s).read_line(&mut line).unwrap();
        println!("CHILD-RESPONSE {}", line.trim_end());
    }

    /// End to end: a process running as another uid (nobody) is refused even when the
    /// file permissions would let it connect. Needs root to switch uid; skipped otherwise.
    #[tokio::test]
    async fn other_uid_is_refused() {
        if fwd_proto::effective_uid() != 0 {
            eprintln!("skipping other_uid_is_refused: needs root to run a child as another uid");
            return;
        }
        let dir = TempDir::new();
        let sock = dir.sock();
        LocalSet::new()
            .run_until(with_server(&sock, ControlConfig::default(), || async {
                // Open the file permissions so only the peer-credential check stands.
                fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap();
                fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
                // Run a copy outside the build tree: the tree may sit under a
                // directory that nobody cannot enter.
                let exe = dir.0.join("peer-child");
                fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
                fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
                let out = tokio::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "control::tests::peer_child",
                        "--ignored",
                        "--nocapture",
                    ])
                    .env(CHILD_ENV, &sock)
                    .uid(65534)
                    .gid(65534)
                    .output()
                    .await;
                let out =
                    out.unwrap_or_else(|e| panic!("cannot run {} as nobody: {e}", exe.display()));
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                let line = stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("CHILD-RESPONSE "))
                    .unwrap_or_else(|| panic!("child said: {stdout}\n{stderr}"));
                let msg = error_message(Some(decode_response(line.as_bytes()).unwrap()));
                assert_eq!(
                    msg,
                    "permission denied: uid 65534 may not use this control socket"
                );
                // We are still serving our own user.
                let r = request(&sock, &encode_request(&Request::Status)).await;
                assert_eq!(r, Some(Response::Status(fixture())));
            }))
            .await;
    }
}
