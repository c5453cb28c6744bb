//! Wire protocol of the fwdd control socket, shared by `fwdd` and `fwdctl`.
//!
//! Newline-delimited JSON over a Unix stream socket: the client writes one request per
//! line, the daemon answers each with exactly one response line, in order. Both carry
//! `"v": 1` ([`PROTOCOL_VERSION`]). The schema is documented in `docs/control-api.md`.
//!
//! ```text
//! -> {"v":1,"cmd":"status"}
//! <- {"v":1,"ok":true,"status":{...}}
//! -> {"v":1,"cmd":"probe","port":5432}
//! <- {"v":1,"ok":true,"probe":{"port":5432}}
//! -> {"v":1,"cmd":"reconnect","host":null}
//! <- {"v":1,"ok":true,"reconnect":{"hosts":["ci-docker"]}}
//! -> {"v":1,"cmd":"bogus"}
//! <- {"v":1,"ok":false,"error":"unknown command \"bogus\" (supported: status, ...)"}
//! -> {"v":1,"cmd":"watch"}
//! <- {"v":1,"ok":true,"event":{"kind":"snapshot","at_ms":...,"status":{...}}}
//! <- {"v":1,"ok":true,"event":{"kind":"forward_added","at_ms":...,"forward":{...}}}
//! ...                                          (until the client disconnects)
//! ```

use serde::{Deserialize, Serialize, Serializer};
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

mod events;
mod status;
pub mod term;

pub use events::{diff, Event};
pub use status::{
    verdict, CappedContainer, DaemonInfo, EngineStatus, ErrorInfo, ExposedStatus, ForwardRoute,
    ForwardState, ForwardStatus, Health, HealthState, HostStatus, LimitsStatus, MasterState,
    MasterStatus, NameStatus, RefusedName, RouteKind, Status, StreamState, StreamStatus, UdpStatus,
};

/// Version carried as `"v"` by every request and response.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon accepts, in bytes, excluding the trailing newline.
pub const MAX_LINE: usize = 64 * 1024;

/// File name of the control socket inside the runtime directory.
pub const CONTROL_SOCKET_NAME: &str = "control.sock";

/// Environment variable naming the control socket (used by fwdctl).
pub const SOCKET_ENV: &str = "FWD_SOCKET";

/// A request from a client.
///
/// On the wire the object also carries `"v"`; build lines with [`encode_request`], not
/// [`encode_line`] (which would omit the version). New commands are added as new
/// variants; a daemon that does not know a command answers with an error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// `{"v":1,"cmd":"status"}`: a full [`Status`] snapshot.
    Status,
    /// `{"v":1,"cmd":"probe","port":5432}`: whether a connection through the forward of
    /// local `port` reaches a listener on the remote side right now.
    Probe {
        /// Local port of the forward (1-65535).
        port: u16,
    },
    /// `{"v":1,"cmd":"watch"}`: a stream of [`Event`]s, starting with a snapshot, until
    /// the client disconnects.
    Watch,
    /// `{"v":1,"cmd":"reconnect","host":null}`: replace the ssh master of `host` (all
    /// hosts when `null` or absent) now.
    Reconnect {
        /// Host name from the daemon's configuration; `None` for all hosts.
        #[serde(default)]
        host: Option<String>,
    },
    /// `{"v":1,"cmd":"resync","host":null}`: list and inspect every container of `host`
    /// (all hosts when `null` or absent) again now.
    Resync {
        /// Host name from the daemon's configuration; `None` for all hosts.
        #[serde(default)]
        host: Option<String>,
    },
    /// `{"v":1,"cmd":"upgrade"}`: replace the running image with the binary now
    /// at the path fwdd was started from, in place, handing over every
    /// listener, master and tunnel. Answered by the new image
    /// ([`Response::Upgrade`]), or with an error by the old one, which keeps
    /// running.
    Upgrade,
    /// `{"v":1,"cmd":"expose","host":null,"spec":"18080"}`: make a runner
    /// port reachable from `host`'s containers (the first host when `null`
    /// or absent) until `unexpose`. `spec` is an `expose` entry of the
    /// configuration.
    Expose {
        #[serde(default)]
        host: Option<String>,
        spec: String,
    },
    /// `{"v":1,"cmd":"unexpose","host":null,"port":18080}`: end an exposure.
    Unexpose {
        #[serde(default)]
        host: Option<String>,
        port: u16,
    },
    /// `{"v":1,"cmd":"metrics"}`: the Prometheus exposition, in the classic
    /// text format (for node_exporter's textfile collector).
    Metrics,
}

