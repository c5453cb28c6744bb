//! Native client of OpenSSH's control-socket ("mux") protocol, version 4.
//!
//! Wire format (openssh-portable `PROTOCOL.mux`, `mux.c`): every message is
//! `u32 length | payload`; strings are `u32 length | bytes`. Both sides start with
//! `MUX_MSG_HELLO | u32 version`; every later request is `u32 type | u32 request_id | …`.
//!
//! File descriptors are passed after a request as separate one-byte messages, each
//! carrying one fd in an `SCM_RIGHTS` control message (that is what the master's
//! `mm_receive_fd` expects).
//!
//! Every async fn here may be cancelled (dropped) at any await point; callers are
//! expected to wrap them in timeouts. A [`MuxClient`] whose request was cancelled
//! half-way refuses further requests ([`MuxError::Desynchronized`]); open a new one.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// Largest message we accept from the master (the master's own replies are tiny).
pub const MAX_MESSAGE_LEN: usize = 256 * 1024;

/// Mux protocol version spoken by OpenSSH since 5.x.
pub const MUX_VERSION: u32 = 4;

pub const MUX_MSG_HELLO: u32 = 0x0000_0001;
pub const MUX_C_NEW_SESSION: u32 = 0x1000_0002;
pub const MUX_C_ALIVE_CHECK: u32 = 0x1000_0004;
pub const MUX_C_TERMINATE: u32 = 0x1000_0005;
pub const MUX_C_OPEN_FWD: u32 = 0x1000_0006;
pub const MUX_C_CLOSE_FWD: u32 = 0x1000_0007;
pub const MUX_C_NEW_STDIO_FWD: u32 = 0x1000_0008;
pub const MUX_S_OK: u32 = 0x8000_0001;
pub const MUX_S_PERMISSION_DENIED: u32 = 0x8000_0002;
pub const MUX_S_FAILURE: u32 = 0x8000_0003;
pub const MUX_S_EXIT_MESSAGE: u32 = 0x8000_0004;
pub const MUX_S_ALIVE: u32 = 0x8000_0005;
pub const MUX_S_SESSION_OPENED: u32 = 0x8000_0006;
pub const MUX_S_TTY_ALLOC_FAIL: u32 = 0x8000_0008;

/// `escape_char` value meaning "no escape character".
const NO_ESCAPE_CHAR: u32 = 0xffff_ffff;

/// Forwarding type of `MUX_C_OPEN_FWD` / `MUX_C_CLOSE_FWD`: `-L`.
const MUX_FWD_LOCAL: u32 = 1;
/// `PORT_STREAMLOCAL` (-2, `misc.h`) as a `u32` on the wire: "the host field is a Unix
/// socket path".
const PORT_STREAMLOCAL: u32 = 0xffff_fffe;

/// Longest local forward socket path, in bytes: macOS limits `sun_path` to 104 bytes
/// including the NUL (Linux: 108). The master binds exactly this path.
pub const MAX_LOCAL_SOCKET_PATH_LEN: usize = 104 - 1;
/// Longest remote socket path we send, in bytes (a sanity limit; the remote sshd
/// applies its own `sun_path` limit when it connects).
pub const MAX_REMOTE_SOCKET_PATH_LEN: usize = 1024 - 1;

#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error(
        "cannot connect to the ssh control socket {path}: {source} \
         (is the ControlMaster running?)"
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("I/O error on the ssh control socket: {0}")]
    Io(#[from] io::Error),
    #[error("the ssh ControlMaster closed the control connection unexpectedly")]
    Closed,
    #[error("ssh mux protocol error: {0}")]
    Protocol(String),
    #[error("an earlier request on this mux connection was cancelled; open a new connection")]
    Desynchronized,
    /// `MUX_S_FAILURE`, e.g. "Session open refused by peer" (nothing listening at the
    /// forward's target, or sshd's MaxSessions reached).
    #[error("the ssh ControlMaster refused the request: {0}")]
    Refused(String),
    /// `MUX_S_PERMISSION_DENIED` (ControlMaster=ask and the user said no).
    #[error("the ssh ControlMaster denied permission: {0}")]
    PermissionDenied(String),
    #[error("cannot put this request to the ssh master: {0}")]
    InvalidArgument(String),
}

// ---------------------------------------------------------------------------------
// Encoding / decoding (pure)

/// Builder for one mux message payload (without the outer length).
#[derive(Debug, Default, Clone)]
pub(crate) struct MsgBuf(Vec<u8>);

impl MsgBuf {
    pub(crate) fn new(msg_type: u32) -> Self {
        let mut b = MsgBuf(Vec::with_capacity(64));
        b.put_u32(msg_type);
        b
    }
    pub(crate) fn put_u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn put_bytes(&mut self, s: &[u8]) -> Result<&mut Self, MuxError> {
        let len = u32::try_from(s.len())
            .ok()
            .filter(|&l| (l as usize) < MAX_MESSAGE_LEN)
            .ok_or_else(|| {
                MuxError::InvalidArgument(format!(
                    "a string of over {MAX_MESSAGE_LEN} bytes does not fit in a mux message"
                ))
            })?;
        self.put_u32(len);
        self.0.extend_from_slice(s);
        Ok(self)
    }
    pub(crate) fn put_str(&mut self, s: &str) -> Result<&mut Self, MuxError> {
        self.put_bytes(s.as_bytes())
    }
    /// The framed message: `u32 length | payload`.
    pub(crate) fn framed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() + 4);
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.0);
        out
    }
}

/// Reader over one received payload.
#[derive(Debug)]
pub(crate) struct MsgReader<'a> {
    buf: &'a [u8],
}

impl<'a> MsgReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        MsgReader { buf }
    }
    pub(crate) fn get_u32(&mut self) -> Result<u32, MuxError> {
        if self.buf.len() < 4 {
            return Err(MuxError::Protocol("truncated message (u32)".into()));
        }
        let (head, rest) = self.buf.split_at(4);
        self.buf = rest;
        Ok(u32::from_be_bytes([head[0], head[1], head[2], head[3]]))
    }
    pub(crate) fn get_bytes(&mut self) -> Result<&'a [u8], MuxError> {
        let len = self.get_u32()? as usize;
        if self.buf.len() < len {
            return Err(MuxError::Protocol("truncated message (string)".into()));
        }
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(s)
    }
    pub(crate) fn get_string_lossy(&mut self) -> Result<String, MuxError> {
        Ok(String::from_utf8_lossy(self.get_bytes()?).into_owned())
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
}

/// A decoded reply from the master (only the ones this client understands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Hello { version: u32 },
    Ok { rid: u32 },
    Alive { rid: u32, pid: u32 },
    SessionOpened { rid: u32, session_id: u32 },
    Failure { rid: u32, reason: String },
    PermissionDenied { rid: u32, reason: String },
    ExitMessage { session_id: u32, exit_value: u32 },
    TtyAllocFail { session_id: u32 },
    Other { msg_type: u32 },
}

pub(crate) fn decode_reply(payload: &[u8]) -> Result<Reply, MuxError> {
    let mut r = MsgReader::new(payload);
    let t = r.get_u32()?;
    Ok(match t {
        MUX_MSG_HELLO => {
            let version = r.get_u32()?;
            // Extension pairs (string name, string value) may follow; validate and ignore.
            while r.remaining() > 0 {
                r.get_bytes()?;
                r.get_bytes()?;
            }
            Reply::Hello { version }
        }
        MUX_S_OK => Reply::Ok { rid: r.get_u32()? },
        MUX_S_ALIVE => Reply::Alive {
            rid: r.get_u32()?,
            pid: r.get_u32()?,
        },
        MUX_S_SESSION_OPENED => Reply::SessionOpened {
            rid: r.get_u32()?,
            session_id: r.get_u32()?,
        },
        MUX_S_FAILURE => Reply::Failure {
            rid: r.get_u32()?,
            reason: r.get_string_lossy()?,
        },
        MUX_S_PERMISSION_DENIED => Reply::PermissionDenied {
            rid: r.get_u32()?,
            reason: r.get_string_lossy()?,
        },
        MUX_S_EXIT_MESSAGE => Reply::ExitMessage {
            session_id: r.get_u32()?,
            exit_value: r.get_u32()?,
        },
        MUX_S_TTY_ALLOC_FAIL => Reply::TtyAllocFail {
            session_id: r.get_u32()?,
        },
        other => Reply::Other { msg_type: other },
    })
}

