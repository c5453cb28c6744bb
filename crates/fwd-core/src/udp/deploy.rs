//! Putting the relay on a host: the constant commands fwdd runs in a
//! session of the master, and what their answers mean. First the host's
//! platform (`uname`), which picks the relay fwdd carries for it: one built
//! for that platform by name (`fwd-udp-relay-linux-aarch64`, so a macOS
//! runner can carry Linux relays), or fwdd's own (`fwd-udp-relay`) when
//! the host is the runner's platform. The relay is cached on the host
//! under `${XDG_CACHE_HOME:-$HOME/.cache}/fwd`, named by its SHA-256, and
//! that hash is checked before it is stored and before it is used. The
//! only value put into the commands is that hash (64 hex digits, fwd's
//! own): nothing from the remote side.

/// The relay's file name on the host, before its hash.
pub const RELAY_FILE: &str = "fwd-udp-relay-";

/// The relay fwdd carries for its own platform, beside its binary.
pub const OWN_RELAY: &str = "fwd-udp-relay";

/// The directory on the host, as the host's shell expands it.
const CACHE_DIR: &str = r#""${XDG_CACHE_HOME:-$HOME/.cache}/fwd""#;

/// The host's kernel and CPU, one a line.
pub const PLATFORM_COMMAND: &str = "uname -s; uname -m";

/// Why the relay cannot run on a host: UDP ports stay unsupported there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Unsupported { why: String, fix: String },
}

/// A kernel and a CPU, as `uname` names them, lowercase (`linux`,
/// `x86_64`; `arm64` and `amd64` as `aarch64` and `x86_64`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
}

impl Platform {
    /// The platform fwdd runs on.
    pub fn runner() -> Platform {
        Platform {
            os: match std::env::consts::OS {
                "macos" => "darwin".to_string(),
                other => other.to_string(),
            },
            arch: normal_arch(std::env::consts::ARCH),
        }
    }

    /// The relay files beside fwdd that run on this platform, in order.
    pub fn relay_files(&self, runner: &Platform) -> Vec<String> {
        let mut files = vec![format!("{OWN_RELAY}-{}-{}", self.os, self.arch)];
        if self == runner {
            files.push(OWN_RELAY.to_string());
        }
        files
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.os, self.arch)
    }
}

fn normal_arch(arch: &str) -> String {
    match arch {
        "arm64" => "aarch64".to_string(),
        "amd64" => "x86_64".to_string(),
        other => other.to_string(),
    }
}

