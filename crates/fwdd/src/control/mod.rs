//! The control socket: a Unix stream socket in the runtime directory that answers
//! newline-delimited JSON requests from `fwdctl` (protocol in the `fwd-proto` crate,
//! schema in `docs/control-api.md`).
//!
//! Safety properties:
//! * the socket is mode 0600 in a directory that nobody else can write
//!   ([`private_socket::ensure_private_dir`]), and every peer's uid is checked with `SO_PEERCRED`
//!   (`peer_cred`): only the daemon's own effective uid and root are served;
//! * a request line is bounded ([`ControlConfig::max_line`]); an over-long line gets an
//!   error response and the connection is closed;
//! * each read of a request and each write of a response must finish within
//!   [`ControlConfig::idle_timeout`], otherwise the connection is closed;
//! * at most [`ControlConfig::max_connections`] connections are served at once; further
//!   ones get an error response and are closed at once.
//!
//! * a `watch` connection gets the difference between the last snapshot it was sent and
//!   the current one whenever the daemon's state changes, so a slow reader sees changes
//!   coalesced (memory stays bounded: one snapshot and one batch of lines); a watcher
//!   that leaves a write blocked for `idle_timeout` is disconnected.
//!
//! Runtime: everything runs on the calling thread with [`tokio::task::spawn_local`], so
//! [`ControlServer::run`] must be polled inside a [`tokio::task::LocalSet`]
//! (they panic otherwise). The handler need not be `Send`.
//!
//! The server is split by job:
//! * this file: binding ([`ControlServer::bind`]) and the accept loop;
//! * [`shared`]: the limits, and what every connection of a server shares;
//! * [`admission`]: who is served (peer uid, connection limit);
//! * [`framing`]: bounded request lines and the per-read/per-write timeouts;
//! * [`dispatch`]: one connection's request loop, answering through the
//!   [`ControlHandler`];
//! * [`watch`]: the `watch` stream of snapshot differences.

mod admission;
mod dispatch;
mod framing;
#[cfg(test)]
mod fuzz;
mod shared;
#[cfg(test)]
mod test_support;
mod watch;

pub use shared::ControlConfig;
use shared::Shared;

use crate::handler::ControlHandler;
use crate::private_socket::{self, RefusalLog, SocketFileGuard};
use std::cell::{Cell, RefCell};
use std::io;
use std::path::Path;
use std::rc::Rc;
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

/// A bound control socket, ready to [`run`](ControlServer::run).
///
/// Binding is separate from serving so the daemon can fail fast at startup (e.g. when
/// another fwdd already answers on the socket). Dropping the server (or `run` returning)
/// removes the socket file if it is still the one this server created.
#[derive(Debug)]
pub struct ControlServer {
    listener: std::os::unix::net::UnixListener,
    config: ControlConfig,
    guard: SocketFileGuard,
    pause: Option<tokio::sync::watch::Receiver<bool>>,
}

impl ControlServer {
    /// Binds the socket at `path`; needs no runtime.
    ///
    /// * Applies [`private_socket::ensure_private_dir`] to the parent directory: created
    ///   0700 if missing, tightened to 0700 if ours, refused if it is a symlink, another
    ///   user's, or root's and writable by others.
    /// * If `path` exists: a live socket (something accepts a connection) is an error
    ///   `"another fwdd is running (control socket PATH answers)"` (kind `AddrInUse`); a
    ///   stale socket is removed; anything that is not a socket is left alone and is an
    ///   error.
    /// * The new socket gets mode 0600.
    pub fn bind(path: &Path, config: ControlConfig) -> io::Result<ControlServer> {
        let (listener, guard) = private_socket::bind(path, "control socket")?;
        info!(socket = %path.display(), "control socket listening");
        Ok(ControlServer {
            listener,
            config,
            guard,
            pause: None,
        })
    }

    /// Takes over the control socket the previous fwdd image served (a
    /// binary upgrade).
    pub fn adopt(
        path: &Path,
        fd: std::os::fd::OwnedFd,
        config: ControlConfig,
    ) -> io::Result<ControlServer> {
        let (listener, guard) = private_socket::adopt(path, fd)?;
        Ok(ControlServer {
            listener,
            config,
            guard,
            pause: None,
        })
    }

    /// No connection is accepted while `pause` is `true` (the kernel's
    /// backlog keeps them): a binary upgrade is collecting what to hand over.
    pub fn pause_on(mut self, pause: tokio::sync::watch::Receiver<bool>) -> Self {
        self.pause = Some(pause);
        self
    }

    /// Keeps a copy in systemd's fd store (a no-op elsewhere), so a crash
    /// restart finds the socket still bound.
    pub fn store_with_systemd(&self, name: &str) {
        crate::fdstore::store_fd(name, std::os::fd::AsFd::as_fd(&self.listener));
    }

