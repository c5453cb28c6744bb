//! Configuration: command line and TOML file → one validated [`Config`].
//!
//! Everything is checked before anything starts; an error names the key
//! (and for a file, toml's error carries the line) and fwdd exits 2.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    pub hosts: Vec<HostConfig>,
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// A name, never a path: checked by [`check_host_name`] (written in
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
            ..self.clone()
        }
    }
}

/// One `expose` entry as written: a port, or a string of the grammar.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileExpose {
    Port(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    runtime_dir: Option<PathBuf>,
    log_format: Option<String>,
    connect_wait: Option<String>,
    startup_window: Option<String>,
    engine_socket_group: Option<String>,
    conflict_retry: Option<String>,
    retry_first_delay: Option<String>,
    retry_max_delay: Option<String>,
    retry_jitter: Option<f64>,
    healthy_after: Option<String>,
    permanent_retry: Option<String>,
    resync_interval: Option<String>,
    metrics: Option<String>,
    max_forwards_per_container: Option<u64>,
    max_forwards_total: Option<u64>,
    max_tunnels_per_forward: Option<u64>,
    max_tunnels_per_exposure: Option<u64>,
    max_engine_clients: Option<u64>,
    #[serde(default, rename = "rule")]
    rules: Vec<FileRule>,
    #[serde(default, rename = "host")]
    hosts: Vec<FileHost>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    host: Option<String>,
    ports: Option<String>,
    label: Option<String>,
    project: Option<String>,
    action: Option<String>,
    local_port: Option<u16>,
    bind: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHost {
    name: Option<String>,
    url: String,
    identity_file: Option<PathBuf>,
    ssh_config: Option<PathBuf>,
    #[serde(default)]
    ssh_options: Vec<String>,
    server_alive_interval: Option<String>,
    server_alive_count_max: Option<u32>,
    connect_timeout: Option<String>,
    health_interval: Option<String>,
    engine_gone_after: Option<String>,
    strict_host_key_checking: Option<String>,
    ssh_program: Option<PathBuf>,
    max_forwards: Option<usize>,
    engine_socket: Option<bool>,
    engine_remote_socket: Option<String>,
    direct_route: Option<bool>,
    #[serde(default)]
    expose: Vec<FileExpose>,
    expose_on: Option<Vec<String>>,
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

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// The group must exist here: a typo would otherwise leave the sockets
/// owner-only and every job of the shared runner refused.
fn socket_group(name: &str) -> Result<SocketGroup, ConfigError> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(SocketGroup {
            name: name.to_string(),
            gid: g.gid.as_raw(),
        }),
        Ok(None) => err(format!(
            "engine_socket_group: no group named {name:?} on this machine (create it, or remove the key to keep the engine sockets owner-only)"
        )),
        Err(e) => err(format!("engine_socket_group: cannot look up group {name:?}: {e}")),
    }
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) if d > Duration::ZERO => Ok(d),
            Ok(_) => err(format!(
                "{key}: {v:?} is zero; use a duration greater than zero such as \"15s\""
            )),
            Err(e) => err(format!(
                "{key}: {v:?} is not a duration ({e}); use a number with a unit such as \"15s\" or \"2m\""
            )),
        },
    }
}

