//! The host's containers as the engine says: what its events and inspects
//! and a full resync tell, which containers wait to be inspected, which
//! created ones hold their ports, and when a change is told to the planner.
//!
//! Events are handled in order, between operations; an event of a container
//! being inspected waits for that answer (an inspect asked before an event
//! is never applied after it), and one inspect not yet asked answers for
//! every event of its container before it. A burst of changes is told once,
//! when it is over or after [`CHANGES_HELD_AT_MOST`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::model::{Container, ContainerEvent, ContainerId, EventAction};

/// Events received and not handled yet, at most: the stream is read no
/// further until the machine catches up (the socket then holds the rest).
/// Starts told by clients queue no further either.
pub const EVENTS_QUEUED_MAX: usize = 1024;

/// How long a change of the containers may wait for the rest of its burst
/// before it is told ([`Command::ContainersChanged`](super::Command)).
pub const CHANGES_HELD_AT_MOST: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
pub struct Tracker {
    containers: HashMap<ContainerId, Container>,
    /// Engine time of the last event seen: where a new stream resumes.
    since_ns: Option<i64>,
    /// When each pending (created, not started) container was first seen.
    pending_since: HashMap<ContainerId, Instant>,
    /// Events received, handled in order between operations.
    events: VecDeque<ContainerEvent>,
    /// Containers to inspect, oldest first, each once.
    to_inspect: VecDeque<ContainerId>,
    /// Since when the containers changed without being told.
    changed_since: Option<Instant>,
    /// A full list-and-inspect under way.
    resync: Option<Resync>,
}

#[derive(Debug, Default)]
struct Resync {
    pending: VecDeque<ContainerId>,
    fresh: HashMap<ContainerId, Container>,
}

impl Tracker {
    /// What a predecessor (the upgraded image) knew: its containers (the
    /// pending ones' clocks start again) and the event position.
    pub fn adopt(containers: Vec<Container>, since_ns: Option<i64>, now: Instant) -> Self {
        let mut t = Tracker {
            since_ns,
            ..Tracker::default()
        };
        for c in containers {
            if c.pending {
                t.pending_since.insert(c.id.clone(), now);
            }
            t.containers.insert(c.id.clone(), c);
        }
        t
    }

    pub fn containers(&self) -> &HashMap<ContainerId, Container> {
        &self.containers
    }

    pub fn since_ns(&self) -> Option<i64> {
        self.since_ns
    }

    /// Room for more events in the queue.
    pub fn wants_events(&self) -> bool {
        self.events.len() < EVENTS_QUEUED_MAX
    }

    /// The Docker channels were dropped: nothing queued on them is done.
    pub fn drop_work(&mut self) {
        self.events.clear();
        self.to_inspect.clear();
        self.resync = None;
    }

    pub fn receive(&mut self, ev: ContainerEvent) {
        self.events.push_back(ev);
    }

    /// A client started `id` through fwd's engine socket: it is inspected
    /// without waiting for its event. A client decides how many it sends
    /// (ids that exist or not): past the events' own bound they wait for
    /// their events, which inspect them all the same.
    pub fn start_seen(&mut self, id: ContainerId) {
        if self.to_inspect.len() < EVENTS_QUEUED_MAX {
            self.inspect_once(id);
        }
    }

    fn inspect_once(&mut self, id: ContainerId) {
        if !self.to_inspect.contains(&id) {
            self.to_inspect.push_back(id);
        }
    }

    /// Handles the events received, in order, except those of a container
    /// `busy` (being inspected): they wait for its answer.
    pub fn apply_events(&mut self, busy: impl Fn(&ContainerId) -> bool, now: Instant) {
        let mut waiting = VecDeque::new();
        while let Some(ev) = self.events.pop_front() {
            if busy(&ev.id) {
                waiting.push_back(ev);
            } else {
                self.apply(ev, now);
            }
        }
        self.events = waiting;
    }

    fn apply(&mut self, ev: ContainerEvent, now: Instant) {
        self.since_ns = Some(self.since_ns.map_or(ev.time_nano, |s| s.max(ev.time_nano)));
        match ev.action {
            // A create is inspected like a start: its fixed host ports are
            // bound before it runs. One inspect not yet asked answers for
            // every event before it.
            EventAction::Create | EventAction::Start | EventAction::Refresh => {
                self.inspect_once(ev.id)
            }
            EventAction::Die => {
                // An event older than the container's current start is a
                // replay from before a restart: the container runs.
                if self
                    .containers
                    .get(&ev.id)
                    .is_some_and(|c| ev.time_nano >= c.started_at_ns)
                {
                    self.containers.remove(&ev.id);
                    self.changed(now);
                }
            }
            EventAction::Destroy => {
                self.pending_since.remove(&ev.id);
                if self.containers.remove(&ev.id).is_some() {
                    self.changed(now);
                }
            }
            EventAction::Ignore => {}
        }
    }

