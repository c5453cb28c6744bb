//! What crosses `execve` from one fwdd image to the next: the versioned
//! [`Document`] naming every descriptor kept, and owning those descriptors
//! again on the new side ([`inherited`], [`Inherited::take`]: the
//! [`Descriptors`]) or handing them back to the old image when the new one
//! cannot start ([`Inherited::roll_back`]).
//!
//! This module knows no part of the daemon: each part writes its own state
//! into the document and adopts it back from there (`to_doc` and `adopt` or
//! `from_doc` beside the state: `forwards/handover.rs`, `engine.rs`,
//! `expose/handover.rs`, `serve/relay.rs`, `host/handover.rs`);
//! `upgrade` assembles them, on both sides.

pub mod document;
#[cfg(test)]
mod fuzz;

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use document::{CheckAnswer, Document, SocketDoc, ACCEPTED_VERSIONS, HANDOVER_VERSION};

/// Names the handover document's descriptor in the new image's environment.
pub const HANDOVER_ENV: &str = "FWD_HANDOVER_FD";

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

    /// A document from this image, its parts not filled in yet: who writes
    /// it, since when the daemon runs, what to roll back to.
    pub fn document(
        &self,
        control: SocketDoc,
        reply_fd: Option<RawFd>,
        next_host_id: u32,
    ) -> Document {
        Document {
            handover_version: HANDOVER_VERSION,
            from_version: crate::version::VERSION.to_string(),
            daemon_started_at_ms: unix_ms(self.daemon_started_at),
            upgrades: self.upgrades,
            control,
            reply_fd,
            next_host_id,
            hosts: Vec::new(),
            forwards: Vec::new(),
            names: Default::default(),
            udp: Vec::new(),
            engine_relays: Vec::new(),
            engine_queued: Vec::new(),
            expose_relays: Vec::new(),
            expose_queued: Vec::new(),
            metrics: None,
            rollback_exe_fd: self.exe_fd,
            binary: self.binary.to_string_lossy().into_owned(),
            args: self
                .args
                .iter()
                .map(|a| a.to_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .unwrap_or_default(),
        }
    }
}

#[cfg(linux_calls)]
fn own_executable() -> Option<RawFd> {
    use std::os::fd::IntoRawFd;
    // Kept for the life of the image: O_CLOEXEC until an upgrade passes it on.
    std::fs::File::open("/proc/self/exe")
        .ok()
        .map(IntoRawFd::into_raw_fd)
}

/// No `/proc/self/exe` and no `fexecve`: an image that cannot take over
/// cannot go back (launchd's KeepAlive restarts fwdd instead).
#[cfg(not(linux_calls))]
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

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(document::ms).unwrap_or(0)
}

pub fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
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

