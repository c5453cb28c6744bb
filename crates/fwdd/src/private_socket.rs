//! Local sockets that grant use of the SSH connection (the control socket,
//! the engine sockets): one policy for their directory, their files and
//! their peers, shared by every server that binds one.
//!
//! * the directory ([`ensure_private_dir`]) is a real directory owned by us
//!   (or root) that nobody else can write: created 0700 if missing, tightened
//!   to 0700 if it is ours;
//! * a socket file is created 0600; an existing one is replaced only when it
//!   is a stale socket (nothing answers), never when it is live or not a
//!   socket at all;
//! * a peer is served only when its uid (`SO_PEERCRED`) is the daemon's own
//!   effective uid or root; refusals are logged at most once a minute per uid.
//!
//! Clients hold fwdd to the mirror image (`fwd_core::socket_trust`, read by
//! `fwd-client`): they believe a socket only in a directory of their own or
//! root's that nobody else may write, answered by their own uid or root. fwdd
//! makes its directory so; a client can only find out, and refuses.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::info;

/// Binds a private Unix socket at `path` (`what` names it in errors, e.g.
/// "control socket"): mode 0600, the directory checked, a stale socket
/// replaced. The guard removes the file when dropped, if it is still ours.
pub fn bind(
    path: &Path,
    what: &str,
) -> io::Result<(std::os::unix::net::UnixListener, SocketFileGuard)> {
    let euid = fwd_proto::effective_uid();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        ensure_private_dir(dir, euid)?;
    }
    remove_stale_socket(path, what)?;
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind {what} {}: {e}", path.display()),
        )
    })?;
    // The directory is private, so the short window before chmod exposes nothing.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let md = fs::symlink_metadata(path)?;
    Ok((
        listener,
        SocketFileGuard {
            path: path.to_path_buf(),
            dev: md.dev(),
            ino: md.ino(),
        },
    ))
}

/// Takes over a listening socket the previous fwdd image bound at `path`
/// (a binary upgrade): the same checks as a fresh bind would have passed
/// hold already, so only the guard is made anew.
pub fn adopt(
    path: &Path,
    fd: std::os::fd::OwnedFd,
) -> io::Result<(std::os::unix::net::UnixListener, SocketFileGuard)> {
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener.set_nonblocking(true)?;
    let md = fs::symlink_metadata(path)?;
    Ok((
        listener,
        SocketFileGuard {
            path: path.to_path_buf(),
            dev: md.dev(),
            ino: md.ino(),
        },
    ))
}

/// The group that may use the engine sockets on a shared runner
/// (`engine_socket_group`), set once at start. The runtime directory then
/// lets that group traverse it (0710, group-owned) but neither list nor
/// write it, and the engine sockets are 0660 in that group; every other
/// socket in it (control, ssh's) stays 0600 and owner-only.
static SHARED_GROUP: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Shares the engine sockets with group `gid` (call once, before any bind).
pub fn share_engine_with(gid: u32) {
    let _ = SHARED_GROUP.set(gid);
}

pub fn shared_group() -> Option<u32> {
    SHARED_GROUP.get().copied()
}

/// An engine socket, opened to the shared group (if one is configured).
pub fn open_to_group(path: &Path) -> io::Result<()> {
    let Some(gid) = shared_group() else {
        return Ok(());
    };
    nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "cannot give {} to group {gid}: {e} (fwdd's user must be a member of engine_socket_group)",
                path.display()
            ),
        )
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
}

/// Whether a peer may use an engine socket: as [`uid_allowed`], or a member
/// (primary or supplementary group) of the shared group.
pub fn engine_peer_allowed(uid: u32, gid: u32, euid: u32) -> bool {
    uid_allowed(uid, euid)
        || shared_group().is_some_and(|shared| in_group(gid, || supplementary_groups(uid), shared))
}

/// The group list (a user-database lookup on every connection) is read only
/// when the primary group does not already decide.
fn in_group(primary: u32, supplementary: impl FnOnce() -> Vec<u32>, shared: u32) -> bool {
    primary == shared || supplementary().contains(&shared)
}