    /// The next container to inspect that is not `busy` already (asked
    /// again once its answer is in).
    pub fn next_to_inspect(&mut self, busy: impl Fn(&ContainerId) -> bool) -> Option<ContainerId> {
        let i = self.to_inspect.iter().position(|id| !busy(id))?;
        self.to_inspect.remove(i)
    }

    /// Inspects or events wait to be handled.
    pub fn work_queued(&self) -> bool {
        !self.events.is_empty() || !self.to_inspect.is_empty()
    }

    #[cfg(test)]
    pub fn queued_inspects(&self) -> usize {
        self.to_inspect.len()
    }

    /// Inspects wait to be asked.
    pub fn inspects_queued(&self) -> bool {
        !self.to_inspect.is_empty()
    }

    /// An inspect after an event (or a start seen) answered: the container
    /// as it is now, or gone.
    pub fn inspected(&mut self, id: ContainerId, found: Option<Container>, now: Instant) {
        match found {
            Some(c) => {
                if c.pending {
                    self.pending_since.entry(id).or_insert(now);
                } else {
                    self.pending_since.remove(&id);
                }
                self.containers.insert(c.id.clone(), c);
            }
            None => {
                self.pending_since.remove(&id);
                self.containers.remove(&id);
            }
        }
        self.changed(now);
    }

    /// When the oldest created, never started container gives its ports back.
    pub fn pending_expiry(&self, timeout: Duration) -> Option<Instant> {
        self.pending_since.values().min().map(|t| *t + timeout)
    }

    /// A container created `timeout` ago and never started gives its
    /// ports back.
    pub fn expire_pending(&mut self, timeout: Duration, now: Instant) {
        let expired: Vec<ContainerId> = self
            .pending_since
            .iter()
            .filter(|(_, since)| now >= **since + timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.pending_since.remove(id);
            self.containers.remove(id);
        }
        if !expired.is_empty() {
            self.changed(now);
        }
    }

    // ---- a full resync: list, then inspect each ----

    /// The running containers the engine listed.
    pub fn resync_listed(&mut self, ids: Vec<ContainerId>) {
        self.resync = Some(Resync {
            pending: ids.into(),
            fresh: HashMap::new(),
        });
    }

    /// The next listed container to inspect.
    pub fn next_resync_inspect(&mut self) -> Option<ContainerId> {
        self.resync.as_mut().and_then(|r| r.pending.pop_front())
    }

    /// A listed container's inspect: absent if it stopped since the listing.
    pub fn resync_inspected(&mut self, id: ContainerId, found: Option<Container>) {
        if let (Some(r), Some(c)) = (&mut self.resync, found) {
            r.fresh.insert(id, c);
        }
    }

    /// Every listed container inspected: what they say replaces what was
    /// known. True if a resync ended here.
    pub fn finish_resync(&mut self, now: Instant) -> bool {
        let Some(mut r) = self.resync.take() else {
            return false;
        };
        // The listing has only running containers: pending ones are kept
        // from the events until they start, go, or expire.
        for (id, c) in self.containers.drain() {
            if c.pending && self.pending_since.contains_key(&id) {
                r.fresh.entry(id).or_insert(c);
            }
        }
        self.pending_since
            .retain(|id, _| r.fresh.get(id).is_some_and(|c| c.pending));
        self.containers = r.fresh;
        self.changed(now);
        true
    }

    // ---- telling the planner ----

    /// The containers changed.
    pub fn changed(&mut self, now: Instant) {
        self.changed_since.get_or_insert(now);
    }

    /// When a change waiting for the rest of its burst is told at the latest.
    pub fn change_deadline(&self) -> Option<Instant> {
        self.changed_since.map(|t| t + CHANGES_HELD_AT_MOST)
    }

    /// Whether a change is to be told now: its burst is over (no event
    /// waiting, no inspect queued, none `inspecting`), or it has waited
    /// [`CHANGES_HELD_AT_MOST`]. It is then told.
    pub fn take_change(&mut self, inspecting: bool, now: Instant) -> bool {
        let Some(since) = self.changed_since else {
            return false;
        };
        let burst_goes_on = self.work_queued() || inspecting;
        if !burst_goes_on || now >= since + CHANGES_HELD_AT_MOST {
            self.changed_since = None;
            return true;
        }
        false
    }

