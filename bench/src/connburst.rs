//! The connection-burst figures of issue 11 (part of the `burst` group): the master is
//! SIGKILLed and at that instant 500 clients connect to one forwarded port at once, each
//! on its own thread in the runner netns (connect + `GET /` + read to the end, 20 s
//! timeouts). fwdd accepts them all (its listen backlog is the kernel's somaxconn), holds
//! them until the new master is up, and hands them over at most 32 at a time.
//!
//! Each trial runs on a fresh fwdd, so the kill is always the first failure of its host
//! (no backoff; the `master` group's kills do not count against it) whatever ran before.
//! For contrast, the same 500 at steady state (no kill) through fwd and through a plain
//! `ssh -L` of its own (a separate SSH connection with a session open, `sleep` on the
//! remote side, as a user would forward by hand), alternating.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{
    dist, http_probe, local, poll, sorted, spawn_in_ns, tcp_ext, tcp_ext_in, Ctx, Fwdd, Outcome,
};
use super::{fmt_ms, HTTP_REQ};

/// The local port of the `ssh -L` contrast (not published: only in the runner netns).
const SSH_L_PORT: u16 = 24201;

/// The service behind the forwarded port.
struct Service {
    name: &'static str,
    port: u16,
    /// The container's command.
    cmd: Vec<String>,
}

/// busybox httpd as the other figures run it. It listens with a backlog of 9
/// (`xlisten(fd, 9)` in busybox's httpd.c) and forks per client.
fn httpd_f() -> Service {
    Service {
        name: "busybox httpd -f (listen backlog 9)",
        port: 24200,
        cmd: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
            .map(String::from)
            .to_vec(),
    }
}

/// The same httpd behind busybox `nc -ll… -e`: nc listens with a backlog of one per
/// `-l` (`xlisten(sfd, do_listen)`), forks per client and execs `httpd -i` (inetd mode)
/// on it: the same answer from a service that does not drop a burst's SYNs.
fn httpd_backlog() -> Service {
    let ls = format!("-{}", "l".repeat(1024));
    Service {
        name: "the same httpd -i behind nc -l×1024 -e (listen backlog 1024)",
        port: 24202,
        cmd: vec![
            "/bin/nc".into(),
            ls,
            "-p".into(),
            "8080".into(),
            "-e".into(),
            "/bin/httpd".into(),
            "-i".into(),
            "-h".into(),
            "/www".into(),
        ],
    }
}

/// One client of a burst.
struct Answer {
    first_byte: Option<Instant>,
    end: Instant,
    outcome: Result<(), String>,
}

fn client(addr: SocketAddr) -> Answer {
    let mut first_byte = None;
    let mut run = || -> io::Result<Result<(), String>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(20))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(HTTP_REQ)?;
        let mut buf = vec![0u8; 4096];
        let k = s.read(&mut buf)?;
        if k == 0 {
            return Ok(Err("closed before any byte".into()));
        }
        first_byte = Some(Instant::now());
        buf.truncate(k);
        s.take(64 * 1024).read_to_end(&mut buf)?;
        let ok = buf.starts_with(b"HTTP/1.")
            && buf.get(9) == Some(&b'2')
            && buf.ends_with(b"\r\n\r\nhello\n");
        Ok(if ok {
            Ok(())
        } else {
            Err("not a whole 2xx answer".into())
        })
    };
    let outcome = match run() {
        Ok(r) => r,
        Err(e) => Err(e.kind().to_string()),
    };
    Answer {
        first_byte,
        end: Instant::now(),
        outcome,
    }
}

