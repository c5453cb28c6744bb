//! `fwdctl wait`: block until ports, containers, compose services or names are
//! served and answer.
//!
//! The matching of targets against a status ([`evaluate`]) is pure; [`run`] polls the
//! daemon (`status`, then `probe` for every active forward not yet verified, and a
//! connection to every served name's port not yet tried) every [`POLL_INTERVAL`]
//! until everything is ready or the timeout passes.

use anyhow::{anyhow, Result};
use fwd_proto::{decode_response, error_code, ForwardState, ForwardStatus, Request, Response};
use fwd_proto::{MasterState, NameStatus, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use fwd_client as client;

/// How often the daemon is asked while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Longest a single probe may take on the daemon's side is 5 s; allow for that.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// A name's listener is on this machine's loopback: a connection is accepted at once
/// or never.
const NAME_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local port (`5432`).
    Port(u16),
    /// A word: a container's name (`shop-db-1`) or a prefix of its ID (`4e5d6c7b`), a
    /// compose service (`web`, or `web.shop` for the service of project `shop`), a name
    /// fwd serves (hosts with `names = true`): whichever of them exist, all of them.
    Word(String),
    /// One port of a name fwd serves (`db:5432`).
    NamePort(String, u16),
    /// An exposure's remote port (`exposed:18080`): active once verified.
    Exposed(u16),
}

impl Target {
    /// A number is a port, `exposed:PORT` an exposure, `NAME:PORT` a name's port;
    /// anything else is a word.
    pub fn parse(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err(
                "the target is empty; give a local port such as 5432, a container or compose \
                 service such as db, or a name and port such as db:5432"
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
        if let Some((name, port)) = s.rsplit_once(':') {
            if name.parse::<std::net::IpAddr>().is_ok()
                || name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok()
            {
                return Err(format!(
                    "{s}: wait takes local ports as numbers (e.g. 5432), not addresses"
                ));
            }
            if name.is_empty() || !name.bytes().all(is_name_byte) {
                return Err(format!(
                    "{name:?} is not a name; write NAME:PORT with a name fwd serves, e.g. \
                     db:5432"
                ));
            }
            return match port.parse::<u16>() {
                Ok(p) if p > 0 => Ok(Target::NamePort(name.to_string(), p)),
                _ => Err(format!(
                    "{port:?} is not a TCP port; write NAME:PORT with a port from 1 to 65535, \
                     e.g. db:5432"
                )),
            };
        }
        Ok(Target::Word(s.trim_start_matches('/').to_string()))
    }
}

/// Bytes of container names (`[a-zA-Z0-9][a-zA-Z0-9_.-]`) and host names.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Port(p) => write!(f, "port {p}"),
            Target::Word(w) => write!(f, "{w}"),
            Target::NamePort(n, p) => write!(f, "{n}:{p}"),
            Target::Exposed(p) => write!(f, "exposed port {p}"),
        }
    }
}

/// Something that must answer before a target is ready.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    /// A forward's local port: fwdd's `probe` opens a channel to its remote end.
    Forward(u16),
    /// A name's port: a connection from here to the name's address, which fwdd's
    /// listener accepts (what a client of the name gets first).
    Name { name: String, addr: SocketAddrV4 },
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Forward(p) => write!(f, "port {p}"),
            Answer::Name { name, addr } => write!(f, "{name}:{} at {addr}", addr.port()),
        }
    }
}

/// Where a target stands in one status snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Everything the target needs is forwarded (`active`) or served (`serving`);
    /// these must still answer.
    Served(Vec<Answer>),
    /// Not served yet, and why (one clause, e.g. `port 5432 not forwarded (...)`).
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

/// A name as fwd spells the names it serves: lower case, underscores as hyphens
/// (compose v1's `shop_db_1` answers as `shop-db-1`).
fn name_key(s: &str) -> String {
    s.to_ascii_lowercase().replace('_', "-")
}

fn has_name(n: &NameStatus, key: &str) -> bool {
    n.names.iter().any(|x| x.eq_ignore_ascii_case(key))
}

/// Whether the forward belongs to compose service `word`: `web` (any project) or
/// `web.shop` (project `shop`).
fn of_service(f: &ForwardStatus, word: &str) -> bool {
    let Some(service) = f.compose_service.as_deref() else {
        return false;
    };
    if service == word {
        return true;
    }
    match (word.strip_prefix(service), f.compose_project.as_deref()) {
        (Some(rest), Some(project)) => rest.strip_prefix('.') == Some(project),
        _ => false,
    }
}

