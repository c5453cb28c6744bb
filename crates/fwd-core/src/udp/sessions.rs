//! The runner's side of UDP sessions: each client address of a forward is
//! a session of its own, so replies go back to the client that asked (one
//! shared stream sent replies to the wrong client in lima until its
//! PR #3724). Sessions idle for `idle` end; a forward holds at most
//! `per_forward` of them, and a client past that is dropped and counted.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::frame::SessionId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionSettings {
    /// A session without a datagram either way for this long ends.
    pub idle: Duration,
    /// Sessions one forward may hold at once.
    pub per_forward: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            idle: crate::defaults::UDP_IDLE,
            per_forward: 1024,
        }
    }
}

/// What a datagram from a client found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Its session exists.
    Existing(SessionId),
    /// A new session: the relay must be told (an OPEN frame) first.
    New(SessionId),
    /// The forward holds `per_forward` sessions: the datagram is dropped.
    Full,
}

#[derive(Clone, Debug)]
struct Session {
    forward: u16,
    client: SocketAddr,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct Sessions {
    settings: SessionSettings,
    by_client: HashMap<(u16, SocketAddr), SessionId>,
    by_id: BTreeMap<SessionId, Session>,
    /// Sessions per forward, kept with the maps: `open` asks it for every
    /// new client, and status for every forward.
    per_forward: HashMap<u16, usize>,
    next: SessionId,
}

impl Sessions {
    pub fn new(settings: SessionSettings) -> Sessions {
        Sessions {
            settings,
            ..Sessions::default()
        }
    }

    /// The session of `client` on the forward of port `forward`, made if
    /// there is room.
    pub fn open(&mut self, forward: u16, client: SocketAddr, now: Instant) -> Opened {
        if let Some(id) = self.by_client.get(&(forward, client)) {
            if let Some(s) = self.by_id.get_mut(id) {
                s.last = now;
            }
            return Opened::Existing(*id);
        }
        if self.count(forward) >= self.settings.per_forward {
            return Opened::Full;
        }
        // Ids are never 0 (session 0 is the link's own frames) and not
        // reused while one is held.
        loop {
            self.next = self.next.wrapping_add(1);
            if self.next != 0 && !self.by_id.contains_key(&self.next) {
                break;
            }
        }
        let id = self.next;
        *self.per_forward.entry(forward).or_default() += 1;
        self.by_client.insert((forward, client), id);
        self.by_id.insert(
            id,
            Session {
                forward,
                client,
                last: now,
            },
        );
        Opened::New(id)
    }

    /// A reply arrived for `id`: where it goes (and the session lives on).
    pub fn reply_to(&mut self, id: SessionId, now: Instant) -> Option<(u16, SocketAddr)> {
        let s = self.by_id.get_mut(&id)?;
        s.last = now;
        Some((s.forward, s.client))
    }

    pub fn close(&mut self, id: SessionId) {
        if let Some(s) = self.by_id.remove(&id) {
            self.by_client.remove(&(s.forward, s.client));
            if let Some(n) = self.per_forward.get_mut(&s.forward) {
                *n -= 1;
                if *n == 0 {
                    self.per_forward.remove(&s.forward);
                }
            }
        }
    }

    /// Ends the sessions idle for `idle`; returns them (each is a CLOSE
    /// for the relay).
    pub fn expire(&mut self, now: Instant) -> Vec<SessionId> {
        let idle = self.settings.idle;
        let gone: Vec<SessionId> = self
            .by_id
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.close(*id);
        }
        gone
    }

    /// When the next session would expire.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_id
            .values()
            .map(|s| s.last + self.settings.idle)
            .min()
    }

    /// The forward of `port` went (its container was removed): its
    /// sessions end.
    pub fn forward_gone(&mut self, port: u16) -> Vec<SessionId> {
        let gone: Vec<SessionId> = self
            .by_id
            .iter()
            .filter(|(_, s)| s.forward == port)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.close(*id);
        }
        gone
    }

    /// A new relay (a new master): no session survives; clients' next
    /// datagrams open new ones.
    pub fn reset(&mut self) {
        self.by_client.clear();
        self.by_id.clear();
        self.per_forward.clear();
    }

    pub fn count(&self, forward: u16) -> usize {
        self.per_forward.get(&forward).copied().unwrap_or(0)
    }
}

