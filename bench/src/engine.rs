//! The `engine` figures (issue 9, "one SSH connection for everything"): the real docker
//! CLI through fwdd's engine socket (`DOCKER_HOST=unix://<runtime>/docker.sock`) against
//! the same CLI with `DOCKER_HOST=ssh://<alias>` (its own ssh support: one new SSH
//! connection and one `docker system dial-stdio` session per command), on the same
//! sandbox host in one run.
//!
//! - latency of sequential `docker ps`, each way;
//! - sshd's log as the witness: new logins and sessions per 100 commands through the
//!   socket, per 10 over ssh://;
//! - `docker cp` of a large file into a container and back out, each way, with the CPU
//!   each process on the path used during the copy (what limits it).
//!
//! The CLI runs in the runner netns (ssh:// must reach sshd's veth address from there;
//! the socket is a path and works from anywhere). `ssh` is found first on `PATH` as a
//! wrapper that adds `-F <host.ssh_config>`: the docker CLI runs plain `ssh` with the
//! user's config, which knows nothing of the test host.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{dist, pct, poll, sorted, Ctx, Fwdd};

/// How one docker CLI reaches the engine.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    Socket,
    Ssh,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Socket => "socket",
            Via::Ssh => "ssh://",
        }
    }
}

/// The environment of the docker CLI for both ways.
struct Cli {
    socket_host: String,
    ssh_host: String,
    config: PathBuf,
    path: OsString,
    stderr_dir: PathBuf,
}

impl Cli {
    fn command(&self, ctx: &Ctx, via: Via, args: &[&str]) -> Command {
        let mut cmd = ctx.host.runner_command("docker");
        let host = match via {
            Via::Socket => &self.socket_host,
            Via::Ssh => &self.ssh_host,
        };
        cmd.env("DOCKER_HOST", host)
            .env("DOCKER_CONFIG", &self.config)
            .env("PATH", &self.path)
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs one command to the end; (wall ms, success, stdout, stderr).
    fn run(&self, ctx: &Ctx, via: Via, args: &[&str]) -> (f64, bool, String, String) {
        let mut cmd = self.command(ctx, via, args);
        let t = Instant::now();
        let out = cmd.output().unwrap_or_else(|e| panic!("spawn docker: {e}"));
        let ms = t.elapsed().as_secs_f64() * 1e3;
        (
            ms,
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }

    /// Spawns a long command (stdout to null, stderr to a file) for [`wait_bounded`].
    fn spawn(&self, ctx: &Ctx, via: Via, args: &[&str], tag: &str) -> (Child, PathBuf) {
        let err = self.stderr_dir.join(format!("{tag}.stderr"));
        let f = File::create(&err).expect("create stderr file");
        let mut cmd = self.command(ctx, via, args);
        cmd.stdout(Stdio::null()).stderr(f);
        (cmd.spawn().expect("spawn docker"), err)
    }
}

/// Waits for `child` at most `limit`; kills it past that. `None` when killed.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// CPU of the processes on the path, sampled from /proc while a transfer runs

/// utime + stime of a process in seconds.
fn proc_cpu(pid: u32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let u: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((u + st) / ticks())
}

fn ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// pid → ppid of every process.
fn ppids() -> HashMap<u32, u32> {
    let mut m = HashMap::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return m;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        m.insert(pid, ppid);
    }
    m
}

/// `root` and its descendants.
fn tree(table: &HashMap<u32, u32>, root: u32) -> Vec<u32> {
    let mut out = vec![root];
    let mut seen: HashSet<u32> = out.iter().copied().collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for (&pid, &pp) in table {
            if pp == parent && seen.insert(pid) {
                out.push(pid);
            }
        }
        i += 1;
    }
    out
}

/// A process role on the path: its root pid, and whether its descendants count too.
#[derive(Clone)]
struct Role {
    name: &'static str,
    root: u32,
    with_children: bool,
}

/// Samples the CPU of each role's processes every 100 ms until stopped. Processes that
/// existed at the start count from their CPU then; newer ones from 0. A process that
/// ends between samples loses at most its last 100 ms.
struct CpuWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<(&'static str, f64)>>,
    t0: Instant,
}