/// Why no name `key` is served, when status says: a container that got no address, a
/// name refused; then the hosts not connected.
fn why_no_name(key: &str, st: &Status) -> String {
    let mut why = Vec::new();
    for n in &st.names {
        if n.state == "unnamed" && name_key(&n.container_name) == key {
            why.push(format!(
                "container {} is unnamed: {}",
                n.container_name,
                n.reason.as_deref().unwrap_or("no reason given")
            ));
        }
        for r in n
            .refused
            .iter()
            .filter(|r| r.name.eq_ignore_ascii_case(key))
        {
            why.push(format!(
                "name {} refused to {}: {}",
                r.name, n.container_name, r.why
            ));
        }
    }
    let mut s = String::new();
    for w in why {
        s.push_str("; ");
        s.push_str(&w);
    }
    s.push_str(&hosts_down(st));
    s
}

/// A name's entry that is not serving, as a clause.
fn not_serving(n: &NameStatus) -> String {
    let name = n.names.first().unwrap_or(&n.container_name);
    let at = n.address.map(|a| format!(" at {a}")).unwrap_or_default();
    match &n.reason {
        Some(r) => format!("name {name}{at} is {}: {r}", n.state),
        None => format!("name {name}{at} is {}", n.state),
    }
}

/// Matches `target` against the forwards and names in `st`.
///
/// * A port is forwarded when some TCP forward of that local port is `active` (there
///   can be several claimants across hosts; the active one serves).
/// * A word matches every forward of a container of that exact name, every forward of
///   a compose service of that name (`web`, or `web.shop` within project `shop`), and
///   every name entry that has it among its names (or whose container has that name);
///   only when none of these exist, containers whose ID starts with it. It is served
///   when all of its TCP forwards are `active` and all of its names `serving`. UDP
///   ports (`unsupported`) are ignored; a word with no TCP port at all never is.
/// * `NAME:PORT` is served when a `serving` name entry has NAME and serves PORT.
pub fn evaluate(target: &Target, st: &Status) -> Check {
    match target {
        Target::Exposed(p) => exposed(*p, st),
        Target::Port(p) => port(*p, st),
        Target::Word(w) => word(w, st),
        Target::NamePort(n, p) => name_port(n, *p, st),
    }
}

fn exposed(p: u16, st: &Status) -> Check {
    let all: Vec<_> = st.exposed.iter().filter(|e| e.remote_port == p).collect();
    if all.is_empty() {
        return Check::Missing(format!(
            "port {p} is not exposed (fwdctl expose {p}, or expose = [{p}] in the \
             host's configuration)"
        ));
    }
    match all.iter().find(|e| e.state != "active") {
        // Verified end to end by fwdd: nothing more to probe.
        None => Check::Served(vec![]),
        Some(e) => Check::Missing(format!(
            "exposed port {p} of {} is {}{}",
            e.host,
            e.state,
            e.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )),
    }
}

fn port(p: u16, st: &Status) -> Check {
    let all: Vec<&ForwardStatus> = st.forwards.iter().filter(|f| f.local_port == p).collect();
    let fws: Vec<&ForwardStatus> = all
        .iter()
        .copied()
        .filter(|f| f.state != ForwardState::Unsupported)
        .collect();
    if fws.iter().any(|f| f.state == ForwardState::Active) {
        return Check::Served(vec![Answer::Forward(p)]);
    }
    // Prefer the most telling reason: a conflict over pending.
    if let Some(f) = fws
        .iter()
        .find(|f| f.state == ForwardState::Conflict)
        .or(fws.first())
    {
        return Check::Missing(not_active(f));
    }
    if let Some(udp) = all.first() {
        return Check::Missing(format!(
            "port {p} not forwarded (published only as UDP by {})",
            udp.container_name
        ));
    }
    Check::Missing(format!(
        "port {p} not forwarded (no running container publishes it{})",
        hosts_down(st)
    ))
}

