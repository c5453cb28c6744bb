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
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use fwd_core::{EngineRoute, HostKey, RepeatGate, Verdict};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::forwards::{Link, ServeContext};
use crate::private_socket::{self, uid_allowed, RefusalLog, SocketFileGuard};

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
}

/// A host's engine sockets; dropping it closes them and removes the files.
pub struct EngineSocket {
    pub paths: Vec<PathBuf>,
    pub stats: Rc<EngineStats>,
    tasks: Vec<JoinHandle<()>>,
    _guards: Vec<SocketFileGuard>,
}

impl Drop for EngineSocket {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Shared {
    host: HostKey,
    ctx: Rc<ServeContext>,
    stats: Rc<EngineStats>,
    sessions: Semaphore,
    refusals: std::cell::RefCell<RefusalLog>,
    failures: std::cell::RefCell<RepeatGate>,
    euid: u32,
}

impl EngineSocket {
    /// Binds every path (an existing live socket is an error, a stale one
    /// is replaced) and serves them for `host`.
    pub fn bind(
        host: HostKey,
        paths: Vec<PathBuf>,
        ctx: Rc<ServeContext>,
    ) -> std::io::Result<EngineSocket> {
        let stats = Rc::new(EngineStats::default());
        let shared = Rc::new(Shared {
            host,
            ctx,
            stats: stats.clone(),
            sessions: Semaphore::new(DIAL_STDIO_LIMIT),
            refusals: Default::default(),
            failures: std::cell::RefCell::new(RepeatGate::new(Duration::from_secs(300))),
            euid: fwd_proto::effective_uid(),
        });
        let mut guards = Vec::new();
        let mut tasks = Vec::new();
        for path in &paths {
            let (listener, guard) = private_socket::bind(path, "engine socket")?;
            let listener = UnixListener::from_std(listener)?;
            guards.push(guard);
            tasks.push(tokio::task::spawn_local(accept_loop(
                listener,
                shared.clone(),
            )));
        }
        Ok(EngineSocket {
            paths,
            stats,
            tasks,
            _guards: guards,
        })
    }
}

async fn accept_loop(listener: UnixListener, shared: Rc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let uid = stream.peer_cred().ok().map(|c| c.uid());
                if !uid.is_some_and(|u| uid_allowed(u, shared.euid)) {
                    if let Some(suppressed) = shared.refusals.borrow_mut().note(uid, Instant::now())
                    {
                        tracing::warn!(
                            event = "engine_peer_refused",
                            host = %shared.host,
                            peer_uid = ?uid,
                            suppressed,
                            "refused an engine socket connection from another user"
                        );
                    }
                    continue;
                }
                let shared = shared.clone();
                tokio::task::spawn_local(async move {
                    let stats = &shared.stats;
                    stats.open.set(stats.open.get() + 1);
                    stats.total.set(stats.total.get() + 1);
                    serve(stream, &shared).await;
                    stats.open.set(stats.open.get().saturating_sub(1));
                });
            }
            Err(e) => {
                if shared
                    .failures
                    .borrow_mut()
                    .observe(&e.to_string(), Instant::now())
                    != Verdict::Suppress
                {
                    tracing::warn!(event = "accept_failed", host = %shared.host, error = %e, "accepting an engine socket connection failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Carries one client connection to the engine. While no master is up the
/// client waits (up to `connect_wait`); a master that dies between the
/// link being published and the connect is waited out the same way.
async fn serve(mut client: UnixStream, shared: &Shared) {
    let Some(mut link_rx) = shared.ctx.links.borrow().get(&shared.host).cloned() else {
        return;
    };
    let deadline = tokio::time::Instant::now() + shared.ctx.connect_wait.get();
    let mut newer_than = 0;
    loop {
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
            EngineRoute::StreamLocal => relay_stream_local(&mut client, &link, shared).await,
            EngineRoute::DialStdio => relay_dial_stdio(&mut client, &link, shared).await,
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
) -> std::io::Result<()> {
    let mut upstream = UnixStream::connect(&link.engine_forward).await?;
    relay(client, &mut upstream, shared).await;
    Ok(())
}

async fn relay_dial_stdio(
    client: &mut UnixStream,
    link: &Link,
    shared: &Shared,
) -> std::io::Result<()> {
    let Ok(_permit) = shared.sessions.acquire().await else {
        return Ok(());
    };
    let mut remote = fwd_ssh::spawn_remote(&link.control_path, fwd_docker::DIAL_STDIO_COMMAND)
        .await
        .map_err(std::io::Error::other)?;
    // dial-stdio's stderr is not ours to show; drain it so it never blocks.
    let mut stderr = remote.stderr;
    let drain = tokio::task::spawn_local(async move {
        let mut sink = [0u8; 1024];
        while matches!(stderr.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    relay(client, &mut remote.stdio, shared).await;
    drain.abort();
    Ok(())
}

/// Bytes both ways until both directions have ended; each EOF is passed
/// on as a half-close (`docker exec -i` and `attach` rely on it).
async fn relay(client: &mut UnixStream, upstream: &mut UnixStream, shared: &Shared) {
    match tokio::io::copy_bidirectional(client, upstream).await {
        Ok((up, down)) => {
            let s = &shared.stats;
            s.bytes_up.set(s.bytes_up.get() + up);
            s.bytes_down.set(s.bytes_down.get() + down);
        }
        Err(e) => {
            tracing::debug!(host = %shared.host, error = %e, "engine connection ended with an error")
        }
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