impl CpuWatch {
    fn start(roles: Vec<Role>) -> CpuWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let sample =
            move |roles: &[Role], first: bool, acc: &mut HashMap<u32, (usize, f64, f64)>| {
                let table = ppids();
                for (i, r) in roles.iter().enumerate() {
                    let pids = if r.with_children {
                        tree(&table, r.root)
                    } else {
                        vec![r.root]
                    };
                    for p in pids {
                        if let Some(c) = proc_cpu(p) {
                            let e = acc.entry(p).or_insert((i, if first { c } else { 0.0 }, c));
                            e.2 = c;
                        }
                    }
                }
            };
        let roles2 = roles.clone();
        let handle = thread::spawn(move || {
            // pid → (role index, base, last)
            let mut acc: HashMap<u32, (usize, f64, f64)> = HashMap::new();
            sample(&roles2, true, &mut acc);
            while !st.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(100));
                sample(&roles2, false, &mut acc);
            }
            let mut per = vec![0.0; roles2.len()];
            for (_, (i, base, last)) in acc {
                per[i] += (last - base).max(0.0);
            }
            roles2.iter().map(|r| r.name).zip(per).collect()
        });
        CpuWatch {
            stop,
            handle,
            t0: Instant::now(),
        }
    }

    /// CPU per role as % of one core over the watched time.
    fn finish(self) -> String {
        let wall = self.t0.elapsed().as_secs_f64();
        self.stop.store(true, Ordering::SeqCst);
        let per = self.handle.join().expect("cpu watch");
        per.iter()
            .map(|(n, c)| format!("{n} {:.0}%", c / wall * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// the payload

/// A file removed when dropped (also on a panic).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `mib` MiB of incompressible-looking bytes (xorshift; SSH compression is off anyway).
fn write_payload(path: &Path, mib: u64) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    w.flush()
}

/// Whether two files have the same bytes.
fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            k => got += k,
        }
    }
    Ok(got)
}

// ---------------------------------------------------------------------------------------
// the figures

/// sshd's log so far: (logins, sessions).
fn witness(ctx: &Ctx) -> (usize, usize) {
    (
        ctx.host.sshd_connection_count(),
        ctx.host.sshd_log_count("Starting session"),
    )
}

