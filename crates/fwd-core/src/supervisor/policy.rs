//! The numbers a host's supervision runs by, from the configuration.

use std::time::Duration;

use crate::backoff::BackoffPolicy;
use crate::defaults;

/// The numbers a host's supervision runs by (from the configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct HostPolicy {
    pub backoff: BackoffPolicy,
    /// How often a permanent failure (refused key, …) is tried again.
    pub permanent_retry: Duration,
    /// Health probe period while the link is up.
    pub health_interval: Duration,
    /// Full list-and-inspect period, repairing any drift of the event stream.
    pub resync_interval: Duration,
    /// How long `ssh -M` may take to answer on its control socket.
    pub master_ready_timeout: Duration,
    /// How long one request to the engine may take.
    pub request_timeout: Duration,
    /// How long the probe after a network change or resume may take.
    pub wake_probe_timeout: Duration,
    /// A repeating failure is summarised at most this often.
    pub summary_every: Duration,
    /// The remote engine's socket, when configured; otherwise it is learned
    /// from the remote docker CLI once per master.
    pub engine_socket: Option<String>,
    /// How long a created, never started container keeps its ports bound.
    pub pending_timeout: Duration,
    /// How long an engine found by the search (not one the host names) may
    /// be gone before another engine found on the host is taken.
    pub engine_gone_after: Duration,
}

impl Default for HostPolicy {
    fn default() -> Self {
        HostPolicy {
            backoff: BackoffPolicy::default(),
            permanent_retry: defaults::PERMANENT_RETRY,
            health_interval: defaults::HEALTH_INTERVAL,
            resync_interval: defaults::RESYNC_INTERVAL,
            master_ready_timeout: defaults::MASTER_READY_TIMEOUT,
            request_timeout: defaults::REQUEST_TIMEOUT,
            wake_probe_timeout: defaults::WAKE_PROBE_TIMEOUT,
            summary_every: defaults::SUMMARY_EVERY,
            engine_socket: None,
            pending_timeout: defaults::PENDING_TIMEOUT,
            engine_gone_after: defaults::ENGINE_GONE_AFTER,
        }
    }
}
