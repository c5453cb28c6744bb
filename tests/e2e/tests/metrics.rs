//! The fleet's view: fwdd's metrics endpoint, `/healthz`, `/readyz` and
//! `fwdctl metrics` against the real sshd and dockerd of the sandbox.
//! Host ports 20700-20799 are this file's.

#[macro_use]
mod common;

use std::time::Duration;

use common::{fwdctl, Fwdd};
use fwd_e2e::TestHost;
use fwd_proto::ForwardState;

const T: Duration = Duration::from_secs(30);
const METRICS_PORT: u16 = 9633;

/// `GET path` on `127.0.0.1:port` in the runner's namespace: (status, body).
fn http_get(host: &TestHost, port: u16, path: &str) -> Option<(u16, String)> {
    host.http_get_path(port, path, Duration::from_secs(5))
}

/// `GET path` on fwdd's metrics endpoint.
fn get(host: &TestHost, path: &str) -> (u16, String) {
    http_get(host, METRICS_PORT, path).unwrap_or_else(|| panic!("no answer to GET {path}"))
}

/// fwdd for `host` (named "box") serving its metrics on METRICS_PORT,
/// once connected.
fn with_metrics(host: &TestHost) -> Fwdd<'_> {
    with_metrics_and(host, "")
}

/// [`with_metrics`] with more settings of the host's (`extra`, TOML lines).
fn with_metrics_and<'a>(host: &'a TestHost, extra: &str) -> Fwdd<'a> {
    let config = format!(
        "metrics = \"127.0.0.1:{METRICS_PORT}\"\n[[host]]\nname = \"box\"\nurl = \"ssh://{}\"\nssh_config = \"{}\"\n{extra}",
        host.alias,
        host.ssh_config.display()
    );
    let fwdd = Fwdd::spawn_with_config(host, &config);
    fwdd.wait_connected();
    fwdd
}

