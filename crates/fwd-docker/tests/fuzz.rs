//! Fuzzing the engine's JSON (`fwd_docker::parse`: events, inspect, the
//! container list, networks, info, version) and the event stream as read off
//! a connection (`fwd_docker::connect`, `DockerApi::events`). The seeds are
//! the engine answers captured from dockerd 20.10 and Podman 4.3 (and API
//! 1.52's shapes) in testdata/; each is parsed as is, then mutated byte-wise
//! and as JSON (a node of another type, hostile strings, huge numbers, an
//! object or string widened past a bound). Whatever the engine sends: no
//! panic, an error value rather than a crash, IDs that are validated hex,
//! what is kept bounded, and error messages of bounded length.

#[path = "../../../tests/fuzz/json.rs"]
mod json;
#[path = "../../../tests/fuzz/mutate.rs"]
mod mutate;

use fwd_core::ContainerId;
use fwd_docker::parse::{
    parse_container_list, parse_docker_rootless, parse_event, parse_inspect, parse_network_driver,
    parse_network_gateways, parse_podman_rootless, parse_rfc3339_nanos, parse_version,
};
use fwd_docker::{ContainerEvent, ParseError, StreamItem};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn testdata() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Every JSON answer of testdata/ (each `.json` file, each line of each
/// `.jsonl` file).
fn json_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for dir in [
        testdata(),
        testdata().join("podman-4.3"),
        testdata().join("api-1.52"),
    ] {
        for file in mutate::seeds_in(&dir)
            .into_iter()
            .zip(list(&dir))
            .filter(|(_, name)| name.ends_with(".json") || name.ends_with(".jsonl"))
        {
            let (bytes, name) = file;
            if name.ends_with(".jsonl") {
                seeds.extend(
                    bytes
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(<[u8]>::to_vec),
                );
            } else {
                seeds.push(bytes);
            }
        }
    }
    seeds
}

/// The event streams of testdata/, whole.
fn stream_seeds() -> Vec<Vec<u8>> {
    [
        "events.jsonl",
        "events-unfiltered.jsonl",
        "podman-4.3/events.jsonl",
        "api-1.52/events.jsonl",
    ]
    .iter()
    .map(|f| std::fs::read(testdata().join(f)).expect("testdata"))
    .collect()
}

fn list(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("testdata")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file() && p.extension() != Some("md".as_ref()))
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// An engine answer, mutated byte-wise or as JSON.
fn answer() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        mutate::mutated(json_seeds(), 6, 600),
        json::json_mutated(json_seeds(), 4, 600),
    ]
}

fn valid_id(id: &ContainerId) -> bool {
    ContainerId::parse(id.as_str()).is_ok()
}

/// An error says what failed, briefly: a hostile string is not repeated
/// whole into a log line, nor its control characters raw.
fn check_error(e: &ParseError) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(
        msg.len() <= 1024,
        "an error of {} bytes: {}...",
        msg.len(),
        &msg[..200]
    );
    prop_assert!(!msg.chars().any(char::is_control), "{msg:?}");
    Ok(())
}

/// Every parser on one input, with the invariants of what each returns.
fn check_all(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_event(body) {
        Ok(Some(ev)) => prop_assert!(valid_id(&ev.id)),
        Ok(None) => {}
        Err(e) => check_error(&e)?,
    }
    match parse_inspect(body) {
        Ok(Some(c)) => {
            prop_assert!(valid_id(&c.id));
            prop_assert!(c.name.chars().count() <= 256, "name of {}", c.name.len());
            prop_assert!(c
                .compose_project
                .as_ref()
                .is_none_or(|p| p.chars().count() <= 256));
            prop_assert!(c.labels.len() <= 256, "{} labels", c.labels.len());
            for (k, v) in &c.labels {
                prop_assert!(k.len() <= 256 && v.len() <= 1024);
            }
            prop_assert!(c.networks.len() <= 16, "{} networks", c.networks.len());
            for n in &c.networks {
                prop_assert!(n.name.len() <= 256 && n.driver.is_none());
            }
            for p in &c.ports {
                prop_assert!(p.host_ip.len() <= 64, "host_ip of {}", p.host_ip.len());
                prop_assert!(!c.pending || p.host_port != 0);
            }
            prop_assert!(!c.pending || c.networks.is_empty());
        }
        Ok(None) => {}
        Err(e) => check_error(&e)?,
    }
    match parse_container_list(body) {
        Ok(ids) => prop_assert!(ids.iter().all(valid_id)),
        Err(e) => check_error(&e)?,
    }
    match parse_network_driver(body) {
        Ok(Some(d)) => prop_assert!(!d.is_empty() && d.len() <= 64),
        Ok(None) => {}
        Err(e) => check_error(&e)?,
    }
    match parse_network_gateways(body) {
        // IPv4 first.
        Ok(gws) => prop_assert!(gws.windows(2).all(|w| !(w[0].is_ipv6() && w[1].is_ipv4()))),
        Err(e) => check_error(&e)?,
    }
    match parse_version(body) {
        Ok(v) => prop_assert!(v.len() <= 256, "a version of {} bytes", v.len()),
        Err(e) => check_error(&e)?,
    }
    for r in [parse_docker_rootless(body), parse_podman_rootless(body)] {
        if let Err(e) = r {
            check_error(&e)?;
        }
    }
    Ok(())
}

