//! One `[[host]]` (or `--host`) → a [`HostConfig`].

use std::path::PathBuf;

use fwd_core::defaults;

use super::error::{ConfigError, Key};
use super::file::{parts, FileExpose, FileHost};
use super::names::{check_host_name, derived_host_name, HOST_NAME_MAX};
use super::settings::{CliOverrides, HostConfig};
use super::values::duration;

pub fn host_config(key: &Key, h: &FileHost, cli: &CliOverrides) -> Result<HostConfig, ConfigError> {
    let (destination, port) = fwd_ssh::parse_host_url(h.url.get_ref())
        .map_err(|e| key.field("url").error(h.url.span(), e))?;
    if let Some((name, span)) = parts(&h.name) {
        check_host_name(name).map_err(|why| {
            key.field("name").error(
                span,
                format!(
                    "{name:?} {why}; a host's name is part of its engine socket's file name, so \
                     write 1 to {HOST_NAME_MAX} letters, digits and . _ - @ : %, not starting \
                     with '.' or '-' and without \"..\", e.g. name = \"ci-docker\""
                ),
            )
        })?;
    }
    let ssh = ssh_config(key, h, cli, destination.clone(), port)?;
    Ok(HostConfig {
        expose: expose(key, h)?,
        expose_on: expose_on(key, h)?,
        name: match &h.name {
            Some(name) => name.get_ref().clone(),
            None => derived_host_name(&destination, port),
        },
        ssh,
        health_interval: duration(
            &key.field("health_interval"),
            &h.health_interval,
            defaults::HEALTH_INTERVAL,
        )?,
        engine_gone_after: duration(
            &key.field("engine_gone_after"),
            &h.engine_gone_after,
            defaults::ENGINE_GONE_AFTER,
        )?,
        max_forwards: h.max_forwards,
        engine_socket: h.engine_socket.unwrap_or(true),
        direct_route: h.direct_route.unwrap_or(true),
        names: h.names.unwrap_or(false),
        udp: h.udp.unwrap_or(false),
        engine_remote_socket: engine_remote_socket(key, h)?,
    })
}

/// The engine's socket on the remote host, if named: the rule every remote
/// path meets (`fwd_core::paths`).
fn engine_remote_socket(key: &Key, h: &FileHost) -> Result<Option<String>, ConfigError> {
    let Some((p, span)) = parts(&h.engine_remote_socket) else {
        return Ok(None);
    };
    match fwd_core::paths::remote_socket_path(p) {
        Ok(p) => Ok(Some(p.to_string())),
        Err(why) => Err(key.field("engine_remote_socket").error(
            span,
            format!(
                "{p:?} {why}; write the absolute path of the engine's socket on the remote \
                 host, e.g. \"/var/run/docker.sock\""
            ),
        )),
    }
}

fn ssh_config(
    key: &Key,
    h: &FileHost,
    cli: &CliOverrides,
    destination: String,
    port: Option<u16>,
) -> Result<fwd_ssh::MasterConfig, ConfigError> {
    let strict = match parts(&h.strict_host_key_checking) {
        None => defaults::STRICT_HOST_KEY_CHECKING.to_string(),
        Some((s, _)) if ["yes", "accept-new", "no", "off"].contains(&s.as_str()) => s.clone(),
        Some((s, span)) => {
            return Err(key.field("strict_host_key_checking").error(
                span,
                format!(
                    "{s:?} is not a policy; use \"yes\" (only hosts already in known_hosts), \
                     \"accept-new\" or \"no\""
                ),
            ))
        }
    };
    for (j, o) in h.ssh_options.iter().enumerate() {
        let text = o.get_ref();
        let ok = text
            .split_once('=')
            .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()))
            && !text.chars().any(|c| c.is_control());
        if !ok {
            return Err(key.field("ssh_options").item(j).error(
                o.span(),
                format!(
                    "{text:?} is not of the form Key=Value (an alphanumeric key, '=', a value \
                     without control characters); write e.g. \"Compression=no\""
                ),
            ));
        }
    }
    Ok(fwd_ssh::MasterConfig {
        destination,
        port,
        identity_file: cli
            .identity_file
            .clone()
            .or_else(|| h.identity_file.clone()),
        ssh_config: cli.ssh_config.clone().or_else(|| h.ssh_config.clone()),
        extra_options: h.ssh_options.iter().map(|o| o.get_ref().clone()).collect(),
        server_alive_interval: duration(
            &key.field("server_alive_interval"),
            &h.server_alive_interval,
            defaults::KEEPALIVE_INTERVAL,
        )?,
        server_alive_count_max: h
            .server_alive_count_max
            .unwrap_or(defaults::KEEPALIVE_COUNT),
        connect_timeout: duration(
            &key.field("connect_timeout"),
            &h.connect_timeout,
            defaults::CONNECT_TIMEOUT,
        )?,
        strict_host_key_checking: strict,
        ssh_program: h
            .ssh_program
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::SSH_PROGRAM)),
    })
}

fn expose(key: &Key, h: &FileHost) -> Result<Vec<fwd_core::ExposeSpec>, ConfigError> {
    let mut out: Vec<fwd_core::ExposeSpec> = Vec::new();
    for (j, e) in h.expose.iter().enumerate() {
        let entry = key.field("expose").item(j);
        let text = match e.get_ref() {
            FileExpose::Port(p) => p.to_string(),
            FileExpose::Text(t) => t.clone(),
        };
        let spec = fwd_core::parse_expose(&text).map_err(|why| entry.error(e.span(), why))?;
        if out.iter().any(|x| x.remote_port == spec.remote_port) {
            return Err(entry.error(
                e.span(),
                format!(
                    "remote port {} is exposed twice; each remote port reaches one runner address",
                    spec.remote_port
                ),
            ));
        }
        out.push(spec);
    }
    Ok(out)
}

fn expose_on(key: &Key, h: &FileHost) -> Result<Vec<fwd_core::BindScope>, ConfigError> {
    let Some(list) = &h.expose_on else {
        return Ok(vec![fwd_core::BindScope::Gateway]);
    };
    if list.get_ref().is_empty() {
        return Err(key.field("expose_on").error(
            list.span(),
            "expose_on is empty, so sshd would listen nowhere; leave it out for the default \
             [\"gateway\"], or name where sshd should listen",
        ));
    }
    list.get_ref()
        .iter()
        .enumerate()
        .map(|(j, s)| {
            fwd_core::parse_bind_scope(s.get_ref())
                .map_err(|why| key.field("expose_on").item(j).error(s.span(), why))
        })
        .collect()
}
