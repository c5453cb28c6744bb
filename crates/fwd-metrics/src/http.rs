//! `GET /metrics`, `/healthz` and `/readyz` over HTTP/1.1 (hyper), on a
//! listener the daemon bound. Runs on the daemon's single-threaded runtime:
//! the source is read in the daemon's own turn.

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::exposition::{encode, readiness, Format, Scrape};

/// What the server reads at each request.
pub trait MetricsSource {
    fn scrape(&self) -> Scrape;
}

/// Scrapers and probers served at once; more wait for a place.
const CONNECTIONS: usize = 16;
/// A request's head must arrive within this.
const HEADER_WITHIN: Duration = Duration::from_secs(10);

/// Serves until the listener fails or the task is dropped.
pub async fn serve(listener: TcpListener, source: Rc<dyn MetricsSource>) {
    let places = std::sync::Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(answer(&req, &*source)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_WITHIN)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(place);
        });
    }
}

fn answer(req: &Request<Incoming>, source: &dyn MetricsSource) -> Response<Full<Bytes>> {
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
            text(
                StatusCode::OK,
                format.content_type(),
                encode(&source.scrape(), format),
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
}
