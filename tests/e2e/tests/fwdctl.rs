//! End to end: `fwdctl` against a real fwdd (status, wait, watch, reconnect, resync)
//! and the control socket's defences. Host ports 20300-20399 belong to this file.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{bin, expect_line, fwdctl, fwdctl_command, line_reader, Fwdd};
use fwd_e2e::wait_until;
use fwd_proto::{ForwardState, MasterState};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits for a child with a deadline; kills it and panics on timeout.
fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait child") {
            return st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn interrupt(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal fwdctl");
}

#[test]
fn status_healthy_then_degraded_while_master_held_down() {
    let host = sandbox_host!("ctl_status");
    let fwdd = Fwdd::start(&host);
    host.httpd(&["20300:8080"]);
    fwdd.wait_forward_state(20300, ForwardState::Active);

    let out = fwdctl(&fwdd, &["status"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.lines().next().unwrap().ends_with(", healthy"),
        "{stdout}"
    );
    assert!(stdout.contains("127.0.0.1:20300"), "{stdout}");
    assert!(stdout.contains("active"), "{stdout}");

    let out = fwdctl(&fwdd, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let st: fwd_proto::Status = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert!(st.forwards.iter().any(|f| f.local_port == 20300));

    host.stop_sshd();
    fwdd.wait_for(Duration::from_secs(15), "master not connected", |st| {
        st.hosts[0].master.state != MasterState::Connected
    });
    let out = fwdctl(&fwdd, &["status"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().next().unwrap().contains("degraded: host "),
        "{stdout}"
    );
    // The forward is still listed: listeners stay bound while the master is down.
    assert!(stdout.contains("20300"), "{stdout}");
    host.start_sshd();
}

#[test]
fn absent_daemon_exits_2_for_every_command() {
    let host = sandbox_host!("ctl_absent");
    let mut fwdd = Fwdd::start(&host);
    let (st, _) = fwdd.terminate();
    assert!(st.success());
    let sock = fwdd.control_socket();
    // Built before the clock starts: the first use compiles it.
    let _ = common::bin("fwdctl");
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["wait", "20301", "--timeout", "5s"],
        &["watch"],
        &["reconnect"],
        &["resync", "x"],
        &["expose", "20399"],
    ] {
        let t = Instant::now();
        let out = fwdctl(&fwdd, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(
            text(&out.stderr),
            format!(
                "fwdctl: fwdd is not running (no control socket at {}): start fwdd, or {}\n",
                sock.display(),
                fwd_client::point_at_daemon()
            ),
            "{args:?}"
        );
        assert!(out.stdout.is_empty());
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{args:?} took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn wait_returns_as_soon_as_the_port_serves() {
    let host = sandbox_host!("ctl_wait");
    let fwdd = Fwdd::start(&host);
    let started = Instant::now();
    let mut wait = fwdctl_command(&fwdd, &["wait", "20310", "--timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fwdctl wait");
    // Not synchronisation: the window in which wait must NOT return (nothing runs).
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        wait.try_wait().unwrap().is_none(),
        "wait returned before any container ran"
    );
    let container_started = Instant::now();
    host.httpd(&["20310:8080"]);
    let st = wait_child(&mut wait, Duration::from_secs(20), "fwdctl wait");
    let after_start = container_started.elapsed();
    let mut out = String::new();
    wait.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    wait.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(st.code(), Some(0), "stdout {out} stderr {err}");
    assert!(out.starts_with("ready after "), "{out}");
    assert!(out.trim_end().ends_with(": port 20310"), "{out}");
    println!(
        "wait returned {after_start:?} after `docker run` returned ({:?} in all)",
        started.elapsed()
    );
    assert!(after_start < Duration::from_secs(3), "{after_start:?}");
    // Ready means a client connects and is served right away.
    assert_eq!(
        host.http_get(20310).expect("GET right after wait"),
        "hello\n"
    );
}

#[test]
fn wait_times_out_with_one_line_reason() {
    let host = sandbox_host!("ctl_wait_timeout");
    let fwdd = Fwdd::start(&host);
    let t = Instant::now();
    let out = fwdctl(&fwdd, &["wait", "20319", "--timeout", "1s"]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "fwdctl: timed out after 1s: port 20319 not forwarded (no running container publishes it)\n"
    );
    assert!(out.stdout.is_empty());
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // A container that does not exist, and a bad duration.
    let out = fwdctl(&fwdd, &["wait", "no-such-container", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no-such-container not found"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = fwdctl(&fwdd, &["wait", "1", "--timeout", "soon"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
}

#[test]
fn wait_on_a_container_name_covers_all_its_ports() {
    let host = sandbox_host!("ctl_wait_name");
    let fwdd = Fwdd::start(&host);
    let name = format!("fwdctl-wait-{}", std::process::id());
    let mut wait = fwdctl_command(&fwdd, &["wait", &name, "--timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fwdctl wait");
    // Not synchronisation: a head start so that the container usually appears while
    // wait is already waiting (the case of interest); the test holds either way.
    std::thread::sleep(Duration::from_millis(500));
    let id = host.run(&[
        "--name",
        &name,
        "-p",
        "20320:8080",
        "-p",
        "20321:9090",
        &host.image,
        "/bin/sh",
        "-c",
        "/bin/httpd -p 9090 -h /www; exec /bin/httpd -f -p 8080 -h /www",
    ]);
    let st = wait_child(&mut wait, Duration::from_secs(20), "fwdctl wait NAME");
    let mut err = String::new();
    wait.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(st.code(), Some(0), "{err}");
    for port in [20320, 20321] {
        let f = fwdd.forward(port).expect("forward listed");
        assert_eq!(f.state, ForwardState::Active, "{f:?}");
        assert_eq!(host.http_get(port).expect("GET"), "hello\n");
    }
    // By ID prefix too, and mixed with a port.
    let out = fwdctl(&fwdd, &["wait", &id[..12], "20320", "--timeout", "10s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn watch_json_sees_a_start_and_a_stop() {
    let host = sandbox_host!("ctl_watch");
    let mut fwdd = Fwdd::start(&host);
    let mut watch = fwdctl_command(&fwdd, &["watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn fwdctl watch");
    let rx = line_reader(&mut watch);
    let first = expect_line(&rx, Duration::from_secs(5), "snapshot", |_| true);
    assert!(
        first.starts_with(r#"{"kind":"snapshot","at_ms":"#),
        "{first}"
    );

    let id = host.httpd(&["20330:8080"]);
    let added = expect_line(&rx, Duration::from_secs(15), "forward_added 20330", |l| {
        l.starts_with(r#"{"kind":"forward_added""#) && l.contains(r#""local_port":20330"#)
    });
    assert!(added.contains(&id[..12]), "{added}");
    host.sandbox().docker_ok(&["stop", "-t", "0", &id]);
    expect_line(&rx, Duration::from_secs(15), "forward_removed 20330", |l| {
        l.starts_with(r#"{"kind":"forward_removed""#) && l.contains(r#""local_port":20330"#)
    });
    // Ctrl-C ends it with 0.
    interrupt(&watch);
    let st = wait_child(
        &mut watch,
        Duration::from_secs(5),
        "fwdctl watch after SIGINT",
    );
    assert_eq!(st.code(), Some(0));

    // Human lines; and the daemon going away ends the watch with 2.
    let mut watch = fwdctl_command(&fwdd, &["watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fwdctl watch");
    let rx = line_reader(&mut watch);
    let first = expect_line(&rx, Duration::from_secs(5), "summary", |_| true);
    assert!(first.contains(" watching fwdd "), "{first}");
    let id = host.httpd(&["20331:8080"]);
    let added = expect_line(&rx, Duration::from_secs(15), "forward added", |l| {
        l.contains("forward added localhost:20331 → ")
    });
    let host_name = fwdd.status().unwrap().hosts[0].name.clone();
    assert!(added.contains(&format!("({host_name})")), "{added}");
    // Bound at create, the forward is pending until the container runs.
    if added.contains(", pending: ") {
        expect_line(&rx, Duration::from_secs(15), "pending → active", |l| {
            l.contains("forward localhost:20331 → ") && l.contains("pending → active")
        });
    }
    host.sandbox().docker_ok(&["stop", "-t", "0", &id]);
    fwdd.terminate();
    let st = wait_child(
        &mut watch,
        Duration::from_secs(5),
        "fwdctl watch after fwdd stopped",
    );
    let mut err = String::new();
    watch
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("fwdd closed the watch connection"), "{err}");
}

#[test]
fn reconnect_replaces_the_master_and_resync_answers() {
    let host = sandbox_host!("ctl_reconnect");
    let fwdd = Fwdd::start(&host);
    let name = fwdd.status().unwrap().hosts[0].name.clone();
    let before = fwdd.master_pid();
    let out = fwdctl(&fwdd, &["reconnect"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{name}: replacing the ssh master\n")
    );
    fwdd.wait_for(Duration::from_secs(20), "a new master, connected", |st| {
        let m = &st.hosts[0].master;
        m.state == MasterState::Connected && m.pid.is_some_and(|p| p != before)
    });
    let after = fwdd.master_pid();
    assert_ne!(before, after);

    let out = fwdctl(&fwdd, &["reconnect", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    fwdd.wait_for(Duration::from_secs(20), "another master", |st| {
        let m = &st.hosts[0].master;
        m.state == MasterState::Connected && m.pid.is_some_and(|p| p != after)
    });

    let out = fwdctl(&fwdd, &["reconnect", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("fwdctl: no host named \"nope\" (configured: {name})\n")
    );
    let out = fwdctl(&fwdd, &["resync"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{name}: listing and inspecting the containers again\n")
    );
    let out = fwdctl(&fwdd, &["resync", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    // Resync keeps existing forwards: the same binding, never released and bound
    // again (that would give it a new `since_ms`).
    host.httpd(&["20340:8080"]);
    assert_eq!(fwdd.wait_http(20340), "hello\n");
    let before = fwdd.wait_forward_state(20340, ForwardState::Active);
    assert_eq!(fwdctl(&fwdd, &["resync"]).status.code(), Some(0));
    // When the resync is over: the host reads events only while no operation is in
    // flight, and a resync's listing and inspects follow one another without a gap,
    // so a container started after `fwdctl resync` returned is seen only after the
    // resync ended. Its forward going active is the resync's end, observed.
    host.httpd(&["20341:8080"]);
    fwdd.wait_forward_state(20341, ForwardState::Active);
    let after = fwdd.forward(20340).expect("forward 20340 still listed");
    assert_eq!(after.state, ForwardState::Active, "{after:?}");
    assert_eq!(after.container_id, before.container_id, "{after:?}");
    assert_eq!(
        after.since_ms, before.since_ms,
        "forward 20340 was bound again: {before:?} → {after:?}"
    );
    assert_eq!(host.http_get(20340).expect("GET after resync"), "hello\n");
}

#[test]
fn another_uid_is_refused_with_a_clear_error() {
    let host = sandbox_host!("ctl_uid");
    let fwdd = Fwdd::start(&host);
    let out = fwdctl_command(&fwdd, &["status"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run fwdctl as nobody");
    let err = text(&out.stderr);
    if err.contains("Permission denied") && !err.contains("control socket") {
        eprintln!(
            "skipping: {} not executable by nobody: {err}",
            bin("fwdctl").display()
        );
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{err}");
    // One line: who may be running fwdd, and how to point fwdctl at it.
    assert!(
        err.starts_with(&format!(
            "fwdctl: permission denied on control socket {} (is fwdd running as another user?)",
            fwdd.control_socket().display()
        )) && err.contains("--socket PATH")
            && err.contains("FWD_SOCKET=PATH")
            && err.lines().count() == 1,
        "{err}"
    );
    // We are still served.
    assert_eq!(fwdctl(&fwdd, &["status"]).status.code(), Some(0));
}

fn read_line(s: &mut BufReader<UnixStream>) -> String {
    let mut line = String::new();
    s.read_line(&mut line).expect("read response");
    line
}

#[test]
fn garbage_and_oversize_requests_get_errors_while_status_works() {
    let host = sandbox_host!("ctl_garbage");
    let fwdd = Fwdd::start(&host);
    let sock = fwdd.control_socket();

    let mut g = BufReader::new(UnixStream::connect(&sock).unwrap());
    g.get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    g.get_mut().write_all(b"garbage\n").unwrap();
    let line = read_line(&mut g);
    assert!(
        line.starts_with(r#"{"v":1,"ok":false,"error":"invalid JSON"#),
        "{line}"
    );
    g.get_mut()
        .write_all(b"{\"v\":1,\"cmd\":\"probe\",\"port\":20399}\n")
        .unwrap();
    let line = read_line(&mut g);
    assert!(line.starts_with(r#"{"v":1,"ok":false,"error":""#), "{line}");
    assert!(line.contains(r#""code":"probe_failed""#), "{line}");

    // An endless line, sent from a thread while fwdctl status runs.
    let big = UnixStream::connect(&sock).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let writer = {
        let mut w = big.try_clone().unwrap();
        w.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 16 * 1024];
            let mut sent = 0usize;
            while sent < 4 << 20 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        })
    };
    for _ in 0..5 {
        let t = Instant::now();
        let out = fwdctl(&fwdd, &["status", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    let sent = writer.join().unwrap();
    assert!(
        sent < 4 << 20,
        "the daemon kept reading an endless line ({sent} bytes)"
    );
    let mut answer = String::new();
    BufReader::new(&big).read_line(&mut answer).unwrap();
    assert!(answer.contains("line too long"), "{answer}");

    // The first connection still works after all that.
    g.get_mut()
        .write_all(b"{\"v\":1,\"cmd\":\"status\"}\n")
        .unwrap();
    assert!(read_line(&mut g).starts_with(r#"{"v":1,"ok":true,"status":"#));
    wait_until(Duration::from_secs(5), "status healthy", || {
        fwdctl(&fwdd, &["status"]).status.code() == Some(0)
    });
}
