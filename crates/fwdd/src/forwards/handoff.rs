//! One client of a forward, from accept to tunnel: it waits for the link
//! and for its container to start and listen, then is handed to the master
//! (or, where the native mux path fails, to an `ssh -W` child).

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use fwd_core::{judge_direct_failure, Claim, DirectFailure, Remote};
use fwd_metrics::FailureReason;
use fwd_ssh::{MuxError, StdioForward};
use tokio::sync::watch;

use super::target::{ConnStats, RouteNow, Target};
use crate::serve::{ConnKey, ConnState, Link, LinkWatch, Registered, ServeContext};

/// Serves one client connection of a forward in its own task, counted.
pub(super) fn spawn_served(
    sock: std::net::TcpStream,
    target: watch::Receiver<Target>,
    stats: Rc<ConnStats>,
    ctx: Rc<ServeContext>,
) {
    stats.open.set(stats.open.get() + 1);
    stats.total.set(stats.total.get() + 1);
    let (key, host) = {
        let t = target.borrow();
        (t.key, t.claim.host.clone())
    };
    let counters = ctx.counters(&host);
    counters.connection();
    if matches!(key, ConnKey::Name(_)) {
        counters.name_connection();
    }
    let accepted = std::time::Instant::now();
    let registered = ctx
        .registry
        .register(key, ConnState::Queued(sock.as_raw_fd()));
    let ended = target.clone();
    tokio::task::spawn_local(async move {
        let opened = || counters.handoff.observe(accepted.elapsed());
        if let Served::Failed(why) = serve_connection(sock, target, &ctx, registered, opened).await
        {
            counters.failed(why);
        }
        stats.open.set(stats.open.get().saturating_sub(1));
        stats.ended(&ended.borrow(), &ctx);
    });
}

/// Keeps a tunnel the previous fwdd image handed over: its mux connection
/// stays open (the tunnel lives as long as it does) and is counted.
pub(super) fn spawn_adopted_tunnel(
    fd: OwnedFd,
    key: ConnKey,
    stats: Rc<ConnStats>,
    ctx: Rc<ServeContext>,
) {
    let tunnel = match fwd_ssh::StdioForward::adopt(fd) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(event = "upgrade_tunnel_lost", listener = ?key, error = %e, "a handed-over tunnel could not be kept");
            return;
        }
    };
    stats.open.set(stats.open.get() + 1);
    let registered = ctx
        .registry
        .register(key, ConnState::Tunnel(tunnel.as_raw_fd()));
    tokio::task::spawn_local(async move {
        tunnel.closed().await;
        drop(registered);
        stats.open.set(stats.open.get().saturating_sub(1));
    });
}

/// How a client's connection was served.
enum Served {
    /// Through a tunnel of the master.
    Tunnel,
    /// By the `ssh -W` fallback.
    Fallback,
    Failed(FailureReason),
}