    /// The listener's descriptor, for a binary upgrade.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.listener.as_raw_fd()
    }

    /// Serves connections until `shutdown` becomes `true` or its sender is dropped, then
    /// closes open connections, removes the socket file and returns. Requests are answered
    /// through `handler`. Must run inside a [`tokio::task::LocalSet`].
    pub async fn run(
        self,
        handler: impl ControlHandler + 'static,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> io::Result<()> {
        let ControlServer {
            listener,
            config,
            guard,
            pause,
        } = self;
        // A sender that lives as long as the loop: a dropped one would make
        // `changed()` ready forever.
        let (_never_paused, unpaused) = tokio::sync::watch::channel(false);
        let mut pause = pause.unwrap_or(unpaused);
        let listener = UnixListener::from_std(listener)?;
        let shared = Rc::new(Shared {
            handler: Box::new(handler),
            config,
            euid: fwd_proto::effective_uid(),
            active: Cell::new(0),
            refusals: RefCell::new(RefusalLog::default()),
        });
        let mut backoff = fwd_core::AcceptBackoff::default();
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let paused = *pause.borrow_and_update();
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break; // sender gone: the daemon is going away
                    }
                }
                _ = pause.changed() => {}
                accepted = listener.accept(), if !paused => match accepted {
                    Ok((stream, _)) => {
                        if let Some(failures) = backoff.succeeded(std::time::Instant::now()) {
                            info!(event = "accept_recovered", failures, "the control socket accepts again after {failures} failures");
                        }
                        admission::admit(&shared, stream, &shutdown)
                    }
                    Err(e) => {
                        // E.g. EMFILE: back off instead of spinning, and
                        // say it once per episode.
                        let failed = backoff.failed(&e.to_string(), std::time::Instant::now());
                        match failed.log {
                            Some(fwd_core::Verdict::Summary { repeats }) => warn!(event = "accept_failed", error = %e, repeats, "the control socket still cannot accept: {e} ({repeats} more since the last line)"),
                            Some(_) => warn!(event = "accept_failed", error = %e, "the control socket cannot accept a connection: {e}; trying again with backoff"),
                            None => {}
                        }
                        tokio::time::sleep(failed.wait).await;
                    }
                },
            }
        }
        drop(listener);
        drop(guard);
        debug!("control socket closed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::control::test_support::*;
    use crate::control::{ControlConfig, ControlServer};
    use fwd_proto::{encode_request, Request, Response};
    use std::fs;
    use std::io;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;
    use tokio::sync::watch;
    use tokio::task::LocalSet;

    #[tokio::test]
    async fn socket_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sub/control.sock");
        let server = ControlServer::bind(&sock, ControlConfig::default()).unwrap();
        let mode = fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(dir.path().join("sub"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        drop(server);
        assert!(!sock.exists());
    }

    #[tokio::test]
    async fn live_socket_refused_stale_socket_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        LocalSet::new()
            .run_until(with_server(&sock, ControlConfig::default(), || async {
                let err = ControlServer::bind(&sock, ControlConfig::default()).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
                assert_eq!(
                    err.to_string(),
                    format!(
                        "another fwdd is running (control socket {} answers)",
                        sock.display()
                    )
                );
                // The live server still works.
                let r = request(&sock, &encode_request(&Request::Status)).await;
                assert_eq!(r, Some(Response::Status(fixture())));
            }))
            .await;

        // A stale socket file (nobody listening) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let server = ControlServer::bind(&sock, ControlConfig::default()).unwrap();
        drop(server);

        // A regular file is never removed.
        fs::write(&sock, b"precious").unwrap();
        let err = ControlServer::bind(&sock, ControlConfig::default()).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(fs::read(&sock).unwrap(), b"precious");
    }

    /// The runtime directory policy as the binder applies it (the policy itself is
    /// tested in `private_socket`).
    #[test]
    fn runtime_dir_is_tightened_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        // Ours and open to everyone (sticky or not): made owner-only, then used.
        for open in [0o777, 0o1777, 0o755] {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(open)).unwrap();
            drop(ControlServer::bind(&sock, ControlConfig::default()).unwrap());
            let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o700, "from {open:o}");
        }
        // A symlink to a good directory: refused, the target left alone.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let err =
            ControlServer::bind(&link.join("control.sock"), ControlConfig::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // Another user's directory (needs root to make one): refused, not tightened.
        if fwd_proto::effective_uid() == 0 {
            let theirs = dir.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = ControlServer::bind(&theirs.join("control.sock"), ControlConfig::default())
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
            let mode = fs::metadata(&theirs).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
        }
    }

    #[test]
    fn shutdown_before_start_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = watch::channel(true);
        LocalSet::new().block_on(&rt, async {
            let server = ControlServer::bind(&sock, ControlConfig::default()).unwrap();
            tokio::time::timeout(Duration::from_secs(2), server.run(Fake::new(), rx))
                .await
                .unwrap()
                .unwrap();
        });
        drop(tx);
        assert!(!sock.exists());
    }
}
