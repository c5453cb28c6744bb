//! An exposure's socket: where the master connects each arrival from the
//! host, and the relay from there to the runner address.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fwd_core::{HostKey, RepeatGate, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::private_socket::{self, SocketFileGuard};
use crate::serve::relay::{
    accept_thawed, unix_stream, AdoptedRelay, Directions, RelayEntry, RelayState, Relays,
};
use crate::serve::ServeContext;

/// How long an arrival may take to show the verification token while a
/// verification is in flight (real traffic that arrives then waits at
/// most this for its first bytes to be read).
const TOKEN_WITHIN: Duration = Duration::from_secs(2);
/// A runner service that does not accept within this is counted as down.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

pub type Verifying = Rc<RefCell<BTreeMap<u16, ([u8; 16], Option<oneshot::Sender<()>>)>>>;

/// Connections of one exposure.
#[derive(Debug, Default)]
pub struct ExposeStats {
    pub open: Cell<u64>,
    pub total: Cell<u64>,
    /// Arrivals closed because the runner address refused or timed out.
    pub failed: Cell<u64>,
    /// Bytes from containers to the runner, and back.
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Arrivals held, from accept to end (what `max_tunnels_per_exposure`
    /// counts).
    pub held: Cell<u64>,
    /// Arrivals closed at `max_tunnels_per_exposure`, and the episode.
    pub refusals: RefCell<fwd_core::Refusals>,
}

/// One exposure's socket, served until dropped.
pub struct PortSocket {
    pub stats: Rc<ExposeStats>,
    /// Where arrivals go: from the configuration, changed by a reload.
    pub target: Rc<Cell<SocketAddr>>,
    /// The listener's descriptor (owned by its accept task), for an upgrade.
    pub listener_fd: RawFd,
    pub path: std::path::PathBuf,
    port: Rc<Port>,
    task: JoinHandle<()>,
    _guard: SocketFileGuard,
}

impl Drop for PortSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Port {
    host: HostKey,
    port: u16,
    target: Rc<Cell<SocketAddr>>,
    stats: Rc<ExposeStats>,
    verifying: Verifying,
    down: RefCell<RepeatGate>,
    euid: u32,
    relays: Rc<Relays>,
    serve: Rc<ServeContext>,
    /// "exposed port N", for the log.
    what: String,
}

impl PortSocket {
    /// Binds the socket at `path` (a stale one is replaced) and serves it.
    pub fn bind(
        host: &HostKey,
        port: u16,
        path: &Path,
        target: SocketAddr,
        verifying: Verifying,
        serve: Rc<ServeContext>,
    ) -> std::io::Result<PortSocket> {
        let (listener, guard) = private_socket::bind(path, "expose socket")?;
        Self::serve(host, port, path, listener, guard, target, verifying, serve)
    }

    /// Takes over the socket the previous fwdd image served.
    #[allow(clippy::too_many_arguments)]
    pub fn adopt(
        host: &HostKey,
        port: u16,
        path: &Path,
        fd: OwnedFd,
        target: SocketAddr,
        verifying: Verifying,
        serve: Rc<ServeContext>,
    ) -> std::io::Result<PortSocket> {
        let (listener, guard) = private_socket::adopt(path, fd)?;
        Self::serve(host, port, path, listener, guard, target, verifying, serve)
    }

    #[allow(clippy::too_many_arguments)]
    fn serve(
        host: &HostKey,
        port: u16,
        path: &Path,
        listener: std::os::unix::net::UnixListener,
        guard: SocketFileGuard,
        target: SocketAddr,
        verifying: Verifying,
        serve: Rc<ServeContext>,
    ) -> std::io::Result<PortSocket> {
        let listener = UnixListener::from_std(listener)?;
        let listener_fd = listener.as_raw_fd();
        let stats = Rc::new(ExposeStats::default());
        let target = Rc::new(Cell::new(target));
        let shared = Rc::new(Port {
            host: host.clone(),
            port,
            target: target.clone(),
            stats: stats.clone(),
            verifying,
            down: RefCell::new(RepeatGate::new(Duration::from_secs(300))),
            euid: fwd_proto::effective_uid(),
            relays: Rc::default(),
            serve,
            what: format!("exposed port {port}"),
        });
        let task = tokio::task::spawn_local(accept_loop(listener, shared.clone()));
        Ok(PortSocket {
            stats,
            target,
            listener_fd,
            path: path.to_path_buf(),
            port: shared,
            task,
            _guard: guard,
        })
    }

    /// Its relays, for an upgrade: those to wait for, those paused, those
    /// not started.
    pub fn relays(&self) -> &Relays {
        &self.port.relays
    }

    /// Serves an arrival the previous image had accepted but not relayed.
    pub fn serve_queued(&self, fd: OwnedFd) {
        let Ok(stream) = unix_stream(fd) else { return };
        spawn_serve(stream, &self.port);
    }

    /// Resumes a relay the previous image paused and handed over.
    pub fn resume(&self, r: AdoptedRelay) {
        let port = self.port.clone();
        let entry = port.relays.register(RelayState::Running);
        tokio::task::spawn_local(async move {
            let Ok(mut arrival) = unix_stream(r.client) else {
                return;
            };
            let upstream = std::net::TcpStream::from(r.upstream);
            let Ok(mut upstream) = upstream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(upstream))
            else {
                return;
            };
            let d = Directions {
                up_open: r.up_open,
                down_open: r.down_open,
                ..Directions::both()
            };
            relay(&mut arrival, &mut upstream, &port, d, &entry).await;
        });
    }
}

