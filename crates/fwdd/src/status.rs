//! The daemon's state as the control API's `Status` snapshot.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fwd_core::{Claim, MasterPhase, StreamPhase};
use fwd_proto::{
    DaemonInfo, EngineStatus, ErrorInfo, ExposedStatus, ForwardRoute, ForwardState, ForwardStatus,
    HostStatus, MasterState, MasterStatus, RouteKind, Status, StreamState, StreamStatus,
};

use crate::daemon::Daemon;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

fn engine_status(h: &crate::daemon::Host, health: &fwd_core::Health) -> EngineStatus {
    let e = &health.engine;
    let socket = h.engine_socket.borrow();
    let (sockets, stats, socket_error) = match &*socket {
        Ok(s) => (
            s.paths.iter().map(|p| p.display().to_string()).collect(),
            Some(s.stats.clone()),
            None,
        ),
        Err(why) => (
            Vec::new(),
            None,
            Some(format!("no local engine socket: {why}")),
        ),
    };
    let stat = |f: fn(&crate::engine::EngineStats) -> u64| stats.as_deref().map_or(0, f);
    EngineStatus {
        sockets,
        route: e.route.map(|r| r.as_str().to_string()),
        remote_socket: e.remote_socket.clone(),
        found_by: e.found_by.map(str::to_string),
        rootless: e.rootless,
        reason: socket_error.or_else(|| e.reason.clone()),
        connections_open: stat(|s| s.open.get()),
        connections_total: stat(|s| s.total.get()),
        connections_refused: stat(|s| s.refusals.borrow().total),
        bytes_up: stat(|s| s.bytes_up.get()),
        bytes_down: stat(|s| s.bytes_down.get()),
    }
}

/// The machine keeps monotonic instants; status shows wall-clock times, as
/// long ago as the instant is before now.
fn instant_ms(t: Instant, now: Instant, wall_now: SystemTime) -> u64 {
    unix_ms(wall_now - now.saturating_duration_since(t))
}

fn forward(
    claim: &Claim,
    state: ForwardState,
    reason: Option<String>,
    since: SystemTime,
) -> ForwardStatus {
    ForwardStatus {
        host: claim.host.to_string(),
        local_port: claim.local_port,
        local_addrs: Vec::new(),
        remote: claim.remote.to_string(),
        container_id: claim.container.as_str().to_string(),
        container_name: claim.container_name.clone(),
        compose_project: claim.compose_project.clone(),
        // Filled from the container's labels by `compose_services`.
        compose_service: None,
        container_port: format!("{}/tcp", claim.container_port),
        state,
        reason,
        since_ms: unix_ms(since),
        connections_open: 0,
        connections_total: 0,
        connections_refused: 0,
        route: Some(route(crate::forwards::RouteNow::of(claim, None), false)),
    }
}

fn route(now: crate::forwards::RouteNow, fell_back: bool) -> ForwardRoute {
    ForwardRoute {
        kind: if now.direct {
            RouteKind::Direct
        } else {
            RouteKind::Published
        },
        to: now.to.to_string(),
        why: now.why,
        fell_back,
    }
}

pub fn snapshot(d: &Daemon) -> Status {
    let (now, wall_now) = (Instant::now(), SystemTime::now());
    let hosts = d
        .hosts()
        .iter()
        .map(|h| host_status(h, now, wall_now))
        .collect();
    let mut forwards: Vec<ForwardStatus> = d
        .table
        .borrow()
        .forwards
        .values()
        .map(|f| held_forward(d, f))
        .collect();
    for (claim, reason) in d.rejected.borrow().iter() {
        forwards.push(forward(
            claim,
            ForwardState::Conflict,
            Some(reason.clone()),
            d.started_at,
        ));
    }
    for u in d.unsupported.borrow().iter() {
        forwards.push(unsupported(u, d.started_at));
    }
    compose_services(d, &mut forwards);
    let mut status = Status {
        daemon: DaemonInfo {
            version: crate::version::VERSION.to_string(),
            pid: std::process::id(),
            started_at_ms: unix_ms(d.started_at),
            image_started_at_ms: Some(unix_ms(d.image.started_at)),
            upgrades: d.image.upgrades,
        },
        hosts,
        forwards,
        health: None,
        exposed: d
            .hosts()
            .iter()
            .flat_map(|h| exposed(h, now, wall_now))
            .collect(),
        limits: Some(limits(d)),
        names: names(d),
        udp: udp(d),
    };
    status.health = Some(fwd_proto::verdict(&status));
    status
}

