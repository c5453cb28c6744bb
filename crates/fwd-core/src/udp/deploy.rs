//! Putting the relay on a host: the constant commands fwdd runs in a
//! session of the master, and what their answers mean. The relay fwdd
//! carries is built for the runner's own CPU; it is cached on the host
//! under `${XDG_CACHE_HOME:-$HOME/.cache}/fwd`, named by its SHA-256, and
//! that hash is checked before it is stored and before it is used. The
//! only values put into the commands are that hash (64 hex digits, fwd's
//! own) and the CPU name (a constant): nothing from the remote side.

/// The relay's file name on the host, before its hash.
pub const RELAY_FILE: &str = "fwd-udp-relay-";

/// The directory on the host, as the host's shell expands it.
const CACHE_DIR: &str = r#""${XDG_CACHE_HOME:-$HOME/.cache}/fwd""#;

/// What the first command found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The relay is cached and its hash checks.
    Have,
    /// It must be sent first.
    Need,
    /// The relay cannot run on this host: UDP ports stay unsupported.
    Unsupported { why: String, fix: String },
}

/// `uname -m`'s name for the CPU fwd runs on (`std::env::consts::ARCH`).
pub fn uname_arch(rust_arch: &str) -> &'static str {
    match rust_arch {
        "x86_64" => "x86_64",
        "aarch64" => "aarch64",
        "arm" => "armv7l",
        "x86" => "i686",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        _ => "unknown",
    }
}

fn valid_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Whether the host runs fwd's CPU, has `sha256sum`, and has the relay.
/// `None`: `hash` is not a lowercase SHA-256 (never sent to a shell).
pub fn check_command(hash: &str, arch: &str) -> Option<String> {
    if !valid_hash(hash) || !arch.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    Some(format!(
        "m=$(uname -m); [ \"$m\" = {arch} ] || {{ echo \"arch $m\"; exit 0; }}; \
         command -v sha256sum >/dev/null 2>&1 || {{ echo nosha; exit 0; }}; \
         f={CACHE_DIR}/{RELAY_FILE}{hash}; \
         if [ -f \"$f\" ] && [ \"$(sha256sum < \"$f\" | cut -c1-64)\" = {hash} ]; \
         then echo have; else echo need; fi"
    ))
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

/// Runs the cached relay in place of the session's shell.
pub fn start_command(hash: &str) -> Option<String> {
    valid_hash(hash).then(|| format!("exec {CACHE_DIR}/{RELAY_FILE}{hash}"))
}

/// Reads the check's first line.
pub fn parse_check(out: &str, arch: &str) -> Check {
    let line = out.lines().next().unwrap_or("").trim();
    match line {
        "have" => Check::Have,
        "need" => Check::Need,
        "nosha" => Check::Unsupported {
            why: "the host has no sha256sum to check the relay with".into(),
            fix: "install coreutils on the host, or set udp = false".into(),
        },
        _ => match line.strip_prefix("arch ") {
            Some(other) => Check::Unsupported {
                why: format!(
                    "the host's CPU is {}, fwd carries a relay for {arch}",
                    other
                        .chars()
                        .take(32)
                        .filter(|c| c.is_ascii_graphic())
                        .collect::<String>()
                ),
                fix: "run fwdd on a runner of the host's CPU, or set udp = false".into(),
            },
            None => Check::Unsupported {
                why: format!(
                    "the host's shell answered {:?} to fwd's check",
                    line.chars().take(60).collect::<String>()
                ),
                fix: "check that the ssh user has a POSIX shell (sshd's ForceCommand \
                      allows no other command), or set udp = false"
                    .into(),
            },
        },
    }
}

/// Why the relay could not start, from its session's exit status.
pub fn start_failure(exit: Option<u32>) -> (String, String) {
    match exit {
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
    fn commands_take_only_a_lowercase_hash_and_a_plain_cpu_name() {
        assert!(check_command(HASH, "x86_64").is_some());
        assert!(check_command(&HASH.to_uppercase(), "x86_64").is_none());
        assert!(check_command("abc", "x86_64").is_none());
        assert!(check_command(HASH, "x86; rm -rf ~").is_none());
        assert!(upload_command("$(reboot)").is_none());
        assert_eq!(
            start_command(HASH).expect("valid"),
            format!("exec \"${{XDG_CACHE_HOME:-$HOME/.cache}}/fwd\"/fwd-udp-relay-{HASH}")
        );
    }

    #[test]
    fn odd_answers_are_unsupported_with_a_fix() {
        assert!(matches!(
            parse_check("This account is restricted\n", "x86_64"),
            Check::Unsupported { fix, .. } if fix.contains("ForceCommand")
        ));
        assert!(matches!(
            parse_check("nosha", "x86_64"),
            Check::Unsupported { .. }
        ));
        assert!(start_failure(Some(126)).0.contains("noexec"));
    }
}
