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
