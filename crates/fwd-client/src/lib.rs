//! Blocking client of fwdd's control socket: one request, one response line;
//! or a stream of lines for `watch`. The one client of the control API:
//! fwdctl, the end-to-end tests and the bench all talk to fwdd through it.
//! Every error says what failed and, where there is one, what to do.
//!
//! No answer is believed from a socket that is not on the caller's side
//! (its directory, its file and the process answering: the caller's or
//! root's, see [`fwd_core::socket_trust`]), and no socket path fwdd names is
//! handed on without the same check ([`check_engine_socket`]).

mod trust;

use fwd_core::socket_trust::{self, Role};
use fwd_proto::{decode_response, encode_request, Request, Response, Status};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a request failed, in words for a person (the next step included).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

pub type Result<T> = std::result::Result<T, ClientError>;

macro_rules! fail {
    ($($t:tt)*) => { ClientError(format!($($t)*)) };
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        fail!("I/O error on the fwdd control socket: {e}")
    }
}

/// Time allowed for a whole request: connect, send, and the complete response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response line accepted (a status with thousands of forwards fits easily).
const MAX_RESPONSE: usize = 64 << 20;

/// Which socket to talk to: `--socket`, else `--runtime-dir`/control.sock, else
/// `$FWD_SOCKET`, else the daemon's default runtime dir.
pub fn resolve_socket(
    socket: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    env_socket: Option<std::ffi::OsString>,
) -> PathBuf {
    socket
        .or_else(|| runtime_dir.map(|d| d.join(fwd_proto::CONTROL_SOCKET_NAME)))
        .or_else(|| env_socket.filter(|s| !s.is_empty()).map(PathBuf::from))
        .unwrap_or_else(fwd_proto::default_control_socket)
}

/// fwdd answered with a response of the wrong kind for the request.
pub fn unexpected_answer(other: &fwd_proto::Response) -> ClientError {
    fail!(
        "unexpected answer from fwdd: {other:?}; are fwdd and fwdctl from different \
         releases? use the same release of both"
    )
}

/// The ways to point fwdctl at a daemon, said wherever one cannot be
/// reached: a daemon started elsewhere (`fwdd --runtime-dir`, another
/// user, a demo) is not where fwdctl looks by default. The flags are
/// fwdctl's (its clap definitions; a test there keeps them in step).
pub fn point_at_daemon() -> String {
    format!(
        "point fwdctl at the fwdd that runs with --socket PATH (its control.sock), \
         --runtime-dir DIR (the --runtime-dir fwdd was given) or {}=PATH",
        fwd_proto::SOCKET_ENV
    )
}

fn not_reachable(path: &Path, e: io::Error) -> ClientError {
    let p = path.display();
    let point = point_at_daemon();
    match e.kind() {
        io::ErrorKind::NotFound => {
            fail!("fwdd is not running (no control socket at {p}): start fwdd, or {point}")
        }
        io::ErrorKind::ConnectionRefused => fail!(
            "fwdd is not running (control socket {p} exists but nothing accepts on it): \
             start fwdd, or {point}"
        ),
        io::ErrorKind::PermissionDenied => fail!(
            "permission denied on control socket {p} (is fwdd running as another user?): run \
             fwdctl as that user, or {point}"
        ),
        _ => fail!("cannot connect to fwdd control socket {p}: {e}; {point}"),
    }
}

/// Connects to the control socket, believing it only if it is on the
/// caller's side ([`fwd_core::socket_trust`]): its directory and file
/// first, then the process that accepted. Nothing is sent before that.
fn connect(path: &Path) -> Result<UnixStream> {
    let trusted = match trust::facts(path) {
        Ok(facts) => trust::judge(Role::Control, path, &facts).map_err(ClientError)?,
        // As connect would fail: said the same way.
        Err(trust::Unknown::Dir(e) | trust::Unknown::File(e)) => {
            return Err(not_reachable(path, e))
        }
    };
    let stream = UnixStream::connect(path).map_err(|e| not_reachable(path, e))?;
    let peer = trust::peer_uid(&stream).map_err(|e| {
        fail!(
            "cannot tell who answers on the control socket {} ({e}); refusing to believe it",
            path.display()
        )
    })?;
    socket_trust::judge_peer(peer, trusted)
        .map_err(|doubt| ClientError(trust::refusal(Role::Control, path, doubt)))?;
    Ok(stream)
}

