//! packaging/install.sh into a temporary DESTDIR (never into /, never
//! creating a user): files land where the units point, and an existing
//! configuration is never overwritten. Also the release tarball, whose
//! install.sh runs from the unpacked tree.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use fwd_core::udp::deploy::Platform;
use fwd_packaging_tests::{
    bash_offers, bin, bin_dir, check_relay_beside_fwdd, man_renders, relay_fwdd_finds, run, run_ok,
    workspace, Unit, RELAY,
};

const PREFIX: &str = "/usr/local";

fn install(script: &Path, destdir: &Path, platform: &str, home: &Path) -> String {
    run_ok(
        Command::new("bash")
            .arg(script)
            .env("DESTDIR", destdir)
            .env("PREFIX", PREFIX)
            .env("FWD_BIN_DIR", bin_dir())
            .env("FWD_PLATFORM", platform)
            .env("HOME", home)
            .env("USER", "ci"),
    )
}

fn staged(destdir: &Path, path: &str) -> PathBuf {
    destdir.join(path.trim_start_matches('/'))
}

fn check_linux_tree(d: &Path) {
    for b in ["fwdd", "fwdctl"] {
        let p = staged(d, &format!("{PREFIX}/bin/{b}"));
        let mode = std::fs::metadata(&p)
            .expect("binary installed")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{}", p.display());
    }
    check_relay_beside_fwdd(&staged(d, &format!("{PREFIX}/bin")));
    let system = Unit::read(&staged(
        d,
        &format!("{PREFIX}/lib/systemd/system/fwdd.service"),
    ));
    let user = Unit::read(&staged(
        d,
        &format!("{PREFIX}/lib/systemd/user/fwdd.service"),
    ));
    for unit in [&system, &user] {
        let exec = unit.exec_start();
        assert_eq!(
            exec[0],
            format!("{PREFIX}/bin/fwdd"),
            "ExecStart rewritten to PREFIX"
        );
        assert!(staged(d, &exec[0]).is_file());
        for reload in unit.all("Service", "ExecReload") {
            let program = reload.split_whitespace().next().unwrap();
            assert!(
                !program.starts_with("/usr/bin/fwdd"),
                "ExecReload not rewritten: {reload}"
            );
        }
    }
    let config = system.exec_start_flag("--config").unwrap();
    assert!(staged(d, &config).is_file(), "{config} installed");
    assert!(staged(d, &format!("{PREFIX}/share/doc/fwd/fwdd.toml.example")).is_file());
    assert!(staged(d, &format!("{PREFIX}/share/doc/fwd/operations.md")).is_file());
    // DESTDIR installs do not create the service user's home.
    assert!(!staged(d, "/var/lib/fwd").exists());
    check_completions_and_pages(d);
}

/// Where a shell under PREFIX looks for them, as the binaries make them;
/// `man` finds the pages under PREFIX/share/man.
fn check_completions_and_pages(d: &Path) {
    for program in ["fwdd", "fwdctl"] {
        for (shell, path) in [
            (
                "bash",
                format!("share/bash-completion/completions/{program}"),
            ),
            ("zsh", format!("share/zsh/site-functions/_{program}")),
            (
                "fish",
                format!("share/fish/vendor_completions.d/{program}.fish"),
            ),
        ] {
            let installed = staged(d, &format!("{PREFIX}/{path}"));
            let text = std::fs::read_to_string(&installed)
                .unwrap_or_else(|e| panic!("{}: {e}", installed.display()));
            let made = run_ok(Command::new(bin(program)).args(["completions", shell]));
            assert_eq!(text, made, "{path} is not what {program} makes");
            let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "{path}");
        }
        let page = staged(d, &format!("{PREFIX}/share/man/man1/{program}.1"));
        let mode = std::fs::metadata(&page)
            .unwrap_or_else(|e| panic!("{}: {e}", page.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "{}", page.display());
    }
    let bash = staged(
        d,
        &format!("{PREFIX}/share/bash-completion/completions/fwdctl"),
    );
    let offered = bash_offers(&bash, &["fwdctl", ""]);
    for subcommand in ["status", "wait"] {
        assert!(offered.iter().any(|w| w == subcommand), "{offered:?}");
    }
    let manpath = staged(d, &format!("{PREFIX}/share/man"));
    if let Some(text) = man_renders(Some(&manpath), "fwdctl-status") {
        assert!(text.contains("--json"), "{text}");
    }
}

#[test]
fn destdir_install_never_clobbers_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("root");
    let script = workspace().join("packaging/install.sh");
    let out = install(&script, &d, "linux", tmp.path());
    check_linux_tree(&d);
    let config = staged(&d, "/etc/fwd/fwdd.toml");
    let shipped = std::fs::read_to_string(workspace().join("config/fwdd.toml")).unwrap();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), shipped);
    assert!(out.contains("installed the example configuration"), "{out}");

    // The operator edits it; a second install (an upgrade) keeps the edit.
    let mine = "# mine\n[[host]]\nurl = \"ssh://me@my-docker\"\n";
    std::fs::write(&config, mine).unwrap();
    let out = install(&script, &d, "linux", tmp.path());
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        mine,
        "config overwritten"
    );
    assert!(
        out.contains("kept the existing /etc/fwd/fwdd.toml"),
        "{out}"
    );
    check_linux_tree(&d);
}