#[cfg(linux_calls)]
fn supplementary_groups(uid: u32) -> Vec<u32> {
    use nix::unistd::{getgrouplist, User};
    let Ok(Some(user)) = User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    getgrouplist(&name, user.gid)
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

/// macOS (and the portable build): the peer's primary group only (its
/// group list is not read).
#[cfg(not(linux_calls))]
fn supplementary_groups(_uid: u32) -> Vec<u32> {
    Vec::new()
}

/// Removes the socket file on drop if it is still the one we bound.
#[derive(Debug)]
pub struct SocketFileGuard {
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

/// Makes sure `dir`, the runtime directory that holds the sockets, is fit to
/// hold them, creating it (mode 0700, parents too) if missing. The one policy,
/// used by `main` at startup and by [`bind`] for every socket:
///
/// * it is a real directory, not a symbolic link;
/// * it is owned by `euid` (the daemon's effective uid) or by root;
/// * nobody else can write in it: a directory of ours is tightened to 0700
///   (owner-only, whatever it was); a root-owned directory that group or others
///   may write is refused (we cannot fix it, and another user could replace
///   our sockets; a sticky bit does not stop them from squatting a name).
///
/// Errors say what is wrong and what to do about it.
pub fn ensure_private_dir(dir: &Path, euid: u32) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        // Something that is not a directory is in the way: judged below.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot create runtime directory {}: {e}; create it (mode 0700) or \
                 fix the permissions of its parent",
                    dir.display()
                ),
            ))
        }
    }
    let md = fs::symlink_metadata(dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot inspect runtime directory {}: {e}", dir.display()),
        )
    })?;
    let kind = if md.file_type().is_symlink() {
        DirKind::Symlink
    } else if md.is_dir() {
        DirKind::Directory
    } else {
        DirKind::Other
    };
    let shared = shared_group();
    match judge_dir_shared(kind, md.uid(), md.gid(), md.mode(), euid, shared) {
        DirVerdict::Fine => Ok(()),
        DirVerdict::Tighten => {
            let mode = if let Some(gid) = shared {
                nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(
                    |e| {
                        io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!(
                                "cannot give runtime directory {} to group {gid}: {e} (fwdd's user must be a member of engine_socket_group)",
                                dir.display()
                            ),
                        )
                    },
                )?;
                0o710
            } else {
                0o700
            };
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot set runtime directory {} to mode {mode:o}: {e}",
                        dir.display()
                    ),
                )
            })?;
            info!(
                dir = %dir.display(),
                was = format!("{:o}", md.mode() & 0o7777),
                "runtime directory mode set to {mode:o}"
            );
            Ok(())
        }
        DirVerdict::Refuse(why) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing runtime directory {}: {why}", dir.display()),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum DirKind {
    Directory,
    Symlink,
    Other,
}

#[derive(Debug, PartialEq)]
enum DirVerdict {
    Fine,
    /// Ours, but group or others have some access: chmod 0700.
    Tighten,
    Refuse(String),
}

/// [`judge_dir`], with the engine sockets shared with group `shared`: a
/// directory of ours must then be exactly traversable by that group (0710,
/// group-owned), nothing more.
fn judge_dir_shared(
    kind: DirKind,
    owner: u32,
    dir_gid: u32,
    mode: u32,
    euid: u32,
    shared: Option<u32>,
) -> DirVerdict {
    match shared {
        Some(gid) if kind == DirKind::Directory && owner == euid => {
            if mode & 0o077 == 0o010 && dir_gid == gid {
                DirVerdict::Fine
            } else {
                DirVerdict::Tighten
            }
        }
        _ => judge_dir(kind, owner, mode, euid),
    }
}

/// The runtime directory policy, on what `lstat` said (see [`ensure_private_dir`]).
fn judge_dir(kind: DirKind, owner: u32, mode: u32, euid: u32) -> DirVerdict {
    match kind {
        DirKind::Directory => {}
        DirKind::Symlink => {
            return DirVerdict::Refuse(
                "it is a symbolic link; give the directory itself, not a link to it".into(),
            )
        }
        DirKind::Other => {
            return DirVerdict::Refuse(
                "it exists and is not a directory; remove it or choose another path".into(),
            )
        }
    }
    if owner == euid {
        return if mode & 0o077 != 0 {
            DirVerdict::Tighten
        } else {
            DirVerdict::Fine
        };
    }
    if owner != 0 {
        return DirVerdict::Refuse(format!(
            "owned by uid {owner}, but fwdd runs as uid {euid}; \
             chown it to uid {euid} or choose a directory of your own"
        ));
    }
    if mode & 0o022 != 0 {
        return DirVerdict::Refuse(format!(
            "owned by root and writable by other users (mode {:o}), who could \
             take the sockets' names; choose a directory of your own",
            mode & 0o7777
        ));
    }
    DirVerdict::Fine
}

