//! The driver: one task per host that carries the host's inputs to its
//! [`HostMachine`] (fwd-core) and carries out what the machine decides.
//!
//! Nothing here decides anything: when to spawn, probe, retry, publish or
//! give up, and what to log, is the machine's. This file only moves
//! processes, channels and timers: it spawns the ControlMaster, opens the
//! Docker channels over it, runs one operation at a time (and up to
//! `INSPECTS_AT_ONCE` inspects beside it), reads the event
//! stream while the machine takes events, and sleeps until the machine's
//! deadline — which is also the promise given to systemd's watchdog.
//!
//! What the machine decides for the rest of the daemon leaves as a
//! notification ([`Outputs`]); the driver never calls up into the daemon.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fwd_core::{Command, HostKey, Input, OpId, Outcome};
use fwd_docker::{ApiError, EventStream, StreamItem};
use fwd_ssh::Master;
use tokio::sync::{mpsc, watch, Notify};

use super::log::log_record;
use super::ops::{
    absorb, diagnose, start_ask_rootless, start_inspect, start_op, Done, OpFuture, Resources,
};
use super::state::{Host, PROGRESS_SLACK};
use crate::serve::{Link, ServeContext};

/// What a host's driver tells the rest of the daemon: notifications only,
/// which the daemon drains in its own task when it gets to them.
pub struct Outputs {
    /// The host's containers changed. The daemon makes one plan for every
    /// notification since its last, across all hosts (they share the
    /// runner's ports).
    pub containers_changed: Rc<Notify>,
    /// Bumped when anything a status reader can see changed.
    pub status_changed: Rc<watch::Sender<u64>>,
}

/// Starts the host's driver task; its operations use `serve`'s spares.
pub fn start(host: &Rc<Host>, serve: Rc<ServeContext>, outputs: Outputs) {
    let task = tokio::task::spawn_local(supervise(serve, outputs, host.clone()));
    *host.task.borrow_mut() = Some(task);
}

/// Far enough never to trip the watchdog: the machine waits for an input
/// that has no bound (a network coming back).
const UNBOUNDED: Duration = Duration::from_secs(365 * 24 * 3600);

async fn supervise(serve: Rc<ServeContext>, out: Outputs, host: Rc<Host>) {
    let mut stop = host.stop.subscribe();
    let mut starts_seen = serve.starts.subscribe(&host.key);
    let mut res = Resources::default();
    if let Some((master, stderr)) = host.adopted_master.borrow_mut().take() {
        res.master = Some(master);
        res.stderr = Some(stderr);
    }
    loop {
        carry_out(&serve, &out, &host, &mut res).await;
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
            (id, done) = inspected(&mut res.inspects) => {
                Input::Done(id, absorb(&mut res, done).await)
            }
            item = next_event(&mut res.events), if wants_events => match item {
                Ok(Some(first)) => {
                    let inputs = received(&host.key, first, res.events.as_mut());
                    let mut machine = host.machine.borrow_mut();
                    for input in inputs {
                        machine.handle(input, Instant::now());
                    }
                    continue;
                }
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
            Some(id) = starts_seen.recv() => Input::StartSeen(id),
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
    carry_out(&serve, &out, &host, &mut res).await;
}

/// Sleeps until `deadline`; without one, forever (a `select!` arm that
/// never fires).
pub async fn sleep_until(deadline: Option<Instant>) {
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

/// The next of the inspects in flight to finish.
async fn inspected(inspects: &mut Vec<(OpId, OpFuture)>) -> (OpId, Done) {
    if inspects.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for i in 0..inspects.len() {
            if let std::task::Poll::Ready(done) = inspects[i].1.as_mut().poll(cx) {
                let (id, _) = inspects.swap_remove(i);
                return std::task::Poll::Ready((id, done));
            }
        }
        std::task::Poll::Pending
    })
    .await
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

/// The item just read and every one the stream already holds, as inputs:
/// the events in one batch, so the machine sees a burst whole.
fn received(host: &HostKey, first: StreamItem, mut stream: Option<&mut EventStream>) -> Vec<Input> {
    let mut events = Vec::new();
    let mut inputs = Vec::new();
    let mut item = Some(first);
    while let Some(it) = item {
        match it {
            StreamItem::Event(ev) => {
                tracing::trace!(host = %host, action = ?ev.action, container_id = %ev.id, "event");
                events.push(ev);
            }
            StreamItem::Skipped(why) => inputs.push(Input::EventSkipped(why)),
            StreamItem::Other => {}
        }
        item = stream.as_deref_mut().and_then(EventStream::next_received);
    }
    if !events.is_empty() {
        inputs.insert(0, Input::Events(events));
    }
    inputs
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
async fn carry_out(serve: &Rc<ServeContext>, out: &Outputs, host: &Rc<Host>, res: &mut Resources) {
    loop {
        let Some(cmd) = host.machine.borrow_mut().poll_command() else {
            break;
        };
        match cmd {
            Command::Start(id, op) => {
                tracing::trace!(host = %host.key, op = ?op, "operation");
                res.inflight = Some((id, start_op(serve, host, res, op)));
            }
            Command::Inspect(id, container) => {
                tracing::trace!(host = %host.key, container_id = %container, "inspect");
                let fut = start_inspect(host, res, container);
                res.inspects.push((id, fut));
            }
            Command::AskRootless(id, podman) => {
                let fut = start_ask_rootless(host, res, podman);
                res.inspects.push((id, fut));
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
                    channel_failures: res.master.as_ref().and_then(|m| m.channel_failures()),
                }));
            }
            Command::Withdraw => {
                host.link.send_replace(None);
            }
            Command::ContainersChanged => out.containers_changed.notify_one(),
            Command::Log(r) => log_record(&host.key, r),
        }
    }
    if host.machine.borrow_mut().take_health_changed() {
        out.status_changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}