/// A bound on bytes queued toward a slow side: a datagram that does not
/// fit is dropped and counted, never buffered without limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    pub max_bytes: usize,
    pub queued: usize,
    pub dropped: u64,
}

impl Queue {
    pub fn new(max_bytes: usize) -> Queue {
        Queue {
            max_bytes,
            queued: 0,
            dropped: 0,
        }
    }

    /// Whether `len` more bytes may be queued; a refusal is counted.
    pub fn admit(&mut self, len: usize) -> bool {
        if self.queued + len > self.max_bytes {
            self.dropped += 1;
            return false;
        }
        self.queued += len;
        true
    }

    /// `len` bytes left the queue.
    pub fn sent(&mut self, len: usize) {
        self.queued = self.queued.saturating_sub(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40_000 + n))
    }

    /// Two clients of one forward are two sessions: a reply goes to the
    /// client whose session it is.
    #[test]
    fn each_client_is_a_session_of_its_own() {
        let now = Instant::now();
        let mut s = Sessions::new(SessionSettings::default());
        let Opened::New(a) = s.open(5353, client(1), now) else {
            panic!("new")
        };
        let Opened::New(b) = s.open(5353, client(2), now) else {
            panic!("new")
        };
        assert_ne!(a, b);
        assert_eq!(s.open(5353, client(1), now), Opened::Existing(a));
        assert_eq!(s.reply_to(b, now), Some((5353, client(2))));
        assert_eq!(s.reply_to(a, now), Some((5353, client(1))));
        // The same client on another forward is another session.
        assert!(matches!(s.open(53, client(1), now), Opened::New(c) if c != a));
    }

    #[test]
    fn idle_sessions_end_and_traffic_either_way_keeps_one() {
        let t0 = Instant::now();
        let settings = SessionSettings {
            idle: Duration::from_secs(30),
            per_forward: 8,
        };
        let mut s = Sessions::new(settings);
        let Opened::New(quiet) = s.open(53, client(1), t0) else {
            panic!("new")
        };
        let Opened::New(busy) = s.open(53, client(2), t0) else {
            panic!("new")
        };
        assert_eq!(s.next_expiry(), Some(t0 + Duration::from_secs(30)));
        s.reply_to(busy, t0 + Duration::from_secs(20));
        assert_eq!(s.expire(t0 + Duration::from_secs(29)), vec![]);
        assert_eq!(s.expire(t0 + Duration::from_secs(30)), vec![quiet]);
        assert_eq!(s.reply_to(quiet, t0 + Duration::from_secs(31)), None);
        assert_eq!(s.next_expiry(), Some(t0 + Duration::from_secs(50)));
        assert!(matches!(
            s.open(53, client(1), t0 + Duration::from_secs(31)),
            Opened::New(_)
        ));
    }

    #[test]
    fn a_full_forward_drops_new_clients_but_serves_its_sessions() {
        let now = Instant::now();
        let mut s = Sessions::new(SessionSettings {
            idle: Duration::from_secs(60),
            per_forward: 2,
        });
        assert!(matches!(s.open(53, client(1), now), Opened::New(_)));
        assert!(matches!(s.open(53, client(2), now), Opened::New(_)));
        assert_eq!(s.open(53, client(3), now), Opened::Full);
        assert!(matches!(s.open(53, client(1), now), Opened::Existing(_)));
        assert!(matches!(s.open(54, client(3), now), Opened::New(_)));
        assert_eq!(s.forward_gone(53).len(), 2);
        assert_eq!(s.count(53), 0);
        s.reset();
        assert_eq!(s.count(54), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut q = Queue::new(3000);
        assert!(q.admit(1400));
        assert!(q.admit(1400));
        assert!(!q.admit(1400));
        assert_eq!(q.dropped, 1);
        q.sent(1400);
        assert!(q.admit(1400));
        assert_eq!(q.queued, 2800);
    }
}
