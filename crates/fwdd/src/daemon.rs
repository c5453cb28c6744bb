//! The daemon's shared state: the hosts, the forward table, and the one
//! place that plans them ([`Daemon::plan_when_asked`]).
//!
//! Hosts never call up into the daemon: a host whose containers changed
//! notifies, and the planner task makes one plan for every notification
//! since its last, across every host, in its own turn.
//!
//! fwdd runs on a single-threaded runtime: state lives in `RefCell`s and no
//! borrow is ever held across an `.await`.

use std::cell::{Cell, RefCell};
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use fwd_core::{
    Claim, HostKey, HostMachine, HostPolicy, HostView, Input, MasterPhase, Unsupported,
};
use tokio::sync::{watch, Notify};

use crate::config::{Config, HostConfig};
use crate::engine::EngineSocket;
use crate::expose::HostExposures;
use crate::forwards::ForwardTable;
pub use crate::host::Host;
use crate::host::{self, Outputs};
use crate::names::Names;
use crate::serve::ServeContext;
use crate::udp::UdpTable;

/// The supervisor's numbers for one host, from the configuration.
pub fn host_policy(config: &Config, host: &HostConfig) -> HostPolicy {
    HostPolicy {
        backoff: config.retry.backoff.clone(),
        permanent_retry: config.retry.permanent_retry,
        health_interval: host.health_interval,
        resync_interval: config.resync_interval,
        master_ready_timeout: host.ssh.ready_timeout(),
        engine_socket: host.engine_remote_socket.clone(),
        engine_gone_after: host.engine_gone_after,
        ..HostPolicy::default()
    }
}

pub struct Daemon {
    /// Global settings; replaced on reload (the host list is applied
    /// separately, host by host).
    pub config: RefCell<Config>,
    /// When the process started (kept across binary upgrades).
    pub started_at: SystemTime,
    /// This process, the image it runs and where that came from.
    pub image: crate::handover::Image,
    /// A binary upgrade is under way.
    pub upgrading: Cell<bool>,
    /// The control socket's path and listener descriptor.
    pub control_socket: (PathBuf, std::os::fd::RawFd),
    hosts: RefCell<Vec<Rc<Host>>>,
    next_host_id: Cell<u32>,
    pub table: RefCell<ForwardTable>,
    /// Containers by name: their addresses, listeners and hosts files.
    pub names: RefCell<Names>,
    /// Published UDP ports (hosts with `udp = true`) and their relays.
    pub udp: RefCell<UdpTable>,
    /// Claims not served, with the reason: the port is another host's, or
    /// the host is at its cap (reported as conflicts, never bound).
    pub rejected: RefCell<Vec<(Claim, String)>>,
    pub unsupported: RefCell<Vec<Unsupported>>,
    /// Containers over `max_forwards_per_container` (their ports beyond
    /// it are not bound), and which were said in the log.
    pub capped: RefCell<Vec<fwd_core::Capped>>,
    cap_reports: RefCell<fwd_core::CapReports>,
    /// Claimed ports left out by `max_forwards_total` at the last plan.
    pub over_total: Cell<usize>,
    pub serve: Rc<ServeContext>,
    /// Asks the planner for a plan: a host's containers changed, a host
    /// came or went. Notifications before the planner's turn make one plan.
    plan_wanted: Rc<Notify>,
    /// Bumped on every change of state a status reader can see.
    pub changed: Rc<watch::Sender<u64>>,
    /// Whether any network link is usable (see netwatch.rs).
    pub net_usable: watch::Receiver<bool>,
    /// The metrics endpoint's address and listener, when served (an
    /// upgrade hands it over).
    pub metrics_listener: Cell<Option<(std::net::SocketAddr, std::os::fd::RawFd)>>,
}

