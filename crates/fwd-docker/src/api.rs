//! A Docker Engine API client over any byte stream.
//!
//! fwd reaches the remote engine through `docker system dial-stdio` running
//! as one SSH session on the ControlMaster: the session's stdio *is* a
//! connection to the engine's socket. Speaking HTTP/1.1 with keep-alive over
//! it makes an inspect cost one round trip (~1 ms) instead of a new session
//! (~150 ms) plus a docker CLI start (~25 ms), and no remote shell ever sees
//! a string that came from the remote side.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::parse::{self, ContainerEvent, ParseError};
use fwd_core::{Container, ContainerId};

/// The remote command whose stdio is a connection to the engine's API socket.
/// It honours `DOCKER_HOST`/contexts on the remote side like any docker CLI.
pub const DIAL_STDIO_COMMAND: &str = "docker system dial-stdio";

/// Largest API answer we accept (a `containers/json` with thousands of
/// containers stays far below).
const MAX_BODY: usize = 64 << 20;
/// Largest single event line; Docker's are well under 4 KiB.
pub const MAX_EVENT_LINE: usize = 1 << 20;

/// How long a subscription waits for the head of the engine's answer before
/// it counts as made: Docker answers at once, but Podman sends nothing, its
/// head neither, until the first event (podman#23712). Its head is read
/// later, with that event.
pub const EVENTS_HEAD_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("connection to the Docker engine failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("reading the Docker engine's answer failed: {0}")]
    Body(String),
    #[error("the Docker engine answered {status} to {path}: {message}")]
    Status {
        status: StatusCode,
        path: String,
        message: String,
    },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("invalid request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// One HTTP/1.1 connection to the engine. Requests are sequential; the
/// connection is reused for all of them.
pub struct DockerApi {
    sender: http1::SendRequest<Empty<Bytes>>,
}

/// Handshakes HTTP/1.1 over `io`. The returned future drives the connection
/// and must be polled (spawned) for as long as the client is used.
pub async fn connect<IO>(io: IO) -> Result<(DockerApi, impl Future<Output = ()>), ApiError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    let driver = async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "docker API connection ended");
        }
    };
    Ok((DockerApi { sender }, driver))
}

impl DockerApi {
    async fn send(&mut self, path: &str) -> Result<hyper::Response<Incoming>, ApiError> {
        self.sender.ready().await?;
        // The engine ignores Host on its socket but HTTP/1.1 requires one.
        let req = Request::get(path)
            .header(hyper::header::HOST, "docker")
            .body(Empty::new())?;
        Ok(self.sender.send_request(req).await?)
    }