/// `n` clients of `127.0.0.1:port`, each on its own thread in `ns`, all blocked on one
/// gate; once all are waiting, `trigger` runs (returns the instant that counts as 0) and
/// the gate opens. Returns that instant and the answers.
fn burst(
    ns: &str,
    port: u16,
    n: usize,
    trigger: impl FnOnce() -> Instant,
) -> (Instant, Vec<Answer>) {
    let gate = Arc::new(RwLock::new(()));
    let closed = gate.write().expect("gate");
    let ready = Arc::new(AtomicUsize::new(0));
    let (g, r) = (gate.clone(), ready.clone());
    let coord = spawn_in_ns(ns, move || {
        let mut kids = Vec::with_capacity(n);
        for _ in 0..n {
            let (g, r) = (g.clone(), r.clone());
            // Threads inherit the netns of the thread that spawns them.
            let k = thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                    drop(g.read().expect("gate"));
                    client(local(port))
                })
                .expect("spawn a client thread");
            kids.push(k);
        }
        kids.into_iter()
            .map(|k| {
                k.join().unwrap_or_else(|_| Answer {
                    first_byte: None,
                    end: Instant::now(),
                    outcome: Err("client panicked".into()),
                })
            })
            .collect::<Vec<_>>()
    });
    // All threads parked at the gate (bounded: a failed spawn panics the coordinator).
    poll(Duration::from_secs(30), || {
        ready.load(Ordering::SeqCst) >= n || coord.is_finished()
    });
    thread::sleep(Duration::from_millis(20));
    let t0 = trigger();
    drop(closed);
    let answers = coord.join().expect("burst clients");
    (t0, answers)
}

/// served, kill → first / last answer (ms), last − first (ms), failures by reason.
struct Summary {
    served: usize,
    n: usize,
    first: f64,
    last: f64,
    fails: Vec<(String, usize)>,
    first_bytes: Vec<f64>,
}

impl Summary {
    fn of(t0: Instant, answers: &[Answer]) -> Summary {
        let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1e3;
        let ends: Vec<f64> = sorted(
            answers
                .iter()
                .filter(|a| a.outcome.is_ok())
                .map(|a| ms(a.end))
                .collect(),
        );
        let mut fails: Vec<(String, usize)> = Vec::new();
        for a in answers {
            if let Err(e) = &a.outcome {
                match fails.iter_mut().find(|(r, _)| r == e) {
                    Some((_, c)) => *c += 1,
                    None => fails.push((e.clone(), 1)),
                }
            }
        }
        Summary {
            served: ends.len(),
            n: answers.len(),
            first: ends.first().copied().unwrap_or(f64::INFINITY),
            last: ends.last().copied().unwrap_or(f64::INFINITY),
            fails,
            first_bytes: sorted(
                answers
                    .iter()
                    .filter(|a| a.outcome.is_ok())
                    .filter_map(|a| a.first_byte.map(ms))
                    .collect(),
            ),
        }
    }

    fn spread(&self) -> f64 {
        self.last - self.first
    }

    fn fails_text(&self) -> String {
        if self.fails.is_empty() {
            return "none failed".into();
        }
        self.fails
            .iter()
            .map(|(r, c)| format!("{c}× {r}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// where the CPU goes during a burst: two snapshots of /proc

/// One process: ppid, comm, cmdline, and utime+stime+cutime+cstime in seconds (a child
/// that ends and is reaped moves its CPU to its parent: busybox httpd forks per client).
pub(crate) struct Proc {
    ppid: u32,
    pub(crate) comm: String,
    pub(crate) cmdline: String,
    pub(crate) cpu: f64,
}

pub(crate) fn procs() -> HashMap<u32, Proc> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
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
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|x| x.1).unwrap_or("").to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // after ')': state=0 ppid=1 … utime=11 stime=12 cutime=13 cstime=14
        let cpu = (num(11) + num(12) + num(13) + num(14)) / ticks;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        m.insert(
            pid,
            Proc {
                ppid: num(1) as u32,
                comm,
                cmdline,
                cpu,
            },
        );
    }
    m
}

/// Busy and total jiffies of all CPUs (/proc/stat).
fn cpu_jiffies() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The processes on a burst's path, by role.
struct CpuRoles {
    fwdd: u32,
    ssh_l: Option<u32>,
    sshd: Option<u32>,
    dockerd: Option<u32>,
    /// containerd shims of this sandbox have its directory in their command line.
    sandbox_dir: String,
}

struct CpuSnap {
    at: Instant,
    procs: HashMap<u32, Proc>,
    jiffies: (u64, u64),
}

fn snap() -> CpuSnap {
    CpuSnap {
        at: Instant::now(),
        procs: procs(),
        jiffies: cpu_jiffies(),
    }
}

pub(crate) fn descendants(p: &HashMap<u32, Proc>, root: u32) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(p.iter().filter(|(_, x)| x.ppid == parent).map(|(k, _)| *k));
        i += 1;
    }
    out
}

