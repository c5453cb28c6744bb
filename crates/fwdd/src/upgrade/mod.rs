//! Zero-downtime binary upgrade: `fwdctl upgrade` or SIGUSR2 make fwdd
//! `execve` the binary now at the path it was started from, in place.
//!
//! In place, because the process must stay the same: the ssh masters are
//! its children (`PR_SET_PDEATHSIG` would end them with another parent,
//! and only a parent can wait for them), systemd's `MainPID` and launchd's
//! job stay valid, and every descriptor can be kept simply by clearing
//! `FD_CLOEXEC` on it.
//!
//! The steps, old image:
//! 1. `fwdd upgrade-check` is run from the new binary: it must run and
//!    accept [`HANDOVER_VERSION`]; otherwise nothing happens and the
//!    request is answered with why.
//! 2. Freeze ([`ServeContext::frozen`]): no listener accepts (the kernel's
//!    backlogs hold new clients), no hand-off to a master starts, engine
//!    relays stop between two writes. Hand-offs whose mux request is in
//!    flight are waited for (bounded): that request's connection becomes
//!    the tunnel's, which the master closes the tunnel with.
//! 3. The [`Document`] is written to an unlinked file, `FD_CLOEXEC` is
//!    cleared on it and on exactly the descriptors it names, and the binary
//!    is executed with the same arguments and `FWD_HANDOVER_FD`.
//!
//! If `execve` fails, the flags are restored and the image thaws: nothing
//! was lost. The new image ([`take_over`]) adopts every descriptor, makes
//! it close-on-exec again, resumes each host from its [`fwd_core::Handover`]
//! and answers the `fwdctl upgrade` connection itself.

pub mod document;

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use document::{CheckAnswer, Document, ACCEPTED_VERSIONS, HANDOVER_VERSION};
use document::{ForwardDoc, HostDoc, ListenerDoc, MasterDoc, QueuedDoc, RelayDoc, SocketDoc};
use fwd_core::HostKey;

use crate::daemon::Daemon;
use crate::engine::AdoptedRelay;
use crate::forwards::AdoptedForward;

/// Names the handover document's descriptor in the new image's environment.
pub const HANDOVER_ENV: &str = "FWD_HANDOVER_FD";
/// How long `fwdd upgrade-check` may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// ETXTBSY: tries, and the pause between them (0.5 s in all).
const BUSY_RETRIES: usize = 25;
const BUSY_PAUSE: Duration = Duration::from_millis(20);
/// How long in-flight hand-offs and relay writes may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// This process and the image it runs.
#[derive(Debug, Clone)]
pub struct Image {
    /// Where fwdd was started from: the file executed on upgrade (the file on
    /// disk now, not the running image).
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    /// When this image started.
    pub started_at: SystemTime,
    /// When the process started (the first image).
    pub daemon_started_at: SystemTime,
    pub upgrades: u32,
    /// This image's executable, held open for the life of the image (Linux:
    /// `/proc/self/exe`): what the next image rolls back to if it cannot
    /// take over. The file on disk may be gone by then; this stays valid.
    pub exe_fd: Option<RawFd>,
}

impl Image {
    /// The image as started by a user or a service manager.
    pub fn current() -> Image {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().unwrap_or_default();
        let cwd = std::env::current_dir().ok();
        let binary = resolve_program(&argv0, cwd.as_deref(), std::env::var_os("PATH").as_deref())
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from(argv0));
        let now = SystemTime::now();
        Image {
            binary,
            args: argv.collect(),
            started_at: now,
            daemon_started_at: now,
            upgrades: 0,
            exe_fd: own_executable(),
        }
    }
}

#[cfg(target_os = "linux")]
fn own_executable() -> Option<RawFd> {
    use std::os::fd::IntoRawFd;
    // Kept for the life of the image: O_CLOEXEC until an upgrade passes it on.
    std::fs::File::open("/proc/self/exe")
        .ok()
        .map(IntoRawFd::into_raw_fd)
}

/// No `/proc/self/exe` and no `fexecve`: an image that cannot take over
/// cannot go back (launchd's KeepAlive restarts fwdd instead).
#[cfg(not(target_os = "linux"))]
fn own_executable() -> Option<RawFd> {
    None
}

