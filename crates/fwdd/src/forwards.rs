//! Daemon-owned listeners and the hand-off of each accepted connection to
//! the ControlMaster.
//!
//! fwdd binds the local ports itself (not the master), so a port stays bound
//! while the master is being replaced, a conflict shows up exactly at
//! `bind()`, and what is forwarded is exactly what this table holds. Each
//! accepted socket is passed to the master as a stdio forward; from then on
//! bytes flow socket ⇄ ssh without touching fwdd.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fwd_core::{Action, Claim, EngineRoute, Held, HostKey};
use fwd_ssh::{MasterConfig, MuxClient, MuxError};
use std::net::TcpListener;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A usable ControlMaster of one host.
#[derive(Clone, Debug)]
pub struct Link {
    pub control_path: PathBuf,
    /// Increments with every new master, so waiters can tell old from new.
    pub generation: u64,
    pub ssh: Arc<MasterConfig>,
    /// How connections to the local engine socket reach the engine.
    pub engine: EngineRoute,
    /// The master's forward of the engine socket (used with `StreamLocal`).
    pub engine_forward: PathBuf,
}

pub type LinkWatch = watch::Receiver<Option<Link>>;

#[derive(Default, Debug)]
pub struct ConnStats {
    pub open: Cell<u64>,
    pub total: Cell<u64>,
}

/// Where a forward's connections go, and since when that container runs
/// (`None` while it is only created): a refusal from a container that
/// started a moment ago is retried, not passed on.
#[derive(Clone, Debug)]
pub struct Target {
    pub claim: Claim,
    pub running_since: Option<Instant>,
    /// The container was seen listening (a probe channel stayed open):
    /// later connections are handed over without probing.
    pub listening: Rc<Cell<bool>>,
}

impl Target {
    fn new(claim: Claim, now: Instant) -> Target {
        let running_since = (!claim.pending).then_some(now);
        Target {
            claim,
            running_since,
            listening: Rc::default(),
        }
    }

    /// The next owner: the start time carries over while the same
    /// container keeps running.
    fn next(&self, claim: Claim, now: Instant) -> Target {
        let same_run = self.claim.same_owner(&claim) && !self.claim.pending && !claim.pending;
        let running_since = match self.running_since {
            _ if claim.pending => None,
            Some(t) if same_run => Some(t),
            _ => Some(now),
        };
        Target {
            claim,
            running_since,
            listening: if same_run {
                self.listening.clone()
            } else {
                Rc::default()
            },
        }
    }
}

/// One local port fwdd holds (or tries to hold) for a container.
pub struct Forward {
    pub held: Held,
    /// Read by the accept loops at each connection, so a retarget takes
    /// effect for the next connection without rebinding; waited on by
    /// connections accepted while the claim is pending.
    target: watch::Sender<Target>,
    pub reason: Option<String>,
    pub since: SystemTime,
    pub local_addrs: Vec<SocketAddr>,
    pub stats: Rc<ConnStats>,
    /// The listeners' descriptors (owned by the accept tasks), for a
    /// binary upgrade.
    listener_fds: Vec<(SocketAddr, RawFd)>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl Forward {
    pub fn listener_fds(&self) -> &[(SocketAddr, RawFd)] {
        &self.listener_fds
    }

    /// How long the target container has run (`None`: only created), and
    /// whether it was seen listening.
    pub fn target_state(&self) -> (Option<Duration>, bool) {
        let t = self.target.borrow();
        (t.running_since.map(|s| s.elapsed()), t.listening.get())
    }
}

/// A forward the previous fwdd image held, with what it handed over.
pub struct AdoptedForward {
    pub claim: Claim,
    pub listeners: Vec<std::net::TcpListener>,
    pub running_for: Option<Duration>,
    pub listening: bool,
    pub since: SystemTime,
    pub connections_total: u64,
    pub tunnels: Vec<OwnedFd>,
    pub queued: Vec<OwnedFd>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        for t in &self.accept_tasks {
            t.abort();
        }
        // systemd's store would keep the port bound otherwise.
        for (addr, _) in &self.listener_fds {
            crate::systemd::remove_fd(&crate::systemd::tcp_fd_name(*addr));
        }
    }
}

