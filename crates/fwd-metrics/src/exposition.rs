//! The exposition: what the daemon knows at scrape time ([`Scrape`]) and
//! the hot-path counters, encoded by `prometheus-client`.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::counters::{FailureReason, HostCounters, Refused, UdpDirection, UdpDropped};

/// What a scrape reads of the daemon, taken in one step.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub version: String,
    pub hosts: Vec<HostScrape>,
    /// The HTTP endpoint's own counts; set by the endpoint as it answers
    /// (absent from `fwdctl metrics`, which does not go through it).
    pub endpoint: Option<EndpointCounts>,
    /// fwdd's descriptors: what it holds, its limit, failed accepts.
    pub descriptors: Option<Descriptors>,
}

/// fwdd's own descriptors, as status reports them (`limits`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptors {
    /// Open now; `None` where they cannot be counted.
    pub open: Option<u64>,
    /// The soft `RLIMIT_NOFILE` fwdd runs with (raised at start).
    pub limit: u64,
    /// Descriptors no forward, exposure or client may take.
    pub reserved: u64,
    /// Failed `accept(2)` calls on any of fwdd's sockets, since the start.
    pub accept_failures: u64,
}

/// What the metrics endpoint closed or failed to accept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointCounts {
    /// Connections closed at the cap to make room for a new one.
    pub made_room: u64,
    /// Connections closed because no request came in time.
    pub never_asked: u64,
    /// Accepts that failed (e.g. out of descriptors).
    pub accept_failed: u64,
}

#[derive(Clone, Debug, Default)]
pub struct HostScrape {
    pub name: String,
    /// The master is connected.
    pub connected: bool,
    /// The engine's event stream runs (forwards follow containers).
    pub streaming: bool,
    /// What the master or stream state is, for `/readyz`'s body.
    pub state: String,
    /// Forwards by state (`active`, `pending`, `conflict`, …).
    pub forwards: BTreeMap<String, u64>,
    /// Active forwards by route (`direct`, `published`, `fell_back`).
    pub routes: BTreeMap<String, u64>,
    /// Reconnects by what ended the previous link.
    pub reconnects: BTreeMap<String, u64>,
    pub events: u64,
    pub engine_connections: u64,
    /// The master's last end-to-end probe, in seconds.
    pub probe_rtt: Option<f64>,
    /// Exposures by state (`active`, `failed`, …).
    pub exposures: BTreeMap<String, u64>,
    /// Published ports not forwarded because their container publishes
    /// more than `max_forwards_per_container`.
    pub ports_over_cap: u64,
    /// Containers by the state of their name (`serving`, `failed`,
    /// `unnamed`), with `names = true`.
    pub names: BTreeMap<String, u64>,
    /// Client connections open now on the host's names.
    pub name_connections_open: u64,
    /// Its UDP forwards, for a host with `udp = true` (none: no UDP series).
    pub udp: Option<UdpScrape>,
    pub counters: Arc<HostCounters>,
}

/// A host's UDP forwards now; its datagrams and drops are counted in its
/// [`HostCounters`], which outlive each forward.
#[derive(Clone, Debug, Default)]
pub struct UdpScrape {
    /// Forwards by state (`serving`, `waiting`, `unsupported`, `failed`).
    pub forwards: BTreeMap<String, u64>,
    /// Client addresses with a session now, over the host's forwards.
    pub sessions: u64,
}

impl HostScrape {
    /// Up: the master is connected and the event stream runs.
    pub fn up(&self) -> bool {
        self.connected && self.streaming
    }
}

/// Which text format a reader gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`, what Prometheus asks for.
    OpenMetrics,
    /// `text/plain; version=0.0.4`, what node_exporter's textfile collector
    /// and older scrapers read.
    Classic,
}

impl Format {
    /// From an HTTP `Accept` header.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Classic,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The exposition of `scrape`.
pub fn encode(scrape: &Scrape, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ScrapeCollector(scrape.clone())));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    match format {
        Format::OpenMetrics => out,
        Format::Classic => classic(&out),
    }
}

