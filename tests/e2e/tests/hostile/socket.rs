//! Another local user answers in fwdd's place: a runner user without
//! `XDG_RUNTIME_DIR` (cron, a CI service) looks for fwdd at
//! `/tmp/fwdd-<uid>/control.sock`, which anybody may create first. fwdctl
//! must refuse it, name its owner, and print nothing the impostor said: no
//! `DOCKER_HOST` of the impostor's choosing.
//!
//! Both users are the test's own (`useradd`, removed at the end), and so is
//! every path it touches: `/tmp/fwdd-<uid>` of a uid it just made.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::bin;

/// A user of this test's own, removed (with `userdel`) on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn add(name: String) -> TestUser {
        // useradd takes a lock on /etc/passwd that another test's useradd
        // may hold for a moment: tried again until a deadline.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("useradd")
                .args(["--no-create-home", "--user-group", "--shell", "/bin/sh"])
                .arg(&name)
                .output()
                .expect("run useradd");
            if out.status.success() {
                break;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("lock") && Instant::now() < deadline,
                "useradd {name}: {err}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let user = nix::unistd::User::from_name(&name)
            .expect("read the user database")
            .expect("the user just added");
        TestUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Command::new("userdel")
            .arg(&self.name)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The impostor: a process of `user` that makes `sock`'s directory (0755)
/// if missing, binds `sock` (0666) and answers every request with the line
/// it was given, telling each connection and its request on its stdout.
const IMPOSTOR: &str = r#"
import os, socket, sys
path = sys.argv[1]
answer = sys.stdin.buffer.readline()
d = os.path.dirname(path)
if not os.path.isdir(d):
    os.mkdir(d)
os.chmod(d, 0o755)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o666)
s.listen(16)
print("ready", flush=True)
n = 0
while True:
    c, _ = s.accept()
    n += 1
    c.settimeout(5)
    try:
        request = c.recv(65536)
        print("connection %d: %r" % (n, request), flush=True)
        c.sendall(answer)
    except OSError as e:
        print("connection %d: %s" % (n, e), flush=True)
    c.close()
"#;

