//! Every container by name (issue 31), on an fwdd of its own with
//! `names = true` (and no system hosts file: names resolve through fwdd's
//! own `<runtime>/hosts`, which is what the bench reads, as a resolver would).
//!
//! - container start → name answers: N times `docker run --expose 8080
//!   --name … httpd` (nothing published), and a prober that reads the hosts
//!   file every millisecond, and once the name is there connects to its
//!   address and sends `GET /` until the first byte of the answer. Each run
//!   alternates with the same container published (`-p P:8080`) and probed
//!   at `127.0.0.1:P`, the forward's figure in the same run.
//! - connection setup (connect + `GET /` + first byte) and throughput (bulk
//!   bytes from the container) to one container through its name, through
//!   the forward of its published port, and through a separate `ssh -L` to
//!   the container's own address: interleaved, as ratios of one run (the
//!   transfers best of 3, each round led by another path).

#[allow(unused_imports)]
use super::*;

/// Host ports of this group (the other figures use 20000-26999 except
/// 25000-25099, 28000+ and 30000+).
const START_PORT: u16 = 27000;
const SETUP_PORT: u16 = 27500;
const SSH_L_SETUP_PORT: u16 = 27501;
const BULK_PORT: u16 = 27502;
const SSH_L_BULK_PORT: u16 = 27503;

/// The address `name` resolves to in the hosts file at `path`, if it is there.
fn resolve(path: &Path, name: &str) -> Option<Ipv4Addr> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            let addr = fields.next()?;
            fields
                .any(|n| n == name)
                .then(|| addr.parse().ok())
                .flatten()
        })
}

/// The host name a container's name answers as (fwd spells underscores
/// as hyphens).
fn dns(container_name: &str) -> String {
    container_name.replace('_', "-")
}

/// p50 / p90 / max of a sorted slice.
fn p50_p90(v: &[f64]) -> String {
    format!(
        "p50 {:.1} / p90 {:.1} / max {:.1} ms (n={})",
        pct(v, 50.0),
        pct(v, 90.0),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    )
}

