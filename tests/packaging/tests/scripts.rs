//! The shell scripts parse (`bash -n`, `sh -n` for the maintainer scripts,
//! which run under dash) and pass shellcheck when it is installed.

use std::path::PathBuf;
use std::process::Command;

use fwd_packaging_tests::{require_tool, run_ok, workspace};

fn bash_scripts() -> Vec<PathBuf> {
    [
        "packaging/install.sh",
        "packaging/build-release.sh",
        "packaging/build-deb.sh",
    ]
    .iter()
    .map(|p| workspace().join(p))
    .collect()
}

/// Sourced by the build scripts, not run.
fn sourced_scripts() -> Vec<PathBuf> {
    vec![workspace().join("packaging/relay.sh")]
}

fn maintainer_scripts() -> Vec<PathBuf> {
    ["postinst", "prerm", "postrm"]
        .iter()
        .map(|p| workspace().join("packaging/debian").join(p))
        .collect()
}

#[test]
fn scripts_parse() {
    for s in bash_scripts().into_iter().chain(sourced_scripts()) {
        run_ok(Command::new("bash").arg("-n").arg(&s));
    }
    for s in maintainer_scripts() {
        run_ok(Command::new("sh").arg("-n").arg(&s));
        let text = std::fs::read_to_string(&s).unwrap();
        assert!(
            text.starts_with("#!/bin/sh\n"),
            "{}: dpkg runs it with /bin/sh",
            s.display()
        );
        assert!(text.contains("set -e"), "{}: set -e", s.display());
    }
}

#[test]
fn scripts_are_executable() {
    use std::os::unix::fs::PermissionsExt;
    for s in bash_scripts().into_iter().chain(maintainer_scripts()) {
        let mode = std::fs::metadata(&s).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{} is not executable", s.display());
    }
}

#[test]
fn shellcheck_is_clean() {
    let Some(shellcheck) = require_tool("shellcheck", "shellcheck") else {
        return;
    };
    let mut cmd = Command::new(shellcheck);
    // The sourced ones too: shellcheck follows only files it is given.
    cmd.args(bash_scripts())
        .args(sourced_scripts())
        .args(maintainer_scripts());
    run_ok(&mut cmd);
}
