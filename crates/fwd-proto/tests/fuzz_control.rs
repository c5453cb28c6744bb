//! Fuzzing the control protocol's lines (`decode_request`, `decode_response`):
//! the golden lines of every request and response (tests/golden/
//! protocol.ndjson, and the golden status as a response), each decoded as is,
//! then mutated byte-wise and as JSON. Whatever a peer sends: no panic; what
//! decodes encodes to a line that decodes the same; an error is one line
//! without a control character, fit to send back to the client. The daemon's
//! reading of those lines off the socket (a line's bound, idle clients) is
//! fuzzed in fwdd (`control::fuzz`).

#[path = "../../../tests/fuzz/json.rs"]
mod json;
#[path = "../../../tests/fuzz/mutate.rs"]
mod mutate;

use fwd_proto::{decode_request, decode_response, encode_line, encode_request, DecodeError};
use proptest::prelude::*;

fn golden() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Every golden line, and the golden status as a status response.
fn seeds() -> Vec<Vec<u8>> {
    let lines = std::fs::read(golden().join("protocol.ndjson")).expect("golden");
    let mut seeds: Vec<Vec<u8>> = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden().join("status.json")).expect("golden"))
            .expect("JSON");
    let line = serde_json::json!({"v": 1, "ok": true, "status": status});
    seeds.push(serde_json::to_vec(&line).expect("JSON"));
    seeds
}

fn check_error(e: &DecodeError) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.is_empty());
    prop_assert!(!msg.chars().any(char::is_control), "{msg:?}");
    Ok(())
}

fn check(line: &[u8]) -> Result<(), TestCaseError> {
    match decode_request(line) {
        Ok(req) => prop_assert_eq!(decode_request(&encode_request(&req)), Ok(req)),
        Err(e) => check_error(&e)?,
    }
    match decode_response(line) {
        Ok(resp) => prop_assert_eq!(decode_response(&encode_line(&resp)), Ok(resp)),
        Err(e) => check_error(&e)?,
    }
    Ok(())
}

#[test]
fn every_golden_line_decodes_as_a_request_or_a_response() {
    let seeds = seeds();
    assert!(seeds.len() >= 30);
    for line in &seeds {
        let text = String::from_utf8_lossy(line);
        assert!(
            decode_request(line).is_ok() || decode_response(line).is_ok(),
            "{text}"
        );
        if let Err(e) = check(line) {
            panic!("{e}: {text}");
        }
    }
}

proptest! {
    #![proptest_config(mutate::config(8192))]

    #[test]
    fn mutated_lines_decode_or_fail_cleanly(
        line in prop_oneof![
            mutate::mutated(seeds(), 6, 300),
            json::json_mutated(seeds(), 4, 300),
        ],
    ) {
        check(&line)?;
    }
}
