//! What fwdd tells Prometheus.
//!
//! - [`HostCounters`]: what the hot path counts, per host, in atomics (a
//!   hand-off takes no lock to count itself);
//! - [`Scrape`]: everything else, read from the daemon's state when asked,
//!   and [`encode`] it in the exposition format with the Prometheus
//!   project's `prometheus-client`: OpenMetrics for scrapers that ask for
//!   it, the classic text format otherwise (node_exporter's textfile
//!   collector);
//! - [`serve`]: `GET /metrics`, `/healthz` and `/readyz` over HTTP/1.1.
//!
//! The metric names and labels are a contract (docs/operations.md, the alert
//! rules in packaging/prometheus). Labels are bounded: a host, a state, a
//! reason from a fixed set; never a container name, id or port, whose
//! number grows with the workload and would grow every series with it.

mod counters;
mod exposition;
mod http;

pub use counters::{
    FailureReason, HandoffHistogram, HostCounters, Refused, UdpDirection, UdpDropped,
    HANDOFF_BUCKETS,
};
pub use exposition::{
    encode, readiness, Descriptors, EndpointCounts, Format, HostScrape, Scrape, UdpScrape,
};
pub use http::{serve, serve_with, Limits, MetricsSource};
