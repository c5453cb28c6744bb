//! `fwdctl wait`: block until ports (or all TCP ports of containers) are forwarded and
//! answer through the forward.
//!
//! The matching of targets against a status ([`evaluate`]) is pure; [`run`] polls the
//! daemon (`status`, then `probe` for every active forward not yet verified) every
//! [`POLL_INTERVAL`] until everything is ready or the timeout passes.

use anyhow::{anyhow, Result};
use fwd_proto::{decode_response, error_code, ForwardState, ForwardStatus, Request, Response};
use fwd_proto::{MasterState, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use fwd_client as client;

/// How often the daemon is asked while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Longest a single probe may take on the daemon's side is 5 s; allow for that.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// What to wait for: a local port, or every published TCP port of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local port (`5432`).
    Port(u16),
    /// A container name (`shop-db-1`) or a prefix of its ID (`4e5d6c7b`).
    Container(String),
    /// An exposure's remote port (`exposed:18080`): active once verified.
    Exposed(u16),
}

impl Target {
    /// A number is a port; anything else names a container.
    pub fn parse(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err(
                "the target is empty; give a local port such as 5432 or a container name \
                 such as shop-db-1"
                    .into(),
            );
        }
        if let Some(port) = s.strip_prefix("exposed:") {
            return match port.parse::<u16>() {
                Ok(p) if p > 0 => Ok(Target::Exposed(p)),
                _ => Err(format!(
                    "{port:?} is not a port; write exposed:PORT with the remote port of an \
                     exposure, e.g. exposed:18080"
                )),
            };
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u16>() {
                Ok(p) if p > 0 => Ok(Target::Port(p)),
                _ => Err(format!(
                    "{s} is not a TCP port; give a port from 1 to 65535 (a target of digits \
                     only is always read as a port)"
                )),
            };
        }
        Ok(Target::Container(s.trim_start_matches('/').to_string()))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Port(p) => write!(f, "port {p}"),
            Target::Container(c) => write!(f, "container {c}"),
            Target::Exposed(p) => write!(f, "exposed port {p}"),
        }
    }
}

/// Where a target stands in one status snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Every port the target needs is forwarded (`active`); these must still answer a
    /// probe.
    Forwarded(Vec<u16>),
    /// Not forwarded yet, and why (one clause, e.g. `port 5432 not forwarded (...)`).
    Missing(String),
}

/// Hosts that are not connected, as a suffix for "not found" reasons: the forward list
/// of such a host may be incomplete.
fn hosts_down(st: &Status) -> String {
    let down: Vec<String> = st
        .hosts
        .iter()
        .filter(|h| h.master.state != MasterState::Connected)
        .map(|h| format!("host {} is {}", h.name, h.master.state))
        .collect();
    if down.is_empty() {
        String::new()
    } else {
        format!("; {}", down.join(", "))
    }
}

fn not_active(f: &ForwardStatus) -> String {
    let mut s = format!("port {} is {}", f.local_port, f.state);
    if let Some(r) = &f.reason {
        s.push_str(": ");
        s.push_str(r);
    }
    s
}

