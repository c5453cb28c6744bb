//! The remote Docker engine on a local socket: `docker.sock` (the first
//! host) and `docker-<host>.sock` in the runtime directory, owned by fwdd
//! like the port listeners.
//!
//! Every connection is carried to the remote engine over the host's one
//! master, so the runner's own `docker`, compose and Testcontainers share
//! fwd's connection instead of opening one per command (`DOCKER_HOST=ssh://`
//! does). How depends on the link's [`EngineRoute`]:
//! - `StreamLocal`: to the master's forward of the engine socket (a
//!   channel, no remote process, not counted against sshd's MaxSessions),
//!   bytes relayed by fwdd;
//! - `DialStdio`: one `docker system dial-stdio` session per connection,
//!   at most [`DIAL_STDIO_LIMIT`] at once so MaxSessions (10 by default) is
//!   never reached by us.
//!
//! The socket is root on the remote host: it is created 0600 in the 0700
//! runtime directory and every peer's uid is checked. It stays bound while
//! the master is replaced; a command issued meanwhile waits (up to
//! `connect_wait`) and then runs.

use std::cell::Cell;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use fwd_core::{EngineRoute, HostKey};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::handover::document::{HostDoc, QueuedDoc, SocketDoc};
use crate::handover::{Descriptors, Document};
use crate::private_socket::{self, RefusalLog, SocketFileGuard};
use crate::serve::relay::{
    accept_thawed, unix_stream, AdoptedRelay, Directions, RelayEnd, RelayEntry, RelayState, Relays,
};
use crate::serve::starts::StartHold;
use crate::serve::{Link, ServeContext};

/// Concurrent dial-stdio sessions per host, below sshd's MaxSessions
/// default of 10 (fwd's own API and event channels may need two more).
pub const DIAL_STDIO_LIMIT: usize = 6;

/// The socket file names of a host: `docker-<name>.sock`, and
/// `docker.sock` too for the default (first) host.
pub fn socket_names(host: &str, default_host: bool) -> Vec<String> {
    let mut names = Vec::new();
    if default_host {
        names.push("docker.sock".to_string());
    }
    names.push(format!("docker-{host}.sock"));
    names
}

#[derive(Debug, Default)]
pub struct EngineStats {
    pub open: Cell<u64>,
    pub total: Cell<u64>,
    /// Bytes from local clients to the engine, and back.
    pub bytes_up: Cell<u64>,
    pub bytes_down: Cell<u64>,
    /// Clients closed at `max_engine_clients`, and the episode.
    pub refusals: std::cell::RefCell<fwd_core::Refusals>,
}

/// A host's engine sockets; dropping it closes them and removes the files.
pub struct EngineSocket {
    pub paths: Vec<PathBuf>,
    pub stats: Rc<EngineStats>,
    /// Each socket's listener descriptor (owned by its accept task).
    pub listener_fds: Vec<(PathBuf, RawFd)>,
    relays: Rc<Relays>,
    shared: Rc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    _guards: Vec<SocketFileGuard>,
}

impl Drop for EngineSocket {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for path in &self.paths {
            crate::fdstore::remove_fd(&crate::fdstore::unix_fd_name(path));
        }
    }
}

struct Shared {
    host: HostKey,
    ctx: Rc<ServeContext>,
    stats: Rc<EngineStats>,
    sessions: Semaphore,
    refusals: std::cell::RefCell<RefusalLog>,
    euid: u32,
    relays: Rc<Relays>,
}

impl EngineSocket {
    /// Binds every path (an existing live socket is an error, a stale one
    /// is replaced) and serves them for `host`.
    pub fn bind(
        host: HostKey,
        paths: Vec<PathBuf>,
        ctx: Rc<ServeContext>,
    ) -> std::io::Result<EngineSocket> {
        let mut bound = Vec::new();
        for path in &paths {
            let name = crate::fdstore::unix_fd_name(path);
            let (listener, guard) = match ctx.stored.take(&name) {
                // After a crash: the socket the previous process served.
                Some(fd) if path.exists() => private_socket::adopt(path, fd)?,
                _ => {
                    let bound = private_socket::bind(path, "engine socket")?;
                    private_socket::open_to_group(path)?;
                    crate::fdstore::store_fd(&name, std::os::fd::AsFd::as_fd(&bound.0));
                    bound
                }
            };
            bound.push((path.clone(), listener, guard));
        }
        Self::serve(host, bound, ctx)
    }

