//! Fuzzing the hosts-file splice (`fwd_core::hostsfile`): system hosts files
//! (tests/fuzz/corpus/hostsfile: Debian's and a Docker container's as they
//! are installed, and the same with fwd blocks, whole, doubled, cut short),
//! as they are, then mutated. Every byte outside fwd's blocks is kept (a
//! reading of the blocks written here, line by line, says which), a splice
//! leaves exactly one block or none, a second splice changes nothing, and
//! the names outside the block are those of the lines kept. And whatever a
//! remote engine calls a container, a rendered block holds only lines of an
//! address and valid names.

#[path = "../../../tests/fuzz/mutate.rs"]
mod mutate;

use std::net::{IpAddr, Ipv4Addr};

use fwd_core::hostsfile::{
    is_valid_host_name, names_outside_block, render_block, render_file, splice, Entry, BEGIN_MARK,
    END_MARK,
};
use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let root = mutate::repo_root(env!("CARGO_MANIFEST_DIR"));
    mutate::seeds_in(&root.join("tests/fuzz/corpus/hostsfile"))
}

fn is_begin(line: &str) -> bool {
    line.trim_end().starts_with("# >>> fwd names")
}

fn is_end(line: &str) -> bool {
    line.trim_end().starts_with("# <<< fwd names")
}

/// What a splice keeps of `text`, and how many whole blocks it held: lines
/// after a BEGIN are held back until an END drops them with it; another
/// BEGIN or the end of the text gives them back (the BEGIN alone is lost).
fn kept_outside(text: &str) -> (String, usize) {
    let mut kept = String::new();
    let mut held: Option<String> = None;
    let mut blocks = 0;
    for line in text.split_inclusive('\n') {
        if is_begin(line) {
            if let Some(lines) = held.take() {
                kept.push_str(&lines);
            }
            held = Some(String::new());
        } else if is_end(line) && held.is_some() {
            held = None;
            blocks += 1;
        } else if let Some(lines) = held.as_mut() {
            lines.push_str(line);
        } else {
            kept.push_str(line);
        }
    }
    if let Some(lines) = held {
        kept.push_str(&lines);
    }
    (kept, blocks)
}

fn block() -> String {
    render_block(&[
        Entry {
            address: IpAddr::V4(Ipv4Addr::new(127, 77, 0, 5)),
            names: vec!["fwd-db".into(), "fwd-db.shop".into()],
        },
        Entry {
            address: "::1".parse().expect("an address"),
            names: vec!["fwd-cache".into()],
        },
    ])
}

#[test]
fn every_seed_splices_back_to_its_lines() {
    for seed in corpus() {
        let text = String::from_utf8(seed).expect("text");
        let (kept, _) = kept_outside(&text);
        assert_eq!(splice(&text, None), kept, "{text:?}");
        assert!(names_outside_block(&text).contains("localhost"), "{text:?}");
    }
}

fn check_splice(text: &str) -> Result<(), TestCaseError> {
    let block = block();
    let (kept, _) = kept_outside(text);

    let removed = splice(text, None);
    prop_assert_eq!(&removed, &kept);
    prop_assert_eq!(kept_outside(&removed), (kept.clone(), 0));
    prop_assert!(!removed.split_inclusive('\n').any(is_begin));
    prop_assert_eq!(splice(&removed, None), removed.clone());

    let with = splice(text, Some(&block));
    let (kept_of_with, blocks) = kept_outside(&with);
    prop_assert_eq!(blocks, 1, "{:?}", with);
    prop_assert_eq!(
        with.split_inclusive('\n').filter(|l| is_begin(l)).count(),
        1
    );
    prop_assert_eq!(with.matches(block.as_str()).count(), 1);
    // The one byte allowed outside the block: a newline ending a last line
    // that had none, when the block is appended after it.
    let appended_newline = format!("{kept}\n");
    prop_assert!(
        kept_of_with == kept || (!kept.ends_with('\n') && kept_of_with == appended_newline),
        "{:?} from {:?}",
        with,
        text
    );
    prop_assert!(with.len() == kept_of_with.len() + block.len());
    prop_assert_eq!(splice(&with, Some(&block)), with.clone());
    prop_assert_eq!(splice(&with, None), kept_of_with.clone());
    if text.is_empty() || text.ends_with('\n') {
        prop_assert_eq!(&kept_of_with, &kept);
    }

    let names = names_outside_block(text);
    prop_assert_eq!(&names, &names_outside_block(&kept));
    prop_assert_eq!(&names, &names_outside_block(&with));
    prop_assert!(names.iter().all(|n| *n == n.to_ascii_lowercase()));
    Ok(())
}

/// Every line of a rendered block is a marker or an address, a tab and
/// valid names separated by single spaces.
fn check_rendered(names: Vec<String>) -> Result<(), TestCaseError> {
    let entries = [
        Entry {
            address: IpAddr::V4(Ipv4Addr::new(127, 77, 0, 9)),
            names: names.clone(),
        },
        Entry {
            address: "fd00::9".parse().expect("an address"),
            names,
        },
    ];
    let block = render_block(&entries);
    let lines: Vec<&str> = block.split_inclusive('\n').collect();
    prop_assert!(lines.len() >= 2 && lines.iter().all(|l| l.ends_with('\n')));
    prop_assert_eq!(lines[0], format!("{BEGIN_MARK}\n"));
    prop_assert_eq!(lines[lines.len() - 1], format!("{END_MARK}\n"));
    let file = render_file(&entries);
    let body = &lines[1..lines.len() - 1];
    prop_assert_eq!(file.lines().skip(1).count(), body.len());
    for line in body.iter().chain(
        file.split_inclusive('\n')
            .skip(1)
            .collect::<Vec<_>>()
            .iter(),
    ) {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let Some((address, names)) = line.split_once('\t') else {
            return Err(TestCaseError::fail(format!("no tab in {line:?}")));
        };
        prop_assert!(address.parse::<IpAddr>().is_ok(), "{:?}", line);
        prop_assert!(!names.is_empty());
        for name in names.split(' ') {
            prop_assert!(is_valid_host_name(name), "{:?}", line);
            prop_assert_eq!(name, name.to_ascii_lowercase());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(mutate::config(4096))]

    #[test]
    fn mutated_hosts_files(input in mutate::mutated(corpus(), 8, 300)) {
        check_splice(&String::from_utf8_lossy(&input))?;
    }

    #[test]
    fn names_from_mutated_text_render_only_valid_lines(
        input in mutate::mutated(corpus(), 8, 300),
        cuts in mutate::pieces(),
    ) {
        // Names cut anywhere out of hosts files: with newlines, tabs,
        // addresses and comments inside, as a hostile engine might send.
        let text = String::from_utf8_lossy(&input);
        let names: Vec<String> = mutate::cut(text.as_bytes(), &cuts)
            .into_iter()
            .map(|piece| String::from_utf8_lossy(piece).into_owned())
            .chain(text.split_ascii_whitespace().map(str::to_string))
            .collect();
        check_rendered(names)?;
    }
}
