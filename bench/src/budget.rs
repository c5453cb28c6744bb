//! Descriptors as a budget (issue 29): what one forward, one tunnel and one
//! exposure cost fwdd and its ssh master, in descriptors and resident
//! memory, at 1,000 forwards, 5,000 held connections and 200 exposures.
//! fwdd runs with the limit it raises itself to (the bench's hard limit);
//! the remote sshd, whose session holds a socket per channel, gets the same.

#[allow(unused_imports)]
use super::*;

/// Forwards measured: one created container publishing this many ports
/// (never started: fwd binds them at create, Docker binds nothing).
const FIRST_FORWARD_PORT: u16 = 26000;
/// The held connections go to four ports of one container (the default
/// cap per forward, a quarter of the pool, is below 5,000 at a hard limit
/// of 20000).
const FIRST_TUNNEL_PORT: u16 = 25100;
const TUNNEL_PORTS: u16 = 4;
/// Exposures measured: the runner ports from here, each its own exposure
/// (a remote forward on the master and a socket of fwdd's).
const FIRST_EXPOSED_PORT: u16 = 28000;

/// A server that accepts on 8080-8083 and holds every connection until
/// its client closes (busybox has none that holds thousands cheaply).
const HOLDING_SERVER: &str = "
import asyncio
async def h(r, w):
    await r.read()
    w.close()
async def main():
    for p in range(8080, 8084):
        await asyncio.start_server(h, '0.0.0.0', p, backlog=4096)
    await asyncio.Event().wait()
asyncio.run(main())
";

/// Descriptors and resident memory of a process.
#[derive(Clone, Copy)]
struct Cost {
    fds: usize,
    rss_kb: u64,
}

fn cost(pid: u32) -> Cost {
    Cost {
        fds: fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        rss_kb: proc_status_field(pid, "VmRSS:"),
    }
}

fn per(before: Cost, after: Cost, n: usize) -> String {
    format!(
        "{:.2} fds, {:.1} kB (from {} to {} fds, {:.1} to {:.1} MB)",
        (after.fds as f64 - before.fds as f64) / n as f64,
        (after.rss_kb as f64 - before.rss_kb as f64) / n as f64,
        before.fds,
        after.fds,
        before.rss_kb as f64 / 1024.0,
        after.rss_kb as f64 / 1024.0
    )
}

fn open_count(fwdd: &Fwdd) -> u64 {
    fwdd.status()
        .map(|s| {
            s.forwards
                .iter()
                .filter(|f| {
                    (FIRST_TUNNEL_PORT..FIRST_TUNNEL_PORT + TUNNEL_PORTS).contains(&f.local_port)
                })
                .map(|f| f.connections_open)
                .sum()
        })
        .unwrap_or(0)
}

