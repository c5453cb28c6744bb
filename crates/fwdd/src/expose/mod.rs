//! Exposures: ports of the runner that a host's containers reach
//! (`expose`), carried out for one host as `fwd_core::ExposeMachine`
//! decides.
//!
//! Each exposure has a private socket of fwdd's, `h<N>.x<port>` in the
//! runtime directory ([`relay`]). On every new master the host's remote
//! forwards are registered (`MUX_C_OPEN_FWD`, remote: sshd listens on the
//! bind address, the master connects each arrival to that socket), then
//! verified: a channel through the master to the bind address carrying a
//! token must arrive at the socket, which catches sshd's silent loopback
//! bind under `GatewayPorts no`. fwdd relays each arrival to the runner
//! address from the configuration, counts it, and closes it at once (said
//! once) when nothing listens there.

mod relay;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fwd_core::{
    BindScope, ExposeCommand, ExposeMachine, ExposeSource, ExposeSpec, ExposeState, HostKey,
    RemoteBind, VerifyResult,
};
use fwd_ssh::{MuxClient, MuxError};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::handover::document::{self, ExposeQueuedDoc, ExposureDoc, HostDoc, SocketDoc};
use crate::handover::{Descriptors, Document};
use crate::serve::relay::AdoptedRelay;
use crate::serve::{Link, ServeContext};
pub use relay::ExposeStats;
use relay::PortSocket;

/// How long a verification's token may take to arrive.
const VERIFY_WITHIN: Duration = Duration::from_secs(5);
/// How long asking the engine for its gateway, or sshd for a forward, may take.
const ASK_WITHIN: Duration = Duration::from_secs(10);

/// One host's exposures: the machine, the sockets, the task carrying out.
pub struct HostExposures {
    pub host: HostKey,
    pub machine: RefCell<ExposeMachine>,
    scopes: RefCell<Vec<BindScope>>,
    /// `<runtime>/h<N>.x`: each exposure's socket is this plus its port.
    socket_prefix: PathBuf,
    sockets: RefCell<BTreeMap<u16, PortSocket>>,
    /// Verifications in flight: the token each socket waits for.
    verifying: relay::Verifying,
    wake: Notify,
    changed: Rc<watch::Sender<u64>>,
    serve: Rc<ServeContext>,
    task: RefCell<Option<JoinHandle<()>>>,
}

/// An exposure the previous image handed over.
pub struct AdoptedExposure {
    pub spec: ExposeSpec,
    pub source: ExposeSource,
    pub path: PathBuf,
    pub listener: OwnedFd,
    pub total: u64,
    pub failed: u64,
}

impl AdoptedExposure {
    /// The exposure `e` names, its socket owned.
    pub fn from_doc(e: &ExposureDoc, fds: &mut Descriptors) -> Option<AdoptedExposure> {
        // Taken either way: a spec `Document::parse` refused is closed.
        let listener = fds.take(e.socket.fd)?;
        let spec = document::expose_spec(e).ok()?;
        Some(AdoptedExposure {
            spec,
            source: if e.runtime {
                ExposeSource::Runtime
            } else {
                ExposeSource::Config
            },
            path: e.socket.path.clone(),
            listener,
            total: e.connections_total,
            failed: e.connections_failed,
        })
    }
}

/// What status shows of one exposure.
pub struct ExposureView {
    pub spec: ExposeSpec,
    pub source: ExposeSource,
    pub state: ExposeState,
    pub registered: Vec<RemoteBind>,
    pub stats: Option<Rc<ExposeStats>>,
}

impl HostExposures {
    pub fn new(
        host: HostKey,
        socket_prefix: PathBuf,
        changed: Rc<watch::Sender<u64>>,
        serve: Rc<ServeContext>,
    ) -> Rc<HostExposures> {
        Rc::new(HostExposures {
            host,
            machine: RefCell::default(),
            scopes: RefCell::new(vec![BindScope::Gateway]),
            socket_prefix,
            sockets: RefCell::default(),
            verifying: Rc::default(),
            wake: Notify::new(),
            changed,
            serve,
            task: RefCell::new(None),
        })
    }

    /// Starts carrying out the machine's commands on the host's links.
    pub fn start(self: &Rc<Self>) {
        let me = self.clone();
        *self.task.borrow_mut() = Some(tokio::task::spawn_local(async move {
            let serve = me.serve.clone();
            me.run(serve).await;
        }));
    }

