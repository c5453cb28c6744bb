//! What fwd knows about a remote Docker host: containers and the ports they
//! publish, reduced to exactly what forwarding needs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use crate::route::Remote;
use crate::route::{self, NetworkAttachment, Route, RouteFacts};
use crate::rules::{Decision, PortFacts, Rules};

/// Names one configured Docker host (the `name` in the config, or the URL).
pub type HostKey = Arc<str>;

/// A Docker container ID: 12 to 64 lowercase hex characters.
///
/// IDs arrive from the remote side (event streams, API answers) and are later
/// put into request paths, so they are validated once, here, and every other
/// part of fwd only ever handles the validated type.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a container ID (expected 12-64 lowercase hex characters): {0:?}")]
pub struct InvalidContainerId(pub String);

impl ContainerId {
    pub fn parse(s: &str) -> Result<Self, InvalidContainerId> {
        let ok = (12..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(ContainerId(Arc::from(s)))
        } else {
            // Truncate so a hostile multi-megabyte "ID" cannot flood a log line.
            Err(InvalidContainerId(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 12-character form people see in `docker ps`.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One actual binding from `NetworkSettings.Ports`: container port
/// `container_port/protocol` published on the Docker host at `host_ip:host_port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortBinding {
    pub container_port: u16,
    pub protocol: Protocol,
    /// As Docker reports it: "0.0.0.0", "::", "127.0.0.1", "" (= all).
    pub host_ip: String,
    pub host_port: u16,
}

/// A running container as far as forwarding is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: ContainerId,
    pub name: String,
    pub compose_project: Option<String>,
    /// `State.StartedAt` in nanoseconds since the epoch, on the Docker host's
    /// clock. Orders containers competing for one port and lets stale events
    /// (older than the container's current start) be ignored.
    pub started_at_ns: i64,
    /// Created but not started: `ports` are the requested fixed host ports
    /// (`HostConfig.PortBindings`), bound ahead of the start so a client
    /// connecting the instant `docker run` returns waits instead of being
    /// refused. `started_at_ns` is then the creation time.
    pub pending: bool,
    pub ports: Vec<PortBinding>,
    /// The container's labels, as far as rules need them (bounded by the parser).
    pub labels: BTreeMap<String, String>,
    /// The networks it is attached to, with their addresses (none while
    /// only created): where the direct route may reach it.
    pub networks: Vec<NetworkAttachment>,
    /// The TCP ports it declares, published or not (its image's and
    /// `--expose`'s `ExposedPorts`), ascending and bounded: what its name
    /// serves besides its published container ports and `fwd.ports`.
    pub exposed_ports: Vec<u16>,
    /// Its network aliases (compose adds the service name), bounded.
    pub aliases: Vec<String>,
}

/// The label docker compose puts on every container of a project.
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";
/// The label docker compose (v1 and v2) puts on a service's containers.
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";

/// A container's wish to have `local_port` forwarded to `remote`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub host: HostKey,
    pub container: ContainerId,
    pub container_name: String,
    pub compose_project: Option<String>,
    pub container_port: u16,
    pub started_at_ns: i64,
    /// The container is created, not yet running (see [`Container::pending`]).
    pub pending: bool,
    pub local_port: u16,
    /// Local addresses to listen on (loopback unless a rule says otherwise).
    pub bind: Vec<IpAddr>,
    /// The published port on the host.
    pub remote: Remote,
    /// Which way connections go: the container itself, or `remote`.
    pub route: Route,
}

impl Claim {
    pub fn same_owner(&self, other: &Claim) -> bool {
        self.host == other.host && self.container == other.container
    }

    /// Where connections go on the host, as the route says.
    pub fn connect_to(&self) -> &Remote {
        match &self.route {
            Route::Direct { to, .. } => to,
            Route::Published(_) => &self.remote,
        }
    }
}

/// A published port fwd will not forward, kept so status can list it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub host: HostKey,
    pub container: ContainerId,
    pub container_name: String,
    pub binding: PortBinding,
    pub reason: &'static str,
}

/// Where a forward's remote end connects for a binding on `host_ip`.
///
/// A wildcard binding is reachable on the host's loopback, which is also the
/// only address guaranteed to be reachable from sshd; a specific address is
/// used as published, since nothing else listens for that port.
pub(crate) fn remote_ip_for(host_ip: &str) -> String {
    match host_ip {
        "" | "0.0.0.0" | "::" => "127.0.0.1".to_string(),
        other => other.to_string(),
    }
}

impl Container {
    /// The compose service it runs (`com.docker.compose.service`), if any.
    pub fn compose_service(&self) -> Option<&str> {
        self.labels.get(COMPOSE_SERVICE_LABEL).map(String::as_str)
    }

