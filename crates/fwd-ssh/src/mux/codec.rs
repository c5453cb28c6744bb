//! The wire: message layouts (openssh-portable `PROTOCOL.mux`, `mux.c`),
//! their encoding and decoding, and reading one length-prefixed frame.

use std::io;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt};

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
/// Forwarding type of `MUX_C_OPEN_FWD` / `MUX_C_CLOSE_FWD`: `-R`.
const MUX_FWD_REMOTE: u32 = 2;
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

/// Builder for one mux message payload (without the outer length).
#[derive(Debug, Default, Clone)]
pub(crate) struct MsgBuf(pub(crate) Vec<u8>);

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

/// One end of a forward as `MUX_C_OPEN_FWD`/`MUX_C_CLOSE_FWD` carry it: a
/// host and port, or a Unix socket path with the port `PORT_STREAMLOCAL`.
struct FwdEnd<'a>(&'a [u8], u32);

/// `MUX_C_OPEN_FWD` (`open == true`) or `MUX_C_CLOSE_FWD` of `kind`.
fn encode_fwd(
    open: bool,
    rid: u32,
    kind: u32,
    listen: FwdEnd<'_>,
    connect: FwdEnd<'_>,
) -> Result<MsgBuf, MuxError> {
    let mut m = MsgBuf::new(if open {
        MUX_C_OPEN_FWD
    } else {
        MUX_C_CLOSE_FWD
    });
    m.put_u32(rid);
    m.put_u32(kind);
    m.put_bytes(listen.0)?;
    m.put_u32(listen.1);
    m.put_bytes(connect.0)?;
    m.put_u32(connect.1);
    Ok(m)
}

/// A local (`-L`) forward from the Unix socket `listen` to the remote Unix
/// socket `connect`.
pub(crate) fn encode_path_fwd(
    open: bool,
    rid: u32,
    listen: &[u8],
    connect: &[u8],
) -> Result<MsgBuf, MuxError> {
    encode_fwd(
        open,
        rid,
        MUX_FWD_LOCAL,
        FwdEnd(listen, PORT_STREAMLOCAL),
        FwdEnd(connect, PORT_STREAMLOCAL),
    )
}

/// A remote (`-R`) forward from `listen_host:port` on the remote host to the
/// local Unix socket `connect`.
pub(crate) fn encode_remote_fwd(
    open: bool,
    rid: u32,
    listen_host: &str,
    port: u16,
    connect: &[u8],
) -> Result<MsgBuf, MuxError> {
    encode_fwd(
        open,
        rid,
        MUX_FWD_REMOTE,
        FwdEnd(listen_host.as_bytes(), u32::from(port)),
        FwdEnd(connect, PORT_STREAMLOCAL),
    )
}

/// Checks a socket path for a path forward: absolute, not empty, no NUL or other
/// control characters, shorter than `max + 1` bytes.
pub(crate) fn validate_socket_path(which: &str, path: &[u8], max: usize) -> Result<(), MuxError> {
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

pub(crate) fn validate_forward_host(host: &str) -> Result<(), MuxError> {
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

/// Reads one framed message; `Ok(None)` on a clean EOF at a message boundary.
pub(crate) async fn read_msg<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<Vec<u8>>, MuxError> {
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

/// A reply that is not the one asked for, as an error: a failure or denial
/// says why, anything else breaks the protocol.
pub(crate) fn unexpected(rid: u32, reply: Reply) -> MuxError {
    match reply {
        Reply::Failure { reason, .. } => MuxError::Refused(reason),
        Reply::PermissionDenied { reason, .. } => MuxError::PermissionDenied(reason),
        other => MuxError::Protocol(format!("unexpected reply to request {rid}: {other:?}")),
    }
}
