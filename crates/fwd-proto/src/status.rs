//! The `status` payload: a snapshot of everything fwdd knows.
//!
//! Every type here is part of the versioned wire schema documented in
//! `docs/control-api.md`. Rules for protocol version 1:
//!
//! * field names and enum values are `snake_case`;
//! * timestamps are Unix time in milliseconds (`*_ms` fields that are not durations);
//! * optional fields are always present and `null` when unknown (never omitted);
//! * new fields may be added within version 1, so readers must ignore unknown fields;
//!   removing or renaming a field, or changing its meaning, bumps the version.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Full answer to a `status` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon process itself.
    pub daemon: DaemonInfo,
    /// One entry per configured Docker host, in configuration order.
    pub hosts: Vec<HostStatus>,
    /// Every published container port the daemon knows about, whatever its state.
    /// Order is unspecified (fwdctl sorts by local port).
    pub forwards: Vec<ForwardStatus>,
    /// The daemon's verdict over all of the above ([`verdict`]). Added within
    /// version 1: absent from older daemons (then compute it with [`verdict`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Runner ports the hosts' containers reach (`expose`), by host and
    /// remote port. Added within version 1: empty from older daemons.
    #[serde(default)]
    pub exposed: Vec<ExposedStatus>,
    /// The open-files budget and the caps in force, and what they refused.
    /// Added within version 1: absent from older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsStatus>,
    /// Containers served by name on addresses of their own (hosts with
    /// `names = true`), by address; the unnamed ones last, with why. Added
    /// within version 1: absent from older daemons and when no host has
    /// names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<NameStatus>,
    /// Published UDP ports forwarded (hosts with `udp = true`), by local
    /// port. Added within version 1: absent from older daemons and when no
    /// host has UDP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udp: Vec<UdpStatus>,
}

/// One forwarded UDP port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpStatus {
    pub host: String,
    pub local_port: u16,
    pub container_id: String,
    pub container_name: String,
    /// Where the relay on the host sends, e.g. `127.0.0.1:5353`.
    pub remote: String,
    /// `serving`, `waiting` (no master yet, or the relay is starting),
    /// `unsupported` (the relay cannot run on the host: `reason` says why
    /// and what to do), `failed` (tried again). Readers must accept other
    /// values.
    pub state: String,
    pub reason: Option<String>,
    /// Client addresses with a session now.
    pub sessions: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Datagrams dropped here: no relay running, a full queue, a forward
    /// at its session cap.
    pub dropped: u64,
    /// Datagrams the host's relay dropped (replies past its queue), for
    /// the whole host.
    pub dropped_on_host: u64,
}

/// One container and its names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameStatus {
    pub host: String,
    pub container_id: String,
    pub container_name: String,
    /// Its address on the runner's loopback; `null` when it has none
    /// (`state` `unnamed`, `reason` says why).
    pub address: Option<std::net::Ipv4Addr>,
    /// The names that resolve to `address`.
    pub names: Vec<String>,
    /// The ports served on `address`, each going to the same port of the
    /// container's own address `to`.
    pub ports: Vec<u16>,
    pub to: Option<String>,
    /// `serving`, `failed` (a listener could not be bound: `reason`),
    /// `unnamed`. Readers must accept other values.
    pub state: String,
    pub reason: Option<String>,
    /// Names it asked for and did not get, and why.
    #[serde(default)]
    pub refused: Vec<RefusedName>,
    pub connections_open: u64,
    pub connections_total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedName {
    pub name: String,
    pub why: String,
}

/// fwdd's open-files budget (see `fwd_core::budget`): the limit it runs
/// with (its ssh masters inherit it), the caps derived from it or
/// configured, and what they refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsStatus {
    /// The soft `RLIMIT_NOFILE` fwdd runs with, after raising it to the
    /// hard limit at start.
    pub open_files_limit: u64,
    /// Descriptors fwdd has open now (`null` where they cannot be counted).
    pub open_files: Option<u64>,
    /// Descriptors no forward, exposure or client may take.
    pub reserved: u64,
    /// `max_forwards_per_container`: published ports of one container
    /// that are forwarded.
    pub forwards_per_container: u64,
    /// `max_forwards_total`: forwards in all; the latest-started claims
    /// beyond it are listed in `forwards` as `conflict`, with the reason.
    #[serde(default)]
    pub forwards_total: u64,
    /// Claimed ports not forwarded because of `forwards_total`.
    #[serde(default)]
    pub forwards_left_out: u64,
    /// `max_tunnels_per_forward`: concurrent connections of one forward.
    pub tunnels_per_forward: u64,
    /// `max_tunnels_per_exposure`: concurrent connections of one exposure.
    pub tunnels_per_exposure: u64,
    /// `max_engine_clients`: concurrent clients of one host's engine sockets.
    pub engine_clients: u64,
    /// Failed `accept(2)` calls on any of fwdd's sockets (e.g. out of
    /// descriptors), since the start.
    pub accept_failures: u64,
    /// Containers with more published ports than `forwards_per_container`:
    /// only their lowest ports are forwarded, the rest are not listed in
    /// `forwards`.
    pub capped: Vec<CappedContainer>,
}

