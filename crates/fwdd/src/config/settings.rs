//! The validated configuration the daemon runs with.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub runtime_dir: PathBuf,
    pub log_format: LogFormat,
    /// How long a connection accepted while the master is down waits for it.
    pub connect_wait: Duration,
    /// How long after a container starts a refused channel is retried
    /// instead of closing the client (its service is not listening yet).
    /// Zero turns it off.
    pub startup_window: Duration,
    /// How often a port taken by another program is tried again.
    pub conflict_retry: Duration,
    pub retry: RetryConfig,
    /// How often the full container list is read again, repairing any drift
    /// between Docker and the listeners (e.g. a silently stuck event stream).
    pub resync_interval: Duration,
    /// Which ports are forwarded where (first match wins; see fwd-core rules).
    pub rules: fwd_core::Rules,
    /// A group whose members may use the engine sockets too (shared runners).
    pub engine_socket_group: Option<SocketGroup>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; off if `None`.
    pub metrics: Option<std::net::SocketAddr>,
    /// Caps on what one party may hold (`max_forwards_per_container`,
    /// `max_tunnels_per_forward`, …); unset: derived from the open-files
    /// limit (`fwd_core::budget`).
    pub limits: fwd_core::LimitSettings,
    /// Every container by name (issue 31): where addresses come from, how
    /// names are spelled, which system hosts file holds fwd's block.
    pub names: NamesConfig,
    /// `udp_idle`: a UDP session without traffic for this long ends.
    pub udp_idle: Duration,
    pub hosts: Vec<HostConfig>,
}

/// The daemon-wide settings of names (each host turns them on with
/// `names = true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamesConfig {
    /// `names_range`: the loopback block names' addresses come from.
    pub range: fwd_core::names::AddressRange,
    /// `names_suffix`: every name also as `<name>.<suffix>`.
    pub suffix: Option<String>,
    /// `hosts_file`: the system hosts file fwd keeps a block in; `None`:
    /// only fwd's own file in the runtime directory.
    pub hosts_file: Option<PathBuf>,
}

/// `engine_socket_group`, resolved when the configuration is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketGroup {
    pub name: String,
    pub gid: u32,
}

/// Pacing of reconnects after a failure.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    pub backoff: fwd_core::BackoffPolicy,
    /// Retry pace after a failure that will not heal by itself (refused
    /// key, changed host key, bad ssh config, docker missing).
    pub permanent_retry: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// A name, never a path: checked by `check_host_name` (written in
    /// the file) or made valid (derived from the URL).
    pub name: String,
    pub ssh: fwd_ssh::MasterConfig,
    pub health_interval: Duration,
    /// How long an engine found by the search may be gone (restarting,
    /// stopped) before another engine found on the host is taken.
    pub engine_gone_after: Duration,
    /// At most this many forwards for the host (the earliest-started
    /// containers keep theirs); `None` = no cap.
    pub max_forwards: Option<usize>,
    /// Serve the remote engine on a local socket (`docker-<name>.sock`).
    pub engine_socket: bool,
    /// The engine's socket on the remote host; `None`: ask the remote
    /// docker CLI (its `DOCKER_HOST`, its context, else the default).
    pub engine_remote_socket: Option<String>,
    /// Runner ports the host's containers reach (remote forwards).
    pub expose: Vec<fwd_core::ExposeSpec>,
    /// Where on the host sshd listens for them.
    pub expose_on: Vec<fwd_core::BindScope>,
    /// Forwards may reach containers at their own address (see
    /// `fwd_core::route`); off: always the published port.
    pub direct_route: bool,
    /// Every running container by name, on an address of its own.
    pub names: bool,
    /// Published UDP ports too, through a relay fwd starts on the host.
    pub udp: bool,
}

impl HostConfig {
    /// The settings a running host's connection depends on: a reload that
    /// changes only the exposures keeps the master and its tunnels.
    pub fn connection(&self) -> HostConfig {
        HostConfig {
            expose: Vec::new(),
            expose_on: Vec::new(),
            // Read by every plan: a change needs no new connection.
            direct_route: true,
            names: false,
            udp: false,
            ..self.clone()
        }
    }
}

/// What the command line contributes (flags win over the file).
#[derive(Debug, Default)]
pub struct CliOverrides {
    pub config_file: Option<PathBuf>,
    pub hosts: Vec<String>,
    pub ssh_config: Option<PathBuf>,
    pub identity_file: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub metrics: Option<String>,
}
