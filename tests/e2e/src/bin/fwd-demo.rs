//! The self-contained demo behind `scripts/demo.sh`: a sandbox Docker host
//! (dockerd + sshd in their own network namespace), a "runner" namespace
//! with fwdd in it, and a container whose port shows up on the runner's
//! localhost. Runs until Ctrl-C, then cleans up.

use std::path::PathBuf;
use std::process::ExitCode;

use fwd_e2e::{wait_until, Sandbox, TestHost};

fn main() -> ExitCode {
    let Some(sb) = Sandbox::get() else {
        eprintln!("fwd-demo: no sandbox; start it with scripts/demo.sh");
        return ExitCode::from(2);
    };
    let bin_dir =
        PathBuf::from(std::env::var_os("FWD_BIN_DIR").unwrap_or_else(|| "target/debug".into()));
    let host = TestHost::new(sb, "demo");
    let id = host.httpd(&["8080:8080"]);
    let runtime_dir = host.dir.join("rt");
    let socket = runtime_dir.join("control.sock");
    let fwdctl = bin_dir.join("fwdctl");
    println!();
    println!("fwd demo");
    println!(
        "  Docker host: dockerd + sshd in network namespace {} (ssh {}:22)",
        host.remote_ns, host.remote_ip
    );
    println!(
        "  runner:      fwdd in network namespace {}",
        host.runner_ns
    );
    println!(
        "  container {} publishes 8080 on the Docker host",
        &id[..12]
    );
    println!();
    println!("In another terminal (as root):");
    println!(
        "  ip netns exec {} curl -s http://localhost:8080/      # through the forward",
        host.runner_ns
    );
    println!(
        "  {} --socket {} status",
        fwdctl.display(),
        socket.display()
    );
    println!(
        "  docker -H unix://{} run -d -p 9000:8080 {} /bin/httpd -f -p 8080 -h /www   # another port appears",
        host.docker_sock.display(),
        host.image
    );
    println!("Ctrl-C stops fwdd and removes the sandbox.");
    println!();
    let mut child = match host
        .runner_command(bin_dir.join("fwdd"))
        .arg("--host")
        .arg(format!("ssh://{}", host.alias))
        .arg("--ssh-config")
        .arg(&host.ssh_config)
        .arg("--runtime-dir")
        .arg(&runtime_dir)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "fwd-demo: cannot start fwdd from {}: {e}",
                bin_dir.display()
            );
            return ExitCode::from(1);
        }
    };
    wait_until(
        std::time::Duration::from_secs(30),
        "the demo port to serve",
        || host.http_get(8080).is_ok(),
    );
    println!(
        ">>> localhost:8080 in {} answers: {:?}",
        host.runner_ns,
        host.http_get(8080).unwrap_or_default()
    );
    // fwdd gets Ctrl-C's SIGINT with us and exits cleanly; then clean up.
    let _ = child.wait();
    ExitCode::SUCCESS
}
