//! UDP forwards (issue 33): a real UDP echo server in a container, its
//! published UDP port answering on the runner's loopback through the
//! host's one master and the relay fwd starts there. Host ports
//! 21400-21449 are this file's.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::Fwdd;
use fwd_e2e::{wait_until, TestHost};
use fwd_proto::UdpStatus;

fn config(host: &TestHost, extra: &str) -> String {
    // fwdd carries the relay from beside its own binary.
    common::udp_relay();
    format!(
        "[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{}\"\nudp = true\n{extra}\n",
        host.alias,
        host.ssh_config.display()
    )
}

fn udp_of(fwdd: &Fwdd, port: u16) -> Option<UdpStatus> {
    fwdd.status()?
        .udp
        .into_iter()
        .find(|u| u.local_port == port)
}

fn wait_udp_state(fwdd: &Fwdd, port: u16, state: &str) -> UdpStatus {
    fwdd.wait_for(
        Duration::from_secs(30),
        &format!("UDP {port} {state}"),
        |st| {
            st.udp
                .iter()
                .any(|u| u.local_port == port && u.state == state)
        },
    );
    udp_of(fwdd, port).expect("listed")
}

/// A client socket in the runner's namespace, connected to the forward.
fn client(host: &TestHost, port: u16) -> UdpSocket {
    host.in_runner_ns(|| {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind a client");
        s.connect(("127.0.0.1", port)).expect("connect");
        // Short: a datagram lost while a forward or a relay starts is sent
        // again soon, so the time to an answer is measured finely.
        s.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        s
    })
}

/// Sends `payload` until its echo comes back (UDP may lose one while a
/// forward starts); the echo. Other datagrams read meanwhile (a late echo
/// of an earlier send) go to `others`.
fn round_trip_seeing(
    s: &UdpSocket,
    payload: &[u8],
    within: Duration,
    others: &mut Vec<Vec<u8>>,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 65_536];
    while Instant::now() < deadline {
        s.send(payload).ok()?;
        while let Ok(n) = s.recv(&mut buf) {
            if &buf[..n] == payload {
                return Some(buf[..n].to_vec());
            }
            others.push(buf[..n].to_vec());
        }
    }
    None
}

fn round_trip(s: &UdpSocket, payload: &[u8], within: Duration) -> Option<Vec<u8>> {
    round_trip_seeing(s, payload, within, &mut Vec::new())
}

#[test]
fn a_published_udp_port_answers_whole_and_each_client_gets_its_own_replies() {
    let host = sandbox_host!("udp_echo");
    let fwdd = Fwdd::spawn_with_config(&host, &config(&host, ""));
    fwdd.wait_connected();
    host.udp_echo(21400);
    wait_udp_state(&fwdd, 21400, "serving");
    let c = client(&host, 21400);
    assert_eq!(
        round_trip(&c, b"hello", Duration::from_secs(20)).as_deref(),
        Some(&b"hello"[..]),
        "log:\n{}",
        fwdd.log_tail(40)
    );
    // 100 round trips, all answered.
    for i in 0..100 {
        let msg = format!("trip {i}");
        assert_eq!(
            round_trip(&c, msg.as_bytes(), Duration::from_secs(5)).as_deref(),
            Some(msg.as_bytes())
        );
    }
    // A 1,400-byte datagram arrives whole.
    let big: Vec<u8> = (0..1400u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        round_trip(&c, &big, Duration::from_secs(5)).as_deref(),
        Some(&big[..])
    );
    // Two clients at once, 1,000 datagrams each: only their own replies.
    let results: Vec<BTreeMap<&str, usize>> = std::thread::scope(|scope| {
        ["a", "b"]
            .map(|tag| {
                let s = client(&host, 21400);
                scope.spawn(move || {
                    let mut got = BTreeMap::new();
                    let mut others = Vec::new();
                    for i in 0..1000 {
                        let msg = format!("{tag}{i}");
                        round_trip_seeing(&s, msg.as_bytes(), Duration::from_secs(5), &mut others)
                            .expect("an answer");
                        *got.entry("own").or_default() += 1;
                    }
                    // Late echoes of this client's own resends are fine;
                    // another client's datagram is cross-talk.
                    let foreign = others
                        .iter()
                        .filter(|o| !o.starts_with(tag.as_bytes()))
                        .count();
                    if foreign > 0 {
                        got.insert("other", foreign);
                    }
                    got
                })
            })
            .map(|h| h.join().expect("client thread"))
    })
    .to_vec();
    for got in results {
        assert_eq!(got.get("other"), None, "cross-talk: {got:?}");
        assert_eq!(got.get("own"), Some(&1000));
    }
    let st = udp_of(&fwdd, 21400).expect("listed");
    assert!(
        st.datagrams_in >= 2101 && st.datagrams_out >= 2101,
        "{st:?}"
    );
    assert!(st.sessions >= 1, "{st:?}");
}