    /// Takes over the sockets the previous fwdd image served.
    pub fn adopt(
        host: HostKey,
        inherited: Vec<(PathBuf, OwnedFd)>,
        ctx: Rc<ServeContext>,
    ) -> std::io::Result<EngineSocket> {
        let mut bound = Vec::new();
        for (path, fd) in inherited {
            let (listener, guard) = private_socket::adopt(&path, fd)?;
            bound.push((path, listener, guard));
        }
        Self::serve(host, bound, ctx)
    }

    fn serve(
        host: HostKey,
        bound: Vec<(PathBuf, std::os::unix::net::UnixListener, SocketFileGuard)>,
        ctx: Rc<ServeContext>,
    ) -> std::io::Result<EngineSocket> {
        let stats = Rc::new(EngineStats::default());
        let relays = Rc::new(Relays::default());
        let shared = Rc::new(Shared {
            host,
            ctx,
            stats: stats.clone(),
            sessions: Semaphore::new(DIAL_STDIO_LIMIT),
            refusals: Default::default(),
            euid: fwd_proto::effective_uid(),
            relays: relays.clone(),
        });
        let mut guards = Vec::new();
        let mut tasks = Vec::new();
        let mut paths = Vec::new();
        let mut listener_fds = Vec::new();
        for (path, listener, guard) in bound {
            let listener = UnixListener::from_std(listener)?;
            listener_fds.push((path.clone(), listener.as_raw_fd()));
            paths.push(path);
            guards.push(guard);
            tasks.push(tokio::task::spawn_local(accept_loop(
                listener,
                shared.clone(),
            )));
        }
        Ok(EngineSocket {
            paths,
            stats,
            listener_fds,
            relays,
            shared,
            tasks,
            _guards: guards,
        })
    }

    /// Relays still moving bytes (not paused for an upgrade).
    pub fn running_relays(&self) -> usize {
        self.relays.running()
    }

    /// Its part of the handover: the sockets and counters in its host's
    /// record `h`, and in the document's lists its relays paused between two
    /// writes and the clients accepted but not relaying yet.
    pub fn to_doc(&self, h: &mut HostDoc, doc: &mut Document) {
        h.engine_sockets = self
            .listener_fds
            .iter()
            .map(|(path, fd)| SocketDoc {
                path: path.clone(),
                fd: *fd,
            })
            .collect();
        h.engine_total = self.stats.total.get();
        h.engine_bytes_up = self.stats.bytes_up.get();
        h.engine_bytes_down = self.stats.bytes_down.get();
        let host = self.shared.host.to_string();
        doc.engine_queued
            .extend(self.relays.queued().into_iter().map(|fd| QueuedDoc {
                host: host.clone(),
                fd,
            }));
        doc.engine_relays
            .extend(self.relays.paused().iter().map(|r| r.engine_doc(&host)));
    }

    /// The sockets the previous image served for the host of `h`, owned
    /// (for [`EngineSocket::adopt`]), and their counters.
    pub fn inherited(
        h: &HostDoc,
        fds: &mut Descriptors,
    ) -> (Vec<(PathBuf, OwnedFd)>, (u64, u64, u64)) {
        let sockets = h
            .engine_sockets
            .iter()
            .filter_map(|s| Some((s.path.clone(), fds.take(s.fd)?)))
            .collect();
        (
            sockets,
            (h.engine_total, h.engine_bytes_up, h.engine_bytes_down),
        )
    }

    /// Resumes this host's relays the previous image paused, and serves the
    /// clients it had accepted but not relayed yet.
    pub fn resume_from(&self, doc: &Document, fds: &mut Descriptors) {
        let mine = |host: &str| host == &*self.shared.host;
        for r in doc.engine_relays.iter().filter(|r| mine(&r.host)) {
            if let Some(relay) = AdoptedRelay::from_engine_doc(r, fds) {
                self.resume(relay);
            }
        }
        for q in doc.engine_queued.iter().filter(|q| mine(&q.host)) {
            if let Some(fd) = fds.take(q.fd) {
                self.serve_queued(fd);
            }
        }
    }

    /// Serves a client the previous image had accepted but not relayed yet.
    pub fn serve_queued(&self, fd: OwnedFd) {
        let Ok(stream) = unix_stream(fd) else { return };
        spawn_serve(stream, &self.shared);
    }