pub(crate) fn encode_hello() -> MsgBuf {
    let mut m = MsgBuf::new(MUX_MSG_HELLO);
    m.put_u32(MUX_VERSION);
    m
}

pub(crate) fn encode_alive_check(rid: u32) -> MsgBuf {
    let mut m = MsgBuf::new(MUX_C_ALIVE_CHECK);
    m.put_u32(rid);
    m
}

pub(crate) fn encode_terminate(rid: u32) -> MsgBuf {
    let mut m = MsgBuf::new(MUX_C_TERMINATE);
    m.put_u32(rid);
    m
}

pub(crate) fn encode_stdio_fwd(rid: u32, host: &str, port: u16) -> Result<MsgBuf, MuxError> {
    let mut m = MsgBuf::new(MUX_C_NEW_STDIO_FWD);
    m.put_u32(rid);
    m.put_str("")?; // reserved
    m.put_str(host)?;
    m.put_u32(u32::from(port));
    Ok(m)
}

/// `MUX_C_NEW_SESSION`: no tty, no X11, no agent, not a subsystem, no escape char,
/// empty TERM, no environment.
pub(crate) fn encode_new_session(rid: u32, command: &str) -> Result<MsgBuf, MuxError> {
    let mut m = MsgBuf::new(MUX_C_NEW_SESSION);
    m.put_u32(rid);
    m.put_str("")?; // reserved
    m.put_u32(0); // want_tty
    m.put_u32(0); // want_x11
    m.put_u32(0); // want_agent
    m.put_u32(0); // subsystem
    m.put_u32(NO_ESCAPE_CHAR);
    m.put_str("")?; // term
    m.put_str(command)?;
    Ok(m)
}

/// `MUX_C_OPEN_FWD` (`open == true`) or `MUX_C_CLOSE_FWD`: a local (`-L`) forward from
/// the Unix socket `listen` to the remote Unix socket `connect`.
pub(crate) fn encode_path_fwd(
    open: bool,
    rid: u32,
    listen: &[u8],
    connect: &[u8],
) -> Result<MsgBuf, MuxError> {
    let mut m = MsgBuf::new(if open {
        MUX_C_OPEN_FWD
    } else {
        MUX_C_CLOSE_FWD
    });
    m.put_u32(rid);
    m.put_u32(MUX_FWD_LOCAL);
    m.put_bytes(listen)?;
    m.put_u32(PORT_STREAMLOCAL);
    m.put_bytes(connect)?;
    m.put_u32(PORT_STREAMLOCAL);
    Ok(m)
}

/// Checks a socket path for a path forward: absolute, not empty, no NUL or other
/// control characters, shorter than `max + 1` bytes.
fn validate_socket_path(which: &str, path: &[u8], max: usize) -> Result<(), MuxError> {
    let shown = String::from_utf8_lossy(path);
    let problem = if path.is_empty() {
        "is empty".to_string()
    } else if shown.chars().any(char::is_control) {
        "contains a NUL or another control character".to_string()
    } else if path[0] != b'/' {
        "is not absolute".to_string()
    } else if path.len() > max {
        format!(
            "is {} bytes long, over the limit of {max} bytes",
            path.len()
        )
    } else {
        return Ok(());
    };
    let hint = if max == MAX_LOCAL_SOCKET_PATH_LEN {
        "give an absolute path of at most 103 bytes (the macOS limit for Unix socket \
         paths), e.g. in a short runtime directory such as /run/user/<uid>/fwd"
    } else {
        "give the absolute path of the socket on the remote host, e.g. /var/run/docker.sock"
    };
    Err(MuxError::InvalidArgument(format!(
        "{which} socket path {shown:?} {problem}; {hint}"
    )))
}

