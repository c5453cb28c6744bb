//! The serving layer: what every connection fwdd serves shares, whichever
//! listener accepted it (a forwarded port, an engine socket).
//!
//! - each host's [`Link`], published by its driver, waited for by clients;
//! - the hand-off: a channel through the master on a [spare](spares) mux
//!   connection, at most [`HANDOFFS_IN_FLIGHT`] per host at once;
//! - the upgrade's freeze, and the [registry](registry) of connections it
//!   hands over;
//! - `connect_wait` and `startup_window`, the daemon-wide waits;
//! - the listeners systemd's fd store gave back, until a bind takes them;
//! - the [caps](budget) on what one party holds, and accept failures.
//!
//! It knows no forward, engine socket or host driver: those are built on it.

mod budget;
mod link;
mod registry;
pub mod relay;
mod spares;
pub mod starts;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use fwd_core::{Claim, HostKey, Remote};
use fwd_ssh::{MuxError, StdioForward};
use tokio::sync::{watch, Semaphore};

pub use budget::Holder;
pub use link::{Link, LinkWatch};
pub use registry::{ConnKey, ConnState, Registered, Registry};
use spares::Spares;

/// Concurrent hand-offs per host: ssh's control socket listens with a
/// backlog of 64, and a burst of clients (hundreds waiting for a master that
/// just came back) must queue here, not overflow it.
const HANDOFFS_IN_FLIGHT: usize = 32;

pub struct ServeContext {
    links: RefCell<BTreeMap<HostKey, LinkWatch>>,
    pub connect_wait: Cell<Duration>,
    /// How long after a container starts a refused channel is retried.
    pub startup_window: Cell<Duration>,
    spares: Spares,
    handoffs: RefCell<BTreeMap<HostKey, Rc<Semaphore>>>,
    /// Each host's hot-path counters (see `fwd_metrics`).
    counters: RefCell<BTreeMap<HostKey, std::sync::Arc<fwd_metrics::HostCounters>>>,
    /// Set while a binary upgrade collects what to hand over: nothing is
    /// accepted and no hand-off starts (the kernel's backlog holds new
    /// clients meanwhile); cleared again if the upgrade fails.
    pub frozen: watch::Sender<bool>,
    /// Every client connection of a forward that fwdd still holds.
    pub registry: Registry,
    /// Listeners systemd's fd store gave back after a crash, until a bind
    /// takes them (see `fdstore`).
    pub stored: crate::fdstore::StoredFds,
    /// Containers started through the engine sockets (see `starts`).
    pub starts: starts::Starts,
    /// Each host's failed direct routes, logged once per reason, then
    /// counted.
    direct_failures: RefCell<BTreeMap<HostKey, fwd_core::RepeatGate>>,
    /// The caps in force (`fwd_core::budget`): from the open-files limit
    /// and the configuration, set again on reload.
    pub limits: Cell<fwd_core::Limits>,
    /// Failed `accept(2)` calls on any socket fwdd serves.
    pub accept_failures: Cell<u64>,
}

/// How often a direct route failing again for the same reason is
/// summarised in the log.
const DIRECT_FAILURE_SUMMARY: Duration = Duration::from_secs(60);

impl ServeContext {
    pub fn new(
        connect_wait: Duration,
        startup_window: Duration,
        stored: crate::fdstore::StoredFds,
    ) -> Self {
        ServeContext {
            links: RefCell::default(),
            connect_wait: Cell::new(connect_wait),
            startup_window: Cell::new(startup_window),
            spares: Spares::default(),
            handoffs: RefCell::default(),
            counters: RefCell::default(),
            frozen: watch::channel(false).0,
            registry: Registry::default(),
            stored,
            starts: starts::Starts::default(),
            direct_failures: RefCell::default(),
            limits: Cell::new(fwd_core::Limits::for_open_files(
                crate::fdlimit::current(),
                fwd_core::LimitSettings::default(),
            )),
            accept_failures: Cell::new(0),
        }
    }

