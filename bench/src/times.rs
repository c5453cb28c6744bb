//! Time on the Docker host's clock: container start/finish times and event
//! times, read the way fwdd reads them.

#[allow(unused_imports)]
use super::*;

pub(crate) fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

/// Docker's `2026-11-23T15:55:01.123456789Z` in ns since the epoch: the
/// daemon's own parser, so the bench reads times exactly as fwdd does.
pub(crate) fn parse_docker_time(s: &str) -> Option<i128> {
    fwd_docker::parse::parse_rfc3339_nanos(s.trim()).map(i128::from)
}

/// `State.<field>` (StartedAt / FinishedAt) of each container, in ns since the epoch.
pub(crate) fn docker_times(sb: &Sandbox, ids: &[String], field: &str) -> HashMap<String, i128> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(100) {
        let mut args = vec![
            "inspect".to_string(),
            "-f".to_string(),
            format!("{{{{.Id}}}} {{{{.State.{field}}}}}"),
        ];
        args.extend(chunk.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for line in sb.docker_ok(&args).lines() {
            if let Some((id, ts)) = line.split_once(' ') {
                if let Some(t) = parse_docker_time(ts) {
                    out.insert(id.to_string(), t);
                }
            }
        }
    }
    out
}

pub(crate) fn docker_time(sb: &Sandbox, id: &str, field: &str) -> i128 {
    let m = docker_times(sb, &[id.to_string()], field);
    *m.values()
        .next()
        .unwrap_or_else(|| panic!("no {field} for {id}"))
}

/// `timeNano` of each container's `action` event (start, die) between `since_ns` and now,
/// from dockerd's own event log.
pub(crate) fn docker_event_times(
    sb: &Sandbox,
    label: &str,
    action: &str,
    since_ns: i128,
) -> HashMap<String, i128> {
    let since = format!("{}", since_ns / 1_000_000_000 - 1);
    let until = format!("{}", now_ns() / 1_000_000_000 + 1);
    let lf = format!("label={}={label}", fwd_e2e::LABEL_KEY);
    let ef = format!("event={action}");
    let out = sb.docker_ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        &lf,
        "--filter",
        &ef,
        "--format",
        "{{.ID}} {{.TimeNano}}",
    ]);
    out.lines()
        .filter_map(|l| {
            let (id, t) = l.split_once(' ')?;
            Some((id.to_string(), t.trim().parse().ok()?))
        })
        .collect()
}
