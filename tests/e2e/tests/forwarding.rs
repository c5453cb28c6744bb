//! End to end: a real fwdd in a runner namespace, a real sshd and dockerd
//! in the "remote" namespace, real containers and real TCP through the
//! forwards. Each test uses its own host ports (the remote engine is shared).

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{httpd_serving, pid_alive, Fwdd};
use fwd_e2e::wait_until;
use fwd_proto::{ForwardState, MasterState};

#[test]
fn start_serves_http_on_both_loopbacks_and_stop_refuses() {
    let host = sandbox_host!("start_stop");
    let fwdd = Fwdd::start(&host);
    let id = host.httpd(&["20100:8080"]);
    assert_eq!(fwdd.wait_http(20100), "hello\n");
    // [::1] too: a client resolving localhost may pick either.
    let mut v6 = host.connect_v6(20100).expect("connect [::1]");
    v6.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let mut answer = String::new();
    v6.read_to_string(&mut answer).expect("read");
    assert!(answer.ends_with("hello\n"), "{answer}");

    let f = fwdd.wait_forward_state(20100, ForwardState::Active);
    assert_eq!(f.remote, "127.0.0.1:20100");
    assert!(id.starts_with(&f.container_id[..12]));
    assert_eq!(f.container_port, "8080/tcp");
    assert!(f.connections_total >= 2, "{f:?}");

    host.sandbox().docker_ok(&["stop", "-t", "0", &id]);
    fwdd.wait_refused(20100);
    assert!(fwdd.forward(20100).is_none());
    // All of it through the one connection fwdd opened.
    assert_eq!(
        host.sshd_connection_count(),
        1,
        "extra SSH connections were made"
    );
}

#[test]
fn several_ports_ranges_and_loopback_only_publishes() {
    let host = sandbox_host!("several_ports");
    let fwdd = Fwdd::start(&host);
    host.run(&[
        "-p",
        "20110:8080",
        "-p",
        "20111-20112:9090-9091",
        &host.image,
        "/bin/sh",
        "-c",
        "/bin/httpd -p 9090 -h /www; /bin/httpd -p 9091 -h /www; exec /bin/httpd -f -p 8080 -h /www",
    ]);
    host.httpd(&["127.0.0.1:20113:8080"]);
    for port in [20110, 20111, 20112, 20113] {
        assert_eq!(fwdd.wait_http(port), "hello\n", "port {port}");
    }
    let f = fwdd.wait_forward_state(20113, ForwardState::Active);
    assert_eq!(f.remote, "127.0.0.1:20113");
}

#[test]
fn ephemeral_and_publish_all_ports_are_forwarded() {
    let host = sandbox_host!("ephemeral");
    let fwdd = Fwdd::start(&host);
    let a = host.httpd(&["0:8080"]);
    let b = host.httpd_with(&["--expose", "8080", "-P"]);
    for id in [a, b] {
        let mapping = host.sandbox().docker_ok(&["port", &id, "8080/tcp"]);
        let port: u16 = mapping
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {mapping:?}"));
        assert_eq!(
            fwdd.wait_http(port),
            "hello\n",
            "container {id} port {port}"
        );
    }
}

#[test]
fn udp_ports_are_listed_as_unsupported_not_forwarded() {
    let host = sandbox_host!("udp");
    let fwdd = Fwdd::start(&host);
    host.httpd_with(&["-p", "20120:5353/udp", "-p", "20121:8080"]);
    assert_eq!(fwdd.wait_http(20121), "hello\n");
    let udp = fwdd.wait_forward_state(20120, ForwardState::Unsupported);
    assert_eq!(udp.container_port, "5353/udp");
    assert!(
        udp.reason.as_deref().unwrap_or("").contains("TCP"),
        "{udp:?}"
    );
    let refused = host.connect(20120);
    assert!(refused.is_err(), "a UDP port must not be forwarded as TCP");
}

#[test]
fn a_second_container_takes_over_a_port_and_the_first_ones_removal_keeps_it() {
    let host = sandbox_host!("takeover");
    let fwdd = Fwdd::start(&host);
    let sb = host.sandbox();
    let first = host.run(&[
        "-p",
        "20130:8080",
        &host.image,
        "/bin/sh",
        "-c",
        &httpd_serving("first"),
    ]);
    assert_eq!(fwdd.wait_http(20130), "first\n");
    sb.docker_ok(&["stop", "-t", "0", &first]);
    let second = host.run(&[
        "-p",
        "20130:8080",
        &host.image,
        "/bin/sh",
        "-c",
        &httpd_serving("second"),
    ]);
    wait_until(Duration::from_secs(15), "second container serves", || {
        host.http_get(20130).is_ok_and(|b| b == "second\n")
    });
    // Removing the first (stopped) container must not take the port away.
    sb.docker_ok(&["rm", &first]);
    let f = fwdd.wait_forward_state(20130, ForwardState::Active);
    assert!(second.starts_with(&f.container_id[..12]), "{f:?}");
    assert_eq!(host.http_get(20130).expect("still served"), "second\n");
}