/// The file `argv0` names, as it was found at start: not resolved through
/// symlinks, so a package manager that moves a versioned directory under a
/// stable link (Homebrew's Cellar) still finds the new binary.
pub fn resolve_program(
    argv0: &std::ffi::OsStr,
    cwd: Option<&Path>,
    path_var: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    let p = Path::new(argv0);
    if argv0.is_empty() {
        return None;
    }
    if argv0.as_bytes().contains(&b'/') {
        return if p.is_absolute() {
            Some(p.to_path_buf())
        } else {
            cwd.map(|c| c.join(p))
        };
    }
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(p))
        .find(|candidate| is_executable(candidate))
        .map(|c| {
            if c.is_absolute() {
                c
            } else {
                cwd.map_or(c.clone(), |d| d.join(&c))
            }
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `binary upgrade-check`: does it run, and does it accept our document?
pub async fn check_binary(binary: &Path, args: &[OsString]) -> Result<CheckAnswer, String> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(args)
        .arg("upgrade-check")
        .env_remove("NOTIFY_SOCKET")
        .env_remove(HANDOVER_ENV)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let run = async {
        // A file still open for writing somewhere (a package manager that has
        // not closed it, another process's fork) cannot be executed yet.
        for _ in 0..BUSY_RETRIES {
            match cmd.output().await {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    tokio::time::sleep(BUSY_PAUSE).await;
                }
                other => return other,
            }
        }
        cmd.output().await
    };
    let out = match tokio::time::timeout(CHECK_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(format!(
                "the new binary {} does not run: {e}",
                binary.display()
            ))
        }
        Err(_) => {
            return Err(format!(
                "the new binary {} did not answer `upgrade-check` within {}s",
                binary.display(),
                CHECK_TIMEOUT.as_secs()
            ))
        }
    };
    let said = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        fwd_proto::term::for_terminal(&last.chars().take(300).collect::<String>()).into_owned()
    };
    if !out.status.success() {
        return Err(format!(
            "the new binary {} failed its check ({}): {}",
            binary.display(),
            out.status,
            said(&out.stderr)
        ));
    }
    let answer: CheckAnswer = serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "the new binary {} is not an fwdd that can take over (its check said: {})",
            binary.display(),
            said(&out.stdout)
        )
    })?;
    if !answer.handover_versions.contains(&HANDOVER_VERSION) {
        return Err(format!(
            "the new binary {} ({}) does not understand handover version {HANDOVER_VERSION} (it accepts {:?}); restart fwdd instead",
            binary.display(),
            answer.fwdd,
            answer.handover_versions
        ));
    }
    Ok(answer)
}

/// The whole upgrade, old image side. Returns only when it did not happen.
pub async fn upgrade(daemon: &Rc<Daemon>, reply_fd: Option<RawFd>) -> Result<Infallible, String> {
    if daemon.upgrading.replace(true) {
        return Err("an upgrade is already under way".into());
    }
    let result = attempt(daemon, reply_fd).await;
    daemon.upgrading.set(false);
    daemon.serve.frozen.send_replace(false);
    let Err(e) = result;
    tracing::error!(event = "upgrade_refused", error = %e, "not upgrading: {e}; this image keeps serving");
    Err(e)
}

async fn attempt(daemon: &Rc<Daemon>, reply_fd: Option<RawFd>) -> Result<Infallible, String> {
    let binary = daemon.image.binary.clone();
    let answer = check_binary(&binary, &daemon.image.args).await?;
    tracing::info!(event = "upgrade_started", binary = %binary.display(), to = %answer.fwdd, "upgrading to {} from {}", answer.fwdd, binary.display());
    daemon.serve.frozen.send_replace(true);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let busy = daemon.serve.handing_off() + running_relays(daemon);
        if busy == 0 || Instant::now() >= deadline {
            if busy > 0 {
                tracing::warn!(event = "upgrade_drain_timeout", busy, "{busy} connections did not reach a point where they can be handed over; they end with this image");
            }
            break;
        }
        // Hand-offs take a mux round trip (well under a millisecond).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let doc = collect(daemon, reply_fd);
    let dir = daemon.config.borrow().runtime_dir.clone();
    exec(&binary, &daemon.image.args, &doc, &dir)
}