impl Ctx<'_> {
    pub(crate) fn budget(&mut self, forwards: usize, conns: usize, exposures: usize) {
        println!(
            "[budget] descriptors and memory at {forwards} forwards, {conns} held connections \
             and {exposures} exposures"
        );
        self.rm_all();
        // Exposures need sshd to bind the bridge gateway (this restarts
        // sshd: before its limit is raised and before fwdd connects).
        self.host.add_sshd_config("GatewayPorts clientspecified");
        // This process holds the clients; sshd's session holds a socket per
        // channel: both need the room fwdd gives itself.
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .expect("getrlimit");
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
            .expect("raise the bench's own limit");
        if let Some(sshd) = self.host.sshd_pid() {
            let mut cmd = Command::new("prlimit");
            cmd.arg(format!("--pid={sshd}"))
                .arg(format!("--nofile={hard}:{hard}"));
            run_ok(&mut cmd);
        }
        let fwdd = Fwdd::spawn(self.host, &self.bin_dir);
        assert!(
            fwdd.wait_connected(Duration::from_secs(30)),
            "fwdd did not connect"
        );
        let limits = fwdd.status().and_then(|s| s.limits).expect("limits");
        self.rep.note(format!(
            "budget: fwdd's open-files limit {} (raised from the bench's soft limit); caps: {} ports per container, {} forwards in all, {} connections per forward",
            limits.open_files_limit, limits.forwards_per_container, limits.forwards_total, limits.tunnels_per_forward
        ));
        let mut publish = Vec::new();
        for k in 0..TUNNEL_PORTS {
            publish.push("-p".to_string());
            publish.push(format!("{}:{}", FIRST_TUNNEL_PORT + k, 8080 + k));
        }
        let mut args: Vec<&str> = publish.iter().map(String::as_str).collect();
        args.extend_from_slice(&["--ulimit", "nofile=16384:16384", &self.host.image]);
        args.extend_from_slice(&["/usr/bin/python3", "-c", HOLDING_SERVER]);
        self.host.run_with_host_binaries(&args);
        let served = poll(Duration::from_secs(30), || {
            (0..TUNNEL_PORTS).all(|k| {
                self.host
                    .connect(FIRST_TUNNEL_PORT + k)
                    .map(|mut s| {
                        let _ = s.shutdown(std::net::Shutdown::Write);
                        let mut b = [0u8; 1];
                        // The server closes after our EOF: a tunnel that works.
                        matches!(s.read(&mut b), Ok(0))
                    })
                    .unwrap_or(false)
            })
        });
        assert!(served, "the holding server is not served");
        let mpid = fwdd.master_pid().expect("master");
        thread::sleep(Duration::from_secs(1));
        let (f0, m0) = (cost(fwdd.pid()), cost(mpid));

        // Forwards: one created container with `forwards` ports.
        let label = format!("{}={}", fwd_e2e::LABEL_KEY, self.host.label);
        let last = FIRST_FORWARD_PORT + forwards as u16 - 1;
        let range = format!("{FIRST_FORWARD_PORT}-{last}:{FIRST_FORWARD_PORT}-{last}");
        let created = self.sb.docker_ok(&[
            "create",
            "--label",
            &label,
            "-p",
            &range,
            &self.host.image,
            "sleep",
            "600",
        ]);
        let bound = poll(Duration::from_secs(60), || {
            fwdd.status().is_some_and(|s| {
                s.forwards
                    .iter()
                    .filter(|f| {
                        f.local_port >= FIRST_FORWARD_PORT && f.state == ForwardState::Pending
                    })
                    .count()
                    == forwards
            })
        });
        thread::sleep(Duration::from_secs(1));
        let (f1, m1) = (cost(fwdd.pid()), cost(mpid));
        self.rep.row(
            &format!("one forward, fwdd ({forwards} forwards)"),
            if bound {
                per(f0, f1, forwards)
            } else {
                "not all bound".into()
            },
            "- (no target)",
            None,
        );
        self.rep.row(
            &format!("one forward, ssh master ({forwards} forwards)"),
            per(m0, m1, forwards),
            "- (no target)",
            None,
        );
        let _ = self.sb.docker(&["rm", "-f", &created]);
        poll(Duration::from_secs(30), || {
            fwdd.status().is_some_and(|s| {
                !s.forwards
                    .iter()
                    .any(|f| f.local_port >= FIRST_FORWARD_PORT)
            })
        });
        thread::sleep(Duration::from_secs(1));
        let (f2, m2) = (cost(fwdd.pid()), cost(mpid));

        // Tunnels: `conns` idle connections over the four ports.
        let ns = self.ns();
        let clients = spawn_in_ns(&ns, move || {
            (0..conns)
                .filter_map(|i| {
                    let port = FIRST_TUNNEL_PORT + (i % TUNNEL_PORTS as usize) as u16;
                    TcpStream::connect_timeout(&local(port), Duration::from_secs(5)).ok()
                })
                .collect::<Vec<TcpStream>>()
        })
        .join()
        .expect("clients");
        let held = poll(Duration::from_secs(120), || {
            open_count(&fwdd) as usize >= conns
        });
        thread::sleep(Duration::from_secs(2));
        let (f3, m3) = (cost(fwdd.pid()), cost(mpid));
        let open = open_count(&fwdd) as usize;
        self.rep.row(
            &format!("one tunnel, fwdd ({open} held connections)"),
            if held {
                per(f2, f3, open)
            } else {
                format!("only {open} of {} held", clients.len())
            },
            "- (no target)",
            None,
        );
        self.rep.row(
            &format!("one tunnel, ssh master ({open} held connections)"),
            per(m2, m3, open.max(1)),
            "- (no target)",
            None,
        );
        drop(clients);
        let back = poll(Duration::from_secs(60), || open_count(&fwdd) == 0);
        thread::sleep(Duration::from_secs(2));
        let (f4, m4) = (cost(fwdd.pid()), cost(mpid));
        self.rep.row(
            "after the clients close: fwdd, ssh master",
            format!(
                "{} fds / {:.1} MB, {} fds / {:.1} MB (before: {} / {:.1}, {} / {:.1}){}",
                f4.fds,
                f4.rss_kb as f64 / 1024.0,
                m4.fds,
                m4.rss_kb as f64 / 1024.0,
                f2.fds,
                f2.rss_kb as f64 / 1024.0,
                m2.fds,
                m2.rss_kb as f64 / 1024.0,
                if back { "" } else { "; tunnels still open" }
            ),
            "- (no target)",
            None,
        );

        // Exposures: `exposures` runner ports the containers reach.
        let (f5, m5) = (cost(fwdd.pid()), cost(mpid));
        let socket = fwdd.runtime_dir.join(fwd_proto::CONTROL_SOCKET_NAME);
        for k in 0..exposures as u16 {
            let req = fwd_proto::Request::Expose {
                host: None,
                spec: (FIRST_EXPOSED_PORT + k).to_string(),
            };
            fwd_client::request(&socket, &req, Duration::from_secs(5)).expect("fwdctl expose");
        }
        let active = || {
            fwdd.status().map_or(0, |st| {
                st.exposed
                    .iter()
                    .filter(|e| e.remote_port >= FIRST_EXPOSED_PORT && e.state == "active")
                    .count()
            })
        };
        let all_active = poll(Duration::from_secs(120), || active() == exposures);
        thread::sleep(Duration::from_secs(1));
        let (f6, m6) = (cost(fwdd.pid()), cost(mpid));
        self.rep.row(
            &format!("one exposure, fwdd ({exposures} exposures)"),
            if all_active {
                per(f5, f6, exposures)
            } else {
                format!("only {} of {exposures} active", active())
            },
            "- (no target)",
            None,
        );
        self.rep.row(
            &format!("one exposure, ssh master ({exposures} exposures)"),
            per(m5, m6, exposures),
            "- (no target)",
            None,
        );
        fwdd.stop();
        self.rm_all();
    }
}
