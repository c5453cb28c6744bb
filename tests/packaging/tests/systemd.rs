//! The systemd units: `systemd-analyze verify` accepts them (pointed at a
//! built fwdd, since verify insists that ExecStart's binary exists), their
//! command lines use only what fwdd offers, and the contract with the daemon
//! (notify, watchdog, runtime dir, config path, hardening) is in place.

use std::path::{Path, PathBuf};
use std::process::Command;

use fwd_packaging_tests::{bin, fwdd_help, require_tool, run, unit_with_binary, workspace, Unit};

fn system_unit() -> PathBuf {
    workspace().join("systemd/fwdd.service")
}

fn user_unit() -> PathBuf {
    workspace().join("systemd/fwdd-user.service")
}

/// Runs `systemd-analyze [--user] verify` on a copy of `unit` whose
/// ExecStart points at the built fwdd. Any diagnostic about the unit fails
/// the test, not only a non-zero exit: systemd reports bad values
/// ("Failed to parse ..., ignoring") as warnings with exit status 0.
fn verify(unit: &Path, user: bool) {
    let Some(analyze) = require_tool("systemd-analyze", "systemd") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = unit_with_binary(unit, &bin("fwdd"), dir.path(), "fwdd.service");
    let mut cmd = Command::new(analyze);
    if user {
        // The user manager wants a runtime dir to resolve %t and
        // RuntimeDirectory=; give it a private one.
        let xdg = dir.path().join("xdg");
        std::fs::create_dir(&xdg).expect("mkdir xdg");
        cmd.arg("--user").env("XDG_RUNTIME_DIR", &xdg);
    }
    cmd.args(["verify", "--man=no"]).arg(&copy);
    let out = run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_us: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("fwdd") || l.contains(&*copy.to_string_lossy()))
        .collect();
    assert!(
        out.status.success() && about_us.is_empty(),
        "systemd-analyze verify {} ({}):\n{stderr}",
        unit.display(),
        out.status
    );
}

/// `systemd-analyze security --offline` exposure score of a unit.
fn exposure(unit: &Path, user: bool) -> Option<f64> {
    let analyze = require_tool("systemd-analyze", "systemd")?;
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = unit_with_binary(unit, &bin("fwdd"), dir.path(), "fwdd.service");
    let mut cmd = Command::new(analyze);
    if user {
        let xdg = dir.path().join("xdg");
        std::fs::create_dir(&xdg).expect("mkdir xdg");
        cmd.arg("--user").env("XDG_RUNTIME_DIR", &xdg);
    }
    cmd.args(["security", "--offline=true", "--no-pager"])
        .arg(&copy);
    let out = run(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    if text.is_empty() && String::from_utf8_lossy(&out.stderr).contains("--offline") {
        eprintln!("SKIPPED: this systemd-analyze has no security --offline");
        return None;
    }
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    let score = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    Some(score)
}

#[test]
fn system_unit_verifies() {
    verify(&system_unit(), false);
}

#[test]
fn user_unit_verifies() {
    verify(&user_unit(), true);
}

#[test]
fn verify_catches_a_bad_value() {
    // The check above is only worth something if a typo is caught.
    let Some(_) = require_tool("systemd-analyze", "systemd") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(system_unit()).expect("read unit");
    let bad = dir.path().join("fwdd.service");
    std::fs::write(&bad, text.replace("WatchdogSec=60", "WatchdogSec=sixty")).expect("write");
    let result = std::panic::catch_unwind(|| verify(&bad, false));
    assert!(result.is_err(), "WatchdogSec=sixty passed verification");
}

#[test]
fn units_are_hardened() {
    // systemd's own score: 0 (locked down) .. 10 (exposed). Both units are
    // far below "MEDIUM" (> 5); keep them there.
    if let Some(score) = exposure(&system_unit(), false) {
        assert!(score <= 2.5, "system unit exposure {score} > 2.5");
    }
    if let Some(score) = exposure(&user_unit(), true) {
        assert!(score <= 3.5, "user unit exposure {score} > 3.5");
    }
}

/// What both units must say; `user` selects the differences.
fn check_contract(unit: &Unit, user: bool) {
    let s = |k: &str| unit.get("Service", k);
    assert_eq!(s("Type"), Some("notify"));
    assert_eq!(s("NotifyAccess"), Some("main"));
    assert_eq!(s("WatchdogSec"), Some("60"));
    assert_eq!(s("Restart"), Some("on-failure"));
    assert_eq!(s("RestartSec"), Some("2"));
    assert_eq!(
        s("RestartPreventExitStatus"),
        Some("2"),
        "exit 2 = invalid config"
    );
    assert_eq!(s("RuntimeDirectory"), Some("fwdd"));
    assert_eq!(s("RuntimeDirectoryMode"), Some("0700"));
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ),
    ] {
        assert_eq!(s(k), Some(v), "{k}=");
    }
    // The key location decides how much of /home the service may see.
    assert_eq!(
        s("ProtectHome"),
        Some(if user { "read-only" } else { "yes" }),
        "ProtectHome="
    );
    assert_eq!(
        unit.all("Service", "ExecReload").last().copied(),
        Some("/bin/kill -HUP $MAINPID")
    );

    // ExecStart: our binary, flags fwdd knows, the runtime dir of
    // RuntimeDirectory= (%t/fwdd), a fixed config path.
    let words = unit.exec_start();
    assert_eq!(words[0], "/usr/bin/fwdd");
    let problems = fwdd_help().check_args(&words[1..]);
    assert!(problems.is_empty(), "ExecStart {words:?}: {problems:?}");
    assert_eq!(
        unit.exec_start_flag("--runtime-dir").as_deref(),
        Some("%t/fwdd")
    );
    let config = unit
        .exec_start_flag("--config")
        .expect("--config in ExecStart");
    if user {
        assert_eq!(config, "%E/fwd/fwdd.toml");
        assert_eq!(unit.get("Install", "WantedBy"), Some("default.target"));
    } else {
        assert_eq!(config, "/etc/fwd/fwdd.toml");
        assert_eq!(s("User"), Some("fwd"));
        assert_eq!(unit.get("Install", "WantedBy"), Some("multi-user.target"));
    }
    // ExecReload validates the same file first.
    let reload: Vec<&str> = unit.all("Service", "ExecReload");
    assert_eq!(
        reload.first().copied(),
        Some(format!("/usr/bin/fwdd check-config {config}").as_str())
    );
}

#[test]
fn system_unit_contract() {
    check_contract(&Unit::read(&system_unit()), false);
}

#[test]
fn user_unit_contract() {
    check_contract(&Unit::read(&user_unit()), true);
}

#[test]
fn reload_uses_check_config() {
    // The unit's ExecReload runs `fwdd check-config FILE` first: it must
    // accept the shipped example (exit 0) and refuse a bad file (exit 2).
    let example = workspace().join("config/fwdd.toml");
    let out = run(Command::new(bin("fwdd")).arg("check-config").arg(&example));
    assert!(
        out.status.success(),
        "fwdd check-config config/fwdd.toml: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "connect_wait = \"soon\"\n").expect("write");
    let out = run(Command::new(bin("fwdd")).arg("check-config").arg(&bad));
    assert_eq!(out.status.code(), Some(2), "check-config of a bad file");
}
