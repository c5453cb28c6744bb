//! The demo behind `scripts/demo.sh`, on the sandbox demo.sh starts (a
//! dockerd in a network namespace of its own): an sshd for it that allows
//! `expose`, a "runner" namespace with fwdd in it (engine socket, metrics),
//! a container whose port answers on the runner's localhost, and a tour of
//! the README's commands, run from a shell in that namespace. Runs until
//! Ctrl-C; with `FWD_DEMO_CHECK=1` it runs the tour itself and exits, 0 only
//! if every step did what the tour says.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use fwd_e2e::{netns_path, Sandbox, TestHost};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

/// Where fwdd serves its metrics in the runner's namespace (the README's address).
const METRICS: &str = "127.0.0.1:9633";

/// One command of the tour: shown as is, and run as is in the check.
struct Step {
    command: String,
    /// What it shows, as a comment beside it.
    says: String,
    /// Its output holds this when it did what `says` says (besides exit 0).
    expect: String,
    /// It uses `DOCKER_HOST` as an earlier step's `eval "$(fwdctl env)"`
    /// left it in the shell (the check runs each step in a shell of its own).
    after_env: bool,
}

fn main() -> ExitCode {
    let Some(sb) = Sandbox::get() else {
        eprintln!("fwd-demo: no sandbox; run it with: bash scripts/demo.sh");
        return ExitCode::from(2);
    };
    let Some(bin_dir) = std::env::var_os("FWD_BIN_DIR").map(PathBuf::from) else {
        eprintln!("fwd-demo: FWD_BIN_DIR (where fwdd and fwdctl are) is not set; run it with: bash scripts/demo.sh");
        return ExitCode::from(2);
    };
    let check = std::env::var_os("FWD_DEMO_CHECK").is_some_and(|v| v == "1");
    let host = TestHost::new(sb, "demo");
    // What `fwdctl expose` needs of the Docker host's sshd (the default,
    // `no`, binds remote forwards to its loopback only).
    host.add_sshd_config("GatewayPorts clientspecified");
    let id = host.httpd_with(&["--name", "web", "-p", "8080:8080"]);
    // What host-gateway names: the default bridge's address on the Docker
    // host (older engines leave it out of the network's IPAM config).
    let Some(gateway) = bridge_gateway(sb) else {
        eprintln!("fwd-demo: the sandbox's dockerd has no docker0 address");
        return ExitCode::from(1);
    };
    let runtime_dir = host.dir.join("rt");
    let socket = runtime_dir.join("control.sock");
    let log_path = sb.dir.join("fwdd.log");
    let shell = match write_runner_shell(sb, &host, &bin_dir, &socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "fwd-demo: cannot write the runner's shell under {}: {e}",
                sb.dir.display()
            );
            return ExitCode::from(1);
        }
    };
    let mut fwdd = match spawn_fwdd(&host, &bin_dir, &runtime_dir, &log_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "fwd-demo: cannot start fwdd from {}: {e}",
                bin_dir.display()
            );
            return ExitCode::from(1);
        }
    };
    FWDD_PID.store(fwdd.id() as i32, Ordering::SeqCst);
    println!(
        "fwd demo: fwdd is starting (its log: {})",
        log_path.display()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.http_get(8080).is_err() {
        if let Ok(Some(status)) = fwdd.try_wait() {
            eprintln!("fwd-demo: fwdd exited ({status}); the end of its log:");
            print_tail(&log_path);
            return ExitCode::from(1);
        }
        if Instant::now() >= deadline {
            eprintln!("fwd-demo: localhost:8080 did not answer within 60s; the end of fwdd's log:");
            print_tail(&log_path);
            stop(&mut fwdd);
            return ExitCode::from(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let steps = tour(sb, &id, &gateway);
    print_tour(sb, &host, &shell, &log_path, &steps, check);
    let ok = if check {
        let mut ok = run_tour(&shell, &steps);
        ok &= log_names_the_route(sb, &id, &log_path);
        stop(&mut fwdd);
        ok
    } else {
        wait_for_ctrl_c(&mut fwdd, &log_path)
    };
    // Dropping the host removes its containers, sshd and runner namespace;
    // demo.sh then removes the sandbox.
    drop(host);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn bridge_gateway(sb: &Sandbox) -> Option<String> {
    let out = sb
        .remote_command("ip")
        .args(["-o", "-4", "addr", "show", "dev", "docker0"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let cidr = words
        .iter()
        .position(|w| *w == "inet")
        .and_then(|i| words.get(i + 1))?;
    cidr.split('/').next().map(str::to_string)
}

fn spawn_fwdd(
    host: &TestHost,
    bin_dir: &Path,
    runtime_dir: &Path,
    log_path: &Path,
) -> io::Result<Child> {
    let log = fs::File::create(log_path)?;
    host.runner_command(bin_dir.join("fwdd"))
        .arg("--host")
        .arg(format!("ssh://{}", host.alias))
        .arg("--ssh-config")
        .arg(&host.ssh_config)
        .arg("--runtime-dir")
        .arg(runtime_dir)
        .arg("--metrics")
        .arg(METRICS)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// `DIR/shell`: a bash in the runner's namespace (where fwdd listens; the
/// user's own shell is not, so `localhost:8080` does not answer there) with
/// fwdctl and fwdd on PATH and FWD_SOCKET naming fwdd's control socket, so
/// the README's commands work as written. Arguments go to bash.
fn write_runner_shell(
    sb: &Sandbox,
    host: &TestHost,
    bin_dir: &Path,
    socket: &Path,
) -> io::Result<PathBuf> {
    let bin = sb.dir.join("bin");
    fs::create_dir_all(&bin)?;
    for name in ["fwdctl", "fwdd"] {
        let _ = fs::remove_file(bin.join(name));
        symlink(bin_dir.join(name), bin.join(name))?;
    }
    let rc = sb.dir.join("bashrc");
    fs::write(
        &rc,
        format!(
            "[ -f ~/.bashrc ] && . ~/.bashrc\n\
             case \":$PATH:\" in *:'{bin}':*) ;; *) PATH='{bin}':\"$PATH\" ;; esac\n\
             export FWD_SOCKET='{socket}'\n\
             PS1=\"(fwd demo runner) $PS1\"\n",
            bin = bin.display(),
            socket = socket.display(),
        ),
    )?;
    let shell = sb.dir.join("shell");
    fs::write(
        &shell,
        format!(
            "#!/bin/sh\n\
             # A shell in the fwd demo's runner namespace, where fwdd runs:\n\
             # fwdctl on PATH, FWD_SOCKET naming fwdd's control socket.\n\
             exec nsenter --net='{ns}' env PATH='{bin}':\"$PATH\" FWD_SOCKET='{socket}' \\\n    \
             bash --rcfile '{rc}' \"$@\"\n",
            ns = netns_path(&host.runner_ns).display(),
            bin = bin.display(),
            socket = socket.display(),
            rc = rc.display(),
        ),
    )?;
    fs::set_permissions(&shell, fs::Permissions::from_mode(0o755))?;
    Ok(shell)
}

fn tour(sb: &Sandbox, container_id: &str, gateway: &str) -> Vec<Step> {
    let image = sb.image.trim_end_matches(":latest");
    let step = |command: String, says: &str, expect: &str, after_env: bool| Step {
        command,
        says: says.to_string(),
        expect: expect.to_string(),
        after_env,
    };
    vec![
        step(
            "fwdctl status".into(),
            "the SSH link, the engine socket and the forwards",
            "healthy",
            false,
        ),
        step(
            "curl localhost:8080".into(),
            "container web's port 8080, on this machine's loopback",
            "hello",
            false,
        ),
        step(
            r#"eval "$(fwdctl env)"; docker ps"#.into(),
            "docker through fwdd's engine socket: no SSH connection per command",
            &container_id[..12],
            false,
        ),
        step(
            format!("docker run -d -p 9000:8080 {image} httpd -f -p 8080 -h /www; fwdctl wait 9000; curl localhost:9000"),
            "a new container's port appears by itself",
            "hello",
            true,
        ),
        step(
            "fwdctl expose 9633".into(),
            "the Docker host's containers reach this machine's port 9633 (fwdd's metrics)",
            "",
            false,
        ),
        step(
            format!("docker run --rm {image} wget -qO- http://{gateway}:9633/healthz"),
            &format!("a container reaches it ({gateway}: host.docker.internal, given --add-host host.docker.internal:host-gateway; this image cannot look names up)"),
            "ok",
            true,
        ),
        step(
            format!("curl {METRICS}/metrics"),
            "fwdd's Prometheus metrics (fwdd runs with --metrics)",
            "fwd_build_info",
            false,
        ),
        step(
            "fwdctl doctor".into(),
            "checks the Docker host's setup, and says how to fix what fails",
            "",
            false,
        ),
    ]
}

fn print_tour(
    sb: &Sandbox,
    host: &TestHost,
    shell: &Path,
    log_path: &Path,
    steps: &[Step],
    check: bool,
) {
    let width = steps
        .iter()
        .map(|s| s.command.len())
        .filter(|&n| n <= 40)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    out.push_str(&format!(
        "\nfwd demo: localhost:8080 answers where fwdd runs.\n\
         \n  Docker host  dockerd + sshd in network namespace {} (sandbox {})\
         \n  runner       fwdd in network namespace {}, its log in {}\n",
        host.remote_ns,
        sb.dir.display(),
        host.runner_ns,
        log_path.display(),
    ));
    out.push_str(&format!(
        "\nThe runner is a network namespace of its own: your shell is not in it\n\
         (localhost:8080 does not answer there). A shell in it, with fwdctl on PATH\n\
         and FWD_SOCKET set (as root, in another terminal):\n\n    {}\n\n\
         Then, as in the README:\n\n",
        shell.display()
    ));
    for s in steps {
        if s.command.len() <= width {
            out.push_str(&format!("    {:width$}  # {}\n", s.command, s.says));
        } else {
            out.push_str(&format!(
                "    {}\n    {:width$}  # {}\n",
                s.command, "", s.says
            ));
        }
    }
    if check {
        out.push_str("\nFWD_DEMO_CHECK=1: running each of them in that shell.\n");
    } else {
        out.push_str("\nCtrl-C here stops fwdd, ends the runner's shells and removes everything the demo\nstarted.\n");
    }
    print!("{out}");
    let _ = io::stdout().flush();
}

/// Runs each step as the tour shows it, in the runner's shell; true when
/// every one exited 0 and said what it should.
fn run_tour(shell: &Path, steps: &[Step]) -> bool {
    let mut all_ok = true;
    for s in steps {
        let script = if s.after_env {
            format!(r#"eval "$(fwdctl env)"; {}"#, s.command)
        } else {
            s.command.clone()
        };
        // Every step is over in seconds; a hung one must not hang the demo.
        let out = Command::new("timeout")
            .arg("90")
            .arg(shell)
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null())
            .output();
        let (ok, text) = match out {
            Ok(o) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                (o.status.success() && text.contains(&s.expect), text)
            }
            Err(e) => (false, format!("cannot run {}: {e}", shell.display())),
        };
        if ok {
            println!("demo check ok: {}", s.command);
        } else {
            all_ok = false;
            println!("demo check FAILED: {}\n{text}", s.command);
        }
    }
    all_ok
}

/// fwdd's log says where port 8080's connections go as status does: the
/// container's own address (the direct route), not the port published on
/// the Docker host that the first plan, made before the engine said it runs
/// rootful, pointed at.
fn log_names_the_route(sb: &Sandbox, container_id: &str, log_path: &Path) -> bool {
    let ip = sb.docker_ok(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.IPAddress}}",
        container_id,
    ]);
    let want = format!("remote={ip}:8080 route=\"direct\"");
    let log = fs::read_to_string(log_path).unwrap_or_default();
    let last = log
        .lines()
        .rev()
        .find(|l| {
            l.contains(" port=8080 ")
                && (l.contains("event=\"forward_added\"")
                    || l.contains("event=\"forward_retargeted\""))
        })
        .unwrap_or_default();
    if last.contains(&want) {
        println!("demo check ok: fwdd's log names the route status shows ({ip}:8080, direct)");
        true
    } else {
        println!("demo check FAILED: fwdd's log names the route status shows ({want}); its last line on port 8080:\n{last}");
        false
    }
}

/// fwdd's pid, for the signal handler: Ctrl-C reaches fwdd with us, a
/// SIGTERM to the demo alone is passed on to it.
static FWDD_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn stop_fwdd(_: i32) {
    let pid = FWDD_PID.load(Ordering::SeqCst);
    if pid > 0 {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

/// Waits until fwdd ends: after Ctrl-C (or SIGTERM) it stops cleanly and
/// the demo lives on to remove what it started. True unless fwdd ended by
/// itself.
fn wait_for_ctrl_c(fwdd: &mut Child, log_path: &Path) -> bool {
    let action = SigAction::new(
        SigHandler::Handler(stop_fwdd),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only loads an atomic and calls kill(2), both
        // async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            eprintln!(
                "fwd-demo: cannot handle {sig}: {e}; Ctrl-C may leave the sandbox to demo.sh"
            );
        }
    }
    match fwdd.wait() {
        Ok(status) if status.success() => {
            println!("\nfwd demo: fwdd stopped; removing the sandbox");
            true
        }
        Ok(status) => {
            eprintln!("\nfwd-demo: fwdd exited ({status}); the end of its log:");
            print_tail(log_path);
            false
        }
        Err(e) => {
            eprintln!("fwd-demo: waiting for fwdd: {e}");
            false
        }
    }
}

/// SIGTERM, as a service manager stops fwdd, and wait for it.
fn stop(fwdd: &mut Child) {
    let _ = kill(Pid::from_raw(fwdd.id() as i32), Signal::SIGTERM);
    let _ = fwdd.wait();
}

fn print_tail(path: &Path) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[lines.len().saturating_sub(30)..] {
        eprintln!("  {l}");
    }
}
