//! Faults a runner meets, made real: interface reloads, black holes, a
//! killed daemon, stale sockets, refused keys, changed host keys, a broken
//! remote docker. Host ports 20200-20299 are this file's.

#[macro_use]
mod common;

use std::os::unix::net::{UnixDatagram, UnixListener};
use std::time::{Duration, Instant};

use common::{pid_alive, Fwdd};
use fwd_e2e::wait_until;
use fwd_proto::{ForwardState, MasterState};

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_five_second_interface_reload_is_survived_by_the_same_master() {
    let host = sandbox_host!("link_5s");
    let fwdd = Fwdd::start(&host);
    host.httpd(&["20200:8080"]);
    assert_eq!(fwdd.wait_http(20200), "hello\n");
    let master = fwdd.master_pid();
    host.link_down();
    // The outage is seen (netlink), and the master is kept through it.
    fwdd.wait_for(Duration::from_secs(5), "network loss reported", |st| {
        st.hosts[0].master.network_lost_since_ms.is_some()
    });
    // The fault's duration, not synchronisation.
    std::thread::sleep(Duration::from_secs(5));
    host.link_up();
    let t0 = Instant::now();
    assert_eq!(fwdd.wait_http(20200), "hello\n");
    fwdd.wait_for(Duration::from_secs(5), "outage over", |st| {
        st.hosts[0].master.network_lost_since_ms.is_none()
    });
    eprintln!(
        "RECOVERY link down 5 s: serving again {:?} after link up",
        t0.elapsed()
    );
    assert_eq!(fwdd.master_pid(), master, "the master was replaced");
    let st = fwdd.status().expect("status");
    assert_eq!(st.hosts[0].master.state, MasterState::Connected);
    assert_eq!(st.hosts[0].master.reconnects, 0);
}

#[test]
fn a_minute_without_link_rebuilds_the_connection_without_spinning_and_catches_up() {
    let host = sandbox_host!("link_60s");
    let fwdd = Fwdd::start(&host);
    host.httpd(&["20201:8080"]);
    assert_eq!(fwdd.wait_http(20201), "hello\n");
    let master = fwdd.master_pid();
    host.link_down();
    let down_at = Instant::now();
    // The netlink event shows the outage at once; the master is kept in
    // case the link returns, until ssh's keepalive budget (45 s) ends it.
    fwdd.wait_for(Duration::from_secs(5), "network loss reported", |st| {
        st.hosts[0].master.network_lost_since_ms.is_some()
    });
    eprintln!(
        "RECOVERY link down 60 s: loss noticed after {:?}",
        down_at.elapsed()
    );
    fwdd.wait_for(Duration::from_secs(55), "master ended by keepalive", |st| {
        st.hosts[0].master.state != MasterState::Connected
    });
    assert!(
        down_at.elapsed() >= Duration::from_secs(20),
        "the master was torn down before its keepalive gave up: {:?}",
        down_at.elapsed()
    );
    // Started while the runner cannot see the host.
    host.httpd(&["20202:8080"]);
    let remaining = Duration::from_secs(60).saturating_sub(down_at.elapsed());
    // The fault's duration (a minute without a link), not synchronisation.
    std::thread::sleep(remaining);
    // No link, no retries: only the failure that ended the master.
    let st = fwdd.status().expect("status");
    assert!(
        st.hosts[0].master.consecutive_failures <= 1,
        "retried without a link: {:?}",
        st.hosts[0].master
    );
    host.link_up();
    let up_at = Instant::now();
    assert_eq!(fwdd.wait_http(20202), "hello\n");
    assert_eq!(fwdd.wait_http(20201), "hello\n");
    eprintln!(
        "RECOVERY link down 60 s: serving again {:?} after link up",
        up_at.elapsed()
    );
    assert_ne!(fwdd.master_pid(), master);
    let log = fwdd.log_text();
    assert!(count_lines(&log, "\"link_failed\"") <= 1, "{log}");
    assert!(count_lines(&log, "\"network_lost\"") == 1, "{log}");
}

#[test]
fn a_black_hole_is_detected_by_the_health_probe_and_recovered_from() {
    let host = sandbox_host!("black_hole");
    // A short health interval keeps the test short; the mechanism is the same.
    let cfg = host.ssh_config.display();
    let fwdd = Fwdd::spawn_with_config(
        &host,
        &format!(
            "retry_max_delay = \"5s\"\n[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{cfg}\"\nhealth_interval = \"3s\"\nconnect_timeout = \"3s\"\n",
            host.alias
        ),
    );
    fwdd.wait_connected();
    host.httpd(&["20203:8080"]);
    assert_eq!(fwdd.wait_http(20203), "hello\n");
    host.drop_packets(true);
    let t0 = Instant::now();
    fwdd.wait_for(Duration::from_secs(20), "black hole detected", |st| {
        st.hosts[0].master.state != MasterState::Connected
    });
    eprintln!("RECOVERY black hole: detected after {:?}", t0.elapsed());
    // The fault's duration, not synchronisation.
    std::thread::sleep(Duration::from_secs(10));
    host.drop_packets(false);
    let t1 = Instant::now();
    fwdd.wait_connected();
    assert_eq!(fwdd.wait_http(20203), "hello\n");
    eprintln!(
        "RECOVERY black hole: serving again {:?} after it ended",
        t1.elapsed()
    );
}

