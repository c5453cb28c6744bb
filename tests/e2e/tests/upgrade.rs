//! Zero-downtime binary upgrade: `fwdctl upgrade` (and SIGUSR2) replace the
//! running image with the binary now on disk, in place, and nothing a client
//! holds or starts meanwhile notices. Host ports 20500-20599 are this file's.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bin, fwdctl, Fwdd};
use fwd_e2e::{wait_until, Sandbox, TestHost};
use fwd_proto::{ForwardState, MasterState};

macro_rules! sandbox_host {
    ($name:expr) => {
        match Sandbox::get() {
            Some(sb) => TestHost::new(sb, $name),
            None => return,
        }
    };
}

/// A line echo server (the host's Python, bind-mounted: busybox has none
/// that serves many clients at once).
const ECHO_SERVER: &str = "
import socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
            self.wfile.flush()
class S(socketserver.ThreadingTCPServer):
    request_queue_size = 1024
    allow_reuse_address = True
    daemon_threads = True
S(('0.0.0.0', 8080), H).serve_forever()
";

fn echo_server(host: &TestHost, publish: &str) {
    host.run(&[
        "-v",
        "/usr:/usr:ro",
        "-v",
        "/lib:/lib:ro",
        "-v",
        "/lib64:/lib64:ro",
        "-p",
        publish,
        &host.image,
        "/usr/bin/python3",
        "-u",
        "-c",
        ECHO_SERVER,
    ]);
}

/// Installs the fwdd binary at `path` the way a package manager does: a
/// new file renamed over the old one (the running image keeps the old
/// inode; the path names the new one).
fn install(from: &Path, path: &Path) {
    let tmp = path.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy binary");
    std::fs::rename(&tmp, path).expect("rename binary into place");
}

fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Sends a line and reads its echo.
fn echo(conn: &mut TcpStream, line: &str) -> std::io::Result<String> {
    conn.write_all(format!("{line}\n").as_bytes())?;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\n") {
        if conn.read(&mut byte)? == 0 {
            return Err(std::io::Error::other("closed"));
        }
        got.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&got).trim_end().to_string())
}

