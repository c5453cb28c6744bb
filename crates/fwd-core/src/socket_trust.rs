//! Whether a client may believe a local socket of fwdd's: the control socket
//! fwdctl (and every user of `fwd-client`) asks, and every socket path fwdctl
//! prints (`fwdctl env`'s `DOCKER_HOST`). The client's half of the rule fwdd
//! keeps when it binds (`fwdd::private_socket`): a socket of fwdd's lives in
//! a directory only its user (or root) can write, and answers only its user
//! or root. fwdd *makes* its directory so (creates it 0700, tightens it);
//! a client can only *find out*, and refuses what it would not trust.
//!
//! The facts come from `lstat` (the directory, the socket file) and, after
//! connecting, the peer's uid (`SO_PEERCRED`, `getpeereid`); the decision is
//! here, pure:
//!
//! * the socket's directory is a real directory (not a symbolic link), owned
//!   by the caller or root, and neither group nor others may write in it —
//!   otherwise another user could have put a socket of theirs there (e.g.
//!   `/tmp/fwdd-<uid>`, the default without `XDG_RUNTIME_DIR`, made first by
//!   somebody else);
//! * the socket file, if there is one, is a socket owned by the caller or root;
//! * the process answering on it runs as the caller or root.
//!
//! **A root caller** trusts root, and one other user: the owner of a
//! directory that root made for it — a directory whose parent is root's and
//! writable by nobody else, such as systemd's `RuntimeDirectory=` for a
//! service's `User=` (`/run/fwdd` of `fwd`, the shipped system unit, which
//! `sudo fwdctl status` and the package's upgrade script ask). Root does not
//! trust a directory another user could have made (one in `/tmp`, or in a
//! user's own directory): its `docker login` and build contexts would go to
//! that user. To ask another user's fwdd, run fwdctl as that user.

use std::path::Path;

/// The kind of a file, as `lstat` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    Socket,
    Symlink,
    Other,
}

/// What `lstat` (or `stat`, for a directory's parent) says about one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// The owner's uid.
    pub uid: u32,
    /// `st_mode`: the permission bits are read.
    pub mode: u32,
}

/// What the client found at a socket's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketFacts {
    /// The directory holding the socket (`lstat`).
    pub dir: Stat,
    /// The directory's parent (`stat`: links followed); only a root caller's
    /// verdict reads it, and `None` (not read) trusts nobody more.
    pub parent: Option<Stat>,
    /// The socket file (`lstat`), `None` if there is none (yet).
    pub file: Option<Stat>,
}

/// Who may answer on a socket whose path was judged trustworthy: the
/// caller, root, and for a root caller the service user whose directory
/// root made (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trusted {
    caller: u32,
    service: Option<u32>,
}

impl Trusted {
    /// The caller and root, nobody else: what a socket is trusted with
    /// before anything about its directory is known.
    pub fn caller_or_root(caller: u32) -> Trusted {
        Trusted {
            caller,
            service: None,
        }
    }

    /// Whether `uid` is on the caller's side.
    pub fn allows(&self, uid: u32) -> bool {
        uid == self.caller || uid == 0 || self.service == Some(uid)
    }
}

/// Why a socket is not trusted, with the facts a message needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doubt {
    /// The directory is a symbolic link (owned by `owner`), which whoever
    /// owns it may point anywhere; fwdd never serves from one either.
    DirSymlink { owner: u32 },
    /// What should be the directory is something else.
    DirNotDirectory { owner: u32 },
    /// The directory belongs to another user.
    DirOwner { owner: u32 },
    /// The directory is the caller's or root's, but group or others may write in it.
    DirWritable { owner: u32, mode: u32 },
    /// The file at the socket's path is a symbolic link (owned by `owner`).
    SocketSymlink { owner: u32 },
    /// The file at the socket's path is not a socket.
    NotSocket { owner: u32 },
    /// The socket file belongs to another user.
    SocketOwner { owner: u32 },
    /// The process answering on the socket runs as another user.
    Peer { uid: u32 },
}

