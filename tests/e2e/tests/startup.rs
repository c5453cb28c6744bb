//! No race at container start: a connection made the instant `docker run`
//! returns is served, never refused or cut — fwd binds fixed host ports at
//! `create` and holds a client while a young container's service is not
//! listening yet. Host ports 20400-20499 are this file's.

#[macro_use]
mod common;

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Fwdd;
use fwd_e2e::TestHost;
use fwd_proto::ForwardState;

/// `docker run -d` through fwdd's engine socket (what a user of fwd does).
fn run_via_engine_socket(fwdd: &Fwdd, host: &TestHost, args: &[&str]) -> String {
    let label = format!("fwd-test={}", host.label);
    let mut full = vec!["run", "-d", "--label", &label];
    full.extend_from_slice(args);
    let out = Command::new("docker")
        .env(
            "DOCKER_HOST",
            format!("unix://{}", fwdd.runtime_dir.join("docker.sock").display()),
        )
        .env("DOCKER_CONFIG", fwdd.runtime_dir.join("docker-config"))
        .args(&full)
        .output()
        .expect("docker run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn httpd_args<'a>(publish: &'a str, image: &'a str) -> Vec<&'a str> {
    vec![
        "-p",
        publish,
        image,
        "/bin/httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]
}

/// `docker run -d` with `DOCKER_HOST=ssh://<host>`, the docker CLI's own SSH
/// support (a new SSH connection per command), from the runner namespace.
fn run_via_ssh_url(host: &TestHost, args: &[&str]) -> String {
    let label = format!("fwd-test={}", host.label);
    let mut full = vec!["run", "-d", "--label", &label];
    full.extend_from_slice(args);
    let out = host
        .runner_command("docker")
        .env("DOCKER_HOST", format!("ssh://{}", host.alias))
        .env("DOCKER_CONFIG", host.dir.join("docker-config"))
        .env("PATH", host.ssh_url_path())
        .args(&full)
        .output()
        .expect("docker run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_connection_the_instant_docker_run_returns_is_served_every_time() {
    let host = sandbox_host!("start_race");
    let fwdd = Fwdd::start(&host);
    let mut refused = Vec::new();
    for i in 0..20u16 {
        let port = 20400 + i;
        let publish = format!("{port}:8080");
        // Half with DOCKER_HOST=ssh:// (what runners do today), half
        // through fwdd's engine socket.
        let args = httpd_args(&publish, &host.image);
        if i % 2 == 0 {
            run_via_ssh_url(&host, &args);
        } else {
            run_via_engine_socket(&fwdd, &host, &args);
        }
        // One attempt, at once, no retry loop.
        match host.http_get(port) {
            Ok(body) => assert_eq!(body, "hello\n"),
            Err(e) => refused.push((port, e.to_string())),
        }
    }
    assert!(refused.is_empty(), "not served at once: {refused:?}");
}

#[test]
fn a_server_that_listens_late_is_waited_for_not_cut() {
    let host = sandbox_host!("start_late");
    let fwdd = Fwdd::start(&host);
    run_via_engine_socket(
        &fwdd,
        &host,
        &[
            "-p",
            "20430:8080",
            &host.image,
            "/bin/sh",
            "-c",
            "sleep 1.5; exec /bin/httpd -f -p 8080 -h /www",
        ],
    );
    let t0 = Instant::now();
    let body = host.http_get(20430).unwrap_or_else(|e| {
        panic!(
            "not served once it listens: {e}; fwdd's log:\n{}",
            fwdd.log_tail(80)
        )
    });
    assert_eq!(body, "hello\n");
    let waited = t0.elapsed();
    eprintln!("STARTUP late listener: served after {waited:?}");
    assert!(waited >= Duration::from_millis(1000), "{waited:?}");
}

#[test]
fn a_port_nobody_listens_on_is_closed_after_the_window_not_held() {
    let host = sandbox_host!("start_never");
    let cfg = host.ssh_config.display();
    let fwdd = Fwdd::spawn_with_config(
        &host,
        &format!(
            "startup_window = \"2s\"\n[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{cfg}\"\n",
            host.alias
        ),
    );
    fwdd.wait_connected();
    host.run(&["-p", "20440:8080", &host.image, "/bin/sleep", "1000"]);
    fwdd.wait_forward_state(20440, ForwardState::Active);
    let t0 = Instant::now();
    let mut s = host.connect(20440).expect("the local port accepts");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    let closed_after = t0.elapsed();
    assert_eq!(n, 0, "nothing listens there, yet bytes came");
    assert!(
        closed_after < Duration::from_secs(6),
        "held for {closed_after:?}, window is 2 s"
    );
    // Outside the window a refusal closes the client at once.
    let t1 = Instant::now();
    let mut s = host.connect(20440).expect("accepts");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    assert!(t1.elapsed() < Duration::from_secs(1), "{:?}", t1.elapsed());
}

#[test]
fn a_created_never_started_container_holds_its_port_pending_and_releases_it() {
    let host = sandbox_host!("start_created");
    let fwdd = Fwdd::start(&host);
    let label = format!("fwd-test={}", host.label);
    let id = host.sandbox().docker_ok(&[
        "create",
        "--label",
        &label,
        "-p",
        "20450:8080",
        &host.image,
        "/bin/httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    let f = fwdd.wait_forward_state(20450, ForwardState::Pending);
    assert!(
        f.reason.as_deref().unwrap_or("").contains("not started"),
        "{f:?}"
    );
    // Bound already: a client connecting now waits for the start.
    let waiting = std::thread::scope(|s| {
        let client = s.spawn(|| host.http_get(20450));
        host.sandbox().docker_ok(&["start", &id]);
        client.join().expect("client thread")
    });
    assert_eq!(waiting.expect("served after the start"), "hello\n");
    // Another one, created and removed unstarted: its port goes.
    let other = host.sandbox().docker_ok(&[
        "create",
        "--label",
        &label,
        "-p",
        "20451:8080",
        &host.image,
        "/bin/sleep",
        "100",
    ]);
    fwdd.wait_forward_state(20451, ForwardState::Pending);
    host.sandbox().docker_ok(&["rm", &other]);
    fwdd.wait_refused(20451);
}