    /// A host joins: its connections wait on `link`.
    pub fn add_host(&self, host: &HostKey, link: LinkWatch) {
        self.links.borrow_mut().insert(host.clone(), link);
        self.spares.add_host(host);
    }

    /// A new client of `holder`, which holds `held` under `cap`: `true` to
    /// serve it; `false` to close it at once (see [`budget::admit`]).
    pub fn admit(
        &self,
        refusals: &mut fwd_core::Refusals,
        held: u64,
        cap: u64,
        holder: &Holder<'_>,
    ) -> bool {
        budget::admit(refusals, held, cap, holder)
    }

    /// A client of `holder` ended, leaving `held` under `cap`.
    pub fn released(
        &self,
        refusals: &mut fwd_core::Refusals,
        held: u64,
        cap: u64,
        holder: &Holder<'_>,
    ) {
        budget::released(refusals, held, cap, holder);
    }

    /// `accept(2)` on `socket` failed: counted, said once per episode and
    /// waited out (see [`budget::accept_failed`]).
    pub async fn accept_failed(
        &self,
        backoff: &mut fwd_core::AcceptBackoff,
        socket: &str,
        e: &std::io::Error,
    ) {
        self.accept_failures.set(self.accept_failures.get() + 1);
        budget::accept_failed(backoff, socket, e).await;
    }

    /// An accept on `socket` succeeded: an episode of failures that has
    /// been quiet for long enough is over.
    pub fn accept_succeeded(&self, backoff: &mut fwd_core::AcceptBackoff, socket: &str) {
        budget::accept_succeeded(backoff, socket);
    }

    /// The host left the configuration: its link, spares and slots go.
    pub fn forget_host(&self, host: &HostKey) {
        self.links.borrow_mut().remove(host);
        self.spares.forget_host(host);
        self.handoffs.borrow_mut().remove(host);
        self.starts.forget_host(host);
        self.direct_failures.borrow_mut().remove(host);
    }

    /// A forward's direct route failed (not refused): recorded in `failed`,
    /// its connections take the published port from now on. Said once per
    /// host and reason, then counted.
    pub fn direct_route_failed(
        &self,
        claim: &Claim,
        to: &Remote,
        why: String,
        failed: &RefCell<Option<String>>,
    ) {
        let verdict = self
            .direct_failures
            .borrow_mut()
            .entry(claim.host.clone())
            .or_insert_with(|| fwd_core::RepeatGate::new(DIRECT_FAILURE_SUMMARY))
            .observe(&why, Instant::now());
        match verdict {
            fwd_core::Verdict::Log => tracing::warn!(
                event = "direct_route_failed",
                host = %claim.host,
                port = claim.local_port,
                container = %claim.container_name,
                container_id = %claim.container,
                direct = %to,
                published = %claim.remote,
                reason = %why,
                "the direct route to {} of container {} failed ({why}); its connections take the published port {}",
                to, claim.container_name, claim.remote
            ),
            fwd_core::Verdict::Summary { repeats } => tracing::warn!(
                event = "direct_route_failed",
                host = %claim.host,
                reason = %why,
                repeats,
                "{repeats} more direct routes failed on {} ({why}); they take the published port",
                claim.host
            ),
            fwd_core::Verdict::Suppress => {}
        }
        failed.replace(Some(why));
    }

    /// The host's hot-path counters, handed out once per connection: counting
    /// is then an atomic add, no lookup.
    pub fn counters(&self, host: &HostKey) -> std::sync::Arc<fwd_metrics::HostCounters> {
        self.counters
            .borrow_mut()
            .entry(host.clone())
            .or_default()
            .clone()
    }

    /// The host's link, to wait on (`None`: no such host).
    pub fn link_watch(&self, host: &HostKey) -> Option<LinkWatch> {
        self.links.borrow().get(host).cloned()
    }

    /// The host's link if it is up now.
    pub fn link(&self, host: &HostKey) -> Option<Link> {
        self.links
            .borrow()
            .get(host)
            .and_then(|l| l.borrow().clone())
    }

    /// Returns at once unless frozen; while frozen, never (the process is
    /// about to become the next image, or thaws if the upgrade fails).
    pub async fn thawed(&self) {
        let mut rx = self.frozen.subscribe();
        let _ = rx.wait_for(|frozen| !*frozen).await;
    }

