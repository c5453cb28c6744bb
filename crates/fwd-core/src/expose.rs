//! Exposures: ports of the runner that a host's containers reach, through
//! remote forwards on the host's master (`ssh -R`, asked over the mux).
//!
//! This module decides, the daemon carries out:
//! - what an `expose` entry and an `expose_on` scope mean ([`parse_expose`],
//!   [`parse_bind_scope`]) and where sshd is asked to listen
//!   ([`remote_binds`]);
//! - per host, what to do next for each exposure as the master comes and
//!   goes, and after each answer ([`ExposeMachine`]): register the forwards
//!   on a new master, verify each one end to end (sshd's `OK` does not mean
//!   it bound the address asked for: with `GatewayPorts no` it binds
//!   loopback and says nothing), retry what failed on a capped schedule,
//!   unregister what is no longer wanted, and say each failure once.
//!
//! sshd reads its configuration when a connection begins, and a reload
//! (SIGHUP) changes nothing for connections already made: a `GatewayPorts`
//! failure is tried again on the next master only, never on the same one
//! (measured: retries on the master for a minute after the fix and the
//! reload all failed), and says that `fwdctl reconnect` makes that master.
//!
//! The runner-side target of an exposure comes from configuration (or
//! `fwdctl expose`) only; the remote side chooses nothing.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// One exposure: `remote_port` on the host's bind addresses reaches
/// `target` on the runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExposeSpec {
    pub remote_port: u16,
    pub target: SocketAddr,
}

impl fmt::Display for ExposeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {}", self.remote_port, self.target)
    }
}

/// How an `expose` entry is written, for error messages and the docs.
pub const EXPOSE_GRAMMAR: &str = "PORT (the same port on both sides), REMOTE_PORT:RUNNER_PORT, \
     or REMOTE_PORT:RUNNER_ADDRESS:RUNNER_PORT with RUNNER_ADDRESS an IP address \
     ([::1] for IPv6) or localhost";

/// Parses an `expose` entry (see [`EXPOSE_GRAMMAR`]). The runner address
/// defaults to `127.0.0.1`.
pub fn parse_expose(entry: &str) -> Result<ExposeSpec, String> {
    let bad = |why: String| format!("expose entry {entry:?}: {why}; write {EXPOSE_GRAMMAR}");
    let port = |s: &str, which: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(0) => Err(bad(format!("the {which} port is 0"))),
            Ok(p) => Ok(p),
            Err(_) => Err(bad(format!("{s:?} is not a {which} port (1-65535)"))),
        }
    };
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let entry_t = entry.trim();
    // An IPv6 address is bracketed: split off the last port first.
    let (head, last) = match entry_t.rsplit_once(':') {
        Some((h, l)) => (Some(h), l),
        None => (None, entry_t),
    };
    let runner_port = port(last, "runner")?;
    let Some(head) = head else {
        return Ok(ExposeSpec {
            remote_port: runner_port,
            target: SocketAddr::new(loopback, runner_port),
        });
    };
    let (remote, addr) = match head.split_once(':') {
        Some((r, a)) => (r, Some(a)),
        None => (head, None),
    };
    let remote_port = port(remote, "remote")?;
    let ip = match addr.map(str::trim) {
        None => loopback,
        Some("localhost") => loopback,
        Some(a) => {
            let literal = a
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(a);
            if literal.contains(':') && !a.starts_with('[') {
                return Err(bad(format!("write the IPv6 address {a:?} in brackets")));
            }
            literal.parse::<IpAddr>().map_err(|_| {
                bad(format!(
                    "{a:?} is not an IP address (names other than localhost are not resolved)"
                ))
            })?
        }
    };
    Ok(ExposeSpec {
        remote_port,
        target: SocketAddr::new(ip, runner_port),
    })
}

/// Where on the host sshd is asked to listen for an exposure (`expose_on`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BindScope {
    /// The address the engine's containers reach the host by: what Docker's
    /// `host-gateway` resolves to, the default bridge's gateway. The default.
    Gateway,
    /// The host's loopback: for containers with `network_mode: host`.
    Loopback,
    /// Every address of the host (`*`): never without being asked.
    All,
    /// One address of the host, e.g. another bridge's gateway.
    Addr(IpAddr),
}

impl fmt::Display for BindScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindScope::Gateway => f.write_str("gateway"),
            BindScope::Loopback => f.write_str("loopback"),
            BindScope::All => f.write_str("all"),
            BindScope::Addr(ip) => write!(f, "{ip}"),
        }
    }
}

