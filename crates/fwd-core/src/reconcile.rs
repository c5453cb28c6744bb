//! Desired forwards (from containers) versus held listeners → actions.
//!
//! Two pure steps:
//! 1. [`desired_forwards`] decides which claim owns each local port;
//! 2. [`reconcile`] compares that with what the daemon holds and says what to
//!    bind, retarget or release.
//!
//! Ownership rules, keyed by local port:
//! - on one host the container that started last owns the port (a container
//!   that takes over a port from an older one gets it; when the newer one goes,
//!   the older one, if still running, gets it back);
//! - across hosts the host already holding the port keeps it while it still
//!   claims it, so ports never flap between hosts; the other hosts' claims are
//!   reported as conflicts;
//! - a port is released only when no running container claims it any more, so
//!   a removal can only come from the owner's disappearance;
//! - a pending claim (a container created, not yet started) holds a port only
//!   while no running container claims it; when its container starts, the
//!   running claim retargets the same listener.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::budget::Capped;
use crate::model::{Claim, Container, HostKey, Unsupported};
use crate::route::RouteFacts;
use crate::rules::Rules;

/// What the daemon holds for one local port, as far as reconciling goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub owner: Claim,
    /// Listeners are bound. False while the port is taken by someone else.
    pub bound: bool,
    /// When an unbound port may be tried again.
    pub retry_at: Option<Instant>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub forwards: BTreeMap<u16, Claim>,
    /// Claims that lost their port to another host, with the reason.
    pub conflicts: Vec<(Claim, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Bind listeners for this port and serve it for the claim.
    Bind(Claim),
    /// Keep the listeners; from now on forward to this claim. Used when a
    /// port changes owner, so the port never goes unbound in between.
    Retarget(Claim),
    /// Close the listeners and bind anew for this claim: where the port
    /// listens changed (a rule's `bind`), which no retarget can express.
    Rebind(Claim),
    /// Close the listeners (if bound) and forget the port.
    Release(u16),
}

/// Picks, for every claimed local port, the claim that owns it.
pub fn desired_forwards<'a>(
    claims: impl IntoIterator<Item = &'a Claim>,
    held: &BTreeMap<u16, Held>,
) -> Desired {
    let mut by_port: BTreeMap<u16, Vec<&Claim>> = BTreeMap::new();
    for c in claims {
        by_port.entry(c.local_port).or_default().push(c);
    }
    let mut desired = Desired::default();
    for (port, mut candidates) in by_port {
        // A created, not yet started container never takes a port from a
        // running one: its claim counts only while nothing runs there.
        if candidates.iter().any(|c| !c.pending) {
            candidates.retain(|c| !c.pending);
        }
        let incumbent_host = held
            .get(&port)
            .map(|h| &h.owner.host)
            .filter(|host| candidates.iter().any(|c| &c.host == *host));
        let winner_host = match incumbent_host {
            Some(h) => h.clone(),
            None => match candidates.iter().copied().max_by(|a, b| precedence(a, b)) {
                Some(c) => c.host.clone(),
                None => continue,
            },
        };
        let winner = candidates
            .iter()
            .copied()
            .filter(|c| c.host == winner_host)
            .max_by(|a, b| precedence(a, b));
        let Some(winner) = winner else { continue };
        for loser in candidates.iter().filter(|c| c.host != winner_host) {
            desired.conflicts.push((
                (*loser).clone(),
                format!(
                    "local port {port} is already forwarded for container {} on host {}",
                    winner.container_name, winner.host
                ),
            ));
        }
        desired.forwards.insert(port, winner.clone());
    }
    desired
}

/// Later start wins; ties are broken by IDs so the result never depends on
/// the order claims were listed in.
fn precedence(a: &Claim, b: &Claim) -> std::cmp::Ordering {
    (a.started_at_ns, &a.host, &a.container).cmp(&(b.started_at_ns, &b.host, &b.container))
}

