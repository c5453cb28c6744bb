//! Descriptors as a budget: what one party may hold, what is refused, and
//! what is said about it.
//!
//! fwdd and the ssh masters it starts share one open-files limit (fwdd
//! raises its soft limit to the hard one at start, and the masters, its
//! children, inherit it). Every forward, tunnel, exposure connection and
//! engine socket client costs descriptors, decided by parties fwd does not
//! control. So:
//!
//! - [`RESERVED_FDS`] are never lent to any of them: the control socket and
//!   its clients, the engine sockets' listeners, each master's own channels
//!   (API, events, inspects, spares), the metrics endpoint, logs.
//! - What is left, the *pool*, is shared, and one forward's tunnels, one
//!   exposure's connections, one host's engine socket clients or one
//!   container's listeners may take at most a quarter of it, counted on the
//!   side where each costs most ([`Limits::for_open_files`]). Whoever floods,
//!   three quarters of the pool and the reserve stay for everyone else.
//! - Listeners live as long as their containers, so all forwards together
//!   may take at most half the pool (`forwards_total`): many containers,
//!   each under its own cap, still leave the other half to connections.
//! - What goes over a cap is refused at once (a connection is closed, a port
//!   not bound), counted, and said once per episode ([`Refusals`],
//!   [`CapReports`]); an accept that fails backs off ([`AcceptBackoff`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::model::{ContainerId, HostKey};
use crate::repeat::{RepeatGate, Verdict};

/// Descriptors no forward, exposure or client may take.
pub const RESERVED_FDS: u64 = 256;

/// A cap is never below this, however low the limit: a handful of
/// connections per forward always works.
pub const MIN_CAP: u64 = 16;

/// What one tunnel costs the ssh master while it is set up: the mux
/// connection and the two descriptors of the client's socket it receives
/// (stdin and stdout). Once open a held tunnel costs it about 1.3
/// (docs/benchmarks.md), but a burst of new ones is what runs it out: the
/// cap is sized for the peak. fwdd keeps only the mux connection.
pub const MASTER_FDS_PER_TUNNEL: u64 = 3;

/// What one exposure connection or engine socket client costs fwdd: the
/// accepted socket and the one it relays to.
pub const FWDD_FDS_PER_RELAY: u64 = 2;

/// What one forward costs fwdd: a listener on 127.0.0.1 and one on [::1].
pub const FWDD_FDS_PER_FORWARD: u64 = 2;

/// The share of the pool one party may hold: a quarter.
const SHARE_DIVISOR: u64 = 4;

/// The caps in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The open-files limit fwdd and its masters run with.
    pub open_files: u64,
    /// Published ports of one container that are forwarded; the rest are
    /// not bound (`max_forwards_per_container`).
    pub forwards_per_container: u64,
    /// Forwards in all, across hosts and containers; the latest-started
    /// claims beyond it are not bound (`max_forwards_total`).
    pub forwards_total: u64,
    /// Concurrent connections of one forward (`max_tunnels_per_forward`).
    pub tunnels_per_forward: u64,
    /// Concurrent connections of one exposure (`max_tunnels_per_exposure`).
    pub tunnels_per_exposure: u64,
    /// Concurrent clients of one host's engine sockets (`max_engine_clients`).
    pub engine_clients: u64,
}

/// The caps as configured; `None`: derived from the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitSettings {
    pub forwards_per_container: Option<u64>,
    pub forwards_total: Option<u64>,
    pub tunnels_per_forward: Option<u64>,
    pub tunnels_per_exposure: Option<u64>,
    pub engine_clients: Option<u64>,
}

