//! The daemon's shared state: per-host containers and link health, the
//! forward table, and the one place that reconciles them.
//!
//! fwdd runs on a single-threaded runtime: state lives in `RefCell`s and no
//! borrow is ever held across an `.await`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use fwd_core::{Claim, Container, ContainerId, FailureKind, HostKey, Unsupported};
use tokio::sync::{watch, Notify};

use crate::config::{Config, HostConfig};
use crate::forwards::{ForwardTable, Link, ServeContext};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasterPhase {
    Connecting,
    Connected,
    Backoff,
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamPhase {
    Streaming,
    Resyncing,
    Down,
}

#[derive(Clone, Debug)]
pub struct LastError {
    pub kind: FailureKind,
    pub message: String,
    pub at: SystemTime,
}

/// What status reports about one host's link.
#[derive(Clone, Debug)]
pub struct HostHealth {
    pub master: MasterPhase,
    pub master_pid: Option<u32>,
    pub since: SystemTime,
    pub last_probe_rtt: Option<Duration>,
    pub reconnects: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<LastError>,
    pub next_retry: Option<SystemTime>,
    pub stream: StreamPhase,
    pub events_received: u64,
    pub last_event: Option<SystemTime>,
    pub stream_restarts: u64,
    pub docker_version: Option<String>,
}

impl HostHealth {
    fn new() -> Self {
        HostHealth {
            master: MasterPhase::Connecting,
            master_pid: None,
            since: SystemTime::now(),
            last_probe_rtt: None,
            reconnects: 0,
            consecutive_failures: 0,
            last_error: None,
            next_retry: None,
            stream: StreamPhase::Down,
            events_received: 0,
            last_event: None,
            stream_restarts: 0,
            docker_version: None,
        }
    }

    pub fn set_master(&mut self, phase: MasterPhase) {
        if self.master != phase {
            self.master = phase;
            self.since = SystemTime::now();
        }
    }
}

pub struct Host {
    pub key: HostKey,
    pub cfg: HostConfig,
    pub control_path: PathBuf,
    /// Running containers as last seen on the host.
    pub containers: RefCell<HashMap<ContainerId, Container>>,
    health: RefCell<HostHealth>,
    pub link: watch::Sender<Option<Link>>,
    /// `fwdctl reconnect`: replace the master now.
    pub reconnect: Notify,
    /// `fwdctl resync`: list and inspect everything again now.
    pub resync: Notify,
    changed: Rc<watch::Sender<u64>>,
}

impl Host {
    pub fn health(&self) -> std::cell::Ref<'_, HostHealth> {
        self.health.borrow()
    }

    /// Mutable access that announces the change when dropped, so watchers
    /// (`fwdctl watch`) see every health transition.
    pub fn health_mut(&self) -> HealthGuard<'_> {
        HealthGuard {
            inner: self.health.borrow_mut(),
            changed: &self.changed,
        }
    }
}

pub struct HealthGuard<'a> {
    inner: std::cell::RefMut<'a, HostHealth>,
    changed: &'a watch::Sender<u64>,
}

impl std::ops::Deref for HealthGuard<'_> {
    type Target = HostHealth;
    fn deref(&self) -> &HostHealth {
        &self.inner
    }
}

impl std::ops::DerefMut for HealthGuard<'_> {
    fn deref_mut(&mut self) -> &mut HostHealth {
        &mut self.inner
    }
}