impl CpuRoles {
    /// CPU per role between two snapshots, as % of one core; and the machine's busy %.
    fn between(&self, a: &CpuSnap, b: &CpuSnap) -> String {
        let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
        let me = std::process::id();
        let p = &b.procs;
        let kids = |root: u32| -> Vec<u32> { descendants(p, root) };
        let mut roles: Vec<(&str, Vec<u32>)> = vec![
            ("clients (fwd-bench)", vec![me]),
            ("fwdd", vec![self.fwdd]),
            // fwdd's children: the master (and any ssh -W)
            ("ssh master", kids(self.fwdd).into_iter().skip(1).collect()),
        ];
        if let Some(l) = self.ssh_l {
            roles.push(("ssh -L", vec![l]));
        }
        if let Some(s) = self.sshd {
            roles.push(("sshd", kids(s)));
        }
        if let Some(d) = self.dockerd {
            let all = kids(d);
            let proxies: Vec<u32> = all
                .iter()
                .copied()
                .filter(|x| p.get(x).is_some_and(|q| q.comm == "docker-proxy"))
                .collect();
            let rest: Vec<u32> = all.into_iter().filter(|x| !proxies.contains(x)).collect();
            roles.push(("docker-proxy", proxies));
            roles.push(("dockerd+containerd", rest));
        }
        let shims: Vec<u32> = p
            .iter()
            .filter(|(_, q)| {
                q.comm.starts_with("containerd-shim") && q.cmdline.contains(&self.sandbox_dir)
            })
            .flat_map(|(k, _)| kids(*k))
            .collect();
        roles.push(("containers (httpd)", shims));
        let mut parts = Vec::new();
        for (name, pids) in roles {
            let c: f64 = pids
                .iter()
                .filter_map(|pid| {
                    let end = b.procs.get(pid)?.cpu;
                    let start = a.procs.get(pid).map_or(0.0, |q| q.cpu);
                    Some((end - start).max(0.0))
                })
                .sum();
            parts.push(format!("{name} {:.0}%", c / wall * 100.0));
        }
        let (busy, total) = (
            b.jiffies.0.saturating_sub(a.jiffies.0),
            b.jiffies.1.saturating_sub(a.jiffies.1),
        );
        let cores = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        format!(
            "CPU over {wall:.1} s (% of one core): {}; machine busy {:.0}% of {cores:.0} cores",
            parts.join(", "),
            busy as f64 / total.max(1) as f64 * 100.0
        )
    }
}

/// Kernel counters that show SYNs a listener dropped: ListenOverflows of the runner
/// netns (fwdd's or ssh -L's listener), of the remote netns (docker-proxy) and of the
/// container's netns (the service), seen through its pid.
fn listen_drops(ns: &str, remote_ns: &str, container_pid: Option<u32>) -> [u64; 3] {
    let c = container_pid
        .and_then(|p| fs::read_to_string(format!("/proc/{p}/net/netstat")).ok())
        .map_or(0, |t| tcp_ext_in(&t, "ListenOverflows"));
    [
        tcp_ext(ns, "ListenOverflows"),
        tcp_ext(remote_ns, "ListenOverflows"),
        c,
    ]
}

fn drops_text(a: [u64; 3], b: [u64; 3]) -> String {
    format!(
        "ListenOverflows runner +{}, remote +{}, container +{}",
        b[0].saturating_sub(a[0]),
        b[1].saturating_sub(a[1]),
        b[2].saturating_sub(a[2])
    )
}

