//! The relay program itself, driven as fwdd drives it: frames on its
//! stdin, frames read off its stdout, a real UDP echo server behind it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use fwd_core::udp::{Decoder, Frame, HELLO};

/// A UDP echo server on 127.0.0.1, and how many datagrams it echoed;
/// runs until the test process ends.
fn echo_server_counting() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    let echoed = Arc::new(AtomicUsize::new(0));
    let count = echoed.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, echoed)
}

fn echo_server() -> SocketAddr {
    echo_server_counting().0
}

struct Relay {
    child: Child,
    stdin: ChildStdin,
    frames: mpsc::Receiver<Frame>,
    /// While set, nothing is read off the relay's stdout (fwdd is slow).
    paused: Arc<AtomicBool>,
}

impl Relay {
    fn start() -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fwd-udp-relay"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the relay");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, frames) = mpsc::channel();
        let paused = Arc::new(AtomicBool::new(false));
        let hold = paused.clone();
        std::thread::spawn(move || {
            let mut d = Decoder::default();
            let mut buf = vec![0u8; 65_536];
            loop {
                while hold.load(Ordering::SeqCst) {
                    std::thread::park_timeout(Duration::from_millis(5));
                }
                let Ok(n) = stdout.read(&mut buf) else { break };
                if n == 0 {
                    break;
                }
                for f in d.push(&buf[..n]).expect("the relay's frames decode") {
                    if tx.send(f).is_err() {
                        return;
                    }
                }
            }
        });
        let mut relay = Relay {
            child,
            stdin,
            frames,
            paused,
        };
        assert_eq!(relay.next(), Frame::Hello(HELLO.to_vec()));
        relay.send(&[Frame::Hello(HELLO.to_vec())]);
        relay
    }

    fn send(&mut self, frames: &[Frame]) {
        let mut bytes = Vec::new();
        for f in frames {
            f.encode(&mut bytes).expect("encodes");
        }
        self.stdin.write_all(&bytes).expect("write to the relay");
    }

    fn next(&self) -> Frame {
        self.frames
            .recv_timeout(Duration::from_secs(10))
            .expect("a frame from the relay")
    }

    fn data(&self) -> (u32, Vec<u8>) {
        loop {
            match self.next() {
                Frame::Data { session, datagram } => return (session, datagram),
                Frame::Dropped(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data(session: u32, bytes: &[u8]) -> Frame {
    Frame::Data {
        session,
        datagram: bytes.to_vec(),
    }
}

/// 1,000 round trips for each of two sessions at once: every reply comes
/// back on the session that asked, none crosses.
#[test]
fn two_sessions_get_only_their_own_replies() {
    let echo = echo_server();
    let mut relay = Relay::start();
    relay.send(&[
        Frame::Open {
            session: 1,
            to: echo,
        },
        Frame::Open {
            session: 2,
            to: echo,
        },
    ]);
    let mut got: BTreeMap<u32, usize> = BTreeMap::new();
    for i in 0..1000u32 {
        relay.send(&[
            data(1, format!("a{i}").as_bytes()),
            data(2, format!("b{i}").as_bytes()),
        ]);
        for _ in 0..2 {
            let (session, datagram) = relay.data();
            let text = String::from_utf8(datagram).expect("text");
            let want = if session == 1 { 'a' } else { 'b' };
            assert!(text.starts_with(want), "session {session} got {text}");
            assert_eq!(&text[1..], i.to_string(), "in order, one at a time");
            *got.entry(session).or_default() += 1;
        }
    }
    assert_eq!(got, BTreeMap::from([(1, 1000), (2, 1000)]));
}

#[test]
fn a_1400_byte_datagram_arrives_whole() {
    let echo = echo_server();
    let mut relay = Relay::start();
    let big: Vec<u8> = (0..1400u32).map(|i| (i % 251) as u8).collect();
    relay.send(&[
        Frame::Open {
            session: 9,
            to: echo,
        },
        data(9, &big),
    ]);
    assert_eq!(relay.data(), (9, big));
}

/// fwdd reads nothing for a while: replies past the relay's 1 MiB bound
/// are dropped and counted (a DROPPED frame), not buffered, and the
/// datagrams going out still flow.
#[test]
fn a_burst_past_what_is_read_is_dropped_and_counted() {
    let (echo, echoed) = echo_server_counting();
    let mut relay = Relay::start();
    relay.send(&[Frame::Open {
        session: 3,
        to: echo,
    }]);
    relay.paused.store(true, Ordering::SeqCst);
    let datagram = vec![7u8; 1400];
    const TOTAL: usize = 4000;
    // Paced by what the echo server saw, so that UDP itself loses nothing:
    // every loss is the relay's, and counted.
    // (20 at a time: a socket's buffer holds ~90 such datagrams, counted
    // with the kernel's overhead.)
    for chunk in 0..TOTAL / 20 {
        let frames: Vec<Frame> = (0..20).map(|_| data(3, &datagram)).collect();
        relay.send(&frames);
        let want = (chunk + 1) * 20;
        let deadline = Instant::now() + Duration::from_secs(10);
        while echoed.load(Ordering::SeqCst) < want {
            assert!(Instant::now() < deadline, "the relay stopped sending");
            std::thread::yield_now();
        }
    }
    relay.paused.store(false, Ordering::SeqCst);
    let (mut delivered, mut dropped) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(15);
    while delivered + dropped < TOTAL {
        assert!(
            Instant::now() < deadline,
            "delivered {delivered}, dropped {dropped}"
        );
        match relay.frames.recv_timeout(Duration::from_secs(5)) {
            Ok(Frame::Data { .. }) => delivered += 1,
            Ok(Frame::Dropped(n)) => dropped += n as usize,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("delivered {delivered}, dropped {dropped}: {e}"),
        }
    }
    assert_eq!(delivered + dropped, TOTAL);
    assert!(dropped > 0, "nothing dropped: the bound held nothing back");
    // What was kept fits the bound (and the pipe's own buffer).
    assert!(
        delivered * (1400 + 7) <= (1 << 20) + (1 << 20),
        "delivered {delivered}"
    );
}

#[test]
fn the_end_of_stdin_ends_the_relay() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fwd-udp-relay"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(Instant::now() < deadline, "the relay outlived its stdin");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_peer_without_hello_is_refused() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fwd-udp-relay"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut bytes = Vec::new();
    data(1, b"x").encode(&mut bytes).expect("encodes");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&bytes)
        .expect("write");
    let out = child.wait_with_output().expect("exits");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no HELLO"));
}