pub struct ServeContext {
    pub links: RefCell<BTreeMap<HostKey, LinkWatch>>,
    pub connect_wait: Cell<Duration>,
    /// How long after a container starts a refused channel is retried.
    pub startup_window: Cell<Duration>,
    /// Per host, one mux connection already past its hello, so an accepted
    /// client costs the master a single request: `ssh -L` opens its channel
    /// straight from accept, and connect + hello would add ~0.2 ms (~20 %)
    /// to every connection's setup.
    spares: RefCell<BTreeMap<HostKey, SparePool>>,
    /// Per host, hand-offs in flight at once: ssh's control socket listens
    /// with a backlog of 64, and a burst of clients (hundreds waiting for
    /// a master that just came back) must queue here, not overflow it.
    handoffs: RefCell<BTreeMap<HostKey, Rc<tokio::sync::Semaphore>>>,
    /// Set while a binary upgrade collects what to hand over: nothing is
    /// accepted and no hand-off starts (the kernel's backlog holds new
    /// clients meanwhile); cleared again if the upgrade fails.
    pub frozen: watch::Sender<bool>,
    /// Every client connection of a forward that fwdd still holds, and
    /// where it is: what a binary upgrade hands to the next image.
    conns: RefCell<BTreeMap<u64, Conn>>,
    next_conn: Cell<u64>,
    /// Listeners systemd's fd store gave back after a crash, until a bind
    /// takes them (see `systemd.rs`).
    pub stored: crate::systemd::StoredFds,
}

#[derive(Clone, Copy, Debug)]
struct Conn {
    port: u16,
    state: ConnState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    /// Accepted, waiting (for a master, a start, a listener): the socket.
    Queued(RawFd),
    /// A mux request carrying the socket is in flight.
    HandingOff,
    /// Handed to the master: the mux connection that keeps the tunnel.
    Tunnel(RawFd),
    /// Served by an `ssh -W` child (which outlives an upgrade on its own).
    Fallback,
}

/// What a frozen forward hands over: tunnels to keep, clients to serve again.
#[derive(Default, Debug)]
pub struct HeldConns {
    pub tunnels: Vec<RawFd>,
    pub queued: Vec<RawFd>,
}

/// Removes a connection from the registry when its task ends.
struct Registered {
    ctx: Rc<ServeContext>,
    id: u64,
}

impl Registered {
    fn set(&self, state: ConnState) {
        if let Some(c) = self.ctx.conns.borrow_mut().get_mut(&self.id) {
            c.state = state;
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.ctx.conns.borrow_mut().remove(&self.id);
    }
}

/// Concurrent hand-offs per host (well below ssh's control-socket backlog).
const HANDOFFS_IN_FLIGHT: usize = 32;

/// Spare mux connections kept per host: enough for the hand-offs a few
/// concurrent connect-per-request clients start at once (pgbench -C with 4
/// clients found the one spare taken and paid connect + hello on three of
/// four connections). Idle, each is one socket pair with the master.
const SPARES_PER_HOST: usize = 4;

#[derive(Default)]
struct SparePool {
    /// The master generation the connections talk to.
    generation: u64,
    ready: Vec<SpareMux>,
}

impl SparePool {
    /// The spares of master `generation`; those of an earlier one are dropped.
    fn of(&mut self, generation: u64) -> &mut Vec<SpareMux> {
        if self.generation != generation {
            self.ready.clear();
            self.generation = generation;
        }
        &mut self.ready
    }
}

enum SpareMux {
    /// Made by `refill`: hello sent, the master's reply not read yet.
    Pending(fwd_ssh::PendingMux),
    /// Used by an alive check and put back.
    Client(MuxClient),
}

impl SpareMux {
    fn into_client(self) -> Result<MuxClient, MuxError> {
        match self {
            SpareMux::Pending(p) => p.into_client(),
            SpareMux::Client(c) => Ok(c),
        }
    }
}

impl ServeContext {
    pub fn new(
        connect_wait: Duration,
        startup_window: Duration,
        stored: crate::systemd::StoredFds,
    ) -> Self {
        ServeContext {
            links: RefCell::new(BTreeMap::new()),
            connect_wait: Cell::new(connect_wait),
            startup_window: Cell::new(startup_window),
            spares: RefCell::new(BTreeMap::new()),
            handoffs: RefCell::new(BTreeMap::new()),
            frozen: watch::channel(false).0,
            conns: RefCell::new(BTreeMap::new()),
            next_conn: Cell::new(0),
            stored,
        }
    }

