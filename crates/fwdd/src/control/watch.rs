//! The `watch` stream: a snapshot, then the difference to the last state sent
//! after every change the daemon announces. A slow reader sees changes coalesced
//! (memory stays bounded: one snapshot and one batch of lines); a watcher that
//! leaves a write blocked for
//! [`ControlConfig::idle_timeout`](super::ControlConfig::idle_timeout) is
//! disconnected.

use super::shared::Shared;
use fwd_proto::{diff, encode_line, Event, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tracing::debug;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Streams a snapshot, then the difference to the last sent state after every change,
/// until the client disconnects, a write stays blocked for `idle_timeout`, or shutdown.
/// Input from the client is read and discarded (to notice its EOF).
pub(super) async fn serve_watch<R, W>(
    shared: &Shared,
    reader: &mut BufReader<R>,
    wr: &mut W,
    shutdown: &mut watch::Receiver<bool>,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let idle = shared.config.idle_timeout;
    let mut changes = shared.handler.changes();
    changes.borrow_and_update();
    let mut last = shared.handler.status();
    let first = Response::Event(Event::Snapshot {
        at_ms: now_ms(),
        status: last.clone(),
    });
    let mut out = encode_line(&first);
    let mut sink = [0u8; 1024];
    loop {
        if !out.is_empty() {
            match tokio::time::timeout(idle, wr.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(error = %e, "watch client gone");
                    return;
                }
                Err(_) => {
                    debug!(timeout = ?idle, "watch client not reading, closing");
                    return;
                }
            }
            out.clear();
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            r = reader.read(&mut sink) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            c = changes.changed() => if c.is_err() { return },
        }
        // Changes usually come in bursts (a plan touches several forwards):
        // let the burst finish so it is reported once.
        tokio::task::yield_now().await;
        changes.borrow_and_update();
        let now = shared.handler.status();
        for e in diff(&last, &now, now_ms()) {
            out.extend_from_slice(&encode_line(&Response::Event(e)));
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use crate::control::test_support::*;
    use crate::control::ControlConfig;
    use fwd_proto::{encode_request, Event, ForwardState, Request, Response};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;
    use tokio::task::LocalSet;

    fn event(r: Option<Response>) -> Event {
        match r {
            Some(Response::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn watch_streams_snapshot_then_changes() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let fake = Fake::new();
        LocalSet::new()
            .run_until(with_handler(
                &sock,
                ControlConfig::default(),
                fake.clone(),
                || async {
                    let mut s = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                    s.get_mut()
                        .write_all(&encode_request(&Request::Watch))
                        .await
                        .unwrap();
                    match event(read_response(&mut s).await) {
                        Event::Snapshot { status, .. } => assert_eq!(status, fixture()),
                        e => panic!("{e:?}"),
                    }
                    fake.set(|st| st.forwards.push(forward(5432)));
                    match event(read_response(&mut s).await) {
                        Event::ForwardAdded { forward, .. } => assert_eq!(forward.local_port, 5432),
                        e => panic!("{e:?}"),
                    }
                    // A change nobody can see (a counter) sends nothing; the next real one does.
                    fake.set(|st| st.forwards[0].connections_total += 1);
                    fake.set(|st| {
                        st.forwards[0].state = ForwardState::Conflict;
                        st.forwards[0].reason = Some("busy".into());
                    });
                    match event(read_response(&mut s).await) {
                        Event::ForwardStateChanged {
                            previous_state,
                            forward,
                            ..
                        } => {
                            assert_eq!(previous_state, ForwardState::Active);
                            assert_eq!(forward.reason.as_deref(), Some("busy"));
                        }
                        e => panic!("{e:?}"),
                    }
                    fake.set(|st| st.forwards.clear());
                    assert_eq!(event(read_response(&mut s).await).kind(), "forward_removed");
                    // Whatever the client sends is ignored; closing ends the watch.
                    s.get_mut().write_all(b"anything\n").await.unwrap();
                    fake.set(|st| st.forwards.push(forward(1)));
                    assert_eq!(event(read_response(&mut s).await).kind(), "forward_added");
                },
            ))
            .await;
    }

    /// A watcher that never reads must not hold up anyone else, must not make the
    /// daemon buffer without bound, and is eventually disconnected.
    #[tokio::test]
    async fn watch_client_that_never_reads_blocks_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let fake = Fake::new();
        // Big snapshots fill the socket buffer quickly.
        fake.set(|st| st.forwards = (1..=500).map(forward).collect());
        let config = ControlConfig {
            idle_timeout: Duration::from_millis(500),
            ..ControlConfig::default()
        };
        LocalSet::new()
            .run_until(with_handler(&sock, config, fake.clone(), || async {
                let mut stuck = UnixStream::connect(&sock).await.unwrap();
                stuck
                    .write_all(&encode_request(&Request::Watch))
                    .await
                    .unwrap();
                let started = Instant::now();
                let mut worst = Duration::ZERO;
                let mut n = 0u32;
                // The fault lasts 900 ms, well past the 500 ms idle timeout: long
                // enough for the stuck watcher to be disconnected meanwhile.
                while started.elapsed() < Duration::from_millis(900) {
                    // Flip every forward's state: each diff is as big as it gets.
                    fake.set(|st| {
                        for f in &mut st.forwards {
                            f.state = if f.state == ForwardState::Active {
                                ForwardState::Pending
                            } else {
                                ForwardState::Active
                            };
                        }
                    });
                    let t = Instant::now();
                    let r = request(&sock, &encode_request(&Request::Status)).await;
                    worst = worst.max(t.elapsed());
                    assert!(matches!(r, Some(Response::Status(st)) if st.forwards.len() == 500));
                    n += 1;
                }
                assert!(worst < Duration::from_millis(250), "a status took {worst:?}");
                // By now the stuck watcher was disconnected: reading gives what was
                // queued in the socket, then EOF — not one line per change.
                let mut got = Vec::new();
                tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut got))
                    .await
                    .expect("watcher not disconnected")
                    .unwrap();
                let lines = got.iter().filter(|&&b| b == b'\n').count();
                assert!(lines >= 1, "no snapshot");
                assert!(lines < 500 * n as usize, "{lines} lines for {n} changes");
                println!("{n} status requests while a watcher was stuck; worst {worst:?}; watcher got {} bytes", got.len());
            }))
            .await;
    }
}
