//! Runs the built `fwdctl` against no daemon and against a tiny fake control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const GOLDEN: &str = include_str!("../../fwd-proto/tests/golden/status.json");

fn fwdctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fwdctl"))
        .args(args)
        .env_remove("FWD_SOCKET")
        .output()
        .unwrap()
}

/// Serves one connection: reads one line, answers with `response` (if any), returns the
/// request line. With `None`, holds the connection open without answering.
fn fake_daemon(sock: &Path, response: Option<Vec<u8>>) -> JoinHandle<String> {
    let listener = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(&conn);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        match response {
            Some(r) => (&conn).write_all(&r).unwrap(),
            // The fault: a daemon that holds the connection and never answers.
            None => std::thread::sleep(Duration::from_secs(8)),
        }
        line
    })
}

/// The golden status, compact, in schema field order, plus a field from the future
/// (which `--json` must pass through untouched).
fn status_json() -> String {
    let st: fwd_proto::Status = serde_json::from_str(GOLDEN).unwrap();
    let mut s = serde_json::to_string(&st).unwrap();
    s.pop();
    s.push_str(r#","x_future":{"a":[1,2]}}"#);
    s
}

#[test]
fn no_daemon_exits_2() {
    let out = fwdctl(&["--socket", "/nonexistent/x.sock", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "fwdctl: fwdd is not running (no control socket at /nonexistent/x.sock): start \
             fwdd, or {}\n",
            fwd_client::point_at_daemon()
        )
    );
    assert!(out.stdout.is_empty());
    // The ways it names are fwdctl's own.
    let help = fwdctl(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for (way, flag) in [
        ("--socket PATH", "--socket <PATH>"),
        ("--runtime-dir DIR", "--runtime-dir <DIR>"),
        ("FWD_SOCKET=PATH", "env: FWD_SOCKET"),
    ] {
        assert!(fwd_client::point_at_daemon().contains(way), "{way}");
        assert!(help.contains(flag), "{flag} in:\n{help}");
    }

    // Same through --runtime-dir and the environment variable.
    let out = fwdctl(&["--runtime-dir", "/nonexistent", "status", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("no control socket at /nonexistent/control.sock"));
    let out = Command::new(env!("CARGO_BIN_EXE_fwdctl"))
        .arg("status")
        .env("FWD_SOCKET", "/nonexistent/env.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/env.sock"));
}

#[test]
fn stale_socket_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    drop(UnixListener::bind(&sock).unwrap());
    let out = fwdctl(&["--socket", sock.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fwdd is not running"),
        "{out:?}"
    );
}

#[test]
fn status_json_passes_status_through_and_exits_1_when_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let status = status_json();
    let server = fake_daemon(
        &sock,
        Some(format!("{{\"v\":1,\"ok\":true,\"status\":{status}}}\n").into_bytes()),
    );
    let out = fwdctl(&["--socket", sock.to_str().unwrap(), "status", "--json"]);
    assert_eq!(server.join().unwrap(), "{\"v\":1,\"cmd\":\"status\"}\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{status}\n")
    );
    // The golden status has a host in backoff and a forward in conflict.
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn status_human_and_healthy_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let mut st: fwd_proto::Status = serde_json::from_str(GOLDEN).unwrap();
    st.hosts.truncate(1);
    st.forwards
        .retain(|f| f.state == fwd_proto::ForwardState::Active);
    st.exposed.retain(|e| e.state != "failed");
    // What a daemon does with every snapshot: its verdict goes along.
    st.health = Some(fwd_proto::verdict(&st));
    let server = fake_daemon(
        &sock,
        Some(fwd_proto::encode_line(&fwd_proto::Response::Status(st))),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fwdctl"))
        .arg("status")
        .env("FWD_SOCKET", &sock)
        .output()
        .unwrap();
    server.join().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(", healthy\n"), "{stdout}");
    assert!(stdout.contains("\nhost prod (deploy@docker1.example.com)\n"));
    assert!(stdout.contains("\nLOCAL "));
}

#[test]
fn daemon_error_response_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let server = fake_daemon(
        &sock,
        Some(b"{\"v\":1,\"ok\":false,\"error\":\"boom\"}\n".to_vec()),
    );
    let out = fwdctl(&["--socket", sock.to_str().unwrap(), "status"]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "fwdctl: fwdd refused the request: boom\n"
    );
}

