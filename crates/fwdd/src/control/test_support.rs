//! What the control server's tests share: a daemon stand-in and a client.

use super::{ControlConfig, ControlServer};
use crate::handler::{ControlHandler, LocalFuture};
use fwd_proto::{decode_response, DaemonInfo, ForwardState, Response, Status};
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;

/// A daemon stand-in: a settable status, a change counter, canned probe answers and
/// one host named "h1".
#[derive(Clone)]
pub(super) struct Fake(pub(super) Rc<FakeInner>);
pub(super) struct FakeInner {
    pub(super) status: RefCell<Status>,
    changed: watch::Sender<u64>,
    pub(super) reconnects: Cell<u32>,
}
impl Fake {
    pub(super) fn new() -> Fake {
        Fake(Rc::new(FakeInner {
            status: RefCell::new(fixture()),
            changed: watch::channel(0).0,
            reconnects: Cell::new(0),
        }))
    }
    pub(super) fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.0.status.borrow_mut());
        self.0.changed.send_modify(|v| *v += 1);
    }
    fn hosts(host: Option<&str>) -> Result<Vec<String>, String> {
        match host {
            None | Some("h1") => Ok(vec!["h1".into()]),
            Some(other) => Err(format!("no host named {other:?} (configured: h1)")),
        }
    }
}
impl ControlHandler for Fake {
    fn status(&self) -> Status {
        self.0.status.borrow().clone()
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.0.changed.subscribe()
    }
    fn probe_port(&self, port: u16) -> LocalFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // Stands in for a probe's round trip (an await point), not synchronisation.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if port == 80 {
                Ok(())
            } else {
                Err(format!("port {port} is not forwarded"))
            }
        })
    }
    fn reconnect(&self, host: Option<&str>) -> Result<Vec<String>, String> {
        let r = Fake::hosts(host);
        if r.is_ok() {
            self.0.reconnects.set(self.0.reconnects.get() + 1);
        }
        r
    }
    fn resync(&self, host: Option<&str>) -> Result<Vec<String>, String> {
        Fake::hosts(host)
    }
    fn upgrade(&self, _reply_fd: std::os::fd::RawFd) -> LocalFuture<'_, String> {
        Box::pin(async { "the fake daemon cannot upgrade".to_string() })
    }

    fn expose(&self, _host: Option<&str>, spec: &str) -> Result<fwd_proto::ExposeChange, String> {
        Err(format!("the fake has no hosts to expose {spec} to"))
    }

    fn unexpose(&self, _host: Option<&str>, port: u16) -> Result<fwd_proto::ExposeChange, String> {
        Err(format!("port {port} is not exposed"))
    }

    fn metrics(&self) -> String {
        "# EOF\n".into()
    }
}

pub(super) fn forward(port: u16) -> fwd_proto::ForwardStatus {
    fwd_proto::ForwardStatus {
        host: "h1".into(),
        local_port: port,
        local_addrs: vec![format!("127.0.0.1:{port}")],
        remote: format!("127.0.0.1:{port}"),
        container_id: format!("{port:064x}"),
        container_name: format!("svc-{port}"),
        compose_project: None,
        compose_service: None,
        container_port: "80/tcp".into(),
        state: ForwardState::Active,
        reason: None,
        since_ms: 1,
        connections_open: 0,
        connections_total: 0,
        connections_refused: 0,
        route: None,
    }
}

pub(super) fn fixture() -> Status {
    Status {
        daemon: DaemonInfo {
            version: "test".into(),
            pid: std::process::id(),
            started_at_ms: 1,
            image_started_at_ms: None,
            upgrades: 0,
        },
        hosts: vec![],
        forwards: vec![],
        health: None,
        exposed: vec![],
        limits: None,
        names: Vec::new(),
        udp: Vec::new(),
    }
}

/// Runs `body` against a server on `sock` with `config`, then shuts it down and
/// checks that it exits and removes its socket.
pub(super) async fn with_server<F, Fut>(sock: &Path, config: ControlConfig, body: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    with_handler(sock, config, Fake::new(), body).await
}

pub(super) async fn with_handler<F, Fut>(sock: &Path, config: ControlConfig, handler: Fake, body: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let server = ControlServer::bind(sock, config).unwrap();
    let (tx, rx) = watch::channel(false);
    let task = tokio::task::spawn_local(server.run(handler, rx));
    body().await;
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
    assert!(!sock.exists(), "socket file left behind");
}

pub(super) async fn read_response(stream: &mut BufReader<UnixStream>) -> Option<Response> {
    let mut line = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read_until(b'\n', &mut line))
        .await
        .expect("no response in time")
        .ok()?;
    (n > 0).then(|| decode_response(&line).expect("undecodable response"))
}

pub(super) async fn request(sock: &Path, line: &[u8]) -> Option<Response> {
    let mut s = BufReader::new(UnixStream::connect(sock).await.unwrap());
    s.get_mut().write_all(line).await.unwrap();
    read_response(&mut s).await
}

pub(super) fn error_message(r: Option<Response>) -> String {
    match r {
        Some(Response::Error { message, .. }) => message,
        other => panic!("expected an error response, got {other:?}"),
    }
}
