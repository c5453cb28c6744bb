//! `fwdctl expose`: the request, then the verdict.
//!
//! fwdd answers `expose` as soon as it wants the exposure; registering it
//! with sshd and checking it end to end through the master takes a moment
//! more, and is where it fails (sshd's `GatewayPorts no`). So fwdctl follows
//! the exposure in `status` until it is `active` or `failed`, or the wait
//! runs out, and says what it came to. Waiting here rather than in fwdd
//! keeps the protocol as it was: an `expose` answer still comes at once,
//! for every client, and any fwdd that knows `expose` shows `exposed` in its
//! status.

use std::path::Path;
use std::time::{Duration, Instant};

use fwd_proto::{ExposeChange, ExposedStatus, Status};

/// How often fwdd is asked while waiting (as `fwdctl wait` does).
const ASK_EVERY: Duration = Duration::from_millis(100);

/// What the exposure came to, in words for a person.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Active: how containers reach it (for stdout).
    Active(String),
    /// Failed, or not decided within the wait: why, and what to do (for stderr).
    NotActive(String),
}

/// How the user points fwdctl at fwdd, to repeat in a command fwdctl
/// suggests: `--socket PATH` when they chose the socket on the command
/// line (an environment variable carries over by itself).
pub fn socket_args(explicit: Option<&Path>) -> String {
    match explicit {
        Some(p) => format!(" --socket {}", p.display()),
        None => String::new(),
    }
}

/// The verdict `status` holds for the exposure `change` made, or `None`
/// while it is still on its way (waiting for a master, registering,
/// verifying) or not shown yet.
pub fn judge(st: &Status, change: &ExposeChange, now_ms: u64, fwdctl: &str) -> Option<Verdict> {
    let e = find(st, change)?;
    match e.state.as_str() {
        "active" => Some(Verdict::Active(active(e))),
        "failed" => Some(Verdict::NotActive(failed(e, now_ms, fwdctl))),
        _ => None,
    }
}

/// What to say when the wait ran out before a verdict.
pub fn undecided(
    st: Option<&Status>,
    change: &ExposeChange,
    waited: Duration,
    fwdctl: &str,
) -> String {
    let port = change.remote_port;
    let state = match st.and_then(|st| find(st, change)) {
        Some(e) => match &e.reason {
            Some(why) => format!("{}: {why}", e.state),
            None => e.state.clone(),
        },
        None => "not in fwdd's status".to_string(),
    };
    let host = &change.host;
    format!(
        "{host}: port {port} is not exposed yet after {}s ({state}); fwdd keeps trying: \
         follow it with `fwdctl{fwdctl} wait exposed:{port}` or `fwdctl{fwdctl} status`, end \
         it with `fwdctl{fwdctl} unexpose {port} --host {host}`",
        waited.as_secs()
    )
}

fn find<'a>(st: &'a Status, change: &ExposeChange) -> Option<&'a ExposedStatus> {
    st.exposed
        .iter()
        .find(|e| e.host == change.host && e.remote_port == change.remote_port)
}

fn active(e: &ExposedStatus) -> String {
    let port = e.remote_port;
    let listens = match e.binds.as_slice() {
        [] => String::new(),
        binds => format!(" (sshd listens on {})", binds.join(", ")),
    };
    format!(
        "{}: exposed: containers reach {} here at host.docker.internal:{port}{listens}\n\
         start them with --add-host host.docker.internal:host-gateway (compose: extra_hosts: \
         [\"host.docker.internal:host-gateway\"]); rootful Podman's containers reach it at \
         host.containers.internal:{port} as they are",
        e.host, e.runner
    )
}

fn failed(e: &ExposedStatus, now_ms: u64, fwdctl: &str) -> String {
    let port = e.remote_port;
    let kind = e.reason_kind.as_deref().unwrap_or("unknown");
    let why = e.reason.as_deref().unwrap_or("fwdd gave no reason");
    let mut text = format!("{}: cannot expose port {port} ({kind}): {why}", e.host);
    if kind == "gateway_ports" {
        // sshd reads its configuration when a connection begins: the
        // connection fwdd already has keeps the old setting.
        text.push_str(&format!(
            "\nafter reloading sshd, run: fwdctl{fwdctl} reconnect {}",
            e.host
        ));
    } else if let Some(next) = e.next_retry_ms {
        text.push_str(&format!(
            "\nfwdd tries again in {}s",
            next.saturating_sub(now_ms).div_ceil(1000)
        ));
    }
    text.push_str(&format!(
        "\nthe exposure is kept (fwdctl wait exposed:{port}); end it with: fwdctl{fwdctl} \
         unexpose {port} --host {}",
        e.host
    ));
    text
}

