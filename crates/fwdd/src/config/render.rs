//! The effective configuration as TOML, for `fwdd check-config`: every
//! setting with the value that will be used, defaults included. The values
//! go through serde (`toml::to_string` of a view of [`Config`]), so the text
//! is TOML that loads back to the same settings; a setting left unset
//! where that means something (no cap, off, found on the host) is said in
//! a comment where the key would be.

use std::time::Duration;

use serde::Serialize;

use super::settings::{Config, HostConfig};

/// A duration as the file writes it ("1m 30s").
fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The top-level keys.
#[derive(Serialize)]
struct TopView {
    runtime_dir: String,
    log_format: &'static str,
    connect_wait: String,
    startup_window: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    engine_socket_group: Option<String>,
    conflict_retry: String,
    retry_first_delay: String,
    retry_max_delay: String,
    retry_jitter: f64,
    healthy_after: String,
    permanent_retry: String,
    resync_interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_forwards_per_container: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_forwards_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tunnels_per_forward: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tunnels_per_exposure: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_engine_clients: Option<u64>,
    names_range: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    names_suffix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hosts_file: Option<String>,
    udp_idle: String,
}

/// One `[[rule]]`: the conditions it has, then its action.
#[derive(Serialize)]
struct RuleView {
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ports: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project: Option<String>,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bind: Option<Vec<String>>,
}

/// One `[[host]]`.
#[derive(Serialize)]
struct HostView {
    name: String,
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ssh_config: Option<String>,
    ssh_options: Vec<String>,
    server_alive_interval: String,
    server_alive_count_max: u32,
    connect_timeout: String,
    health_interval: String,
    engine_gone_after: String,
    strict_host_key_checking: String,
    ssh_program: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_forwards: Option<usize>,
    engine_socket: bool,
    direct_route: bool,
    names: bool,
    udp: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    engine_remote_socket: Option<String>,
    expose: Vec<String>,
    expose_on: Vec<String>,
}

/// The effective configuration as TOML, for `fwdd check-config`.
pub fn render(c: &Config) -> String {
    let mut out = table(&top_view(c));
    out.push_str(&top_comments(c));
    if c.rules.rules.is_empty() {
        out.push_str(
            "\n# no [[rule]]: every published TCP port is forwarded as published \
             (fwd.* container labels still apply), on 127.0.0.1 and [::1]\n",
        );
    }
    for r in &c.rules.rules {
        out.push_str("\n[[rule]]\n");
        out.push_str(&table(&rule_view(r)));
    }
    for h in &c.hosts {
        out.push_str("\n[[host]]\n");
        let mut body = table(&host_view(h));
        if h.max_forwards.is_none() {
            comment_after(&mut body, "ssh_program", "# max_forwards: not set, no cap");
        }
        if h.engine_remote_socket.is_none() {
            comment_after(
                &mut body,
                "direct_route",
                "# engine_remote_socket: not set, found on the host (DOCKER_HOST, the CLI's \
                 context, rootless and rootful sockets)",
            );
        }
        out.push_str(&body);
    }
    out
}

/// Puts `comment` on the line after `key`'s, where the unset key would be
/// (at the end if `key` is not there).
fn comment_after(body: &mut String, key: &str, comment: &str) {
    let start = format!("{key} = ");
    let at = body
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .scan(0, |line, next| {
            let this = *line;
            *line = next;
            Some((this, next))
        })
        .find(|(line, _)| body[*line..].starts_with(&start))
        .map_or(body.len(), |(_, next)| next);
    body.insert_str(at, &format!("{comment}\n"));
}

/// A view's keys, one a line. The views hold strings, numbers, booleans
/// and lists of strings only: serde cannot fail on them.
fn table<T: Serialize>(view: &T) -> String {
    toml::to_string(view).unwrap_or_else(|e| format!("# cannot be shown: {e}\n"))
}

