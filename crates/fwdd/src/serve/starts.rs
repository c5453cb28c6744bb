//! Containers started through the engine socket. The engine relay reads
//! each client's requests (`fwd_core::engine_requests`); a start by id is
//! told to the host's driver at once (its machine inspects the container
//! without waiting for the engine's event, which Podman sends only after
//! `docker run` has returned), and the start's answer is held until the
//! planner has planned with that container — its ports bound — or for
//! [`HOLD_AT_MOST`]. A connection made the instant `docker run` returns is
//! then served on every engine.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use fwd_core::engine_requests::{answer_is_held, RequestReader};
use fwd_core::{ContainerId, HostKey, RepeatGate, Verdict};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};

/// The longest a start's answer waits for the plan: the client's command
/// is late by at most this when something is wrong (no link, a stuck
/// inspect); the engine has started the container either way.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(1);

/// Starts told to a host's driver and not yet taken: past this, a start is
/// not told (its event still comes), counted and said once.
pub const TOLD_AT_MOST: usize = 256;
/// Starts of one engine connection whose answer has not come yet: past
/// this, a start's answer is not held.
pub const AWAITING_AT_MOST: usize = 64;

/// Between the engine sockets (starts seen), the hosts' drivers (told to
/// inspect) and the planner (what it planned).
pub struct Starts {
    told: RefCell<BTreeMap<HostKey, mpsc::Sender<ContainerId>>>,
    /// Starts not told because the driver's queue was full.
    pub not_told: Cell<u64>,
    /// The episode of a full queue, said once.
    full: RefCell<RepeatGate>,
    /// Each host's containers as of the last plan applied.
    planned: RefCell<BTreeMap<HostKey, Rc<HashSet<ContainerId>>>>,
    plans: watch::Sender<u64>,
}

impl Default for Starts {
    fn default() -> Self {
        Starts {
            told: RefCell::default(),
            not_told: Cell::new(0),
            full: RefCell::new(RepeatGate::new(Duration::from_secs(300))),
            planned: RefCell::default(),
            plans: watch::channel(0).0,
        }
    }
}

impl Starts {
    /// The starts seen for `host`, for its driver.
    pub fn subscribe(&self, host: &HostKey) -> mpsc::Receiver<ContainerId> {
        let (tx, rx) = mpsc::channel(TOLD_AT_MOST);
        self.told.borrow_mut().insert(host.clone(), tx);
        rx
    }

    pub fn forget_host(&self, host: &HostKey) {
        self.told.borrow_mut().remove(host);
        self.planned.borrow_mut().remove(host);
    }

