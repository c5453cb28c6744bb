//! The remote engine on a local socket, through fwdd's one master: the real
//! docker CLI and docker-py against the sandbox's dockerd, and sshd's log as
//! the witness that no connection and no session was opened for any of it.
//! Host ports 20300-20399 are this file's.

#[macro_use]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{fwdctl, pid_alive, Fwdd};
use fwd_e2e::{wait_until, TestHost};
use fwd_proto::MasterState;

fn engine_socket(fwdd: &Fwdd) -> PathBuf {
    fwdd.runtime_dir.join("docker.sock")
}

/// The real docker CLI on the runner, `DOCKER_HOST` at fwdd's socket, with
/// a private config dir (no contexts, no credential helpers).
fn docker_cmd(fwdd: &Fwdd, args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.env(
        "DOCKER_HOST",
        format!("unix://{}", engine_socket(fwdd).display()),
    )
    .env("DOCKER_CONFIG", fwdd.runtime_dir.join("docker-config"))
    .env("DOCKER_BUILDKIT", "0")
    .env_remove("DOCKER_CONTEXT")
    .args(args);
    cmd
}

fn docker(fwdd: &Fwdd, args: &[&str]) -> Output {
    docker_cmd(fwdd, args).output().expect("run docker")
}

fn docker_ok(fwdd: &Fwdd, args: &[&str]) -> String {
    let out = docker(fwdd, args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Deterministic, incompressible-looking bytes.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Witness {
    connections: usize,
    sessions: usize,
}

/// What sshd has seen so far: logins and sessions.
fn witness(host: &TestHost) -> Witness {
    Witness {
        connections: host.sshd_connection_count(),
        sessions: host.sshd_log_count("Starting session"),
    }
}

fn assert_nothing_new(host: &TestHost, before: &Witness, what: &str) {
    let now = witness(host);
    assert_eq!(
        now.connections, before.connections,
        "{what} opened a new SSH connection"
    );
    assert_eq!(now.sessions, before.sessions, "{what} opened a new session");
}

#[test]
fn the_docker_cli_works_through_the_engine_socket_on_the_one_connection() {
    let host = sandbox_host!("engine_cli");
    let mut fwdd = Fwdd::start(&host);
    let sock = engine_socket(&fwdd);
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let md = std::fs::metadata(&sock).expect("engine socket");
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    // fwdd's own setup is one connection and one session (the engine's
    // whereabouts); everything after must add neither.
    let before = witness(&host);
    assert_eq!(before.connections, 1);
    // The needle matches sshd's log: the discovery session is in it.
    assert_eq!(before.sessions, 1);

    let version = docker_ok(&fwdd, &["version", "--format", "{{.Server.Version}}"]);
    assert!(!version.is_empty());

    let label = format!("fwd-test={}", host.label);
    let id = docker_ok(
        &fwdd,
        &[
            "run",
            "-d",
            "--label",
            &label,
            "-p",
            "20300:8080",
            &host.image,
            "/bin/httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ],
    );
    assert_eq!(fwdd.wait_http(20300), "hello\n");
    assert_eq!(
        docker_ok(&fwdd, &["exec", &id, "cat", "/www/index.html"]),
        "hello"
    );
    docker_ok(&fwdd, &["logs", &id]);

    // docker cp both ways, 20 MiB, byte for byte.
    let big = payload(20 << 20);
    let local = host.dir.join("big.bin");
    std::fs::write(&local, &big).expect("write payload");
    let local_s = local.to_string_lossy().into_owned();
    docker_ok(&fwdd, &["cp", &local_s, &format!("{id}:/tmp/big.bin")]);
    let back = host.dir.join("back.bin");
    docker_ok(
        &fwdd,
        &["cp", &format!("{id}:/tmp/big.bin"), &back.to_string_lossy()],
    );
    assert!(
        std::fs::read(&back).expect("read back") == big,
        "cp round trip differs"
    );

    // A build: the context goes up the socket (classic builder).
    let ctx = host.dir.join("ctx");
    std::fs::create_dir_all(&ctx).expect("ctx");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}\nRUN echo built > /built\n", host.image),
    )
    .expect("Dockerfile");
    let tag = format!("fwd-test/built-{}", host.label);
    docker_ok(&fwdd, &["build", "-q", "-t", &tag, &ctx.to_string_lossy()]);
    assert_eq!(
        docker_ok(
            &fwdd,
            &["run", "--rm", "--label", &label, &tag, "cat", "/built"]
        ),
        "built"
    );
    docker_ok(&fwdd, &["rmi", "-f", &tag]);

    assert_nothing_new(&host, &before, "the docker CLI through the engine socket");

    let st = fwdd.status().expect("status");
    let engine = st.hosts[0].engine.clone().expect("engine status");
    assert_eq!(engine.route.as_deref(), Some("stream_local"), "{engine:?}");
    assert!(engine.connections_total >= 8, "{engine:?}");
    assert!(engine.bytes_up >= 20 << 20, "{engine:?}");
    assert!(engine.bytes_down >= 20 << 20, "{engine:?}");
    assert_eq!(
        engine.remote_socket.as_deref(),
        Some(host.docker_sock.to_string_lossy().as_ref())
    );

    // Nothing of fwd stays on the host, and the socket goes with fwdd.
    let (status, _) = fwdd.terminate();
    assert!(status.success());
    assert!(!sock.exists(), "engine socket left behind");
    wait_until(Duration::from_secs(10), "no remote processes left", || {
        host.remote_session_processes().is_empty()
    });
}

#[test]
fn parallel_commands_need_no_sessions_so_max_sessions_does_not_bite() {
    let host = sandbox_host!("engine_parallel");
    host.add_sshd_config("MaxSessions 2");
    let fwdd = Fwdd::start(&host);
    let before = witness(&host);
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..24)
            .map(|_| s.spawn(|| docker(&fwdd, &["ps", "-q"])))
            .collect();
        for r in runs {
            let out = r.join().expect("thread");
            assert!(
                out.status.success(),
                "docker ps failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
    assert_nothing_new(&host, &before, "24 parallel docker ps");
}

#[test]
fn a_command_issued_as_the_master_dies_waits_and_runs() {
    let host = sandbox_host!("engine_kill");
    let fwdd = Fwdd::start(&host);
    docker_ok(&fwdd, &["ps"]);
    let old = fwdd.master_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill master");
    let t0 = Instant::now();
    docker_ok(&fwdd, &["ps"]);
    eprintln!(
        "RECOVERY master SIGKILL: docker ps through the engine socket answered after {:?}",
        t0.elapsed()
    );
    assert!(!pid_alive(old));
    fwdd.wait_for(Duration::from_secs(15), "new master", |st| {
        st.hosts[0].master.state == MasterState::Connected
            && st.hosts[0].master.pid.is_some_and(|p| p != old)
    });
}

#[test]
fn another_user_is_refused_and_sighup_keeps_the_socket() {
    let host = sandbox_host!("engine_peer");
    let fwdd = Fwdd::start(&host);
    let sock = engine_socket(&fwdd);
    // Let another uid reach the socket at all, so that fwdd's own peer
    // check is what stands in its way: a hard link in a directory anyone
    // may enter (the sandbox's own directories may be private), and the
    // socket's mode opened.
    use std::os::unix::fs::PermissionsExt;
    let public = PathBuf::from(format!("/tmp/fwd-e2e-peer-{}", host.label));
    let _ = std::fs::remove_dir_all(&public);
    std::fs::create_dir_all(&public).expect("public dir");
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let link = public.join("docker.sock");
    std::fs::hard_link(&sock, &link).expect("hard link to the socket");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = Command::new("docker")
        .env("DOCKER_HOST", format!("unix://{}", link.display()))
        .env("DOCKER_CONFIG", public.join("docker-config"))
        .args(["version", "--format", "{{.Server.Version}}"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run docker as nobody");
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "another uid reached the engine: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until(Duration::from_secs(5), "refusal logged", || {
        fwdd.log_text().contains("engine_peer_refused")
    });
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).expect("chmod back");
    let _ = std::fs::remove_dir_all(&public);

    let inode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).expect("socket").ino()
    };
    let before = inode(&sock);
    fwdd.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(10), "reload done", || {
        fwdd.log_text().contains("\"reloaded\"")
    });
    assert_eq!(
        inode(&sock),
        before,
        "the engine socket was rebound on SIGHUP"
    );
    docker_ok(&fwdd, &["ps"]);
}

