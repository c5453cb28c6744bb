//! Fuzzing the handover document (`Document::parse`): the v1 fixture every
//! later image must still parse (tests/handover-v1.json, written by the
//! first image) and the same document as this image writes it, each parsed
//! as is, then mutated byte-wise and as JSON. A new image reads it before it
//! owns anything: whatever it holds, no panic; a document that parses names
//! every descriptor once and none of them stdio, converts back into the
//! daemon's types (container IDs validated, ports of exposures not 0, known
//! routes) and writes out to itself; one that does not is refused with one
//! line that says why.

#[path = "../../../../tests/fuzz/json.rs"]
mod json;
#[path = "../../../../tests/fuzz/mutate.rs"]
mod mutate;

use super::document::{claim, container, expose_spec, route, Document, DocumentError};
use proptest::prelude::*;

const V1: &[u8] = include_bytes!("tests/handover-v1.json");

fn seeds() -> Vec<Vec<u8>> {
    let doc = Document::parse(V1).expect("the v1 fixture parses");
    vec![V1.to_vec(), doc.to_json()]
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Document::parse(bytes) {
        Ok(doc) => {
            let fds = doc.fds();
            let mut seen = std::collections::BTreeSet::new();
            for fd in &fds {
                prop_assert!(*fd > 2, "fd {} handed over", fd);
                prop_assert!(seen.insert(*fd), "fd {} named twice", fd);
            }
            for h in &doc.hosts {
                prop_assert!(route(&h.route).is_ok());
                for c in &h.containers {
                    prop_assert!(container(c).is_ok());
                }
                for e in &h.exposures {
                    let spec = expose_spec(e);
                    prop_assert!(spec
                        .as_ref()
                        .is_ok_and(|s| s.remote_port != 0 && s.target.port() != 0));
                }
            }
            for f in &doc.forwards {
                prop_assert!(claim(f).is_ok());
            }
            prop_assert_eq!(Document::parse(&doc.to_json()), Ok(doc));
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(!msg.contains('\n'), "{msg:?}");
            if let DocumentError::Version { got, .. } = e {
                prop_assert!(!super::ACCEPTED_VERSIONS.contains(&got));
            }
        }
    }
    Ok(())
}

#[test]
fn the_seeds_parse_and_write_out_to_themselves() {
    for seed in seeds() {
        if let Err(e) = check(&seed) {
            panic!("{e}");
        }
    }
}

proptest! {
    #![proptest_config(mutate::config(4096))]

    #[test]
    fn mutated_documents_are_taken_whole_or_refused(
        doc in prop_oneof![
            mutate::mutated(seeds(), 6, 300),
            json::json_mutated(seeds(), 4, 300),
        ],
    ) {
        check(&doc)?;
    }
}