#[test]
fn master_killed_serves_again_and_a_connection_during_the_outage_is_not_refused() {
    let host = sandbox_host!("master_kill");
    let fwdd = Fwdd::start(&host);
    host.httpd(&["20140:8080"]);
    assert_eq!(fwdd.wait_http(20140), "hello\n");
    let old = fwdd.master_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill master");
    // At once, while the master is gone: the connection must wait and be served.
    let t0 = std::time::Instant::now();
    let body = host.http_get(20140).expect("connection during the outage");
    eprintln!(
        "RECOVERY master SIGKILL: a connection made at once was served after {:?}",
        t0.elapsed()
    );
    assert_eq!(body, "hello\n");
    fwdd.wait_for(Duration::from_secs(15), "new master", |st| {
        let h = &st.hosts[0];
        h.master.state == MasterState::Connected
            && h.master.pid.is_some_and(|p| p != old)
            && h.master.reconnects >= 1
    });
    assert!(!pid_alive(old));
    assert_eq!(fwdd.wait_http(20140), "hello\n");
}

#[test]
fn sshd_restart_recovers_and_a_container_started_meanwhile_is_forwarded() {
    let host = sandbox_host!("sshd_restart");
    let fwdd = Fwdd::start(&host);
    host.httpd(&["20150:8080"]);
    assert_eq!(fwdd.wait_http(20150), "hello\n");
    host.stop_sshd();
    fwdd.wait_for(Duration::from_secs(30), "link down", |st| {
        st.hosts[0].master.state != MasterState::Connected
    });
    // The port stays bound while the link is down, waiting for it.
    assert_eq!(
        fwdd.forward(20150).map(|f| f.state),
        Some(ForwardState::Pending)
    );
    host.httpd(&["20151:8080"]);
    // Several refused attempts, each failing the same way...
    fwdd.wait_for(Duration::from_secs(30), "3 failed attempts", |st| {
        st.hosts[0].master.consecutive_failures >= 3
    });
    // ...are logged once, not once per attempt.
    let log = fwdd.log_text();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count("Connection refused\""),
        1,
        "the refusal was logged per attempt:\n{log}"
    );
    // Each kind of failure once per episode: stopping sshd may show as a
    // dead master, a reset (a connect that sat in the frozen sshd's backlog
    // when it was killed) and a refusal, but never one kind twice.
    let mut kinds: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "link_failed")
        .map(|v| v["kind"].as_str().unwrap_or("").to_string())
        .collect();
    let logged = kinds.len();
    kinds.sort();
    kinds.dedup();
    assert_eq!(logged, kinds.len(), "a failure kind logged twice:\n{log}");
    let err = fwdd.status().expect("status").hosts[0]
        .master
        .last_error
        .clone();
    let err = err.expect("last error shown");
    assert_eq!(
        (err.class.as_str(), err.kind.as_str()),
        ("transient", "connection_refused")
    );
    host.start_sshd();
    let t0 = std::time::Instant::now();
    fwdd.wait_connected();
    assert_eq!(fwdd.wait_http(20151), "hello\n");
    eprintln!(
        "RECOVERY sshd restart: serving again {:?} after sshd started",
        t0.elapsed()
    );
    assert_eq!(fwdd.wait_http(20150), "hello\n");
    let st = fwdd.status().expect("status");
    assert!(st.hosts[0].master.reconnects >= 1);
}

#[test]
fn a_port_taken_locally_is_a_conflict_until_it_is_released() {
    let host = sandbox_host!("conflict");
    let fwdd = Fwdd::start(&host);
    let squatter = host.bind_in_runner(20160).expect("bind squatter");
    host.httpd(&["20160:8080", "20161:8080"]);
    // The other port of the same container is not affected.
    assert_eq!(fwdd.wait_http(20161), "hello\n");
    let f = fwdd.wait_forward_state(20160, ForwardState::Conflict);
    assert!(
        f.reason.as_deref().unwrap_or("").contains("in use"),
        "{f:?}"
    );
    drop(squatter);
    fwdd.wait_forward_state(20160, ForwardState::Active);
    assert_eq!(fwdd.wait_http(20160), "hello\n");
}

#[test]
fn sigterm_releases_everything_and_leaves_no_remote_process() {
    let host = sandbox_host!("sigterm");
    let mut fwdd = Fwdd::start(&host);
    host.httpd(&["20170:8080"]);
    assert_eq!(fwdd.wait_http(20170), "hello\n");
    let master = fwdd.master_pid();
    // fwd's docker channels are stream-local channels to the engine's
    // socket: no process of ours runs on the host for them.
    let remote = host.remote_session_processes();
    assert!(
        !remote.iter().any(|(_, cmd)| cmd.contains("docker")),
        "a docker process runs on the host for fwd: {remote:?}"
    );
    let (status, took) = fwdd.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    assert!(host.connect(20170).is_err(), "port still open after exit");
    assert!(
        !fwdd.control_socket().exists(),
        "control socket left behind"
    );
    assert!(
        !fwdd.runtime_dir.join("h0.ctl").exists(),
        "ControlPath left behind"
    );
    wait_until(Duration::from_secs(5), "ssh master gone", || {
        !pid_alive(master)
    });
    wait_until(Duration::from_secs(10), "no remote processes left", || {
        host.remote_session_processes().is_empty()
    });
}

