//! The OpenSSH ControlMaster process: arguments, spawning, readiness, stale control
//! sockets, shutdown, and the `ssh -W` fallback for stdio forwards.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::mux::MuxClient;
use crate::stderr::{tail_snapshot, ChannelFailures, Tail, STDERR_CHANNEL_CAP, STDERR_TAIL_LINES};

/// Usable length (bytes) of a ControlPath: ssh first binds `<ControlPath>.<16 random
/// chars>` and macOS limits `sun_path` to 104 bytes including the NUL.
pub const MAX_CONTROL_PATH_LEN: usize = 104 - 1 - 17;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterConfig {
    /// `user@host` or an ssh config alias.
    pub destination: String,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    pub ssh_config: Option<PathBuf>,
    /// `Key=Value`, each passed as one `-o` argument.
    pub extra_options: Vec<String>,
    pub server_alive_interval: Duration,
    pub server_alive_count_max: u32,
    pub connect_timeout: Duration,
    pub strict_host_key_checking: String,
    pub ssh_program: PathBuf,
}

impl MasterConfig {
    /// How long a new master may take to answer on its control socket:
    /// two connect timeouts (a resolver retry, a ProxyJump hop) and the
    /// handshake.
    pub fn ready_timeout(&self) -> Duration {
        self.connect_timeout * 2 + Duration::from_secs(5)
    }

    /// Defaults: keepalive every 15 s, 2 missed → dead, connect timeout 10 s,
    /// `StrictHostKeyChecking=yes`, `ssh` from `PATH`.
    pub fn new(destination: impl Into<String>) -> Self {
        MasterConfig {
            destination: destination.into(),
            port: None,
            identity_file: None,
            ssh_config: None,
            extra_options: Vec::new(),
            server_alive_interval: Duration::from_secs(15),
            server_alive_count_max: 2,
            connect_timeout: Duration::from_secs(10),
            strict_host_key_checking: "yes".into(),
            ssh_program: PathBuf::from("ssh"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(
        "invalid ssh destination {0:?}: it must not be empty, start with '-', or contain \
         whitespace or control characters, which ssh would misread; give the host as \
         user@host or an alias from the ssh config"
    )]
    InvalidDestination(String),
    #[error(
        "invalid ssh option {0:?}: expected Key=Value with an alphanumeric key and no control \
         characters; write it as e.g. \"Compression=no\""
    )]
    InvalidOption(String),
    #[error(
        "invalid value for {what}: {value:?} is empty or contains whitespace or control \
         characters, which ssh would misread; {}",
        value_hint(what)
    )]
    InvalidValue { what: &'static str, value: String },
    #[error(
        "control socket path {path} is {len} bytes long; the limit is {limit} bytes \
         (ssh appends 17 characters and Unix socket paths are limited to 104 bytes on macOS); \
         use a shorter runtime directory"
    )]
    ControlPathTooLong {
        path: PathBuf,
        len: usize,
        limit: usize,
    },
    #[error(
        "failed to start {program}: {source}; check that OpenSSH's ssh is installed and on \
         PATH, or name it with ssh_program"
    )]
    Spawn { program: PathBuf, source: io::Error },
    #[error("ssh ControlMaster exited ({status}) before it became ready{}", fmt_tail(.stderr_tail))]
    Exited {
        status: ExitStatus,
        stderr_tail: Vec<String>,
    },
    #[error(
        "ssh ControlMaster did not become ready within {timeout:?}; killed it (the host is \
         unreachable or slow to answer: check the network, or raise connect_timeout){}",
        fmt_tail(.stderr_tail)
    )]
    Timeout {
        timeout: Duration,
        stderr_tail: Vec<String>,
    },
    #[error(
        "another ssh master (pid {other_pid}) answers on control socket {path}; \
         our ssh (pid {our_pid}) could not take it over — remove the stale master first"
    )]
    ForeignMaster {
        path: PathBuf,
        other_pid: u32,
        our_pid: u32,
    },
    #[error("I/O error managing the ssh ControlMaster: {0}")]
    Io(#[from] io::Error),
}

/// What to do about a [`MasterError::InvalidValue`], by the setting it came from.
fn value_hint(what: &str) -> &'static str {
    match what {
        "StrictHostKeyChecking" => "set strict_host_key_checking to yes, accept-new or no",
        "forward host" => {
            "the container's published address is not usable; check `docker port` on the host"
        }
        _ => "fix the setting that supplies it",
    }
}