fn running_relays(daemon: &Daemon) -> usize {
    daemon
        .hosts()
        .iter()
        .filter_map(|h| {
            h.engine_socket
                .borrow()
                .as_ref()
                .ok()
                .map(|s| s.running_relays())
        })
        .sum()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(document::ms).unwrap_or(0)
}

/// Everything this image hands over, synchronously: nothing may change
/// between this and `execve`.
fn collect(daemon: &Daemon, reply_fd: Option<RawFd>) -> Document {
    let now = Instant::now();
    let mut hosts = Vec::new();
    let mut relays = Vec::new();
    let mut queued = Vec::new();
    for h in daemon.hosts() {
        let state = h.machine.borrow().handover(now);
        let master = match (state.master_pid, h.master_fds.get()) {
            (Some(pid), Some((live, stderr_fd))) if pid == live => {
                Some(MasterDoc { pid, stderr_fd })
            }
            _ => None,
        };
        let (engine_sockets, totals) = match h.engine_socket.borrow().as_ref() {
            Ok(s) => {
                for fd in s.queued_clients() {
                    queued.push(QueuedDoc {
                        host: h.key.to_string(),
                        fd,
                    });
                }
                for r in s.paused_relays() {
                    relays.push(RelayDoc {
                        host: h.key.to_string(),
                        client_fd: r.client,
                        upstream_fd: r.upstream,
                        up_open: r.up_open,
                        down_open: r.down_open,
                        keep_fds: r.keep,
                        drain_fd: r.drain,
                    });
                }
                let sockets = s
                    .listener_fds
                    .iter()
                    .map(|(path, fd)| SocketDoc {
                        path: path.clone(),
                        fd: *fd,
                    })
                    .collect();
                (
                    sockets,
                    (
                        s.stats.total.get(),
                        s.stats.bytes_up.get(),
                        s.stats.bytes_down.get(),
                    ),
                )
            }
            Err(_) => (Vec::new(), (0, 0, 0)),
        };
        hosts.push(HostDoc {
            name: h.key.to_string(),
            id: h.id,
            route: document::route_name(state.route),
            engine_forwarded: state.engine_forwarded,
            remote_socket: state.remote_socket,
            since_ns: state.since_ns,
            docker_version: state.docker_version,
            connected_for_ms: document::ms(state.connected_for),
            containers: state
                .containers
                .iter()
                .map(document::container_doc)
                .collect(),
            master,
            engine_sockets,
            engine_total: totals.0,
            engine_bytes_up: totals.1,
            engine_bytes_down: totals.2,
            failures: state.failures,
            retry_in_ms: state.retry_in.map(document::ms),
            episode: document::EpisodeDoc {
                kinds: state.episode.kinds,
                failures: state.episode.failures,
                recovery_logged: state.episode.recovery_logged,
                announced_first_up: state.episode.announced_first_up,
            },
        });
    }
    let held = daemon.serve.held_conns();
    let mut forwards = Vec::new();
    for (port, f) in daemon.table.borrow().forwards.iter() {
        if !f.held.bound {
            continue;
        }
        let c = &f.held.owner;
        let (running_for, listening) = f.target_state();
        let conns = held.get(port);
        forwards.push(ForwardDoc {
            host: c.host.to_string(),
            container: c.container.as_str().to_string(),
            container_name: c.container_name.clone(),
            compose_project: c.compose_project.clone(),
            container_port: c.container_port,
            started_at_ns: c.started_at_ns,
            pending: c.pending,
            local_port: c.local_port,
            bind: c.bind.clone(),
            remote_ip: c.remote.ip.clone(),
            remote_port: c.remote.port,
            listeners: f
                .listener_fds()
                .iter()
                .map(|(addr, fd)| ListenerDoc {
                    addr: *addr,
                    fd: *fd,
                })
                .collect(),
            running_for_ms: running_for.map(document::ms),
            listening,
            since_ms: unix_ms(f.since),
            connections_total: f.stats.total.get(),
            tunnels: conns.map(|c| c.tunnels.clone()).unwrap_or_default(),
            queued: conns.map(|c| c.queued.clone()).unwrap_or_default(),
        });
    }
    Document {
        handover_version: HANDOVER_VERSION,
        from_version: crate::VERSION.to_string(),
        daemon_started_at_ms: unix_ms(daemon.image.daemon_started_at),
        upgrades: daemon.image.upgrades,
        control: SocketDoc {
            path: daemon.control_socket.0.clone(),
            fd: daemon.control_socket.1,
        },
        reply_fd,
        next_host_id: daemon.next_host_id(),
        hosts,
        forwards,
        engine_relays: relays,
        engine_queued: queued,
        rollback_exe_fd: daemon.image.exe_fd,
        binary: daemon.image.binary.to_string_lossy().into_owned(),
        args: daemon
            .image
            .args
            .iter()
            .map(|a| a.to_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .unwrap_or_default(),
    }
}

fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// Writes the document to an unlinked private file, opens exactly its
/// descriptors to the next image and executes it. Returns only on failure,
/// with every flag restored.
fn exec(
    binary: &Path,
    args: &[OsString],
    doc: &Document,
    dir: &Path,
) -> Result<Infallible, String> {
    let file =
        write_document(doc, dir).map_err(|e| format!("cannot write the handover document: {e}"))?;
    let mut fds = doc.fds();
    fds.push(file.as_raw_fd());
    let c = |s: &std::ffi::OsStr| {
        CString::new(s.as_bytes()).map_err(|_| format!("{s:?} contains a NUL byte"))
    };
    let program = c(binary.as_os_str())?;
    let mut argv = vec![program.clone()];
    for a in args {
        argv.push(c(a)?);
    }
    let mut env = environment();
    env.push(c(std::ffi::OsStr::new(&format!(
        "{HANDOVER_ENV}={}",
        file.as_raw_fd()
    )))?);
    for (i, fd) in fds.iter().enumerate() {
        if let Err(e) = set_cloexec(*fd, false) {
            for fd in &fds[..i] {
                let _ = set_cloexec(*fd, true);
            }
            return Err(format!("cannot pass descriptor {fd} on: {e}"));
        }
    }
    tracing::info!(event = "upgrade_exec", binary = %binary.display(), listeners = doc.forwards.iter().map(|f| f.listeners.len()).sum::<usize>(), tunnels = doc.forwards.iter().map(|f| f.tunnels.len()).sum::<usize>(), "handing over to {}", binary.display());
    let mut err = nix::unistd::execve(&program, &argv, &env).err();
    for _ in 0..BUSY_RETRIES {
        if err != Some(nix::errno::Errno::ETXTBSY) {
            break;
        }
        std::thread::sleep(BUSY_PAUSE);
        err = nix::unistd::execve(&program, &argv, &env).err();
    }
    for fd in &fds {
        let _ = set_cloexec(*fd, true);
    }
    drop(file);
    Err(format!(
        "cannot execute {}: {}",
        binary.display(),
        err.map_or_else(|| "unknown error".to_string(), |e| e.desc().to_string())
    ))
}

/// In the runtime directory: private, and writable under the systemd
/// unit's `ProtectSystem=strict`, where /tmp may not be.
fn write_document(doc: &Document, dir: &Path) -> std::io::Result<std::fs::File> {
    write_bytes(&doc.to_json(), dir)
}

fn write_bytes(bytes: &[u8], dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!(
        "fwdd-handover-{}-{}",
        std::process::id(),
        unix_ms(SystemTime::now())
    ));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    // Unlinked at once: the document lives only as long as the descriptor.
    std::fs::remove_file(&path)?;
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file)
}