/// Hands one accepted connection to the host's master. While no master is
/// up, or the container is only created, the client waits (up to
/// `connect_wait`) instead of being refused; a refusal from a container that
/// started a moment ago is retried within the startup window, so the client
/// sees a slow connect. On the direct route a refusal is exact (nothing
/// listens yet: `fwd_core::retry_direct_refused`); on the published port
/// docker-proxy accepts for the container, so a young container is probed
/// first (`fwd_core::retry_refused`). A direct route is checked once per run
/// of the container on a channel of fwd's own, which may be abandoned
/// unanswered; a direct route that fails otherwise than by a refusal is left
/// for the published port at once.
async fn serve_connection(
    sock: std::net::TcpStream,
    mut target: watch::Receiver<Target>,
    ctx: &Rc<ServeContext>,
    registered: Registered,
    opened: impl FnOnce(),
) -> Served {
    let deadline = tokio::time::Instant::now() + ctx.connect_wait.get();
    let Some(claim) = wait_started(&mut target, deadline).await else {
        return Served::Failed(FailureReason::NotStarted);
    };
    let Some(mut link_rx) = ctx.link_watch(&claim.host) else {
        return Served::Failed(FailureReason::NoMaster);
    };
    let mut tries = Tries::until(deadline);
    let client = Client { registered, sock };
    loop {
        let Some(link) = wait_for_link(&mut link_rx, tries.deadline, &claim).await else {
            return Served::Failed(FailureReason::NoMaster);
        };
        let slots = ctx.handoff_slots(&claim.host);
        let Ok(Ok(slot)) = tokio::time::timeout_at(tries.deadline, slots.acquire()).await else {
            return Served::Failed(FailureReason::Handoff);
        };
        let seen = TargetNow::of(&target.borrow(), ctx.startup_window.get());
        if let Some(delay) = not_listening_yet(ctx, &claim, &link, &seen, &mut tries).await {
            drop(slot);
            tokio::time::sleep(delay).await;
            continue;
        }
        ctx.thawed().await;
        client.registered.set(ConnState::HandingOff);
        let witness = witness(&link, &seen);
        let Some((mut handed_off, check)) =
            hand_off(ctx, &claim, &link, &seen, &client.sock, tries.deadline).await
        else {
            return Served::Failed(FailureReason::Handoff);
        };
        drop(slot);
        if let Some(check) = check {
            client.queued();
            drop(check);
            match checked(ctx, &claim, &seen, handed_off, &mut tries.deadline) {
                Some(as_for_a_client) => handed_off = as_for_a_client,
                None => continue,
            }
        }
        client.handed_off(&handed_off);
        match handed_off {
            Ok(Ok(tunnel)) => {
                opened();
                // The master holds its own copy of the socket now.
                drop(client.sock);
                tunnel.closed().await;
                return Served::Tunnel;
            }
            Ok(Err(MuxError::Refused(reason))) => {
                match refused(ctx, &target, &claim, &seen, witness, &reason, &mut tries) {
                    Refusal::RouteFailed => continue,
                    Refusal::NotYet(delay) => {
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    Refusal::Final => return Served::Failed(FailureReason::Refused),
                }
            }
            Ok(Err(e)) => {
                if fall_back(e, &mut link_rx, &link, &seen, &client, &mut tries).await {
                    return Served::Fallback;
                }
            }
            Err(_) => return Served::Failed(FailureReason::Handoff),
        }
        if tokio::time::Instant::now() >= tries.deadline {
            return Served::Failed(FailureReason::Handoff);
        }
    }
}

/// The client's socket and its entry in the registry of connections (what an
/// upgrade hands over of it).
/// (The entry goes first when it ends, as it did when both were locals.)
struct Client {
    registered: Registered,
    sock: std::net::TcpStream,
}

impl Client {
    /// Waiting in fwdd, its socket its own.
    fn queued(&self) {
        self.registered
            .set(ConnState::Queued(self.sock.as_raw_fd()));
    }

    /// After a hand-off: the tunnel's mux connection, or queued again.
    fn handed_off(&self, handed_off: &HandedOff) {
        match handed_off {
            Ok(Ok(tunnel)) => self.registered.set(ConnState::Tunnel(tunnel.as_raw_fd())),
            _ => self.queued(),
        }
    }
}

/// How long the client may still wait, and its tries so far.
struct Tries {
    deadline: tokio::time::Instant,
    /// Refusals of a young container (the retry schedule's attempt).
    refusals: u32,
    /// Probes of the published port that found nothing listening.
    probes: u32,
    /// Whether `ssh -W` was tried (once per client).
    fallback_tried: bool,
}

impl Tries {
    fn until(deadline: tokio::time::Instant) -> Tries {
        Tries {
            deadline,
            refusals: 0,
            probes: 0,
            fallback_tried: false,
        }
    }
}

/// The claim once its container runs: a client of a created container waits
/// for its start until `deadline`.
async fn wait_started(
    target: &mut watch::Receiver<Target>,
    deadline: tokio::time::Instant,
) -> Option<Claim> {
    match tokio::time::timeout_at(deadline, target.wait_for(|t| !t.claim.pending)).await {
        Ok(Ok(t)) => Some(t.claim.clone()),
        _ => {
            tracing::debug!("the container did not start in time; closing the connection");
            None
        }
    }
}

/// On a direct route, a mark in the master's log taken before the request:
/// the mux answer never says why a channel failed, the log does.
fn witness<'l>(
    link: &'l Link,
    seen: &TargetNow,
) -> Option<(&'l fwd_ssh::ChannelFailures, fwd_ssh::FailureMark)> {
    link.channel_failures
        .as_ref()
        .filter(|_| seen.route.direct)
        .map(|f| (f, f.mark()))
}

/// What a connection's target says at one try: how long the container has
/// run, whether its published port is known to listen, and the route to take.
struct TargetNow {
    running_since: Option<std::time::Instant>,
    listening: Rc<Cell<bool>>,
    direct_failed: Rc<RefCell<Option<String>>>,
    direct_verified: Rc<Cell<bool>>,
    route: RouteNow,
    /// `startup_window` when the try began.
    window: Duration,
}