fn fmt_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        "; ssh printed nothing (try the same connection by hand with ssh -v)".into()
    } else {
        format!("; ssh said:\n  {}", tail.join("\n  "))
    }
}

/// `ssh://[user@]host[:port]` → (destination, port).
pub fn parse_host_url(url: &str) -> Result<(String, Option<u16>), String> {
    let rest = url
        .strip_prefix("ssh://")
        .ok_or_else(|| format!("{url:?} is not an ssh:// URL (write ssh://user@host[:port])"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| {
                format!("{url:?}: unclosed '[' in the host; write an IPv6 address as ssh://user@[fd00::1]:22")
            })?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':').ok_or_else(|| {
                format!(
                    "{url:?}: {t:?} after ']' is not a port; write an IPv6 address as \
                             ssh://user@[fd00::1]:22"
                )
            })?),
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!("{url:?}: port {p:?} is not a number from 1 to 65535; write e.g. ssh://user@host:2222")
                })
        })
        .transpose()?;
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:%".contains(c))
    };
    const ALLOWED: &str = "letters, digits and . _ - : % only, not starting with '-'";
    if !valid(host) {
        return Err(format!(
            "{url:?}: {host:?} is not a valid host name ({ALLOWED}); write ssh://[user@]host[:port]"
        ));
    }
    if let Some(u) = user {
        if !valid(u) {
            return Err(format!(
                "{url:?}: {u:?} is not a valid user name ({ALLOWED}); write ssh://[user@]host[:port]"
            ));
        }
    }
    let destination = match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    };
    Ok((destination, port))
}

/// Rejects destinations ssh could parse as an option or that cannot be a host/alias.
pub fn validate_destination(dest: &str) -> Result<(), MasterError> {
    if dest.is_empty()
        || dest.starts_with('-')
        || dest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(MasterError::InvalidDestination(dest.to_string()));
    }
    Ok(())
}

fn validate_option(opt: &str) -> Result<(), MasterError> {
    let bad = || MasterError::InvalidOption(opt.to_string());
    let (key, _value) = opt.split_once('=').ok_or_else(bad)?;
    if key.is_empty()
        || !key.chars().all(|c| c.is_ascii_alphanumeric())
        || opt.chars().any(|c| c.is_control())
    {
        return Err(bad());
    }
    Ok(())
}