impl Ctx<'_> {
    pub(crate) fn engine(&mut self, fwdd: &Fwdd, ps_n: usize, cp_mib: u64, cp_runs: usize) {
        println!(
            "[engine] docker CLI through fwdd's engine socket vs DOCKER_HOST=ssh:// \
             ({ps_n} docker ps each, 100/10 for the connection count, docker cp {cp_mib} MiB ×{cp_runs})"
        );
        let sock = fwdd.runtime_dir.join("docker.sock");
        let config = self.host.dir.join("docker-config");
        fs::create_dir_all(&config).expect("docker config dir");
        let path = self.host.ssh_url_path();
        let cli = Cli {
            socket_host: format!("unix://{}", sock.display()),
            ssh_host: format!("ssh://{}", self.host.alias),
            config,
            path,
            stderr_dir: self.host.dir.clone(),
        };

        // Both ways answer (and the wrapper really reaches this host's sshd).
        let up = poll(Duration::from_secs(20), || {
            cli.run(
                self,
                Via::Socket,
                &["version", "--format", "{{.Server.Version}}"],
            )
            .1
        });
        if !up {
            let (_, _, _, err) = cli.run(self, Via::Socket, &["version"]);
            self.rep
                .note(format!("engine: the engine socket does not answer: {err}"));
            self.rep.row(
                "docker ps through the engine socket",
                "no answer".into(),
                "-",
                Some(false),
            );
            return;
        }
        let route = fwdd
            .status()
            .and_then(|s| s.hosts.first()?.engine.clone())
            .and_then(|e| e.route)
            .unwrap_or_else(|| "?".into());
        let logins0 = self.host.sshd_connection_count();
        let (_, ssh_ok, _, ssh_err) = cli.run(
            self,
            Via::Ssh,
            &["version", "--format", "{{.Server.Version}}"],
        );
        let ssh_reached = self.host.sshd_connection_count() > logins0;
        let ssh_works = ssh_ok && ssh_reached;
        if !ssh_works {
            self.rep.note(format!(
                "engine: DOCKER_HOST=ssh:// does not work here (ok {ssh_ok}, reached this sshd {ssh_reached}): {ssh_err}"
            ));
        }
        self.rep
            .note(format!("engine: fwdd's engine route: {route}"));

        // --- latency of docker ps, alternating, after one warm-up each
        let ps = ["ps", "-q"];
        let _ = cli.run(self, Via::Socket, &ps);
        if ssh_works {
            let _ = cli.run(self, Via::Ssh, &ps);
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut fails = 0;
        for _ in 0..ps_n {
            let (ms, ok, _, _) = cli.run(self, Via::Socket, &ps);
            if ok {
                a.push(ms)
            } else {
                fails += 1
            }
            if ssh_works {
                let (ms, ok, _, _) = cli.run(self, Via::Ssh, &ps);
                if ok {
                    b.push(ms)
                } else {
                    fails += 1
                }
            }
        }
        // The CLI's own start (no engine contact), the floor under either way.
        let mut floor = Vec::new();
        for _ in 0..ps_n {
            let (ms, ok, _, _) = cli.run(self, Via::Socket, &["--version"]);
            if ok {
                floor.push(ms);
            }
        }
        let (a, b) = (sorted(a), sorted(b));
        self.rep.note(format!(
            "engine: docker --version (the CLI starting, no engine): {}",
            dist(&sorted(floor))
        ));
        self.rep
            .note(format!("engine: docker ps via the socket: {}", dist(&a)));
        self.rep
            .note(format!("engine: docker ps via ssh://:    {}", dist(&b)));
        if fails > 0 {
            self.rep.note(format!("engine: {fails} docker ps failed"));
        }
        let ratio = pct(&b, 50.0) / pct(&a, 50.0);
        self.rep.row(
            &format!("docker ps ×{ps_n}: ssh:// / engine socket, ratio of medians"),
            if ssh_works {
                format!(
                    "{ratio:.1}× (socket p50 {:.1} / p99 {:.1} ms; ssh:// p50 {:.1} / p99 {:.1} ms)",
                    pct(&a, 50.0),
                    pct(&a, 99.0),
                    pct(&b, 50.0),
                    pct(&b, 99.0)
                )
            } else {
                format!(
                    "socket p50 {:.1} / p99 {:.1} ms; ssh:// did not work",
                    pct(&a, 50.0),
                    pct(&a, 99.0)
                )
            },
            "≥ 10×",
            Some(ssh_works && ratio >= 10.0 && fails == 0),
        );

        // --- what sshd saw: per 100 through the socket, per 10 over ssh://
        let w0 = witness(self);
        let mut failed = 0;
        for _ in 0..100 {
            if !cli.run(self, Via::Socket, &ps).1 {
                failed += 1;
            }
        }
        let w1 = witness(self);
        let (c, s) = (w1.0 - w0.0, w1.1 - w0.1);
        self.rep.row(
            "new SSH connections / sessions per 100 docker ps through the engine socket",
            format!(
                "{c} / {s}{}",
                if failed > 0 {
                    format!(" ({failed} commands failed)")
                } else {
                    String::new()
                }
            ),
            "0 / 0",
            Some(c == 0 && s == 0 && failed == 0),
        );
        if ssh_works {
            for _ in 0..10 {
                let _ = cli.run(self, Via::Ssh, &ps);
            }
            let w2 = witness(self);
            self.rep.row(
                "new SSH connections / sessions per 10 docker ps over ssh:// (contrast)",
                format!("{} / {}", w2.0 - w1.0, w2.1 - w1.1),
                "- (no target)",
                None,
            );
        }

        // --- docker cp in and out
        self.engine_cp(fwdd, &cli, ssh_works, cp_mib, cp_runs);
        self.rm_all();
    }

    fn engine_cp(&mut self, fwdd: &Fwdd, cli: &Cli, ssh_works: bool, mib: u64, runs: usize) {
        let pid = std::process::id();
        let src = TempFile(PathBuf::from(format!("/tmp/fwd-bench-cp-{pid}.bin")));
        let back = TempFile(PathBuf::from(format!("/tmp/fwd-bench-cp-{pid}.out")));
        let t = Instant::now();
        write_payload(&src.0, mib).expect("write the cp payload");
        println!(
            "  payload {} ({mib} MiB) written in {:.1} s",
            src.0.display(),
            t.elapsed().as_secs_f64()
        );
        let id = self.host.run(&[&self.host.image, "sleep", "3600"]);
        let src_s = src.0.to_string_lossy().into_owned();
        let back_s = back.0.to_string_lossy().into_owned();
        let inside = format!("{id}:/tmp/payload.bin");
        let ssh_limit = Duration::from_secs(120);
        let socket_limit = Duration::from_secs(600);
        let mut roles = vec![Role {
            name: "docker CLI (+its ssh)",
            root: 0,
            with_children: true,
        }];
        roles.push(Role {
            name: "fwdd",
            root: fwdd.pid(),
            with_children: false,
        });
        if let Some(m) = fwdd.master_pid() {
            roles.push(Role {
                name: "ssh master",
                root: m,
                with_children: false,
            });
        }
        if let Some(p) = self.host.sshd_pid() {
            roles.push(Role {
                name: "sshd (+dial-stdio)",
                root: p as u32,
                with_children: true,
            });
        }
        if let Some(p) = fs::read_to_string(self.sb.dir.join("docker.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            roles.push(Role {
                name: "dockerd (+children)",
                root: p,
                with_children: true,
            });
        }

        // (via, dir) → MiB/s of each run; `None` for a run over its time bound.
        let mut rates: HashMap<(bool, &'static str), Vec<Option<f64>>> = HashMap::new();
        let mut skipped: HashSet<&'static str> = HashSet::new();
        let mut socket_in_done = false;
        for run in 0..runs {
            for dir in ["in", "out"] {
                for via in [Via::Socket, Via::Ssh] {
                    if via == Via::Ssh && (!ssh_works || skipped.contains(dir)) {
                        continue;
                    }
                    if dir == "out" && !socket_in_done {
                        continue;
                    }
                    let _ = fs::remove_file(&back.0);
                    let args: Vec<&str> = if dir == "in" {
                        vec!["cp", &src_s, &inside]
                    } else {
                        vec!["cp", &inside, &back_s]
                    };
                    let limit = if via == Via::Ssh {
                        ssh_limit
                    } else {
                        socket_limit
                    };
                    let tag = format!(
                        "cp-{dir}-{}-{run}",
                        if via == Via::Ssh { "ssh" } else { "sock" }
                    );
                    let t = Instant::now();
                    let (mut child, err) = cli.spawn(self, via, &args, &tag);
                    let mut r = roles.clone();
                    r[0].root = child.id();
                    let watch = CpuWatch::start(r);
                    let status = wait_bounded(&mut child, limit);
                    let secs = t.elapsed().as_secs_f64();
                    let cpu = watch.finish();
                    let label = format!("cp {dir} via {} (run {})", via.name(), run + 1);
                    match status {
                        None => {
                            self.rep.note(format!(
                                "engine: {label}: SKIPPED, still running after {} s (killed; < {:.1} MiB/s)",
                                limit.as_secs(),
                                mib as f64 / limit.as_secs_f64()
                            ));
                            rates.entry((via == Via::Ssh, dir)).or_default().push(None);
                            if via == Via::Ssh {
                                skipped.insert(dir);
                            }
                            continue;
                        }
                        Some(st) if !st.success() => {
                            let e = fs::read_to_string(&err).unwrap_or_default();
                            self.rep
                                .note(format!("engine: {label} failed ({st}): {}", e.trim()));
                            continue;
                        }
                        Some(_) => {}
                    }
                    if dir == "out" {
                        let same = same_bytes(&src.0, &back.0).unwrap_or(false);
                        if !same {
                            self.rep.note(format!(
                                "engine: {label}: the copy differs from the original"
                            ));
                            continue;
                        }
                    } else if via == Via::Socket {
                        socket_in_done = true;
                    }
                    let rate = mib as f64 / secs;
                    println!("  {label}: {secs:.1} s, {rate:.0} MiB/s; CPU: {cpu}");
                    self.rep.note(format!(
                        "engine: {label}: {secs:.1} s = {rate:.0} MiB/s; CPU (% of one core): {cpu}"
                    ));
                    rates
                        .entry((via == Via::Ssh, dir))
                        .or_default()
                        .push(Some(rate));
                }
            }
        }
        let _ = fs::remove_file(&back.0);
        let best = |v: Option<&Vec<Option<f64>>>| -> Option<f64> {
            v?.iter().flatten().copied().reduce(f64::max)
        };
        for dir in ["in", "out"] {
            let s = best(rates.get(&(false, dir)));
            let h = best(rates.get(&(true, dir)));
            let over = rates
                .get(&(true, dir))
                .is_some_and(|v| v.iter().any(Option::is_none));
            let what = if dir == "in" {
                "into a container"
            } else {
                "out of a container"
            };
            let (measured, pass) = match (s, h) {
                (Some(s), Some(h)) => (
                    format!("{:.2}× ({s:.0} vs {h:.0} MiB/s)", s / h),
                    Some(s / h >= 0.9),
                ),
                (Some(s), None) if over => {
                    // ssh:// was slower than mib / limit: the ratio is at least this.
                    let floor = s / (mib as f64 / ssh_limit.as_secs_f64());
                    (
                        format!(
                            "> {floor:.2}× (socket {s:.0} MiB/s; ssh:// skipped: > {} s)",
                            ssh_limit.as_secs()
                        ),
                        Some(floor >= 0.9),
                    )
                }
                (Some(s), None) => (format!("socket {s:.0} MiB/s; ssh:// did not run"), None),
                (None, _) => ("socket cp failed".into(), Some(false)),
            };
            self.rep.row(
                &format!("docker cp {mib} MiB {what}, engine socket / ssh:// (best of {runs})"),
                measured,
                "≥ 0.9×",
                pass,
            );
        }
        let _ = self.sb.docker(&["rm", "-f", &id]);
        drop(src);
    }
}