impl Request {
    /// Every `cmd` value this version of the protocol knows.
    pub const COMMANDS: &'static [&'static str] = &[
        "status",
        "probe",
        "watch",
        "reconnect",
        "resync",
        "upgrade",
        "expose",
        "unexpose",
        "metrics",
    ];

    /// The `cmd` value of this request.
    pub fn cmd(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Probe { .. } => "probe",
            Request::Watch => "watch",
            Request::Reconnect { .. } => "reconnect",
            Request::Resync { .. } => "resync",
            Request::Upgrade => "upgrade",
            Request::Expose { .. } => "expose",
            Request::Unexpose { .. } => "unexpose",
            Request::Metrics => "metrics",
        }
    }
}

/// Machine-readable error code carried by some error responses as `"code"`.
pub mod error_code {
    /// `reconnect` / `resync` named a host the daemon does not have.
    pub const UNKNOWN_HOST: &str = "unknown_host";
    /// `probe`: the port is not forwarded, or the probe did not reach a listener.
    pub const PROBE_FAILED: &str = "probe_failed";
    /// `upgrade`: the new binary was refused or could not take over; the running
    /// image keeps serving.
    pub const UPGRADE_REFUSED: &str = "upgrade_refused";
    /// `expose` / `unexpose`: a bad entry, or a port that is not exposed.
    pub const EXPOSE_REFUSED: &str = "expose_refused";
}

/// A response from the daemon: exactly one per request line, except for `watch`, which
/// is answered by a stream of [`Response::Event`] lines.
///
/// Wire shape: `{"v":1,"ok":true,"<kind>":{...}}` for success (the key names the payload
/// kind) and `{"v":1,"ok":false,"error":"message"}` (plus `"code"` for some errors) for
/// failure.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "WireResponse")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(Status),
    /// Answer to a successful [`Request::Probe`]: `{"probe":{"port":5432}}`.
    Probe {
        /// The probed local port.
        port: u16,
    },
    /// Answer to [`Request::Reconnect`]: the hosts whose master is being replaced.
    Reconnect {
        /// Host names, in configuration order.
        hosts: Vec<String>,
    },
    /// Answer to [`Request::Resync`]: the hosts being resynchronised.
    Resync {
        /// Host names, in configuration order.
        hosts: Vec<String>,
    },
    /// Answer to [`Request::Upgrade`], written by the new image once it serves.
    Upgrade(UpgradeReport),
    /// One line of a `watch` stream.
    Event(Event),
    /// Answer to [`Request::Expose`]: `{"expose":{"host":..,"remote_port":..,"runner":..}}`.
    Expose(ExposeChange),
    /// Answer to [`Request::Unexpose`].
    Unexpose(ExposeChange),
    /// Answer to [`Request::Metrics`]: `{"metrics":{"text":"# HELP …"}}`.
    Metrics { text: String },
    /// The request failed; `message` is meant for people.
    Error {
        /// Human-readable description of what went wrong.
        message: String,
        /// Machine-readable code (see [`error_code`]), when there is one.
        code: Option<String>,
    },
}

impl Response {
    /// An error response without a code.
    pub fn error(message: impl Into<String>) -> Self {
        Response::Error {
            message: message.into(),
            code: None,
        }
    }

    /// An error response with a machine-readable `code` (see [`error_code`]).
    pub fn error_with_code(message: impl Into<String>, code: &str) -> Self {
        Response::Error {
            message: message.into(),
            code: Some(code.to_string()),
        }
    }
}

/// What a binary upgrade kept: `{"upgrade":{"from":"0.1.0","to":"0.2.0",...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReport {
    /// Version of the image that was replaced.
    pub from: String,
    /// Version of the image now running (the one answering).
    pub to: String,
    /// The daemon's pid, the same before and after.
    pub pid: u32,
    /// Listening sockets handed over: forwards, engine sockets, the control socket.
    pub listeners: usize,
    /// ssh masters kept.
    pub masters: usize,
    /// Tunnels (forwarded connections) kept open.
    pub tunnels: usize,
    /// Engine socket connections carried on.
    pub engine_connections: usize,
}

