//! Every container by name (issue 31): each running container a host's
//! engine can reach directly gets a loopback address of its own on the
//! runner, answers there on its own ports, and resolves by its names.
//!
//! Pure: the daemon gives each plan the hosts' containers, the names the
//! system already has, and keeps the [`NameBook`] between plans; it binds
//! what [`NamesPlan::claims`] lists and writes [`NamesPlan::entries`].
//!
//! - [`range`]: the addresses names are given from.
//! - [`book`]: which container holds which address, and which name had it.
//! - [`wishes`]: the names one container asks for, only valid host names.
//! - [`ports`]: the ports one container's name serves.

pub mod book;
pub mod ports;
pub mod range;
pub mod wishes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use crate::hostsfile::{normalise, Entry};
use crate::model::{remote_ip_for, Claim, Container, ContainerId, HostKey, Protocol, Remote};
use crate::reconcile::HostView;
use crate::route::{self, PublishedWhy, Route};
use crate::rules::Rules;
use book::{Addresses, Holder};
pub use ports::{parse_ports_label, PORTS_LABEL};
pub use range::{AddressRange, RangeError, DEFAULT_RANGE};
pub use wishes::Spelling;
use wishes::{wishes, Kind};

/// What the daemon's configuration says about names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamesSettings {
    pub range: AddressRange,
    pub spelling: Spelling,
    /// At most this many ports per name (the lowest); the forwards' cap.
    pub ports_per_container: usize,
}

/// Names fwd never gives: the system's (its hosts file outside fwd's
/// block), `localhost`, and the runner's own host name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    system: BTreeSet<String>,
    runner: BTreeSet<String>,
}

impl Reserved {
    pub fn new(system: BTreeSet<String>, runner_hostname: Option<&str>) -> Reserved {
        let mut runner = BTreeSet::new();
        if let Some(h) = runner_hostname.map(str::to_ascii_lowercase) {
            if let Some((short, _)) = h.split_once('.') {
                runner.insert(short.to_string());
            }
            runner.insert(h);
        }
        Reserved {
            system: system.iter().map(|n| n.to_ascii_lowercase()).collect(),
            runner,
        }
    }

    /// Why `name` is not fwd's to give, if it is not.
    pub fn why(&self, name: &str) -> Option<&'static str> {
        if name == "localhost" || name.ends_with(".localhost") {
            Some("localhost is the system's")
        } else if self.runner.contains(name) {
            Some("it is this runner's own host name")
        } else if self.system.contains(name) {
            Some("the system's hosts file has it outside fwd's block")
        } else {
            None
        }
    }
}

/// A container that answers by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub host: HostKey,
    pub container: ContainerId,
    pub container_name: String,
    pub address: Ipv4Addr,
    /// The names it won, sorted.
    pub names: Vec<String>,
    /// One per port it serves: listening on `address`, going to the
    /// container's own address at that port.
    pub claims: Vec<Claim>,
    /// Ports past the per-container cap.
    pub left_out: usize,
    /// The container's own address (where connections go).
    pub to: String,
}

impl Named {
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.claims.iter().map(|c| c.container_port)
    }
}

/// A running container that has no address, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unnamed {
    pub host: HostKey,
    pub container: ContainerId,
    pub container_name: String,
    pub why: String,
    /// It will pass by itself (the engine has not said yet whether it
    /// runs rootless): listed, not logged.
    pub passing: bool,
}

/// A name a container asked for and did not get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub host: HostKey,
    pub container: ContainerId,
    pub container_name: String,
    /// The name, or the raw string escaped when it is no host name.
    pub name: String,
    pub why: String,
}

/// Something to log once while it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameNotice {
    pub host: HostKey,
    pub container: ContainerId,
    pub container_name: String,
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamesPlan {
    /// By address.
    pub named: Vec<Named>,
    pub unnamed: Vec<Unnamed>,
    pub refused: Vec<Refused>,
    /// What was not said before (each said once while it holds).
    pub news: Vec<NameNotice>,
}

impl NamesPlan {
    /// Every listener the names need, by address and port.
    pub fn claims(&self) -> BTreeMap<SocketAddrV4, Claim> {
        self.named
            .iter()
            .flat_map(|n| {
                n.claims
                    .iter()
                    .map(move |c| (SocketAddrV4::new(n.address, c.local_port), c.clone()))
            })
            .collect()
    }

