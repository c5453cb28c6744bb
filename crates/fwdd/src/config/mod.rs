//! Configuration: command line and TOML file → one validated [`Config`].
//!
//! Everything is checked before anything starts; an error names the key as
//! the user wrote it (`host[1].url` in the file, `--host #1.url` for a
//! flag), for the file its line, what is wrong and what to write instead,
//! and fwdd exits 2. Defaults come from `fwd_core::defaults`.
//!
//! - `file`: the file's serde types, values with their spans
//! - `error`: [`ConfigError`] and the key paths
//! - `values`, `names`, `host`, `rules`: the checks, key by key
//! - `render`: the effective configuration as TOML (`check-config`)

mod error;
mod file;
mod host;
mod names;
mod render;
mod rules;
mod settings;
mod values;

use std::time::Duration;

use fwd_core::defaults;

pub use error::ConfigError;
pub use render::render;
pub use settings::{CliOverrides, Config, HostConfig, LogFormat, NamesConfig, RetryConfig};

use error::Key;
use file::{parts, FileConfig, FileHost};
use values::duration;

/// The runtime directory when none is configured.
pub fn default_runtime_dir() -> std::path::PathBuf {
    fwd_proto::default_runtime_dir()
}

impl Config {
    /// Loads and validates. An error about a key that comes from the file
    /// names the file and the line, e.g.
    /// `fwdd.toml:7: host[0].health_interval: "often" is not a duration`.
    pub fn load(cli: CliOverrides) -> Result<Config, ConfigError> {
        match &cli.config_file {
            None => from_parts(&FileConfig::default(), &cli),
            Some(path) => {
                let (text, file) = file::read(path)?;
                from_parts(&file, &cli).map_err(|e| e.located(path, &text))
            }
        }
    }
}

/// The file's settings with the flags over them.
fn from_parts(file: &FileConfig, cli: &CliOverrides) -> Result<Config, ConfigError> {
    let log_format = log_format(file, cli)?;
    let hosts = hosts(file, cli)?;
    let rules = rules::rules_config(&file.rules, &hosts)?;
    let engine_socket_group = values::socket_group(&file.engine_socket_group)?;
    let metrics = match &cli.metrics {
        Some(a) => values::metrics_addr(&Key::flag("--metrics (or FWD_METRICS)"), Some((a, 0..0))),
        None => values::metrics_addr(
            &Key::file("metrics"),
            parts(&file.metrics).map(|(a, span)| (a.as_str(), span)),
        ),
    }?;
    let connect_wait = duration(
        &Key::file("connect_wait"),
        &file.connect_wait,
        defaults::CONNECT_WAIT,
    )?;
    Ok(Config {
        metrics,
        limits: limits(file)?,
        names: values::names(file)?,
        udp_idle: duration(&Key::file("udp_idle"), &file.udp_idle, defaults::UDP_IDLE)?,
        rules,
        engine_socket_group,
        runtime_dir: cli
            .runtime_dir
            .clone()
            .or(file.runtime_dir.clone())
            .unwrap_or_else(default_runtime_dir),
        log_format,
        connect_wait,
        startup_window: match parts(&file.startup_window) {
            Some((off, _)) if ["0", "0s", "off"].contains(&off.as_str()) => Duration::ZERO,
            _ => duration(
                &Key::file("startup_window"),
                &file.startup_window,
                connect_wait,
            )?,
        },
        conflict_retry: duration(
            &Key::file("conflict_retry"),
            &file.conflict_retry,
            defaults::CONFLICT_RETRY,
        )?,
        retry: retry_config(file)?,
        resync_interval: duration(
            &Key::file("resync_interval"),
            &file.resync_interval,
            defaults::RESYNC_INTERVAL,
        )?,
        hosts,
    })
}

