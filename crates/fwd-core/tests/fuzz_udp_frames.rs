//! Fuzzing the UDP frames (`fwd_core::udp::frame`): what the relay at the
//! far end sends fwdd (tests/fuzz/corpus/udp: written by hand from the
//! format), decoded whole and cut into reads at random points, then
//! mutated. However the stream is cut the frames are the same; a frame
//! that decodes encodes back to the same bytes; nothing is buffered past
//! one frame; errors are short and plain.

#[path = "../../../tests/fuzz/mutate.rs"]
mod mutate;

use fwd_core::udp::{Decoder, Frame, FrameError, DATAGRAM_MAX};
use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let root = mutate::repo_root(env!("CARGO_MANIFEST_DIR"));
    mutate::seeds_in(&root.join("tests/fuzz/corpus/udp"))
}

#[test]
fn every_seed_decodes_whole() {
    for seed in corpus() {
        let mut d = Decoder::default();
        let frames = d.push(&seed).expect("a seed decodes");
        assert!(!frames.is_empty() && !d.is_mid_frame());
    }
}

/// Decodes `input` read in `pieces`; the frames, and the error if any.
fn decode(input: &[u8], pieces: &[usize]) -> (Vec<Frame>, Option<FrameError>) {
    let mut d = Decoder::default();
    let mut frames = Vec::new();
    for piece in mutate::cut(input, pieces) {
        match d.push(piece) {
            Ok(f) => frames.extend(f),
            Err(e) => return (frames, Some(e)),
        }
    }
    (frames, None)
}

proptest! {
    #![proptest_config(mutate::config(8192))]

    #[test]
    fn mutated_streams(input in mutate::mutated(corpus(), 6, 70_000), pieces in mutate::pieces()) {
        let (whole, whole_err) = decode(&input, &[input.len().max(1)]);
        let (cut, cut_err) = decode(&input, &pieces);
        // Frames before an error are the same however the input is cut.
        let n = whole.len().min(cut.len());
        prop_assert_eq!(&whole[..n], &cut[..n]);
        prop_assert_eq!(whole_err.is_some(), cut_err.is_some());
        if whole_err.is_none() {
            prop_assert_eq!(&whole, &cut);
        }
        if let Some(e) = whole_err {
            let text = e.to_string();
            prop_assert!(text.len() < 100 && !text.chars().any(char::is_control), "{text:?}");
        }
        for f in &whole {
            if let Frame::Data { datagram, .. } = f {
                prop_assert!(datagram.len() <= DATAGRAM_MAX);
            }
            let mut bytes = Vec::new();
            f.encode(&mut bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut again = Decoder::default();
            prop_assert_eq!(again.push(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?, vec![f.clone()]);
        }
    }
}