pub fn parse_bind_scope(s: &str) -> Result<BindScope, String> {
    match s.trim() {
        "gateway" => Ok(BindScope::Gateway),
        "loopback" => Ok(BindScope::Loopback),
        "all" => Ok(BindScope::All),
        other => match other.parse::<IpAddr>() {
            // sshd reads these as every address: only `all` says so, and
            // is bound with its warning.
            Ok(ip) if !is_one_address(ip) => Err(format!(
                "expose_on entry {s:?} is not one address of the host (sshd would listen on \
                 every address, or on none); write all to listen on every address on purpose, \
                 or the host's own address"
            )),
            Ok(ip) => Ok(BindScope::Addr(ip)),
            Err(_) => Err(format!(
                "expose_on entry {s:?}: write gateway (the address host-gateway resolves to), \
                 loopback (for network_mode: host), all (every address of the host), \
                 or an IP address of the host"
            )),
        },
    }
}

/// One place sshd listens for an exposure.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteBind {
    /// The listen address as sent to sshd (`*` for every address).
    pub listen: String,
    /// Where a channel through the master checks that sshd listens there.
    pub verify_at: IpAddr,
}

impl fmt::Display for RemoteBind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.listen.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => write!(f, "[{}]", self.listen),
            _ => f.write_str(&self.listen),
        }
    }
}

/// Whether `ip` is one address a host can have: not unspecified (`0.0.0.0`,
/// `::`, which sshd reads as every address), not in `0.0.0.0/8`, not
/// multicast or broadcast. An IPv4-mapped IPv6 address is judged as IPv4.
pub fn is_one_address(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets()[0] != 0 && !v4.is_multicast() && !v4.is_broadcast(),
        IpAddr::V6(v6) => !v6.is_unspecified() && !v6.is_multicast(),
    }
}

/// The binds for `scopes`, given the gateway the engine reported (`Err`:
/// it reported none, or could not be asked, with why). A gateway that is not
/// one address ([`is_one_address`]: e.g. `0.0.0.0`, which sshd would read as
/// every address) is refused for `gateway`, and never used to verify `all`.
pub fn remote_binds(
    scopes: &[BindScope],
    gateway: Result<IpAddr, &str>,
) -> Result<Vec<RemoteBind>, String> {
    let mut binds = Vec::new();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for scope in scopes {
        let bind = match scope {
            BindScope::Gateway => {
                let ip = gateway.map_err(|why| {
                    format!(
                        "cannot tell the address containers reach the host by ({why}); \
                         set expose_on to that address"
                    )
                })?;
                if !is_one_address(ip) {
                    return Err(format!(
                        "the engine answered {ip} as its bridge network's gateway, which is not \
                         one address of the host (sshd would listen on every address, or on \
                         none); set expose_on to the address containers reach the host by, \
                         e.g. expose_on = [\"172.17.0.1\"]"
                    ));
                }
                RemoteBind {
                    listen: ip.to_string(),
                    verify_at: ip,
                }
            }
            BindScope::Loopback => RemoteBind {
                listen: loopback.to_string(),
                verify_at: loopback,
            },
            BindScope::All => RemoteBind {
                listen: "*".into(),
                verify_at: gateway
                    .ok()
                    .filter(|ip| is_one_address(*ip))
                    .unwrap_or(loopback),
            },
            BindScope::Addr(ip) => RemoteBind {
                listen: ip.to_string(),
                verify_at: *ip,
            },
        };
        if !binds.contains(&bind) {
            binds.push(bind);
        }
    }
    Ok(binds)
}

/// Where an exposure came from: the configuration (SIGHUP replaces these)
/// or `fwdctl expose` (kept until `fwdctl unexpose`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExposeSource {
    Config,
    Runtime,
}

/// Why an exposure does not work, as said in status and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExposeFailure {
    /// The binds could not be decided (no gateway known).
    NoBind(String),
    /// sshd refused the remote forward (port taken, forwarding forbidden).
    Refused(String),
    /// sshd accepted, but nothing answers at the address asked for: it bound
    /// elsewhere (`GatewayPorts no` binds loopback).
    NotListening { at: String, detail: String },
    /// The check could not be made or did not arrive.
    Unverified(String),
}