fn validate_forward_host(host: &str) -> Result<(), MuxError> {
    if host.is_empty()
        || host.len() > 1024
        || host.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(MuxError::InvalidArgument(format!(
            "invalid forward host {host:?}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Async client

/// A connection to a control socket, hello sent, made without waiting for
/// anything: a spare kept for the next request. Until
/// [`PendingMux::into_client`] the socket is not watched by the reactor, so
/// the master's hello wakes nobody: a spare made this way costs fwdd a few
/// syscalls and no wakeup.
#[derive(Debug)]
pub struct PendingMux {
    sock: std::os::unix::net::UnixStream,
}

impl PendingMux {
    /// `connect` and the hello, both non-blocking. A master whose listen
    /// queue is full answers `WouldBlock`: make the connection later, or
    /// with [`MuxClient::connect`].
    pub fn connect_now(control_path: &Path) -> Result<PendingMux, MuxError> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let failed = |source: io::Error| MuxError::Connect {
            path: control_path.to_path_buf(),
            source,
        };
        let addr = UnixAddr::new(control_path).map_err(|e| failed(e.into()))?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let flags = SockFlag::empty();
        let fd = socket(AddressFamily::Unix, SockType::Stream, flags, None)
            .map_err(|e| failed(e.into()))?;
        let sock = std::os::unix::net::UnixStream::from(fd);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            sock.set_nonblocking(true).map_err(failed)?;
            nix::fcntl::fcntl(
                sock.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(|e| failed(e.into()))?;
        }
        connect(sock.as_raw_fd(), &addr).map_err(|e| failed(e.into()))?;
        let hello = encode_hello().framed();
        let sent = nix::sys::socket::send(sock.as_raw_fd(), &hello, send_flags())
            .map_err(|e| failed(e.into()))?;
        if sent != hello.len() {
            return Err(MuxError::Io(io::Error::new(
                io::ErrorKind::WriteZero,
                "hello not sent",
            )));
        }
        Ok(PendingMux { sock })
    }

    /// The client, ready for a request at once (the master's hello is read
    /// before the first reply, as for every [`MuxClient`]).
    pub fn into_client(self) -> Result<MuxClient, MuxError> {
        Ok(MuxClient::hello_sent(UnixStream::from_std(self.sock)?))
    }
}

/// No SIGPIPE where the platform can say so per call (elsewhere the Rust
/// runtime ignores SIGPIPE).
fn send_flags() -> nix::sys::socket::MsgFlags {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return nix::sys::socket::MsgFlags::empty();
}

/// One connection to a ControlMaster's control socket, our hello sent.
///
/// The master sends its own hello when it accepts; it is read, and its version
/// checked, just before the first reply, so no request waits a round trip for
/// it. The master reads our hello and requests in order, pipelined or not.
#[derive(Debug)]
pub struct MuxClient {
    stream: UnixStream,
    next_rid: u32,
    /// Set while a request is in flight; still set on entry ⇒ a request was cancelled.
    busy: bool,
    /// The master's hello is still to be read, before the first reply.
    hello_unread: bool,
}

impl MuxClient {
    /// Connects to the control socket and sends the hello.
    pub async fn connect(control_path: &Path) -> Result<MuxClient, MuxError> {
        let stream =
            UnixStream::connect(control_path)
                .await
                .map_err(|source| MuxError::Connect {
                    path: control_path.to_path_buf(),
                    source,
                })?;
        let mut c = MuxClient::hello_sent(stream);
        c.write_msg(&encode_hello()).await?;
        Ok(c)
    }

    /// A client on a connection whose hello is (about to be) sent.
    fn hello_sent(stream: UnixStream) -> MuxClient {
        MuxClient {
            stream,
            next_rid: 0,
            busy: false,
            hello_unread: true,
        }
    }

    /// The master's hello, which it sends first.
    async fn read_hello(&mut self) -> Result<(), MuxError> {
        let msg = read_msg(&mut self.stream).await?.ok_or(MuxError::Closed)?;
        match decode_reply(&msg)? {
            Reply::Hello {
                version: MUX_VERSION,
            } => {}
            Reply::Hello { version } => {
                return Err(MuxError::Protocol(format!(
                    "master speaks mux protocol version {version}, expected {MUX_VERSION}"
                )))
            }
            other => return Err(MuxError::Protocol(format!("expected hello, got {other:?}"))),
        }
        Ok(())
    }

    /// `MUX_C_ALIVE_CHECK`: returns the master's pid.
    pub async fn alive_check(&mut self) -> Result<u32, MuxError> {
        let rid = self.begin()?;
        self.write_msg(&encode_alive_check(rid)).await?;
        let reply = decode_reply(&self.read_msg().await?)?;
        self.busy = false;
        match reply {
            Reply::Alive { rid: r, pid } if r == rid => Ok(pid),
            other => Err(unexpected(rid, other)),
        }
    }

    /// `MUX_C_TERMINATE`: asks the master to exit. EOF instead of `MUX_S_OK` counts as
    /// success (mux.c notes the master may exit before the reply makes it out).
    pub async fn terminate(mut self) -> Result<(), MuxError> {
        let rid = self.begin()?;
        self.write_msg(&encode_terminate(rid)).await?;
        match self.read_msg().await {
            Err(MuxError::Closed) => Ok(()),
            Err(e) => Err(e),
            Ok(payload) => match decode_reply(&payload)? {
                Reply::Ok { rid: r } if r == rid => Ok(()),
                other => Err(unexpected(rid, other)),
            },
        }
    }

    /// Hands `fd` (e.g. an accepted TCP socket) to the master as a `direct-tcpip`
    /// channel to `host:port` on the remote side (`MUX_C_NEW_STDIO_FWD`; the fd is
    /// passed twice, as the channel's stdin and stdout).
    ///
    /// Resolves once the remote side accepted the channel, or with
    /// [`MuxError::Refused`] (e.g. "Session open refused by peer" when nothing
    /// listens there). The master holds its own copies of `fd` from the moment the
    /// request is sent: the caller should close its copy once this returns (otherwise
    /// the local peer will not see the connection close).
    ///
    /// The returned [`StdioForward`] owns the mux connection; dropping it tears the
    /// tunnel down.
    pub async fn open_stdio_forward(
        mut self,
        host: &str,
        port: u16,
        fd: BorrowedFd<'_>,
    ) -> Result<StdioForward, MuxError> {
        validate_forward_host(host)?;
        let rid = self.begin()?;
        let request = encode_stdio_fwd(rid, host, port)?.framed();
        self.send_with_fds(&request, &[fd.as_raw_fd(), fd.as_raw_fd()])
            .await?;
        let session_id = self.read_open_reply(rid).await?;
        Ok(StdioForward {
            stream: self.stream,
            channel_id: session_id,
        })
    }

    /// Runs `command` (a complete, already safely quoted remote command line) in a new
    /// session channel whose stdin/stdout/stderr are the given fds
    /// (`MUX_C_NEW_SESSION`, no tty). The master keeps its own copies of the fds;
    /// close yours once this returns.
    pub async fn open_session(
        mut self,
        command: &str,
        stdin: BorrowedFd<'_>,
        stdout: BorrowedFd<'_>,
        stderr: BorrowedFd<'_>,
    ) -> Result<Session, MuxError> {
        if command.contains('\0') {
            return Err(MuxError::InvalidArgument(
                "command contains a NUL byte".into(),
            ));
        }
        let rid = self.begin()?;
        let request = encode_new_session(rid, command)?.framed();
        let fds = [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()];
        self.send_with_fds(&request, &fds).await?;
        let session_id = self.read_open_reply(rid).await?;
        Ok(Session {
            stream: self.stream,
            session_id,
        })
    }

    /// `MUX_C_OPEN_FWD`, local forward from a Unix socket path `listen` (created and
    /// owned by the master, mode from its `StreamLocalBindMask`, 0600 by default) to the
    /// remote Unix socket `connect`. `MUX_S_OK` also when the same forward already
    /// exists (the master compares the pair first and creates nothing new).
    ///
    /// Unlike stdio forwards the forward is not tied to this mux connection: the master
    /// records it in its own forward list (`mux.c:mux_master_process_open_fwd` →
    /// `add_local_forward`) and the listener is a channel of its own; closing the mux
    /// connection only cleans up a session or stdio channel attached to it
    /// (`mux_master_control_cleanup_cb`). The forward lives until
    /// [`MuxClient::close_local_path_forward`] or the master exits. The connection stays
    /// usable for further requests.
    ///
    /// Each connection to `listen` becomes a `direct-streamlocal@openssh.com` channel.
    /// When the remote side refuses it (no such socket, forwarding disabled by sshd),
    /// the master just closes the accepted connection.
    ///
    /// What is at `listen` is checked first, because the master (started with
    /// `StreamLocalBindUnlink=yes`, see [`crate::master_args`]) unlinks whatever is there
    /// before it binds:
    /// * nothing, or a socket nobody listens on (left by an earlier master): sent;
    /// * a socket this master listens on (the same forward again): sent, and the master
    ///   answers `MUX_S_OK` if the pair matches. If the pair differs, the master takes
    ///   the path over and its old listener stays registered but unreachable; close the
    ///   old forward first;
    /// * a socket another process listens on: [`MuxError::Refused`], nothing sent;
    /// * anything else (file, directory, symlink): [`MuxError::InvalidArgument`].
    ///
    /// The check costs one `connect()` to `listen` when a socket is there, which a live
    /// forward answers by opening (and at once closing) a channel to `connect`. It is
    /// advisory: a listener that appears between the check and the bind is still
    /// replaced.
    ///
    /// Errors: [`MuxError::Refused`] with the master's reason for `MUX_S_FAILURE`
    /// ("Port forwarding failed" when it cannot listen on `listen`),
    /// [`MuxError::PermissionDenied`] (ControlMaster=ask), [`MuxError::InvalidArgument`]
    /// for paths that are not absolute, empty, contain control characters or are too
    /// long (`listen`: [`MAX_LOCAL_SOCKET_PATH_LEN`], `connect`:
    /// [`MAX_REMOTE_SOCKET_PATH_LEN`]).
    pub async fn open_local_path_forward(
        &mut self,
        listen: &Path,
        connect: &str,
    ) -> Result<(), MuxError> {
        let listen_bytes = listen.as_os_str().as_bytes();
        validate_socket_path("local listen", listen_bytes, MAX_LOCAL_SOCKET_PATH_LEN)?;
        validate_socket_path(
            "remote connect",
            connect.as_bytes(),
            MAX_REMOTE_SOCKET_PATH_LEN,
        )?;
        match probe_listen_path(listen).await {
            ListenPath::Absent | ListenPath::Stale => {}
            ListenPath::NotSocket => {
                return Err(MuxError::InvalidArgument(format!(
                    "{} exists and is not a socket; not asking the master to listen there \
                     (it would delete the file first): remove it yourself or choose \
                     another listen path",
                    listen.display()
                )))
            }
            ListenPath::Live { pid } => {
                let master = self.alive_check().await?;
                match pid {
                    Some(pid) if u32::try_from(pid).ok() == Some(master) => {}
                    Some(pid) => {
                        return Err(MuxError::Refused(format!(
                            "{} is in use by another process (pid {pid}, not the master \
                             {master}); stop it or choose another listen path",
                            listen.display()
                        )))
                    }
                    // No peer pid on this platform: let the master decide.
                    None => tracing::debug!(
                        path = %listen.display(),
                        "cannot tell who listens on the forward path; sending the request"
                    ),
                }
            }
            ListenPath::Unknown(e) => {
                return Err(MuxError::Refused(format!(
                    "cannot tell whether {} is in use ({e}); check the path and its \
                     directory's permissions, or choose another listen path",
                    listen.display()
                )))
            }
        }
        let rid = self.begin()?;
        self.write_msg(&encode_path_fwd(
            true,
            rid,
            listen_bytes,
            connect.as_bytes(),
        )?)
        .await?;
        self.read_ok_reply(rid).await
    }

    /// `MUX_C_CLOSE_FWD` for the same pair as [`MuxClient::open_local_path_forward`].
    ///
    /// [`MuxError::Refused`] ("port not forwarded") when the master has no such forward.
    /// On `MUX_S_OK` the master has closed its listener but leaves the socket file
    /// behind (OpenSSH never unlinks it); this removes the file if nobody listens on it
    /// any more, so later connects fail with `NotFound` instead of `ConnectionRefused`.
    pub async fn close_local_path_forward(
        &mut self,
        listen: &Path,
        connect: &str,
    ) -> Result<(), MuxError> {
        let listen_bytes = listen.as_os_str().as_bytes();
        validate_socket_path("local listen", listen_bytes, MAX_LOCAL_SOCKET_PATH_LEN)?;
        validate_socket_path(
            "remote connect",
            connect.as_bytes(),
            MAX_REMOTE_SOCKET_PATH_LEN,
        )?;
        let rid = self.begin()?;
        self.write_msg(&encode_path_fwd(
            false,
            rid,
            listen_bytes,
            connect.as_bytes(),
        )?)
        .await?;
        self.read_ok_reply(rid).await?;
        if let ListenPath::Stale = probe_listen_path(listen).await {
            match tokio::fs::remove_file(listen).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %listen.display(), error = %e,
                    "could not remove the closed forward's socket file"),
            }
        }
        Ok(())
    }

    async fn read_ok_reply(&mut self, rid: u32) -> Result<(), MuxError> {
        let reply = decode_reply(&self.read_msg().await?)?;
        self.busy = false;
        match reply {
            Reply::Ok { rid: r } if r == rid => Ok(()),
            other => Err(unexpected(rid, other)),
        }
    }

    fn begin(&mut self) -> Result<u32, MuxError> {
        if self.busy {
            return Err(MuxError::Desynchronized);
        }
        self.busy = true;
        let rid = self.next_rid;
        self.next_rid = self.next_rid.wrapping_add(1);
        Ok(rid)
    }

    async fn read_open_reply(&mut self, rid: u32) -> Result<u32, MuxError> {
        let reply = decode_reply(&self.read_msg().await?)?;
        self.busy = false;
        match reply {
            Reply::SessionOpened { rid: r, session_id } if r == rid => Ok(session_id),
            other => Err(unexpected(rid, other)),
        }
    }

    async fn write_msg(&mut self, m: &MsgBuf) -> Result<(), MuxError> {
        self.stream
            .write_all(&m.framed())
            .await
            .map_err(map_write_err)
    }

    async fn read_msg(&mut self) -> Result<Vec<u8>, MuxError> {
        if self.hello_unread {
            self.read_hello().await?;
            self.hello_unread = false;
        }
        read_msg(&mut self.stream).await?.ok_or(MuxError::Closed)
    }

    /// A framed request and the fds that follow it, each fd a one-byte message.
    async fn send_with_fds(&mut self, request: &[u8], fds: &[RawFd]) -> Result<(), MuxError> {
        send_with_fds(&self.stream, request, fds)
            .await
            .map_err(map_write_err)
    }
}

fn map_write_err(e: io::Error) -> MuxError {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => MuxError::Closed,
        _ => MuxError::Io(e),
    }
}