    /// The hosts-file lines: each address with its names.
    pub fn entries(&self) -> Vec<Entry> {
        self.named
            .iter()
            .filter(|n| !n.names.is_empty())
            .map(|n| Entry {
                address: IpAddr::V4(n.address),
                names: n.names.clone(),
            })
            .collect()
    }
}

/// The names' memory between plans: addresses, and what was said.
#[derive(Clone, Debug, Default)]
pub struct NameBook {
    addresses: Addresses,
    said: BTreeSet<(HostKey, ContainerId, String)>,
}

/// One container that may be named, in the order they choose addresses.
struct Candidate<'a> {
    host: &'a HostKey,
    c: &'a Container,
    to: Remote,
    network: String,
}

impl NameBook {
    pub fn new(range: AddressRange) -> NameBook {
        NameBook {
            addresses: Addresses::new(range),
            said: BTreeSet::new(),
        }
    }

    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    pub fn addresses_mut(&mut self) -> &mut Addresses {
        &mut self.addresses
    }

    /// The names of `hosts` (those with `names = true`) now.
    pub fn plan(
        &mut self,
        settings: &NamesSettings,
        hosts: &[HostView<'_>],
        rules: &Rules,
        reserved: &Reserved,
    ) -> NamesPlan {
        self.addresses.set_range(settings.range);
        let mut out = NamesPlan::default();
        let mut notices: Vec<NameNotice> = Vec::new();
        let mut candidates = Vec::new();
        for view in hosts {
            for c in view.containers.iter().filter(|c| !c.pending) {
                match route::decide(&c.networks, false, 0, view.route) {
                    Route::Direct { to, network } => candidates.push(Candidate {
                        host: view.host,
                        c,
                        to,
                        network,
                    }),
                    Route::Published(why) => out.unnamed.push(Unnamed {
                        host: view.host.clone(),
                        container: c.id.clone(),
                        container_name: c.name.clone(),
                        why: format!("no address of its own: {why}"),
                        // Known within moments of the link: nothing to say.
                        passing: why == PublishedWhy::EngineNotKnown,
                    }),
                }
            }
        }
        candidates.sort_by(|a, b| {
            (a.c.started_at_ns, a.host, &a.c.id).cmp(&(b.c.started_at_ns, b.host, &b.c.id))
        });
        let alive: BTreeSet<Holder> = candidates
            .iter()
            .map(|k| (k.host.clone(), k.c.id.clone()))
            .collect();
        self.addresses.release_all_but(&alive);

        // Addresses first (earliest started first), then who wins each name.
        let mut placed = Vec::new();
        for k in &candidates {
            let holder = (k.host.clone(), k.c.id.clone());
            let mut identities = vec![k.c.name.clone()];
            if let (Some(s), Some(p)) = (k.c.compose_service(), k.c.compose_project.as_deref()) {
                identities.push(format!("{s}.{p}"));
            }
            match self.addresses.assign(&holder, &identities) {
                Some(address) => placed.push((k, address)),
                None => out.unnamed.push(Unnamed {
                    host: k.host.clone(),
                    container: k.c.id.clone(),
                    container_name: k.c.name.clone(),
                    why: format!("the names range {} is full", settings.range),
                    passing: false,
                }),
            }
        }
        let asked: Vec<_> = placed
            .iter()
            .map(|(k, _)| wishes(k.c, k.host, &settings.spelling))
            .collect();
        type Rank<'a> = (Kind, i64, &'a HostKey, &'a ContainerId);
        let mut winners: BTreeMap<&str, (Rank<'_>, usize)> = BTreeMap::new();
        for (i, ((k, _), w)) in placed.iter().zip(&asked).enumerate() {
            for (name, kind) in &w.names {
                let rank = (*kind, k.c.started_at_ns, k.host, &k.c.id);
                let best = winners.entry(name.as_str()).or_insert((rank, i));
                if rank < best.0 {
                    *best = (rank, i);
                }
            }
        }
        for (i, ((k, address), w)) in placed.iter().zip(&asked).enumerate() {
            let mut refuse = |name: String, why: String| {
                out.refused.push(Refused {
                    host: k.host.clone(),
                    container: k.c.id.clone(),
                    container_name: k.c.name.clone(),
                    name,
                    why,
                })
            };
            for raw in &w.invalid {
                refuse(raw.clone(), "not a valid host name (RFC 1123)".into());
            }
            let mut names = Vec::new();
            for name in w.names.keys() {
                if let Some(why) = reserved.why(name) {
                    refuse(name.clone(), format!("never shadowed: {why}"));
                    continue;
                }
                match winners.get(name.as_str()) {
                    Some((_, winner)) if *winner != i => {
                        let (other, _) = placed[*winner];
                        refuse(
                            name.clone(),
                            format!(
                                "container {} of host {} holds it (as its {})",
                                other.c.name,
                                other.host,
                                asked[*winner].names[name].as_str()
                            ),
                        );
                    }
                    _ => names.push(name.clone()),
                }
            }
            let ports = ports::name_ports(k.c, k.host, rules, settings.ports_per_container);
            if let Some(e) = &ports.label_error {
                notices.push(notice(k, format!("its ports label is ignored: {e}")));
            }
            if ports.left_out > 0 {
                notices.push(notice(
                    k,
                    format!(
                        "its name serves its lowest {} ports; {} more are left out (max_forwards_per_container)",
                        ports.ports.len(),
                        ports.left_out
                    ),
                ));
            }
            let claims = ports
                .ports
                .iter()
                .map(|p| name_claim(k, *address, *p))
                .collect();
            out.named.push(Named {
                host: k.host.clone(),
                container: k.c.id.clone(),
                container_name: k.c.name.clone(),
                address: *address,
                names,
                claims,
                left_out: ports.left_out,
                to: k.to.ip.clone(),
            });
        }
        out.named.sort_by_key(|n| n.address);
        notices.extend(out.refused.iter().map(|r| NameNotice {
            host: r.host.clone(),
            container: r.container.clone(),
            container_name: r.container_name.clone(),
            text: format!("name {} refused: {}", r.name, r.why),
        }));
        notices.extend(
            out.unnamed
                .iter()
                .filter(|u| !u.passing)
                .map(|u| NameNotice {
                    host: u.host.clone(),
                    container: u.container.clone(),
                    container_name: u.container_name.clone(),
                    text: u.why.clone(),
                }),
        );
        out.news = self.news(notices, hosts);
        out
    }

    /// The notices not said before; what no running container holds any
    /// more is forgotten, so it is said again if it comes back.
    fn news(&mut self, notices: Vec<NameNotice>, hosts: &[HostView<'_>]) -> Vec<NameNotice> {
        let running: BTreeSet<(&str, &ContainerId)> = hosts
            .iter()
            .flat_map(|v| v.containers.iter().map(move |c| (&**v.host, &c.id)))
            .collect();
        self.said.retain(|(h, id, _)| running.contains(&(&**h, id)));
        let now: BTreeSet<_> = notices
            .iter()
            .map(|n| (n.host.clone(), n.container.clone(), n.text.clone()))
            .collect();
        // A notice that no longer holds may be said again later.
        self.said.retain(|k| now.contains(k));
        notices
            .into_iter()
            .filter(|n| {
                self.said
                    .insert((n.host.clone(), n.container.clone(), n.text.clone()))
            })
            .collect()
    }
}

fn notice(k: &Candidate<'_>, text: String) -> NameNotice {
    NameNotice {
        host: k.host.clone(),
        container: k.c.id.clone(),
        container_name: k.c.name.clone(),
        text,
    }
}

/// One port of a name: it listens on the name's address at the container
/// port and goes to the container's own address; the published port (if
/// the container publishes that one) is where a failed direct route falls
/// back to, as for forwards.
fn name_claim(k: &Candidate<'_>, address: Ipv4Addr, port: u16) -> Claim {
    let to = Remote {
        ip: k.to.ip.clone(),
        port,
    };
    let published =
        k.c.ports
            .iter()
            .filter(|b| b.protocol == Protocol::Tcp && b.container_port == port && b.host_port != 0)
            .min_by_key(|b| (!matches!(b.host_ip.as_str(), "" | "0.0.0.0"), b.host_port))
            .map(|b| Remote {
                ip: remote_ip_for(&b.host_ip),
                port: b.host_port,
            });
    Claim {
        host: k.host.clone(),
        container: k.c.id.clone(),
        container_name: k.c.name.clone(),
        compose_project: k.c.compose_project.clone(),
        container_port: port,
        started_at_ns: k.c.started_at_ns,
        pending: false,
        local_port: port,
        bind: vec![IpAddr::V4(address)],
        remote: published.unwrap_or_else(|| to.clone()),
        route: Route::Direct {
            to,
            network: k.network.clone(),
        },
    }
}

/// Whether `name` (as a user types it, e.g. to `fwdctl wait`) is a name
/// fwd could give.
pub fn is_name(name: &str) -> bool {
    normalise(name).is_some()
}

#[cfg(test)]
mod tests;