/// A container over `max_forwards_per_container`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CappedContainer {
    pub host: String,
    pub container_id: String,
    pub container_name: String,
    /// Local ports it publishes.
    pub published: u64,
    /// How many of them are forwarded (the lowest).
    pub forwarded: u64,
}

/// One exposure: a runner address that a host's containers reach at
/// `host.docker.internal:<remote_port>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposedStatus {
    pub host: String,
    pub remote_port: u16,
    /// Where connections go on the runner, e.g. `127.0.0.1:3000`.
    pub runner: String,
    /// Where sshd listens on the host for the current master, e.g.
    /// `172.17.0.1:18080` (empty while not registered).
    pub binds: Vec<String>,
    /// `waiting` (no master), `registering`, `verifying`, `active`,
    /// `failed`. Readers must accept other values.
    pub state: String,
    /// Why it failed, with the fix when there is one.
    pub reason: Option<String>,
    /// The failure's kind: `refused` (sshd refused the forward),
    /// `gateway_ports` (sshd bound loopback only), `no_bind`, `unverified`.
    pub reason_kind: Option<String>,
    /// `config` or `runtime` (`fwdctl expose`).
    pub source: String,
    pub connections_open: u64,
    pub connections_total: u64,
    /// Connections closed because nothing answered at `runner`.
    pub connections_failed: u64,
    /// Connections closed at once because the exposure held
    /// `max_tunnels_per_exposure`. Added within version 1.
    #[serde(default)]
    pub connections_refused: u64,
    /// When a failed exposure is tried again (Unix ms); `null` while not
    /// failed, or when only the next master can help (`gateway_ports`:
    /// sshd applies its setting to new connections; `no_bind`). Added
    /// within version 1.
    #[serde(default)]
    pub next_retry_ms: Option<u64>,
}

/// How the host's remote engine is served on the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// Local socket paths (`docker.sock` for the first host, and
    /// `docker-<host>.sock`); empty when the engine socket is off or could
    /// not be bound (`reason` says why).
    pub sockets: Vec<String>,
    /// How connections reach the engine: `stream_local` (a channel over the
    /// master to the engine's socket), `dial_stdio` (a `docker system
    /// dial-stdio` session per connection), or `null` while not yet known.
    /// Readers must accept other values.
    pub route: Option<String>,
    /// The engine's socket on the remote host, once known.
    pub remote_socket: Option<String>,
    /// How it was found: `engine_remote_socket`, `DOCKER_HOST`, `docker
    /// context`, "rootless Docker's socket", "rootless Podman's socket",
    /// "Podman's socket", "Docker's default socket". Added within v1.
    #[serde(default)]
    pub found_by: Option<String>,
    /// Whether the engine runs rootless, as it says itself; `null` until it
    /// has said (or over `dial_stdio`). Added within v1.
    #[serde(default)]
    pub rootless: Option<bool>,
    /// Why the sockets are missing or the route is `dial_stdio`.
    pub reason: Option<String>,
    pub connections_open: u64,
    pub connections_total: u64,
    /// Clients closed at once because the host's engine sockets held
    /// `max_engine_clients`. Added within version 1.
    #[serde(default)]
    pub connections_refused: u64,
    /// Bytes from local clients to the engine, and from the engine back,
    /// counted when a connection ends.
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Healthy, or degraded with the reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `healthy` or `degraded`.
    pub state: HealthState,
    /// Why it is degraded, one phrase each (empty when healthy). Raw text:
    /// escape it before showing it on a terminal.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Healthy,
    Degraded,
}

impl Status {
    /// The daemon's verdict, or the same computed here for an older daemon.
    pub fn health(&self) -> Health {
        self.health.clone().unwrap_or_else(|| verdict(self))
    }
}

