//! packaging/build-deb.sh builds a .deb (from the freshly built binaries) whose
//! files land where its units point, with /etc/fwd/fwdd.toml as a conffile.
//! The package is unpacked into a scratch root (`dpkg-deb -x`); nothing is
//! installed on the real system and no maintainer script runs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use fwd_packaging_tests::{
    bash_offers, bin, bin_dir, check_relay_beside_fwdd, man_renders, require_tool, run, run_ok,
    unit_with_binary, workspace, Help, Unit, RELAY,
};

struct Built {
    _dir: tempfile::TempDir,
    deb: PathBuf,
    root: PathBuf,
}

/// Builds the package once per test process and unpacks it.
fn built() -> Option<&'static Built> {
    static BUILT: OnceLock<Option<Built>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dpkg_deb = require_tool("dpkg-deb", "dpkg")?;
            let dir = tempfile::tempdir().expect("tempdir");
            let dist = dir.path().join("dist");
            let out = run_ok(
                Command::new("bash")
                    .arg(workspace().join("packaging/build-deb.sh"))
                    .env("FWD_BIN_DIR", bin_dir())
                    .env("DIST", &dist),
            );
            let deb = PathBuf::from(
                out.lines()
                    .last()
                    .expect("build-deb.sh prints the .deb")
                    .trim(),
            );
            assert!(deb.is_file(), "{} missing", deb.display());
            assert!(deb.starts_with(&dist), "the .deb must go to DIST");
            let root = dir.path().join("root");
            run_ok(Command::new(dpkg_deb).arg("-x").arg(&deb).arg(&root));
            Some(Built {
                _dir: dir,
                deb,
                root,
            })
        })
        .as_ref()
}

