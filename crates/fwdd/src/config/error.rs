//! What is wrong with the configuration, and where: the key as the user
//! wrote it (`host[1].url` in the file, `--host #1.url` on the command
//! line) and, for the file, the span of the value, which becomes
//! `FILE:LINE:` in the message.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A setting's name as the user wrote it: a key path in the file, or a
/// flag (with its environment variable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    path: String,
    in_file: bool,
}

impl Key {
    /// A key of the file: `connect_wait`, `host[0]`, `rule[2]`.
    pub fn file(path: impl Into<String>) -> Key {
        Key {
            path: path.into(),
            in_file: true,
        }
    }

    /// A flag: `--log-format (or FWD_LOG_FORMAT)`, `--host #1`. Its errors
    /// name no line of the file.
    pub fn flag(name: impl Into<String>) -> Key {
        Key {
            path: name.into(),
            in_file: false,
        }
    }

    /// `host[0]` → `host[0].url`.
    pub fn field(&self, name: &str) -> Key {
        Key {
            path: format!("{}.{name}", self.path),
            in_file: self.in_file,
        }
    }

    /// `host` → `host[1]`; `host[0].expose` → `host[0].expose[2]`.
    pub fn item(&self, index: usize) -> Key {
        Key {
            path: format!("{}[{index}]", self.path),
            in_file: self.in_file,
        }
    }

    /// An error about this key's value, which the file has at `span`.
    pub fn error(&self, span: Range<usize>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            key: Some(self.path.clone()),
            span: self.in_file.then_some(span),
            problem: problem.into(),
            place: None,
        }
    }

    /// An error about this key, with no value to point at.
    pub fn unplaced(&self, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            key: Some(self.path.clone()),
            span: None,
            problem: problem.into(),
            place: None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// Where in the file an error is, once known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// `FILE:LINE:`
    Line(PathBuf, usize),
    /// `FILE:` (toml's own message names the line and column).
    File(PathBuf),
}

/// Invalid configuration: the key, what is wrong with it and what to
/// write instead, and where in the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The key path as the user wrote it (`host[1].url`, `--host #1.url`).
    pub(super) key: Option<String>,
    /// Byte offsets of the value in the file.
    pub(super) span: Option<Range<usize>>,
    /// What is wrong and the fix.
    pub(super) problem: String,
    pub(super) place: Option<Place>,
}

impl ConfigError {
    /// An error about no key in particular ("no Docker host: …").
    pub fn general(problem: impl Into<String>) -> ConfigError {
        ConfigError {
            key: None,
            span: None,
            problem: problem.into(),
            place: None,
        }
    }

    /// An error about the file as a whole, at `span` if known.
    pub fn at(span: Range<usize>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            span: Some(span),
            ..ConfigError::general(problem)
        }
    }

    /// toml's own error (syntax, a type, an unknown key): its message
    /// names the line and column and shows the text.
    pub(super) fn toml(path: &Path, e: &toml::de::Error) -> ConfigError {
        ConfigError {
            key: None,
            span: e.span(),
            problem: e.to_string().trim_end().to_string(),
            place: Some(Place::File(path.to_path_buf())),
        }
    }

    /// Names the file and the line of the span in `text` (the file's
    /// contents), if the error is about the file.
    pub(super) fn located(mut self, path: &Path, text: &str) -> ConfigError {
        if let (None, Some(span)) = (&self.place, &self.span) {
            let start = span.start.min(text.len());
            let line = text.as_bytes()[..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            self.place = Some(Place::Line(path.to_path_buf(), line));
        }
        self
    }
}

impl fmt::Display for ConfigError {
    /// `invalid configuration: FILE:LINE: KEY: PROBLEM`, each part when known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        match &self.place {
            Some(Place::Line(path, line)) => write!(f, "{}:{line}: ", path.display())?,
            Some(Place::File(path)) => write!(f, "{}: ", path.display())?,
            None => {}
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.problem)
    }
}