fn remove_stale_socket(path: &Path, what: &str) -> io::Result<()> {
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
                "another fwdd is running ({what} {} answers)",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(socket = %path.display(), "removing stale {what}");
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot probe existing {what} {}: {e}", path.display()),
        )),
    }
}

/// Rate limit for "refused peer" log lines: at most one per uid per interval.
#[derive(Default)]
pub struct RefusalLog {
    last: HashMap<Option<u32>, (Instant, u64)>,
}

impl RefusalLog {
    const INTERVAL: Duration = Duration::from_secs(60);
    const MAX_UIDS: usize = 1024;

    /// Returns `Some(suppressed_since_last_log)` if this refusal should be logged.
    pub fn note(&mut self, uid: Option<u32>, now: Instant) -> Option<u64> {
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

/// Whether a peer uid may use the socket: our own effective uid, or root —
/// the same side a client believes (`fwd_core::socket_trust`, which fwdctl
/// holds this daemon to): one definition for both ends.
pub fn uid_allowed(peer: u32, euid: u32) -> bool {
    fwd_core::socket_trust::Trusted::caller_or_root(euid).allows(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_dir_shared_with_a_group_is_traversable_by_it_and_nothing_more() {
        use DirKind::*;
        use DirVerdict::*;
        let (me, ci) = (1000, 50);
        assert_eq!(
            judge_dir_shared(Directory, me, ci, 0o40710, me, Some(ci)),
            Fine
        );
        // Owner-only, another group, or more than traversal: made 0710 in the group.
        for (gid, mode) in [
            (ci, 0o40700),
            (51, 0o40710),
            (ci, 0o40750),
            (ci, 0o40711),
            (ci, 0o40770),
        ] {
            assert_eq!(
                judge_dir_shared(Directory, me, gid, mode, me, Some(ci)),
                Tighten,
                "{gid} {mode:o}"
            );
        }
        // Without a group, 0710 is too open.
        assert_eq!(
            judge_dir_shared(Directory, me, ci, 0o40710, me, None),
            Tighten
        );
        // Someone else's directory is refused either way.
        assert!(matches!(
            judge_dir_shared(Directory, 1001, ci, 0o40710, me, Some(ci)),
            Refuse(_)
        ));
    }

    #[test]
    fn a_group_member_is_one_by_primary_or_supplementary_group() {
        assert!(in_group(
            50,
            || unreachable!("the primary group decides"),
            50
        ));
        assert!(in_group(100, || vec![100, 50], 50));
        assert!(!in_group(100, || vec![100, 27], 50));
    }

    #[test]
    fn runtime_dir_policy() {
        use DirKind::*;
        use DirVerdict::*;
        let me = 1000;
        // Ours: fine when owner-only, tightened otherwise (read bits too).
        assert_eq!(judge_dir(Directory, me, 0o40700, me), Fine);
        for mode in [0o40755, 0o40770, 0o40777, 0o41777, 0o40701] {
            assert_eq!(judge_dir(Directory, me, mode, me), Tighten, "{mode:o}");
        }
        // Root's: fine unless others may write, sticky or not.
        assert_eq!(judge_dir(Directory, 0, 0o40755, me), Fine);
        assert_eq!(judge_dir(Directory, 0, 0o40711, me), Fine);
        for mode in [0o40775, 0o40757, 0o41777] {
            let Refuse(why) = judge_dir(Directory, 0, mode, me) else {
                panic!("{mode:o} accepted");
            };
            assert!(why.contains("writable by other users"), "{why}");
            assert!(why.contains("choose a directory of your own"), "{why}");
        }
        // Root running fwdd owns a root directory: tightened like any owner's.
        assert_eq!(judge_dir(Directory, 0, 0o40755, 0), Tighten);
        // Anyone else's: refused, whatever the mode.
        let Refuse(why) = judge_dir(Directory, 1001, 0o40700, me) else {
            panic!("another user's directory accepted");
        };
        assert_eq!(
            why,
            "owned by uid 1001, but fwdd runs as uid 1000; \
             chown it to uid 1000 or choose a directory of your own"
        );
        // Not a directory.
        assert!(
            matches!(judge_dir(Symlink, me, 0o120777, me), Refuse(w) if w.contains("symbolic link"))
        );
        assert!(
            matches!(judge_dir(Other, me, 0o100600, me), Refuse(w) if w.contains("not a directory"))
        );
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
}