impl fmt::Display for ExposeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExposeFailure::NoBind(why) => f.write_str(why),
            ExposeFailure::Refused(why) => write!(f, "sshd refused the remote forward: {why}"),
            ExposeFailure::NotListening { at, detail } => write!(
                f,
                "sshd accepted the remote forward but does not listen on {at} ({detail}): \
                 its GatewayPorts setting binds it to loopback only; set \
                 `GatewayPorts clientspecified` in the host's sshd_config (for example in a \
                 `Match User <user>` block), reload sshd (`systemctl reload ssh`, or SIGHUP \
                 to sshd), then run `fwdctl reconnect`: sshd applies it to new connections \
                 only"
            ),
            ExposeFailure::Unverified(why) => write!(f, "cannot verify the remote forward: {why}"),
        }
    }
}

impl ExposeFailure {
    /// A short word for status and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ExposeFailure::NoBind(_) => "no_bind",
            ExposeFailure::Refused(_) => "refused",
            ExposeFailure::NotListening { .. } => "gateway_ports",
            ExposeFailure::Unverified(_) => "unverified",
        }
    }
}

/// Where one exposure is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExposeState {
    /// The host has no usable master.
    WaitingForLink,
    Registering,
    /// Registered; checking each bind in turn (index of the next).
    Verifying(usize),
    Active,
    /// Retried at `retry_at`, or (`None`) on the next master: a failure
    /// the same master would only repeat.
    Failed {
        failure: ExposeFailure,
        retry_at: Option<Instant>,
    },
}

impl ExposeState {
    pub fn name(&self) -> &'static str {
        match self {
            ExposeState::WaitingForLink => "waiting",
            ExposeState::Registering => "registering",
            ExposeState::Verifying(_) => "verifying",
            ExposeState::Active => "active",
            ExposeState::Failed { .. } => "failed",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Exposure {
    pub spec: ExposeSpec,
    pub source: ExposeSource,
    pub state: ExposeState,
    /// The binds registered on the current master.
    pub registered: Vec<RemoteBind>,
    failures: u32,
    /// The last failure said, so each is said once.
    said: Option<String>,
}

/// What the shell is asked to do; it answers with the matching
/// `ExposeMachine` method, passing the command's `epoch` back (an answer
/// from before the last master change is ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExposeCommand {
    /// `open_remote_forward` of each bind to the exposure's socket →
    /// [`ExposeMachine::registered`].
    Register {
        epoch: u64,
        port: u16,
        binds: Vec<RemoteBind>,
    },
    /// A channel through the master to `at:port` must arrive at the
    /// exposure's socket → [`ExposeMachine::verified`].
    Verify { epoch: u64, port: u16, at: IpAddr },
    /// `close_remote_forward` of each bind → [`ExposeMachine::unregistered`].
    Unregister {
        epoch: u64,
        port: u16,
        binds: Vec<RemoteBind>,
    },
    /// Something to log, once.
    Say(ExposeNotice),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExposeNotice {
    pub port: u16,
    /// `expose_active`, `expose_failed`, `expose_removed`.
    pub event: &'static str,
    pub warn: bool,
    pub message: String,
}

/// The answer to a verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyResult {
    /// The check's connection arrived at the runner side.
    Arrived,
    /// The channel to the bind address was refused: nothing listens there.
    Refused(String),
    /// The channel opened but the check never arrived (something else
    /// listens there), or the check could not be made.
    Failed(String),
}

/// The first retry after a failure, doubled per failure up to [`RETRY_CAP`]:
/// a port sshd refused because something held it is served within 30 s
/// of being freed.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_CAP: Duration = Duration::from_secs(30);

/// One host's exposures.
#[derive(Debug, Default)]
pub struct ExposeMachine {
    entries: BTreeMap<u16, Exposure>,
    /// The current master's binds (`None`: no usable master).
    link: Option<Result<Vec<RemoteBind>, String>>,
    /// Forwards to close on the current master, whose exposure is gone.
    to_unregister: VecDeque<(u16, Vec<RemoteBind>)>,
    said: VecDeque<ExposeNotice>,
    /// A command is in flight (at most one).
    busy: bool,
    /// Counts master changes; commands carry it, stale answers are ignored.
    epoch: u64,
}

impl ExposeMachine {
    pub fn exposures(&self) -> impl Iterator<Item = &Exposure> {
        self.entries.values()
    }

    pub fn exposure(&self, port: u16) -> Option<&Exposure> {
        self.entries.get(&port)
    }

