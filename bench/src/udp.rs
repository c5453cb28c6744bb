//! UDP forwards (issue 33) against what a user does today, on an fwdd of its
//! own with `udp = true`: a UDP echo server in a container (the runner's
//! Python, as in the e2e tests), its published port reached two ways, each
//! from its own client socket in the runner's namespace:
//!
//! - **fwd**: `127.0.0.1:P` on the runner, the forward of the published
//!   port (datagrams framed over the host's master to fwd's relay there);
//! - **socat**: `socat UDP-LISTEN:Q,fork TCP:127.0.0.1:L` on the runner, a
//!   separate `ssh -L 127.0.0.1:L:127.0.0.1:T` (its own connection, a
//!   session open) and `socat TCP-LISTEN:T,fork UDP:127.0.0.1:P` on the host.
//!   That path carries a byte stream: datagram boundaries are not kept (a
//!   TCP read on either end may merge or split them), so every datagram has
//!   the same size and the bench counts echoed bytes, in datagrams of that
//!   size, and notes how many echoes did not arrive as sent.
//!
//! Figures, both paths interleaved in one run, as ratios fwd / socat:
//! - round-trip latency p50 and p90: one client, lockstep (one datagram in
//!   flight), N trips per path, each round led by the other path;
//! - datagrams/s: a client keeping a window of datagrams in flight (a lost
//!   one is given up after 50 ms and the window refilled), counting echoes
//!   for a few seconds; three rounds, each led by another path.

#[allow(unused_imports)]
use super::*;

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;

use crate::connburst::{descendants, procs, Proc};
use std::os::unix::process::CommandExt;

/// Host ports of this group (the other figures use 20000-27503 and
/// 28000+): the container's published UDP port, which fwd forwards at the
/// same number on the runner.
const ECHO_PORT: u16 = 27600;
/// socat's TCP listener on the host (in the remote namespace's loopback).
const HOST_SOCAT_PORT: u16 = 27601;
/// The separate `ssh -L` listener on the runner.
const SSH_L_PORT: u16 = 27602;
/// socat's UDP listener on the runner: what the baseline's client sends to.
const RUNNER_SOCAT_PORT: u16 = 27603;
/// Every datagram's size: the same on both paths, so a byte count through
/// the stream is a datagram count.
const SIZE: usize = 512;
/// Datagrams in flight in the datagrams/s figure.
const WINDOW: usize = 64;
/// A trip (or a window) with no answer for this long is given up as lost.
const LOST_AFTER: Duration = Duration::from_millis(50);

/// A datagram of `SIZE` bytes whose first 8 are `seq`.
fn payload(seq: u64) -> Vec<u8> {
    let mut p = vec![0x5a; SIZE];
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

/// A client socket connected to `127.0.0.1:port` (call in the runner ns).
fn client(port: u16) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP client");
    s.connect(local(port)).expect("connect the UDP client");
    s
}