/// Matches `target` against the forwards in `st`.
///
/// * A port is forwarded when some TCP forward of that local port is `active` (there
///   can be several claimants across hosts; the active one serves).
/// * A container matches by exact name, else by ID prefix (all containers with that
///   prefix); it is forwarded when all of its TCP forwards are `active`. UDP ports
///   (`unsupported`) are ignored; a container that publishes only UDP never is.
pub fn evaluate(target: &Target, st: &Status) -> Check {
    let tcp = |f: &&ForwardStatus| f.state != ForwardState::Unsupported;
    match target {
        Target::Exposed(p) => {
            let all: Vec<_> = st.exposed.iter().filter(|e| e.remote_port == *p).collect();
            if all.is_empty() {
                return Check::Missing(format!(
                    "port {p} is not exposed (fwdctl expose {p}, or expose = [{p}] in the \
                     host's configuration)"
                ));
            }
            if all.iter().all(|e| e.state == "active") {
                // Verified end to end by fwdd: nothing more to probe.
                return Check::Forwarded(vec![]);
            }
            let e = all.iter().find(|e| e.state != "active").unwrap_or(&all[0]);
            Check::Missing(format!(
                "exposed port {p} of {} is {}{}",
                e.host,
                e.state,
                e.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ))
        }
        Target::Port(p) => {
            let all: Vec<&ForwardStatus> =
                st.forwards.iter().filter(|f| f.local_port == *p).collect();
            let fws: Vec<&ForwardStatus> = all.iter().copied().filter(tcp).collect();
            if fws.iter().any(|f| f.state == ForwardState::Active) {
                return Check::Forwarded(vec![*p]);
            }
            // Prefer the most telling reason: a conflict over pending.
            if let Some(f) = fws
                .iter()
                .find(|f| f.state == ForwardState::Conflict)
                .or(fws.first())
            {
                return Check::Missing(not_active(f));
            }
            if !all.is_empty() {
                return Check::Missing(format!(
                    "port {p} not forwarded (published only as UDP by {})",
                    all[0].container_name
                ));
            }
            Check::Missing(format!(
                "port {p} not forwarded (no running container publishes it{})",
                hosts_down(st)
            ))
        }
        Target::Container(c) => {
            let by_name: Vec<&ForwardStatus> = st
                .forwards
                .iter()
                .filter(|f| f.container_name == *c)
                .collect();
            let is_hex = c.bytes().all(|b| b.is_ascii_hexdigit());
            let matched = if !by_name.is_empty() || !is_hex {
                by_name
            } else {
                let prefix = c.to_ascii_lowercase();
                st.forwards
                    .iter()
                    .filter(|f| f.container_id.starts_with(&prefix))
                    .collect()
            };
            if matched.is_empty() {
                return Check::Missing(format!(
                    "container {c} not found (no running container with that name or ID publishes a port{})",
                    hosts_down(st)
                ));
            }
            let fws: Vec<&ForwardStatus> = matched.iter().copied().filter(tcp).collect();
            if fws.is_empty() {
                return Check::Missing(format!(
                    "container {c} publishes no TCP ports (UDP is not forwarded)"
                ));
            }
            let pending: Vec<String> = fws
                .iter()
                .filter(|f| f.state != ForwardState::Active)
                .map(|f| not_active(f))
                .collect();
            if !pending.is_empty() {
                return Check::Missing(format!("container {c}: {}", pending.join(", ")));
            }
            let ports: BTreeSet<u16> = fws.iter().map(|f| f.local_port).collect();
            Check::Forwarded(ports.into_iter().collect())
        }
    }
}

/// Outcome of one round over all targets: `Ok` when everything is ready, else the
/// reasons (one per target not ready) and the ports to probe.
pub fn round(
    targets: &[Target],
    st: &Status,
    probed: &BTreeMap<u16, Result<(), String>>,
) -> (Vec<String>, BTreeSet<u16>) {
    let mut reasons = Vec::new();
    let mut to_probe = BTreeSet::new();
    for t in targets {
        match evaluate(t, st) {
            Check::Missing(r) => reasons.push(r),
            Check::Forwarded(ports) => {
                for p in ports {
                    match probed.get(&p) {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            reasons.push(format!("port {p} forwarded but not answering ({e})"));
                            to_probe.insert(p);
                        }
                        None => {
                            reasons.push(format!("port {p} forwarded, not probed yet"));
                            to_probe.insert(p);
                        }
                    }
                }
            }
        }
    }
    (reasons, to_probe)
}

/// How `wait` ended without an error talking to the daemon.
pub enum Outcome {
    /// Everything answers; the line to print.
    Ready(String),
    /// Timed out; the one-line reason.
    TimedOut(String),
}

fn fetch_status(socket: &Path) -> Result<Status> {
    Ok(client::status(socket, client::REQUEST_TIMEOUT)?)
}

/// `Ok(Ok(()))` answered, `Ok(Err(why))` not (yet), `Err` trouble with the daemon.
fn probe(socket: &Path, port: u16, timeout: Duration) -> Result<Result<(), String>> {
    let line = client::request(socket, &Request::Probe { port }, timeout)?;
    match decode_response(&line)
        .map_err(|e| anyhow!("bad answer from fwdd ({}): {e}", socket.display()))?
    {
        Response::Probe { .. } => Ok(Ok(())),
        Response::Error { message, code } if code.as_deref() == Some(error_code::PROBE_FAILED) => {
            Ok(Err(message))
        }
        Response::Error { message, .. } => Err(anyhow!("fwdd refused the request: {message}")),
        other => Err(client::unexpected_answer(&other).into()),
    }
}