/// The effective configuration as TOML, for `fwdd check-config`: every
/// setting with the value that will be used, defaults included.
pub fn render(c: &Config) -> String {
    let secs = |d: Duration| humantime::format_duration(d).to_string();
    let q = |s: &str| format!("{s:?}");
    let mut out = String::new();
    out.push_str(&format!(
        "runtime_dir = {}\n",
        q(&c.runtime_dir.display().to_string())
    ));
    out.push_str(&format!(
        "log_format = {}\n",
        q(match c.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    ));
    out.push_str(&format!("connect_wait = {}\n", q(&secs(c.connect_wait))));
    out.push_str(&format!(
        "startup_window = {}\n",
        q(&secs(c.startup_window))
    ));
    if let Some(g) = &c.engine_socket_group {
        out.push_str(&format!("engine_socket_group = {}\n", q(&g.name)));
    }
    out.push_str(&format!(
        "conflict_retry = {}\n",
        q(&secs(c.conflict_retry))
    ));
    out.push_str(&format!(
        "retry_first_delay = {}\n",
        q(&secs(c.retry.backoff.base))
    ));
    out.push_str(&format!(
        "retry_max_delay = {}\n",
        q(&secs(c.retry.backoff.cap))
    ));
    out.push_str(&format!("retry_jitter = {}\n", c.retry.backoff.jitter));
    out.push_str(&format!(
        "healthy_after = {}\n",
        q(&secs(c.retry.backoff.healthy_after))
    ));
    out.push_str(&format!(
        "permanent_retry = {}\n",
        q(&secs(c.retry.permanent_retry))
    ));
    out.push_str(&format!(
        "resync_interval = {}\n",
        q(&secs(c.resync_interval))
    ));
    match c.metrics {
        Some(addr) => out.push_str(&format!("metrics = {}\n", q(&addr.to_string()))),
        None => {
            out.push_str("# metrics: off (set metrics = \"127.0.0.1:9633\" to serve /metrics)\n")
        }
    }
    for (key, value) in [
        (
            "max_forwards_per_container",
            c.limits.forwards_per_container,
        ),
        ("max_forwards_total", c.limits.forwards_total),
        ("max_tunnels_per_forward", c.limits.tunnels_per_forward),
        ("max_tunnels_per_exposure", c.limits.tunnels_per_exposure),
        ("max_engine_clients", c.limits.engine_clients),
    ] {
        match value {
            Some(n) => out.push_str(&format!("{key} = {n}\n")),
            None => out.push_str(&format!(
                "# {key}: not set, derived from the open-files limit (fwdctl status shows it)\n"
            )),
        }
    }
    if c.rules.rules.is_empty() {
        out.push_str(
            "\n# no [[rule]]: every published TCP port is forwarded as published \
             (fwd.* container labels still apply), on 127.0.0.1 and [::1]\n",
        );
    }
    for r in &c.rules.rules {
        render_rule(&mut out, r);
    }
    for h in &c.hosts {
        let s = &h.ssh;
        out.push_str("\n[[host]]\n");
        out.push_str(&format!("name = {}\n", q(&h.name)));
        let url = match s.port {
            Some(p) => format!("ssh://{}:{p}", s.destination),
            None => format!("ssh://{}", s.destination),
        };
        out.push_str(&format!("url = {}\n", q(&url)));
        if let Some(p) = &s.identity_file {
            out.push_str(&format!(
                "identity_file = {}\n",
                q(&p.display().to_string())
            ));
        }
        if let Some(p) = &s.ssh_config {
            out.push_str(&format!("ssh_config = {}\n", q(&p.display().to_string())));
        }
        let opts: Vec<String> = s.extra_options.iter().map(|o| q(o)).collect();
        out.push_str(&format!("ssh_options = [{}]\n", opts.join(", ")));
        out.push_str(&format!(
            "server_alive_interval = {}\n",
            q(&secs(s.server_alive_interval))
        ));
        out.push_str(&format!(
            "server_alive_count_max = {}\n",
            s.server_alive_count_max
        ));
        out.push_str(&format!(
            "connect_timeout = {}\n",
            q(&secs(s.connect_timeout))
        ));
        out.push_str(&format!(
            "health_interval = {}\n",
            q(&secs(h.health_interval))
        ));
        out.push_str(&format!(
            "engine_gone_after = {}\n",
            q(&secs(h.engine_gone_after))
        ));
        out.push_str(&format!(
            "strict_host_key_checking = {}\n",
            q(&s.strict_host_key_checking)
        ));
        out.push_str(&format!(
            "ssh_program = {}\n",
            q(&s.ssh_program.display().to_string())
        ));
        match h.max_forwards {
            Some(n) => out.push_str(&format!("max_forwards = {n}\n")),
            None => out.push_str("# max_forwards: not set, no cap\n"),
        }
        out.push_str(&format!("engine_socket = {}\n", h.engine_socket));
        out.push_str(&format!("direct_route = {}\n", h.direct_route));
        match &h.engine_remote_socket {
            Some(p) => out.push_str(&format!("engine_remote_socket = {}\n", q(p))),
            None => {
                out.push_str("# engine_remote_socket: not set, found on the host (DOCKER_HOST, the CLI's context, rootless and rootful sockets)\n")
            }
        }
        let exposed: Vec<String> = h
            .expose
            .iter()
            .map(|e| q(&format!("{}:{}", e.remote_port, e.target)))
            .collect();
        out.push_str(&format!("expose = [{}]\n", exposed.join(", ")));
        let on: Vec<String> = h.expose_on.iter().map(|b| q(&b.to_string())).collect();
        out.push_str(&format!("expose_on = [{}]\n", on.join(", ")));
    }
    out
}

/// One `[[rule]]` table: the conditions it has, then its action.
fn render_rule(out: &mut String, r: &fwd_core::Rule) {
    use fwd_core::RuleAction;
    let q = |s: &str| format!("{s:?}");
    out.push_str("\n[[rule]]\n");
    if let Some(h) = &r.host {
        out.push_str(&format!("host = {}\n", q(h)));
    }
    if let Some((lo, hi)) = r.ports {
        let ports = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        };
        out.push_str(&format!("ports = {}\n", q(&ports)));
    }
    if let Some((k, v)) = &r.label {
        let label = match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        };
        out.push_str(&format!("label = {}\n", q(&label)));
    }
    if let Some(p) = &r.project {
        out.push_str(&format!("project = {}\n", q(p)));
    }
    match &r.action {
        RuleAction::Skip => out.push_str("action = \"skip\"\n"),
        RuleAction::Forward { local_port, bind } => {
            out.push_str("action = \"forward\"\n");
            if let Some(p) = local_port {
                out.push_str(&format!("local_port = {p}\n"));
            }
            if let Some(addrs) = bind {
                let addrs: Vec<String> = addrs.iter().map(|a| q(&a.to_string())).collect();
                out.push_str(&format!("bind = [{}]\n", addrs.join(", ")));
            }
        }
    }
}

/// The runtime directory when none is configured.
pub fn default_runtime_dir() -> PathBuf {
    fwd_proto::default_runtime_dir()
}

impl Config {
    /// Loads and validates. An error about a key that comes from the file
    /// names the file and the line, e.g.
    /// `fwdd.toml:7: host[0].health_interval: "often" is not a duration`.
    pub fn load(cli: CliOverrides) -> Result<Config, ConfigError> {
        Self::load_unlocated(&cli).map_err(|e| match &cli.config_file {
            Some(path) => locate_error(path, e),
            None => e,
        })
    }

