//! One driver task per Docker host: carries the host's inputs to its
//! [`HostMachine`] (fwd-core) and carries out what the machine decides.
//!
//! Nothing here decides anything: when to spawn, probe, retry, publish or
//! give up, and what to log, is the machine's. This file only moves
//! processes, channels and timers: it spawns the ControlMaster, opens the
//! Docker channels over it (`docker system dial-stdio` sessions), runs one
//! request at a time, reads the event stream when the machine asks for
//! events, and sleeps until the machine's deadline — which is also the
//! promise given to systemd's watchdog.
//!
//! Every remote command goes through the master's socket: nothing here can
//! open a second SSH connection.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fwd_core::{Command, HostKey, HostMachine, Input, OpId, Outcome};
use fwd_docker::{ApiError, EventStream, StreamItem};
use fwd_ssh::Master;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

mod log;
mod ops;

pub use log::log_record;
use ops::{absorb, diagnose, start_op, Done, OpFuture, Resources};

use crate::config::HostConfig;
use crate::engine::EngineSocket;
use crate::serve::{Link, ServeContext};

pub struct Host {
    pub key: HostKey,
    /// The host's number: `h<id>.ctl`, `h<id>.eng`.
    pub id: u32,
    pub cfg: HostConfig,
    pub control_path: PathBuf,
    /// The master's stream-local forward of the remote engine socket
    /// (`h<N>.eng`, as long as the control path, so one length check holds).
    pub engine_forward: PathBuf,
    /// The remote engine on local sockets, when enabled and bound; else why not.
    pub engine_socket: RefCell<Result<EngineSocket, String>>,
    /// Everything the supervisor decides, and what it knows: link health,
    /// the host's running containers.
    pub machine: RefCell<HostMachine>,
    pub link: watch::Sender<Option<Link>>,
    /// Inputs for the machine from the rest of the daemon (`fwdctl
    /// reconnect`, a reload, a network change, a resume), delivered by the
    /// host's driver task, which alone carries out what the machine decides.
    mailbox: RefCell<VecDeque<Input>>,
    mail: tokio::sync::Notify,
    /// Stops this host's supervisor (shutdown, or the host left the config).
    pub stop: watch::Sender<bool>,
    /// The supervisor promises to come back to its loop before this instant
    /// (its machine's deadline); the systemd watchdog is fed only while
    /// every host keeps its promise.
    pub progress_by: Cell<Instant>,
    task: RefCell<Option<JoinHandle<()>>>,
    /// The master's pid and stderr descriptor while one is up: what a
    /// binary upgrade hands over (the driver owns the master itself).
    pub master_fds: Cell<Option<(u32, Option<RawFd>)>>,
    /// A master handed over by the previous image, for the driver to take.
    adopted_master: RefCell<Option<(Master, mpsc::Receiver<String>)>>,
}

impl Host {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: HostKey,
        id: u32,
        cfg: HostConfig,
        control_path: PathBuf,
        engine_forward: PathBuf,
        engine_socket: Result<EngineSocket, String>,
        machine: HostMachine,
        link: watch::Sender<Option<Link>>,
    ) -> Host {
        Host {
            key,
            id,
            cfg,
            control_path,
            engine_forward,
            engine_socket: RefCell::new(engine_socket),
            machine: RefCell::new(machine),
            link,
            mailbox: RefCell::new(VecDeque::new()),
            mail: tokio::sync::Notify::new(),
            stop: watch::channel(false).0,
            progress_by: Cell::new(Instant::now() + PROGRESS_SLACK),
            task: RefCell::new(None),
            master_fds: Cell::new(None),
            adopted_master: RefCell::new(None),
        }
    }

    /// Gives the driver the master the previous image handed over (call
    /// before [`start`]); the machine was made with `HostMachine::adopt`.
    pub fn set_adopted_master(&self, master: Master, stderr: mpsc::Receiver<String>) {
        self.master_fds.set(Some((master.pid, master.stderr_fd())));
        *self.adopted_master.borrow_mut() = Some((master, stderr));
    }

    /// The driver task, for whoever stops the host and waits for it.
    pub fn take_task(&self) -> Option<JoinHandle<()>> {
        self.task.borrow_mut().take()
    }

    pub fn send(&self, input: Input) {
        self.mailbox.borrow_mut().push_back(input);
        // notify_one keeps a permit if the driver is between awaits.
        self.mail.notify_one();
    }

    /// Waits for mail and takes it all.
    pub async fn receive(&self) -> Vec<Input> {
        loop {
            let mail: Vec<Input> = self.mailbox.borrow_mut().drain(..).collect();
            if !mail.is_empty() {
                return mail;
            }
            self.mail.notified().await;
        }
    }
}

/// What a host's driver needs of the rest of the daemon (and no more: the
/// daemon owns hosts, hosts do not know the daemon).
pub struct Shell {
    /// The host's containers changed: bring every listener in line.
    pub reconcile: Box<dyn Fn()>,
    /// Bumped when anything a status reader can see changed.
    pub changed: Rc<watch::Sender<u64>>,
    pub serve: Rc<ServeContext>,
}