fn unexpected(rid: u32, reply: Reply) -> MuxError {
    match reply {
        Reply::Failure { reason, .. } => MuxError::Refused(reason),
        Reply::PermissionDenied { reason, .. } => MuxError::PermissionDenied(reason),
        other => MuxError::Protocol(format!("unexpected reply to request {rid}: {other:?}")),
    }
}

/// What is at a local forward's listen path.
#[derive(Debug)]
enum ListenPath {
    Absent,
    /// A file that is not a socket (or a symlink).
    NotSocket,
    /// A socket nobody listens on (connect: `ECONNREFUSED`).
    Stale,
    /// A socket somebody listens on; the listener's pid where the platform tells it
    /// (Linux `SO_PEERCRED`, macOS `LOCAL_PEERPID`).
    Live {
        pid: Option<i32>,
    },
    Unknown(io::Error),
}

async fn probe_listen_path(path: &Path) -> ListenPath {
    match tokio::fs::symlink_metadata(path).await {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => return ListenPath::NotSocket,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return ListenPath::Absent,
        Err(e) => return ListenPath::Unknown(e),
    }
    match UnixStream::connect(path).await {
        Ok(s) => ListenPath::Live {
            pid: s.peer_cred().ok().and_then(|c| c.pid()),
        },
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => ListenPath::Stale,
        Err(e) if e.kind() == io::ErrorKind::NotFound => ListenPath::Absent,
        Err(e) => ListenPath::Unknown(e),
    }
}

/// Reads one framed message; `Ok(None)` on a clean EOF at a message boundary.
async fn read_msg<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Option<Vec<u8>>, MuxError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match stream.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(MuxError::Closed),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(MuxError::Protocol(format!(
            "message of {len} bytes exceeds the limit of {MAX_MESSAGE_LEN}"
        )));
    }
    let mut buf = vec![0u8; len];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => MuxError::Closed,
            _ => MuxError::Io(e),
        })?;
    Ok(Some(buf))
}

/// Sends `request`, then each of `fds` as a one-byte message carrying it in an
/// `SCM_RIGHTS` control message (what the master's `mm_receive_fd` reads).
///
/// On Linux all of it goes in one `sendmmsg`, so the master finds the request
/// and its fds queued together when it wakes. Sent one by one, every message
/// woke the master, which read on, found the next fd missing, slept again and
/// was woken once more: on two busy cores that ping-pong cost ~60 µs of every
/// connection's setup (the `perf sched` trace in `docs/benchmarks.md`).
/// Elsewhere, and for whatever one call leaves unsent, the pieces go one by one.
async fn send_with_fds(stream: &UnixStream, request: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let sock = stream.as_raw_fd();
    // First without asking the reactor: a socket it has only just begun to
    // watch (a spare, see `PendingMux`) counts as unwritable until its first
    // event, and waiting for that event costs a whole turn of the event loop.
    let mut sent = match send_some(sock, request, fds) {
        Ok(sent) => sent,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Sent::default(),
        Err(e) => return Err(e),
    };
    while sent.request < request.len() || sent.fds < fds.len() {
        let step = stream
            .async_io(Interest::WRITABLE, || {
                send_some(sock, &request[sent.request..], &fds[sent.fds..])
            })
            .await?;
        if step.request == 0 && step.fds == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "mux request not sent",
            ));
        }
        sent.request += step.request;
        sent.fds += step.fds;
    }
    Ok(())
}

/// How much of a request and its fds one call sent.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    request: usize,
    fds: usize,
}

/// Sends the rest of the request, or (once it is out) the next fd.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_some(sock: RawFd, request: &[u8], fds: &[RawFd]) -> io::Result<Sent> {
    if !request.is_empty() {
        let n = nix::sys::socket::send(sock, request, send_flags())?;
        return Ok(Sent { request: n, fds: 0 });
    }
    send_one_fd(sock, fds[0])?;
    Ok(Sent { request: 0, fds: 1 })
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_one_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let byte = [0u8];
    let iov = [io::IoSlice::new(&byte)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    match sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::empty(), None)? {
        1 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "fd message not sent",
        )),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