    /// Resumes a relay the previous image paused and handed over.
    pub fn resume(&self, r: AdoptedRelay) {
        let shared = self.shared.clone();
        let entry = shared.relays.register(RelayState::Running);
        tokio::task::spawn_local(async move {
            let (Ok(mut client), Ok(mut upstream)) =
                (unix_stream(r.client), unix_stream(r.upstream))
            else {
                return;
            };
            let dial_stdio = !r.keep.is_empty();
            let permit = if dial_stdio {
                shared.sessions.try_acquire().ok()
            } else {
                None
            };
            let drain_fd = r.drain.as_ref().map(|f| f.as_raw_fd());
            let drain = r.drain.and_then(|fd| {
                let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()?;
                Some(tokio::task::spawn_local(drain_stderr(pipe)))
            });
            let stats = &shared.stats;
            stats.open.set(stats.open.get() + 1);
            relay(
                &mut client,
                &mut upstream,
                &shared,
                Directions {
                    up_open: r.up_open,
                    down_open: r.down_open,
                    keep: r.keep.iter().map(|f| f.as_raw_fd()).collect(),
                    drain: drain_fd,
                },
                &entry,
                true,
            )
            .await;
            drop(entry);
            stats.open.set(stats.open.get().saturating_sub(1));
            if let Some(d) = drain {
                d.abort();
            }
            drop(r.keep);
            drop(permit);
        });
    }
}

async fn drain_stderr(mut stderr: tokio::net::unix::pipe::Receiver) {
    let mut sink = [0u8; 1024];
    while matches!(stderr.read(&mut sink).await, Ok(n) if n > 0) {}
}

async fn accept_loop(listener: UnixListener, shared: Rc<Shared>) {
    let mut frozen = shared.ctx.frozen.subscribe();
    let mut backoff = fwd_core::AcceptBackoff::default();
    let socket = format!("the engine socket of host {}", shared.host);
    loop {
        match accept_thawed(&listener, &mut frozen).await {
            Ok(stream) => {
                shared.ctx.accept_succeeded(&mut backoff, &socket);
                let cred = stream.peer_cred().ok();
                let uid = cred.map(|c| c.uid());
                let allowed = cred.is_some_and(|c| {
                    private_socket::engine_peer_allowed(c.uid(), c.gid(), shared.euid)
                });
                if !allowed {
                    if let Some(suppressed) = shared.refusals.borrow_mut().note(uid, Instant::now())
                    {
                        tracing::warn!(
                            event = "engine_peer_refused",
                            host = %shared.host,
                            peer_uid = ?uid,
                            suppressed,
                            "refused an engine socket connection from another user (not fwdd's, not root, not in engine_socket_group)"
                        );
                    }
                    continue;
                }
                let cap = shared.ctx.limits.get().engine_clients;
                let stats = &shared.stats;
                if !shared.ctx.admit(
                    &mut stats.refusals.borrow_mut(),
                    stats.open.get(),
                    cap,
                    &holder(&shared.host),
                ) {
                    shared
                        .ctx
                        .counters(&shared.host)
                        .refuse(fwd_metrics::Refused::EngineClient);
                    continue;
                }
                stats.total.set(stats.total.get() + 1);
                spawn_serve(stream, &shared);
            }
            // EMFILE and friends: back off instead of spinning.
            Err(e) => shared.ctx.accept_failed(&mut backoff, &socket, &e).await,
        }
    }
}

/// Who `max_engine_clients` counts, for the log.
fn holder(host: &HostKey) -> crate::serve::Holder<'_> {
    crate::serve::Holder {
        what: "the engine socket",
        host,
        setting: "max_engine_clients",
    }
}

/// Serves one client in its own task, registered at once (an upgrade that
/// freezes next must find it).
fn spawn_serve(stream: UnixStream, shared: &Rc<Shared>) {
    let entry = shared
        .relays
        .register(RelayState::Queued(stream.as_raw_fd()));
    let shared = shared.clone();
    // Counted at once: the cap is checked at the next accept, which may
    // come before this task runs.
    shared.stats.open.set(shared.stats.open.get() + 1);
    tokio::task::spawn_local(async move {
        let stats = &shared.stats;
        serve(stream, &shared, &entry).await;
        drop(entry);
        stats.open.set(stats.open.get().saturating_sub(1));
        let cap = shared.ctx.limits.get().engine_clients;
        shared.ctx.released(
            &mut stats.refusals.borrow_mut(),
            stats.open.get(),
            cap,
            &holder(&shared.host),
        );
    });
}

