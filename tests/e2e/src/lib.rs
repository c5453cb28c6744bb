//! End-to-end test harness for `fwdd`: a real OpenSSH server and a real dockerd on one
//! machine, kept apart by Linux network namespaces.
//!
//! Layout (see `/work/shared/SANDBOX.md`):
//!
//! * one **sandbox** per test run, started by `tests/sandbox/up.sh DIR` and torn down by
//!   `tests/sandbox/down.sh DIR`: a "remote" netns `fwdr-<run id>` with one dockerd in it
//!   (socket `DIR/docker.sock`) and the image `fwd-test/busybox:latest`. Tests find it through
//!   the env var `FWD_SANDBOX=DIR/env` ([`Sandbox::get`]).
//! * one [`TestHost`] per test: its own runner netns `fwdn-<run id>-<slot>`, a veth pair
//!   `fw<run id>a<slot>` (remote side) / `fw<run id>b<slot>` (runner side) with its own /30
//!   out of `FWD_SANDBOX_SUBNET_PREFIX`, its own sshd in the remote netns listening on the
//!   remote veth address, its own client key, known_hosts and `ssh -F` config. Slots are
//!   allocated with an atomic create of `DIR/slots/<n>`, so parallel test processes never
//!   collide.
//!
//! Everything here is blocking std code for plain `#[test]` functions; every wait is a
//! poll with a deadline ([`wait_until`]).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Label key put on every container a [`TestHost`] starts (`--label fwd-test=<label>`).
pub const LABEL_KEY: &str = "fwd-test";

/// Highest slot number; a /16 holds 16384 /30s.
const MAX_SLOT: u32 = 16383;

/// A fresh passphrase-less ed25519 key pair at `path` (replacing any there).
fn keygen(path: &Path, comment: &str) {
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(path.with_extension("pub"));
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
    );
}

/// Polls `f` every ~10 ms until it returns true; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Path of a named network namespace (as created by `ip netns add`).
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(ns)
}