/// A master SIGKILL: the socket stays bound, and UDP answers again within
/// 1 s of the new master.
#[test]
fn udp_answers_again_within_a_second_of_a_new_master() {
    let host = sandbox_host!("udp_master_kill");
    let fwdd = Fwdd::spawn_with_config(&host, &config(&host, ""));
    fwdd.wait_connected();
    host.udp_echo(21410);
    wait_udp_state(&fwdd, 21410, "serving");
    let c = client(&host, 21410);
    assert!(round_trip(&c, b"before", Duration::from_secs(20)).is_some());
    let old = fwdd.master_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the master");
    // The socket never unbinds: the same client socket works after.
    let new_master = Instant::now();
    // "The new master": connected, its link published (from then on TCP
    // forwards are served again too).
    wait_until(Duration::from_secs(30), "a new master", || {
        fwdd.status().is_some_and(|s| {
            s.hosts.iter().any(|h| {
                h.master.pid.is_some_and(|p| p != old)
                    && h.master.state == fwd_proto::MasterState::Connected
            })
        })
    });
    let up = Instant::now();
    let echo = round_trip(&c, b"after", Duration::from_secs(10));
    let answered = up.elapsed();
    assert_eq!(
        echo.as_deref(),
        Some(&b"after"[..]),
        "{}",
        fwdd.log_tail(40)
    );
    assert!(
        answered < Duration::from_secs(1),
        "answered {answered:?} after the new master ({:?} after the kill)",
        new_master.elapsed()
    );
}

/// The container removed: its port is released. fwdd stopped: nothing of
/// fwd's is left running on the host.
#[test]
fn a_removed_container_releases_its_port_and_a_stopped_fwdd_leaves_nothing() {
    let host = sandbox_host!("udp_cleanup");
    let mut fwdd = Fwdd::spawn_with_config(&host, &config(&host, ""));
    fwdd.wait_connected();
    let id = host.udp_echo(21420);
    host.udp_echo(21421);
    wait_udp_state(&fwdd, 21420, "serving");
    let c = client(&host, 21420);
    assert!(round_trip(&c, b"x", Duration::from_secs(20)).is_some());
    let relays = || {
        host.remote_session_processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("fwd-udp-relay"))
            .count()
    };
    assert_eq!(relays(), 1, "one relay for the host");
    host.sandbox().docker_ok(&["rm", "-f", id.trim()]);
    wait_until(Duration::from_secs(10), "port 21420 released", || {
        host.in_runner_ns(|| UdpSocket::bind("127.0.0.1:21420").is_ok())
    });
    fwdd.terminate();
    wait_until(Duration::from_secs(10), "no relay left on the host", || {
        relays() == 0
    });
    assert!(
        host.remote_session_processes().is_empty(),
        "{:?}",
        host.remote_session_processes()
    );
}