/// Polls until every target is forwarded and answers, or `timeout` passes.
pub fn run(socket: &Path, targets: &[Target], timeout: Duration) -> Result<Outcome> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut probed: BTreeMap<u16, Result<(), String>> = BTreeMap::new();
    loop {
        let st = fetch_status(socket)?;
        let (_, to_probe) = round(targets, &st, &probed);
        for p in to_probe {
            let left = deadline.saturating_duration_since(Instant::now());
            let t = left.clamp(Duration::from_millis(500), PROBE_TIMEOUT);
            match probe(socket, p, t) {
                Ok(r) => {
                    probed.insert(p, r);
                }
                Err(_) if Instant::now() >= deadline => {
                    probed.insert(p, Err("the probe did not finish in time".into()));
                }
                Err(e) => return Err(e),
            }
        }
        let (reasons, _) = round(targets, &st, &probed);
        if reasons.is_empty() {
            let what: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
            return Ok(Outcome::Ready(format!(
                "ready after {:.1}s: {}",
                started.elapsed().as_secs_f64(),
                what.join(", ")
            )));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Outcome::TimedOut(format!(
                "timed out after {}: {}",
                humantime::format_duration(round_to_ms(timeout)),
                reasons.join("; ")
            )));
        }
        // A failed probe is re-tried on the next round.
        probed.retain(|_, r| r.is_ok());
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