/// Runs `f` on a short-lived thread that has entered the network namespace `ns`
/// (only that thread switches; sockets created there keep their netns afterwards).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = netns_path(ns);
    std::thread::scope(|s| {
        s.spawn(|| {
            let file =
                File::open(&path).unwrap_or_else(|e| panic!("open netns {}: {e}", path.display()));
            setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A `Command` for `program` whose child enters the network namespace `ns` before exec
/// (setns in `pre_exec`; mounts are untouched, unlike `ip netns exec`).
pub fn netns_command(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let path = netns_path(ns);
    let file = File::open(&path).unwrap_or_else(|e| panic!("open netns {}: {e}", path.display()));
    let mut cmd = Command::new(program);
    // SAFETY: setns(2) is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
    }
    cmd
}

/// Runs `cmd`, panics (with its stderr) unless it exits 0; returns trimmed stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn ip(args: &[&str]) -> String {
    run_ok(Command::new("ip").args(args))
}

/// The shared sandbox of this test run (see `tests/sandbox/up.sh`).
#[derive(Debug)]
pub struct Sandbox {
    /// The sandbox directory (`FWD_SANDBOX_DIR`).
    pub dir: PathBuf,
    /// Short random id of this run (`FWD_SANDBOX_RUN_ID`); all names derive from it.
    pub run_id: String,
    /// Name of the remote network namespace where dockerd and the sshds run.
    pub remote_ns: String,
    /// dockerd's unix socket (reachable from any netns: it is a path).
    pub docker_sock: PathBuf,
    /// Test image (`fwd-test/busybox:latest`): /bin/busybox, httpd, sh, nc, sleep, cat,
    /// echo, ls, wget, and /www/index.html containing `hello\n`.
    pub image: String,
    /// First two octets of the /16 the per-test /30s come from, e.g. `10.76`.
    pub subnet_prefix: String,
    /// A Python with docker-py installed (the engine socket's client-library test).
    pub python: PathBuf,
    /// Podman's Docker-compatible API (rootful), serving from the remote namespace.
    pub podman_sock: PathBuf,
    /// Rootless dockerd: its user (which the remote host's sessions log in
    /// as to reach it) and its socket, `/run/user/UID/docker.sock`.
    pub rootless_docker: (String, PathBuf),
    /// Rootless Podman: its user and `/run/user/UID/podman/podman.sock`.
    pub rootless_podman: (String, PathBuf),
    /// Today's engines beside those; `None` in an env file written by an
    /// up.sh from before them.
    pub todays: Option<TodaysEngines>,
}

/// Debian 13's engines the sandbox runs beside Debian 12's (unpacked under
/// `/opt/fwd-engines` by `scripts/install-deps.sh`), in the same remote netns.
#[derive(Debug)]
pub struct TodaysEngines {
    /// dockerd 26 (API 1.45), rootful.
    pub docker26_sock: PathBuf,
    /// Podman 5's Docker-compatible API, rootful.
    pub podman5_sock: PathBuf,
    /// Rootless dockerd 26: its user and `/run/user/UID/docker.sock`.
    pub rootless_docker26: (String, PathBuf),
    /// Rootless Podman 5 (pasta): its user and `/run/user/UID/podman/podman.sock`.
    pub rootless_podman5: (String, PathBuf),
    /// The remote host's address on the interface pasta takes for its
    /// uplink: what 169.254.1.2 reaches from rootless Podman 5's containers.
    pub pasta_uplink_ip: String,
}

impl Sandbox {
    /// Reads the env file named by the env var `FWD_SANDBOX` (path to `DIR/env`).
    ///
    /// If unset or unusable: when `CI=true`, panics (in CI a missing sandbox is a failure);
    /// otherwise prints a loud `SKIPPED` line to stderr and returns `None`, so a test does
    /// `let Some(sb) = Sandbox::get() else { return };`.
    pub fn get() -> Option<&'static Sandbox> {
        static SANDBOX: OnceLock<Result<Sandbox, String>> = OnceLock::new();
        match SANDBOX.get_or_init(Sandbox::load) {
            Ok(sb) => Some(sb),
            Err(why) => {
                if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                    panic!("CI=true but no usable e2e sandbox: {why}");
                }
                eprintln!(
                    "\n**********\nSKIPPED: no sandbox, run scripts/test.sh ({why})\n**********\n"
                );
                None
            }
        }
    }

    fn load() -> Result<Sandbox, String> {
        let env_path = std::env::var_os("FWD_SANDBOX")
            .ok_or("FWD_SANDBOX is not set (path to DIR/env written by tests/sandbox/up.sh)")?;
        let text = fs::read_to_string(&env_path).map_err(|e| {
            format!(
                "cannot read FWD_SANDBOX={}: {e}",
                env_path.to_string_lossy()
            )
        })?;
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .map(|v| v.to_string())
                .ok_or(format!("{k} missing in {}", env_path.to_string_lossy()))
        };
        let sb = Sandbox {
            dir: get("FWD_SANDBOX_DIR")?.into(),
            run_id: get("FWD_SANDBOX_RUN_ID")?,
            remote_ns: get("FWD_SANDBOX_REMOTE_NS")?,
            docker_sock: get("FWD_SANDBOX_DOCKER_SOCK")?.into(),
            image: get("FWD_SANDBOX_IMAGE")?,
            subnet_prefix: get("FWD_SANDBOX_SUBNET_PREFIX")?,
            python: get("FWD_SANDBOX_PYTHON")?.into(),
            podman_sock: get("FWD_SANDBOX_PODMAN_SOCK")?.into(),
            rootless_docker: (
                get("FWD_SANDBOX_ROOTLESS_DOCKER_USER")?,
                get("FWD_SANDBOX_ROOTLESS_DOCKER_SOCK")?.into(),
            ),
            rootless_podman: (
                get("FWD_SANDBOX_ROOTLESS_PODMAN_USER")?,
                get("FWD_SANDBOX_ROOTLESS_PODMAN_SOCK")?.into(),
            ),
            todays: match get("FWD_SANDBOX_DOCKER26_SOCK") {
                Err(_) => None,
                Ok(docker26_sock) => Some(TodaysEngines {
                    docker26_sock: docker26_sock.into(),
                    podman5_sock: get("FWD_SANDBOX_PODMAN5_SOCK")?.into(),
                    rootless_docker26: (
                        get("FWD_SANDBOX_ROOTLESS_DOCKER26_USER")?,
                        get("FWD_SANDBOX_ROOTLESS_DOCKER26_SOCK")?.into(),
                    ),
                    rootless_podman5: (
                        get("FWD_SANDBOX_ROOTLESS_PODMAN5_USER")?,
                        get("FWD_SANDBOX_ROOTLESS_PODMAN5_SOCK")?.into(),
                    ),
                    pasta_uplink_ip: get("FWD_SANDBOX_PASTA_UPLINK_IP")?,
                }),
            },
        };
        if !nix::unistd::geteuid().is_root() {
            return Err("the e2e tests must run as root".into());
        }
        if !netns_path(&sb.remote_ns).exists() {
            return Err(format!("netns {} does not exist", sb.remote_ns));
        }
        let out = sb.docker(&["version", "--format", "{{.Server.Version}}"]);
        if !out.status.success() {
            return Err(format!(
                "dockerd at {} does not answer: {}",
                sb.docker_sock.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(sb)
    }

    /// `docker -H unix://<sock> <args>` (CLI on the runner side, talking to the sandbox engine).
    pub fn docker_command(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(format!("unix://{}", self.docker_sock.display()));
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `docker -H unix://<sock> <args>` and returns its output, whatever the status.
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = self.docker_command();
        cmd.args(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
    }

    /// Like [`Sandbox::docker`] but panics with stderr on failure; returns trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let mut cmd = self.docker_command();
        cmd.args(args);
        run_ok(&mut cmd)
    }

    /// What the remote host has under `/run` besides `/run/sshd`: the
    /// runtime directories (`/run/user/UID`) of the sandbox's rootless
    /// engines' users, where their sockets are.
    pub fn remote_runtime_dirs(&self) -> Vec<PathBuf> {
        let todays = self
            .todays
            .iter()
            .flat_map(|t| [&t.rootless_docker26.1, &t.rootless_podman5.1]);
        [&self.rootless_docker.1, &self.rootless_podman.1]
            .into_iter()
            .chain(todays)
            .filter_map(|sock| {
                sock.ancestors()
                    .find(|a| a.parent() == Some(Path::new("/run/user")))
                    .map(Path::to_path_buf)
            })
            .collect()
    }

    /// A `Command` that runs inside the remote netns (where dockerd and the sshds live).
    pub fn remote_command(&self, program: impl AsRef<OsStr>) -> Command {
        netns_command(&self.remote_ns, program)
    }

    /// Stops the shared dockerd (SIGTERM, as a service manager would) and
    /// starts it again with `tests/sandbox/up.sh`. Every test using the
    /// sandbox sees this: call it only from a test binary of its own (cargo
    /// runs test binaries one at a time).
    pub fn restart_dockerd(&self) {
        let pid_file = self.dir.join("docker.pid");
        let pid: i32 = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .expect("dockerd pid file");
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        wait_until(Duration::from_secs(30), "dockerd to stop", || {
            !Path::new(&format!("/proc/{pid}")).exists()
                || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        });
        let up = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox/up.sh");
        run_ok(Command::new("bash").arg(up).arg(&self.dir));
    }

    /// Runs `f` on a thread inside the remote netns.
    pub fn in_remote_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.remote_ns, f)
    }

    /// Connects to `127.0.0.1:port` inside the remote netns (e.g. a published port).
    pub fn remote_connect(&self, port: u16) -> io::Result<TcpStream> {
        self.in_remote_ns(|| connect_timeout((Ipv4Addr::LOCALHOST, port).into()))
    }

    /// `GET /` over HTTP/1.0 to `127.0.0.1:port` inside the remote netns; returns the body.
    pub fn remote_http_get(&self, port: u16) -> io::Result<String> {
        http_get_on(self.remote_connect(port)?)
    }

    /// Atomically claims a free slot file `DIR/slots/<n>` (n in 1..=16383).
    fn alloc_slot(&self, test_name: &str) -> u32 {
        let slots = self.dir.join("slots");
        fs::create_dir_all(&slots).expect("create slots dir");
        for n in 1..=MAX_SLOT {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(slots.join(n.to_string()))
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{} {test_name}", std::process::id());
                    return n;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("claim slot {n} in {}: {e}", slots.display()),
            }
        }
        panic!("no free slot in {}", slots.display());
    }
}

