//! `fwdctl watch`: follow the daemon's state changes.

use anyhow::{anyhow, bail, Context, Result};
use fwd_proto::{decode_response, Event, ForwardStatus, MasterState, Request, Response};
use std::io::Write;
use std::path::Path;

use crate::human;
use fwd_client::LineStream;
use fwd_proto::term::for_terminal;

/// `HH:MM:SS` in local time.
pub fn clock(at_ms: u64) -> String {
    let secs = (at_ms / 1000) as nix::libc::time_t;
    // SAFETY: localtime_r only writes the `tm` we pass; an all-zero `tm` is valid.
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !nix::libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        let s = at_ms / 1000 % 86_400;
        return format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

fn fwd_label(f: &ForwardStatus) -> String {
    let name = match &f.compose_project {
        Some(p) => format!("{p}/{}", f.container_name),
        None => f.container_name.clone(),
    };
    format!("localhost:{} → {name} ({})", f.local_port, f.host)
}

fn with_reason(s: &mut String, reason: &Option<String>) {
    if let Some(r) = reason {
        s.push_str(": ");
        s.push_str(r);
    }
}

/// One line for people (without the trailing newline). Host and container names,
/// reasons and errors are remote text: the line is made safe for a terminal as a
/// whole, so none of them can break it or slip in an escape sequence.
pub fn render_event(e: &Event) -> String {
    let line = event_line(e);
    match for_terminal(&line) {
        std::borrow::Cow::Borrowed(_) => line,
        std::borrow::Cow::Owned(safe) => safe,
    }
}

fn event_line(e: &Event) -> String {
    let t = clock(e.at_ms());
    match e {
        Event::Snapshot { status, .. } => {
            let connected = status
                .hosts
                .iter()
                .filter(|h| h.master.state == MasterState::Connected)
                .count();
            let active = status
                .forwards
                .iter()
                .filter(|f| f.state == fwd_proto::ForwardState::Active)
                .count();
            let problems = human::problems(status);
            format!(
                "{t} watching fwdd {} (pid {}): {} host{} ({connected} connected), {} forward{} ({active} active){}",
                status.daemon.version,
                status.daemon.pid,
                status.hosts.len(),
                if status.hosts.len() == 1 { "" } else { "s" },
                status.forwards.len(),
                if status.forwards.len() == 1 { "" } else { "s" },
                if problems.is_empty() {
                    String::new()
                } else {
                    format!("; degraded: {}", problems.join(", "))
                }
            )
        }
        Event::ForwardAdded { forward, .. } => {
            let mut s = format!("{t} forward added {}", fwd_label(forward));
            if forward.state != fwd_proto::ForwardState::Active {
                s.push_str(&format!(", {}", forward.state));
                with_reason(&mut s, &forward.reason);
            }
            s
        }
        Event::ForwardRemoved { forward, .. } => {
            format!("{t} forward removed {}", fwd_label(forward))
        }
        Event::ForwardStateChanged {
            previous_state,
            forward,
            ..
        } => {
            let mut s = format!(
                "{t} forward {} {previous_state} → {}",
                fwd_label(forward),
                forward.state
            );
            with_reason(&mut s, &forward.reason);
            s
        }
        Event::ForwardRouteChanged {
            previous_route,
            forward,
            ..
        } => {
            let kind = |r: &Option<fwd_proto::ForwardRoute>| {
                r.as_ref().map_or("unknown", |r| r.kind.as_str())
            };
            let mut s = format!(
                "{t} forward {} route {} → {}",
                fwd_label(forward),
                kind(previous_route),
                kind(&forward.route)
            );
            if let Some(r) = &forward.route {
                s.push_str(&format!(" {}: {}", r.to, r.why));
            }
            s
        }
        Event::MasterStateChanged {
            host,
            previous_state,
            master,
            ..
        } => {
            let mut s = match previous_state {
                Some(p) if *p != master.state => {
                    format!("{t} host {host} master {p} → {}", master.state)
                }
                Some(_) => format!("{t} host {host} master replaced, {}", master.state),
                None => format!("{t} host {host} master {}", master.state),
            };
            if let Some(pid) = master.pid {
                s.push_str(&format!(" (pid {pid})"));
            }
            if master.state != MasterState::Connected {
                if let Some(e) = &master.last_error {
                    s.push_str(&format!(": {}/{}: {}", e.class, e.kind, e.message));
                }
            }
            s
        }
        Event::StreamStateChanged {
            host,
            previous_state,
            stream,
            ..
        } => {
            let change = match previous_state {
                Some(p) if *p != stream.state => format!("{p} → {}", stream.state),
                Some(_) => format!("restarted, {}", stream.state),
                None => stream.state.to_string(),
            };
            format!(
                "{t} host {host} events {change} (restarts {})",
                stream.restarts
            )
        }
    }
}

/// The `"event"` member of a response line, byte for byte.
#[derive(serde::Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    event: Option<&'a serde_json::value::RawValue>,
}

