//! The remote dockerd restarts. This restarts the engine every e2e test
//! shares, so it is the only test in its binary (cargo runs test binaries
//! one after another). Host ports 20240-20249.

mod common;

use std::time::Duration;

use common::Fwdd;
use fwd_e2e::{Sandbox, TestHost};
use fwd_proto::StreamState;

#[test]
fn dockerd_restart_keeps_survivors_forwarded_and_drops_the_rest() {
    let Some(sb) = Sandbox::get() else { return };
    let host = TestHost::new(sb, "dockerd_restart");
    let fwdd = Fwdd::start(&host);
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
    // Only the Docker channel was replaced: the SSH connection stayed.
    assert_eq!(fwdd.master_pid(), master);
    assert_eq!(host.sshd_connection_count(), 1);
}