/// OpenMetrics → the classic text format: the two differ, for what fwd
/// exposes, only in the counters' family names (OpenMetrics names the family
/// without `_total`, the classic format with it) and the `# EOF` line.
fn classic(openmetrics: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" counter"))
        {
            counters.push(name);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `Ok(body)` when every host is up; `Err(body)` names each one that is not.
pub fn readiness(scrape: &Scrape) -> Result<String, String> {
    let down: Vec<String> = scrape
        .hosts
        .iter()
        .filter(|h| !h.up())
        .map(|h| format!("host {}: {}", h.name, h.state))
        .collect();
    if down.is_empty() {
        let names: Vec<&str> = scrape.hosts.iter().map(|h| h.name.as_str()).collect();
        Ok(format!("ready: {}\n", names.join(", ")))
    } else {
        Err(format!("not ready: {}\n", down.join("; ")))
    }
}

/// A label value as the exposition format wants it: backslash, double
/// quote and line feed escaped (prometheus-client writes values as given).
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ScrapeCollector(Scrape);

fn host(h: &HostScrape) -> (&'static str, Escaped<'_>) {
    ("host", Escaped(&h.name))
}

/// One family of constant samples, each with its labels.
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'a str, Escaped<'a>)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge of counts per host and one more label, e.g. forwards by state.
fn counts_by<'a>(
    hosts: &'a [HostScrape],
    label: &'static str,
    counts: impl Fn(&'a HostScrape) -> &'a BTreeMap<String, u64> + Copy + 'a,
) -> impl Iterator<Item = (Vec<(&'a str, Escaped<'a>)>, ConstGauge<i64>)> + 'a {
    hosts.iter().flat_map(move |h| {
        counts(h).iter().map(move |(value, n)| {
            (
                vec![host(h), (label, Escaped(value))],
                ConstGauge::new(*n as i64),
            )
        })
    })
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let s = &self.0;
        family(
            &mut e,
            "fwd_build_info",
            "The running fwdd's version (always 1).",
            Gauge,
            [(
                vec![("version", Escaped(&s.version))],
                ConstGauge::new(1i64),
            )],
        )?;
        family(
            &mut e,
            "fwd_host_up",
            "1 while the host's ssh master is connected and its engine's event stream runs.",
            Gauge,
            s.hosts
                .iter()
                .map(|h| (vec![host(h)], ConstGauge::new(i64::from(h.up())))),
        )?;
        family(
            &mut e,
            "fwd_master_connected",
            "1 while the host's ssh master is connected.",
            Gauge,
            s.hosts
                .iter()
                .map(|h| (vec![host(h)], ConstGauge::new(i64::from(h.connected)))),
        )?;
        family(
            &mut e,
            "fwd_event_stream_up",
            "1 while the host's engine event stream runs (forwards follow containers).",
            Gauge,
            s.hosts
                .iter()
                .map(|h| (vec![host(h)], ConstGauge::new(i64::from(h.streaming)))),
        )?;
        family(
            &mut e,
            "fwd_forwards",
            "Forwards by state (active, pending, conflict, unsupported).",
            Gauge,
            counts_by(&s.hosts, "state", |h| &h.forwards),
        )?;
        family(
            &mut e,
            "fwd_forward_routes",
            "Active forwards by route: direct (to the container itself), published (the port published on the host), fell_back (published, because the direct route failed).",
            Gauge,
            counts_by(&s.hosts, "route", |h| &h.routes),
        )?;
        family(
            &mut e,
            "fwd_host_reconnects",
            "New ssh masters after a link that was up, by what ended it (a failure kind, or requested).",
            Counter,
            s.hosts.iter().flat_map(|h| {
                h.reconnects.iter().map(move |(reason, n)| {
                    (
                        vec![host(h), ("reason", Escaped(reason))],
                        ConstCounter::new(*n),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "fwd_connections",
            "Client connections accepted on the host's forwards and names.",
            Counter,
            s.hosts
                .iter()
                .map(|h| (vec![host(h)], ConstCounter::new(h.counters.connections()))),
        )?;
        family(
            &mut e,
            "fwd_names",
            "Containers by the state of their name (names = true): serving (its address answers on its ports), failed (a port of its address could not be bound), unnamed (no address: not reachable directly, or the range is used up).",
            Gauge,
            counts_by(&s.hosts, "state", |h| &h.names),
        )?;
        family(
            &mut e,
            "fwd_name_connections_open",
            "Client connections open now on the host's containers' names.",
            Gauge,
            s.hosts.iter().map(|h| {
                (
                    vec![host(h)],
                    ConstGauge::new(h.name_connections_open as i64),
                )
            }),
        )?;
        family(
            &mut e,
            "fwd_name_connections",
            "Client connections accepted on the host's containers' names (also counted in fwd_connections).",
            Counter,
            s.hosts.iter().map(|h| {
                (
                    vec![host(h)],
                    ConstCounter::new(h.counters.name_connections()),
                )
            }),
        )?;
        // Per host, never per port or client: a host's published UDP ports
        // and their clients' addresses grow with the workload.
        let udp_hosts = || s.hosts.iter().filter_map(|h| Some((h, h.udp.as_ref()?)));
        family(
            &mut e,
            "fwd_udp_forwards",
            "Published UDP ports forwarded (udp = true), by state: serving, waiting (no master yet, or the relay is starting), unsupported (the relay cannot run on the host), failed (tried again).",
            Gauge,
            udp_hosts().flat_map(|(h, u)| {
                u.forwards.iter().map(move |(state, n)| {
                    (
                        vec![host(h), ("state", Escaped(state))],
                        ConstGauge::new(*n as i64),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "fwd_udp_sessions",
            "Client addresses with a UDP session now, over the host's UDP forwards.",
            Gauge,
            udp_hosts().map(|(h, u)| (vec![host(h)], ConstGauge::new(u.sessions as i64))),
        )?;
        family(
            &mut e,
            "fwd_udp_datagrams",
            "UDP datagrams through the host's forwards: in (from clients on the runner), out (replies delivered to them).",
            Counter,
            udp_hosts().flat_map(|(h, _)| {
                UdpDirection::ALL.iter().map(move |d| {
                    (
                        vec![host(h), ("direction", Escaped(d.as_str()))],
                        ConstCounter::new(h.counters.udp_datagrams(*d)),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "fwd_udp_dropped",
            "UDP datagrams dropped: runner (in fwdd: no relay running, a full queue, a session cap), host (by the relay on the host: replies past its queue).",
            Counter,
            udp_hosts().flat_map(|(h, _)| {
                UdpDropped::ALL.iter().map(move |w| {
                    (
                        vec![host(h), ("where", Escaped(w.as_str()))],
                        ConstCounter::new(h.counters.udp_dropped(*w)),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "fwd_connection_failures",
            "Client connections closed without a tunnel, by reason (no_master, not_started, refused, handoff).",
            Counter,
            s.hosts.iter().flat_map(|h| {
                FailureReason::ALL.iter().map(move |r| {
                    (
                        vec![host(h), ("reason", Escaped(r.as_str()))],
                        ConstCounter::new(h.counters.failures(*r)),
                    )
                })
            }),
        )?;
        {
            let mut metric = e.encode_descriptor(
                "fwd_handoff_seconds",
                "From a client's accept to its tunnel being open.",
                None,
                MetricType::Histogram,
            )?;
            for h in &s.hosts {
                let (sum, count, buckets) = h.counters.handoff.read();
                let labels = vec![host(h)];
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        family(
            &mut e,
            "fwd_events",
            "Engine events received over the host's event stream.",
            Counter,
            s.hosts
                .iter()
                .map(|h| (vec![host(h)], ConstCounter::new(h.events))),
        )?;
        family(
            &mut e,
            "fwd_engine_connections",
            "Connections to the host's engine through fwdd's local engine socket.",
            Counter,
            s.hosts
                .iter()
                .map(|h| (vec![host(h)], ConstCounter::new(h.engine_connections))),
        )?;
        family(
            &mut e,
            "fwd_master_probe_rtt_seconds",
            "The last end-to-end probe through the host's master (absent until one was made).",
            Gauge,
            s.hosts
                .iter()
                .filter_map(|h| h.probe_rtt.map(|rtt| (vec![host(h)], ConstGauge::new(rtt)))),
        )?;
        family(
            &mut e,
            "fwd_exposures",
            "Runner ports the host's containers reach (expose), by state.",
            Gauge,
            counts_by(&s.hosts, "state", |h| &h.exposures),
        )?;
        family(
            &mut e,
            "fwd_connections_refused",
            "Clients closed at once at a cap, by what held the connections: tunnel (max_tunnels_per_forward), exposure (max_tunnels_per_exposure), engine_client (max_engine_clients).",
            Counter,
            s.hosts.iter().flat_map(|h| {
                Refused::ALL.iter().map(move |r| {
                    (
                        vec![host(h), ("what", Escaped(r.as_str()))],
                        ConstCounter::new(h.counters.refused(*r)),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "fwd_ports_over_cap",
            "Published ports not forwarded because their container publishes more than max_forwards_per_container.",
            Gauge,
            s.hosts
                .iter()
                .map(|h| (vec![host(h)], ConstGauge::new(h.ports_over_cap as i64))),
        )?;
        if let Some(d) = &s.descriptors {
            if let Some(open) = d.open {
                ConstGauge::new(open as i64).encode(e.encode_descriptor(
                    "fwd_open_files",
                    "Descriptors fwdd holds now (listeners, tunnels' mux connections, clients).",
                    None,
                    Gauge,
                )?)?;
            }
            ConstGauge::new(d.limit as i64).encode(e.encode_descriptor(
                "fwd_open_files_limit",
                "The open-files limit fwdd runs with (its soft limit, raised to the hard one at start).",
                None,
                Gauge,
            )?)?;
            ConstGauge::new(d.reserved as i64).encode(e.encode_descriptor(
                "fwd_open_files_reserved",
                "Descriptors no forward, exposure or client may take (the control socket's, the engine socket's, the masters').",
                None,
                Gauge,
            )?)?;
            ConstCounter::new(d.accept_failures).encode(e.encode_descriptor(
                "fwd_accept_failures",
                "Accepts that failed on fwdd's forwards, engine, control and exposure sockets (e.g. out of descriptors).",
                None,
                Counter,
            )?)?;
        }
        if let Some(c) = &s.endpoint {
            family(
                &mut e,
                "fwd_metrics_connections_closed",
                "Connections to this endpoint fwdd closed: made_room (the one quiet the longest, at the connection cap), no_request (no complete request in time).",
                Counter,
                [("made_room", c.made_room), ("no_request", c.never_asked)]
                    .into_iter()
                    .map(|(why, n)| (vec![("reason", Escaped(why))], ConstCounter::new(n))),
            )?;
            ConstCounter::new(c.accept_failed).encode(e.encode_descriptor(
                "fwd_metrics_accept_failures",
                "Accepts on this endpoint that failed (e.g. out of descriptors).",
                None,
                Counter,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