impl Daemon {
    pub fn new(
        config: Config,
        net_usable: watch::Receiver<bool>,
        image: crate::handover::Image,
        control_socket: (PathBuf, std::os::fd::RawFd),
        stored: crate::fdstore::StoredFds,
    ) -> Rc<Daemon> {
        let serve = Rc::new(ServeContext::new(
            config.connect_wait,
            config.startup_window,
            stored,
        ));
        serve.limits.set(fwd_core::Limits::for_open_files(
            crate::fdlimit::current(),
            config.limits,
        ));
        Rc::new(Daemon {
            names: RefCell::new(Names::new(&config.runtime_dir, &config.names)),
            udp: RefCell::new(UdpTable::default()),
            config: RefCell::new(config),
            started_at: image.daemon_started_at,
            image,
            upgrading: Cell::new(false),
            control_socket,
            hosts: RefCell::new(Vec::new()),
            next_host_id: Cell::new(0),
            table: RefCell::new(ForwardTable::default()),
            rejected: RefCell::new(Vec::new()),
            unsupported: RefCell::new(Vec::new()),
            capped: RefCell::new(Vec::new()),
            cap_reports: RefCell::default(),
            over_total: Cell::new(0),
            serve,
            plan_wanted: Rc::new(Notify::new()),
            changed: Rc::new(watch::channel(0u64).0),
            net_usable,
            metrics_listener: Cell::new(None),
        })
    }

    pub fn hosts(&self) -> Vec<Rc<Host>> {
        self.hosts.borrow().clone()
    }

    pub fn host(&self, name: &str) -> Option<Rc<Host>> {
        self.hosts
            .borrow()
            .iter()
            .find(|h| &*h.key == name)
            .cloned()
    }

    /// The ControlPath a new host would get; checked before anything starts.
    pub fn next_control_path(&self) -> PathBuf {
        let id = self.next_host_id.get();
        self.config.borrow().runtime_dir.join(format!("h{id}.ctl"))
    }

    /// The number the next host gets (`h<N>.ctl`).
    pub fn next_host_id(&self) -> u32 {
        self.next_host_id.get()
    }

    /// After a binary upgrade: numbers the previous image gave out are
    /// not given again (a removed host's files may still be in use).
    pub fn skip_host_ids_below(&self, id: u32) {
        self.next_host_id.set(self.next_host_id.get().max(id));
    }

    /// Adds a host and starts its supervisor.
    pub fn add_host(self: &Rc<Self>, cfg: HostConfig) -> Rc<Host> {
        let id = self.next_host_id.get();
        self.next_host_id.set(id + 1);
        let key = HostKey::from(cfg.name.as_str());
        let engine_socket = self.bind_engine_socket(&key, &cfg);
        let policy = host_policy(&self.config.borrow(), &cfg);
        let seed = std::collections::hash_map::RandomState::new().hash_one(id);
        let machine = HostMachine::new(policy, *self.net_usable.borrow(), seed, Instant::now());
        self.start_host(id, cfg, engine_socket, machine, None, Vec::new())
    }

    /// Takes over a host from the previous fwdd image (binary upgrade): its
    /// master, engine sockets and state; see `HostMachine::adopt`.
    pub fn adopt_host(
        self: &Rc<Self>,
        cfg: HostConfig,
        from: crate::host::HostTakeover,
    ) -> Rc<Host> {
        let id = from.id;
        self.next_host_id.set(self.next_host_id.get().max(id + 1));
        let key = HostKey::from(cfg.name.as_str());
        let engine_socket = if cfg.engine_socket && !from.engine_sockets.is_empty() {
            EngineSocket::adopt(key.clone(), from.engine_sockets, self.serve.clone())
                .map_err(|e| e.to_string())
                .inspect(|s| {
                    let (total, up, down) = from.engine_totals;
                    s.stats.total.set(total);
                    s.stats.bytes_up.set(up);
                    s.stats.bytes_down.set(down);
                })
        } else {
            drop(from.engine_sockets);
            self.bind_engine_socket(&key, &cfg)
        };
        let control_path = self.config.borrow().runtime_dir.join(format!("h{id}.ctl"));
        let master = from.master.and_then(|(pid, stderr)| {
            fwd_ssh::Master::adopt(pid, &control_path, stderr)
                .inspect_err(|e| tracing::warn!(event = "upgrade_master_lost", host = %key, pid, error = %e, "cannot take over the master: {e}"))
                .ok()
        });
        let mut state = from.state;
        if master.is_none() {
            state.master_pid = None;
        }
        let policy = host_policy(&self.config.borrow(), &cfg);
        let seed = std::collections::hash_map::RandomState::new().hash_one(id);
        let machine = HostMachine::adopt(
            policy,
            *self.net_usable.borrow(),
            seed,
            Instant::now(),
            state,
        );
        self.start_host(id, cfg, engine_socket, machine, master, from.exposures)
    }

