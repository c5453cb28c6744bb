//! Fuzzing what the discovery command prints (`fwd_core::discovery`): the
//! real script's output on this project's sandbox (tests/fuzz/corpus/
//! discovery), parsed as is, then mutated. The remote side chooses a path
//! that goes into a mux request: whatever it prints, `parse` must keep only
//! absolute, bounded paths free of control characters from the lines it
//! reads (at most 16), and `choose` must take a usable socket (the first
//! `usable` gives) or say why not, without a control character in its message.

#[path = "../../../tests/fuzz/mutate.rs"]
mod mutate;

use fwd_core::discovery::{choose, parse, usable, Candidate, Source, State};
use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let root = mutate::repo_root(env!("CARGO_MANIFEST_DIR"));
    mutate::seeds_in(&root.join("tests/fuzz/corpus/discovery"))
}

/// A candidate as the script prints it.
fn line(c: &Candidate) -> String {
    let source = match c.source {
        Source::Env => "env",
        Source::Context => "context",
        Source::RootlessDocker => "rootless-docker",
        Source::RootlessPodman => "rootless-podman",
        Source::Podman => "podman",
        Source::Docker => "docker",
    };
    let state = match c.state {
        State::Socket => "socket",
        State::NoAccess => "noaccess",
        State::NotSocket => "notsocket",
        State::Missing => "missing",
        State::Other => "other",
    };
    format!("{source}\t{}\t{state}", c.path)
}

#[test]
fn every_seed_parses_whole() {
    for seed in corpus() {
        let text = String::from_utf8(seed).expect("the script prints text");
        let cands = parse(&text);
        assert_eq!(cands.len(), text.lines().count(), "{text}");
        let back: Vec<String> = cands.iter().map(line).collect();
        assert_eq!(back, text.lines().collect::<Vec<_>>());
    }
}

fn check(output: &str) -> Result<(), TestCaseError> {
    let cands = parse(output);
    let read: Vec<&str> = output.lines().take(16).collect();
    prop_assert!(cands.len() <= 16);
    // Each candidate is one of the lines read, in their order, and valid.
    let mut lines = read.iter();
    for c in &cands {
        let l = line(c);
        prop_assert!(lines.any(|r| *r == l), "{l:?} not a line read, in order");
        prop_assert!(c.path.len() <= 1023 && !c.path.chars().any(char::is_control));
        prop_assert!(c.state == State::Other || c.path.starts_with('/'), "{c:?}");
    }
    // Lines past the 16th are never read.
    prop_assert_eq!(&parse(&read.join("\n")), &cands);
    // What parses prints back to what parses the same.
    let printed: Vec<String> = cands.iter().map(line).collect();
    prop_assert_eq!(&parse(&printed.join("\n")), &cands);
    // What is tried: sockets only, each path once; the first is the one
    // chosen, and there is none when the choice is an error.
    let usable = usable(&cands);
    prop_assert!(usable.iter().all(|c| c.state == State::Socket));
    for (i, c) in usable.iter().enumerate() {
        prop_assert!(usable[..i].iter().all(|o| o.path != c.path), "a path twice");
        prop_assert!(cands.iter().any(|o| std::ptr::eq(o, *c)));
    }
    let chosen = choose(&cands);
    prop_assert_eq!(chosen.as_ref().ok(), usable.first());
    if let Err(why) = chosen {
        prop_assert!(!why.chars().any(char::is_control), "{why:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(mutate::config(2048))]

    #[test]
    fn mutated_outputs_give_only_checked_candidates(
        output in mutate::mutated(corpus(), 8, 2048),
    ) {
        // As the daemon reads it: at most 4 KiB, lossily decoded.
        check(&String::from_utf8_lossy(&output))?;
    }

    /// Lines made of the script's fields and hostile ones, in any order.
    #[test]
    fn any_lines_give_only_checked_candidates(lines in proptest::collection::vec(
        (
            prop_oneof![
                proptest::sample::select(vec![
                    "env", "context", "rootless-docker", "rootless-podman", "podman", "docker",
                ]).prop_map(String::from),
                "\\PC{0,12}",
            ],
            prop_oneof![
                "/[a-z/._-]{0,40}",
                "(tcp|ssh|unix|npipe)://[a-z0-9.:/]{0,30}",
                "[/a-z]{0,8}[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}][a-z/]{0,8}",
                Just("/".repeat(1024)),
                "\\PC{0,40}",
            ],
            prop_oneof![
                proptest::sample::select(vec![
                    "socket", "noaccess", "notsocket", "missing", "other",
                ]).prop_map(String::from),
                "\\PC{0,10}",
            ],
            "(\t[a-z]{0,4})?",
        ),
        0..24,
    )) {
        let output: String = lines
            .iter()
            .map(|(s, p, st, extra)| format!("{s}\t{p}\t{st}{extra}\n"))
            .collect();
        check(&output)?;
    }
}