    fn load_unlocated(cli: &CliOverrides) -> Result<Config, ConfigError> {
        let file = match &cli.config_file {
            None => FileConfig::default(),
            Some(path) => read_file(path)?,
        };
        // Name the flag when the value came from it: the file's line would mislead.
        let log_format_key = match cli.log_format {
            Some(_) => "--log-format (or FWD_LOG_FORMAT)",
            None => "log_format",
        };
        let log_format = match cli.log_format.as_deref().or(file.log_format.as_deref()) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return err(format!(
                    "{log_format_key}: {other:?} is not a log format; use \"text\" (for people) \
                     or \"json\" (one object per line, for log pipelines)"
                ))
            }
        };
        let mut hosts = Vec::new();
        for (i, h) in file.hosts.iter().enumerate() {
            hosts.push(host_config(&format!("host[{i}]"), h, cli)?);
        }
        for (i, url) in cli.hosts.iter().enumerate() {
            let h = FileHost {
                url: url.clone(),
                ..FileHost::default()
            };
            hosts.push(host_config(&format!("--host #{}", i + 1), &h, cli)?);
        }
        if hosts.is_empty() {
            return err(
                "no Docker host: pass --host ssh://user@host or a config file with [[host]]",
            );
        }
        for (i, a) in hosts.iter().enumerate() {
            if hosts[..i].iter().any(|b| b.name == a.name) {
                return err(format!(
                    "host {:?} is configured twice (give each [[host]] a distinct name)",
                    a.name
                ));
            }
        }
        let rules = rules_config(&file.rules, &hosts)?;
        let engine_socket_group = match file.engine_socket_group.as_deref() {
            None => None,
            Some(name) => Some(socket_group(name)?),
        };
        let metrics = match cli.metrics.as_deref().or(file.metrics.as_deref()) {
            None | Some("") | Some("off") => None,
            Some(a) => Some(a.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError(format!(
                    "metrics: {a:?} is not an address and port; write e.g. \"127.0.0.1:9633\" \
                     (loopback: only this machine's scraper reaches it) or \"off\""
                ))
            })?),
        };
        let cap = |key: &str, v: Option<u64>| match v {
            Some(0) => err(format!(
                "{key}: 0 would refuse everything; use a number of at least 1, or remove the key \
                 for the default derived from the open-files limit"
            )),
            v => Ok(v),
        };
        let limits = fwd_core::LimitSettings {
            forwards_per_container: cap(
                "max_forwards_per_container",
                file.max_forwards_per_container,
            )?,
            forwards_total: cap("max_forwards_total", file.max_forwards_total)?,
            tunnels_per_forward: cap("max_tunnels_per_forward", file.max_tunnels_per_forward)?,
            tunnels_per_exposure: cap("max_tunnels_per_exposure", file.max_tunnels_per_exposure)?,
            engine_clients: cap("max_engine_clients", file.max_engine_clients)?,
        };
        Ok(Config {
            metrics,
            limits,
            rules,
            engine_socket_group,
            runtime_dir: cli
                .runtime_dir
                .clone()
                .or(file.runtime_dir.clone())
                .unwrap_or_else(default_runtime_dir),
            log_format,
            connect_wait: duration(
                "connect_wait",
                file.connect_wait.as_deref(),
                Duration::from_secs(10),
            )?,
            startup_window: match file.startup_window.as_deref() {
                Some("0" | "0s" | "off") => Duration::ZERO,
                other => duration(
                    "startup_window",
                    other,
                    duration(
                        "connect_wait",
                        file.connect_wait.as_deref(),
                        Duration::from_secs(10),
                    )?,
                )?,
            },
            conflict_retry: duration(
                "conflict_retry",
                file.conflict_retry.as_deref(),
                Duration::from_secs(3),
            )?,
            retry: retry_config(&file)?,
            resync_interval: duration(
                "resync_interval",
                file.resync_interval.as_deref(),
                Duration::from_secs(300),
            )?,
            hosts,
        })
    }
}

