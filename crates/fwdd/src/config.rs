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
    /// How often a port taken by another program is tried again.
    pub conflict_retry: Duration,
    pub hosts: Vec<HostConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct HostConfig {
    pub name: String,
    pub ssh: fwd_ssh::MasterConfig,
    pub health_interval: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    runtime_dir: Option<PathBuf>,
    log_format: Option<String>,
    connect_wait: Option<String>,
    conflict_retry: Option<String>,
    #[serde(default, rename = "host")]
    hosts: Vec<FileHost>,
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
    strict_host_key_checking: Option<String>,
    ssh_program: Option<PathBuf>,
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
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) if d > Duration::ZERO => Ok(d),
            Ok(_) => err(format!("{key}: must be greater than zero")),
            Err(e) => err(format!(
                "{key}: {v:?} is not a duration ({e}); write e.g. \"15s\" or \"2m\""
            )),
        },
    }
}

/// `ssh://[user@]host[:port]` → (destination, port).
pub fn parse_host_url(url: &str) -> Result<(String, Option<u16>), String> {
    let rest = url
        .strip_prefix("ssh://")
        .ok_or_else(|| format!("{url:?} is not an ssh:// URL (write ssh://user@host[:port])"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '[' in the host"))?;
        let port = match tail {
            "" => None,
            t => Some(
                t.strip_prefix(':')
                    .ok_or_else(|| format!("{url:?}: junk after ']'"))?,
            ),
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{url:?}: port {p:?} is not a number from 1 to 65535"))
        })
        .transpose()?;
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:%".contains(c))
    };
    if !valid(host) {
        return Err(format!("{url:?}: {host:?} is not a valid host name"));
    }
    if let Some(u) = user {
        if !valid(u) {
            return Err(format!("{url:?}: {u:?} is not a valid user name"));
        }
    }
    let destination = match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    };
    Ok((destination, port))
}

/// The runtime directory when none is configured.
pub fn default_runtime_dir() -> PathBuf {
    fwd_proto::default_runtime_dir()
}

impl Config {
    pub fn load(cli: CliOverrides) -> Result<Config, ConfigError> {
        let file = match &cli.config_file {
            None => FileConfig::default(),
            Some(path) => read_file(path)?,
        };
        let log_format = match cli.log_format.as_deref().or(file.log_format.as_deref()) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return err(format!("log_format: {other:?} is not \"text\" or \"json\""))
            }
        };
        let mut hosts = Vec::new();
        for (i, h) in file.hosts.iter().enumerate() {
            hosts.push(host_config(&format!("host[{i}]"), h, &cli)?);
        }
        for (i, url) in cli.hosts.iter().enumerate() {
            let h = FileHost {
                url: url.clone(),
                ..FileHost::default()
            };
            hosts.push(host_config(&format!("--host #{}", i + 1), &h, &cli)?);
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
        Ok(Config {
            runtime_dir: cli
                .runtime_dir
                .clone()
                .or(file.runtime_dir)
                .unwrap_or_else(default_runtime_dir),
            log_format,
            connect_wait: duration(
                "connect_wait",
                file.connect_wait.as_deref(),
                Duration::from_secs(10),
            )?,
            conflict_retry: duration(
                "conflict_retry",
                file.conflict_retry.as_deref(),
                Duration::from_secs(3),
            )?,
            hosts,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

fn host_config(key: &str, h: &FileHost, cli: &CliOverrides) -> Result<HostConfig, ConfigError> {
    let (destination, port) =
        parse_host_url(&h.url).map_err(|e| ConfigError(format!("{key}.url: {e}")))?;
    let strict = h
        .strict_host_key_checking
        .clone()
        .unwrap_or_else(|| "yes".into());
    if !["yes", "accept-new", "no", "off"].contains(&strict.as_str()) {
        return err(format!(
            "{key}.strict_host_key_checking: {strict:?} is not one of yes, accept-new, no"
        ));
    }
    for (j, o) in h.ssh_options.iter().enumerate() {
        let ok = o
            .split_once('=')
            .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()))
            && !o.chars().any(|c| c.is_control());
        if !ok {
            return err(format!(
                "{key}.ssh_options[{j}]: {o:?} is not of the form Key=Value"
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
    Ok(HostConfig {
        name: h.name.clone().unwrap_or_else(|| match port {
            Some(p) => format!("{destination}:{p}"),
            None => destination,
        }),
        ssh,
        health_interval: duration(
            &format!("{key}.health_interval"),
            h.health_interval.as_deref(),
            Duration::from_secs(15),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("fwdd-cfg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!(
            "{:x}.toml",
            text.len() * 31 + text.as_bytes()[0] as usize
        ));
        std::fs::write(&path, text).expect("write config");
        Config::load(CliOverrides {
            config_file: Some(path),
            ..Default::default()
        })
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
