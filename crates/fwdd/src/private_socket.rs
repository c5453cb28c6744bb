//! Local sockets that grant use of the SSH connection (the control socket,
//! the engine sockets): one policy for their directory, their files and
//! their peers, shared by every server that binds one.
//!
//! * the directory is not writable by other users (created 0700 if missing);
//! * a socket file is created 0600; an existing one is replaced only when it
//!   is a stale socket (nothing answers), never when it is live or not a
//!   socket at all;
//! * a peer is served only when its uid (`SO_PEERCRED`) is the daemon's own
//!   effective uid or root; refusals are logged at most once a minute per uid.

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

pub fn ensure_private_dir(dir: &Path, euid: u32) -> io::Result<()> {
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

/// Whether a peer uid may use the socket: our own effective uid, or root.
pub fn uid_allowed(peer: u32, euid: u32) -> bool {
    peer == euid || peer == 0
}

#[cfg(test)]
mod tests {
    use super::*;

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