#[test]
fn wrong_protocol_version_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let server = fake_daemon(&sock, Some(b"{\"v\":2,\"ok\":true}\n".to_vec()));
    let out = fwdctl(&["--socket", sock.to_str().unwrap(), "status"]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unsupported protocol version 2"),
        "{out:?}"
    );
}

#[test]
fn silent_daemon_times_out_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let _server = fake_daemon(&sock, None);
    let started = Instant::now();
    let out = fwdctl(&["--socket", sock.to_str().unwrap(), "status"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not answer within 5s"),
        "{out:?}"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[test]
fn version_and_usage() {
    let out = fwdctl(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let v = String::from_utf8(out.stdout).unwrap();
    assert!(
        v.starts_with(&format!("fwdctl {} (", env!("CARGO_PKG_VERSION"))) && v.ends_with(")\n"),
        "{v}"
    );

    let out = fwdctl(&["status", "--bogus"]);
    assert_eq!(out.status.code(), Some(64));
    let out = fwdctl(&["--socket", "/a", "--runtime-dir", "/b", "status"]);
    assert_eq!(out.status.code(), Some(64));

    let out = fwdctl(&["status", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("Exit codes:") && help.contains("2   fwdd unreachable"),
        "{help}"
    );
}

/// Usage errors and help written to a pipe carry no colour codes, even when the build
/// unified clap's colour feature in (as a workspace build does through fwdd; e.g.
/// `cargo test -p fwdctl -p fwdd`) and CLICOLOR_FORCE asks clap for colour.
#[test]
fn usage_and_help_to_a_pipe_have_no_colour() {
    for args in [&["status", "--bogus"][..], &["--help"], &["bogus"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_fwdctl"))
            .args(args)
            .env_remove("NO_COLOR")
            .env("CLICOLOR_FORCE", "1")
            .output()
            .expect("run fwdctl");
        let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
        assert!(!all.is_empty(), "{args:?}");
        assert!(
            !all.contains(&0x1b),
            "{args:?}: {:?}",
            String::from_utf8_lossy(&all)
        );
    }
}

/// An error message from the daemon reaches the terminal as one visible line.
#[test]
fn daemon_error_message_cannot_inject_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let server = fake_daemon(
        &sock,
        Some(b"{\"v\":1,\"ok\":false,\"error\":\"boom\\n\\u001b[32mall fine\\u009b\"}\n".to_vec()),
    );
    let out = fwdctl(&["--socket", sock.to_str().expect("utf8"), "status"]);
    server.join().expect("fake daemon");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "fwdctl: fwdd refused the request: boom\\n\\x1b[32mall fine\\u{9b}\n"
    );
}

/// `wait`'s timeout line names hosts and containers the daemon reported: escaped.
#[test]
fn wait_timeout_line_escapes_remote_names() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let mut st: fwd_proto::Status = serde_json::from_str(GOLDEN).expect("golden");
    st.hosts[1].name = "staging\n\u{1b}[31mFAKE".into();
    // `wait` may ask more than once before its timeout: answer every request.
    let listener = UnixListener::bind(&sock).expect("bind");
    let answer = fwd_proto::encode_line(&fwd_proto::Response::Status(st));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_ok() {
                let _ = (&conn).write_all(&answer);
            }
        }
    });
    let out = fwdctl(&[
        "--socket",
        sock.to_str().expect("utf8"),
        "wait",
        "nope",
        "--timeout",
        "50ms",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("host staging\\n\\x1b[31mFAKE is backoff"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!out.stderr.contains(&0x1b), "{err:?}");
}

/// An answer of the wrong kind points at mismatched releases.
#[test]
fn wrong_kind_of_answer_names_the_likely_cause() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let server = fake_daemon(
        &sock,
        Some(b"{\"v\":1,\"ok\":true,\"probe\":{\"port\":1}}\n".to_vec()),
    );
    let out = fwdctl(&["--socket", sock.to_str().expect("utf8"), "status"]);
    server.join().expect("fake daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("fwdctl: unexpected answer from fwdd: Probe")
            && err.ends_with("use the same release of both\n"),
        "{err}"
    );
}
