//! Podman (Debian's 4.3, rootful, the sandbox's second engine) with nothing
//! engine-specific configured: fwdd finds it, forwards its published ports
//! and releases them, serves it on the engine socket, and exposes runner
//! ports to its containers at `host.containers.internal`. The sandbox's
//! Podman listens on a socket of its own; each test puts it where a Podman
//! is looked for (under the session's `XDG_RUNTIME_DIR`), with an sshd that
//! sets no `DOCKER_HOST`. Host ports 20900-20999 are this file's.

#[macro_use]
mod common;

use std::process::Command;

use common::Fwdd;
use fwd_e2e::{run_ok, TestHost};
use fwd_proto::ForwardState;

/// The docker CLI against the sandbox's Podman.
fn podman(host: &TestHost) -> Command {
    let mut cmd = Command::new("docker");
    cmd.arg("-H")
        .arg(format!("unix://{}", host.sandbox().podman_sock.display()));
    cmd
}

/// Removes this test's Podman containers when the test ends, however.
struct Containers<'a>(&'a TestHost);

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        let label = format!("label=fwd-test={}", self.0.label);
        if let Ok(out) = podman(self.0)
            .args(["ps", "-aq", "--filter", &label])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = podman(self.0).args(["rm", "-f", id]).output();
            }
        }
    }
}

fn podman_run(host: &TestHost, args: &[&str]) -> String {
    let label = format!("fwd-test={}", host.label);
    run_ok(
        podman(host)
            .args(["run", "-d", "--label", &label])
            .args(args),
    )
}

/// Busybox httpd (`hello\n` on 8080) on Podman, with `options` (`-p`, `-P`, …).
fn podman_httpd(host: &TestHost, options: &[&str]) -> String {
    podman_run(host, &host.httpd_args(options))
}

/// An sshd whose sessions set no DOCKER_HOST, and Podman's socket where a
/// Podman is looked for.
fn podman_host(host: &TestHost) {
    let xdg = host.dir.join("xdg");
    std::fs::create_dir_all(xdg.join("podman")).expect("mkdir");
    let link = xdg.join("podman/podman.sock");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&host.sandbox().podman_sock, &link).expect("symlink");
    host.set_session_env(&format!("XDG_RUNTIME_DIR={}", xdg.display()));
}

#[test]
fn podman_is_found_its_ports_forwarded_and_released_and_served_on_the_engine_socket() {
    let host = sandbox_host!("podman_forwards");
    let _containers = Containers(&host);
    podman_host(&host);
    let fwdd = Fwdd::start(&host);
    let st = fwdd.status().expect("status");
    let engine = st.hosts[0].engine.clone().expect("engine status");
    assert_eq!(engine.found_by.as_deref(), Some("rootless Podman's socket"));
    assert_eq!(engine.route.as_deref(), Some("stream_local"));
    assert!(
        st.hosts[0]
            .docker_version
            .as_deref()
            .is_some_and(|v| v.starts_with("Podman 4.")),
        "{:?}",
        st.hosts[0].docker_version
    );

    // -p with Podman's empty HostIp, and -P.
    let id = podman_httpd(&host, &["-p", "20900:8080"]);
    fwdd.wait_forward_state(20900, ForwardState::Active);
    assert_eq!(fwdd.wait_http(20900), "hello\n");
    let eph = podman_httpd(&host, &["-P", "--expose", "8080"]);
    let port_line = run_ok(podman(&host).args(["port", &eph, "8080/tcp"]));
    let port: u16 = port_line
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {port_line:?}"));
    fwdd.wait_forward_state(port, ForwardState::Active);
    assert_eq!(fwdd.wait_http(port), "hello\n");

    // Through fwd's engine socket: the real docker CLI lists Podman's containers.
    let ps = run_ok(
        Command::new("docker")
            .arg("-H")
            .arg(format!(
                "unix://{}",
                fwdd.runtime_dir.join("docker.sock").display()
            ))
            .args(["ps", "-q", "--no-trunc"]),
    );
    assert!(ps.contains(&id), "{ps}");

    // Released when the container goes (Podman's "remove", Docker's "destroy").
    run_ok(podman(&host).args(["rm", "-f", &id]));
    fwdd.wait_refused(20900);
}

#[test]
fn podmans_containers_reach_the_runner_at_host_containers_internal() {
    let host = sandbox_host!("podman_expose");
    let _containers = Containers(&host);
    podman_host(&host);
    host.add_sshd_config("GatewayPorts clientspecified");
    let listener = host
        .in_runner_ns(|| std::net::TcpListener::bind(("127.0.0.1", 20950)))
        .expect("bind the runner's server");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).unwrap_or(0);
            let _ =
                conn.write_all(format!("pong {}", String::from_utf8_lossy(&buf[..n])).as_bytes());
        }
    });
    let fwdd = Fwdd::spawn_with_config(
        &host,
        &format!(
            "[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{}\"\nexpose = [20950]\n",
            host.alias,
            host.ssh_config.display()
        ),
    );
    fwdd.wait_connected();
    fwdd.wait_for(
        std::time::Duration::from_secs(30),
        "the exposure active",
        |st| {
            st.exposed
                .iter()
                .any(|e| e.remote_port == 20950 && e.state == "active")
        },
    );
    let st = fwdd.status().expect("status");
    let e = st
        .exposed
        .iter()
        .find(|e| e.remote_port == 20950)
        .expect("exposure");
    assert_eq!(
        e.binds,
        ["10.88.0.1:20950"],
        "Podman's network gateway: {e:?}"
    );
    // Podman writes host.containers.internal into every container's /etc/hosts.
    let out = podman(&host)
        .args(["run", "--rm", &host.image, "sh", "-c"])
        .arg("set -- $(busybox grep -w host.containers.internal /etc/hosts); echo ping | busybox timeout 10 nc $1 20950")
        .output()
        .expect("podman run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pong ping",
        "{out:?}"
    );
}
