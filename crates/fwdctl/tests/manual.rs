//! The completion scripts and manual pages the built `fwdctl` makes, used as
//! a shell and `man` use them: bash runs the script's completion function
//! with the words of a command line, and man-db renders the pages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fwdctl(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_fwdctl"))
        .args(args)
        .env_remove("FWD_SOCKET")
        .output()
        .expect("run fwdctl");
    assert!(
        out.status.success(),
        "fwdctl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn script(shell: &str) -> String {
    String::from_utf8(fwdctl(&["completions", shell]).stdout).expect("utf-8 script")
}

/// A program the test needs. Missing: in CI (CI=true) the test fails, since
/// scripts/install-deps.sh installs it; elsewhere the test is skipped.
fn require(program: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
    {
        return Some(found);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !in_ci,
        "{program} is missing but CI=true: install the Debian package `{package}` (scripts/install-deps.sh)"
    );
    eprintln!("SKIPPED: {program} not found (apt-get install {package})");
    None
}

/// What bash offers for the command line `words`, the last word being the
/// one completed: the script is sourced, and the function it registered
/// for fwdctl (`complete -p fwdctl`) runs as bash runs it on TAB.
fn bash_offers(script_path: &Path, words: &[&str]) -> Vec<String> {
    let driver = r#"
source "$1"; shift
spec=$(complete -p fwdctl) || exit 3
function=${spec#*-F }; function=${function%% *}
COMP_WORDS=("$@")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}
previous=""; [ "$COMP_CWORD" -gt 0 ] && previous=${COMP_WORDS[COMP_CWORD-1]}
"$function" fwdctl "${COMP_WORDS[COMP_CWORD]}" "$previous"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = Command::new("bash")
        .arg("--norc")
        .arg("--noprofile")
        .arg("-c")
        .arg(driver)
        .arg("bash")
        .arg(script_path)
        .args(words)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "completing {words:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    let Some(_) = require("bash", "bash") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fwdctl.bash");
    std::fs::write(&path, script("bash")).expect("write script");

    let subcommands = bash_offers(&path, &["fwdctl", ""]);
    for offered in ["status", "wait", "watch", "doctor", "env", "completions"] {
        assert!(
            subcommands.iter().any(|w| w == offered),
            "`fwdctl <TAB>` does not offer {offered}: {subcommands:?}"
        );
    }
    // `man` is for packagers: hidden from --help, so from completion too.
    assert!(
        !subcommands.iter().any(|w| w == "man"),
        "`fwdctl <TAB>` offers the hidden man: {subcommands:?}"
    );

    let flags = bash_offers(&path, &["fwdctl", "status", "--"]);
    for offered in ["--json", "--socket", "--runtime-dir", "--help"] {
        assert!(
            flags.iter().any(|w| w == offered),
            "`fwdctl status --<TAB>` does not offer {offered}: {flags:?}"
        );
    }
    assert!(
        !flags.iter().any(|w| w == "--timeout"),
        "wait's flag offered for status: {flags:?}"
    );

    let prefix = bash_offers(&path, &["fwdctl", "wa"]);
    assert_eq!(prefix, ["wait", "watch"]);
    let values = bash_offers(&path, &["fwdctl", "env", "--format", ""]);
    assert!(values.iter().any(|w| w == "github"), "{values:?}");
}

#[test]
fn zsh_and_fish_scripts_name_fwdctl() {
    let zsh = script("zsh");
    assert!(zsh.starts_with("#compdef fwdctl"), "{zsh}");
    assert!(zsh.contains("--json"), "{zsh}");
    let fish = script("fish");
    assert!(fish.contains("complete -c fwdctl"), "{fish}");
    assert!(
        fish.contains("__fish_fwdctl_using_subcommand status"),
        "{fish}"
    );
}

#[test]
fn man_renders_a_page_per_subcommand() {
    let Some(man) = require("man", "man-db") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let man1 = dir.path().join("man1");
    fwdctl(&["man", man1.to_str().expect("utf-8 path")]);
    assert!(man1.join("fwdctl.1").is_file());
    assert!(
        !man1.join("fwdctl-man.1").exists(),
        "a page for the hidden man"
    );

    let render = |page: &str| {
        let out = Command::new(&man)
            .args(["-P", "cat", page])
            .env("MANPATH", dir.path())
            .env("MANWIDTH", "100")
            .env("LC_ALL", "C.UTF-8")
            .env_remove("MANPAGER")
            .env_remove("PAGER")
            .output()
            .expect("run man");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && !text.is_empty(),
            "man {page}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let status = render("fwdctl-status");
    for expected in ["fwdctl-status", "SYNOPSIS", "--json", "--socket", "NOTES"] {
        assert!(status.contains(expected), "no {expected}:\n{status}");
    }
    // The exit codes keep their lines, one code per line as in --help.
    assert!(
        status.lines().any(|l| l.trim() == "0   healthy"),
        "exit codes run together:\n{status}"
    );
    let main = render("fwdctl");
    for expected in ["fwdctl-status(1)", "fwdctl-wait(1)", "--runtime-dir"] {
        assert!(main.contains(expected), "no {expected}:\n{main}");
    }
}
