//! Fuzzing the engine socket's request reader (`fwd_core::engine_requests`,
//! the start hold): what the docker CLI really sent (tests/fuzz/corpus/
//! engine_requests, captured from docker 28.2 against dockerd 20.10), parsed
//! as is, then mutated. Whatever a client sends, the reader must not panic,
//! must keep no more than its bounds, must read the same however the bytes
//! are cut into reads, and may only report a start of a valid container ID
//! that a request head asked for.

#[path = "../../../tests/fuzz/mutate.rs"]
mod mutate;

use fwd_core::engine_requests::{answer_is_held, RequestReader};
use fwd_core::ContainerId;
use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let root = mutate::repo_root(env!("CARGO_MANIFEST_DIR"));
    mutate::seeds_in(&root.join("tests/fuzz/corpus/engine_requests"))
}

/// What the reader made of `input` fed in one piece, and in `lengths`.
fn read(input: &[u8], lengths: &[usize]) -> ((Vec<String>, bool), (Vec<String>, bool)) {
    let mut whole = RequestReader::new();
    let once = (whole.feed(input), whole.is_reading());
    let mut cut = RequestReader::new();
    let mut starts = Vec::new();
    for piece in mutate::cut(input, lengths) {
        starts.extend(cut.feed(piece));
    }
    (once, (starts, cut.is_reading()))
}

const ID: &str = "b633db539c3f6e28cc30941e0be510195db60013d7f921075adf44cc7d711f9d";

#[test]
fn every_seed_reads_as_captured() {
    let root = mutate::repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fuzz/corpus/engine_requests");
    let seed = |name: &str| std::fs::read(dir.join(name)).expect("seed");
    // `docker run -d -p`: the create on one connection, the start by ID on
    // the next (a start by name, as `docker start NAME` sends, is not one).
    for (name, starts, reading) in [
        ("docker-28.2-run-d-p-1.http", vec![], true),
        ("docker-28.2-run-d-p-2.http", vec![ID], true),
        ("docker-28.2-start-1.http", vec![], true),
        ("docker-28.2-stop-1.http", vec![], true),
        ("docker-28.2-inspect-1.http", vec![], true),
        ("docker-28.2-rm-1.http", vec![], true),
        ("docker-28.2-exec-1.http", vec![], true),
        // The exec's start upgrades the connection: nothing read after it.
        ("docker-28.2-exec-2.http", vec![], false),
        // A chunked tar body, skipped whole.
        ("docker-28.2-build-1.http", vec![], true),
    ] {
        let mut r = RequestReader::new();
        assert_eq!(r.feed(&seed(name)), starts, "{name}");
        assert_eq!(r.is_reading(), reading, "{name}");
    }
    assert_eq!(corpus().len(), 9, "a new seed gets its line above");
}

/// One request as a client might send it.
#[derive(Clone, Debug)]
struct Req {
    method: &'static str,
    target: String,
    body: Body,
    starts: Option<String>,
}

#[derive(Clone, Debug)]
enum Body {
    None,
    Sized(Vec<u8>),
    /// The body cut into these chunks, each with an extension or not.
    Chunked(Vec<(Vec<u8>, bool)>),
}

impl Req {
    fn bytes(&self) -> Vec<u8> {
        let mut b = format!(
            "{} {} HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: Docker-Client/28.2.2 (linux)\r\n",
            self.method, self.target
        )
        .into_bytes();
        match &self.body {
            Body::None => b.extend_from_slice(b"\r\n"),
            Body::Sized(body) => {
                b.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                b.extend_from_slice(body);
            }
            Body::Chunked(chunks) => {
                b.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for (chunk, ext) in chunks.iter().filter(|(c, _)| !c.is_empty()) {
                    let ext = if *ext { ";name=value" } else { "" };
                    b.extend_from_slice(format!("{:x}{ext}\r\n", chunk.len()).as_bytes());
                    b.extend_from_slice(chunk);
                    b.extend_from_slice(b"\r\n");
                }
                b.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
            }
        }
        b
    }
}

fn any_id() -> impl Strategy<Value = String> {
    "[0-9a-f]{12,64}"
}