fn top_view(c: &Config) -> TopView {
    let b = &c.retry.backoff;
    let l = &c.limits;
    TopView {
        runtime_dir: c.runtime_dir.display().to_string(),
        log_format: c.log_format.as_str(),
        connect_wait: human(c.connect_wait),
        startup_window: human(c.startup_window),
        engine_socket_group: c.engine_socket_group.as_ref().map(|g| g.name.clone()),
        conflict_retry: human(c.conflict_retry),
        retry_first_delay: human(b.base),
        retry_max_delay: human(b.cap),
        retry_jitter: b.jitter,
        healthy_after: human(b.healthy_after),
        permanent_retry: human(c.retry.permanent_retry),
        resync_interval: human(c.resync_interval),
        metrics: c.metrics.map(|a| a.to_string()),
        max_forwards_per_container: l.forwards_per_container,
        max_forwards_total: l.forwards_total,
        max_tunnels_per_forward: l.tunnels_per_forward,
        max_tunnels_per_exposure: l.tunnels_per_exposure,
        max_engine_clients: l.engine_clients,
        names_range: c.names.range.to_string(),
        names_suffix: c.names.suffix.clone(),
        hosts_file: c.names.hosts_file.as_ref().map(|p| p.display().to_string()),
        udp_idle: human(c.udp_idle),
    }
}

/// What an unset top-level key means.
fn top_comments(c: &Config) -> String {
    let mut out = String::new();
    if c.metrics.is_none() {
        out.push_str("# metrics: off (set metrics = \"127.0.0.1:9633\" to serve /metrics)\n");
    }
    if c.names.hosts_file.is_none() {
        out.push_str(
            "# hosts_file: not set, names are written to hosts in the runtime directory only\n",
        );
    }
    let l = &c.limits;
    for (key, value) in [
        ("max_forwards_per_container", l.forwards_per_container),
        ("max_forwards_total", l.forwards_total),
        ("max_tunnels_per_forward", l.tunnels_per_forward),
        ("max_tunnels_per_exposure", l.tunnels_per_exposure),
        ("max_engine_clients", l.engine_clients),
    ] {
        if value.is_none() {
            out.push_str(&format!(
                "# {key}: not set, derived from the open-files limit (fwdctl status shows it)\n"
            ));
        }
    }
    out
}

fn rule_view(r: &fwd_core::Rule) -> RuleView {
    use fwd_core::RuleAction;
    let (action, local_port, bind) = match &r.action {
        RuleAction::Skip => ("skip", None, None),
        RuleAction::Forward { local_port, bind } => (
            "forward",
            *local_port,
            bind.as_ref()
                .map(|addrs| addrs.iter().map(|a| a.to_string()).collect()),
        ),
    };
    RuleView {
        host: r.host.clone(),
        ports: r.ports.map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        }),
        label: r.label.as_ref().map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        }),
        project: r.project.clone(),
        action,
        local_port,
        bind,
    }
}

fn host_view(h: &HostConfig) -> HostView {
    let s = &h.ssh;
    HostView {
        name: h.name.clone(),
        url: match s.port {
            Some(p) => format!("ssh://{}:{p}", s.destination),
            None => format!("ssh://{}", s.destination),
        },
        identity_file: s.identity_file.as_ref().map(|p| p.display().to_string()),
        ssh_config: s.ssh_config.as_ref().map(|p| p.display().to_string()),
        ssh_options: s.extra_options.clone(),
        server_alive_interval: human(s.server_alive_interval),
        server_alive_count_max: s.server_alive_count_max,
        connect_timeout: human(s.connect_timeout),
        health_interval: human(h.health_interval),
        engine_gone_after: human(h.engine_gone_after),
        strict_host_key_checking: s.strict_host_key_checking.clone(),
        ssh_program: s.ssh_program.display().to_string(),
        max_forwards: h.max_forwards,
        engine_socket: h.engine_socket,
        direct_route: h.direct_route,
        names: h.names,
        udp: h.udp,
        engine_remote_socket: h.engine_remote_socket.clone(),
        expose: h
            .expose
            .iter()
            .map(|e| format!("{}:{}", e.remote_port, e.target))
            .collect(),
        expose_on: h.expose_on.iter().map(|b| b.to_string()).collect(),
    }
}