/// An exposure that `expose` made or `unexpose` ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposeChange {
    pub host: String,
    pub remote_port: u16,
    /// Where its connections go on the runner.
    pub runner: String,
}

#[derive(Serialize, Deserialize)]
struct MetricsPayload<T> {
    text: T,
}

#[derive(Serialize, Deserialize)]
struct ProbePayload {
    port: u16,
}

#[derive(Serialize, Deserialize)]
struct HostsPayload<H> {
    hosts: H,
}

#[derive(Serialize)]
struct WireResponseRef<'a> {
    v: u32,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    probe: Option<ProbePayload>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect: Option<HostsPayload<&'a [String]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resync: Option<HostsPayload<&'a [String]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upgrade: Option<&'a UpgradeReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a Event>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expose: Option<&'a ExposeChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unexpose: Option<&'a ExposeChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<MetricsPayload<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct WireResponse {
    v: u32,
    ok: bool,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    probe: Option<ProbePayload>,
    #[serde(default)]
    reconnect: Option<HostsPayload<Vec<String>>>,
    #[serde(default)]
    resync: Option<HostsPayload<Vec<String>>>,
    #[serde(default)]
    upgrade: Option<UpgradeReport>,
    #[serde(default)]
    event: Option<Event>,
    #[serde(default)]
    expose: Option<ExposeChange>,
    #[serde(default)]
    unexpose: Option<ExposeChange>,
    #[serde(default)]
    metrics: Option<MetricsPayload<String>>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut w = WireResponseRef {
            v: PROTOCOL_VERSION,
            ok: true,
            status: None,
            probe: None,
            reconnect: None,
            resync: None,
            upgrade: None,
            event: None,
            expose: None,
            unexpose: None,
            metrics: None,
            error: None,
            code: None,
        };
        match self {
            Response::Status(st) => w.status = Some(st),
            Response::Probe { port } => w.probe = Some(ProbePayload { port: *port }),
            Response::Reconnect { hosts } => w.reconnect = Some(HostsPayload { hosts }),
            Response::Resync { hosts } => w.resync = Some(HostsPayload { hosts }),
            Response::Upgrade(u) => w.upgrade = Some(u),
            Response::Event(e) => w.event = Some(e),
            Response::Expose(c) => w.expose = Some(c),
            Response::Unexpose(c) => w.unexpose = Some(c),
            Response::Metrics { text } => w.metrics = Some(MetricsPayload { text }),
            Response::Error { message, code } => {
                w.ok = false;
                w.error = Some(message);
                w.code = code.as_deref();
            }
        }
        w.serialize(s)
    }
}

impl TryFrom<WireResponse> for Response {
    type Error = String;

    fn try_from(w: WireResponse) -> Result<Self, String> {
        if w.v != PROTOCOL_VERSION {
            return Err(format!(
                "unsupported protocol version {} (expected {PROTOCOL_VERSION}); \
                 use fwdd and fwdctl from the same release",
                w.v
            ));
        }
        if !w.ok {
            return Ok(Response::Error {
                message: w.error.unwrap_or_else(|| "unspecified error".into()),
                code: w.code,
            });
        }
        if let Some(st) = w.status {
            Ok(Response::Status(st))
        } else if let Some(p) = w.probe {
            Ok(Response::Probe { port: p.port })
        } else if let Some(r) = w.reconnect {
            Ok(Response::Reconnect { hosts: r.hosts })
        } else if let Some(r) = w.resync {
            Ok(Response::Resync { hosts: r.hosts })
        } else if let Some(u) = w.upgrade {
            Ok(Response::Upgrade(u))
        } else if let Some(e) = w.event {
            Ok(Response::Event(e))
        } else if let Some(c) = w.expose {
            Ok(Response::Expose(c))
        } else if let Some(c) = w.unexpose {
            Ok(Response::Unexpose(c))
        } else if let Some(m) = w.metrics {
            Ok(Response::Metrics { text: m.text })
        } else {
            Err("response has ok=true but no payload this side knows; \
                 use fwdd and fwdctl from the same release"
                .into())
        }
    }
}

