//! The file as written: serde types whose values keep their place in the
//! text (`toml::Spanned`), so that an error about a value names its line.
//! Nothing is checked here beyond TOML's types and the known keys.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::error::ConfigError;

/// A value and where the file has it.
pub type S<T> = Spanned<T>;

/// A value that came from a flag or was made up: it has no place in the
/// file (errors about it name its flag, never a line).
pub fn unplaced<T>(value: T) -> S<T> {
    Spanned::new(0..0, value)
}

/// One `expose` entry as written: a port, or a string of the grammar.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileExpose {
    Port(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub runtime_dir: Option<PathBuf>,
    pub log_format: Option<S<String>>,
    pub connect_wait: Option<S<String>>,
    pub startup_window: Option<S<String>>,
    pub engine_socket_group: Option<S<String>>,
    pub conflict_retry: Option<S<String>>,
    pub retry_first_delay: Option<S<String>>,
    pub retry_max_delay: Option<S<String>>,
    pub retry_jitter: Option<S<f64>>,
    pub healthy_after: Option<S<String>>,
    pub permanent_retry: Option<S<String>>,
    pub resync_interval: Option<S<String>>,
    pub metrics: Option<S<String>>,
    pub max_forwards_per_container: Option<S<u64>>,
    pub max_forwards_total: Option<S<u64>>,
    pub max_tunnels_per_forward: Option<S<u64>>,
    pub max_tunnels_per_exposure: Option<S<u64>>,
    pub max_engine_clients: Option<S<u64>>,
    pub names_range: Option<S<String>>,
    pub names_suffix: Option<S<String>>,
    pub hosts_file: Option<S<String>>,
    pub udp_idle: Option<S<String>>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<S<FileRule>>,
    #[serde(default, rename = "host")]
    pub hosts: Vec<S<FileHost>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    pub host: Option<S<String>>,
    pub ports: Option<S<String>>,
    pub label: Option<S<String>>,
    pub project: Option<String>,
    pub action: Option<S<String>>,
    pub local_port: Option<S<u16>>,
    pub bind: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHost {
    pub name: Option<S<String>>,
    pub url: S<String>,
    pub identity_file: Option<PathBuf>,
    pub ssh_config: Option<PathBuf>,
    #[serde(default)]
    pub ssh_options: Vec<S<String>>,
    pub server_alive_interval: Option<S<String>>,
    pub server_alive_count_max: Option<u32>,
    pub connect_timeout: Option<S<String>>,
    pub health_interval: Option<S<String>>,
    pub engine_gone_after: Option<S<String>>,
    pub strict_host_key_checking: Option<S<String>>,
    pub ssh_program: Option<PathBuf>,
    pub max_forwards: Option<usize>,
    pub engine_socket: Option<bool>,
    pub engine_remote_socket: Option<S<String>>,
    pub direct_route: Option<bool>,
    pub names: Option<bool>,
    pub udp: Option<bool>,
    #[serde(default)]
    pub expose: Vec<S<FileExpose>>,
    pub expose_on: Option<S<Vec<S<String>>>>,
}

impl FileHost {
    /// A host given only by its URL (`--host`).
    pub fn from_url(url: &str) -> FileHost {
        FileHost {
            name: None,
            url: unplaced(url.to_string()),
            identity_file: None,
            ssh_config: None,
            ssh_options: Vec::new(),
            server_alive_interval: None,
            server_alive_count_max: None,
            connect_timeout: None,
            health_interval: None,
            engine_gone_after: None,
            strict_host_key_checking: None,
            ssh_program: None,
            max_forwards: None,
            engine_socket: None,
            engine_remote_socket: None,
            direct_route: None,
            names: None,
            udp: None,
            expose: Vec::new(),
            expose_on: None,
        }
    }
}

/// The file's text, and what it says.
pub fn read(path: &Path) -> Result<(String, FileConfig), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::general(format!(
            "cannot read the configuration file {}: {e}; check the path given with \
             --config / FWD_CONFIG (or to check-config) and that fwdd's user may read it",
            path.display()
        ))
    })?;
    let file = toml::from_str(&text).map_err(|e| ConfigError::toml(path, &e))?;
    Ok((text, file))
}

/// The value and its span, if set.
pub fn parts<T>(v: &Option<S<T>>) -> Option<(&T, std::ops::Range<usize>)> {
    v.as_ref().map(|s| (s.get_ref(), s.span()))
}