/// A kind this fwdctl does not know (from a newer daemon): say so briefly.
fn render_unknown(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let ev = v.get("event")?;
    let kind = ev.get("kind")?.as_str()?;
    let at = ev.get("at_ms").and_then(|a| a.as_u64()).unwrap_or(0);
    Some(format!("{} {}", clock(at), for_terminal(kind)))
}

/// Follows the daemon until it goes away (an error: exit 2). Ctrl-C ends the process
/// from the signal handler with exit 0.
pub fn run(socket: &Path, json: bool) -> Result<i32> {
    let mut conn = LineStream::open(socket, &Request::Watch)?;
    let mut first = true;
    let mut out = std::io::stdout().lock();
    loop {
        let Some(line) = conn.next_line()? else {
            bail!(
                "fwdd closed the watch connection (daemon stopped?) ({})",
                socket.display()
            );
        };
        let decoded = decode_response(&line);
        if let Ok(Response::Error { message, .. }) = &decoded {
            return Err(anyhow!("fwdd refused the request: {message}"));
        }
        if first {
            match &decoded {
                Ok(Response::Event(Event::Snapshot { .. })) => {}
                Ok(other) => return Err(fwd_client::unexpected_answer(other).into()),
                Err(e) => bail!("bad answer from fwdd ({}): {e}", socket.display()),
            }
            conn.no_read_timeout()?;
            first = false;
        }
        let text = if json {
            let raw: RawEvent = serde_json::from_slice(&line).context("bad answer from fwdd")?;
            match raw.event {
                Some(ev) => ev.get().to_string(),
                None => continue,
            }
        } else {
            match &decoded {
                Ok(Response::Event(e)) => render_event(e),
                _ => match render_unknown(&line) {
                    Some(s) => s,
                    None => continue,
                },
            }
        };
        let written = writeln!(out, "{text}").and_then(|()| out.flush());
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(0); // `fwdctl watch | head`: the reader is done
            }
            return Err(e).context("writing to stdout");
        }
    }
}

