//! Where a forward's connections go: the claim it serves now, and what is
//! known of that container's start.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use fwd_core::{Claim, Remote, Route};

use crate::serve::{ConnKey, Holder, ServeContext};

#[derive(Default, Debug)]
pub struct ConnStats {
    pub open: Cell<u64>,
    pub total: Cell<u64>,
    /// Connections closed at `max_tunnels_per_forward`, and the episode.
    pub refusals: RefCell<fwd_core::Refusals>,
}

impl ConnStats {
    /// Under `max_tunnels_per_forward`: each tunnel costs the master three
    /// descriptors, and one forward's flood must leave the others theirs.
    /// A client over it is to be closed at once (by the caller); counted.
    pub(super) fn admit(&self, target: &Target, ctx: &ServeContext) -> bool {
        let cap = ctx.limits.get().tunnels_per_forward;
        if self.open.get() < cap {
            return true;
        }
        let host = &target.claim.host;
        let what = format!("local port {}", target.claim.local_port);
        let ok = ctx.admit(
            &mut self.refusals.borrow_mut(),
            self.open.get(),
            cap,
            &holder(&what, host),
        );
        if !ok {
            ctx.counters(host).refuse(fwd_metrics::Refused::Tunnel);
        }
        ok
    }

    /// A client of the forward ended: the end of a refusal episode is said.
    pub(super) fn ended(&self, target: &Target, ctx: &ServeContext) {
        if !self.refusals.borrow().in_episode() {
            return;
        }
        let cap = ctx.limits.get().tunnels_per_forward;
        let what = format!("local port {}", target.claim.local_port);
        ctx.released(
            &mut self.refusals.borrow_mut(),
            self.open.get(),
            cap,
            &holder(&what, &target.claim.host),
        );
    }
}

fn holder<'a>(what: &'a str, host: &'a str) -> Holder<'a> {
    Holder {
        what,
        host,
        setting: "max_tunnels_per_forward",
    }
}

/// Where a forward's connections go, and since when that container runs
/// (`None` while it is only created): a refusal from a container that
/// started a moment ago is retried, not passed on.
#[derive(Clone, Debug)]
pub struct Target {
    pub claim: Claim,
    /// The listener its connections are registered under (an upgrade hands
    /// them over with it).
    pub key: ConnKey,
    pub running_since: Option<Instant>,
    /// The container was seen listening (a probe channel stayed open):
    /// later connections are handed over without probing.
    pub listening: Rc<Cell<bool>>,
    /// Why the claim's direct route failed (no route, sshd refusing to
    /// open it, …): this run of the container is then served on its
    /// published port. Shared by the forward's connections.
    pub direct_failed: Rc<RefCell<Option<String>>>,
    /// The direct route answered for this run (a channel opened, or the
    /// container refused one): clients are handed over on it without a
    /// check first.
    pub direct_verified: Rc<Cell<bool>>,
}

/// Where a forward's connections go now, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteNow {
    pub direct: bool,
    pub to: Remote,
    pub why: String,
}

impl RouteNow {
    /// `claim`'s route, or its published port when its direct route
    /// failed (`direct_failed` says why).
    pub fn of(claim: &Claim, direct_failed: Option<&str>) -> RouteNow {
        match (&claim.route, direct_failed) {
            (Route::Direct { to, .. }, Some(why)) => RouteNow {
                direct: false,
                to: claim.remote.clone(),
                why: format!("the direct route to {to} failed: {why}"),
            },
            _ => RouteNow {
                direct: claim.route.is_direct(),
                to: claim.connect_to().clone(),
                why: claim.route.why(),
            },
        }
    }
}

impl Target {
    pub(super) fn new(claim: Claim, now: Instant) -> Target {
        let key = ConnKey::Port(claim.local_port);
        Target::keyed(claim, key, now)
    }

