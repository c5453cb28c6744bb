//! Proves the harness works: container up, HTTP inside the remote netns, ssh from the
//! runner netns to the test's sshd with a remote `docker` CLI, sshd stop/start, link down/up.

use std::time::Duration;

use fwd_e2e::{wait_until, Sandbox, TestHost};

#[test]
fn harness_smoke() {
    let Some(sb) = Sandbox::get() else { return };
    let host = TestHost::new(sb, "harness_smoke");

    // a container with a published port, reachable inside the remote netns only
    let id = host.httpd(&["18080:8080"]);
    assert_eq!(host.containers(), vec![id.clone()]);
    wait_until(
        Duration::from_secs(10),
        "httpd answers in remote netns",
        || sb.remote_http_get(18080).is_ok(),
    );
    assert_eq!(sb.remote_http_get(18080).unwrap(), "hello\n");
    // ... and not on the runner's loopback (that is fwdd's job)
    assert!(
        host.connect(18080).is_err(),
        "runner netns must not see the remote port"
    );

    // sshd reachable from the runner netns; the remote docker CLI finds the engine
    assert_eq!(host.sshd_connection_count(), 0);
    let mut ssh = host.ssh_command();
    ssh.args([
        &host.alias,
        "docker",
        "version",
        "--format",
        "{{.Server.APIVersion}}",
    ]);
    let api = fwd_e2e::run_ok(&mut ssh);
    assert!(api.starts_with("1."), "unexpected API version {api:?}");
    assert_eq!(host.sshd_connection_count(), 1);
    // sshd's per-connection process exits just after the client does.
    wait_until(
        Duration::from_secs(5),
        "the finished session's processes gone",
        || host.remote_session_processes().is_empty(),
    );

    // a long-running remote session shows up in the sshd's process tree
    let mut child = host
        .ssh_command()
        .args([&host.alias, "docker", "events"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "remote `docker events` process",
        || {
            host.remote_session_processes()
                .iter()
                .any(|(_, cmd)| cmd.contains("docker events"))
        },
    );

    // sshd stop: the session dies, new connections are refused; start: recovery
    host.stop_sshd();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let refused = host.connect_addr((host.remote_ip, host.ssh_port).into());
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    host.start_sshd();
    assert!(host
        .connect_addr((host.remote_ip, host.ssh_port).into())
        .is_ok());

    // link down: black hole (connect times out), link up: reachable again
    host.link_down();
    let err = host
        .connect_addr((host.remote_ip, host.ssh_port).into())
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::NetworkUnreachable
        ),
        "{err:?}"
    );
    host.link_up();
    wait_until(Duration::from_secs(10), "ssh port reachable again", || {
        host.connect_addr((host.remote_ip, host.ssh_port).into())
            .is_ok()
    });

    // port conflict helper and IPv6 loopback in the runner netns
    let l = host.bind_in_runner(18080).unwrap();
    assert!(host.connect(18080).is_ok());
    drop(l);
    let l6 = host
        .in_runner_ns(|| std::net::TcpListener::bind(("::1", 18081)))
        .unwrap();
    assert!(host.connect_v6(18081).is_ok());
    drop(l6);
}

#[test]
fn two_hosts_in_parallel_are_isolated() {
    let Some(sb) = Sandbox::get() else { return };
    let a = TestHost::new(sb, "iso_a");
    let b = TestHost::new(sb, "iso_b");
    assert_ne!(a.remote_ip, b.remote_ip);
    assert_ne!(a.runner_ns, b.runner_ns);
    let ca = a.run(&[&a.image, "/bin/sleep", "1000"]);
    assert_eq!(a.containers(), vec![ca]);
    assert!(b.containers().is_empty());
    let (label, dir) = (a.label.clone(), a.dir.clone());
    drop(a);
    let filter = format!("label=fwd-test={label}");
    assert_eq!(sb.docker_ok(&["ps", "-aq", "--filter", &filter]), "");
    assert!(!dir.exists());
    let mut ssh = b.ssh_command();
    ssh.args([&b.alias, "true"]);
    fwd_e2e::run_ok(&mut ssh);
}

/// The remote host sees only the sandbox's engines: what this machine has
/// under `/run` (a rootful Podman's socket, Docker's `/var/run/docker.sock`,
/// anything) is out of sight of its sessions, while the sandbox's rootless
/// engines' runtime directories are there.
#[test]
fn the_remote_hosts_run_directory_is_its_own() {
    let Some(sb) = Sandbox::get() else { return };
    let host = TestHost::new(sb, "harness_private_run");
    // Something of this machine's in its /run, as a system engine's socket
    // would be (a name of this test's own, removed at the end).
    let planted = std::path::PathBuf::from(format!("/run/fwd-e2e-{}", host.label));
    std::fs::create_dir_all(&planted).expect("mkdir in /run");
    let _listener =
        std::os::unix::net::UnixListener::bind(planted.join("engine.sock")).expect("bind");
    let ls = |path: &str| {
        host.ssh_command()
            .args([&host.alias, "ls", "-d", path])
            .output()
            .expect("ssh")
    };
    let seen = ls(&format!("{}/engine.sock", planted.display()));
    let rootless = sb.remote_runtime_dirs();
    let rootless_seen: Vec<bool> = rootless
        .iter()
        .map(|d| ls(&d.display().to_string()).status.success())
        .collect();
    let var_run = ls(&format!("/var/run/fwd-e2e-{}", host.label));
    let _ = std::fs::remove_dir_all(&planted);
    assert!(
        !seen.status.success(),
        "the machine's own /run reached the remote host: {}",
        String::from_utf8_lossy(&seen.stdout)
    );
    assert!(!var_run.status.success(), "/var/run is the machine's");
    // Debian 12's rootless Docker and Podman, and today's beside them.
    let engines = if sb.todays.is_some() { 4 } else { 2 };
    assert_eq!(rootless.len(), engines, "{rootless:?}");
    assert!(
        rootless_seen.iter().all(|s| *s),
        "the sandbox's rootless runtime directories {rootless:?}: {rootless_seen:?}"
    );
}