/// The one definition of "healthy": every host's master connected with a
/// usable network and its event stream up, and no forward in conflict.
pub fn verdict(st: &Status) -> Health {
    let mut reasons = Vec::new();
    for h in &st.hosts {
        let name = &h.name;
        if h.master.state != MasterState::Connected {
            reasons.push(format!("host {name} is {}", h.master.state));
        } else if h.master.network_lost_since_ms.is_some() {
            reasons.push(format!("host {name}: no usable network"));
        } else if h.events.state == StreamState::Down {
            // The SSH link is up but Docker cannot be followed (e.g. dockerd
            // restarting): forwards no longer track containers.
            reasons.push(format!("host {name}: docker event stream down"));
        }
    }
    let conflicts = st
        .forwards
        .iter()
        .filter(|f| f.state == ForwardState::Conflict)
        .count();
    match conflicts {
        0 => {}
        1 => reasons.push("1 forward in conflict".into()),
        n => reasons.push(format!("{n} forwards in conflict")),
    }
    for e in st.exposed.iter().filter(|e| e.state == "failed") {
        reasons.push(format!(
            "host {}: exposed port {} failed ({})",
            e.host,
            e.remote_port,
            e.reason_kind.as_deref().unwrap_or("unknown")
        ));
    }
    Health {
        state: if reasons.is_empty() {
            HealthState::Healthy
        } else {
            HealthState::Degraded
        },
        reasons,
    }
}

/// Identity of the running daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// Daemon version, e.g. `"0.1.0"` (may carry a git commit suffix).
    pub version: String,
    /// Process id of fwdd.
    pub pid: u32,
    /// When the daemon started, Unix time in milliseconds (kept across
    /// `fwdctl upgrade`: the process is the same).
    pub started_at_ms: u64,
    /// When the running image (binary) started: differs from `started_at_ms`
    /// after an upgrade. Added within version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_started_at_ms: Option<u64>,
    /// Binary upgrades this process went through. Added within version 1.
    #[serde(default)]
    pub upgrades: u32,
}

/// State of one Docker host: its SSH ControlMaster and its Docker event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Host name as given in the configuration.
    pub name: String,
    /// SSH destination used for the master, e.g. `"deploy@docker1.example.com"`.
    pub destination: String,
    /// The OpenSSH ControlMaster connection to this host.
    pub master: MasterStatus,
    /// The `docker events` stream that keeps the forward list current.
    pub events: StreamStatus,
    /// Docker engine version reported by the host (`null` until known).
    pub docker_version: Option<String>,
    /// The remote engine on a local socket. Added within version 1: absent
    /// from older daemons.
    #[serde(default)]
    pub engine: Option<EngineStatus>,
}

/// State of the SSH ControlMaster for one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MasterStatus {
    /// Current state of the master.
    pub state: MasterState,
    /// Process id of the `ssh` master process (`null` when none is running).
    pub pid: Option<u32>,
    /// When the master entered `state`, Unix time in milliseconds.
    pub since_ms: u64,
    /// Round-trip time of the last successful liveness probe, in milliseconds
    /// (`null` if no probe has succeeded on the current master).
    pub last_probe_rtt_ms: Option<f64>,
    /// Number of times the master was re-established since the daemon started.
    pub reconnects: u64,
    /// Failed connection attempts in a row (0 once connected).
    pub consecutive_failures: u32,
    /// The most recent error, kept after recovery for diagnosis (`null` if none yet).
    pub last_error: Option<ErrorInfo>,
    /// When the next connection attempt is due, Unix time in milliseconds
    /// (only set in state `backoff`, otherwise `null`).
    pub next_retry_ms: Option<u64>,
    /// Since when no network link is usable on the runner while the master
    /// is kept (it may survive a short outage), Unix ms; `null` otherwise.
    /// Added within version 1: absent from older daemons.
    #[serde(default)]
    pub network_lost_since_ms: Option<u64>,
}

/// State of an SSH ControlMaster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MasterState {
    /// A connection attempt is in progress.
    Connecting,
    /// The master is up and its last probe succeeded.
    Connected,
    /// The last attempt failed; waiting until `next_retry_ms` before the next one.
    Backoff,
    /// Not running and not going to retry (permanent error or shutdown).
    Stopped,
}