/// Checks a socket path fwdd named before it is shown to anyone (`fwdctl
/// env`'s `DOCKER_HOST`): its directory must exist and be on the caller's
/// side, and the socket, if it is there, the caller's or root's — the same
/// rules as for the control socket, so fwdctl never prints a socket in a
/// directory it would not trust. A socket not there yet is fine: only the
/// caller or root could make it there.
pub fn check_engine_socket(path: &Path) -> Result<()> {
    let facts = trust::facts(path).map_err(|e| match e {
        trust::Unknown::Dir(e) => fail!(
            "fwdd's engine socket {}: cannot inspect its directory ({e}); refusing to print \
             a socket in a directory that is not known to be yours",
            path.display()
        ),
        trust::Unknown::File(e) => fail!(
            "fwdd's engine socket {}: cannot inspect it ({e}); refusing to print it",
            path.display()
        ),
    })?;
    trust::judge(Role::Engine, path, &facts)
        .map(|_| ())
        .map_err(ClientError)
}

/// Sends `req` and returns the response line (without its newline), all within `timeout`.
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let timed_out = || {
        fail!(
            "fwdd did not answer within {}s (control socket {})",
            timeout.as_secs_f64(),
            path.display()
        )
    };
    let mut stream = connect(path)?;
    stream.set_write_timeout(remaining().or(Some(Duration::from_millis(1))))?;
    stream
        .write_all(&encode_request(req))
        .map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
            _ => fail!("cannot send request to fwdd ({}): {e}", path.display()),
        })?;
    let mut line = Vec::with_capacity(8192);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let Some(left) = remaining() else {
            return Err(timed_out());
        };
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out())
            }
            Err(e) => return Err(fail!("reading from fwdd ({}) failed: {e}", path.display())),
        };
        if n == 0 {
            return Err(fail!(
                "fwdd closed the connection without answering (control socket {})",
                path.display()
            ));
        }
        if let Some(i) = chunk[..n].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&chunk[..i]);
            return Ok(line);
        }
        line.extend_from_slice(&chunk[..n]);
        if line.len() > MAX_RESPONSE {
            return Err(fail!("response from fwdd exceeds {MAX_RESPONSE} bytes"));
        }
    }
}

/// `status`, decoded: what fwdctl, the tests and the bench ask most.
pub fn status(path: &Path, timeout: Duration) -> Result<Status> {
    let line = request(path, &Request::Status, timeout)?;
    match decode_response(&line)
        .map_err(|e| fail!("bad answer from fwdd ({}): {e}", path.display()))?
    {
        Response::Status(st) => Ok(st),
        Response::Error { message, .. } => Err(fail!("fwdd refused the request: {message}")),
        other => Err(unexpected_answer(&other)),
    }
}

/// A connection carrying a stream of response lines (`watch`).
pub struct LineStream {
    reader: io::BufReader<UnixStream>,
    path: PathBuf,
}

impl LineStream {
    /// Connects and sends `req`; the first line must arrive within `first_timeout`.
    pub fn open(path: &Path, req: &Request) -> Result<LineStream> {
        let mut stream = connect(path)?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        stream
            .write_all(&encode_request(req))
            .map_err(|e| fail!("cannot send request to fwdd ({}): {e}", path.display()))?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        Ok(LineStream {
            reader: io::BufReader::new(stream),
            path: path.to_path_buf(),
        })
    }

    /// After the first line: wait for further lines as long as it takes.
    pub fn no_read_timeout(&mut self) -> Result<()> {
        self.reader.get_ref().set_read_timeout(None)?;
        Ok(())
    }

