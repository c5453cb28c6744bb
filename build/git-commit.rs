//! Embeds the git commit into `--version` of fwdd and fwdctl (`FWD_GIT_COMMIT`),
//! and declares `cfg(linux_calls)` (`platform.rs`).
//! An explicit `FWD_GIT_COMMIT` in the environment wins (for builds from a tarball);
//! without git or outside a repository the commit is "unknown". Never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "platform.rs"]
mod platform;

fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    platform::declare_linux_calls();
    println!("cargo:rerun-if-env-changed=FWD_GIT_COMMIT");
    // Rebuild when HEAD moves; only existing paths are named, as a missing one would make
    // cargo rerun this script on every build.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        for p in ["HEAD", "packed-refs", "refs/heads"] {
            let p: &Path = &git_dir.join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    let commit = std::env::var("FWD_GIT_COMMIT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FWD_GIT_COMMIT={commit}");
}
