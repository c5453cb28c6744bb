//! One supervisor per Docker host: keeps its ControlMaster alive, the
//! Docker channels on it open, and the host's containers current.
//!
//! The cycle, repeated forever until shutdown:
//! 1. EnsureAlive: clear a stale control socket (or end a master left behind
//!    by an earlier fwdd), spawn `ssh -M -N` as our child, wait until its
//!    control socket answers;
//! 2. open the Docker channels over the master (API requests, event stream)
//!    and probe end to end with `GET /version`;
//! 3. subscribe to events (from the last one seen), resync everything, and
//!    only then declare the link usable to waiting connections;
//! 4. serve events and health ticks until something fails; then back off
//!    (first retry immediate, jittered, capped) and start over.
//!
//! Every remote command goes through the master's socket: nothing here can
//! open a second SSH connection.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fwd_core::{
    classify_ssh_failure, Backoff, EpisodeLog, FailureClass, FailureKind, RecentLines, RepeatGate,
    UpLog, Verdict,
};
use fwd_docker::{ApiError, ContainerEvent, DockerApi, EventAction, StreamItem};
use fwd_ssh::{Master, MasterError, MuxClient, SocketState};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::daemon::{Daemon, Host, LastError, MasterPhase, StreamPhase};
use crate::forwards::Link;

/// How long one Docker API request may take before the channel is
/// considered hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// dockerd drops an API connection that stays idle this long (moby's
/// 5-minute read timeout, minus a margin).
const API_IDLE_LIMIT: Duration = Duration::from_secs(240);
/// A probe after a network change must answer quickly: a link that was
/// reloaded under an open connection usually leaves it dead.
const WAKE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A repeating failure is summarised at most this often.
const SUMMARY_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Failure {
    kind: FailureKind,
    message: String,
}

impl Failure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

enum Ended {
    Shutdown,
    /// `fwdctl reconnect`: replace the master now, no backoff.
    Reconnect,
    Failed(Failure),
}

/// Why serving a healthy link stopped, other than a failure.
enum Stop {
    Shutdown,
    Reconnect,
}

/// Aborts a spawned task when dropped.
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One `docker system dial-stdio` session on the master.
struct DockerChannel {
    session: fwd_ssh::Session,
    stderr_tail: Rc<RefCell<VecDeque<String>>>,
    _tasks: Vec<TaskGuard>,
}

impl DockerChannel {
    /// Why the channel failed, from the remote side's point of view: a
    /// missing docker CLI exits 127 with "not found" on stderr.
    async fn diagnose(self, err: impl std::fmt::Display) -> Failure {
        let status = tokio::time::timeout(Duration::from_secs(2), self.session.wait()).await;
        let stderr: Vec<String> = self.stderr_tail.borrow().iter().cloned().collect();
        let stderr = stderr.join("; ");
        match status {
            Ok(Ok(Some(127))) => Failure::new(
                FailureKind::DockerMissing,
                format!("docker not found on the host: {stderr}"),
            ),
            Ok(Ok(Some(code))) => Failure::new(
                FailureKind::StreamEnded,
                format!("remote docker exited with status {code}: {err}; {stderr}"),
            ),
            _ => Failure::new(FailureKind::StreamEnded, format!("{err} {stderr}")),
        }
    }
}

async fn open_docker(host: &Host) -> Result<(DockerApi, DockerChannel), Failure> {
    let remote = tokio::time::timeout(
        REQUEST_TIMEOUT,
        fwd_ssh::spawn_remote(&host.control_path, fwd_docker::DIAL_STDIO_COMMAND),
    )
    .await
    .map_err(|_| {
        Failure::new(
            FailureKind::Timeout,
            "opening a session on the master timed out",
        )
    })?
    .map_err(|e| {
        Failure::new(
            FailureKind::MasterDied,
            format!("opening a session on the master failed: {e}"),
        )
    })?;
    let stderr_tail = Rc::new(RefCell::new(VecDeque::new()));
    let tail = stderr_tail.clone();
    let host_key = host.key.clone();
    let stderr_task = tokio::task::spawn_local(async move {
        let mut lines = tokio::io::BufReader::new(remote.stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(host = %host_key, line = %line, "remote docker stderr");
            let mut t = tail.borrow_mut();
            if t.len() == 5 {
                t.pop_front();
            }
            t.push_back(line.chars().take(500).collect());
        }
    });
    let (api, driver) = fwd_docker::connect(remote.stdio)
        .await
        .map_err(|e| Failure::new(FailureKind::StreamEnded, e.to_string()))?;
    let driver = tokio::task::spawn_local(driver);
    Ok((
        api,
        DockerChannel {
            session: remote.session,
            stderr_tail,
            _tasks: vec![TaskGuard(stderr_task), TaskGuard(driver)],
        },
    ))
}