/// A fresh verification token.
pub fn token() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for half in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

async fn accept_loop(listener: UnixListener, port: Rc<Port>) {
    let mut frozen = port.serve.frozen.subscribe();
    let mut backoff = fwd_core::AcceptBackoff::default();
    let socket = format!("the socket of exposed port {}", port.port);
    loop {
        // While an upgrade collects, arrivals wait in the backlog.
        match accept_thawed(&listener, &mut frozen).await {
            Ok(stream) => {
                port.serve.accept_succeeded(&mut backoff, &socket);
                // Only our own master connects here (it runs as fwdd's user).
                let ours = stream
                    .peer_cred()
                    .is_ok_and(|c| private_socket::uid_allowed(c.uid(), port.euid));
                if !ours {
                    continue;
                }
                // Each arrival costs fwdd two descriptors (it and the
                // connection to the runner address) and the master one.
                let cap = port.serve.limits.get().tunnels_per_exposure;
                let stats = &port.stats;
                if !port.serve.admit(
                    &mut stats.refusals.borrow_mut(),
                    stats.held.get(),
                    cap,
                    &holder(&port),
                ) {
                    port.serve
                        .counters(&port.host)
                        .refuse(fwd_metrics::Refused::Exposure);
                    continue;
                }
                spawn_serve(stream, &port);
            }
            // EMFILE and friends: back off instead of spinning.
            Err(e) => port.serve.accept_failed(&mut backoff, &socket, &e).await,
        }
    }
}

/// Who `max_tunnels_per_exposure` counts, for the log.
fn holder(port: &Port) -> crate::serve::Holder<'_> {
    crate::serve::Holder {
        what: port.what.as_str(),
        host: &port.host,
        setting: "max_tunnels_per_exposure",
    }
}

/// Serves one arrival in its own task, registered at once (an upgrade that
/// freezes next must find it).
fn spawn_serve(stream: UnixStream, port: &Rc<Port>) {
    let entry = port.relays.register(RelayState::Queued(stream.as_raw_fd()));
    let port = port.clone();
    let stats = port.stats.clone();
    stats.held.set(stats.held.get() + 1);
    tokio::task::spawn_local(async move {
        serve(stream, &port, &entry).await;
        drop(entry);
        stats.held.set(stats.held.get().saturating_sub(1));
        let cap = port.serve.limits.get().tunnels_per_exposure;
        port.serve.released(
            &mut stats.refusals.borrow_mut(),
            stats.held.get(),
            cap,
            &holder(&port),
        );
    });
}

async fn serve(mut arrival: UnixStream, port: &Port, entry: &RelayEntry) {
    port.serve.thawed().await;
    let mut first = Vec::new();
    let expected = port.verifying.borrow().get(&port.port).map(|(t, _)| *t);
    if let Some(token) = expected {
        // Something may be read now: the upgrade waits instead of serving
        // this arrival again from the start.
        entry.set(RelayState::Running);
        if read_token(&mut arrival, &token, &mut first).await {
            if let Some((_, tx)) = port.verifying.borrow_mut().get_mut(&port.port) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
            return;
        }
    }
    let target = port.target.get();
    let stats = &port.stats;
    stats.total.set(stats.total.get() + 1);
    let connected = tokio::time::timeout(CONNECT_WITHIN, TcpStream::connect(target)).await;
    let mut upstream = match connected {
        Ok(Ok(s)) => {
            port.down.borrow_mut().clear();
            s
        }
        failed => {
            stats.failed.set(stats.failed.get() + 1);
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {CONNECT_WITHIN:?}"),
            };
            let verdict = port.down.borrow_mut().observe(&why, Instant::now());
            if verdict != Verdict::Suppress {
                tracing::warn!(
                    event = "expose_target_down",
                    host = %port.host,
                    port = port.port,
                    target = %target,
                    error = %why,
                    "a container's connection to exposed port {} was closed: nothing answers at {target} on this machine ({why})",
                    port.port
                );
            }
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if first.is_empty() || upstream.write_all(&first).await.is_ok() {
        relay(&mut arrival, &mut upstream, port, Directions::both(), entry).await;
    }
}

async fn relay(
    arrival: &mut UnixStream,
    upstream: &mut TcpStream,
    port: &Port,
    d: Directions,
    entry: &RelayEntry,
) {
    let stats = &port.stats;
    stats.open.set(stats.open.get() + 1);
    crate::serve::relay::relay(
        arrival,
        upstream,
        &port.serve.frozen,
        [&stats.bytes_in, &stats.bytes_out],
        d,
        entry,
        None,
    )
    .await;
    stats.open.set(stats.open.get().saturating_sub(1));
}

/// Reads while what came is a prefix of `token`: `true` when it is the
/// token; otherwise what was read is left in `first` for the relay.
async fn read_token(arrival: &mut UnixStream, token: &[u8; 16], first: &mut Vec<u8>) -> bool {
    let deadline = tokio::time::Instant::now() + TOKEN_WITHIN;
    let mut buf = [0u8; 16];
    while first.len() < token.len() {
        let want = token.len() - first.len();
        match tokio::time::timeout_at(deadline, arrival.read(&mut buf[..want])).await {
            Ok(Ok(n)) if n > 0 => {
                first.extend_from_slice(&buf[..n]);
                if !token.starts_with(first) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}
