//! Container names in hosts files (issue #31): what fwdd writes to its own
//! hosts-format file in the runtime directory and, when configured, as a
//! marked block inside the system hosts file. Pure: fwdd's `hostsfile`
//! module reads and writes the files.
//!
//! What must hold for the system hosts file:
//! - No byte outside fwd's block changes ([`splice`]), with one documented
//!   exception: a newline is added after a last line that has none before a
//!   block is appended after it.
//! - A block left by a fwdd that crashed is replaced where it is, never
//!   duplicated; every fwd block found is removed and one (or none) is put
//!   back.
//! - Only RFC 1123 host names reach a file ([`is_valid_host_name`]): a name
//!   comes from a remote engine, and `x\n1.2.3.4 github.com` must never
//!   become a line of its own. [`render_block`] checks again, though the
//!   planner already has.
//! - A name already in the system hosts file outside fwd's block is never
//!   shadowed: [`names_outside_block`] gives the planner those names.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// The first line of fwd's block in a system hosts file.
pub const BEGIN_MARK: &str = "# >>> fwd names: written by fwdd, edits here are lost >>>";
/// The last line of fwd's block in a system hosts file.
pub const END_MARK: &str = "# <<< fwd names <<<";

/// A line is a marker when it starts with these (after its trailing
/// whitespace is trimmed, so a CRLF file's markers count): the text after
/// them may change between versions and a block must still be found.
const BEGIN_PREFIX: &str = "# >>> fwd names";
const END_PREFIX: &str = "# <<< fwd names";

/// The longest host name (RFC 1123 §2.1, within DNS's 255-octet limit).
const NAME_MAX: usize = 253;
/// The longest label of a host name.
const LABEL_MAX: usize = 63;

/// One line of a hosts file: an address and the names that resolve to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub address: IpAddr,
    pub names: Vec<String>,
}