/// A jitter sample in [0, 1). Quality does not matter, only that runners
/// do not agree; std's randomly keyed hasher is enough.
fn unit_random() -> f64 {
    let n = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (n >> 11) as f64 / (1u64 << 53) as f64
}

pub async fn supervise(d: Rc<Daemon>, host: Rc<Host>) {
    let mut shutdown = host.stop.subscribe();
    let retry = d.config.borrow().retry.clone();
    let mut backoff = Backoff::new(retry.backoff.clone());
    let mut sup = Supervisor {
        episodes: EpisodeLog::new(retry.backoff.healthy_after, SUMMARY_EVERY),
        channel_episodes: EpisodeLog::new(retry.backoff.healthy_after, SUMMARY_EVERY),
        d,
        host,
        since_ns: None,
        generation: 0,
        ever_connected: false,
        logged_version: None,
        recent_stderr: Rc::new(RefCell::new(RecentLines::new(SUMMARY_EVERY, 32))),
    };
    loop {
        if *shutdown.borrow() {
            break;
        }
        sup.host.health_mut().set_master(MasterPhase::Connecting);
        let started = Instant::now();
        let ended = sup.run_once(&mut shutdown).await;
        sup.host.link.send_replace(None);
        let failure = match ended {
            Ended::Shutdown => break,
            Ended::Reconnect => {
                tracing::info!(event = "reconnect_requested", host = %sup.host.key, "replacing the master of {} on request", sup.host.key);
                backoff.reset();
                continue;
            }
            Ended::Failed(f) => f,
        };
        let retry = sup.d.config.borrow().retry.clone();
        backoff.set_policy(retry.backoff);
        backoff.record_uptime(started.elapsed());
        let delay = match failure.kind.class() {
            FailureClass::Permanent => {
                backoff.next_delay(0.5);
                retry.permanent_retry
            }
            FailureClass::Transient => backoff.next_delay(unit_random()),
        };
        sup.record_failure(&failure, backoff.failures(), delay);
        let early_wake_ok = failure.kind.class() == FailureClass::Transient;
        if !sup
            .wait_before_retry(delay, early_wake_ok, &mut shutdown, &mut backoff)
            .await
        {
            break;
        }
    }
    let mut h = sup.host.health_mut();
    h.set_master(MasterPhase::Stopped);
    h.stream = StreamPhase::Down;
    h.master_pid = None;
}

/// How long to wait for a promise that has no bound (waiting for a network
/// to come back): far enough to never trip the watchdog.
const UNBOUNDED: Duration = Duration::from_secs(365 * 24 * 3600);

struct Supervisor {
    d: Rc<Daemon>,
    host: Rc<Host>,
    /// Engine time of the last event seen: where a new stream resumes.
    since_ns: Option<i64>,
    generation: u64,
    /// A master has been connected before (so the next one is a reconnect).
    ever_connected: bool,
    logged_version: Option<String>,
    recent_stderr: Rc<RefCell<RecentLines>>,
    /// Log hygiene for the link: one line per kind of trouble per episode.
    episodes: EpisodeLog,
    /// The same for the Docker channels on a healthy master.
    channel_episodes: EpisodeLog,
}