/// Each forward's compose service, from its container's labels as its
/// host's machine holds them (a claim does not carry it). A container gone
/// since the last plan leaves it `null`.
fn compose_services(d: &Daemon, forwards: &mut [ForwardStatus]) {
    for h in d.hosts() {
        let machine = h.machine.borrow();
        let containers = machine.containers();
        for f in forwards.iter_mut().filter(|f| f.host == *h.key) {
            f.compose_service = fwd_core::ContainerId::parse(&f.container_id)
                .ok()
                .and_then(|id| containers.get(&id))
                .and_then(|c| c.compose_service())
                .map(str::to_string);
        }
    }
}

/// Each forwarded UDP port, with its host's relay.
fn udp(d: &Daemon) -> Vec<fwd_proto::UdpStatus> {
    use crate::udp::RelayState;
    let table = d.udp.borrow();
    table
        .forwards
        .values()
        .map(|f| {
            let c = &f.claim;
            let (relay, dropped_on_host) = table
                .relay_state(&c.host)
                .unwrap_or((RelayState::Starting, 0));
            let (state, reason) = match (&f.failed, relay) {
                (Some(why), _) => ("failed", Some(why.clone())),
                (None, RelayState::Running) => ("serving", None),
                (None, RelayState::Starting) => (
                    "waiting",
                    Some("waiting for the master, or starting the relay on the host".to_string()),
                ),
                (None, RelayState::Unsupported { why, fix }) => {
                    ("unsupported", Some(format!("{why}; {fix}")))
                }
                (None, RelayState::Failed(why)) => ("failed", Some(why)),
            };
            fwd_proto::UdpStatus {
                host: c.host.to_string(),
                local_port: c.local_port,
                container_id: c.container.short().to_string(),
                container_name: c.container_name.clone(),
                remote: c.to.to_string(),
                state: state.to_string(),
                reason,
                sessions: f.stats.sessions.get(),
                datagrams_in: f.stats.datagrams_in.get(),
                datagrams_out: f.stats.datagrams_out.get(),
                dropped: f.stats.dropped.get(),
                dropped_on_host,
            }
        })
        .collect()
}

