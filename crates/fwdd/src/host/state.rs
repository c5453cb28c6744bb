//! A host as the rest of the daemon sees it: its configuration and paths,
//! its machine (what it knows and decides), its link and engine sockets, and
//! the mailbox through which the daemon asks things of its driver.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fwd_core::{HostKey, HostMachine, Input};
use fwd_ssh::Master;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::HostConfig;
use crate::engine::EngineSocket;
use crate::expose::HostExposures;
use crate::serve::Link;

/// Allowance on top of every deadline (scheduling, slow disks).
pub(super) const PROGRESS_SLACK: Duration = Duration::from_secs(15);

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
    pub(super) task: RefCell<Option<JoinHandle<()>>>,
    /// The master's pid and stderr descriptor while one is up: what a
    /// binary upgrade hands over (the driver owns the master itself).
    pub master_fds: Cell<Option<(u32, Option<RawFd>)>>,
    /// A master handed over by the previous image, for the driver to take.
    pub(super) adopted_master: RefCell<Option<(Master, mpsc::Receiver<String>)>>,
    /// Runner ports this host's containers reach.
    pub exposures: Rc<HostExposures>,
    /// The drivers of the engine's networks, asked once each (for routes).
    pub network_drivers: fwd_docker::NetworkDrivers,
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
        exposures: Rc<HostExposures>,
    ) -> Host {
        Host {
            network_drivers: fwd_docker::NetworkDrivers::default(),
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
            exposures,
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