fn in_root(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

#[test]
fn listing_has_binaries_units_and_config() {
    let Some(b) = built() else { return };
    let listing = run_ok(Command::new("dpkg-deb").arg("-c").arg(&b.deb));
    let files: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    for want in [
        "/usr/bin/fwdd",
        "/usr/bin/fwdctl",
        "/usr/bin/fwd-udp-relay",
        "/usr/lib/systemd/system/fwdd.service",
        "/usr/lib/systemd/user/fwdd.service",
        "/etc/fwd/fwdd.toml",
        "/usr/share/doc/fwd/operations.md",
        "/usr/share/doc/fwd/copyright",
        "/usr/share/fwd/upgrade-running.sh",
        "/usr/share/bash-completion/completions/fwdctl",
        "/usr/share/bash-completion/completions/fwdd",
        "/usr/share/zsh/vendor-completions/_fwdctl",
        "/usr/share/fish/vendor_completions.d/fwdctl.fish",
        "/usr/share/man/man1/fwdctl.1.gz",
        "/usr/share/man/man1/fwdctl-status.1.gz",
        "/usr/share/man/man1/fwdd.1.gz",
        "/usr/share/man/man1/fwdd-check-config.1.gz",
    ] {
        assert!(
            files.iter().any(|f| f == want),
            "{want} not in the package:\n{listing}"
        );
    }
    for line in listing.lines() {
        assert!(line.contains(" root/root "), "owned by root: {line}");
    }
}

/// Beside /usr/bin/fwdd, where fwdd looks for it: static (the Docker
/// host's glibc may be older than the runner's), stripped like fwdd, and
/// it runs.
#[test]
fn udp_relay_is_beside_fwdd_static_and_runs() {
    let Some(b) = built() else { return };
    let relay = check_relay_beside_fwdd(&in_root(&b.root, "/usr/bin"));
    assert_eq!(relay, in_root(&b.root, &format!("/usr/bin/{RELAY}")));
    let packaged = std::fs::metadata(&relay).expect("relay").len();
    let built = std::fs::metadata(bin(RELAY)).expect("built relay").len();
    assert!(packaged < built, "not stripped: {packaged} bytes");
}

#[test]
fn control_fields_and_conffiles() {
    let Some(b) = built() else { return };
    let field = |f: &str| run_ok(Command::new("dpkg-deb").arg("-f").arg(&b.deb).arg(f));
    assert_eq!(field("Package").trim(), "fwd");
    assert!(
        field("Depends").contains("openssh-client"),
        "Depends: {}",
        field("Depends")
    );
    let version = field("Version");
    assert!(
        version.trim().starts_with(env!("CARGO_PKG_VERSION")),
        "Version {version}"
    );

    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(&b.deb)
            .arg(dir.path()),
    );
    let conffiles = std::fs::read_to_string(dir.path().join("conffiles")).expect("conffiles");
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/fwd/fwdd.toml"]
    );
    for c in conffiles.lines() {
        assert!(in_root(&b.root, c).is_file(), "conffile {c} not shipped");
    }
    for s in ["postinst", "prerm", "postrm"] {
        let p = dir.path().join(s);
        let mode = std::fs::metadata(&p)
            .unwrap_or_else(|_| panic!("{s} missing"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{s} mode");
        run_ok(Command::new("sh").arg("-n").arg(&p));
    }
    let postinst = std::fs::read_to_string(dir.path().join("postinst")).unwrap();
    assert!(
        postinst.contains("useradd --system"),
        "postinst creates the fwd user"
    );
    // An upgrade goes through the helper that upgrade_running.rs runs for real.
    assert!(
        postinst.contains("/usr/share/fwd/upgrade-running.sh /usr/bin"),
        "postinst upgrades a running fwdd in place"
    );
    let prerm = std::fs::read_to_string(dir.path().join("prerm")).unwrap();
    assert!(
        prerm.contains("systemctl stop fwdd.service"),
        "prerm stops the unit"
    );
}

#[test]
fn units_point_at_the_packaged_files() {
    let Some(b) = built() else { return };
    for (unit_path, config_home) in [
        ("/usr/lib/systemd/system/fwdd.service", None),
        ("/usr/lib/systemd/user/fwdd.service", Some("%E")),
    ] {
        let unit = Unit::read(&in_root(&b.root, unit_path));
        let exec = unit.exec_start();
        let binary = in_root(&b.root, &exec[0]);
        let mode = std::fs::metadata(&binary)
            .unwrap_or_else(|_| panic!("{unit_path}: ExecStart {} not in the package", exec[0]))
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{} not executable", exec[0]);
        // The packaged binary runs and is the one we built (same version line).
        let packaged = run_ok(Command::new(&binary).arg("--version"));
        let built = run_ok(Command::new(bin("fwdd")).arg("--version"));
        assert_eq!(packaged, built);

        let config = unit.exec_start_flag("--config").expect("--config");
        match config_home {
            None => assert!(
                in_root(&b.root, &config).is_file(),
                "{config} not in the package"
            ),
            // The user unit reads ~/.config/fwd/fwdd.toml: the user's file.
            Some(prefix) => assert!(config.starts_with(prefix), "{config}"),
        }
        for reload in unit.all("Service", "ExecReload") {
            let program = reload.split_whitespace().next().unwrap();
            if program.contains("fwdd") {
                assert!(in_root(&b.root, program).is_file(), "ExecReload {program}");
            }
        }
    }
}

#[test]
fn packaged_unit_verifies_against_packaged_binary() {
    let Some(b) = built() else { return };
    let Some(analyze) = require_tool("systemd-analyze", "systemd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_binary(
        &in_root(&b.root, "/usr/lib/systemd/system/fwdd.service"),
        &in_root(&b.root, "/usr/bin/fwdd"),
        dir.path(),
        "fwdd.service",
    );
    let out = run(Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.lines().any(|l| l.contains("fwdd")),
        "{stderr}"
    );
}

#[test]
fn completions_are_the_packaged_binaries_own_and_complete() {
    let Some(b) = built() else { return };
    for program in ["fwdd", "fwdctl"] {
        for (shell, path) in [
            (
                "bash",
                format!("/usr/share/bash-completion/completions/{program}"),
            ),
            (
                "zsh",
                format!("/usr/share/zsh/vendor-completions/_{program}"),
            ),
            (
                "fish",
                format!("/usr/share/fish/vendor_completions.d/{program}.fish"),
            ),
        ] {
            let shipped = std::fs::read_to_string(in_root(&b.root, &path))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            let made = run_ok(Command::new(bin(program)).args(["completions", shell]));
            assert_eq!(shipped, made, "{path} is not what {program} makes");
        }
    }
    let fwdd = in_root(&b.root, "/usr/share/bash-completion/completions/fwdd");
    assert_eq!(bash_offers(&fwdd, &["fwdd", "--c"]), ["--config"]);
    let commands = bash_offers(&fwdd, &["fwdd", ""]);
    assert!(commands.iter().any(|w| w == "check-config"), "{commands:?}");
    for hidden in ["upgrade-check", "man"] {
        assert!(
            !commands.iter().any(|w| w == hidden),
            "hidden {hidden} offered: {commands:?}"
        );
    }
    let fwdctl = in_root(&b.root, "/usr/share/bash-completion/completions/fwdctl");
    let flags = bash_offers(&fwdctl, &["fwdctl", "status", "--"]);
    assert!(flags.iter().any(|w| w == "--json"), "{flags:?}");
}

#[test]
fn manual_pages_are_compressed_and_render() {
    let Some(b) = built() else { return };
    let man1 = in_root(&b.root, "/usr/share/man/man1");
    let mut pages: Vec<String> = std::fs::read_dir(&man1)
        .expect("man1 in the package")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    // A page per program and per subcommand its --help lists.
    let mut expected = Vec::new();
    for program in ["fwdd", "fwdctl"] {
        let help = Help::parse(&run_ok(Command::new(bin(program)).arg("--help")));
        expected.push(format!("{program}.1.gz"));
        for command in help.commands.iter().filter(|c| *c != "help") {
            expected.push(format!("{program}-{command}.1.gz"));
        }
    }
    expected.sort();
    assert_eq!(pages, expected);
    let Some(text) = man_renders(None, man1.join("fwdctl-status.1.gz").to_str().unwrap()) else {
        return;
    };
    assert!(text.contains("--json"), "{text}");
    let Some(text) = man_renders(None, man1.join("fwdd.1.gz").to_str().unwrap()) else {
        return;
    };
    assert!(text.contains("FWD_CONFIG"), "the flags' variables: {text}");
}