#[test]
fn every_seed_parses_as_captured() {
    let seeds = json_seeds();
    assert!(seeds.len() > 60, "{}", seeds.len());
    for seed in &seeds {
        let text = String::from_utf8_lossy(seed);
        // Each answer is what one parser reads, and every parser holds up.
        let read = parse_event(seed).is_ok()
            || parse_inspect(seed).is_ok()
            || parse_container_list(seed).is_ok()
            || parse_network_gateways(seed).is_ok()
            || parse_version(seed).is_ok()
            || parse_podman_rootless(seed).is_ok();
        assert!(read, "{text}");
        if let Err(e) = check_all(seed) {
            panic!("{e}: {text}");
        }
    }
}

/// Every node of every seed (a sample of the big ones), made a long string with a control character
/// in it: what is kept and what an error says stay bounded and escaped.
#[test]
fn every_node_of_every_seed_grown_past_its_bound() {
    // Past every bound: names, labels, addresses, errors (1 KiB), escaped.
    let long = serde_json::Value::from(format!("\u{1b}[31m{}", "a".repeat(1100)));
    let controls = serde_json::Value::from("\u{7}".repeat(300));
    // One event line of each kind: they differ in little else.
    let mut kinds = std::collections::HashSet::new();
    let seeds = json_seeds().into_iter().filter(|s| {
        let v: serde_json::Value = serde_json::from_slice(s).expect("JSON");
        v.get("Action").is_none() || kinds.insert((v["Type"].clone(), v["Action"].clone()))
    });
    for (seed, long) in seeds.flat_map(|s| [(s.clone(), long.clone()), (s, controls.clone())]) {
        let v: serde_json::Value = serde_json::from_slice(&seed).expect("JSON");
        // At most ~150 nodes of each: a list of containers repeats itself.
        let nodes = json::count(&v);
        for n in (0..nodes).step_by(1 + nodes / 150) {
            let mut grown = v.clone();
            assert!(json::replace_nth(&mut grown, n, long.clone()));
            let body = serde_json::to_vec(&grown).expect("serialises");
            if let Err(e) = check_all(&body) {
                let text = String::from_utf8_lossy(&seed);
                panic!(
                    "{e}: node {n} of {}…",
                    text.chars().take(200).collect::<String>()
                );
            }
        }
    }
}

/// The engine's streaming answer to `GET /events`, served over an
/// in-memory connection: its head, then `body` in chunks cut by `lengths`.
/// Returns what the stream gave, up to its end.
fn stream(body: &[u8], lengths: &[usize]) -> Vec<StreamItem> {
    match subscribe("200 OK", body, lengths) {
        Ok(items) => items,
        Err(e) => panic!("the subscription failed: {e}"),
    }
}

/// The answer to `GET /events` with `status`: what the stream gave, or why
/// there is none.
fn subscribe(
    status: &str,
    body: &[u8],
    lengths: &[usize],
) -> Result<Vec<StreamItem>, fwd_docker::ApiError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, mut engine) = tokio::io::duplex(64 << 10);
        let status = status.to_string();
        let chunks: Vec<Vec<u8>> = mutate::cut(body, lengths).into_iter().map(<[u8]>::to_vec).collect();
        let serve = tokio::spawn(async move {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if engine.read(&mut b).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(b[0]);
            }
            let mut out = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
            for c in chunks.iter().filter(|c| !c.is_empty()) {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            let _ = engine.write_all(&out).await;
            // Held open until the client is done: the end of the answer ends the stream.
            let _ = engine.read(&mut [0u8; 1]).await;
        });
        let (api, driver) = fwd_docker::connect(client).await.expect("handshake");
        tokio::spawn(driver);
        let items = async {
            let mut events = api.events(None).await?;
            let mut items = Vec::new();
            while let Some(item) = events.next().await? {
                items.push(item);
            }
            Ok(items)
        }
        .await;
        let _ = serve.await;
        items
    })
}

/// What the stream must give for `body`: each complete line parsed (those
/// over the bound skipped), in order.
fn expected(body: &[u8]) -> (Vec<ContainerEvent>, usize, usize) {
    let mut lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    lines.pop(); // Unterminated: never given.
    let (mut events, mut other, mut skipped) = (Vec::new(), 0, 0);
    for line in lines {
        if line.len() > fwd_docker::api::MAX_EVENT_LINE {
            skipped += 1;
            continue;
        }
        match parse_event(line) {
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => other += 1,
            Err(_) => skipped += 1,
        }
    }
    (events, other, skipped)
}

