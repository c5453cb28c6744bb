//! `fwdctl doctor`: what each probe of a Docker host's setup means, and
//! what to do about it. The probes run elsewhere (they are I/O); each
//! function here turns one probe's raw answer into a [`Check`]: a verdict,
//! what was seen, and the fix.

use crate::classify::{classify_ssh_failure, FailureKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Pass,
    /// Works, but something fwd can use is missing (e.g. `expose`).
    Warn,
    Fail,
    /// Not checked: an earlier check failed.
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
            Verdict::Skip => "skip",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn with(
        name: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            verdict,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn skipped(name: &'static str, why: &str) -> Check {
        Check {
            name,
            verdict: Verdict::Skip,
            detail: format!("not checked: {why}"),
            fix: None,
        }
    }
}

/// The oldest OpenSSH whose mux fwd needs: stream-local forwards and remote
/// forwards to a Unix socket came in 6.7; 7.6 is the oldest tested.
pub const MIN_OPENSSH: (u32, u32) = (7, 6);

/// `ssh -V`'s output (its stderr), or why it could not run.
pub fn ssh_client(version: Result<&str, &str>) -> Check {
    let name = "ssh client";
    let text = match version {
        Ok(t) => t.trim(),
        Err(e) => {
            return Check::with(
                name,
                Verdict::Fail,
                format!("cannot run ssh: {e}"),
                "install OpenSSH's client (apt-get install openssh-client), or name it with ssh_program",
            )
        }
    };
    let parsed = text.strip_prefix("OpenSSH_").and_then(|v| {
        let end = v.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (major, minor) = v[..end].split_once('.')?;
        Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
    });
    match parsed {
        Some(v) if v >= MIN_OPENSSH => Check::pass(name, text.to_string()),
        Some((a, b)) => Check::with(
            name,
            Verdict::Fail,
            format!("{text}: OpenSSH {a}.{b} is older than {}.{}", MIN_OPENSSH.0, MIN_OPENSSH.1),
            "install a newer OpenSSH client",
        ),
        None => Check::with(
            name,
            Verdict::Fail,
            format!("{text:?} is not OpenSSH's ssh"),
            "fwd drives OpenSSH's ControlMaster: install OpenSSH's client, or name it with ssh_program",
        ),
    }
}

/// The connection: `Ok` when a master came up, else ssh's stderr. Gives
/// the host key, authentication and reachability checks.
pub fn connection(result: Result<(), &str>, host: &str, port: Option<u16>) -> Vec<Check> {
    connection_with_keys(result, host, port, &[])
}

/// [`connection`], naming the keys that were offered (from [`offered_keys`])
/// when the host refused them.
pub fn connection_with_keys(
    result: Result<(), &str>,
    host: &str,
    port: Option<u16>,
    offered: &[String],
) -> Vec<Check> {
    let stderr = match result {
        Ok(()) => {
            return vec![
                Check::pass(REACH, "an ssh master is up"),
                Check::pass(HOST_KEY, "known and matching"),
                Check::pass(AUTH, "accepted"),
            ]
        }
        Err(s) => s,
    };
    let said = stderr.lines().last().unwrap_or("").trim();
    match classify_ssh_failure(stderr) {
        FailureKind::HostKey => host_key_refused(stderr, said, host, port),
        FailureKind::AuthRefused => auth_refused(said, offered),
        FailureKind::NameResolution => vec![
            Check::with(
                REACH,
                Verdict::Fail,
                said.to_string(),
                "check the host name and DNS",
            ),
            Check::skipped(HOST_KEY, "no connection"),
            Check::skipped(AUTH, "no connection"),
        ],
        kind => vec![
            Check::with(
                REACH,
                Verdict::Fail,
                format!("{}: {said}", kind.as_str()),
                kind.hint(),
            ),
            Check::skipped(HOST_KEY, "no connection"),
            Check::skipped(AUTH, "no connection"),
        ],
    }
}

/// The names of the three checks [`connection_with_keys`] gives.
const HOST_KEY: &str = "host key";
const AUTH: &str = "authentication";
const REACH: &str = "connection";

/// The host answered but its key is not trusted: a changed key is a warning
/// to stop and look, an unknown one is added after comparing fingerprints.
fn host_key_refused(stderr: &str, said: &str, host: &str, port: Option<u16>) -> Vec<Check> {
    let changed = stderr
        .to_ascii_lowercase()
        .contains("identification has changed");
    let key = if changed {
        Check::with(
            HOST_KEY,
            Verdict::Fail,
            format!("the host's key CHANGED: {said}"),
            "find out why before anything else (a reinstalled host, or someone in between); \
             then remove the old key with ssh-keygen -R and add the new one",
        )
    } else {
        let keyscan = match port {
            Some(p) => format!("ssh-keyscan -p {p} {host}"),
            None => format!("ssh-keyscan {host}"),
        };
        Check::with(
            HOST_KEY,
            Verdict::Fail,
            format!("the host's key is not known: {said}"),
            format!(
                "compare the fingerprint of `{keyscan} | ssh-keygen -lf -` with the host's own \
                 (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub there), then: \
                 {keyscan} >> ~/.ssh/known_hosts"
            ),
        )
    };
    vec![
        Check::pass(REACH, "the host answers"),
        key,
        Check::skipped(AUTH, "no trusted connection"),
    ]
}

/// The host refused every key: which methods it named and which keys were
/// offered, so the user knows which public key to install.
fn auth_refused(said: &str, offered: &[String]) -> Vec<Check> {
    let methods = said
        .split_once("Permission denied")
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let keys = match offered {
        [] => String::new(),
        keys => format!(": refused {}", keys.join("; ")),
    };
    vec![
        Check::pass(REACH, "the host answers"),
        Check::pass(HOST_KEY, "known and matching"),
        Check::with(
            AUTH,
            Verdict::Fail,
            format!("the host refused every key offered {methods}{keys}"),
            "put the public key of the identity fwd uses (identity_file, or the agent's) \
             into the remote user's ~/.ssh/authorized_keys; `ssh -v` shows which keys were tried",
        ),
    ]
}

/// The keys ssh offered, from `ssh -v`'s `Offering public key: <file> <type>
/// <fingerprint> …` lines, each once.
pub fn offered_keys(verbose: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for line in verbose.lines() {
        if let Some((_, key)) = line.split_once("Offering public key: ") {
            let key = key.trim().to_string();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// How many of `wanted` sessions opened at once: fwd's dial-stdio fallback
/// runs up to that many when stream-local channels are refused.
pub fn sessions(opened: usize, wanted: usize) -> Check {
    let name = "sessions";
    if opened >= wanted {
        Check::pass(name, format!("{wanted} sessions at once"))
    } else {
        Check::with(
            name,
            Verdict::Warn,
            format!("only {opened} of {wanted} sessions opened at once (sshd's MaxSessions)"),
            format!(
                "fwd needs no sessions while stream-local channels work; its dial-stdio \
                 fallback opens up to {wanted}: raise MaxSessions (default 10) for the user"
            ),
        )
    }
}

/// Where the engine was found and how, or every place looked at.
pub fn engine_location(found: Result<(&str, &str), &str>) -> Check {
    let name = "engine location";
    match found {
        Ok((path, how)) => Check::pass(name, format!("{path} ({how})")),
        Err(why) => Check::with(
            name,
            Verdict::Fail,
            why.to_string(),
            "start the engine, give the remote user access to it (the docker group), or set \
             engine_remote_socket to the socket it listens on",
        ),
    }
}

/// How the engine answered: through a stream-local channel (what fwd uses)
/// and, when that failed, through the remote CLI in a session.
pub struct EngineProbe<'a> {
    /// `Ok(version)` through the stream-local channel, `Err(why)` otherwise.
    pub stream_local: Result<&'a str, &'a str>,
    /// The remote `docker version` in a session: `Ok(version)`, or its
    /// error output; `None` when not asked (stream-local worked).
    pub cli: Option<Result<&'a str, &'a str>>,
    pub socket: &'a str,
}

/// The stream-local check and the engine check, from one probe.
pub fn engine(p: &EngineProbe) -> Vec<Check> {
    let (sl, eng) = ("stream-local forwarding", "engine");
    let version = match p.stream_local {
        Ok(v) => {
            return vec![
                Check::pass(sl, format!("a channel to {} works", p.socket)),
                Check::pass(eng, v.to_string()),
            ]
        }
        Err(why) => why,
    };
    match p.cli {
        Some(Ok(v)) => vec![
            Check::with(
                sl,
                Verdict::Fail,
                format!(
                    "the engine answers its CLI ({v}) but a channel to {} does not: {version}",
                    p.socket
                ),
                "allow stream-local forwarding for the user in sshd_config \
                 (AllowStreamLocalForwarding yes, the default; no `restrict` without \
                 `port-forwarding` in authorized_keys); meanwhile fwd falls back to \
                 `docker system dial-stdio` sessions",
            ),
            Check::pass(eng, format!("{v} (through the remote CLI)")),
        ],
        Some(Err(said)) => {
            let lower = said.to_ascii_lowercase();
            let fix = if lower.contains("permission denied") {
                "the remote user may not use the engine's socket: add it to the docker group \
                 (then log in again), or use a rootless engine's socket"
            } else if lower.contains("not found") || lower.contains("no such file") {
                "nothing listens there: start the engine, or set engine_remote_socket to where it listens"
            } else {
                "see what the engine said; `docker version` on the host as the same user shows the same"
            };
            vec![
                Check::skipped(sl, "the engine does not answer at all"),
                Check::with(
                    eng,
                    Verdict::Fail,
                    format!("{}: {}", p.socket, said.lines().last().unwrap_or("").trim()),
                    fix,
                ),
            ]
        }
        None => vec![
            Check::with(
                sl,
                Verdict::Fail,
                format!("a channel to {} failed: {version}", p.socket),
                "check AllowStreamLocalForwarding in the host's sshd_config",
            ),
            Check::skipped(eng, "no way to reach it"),
        ],
    }
}

/// A remote forward on the bridge gateway, and whether a connection to it
/// arrived back here (`expose` needs it).
pub fn gateway_ports(result: Result<bool, &str>, at: &str) -> Check {
    let name = "GatewayPorts (expose)";
    let fix = "for `expose`, let sshd bind the address fwd asks for: `GatewayPorts \
               clientspecified` in the host's sshd_config, e.g. in a `Match User <user>` block, \
               then reload sshd";
    match result {
        Ok(true) => Check::pass(name, format!("a remote forward on {at} reaches this machine")),
        Ok(false) => Check::with(
            name,
            Verdict::Warn,
            format!("sshd accepted a remote forward on {at} but bound it to loopback only (GatewayPorts no)"),
            fix,
        ),
        Err(why) => Check::with(
            name,
            Verdict::Warn,
            format!("sshd refused a remote forward on {at}: {why}"),
            format!("{fix}; AllowTcpForwarding must allow remote forwards too"),
        ),
    }
}

/// The runner's and the host's clocks (Unix seconds), and the round trip
/// the remote reading took. Events carry the host's clock; fwd resumes its
/// event stream from the host's time, so only a large skew matters.
pub fn clock_skew(local: i64, remote: i64, rtt_secs: i64) -> Check {
    let name = "clock";
    // The reading is somewhere within the round trip: only what exceeds it counts.
    let skew = ((remote - local).abs() - rtt_secs).max(0);
    let detail = format!(
        "the host's clock is {}s {} this machine's",
        (remote - local).abs(),
        if remote >= local {
            "ahead of"
        } else {
            "behind"
        }
    );
    let fix = "run NTP (chrony, systemd-timesyncd) on both machines";
    match skew {
        0..=5 => Check::pass(name, detail),
        6..=300 => Check::with(name, Verdict::Warn, detail, fix),
        _ => Check::with(name, Verdict::Fail, detail, fix),
    }
}

/// The runtime directory: absent (fwdd creates it), or private to us.
pub fn runtime_dir(path: &str, state: Option<(u32, u32)>, euid: u32) -> Check {
    let name = "runtime directory";
    match state {
        None => Check::pass(name, format!("{path} (created by fwdd when it starts)")),
        Some((_, owner)) if owner != euid => Check::with(
            name,
            Verdict::Fail,
            format!("{path} belongs to uid {owner}, not {euid}"),
            "remove it, or run fwdd as its owner (fwdd refuses a directory it does not own)",
        ),
        Some((mode, _)) if mode & 0o077 & !0o010 != 0 => Check::with(
            name,
            Verdict::Fail,
            format!("{path} is mode {mode:03o}: others can reach the sockets in it"),
            format!("chmod 700 {path}"),
        ),
        Some((mode, _)) => Check::pass(name, format!("{path}, mode {mode:03o}, ours")),
    }
}

#[cfg(test)]
mod tests;
