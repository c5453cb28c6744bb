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
//! Runtime: everything runs on the calling thread with [`tokio::task::spawn_local`], so
//! [`ControlServer::run`] must be polled inside a [`tokio::task::LocalSet`]
//! (they panic otherwise). The status callback need not be `Send`.

use fwd_proto::{decode_request, encode_line, DecodeError, Request, Response, Status};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
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
        let euid = fwd_proto::effective_uid();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            ensure_private_dir(dir, euid)?;
        }
        remove_stale_socket(path)?;
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind control socket {}: {e}", path.display()),
            )
        })?;
        // The directory is private, so the short window before chmod exposes nothing.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let md = fs::symlink_metadata(path)?;
        info!(socket = %path.display(), "control socket listening");
        Ok(ControlServer {
            listener,
            config,
            guard: SocketFileGuard {
                path: path.to_path_buf(),
                dev: md.dev(),
                ino: md.ino(),
            },
        })
    }

    /// Serves connections until `shutdown` becomes `true` or its sender is dropped, then
    /// closes open connections, removes the socket file and returns. `status` is called
    /// once per `status` request. Must run inside a [`tokio::task::LocalSet`].
    pub async fn run(
        self,
        status: impl Fn() -> Status + 'static,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        let ControlServer {
            listener,
            config,
            guard,
        } = self;
        let listener = UnixListener::from_std(listener)?;
        let shared = Rc::new(Shared {
            status: Box::new(status),
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

/// Removes the socket file on drop if it is still the one we bound.
#[derive(Debug)]
struct SocketFileGuard {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        if let Ok(md) = fs::symlink_metadata(&self.path) {
            if md.dev() == self.dev && md.ino() == self.ino {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

fn ensure_private_dir(dir: &Path, euid: u32) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create runtime directory {}: {e}", dir.display()),
            ))
        }
    }
    let md = fs::symlink_metadata(dir)?;
    let bad = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing runtime directory {}: {why}", dir.display()),
        ))
    };
    if !md.is_dir() {
        return bad("not a directory (symlinks are not accepted)".into());
    }
    if md.uid() != euid && md.uid() != 0 {
        return bad(format!("owned by uid {}, not by uid {euid}", md.uid()));
    }
    let mode = md.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return bad(format!(
            "writable by other users (mode {:o}) without the sticky bit",
            mode & 0o7777
        ));
    }
    Ok(())
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !md.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another fwdd is running (control socket {} answers)",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(socket = %path.display(), "removing stale control socket");
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "cannot probe existing control socket {}: {e}",
                path.display()
            ),
        )),
    }
}

struct Shared {
    status: Box<dyn Fn() -> Status>,
    config: ControlConfig,
    euid: u32,
    active: Cell<usize>,
    refusals: RefCell<RefusalLog>,
}

/// Rate limit for "refused peer" log lines: at most one per uid per interval.
#[derive(Default)]
struct RefusalLog {
    last: HashMap<Option<u32>, (Instant, u64)>,
}

impl RefusalLog {
    const INTERVAL: Duration = Duration::from_secs(60);
    const MAX_UIDS: usize = 1024;

    /// Returns `Some(suppressed_since_last_log)` if this refusal should be logged.
    fn note(&mut self, uid: Option<u32>, now: Instant) -> Option<u64> {
        if self.last.len() >= Self::MAX_UIDS && !self.last.contains_key(&uid) {
            self.last.clear();
        }
        match self.last.get_mut(&uid) {
            Some((at, suppressed)) if now.duration_since(*at) < Self::INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.last.insert(uid, (now, 0));
                Some(0)
            }
        }
    }
}

/// Whether a peer uid may use the socket: our own effective uid, or root.
fn uid_allowed(peer: u32, euid: u32) -> bool {
    peer == euid || peer == 0
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

fn answer(shared: &Shared, request: Request) -> Response {
    match request {
        Request::Status => Response::Status((shared.status)()),
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
                    Ok(request) => {
                        let cmd = request.cmd();
                        let r = answer(shared, request);
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
    use fwd_proto::{decode_response, encode_request, DaemonInfo};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::task::LocalSet;

    fn fixture() -> Status {
        Status {
            daemon: DaemonInfo {
                version: "test".into(),
                pid: std::process::id(),
                started_at_ms: 1,
            },
            hosts: vec![],
            forwards: vec![],
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
        let server = ControlServer::bind(sock, config).unwrap();
        let (tx, rx) = watch::channel(false);
        let task = tokio::task::spawn_local(server.run(fixture, rx));
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
            Some(Response::Error { message }) => message,
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
            tokio::time::timeout(Duration::from_secs(2), server.run(fixture, rx))
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
        std::io::Write::write_all(&mut &s, &encode_request(&Request::Status)).unwrap();
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
                let exe = std::env::current_exe().unwrap();
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
                let out = match out {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!(
                            "skipping other_uid_is_refused: cannot run {} as nobody: {e}",
                            exe.display()
                        );
                        return;
                    }
                };
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                if !stdout.contains("CHILD-RESPONSE")
                    && stderr.contains("Permission denied")
                    && !stderr.contains("peer_child")
                {
                    eprintln!(
                        "skipping other_uid_is_refused: test binary not executable by nobody"
                    );
                    return;
                }
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
