//! `fwdctl status` for people, and the health verdict behind the exit code.
//!
//! Every string of a status comes from the daemon, and most from further away
//! (container names and labels, ssh and Docker messages): each passes through
//! [`for_terminal`] before it is shown, so none can add a line or an escape sequence.

use fwd_proto::term::for_terminal;
use fwd_proto::{ForwardState, ForwardStatus, HealthState, HostStatus, Status};
use std::fmt::Write as _;

/// Exit code: everything healthy.
pub const EXIT_HEALTHY: i32 = 0;
/// Exit code: degraded (a host's master not connected, its event stream down
/// while connected, or a forward in conflict).
pub const EXIT_DEGRADED: i32 = 1;
/// Exit code: the daemon could not be reached or answered with an error.
pub const EXIT_UNREACHABLE: i32 = 2;
/// Exit code: bad command line.
pub const EXIT_USAGE: i32 = 64;

/// Why the status is degraded (the daemon's verdict); empty when healthy.
/// Safe to print.
pub fn problems(st: &Status) -> Vec<String> {
    st.health()
        .reasons
        .iter()
        .map(|r| for_terminal(r).into_owned())
        .collect()
}

/// 0 healthy, 1 degraded.
pub fn exit_code(st: &Status) -> i32 {
    match st.health().state {
        HealthState::Healthy => EXIT_HEALTHY,
        HealthState::Degraded => EXIT_DEGRADED,
    }
}

/// A duration in milliseconds, coarsely: `42s`, `3m12s`, `5h07m`, `2d03h`.
pub fn fmt_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How long ago `at_ms` was, e.g. `3m12s ago` (clock skew into the future shows `0s ago`).
fn ago(now_ms: u64, at_ms: u64) -> String {
    format!("{} ago", fmt_duration(now_ms.saturating_sub(at_ms)))
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn render_host(out: &mut String, h: &HostStatus, now_ms: u64) {
    let m = &h.master;
    let _ = writeln!(
        out,
        "host {} ({})",
        for_terminal(&h.name),
        for_terminal(&h.destination)
    );
    let mut master = format!("{}", m.state);
    if let Some(pid) = m.pid {
        let _ = write!(master, ", pid {pid}");
    }
    let _ = write!(master, ", since {}", ago(now_ms, m.since_ms));
    if let Some(next) = m.next_retry_ms {
        let _ = write!(
            master,
            ", next retry in {}",
            fmt_duration(next.saturating_sub(now_ms))
        );
    }
    let rtt = match m.last_probe_rtt_ms {
        Some(ms) => format!("{ms:.1} ms"),
        None => "-".into(),
    };
    // An error from before the connection there is now is history: said
    // as such, so it is not read as the trouble of the moment.
    let recovered = m.state == fwd_proto::MasterState::Connected;
    let last_error = match &m.last_error {
        Some(e) => format!(
            "{}/{}, {}{}: {}",
            e.class,
            e.kind,
            ago(now_ms, e.at_ms),
            if recovered && e.at_ms <= m.since_ms {
                " (before the current connection)"
            } else {
                ""
            },
            e.message
        ),
        None => "none".into(),
    };
    let ev = &h.events;
    let last_event = match ev.last_event_ms {
        Some(t) => format!("last {}", ago(now_ms, t)),
        None => "no event yet".into(),
    };
    let rows = [
        ("master", master),
        ("probe rtt", rtt),
        (
            "reconnects",
            format!(
                "{}, consecutive failures {}",
                m.reconnects, m.consecutive_failures
            ),
        ),
        ("last error", last_error),
        (
            "events",
            format!(
                "{}, {} received, {}, {}",
                ev.state,
                ev.events_received,
                last_event,
                plural(ev.restarts, "restart", "restarts")
            ),
        ),
        (
            "docker",
            h.docker_version.clone().unwrap_or_else(|| "unknown".into()),
        ),
    ];
    // The error message and docker version are remote text.
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<11} {}", for_terminal(&value));
    }
    if let Some(e) = &h.engine {
        let local = e
            .sockets
            .iter()
            .find(|p| p.ends_with(&format!("/docker-{}.sock", h.name)))
            .or_else(|| e.sockets.first());
        let mut line = match local {
            Some(p) => format!("unix://{p}"),
            None => "no local socket".into(),
        };
        if let Some(r) = &e.remote_socket {
            let _ = write!(line, " -> {r}");
        }
        match (&e.found_by, e.rootless) {
            (Some(how), Some(true)) => {
                let _ = write!(line, " [{how}; rootless]");
            }
            (Some(how), _) => {
                let _ = write!(line, " [{how}]");
            }
            (None, Some(true)) => line.push_str(" [rootless]"),
            (None, _) => {}
        }
        if let Some(route) = &e.route {
            let _ = write!(line, " ({route})");
        }
        let _ = write!(
            line,
            ", {} open, {} total",
            e.connections_open, e.connections_total
        );
        if e.connections_refused > 0 {
            let _ = write!(line, ", {} over the cap", e.connections_refused);
        }
        if let Some(why) = &e.reason {
            let _ = write!(line, "; {why}");
        }
        let _ = writeln!(out, "  {:<11} {}", "engine", for_terminal(&line));
    }
}

