//! Zero-downtime binary upgrade: `fwdctl upgrade` (and SIGUSR2) replace the
//! running image with the binary now on disk, in place, and nothing a client
//! holds or starts meanwhile notices. Host ports 20500-20599 are this file's.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bin, echo, fwdctl, Fwdd, ECHO_SERVER};
use fwd_e2e::{wait_until, TestHost};
use fwd_proto::{ForwardState, MasterState};

fn echo_server(host: &TestHost, publish: &str) -> String {
    host.run_with_host_binaries(&[
        "-p",
        publish,
        &host.image,
        "/usr/bin/python3",
        "-u",
        "-c",
        ECHO_SERVER,
    ])
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

/// A connection through the forward of `port`, once the echo server answers,
/// to hold open across what the test does.
fn held_echo(host: &TestHost, port: u16) -> TcpStream {
    let held = host.in_runner_ns(|| {
        wait_until(Duration::from_secs(20), "echo through the forward", || {
            host.connect(port)
                .and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(5)))?;
                    echo(&mut c, "hello")
                })
                .is_ok()
        });
        host.connect(port).expect("connect")
    });
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    held
}

/// New connections every 20 ms, each echoing one line, until stopped;
/// returns how many were served and every failure.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

/// Probes served so far, shared with the prober's thread.
type Served = Arc<std::sync::atomic::AtomicUsize>;

impl Prober {
    /// Starts probing and returns once the first probe was served.
    fn start(host: &TestHost, port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = fwd_e2e::netns_path(&host.runner_ns);
        let flag = stop.clone();
        let served_so_far = Served::default();
        let counter = served_so_far.clone();
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
                    Ok(line) if line == format!("probe {n}") => {
                        served += 1;
                        counter.store(served, Ordering::SeqCst);
                    }
                    Ok(line) => failures.push(format!("probe {n}: echoed {line:?}")),
                    Err(e) => failures.push(format!("probe {n}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (served, failures)
        });
        let prober = Prober {
            stop,
            thread: Some(thread),
        };
        wait_until(Duration::from_secs(20), "the prober's first answer", || {
            served_so_far.load(Ordering::SeqCst) > 0
                || prober.thread.as_ref().is_some_and(|t| t.is_finished())
        });
        prober
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
    let _ = echo_server(&host, "20500:8080");
    fwdd.wait_forward_state(20500, ForwardState::Active);
    let pid = fwdd.child.id();
    let master = fwdd.master_pid();
    // Its direct route, once the engine said it runs rootful.
    fwdd.wait_for(Duration::from_secs(10), "the direct route", |st| {
        st.forwards.iter().any(|f| {
            f.local_port == 20500
                && f.route
                    .as_ref()
                    .is_some_and(|r| r.kind == fwd_proto::RouteKind::Direct)
        })
    });
    // Other tests' containers share the Docker host: this test's port is the one to follow.
    let forward_before = fwdd.forward(20500).expect("forward");

    // A long-lived tunnel, and a long-lived engine stream (logs -f).
    let mut held = held_echo(&host, 20500);
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
    assert_eq!(after.route, forward_before.route, "the same route");
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
    let _ = echo_server(&host, "20520:8080");
    fwdd.wait_forward_state(20520, ForwardState::Active);
    let pid = fwdd.child.id();
    let master = fwdd.master_pid();
    let mut held = held_echo(&host, 20520);
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

/// systemd's side of the fd store protocol (`sd_pid_notify_with_fds`):
/// `FDSTORE=1` + `FDNAME=` with a descriptor stores it, `FDSTOREREMOVE=1`
/// drops it. No service manager runs in the sandbox, so the test keeps the
/// store — and hands it back as systemd does, in `LISTEN_FDS`.
struct FakeFdStore {
    path: PathBuf,
    fds: Arc<Mutex<std::collections::BTreeMap<String, std::os::fd::OwnedFd>>>,
}

impl FakeFdStore {
    fn start(dir: &Path) -> FakeFdStore {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{AsRawFd, FromRawFd};
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("notify socket");
        let fds: Arc<Mutex<std::collections::BTreeMap<String, std::os::fd::OwnedFd>>> =
            Arc::default();
        let store = fds.clone();
        std::thread::spawn(move || loop {
            let mut buf = vec![0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 16]);
            // Close-on-exec, as systemd holds them: this process spawns
            // commands and fwdd images for other tests in parallel, and any
            // of them inheriting a listener would keep its port bound.
            let Ok(msg) = recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) else {
                return;
            };
            let mut passed = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        // SAFETY: received just now; this test owns them.
                        passed.extend(
                            fds.into_iter()
                                .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
            }
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let has = |line: &str| text.lines().any(|l| l == line);
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .map(str::to_string);
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            match (has("FDSTORE=1"), has("FDSTOREREMOVE=1"), name) {
                (true, _, Some(name)) => {
                    if let Some(fd) = passed.pop() {
                        store.insert(name, fd);
                    }
                }
                (_, true, Some(name)) => {
                    store.remove(&name);
                }
                _ => {}
            }
        });
        FakeFdStore { path, fds }
    }

