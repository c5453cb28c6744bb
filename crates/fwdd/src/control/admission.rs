//! Who is served: a peer's uid is checked against the policy of
//! [`crate::private_socket`] (our effective uid or root), and at most
//! [`ControlConfig::max_connections`](super::ControlConfig::max_connections)
//! connections are served at once. A refused peer gets one best-effort error
//! line and is closed at once; nothing is spent on it.

use super::dispatch;
use super::shared::Shared;
use crate::private_socket::uid_allowed;
use fwd_proto::{encode_line, Response};
use std::rc::Rc;
use std::time::Instant;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::{debug, warn};

/// Best effort, never blocks: used for refusals, where we don't spend time on the peer.
fn try_send_error(stream: &UnixStream, message: &str) {
    let _ = stream.try_write(&encode_line(&Response::error(message)));
}

/// Serves `stream` on a task of its own if its peer may use the socket and a
/// connection slot is free; otherwise answers with an error and drops it.
pub(super) fn admit(shared: &Rc<Shared>, stream: UnixStream, shutdown: &watch::Receiver<bool>) {
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    if !uid.is_some_and(|u| uid_allowed(u, shared.euid)) {
        if let Some(suppressed) = shared.refusals.borrow_mut().note(uid, Instant::now()) {
            warn!(
                peer_uid = ?uid,
                suppressed,
                "refused control connection from another user"
            );
        }
        let msg = match uid {
            Some(u) => format!("permission denied: uid {u} may not use this control socket"),
            None => "permission denied: cannot determine peer credentials".to_string(),
        };
        try_send_error(&stream, &msg);
        return;
    }
    if shared.active.get() >= shared.config.max_connections {
        debug!(
            limit = shared.config.max_connections,
            "control connection refused: too many connections"
        );
        try_send_error(
            &stream,
            &format!(
                "too many control connections (limit {}), try again",
                shared.config.max_connections
            ),
        );
        return;
    }
    shared.active.set(shared.active.get() + 1);
    let slot = ConnectionSlot(shared.clone());
    let shutdown = shutdown.clone();
    tokio::task::spawn_local(async move {
        let shared = slot.0.clone();
        dispatch::handle_connection(&shared, stream, shutdown).await;
        drop(slot);
    });
}

/// Frees a connection slot when the connection task ends (or is dropped).
struct ConnectionSlot(Rc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use crate::control::test_support::*;
    use crate::control::ControlConfig;
    use fwd_proto::{decode_response, encode_request, Request, Response};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;
    use tokio::task::LocalSet;

    /// Connects, sends `line` if the server has not closed on us yet, and reads the
    /// answer: a refused peer may be closed before its request is written.
    async fn request_maybe_refused(sock: &Path, line: &[u8]) -> Option<Response> {
        let mut s = BufReader::new(UnixStream::connect(sock).await.unwrap());
        let _ = s.get_mut().write_all(line).await;
        read_response(&mut s).await
    }

    #[tokio::test]
    async fn connection_cap() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let config = ControlConfig {
            max_connections: 2,
            ..ControlConfig::default()
        };
        let status = encode_request(&Request::Status);
        LocalSet::new()
            .run_until(with_server(&sock, config, || async {
                // Both are admitted: each gets an answer before the third arrives.
                let mut a = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                let mut b = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                for s in [&mut a, &mut b] {
                    s.get_mut().write_all(&status).await.unwrap();
                    assert!(matches!(read_response(s).await, Some(Response::Status(_))));
                }
                let msg = error_message(request_maybe_refused(&sock, &status).await);
                assert!(msg.contains("too many control connections"), "{msg}");
                // The slot comes free once the server has seen a's EOF: until then
                // newcomers are refused, then served.
                drop(a);
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    match request_maybe_refused(&sock, &status).await {
                        Some(Response::Status(st)) => {
                            assert_eq!(st, fixture());
                            break;
                        }
                        r => {
                            let msg = error_message(r);
                            assert!(msg.contains("too many control connections"), "{msg}");
                            assert!(Instant::now() < deadline, "slot not freed in 5 s");
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                // b was never disturbed.
                b.get_mut().write_all(&status).await.unwrap();
                assert!(matches!(
                    read_response(&mut b).await,
                    Some(Response::Status(_))
                ));
            }))
            .await;
    }

    const CHILD_ENV: &str = "FWDD_CONTROL_TEST_CHILD_SOCKET";

    /// Child half of `other_uid_is_refused`: run by the test binary re-executed as
    /// another user; connects and prints the first response line.
    #[test]
    #[ignore = "helper, run by other_uid_is_refused"]
    fn peer_child() {
        use std::io::BufRead;
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // A refused peer is answered and closed at once, so our request may
        // meet a closed socket (EPIPE); the refusal is still there to read.
        let _ = std::io::Write::write_all(&mut &s, &encode_request(&Request::Status));
        let mut line = String::new();
        std::io::BufReader::new(&s).read_line(&mut line).unwrap();
        println!("CHILD-RESPONSE {}", line.trim_end());
    }

    /// End to end: a process running as another uid (nobody) is refused even when the
    /// file permissions would let it connect. Needs root to switch uid; skipped otherwise.
    #[tokio::test]
    async fn other_uid_is_refused() {
        if fwd_proto::effective_uid() != 0 {
            eprintln!("skipping other_uid_is_refused: needs root to run a child as another uid");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        LocalSet::new()
            .run_until(with_server(&sock, ControlConfig::default(), || async {
                // Open the file permissions so only the peer-credential check stands.
                fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
                fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
                // Run a copy outside the build tree: the tree may sit under a
                // directory that nobody cannot enter.
                let exe = dir.path().join("peer-child");
                fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
                fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
                let out = tokio::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "control::admission::tests::peer_child",
                        "--ignored",
                        "--nocapture",
                    ])
                    .env(CHILD_ENV, &sock)
                    .uid(65534)
                    .gid(65534)
                    .output()
                    .await;
                let out =
                    out.unwrap_or_else(|e| panic!("cannot run {} as nobody: {e}", exe.display()));
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                let line = stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("CHILD-RESPONSE "))
                    .unwrap_or_else(|| panic!("child said: {stdout}\n{stderr}"));
                let msg = error_message(Some(decode_response(line.as_bytes()).unwrap()));
                assert_eq!(
                    msg,
                    "permission denied: uid 65534 may not use this control socket"
                );
                // We are still serving our own user.
                let r = request(&sock, &encode_request(&Request::Status)).await;
                assert_eq!(r, Some(Response::Status(fixture())));
            }))
            .await;
    }
}