    fn start_host(
        self: &Rc<Self>,
        id: u32,
        cfg: HostConfig,
        engine_socket: Result<EngineSocket, String>,
        machine: HostMachine,
        master: Option<(fwd_ssh::Master, tokio::sync::mpsc::Receiver<String>)>,
        exposed: Vec<crate::expose::AdoptedExposure>,
    ) -> Rc<Host> {
        let key = HostKey::from(cfg.name.as_str());
        let (link, link_rx) = watch::channel(None);
        self.serve.add_host(&key, link_rx);
        let runtime_dir = self.config.borrow().runtime_dir.clone();
        let exposures = HostExposures::new(
            key.clone(),
            runtime_dir.join(format!("h{id}.x")),
            self.changed.clone(),
            self.serve.clone(),
        );
        exposures.adopt(exposed);
        configure_exposures(&exposures, &cfg);
        let host = Rc::new(Host::new(
            key,
            id,
            cfg,
            runtime_dir.join(format!("h{id}.ctl")),
            runtime_dir.join(format!("h{id}.eng")),
            engine_socket,
            machine,
            link,
            exposures,
        ));
        host.exposures.start();
        if let Some((m, stderr)) = master {
            host.set_adopted_master(m, stderr);
        }
        host::start(
            &host,
            self.serve.clone(),
            Outputs {
                containers_changed: self.plan_wanted.clone(),
                status_changed: self.changed.clone(),
            },
        );
        self.hosts.borrow_mut().push(host.clone());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        host
    }

    /// The host's engine sockets: `docker-<name>.sock`, and `docker.sock`
    /// for the first configured host.
    fn bind_engine_socket(&self, key: &HostKey, cfg: &HostConfig) -> Result<EngineSocket, String> {
        if !cfg.engine_socket {
            return Err("turned off (engine_socket = false)".into());
        }
        let config = self.config.borrow();
        let first = config.hosts.first().is_some_and(|h| h.name == cfg.name);
        let paths = crate::engine::socket_paths(&config.runtime_dir, &cfg.name, first);
        for p in &paths {
            fwd_ssh::check_control_path_len(p).map_err(|e| e.to_string())?;
        }
        let bound = EngineSocket::bind(key.clone(), paths, self.serve.clone());
        if let Ok(s) = &bound {
            if let Some(own) = s.paths.last() {
                tracing::info!(
                    event = "engine_socket",
                    host = %key,
                    socket = %own.display(),
                    "remote engine of {key} on this machine: DOCKER_HOST=unix://{} (fwdctl env prints what clients need)",
                    own.display()
                );
            }
        }
        bound.map_err(|e| {
            tracing::error!(event = "engine_socket_failed", host = %key, error = %e, "no local engine socket for {key}: {e}");
            e.to_string()
        })
    }

    /// Stops a host's supervisor (which ends its master) and forgets its
    /// containers, releasing the ports only it claimed.
    pub async fn remove_host(&self, name: &str) {
        let host = {
            let mut hosts = self.hosts.borrow_mut();
            let Some(i) = hosts.iter().position(|h| &*h.key == name) else {
                return;
            };
            hosts.remove(i)
        };
        stop_hosts(std::slice::from_ref(&host)).await;
        *host.engine_socket.borrow_mut() = Err("the host was removed".into());
        self.serve.forget_host(&host.key);
        self.request_plan();
    }