#[test]
fn macos_install_renders_the_launch_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("root");
    let home = Path::new("/Users/ci");
    let script = workspace().join("packaging/install.sh");
    install(&script, &d, "macos", home);
    let agent = staged(&d, "/Users/ci/Library/LaunchAgents/com.fwd.fwdd.plist");
    let text = std::fs::read_to_string(&agent).expect("agent installed");
    assert!(!text.contains("@HOME@"), "template token left");
    let v = plist::Value::from_file(&agent).expect("rendered agent parses");
    let args: Vec<&str> = v
        .as_dictionary()
        .and_then(|d| d.get("ProgramArguments"))
        .and_then(plist::Value::as_array)
        .unwrap()
        .iter()
        .map(|a| a.as_string().unwrap())
        .collect();
    assert_eq!(args[0], format!("{PREFIX}/bin/fwdd"));
    assert!(staged(&d, args[0]).is_file());
    assert_eq!(args[2], "/Users/ci/.config/fwd/fwdd.toml");
    assert!(
        staged(&d, args[2]).is_file(),
        "config installed where the agent reads it"
    );
    assert!(
        staged(&d, "/Users/ci/Library/Logs/fwd").is_dir(),
        "launchd does not create it"
    );
    assert!(
        staged(&d, &format!("{PREFIX}/bin/{RELAY}")).is_file(),
        "the relay beside fwdd"
    );
    let newsyslog = std::fs::read_to_string(staged(
        &d,
        &format!("{PREFIX}/share/fwd/fwdd.newsyslog.conf"),
    ))
    .unwrap();
    assert!(
        newsyslog.contains("/Users/ci/Library/Logs/fwd/fwdd.log    ci:staff"),
        "{newsyslog}"
    );
    check_completions_and_pages(&d);
}

/// Runs packaging/build-release.sh with `env` (into `tmp`/dist) and unpacks
/// the tarball: its one top-level directory, and what the script said on
/// stderr.
fn build_release(tmp: &Path, env: &[(&str, &std::ffi::OsStr)]) -> (PathBuf, String) {
    let dist = tmp.join("dist");
    let mut build = Command::new("bash");
    build
        .arg(workspace().join("packaging/build-release.sh"))
        .env("FWD_BIN_DIR", bin_dir())
        .env("DIST", &dist)
        .env_remove("FWD_LINUX_RELAYS")
        .env_remove("FWD_PLATFORM");
    for (k, v) in env {
        build.env(k, v);
    }
    let out = run(&mut build);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build-release.sh: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tarball = PathBuf::from(stdout.lines().last().unwrap().trim());
    assert!(tarball.is_file(), "{}", tarball.display());
    let sums = std::fs::read_to_string(format!("{}.sha256", tarball.display())).unwrap();
    assert!(sums.contains(tarball.file_name().unwrap().to_str().unwrap()));

    let unpack = tmp.join("unpack");
    std::fs::create_dir(&unpack).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&unpack)
            .arg("-xzf")
            .arg(&tarball),
    );
    let top: Vec<PathBuf> = std::fs::read_dir(&unpack)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(top.len(), 1, "one top-level directory: {top:?}");
    (top[0].clone(), stderr)
}

/// A Mac running fwdd (the relays it carries are Linux ones).
fn mac_runner() -> Platform {
    Platform {
        os: "darwin".into(),
        arch: "aarch64".into(),
    }
}

/// The name of the relay for a Linux host of this machine's CPU.
fn linux_relay_name() -> String {
    Platform::runner().relay_files(&mac_runner())[0].clone()
}