/// Makes SIGINT and SIGTERM end the process at once with exit status 0 (`watch` runs
/// until interrupted; being interrupted is its normal end).
pub fn exit_0_on_interrupt() {
    extern "C" fn on_signal(_: nix::libc::c_int) {
        // SAFETY: _exit is async-signal-safe; stdout is flushed after every line.
        unsafe { nix::libc::_exit(0) }
    }
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only calls _exit.
        let _ = unsafe { signal(sig, SigHandler::Handler(on_signal)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fwd_proto::{ErrorInfo, ForwardState, MasterStatus, StreamState, StreamStatus};

    fn fw() -> ForwardStatus {
        ForwardStatus {
            host: "ci-docker".into(),
            local_port: 5432,
            local_addrs: vec![],
            remote: "127.0.0.1:5432".into(),
            container_id: "a".repeat(64),
            container_name: "db".into(),
            compose_project: None,
            compose_service: None,
            container_port: "5432/tcp".into(),
            state: ForwardState::Active,
            reason: None,
            since_ms: 0,
            connections_open: 0,
            connections_total: 0,
            connections_refused: 0,
            route: None,
        }
    }

    fn strip_clock(s: String) -> String {
        assert_eq!(&s[2..3], ":", "{s}");
        s[9..].to_string()
    }

    #[test]
    fn human_lines() {
        assert_eq!(
            strip_clock(render_event(&Event::ForwardAdded {
                at_ms: 0,
                forward: fw()
            })),
            "forward added localhost:5432 → db (ci-docker)"
        );
        let mut f = fw();
        f.compose_project = Some("shop".into());
        assert_eq!(
            strip_clock(render_event(&Event::ForwardRemoved {
                at_ms: 0,
                forward: f.clone()
            })),
            "forward removed localhost:5432 → shop/db (ci-docker)"
        );
        f.state = ForwardState::Conflict;
        f.reason = Some("127.0.0.1:5432 is in use by another process".into());
        assert_eq!(
            strip_clock(render_event(&Event::ForwardStateChanged {
                at_ms: 0,
                previous_state: ForwardState::Active,
                forward: f
            })),
            "forward localhost:5432 → shop/db (ci-docker) active → conflict: 127.0.0.1:5432 is in use by another process"
        );
        let mut routed = fw();
        routed.route = Some(fwd_proto::ForwardRoute {
            kind: fwd_proto::RouteKind::Published,
            to: "127.0.0.1:5432".into(),
            why: "the direct route to 172.17.0.2:5432 failed: administratively prohibited: open failed".into(),
            fell_back: true,
        });
        assert_eq!(
            strip_clock(render_event(&Event::ForwardRouteChanged {
                at_ms: 0,
                previous_route: None,
                forward: routed
            })),
            "forward localhost:5432 → db (ci-docker) route unknown → published 127.0.0.1:5432: the direct route to 172.17.0.2:5432 failed: administratively prohibited: open failed"
        );
        let mut m = MasterStatus {
            state: MasterState::Backoff,
            pid: None,
            since_ms: 0,
            last_probe_rtt_ms: None,
            reconnects: 0,
            consecutive_failures: 1,
            last_error: Some(ErrorInfo {
                class: "transient".into(),
                kind: "connection_refused".into(),
                message: "Connection refused".into(),
                at_ms: 0,
            }),
            next_retry_ms: None,
            network_lost_since_ms: None,
        };
        assert_eq!(
            strip_clock(render_event(&Event::MasterStateChanged {
                at_ms: 0,
                host: "ci-docker".into(),
                previous_state: Some(MasterState::Connected),
                master: m.clone()
            })),
            "host ci-docker master connected → backoff: transient/connection_refused: Connection refused"
        );
        m.state = MasterState::Connected;
        m.pid = Some(77);
        assert_eq!(
            strip_clock(render_event(&Event::MasterStateChanged {
                at_ms: 0,
                host: "ci-docker".into(),
                previous_state: Some(MasterState::Connected),
                master: m
            })),
            "host ci-docker master replaced, connected (pid 77)"
        );
        assert_eq!(
            strip_clock(render_event(&Event::StreamStateChanged {
                at_ms: 0,
                host: "ci-docker".into(),
                previous_state: Some(StreamState::Down),
                stream: StreamStatus {
                    state: StreamState::Resyncing,
                    events_received: 0,
                    last_event_ms: None,
                    restarts: 2
                }
            })),
            "host ci-docker events down → resyncing (restarts 2)"
        );
    }

    #[test]
    fn remote_strings_stay_on_one_visible_line() {
        let mut f = fw();
        f.container_name = "db\n\u{1b}[2J".into();
        f.compose_project = Some("x\r\u{202e}".into());
        f.host = "h\u{9b}".into();
        f.state = ForwardState::Conflict;
        f.reason = Some("in use\n\u{7}".into());
        assert_eq!(
            strip_clock(render_event(&Event::ForwardAdded {
                at_ms: 0,
                forward: f
            })),
            "forward added localhost:5432 → x\\r\\u{202e}/db\\n\\x1b[2J (h\\u{9b}), conflict: in use\\n\\x07"
        );
        let line = render_event(&Event::MasterStateChanged {
            at_ms: 0,
            host: "ci\ndocker".into(),
            previous_state: None,
            master: MasterStatus {
                state: MasterState::Backoff,
                pid: None,
                since_ms: 0,
                last_probe_rtt_ms: None,
                reconnects: 0,
                consecutive_failures: 1,
                last_error: Some(ErrorInfo {
                    class: "transient".into(),
                    kind: "lost\t".into(),
                    message: "Connection closed\r\n\u{1b}[1A\u{1b}[2Kall good".into(),
                    at_ms: 0,
                }),
                next_retry_ms: None,
                network_lost_since_ms: None,
            },
        });
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.ends_with("\\r\\n\\x1b[1A\\x1b[2Kall good"), "{line}");
        let s = render_unknown(br#"{"v":1,"ok":true,"event":{"kind":"x\u001b[31m\n","at_ms":0}}"#)
            .expect("a kind");
        assert!(s.ends_with(" x\\x1b[31m\\n"), "{s}");
    }

    #[test]
    fn unknown_kinds_are_named() {
        let s =
            render_unknown(br#"{"v":1,"ok":true,"event":{"kind":"future","at_ms":0}}"#).unwrap();
        assert!(s.ends_with(" future"), "{s}");
    }
}