    /// GET `path`; returns the body of a 2xx answer, `None` for 404.
    async fn get(&mut self, path: &str) -> Result<Option<Bytes>, ApiError> {
        let resp = self.send(path).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| ApiError::Body(e.to_string()))?
            .to_bytes();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_error(status, path, &body));
        }
        Ok(Some(body))
    }

    async fn get_found(&mut self, path: &str) -> Result<Bytes, ApiError> {
        self.get(path).await?.ok_or_else(|| ApiError::Status {
            status: StatusCode::NOT_FOUND,
            path: path.to_string(),
            message: "not found".into(),
        })
    }

    /// The engine's version, e.g. "20.10.24 (API 1.41)". Doubles as the
    /// end-to-end probe: it crosses the master, sshd, the remote CLI and dockerd.
    pub async fn version(&mut self) -> Result<String, ApiError> {
        Ok(parse::parse_version(&self.get_found("/version").await?)?)
    }

    /// Whether the engine runs rootless: Docker says so in `/info`, Podman
    /// in its own `/libpod/info` (`podman`: the version named Podman).
    pub async fn rootless(&mut self, podman: bool) -> Result<bool, ApiError> {
        Ok(if podman {
            // Podman's own API wants a version; 4.0.0 is served by 4.x and 5.x.
            parse::parse_podman_rootless(&self.get_found("/v4.0.0/libpod/info").await?)?
        } else {
            parse::parse_docker_rootless(&self.get_found("/info").await?)?
        })
    }

    /// The gateways of network `name` (IPv4 first); `None` if there is no
    /// such network.
    pub async fn network_gateways(
        &mut self,
        name: &str,
    ) -> Result<Option<Vec<std::net::IpAddr>>, ApiError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(ApiError::Body(format!("invalid network name {name:?}")));
        }
        match self.get(&format!("/networks/{name}")).await? {
            None => Ok(None),
            Some(body) => Ok(Some(parse::parse_network_gateways(&body)?)),
        }
    }

    /// IDs of the running containers.
    pub async fn running_containers(&mut self) -> Result<Vec<ContainerId>, ApiError> {
        Ok(parse::parse_container_list(
            &self.get_found("/containers/json").await?,
        )?)
    }

    /// The container if it exists and runs (or is created), with its
    /// networks' drivers: each network is asked about once, then `drivers`
    /// knows it.
    pub async fn inspect(
        &mut self,
        id: &ContainerId,
        drivers: &NetworkDrivers,
    ) -> Result<Option<Container>, ApiError> {
        // `id` is validated hex: safe in a path without escaping.
        let Some(body) = self
            .get(&format!("/containers/{}/json", id.as_str()))
            .await?
        else {
            return Ok(None);
        };
        let Some((mut container, network_ids)) = parse::parse_inspect_with_network_ids(&body)?
        else {
            return Ok(None);
        };
        for (network, network_id) in container.networks.iter_mut().zip(network_ids) {
            network.driver = match drivers.known(&network_id) {
                Some(driver) => driver,
                None => self.network_driver(&network_id, drivers).await,
            };
        }
        Ok(Some(container))
    }

    /// Asks the engine for a network's driver and keeps the answer. A
    /// question that fails is not kept (asked again with the next inspect);
    /// an ID fwd will not put in a path, or a network that is gone, is
    /// known to have no driver fwd can use.
    async fn network_driver(
        &mut self,
        network_id: &str,
        drivers: &NetworkDrivers,
    ) -> Option<String> {
        let valid = !network_id.is_empty()
            && network_id.len() <= 128
            && network_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        let driver = if !valid {
            None
        } else {
            match self.get(&format!("/networks/{network_id}")).await {
                Ok(Some(body)) => parse::parse_network_driver(&body).ok()?,
                Ok(None) => None,
                Err(_) => return None,
            }
        };
        drivers.keep(network_id, driver.clone());
        driver
    }

    /// Subscribes to container events, from `since_ns` (engine clock) if
    /// given, so that nothing is lost across a reconnect. Consumes the
    /// connection: a streaming answer never ends by itself.
    pub async fn events(self, since_ns: Option<i64>) -> Result<EventStream, ApiError> {
        self.events_head_within(since_ns, EVENTS_HEAD_WAIT).await
    }

    async fn events_head_within(
        mut self,
        since_ns: Option<i64>,
        head_wait: Duration,
    ) -> Result<EventStream, ApiError> {
        // filters={"type":["container","network"]}: a network connect or
        // disconnect changes a container's addresses.
        let mut path = String::from(
            "/events?filters=%7B%22type%22%3A%5B%22container%22%2C%22network%22%5D%7D",
        );
        if let Some(ns) = since_ns {
            path.push_str(&format!(
                "&since={}.{:09}",
                ns.div_euclid(1_000_000_000),
                ns.rem_euclid(1_000_000_000)
            ));
        }
        self.sender.ready().await?;
        let req = Request::get(path.as_str())
            .header(hyper::header::HOST, "docker")
            .body(Empty::new())?;
        let mut head: PendingHead = Box::pin(self.sender.send_request(req));
        let mut stream = EventStream {
            head: None,
            body: None,
            lines: LineSplitter::new(MAX_EVENT_LINE),
            path,
            _api: self,
        };
        match tokio::time::timeout(head_wait, head.as_mut()).await {
            Ok(resp) => stream.answered(resp?).await?,
            Err(_) => stream.head = Some(head),
        }
        Ok(stream)
    }
}

type PendingHead = Pin<Box<dyn Future<Output = Result<hyper::Response<Incoming>, hyper::Error>>>>;

fn status_error(status: StatusCode, path: &str, body: &[u8]) -> ApiError {
    #[derive(serde::Deserialize)]
    struct Msg {
        message: String,
    }
    // The engine's own words, kept brief and escaped (parse::brief).
    let message = serde_json::from_slice::<Msg>(body)
        .map(|m| parse::brief(&m.message))
        .unwrap_or_else(|_| parse::brief(&String::from_utf8_lossy(&body[..body.len().min(200)])));
    ApiError::Status {
        status,
        path: path.to_string(),
        message,
    }
}