    fn seen(&self, host: &HostKey, id: &str) {
        // Only a full id: the machine keys containers by it, and an inspect
        // asked by a prefix would not hold back that container's events.
        if id.len() != 64 {
            return;
        }
        let told = self.told.borrow();
        let (Some(tx), Ok(id)) = (told.get(host), ContainerId::parse(id)) else {
            return;
        };
        match tx.try_send(id) {
            Ok(()) => {
                if let Some(n) = self.full.borrow_mut().clear() {
                    tracing::info!(event = "engine_starts_told_again", host = %host, not_told = n,
                        "starts seen on the engine socket are told to the host again; {n} were not (their containers were inspected on their events)");
                }
            }
            Err(TrySendError::Full(_)) => {
                self.not_told.set(self.not_told.get() + 1);
                match self.full.borrow_mut().observe("full", Instant::now()) {
                    Verdict::Log => tracing::warn!(event = "engine_starts_not_told", host = %host,
                        "{TOLD_AT_MOST} starts seen on the engine socket wait for the host's driver; more are not told (their containers are inspected on their events, a little later)"),
                    Verdict::Summary { repeats } => {
                        tracing::warn!(event = "engine_starts_not_told", host = %host, repeats,
                        "starts seen on the engine socket still wait for the host's driver: {repeats} more not told")
                    }
                    Verdict::Suppress => {}
                }
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// After a plan was applied: the containers it had on `host`.
    pub fn planned<'c>(&self, host: &HostKey, containers: impl Iterator<Item = &'c ContainerId>) {
        let set: HashSet<ContainerId> = containers.cloned().collect();
        self.planned.borrow_mut().insert(host.clone(), Rc::new(set));
    }

    /// After every host's [`planned`](Self::planned): wakes the held answers.
    pub fn plan_applied(&self) {
        self.plans.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn is_planned(&self, host: &HostKey, id: &str) -> bool {
        let planned = self.planned.borrow().get(host).cloned();
        planned.is_some_and(|set| match ContainerId::parse(id) {
            Ok(full) if id.len() == 64 => set.contains(&full),
            Ok(_) => set.iter().any(|c| c.as_str().starts_with(id)),
            Err(_) => false,
        })
    }

    /// Waits until a plan has `id` (or the container whose id it begins)
    /// on `host`, for at most `within`; whether it did.
    async fn until_planned(&self, host: &HostKey, id: &str, within: Duration) -> bool {
        let mut plans = self.plans.subscribe();
        let wait = async {
            loop {
                if self.is_planned(host, id) {
                    return;
                }
                if plans.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }
}

/// One engine connection: the starts its client asks for, and the answers
/// held for them.
pub struct StartHold<'a> {
    starts: &'a Starts,
    host: HostKey,
    reader: RefCell<RequestReader>,
    /// Starts asked whose answer has not come yet, oldest first.
    awaiting: RefCell<VecDeque<String>>,
}

impl<'a> StartHold<'a> {
    /// For a connection read from its first byte; `midway` for one an
    /// upgrade handed over (it is passed through unread).
    pub fn new(starts: &'a Starts, host: HostKey, midway: bool) -> StartHold<'a> {
        let reader = if midway {
            RequestReader::unread()
        } else {
            RequestReader::new()
        };
        StartHold {
            starts,
            host,
            reader: RefCell::new(reader),
            awaiting: RefCell::default(),
        }
    }

    /// The client's next bytes, before they go to the engine.
    pub fn client_sent(&self, bytes: &[u8]) {
        let started = self.reader.borrow_mut().feed(bytes);
        for id in started {
            self.starts.seen(&self.host, &id);
            let mut awaiting = self.awaiting.borrow_mut();
            if awaiting.len() < AWAITING_AT_MOST {
                awaiting.push_back(id);
            }
        }
    }

    /// The engine's next bytes, before they go to the client: the answer to
    /// a start that succeeded waits for the plan.
    pub async fn before_answer(&self, bytes: &[u8]) {
        let Some(id) = self.awaiting.borrow_mut().pop_front() else {
            return;
        };
        if !answer_is_held(bytes) {
            return;
        }
        if !self
            .starts
            .until_planned(&self.host, &id, HOLD_AT_MOST)
            .await
        {
            tracing::debug!(host = %self.host, container_id = %id, "a start's answer went before its ports were planned");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f7f4c0d3f1b2a8e9d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a493827160";

    /// A start's answer goes once a plan has its container (by full id or
    /// the prefix the client used), or after the limit; the host is told a
    /// full id only.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_answer_waits_for_the_plan_that_has_its_container() {
        let starts = Starts::default();
        let host = HostKey::from("h");
        let mut told = starts.subscribe(&host);
        let hold = StartHold::new(&starts, host.clone(), false);
        let start = |id: &str| format!("POST /v1.41/containers/{id}/start HTTP/1.1\r\n\r\n");
        let answer = b"HTTP/1.1 204 No Content\r\n\r\n";

        hold.client_sent(start(ID).as_bytes());
        assert_eq!(
            told.try_recv().map(|c| c.as_str().to_string()),
            Ok(ID.to_string())
        );
        let t0 = tokio::time::Instant::now();
        let waited = async {
            hold.before_answer(answer).await;
            t0.elapsed()
        };
        let plan = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let id = ContainerId::parse(ID).expect("id");
            starts.planned(&host, [&id].into_iter());
            starts.plan_applied();
        };
        let (waited, ()) = tokio::join!(waited, plan);
        assert_eq!(waited, Duration::from_millis(30));

        // By prefix: not told (a prefix is not the machine's key), but held
        // until planned — here already.
        hold.client_sent(start(&ID[..12]).as_bytes());
        assert!(told.try_recv().is_err());
        let t1 = tokio::time::Instant::now();
        hold.before_answer(answer).await;
        assert_eq!(t1.elapsed(), Duration::ZERO);

        // Never planned: the answer goes after the limit; a failed start's
        // at once.
        let other = "0".repeat(64);
        hold.client_sent(start(&other).as_bytes());
        let t2 = tokio::time::Instant::now();
        hold.before_answer(answer).await;
        assert_eq!(t2.elapsed(), HOLD_AT_MOST);
        hold.client_sent(start(&other).as_bytes());
        let t3 = tokio::time::Instant::now();
        hold.before_answer(b"HTTP/1.1 404 Not Found\r\n\r\n").await;
        assert_eq!(t3.elapsed(), Duration::ZERO);
    }

    /// A client that asks for starts faster than the driver takes them
    /// fills a bounded queue: the rest are counted, not queued.
    #[tokio::test(flavor = "current_thread")]
    async fn starts_told_and_awaited_are_bounded() {
        let starts = Starts::default();
        let host = HostKey::from("h");
        let mut told = starts.subscribe(&host);
        let hold = StartHold::new(&starts, host.clone(), false);
        let n = TOLD_AT_MOST + 10;
        for i in 0..n {
            let id = format!("{i:064x}");
            hold.client_sent(
                format!("POST /v1.41/containers/{id}/start HTTP/1.1\r\n\r\n").as_bytes(),
            );
        }
        assert_eq!(starts.not_told.get(), 10);
        assert_eq!(hold.awaiting.borrow().len(), AWAITING_AT_MOST);
        let mut got = 0;
        while told.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, TOLD_AT_MOST);
        // Room again: told again.
        hold.client_sent(
            format!(
                "POST /v1.41/containers/{}/start HTTP/1.1\r\n\r\n",
                "f".repeat(64)
            )
            .as_bytes(),
        );
        assert!(told.try_recv().is_ok());
        assert_eq!(starts.not_told.get(), 10);
    }
}
