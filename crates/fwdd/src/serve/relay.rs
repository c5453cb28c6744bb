//! Byte relays that a binary upgrade can hand over: the engine socket's
//! (client ↔ the master's forward or a dial-stdio session) and the
//! exposures' (the master's arrival ↔ the runner address).
//!
//! Each relay is registered with its owner's [`Relays`] from its accept on,
//! in a state the upgrade reads: queued (served again from the start by the
//! next image), running (waited for), or paused between two writes (both
//! descriptors handed over, nothing of it held in fwdd).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::starts::StartHold;
use crate::handover::document::{ExposeRelayDoc, RelayDoc};
use crate::handover::Descriptors;

/// Where a relay is, for a binary upgrade.
#[derive(Clone, Debug)]
pub enum RelayState {
    /// Accepted, nothing read or relayed yet: the connection is served
    /// again from the start by the next image.
    Queued(RawFd),
    /// Moving bytes, or between accept and relaying with something already
    /// read: the upgrade waits for it to pause.
    Running,
    /// Stopped between two writes: its descriptors can be handed over.
    Paused(PausedRelay),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PausedRelay {
    pub client: RawFd,
    pub upstream: RawFd,
    pub up_open: bool,
    pub down_open: bool,
    /// Held for the relay's life (a dial-stdio session's mux connection).
    pub keep: Vec<RawFd>,
    /// Drained for the relay's life (a dial-stdio session's stderr).
    pub drain: Option<RawFd>,
}

/// A relay handed over by the previous fwdd image.
pub struct AdoptedRelay {
    pub client: OwnedFd,
    pub upstream: OwnedFd,
    pub up_open: bool,
    pub down_open: bool,
    pub keep: Vec<OwnedFd>,
    pub drain: Option<OwnedFd>,
}

impl PausedRelay {
    /// An engine socket's relay of `host` in the handover.
    pub fn engine_doc(&self, host: &str) -> RelayDoc {
        RelayDoc {
            host: host.to_string(),
            client_fd: self.client,
            upstream_fd: self.upstream,
            up_open: self.up_open,
            down_open: self.down_open,
            keep_fds: self.keep.clone(),
            drain_fd: self.drain,
        }
    }

    /// A relay of `host`'s exposed `remote_port` in the handover (it holds
    /// nothing besides its two ends).
    pub fn expose_doc(&self, host: &str, remote_port: u16) -> ExposeRelayDoc {
        ExposeRelayDoc {
            host: host.to_string(),
            remote_port,
            client_fd: self.client,
            upstream_fd: self.upstream,
            up_open: self.up_open,
            down_open: self.down_open,
        }
    }
}

impl AdoptedRelay {
    /// An engine socket's relay the previous image paused, its descriptors
    /// owned.
    pub fn from_engine_doc(r: &RelayDoc, fds: &mut Descriptors) -> Option<AdoptedRelay> {
        Some(AdoptedRelay {
            client: fds.take(r.client_fd)?,
            upstream: fds.take(r.upstream_fd)?,
            up_open: r.up_open,
            down_open: r.down_open,
            keep: fds.take_all(&r.keep_fds),
            drain: r.drain_fd.and_then(|fd| fds.take(fd)),
        })
    }

