//! What the hot path counts: plain atomics, one set per host, handed out
//! once (an `Arc`) so counting needs no lookup and no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why a client's connection through a forward was closed without a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// No master came up within `connect_wait`.
    NoMaster,
    /// The container was created but did not start within `connect_wait`.
    NotStarted,
    /// The remote end refused (nothing listens there), after the startup
    /// window's retries.
    Refused,
    /// The hand-off failed and the `ssh -W` fallback did not serve it.
    Handoff,
}

impl FailureReason {
    pub const ALL: [FailureReason; 4] = [
        FailureReason::NoMaster,
        FailureReason::NotStarted,
        FailureReason::Refused,
        FailureReason::Handoff,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::NoMaster => "no_master",
            FailureReason::NotStarted => "not_started",
            FailureReason::Refused => "refused",
            FailureReason::Handoff => "handoff",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a cap refused (`fwd_core::budget`): a client closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A forward held `max_tunnels_per_forward` connections.
    Tunnel,
    /// An exposure held `max_tunnels_per_exposure` connections.
    Exposure,
    /// The engine sockets held `max_engine_clients` clients.
    EngineClient,
}

impl Refused {
    pub const ALL: [Refused; 3] = [Refused::Tunnel, Refused::Exposure, Refused::EngineClient];

    /// The `what` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Tunnel => "tunnel",
            Refused::Exposure => "exposure",
            Refused::EngineClient => "engine_client",
        }
    }
}

/// Which way a datagram crossed a host's UDP forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpDirection {
    /// From a client on the runner, read off a forward's socket.
    In,
    /// A reply handed back to the client that asked.
    Out,
}

impl UdpDirection {
    pub const ALL: [UdpDirection; 2] = [UdpDirection::In, UdpDirection::Out];

    /// The `direction` label.
    pub fn as_str(self) -> &'static str {
        match self {
            UdpDirection::In => "in",
            UdpDirection::Out => "out",
        }
    }
}

/// Where a host's UDP datagrams were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpDropped {
    /// In fwdd: no relay running, a full queue, a forward at its session
    /// cap, a reply the client's socket would not take.
    Runner,
    /// By the relay on the host (replies past its queue), as it reports.
    Host,
}

impl UdpDropped {
    pub const ALL: [UdpDropped; 2] = [UdpDropped::Runner, UdpDropped::Host];

    /// The `where` label.
    pub fn as_str(self) -> &'static str {
        match self {
            UdpDropped::Runner => "runner",
            UdpDropped::Host => "host",
        }
    }
}

/// Upper bounds (seconds) of the hand-off latency buckets: from a warm
/// hand-off (~0.3 ms) to a client held through a reconnect (seconds).
pub const HANDOFF_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// A latency histogram in atomics: one relaxed add per bucket hit, sum and
/// count. Read at scrape time; a scrape that races an observation may see
/// one more in the count than in a bucket, which Prometheus tolerates.
#[derive(Debug, Default)]
pub struct HandoffHistogram {
    buckets: [AtomicU64; HANDOFF_BUCKETS.len()],
    /// Observations above the last bound (the `+Inf` bucket's own share).
    above: AtomicU64,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl HandoffHistogram {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        match HANDOFF_BUCKETS.iter().position(|b| secs <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.above.fetch_add(1, Ordering::Relaxed),
        };
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts (not cumulative) with
    /// their bounds, the last being `f64::MAX` for +Inf).
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = HANDOFF_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
            .collect();
        // prometheus-client writes the bound f64::MAX as `+Inf`.
        buckets.push((f64::MAX, self.above.load(Ordering::Relaxed)));
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

/// One host's hot-path counters.
#[derive(Debug, Default)]
pub struct HostCounters {
    /// Client connections accepted on the host's forwards and names.
    pub connections: AtomicU64,
    /// Of those, the ones accepted on a container's name (its own address).
    name_connections: AtomicU64,
    failures: [AtomicU64; FailureReason::ALL.len()],
    refused: [AtomicU64; Refused::ALL.len()],
    /// UDP datagrams, by direction, for the life of the process: a
    /// forward's own counts (status) go with it when its container does.
    udp_datagrams: [AtomicU64; UdpDirection::ALL.len()],
    udp_dropped: [AtomicU64; UdpDropped::ALL.len()],
    /// Accept → tunnel open, for connections that got one.
    pub handoff: HandoffHistogram,
}

impl HostCounters {
    pub fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, why: FailureReason) {
        self.failures[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failures(&self, why: FailureReason) -> u64 {
        self.failures[why.index()].load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// A client accepted on a name's address; counted besides
    /// [`connection`](Self::connection), which counts every client.
    pub fn name_connection(&self) {
        self.name_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn name_connections(&self) -> u64 {
        self.name_connections.load(Ordering::Relaxed)
    }

    pub fn refuse(&self, what: Refused) {
        self.refused[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, what: Refused) -> u64 {
        self.refused[what as usize].load(Ordering::Relaxed)
    }

    pub fn udp_datagram(&self, direction: UdpDirection) {
        self.udp_datagrams[direction as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn udp_datagrams(&self, direction: UdpDirection) -> u64 {
        self.udp_datagrams[direction as usize].load(Ordering::Relaxed)
    }

    /// `n` datagrams dropped `at` (the relay reports its drops in batches).
    pub fn udp_drop(&self, at: UdpDropped, n: u64) {
        self.udp_dropped[at as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn udp_dropped(&self, at: UdpDropped) -> u64 {
        self.udp_dropped[at as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_the_sum() {
        let h = HandoffHistogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(30));
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 3);
        assert!((sum - 30.0033).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 1));
        assert_eq!(buckets.last(), Some(&(f64::MAX, 1)));
        let c = HostCounters::default();
        c.failed(FailureReason::Refused);
        c.failed(FailureReason::Refused);
        c.connection();
        assert_eq!(c.failures(FailureReason::Refused), 2);
        assert_eq!(c.failures(FailureReason::NoMaster), 0);
        assert_eq!(c.connections(), 1);
        assert_eq!(c.name_connections(), 0);
        c.name_connection();
        assert_eq!(c.name_connections(), 1);
        c.refuse(Refused::Tunnel);
        assert_eq!(c.refused(Refused::Tunnel), 1);
        assert_eq!(c.refused(Refused::EngineClient), 0);
        c.udp_datagram(UdpDirection::In);
        c.udp_datagram(UdpDirection::In);
        c.udp_datagram(UdpDirection::Out);
        c.udp_drop(UdpDropped::Host, 5);
        c.udp_drop(UdpDropped::Runner, 1);
        c.udp_drop(UdpDropped::Host, 2);
        assert_eq!(c.udp_datagrams(UdpDirection::In), 2);
        assert_eq!(c.udp_datagrams(UdpDirection::Out), 1);
        assert_eq!(c.udp_dropped(UdpDropped::Host), 7);
        assert_eq!(c.udp_dropped(UdpDropped::Runner), 1);
    }
}
