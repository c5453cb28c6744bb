//! Finding the engine without configuration: an sshd that sets no
//! `DOCKER_HOST` (as real hosts are), only `--host` given to fwdd. The
//! sandbox's dockerd listens on a socket of its own, so each test puts it
//! where an engine is looked for (a rootless engine's place, under the
//! session's `XDG_RUNTIME_DIR`). Host ports 20800-20899 are this file's.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::Fwdd;
use fwd_e2e::TestHost;
use fwd_proto::{ForwardState, MasterState};

/// `XDG_RUNTIME_DIR` for the host's sessions, with the sandbox's engine
/// socket at `docker.sock` in it.
fn runtime_dir_with_engine(host: &TestHost) -> std::path::PathBuf {
    let dir = host.dir.join("xdg");
    std::fs::create_dir_all(&dir).expect("mkdir xdg");
    let link = dir.join("docker.sock");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&host.docker_sock, &link).expect("symlink docker.sock");
    dir
}

#[test]
fn an_engine_in_a_rootless_place_is_found_without_configuration_and_serves() {
    let host = sandbox_host!("discovery_found");
    let xdg = runtime_dir_with_engine(&host);
    host.set_session_env(&format!("XDG_RUNTIME_DIR={}", xdg.display()));
    let fwdd = Fwdd::start(&host);
    let st = fwdd.status().expect("status");
    let engine = st.hosts[0].engine.clone().expect("engine status");
    assert_eq!(
        engine.remote_socket.as_deref(),
        Some(xdg.join("docker.sock").to_str().expect("utf-8"))
    );
    assert_eq!(engine.found_by.as_deref(), Some("rootless Docker's socket"));
    assert_eq!(engine.route.as_deref(), Some("stream_local"));
    host.httpd(&["20800:8080"]);
    fwdd.wait_forward_state(20800, ForwardState::Active);
    assert_eq!(fwdd.wait_http(20800), "hello\n");
}

#[test]
fn a_host_without_a_docker_cli_is_normal() {
    let host = sandbox_host!("discovery_nocli");
    let xdg = runtime_dir_with_engine(&host);
    // No docker CLI on the sessions' PATH: the discovery needs none.
    host.set_session_env(&format!(
        "XDG_RUNTIME_DIR={} PATH=/nonexistent-bin",
        xdg.display()
    ));
    let fwdd = Fwdd::start(&host);
    let st = fwdd.status().expect("status");
    let engine = st.hosts[0].engine.clone().expect("engine status");
    assert_eq!(engine.found_by.as_deref(), Some("rootless Docker's socket"));
    assert!(st.hosts[0].docker_version.is_some(), "{st:?}");
}

#[test]
fn with_no_engine_in_any_place_the_error_names_each_place() {
    let host = sandbox_host!("discovery_none");
    let xdg = host.dir.join("xdg-empty");
    std::fs::create_dir_all(&xdg).expect("mkdir");
    // Something that is not a socket where rootless Docker's would be.
    std::fs::write(xdg.join("docker.sock"), "").expect("a plain file");
    host.set_session_env(&format!("XDG_RUNTIME_DIR={}", xdg.display()));
    let fwdd = Fwdd::spawn(&host, &[]);
    fwdd.wait_for(
        Duration::from_secs(30),
        "the engine not to be found",
        |st| {
            st.hosts[0]
                .master
                .last_error
                .as_ref()
                .is_some_and(|e| e.kind == "engine_not_found")
        },
    );
    let st = fwdd.status().expect("status");
    assert_ne!(st.hosts[0].master.state, MasterState::Connected);
    let message = st.hosts[0]
        .master
        .last_error
        .clone()
        .expect("error")
        .message;
    let rootless = format!(
        "{}/docker.sock (rootless Docker's socket): not a socket",
        xdg.display()
    );
    for place in [
        rootless.as_str(),
        "/run/podman/podman.sock (Podman's socket): no such file",
        "engine_remote_socket",
    ] {
        assert!(message.contains(place), "{place:?} not in {message}");
    }
    // The default socket is named once, by the first way that found it
    // (here the remote CLI's context, which names it too).
    assert_eq!(
        message.matches("/var/run/docker.sock (").count(),
        1,
        "{message}"
    );
    assert!(
        message.contains("/var/run/docker.sock (docker context): no such file"),
        "{message}"
    );
}