    /// Applies a new configuration (SIGHUP): hosts added, removed or changed
    /// are started, stopped or restarted; unchanged hosts and their forwards
    /// are left alone; hosts that are failing are retried at once.
    pub async fn reload(self: &Rc<Self>, mut new: Config) {
        self.keep_restart_only_keys(&mut new);
        let hosts = self.hosts();
        // Exposures change without touching the connection (below).
        let running_cfg: Vec<HostConfig> = hosts.iter().map(|h| h.cfg.connection()).collect();
        let wanted_cfg: Vec<HostConfig> = new.hosts.iter().map(HostConfig::connection).collect();
        let running: Vec<(&str, &HostConfig)> = hosts
            .iter()
            .zip(&running_cfg)
            .map(|(h, c)| (&*h.key, c))
            .collect();
        let wanted: Vec<(&str, &HostConfig)> = new
            .hosts
            .iter()
            .zip(&wanted_cfg)
            .map(|(n, c)| (n.name.as_str(), c))
            .collect();
        let plan = fwd_core::reload_plan(&running, &wanted);
        for h in &hosts {
            if plan.keep.contains(&&*h.key) {
                if let Some(cfg) = new.hosts.iter().find(|c| c.name == *h.key) {
                    configure_exposures(&h.exposures, cfg);
                }
                let failing = h.machine.borrow().health().master != MasterPhase::Connected;
                if failing {
                    h.send(Input::ReconnectRequested);
                }
            } else {
                self.remove_host(&h.key).await;
            }
        }
        self.serve.connect_wait.set(new.connect_wait);
        self.serve.startup_window.set(new.startup_window);
        self.serve.limits.set(fwd_core::Limits::for_open_files(
            self.serve.limits.get().open_files,
            new.limits,
        ));
        for h in self.hosts() {
            h.send(Input::PolicyChanged(host_policy(&new, &h.cfg)));
        }
        let to_start: Vec<HostConfig> = new
            .hosts
            .iter()
            .filter(|c| plan.starts(&c.name))
            .cloned()
            .collect();
        let (added, removed, restarted, kept) = (
            plan.add.len(),
            plan.remove.len(),
            plan.restart.len(),
            plan.keep.len(),
        );
        self.names.borrow_mut().configure(&new.names);
        *self.config.borrow_mut() = new;
        let mut skipped = 0;
        for cfg in to_start {
            if let Err(e) = fwd_ssh::check_control_path_len(&self.next_control_path()) {
                tracing::error!(event = "reload_host_skipped", host = %cfg.name, error = %e, "not adding host {}: {e}", cfg.name);
                skipped += 1;
                continue;
            }
            self.add_host(cfg);
        }
        tracing::info!(
            event = "reloaded",
            hosts_added = added,
            hosts_removed = removed,
            hosts_restarted = restarted,
            hosts_unchanged = kept,
            hosts_skipped = skipped,
            "configuration reloaded: {added} hosts added, {removed} removed, {restarted} restarted, {kept} unchanged, {skipped} skipped"
        );
        self.request_plan();
    }

    /// The keys a reload cannot change (what they set is already bound,
    /// created or listening) keep their running values, each with a warning
    /// that says to restart fwdd.
    fn keep_restart_only_keys(&self, new: &mut Config) {
        let old_dir = self.config.borrow().runtime_dir.clone();
        if new.runtime_dir != old_dir {
            tracing::warn!(
                event = "reload_ignored_key",
                key = "runtime_dir",
                "runtime_dir cannot change while running; keeping {}",
                old_dir.display()
            );
            new.runtime_dir = old_dir;
        }
        let old_group = self.config.borrow().engine_socket_group.clone();
        if new.engine_socket_group != old_group {
            tracing::warn!(
                event = "reload_ignored_key",
                key = "engine_socket_group",
                "engine_socket_group cannot change while running (the sockets and the runtime directory keep their group); restart fwdd to change it"
            );
            new.engine_socket_group = old_group;
        }
        let old_metrics = self.config.borrow().metrics;
        if new.metrics != old_metrics {
            tracing::warn!(
                event = "reload_ignored_key",
                key = "metrics",
                "metrics cannot change while running (the endpoint stays where it is); restart fwdd to change it"
            );
            new.metrics = old_metrics;
        }
    }

    /// Asks the planner for a plan at its next turn.
    pub fn request_plan(&self) {
        self.plan_wanted.notify_one();
    }

    /// The planner: the one task that plans, when asked (every request since
    /// its last plan makes one plan) and when a port in conflict is due for
    /// another try. Runs until fwdd stops.
    pub async fn plan_when_asked(self: Rc<Self>) {
        loop {
            let retry_at = self.table.borrow().next_retry();
            tokio::select! {
                _ = self.plan_wanted.notified() => {}
                _ = host::sleep_until(retry_at) => {}
            }
            self.reconcile();
        }
    }