    /// Takes over what the previous image served (before `configure`):
    /// the sockets keep their queues, the runtime exposures their source.
    pub fn adopt(&self, adopted: Vec<AdoptedExposure>) {
        for a in adopted {
            let port = a.spec.remote_port;
            let socket = PortSocket::adopt(
                &self.host,
                port,
                &a.path,
                a.listener,
                a.spec.target,
                self.verifying.clone(),
                self.serve.clone(),
            );
            match socket {
                Ok(socket) => {
                    socket.stats.total.set(a.total);
                    socket.stats.failed.set(a.failed);
                    self.sockets.borrow_mut().insert(port, socket);
                    self.machine
                        .borrow_mut()
                        .add(a.source, a.spec, Instant::now());
                }
                Err(e) => {
                    tracing::warn!(event = "upgrade_expose_lost", host = %self.host, port, error = %e,
                    "cannot take over the socket of exposed port {port}: {e}")
                }
            }
        }
    }

    /// Their part of the handover: each exposure in its host's record `h`,
    /// its relays paused between two writes and its arrivals not relaying
    /// yet in the document's lists.
    pub fn to_doc(&self, h: &mut HostDoc, doc: &mut Document) {
        let host = self.host.to_string();
        let sockets = self.sockets.borrow();
        for e in self.machine.borrow().exposures() {
            let port = e.spec.remote_port;
            let Some(s) = sockets.get(&port) else {
                continue;
            };
            doc.expose_relays.extend(
                s.relays()
                    .paused()
                    .iter()
                    .map(|r| r.expose_doc(&host, port)),
            );
            doc.expose_queued
                .extend(s.relays().queued().into_iter().map(|fd| ExposeQueuedDoc {
                    host: host.clone(),
                    remote_port: port,
                    fd,
                }));
            h.exposures.push(ExposureDoc {
                remote_port: port,
                target: e.spec.target.to_string(),
                runtime: e.source == ExposeSource::Runtime,
                socket: SocketDoc {
                    path: s.path.clone(),
                    fd: s.listener_fd,
                },
                connections_total: s.stats.total.get(),
                connections_failed: s.stats.failed.get(),
            });
        }
    }

    /// Resumes this host's relays the previous image paused, and serves the
    /// arrivals it had accepted but not relayed yet.
    pub fn resume_from(&self, doc: &Document, fds: &mut Descriptors) {
        let sockets = self.sockets.borrow();
        let mine = |host: &str| host == &*self.host;
        for r in doc.expose_relays.iter().filter(|r| mine(&r.host)) {
            let relay = AdoptedRelay::from_expose_doc(r, fds);
            if let (Some(s), Some(relay)) = (sockets.get(&r.remote_port), relay) {
                s.resume(relay);
            }
        }
        for q in doc.expose_queued.iter().filter(|q| mine(&q.host)) {
            let fd = fds.take(q.fd);
            if let (Some(s), Some(fd)) = (sockets.get(&q.remote_port), fd) {
                s.serve_queued(fd);
            }
        }
    }

    /// Relays an upgrade must wait for.
    pub fn running_relays(&self) -> usize {
        self.sockets
            .borrow()
            .values()
            .map(|s| s.relays().running())
            .sum()
    }

    /// Stops the task and closes every socket (the master's forwards go
    /// with the master).
    pub fn stop(&self) {
        if let Some(t) = self.task.borrow_mut().take() {
            t.abort();
        }
        self.sockets.borrow_mut().clear();
    }

    /// The configuration's exposures and scopes (start, SIGHUP). A change
    /// of scopes takes effect with the next master.
    pub fn configure(&self, specs: Vec<ExposeSpec>, scopes: Vec<BindScope>) -> Result<(), String> {
        *self.scopes.borrow_mut() = scopes;
        for spec in &specs {
            self.socket_for(spec)?;
        }
        self.machine
            .borrow_mut()
            .set_wanted(ExposeSource::Config, specs, Instant::now());
        self.settle();
        Ok(())
    }

    /// `fwdctl expose`: kept until `fwdctl unexpose`, over reloads.
    pub fn expose(&self, spec: ExposeSpec) -> Result<(), String> {
        self.socket_for(&spec)?;
        self.machine
            .borrow_mut()
            .add(ExposeSource::Runtime, spec, Instant::now());
        self.settle();
        Ok(())
    }

    /// `fwdctl unexpose`: `false` if the port was not exposed.
    pub fn unexpose(&self, port: u16) -> bool {
        let removed = self.machine.borrow_mut().remove(port);
        self.settle();
        removed
    }

    /// Each exposure with what its socket counted, in port order.
    pub fn views(&self) -> Vec<ExposureView> {
        let sockets = self.sockets.borrow();
        self.machine
            .borrow()
            .exposures()
            .map(|e| ExposureView {
                spec: e.spec.clone(),
                source: e.source,
                state: e.state.clone(),
                registered: e.registered.clone(),
                stats: sockets.get(&e.spec.remote_port).map(|s| s.stats.clone()),
            })
            .collect()
    }