impl Limits {
    /// The caps for `open_files`: each unset one is a quarter of the pool
    /// (the limit less [`RESERVED_FDS`], at least half the limit) divided by
    /// what one unit costs where it costs most, and at least [`MIN_CAP`].
    pub fn for_open_files(open_files: u64, set: LimitSettings) -> Limits {
        let pool = open_files.saturating_sub(RESERVED_FDS).max(open_files / 2);
        let share = |cost: u64| (pool / SHARE_DIVISOR / cost).max(MIN_CAP);
        Limits {
            open_files,
            forwards_per_container: set
                .forwards_per_container
                .unwrap_or_else(|| share(FWDD_FDS_PER_FORWARD)),
            forwards_total: set
                .forwards_total
                .unwrap_or_else(|| (pool / 2 / FWDD_FDS_PER_FORWARD).max(MIN_CAP)),
            tunnels_per_forward: set
                .tunnels_per_forward
                .unwrap_or_else(|| share(MASTER_FDS_PER_TUNNEL)),
            tunnels_per_exposure: set
                .tunnels_per_exposure
                .unwrap_or_else(|| share(FWDD_FDS_PER_RELAY)),
            engine_clients: set
                .engine_clients
                .unwrap_or_else(|| share(FWDD_FDS_PER_RELAY)),
        }
    }
}

/// Whether a new connection is taken, given how many are held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Refused; `log` says what to say about it now, if anything.
    Refused {
        log: Option<RefusalLog>,
    },
}

/// What to log about refusals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalLog {
    /// The first refusal of an episode.
    Started,
    /// Still refusing: `repeats` since the last line.
    Summary { repeats: u64 },
    /// The episode is over (at most half the cap is held again): `refused`
    /// connections in all.
    Ended { refused: u64 },
}

/// One cap on concurrent connections: admits or refuses each, counts the
/// refused, and tells an episode of refusals once. An episode ends when at
/// most half the cap is held again, so a flood that hovers at the cap is
/// one episode, not one per freed slot.
#[derive(Clone, Debug)]
pub struct Refusals {
    gate: RepeatGate,
    in_episode: bool,
    /// Connections refused since the start.
    pub total: u64,
}

/// How often a refusal episode that goes on is summarised.
pub const REFUSAL_SUMMARY_EVERY: Duration = Duration::from_secs(300);

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            gate: RepeatGate::new(REFUSAL_SUMMARY_EVERY),
            in_episode: false,
            total: 0,
        }
    }
}

impl Refusals {
    /// A new connection arrives while `held` are open under `cap`.
    pub fn admit(&mut self, held: u64, cap: u64, now: Instant) -> Admit {
        if held < cap {
            return Admit::Yes;
        }
        self.total += 1;
        self.in_episode = true;
        let log = match self.gate.observe("cap", now) {
            Verdict::Log => Some(RefusalLog::Started),
            Verdict::Summary { repeats } => Some(RefusalLog::Summary { repeats }),
            Verdict::Suppress => None,
        };
        Admit::Refused { log }
    }

    /// Refusing now (until at most half the cap is held).
    pub fn in_episode(&self) -> bool {
        self.in_episode
    }

    /// A connection ended, leaving `held` open under `cap`: the episode
    /// ends once at most half the cap is held.
    pub fn released(&mut self, held: u64, cap: u64) -> Option<RefusalLog> {
        if !self.in_episode || held > cap / 2 {
            return None;
        }
        self.in_episode = false;
        let refused = self.gate.clear()?;
        Some(RefusalLog::Ended { refused })
    }
}

/// An accept loop's answer to a failed `accept(2)` (EMFILE, ENFILE,
/// ENOBUFS, …): wait before the next try, doubling from [`Self::FIRST`] to
/// [`Self::MAX`], and log once per episode. Out of descriptors, accepts
/// fail and succeed in turn (each freed descriptor lets one through), so an
/// episode ends only with a success [`Self::QUIET`] after the last failure;
/// until then the waits keep growing.
#[derive(Clone, Debug)]
pub struct AcceptBackoff {
    next: Duration,
    gate: RepeatGate,
    last_failure: Option<Instant>,
}

