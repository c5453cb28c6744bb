//! The operations the machine has out: at most one serial operation, and
//! up to [`INSPECTS_AT_ONCE`](super::INSPECTS_AT_ONCE) inspects after
//! events beside it, each with its id, what it is for and its deadline.
//! An answer is matched by id, so one to an operation abandoned meanwhile
//! is ignored; a deadline is suspended while no network is usable (silence
//! then says nothing about the connection).

use std::time::{Duration, Instant};

use super::io::{EngineRoute, Failure, OpId};
use crate::model::ContainerId;

/// What an operation is for: how its answer is read.
#[derive(Clone, Debug, PartialEq)]
pub enum Purpose {
    Spawn,
    FirstSession,
    Discover,
    ForwardEngine,
    OpenApi(EngineRoute),
    Subscribe,
    List,
    /// An inspect during a resync.
    ResyncInspect(ContainerId),
    /// An inspect after a `start` event.
    EventInspect(ContainerId),
    /// The rootless question on the API channel (see
    /// [`Op::AskRootless`](super::Op::AskRootless)).
    Rootless,
    Probe,
    CheckMaster(Failure),
    /// A master handed over by the fwdd image this one replaced: does it
    /// still answer?
    Adopt,
}

impl Purpose {
    /// What it means that an operation for this got no answer in time.
    pub fn silence(&self) -> &'static str {
        match self {
            Purpose::Spawn => "the ssh master did not become ready",
            Purpose::FirstSession => "the first session on the master got no answer",
            Purpose::Discover => "asking the remote docker CLI for its engine got no answer",
            Purpose::ForwardEngine => "the master did not answer a forward request",
            Purpose::OpenApi(_) => "the Docker engine did not answer GET /version",
            Purpose::Subscribe => "subscribing to docker events got no answer",
            Purpose::List => "listing containers got no answer",
            Purpose::ResyncInspect(_) | Purpose::EventInspect(_) => {
                "inspecting a container got no answer"
            }
            Purpose::Rootless => "asking the engine whether it runs rootless got no answer",
            Purpose::Probe => "the health probe got no answer",
            Purpose::CheckMaster(_) => "the ssh master did not answer on its control socket",
            Purpose::Adopt => "the ssh master handed over by the previous fwdd did not answer",
        }
    }
}

#[derive(Clone, Debug)]
pub struct InFlight {
    pub id: OpId,
    pub purpose: Purpose,
    pub issued: Instant,
    /// `None` while no network is usable.
    pub deadline: Option<Instant>,
    pub timeout: Duration,
}

#[derive(Debug, Default)]
pub struct Operations {
    last_id: OpId,
    /// The serial operation.
    serial: Option<InFlight>,
    /// Inspects after events, beside it.
    inspects: Vec<InFlight>,
}

impl Operations {
    /// A new id (also for questions answered outside this table).
    pub fn next_id(&mut self) -> OpId {
        self.last_id += 1;
        self.last_id
    }

    /// A new operation for `purpose`; its deadline runs only while a
    /// network is usable.
    pub fn issue(
        &mut self,
        purpose: Purpose,
        timeout: Duration,
        net_usable: bool,
        now: Instant,
    ) -> InFlight {
        InFlight {
            id: self.next_id(),
            purpose,
            issued: now,
            deadline: net_usable.then(|| now + timeout),
            timeout,
        }
    }

    /// `op` is the serial operation now (whatever was, is abandoned).
    pub fn set_serial(&mut self, op: InFlight) {
        self.serial = Some(op);
    }

    pub fn serial(&self) -> Option<&InFlight> {
        self.serial.as_ref()
    }

    pub fn add_inspect(&mut self, op: InFlight) {
        self.inspects.push(op);
    }

    pub fn inspects_running(&self) -> usize {
        self.inspects.len()
    }

    /// Whether an inspect of container `id` runs beside the serial operation.
    pub fn inspecting(&self, id: &ContainerId) -> bool {
        self.inspects
            .iter()
            .any(|op| matches!(&op.purpose, Purpose::EventInspect(i) if i == id))
    }

    /// Whether any inspect after an event is out, serial or beside.
    pub fn any_event_inspect(&self) -> bool {
        !self.inspects.is_empty()
            || self
                .serial
                .as_ref()
                .is_some_and(|op| matches!(op.purpose, Purpose::EventInspect(_)))
    }

    /// The operation `id` answered: taken out of the table; `None` if it
    /// was abandoned.
    pub fn answered(&mut self, id: OpId) -> Option<InFlight> {
        if self.serial.as_ref().is_some_and(|op| op.id == id) {
            return self.serial.take();
        }
        let i = self.inspects.iter().position(|op| op.id == id)?;
        Some(self.inspects.swap_remove(i))
    }