    /// A socket for the exposure (its target updated if it has one).
    fn socket_for(&self, spec: &ExposeSpec) -> Result<(), String> {
        let mut sockets = self.sockets.borrow_mut();
        if let Some(s) = sockets.get(&spec.remote_port) {
            s.target.set(spec.target);
            return Ok(());
        }
        let path = self.path_of(spec.remote_port);
        fwd_ssh::check_control_path_len(&path).map_err(|e| e.to_string())?;
        let socket = PortSocket::bind(
            &self.host,
            spec.remote_port,
            &path,
            spec.target,
            self.verifying.clone(),
            self.serve.clone(),
        )
        .map_err(|e| format!("cannot listen for exposure {}: {e}", spec.remote_port))?;
        sockets.insert(spec.remote_port, socket);
        Ok(())
    }

    fn path_of(&self, port: u16) -> PathBuf {
        let mut p = self.socket_prefix.clone().into_os_string();
        p.push(port.to_string());
        PathBuf::from(p)
    }

    /// Sockets follow the machine (a removed exposure's socket closes once
    /// its forwards are closed or its master is gone); the task wakes.
    fn settle(&self) {
        let wanted: Vec<u16> = self
            .machine
            .borrow()
            .exposures()
            .map(|e| e.spec.remote_port)
            .collect();
        self.sockets.borrow_mut().retain(|p, _| wanted.contains(p));
        self.wake.notify_one();
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    async fn run(self: Rc<Self>, serve: Rc<ServeContext>) {
        let Some(mut link_rx) = serve.link_watch(&self.host) else {
            return;
        };
        let mut generation = None;
        loop {
            let link = link_rx.borrow_and_update().clone();
            match (&link, generation) {
                (Some(l), g) if g != Some(l.generation) => {
                    generation = Some(l.generation);
                    let binds = self.binds(l).await;
                    self.machine.borrow_mut().link_up(binds, Instant::now());
                    self.changed.send_modify(|v| *v = v.wrapping_add(1));
                }
                (None, Some(_)) => {
                    generation = None;
                    self.machine.borrow_mut().link_down();
                    self.changed.send_modify(|v| *v = v.wrapping_add(1));
                }
                _ => {}
            }
            if let Some(link) = &link {
                self.carry_out(link, &serve).await;
            }
            let due = self.machine.borrow().poll_timeout();
            tokio::select! {
                changed = link_rx.changed() => if changed.is_err() { return },
                _ = self.wake.notified() => {}
                _ = sleep_until(due) => self.machine.borrow_mut().handle_timeout(Instant::now()),
            }
        }
    }

    /// Every command the machine has, one at a time.
    async fn carry_out(&self, link: &Link, serve: &ServeContext) {
        loop {
            let command = self.machine.borrow_mut().poll_command();
            let Some(command) = command else {
                return;
            };
            match command {
                ExposeCommand::Say(n) => {
                    let host = &self.host;
                    if n.warn {
                        tracing::warn!(event = n.event, host = %host, port = n.port, "{}: {}", host, n.message);
                    } else {
                        tracing::info!(event = n.event, host = %host, port = n.port, "{}: {}", host, n.message);
                    }
                    continue;
                }
                ExposeCommand::Register { epoch, port, binds } => {
                    let (accepted, refused) = self.register(link, port, binds).await;
                    self.machine.borrow_mut().registered(
                        epoch,
                        port,
                        accepted,
                        refused,
                        Instant::now(),
                    );
                }
                ExposeCommand::Verify { epoch, port, at } => {
                    let result = self.verify(link, serve, port, at).await;
                    self.machine
                        .borrow_mut()
                        .verified(epoch, port, result, Instant::now());
                }
                ExposeCommand::Unregister { epoch, port, binds } => {
                    self.unregister(link, port, &binds).await;
                    self.machine.borrow_mut().unregistered(epoch);
                    self.settle();
                }
            }
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Where sshd is to listen on this master: the scopes, with the
    /// engine's default bridge gateway when a scope needs it.
    async fn binds(&self, link: &Link) -> Result<Vec<RemoteBind>, String> {
        let scopes = self.scopes.borrow().clone();
        let needs_gateway = scopes
            .iter()
            .any(|s| matches!(s, BindScope::Gateway | BindScope::All));
        let gateway = if needs_gateway {
            match tokio::time::timeout(ASK_WITHIN, bridge_gateway(link)).await {
                Ok(g) => g,
                Err(_) => Err("the engine did not answer in time".to_string()),
            }
        } else {
            Err("not asked".to_string())
        };
        fwd_core::remote_binds(
            &scopes,
            gateway.as_ref().map(|ip| *ip).map_err(String::as_str),
        )
    }

    async fn register(
        &self,
        link: &Link,
        port: u16,
        binds: Vec<RemoteBind>,
    ) -> (Vec<RemoteBind>, Option<String>) {
        let path = self.path_of(port);
        let mut accepted = Vec::new();
        let mut client = match MuxClient::connect(&link.control_path).await {
            Ok(c) => c,
            Err(e) => return (accepted, Some(e.to_string())),
        };
        for bind in binds {
            let asked = tokio::time::timeout(
                ASK_WITHIN,
                client.open_remote_forward(&bind.listen, port, &path),
            )
            .await;
            match asked {
                Ok(Ok(())) => accepted.push(bind),
                Ok(Err(MuxError::Refused(why))) => return (accepted, Some(why)),
                Ok(Err(e)) => return (accepted, Some(e.to_string())),
                Err(_) => return (accepted, Some("sshd did not answer in time".into())),
            }
        }
        (accepted, None)
    }

    async fn unregister(&self, link: &Link, port: u16, binds: &[RemoteBind]) {
        let path = self.path_of(port);
        let Ok(mut client) = MuxClient::connect(&link.control_path).await else {
            return;
        };
        for bind in binds {
            let closed = tokio::time::timeout(
                ASK_WITHIN,
                client.close_remote_forward(&bind.listen, port, &path),
            )
            .await;
            match closed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(host = %self.host, port, bind = %bind, error = %e, "closing a remote forward failed");
                    // A failed request leaves the connection unusable.
                    match MuxClient::connect(&link.control_path).await {
                        Ok(c) => client = c,
                        Err(_) => return,
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// A channel through the master to `at:port`, carrying a fresh token,
    /// must arrive at the exposure's socket.
    async fn verify(
        &self,
        link: &Link,
        serve: &ServeContext,
        port: u16,
        at: IpAddr,
    ) -> VerifyResult {
        let token = relay::token();
        let (arrived_tx, arrived) = oneshot::channel();
        self.verifying
            .borrow_mut()
            .insert(port, (token, Some(arrived_tx)));
        let result = self
            .verify_with(link, serve, port, at, token, arrived)
            .await;
        self.verifying.borrow_mut().remove(&port);
        result
    }

    async fn verify_with(
        &self,
        link: &Link,
        serve: &ServeContext,
        port: u16,
        at: IpAddr,
        token: [u8; 16],
        arrived: oneshot::Receiver<()>,
    ) -> VerifyResult {
        let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
            Ok(p) => p,
            Err(e) => return VerifyResult::Failed(e.to_string()),
        };
        if let Err(e) = std::io::Write::write_all(&mut &ours, &token) {
            return VerifyResult::Failed(e.to_string());
        }
        let opened = tokio::time::timeout(
            VERIFY_WITHIN,
            serve.hand_off(
                &self.host,
                link,
                &fwd_core::Remote {
                    ip: at.to_string(),
                    port,
                },
                theirs.as_fd(),
            ),
        )
        .await;
        drop(theirs);
        let _tunnel = match opened {
            Ok(Ok(t)) => t,
            Ok(Err(MuxError::Refused(why))) => return VerifyResult::Refused(why),
            Ok(Err(e)) => return VerifyResult::Failed(e.to_string()),
            Err(_) => {
                return VerifyResult::Failed("the check's channel did not open in time".into())
            }
        };
        match tokio::time::timeout(VERIFY_WITHIN, arrived).await {
            Ok(Ok(())) => VerifyResult::Arrived,
            _ => VerifyResult::Failed(
                "a channel to it opened, but the check never arrived here: something else \
                 listens there"
                    .into(),
            ),
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The default bridge's gateway: what Docker's `host-gateway` resolves to.
async fn bridge_gateway(link: &Link) -> Result<IpAddr, String> {
    let asked = "asking the engine for its default bridge network";
    let (stream, _session) = crate::serve::engine_stream(link)
        .await
        .map_err(|e| format!("{asked}: {e}"))?;
    let (mut api, connection) = fwd_docker::connect(stream)
        .await
        .map_err(|e| format!("{asked}: {e}"))?;
    let driver = tokio::task::spawn_local(connection);
    let answer = api.network_gateways("bridge").await;
    driver.abort();
    match answer {
        Ok(Some(gateways)) => gateways
            .first()
            .copied()
            .ok_or_else(|| "the engine's bridge network has no gateway".to_string()),
        Ok(None) => Err("the engine has no network named bridge".into()),
        Err(e) => Err(format!("{asked}: {e}")),
    }
}