/// The actions that turn `held` into `desired`. Applying them (with every
/// bind succeeding) yields a state for which this returns nothing.
pub fn reconcile(desired: &Desired, held: &BTreeMap<u16, Held>, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    for (port, claim) in &desired.forwards {
        match held.get(port) {
            None => actions.push(Action::Bind(claim.clone())),
            Some(h) if !h.bound => {
                if h.retry_at.is_none_or(|t| t <= now) {
                    actions.push(Action::Bind(claim.clone()));
                } else if h.owner != *claim {
                    actions.push(Action::Retarget(claim.clone()));
                }
            }
            Some(h) if h.owner.bind != claim.bind => actions.push(Action::Rebind(claim.clone())),
            Some(h) if h.owner != *claim => actions.push(Action::Retarget(claim.clone())),
            Some(_) => {}
        }
    }
    for port in held.keys() {
        if !desired.forwards.contains_key(port) {
            actions.push(Action::Release(*port));
        }
    }
    actions
}

/// One host's part in a reconcile.
#[derive(Clone)]
pub struct HostView<'a> {
    pub host: &'a HostKey,
    /// `max_forwards`: at most this many of the host's claims are served.
    pub max_forwards: Option<usize>,
    /// At most this many of one container's ports are served (the lowest
    /// local ports); `None` = no cap.
    pub forwards_per_container: Option<u64>,
    /// What the host's routes depend on (see [`crate::route`]).
    pub route: RouteFacts,
    pub containers: Vec<&'a Container>,
}

/// Everything one reconcile decides.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Claims not served, with the reason: the port is another host's, or
    /// the host is at its cap (reported as conflicts, never bound).
    pub rejected: Vec<(Claim, String)>,
    /// Published ports fwd cannot forward (UDP, …), one per port and container.
    pub unsupported: Vec<Unsupported>,
    /// Containers over the per-container cap: their ports beyond it are
    /// neither bound nor listed one by one.
    pub capped: Vec<Capped>,
    /// Ports claimed but left out by the total cap (also in `rejected`).
    pub over_total: usize,
}