fn container_label(f: &ForwardStatus) -> String {
    match &f.compose_project {
        Some(p) => format!("{p}/{}", f.container_name),
        None => f.container_name.clone(),
    }
}

/// Renders rows as left-aligned columns separated by two spaces, without trailing blanks.
/// Cells are made safe for a terminal first (and measured as shown).
fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| for_terminal(c).into_owned()).collect())
        .collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<w$}", w = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The open-files budget, when anything met it: what fwdd holds, the caps,
/// and each container over its port cap.
fn render_limits(out: &mut String, st: &Status) {
    let Some(l) = &st.limits else { return };
    let refused = st.forwards.iter().any(|f| f.connections_refused > 0)
        || st.exposed.iter().any(|e| e.connections_refused > 0)
        || st
            .hosts
            .iter()
            .any(|h| h.engine.as_ref().is_some_and(|e| e.connections_refused > 0));
    if l.capped.is_empty() && l.accept_failures == 0 && l.forwards_left_out == 0 && !refused {
        return;
    }
    let open = l
        .open_files
        .map_or_else(|| "?".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "\nLIMITS  {open} of {} open files; caps: {} ports per container, {} forwards in all, {} connections per forward, {} per exposure, {} engine clients per host",
        l.open_files_limit,
        l.forwards_per_container,
        l.forwards_total,
        l.tunnels_per_forward,
        l.tunnels_per_exposure,
        l.engine_clients
    );
    if l.accept_failures > 0 {
        let _ = writeln!(out, "  {} failed accepts", l.accept_failures);
    }
    if l.forwards_left_out > 0 {
        let _ = writeln!(
            out,
            "  {} claimed ports not forwarded: {} forwards in all is the cap (max_forwards_total; listed as conflicts)",
            l.forwards_left_out, l.forwards_total
        );
    }
    for c in &l.capped {
        let line = format!(
            "container {} on host {} publishes {} ports: the lowest {} are forwarded (max_forwards_per_container)",
            c.container_name, c.host, c.published, c.forwarded
        );
        let _ = writeln!(out, "  {}", for_terminal(&line));
    }
}