    /// The wanted exposures from `source`; those of the other source stay.
    /// A remote port wanted by both keeps the runtime one (`fwdctl expose`
    /// is the later word). A changed runner target needs nothing of the
    /// master: only the daemon's relay reads it.
    pub fn set_wanted(&mut self, source: ExposeSource, wanted: Vec<ExposeSpec>, now: Instant) {
        let gone: Vec<u16> = self
            .entries
            .values()
            .filter(|e| {
                e.source == source && !wanted.iter().any(|w| w.remote_port == e.spec.remote_port)
            })
            .map(|e| e.spec.remote_port)
            .collect();
        for port in gone {
            self.remove(port);
        }
        for spec in wanted {
            self.add(source, spec, now);
        }
    }

    /// Adds or updates one exposure. `fwdctl expose` of a failed one
    /// tries it again now, on the master there is: the person asking
    /// waits for the verdict.
    pub fn add(&mut self, source: ExposeSource, spec: ExposeSpec, now: Instant) {
        let port = spec.remote_port;
        let can_register = matches!(self.link, Some(Ok(_)));
        if let Some(e) = self.entries.get_mut(&port) {
            if e.source == ExposeSource::Runtime && source == ExposeSource::Config {
                return;
            }
            e.source = source;
            e.spec = spec;
            if source == ExposeSource::Runtime
                && can_register
                && matches!(e.state, ExposeState::Failed { .. })
            {
                e.state = ExposeState::Registering;
            }
            return;
        }
        let state = match &self.link {
            None => ExposeState::WaitingForLink,
            Some(_) => ExposeState::Registering,
        };
        self.entries.insert(
            port,
            Exposure {
                spec,
                source,
                state,
                registered: Vec::new(),
                failures: 0,
                said: None,
            },
        );
        if let Some(Err(why)) = &self.link {
            let why = why.clone();
            self.fail(port, ExposeFailure::NoBind(why), now);
        }
    }

    /// Removes one exposure: `false` if there was none on that port.
    pub fn remove(&mut self, port: u16) -> bool {
        let Some(e) = self.entries.remove(&port) else {
            return false;
        };
        if !e.registered.is_empty() && self.link.is_some() {
            self.to_unregister.push_back((port, e.registered));
        }
        self.said.push_back(ExposeNotice {
            port,
            event: "expose_removed",
            warn: false,
            message: format!("no longer exposing {}", e.spec),
        });
        true
    }

    /// A new master is usable; `binds` is where sshd is to listen (or why
    /// that cannot be told). It has none of the old master's forwards.
    pub fn link_up(&mut self, binds: Result<Vec<RemoteBind>, String>, now: Instant) {
        self.to_unregister.clear();
        self.link = Some(binds.clone());
        self.epoch += 1;
        self.busy = false;
        let ports: Vec<u16> = self.entries.keys().copied().collect();
        for port in ports {
            if let Some(e) = self.entries.get_mut(&port) {
                e.registered.clear();
                e.state = ExposeState::Registering;
            }
            if let Err(why) = &binds {
                self.fail(port, ExposeFailure::NoBind(why.clone()), now);
            }
        }
    }

    /// The master is gone: everything waits for the next one.
    pub fn link_down(&mut self) {
        self.link = None;
        self.to_unregister.clear();
        self.epoch += 1;
        self.busy = false;
        for e in self.entries.values_mut() {
            e.registered.clear();
            e.state = ExposeState::WaitingForLink;
        }
    }

    fn binds(&self) -> Option<&Vec<RemoteBind>> {
        match &self.link {
            Some(Ok(b)) => Some(b),
            _ => None,
        }
    }

    /// The next thing to do, if nothing is in flight.
    pub fn poll_command(&mut self) -> Option<ExposeCommand> {
        if let Some(n) = self.said.pop_front() {
            return Some(ExposeCommand::Say(n));
        }
        if self.busy || self.link.is_none() {
            return None;
        }
        let epoch = self.epoch;
        if let Some((port, binds)) = self.to_unregister.pop_front() {
            self.busy = true;
            return Some(ExposeCommand::Unregister { epoch, port, binds });
        }
        let binds = self.binds()?.clone();
        let command = self.entries.values().find_map(|e| {
            let port = e.spec.remote_port;
            match &e.state {
                ExposeState::Registering => Some(ExposeCommand::Register {
                    epoch,
                    port,
                    binds: binds.clone(),
                }),
                ExposeState::Verifying(i) => e.registered.get(*i).map(|b| ExposeCommand::Verify {
                    epoch,
                    port,
                    at: b.verify_at,
                }),
                _ => None,
            }
        })?;
        self.busy = true;
        Some(command)
    }

    /// When [`ExposeMachine::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.link.as_ref()?;
        self.entries
            .values()
            .filter_map(|e| match &e.state {
                ExposeState::Failed { retry_at, .. } => *retry_at,
                _ => None,
            })
            .min()
    }

