//! Connections to a ControlMaster's control socket and what they ask of it:
//! hello, alive check, terminate, stdio forwards, sessions, path forwards.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::codec::*;
use super::fds::{send_flags, send_with_fds};

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
        #[cfg(linux_calls)]
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        #[cfg(not(linux_calls))]
        let flags = SockFlag::empty();
        let fd = socket(AddressFamily::Unix, SockType::Stream, flags, None)
            .map_err(|e| failed(e.into()))?;
        let sock = std::os::unix::net::UnixStream::from(fd);
        #[cfg(not(linux_calls))]
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

    /// A client past both hellos whose next request gets id `next_rid`: the
    /// tests' stand-in master answers from there.
    #[cfg(test)]
    pub(crate) fn past_hello(stream: UnixStream, next_rid: u32) -> MuxClient {
        MuxClient {
            stream,
            next_rid,
            busy: false,
            hello_unread: false,
        }
    }

    /// A client on a connection whose hello is (about to be) sent.
    pub(crate) fn hello_sent(stream: UnixStream) -> MuxClient {
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
        let listen_bytes = valid_path_pair(listen, connect)?;
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
        let listen_bytes = valid_path_pair(listen, connect)?;
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

    /// `MUX_C_OPEN_FWD`, remote forward (`ssh -R listen_host:port:connect`): sshd
    /// listens on `listen_host:port` on the remote host and each connection there
    /// becomes a `forwarded-tcpip` channel that the master connects to the local
    /// Unix socket `connect`.
    ///
    /// The master answers only once sshd has (`mux.c:mux_confirm_remote_forward`):
    /// `Ok` means sshd accepted the `tcpip-forward` request, not that it bound the
    /// address asked for: with `GatewayPorts no` (OpenSSH's default) sshd binds
    /// loopback instead and says nothing. Check reachability yourself.
    ///
    /// Like a local path forward, it lives in the master (its forward list) until
    /// [`MuxClient::close_remote_forward`] or the master exits, not with this
    /// connection; asking again for the same triple answers `Ok` without a new
    /// request to sshd. Errors: [`MuxError::Refused`] ("remote port forwarding
    /// failed for listen port P": sshd refused, e.g. the port is taken or
    /// `AllowTcpForwarding` forbids it), [`MuxError::InvalidArgument`] for port 0
    /// (a port sshd would choose is not supported) or a bad host or path.
    pub async fn open_remote_forward(
        &mut self,
        listen_host: &str,
        port: u16,
        connect: &Path,
    ) -> Result<(), MuxError> {
        self.remote_forward(true, listen_host, port, connect).await
    }

    /// `MUX_C_CLOSE_FWD` for the same triple as [`MuxClient::open_remote_forward`]:
    /// the master asks sshd to cancel it. [`MuxError::Refused`] ("port not
    /// forwarded") when the master has no such forward.
    pub async fn close_remote_forward(
        &mut self,
        listen_host: &str,
        port: u16,
        connect: &Path,
    ) -> Result<(), MuxError> {
        self.remote_forward(false, listen_host, port, connect).await
    }

    async fn remote_forward(
        &mut self,
        open: bool,
        listen_host: &str,
        port: u16,
        connect: &Path,
    ) -> Result<(), MuxError> {
        let connect = valid_remote_forward(listen_host, port, connect)?;
        let rid = self.begin()?;
        self.write_msg(&encode_remote_fwd(open, rid, listen_host, port, connect)?)
            .await?;
        self.read_ok_reply(rid).await
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

/// A path forward's two ends, checked before anything is sent: the listen
/// path's bytes.
fn valid_path_pair<'a>(listen: &'a Path, connect: &str) -> Result<&'a [u8], MuxError> {
    let listen_bytes = listen.as_os_str().as_bytes();
    validate_socket_path("local listen", listen_bytes, MAX_LOCAL_SOCKET_PATH_LEN)?;
    validate_socket_path(
        "remote connect",
        connect.as_bytes(),
        MAX_REMOTE_SOCKET_PATH_LEN,
    )?;
    Ok(listen_bytes)
}

/// A remote forward's ends, checked before anything is sent: the connect
/// path's bytes.
fn valid_remote_forward<'a>(
    listen_host: &str,
    port: u16,
    connect: &'a Path,
) -> Result<&'a [u8], MuxError> {
    validate_forward_host(listen_host)?;
    if port == 0 {
        return Err(MuxError::InvalidArgument(
            "remote forward to port 0 (a port sshd chooses) is not supported; give a port".into(),
        ));
    }
    let connect_bytes = connect.as_os_str().as_bytes();
    validate_socket_path("local connect", connect_bytes, MAX_LOCAL_SOCKET_PATH_LEN)?;
    Ok(connect_bytes)
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
