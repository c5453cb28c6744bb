//! The core of forwarding against every engine of the sandbox, each found
//! with nothing engine-specific given to fwd (only the host's URL):
//! - rootful dockerd, named by the remote sessions' `DOCKER_HOST`;
//! - rootful Podman at `/run/podman/podman.sock` (bound there for this
//!   host's sshd alone), with an sshd that sets no `DOCKER_HOST`;
//! - rootless dockerd and rootless Podman, each serving its own user under
//!   `/run/user/UID`, whom the sessions log in as; their sshd sets neither
//!   `DOCKER_HOST` nor `XDG_RUNTIME_DIR` (no PAM).
//!
//! For each: found as expected; ports published with `-p` answer the
//! instant `docker run` returns (through fwd's engine socket, as a runner's
//! docker would run them), on the direct route to the container on a
//! rootful engine and on the published port on a rootless one; `-P` too; `docker ps` through that socket; a
//! stopped container's port is released and answers again on restart; a
//! removed one's is released.
//!
//! Each twice: Debian 12's engines (dockerd 20.10, Podman 4.3) and today's,
//! Debian 13's, run beside them in the same remote namespace (dockerd 26.1,
//! API 1.45; Podman 5.4, whose rootless containers' network is pasta's).
//! Host ports 21000-21099 and 21400-21499 are this file's.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Fwdd;
use fwd_e2e::{run_ok, TestHost, TodaysEngines};
use fwd_proto::{ExposedStatus, ForwardState, RouteKind};

struct Engine<'a> {
    /// The engine's socket, for the harness's own cleanup.
    socket: &'a Path,
    /// What status must say found it.
    found_by: &'static str,
    /// How status's version string starts.
    version: &'static str,
    /// What the engine says of itself.
    rootless: bool,
    /// The first of this engine's 20 host ports.
    ports: u16,
}

/// The runner's docker CLI through fwdd's engine socket.
fn docker(fwdd: &Fwdd) -> Command {
    let mut cmd = Command::new("docker");
    cmd.arg("-H").arg(format!(
        "unix://{}",
        fwdd.runtime_dir.join("docker.sock").display()
    ));
    cmd
}

fn forwards_everything_on(host: &TestHost, engine: Engine) {
    let _containers = host.containers_on(engine.socket);
    let fwdd = Fwdd::start(host);
    let st = fwdd.status().expect("status");
    let found = st.hosts[0].engine.clone().expect("engine status");
    assert_eq!(
        found.found_by.as_deref(),
        Some(engine.found_by),
        "{found:?}"
    );
    assert_eq!(found.route.as_deref(), Some("stream_local"), "{found:?}");
    let version = st.hosts[0].docker_version.clone().unwrap_or_default();
    assert!(version.starts_with(engine.version), "{version}");
    fwdd.wait_engine_known();
    let said = fwdd
        .status()
        .and_then(|st| st.hosts[0].engine.clone()?.rootless);
    assert_eq!(said, Some(engine.rootless));

    let label = format!("fwd-test={}", host.label);
    let run = |options: &[&str]| -> String {
        let mut args = vec!["run", "-d", "--label", &label];
        args.extend(host.httpd_args(options));
        run_ok(docker(&fwdd).args(&args))
    };

    // The start race: one attempt, the instant `docker run` returns. (On
    // Podman 4.3 the engine's events come after that: its event stream
    // tails a file and delivered `create` 230 ms after it happened. fwd
    // sees the start on its engine socket and holds the answer until the
    // port is bound.)
    let mut ids = Vec::new();
    let mut refused = Vec::new();
    for port in engine.ports..engine.ports + 5 {
        ids.push(run(&["-p", &format!("{port}:8080")]));
        match host.http_get(port) {
            Ok(body) => assert_eq!(body, "hello\n"),
            Err(e) => refused.push((port, e.to_string())),
        }
    }
    assert!(refused.is_empty(), "not served at once: {refused:?}");

    // The route: the container itself on a rootful engine (its address as
    // the engine says it, the container port), the published port on a
    // rootless one, whose containers live in a namespace of their own.
    for (port, id) in (engine.ports..).zip(&ids) {
        let route = fwdd.forward(port).and_then(|f| f.route).expect("a route");
        if engine.rootless {
            assert_eq!(route.kind, RouteKind::Published, "{route:?}");
            assert_eq!(route.to, format!("127.0.0.1:{port}"), "{route:?}");
            assert!(route.why.contains("rootless"), "{route:?}");
        } else {
            let ip = run_ok(docker(&fwdd).args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                id,
            ]));
            assert_eq!(route.kind, RouteKind::Direct, "{route:?}");
            assert_eq!(route.to, format!("{}:8080", ip.trim()), "{route:?}");
            assert!(!route.fell_back, "{route:?}");
        }
    }

    // -P: the engine picks the host port.
    let eph = run(&["-P", "--expose", "8080"]);
    let port_line = run_ok(docker(&fwdd).args(["port", &eph, "8080/tcp"]));
    let port: u16 = port_line
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {port_line:?}"));
    fwdd.wait_forward_state(port, ForwardState::Active);
    assert_eq!(fwdd.wait_http(port), "hello\n");

    let ps = run_ok(docker(&fwdd).args(["ps", "-q", "--no-trunc"]));
    for id in ids.iter().chain([&eph]) {
        assert!(ps.contains(id.as_str()), "{id} not in {ps}");
    }

    // Stopped: released; started again: answers again.
    run_ok(docker(&fwdd).args(["stop", "-t", "1", &ids[0]]));
    fwdd.wait_refused(engine.ports);
    run_ok(docker(&fwdd).args(["start", &ids[0]]));
    assert_eq!(fwdd.wait_http(engine.ports), "hello\n");

    // Removed: released.
    run_ok(docker(&fwdd).args(["rm", "-f", &ids[1], &eph]));
    fwdd.wait_refused(engine.ports + 1);
    fwdd.wait_refused(port);
}