/// The most fds one request carries (`MUX_C_NEW_SESSION`: stdin, stdout, stderr).
const MAX_REQUEST_FDS: usize = 3;

#[cfg(any(target_os = "linux", target_os = "android"))]
/// Larger than any stdio-forward or session request fwd sends, and small enough
/// that the kernel queues it as one buffer: all of it or nothing. A request
/// that went out short while its fds went too would corrupt the stream.
const ONE_CALL_REQUEST_LEN: usize = 2048;

/// One `sendmmsg`: the rest of the request, then one message per fd.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_some(sock: RawFd, request: &[u8], fds: &[RawFd]) -> io::Result<Sent> {
    use nix::libc;
    if request.len() > ONE_CALL_REQUEST_LEN {
        // Not a request fwd sends: on its own, the fds in later calls.
        let n = nix::sys::socket::send(sock, request, send_flags())?;
        return Ok(Sent { request: n, fds: 0 });
    }
    // More fds than that: the rest in the next call.
    let fds = &fds[..fds.len().min(MAX_REQUEST_FDS)];
    const CMSG_BUF_LEN: usize = 32;
    let byte = [0u8; 1];
    // SAFETY: plain C structs, valid when zeroed.
    let mut iovs: [libc::iovec; 1 + MAX_REQUEST_FDS] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; 1 + MAX_REQUEST_FDS] = unsafe { std::mem::zeroed() };
    // u64 elements: cmsghdr alignment.
    let mut cmsgs = [[0u64; CMSG_BUF_LEN / 8]; MAX_REQUEST_FDS];
    // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
    let (space, len) = unsafe {
        let int = std::mem::size_of::<libc::c_int>() as libc::c_uint;
        (libc::CMSG_SPACE(int) as usize, libc::CMSG_LEN(int) as usize)
    };
    assert!(space <= CMSG_BUF_LEN);
    let mut count = 0;
    if !request.is_empty() {
        iovs[0] = libc::iovec {
            iov_base: request.as_ptr() as *mut libc::c_void,
            iov_len: request.len(),
        };
        count = 1;
    }
    for (i, &fd) in fds.iter().enumerate() {
        iovs[count] = libc::iovec {
            iov_base: byte.as_ptr() as *mut libc::c_void,
            iov_len: 1,
        };
        let hdr = &mut msgs[count].msg_hdr;
        hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, aligned bytes, room
        // for one cmsghdr and one int.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(hdr);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = len as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        }
        count += 1;
    }
    for (msg, iov) in msgs.iter_mut().zip(iovs.iter_mut()).take(count) {
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `count` initialised headers whose iovecs and control buffers
    // outlive the call.
    let n = unsafe {
        libc::sendmmsg(
            sock,
            msgs.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let mut sent = Sent::default();
    let mut messages = msgs[..n].iter();
    if !request.is_empty() {
        if let Some(first) = messages.next() {
            sent.request = first.msg_len as usize;
            if sent.request < request.len() && n > 1 {
                return Err(io::Error::other(
                    "mux request went out short, its fds after it",
                ));
            }
        }
    }
    sent.fds = messages.count();
    Ok(sent)
}

/// A running stdio forward. Holds the mux connection; the master closes it when the
/// channel closes. Dropping this closes the tunnel.
#[derive(Debug)]
pub struct StdioForward {
    stream: UnixStream,
    channel_id: u32,
}

impl StdioForward {
    /// The mux connection a new fwdd image inherited (binary upgrade). The
    /// master closes the tunnel when this connection closes
    /// (`mux_master_control_cleanup_cb`), so it must be kept open for as
    /// long as the tunnel should live.
    pub fn adopt(fd: OwnedFd) -> io::Result<StdioForward> {
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        Ok(StdioForward {
            stream: UnixStream::from_std(stream)?,
            channel_id: 0,
        })
    }

    /// The master's channel id for this forward (0 when adopted).
    pub fn channel_id(&self) -> u32 {
        self.channel_id
    }

    /// Resolves when the master closes the mux connection (the tunnel ended, or the
    /// master died). Cancel-safe.
    pub async fn closed(mut self) {
        self.wait_closed().await
    }

    /// Like [`StdioForward::closed`] but borrows (cancel-safe, may be polled again).
    pub async fn wait_closed(&mut self) {
        let mut buf = [0u8; 512];
        loop {
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // nothing is expected here; ignore
            }
        }
    }
}

impl std::os::fd::AsRawFd for StdioForward {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }
}

impl std::os::fd::AsRawFd for Session {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }
}

/// A remote command running as a session channel of the master.
#[derive(Debug)]
pub struct Session {
    stream: UnixStream,
    session_id: u32,
}

impl Session {
    pub fn session_id(&self) -> u32 {
        self.session_id
    }

    /// Waits for the remote command to end: `Some(exit status)` from
    /// `MUX_S_EXIT_MESSAGE`, `None` if the master closed the connection without one
    /// (command killed by a signal, channel closed, master died).
    ///
    /// Dropping the future (or the `Session`) does NOT stop the remote command until it
    /// writes to the closed channel; close the stdio fds or kill it remotely.
    pub async fn wait(mut self) -> Result<Option<u32>, MuxError> {
        loop {
            let Some(payload) = read_msg(&mut self.stream).await.or_else(|e| match e {
                MuxError::Closed => Ok(None),
                e => Err(e),
            })?
            else {
                return Ok(None);
            };
            match decode_reply(&payload)? {
                Reply::ExitMessage { exit_value, .. } => return Ok(Some(exit_value)),
                Reply::TtyAllocFail { .. } => continue,
                other => {
                    tracing::debug!(reply = ?other, "ignoring unexpected mux message in session");
                }
            }
        }
    }
}

/// A remote command started by [`spawn_remote`].
#[derive(Debug)]
pub struct RemoteProcess {
    /// The command's stdin and stdout (one end of a socketpair). Shut down the write
    /// half (`shutdown()`) to send EOF to the remote stdin.
    pub stdio: UnixStream,
    /// The command's stderr.
    pub stderr: tokio::net::unix::pipe::Receiver,
    pub session: Session,
}