    /// Whether a change is waiting; it is then told, whatever else is queued.
    pub fn take_change_now(&mut self) -> bool {
        self.changed_since.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn id(n: u8) -> ContainerId {
        ContainerId::parse(&format!("{n:02x}{}", "0".repeat(10))).expect("valid id")
    }

    fn container(n: u8, started_at_ns: i64, pending: bool) -> Container {
        Container {
            id: id(n),
            name: format!("c{n}"),
            compose_project: None,
            started_at_ns,
            pending,
            ports: vec![],
            labels: BTreeMap::new(),
            networks: vec![],
            exposed_ports: vec![],
            aliases: vec![],
        }
    }

    fn event(n: u8, action: EventAction, time_nano: i64) -> ContainerEvent {
        ContainerEvent {
            id: id(n),
            action,
            time_nano,
        }
    }

    #[test]
    fn a_burst_is_told_once_when_it_is_over_or_held_too_long() {
        let t0 = Instant::now();
        let mut t = Tracker::adopt(vec![container(1, 10, false)], None, t0);
        t.receive(event(1, EventAction::Die, 20));
        t.receive(event(2, EventAction::Start, 30));
        t.apply_events(|_| false, t0);
        assert!(!t.containers().contains_key(&id(1)));
        assert_eq!(t.since_ns(), Some(30));
        // 2's inspect is still to come: the burst goes on.
        assert!(!t.take_change(false, t0));
        assert_eq!(t.next_to_inspect(|_| false), Some(id(2)));
        assert!(!t.take_change(true, t0 + Duration::from_millis(5)));
        t.inspected(id(2), Some(container(2, 30, false)), t0);
        assert!(t.take_change(false, t0 + Duration::from_millis(6)));
        assert!(
            !t.take_change(false, t0 + Duration::from_millis(7)),
            "told once"
        );
        // A burst that goes on is told after CHANGES_HELD_AT_MOST all the same.
        t.changed(t0);
        assert_eq!(t.change_deadline(), Some(t0 + CHANGES_HELD_AT_MOST));
        assert!(t.take_change(true, t0 + CHANGES_HELD_AT_MOST));
    }

    #[test]
    fn an_event_waits_for_its_containers_inspect_and_a_replayed_die_is_ignored() {
        let t0 = Instant::now();
        let mut t = Tracker::adopt(vec![container(1, 100, false)], None, t0);
        t.receive(event(1, EventAction::Die, 150));
        t.apply_events(|c| *c == id(1), t0);
        assert!(t.containers().contains_key(&id(1)), "waits for the inspect");
        assert!(t.work_queued());
        // Answered: the die is applied after it, in order.
        t.apply_events(|_| false, t0);
        assert!(!t.containers().contains_key(&id(1)));
        // A die from before the current start is a replay: it runs.
        t.inspected(id(1), Some(container(1, 200, false)), t0);
        t.receive(event(1, EventAction::Die, 150));
        t.apply_events(|_| false, t0);
        assert!(t.containers().contains_key(&id(1)));
    }

    #[test]
    fn a_resync_replaces_what_was_known_but_keeps_created_containers_until_they_expire() {
        let t0 = Instant::now();
        let mut t = Tracker::adopt(
            vec![container(1, 10, false), container(2, 20, true)],
            None,
            t0,
        );
        t.resync_listed(vec![id(3)]);
        assert_eq!(t.next_resync_inspect(), Some(id(3)));
        t.resync_inspected(id(3), Some(container(3, 30, false)));
        assert_eq!(t.next_resync_inspect(), None);
        assert!(t.finish_resync(t0));
        assert!(!t.finish_resync(t0), "once");
        let mut ids: Vec<&ContainerId> = t.containers().keys().collect();
        ids.sort();
        assert_eq!(ids, [&id(2), &id(3)]);
        let timeout = Duration::from_secs(60);
        assert_eq!(t.pending_expiry(timeout), Some(t0 + timeout));
        t.expire_pending(timeout, t0 + timeout);
        assert!(!t.containers().contains_key(&id(2)));
        assert_eq!(t.pending_expiry(timeout), None);
    }

    #[test]
    fn starts_seen_are_inspected_once_each_and_queue_no_further_than_events() {
        let mut t = Tracker::default();
        for n in 0..=u8::MAX {
            t.start_seen(id(n));
            t.start_seen(id(n));
        }
        assert_eq!(t.queued_inspects(), 256);
        for n in 0..(EVENTS_QUEUED_MAX * 2) {
            t.start_seen(ContainerId::parse(&format!("{n:012x}")).expect("valid id"));
        }
        assert_eq!(t.queued_inspects(), EVENTS_QUEUED_MAX);
        t.drop_work();
        assert!(!t.work_queued());
    }
}