#[test]
fn docker_py_runs_a_container_and_its_ephemeral_port_answers_on_localhost() {
    let host = sandbox_host!("engine_dockerpy");
    let fwdd = Fwdd::start(&host);
    let script = format!(
        r#"
import docker, sys
client = docker.DockerClient(base_url=sys.argv[1])
c = client.containers.run({image:?}, ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
    detach=True, ports={{"8080/tcp": None}}, labels={{"fwd-test": {label:?}}})
c.reload()
print(c.ports["8080/tcp"][0]["HostPort"])
"#,
        image = host.image,
        label = host.label,
    );
    let path = host.dir.join("run.py");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(script.as_bytes()))
        .expect("write script");
    let python = &host.sandbox().python;
    let out = Command::new(python)
        .arg(&path)
        .arg(format!("unix://{}", engine_socket(&fwdd).display()))
        .output()
        .expect("run docker-py");
    assert!(
        out.status.success(),
        "docker-py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a port number");
    assert_eq!(fwdd.wait_http(port), "hello\n");
}

#[test]
fn fwdctl_env_points_a_shell_at_the_engine_socket() {
    let host = sandbox_host!("engine_env");
    let fwdd = Fwdd::start(&host);
    let out = fwdctl(&fwdd, &["env"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("export TESTCONTAINERS_HOST_OVERRIDE='localhost'"),
        "{text}"
    );
    // What a user does: eval it, then docker just works.
    let run = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{text}docker ps -q && printf '%s' \"$TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE\""
        ))
        .env("DOCKER_CONFIG", fwdd.runtime_dir.join("docker-config"))
        .env_remove("DOCKER_HOST")
        .output()
        .expect("sh");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        String::from_utf8_lossy(&run.stdout).ends_with(&*host.docker_sock.to_string_lossy()),
        "{run:?}"
    );
    let github = fwdctl(&fwdd, &["env", "--format", "github"]);
    let expected = format!(
        "DOCKER_HOST=unix://{}\n",
        fwdd.runtime_dir
            .join(format!("docker-{}.sock", host.alias))
            .display()
    );
    assert!(
        String::from_utf8_lossy(&github.stdout).starts_with(&expected),
        "{github:?}"
    );
    assert_eq!(fwdctl(&fwdd, &["env", "nope"]).status.code(), Some(1));
}