    /// A place among the host's hand-offs in flight (see [`HANDOFFS_IN_FLIGHT`]).
    pub fn handoff_slots(&self, host: &HostKey) -> Rc<Semaphore> {
        self.handoffs
            .borrow_mut()
            .entry(host.clone())
            .or_insert_with(|| Rc::new(Semaphore::new(HANDOFFS_IN_FLIGHT)))
            .clone()
    }

    /// Hands `fd` to the host's master as a stdio forward to `to` (as the
    /// host sees it): one request on a spare mux connection, refilled after
    /// the reply. The returned forward's mux connection keeps the channel
    /// open.
    pub async fn hand_off(
        &self,
        host: &HostKey,
        link: &Link,
        to: &Remote,
        fd: BorrowedFd<'_>,
    ) -> Result<StdioForward, MuxError> {
        let opened = async {
            let mux = self.spares.client(host, link).await?;
            mux.open_stdio_forward(&to.ip, to.port, fd).await
        }
        .await;
        self.spares.refill(host, link);
        opened
    }

    /// Opens a channel to `to` through the host's master and closes it
    /// again: `Ok` when something accepts connections there. Goes the way
    /// real connections go (spare mux connection included).
    pub async fn probe_remote(
        &self,
        host: &HostKey,
        link: &Link,
        to: &Remote,
    ) -> Result<(), String> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            self.hand_off(host, link, to, theirs.as_fd()),
        )
        .await;
        drop(ours);
        match result {
            Ok(Ok(_tunnel)) => Ok(()),
            Ok(Err(MuxError::Refused(reason))) => Err(format!(
                "nothing accepts connections at {to} on {host}: {reason}"
            )),
            Ok(Err(e)) => Err(format!("probing {to} failed: {e}")),
            Err(_) => Err(format!("probing {to} timed out")),
        }
    }

    /// Whether something really listens at `to` (a published port): a
    /// probe channel that is refused, or that opens and ends within a few
    /// round trips (Docker's userland proxy accepting for a container that
    /// does not listen yet), says no.
    pub async fn remote_listens(
        &self,
        host: &HostKey,
        link: &Link,
        to: &Remote,
    ) -> Result<bool, MuxError> {
        use tokio::io::AsyncReadExt;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let mut ours = tokio::net::UnixStream::from_std(ours)?;
        let t0 = Instant::now();
        let tunnel = match self.hand_off(host, link, to, theirs.as_fd()).await {
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

    /// The master's mux alive check, on an idle spare connection when there
    /// is one (one request instead of connect + hello + request: health
    /// ticks are most of fwdd's idle wakeups).
    pub async fn alive_check(&self, host: &HostKey, link: &Link) -> Result<u32, MuxError> {
        let mut client = self.spares.client(host, link).await?;
        let pid = client.alive_check().await?;
        self.spares.put_back(host, link, client);
        Ok(pid)
    }
}

/// What keeps an engine stream's session open (a `dial-stdio` session):
/// drop it with the stream.
pub struct EngineSession(
    #[allow(dead_code)] Option<(fwd_ssh::Session, tokio::net::unix::pipe::Receiver)>,
);

/// A new connection to the host's engine over the link's route, for fwdd's
/// own short questions (the expose task's gateway).
pub async fn engine_stream(
    link: &Link,
) -> Result<(tokio::net::UnixStream, EngineSession), MuxError> {
    match link.engine {
        fwd_core::EngineRoute::StreamLocal => {
            let s = tokio::net::UnixStream::connect(&link.engine_forward).await?;
            Ok((s, EngineSession(None)))
        }
        fwd_core::EngineRoute::DialStdio => {
            let fwd_ssh::RemoteProcess {
                stdio,
                stderr,
                session,
            } = fwd_ssh::spawn_remote(&link.control_path, fwd_docker::DIAL_STDIO_COMMAND).await?;
            Ok((stdio, EngineSession(Some((session, stderr)))))
        }
    }
}