#[test]
fn fwdd_killed_and_restarted_handles_its_leftovers() {
    let host = sandbox_host!("fwdd_kill");
    let mut first = Fwdd::start(&host);
    host.httpd(&["20210:8080"]);
    assert_eq!(first.wait_http(20210), "hello\n");
    let master = first.master_pid();
    first.child.kill().expect("SIGKILL fwdd");
    let _ = first.child.wait();
    // The master dies with its parent (no orphaned SSH connection).
    wait_until(Duration::from_secs(5), "master gone with fwdd", || {
        !pid_alive(master)
    });
    // Its sockets are left behind: the control socket and the ControlPath.
    assert!(first.control_socket().exists());
    drop(first);
    let ctl = host.dir.join("rt").join("h0.ctl");
    if !ctl.exists() {
        // Make sure a stale ControlPath is part of the test either way.
        drop(UnixListener::bind(&ctl).expect("leave a stale socket"));
    }
    let second = Fwdd::start(&host);
    assert_eq!(second.wait_http(20210), "hello\n");
    assert!(second.master_pid() != master);
}

#[test]
fn a_refused_key_is_permanent_shown_once_and_not_hammered() {
    let host = sandbox_host!("wrong_key");
    host.rotate_client_key_wrongly();
    let fwdd = Fwdd::spawn(&host, &[]);
    fwdd.wait_for(Duration::from_secs(15), "auth failure reported", |st| {
        st.hosts[0]
            .master
            .last_error
            .as_ref()
            .is_some_and(|e| e.kind == "auth_refused" && e.class == "permanent")
    });
    let attempts_then = host.sshd_connection_attempts();
    // The window in which no retry may happen, not synchronisation. The
    // policy itself (only every permanent_retry, 5 min) is a unit test of
    // fwd-core's machine; this checks the real daemon does not knock, over
    // several backoff periods a transient failure would have used.
    std::thread::sleep(Duration::from_secs(10));
    let attempts = host.sshd_connection_attempts() - attempts_then;
    assert_eq!(attempts, 0, "kept knocking with a refused key");
    let st = fwdd.status().expect("status");
    let err = st.hosts[0].master.last_error.as_ref().expect("error");
    assert!(
        err.message.contains("authorized_keys"),
        "says what to do: {err:?}"
    );
    let log = fwdd.log_text();
    assert_eq!(count_lines(&log, "\"link_failed\""), 1, "{log}");
    // fwdctl reconnect (the control API) retries at once once it is fixed:
    // here, authorise the new key.
    host.set_authorized_key_options("");
    let ok = fwdd.reconnect();
    assert!(ok, "reconnect request refused");
    fwdd.wait_connected();
}

#[test]
fn a_changed_host_key_is_refused_as_permanent() {
    let host = sandbox_host!("host_key");
    host.change_host_key();
    let fwdd = Fwdd::spawn(&host, &[]);
    fwdd.wait_for(Duration::from_secs(15), "host key failure reported", |st| {
        st.hosts[0]
            .master
            .last_error
            .as_ref()
            .is_some_and(|e| e.kind == "host_key" && e.class == "permanent")
    });
    assert_eq!(
        host.sshd_connection_count(),
        0,
        "authenticated to a changed host key"
    );
}

#[test]
fn docker_missing_on_the_host_is_a_clear_state() {
    let host = sandbox_host!("no_docker");
    let script = host.dir.join("no-docker.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'sh: 1: docker: not found' >&2\nexit 127\n",
    )
    .expect("write script");
    set_executable(&script);
    host.set_authorized_key_options(&format!("command=\"{}\"", script.display()));
    let fwdd = Fwdd::spawn(&host, &[]);
    fwdd.wait_for(Duration::from_secs(15), "docker missing reported", |st| {
        st.hosts[0].master.last_error.as_ref().is_some_and(|e| {
            e.kind == "docker_missing"
                && e.message.contains("exit 127")
                && e.message.contains("docker: not found")
        })
    });
}