fn any_req() -> impl Strategy<Value = Req> {
    // A body that looks like requests, starts included: never a request.
    let body = prop_oneof![
        any_id()
            .prop_map(|id| format!("POST /containers/{id}/start HTTP/1.1\r\n\r\n").into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..300),
    ];
    let body = prop_oneof![
        Just(Body::None),
        body.clone().prop_map(Body::Sized),
        proptest::collection::vec((body, any::<bool>()), 0..4).prop_map(Body::Chunked),
    ];
    let start = (any_id(), any::<bool>(), "(\\?detachKeys=ctrl-p)?").prop_map(|(id, v, q)| {
        let version = if v { "/v1.41" } else { "" };
        (format!("{version}/containers/{id}/start{q}"), Some(id))
    });
    let other = prop_oneof![
        Just("/_ping".to_string()),
        Just("/v1.41/containers/create?name=web".to_string()),
        any_id().prop_map(|id| format!("/v1.41/containers/{id}/stop")),
        Just("/v1.41/containers/web/start".to_string()),
        "/[a-z0-9/._?=-]{0,40}".prop_map(String::from),
    ]
    .prop_map(|t| (t, None));
    let method = proptest::sample::select(vec!["GET", "POST", "HEAD", "DELETE", "PUT"]);
    (method, prop_oneof![start, other], body).prop_map(|(method, (target, id), body)| Req {
        method,
        starts: id.filter(|_| method == "POST"),
        target,
        body,
    })
}

proptest! {
    #![proptest_config(mutate::config(4096))]

    /// Mutated captures: no panic, the same answer however the bytes are
    /// cut, and only valid IDs out.
    #[test]
    fn mutated_captures_read_the_same_however_they_are_cut(
        input in mutate::mutated(corpus(), 6, 20_000),
        lengths in mutate::pieces(),
    ) {
        let (once, cut) = read(&input, &lengths);
        prop_assert_eq!(&once, &cut, "input {:?}", input.escape_ascii().to_string());
        for id in &once.0 {
            let parsed = ContainerId::parse(id).map(|c| c.as_str().to_string());
            prop_assert_eq!(parsed.as_ref(), Ok(id));
        }
    }

    /// A keep-alive connection of well-formed requests, any bodies, any
    /// cuts: exactly the starts their heads asked for, in order.
    #[test]
    fn a_start_is_seen_exactly_when_a_head_asks_for_it(
        reqs in proptest::collection::vec(any_req(), 1..8),
        lengths in mutate::pieces(),
    ) {
        let input: Vec<u8> = reqs.iter().flat_map(Req::bytes).collect();
        let want: Vec<String> = reqs.iter().filter_map(|r| r.starts.clone()).collect();
        let (once, cut) = read(&input, &lengths);
        prop_assert_eq!(&once, &(want, true));
        prop_assert_eq!(&cut, &once);
    }

    /// A head that never ends, or a chunk-size line that never ends, is not
    /// kept: the reader stops reading, whatever follows.
    #[test]
    fn a_head_or_a_chunk_line_past_its_bound_stops_the_reading(
        seed in proptest::sample::select(corpus()),
        chunked in any::<bool>(),
        byte in any::<u8>().prop_filter("no line end", |b| *b != b'\n' && *b != b'\r'),
        lengths in mutate::pieces(),
    ) {
        let mut input = if chunked {
            b"POST /v1.41/build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1".to_vec()
        } else {
            b"POST /v1.41/containers/create HTTP/1.1\r\nX-Long: ".to_vec()
        };
        input.extend(vec![byte; 64 * 1024]);
        // What would end the head, or the chunked body (a chunk of 1 byte
        // and the last chunk), if the long line were taken.
        input.extend_from_slice(if chunked { b"\r\nX\r\n0\r\n\r\n" } else { b"\r\n\r\n" });
        input.extend_from_slice(&seed);
        let (once, cut) = read(&input, &lengths);
        prop_assert_eq!(&once, &(vec![], false));
        prop_assert_eq!(&cut, &once);
    }

    #[test]
    fn only_a_204_answer_is_held(first in mutate::mutated(vec![
        b"HTTP/1.1 204 No Content\r\nApi-Version: 1.41\r\n\r\n".to_vec(),
        b"HTTP/1.1 304 Not Modified\r\n\r\n".to_vec(),
        b"HTTP/1.0 404 Not Found\r\n".to_vec(),
    ], 4, 64)) {
        let held = answer_is_held(&first);
        prop_assert_eq!(
            held,
            first.starts_with(b"HTTP/1.1 204 ") || first.starts_with(b"HTTP/1.0 204 ")
        );
    }
}
