//! Drives a real `fwdd` inside a [`TestHost`]'s runner namespace and reads
//! its state through the real control socket.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fwd_e2e::{wait_until, TestHost};
use fwd_proto::{ForwardState, ForwardStatus, MasterState, Status};

/// A [`TestHost`] of the shared sandbox for this test, or `return` (the
/// test does not run) when no sandbox is configured; `Sandbox::get` says
/// why, and fails in CI.
#[allow(unused_macros)]
macro_rules! sandbox_host {
    ($name:expr) => {
        match fwd_e2e::Sandbox::get() {
            Some(sb) => fwd_e2e::TestHost::new(sb, $name),
            None => return,
        }
    };
}

/// Path of a workspace binary (a package's binary of the same name), built
/// once per test process. The e2e crate cannot depend on binaries of other
/// packages, so it asks cargo to build them into the same target directory
/// (a no-op when they are current), with `FWD_E2E_FEATURES` if set (e.g.
/// `portable`: the code macOS runs, see `build/platform.rs`).
pub fn bin(name: &str) -> PathBuf {
    build(name, true)
}

/// fwdd's UDP relay (`fwd-udp-relay`), built beside fwdd, where fwdd looks
/// for it. It has no features: `FWD_E2E_FEATURES` is not passed on.
pub fn udp_relay() -> PathBuf {
    build("fwd-udp-relay", false)
}

fn build(name: &str, with_features: bool) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> dir")
        .to_path_buf();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", name, "--bin", name])
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if let Some(features) = std::env::var_os("FWD_E2E_FEATURES").filter(|_| with_features) {
            cmd.arg("--features").arg(features);
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building {name} failed");
        built.push(name.to_string());
    }
    profile_dir.join(name)
}

pub struct Fwdd<'a> {
    pub host: &'a TestHost,
    pub child: Child,
    pub runtime_dir: PathBuf,
    pub log: PathBuf,
}