impl Drop for HealthGuard<'_> {
    fn drop(&mut self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

pub struct Daemon {
    pub config: Config,
    pub started_at: SystemTime,
    pub hosts: Vec<Rc<Host>>,
    pub table: RefCell<ForwardTable>,
    /// Claims that lost their port to another host (reported, not served).
    pub cross_host_conflicts: RefCell<Vec<(Claim, String)>>,
    pub unsupported: RefCell<Vec<Unsupported>>,
    pub serve: Rc<ServeContext>,
    /// Woken whenever the earliest conflict retry may have changed.
    pub retry_changed: Notify,
    /// Bumped on every change of state a status reader can see.
    pub changed: Rc<watch::Sender<u64>>,
}

impl Daemon {
    pub fn new(config: Config) -> Rc<Daemon> {
        let changed = Rc::new(watch::channel(0u64).0);
        let mut hosts = Vec::new();
        let mut links = std::collections::BTreeMap::new();
        for (i, cfg) in config.hosts.iter().enumerate() {
            let key = HostKey::from(cfg.name.as_str());
            let (tx, rx) = watch::channel(None);
            links.insert(key.clone(), rx);
            hosts.push(Rc::new(Host {
                key,
                control_path: config.runtime_dir.join(format!("h{i}.ctl")),
                cfg: cfg.clone(),
                containers: RefCell::new(HashMap::new()),
                health: RefCell::new(HostHealth::new()),
                link: tx,
                reconnect: Notify::new(),
                resync: Notify::new(),
                changed: changed.clone(),
            }));
        }
        let serve = Rc::new(ServeContext {
            links,
            connect_wait: config.connect_wait,
        });
        Rc::new(Daemon {
            config,
            started_at: SystemTime::now(),
            hosts,
            table: RefCell::new(ForwardTable::default()),
            cross_host_conflicts: RefCell::new(Vec::new()),
            unsupported: RefCell::new(Vec::new()),
            serve,
            retry_changed: Notify::new(),
            changed,
        })
    }

    /// Brings the listeners in line with the containers of every host.
    pub fn reconcile(&self) {
        let mut claims = Vec::new();
        let mut unsupported = Vec::new();
        for h in &self.hosts {
            for c in h.containers.borrow().values() {
                let (cl, un) = c.claims(&h.key);
                claims.extend(cl);
                unsupported.extend(un);
            }
        }
        unsupported.sort_by_key(|u| (u.binding.host_port, u.host.clone(), u.container.clone()));
        unsupported.dedup_by_key(|u| {
            (
                u.binding.host_port,
                u.binding.protocol,
                u.host.clone(),
                u.container.clone(),
            )
        });
        let mut table = self.table.borrow_mut();
        let held = table.held();
        let desired = fwd_core::desired_forwards(claims.iter(), &held);
        let now = Instant::now();
        let actions = fwd_core::reconcile(&desired, &held, now);
        let before = table.next_retry();
        table.apply(actions, &self.serve, now, self.config.conflict_retry);
        if table.next_retry() != before {
            self.retry_changed.notify_one();
        }
        *self.cross_host_conflicts.borrow_mut() = desired.conflicts;
        *self.unsupported.borrow_mut() = unsupported;
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn host(&self, name: &str) -> Option<&Rc<Host>> {
        self.hosts.iter().find(|h| &*h.key == name)
    }

    /// Whether a connection through local `port` is accepted by the remote
    /// side right now: opens (and at once closes) a channel to the forward's
    /// remote end over its host's master. This is what `fwdctl wait` needs:
    /// a bound local port alone proves nothing about the container.
    pub async fn probe_port(&self, port: u16) -> Result<(), String> {
        let claim = {
            let table = self.table.borrow();
            let f = table
                .forwards
                .get(&port)
                .ok_or_else(|| format!("port {port} is not forwarded"))?;
            if !f.held.bound {
                return Err(f
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("port {port} is not bound")));
            }
            f.held.owner.clone()
        };
        let link = self
            .serve
            .links
            .get(&claim.host)
            .and_then(|l| l.borrow().clone())
            .ok_or_else(|| format!("the link to {} is down", claim.host))?;
        crate::forwards::probe_remote(&link, &claim).await
    }

    /// Retries ports taken by other programs when they are due.
    pub async fn retry_conflicts(self: Rc<Self>) {
        loop {
            let next = self.table.borrow().next_retry();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => self.reconcile(),
                        _ = self.retry_changed.notified() => {}
                    }
                }
                None => self.retry_changed.notified().await,
            }
        }
    }

    /// Drops every listener (shutdown): ports are released at once.
    pub fn release_all(&self) {
        let mut table = self.table.borrow_mut();
        let n = table.forwards.len();
        table.forwards.clear();
        if n > 0 {
            tracing::info!(
                event = "forwards_released",
                count = n,
                "released {n} local ports"
            );
        }
    }
}
