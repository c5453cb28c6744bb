use super::*;
use std::time::Duration;

fn sample() -> Scrape {
    Scrape {
        version: "0.1.0 (abc1234)".into(),
        hosts: vec![
            HostScrape {
                name: "prod".into(),
                connected: true,
                streaming: true,
                state: "connected".into(),
                forwards: [("active".to_string(), 3), ("conflict".to_string(), 1)].into(),
                routes: [("direct".to_string(), 2), ("fell_back".to_string(), 1)].into(),
                reconnects: [("master_died".to_string(), 2)].into(),
                events: 120,
                engine_connections: 7,
                probe_rtt: Some(0.00175),
                exposures: [("active".to_string(), 1)].into(),
                counters: {
                    let c = Arc::new(HostCounters::default());
                    c.connection();
                    c.connection();
                    c.name_connection();
                    c.failed(FailureReason::Refused);
                    c.handoff.observe(Duration::from_micros(400));
                    c.refuse(crate::Refused::Tunnel);
                    for _ in 0..3 {
                        c.udp_datagram(crate::UdpDirection::In);
                    }
                    c.udp_datagram(crate::UdpDirection::Out);
                    c.udp_drop(crate::UdpDropped::Host, 40);
                    c
                },
                ports_over_cap: 2_520,
                names: [("serving".to_string(), 4), ("unnamed".to_string(), 1)].into(),
                name_connections_open: 3,
                udp: Some(UdpScrape {
                    forwards: [("serving".to_string(), 2), ("unsupported".to_string(), 1)].into(),
                    sessions: 5,
                }),
            },
            HostScrape {
                name: "we\"ird\\host\n".into(),
                state: "backoff".into(),
                ..HostScrape::default()
            },
        ],
        endpoint: Some(EndpointCounts {
            made_room: 5,
            never_asked: 2,
            accept_failed: 0,
        }),
        descriptors: Some(Descriptors {
            open: Some(41),
            limit: 20_000,
            reserved: 256,
            accept_failures: 3,
        }),
    }
}

#[test]
fn every_metric_of_the_contract_is_there() {
    let text = encode(&sample(), Format::OpenMetrics);
    for line in [
        "# TYPE fwd_build_info gauge",
        "fwd_build_info{version=\"0.1.0 (abc1234)\"} 1",
        "fwd_host_up{host=\"prod\"} 1",
        "fwd_master_connected{host=\"prod\"} 1",
        "fwd_event_stream_up{host=\"prod\"} 1",
        "fwd_forwards{host=\"prod\",state=\"active\"} 3",
        "fwd_forwards{host=\"prod\",state=\"conflict\"} 1",
        "# TYPE fwd_forward_routes gauge",
        "fwd_forward_routes{host=\"prod\",route=\"direct\"} 2",
        "fwd_forward_routes{host=\"prod\",route=\"fell_back\"} 1",
        "# TYPE fwd_host_reconnects counter",
        "fwd_host_reconnects_total{host=\"prod\",reason=\"master_died\"} 2",
        "fwd_connections_total{host=\"prod\"} 2",
        "# TYPE fwd_names gauge",
        "fwd_names{host=\"prod\",state=\"serving\"} 4",
        "fwd_names{host=\"prod\",state=\"unnamed\"} 1",
        "# TYPE fwd_name_connections_open gauge",
        "fwd_name_connections_open{host=\"prod\"} 3",
        "# TYPE fwd_name_connections counter",
        "fwd_name_connections_total{host=\"prod\"} 1",
        "fwd_connection_failures_total{host=\"prod\",reason=\"refused\"} 1",
        "# TYPE fwd_udp_forwards gauge",
        "fwd_udp_forwards{host=\"prod\",state=\"serving\"} 2",
        "fwd_udp_forwards{host=\"prod\",state=\"unsupported\"} 1",
        "# TYPE fwd_udp_sessions gauge",
        "fwd_udp_sessions{host=\"prod\"} 5",
        "# TYPE fwd_udp_datagrams counter",
        "fwd_udp_datagrams_total{host=\"prod\",direction=\"in\"} 3",
        "fwd_udp_datagrams_total{host=\"prod\",direction=\"out\"} 1",
        "# TYPE fwd_udp_dropped counter",
        "fwd_udp_dropped_total{host=\"prod\",where=\"runner\"} 0",
        "fwd_udp_dropped_total{host=\"prod\",where=\"host\"} 40",
        "# TYPE fwd_connections_refused counter",
        "fwd_connections_refused_total{host=\"prod\",what=\"tunnel\"} 1",
        "fwd_connections_refused_total{host=\"prod\",what=\"engine_client\"} 0",
        "fwd_ports_over_cap{host=\"prod\"} 2520",
        "fwd_connection_failures_total{host=\"prod\",reason=\"no_master\"} 0",
        "# TYPE fwd_handoff_seconds histogram",
        "fwd_handoff_seconds_count{host=\"prod\"} 1",
        "fwd_handoff_seconds_bucket{le=\"0.0005\",host=\"prod\"} 1",
        "fwd_handoff_seconds_bucket{le=\"+Inf\",host=\"prod\"} 1",
        "fwd_events_total{host=\"prod\"} 120",
        "fwd_engine_connections_total{host=\"prod\"} 7",
        "fwd_master_probe_rtt_seconds{host=\"prod\"} 0.00175",
        "fwd_exposures{host=\"prod\",state=\"active\"} 1",
        "# TYPE fwd_metrics_connections_closed counter",
        "fwd_metrics_connections_closed_total{reason=\"made_room\"} 5",
        "fwd_metrics_connections_closed_total{reason=\"no_request\"} 2",
        "fwd_metrics_accept_failures_total 0",
        "# TYPE fwd_open_files gauge",
        "fwd_open_files 41",
        "fwd_open_files_limit 20000",
        "fwd_open_files_reserved 256",
        "# TYPE fwd_accept_failures counter",
        "fwd_accept_failures_total 3",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing from:\n{text}"
        );
    }
    // A host that never probed has no RTT sample rather than a made-up one.
    assert_eq!(text.matches("fwd_master_probe_rtt_seconds{").count(), 1);
    // A host without names has no fwd_names sample, and zeros for its
    // connections (a rate over them works from the first scrape).
    assert_eq!(text.matches("fwd_names{").count(), 2);
    assert!(text.contains("fwd_name_connections_total{host=\"we\\\"ird\\\\host\\n\"} 0"));
    // A host without udp = true has no UDP series at all: prod's only.
    for (family, samples) in [
        ("fwd_udp_forwards{", 2),
        ("fwd_udp_sessions{", 1),
        ("fwd_udp_datagrams_total{", 2),
        ("fwd_udp_dropped_total{", 2),
    ] {
        assert_eq!(text.matches(family).count(), samples, "{family} in {text}");
    }
}