/// The value of the sample `series` (name and labels exactly), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn wait_sample(host: &TestHost, series: &str, what: &str, ok: impl Fn(f64) -> bool) -> String {
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, text) = get(host, "/metrics");
        if sample(&text, series).is_some_and(&ok) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {series} never did; last:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_endpoint_counts_traffic_and_reconnects_and_readyz_follows_the_host() {
    let host = sandbox_host!("metrics_endpoint");
    let fwdd = with_metrics(&host);
    let text = wait_sample(&host, "fwd_host_up{host=\"box\"}", "the host up", |v| {
        v == 1.0
    });
    assert!(text.contains("fwd_build_info{version=\""), "{text}");
    // Its descriptors: what it holds, of the limit it raised itself to.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", fwdd.child.id()))
        .map(|d| d.count() as f64)
        .expect("fwdd's fds");
    let open = sample(&text, "fwd_open_files").expect("fwd_open_files");
    assert!((open - fds).abs() <= 8.0, "{open} reported, {fds} in /proc");
    let limit = sample(&text, "fwd_open_files_limit").expect("fwd_open_files_limit");
    assert!(limit > open, "{text}");
    assert!(
        sample(&text, "fwd_accept_failures_total").is_some(),
        "{text}"
    );
    assert_eq!(get(&host, "/healthz").0, 200);
    let (status, body) = get(&host, "/readyz");
    assert_eq!((status, body.as_str()), (200, "ready: box\n"));

    // Traffic: each connection is counted, and its hand-off timed.
    host.httpd(&["20700:8080"]);
    fwdd.wait_forward_state(20700, ForwardState::Active);
    for _ in 0..3 {
        assert_eq!(fwdd.wait_http(20700), "hello\n");
    }
    let text = wait_sample(
        &host,
        "fwd_connections_total{host=\"box\"}",
        "connections",
        |v| v >= 3.0,
    );
    assert!(
        sample(&text, "fwd_handoff_seconds_count{host=\"box\"}").is_some_and(|v| v >= 3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "fwd_forwards{host=\"box\",state=\"active\"}"),
        Some(1.0),
        "{text}"
    );
    // Its route: the container itself, once the engine said it is rootful.
    wait_sample(
        &host,
        "fwd_forward_routes{host=\"box\",route=\"direct\"}",
        "the direct route",
        |v| v == 1.0,
    );

    // A master SIGKILL: not ready while it is down, then a reconnect counted
    // by its reason.
    let master = fwdd.master_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the master");
    let deadline = std::time::Instant::now() + T;
    loop {
        let (status, body) = get(&host, "/readyz");
        if status == 503 {
            assert!(body.starts_with("not ready: host box:"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never said 503"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_sample(
        &host,
        "fwd_host_reconnects_total{host=\"box\",reason=\"master_died\"}",
        "the reconnect",
        |v| v == 1.0,
    );
    assert_eq!(get(&host, "/readyz").0, 200);

    // The same series over the control socket, in the classic format.
    let out = fwdctl(&fwdd, &["metrics"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# TYPE fwd_connections_total counter\n"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
}

/// Names (issue 31) are counted per host and state, never per container:
/// a named container, a connection held open on its address, and none of
/// its names or its address in any label.
#[test]
fn names_and_their_connections_are_counted_per_host() {
    let host = sandbox_host!("metrics_names");
    let fwdd = with_metrics_and(&host, "names = true\n");
    let name = format!("{}-counted", host.label);
    host.run(&[
        "--name",
        &name,
        "--expose",
        "8080",
        &host.image,
        "sh",
        "-c",
        &common::httpd_serving("counted"),
    ]);
    wait_sample(
        &host,
        "fwd_names{host=\"box\",state=\"serving\"}",
        "the container named",
        |v| v == 1.0,
    );
    let address = fwdd
        .status()
        .and_then(|s| s.names.into_iter().find(|n| n.container_name == name))
        .and_then(|n| n.address)
        .expect("the name's address");
    let text = wait_sample(
        &host,
        "fwd_name_connections_open{host=\"box\"}",
        "no connection yet",
        |v| v == 0.0,
    );
    assert!(
        sample(&text, "fwd_name_connections_total{host=\"box\"}").is_some(),
        "{text}"
    );
    // Held open without a request: the client is accepted, so counted open.
    let held = host
        .connect_addr(std::net::SocketAddr::from((address, 8080)))
        .expect("connect to the name's address");
    let text = wait_sample(
        &host,
        "fwd_name_connections_open{host=\"box\"}",
        "the held connection",
        |v| v == 1.0,
    );
    assert!(
        sample(&text, "fwd_connections_total{host=\"box\"}").is_some_and(|v| v >= 1.0),
        "a name's connection is one of the host's: {text}"
    );
    assert_eq!(
        sample(&text, "fwd_name_connections_total{host=\"box\"}"),
        Some(1.0),
        "{text}"
    );
    let dns = name.replace('_', "-");
    for unbounded in [dns.as_str(), name.as_str(), &address.to_string()] {
        assert!(!text.contains(unbounded), "{unbounded} in a label: {text}");
    }
    drop(held);
    wait_sample(
        &host,
        "fwd_name_connections_open{host=\"box\"}",
        "the connection closed",
        |v| v == 0.0,
    );
}

/// The label names of each sample of the families beginning with `prefix`.
fn label_names<'a>(text: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let labels = l.split_once('{')?.1.rsplit_once('}')?.0;
            Some(
                labels
                    .split(',')
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                    .collect(),
            )
        })
        .collect()
}

/// UDP forwards (issue 33) are counted per host: forwards by state,
/// sessions, datagrams each way and drops, never per port or client; the
/// datagrams stay counted when their forward goes with its container.
#[test]
fn udp_forwards_are_counted_per_host_and_outlive_their_container() {
    let host = sandbox_host!("metrics_udp");
    // fwdd carries the relay from beside its own binary.
    common::udp_relay();
    let fwdd = with_metrics_and(&host, "udp = true\n");
    // A host with udp = true has its series before any forward, at zero.
    let text = wait_sample(
        &host,
        "fwd_udp_sessions{host=\"box\"}",
        "the UDP series of a host with udp = true",
        |v| v == 0.0,
    );
    for series in [
        "fwd_udp_datagrams_total{host=\"box\",direction=\"in\"}",
        "fwd_udp_datagrams_total{host=\"box\",direction=\"out\"}",
        "fwd_udp_dropped_total{host=\"box\",where=\"runner\"}",
        "fwd_udp_dropped_total{host=\"box\",where=\"host\"}",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series}: {text}");
    }
    let id = host.udp_echo(20720);
    wait_sample(
        &host,
        "fwd_udp_forwards{host=\"box\",state=\"serving\"}",
        "the UDP forward serving",
        |v| v == 1.0,
    );
    let client = host.in_runner_ns(|| {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a client");
        s.connect(("127.0.0.1", 20720)).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        s
    });
    // Each trip sent again until its echo comes (the relay may lose one
    // while it starts); every send and every echo is counted.
    let mut sent = 0;
    let mut buf = [0u8; 64];
    for i in 0..20 {
        let msg = format!("trip {i}");
        let deadline = std::time::Instant::now() + T;
        loop {
            assert!(std::time::Instant::now() < deadline, "no echo of {msg}");
            client.send(msg.as_bytes()).expect("send");
            sent += 1;
            if client
                .recv(&mut buf)
                .is_ok_and(|n| &buf[..n] == msg.as_bytes())
            {
                break;
            }
        }
    }
    let text = wait_sample(
        &host,
        "fwd_udp_datagrams_total{host=\"box\",direction=\"out\"}",
        "the echoes counted",
        |v| v >= 20.0,
    );
    let received = sample(
        &text,
        "fwd_udp_datagrams_total{host=\"box\",direction=\"in\"}",
    )
    .expect("datagrams in");
    assert!(
        (20.0..=f64::from(sent)).contains(&received),
        "{sent} sent: {text}"
    );
    assert_eq!(
        sample(&text, "fwd_udp_sessions{host=\"box\"}"),
        Some(1.0),
        "one client, one session: {text}"
    );
    // The same count as status's (read after it: never less, never more
    // than was sent).
    let st = fwdd
        .status()
        .and_then(|s| s.udp.into_iter().find(|u| u.local_port == 20720))
        .expect("the UDP forward in status");
    assert!(
        (received..=f64::from(sent)).contains(&(st.datagrams_in as f64)),
        "{st:?}: {text}"
    );
    for labels in label_names(&text, "fwd_udp_") {
        assert!(
            labels
                .iter()
                .all(|k| ["host", "state", "direction", "where"].contains(k)),
            "a UDP series labelled by more than its host: {labels:?} in {text}"
        );
    }
    // The container removed: the forward goes, its datagrams stay counted.
    host.sandbox().docker_ok(&["rm", "-f", id.trim()]);
    let deadline = std::time::Instant::now() + T;
    let text = loop {
        let (_, text) = get(&host, "/metrics");
        if sample(&text, "fwd_udp_forwards{host=\"box\",state=\"serving\"}").is_none() {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the forward never went: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        sample(&text, "fwd_udp_sessions{host=\"box\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "fwd_udp_datagrams_total{host=\"box\",direction=\"in\"}"
        )
        .is_some_and(|v| v >= received),
        "a counter went back with its forward: {text}"
    );
    assert!(
        sample(
            &text,
            "fwd_udp_datagrams_total{host=\"box\",direction=\"out\"}"
        )
        .is_some_and(|v| v >= 20.0),
        "{text}"
    );
}

/// Debian's Prometheus, scraping fwdd every second from the runner's
/// namespace; `query` asks its HTTP API for one instant value.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(host: &TestHost, port: u16) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: fwd\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{METRICS_PORT}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let child = host
            .runner_command("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .expect("start prometheus (apt-get install prometheus)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of `expr` now, if it has exactly one sample.
    fn query(&self, host: &TestHost, expr: &str) -> Option<f64> {
        let enc: String = expr
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (_, body) = http_get(host, self.port, &format!("/api/v1/query?query={enc}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    fn wait(&self, host: &TestHost, expr: &str, ok: impl Fn(f64) -> bool) {
        let deadline = std::time::Instant::now() + T;
        while !self.query(host, expr).is_some_and(&ok) {
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus never saw {expr} as wanted (last: {:?})",
                self.query(host, expr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_the_series_as_they_change() {
    let host = sandbox_host!("metrics_prometheus");
    let fwdd = with_metrics(&host);
    let prom = Prometheus::start(&host, 9090);
    prom.wait(&host, "up{job=\"fwd\"}", |v| v == 1.0);
    prom.wait(&host, "fwd_host_up{host=\"box\"}", |v| v == 1.0);
    prom.wait(&host, "count(fwd_build_info)", |v| v == 1.0);

    host.httpd(&["20710:8080"]);
    fwdd.wait_forward_state(20710, ForwardState::Active);
    for _ in 0..2 {
        assert_eq!(fwdd.wait_http(20710), "hello\n");
    }
    prom.wait(&host, "fwd_connections_total{host=\"box\"}", |v| v >= 2.0);
    prom.wait(
        &host,
        "histogram_quantile(0.5, rate(fwd_handoff_seconds_bucket{host=\"box\"}[1m]))",
        |v| v > 0.0 && v < 1.0,
    );

    let master = fwdd.master_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the master");
    prom.wait(&host, "sum(fwd_host_reconnects_total{host=\"box\"})", |v| {
        v == 1.0
    });
}