#[test]
fn a_socket_left_by_an_engine_that_is_gone_gives_way_to_the_next_one() {
    let host = sandbox_host!("discovery_stale");
    let xdg = host.dir.join("xdg-stale");
    std::fs::create_dir_all(xdg.join("podman")).expect("mkdir");
    // Rootless Docker's place: a socket nobody listens on any more.
    let stale = xdg.join("docker.sock");
    let _ = std::fs::remove_file(&stale);
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    // Rootless Podman's place, looked at next: an engine that answers.
    std::os::unix::fs::symlink(&host.docker_sock, xdg.join("podman/podman.sock")).expect("symlink");
    host.set_session_env(&format!("XDG_RUNTIME_DIR={}", xdg.display()));
    let fwdd = Fwdd::start(&host);
    let engine = fwdd.status().expect("status").hosts[0]
        .engine
        .clone()
        .expect("engine");
    assert_eq!(
        engine.found_by.as_deref(),
        Some("rootless Podman's socket"),
        "{engine:?}"
    );
    assert_eq!(engine.route.as_deref(), Some("stream_local"));
    host.httpd(&["20810:8080"]);
    fwdd.wait_forward_state(20810, ForwardState::Active);
    assert_eq!(fwdd.wait_http(20810), "hello\n");
}

/// The engine found first is gone for good (its socket removed, and a new
/// master finds only another engine, the sandbox's Podman): fwd waits for
/// it `engine_gone_after`, saying so, then takes the other engine, says
/// that once, and serves its containers.
#[test]
fn an_engine_gone_for_good_gives_way_to_another_after_engine_gone_after() {
    let host = sandbox_host!("discovery_gone");
    let sb = host.sandbox();
    let xdg = runtime_dir_with_engine(&host);
    std::fs::create_dir_all(xdg.join("podman")).expect("mkdir");
    let podman_sock = xdg.join("podman/podman.sock");
    let _ = std::fs::remove_file(&podman_sock);
    std::os::unix::fs::symlink(&sb.podman_sock, &podman_sock).expect("symlink");
    host.set_session_env(&format!("XDG_RUNTIME_DIR={}", xdg.display()));
    let podman = host.containers_on(&sb.podman_sock);
    let fwdd = Fwdd::spawn_with_config(
        &host,
        &format!(
            "[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{}\"\nengine_gone_after = \"5s\"\n",
            host.alias,
            host.ssh_config.display()
        ),
    );
    fwdd.wait_connected();
    let engine = || {
        fwdd.status().expect("status").hosts[0]
            .engine
            .clone()
            .expect("engine")
    };
    let docker_sock = xdg.join("docker.sock").display().to_string();
    let podman_path = podman_sock.display().to_string();
    assert_eq!(
        engine().remote_socket.as_deref(),
        Some(docker_sock.as_str())
    );

    // The engine goes (its socket removed), and a new master comes.
    std::fs::remove_file(xdg.join("docker.sock")).expect("remove the engine's socket");
    let gone_at = Instant::now();
    assert!(fwdd.reconnect());
    fwdd.wait_for(
        Duration::from_secs(30),
        "fwd to wait for the engine",
        |st| {
            st.hosts[0]
                .engine
                .as_ref()
                .and_then(|e| e.reason.as_deref())
                .is_some_and(|r| r.contains("waiting for it"))
        },
    );
    let waiting = engine();
    assert_eq!(
        waiting.remote_socket.as_deref(),
        Some(docker_sock.as_str()),
        "{waiting:?}"
    );

    fwdd.wait_for(Duration::from_secs(60), "the other engine taken", |st| {
        st.hosts[0].engine.as_ref().is_some_and(|e| {
            e.remote_socket.as_deref() == Some(podman_path.as_str()) && e.reason.is_none()
        }) && st.hosts[0].docker_version.is_some()
    });
    assert!(
        gone_at.elapsed() >= Duration::from_secs(5),
        "taken after {:?}, before engine_gone_after",
        gone_at.elapsed()
    );
    let log = fwdd.log_text();
    assert_eq!(
        log.matches("\"engine_replaced\"").count(),
        1,
        "{}",
        fwdd.log_tail(30)
    );

    // Its containers are served now.
    let label = format!("fwd-test={}", host.label);
    let mut args = vec!["run", "-d", "--label", &label];
    args.extend(host.httpd_args(&["-p", "20820:8080"]));
    fwd_e2e::run_ok(podman.docker().args(&args));
    assert_eq!(fwdd.wait_http(20820), "hello\n");
}