/// Group or others may write.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// The path's verdict (see the module's documentation): who may answer on
/// the socket, or why nobody may be believed there.
pub fn judge_path(facts: &SocketFacts, caller: u32) -> Result<Trusted, Doubt> {
    let dir = facts.dir;
    match dir.kind {
        Kind::Directory => {}
        Kind::Symlink => return Err(Doubt::DirSymlink { owner: dir.uid }),
        Kind::Socket | Kind::Other => return Err(Doubt::DirNotDirectory { owner: dir.uid }),
    }
    let mut trusted = Trusted::caller_or_root(caller);
    if !trusted.allows(dir.uid) {
        let made_by_root = caller == 0
            && facts.parent.is_some_and(|p| {
                p.kind == Kind::Directory && p.uid == 0 && p.mode & WRITABLE_BY_OTHERS == 0
            });
        if !made_by_root {
            return Err(Doubt::DirOwner { owner: dir.uid });
        }
        trusted.service = Some(dir.uid);
    }
    if dir.mode & WRITABLE_BY_OTHERS != 0 {
        return Err(Doubt::DirWritable {
            owner: dir.uid,
            mode: dir.mode & 0o7777,
        });
    }
    if let Some(file) = facts.file {
        match file.kind {
            Kind::Socket => {}
            Kind::Symlink => return Err(Doubt::SocketSymlink { owner: file.uid }),
            Kind::Directory | Kind::Other => return Err(Doubt::NotSocket { owner: file.uid }),
        }
        if !trusted.allows(file.uid) {
            return Err(Doubt::SocketOwner { owner: file.uid });
        }
    }
    Ok(trusted)
}

/// The peer's verdict: the process answering runs as someone trusted.
pub fn judge_peer(peer_uid: u32, trusted: Trusted) -> Result<(), Doubt> {
    if trusted.allows(peer_uid) {
        Ok(())
    } else {
        Err(Doubt::Peer { uid: peer_uid })
    }
}

/// Which socket a message is about, for the fix it suggests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The control socket fwdctl was about to ask: found by default, or
    /// given with `--socket`, `--runtime-dir` or `FWD_SOCKET`.
    Control,
    /// A socket fwdd named (the engine socket `fwdctl env` would print).
    Engine,
}

/// The refusal in words for the person who ran fwdctl: which socket, what is
/// wrong, whose it is, and what to do. `name` looks a uid up in the user
/// database (`None`: no such user).
pub fn explain(
    role: Role,
    socket: &Path,
    doubt: Doubt,
    caller: u32,
    name: &dyn Fn(u32) -> Option<String>,
) -> String {
    let who = |uid: u32| match name(uid) {
        Some(n) => format!("user {n} (uid {uid})"),
        None => format!("uid {uid} (no such user)"),
    };
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (what, fix) = role.what_and_fix();
    let you = you_or_root(caller, name);
    let as_them = |uid: u32| as_that_user(uid, caller, name);
    let (d, s) = (dir.display(), socket.display());
    match doubt {
        Doubt::DirSymlink { owner } => format!(
            "refusing {what} {s}: its directory {d} is a symbolic link (owned by {}), which \
             may point anywhere; use the directory itself",
            who(owner)
        ),
        Doubt::DirNotDirectory { owner } => format!(
            "refusing {what} {s}: {d} is not a directory (it belongs to {}); {fix}",
            who(owner)
        ),
        Doubt::DirOwner { owner } => format!(
            "refusing {what} {s}: its directory {d} belongs to {}, not to {you}, so whatever \
             answers there may be that user's and not your fwdd. {}; if it is not, ask that \
             user or root to remove {d}; or {fix}",
            who(owner),
            as_them(owner)
        ),
        Doubt::DirWritable { owner, mode } => {
            let remedy = if owner == caller {
                format!("make it yours alone: chmod 700 {d} (fwdd does so itself when it starts)")
            } else {
                fix.to_string()
            };
            format!(
                "refusing {what} {s}: its directory {d} (owned by {}) may be written by \
                 group or others (mode {mode:o}), so another user could have put a socket of \
                 theirs there; {remedy}",
                who(owner)
            )
        }
        Doubt::SocketSymlink { owner } => format!(
            "refusing {what} {s}: it is a symbolic link (owned by {}), which may point \
             anywhere; use the socket's own path",
            who(owner)
        ),
        Doubt::NotSocket { owner } => format!(
            "refusing {what} {s}: it is not a socket (it belongs to {}); {fix}",
            who(owner)
        ),
        Doubt::SocketOwner { owner } => format!(
            "refusing {what} {s}: the socket belongs to {}, not to {you}, so what answers \
             there may be that user's and not your fwdd. {}; if it is not, {fix}",
            who(owner),
            as_them(owner)
        ),
        Doubt::Peer { uid } => format!(
            "refusing {what} {s}: the process answering on it runs as {}, not as {you}, so \
             it is not your fwdd. {}; if it is not, {fix}",
            who(uid),
            as_them(uid)
        ),
    }
}

