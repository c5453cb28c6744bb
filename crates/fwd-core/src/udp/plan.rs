//! Which published UDP ports are forwarded (hosts with `udp = true`): the
//! same port on the runner's loopback, rules and remaps as for TCP, one
//! owner per local port (across hosts the one that had it keeps it, on a
//! host the latest started takes it, as for TCP).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{remote_ip_for, ContainerId, HostKey, Protocol, Remote};
use crate::reconcile::HostView;
use crate::rules::{Decision, PortFacts, Rules};

/// A container's published UDP port, to be served at `local_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpClaim {
    pub host: HostKey,
    pub container: ContainerId,
    pub container_name: String,
    pub container_port: u16,
    pub started_at_ns: i64,
    pub local_port: u16,
    pub bind: Vec<IpAddr>,
    /// Where the relay on the host sends: the published port.
    pub to: Remote,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpPlan {
    /// By local port.
    pub claims: BTreeMap<u16, UdpClaim>,
    /// Claims that lost their local port, and to whom.
    pub conflicts: Vec<(UdpClaim, String)>,
}

/// `held`: the local ports and the host that serves each now (the
/// incumbent keeps a port across hosts).
pub fn plan(hosts: &[HostView<'_>], rules: &Rules, held: &BTreeMap<u16, HostKey>) -> UdpPlan {
    let mut out = UdpPlan::default();
    let mut wanted: Vec<UdpClaim> = Vec::new();
    for view in hosts {
        for c in view.containers.iter().filter(|c| !c.pending) {
            for b in c
                .ports
                .iter()
                .filter(|b| b.protocol == Protocol::Udp && b.host_port != 0)
            {
                let facts = PortFacts {
                    host: view.host,
                    published_port: b.host_port,
                    labels: &c.labels,
                    project: c.compose_project.as_deref(),
                };
                let Decision::Forward { local_port, bind } = rules.decide(&facts) else {
                    continue;
                };
                let claim = UdpClaim {
                    host: view.host.clone(),
                    container: c.id.clone(),
                    container_name: c.name.clone(),
                    container_port: b.container_port,
                    started_at_ns: c.started_at_ns,
                    local_port,
                    bind,
                    to: Remote {
                        ip: remote_ip_for(&b.host_ip),
                        port: b.host_port,
                    },
                };
                // The same port on 0.0.0.0 and :: is one forward.
                if !wanted.iter().any(|w| {
                    w.host == claim.host
                        && w.container == claim.container
                        && w.local_port == local_port
                }) {
                    wanted.push(claim);
                }
            }
        }
    }
    // Latest started first within a host; the incumbent host first across.
    wanted.sort_by(|a, b| {
        let inc = |c: &UdpClaim| held.get(&c.local_port) != Some(&c.host);
        (
            a.local_port,
            inc(a),
            std::cmp::Reverse(a.started_at_ns),
            &a.host,
            &a.container,
        )
            .cmp(&(
                b.local_port,
                inc(b),
                std::cmp::Reverse(b.started_at_ns),
                &b.host,
                &b.container,
            ))
    });
    for claim in wanted {
        match out.claims.get(&claim.local_port) {
            Some(owner) => {
                let why = format!(
                    "local UDP port {} is served for container {} of host {}",
                    claim.local_port, owner.container_name, owner.host
                );
                out.conflicts.push((claim, why));
            }
            None => {
                out.claims.insert(claim.local_port, claim);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Container, PortBinding};
    use crate::route::RouteFacts;
    use crate::rules::{Rule, RuleAction};

    fn container(n: u8, started: i64, ports: &[(u16, Protocol, u16)]) -> Container {
        Container {
            id: ContainerId::parse(&format!("{n:012x}")).expect("id"),
            name: format!("c{n}"),
            compose_project: None,
            started_at_ns: started,
            pending: false,
            ports: ports
                .iter()
                .flat_map(|(cport, protocol, hport)| {
                    ["0.0.0.0", "::"].map(|ip| PortBinding {
                        container_port: *cport,
                        protocol: *protocol,
                        host_ip: ip.into(),
                        host_port: *hport,
                    })
                })
                .collect(),
            labels: BTreeMap::new(),
            networks: vec![],
            exposed_ports: vec![],
            aliases: vec![],
        }
    }

    fn view<'a>(host: &'a HostKey, cs: &'a [Container]) -> HostView<'a> {
        HostView {
            host,
            max_forwards: None,
            forwards_per_container: None,
            route: RouteFacts::PUBLISHED_ONLY,
            containers: cs.iter().collect(),
        }
    }

    #[test]
    fn published_udp_ports_are_claimed_once_at_the_same_number() {
        let h = HostKey::from("h");
        let cs = [container(
            1,
            10,
            &[(53, Protocol::Udp, 5353), (80, Protocol::Tcp, 8080)],
        )];
        let p = plan(&[view(&h, &cs)], &Rules { rules: vec![] }, &BTreeMap::new());
        assert_eq!(p.claims.len(), 1);
        let c = &p.claims[&5353];
        assert_eq!(c.to.to_string(), "127.0.0.1:5353");
        assert_eq!(c.container_port, 53);
        assert!(p.conflicts.is_empty());
    }

    #[test]
    fn rules_skip_and_remap_udp_as_tcp() {
        let h = HostKey::from("h");
        let cs = [container(
            1,
            10,
            &[(53, Protocol::Udp, 5353), (514, Protocol::Udp, 1514)],
        )];
        let rules = Rules {
            rules: vec![
                Rule {
                    host: None,
                    ports: Some((5353, 5353)),
                    label: None,
                    project: None,
                    action: RuleAction::Forward {
                        local_port: Some(15353),
                        bind: None,
                    },
                },
                Rule {
                    host: None,
                    ports: Some((1514, 1514)),
                    label: None,
                    project: None,
                    action: RuleAction::Skip,
                },
            ],
        };
        let p = plan(&[view(&h, &cs)], &rules, &BTreeMap::new());
        assert_eq!(p.claims.keys().copied().collect::<Vec<_>>(), vec![15353]);
        assert_eq!(p.claims[&15353].to.port, 5353);
    }

    #[test]
    fn one_owner_per_port_the_incumbent_host_then_the_latest_started() {
        let (a, b) = (HostKey::from("a"), HostKey::from("b"));
        let on_a = [
            container(1, 10, &[(53, Protocol::Udp, 5353)]),
            container(2, 20, &[(53, Protocol::Udp, 5353)]),
        ];
        let on_b = [container(3, 30, &[(53, Protocol::Udp, 5353)])];
        let views = [view(&a, &on_a), view(&b, &on_b)];
        let p = plan(
            &views,
            &Rules { rules: vec![] },
            &BTreeMap::from([(5353, a.clone())]),
        );
        assert_eq!(p.claims[&5353].container_name, "c2");
        assert_eq!(p.conflicts.len(), 2);
        let fresh = plan(&views, &Rules { rules: vec![] }, &BTreeMap::new());
        assert_eq!(fresh.claims[&5353].container_name, "c3");
    }
}