/// Starts the host's driver task.
pub fn start(host: &Rc<Host>, shell: Shell) {
    let task = tokio::task::spawn_local(supervise(shell, host.clone()));
    *host.task.borrow_mut() = Some(task);
}

/// Far enough never to trip the watchdog: the machine waits for an input
/// that has no bound (a network coming back).
const UNBOUNDED: Duration = Duration::from_secs(365 * 24 * 3600);
/// Allowance on top of every deadline (scheduling, slow disks).
const PROGRESS_SLACK: Duration = Duration::from_secs(15);

async fn supervise(d: Shell, host: Rc<Host>) {
    let mut stop = host.stop.subscribe();
    let mut res = Resources::default();
    if let Some((master, stderr)) = host.adopted_master.borrow_mut().take() {
        res.master = Some(master);
        res.stderr = Some(stderr);
    }
    loop {
        carry_out(&d, &host, &mut res).await;
        if host.machine.borrow().is_stopped() {
            break;
        }
        let deadline = host.machine.borrow().poll_timeout();
        host.progress_by
            .set(deadline.unwrap_or_else(|| Instant::now() + UNBOUNDED) + PROGRESS_SLACK);
        let wants_events = host.machine.borrow().wants_events();
        let input = tokio::select! {
            _ = sleep_until(deadline) => {
                host.machine.borrow_mut().handle_timeout(Instant::now());
                continue;
            }
            (id, done) = in_flight(&mut res.inflight) => {
                let outcome = absorb(&mut res, done).await;
                if let Outcome::MasterReady { .. } = outcome {
                    host.master_fds.set(res.master.as_ref().map(|m| (m.pid, m.stderr_fd())));
                }
                Input::Done(id, outcome)
            }
            item = next_event(&mut res.events), if wants_events => match item {
                Ok(Some(StreamItem::Event(ev))) => {
                    tracing::trace!(host = %host.key, action = ?ev.action, container_id = %ev.id, "event");
                    Input::Event(ev)
                }
                Ok(Some(StreamItem::Skipped(why))) => Input::EventSkipped(why),
                Ok(Some(StreamItem::Other)) => continue,
                Ok(None) => Input::StreamFailed(diagnose(&mut res.events_channel, "the docker event stream ended").await),
                Err(e) => Input::StreamFailed(diagnose(&mut res.events_channel, e).await),
            },
            line = next_line(&mut res.stderr) => match line {
                Some(line) => Input::MasterStderr(line),
                None => {
                    res.stderr = None;
                    continue;
                }
            },
            how = master_exit(&mut res.master) => {
                let tail = res.master.as_ref().map(|m| m.stderr_tail().join("\n")).unwrap_or_default();
                Input::MasterExited { how, stderr_tail: tail }
            }
            mail = host.receive() => {
                let mut machine = host.machine.borrow_mut();
                for input in mail {
                    machine.handle(input, Instant::now());
                }
                continue;
            }
            _ = stop.changed() => Input::Shutdown,
        };
        host.machine.borrow_mut().handle(input, Instant::now());
    }
    carry_out(&d, &host, &mut res).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

async fn in_flight(inflight: &mut Option<(OpId, OpFuture)>) -> (OpId, Done) {
    let Some((id, fut)) = inflight.as_mut() else {
        return std::future::pending().await;
    };
    let done = fut.as_mut().await;
    let id = *id;
    *inflight = None;
    (id, done)
}

async fn next_line(lines: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match lines {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_event(events: &mut Option<EventStream>) -> Result<Option<StreamItem>, ApiError> {
    match events {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn master_exit(master: &mut Option<Master>) -> String {
    match master {
        Some(m) => match m.exited().await {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        },
        None => std::future::pending().await,
    }
}

/// Carries out every command the machine has queued.
async fn carry_out(d: &Shell, host: &Rc<Host>, res: &mut Resources) {
    loop {
        let Some(cmd) = host.machine.borrow_mut().poll_command() else {
            break;
        };
        match cmd {
            Command::Start(id, op) => {
                tracing::trace!(host = %host.key, op = ?op, "operation");
                res.inflight = Some((id, start_op(&d.serve, host, res, op)));
            }
            Command::StopMaster => {
                host.master_fds.set(None);
                res.close_channels();
                if let Some(m) = res.master.take() {
                    m.shutdown(Duration::from_millis(500)).await;
                }
                // Only now: ssh's last words must not count as dropped.
                res.stderr = None;
            }
            Command::CloseChannels => res.close_channels(),
            Command::Publish { generation, engine } => {
                host.link.send_replace(Some(Link {
                    control_path: host.control_path.clone(),
                    generation,
                    ssh: Arc::new(host.cfg.ssh.clone()),
                    engine,
                    engine_forward: host.engine_forward.clone(),
                }));
            }
            Command::Withdraw => {
                host.link.send_replace(None);
            }
            Command::ContainersChanged => (d.reconcile)(),
            Command::Log(r) => log_record(&host.key, r),
        }
    }
    if host.machine.borrow_mut().take_health_changed() {
        d.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}
