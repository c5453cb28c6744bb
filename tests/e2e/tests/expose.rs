//! Containers reach the runner (`expose`): remote forwards over fwdd's one
//! master, verified end to end, through a master SIGKILL; sshd's silent
//! loopback bind under its default `GatewayPorts no` is caught and said.
//! The real docker CLI runs containers on the sandbox's dockerd; they reach
//! a server in the runner's namespace at `host.docker.internal`, resolved by
//! the engine's own `host-gateway`. Remote ports 20600-20699 are this file's.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use common::{fwdctl, Fwdd};
use fwd_e2e::{run_ok, wait_until, TestHost};
use fwd_proto::{ExposedStatus, Status};

const T: Duration = Duration::from_secs(30);

fn config(host: &TestHost, extra: &str) -> String {
    format!(
        "[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{}\"\n{extra}\n",
        host.alias,
        host.ssh_config.display()
    )
}

fn exposed(st: &Status, port: u16) -> Option<ExposedStatus> {
    st.exposed.iter().find(|e| e.remote_port == port).cloned()
}

fn wait_exposed(fwdd: &Fwdd, port: u16, state: &str) -> ExposedStatus {
    fwdd.wait_for(T, &format!("exposure {port} {state}"), |st| {
        exposed(st, port).is_some_and(|e| e.state == state)
    });
    exposed(&fwdd.status().expect("status"), port).expect("exposure")
}

/// A server on the runner's loopback: every connection is answered with
/// `reply` and what it sent, then closed. Returns the number served so far.
fn runner_server(
    host: &TestHost,
    port: u16,
    reply: &'static str,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let listener = host
        .in_runner_ns(|| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
        .expect("bind the runner's server");
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = [0u8; 64];
                let n = conn.read(&mut line).unwrap_or(0);
                let _ = conn.write_all(
                    format!("{reply} {}", String::from_utf8_lossy(&line[..n])).as_bytes(),
                );
            });
        }
    });
    served
}