fn connect_timeout(addr: SocketAddr) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
}

fn http_get_on(mut s: TcpStream) -> io::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no HTTP header end in {text:?}"),
        )
    })?;
    let status = head.lines().next().unwrap_or_default();
    if !status
        .split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('2'))
    {
        return Err(io::Error::other(format!("HTTP status: {status}")));
    }
    Ok(body.to_string())
}

/// Per-process info from /proc: pid -> (ppid, state).
fn proc_table() -> HashMap<i32, (i32, char)> {
    let mut map = HashMap::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return map;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ..." - comm may contain spaces/parens: split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let state = it.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        map.insert(pid, (ppid, state));
    }
    map
}

/// `root` and all its live (non-zombie) descendants.
fn process_tree(root: i32) -> Vec<i32> {
    let table = proc_table();
    let mut tree = vec![root];
    let mut seen: HashSet<i32> = tree.iter().copied().collect();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for (&pid, &(ppid, state)) in &table {
            if ppid == parent && state != 'Z' && seen.insert(pid) {
                tree.push(pid);
            }
        }
        i += 1;
    }
    tree
}

fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    Some(parts.join(" "))
}

/// Removes a test's containers from another engine than the sandbox's
/// dockerd (whose are removed with the [`TestHost`]) when dropped, however
/// the test ends: see [`TestHost::containers_on`].
pub struct ContainersOn<'a> {
    host: &'a TestHost,
    socket: PathBuf,
}

impl ContainersOn<'_> {
    /// The docker CLI against that engine.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()));
        cmd
    }
}

impl Drop for ContainersOn<'_> {
    fn drop(&mut self) {
        let label = format!("label={LABEL_KEY}={}", self.host.label);
        if let Ok(out) = self
            .docker()
            .args(["ps", "-aq", "--filter", &label])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.docker().args(["rm", "-f", id]).output();
            }
        }
    }
}