    /// Called in the same step as the accept (or the adoption): an upgrade
    /// that freezes right after must find the connection, not a task that has
    /// not run yet.
    fn register(self: &Rc<Self>, port: u16, state: ConnState) -> Registered {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        self.conns.borrow_mut().insert(id, Conn { port, state });
        Registered {
            ctx: self.clone(),
            id,
        }
    }

    /// Returns at once unless frozen; while frozen, never (the process is
    /// about to become the next image, or thaws if the upgrade fails).
    pub async fn thawed(&self) {
        let mut rx = self.frozen.subscribe();
        let _ = rx.wait_for(|frozen| !*frozen).await;
    }

    /// Hand-offs whose mux request is in flight: a binary upgrade waits for
    /// them, since the request's mux connection cannot be handed over
    /// mid-request.
    pub fn handing_off(&self) -> usize {
        self.conns
            .borrow()
            .values()
            .filter(|c| c.state == ConnState::HandingOff)
            .count()
    }

    /// Per local port, the tunnels and the waiting clients fwdd holds.
    pub fn held_conns(&self) -> BTreeMap<u16, HeldConns> {
        let mut out: BTreeMap<u16, HeldConns> = BTreeMap::new();
        for c in self.conns.borrow().values() {
            let held = out.entry(c.port).or_default();
            match c.state {
                ConnState::Queued(fd) => held.queued.push(fd),
                ConnState::Tunnel(fd) => held.tunnels.push(fd),
                ConnState::HandingOff | ConnState::Fallback => {}
            }
        }
        out
    }

    fn handoff_slots(&self, host: &HostKey) -> Rc<tokio::sync::Semaphore> {
        self.handoffs
            .borrow_mut()
            .entry(host.clone())
            .or_insert_with(|| Rc::new(tokio::sync::Semaphore::new(HANDOFFS_IN_FLIGHT)))
            .clone()
    }

    /// The host left the configuration: its spare connection goes too.
    pub fn forget_host(&self, host: &HostKey) {
        self.links.borrow_mut().remove(host);
        self.spares.borrow_mut().remove(host);
        self.handoffs.borrow_mut().remove(host);
    }

    /// A mux client for `link`: the spare if it belongs to this very master,
    /// else a fresh connection. The caller calls [`Self::refill`] once its
    /// request is answered.
    async fn mux_client(
        self: &Rc<Self>,
        host: &HostKey,
        link: &Link,
    ) -> Result<MuxClient, MuxError> {
        let spare = self
            .spares
            .borrow_mut()
            .entry(host.clone())
            .or_default()
            .of(link.generation)
            .pop();
        match spare {
            Some(spare) => spare.into_client(),
            None => MuxClient::connect(&link.control_path).await,
        }
    }

    /// Opens a channel to the claim's remote end through the master and
    /// closes it again: `Ok` when something accepts connections there. Goes
    /// the way real connections go (spare mux connection included).
    pub async fn probe_remote(self: &Rc<Self>, link: &Link, claim: &Claim) -> Result<(), String> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        let attempt = async {
            let mux = self.mux_client(&claim.host, link).await?;
            mux.open_stdio_forward(&claim.remote.ip, claim.remote.port, theirs.as_fd())
                .await
        };
        let result = tokio::time::timeout(Duration::from_secs(5), attempt).await;
        self.refill(&claim.host, link);
        drop(ours);
        match result {
            Ok(Ok(_tunnel)) => Ok(()),
            Ok(Err(MuxError::Refused(reason))) => Err(format!(
                "nothing accepts connections at {} on {}: {reason}",
                claim.remote, claim.host
            )),
            Ok(Err(e)) => Err(format!("probing {} failed: {e}", claim.remote)),
            Err(_) => Err(format!("probing {} timed out", claim.remote)),
        }
    }