fn word(w: &str, st: &Status) -> Check {
    let key = name_key(w);
    let mut fws: Vec<&ForwardStatus> = st
        .forwards
        .iter()
        .filter(|f| f.container_name == w || of_service(f, w))
        .collect();
    let mut named: Vec<&NameStatus> = st
        .names
        .iter()
        .filter(|n| n.state != "unnamed" && (has_name(n, &key) || n.container_name == w))
        .collect();
    // A name wins over an ID prefix; a word that is not hex is never a prefix.
    if fws.is_empty() && named.is_empty() && w.bytes().all(|b| b.is_ascii_hexdigit()) {
        let prefix = w.to_ascii_lowercase();
        fws = st
            .forwards
            .iter()
            .filter(|f| f.container_id.starts_with(&prefix))
            .collect();
        // Names list short IDs.
        named = st
            .names
            .iter()
            .filter(|n| {
                n.state != "unnamed"
                    && (n.container_id.starts_with(&prefix) || prefix.starts_with(&n.container_id))
            })
            .collect();
    }
    if fws.is_empty() && named.is_empty() {
        return Check::Missing(format!(
            "{w} not found (no running container or compose service of that name or ID \
             publishes a port, and no name {key} is served{})",
            why_no_name(&key, st)
        ));
    }
    let tcp: Vec<&ForwardStatus> = fws
        .iter()
        .copied()
        .filter(|f| f.state != ForwardState::Unsupported)
        .collect();
    let mut missing: Vec<String> = tcp
        .iter()
        .filter(|f| f.state != ForwardState::Active)
        .map(|f| not_active(f))
        .collect();
    missing.extend(
        named
            .iter()
            .filter(|n| n.state != "serving")
            .map(|n| not_serving(n)),
    );
    if !missing.is_empty() {
        return Check::Missing(format!("{w}: {}", missing.join(", ")));
    }
    let mut answers: BTreeSet<Answer> = tcp.iter().map(|f| Answer::Forward(f.local_port)).collect();
    for n in &named {
        let (Some(address), Some(name)) = (n.address, n.names.first()) else {
            continue;
        };
        for p in &n.ports {
            answers.insert(Answer::Name {
                name: name.clone(),
                addr: SocketAddrV4::new(address, *p),
            });
        }
    }
    if answers.is_empty() {
        return Check::Missing(if named.is_empty() {
            format!("{w} publishes no TCP ports (UDP is not forwarded)")
        } else {
            format!(
                "{w} has no TCP port to wait for (it publishes none, and its name serves \
                 none: the container declares no port)"
            )
        });
    }
    Check::Served(answers.into_iter().collect())
}

fn name_port(n: &str, p: u16, st: &Status) -> Check {
    let key = name_key(n);
    let Some(entry) = st.names.iter().find(|e| has_name(e, &key)) else {
        return Check::Missing(format!(
            "name {key} not served (no running container has it; names are served for \
             hosts with names = true{})",
            why_no_name(&key, st)
        ));
    };
    if entry.state != "serving" {
        return Check::Missing(not_serving(entry));
    }
    match entry.address {
        Some(address) if entry.ports.contains(&p) => Check::Served(vec![Answer::Name {
            name: key,
            addr: SocketAddrV4::new(address, p),
        }]),
        _ => {
            let serves: Vec<String> = entry.ports.iter().map(u16::to_string).collect();
            Check::Missing(format!(
                "name {key} does not serve port {p} (it serves {}: the ports {} publishes or \
                 declares)",
                if serves.is_empty() {
                    "none".to_string()
                } else {
                    serves.join(", ")
                },
                entry.container_name
            ))
        }
    }
}

/// Outcome of one round over all targets: `Ok` when everything is ready, else the
/// reasons (one per target not ready) and what to try.
pub fn round(
    targets: &[Target],
    st: &Status,
    tried: &BTreeMap<Answer, Result<(), String>>,
) -> (Vec<String>, BTreeSet<Answer>) {
    let mut reasons = Vec::new();
    let mut to_try = BTreeSet::new();
    for t in targets {
        match evaluate(t, st) {
            Check::Missing(r) => reasons.push(r),
            Check::Served(answers) => {
                for a in answers {
                    let served = match a {
                        Answer::Forward(_) => "forwarded",
                        Answer::Name { .. } => "served",
                    };
                    match tried.get(&a) {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            reasons.push(format!("{a} {served} but not answering ({e})"));
                            to_try.insert(a);
                        }
                        None => {
                            reasons.push(format!("{a} {served}, not tried yet"));
                            to_try.insert(a);
                        }
                    }
                }
            }
        }
    }
    (reasons, to_try)
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

