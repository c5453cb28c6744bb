//! Containers reach the runner (issue 20): connection setup and throughput
//! from the Docker host's bridge to a server on the runner, through fwd's
//! exposure (over its one master) against a hand-made `ssh -R` on its own
//! connection with a session open, alternating, in one run. The client
//! runs in the Docker host's namespace and connects to the bridge gateway,
//! the address a container reaches as `host.docker.internal`.

#[allow(unused_imports)]
use super::*;

/// Runner-side ports; the remote ports of the `ssh -R` are these + 1000.
const FIRST_BYTE_PORT: u16 = 24000;
const BULK_PORT: u16 = 24001;

/// Serves every connection, after reading its request, `reply` and then
/// `zeros` bytes of zeros.
fn runner_server(ns: &str, port: u16, reply: &'static [u8], zeros: u64) {
    let listener = spawn_in_ns(ns, move || {
        std::net::TcpListener::bind(local(port)).expect("bind the runner's server")
    })
    .join()
    .expect("bind thread");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let mut req = [0u8; 512];
                let _ = conn.read(&mut req);
                let _ = conn.write_all(reply);
                let chunk = vec![0u8; 256 * 1024];
                let mut left = zeros;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if conn.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
}

impl Ctx<'_> {
    pub(crate) fn expose(&mut self, conns: usize, mib: u64) {
        println!("[expose] {conns} × connect+first byte and {mib} MiB, fwd expose vs ssh -R");
        // Both need sshd to bind the address asked for.
        self.host.add_sshd_config("GatewayPorts clientspecified");
        let fwdd = Fwdd::spawn(self.host, &self.bin_dir);
        assert!(
            fwdd.wait_connected(Duration::from_secs(30)),
            "fwdd did not connect"
        );
        let ns = self.ns();
        runner_server(&ns, FIRST_BYTE_PORT, b"HTTP/1.0 200 OK\r\n\r\nhi", 0);
        runner_server(&ns, BULK_PORT, b"", mib * 1024 * 1024);
        let socket = fwdd.runtime_dir.join(fwd_proto::CONTROL_SOCKET_NAME);
        for port in [FIRST_BYTE_PORT, BULK_PORT] {
            let req = fwd_proto::Request::Expose {
                host: None,
                spec: port.to_string(),
            };
            fwd_client::request(&socket, &req, Duration::from_secs(5)).expect("fwdctl expose");
        }
        let active = |port: u16| {
            fwdd.status().and_then(|st| {
                st.exposed
                    .into_iter()
                    .find(|e| e.remote_port == port && e.state == "active")
            })
        };
        assert!(
            poll(Duration::from_secs(30), || active(FIRST_BYTE_PORT)
                .is_some()
                && active(BULK_PORT).is_some()),
            "the exposures never became active:\n{}",
            fwdd.log_text()
        );
        let bind = active(FIRST_BYTE_PORT).expect("active").binds[0].clone();
        let gateway: Ipv4Addr = bind
            .rsplit_once(':')
            .and_then(|(ip, _)| ip.parse().ok())
            .expect("an IPv4 bind");
        let mut ssh_r = self.spawn_ssh_r(gateway);
        let remote_ns = self.sb.remote_ns.clone();
        let at = move |port: u16| SocketAddr::from((gateway, port));
        let up = spawn_in_ns(&remote_ns, move || {
            poll(Duration::from_secs(20), || {
                first_byte(at(FIRST_BYTE_PORT + 1000), Duration::from_secs(1)).is_ok()
            })
        })
        .join()
        .expect("ssh -R wait");
        assert!(up, "ssh -R never served");

        let master = fwdd.master_pid().expect("master");
        let (fwdd0, master0, ssh_r0) = (
            proc_cpu_wakeups(fwdd.pid()),
            proc_cpu_wakeups(master),
            proc_cpu_wakeups(ssh_r.id()),
        );
        let (a, b) = alternate_first_byte(
            &remote_ns,
            at(FIRST_BYTE_PORT),
            at(FIRST_BYTE_PORT + 1000),
            conns,
        );
        // Where the time goes: what each process spent per connection (the
        // loops above include 20 warm-up connections each).
        let per = |s0: &CpuSample, pid: u32, n: usize| {
            let (cpu, switches, _) = cpu_delta(s0, &proc_cpu_wakeups(pid));
            (cpu * 1e6 / n as f64, switches as f64 / n as f64)
        };
        let (n_a, n_b) = (a.len() + 20, b.len() + 20);
        let (fwdd_us, fwdd_sw) = per(&fwdd0, fwdd.pid(), n_a);
        let (master_us, master_sw) = per(&master0, master, n_a);
        let (ssh_r_us, ssh_r_sw) = per(&ssh_r0, ssh_r.id(), n_b);
        self.rep.note(format!(
            "per container→runner connection: fwdd {fwdd_us:.0} µs CPU, {fwdd_sw:.1} wakeups; \
             its master {master_us:.0} µs, {master_sw:.1} wakeups; the separate ssh -R \
             {ssh_r_us:.0} µs, {ssh_r_sw:.1} wakeups (CPU at clock-tick resolution)"
        ));
        self.rep.setup_ratio(
            "container → runner connection setup, fwd expose / separate ssh -R",
            "container→runner setup via fwd expose",
            "container→runner setup via ssh -R    ",
            &sorted(a),
            &sorted(b),
        );

        let want = mib * 1024 * 1024;
        let (a, b) = spawn_in_ns(&remote_ns, move || {
            let transfer = |p: u16| -> Option<f64> {
                let t = Instant::now();
                let mut s = TcpStream::connect_timeout(&at(p), Duration::from_secs(5)).ok()?;
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                s.write_all(b"go\n").ok()?;
                (read_up_to(&mut s, want) >= want)
                    .then(|| want as f64 / 1048576.0 / t.elapsed().as_secs_f64())
            };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..2 {
                a.extend(transfer(BULK_PORT));
                thread::sleep(Duration::from_millis(300));
                b.extend(transfer(BULK_PORT + 1000));
                thread::sleep(Duration::from_millis(300));
            }
            (a, b)
        })
        .join()
        .expect("expose throughput bench");
        let _ = ssh_r.kill();
        let _ = ssh_r.wait();
        self.expose_after_master_kill(&fwdd, 3);
        let best = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        let (fa, fb) = (best(&a), best(&b));
        let ratio = fa / fb;
        self.rep.note(format!(
            "container→runner throughput runs (MiB/s): fwd expose {a:.0?}, ssh -R {b:.0?}"
        ));
        self.rep.row(
            &format!("container → runner throughput of {mib} MiB, fwd expose / ssh -R (best of 2)"),
            format!("{ratio:.2}× ({fa:.0} vs {fb:.0} MiB/s)"),
            "≥ 0.95×",
            Some(ratio >= 0.95),
        );
        fwdd.stop();
    }

    /// SIGKILL to the master: how long after the new master is connected its
    /// exposure is active again (registered and verified), by status polls.
    fn expose_after_master_kill(&mut self, fwdd: &Fwdd, trials: usize) {
        let mut after = Vec::new();
        for _ in 0..trials {
            let Some(old) = fwdd.master_pid() else { break };
            let _ = kill(Pid::from_raw(old as i32), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut connected_at = None;
            let mut left_active = false;
            while Instant::now() < deadline {
                let Some(st) = fwdd.status() else { continue };
                let now = Instant::now();
                let new_master = st.hosts[0].master.state == MasterState::Connected
                    && st.hosts[0].master.pid.is_some_and(|p| p != old);
                if new_master && connected_at.is_none() {
                    connected_at = Some(now);
                }
                let state = st
                    .exposed
                    .iter()
                    .find(|e| e.remote_port == FIRST_BYTE_PORT)
                    .map(|e| e.state.clone())
                    .unwrap_or_default();
                left_active |= state != "active";
                if let (Some(at), true, "active") = (connected_at, left_active, state.as_str()) {
                    after.push(now.duration_since(at).as_secs_f64() * 1e3);
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
        }
        let after = sorted(after);
        let worst = after.last().copied().unwrap_or(f64::NAN);
        self.rep.note(format!(
            "exposure active again after a master SIGKILL, from the new master connected: {}",
            dist(&after)
        ));
        self.rep.row(
            "exposure back after a new master (master SIGKILL), worst of trials",
            format!("{worst:.0} ms (n={})", after.len()),
            "≤ 1000 ms",
            Some(worst <= 1000.0 && after.len() == trials),
        );
    }

    /// `ssh -R <gateway>:<port+1000>:127.0.0.1:<port>` for both runner ports,
    /// on a connection of its own.
    fn spawn_ssh_r(&self, gateway: Ipv4Addr) -> Child {
        let specs: Vec<String> = [FIRST_BYTE_PORT, BULK_PORT]
            .iter()
            .map(|p| format!("{gateway}:{}:127.0.0.1:{p}", p + 1000))
            .collect();
        let args: Vec<&str> = specs.iter().flat_map(|s| ["-R", s.as_str()]).collect();
        self.spawn_ssh_forwarding(&args)
    }
}