    /// Whether something really listens at the claim's remote end: a probe
    /// channel that is refused, or that opens and ends within a few round
    /// trips (Docker's userland proxy accepting for a container that does
    /// not listen yet), says no.
    async fn remote_listens(self: &Rc<Self>, link: &Link, claim: &Claim) -> Result<bool, MuxError> {
        use tokio::io::AsyncReadExt;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let mut ours = tokio::net::UnixStream::from_std(ours)?;
        let t0 = Instant::now();
        let mux = self.mux_client(&claim.host, link).await?;
        let opened = mux
            .open_stdio_forward(&claim.remote.ip, claim.remote.port, theirs.as_fd())
            .await;
        self.refill(&claim.host, link);
        let tunnel = match opened {
            Ok(t) => t,
            Err(MuxError::Refused(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        drop(theirs);
        let wait = fwd_core::listen_probe_wait(t0.elapsed());
        let mut byte = [0u8; 1];
        let listens = match tokio::time::timeout(wait, ours.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(_)) | Err(_) => true,
        };
        drop(tunnel);
        Ok(listens)
    }

    /// The master's mux alive check, on the idle spare connection when there
    /// is one (one request instead of connect + hello + request: health
    /// ticks are most of fwdd's idle wakeups).
    pub async fn alive_check(&self, host: &HostKey, link: &Link) -> Result<u32, MuxError> {
        let spare = self
            .spares
            .borrow_mut()
            .get_mut(host)
            .and_then(|pool| pool.of(link.generation).pop());
        let mut client = match spare {
            Some(spare) => spare.into_client()?,
            None => MuxClient::connect(&link.control_path).await?,
        };
        let pid = client.alive_check().await?;
        let mut spares = self.spares.borrow_mut();
        let ready = spares.entry(host.clone()).or_default().of(link.generation);
        if ready.len() < SPARES_PER_HOST {
            ready.push(SpareMux::Client(client));
        }
        Ok(pid)
    }

    /// Prepares the next spare. Called after a request is answered, not
    /// before it is sent: a refill's connect and hello keep fwdd on the CPU
    /// the master was just woken on, and the master then waited for it.
    fn refill(&self, host: &HostKey, link: &Link) {
        let mut spares = self.spares.borrow_mut();
        // Only for a host still configured.
        let Some(pool) = spares.get_mut(host) else {
            return;
        };
        let ready = pool.of(link.generation);
        // No wait and no task: each connect and hello is queued at once, or
        // (a master whose listen queue is full) the next request makes its
        // own connection.
        while ready.len() < SPARES_PER_HOST {
            match fwd_ssh::PendingMux::connect_now(&link.control_path) {
                Ok(pending) => ready.push(SpareMux::Pending(pending)),
                Err(_) => break,
            }
        }
    }
}

/// The ports fwdd holds, keyed by local port.
#[derive(Default)]
pub struct ForwardTable {
    pub forwards: BTreeMap<u16, Forward>,
}

impl ForwardTable {
    pub fn held(&self) -> BTreeMap<u16, Held> {
        self.forwards
            .iter()
            .map(|(p, f)| (*p, f.held.clone()))
            .collect()
    }

    /// The earliest time a conflicted port should be tried again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.forwards.values().filter_map(|f| f.held.retry_at).min()
    }

    pub fn apply(
        &mut self,
        actions: Vec<Action>,
        ctx: &Rc<ServeContext>,
        now: Instant,
        conflict_retry: Duration,
    ) {
        for action in actions {
            match action {
                Action::Bind(claim) => self.bind(claim, ctx, now, conflict_retry),
                Action::Rebind(claim) => {
                    self.forwards.remove(&claim.local_port);
                    self.bind(claim, ctx, now, conflict_retry);
                }
                Action::Retarget(claim) => {
                    if let Some(f) = self.forwards.get_mut(&claim.local_port) {
                        // A created container that starts keeps its port:
                        // nothing a person needs to read.
                        if f.held.bound && !f.held.owner.same_owner(&claim) {
                            tracing::info!(
                                event = "forward_retargeted",
                                host = %claim.host,
                                port = claim.local_port,
                                container = %claim.container_name,
                                container_id = %claim.container,
                                remote = %claim.remote,
                                "local port {} now forwards to container {}",
                                claim.local_port,
                                claim.container_name
                            );
                        }
                        f.target.send_modify(|t| *t = t.next(claim.clone(), now));
                        f.held.owner = claim;
                        f.since = SystemTime::now();
                    }
                }
                Action::Release(port) => {
                    if let Some(f) = self.forwards.remove(&port) {
                        if f.held.bound {
                            tracing::info!(
                                event = "forward_removed",
                                host = %f.held.owner.host,
                                port,
                                container = %f.held.owner.container_name,
                                container_id = %f.held.owner.container,
                                "released local port {port}"
                            );
                        }
                    }
                }
            }
        }
    }

    fn bind(&mut self, claim: Claim, ctx: &Rc<ServeContext>, now: Instant, retry: Duration) {
        let port = claim.local_port;
        let was_conflict = self.forwards.get(&port).is_some_and(|f| !f.held.bound);
        // Drop a previous (unbound) record before binding: it holds nothing.
        self.forwards.remove(&port);
        match bind_all(port, &claim.bind, &ctx.stored) {
            Ok(listeners) => {
                let target = watch::channel(Target::new(claim.clone(), now)).0;
                let stats = Rc::new(ConnStats::default());
                let (local_addrs, listener_fds, accept_tasks) =
                    serve_listeners(listeners, &target, &stats, ctx);
                tracing::info!(
                    event = "forward_added",
                    host = %claim.host,
                    port,
                    container = %claim.container_name,
                    container_id = %claim.container,
                    remote = %claim.remote,
                    "forwarding localhost:{port} to {} of container {}",
                    claim.remote,
                    claim.container_name
                );
                if was_conflict {
                    tracing::info!(
                        event = "forward_conflict_cleared",
                        port,
                        "local port {port} is free again"
                    );
                }
                self.forwards.insert(
                    port,
                    Forward {
                        held: Held {
                            owner: claim.clone(),
                            bound: true,
                            retry_at: None,
                        },
                        target,
                        reason: None,
                        since: SystemTime::now(),
                        local_addrs,
                        stats,
                        listener_fds,
                        accept_tasks,
                    },
                );
            }
            Err(reason) => {
                if !was_conflict {
                    tracing::warn!(
                        event = "forward_conflict",
                        host = %claim.host,
                        port,
                        container = %claim.container_name,
                        reason = %reason,
                        "cannot forward local port {port}: {reason}; retrying every {}s",
                        retry.as_secs()
                    );
                }
                self.forwards.insert(
                    port,
                    Forward {
                        held: Held {
                            owner: claim.clone(),
                            bound: false,
                            retry_at: Some(now + retry),
                        },
                        target: watch::channel(Target::new(claim, now)).0,
                        reason: Some(reason),
                        since: SystemTime::now(),
                        local_addrs: Vec::new(),
                        stats: Rc::new(ConnStats::default()),
                        listener_fds: Vec::new(),
                        accept_tasks: Vec::new(),
                    },
                );
            }
        }
    }
}

impl ForwardTable {
    /// Takes over a forward from the previous fwdd image: its listeners keep
    /// their queues, its tunnels are kept open and counted, and clients it
    /// had accepted but not handed over yet are served from the start.
    pub fn adopt(&mut self, a: AdoptedForward, ctx: &Rc<ServeContext>, now: Instant) {
        let port = a.claim.local_port;
        let mut target = Target::new(a.claim.clone(), now);
        target.running_since = a.running_for.map(|d| now.checked_sub(d).unwrap_or(now));
        target.listening.set(a.listening);
        let target = watch::channel(target).0;
        let stats = Rc::new(ConnStats::default());
        stats.total.set(a.connections_total);
        let (local_addrs, listener_fds, accept_tasks) =
            serve_listeners(a.listeners, &target, &stats, ctx);
        for fd in a.tunnels {
            spawn_adopted_tunnel(fd, port, stats.clone(), ctx.clone());
        }
        for fd in a.queued {
            let sock = std::net::TcpStream::from(fd);
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            // Counted once already, by the image that accepted it.
            stats.total.set(stats.total.get().saturating_sub(1));
            spawn_served(sock, target.subscribe(), stats.clone(), ctx.clone());
        }
        self.forwards.insert(
            port,
            Forward {
                held: Held {
                    owner: a.claim,
                    bound: true,
                    retry_at: None,
                },
                target,
                reason: None,
                since: a.since,
                local_addrs,
                stats,
                listener_fds,
                accept_tasks,
            },
        );
    }
}

type Served = (
    Vec<SocketAddr>,
    Vec<(SocketAddr, RawFd)>,
    Vec<JoinHandle<()>>,
);

/// One accept task per listener.
fn serve_listeners(
    listeners: Vec<TcpListener>,
    target: &watch::Sender<Target>,
    stats: &Rc<ConnStats>,
    ctx: &Rc<ServeContext>,
) -> Served {
    let mut addrs = Vec::new();
    let mut fds = Vec::new();
    let mut tasks = Vec::new();
    for l in listeners {
        if let Ok(addr) = l.local_addr() {
            addrs.push(addr);
            fds.push((addr, l.as_raw_fd()));
        }
        tasks.push(tokio::task::spawn_local(accept_loop(
            l,
            target.subscribe(),
            stats.clone(),
            ctx.clone(),
        )));
    }
    (addrs, fds, tasks)
}

/// Binds `port` on every address (by default 127.0.0.1 and [::1]). Any
/// address being taken is a conflict: a client resolving `localhost` may
/// try either. IPv6 loopback missing on the machine is not an error.
fn bind_all(
    port: u16,
    addrs: &[IpAddr],
    stored: &crate::systemd::StoredFds,
) -> Result<Vec<TcpListener>, String> {
    let mut out = Vec::new();
    for ip in addrs {
        let addr = SocketAddr::new(*ip, port);
        let name = crate::systemd::tcp_fd_name(addr);
        // After a crash: the listener the previous process had, with the
        // clients that queued on it meanwhile.
        if let Some(fd) = stored.take(&name) {
            out.push(TcpListener::from(fd));
            continue;
        }
        match listen(addr).inspect(|l| crate::systemd::store_fd(&name, l.as_fd())) {
            Ok(l) => {
                if !ip.is_loopback() {
                    tracing::warn!(event = "wide_bind", address = %addr, "listening on {addr}: reachable beyond this machine (configured by a rule)");
                }
                out.push(l)
            }
            Err(e)
                if *ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
                    && (e.kind() == io::ErrorKind::AddrNotAvailable
                        || e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT)) => {}
            Err(e) => return Err(describe_bind_error(addr, &e)),
        }
    }
    if out.is_empty() {
        return Err(format!("no address to listen on for port {port}"));
    }
    Ok(out)
}

