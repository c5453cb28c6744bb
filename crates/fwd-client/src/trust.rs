//! The facts [`fwd_core::socket_trust`] judges, read where they are: the
//! file system (`lstat`) and the connected socket (the peer's uid).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use fwd_core::socket_trust::{self, Doubt, Kind, Role, SocketFacts, Stat, Trusted};

/// What could not be read: the directory, or the socket file.
pub(crate) enum Unknown {
    Dir(io::Error),
    File(io::Error),
}

fn stat(md: &fs::Metadata) -> Stat {
    let t = md.file_type();
    let kind = if t.is_symlink() {
        Kind::Symlink
    } else if t.is_dir() {
        Kind::Directory
    } else if t.is_socket() {
        Kind::Socket
    } else {
        Kind::Other
    };
    Stat {
        kind,
        uid: md.uid(),
        mode: md.mode(),
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `lstat` of the socket's directory and of the socket (none if missing),
/// and for a root caller the directory's parent (`DIR/..`: the directory's
/// own parent, whatever links led to it).
pub(crate) fn facts(path: &Path) -> Result<SocketFacts, Unknown> {
    let dir = dir_of(path);
    let dir_md = fs::symlink_metadata(dir).map_err(Unknown::Dir)?;
    let parent = if fwd_proto::effective_uid() == 0 && dir_md.is_dir() {
        fs::metadata(dir.join("..")).ok().map(|md| stat(&md))
    } else {
        None
    };
    let file = match fs::symlink_metadata(path) {
        Ok(md) => Some(stat(&md)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Unknown::File(e)),
    };
    Ok(SocketFacts {
        dir: stat(&dir_md),
        parent,
        file,
    })
}

/// The path's verdict for this process; a refusal in words for a person.
pub(crate) fn judge(role: Role, path: &Path, facts: &SocketFacts) -> Result<Trusted, String> {
    socket_trust::judge_path(facts, fwd_proto::effective_uid())
        .map_err(|doubt| refusal(role, path, doubt))
}

/// The refusal, in words that name the users involved.
pub(crate) fn refusal(role: Role, path: &Path, doubt: Doubt) -> String {
    socket_trust::explain(role, path, doubt, fwd_proto::effective_uid(), &user_name)
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The uid of the process that accepted the connection: `SO_PEERCRED` on
/// Linux (the portable build too: it is the only way there, as in tokio's
/// `peer_cred`, which fwdd's side uses).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    getsockopt(stream, PeerCredentials)
        .map(|c| c.uid())
        .map_err(io::Error::from)
}

/// macOS and the BSDs: `getpeereid`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    nix::unistd::getpeereid(stream)
        .map(|(uid, _)| uid.as_raw())
        .map_err(io::Error::from)
}