use std::os::unix::process::CommandExt;

#[test]
fn hijacked_and_streaming_commands_work_and_end_when_the_master_dies() {
    let host = sandbox_host!("engine_streams");
    let fwdd = Fwdd::start(&host);
    let label = format!("fwd-test={}", host.label);
    // attach with stdin (a hijacked connection) and its half-close: cat
    // sees EOF and exits, and its output comes back.
    let mut child = docker_cmd(
        &fwdd,
        &[
            "run",
            "-i",
            "--rm",
            "--label",
            &label,
            &host.image,
            "/bin/cat",
        ],
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("docker run -i");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"through the socket\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("docker run -i");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the socket\n");
    // exec -i, the same way.
    let id = docker_ok(
        &fwdd,
        &[
            "run",
            "-d",
            "--label",
            &label,
            &host.image,
            "/bin/sleep",
            "600",
        ],
    );
    let mut exec = docker_cmd(&fwdd, &["exec", "-i", &id, "/bin/cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("docker exec -i");
    exec.stdin
        .take()
        .expect("stdin")
        .write_all(b"exec\n")
        .expect("write");
    let out = exec.wait_with_output().expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "exec\n");

    // Streams open when the master dies end, as they would over ssh://:
    // nothing hangs. Each is known to flow (a first line read) before the
    // kill, so it is not a stream that connects to the next master.
    let spawn_stream = |args: &[&str]| {
        let mut child = docker_cmd(&fwdd, args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker stream");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    return;
                }
            }
        });
        (child, rx)
    };
    let talker = docker_ok(
        &fwdd,
        &[
            "run",
            "-d",
            "--label",
            &label,
            &host.image,
            "/bin/sh",
            "-c",
            "while true; do echo tick; sleep 0.2; done",
        ],
    );
    let (mut logs, logs_rx) = spawn_stream(&["logs", "-f", &talker]);
    let (mut events, events_rx) = spawn_stream(&["events", "--format", "{{.Action}}"]);
    logs_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("docker logs -f flows");
    // An event, so the events stream is seen flowing too.
    docker_ok(
        &fwdd,
        &["run", "--rm", "--label", &label, &host.image, "/bin/echo"],
    );
    events_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("docker events flows");
    let master = fwdd.master_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill master");
    for (what, child) in [
        ("docker events", &mut events),
        ("docker logs -f", &mut logs),
    ] {
        let mut ended = false;
        wait_until(Duration::from_secs(10), what, || {
            ended = matches!(child.try_wait(), Ok(Some(_)));
            ended
        });
        assert!(ended, "{what} still running after the master died");
    }
    // And the socket serves again on the new master.
    docker_ok(&fwdd, &["ps"]);
}

