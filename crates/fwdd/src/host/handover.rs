//! A host in a binary upgrade: what its machine hands over
//! (`HostMachine::handover`, a [`fwd_core::Handover`]) with its master, as
//! the document's [`HostDoc`]; its engine socket and its exposures add
//! their own parts. The new image adopts it back from there: a
//! [`HostTakeover`] for `Daemon::adopt_host`, then the relays.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Host;
use crate::engine::EngineSocket;
use crate::expose::AdoptedExposure;
use crate::handover::document::{self, EpisodeDoc, HostDoc, MasterDoc};
use crate::handover::{Descriptors, Document};

/// A host the previous image ran, its descriptors owned.
pub struct HostTakeover {
    pub name: String,
    pub id: u32,
    pub state: fwd_core::Handover,
    pub master: Option<(u32, Option<OwnedFd>)>,
    pub engine_sockets: Vec<(PathBuf, OwnedFd)>,
    pub engine_totals: (u64, u64, u64),
    pub exposures: Vec<AdoptedExposure>,
}

impl HostTakeover {
    /// The host `h` names (`None`: an engine route `Document::parse`
    /// refused).
    pub fn from_doc(h: &HostDoc, fds: &mut Descriptors) -> Option<HostTakeover> {
        let state = machine_state(h)?;
        let (engine_sockets, engine_totals) = EngineSocket::inherited(h, fds);
        Some(HostTakeover {
            name: h.name.clone(),
            id: h.id,
            state,
            master: h
                .master
                .as_ref()
                .map(|m| (m.pid, m.stderr_fd.and_then(|fd| fds.take(fd)))),
            engine_sockets,
            engine_totals,
            exposures: h
                .exposures
                .iter()
                .filter_map(|e| AdoptedExposure::from_doc(e, fds))
                .collect(),
        })
    }
}

impl Host {
    /// This host's part of the handover: its record (the machine's state,
    /// the master, the engine socket's and the exposures' parts) and their
    /// relays and waiting clients in the document's lists.
    pub fn to_doc(&self, now: Instant, doc: &mut Document) {
        let state = self.machine.borrow().handover(now);
        let master = match (state.master_pid, self.master_fds.get()) {
            (Some(pid), Some((live, stderr_fd))) if pid == live => {
                Some(MasterDoc { pid, stderr_fd })
            }
            _ => None,
        };
        let mut h = host_doc(self.key.to_string(), self.id, state, master);
        if let Ok(s) = self.engine_socket.borrow().as_ref() {
            s.to_doc(&mut h, doc);
        }
        self.exposures.to_doc(&mut h, doc);
        doc.hosts.push(h);
    }

    /// Resumes the relays of this host's engine socket and exposures, and
    /// serves the clients they had accepted, as the previous image left them.
    pub fn resume_from(&self, doc: &Document, fds: &mut Descriptors) {
        if let Ok(s) = self.engine_socket.borrow().as_ref() {
            s.resume_from(doc, fds);
        }
        self.exposures.resume_from(doc, fds);
    }
}

/// The machine's handover as a host record, without the engine socket's
/// and the exposures' parts.
fn host_doc(
    name: String,
    id: u32,
    state: fwd_core::Handover,
    master: Option<MasterDoc>,
) -> HostDoc {
    HostDoc {
        name,
        id,
        route: document::route_name(state.route),
        engine_forwarded: state.engine_forwarded,
        remote_socket: state.remote_socket,
        found_by: state.found_by.map(str::to_string),
        since_ns: state.since_ns,
        docker_version: state.docker_version,
        rootless: state.rootless,
        connected_for_ms: document::ms(state.connected_for),
        containers: state
            .containers
            .iter()
            .map(document::container_doc)
            .collect(),
        master,
        engine_sockets: Vec::new(),
        engine_total: 0,
        engine_bytes_up: 0,
        engine_bytes_down: 0,
        failures: state.failures,
        retry_in_ms: state.retry_in.map(document::ms),
        episode: EpisodeDoc {
            kinds: state.episode.kinds,
            failures: state.episode.failures,
            recovery_logged: state.episode.recovery_logged,
            announced_first_up: state.episode.announced_first_up,
        },
        exposures: Vec::new(),
    }
}

/// What the host's machine adopts (`HostMachine::adopt`).
fn machine_state(h: &HostDoc) -> Option<fwd_core::Handover> {
    Some(fwd_core::Handover {
        master_pid: h.master.as_ref().map(|m| m.pid),
        route: document::route(&h.route).ok()?,
        engine_forwarded: h.engine_forwarded,
        remote_socket: h.remote_socket.clone(),
        found_by: h
            .found_by
            .as_deref()
            .and_then(fwd_core::discovery::found_by),
        since_ns: h.since_ns,
        containers: h
            .containers
            .iter()
            .filter_map(|c| document::container(c).ok())
            .collect(),
        docker_version: h.docker_version.clone(),
        rootless: h.rootless,
        connected_for: Duration::from_millis(h.connected_for_ms),
        failures: h.failures,
        retry_in: h.retry_in_ms.map(Duration::from_millis),
        episode: fwd_core::EpisodeSnapshot {
            kinds: h.episode.kinds.clone(),
            failures: h.episode.failures,
            recovery_logged: h.episode.recovery_logged,
            announced_first_up: h.episode.announced_first_up,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = include_str!("../handover/tests/handover-v1.json");

    /// Everything `HostMachine::handover` says comes back for
    /// `HostMachine::adopt` through the document as the next image reads it:
    /// a field one direction forgot fails here.
    #[test]
    fn a_hosts_machine_state_survives_the_document() {
        let doc = Document::parse(V1.as_bytes()).expect("v1 parses");
        let mut container = document::container(&doc.hosts[0].containers[0]).expect("container");
        container.networks = vec![fwd_core::NetworkAttachment {
            name: "bridge".into(),
            driver: Some("bridge".into()),
            ipv4: Some(std::net::Ipv4Addr::new(172, 17, 0, 2)),
            ipv6: None,
        }];
        let state = fwd_core::Handover {
            master_pid: Some(4242),
            route: fwd_core::EngineRoute::DialStdio,
            engine_forwarded: true,
            remote_socket: Some("/run/user/1000/docker.sock".into()),
            found_by: fwd_core::discovery::found_by("rootless Docker's socket"),
            since_ns: Some(1_700_000_000_123_456_789),
            containers: vec![container],
            docker_version: Some("24.0.7".into()),
            rootless: Some(true),
            connected_for: Duration::from_millis(93_000),
            failures: 3,
            retry_in: Some(Duration::from_millis(1_500)),
            episode: fwd_core::EpisodeSnapshot {
                kinds: vec!["connect_refused".into()],
                failures: 7,
                recovery_logged: true,
                announced_first_up: true,
            },
        };
        assert!(state.found_by.is_some());
        let master = Some(MasterDoc {
            pid: 4242,
            stderr_fd: Some(9),
        });
        let h = host_doc("db".into(), 2, state.clone(), master);
        let read: HostDoc =
            serde_json::from_slice(&serde_json::to_vec(&h).expect("json")).expect("parses");
        assert_eq!(read, h);
        assert_eq!(machine_state(&read), Some(state));
    }
}
