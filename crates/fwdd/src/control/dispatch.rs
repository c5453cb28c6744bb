//! One connection's request loop: each line is decoded and answered through
//! the [`ControlHandler`](crate::handler::ControlHandler); a malformed line gets
//! an error response and the connection stays usable; `watch` turns the
//! connection into a stream ([`super::watch`]) for the rest of its life.

use super::framing::{self, Next};
use super::shared::Shared;
use super::watch;
use fwd_proto::{decode_request, error_code, Request, Response};
use std::time::Instant;
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tracing::{debug, info};

/// Serves one admitted connection until the client leaves, a limit is hit or
/// shutdown.
pub(super) async fn handle_connection(
    shared: &Shared,
    stream: UnixStream,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let idle = shared.config.idle_timeout;
    let max = shared.config.max_line;
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::with_capacity(16 * 1024, rd);
    let mut line = Vec::new();
    loop {
        match framing::next_line(&mut reader, &mut line, max, idle, &mut shutdown).await {
            Next::Close => return,
            Next::TooLong => {
                framing::refuse_too_long(&mut reader, &mut wr, max, idle).await;
                return;
            }
            Next::Line => {}
        }
        let started = Instant::now();
        let response = match decode_request(&line) {
            Ok(Request::Watch) => {
                debug!("control watch started");
                watch::serve_watch(shared, &mut reader, &mut wr, &mut shutdown).await;
                return;
            }
            Ok(Request::Upgrade) => {
                use std::os::fd::AsRawFd;
                info!(event = "control_upgrade", "binary upgrade requested");
                // Returns only if the upgrade did not happen.
                let why = shared.handler.upgrade(wr.as_ref().as_raw_fd()).await;
                Response::error_with_code(why, error_code::UPGRADE_REFUSED)
            }
            Ok(request) => {
                let cmd = request.cmd();
                let r = answer(shared, request).await;
                debug!(cmd, elapsed = ?started.elapsed(), "control request answered");
                r
            }
            Err(e) => {
                debug!(error = %e, "bad control request");
                Response::error(e.to_string())
            }
        };
        if !framing::write_response(&mut wr, &response, idle).await {
            return;
        }
    }
}

