//! Connection places with room for the one that asks: a server that holds
//! at most `cap` connections makes room for a new one by closing the one
//! that has said nothing for the longest, and closes any that brings no
//! request within `within` of its accept or of its previous request. Idle
//! and slow (slow-loris) clients thus never hold the last places: a liveness
//! probe that connects and asks at once is always served (the metrics
//! endpoint's `/healthz`).
//!
//! Pure: the server feeds it accepts, requests and closes with the current
//! `Instant`, and carries out what it answers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::repeat::{RepeatGate, Verdict};

/// One connection's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId(u64);

/// What to do with a connection just accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The new connection's place.
    pub id: SlotId,
    /// The connection to close to make room (the one quiet the longest).
    pub close: Option<SlotId>,
    /// Whether to say that the cap was reached: once per episode, then a
    /// summary now and then.
    pub say: Option<Verdict>,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The accept, or the last request.
    active_at: Instant,
    /// A request came on it.
    asked: bool,
}

/// What a connection that closed had done, for what is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// It asked at least once (closed after that: a keep-alive that ended,
    /// or the client went away): not a refusal.
    Asked,
    /// It never brought a complete request (slow, idle, or gone at once).
    NeverAsked,
    /// It had been closed to make room at the cap.
    MadeRoom,
}

#[derive(Clone, Debug)]
pub struct Slots {
    cap: usize,
    within: Duration,
    next: u64,
    open: BTreeMap<SlotId, Slot>,
    /// The episode of the cap being reached.
    at_cap: RepeatGate,
    /// The places made during this episode.
    made_room: u64,
}

impl Slots {
    /// At most `cap` (at least 1) connections; each must ask within `within`.
    pub fn new(cap: usize, within: Duration) -> Slots {
        Slots {
            cap: cap.max(1),
            within,
            next: 0,
            open: BTreeMap::new(),
            at_cap: RepeatGate::new(Duration::from_secs(300)),
            made_room: 0,
        }
    }

    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// A connection was accepted: its place, and which one to close first if
    /// the cap is reached.
    pub fn admit(&mut self, now: Instant) -> Admission {
        let mut close = None;
        let mut say = None;
        if self.open.len() >= self.cap {
            // The quietest: the oldest activity; ties go to the oldest accept.
            close = self
                .open
                .iter()
                .min_by_key(|(id, s)| (s.active_at, **id))
                .map(|(id, _)| *id);
            if let Some(id) = close {
                self.open.remove(&id);
                self.made_room += 1;
                say = match self.at_cap.observe("at_cap", now) {
                    Verdict::Suppress => None,
                    v => Some(v),
                };
            }
        }
        let id = SlotId(self.next);
        self.next += 1;
        self.open.insert(
            id,
            Slot {
                active_at: now,
                asked: false,
            },
        );
        Admission { id, close, say }
    }

    /// A complete request arrived on `id`: its clock starts again.
    pub fn asked(&mut self, id: SlotId, now: Instant) {
        if let Some(s) = self.open.get_mut(&id) {
            s.active_at = now;
            s.asked = true;
        }
    }

    /// When `id` is closed unless it asks again; `None` once it is gone
    /// (closed to make room).
    pub fn deadline(&self, id: SlotId) -> Option<Instant> {
        self.open.get(&id).map(|s| s.active_at + self.within)
    }

    /// Whether `id` is past its deadline at `now` (or already gone).
    pub fn expired(&self, id: SlotId, now: Instant) -> bool {
        self.deadline(id).is_none_or(|d| now >= d)
    }

    /// `id` closed (by its client, by its deadline, or to make room): why,
    /// for the count, and, when this ends an episode at the cap (down to half
    /// of it), how many connections were closed to make room in it.
    pub fn closed(&mut self, id: SlotId) -> (Closed, Option<u64>) {
        let why = match self.open.remove(&id) {
            None => Closed::MadeRoom,
            Some(s) if s.asked => Closed::Asked,
            Some(_) => Closed::NeverAsked,
        };
        let eased = if self.open.len() <= self.cap / 2 && self.at_cap.clear().is_some() {
            Some(std::mem::take(&mut self.made_room))
        } else {
            None
        };
        (why, eased)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(3);

    #[test]
    fn at_the_cap_the_quietest_makes_room_and_it_is_said_once() {
        let t0 = Instant::now();
        let mut s = Slots::new(3, W);
        let a = s.admit(t0);
        let b = s.admit(t0 + Duration::from_millis(1));
        let c = s.admit(t0 + Duration::from_millis(2));
        assert!([&a, &b, &c]
            .iter()
            .all(|x| x.close.is_none() && x.say.is_none()));
        // `a` asks: `b` is now the quietest.
        s.asked(a.id, t0 + Duration::from_millis(3));
        let d = s.admit(t0 + Duration::from_millis(4));
        assert_eq!(d.close, Some(b.id));
        assert_eq!(d.say, Some(Verdict::Log));
        assert_eq!(s.open(), 3);
        // Next: `c`, then `a` (asked at 3 ms, before d's accept at 4 ms).
        let e = s.admit(t0 + Duration::from_millis(5));
        assert_eq!((e.close, e.say), (Some(c.id), None));
        let f = s.admit(t0 + Duration::from_millis(6));
        assert_eq!(f.close, Some(a.id));
        // The closed ones' tasks end: made room, not counted as slow.
        assert_eq!(s.closed(b.id).0, Closed::MadeRoom);
        assert_eq!(s.deadline(c.id), None);
        assert!(s.expired(c.id, t0));
    }

    #[test]
    fn the_episode_ends_at_half_the_cap_with_its_count() {
        let t0 = Instant::now();
        let mut s = Slots::new(4, W);
        let mut ids: Vec<SlotId> = (0..10).map(|_| s.admit(t0).id).collect();
        // Six made room, four remain; only the first said it.
        ids.drain(..6);
        assert_eq!(s.open(), 4);
        assert_eq!(s.closed(ids[0]).1, None);
        assert_eq!(s.closed(ids[1]), (Closed::NeverAsked, Some(6)));
        assert_eq!(s.closed(ids[2]).1, None);
        // A new episode is said again.
        let more: Vec<Admission> = (0..4).map(|_| s.admit(t0)).collect();
        assert_eq!(more[2].say, None);
        assert_eq!(more[3].say, Some(Verdict::Log));
    }

    #[test]
    fn a_connection_must_ask_within_its_window_again_and_again() {
        let t0 = Instant::now();
        let mut s = Slots::new(8, W);
        let a = s.admit(t0).id;
        assert_eq!(s.deadline(a), Some(t0 + W));
        assert!(!s.expired(a, t0 + W - Duration::from_millis(1)));
        assert!(s.expired(a, t0 + W));
        s.asked(a, t0 + Duration::from_secs(2));
        assert!(!s.expired(a, t0 + W));
        assert_eq!(s.closed(a).0, Closed::Asked);
        let b = s.admit(t0).id;
        assert_eq!(s.closed(b).0, Closed::NeverAsked);
    }
}