    /// Failed exposures whose time came are tried again.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.binds().is_none() {
            return;
        }
        for e in self.entries.values_mut() {
            if matches!(&e.state, ExposeState::Failed { retry_at: Some(at), .. } if *at <= now) {
                e.state = ExposeState::Registering;
            }
        }
    }

    /// The answer to [`ExposeCommand::Register`]: the binds sshd accepted,
    /// and the first refusal if any. A refusal closes what was accepted.
    pub fn registered(
        &mut self,
        epoch: u64,
        port: u16,
        accepted: Vec<RemoteBind>,
        refused: Option<String>,
        now: Instant,
    ) {
        if epoch != self.epoch {
            return;
        }
        self.busy = false;
        let Some(e) = self.entries.get_mut(&port) else {
            if !accepted.is_empty() {
                self.to_unregister.push_back((port, accepted));
            }
            return;
        };
        if e.state != ExposeState::Registering {
            return;
        }
        e.registered = accepted;
        match refused {
            Some(why) => self.fail(port, ExposeFailure::Refused(why), now),
            None => e.state = ExposeState::Verifying(0),
        }
    }

    /// The answer to [`ExposeCommand::Verify`].
    pub fn verified(&mut self, epoch: u64, port: u16, result: VerifyResult, now: Instant) {
        if epoch != self.epoch {
            return;
        }
        self.busy = false;
        let Some(e) = self.entries.get_mut(&port) else {
            return;
        };
        let ExposeState::Verifying(i) = e.state else {
            return;
        };
        let at = e
            .registered
            .get(i)
            .map(|b| SocketAddr::new(b.verify_at, port).to_string())
            .unwrap_or_default();
        match result {
            VerifyResult::Arrived if i + 1 < e.registered.len() => {
                e.state = ExposeState::Verifying(i + 1);
            }
            VerifyResult::Arrived => {
                e.state = ExposeState::Active;
                let was_failing = e.failures > 0;
                e.failures = 0;
                e.said = None;
                let binds: Vec<String> =
                    e.registered.iter().map(|b| format!("{b}:{port}")).collect();
                let message = format!(
                    "{}exposed: containers reach {} at host.docker.internal:{port} ({})",
                    if was_failing { "again " } else { "" },
                    e.spec.target,
                    binds.join(", ")
                );
                self.said.push_back(ExposeNotice {
                    port,
                    event: "expose_active",
                    warn: false,
                    message,
                });
            }
            VerifyResult::Refused(detail) => {
                self.fail(port, ExposeFailure::NotListening { at, detail }, now)
            }
            VerifyResult::Failed(detail) => self.fail(
                port,
                ExposeFailure::Unverified(format!("{at}: {detail}")),
                now,
            ),
        }
    }

    /// The answer to [`ExposeCommand::Unregister`] (errors are the shell's
    /// to log: the forward is forgotten either way).
    pub fn unregistered(&mut self, epoch: u64) {
        if epoch == self.epoch {
            self.busy = false;
        }
    }

    /// Marks `port` failed; what it registered is closed, and a retry is
    /// due after the capped backoff (for want of binds, or sshd's
    /// `GatewayPorts`, which this master's connection keeps: on the next
    /// master).
    fn fail(&mut self, port: u16, failure: ExposeFailure, now: Instant) {
        let Some(e) = self.entries.get_mut(&port) else {
            return;
        };
        e.failures = e.failures.saturating_add(1);
        let delay = RETRY_FIRST
            .saturating_mul(1u32 << e.failures.saturating_sub(1).min(16))
            .min(RETRY_CAP);
        let retry_at = match failure {
            ExposeFailure::NoBind(_) | ExposeFailure::NotListening { .. } => None,
            _ => Some(now + delay),
        };
        let registered = std::mem::take(&mut e.registered);
        if !registered.is_empty() {
            self.to_unregister.push_back((port, registered));
        }
        let message = failure.to_string();
        if e.said.as_deref() != Some(message.as_str()) {
            e.said = Some(message.clone());
            let when = match retry_at {
                Some(_) => "retrying, less often each time (at least every 30 s)",
                None => "tried again with the next connection",
            };
            self.said.push_back(ExposeNotice {
                port,
                event: "expose_failed",
                warn: true,
                message: format!(
                    "cannot expose {} to the host's containers: {message}; {when}",
                    e.spec
                ),
            });
        }
        e.state = ExposeState::Failed { failure, retry_at };
    }
}

#[cfg(test)]
mod tests;