#[test]
fn release_tarball_installs_from_its_own_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (tree, _) = build_release(tmp.path(), &[]);
    let tree = &tree;
    for f in [
        "bin/fwdd",
        "bin/fwdctl",
        "systemd/fwdd.service",
        "systemd/fwdd-user.service",
        "launchd/com.fwd.fwdd.plist",
        "launchd/fwdd.newsyslog.conf",
        "config/fwdd.toml",
        "docs/operations.md",
        "install.sh",
        "packaging/upgrade-running.sh",
        "completions/bash/fwdd",
        "completions/bash/fwdctl",
        "completions/zsh/_fwdd",
        "completions/zsh/_fwdctl",
        "completions/fish/fwdd.fish",
        "completions/fish/fwdctl.fish",
        "man/man1/fwdd.1",
        "man/man1/fwdd-check-config.1",
        "man/man1/fwdctl.1",
        "man/man1/fwdctl-status.1",
    ] {
        assert!(tree.join(f).is_file(), "{f} missing from the tarball");
    }
    // The relay under both names fwdd looks for: its own platform's, and
    // the Linux one by CPU, which a macOS tarball carries too. One file.
    let relay = check_relay_beside_fwdd(&tree.join("bin"));
    assert_eq!(relay, tree.join("bin").join(linux_relay_name()));
    relay_fwdd_finds(&tree.join("bin"), &Platform::runner(), &mac_runner());
    {
        use std::os::unix::fs::MetadataExt;
        let own = std::fs::metadata(tree.join("bin").join(RELAY)).expect("bin/fwd-udp-relay");
        let named = std::fs::metadata(&relay).unwrap();
        assert_eq!(
            (own.dev(), own.ino()),
            (named.dev(), named.ino()),
            "hard-linked"
        );
        let built = std::fs::metadata(bin(RELAY)).unwrap();
        assert!(own.len() < built.len(), "stripped: {} bytes", own.len());
    }
    let shipped = std::fs::read_to_string(tree.join("completions/bash/fwdctl")).unwrap();
    assert_eq!(
        shipped,
        run_ok(Command::new(bin("fwdctl")).args(["completions", "bash"]))
    );
    if let Some(text) = man_renders(Some(&tree.join("man")), "fwdctl-status") {
        assert!(text.contains("--json"), "{text}");
    }
    let v = run_ok(Command::new(tree.join("bin/fwdd")).arg("--version"));
    assert_eq!(v, run_ok(Command::new(bin("fwdd")).arg("--version")));

    // install.sh from the tarball uses the tarball's bin/ (no FWD_BIN_DIR).
    let d = tmp.path().join("root");
    run_ok(
        Command::new("bash")
            .arg(tree.join("install.sh"))
            .env("DESTDIR", &d)
            .env("PREFIX", PREFIX)
            .env("FWD_PLATFORM", "linux")
            .env_remove("FWD_BIN_DIR"),
    );
    check_linux_tree(&d);
    let named = staged(&d, &format!("{PREFIX}/bin/{}", linux_relay_name()));
    assert!(named.is_file(), "{} installed", named.display());
}

/// A macOS tarball, put together on Linux as a macOS build machine would:
/// it carries the Linux relays it is given (built on Linux), and without
/// them it is built all the same, with a warning.
#[test]
fn macos_tarball_carries_the_linux_relays_it_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let relays = tmp.path().join("relays");
    std::fs::create_dir(&relays).unwrap();
    std::fs::copy(bin(RELAY), relays.join(linux_relay_name())).unwrap();
    let macos = std::ffi::OsStr::new("macos");
    let target = std::ffi::OsStr::new("aarch64-apple-darwin");
    let (tree, _) = build_release(
        &tmp.path().join("with"),
        &[
            ("FWD_PLATFORM", macos),
            ("FWD_TARGET", target),
            ("FWD_LINUX_RELAYS", relays.as_os_str()),
        ],
    );
    relay_fwdd_finds(&tree.join("bin"), &Platform::runner(), &mac_runner());
    assert!(
        !tree.join("bin").join(RELAY).exists(),
        "no relay of the Mac's own: no Docker host runs macOS"
    );
    let d = tmp.path().join("root");
    run_ok(
        Command::new("bash")
            .arg(tree.join("install.sh"))
            .env("DESTDIR", &d)
            .env("PREFIX", PREFIX)
            .env("FWD_PLATFORM", "macos")
            .env("HOME", "/Users/ci")
            .env_remove("FWD_BIN_DIR"),
    );
    relay_fwdd_finds(
        &staged(&d, &format!("{PREFIX}/bin")),
        &Platform::runner(),
        &mac_runner(),
    );

    let (tree, stderr) = build_release(
        &tmp.path().join("without"),
        &[("FWD_PLATFORM", macos), ("FWD_TARGET", target)],
    );
    assert!(tree.join("bin/fwdd").is_file());
    assert!(stderr.contains("no UDP relay"), "{stderr}");
}

/// A relay that needs the build machine's dynamic loader would fail on a
/// host of another glibc: neither package script takes one.
#[test]
fn a_dynamically_linked_relay_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bins = tmp.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    for b in ["fwdd", "fwdctl"] {
        std::os::unix::fs::symlink(bin(b), bins.join(b)).unwrap();
    }
    // fwdd itself is linked dynamically.
    std::os::unix::fs::symlink(bin("fwdd"), bins.join(RELAY)).unwrap();
    let mut scripts = vec!["build-release.sh"];
    if fwd_packaging_tests::find_tool("dpkg-deb").is_some() {
        scripts.push("build-deb.sh");
    }
    for script in scripts {
        let out = run(Command::new("bash")
            .arg(workspace().join("packaging").join(script))
            .env("FWD_BIN_DIR", &bins)
            .env("DIST", tmp.path().join("dist"))
            .env("FWD_PLATFORM", "linux"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{script} took it");
        assert!(
            stderr.contains("not a static executable") && stderr.contains("crt-static"),
            "{script}: {stderr}"
        );
    }
    assert!(!tmp.path().join("dist").exists(), "nothing built");
}
