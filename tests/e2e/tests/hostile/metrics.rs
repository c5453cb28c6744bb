//! Idle and slow clients on the metrics endpoint: `/healthz` answers within
//! 1 s while they hold connections (a liveness probe must never restart a
//! healthy daemon), the endpoint closes them, and fwdd's descriptors come
//! back once they are gone. Against a real fwdd with `--metrics`, the
//! sandbox's sshd and dockerd.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::Fwdd;
use fwd_e2e::TestHost;

const METRICS_PORT: u16 = 9634;
/// The bound the issue sets for a probe's answer.
const PROBE_BOUND: Duration = Duration::from_secs(1);
const T: Duration = Duration::from_secs(30);

/// `GET path` on the metrics endpoint from the runner's namespace, with a
/// generous read timeout (the caller asserts the bound): (status, body).
fn get(host: &TestHost, path: &str) -> Option<(u16, String)> {
    host.http_get_path(METRICS_PORT, path, Duration::from_secs(10))
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .expect("read /proc/PID/fd")
}

/// `pid`'s connected sockets on the metrics port (not its listener): the
/// socket inodes of its descriptors found in its namespace's TCP table.
fn endpoint_connections(pid: u32) -> usize {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let port = format!(":{METRICS_PORT:04X}");
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        // local_address, state (0A: listening), inode.
        .filter(|f| f.len() > 9 && f[1].ends_with(&port) && f[3] != "0A")
        .filter(|f| inodes.contains(&f[9]))
        .count()
}

/// The value of the sample `series` (name and labels exactly), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Whether the server closed `s` (EOF or reset), without waiting.
fn closed_by_server(s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 64];
    let closed = match (&mut &*s).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    closed
}

#[test]
fn healthz_answers_within_a_second_while_idle_and_slow_clients_hold_connections() {
    let host = sandbox_host!("hostile_metrics");
    let config = format!(
        "metrics = \"127.0.0.1:{METRICS_PORT}\"\n[[host]]\nname = \"box\"\nurl = \"ssh://{}\"\nssh_config = \"{}\"\n",
        host.alias,
        host.ssh_config.display()
    );
    let fwdd = Fwdd::spawn_with_config(&host, &config);
    fwdd.wait_connected();
    let pid = fwdd.child.id();
    let deadline = Instant::now() + T;
    while get(&host, "/readyz").map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "/readyz never said 200");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The baseline: the most descriptors over two seconds (a health
    // probe's channel, a spare mux connection come and go).
    let mut baseline = 0;
    for _ in 0..40 {
        baseline = baseline.max(fds(pid));
        std::thread::sleep(Duration::from_millis(50));
    }

    // 80 connections that never send a byte, and 8 slow-loris ones that
    // trickle a request head that never ends.
    let (idle, slow) = host.in_runner_ns(|| {
        let connect = || TcpStream::connect((Ipv4Addr::LOCALHOST, METRICS_PORT)).expect("connect");
        let idle: Vec<TcpStream> = (0..80).map(|_| connect()).collect();
        let slow: Vec<TcpStream> = (0..8).map(|_| connect()).collect();
        (idle, slow)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        let mut slow: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                for s in &mut slow {
                    let b = if i < head.len() { head[i] } else { b'a' };
                    let _ = s.write(&[b]);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // fwdd holds up to its cap of them (32), never more.
    let deadline = Instant::now() + T;
    while endpoint_connections(pid) < 32 {
        assert!(Instant::now() < deadline, "fwdd never held 32 of them");
        std::thread::sleep(Duration::from_millis(10));
    }
    // While they are held: every probe answers within the bound, and so
    // does the control socket.
    for _ in 0..20 {
        let holds = endpoint_connections(pid);
        assert!(
            holds <= 34,
            "fwdd holds {holds} connections of the endpoint"
        );
        let t = Instant::now();
        let answer = get(&host, "/healthz");
        let took = t.elapsed();
        assert_eq!(
            answer.as_ref().map(|(s, b)| (*s, b.as_str())),
            Some((200, "ok\n")),
            "/healthz during the flood"
        );
        assert!(took < PROBE_BOUND, "/healthz took {took:?}");
        let t = Instant::now();
        assert!(fwdd.status().is_some(), "status during the flood");
        assert!(t.elapsed() < PROBE_BOUND, "status took {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }

    // The endpoint closes every one of them: the quietest at once to make
    // room, the rest when their 3 s to ask run out.
    let held: Vec<TcpStream> = idle.into_iter().chain(slow).collect();
    let deadline = Instant::now() + T;
    loop {
        let open = held.iter().filter(|s| !closed_by_server(s)).count();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} of the held connections still open after {T:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    trickle.join().expect("the trickle thread");
    let (_, text) = get(&host, "/metrics").expect("/metrics");
    let made_room = sample(
        &text,
        "fwd_metrics_connections_closed_total{reason=\"made_room\"}",
    );
    let no_request = sample(
        &text,
        "fwd_metrics_connections_closed_total{reason=\"no_request\"}",
    );
    assert!(
        made_room
            .zip(no_request)
            .is_some_and(|(m, n)| m >= 1.0 && m + n >= 88.0),
        "made_room {made_room:?}, no_request {no_request:?}:\n{text}"
    );
    drop(held);

    // Descriptors back to the baseline: none of the endpoint's left.
    let deadline = Instant::now() + T;
    loop {
        let (now, endpoint) = (fds(pid), endpoint_connections(pid));
        if now <= baseline && endpoint == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fwdd holds {now} descriptors ({endpoint} of the endpoint's connections), \
             {baseline} before the flood"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Said once, and its end said once.
    let log = fwdd.log_text();
    assert_eq!(
        log.matches("metrics_connections_at_cap").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("metrics_connections_below_cap").count(),
        1,
        "{log}"
    );
}
