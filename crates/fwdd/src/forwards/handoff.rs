//! One client of a forward, from accept to tunnel: it waits for the link
//! and for its container to start and listen, then is handed to the master
//! (or, where the native mux path fails, to an `ssh -W` child).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use fwd_core::{judge_direct_failure, DirectFailure, Remote};
use fwd_metrics::FailureReason;
use fwd_ssh::MuxError;
use tokio::sync::watch;

use super::target::{ConnStats, Target};
use crate::serve::{ConnState, Link, Registered, ServeContext};

/// Serves one client connection of a forward in its own task, counted.
pub(super) fn spawn_served(
    sock: std::net::TcpStream,
    target: watch::Receiver<Target>,
    stats: Rc<ConnStats>,
    ctx: Rc<ServeContext>,
) {
    stats.open.set(stats.open.get() + 1);
    stats.total.set(stats.total.get() + 1);
    let (port, host) = {
        let t = target.borrow();
        (t.claim.local_port, t.claim.host.clone())
    };
    let counters = ctx.counters(&host);
    counters.connection();
    let accepted = std::time::Instant::now();
    let registered = ctx
        .registry
        .register(port, ConnState::Queued(sock.as_raw_fd()));
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
    port: u16,
    stats: Rc<ConnStats>,
    ctx: Rc<ServeContext>,
) {
    let tunnel = match fwd_ssh::StdioForward::adopt(fd) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(event = "upgrade_tunnel_lost", port, error = %e, "a handed-over tunnel could not be kept");
            return;
        }
    };
    stats.open.set(stats.open.get() + 1);
    let registered = ctx
        .registry
        .register(port, ConnState::Tunnel(tunnel.as_raw_fd()));
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
    let mut deadline = tokio::time::Instant::now() + ctx.connect_wait.get();
    let claim = match tokio::time::timeout_at(deadline, target.wait_for(|t| !t.claim.pending)).await
    {
        Ok(Ok(t)) => t.claim.clone(),
        _ => {
            tracing::debug!("the container did not start in time; closing the connection");
            return Served::Failed(FailureReason::NotStarted);
        }
    };
    let Some(mut link_rx) = ctx.link_watch(&claim.host) else {
        return Served::Failed(FailureReason::NoMaster);
    };
    let mut fallback_tried = false;
    let mut refusals = 0;
    let mut probes = 0;
    loop {
        let link = match tokio::time::timeout_at(deadline, link_rx.wait_for(Option::is_some)).await
        {
            Ok(Ok(link)) => match link.clone() {
                Some(l) => l,
                None => return Served::Failed(FailureReason::NoMaster),
            },
            _ => {
                tracing::debug!(
                    port = claim.local_port,
                    "no master in time; closing the connection"
                );
                return Served::Failed(FailureReason::NoMaster);
            }
        };
        let slots = ctx.handoff_slots(&claim.host);
        let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, slots.acquire()).await else {
            return Served::Failed(FailureReason::Handoff);
        };
        let (running_since, listening, direct_failed, direct_verified, route) = {
            let t = target.borrow();
            (
                t.running_since,
                t.listening.clone(),
                t.direct_failed.clone(),
                t.direct_verified.clone(),
                t.route_now(),
            )
        };
        let window = ctx.startup_window.get();
        if let Some(since) = running_since.filter(|_| !route.direct && !listening.get()) {
            if let Some(delay) = fwd_core::retry_refused(since.elapsed(), probes, window) {
                match ctx.remote_listens(&claim.host, &link, &route.to).await {
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
        let witness = link
            .channel_failures
            .as_ref()
            .filter(|_| route.direct)
            .map(|f| (f, f.mark()));
        // A direct route is first opened on a channel of fwd's own: an open
        // that hangs (packets dropped on the way) is abandoned after
        // `DIRECT_OPEN_WITHIN`, and the master keeps the abandoned channel's
        // socket until sshd gives up, minutes later — it must not be the
        // client's, or the channel could still open onto it.
        let verify = route.direct && !direct_verified.get();
        let check = if verify {
            match std::os::unix::net::UnixStream::pair() {
                Ok(pair) => Some(pair),
                Err(_) => return Served::Failed(FailureReason::Handoff),
            }
        } else {
            None
        };
        let (fd, open_by) = match &check {
            Some((_, theirs)) => {
                let within =
                    fwd_core::direct_open_within(running_since.map(|t| t.elapsed()), window);
                (
                    theirs.as_fd(),
                    deadline.min(tokio::time::Instant::now() + within),
                )
            }
            None => (sock.as_fd(), deadline),
        };
        let mut handed_off =
            tokio::time::timeout_at(open_by, ctx.hand_off(&claim.host, &link, &route.to, fd)).await;
        drop(slot);
        if let Some(check) = check {
            registered.set(ConnState::Queued(sock.as_raw_fd()));
            drop(check);
            match handed_off {
                Ok(Ok(_tunnel)) => {
                    // The route works: the client goes the same way now.
                    direct_verified.set(true);
                    continue;
                }
                Err(_) => {
                    let silence =
                        fwd_core::judge_direct_silence(running_since.map(|t| t.elapsed()), window);
                    match silence {
                        DirectFailure::NotListening => {
                            if let Some(since) = running_since {
                                deadline = deadline.max((since + window).into());
                            }
                        }
                        DirectFailure::RouteFailed(why) => {
                            ctx.direct_route_failed(&claim, &route.to, why, &direct_failed);
                            // The client's wait went to the check: the
                            // published port gets time of its own.
                            let grace = tokio::time::Instant::now() + fwd_core::DIRECT_OPEN_WITHIN;
                            deadline = deadline.max(grace);
                        }
                    }
                    continue;
                }
                // A refusal or the master's trouble: as for a client.
                other => handed_off = other,
            }
        }
        registered.set(match &handed_off {
            Ok(Ok(tunnel)) => ConnState::Tunnel(tunnel.as_raw_fd()),
            _ => ConnState::Queued(sock.as_raw_fd()),
        });
        match handed_off {
            Ok(Ok(tunnel)) => {
                opened();
                // The master holds its own copy of the socket now.
                drop(sock);
                tunnel.closed().await;
                return Served::Tunnel;
            }
            Ok(Err(MuxError::Refused(reason))) => {
                if route.direct {
                    // The mux answer never says why: the master's log does.
                    let reasons = witness
                        .and_then(|(failures, mark)| failures.since(mark))
                        .unwrap_or_default();
                    if let DirectFailure::RouteFailed(why) = judge_direct_failure(&reasons) {
                        ctx.direct_route_failed(&claim, &route.to, why, &direct_failed);
                        continue;
                    }
                    // The container's address answered (nothing listens
                    // yet): the route works, clients go on it directly.
                    direct_verified.set(true);
                }
                let running_since = target.borrow().running_since;
                let window = ctx.startup_window.get();
                let schedule = if route.direct {
                    fwd_core::retry_direct_refused
                } else {
                    fwd_core::retry_refused
                };
                let retry = running_since.and_then(|since| {
                    schedule(since.elapsed(), refusals, window).map(|d| (d, since + window))
                });
                let Some((delay, window_end)) = retry else {
                    tracing::debug!(port = claim.local_port, to = %route.to, %reason, "remote end refused the connection");
                    return Served::Failed(FailureReason::Refused);
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
                    if run_fallback(&link, &route.to, &sock).await {
                        return Served::Fallback;
                    }
                }
            }
            Err(_) => return Served::Failed(FailureReason::Handoff),
        }
        if tokio::time::Instant::now() >= deadline {
            return Served::Failed(FailureReason::Handoff);
        }
    }
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
                    held.get(&addr.port()).map(|h| h.queued.clone()),
                    Some(vec![fd])
                );
                drop(client);
            })
            .await;
    }
}