/// Connection setup (connect + first byte, ms) to each of `addrs`, in turn,
/// `conns` rounds after 20 warm-ups, in network namespace `ns`; at most 5
/// minutes.
fn interleaved_first_byte(ns: &str, addrs: Vec<SocketAddr>, conns: usize) -> Vec<Vec<f64>> {
    spawn_in_ns(ns, move || {
        let mut times = vec![Vec::new(); addrs.len()];
        for _ in 0..20 {
            for a in &addrs {
                let _ = first_byte(*a, Duration::from_secs(5));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        for round in 0..conns {
            if Instant::now() > deadline {
                break;
            }
            // Each path goes first as often as the others: the first of a
            // round finds the caches the previous round's last one left.
            for k in 0..addrs.len() {
                let i = (round + k) % addrs.len();
                let t = Instant::now();
                if first_byte(addrs[i], Duration::from_secs(5)).is_ok() {
                    times[i].push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        times
    })
    .join()
    .expect("setup bench")
}

impl Ctx<'_> {
    /// fwdd with `names = true` for the bench's host (the runtime directory
    /// every bench fwdd uses: run it alone).
    fn names_fwdd(&self) -> Fwdd {
        let toml = format!(
            "[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{}\"\nnames = true\n",
            self.host.alias,
            self.host.ssh_config.display()
        );
        let path = self.host.dir.join("fwdd-names.toml");
        fs::write(&path, toml).expect("write fwdd-names.toml");
        let fwdd = Fwdd::spawn_with_config(self.host, &self.bin_dir, &path);
        assert!(
            fwdd.wait_connected(Duration::from_secs(30)),
            "fwdd did not connect"
        );
        fwdd
    }

    pub(crate) fn names(&mut self, fwdd_runs: usize, conns: usize, mib: u64) {
        println!(
            "[names] {fwdd_runs} × container start → name answers (and → published port, \
             alternating); {conns} × setup and {mib} MiB, name / forward / ssh -L"
        );
        self.rm_all();
        let fwdd = self.names_fwdd();
        let hosts = fwdd.runtime_dir.join("hosts");
        self.names_start(&hosts, fwdd_runs);
        self.rm_all();
        self.names_setup(&fwdd, conns);
        self.names_throughput(&fwdd, mib);
        fwdd.stop();
        self.rm_all();
    }

    /// `docker run --expose 8080 --name N httpd` → the first byte of `GET /`
    /// at N's address as the hosts file says it; alternating with the same
    /// container published at a port and probed there.
    fn names_start(&mut self, hosts: &Path, runs: usize) {
        let (mut by_name, mut by_port) = (Vec::new(), Vec::new());
        let (mut from_run_name, mut from_run_port) = (Vec::new(), Vec::new());
        let mut missing = 0;
        for i in 0..runs {
            for published in [false, true] {
                let container =
                    format!("{}-n{i}{}", self.host.label, ["", "p"][published as usize]);
                let name = dns(&container);
                let port = START_PORT + i as u16;
                let hosts = hosts.to_path_buf();
                let prober = spawn_in_ns(&self.ns(), move || {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while Instant::now() < deadline {
                        let addr = if published {
                            Some(local(port))
                        } else {
                            resolve(&hosts, &name).map(|a| SocketAddr::from((a, 8080)))
                        };
                        if let Some(addr) = addr {
                            if first_byte(addr, Duration::from_secs(2)).is_ok() {
                                return Some(now_ns());
                            }
                        }
                        thread::sleep(Duration::from_millis(1));
                    }
                    None
                });
                let publish = format!("{port}:8080");
                let mut opts = vec!["--name", &container, "--expose", "8080"];
                if published {
                    opts.extend_from_slice(&["-p", &publish]);
                }
                let id = self.host.httpd_with(&opts);
                let returned = now_ns();
                let answered = prober.join().expect("prober");
                let started = docker_time(self.sb, &id, "StartedAt");
                let Some(t) = answered else {
                    missing += 1;
                    continue;
                };
                let (lat, from_run) = if published {
                    (&mut by_port, &mut from_run_port)
                } else {
                    (&mut by_name, &mut from_run_name)
                };
                lat.push((t - started) as f64 / 1e6);
                from_run.push((t - returned) as f64 / 1e6);
            }
        }
        let (by_name, by_port) = (sorted(by_name), sorted(by_port));
        self.rep.note(format!(
            "names: docker run's return → name answers: {}; → published port answers: {}",
            p50_p90(&sorted(from_run_name)),
            p50_p90(&sorted(from_run_port))
        ));
        self.rep.note(format!(
            "names: StartedAt → published port answers (same run, alternating): {}",
            p50_p90(&by_port)
        ));
        if missing > 0 {
            self.rep.note(format!(
                "names: {missing} containers never answered within 20 s"
            ));
        }
        self.rep.row(
            "container start (StartedAt) → name answers, `--expose` only",
            format!(
                "{} (published port: p50 {:.1} ms, {:.2}×)",
                p50_p90(&by_name),
                pct(&by_port, 50.0),
                pct(&by_name, 50.0) / pct(&by_port, 50.0)
            ),
            "p50 ≤ 1.10× the published port's",
            Some(missing == 0 && pct(&by_name, 50.0) <= pct(&by_port, 50.0) * 1.10),
        );
    }

    /// The name's address of the container `id` once it serves `port`.
    fn named_address(&self, fwdd: &Fwdd, id: &str, port: u16) -> Ipv4Addr {
        let mut address = None;
        let served = poll(Duration::from_secs(20), || {
            address = fwdd.status().and_then(|s| {
                s.names
                    .into_iter()
                    .find(|n| id.starts_with(&n.container_id) || n.container_id.starts_with(id))
                    .filter(|n| n.state == "serving" && n.ports.contains(&port))
                    .and_then(|n| n.address)
            });
            address.is_some()
        });
        assert!(served, "container {id} never served by name on {port}");
        address.expect("address")
    }

    /// The container's own address on its network, what `ssh -L` goes to.
    fn container_ip(&self, id: &str) -> String {
        self.sb.docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            id,
        ])
    }

    fn names_setup(&mut self, fwdd: &Fwdd, conns: usize) {
        println!(
            "[names setup] {conns} × connect+first byte, name / forward / ssh -L (interleaved)"
        );
        let container = format!("{}-setup", self.host.label);
        let id = self
            .host
            .httpd_with(&["--name", &container, "-p", &format!("{SETUP_PORT}:8080")]);
        let address = self.named_address(fwdd, &id, 8080);
        assert!(poll(Duration::from_secs(20), || fwdd
            .remote_of(SETUP_PORT)
            .is_some()));
        let remote = format!("{}:8080", self.container_ip(&id));
        let mut ssh_l = self.ssh_l_serving(SSH_L_SETUP_PORT, &remote);
        let times = interleaved_first_byte(
            &self.ns(),
            vec![
                SocketAddr::from((address, 8080)),
                local(SETUP_PORT),
                local(SSH_L_SETUP_PORT),
            ],
            conns,
        );
        let _ = ssh_l.kill();
        let _ = ssh_l.wait();
        let [name, port, ssh] = [0, 1, 2].map(|i| sorted(times[i].clone()));
        self.rep
            .note(format!("setup by name      : {}", dist(&name)));
        self.rep
            .note(format!("setup by forward   : {}", dist(&port)));
        self.rep
            .note(format!("setup by ssh -L    : {}", dist(&ssh)));
        let m = |v: &[f64]| pct(v, 50.0);
        self.rep.row(
            "new connection setup (connect + first byte), name / published-port forward",
            format!(
                "{:.2}× (median {:.2} vs {:.2} ms, n={})",
                m(&name) / m(&port),
                m(&name),
                m(&port),
                name.len().min(port.len())
            ),
            "≤ 1.10×",
            Some(m(&name) / m(&port) <= 1.10),
        );
        self.rep.row(
            "new connection setup, name / separate ssh -L to the container's address",
            format!(
                "{:.2}× (median {:.2} vs {:.2} ms, n={})",
                m(&name) / m(&ssh),
                m(&name),
                m(&ssh),
                name.len().min(ssh.len())
            ),
            "≤ 1.10×",
            Some(m(&name) / m(&ssh) <= 1.10),
        );
    }

    fn names_throughput(&mut self, fwdd: &Fwdd, mib: u64) {
        println!("[names throughput] {mib} MiB, name / forward / ssh -L (interleaved, 3 each)");
        let container = format!("{}-bulk", self.host.label);
        let script = format!(
            "while :; do /bin/busybox dd if=/dev/zero bs=1048576 count={mib} 2>/dev/null | /bin/busybox nc -l -p 9000; done"
        );
        let id = self.host.run(&[
            "--name",
            &container,
            "-p",
            &format!("{BULK_PORT}:9000"),
            &self.host.image,
            "/bin/sh",
            "-c",
            &script,
        ]);
        let address = self.named_address(fwdd, &id, 9000);
        assert!(poll(Duration::from_secs(20), || fwdd
            .remote_of(BULK_PORT)
            .is_some()));
        let remote = format!("{}:9000", self.container_ip(&id));
        let mut ssh_l = self.ssh_l_serving(SSH_L_BULK_PORT, &remote);
        let want = mib * 1024 * 1024;
        let paths = [
            SocketAddr::from((address, 9000)),
            local(BULK_PORT),
            local(SSH_L_BULK_PORT),
        ];
        let runs = spawn_in_ns(&self.ns(), move || {
            let transfer = |to: SocketAddr| transfer_mib_s(to, want);
            let mut runs = vec![Vec::new(); paths.len()];
            for round in 0..3 {
                // Each round begins with another path (see the setup's).
                for k in 0..paths.len() {
                    let i = (round + k) % paths.len();
                    runs[i].extend(transfer(paths[i]));
                    thread::sleep(Duration::from_millis(300));
                }
            }
            runs
        })
        .join()
        .expect("throughput bench");
        let _ = ssh_l.kill();
        let _ = ssh_l.wait();
        let best = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        let [name, port, ssh] = [0, 1, 2].map(|i| best(&runs[i]));
        let [name_m, port_m, ssh_m] = [0, 1, 2].map(|i| pct(&sorted(runs[i].clone()), 50.0));
        self.rep.note(format!(
            "names throughput runs (MiB/s): name {:.0?}, forward {:.0?}, ssh -L {:.0?}; \
             ratios of the medians: name / forward {:.2}×, name / ssh -L {:.2}×",
            runs[0],
            runs[1],
            runs[2],
            name_m / port_m,
            name_m / ssh_m
        ));
        self.rep.row(
            &format!("throughput of {mib} MiB, name / published-port forward (best of 3)"),
            format!("{:.2}× ({name:.0} vs {port:.0} MiB/s)", name / port),
            "≥ 0.95×",
            Some(name / port >= 0.95),
        );
        self.rep.row(
            &format!("throughput of {mib} MiB, name / separate ssh -L (best of 3)"),
            format!("{:.2}× ({name:.0} vs {ssh:.0} MiB/s)", name / ssh),
            "≥ 0.95×",
            Some(name / ssh >= 0.95),
        );
    }
}
