//! UDP forwards (issue 33; `udp = true` in a `[[host]]`): each published
//! UDP port of a running container is a socket on the runner's loopback at
//! the same number (127.0.0.1 and [::1]), and its datagrams cross the
//! host's one master to a relay on the host (`fwd-udp-relay`, put there
//! and started by `deploy`, driven by `relay`), which sends them to the
//! published port. The sockets stay bound while a master is replaced
//! (datagrams meanwhile are dropped and counted); a container's removal
//! closes its port; the last forward of a host ends its relay.

mod deploy;
mod relay;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::rc::Rc;

use fwd_core::udp::{SessionSettings, UdpClaim};
use fwd_core::HostKey;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use relay::{Inbound, Shared, Target};
pub use relay::{RelayState, UdpStats};

use crate::handover::document::{self, ListenerDoc, UdpDoc};
use crate::handover::Descriptors;
use crate::serve::ServeContext;

/// One forwarded UDP port.
pub struct UdpForward {
    pub claim: UdpClaim,
    pub stats: Rc<UdpStats>,
    /// Why its sockets could not be bound (tried again at the next plan).
    pub failed: Option<String>,
    /// Its sockets (an upgrade hands them over).
    sockets: Vec<Rc<UdpSocket>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for UdpForward {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A host's relay task and what it shares.
struct HostRelay {
    inbox: mpsc::Sender<Inbound>,
    shared: Rc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for HostRelay {
    fn drop(&mut self) {
        // The task ends the relay on the host as it ends (its stdin closes).
        self.task.abort();
    }
}

#[derive(Default)]
pub struct UdpTable {
    pub forwards: BTreeMap<u16, UdpForward>,
    relays: BTreeMap<HostKey, HostRelay>,
    settings: SessionSettings,
}

impl UdpTable {
    pub fn set_settings(&mut self, settings: SessionSettings) {
        self.settings = settings;
    }

    /// The hosts' relays' states, for status.
    pub fn relay_state(&self, host: &str) -> Option<(RelayState, u64)> {
        self.relays.get(host).map(|r| {
            (
                r.shared.state.borrow().clone(),
                r.shared.relay_dropped.get(),
            )
        })
    }

    /// Holds exactly the forwards `wanted` lists (by local port): new ones
    /// bound, a port that changed owner rebound, the rest closed; a host
    /// with no forward left has no relay.
    pub fn apply(&mut self, wanted: BTreeMap<u16, UdpClaim>, ctx: &Rc<ServeContext>) {
        self.forwards.retain(|port, f| {
            wanted
                .get(port)
                .is_some_and(|c| c == &f.claim && f.failed.is_none())
        });
        for (port, claim) in wanted {
            if self.forwards.contains_key(&port) {
                continue;
            }
            let relay = self.relay_for(&claim.host, ctx);
            let forward = bind(claim, relay);
            self.forwards.insert(port, forward);
        }
        let hosts: Vec<HostKey> = self.relays.keys().cloned().collect();
        for host in hosts {
            if !self.forwards.values().any(|f| f.claim.host == host) {
                self.relays.remove(&host);
            }
        }
        // Each relay serves its host's forwards, as they are now.
        for (host, relay) in &self.relays {
            let mut targets = relay.shared.targets.borrow_mut();
            targets.retain(|port, _| {
                self.forwards
                    .get(port)
                    .is_some_and(|f| &f.claim.host == host && f.failed.is_none())
            });
        }
    }

    /// What an upgrade hands over: each bound forward's sockets.
    pub fn to_doc(&self) -> Vec<UdpDoc> {
        use std::os::fd::AsRawFd;
        self.forwards
            .values()
            .filter(|f| f.failed.is_none())
            .map(|f| {
                let c = &f.claim;
                UdpDoc {
                    host: c.host.to_string(),
                    container: c.container.as_str().to_string(),
                    container_name: c.container_name.clone(),
                    container_port: c.container_port,
                    started_at_ns: c.started_at_ns,
                    local_port: c.local_port,
                    bind: c.bind.clone(),
                    to_ip: c.to.ip.clone(),
                    to_port: c.to.port,
                    sockets: f
                        .sockets
                        .iter()
                        .filter_map(|s| {
                            Some(ListenerDoc {
                                addr: s.local_addr().ok()?,
                                fd: s.as_raw_fd(),
                            })
                        })
                        .collect(),
                    datagrams_in: f.stats.datagrams_in.get(),
                    datagrams_out: f.stats.datagrams_out.get(),
                    dropped: f.stats.dropped.get(),
                }
            })
            .collect()
    }

    /// The new image takes over a forward's sockets: they never unbind,
    /// and its host's relay starts again on the adopted master.
    pub fn adopt(&mut self, u: &UdpDoc, fds: &mut Descriptors, ctx: &Rc<ServeContext>) {
        let Ok(claim) = document::udp_claim(u) else {
            return;
        };
        let sockets: Vec<UdpSocket> = u
            .sockets
            .iter()
            .filter_map(|l| fds.take(l.fd))
            .filter_map(|fd| {
                let s = std::net::UdpSocket::from(fd);
                s.set_nonblocking(true).ok()?;
                UdpSocket::from_std(s).ok()
            })
            .collect();
        if sockets.is_empty() {
            return;
        }
        let stats = Rc::new(UdpStats::default());
        stats.datagrams_in.set(u.datagrams_in);
        stats.datagrams_out.set(u.datagrams_out);
        stats.dropped.set(u.dropped);
        let port = claim.local_port;
        let relay = self.relay_for(&claim.host, ctx);
        let forward = serve(claim, sockets, relay, stats);
        self.forwards.insert(port, forward);
    }

    fn relay_for(&mut self, host: &HostKey, ctx: &Rc<ServeContext>) -> &HostRelay {
        let settings = self.settings;
        self.relays.entry(host.clone()).or_insert_with(|| {
            let (inbox, rx) = mpsc::channel(relay::INBOX);
            let shared = Rc::new(Shared {
                targets: Default::default(),
                state: std::cell::RefCell::new(RelayState::Starting),
                relay_dropped: Default::default(),
                counters: ctx.counters(host),
            });
            let task = tokio::task::spawn_local(relay::run(
                host.clone(),
                ctx.clone(),
                rx,
                shared.clone(),
                settings,
            ));
            HostRelay {
                inbox,
                shared,
                task,
            }
        })
    }
}

fn bind(claim: UdpClaim, relay: &HostRelay) -> UdpForward {
    match bind_sockets(&claim) {
        Ok(sockets) => {
            tracing::info!(
                event = "udp_forward_added",
                host = %claim.host,
                port = claim.local_port,
                container = %claim.container_name,
                container_id = %claim.container,
                remote = %claim.to,
                "forwarding UDP localhost:{} to {} of container {}",
                claim.local_port,
                claim.to,
                claim.container_name
            );
            serve(claim, sockets, relay, Rc::new(UdpStats::default()))
        }
        Err(why) => UdpForward {
            claim,
            stats: Rc::default(),
            failed: Some(why),
            sockets: Vec::new(),
            tasks: Vec::new(),
        },
    }
}

/// The claim's port on each of its addresses (a machine without IPv6
/// loopback has 127.0.0.1 alone).
fn bind_sockets(claim: &UdpClaim) -> Result<Vec<UdpSocket>, String> {
    let port = claim.local_port;
    let mut sockets = Vec::new();
    for ip in &claim.bind {
        match bind_one(SocketAddr::new(*ip, port)) {
            Ok(s) => sockets.push(s),
            Err(e)
                if *ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
                    && (e.kind() == std::io::ErrorKind::AddrNotAvailable
                        || e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT)) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(format!(
                    "UDP {ip}:{port} is already in use by another program"
                ))
            }
            Err(e) => return Err(format!("cannot bind UDP {ip}:{port}: {e}")),
        }
    }
    if sockets.is_empty() {
        return Err(format!("no address to bind UDP port {port} on"));
    }
    Ok(sockets)
}

/// A forward serving on `sockets`: the relay of its host knows it, and a
/// task per socket reads its datagrams.
fn serve(
    claim: UdpClaim,
    sockets: Vec<UdpSocket>,
    relay: &HostRelay,
    stats: Rc<UdpStats>,
) -> UdpForward {
    let port = claim.local_port;
    let sockets: Vec<Rc<UdpSocket>> = sockets.into_iter().map(Rc::new).collect();
    let to = claim
        .to
        .ip
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, claim.to.port))
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], claim.to.port)));
    relay.shared.targets.borrow_mut().insert(
        port,
        Target {
            to,
            sockets: sockets
                .iter()
                .filter_map(|s| Some((s.local_addr().ok()?, s.clone())))
                .collect(),
            stats: stats.clone(),
        },
    );
    let tasks = sockets
        .iter()
        .map(|s| {
            tokio::task::spawn_local(receive(
                s.clone(),
                port,
                relay.inbox.clone(),
                stats.clone(),
                relay.shared.counters.clone(),
            ))
        })
        .collect();
    UdpForward {
        claim,
        stats,
        failed: None,
        sockets,
        tasks,
    }
}

fn bind_one(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Every datagram of the socket to the host's relay task; when its inbox
/// is full, dropped and counted (never waited for).
async fn receive(
    socket: Rc<UdpSocket>,
    port: u16,
    inbox: mpsc::Sender<Inbound>,
    stats: Rc<UdpStats>,
    counters: std::sync::Arc<fwd_metrics::HostCounters>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        stats.datagrams_in.set(stats.datagrams_in.get() + 1);
        counters.udp_datagram(fwd_metrics::UdpDirection::In);
        let d = Inbound {
            port,
            client,
            datagram: buf[..n.min(fwd_core::udp::DATAGRAM_MAX)].to_vec(),
        };
        match inbox.try_send(d) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.dropped.set(stats.dropped.get() + 1);
                counters.udp_drop(fwd_metrics::UdpDropped::Runner, 1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