    /// A target whose connections come from the listener `key`.
    pub(super) fn keyed(claim: Claim, key: ConnKey, now: Instant) -> Target {
        let running_since = (!claim.pending).then_some(now);
        Target {
            claim,
            key,
            running_since,
            listening: Rc::default(),
            direct_failed: Rc::default(),
            direct_verified: Rc::default(),
        }
    }

    /// The claim's route, unless it is direct and failed for this run.
    pub fn route_now(&self) -> RouteNow {
        RouteNow::of(&self.claim, self.direct_failed.borrow().as_deref())
    }

    /// The next owner: the start time carries over while the same
    /// container keeps running.
    pub(super) fn next(&self, claim: Claim, now: Instant) -> Target {
        let same_run = self.claim.same_owner(&claim)
            && self.claim.started_at_ns == claim.started_at_ns
            && !self.claim.pending
            && !claim.pending;
        let running_since = match self.running_since {
            _ if claim.pending => None,
            Some(t) if same_run => Some(t),
            _ => Some(now),
        };
        // A failed direct route stays failed while nothing changed it: a
        // new address (a re-inspect after a network change) is tried again.
        let same_route = same_run && self.claim.route == claim.route;
        Target {
            listening: if same_run {
                self.listening.clone()
            } else {
                Rc::default()
            },
            direct_failed: if same_route {
                self.direct_failed.clone()
            } else {
                Rc::default()
            },
            direct_verified: if same_route {
                self.direct_verified.clone()
            } else {
                Rc::default()
            },
            claim,
            key: self.key,
            running_since,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use fwd_core::{ContainerId, HostKey, PublishedWhy};

    use super::*;

    fn claim(route: Route) -> Claim {
        Claim {
            host: HostKey::from("h"),
            container: ContainerId::parse("0123456789ab").expect("id"),
            container_name: "web".into(),
            compose_project: None,
            container_port: 80,
            started_at_ns: 1,
            pending: false,
            local_port: 8080,
            bind: vec![IpAddr::from(Ipv4Addr::LOCALHOST)],
            remote: Remote {
                ip: "127.0.0.1".into(),
                port: 8080,
            },
            route,
        }
    }

    fn direct(ip: &str) -> Route {
        Route::Direct {
            to: Remote {
                ip: ip.into(),
                port: 80,
            },
            network: "bridge".into(),
        }
    }

    /// A failed direct route sends the forward's connections to the
    /// published port, says why, and stays failed for the same address of
    /// the same run; a new address, or a new run, is tried again.
    #[test]
    fn a_failed_direct_route_holds_for_that_address_and_run() {
        let now = Instant::now();
        let t = Target::new(claim(direct("172.17.0.2")), now);
        assert_eq!(t.route_now().to.to_string(), "172.17.0.2:80");
        assert!(t.route_now().direct);

        t.direct_failed
            .replace(Some("administratively prohibited: open failed".into()));
        let fell_back = t.route_now();
        assert!(!fell_back.direct);
        assert_eq!(fell_back.to.to_string(), "127.0.0.1:8080");
        assert_eq!(
            fell_back.why,
            "the direct route to 172.17.0.2:80 failed: administratively prohibited: open failed"
        );

        let same = t.next(claim(direct("172.17.0.2")), now);
        assert!(!same.route_now().direct, "the same route stays failed");
        let moved = t.next(claim(direct("172.18.0.5")), now);
        assert!(moved.route_now().direct, "a new address is tried again");
        let mut restarted = claim(direct("172.17.0.2"));
        restarted.started_at_ns = 2;
        assert!(
            t.next(restarted, now).route_now().direct,
            "a new run is tried again"
        );

        let published = t.next(claim(Route::Published(PublishedWhy::Rootless)), now);
        assert_eq!(
            published.route_now(),
            RouteNow {
                direct: false,
                to: Remote {
                    ip: "127.0.0.1".into(),
                    port: 8080
                },
                why: PublishedWhy::Rootless.to_string(),
            }
        );
    }
}
