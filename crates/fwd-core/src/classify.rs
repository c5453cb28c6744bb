//! Failure classes from what ssh printed when it gave up.
//!
//! Transient failures are retried with backoff; permanent ones (the remote
//! side refused *us*, or our configuration is wrong) will not heal by
//! knocking again, so the daemon says so once and retries only slowly.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureClass {
    Transient,
    Permanent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    Timeout,
    ConnectionRefused,
    ConnectionReset,
    Unreachable,
    NameResolution,
    MasterDied,
    StreamEnded,
    AuthRefused,
    HostKey,
    InvalidConfig,
    DockerMissing,
    /// No engine in any place it is looked for (`discovery`): it may be
    /// starting, so tried again with the backoff.
    EngineNotFound,
    /// fwdd or the system ran out of descriptors, processes or memory (a
    /// master could not be started): it passes when the flood does.
    OutOfResources,
    Unknown,
}

impl FailureKind {
    pub fn class(self) -> FailureClass {
        match self {
            FailureKind::AuthRefused
            | FailureKind::HostKey
            | FailureKind::InvalidConfig
            | FailureKind::DockerMissing => FailureClass::Permanent,
            _ => FailureClass::Transient,
        }
    }

    /// Stable snake_case name for logs and the control API.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::ConnectionRefused => "connection_refused",
            FailureKind::ConnectionReset => "connection_reset",
            FailureKind::Unreachable => "unreachable",
            FailureKind::NameResolution => "name_resolution",
            FailureKind::MasterDied => "master_died",
            FailureKind::StreamEnded => "stream_ended",
            FailureKind::AuthRefused => "auth_refused",
            FailureKind::HostKey => "host_key",
            FailureKind::InvalidConfig => "invalid_config",
            FailureKind::DockerMissing => "docker_missing",
            FailureKind::EngineNotFound => "engine_not_found",
            FailureKind::OutOfResources => "out_of_resources",
            FailureKind::Unknown => "unknown",
        }
    }

    /// What a person should do about it.
    pub fn hint(self) -> &'static str {
        match self {
            FailureKind::AuthRefused => {
                "the Docker host refused our key: check the identity file and the host's authorized_keys"
            }
            FailureKind::HostKey => {
                "host key verification failed: add the host's key to known_hosts (ssh-keyscan), or investigate a changed key"
            }
            FailureKind::InvalidConfig => "ssh rejected its configuration: fix the ssh options or ssh config file",
            FailureKind::DockerMissing => "the host could not run what fwd asked (the docker CLI for dial-stdio sessions, or fwd's command to find the engine): see the message",
            FailureKind::EngineNotFound => "the message lists each place fwd looked for the engine",
            FailureKind::NameResolution => "the host name does not resolve: check DNS or the host name",
            FailureKind::OutOfResources => "fwdd or the system is out of descriptors, processes or memory: retrying with backoff (fwdctl status shows the open-files limit and what holds descriptors)",
            _ => "retrying with backoff",
        }
    }
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Permanent => "permanent",
        }
    }
}

/// Classifies ssh's stderr (the master's, or a mux client's). The most
/// specific match wins: an authentication failure is also "connection closed".
pub fn classify_ssh_failure(stderr: &str) -> FailureKind {
    let s = stderr.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    if has(&[
        "host key verification failed",
        "remote host identification has changed",
        "host key for",
        "no matching host key type",
    ]) {
        FailureKind::HostKey
    } else if has(&[
        "permission denied",
        "too many authentication failures",
        "no supported authentication methods",
    ]) {
        FailureKind::AuthRefused
    } else if has(&[
        "bad configuration option",
        "bad owner or permissions",
        "unsupported option",
        "garbage at end of line",
        "missing argument",
        "no user exists for uid",
        "can't open user config file",
        "terminating, 1 bad configuration",
    ]) {
        FailureKind::InvalidConfig
    } else if has(&[
        "could not resolve hostname",
        "name or service not known",
        "temporary failure in name resolution",
        "nodename nor servname",
    ]) {
        FailureKind::NameResolution
    } else if has(&["connection refused"]) {
        FailureKind::ConnectionRefused
    } else if has(&["timed out", "timeout, server"]) {
        FailureKind::Timeout
    } else if has(&["no route to host", "network is unreachable", "host is down"]) {
        FailureKind::Unreachable
    } else if has(&[
        "connection reset",
        "broken pipe",
        "connection closed by",
        "closed by remote host",
        "kex_exchange_identification",
    ]) {
        FailureKind::ConnectionReset
    } else {
        FailureKind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_ssh_messages_are_classified() {
        let cases = [
            ("root@10.0.0.1: Permission denied (publickey).", FailureKind::AuthRefused),
            ("Host key verification failed.", FailureKind::HostKey),
            (
                "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.",
                FailureKind::HostKey,
            ),
            ("ssh: connect to host 10.231.0.1 port 22: Connection refused", FailureKind::ConnectionRefused),
            ("ssh: connect to host 10.231.0.1 port 22: Connection timed out", FailureKind::Timeout),
            ("Timeout, server 10.231.0.1 not responding.", FailureKind::Timeout),
            ("ssh: connect to host 10.9.9.9 port 22: No route to host", FailureKind::Unreachable),
            ("ssh: Could not resolve hostname nope: Name or service not known", FailureKind::NameResolution),
            ("/tmp/cfg: line 3: Bad configuration option: bogus", FailureKind::InvalidConfig),
            ("Connection reset by 10.231.0.1 port 22", FailureKind::ConnectionReset),
            ("Connection closed by 10.231.0.1 port 22", FailureKind::ConnectionReset),
            (
                "Connection to 10.168.0.5 closed by remote host.",
                FailureKind::ConnectionReset,
            ),
            ("something new", FailureKind::Unknown),
        ];
        for (text, kind) in cases {
            assert_eq!(classify_ssh_failure(text), kind, "{text}");
        }
        assert_eq!(FailureKind::AuthRefused.class(), FailureClass::Permanent);
        assert_eq!(FailureKind::Timeout.class(), FailureClass::Transient);
    }
}
