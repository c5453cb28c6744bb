//! Request framing: one request per `\n`-terminated line, each line bounded by
//! [`ControlConfig::max_line`](super::ControlConfig::max_line) (an over-long line
//! gets an error response and the connection is closed, without buffering the
//! rest), and each read of a request and each write of a response bounded by
//! [`ControlConfig::idle_timeout`](super::ControlConfig::idle_timeout).

use fwd_proto::{encode_line, DecodeError, Response};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tracing::debug;

enum LineRead {
    /// A line is in the buffer (without its newline). At end of stream, a final
    /// unterminated line also counts.
    Line,
    /// End of stream and nothing buffered.
    Eof,
    /// The line exceeded the limit; the rest of it was not read.
    TooLong,
}

/// Reads one `\n`-terminated line into `buf` (cleared first), never buffering more than
/// `max + 1` bytes of it.
async fn read_line_bounded<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if buf.len() + chunk.len() > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(chunk);
        let consumed = done.unwrap_or(chunk.len());
        reader.consume(consumed);
        if done.is_some() {
            // A "\r\n" ending keeps its "\r": the decoder strips one, and
            // only one (stripping it here too took "\r\r\n" for "\n").
            return Ok(LineRead::Line);
        }
    }
}

/// What waiting for the next request gave.
pub(super) enum Next {
    /// A request line is in the buffer.
    Line,
    /// The line exceeded the limit: answer with [`refuse_too_long`] and close.
    TooLong,
    /// Close the connection: end of stream, a read error, no complete line within
    /// the idle timeout, or shutdown.
    Close,
}

/// Reads the next request line into `line` within `idle`, unless shutdown comes first.
pub(super) async fn next_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
    max: usize,
    idle: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Next {
    if *shutdown.borrow() {
        return Next::Close;
    }
    let read = tokio::select! {
        _ = shutdown.changed() => return Next::Close,
        r = tokio::time::timeout(idle, read_line_bounded(reader, line, max)) => r,
    };
    match read {
        Err(_elapsed) => {
            debug!(timeout = ?idle, "control connection idle, closing");
            Next::Close
        }
        Ok(Err(e)) => {
            debug!(error = %e, "control connection read failed");
            Next::Close
        }
        Ok(Ok(LineRead::Eof)) => Next::Close,
        Ok(Ok(LineRead::TooLong)) => Next::TooLong,
        Ok(Ok(LineRead::Line)) => Next::Line,
    }
}

/// Answers an over-long line with an error and ends the connection's sending side.
pub(super) async fn refuse_too_long<R, W>(
    reader: &mut BufReader<R>,
    wr: &mut W,
    max: usize,
    idle: Duration,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let err = DecodeError::TooLong { len: max + 1, max };
    debug!("control request too long, closing");
    let msg = format!("request {err}; closing connection");
    let _ = tokio::time::timeout(idle, wr.write_all(&encode_line(&Response::error(msg)))).await;
    let _ = wr.shutdown().await;
    // Drain a little of what the client is still sending, so that closing
    // with unread data does not reset the connection before it reads the error.
    let drain = async {
        let mut sink = [0u8; 8192];
        let mut budget = 1usize << 20;
        while budget > 0 {
            match reader.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
}

/// Writes one response within `idle`; `false` means the connection is to be closed.
pub(super) async fn write_response<W: AsyncWrite + Unpin>(
    wr: &mut W,
    response: &Response,
    idle: Duration,
) -> bool {
    match tokio::time::timeout(idle, wr.write_all(&encode_line(response))).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(error = %e, "control connection write failed");
            false
        }
        Err(_) => {
            debug!("control client not reading, closing");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::control::test_support::*;
    use crate::control::ControlConfig;
    use fwd_proto::{encode_request, Request, Response};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;
    use tokio::task::LocalSet;

    #[tokio::test]
    async fn oversize_line_gets_error_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        LocalSet::new()
            .run_until(with_server(&sock, ControlConfig::default(), || async {
                let mut s = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                // Keep sending without a newline; the server must not buffer it all.
                let chunk = vec![b'x'; 64 * 1024];
                let writer = async {
                    for _ in 0..32 {
                        if s.get_mut().write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
                let msg = error_message(read_response(&mut s).await);
                assert!(msg.contains("line too long"), "{msg}");
                assert_eq!(read_response(&mut s).await, None, "connection not closed");
                // A concurrent/next client is unaffected.
                let r = request(&sock, &encode_request(&Request::Status)).await;
                assert_eq!(r, Some(Response::Status(fixture())));
            }))
            .await;
    }

    #[tokio::test]
    async fn idle_client_is_disconnected() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let config = ControlConfig {
            idle_timeout: Duration::from_millis(200),
            ..ControlConfig::default()
        };
        LocalSet::new()
            .run_until(with_server(&sock, config, || async {
                let started = Instant::now();
                let mut silent = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                let mut slow = BufReader::new(UnixStream::connect(&sock).await.unwrap());
                slow.get_mut().write_all(b"{\"v\":1,").await.unwrap();
                assert_eq!(read_response(&mut silent).await, None);
                assert_eq!(read_response(&mut slow).await, None);
                let took = started.elapsed();
                assert!(
                    took >= Duration::from_millis(190) && took < Duration::from_secs(3),
                    "{took:?}"
                );
            }))
            .await;
    }
}