/// Reads `uname -s; uname -m`; `None` for anything else (a restricted
/// shell's banner, more lines, odd characters).
pub fn parse_platform(out: &str) -> Option<Platform> {
    let word = |s: &str| {
        let s = s.trim().to_ascii_lowercase();
        (!s.is_empty()
            && s.len() <= 32
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then_some(s)
    };
    let mut lines = out.lines();
    let os = word(lines.next()?)?;
    let arch = normal_arch(&word(lines.next()?)?);
    lines.next().is_none().then_some(Platform { os, arch })
}

/// Why the relay cannot run: the host's shell answered something else.
pub fn odd_shell(out: &str) -> Check {
    Check::Unsupported {
        why: format!(
            "the host's shell answered {:?} to fwd's check",
            out.chars().take(60).collect::<String>()
        ),
        fix: "check that the ssh user has a POSIX shell (sshd's ForceCommand allows no other \
              command), or set udp = false"
            .into(),
    }
}

/// Why the relay cannot run: fwd carries none for the host's platform.
pub fn no_relay_for(host: &Platform, looked_for: &[String]) -> Check {
    Check::Unsupported {
        why: format!(
            "fwd carries no relay for {host} (looked for {} beside fwdd)",
            looked_for.join(", ")
        ),
        fix: format!(
            "install the fwd release that includes {}, or set udp = false",
            looked_for.first().map_or(OWN_RELAY, String::as_str)
        ),
    }
}

fn valid_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The exit status of [`run_command`] when the host lacks the relay (or
/// holds another file under its name): it must be sent first.
pub const NEED_EXIT: u32 = 3;
/// The exit status of [`run_command`] when the host has no `sha256sum`.
pub const NO_SHA_EXIT: u32 = 4;

/// Runs the cached relay in place of the session's shell, if its hash
/// checks; else exits [`NEED_EXIT`] (or [`NO_SHA_EXIT`]). One session per
/// start: a new master has its relay running after one round trip.
/// `None`: `hash` is not a lowercase SHA-256 (never sent to a shell).
pub fn run_command(hash: &str) -> Option<String> {
    valid_hash(hash).then(|| {
        format!(
            "command -v sha256sum >/dev/null 2>&1 || exit {NO_SHA_EXIT}; \
             f={CACHE_DIR}/{RELAY_FILE}{hash}; \
             if [ -f \"$f\" ] && [ \"$(sha256sum < \"$f\" | cut -c1-64)\" = {hash} ]; \
             then exec \"$f\"; fi; exit {NEED_EXIT}"
        )
    })
}

/// Stores the relay read from stdin, if its hash checks; prints `stored`.
pub fn upload_command(hash: &str) -> Option<String> {
    if !valid_hash(hash) {
        return None;
    }
    Some(format!(
        "umask 077; d={CACHE_DIR}; mkdir -p \"$d\" || exit 1; t=\"$d/.{RELAY_FILE}{hash}.$$\"; \
         cat > \"$t\" || {{ rm -f \"$t\"; exit 1; }}; \
         if [ \"$(sha256sum < \"$t\" | cut -c1-64)\" != {hash} ]; then rm -f \"$t\"; echo corrupt; exit 1; fi; \
         chmod 700 \"$t\" && mv -f \"$t\" \"$d/{RELAY_FILE}{hash}\" && echo stored"
    ))
}

/// Why the relay could not start, from its session's exit status.
pub fn start_failure(exit: Option<u32>) -> (String, String) {
    match exit {
        Some(NO_SHA_EXIT) => (
            "the host has no sha256sum to check the relay with".into(),
            "install coreutils on the host, or set udp = false".into(),
        ),
        Some(126) => (
            "the host refuses to execute the relay in ~/.cache/fwd (a noexec file system?)".into(),
            "point XDG_CACHE_HOME of the ssh user at a file system that allows execution, or set udp = false".into(),
        ),
        Some(127) => (
            "the relay was not found where it was stored".into(),
            "check that ~/.cache/fwd on the host is writable and kept".into(),
        ),
        other => (
            format!(
                "the relay ended at once (exit {})",
                other.map_or_else(|| "unknown".to_string(), |s| s.to_string())
            ),
            "see fwdd's log; set udp = false to stop trying".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn commands_take_only_a_lowercase_hash() {
        assert!(run_command(HASH).is_some());
        assert!(run_command(&HASH.to_uppercase()).is_none());
        assert!(run_command("abc").is_none());
        assert!(upload_command("$(reboot)").is_none());
        assert!(run_command(HASH)
            .expect("valid")
            .contains(&format!("/fwd-udp-relay-{HASH}")));
    }

    /// A Linux host gets a relay built for it by name, or fwdd's own when
    /// the runner is the same platform; a macOS runner carries Linux ones.
    #[test]
    fn the_relay_is_chosen_by_the_hosts_platform() {
        let linux = parse_platform("Linux\nx86_64\n").expect("parses");
        assert_eq!(
            linux,
            Platform {
                os: "linux".into(),
                arch: "x86_64".into()
            }
        );
        assert_eq!(
            linux.relay_files(&linux),
            ["fwd-udp-relay-linux-x86_64", "fwd-udp-relay"]
        );
        let mac = Platform {
            os: "darwin".into(),
            arch: "aarch64".into(),
        };
        assert_eq!(linux.relay_files(&mac), ["fwd-udp-relay-linux-x86_64"]);
        let arm = parse_platform("Linux\narm64\n").expect("parses");
        assert_eq!(arm.arch, "aarch64");
        assert!(matches!(
            no_relay_for(&arm, &arm.relay_files(&linux)),
            Check::Unsupported { why, fix } if why.contains("linux aarch64") && fix.contains("fwd-udp-relay-linux-aarch64")
        ));
        for odd in [
            "",
            "Linux",
            "Linux\nx86_64\nmore",
            "This account is restricted.\n\n",
            "Linux\nx86 64",
        ] {
            assert_eq!(parse_platform(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn odd_answers_and_exits_are_said_with_a_fix() {
        assert!(matches!(
            odd_shell("This account is restricted\n"),
            Check::Unsupported { fix, .. } if fix.contains("ForceCommand")
        ));
        assert!(start_failure(Some(126)).0.contains("noexec"));
        assert!(start_failure(Some(NO_SHA_EXIT)).0.contains("sha256sum"));
    }
}
