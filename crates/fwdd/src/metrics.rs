//! What Prometheus reads of the daemon: a [`Scrape`] made from the status
//! snapshot, each machine's reconnect reasons and the hot-path counters,
//! served by `fwd_metrics` on the configured address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;

use fwd_metrics::{HostScrape, MetricsSource, Scrape, UdpScrape};
use fwd_proto::{ForwardState, MasterState, StreamState};

use crate::daemon::Daemon;

/// The daemon as a metrics source.
pub struct DaemonMetrics(pub Rc<Daemon>);

impl MetricsSource for DaemonMetrics {
    fn scrape(&self) -> Scrape {
        scrape(&self.0)
    }
}

pub fn scrape(d: &Daemon) -> Scrape {
    let status = crate::status::snapshot(d);
    let udp_hosts: Vec<String> = d
        .config
        .borrow()
        .hosts
        .iter()
        .filter(|c| c.udp)
        .map(|c| c.name.clone())
        .collect();
    let hosts = status
        .hosts
        .iter()
        .map(|h| {
            let key = fwd_core::HostKey::from(h.name.as_str());
            let mut forwards: BTreeMap<String, u64> = BTreeMap::new();
            let mut routes: BTreeMap<String, u64> = BTreeMap::new();
            for f in status.forwards.iter().filter(|f| f.host == h.name) {
                *forwards.entry(f.state.as_str().into()).or_default() += 1;
                if let (ForwardState::Active, Some(r)) = (f.state, &f.route) {
                    let route = if r.fell_back {
                        "fell_back"
                    } else {
                        r.kind.as_str()
                    };
                    *routes.entry(route.into()).or_default() += 1;
                }
            }
            let mut exposures: BTreeMap<String, u64> = BTreeMap::new();
            for e in status.exposed.iter().filter(|e| e.host == h.name) {
                *exposures.entry(e.state.clone()).or_default() += 1;
            }
            // Per host and state, never per name: a name is a container's,
            // and their number grows with the workload.
            let mut names: BTreeMap<String, u64> = BTreeMap::new();
            let mut name_connections_open = 0;
            for n in status.names.iter().filter(|n| n.host == h.name) {
                *names.entry(n.state.clone()).or_default() += 1;
                name_connections_open += n.connections_open;
            }
            // Per host and state, never per port: a host with udp = true
            // has its series from the start, zeros until a forward comes.
            let udp = udp_hosts.contains(&h.name).then(|| {
                let mut u = UdpScrape::default();
                for f in status.udp.iter().filter(|f| f.host == h.name) {
                    *u.forwards.entry(f.state.clone()).or_default() += 1;
                    u.sessions += f.sessions;
                }
                u
            });
            let reconnects = d
                .host(&h.name)
                .map(|host| {
                    host.machine
                        .borrow()
                        .health()
                        .reconnect_reasons
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect()
                })
                .unwrap_or_default();
            let ports_over_cap = status
                .limits
                .iter()
                .flat_map(|l| &l.capped)
                .filter(|c| c.host == h.name)
                .map(|c| c.published.saturating_sub(c.forwarded))
                .sum();
            let connected = h.master.state == MasterState::Connected;
            let streaming = h.events.state == StreamState::Streaming;
            HostScrape {
                name: h.name.clone(),
                connected,
                streaming,
                state: if connected && !streaming {
                    format!("connected, event stream {}", h.events.state)
                } else {
                    h.master.state.to_string()
                },
                forwards,
                routes,
                reconnects,
                events: h.events.events_received,
                engine_connections: h.engine.as_ref().map_or(0, |e| e.connections_total),
                probe_rtt: h.master.last_probe_rtt_ms.map(|ms| ms / 1000.0),
                exposures,
                ports_over_cap,
                names,
                name_connections_open,
                udp,
                counters: d.serve.counters(&key),
            }
        })
        .collect();
    Scrape {
        version: status.daemon.version,
        hosts,
        endpoint: None,
        descriptors: status.limits.as_ref().map(|l| fwd_metrics::Descriptors {
            open: l.open_files,
            limit: l.open_files_limit,
            reserved: l.reserved,
            accept_failures: l.accept_failures,
        }),
    }
}

/// Binds the metrics listener (`std`, non-blocking, close-on-exec), saying
/// so when it is reachable from other machines.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}"))
    })?;
    listener.set_nonblocking(true)?;
    if !addr.ip().is_loopback() {
        tracing::warn!(event = "metrics_not_loopback", addr = %addr,
            "metrics are served on {addr}, reachable from other machines: they name the Docker hosts and what fails");
    }
    Ok(listener)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until fwdd stops.
pub fn spawn(daemon: &Rc<Daemon>, listener: std::net::TcpListener) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!(event = "metrics_serving", addr = %addr, "metrics on http://{addr}/metrics (and /healthz, /readyz)");
    let source: Rc<dyn MetricsSource> = Rc::new(DaemonMetrics(daemon.clone()));
    tokio::task::spawn_local(fwd_metrics::serve(listener, source));
    Ok(())
}
