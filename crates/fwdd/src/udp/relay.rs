//! One host's relay: started on the host once it has a UDP forward and a
//! master, restarted with every new master, ended when its last forward
//! goes. Datagrams from the forwards' sockets become frames to the relay,
//! one session per client address; replies go back through the socket the
//! client used. Every queue is bounded: what does not fit is dropped and
//! counted, and nothing waits on a slow side.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fwd_core::udp::{Decoder, Frame, Opened, Queue, SessionSettings, Sessions, HELLO};
use fwd_core::HostKey;
use fwd_metrics::{HostCounters, UdpDirection, UdpDropped};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::deploy::{self, NotRunning};
use crate::serve::ServeContext;

/// Bytes queued toward the relay at most (the rest is dropped).
const TO_RELAY_MAX: usize = 256 * 1024;
/// Datagrams waiting between the sockets and the relay task at most.
pub const INBOX: usize = 1024;
/// How long a relay that ended waits for its master to be seen gone
/// before it is started again on the same master.
const MASTER_GONE_WITHIN: Duration = Duration::from_millis(500);

/// A datagram a client sent to a forward.
pub struct Inbound {
    pub port: u16,
    pub client: SocketAddr,
    pub datagram: Vec<u8>,
}

/// Counters of one forward, shared with its sockets.
#[derive(Default, Debug)]
pub struct UdpStats {
    pub datagrams_in: Cell<u64>,
    pub datagrams_out: Cell<u64>,
    pub dropped: Cell<u64>,
    pub sessions: Cell<u64>,
}

/// Where the relay sends a forward's datagrams, and how replies leave.
pub struct Target {
    pub to: SocketAddr,
    /// Each socket with its address, learnt once: a reply leaves through
    /// the socket of its client's family.
    pub sockets: Vec<(SocketAddr, Rc<UdpSocket>)>,
    pub stats: Rc<UdpStats>,
}

/// What status says of a host's relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayState {
    /// No master yet, or the relay is being put on the host.
    Starting,
    Running,
    Unsupported {
        why: String,
        fix: String,
    },
    Failed(String),
}

/// The task's shared view: the forwards it serves, its state.
pub struct Shared {
    pub targets: RefCell<BTreeMap<u16, Target>>,
    pub state: RefCell<RelayState>,
    /// Datagrams the relay on the host dropped (it says so).
    pub relay_dropped: Cell<u64>,
    /// The host's counters for /metrics, which outlive its forwards.
    pub counters: Arc<HostCounters>,
}

pub async fn run(
    host: HostKey,
    ctx: Rc<ServeContext>,
    mut inbox: mpsc::Receiver<Inbound>,
    shared: Rc<Shared>,
    settings: SessionSettings,
) {
    let Some(mut link_rx) = ctx.link_watch(&host) else {
        return;
    };
    let mut backoff = Duration::from_secs(1);
    // The host's platform, asked once: a new master is the same host.
    let mut platform = None;
    loop {
        // A master first; meanwhile datagrams are dropped and counted.
        let link = loop {
            let now = link_rx.borrow_and_update().clone();
            if let Some(link) = now {
                break link;
            }
            tokio::select! {
                changed = link_rx.changed() => if changed.is_err() { return },
                d = inbox.recv() => match d {
                    Some(d) => drop_one(&shared, d.port),
                    None => return,
                },
            }
        };
        *shared.state.borrow_mut() = RelayState::Starting;
        let started = tokio::select! {
            r = deploy::start(&link.control_path, &mut platform) => r,
            _ = link_rx.changed() => continue,
        };
        let outcome = match started {
            Ok(remote) => {
                backoff = Duration::from_secs(1);
                serve(
                    &host,
                    remote,
                    &mut inbox,
                    &mut link_rx,
                    link.generation,
                    &shared,
                    settings,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Ended::InboxClosed) => return,
            Ok(Ended::NewMaster) => continue,
            Ok(Ended::RelayExited(status)) => {
                // Mostly its master went (a kill, a network loss): the link
                // says so a moment later, and the relay starts on the next
                // master. Otherwise it is started again on this one.
                let gone = tokio::time::timeout(MASTER_GONE_WITHIN, link_rx.changed()).await;
                if gone.is_err() {
                    tracing::warn!(event = "udp_relay_ended", host = %host, "the UDP relay on {host} ended (exit {status}); starting it again");
                }
            }
            Err(NotRunning::Unsupported { why, fix }) => {
                tracing::warn!(event = "udp_unsupported", host = %host, reason = %why, "UDP ports of {host} stay unsupported: {why}; {fix}");
                *shared.state.borrow_mut() = RelayState::Unsupported { why, fix };
                // Only another master (a reconnect) may change that.
                if !wait_new_master(&mut link_rx, &mut inbox, &shared, link.generation).await {
                    return;
                }
            }
            Err(NotRunning::Failed(why)) => {
                tracing::warn!(event = "udp_relay_failed", host = %host, reason = %why, "the UDP relay on {host} is not running: {why}; trying again in {}s", backoff.as_secs());
                *shared.state.borrow_mut() = RelayState::Failed(why);
                let until = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        _ = link_rx.changed() => break,
                        d = inbox.recv() => match d {
                            Some(d) => drop_one(&shared, d.port),
                            None => return,
                        },
                    }
                }
            }
        }
    }
}