/// A connection to a name's listener, closed at once. fwdd hands it to the
/// container as any client's, so it proves the listener, not the service behind it.
fn connect(addr: SocketAddrV4) -> Result<(), String> {
    TcpStream::connect_timeout(&SocketAddr::V4(addr), NAME_CONNECT_TIMEOUT)
        .map(drop)
        .map_err(|e| match e.kind() {
            // fwdd says it listens there: a refusal that lasts means another
            // machine or network namespace than fwdd's.
            std::io::ErrorKind::ConnectionRefused => format!(
                "{e}; fwdd's status says it listens there: if this lasts, fwdctl does not \
                 run in fwdd's network namespace"
            ),
            _ => e.to_string(),
        })
}

/// Polls until every target is served and answers, or `timeout` passes.
pub fn run(socket: &Path, targets: &[Target], timeout: Duration) -> Result<Outcome> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut tried: BTreeMap<Answer, Result<(), String>> = BTreeMap::new();
    loop {
        let st = fetch_status(socket)?;
        let (_, to_try) = round(targets, &st, &tried);
        for a in to_try {
            let result = match &a {
                Answer::Forward(p) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let t = left.clamp(Duration::from_millis(500), PROBE_TIMEOUT);
                    match probe(socket, *p, t) {
                        Ok(r) => r,
                        Err(_) if Instant::now() >= deadline => {
                            Err("the probe did not finish in time".into())
                        }
                        Err(e) => return Err(e),
                    }
                }
                Answer::Name { addr, .. } => connect(*addr),
            };
            tried.insert(a, result);
        }
        let (reasons, _) = round(targets, &st, &tried);
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
        // A failed try is repeated on the next round.
        tried.retain(|_, r| r.is_ok());
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