#[test]
fn garbage_from_the_remote_docker_neither_crashes_nor_floods_and_recovery_follows() {
    let host = sandbox_host!("garbage");
    let script = host.dir.join("garbage.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf 'HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\n\\r\\n{{{{{'\nprintf '\\000\\377 not http at all $(rm -rf /) `reboot`\\n'\nsleep 1\n",
    )
    .expect("write script");
    set_executable(&script);
    host.set_authorized_key_options(&format!("command=\"{}\"", script.display()));
    let fwdd = Fwdd::spawn(&host, &[]);
    fwdd.wait_for(Duration::from_secs(20), "several failed attempts", |st| {
        st.hosts[0].master.consecutive_failures + st.hosts[0].events.restarts as u32 >= 3
    });
    assert!(fwdd.status().is_some(), "fwdd must keep answering");
    let log = fwdd.log_text();
    let warn_lines = log
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\""))
        .count();
    assert!(warn_lines <= 4, "{warn_lines} warnings:\n{log}");
    let st = fwdd.status().expect("status");
    let err = st.hosts[0]
        .master
        .last_error
        .as_ref()
        .expect("the failure is shown");
    assert_eq!(err.class, "transient", "{err:?}");
    // The real docker again: an operator's reconnect brings it back at once.
    host.set_authorized_key_options("");
    host.httpd(&["20220:8080"]);
    assert!(fwdd.reconnect(), "reconnect refused");
    assert_eq!(fwdd.wait_http(20220), "hello\n");
}

#[test]
fn sighup_adds_and_removes_hosts_and_leaves_unchanged_forwards_alone() {
    let host = sandbox_host!("sighup");
    let cfg = host.ssh_config.display();
    let one = format!(
        "[[host]]\nname = \"a\"\nurl = \"ssh://{}\"\nssh_config = \"{cfg}\"\n",
        host.alias
    );
    let fwdd = Fwdd::spawn_with_config(&host, &one);
    fwdd.wait_connected();
    host.httpd(&["20230:8080"]);
    assert_eq!(fwdd.wait_http(20230), "hello\n");
    let before = fwdd.forward(20230).expect("forward");
    let master_a = fwdd.master_pid();
    // Add host b (same engine, so it reports a conflict on 20230).
    std::fs::write(
        host.dir.join("fwdd.toml"),
        format!(
            "{one}\n[[host]]\nname = \"b\"\nurl = \"ssh://{}\"\nssh_config = \"{cfg}\"\n",
            host.alias
        ),
    )
    .expect("rewrite config");
    fwdd.signal(nix::sys::signal::Signal::SIGHUP);
    fwdd.wait_for(Duration::from_secs(15), "host b connected", |st| {
        st.hosts.len() == 2
            && st
                .hosts
                .iter()
                .all(|h| h.master.state == MasterState::Connected)
    });
    let after = fwdd.wait_forward_state(20230, ForwardState::Active);
    assert_eq!(after.host, "a");
    assert_eq!(
        after.since_ms, before.since_ms,
        "unchanged forward was touched"
    );
    assert_eq!(
        fwdd.master_pid(),
        master_a,
        "unchanged host's master was replaced"
    );
    // Remove host a: its forward goes, b takes the port over.
    std::fs::write(
        host.dir.join("fwdd.toml"),
        format!(
            "[[host]]\nname = \"b\"\nurl = \"ssh://{}\"\nssh_config = \"{cfg}\"\n",
            host.alias
        ),
    )
    .expect("rewrite config");
    fwdd.signal(nix::sys::signal::Signal::SIGHUP);
    fwdd.wait_for(Duration::from_secs(15), "host a gone, b forwards", |st| {
        st.hosts.len() == 1
            && st
                .forwards
                .iter()
                .any(|f| f.local_port == 20230 && f.host == "b" && f.state == ForwardState::Active)
    });
    wait_until(Duration::from_secs(5), "a's master ended", || {
        !pid_alive(master_a)
    });
    assert_eq!(fwdd.wait_http(20230), "hello\n");
    // A broken file is refused and the running configuration stays.
    std::fs::write(host.dir.join("fwdd.toml"), "[[host]]\nurl = 5\n").expect("rewrite config");
    fwdd.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(5), "reload refusal logged", || {
        fwdd.log_text().contains("\"reload_failed\"")
    });
    assert_eq!(fwdd.status().expect("status").hosts.len(), 1);
}

#[test]
fn systemd_gets_ready_status_and_watchdog_pings() {
    let host = sandbox_host!("notify");
    let sock_path = host.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let url = format!("ssh://{}", host.alias);
    let cfg = host.ssh_config.to_string_lossy().into_owned();
    let fwdd = Fwdd::spawn_env(
        &host,
        &["--host", &url, "--ssh-config", &cfg],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().expect("utf8")),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Ok(n) = sock.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(msg);
        let all = seen.join("\n");
        if all.contains("READY=1")
            && all.contains("WATCHDOG=1")
            && all.contains("1/1 hosts connected")
        {
            break;
        }
    }
    let all = seen.join("\n");
    assert!(all.contains("READY=1"), "{all}");
    assert!(all.contains("WATCHDOG=1"), "{all}");
    assert!(all.contains("STATUS=1/1 hosts connected"), "{all}");
    drop(fwdd);
}

fn set_executable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}
