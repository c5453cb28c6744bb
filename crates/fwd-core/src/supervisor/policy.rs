//! The numbers a host's supervision runs by, from the configuration.

use std::time::Duration;

use super::pin::ENGINE_GONE_AFTER;
use crate::backoff::BackoffPolicy;

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
            permanent_retry: Duration::from_secs(300),
            health_interval: Duration::from_secs(30),
            resync_interval: Duration::from_secs(300),
            master_ready_timeout: Duration::from_secs(25),
            request_timeout: Duration::from_secs(10),
            wake_probe_timeout: Duration::from_secs(2),
            summary_every: Duration::from_secs(300),
            engine_socket: None,
            pending_timeout: Duration::from_secs(60),
            engine_gone_after: ENGINE_GONE_AFTER,
        }
    }
}