#[test]
fn rootful_docker_named_by_docker_host() {
    let host = sandbox_host!("engine_docker");
    let sb = host.sandbox();
    forwards_everything_on(
        &host,
        Engine {
            socket: &sb.docker_sock,
            found_by: "DOCKER_HOST",
            version: "20.10",
            ports: 21000,
            rootless: false,
        },
    );
}

#[test]
fn rootful_podman_found_at_its_socket() {
    let host = sandbox_host!("engine_podman");
    let sb = host.sandbox();
    host.set_session_env("");
    let podman_dir = sb.podman_sock.parent().expect("podman's directory");
    host.bind_on_remote(podman_dir, Path::new("/run/podman"));
    forwards_everything_on(
        &host,
        Engine {
            socket: &sb.podman_sock,
            found_by: "Podman's socket",
            version: "Podman 4.",
            ports: 21020,
            rootless: false,
        },
    );
}

/// A rootless engine: the sessions log in as its `user`, and get neither
/// `DOCKER_HOST` nor `XDG_RUNTIME_DIR`.
fn rootless(host: &TestHost, user: &str, engine: Engine) {
    host.set_session_env("");
    host.log_in_as(user);
    forwards_everything_on(host, engine);
}

#[test]
fn rootless_docker_found_in_its_users_runtime_directory() {
    let host = sandbox_host!("engine_rootless_docker");
    let (user, socket) = &host.sandbox().rootless_docker;
    let found_by = "rootless Docker's socket";
    let engine = Engine {
        socket,
        found_by,
        version: "20.10",
        ports: 21040,
        rootless: true,
    };
    rootless(&host, user, engine);
}

#[test]
fn rootless_podman_found_in_its_users_runtime_directory() {
    let host = sandbox_host!("engine_rootless_podman");
    let (user, socket) = &host.sandbox().rootless_podman;
    let found_by = "rootless Podman's socket";
    let engine = Engine {
        socket,
        found_by,
        version: "Podman 4.",
        ports: 21060,
        rootless: true,
    };
    rootless(&host, user, engine);
}

/// Today's engines of the sandbox (an env file from before them lacks them).
fn todays(host: &TestHost) -> &'static TodaysEngines {
    host.sandbox().todays.as_ref().expect(
        "no dockerd 26 or Podman 5 in this sandbox: run scripts/install-deps.sh, \
         then tests/sandbox/down.sh and up.sh again",
    )
}

#[test]
fn rootful_docker_26_named_by_docker_host() {
    let host = sandbox_host!("engine_docker26");
    let socket = &todays(&host).docker26_sock;
    host.set_session_env(&format!("DOCKER_HOST=unix://{}", socket.display()));
    forwards_everything_on(
        &host,
        Engine {
            socket,
            found_by: "DOCKER_HOST",
            version: "26.",
            ports: 21400,
            rootless: false,
        },
    );
}

#[test]
fn rootful_podman_5_found_at_its_socket() {
    let host = sandbox_host!("engine_podman5");
    let socket = &todays(&host).podman5_sock;
    host.set_session_env("");
    let podman_dir = socket.parent().expect("podman 5's directory");
    host.bind_on_remote(podman_dir, Path::new("/run/podman"));
    forwards_everything_on(
        &host,
        Engine {
            socket,
            found_by: "Podman's socket",
            version: "Podman 5.",
            ports: 21420,
            rootless: false,
        },
    );
}

#[test]
fn rootless_docker_26_found_in_its_users_runtime_directory() {
    let host = sandbox_host!("engine_rootless_docker26");
    let (user, socket) = &todays(&host).rootless_docker26;
    let engine = Engine {
        socket,
        found_by: "rootless Docker's socket",
        version: "26.",
        ports: 21440,
        rootless: true,
    };
    rootless(&host, user, engine);
}