/// The engine's event stream, one JSON object per line.
pub struct EventStream {
    /// The answer's head, while the engine has not sent it.
    head: Option<PendingHead>,
    body: Option<Incoming>,
    lines: LineSplitter,
    path: String,
    /// The connection's handle, kept while the stream is read.
    _api: DockerApi,
}

/// One item of the stream: a parsed event, or input that was skipped.
#[derive(Debug)]
pub enum StreamItem {
    Event(ContainerEvent),
    /// Not a container event (should not occur with the filter): ignored.
    Other,
    /// Malformed or oversize line, skipped; the stream goes on.
    Skipped(String),
}

impl EventStream {
    /// The head of the engine's answer: the stream, or why there is none.
    async fn answered(&mut self, resp: hyper::Response<Incoming>) -> Result<(), ApiError> {
        let status = resp.status();
        if !status.is_success() {
            let body = Limited::new(resp.into_body(), 64 << 10)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(status_error(status, &self.path, &body));
        }
        self.body = Some(resp.into_body());
        Ok(())
    }

    /// The next item; `Ok(None)` when the engine ended the stream.
    /// Cancel-safe: nothing read is lost when the future is dropped.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, ApiError> {
        if let Some(head) = self.head.as_mut() {
            let resp = head.as_mut().await?;
            self.head = None;
            self.answered(resp).await?;
        }
        loop {
            if let Some(item) = self.next_received() {
                return Ok(Some(item));
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            match body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ApiError::Http(e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.lines.push(&data);
                    }
                }
            }
        }
    }
}

impl EventStream {
    /// The next item already received, without waiting for more: what the
    /// stream holds now. Events that arrived together are taken together.
    pub fn next_received(&mut self) -> Option<StreamItem> {
        match self.lines.pop()? {
            Line::Complete(line) => Some(match parse::parse_event(&line) {
                Ok(Some(ev)) => StreamItem::Event(ev),
                Ok(None) => StreamItem::Other,
                Err(e) => StreamItem::Skipped(e.to_string()),
            }),
            Line::Oversize(n) => Some(StreamItem::Skipped(format!("event line over {n} bytes"))),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Complete(Bytes),
    Oversize(usize),
}

/// Splits a byte stream into newline-terminated lines, keeping at most
/// `max` bytes of an unfinished line: a line that grows past it is dropped
/// (reported once) and skipped up to its newline.
struct LineSplitter {
    complete: std::collections::VecDeque<Bytes>,
    partial: BytesMut,
    max: usize,
    skipping: bool,
    oversize_pending: bool,
}

impl LineSplitter {
    fn new(max: usize) -> Self {
        LineSplitter {
            complete: Default::default(),
            partial: BytesMut::new(),
            max,
            skipping: false,
            oversize_pending: false,
        }
    }

    fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let piece = &data[..newline.unwrap_or(data.len())];
            if !self.skipping {
                if self.partial.len() + piece.len() > self.max {
                    self.partial.clear();
                    self.skipping = true;
                    self.oversize_pending = true;
                } else {
                    self.partial.extend_from_slice(piece);
                }
            }
            match newline {
                Some(i) => {
                    if !std::mem::take(&mut self.skipping) {
                        self.complete.push_back(self.partial.split().freeze());
                    }
                    data = &data[i + 1..];
                }
                None => return,
            }
        }
    }

    fn pop(&mut self) -> Option<Line> {
        if let Some(line) = self.complete.pop_front() {
            return Some(Line::Complete(line));
        }
        std::mem::take(&mut self.oversize_pending).then_some(Line::Oversize(self.max))
    }
}

/// The drivers of the networks an engine has, as it said (a network's ID
/// never names another network, so an answer stays true). Shared by a
/// host's API channels; bounded.
#[derive(Clone, Debug, Default)]
pub struct NetworkDrivers(std::sync::Arc<std::sync::Mutex<HashMap<String, Option<String>>>>);

/// Networks remembered per engine at most (then the memory starts over).
const NETWORKS_KEPT: usize = 1024;

