//! Helpers for the packaging tests: where the workspace is, the built
//! `fwdd`/`fwdctl` and static UDP relay, running tools that may be missing,
//! and reading systemd unit files.
//!
//! The tests never touch the real system: every install goes into a
//! temporary DESTDIR or a scratch root, and no user is created.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root (two levels above this crate).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("workspace root")
        .to_path_buf()
}

/// The directory the packaging scripts take their binaries from
/// (`FWD_BIN_DIR`): freshly built `fwdd` and `fwdctl`, and `fwd-udp-relay`
/// built static, as the scripts build it for a release. A test crate cannot
/// depend on another package's binaries, so this asks cargo to build them
/// into the same target directory (a no-op when they are current).
///
/// The relay is copied into a directory of the packaging tests' own
/// (`target/<profile>/packaging-bin`, with links to fwdd and fwdctl):
/// `target/<profile>/fwd-udp-relay` is whichever build of it cargo made
/// last, and the e2e tests build it without crt-static.
pub fn bin_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile> dir")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = || {
            let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            cmd.env("CARGO_TARGET_DIR", &target_dir)
                .current_dir(workspace());
            cmd
        };
        let mut fwdd = cargo();
        fwdd.args(["build", "--quiet", "-p", "fwdd", "-p", "fwdctl", "--bins"]);
        if release {
            fwdd.arg("--release");
        }
        let status = fwdd.status().expect("run cargo build");
        assert!(status.success(), "building fwdd/fwdctl failed");
        // As packaging/relay.sh builds it, in this profile.
        let mut relay = cargo();
        relay.args(["rustc", "--quiet", "-p", RELAY, "--bin", RELAY]);
        if release {
            relay.arg("--release");
        }
        relay.args(["--", "-C", "target-feature=+crt-static"]);
        let status = relay.status().expect("run cargo rustc");
        assert!(status.success(), "building a static {RELAY} failed");

        let dir = profile_dir.join("packaging-bin");
        std::fs::create_dir_all(&dir).expect("create packaging-bin");
        for b in ["fwdd", "fwdctl"] {
            match std::os::unix::fs::symlink(profile_dir.join(b), dir.join(b)) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    panic!("link {b} into {}: {e}", dir.display())
                }
                _ => {}
            }
        }
        // Copied, checked, then renamed into place: another test process
        // may be doing the same.
        let copy = dir.join(format!(".{RELAY}.{}", std::process::id()));
        std::fs::copy(profile_dir.join(RELAY), &copy).expect("copy the relay");
        assert!(
            is_static_executable(&copy),
            "{} is not static: cargo rebuilt it without crt-static meanwhile?",
            profile_dir.join(RELAY).display()
        );
        std::fs::rename(&copy, dir.join(RELAY)).expect("rename the relay");
        dir
    })
}

/// The UDP relay's file name, for fwdd's own platform.
pub const RELAY: &str = fwd_core::udp::deploy::OWN_RELAY;