/// What the previous image handed over, each descriptor owned exactly once.
pub struct Takeover {
    pub doc_from: String,
    pub daemon_started_at: SystemTime,
    pub upgrades: u32,
    /// The control socket's listener (taken first by `run`).
    pub control: Option<(PathBuf, OwnedFd)>,
    pub reply: Option<OwnedFd>,
    pub next_host_id: u32,
    pub hosts: Vec<HostTakeover>,
    pub forwards: Vec<AdoptedForward>,
    pub relays: Vec<(HostKey, AdoptedRelay)>,
    pub engine_queued: Vec<(HostKey, OwnedFd)>,
    /// This image is the old one again: the new one could not take over.
    pub rolled_back: Option<String>,
}

pub struct HostTakeover {
    pub name: String,
    pub id: u32,
    pub state: fwd_core::Handover,
    pub master: Option<(u32, Option<OwnedFd>)>,
    pub engine_sockets: Vec<(PathBuf, OwnedFd)>,
    pub engine_totals: (u64, u64, u64),
}

/// Names, in the environment of an image the next one rolled back to, why
/// that one could not take over.
pub const ROLLBACK_ENV: &str = "FWD_UPGRADE_FAILED";

/// A handover read and checked, its descriptors not yet owned: the new image
/// parses its arguments and configuration first, and if those fail it can
/// still hand everything back ([`Inherited::roll_back`]).
pub struct Inherited {
    doc: Document,
    bytes: Vec<u8>,
    /// Why the image this process ran before rolled back to us, if it did.
    rolled_back: Option<String>,
}