/// Runs a container (on `network`, default bridge when `None`) that asks
/// `host.docker.internal:port` through the engine's `host-gateway` and
/// prints the answer. busybox's own name lookup does not work in this
/// static image, so the shell reads the address from the container's
/// /etc/hosts, which the engine wrote.
fn from_container(host: &TestHost, network: Option<&str>, port: u16) -> String {
    let script = format!(
        "set -- $(busybox grep -w host.docker.internal /etc/hosts); \
         echo ping | busybox timeout 10 nc $1 {port}"
    );
    let mut args = vec![
        "run",
        "--rm",
        "--add-host",
        "host.docker.internal:host-gateway",
    ];
    if let Some(n) = network {
        args.extend(["--network", n]);
    }
    args.extend([host.image.as_str(), "sh", "-c", &script]);
    let out = host.sandbox().docker(&args);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The remote host's TCP listeners on `port` (local addresses).
fn remote_listeners(host: &TestHost, port: u16) -> Vec<String> {
    let out = run_ok(
        host.sandbox()
            .remote_command("ss")
            .args(["-Hltn", &format!("sport = :{port}")]),
    );
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

#[test]
fn containers_on_both_networks_reach_the_runner_through_a_master_sigkill() {
    let host = sandbox_host!("expose_reach");
    host.add_sshd_config("GatewayPorts clientspecified");
    let served = runner_server(&host, 20600, "pong");
    let fwdd = Fwdd::spawn_with_config(&host, &config(&host, "expose = [20600, \"20601:20699\"]"));
    fwdd.wait_connected();
    let e = wait_exposed(&fwdd, 20600, "active");
    assert_eq!(e.runner, "127.0.0.1:20600");
    assert_eq!(e.binds, ["172.17.0.1:20600"], "{e:?}");
    assert_eq!(e.source, "config");
    let check = fwdctl(&fwdd, &["wait", "exposed:20600", "--timeout", "10s"]);
    assert!(check.status.success(), "{check:?}");

    // Never wider than asked: sshd listens on the gateway only.
    assert_eq!(remote_listeners(&host, 20600), ["172.17.0.1:20600"]);
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the verification never reaches the runner's service"
    );

    assert_eq!(from_container(&host, None, 20600), "pong ping");
    let net = format!("fwdx-{}", host.label);
    host.sandbox().docker_ok(&["network", "create", &net]);
    let on_user_network = from_container(&host, Some(&net), 20600);
    host.sandbox().docker_ok(&["network", "rm", &net]);
    assert_eq!(on_user_network, "pong ping", "from a user-defined network");
    let e = exposed(&fwdd.status().expect("status"), 20600).expect("exposure");
    assert_eq!(e.connections_total, 2, "{e:?}");

    // Nothing listens at the runner end of 20601: the container's connection
    // is closed at once, counted, and said once.
    let t0 = Instant::now();
    assert_eq!(from_container(&host, None, 20601), "");
    assert_eq!(from_container(&host, None, 20601), "");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "closed promptly: {:?}",
        t0.elapsed()
    );
    let e = exposed(&fwdd.status().expect("status"), 20601).expect("exposure");
    assert_eq!(e.connections_failed, 2, "{e:?}");
    assert_eq!(
        fwdd.log_text().matches("\"expose_target_down\"").count(),
        1,
        "said once"
    );

    // A new master registers everything again.
    let master = fwdd.master_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the master");
    fwdd.wait_for(T, "a new master", |st| {
        st.hosts[0].master.pid.is_some_and(|p| p != master)
    });
    wait_exposed(&fwdd, 20600, "active");
    assert_eq!(from_container(&host, None, 20600), "pong ping");

    // Unexposed: sshd stops listening.
    let out = fwdctl(&fwdd, &["unexpose", "20600"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(T, "sshd to stop listening on 20600", || {
        remote_listeners(&host, 20600).is_empty()
    });
    let out = fwdctl(&fwdd, &["unexpose", "20600"]);
    assert_eq!(out.status.code(), Some(1), "not exposed any more: {out:?}");
}

#[test]
fn runtime_exposures_and_a_reload_keep_the_master() {
    let host = sandbox_host!("expose_runtime");
    host.add_sshd_config("GatewayPorts clientspecified");
    runner_server(&host, 20610, "first");
    runner_server(&host, 20612, "second");
    let fwdd = Fwdd::spawn_with_config(&host, &config(&host, ""));
    fwdd.wait_connected();
    let master = fwdd.master_pid();

    let out = fwdctl(&fwdd, &["expose", "20610"]);
    assert!(out.status.success(), "{out:?}");
    let e = wait_exposed(&fwdd, 20610, "active");
    assert_eq!(e.source, "runtime");
    let bad = fwdctl(&fwdd, &["expose", "20611:example.com:80"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not an IP address"),
        "{bad:?}"
    );

    // SIGHUP adds a configured exposure; the master and the runtime one stay.
    std::fs::write(
        host.dir.join("fwdd.toml"),
        config(&host, "expose = [\"20611:20612\"]"),
    )
    .expect("write config");
    fwdd.signal(nix::sys::signal::Signal::SIGHUP);
    wait_exposed(&fwdd, 20611, "active");
    assert_eq!(from_container(&host, None, 20611), "second ping");
    assert_eq!(from_container(&host, None, 20610), "first ping");
    assert_eq!(
        fwdd.master_pid(),
        master,
        "exposures change without a new master"
    );

    let text = String::from_utf8_lossy(&fwdctl(&fwdd, &["status"]).stdout).into_owned();
    assert!(
        text.contains("EXPOSED") && text.contains("172.17.0.1:20611"),
        "{text}"
    );
}

#[test]
fn sshds_default_gateway_ports_is_caught_and_said_with_the_fix() {
    let host = sandbox_host!("expose_gwports");
    let fwdd = Fwdd::spawn_with_config(&host, &config(&host, "expose = [20620]"));
    fwdd.wait_connected();
    let e = wait_exposed(&fwdd, 20620, "failed");
    assert_eq!(e.reason_kind.as_deref(), Some("gateway_ports"), "{e:?}");
    let reason = e.reason.unwrap_or_default();
    assert!(reason.contains("GatewayPorts clientspecified"), "{reason}");
    assert!(reason.contains("172.17.0.1:20620"), "{reason}");

    // What sshd bound on loopback instead is closed again.
    wait_until(T, "the loopback forward to be closed", || {
        remote_listeners(&host, 20620).is_empty()
    });
    let status = fwdctl(&fwdd, &["status"]);
    assert_eq!(status.status.code(), Some(1), "degraded");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("exposed port 20620 failed (gateway_ports)"),
        "{text}"
    );
    let wait = fwdctl(&fwdd, &["wait", "exposed:20620", "--timeout", "2s"]);
    assert!(!wait.status.success(), "{wait:?}");
    assert_eq!(
        fwdd.log_text().matches("\"expose_failed\"").count(),
        1,
        "said once"
    );
}

/// A line echo server on the runner's loopback; counts the lines it echoed.
fn runner_echo(host: &TestHost, port: u16) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::io::BufRead;
    let listener = host
        .in_runner_ns(|| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
        .expect("bind the runner's echo server");
    let lines = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = lines.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let count = count.clone();
            std::thread::spawn(move || {
                let Ok(mut out) = conn.try_clone() else {
                    return;
                };
                for line in std::io::BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    if out.write_all(format!("{line}\n").as_bytes()).is_err() {
                        return;
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    lines
}

#[test]
fn an_upgrade_keeps_exposures_and_the_connections_through_them() {
    let host = sandbox_host!("expose_upgrade");
    host.add_sshd_config("GatewayPorts clientspecified");
    let echoed = runner_echo(&host, 20630);
    let dir = host.dir.join("bin");
    std::fs::create_dir_all(&dir).expect("bin dir");
    let binary = dir.join("fwdd");
    std::fs::copy(common::bin("fwdd"), &binary).expect("install fwdd");
    let fwdd = Fwdd::spawn_binary(&host, &binary);
    fwdd.wait_connected();
    let out = fwdctl(&fwdd, &["expose", "20630"]);
    assert!(out.status.success(), "{out:?}");
    wait_exposed(&fwdd, 20630, "active");

    // A container's connection that is open across the upgrade.
    let script = "set -- $(busybox grep -w host.docker.internal /etc/hosts); \
         (echo one; sleep 4; echo two) | busybox timeout 20 nc $1 20630";
    let held = host.run(&[
        "--add-host",
        "host.docker.internal:host-gateway",
        &host.image,
        "sh",
        "-c",
        script,
    ]);
    wait_until(T, "the held connection's first line", || {
        echoed.load(std::sync::atomic::Ordering::SeqCst) >= 1
    });
    let pid = fwdd.child.id();
    let out = fwdctl(&fwdd, &["upgrade"]);
    assert!(
        out.status.success(),
        "fwdctl upgrade: {out:?}\nlog:\n{}",
        fwdd.log_tail(40)
    );
    assert_eq!(fwdd.child.id(), pid);
    host.sandbox().docker_ok(&["wait", &held]);
    let logs = host.sandbox().docker_ok(&["logs", &held]);
    assert_eq!(logs, "one\ntwo", "the held connection carried on");

    // The new image verified it again, kept its source and counters, and serves.
    let e = wait_exposed(&fwdd, 20630, "active");
    assert_eq!(e.source, "runtime", "fwdctl expose outlives an upgrade");
    assert!(e.connections_total >= 1, "{e:?}");
    for _ in 0..3 {
        assert_eq!(from_container(&host, None, 20630), "ping");
    }
    let upgraded = fwdd.log_text();
    assert!(upgraded.contains("\"upgraded\""), "{upgraded}");
}

#[test]
fn loopback_mode_serves_host_network_containers_without_gateway_ports() {
    let host = sandbox_host!("expose_loopback");
    runner_server(&host, 20640, "loop");
    let fwdd = Fwdd::spawn_with_config(
        &host,
        &config(&host, "expose = [20640]\nexpose_on = [\"loopback\"]"),
    );
    fwdd.wait_connected();
    let e = wait_exposed(&fwdd, 20640, "active");
    assert_eq!(e.binds, ["127.0.0.1:20640"], "{e:?}");
    assert_eq!(remote_listeners(&host, 20640), ["127.0.0.1:20640"]);
    let out = host.sandbox().docker_ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        &host.image,
        "sh",
        "-c",
        "echo ping | busybox timeout 10 nc 127.0.0.1 20640",
    ]);
    assert_eq!(out, "loop ping");
}

/// The first minutes of `fwdctl expose` on a host whose sshd keeps its
/// default `GatewayPorts no`: the command waits for the verdict and fails
/// with the setting to change and the command to run after the reload
/// (sshd applies its configuration to new connections only, so the master
/// fwdd has keeps the old setting); that command, run as printed, serves
/// the exposure, and `fwdctl expose` then says how a container reaches it.
#[test]
fn expose_waits_for_the_verdict_and_its_failure_says_the_fix_and_what_to_run() {
    let host = sandbox_host!("expose_verdict");
    runner_server(&host, 20650, "verdict");
    let fwdd = Fwdd::spawn_with_config(&host, &config(&host, ""));
    fwdd.wait_connected();
    let name = fwdd.status().expect("status").hosts[0].name.clone();
    let master = fwdd.master_pid();

    let t0 = Instant::now();
    let out = fwdctl(&fwdd, &["expose", "20650"]);
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(
        err.starts_with(&format!(
            "fwdctl: {name}: cannot expose port 20650 (gateway_ports): "
        )),
        "{err}"
    );
    assert!(err.contains("`GatewayPorts clientspecified`"), "{err}");
    assert!(err.contains("reload sshd"), "{err}");
    let run = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("after reloading sshd, run: fwdctl "))
        .unwrap_or_else(|| panic!("no command to run in: {err}"));
    assert!(run.ends_with(&format!(" reconnect {name}")), "{run}");
    let e = exposed(&fwdd.status().expect("status"), 20650).expect("kept");
    assert_eq!(e.state, "failed");
    assert_eq!(
        e.next_retry_ms,
        None,
        "this master would only fail again: {e:?}\n{}",
        fwdd.log_tail(20)
    );
    assert_eq!(
        fwdd.master_pid(),
        master,
        "the master is not replaced unasked"
    );

    // The fix, as the message says: the setting, a reload of this test's
    // sshd (SIGHUP: connections already made keep what they read), then
    // the command printed, run as printed.
    let mut cfg = std::fs::read_to_string(&host.sshd_config).expect("read sshd_config");
    cfg.push_str("GatewayPorts clientspecified\n");
    std::fs::write(&host.sshd_config, cfg).expect("write sshd_config");
    let sshd = host.sshd_pid().expect("sshd runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sshd),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("reload sshd");
    let reconnect = std::process::Command::new(common::bin("fwdctl"))
        .args(run.split_whitespace())
        .env_remove("FWD_SOCKET")
        .output()
        .expect("run the printed command");
    assert!(reconnect.status.success(), "{reconnect:?}");
    let e = wait_exposed(&fwdd, 20650, "active");
    assert_eq!(e.binds, ["172.17.0.1:20650"], "{e:?}");
    assert_eq!(from_container(&host, None, 20650), "verdict ping");

    // Exposed and verified: how a container reaches it.
    let out = fwdctl(&fwdd, &["expose", "20650"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&format!(
            "{name}: exposed: containers reach 127.0.0.1:20650 here at \
             host.docker.internal:20650 (sshd listens on 172.17.0.1:20650)\n"
        )),
        "{said}"
    );
    assert!(
        said.contains("--add-host host.docker.internal:host-gateway"),
        "{said}"
    );
}