/// One lockstep round trip of datagram `seq`: ms, or `None` if no echo
/// came within 1 s. Echoes are read as a stream of `SIZE`-byte chunks (the
/// socat path may split one); a late chunk of an earlier trip is skipped.
fn trip(s: &UdpSocket, seq: u64, buf: &mut [u8]) -> Option<f64> {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let sent = Instant::now();
    s.send(&payload(seq)).ok()?;
    let mut pending: Vec<u8> = Vec::new();
    while sent.elapsed() < Duration::from_secs(1) {
        let Ok(n) = s.recv(buf) else { continue };
        pending.extend_from_slice(&buf[..n]);
        while pending.len() >= SIZE {
            let chunk: Vec<u8> = pending.drain(..SIZE).collect();
            if chunk[..8] == seq.to_le_bytes() {
                return Some(sent.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    None
}

/// Reads and discards whatever is still on its way to `s` (late echoes of
/// a previous figure), for up to 200 ms of quiet.
fn drain(s: &UdpSocket, buf: &mut [u8]) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until && s.recv(buf).is_ok() {}
}

/// What one windowed stream measured.
#[derive(Clone, Default)]
struct Stream {
    sent: u64,
    /// Echoed bytes in `SIZE` datagrams.
    echoed: f64,
    /// Echoes that arrived as one whole datagram of `SIZE` bytes.
    whole: u64,
    /// Datagrams still in flight when the time was up (not lost: their
    /// echoes came after it).
    tail: u64,
    secs: f64,
    /// CPU seconds each of the path's processes spent meanwhile, by where
    /// and what they are (e.g. `runner fwdd`, `host fwd-udp-relay`).
    cpu: BTreeMap<String, f64>,
}

impl Stream {
    fn rate(&self) -> f64 {
        self.echoed / self.secs
    }

    /// Only the echoes an application could use: whole datagrams.
    fn whole_rate(&self) -> f64 {
        self.whole as f64 / self.secs
    }
}

/// `WINDOW` datagrams kept in flight for `secs`: each echo (in bytes) lets
/// another go; a window with no echo for `LOST_AFTER` is given up as lost.
fn stream(s: &UdpSocket, secs: f64, buf: &mut [u8]) -> Stream {
    let _ = s.set_read_timeout(Some(Duration::from_millis(5)));
    let mut out = Stream::default();
    let mut in_flight = 0usize;
    let mut echoed_bytes = 0usize;
    let mut seq = 0u64;
    let start = Instant::now();
    let mut last_echo = start;
    let window = Duration::from_secs_f64(secs);
    while start.elapsed() < window {
        while in_flight + SIZE <= WINDOW * SIZE {
            seq += 1;
            if s.send(&payload(seq)).is_err() {
                break;
            }
            out.sent += 1;
            in_flight += SIZE;
        }
        match s.recv(buf) {
            Ok(n) => {
                echoed_bytes += n;
                in_flight = in_flight.saturating_sub(n);
                out.whole += u64::from(n == SIZE);
                last_echo = Instant::now();
            }
            Err(_) if last_echo.elapsed() > LOST_AFTER => {
                in_flight = 0;
                last_echo = Instant::now();
            }
            Err(_) => {}
        }
    }
    out.secs = start.elapsed().as_secs_f64();
    out.tail = (in_flight / SIZE) as u64;
    out.echoed = echoed_bytes as f64 / SIZE as f64;
    out
}

/// A process we started in its own process group, ended with its children
/// (socat forks one per client or connection).
struct Group(Child);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e} (apt-get install socat)"));
        Group(child)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-(self.0.id() as i32)), Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

impl Ctx<'_> {
    /// fwdd with `udp = true` for the bench's host (the runtime directory
    /// every bench fwdd uses: run it alone).
    fn udp_fwdd(&self) -> Fwdd {
        assert!(
            self.bin_dir.join("fwd-udp-relay").exists(),
            "no fwd-udp-relay beside fwdd in {} (cargo build --release -p fwd-udp-relay)",
            self.bin_dir.display()
        );
        let toml = format!(
            "[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{}\"\nudp = true\n",
            self.host.alias,
            self.host.ssh_config.display()
        );
        let path = self.host.dir.join("fwdd-udp.toml");
        fs::write(&path, toml).expect("write fwdd-udp.toml");
        let fwdd = Fwdd::spawn_with_config(self.host, &self.bin_dir, &path);
        assert!(
            fwdd.wait_connected(Duration::from_secs(30)),
            "fwdd did not connect"
        );
        fwdd
    }

    pub(crate) fn udp(&mut self, trips: usize, secs: u64) {
        println!(
            "[udp] {trips} lockstep round trips and 3 × {secs} s of a {WINDOW}-datagram window \
             ({SIZE} B), fwd / socat over a separate ssh -L (interleaved)"
        );
        self.rm_all();
        let fwdd = self.udp_fwdd();
        let echo = self.host.udp_echo(ECHO_PORT);
        let serving = poll(Duration::from_secs(30), || {
            fwdd.status().is_some_and(|s| {
                s.udp
                    .iter()
                    .any(|u| u.local_port == ECHO_PORT && u.state == "serving")
            })
        });
        assert!(serving, "UDP {ECHO_PORT} never served: {}", fwdd.log_text());
        // The baseline: socat on the host (the remote namespace, as a user
        // runs it there), a separate ssh -L, socat on the runner.
        let host_socat = Group::spawn(self.sb.remote_command("socat").args([
            format!("TCP-LISTEN:{HOST_SOCAT_PORT},fork,reuseaddr,bind=127.0.0.1"),
            format!("UDP:127.0.0.1:{ECHO_PORT}"),
        ]));
        let mut ssh_l = self.ssh_l_serving(SSH_L_PORT, &format!("127.0.0.1:{HOST_SOCAT_PORT}"));
        let runner_socat = Group::spawn(self.host.runner_command("socat").args([
            format!("UDP-LISTEN:{RUNNER_SOCAT_PORT},fork,reuseaddr,bind=127.0.0.1"),
            format!("TCP:127.0.0.1:{SSH_L_PORT}"),
        ]));
        // Each path's processes, for the CPU a datagram costs: on the
        // runner fwdd and its master, or socat and ssh -L; on the host the
        // test host's sshd with its sessions (the relay is one) and socat;
        // the echo server and its docker-proxy, which both paths share.
        let sshd = self.host.sshd_pid().map_or(0, |p| p as u32);
        let echo_pid: u32 = self
            .sb
            .docker_ok(&["inspect", "-f", "{{.State.Pid}}", echo.trim()])
            .parse()
            .unwrap_or(0);
        let proxy_port = format!("-host-port {ECHO_PORT} ");
        let proxies = procs()
            .into_iter()
            .filter(|(_, p)| p.comm == "docker-proxy" && p.cmdline.contains(&proxy_port))
            .map(|(pid, _)| pid);
        let roles = CpuPaths {
            runner: [vec![fwdd.pid()], vec![runner_socat.0.id(), ssh_l.id()]],
            host: vec![sshd, host_socat.0.id()],
            echo: proxies.chain([echo_pid]).collect(),
        };
        // Sockets keep the namespace they were made in: the clients run
        // on this thread from here on.
        let paths = self
            .host
            .in_runner_ns(|| [client(ECHO_PORT), client(RUNNER_SOCAT_PORT)]);
        let measured = measure(&paths, &roles, trips, secs);
        drop(runner_socat);
        let _ = ssh_l.kill();
        let _ = ssh_l.wait();
        drop(host_socat);
        let udp = fwdd
            .status()
            .and_then(|s| s.udp.into_iter().find(|u| u.local_port == ECHO_PORT));
        fwdd.stop();
        self.rm_all();
        let Measured {
            rtt,
            lost,
            rtt_cpu,
            streams,
        } = match measured {
            Ok(m) => m,
            Err(why) => {
                self.rep.row(
                    "UDP round trip, fwd / socat over a separate ssh -L",
                    why,
                    "p50 ≤ 1.10×",
                    Some(false),
                );
                return;
            }
        };
        let [fwd, socat] = rtt.map(sorted);
        self.rep.note(format!(
            "udp round trip via fwd  : {} ({} lost)",
            p50_p90(&fwd),
            lost[0]
        ));
        self.rep.note(format!(
            "udp round trip via socat: {} ({} lost)",
            p50_p90(&socat),
            lost[1]
        ));
        // What each path's own processes spent per trip: fwdd, its master
        // and the relay, or the two socats and ssh -L.
        // (The host's sshd serves both; the CPU is counted in 10 ms ticks,
        // so these are ±10 ms over all the trips.)
        for (name, cpu, n, on_host) in [
            ("fwd  ", &rtt_cpu[0], fwd.len(), "host fwd-udp-relay"),
            ("socat", &rtt_cpu[1], socat.len(), "host socat"),
        ] {
            let own: Vec<String> = cpu
                .iter()
                .filter(|(k, _)| k.starts_with("runner") || k.starts_with(on_host))
                .filter(|(_, v)| **v > 0.0)
                .map(|(k, v)| format!("{k} {:.1}", 1e6 * v / n.max(1) as f64))
                .collect();
            self.rep.note(format!(
                "udp CPU per round trip via {name} (µs, its own processes): {}",
                own.join(", ")
            ));
        }
        let ratio = |p: f64| pct(&fwd, p) / pct(&socat, p);
        self.rep.row(
            &format!("UDP round trip ({SIZE} B, lockstep), fwd / socat over a separate ssh -L"),
            format!(
                "p50 {:.2}× ({:.3} vs {:.3} ms), p90 {:.2}× ({:.3} vs {:.3} ms), n={}",
                ratio(50.0),
                pct(&fwd, 50.0),
                pct(&socat, 50.0),
                ratio(90.0),
                pct(&fwd, 90.0),
                pct(&socat, 90.0),
                fwd.len().min(socat.len())
            ),
            "p50 ≤ 1.10×",
            Some(ratio(50.0) <= 1.10 && lost[0] == 0),
        );
        for (name, v) in [("fwd  ", &streams[0]), ("socat", &streams[1])] {
            let sent: u64 = v.iter().map(|s| s.sent).sum();
            let echoed: f64 = v.iter().map(|s| s.echoed).sum();
            let whole: u64 = v.iter().map(|s| s.whole).sum();
            let tail: u64 = v.iter().map(|s| s.tail).sum();
            let lost = (sent as f64 - echoed - tail as f64).max(0.0);
            let mut cpu: BTreeMap<&str, f64> = BTreeMap::new();
            for (what, secs) in v.iter().flat_map(|s| &s.cpu) {
                *cpu.entry(what).or_default() += secs;
            }
            let per_k = |secs: f64| 1e6 * secs / echoed.max(1.0);
            let side = |prefix: &str| {
                per_k(
                    cpu.iter()
                        .filter(|(k, _)| k.starts_with(prefix))
                        .map(|(_, v)| v)
                        .sum(),
                )
            };
            self.rep.note(format!(
                "udp datagrams/s via {name}: {:.0?}; {sent} sent, {echoed:.0} echoed, {tail} in \
                 flight at the ends, {lost:.0} lost; {} of them merged or split",
                v.iter().map(Stream::rate).collect::<Vec<_>>(),
                echoed as u64 - whole.min(echoed as u64),
            ));
            self.rep.note(format!(
                "udp CPU per 1,000 echoed via {name}: runner {:.1} ms, host {:.1} ms, echo server \
                 and docker-proxy {:.1} ms ({})",
                side("runner"),
                side("host"),
                side("echo"),
                cpu.iter()
                    .map(|(k, v)| format!("{k} {:.1}", per_k(*v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(u) = udp {
            self.rep.note(format!(
                "udp forward at the end: {} datagrams in, {} out, {} dropped in fwdd, {} by the relay",
                u.datagrams_in, u.datagrams_out, u.dropped, u.dropped_on_host
            ));
        }
        let median = |i: usize, f: fn(&Stream) -> f64| {
            pct(&sorted(streams[i].iter().map(f).collect()), 50.0)
        };
        let (f, s) = (median(0, Stream::rate), median(1, Stream::rate));
        let (fw, sw) = (median(0, Stream::whole_rate), median(1, Stream::whole_rate));
        self.rep.row(
            &format!(
                "UDP datagrams/s ({SIZE} B, {WINDOW} in flight, median of 3 × {secs} s), \
                 fwd / socat over a separate ssh -L"
            ),
            format!(
                "{:.2}× ({f:.0} vs {s:.0}/s in echoed bytes; {:.2}× counting only echoes \
                 that arrived as sent: {fw:.0} vs {sw:.0}/s)",
                f / s,
                fw / sw
            ),
            "≥ 0.95× (echoed bytes)",
            Some(f / s >= 0.95),
        );
    }
}

/// The processes each path runs, by pid (with their descendants).
struct CpuPaths {
    /// fwd's, then the baseline's, on the runner.
    runner: [Vec<u32>; 2],
    /// On the host, for either path (only one moves datagrams at a time).
    host: Vec<u32>,
    /// The echo server and its docker-proxy, which both paths go through.
    echo: Vec<u32>,
}

impl CpuPaths {
    /// CPU seconds path `i`'s processes spent from `a` to `b`, by where and
    /// what each is (a process forked meanwhile counts whole).
    fn spent(
        &self,
        i: usize,
        a: &HashMap<u32, Proc>,
        b: &HashMap<u32, Proc>,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (side, roots) in [
            ("runner", &self.runner[i]),
            ("host", &self.host),
            ("echo", &self.echo),
        ] {
            let pids: BTreeSet<u32> = roots.iter().flat_map(|r| descendants(b, *r)).collect();
            for pid in pids {
                let Some(q) = b.get(&pid) else { continue };
                let was = a.get(&pid).map_or(0.0, |p| p.cpu);
                *out.entry(format!("{side} {}", q.comm)).or_default() += (q.cpu - was).max(0.0);
            }
        }
        out
    }
}

struct Measured {
    rtt: [Vec<f64>; 2],
    lost: [usize; 2],
    /// CPU seconds over all the round trips, by process, of each path's
    /// own processes (the host's sshd and the echo server are both's).
    rtt_cpu: [BTreeMap<String, f64>; 2],
    streams: [Vec<Stream>; 2],
}

/// Both figures over `paths` (fwd's client, the baseline's), interleaved.
fn measure(
    paths: &[UdpSocket; 2],
    roles: &CpuPaths,
    trips: usize,
    secs: u64,
) -> Result<Measured, String> {
    let mut buf = vec![0u8; 65_536];
    // Until each path answers (ssh -L and socat come up on their own
    // time), then warm-ups.
    let mut seq = 0u64;
    for s in paths {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            seq += 1;
            if trip(s, seq, &mut buf).is_some() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{:?} never echoed", s.peer_addr()));
            }
        }
        for _ in 0..50 {
            seq += 1;
            let _ = trip(s, seq, &mut buf);
        }
    }
    let mut rtt = [Vec::new(), Vec::new()];
    let mut lost = [0usize; 2];
    let deadline = Instant::now() + Duration::from_secs(300);
    let before = procs();
    for round in 0..trips {
        if Instant::now() > deadline {
            break;
        }
        // Each path goes first as often as the other.
        for k in 0..2 {
            let i = (round + k) % 2;
            seq += 1;
            match trip(&paths[i], seq, &mut buf) {
                Some(ms) => rtt[i].push(ms),
                None => lost[i] += 1,
            }
        }
    }
    let after = procs();
    let rtt_cpu = [0, 1].map(|i| roles.spent(i, &before, &after));
    for s in paths {
        drain(s, &mut buf);
    }
    let mut streams = [Vec::new(), Vec::new()];
    for round in 0..3 {
        for k in 0..2 {
            let i = (round + k) % 2;
            let before = procs();
            let mut st = stream(&paths[i], secs as f64, &mut buf);
            let after = procs();
            st.cpu = roles.spent(i, &before, &after);
            streams[i].push(st);
            drain(&paths[i], &mut buf);
        }
    }
    Ok(Measured {
        rtt,
        lost,
        rtt_cpu,
        streams,
    })
}

/// p50 / p90 / max of a sorted slice, in ms.
fn p50_p90(v: &[f64]) -> String {
    format!(
        "p50 {:.3} / p90 {:.3} / max {:.1} ms (n={})",
        pct(v, 50.0),
        pct(v, 90.0),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    )
}
