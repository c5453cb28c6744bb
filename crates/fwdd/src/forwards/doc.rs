//! A listener's part of a binary upgrade, the same for a forward's port
//! and a name's: its claim, what is known of the container's run, its
//! listeners, and (from the registry) its tunnels and waiting clients.
//! A new piece of per-listener state is a `ForwardDoc` field (with
//! `#[serde(default)]`) and a line in each direction here.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::accept::{serve_listeners, Listening};
use super::handoff::{spawn_adopted_tunnel, spawn_served};
use super::target::{ConnStats, Target};
use crate::handover::document::{self, ForwardDoc, ListenerDoc};
use crate::handover::{unix_ms, Descriptors};
use crate::serve::{ConnKey, Registry, ServeContext};

/// What a listener hands over, its connections included.
pub(super) fn to_doc(
    target: &Target,
    stats: &ConnStats,
    listener_fds: &[(SocketAddr, RawFd)],
    since: SystemTime,
    registry: &Registry,
) -> ForwardDoc {
    let c = &target.claim;
    let held = registry.held();
    let conns = held.get(&target.key);
    ForwardDoc {
        host: c.host.to_string(),
        container: c.container.as_str().to_string(),
        container_name: c.container_name.clone(),
        compose_project: c.compose_project.clone(),
        container_port: c.container_port,
        started_at_ns: c.started_at_ns,
        pending: c.pending,
        local_port: c.local_port,
        bind: c.bind.clone(),
        remote_ip: c.remote.ip.clone(),
        remote_port: c.remote.port,
        listeners: listener_fds
            .iter()
            .map(|(addr, fd)| ListenerDoc {
                addr: *addr,
                fd: *fd,
            })
            .collect(),
        running_for_ms: target.running_since.map(|s| document::ms(s.elapsed())),
        listening: target.listening.get(),
        direct_route: document::direct_route_doc(&c.route),
        direct_failed: target.direct_failed.borrow().clone(),
        since_ms: unix_ms(since),
        connections_total: stats.total.get(),
        tunnels: conns.map(|c| c.tunnels.clone()).unwrap_or_default(),
        queued: conns.map(|c| c.queued.clone()).unwrap_or_default(),
    }
}

/// A listener taken over from the previous image, serving again.
pub(super) struct Adopted {
    pub target: watch::Sender<Target>,
    pub stats: Rc<ConnStats>,
    pub local_addrs: Vec<SocketAddr>,
    pub listening: Listening,
    pub since: SystemTime,
}

/// Takes over a listener from the previous fwdd image: its listeners keep
/// their queues, its tunnels are kept open and counted, and clients it
/// had accepted but not handed over yet are served from the start.
/// `None`: the document's claim does not parse (`Document::parse` checked
/// it already).
pub(super) fn adopt(
    f: &ForwardDoc,
    key: impl FnOnce(&fwd_core::Claim) -> ConnKey,
    fds: &mut Descriptors,
    ctx: &Rc<ServeContext>,
    now: Instant,
) -> Option<Adopted> {
    let claim = document::claim(f).ok()?;
    let key = key(&claim);
    let mut target = Target::keyed(claim, key, now);
    target.running_since = f
        .running_for_ms
        .map(|ms| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now));
    target.listening.set(f.listening);
    target.direct_failed.replace(f.direct_failed.clone());
    let target = watch::channel(target).0;
    let stats = Rc::new(ConnStats::default());
    stats.total.set(f.connections_total);
    let listeners = f
        .listeners
        .iter()
        .filter_map(|l| fds.take(l.fd))
        .map(std::net::TcpListener::from)
        .collect();
    let (local_addrs, listening) = serve_listeners(listeners, &target, &stats, ctx);
    for fd in fds.take_all(&f.tunnels) {
        spawn_adopted_tunnel(fd, key, stats.clone(), ctx.clone());
    }
    for fd in fds.take_all(&f.queued) {
        let sock = std::net::TcpStream::from(fd);
        if sock.set_nonblocking(true).is_err() {
            continue;
        }
        // Counted once already, by the image that accepted it.
        stats.total.set(stats.total.get().saturating_sub(1));
        spawn_served(sock, target.subscribe(), stats.clone(), ctx.clone());
    }
    let since = UNIX_EPOCH
        .checked_add(Duration::from_millis(f.since_ms))
        .unwrap_or_else(SystemTime::now);
    Some(Adopted {
        target,
        stats,
        local_addrs,
        listening,
        since,
    })
}