    fn names(&self) -> Vec<String> {
        self.fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

#[test]
fn after_a_crash_the_restarted_fwdd_has_its_ports_still_bound_and_serves_who_waited() {
    let host = sandbox_host!("fdstore_crash");
    let store = FakeFdStore::start(&host.dir);
    let url = format!("ssh://{}", host.alias);
    let cfg = host.ssh_config.to_string_lossy().into_owned();
    let args = ["--host", url.as_str(), "--ssh-config", cfg.as_str()];
    let notify = store.path.to_string_lossy().into_owned();
    let env = [("NOTIFY_SOCKET", notify.as_str()), ("FWD_FDSTORE", "1")];
    let mut fwdd = Fwdd::spawn_env(&host, &args, &env);
    fwdd.wait_connected();
    let echo_id = echo_server(&host, "20540:8080");
    fwdd.wait_forward_state(20540, ForwardState::Active);
    wait_until(
        Duration::from_secs(10),
        "the listeners are in the store",
        || {
            let names = store.names();
            names.contains(&"tcp-20540-127.0.0.1".to_string())
                && names.contains(&"unix-control.sock".to_string())
                && names.contains(&"unix-docker.sock".to_string())
        },
    );

    // Another test's process, started while the store holds the listeners
    // (tests of this file run in parallel threads of one process), must not
    // inherit them: it would keep a released port bound.
    let mut bystander = Command::new("sleep")
        .arg("120")
        .spawn()
        .expect("spawn a bystander");

    // A crash: fwdd and (by PDEATHSIG) its master are gone.
    fwdd.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = fwdd.child.wait();
    // The port is still bound: this client is queued, not refused.
    let mut waited = host
        .in_runner_ns(|| host.connect(20540))
        .expect("not refused while down");
    waited
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    waited.write_all(b"queued\n").expect("write while down");

    // Restart=on-failure, as systemd does it: the stored descriptors at 3…,
    // LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID of the new process.
    let (names, fds): (Vec<String>, Vec<std::os::fd::RawFd>) = {
        use std::os::fd::AsRawFd;
        let s = store.fds.lock().unwrap_or_else(|e| e.into_inner());
        s.iter().map(|(n, fd)| (n.clone(), fd.as_raw_fd())).unzip()
    };
    let log = host.dir.join("fwdd-restarted.log");
    let mut cmd = host.runner_command("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(bin("fwdd"))
        .args(args)
        .arg("--runtime-dir")
        .arg(&fwdd.runtime_dir)
        .args(["--log-format", "json"])
        .env("FWD_LOG", "debug")
        .env("NOTIFY_SOCKET", &notify)
        .env("FWD_FDSTORE", "1")
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    // SAFETY: dup2/fcntl only (async-signal-safe), no allocation.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            // Out of the way first, then into place: sources may sit in 3….
            let mut high = [0; 64];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = nix::libc::fcntl(*fd, nix::libc::F_DUPFD_CLOEXEC, 200);
            }
            for (i, fd) in high.iter().take(fds.len()).enumerate() {
                if nix::libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("restart fwdd");
    let restarted = Fwdd {
        host: &host,
        child,
        runtime_dir: fwdd.runtime_dir.clone(),
        log,
    };
    // The client that connected while fwdd was down is served.
    let mut line = String::new();
    BufReader::new(&mut waited)
        .read_line(&mut line)
        .unwrap_or_else(|e| {
            panic!(
                "the queued client was not served: {e}\nlog:\n{}",
                restarted.log_tail(40)
            )
        });
    assert_eq!(line, "queued\n");
    restarted.wait_forward_state(20540, ForwardState::Active);
    assert!(restarted.log_text().contains("\"fdstore_restored\""));
    let st = restarted
        .status()
        .expect("status from the control socket systemd kept");
    assert_eq!(st.daemon.pid, restarted.child.id());

    // A port fwdd gives up leaves the store too (systemd would hold it bound).
    host.sandbox().docker_ok(&["rm", "-f", &echo_id]);
    wait_until(
        Duration::from_secs(15),
        "the released port leaves the store",
        || !store.names().iter().any(|n| n.starts_with("tcp-20540-")),
    );
    restarted.wait_refused(20540);
    let _ = bystander.kill();
    let _ = bystander.wait();
}