fn check_stream(body: &[u8], lengths: &[usize]) -> Result<(), TestCaseError> {
    let items = stream(body, lengths);
    let (want_events, want_other, want_skipped) = expected(body);
    let mut events = Vec::new();
    let (mut other, mut skipped) = (0, 0);
    for item in items {
        match item {
            StreamItem::Event(ev) => events.push(ev),
            StreamItem::Other => other += 1,
            StreamItem::Skipped(why) => {
                prop_assert!(why.len() <= 1024, "a reason of {} bytes", why.len());
                skipped += 1;
            }
        }
    }
    prop_assert_eq!(events, want_events);
    prop_assert_eq!(other, want_other);
    // Oversize lines that arrive together are reported once.
    prop_assert!(skipped <= want_skipped && (skipped > 0) == (want_skipped > 0));
    Ok(())
}

/// An engine that refuses says why in its own words: kept brief and
/// escaped in the error.
#[test]
fn a_refusal_is_said_briefly() {
    for body in [
        format!(r#"{{"message":"\u001b[31m{}"}}"#, "x".repeat(50_000)).into_bytes(),
        [b"\x1b]0;title\x07".to_vec(), vec![b'y'; 50_000]].concat(),
    ] {
        let e = subscribe("500 Internal Server Error", &body, &[]).expect_err("refused");
        let msg = e.to_string();
        assert!(msg.len() <= 1024, "{} bytes: {}…", msg.len(), &msg[..300]);
        assert!(!msg.chars().any(char::is_control), "{msg:?}");
        assert!(msg.contains("500"), "{msg}");
    }
}

#[test]
fn an_event_line_past_its_bound_is_skipped_and_the_stream_goes_on() {
    let seeds = stream_seeds();
    let lines: Vec<&[u8]> = seeds[0].split_inclusive(|b| *b == b'\n').collect();
    let mut body = lines[0].to_vec();
    let mut long = br#"{"Type":"container","Action":"start","Actor":{"ID":""#.to_vec();
    long.extend(vec![b'a'; fwd_docker::api::MAX_EVENT_LINE]);
    long.extend_from_slice(b"\"}}\n");
    body.extend_from_slice(&long);
    body.extend_from_slice(lines[1]);
    for lengths in [vec![], vec![100, 4096, 1 << 19, 1 << 19]] {
        let items = stream(&body, &lengths);
        assert!(
            matches!(
                items.as_slice(),
                [
                    StreamItem::Event(_),
                    StreamItem::Event(_),
                    StreamItem::Skipped(_)
                ] | [
                    StreamItem::Event(_),
                    StreamItem::Skipped(_),
                    StreamItem::Event(_)
                ]
            ),
            "{items:?}"
        );
    }
}

proptest! {
    #![proptest_config(mutate::config(2048))]

    #[test]
    fn mutated_answers_parse_or_fail_cleanly(body in answer()) {
        check_all(&body)?;
    }


    #[test]
    fn mutated_event_streams_give_every_line_in_order(
        body in prop_oneof![
            mutate::mutated(stream_seeds(), 8, 600),
            // Lines of the captures, each mutated as JSON, in a new order.
            proptest::collection::vec(json::json_mutated(json_seeds(), 2, 600), 0..12)
                .prop_map(|lines| lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect()),
        ],
        lengths in mutate::pieces(),
    ) {
        check_stream(&body, &lengths)?;
    }

    /// Timestamps: whatever the text, no panic; a well-formed one in range
    /// gives the same instant whatever its offset says.
    #[test]
    fn timestamps(
        s in "\\PC{0,40}",
        t in 0i64..4_102_444_800, // up to 2100
        nanos in 0u32..1_000_000_000,
        offset_min in -(23 * 60 + 59)..(23 * 60 + 59i64),
    ) {
        let _ = parse_rfc3339_nanos(&s);
        let local = t + offset_min * 60;
        let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        let sign = if offset_min < 0 { '-' } else { '+' };
        let text = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}{sign}{:02}:{:02}",
            secs / 3600, secs / 60 % 60, secs % 60, offset_min.abs() / 60, offset_min.abs() % 60
        );
        prop_assume!(y >= 1970);
        prop_assert_eq!(parse_rfc3339_nanos(&text), Some(t * 1_000_000_000 + i64::from(nanos)), "{}", text);
    }
}

proptest! {
    #![proptest_config(mutate::config(512))]

    /// One node of an answer made a long string: what is kept and what an
    /// error says stay bounded.
    #[test]
    fn a_node_grown_past_any_bound(
        seed in proptest::sample::select(json_seeds()),
        node in any::<proptest::sample::Index>(),
        len in 1usize..(64 << 10),
        byte in proptest::sample::select(b"a0/ .:".to_vec()),
    ) {
        let mut v: serde_json::Value = serde_json::from_slice(&seed).expect("JSON");
        let long = serde_json::Value::from(String::from_utf8(vec![byte; len]).expect("ASCII"));
        json::apply_json(&mut v, &json::JsonMutation::Replace(node, long));
        check_all(&serde_json::to_vec(&v).expect("serialises"))?;
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
