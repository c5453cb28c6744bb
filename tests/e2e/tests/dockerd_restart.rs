//! The remote dockerd restarts, on a host where rootful Podman answers
//! beside it (the sandbox's Podman at `/run/podman`, as on a real host
//! with both). This restarts the engine every e2e test shares, so it is
//! the only test in its binary (cargo runs test binaries one after
//! another). Host ports 20240-20249.

mod common;

use std::time::Duration;

use common::Fwdd;
use fwd_e2e::{Sandbox, TestHost};
use fwd_proto::StreamState;

#[test]
fn dockerd_restart_keeps_survivors_forwarded_and_drops_the_rest() {
    let Some(sb) = Sandbox::get() else { return };
    let host = TestHost::new(sb, "dockerd_restart");
    let podman_dir = sb.podman_sock.parent().expect("podman's directory");
    host.bind_on_remote(podman_dir, std::path::Path::new("/run/podman"));
    let fwdd = Fwdd::start(&host);
    let engine = |fwdd: &Fwdd| {
        fwdd.status().expect("status").hosts[0]
            .engine
            .clone()
            .expect("engine")
    };
    let docker_sock = sb.docker_sock.display().to_string();
    assert_eq!(
        engine(&fwdd).remote_socket.as_deref(),
        Some(docker_sock.as_str())
    );
    // Comes back with dockerd.
    host.httpd_with(&["--restart", "always", "-p", "20240:8080"]);
    // Does not.
    host.httpd(&["20241:8080"]);
    assert_eq!(fwdd.wait_http(20240), "hello\n");
    assert_eq!(fwdd.wait_http(20241), "hello\n");
    let master = fwdd.master_pid();

    sb.restart_dockerd();
    let t0 = std::time::Instant::now();

    fwdd.wait_for(
        Duration::from_secs(60),
        "stream back after the restart",
        |st| {
            let h = &st.hosts[0];
            h.events.restarts >= 1 && h.events.state == StreamState::Streaming
        },
    );
    assert_eq!(fwdd.wait_http(20240), "hello\n");
    eprintln!(
        "RECOVERY dockerd restart: survivor served again {:?} after dockerd answered",
        t0.elapsed()
    );
    fwdd.wait_refused(20241);
    // Still dockerd, not the Podman that answered while it was gone; and a
    // container started on it now is served.
    let e = engine(&fwdd);
    assert_eq!(
        e.remote_socket.as_deref(),
        Some(docker_sock.as_str()),
        "{e:?}"
    );
    assert_eq!(e.found_by.as_deref(), Some("DOCKER_HOST"), "{e:?}");
    host.httpd(&["20242:8080"]);
    assert_eq!(fwdd.wait_http(20242), "hello\n");
    assert!(
        !fwdd.log_text().contains("engine_replaced"),
        "{}",
        fwdd.log_tail(20)
    );
    // Only the Docker channel was replaced: the SSH connection stayed.
    assert_eq!(fwdd.master_pid(), master);
    assert_eq!(host.sshd_connection_count(), 1);
}
