//! Podman (Debian's 4.3, rootful, the sandbox's second engine) with nothing
//! engine-specific configured: runner ports exposed to its containers at
//! `host.containers.internal`. (Forwarding on Podman, rootful and rootless,
//! is `engines.rs`'s matrix.) The sandbox's Podman is bound at
//! `/run/podman` for this host's sshd, whose sessions get no `DOCKER_HOST`.
//! Host ports 20900-20999 are this file's.

#[macro_use]
mod common;

use common::Fwdd;
use fwd_e2e::TestHost;

/// An sshd whose sessions set no DOCKER_HOST, and the sandbox's Podman
/// where a rootful Podman listens.
fn podman_host(host: &TestHost) {
    host.set_session_env("");
    let dir = host
        .sandbox()
        .podman_sock
        .parent()
        .expect("podman's directory");
    host.bind_on_remote(dir, std::path::Path::new("/run/podman"));
}

#[test]
fn podmans_containers_reach_the_runner_at_host_containers_internal() {
    let host = sandbox_host!("podman_expose");
    let podman = host.containers_on(&host.sandbox().podman_sock);
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
    let out = podman
        .docker()
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