    /// Splits the container's bindings into forwardable claims (TCP, one per
    /// local port, as the rules decide, each with its [route](crate::route))
    /// and the ones fwd lists but does not forward. Ports the rules skip are
    /// in neither.
    pub fn claims(
        &self,
        host: &HostKey,
        rules: &Rules,
        route_facts: RouteFacts,
    ) -> (Vec<Claim>, Vec<Unsupported>) {
        let mut claims: Vec<Claim> = Vec::new();
        let mut unsupported = Vec::new();
        let mut bindings = self.ports.clone();
        // Deterministic choice when one host port appears on several
        // addresses: wildcards sort first ("" < "0.0.0.0" < "::" < others),
        // and a wildcard covers the loopback target anyway.
        bindings.sort_by(|a, b| {
            (a.host_port, wildcard_rank(&a.host_ip), &a.host_ip).cmp(&(
                b.host_port,
                wildcard_rank(&b.host_ip),
                &b.host_ip,
            ))
        });
        for b in bindings {
            if b.protocol != Protocol::Tcp {
                unsupported.push(Unsupported {
                    host: host.clone(),
                    container: self.id.clone(),
                    container_name: self.name.clone(),
                    reason: "only TCP ports are forwarded",
                    binding: b,
                });
                continue;
            }
            if b.host_port == 0 {
                // Docker has not (yet) assigned a port; nothing to forward.
                continue;
            }
            if claims.iter().any(|c| c.remote.port == b.host_port) {
                // The same port on 0.0.0.0 and :: is one forward.
                continue;
            }
            let facts = PortFacts {
                host,
                published_port: b.host_port,
                labels: &self.labels,
                project: self.compose_project.as_deref(),
            };
            let (local_port, bind) = match rules.decide(&facts) {
                Decision::Skip { .. } => continue,
                Decision::Forward { local_port, bind } => (local_port, bind),
            };
            if claims.iter().any(|c| c.local_port == local_port) {
                // Two ports remapped onto one local port: the first keeps it.
                continue;
            }
            claims.push(Claim {
                host: host.clone(),
                container: self.id.clone(),
                container_name: self.name.clone(),
                compose_project: self.compose_project.clone(),
                container_port: b.container_port,
                started_at_ns: self.started_at_ns,
                pending: self.pending,
                local_port,
                bind,
                remote: Remote {
                    ip: remote_ip_for(&b.host_ip),
                    port: b.host_port,
                },
                route: route::decide(&self.networks, self.pending, b.container_port, route_facts),
            });
        }
        (claims, unsupported)
    }
}

fn wildcard_rank(ip: &str) -> u8 {
    match ip {
        "" | "0.0.0.0" | "::" => 0,
        _ => 1,
    }
}

/// What the daemon needs to know about one container event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: ContainerId,
    pub action: EventAction,
    /// Event time on the Docker host's clock, nanoseconds since the epoch.
    pub time_nano: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventAction {
    /// The container was created: its fixed host ports can be bound now.
    Create,
    /// The container (re)started: its ports are published now.
    Start,
    /// The container's process exited (or was sent SIGKILL, which always
    /// ends it: dockerd reports `die` only tens of milliseconds later).
    Die,
    /// The container was removed.
    Destroy,
    /// Something that may change what we show (e.g. a rename): look again.
    Refresh,
    /// Anything else (exec_*, attach, health_status, …): nothing to do.
    Ignore,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(cport: u16, proto: Protocol, ip: &str, hport: u16) -> PortBinding {
        PortBinding {
            container_port: cport,
            protocol: proto,
            host_ip: ip.to_string(),
            host_port: hport,
        }
    }

    fn container(ports: Vec<PortBinding>) -> Container {
        Container {
            id: ContainerId::parse("0123456789ab").expect("valid"),
            name: "web".into(),
            compose_project: None,
            started_at_ns: 1,
            pending: false,
            ports,
            labels: BTreeMap::new(),
            networks: vec![],
            exposed_ports: vec![],
            aliases: vec![],
        }
    }

    fn no_rules() -> Rules {
        Rules { rules: vec![] }
    }

    #[test]
    fn container_ids_are_validated() {
        assert!(ContainerId::parse("0123456789ab").is_ok());
        assert!(ContainerId::parse(&"f".repeat(64)).is_ok());
        for bad in [
            "",
            "0123456789a",
            "0123456789AB",
            "0123456789ab;rm -rf /",
            "../../etc/passwd00",
            &"f".repeat(65),
        ] {
            assert!(ContainerId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn v4_and_v6_wildcards_make_one_forward_to_loopback() {
        let c = container(vec![
            binding(80, Protocol::Tcp, "::", 8080),
            binding(80, Protocol::Tcp, "0.0.0.0", 8080),
        ]);
        let (claims, unsupported) =
            c.claims(&HostKey::from("h"), &no_rules(), RouteFacts::PUBLISHED_ONLY);
        assert!(unsupported.is_empty());
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].local_port, 8080);
        assert_eq!(claims[0].remote.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn specific_host_ip_is_the_remote_end() {
        let c = container(vec![binding(80, Protocol::Tcp, "127.0.0.1", 8081)]);
        let (claims, _) = c.claims(&HostKey::from("h"), &no_rules(), RouteFacts::PUBLISHED_ONLY);
        assert_eq!(claims[0].remote.to_string(), "127.0.0.1:8081");
        let c = container(vec![binding(80, Protocol::Tcp, "fd00::1", 8082)]);
        let (claims, _) = c.claims(&HostKey::from("h"), &no_rules(), RouteFacts::PUBLISHED_ONLY);
        assert_eq!(claims[0].remote.to_string(), "[fd00::1]:8082");
    }

    #[test]
    fn udp_is_listed_not_claimed() {
        let c = container(vec![
            binding(53, Protocol::Udp, "0.0.0.0", 5353),
            binding(80, Protocol::Tcp, "0.0.0.0", 8080),
        ]);
        let (claims, unsupported) =
            c.claims(&HostKey::from("h"), &no_rules(), RouteFacts::PUBLISHED_ONLY);
        assert_eq!(claims.len(), 1);
        assert_eq!(unsupported.len(), 1);
        assert_eq!(unsupported[0].binding.host_port, 5353);
    }

    #[test]
    fn rules_remap_and_skip() {
        use crate::rules::{Rule, RuleAction};
        let c = container(vec![
            binding(5432, Protocol::Tcp, "0.0.0.0", 5432),
            binding(80, Protocol::Tcp, "0.0.0.0", 8080),
        ]);
        let rules = Rules {
            rules: vec![
                Rule {
                    host: None,
                    ports: Some((5432, 5432)),
                    label: None,
                    project: None,
                    action: RuleAction::Forward {
                        local_port: Some(15432),
                        bind: None,
                    },
                },
                Rule {
                    host: None,
                    ports: Some((8080, 8080)),
                    label: None,
                    project: None,
                    action: RuleAction::Skip,
                },
            ],
        };
        let (claims, _) = c.claims(&HostKey::from("h"), &rules, RouteFacts::PUBLISHED_ONLY);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].local_port, 15432);
        // The remote end is still the published port.
        assert_eq!(claims[0].remote.to_string(), "127.0.0.1:5432");
    }

    #[test]
    fn several_ports_each_claimed() {
        let c = container(vec![
            binding(80, Protocol::Tcp, "0.0.0.0", 8080),
            binding(90, Protocol::Tcp, "0.0.0.0", 9090),
            binding(91, Protocol::Tcp, "0.0.0.0", 0),
        ]);
        let (claims, _) = c.claims(&HostKey::from("h"), &no_rules(), RouteFacts::PUBLISHED_ONLY);
        let ports: Vec<u16> = claims.iter().map(|c| c.local_port).collect();
        assert_eq!(ports, vec![8080, 9090]);
    }
}