fn round_to_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fwd_proto::{DaemonInfo, HostStatus, MasterStatus, RefusedName, StreamState, StreamStatus};
    use std::net::Ipv4Addr;

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

    /// A forward of a compose container.
    fn composed(port: u16, name: &str, id: &str, service: &str, project: &str) -> ForwardStatus {
        let mut f = fw(port, name, id, ForwardState::Active);
        f.compose_service = Some(service.into());
        f.compose_project = Some(project.into());
        f
    }

    /// A container served by name at 127.77.0.`last`.
    fn named(container: &str, id: &str, last: u8, names: &[&str], ports: &[u16]) -> NameStatus {
        NameStatus {
            host: "h".into(),
            container_id: id.into(),
            container_name: container.into(),
            address: Some(Ipv4Addr::new(127, 77, 0, last)),
            names: names.iter().map(|n| n.to_string()).collect(),
            ports: ports.to_vec(),
            to: Some(format!("172.17.0.{last}")),
            state: "serving".into(),
            reason: None,
            refused: vec![],
            connections_open: 0,
            connections_total: 0,
        }
    }

    fn at(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(127, 77, 0, last), port)
    }

    fn name_answer(name: &str, last: u8, port: u16) -> Answer {
        Answer::Name {
            name: name.into(),
            addr: at(last, port),
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
            udp: Vec::new(),
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

    fn word(w: &str) -> Target {
        Target::Word(w.into())
    }

    #[test]
    fn parse_targets() {
        assert_eq!(Target::parse("5432"), Ok(Target::Port(5432)));
        assert_eq!(Target::parse("exposed:18080"), Ok(Target::Exposed(18080)));
        assert!(Target::parse("exposed:x")
            .unwrap_err()
            .contains("exposed:PORT"));
        assert_eq!(Target::parse("db"), Ok(word("db")));
        assert_eq!(Target::parse("/db"), Ok(word("db")));
        assert_eq!(Target::parse("abc123"), Ok(word("abc123")));
        assert_eq!(Target::parse("web.shop"), Ok(word("web.shop")));
        assert!(Target::parse("0").is_err());
        assert_eq!(
            Target::parse("65536"),
            Err("65536 is not a TCP port; give a port from 1 to 65535 (a target of digits only is always read as a port)".into())
        );
        assert!(Target::parse(" ").is_err_and(|e| e.contains("give a local port such as 5432")));
    }

    #[test]
    fn parse_name_and_port() {
        assert_eq!(
            Target::parse("db:5432"),
            Ok(Target::NamePort("db".into(), 5432))
        );
        assert_eq!(
            Target::parse("web.shop:80"),
            Ok(Target::NamePort("web.shop".into(), 80))
        );
        assert_eq!(
            Target::parse("db:0"),
            Err("\"0\" is not a TCP port; write NAME:PORT with a port from 1 to 65535, e.g. db:5432".into())
        );
        assert!(Target::parse("db:").is_err_and(|e| e.contains("NAME:PORT")));
        assert!(Target::parse("db:http").is_err_and(|e| e.contains("NAME:PORT")));
        assert!(Target::parse(":5432").is_err_and(|e| e.contains("is not a name")));
        assert!(Target::parse("a/b:80").is_err_and(|e| e.contains("is not a name")));
        assert!(Target::parse("127.0.0.1:5432").is_err_and(|e| e.contains("not addresses")));
        assert!(Target::parse("[::1]:5432").is_err_and(|e| e.contains("not addresses")));
        // An exposure keeps its prefix.
        assert_eq!(Target::parse("exposed:80"), Ok(Target::Exposed(80)));
    }

    #[test]
    fn targets_display_as_written() {
        assert_eq!(word("web.shop").to_string(), "web.shop");
        assert_eq!(Target::NamePort("db".into(), 5432).to_string(), "db:5432");
        assert_eq!(Target::Port(5432).to_string(), "port 5432");
    }

    #[test]
    fn ports() {
        let st = sample();
        assert_eq!(
            evaluate(&Target::Port(5432), &st),
            Check::Served(vec![Answer::Forward(5432)])
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
            Check::Served(vec![Answer::Forward(5432)])
        );
    }

    #[test]
    fn containers_by_name_and_id_prefix() {
        let st = sample();
        let forwarded =
            |ports: &[u16]| Check::Served(ports.iter().map(|p| Answer::Forward(*p)).collect());
        assert_eq!(evaluate(&word("db"), &st), forwarded(&[5432]));
        assert_eq!(evaluate(&word("ABC1"), &st), forwarded(&[5432]));
        // Every TCP port of the container must be active.
        assert_eq!(
            evaluate(&word("web"), &st),
            Check::Missing("web: port 8443 is pending: waiting for the ssh master".into())
        );
        // UDP ports are ignored...
        assert_eq!(evaluate(&word("both"), &st), forwarded(&[9000]));
        // ...but a UDP-only container can never be ready.
        assert_eq!(
            evaluate(&word("dns"), &st),
            Check::Missing("dns publishes no TCP ports (UDP is not forwarded)".into())
        );
        // A prefix shared by two containers covers both.
        assert!(matches!(
            evaluate(&word("ab"), &st),
            Check::Missing(r) if r.contains("6379 is conflict")
        ));
        assert_eq!(
            evaluate(&word("nope"), &st),
            Check::Missing(
                "nope not found (no running container or compose service of that name or ID \
                 publishes a port, and no name nope is served)"
                    .into()
            )
        );
        // A name wins over an ID prefix; a name that is not hex is never a prefix.
        let mut st2 = sample();
        st2.forwards
            .push(fw(7000, "abc", "000", ForwardState::Active));
        assert_eq!(evaluate(&word("abc"), &st2), forwarded(&[7000]));
    }

    #[test]
    fn compose_services_by_service_and_project() {
        let mut st = sample();
        st.forwards.extend([
            // Compose v1 and v2 spell the container differently; the label is the same.
            composed(8081, "shop_web_1", "a1", "web", "shop"),
            composed(8082, "shop_web_2", "a2", "web", "shop"),
            composed(8090, "p2-web-1", "b1", "web", "p2"),
            composed(5433, "p2-db-1", "b2", "db", "p2"),
        ]);
        let forwarded =
            |ports: &[u16]| Check::Served(ports.iter().map(|p| Answer::Forward(*p)).collect());
        // The service in one project: every container of it.
        assert_eq!(evaluate(&word("web.shop"), &st), forwarded(&[8081, 8082]));
        assert_eq!(evaluate(&word("web.p2"), &st), forwarded(&[8090]));
        // The bare service: every project's, and the container named so as well.
        assert_eq!(
            evaluate(&word("web"), &st),
            Check::Missing("web: port 8443 is pending: waiting for the ssh master".into())
        );
        st.forwards.retain(|f| f.local_port != 8443);
        assert_eq!(
            evaluate(&word("web"), &st),
            forwarded(&[8080, 8081, 8082, 8090])
        );
        assert_eq!(evaluate(&word("db.p2"), &st), forwarded(&[5433]));
        assert_eq!(evaluate(&word("db"), &st), forwarded(&[5432, 5433]));
        // The container's own name still works; an unknown project is not found.
        assert_eq!(evaluate(&word("p2-web-1"), &st), forwarded(&[8090]));
        assert!(matches!(
            evaluate(&word("web.other"), &st),
            Check::Missing(r) if r.starts_with("web.other not found")
        ));
        // A pending container of the service holds the service back.
        st.forwards
            .push(fw(8083, "shop_web_3", "a3", ForwardState::Pending));
        st.forwards.last_mut().unwrap().compose_service = Some("web".into());
        st.forwards.last_mut().unwrap().compose_project = Some("shop".into());
        assert_eq!(
            evaluate(&word("web.shop"), &st),
            Check::Missing("web.shop: port 8083 is pending: waiting for the ssh master".into())
        );
    }

    #[test]
    fn a_daemon_without_compose_services_finds_none() {
        let mut st = sample();
        let mut f = composed(8081, "shop_web_1", "a1", "web", "shop");
        f.compose_service = None;
        st.forwards = vec![f];
        assert!(matches!(
            evaluate(&word("web"), &st),
            Check::Missing(r) if r.starts_with("web not found")
        ));
    }

    #[test]
    fn names_with_a_port() {
        let mut st = sample();
        st.names = vec![
            named("pg", "0a1b2c3d4e5f", 2, &["pg", "db.shop", "db"], &[5432]),
            named("web2", "1a1b2c3d4e5f", 3, &["web2"], &[80, 443]),
        ];
        assert_eq!(
            evaluate(&Target::NamePort("db".into(), 5432), &st),
            Check::Served(vec![name_answer("db", 2, 5432)])
        );
        // Names are host names: any case, underscores as hyphens.
        assert_eq!(
            evaluate(&Target::NamePort("DB.Shop".into(), 5432), &st),
            Check::Served(vec![name_answer("db.shop", 2, 5432)])
        );
        assert_eq!(
            evaluate(&Target::NamePort("db".into(), 5433), &st),
            Check::Missing(
                "name db does not serve port 5433 (it serves 5432: the ports pg publishes or \
                 declares)"
                    .into()
            )
        );
        assert_eq!(
            evaluate(&Target::NamePort("cache".into(), 6379), &st),
            Check::Missing(
                "name cache not served (no running container has it; names are served for \
                 hosts with names = true)"
                    .into()
            )
        );
        // A listener that could not be bound.
        st.names[1].state = "failed".into();
        st.names[1].reason = Some("127.77.0.3:80: address in use".into());
        assert_eq!(
            evaluate(&Target::NamePort("web2".into(), 80), &st),
            Check::Missing(
                "name web2 at 127.77.0.3 is failed: 127.77.0.3:80: address in use".into()
            )
        );
    }

    #[test]
    fn a_missing_name_says_why_when_status_does() {
        let mut st = status(vec![], MasterState::Backoff);
        let mut unnamed = named("cache", "2a1b2c3d4e5f", 0, &[], &[]);
        unnamed.address = None;
        unnamed.state = "unnamed".into();
        unnamed.reason = Some("no direct route: the engine runs rootless".into());
        let mut other = named("other", "3a1b2c3d4e5f", 4, &["other"], &[80]);
        other.refused = vec![RefusedName {
            name: "db".into(),
            why: "the system's hosts file has it".into(),
        }];
        st.names = vec![other, unnamed];
        assert_eq!(
            evaluate(&Target::NamePort("cache".into(), 6379), &st),
            Check::Missing(
                "name cache not served (no running container has it; names are served for \
                 hosts with names = true; container cache is unnamed: no direct route: the \
                 engine runs rootless; host h is backoff)"
                    .into()
            )
        );
        assert_eq!(
            evaluate(&word("db"), &st),
            Check::Missing(
                "db not found (no running container or compose service of that name or ID \
                 publishes a port, and no name db is served; name db refused to other: the \
                 system's hosts file has it; host h is backoff)"
                    .into()
            )
        );
    }

    #[test]
    fn a_word_covers_containers_services_and_names_alike() {
        let mut st = sample();
        st.forwards
            .push(composed(8081, "shop_web_1", "a1", "web", "shop"));
        st.forwards.retain(|f| f.local_port != 8443);
        st.names = vec![
            // The compose container's name entry: its service is among its names.
            named(
                "shop_web_1",
                "a10000000000",
                2,
                &["shop-web-1", "web.shop", "web"],
                &[80],
            ),
            // Served by name only: no published port.
            named("pg", "0a1b2c3d4e5f", 3, &["pg"], &[5432]),
        ];
        assert_eq!(
            evaluate(&word("web"), &st),
            Check::Served(vec![
                Answer::Forward(8080),
                Answer::Forward(8081),
                name_answer("shop-web-1", 2, 80),
            ])
        );
        // Every port of a name, published or not; by container name or ID prefix too.
        let pg = Check::Served(vec![name_answer("pg", 3, 5432)]);
        assert_eq!(evaluate(&word("pg"), &st), pg);
        assert_eq!(evaluate(&word("0a1b2c"), &st), pg);
        assert_eq!(
            evaluate(&word(&format!("{:0<64}", "0a1b2c3d4e5f")), &st),
            pg
        );
        // The compose v1 container name matches its forwards and its name entry.
        assert_eq!(
            evaluate(&word("shop_web_1"), &st),
            Check::Served(vec![
                Answer::Forward(8081),
                name_answer("shop-web-1", 2, 80)
            ])
        );
        // A name not serving holds the word back, whatever else is ready.
        st.names[0].state = "failed".into();
        st.names[0].reason = Some("address in use".into());
        assert_eq!(
            evaluate(&word("web"), &st),
            Check::Missing("web: name shop-web-1 at 127.77.0.2 is failed: address in use".into())
        );
        // A name with no port is nothing to wait for.
        st.names[1].ports.clear();
        assert_eq!(
            evaluate(&word("pg"), &st),
            Check::Missing(
                "pg has no TCP port to wait for (it publishes none, and its name serves none: \
                 the container declares no port)"
                    .into()
            )
        );
    }

    #[test]
    fn rounds_need_answers() {
        let mut st = sample();
        st.names = vec![named("pg", "0a1b2c3d4e5f", 3, &["pg"], &[5432])];
        let targets = [
            Target::Port(5432),
            word("both"),
            Target::NamePort("pg".into(), 5432),
        ];
        let mut tried = BTreeMap::new();
        let (reasons, to_try) = round(&targets, &st, &tried);
        assert_eq!(
            to_try.into_iter().collect::<Vec<_>>(),
            [
                Answer::Forward(5432),
                Answer::Forward(9000),
                name_answer("pg", 3, 5432)
            ]
        );
        assert_eq!(
            reasons,
            [
                "port 5432 forwarded, not tried yet",
                "port 9000 forwarded, not tried yet",
                "pg:5432 at 127.77.0.3:5432 served, not tried yet"
            ]
        );
        tried.insert(Answer::Forward(5432), Ok(()));
        tried.insert(
            Answer::Forward(9000),
            Err("nothing accepts connections".into()),
        );
        tried.insert(
            name_answer("pg", 3, 5432),
            Err("Connection refused (os error 111)".into()),
        );
        let (reasons, to_try) = round(&targets, &st, &tried);
        assert_eq!(to_try.len(), 2);
        assert_eq!(
            reasons,
            [
                "port 9000 forwarded but not answering (nothing accepts connections)",
                "pg:5432 at 127.77.0.3:5432 served but not answering (Connection refused (os \
                 error 111))"
            ]
        );
        tried.insert(Answer::Forward(9000), Ok(()));
        tried.insert(name_answer("pg", 3, 5432), Ok(()));
        assert_eq!(round(&targets, &st, &tried), (vec![], BTreeSet::new()));
    }

    #[test]
    fn a_name_answers_when_something_listens_on_its_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let Ok(SocketAddr::V4(addr)) = listener.local_addr() else {
            panic!("not IPv4")
        };
        assert_eq!(connect(addr), Ok(()));
        drop(listener);
        assert!(connect(addr)
            .is_err_and(|e| e.ends_with("fwdctl does not run in fwdd's network namespace")));
    }
}
