//! What every fuzz target shares: its seed corpus, read from the repository,
//! and the mutations proptest makes of it (truncate, flip, set, insert,
//! delete, duplicate, splice two seeds, grow a byte into a run past a
//! parser's bound). Each target includes this file with `#[path]`; see
//! tests/fuzz/README.md.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;

/// The repository's root, from a crate's manifest directory.
pub fn repo_root(manifest_dir: &str) -> PathBuf {
    let mut dir = PathBuf::from(manifest_dir);
    while !dir.join("ARCHITECTURE.md").exists() {
        assert!(dir.pop(), "no ARCHITECTURE.md above {manifest_dir}");
    }
    dir
}

/// Every file of `dir` (not recursive, sorted by name): a target's seeds.
pub fn seeds_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file() && p.extension() != Some("md".as_ref()))
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    assert!(!seeds.is_empty(), "seed corpus {} is empty", dir.display());
    seeds
}

/// One change to an input.
#[derive(Clone, Debug)]
pub enum Mutation {
    Truncate(Index),
    FlipBit(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// A copy of a range, put right after it.
    Duplicate(Index, usize),
    /// The input up to a point, then another seed from a point.
    Splice(Index, Index, Index),
    /// The byte at a point repeated into a run: a field grown past its bound.
    Grow(Index, usize),
}

/// Bytes that mean something to one parser or another.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b"\0",
    b"\t",
    b" ",
    b":",
    b";",
    b",",
    b"/",
    b"..",
    b"?",
    b"%00",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b"\\u0000",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"65536",
    b"4294967296",
    b"18446744073709551616",
    b"1e999",
    b"\x1b[31m",
    b"\xff\xfe",
    "é".as_bytes(),
    "\u{202e}".as_bytes(),
    b"chunked",
    b"Upgrade",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
];

fn insertion() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::sample::select(TOKENS).prop_map(<[u8]>::to_vec),
        1 => proptest::collection::vec(any::<u8>(), 1..8),
    ]
}

/// One mutation; a grown run is at most `grow_max` bytes.
pub fn mutation(grow_max: usize) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        3 => (any::<Index>(), insertion()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1usize..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, s, b)| Mutation::Splice(a, s, b)),
        1 => (any::<Index>(), 1usize..=grow_max.max(1)).prop_map(|(i, n)| Mutation::Grow(i, n)),
    ]
}

/// `input` with `m` applied; `seeds` for a splice.
pub fn apply(input: &mut Vec<u8>, m: &Mutation, seeds: &[Vec<u8>]) {
    let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
    let len = input.len();
    match m {
        Mutation::Truncate(i) => input.truncate(at(i, len)),
        Mutation::FlipBit(i, bit) if len > 0 => input[i.index(len)] ^= 1 << bit,
        Mutation::Set(i, b) if len > 0 => input[i.index(len)] = *b,
        Mutation::Insert(i, bytes) => {
            let p = at(i, len);
            input.splice(p..p, bytes.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let p = at(i, len);
            input.drain(p..(p + n).min(len));
        }
        Mutation::Duplicate(i, n) => {
            let p = at(i, len);
            let copy: Vec<u8> = input[p..(p + n).min(len)].to_vec();
            let end = p + copy.len();
            input.splice(end..end, copy);
        }
        Mutation::Splice(a, s, b) => {
            let other = &seeds[s.index(seeds.len())];
            input.truncate(at(a, len));
            input.extend_from_slice(&other[at(b, other.len())..]);
        }
        Mutation::Grow(i, n) => {
            let p = at(i, len);
            let byte = input.get(p).copied().unwrap_or(b'a');
            input.splice(p..p, vec![byte; *n]);
        }
        Mutation::FlipBit(..) | Mutation::Set(..) => {}
    }
}

/// A seed with up to `max_mutations` mutations. A seed as is comes often
/// enough (no mutation) that each one is parsed unchanged too.
pub fn mutated(
    seeds: Vec<Vec<u8>>,
    max_mutations: usize,
    grow_max: usize,
) -> impl Strategy<Value = Vec<u8>> {
    let seeds = Arc::new(seeds);
    (
        any::<Index>(),
        proptest::collection::vec(mutation(grow_max), 0..=max_mutations),
    )
        .prop_map(move |(seed, ms)| {
            let mut input = seeds[seed.index(seeds.len())].clone();
            for m in &ms {
                apply(&mut input, m, &seeds);
            }
            input
        })
}

/// Split points for feeding an input in pieces: a list of piece lengths
/// (the rest in one last piece).
pub fn pieces() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(
        prop_oneof![3 => 1usize..8, 2 => 8usize..256, 1 => 256usize..8192],
        0..12,
    )
}

/// `input` cut by `lengths` into consecutive slices covering it.
pub fn cut<'a>(input: &'a [u8], lengths: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = input;
    for &n in lengths {
        let n = n.min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out.push(rest);
    out
}

/// A target's configuration: `ci` cases unless `PROPTEST_CASES` says
/// otherwise (to run longer locally), sized so that every target together
/// runs in about a minute on CI's two cores in a debug build; a failure is
/// kept next to the target's source (`*.proptest-regressions`, committed)
/// and tried first on every later run.
pub fn config(ci: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ci),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}