fn validate_value(what: &'static str, value: &str) -> Result<(), MasterError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(MasterError::InvalidValue {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

fn secs(d: Duration) -> u64 {
    // ssh takes whole seconds; never round a non-zero duration down to 0 (= disabled).
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

fn opt(args: &mut Vec<OsString>, kv: impl Into<OsString>) {
    args.push("-o".into());
    args.push(kv.into());
}

/// Options shared by the master and fallback clients: -F, -i, -p, extra -o.
fn common_args(cfg: &MasterConfig, args: &mut Vec<OsString>) -> Result<(), MasterError> {
    if let Some(f) = &cfg.ssh_config {
        args.push("-F".into());
        args.push(f.into());
    }
    if let Some(i) = &cfg.identity_file {
        args.push("-i".into());
        args.push(i.into());
    }
    if let Some(p) = cfg.port {
        args.push("-p".into());
        args.push(p.to_string().into());
    }
    for o in &cfg.extra_options {
        validate_option(o)?;
        opt(args, o.as_str());
    }
    Ok(())
}

/// The ssh arguments (without the program) for the ControlMaster.
///
/// Pure; errors for a destination that ssh could misread, and for malformed options.
pub fn master_args(cfg: &MasterConfig, control_path: &Path) -> Result<Vec<OsString>, MasterError> {
    validate_destination(&cfg.destination)?;
    validate_value("StrictHostKeyChecking", &cfg.strict_host_key_checking)?;
    let mut a: Vec<OsString> = vec!["-M".into(), "-N".into(), "-S".into(), control_path.into()];
    opt(&mut a, "ControlMaster=yes");
    opt(&mut a, "ControlPersist=no");
    opt(
        &mut a,
        format!("ServerAliveInterval={}", secs(cfg.server_alive_interval)),
    );
    opt(
        &mut a,
        format!("ServerAliveCountMax={}", cfg.server_alive_count_max),
    );
    opt(&mut a, "TCPKeepAlive=yes");
    opt(&mut a, "BatchMode=yes");
    opt(
        &mut a,
        format!("ConnectTimeout={}", secs(cfg.connect_timeout)),
    );
    opt(&mut a, "ExitOnForwardFailure=no");
    // Path forwards (MUX_C_OPEN_FWD): OpenSSH never unlinks a forward's socket file, not
    // on MUX_C_CLOSE_FWD and not on exit, so without this a new master could not bind
    // the path its predecessor left behind ("Port forwarding failed"). With it the
    // master unlinks whatever is at the path, which is why
    // MuxClient::open_local_path_forward checks the path before asking.
    // StreamLocalBindMask stays at OpenSSH's default 0177: the sockets are created
    // mode 0600, usable by our uid only. (An ssh_config or extra option may change it.)
    opt(&mut a, "StreamLocalBindUnlink=yes");
    opt(
        &mut a,
        format!("StrictHostKeyChecking={}", cfg.strict_host_key_checking),
    );
    // Why a channel failed is only in the master's INFO lines (see
    // `stderr`): an ssh_config's `LogLevel QUIET` must not hide it. An
    // explicit option of the host's wins (the first value ssh sees does).
    if !cfg
        .extra_options
        .iter()
        .any(|o| o.to_ascii_lowercase().starts_with("loglevel"))
    {
        opt(&mut a, "LogLevel=INFO");
    }
    common_args(cfg, &mut a)?;
    a.push("--".into());
    a.push(cfg.destination.as_str().into());
    Ok(a)
}

/// Arguments for the `ssh -W` fallback; see [`fallback_stdio_forward_command`].
pub fn fallback_stdio_forward_args(
    cfg: &MasterConfig,
    control_path: &Path,
    host: &str,
    port: u16,
) -> Result<Vec<OsString>, MasterError> {
    validate_destination(&cfg.destination)?;
    validate_value("forward host", host)?;
    let target = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut a: Vec<OsString> = vec!["-S".into(), control_path.into()];
    opt(&mut a, "ControlMaster=no");
    // If the master is gone, ssh would silently connect directly; a failing
    // ProxyCommand makes that fallback fail instead.
    opt(&mut a, "ProxyCommand=/bin/false");
    opt(&mut a, "BatchMode=yes");
    common_args(cfg, &mut a)?;
    a.push("-W".into());
    a.push(target.into());
    a.push("--".into());
    a.push(cfg.destination.as_str().into());
    Ok(a)
}

/// `ssh -S <ctl> -o ControlMaster=no -o ProxyCommand=/bin/false … -W host:port -- dest`:
/// a stdio forward through the existing master that fails (instead of opening a new
/// SSH connection) when the master is gone. Set its stdin/stdout to the socket.
pub fn fallback_stdio_forward_command(
    cfg: &MasterConfig,
    control_path: &Path,
    host: &str,
    port: u16,
) -> Result<std::process::Command, MasterError> {
    let mut cmd = std::process::Command::new(&cfg.ssh_program);
    cmd.args(fallback_stdio_forward_args(cfg, control_path, host, port)?);
    Ok(cmd)
}

/// Checks the control socket path against [`MAX_CONTROL_PATH_LEN`].
pub fn check_control_path_len(path: &Path) -> Result<(), MasterError> {
    let len = path.as_os_str().len();
    if len > MAX_CONTROL_PATH_LEN {
        return Err(MasterError::ControlPathTooLong {
            path: path.to_path_buf(),
            len,
            limit: MAX_CONTROL_PATH_LEN,
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketState {
    /// Nothing at the path.
    Absent,
    /// A master answers there (its pid).
    Live(u32),
    /// A socket was there but nobody answered; it was removed.
    RemovedStale,
}

/// Before spawning a master: is there something at `path`, and is it alive?
///
/// A non-socket file at `path` is not removed; that is an error (`AlreadyExists`).
pub async fn clear_stale_control_socket(
    path: &Path,
    timeout: Duration,
) -> Result<SocketState, io::Error> {
    let meta = match tokio::fs::symlink_metadata(path).await {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SocketState::Absent),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to remove it (remove it by hand)",
                path.display()
            ),
        ));
    }
    let probe = async {
        let mut c = MuxClient::connect(path).await?;
        c.alive_check().await
    };
    if let Ok(Ok(pid)) = tokio::time::timeout(timeout, probe).await {
        return Ok(SocketState::Live(pid));
    }
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(SocketState::RemovedStale),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SocketState::RemovedStale),
        Err(e) => Err(e),
    }
}

