//! The listeners of containers' names: one per port on each name's own
//! loopback address, serving connections exactly as a forward does (the
//! direct route to the container's address, over the host's master).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use fwd_core::Claim;
use tokio::sync::watch;

use super::accept::{bind_all, serve_listeners, Listening};
use super::doc;
use super::target::{ConnStats, Target};
use crate::handover::document::ForwardDoc;
use crate::handover::Descriptors;
use crate::serve::{ConnKey, Registry, ServeContext};

/// One port of one name.
pub(crate) struct NameListener {
    target: watch::Sender<Target>,
    pub stats: Rc<ConnStats>,
    /// Why it could not be bound (tried again at the next plan).
    pub failed: Option<String>,
    since: SystemTime,
    listening: Listening,
}

/// Every name's listeners, by address and port.
#[derive(Default)]
pub struct NameTable {
    pub listeners: BTreeMap<SocketAddrV4, NameListener>,
}

impl NameTable {
    /// Holds exactly the listeners `wanted` lists: new ones bound, changed
    /// ones retargeted (a listener stays bound while its container is the
    /// same or another takes its address), the rest closed.
    pub fn apply(
        &mut self,
        wanted: BTreeMap<SocketAddrV4, Claim>,
        ctx: &Rc<ServeContext>,
        now: Instant,
    ) {
        self.listeners.retain(|addr, _| wanted.contains_key(addr));
        for (addr, claim) in wanted {
            match self.listeners.get_mut(&addr) {
                Some(l) if l.failed.is_none() => {
                    if l.target.borrow().claim != claim {
                        l.target.send_modify(|t| *t = t.next(claim, now));
                    }
                }
                _ => {
                    let listener = bind(addr, claim, ctx, now);
                    self.listeners.insert(addr, listener);
                }
            }
        }
    }
}

// ---- binary upgrade: each bound listener as a `ForwardDoc` and back -----

impl NameTable {
    /// The bound listeners as the handover names them, with their tunnels
    /// and waiting clients.
    pub fn to_doc(&self, registry: &Registry) -> Vec<ForwardDoc> {
        self.listeners
            .values()
            .filter(|l| l.failed.is_none())
            .map(|l| {
                doc::to_doc(
                    &l.target.borrow(),
                    &l.stats,
                    &l.listening.fds,
                    l.since,
                    registry,
                )
            })
            .collect()
    }

    /// Takes over a name's listener from the previous image (one whose
    /// claim names no IPv4 address of its own is left to the plan).
    pub fn adopt(
        &mut self,
        f: &ForwardDoc,
        fds: &mut Descriptors,
        ctx: &Rc<ServeContext>,
        now: Instant,
    ) {
        let Some(IpAddr::V4(ip)) = f.bind.first().copied() else {
            return;
        };
        let addr = SocketAddrV4::new(ip, f.local_port);
        let Some(a) = doc::adopt(f, |_| ConnKey::Name(addr), fds, ctx, now) else {
            return;
        };
        self.listeners.insert(
            addr,
            NameListener {
                target: a.target,
                stats: a.stats,
                failed: None,
                since: a.since,
                listening: a.listening,
            },
        );
    }
}

fn bind(addr: SocketAddrV4, claim: Claim, ctx: &Rc<ServeContext>, now: Instant) -> NameListener {
    let target = watch::channel(Target::keyed(claim, ConnKey::Name(addr), now)).0;
    let stats = Rc::new(ConnStats::default());
    match bind_all(addr.port(), &[IpAddr::V4(*addr.ip())], &ctx.stored) {
        Ok(listeners) => {
            let (_, listening) = serve_listeners(listeners, &target, &stats, ctx);
            NameListener {
                target,
                stats,
                failed: None,
                since: SystemTime::now(),
                listening,
            }
        }
        Err(why) => NameListener {
            target,
            stats,
            failed: Some(why),
            since: SystemTime::now(),
            listening: Listening::default(),
        },
    }
}