/// Starts `command` (already safely quoted) on the remote host through the master at
/// `control_path`.
pub async fn spawn_remote(control_path: &Path, command: &str) -> Result<RemoteProcess, MuxError> {
    let client = MuxClient::connect(control_path).await?;
    let (local, remote) = std::os::unix::net::UnixStream::pair()?;
    let (err_read, err_write): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    local.set_nonblocking(true)?;
    let stdio = UnixStream::from_std(local)?;
    let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(err_read)?;
    let session = client
        .open_session(command, remote.as_fd(), remote.as_fd(), err_write.as_fd())
        .await?;
    // The master holds its own copies now.
    drop(remote);
    drop(err_write);
    Ok(RemoteProcess {
        stdio,
        stderr,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads what `send_with_fds` sent the way the master does: the request
    /// with exact reads, then one `recvmsg` of one byte per fd.
    fn read_like_master(
        sock: &std::os::unix::net::UnixStream,
        fds: usize,
    ) -> (Vec<u8>, Vec<OwnedFd>) {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::io::Read;
        use std::os::fd::FromRawFd;
        let mut r = sock;
        let mut len = [0u8; 4];
        r.read_exact(&mut len).expect("length");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut body).expect("body");
        let mut got = Vec::new();
        for _ in 0..fds {
            let mut byte = [0u8; 1];
            let mut iov = [io::IoSliceMut::new(&mut byte)];
            let mut space = nix::cmsg_space!(RawFd);
            let msg = recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )
            .expect("recvmsg");
            assert_eq!(msg.bytes, 1);
            let mut n = 0;
            for c in msg.cmsgs().expect("cmsgs") {
                if let ControlMessageOwned::ScmRights(rights) = c {
                    for fd in rights {
                        n += 1;
                        // SAFETY: just received, owned by nobody else.
                        got.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            assert_eq!(n, 1, "one fd per message, as mm_receive_fd expects");
        }
        (body, got)
    }

    fn inode(fd: BorrowedFd<'_>) -> u64 {
        nix::sys::stat::fstat(fd.as_raw_fd()).expect("fstat").st_ino as u64
    }

    #[test]
    fn a_request_and_its_fds_arrive_as_the_master_reads_them() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // 2 fds (stdio forward), 3 (session), 5 (more than one call takes),
        // and a request too long to go with its fds.
        for (body_len, nfds) in [(40usize, 2usize), (60, 3), (8, 5), (3000, 2)] {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
            let passed: Vec<_> = (0..nfds)
                .map(|_| std::os::unix::net::UnixStream::pair().expect("pair").0)
                .collect();
            let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
            let mut request = (body_len as u32).to_be_bytes().to_vec();
            request.extend_from_slice(&body);
            let raw: Vec<RawFd> = passed.iter().map(|p| p.as_raw_fd()).collect();
            rt.block_on(async {
                ours.set_nonblocking(true).expect("nonblocking");
                let ours = UnixStream::from_std(ours).expect("tokio");
                send_with_fds(&ours, &request, &raw).await.expect("sent");
            });
            let (got_body, got) = read_like_master(&theirs, nfds);
            assert_eq!(got_body, body, "{body_len} bytes, {nfds} fds");
            let want: Vec<u64> = passed.iter().map(|p| inode(p.as_fd())).collect();
            let have: Vec<u64> = got.iter().map(|g| inode(g.as_fd())).collect();
            assert_eq!(have, want, "the fds arrive in order");
        }
    }

    #[test]
    fn hello_encoding() {
        assert_eq!(
            encode_hello().framed(),
            [0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 4]
        );
    }

    #[test]
    fn alive_and_terminate_encoding() {
        assert_eq!(
            encode_alive_check(7).framed(),
            [0, 0, 0, 8, 0x10, 0, 0, 4, 0, 0, 0, 7]
        );
        assert_eq!(
            encode_terminate(1).framed(),
            [0, 0, 0, 8, 0x10, 0, 0, 5, 0, 0, 0, 1]
        );
    }

    #[test]
    fn stdio_fwd_encoding() {
        let m = encode_stdio_fwd(3, "db", 5432).unwrap().framed();
        let expect: Vec<u8> = [
            &[0, 0, 0, 22][..],
            &[0x10, 0, 0, 8],
            &[0, 0, 0, 3],
            &[0, 0, 0, 0],
            &[0, 0, 0, 2],
            b"db",
            &[0, 0, 0x15, 0x38],
        ]
        .concat();
        assert_eq!(m, expect);
    }

    #[test]
    fn new_session_encoding() {
        let m = encode_new_session(1, "true").unwrap();
        let mut r = MsgReader::new(&m.0);
        assert_eq!(r.get_u32().unwrap(), MUX_C_NEW_SESSION);
        assert_eq!(r.get_u32().unwrap(), 1);
        assert_eq!(r.get_bytes().unwrap(), b"");
        for _ in 0..4 {
            assert_eq!(r.get_u32().unwrap(), 0);
        }
        assert_eq!(r.get_u32().unwrap(), 0xffff_ffff);
        assert_eq!(r.get_bytes().unwrap(), b"");
        assert_eq!(r.get_bytes().unwrap(), b"true");
        assert_eq!(r.remaining(), 0);
        let framed = m.framed();
        assert_eq!(&framed[..4], &(m.0.len() as u32).to_be_bytes());
    }

    #[test]
    fn decode_replies() {
        let mut m = MsgBuf::new(MUX_MSG_HELLO);
        m.put_u32(4);
        m.put_str("ext").unwrap().put_str("val").unwrap();
        assert_eq!(decode_reply(&m.0).unwrap(), Reply::Hello { version: 4 });

        let mut m = MsgBuf::new(MUX_S_ALIVE);
        m.put_u32(0).put_u32(1234);
        assert_eq!(
            decode_reply(&m.0).unwrap(),
            Reply::Alive { rid: 0, pid: 1234 }
        );

        let mut m = MsgBuf::new(MUX_S_FAILURE);
        m.put_u32(5)
            .put_str("Session open refused by peer")
            .unwrap();
        let r = decode_reply(&m.0).unwrap();
        assert!(
            matches!(unexpected(5, r), MuxError::Refused(s) if s == "Session open refused by peer")
        );

        let mut m = MsgBuf::new(MUX_S_EXIT_MESSAGE);
        m.put_u32(2).put_u32(3);
        assert_eq!(
            decode_reply(&m.0).unwrap(),
            Reply::ExitMessage {
                session_id: 2,
                exit_value: 3
            }
        );
        let mut m = MsgBuf::new(0x8000_00ff);
        m.put_u32(0);
        assert_eq!(
            decode_reply(&m.0).unwrap(),
            Reply::Other {
                msg_type: 0x8000_00ff
            }
        );
    }

    #[test]
    fn decode_rejects_truncated() {
        assert!(decode_reply(&[0x80, 0, 0]).is_err());
        assert!(decode_reply(&[0x80, 0, 0, 5, 0, 0]).is_err());
        // string length beyond the buffer
        assert!(decode_reply(&[0x80, 0, 0, 3, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
        // hello with a dangling extension name
        assert!(decode_reply(&[0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1, b'x']).is_err());
    }

    #[test]
    fn rejects_bad_hosts() {
        assert!(validate_forward_host("").is_err());
        assert!(validate_forward_host("a b").is_err());
        assert!(validate_forward_host("a\nb").is_err());
        assert!(validate_forward_host("127.0.0.1").is_ok());
        assert!(validate_forward_host("::1").is_ok());
    }

    #[test]
    fn path_fwd_encoding() {
        let m = encode_path_fwd(true, 9, b"/l.sock", b"/var/run/docker.sock")
            .unwrap()
            .framed();
        let expect: Vec<u8> = [
            &[0, 0, 0, 55][..],
            &[0x10, 0, 0, 6],
            &[0, 0, 0, 9],
            &[0, 0, 0, 1],
            &[0, 0, 0, 7],
            b"/l.sock",
            &[0xff, 0xff, 0xff, 0xfe],
            &[0, 0, 0, 20],
            b"/var/run/docker.sock",
            &[0xff, 0xff, 0xff, 0xfe],
        ]
        .concat();
        assert_eq!(m, expect);
        let c = encode_path_fwd(false, 9, b"/l.sock", b"/var/run/docker.sock")
            .unwrap()
            .framed();
        assert_eq!(&c[4..8], &[0x10, 0, 0, 7]);
        assert_eq!(&c[..4], &m[..4]);
        assert_eq!(&c[8..], &m[8..]);
    }

    #[test]
    fn socket_path_validation() {
        let local =
            |p: &str| validate_socket_path("local", p.as_bytes(), MAX_LOCAL_SOCKET_PATH_LEN);
        let remote =
            |p: &str| validate_socket_path("remote", p.as_bytes(), MAX_REMOTE_SOCKET_PATH_LEN);
        assert!(local("/run/user/1000/fwd/docker-a.sock").is_ok());
        assert!(remote("/var/run/docker.sock").is_ok());
        let max_local = format!("/{}", "a".repeat(MAX_LOCAL_SOCKET_PATH_LEN - 1));
        assert!(local(&max_local).is_ok());
        let e = local(&format!("{max_local}b")).expect_err("104 bytes");
        assert!(
            e.to_string().contains("104 bytes long") && e.to_string().contains("103 bytes"),
            "{e}"
        );
        let max_remote = format!("/{}", "a".repeat(MAX_REMOTE_SOCKET_PATH_LEN - 1));
        assert!(remote(&max_remote).is_ok());
        assert!(remote(&format!("{max_remote}b")).is_err());
        for bad in [
            "", "rel.sock", "./x", "/a\0b", "/a\nb", "/a\tb", "/a\u{7f}", "/a\u{85}",
        ] {
            assert!(local(bad).is_err(), "{bad:?}");
            assert!(remote(bad).is_err(), "{bad:?}");
        }
        let e = remote("docker.sock").expect_err("relative");
        let s = e.to_string();
        assert!(
            s.contains("\"docker.sock\" is not absolute") && s.contains("/var/run/docker.sock"),
            "{s}"
        );
        // Non-UTF-8 bytes are not control characters; the master takes any bytes.
        assert!(validate_socket_path("local", b"/a\xffb", MAX_LOCAL_SOCKET_PATH_LEN).is_ok());
    }

    #[tokio::test]
    async fn path_forward_rejects_bad_paths_before_sending() {
        // A peer that would fail the test if anything but the hello reached it.
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut c = MuxClient {
            stream: a,
            next_rid: 0,
            busy: false,
            hello_unread: false,
        };
        let bad: [(&Path, &str); 3] = [
            (Path::new("rel.sock"), "/r.sock"),
            (Path::new("/l.sock"), ""),
            (Path::new("/l.sock"), "/r\n.sock"),
        ];
        for (l, r) in bad {
            assert!(matches!(
                c.open_local_path_forward(l, r).await,
                Err(MuxError::InvalidArgument(_))
            ));
            assert!(matches!(
                c.close_local_path_forward(l, r).await,
                Err(MuxError::InvalidArgument(_))
            ));
        }
        // A regular file at the listen path is never handed to the master (which,
        // with StreamLocalBindUnlink=yes, would delete it).
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        let e = c
            .open_local_path_forward(&file, "/r.sock")
            .await
            .expect_err("not a socket");
        assert!(
            matches!(&e, MuxError::InvalidArgument(m) if m.contains("is not a socket")),
            "{e}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        drop(c);
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "sent {rest:?}");
    }

    /// The first request goes out before the master's hello has arrived,
    /// and that hello is still read and checked before the reply.
    #[tokio::test]
    async fn a_request_does_not_wait_for_the_masters_hello() {
        for (version, want_pid) in [(MUX_VERSION, Some(4242)), (3, None)] {
            let (a, mut b) = UnixStream::pair().unwrap();
            let mut c = MuxClient::hello_sent(a);
            let master = tokio::spawn(async move {
                // The request, already sent: nothing has been answered yet.
                let req = read_msg(&mut b).await.unwrap().unwrap();
                let rid = MsgReader::new(&req[4..]).get_u32().unwrap();
                let mut hello = MsgBuf::new(MUX_MSG_HELLO);
                hello.put_u32(version);
                let mut alive = MsgBuf::new(MUX_S_ALIVE);
                alive.put_u32(rid).put_u32(4242);
                b.write_all(&hello.framed()).await.unwrap();
                b.write_all(&alive.framed()).await.unwrap();
                MsgReader::new(&req).get_u32().unwrap()
            });
            let got = c.alive_check().await;
            assert_eq!(master.await.unwrap(), MUX_C_ALIVE_CHECK);
            match want_pid {
                Some(pid) => assert_eq!(got.unwrap(), pid),
                None => assert!(
                    matches!(&got, Err(MuxError::Protocol(m)) if m.contains("version 3")),
                    "{got:?}"
                ),
            }
        }
    }

    #[tokio::test]
    async fn path_forward_replies() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut c = MuxClient {
            stream: a,
            next_rid: 5,
            busy: false,
            hello_unread: false,
        };
        let server = tokio::spawn(async move {
            let mut replies = vec![];
            for reply in [
                {
                    let mut m = MsgBuf::new(MUX_S_OK);
                    m.put_u32(5);
                    m
                },
                {
                    let mut m = MsgBuf::new(MUX_S_FAILURE);
                    m.put_u32(6).put_str("Port forwarding failed").unwrap();
                    m
                },
                {
                    let mut m = MsgBuf::new(MUX_S_PERMISSION_DENIED);
                    m.put_u32(7).put_str("Permission denied").unwrap();
                    m
                },
                {
                    let mut m = MsgBuf::new(MUX_S_OK);
                    m.put_u32(99); // wrong request id
                    m
                },
            ] {
                let req = read_msg(&mut b).await.unwrap().unwrap();
                replies.push(req);
                b.write_all(&reply.framed()).await.unwrap();
            }
            replies
        });
        let l = Path::new("/nonexistent-fwdssh-dir/l.sock");
        c.open_local_path_forward(l, "/r").await.unwrap();
        assert!(matches!(
            c.open_local_path_forward(l, "/r").await,
            Err(MuxError::Refused(r)) if r == "Port forwarding failed"
        ));
        assert!(matches!(
            c.close_local_path_forward(l, "/r").await,
            Err(MuxError::PermissionDenied(r)) if r == "Permission denied"
        ));
        assert!(matches!(
            c.close_local_path_forward(l, "/r").await,
            Err(MuxError::Protocol(_))
        ));
        let reqs = server.await.unwrap();
        let types: Vec<u32> = reqs
            .iter()
            .map(|r| MsgReader::new(r).get_u32().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                MUX_C_OPEN_FWD,
                MUX_C_OPEN_FWD,
                MUX_C_CLOSE_FWD,
                MUX_C_CLOSE_FWD
            ]
        );
        assert_eq!(
            reqs[0],
            encode_path_fwd(true, 5, l.as_os_str().as_bytes(), b"/r")
                .unwrap()
                .0
        );
    }

    #[tokio::test]
    async fn oversized_message_is_rejected() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&(MAX_MESSAGE_LEN as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(read_msg(&mut a).await, Err(MuxError::Protocol(_))));
        drop(b);
    }

    #[tokio::test]
    async fn eof_mid_message_is_closed() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[0, 0, 0, 8, 0, 0]).await.unwrap();
        drop(b);
        assert!(matches!(read_msg(&mut a).await, Err(MuxError::Closed)));
    }
}