/// One test's view of the world: a runner netns, a veth to the remote netns and an sshd.
#[derive(Debug)]
pub struct TestHost {
    /// Unique per test (`<run id>-<slot>-<test name>`); every container started through
    /// this host carries `--label fwd-test=<label>` and is removed on drop.
    pub label: String,
    /// Slot number (determines names and addresses).
    pub slot: u32,
    /// The runner network namespace (where `fwdd` under test should run).
    pub runner_ns: String,
    /// The remote netns (same as the sandbox's).
    pub remote_ns: String,
    /// Veth name on the runner side (inside `runner_ns`).
    pub runner_veth: String,
    /// Veth name on the remote side (inside `remote_ns`).
    pub remote_veth: String,
    /// sshd's address (remote side of the /30).
    pub remote_ip: Ipv4Addr,
    /// The runner's address (runner side of the /30).
    pub runner_ip: Ipv4Addr,
    /// sshd's port.
    pub ssh_port: u16,
    /// `ssh -F` config with `Host <alias>`: HostName, Port, User root, IdentityFile,
    /// IdentitiesOnly, UserKnownHostsFile, StrictHostKeyChecking yes, BatchMode yes.
    pub ssh_config: PathBuf,
    /// Host alias defined in `ssh_config`.
    pub alias: String,
    /// Client private key.
    pub identity: PathBuf,
    /// known_hosts holding this sshd's host key.
    pub known_hosts: PathBuf,
    /// sshd's config file.
    pub sshd_config: PathBuf,
    /// sshd's log (`-E`, LogLevel VERBOSE).
    pub sshd_log: PathBuf,
    /// sshd's pid file.
    pub sshd_pidfile: PathBuf,
    /// This test's private directory (`DIR/h/<slot>`, short: fit ControlPaths in here).
    pub dir: PathBuf,
    /// The docker socket of the sandbox.
    pub docker_sock: PathBuf,
    /// The test image.
    pub image: String,
    sandbox: &'static Sandbox,
    slot_file: PathBuf,
    /// Directories bound into sshd's own mount namespace (source, target):
    /// what this remote host has at `target` that the machine does not.
    remote_binds: std::sync::Mutex<Vec<(PathBuf, PathBuf)>>,
}

impl TestHost {
    /// Sets up a runner netns + veth + /30 + sshd for one test. Panics on failure
    /// (already created parts are cleaned up by `Drop`).
    pub fn new(sb: &'static Sandbox, test_name: &str) -> TestHost {
        let slot = sb.alloc_slot(test_name);
        let clean: String = test_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let base = slot * 4;
        let prefix: Vec<u8> = sb
            .subnet_prefix
            .split('.')
            .map(|o| {
                o.parse()
                    .expect("FWD_SANDBOX_SUBNET_PREFIX must be like 10.76")
            })
            .collect();
        assert_eq!(
            prefix.len(),
            2,
            "FWD_SANDBOX_SUBNET_PREFIX must be like 10.76"
        );
        let addr = |off: u32| {
            Ipv4Addr::new(
                prefix[0],
                prefix[1],
                ((base + off) >> 8) as u8,
                (base + off) as u8,
            )
        };
        let dir = sb.dir.join("h").join(slot.to_string());
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test host dir");
        let host = TestHost {
            label: format!("{}-{slot}-{clean}", sb.run_id),
            slot,
            runner_ns: format!("fwdn-{}-{slot}", sb.run_id),
            remote_ns: sb.remote_ns.clone(),
            runner_veth: format!("fw{}b{slot}", sb.run_id),
            remote_veth: format!("fw{}a{slot}", sb.run_id),
            remote_ip: addr(1),
            runner_ip: addr(2),
            ssh_port: 22,
            ssh_config: dir.join("ssh_config"),
            alias: "fwdremote".to_string(),
            identity: dir.join("id_ed25519"),
            known_hosts: dir.join("known_hosts"),
            sshd_config: dir.join("sshd_config"),
            sshd_log: dir.join("sshd.log"),
            sshd_pidfile: dir.join("sshd.pid"),
            docker_sock: sb.docker_sock.clone(),
            image: sb.image.clone(),
            dir,
            sandbox: sb,
            slot_file: sb.dir.join("slots").join(slot.to_string()),
            remote_binds: Default::default(),
        };
        host.setup_network();
        host.setup_ssh();
        host.start_sshd();
        host
    }

