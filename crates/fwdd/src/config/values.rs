//! Single values: durations, caps, the metrics address, the socket group.
//! Each error names its key and says what to write.

use std::time::Duration;

use super::error::{ConfigError, Key};
use super::file::{parts, FileConfig, S};
use super::settings::{NamesConfig, SocketGroup};

/// A duration greater than zero, or `default` when unset.
pub fn duration(
    key: &Key,
    value: &Option<S<String>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some((v, span)) = parts(value) else {
        return Ok(default);
    };
    match humantime::parse_duration(v) {
        Ok(d) if d > Duration::ZERO => Ok(d),
        Ok(_) => Err(key.error(
            span,
            format!("{v:?} is zero; use a duration greater than zero such as \"15s\""),
        )),
        Err(e) => Err(key.error(
            span,
            format!(
                "{v:?} is not a duration ({e}); use a number with a unit such as \"15s\" or \"2m\""
            ),
        )),
    }
}

/// A cap on what one party may hold: at least 1, or unset (derived from
/// the open-files limit).
pub fn cap(key: &str, value: &Option<S<u64>>) -> Result<Option<u64>, ConfigError> {
    match parts(value) {
        Some((0, span)) => Err(Key::file(key).error(
            span,
            "0 would refuse everything; use a number of at least 1, or remove the key \
             for the default derived from the open-files limit",
        )),
        other => Ok(other.map(|(n, _)| *n)),
    }
}

/// `metrics`: an address and port, or off.
pub fn metrics_addr(
    key: &Key,
    value: Option<(&str, std::ops::Range<usize>)>,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    match value {
        None | Some(("" | "off", _)) => Ok(None),
        Some((a, span)) => a.parse().map(Some).map_err(|_| {
            key.error(
                span,
                format!(
                    "{a:?} is not an address and port; write e.g. \"127.0.0.1:9633\" \
                     (loopback: only this machine's scraper reaches it) or \"off\""
                ),
            )
        }),
    }
}

/// The group must exist here: a typo would otherwise leave the sockets
/// owner-only and every job of the shared runner refused.
pub fn socket_group(value: &Option<S<String>>) -> Result<Option<SocketGroup>, ConfigError> {
    let Some((name, span)) = parts(value) else {
        return Ok(None);
    };
    let key = Key::file("engine_socket_group");
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(Some(SocketGroup {
            name: name.to_string(),
            gid: g.gid.as_raw(),
        })),
        Ok(None) => Err(key.error(
            span,
            format!(
                "no group named {name:?} on this machine (create it, or remove the key to keep \
                 the engine sockets owner-only)"
            ),
        )),
        Err(e) => Err(key.error(span, format!("cannot look up group {name:?}: {e}"))),
    }
}

/// `names_range`, `names_suffix`, `hosts_file`.
pub fn names(file: &FileConfig) -> Result<NamesConfig, ConfigError> {
    use fwd_core::names::AddressRange;
    let range = match parts(&file.names_range) {
        None => AddressRange::default(),
        Some((v, span)) => AddressRange::parse(v).map_err(|e| {
            Key::file("names_range").error(
                span,
                format!(
                    "{e}; write a block inside 127.0.0.0/8 such as \"{}\"",
                    fwd_core::names::DEFAULT_RANGE
                ),
            )
        })?,
    };
    let suffix = match parts(&file.names_suffix) {
        None => None,
        Some((v, span)) => Some(fwd_core::hostsfile::normalise(v).ok_or_else(|| {
            Key::file("names_suffix").error(
                span,
                format!(
                    "{v:?} is not a host name (letters, digits and '-', labels separated by \
                     dots); write e.g. \"fwd\" for names like db.fwd"
                ),
            )
        })?),
    };
    let hosts_file = match parts(&file.hosts_file) {
        None => None,
        Some((v, span)) if !v.starts_with('/') => {
            return Err(Key::file("hosts_file").error(
                span,
                format!("{v:?} is not an absolute path; write \"/etc/hosts\" or remove the key"),
            ))
        }
        Some((v, _)) => Some(std::path::PathBuf::from(v)),
    };
    Ok(NamesConfig {
        range,
        suffix,
        hosts_file,
    })
}