/// The whole human-readable status. `now_ms` is the current Unix time in ms (a parameter
/// so the output is testable). Layout: a summary line, a block per host, then the
/// forwards sorted by local port. The HOST column appears only with more than one host.
pub fn render_status(st: &Status, now_ms: u64) -> String {
    let mut out = String::new();
    let problems = problems(st);
    let verdict = if problems.is_empty() {
        "healthy".to_string()
    } else {
        format!("degraded: {}", problems.join("; "))
    };
    // After an upgrade the process is older than the binary it runs.
    let image = match st.daemon.image_started_at_ms {
        Some(at) if st.daemon.upgrades > 0 => format!(
            " (this binary for {}, {} upgrade{})",
            fmt_duration(now_ms.saturating_sub(at)),
            st.daemon.upgrades,
            if st.daemon.upgrades == 1 { "" } else { "s" }
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "fwdd {} (pid {}), up {}{image}, {}",
        for_terminal(&st.daemon.version),
        st.daemon.pid,
        fmt_duration(now_ms.saturating_sub(st.daemon.started_at_ms)),
        verdict
    );
    if st.hosts.is_empty() {
        out.push_str("\nno hosts configured\n");
    }
    for h in &st.hosts {
        out.push('\n');
        render_host(&mut out, h, now_ms);
    }
    if !st.exposed.is_empty() {
        out.push_str(
            "\nEXPOSED (runner ports the hosts' containers reach at host.docker.internal)\n",
        );
        let mut rows = vec![["HOST", "REMOTE", "RUNNER", "STATE", "CONN", "REASON"]
            .map(String::from)
            .to_vec()];
        for e in &st.exposed {
            let remote = if e.binds.is_empty() {
                format!(":{}", e.remote_port)
            } else {
                e.binds.join(",")
            };
            let mut conn = match e.connections_failed {
                0 => format!("{}/{}", e.connections_open, e.connections_total),
                n => format!(
                    "{}/{} ({n} refused here)",
                    e.connections_open, e.connections_total
                ),
            };
            if e.connections_refused > 0 {
                let _ = write!(conn, " ({} over the cap)", e.connections_refused);
            }
            let mut reason = e.reason.clone().unwrap_or_default();
            if e.state == "failed" {
                match e.next_retry_ms {
                    Some(at) => {
                        let _ = write!(
                            reason,
                            " (next try in {})",
                            fmt_duration(at.saturating_sub(now_ms))
                        );
                    }
                    None => {
                        let _ = write!(
                            reason,
                            " (next try with the next ssh connection: fwdctl reconnect {})",
                            e.host
                        );
                    }
                }
            }
            rows.push(vec![
                e.host.clone(),
                remote,
                e.runner.clone(),
                e.state.clone(),
                conn,
                reason,
            ]);
        }
        out.push_str(&table(&rows));
    }
    if !st.names.is_empty() {
        out.push_str("\nNAMES (containers by name, each on an address of its own)\n");
        out.push_str(&crate::names::render(&st.names));
    }
    if !st.udp.is_empty() {
        out.push_str("\nUDP (published UDP ports, through a relay on the host)\n");
        let mut rows = vec![[
            "HOST",
            "LOCAL",
            "REMOTE",
            "CONTAINER",
            "STATE",
            "SESSIONS",
            "IN/OUT",
            "DROPPED",
            "REASON",
        ]
        .map(String::from)
        .to_vec()];
        for u in &st.udp {
            rows.push(vec![
                u.host.clone(),
                u.local_port.to_string(),
                u.remote.clone(),
                u.container_name.clone(),
                u.state.clone(),
                u.sessions.to_string(),
                format!("{}/{}", u.datagrams_in, u.datagrams_out),
                format!("{} (host {})", u.dropped, u.dropped_on_host),
                u.reason.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    render_limits(&mut out, st);
    out.push('\n');
    if st.forwards.is_empty() {
        out.push_str("no forwards\n");
        if !st.exposed.is_empty() {
            out.push_str(CONN_LEGEND);
        }
        return out;
    }
    let multi_host =
        st.hosts.len() > 1 || st.forwards.iter().any(|f| f.host != st.forwards[0].host);
    let mut fwds: Vec<&ForwardStatus> = st.forwards.iter().collect();
    fwds.sort_by(|a, b| {
        (a.local_port, &a.host, &a.container_name, &a.container_port).cmp(&(
            b.local_port,
            &b.host,
            &b.container_name,
            &b.container_port,
        ))
    });
    let mut rows = Vec::with_capacity(fwds.len() + 1);
    let mut header: Vec<String> = Vec::new();
    if multi_host {
        header.push("HOST".into());
    }
    header.extend(
        [
            "LOCAL",
            "REMOTE",
            "ROUTE",
            "CONTAINER",
            "PORT",
            "STATE",
            "SINCE",
            "CONN",
            "REASON",
        ]
        .map(String::from),
    );
    rows.push(header);
    for f in fwds {
        let mut row = Vec::new();
        if multi_host {
            row.push(f.host.clone());
        }
        let local = if f.local_addrs.is_empty() {
            format!(":{}", f.local_port)
        } else {
            f.local_addrs.join(",")
        };
        // A direct route that failed is news even on an active forward.
        let fell_back = f.route.as_ref().filter(|r| r.fell_back);
        let reason = match (f.state, &f.reason, fell_back) {
            (ForwardState::Active, _, Some(r)) => r.why.clone(),
            (ForwardState::Active, _, None) | (_, None, _) => String::new(),
            (_, Some(r), _) => r.clone(),
        };
        let (remote, route) = match &f.route {
            Some(r) => (r.to.clone(), r.kind.to_string()),
            None => (f.remote.clone(), String::new()),
        };
        row.extend([
            local,
            remote,
            route,
            container_label(f),
            f.container_port.clone(),
            f.state.to_string(),
            ago(now_ms, f.since_ms),
            match f.connections_refused {
                0 => format!("{}/{}", f.connections_open, f.connections_total),
                n => format!(
                    "{}/{} ({n} over the cap)",
                    f.connections_open, f.connections_total
                ),
            },
            reason,
        ]);
        rows.push(row);
    }
    out.push_str(&table(&rows));
    out.push_str(CONN_LEGEND);
    out
}

/// What the CONN columns count: `0/3` reads as a fault to someone who
/// has not seen it (nothing open is the normal state between clients).
const CONN_LEGEND: &str =
    "\nCONN: connections open now / accepted in all since the forward (or exposure) began\n";

#[cfg(test)]
mod tests {
    use super::*;
    use fwd_proto::{MasterState, StreamState};

    const GOLDEN: &str = include_str!("../../fwd-proto/tests/golden/status.json");

    /// The golden status without the daemon's verdict: the tests change
    /// fields and the verdict must follow them (as for an older daemon).
    fn sample() -> Status {
        let mut st: Status = serde_json::from_str(GOLDEN).unwrap();
        assert!(
            st.health.take().is_some(),
            "the golden status has a verdict"
        );
        st
    }

    const NOW: u64 = 1_700_000_200_000;

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(0), "0s");
        assert_eq!(fmt_duration(59_999), "59s");
        assert_eq!(fmt_duration(60_000), "1m00s");
        assert_eq!(fmt_duration(192_000), "3m12s");
        assert_eq!(fmt_duration(3_600_000 * 5 + 7 * 60_000), "5h07m");
        assert_eq!(fmt_duration(86_400_000 * 2 + 3_600_000 * 3), "2d03h");
        assert_eq!(ago(1000, 5000), "0s ago");
    }

    #[test]
    fn human_output_is_stable() {
        let expected = "\
fwdd 0.1.0 (pid 4242), up 3m20s, degraded: host staging is backoff; 1 forward in conflict; host prod: exposed port 18081 failed (refused)

host prod (deploy@docker1.example.com)
  master      connected, pid 4300, since 1m40s ago
  probe rtt   1.8 ms
  reconnects  2, consecutive failures 0
  last error  transient/connection_refused, 1m50s ago (before the current connection): ssh: connect to host docker1.example.com port 22: Connection refused
  events      streaming, 1234 received, last 10s ago, 1 restart
  docker      27.3.1
  engine      unix:///run/user/1000/fwd/docker-prod.sock -> /var/run/docker.sock [docker context] (stream_local), 1 open, 42 total

host staging (ci@docker2.example.com)
  master      backoff, since 50s ago, next retry in 10s
  probe rtt   -
  reconnects  0, consecutive failures 3
  last error  permanent/auth_failed, 50s ago: ci@docker2.example.com: Permission denied (publickey)
  events      down, 0 received, no event yet, 0 restarts
  docker      unknown

EXPOSED (runner ports the hosts' containers reach at host.docker.internal)
HOST     REMOTE            RUNNER           STATE    CONN  REASON
prod     172.17.0.1:18080  127.0.0.1:18080  active   1/5
staging  :3000             127.0.0.1:3000   waiting  0/0   the host has no usable ssh master
prod     :18081            127.0.0.1:18081  failed   0/0   sshd refused the remote forward: remote port forwarding failed for listen port 18081 (next try in 30s)

LIMITS  57 of 20000 open files; caps: 2468 ports per container, 4936 forwards in all, 1645 connections per forward, 2468 per exposure, 2468 engine clients per host
  container ports on host prod publishes 3000 ports: the lowest 2468 are forwarded (max_forwards_per_container)

HOST     LOCAL                      REMOTE          ROUTE      CONTAINER          PORT      STATE        SINCE      CONN                   REASON
prod     :5353                      127.0.0.1:5353             dns                53/udp    unsupported  1m00s ago  0/0                    UDP ports are not forwarded
prod     127.0.0.1:5432,[::1]:5432  127.0.0.1:5432  published  shop/shop-db-1     5432/tcp  active       1m30s ago  2/17                   the direct route to 172.18.0.3:5432 failed: administratively prohibited: open failed
prod     :6379                      127.0.0.1:6379  published  shop/shop-cache-1  6379/tcp  conflict     1m10s ago  0/0                    127.0.0.1:6379 is in use by another process
prod     127.0.0.1:8080             172.17.0.2:80   direct     web                80/tcp    active       1m20s ago  0/3 (12 over the cap)
staging  :9000                      127.0.0.1:9000  published  minio              9000/tcp  pending      50s ago    0/0                    waiting for the ssh master

CONN: connections open now / accepted in all since the forward (or exposure) began
";
        let actual = render_status(&sample(), NOW);
        // Compare line by line for a readable failure.
        for (i, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
            assert_eq!(a, e, "line {}", i + 1);
        }
        assert_eq!(actual, expected);
    }

    #[test]
    fn a_failure_only_a_new_connection_mends_says_the_reconnect_to_run() {
        let mut st = sample();
        let e = st
            .exposed
            .iter_mut()
            .find(|e| e.state == "failed")
            .expect("a failed exposure");
        e.reason_kind = Some("gateway_ports".into());
        e.next_retry_ms = None;
        let text = render_status(&st, NOW);
        assert!(
            text.contains("(next try with the next ssh connection: fwdctl reconnect prod)"),
            "{text}"
        );
        // A master not connected: its last error is the trouble of the moment.
        st.hosts[0].master.state = MasterState::Backoff;
        let text = render_status(&st, NOW);
        assert!(!text.contains("before the current connection"), "{text}");
    }

    #[test]
    fn healthy_single_host() {
        let mut st = sample();
        st.hosts.truncate(1);
        st.forwards
            .retain(|f| f.host == "prod" && f.state == ForwardState::Active);
        st.exposed.retain(|e| e.state != "failed");
        assert_eq!(problems(&st), Vec::<String>::new());
        assert_eq!(exit_code(&st), EXIT_HEALTHY);
        let text = render_status(&st, NOW);
        assert!(text.starts_with("fwdd 0.1.0 (pid 4242), up 3m20s, healthy\n"));
        // Single host: no HOST column; sorted by local port.
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("LOCAL"))
            .collect();
        assert_eq!(
            table,
            [
                "LOCAL                      REMOTE          ROUTE      CONTAINER       PORT      STATE   SINCE      CONN                   REASON",
                "127.0.0.1:5432,[::1]:5432  127.0.0.1:5432  published  shop/shop-db-1  5432/tcp  active  1m30s ago  2/17                   the direct route to 172.18.0.3:5432 failed: administratively prohibited: open failed",
                "127.0.0.1:8080             172.17.0.2:80   direct     web             80/tcp    active  1m20s ago  0/3 (12 over the cap)",
                "",
                "CONN: connections open now / accepted in all since the forward (or exposure) began",
            ]
        );
    }

    #[test]
    fn empty_status() {
        let mut st = sample();
        st.hosts.clear();
        st.forwards.clear();
        st.exposed.clear();
        st.limits = None;
        assert_eq!(exit_code(&st), EXIT_HEALTHY);
        assert_eq!(
            render_status(&st, NOW),
            "fwdd 0.1.0 (pid 4242), up 3m20s, healthy\n\nno hosts configured\n\nno forwards\n"
        );
    }

    /// Every string of a status as a remote host (or a compromised daemon) could set it:
    /// line breaks, colour and cursor escapes, C1 controls, bidi overrides.
    fn hostile(mut st: Status) -> Status {
        let evil = |s: &str| format!("{s}\n\u{1b}[31mFAKE\r\t\u{7}\u{7f}\u{9b}2J\u{202e}\u{2066}");
        st.daemon.version = evil(&st.daemon.version);
        for h in &mut st.hosts {
            h.name = evil(&h.name);
            h.destination = evil(&h.destination);
            if let Some(e) = &mut h.master.last_error {
                e.class = evil(&e.class);
                e.kind = evil(&e.kind);
                e.message = evil(&e.message);
            }
            h.docker_version = Some(evil("27.3.1"));
        }
        for f in &mut st.forwards {
            f.host = evil(&f.host);
            f.local_addrs = f.local_addrs.iter().map(|a| evil(a)).collect();
            f.remote = evil(&f.remote);
            if let Some(r) = &mut f.route {
                r.to = evil(&r.to);
                r.why = evil(&r.why);
            }
            f.container_name = evil(&f.container_name);
            f.compose_project = Some(evil("x"));
            f.container_port = evil(&f.container_port);
            f.reason = Some(evil("why"));
        }
        for e in &mut st.exposed {
            e.host = evil(&e.host);
            e.runner = evil(&e.runner);
            e.binds = vec![evil("172.17.0.1:1")];
            e.state = evil(&e.state);
            e.reason = Some(evil("why"));
        }
        st
    }

    fn unsafe_chars(text: &str) -> Vec<char> {
        text.chars()
            .filter(|&c| {
                (c.is_control() && c != '\n')
                    || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            })
            .collect()
    }

    #[test]
    fn remote_strings_cannot_forge_lines_or_escapes() {
        let mut benign = sample();
        // Non-active forwards show their reason; give the benign one the same shape.
        for f in &mut benign.forwards {
            f.compose_project = Some("x".into());
            f.reason = Some("why".into());
        }
        for e in &mut benign.exposed {
            e.reason = Some("why".into());
        }
        let plain = render_status(&benign, NOW);
        let text = render_status(&hostile(sample()), NOW);
        assert_eq!(unsafe_chars(&text), Vec::<char>::new(), "{text}");
        assert_eq!(text.lines().count(), plain.lines().count(), "{text}");
        // What was sent stays visible, as escapes.
        assert!(
            text.contains("x\\n\\x1b[31mFAKE\\r\\t\\x07\\x7f\\u{9b}2J\\u{202e}\\u{2066}/web"),
            "{text}"
        );
        // The verdict line names the host, escaped.
        assert!(text
            .lines()
            .next()
            .is_some_and(|l| l.contains("host staging\\n")));
        // One table line per forward.
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !(l.starts_with("HOST") && l.contains("LOCAL")))
            .take_while(|l| !l.is_empty())
            .collect();
        assert_eq!(rows.len(), 1 + benign.forwards.len(), "{text}");
    }

    #[test]
    fn exit_codes() {
        let base = {
            let mut st = sample();
            st.hosts.truncate(1);
            st.forwards.clear();
            st.exposed.retain(|e| e.state != "failed");
            st
        };
        assert_eq!(exit_code(&base), EXIT_HEALTHY);
        for state in [
            MasterState::Connecting,
            MasterState::Backoff,
            MasterState::Stopped,
        ] {
            let mut st = base.clone();
            st.hosts[0].master.state = state;
            assert_eq!(exit_code(&st), EXIT_DEGRADED, "{state}");
        }
        for (state, code) in [
            (ForwardState::Active, EXIT_HEALTHY),
            (ForwardState::Pending, EXIT_HEALTHY),
            (ForwardState::Unsupported, EXIT_HEALTHY),
            (ForwardState::Conflict, EXIT_DEGRADED),
        ] {
            let mut st = base.clone();
            let mut f = sample().forwards[0].clone();
            f.state = state;
            st.forwards.push(f);
            assert_eq!(exit_code(&st), code, "{state}");
        }
        // A connected master whose event stream is down: Docker cannot be
        // followed, so forwards drift. Resyncing (every connect) is fine.
        let mut st = base.clone();
        st.hosts[0].events.state = StreamState::Down;
        assert_eq!(exit_code(&st), EXIT_DEGRADED);
        assert!(
            problems(&st)[0].contains("event stream down"),
            "{:?}",
            problems(&st)
        );
        st.hosts[0].events.state = StreamState::Resyncing;
        assert_eq!(exit_code(&st), EXIT_HEALTHY);
        // The full sample: one host in backoff, one conflict, one failed exposure.
        assert_eq!(
            problems(&sample()),
            [
                "host staging is backoff",
                "1 forward in conflict",
                "host prod: exposed port 18081 failed (refused)"
            ]
        );
        assert_eq!(exit_code(&sample()), EXIT_DEGRADED);
    }
}
