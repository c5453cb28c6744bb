//! The relay's one loop: `poll` over stdin, stdout (while output waits)
//! and one connected UDP socket per session. Every queue is bounded: a
//! datagram that does not fit is dropped and counted, and the count is
//! reported to fwdd (a DROPPED frame) once a second.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use fwd_core::udp::{Decoder, Frame, SessionId, DATAGRAM_MAX, HELLO};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Bytes of frames waiting for stdout at most (replies past it are dropped).
const OUT_MAX: usize = 1 << 20;
/// Sessions at once (fwdd caps its own per forward; this guards the host).
const SESSIONS_MAX: usize = 8192;
/// A session fwdd forgot to close ends after this long without traffic.
const SESSION_IDLE: Duration = Duration::from_secs(600);

struct Session {
    socket: UdpSocket,
    last: Instant,
}

struct Relay {
    sessions: BTreeMap<SessionId, Session>,
    decoder: Decoder,
    out: Vec<u8>,
    /// Dropped since the last DROPPED frame.
    dropped: u64,
    greeted: bool,
}

pub fn run_stdio() -> io::Result<()> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    run(stdin.as_fd(), stdout.as_fd())
}

fn nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn run(input: BorrowedFd<'_>, output: BorrowedFd<'_>) -> io::Result<()> {
    nonblocking(input)?;
    nonblocking(output)?;
    let mut relay = Relay {
        sessions: BTreeMap::new(),
        decoder: Decoder::default(),
        out: Vec::new(),
        dropped: 0,
        greeted: false,
    };
    Frame::Hello(HELLO.to_vec())
        .encode(&mut relay.out)
        .map_err(io::Error::other)?;
    let mut reported = Instant::now();
    let mut buf = vec![0u8; 65_536];
    let mut input_open = true;
    while input_open || !relay.out.is_empty() {
        let ids: Vec<SessionId> = relay.sessions.keys().copied().collect();
        let (in_ready, out_ready, ready) = {
            let mut fds = Vec::with_capacity(ids.len() + 2);
            // fwdd's side is always read: a slow reader of replies must
            // not stall the datagrams going out (replies past OUT_MAX are
            // dropped instead).
            fds.push(PollFd::new(
                input,
                if input_open {
                    PollFlags::POLLIN
                } else {
                    PollFlags::empty()
                },
            ));
            fds.push(PollFd::new(
                output,
                if relay.out.is_empty() {
                    PollFlags::empty()
                } else {
                    PollFlags::POLLOUT
                },
            ));
            for id in &ids {
                if let Some(s) = relay.sessions.get(id) {
                    fds.push(PollFd::new(s.socket.as_fd(), PollFlags::POLLIN));
                }
            }
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let hit = |f: &PollFd<'_>| f.any().unwrap_or(true);
            (
                hit(&fds[0]),
                hit(&fds[1]),
                fds[2..].iter().map(hit).collect::<Vec<bool>>(),
            )
        };
        if in_ready {
            match read_some(input, &mut buf) {
                Ok(0) => input_open = false,
                Ok(n) => {
                    let frames = relay.decoder.push(&buf[..n]).map_err(io::Error::other)?;
                    for f in frames {
                        relay.handle(f)?;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        for (id, ready) in ids.iter().zip(ready) {
            if ready {
                relay.replies(*id, &mut buf);
            }
        }
        if out_ready {
            match write_some(output, &relay.out) {
                Ok(n) => {
                    relay.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // fwdd's side is gone: nothing more to do.
                Err(_) => return Ok(()),
            }
        }
        if reported.elapsed() >= Duration::from_secs(1) {
            reported = Instant::now();
            relay.report_drops();
            relay
                .sessions
                .retain(|_, s| s.last.elapsed() < SESSION_IDLE);
        }
        if !input_open {
            // fwdd closed its side: what is queued is best effort.
            let _ = write_some(output, &relay.out);
            return Ok(());
        }
    }
    Ok(())
}

fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd.as_raw_fd(), buf) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

fn write_some(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::write(fd, bytes) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

impl Relay {
    fn handle(&mut self, frame: Frame) -> io::Result<()> {
        match frame {
            Frame::Hello(text) => {
                if text != HELLO {
                    return Err(io::Error::other(format!(
                        "fwdd speaks {:?}, this relay {:?}",
                        String::from_utf8_lossy(&text)
                            .chars()
                            .take(40)
                            .collect::<String>(),
                        String::from_utf8_lossy(HELLO)
                    )));
                }
                self.greeted = true;
            }
            _ if !self.greeted => return Err(io::Error::other("no HELLO from fwdd")),
            Frame::Open { session, to } => {
                if self.sessions.len() >= SESSIONS_MAX {
                    self.queue(Frame::Close { session }, true);
                    return Ok(());
                }
                match open(to) {
                    Ok(socket) => {
                        self.sessions.insert(
                            session,
                            Session {
                                socket,
                                last: Instant::now(),
                            },
                        );
                    }
                    Err(_) => self.queue(Frame::Close { session }, true),
                }
            }
            Frame::Data { session, datagram } => match self.sessions.get_mut(&session) {
                Some(s) => {
                    s.last = Instant::now();
                    match s.socket.send(&datagram) {
                        Ok(_) => {}
                        // The target is gone or slow (ICMP unreachable,
                        // a full socket buffer): UDP loses it anyway.
                        Err(_) => self.dropped += 1,
                    }
                }
                None => self.dropped += 1,
            },
            Frame::Close { session } => {
                self.sessions.remove(&session);
            }
            Frame::Dropped(_) => {}
        }
        Ok(())
    }

    /// Every datagram waiting on the session's socket, framed.
    fn replies(&mut self, id: SessionId, buf: &mut [u8]) {
        loop {
            let Some(s) = self.sessions.get_mut(&id) else {
                return;
            };
            match s.socket.recv(buf) {
                Ok(n) => {
                    s.last = Instant::now();
                    let datagram = buf[..n.min(DATAGRAM_MAX)].to_vec();
                    self.queue(
                        Frame::Data {
                            session: id,
                            datagram,
                        },
                        false,
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // ECONNREFUSED from an earlier send: nothing listens.
                Err(_) => return,
            }
        }
    }

    /// Queues a frame for fwdd; a datagram past `OUT_MAX` is dropped and
    /// counted (`always`: control frames, small, never dropped).
    fn queue(&mut self, frame: Frame, always: bool) {
        let mut bytes = Vec::new();
        if frame.encode(&mut bytes).is_err() {
            return;
        }
        if !always && self.out.len() + bytes.len() > OUT_MAX {
            self.dropped += 1;
            return;
        }
        self.out.extend_from_slice(&bytes);
    }

    fn report_drops(&mut self) {
        if self.dropped > 0 {
            let n = std::mem::take(&mut self.dropped);
            self.queue(Frame::Dropped(n), true);
        }
    }
}

/// A socket of the session's own, connected to its target: replies come
/// back on it, and only from the target.
fn open(to: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(to)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
