//! The relay onto a host and started there, over the host's master: the
//! host's platform (which relay fwdd carries for it), a check (is
//! `sha256sum` and the cached relay there?), an upload when it is not, then
//! the relay in a session of its own. The commands and what their answers
//! mean are `fwd_core::udp::deploy`'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fwd_core::udp::deploy::{self, Check, Platform};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A relay fwdd carries: its bytes and their SHA-256 (lowercase hex).
pub struct LocalRelay {
    pub bytes: Vec<u8>,
    pub hash: String,
}

/// Why the relay is not running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotRunning {
    /// It cannot run on this host: UDP stays unsupported until another
    /// master (a reconnect) or another fwdd.
    Unsupported { why: String, fix: String },
    /// Worth another try (the master went, a session failed).
    Failed(String),
}

impl From<Check> for NotRunning {
    fn from(c: Check) -> NotRunning {
        match c {
            Check::Unsupported { why, fix } => NotRunning::Unsupported { why, fix },
            other => NotRunning::Failed(format!("{other:?}")),
        }
    }
}

/// The relay for `host` beside fwdd's own binary, read once per file:
/// `None` when fwdd carries none for that platform.
fn local_relay(host: &Platform) -> Result<Option<Arc<LocalRelay>>, NotRunning> {
    static READ: Mutex<BTreeMap<PathBuf, Arc<LocalRelay>>> = Mutex::new(BTreeMap::new());
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .ok_or_else(|| NotRunning::Failed("cannot find fwdd's own path".into()))?;
    for name in host.relay_files(&Platform::runner()) {
        let path = dir.join(&name);
        let mut read = READ.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(relay) = read.get(&path) {
            return Ok(Some(relay.clone()));
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let hash = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let relay = Arc::new(LocalRelay { bytes, hash });
        read.insert(path, relay.clone());
        return Ok(Some(relay));
    }
    Ok(None)
}

/// Finds the host's platform, checks the host, sends the relay if it
/// lacks it, and starts it.
pub async fn start(control_path: &Path) -> Result<fwd_ssh::RemoteProcess, NotRunning> {
    let (_, out) = run(control_path, deploy::PLATFORM_COMMAND, &[]).await?;
    let Some(platform) = deploy::parse_platform(&out) else {
        return Err(deploy::odd_shell(&out).into());
    };
    let Some(relay) = local_relay(&platform)? else {
        let looked_for = platform.relay_files(&Platform::runner());
        return Err(deploy::no_relay_for(&platform, &looked_for).into());
    };
    let bad_hash = || NotRunning::Failed("the relay's hash is not a SHA-256".into());
    let check = deploy::check_command(&relay.hash).ok_or_else(bad_hash)?;
    let (_, out) = run(control_path, &check, &[]).await?;
    match deploy::parse_check(&out) {
        Check::Have => {}
        Check::Need => {
            let upload = deploy::upload_command(&relay.hash).ok_or_else(bad_hash)?;
            let (status, out) = run(control_path, &upload, &relay.bytes).await?;
            if status != Some(0) || out.trim() != "stored" {
                return Err(NotRunning::Unsupported {
                    why: format!(
                        "the relay could not be stored in ~/.cache/fwd on the host (exit {}: {})",
                        status.map_or_else(|| "unknown".into(), |s| s.to_string()),
                        out.trim().chars().take(80).collect::<String>()
                    ),
                    fix:
                        "give the ssh user a writable home (or XDG_CACHE_HOME), or set udp = false"
                            .into(),
                });
            }
        }
        unsupported => return Err(unsupported.into()),
    }
    let start = deploy::start_command(&relay.hash).ok_or_else(bad_hash)?;
    fwd_ssh::spawn_remote(control_path, &start)
        .await
        .map_err(|e| session_refused(&e))
}

/// A session the master could not open: sshd refuses commands (its
/// `ForceCommand`, a `restrict`ed key) or the master is going.
fn session_refused(e: &fwd_ssh::MuxError) -> NotRunning {
    NotRunning::Failed(format!("a session for the UDP relay failed: {e}"))
}

/// Runs a constant command, `input` on its stdin: its exit status and its
/// stdout (at most 4 KiB).
async fn run(
    control_path: &Path,
    command: &str,
    input: &[u8],
) -> Result<(Option<u32>, String), NotRunning> {
    let mut remote = fwd_ssh::spawn_remote(control_path, command)
        .await
        .map_err(|e| session_refused(&e))?;
    // A command that fails early stops reading (a broken pipe here): what
    // it said and its exit status tell why.
    if !input.is_empty() {
        let _ = remote.stdio.write_all(input).await;
    }
    let _ = remote.stdio.shutdown().await;
    let mut out = Vec::new();
    // A reset after what it printed (the rest of the input unread) ends
    // the output, not the answer.
    let _ = (&mut remote.stdio).take(4096).read_to_end(&mut out).await;
    let status =
        remote.session.wait().await.map_err(|e| {
            NotRunning::Failed(format!("the UDP relay's setup did not finish: {e}"))
        })?;
    Ok((status, String::from_utf8_lossy(&out).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commands run in a real POSIX shell: a stored relay is found
    /// again by its hash, a corrupt upload is refused, another CPU is said.
    #[test]
    fn the_commands_do_what_they_say_in_a_real_shell() {
        let home = std::env::temp_dir().join(format!("fwd-deploy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).expect("home");
        let sh = |cmd: &str, stdin: &[u8]| {
            use std::io::Write;
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .env("HOME", &home)
                .env_remove("XDG_CACHE_HOME")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("sh");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(stdin)
                .expect("write");
            let out = child.wait_with_output().expect("wait");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        let relay = b"#!/bin/sh\necho relay-ran\n";
        let out = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(relay)?;
                c.wait_with_output()
            })
            .expect("sha256sum");
        let hash = String::from_utf8_lossy(&out.stdout)[..64].to_string();
        let platform = deploy::parse_platform(&sh(deploy::PLATFORM_COMMAND, b"").1).expect("uname");
        assert_eq!(platform, Platform::runner());
        let check = deploy::check_command(&hash).expect("valid");
        assert_eq!(deploy::parse_check(&sh(&check, b"").1), Check::Need);
        let upload = deploy::upload_command(&hash).expect("valid");
        assert_eq!(sh(&upload, b"not the relay"), (Some(1), "corrupt\n".into()));
        assert_eq!(deploy::parse_check(&sh(&check, b"").1), Check::Need);
        assert_eq!(sh(&upload, relay), (Some(0), "stored\n".into()));
        assert_eq!(deploy::parse_check(&sh(&check, b"").1), Check::Have);
        let start = deploy::start_command(&hash).expect("valid");
        assert_eq!(sh(&start, b""), (Some(0), "relay-ran\n".into()));
        let _ = std::fs::remove_dir_all(&home);
    }
}