impl TargetNow {
    fn of(t: &Target, window: Duration) -> TargetNow {
        TargetNow {
            running_since: t.running_since,
            listening: t.listening.clone(),
            direct_failed: t.direct_failed.clone(),
            direct_verified: t.direct_verified.clone(),
            route: t.route_now(),
            window,
        }
    }
}

/// The host's link, once it is up; the client gives up at `deadline`.
async fn wait_for_link(
    link_rx: &mut LinkWatch,
    deadline: tokio::time::Instant,
    claim: &Claim,
) -> Option<Link> {
    match tokio::time::timeout_at(deadline, link_rx.wait_for(Option::is_some)).await {
        Ok(Ok(link)) => link.clone(),
        _ => {
            tracing::debug!(
                port = claim.local_port,
                "no master in time; closing the connection"
            );
            None
        }
    }
}

/// On the published port docker-proxy accepts for a young container that
/// does not listen yet, so it is probed first (`fwd_core::retry_refused`).
/// `Some(delay)` when it does not listen yet: try again after `delay`, the
/// client waiting at least until the window's end. A probe the master
/// cannot carry says nothing: the hand-off that follows says how.
async fn not_listening_yet(
    ctx: &ServeContext,
    claim: &Claim,
    link: &Link,
    seen: &TargetNow,
    tries: &mut Tries,
) -> Option<Duration> {
    let since = seen
        .running_since
        .filter(|_| !seen.route.direct && !seen.listening.get())?;
    let delay = fwd_core::retry_refused(since.elapsed(), tries.probes, seen.window)?;
    match ctx.remote_listens(&claim.host, link, &seen.route.to).await {
        Ok(true) => seen.listening.set(true),
        Ok(false) => {
            tries.probes += 1;
            tries.deadline = tries.deadline.max((since + seen.window).into());
            return Some(delay);
        }
        Err(_) => {}
    }
    None
}

/// Hands the client to the master, within `deadline`; on a direct route not
/// verified yet, a socket of fwd's own goes first, and is returned with the
/// outcome (the caller closes it once the slot is given back).
async fn hand_off(
    ctx: &ServeContext,
    claim: &Claim,
    link: &Link,
    seen: &TargetNow,
    sock: &std::net::TcpStream,
    deadline: tokio::time::Instant,
) -> Option<(HandedOff, Option<(UnixStream, UnixStream)>)> {
    // A direct route is first opened on a channel of fwd's own: an open
    // that hangs (packets dropped on the way) is abandoned after
    // `DIRECT_OPEN_WITHIN`, and the master keeps the abandoned channel's
    // socket until sshd gives up, minutes later — it must not be the
    // client's, or the channel could still open onto it.
    let check = if seen.route.direct && !seen.direct_verified.get() {
        match UnixStream::pair() {
            Ok(pair) => Some(pair),
            Err(_) => return None,
        }
    } else {
        None
    };
    let (fd, open_by) = match &check {
        Some((_, theirs)) => {
            let ran_for = seen.running_since.map(|t| t.elapsed());
            let within = fwd_core::direct_open_within(ran_for, seen.window);
            (
                theirs.as_fd(),
                deadline.min(tokio::time::Instant::now() + within),
            )
        }
        None => (sock.as_fd(), deadline),
    };
    let handed_off =
        tokio::time::timeout_at(open_by, ctx.hand_off(&claim.host, link, &seen.route.to, fd)).await;
    Some((handed_off, check))
}

/// The outcome of a hand-off: the tunnel, the master's answer, or the
/// deadline.
type HandedOff = Result<Result<StdioForward, MuxError>, tokio::time::error::Elapsed>;

/// The direct route's check on a channel of fwd's own: `None` to try again
/// (the route works now, or its silence was judged), else the outcome to
/// treat as a client's (a refusal, the master's trouble).
fn checked(
    ctx: &ServeContext,
    claim: &Claim,
    seen: &TargetNow,
    handed_off: HandedOff,
    deadline: &mut tokio::time::Instant,
) -> Option<HandedOff> {
    match handed_off {
        Ok(Ok(_tunnel)) => {
            // The route works: the client goes the same way now.
            seen.direct_verified.set(true);
            None
        }
        Err(_) => {
            let ran_for = seen.running_since.map(|t| t.elapsed());
            match fwd_core::judge_direct_silence(ran_for, seen.window) {
                DirectFailure::NotListening => {
                    if let Some(since) = seen.running_since {
                        *deadline = (*deadline).max((since + seen.window).into());
                    }
                }
                DirectFailure::RouteFailed(why) => {
                    ctx.direct_route_failed(claim, &seen.route.to, why, &seen.direct_failed);
                    // The client's wait went to the check: the published
                    // port gets time of its own.
                    let grace = tokio::time::Instant::now() + fwd_core::DIRECT_OPEN_WITHIN;
                    *deadline = (*deadline).max(grace);
                }
            }
            None
        }
        // A refusal or the master's trouble: as for a client.
        other => Some(other),
    }
}