/// What to do after a failed accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptFailed {
    pub wait: Duration,
    /// Log a line now (the first failure of an episode, or a summary).
    pub log: Option<Verdict>,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            next: Self::FIRST,
            gate: RepeatGate::new(REFUSAL_SUMMARY_EVERY),
            last_failure: None,
        }
    }
}

impl AcceptBackoff {
    pub const FIRST: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_secs(1);
    pub const QUIET: Duration = Duration::from_secs(10);

    /// `accept` failed with `error` (a stable description).
    pub fn failed(&mut self, error: &str, now: Instant) -> AcceptFailed {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        self.last_failure = Some(now);
        let log = match self.gate.observe(error, now) {
            Verdict::Suppress => None,
            v => Some(v),
        };
        AcceptFailed { wait, log }
    }

    /// `accept` succeeded: an episode whose last failure is [`Self::QUIET`]
    /// ago is over; returns how many accepts failed in it.
    pub fn succeeded(&mut self, now: Instant) -> Option<u64> {
        let last = self.last_failure?;
        if now.saturating_duration_since(last) < Self::QUIET {
            return None;
        }
        self.last_failure = None;
        self.next = Self::FIRST;
        self.gate.clear()
    }
}

/// A container whose published ports are more than the cap: only the
/// first `forwarded` (lowest local ports) are bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capped {
    pub host: HostKey,
    pub container: ContainerId,
    pub container_name: String,
    /// Distinct local ports the container claims.
    pub published: u64,
    /// How many of them are forwarded (the cap).
    pub forwarded: u64,
}

impl Capped {
    /// What a person reads: what was not forwarded, why, and what to change.
    pub fn message(&self) -> String {
        format!(
            "container {} on host {} publishes {} ports; only the first {} are forwarded \
             (max_forwards_per_container = {}; raise it in fwdd.toml to forward more)",
            self.container_name, self.host, self.published, self.forwarded, self.forwarded
        )
    }
}

/// Each capped container is reported once while it stays capped; one that
/// comes back over the cap (or under another cap) is reported again. The
/// same for the total: reaching it is one episode, said when it starts and
/// when it ends.
#[derive(Clone, Debug, Default)]
pub struct CapReports {
    reported: BTreeSet<(HostKey, ContainerId, u64)>,
    over_total: bool,
}

/// What to say about `max_forwards_total` after a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TotalNews {
    /// Reached: `left_out` claimed ports are not forwarded.
    Reached { left_out: usize },
    /// Every claimed port fits again.
    Cleared,
}

