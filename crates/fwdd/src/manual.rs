//! The shell completion scripts and manual pages, made from the command
//! line's definition by the binary itself (`fwdd completions SHELL`, for
//! anyone installing by hand too; `fwdd man DIR`, hidden): a package
//! generates them with the binary it ships, so they always describe that
//! binary, prebuilt or not, and Homebrew's
//! `generate_completions_from_executable` works as it expects.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Prints the completion script of `cli` for `shell`.
pub fn print_completions(cli: clap::Command, shell: clap_complete::Shell) -> Result<()> {
    let name = cli.get_name().to_string();
    let mut cli = without_hidden_subcommands(cli);
    // clap_complete panics when its writer fails (e.g. a closed pipe):
    // rendered in memory first, a write error is an error like any other.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cli, name, &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completion script")
}

/// Writes `cli`'s manual page and one per visible subcommand
/// (`fwdd.1`, `fwdd-check-config.1`) into `dir`, created if needed.
pub fn write_man_pages(cli: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cli, dir)
        .with_context(|| format!("writing manual pages into {}", dir.display()))
}

/// `cli` as the scripts should offer it: clap_complete offers hidden
/// subcommands (`man`, `upgrade-check`) too, and clap cannot remove one, so the
/// command is made again from what completion reads (name, version, about,
/// arguments) and only the subcommands `--help` lists.
fn without_hidden_subcommands(cli: clap::Command) -> clap::Command {
    let mut visible = clap::Command::new(cli.get_name().to_string())
        .args(cli.get_arguments().cloned())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(version) = cli.get_version() {
        visible = visible.version(version.to_string());
    }
    if let Some(about) = cli.get_about() {
        visible = visible.about(about.clone());
    }
    visible
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("tool")
            .version("1.0")
            .arg(clap::Arg::new("socket").long("socket").global(true))
            .subcommand(clap::Command::new("status").arg(clap::Arg::new("json").long("json")))
            .subcommand(clap::Command::new("man").hide(true))
    }

    #[test]
    fn completion_offers_the_visible_subcommands_and_flags_only() {
        let mut cli = without_hidden_subcommands(sample());
        let mut script = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cli, "tool", &mut script);
        let script = String::from_utf8(script).expect("utf-8 script");
        for offered in ["status", "--json", "--socket", "--version"] {
            assert!(script.contains(offered), "{offered} not offered:\n{script}");
        }
        assert!(
            !script.contains("tool__subcmd__man"),
            "hidden `man` offered:\n{script}"
        );
    }
}
