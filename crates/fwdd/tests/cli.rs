//! fwdd's command line: bad input is refused before anything starts, with
//! exit status 2 and a message that names what is wrong.

use std::process::Command;

fn fwdd(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fwdd"))
        .args(args)
        .env_remove("FWD_LOG")
        .output()
        .expect("run fwdd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch directory, removed when dropped (also when the test fails).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("scratch dir")
}

/// `fwdd.toml` of `text` in a scratch directory (kept while the guard lives).
fn config_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = scratch();
    let cfg = dir.path().join("fwdd.toml");
    std::fs::write(&cfg, text).expect("write");
    (dir, cfg)
}

/// `fwdd check-config FILE`, without a host from the environment.
fn check_config(cfg: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fwdd"))
        .arg("check-config")
        .arg(cfg)
        .env_remove("FWD_HOST")
        .output()
        .expect("run fwdd")
}

#[test]
fn no_host_is_an_error() {
    let (code, err) = fwdd(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--host"), "{err}");
}

#[test]
fn a_bad_url_is_named() {
    let (code, err) = fwdd(&["--host", "ssh://-oProxyCommand=evil"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--host #1.url"), "{err}");
}

#[test]
fn a_bad_duration_in_the_file_names_the_key() {
    let (_dir, cfg) = config_file("[[host]]\nurl = \"ssh://h\"\nhealth_interval = \"often\"\n");
    let (code, err) = fwdd(&["--config", cfg.to_str().expect("utf8 path")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("host[0].health_interval"), "{err}");
}

#[test]
fn a_runtime_dir_too_long_for_a_control_socket_is_refused() {
    let dir = scratch();
    let long = dir.path().join("d".repeat(100));
    let (code, err) = fwdd(&[
        "--host",
        "ssh://h",
        "--runtime-dir",
        long.to_str().expect("utf8 path"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("shorter --runtime-dir"), "{err}");
}

/// The runtime directory policy is checked before anything starts, and the
/// message says what to change.
#[test]
fn an_unfit_runtime_dir_is_refused_at_start() {
    let dir = scratch();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).expect("mkdir");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let file = dir.path().join("file");
    std::fs::write(&file, b"").expect("write");
    for (path, says) in [(&link, "symbolic link"), (&file, "not a directory")] {
        let (code, err) = fwdd(&[
            "--host",
            "ssh://h",
            "--runtime-dir",
            path.to_str().expect("utf8 path"),
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.starts_with("fwdd: refusing runtime directory "),
            "{err}"
        );
        assert!(err.contains(says), "{err}");
        assert!(err.contains("--runtime-dir or FWD_RUNTIME_DIR"), "{err}");
    }
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_fwdd"))
        .arg("--version")
        .output()
        .expect("run fwdd");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("fwdd 0.") && text.contains('('), "{text}");
}

/// Logs that go to a pipe (a log file, the journal, launchd) carry no colour codes:
/// `event="fatal"` stays one greppable string. The start fails on purpose (the
/// control socket's place is taken by a plain file) after logging is set up.
#[test]
fn logs_to_a_pipe_have_no_colour() {
    let dir = scratch();
    let runtime = dir.path().join("rt");
    std::fs::create_dir_all(&runtime).expect("runtime dir");
    std::fs::write(runtime.join("control.sock"), b"not a socket").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_fwdd"))
        .args(["--host", "ssh://h", "--runtime-dir"])
        .arg(&runtime)
        .env_remove("FWD_LOG")
        .env_remove("FWD_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .output()
        .expect("run fwdd");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("event=\"fatal\""), "{log}");
    assert!(!out.stderr.contains(&0x1b), "ESC in piped log: {log:?}");
}

/// check-config prints every effective setting, the rules and host caps included.
#[test]
fn check_config_prints_rules_and_max_forwards() {
    let (_dir, cfg) = config_file(
        "[[rule]]\nports = \"9100-9199\"\naction = \"skip\"\n\
         [[host]]\nname = \"ci\"\nurl = \"ssh://ci@h\"\nmax_forwards = 7\n",
    );
    let out = check_config(&cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("\n[[rule]]\nports = \"9100-9199\"\naction = \"skip\"\n"),
        "{text}"
    );
    assert!(text.contains("\nmax_forwards = 7\n"), "{text}");
}

/// A host's name is part of a socket's file name: check-config refuses a
/// path, naming the key and the fix.
#[test]
fn check_config_refuses_a_host_name_that_is_a_path() {
    let (_dir, cfg) = config_file("[[host]]\nname = \"a/../../x\"\nurl = \"ssh://ci@h\"\n");
    let out = check_config(&cfg);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted:\n{log}");
    assert!(
        log.contains("fwdd.toml:2: host[0].name: \"a/../../x\" has '/'"),
        "{log}"
    );
    assert!(log.contains("e.g. name = \"ci-docker\""), "{log}");
}