enum Ended {
    InboxClosed,
    NewMaster,
    /// The relay's session ended (its exit status, as words).
    RelayExited(String),
}

fn drop_one(shared: &Shared, port: u16) {
    shared.counters.udp_drop(UdpDropped::Runner, 1);
    if let Some(t) = shared.targets.borrow().get(&port) {
        t.stats.dropped.set(t.stats.dropped.get() + 1);
    }
}

/// Waits for a master of another generation, dropping datagrams.
async fn wait_new_master(
    link_rx: &mut crate::serve::LinkWatch,
    inbox: &mut mpsc::Receiver<Inbound>,
    shared: &Shared,
    generation: u64,
) -> bool {
    loop {
        if link_rx
            .borrow()
            .as_ref()
            .is_some_and(|l| l.generation != generation)
        {
            return true;
        }
        tokio::select! {
            changed = link_rx.changed() => if changed.is_err() { return false },
            d = inbox.recv() => match d {
                Some(d) => drop_one(shared, d.port),
                None => return false,
            },
        }
    }
}

/// Relays until the master changes, the relay ends or the last forward
/// goes.
async fn serve(
    host: &HostKey,
    remote: fwd_ssh::RemoteProcess,
    inbox: &mut mpsc::Receiver<Inbound>,
    link_rx: &mut crate::serve::LinkWatch,
    generation: u64,
    shared: &Shared,
    settings: SessionSettings,
) -> Result<Ended, NotRunning> {
    let fwd_ssh::RemoteProcess { stdio, session, .. } = remote;
    let mut decoder = Decoder::default();
    let mut out: Vec<u8> = Vec::new();
    let mut queue = Queue::new(TO_RELAY_MAX);
    let mut sessions = Sessions::new(settings);
    // The relay said HELLO before `deploy::start` returned.
    *shared.state.borrow_mut() = RelayState::Running;
    tracing::info!(event = "udp_relay_started", host = %host, "the UDP relay runs on {host}");
    push(&mut out, &mut queue, &Frame::Hello(HELLO.to_vec()), true);
    let mut buf = vec![0u8; 65_536];
    let ended = loop {
        let expiry = sessions.next_expiry().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = stdio.readable() => {
                if r.is_err() { break Err(NotRunning::Failed("the relay's channel failed".into())) }
                match stdio.try_read(&mut buf) {
                    Ok(0) => break Ok(Ended::RelayExited(exit_status(session).await)),
                    Ok(n) => {
                        let frames = match decoder.push(&buf[..n]) {
                            Ok(f) => f,
                            Err(e) => break Err(NotRunning::Failed(format!("the relay sent what fwd cannot read: {e}"))),
                        };
                        for f in frames {
                            reply(f, &mut sessions, shared, &mut out, &mut queue);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => break Err(NotRunning::Failed(format!("the relay's channel: {e}"))),
                }
            }
            r = stdio.writable(), if !out.is_empty() => {
                if r.is_err() { break Err(NotRunning::Failed("the relay's channel failed".into())) }
                match stdio.try_write(&out) {
                    Ok(n) => {
                        out.drain(..n);
                        queue.sent(n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => break Err(NotRunning::Failed(format!("the relay's channel: {e}"))),
                }
            }
            d = inbox.recv() => {
                let Some(d) = d else { break Ok(Ended::InboxClosed) };
                outbound(d, &mut sessions, shared, &mut out, &mut queue);
            }
            _ = sleep_until(expiry) => {
                for id in sessions.expire(Instant::now()) {
                    push(&mut out, &mut queue, &Frame::Close { session: id }, true);
                }
                count_sessions(&sessions, shared);
            }
            changed = link_rx.changed() => {
                let same = link_rx.borrow().as_ref().is_some_and(|l| l.generation == generation);
                if changed.is_err() || !same {
                    break Ok(Ended::NewMaster);
                }
            }
        }
    };
    // The relay ends with its stdin: this side's end closes here.
    drop(stdio);
    for t in shared.targets.borrow().values() {
        t.stats.sessions.set(0);
    }
    ended
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The relay's session ended: its exit status, as words.
async fn exit_status(session: fwd_ssh::Session) -> String {
    tokio::time::timeout(Duration::from_secs(2), session.wait())
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .map_or_else(|| "unknown".into(), |s| s.to_string())
}

/// Queues a frame for the relay; a datagram that does not fit is dropped
/// (`always`: small control frames). Returns whether it was queued.
fn push(out: &mut Vec<u8>, queue: &mut Queue, frame: &Frame, always: bool) -> bool {
    let mut bytes = Vec::new();
    if frame.encode(&mut bytes).is_err() {
        return false;
    }
    if !always && !queue.admit(bytes.len()) {
        return false;
    }
    if always {
        queue.queued += bytes.len();
    }
    out.extend_from_slice(&bytes);
    true
}

fn outbound(
    d: Inbound,
    sessions: &mut Sessions,
    shared: &Shared,
    out: &mut Vec<u8>,
    queue: &mut Queue,
) {
    let targets = shared.targets.borrow();
    let Some(target) = targets.get(&d.port) else {
        return;
    };
    let id = match sessions.open(d.port, d.client, Instant::now()) {
        Opened::Existing(id) => id,
        Opened::New(id) => {
            push(
                out,
                queue,
                &Frame::Open {
                    session: id,
                    to: target.to,
                },
                true,
            );
            count_sessions(sessions, shared);
            id
        }
        Opened::Full => {
            target.stats.dropped.set(target.stats.dropped.get() + 1);
            shared.counters.udp_drop(UdpDropped::Runner, 1);
            return;
        }
    };
    let frame = Frame::Data {
        session: id,
        datagram: d.datagram,
    };
    if !push(out, queue, &frame, false) {
        target.stats.dropped.set(target.stats.dropped.get() + 1);
        shared.counters.udp_drop(UdpDropped::Runner, 1);
    }
}

fn reply(f: Frame, sessions: &mut Sessions, shared: &Shared, out: &mut Vec<u8>, queue: &mut Queue) {
    match f {
        Frame::Data { session, datagram } => {
            let Some((port, client)) = sessions.reply_to(session, Instant::now()) else {
                return;
            };
            let targets = shared.targets.borrow();
            let Some(target) = targets.get(&port) else {
                // Its forward went: the session ends.
                sessions.close(session);
                push(out, queue, &Frame::Close { session }, true);
                return;
            };
            let socket = target
                .sockets
                .iter()
                .find(|(a, _)| a.is_ipv4() == client.is_ipv4())
                .map(|(_, s)| s);
            match socket.map(|s| s.try_send_to(&datagram, client)) {
                Some(Ok(_)) => {
                    target
                        .stats
                        .datagrams_out
                        .set(target.stats.datagrams_out.get() + 1);
                    shared.counters.udp_datagram(UdpDirection::Out);
                }
                _ => {
                    target.stats.dropped.set(target.stats.dropped.get() + 1);
                    shared.counters.udp_drop(UdpDropped::Runner, 1);
                }
            }
        }
        Frame::Close { session } => {
            sessions.close(session);
            count_sessions(sessions, shared);
        }
        Frame::Dropped(n) => {
            shared.relay_dropped.set(shared.relay_dropped.get() + n);
            shared.counters.udp_drop(UdpDropped::Host, n);
        }
        Frame::Hello(_) | Frame::Open { .. } => {}
    }
}

fn count_sessions(sessions: &Sessions, shared: &Shared) {
    for (port, t) in shared.targets.borrow().iter() {
        t.stats.sessions.set(sessions.count(*port) as u64);
    }
}