fn round_to_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fwd_proto::{DaemonInfo, HostStatus, MasterStatus, StreamState, StreamStatus};

    fn fw(port: u16, name: &str, id: &str, state: ForwardState) -> ForwardStatus {
        ForwardStatus {
            host: "h".into(),
            local_port: port,
            local_addrs: vec![],
            remote: format!("127.0.0.1:{port}"),
            container_id: format!("{id:0<64}"),
            container_name: name.into(),
            compose_project: None,
            compose_service: None,
            container_port: format!("{port}/tcp"),
            state,
            reason: match state {
                ForwardState::Active => None,
                ForwardState::Conflict => Some("in use by another process".into()),
                ForwardState::Pending => Some("waiting for the ssh master".into()),
                ForwardState::Unsupported => Some("UDP ports are not forwarded".into()),
            },
            since_ms: 0,
            connections_open: 0,
            connections_total: 0,
            connections_refused: 0,
            route: None,
        }
    }

    fn status(forwards: Vec<ForwardStatus>, master: MasterState) -> Status {
        Status {
            daemon: DaemonInfo {
                version: "t".into(),
                pid: 1,
                started_at_ms: 0,
                image_started_at_ms: None,
                upgrades: 0,
            },
            hosts: vec![HostStatus {
                name: "h".into(),
                destination: "h".into(),
                master: MasterStatus {
                    state: master,
                    pid: None,
                    since_ms: 0,
                    last_probe_rtt_ms: None,
                    reconnects: 0,
                    consecutive_failures: 0,
                    last_error: None,
                    next_retry_ms: None,
                    network_lost_since_ms: None,
                },
                events: StreamStatus {
                    state: StreamState::Streaming,
                    events_received: 0,
                    last_event_ms: None,
                    restarts: 0,
                },
                docker_version: None,
                engine: None,
            }],
            forwards,
            health: None,
            exposed: vec![],
            limits: None,
            names: Vec::new(),
        }
    }

    fn sample() -> Status {
        status(
            vec![
                fw(5432, "db", "abc123", ForwardState::Active),
                fw(8080, "web", "def456", ForwardState::Active),
                fw(8443, "web", "def456", ForwardState::Pending),
                fw(6379, "cache", "abd999", ForwardState::Conflict),
                fw(5353, "dns", "fff000", ForwardState::Unsupported),
                fw(9000, "both", "eee111", ForwardState::Active),
                fw(9001, "both", "eee111", ForwardState::Unsupported),
            ],
            MasterState::Connected,
        )
    }

    #[test]
    fn parse_targets() {
        assert_eq!(Target::parse("5432"), Ok(Target::Port(5432)));
        assert_eq!(Target::parse("exposed:18080"), Ok(Target::Exposed(18080)));
        assert!(Target::parse("exposed:x")
            .unwrap_err()
            .contains("exposed:PORT"));
        assert_eq!(Target::parse("db"), Ok(Target::Container("db".into())));
        assert_eq!(Target::parse("/db"), Ok(Target::Container("db".into())));
        assert_eq!(
            Target::parse("abc123"),
            Ok(Target::Container("abc123".into()))
        );
        assert!(Target::parse("0").is_err());
        assert_eq!(
            Target::parse("65536"),
            Err("65536 is not a TCP port; give a port from 1 to 65535 (a target of digits only is always read as a port)".into())
        );
        assert!(Target::parse(" ").is_err_and(|e| e.contains("give a local port such as 5432")));
    }

    #[test]
    fn ports() {
        let st = sample();
        assert_eq!(
            evaluate(&Target::Port(5432), &st),
            Check::Forwarded(vec![5432])
        );
        assert_eq!(
            evaluate(&Target::Port(6379), &st),
            Check::Missing("port 6379 is conflict: in use by another process".into())
        );
        assert_eq!(
            evaluate(&Target::Port(8443), &st),
            Check::Missing("port 8443 is pending: waiting for the ssh master".into())
        );
        assert_eq!(
            evaluate(&Target::Port(5353), &st),
            Check::Missing("port 5353 not forwarded (published only as UDP by dns)".into())
        );
        assert_eq!(
            evaluate(&Target::Port(1234), &st),
            Check::Missing("port 1234 not forwarded (no running container publishes it)".into())
        );
        let down = status(vec![], MasterState::Backoff);
        assert_eq!(
            evaluate(&Target::Port(1234), &down),
            Check::Missing(
                "port 1234 not forwarded (no running container publishes it; host h is backoff)"
                    .into()
            )
        );
    }

    #[test]
    fn same_port_on_two_hosts_active_wins() {
        let mut st = sample();
        let mut other = fw(5432, "db2", "999", ForwardState::Conflict);
        other.host = "h2".into();
        st.forwards.insert(0, other);
        assert_eq!(
            evaluate(&Target::Port(5432), &st),
            Check::Forwarded(vec![5432])
        );
    }

    #[test]
    fn containers_by_name_and_id_prefix() {
        let st = sample();
        assert_eq!(
            evaluate(&Target::Container("db".into()), &st),
            Check::Forwarded(vec![5432])
        );
        assert_eq!(
            evaluate(&Target::Container("ABC1".into()), &st),
            Check::Forwarded(vec![5432])
        );
        // Every TCP port of the container must be active.
        assert_eq!(
            evaluate(&Target::Container("web".into()), &st),
            Check::Missing(
                "container web: port 8443 is pending: waiting for the ssh master".into()
            )
        );
        // UDP ports are ignored...
        assert_eq!(
            evaluate(&Target::Container("both".into()), &st),
            Check::Forwarded(vec![9000])
        );
        // ...but a UDP-only container can never be ready.
        assert_eq!(
            evaluate(&Target::Container("dns".into()), &st),
            Check::Missing("container dns publishes no TCP ports (UDP is not forwarded)".into())
        );
        // A prefix shared by two containers covers both.
        assert!(matches!(
            evaluate(&Target::Container("ab".into()), &st),
            Check::Missing(r) if r.contains("6379 is conflict")
        ));
        assert_eq!(
            evaluate(&Target::Container("nope".into()), &st),
            Check::Missing(
                "container nope not found (no running container with that name or ID publishes a port)"
                    .into()
            )
        );
        // A name wins over an ID prefix; a name that is not hex is never a prefix.
        let mut st2 = sample();
        st2.forwards
            .push(fw(7000, "abc", "000", ForwardState::Active));
        assert_eq!(
            evaluate(&Target::Container("abc".into()), &st2),
            Check::Forwarded(vec![7000])
        );
    }

    #[test]
    fn rounds_need_probes() {
        let st = sample();
        let targets = [Target::Port(5432), Target::Container("both".into())];
        let mut probed = BTreeMap::new();
        let (reasons, to_probe) = round(&targets, &st, &probed);
        assert_eq!(to_probe.into_iter().collect::<Vec<_>>(), [5432, 9000]);
        assert_eq!(reasons.len(), 2);
        probed.insert(5432, Ok(()));
        probed.insert(9000, Err("nothing accepts connections".into()));
        let (reasons, to_probe) = round(&targets, &st, &probed);
        assert_eq!(to_probe.into_iter().collect::<Vec<_>>(), [9000]);
        assert_eq!(
            reasons,
            ["port 9000 forwarded but not answering (nothing accepts connections)"]
        );
        probed.insert(9000, Ok(()));
        assert_eq!(round(&targets, &st, &probed), (vec![], BTreeSet::new()));
    }
}