struct Impostor {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Impostor {
    fn start(user: &TestUser, sock: &Path, answer: &[u8]) -> Impostor {
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", IMPOSTOR])
            .arg(sock)
            .uid(user.uid)
            .gid(user.gid)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the impostor");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(answer)
            .expect("hand the impostor its answer");
        drop(stdin);
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut impostor = Impostor { child, out };
        // If it fails, its stderr (inherited) says why and the line is empty.
        assert_eq!(impostor.line(), "ready", "the impostor did not start");
        impostor
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read the impostor");
        line.trim_end().to_string()
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes a directory tree the test made, on drop.
struct Made(PathBuf);

impl Drop for Made {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The answer the impostor gives: a real status (the control API's golden
/// example) whose every host's engine socket is `engine`.
fn status_naming(engine: &str) -> Vec<u8> {
    let golden = include_str!("../../../../crates/fwd-proto/tests/golden/status.json");
    let mut status: serde_json::Value = serde_json::from_str(golden).expect("golden status");
    for host in status["hosts"].as_array_mut().expect("hosts") {
        if let Some(engine_status) = host.get_mut("engine").filter(|e| e.is_object()) {
            engine_status["sockets"] = serde_json::json!([engine]);
        }
    }
    let mut line =
        serde_json::to_vec(&serde_json::json!({"v": 1, "ok": true, "status": status})).unwrap();
    line.push(b'\n');
    line
}

/// `fwdctl ARGS` as `user` with the environment of a cron job: no
/// `XDG_RUNTIME_DIR`, no `FWD_SOCKET`.
fn fwdctl_as(user: &TestUser, fwdctl: &Path, args: &[&str]) -> Output {
    Command::new(fwdctl)
        .args(args)
        .uid(user.uid)
        .gid(user.gid)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/")
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("run fwdctl as the victim")
}

/// fwdctl, copied where any user may run it (the build's target directory
/// need not be reachable for the test's users).
fn fwdctl_for_everyone(dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let copy = dir.join("fwdctl");
    std::fs::copy(bin("fwdctl"), &copy).expect("copy fwdctl");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

/// Runs fwdctl as `user`, which must refuse: exit 2, nothing on stdout.
/// Returns what it said on stderr.
fn refused(user: &TestUser, fwdctl: &Path, args: &[&str]) -> String {
    let out = fwdctl_as(user, fwdctl, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "fwdctl {args:?}: {err}");
    assert!(
        out.stdout.is_empty(),
        "fwdctl {args:?} printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

#[test]
fn an_impostors_control_socket_is_refused_naming_its_owner() {
    if fwd_e2e::Sandbox::get().is_none() {
        return; // not root, outside CI (in CI: a failure)
    }
    let tag = std::process::id();
    let victim = TestUser::add(format!("fwdsv{tag}"));
    let impostor_user = TestUser::add(format!("fwdsi{tag}"));
    let tools = tempfile::tempdir().expect("tempdir");
    let fwdctl = fwdctl_for_everyone(tools.path());

    // The victim's default runtime directory, made first by the impostor.
    // The uid is a new one of the test's: anything left there is a stale
    // copy of this test's own.
    let runtime = PathBuf::from(format!("/tmp/fwdd-{}", victim.uid));
    let _ = std::fs::remove_dir_all(&runtime);
    let _made = Made(runtime.clone());
    let engine = format!("/tmp/fwds-impostor-{tag}/docker.sock");
    let mut impostor = Impostor::start(
        &impostor_user,
        &runtime.join("control.sock"),
        &status_naming(&engine),
    );

    let owner = format!("user {} (uid {})", impostor_user.name, impostor_user.uid);
    for args in [
        &["env"][..],
        &["env", "--format", "json"],
        &["env", "--format", "github"],
        &["env", "--format", "fish"],
        &["status"],
        &["status", "--json"],
    ] {
        let err = refused(&victim, &fwdctl, args);
        assert!(
            err.starts_with(&format!(
                "fwdctl: refusing the control socket {}/control.sock: its directory {} belongs to {owner}, not to you ({}, uid {}) or root",
                runtime.display(),
                runtime.display(),
                victim.name,
                victim.uid
            )),
            "fwdctl {args:?}: {err}"
        );
        assert!(err.contains("set XDG_RUNTIME_DIR"), "{err}");
        assert!(!err.contains(&engine), "{err}");
    }

    // The impostor was never even asked: the first connection it sees is
    // this test's own, and its answer would have passed for fwdd's, with
    // the engine socket it wanted printed.
    let mut probe = UnixStream::connect(runtime.join("control.sock")).expect("connect");
    probe.write_all(b"probe\n").unwrap();
    let mut answer = Vec::new();
    probe
        .read_to_end(&mut answer)
        .expect("the impostor's answer");
    assert_eq!(impostor.line(), "connection 1: b'probe\\n'");
    match fwd_proto::decode_response(answer.trim_ascii_end()) {
        Ok(fwd_proto::Response::Status(st)) => {
            let sockets = &st.hosts[0].engine.as_ref().expect("engine").sockets;
            assert_eq!(sockets, &vec![engine.clone()]);
        }
        other => panic!("the impostor's answer is not a status: {other:?}"),
    }
}

#[test]
fn a_socket_answered_by_another_user_is_refused_whatever_its_path() {
    if fwd_e2e::Sandbox::get().is_none() {
        return; // not root, outside CI (in CI: a failure)
    }
    let tag = std::process::id();
    let victim = TestUser::add(format!("fwdpv{tag}"));
    let impostor_user = TestUser::add(format!("fwdpi{tag}"));
    let tools = tempfile::tempdir().expect("tempdir");
    let fwdctl = fwdctl_for_everyone(tools.path());

    // The impostor listens in a directory of its own; then the socket is
    // moved (by root) into a directory of the victim's and given to the
    // victim: the path looks right, only the peer check can tell.
    let lair = PathBuf::from(format!("/tmp/fwdp-impostor-{tag}"));
    let _ = std::fs::remove_dir_all(&lair);
    let _lair = Made(lair.clone());
    let engine = format!("{}/docker.sock", lair.display());
    let _impostor = Impostor::start(
        &impostor_user,
        &lair.join("control.sock"),
        &status_naming(&engine),
    );
    let home = PathBuf::from(format!("/tmp/fwdp-victim-{tag}"));
    let _ = std::fs::remove_dir_all(&home);
    let _home = Made(home.clone());
    std::fs::create_dir(&home).expect("mkdir");
    let victims = Some(nix::unistd::Uid::from_raw(victim.uid));
    let victims_group = Some(nix::unistd::Gid::from_raw(victim.gid));
    nix::unistd::chown(&home, victims, victims_group).expect("chown");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let sock = home.join("control.sock");
    std::fs::rename(lair.join("control.sock"), &sock).expect("move the socket");
    nix::unistd::chown(&sock, victims, victims_group).expect("chown");

    let sock_arg = sock.to_str().expect("utf-8 path");
    for args in [
        &["--socket", sock_arg, "env"][..],
        &["--socket", sock_arg, "status"],
    ] {
        let err = refused(&victim, &fwdctl, args);
        assert!(
            err.starts_with(&format!(
                "fwdctl: refusing the control socket {sock_arg}: the process answering on it runs as user {} (uid {}), not as you ({}, uid {}) or root",
                impostor_user.name, impostor_user.uid, victim.name, victim.uid
            )),
            "fwdctl {args:?}: {err}"
        );
        assert!(!err.contains(&engine), "{err}");
    }
}