impl CapReports {
    /// The capped containers of this plan not reported yet.
    pub fn news<'a>(&mut self, capped: &'a [Capped]) -> Vec<&'a Capped> {
        let now: BTreeSet<_> = capped
            .iter()
            .map(|c| (c.host.clone(), c.container.clone(), c.forwarded))
            .collect();
        let news = capped
            .iter()
            .filter(|c| {
                !self
                    .reported
                    .contains(&(c.host.clone(), c.container.clone(), c.forwarded))
            })
            .collect();
        self.reported = now;
        news
    }

    /// After a plan that left `left_out` ports out for the total.
    pub fn total(&mut self, left_out: usize) -> Option<TotalNews> {
        match (self.over_total, left_out > 0) {
            (false, true) => {
                self.over_total = true;
                Some(TotalNews::Reached { left_out })
            }
            (true, false) => {
                self.over_total = false;
                Some(TotalNews::Cleared)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_quarter_of_the_pool_at_each_party_s_costliest_side() {
        // The measured runner: hard limit 20000.
        let l = Limits::for_open_files(20_000, LimitSettings::default());
        let pool = 20_000 - RESERVED_FDS;
        assert_eq!(l.forwards_per_container, pool / 4 / 2);
        assert_eq!(l.tunnels_per_forward, pool / 4 / 3);
        assert_eq!(l.tunnels_per_exposure, pool / 4 / 2);
        assert_eq!(l.engine_clients, pool / 4 / 2);
        // All listeners together: half the pool.
        assert_eq!(l.forwards_total, pool / 2 / 2);
        assert!(l.forwards_total * FWDD_FDS_PER_FORWARD <= pool / 2);
        // Far above what a job does, far below what exhausts anything:
        // a 3,000-port range is capped, 1,500 connections on one forward pass.
        assert!(l.forwards_per_container > 1_000 && l.forwards_per_container < 3_000);
        assert!(l.tunnels_per_forward > 1_500);
        // One party at its cap leaves the reserve and three quarters of the
        // pool, on fwdd's side and on the master's.
        assert!(l.tunnels_per_forward * MASTER_FDS_PER_TUNNEL <= pool / 4);
        assert!(l.forwards_per_container * FWDD_FDS_PER_FORWARD <= pool / 4);
    }

    #[test]
    fn a_low_limit_still_leaves_the_reserve_and_never_caps_below_the_minimum() {
        let l = Limits::for_open_files(1024, LimitSettings::default());
        assert_eq!(l.tunnels_per_forward, (1024 - RESERVED_FDS) / 4 / 3);
        // Below twice the reserve, half the limit is the pool.
        let tiny = Limits::for_open_files(256, LimitSettings::default());
        assert_eq!(tiny.forwards_per_container, MIN_CAP);
        assert_eq!(tiny.tunnels_per_forward, MIN_CAP);
    }

    #[test]
    fn settings_win_over_the_derived_caps() {
        let set = LimitSettings {
            forwards_per_container: Some(5),
            forwards_total: Some(6),
            tunnels_per_forward: Some(7),
            tunnels_per_exposure: None,
            engine_clients: Some(9),
        };
        let l = Limits::for_open_files(4096, set);
        assert_eq!(
            (
                l.forwards_per_container,
                l.tunnels_per_forward,
                l.engine_clients
            ),
            (5, 7, 9)
        );
        assert_eq!(l.forwards_total, 6);
        assert_eq!(l.tunnels_per_exposure, (4096 - RESERVED_FDS) / 4 / 2);
    }

    #[test]
    fn a_flood_is_one_episode_said_once_and_ended_once() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        assert_eq!(r.admit(9, 10, t0), Admit::Yes);
        assert_eq!(
            r.admit(10, 10, t0),
            Admit::Refused {
                log: Some(RefusalLog::Started)
            }
        );
        // 1,000 more within the summary interval: silent, counted.
        for i in 0..1_000u64 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(r.admit(10, 10, at), Admit::Refused { log: None });
        }
        assert_eq!(r.total, 1_001);
        // Hovering at the cap (a slot freed, taken, refused again) is the
        // same episode.
        assert_eq!(r.released(9, 10), None);
        assert_eq!(r.admit(9, 10, t0), Admit::Yes);
        assert_eq!(
            r.admit(10, 10, t0 + Duration::from_secs(2)),
            Admit::Refused { log: None }
        );
        // Still refusing five minutes on: one summary line.
        assert_eq!(
            r.admit(10, 10, t0 + REFUSAL_SUMMARY_EVERY),
            Admit::Refused {
                log: Some(RefusalLog::Summary { repeats: 1_002 })
            }
        );
        // Down to half the cap: over, once.
        assert_eq!(
            r.released(5, 10),
            Some(RefusalLog::Ended { refused: 1_003 })
        );
        assert_eq!(r.released(0, 10), None);
        // The next flood is a new episode.
        assert_eq!(
            r.admit(10, 10, t0 + REFUSAL_SUMMARY_EVERY),
            Admit::Refused {
                log: Some(RefusalLog::Started)
            }
        );
        assert_eq!(r.total, 1_004);
    }

    #[test]
    fn failed_accepts_back_off_doubling_and_log_once() {
        let t0 = Instant::now();
        let mut b = AcceptBackoff::default();
        let first = b.failed("Too many open files", t0);
        assert_eq!(first.wait, AcceptBackoff::FIRST);
        assert_eq!(first.log, Some(Verdict::Log));
        let mut waits = vec![first.wait];
        for i in 1..20 {
            let f = b.failed("Too many open files", t0 + Duration::from_secs(i));
            assert_eq!(f.log, None, "failure {i} logged again");
            waits.push(f.wait);
        }
        assert_eq!(waits[1], AcceptBackoff::FIRST * 2);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().expect("waits"), AcceptBackoff::MAX);
        // Never spins: twenty failures take seconds, not a burst.
        let total: Duration = waits.iter().sum();
        assert!(total >= Duration::from_secs(10), "{total:?}");
        let last = t0 + Duration::from_secs(19);
        assert_eq!(b.succeeded(last + AcceptBackoff::QUIET), Some(20));
        assert_eq!(b.succeeded(last + AcceptBackoff::QUIET), None);
        assert_eq!(b.failed("x", t0).wait, AcceptBackoff::FIRST);
    }

    #[test]
    fn accepts_that_fail_and_succeed_in_turn_are_one_episode() {
        let t0 = Instant::now();
        let mut b = AcceptBackoff::default();
        let mut lines = 0;
        let mut waits = Vec::new();
        // Out of descriptors: every freed one lets one accept through.
        for i in 0..100 {
            let at = t0 + Duration::from_millis(50 * i);
            let f = b.failed("Too many open files", at);
            lines += usize::from(f.log.is_some());
            waits.push(f.wait);
            assert_eq!(b.succeeded(at + Duration::from_millis(1)), None);
        }
        assert_eq!(lines, 1);
        // The waits keep growing through the successes: no spinning.
        assert_eq!(*waits.last().expect("waits"), AcceptBackoff::MAX);
        // Quiet for long enough: over, with the count, and fast again.
        let end = t0 + Duration::from_millis(50 * 99) + AcceptBackoff::QUIET;
        assert_eq!(b.succeeded(end), Some(100));
        assert_eq!(
            b.failed("Too many open files", end).wait,
            AcceptBackoff::FIRST
        );
    }

    fn capped(id: u8, forwarded: u64) -> Capped {
        Capped {
            host: HostKey::from("h"),
            container: ContainerId::parse(&format!("{id:012x}")).expect("id"),
            container_name: format!("c{id}"),
            published: 3_000,
            forwarded,
        }
    }

    #[test]
    fn a_capped_container_is_reported_once_while_capped() {
        let mut r = CapReports::default();
        let (a, b) = (capped(1, 100), capped(2, 100));
        assert_eq!(r.news(std::slice::from_ref(&a)), vec![&a]);
        // Every later plan: nothing new, whatever else is capped.
        for _ in 0..10 {
            assert!(r.news(std::slice::from_ref(&a)).is_empty());
        }
        let both = [a.clone(), b.clone()];
        assert_eq!(r.news(&both), vec![&both[1]]);
        // Gone (removed) and back: reported again; a new cap too.
        assert!(r.news(&[]).is_empty());
        assert_eq!(r.news(std::slice::from_ref(&a)), vec![&a]);
        let raised = capped(1, 200);
        assert_eq!(r.news(std::slice::from_ref(&raised)), vec![&raised]);
    }

    #[test]
    fn reaching_the_total_is_said_when_it_starts_and_when_it_ends() {
        let mut r = CapReports::default();
        assert_eq!(r.total(0), None);
        assert_eq!(r.total(40), Some(TotalNews::Reached { left_out: 40 }));
        // Every later plan over it, however many are left out: nothing.
        assert_eq!(r.total(40), None);
        assert_eq!(r.total(900), None);
        assert_eq!(r.total(0), Some(TotalNews::Cleared));
        assert_eq!(r.total(0), None);
        assert_eq!(r.total(1), Some(TotalNews::Reached { left_out: 1 }));
    }

    #[test]
    fn the_message_names_the_setting() {
        let m = capped(1, 100).message();
        assert!(m.contains("3000 ports"), "{m}");
        assert!(m.contains("max_forwards_per_container = 100"), "{m}");
    }
}