/// Carries one client connection to the engine. While no master is up the
/// client waits (up to `connect_wait`); a master that dies between the
/// link being published and the connect is waited out the same way.
async fn serve(mut client: UnixStream, shared: &Shared, entry: &RelayEntry) {
    let Some(mut link_rx) = shared.ctx.link_watch(&shared.host) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + shared.ctx.connect_wait.get();
    let mut newer_than = 0;
    loop {
        entry.set(RelayState::Queued(client.as_raw_fd()));
        let link = match tokio::time::timeout_at(
            deadline,
            link_rx.wait_for(|l| l.as_ref().is_some_and(|l| l.generation > newer_than)),
        )
        .await
        {
            Ok(Ok(l)) => match l.clone() {
                Some(l) => l,
                None => return,
            },
            _ => {
                tracing::debug!(host = %shared.host, "no master in time; closing the engine connection");
                return;
            }
        };
        let served = match link.engine {
            EngineRoute::StreamLocal => relay_stream_local(&mut client, &link, shared, entry).await,
            EngineRoute::DialStdio => relay_dial_stdio(&mut client, &link, shared, entry).await,
        };
        match served {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(host = %shared.host, error = %e, "engine route failed; waiting for the next master");
                newer_than = link.generation;
            }
        }
    }
}

/// Connects to the master's forward and relays. `Err` only when nothing
/// was relayed yet (the client may still be served by the next master).
async fn relay_stream_local(
    client: &mut UnixStream,
    link: &Link,
    shared: &Shared,
    entry: &RelayEntry,
) -> std::io::Result<()> {
    shared.ctx.thawed().await;
    let mut upstream = UnixStream::connect(&link.engine_forward).await?;
    relay(
        client,
        &mut upstream,
        shared,
        Directions::both(),
        entry,
        false,
    )
    .await;
    Ok(())
}

async fn relay_dial_stdio(
    client: &mut UnixStream,
    link: &Link,
    shared: &Shared,
    entry: &RelayEntry,
) -> std::io::Result<()> {
    let Ok(_permit) = shared.sessions.acquire().await else {
        return Ok(());
    };
    shared.ctx.thawed().await;
    let mut remote = fwd_ssh::spawn_remote(&link.control_path, fwd_docker::DIAL_STDIO_COMMAND)
        .await
        .map_err(std::io::Error::other)?;
    // dial-stdio's stderr is not ours to show; drain it so it never blocks.
    let stderr_fd = remote.stderr.as_raw_fd();
    let drain = tokio::task::spawn_local(drain_stderr(remote.stderr));
    let directions = Directions {
        keep: vec![remote.session.as_raw_fd()],
        drain: Some(stderr_fd),
        ..Directions::both()
    };
    relay(client, &mut remote.stdio, shared, directions, entry, false).await;
    drain.abort();
    Ok(())
}

/// Relays with the engine socket's counters, through the freeze, holding
/// a start's answer until its ports are bound (not for a relay resumed
/// `midway`, whose requests cannot be told apart).
async fn relay(
    client: &mut UnixStream,
    upstream: &mut UnixStream,
    shared: &Shared,
    d: Directions,
    entry: &RelayEntry,
    midway: bool,
) {
    let s = &shared.stats;
    let hold = StartHold::new(&shared.ctx.starts, shared.host.clone(), midway);
    let end = crate::serve::relay::relay(
        client,
        upstream,
        &shared.ctx.frozen,
        [&s.bytes_up, &s.bytes_down],
        d,
        entry,
        Some(&hold),
    )
    .await;
    if end == RelayEnd::Failed {
        tracing::debug!(host = %shared.host, "engine connection ended with an error");
    }
}

/// Where a host's engine sockets go.
pub fn socket_paths(runtime_dir: &Path, host: &str, default_host: bool) -> Vec<PathBuf> {
    socket_names(host, default_host)
        .into_iter()
        .map(|n| runtime_dir.join(n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_host_also_gets_docker_sock() {
        assert_eq!(
            socket_names("ci", true),
            vec!["docker.sock".to_string(), "docker-ci.sock".to_string()]
        );
        assert_eq!(socket_names("b", false), vec!["docker-b.sock".to_string()]);
    }
}
