//! `packaging/upgrade-running.sh`, what the Debian postinst and install.sh
//! run after new binaries are installed, against a real fwdd and the real
//! fwdctl. Only `systemctl` is a stand-in (no service manager runs here):
//! it says the unit is active and records what it is asked.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fwd_packaging_tests::{bin, workspace};

struct Daemon {
    child: Child,
    runtime: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fwdd started from `binary` (a host that never answers: the daemon runs,
/// the host backs off).
fn start(binary: &Path, dir: &Path) -> Daemon {
    let runtime = dir.join("rt");
    let child = spawn_fresh(
        Command::new(binary)
            .args(["--host", "ssh://nobody@127.0.0.1:9", "--runtime-dir"])
            .arg(&runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("fwdd.log")).expect("log")),
    );
    let d = Daemon { child, runtime };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status(&d).status.success() && status(&d).status.code() != Some(1) {
        assert!(Instant::now() < deadline, "fwdd did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

/// Spawns a binary this test just wrote. Another test thread that forks
/// while the file is open for writing holds a copy of that descriptor until
/// its child execs, and exec then fails with ETXTBSY (rust-lang/rust#114554):
/// wait that moment out.
fn spawn_fresh(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Ok(c) => return c,
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("start fwdd: {e}"),
        }
    }
}

fn status(d: &Daemon) -> std::process::Output {
    Command::new(bin("fwdctl"))
        .args(["status", "--json"])
        .env("FWD_SOCKET", d.runtime.join("control.sock"))
        .output()
        .expect("fwdctl")
}

fn upgrades(d: &Daemon) -> u64 {
    let st: serde_json::Value = serde_json::from_slice(&status(d).stdout).expect("status JSON");
    st["daemon"]["upgrades"].as_u64().expect("daemon.upgrades")
}

/// A directory with `systemctl` (answers `is-active` with `active_code`,
/// logs every call) and the real fwdctl.
fn stub_bin(dir: &Path, active_code: i32) -> PathBuf {
    let b = dir.join("stubs");
    std::fs::create_dir_all(&b).expect("stub dir");
    let log = dir.join("systemctl.log");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\n[ \"$1\" = is-active ] && exit {active_code}\nexit 0\n",
        log.display()
    );
    let s = b.join("systemctl");
    std::fs::write(&s, script).expect("write stub");
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::copy(bin("fwdctl"), b.join("fwdctl")).expect("fwdctl");
    b
}

fn run_helper(dir: &Path, stubs: &Path, runtime: &Path) -> std::process::Output {
    let path = format!(
        "{}:{}",
        stubs.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .arg(workspace().join("packaging/upgrade-running.sh"))
        .arg(stubs)
        .env("PATH", path)
        .env("FWD_SOCKET", runtime.join("control.sock"))
        .current_dir(dir)
        .output()
        .expect("run upgrade-running.sh")
}

fn systemctl_calls(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("systemctl.log")).unwrap_or_default()
}

fn installed(dir: &Path) -> PathBuf {
    let p = dir.join("fwdd");
    std::fs::copy(bin("fwdd"), &p).expect("install fwdd");
    p
}

/// Like dpkg: a new file renamed over the old one.
fn replace(with: &Path, at: &Path) {
    let tmp = at.with_extension("dpkg-new");
    std::fs::copy(with, &tmp).expect("copy");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, at).expect("rename");
}

#[test]
fn a_running_fwdd_takes_the_new_binary_over_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = installed(dir.path());
    let d = start(&binary, dir.path());
    let pid = d.child.id();
    replace(&bin("fwdd"), &binary);
    let stubs = stub_bin(dir.path(), 0);
    let out = run_helper(dir.path(), &stubs, &d.runtime);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("(pid {pid}) →")), "{stdout}");
    assert_eq!(upgrades(&d), 1);
    assert_eq!(
        systemctl_calls(dir.path()).trim(),
        "is-active --quiet fwdd.service",
        "no restart"
    );
}

#[test]
fn a_refused_upgrade_falls_back_to_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = installed(dir.path());
    let d = start(&binary, dir.path());
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").expect("write");
    replace(&broken, &binary);
    let stubs = stub_bin(dir.path(), 0);
    let out = run_helper(dir.path(), &stubs, &d.runtime);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("restarting it"));
    assert_eq!(
        systemctl_calls(dir.path()).lines().collect::<Vec<_>>(),
        ["is-active --quiet fwdd.service", "try-restart fwdd.service"]
    );
    assert_eq!(upgrades(&d), 0, "the old image still runs");
}

#[test]
fn nothing_happens_when_the_service_is_not_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stubs = stub_bin(dir.path(), 3);
    let out = run_helper(dir.path(), &stubs, &dir.path().join("rt"));
    assert!(out.status.success());
    assert_eq!(
        systemctl_calls(dir.path()).trim(),
        "is-active --quiet fwdd.service"
    );
}