#[test]
fn two_hosts_claiming_one_port_is_a_reported_conflict_and_each_host_has_its_own_master() {
    let host = sandbox_host!("two_hosts");
    // Two configured hosts that reach the same engine: every published port
    // is claimed by both.
    let cfg = host.ssh_config.display();
    let fwdd = Fwdd::spawn_with_config(
        &host,
        &format!(
            "[[host]]\nname = \"a\"\nurl = \"ssh://{alias}\"\nssh_config = \"{cfg}\"\n\n\
             [[host]]\nname = \"b\"\nurl = \"ssh://{alias}\"\nssh_config = \"{cfg}\"\n",
            alias = host.alias
        ),
    );
    fwdd.wait_connected();
    host.httpd(&["20180:8080"]);
    assert_eq!(fwdd.wait_http(20180), "hello\n");
    fwdd.wait_for(
        Duration::from_secs(15),
        "one active and one conflicting claim",
        |st| {
            let on_port: Vec<_> = st
                .forwards
                .iter()
                .filter(|f| f.local_port == 20180)
                .collect();
            on_port.len() == 2
                && on_port.iter().any(|f| f.state == ForwardState::Active)
                && on_port.iter().any(|f| {
                    f.state == ForwardState::Conflict
                        && f.reason
                            .as_deref()
                            .is_some_and(|r| r.contains("already forwarded"))
                })
        },
    );
    let st = fwdd.status().expect("status");
    let pids: Vec<_> = st.hosts.iter().map(|h| h.master.pid).collect();
    assert_eq!(st.hosts.len(), 2);
    assert!(pids[0].is_some() && pids[0] != pids[1], "{pids:?}");
    assert_eq!(host.sshd_connection_count(), 2, "one connection per host");
}

/// A threaded HTTP/1.0 "hello" server with a listen backlog of 1024.
const BURST_SERVER: &str = "import socketserver
class H(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(4096)
        self.request.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 6\\r\\n\\r\\nhello\\n')
class S(socketserver.ThreadingTCPServer):
    request_queue_size = 1024
    allow_reuse_address = True
    daemon_threads = True
S(('0.0.0.0', 8080), H).serve_forever()
";

#[test]
fn a_burst_of_500_connections_as_the_master_dies_is_served_whole() {
    let host = sandbox_host!("burst_kill");
    let fwdd = Fwdd::start(&host);
    // busybox httpd listens with a backlog of 9: a burst of 500 would be
    // dropped at SYN inside the container and retried by docker-proxy for
    // seconds, whatever fwd does. The host's own Python, with a backlog
    // that fits, stands in for a real server.
    host.run_with_host_binaries(&[
        "-p",
        "20180:8080",
        &host.image,
        "/usr/bin/python3",
        "-c",
        BURST_SERVER,
    ]);
    assert_eq!(fwdd.wait_http(20180), "hello\n");
    let old = fwdd.master_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill master");
    // 500 clients at once, while no master is up: beyond std's listen
    // backlog of 128, and beyond ssh's control-socket backlog of 64 once
    // the new master is there. Every one must be served.
    let t0 = std::time::Instant::now();
    let results: Vec<Result<String, String>> = host.in_runner_ns(|| {
        std::thread::scope(|s| {
            let clients: Vec<_> = (0..500)
                .map(|_| {
                    s.spawn(|| {
                        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 20180));
                        let mut c =
                            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(15))
                                .map_err(|e| format!("connect: {e}"))?;
                        c.set_read_timeout(Some(Duration::from_secs(20)))
                            .map_err(|e| e.to_string())?;
                        use std::io::{Read, Write};
                        c.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                            .map_err(|e| format!("write: {e}"))?;
                        let mut out = String::new();
                        c.read_to_string(&mut out)
                            .map_err(|e| format!("read: {e}"))?;
                        Ok(out)
                    })
                })
                .collect();
            clients
                .into_iter()
                .map(|c| c.join().unwrap_or_else(|_| Err("client panicked".into())))
                .collect()
        })
    });
    let failed: Vec<&String> = results
        .iter()
        .filter_map(|r| match r {
            Ok(body) if body.ends_with("\r\n\r\nhello\n") => None,
            Ok(body) => Some(body),
            Err(e) => Some(e),
        })
        .collect();
    eprintln!(
        "RECOVERY master SIGKILL + 500 clients: all answered after {:?}",
        t0.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} of 500 not served: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // They queued for the master instead of overflowing its control socket
    // into one `ssh -W` process each.
    let fallbacks = fwdd.log_text().matches("trying ssh -W").count();
    assert_eq!(fallbacks, 0, "hand-offs fell back to ssh -W");
}