/// Path of a built workspace binary (`fwdd`, `fwdctl` or the relay).
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Whether `path` is an ELF executable that needs no dynamic loader (no
/// `PT_INTERP` program header), so it runs whatever the host's glibc: what
/// `file` calls "statically linked" or "static-pie linked".
pub fn is_static_executable(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(elf) = std::fs::read(path) else {
        return false;
    };
    let bytes = |at: usize, n: usize| elf.get(at..at + n);
    let uint = |at: usize, n: usize| -> Option<usize> {
        let b = bytes(at, n)?;
        Some(b.iter().rev().fold(0usize, |v, &x| v << 8 | usize::from(x)))
    };
    // Little-endian ELF: every Linux CPU fwd names.
    let headers = match bytes(0, 6) {
        Some([0x7f, b'E', b'L', b'F', 2, 1]) => uint(32, 8).zip(uint(54, 2)).zip(uint(56, 2)),
        Some([0x7f, b'E', b'L', b'F', 1, 1]) => uint(28, 4).zip(uint(42, 2)).zip(uint(44, 2)),
        _ => None,
    };
    let Some(((offset, size), count)) = headers else {
        return false;
    };
    (0..count).all(|i| uint(offset + i * size, 4).is_some_and(|kind| kind != PT_INTERP as usize))
}

/// Checks the relays beside an fwdd (`dir`: where fwdd is): fwdd finds one
/// for a host of `host`'s platform, run by a runner of `runner`'s (the
/// names `fwd_core::udp::deploy` looks for, in its order), and it is an
/// executable file, static. Returns the path fwdd takes.
pub fn relay_fwdd_finds(
    dir: &Path,
    host: &fwd_core::udp::deploy::Platform,
    runner: &fwd_core::udp::deploy::Platform,
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let names = host.relay_files(runner);
    let relay = names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("none of {names:?} beside fwdd in {}", dir.display()));
    let mode = std::fs::metadata(&relay)
        .expect("relay metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "{}", relay.display());
    assert!(
        is_static_executable(&relay),
        "{} is not statically linked",
        relay.display()
    );
    relay
}

/// The relay fwdd finds beside it in `dir` for a host of its own platform
/// (a Linux runner's): there, static, and it runs here: with no input
/// (the end of fwdd's session) it ends at once, successfully.
pub fn check_relay_beside_fwdd(dir: &Path) -> PathBuf {
    use fwd_core::udp::deploy::Platform;
    let relay = relay_fwdd_finds(dir, &Platform::runner(), &Platform::runner());
    let out = run(Command::new(&relay).stdin(std::process::Stdio::null()));
    assert!(
        out.status.success(),
        "{} with no input: {}\n{}",
        relay.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    relay
}

/// Whether `program` can be run (found on PATH or in the sbin dirs).
pub fn find_tool(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let p = dir.join(program);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// A tool the test needs. Missing: in CI (CI=true) the test fails, since CI
/// installs it; elsewhere the test prints SKIPPED and returns `None`.
pub fn require_tool(program: &str, package: &str) -> Option<PathBuf> {
    if let Some(p) = find_tool(program) {
        return Some(p);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !in_ci,
        "{program} is missing but CI=true: install the Debian package `{package}` (scripts/install-deps.sh)"
    );
    eprintln!("SKIPPED: {program} not found (apt-get install {package})");
    None
}

/// Runs a command, panicking with its output if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The long options (`--name`) that `fwdd --help` documents, and its
/// subcommands (words listed under "Commands:").
pub fn fwdd_help() -> &'static Help {
    static HELP: OnceLock<Help> = OnceLock::new();
    HELP.get_or_init(|| Help::parse(&run_ok(Command::new(bin("fwdd")).arg("--help"))))
}

/// What a clap `--help` page offers.
#[derive(Debug, Default)]
pub struct Help {
    /// Long options, e.g. `--config`, with whether each takes a value.
    pub options: Vec<(String, bool)>,
    /// Subcommands, e.g. `check-config`.
    pub commands: Vec<String>,
}

impl Help {
    pub fn parse(text: &str) -> Help {
        let mut help = Help::default();
        let mut in_commands = false;
        for line in text.lines() {
            let trimmed = line.trim_start();
            if line.starts_with("Commands:") {
                in_commands = true;
                continue;
            }
            if !line.starts_with(' ') && !line.is_empty() {
                in_commands = false;
            }
            if in_commands {
                if let Some(word) = trimmed.split_whitespace().next() {
                    if line.starts_with("  ") && !line.starts_with("   ") {
                        help.commands.push(word.to_string());
                    }
                }
                continue;
            }
            // Option lines: "  -c, --config <FILE>" or "      --host <URL>".
            if !trimmed.starts_with('-') {
                continue;
            }
            let mut words = trimmed.split_whitespace().peekable();
            while let Some(w) = words.next() {
                let w = w.trim_end_matches(',');
                if let Some(name) = w.strip_prefix("--") {
                    let takes_value = words.peek().is_some_and(|n| n.starts_with('<'));
                    help.options.push((format!("--{name}"), takes_value));
                }
            }
        }
        help
    }

    /// `Some(takes_value)` when `--name` is documented.
    pub fn option(&self, name: &str) -> Option<bool> {
        self.options
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Checks a command line (without the program): every `--option` is
    /// documented and gets a value when it needs one; a first word that is
    /// not an option must be a subcommand (which may take positional
    /// arguments, such as check-config's FILE); without a subcommand there
    /// must be no positional arguments. Returns the problems found.
    pub fn check_args(&self, args: &[String]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut i = 0;
        let subcommand = args.first().filter(|a| !a.starts_with('-'));
        if let Some(cmd) = subcommand {
            if !self.commands.iter().any(|c| c == cmd) {
                problems.push(format!("`{cmd}` is not a subcommand of fwdd"));
            }
            // The subcommand's own options are on its own help page.
            return problems;
        }
        while i < args.len() {
            let a = &args[i];
            let (name, inline) = match a.split_once('=') {
                Some((n, _)) => (n, true),
                None => (a.as_str(), false),
            };
            if !name.starts_with("--") {
                problems.push(format!("unexpected argument `{a}`"));
            } else {
                match self.option(name) {
                    None => problems.push(format!("`{name}` is not an option of fwdd")),
                    Some(true) if !inline => {
                        if !matches!(args.get(i + 1), Some(v) if !v.starts_with('-')) {
                            problems.push(format!("`{name}` needs a value"));
                        }
                        i += 1;
                    }
                    Some(_) => {}
                }
            }
            i += 1;
        }
        problems
    }
}

/// A systemd unit file read into (section, key, value) entries, in order.
/// Continuation lines and comments are handled; specifiers are left alone.
#[derive(Debug)]
pub struct Unit {
    pub entries: Vec<(String, String, String)>,
}

impl Unit {
    pub fn read(path: &Path) -> Unit {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        Unit::parse(&text)
    }

    pub fn parse(text: &str) -> Unit {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty()
                && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
            {
                continue;
            }
            if let Some(cont) = line.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            let full = std::mem::take(&mut pending);
            if full.starts_with('[') && full.ends_with(']') {
                section = full[1..full.len() - 1].to_string();
            } else if let Some((k, v)) = full.split_once('=') {
                entries.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
            }
        }
        Unit { entries }
    }

    /// Every value of `key` in `section`, in order.
    pub fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The last value of `key` in `section` (systemd's "last one wins").
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).last().copied()
    }

    /// `ExecStart=` of [Service] split into words (no quoting is used in
    /// our units, so whitespace splitting is exact).
    pub fn exec_start(&self) -> Vec<String> {
        let v = self.get("Service", "ExecStart").expect("ExecStart=");
        v.split_whitespace().map(str::to_string).collect()
    }

    /// The value following `flag` in ExecStart.
    pub fn exec_start_flag(&self, flag: &str) -> Option<String> {
        let words = self.exec_start();
        let i = words.iter().position(|w| w == flag)?;
        words.get(i + 1).cloned()
    }
}

/// A copy of `unit` with every `/usr/bin/fwdd` replaced by `fwdd`, written to
/// `dir/name` (systemd-analyze verify insists that the binary exists).
pub fn unit_with_binary(unit: &Path, fwdd: &Path, dir: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(unit).expect("read unit");
    let text = text.replace("/usr/bin/fwdd", &fwdd.display().to_string());
    let out = dir.join(name);
    std::fs::write(&out, text).expect("write unit copy");
    out
}

/// What bash offers on TAB for the command line `words` (the last word is
/// the one being completed): `script` is sourced as bash-completion would,
/// and the function it registered for `words[0]` (`complete -p`) runs with
/// the COMP_WORDS and COMP_CWORD bash gives it.
pub fn bash_offers(script: &Path, words: &[&str]) -> Vec<String> {
    let driver = r#"
source "$1"; shift
spec=$(complete -p "$1") || exit 3
function=${spec#*-F }; function=${function%% *}
COMP_WORDS=("$@")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}
previous=""; [ "$COMP_CWORD" -gt 0 ] && previous=${COMP_WORDS[COMP_CWORD-1]}
"$function" "$1" "${COMP_WORDS[COMP_CWORD]}" "$previous"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = run_ok(
        Command::new("bash")
            .args(["--norc", "--noprofile", "-c", driver, "bash"])
            .arg(script)
            .args(words),
    );
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `man` renders `page` (a name looked up in `manpath`, or with `manpath`
/// `None` a file, as `man -l` reads it: .gz too); returns the text. `None`
/// when man-db is missing outside CI (see `require_tool`).
pub fn man_renders(manpath: Option<&Path>, page: &str) -> Option<String> {
    let man = require_tool("man", "man-db")?;
    let mut cmd = Command::new(man);
    cmd.args(["-P", "cat"])
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .env_remove("MANPAGER")
        .env_remove("PAGER");
    match manpath {
        Some(dir) => cmd.env("MANPATH", dir).arg(page),
        None => cmd.arg("-l").arg(page),
    };
    let text = run_ok(&mut cmd);
    assert!(!text.is_empty(), "man {page} printed nothing");
    Some(text)
}