impl Ctx<'_> {
    /// Waits until one GET through `port` in the runner netns succeeds.
    fn serving(&self, port: u16, timeout: Duration) -> bool {
        let ns = self.ns();
        poll(timeout, || {
            fwd_e2e::in_netns(&ns, || http_probe(local(port))) == Outcome::Ok
        })
    }

    pub(crate) fn conn_burst(&mut self, n: usize, trials: usize) {
        println!(
            "[burst] master SIGKILL + {n} concurrent connections ({trials} trials, fresh fwdd each); \
             then {n} at steady state via fwd, ssh -L and straight to docker-proxy; two services"
        );
        for svc in [httpd_f(), httpd_backlog()] {
            self.conn_burst_on(&svc, n, trials);
        }
    }

    fn conn_burst_on(&mut self, svc: &Service, n: usize, trials: usize) {
        println!("  service: {}", svc.name);
        let ns = self.ns();
        let remote_ns = self.host.remote_ns.clone();
        let port = svc.port;
        let publish = format!("{port}:8080");
        let mut args: Vec<&str> = vec!["-p", &publish, &self.host.image];
        args.extend(svc.cmd.iter().map(String::as_str));
        let id = self.host.run(&args);
        let cpid: Option<u32> = self
            .sb
            .docker_ok(&["inspect", "-f", "{{.State.Pid}}", &id])
            .parse()
            .ok();
        let mut kill_rows = Vec::new();
        let mut last_fwdd: Option<Fwdd> = None;
        for trial in 0..trials {
            if let Some(f) = last_fwdd.take() {
                f.stop();
            }
            // Failure paths of a hand-off log at debug; the served path logs nothing.
            let fwdd = Fwdd::spawn_env(
                self.host,
                &self.bin_dir,
                &[("FWD_LOG", "info,fwdd::forwards=debug")],
            );
            assert!(
                fwdd.wait_connected(Duration::from_secs(30)),
                "fwdd did not connect"
            );
            assert!(
                poll(Duration::from_secs(20), || fwdd.remote_of(port).is_some()),
                "no forward of {port}"
            );
            assert!(
                self.serving(port, Duration::from_secs(20)),
                "{port} not serving"
            );
            thread::sleep(Duration::from_secs(1));
            let old = fwdd.master_pid().expect("master pid");
            let logs0 = fwdd.log_text().len();
            let d0 = listen_drops(&ns, &remote_ns, cpid);
            // The new master as `status` shows it, polled every 10 ms from the kill.
            let t_kill = std::sync::OnceLock::<Instant>::new();
            let mut cpu0 = None;
            let (t0, answers, master_back) = thread::scope(|s| {
                let watcher = s.spawn(|| {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while t_kill.get().is_none() && Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(1));
                    }
                    while Instant::now() < deadline {
                        if fwdd.master_pid().is_some_and(|p| p != old) {
                            return Some(Instant::now());
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                    None
                });
                let (t0, answers) = burst(&ns, port, n, || {
                    cpu0 = Some(snap());
                    let t = Instant::now();
                    kill(Pid::from_raw(old as i32), Signal::SIGKILL).expect("kill master");
                    let _ = t_kill.set(t);
                    t
                });
                let back = watcher.join().expect("watcher");
                (t0, answers, back)
            });
            let cpu1 = snap();
            let d1 = listen_drops(&ns, &remote_ns, cpid);
            let sum = Summary::of(t0, &answers);
            let cpu = cpu0
                .map(|c| self.cpu_roles(&fwdd, None).between(&c, &cpu1))
                .unwrap_or_default();
            let log = fwdd.log_text();
            let new_log = log.get(logs0..).unwrap_or("");
            let fallbacks = new_log.matches("trying ssh -W").count();
            let no_master = new_log.matches("no master in time").count();
            let back_ms = master_back
                .map(|t| t.duration_since(t0).as_secs_f64() * 1e3)
                .unwrap_or(f64::INFINITY);
            println!(
                "  trial {}: {}/{} served, first {:.0} ms, last {:.0} ms after the kill",
                trial + 1,
                sum.served,
                sum.n,
                sum.first,
                sum.last
            );
            self.rep.note(format!(
                "burst (kill, {}, trial {}): {}/{} served ({}); new master in status {} ms after the kill; \
                 answers at {:.0} … {:.0} ms; first bytes {}; hand-offs that fell back to ssh -W: {fallbacks}, \
                 closed for no master: {no_master}; {}; {cpu}",
                svc.name,
                trial + 1,
                sum.served,
                sum.n,
                sum.fails_text(),
                fmt_ms(back_ms),
                sum.first,
                sum.last,
                dist(&sum.first_bytes),
                drops_text(d0, d1)
            ));
            kill_rows.push(sum);
            last_fwdd = Some(fwdd);
        }
        let fwdd = last_fwdd.expect("at least one trial");
        let all_served = kill_rows.iter().all(|s| s.served == s.n);
        let worst = kill_rows
            .iter()
            .map(Summary::spread)
            .fold(f64::NEG_INFINITY, f64::max);
        let list =
            |f: &dyn Fn(&Summary) -> String| kill_rows.iter().map(f).collect::<Vec<_>>().join(", ");
        self.rep.row(
            &format!(
                "master SIGKILL + {n} concurrent connections at once ({trials} trials), {}",
                svc.name
            ),
            format!(
                "served {}; kill → first answer {} ms, → last {} ms; last − first {} ms",
                list(&|s| format!("{}/{}", s.served, s.n)),
                list(&|s| fmt_ms(s.first)),
                list(&|s| fmt_ms(s.last)),
                list(&|s| fmt_ms(s.spread()))
            ),
            &format!("{n}/{n}, last − first ≤ 1 s"),
            Some(all_served && worst <= 1000.0),
        );

        // --- steady state: fwd, a plain ssh -L of its own, and no SSH at all; alternating
        assert!(fwdd.wait_connected(Duration::from_secs(30)));
        let remote = fwdd.remote_of(port).expect("remote of the forward");
        let mut ssh_l = self.spawn_ssh_l(SSH_L_PORT, &remote);
        let ssh_ok = self.serving(SSH_L_PORT, Duration::from_secs(20));
        if !ssh_ok {
            self.rep.note(format!(
                "burst: ssh -L 127.0.0.1:{SSH_L_PORT}:{remote} never served"
            ));
        }
        let mut via: [Vec<Summary>; 3] = Default::default();
        let names = ["fwd", "ssh -L", "direct in the remote netns"];
        for _round in 0..2 {
            for (i, name) in names.iter().enumerate() {
                if i == 1 && !ssh_ok {
                    continue;
                }
                // fwd and ssh -L from the runner netns; the floor: straight to the
                // published port (docker-proxy) on the Docker host, no SSH at all.
                let (bns, p) = match i {
                    0 => (&ns, port),
                    1 => (&ns, SSH_L_PORT),
                    _ => (&remote_ns, port),
                };
                thread::sleep(Duration::from_millis(500));
                let d0 = listen_drops(&ns, &remote_ns, cpid);
                let mut cpu0 = None;
                let (t0, answers) = burst(bns, p, n, || {
                    cpu0 = Some(snap());
                    Instant::now()
                });
                let cpu1 = snap();
                let d1 = listen_drops(&ns, &remote_ns, cpid);
                let sum = Summary::of(t0, &answers);
                let roles = self.cpu_roles(&fwdd, (i == 1).then(|| ssh_l.id()));
                let cpu = cpu0.map(|c| roles.between(&c, &cpu1)).unwrap_or_default();
                self.rep.note(format!(
                    "burst (steady, {}, {name}): {}/{} served ({}); answers at {:.0} … {:.0} ms; first bytes {}; {}; {cpu}",
                    svc.name,
                    sum.served,
                    sum.n,
                    sum.fails_text(),
                    sum.first,
                    sum.last,
                    dist(&sum.first_bytes),
                    drops_text(d0, d1)
                ));
                via[i].push(sum);
            }
        }
        let _ = ssh_l.kill();
        let _ = ssh_l.wait();
        let show = |v: &[Summary]| {
            v.iter()
                .map(|s| {
                    format!(
                        "{} ms ({}/{}, first at {:.0})",
                        fmt_ms(s.spread()),
                        s.served,
                        s.n,
                        s.first
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let [via_fwd, via_ssh, via_direct] = via;
        self.rep.row(
            &format!(
                "{n} concurrent connections at steady state, {}: last − first, fwd",
                svc.name
            ),
            show(&via_fwd),
            "- (no target)",
            None,
        );
        self.rep.row(
            "… plain ssh -L (own connection, session open)",
            if ssh_ok {
                show(&via_ssh)
            } else {
                "ssh -L did not serve".into()
            },
            "- (no target)",
            None,
        );
        self.rep.row(
            "… straight to the published port on the Docker host (no SSH: the floor)",
            show(&via_direct),
            "- (no target)",
            None,
        );
        fwdd.stop();
        let _ = self.sb.docker(&["rm", "-f", &id]);
    }

    /// CPU seconds the Docker host spends while `work` runs: this host's sshd
    /// (its connections' processes included), and every docker-proxy of the
    /// sandbox's dockerd. Returns (sshd, docker-proxy).
    pub(crate) fn remote_cpu(&self, work: impl FnOnce()) -> (f64, f64) {
        let sshd = self.host.sshd_pid().map(|p| p as u32);
        let dockerd: Option<u32> = fs::read_to_string(self.sb.dir.join("docker.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let a = procs();
        work();
        let b = procs();
        let spent = |pids: Vec<u32>| -> f64 {
            pids.iter()
                .filter_map(|pid| {
                    let end = b.get(pid)?.cpu;
                    let start = a.get(pid).map_or(0.0, |q| q.cpu);
                    Some((end - start).max(0.0))
                })
                .sum()
        };
        let sshd_pids = sshd.map(|s| descendants(&b, s)).unwrap_or_default();
        let proxies: Vec<u32> = dockerd
            .map(|d| descendants(&b, d))
            .unwrap_or_default()
            .into_iter()
            .filter(|x| b.get(x).is_some_and(|q| q.comm == "docker-proxy"))
            .collect();
        (spent(sshd_pids), spent(proxies))
    }

    fn cpu_roles(&self, fwdd: &Fwdd, ssh_l: Option<u32>) -> CpuRoles {
        CpuRoles {
            fwdd: fwdd.pid(),
            ssh_l,
            sshd: self.host.sshd_pid().map(|p| p as u32),
            dockerd: fs::read_to_string(self.sb.dir.join("docker.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            sandbox_dir: self.sb.dir.to_string_lossy().into_owned(),
        }
    }

    /// `ssh -L 127.0.0.1:<lport>:<remote>` in the runner netns: its own
    /// connection (no ControlMaster) with a session open.
    pub(crate) fn spawn_ssh_l(&self, lport: u16, remote: &str) -> Child {
        self.spawn_ssh_forwarding(&["-L", &format!("127.0.0.1:{lport}:{remote}")])
    }

    /// `ssh <forwarding args> <alias> cat` in the runner netns: what a user
    /// runs instead of fwd, on its own connection with a session open (so
    /// OpenSSH turns TCP_NODELAY on). The session's `cat` reads a pipe the
    /// child holds, so it ends on the host with the connection (a `sleep`
    /// was left running there).
    pub(crate) fn spawn_ssh_forwarding(&self, forwards: &[&str]) -> Child {
        let mut cmd = self.host.ssh_command();
        cmd.args([
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "-o",
            "ExitOnForwardFailure=yes",
        ])
        .args(forwards)
        .args([&self.host.alias, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd.spawn().expect("spawn ssh")
    }
}
