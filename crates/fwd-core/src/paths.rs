//! The rule for a path on the remote host that fwd will use (an engine's
//! socket, from the configuration or from the remote discovery script):
//! absolute, shorter than 1024 bytes, no control characters. Written once,
//! for both.

use std::fmt;

/// The longest remote path, in bytes (one less than `PATH_MAX` on Linux).
pub const REMOTE_PATH_MAX: usize = 1023;

/// Why a string is not a remote socket path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathProblem {
    NotAbsolute,
    TooLong,
    ControlCharacter,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathProblem::NotAbsolute => "is not an absolute path",
            PathProblem::TooLong => "is longer than 1023 bytes",
            PathProblem::ControlCharacter => "has a control character",
        })
    }
}

/// `path` if it may name a socket on the remote host: absolute, at most
/// [`REMOTE_PATH_MAX`] bytes, without control characters. The length and
/// the characters are checked first: a caller that accepts a relative
/// endpoint (`tcp://…`) may accept [`PathProblem::NotAbsolute`] alone.
pub fn remote_socket_path(path: &str) -> Result<&str, PathProblem> {
    if path.len() > REMOTE_PATH_MAX {
        Err(PathProblem::TooLong)
    } else if path.chars().any(char::is_control) {
        Err(PathProblem::ControlCharacter)
    } else if !path.starts_with('/') {
        Err(PathProblem::NotAbsolute)
    } else {
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_bounded_and_plain() {
        assert_eq!(
            remote_socket_path("/var/run/docker.sock"),
            Ok("/var/run/docker.sock")
        );
        let longest = format!("/{}", "a".repeat(REMOTE_PATH_MAX - 1));
        assert_eq!(remote_socket_path(&longest), Ok(longest.as_str()));
        for (bad, why) in [
            ("docker.sock", PathProblem::NotAbsolute),
            ("", PathProblem::NotAbsolute),
            ("tcp://h:2375", PathProblem::NotAbsolute),
            ("/run/a\nb", PathProblem::ControlCharacter),
            ("/run/\u{1b}[31m", PathProblem::ControlCharacter),
            ("x\n", PathProblem::ControlCharacter),
        ] {
            assert_eq!(remote_socket_path(bad), Err(why), "{bad:?}");
        }
        let long = format!("/{}", "a".repeat(REMOTE_PATH_MAX));
        assert_eq!(remote_socket_path(&long), Err(PathProblem::TooLong));
        assert_eq!(
            remote_socket_path(&"a".repeat(2000)),
            Err(PathProblem::TooLong)
        );
    }
}
