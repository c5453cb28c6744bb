//! Fuzzing the control socket's framing against the real server (a daemon
//! stand-in behind it, `test_support`): the golden request lines of
//! fwd-proto (tests/golden/protocol.ndjson), alone and one after another on
//! a connection, parsed as is, then mutated and grown past the line bound.
//! Whatever a client sends: one response per line, each a valid response
//! line, a malformed line answered with the decoder's own error and the
//! connection kept; a line over the bound answered once and the connection
//! closed without reading it all; the server still answers the next client.

// Also included by handover::fuzz: each target of fwdd stands alone.
#[allow(clippy::duplicate_mod)]
#[path = "../../../../tests/fuzz/mutate.rs"]
mod mutate;

use super::test_support::{fixture, with_server};
use super::ControlConfig;
use fwd_proto::{decode_request, decode_response, encode_request, Request, Response};
use proptest::prelude::*;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A small bound, so that grown lines cross it.
const MAX_LINE: usize = 2048;

/// The golden request lines (not `watch`: it streams until the client
/// leaves), one seed each and all of them on one connection.
fn seeds() -> Vec<Vec<u8>> {
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fwd-proto/tests/golden/protocol.ndjson");
    let text = std::fs::read(&golden).expect("fwd-proto's golden lines");
    let requests: Vec<Vec<u8>> = text
        .split_inclusive(|b| *b == b'\n')
        .filter(|l| matches!(decode_request(l), Ok(r) if r != Request::Watch))
        .map(<[u8]>::to_vec)
        .collect();
    assert!(requests.len() >= 10, "{}", requests.len());
    let mut seeds = requests.clone();
    seeds.push(requests.concat());
    seeds
}

/// What one connection carrying `input` got back, to its end.
fn converse(input: Vec<u8>) -> Vec<Response> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("control.sock");
    let config = ControlConfig {
        max_line: MAX_LINE,
        ..ControlConfig::default()
    };
    let mut got = Vec::new();
    let local = tokio::task::LocalSet::new();
    local.block_on(
        &rt,
        with_server(&sock, config, || async {
            let stream = UnixStream::connect(&sock).await.expect("connect");
            let (rd, mut wr) = stream.into_split();
            // Written beside the reading: a client that sends a lot and
            // reads nothing until it is done would block both sides.
            let writer = tokio::task::spawn_local(async move {
                let _ = wr.write_all(&input).await;
                let _ = wr.shutdown().await;
                wr
            });
            let mut rd = BufReader::new(rd);
            loop {
                let mut line = Vec::new();
                let n =
                    tokio::time::timeout(Duration::from_secs(10), rd.read_until(b'\n', &mut line))
                        .await
                        .expect("the server answers or closes");
                if n.unwrap_or(0) == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                got.push(decode_response(&line).unwrap_or_else(|e| panic!("{e}: {text}")));
            }
            drop(writer.await);
            // The next client is served as ever.
            let mut next = BufReader::new(UnixStream::connect(&sock).await.expect("connect"));
            next.get_mut()
                .write_all(&encode_request(&Request::Status))
                .await
                .expect("write");
            let mut line = Vec::new();
            next.read_until(b'\n', &mut line).await.expect("read");
            assert_eq!(
                decode_response(&line).ok(),
                Some(Response::Status(fixture()))
            );
        }),
    );
    got
}

/// The lines the server reads of `input`, the first one over the bound last.
fn lines(input: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut out = Vec::new();
    let mut pieces: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    if pieces.last().is_some_and(|l| l.is_empty()) {
        pieces.pop(); // Nothing after the last newline.
    }
    for l in pieces {
        if l.len() > MAX_LINE {
            return (out, true);
        }
        out.push(l);
    }
    (out, false)
}

fn check(input: Vec<u8>) -> Result<(), TestCaseError> {
    let (read, too_long) = lines(&input);
    prop_assume!(!read.iter().any(|l| decode_request(l) == Ok(Request::Watch)));
    let got = converse(input.clone());
    prop_assert_eq!(
        got.len(),
        read.len() + usize::from(too_long),
        "responses to {:?}",
        input.escape_ascii().to_string()
    );
    for (line, response) in read.iter().zip(&got) {
        match decode_request(line) {
            Err(e) => prop_assert_eq!(response, &Response::error(e.to_string())),
            // A request that decodes is answered by the daemon, which may
            // refuse it, but never as undecodable.
            Ok(_) => prop_assert!(
                !matches!(response, Response::Error { code: None, .. }),
                "{response:?}"
            ),
        }
    }
    if too_long {
        let last = got.last().expect("an answer");
        prop_assert!(
            matches!(last, Response::Error { message, .. } if message.contains("line too long")),
            "{last:?}"
        );
    }
    Ok(())
}

#[test]
fn the_golden_requests_are_answered_one_by_one() {
    for seed in seeds() {
        if let Err(e) = check(seed) {
            panic!("{e}");
        }
    }
}

proptest! {
    #![proptest_config(mutate::config(1024))]

    #[test]
    fn mutated_requests_are_answered_line_by_line(input in mutate::mutated(seeds(), 8, 3 * MAX_LINE)) {
        check(input)?;
    }
}