impl NetworkDrivers {
    /// `Some(driver)` when the network was asked about.
    pub fn known(&self, network_id: &str) -> Option<Option<String>> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(network_id).cloned()
    }

    fn keep(&self, network_id: &str, driver: Option<String>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= NETWORKS_KEPT {
            map.clear();
        }
        map.insert(network_id.to_string(), driver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An engine that reads the subscription, then holds its whole answer
    /// back until `go` (Podman until its first event, podman#23712).
    async fn engine_answering_late(
        mut server: tokio::net::UnixStream,
        go: tokio::sync::oneshot::Receiver<()>,
        status: &'static str,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = server.read(&mut buf).await.expect("read the request");
            assert!(n > 0, "the request never came");
            req.extend_from_slice(&buf[..n]);
        }
        assert!(req.starts_with(b"GET /events?"));
        let _ = go.await;
        let event = r#"{"Type":"container","Action":"start","Actor":{"ID":"4f7f4c0d3f1b2a8e9d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a493827160","Attributes":{}},"time":1,"timeNano":1000000000}"#;
        let answer = if status.starts_with("200") {
            // The stream: chunked, and it does not end.
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{event}\n\r\n",
                event.len() + 1
            )
        } else {
            let msg = r#"{"message":"events are down"}"#;
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{msg}",
                msg.len()
            )
        };
        server.write_all(answer.as_bytes()).await.expect("write");
        // Keep the connection open (an event stream does not end).
        let _ = server.read(&mut buf).await;
    }

    /// Subscribes to an engine that answers `status` only once the
    /// subscription counts as made without its head; the stream's first
    /// item.
    async fn first_item_from_late_engine(
        status: &'static str,
    ) -> Result<Option<StreamItem>, ApiError> {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (client, server) = tokio::net::UnixStream::pair().expect("pair");
                let (go, gate) = tokio::sync::oneshot::channel();
                tokio::task::spawn_local(engine_answering_late(server, gate, status));
                let (api, driver) = connect(client).await.expect("handshake");
                tokio::task::spawn_local(driver);
                // Made without its head: the engine has sent nothing yet.
                let mut stream = api
                    .events_head_within(None, Duration::from_millis(20))
                    .await
                    .expect("subscribed");
                let _ = go.send(());
                stream.next().await
            })
            .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_subscription_whose_head_comes_with_the_first_event_is_made_and_read() {
        match first_item_from_late_engine("200 OK").await {
            Ok(Some(StreamItem::Event(ev))) => assert_eq!(ev.time_nano, 1_000_000_000),
            other => panic!("expected the event, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_late_head_that_refuses_the_subscription_is_an_error() {
        let err = first_item_from_late_engine("500 Internal Server Error")
            .await
            .expect_err("a 500")
            .to_string();
        assert!(
            err.contains("500") && err.contains("events are down"),
            "{err}"
        );
    }

    fn drain(s: &mut LineSplitter) -> Vec<Line> {
        std::iter::from_fn(|| s.pop()).collect()
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut s = LineSplitter::new(16);
        s.push(b"ab");
        assert!(drain(&mut s).is_empty());
        s.push(b"c\nde\nf");
        assert_eq!(
            drain(&mut s),
            vec![
                Line::Complete(Bytes::from_static(b"abc")),
                Line::Complete(Bytes::from_static(b"de"))
            ]
        );
        s.push(b"\n");
        assert_eq!(
            drain(&mut s),
            vec![Line::Complete(Bytes::from_static(b"f"))]
        );
    }

    #[test]
    fn oversize_line_is_skipped_and_reported_once() {
        let mut s = LineSplitter::new(8);
        s.push(b"ok\n");
        s.push(&[b'x'; 20]);
        s.push(&[b'x'; 20]);
        s.push(b"x\nnext\n");
        assert_eq!(
            drain(&mut s),
            vec![
                Line::Complete(Bytes::from_static(b"ok")),
                Line::Complete(Bytes::from_static(b"next")),
                Line::Oversize(8)
            ]
        );
    }

    proptest! {
        /// Lines up to the limit come out intact whatever the chunking, and
        /// the buffer never grows past the limit plus one chunk's lines.
        #[test]
        fn chunking_does_not_matter(
            lines in prop::collection::vec("[a-z]{0,12}", 0..20),
            cuts in prop::collection::vec(1usize..7, 1..50),
        ) {
            let joined: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
            let mut s = LineSplitter::new(12);
            let mut out = Vec::new();
            let mut rest = &joined[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                s.push(&rest[..n]);
                rest = &rest[n..];
                i += 1;
                while let Some(l) = s.pop() { out.push(l); }
            }
            let expected: Vec<Line> = lines.iter().map(|l| Line::Complete(Bytes::from(l.clone()))).collect();
            prop_assert_eq!(out, expected);
        }
    }
}