#[test]
fn a_shared_runner_gives_the_engine_socket_to_a_group_and_nothing_else() {
    let host = sandbox_host!("engine_group");
    // Other users must reach the runtime directory at all: not inside the
    // sandbox's private directory.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let public = PathBuf::from(format!("/tmp/fwd-e2e-group-{}", host.label));
    let _ = std::fs::remove_dir_all(&public);
    std::fs::create_dir_all(&public).expect("public dir");
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let runtime = public.join("rt");
    let toml = host.dir.join("fwdd.toml");
    // nogroup (65534) is nobody's group on Debian and Ubuntu.
    std::fs::write(
        &toml,
        format!(
            "engine_socket_group = \"nogroup\"\n[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{}\"\n",
            host.alias,
            host.ssh_config.display()
        ),
    )
    .expect("write config");
    let config = toml.to_string_lossy().into_owned();
    let fwdd = Fwdd::spawn_in(
        &host,
        &runtime,
        &common::bin("fwdd"),
        &["--config", &config],
        &[],
    );
    fwdd.wait_connected();
    let md = |p: &Path| std::fs::metadata(p).expect("stat");
    let sock = runtime.join("docker.sock");
    assert_eq!(
        md(&runtime).mode() & 0o7777,
        0o710,
        "group may traverse, not list"
    );
    assert_eq!(md(&runtime).gid(), 65534);
    assert_eq!(md(&sock).mode() & 0o777, 0o660);
    assert_eq!(md(&sock).gid(), 65534);
    assert_eq!(
        md(&runtime.join("control.sock")).mode() & 0o777,
        0o600,
        "the control socket stays owner-only"
    );

    let docker_as = |gid: u32| {
        Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .env("DOCKER_CONFIG", public.join(format!("docker-config-{gid}")))
            .args(["version", "--format", "{{.Server.Version}}"])
            .uid(65534)
            .gid(gid)
            .output()
            .expect("run docker as nobody")
    };
    // A member of the group reaches the remote engine.
    let member = docker_as(65534);
    assert!(
        member.status.success() && !String::from_utf8_lossy(&member.stdout).trim().is_empty(),
        "a group member was refused: {}\nlog:\n{}",
        String::from_utf8_lossy(&member.stderr),
        fwdd.log_tail(20)
    );
    // The same uid outside the group does not.
    let outsider = docker_as(1);
    assert!(
        !outsider.status.success() || String::from_utf8_lossy(&outsider.stdout).trim().is_empty(),
        "someone outside the group reached the engine"
    );
    // And a member cannot use the control socket (status, reconnect, upgrade).
    let fwdctl = Command::new(common::bin("fwdctl"))
        .args(["status"])
        .env("FWD_SOCKET", runtime.join("control.sock"))
        .uid(65534)
        .gid(65534)
        .output()
        .expect("fwdctl as nobody");
    assert_eq!(
        fwdctl.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&fwdctl.stderr)
    );
    drop(fwdd);
    let _ = std::fs::remove_dir_all(&public);
}

/// `docker-compose` (Compose v1 from the distribution, on docker-py) through
/// fwdd's engine socket, as a runner's CI script runs it.
fn compose(fwdd: &Fwdd, dir: &Path, args: &[&str]) -> Output {
    Command::new("docker-compose")
        .env(
            "DOCKER_HOST",
            format!("unix://{}", engine_socket(fwdd).display()),
        )
        .env("DOCKER_CONFIG", fwdd.runtime_dir.join("docker-config"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run docker-compose (scripts/install-deps.sh installs it)")
}

#[test]
fn compose_up_and_down_run_through_the_engine_socket_on_the_one_connection() {
    let host = sandbox_host!("engine_compose");
    let fwdd = Fwdd::start(&host);
    let dir = host.dir.join("compose");
    std::fs::create_dir_all(&dir).expect("compose dir");
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            r#"version: "3"
services:
  web:
    image: {image}
    command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
    ports: ["20390:8080"]
    labels:
      fwd-test: "{label}"
  worker:
    image: {image}
    command: ["sleep", "600"]
    depends_on: [web]
    labels:
      fwd-test: "{label}"
"#,
            image = host.image,
            label = host.label
        ),
    )
    .expect("write compose file");
    let before = witness(&host);
    let project = format!("fwd{}", host.label.replace(['-', '_'], ""));
    let up = compose(&fwdd, &dir, &["-p", &project, "up", "-d"]);
    assert!(
        up.status.success(),
        "compose up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(fwdd.wait_http(20390), "hello\n");
    let ps = compose(&fwdd, &dir, &["-p", &project, "ps", "-q"]);
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).lines().count(),
        2,
        "two services run"
    );
    let forward = fwdd.forward(20390).expect("forwarded");
    assert_eq!(forward.compose_project.as_deref(), Some(project.as_str()));
    let down = compose(&fwdd, &dir, &["-p", &project, "down", "-t", "1"]);
    assert!(
        down.status.success(),
        "compose down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    fwdd.wait_refused(20390);
    assert_nothing_new(&host, &before, "compose up, ps and down");
}