/// What a refusal means for the client.
enum Refusal {
    /// The direct route failed otherwise than by a refusal: the client
    /// goes to the published port at once.
    RouteFailed,
    /// A young container's service does not listen yet: the master closed
    /// only its own copies of the socket, so the same client is handed over
    /// again after the delay (it waits at least until the window's end).
    NotYet(Duration),
    /// Past the startup window: the refusal is the answer.
    Final,
}

/// Judges a refusal. On the direct route it is exact when the master's log
/// says so (`fwd_core::retry_direct_refused`); on the published port the
/// container may be young (`fwd_core::retry_refused`).
fn refused(
    ctx: &ServeContext,
    target: &watch::Receiver<Target>,
    claim: &Claim,
    seen: &TargetNow,
    witness: Option<(&fwd_ssh::ChannelFailures, fwd_ssh::FailureMark)>,
    reason: &str,
    tries: &mut Tries,
) -> Refusal {
    if seen.route.direct {
        // The mux answer never says why: the master's log does.
        let reasons = witness
            .and_then(|(failures, mark)| failures.since(mark))
            .unwrap_or_default();
        if let DirectFailure::RouteFailed(why) = judge_direct_failure(&reasons) {
            ctx.direct_route_failed(claim, &seen.route.to, why, &seen.direct_failed);
            return Refusal::RouteFailed;
        }
        // The container's address answered (nothing listens yet): the
        // route works, clients go on it directly.
        seen.direct_verified.set(true);
    }
    let running_since = target.borrow().running_since;
    let window = ctx.startup_window.get();
    let schedule = if seen.route.direct {
        fwd_core::retry_direct_refused
    } else {
        fwd_core::retry_refused
    };
    let retry = running_since.and_then(|since| {
        schedule(since.elapsed(), tries.refusals, window).map(|d| (d, since + window))
    });
    let Some((delay, window_end)) = retry else {
        tracing::debug!(port = claim.local_port, to = %seen.route.to, %reason, "remote end refused the connection");
        return Refusal::Final;
    };
    tries.refusals += 1;
    tries.deadline = tries.deadline.max(window_end.into());
    Refusal::NotYet(delay)
}

/// After a hand-off failed on the master: either the master is going away
/// (a new one will come, within 200 ms) or the native mux path does not work
/// with this master, and `ssh -W` serves the client instead, once. Returns
/// whether it did.
async fn fall_back(
    e: MuxError,
    link_rx: &mut LinkWatch,
    link: &Link,
    seen: &TargetNow,
    client: &Client,
    tries: &mut Tries,
) -> bool {
    let generation = link.generation;
    let changed = tokio::time::timeout(
        Duration::from_millis(200),
        link_rx.wait_for(|l| l.as_ref().map(|l| l.generation) != Some(generation)),
    )
    .await;
    if changed.is_ok() || tries.fallback_tried {
        return false;
    }
    tries.fallback_tried = true;
    tracing::debug!(error = %e, "mux stdio forward failed; trying ssh -W");
    client.registered.set(ConnState::Fallback);
    run_fallback(link, &seen.route.to, &client.sock).await
}

/// `ssh -S ctl -W host:port` with the socket as its stdin and stdout.
/// Returns whether it ran (and so served the connection until it ended).
async fn run_fallback(link: &Link, to: &Remote, sock: &std::net::TcpStream) -> bool {
    let Ok(mut cmd) =
        fwd_ssh::fallback_stdio_forward_command(&link.ssh, &link.control_path, &to.ip, to.port)
    else {
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
    use std::net::{IpAddr, TcpListener};
    use std::time::Instant;

    use fwd_core::{Claim, HostKey};

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
            route: fwd_core::Route::Published(fwd_core::PublishedWhy::Configured),
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
                    crate::fdstore::StoredFds::default(),
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
                let held = ctx.registry.held();
                assert_eq!(
                    held.get(&ConnKey::Port(addr.port()))
                        .map(|h| h.queued.clone()),
                    Some(vec![fd])
                );
                drop(client);
            })
            .await;
    }
}