    /// An exposure's relay the previous image paused, its descriptors owned.
    pub fn from_expose_doc(r: &ExposeRelayDoc, fds: &mut Descriptors) -> Option<AdoptedRelay> {
        Some(AdoptedRelay {
            client: fds.take(r.client_fd)?,
            upstream: fds.take(r.upstream_fd)?,
            up_open: r.up_open,
            down_open: r.down_open,
            keep: Vec::new(),
            drain: None,
        })
    }
}

/// A Unix stream handed over by the previous image, for tokio.
pub fn unix_stream(fd: OwnedFd) -> std::io::Result<tokio::net::UnixStream> {
    let s = std::os::unix::net::UnixStream::from(fd);
    s.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(s)
}

/// The next connection on `listener`, never while fwdd is `frozen` for an
/// upgrade: meanwhile connections wait in the kernel's backlog, and one
/// accepted as the freeze begins is left there for the next image.
pub async fn accept_thawed(
    listener: &tokio::net::UnixListener,
    frozen: &mut watch::Receiver<bool>,
) -> std::io::Result<tokio::net::UnixStream> {
    loop {
        let _ = frozen.wait_for(|f| !*f).await;
        tokio::select! {
            accepted = listener.accept() => return accepted.map(|(s, _)| s),
            _ = frozen.wait_for(|f| *f) => continue,
        }
    }
}

/// One owner's relays, by registration.
#[derive(Debug, Default)]
pub struct Relays {
    states: RefCell<BTreeMap<u64, RelayState>>,
    next: Cell<u64>,
}

impl Relays {
    /// Registers a relay; it leaves the registry when the entry is dropped.
    pub fn register(self: &Rc<Self>, state: RelayState) -> RelayEntry {
        let id = self.next.get();
        self.next.set(id + 1);
        self.states.borrow_mut().insert(id, state);
        RelayEntry {
            relays: self.clone(),
            id,
        }
    }

    /// Relays an upgrade must wait for.
    pub fn running(&self) -> usize {
        self.states
            .borrow()
            .values()
            .filter(|r| matches!(r, RelayState::Running))
            .count()
    }

