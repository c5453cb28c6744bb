//! The handover document: what one fwdd image tells the next across a
//! binary upgrade (`execve` in place), next to the file descriptors it
//! leaves open for it.
//!
//! The format is versioned by [`HANDOVER_VERSION`]. A new image accepts
//! every version in [`ACCEPTED_VERSIONS`]; the old image asks it first
//! (`fwdd upgrade-check`) and does not hand anything over to an image that
//! would not understand. Fields may be added within a version only with
//! `#[serde(default)]`, so a document written by an older image of the same
//! version still parses (`tests/handover-v1.json` is such a document).
//!
//! File descriptors are plain numbers here: they are valid in the new image
//! because the old one cleared `FD_CLOEXEC` on exactly these before `execve`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use fwd_core::{
    Claim, Container, ContainerId, EngineRoute, HostKey, NetworkAttachment, PortBinding, Protocol,
    Remote,
};
use serde::{Deserialize, Serialize};

/// The version this image writes.
pub const HANDOVER_VERSION: u32 = 1;
/// The versions this image can take over from.
pub const ACCEPTED_VERSIONS: &[u32] = &[1];

/// What `fwdd upgrade-check` prints: who the binary is and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckAnswer {
    pub fwdd: String,
    pub handover_versions: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub handover_version: u32,
    /// The version of the image that wrote this.
    pub from_version: String,
    /// When the daemon process started (kept across upgrades), Unix ms.
    pub daemon_started_at_ms: u64,
    /// Upgrades this process went through before this one.
    pub upgrades: u32,
    /// The control socket's listener.
    pub control: SocketDoc,
    /// The `fwdctl upgrade` connection, answered by the new image.
    pub reply_fd: Option<RawFd>,
    /// The next host's number (`h<N>.ctl`).
    pub next_host_id: u32,
    pub hosts: Vec<HostDoc>,
    pub forwards: Vec<ForwardDoc>,
    /// Containers by name: the addresses given and their listeners.
    #[serde(default)]
    pub names: NamesDoc,
    /// UDP forwards: their sockets (sessions start again in the new image).
    #[serde(default)]
    pub udp: Vec<UdpDoc>,
    /// Engine socket connections in flight, paused between two writes.
    #[serde(default)]
    pub engine_relays: Vec<RelayDoc>,
    /// Engine socket clients accepted but not relaying yet: served again.
    #[serde(default)]
    pub engine_queued: Vec<QueuedDoc>,
    /// Exposures' connections in flight, paused between two writes
    /// (`client_fd` the master's arrival, `upstream_fd` the runner's TCP).
    #[serde(default)]
    pub expose_relays: Vec<ExposeRelayDoc>,
    /// Exposures' arrivals accepted but not relaying yet: served again.
    #[serde(default)]
    pub expose_queued: Vec<ExposeQueuedDoc>,
    /// The metrics endpoint's listener, when one is served.
    #[serde(default)]
    pub metrics: Option<ListenerDoc>,
    /// The old image itself (Linux: `/proc/self/exe` opened at its start):
    /// a new image that cannot take over executes it again with this very
    /// document, so nothing is lost.
    #[serde(default)]
    pub rollback_exe_fd: Option<RawFd>,
    /// The old image's path and arguments, for that rollback.
    #[serde(default)]
    pub binary: String,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketDoc {
    pub path: PathBuf,
    pub fd: RawFd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostDoc {
    pub name: String,
    /// `h<id>.ctl` and `h<id>.eng` in the runtime directory.
    pub id: u32,
    pub master: Option<MasterDoc>,
    /// `stream_local` or `dial_stdio`.
    pub route: String,
    pub engine_forwarded: bool,
    pub remote_socket: Option<String>,
    /// How the engine was found.
    #[serde(default)]
    pub found_by: Option<String>,
    pub since_ns: Option<i64>,
    pub docker_version: Option<String>,
    /// Whether the engine runs rootless, once it said (direct routes
    /// depend on it).
    #[serde(default)]
    pub rootless: Option<bool>,
    pub connected_for_ms: u64,
    pub containers: Vec<ContainerDoc>,
    pub engine_sockets: Vec<SocketDoc>,
    /// Engine connections served so far (status counters carry on).
    #[serde(default)]
    pub engine_total: u64,
    #[serde(default)]
    pub engine_bytes_up: u64,
    #[serde(default)]
    pub engine_bytes_down: u64,
    /// Consecutive failures and the wait left before the next attempt.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub retry_in_ms: Option<u64>,
    /// What the old image already logged of the current failure episode.
    #[serde(default)]
    pub episode: EpisodeDoc,
    /// Runner ports the host's containers reach: their sockets and
    /// counters (the remote forwards live in the master).
    #[serde(default)]
    pub exposures: Vec<ExposureDoc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureDoc {
    pub remote_port: u16,
    /// The runner address, e.g. `127.0.0.1:3000`.
    pub target: String,
    /// Made by `fwdctl expose` (kept until `unexpose`), not the configuration.
    pub runtime: bool,
    pub socket: SocketDoc,
    pub connections_total: u64,
    pub connections_failed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposeRelayDoc {
    pub host: String,
    pub remote_port: u16,
    pub client_fd: RawFd,
    pub upstream_fd: RawFd,
    pub up_open: bool,
    pub down_open: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposeQueuedDoc {
    pub host: String,
    pub remote_port: u16,
    pub fd: RawFd,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeDoc {
    pub kinds: Vec<String>,
    pub failures: u64,
    pub recovery_logged: bool,
    pub announced_first_up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterDoc {
    pub pid: u32,
    /// Read end of ssh's stderr pipe.
    pub stderr_fd: Option<RawFd>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerDoc {
    pub id: String,
    pub name: String,
    pub compose_project: Option<String>,
    pub started_at_ns: i64,
    pub pending: bool,
    pub ports: Vec<PortDoc>,
    pub labels: BTreeMap<String, String>,
    /// Its networks (the direct route is decided from them).
    #[serde(default)]
    pub networks: Vec<NetworkDoc>,
    /// The TCP ports it declares (its name serves them).
    #[serde(default)]
    pub exposed_ports: Vec<u16>,
    /// Its network aliases (names).
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDoc {
    pub name: String,
    pub driver: Option<String>,
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
}

/// A forward's direct route: the container's address on `network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectRouteDoc {
    pub ip: String,
    pub port: u16,
    pub network: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortDoc {
    pub container_port: u16,
    pub protocol: String,
    pub host_ip: String,
    pub host_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardDoc {
    pub host: String,
    pub container: String,
    pub container_name: String,
    pub compose_project: Option<String>,
    pub container_port: u16,
    pub started_at_ns: i64,
    pub pending: bool,
    pub local_port: u16,
    pub bind: Vec<IpAddr>,
    pub remote_ip: String,
    pub remote_port: u16,
    pub listeners: Vec<ListenerDoc>,
    /// How long the container had been running, for the startup window.
    pub running_for_ms: Option<u64>,
    /// The container was seen listening: no more probes.
    pub listening: bool,
    /// The claim's direct route (`None`: the published port).
    #[serde(default)]
    pub direct_route: Option<DirectRouteDoc>,
    /// Why the direct route failed for this run of the container.
    #[serde(default)]
    pub direct_failed: Option<String>,
    /// When the forward was added, Unix ms (status "since").
    pub since_ms: u64,
    pub connections_total: u64,
    /// The mux connection of each open tunnel: the master closes the tunnel
    /// when it closes, so the new image must keep it.
    pub tunnels: Vec<RawFd>,
    /// Accepted connections not yet handed to the master: served again.
    pub queued: Vec<RawFd>,
}

/// A UDP forward: its claim and its bound sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpDoc {
    pub host: String,
    pub container: String,
    pub container_name: String,
    pub container_port: u16,
    pub started_at_ns: i64,
    pub local_port: u16,
    pub bind: Vec<IpAddr>,
    pub to_ip: String,
    pub to_port: u16,
    pub sockets: Vec<ListenerDoc>,
    #[serde(default)]
    pub datagrams_in: u64,
    #[serde(default)]
    pub datagrams_out: u64,
    #[serde(default)]
    pub dropped: u64,
}

/// A UDP forward's claim, checked as the plan made it.
pub fn udp_claim(u: &UdpDoc) -> Result<fwd_core::udp::UdpClaim, DocumentError> {
    let container =
        ContainerId::parse(&u.container).map_err(|e| DocumentError::Invalid(e.to_string()))?;
    if u.local_port == 0 || u.to_port == 0 || u.to_ip.parse::<IpAddr>().is_err() {
        return Err(DocumentError::Invalid(format!(
            "UDP forward {} → {}:{}",
            u.local_port, u.to_ip, u.to_port
        )));
    }
    Ok(fwd_core::udp::UdpClaim {
        host: HostKey::from(u.host.as_str()),
        container,
        container_name: u.container_name.clone(),
        container_port: u.container_port,
        started_at_ns: u.started_at_ns,
        local_port: u.local_port,
        bind: u.bind.clone(),
        to: fwd_core::Remote {
            ip: u.to_ip.clone(),
            port: u.to_port,
        },
    })
}

/// The names' part: which container holds which address (so each keeps
/// it), and each name's listener as a forward on the name's own address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NamesDoc {
    pub addresses: Vec<NameAddressDoc>,
    pub listeners: Vec<ForwardDoc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameAddressDoc {
    pub host: String,
    pub container: String,
    pub address: std::net::Ipv4Addr,
    /// The names the address is remembered by after the container goes.
    pub identities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerDoc {
    pub addr: SocketAddr,
    pub fd: RawFd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedDoc {
    pub host: String,
    pub fd: RawFd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayDoc {
    pub host: String,
    pub client_fd: RawFd,
    pub upstream_fd: RawFd,
    /// Whether each direction still carries bytes (the other was half-closed).
    pub up_open: bool,
    pub down_open: bool,
    /// Held for the relay's life: a dial-stdio session's mux connection
    /// (the session ends when it closes).
    pub keep_fds: Vec<RawFd>,
    /// A dial-stdio session's stderr, drained.
    pub drain_fd: Option<RawFd>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocumentError {
    #[error("handover document is not valid JSON for this fwdd: {0}")]
    Malformed(String),
    #[error("handover version {got} is not one this fwdd accepts ({accepted:?})")]
    Version { got: u32, accepted: Vec<u32> },
    #[error("handover document: {0}")]
    Invalid(String),
}

impl Document {
    pub fn parse(bytes: &[u8]) -> Result<Document, DocumentError> {
        #[derive(Deserialize)]
        struct Versioned {
            handover_version: u32,
        }
        let v: Versioned =
            serde_json::from_slice(bytes).map_err(|e| DocumentError::Malformed(e.to_string()))?;
        if !ACCEPTED_VERSIONS.contains(&v.handover_version) {
            return Err(DocumentError::Version {
                got: v.handover_version,
                accepted: ACCEPTED_VERSIONS.to_vec(),
            });
        }
        let doc: Document =
            serde_json::from_slice(bytes).map_err(|e| DocumentError::Malformed(e.to_string()))?;
        doc.check()?;
        Ok(doc)
    }

    /// Every descriptor named once, none of them stdio: a document that
    /// would make two owners of one fd is refused before anything is used.
    fn check(&self) -> Result<(), DocumentError> {
        let mut seen = std::collections::BTreeSet::new();
        for fd in self.fds() {
            if fd <= 2 {
                return Err(DocumentError::Invalid(format!("fd {fd} is stdio")));
            }
            if !seen.insert(fd) {
                return Err(DocumentError::Invalid(format!("fd {fd} is named twice")));
            }
        }
        for h in &self.hosts {
            route(&h.route)?;
            for c in &h.containers {
                container(c)?;
            }
            for e in &h.exposures {
                expose_spec(e)?;
            }
        }
        for f in self.forwards.iter().chain(&self.names.listeners) {
            claim(f)?;
        }
        for u in &self.udp {
            udp_claim(u)?;
        }
        for a in &self.names.addresses {
            ContainerId::parse(&a.container).map_err(|e| DocumentError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// Every descriptor the document hands over.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.control.fd];
        fds.extend(self.reply_fd);
        fds.extend(self.rollback_exe_fd);
        for h in &self.hosts {
            fds.extend(h.master.iter().filter_map(|m| m.stderr_fd));
            fds.extend(h.engine_sockets.iter().map(|s| s.fd));
            fds.extend(h.exposures.iter().map(|e| e.socket.fd));
        }
        for f in self.forwards.iter().chain(&self.names.listeners) {
            fds.extend(f.listeners.iter().map(|l| l.fd));
            fds.extend(&f.tunnels);
            fds.extend(&f.queued);
        }
        for u in &self.udp {
            fds.extend(u.sockets.iter().map(|s| s.fd));
        }
        fds.extend(self.engine_queued.iter().map(|q| q.fd));
        for r in &self.engine_relays {
            fds.extend([r.client_fd, r.upstream_fd]);
            fds.extend(&r.keep_fds);
            fds.extend(r.drain_fd);
        }
        for r in &self.expose_relays {
            fds.extend([r.client_fd, r.upstream_fd]);
        }
        fds.extend(self.expose_queued.iter().map(|q| q.fd));
        fds.extend(self.metrics.iter().map(|m| m.fd));
        fds
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An exposure's spec, checked as the configuration would.
pub fn expose_spec(e: &ExposureDoc) -> Result<fwd_core::ExposeSpec, DocumentError> {
    let target: SocketAddr = e
        .target
        .parse()
        .map_err(|_| DocumentError::Invalid(format!("exposure target {:?}", e.target)))?;
    if e.remote_port == 0 || target.port() == 0 {
        return Err(DocumentError::Invalid(format!(
            "exposure {} → {target}: port 0",
            e.remote_port
        )));
    }
    Ok(fwd_core::ExposeSpec {
        remote_port: e.remote_port,
        target,
    })
}

pub fn route_name(r: EngineRoute) -> String {
    r.as_str().to_string()
}

pub fn route(s: &str) -> Result<EngineRoute, DocumentError> {
    match s {
        "stream_local" => Ok(EngineRoute::StreamLocal),
        "dial_stdio" => Ok(EngineRoute::DialStdio),
        other => Err(DocumentError::Invalid(format!(
            "unknown engine route {other:?}"
        ))),
    }
}

pub fn container_doc(c: &Container) -> ContainerDoc {
    ContainerDoc {
        id: c.id.as_str().to_string(),
        name: c.name.clone(),
        compose_project: c.compose_project.clone(),
        started_at_ns: c.started_at_ns,
        pending: c.pending,
        ports: c
            .ports
            .iter()
            .map(|p| PortDoc {
                container_port: p.container_port,
                protocol: p.protocol.as_str().to_string(),
                host_ip: p.host_ip.clone(),
                host_port: p.host_port,
            })
            .collect(),
        labels: c.labels.clone(),
        networks: c
            .networks
            .iter()
            .map(|n| NetworkDoc {
                name: n.name.clone(),
                driver: n.driver.clone(),
                ipv4: n.ipv4,
                ipv6: n.ipv6,
            })
            .collect(),
        exposed_ports: c.exposed_ports.clone(),
        aliases: c.aliases.clone(),
    }
}

pub fn container(d: &ContainerDoc) -> Result<Container, DocumentError> {
    let id = ContainerId::parse(&d.id).map_err(|e| DocumentError::Invalid(e.to_string()))?;
    let ports = d
        .ports
        .iter()
        .map(|p| {
            Ok(PortBinding {
                container_port: p.container_port,
                protocol: Protocol::parse(&p.protocol).ok_or_else(|| {
                    DocumentError::Invalid(format!("unknown protocol {:?}", p.protocol))
                })?,
                host_ip: p.host_ip.clone(),
                host_port: p.host_port,
            })
        })
        .collect::<Result<_, DocumentError>>()?;
    Ok(Container {
        id,
        name: d.name.clone(),
        compose_project: d.compose_project.clone(),
        started_at_ns: d.started_at_ns,
        pending: d.pending,
        ports,
        labels: d.labels.clone(),
        networks: d
            .networks
            .iter()
            .map(|n| NetworkAttachment {
                name: n.name.clone(),
                driver: n.driver.clone(),
                ipv4: n.ipv4,
                ipv6: n.ipv6,
            })
            .collect(),
        exposed_ports: d.exposed_ports.clone(),
        aliases: d.aliases.clone(),
    })
}

pub fn claim(f: &ForwardDoc) -> Result<Claim, DocumentError> {
    Ok(Claim {
        host: HostKey::from(f.host.as_str()),
        container: ContainerId::parse(&f.container)
            .map_err(|e| DocumentError::Invalid(e.to_string()))?,
        container_name: f.container_name.clone(),
        compose_project: f.compose_project.clone(),
        container_port: f.container_port,
        started_at_ns: f.started_at_ns,
        pending: f.pending,
        local_port: f.local_port,
        bind: f.bind.clone(),
        remote: Remote {
            ip: f.remote_ip.clone(),
            port: f.remote_port,
        },
        // The first plan of the new image decides the route again, from
        // the same facts: the same route, unless they changed meanwhile.
        route: match &f.direct_route {
            Some(d) => fwd_core::Route::Direct {
                to: Remote {
                    ip: d.ip.clone(),
                    port: d.port,
                },
                network: d.network.clone(),
            },
            None => fwd_core::Route::Published(fwd_core::PublishedWhy::EngineNotKnown),
        },
    })
}

pub fn direct_route_doc(route: &fwd_core::Route) -> Option<DirectRouteDoc> {
    match route {
        fwd_core::Route::Direct { to, network } => Some(DirectRouteDoc {
            ip: to.ip.clone(),
            port: to.port,
            network: network.clone(),
        }),
        fwd_core::Route::Published(_) => None,
    }
}

pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = include_str!("tests/handover-v1.json");

    #[test]
    fn a_version_1_document_written_by_the_first_image_still_parses() {
        let doc = Document::parse(V1.as_bytes()).expect("v1 parses");
        assert_eq!(doc.handover_version, 1);
        assert_eq!(doc.hosts.len(), 1);
        assert_eq!(doc.hosts[0].master.as_ref().map(|m| m.pid), Some(4242));
        let c = container(&doc.hosts[0].containers[0]).expect("container");
        assert_eq!(c.ports[0].protocol, Protocol::Tcp);
        let f = &doc.forwards[0];
        assert_eq!(claim(f).expect("claim").local_port, 18080);
        assert_eq!(f.tunnels, vec![12]);
        assert_eq!(doc.fds().len(), 9);
    }

    /// What a forward's route depends on carries over: the containers'
    /// networks, the engine's rootless answer, each claim's direct route and
    /// why it failed. A v1 document has none of it: its forwards take the
    /// published port until the new image's first plan.
    #[test]
    fn routes_and_what_they_depend_on_carry_over() {
        let mut doc = Document::parse(V1.as_bytes()).expect("v1 parses");
        assert_eq!(doc.hosts[0].rootless, None);
        assert_eq!(
            claim(&doc.forwards[0]).expect("claim").route,
            fwd_core::Route::Published(fwd_core::PublishedWhy::EngineNotKnown)
        );
        let mut c = container(&doc.hosts[0].containers[0]).expect("container");
        c.networks = vec![
            NetworkAttachment {
                name: "bridge".into(),
                driver: Some("bridge".into()),
                ipv4: Some(std::net::Ipv4Addr::new(172, 17, 0, 2)),
                ipv6: None,
            },
            NetworkAttachment {
                name: "v6".into(),
                driver: None,
                ipv4: None,
                ipv6: Some("fd00::2".parse().expect("v6")),
            },
        ];
        doc.hosts[0].containers[0] = container_doc(&c);
        doc.hosts[0].rootless = Some(false);
        let route = fwd_core::Route::Direct {
            to: Remote {
                ip: "172.17.0.2".into(),
                port: 80,
            },
            network: "bridge".into(),
        };
        doc.forwards[0].direct_route = direct_route_doc(&route);
        doc.forwards[0].direct_failed = Some("administratively prohibited: open failed".into());

        let back = Document::parse(&doc.to_json()).expect("parses");
        assert_eq!(back, doc);
        let networks = container(&back.hosts[0].containers[0])
            .expect("container")
            .networks;
        assert_eq!(networks, c.networks);
        assert_eq!(back.hosts[0].rootless, Some(false));
        assert_eq!(claim(&back.forwards[0]).expect("claim").route, route);
    }

    #[test]
    fn round_trip() {
        let doc = Document::parse(V1.as_bytes()).expect("v1 parses");
        assert_eq!(Document::parse(&doc.to_json()), Ok(doc));
    }

    #[test]
    fn unknown_versions_and_bad_documents_are_refused() {
        let v2 = V1.replacen("\"handover_version\": 1", "\"handover_version\": 2", 1);
        assert_eq!(
            Document::parse(v2.as_bytes()),
            Err(DocumentError::Version {
                got: 2,
                accepted: vec![1]
            })
        );
        assert!(matches!(
            Document::parse(b"{\"handover_version\": 1}"),
            Err(DocumentError::Malformed(_))
        ));
        assert!(matches!(
            Document::parse(b"garbage"),
            Err(DocumentError::Malformed(_))
        ));
        // One fd with two owners would be closed twice.
        let twice = V1.replacen("\"queued\": [13]", "\"queued\": [12]", 1);
        assert_eq!(
            Document::parse(twice.as_bytes()),
            Err(DocumentError::Invalid("fd 12 is named twice".into()))
        );
        let stdio = V1.replacen("\"fd\": 3", "\"fd\": 1", 1);
        assert_eq!(
            Document::parse(stdio.as_bytes()),
            Err(DocumentError::Invalid("fd 1 is stdio".into()))
        );
        let bad_route = V1.replacen("\"stream_local\"", "\"carrier_pigeon\"", 1);
        assert!(matches!(
            Document::parse(bad_route.as_bytes()),
            Err(DocumentError::Invalid(_))
        ));
    }

    #[test]
    fn containers_convert_both_ways() {
        let doc = Document::parse(V1.as_bytes()).expect("v1 parses");
        let d = &doc.hosts[0].containers[0];
        assert_eq!(&container_doc(&container(d).expect("container")), d);
    }
}