/// Serializes `v` as one compact JSON line, terminated by `'\n'`.
///
/// # Panics
/// Only if `v`'s `Serialize` implementation fails, which cannot happen for the types of
/// this crate.
pub fn encode_line<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("protocol types always serialize");
    out.push(b'\n');
    out
}

/// Encodes a request as a line, with the protocol version: `{"v":1,"cmd":"status"}\n`.
pub fn encode_request(req: &Request) -> Vec<u8> {
    #[derive(Serialize)]
    struct Wire<'a> {
        v: u32,
        #[serde(flatten)]
        req: &'a Request,
    }
    encode_line(&Wire {
        v: PROTOCOL_VERSION,
        req,
    })
}

/// Why a line could not be decoded. `Display` gives a message fit to send back to the
/// client or to show to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The line is longer than the limit.
    TooLong {
        /// Length of the line (or of the part read so far) in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The line is empty (or only whitespace).
    Empty,
    /// The line is not valid UTF-8.
    InvalidUtf8 {
        /// Byte offset of the first invalid sequence.
        valid_up_to: usize,
    },
    /// The line is not valid JSON.
    InvalidJson(String),
    /// The JSON value is not an object.
    NotAnObject,
    /// The `"v"` field is missing.
    MissingVersion,
    /// The `"v"` field is not [`PROTOCOL_VERSION`]; holds the value as JSON text.
    UnsupportedVersion(String),
    /// The `"cmd"` field is missing or not a string.
    MissingCmd,
    /// The `"cmd"` is not one this protocol version knows.
    UnknownCmd(String),
    /// The command is known but its other fields are invalid.
    InvalidRequest {
        /// The command.
        cmd: String,
        /// What is wrong.
        message: String,
    },
    /// A response line does not match the schema.
    InvalidResponse(String),
}

/// A request line to copy, for messages that tell a client what to send.
const EXAMPLE_REQUEST: &str = r#"{"v":1,"cmd":"status"}"#;

