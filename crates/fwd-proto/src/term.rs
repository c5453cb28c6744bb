//! Text for people on a terminal, shared by `fwdd` and `fwdctl`.
//!
//! Two rules: colour only when the output really is a terminal and the user did not
//! opt out ([`use_colour`]); and strings that come from outside the process
//! (container names, labels, ssh and Docker messages, anything a remote host or the
//! daemon sent) never reach a terminal raw ([`for_terminal`]): a container labelled
//! `com.docker.compose.project=$'x\n\e[31mFAKE'` must not add a line or a colour to
//! `fwdctl status`.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt::Write as _;

/// Whether output may carry ANSI colour: only when the stream is a terminal and
/// `NO_COLOR` is unset or empty (<https://no-color.org>: any non-empty value disables
/// colour). A log file, a pipe, the systemd journal or launchd's log get plain text,
/// so that `grep 'event="link_failed"'` matches.
///
/// `no_color` is the value of the `NO_COLOR` environment variable.
pub fn use_colour(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Whether `c` can change what a terminal shows beyond its own glyph: C0 controls
/// (including ESC, CR, LF, TAB), DEL, C1 controls (U+0080–U+009F), and the bidi
/// embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069).
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` made safe to print on a terminal as (part of) one line: every character that
/// [could move the cursor, start an escape sequence or reorder the text](is_unsafe) is
/// replaced by a visible escape — `\n`, `\r`, `\t`, `\x1b` (other C0 controls and DEL
/// likewise), `\u{85}` (C1), `\u{202e}` (bidi). Everything else, including
/// non-ASCII letters, passes unchanged; without anything to replace, `s` is
/// borrowed.
///
/// Use it for every field from outside the process in human output. JSON output
/// needs no such treatment (serde escapes control characters).
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(use_colour(true, None));
        // no-color.org: an empty value does not disable colour.
        assert!(use_colour(true, Some(OsStr::new(""))));
        for v in ["1", "0", "false", "yes"] {
            assert!(!use_colour(true, Some(OsStr::new(v))), "NO_COLOR={v}");
        }
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new(""))));
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(
            for_terminal("x\n\u{1b}[31mFAKE"),
            "x\\n\\x1b[31mFAKE".to_string()
        );
        assert_eq!(for_terminal("a\rb\tc"), "a\\rb\\tc");
        assert_eq!(for_terminal("\0\u{7}\u{8}\u{7f}"), "\\x00\\x07\\x08\\x7f");
        // C1: CSI (U+009B) is ESC [ on terminals that take 8-bit controls.
        assert_eq!(for_terminal("\u{9b}31m\u{85}"), "\\u{9b}31m\\u{85}");
        // Bidi overrides and isolates would reorder what follows.
        assert_eq!(
            for_terminal("db\u{202e}1-ppa"),
            "db\\u{202e}1-ppa".to_string()
        );
        for c in ('\u{202a}'..='\u{202e}').chain('\u{2066}'..='\u{2069}') {
            assert_eq!(
                for_terminal(&c.to_string()),
                format!("\\u{{{:x}}}", c as u32)
            );
        }
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for s in [
            "",
            "shop/shop-db-1",
            "ssh: connect to host docker1 port 22: Connection refused",
            "localhost:5432 → db (ci-docker)",
            "müller-数据库-😀",
            "a\\nb",
        ] {
            assert!(
                matches!(for_terminal(s), Cow::Borrowed(b) if b == s),
                "{s:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn output_is_always_safe(s in any::<String>()) {
            let out = for_terminal(&s);
            prop_assert!(!out.chars().any(is_unsafe), "{:?}", out);
            if !s.chars().any(is_unsafe) {
                prop_assert_eq!(out.as_ref(), s.as_str());
            }
        }
    }
}