#[test]
fn label_values_are_escaped() {
    let text = encode(&sample(), Format::OpenMetrics);
    assert!(
        text.contains("fwd_host_up{host=\"we\\\"ird\\\\host\\n\"} 0"),
        "{text}"
    );
    assert!(
        text.lines().all(|l| !l.starts_with("ird")),
        "no broken line: {text}"
    );
}

#[test]
fn the_classic_format_names_counter_families_with_total_and_has_no_eof() {
    let text = encode(&sample(), Format::Classic);
    assert!(
        text.contains("# TYPE fwd_connections_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# HELP fwd_connections_total Client"),
        "{text}"
    );
    assert!(text.contains("fwd_connections_total{host=\"prod\"} 2\n"));
    assert!(text.contains("# TYPE fwd_host_up gauge\n"));
    // A gauge whose name begins with a counter's keeps its own name.
    assert!(text.contains("# TYPE fwd_name_connections_total counter\n"));
    assert!(text.contains("# TYPE fwd_name_connections_open gauge\n"));
    assert!(!text.contains("fwd_name_connections_open_total"), "{text}");
    assert!(text.contains("# TYPE fwd_udp_datagrams_total counter\n"));
    assert!(text.contains("# TYPE fwd_udp_dropped_total counter\n"));
    assert!(text.contains("# TYPE fwd_udp_sessions gauge\n"));
    assert!(text.contains("# TYPE fwd_handoff_seconds histogram\n"));
    assert!(!text.contains("# EOF"));
    assert_eq!(Format::from_accept(None), Format::Classic);
    assert_eq!(
        Format::from_accept(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )),
        Format::OpenMetrics
    );
}

#[test]
fn ready_only_when_every_host_is_up() {
    let mut s = sample();
    let e = readiness(&s).unwrap_err();
    assert!(e.contains("backoff") && !e.contains("prod"), "{e}");
    s.hosts.truncate(1);
    assert_eq!(readiness(&s).unwrap(), "ready: prod\n");
    s.hosts[0].streaming = false;
    s.hosts[0].state = "connected, event stream down".into();
    assert!(readiness(&s).unwrap_err().contains("event stream down"));
}