/// Asked of `listen(2)`; the kernel silently caps it at its own limit
/// (`net.core.somaxconn`, `kern.ipc.somaxconn`). std's 128 drops a CI burst
/// at SYN, and the clients' kernels retry only after 1, 3, 7 s.
const LISTEN_BACKLOG: u32 = 65_535;

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // What std does for a listener: a restarted fwdd rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

fn describe_bind_error(addr: SocketAddr, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::AddrInUse {
        format!("{addr} is already in use by another program")
    } else {
        format!("cannot bind {addr}: {e}")
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: watch::Receiver<Target>,
    stats: Rc<ConnStats>,
    ctx: Rc<ServeContext>,
) {
    // Accepted sockets are never read or written here, only handed to the
    // master, so they skip tokio's reactor: registering and deregistering
    // each one cost two epoll_ctl calls on every connection's setup.
    let listener = match listener.set_nonblocking(true).and_then(|()| {
        // SAFETY: a std TcpListener owns its descriptor for its whole life.
        unsafe { AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)
    }) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(event = "accept_failed", error = %e, "a listener cannot be watched: {e}");
            return;
        }
    };
    let mut failures = fwd_core::RepeatGate::new(Duration::from_secs(60));
    let mut frozen = ctx.frozen.subscribe();
    loop {
        let _ = frozen.wait_for(|f| !*f).await;
        let accepted = tokio::select! {
            accepted = listener.async_io(tokio::io::Interest::READABLE, accept_nonblocking) => accepted,
            _ = frozen.wait_for(|f| *f) => continue,
        };
        match accepted {
            Ok(sock) => {
                failures.clear();
                // What ssh -L does for its own accepted sockets (set_nodelay in
                // channels.c): the master writes each channel packet to this
                // socket as it comes, and Nagle would hold a reply's second
                // small write until the first is acknowledged.
                let _ = sock.set_nodelay(true);
                spawn_served(sock, target.clone(), stats.clone(), ctx.clone());
            }
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                if failures.observe(&e.to_string(), Instant::now())
                    != fwd_core::repeat::Verdict::Suppress
                {
                    tracing::warn!(event = "accept_failed", error = %e, "accepting a connection failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A client socket, non-blocking as the master and the fd handover expect.
fn accept_nonblocking(listener: &std::net::TcpListener) -> io::Result<std::net::TcpStream> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::sys::socket::{accept4, SockFlag};
        use std::os::fd::FromRawFd;
        let fd = accept4(
            listener.as_raw_fd(),
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )?;
        // SAFETY: accept4 just returned this descriptor; nothing else owns it.
        Ok(std::net::TcpStream::from(unsafe {
            OwnedFd::from_raw_fd(fd)
        }))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let (sock, _) = listener.accept()?;
        sock.set_nonblocking(true)?;
        Ok(sock)
    }
}

/// Serves one client connection of a forward in its own task, counted.
fn spawn_served(
    sock: std::net::TcpStream,
    target: watch::Receiver<Target>,
    stats: Rc<ConnStats>,
    ctx: Rc<ServeContext>,
) {
    stats.open.set(stats.open.get() + 1);
    stats.total.set(stats.total.get() + 1);
    let port = target.borrow().claim.local_port;
    let registered = ctx.register(port, ConnState::Queued(sock.as_raw_fd()));
    tokio::task::spawn_local(async move {
        serve_connection(sock, target, &ctx, registered).await;
        stats.open.set(stats.open.get().saturating_sub(1));
    });
}

/// Keeps a tunnel the previous fwdd image handed over: its mux connection
/// stays open (the tunnel lives as long as it does) and is counted.
fn spawn_adopted_tunnel(fd: OwnedFd, port: u16, stats: Rc<ConnStats>, ctx: Rc<ServeContext>) {
    let tunnel = match fwd_ssh::StdioForward::adopt(fd) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(event = "upgrade_tunnel_lost", port, error = %e, "a handed-over tunnel could not be kept");
            return;
        }
    };
    stats.open.set(stats.open.get() + 1);
    let registered = ctx.register(port, ConnState::Tunnel(tunnel.as_raw_fd()));
    tokio::task::spawn_local(async move {
        tunnel.closed().await;
        drop(registered);
        stats.open.set(stats.open.get().saturating_sub(1));
    });
}