#[test]
fn rootless_podman_5_with_pasta_found_in_its_users_runtime_directory() {
    let host = sandbox_host!("engine_rootless_podman5");
    let (user, socket) = &todays(&host).rootless_podman5;
    let engine = Engine {
        socket,
        found_by: "rootless Podman's socket",
        version: "Podman 5.",
        ports: 21460,
        rootless: true,
    };
    rootless(&host, user, engine);
}

/// A server on the runner's loopback answering each connection with
/// `pong` and the line it got.
fn runner_pong(host: &TestHost, port: u16) {
    let listener = host
        .in_runner_ns(|| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
        .expect("bind the runner's server");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = [0u8; 64];
            let n = conn.read(&mut line).unwrap_or(0);
            let _ =
                conn.write_all(format!("pong {}", String::from_utf8_lossy(&line[..n])).as_bytes());
        }
    });
}

/// `expose` on rootless Podman 5, whose containers' network is pasta's.
/// Their `host-gateway` (and `host.containers.internal`) is 169.254.1.2,
/// which pasta connects to the host's own address on its uplink (not to its
/// loopback: Podman runs pasta with `--no-map-gw`). fwd's default
/// `expose_on = ["gateway"]` asks the engine for its `bridge` network, and
/// rootless Podman answers with the one in the user's namespace
/// (10.88.0.1), no address of the host's: sshd refuses the forward and the
/// exposure fails, or, where another engine's bridge has that address, the
/// exposure is active where these containers never arrive. Naming the
/// host's address in `expose_on` works: sshd
/// listens there (`GatewayPorts clientspecified`) and a container reaches
/// the runner at `host.docker.internal`.
#[test]
fn rootless_podman_5_containers_reach_an_exposure_on_the_hosts_own_address() {
    let host = sandbox_host!("engine_rootless_podman5_expose");
    let todays = todays(&host);
    let (user, socket) = &todays.rootless_podman5;
    let containers = host.containers_on(socket);
    host.add_sshd_config("GatewayPorts clientspecified");
    host.set_session_env("");
    host.log_in_as(user);
    runner_pong(&host, 21480);
    let config = |expose_on: &str| {
        format!(
            "[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{}\"\nexpose = [21480]\n{expose_on}\n",
            host.alias,
            host.ssh_config.display()
        )
    };
    let exposure = |fwdd: &Fwdd, states: &[&str]| -> ExposedStatus {
        fwdd.wait_for(
            Duration::from_secs(30),
            &format!("exposure 21480 {states:?}"),
            |st| {
                st.exposed
                    .iter()
                    .any(|e| e.remote_port == 21480 && states.contains(&e.state.as_str()))
            },
        );
        let st = fwdd.status().expect("status");
        st.exposed
            .into_iter()
            .find(|e| e.remote_port == 21480)
            .expect("exposure")
    };
    // What a container of the engine's prints: its host-gateway, and what
    // came back from it on 21480.
    let label = format!("fwd-test={}", host.label);
    let from_container = || -> String {
        let script = "set -- $(busybox grep -w host.docker.internal /etc/hosts); \
                      echo \"$1\"; echo ping | busybox timeout 10 nc $1 21480";
        let out = containers
            .docker()
            .args(["run", "--rm", "--label", &label])
            .args(["--add-host", "host.docker.internal:host-gateway"])
            .args([host.image.as_str(), "sh", "-c", script])
            .output()
            .expect("docker run");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // The default: the engine's bridge gateway, which is not the host's.
    // sshd refuses it, or, where another engine's bridge on the host has
    // that address (rootful Podman 4.3's cni-podman0 here, once it ran a
    // container), binds it there; neither reaches these containers.
    let mut fwdd = Fwdd::spawn_with_config(&host, &config(""));
    fwdd.wait_connected();
    let settled = exposure(&fwdd, &["failed", "active"]);
    if settled.state == "failed" {
        assert!(settled.binds.is_empty(), "{settled:?}");
        assert_eq!(
            settled.reason_kind.as_deref(),
            Some("refused"),
            "{settled:?}"
        );
    } else {
        assert_eq!(settled.binds, ["10.88.0.1:21480"], "{settled:?}");
    }
    assert_eq!(from_container(), "169.254.1.2", "not reached");
    fwdd.terminate();

    // The host's own address: reached from a container as host-gateway.
    let uplink = &todays.pasta_uplink_ip;
    let fwdd = Fwdd::spawn_with_config(&host, &config(&format!("expose_on = [\"{uplink}\"]")));
    fwdd.wait_connected();
    let active = exposure(&fwdd, &["active"]);
    assert_eq!(active.binds, [format!("{uplink}:21480")], "{active:?}");
    assert_eq!(from_container(), "169.254.1.2\npong ping");
}
