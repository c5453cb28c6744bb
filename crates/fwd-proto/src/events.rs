//! `watch` events: what changed between two [`Status`] snapshots.
//!
//! The daemon does not log transitions for watchers; it takes a snapshot whenever its
//! state may have changed and sends the difference to the last snapshot it sent
//! ([`diff`]). A watcher that reads slowly therefore sees intermediate states coalesced,
//! never a growing backlog; the final state is always reported.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::status::{
    ForwardRoute, ForwardState, ForwardStatus, MasterState, MasterStatus, Status, StreamState,
    StreamStatus,
};

/// One line of a `watch` stream: `{"kind":"...","at_ms":...,...}`.
///
/// The first event of every watch is a [`Event::Snapshot`]; the others report changes
/// relative to what was sent before. New kinds may be added within protocol version 1:
/// readers must skip kinds they do not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// The full state when the watch began (always the first event).
    Snapshot {
        /// When the snapshot was taken (Unix ms).
        at_ms: u64,
        /// Everything the daemon knows, as for `status`.
        status: Status,
    },
    /// A forward appeared (a container publishing the port started, or was found on
    /// resync).
    ForwardAdded {
        /// When the change was seen (Unix ms).
        at_ms: u64,
        /// The new forward.
        forward: ForwardStatus,
    },
    /// A forward disappeared (its container stopped or was removed).
    ForwardRemoved {
        /// When the change was seen (Unix ms).
        at_ms: u64,
        /// The forward as last reported.
        forward: ForwardStatus,
    },
    /// A forward changed state (`active`, `conflict`, `pending`, `unsupported`).
    ForwardStateChanged {
        /// When the change was seen (Unix ms).
        at_ms: u64,
        /// The state before.
        previous_state: ForwardState,
        /// The forward now (`state`, `reason`, ...).
        forward: ForwardStatus,
    },
    /// An active forward's connections now take another route: to the
    /// container itself or the published port, another address, or its
    /// direct route failed (added within v1).
    ForwardRouteChanged {
        /// When the change was seen (Unix ms).
        at_ms: u64,
        /// The route before.
        previous_route: Option<ForwardRoute>,
        /// The forward now (`route`: kind, to, why, fell_back).
        forward: ForwardStatus,
    },
    /// A host's ssh master changed state or was replaced (new pid).
    MasterStateChanged {
        /// When the change was seen (Unix ms).
        at_ms: u64,
        /// The host's name.
        host: String,
        /// The state before (`null` if the host was not known before).
        previous_state: Option<MasterState>,
        /// The master now (`state`, `pid`, `last_error`, ...).
        master: MasterStatus,
    },
    /// A host's Docker event stream changed state or was restarted.
    StreamStateChanged {
        /// When the change was seen (Unix ms).
        at_ms: u64,
        /// The host's name.
        host: String,
        /// The state before (`null` if the host was not known before).
        previous_state: Option<StreamState>,
        /// The stream now (`state`, `restarts`, ...).
        stream: StreamStatus,
    },
}

impl Event {
    /// The `kind` value on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Snapshot { .. } => "snapshot",
            Event::ForwardAdded { .. } => "forward_added",
            Event::ForwardRemoved { .. } => "forward_removed",
            Event::ForwardStateChanged { .. } => "forward_state_changed",
            Event::ForwardRouteChanged { .. } => "forward_route_changed",
            Event::MasterStateChanged { .. } => "master_state_changed",
            Event::StreamStateChanged { .. } => "stream_state_changed",
        }
    }

    /// When the event was seen (Unix ms).
    pub fn at_ms(&self) -> u64 {
        match self {
            Event::Snapshot { at_ms, .. }
            | Event::ForwardAdded { at_ms, .. }
            | Event::ForwardRemoved { at_ms, .. }
            | Event::ForwardStateChanged { at_ms, .. }
            | Event::ForwardRouteChanged { at_ms, .. }
            | Event::MasterStateChanged { at_ms, .. }
            | Event::StreamStateChanged { at_ms, .. } => *at_ms,
        }
    }
}

/// Identity of a forward across snapshots: the same container port of the same
/// container on the same host, on the same local port. Sorted by local port first.
type ForwardKey<'a> = (u16, &'a str, &'a str, &'a str);

fn forward_key(f: &ForwardStatus) -> ForwardKey<'_> {
    (f.local_port, &f.host, &f.container_id, &f.container_port)
}

/// The events that lead from `old` to `new`, all stamped `at_ms`.
///
/// Order: master changes and stream changes per host (configuration order), then
/// forward changes by local port (removed, state changed, added for the same port).
/// Reported: a master whose `state` or `pid` changed; a stream whose `state` or
/// `restarts` changed; forwards added or removed; a forward whose `state` changed.
/// Counters (connections, events received, probe rtt) alone produce no event.
pub fn diff(old: &Status, new: &Status, at_ms: u64) -> Vec<Event> {
    let mut out = Vec::new();
    for h in &new.hosts {
        let before = old.hosts.iter().find(|o| o.name == h.name);
        let prev_master = before.map(|b| &b.master);
        if prev_master.map(|m| (m.state, m.pid)) != Some((h.master.state, h.master.pid)) {
            out.push(Event::MasterStateChanged {
                at_ms,
                host: h.name.clone(),
                previous_state: prev_master.map(|m| m.state),
                master: h.master.clone(),
            });
        }
        let prev_stream = before.map(|b| &b.events);
        if prev_stream.map(|s| (s.state, s.restarts)) != Some((h.events.state, h.events.restarts)) {
            out.push(Event::StreamStateChanged {
                at_ms,
                host: h.name.clone(),
                previous_state: prev_stream.map(|s| s.state),
                stream: h.events.clone(),
            });
        }
    }

    let old_fw: BTreeMap<ForwardKey, &ForwardStatus> =
        old.forwards.iter().map(|f| (forward_key(f), f)).collect();
    let new_fw: BTreeMap<ForwardKey, &ForwardStatus> =
        new.forwards.iter().map(|f| (forward_key(f), f)).collect();
    let mut keys: Vec<&ForwardKey> = old_fw.keys().chain(new_fw.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        match (old_fw.get(k), new_fw.get(k)) {
            (Some(o), None) => out.push(Event::ForwardRemoved {
                at_ms,
                forward: (*o).clone(),
            }),
            (None, Some(n)) => out.push(Event::ForwardAdded {
                at_ms,
                forward: (*n).clone(),
            }),
            (Some(o), Some(n)) if o.state != n.state => out.push(Event::ForwardStateChanged {
                at_ms,
                previous_state: o.state,
                forward: (*n).clone(),
            }),
            // Only a serving forward's route is news: a start's own change
            // of route rides on its state change.
            (Some(o), Some(n))
                if o.state == ForwardState::Active
                    && n.state == ForwardState::Active
                    && o.route != n.route =>
            {
                out.push(Event::ForwardRouteChanged {
                    at_ms,
                    previous_route: o.route.clone(),
                    forward: (*n).clone(),
                })
            }
            _ => {}
        }
    }
    // Within one local port, report removals before additions (a port handed over from
    // one container to another reads "removed, added").
    out.sort_by_key(|e| match e {
        Event::ForwardRemoved { forward, .. } => (1, forward.local_port, 0),
        Event::ForwardStateChanged { forward, .. } => (1, forward.local_port, 1),
        Event::ForwardRouteChanged { forward, .. } => (1, forward.local_port, 1),
        Event::ForwardAdded { forward, .. } => (1, forward.local_port, 2),
        _ => (0, 0, 0),
    });
    out
}