    /// The next line without its newline, or `None` when fwdd closed the connection.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        use std::io::BufRead;
        let mut line = Vec::new();
        let mut limited = (&mut self.reader).take(MAX_RESPONSE as u64 + 1);
        let n = loop {
            match limited.read_until(b'\n', &mut line) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(fail!(
                        "fwdd did not answer within {}s (control socket {})",
                        REQUEST_TIMEOUT.as_secs(),
                        self.path.display()
                    ))
                }
                Err(e) => {
                    return Err(fail!(
                        "reading from fwdd ({}) failed: {e}",
                        self.path.display()
                    ))
                }
            }
        };
        if n == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_RESPONSE {
                return Err(fail!("response from fwdd exceeds {MAX_RESPONSE} bytes"));
            }
            return Ok(None); // cut off mid-line: the daemon went away
        }
        line.pop();
        Ok(Some(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;

    /// A listener that answers one request with a status, on a thread.
    fn answering(sock: &Path) -> std::thread::JoinHandle<Vec<u8>> {
        let listener = UnixListener::bind(sock).expect("bind");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut req = Vec::new();
            let mut byte = [0u8];
            while s.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
                req.push(byte[0]);
            }
            let golden = include_str!("../../fwd-proto/tests/golden/status.json");
            let line = format!(
                "{{\"v\":1,\"ok\":true,\"status\":{}}}\n",
                golden.replace('\n', "")
            );
            s.write_all(line.as_bytes()).expect("write");
            req
        })
    }

    #[test]
    fn a_socket_in_the_callers_own_directory_is_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("control.sock");
        let server = answering(&sock);
        let st = status(&sock, REQUEST_TIMEOUT).expect("status");
        assert!(!st.hosts.is_empty());
        let mut sent = server.join().expect("server");
        sent.push(b'\n');
        assert_eq!(sent, encode_request(&Request::Status));
        check_engine_socket(&sock).expect("the same directory is trusted for a printed path");
        check_engine_socket(&dir.path().join("not-there-yet.sock"))
            .expect("a socket not made yet, in a trusted directory");
    }

    #[test]
    fn a_socket_in_a_directory_others_may_write_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("control.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let err = status(&sock, REQUEST_TIMEOUT).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("refusing the control socket {}", sock.display())),
            "{err}"
        );
        assert!(
            err.contains("may be written by group or others (mode 777)"),
            "{err}"
        );
        assert!(
            err.contains(&format!("chmod 700 {}", dir.path().display())),
            "{err}"
        );
        // Refused before connecting: nobody knocked.
        assert_eq!(
            listener.accept().map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let err = check_engine_socket(&sock).unwrap_err().to_string();
        assert!(err.starts_with("refusing fwdd's engine socket"), "{err}");
    }

    #[test]
    fn a_printed_socket_whose_directory_is_missing_is_refused() {
        let err = check_engine_socket(Path::new("/nonexistent-fwd-dir/docker.sock"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("fwdd's engine socket /nonexistent-fwd-dir/docker.sock: cannot inspect its directory"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_control_socket_is_still_not_running_and_says_how_to_point_at_one() {
        let err = status(
            Path::new("/nonexistent-fwd-dir/control.sock"),
            REQUEST_TIMEOUT,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "fwdd is not running (no control socket at /nonexistent-fwd-dir/control.sock): \
             start fwdd, or point fwdctl at the fwdd that runs with --socket PATH (its \
             control.sock), --runtime-dir DIR (the --runtime-dir fwdd was given) or \
             FWD_SOCKET=PATH"
        );
    }

    #[test]
    fn every_way_of_not_reaching_fwdd_names_the_ways_to_point_at_it() {
        let p = Path::new("/run/fwdd/control.sock");
        for kind in [
            io::ErrorKind::NotFound,
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::Other,
        ] {
            let err = not_reachable(p, io::Error::from(kind)).to_string();
            assert!(err.contains("/run/fwdd/control.sock"), "{kind:?}: {err}");
            for way in ["--socket PATH", "--runtime-dir DIR", "FWD_SOCKET=PATH"] {
                assert!(err.contains(way), "{kind:?}: {err}");
            }
        }
        // A socket file nobody accepts on (fwdd gone, its file left).
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("control.sock");
        drop(UnixListener::bind(&sock).expect("bind"));
        let err = status(&sock, REQUEST_TIMEOUT).unwrap_err().to_string();
        assert!(
            err.starts_with("fwdd is not running (control socket"),
            "{err}"
        );
        assert!(err.contains("--socket PATH"), "{err}");
    }

    #[test]
    fn socket_precedence() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            resolve_socket(p("/a.sock"), p("/rt"), Some("/env.sock".into())),
            PathBuf::from("/a.sock")
        );
        assert_eq!(
            resolve_socket(None, p("/rt"), Some("/env.sock".into())),
            PathBuf::from("/rt/control.sock")
        );
        assert_eq!(
            resolve_socket(None, None, Some("/env.sock".into())),
            PathBuf::from("/env.sock")
        );
        assert_eq!(
            resolve_socket(None, None, Some("".into())),
            fwd_proto::default_control_socket()
        );
        assert_eq!(
            resolve_socket(None, None, None),
            fwd_proto::default_control_socket()
        );
    }
}
