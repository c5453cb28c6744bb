//! `GET /metrics`, `/healthz` and `/readyz` over HTTP/1.1 (hyper), on a
//! listener the daemon bound. Runs on the daemon's single-threaded runtime:
//! the source is read in the daemon's own turn.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use fwd_core::repeat::Verdict;
use fwd_core::slots::{Closed, Slots};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::exposition::{encode, readiness, EndpointCounts, Format, Scrape};

/// What the server reads at each request.
pub trait MetricsSource {
    fn scrape(&self) -> Scrape;
}

/// Connections open at once. At the cap, the one quiet the longest is
/// closed to make room: idle or slow clients never hold the last place.
const CONNECTIONS: usize = 32;
/// A connection must bring a complete request head within this of its
/// accept or of its previous request (covers slow-loris heads, idle
/// connections that never ask, and keep-alive between scrapes).
const ASK_WITHIN: Duration = Duration::from_secs(3);

/// The endpoint's limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connections: usize,
    pub ask_within: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: CONNECTIONS,
            ask_within: ASK_WITHIN,
        }
    }
}

/// The server's own state: its places, what it closed and why.
struct Server {
    slots: RefCell<Slots>,
    closers: RefCell<std::collections::HashMap<fwd_core::slots::SlotId, Rc<Notify>>>,
    made_room: Cell<u64>,
    /// Closed by the deadline before any request came.
    never_asked: Cell<u64>,
    accept_failed: Cell<u64>,
}

impl Server {
    fn counts(&self) -> EndpointCounts {
        EndpointCounts {
            made_room: self.made_room.get(),
            never_asked: self.never_asked.get(),
            accept_failed: self.accept_failed.get(),
        }
    }
}

/// Serves until the task is dropped, with the default [`Limits`].
pub async fn serve(listener: TcpListener, source: Rc<dyn MetricsSource>) {
    serve_with(listener, source, Limits::default()).await
}