/// A classified error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Broad class deciding the retry policy: `"transient"` (retried with backoff) or
    /// `"permanent"` (needs a human, e.g. bad credentials). Readers must accept other values.
    pub class: String,
    /// Machine-readable kind, e.g. `"connection_refused"`, `"timeout"`, `"auth_failed"`,
    /// `"host_key_mismatch"`. The set grows over time; readers must accept other values.
    pub kind: String,
    /// Human-readable message (typically ssh's or docker's own words).
    pub message: String,
    /// When the error happened, Unix time in milliseconds.
    pub at_ms: u64,
}

/// State of the Docker event stream of one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// Current state of the stream.
    pub state: StreamState,
    /// Events received since the daemon started (all restarts included).
    pub events_received: u64,
    /// When the last event arrived, Unix time in milliseconds (`null` if none yet).
    pub last_event_ms: Option<u64>,
    /// Number of times the stream was restarted since the daemon started.
    pub restarts: u64,
}

/// State of a Docker event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// Events are flowing; the forward list is current.
    Streaming,
    /// The stream (re)started and the container list is being re-read.
    Resyncing,
    /// No stream (e.g. the master is down); the forward list may be stale.
    Down,
}

/// One published container port and its local forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardStatus {
    /// Name of the host (matches [`HostStatus::name`]) the container runs on.
    pub host: String,
    /// Local TCP port on the runner.
    pub local_port: u16,
    /// Local addresses actually listening, e.g. `["127.0.0.1:5432", "[::1]:5432"]`
    /// (empty when nothing is bound, e.g. in state `conflict` or `pending`).
    pub local_addrs: Vec<String>,
    /// The port published on the Docker host, as the host sees it, e.g.
    /// `"127.0.0.1:5432"`. Where connections go is `route.to`.
    pub remote: String,
    /// Full container id.
    pub container_id: String,
    /// Container name, without the leading `/`.
    pub container_name: String,
    /// Value of the `com.docker.compose.project` label, if any.
    pub compose_project: Option<String>,
    /// Value of the `com.docker.compose.service` label (the same in compose
    /// v1 and v2), if any: `fwdctl wait web` finds a service's containers
    /// by it. Added within version 1: `null` from older daemons.
    #[serde(default)]
    pub compose_service: Option<String>,
    /// The container-side port and protocol, e.g. `"5432/tcp"`.
    pub container_port: String,
    /// State of this forward.
    pub state: ForwardState,
    /// Why the forward is not `active` (`null` when active).
    pub reason: Option<String>,
    /// When the forward entered `state`, Unix time in milliseconds.
    pub since_ms: u64,
    /// Client connections currently open through this forward.
    pub connections_open: u64,
    /// Client connections accepted through this forward since it was created.
    pub connections_total: u64,
    /// Client connections closed at once because the forward held
    /// `max_tunnels_per_forward`. Added within version 1.
    #[serde(default)]
    pub connections_refused: u64,
    /// Which way connections reach the container, and why (`null` for an
    /// unsupported port, and from a daemon older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<ForwardRoute>,
}

/// Which way a forward's connections reach its container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRoute {
    pub kind: RouteKind,
    /// Where connections go, as the Docker host sees it: the container's
    /// own address and port (`direct`), or the published port.
    pub to: String,
    /// Why this route, e.g. `"the engine runs rootless: …"`.
    pub why: String,
    /// The direct route was tried and failed for this run of the
    /// container: `why` says how, and connections take the published port.
    #[serde(default)]
    pub fell_back: bool,
}

/// How a forward's connections reach its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// To the container's own address on a bridge network: a channel
    /// straight to it, no docker-proxy.
    Direct,
    /// To the port published on the Docker host (through docker-proxy on a
    /// rootful engine, the rootless engine's port driver otherwise).
    Published,
}

/// State of one forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardState {
    /// Listening locally and forwarding.
    Active,
    /// The local port could not be bound (used by another process or another forward).
    Conflict,
    /// Being set up (listener or master not ready yet).
    Pending,
    /// Cannot be forwarded (e.g. a UDP port); see `reason`.
    Unsupported,
}

macro_rules! wire_names {
    ($ty:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// The value's name on the wire (`snake_case`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(<$ty>::$variant => $name,)*
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

wire_names!(RouteKind {
    Direct => "direct",
    Published => "published",
});

wire_names!(MasterState {
    Connecting => "connecting",
    Connected => "connected",
    Backoff => "backoff",
    Stopped => "stopped",
});
wire_names!(StreamState {
    Streaming => "streaming",
    Resyncing => "resyncing",
    Down => "down",
});
wire_names!(ForwardState {
    Active => "active",
    Conflict => "conflict",
    Pending => "pending",
    Unsupported => "unsupported",
});