impl fmt::Display for DecodeError {
    /// What the peer sent may be quoted (a version, serde's words about a
    /// field): never one of its control characters raw.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.describe(&mut text)?;
        for c in text.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

impl DecodeError {
    fn describe(&self, f: &mut String) -> fmt::Result {
        use fmt::Write as _;
        match self {
            DecodeError::TooLong { len, max } => write!(
                f,
                "line too long ({len} bytes, limit {max}); send one request per line, \
                 each ending in a newline"
            ),
            DecodeError::Empty => write!(
                f,
                "empty line; send one JSON request per line, e.g. {EXAMPLE_REQUEST}"
            ),
            DecodeError::InvalidUtf8 { valid_up_to } => write!(
                f,
                "line is not valid UTF-8 (invalid byte at offset {valid_up_to}); \
                 send JSON encoded as UTF-8"
            ),
            DecodeError::InvalidJson(e) => write!(
                f,
                "invalid JSON: {e}; send one JSON object per line, e.g. {EXAMPLE_REQUEST}"
            ),
            DecodeError::NotAnObject => {
                write!(f, "expected a JSON object, e.g. {EXAMPLE_REQUEST}")
            }
            DecodeError::MissingVersion => write!(
                f,
                "missing protocol version field \"v\"; add \"v\":{PROTOCOL_VERSION} \
                 (the version this side speaks)"
            ),
            DecodeError::UnsupportedVersion(v) => write!(
                f,
                "unsupported protocol version {v} (this side speaks v{PROTOCOL_VERSION}); \
                 use fwdd and fwdctl from the same release"
            ),
            DecodeError::MissingCmd => write!(
                f,
                "missing string field \"cmd\"; add one of {}, e.g. {EXAMPLE_REQUEST}",
                Request::COMMANDS.join(", ")
            ),
            DecodeError::UnknownCmd(c) => write!(
                f,
                "unknown command {:?} (supported: {})",
                c,
                Request::COMMANDS.join(", ")
            ),
            DecodeError::InvalidRequest { cmd, message } => write!(
                f,
                "invalid {cmd:?} request: {message}; its fields are described in \
                 docs/control-api.md"
            ),
            DecodeError::InvalidResponse(e) => write!(
                f,
                "invalid response: {e}; are fwdd and fwdctl from different releases? \
                 use the same release of both"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Strips one trailing `"\n"` or `"\r\n"`.
fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses a line into a JSON object after the size, UTF-8 and version checks.
fn decode_object(
    line: &[u8],
    max: Option<usize>,
) -> Result<serde_json::Map<String, serde_json::Value>, DecodeError> {
    let line = strip_eol(line);
    if let Some(max) = max {
        if line.len() > max {
            return Err(DecodeError::TooLong {
                len: line.len(),
                max,
            });
        }
    }
    let text = std::str::from_utf8(line).map_err(|e| DecodeError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(DecodeError::Empty);
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let serde_json::Value::Object(obj) = value else {
        return Err(DecodeError::NotAnObject);
    };
    match obj.get("v") {
        None => Err(DecodeError::MissingVersion),
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => Ok(obj),
        Some(v) => Err(DecodeError::UnsupportedVersion(v.to_string())),
    }
}

/// Decodes one request line (with or without its trailing newline).
///
/// Rejects, with a message suitable for the error response: lines over [`MAX_LINE`],
/// invalid UTF-8, invalid JSON, non-objects, a missing or different `"v"`, a missing or
/// unknown `"cmd"`, and invalid fields of a known command. Unknown extra fields are
/// ignored. Never panics.
pub fn decode_request(line: &[u8]) -> Result<Request, DecodeError> {
    let mut obj = decode_object(line, Some(MAX_LINE))?;
    obj.remove("v");
    let cmd = match obj.get("cmd") {
        Some(serde_json::Value::String(c)) => c.clone(),
        _ => return Err(DecodeError::MissingCmd),
    };
    if !Request::COMMANDS.contains(&cmd.as_str()) {
        return Err(DecodeError::UnknownCmd(cmd));
    }
    // serde would say "invalid value: integer `70000`, expected u16": name the range.
    if cmd == "probe" || cmd == "unexpose" {
        if let Some(n) = obj.get("port").and_then(serde_json::Value::as_u64) {
            if !(1..=u64::from(u16::MAX)).contains(&n) {
                return Err(DecodeError::InvalidRequest {
                    cmd,
                    message: format!("port {n} is not a TCP port; use 1 to 65535"),
                });
            }
        }
    }
    let req: Request = serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| {
        DecodeError::InvalidRequest {
            cmd: cmd.clone(),
            message: e.to_string(),
        }
    })?;
    Ok(req)
}

/// Decodes one response line (with or without its trailing newline). No length limit is
/// applied here; the reader bounds what it reads.
pub fn decode_response(line: &[u8]) -> Result<Response, DecodeError> {
    let obj = decode_object(line, None)?;
    serde_json::from_value(serde_json::Value::Object(obj))
        .map_err(|e| DecodeError::InvalidResponse(e.to_string()))
}

/// The daemon's runtime directory, where the control socket lives:
/// `$XDG_RUNTIME_DIR/fwdd` if `XDG_RUNTIME_DIR` is set (non-empty, absolute), else
/// `/run/fwdd` when the effective uid is 0, else `/tmp/fwdd-<euid>`.
pub fn default_runtime_dir() -> PathBuf {
    runtime_dir_for(std::env::var_os("XDG_RUNTIME_DIR"), effective_uid())
}

/// [`default_runtime_dir`] for explicit inputs (the value of `XDG_RUNTIME_DIR` and the
/// effective uid).
pub fn runtime_dir_for(xdg_runtime_dir: Option<OsString>, euid: u32) -> PathBuf {
    match xdg_runtime_dir.map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("fwdd"),
        _ if euid == 0 => PathBuf::from("/run/fwdd"),
        _ => PathBuf::from(format!("/tmp/fwdd-{euid}")),
    }
}

/// `<default_runtime_dir()>/control.sock`.
pub fn default_control_socket() -> PathBuf {
    default_runtime_dir().join(CONTROL_SOCKET_NAME)
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid(2) takes no arguments, always succeeds and touches no memory;
    // uid_t is a 32-bit unsigned integer on every Unix Rust supports.
    unsafe { geteuid() }
}

#[cfg(test)]
mod tests;
