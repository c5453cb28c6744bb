//! Daemon-owned listeners for the containers' published ports: the table
//! of forwards the plan's actions are carried out on.
//!
//! fwdd binds the local ports itself (not the master), so a port stays bound
//! while the master is being replaced, a conflict shows up exactly at
//! `bind()`, and what is forwarded is exactly what this table holds. Each
//! accepted socket is passed to the master as a stdio forward
//! ([`handoff`]); from then on bytes flow socket ⇄ ssh without touching fwdd.

mod accept;
mod doc;
mod handoff;
mod names;
mod target;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use fwd_core::{Action, Claim, Held};
use tokio::sync::watch;

use crate::handover::document::ForwardDoc;
use crate::handover::Descriptors;
use crate::serve::{ConnKey, Registry, ServeContext};
use accept::{bind_all, serve_listeners, Listening};
pub use names::NameTable;
pub use target::ConnStats;
pub use target::RouteNow;
use target::Target;

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
    listening: Listening,
}

impl Forward {
    /// Where its connections go now, and why.
    pub fn route_now(&self) -> RouteNow {
        self.target.borrow().route_now()
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
                        // nothing a person needs to read, unless its
                        // connections now go elsewhere (the direct route,
                        // once the engine's answers allow it), which the log
                        // says as status does.
                        let old = &f.held.owner;
                        let moved = !old.same_owner(&claim)
                            || old.connect_to() != claim.connect_to()
                            || old.route.is_direct() != claim.route.is_direct();
                        if f.held.bound && moved {
                            let route = route_kind(&claim);
                            tracing::info!(
                                event = "forward_retargeted",
                                host = %claim.host,
                                port = claim.local_port,
                                container = %claim.container_name,
                                container_id = %claim.container,
                                remote = %claim.connect_to(),
                                route,
                                "local port {} now forwards to {} ({route}) of container {}",
                                claim.local_port,
                                claim.connect_to(),
                                claim.container_name
                            );
                        }
                        f.target.send_modify(|t| *t = t.next(claim.clone(), now));
                        // A new route to the same running container is the
                        // same forward (status keeps its "since").
                        if !f.held.owner.same_owner(&claim) || f.held.owner.pending != claim.pending
                        {
                            f.since = SystemTime::now();
                        }
                        f.held.owner = claim;
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
                let (local_addrs, listening) = serve_listeners(listeners, &target, &stats, ctx);
                let route = route_kind(&claim);
                tracing::info!(
                    event = "forward_added",
                    host = %claim.host,
                    port,
                    container = %claim.container_name,
                    container_id = %claim.container,
                    remote = %claim.connect_to(),
                    route,
                    "forwarding localhost:{port} to {} ({route}) of container {}",
                    claim.connect_to(),
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
                        listening,
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
                        listening: Listening::default(),
                    },
                );
            }
        }
    }
}

/// Where a claim's connections go, in status's words (its ROUTE column):
/// log lines name the route status shows.
fn route_kind(claim: &Claim) -> &'static str {
    if claim.route.is_direct() {
        "direct"
    } else {
        "published"
    }
}

// ---- binary upgrade: each bound forward as a `ForwardDoc` and back ------
// (`doc.rs`, shared with the names' listeners).

impl ForwardTable {
    /// The bound forwards as the handover names them, each with the tunnels
    /// and waiting clients `registry` holds for its port.
    pub fn to_doc(&self, registry: &Registry) -> Vec<ForwardDoc> {
        self.forwards
            .values()
            .filter(|f| f.held.bound)
            .map(|f| {
                doc::to_doc(
                    &f.target.borrow(),
                    &f.stats,
                    &f.listening.fds,
                    f.since,
                    registry,
                )
            })
            .collect()
    }

    /// Takes over a forward from the previous fwdd image.
    pub fn adopt(
        &mut self,
        f: &ForwardDoc,
        fds: &mut Descriptors,
        ctx: &Rc<ServeContext>,
        now: Instant,
    ) {
        let Some(a) = doc::adopt(f, |c| ConnKey::Port(c.local_port), fds, ctx, now) else {
            return;
        };
        let claim = a.target.borrow().claim.clone();
        self.forwards.insert(
            claim.local_port,
            Forward {
                held: Held {
                    owner: claim,
                    bound: true,
                    retry_at: None,
                },
                target: a.target,
                reason: None,
                since: a.since,
                local_addrs: a.local_addrs,
                stats: a.stats,
                listening: a.listening,
            },
        );
    }
}
