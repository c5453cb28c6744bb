//! Shell completion scripts and manual pages made from a binary's own clap
//! command: fwdd and fwdctl answer `completions SHELL` and (hidden)
//! `man DIR` with these, so a package generates them with the very binary
//! it ships, and they describe that binary even when it was built
//! elsewhere.

use anyhow::{Context, Result};
use clap_mangen::roff::{roman, Roff};
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// The completion script of `cli` for `shell`.
pub fn completion_script(cli: clap::Command, shell: Shell) -> Vec<u8> {
    let name = cli.get_name().to_string();
    let mut cli = without_hidden_subcommands(cli);
    let mut script = Vec::new();
    // Into memory: clap_complete panics when its writer fails.
    clap_complete::generate(shell, &mut cli, name, &mut script);
    script
}

/// Prints the completion script of `cli` for `shell` on stdout.
pub fn print_completion_script(cli: clap::Command, shell: Shell) -> Result<()> {
    use std::io::Write;
    let script = completion_script(cli, shell);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completion script")
}

/// `cli` as the scripts should offer it: clap_complete offers hidden
/// subcommands (`man`, fwdd's `upgrade-check`) too, and clap cannot remove
/// one, so the command is made again from what completion reads (name,
/// version, about, arguments) and only the subcommands `--help` lists.
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

/// Writes `cli`'s manual page and one per visible subcommand
/// (`fwdctl.1`, `fwdctl-status.1`, ...) into `dir`, created if needed;
/// returns their paths.
pub fn write_man_pages(cli: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built once: each subcommand then knows its page's name (fwdctl-status).
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let source = format!("fwd {}", cli.get_version().unwrap_or_default());
    let mut written = Vec::new();
    let mut pending = vec![&cli];
    while let Some(cmd) = pending.pop() {
        pending.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()));
        let man = clap_mangen::Man::new(cmd.clone()).source(source.clone());
        let path = dir.join(man.get_filename());
        std::fs::write(&path, man_page(&man, cmd)?)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    written.sort();
    Ok(written)
}

/// clap_mangen's page, except that the text after the options (examples,
/// exit codes) keeps its lines: clap_mangen would fill it into paragraphs,
/// and the columns and examples written for `--help` would run together.
fn man_page(man: &clap_mangen::Man, cmd: &clap::Command) -> Result<Vec<u8>> {
    let mut sections: Vec<Vec<u8>> = Vec::new();
    let mut section = |render: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| -> Result<()> {
        let mut text = Vec::new();
        render(&mut text).context("rendering a manual page")?;
        sections.push(text);
        Ok(())
    };
    section(&|w| man.render_title(w))?;
    section(&|w| man.render_name_section(w))?;
    section(&|w| man.render_synopsis_section(w))?;
    section(&|w| man.render_description_section(w))?;
    section(&|w| man.render_options_section(w))?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        section(&|w| man.render_subcommands_section(w))?;
    }
    if let Some(notes) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        let notes = notes.to_string();
        section(&|w| preformatted("NOTES", &notes).to_writer(w))?;
    }
    if cmd.get_version().is_some() {
        section(&|w| man.render_version_section(w))?;
    }
    // Each section comes with roff's preamble (the apostrophe string):
    // once is enough.
    let mut preamble = Vec::new();
    Roff::new()
        .to_writer(&mut preamble)
        .context("rendering a manual page")?;
    let mut page = Vec::new();
    for (i, text) in sections.iter().enumerate() {
        match text.strip_prefix(preamble.as_slice()) {
            Some(body) if i > 0 => page.extend_from_slice(body),
            _ => page.extend_from_slice(text),
        }
    }
    Ok(page)
}

/// A section whose lines are shown as written (`.nf`), escaped for roff.
fn preformatted(title: &str, text: &str) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", [title]).control("nf", []);
    for line in text.lines() {
        roff.text([roman(line)]);
    }
    roff.control("fi", []);
    roff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("tool")
            .version("1.0")
            .arg(clap::Arg::new("socket").long("socket").global(true))
            .subcommand(
                clap::Command::new("status")
                    .about("Show the status")
                    .arg(
                        clap::Arg::new("json")
                            .long("json")
                            .action(clap::ArgAction::SetTrue),
                    )
                    .after_help(
                        "Exit codes:\n  0   healthy\n  1   degraded\n\n.not a request\n  a\\b",
                    ),
            )
            .subcommand(clap::Command::new("man").hide(true))
    }

    #[test]
    fn completion_offers_the_visible_subcommands_and_flags_only() {
        let script = completion_script(sample(), Shell::Bash);
        let script = String::from_utf8(script).expect("utf-8 script");
        for offered in ["status", "--json", "--socket", "--version"] {
            assert!(script.contains(offered), "{offered} not offered:\n{script}");
        }
        assert!(
            !script.contains("tool__subcmd__man"),
            "hidden `man` offered:\n{script}"
        );
    }

    #[test]
    fn a_page_per_visible_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_man_pages(sample(), dir.path()).expect("pages written");
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().expect("file name").to_string_lossy())
            .collect();
        assert_eq!(names, ["tool-status.1", "tool.1"]);
    }

    #[test]
    fn the_notes_keep_their_lines_and_roff_reads_them_as_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_man_pages(sample(), dir.path()).expect("pages written");
        let page = std::fs::read_to_string(dir.path().join("tool-status.1")).expect("page");
        let notes = page.split(".SH NOTES\n").nth(1).expect("a NOTES section");
        let notes = notes.split(".fi\n").next().expect("the notes");
        assert_eq!(
            notes,
            ".nf\nExit codes:\n  0   healthy\n  1   degraded\n\n\\&.not a request\n  a\\\\b\n",
            "page:\n{page}"
        );
        assert!(page.contains(".TH tool-status 1"), "page:\n{page}");
        assert!(
            page.contains("fwd 1.0"),
            "the source names fwd's version:\n{page}"
        );
        assert_eq!(page.matches(".ds Aq").count(), 2, "one preamble:\n{page}");
    }
}