    /// Brings the listeners in line with the containers of every host.
    fn reconcile(&self) {
        let hosts = self.hosts.borrow();
        let machines: Vec<_> = hosts.iter().map(|h| h.machine.borrow()).collect();
        let config = self.config.borrow();
        let views: Vec<HostView<'_>> = hosts
            .iter()
            .zip(&machines)
            .map(|(h, m)| HostView {
                host: &h.key,
                max_forwards: h.cfg.max_forwards,
                forwards_per_container: Some(self.serve.limits.get().forwards_per_container),
                route: fwd_core::RouteFacts {
                    // The configuration now: a reload keeps the host.
                    direct_allowed: config
                        .hosts
                        .iter()
                        .find(|c| *c.name == *h.key)
                        .map_or(h.cfg.direct_route, |c| c.direct_route),
                    rootless: m.health().engine.rootless,
                },
                containers: m.containers().values().collect(),
            })
            .collect();
        let mut table = self.table.borrow_mut();
        let now = Instant::now();
        let limits = self.serve.limits.get();
        let plan = fwd_core::plan(
            &views,
            &config.rules,
            Some(limits.forwards_total),
            &table.held(),
            now,
        );
        tracing::debug!(
            event = "planned",
            hosts = views.len(),
            containers = views.iter().map(|v| v.containers.len()).sum::<usize>(),
            actions = plan.actions.len(),
            "planned"
        );
        table.apply(plan.actions, &self.serve, now, config.conflict_retry);
        for (h, m) in hosts.iter().zip(&machines) {
            self.serve.starts.planned(&h.key, m.containers().keys());
        }
        self.serve.starts.plan_applied();
        *self.rejected.borrow_mut() = plan.rejected;
        // A UDP port of a host with `udp = true` is a UDP forward instead.
        *self.unsupported.borrow_mut() = plan
            .unsupported
            .into_iter()
            .filter(|u| {
                !(u.binding.protocol == fwd_core::Protocol::Udp
                    && configured(&config, &u.host, |c| c.udp))
            })
            .collect();
        self.report_caps(&plan.capped, plan.over_total, limits.forwards_total);
        self.over_total.set(plan.over_total);
        *self.capped.borrow_mut() = plan.capped;
        // After a crash restart, the listeners systemd kept that no claim
        // took once every host has resynced are closed: their ports are
        // free again (see `release_stored_after` for hosts that never do).
        let resynced = machines
            .iter()
            .all(|m| m.health().stream == fwd_core::StreamPhase::Streaming);
        self.plan_names(&hosts, &views, &config, resynced, now);
        self.plan_udp(&views, &config);
        if resynced {
            release_stored(&self.serve.stored);
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The names of the hosts that have them (`names = true`), after the
    /// forwards: a name's listener is on an address of its own, so the two
    /// never compete for a port.
    fn plan_names(
        &self,
        hosts: &[Rc<Host>],
        views: &[HostView<'_>],
        config: &Config,
        resynced: bool,
        now: Instant,
    ) {
        let named_views = views_where(views, config, |c| c.names);
        let mut names = self.names.borrow_mut();
        if named_views.is_empty() && names.last_plan() == &fwd_core::names::NamesPlan::default() {
            return;
        }
        let settings = fwd_core::names::NamesSettings {
            range: config.names.range,
            spelling: fwd_core::names::Spelling {
                with_host: hosts.len() > 1,
                suffix: config.names.suffix.clone(),
            },
            ports_per_container: usize::try_from(self.serve.limits.get().forwards_per_container)
                .unwrap_or(usize::MAX),
        };
        names.plan(
            &settings,
            &named_views,
            &config.rules,
            resynced,
            &self.serve,
            now,
        );
    }

    /// The published UDP ports of the hosts with `udp = true`.
    fn plan_udp(&self, views: &[HostView<'_>], config: &Config) {
        let udp_views = views_where(views, config, |c| c.udp);
        let mut udp = self.udp.borrow_mut();
        if udp_views.is_empty() && udp.forwards.is_empty() {
            return;
        }
        udp.set_settings(fwd_core::udp::SessionSettings {
            idle: config.udp_idle,
            ..Default::default()
        });
        let held = udp
            .forwards
            .iter()
            .map(|(port, f)| (*port, f.claim.host.clone()))
            .collect();
        let plan = fwd_core::udp::plan(&udp_views, &config.rules, &held);
        udp.apply(plan.claims, &self.serve);
    }

    /// Logs what the caps left out, once per episode (`CapReports`): a
    /// container that reached its cap, and every claim past the total.
    fn report_caps(&self, capped: &[fwd_core::Capped], over_total: usize, forwards_total: u64) {
        for c in self.cap_reports.borrow_mut().news(capped) {
            tracing::warn!(
                event = "forward_cap_reached",
                host = %c.host,
                container = %c.container_name,
                container_id = %c.container,
                published = c.published,
                forwarded = c.forwarded,
                "{}",
                c.message()
            );
        }
        match self.cap_reports.borrow_mut().total(over_total) {
            Some(fwd_core::TotalNews::Reached { left_out }) => tracing::warn!(
                event = "forward_total_reached",
                cap = forwards_total,
                left_out,
                "fwd forwards at most {} ports in all and that many are claimed: {left_out} more are not \
                 forwarded (fwdctl status lists them; set max_forwards_total in fwdd.toml, or raise \
                 the open-files hard limit it is derived from)",
                forwards_total
            ),
            Some(fwd_core::TotalNews::Cleared) => tracing::info!(
                event = "forward_total_cleared",
                cap = forwards_total,
                "every claimed port fits under max_forwards_total again"
            ),
            None => {}
        }
    }

    /// Whether a connection through local `port` is accepted by the remote
    /// side right now: opens (and at once closes) a channel to the forward's
    /// remote end over its host's master. This is what `fwdctl wait` needs:
    /// a bound local port alone proves nothing about the container.
    pub async fn probe_port(&self, port: u16) -> Result<(), String> {
        let (host, to) = {
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
            (f.held.owner.host.clone(), f.route_now().to)
        };
        let link = self
            .serve
            .link(&host)
            .ok_or_else(|| format!("the link to {host} is down"))?;
        self.serve.probe_remote(&host, &link, &to).await
    }

    /// True while every supervisor keeps its promise to make progress.
    pub fn making_progress(&self) -> bool {
        let now = Instant::now();
        self.hosts
            .borrow()
            .iter()
            .all(|h| h.progress_by.get() >= now)
    }

    /// Shutdown: ports first (nothing new may be accepted), then every host.
    pub async fn shutdown(&self) {
        self.names.borrow_mut().clear();
        // The relays' stdin closes: each ends on its host.
        *self.udp.borrow_mut() = UdpTable::default();
        {
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
        let hosts = self.hosts();
        for h in &hosts {
            *h.engine_socket.borrow_mut() = Err("fwdd is stopping".into());
        }
        stop_hosts(&hosts).await;
        for h in &hosts {
            let _ = std::fs::remove_file(&h.control_path);
            // The master leaves its forward's socket file behind.
            let _ = std::fs::remove_file(&h.engine_forward);
        }
    }
}

/// Whether `host`'s configuration now (a reload keeps the host) has `on`.
fn configured(config: &Config, host: &HostKey, on: impl Fn(&HostConfig) -> bool) -> bool {
    config.hosts.iter().any(|c| *c.name == **host && on(c))
}

/// The views of the hosts whose configuration has `on` (names, UDP).
fn views_where<'a>(
    views: &[HostView<'a>],
    config: &Config,
    on: impl Fn(&HostConfig) -> bool,
) -> Vec<HostView<'a>> {
    views
        .iter()
        .filter(|v| configured(config, v.host, &on))
        .cloned()
        .collect()
}

/// Gives a host's exposures their configuration; a port that cannot be
/// served is said, and the rest go on.
fn configure_exposures(exposures: &HostExposures, cfg: &HostConfig) {
    if cfg.expose_on.contains(&fwd_core::BindScope::All) && !cfg.expose.is_empty() {
        tracing::warn!(
            event = "expose_everywhere",
            host = %cfg.name,
            "exposures of {} listen on every address of the host (expose_on = \"all\"): anyone who reaches the host reaches them",
            cfg.name
        );
    }
    if let Err(e) = exposures.configure(cfg.expose.clone(), cfg.expose_on.clone()) {
        tracing::error!(event = "expose_failed", host = %cfg.name, error = %e, "{}: {e}", cfg.name);
    }
}

/// Signals the hosts' supervisors to stop and waits (bounded) for them: each
/// ends its master and removes its socket.
async fn stop_hosts(hosts: &[Rc<Host>]) {
    for h in hosts {
        h.exposures.stop();
        let _ = h.stop.send(true);
    }
    let wait_all = async {
        for h in hosts {
            if let Some(t) = h.take_task() {
                let _ = t.await;
            }
        }
    };
    if tokio::time::timeout(Duration::from_millis(1500), wait_all)
        .await
        .is_err()
    {
        tracing::warn!(event = "stop_timeout", "a host did not stop in time");
    }
}

/// Closes the listeners systemd's fd store gave back that no forward took,
/// and removes them from the store.
pub fn release_stored(stored: &crate::fdstore::StoredFds) {
    let released = stored.release_rest();
    if released > 0 {
        tracing::info!(
            event = "fdstore_released",
            count = released,
            "released {released} kept listeners that no container claims any more"
        );
    }
}