/// A running ControlMaster (a direct child process).
#[derive(Debug)]
pub struct Master {
    pub pid: u32,
    child: Proc,
    control_path: PathBuf,
    tail: Tail,
    status: Option<ExitStatus>,
    /// The read end of ssh's stderr pipe, for a handover to the next image.
    stderr_fd: Option<RawFd>,
    /// Why channels could not be opened, as the master logged it.
    failures: Option<ChannelFailures>,
}

/// The master process: spawned by this image, or adopted from the image
/// this one replaced (the same process, so still our child).
#[derive(Debug)]
enum Proc {
    Spawned(Child),
    Adopted(AdoptedChild),
}

impl Proc {
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self {
            Proc::Spawned(c) => c.try_wait(),
            Proc::Adopted(c) => c.try_wait(),
        }
    }

    async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Proc::Spawned(c) => c.wait().await,
            Proc::Adopted(c) => c.wait().await,
        }
    }

    fn start_kill(&mut self) -> io::Result<()> {
        match self {
            Proc::Spawned(c) => c.start_kill(),
            Proc::Adopted(c) => c.signal(nix::sys::signal::Signal::SIGKILL),
        }
    }
}

/// A child this image did not spawn: tokio cannot wait for it, so it is
/// reaped with `waitpid` whenever SIGCHLD arrives (and once a second, as
/// signals coalesce).
#[derive(Debug)]
struct AdoptedChild {
    pid: nix::unistd::Pid,
    status: Option<ExitStatus>,
    sigchld: Option<tokio::signal::unix::Signal>,
}

impl AdoptedChild {
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        if self.status.is_some() {
            return Ok(self.status);
        }
        let status = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => ExitStatus::from_raw((code & 0xff) << 8),
            Ok(WaitStatus::Signaled(_, sig, _)) => ExitStatus::from_raw(sig as i32),
            Ok(_) => return Ok(None),
            // Not our child (any more): nothing to wait for.
            Err(nix::errno::Errno::ECHILD) => ExitStatus::from_raw(0),
            Err(e) => return Err(e.into()),
        };
        self.status = Some(status);
        Ok(self.status)
    }

    async fn wait(&mut self) -> io::Result<ExitStatus> {
        if self.sigchld.is_none() {
            self.sigchld =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        }
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            let tick = tokio::time::sleep(Duration::from_secs(1));
            match &mut self.sigchld {
                Some(sig) => {
                    tokio::select! {
                        _ = sig.recv() => {}
                        _ = tick => {}
                    }
                }
                None => tick.await,
            }
        }
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        nix::sys::signal::kill(self.pid, sig).map_err(io::Error::from)
    }
}

impl Drop for AdoptedChild {
    /// Like `kill_on_drop` for a spawned master: the master never outlives
    /// the object that supervises it.
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(None)) {
            let _ = self.signal(nix::sys::signal::Signal::SIGKILL);
            let pid = self.pid;
            // Reap it off the runtime's thread: SIGKILL is quick but not instant.
            std::thread::spawn(move || {
                let _ = nix::sys::wait::waitpid(pid, None);
            });
        }
    }
}