/// A bad `--log-format` is blamed on the flag, not on the file's line.
fn log_format(file: &FileConfig, cli: &CliOverrides) -> Result<LogFormat, ConfigError> {
    let (key, value, span) = match (&cli.log_format, parts(&file.log_format)) {
        (Some(v), _) => (Key::flag("--log-format (or FWD_LOG_FORMAT)"), v, 0..0),
        (None, Some((v, span))) => (Key::file("log_format"), v, span),
        (None, None) => return Ok(LogFormat::Text),
    };
    match value.as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(key.error(
            span,
            format!(
                "{other:?} is not a log format; use \"text\" (for people) or \"json\" (one \
                 object per line, for log pipelines)"
            ),
        )),
    }
}

/// The file's `[[host]]` tables, then the `--host` flags; names distinct.
fn hosts(file: &FileConfig, cli: &CliOverrides) -> Result<Vec<HostConfig>, ConfigError> {
    let mut hosts = Vec::new();
    let mut tables = Vec::new();
    for (i, h) in file.hosts.iter().enumerate() {
        hosts.push(host::host_config(
            &Key::file("host").item(i),
            h.get_ref(),
            cli,
        )?);
        tables.push(Some(h.span()));
    }
    for (i, url) in cli.hosts.iter().enumerate() {
        let key = Key::flag(format!("--host #{}", i + 1));
        hosts.push(host::host_config(&key, &FileHost::from_url(url), cli)?);
        tables.push(None);
    }
    if hosts.is_empty() {
        return Err(ConfigError::general(
            "no Docker host: pass --host ssh://user@host or a config file with [[host]]",
        ));
    }
    for (i, a) in hosts.iter().enumerate() {
        if hosts[..i].iter().any(|b| b.name == a.name) {
            let problem = format!(
                "host {:?} is configured twice (give each [[host]] a distinct name)",
                a.name
            );
            return Err(match tables[i].clone() {
                Some(span) => ConfigError::at(span, problem),
                None => ConfigError::general(problem),
            });
        }
    }
    Ok(hosts)
}

fn limits(file: &FileConfig) -> Result<fwd_core::LimitSettings, ConfigError> {
    use values::cap;
    Ok(fwd_core::LimitSettings {
        forwards_per_container: cap(
            "max_forwards_per_container",
            &file.max_forwards_per_container,
        )?,
        forwards_total: cap("max_forwards_total", &file.max_forwards_total)?,
        tunnels_per_forward: cap("max_tunnels_per_forward", &file.max_tunnels_per_forward)?,
        tunnels_per_exposure: cap("max_tunnels_per_exposure", &file.max_tunnels_per_exposure)?,
        engine_clients: cap("max_engine_clients", &file.max_engine_clients)?,
    })
}

fn retry_config(file: &FileConfig) -> Result<RetryConfig, ConfigError> {
    let jitter = match parts(&file.retry_jitter) {
        None => defaults::BACKOFF_JITTER,
        Some((&j, _)) if (0.0..=1.0).contains(&j) => j,
        Some((j, span)) => {
            return Err(Key::file("retry_jitter").error(
                span,
                format!("{j} is not between 0 and 1; use a fraction such as 0.25 (±25%)"),
            ))
        }
    };
    let first = Key::file("retry_first_delay");
    let backoff = fwd_core::BackoffPolicy {
        base: duration(&first, &file.retry_first_delay, defaults::BACKOFF_BASE)?,
        cap: duration(
            &Key::file("retry_max_delay"),
            &file.retry_max_delay,
            defaults::BACKOFF_CAP,
        )?,
        jitter,
        healthy_after: duration(
            &Key::file("healthy_after"),
            &file.healthy_after,
            defaults::HEALTHY_AFTER,
        )?,
    };
    if backoff.base > backoff.cap {
        let problem = format!(
            "{} is longer than retry_max_delay ({}); shorten retry_first_delay or raise \
             retry_max_delay",
            humantime::format_duration(backoff.base),
            humantime::format_duration(backoff.cap)
        );
        return Err(match &file.retry_first_delay {
            Some(v) => first.error(v.span(), problem),
            None => first.unplaced(problem),
        });
    }
    Ok(RetryConfig {
        backoff,
        permanent_retry: duration(
            &Key::file("permanent_retry"),
            &file.permanent_retry,
            defaults::PERMANENT_RETRY,
        )?,
    })
}

#[cfg(test)]
mod tests;