fn rules_config(rules: &[FileRule], hosts: &[HostConfig]) -> Result<fwd_core::Rules, ConfigError> {
    use fwd_core::{Rule, RuleAction};
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let key = format!("rule[{i}]");
        let ports = r
            .ports
            .as_deref()
            .map(fwd_core::rules::parse_port_range)
            .transpose()
            .map_err(|e| {
                ConfigError(format!(
                    "{key}.ports: {e}; write one port such as \"5432\" or a range such as \"8000-8099\""
                ))
            })?;
        if let Some(h) = &r.host {
            if !hosts.iter().any(|c| &c.name == h) {
                let names: Vec<String> = hosts.iter().map(|c| format!("{:?}", c.name)).collect();
                return err(format!(
                    "{key}.host: no host named {h:?} is configured; use the name of a [[host]] ({})",
                    names.join(", ")
                ));
            }
        }
        let label = r.label.as_deref().map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (l.to_string(), None),
        });
        if let (Some((k, _)), Some(l)) = (&label, &r.label) {
            if k.is_empty() {
                return err(format!(
                    "{key}.label: {l:?} has no label key; write \"key\" or \"key=value\", e.g. \"team=payments\""
                ));
            }
        }
        let bind = r
            .bind
            .as_ref()
            .map(|addrs| {
                addrs
                    .iter()
                    .map(|a| {
                        a.parse::<std::net::IpAddr>().map_err(|_| {
                            ConfigError(format!(
                                "{key}.bind: {a:?} is not an IP address; write addresses such as \
                                 \"127.0.0.1\" or \"::1\" (host names are not resolved)"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        if bind.as_ref().is_some_and(Vec::is_empty) {
            return err(format!(
                "{key}.bind: the list is empty, so the port would listen nowhere; name at least one \
                 address such as \"127.0.0.1\", or remove bind for the default (127.0.0.1 and ::1)"
            ));
        }
        let action = match r.action.as_deref().unwrap_or("forward") {
            "forward" => {
                if r.local_port.is_some() && ports.is_none_or(|(a, b)| a != b) {
                    let matched = match ports {
                        None => "every port",
                        Some(_) => "a range of ports",
                    };
                    return err(format!(
                        "{key}.local_port: the rule matches {matched}, which cannot all move to one \
                         local port; give the rule a single port (ports = \"5432\") or remove local_port"
                    ));
                }
                if r.local_port == Some(0) {
                    return err(format!(
                        "{key}.local_port: 0 is not a port; use a port from 1 to 65535"
                    ));
                }
                RuleAction::Forward {
                    local_port: r.local_port,
                    bind,
                }
            }
            "skip" => {
                if r.local_port.is_some() || bind.is_some() {
                    return err(format!(
                        "{key}: a skip rule forwards nothing, so local_port and bind have no use; \
                         remove them or set action = \"forward\""
                    ));
                }
                RuleAction::Skip
            }
            other => {
                return err(format!(
                    "{key}.action: {other:?} is not an action; use \"forward\" or \"skip\""
                ))
            }
        };
        out.push(Rule {
            host: r.host.clone(),
            ports,
            label,
            project: r.project.clone(),
            action,
        });
    }
    Ok(fwd_core::Rules { rules: out })
}

fn retry_config(file: &FileConfig) -> Result<RetryConfig, ConfigError> {
    let defaults = fwd_core::BackoffPolicy::default();
    let jitter = file.retry_jitter.unwrap_or(defaults.jitter);
    if !(0.0..=1.0).contains(&jitter) {
        return err(format!(
            "retry_jitter: {jitter} is not between 0 and 1; use a fraction such as 0.25 (±25%)"
        ));
    }
    let backoff = fwd_core::BackoffPolicy {
        base: duration(
            "retry_first_delay",
            file.retry_first_delay.as_deref(),
            defaults.base,
        )?,
        cap: duration(
            "retry_max_delay",
            file.retry_max_delay.as_deref(),
            defaults.cap,
        )?,
        jitter,
        healthy_after: duration(
            "healthy_after",
            file.healthy_after.as_deref(),
            defaults.healthy_after,
        )?,
    };
    if backoff.base > backoff.cap {
        return err(format!(
            "retry_first_delay: {} is longer than retry_max_delay ({}); shorten \
             retry_first_delay or raise retry_max_delay",
            humantime::format_duration(backoff.base),
            humantime::format_duration(backoff.cap)
        ));
    }
    Ok(RetryConfig {
        backoff,
        permanent_retry: duration(
            "permanent_retry",
            file.permanent_retry.as_deref(),
            Duration::from_secs(300),
        )?,
    })
}

/// Prefixes `FILE:LINE: ` to an error that starts with a key path the file
/// sets ("connect_wait: …", "host[1].url: …", "rule[0].ports: …").
fn locate_error(path: &Path, e: ConfigError) -> ConfigError {
    let Some((key_path, _)) = e.0.split_once(": ") else {
        return e;
    };
    // "host[1].url" → table ("host", 1), key "url"; "connect_wait" → top level.
    let (table, key) = match key_path.split_once('[') {
        Some((name, rest)) if name == "host" || name == "rule" => match rest.split_once(']') {
            Some((i, k)) => match i.parse::<usize>() {
                Ok(i) => (Some((name, i)), k.trim_start_matches('.')),
                Err(_) => return e,
            },
            None => return e,
        },
        _ => (None, key_path),
    };
    let key = key.split('[').next().unwrap_or(key);
    let Ok(text) = std::fs::read_to_string(path) else {
        return e;
    };
    match locate_key(&text, table, key) {
        Some(line) => ConfigError(format!("{}:{line}: {}", path.display(), e.0)),
        None => e,
    }
}

/// The 1-based line on which `key` is set: at top level (before any table)
/// or inside the `index`-th `[[name]]` table. An empty `key` means the
/// table's header line.
fn locate_key(text: &str, table: Option<(&str, usize)>, key: &str) -> Option<usize> {
    let mut current: Option<(String, usize)> = None;
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .map(|(n, _)| n.trim())
        {
            let i = seen.entry(name.to_string()).or_insert(0);
            current = Some((name.to_string(), *i));
            *i += 1;
            if key.is_empty() && table.is_some_and(|(tn, ti)| tn == name && ti + 1 == *i) {
                return Some(n + 1);
            }
            continue;
        }
        if t.starts_with('[') {
            current = Some((t.to_string(), usize::MAX));
            continue;
        }
        let Some((k, _)) = t.split_once('=') else {
            continue;
        };
        let here = current.as_ref().map(|(name, i)| (name.as_str(), *i));
        if k.trim() == key && here == table {
            return Some(n + 1);
        }
    }
    None
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "cannot read the configuration file {}: {e}; check the path given with \
                 --config / FWD_CONFIG (or to check-config) and that fwdd's user may read it",
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

/// The longest host name, in bytes.
pub const HOST_NAME_MAX: usize = 64;
/// The characters a host name may have besides ASCII letters and digits.
const HOST_NAME_PUNCTUATION: &str = "._-@:%";

/// Whether `name` may name a host. A host's name becomes part of its engine
/// socket's file name (`docker-<name>.sock`) and of what `fwdctl env HOST`
/// prints, so it is a name and never a path: 1 to 64 bytes of ASCII letters,
/// digits and `. _ - @ : %` (the last three are in names made from
/// `ssh://user@host:port`), not starting with `.` or `-`, without `..`.
/// `Err` says what is wrong.
pub fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > HOST_NAME_MAX {
        return Err(format!(
            "is {} bytes long, more than {HOST_NAME_MAX}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !HOST_NAME_PUNCTUATION.contains(*c))
    {
        return Err(format!("has {c:?}, which a host name may not have"));
    }
    if name.starts_with(['.', '-']) {
        return Err("starts with '.' or '-'".into());
    }
    if name.contains("..") {
        return Err("has \"..\"".into());
    }
    Ok(())
}

/// The name of a host given only by its URL (`--host`, or a `[[host]]`
/// without `name`): `user@host[:port]`, made a valid name if it is not
/// one (other characters become `_`, a leading `.` or `-` and `..` too, and
/// a name too long keeps its first bytes and a hash of the whole).
fn derived_host_name(destination: &str, port: Option<u16>) -> String {
    let whole = match port {
        Some(p) => format!("{destination}:{p}"),
        None => destination.to_string(),
    };
    if check_host_name(&whole).is_ok() {
        return whole;
    }
    let mut name: String = whole
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || HOST_NAME_PUNCTUATION.contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    while name.contains("..") {
        name = name.replace("..", "._");
    }
    if name.starts_with(['.', '-']) || name.is_empty() {
        name.insert(0, '_');
    }
    if name.len() > HOST_NAME_MAX {
        // FNV-1a: stable across builds, unlike std's hasher.
        let hash = whole.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        // Every character is ASCII now: any byte is a boundary.
        name.truncate(HOST_NAME_MAX - 9);
        name.push_str(&format!("-{:08x}", hash as u32));
    }
    name
}

fn host_config(key: &str, h: &FileHost, cli: &CliOverrides) -> Result<HostConfig, ConfigError> {
    let (destination, port) =
        fwd_ssh::parse_host_url(&h.url).map_err(|e| ConfigError(format!("{key}.url: {e}")))?;
    if let Some(name) = &h.name {
        check_host_name(name).map_err(|why| {
            ConfigError(format!(
                "{key}.name: {name:?} {why}; a host's name is part of its engine socket's file \
                 name, so write 1 to {HOST_NAME_MAX} letters, digits and . _ - @ : %, not \
                 starting with '.' or '-' and without \"..\", e.g. name = \"ci-docker\""
            ))
        })?;
    }
    let strict = h
        .strict_host_key_checking
        .clone()
        .unwrap_or_else(|| "yes".into());
    if !["yes", "accept-new", "no", "off"].contains(&strict.as_str()) {
        return err(format!(
            "{key}.strict_host_key_checking: {strict:?} is not a policy; use \"yes\" (only hosts \
             already in known_hosts), \"accept-new\" or \"no\""
        ));
    }
    for (j, o) in h.ssh_options.iter().enumerate() {
        let ok = o
            .split_once('=')
            .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()))
            && !o.chars().any(|c| c.is_control());
        if !ok {
            return err(format!(
                "{key}.ssh_options[{j}]: {o:?} is not of the form Key=Value (an alphanumeric key, \
                 '=', a value without control characters); write e.g. \"Compression=no\""
            ));
        }
    }
    let ssh = fwd_ssh::MasterConfig {
        destination: destination.clone(),
        port,
        identity_file: cli
            .identity_file
            .clone()
            .or_else(|| h.identity_file.clone()),
        ssh_config: cli.ssh_config.clone().or_else(|| h.ssh_config.clone()),
        extra_options: h.ssh_options.clone(),
        server_alive_interval: duration(
            &format!("{key}.server_alive_interval"),
            h.server_alive_interval.as_deref(),
            Duration::from_secs(15),
        )?,
        server_alive_count_max: h.server_alive_count_max.unwrap_or(2),
        connect_timeout: duration(
            &format!("{key}.connect_timeout"),
            h.connect_timeout.as_deref(),
            Duration::from_secs(10),
        )?,
        strict_host_key_checking: strict,
        ssh_program: h
            .ssh_program
            .clone()
            .unwrap_or_else(|| PathBuf::from("ssh")),
    };
    let mut expose: Vec<fwd_core::ExposeSpec> = Vec::new();
    for (j, e) in h.expose.iter().enumerate() {
        let text = match e {
            FileExpose::Port(p) => p.to_string(),
            FileExpose::Text(t) => t.clone(),
        };
        let spec = fwd_core::parse_expose(&text)
            .map_err(|e| ConfigError(format!("{key}.expose[{j}]: {e}")))?;
        if expose.iter().any(|x| x.remote_port == spec.remote_port) {
            return err(format!(
                "{key}.expose[{j}]: remote port {} is exposed twice; each remote port reaches one \
                 runner address",
                spec.remote_port
            ));
        }
        expose.push(spec);
    }
    let expose_on = match &h.expose_on {
        None => vec![fwd_core::BindScope::Gateway],
        Some(list) if list.is_empty() => {
            return err(format!(
                "{key}.expose_on is empty; leave it out for the default [\"gateway\"], or name \
                 where sshd should listen"
            ))
        }
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(j, s)| {
                fwd_core::parse_bind_scope(s)
                    .map_err(|e| ConfigError(format!("{key}.expose_on[{j}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(HostConfig {
        expose,
        expose_on,
        name: match &h.name {
            Some(name) => name.clone(),
            None => derived_host_name(&destination, port),
        },
        ssh,
        health_interval: duration(
            &format!("{key}.health_interval"),
            h.health_interval.as_deref(),
            Duration::from_secs(15),
        )?,
        engine_gone_after: duration(
            &format!("{key}.engine_gone_after"),
            h.engine_gone_after.as_deref(),
            fwd_core::ENGINE_GONE_AFTER,
        )?,
        max_forwards: h.max_forwards,
        engine_socket: h.engine_socket.unwrap_or(true),
        direct_route: h.direct_route.unwrap_or(true),
        engine_remote_socket: match &h.engine_remote_socket {
            None => None,
            Some(p)
                if p.starts_with('/') && p.len() < 1024 && !p.chars().any(|c| c.is_control()) =>
            {
                Some(p.clone())
            }
            Some(p) => {
                return err(format!(
                    "{key}.engine_remote_socket: {p:?} is not an absolute path; write the path \
                     of the engine's socket on the remote host, e.g. \"/var/run/docker.sock\""
                ))
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use fwd_ssh::parse_host_url;

    #[test]
    fn host_urls() {
        assert_eq!(
            parse_host_url("ssh://ci@docker-1:2222"),
            Ok(("ci@docker-1".into(), Some(2222)))
        );
        assert_eq!(parse_host_url("ssh://alias"), Ok(("alias".into(), None)));
        assert_eq!(
            parse_host_url("ssh://u@[fd00::1]:22"),
            Ok(("u@fd00::1".into(), Some(22)))
        );
        for bad in [
            "docker-1",
            "ssh://-oProxyCommand=x",
            "ssh://u@host:0",
            "ssh://u@host:99999",
            "ssh://a b@host",
            "ssh://u@ho;st",
            "ssh://",
        ] {
            assert!(parse_host_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_engine_socket_group_must_exist() {
        let c = load_toml("engine_socket_group = \"root\"\n[[host]]\nurl = \"ssh://h\"\n")
            .expect("loads");
        assert_eq!(
            c.engine_socket_group,
            Some(SocketGroup {
                name: "root".into(),
                gid: 0
            })
        );
        assert!(render(&c).contains("\nengine_socket_group = \"root\"\n"));
        let e =
            load_toml("engine_socket_group = \"no-such-group-fwd\"\n[[host]]\nurl = \"ssh://h\"\n")
                .expect_err("refused");
        assert!(e.0.contains("no group named \"no-such-group-fwd\""), "{e}");
        let c = load_toml("[[host]]\nurl = \"ssh://h\"\n").expect("loads");
        assert_eq!(c.engine_socket_group, None);
    }

    #[test]
    fn the_startup_window_follows_connect_wait_and_can_be_turned_off() {
        let c = load_toml("connect_wait = \"7s\"\n[[host]]\nurl = \"ssh://h\"\n").expect("loads");
        assert_eq!(c.startup_window, Duration::from_secs(7));
        let c = load_toml("startup_window = \"0s\"\n[[host]]\nurl = \"ssh://h\"\n").expect("loads");
        assert_eq!(c.startup_window, Duration::ZERO);
        assert!(render(&c).contains("\nstartup_window = \"0s\"\n"));
        let e = load_toml("startup_window = \"soon\"\n[[host]]\nurl = \"ssh://h\"\n")
            .expect_err("not a duration");
        assert!(e.0.contains("startup_window"), "{e}");
    }

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        // One directory per call: tests run in parallel and must not share a file.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fwdd.toml");
        std::fs::write(&path, text).expect("write config");
        Config::load(CliOverrides {
            config_file: Some(path),
            ..Default::default()
        })
    }

    #[test]
    fn a_host_name_is_a_name_not_a_path() {
        for good in [
            "ci",
            "ci-docker.2",
            "u@h:2222",
            "u@fd00::1:22",
            "x%eth0",
            &"a".repeat(64),
        ] {
            assert_eq!(check_host_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "a/../../x",
            "a/b",
            "..",
            "a..b",
            ".hidden",
            "-x",
            "a b",
            "a\nb",
            "ä",
            &"a".repeat(65),
        ] {
            assert!(check_host_name(bad).is_err(), "{bad:?} accepted");
        }
        let e = load_toml("[[host]]\nname = \"a/../../x\"\nurl = \"ssh://h\"\n")
            .expect_err("a path as a name");
        assert!(
            e.0.contains("host[0].name: \"a/../../x\" has '/'")
                && e.0.contains("e.g. name = \"ci-docker\""),
            "{e}"
        );
        let e = load_toml(&format!(
            "[[host]]\nurl = \"ssh://h\"\n[[host]]\nname = \"{}\"\nurl = \"ssh://h\"\n",
            "x".repeat(65)
        ))
        .expect_err("too long");
        assert!(
            e.0.contains("host[1].name: ") && e.0.contains("65 bytes long"),
            "{e}"
        );
    }

    #[test]
    fn a_name_made_from_the_url_is_a_valid_name() {
        assert_eq!(
            derived_host_name("ci@docker-1", Some(2222)),
            "ci@docker-1:2222"
        );
        assert_eq!(derived_host_name("..", None), "_._");
        assert_eq!(derived_host_name("-x", None), "_-x");
        let long = format!("ci@{}.example.com", "a".repeat(80));
        let name = derived_host_name(&long, None);
        assert_eq!(check_host_name(&name), Ok(()));
        assert_eq!(name.len(), HOST_NAME_MAX);
        assert!(name.starts_with("ci@aaaa"), "{name}");
        // Stable, and distinct for names that share their first bytes.
        assert_eq!(derived_host_name(&long, None), name);
        assert_ne!(derived_host_name(&long, Some(22)), name);
        // A --host whose URL makes a bad name is served under a valid one.
        let c = Config::load(CliOverrides {
            hosts: vec![format!("ssh://{long}")],
            ..Default::default()
        })
        .expect("derived names are made valid");
        assert_eq!(c.hosts[0].name, name);
    }

    #[test]
    fn file_config_with_defaults() {
        let c =
            load_toml("[[host]]\nurl = \"ssh://ci@h\"\nhealth_interval = \"2m\"\n").expect("valid");
        assert_eq!(c.hosts[0].health_interval, Duration::from_secs(120));
        assert_eq!(
            c.hosts[0].ssh.server_alive_interval,
            Duration::from_secs(15)
        );
        assert_eq!(c.hosts[0].ssh.strict_host_key_checking, "yes");
        assert_eq!(c.connect_wait, Duration::from_secs(10));
    }

    #[test]
    fn file_errors_name_the_line() {
        let e = load_toml("# fwd\nconnect_wait = \"soon\"\n[[host]]\nurl = \"ssh://h\"\n")
            .expect_err("invalid");
        assert!(e.0.contains(".toml:2: connect_wait"), "{e}");
        let e = load_toml(
            "[[host]]\nurl = \"ssh://a\"\n\n[[host]]\nname = \"b\"\nurl = \"ssh://b\"\nhealth_interval = \"x\"\n",
        )
        .expect_err("invalid");
        assert!(e.0.contains(".toml:7: host[1].health_interval"), "{e}");
        let e = load_toml(
            "[[host]]\nurl = \"ssh://a\"\n[[rule]]\nports = \"1\"\n[[rule]]\nports = \"x\"\n",
        )
        .expect_err("invalid");
        assert!(e.0.contains(".toml:6: rule[1].ports"), "{e}");
        // Syntax errors carry toml's own location.
        let e = load_toml("[[host]\n").expect_err("invalid");
        assert!(e.0.contains("line 1"), "{e}");
    }

    #[test]
    fn rules_are_validated_with_their_keys() {
        let host = "[[host]]\nname = \"h\"\nurl = \"ssh://h\"\n";
        let c = load_toml(&format!(
            "{host}[[rule]]\nports = \"5432\"\nlocal_port = 15432\n[[rule]]\nlabel = \"team=x\"\naction = \"skip\"\n[[rule]]\nhost = \"h\"\nports = \"8000-8099\"\nbind = [\"0.0.0.0\"]\n"
        ))
        .expect("valid");
        assert_eq!(c.rules.rules.len(), 3);
        for (bad, key) in [
            (
                "[[rule]]\nports = \"8000-8099\"\nlocal_port = 1\n",
                "rule[0].local_port",
            ),
            ("[[rule]]\nports = \"99999\"\n", "rule[0].ports"),
            ("[[rule]]\naction = \"maybe\"\n", "rule[0].action"),
            ("[[rule]]\nbind = [\"localhost\"]\n", "rule[0].bind"),
            ("[[rule]]\nhost = \"nope\"\n", "rule[0].host"),
            ("[[rule]]\naction = \"skip\"\nlocal_port = 5\n", "rule[0]"),
        ] {
            let e = load_toml(&format!("{host}{bad}")).expect_err(bad);
            assert!(e.0.contains(key), "{bad}: {e}");
        }
    }

    /// Each error says what is wrong and what to write instead.
    #[test]
    fn errors_say_what_to_do() {
        let host = "[[host]]\nname = \"h\"\nurl = \"ssh://h\"\n";
        for (bad, says) in [
            (
                format!("{host}health_interval = \"5x\"\n"),
                ".toml:4: host[0].health_interval: \"5x\" is not a duration",
            ),
            (
                format!("{host}health_interval = \"5x\"\n"),
                "use a number with a unit such as \"15s\" or \"2m\"",
            ),
            (
                format!("connect_wait = \"0s\"\n{host}"),
                "\"0s\" is zero; use a duration greater than zero",
            ),
            (
                format!("log_format = \"xml\"\n{host}"),
                ".toml:1: log_format: \"xml\" is not a log format; use \"text\"",
            ),
            (
                format!("{host}[[rule]]\nhost = \"nope\"\n"),
                "use the name of a [[host]] (\"h\")",
            ),
            (
                format!("{host}[[rule]]\nports = \"9-1\"\n"),
                "write one port such as \"5432\" or a range",
            ),
            (
                format!("{host}[[rule]]\nlabel = \"=x\"\n"),
                "\"=x\" has no label key; write \"key\" or \"key=value\"",
            ),
            (
                format!("{host}[[rule]]\nbind = []\n"),
                "name at least one address such as \"127.0.0.1\"",
            ),
            (
                format!("{host}[[rule]]\nbind = [\"localhost\"]\n"),
                "host names are not resolved",
            ),
            (
                format!("{host}[[rule]]\nlocal_port = 5\n"),
                "the rule matches every port, which cannot all move to one local port",
            ),
            (
                format!("{host}[[rule]]\naction = \"skip\"\nbind = [\"::1\"]\n"),
                ".toml:4: rule[0]: a skip rule forwards nothing",
            ),
            (
                format!("{host}[[rule]]\naction = \"maybe\"\n"),
                "use \"forward\" or \"skip\"",
            ),
            (
                format!("retry_jitter = 2.0\n{host}"),
                "use a fraction such as 0.25",
            ),
            (
                format!("retry_first_delay = \"1m\"\nretry_max_delay = \"30s\"\n{host}"),
                "retry_first_delay: 1m is longer than retry_max_delay (30s); shorten",
            ),
            (
                format!("{host}strict_host_key_checking = \"maybe\"\n"),
                "use \"yes\"",
            ),
            (
                format!("{host}ssh_options = [\"-oX\"]\n"),
                "write e.g. \"Compression=no\"",
            ),
            (
                "[[host]]\nurl = \"ssh://u@[fd00::1\"\n".to_string(),
                "write an IPv6 address as ssh://user@[fd00::1]:22",
            ),
            (
                "[[host]]\nurl = \"ssh://h;x\"\n".to_string(),
                "is not a valid host name (letters, digits",
            ),
        ] {
            let e = load_toml(&bad).expect_err(&bad);
            assert!(e.0.contains(says), "{bad}: {e}");
        }
        let e = Config::load(CliOverrides {
            config_file: Some("/nonexistent/fwdd.toml".into()),
            ..Default::default()
        })
        .expect_err("missing file");
        assert!(e.0.contains("check the path given with --config"), "{e}");
    }

    /// A bad --log-format is blamed on the flag, not on the file's log_format line.
    #[test]
    fn a_bad_flag_is_not_blamed_on_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fwdd.toml");
        std::fs::write(
            &path,
            "log_format = \"text\"\n[[host]]\nurl = \"ssh://h\"\n",
        )
        .expect("write");
        let e = Config::load(CliOverrides {
            config_file: Some(path),
            log_format: Some("xml".into()),
            ..Default::default()
        })
        .expect_err("invalid");
        assert!(
            e.0.starts_with("--log-format (or FWD_LOG_FORMAT): \"xml\""),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_toml("[[host]]\nurl = \"ssh://h\"\nserver_alive_interval = \"soon\"\n")
            .expect_err("invalid");
        assert!(e.0.contains("host[0].server_alive_interval"), "{e}");
        let e = load_toml("[[host]]\nurl = \"ssh://h\"\nbogus = 1\n").expect_err("invalid");
        assert!(e.0.contains("bogus"), "{e}");
        let e =
            load_toml("connect_wait = \"0s\"\n[[host]]\nurl = \"ssh://h\"\n").expect_err("invalid");
        assert!(e.0.contains("connect_wait"), "{e}");
        let e = load_toml("[[host]]\nurl = \"ssh://h\"\n[[host]]\nurl = \"ssh://h\"\n")
            .expect_err("dup");
        assert!(e.0.contains("twice"), "{e}");
        let e = load_toml("[[host]]\nurl = \"ssh://h\"\nssh_options = [\"ProxyCommand\"]\n")
            .expect_err("invalid");
        assert!(e.0.contains("ssh_options[0]"), "{e}");
    }
}

#[cfg(test)]
mod render_tests {
    /// What check-config prints is itself a valid configuration that loads
    /// to the same settings.
    #[test]
    fn rendered_config_round_trips() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/fwdd.toml");
        let load = |p: std::path::PathBuf| {
            super::Config::load(super::CliOverrides {
                config_file: Some(p),
                ..Default::default()
            })
            .expect("valid")
        };
        let original = load(path);
        let text = super::render(&original);
        let dir = tempfile::tempdir().expect("temp dir");
        let copy = dir.path().join("rendered.toml");
        std::fs::write(&copy, &text).expect("write");
        let again = load(copy);
        assert_eq!(again.hosts, original.hosts, "{text}");
        assert_eq!(again.retry, original.retry, "{text}");
        assert_eq!(again.resync_interval, original.resync_interval);
        assert_eq!(again.rules, original.rules, "{text}");
        assert!(text.contains("\n# no [[rule]]"), "{text}");
        assert!(
            text.contains("\n# max_forwards: not set, no cap\n"),
            "{text}"
        );
    }

    /// Rules and max_forwards are shown too, and load back to the same settings.
    #[test]
    fn rules_and_max_forwards_are_rendered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let load = |text: &str, name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            super::Config::load(super::CliOverrides {
                config_file: Some(path),
                ..Default::default()
            })
            .expect("valid")
        };
        let original = load(
            "[[rule]]\nports = \"5432\"\nlocal_port = 15432\n\
             [[rule]]\nhost = \"h\"\nports = \"8000-8099\"\nbind = [\"127.0.0.1\", \"::1\"]\n\
             [[rule]]\nlabel = \"team=x\"\nproject = \"shop\"\naction = \"skip\"\n\
             [[rule]]\nlabel = \"metrics\"\naction = \"skip\"\n\
             [[host]]\nname = \"h\"\nurl = \"ssh://h\"\nmax_forwards = 50\n",
            "rules.toml",
        );
        let text = super::render(&original);
        for line in [
            "\n[[rule]]\nports = \"5432\"\naction = \"forward\"\nlocal_port = 15432\n",
            "\n[[rule]]\nhost = \"h\"\nports = \"8000-8099\"\naction = \"forward\"\nbind = [\"127.0.0.1\", \"::1\"]\n",
            "\n[[rule]]\nlabel = \"team=x\"\nproject = \"shop\"\naction = \"skip\"\n",
            "\n[[rule]]\nlabel = \"metrics\"\naction = \"skip\"\n",
            "\nmax_forwards = 50\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("# no [[rule]]"), "{text}");
        let again = load(&text, "rendered.toml");
        assert_eq!(again.rules, original.rules, "{text}");
        assert_eq!(again.hosts, original.hosts, "{text}");
    }
}

#[cfg(test)]
mod metrics_config {
    fn load(text: &str) -> Result<super::Config, super::ConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.toml");
        std::fs::write(&path, text).expect("write");
        super::Config::load(super::CliOverrides {
            config_file: Some(path),
            ..Default::default()
        })
    }

    #[test]
    fn an_address_off_or_an_error() {
        let host = "[[host]]\nurl = \"ssh://h\"\n";
        assert_eq!(load(host).expect("valid").metrics, None);
        let c = load(&format!("metrics = \"127.0.0.1:9633\"\n{host}")).expect("valid");
        assert_eq!(c.metrics, Some("127.0.0.1:9633".parse().expect("addr")));
        let again = load(&super::render(&c)).expect("rendered config loads");
        assert_eq!(again.metrics, c.metrics);
        assert_eq!(
            load(&format!("metrics = \"off\"\n{host}"))
                .expect("valid")
                .metrics,
            None
        );
        let e = load(&format!("metrics = \"localhost\"\n{host}"))
            .expect_err("no port")
            .to_string();
        assert!(e.contains("127.0.0.1:9633"), "{e}");
    }
}

#[cfg(test)]
mod expose_config {
    fn load(text: &str) -> Result<super::Config, super::ConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.toml");
        std::fs::write(&path, text).expect("write");
        super::Config::load(super::CliOverrides {
            config_file: Some(path),
            ..Default::default()
        })
    }

    #[test]
    fn entries_scopes_and_errors() {
        let c = load(
            "[[host]]\nurl = \"ssh://h\"\nexpose = [18080, \"8080:3000\", \"9000:[::1]:9001\"]\n\
             expose_on = [\"gateway\", \"172.18.0.1\"]\n",
        )
        .expect("valid");
        let h = &c.hosts[0];
        let shown: Vec<String> = h.expose.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "18080 → 127.0.0.1:18080",
                "8080 → 127.0.0.1:3000",
                "9000 → [::1]:9001"
            ]
        );
        assert_eq!(h.expose_on.len(), 2);
        // Rendered and loaded back: the same.
        let again = load(&super::render(&c)).expect("rendered config loads");
        assert_eq!(again.hosts[0].expose, h.expose);
        assert_eq!(again.hosts[0].expose_on, h.expose_on);
        // Not given: nothing exposed, the gateway as the place.
        let plain = load("[[host]]\nurl = \"ssh://h\"\n").expect("valid");
        assert!(plain.hosts[0].expose.is_empty());
        assert_eq!(plain.hosts[0].expose_on, [fwd_core::BindScope::Gateway]);

        for (text, says) in [
            (
                "expose = [0]",
                "host[0].expose[0]: expose entry \"0\": the runner port is 0",
            ),
            ("expose = [\"a:b\"]", "not a runner port"),
            ("expose = [1, \"1:2\"]", "remote port 1 is exposed twice"),
            ("expose = [\"1:db.internal:5432\"]", "not an IP address"),
            ("expose_on = []", "expose_on is empty"),
            ("expose_on = [\"everywhere\"]", "host[0].expose_on[0]"),
        ] {
            let e = load(&format!("[[host]]\nurl = \"ssh://h\"\n{text}\n"))
                .expect_err(text)
                .to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    /// A reload that changes only the exposures keeps the host's master.
    #[test]
    fn exposures_are_not_part_of_the_connection() {
        let a = load("[[host]]\nurl = \"ssh://h\"\nexpose = [1]\n").expect("valid");
        let b = load("[[host]]\nurl = \"ssh://h\"\nexpose = [2]\nexpose_on = [\"loopback\"]\n")
            .expect("valid");
        assert_ne!(a.hosts[0], b.hosts[0]);
        assert_eq!(a.hosts[0].connection(), b.hosts[0].connection());
        let c = load("[[host]]\nurl = \"ssh://h:2222\"\nexpose = [1]\n").expect("valid");
        assert_ne!(a.hosts[0].connection(), c.hosts[0].connection());
    }
}

#[cfg(test)]
mod example_config {
    /// The documented example must stay valid.
    #[test]
    fn example_file_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/fwdd.toml");
        let c = super::Config::load(super::CliOverrides {
            config_file: Some(path),
            ..Default::default()
        })
        .expect("config/fwdd.toml is valid");
        assert_eq!(c.hosts[0].name, "ci-docker");
        assert_eq!(c.hosts[0].ssh.destination, "ci@docker-1.example.com");
    }
}

#[cfg(test)]
mod limits_config {
    fn load(text: &str) -> Result<super::Config, super::ConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("l.toml");
        std::fs::write(&path, text).expect("write");
        super::Config::load(super::CliOverrides {
            config_file: Some(path),
            ..Default::default()
        })
    }

    #[test]
    fn caps_are_read_rendered_and_zero_is_refused() {
        let host = "[[host]]\nurl = \"ssh://h\"\n";
        let unset = load(host).expect("valid");
        assert_eq!(unset.limits, fwd_core::LimitSettings::default());
        let text = super::render(&unset);
        assert!(
            text.contains(
                "\n# max_tunnels_per_forward: not set, derived from the open-files limit"
            ),
            "{text}"
        );
        let set = load(&format!(
            "max_forwards_per_container = 100\nmax_forwards_total = 150\nmax_tunnels_per_forward = 200\n\
             max_tunnels_per_exposure = 300\nmax_engine_clients = 40\n{host}"
        ))
        .expect("valid");
        assert_eq!(
            set.limits,
            fwd_core::LimitSettings {
                forwards_per_container: Some(100),
                forwards_total: Some(150),
                tunnels_per_forward: Some(200),
                tunnels_per_exposure: Some(300),
                engine_clients: Some(40),
            }
        );
        let text = super::render(&set);
        assert!(text.contains("\nmax_engine_clients = 40\n"), "{text}");
        let e = load(&format!("max_engine_clients = 0\n{host}")).expect_err("zero");
        assert!(e.to_string().contains("max_engine_clients: 0"), "{e}");
    }
}
