//! The relay onto a host and started there, over the host's master: the
//! host's platform (which relay fwdd carries for it), a check (is
//! `sha256sum` and the cached relay there?), an upload when it is not, then
//! the relay in a session of its own. The commands and what their answers
//! mean are `fwd_core::udp::deploy`'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use fwd_core::udp::deploy::{self, Check, Platform};
use fwd_core::udp::{Frame, HELLO};
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
        let Check::Unsupported { why, fix } = c;
        NotRunning::Unsupported { why, fix }
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

/// Starts the relay on the host: its platform (asked once per host,
/// `platform` keeps it), then in one session the cached relay if its hash
/// checks — else it is sent first, and started again. Returns once the
/// relay said HELLO.
pub async fn start(
    control_path: &Path,
    platform: &mut Option<Platform>,
) -> Result<fwd_ssh::RemoteProcess, NotRunning> {
    let host = match platform {
        Some(p) => p.clone(),
        None => {
            let (_, out) = run(control_path, deploy::PLATFORM_COMMAND, &[]).await?;
            let p = deploy::parse_platform(&out).ok_or_else(|| deploy::odd_shell(&out))?;
            *platform = Some(p.clone());
            p
        }
    };
    let Some(relay) = local_relay(&host)? else {
        let looked_for = host.relay_files(&Platform::runner());
        return Err(deploy::no_relay_for(&host, &looked_for).into());
    };
    let bad_hash = || NotRunning::Failed("the relay's hash is not a SHA-256".into());
    let command = deploy::run_command(&relay.hash).ok_or_else(bad_hash)?;
    for sent in [false, true] {
        let mut remote = fwd_ssh::spawn_remote(control_path, &command)
            .await
            .map_err(|e| session_refused(&e))?;
        match tokio::time::timeout(HELLO_WITHIN, read_hello(&mut remote.stdio)).await {
            Ok(Ok(())) => return Ok(remote),
            Ok(Err(HelloError::Other(why))) => return Err(NotRunning::Failed(why)),
            Err(_) => {
                return Err(NotRunning::Failed(
                    "the relay did not answer within 10 s".into(),
                ))
            }
            Ok(Err(HelloError::Ended)) => {}
        }
        let status = tokio::time::timeout(Duration::from_secs(2), remote.session.wait())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        if status != Some(deploy::NEED_EXIT) || sent {
            let (why, fix) = deploy::start_failure(status);
            return Err(match status {
                Some(126 | 127) | Some(deploy::NO_SHA_EXIT) => NotRunning::Unsupported { why, fix },
                _ => NotRunning::Failed(why),
            });
        }
        upload(control_path, &relay).await?;
    }
    Err(NotRunning::Failed("the relay did not start".into()))
}

/// How long a started relay has to say HELLO.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

enum HelloError {
    /// The session ended first (the relay did not run).
    Ended,
    Other(String),
}

/// The relay's first frame: its HELLO, of this protocol.
async fn read_hello(stdio: &mut tokio::net::UnixStream) -> Result<(), HelloError> {
    let mut hello = Vec::new();
    Frame::Hello(HELLO.to_vec())
        .encode(&mut hello)
        .map_err(|e| HelloError::Other(e.to_string()))?;
    let mut got = vec![0u8; hello.len()];
    let mut read = 0;
    while read < got.len() {
        match stdio.read(&mut got[read..]).await {
            Ok(0) if read == 0 => return Err(HelloError::Ended),
            Ok(0) => return Err(HelloError::Other("the relay's HELLO was cut short".into())),
            Ok(n) => read += n,
            Err(_) if read == 0 => return Err(HelloError::Ended),
            Err(e) => return Err(HelloError::Other(format!("the relay's channel: {e}"))),
        }
    }
    if got != hello {
        return Err(HelloError::Other(format!(
            "the relay on the host does not speak {:?}",
            String::from_utf8_lossy(HELLO)
        )));
    }
    Ok(())
}

/// Stores the relay on the host, if its hash checks there.
async fn upload(control_path: &Path, relay: &LocalRelay) -> Result<(), NotRunning> {
    let bad_hash = || NotRunning::Failed("the relay's hash is not a SHA-256".into());
    let upload = deploy::upload_command(&relay.hash).ok_or_else(bad_hash)?;
    let (status, out) = run(control_path, &upload, &relay.bytes).await?;
    if status == Some(0) && out.trim() == "stored" {
        return Ok(());
    }
    Err(NotRunning::Unsupported {
        why: format!(
            "the relay could not be stored in ~/.cache/fwd on the host (exit {}: {})",
            status.map_or_else(|| "unknown".into(), |s| s.to_string()),
            out.trim().chars().take(80).collect::<String>()
        ),
        fix: "give the ssh user a writable home (or XDG_CACHE_HOME), or set udp = false".into(),
    })
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
        let run = deploy::run_command(&hash).expect("valid");
        assert_eq!(sh(&run, b"").0, Some(deploy::NEED_EXIT as i32));
        let upload = deploy::upload_command(&hash).expect("valid");
        assert_eq!(sh(&upload, b"not the relay"), (Some(1), "corrupt\n".into()));
        assert_eq!(sh(&run, b"").0, Some(deploy::NEED_EXIT as i32));
        assert_eq!(sh(&upload, relay), (Some(0), "stored\n".into()));

        assert_eq!(sh(&run, b""), (Some(0), "relay-ran\n".into()));
        let _ = std::fs::remove_dir_all(&home);
    }
}
