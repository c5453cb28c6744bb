//! Fuzzing the metrics endpoint's request handling (`fwd_metrics::serve`)
//! against the real server on 127.0.0.1: what curl and wget really sent
//! (and a Prometheus scrape and a kubelet probe written as they send them;
//! tests/fuzz/corpus/metrics_http), each answered as is, then mutated, cut
//! short, spliced into keep-alive sequences and grown past hyper's bounds.
//! Whatever a client sends: only well-formed HTTP/1.1 answers with a status
//! the endpoint means (never a crash, never a 500), nothing of the request
//! echoed, a head past the bound refused rather than buffered, and the next
//! client's `/healthz` still answered.

#[path = "../../../tests/fuzz/mutate.rs"]
mod mutate;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use fwd_metrics::{HostScrape, MetricsSource, Scrape};
use proptest::prelude::*;

struct Fixed;

impl MetricsSource for Fixed {
    fn scrape(&self) -> Scrape {
        Scrape {
            version: "fuzz".into(),
            hosts: vec![HostScrape {
                name: "h".into(),
                connected: true,
                streaming: true,
                state: "connected".into(),
                ..Default::default()
            }],
            endpoint: None,
            descriptors: None,
        }
    }
}

/// One server for every case, on a thread of its own (the daemon's kind of
/// runtime: one thread, local tasks).
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send");
                fwd_metrics::serve(listener, Rc::new(Fixed)).await;
            });
        });
        rx.recv().expect("the server's address")
    })
}

fn corpus() -> Vec<Vec<u8>> {
    let root = mutate::repo_root(env!("CARGO_MANIFEST_DIR"));
    mutate::seeds_in(&root.join("tests/fuzz/corpus/metrics_http"))
}

/// Ends whatever came before it (an unfinished head ends at the blank
/// line), then asks for one more answer and the connection's end. Not a
/// half-close: hyper closes at once on one, answering nothing (its
/// `half_close` is off), as it would for a client that does so.
const LAST: &[u8] = b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";

/// What one connection carrying `input`, then [`LAST`], got back; and
/// whether all of `input` could be written.
fn exchange(input: &[u8]) -> (Vec<u8>, bool) {
    let s = TcpStream::connect(server()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let sent = w.write_all(&input).is_ok();
        let _ = w.write_all(LAST);
        sent
    });
    let mut out = Vec::new();
    let mut r = s;
    // A reset after the answer (the server closed with input unread) ends it too.
    let _ = r.read_to_end(&mut out);
    (out, writer.join().expect("writer"))
}

fn healthz_answers() -> Result<(), TestCaseError> {
    let (out, _) = exchange(b"");
    prop_assert!(
        out.starts_with(b"HTTP/1.1 200 ") && out.ends_with(b"ok\n"),
        "{}",
        out.escape_ascii()
    );
    Ok(())
}

/// Statuses the endpoint means: its answers, and hyper's refusals of what
/// is not HTTP/1.1 it can read.
const STATUSES: &[&str] = &[
    "200", "503", "404", "405", "400", "408", "413", "414", "431", "501", "505",
];

fn check_answer(out: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(out);
    // An HTTP/1.0 request is answered in HTTP/1.0.
    prop_assert!(
        out.is_empty() || out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
        "{}",
        out.escape_ascii()
    );
    let status_line = |l: &&str| l.starts_with("HTTP/1.1 ") || l.starts_with("HTTP/1.0 ");
    for line in text.split("\r\n").filter(status_line) {
        let code = line.get(9..12).unwrap_or("");
        prop_assert!(STATUSES.contains(&code), "{line}");
    }
    // The request is never echoed: only the endpoint's own words.
    prop_assert!(!text.contains("fuzz-echo"), "{text}");
    Ok(())
}

#[test]
fn every_seed_is_answered_as_its_client_expects() {
    for seed in corpus() {
        let (out, sent) = exchange(&seed);
        let head = String::from_utf8_lossy(&seed);
        let answer = String::from_utf8_lossy(&out);
        assert!(sent, "{head}");
        // The one host is up: /readyz is 200 too.
        assert!(answer.starts_with("HTTP/1.1 200 "), "{head}\n→\n{answer}");
        // The probe that asked to close gets no second answer.
        let answers = if head.contains("Connection: close") {
            1
        } else {
            2
        };
        assert_eq!(answer.matches("HTTP/1.1 200 ").count(), answers, "{answer}");
        if head.starts_with("GET /metrics") {
            assert!(answer.contains("fwd_host_up{host=\"h\"} 1"), "{answer}");
        }
    }
}

/// A head that never ends is refused at hyper's bound, not read to its
/// end: the server stops reading, so the client cannot send it all.
#[test]
fn a_head_past_the_bound_is_refused_not_buffered() {
    let mut input = b"GET /metrics HTTP/1.1\r\nHost: fuzz\r\nX-Long: ".to_vec();
    input.extend(vec![b'a'; 64 << 20]);
    let (out, sent) = exchange(&input);
    assert!(out.starts_with(b"HTTP/1.1 431 "), "{}", out.escape_ascii());
    assert!(!sent, "the server read all 64 MiB");
    if let Err(e) = healthz_answers() {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(mutate::config(2048))]

    #[test]
    fn mutated_requests_get_only_the_endpoints_answers(
        input in mutate::mutated(corpus(), 8, 1 << 16),
        echo in any::<bool>(),
    ) {
        // A path of the client's own, to see that none of it comes back.
        let input = if echo {
            String::from_utf8_lossy(&input).replacen("/metrics", "/fuzz-echo", 1).into_bytes()
        } else {
            input
        };
        let (out, _) = exchange(&input);
        check_answer(&out)?;
        healthz_answers()?;
    }
}