/// Serves until the task is dropped.
pub async fn serve_with(listener: TcpListener, source: Rc<dyn MetricsSource>, limits: Limits) {
    let server = Rc::new(Server {
        slots: RefCell::new(Slots::new(limits.connections, limits.ask_within)),
        closers: RefCell::default(),
        made_room: Cell::new(0),
        never_asked: Cell::new(0),
        accept_failed: Cell::new(0),
    });
    // The same backoff and episode as fwdd's other accept loops.
    let mut backoff = fwd_core::AcceptBackoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                let now = tokio::time::Instant::now().into_std();
                if let Some(n) = backoff.succeeded(now).filter(|n| *n > 1) {
                    tracing::info!(
                        event = "metrics_accept_recovered",
                        failures = n,
                        "the metrics endpoint accepts again after {n} failed accepts"
                    );
                }
                s
            }
            Err(e) => {
                server.accept_failed.set(server.accept_failed.get() + 1);
                let now = tokio::time::Instant::now().into_std();
                let failed = backoff.failed(&e.kind().to_string(), now);
                match failed.log {
                    Some(Verdict::Log) => {
                        tracing::warn!(event = "metrics_accept_failed", error = %e,
                        "accepting a connection to the metrics endpoint failed: {e}; retrying with a backoff up to {} ms", fwd_core::AcceptBackoff::MAX.as_millis())
                    }
                    Some(Verdict::Summary { repeats }) => {
                        tracing::warn!(event = "metrics_accept_failed", error = %e, repeats,
                        "accepting a connection to the metrics endpoint still fails ({repeats} more): {e}")
                    }
                    _ => {}
                }
                tokio::time::sleep(failed.wait).await;
                continue;
            }
        };
        let now = tokio::time::Instant::now().into_std();
        let admission = server.slots.borrow_mut().admit(now);
        if let Some(quiet) = admission.close {
            server.made_room.set(server.made_room.get() + 1);
            if let Some(closer) = server.closers.borrow_mut().remove(&quiet) {
                closer.notify_one();
            }
        }
        match admission.say {
            Some(Verdict::Log) => tracing::warn!(event = "metrics_connections_at_cap", cap = limits.connections,
                "the metrics endpoint holds {} connections: each new one closes the one quiet the longest (said once; counted in fwd_metrics_connections_closed)",
                limits.connections),
            Some(Verdict::Summary { repeats }) => tracing::warn!(event = "metrics_connections_at_cap", cap = limits.connections, repeats,
                "the metrics endpoint is still at its cap of {} connections: {repeats} more closed to make room",
                limits.connections),
            _ => {}
        }
        let id = admission.id;
        let closer = Rc::new(Notify::new());
        server.closers.borrow_mut().insert(id, closer.clone());
        let source = source.clone();
        let server = server.clone();
        tokio::task::spawn_local(async move {
            let service = {
                let server = server.clone();
                hyper::service::service_fn(move |req| {
                    let now = tokio::time::Instant::now().into_std();
                    server.slots.borrow_mut().asked(id, now);
                    let response = answer(&req, &*source, server.counts());
                    async move { Ok::<_, Infallible>(response) }
                })
            };
            let mut conn = Box::pin(
                hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
            let mut timed_out = false;
            loop {
                let Some(deadline) = server.slots.borrow().deadline(id) else {
                    break;
                };
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = closer.notified() => break,
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        let now = tokio::time::Instant::now().into_std();
                        if server.slots.borrow().expired(id, now) {
                            timed_out = true;
                            break;
                        }
                    }
                }
            }
            // Dropping the connection closes its socket.
            drop(conn);
            server.closers.borrow_mut().remove(&id);
            let (what, eased) = server.slots.borrow_mut().closed(id);
            if timed_out && what == Closed::NeverAsked {
                server.never_asked.set(server.never_asked.get() + 1);
            }
            if let Some(n) = eased {
                tracing::info!(event = "metrics_connections_below_cap", closed = n,
                    "the metrics endpoint is below its connection cap again; {n} connections were closed to make room");
            }
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    source: &dyn MetricsSource,
    counts: EndpointCounts,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    let plain = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            plain,
            "only GET and HEAD\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::from_accept(accept);
            let mut scrape = source.scrape();
            scrape.endpoint = Some(counts);
            text(
                StatusCode::OK,
                format.content_type(),
                encode(&scrape, format),
            )
        }
        "/healthz" => text(StatusCode::OK, plain, "ok\n".into()),
        "/readyz" => match readiness(&source.scrape()) {
            Ok(body) => text(StatusCode::OK, plain, body),
            Err(body) => text(StatusCode::SERVICE_UNAVAILABLE, plain, body),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            plain,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fixed(Scrape);
    impl MetricsSource for Fixed {
        fn scrape(&self) -> Scrape {
            self.0.clone()
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str, accept: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_three_endpoints_answer() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let scrape = Scrape {
                    version: "t".into(),
                    hosts: vec![crate::HostScrape {
                        name: "h".into(),
                        state: "backoff".into(),
                        ..Default::default()
                    }],
                    endpoint: None,
                    descriptors: None,
                };
                let server = tokio::task::spawn_local(serve(listener, Rc::new(Fixed(scrape))));
                let m = get(
                    addr,
                    "/metrics",
                    "application/openmetrics-text;version=1.0.0",
                )
                .await;
                assert!(m.starts_with("HTTP/1.1 200"), "{m}");
                assert!(m.contains("application/openmetrics-text"), "{m}");
                assert!(m.contains("fwd_host_up{host=\"h\"} 0"), "{m}");
                let m = get(addr, "/metrics", "*/*").await;
                assert!(m.contains("text/plain; version=0.0.4"), "{m}");
                assert!(get(addr, "/healthz", "*/*")
                    .await
                    .starts_with("HTTP/1.1 200"));
                let r = get(addr, "/readyz", "*/*").await;
                assert!(
                    r.starts_with("HTTP/1.1 503") && r.contains("host h: backoff"),
                    "{r}"
                );
                assert!(get(addr, "/nope", "*/*").await.starts_with("HTTP/1.1 404"));
                server.abort();
            })
            .await;
    }

    /// The sample `series` of a `/metrics` answer.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Reads until the peer closes; false if it is still open at `within`.
    async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        tokio::time::timeout(within, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn healthz_answers_within_a_second_while_idle_and_slow_clients_hold_connections() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let scrape = Scrape::default();
                let server = tokio::task::spawn_local(serve(listener, Rc::new(Fixed(scrape))));
                // 80 idle connections and 8 slow-loris ones, each with half
                // a request head: more than the cap of 32.
                let mut held = Vec::new();
                for _ in 0..80 {
                    held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
                }
                for _ in 0..8 {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                        .await
                        .unwrap();
                    held.push(s);
                }
                for _ in 0..10 {
                    let t = tokio::time::Instant::now();
                    let answer =
                        tokio::time::timeout(Duration::from_secs(10), get(addr, "/healthz", "*/*"))
                            .await
                            .expect("/healthz never answered");
                    let took = t.elapsed();
                    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
                }
                // The quietest were closed to make room, and counted.
                let m = get(addr, "/metrics", "*/*").await;
                let made_room = sample(
                    &m,
                    "fwd_metrics_connections_closed_total{reason=\"made_room\"}",
                );
                assert!(made_room.is_some_and(|n| n >= 88.0 - 32.0), "{m}");
                let mut closed = 0;
                for s in &mut held {
                    if closed_within(s, Duration::from_millis(1)).await {
                        closed += 1;
                    }
                }
                assert!(closed >= 88 - 32, "only {closed} of the held closed");
                server.abort();
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_that_asks_nothing_in_time_is_closed_and_counted() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let limits = Limits {
                    connections: 8,
                    ask_within: Duration::from_millis(300),
                };
                let server = tokio::task::spawn_local(serve_with(
                    listener,
                    Rc::new(Fixed(Scrape::default())),
                    limits,
                ));
                let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
                let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
                let trickle = tokio::task::spawn_local(async move {
                    // A byte every 50 ms, a head that never ends: the
                    // window is not reset by bytes, only by a request.
                    for b in b"GET /healthz HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" {
                        if slow.write_all(&[*b]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    slow
                });
                let t = tokio::time::Instant::now();
                assert!(closed_within(&mut idle, Duration::from_secs(10)).await);
                let idle_for = t.elapsed();
                assert!(idle_for >= Duration::from_millis(300), "{idle_for:?}");
                let mut slow = trickle.await.unwrap();
                assert!(closed_within(&mut slow, Duration::from_secs(10)).await);
                // A keep-alive client that asks in time keeps its connection.
                let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
                for _ in 0..3 {
                    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await
                        .unwrap();
                    let mut buf = [0u8; 512];
                    let n = kept.read(&mut buf).await.unwrap();
                    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let m = get(addr, "/metrics", "*/*").await;
                assert_eq!(
                    sample(
                        &m,
                        "fwd_metrics_connections_closed_total{reason=\"no_request\"}"
                    ),
                    Some(2.0),
                    "{m}"
                );
                assert_eq!(
                    sample(
                        &m,
                        "fwd_metrics_connections_closed_total{reason=\"made_room\"}"
                    ),
                    Some(0.0),
                    "{m}"
                );
                server.abort();
            })
            .await;
    }
}