/// Answers every request except `watch` (see [`watch::serve_watch`]).
async fn answer(shared: &Shared, request: Request) -> Response {
    let h = &shared.handler;
    match request {
        Request::Status => Response::Status(h.status()),
        Request::Probe { port } => match h.probe_port(port).await {
            Ok(()) => Response::Probe { port },
            Err(e) => Response::error_with_code(e, error_code::PROBE_FAILED),
        },
        Request::Reconnect { host } => match h.reconnect(host.as_deref()) {
            Ok(hosts) => {
                info!(event = "control_reconnect", hosts = ?hosts, "reconnect requested");
                Response::Reconnect { hosts }
            }
            Err(e) => Response::error_with_code(e, error_code::UNKNOWN_HOST),
        },
        Request::Resync { host } => match h.resync(host.as_deref()) {
            Ok(hosts) => {
                info!(event = "control_resync", hosts = ?hosts, "resync requested");
                Response::Resync { hosts }
            }
            Err(e) => Response::error_with_code(e, error_code::UNKNOWN_HOST),
        },
        Request::Metrics => Response::Metrics { text: h.metrics() },
        Request::Expose { host, spec } => match h.expose(host.as_deref(), &spec) {
            Ok(c) => {
                info!(event = "control_expose", host = %c.host, port = c.remote_port, runner = %c.runner, "expose requested");
                Response::Expose(c)
            }
            Err(e) => Response::error_with_code(e, error_code::EXPOSE_REFUSED),
        },
        Request::Unexpose { host, port } => match h.unexpose(host.as_deref(), port) {
            Ok(c) => {
                info!(event = "control_unexpose", host = %c.host, port = c.remote_port, "unexpose requested");
                Response::Unexpose(c)
            }
            Err(e) => Response::error_with_code(e, error_code::EXPOSE_REFUSED),
        },
        Request::Watch | Request::Upgrade => {
            Response::error("this request cannot be answered with one response")
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::control::test_support::*;
    use crate::control::ControlConfig;
    use fwd_proto::{decode_response, encode_request, error_code, Request, Response};
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;
    use tokio::task::LocalSet;

    #[tokio::test]
    async fn status_request_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        LocalSet::new()
            .run_until(with_server(&sock, ControlConfig::default(), || async {
                let r = request(&sock, &encode_request(&Request::Status)).await;
                assert_eq!(r, Some(Response::Status(fixture())));
            }))
            .await;
    }

    #[tokio::test]
    async fn probe_reconnect_resync() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let fake = Fake::new();
        LocalSet::new()
            .run_until(with_handler(
                &sock,
                ControlConfig::default(),
                fake.clone(),
                || async {
                    let r = request(&sock, &encode_request(&Request::Probe { port: 80 })).await;
                    assert_eq!(r, Some(Response::Probe { port: 80 }));
                    let r = request(&sock, b"{\"v\":1,\"cmd\":\"probe\",\"port\":81}\n").await;
                    assert_eq!(
                        r,
                        Some(Response::error_with_code(
                            "port 81 is not forwarded",
                            error_code::PROBE_FAILED
                        ))
                    );
                    let r =
                        request(&sock, b"{\"v\":1,\"cmd\":\"reconnect\",\"host\":null}\n").await;
                    assert_eq!(
                        r,
                        Some(Response::Reconnect {
                            hosts: vec!["h1".into()]
                        })
                    );
                    assert_eq!(fake.0.reconnects.get(), 1);
                    let r =
                        request(&sock, b"{\"v\":1,\"cmd\":\"reconnect\",\"host\":\"zz\"}\n").await;
                    assert_eq!(
                        r,
                        Some(Response::error_with_code(
                            "no host named \"zz\" (configured: h1)",
                            error_code::UNKNOWN_HOST
                        ))
                    );
                    assert_eq!(fake.0.reconnects.get(), 1);
                    let r = request(&sock, b"{\"v\":1,\"cmd\":\"resync\",\"host\":\"h1\"}\n").await;
                    assert_eq!(
                        r,
                        Some(Response::Resync {
                            hosts: vec!["h1".into()]
                        })
                    );
                    let msg = error_message(request(&sock, b"{\"v\":1,\"cmd\":\"probe\"}\n").await);
                    assert!(msg.contains("missing field `port`"), "{msg}");
                },
            ))
            .await;
    }

    /// A status far bigger than a request may be (500 forwards, over `MAX_LINE`)
    /// is sent whole, decodes to exactly what the daemon holds, and leaves the
    /// connection usable: only requests are bounded. (How long it takes is the
    /// benchmark's business, not a test's.)
    #[tokio::test]
    async fn status_with_500_forwards_is_sent_whole() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let fake = Fake::new();
        fake.set(|st| st.forwards = (1..=500).map(forward).collect());
        LocalSet::new()
            .run_until(with_handler(
                &sock,
                ControlConfig::default(),
                fake.clone(),
                || async {
                    let mut s = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                    for (round, expected) in [500, 500, 499].into_iter().enumerate() {
                        let want = fake.0.status.borrow().clone();
                        assert_eq!(want.forwards.len(), expected);
                        s.get_mut()
                            .write_all(&encode_request(&Request::Status))
                            .await
                            .unwrap();
                        let mut line = Vec::new();
                        tokio::time::timeout(
                            Duration::from_secs(5),
                            s.read_until(b'\n', &mut line),
                        )
                        .await
                        .expect("no status in time")
                        .unwrap();
                        assert!(
                            line.len() > fwd_proto::MAX_LINE,
                            "only {} bytes",
                            line.len()
                        );
                        assert_eq!(line.last(), Some(&b'\n'), "cut short");
                        match decode_response(&line) {
                            Ok(Response::Status(got)) => assert!(got == want, "status differs"),
                            other => panic!("expected a status, got {other:?}"),
                        }
                        if round == 1 {
                            // The next answer reflects the daemon's state at that time.
                            fake.set(|st| st.forwards.truncate(499));
                        }
                    }
                },
            ))
            .await;
    }

    #[tokio::test]
    async fn garbage_gets_error_and_daemon_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        LocalSet::new()
            .run_until(with_server(&sock, ControlConfig::default(), || async {
                let mut s = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                s.get_mut().write_all(b"garbage\n").await.unwrap();
                let msg = error_message(read_response(&mut s).await);
                assert!(msg.starts_with("invalid JSON"), "{msg}");
                // Framing is intact, so the same connection still works...
                s.get_mut()
                    .write_all(
                        b"\xff\xfe\n{\"v\":9,\"cmd\":\"status\"}\n{\"v\":1,\"cmd\":\"nope\"}\n",
                    )
                    .await
                    .unwrap();
                assert!(error_message(read_response(&mut s).await).contains("UTF-8"));
                assert!(error_message(read_response(&mut s).await)
                    .contains("unsupported protocol version 9"));
                assert!(
                    error_message(read_response(&mut s).await).contains("unknown command \"nope\"")
                );
                s.get_mut()
                    .write_all(&encode_request(&Request::Status))
                    .await
                    .unwrap();
                assert_eq!(
                    read_response(&mut s).await,
                    Some(Response::Status(fixture()))
                );
                drop(s);
                // ...and so does a new one.
                let r = request(&sock, &encode_request(&Request::Status)).await;
                assert_eq!(r, Some(Response::Status(fixture())));
            }))
            .await;
    }
}