    /// The sandbox this host belongs to.
    pub fn sandbox(&self) -> &'static Sandbox {
        self.sandbox
    }

    fn setup_network(&self) {
        let (a, b) = (self.remote_veth.as_str(), self.runner_veth.as_str());
        ip(&["netns", "add", &self.runner_ns]);
        ip(&["-n", &self.runner_ns, "link", "set", "lo", "up"]);
        ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        ip(&["link", "set", a, "netns", &self.remote_ns]);
        ip(&["link", "set", b, "netns", &self.runner_ns]);
        let r = format!("{}/30", self.remote_ip);
        let n = format!("{}/30", self.runner_ip);
        ip(&["-n", &self.remote_ns, "addr", "add", &r, "dev", a]);
        ip(&["-n", &self.runner_ns, "addr", "add", &n, "dev", b]);
        ip(&["-n", &self.remote_ns, "link", "set", a, "up"]);
        ip(&["-n", &self.runner_ns, "link", "set", b, "up"]);
    }

    fn setup_ssh(&self) {
        let d = &self.dir;
        let host_key = d.join("ssh_host_ed25519_key");
        keygen(&host_key, "fwd-test-host");
        keygen(&self.identity, "fwd-test-client");
        let read = |p: PathBuf| fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        let client_pub = read(self.identity.with_extension("pub"));
        let host_pub = read(host_key.with_extension("pub"));
        let authorized_keys = d.join("authorized_keys");
        fs::write(&authorized_keys, client_pub).expect("write authorized_keys");
        let host_pattern = if self.ssh_port == 22 {
            self.remote_ip.to_string()
        } else {
            format!("[{}]:{}", self.remote_ip, self.ssh_port)
        };
        let host_pub_fields: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        fs::write(
            &self.known_hosts,
            format!("{host_pattern} {}\n", host_pub_fields.join(" ")),
        )
        .expect("write known_hosts");
        let sshd_config = format!(
            "ListenAddress {ip}\n\
             Port {port}\n\
             HostKey {host_key}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {ak}\n\
             UsePAM no\n\
             StrictModes no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\n\
             PrintMotd no\n\
             LogLevel VERBOSE\n\
             SetEnv DOCKER_HOST=unix://{sock}\n",
            ip = self.remote_ip,
            port = self.ssh_port,
            host_key = host_key.display(),
            pid = self.sshd_pidfile.display(),
            ak = authorized_keys.display(),
            sock = self.docker_sock.display(),
        );
        fs::write(&self.sshd_config, sshd_config).expect("write sshd_config");
        let ssh_config = format!(
            "Host {alias}\n\
             \tHostName {ip}\n\
             \tPort {port}\n\
             \tUser root\n\
             \tIdentityFile {id}\n\
             \tIdentitiesOnly yes\n\
             \tUserKnownHostsFile {kh}\n\
             \tGlobalKnownHostsFile /dev/null\n\
             \tStrictHostKeyChecking yes\n\
             \tBatchMode yes\n",
            alias = self.alias,
            ip = self.remote_ip,
            port = self.ssh_port,
            id = self.identity.display(),
            kh = self.known_hosts.display(),
        );
        fs::write(&self.ssh_config, ssh_config).expect("write ssh_config");
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
    }

    /// `docker run -d --label fwd-test=<label> <args...>`; returns the container id.
    /// `args` holds run options, the image and the command, e.g.
    /// `["-p", "18080:8080", &host.image, "/bin/httpd", "-f", "-p", "8080", "-h", "/www"]`.
    pub fn run(&self, args: &[&str]) -> String {
        let label = format!("{LABEL_KEY}={}", self.label);
        let mut full = vec!["run", "-d", "--label", &label];
        full.extend_from_slice(args);
        self.sandbox.docker_ok(&full)
    }

    /// [`run`](Self::run) with the runner's own `/usr`, `/lib` and `/lib64` mounted
    /// read-only, for a real server the busybox image lacks (Python, PostgreSQL):
    /// the sandbox's dockerd runs on this machine's filesystem.
    pub fn run_with_host_binaries(&self, args: &[&str]) -> String {
        let mut full = vec![
            "-v",
            "/usr:/usr:ro",
            "-v",
            "/lib:/lib:ro",
            "-v",
            "/lib64:/lib64:ro",
        ];
        full.extend_from_slice(args);
        self.run(&full)
    }

    /// A UDP echo server (the runner's Python, bind-mounted: busybox has
    /// none) on container port 5353, published at `host_port`/udp; its
    /// container id. A 4 MiB receive buffer, so a burst reaches it whole.
    pub fn udp_echo(&self, host_port: u16) -> String {
        self.run_with_host_binaries(&[
            "-p",
            &format!("{host_port}:5353/udp"),
            &self.image,
            "/usr/bin/python3",
            "-u",
            "-c",
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)\n\
             s.bind(('0.0.0.0', 5353))\n\
             while True:\n    d, a = s.recvfrom(65535)\n    s.sendto(d, a)\n",
        ])
    }

    /// Busybox httpd serving `/www` (body `hello\n`) on container port 8080, published with
    /// the given `-p` specs (e.g. `["18080:8080"]`); returns the container id.
    pub fn httpd(&self, publish: &[&str]) -> String {
        let mut opts: Vec<&str> = Vec::new();
        for p in publish {
            opts.extend_from_slice(&["-p", p]);
        }
        self.httpd_with(&opts)
    }

    /// The same httpd with any `docker run` options (labels, `--restart`, `-P`, ...).
    pub fn httpd_with(&self, run_options: &[&str]) -> String {
        self.run(&self.httpd_args(run_options))
    }

    /// `run_options`, the image and the busybox httpd command line, for
    /// whichever engine runs it.
    pub fn httpd_args<'a>(&'a self, run_options: &[&'a str]) -> Vec<&'a str> {
        let mut args: Vec<&str> = run_options.to_vec();
        args.extend_from_slice(&[&self.image, "/bin/httpd", "-f", "-p", "8080", "-h", "/www"]);
        args
    }

    /// A `Command` that runs inside the runner netns.
    pub fn runner_command(&self, program: impl AsRef<OsStr>) -> Command {
        netns_command(&self.runner_ns, program)
    }

    /// `ssh -F <ssh_config>` run inside the runner netns; append the alias and the rest,
    /// e.g. `host.ssh_command().args([&host.alias, "docker", "version"])`.
    pub fn ssh_command(&self) -> Command {
        let mut cmd = self.runner_command("ssh");
        cmd.arg("-F").arg(&self.ssh_config);
        cmd
    }

    /// Runs `f` on a thread inside the runner netns.
    pub fn in_runner_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.runner_ns, f)
    }

    /// Connects to `addr` from inside the runner netns (5 s connect timeout).
    pub fn connect_addr(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.in_runner_ns(|| connect_timeout(addr))
    }

    /// Connects to `127.0.0.1:port` inside the runner netns.
    pub fn connect(&self, port: u16) -> io::Result<TcpStream> {
        self.connect_addr((Ipv4Addr::LOCALHOST, port).into())
    }

    /// Connects to `[::1]:port` inside the runner netns.
    pub fn connect_v6(&self, port: u16) -> io::Result<TcpStream> {
        self.connect_addr((Ipv6Addr::LOCALHOST, port).into())
    }

    /// `GET / HTTP/1.0` through `127.0.0.1:port` in the runner netns (5 s timeouts);
    /// returns the body, or an error for a non-2xx status.
    pub fn http_get(&self, port: u16) -> io::Result<String> {
        http_get_on(self.connect(port)?)
    }

    /// `GET /` over HTTP/1.0 to `addr` in the runner netns: the body.
    pub fn http_get_addr(&self, addr: SocketAddr) -> io::Result<String> {
        http_get_on(self.connect_addr(addr)?)
    }

    /// `GET path` over HTTP/1.0 to `127.0.0.1:port` in the runner netns,
    /// whatever the status: `(status, body)`, or `None` when nothing
    /// answers whole within `read_timeout` (callers that bound the answer
    /// assert their bound themselves).
    pub fn http_get_path(
        &self,
        port: u16,
        path: &str,
        read_timeout: Duration,
    ) -> Option<(u16, String)> {
        let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
        self.in_runner_ns(move || {
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
            s.set_read_timeout(Some(read_timeout)).ok()?;
            s.write_all(request.as_bytes()).ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            let status = text.split_whitespace().nth(1)?.parse().ok()?;
            let (_, body) = text.split_once("\r\n\r\n")?;
            Some((status, body.to_string()))
        })
    }

    /// Binds `127.0.0.1:port` inside the runner netns (to provoke a port conflict).
    pub fn bind_in_runner(&self, port: u16) -> io::Result<TcpListener> {
        self.in_runner_ns(|| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
    }

    /// pid of the sshd listener, if it is running.
    pub fn sshd_pid(&self) -> Option<i32> {
        let pid = fs::read_to_string(&self.sshd_pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    fn sshd_listening(&self, pid: i32) -> bool {
        // /proc/<pid>/net/tcp shows the sockets of that process's netns.
        let want = format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(self.remote_ip.octets()),
            self.ssh_port
        );
        fs::read_to_string(format!("/proc/{pid}/net/tcp")).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1] == want && f[3] == "0A"
            })
        })
    }

    /// Starts this host's sshd (daemon with a pid file, in the remote netns) and waits until
    /// it listens. No-op if it already runs.
    pub fn start_sshd(&self) {
        if self.sshd_pid().is_some() {
            return;
        }
        let _ = fs::remove_file(&self.sshd_pidfile);
        let binds = self
            .remote_binds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // sshd (and so every session and channel of it) in a mount
        // namespace of its own whose `/run` (`/var/run`) holds only what this
        // remote host has: a machine's own engines (a rootful Podman at
        // /run/podman, a Docker at /var/run/docker.sock, a user's rootless
        // engine) stay out of sight, as on a real remote host. The private
        // `/run` is a tmpfs made under the test's directory, given the
        // sandbox's rootless engines' runtime directories (bound before it
        // hides the machine's), then moved over `/run`; then each of the
        // test's own binds (`SOURCE TARGET` pairs).
        let private_run = self.dir.join("run");
        let _ = fs::create_dir_all(&private_run);
        let mut cmd = self.sandbox.remote_command("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-ec"]);
        cmd.arg(concat!(
            "r=$1; shift; mount -t tmpfs -o mode=0755 fwd-remote-run \"$r\"; ",
            "mkdir -p \"$r/sshd\" \"$r/user\"; ",
            "while [ \"$1\" != -- ]; do t=$r${1#/run}; mkdir -p \"$t\"; mount --bind \"$1\" \"$t\"; shift; done; shift; ",
            "mount --rbind \"$r\" /run; umount -l \"$r\"; ",
            "while [ \"$1\" != -- ]; do mkdir -p \"$2\"; mount --bind \"$1\" \"$2\"; shift 2; done; shift; exec \"$@\"",
        ));
        cmd.arg("remote-run").arg(&private_run);
        for dir in self.sandbox.remote_runtime_dirs() {
            cmd.arg(dir);
        }
        cmd.arg("--");
        for (source, target) in binds.iter() {
            cmd.arg(source).arg(target);
        }
        cmd.args(["--", "/usr/sbin/sshd"]);
        cmd.arg("-f")
            .arg(&self.sshd_config)
            .arg("-E")
            .arg(&self.sshd_log);
        run_ok(&mut cmd);
        wait_until(Duration::from_secs(10), "sshd listening", || {
            self.sshd_pid().is_some_and(|p| self.sshd_listening(p))
        });
    }

    /// Stops this host's sshd for real: SIGSTOP the listener, then SIGKILL it and every
    /// descendant (per-connection sshd processes and the sessions' commands, e.g.
    /// `docker system dial-stdio`), and waits until all are gone. Clients see their
    /// connection end, then new connections are refused until [`TestHost::start_sshd`].
    pub fn stop_sshd(&self) {
        let Some(pid) = self.sshd_pid() else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
        // freeze the whole tree first so nothing forks behind our back
        let mut tree = process_tree(pid);
        loop {
            for &p in &tree {
                let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
            }
            let again = process_tree(pid);
            if again.len() == tree.len() {
                break;
            }
            tree = again;
        }
        for &p in &tree {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        wait_until(Duration::from_secs(10), "sshd process tree gone", || {
            tree.iter().all(|&p| !alive(p))
        });
        let _ = fs::remove_file(&self.sshd_pidfile);
    }

    /// Takes the runner-side veth down (silent black hole for the ssh connection).
    pub fn link_down(&self) {
        ip(&[
            "-n",
            &self.runner_ns,
            "link",
            "set",
            &self.runner_veth,
            "down",
        ]);
    }

    /// Brings the runner-side veth back up.
    pub fn link_up(&self) {
        ip(&[
            "-n",
            &self.runner_ns,
            "link",
            "set",
            &self.runner_veth,
            "up",
        ]);
    }

    /// pid and cmdline of every live descendant of this host's sshd listener
    /// (per-connection sshd processes, shells, `docker system dial-stdio`, ...).
    pub fn remote_session_processes(&self) -> Vec<(i32, String)> {
        let Some(pid) = self.sshd_pid() else {
            return Vec::new();
        };
        process_tree(pid)
            .into_iter()
            .skip(1)
            .filter_map(|p| cmdline(p).map(|c| (p, c)))
            .collect()
    }

    /// Number of SSH logins to this sshd so far ("Accepted publickey" lines in its log).
    pub fn sshd_connection_count(&self) -> usize {
        fs::read_to_string(&self.sshd_log)
            .map(|t| {
                t.lines()
                    .filter(|l| l.contains("Accepted publickey"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Connections that reached this sshd, authenticated or not.
    pub fn sshd_connection_attempts(&self) -> usize {
        fs::read_to_string(&self.sshd_log)
            .map(|t| t.lines().filter(|l| l.contains("Connection from")).count())
            .unwrap_or(0)
    }

    /// Rewrites authorized_keys with `options` in front of the client key
    /// (e.g. `command="/path/script"` to stand in for the remote docker).
    /// sshd reads the file per connection: no restart needed.
    pub fn set_authorized_key_options(&self, options: &str) {
        let key =
            fs::read_to_string(self.identity.with_extension("pub")).expect("client public key");
        let line = if options.is_empty() {
            key
        } else {
            format!("{options} {key}")
        };
        fs::write(self.dir.join("authorized_keys"), line).expect("write authorized_keys");
    }

    /// A `PATH` whose first entry holds an `ssh` that reads this host's client
    /// config (`ssh -F`), for the docker CLI's own `DOCKER_HOST=ssh://<alias>`
    /// support: it runs plain `ssh`, which would read the passwd home's
    /// config instead.
    pub fn ssh_url_path(&self) -> std::ffi::OsString {
        use std::os::unix::fs::PermissionsExt;
        let bin = self.dir.join("sshbin");
        let wrapper = bin.join("ssh");
        if !wrapper.exists() {
            fs::create_dir_all(&bin).expect("ssh wrapper dir");
            fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nexec /usr/bin/ssh -F '{}' \"$@\"\n",
                    self.ssh_config.display()
                ),
            )
            .expect("write ssh wrapper");
            fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
                .expect("chmod ssh wrapper");
        }
        let mut path = std::ffi::OsString::from(bin.as_os_str());
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()));
        path
    }

    /// Adds lines to sshd_config (e.g. `MaxSessions 2`) and restarts sshd.
    pub fn add_sshd_config(&self, lines: &str) {
        let mut cfg = fs::read_to_string(&self.sshd_config).expect("read sshd_config");
        cfg.push_str(lines);
        cfg.push('\n');
        fs::write(&self.sshd_config, cfg).expect("write sshd_config");
        self.stop_sshd();
        self.start_sshd();
    }

    /// Sets the sessions' environment to `env` (`KEY=VALUE …`, sshd's
    /// `SetEnv`) instead of the sandbox's `DOCKER_HOST`, as on a real host
    /// whose sshd sets none; restarts sshd.
    pub fn set_session_env(&self, env: &str) {
        let cfg = fs::read_to_string(&self.sshd_config).expect("read sshd_config");
        let mut kept: Vec<&str> = cfg.lines().filter(|l| !l.starts_with("SetEnv ")).collect();
        let line = format!("SetEnv {env}");
        if !env.is_empty() {
            kept.push(&line);
        }
        fs::write(&self.sshd_config, kept.join("\n") + "\n").expect("write sshd_config");
        self.stop_sshd();
        self.start_sshd();
    }

    /// This test's containers on the engine at `socket` (another than the
    /// sandbox's dockerd), removed when the guard drops.
    pub fn containers_on(&self, socket: &Path) -> ContainersOn<'_> {
        ContainersOn {
            host: self,
            socket: socket.to_path_buf(),
        }
    }

    /// Binds `source` at `target` for this host's sshd and its sessions only
    /// (a mount namespace of theirs), as if the remote host had it there,
    /// e.g. an engine's socket where a real host's engine would listen;
    /// restarts sshd.
    pub fn bind_on_remote(&self, source: &Path, target: &Path) {
        self.remote_binds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((source.to_path_buf(), target.to_path_buf()));
        self.stop_sshd();
        self.start_sshd();
    }

    /// Sessions log in as `user` instead of root (a rootless engine's own
    /// user). The fwdd under test reads `ssh_config`, so set this before
    /// starting it.
    pub fn log_in_as(&self, user: &str) {
        let cfg = fs::read_to_string(&self.ssh_config).expect("read ssh_config");
        let cfg: Vec<String> = cfg
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("User ") {
                    format!("\tUser {user}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        fs::write(&self.ssh_config, cfg.join("\n") + "\n").expect("write ssh_config");
    }

    /// Lines of this sshd's log that contain `needle` (e.g. "Starting session").
    pub fn sshd_log_count(&self, needle: &str) -> usize {
        fs::read_to_string(&self.sshd_log)
            .map(|t| t.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    /// Replaces the client key with a new one the server does not know.
    pub fn rotate_client_key_wrongly(&self) {
        keygen(&self.identity, "fwd-test-wrong");
        // authorized_keys still holds the old key.
    }

    /// Gives sshd a new host key (known_hosts keeps the old one) and
    /// restarts it: clients with strict checking must refuse it.
    pub fn change_host_key(&self) {
        let host_key = self.dir.join("ssh_host_ed25519_key");
        keygen(&host_key, "fwd-test-host-2");
        self.stop_sshd();
        self.start_sshd();
    }

    /// Drops every packet on the runner's veth in both directions (a
    /// black hole: the link stays up, nothing gets through), or stops.
    pub fn drop_packets(&self, on: bool) {
        let op = if on { "-I" } else { "-D" };
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            run_ok(self.runner_command("iptables").args([
                op,
                chain,
                dir,
                &self.runner_veth,
                "-j",
                "DROP",
            ]));
        }
    }

    /// Drops every packet this host's sshd (and its connections'
    /// processes) sends to `ip`, while everything else on the
    /// Docker host (docker-proxy) still reaches it: sshd is moved into a
    /// cgroup of its own, and the remote netns's iptables matches it. Undone
    /// when the guard drops.
    pub fn drop_sshd_packets_to(&self, ip: &str) -> SshdPacketDrop {
        let mounts = fs::read_to_string("/proc/mounts").expect("/proc/mounts");
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == "cgroup2")
            .map(|f| PathBuf::from(f[1]))
            .expect("a cgroup2 hierarchy");
        let name = format!("fwd-e2e-{}", self.label);
        let dir = root.join(&name);
        fs::create_dir_all(&dir).expect("create the cgroup");
        // The connections' processes too: sshd forked them before.
        for pid in process_tree(self.sshd_pid().expect("sshd runs")) {
            let _ = fs::write(dir.join("cgroup.procs"), pid.to_string());
        }
        let rule = [
            "OUTPUT", "-m", "cgroup", "--path", &name, "-d", ip, "-j", "DROP",
        ]
        .map(str::to_string);
        run_ok(
            self.sandbox
                .remote_command("iptables")
                .arg("-I")
                .args(&rule),
        );
        SshdPacketDrop {
            remote_ns: self.sandbox.remote_ns.clone(),
            root,
            dir,
            rule,
        }
    }

    /// Ids of all containers (running or not) carrying this host's label.
    pub fn containers(&self) -> Vec<String> {
        let filter = format!("label={LABEL_KEY}={}", self.label);
        self.sandbox
            .docker_ok(&["ps", "-aq", "--no-trunc", "--filter", &filter])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// See [`TestHost::drop_sshd_packets_to`].
pub struct SshdPacketDrop {
    remote_ns: String,
    root: PathBuf,
    dir: PathBuf,
    rule: [String; 9],
}

impl Drop for SshdPacketDrop {
    fn drop(&mut self) {
        let _ = netns_command(&self.remote_ns, "iptables")
            .arg("-D")
            .args(&self.rule)
            .status();
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

impl Drop for TestHost {
    /// Removes the containers (by label), kills the sshd tree, deletes the runner netns and
    /// the veth pair, frees the slot. The directory is kept when the test panicked.
    fn drop(&mut self) {
        let filter = format!("label={LABEL_KEY}={}", self.label);
        let ids = self.sandbox.docker(&["ps", "-aq", "--filter", &filter]);
        let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = self.sandbox.docker(&args);
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop_sshd())).is_err() {
            eprintln!("fwd-e2e: could not stop sshd of {}", self.label);
        }
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        };
        quiet(&["netns", "del", &self.runner_ns]);
        quiet(&["-n", &self.remote_ns, "link", "del", &self.remote_veth]);
        quiet(&["link", "del", &self.remote_veth]);
        if std::thread::panicking() {
            eprintln!(
                "fwd-e2e: test failed, keeping {} (sshd.log etc.)",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
        let _ = fs::remove_file(&self.slot_file);
    }
}