impl<'a> Fwdd<'a> {
    /// Starts fwdd for `host` and waits until its link is up.
    pub fn start(host: &'a TestHost) -> Fwdd<'a> {
        let d = Self::spawn(host, &[]);
        d.wait_connected();
        d
    }

    /// Starts fwdd without waiting for anything.
    pub fn spawn(host: &'a TestHost, extra: &[&str]) -> Fwdd<'a> {
        let url = format!("ssh://{}", host.alias);
        let mut args = vec!["--host", &url, "--ssh-config"];
        let cfg = host.ssh_config.to_string_lossy().into_owned();
        args.push(&cfg);
        args.extend_from_slice(extra);
        Self::spawn_args(host, &args)
    }

    /// Starts fwdd with a configuration file of `toml` content.
    pub fn spawn_with_config(host: &'a TestHost, toml: &str) -> Fwdd<'a> {
        let path = host.dir.join("fwdd.toml");
        std::fs::write(&path, toml).expect("write fwdd.toml");
        let path = path.to_string_lossy().into_owned();
        Self::spawn_args(host, &["--config", &path])
    }

    fn spawn_args(host: &'a TestHost, args: &[&str]) -> Fwdd<'a> {
        Self::spawn_env(host, args, &[])
    }

    /// Starts fwdd with `args` and extra environment variables.
    pub fn spawn_env(host: &'a TestHost, args: &[&str], env: &[(&str, &str)]) -> Fwdd<'a> {
        Self::spawn_program(host, &bin("fwdd"), args, env)
    }

    /// Starts `program` (an fwdd binary installed somewhere) for `host`.
    pub fn spawn_binary(host: &'a TestHost, program: &Path) -> Fwdd<'a> {
        let url = format!("ssh://{}", host.alias);
        let cfg = host.ssh_config.to_string_lossy().into_owned();
        Self::spawn_program(host, program, &["--host", &url, "--ssh-config", &cfg], &[])
    }

    fn spawn_program(
        host: &'a TestHost,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Fwdd<'a> {
        Self::spawn_in(host, &host.dir.join("rt"), program, args, env)
    }

    /// Starts `program` with its runtime directory at `runtime_dir` (e.g.
    /// one other users can reach: the sandbox's own directories are private).
    pub fn spawn_in(
        host: &'a TestHost,
        runtime_dir: &Path,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Fwdd<'a> {
        let runtime_dir = runtime_dir.to_path_buf();
        let log = host.dir.join("fwdd.log");
        let log_file = File::create(&log).expect("create fwdd log");
        let mut cmd = host.runner_command(program);
        cmd.args(args)
            .arg("--runtime-dir")
            .arg(&runtime_dir)
            .args(["--log-format", "json"])
            .env("FWD_LOG", "debug,fwdd::control=info,fwdd::host=trace")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // A binary a test has just written (an installed copy) may be held
        // open for writing by another test thread's fork for a moment, and
        // exec fails with ETXTBSY until its child execs (rust-lang/rust#114554).
        let deadline = Instant::now() + Duration::from_secs(5);
        let child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("spawn fwdd: {e}"),
            }
        };
        Fwdd {
            host,
            child,
            runtime_dir,
            log,
        }
    }

    pub fn control_socket(&self) -> PathBuf {
        self.runtime_dir.join(fwd_proto::CONTROL_SOCKET_NAME)
    }

    /// One `status` request over the control socket.
    pub fn status(&self) -> Option<Status> {
        fwd_client::status(&self.control_socket(), Duration::from_secs(5)).ok()
    }

    pub fn master_state(&self) -> Option<MasterState> {
        Some(self.status()?.hosts.first()?.master.state)
    }

    pub fn wait_connected(&self) {
        self.wait_for(Duration::from_secs(30), "fwdd connected", |st| {
            st.hosts
                .iter()
                .all(|h| h.master.state == MasterState::Connected)
        });
    }

    pub fn wait_for(&self, timeout: Duration, what: &str, mut f: impl FnMut(&Status) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.status() {
                if f(&st) {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\nlast status: {:#?}\nfwdd log tail:\n{}",
                    self.status(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Until the (first) host's engine has said whether it runs rootless:
    /// before that, every route is the published port.
    pub fn wait_engine_known(&self) {
        self.wait_for(
            Duration::from_secs(10),
            "the engine to say whether it runs rootless",
            |st| {
                st.hosts[0]
                    .engine
                    .as_ref()
                    .is_some_and(|e| e.rootless.is_some())
            },
        );
    }

    pub fn forward(&self, port: u16) -> Option<ForwardStatus> {
        self.status()?
            .forwards
            .into_iter()
            .find(|f| f.local_port == port)
    }

    pub fn wait_forward_state(&self, port: u16, state: ForwardState) -> ForwardStatus {
        self.wait_for(
            Duration::from_secs(15),
            &format!("port {port} {state}"),
            |st| {
                st.forwards
                    .iter()
                    .any(|f| f.local_port == port && f.state == state)
            },
        );
        self.forward(port).expect("forward present")
    }

    /// Waits until an HTTP GET through local `port` succeeds; returns the body.
    pub fn wait_http(&self, port: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.host.http_get(port) {
                Ok(body) => return body,
                Err(e) if Instant::now() >= deadline => panic!(
                    "port {port} never served: {e}\nstatus: {:#?}\nlog:\n{}",
                    self.status(),
                    self.log_tail(40)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Waits until connecting to local `port` is refused (nothing listens).
    pub fn wait_refused(&self, port: u16) {
        wait_until(
            Duration::from_secs(10),
            &format!("port {port} refused"),
            || matches!(self.host.connect(port), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        );
    }

    pub fn master_pid(&self) -> u32 {
        self.status()
            .and_then(|s| s.hosts.first().and_then(|h| h.master.pid))
            .expect("master pid in status")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal fwdd");
    }

    /// Sends one raw request line over the control socket; returns the
    /// answer line.
    pub fn request(&self, line: &str) -> Option<String> {
        let mut s = UnixStream::connect(self.control_socket()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(line.as_bytes()).ok()?;
        s.write_all(b"\n").ok()?;
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).ok()?;
        Some(answer)
    }

    /// `fwdctl reconnect` through the control API; true when accepted.
    pub fn reconnect(&self) -> bool {
        self.request(r#"{"v":1,"cmd":"reconnect","host":null}"#)
            .is_some_and(|a| a.contains("\"ok\":true"))
    }

    /// SIGTERM, then wait for exit; returns the status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal fwdd");
        let deadline = t0 + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait fwdd") {
                return (st, t0.elapsed());
            }
            assert!(Instant::now() < deadline, "fwdd did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Fwdd<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A container command serving `body` over HTTP on container port 8080.
pub fn httpd_serving(body: &str) -> String {
    format!("mkdir -p /w && echo {body} > /w/index.html && exec /bin/httpd -f -p 8080 -h /w")
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// `fwdctl --socket <fwdd's control socket> ARGS...`, run in the root namespace
/// (Unix sockets work across network namespaces).
pub fn fwdctl_command(fwdd: &Fwdd, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin("fwdctl"));
    cmd.arg("--socket")
        .arg(fwdd.control_socket())
        .args(args)
        .env_remove("FWD_SOCKET")
        .stdin(Stdio::null());
    cmd
}

/// Runs fwdctl to completion (see [`fwdctl_command`]).
pub fn fwdctl(fwdd: &Fwdd, args: &[&str]) -> std::process::Output {
    fwdctl_command(fwdd, args).output().expect("run fwdctl")
}

/// Reads lines of a child's stdout on a thread.
pub fn line_reader(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Receives lines until one satisfies `f`; panics after `timeout`.
pub fn expect_line(
    rx: &std::sync::mpsc::Receiver<String>,
    timeout: Duration,
    what: &str,
    f: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if f(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "no line with {what} within {timeout:?}; saw:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// Starts fwdd for `host` under an open-files limit of `soft` with a hard
/// one of `hard` (`prlimit`, which then execs fwdd: the pid is fwdd's), as
/// from a user's shell after `ulimit -Sn soft`. It forwards only this
/// test's containers (a rule on the test's label): what other tests run on
/// the shared engine meanwhile costs it nothing, so its descriptors can be
/// counted.
pub fn spawn_with_nofile(host: &TestHost, soft: u64, hard: u64) -> Fwdd<'_> {
    spawn_with_nofile_and(host, soft, hard, "")
}

/// [`spawn_with_nofile`] with `settings` (top-level TOML lines) in its
/// configuration.
pub fn spawn_with_nofile_and<'a>(
    host: &'a TestHost,
    soft: u64,
    hard: u64,
    settings: &str,
) -> Fwdd<'a> {
    let url = format!("ssh://{}", host.alias);
    let cfg = host.ssh_config.to_string_lossy().into_owned();
    let fwdd = bin("fwdd").to_string_lossy().into_owned();
    let nofile = format!("--nofile={soft}:{hard}");
    let rules = host.dir.join("own-containers.toml");
    std::fs::write(
        &rules,
        format!(
            "{settings}\n[[rule]]\nlabel = \"{}={}\"\n[[rule]]\naction = \"skip\"\n",
            fwd_e2e::LABEL_KEY,
            host.label
        ),
    )
    .expect("write the rules");
    let rules = rules.to_string_lossy().into_owned();
    let args = [
        nofile.as_str(),
        "--",
        &fwdd,
        "--config",
        &rules,
        "--host",
        &url,
        "--ssh-config",
        &cfg,
    ];
    Fwdd::spawn_in(host, &host.dir.join("rt"), Path::new("prlimit"), &args, &[])
}

/// Descriptors `pid` has open now.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `pid`'s open-files limit, soft and hard, from `/proc/PID/limits`.
pub fn nofile_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut nums = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (
        nums.next().expect("soft limit"),
        nums.next().expect("hard limit"),
    )
}

/// A line echo server (the host's Python, bind-mounted: busybox has none
/// that serves many clients at once).
pub const ECHO_SERVER: &str = "
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

/// Sends a line and reads its echo.
pub fn echo(conn: &mut std::net::TcpStream, line: &str) -> std::io::Result<String> {
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

/// `docker-compose` (Compose v1, Debian's) in `dir` against the sandbox's
/// dockerd; its output (the command must succeed).
pub fn compose(host: &TestHost, dir: &Path, args: &[&str]) -> String {
    fwd_e2e::run_ok(
        std::process::Command::new("docker-compose")
            .env(
                "DOCKER_HOST",
                format!("unix://{}", host.sandbox().docker_sock.display()),
            )
            .current_dir(dir)
            .args(args),
    )
}