impl Supervisor {
    /// Waits before the next connection attempt. Ends early on `fwdctl
    /// reconnect`, and (for transient failures) when the network changes;
    /// while no network link is usable it does not retry at all, so an
    /// unplugged runner neither spins nor logs. Returns false on shutdown.
    async fn wait_before_retry(
        &self,
        delay: Duration,
        early_wake_ok: bool,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> bool {
        let host = &self.host;
        host.expect_progress(delay);
        let started = Instant::now();
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = host.reconnect.notified() => {
                    backoff.reset();
                    return true;
                }
                _ = host.wake.notified() => {
                    // A change of network is the likely cure of a transient
                    // failure: try now, but not more than once a second.
                    if early_wake_ok && started.elapsed() >= Duration::from_secs(1) && *self.d.net_usable.borrow() {
                        return true;
                    }
                }
                _ = shutdown.changed() => return false,
            }
        }
        let mut net = self.d.net_usable.clone();
        if !*net.borrow() {
            tracing::debug!(host = %host.key, "no usable network link; waiting for one");
            host.expect_progress(UNBOUNDED);
            tokio::select! {
                _ = net.wait_for(|usable| *usable) => {}
                _ = host.reconnect.notified() => {}
                _ = shutdown.changed() => return false,
            }
        }
        true
    }

    fn record_failure(&mut self, f: &Failure, failures: u32, delay: Duration) {
        {
            let mut h = self.host.health_mut();
            h.set_master(MasterPhase::Backoff);
            h.stream = StreamPhase::Down;
            h.master_pid = None;
            h.consecutive_failures = failures;
            h.last_error = Some(LastError {
                kind: f.kind,
                message: f.message.clone(),
                at: SystemTime::now(),
            });
            h.next_retry = Some(SystemTime::now() + delay);
        }
        let key = self.host.key.as_ref();
        match self.episodes.on_failure(f.kind.as_str(), Instant::now()) {
            Verdict::Log => tracing::warn!(
                event = "link_failed",
                host = key,
                kind = f.kind.as_str(),
                class = f.kind.class().as_str(),
                consecutive_failures = failures,
                retry_in_ms = delay.as_millis() as u64,
                error = %f.message,
                hint = f.kind.hint(),
                "link to {key} failed: {}",
                f.message
            ),
            Verdict::Summary { repeats } => tracing::warn!(
                event = "link_still_failing",
                host = key,
                kind = f.kind.as_str(),
                consecutive_failures = failures,
                repeats,
                error = %f.message,
                "link to {key} still failing ({repeats} more failures): {}",
                f.message
            ),
            Verdict::Suppress => {}
        }
    }

    async fn run_once(&mut self, shutdown: &mut watch::Receiver<bool>) -> Ended {
        let host = self.host.clone();
        let ctl = &host.control_path;
        // EnsureAlive, step 1: nothing stale may sit at our ControlPath.
        match fwd_ssh::clear_stale_control_socket(ctl, Duration::from_secs(2)).await {
            Ok(SocketState::Live(pid)) => {
                // A master we did not spawn (an earlier fwdd was killed): we
                // cannot watch its exit, so end it and start our own.
                tracing::info!(event = "foreign_master_ended", host = %host.key, pid, "ending a leftover ssh master (pid {pid})");
                if let Ok(c) = MuxClient::connect(ctl).await {
                    let _ = tokio::time::timeout(Duration::from_secs(2), c.terminate()).await;
                }
                let _ = std::fs::remove_file(ctl);
            }
            Ok(SocketState::Absent | SocketState::RemovedStale) => {}
            Err(e) => {
                return Ended::Failed(Failure::new(
                    FailureKind::InvalidConfig,
                    format!("cannot clear the control socket {}: {e}", ctl.display()),
                ))
            }
        }
        let cfg = &host.cfg.ssh;
        let ready_timeout = cfg.connect_timeout * 2 + Duration::from_secs(5);
        host.expect_progress(ready_timeout);
        let spawned = tokio::select! {
            r = Master::spawn(cfg, ctl, ready_timeout) => r,
            _ = shutdown.changed() => return Ended::Shutdown,
        };
        let (mut master, mut stderr_rx) = match spawned {
            Ok(m) => m,
            Err(e) => return Ended::Failed(master_failure(e)),
        };
        let host_key = host.key.clone();
        let recent = self.recent_stderr.clone();
        // The master's stderr carries the reason a connection fails. ssh
        // repeats itself on every retry, so a line is logged once per
        // window; the failure line quotes the last one anyway.
        let _stderr_task = TaskGuard(tokio::task::spawn_local(async move {
            while let Some(line) = stderr_rx.recv().await {
                // A client connecting before its container listens makes
                // ssh print "channel 7: open failed: …": one per connection,
                // about the container, not the link.
                if line.contains("open failed") {
                    tracing::debug!(host = %host_key, line = %line, "ssh: {line}");
                    continue;
                }
                if recent
                    .borrow_mut()
                    .is_fresh(&without_numbers(&line), Instant::now())
                {
                    tracing::info!(event = "ssh_stderr", host = %host_key, line = %line, "ssh: {line}");
                }
            }
        }));
        host.health_mut().master_pid = Some(master.pid);
        let ended = self.serve_master(&mut master, shutdown).await;
        host.link.send_replace(None);
        let ended = match ended {
            Ended::Failed(f) if f.kind == FailureKind::MasterDied => {
                let tail = master.stderr_tail().join("\n");
                let kind = match classify_ssh_failure(&tail) {
                    FailureKind::Unknown => FailureKind::MasterDied,
                    k => k,
                };
                Ended::Failed(Failure::new(
                    kind,
                    format!("{} {}", f.message, last_line(&tail)),
                ))
            }
            other => other,
        };
        master.shutdown(Duration::from_millis(500)).await;
        ended
    }

    /// Runs the Docker side on a live master until the master or shutdown
    /// ends it. Docker channel failures on a healthy master are retried
    /// here without replacing the master.
    async fn serve_master(
        &mut self,
        master: &mut Master,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let host = self.host.clone();
        let master_pid = master.pid;
        let mut channel_backoff = Backoff::new(self.d.config.borrow().retry.backoff.clone());
        loop {
            let session_started = Instant::now();
            let result = tokio::select! {
                r = self.serve_docker(master_pid, shutdown) => r,
                st = master.exited() => Err(master_exited(st)),
            };
            let failure = match result {
                Ok(Stop::Shutdown) => return Ended::Shutdown,
                Ok(Stop::Reconnect) => return Ended::Reconnect,
                Err(f) => f,
            };
            if failure.kind == FailureKind::MasterDied {
                return Ended::Failed(failure);
            }
            // A request that got no answer indicts the connection: the mux
            // alive check below only proves the local ssh process lives,
            // and a black-holed connection keeps it alive for a keepalive
            // budget. The same holds for anything failing while no network
            // link is usable.
            if failure.kind == FailureKind::Timeout || !*self.d.net_usable.borrow() {
                return Ended::Failed(failure);
            }
            // Is the master itself still fine? Then only the channel failed.
            let alive = tokio::time::timeout(Duration::from_secs(2), alive_check(&host)).await;
            if !matches!(alive, Ok(Ok(_))) {
                // The channel failed because the connection under it did:
                // report it as such (its stderr says why).
                return Ended::Failed(Failure::new(
                    FailureKind::MasterDied,
                    format!(
                        "ssh master lost its connection ({})",
                        failure.message.trim()
                    ),
                ));
            }
            if failure.kind.class() == FailureClass::Permanent {
                return Ended::Failed(failure);
            }
            channel_backoff.record_uptime(session_started.elapsed());
            let delay = channel_backoff.next_delay(unit_random());
            {
                let mut h = host.health_mut();
                h.stream = StreamPhase::Down;
                h.stream_restarts += 1;
                h.consecutive_failures = channel_backoff.failures();
                h.last_error = Some(LastError {
                    kind: failure.kind,
                    message: failure.message.clone(),
                    at: SystemTime::now(),
                });
                h.next_retry = Some(SystemTime::now() + delay);
            }
            match self
                .channel_episodes
                .on_failure(failure.kind.as_str(), Instant::now())
            {
                Verdict::Log => tracing::info!(
                    event = "stream_restarting",
                    host = %host.key,
                    error = %failure.message,
                    retry_in_ms = delay.as_millis() as u64,
                    "docker channel to {} ended ({}); reopening",
                    host.key,
                    failure.message
                ),
                Verdict::Summary { repeats } => tracing::info!(
                    event = "stream_still_restarting",
                    host = %host.key,
                    error = %failure.message,
                    repeats,
                    "docker channel to {} keeps ending ({repeats} more times): {}",
                    host.key,
                    failure.message
                ),
                Verdict::Suppress => {}
            }
            host.expect_progress(delay);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                st = master.exited() => return Ended::Failed(master_exited(st)),
                _ = host.reconnect.notified() => return Ended::Reconnect,
                _ = shutdown.changed() => return Ended::Shutdown,
            }
        }
    }

    /// Opens the Docker channels, resyncs, and serves events and health
    /// ticks until something fails or a stop is requested.
    async fn serve_docker(
        &mut self,
        master_pid: u32,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Stop, Failure> {
        let host = self.host.clone();
        host.health_mut().stream = StreamPhase::Resyncing;
        // Setup: two sessions, a probe, a subscription and a resync, each bounded.
        host.expect_progress(REQUEST_TIMEOUT * 5);
        let (mut api, api_channel) = open_docker(&host).await?;
        // EnsureAlive, step 2: a request end to end (master, sshd, docker CLI, dockerd).
        let t0 = Instant::now();
        let version = match tokio::time::timeout(REQUEST_TIMEOUT, api.version()).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(api_channel.diagnose(e).await),
            Err(_) => {
                return Err(Failure::new(
                    FailureKind::Timeout,
                    "the Docker engine did not answer GET /version",
                ))
            }
        };
        let rtt = t0.elapsed();
        let (events_api, events_channel) = open_docker(&host).await?;
        // Subscribe before listing, so nothing that happens during the
        // resync is missed; events that replay what the resync saw are
        // harmless (handling is idempotent).
        let mut stream =
            match tokio::time::timeout(REQUEST_TIMEOUT, events_api.events(self.since_ns)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(events_channel.diagnose(e).await),
                Err(_) => {
                    return Err(Failure::new(
                        FailureKind::Timeout,
                        "subscribing to docker events timed out",
                    ))
                }
            };
        self.resync(&mut api).await?;

        // The link is usable: wake connections waiting for it.
        self.generation += 1;
        host.link.send_replace(Some(Link {
            control_path: host.control_path.clone(),
            generation: self.generation,
            ssh: Arc::new(host.cfg.ssh.clone()),
        }));
        {
            let mut h = host.health_mut();
            if h.master != MasterPhase::Connected {
                if self.ever_connected {
                    h.reconnects += 1;
                }
                h.set_master(MasterPhase::Connected);
            }
            h.master_pid = Some(master_pid);
            h.consecutive_failures = 0;
            h.next_retry = None;
            h.last_probe_rtt = Some(rtt);
            h.stream = StreamPhase::Streaming;
            h.docker_version = Some(version.clone());
        }
        self.ever_connected = true;
        self.channel_episodes.on_up(Instant::now());
        let failures_before = match self.episodes.on_up(Instant::now()) {
            UpLog::Quiet => None,
            UpLog::First => Some(0),
            UpLog::Recovered { failures } => Some(failures),
        };
        if let Some(failures_before) = failures_before {
            tracing::info!(
                event = "link_up",
                host = %host.key,
                master_pid = master_pid,
                failures_before,
                "connected to {} (ssh master pid {})",
                host.key,
                master_pid
            );
        }
        if self.logged_version.as_deref() != Some(version.as_str()) {
            tracing::info!(event = "docker_version", host = %host.key, version = %version, "Docker engine on {}: {version}", host.key);
            self.logged_version = Some(version);
        }

        // dockerd closes an API connection idle for 5 minutes: probe more
        // often than that whatever the configured interval.
        let health_period = host.cfg.health_interval.min(API_IDLE_LIMIT);
        let mut health = tokio::time::interval(health_period);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.tick().await;
        let resync_period = self.d.config.borrow().resync_interval;
        let mut resync = tokio::time::interval(resync_period);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        let mut skipped = RepeatGate::new(SUMMARY_EVERY);
        loop {
            // Every branch below returns to this loop within a health period
            // plus one bounded request.
            host.expect_progress(health_period + REQUEST_TIMEOUT * 2);
            tokio::select! {
                item = stream.next() => match item {
                    Ok(Some(StreamItem::Event(ev))) => {
                        if let Err(e) = self.handle_event(&mut api, ev).await {
                            return Err(api_channel.diagnose(e).await);
                        }
                    }
                    Ok(Some(StreamItem::Skipped(why))) => {
                        if skipped.observe("skipped", Instant::now()) != Verdict::Suppress {
                            tracing::warn!(event = "event_skipped", host = %host.key, reason = %why, "skipped an event line from {}: {why}", host.key);
                        }
                    }
                    Ok(Some(StreamItem::Other)) => {}
                    Ok(None) => return Err(events_channel.diagnose("the docker event stream ended").await),
                    Err(e) => return Err(events_channel.diagnose(e).await),
                },
                _ = health.tick() => self.probe(&mut api, host.cfg.health_interval.min(REQUEST_TIMEOUT)).await?,
                _ = host.wake.notified() => {
                    // The network changed or the machine woke up: find out
                    // now instead of waiting for keepalives to give up.
                    tracing::debug!(host = %host.key, "woken: probing the link");
                    self.probe(&mut api, WAKE_PROBE_TIMEOUT).await?;
                }
                _ = resync.tick() => {
                    host.expect_progress(REQUEST_TIMEOUT * 3);
                    self.resync(&mut api).await?;
                }
                _ = host.resync.notified() => {
                    tracing::info!(event = "resync_requested", host = %host.key, "resyncing {} on request", host.key);
                    self.resync(&mut api).await?;
                }
                _ = host.reconnect.notified() => return Ok(Stop::Reconnect),
                _ = shutdown.changed() => return Ok(Stop::Shutdown),
            }
        }
    }

    /// A health tick: the mux answers, and a request crosses to dockerd.
    async fn probe(&self, api: &mut DockerApi, timeout: Duration) -> Result<(), Failure> {
        let link = self.host.link.borrow().clone();
        let alive = async {
            match &link {
                Some(link) => self.d.serve.alive_check(&self.host.key, link).await,
                None => alive_check(&self.host).await,
            }
        };
        match tokio::time::timeout(timeout, alive).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Failure::new(
                    FailureKind::MasterDied,
                    format!("mux alive check failed: {e}"),
                ))
            }
            Err(_) => {
                return Err(Failure::new(
                    FailureKind::Timeout,
                    "mux alive check timed out",
                ))
            }
        }
        let t0 = Instant::now();
        match tokio::time::timeout(timeout, api.version()).await {
            Ok(Ok(_)) => {
                self.host.health_mut().last_probe_rtt = Some(t0.elapsed());
                Ok(())
            }
            Ok(Err(e)) => Err(Failure::new(
                FailureKind::StreamEnded,
                format!("health probe failed: {e}"),
            )),
            Err(_) => Err(Failure::new(
                FailureKind::Timeout,
                format!("health probe got no answer within {}s", timeout.as_secs()),
            )),
        }
    }

    /// Replaces the host's container set with what the engine says now.
    async fn resync(&mut self, api: &mut DockerApi) -> Result<(), Failure> {
        let request_failed =
            |e: ApiError| Failure::new(FailureKind::StreamEnded, format!("resync failed: {e}"));
        let ids = match tokio::time::timeout(REQUEST_TIMEOUT, api.running_containers()).await {
            Ok(r) => r.map_err(request_failed)?,
            Err(_) => {
                return Err(Failure::new(
                    FailureKind::Timeout,
                    "listing containers timed out",
                ))
            }
        };
        let mut fresh = HashMap::new();
        for id in ids {
            self.host.expect_progress(REQUEST_TIMEOUT);
            match tokio::time::timeout(REQUEST_TIMEOUT, api.inspect(&id)).await {
                Ok(Ok(Some(c))) => {
                    fresh.insert(c.id.clone(), c);
                }
                Ok(Ok(None)) => {}
                Ok(Err(ApiError::Parse(e))) => {
                    tracing::warn!(event = "inspect_unparsable", host = %self.host.key, container_id = %id, error = %e, "skipping container {id}: {e}");
                }
                Ok(Err(e)) => return Err(request_failed(e)),
                Err(_) => {
                    return Err(Failure::new(
                        FailureKind::Timeout,
                        "inspecting a container timed out",
                    ))
                }
            }
        }
        *self.host.containers.borrow_mut() = fresh;
        self.d.reconcile();
        Ok(())
    }

    async fn handle_event(
        &mut self,
        api: &mut DockerApi,
        ev: ContainerEvent,
    ) -> Result<(), ApiError> {
        self.since_ns = Some(self.since_ns.map_or(ev.time_nano, |s| s.max(ev.time_nano)));
        {
            let mut h = self.host.health_mut();
            h.events_received += 1;
            h.last_event = Some(SystemTime::now());
        }
        match ev.action {
            EventAction::Start | EventAction::Refresh => {
                let inspected = match tokio::time::timeout(REQUEST_TIMEOUT, api.inspect(&ev.id))
                    .await
                {
                    Ok(Ok(c)) => c,
                    Ok(Err(ApiError::Parse(e))) => {
                        tracing::warn!(event = "inspect_unparsable", host = %self.host.key, container_id = %ev.id, error = %e, "skipping container {}: {e}", ev.id);
                        return Ok(());
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(ApiError::Body("inspect timed out".into()));
                    }
                };
                let mut containers = self.host.containers.borrow_mut();
                match inspected {
                    Some(c) => {
                        containers.insert(c.id.clone(), c);
                    }
                    None => {
                        containers.remove(&ev.id);
                    }
                }
            }
            EventAction::Die => {
                // An event older than the container's current start is a
                // replay from before a restart: the container runs.
                let mut containers = self.host.containers.borrow_mut();
                if containers
                    .get(&ev.id)
                    .is_some_and(|c| ev.time_nano >= c.started_at_ns)
                {
                    containers.remove(&ev.id);
                }
            }
            EventAction::Destroy => {
                self.host.containers.borrow_mut().remove(&ev.id);
            }
            EventAction::Ignore => return Ok(()),
        }
        self.d.reconcile();
        Ok(())
    }
}

