//! What the control server may ask of the daemon. The control socket code
//! (`control/`) knows only this trait; the daemon implements it here.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use fwd_proto::{ExposeChange, Status};
use tokio::sync::watch;

use crate::daemon::Daemon;

pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

pub trait ControlHandler {
    /// A snapshot of everything fwdd knows.
    fn status(&self) -> Status;
    /// Changes whenever something a status reader can see may have changed
    /// (forwards, link health, stream state). For `watch`: take a snapshot
    /// after each change and report the difference.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Whether a connection through local `port` reaches a listener on the
    /// remote side right now (for `wait`). `Err` says why not.
    fn probe_port(&self, port: u16) -> LocalFuture<'_, Result<(), String>>;
    /// Replace the master of `host` (all hosts when `None`) now. Returns the
    /// hosts affected, or an error naming an unknown host.
    fn reconnect(&self, host: Option<&str>) -> Result<Vec<String>, String>;
    /// List and inspect every container again on `host` (all when `None`).
    fn resync(&self, host: Option<&str>) -> Result<Vec<String>, String>;
    /// Replace the running image with the binary on disk, handing over
    /// everything; the new image answers on `reply_fd`. Returns only when
    /// the upgrade did not happen, with why (the old image keeps serving).
    fn upgrade(&self, reply_fd: std::os::fd::RawFd) -> LocalFuture<'_, String>;
    /// `fwdctl expose`: `spec` (an `expose` entry) for `host` (the first
    /// when `None`), until `unexpose`.
    fn expose(&self, host: Option<&str>, spec: &str) -> Result<ExposeChange, String>;
    /// `fwdctl unexpose`.
    fn unexpose(&self, host: Option<&str>, port: u16) -> Result<ExposeChange, String>;
    /// `fwdctl metrics`: the exposition in the classic text format.
    fn metrics(&self) -> String;
}

impl Daemon {
    /// Pokes one of each selected host's signals; returns the hosts' names.
    fn tell_hosts(
        &self,
        host: Option<&str>,
        input: impl Fn() -> fwd_core::Input,
    ) -> Result<Vec<String>, String> {
        let hosts = self.select_hosts(host)?;
        for h in &hosts {
            h.send(input());
        }
        Ok(hosts.iter().map(|h| h.key.to_string()).collect())
    }

    /// The named host, or the first configured one.
    fn one_host(&self, host: Option<&str>) -> Result<Rc<crate::daemon::Host>, String> {
        self.select_hosts(host)?
            .into_iter()
            .next()
            .ok_or_else(|| "no host is configured".to_string())
    }

    fn select_hosts(&self, host: Option<&str>) -> Result<Vec<Rc<crate::daemon::Host>>, String> {
        match host {
            None => Ok(self.hosts()),
            Some(name) => self.host(name).map(|h| vec![h]).ok_or_else(|| {
                let known: Vec<String> = self.hosts().iter().map(|h| h.key.to_string()).collect();
                format!("no host named {name:?} (configured: {})", known.join(", "))
            }),
        }
    }
}

impl ControlHandler for Rc<Daemon> {
    fn status(&self) -> Status {
        crate::status::snapshot(self)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn probe_port(&self, port: u16) -> LocalFuture<'_, Result<(), String>> {
        Box::pin(Daemon::probe_port(self, port))
    }

    fn reconnect(&self, host: Option<&str>) -> Result<Vec<String>, String> {
        self.tell_hosts(host, || fwd_core::Input::ReconnectRequested)
    }

    fn resync(&self, host: Option<&str>) -> Result<Vec<String>, String> {
        self.tell_hosts(host, || fwd_core::Input::ResyncRequested)
    }

    fn expose(&self, host: Option<&str>, spec: &str) -> Result<ExposeChange, String> {
        let h = self.one_host(host)?;
        let spec = fwd_core::parse_expose(spec)?;
        let change = ExposeChange {
            host: h.key.to_string(),
            remote_port: spec.remote_port,
            runner: spec.target.to_string(),
        };
        h.exposures.expose(spec)?;
        Ok(change)
    }

    fn unexpose(&self, host: Option<&str>, port: u16) -> Result<ExposeChange, String> {
        let h = self.one_host(host)?;
        let runner = h
            .exposures
            .machine
            .borrow()
            .exposure(port)
            .map(|e| e.spec.target.to_string());
        match runner {
            Some(runner) if h.exposures.unexpose(port) => Ok(ExposeChange {
                host: h.key.to_string(),
                remote_port: port,
                runner,
            }),
            _ => Err(format!("port {port} is not exposed to {}", h.key)),
        }
    }

    fn metrics(&self) -> String {
        fwd_metrics::encode(&crate::metrics::scrape(self), fwd_metrics::Format::Classic)
    }

    fn upgrade(&self, reply_fd: std::os::fd::RawFd) -> LocalFuture<'_, String> {
        Box::pin(async move {
            match crate::upgrade::upgrade(self, Some(reply_fd)).await {
                Ok(never) => match never {},
                Err(e) => e,
            }
        })
    }
}