/// Property tests: the reply decoder and the framing reader take whatever the peer sends
/// without panicking, and decode well-formed input to exactly what was encoded.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    const KNOWN_TYPES: [u32; 9] = [
        MUX_MSG_HELLO,
        MUX_S_OK,
        MUX_S_ALIVE,
        MUX_S_SESSION_OPENED,
        MUX_S_FAILURE,
        MUX_S_PERMISSION_DENIED,
        MUX_S_EXIT_MESSAGE,
        MUX_S_TTY_ALLOC_FAIL,
        // Decoded as Other, but kept out of the generator's "unknown" range anyway.
        MUX_C_ALIVE_CHECK,
    ];

    /// What the master would send for `reply`, plus hello extensions.
    fn encode_reply(reply: &Reply, exts: &[(Vec<u8>, Vec<u8>)], trailer: &[u8]) -> Vec<u8> {
        let m = match reply {
            Reply::Hello { version } => {
                let mut m = MsgBuf::new(MUX_MSG_HELLO);
                m.put_u32(*version);
                for (k, v) in exts {
                    m.put_bytes(k).unwrap().put_bytes(v).unwrap();
                }
                return m.0; // a trailer would be a malformed extension
            }
            Reply::Ok { rid } => {
                let mut m = MsgBuf::new(MUX_S_OK);
                m.put_u32(*rid);
                m
            }
            Reply::Alive { rid, pid } => {
                let mut m = MsgBuf::new(MUX_S_ALIVE);
                m.put_u32(*rid).put_u32(*pid);
                m
            }
            Reply::SessionOpened { rid, session_id } => {
                let mut m = MsgBuf::new(MUX_S_SESSION_OPENED);
                m.put_u32(*rid).put_u32(*session_id);
                m
            }
            Reply::Failure { rid, reason } => {
                let mut m = MsgBuf::new(MUX_S_FAILURE);
                m.put_u32(*rid).put_str(reason).unwrap();
                m
            }
            Reply::PermissionDenied { rid, reason } => {
                let mut m = MsgBuf::new(MUX_S_PERMISSION_DENIED);
                m.put_u32(*rid).put_str(reason).unwrap();
                m
            }
            Reply::ExitMessage {
                session_id,
                exit_value,
            } => {
                let mut m = MsgBuf::new(MUX_S_EXIT_MESSAGE);
                m.put_u32(*session_id).put_u32(*exit_value);
                m
            }
            Reply::TtyAllocFail { session_id } => {
                let mut m = MsgBuf::new(MUX_S_TTY_ALLOC_FAIL);
                m.put_u32(*session_id);
                m
            }
            Reply::Other { msg_type } => MsgBuf::new(*msg_type),
        };
        let mut out = m.0;
        // Later OpenSSH versions may append fields; extra bytes are ignored.
        out.extend_from_slice(trailer);
        out
    }

    fn any_reply() -> impl Strategy<Value = Reply> {
        let s = || any::<u32>();
        prop_oneof![
            s().prop_map(|version| Reply::Hello { version }),
            s().prop_map(|rid| Reply::Ok { rid }),
            (s(), s()).prop_map(|(rid, pid)| Reply::Alive { rid, pid }),
            (s(), s()).prop_map(|(rid, session_id)| Reply::SessionOpened { rid, session_id }),
            (s(), ".{0,80}").prop_map(|(rid, reason)| Reply::Failure { rid, reason }),
            (s(), ".{0,80}").prop_map(|(rid, reason)| Reply::PermissionDenied { rid, reason }),
            (s(), s()).prop_map(|(session_id, exit_value)| Reply::ExitMessage {
                session_id,
                exit_value
            }),
            s().prop_map(|session_id| Reply::TtyAllocFail { session_id }),
            s().prop_filter("known type", |t| !KNOWN_TYPES.contains(t))
                .prop_map(|msg_type| Reply::Other { msg_type }),
        ]
    }

    fn exts() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..16),
                proptest::collection::vec(any::<u8>(), 0..16),
            ),
            0..4,
        )
    }

    /// An `AsyncRead` that hands out its data in the given chunk sizes, then EOF.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunks: Vec<usize>,
        next: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            let chunk = this
                .chunks
                .get(this.next % this.chunks.len().max(1))
                .copied()
                .unwrap_or(usize::MAX)
                .max(1);
            this.next += 1;
            let n = chunk.min(buf.remaining()).min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Reads messages until EOF or an error; at most `data.len()` + 1 reads, since each
    /// successful one consumes at least the 4-byte length.
    fn read_all(data: Vec<u8>, chunks: Vec<usize>) -> (Vec<Vec<u8>>, Result<(), MuxError>) {
        let limit = data.len() + 1;
        let mut r = Chunked {
            data,
            pos: 0,
            chunks,
            next: 0,
        };
        block_on(async move {
            let mut msgs = Vec::new();
            for _ in 0..limit {
                match read_msg(&mut r).await {
                    Ok(Some(m)) => msgs.push(m),
                    Ok(None) => return (msgs, Ok(())),
                    Err(e) => return (msgs, Err(e)),
                }
            }
            panic!("read_msg did not make progress");
        })
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    proptest! {
        #[test]
        fn decode_reply_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_reply(&bytes);
        }

        /// Arbitrary bytes behind a known message type: exercises the field decoders
        /// (truncated u32s, string lengths beyond the buffer, dangling extensions).
        #[test]
        fn decode_known_type_with_garbage_never_panics(
            t in proptest::sample::select(KNOWN_TYPES.to_vec()),
            rest in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut bytes = t.to_be_bytes().to_vec();
            bytes.extend_from_slice(&rest);
            let _ = decode_reply(&bytes);
        }

        #[test]
        fn decode_reply_round_trips(
            reply in any_reply(),
            exts in exts(),
            trailer in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let bytes = encode_reply(&reply, &exts, &trailer);
            prop_assert_eq!(decode_reply(&bytes).unwrap(), reply);
        }

        /// Every proper prefix of a well-formed reply is rejected, not misread; only a
        /// hello cut right after its version or after a whole extension pair is itself
        /// complete.
        #[test]
        fn truncated_replies_are_errors(reply in any_reply(), exts in exts()) {
            let bytes = encode_reply(&reply, &exts, &[]);
            for cut in 0..bytes.len() {
                match decode_reply(&bytes[..cut]) {
                    Err(MuxError::Protocol(_)) => {}
                    Ok(Reply::Hello { .. }) if matches!(reply, Reply::Hello { .. }) => {
                        // cut right after the version or after a whole extension pair
                    }
                    other => prop_assert!(false, "prefix {} of {:?}: {:?}", cut, bytes, other),
                }
            }
        }

        #[test]
        fn framing_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..256),
            chunks in proptest::collection::vec(1usize..16, 0..8),
        ) {
            let (_msgs, _end) = read_all(data, chunks);
        }

        /// Lengths near and over the limit: rejected without reading (or allocating)
        /// more than the limit.
        #[test]
        fn framing_rejects_oversized(len in (MAX_MESSAGE_LEN as u32 + 1)..=u32::MAX) {
            let (msgs, end) = read_all(len.to_be_bytes().to_vec(), vec![]);
            prop_assert!(msgs.is_empty());
            prop_assert!(matches!(end, Err(MuxError::Protocol(_))));
        }

        #[test]
        fn framing_round_trips(
            payloads in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..64), 0..8),
            chunks in proptest::collection::vec(1usize..16, 0..8),
        ) {
            let data: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
            let (msgs, end) = read_all(data, chunks);
            prop_assert!(end.is_ok(), "{:?}", end);
            prop_assert_eq!(msgs, payloads);
        }

        /// A stream cut inside a message ends with `Closed` after the complete ones;
        /// cut at a boundary it is a clean EOF.
        #[test]
        fn framing_truncated_stream(
            payloads in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..32), 1..5),
            cut_frac in 0.0f64..1.0,
            chunks in proptest::collection::vec(1usize..16, 0..8),
        ) {
            let frames: Vec<Vec<u8>> = payloads.iter().map(|p| frame(p)).collect();
            let data: Vec<u8> = frames.concat();
            let cut = ((data.len() as f64) * cut_frac) as usize;
            let mut boundary = 0;
            let mut complete = 0;
            for f in &frames {
                if boundary + f.len() > cut {
                    break;
                }
                boundary += f.len();
                complete += 1;
            }
            let (msgs, end) = read_all(data[..cut].to_vec(), chunks);
            prop_assert_eq!(&msgs[..], &payloads[..complete]);
            if cut == boundary {
                prop_assert!(end.is_ok(), "{:?}", end);
            } else {
                prop_assert!(matches!(end, Err(MuxError::Closed)), "{:?}", end);
            }
        }

        /// Round trip of a well-formed reply through the framing reader and the decoder.
        #[test]
        fn framed_reply_round_trips(
            replies in proptest::collection::vec(any_reply(), 1..5),
            chunks in proptest::collection::vec(1usize..16, 0..8),
        ) {
            let data: Vec<u8> =
                replies.iter().flat_map(|r| frame(&encode_reply(r, &[], &[]))).collect();
            let (msgs, end) = read_all(data, chunks);
            prop_assert!(end.is_ok(), "{:?}", end);
            let decoded: Vec<Reply> = msgs.iter().map(|m| decode_reply(m).unwrap()).collect();
            prop_assert_eq!(decoded, replies);
        }
    }
}