/// Whether `name` is an RFC 1123 host name fit for a hosts file: 1 to 253
/// characters; labels of 1 to 63 ASCII letters, digits and `-`, separated
/// by single dots, none starting or ending with `-`; no trailing dot; and
/// nothing a resolver could read as an address: not an IP address, and the
/// last label neither all digits (`1.2.3.4`, `10.1`) nor a hex number
/// (`1.0x1`, which `inet_aton` reads as 1.0.0.1). Case does not matter.
pub fn is_valid_host_name(name: &str) -> bool {
    if name.is_empty() || name.len() > NAME_MAX || name.parse::<IpAddr>().is_ok() {
        return false;
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= LABEL_MAX
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !name.split('.').all(label_ok) {
        return false;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    !reads_as_number(last)
}

/// Whether a label is a number to `inet_aton`: decimal (or octal) digits, or
/// `0x` and hex digits.
fn reads_as_number(label: &str) -> bool {
    if label.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let bytes = label.as_bytes();
    bytes.len() >= 2
        && bytes[0] == b'0'
        && (bytes[1] == b'x' || bytes[1] == b'X')
        && bytes[2..].iter().all(u8::is_ascii_hexdigit)
}

/// `name` in lowercase if it is a valid host name ([`is_valid_host_name`]),
/// the form names are compared and written in.
pub fn normalise(name: &str) -> Option<String> {
    is_valid_host_name(name).then(|| name.to_ascii_lowercase())
}

/// fwd's block for the system hosts file: [`BEGIN_MARK`], one line per
/// entry (`ADDRESS<TAB>name name…`), [`END_MARK`], each ending in `\n`.
/// Entries and names keep the order given; names are written lowercase; a
/// name that is not valid is left out, and so is an entry left without a
/// name. With no entry it is the two markers alone.
pub fn render_block(entries: &[Entry]) -> String {
    let mut out = String::new();
    out.push_str(BEGIN_MARK);
    out.push('\n');
    push_entry_lines(&mut out, entries);
    out.push_str(END_MARK);
    out.push('\n');
    out
}

/// The first line of fwdd's own hosts file ([`render_file`]).
pub const FILE_HEADER: &str =
    "# Names of remote containers, written by fwdd; rewritten on every change.";

/// fwdd's own hosts-format file in its runtime directory: [`FILE_HEADER`],
/// then the entries' lines as [`render_block`] writes them, without the
/// markers: fwdd owns the whole file, so there is nothing to mark off.
pub fn render_file(entries: &[Entry]) -> String {
    let mut out = String::new();
    out.push_str(FILE_HEADER);
    out.push('\n');
    push_entry_lines(&mut out, entries);
    out
}

fn push_entry_lines(out: &mut String, entries: &[Entry]) {
    for entry in entries {
        let names: Vec<String> = entry.names.iter().filter_map(|n| normalise(n)).collect();
        if names.is_empty() {
            continue;
        }
        out.push_str(&entry.address.to_string());
        out.push('\t');
        out.push_str(&names.join(" "));
        out.push('\n');
    }
}

/// A piece of a hosts file, in order; concatenated they are the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece<'a> {
    /// Lines that are not fwd's.
    Outside(&'a str),
    /// A block: a BEGIN line, lines without a marker, an END line.
    Block(&'a str),
    /// A BEGIN line with no END before the next BEGIN or the end of the
    /// file. Only this line is fwd's: what follows may be the user's.
    LoneBegin(&'a str),
}

fn is_begin(line: &str) -> bool {
    line.trim_end().starts_with(BEGIN_PREFIX)
}

fn is_end(line: &str) -> bool {
    line.trim_end().starts_with(END_PREFIX)
}

/// `text` in pieces. Lines end at `\n` (a `\r` before it stays part of the
/// line); the last line may have no `\n`.
fn pieces(text: &str) -> Vec<Piece<'_>> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // Byte offset of each line's start, and of the end.
    let mut starts = Vec::with_capacity(lines.len() + 1);
    let mut at = 0;
    for line in &lines {
        starts.push(at);
        at += line.len();
    }
    starts.push(at);

    let mut out = Vec::new();
    let mut outside_from = 0;
    let mut i = 0;
    while i < lines.len() {
        if !is_begin(lines[i]) {
            i += 1;
            continue;
        }
        if starts[i] > outside_from {
            out.push(Piece::Outside(&text[outside_from..starts[i]]));
        }
        let close = lines[i + 1..]
            .iter()
            .position(|l| is_begin(l) || is_end(l))
            .map(|k| i + 1 + k)
            .filter(|&k| is_end(lines[k]));
        match close {
            Some(end) => {
                out.push(Piece::Block(&text[starts[i]..starts[end + 1]]));
                i = end + 1;
            }
            None => {
                out.push(Piece::LoneBegin(&text[starts[i]..starts[i + 1]]));
                i += 1;
            }
        }
        outside_from = starts[i];
    }
    if text.len() > outside_from {
        out.push(Piece::Outside(&text[outside_from..]));
    }
    out
}

/// `existing` (a system hosts file) with every fwd block removed and
/// `block` (from [`render_block`]), if any, put where the first block was,
/// or else at the end.
///
/// - A block is a BEGIN marker line through the next END marker line,
///   inclusive, with no other marker between. Lines inside are fwd's and
///   are lost.
/// - A BEGIN line without its END (another BEGIN or the end of the file
///   comes first) is dropped alone: every line after it is kept, since it
///   may be the user's. An END line without a BEGIN is kept as it is.
/// - Every other byte is kept exactly: CRLF line ends, tabs, comments, a
///   last line without `\n`. The one byte added outside a block: when the
///   block is appended after a last line without `\n`, a `\n` ends that
///   line first. So a file that ends in `\n` (or is empty) comes back
///   byte-identical from `splice(&splice(f, Some(b)), None)`.
pub fn splice(existing: &str, block: Option<&str>) -> String {
    let mut out = String::with_capacity(existing.len() + block.map_or(0, str::len));
    let mut placed = block.is_none();
    for piece in pieces(existing) {
        match piece {
            Piece::Outside(text) => out.push_str(text),
            Piece::Block(_) => {
                if !placed {
                    out.push_str(block.unwrap_or_default());
                    placed = true;
                }
            }
            Piece::LoneBegin(_) => {}
        }
    }
    if let (false, Some(block)) = (placed, block) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(block);
    }
    out
}

/// The names (lowercase) on every line of `existing` outside fwd's blocks:
/// the fields after the address, `#` comments left out. A line's names count
/// whether or not its address parses, and whether or not they are valid host
/// names: a name the system file holds in any form is never shadowed.
pub fn names_outside_block(existing: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for piece in pieces(existing) {
        let Piece::Outside(text) = piece else {
            continue;
        };
        for line in text.split('\n') {
            let data = line.split('#').next().unwrap_or_default();
            names.extend(
                data.split_ascii_whitespace()
                    .skip(1)
                    .map(str::to_ascii_lowercase),
            );
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const DEBIAN: &str = "127.0.0.1\tlocalhost\n127.0.1.1\trunner\n\n\
        # The following lines are desirable for IPv6 capable hosts\n\
        ::1     localhost ip6-localhost ip6-loopback\n\
        ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n";

    fn entry(last: u8, names: &[&str]) -> Entry {
        Entry {
            address: IpAddr::V4(Ipv4Addr::new(127, 77, 0, last)),
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn block() -> String {
        render_block(&[entry(5, &["db", "db.shop"])])
    }

    #[test]
    fn valid_names() {
        for name in [
            "db",
            "db.shop",
            "DB.Shop",
            "a",
            "a-b",
            "1db",
            "web-1.shop-2",
            "x1.2y",
            "0xz",
        ] {
            assert!(is_valid_host_name(name), "{name:?}");
        }
        let longest_label = "a".repeat(63);
        assert!(is_valid_host_name(&longest_label));
        let longest = [
            &"a".repeat(63)[..],
            &"b".repeat(63),
            &"c".repeat(63),
            &"d".repeat(61),
        ]
        .join(".");
        assert_eq!(longest.len(), 253);
        assert!(is_valid_host_name(&longest));
        assert!(!is_valid_host_name(&format!("{longest}e")));
    }

    #[test]
    fn invalid_names() {
        for name in [
            "",
            "x\n1.2.3.4 github.com",
            "a b",
            "a\tb",
            "-x",
            "x-",
            "a.-x",
            "1.2.3.4",
            "10.1",
            "db.123",
            "1.0x1",
            "0x7f",
            "::1",
            "db.",
            ".db",
            "a..b",
            "db_1",
            "db#x",
            "dé",
            "d\u{202e}b",
            "ｄｂ",
            "a\r",
            "a\0",
        ] {
            assert!(!is_valid_host_name(name), "{name:?}");
            assert_eq!(normalise(name), None, "{name:?}");
        }
        assert!(!is_valid_host_name(&"a".repeat(64)));
        assert!(!is_valid_host_name(&format!("x.{}", "a".repeat(64))));
    }

    #[test]
    fn normalise_lowercases_a_valid_name() {
        assert_eq!(normalise("DB.Shop"), Some("db.shop".to_string()));
        assert_eq!(normalise("db"), Some("db".to_string()));
    }

    #[test]
    fn a_block_is_the_markers_around_one_line_per_entry() {
        let v6 = Entry {
            address: IpAddr::V6(Ipv6Addr::LOCALHOST),
            names: vec!["Cache".to_string()],
        };
        let text = render_block(&[entry(5, &["db", "db.shop"]), v6, entry(6, &["web"])]);
        assert_eq!(
            text,
            format!(
                "{BEGIN_MARK}\n127.77.0.5\tdb db.shop\n::1\tcache\n127.77.0.6\tweb\n{END_MARK}\n"
            )
        );
        assert_eq!(render_block(&[]), format!("{BEGIN_MARK}\n{END_MARK}\n"));
    }

    #[test]
    fn hostile_names_never_make_a_line() {
        let hostile = [
            "x\n1.2.3.4 github.com",
            "a b",
            "-x",
            "1.2.3.4",
            &"a".repeat(64),
            "dé",
            "# comment",
            "x\r\n1.2.3.4 github.com",
        ];
        let text = render_block(&[entry(5, &hostile), entry(6, &["ok", hostile[0]])]);
        assert_eq!(text, format!("{BEGIN_MARK}\n127.77.0.6\tok\n{END_MARK}\n"));
        assert!(!text.contains("github"));
        let file = render_file(&[entry(5, &hostile)]);
        assert_eq!(file, format!("{FILE_HEADER}\n"));
    }

    #[test]
    fn the_own_file_is_a_header_then_the_lines() {
        let file = render_file(&[entry(5, &["db", "db.shop"])]);
        assert_eq!(file, format!("{FILE_HEADER}\n127.77.0.5\tdb db.shop\n"));
        assert!(FILE_HEADER.starts_with('#'));
        assert!(!is_begin(FILE_HEADER) && !is_end(FILE_HEADER));
    }

    #[test]
    fn a_block_is_appended_and_removed_without_a_trace() {
        for original in ["", "\n", DEBIAN, "127.0.0.1 localhost\r\n::1 localhost\r\n"] {
            let with = splice(original, Some(&block()));
            assert!(with.starts_with(original), "{with:?}");
            assert_eq!(&with[original.len()..], block());
            assert_eq!(splice(&with, None), original);
        }
    }

    #[test]
    fn a_last_line_without_newline_gets_one_before_an_appended_block() {
        let with = splice("127.0.0.1 localhost", Some(&block()));
        assert_eq!(with, format!("127.0.0.1 localhost\n{}", block()));
        assert_eq!(splice(&with, None), "127.0.0.1 localhost\n");
        // Without a block to append, nothing is added.
        assert_eq!(splice("127.0.0.1 localhost", None), "127.0.0.1 localhost");
    }

    #[test]
    fn an_old_block_is_replaced_where_it_is() {
        let old = render_block(&[entry(9, &["old"])]);
        let existing = format!("127.0.0.1 localhost\n{old}::1 localhost\n");
        let new = splice(&existing, Some(&block()));
        assert_eq!(
            new,
            format!("127.0.0.1 localhost\n{}::1 localhost\n", block())
        );
        assert_eq!(splice(&new, Some(&block())), new);
    }

    #[test]
    fn two_old_blocks_become_one_where_the_first_was() {
        let old = render_block(&[entry(9, &["old"])]);
        let existing = format!("a 1\n{old}b 2\n{old}c 3\n");
        let new = splice(&existing, Some(&block()));
        assert_eq!(new, format!("a 1\n{}b 2\nc 3\n", block()));
        assert_eq!(splice(&existing, None), "a 1\nb 2\nc 3\n");
    }

    #[test]
    fn markers_are_found_in_a_crlf_file_and_by_their_prefix() {
        let existing = "a 1\r\n# >>> fwd names (an older fwd)  \r\n127.77.0.1\told\r\n# <<< fwd names <<<\r\nb 2\r\n";
        assert_eq!(splice(existing, None), "a 1\r\nb 2\r\n");
        assert_eq!(
            splice(existing, Some(&block())),
            format!("a 1\r\n{}b 2\r\n", block())
        );
    }

    #[test]
    fn a_block_whose_end_has_no_newline_is_still_a_block() {
        let existing = format!("a 1\n{BEGIN_MARK}\n127.77.0.1\told\n{END_MARK}");
        assert_eq!(splice(&existing, None), "a 1\n");
        assert_eq!(
            splice(&existing, Some(&block())),
            format!("a 1\n{}", block())
        );
    }

    #[test]
    fn a_begin_without_end_loses_only_its_own_line() {
        let existing = format!("a 1\n{BEGIN_MARK}\nuser 2\nuser 3");
        assert_eq!(splice(&existing, None), "a 1\nuser 2\nuser 3");
        assert_eq!(
            splice(&existing, Some(&block())),
            format!("a 1\nuser 2\nuser 3\n{}", block())
        );
        // A BEGIN before another block's BEGIN: the lines between are kept.
        let old = render_block(&[entry(9, &["old"])]);
        let existing = format!("{BEGIN_MARK}\nuser 2\n{old}c 3\n");
        assert_eq!(
            splice(&existing, Some(&block())),
            format!("user 2\n{}c 3\n", block())
        );
    }

    #[test]
    fn a_stray_end_is_kept() {
        let existing = format!("a 1\n{END_MARK}\nb 2\n");
        assert_eq!(splice(&existing, None), existing);
        assert_eq!(
            splice(&existing, Some(&block())),
            format!("{existing}{}", block())
        );
    }

    #[test]
    fn bytes_outside_the_block_are_kept_exactly() {
        let existing = format!(
            "# comment \t with tabs\r\n127.0.0.1\t localhost  # trailing\n\n{}\t\n \nlast",
            render_block(&[entry(1, &["x"])])
        );
        let new = splice(&existing, Some(&block()));
        assert_eq!(
            new,
            format!(
                "# comment \t with tabs\r\n127.0.0.1\t localhost  # trailing\n\n{}\t\n \nlast",
                block()
            )
        );
    }

    #[test]
    fn names_outside_the_block() {
        let existing = format!(
            "{DEBIAN}10.0.0.1 GitHub.com gh # a comment with words\n\
             #10.0.0.2 commented-out\n\
             {}\
             garbage-address Shadow\r\n",
            render_block(&[entry(5, &["db", "db.shop"])])
        );
        let names = names_outside_block(&existing);
        let want: BTreeSet<String> = [
            "localhost",
            "runner",
            "ip6-localhost",
            "ip6-loopback",
            "ip6-allnodes",
            "ip6-allrouters",
            "github.com",
            "gh",
            "shadow",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn a_lone_begin_hides_no_user_name() {
        let existing = format!("{BEGIN_MARK}\n10.0.0.1 mine\n");
        assert!(names_outside_block(&existing).contains("mine"));
    }
}