/// Asks `status` every [`ASK_EVERY`] until the exposure has a verdict or
/// `wait` is over. A status that cannot be had ends the wait with its error.
pub fn await_verdict(
    mut status: impl FnMut() -> anyhow::Result<Status>,
    change: &ExposeChange,
    wait: Duration,
    now_ms: impl Fn() -> u64,
    fwdctl: &str,
) -> anyhow::Result<Verdict> {
    let started = Instant::now();
    let deadline = started + wait;
    loop {
        let st = status()?;
        if let Some(v) = judge(&st, change, now_ms(), fwdctl) {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Verdict::NotActive(undecided(
                Some(&st),
                change,
                wait,
                fwdctl,
            )));
        }
        std::thread::sleep(ASK_EVERY.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> ExposeChange {
        ExposeChange {
            host: "prod".into(),
            remote_port: 18080,
            runner: "127.0.0.1:18080".into(),
        }
    }

    fn exposure(state: &str) -> ExposedStatus {
        ExposedStatus {
            host: "prod".into(),
            remote_port: 18080,
            runner: "127.0.0.1:18080".into(),
            binds: Vec::new(),
            state: state.into(),
            reason: None,
            reason_kind: None,
            source: "runtime".into(),
            connections_open: 0,
            connections_total: 0,
            connections_failed: 0,
            connections_refused: 0,
            next_retry_ms: None,
        }
    }

    fn status_with(e: ExposedStatus) -> Status {
        let golden = include_str!("../../fwd-proto/tests/golden/status.json");
        let mut st: Status = serde_json::from_str(golden).expect("golden status");
        st.exposed = vec![e];
        st
    }

    #[test]
    fn on_its_way_is_no_verdict_yet() {
        for state in ["waiting", "registering", "verifying", "something-newer"] {
            assert_eq!(judge(&status_with(exposure(state)), &change(), 0, ""), None);
        }
        let mut elsewhere = exposure("failed");
        elsewhere.host = "staging".into();
        assert_eq!(judge(&status_with(elsewhere), &change(), 0, ""), None);
    }

    #[test]
    fn active_says_how_a_container_reaches_it() {
        let mut e = exposure("active");
        e.binds = vec!["172.17.0.1:18080".into()];
        let Some(Verdict::Active(text)) = judge(&status_with(e), &change(), 0, "") else {
            panic!()
        };
        assert!(
            text.starts_with(
                "prod: exposed: containers reach 127.0.0.1:18080 here at \
                 host.docker.internal:18080 (sshd listens on 172.17.0.1:18080)"
            ),
            "{text}"
        );
        assert!(
            text.contains("--add-host host.docker.internal:host-gateway"),
            "{text}"
        );
    }

    #[test]
    fn gateway_ports_names_the_setting_and_the_reconnect_to_run() {
        let mut e = exposure("failed");
        e.reason_kind = Some("gateway_ports".into());
        e.reason = Some("… set `GatewayPorts clientspecified` … and reload sshd".into());
        let socket = socket_args(Some(Path::new("/tmp/x/control.sock")));
        let Some(Verdict::NotActive(text)) = judge(&status_with(e), &change(), 0, &socket) else {
            panic!()
        };
        assert!(
            text.starts_with("prod: cannot expose port 18080 (gateway_ports): "),
            "{text}"
        );
        assert!(text.contains("GatewayPorts clientspecified"), "{text}");
        assert!(
            text.contains("run: fwdctl --socket /tmp/x/control.sock reconnect prod"),
            "{text}"
        );
        assert!(
            text.ends_with("fwdctl --socket /tmp/x/control.sock unexpose 18080 --host prod"),
            "{text}"
        );
    }

    #[test]
    fn another_failure_says_when_fwdd_tries_again() {
        let mut e = exposure("failed");
        e.reason_kind = Some("refused".into());
        e.reason = Some("sshd refused the remote forward: port in use".into());
        e.next_retry_ms = Some(10_500);
        let Some(Verdict::NotActive(text)) = judge(&status_with(e), &change(), 2_000, "") else {
            panic!()
        };
        assert!(text.contains("fwdd tries again in 9s"), "{text}");
        assert!(!text.contains("reconnect"), "{text}");
    }

    #[test]
    fn a_wait_that_runs_out_says_where_it_is_and_how_to_follow_it() {
        let mut e = exposure("waiting");
        e.reason = Some("the host has no usable ssh master".into());
        let st = status_with(e);
        let mut asked = 0;
        let v = await_verdict(
            || {
                asked += 1;
                Ok(st.clone())
            },
            &change(),
            Duration::ZERO,
            || 0,
            "",
        )
        .expect("verdict");
        assert_eq!(asked, 1);
        let Verdict::NotActive(text) = v else {
            panic!()
        };
        assert_eq!(
            text,
            "prod: port 18080 is not exposed yet after 0s (waiting: the host has no usable \
             ssh master); fwdd keeps trying: follow it with `fwdctl wait exposed:18080` or \
             `fwdctl status`, end it with `fwdctl unexpose 18080 --host prod`"
        );
    }

    #[test]
    fn the_wait_ends_at_the_verdict() {
        let states = ["registering", "verifying", "active"];
        let mut asked = 0;
        let v = await_verdict(
            || {
                let st = status_with(exposure(states[asked]));
                asked += 1;
                Ok(st)
            },
            &change(),
            Duration::from_secs(10),
            || 0,
            "",
        )
        .expect("verdict");
        assert_eq!(asked, 3);
        assert!(matches!(v, Verdict::Active(_)));
    }
}