/// Hands one accepted connection to the host's master. While no master is
/// up, or the container is only created, the client waits (up to
/// `connect_wait`) instead of being refused; a refusal from a container that
/// started a moment ago is retried within the startup window (the schedule
/// is `fwd_core::retry_refused`), so the client sees a slow connect.
async fn serve_connection(
    sock: std::net::TcpStream,
    mut target: watch::Receiver<Target>,
    ctx: &Rc<ServeContext>,
    registered: Registered,
) {
    let mut deadline = tokio::time::Instant::now() + ctx.connect_wait.get();
    let claim = match tokio::time::timeout_at(deadline, target.wait_for(|t| !t.claim.pending)).await
    {
        Ok(Ok(t)) => t.claim.clone(),
        _ => {
            tracing::debug!("the container did not start in time; closing the connection");
            return;
        }
    };
    let Some(mut link_rx) = ctx.links.borrow().get(&claim.host).cloned() else {
        return;
    };
    let mut fallback_tried = false;
    let mut refusals = 0;
    let mut probes = 0;
    loop {
        let link = match tokio::time::timeout_at(deadline, link_rx.wait_for(Option::is_some)).await
        {
            Ok(Ok(link)) => match link.clone() {
                Some(l) => l,
                None => return,
            },
            _ => {
                tracing::debug!(
                    port = claim.local_port,
                    "no master in time; closing the connection"
                );
                return;
            }
        };
        let slots = ctx.handoff_slots(&claim.host);
        let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, slots.acquire()).await else {
            return;
        };
        let (running_since, listening) = {
            let t = target.borrow();
            (t.running_since, t.listening.clone())
        };
        let window = ctx.startup_window.get();
        if let Some(since) = running_since.filter(|_| !listening.get()) {
            if let Some(delay) = fwd_core::retry_refused(since.elapsed(), probes, window) {
                match ctx.remote_listens(&link, &claim).await {
                    Ok(true) => listening.set(true),
                    Ok(false) => {
                        probes += 1;
                        deadline = deadline.max((since + window).into());
                        drop(slot);
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    // The master is in trouble: the hand-off below says how.
                    Err(_) => {}
                }
            }
        }
        ctx.thawed().await;
        registered.set(ConnState::HandingOff);
        let attempt = async {
            let mux = ctx.mux_client(&claim.host, &link).await?;
            mux.open_stdio_forward(&claim.remote.ip, claim.remote.port, sock.as_fd())
                .await
        };
        let handed_off = tokio::time::timeout_at(deadline, attempt).await;
        ctx.refill(&claim.host, &link);
        drop(slot);
        registered.set(match &handed_off {
            Ok(Ok(tunnel)) => ConnState::Tunnel(tunnel.as_raw_fd()),
            _ => ConnState::Queued(sock.as_raw_fd()),
        });
        match handed_off {
            Ok(Ok(tunnel)) => {
                // The master holds its own copy of the socket now.
                drop(sock);
                tunnel.closed().await;
                return;
            }
            Ok(Err(MuxError::Refused(reason))) => {
                let running_since = target.borrow().running_since;
                let window = ctx.startup_window.get();
                let retry = running_since.and_then(|since| {
                    fwd_core::retry_refused(since.elapsed(), refusals, window)
                        .map(|d| (d, since + window))
                });
                let Some((delay, window_end)) = retry else {
                    tracing::debug!(port = claim.local_port, %reason, "remote end refused the connection");
                    return;
                };
                // A young container's service is not listening yet: the
                // master closed only its own copies of the socket, so the
                // same client can be handed over again.
                refusals += 1;
                deadline = deadline.max(window_end.into());
                tokio::time::sleep(delay).await;
                continue;
            }
            Ok(Err(e)) => {
                // Either the master is going away (a new one will come) or
                // the native mux path does not work with this master.
                let generation = link.generation;
                let changed = tokio::time::timeout(
                    Duration::from_millis(200),
                    link_rx.wait_for(|l| l.as_ref().map(|l| l.generation) != Some(generation)),
                )
                .await;
                if changed.is_err() && !fallback_tried {
                    fallback_tried = true;
                    tracing::debug!(error = %e, "mux stdio forward failed; trying ssh -W");
                    registered.set(ConnState::Fallback);
                    if run_fallback(&link, &claim, &sock).await {
                        return;
                    }
                }
            }
            Err(_) => return,
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
    }
}

/// `ssh -S ctl -W host:port` with the socket as its stdin and stdout.
/// Returns whether it ran (and so served the connection until it ended).
async fn run_fallback(link: &Link, claim: &Claim, sock: &std::net::TcpStream) -> bool {
    let Ok(mut cmd) = fwd_ssh::fallback_stdio_forward_command(
        &link.ssh,
        &link.control_path,
        &claim.remote.ip,
        claim.remote.port,
    ) else {
        return false;
    };
    let (Ok(a), Ok(b)) = (sock.try_clone(), sock.try_clone()) else {
        return false;
    };
    cmd.stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(a)))
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(b)))
        .stderr(std::process::Stdio::null());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    match cmd.spawn() {
        Ok(mut child) => child.wait().await.is_ok_and(|s| s.success()),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(port: u16) -> Claim {
        Claim {
            host: HostKey::from("h"),
            container: fwd_core::ContainerId::parse("0123456789ab").expect("id"),
            container_name: "c".into(),
            compose_project: None,
            container_port: 80,
            started_at_ns: 1,
            pending: false,
            local_port: port,
            bind: vec![IpAddr::from(std::net::Ipv4Addr::LOCALHOST)],
            remote: fwd_core::Remote {
                ip: "127.0.0.1".into(),
                port: 80,
            },
        }
    }

    /// An upgrade that freezes right after an accept must find the client:
    /// it is registered in the same step, before its task has run.
    #[tokio::test]
    async fn an_accepted_client_is_registered_before_its_task_runs() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let ctx = Rc::new(ServeContext::new(
                    Duration::from_secs(1),
                    Duration::ZERO,
                    crate::systemd::StoredFds::default(),
                ));
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let addr = listener.local_addr().expect("addr");
                let client = std::net::TcpStream::connect(addr).expect("connect");
                let (sock, _) = listener.accept().expect("accept");
                let fd = sock.as_raw_fd();
                let target = watch::channel(Target::new(claim(addr.port()), Instant::now())).0;
                spawn_served(
                    sock,
                    target.subscribe(),
                    Rc::new(ConnStats::default()),
                    ctx.clone(),
                );
                // No await since: the task has not run.
                let held = ctx.held_conns();
                assert_eq!(
                    held.get(&addr.port()).map(|h| h.queued.clone()),
                    Some(vec![fd])
                );
                drop(client);
            })
            .await;
    }
}