    /// An operation whose deadline has passed, inspects first: taken out.
    pub fn take_late(&mut self, now: Instant) -> Option<InFlight> {
        let late = |op: &InFlight| op.deadline.is_some_and(|d| now >= d);
        if let Some(i) = self.inspects.iter().position(late) {
            return Some(self.inspects.swap_remove(i));
        }
        if self.serial.as_ref().is_some_and(late) {
            return self.serial.take();
        }
        None
    }

    /// The earliest deadline of all, if any runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.serial
            .iter()
            .chain(&self.inspects)
            .filter_map(|op| op.deadline)
            .min()
    }

    /// Every operation out is abandoned.
    pub fn drop_all(&mut self) {
        self.serial = None;
        self.inspects.clear();
    }

    /// No network is usable: nothing can be answered, so no silence counts.
    pub fn suspend_deadlines(&mut self) {
        for op in self.serial.iter_mut().chain(&mut self.inspects) {
            op.deadline = None;
        }
    }

    /// The network changed or the machine woke: the inspects' silence
    /// indicts the connection again; the serial operation is the probe and
    /// must answer within `wake` (a spawn gets its whole time: ssh dials
    /// afresh). True when a serial operation is out.
    pub fn on_wake(&mut self, wake: Duration, now: Instant) -> bool {
        for op in &mut self.inspects {
            op.deadline = Some(now + op.timeout);
        }
        let Some(op) = &mut self.serial else {
            return false;
        };
        let soon = now + wake;
        op.deadline = Some(op.deadline.map_or(soon, |d| d.min(soon)));
        if op.purpose == Purpose::Spawn {
            op.deadline = Some(now + op.timeout);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ContainerId {
        ContainerId::parse(&format!("{n:02x}{}", "0".repeat(10))).expect("valid id")
    }

    #[test]
    fn answers_are_matched_by_id_and_an_abandoned_one_is_ignored() {
        let t0 = Instant::now();
        let mut ops = Operations::default();
        let s = Duration::from_secs(10);
        let first = ops.issue(Purpose::Probe, s, true, t0);
        let first_id = first.id;
        ops.set_serial(first);
        let second = ops.issue(Purpose::List, s, true, t0);
        let second_id = second.id;
        ops.set_serial(second);
        let inspect = ops.issue(Purpose::EventInspect(id(1)), s, true, t0);
        let inspect_id = inspect.id;
        ops.add_inspect(inspect);
        assert!(ops.inspecting(&id(1)) && !ops.inspecting(&id(2)));
        assert!(ops.any_event_inspect());
        assert!(ops.answered(first_id).is_none(), "abandoned");
        assert_eq!(
            ops.answered(inspect_id).map(|o| o.purpose),
            Some(Purpose::EventInspect(id(1)))
        );
        assert_eq!(
            ops.answered(second_id).map(|o| o.purpose),
            Some(Purpose::List)
        );
        assert!(ops.serial().is_none() && ops.inspects_running() == 0);
    }

    #[test]
    fn deadlines_are_suspended_without_a_network_and_shortened_on_wake() {
        let t0 = Instant::now();
        let mut ops = Operations::default();
        let probe = ops.issue(Purpose::Probe, Duration::from_secs(10), true, t0);
        ops.set_serial(probe);
        let inspect = ops.issue(
            Purpose::EventInspect(id(1)),
            Duration::from_secs(10),
            true,
            t0,
        );
        ops.add_inspect(inspect);
        assert_eq!(ops.next_deadline(), Some(t0 + Duration::from_secs(10)));
        ops.suspend_deadlines();
        assert_eq!(ops.next_deadline(), None);
        assert!(ops.take_late(t0 + Duration::from_secs(60)).is_none());
        let t1 = t0 + Duration::from_secs(60);
        assert!(ops.on_wake(Duration::from_secs(2), t1));
        assert_eq!(ops.next_deadline(), Some(t1 + Duration::from_secs(2)));
        let late = ops
            .take_late(t1 + Duration::from_secs(2))
            .expect("the probe");
        assert_eq!(late.purpose, Purpose::Probe);
        let late = ops
            .take_late(t1 + Duration::from_secs(10))
            .expect("the inspect");
        assert_eq!(late.purpose, Purpose::EventInspect(id(1)));
        // A spawn keeps its whole time: ssh dials afresh.
        let spawn = ops.issue(Purpose::Spawn, Duration::from_secs(30), false, t1);
        ops.set_serial(spawn);
        ops.on_wake(Duration::from_secs(2), t1);
        assert_eq!(ops.next_deadline(), Some(t1 + Duration::from_secs(30)));
    }
}