/// New connections every 20 ms, each echoing one line, until stopped;
/// returns how many were served and every failure.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Prober {
    fn start(host: &TestHost, port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = fwd_e2e::netns_path(&host.runner_ns);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(ns).expect("open runner netns");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let (mut served, mut failures) = (0, Vec::new());
            let mut n = 0u64;
            while !flag.load(Ordering::SeqCst) {
                n += 1;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let result =
                    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).and_then(|mut c| {
                        c.set_read_timeout(Some(Duration::from_secs(10)))?;
                        echo(&mut c, &format!("probe {n}"))
                    });
                match result {
                    Ok(line) if line == format!("probe {n}") => served += 1,
                    Ok(line) => failures.push(format!("probe {n}: echoed {line:?}")),
                    Err(e) => failures.push(format!("probe {n}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (served, failures)
        });
        Prober {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("prober thread")
            .join()
            .expect("prober thread")
    }
}

fn engine_docker(fwdd: &Fwdd) -> Command {
    let mut cmd = Command::new("docker");
    cmd.env(
        "DOCKER_HOST",
        format!("unix://{}", fwdd.runtime_dir.join("docker.sock").display()),
    )
    .env("DOCKER_CONFIG", fwdd.runtime_dir.join("docker-config"));
    cmd
}

fn installed_binary(host: &TestHost) -> PathBuf {
    let dir = host.dir.join("bin");
    std::fs::create_dir_all(&dir).expect("bin dir");
    let path = dir.join("fwdd");
    install(&bin("fwdd"), &path);
    path
}

#[test]
fn an_upgrade_keeps_every_listener_master_tunnel_and_engine_stream() {
    let host = sandbox_host!("upgrade_keeps");
    let binary = installed_binary(&host);
    let fwdd = Fwdd::spawn_binary(&host, &binary);
    fwdd.wait_connected();
    echo_server(&host, "20500:8080");
    fwdd.wait_forward_state(20500, ForwardState::Active);
    let pid = fwdd.child.id();
    let master = fwdd.master_pid();
    // Other tests' containers share the Docker host: this test's port is the one to follow.
    let forward_before = fwdd.forward(20500).expect("forward");

    // A long-lived tunnel, and a long-lived engine stream (logs -f).
    let mut held = host.in_runner_ns(|| {
        wait_until(Duration::from_secs(20), "echo through the forward", || {
            host.connect(20500)
                .and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(5)))?;
                    echo(&mut c, "hello")
                })
                .is_ok()
        });
        host.connect(20500).expect("connect")
    });
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(echo(&mut held, "before").expect("echo before"), "before");
    let ticker = host.run(&[
        &host.image,
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.1; done",
    ]);
    let mut logs = engine_docker(&fwdd)
        .args(["logs", "-f", &ticker])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker logs -f");
    let lines = Arc::new(Mutex::new(0usize));
    let reader = {
        let lines = lines.clone();
        let out = logs.stdout.take().expect("logs stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                if line.is_err() {
                    break;
                }
                *lines.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            }
        })
    };
    let count = || *lines.lock().unwrap_or_else(|e| e.into_inner());
    wait_until(Duration::from_secs(20), "docker logs -f streams", || {
        count() >= 3
    });

    install(&bin("fwdd"), &binary);
    assert!(
        exe_of(pid).ends_with("(deleted)"),
        "the old image runs a replaced file: {}",
        exe_of(pid)
    );
    let prober = Prober::start(&host, 20500);
    std::thread::sleep(Duration::from_millis(200)); // let the prober get going
    let out = fwdctl(&fwdd, &["upgrade"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "fwdctl upgrade: {stdout} {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        fwdd.log_tail(40)
    );
    assert!(
        stdout.contains(&format!("(pid {pid}) →")) && stdout.contains("1 masters"),
        "{stdout}"
    );

    // The same process runs the new file; the master and its tunnels stayed.
    assert_eq!(exe_of(pid), binary.to_string_lossy(), "runs the new file");
    let st = fwdd.status().expect("status after the upgrade");
    assert_eq!(st.daemon.pid, pid);
    assert_eq!(st.daemon.upgrades, 1);
    assert!(st
        .daemon
        .image_started_at_ms
        .is_some_and(|t| t > st.daemon.started_at_ms));
    assert_eq!(st.hosts[0].master.pid, Some(master), "the master is kept");
    assert_eq!(st.hosts[0].master.state, MasterState::Connected);
    assert_eq!(
        echo(&mut held, "after").expect("the held tunnel survives"),
        "after"
    );
    let at_upgrade = count();
    wait_until(
        Duration::from_secs(10),
        "docker logs -f keeps streaming",
        || count() >= at_upgrade + 5,
    );
    assert!(
        logs.try_wait().expect("logs").is_none(),
        "docker logs -f still runs"
    );

    // Again by signal, from an image that itself took over.
    install(&bin("fwdd"), &binary);
    fwdd.signal(nix::sys::signal::Signal::SIGUSR2);
    fwdd.wait_for(Duration::from_secs(20), "the second upgrade", |st| {
        st.daemon.upgrades == 2
    });
    assert_eq!(exe_of(pid), binary.to_string_lossy());
    assert_eq!(
        echo(&mut held, "twice").expect("the held tunnel survives twice"),
        "twice"
    );
    let (served, failures) = prober.finish();
    assert!(
        failures.is_empty(),
        "connections failed across the upgrades: {failures:?}\nlog:\n{}",
        fwdd.log_tail(60)
    );
    assert!(served >= 10, "only {served} probes ran");

    fwdd.wait_for(Duration::from_secs(20), "healthy", |st| {
        st.health
            .as_ref()
            .is_some_and(|h| h.state == fwd_proto::HealthState::Healthy)
    });
    let after = fwdd.forward(20500).expect("the forward is still listed");
    assert_eq!(after.state, ForwardState::Active);
    assert_eq!(after.container_id, forward_before.container_id);
    assert_eq!(after.local_addrs, forward_before.local_addrs);
    assert_eq!(
        after.since_ms, forward_before.since_ms,
        "the same forward, not a new one"
    );
    assert!(after.connections_total > forward_before.connections_total);
    assert_eq!(fwdd.master_pid(), master);
    let t0 = Instant::now();
    let at_second = count();
    wait_until(
        Duration::from_secs(10),
        "docker logs -f streams after two upgrades",
        || count() > at_second,
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    let _ = logs.kill();
    let _ = logs.wait();
    let _ = reader.join();
}

#[test]
fn a_binary_that_cannot_take_over_is_refused_and_the_old_one_keeps_serving() {
    let host = sandbox_host!("upgrade_refused");
    let binary = installed_binary(&host);
    let fwdd = Fwdd::spawn_binary(&host, &binary);
    fwdd.wait_connected();
    host.httpd(&["20510:8080"]);
    assert!(fwdd.wait_http(20510).contains("hello"));
    let master = fwdd.master_pid();
    let broken = host.dir.join("broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'this build is broken' >&2\nexit 1\n",
    )
    .expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    install(&broken, &binary);

    let out = fwdctl(&fwdd, &["upgrade"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "refused: {stderr}");
    assert!(
        stderr.contains("not upgraded") && stderr.contains("this build is broken"),
        "{stderr}"
    );
    // By signal too: logged, nothing else happens.
    fwdd.signal(nix::sys::signal::Signal::SIGUSR2);
    wait_until(
        Duration::from_secs(10),
        "the refusal is logged twice",
        || fwdd.log_text().matches("\"upgrade_refused\"").count() >= 2,
    );
    let st = fwdd.status().expect("status");
    assert_eq!(st.daemon.upgrades, 0);
    assert_eq!(st.hosts[0].master.pid, Some(master));
    assert!(
        fwdd.wait_http(20510).contains("hello"),
        "the old image serves on"
    );
    let probe = host.connect(20510);
    assert!(
        probe.is_ok(),
        "new connections are accepted after a refusal"
    );
}

#[test]
fn a_binary_that_fails_after_taking_over_rolls_back_and_nothing_is_dropped() {
    let host = sandbox_host!("upgrade_rollback");
    let binary = installed_binary(&host);
    let fwdd = Fwdd::spawn_binary(&host, &binary);
    fwdd.wait_connected();
    echo_server(&host, "20520:8080");
    fwdd.wait_forward_state(20520, ForwardState::Active);
    let pid = fwdd.child.id();
    let master = fwdd.master_pid();
    let mut held = host.in_runner_ns(|| {
        wait_until(Duration::from_secs(20), "echo through the forward", || {
            host.connect(20520)
                .and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(5)))?;
                    echo(&mut c, "hello")
                })
                .is_ok()
        });
        host.connect(20520).expect("connect")
    });
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(echo(&mut held, "before").expect("echo"), "before");

    // A new fwdd that passes its check, is executed in place with every
    // descriptor, and then refuses to start (an argument it rejects; a
    // configuration key it no longer knows would do the same).
    let wrapper = host.dir.join("fails-after-takeover");
    let real = bin("fwdd");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = upgrade-check ] && exec '{real}' \"$@\"; done\nexec '{real}' \"$@\" --no-such-flag\n",
            real = real.display()
        ),
    )
    .expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    install(&wrapper, &binary);
    let prober = Prober::start(&host, 20520);
    std::thread::sleep(Duration::from_millis(200)); // let the prober get going
    let out = fwdctl(&fwdd, &["upgrade"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stderr}\nlog:\n{}",
        fwdd.log_tail(30)
    );
    assert!(
        stderr.contains("rolled back") && stderr.contains("--no-such-flag"),
        "{stderr}"
    );
    // The old image runs again (its file is gone from disk), with everything.
    assert!(exe_of(pid).ends_with("(deleted)"), "{}", exe_of(pid));
    assert_eq!(
        echo(&mut held, "after").expect("the held tunnel survives"),
        "after"
    );
    let st = fwdd.status().expect("status");
    assert_eq!(st.daemon.pid, pid);
    assert_eq!(st.daemon.upgrades, 0, "a rollback is not an upgrade");
    assert_eq!(st.hosts[0].master.pid, Some(master));
    assert!(fwdd.log_text().contains("\"upgrade_rolled_back\""));

    // The rolled-back image can still be upgraded.
    install(&bin("fwdd"), &binary);
    let out = fwdctl(&fwdd, &["upgrade"]);
    assert!(
        out.status.success(),
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        fwdd.log_tail(30)
    );
    assert_eq!(exe_of(pid), binary.to_string_lossy());
    assert_eq!(echo(&mut held, "upgraded").expect("still held"), "upgraded");
    let (served, failures) = prober.finish();
    assert!(failures.is_empty(), "connections failed: {failures:?}");
    assert!(served >= 5, "only {served} probes ran");
}