    pub fn paused(&self) -> Vec<PausedRelay> {
        self.states
            .borrow()
            .values()
            .filter_map(|r| match r {
                RelayState::Paused(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// Connections accepted but not relaying yet.
    pub fn queued(&self) -> Vec<RawFd> {
        self.states
            .borrow()
            .values()
            .filter_map(|r| match r {
                RelayState::Queued(fd) => Some(*fd),
                _ => None,
            })
            .collect()
    }
}

/// A relay in its owner's registry, removed when dropped.
pub struct RelayEntry {
    relays: Rc<Relays>,
    id: u64,
}

impl RelayEntry {
    pub fn set(&self, state: RelayState) {
        self.relays.states.borrow_mut().insert(self.id, state);
    }
}

impl Drop for RelayEntry {
    fn drop(&mut self) {
        self.relays.states.borrow_mut().remove(&self.id);
    }
}

/// Which directions of a relay still carry bytes, and what it holds.
pub struct Directions {
    pub up_open: bool,
    pub down_open: bool,
    pub keep: Vec<RawFd>,
    pub drain: Option<RawFd>,
}

impl Directions {
    pub fn both() -> Directions {
        Directions {
            up_open: true,
            down_open: true,
            keep: Vec::new(),
            drain: None,
        }
    }
}

/// How a relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both directions ended with an EOF passed on.
    Ended,
    /// A read or write failed (a reset, a broken pipe).
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pump {
    Ended,
    Paused,
    Failed,
}

/// Bytes both ways until both directions have ended; each EOF is passed on
/// as a half-close (`docker exec -i` and `attach` rely on it). While `frozen`
/// (a binary upgrade), each direction stops after the write it is in, so
/// the relay's descriptors can be handed over with no byte held here; if
/// the upgrade fails it carries on. `bytes` counts up and down. With
/// `hold` (an engine connection), the client's requests are read and a
/// start's answer may wait (see `starts`).
pub async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    frozen: &watch::Sender<bool>,
    bytes: [&Cell<u64>; 2],
    mut d: Directions,
    entry: &RelayEntry,
    hold: Option<&StartHold<'_>>,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + AsRawFd + Unpin,
    U: AsyncRead + AsyncWrite + AsRawFd + Unpin,
{
    entry.set(RelayState::Running);
    let (client_fd, upstream_fd) = (client.as_raw_fd(), upstream.as_raw_fd());
    let (mut cr, mut cw) = tokio::io::split(&mut *client);
    let (mut ur, mut uw) = tokio::io::split(&mut *upstream);
    loop {
        let (up, down) = tokio::join!(
            pump(
                d.up_open,
                &mut cr,
                &mut uw,
                frozen,
                bytes[0],
                hold.map(Watch::Requests)
            ),
            pump(
                d.down_open,
                &mut ur,
                &mut cw,
                frozen,
                bytes[1],
                hold.map(Watch::Answers)
            ),
        );
        if up == Pump::Failed || down == Pump::Failed {
            return RelayEnd::Failed;
        }
        d.up_open = up == Pump::Paused;
        d.down_open = down == Pump::Paused;
        if !d.up_open && !d.down_open {
            return RelayEnd::Ended;
        }
        entry.set(RelayState::Paused(PausedRelay {
            client: client_fd,
            upstream: upstream_fd,
            up_open: d.up_open,
            down_open: d.down_open,
            keep: d.keep.clone(),
            drain: d.drain,
        }));
        let _ = frozen.subscribe().wait_for(|f| !*f).await;
        entry.set(RelayState::Running);
    }
}

/// What a direction of an engine connection looks at before it writes.
#[derive(Clone, Copy)]
enum Watch<'h, 'a> {
    /// The client's requests.
    Requests(&'h StartHold<'a>),
    /// The engine's answers.
    Answers(&'h StartHold<'a>),
}

async fn pump(
    open: bool,
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    frozen: &watch::Sender<bool>,
    bytes: &Cell<u64>,
    watch: Option<Watch<'_, '_>>,
) -> Pump {
    if !open {
        return Pump::Ended;
    }
    let mut frozen = frozen.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            _ = frozen.wait_for(|f| *f) => return Pump::Paused,
            read = from.read(&mut buf) => match read {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return Pump::Ended;
                }
                Ok(n) => n,
                Err(_) => return Pump::Failed,
            },
        };
        match watch {
            Some(Watch::Requests(h)) => h.client_sent(&buf[..n]),
            Some(Watch::Answers(h)) => h.before_answer(&buf[..n]).await,
            None => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return Pump::Failed;
        }
        bytes.set(bytes.get() + n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay frozen mid-stream pauses with nothing held, is registered as
    /// paused with both descriptors, and carries on, byte for byte, after a
    /// thaw; each half-close is passed on.
    #[tokio::test(flavor = "current_thread")]
    async fn pauses_between_writes_and_carries_on() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (mut a, b) = tokio::net::UnixStream::pair().unwrap();
                let (c, mut d) = tokio::net::UnixStream::pair().unwrap();
                let frozen = Rc::new(watch::channel(false).0);
                let relays = Rc::new(Relays::default());
                let counts = Rc::new((Cell::new(0u64), Cell::new(0u64)));
                let task = {
                    let (frozen, relays, counts) = (frozen.clone(), relays.clone(), counts.clone());
                    tokio::task::spawn_local(async move {
                        let (mut b, mut c) = (b, c);
                        let entry = relays.register(RelayState::Queued(b.as_raw_fd()));
                        relay(
                            &mut b,
                            &mut c,
                            &frozen,
                            [&counts.0, &counts.1],
                            Directions::both(),
                            &entry,
                            None,
                        )
                        .await
                    })
                };
                a.write_all(b"one").await.unwrap();
                let mut got = [0u8; 3];
                d.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"one");

                frozen.send_replace(true);
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
                while relays.paused().is_empty() {
                    assert!(tokio::time::Instant::now() < deadline, "never paused");
                    tokio::task::yield_now().await;
                }
                assert_eq!(relays.running(), 0);
                let p = &relays.paused()[0];
                assert!(p.up_open && p.down_open);
                // Written while paused: not moved until the thaw.
                a.write_all(b"two").await.unwrap();
                frozen.send_replace(false);
                d.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"two");
                assert_eq!(counts.0.get(), 6);

                a.shutdown().await.unwrap();
                let mut rest = Vec::new();
                d.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty(), "the EOF is passed on");
                d.write_all(b"back").await.unwrap();
                d.shutdown().await.unwrap();
                let mut back = Vec::new();
                a.read_to_end(&mut back).await.unwrap();
                assert_eq!(back, b"back");
                assert_eq!(task.await.unwrap(), RelayEnd::Ended);
                assert!(relays.queued().is_empty() && relays.paused().is_empty());
            })
            .await;
    }
}
