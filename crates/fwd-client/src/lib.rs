//! Blocking client of fwdd's control socket: one request, one response line;
//! or a stream of lines for `watch`. The one client of the control API:
//! fwdctl, the end-to-end tests and the bench all talk to fwdd through it.
//! Every error says what failed and, where there is one, what to do.

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

fn connect(path: &Path) -> Result<UnixStream> {
    UnixStream::connect(path).map_err(|e| {
        let p = path.display();
        match e.kind() {
            io::ErrorKind::NotFound => {
                fail!("fwdd is not running (no control socket at {p})")
            }
            io::ErrorKind::ConnectionRefused => {
                fail!("fwdd is not running (control socket {p} exists but nothing accepts on it)")
            }
            io::ErrorKind::PermissionDenied => {
                fail!("permission denied on control socket {p} (is fwdd running as another user?)")
            }
            _ => fail!("cannot connect to fwdd control socket {p}: {e}"),
        }
    })
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