/// Each named container with its listeners' state, then the unnamed.
fn names(d: &Daemon) -> Vec<fwd_proto::NameStatus> {
    let names = d.names.borrow();
    let plan = names.last_plan();
    let table = names.table();
    let refused_of = |host: &str, id: &fwd_core::ContainerId| {
        plan.refused
            .iter()
            .filter(|r| &*r.host == host && &r.container == id)
            .map(|r| fwd_proto::RefusedName {
                name: r.name.clone(),
                why: r.why.clone(),
            })
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for n in &plan.named {
        let listeners: Vec<_> = n
            .ports()
            .filter_map(|p| {
                table
                    .listeners
                    .get(&std::net::SocketAddrV4::new(n.address, p))
            })
            .collect();
        let failed = listeners.iter().find_map(|l| l.failed.clone());
        out.push(fwd_proto::NameStatus {
            host: n.host.to_string(),
            container_id: n.container.short().to_string(),
            container_name: n.container_name.clone(),
            address: Some(n.address),
            names: n.names.clone(),
            ports: n.ports().collect(),
            to: Some(n.to.clone()),
            state: if failed.is_some() {
                "failed"
            } else {
                "serving"
            }
            .to_string(),
            reason: failed,
            refused: refused_of(&n.host, &n.container),
            connections_open: listeners.iter().map(|l| l.stats.open.get()).sum(),
            connections_total: listeners.iter().map(|l| l.stats.total.get()).sum(),
        });
    }
    for u in &plan.unnamed {
        out.push(fwd_proto::NameStatus {
            host: u.host.to_string(),
            container_id: u.container.short().to_string(),
            container_name: u.container_name.clone(),
            address: None,
            names: Vec::new(),
            ports: Vec::new(),
            to: None,
            state: "unnamed".to_string(),
            reason: Some(u.why.clone()),
            refused: refused_of(&u.host, &u.container),
            connections_open: 0,
            connections_total: 0,
        });
    }
    out
}

/// A host's master, event stream and engine as its machine sees them.
fn host_status(h: &crate::daemon::Host, now: Instant, wall_now: SystemTime) -> HostStatus {
    let at = |t: Instant| instant_ms(t, now, wall_now);
    let machine = h.machine.borrow();
    let health = machine.health();
    HostStatus {
        name: h.key.to_string(),
        destination: h.cfg.ssh.destination.clone(),
        master: MasterStatus {
            state: match health.master {
                MasterPhase::Connecting => MasterState::Connecting,
                MasterPhase::Connected => MasterState::Connected,
                MasterPhase::Backoff => MasterState::Backoff,
                MasterPhase::Stopped => MasterState::Stopped,
            },
            pid: health.master_pid,
            since_ms: at(health.since),
            last_probe_rtt_ms: health.last_probe_rtt.map(|d| d.as_secs_f64() * 1000.0),
            reconnects: health.reconnects,
            consecutive_failures: health.consecutive_failures,
            last_error: health.last_error.as_ref().map(|e| ErrorInfo {
                class: e.kind.class().as_str().to_string(),
                kind: e.kind.as_str().to_string(),
                // The hint says what fwdd does about it ("retrying with
                // backoff"): only while it still does, not once a master
                // made after the error is up.
                message: if health.master == MasterPhase::Connected && e.at <= health.since {
                    e.message.clone()
                } else {
                    format!("{} ({})", e.message, e.kind.hint())
                },
                at_ms: at(e.at),
            }),
            next_retry_ms: health
                .next_retry
                .map(|t| unix_ms(wall_now + t.saturating_duration_since(now))),
            network_lost_since_ms: health.network_lost_since.map(at),
        },
        events: StreamStatus {
            state: match health.stream {
                StreamPhase::Streaming => StreamState::Streaming,
                StreamPhase::Resyncing => StreamState::Resyncing,
                StreamPhase::Down => StreamState::Down,
            },
            events_received: health.events_received,
            last_event_ms: health.last_event.map(at),
            restarts: health.stream_restarts,
        },
        docker_version: health.docker_version.clone(),
        engine: Some(engine_status(h, health)),
    }
}

/// A forward in the table: in conflict (not bound), pending (its container
/// only created, or no link yet: connections wait) or active, with its
/// connection counts and the route it takes now.
fn held_forward(d: &Daemon, f: &crate::forwards::Forward) -> ForwardStatus {
    let owner = &f.held.owner;
    let link_up = d.serve.link(&owner.host).is_some();
    let (state, reason) = if !f.held.bound {
        (ForwardState::Conflict, f.reason.clone())
    } else if owner.pending {
        (
            ForwardState::Pending,
            Some(format!(
                "container {} is created but not started; connections wait up to {}s for it",
                owner.container_name,
                d.serve.connect_wait.get().as_secs()
            )),
        )
    } else if !link_up {
        (
            ForwardState::Pending,
            Some(format!(
                "waiting for the link to {}; new connections wait up to {}s",
                owner.host,
                d.serve.connect_wait.get().as_secs()
            )),
        )
    } else {
        (ForwardState::Active, None)
    };
    let mut s = forward(owner, state, reason, f.since);
    s.local_addrs = f.local_addrs.iter().map(|a| a.to_string()).collect();
    s.connections_open = f.stats.open.get();
    s.connections_total = f.stats.total.get();
    s.connections_refused = f.stats.refusals.borrow().total;
    let now = f.route_now();
    let fell_back = owner.route.is_direct() && !now.direct;
    s.route = Some(route(now, fell_back));
    s
}

/// A published port fwd will not forward, with the reason.
fn unsupported(u: &fwd_core::Unsupported, started_at: SystemTime) -> ForwardStatus {
    ForwardStatus {
        host: u.host.to_string(),
        local_port: u.binding.host_port,
        local_addrs: Vec::new(),
        remote: String::new(),
        container_id: u.container.as_str().to_string(),
        container_name: u.container_name.clone(),
        compose_project: None,
        compose_service: None,
        container_port: format!(
            "{}/{}",
            u.binding.container_port,
            u.binding.protocol.as_str()
        ),
        state: ForwardState::Unsupported,
        reason: Some(u.reason.to_string()),
        since_ms: unix_ms(started_at),
        connections_open: 0,
        connections_total: 0,
        connections_refused: 0,
        route: None,
    }
}

/// A host's exposures, in port order.
fn exposed(h: &crate::daemon::Host, now: Instant, wall_now: SystemTime) -> Vec<ExposedStatus> {
    h.exposures
        .views()
        .into_iter()
        .map(|v| {
            let port = v.spec.remote_port;
            let (reason, reason_kind) = match &v.state {
                fwd_core::ExposeState::Failed { failure, .. } => {
                    (Some(failure.to_string()), Some(failure.kind().to_string()))
                }
                fwd_core::ExposeState::WaitingForLink => {
                    (Some("the host has no usable ssh master".to_string()), None)
                }
                _ => (None, None),
            };
            let count = |f: fn(&crate::expose::ExposeStats) -> u64| v.stats.as_deref().map_or(0, f);
            let next_retry_ms = match &v.state {
                fwd_core::ExposeState::Failed {
                    retry_at: Some(t), ..
                } => Some(unix_ms(wall_now + t.saturating_duration_since(now))),
                _ => None,
            };
            ExposedStatus {
                host: h.key.to_string(),
                remote_port: port,
                runner: v.spec.target.to_string(),
                binds: v.registered.iter().map(|b| format!("{b}:{port}")).collect(),
                state: v.state.name().to_string(),
                reason,
                reason_kind,
                source: match v.source {
                    fwd_core::ExposeSource::Config => "config",
                    fwd_core::ExposeSource::Runtime => "runtime",
                }
                .to_string(),
                connections_open: count(|s| s.open.get()),
                connections_total: count(|s| s.total.get()),
                connections_failed: count(|s| s.failed.get()),
                connections_refused: count(|s| s.refusals.borrow().total),
                next_retry_ms,
            }
        })
        .collect()
}

/// The open-files budget, its caps and what they refused.
fn limits(d: &Daemon) -> fwd_proto::LimitsStatus {
    let l = d.serve.limits.get();
    fwd_proto::LimitsStatus {
        open_files_limit: l.open_files,
        open_files: crate::fdlimit::open_now(),
        reserved: fwd_core::budget::RESERVED_FDS,
        forwards_per_container: l.forwards_per_container,
        forwards_total: l.forwards_total,
        forwards_left_out: d.over_total.get() as u64,
        tunnels_per_forward: l.tunnels_per_forward,
        tunnels_per_exposure: l.tunnels_per_exposure,
        engine_clients: l.engine_clients,
        accept_failures: d.serve.accept_failures.get(),
        capped: d
            .capped
            .borrow()
            .iter()
            .map(|c| fwd_proto::CappedContainer {
                host: c.host.to_string(),
                container_id: c.container.as_str().to_string(),
                container_name: c.container_name.clone(),
                published: c.published,
                forwarded: c.forwarded,
            })
            .collect(),
    }
}