impl Role {
    /// The socket in words, and what the caller does about a socket that is
    /// not theirs to trust.
    fn what_and_fix(self) -> (&'static str, &'static str) {
        match self {
            Role::Control => (
                "the control socket",
                "set XDG_RUNTIME_DIR to a directory of your own (fwdd and fwdctl then both use \
                 $XDG_RUNTIME_DIR/fwdd), or point --socket (or FWD_SOCKET) at your fwdd's \
                 control socket",
            ),
            Role::Engine => (
                "fwdd's engine socket",
                "give fwdd a runtime directory of your own (--runtime-dir, or XDG_RUNTIME_DIR) \
                 and restart it",
            ),
        }
    }
}

/// Whom fwdctl trusts, in words: the caller and root, or root alone.
fn you_or_root(caller: u32, name: &dyn Fn(u32) -> Option<String>) -> String {
    if caller == 0 {
        "root".to_string()
    } else {
        match name(caller) {
            Some(n) => format!("you ({n}, uid {caller}) or root"),
            None => format!("you (uid {caller}) or root"),
        }
    }
}

/// Another user's fwdd is asked as that user; root is told why its own rule
/// did not cover it.
fn as_that_user(uid: u32, caller: u32, name: &dyn Fn(u32) -> Option<String>) -> String {
    let name = name(uid).unwrap_or_else(|| format!("'#{uid}'"));
    let mut m =
        format!("If it is that user's fwdd, run fwdctl as that user (sudo -u {name} fwdctl …)");
    if caller == 0 {
        m.push_str(
            ": as root, fwdctl trusts another user only in a directory root made for them \
             (its parent root's and writable by nobody else, like systemd's /run/fwdd)",
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;
    const OTHER: u32 = 1001;
    const FWD: u32 = 998;

    fn dir(uid: u32, mode: u32) -> Stat {
        Stat {
            kind: Kind::Directory,
            uid,
            mode: 0o40000 | mode,
        }
    }

    fn sock(uid: u32) -> Option<Stat> {
        Some(Stat {
            kind: Kind::Socket,
            uid,
            mode: 0o140600,
        })
    }

    fn facts(dir: Stat, file: Option<Stat>) -> SocketFacts {
        SocketFacts {
            dir,
            parent: None,
            file,
        }
    }

    #[test]
    fn the_callers_own_private_directory_and_socket_are_trusted_with_the_caller_and_root() {
        for mode in [0o700, 0o755, 0o711, 0o710, 0o1700] {
            let t = judge_path(&facts(dir(ME, mode), sock(ME)), ME).expect("trusted");
            assert!(t.allows(ME) && t.allows(0) && !t.allows(OTHER), "{mode:o}");
        }
        // No socket (yet): only the caller or root could make one there.
        assert!(judge_path(&facts(dir(ME, 0o700), None), ME).is_ok());
        // Root's directory and socket: a daemon run by root.
        assert!(judge_path(&facts(dir(0, 0o755), sock(0)), ME).is_ok());
        // A socket of root's in the caller's directory.
        assert!(judge_path(&facts(dir(ME, 0o700), sock(0)), ME).is_ok());
    }

    #[test]
    fn another_users_directory_is_refused_naming_its_owner() {
        // The impostor of /tmp/fwdd-<uid>: open to all, a socket of its own.
        for mode in [0o755, 0o711, 0o700, 0o777] {
            assert_eq!(
                judge_path(&facts(dir(OTHER, mode), sock(OTHER)), ME),
                Err(Doubt::DirOwner { owner: OTHER }),
                "{mode:o}"
            );
        }
        // Even with a socket that claims to be ours.
        assert_eq!(
            judge_path(&facts(dir(OTHER, 0o755), sock(ME)), ME),
            Err(Doubt::DirOwner { owner: OTHER })
        );
    }

    #[test]
    fn a_directory_others_may_write_is_refused_sticky_or_not() {
        for (owner, mode) in [
            (ME, 0o770),
            (ME, 0o757),
            (ME, 0o775),
            (0, 0o1777),
            (0, 0o775),
        ] {
            assert_eq!(
                judge_path(&facts(dir(owner, mode), sock(ME)), ME),
                Err(Doubt::DirWritable { owner, mode }),
                "{owner} {mode:o}"
            );
        }
    }

    #[test]
    fn links_and_other_files_are_refused() {
        let link = Stat {
            kind: Kind::Symlink,
            uid: ME,
            mode: 0o120777,
        };
        assert_eq!(
            judge_path(&facts(link, None), ME),
            Err(Doubt::DirSymlink { owner: ME })
        );
        let file = Stat {
            kind: Kind::Other,
            uid: ME,
            mode: 0o100600,
        };
        assert_eq!(
            judge_path(&facts(file, None), ME),
            Err(Doubt::DirNotDirectory { owner: ME })
        );
        assert_eq!(
            judge_path(&facts(dir(ME, 0o700), Some(file)), ME),
            Err(Doubt::NotSocket { owner: ME })
        );
        assert_eq!(
            judge_path(&facts(dir(ME, 0o700), Some(link)), ME),
            Err(Doubt::SocketSymlink { owner: ME })
        );
    }

    #[test]
    fn a_socket_of_another_user_is_refused_even_in_a_trusted_directory() {
        assert_eq!(
            judge_path(&facts(dir(0, 0o755), sock(OTHER)), ME),
            Err(Doubt::SocketOwner { owner: OTHER })
        );
    }

    #[test]
    fn the_peer_must_be_the_caller_or_root() {
        let t = judge_path(&facts(dir(ME, 0o700), sock(ME)), ME).unwrap();
        assert_eq!(judge_peer(ME, t), Ok(()));
        assert_eq!(judge_peer(0, t), Ok(()));
        assert_eq!(judge_peer(OTHER, t), Err(Doubt::Peer { uid: OTHER }));
        // Before anything is known about the path: the same two.
        let t = Trusted::caller_or_root(ME);
        assert_eq!(judge_peer(OTHER, t), Err(Doubt::Peer { uid: OTHER }));
        assert_eq!(judge_peer(0, t), Ok(()));
    }

    #[test]
    fn root_trusts_a_service_users_directory_only_where_root_made_it() {
        // systemd's /run/fwdd for User=fwd: /run is root's, 0755.
        let run = SocketFacts {
            dir: dir(FWD, 0o700),
            parent: Some(dir(0, 0o755)),
            file: sock(FWD),
        };
        let t = judge_path(&run, 0).expect("the system service is trusted by root");
        assert_eq!(judge_peer(FWD, t), Ok(()));
        assert_eq!(judge_peer(0, t), Ok(()));
        assert_eq!(judge_peer(OTHER, t), Err(Doubt::Peer { uid: OTHER }));
        // ... but not by another user (fwdd's socket is theirs alone anyway).
        assert_eq!(judge_path(&run, ME), Err(Doubt::DirOwner { owner: FWD }));
        // A directory in /tmp (root's but writable by all), one in a user's
        // own directory, or one whose parent is unknown: made by that user.
        for parent in [Some(dir(0, 0o1777)), Some(dir(OTHER, 0o755)), None] {
            let tmp = SocketFacts {
                dir: dir(OTHER, 0o755),
                parent,
                file: sock(OTHER),
            };
            assert_eq!(
                judge_path(&tmp, 0),
                Err(Doubt::DirOwner { owner: OTHER }),
                "{parent:?}"
            );
        }
        // A directory root made for the service, but open for writing.
        let open = SocketFacts {
            dir: dir(FWD, 0o777),
            parent: Some(dir(0, 0o755)),
            file: None,
        };
        assert!(matches!(
            judge_path(&open, 0),
            Err(Doubt::DirWritable { owner: FWD, .. })
        ));
        // Root's own directory.
        assert!(judge_path(&facts(dir(0, 0o700), sock(0)), 0).is_ok());
    }

    fn names(uid: u32) -> Option<String> {
        match uid {
            ME => Some("alice".into()),
            OTHER => Some("mallory".into()),
            _ => None,
        }
    }

    #[test]
    fn the_refusal_names_the_owner_what_is_wrong_and_the_fix() {
        let path = Path::new("/tmp/fwdd-1000/control.sock");
        let m = explain(
            Role::Control,
            path,
            Doubt::DirOwner { owner: OTHER },
            ME,
            &names,
        );
        assert_eq!(
            m,
            "refusing the control socket /tmp/fwdd-1000/control.sock: its directory \
             /tmp/fwdd-1000 belongs to user mallory (uid 1001), not to you (alice, uid 1000) \
             or root, so whatever answers there may be that user's and not your fwdd. If it \
             is that user's fwdd, run fwdctl as that user (sudo -u mallory fwdctl …); if it \
             is not, ask that user or root to remove /tmp/fwdd-1000; or set XDG_RUNTIME_DIR \
             to a directory of your own (fwdd and fwdctl then both use \
             $XDG_RUNTIME_DIR/fwdd), or point --socket (or FWD_SOCKET) at your fwdd's \
             control socket"
        );
        let m = explain(Role::Control, path, Doubt::Peer { uid: 4242 }, ME, &names);
        assert!(m.contains("runs as uid 4242 (no such user)"), "{m}");
        let m = explain(
            Role::Engine,
            Path::new("/tmp/x/docker.sock"),
            Doubt::DirWritable {
                owner: 0,
                mode: 0o1777,
            },
            ME,
            &names,
        );
        assert!(
            m.starts_with("refusing fwdd's engine socket /tmp/x/docker.sock"),
            "{m}"
        );
        assert!(
            m.contains("(mode 1777)") && m.contains("--runtime-dir"),
            "{m}"
        );
        let m = explain(
            Role::Control,
            Path::new("/home/alice/rt/control.sock"),
            Doubt::DirWritable {
                owner: ME,
                mode: 0o775,
            },
            ME,
            &names,
        );
        assert!(
            m.ends_with("chmod 700 /home/alice/rt (fwdd does so itself when it starts)"),
            "{m}"
        );
        // Root is told how to ask another user's fwdd.
        let m = explain(
            Role::Control,
            path,
            Doubt::DirOwner { owner: OTHER },
            0,
            &names,
        );
        assert!(m.contains("not to root,"), "{m}");
        assert!(
            m.contains("sudo -u mallory fwdctl …): as root, fwdctl trusts another user only"),
            "{m}"
        );
        // The peer's owner is named, with the way to ask that user's fwdd.
        let m = explain(Role::Control, path, Doubt::Peer { uid: OTHER }, ME, &names);
        assert!(
            m.contains("runs as user mallory (uid 1001), not as you (alice, uid 1000) or root"),
            "{m}"
        );
        assert!(
            m.contains("run fwdctl as that user (sudo -u mallory fwdctl …)"),
            "{m}"
        );
    }
}
