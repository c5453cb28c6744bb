//! The README's one command, `bash scripts/demo.sh`, run as a newcomer
//! would (as root, from the checkout), with `FWD_DEMO_CHECK=1`: it starts a
//! sandbox of its own, runs every command of its tour in the runner's shell
//! it prints, and removes everything it started. The shared sandbox only
//! says that this machine can run it.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::bin;

/// The demo's sandbox, from the line demo.sh prints: `sandbox DIR (run ID)`.
fn sandbox_of(text: &str) -> Option<(PathBuf, String)> {
    let line = text.lines().find(|l| l.starts_with("demo.sh: sandbox "))?;
    let mut words = line.split_whitespace().skip(2);
    let dir = PathBuf::from(words.next()?);
    let run_id = words.nth(1)?.trim_end_matches(':').trim_end_matches(')');
    Some((dir, run_id.to_string()))
}

/// Every process whose command line names `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = format!("{}/", dir.display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmd| cmd.contains(&needle))
        .collect()
}

#[test]
fn the_demo_tours_ports_engine_socket_expose_metrics_and_doctor_then_leaves_nothing() {
    if fwd_e2e::Sandbox::get().is_none() {
        return;
    }
    let bin_dir = bin("fwdd").parent().expect("bin dir").to_path_buf();
    bin("fwdctl");
    assert!(
        Path::new(env!("CARGO_BIN_EXE_fwd-demo")).starts_with(&bin_dir),
        "fwd-demo is built beside fwdd"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let child = Command::new("bash")
        .arg("scripts/demo.sh")
        .current_dir(&repo)
        .env("FWD_DEMO_CHECK", "1")
        .env("FWD_BIN_DIR", &bin_dir)
        .env_remove("FWD_SANDBOX")
        .env_remove("FWD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/demo.sh");
    // Its own waits are bounded (dockerd 60 s, the first forward 60 s, each
    // step 90 s); past these it hangs, and the test says so. Its output is
    // read as it comes (a full pipe would stop it).
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(600)) {
        Ok(out) => out.expect("demo.sh's output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            panic!("scripts/demo.sh did not finish within 10 minutes");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n--- stderr\n{stderr}");
    assert!(
        out.status.success(),
        "demo.sh failed ({}):\n{all}",
        out.status
    );

    // The tour: one shell command, then the README's commands, each run in it.
    let shell_line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("/tmp/fwdsb.") && l.ends_with("/shell"));
    assert!(
        shell_line.is_some(),
        "the tour names the runner's shell:\n{all}"
    );
    for step in [
        "fwdctl status",
        "curl localhost:8080",
        r#"eval "$(fwdctl env)"; docker ps"#,
        "docker run -d -p 9000:8080 fwd-test/busybox httpd -f -p 8080 -h /www; fwdctl wait 9000; curl localhost:9000",
        "fwdctl expose 9633",
        "curl 127.0.0.1:9633/metrics",
        "fwdctl doctor",
    ] {
        assert!(
            stdout.contains(&format!("demo check ok: {step}")),
            "step {step:?} did not pass:\n{all}"
        );
    }
    assert!(
        stdout.contains("demo check ok: docker run --rm fwd-test/busybox wget -qO- http://"),
        "a container did not reach the exposed port:\n{all}"
    );
    assert!(!stdout.contains("FAILED"), "{all}");

    // Nothing it started is left: its directory, processes, namespaces,
    // veths (containers lived in its dockerd's directory).
    let (dir, run_id) = sandbox_of(&stderr).unwrap_or_else(|| panic!("no sandbox line:\n{all}"));
    assert!(!dir.exists(), "{} is left", dir.display());
    assert_eq!(
        processes_under(&dir),
        Vec::<String>::new(),
        "processes left"
    );
    let netns = fwd_e2e::run_ok(Command::new("ip").args(["netns", "list"]));
    assert!(
        !netns.contains(&run_id),
        "namespaces of run {run_id} left:\n{netns}"
    );
    let links = fwd_e2e::run_ok(Command::new("ip").args(["-o", "link", "show"]));
    assert!(
        !links.contains(&format!("fw{run_id}")),
        "veths of run {run_id} left:\n{links}"
    );
    let users = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    assert!(
        !users.contains(&format!("fwd{run_id}")),
        "users of run {run_id}:\n{users}"
    );
}