pub fn write_bytes(bytes: &[u8], dir: &Path) -> std::io::Result<std::fs::File> {
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

/// What the previous image handed over, each descriptor owned exactly once:
/// the control socket, the `fwdctl upgrade` connection and the metrics
/// listener taken out for `main`; everything else is in `doc`, and each
/// part of the daemon takes its own descriptors from `fds` as it adopts its
/// part (`upgrade::take_over`). What no part takes is closed with `fds`.
pub struct Takeover {
    pub doc_from: String,
    pub daemon_started_at: SystemTime,
    pub upgrades: u32,
    /// The control socket's listener (taken first by `run`).
    pub control: Option<(PathBuf, OwnedFd)>,
    pub reply: Option<OwnedFd>,
    /// The metrics endpoint's listener and its address.
    pub metrics: Option<(std::net::SocketAddr, OwnedFd)>,
    /// This image is the old one again: the new one could not take over.
    pub rolled_back: Option<String>,
    pub doc: Document,
    pub fds: Descriptors,
}

/// The descriptors a handover document names, owned by this image and
/// close-on-exec again (no later child inherits one); each is taken once,
/// by the part that adopts what it was. Dropping this closes the rest.
pub struct Descriptors(BTreeMap<RawFd, OwnedFd>);

impl Descriptors {
    /// Owns every descriptor `doc` names. Only for a document from
    /// [`read_document`]: parsed (each descriptor named once, none stdio)
    /// and each descriptor checked open.
    fn own(doc: &Document) -> Descriptors {
        let mut owned = BTreeMap::new();
        for fd in doc.fds() {
            let _ = set_cloexec(fd, true);
            // SAFETY: `Document::parse` checked that each fd is named once,
            // and `read_document` that it is open; nothing else in this image
            // owns it, and the map takes it once.
            owned.insert(fd, unsafe { OwnedFd::from_raw_fd(fd) });
        }
        Descriptors(owned)
    }

    /// The descriptor `fd` of the document, owned; `None` once taken.
    pub fn take(&mut self, fd: RawFd) -> Option<OwnedFd> {
        self.0.remove(&fd)
    }

    /// Each of `fds` still here, owned.
    pub fn take_all(&mut self, fds: &[RawFd]) -> Vec<OwnedFd> {
        fds.iter().filter_map(|fd| self.take(*fd)).collect()
    }
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
        let Inherited {
            doc, rolled_back, ..
        } = self;
        let mut fds = Descriptors::own(&doc);
        // The previous image's executable is needed no longer.
        drop(doc.rollback_exe_fd.and_then(|fd| fds.take(fd)));
        let now = SystemTime::now();
        Takeover {
            doc_from: doc.from_version.clone(),
            daemon_started_at: UNIX_EPOCH
                .checked_add(Duration::from_millis(doc.daemon_started_at_ms))
                .unwrap_or(now),
            // A rollback is the old image again, not one more upgrade.
            upgrades: doc.upgrades + u32::from(rolled_back.is_none()),
            control: fds
                .take(doc.control.fd)
                .map(|fd| (doc.control.path.clone(), fd)),
            reply: doc.reply_fd.and_then(|fd| fds.take(fd)),
            metrics: doc
                .metrics
                .as_ref()
                .and_then(|m| Some((m.addr, fds.take(m.fd)?))),
            rolled_back,
            doc,
            fds,
        }
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

#[cfg(linux_calls)]
fn roll_back_to(exe: RawFd, doc: &Document, bytes: &[u8], dir: &Path, why: &str) -> String {
    use std::os::fd::AsRawFd;
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

#[cfg(not(linux_calls))]
fn roll_back_to(_: RawFd, _: &Document, _: &[u8], _: &Path, _: &str) -> String {
    "not supported on this platform".to_string()
}

/// The current environment as `execve` wants it, without the handover's own
/// variables.
pub fn environment() -> Vec<CString> {
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

/// A handover that cannot be used leaves descriptors nobody knows: close
/// them all (the listeners' ports must be free for a fresh start).
fn close_inherited() {
    for fd in 3..4096 {
        let _ = nix::unistd::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each descriptor a document names is owned once, close-on-exec again
    /// (no later child inherits it), and closed with the rest when no part
    /// takes it: a pipe's read end sees its write end go.
    #[test]
    fn each_descriptor_is_owned_once_and_what_no_part_takes_is_closed() {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::os::fd::{AsRawFd, IntoRawFd};
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).expect("pipe");
        let (control_r, control_w) = pipe();
        let (reply_r, reply_w) = pipe();
        let (control, reply) = (control_w.into_raw_fd(), reply_w.into_raw_fd());
        // Inheritable, as `execve` leaves what it passes on (/dev/null: a
        // child another test spawns meanwhile may inherit it harmlessly).
        let exe = std::fs::File::open("/dev/null")
            .expect("open")
            .into_raw_fd();
        set_cloexec(exe, false).expect("fcntl");
        let mut image = Image::current();
        image.exe_fd = Some(exe);
        let socket = SocketDoc {
            path: PathBuf::from("/run/fwdd/control.sock"),
            fd: control,
        };
        let doc = Document::parse(&image.document(socket, Some(reply), 0).to_json())
            .expect("the header alone is a document");
        let mut fds = Descriptors::own(&doc);
        let flags = fcntl(exe, FcntlArg::F_GETFD).expect("owned, open");
        assert_eq!(flags & nix::libc::FD_CLOEXEC, nix::libc::FD_CLOEXEC);
        let taken = fds.take(control).expect("owned");
        assert!(fds.take(control).is_none(), "taken twice");
        drop(fds);
        let mut byte = [0u8; 1];
        let read = |r: &OwnedFd, byte: &mut [u8]| nix::unistd::read(r.as_raw_fd(), byte);
        assert_eq!(
            read(&reply_r, &mut byte),
            Ok(0),
            "what no part took is closed"
        );
        assert_eq!(
            read(&control_r, &mut byte),
            Err(nix::errno::Errno::EAGAIN),
            "what a part took stays open"
        );
        drop(taken);
        assert_eq!(read(&control_r, &mut byte), Ok(0));
    }

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
}