async fn alive_check(host: &Host) -> Result<u32, fwd_ssh::MuxError> {
    MuxClient::connect(&host.control_path)
        .await?
        .alive_check()
        .await
}

fn master_failure(e: MasterError) -> Failure {
    match &e {
        MasterError::Exited { stderr_tail, .. } | MasterError::Timeout { stderr_tail, .. } => {
            let tail = stderr_tail.join("\n");
            let kind = match classify_ssh_failure(&tail) {
                FailureKind::Unknown if matches!(e, MasterError::Timeout { .. }) => {
                    FailureKind::Timeout
                }
                FailureKind::Unknown => FailureKind::MasterDied,
                k => k,
            };
            Failure::new(
                kind,
                format!("ssh master failed to start: {}", last_line(&tail)),
            )
        }
        MasterError::InvalidDestination(_)
        | MasterError::InvalidOption(_)
        | MasterError::InvalidValue { .. }
        | MasterError::ControlPathTooLong { .. }
        | MasterError::Spawn { .. } => Failure::new(FailureKind::InvalidConfig, e.to_string()),
        _ => Failure::new(FailureKind::MasterDied, e.to_string()),
    }
}

/// Folds the numbers out of a line (pids, ports, channel numbers), so
/// repeats of the same message count as the same line.
fn without_numbers(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_number = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

fn master_exited(st: std::io::Result<std::process::ExitStatus>) -> Failure {
    let how = match st {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    Failure::new(
        FailureKind::MasterDied,
        format!("ssh master exited ({how})"),
    )
}

#[cfg(test)]
mod tests {
    use super::without_numbers;

    #[test]
    fn numbers_do_not_make_a_line_new() {
        assert_eq!(
            without_numbers("channel 7: open failed: connect failed: Connection refused"),
            without_numbers("channel 12: open failed: connect failed: Connection refused")
        );
        assert_eq!(without_numbers("port 22 pid 4021"), "port # pid #");
    }
}