/// New image, before anything else: the handover, if this process was
/// started by an upgrade. `Err`: there was one but it cannot be used (the
/// inherited descriptors are then closed, and fwdd starts afresh).
pub fn inherited() -> Option<Result<Inherited, String>> {
    let raw = std::env::var(HANDOVER_ENV).ok()?;
    let rolled_back = std::env::var(ROLLBACK_ENV).ok();
    // Single-threaded here (called first thing in main): nothing reads the
    // environment concurrently.
    std::env::remove_var(HANDOVER_ENV);
    std::env::remove_var(ROLLBACK_ENV);
    Some(
        read_document(&raw)
            .map(|(doc, bytes)| Inherited {
                doc,
                bytes,
                rolled_back,
            })
            .inspect_err(|_| close_inherited()),
    )
}

impl Inherited {
    /// Takes ownership of everything handed over.
    pub fn take(self) -> Takeover {
        own(self.doc, self.rolled_back)
    }

    /// This image cannot take over (`why`): execute the previous image again
    /// with the same document, so it carries on with every descriptor. Returns
    /// only when that is impossible (no previous image to go back to).
    pub fn roll_back(self, why: &str) -> String {
        let Some(exe) = self
            .doc
            .rollback_exe_fd
            .filter(|_| self.rolled_back.is_none())
        else {
            close_inherited();
            return format!("{why}; and the previous image cannot be run again");
        };
        let dir = self
            .doc
            .control
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let err = roll_back_to(exe, &self.doc, &self.bytes, &dir, why);
        close_inherited();
        format!("{why}; rolling back failed too: {err}")
    }
}

#[cfg(target_os = "linux")]
fn roll_back_to(exe: RawFd, doc: &Document, bytes: &[u8], dir: &Path, why: &str) -> String {
    let file = match write_bytes(bytes, dir) {
        Ok(f) => f,
        Err(e) => return format!("cannot write the handover document: {e}"),
    };
    if let Err(e) = set_cloexec(file.as_raw_fd(), false) {
        return e.to_string();
    }
    let cstr = |s: &str| CString::new(s).unwrap_or_default();
    // argv[0] is where the old image was started from: its next upgrade
    // looks there for the binary.
    let program = if doc.binary.is_empty() {
        "fwdd"
    } else {
        &doc.binary
    };
    let mut argv = vec![cstr(program)];
    argv.extend(doc.args.iter().map(|a| cstr(a)));
    let mut env = environment();
    env.push(cstr(&format!("{HANDOVER_ENV}={}", file.as_raw_fd())));
    env.push(cstr(&format!("{ROLLBACK_ENV}={}", why.replace('\0', " "))));
    eprintln!("fwdd: {why}; rolling back to the previous image");
    let err = nix::unistd::fexecve(exe, &argv, &env).err();
    err.map_or_else(|| "unknown error".to_string(), |e| e.desc().to_string())
}

#[cfg(not(target_os = "linux"))]
fn roll_back_to(_: RawFd, _: &Document, _: &[u8], _: &Path, _: &str) -> String {
    "not supported on this platform".to_string()
}

/// The current environment as `execve` wants it, without the handover's own
/// variables.
fn environment() -> Vec<CString> {
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k == HANDOVER_ENV || k == ROLLBACK_ENV {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        if let Ok(s) = CString::new(kv) {
            env.push(s);
        }
    }
    env
}