impl Master {
    /// Spawns ssh as a direct child in its own process group (and, on Linux, with
    /// `PR_SET_PDEATHSIG=SIGTERM`), stdin/stdout null, stderr captured: every line is
    /// sent to the returned channel (dropped if the channel is full) and the last 20
    /// are kept for error reports.
    ///
    /// Waits until the control socket answers an alive check with the child's pid
    /// (polling every 10 ms), the child exits ([`MasterError::Exited`]), or
    /// `ready_timeout` passes (child killed, [`MasterError::Timeout`]).
    ///
    /// Must not be called from a thread that may exit before the master should die
    /// (e.g. inside `spawn_blocking`): Linux delivers PDEATHSIG when the spawning
    /// *thread* exits.
    pub async fn spawn(
        cfg: &MasterConfig,
        control_path: &Path,
        ready_timeout: Duration,
    ) -> Result<(Master, mpsc::Receiver<String>), MasterError> {
        check_control_path_len(control_path)?;
        let args = master_args(cfg, control_path)?;
        let mut cmd = Command::new(&cfg.ssh_program);
        cmd.args(&args)
            // systemd's notification socket belongs to fwdd alone
            // (NotifyAccess=main); ssh has no business with it.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        #[cfg(linux_calls)]
        {
            let parent = nix::unistd::getpid();
            // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) in the child.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                        .map_err(io::Error::from)?;
                    // The parent may have died between fork and prctl.
                    if nix::unistd::getppid() != parent {
                        nix::libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| MasterError::Spawn {
            program: cfg.ssh_program.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let stderr_fd = child.stderr.as_ref().map(|e| e.as_raw_fd());
        let tail: Tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
        let (failures, rx, reader_done) = match child.stderr.take() {
            Some(stderr) => {
                let (failures, rx, task) =
                    crate::stderr::follow(stderr.into_owned_fd()?, tail.clone(), pid)?;
                (Some(failures), rx, Some(task))
            }
            None => (None, mpsc::channel(1).1, None),
        };

        let deadline = started + ready_timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                // Let the stderr reader drain what ssh wrote before exiting.
                if let Some(h) = reader_done {
                    let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
                }
                return Err(MasterError::Exited {
                    status,
                    stderr_tail: tail_snapshot(&tail),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(MasterError::Timeout {
                    timeout: ready_timeout,
                    stderr_tail: tail_snapshot(&tail),
                });
            }
            if tokio::fs::symlink_metadata(control_path).await.is_ok() {
                let probe = async {
                    let mut c = MuxClient::connect(control_path).await?;
                    c.alive_check().await
                };
                let budget = (deadline - now).min(Duration::from_secs(1));
                if let Ok(Ok(master_pid)) = tokio::time::timeout(budget, probe).await {
                    if master_pid == pid {
                        tracing::debug!(
                            pid,
                            ready_ms = started.elapsed().as_millis() as u64,
                            "ssh ControlMaster ready"
                        );
                        return Ok((
                            Master {
                                pid,
                                child: Proc::Spawned(child),
                                control_path: control_path.to_path_buf(),
                                tail,
                                status: None,
                                stderr_fd,
                                failures,
                            },
                            rx,
                        ));
                    }
                    // ssh with ControlMaster=yes and an occupied path logs "disabling
                    // multiplexing" and runs on without a control socket.
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(MasterError::ForeignMaster {
                        path: control_path.to_path_buf(),
                        other_pid: master_pid,
                        our_pid: pid,
                    });
                }
            }
            tokio::select! {
                _ = child.wait() => {}
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }

    /// Takes over a master spawned by the fwdd image this process ran
    /// before a binary upgrade (`execve` keeps the pid, so ssh is still our
    /// child): `stderr` is the read end of its stderr pipe, inherited.
    /// Whether it still answers is the caller's to check.
    pub fn adopt(
        pid: u32,
        control_path: &Path,
        stderr: Option<OwnedFd>,
    ) -> io::Result<(Master, mpsc::Receiver<String>)> {
        let raw = i32::try_from(pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        let tail: Tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
        let stderr_fd = stderr.as_ref().map(|f| f.as_raw_fd());
        let (failures, rx) = match stderr {
            Some(fd) => {
                let (failures, rx, _task) = crate::stderr::follow(fd, tail.clone(), pid)?;
                (Some(failures), rx)
            }
            None => (None, mpsc::channel(STDERR_CHANNEL_CAP).1),
        };
        let child = AdoptedChild {
            pid: nix::unistd::Pid::from_raw(raw),
            status: None,
            sigchld: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok(),
        };
        Ok((
            Master {
                pid,
                child: Proc::Adopted(child),
                control_path: control_path.to_path_buf(),
                tail,
                status: None,
                stderr_fd,
                failures,
            },
            rx,
        ))
    }

    /// Why channels could not be opened, as the master logs it.
    pub fn channel_failures(&self) -> Option<ChannelFailures> {
        self.failures.clone()
    }

    /// The read end of ssh's stderr pipe, to hand to the next fwdd image.
    pub fn stderr_fd(&self) -> Option<RawFd> {
        self.stderr_fd
    }

    /// The control socket path this master listens on.
    pub fn control_path(&self) -> &Path {
        &self.control_path
    }

    /// The last (up to 20) stderr lines of ssh.
    pub fn stderr_tail(&self) -> Vec<String> {
        tail_snapshot(&self.tail)
    }

    /// Resolves when the child exits. Cancel-safe; may be called again afterwards.
    pub async fn exited(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self.child.wait().await?;
        self.status = Some(s);
        Ok(s)
    }

    /// Stops the master: mux terminate (falling back to SIGTERM), waits up to `grace`,
    /// then SIGKILL. Removes the control socket file afterwards.
    pub async fn shutdown(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        if self.status.is_none() && !matches!(self.child.try_wait(), Ok(Some(_))) {
            let term = async {
                let c = MuxClient::connect(&self.control_path).await?;
                c.terminate().await
            };
            let asked = matches!(tokio::time::timeout(grace / 2, term).await, Ok(Ok(())));
            if !asked {
                if let Ok(pid) = i32::try_from(self.pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
            if tokio::time::timeout_at(deadline, self.child.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    pid = self.pid,
                    "ssh ControlMaster ignored shutdown; killing it"
                );
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
        }
        match tokio::fs::remove_file(&self.control_path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %self.control_path.display(), error = %e,
                "could not remove control socket"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn args_minimal() {
        let cfg = MasterConfig::new("user@docker-host");
        let a = master_args(&cfg, Path::new("/run/fwd/c1")).unwrap();
        assert_eq!(
            strs(&a),
            [
                "-M",
                "-N",
                "-S",
                "/run/fwd/c1",
                "-o",
                "ControlMaster=yes",
                "-o",
                "ControlPersist=no",
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=2",
                "-o",
                "TCPKeepAlive=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "ExitOnForwardFailure=no",
                "-o",
                "StreamLocalBindUnlink=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "LogLevel=INFO",
                "--",
                "user@docker-host",
            ]
        );
    }

    #[test]
    fn args_full() {
        let mut cfg = MasterConfig::new("alias");
        cfg.port = Some(2222);
        cfg.identity_file = Some("/k/id".into());
        cfg.ssh_config = Some("/k/cfg".into());
        cfg.extra_options = vec![
            "ProxyJump=bastion".into(),
            "IPQoS=throughput lowdelay".into(),
        ];
        cfg.server_alive_interval = Duration::from_millis(1500);
        cfg.connect_timeout = Duration::ZERO;
        cfg.strict_host_key_checking = "accept-new".into();
        let a = master_args(&cfg, Path::new("/c")).unwrap();
        let s = strs(&a);
        assert!(s.contains(&"ServerAliveInterval=2"));
        assert!(s.contains(&"ConnectTimeout=1"));
        assert!(s.contains(&"StrictHostKeyChecking=accept-new"));
        assert!(s.contains(&"StreamLocalBindUnlink=yes"));
        // The bind mask is left at OpenSSH's default (0177: sockets mode 0600).
        assert!(!s.iter().any(|a| a.starts_with("StreamLocalBindMask")));
        assert!(s.contains(&"LogLevel=INFO"), "why channels fail is logged");
        cfg.extra_options.push("LogLevel=VERBOSE".into());
        let a = master_args(&cfg, Path::new("/c")).unwrap();
        let s = strs(&a);
        assert!(
            !s.contains(&"LogLevel=INFO") && s.contains(&"LogLevel=VERBOSE"),
            "the host's own LogLevel wins: {s:?}"
        );
        cfg.extra_options.pop();
        let a = master_args(&cfg, Path::new("/c")).unwrap();
        let s = strs(&a);
        assert_eq!(
            &s[s.len() - 12..],
            [
                "-F",
                "/k/cfg",
                "-i",
                "/k/id",
                "-p",
                "2222",
                "-o",
                "ProxyJump=bastion",
                "-o",
                "IPQoS=throughput lowdelay",
                "--",
                "alias",
            ]
        );
    }

    #[test]
    fn destination_validation() {
        for bad in ["", "-oProxyCommand=x", "a b", "host\n", "a\tb", "x\u{7}"] {
            assert!(validate_destination(bad).is_err(), "{bad:?}");
            assert!(master_args(&MasterConfig::new(bad), Path::new("/c")).is_err());
        }
        for good in ["host", "user@host", "user@10.0.0.1", "alias-1", "[::1]"] {
            assert!(validate_destination(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn option_validation() {
        let mut cfg = MasterConfig::new("h");
        for bad in ["NoEquals", "=v", "-oX=y", "Key=a\nb", "Ke y=v"] {
            cfg.extra_options = vec![bad.into()];
            assert!(master_args(&cfg, Path::new("/c")).is_err(), "{bad:?}");
        }
        cfg.extra_options = vec![];
        cfg.strict_host_key_checking = "yes -oFoo".into();
        assert!(master_args(&cfg, Path::new("/c")).is_err());
    }

    #[test]
    fn fallback_args() {
        let mut cfg = MasterConfig::new("alias");
        cfg.ssh_config = Some("/k/cfg".into());
        let a = fallback_stdio_forward_args(&cfg, Path::new("/c"), "127.0.0.1", 5432).unwrap();
        assert_eq!(
            strs(&a),
            [
                "-S",
                "/c",
                "-o",
                "ControlMaster=no",
                "-o",
                "ProxyCommand=/bin/false",
                "-o",
                "BatchMode=yes",
                "-F",
                "/k/cfg",
                "-W",
                "127.0.0.1:5432",
                "--",
                "alias",
            ]
        );
        let a = fallback_stdio_forward_args(&cfg, Path::new("/c"), "::1", 80).unwrap();
        assert!(strs(&a).contains(&"[::1]:80"));
        assert!(fallback_stdio_forward_args(&cfg, Path::new("/c"), "a b", 80).is_err());
        assert!(fallback_stdio_forward_command(&cfg, Path::new("/c"), "h", 1).is_ok());
    }

    #[test]
    fn control_path_len() {
        assert_eq!(MAX_CONTROL_PATH_LEN, 86);
        let ok = PathBuf::from(format!("/{}", "a".repeat(85)));
        assert!(check_control_path_len(&ok).is_ok());
        let long = PathBuf::from(format!("/{}", "a".repeat(86)));
        let err = check_control_path_len(&long).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("87 bytes") && msg.contains("86"), "{msg}");
        assert!(msg.contains(&long.display().to_string()));
    }

    #[test]
    fn error_messages_include_stderr_tail() {
        use std::os::unix::process::ExitStatusExt;
        let e = MasterError::Exited {
            status: ExitStatus::from_raw(255 << 8),
            stderr_tail: vec!["ssh: connect to host x port 1: Connection refused".into()],
        };
        let s = e.to_string();
        assert!(s.contains("255") && s.contains("Connection refused"), "{s}");
        let e = MasterError::Exited {
            status: ExitStatus::from_raw(255 << 8),
            stderr_tail: vec![],
        };
        assert!(e
            .to_string()
            .contains("try the same connection by hand with ssh -v"));
    }

    /// Configuration errors say what is wrong and what to do about it.
    #[test]
    fn invalid_input_errors_say_what_to_do() {
        let mut cfg = MasterConfig::new("h");
        cfg.strict_host_key_checking = "ye s".into();
        let e = master_args(&cfg, Path::new("/c")).expect_err("invalid");
        let s = e.to_string();
        assert!(
            s.starts_with(
                "invalid value for StrictHostKeyChecking: \"ye s\" is empty or contains whitespace"
            ) && s.ends_with("set strict_host_key_checking to yes, accept-new or no"),
            "{s}"
        );
        let e = fallback_stdio_forward_args(&MasterConfig::new("h"), Path::new("/c"), "", 80)
            .expect_err("invalid");
        assert!(e.to_string().contains("check `docker port`"), "{e}");
        cfg = MasterConfig::new("h");
        cfg.extra_options = vec!["NoEquals".into()];
        let e = master_args(&cfg, Path::new("/c")).expect_err("invalid");
        assert!(e.to_string().contains("\"Compression=no\""), "{e}");
        let e = master_args(&MasterConfig::new("-oEvil"), Path::new("/c")).expect_err("invalid");
        assert!(e.to_string().contains("user@host or an alias"), "{e}");
        let e = MasterError::Spawn {
            program: "ssh".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(e.to_string().contains("installed and on PATH"), "{e}");
    }
}
