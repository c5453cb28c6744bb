//! fwdd: keeps every published TCP port of the containers on remote Docker
//! hosts reachable on this machine's loopback, through one supervised
//! OpenSSH ControlMaster per host.

mod config;
mod control;
mod daemon;
mod forwards;
mod handler;
mod host;
mod status;

use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::{CliOverrides, Config, LogFormat};
use crate::daemon::Daemon;

pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FWD_GIT_COMMIT"), ")");

/// Keep the published ports of remote Docker containers reachable on localhost.
///
/// fwdd holds one SSH ControlMaster connection per Docker host, follows the
/// host's container events over it, and listens on 127.0.0.1 and [::1] for
/// every published TCP port of every running container. Each connection is
/// handed to the master, so it reaches the container's port on the host.
///
/// Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for invalid
/// configuration, 1 when the daemon cannot start (e.g. another fwdd runs).
#[derive(Debug, Parser)]
#[command(name = "fwdd", version = VERSION)]
struct Args {
    /// Docker host to forward from, as ssh://[user@]host[:port]; repeatable.
    /// The user's ssh configuration applies (aliases, keys, ProxyJump, ...).
    #[arg(long = "host", value_name = "URL")]
    hosts: Vec<String>,
    /// TOML configuration file (see config/fwdd.toml). Flags win over it.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Where the control socket and ControlMaster sockets live
    /// [default: $XDG_RUNTIME_DIR/fwdd, /run/fwdd for root, else /tmp/fwdd-UID].
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<std::path::PathBuf>,
    /// Log format: text for people, json for machines [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// ssh client configuration file for --host hosts (ssh -F).
    #[arg(long, value_name = "FILE")]
    ssh_config: Option<std::path::PathBuf>,
    /// Identity file (private key) for --host hosts (ssh -i).
    #[arg(long, value_name = "FILE")]
    identity: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(CliOverrides {
        config_file: args.config,
        hosts: args.hosts,
        ssh_config: args.ssh_config,
        identity_file: args.identity,
        runtime_dir: args.runtime_dir,
        log_format: args.log_format,
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fwdd: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    if let Err(e) = prepare_runtime_dir(&config.runtime_dir) {
        eprintln!(
            "fwdd: runtime directory {}: {e}",
            config.runtime_dir.display()
        );
        return ExitCode::from(2);
    }
    let daemon = Daemon::new(config);
    for h in &daemon.hosts {
        if let Err(e) = fwd_ssh::check_control_path_len(&h.control_path) {
            eprintln!("fwdd: {e} (choose a shorter --runtime-dir)");
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fwdd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run(daemon)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "fatal", error = %format!("{e:#}"), "fwdd: {e:#}");
            eprintln!("fwdd: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FWD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The runtime directory holds sockets that grant use of the SSH
/// connection: it must be ours alone.
fn prepare_runtime_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let md = std::fs::metadata(dir)?;
    if md.uid() != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::other("it is owned by another user"));
    }
    if md.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

async fn run(daemon: Rc<Daemon>) -> anyhow::Result<()> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let control_path = daemon
        .config
        .runtime_dir
        .join(fwd_proto::CONTROL_SOCKET_NAME);
    let control = control::ControlServer::bind(&control_path, control::ControlConfig::default())?;
    let d = daemon.clone();
    let control_task =
        tokio::task::spawn_local(control.run(move || status::snapshot(&d), shutdown_rx.clone()));

    let mut supervisors = Vec::new();
    for h in &daemon.hosts {
        supervisors.push(tokio::task::spawn_local(host::supervise(
            daemon.clone(),
            h.clone(),
            shutdown_rx.clone(),
        )));
    }
    let retry_task = tokio::task::spawn_local(daemon.clone().retry_conflicts());
    tracing::info!(
        event = "started",
        version = VERSION,
        hosts = daemon.hosts.len(),
        control_socket = %control_path.display(),
        "fwdd started"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(event = "stopping", signal = which, "stopping on {which}");

    // Ports first: nothing new may be accepted while the rest winds down.
    daemon.release_all();
    retry_task.abort();
    let _ = shutdown_tx.send(true);
    let all = futures_join_all(supervisors);
    if tokio::time::timeout(Duration::from_millis(1500), all)
        .await
        .is_err()
    {
        tracing::warn!(event = "stop_timeout", "a host did not stop in time");
    }
    for h in &daemon.hosts {
        let _ = std::fs::remove_file(&h.control_path);
    }
    let _ = tokio::time::timeout(Duration::from_millis(300), control_task).await;
    tracing::info!(event = "stopped", "fwdd stopped");
    Ok(())
}

async fn futures_join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