fn read_document(raw: &str) -> Result<(Document, Vec<u8>), String> {
    let fd: RawFd = raw
        .parse()
        .map_err(|_| format!("{HANDOVER_ENV}={raw:?} is not a descriptor"))?;
    if fd <= 2 || !is_open(fd) {
        return Err(format!("{HANDOVER_ENV}={fd} names no open descriptor"));
    }
    // SAFETY: the descriptor was opened for us by the previous image and is
    // named nowhere else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the handover document: {e}"))?;
    drop(file);
    let doc = Document::parse(&bytes).map_err(|e| e.to_string())?;
    for fd in doc.fds() {
        if !is_open(fd) {
            return Err(format!(
                "the handover names descriptor {fd}, which is not open"
            ));
        }
    }
    Ok((doc, bytes))
}

fn is_open(fd: RawFd) -> bool {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok()
}

/// Takes ownership of every descriptor the (checked: each named once)
/// document names, close-on-exec again so no later child inherits one.
fn own(doc: Document, rolled_back: Option<String>) -> Takeover {
    // The previous image's executable is needed no longer.
    if let Some(fd) = doc.rollback_exe_fd {
        let _ = nix::unistd::close(fd);
    }
    let take = |fd: RawFd| {
        let _ = set_cloexec(fd, true);
        // SAFETY: `Document::parse` checked that each fd is named once, and
        // `read_takeover` that it is open; nothing else in this image owns it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let hosts = doc
        .hosts
        .into_iter()
        .filter_map(|h| {
            let state = fwd_core::Handover {
                master_pid: h.master.as_ref().map(|m| m.pid),
                route: document::route(&h.route).ok()?,
                engine_forwarded: h.engine_forwarded,
                remote_socket: h.remote_socket,
                since_ns: h.since_ns,
                containers: h
                    .containers
                    .iter()
                    .filter_map(|c| document::container(c).ok())
                    .collect(),
                docker_version: h.docker_version,
                connected_for: Duration::from_millis(h.connected_for_ms),
                failures: h.failures,
                retry_in: h.retry_in_ms.map(Duration::from_millis),
                episode: fwd_core::EpisodeSnapshot {
                    kinds: h.episode.kinds,
                    failures: h.episode.failures,
                    recovery_logged: h.episode.recovery_logged,
                    announced_first_up: h.episode.announced_first_up,
                },
            };
            Some(HostTakeover {
                name: h.name,
                id: h.id,
                state,
                master: h.master.map(|m| (m.pid, m.stderr_fd.map(take))),
                engine_sockets: h
                    .engine_sockets
                    .into_iter()
                    .map(|s| (s.path, take(s.fd)))
                    .collect(),
                engine_totals: (h.engine_total, h.engine_bytes_up, h.engine_bytes_down),
            })
        })
        .collect();
    let now = SystemTime::now();
    let forwards = doc
        .forwards
        .into_iter()
        .filter_map(|f| {
            let claim = document::claim(&f).ok()?;
            Some(AdoptedForward {
                claim,
                listeners: f
                    .listeners
                    .iter()
                    .map(|l| std::net::TcpListener::from(take(l.fd)))
                    .collect(),
                running_for: f.running_for_ms.map(Duration::from_millis),
                listening: f.listening,
                since: UNIX_EPOCH
                    .checked_add(Duration::from_millis(f.since_ms))
                    .unwrap_or(now),
                connections_total: f.connections_total,
                tunnels: f.tunnels.into_iter().map(take).collect(),
                queued: f.queued.into_iter().map(take).collect(),
            })
        })
        .collect();
    let relays = doc
        .engine_relays
        .into_iter()
        .map(|r| {
            (
                HostKey::from(r.host.as_str()),
                AdoptedRelay {
                    client: take(r.client_fd),
                    upstream: take(r.upstream_fd),
                    up_open: r.up_open,
                    down_open: r.down_open,
                    keep: r.keep_fds.into_iter().map(take).collect(),
                    drain: r.drain_fd.map(take),
                },
            )
        })
        .collect();
    let engine_queued = doc
        .engine_queued
        .into_iter()
        .map(|q| (HostKey::from(q.host.as_str()), take(q.fd)))
        .collect();
    Takeover {
        engine_queued,
        doc_from: doc.from_version,
        daemon_started_at: UNIX_EPOCH
            .checked_add(Duration::from_millis(doc.daemon_started_at_ms))
            .unwrap_or(now),
        // A rollback is the old image again, not one more upgrade.
        upgrades: doc.upgrades + u32::from(rolled_back.is_none()),
        rolled_back,
        control: Some((doc.control.path, take(doc.control.fd))),
        reply: doc.reply_fd.map(take),
        next_host_id: doc.next_host_id,
        hosts,
        forwards,
        relays,
    }
}

/// A handover that cannot be used leaves descriptors nobody knows: close
/// them all (the listeners' ports must be free for a fresh start).
fn close_inherited() {
    for fd in 3..4096 {
        let _ = nix::unistd::close(fd);
    }
}

/// New image: tells `fwdctl upgrade` what was kept, on its connection.
pub fn answer(reply: OwnedFd, report: fwd_proto::UpgradeReport) {
    send(reply, &fwd_proto::Response::Upgrade(report));
}

/// The old image again, after a rollback: tells `fwdctl upgrade` why.
pub fn answer_error(reply: OwnedFd, message: String) {
    send(
        reply,
        &fwd_proto::Response::error_with_code(message, fwd_proto::error_code::UPGRADE_REFUSED),
    );
}

fn send(reply: OwnedFd, response: &fwd_proto::Response) {
    let mut stream = std::os::unix::net::UnixStream::from(reply);
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(&fwd_proto::encode_line(response));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_the_path_started_not_the_link_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("fwdd");
        std::fs::write(&bin, b"#!/bin/sh\n").expect("write");
        std::os::unix::fs::symlink(&bin, dir.path().join("link")).expect("link");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let cwd = Path::new("/srv");
        assert_eq!(
            resolve_program("/usr/bin/fwdd".as_ref(), Some(cwd), None),
            Some(PathBuf::from("/usr/bin/fwdd"))
        );
        assert_eq!(
            resolve_program("target/release/fwdd".as_ref(), Some(cwd), None),
            Some(PathBuf::from("/srv/target/release/fwdd"))
        );
        // Found on PATH: the link itself, not where it points today.
        let path = std::env::join_paths(["/nonexistent".as_ref(), dir.path()]).expect("join");
        assert_eq!(
            resolve_program("link".as_ref(), Some(cwd), Some(&path)),
            Some(dir.path().join("link"))
        );
        assert_eq!(
            resolve_program("fwdd-missing".as_ref(), Some(cwd), Some(&path)),
            None
        );
        assert_eq!(resolve_program("".as_ref(), Some(cwd), Some(&path)), None);
    }

    #[tokio::test]
    async fn a_binary_that_is_not_fwdd_is_refused_with_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(name);
            std::fs::write(&p, body).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            p
        };
        let fails = write("fails", "#!/bin/sh\necho 'broken build' >&2\nexit 1\n");
        let e = check_binary(&fails, &[]).await.expect_err("refused");
        assert!(
            e.contains("failed its check") && e.contains("broken build"),
            "{e}"
        );
        let chatty = write("chatty", "#!/bin/sh\necho hello\n");
        let e = check_binary(&chatty, &[]).await.expect_err("refused");
        assert!(e.contains("not an fwdd") && e.contains("hello"), "{e}");
        let future = write(
            "future",
            "#!/bin/sh\necho '{\"fwdd\":\"9.0.0\",\"handover_versions\":[7]}'\n",
        );
        let e = check_binary(&future, &[]).await.expect_err("refused");
        assert!(e.contains("does not understand handover version 1"), "{e}");
        let e = check_binary(&dir.path().join("missing"), &[])
            .await
            .expect_err("refused");
        assert!(e.contains("does not run"), "{e}");
        let fine = write(
            "fine",
            "#!/bin/sh\n[ \"$1\" = upgrade-check ] && echo '{\"fwdd\":\"0.2.0\",\"handover_versions\":[1,2]}'\n",
        );
        assert_eq!(
            check_binary(&fine, &[]).await,
            Ok(CheckAnswer {
                fwdd: "0.2.0".into(),
                handover_versions: vec![1, 2]
            })
        );
    }
}