/// From every host's containers to the actions on the held ports: claims
/// under the rules, each container's and each host's cap, ownership, the
/// cap on forwards in all (`forwards_total`), and the diff with `held`.
pub fn plan(
    hosts: &[HostView<'_>],
    rules: &Rules,
    forwards_total: Option<u64>,
    held: &BTreeMap<u16, Held>,
    now: Instant,
) -> Plan {
    let mut claims = Vec::new();
    let mut unsupported = Vec::new();
    let mut rejected = Vec::new();
    let mut capped = Vec::new();
    for h in hosts {
        let mut host_claims = Vec::new();
        for c in &h.containers {
            let (mut cl, un) = c.claims(h.host, rules, h.route);
            unsupported.extend(un);
            if let Some(cap) = h.forwards_per_container {
                let published = cl.len() as u64;
                if published > cap {
                    // The lowest ports: the same ones at every plan.
                    cl.sort_by_key(|c| c.local_port);
                    cl.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
                    capped.push(Capped {
                        host: h.host.clone(),
                        container: c.id.clone(),
                        container_name: c.name.clone(),
                        published,
                        forwarded: cap,
                    });
                }
            }
            host_claims.extend(cl);
        }
        if let Some(cap) = h.max_forwards {
            // Earliest-started keep theirs: a burst of new containers
            // cannot take ports away from running ones.
            host_claims.sort_by(|a, b| {
                (a.started_at_ns, &a.container, a.local_port).cmp(&(
                    b.started_at_ns,
                    &b.container,
                    b.local_port,
                ))
            });
            if host_claims.len() > cap {
                for c in host_claims.split_off(cap) {
                    let reason = format!(
                        "host {} is at its cap of {cap} forwards (max_forwards)",
                        h.host
                    );
                    rejected.push((c, reason));
                }
            }
        }
        claims.extend(host_claims);
    }
    unsupported.sort_by_key(|u| (u.binding.host_port, u.host.clone(), u.container.clone()));
    unsupported.dedup_by_key(|u| {
        (
            u.binding.host_port,
            u.binding.protocol,
            u.host.clone(),
            u.container.clone(),
        )
    });
    let mut desired = desired_forwards(claims.iter(), held);
    let over_total = forwards_total
        .and_then(|t| usize::try_from(t).ok())
        .map_or(0, |total| {
            cap_total(&mut desired, held, total, &mut rejected)
        });
    let actions = reconcile(&desired, held, now);
    rejected.extend(desired.conflicts);
    Plan {
        actions,
        rejected,
        unsupported,
        capped,
        over_total,
    }
}

/// Keeps at most `total` ports: those bound now first (a cap never takes
/// a port away from its clients), then the earliest-started claims; the
/// rest are rejected. Returns how many were left out.
fn cap_total(
    desired: &mut Desired,
    held: &BTreeMap<u16, Held>,
    total: usize,
    rejected: &mut Vec<(Claim, String)>,
) -> usize {
    if desired.forwards.len() <= total {
        return 0;
    }
    let mut order: Vec<(bool, i64, u16)> = desired
        .forwards
        .iter()
        .map(|(p, c)| (!held.get(p).is_some_and(|h| h.bound), c.started_at_ns, *p))
        .collect();
    order.sort_unstable();
    let left_out = order.split_off(total);
    for (_, _, port) in &left_out {
        if let Some(c) = desired.forwards.remove(port) {
            let reason = format!(
                "fwd forwards at most {total} ports in all (max_forwards_total; raise it, or the \
                 open-files hard limit it is derived from)"
            );
            rejected.push((c, reason));
        }
    }
    left_out.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerId, HostKey, Remote};
    use proptest::prelude::*;
    use std::time::Duration;

    fn claim(host: &str, id: u8, started: i64, port: u16) -> Claim {
        Claim {
            host: HostKey::from(host),
            container: ContainerId::parse(&format!("{id:012x}")).expect("valid id"),
            container_name: format!("c{id}"),
            compose_project: None,
            container_port: 80,
            started_at_ns: started,
            pending: false,
            local_port: port,
            bind: crate::rules::default_bind(),
            remote: Remote {
                ip: "127.0.0.1".into(),
                port,
            },
            route: crate::route::Route::Published(crate::route::PublishedWhy::Configured),
        }
    }

    /// Applies actions the way the daemon does, with binds that succeed
    /// unless the port is in `taken`.
    fn apply(held: &mut BTreeMap<u16, Held>, actions: &[Action], taken: &[u16], now: Instant) {
        for a in actions {
            match a {
                // A rebind closes the old listeners first: the same as a
                // fresh bind for what is held afterwards.
                Action::Bind(c) | Action::Rebind(c) => {
                    let bound = !taken.contains(&c.local_port);
                    held.insert(
                        c.local_port,
                        Held {
                            owner: c.clone(),
                            bound,
                            retry_at: (!bound).then(|| now + Duration::from_secs(3)),
                        },
                    );
                }
                Action::Retarget(c) => {
                    if let Some(h) = held.get_mut(&c.local_port) {
                        h.owner = c.clone();
                    }
                }
                Action::Release(p) => {
                    held.remove(p);
                }
            }
        }
    }

    /// One daemon turn: decide, act, and return what was done.
    fn step(
        held: &mut BTreeMap<u16, Held>,
        claims: &[&Claim],
        taken: &[u16],
        now: Instant,
    ) -> Vec<Action> {
        let actions = reconcile(&desired_forwards(claims.iter().copied(), held), held, now);
        apply(held, &actions, taken, now);
        actions
    }

    /// The local ports a plan binds, in its order.
    fn bound_ports(p: &Plan) -> Vec<u16> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Bind(c) => Some(c.local_port),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn start_binds_and_stop_releases() {
        let now = Instant::now();
        let mut held = BTreeMap::new();
        let c = claim("h", 1, 10, 8080);
        let d = desired_forwards([&c], &held);
        let actions = reconcile(&d, &held, now);
        assert_eq!(actions, vec![Action::Bind(c.clone())]);
        apply(&mut held, &actions, &[], now);
        assert!(reconcile(&d, &held, now).is_empty());
        let d = desired_forwards([], &held);
        assert_eq!(reconcile(&d, &held, now), vec![Action::Release(8080)]);
    }

    #[test]
    fn newer_container_takes_over_without_unbinding_and_older_gets_it_back() {
        let now = Instant::now();
        let mut held = BTreeMap::new();
        let old = claim("h", 1, 10, 8080);
        let new = claim("h", 2, 20, 8080);
        step(&mut held, &[&old], &[], now);
        let actions = reconcile(&desired_forwards([&old, &new], &held), &held, now);
        assert_eq!(actions, vec![Action::Retarget(new.clone())]);
        apply(&mut held, &actions, &[], now);
        // The old container going away must not release the new owner's port.
        let actions = reconcile(&desired_forwards([&new], &held), &held, now);
        assert!(actions.is_empty(), "{actions:?}");
        // The new one going away hands the port back to the old one, if it runs.
        let actions = reconcile(&desired_forwards([&old], &held), &held, now);
        assert_eq!(actions, vec![Action::Retarget(old)]);
    }

    #[test]
    fn incumbent_host_keeps_port_and_other_host_is_a_conflict() {
        let now = Instant::now();
        let mut held = BTreeMap::new();
        let a = claim("a", 1, 10, 5432);
        let b = claim("b", 2, 99, 5432);
        step(&mut held, &[&a], &[], now);
        let d = desired_forwards([&a, &b], &held);
        assert_eq!(d.forwards.get(&5432), Some(&a));
        assert_eq!(d.conflicts.len(), 1);
        assert_eq!(d.conflicts[0].0, b);
        assert!(d.conflicts[0].1.contains("host a"), "{}", d.conflicts[0].1);
        assert!(reconcile(&d, &held, now).is_empty());
    }

    fn container(id: u8, started: i64, ports: &[u16]) -> Container {
        use crate::model::{PortBinding, Protocol};
        Container {
            id: ContainerId::parse(&format!("{id:012x}")).expect("valid id"),
            name: format!("c{id}"),
            compose_project: None,
            started_at_ns: started,
            pending: false,
            ports: ports
                .iter()
                .map(|&p| PortBinding {
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: "0.0.0.0".into(),
                    host_port: p,
                })
                .collect(),
            labels: Default::default(),
            networks: vec![],
            exposed_ports: vec![],
            aliases: vec![],
        }
    }

    #[test]
    fn the_cap_keeps_the_earliest_started_and_rejects_the_rest() {
        let now = Instant::now();
        let host = HostKey::from("h");
        let (old, new) = (container(1, 10, &[8080, 8081]), container(2, 20, &[9090]));
        let view = HostView {
            host: &host,
            max_forwards: Some(2),
            forwards_per_container: None,
            route: RouteFacts::PUBLISHED_ONLY,
            containers: vec![&new, &old],
        };
        let p = plan(
            &[view],
            &Rules { rules: vec![] },
            None,
            &BTreeMap::new(),
            now,
        );
        let bound = bound_ports(&p);
        assert_eq!(bound, vec![8080, 8081]);
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].0.local_port, 9090);
        assert!(
            p.rejected[0].1.contains("max_forwards"),
            "{}",
            p.rejected[0].1
        );
    }

    #[test]
    fn a_container_over_its_cap_gets_its_lowest_ports_and_is_reported() {
        let now = Instant::now();
        let host = HostKey::from("h");
        let ports: Vec<u16> = (41_000..44_000).rev().collect();
        let (big, small) = (container(1, 10, &ports), container(2, 20, &[8080]));
        let view = |held: &BTreeMap<u16, Held>| {
            let view = HostView {
                host: &host,
                max_forwards: None,
                forwards_per_container: Some(100),
                route: RouteFacts::PUBLISHED_ONLY,
                containers: vec![&big, &small],
            };
            plan(&[view], &Rules { rules: vec![] }, None, held, now)
        };
        let p = view(&BTreeMap::new());
        let bound = bound_ports(&p);
        let expected: Vec<u16> = std::iter::once(8080).chain(41_000..41_100).collect();
        assert_eq!(bound, expected);
        // Reported as one entry, not 2,900 rejected ports.
        assert!(p.rejected.is_empty(), "{:?}", p.rejected.len());
        assert_eq!(
            p.capped,
            vec![Capped {
                host: host.clone(),
                container: big.id.clone(),
                container_name: "c1".into(),
                published: 3_000,
                forwarded: 100,
            }]
        );
        // Applied, the next plan changes nothing: the same ports are kept.
        let mut held = BTreeMap::new();
        apply(&mut held, &p.actions, &[], now);
        assert!(view(&held).actions.is_empty());
    }

    #[test]
    fn the_total_keeps_bound_ports_then_the_earliest_started() {
        let now = Instant::now();
        let (a, b) = (HostKey::from("a"), HostKey::from("b"));
        let first = container(1, 10, &[8080, 8081]);
        let second = container(2, 20, &[9090]);
        let third = container(3, 30, &[7070, 7071]);
        let run = |held: &BTreeMap<u16, Held>, b_containers: Vec<&Container>| {
            let views = [
                HostView {
                    host: &a,
                    max_forwards: None,
                    forwards_per_container: None,
                    route: RouteFacts::PUBLISHED_ONLY,
                    containers: vec![&first],
                },
                HostView {
                    host: &b,
                    max_forwards: None,
                    forwards_per_container: None,
                    route: RouteFacts::PUBLISHED_ONLY,
                    containers: b_containers,
                },
            ];
            plan(&views, &Rules { rules: vec![] }, Some(3), held, now)
        };
        let p = run(&BTreeMap::new(), vec![&third, &second]);
        let mut bound = bound_ports(&p);
        bound.sort_unstable();
        assert_eq!(bound, vec![8080, 8081, 9090]);
        assert_eq!(p.over_total, 2);
        let mut out: Vec<u16> = p.rejected.iter().map(|(c, _)| c.local_port).collect();
        out.sort_unstable();
        assert_eq!(out, vec![7070, 7071]);
        assert!(p.rejected[0].1.contains("max_forwards_total"));
        // Applied: stable, and a container that goes frees room for the
        // next in line; the bound ones are never taken away.
        let mut held = BTreeMap::new();
        apply(&mut held, &p.actions, &[], now);
        assert!(run(&held, vec![&third, &second]).actions.is_empty());
        let p = run(&held, vec![&third]);
        assert_eq!(
            p.actions
                .iter()
                .filter(|a| matches!(a, Action::Bind(c) if c.local_port == 7070))
                .count(),
            1
        );
        assert!(p.actions.contains(&Action::Release(9090)));
        assert_eq!(p.over_total, 1);
    }

    #[test]
    fn a_pending_claim_binds_early_yields_to_a_running_one_and_becomes_it() {
        let now = Instant::now();
        let mut held = BTreeMap::new();
        let mut created = claim("h", 1, 30, 8080);
        created.pending = true;
        // Bound at create, before anything runs.
        assert_eq!(
            step(&mut held, &[&created], &[], now),
            vec![Action::Bind(created.clone())]
        );
        // Started: the same listener now forwards for the running claim.
        let started = claim("h", 1, 31, 8080);
        assert_eq!(
            step(&mut held, &[&started], &[], now),
            vec![Action::Retarget(started.clone())]
        );
        // A newer pending container never takes the port from a running one,
        // even one that started earlier.
        let mut newer = claim("h", 2, 99, 8080);
        newer.pending = true;
        let d = desired_forwards([&started, &newer], &held);
        assert_eq!(d.forwards[&8080], started);
        assert!(reconcile(&d, &held, now).is_empty());
    }

    #[test]
    fn new_listen_addresses_rebind_and_nothing_else_does() {
        let now = Instant::now();
        let mut held = BTreeMap::new();
        let c = claim("h", 1, 10, 8080);
        step(&mut held, &[&c], &[], now);
        let mut wider = c.clone();
        wider.bind = vec!["0.0.0.0".parse().expect("ip")];
        let actions = reconcile(&desired_forwards([&wider], &held), &held, now);
        assert_eq!(actions, vec![Action::Rebind(wider.clone())]);
        apply(&mut held, &actions, &[], now);
        assert!(reconcile(&desired_forwards([&wider], &held), &held, now).is_empty());
    }

    #[test]
    fn conflicted_port_is_retried_only_when_due() {
        let now = Instant::now();
        let mut held = BTreeMap::new();
        let c = claim("h", 1, 10, 8080);
        let d = desired_forwards([&c], &held);
        step(&mut held, &[&c], &[8080], now);
        assert!(!held[&8080].bound);
        assert!(reconcile(&d, &held, now + Duration::from_secs(1)).is_empty());
        assert_eq!(
            reconcile(&d, &held, now + Duration::from_secs(3)),
            vec![Action::Bind(c)]
        );
        // A conflicted port whose container went away is forgotten.
        let d = desired_forwards([], &held);
        assert_eq!(reconcile(&d, &held, now), vec![Action::Release(8080)]);
    }

    fn arb_claim() -> impl Strategy<Value = Claim> {
        (
            prop::sample::select(vec!["a", "b"]),
            0u8..6,
            0i64..5,
            prop::sample::select(vec![80u16, 443, 5432, 8080]),
        )
            .prop_map(|(h, id, started, port)| {
                let mut c = claim(h, id, started, port);
                // Some starts fall under a rule that binds IPv4 loopback
                // only (one start of a container has one bind set).
                if (i64::from(id) + started) % 2 == 0 {
                    c.bind.truncate(1);
                }
                c
            })
    }

    proptest! {
        /// Whatever the history, reconciling converges in one step: after the
        /// actions are applied, every desired port is held by exactly its
        /// desired owner, nothing else is held, and a second pass is a no-op.
        #[test]
        fn one_pass_converges(
            history in prop::collection::vec(prop::collection::vec(arb_claim(), 0..8), 1..6),
        ) {
            let now = Instant::now();
            let mut held = BTreeMap::new();
            for claims in &history {
                let d = desired_forwards(claims.iter(), &held);
                let actions = reconcile(&d, &held, now);
                apply(&mut held, &actions, &[], now);
                prop_assert!(reconcile(&d, &held, now).is_empty());
                prop_assert_eq!(held.len(), d.forwards.len());
                for (port, c) in &d.forwards {
                    prop_assert_eq!(&held[port].owner, c);
                }
            }
        }

        /// On one host the latest-started claimant owns each port, and every
        /// claimed port is desired.
        #[test]
        fn latest_start_owns_port_on_one_host(claims in prop::collection::vec(arb_claim(), 0..10)) {
            let claims: Vec<Claim> = claims.into_iter().filter(|c| &*c.host == "a").collect();
            let d = desired_forwards(claims.iter(), &BTreeMap::new());
            for c in &claims {
                let owner = &d.forwards[&c.local_port];
                prop_assert!(owner.started_at_ns >= c.started_at_ns);
            }
            prop_assert!(d.conflicts.is_empty());
        }

        /// The result does not depend on the order claims are listed in.
        #[test]
        fn order_independent(claims in prop::collection::vec(arb_claim(), 0..10)) {
            let mut reversed = claims.clone();
            reversed.reverse();
            let held = BTreeMap::new();
            prop_assert_eq!(
                desired_forwards(claims.iter(), &held).forwards,
                desired_forwards(reversed.iter(), &held).forwards
            );
        }
    }
}