/// A host where the relay cannot be stored: UDP is unsupported there, with
/// why and what to do, and TCP forwards go on.
#[test]
fn a_host_where_the_relay_cannot_run_says_why_and_nothing_else_breaks() {
    let host = sandbox_host!("udp_unsupported");
    // Where the sandbox's engine is, and a cache the relay cannot be
    // stored in.
    host.set_session_env(&format!(
        "DOCKER_HOST=unix://{} XDG_CACHE_HOME=/proc/fwd-nowhere",
        host.sandbox().docker_sock.display()
    ));
    let fwdd = Fwdd::spawn_with_config(&host, &config(&host, ""));
    fwdd.wait_connected();
    host.udp_echo(21430);
    host.httpd(&["21431:8080"]);
    let st = wait_udp_state(&fwdd, 21430, "unsupported");
    let reason = st.reason.unwrap_or_default();
    assert!(
        reason.contains("could not be stored") && reason.contains("udp = false"),
        "{reason}"
    );
    assert_eq!(fwdd.wait_http(21431), "hello\n");
    let human = common::fwdctl(&fwdd, &["status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("UDP") && human.contains("unsupported"),
        "{human}"
    );
    // Said once, not at every plan.
    assert_eq!(fwdd.log_text().matches("\"udp_unsupported\"").count(), 1);
    let _ = SocketAddr::from(([127, 0, 0, 1], 0));
}

/// A burst far above what the path carries is dropped and counted, and
/// fwdd's memory stays put; the forward serves again at once after.
#[test]
fn a_burst_past_what_the_path_carries_is_dropped_and_counted() {
    let host = sandbox_host!("udp_burst");
    let fwdd = Fwdd::spawn_with_config(&host, &config(&host, ""));
    fwdd.wait_connected();
    host.udp_echo(21440);
    wait_udp_state(&fwdd, 21440, "serving");
    let c = client(&host, 21440);
    assert!(round_trip(&c, b"warm", Duration::from_secs(20)).is_some());
    let rss = || {
        std::fs::read_to_string(format!("/proc/{}/status", fwdd.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let before = rss();
    let datagram = vec![9u8; 1400];
    // 200,000 datagrams (280 MB) as fast as the client sends them.
    for _ in 0..200_000 {
        let _ = c.send(&datagram);
    }
    let mut dropped = 0;
    wait_until(Duration::from_secs(20), "drops counted", || {
        dropped = udp_of(&fwdd, 21440).map_or(0, |u| u.dropped + u.dropped_on_host);
        dropped > 0
    });
    let grown_kib = rss().saturating_sub(before);
    assert!(
        grown_kib < 64 * 1024,
        "fwdd grew by {grown_kib} KiB over the burst (dropped {dropped})"
    );
    // Still serving: a round trip answers (late echoes are skipped).
    assert_eq!(
        round_trip(&c, b"after", Duration::from_secs(20)).as_deref(),
        Some(&b"after"[..])
    );
}

/// The inode of the UDP socket bound to 127.0.0.1:`port` in the runner's
/// namespace (`/proc/net/udp`): the same inode is the same socket.
fn udp_socket_inode(host: &TestHost, port: u16) -> Option<u64> {
    let local = format!("0100007F:{port:04X}");
    host.in_runner_ns(|| {
        let table = std::fs::read_to_string("/proc/thread-self/net/udp").ok()?;
        table.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str()))
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
    })
}

/// The zero-downtime upgrade keeps the UDP socket bound (sessions start
/// again): the same client is answered after it.
#[test]
fn an_upgrade_keeps_the_udp_socket() {
    let host = sandbox_host!("udp_upgrade");
    let dir = host.dir.join("bin");
    std::fs::create_dir_all(&dir).expect("bin dir");
    let binary = dir.join("fwdd");
    std::fs::copy(common::bin("fwdd"), &binary).expect("install fwdd");
    std::fs::copy(common::udp_relay(), dir.join("fwd-udp-relay")).expect("install the relay");
    let toml = host.dir.join("fwdd.toml");
    std::fs::write(&toml, config(&host, "")).expect("config");
    let toml = toml.to_string_lossy().into_owned();
    let fwdd = Fwdd::spawn_in(
        &host,
        &host.dir.join("rt"),
        &binary,
        &["--config", &toml],
        &[],
    );
    fwdd.wait_connected();
    host.udp_echo(21445);
    wait_udp_state(&fwdd, 21445, "serving");
    let c = client(&host, 21445);
    assert!(round_trip(&c, b"before", Duration::from_secs(20)).is_some());
    let inode = udp_socket_inode(&host, 21445).expect("the forward's socket");
    // A client sending all through the upgrade: an unbound port would
    // answer with ICMP port unreachable, which a connected UDP socket
    // reports as a refusal.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let prober = client(&host, 21445);
    let out = std::thread::scope(|scope| {
        let refused = scope.spawn(|| {
            let mut refused = 0;
            let mut buf = [0u8; 64];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = prober.send(b"probe");
                let got = prober.recv(&mut buf);
                for e in [sent.err(), got.err()].into_iter().flatten() {
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        refused += 1;
                    }
                }
            }
            refused
        });
        let out = common::fwdctl(&fwdd, &["upgrade"]);
        // Through the new image's takeover until its relay serves.
        fwdd.wait_for(
            Duration::from_secs(20),
            "UDP served by the new image",
            |st| {
                st.daemon.upgrades == 1
                    && st
                        .udp
                        .iter()
                        .any(|u| u.local_port == 21445 && u.state == "serving")
            },
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            refused.join().expect("prober"),
            0,
            "the UDP port was unbound"
        );
        out
    });
    assert!(
        out.status.success(),
        "fwdctl upgrade: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fwdd.log_tail(30)
    );
    assert_eq!(
        round_trip(&c, b"after", Duration::from_secs(10)).as_deref(),
        Some(&b"after"[..]),
        "{}",
        fwdd.log_tail(30)
    );
    assert_eq!(
        udp_socket_inode(&host, 21445),
        Some(inode),
        "the new image bound a socket of its own instead of keeping the old one"
    );
    let st = fwdd.status().expect("status");
    assert_eq!(st.daemon.upgrades, 1);
    let udp = st
        .udp
        .iter()
        .find(|u| u.local_port == 21445)
        .expect("still listed");
    assert!(udp.datagrams_in >= 2, "counts carried over: {udp:?}");
}
