//! fwdd: keeps every published TCP port of the containers on remote Docker
//! hosts reachable on this machine's loopback, through one supervised
//! OpenSSH ControlMaster per host.

mod config;
mod control;
mod daemon;
mod engine;
mod expose;
mod fdlimit;
mod fdstore;
mod forwards;
mod handler;
mod handover;
mod host;
mod hostsfile;
mod loopback;
mod metrics;
mod names;
mod netwatch;
mod notify;
mod private_socket;
mod serve;
mod sleepwatch;
mod status;
mod udp;
mod upgrade;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::{CliOverrides, Config, LogFormat};
use crate::daemon::Daemon;
use crate::version::VERSION;

/// Keep the published ports of remote Docker containers reachable on localhost.
///
/// fwdd holds one SSH ControlMaster connection per Docker host, follows the
/// host's container events over it, and listens on 127.0.0.1 and [::1] for
/// every published TCP port of every running container. Each connection is
/// handed to the master, so it reaches the container's port on the host.
///
/// Settings come from flags, then FWD_* environment variables, then the
/// configuration file. Signals: SIGTERM/SIGINT stop (ports released, master
/// ended, exit 0); SIGHUP reloads the configuration and retries failing hosts;
/// SIGUSR2 upgrades in place to the binary now at the path fwdd was started
/// from, keeping every listener, master and tunnel (as `fwdctl upgrade`).
///
/// Exit status: 0 after a clean shutdown, 2 for invalid configuration, 1
/// when the daemon cannot start (e.g. another fwdd runs).
#[derive(Debug, Parser)]
#[command(name = "fwdd", version = VERSION)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, clap::Args)]
struct Settings {
    /// Docker host to forward from, as ssh://[user@]host[:port]; repeatable
    /// (FWD_HOST takes a comma-separated list). The user's ssh configuration
    /// applies (aliases, keys, ProxyJump, ...).
    #[arg(
        long = "host",
        value_name = "URL",
        env = "FWD_HOST",
        value_delimiter = ','
    )]
    hosts: Vec<String>,
    /// TOML configuration file (see config/fwdd.toml).
    #[arg(long, short = 'c', value_name = "FILE", env = "FWD_CONFIG")]
    config: Option<PathBuf>,
    /// Where the control socket and ControlMaster sockets live
    /// [default: $XDG_RUNTIME_DIR/fwdd, /run/fwdd for root, else /tmp/fwdd-UID].
    #[arg(long, value_name = "DIR", env = "FWD_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    /// Log format: text for people, json for machines [default: text].
    #[arg(long, value_name = "FORMAT", env = "FWD_LOG_FORMAT")]
    log_format: Option<String>,
    /// ssh client configuration file for all hosts (ssh -F).
    #[arg(long, value_name = "FILE", env = "FWD_SSH_CONFIG")]
    ssh_config: Option<PathBuf>,
    /// Identity file (private key) for all hosts (ssh -i).
    #[arg(long, value_name = "FILE", env = "FWD_IDENTITY")]
    identity: Option<PathBuf>,
    /// Serve Prometheus metrics, /healthz and /readyz on ADDR (e.g.
    /// 127.0.0.1:9633; "off" turns it off) [default: off].
    #[arg(long, value_name = "ADDR", env = "FWD_METRICS")]
    metrics: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and print the effective settings; exit 0
    /// when valid, 2 otherwise. Starts nothing.
    CheckConfig {
        /// The file to check (default: --config / FWD_CONFIG).
        file: Option<PathBuf>,
    },
    /// Print, as JSON, this binary's version and the handover versions it
    /// can take over from; a running fwdd asks this of a new binary before
    /// upgrading to it.
    #[command(hide = true)]
    UpgradeCheck,
    /// Print the shell completion script for SHELL
    ///
    /// The packages install them; by hand, e.g.
    /// `fwdd completions zsh > ~/.zfunc/_fwdd`.
    Completions { shell: fwd_manual::Shell },
    /// Write fwdd.1 and a page per subcommand (fwdd-check-config.1) into DIR
    #[command(hide = true)]
    Man { dir: PathBuf },
}

impl Settings {
    fn overrides(&self) -> CliOverrides {
        CliOverrides {
            config_file: self.config.clone(),
            hosts: self.hosts.clone(),
            ssh_config: self.ssh_config.clone(),
            identity_file: self.identity.clone(),
            runtime_dir: self.runtime_dir.clone(),
            log_format: self.log_format.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

fn main() -> ExitCode {
    // First: descriptors handed over by the image this process ran before,
    // or kept for it by systemd's fd store across a crash.
    let stored = fdstore::take_stored_fds();
    let mut takeover = handover::inherited();
    // Before any socket or master: the budget is what the hard limit allows.
    let raised = fdlimit::raise();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if takeover.is_some() => {
            let first = e.render().to_string();
            let first = first
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            return refuse(
                &mut takeover,
                2,
                format!("the new fwdd does not accept its arguments: {first}"),
            );
        }
        Err(e) => e.exit(),
    };
    let mut settings = args.settings;
    if let Some(command) = args.command {
        return answer(command, &mut settings);
    }
    let config = match Config::load(settings.overrides()) {
        Ok(c) => c,
        Err(e) => return refuse(&mut takeover, 2, e.to_string()),
    };
    if let Some(g) = &config.engine_socket_group {
        private_socket::share_engine_with(g.gid);
    }
    if let Err(why) = check_runtime_dir(&config) {
        return refuse(&mut takeover, 2, why);
    }
    init_logging(config.log_format);
    log_open_files(raised);
    let takeover = match takeover {
        Some(Ok(pending)) => Some(pending.take()),
        Some(Err(e)) => {
            tracing::error!(event = "upgrade_takeover_failed", error = %e, "the handover from the previous image cannot be used: {e}; starting afresh");
            None
        }
        None => None,
    };
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
    let reload = move || Config::load(settings.overrides());
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run(config, reload, takeover, stored)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "fatal", error = %format!("{e:#}"), "fwdd: {e:#}");
            eprintln!("fwdd: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Until this image owns the handover, any reason not to start hands it
/// back to the previous image, which carries on.
fn refuse(
    takeover: &mut Option<Result<handover::Inherited, String>>,
    code: u8,
    why: String,
) -> ExitCode {
    match takeover.take() {
        Some(Ok(pending)) => eprintln!("fwdd: {}", pending.roll_back(&why)),
        _ => eprintln!("fwdd: {why}"),
    }
    ExitCode::from(code)
}

/// The subcommands answer and exit: they start nothing.
fn answer(command: Command, settings: &mut Settings) -> ExitCode {
    match command {
        Command::Completions { shell } => generated(fwd_manual::print_completion_script(
            <Args as clap::CommandFactory>::command(),
            shell,
        )),
        Command::Man { dir } => generated(
            fwd_manual::write_man_pages(<Args as clap::CommandFactory>::command(), &dir)
                .map(|_| ()),
        ),
        // The running image asks this of a new binary, with its own
        // arguments: the binary must run, accept them, and understand the
        // handover.
        Command::UpgradeCheck => {
            if let Err(e) = Config::load(settings.overrides()) {
                eprintln!("fwdd: {e}");
                return ExitCode::from(2);
            }
            let answer = handover::CheckAnswer {
                fwdd: VERSION.to_string(),
                handover_versions: handover::ACCEPTED_VERSIONS.to_vec(),
            };
            println!("{}", serde_json::to_string(&answer).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => {
            if file.is_some() {
                settings.config = file;
            }
            match Config::load(settings.overrides()) {
                Ok(c) => {
                    print!("{}", config::render(&c));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fwdd: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn generated(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fwdd: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The runtime directory holds sockets that grant use of the SSH
/// connection: one policy for it, the one every socket binder applies too;
/// and every host's control path must fit in a socket address.
fn check_runtime_dir(config: &Config) -> Result<(), String> {
    private_socket::ensure_private_dir(&config.runtime_dir, fwd_proto::effective_uid()).map_err(
        |e| format!("{e} (the runtime directory is set with --runtime-dir or FWD_RUNTIME_DIR)"),
    )?;
    for i in 0..config.hosts.len() {
        let path = config.runtime_dir.join(format!("h{i}.ctl"));
        fwd_ssh::check_control_path_len(&path)
            .map_err(|e| format!("{e} (choose a shorter --runtime-dir)"))?;
    }
    Ok(())
}

/// Says whether the open-files limit was raised: the caps are shared out of
/// what it is now.
fn log_open_files(raised: std::io::Result<fdlimit::Raised>) {
    match raised {
        Ok(r) if r.now > r.before => tracing::info!(
            event = "open_files_raised",
            before = r.before,
            now = r.now,
            "open-files limit raised from {} to {} (the hard limit); the ssh masters inherit it",
            r.before,
            r.now
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            event = "open_files_not_raised",
            error = %e,
            "the open-files limit could not be raised to the hard limit: {e}; the caps are shared out of {}",
            fdlimit::current()
        ),
    }
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FWD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: in a log file, the journal or launchd's log the
    // escape codes would split `event="link_failed"` and defeat grep.
    let colour = fwd_proto::term::use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(
    config: Config,
    reload: impl Fn() -> Result<Config, config::ConfigError>,
    mut takeover: Option<handover::Takeover>,
    stored: fdstore::StoredFds,
) -> anyhow::Result<()> {
    let net = netwatch::spawn();
    let hosts = config.hosts.clone();
    let control_path = config.runtime_dir.join(fwd_proto::CONTROL_SOCKET_NAME);
    let mut image = handover::Image::current();
    let inherited_control = takeover.as_mut().and_then(|t| {
        image.daemon_started_at = t.daemon_started_at;
        image.upgrades = t.upgrades;
        t.control.take()
    });
    let control = control_server(&control_path, inherited_control, &stored)?;
    let daemon = Daemon::new(
        config,
        net.usable.clone(),
        image,
        (control_path.clone(), control.raw_fd()),
        stored,
    );
    serve_metrics(&daemon, takeover.as_mut().and_then(|t| t.metrics.take()))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let control = control.pause_on(daemon.serve.frozen.subscribe());
    let d = daemon.clone();
    let control_task = tokio::task::spawn_local(control.run(d, shutdown_rx.clone()));

    match takeover {
        Some(t) => upgrade::take_over(&daemon, hosts, t),
        None => {
            for cfg in hosts {
                daemon.add_host(cfg);
            }
        }
    }
    release_stored_after(&daemon, daemon.serve.connect_wait.get());
    let planner = tokio::task::spawn_local(daemon.clone().plan_when_asked());
    spawn_wakers(&daemon, net.changes);
    tracing::info!(
        event = "started",
        version = VERSION,
        hosts = daemon.hosts().len(),
        control_socket = %control_path.display(),
        "fwdd started"
    );
    // Ready once local things are up; the links come when they come.
    notify::ready();
    notify::spawn(daemon.clone());

    let which = serve_signals(&daemon, reload).await?;
    tracing::info!(event = "stopping", signal = which, "stopping on {which}");
    notify::stopping();
    planner.abort();
    daemon.shutdown().await;
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_millis(300), control_task).await;
    tracing::info!(event = "stopped", "fwdd stopped");
    Ok(())
}

/// The control socket: the one the previous image handed over, else the one
/// systemd's fd store kept across a crash (if its file is still there), else
/// a new one, stored with systemd for the next crash.
fn control_server(
    control_path: &std::path::Path,
    inherited: Option<(PathBuf, std::os::fd::OwnedFd)>,
    stored: &fdstore::StoredFds,
) -> anyhow::Result<control::ControlServer> {
    let stored_control = stored
        .take(&fdstore::unix_fd_name(control_path))
        .filter(|_| control_path.exists());
    let config_control = control::ControlConfig::default();
    Ok(match (inherited, stored_control) {
        (Some((path, fd)), _) => control::ControlServer::adopt(&path, fd, config_control)?,
        (None, Some(fd)) => control::ControlServer::adopt(control_path, fd, config_control)?,
        (None, None) => {
            let c = control::ControlServer::bind(control_path, config_control)?;
            c.store_with_systemd(&fdstore::unix_fd_name(control_path));
            c
        }
    })
}

/// Serves the signals until one says stop: SIGHUP reloads the
/// configuration, SIGUSR2 upgrades to the binary on disk. Returns the
/// signal that stopped fwdd.
async fn serve_signals(
    daemon: &Rc<Daemon>,
    reload: impl Fn() -> Result<Config, config::ConfigError>,
) -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
            _ = hup.recv() => {
                notify::reloading();
                match reload() {
                    Ok(new) => daemon.reload(new).await,
                    Err(e) => tracing::error!(event = "reload_failed", error = %e, "not reloading: {e}; the running configuration stays"),
                }
                notify::ready();
            }
            _ = usr2.recv() => {
                let d = daemon.clone();
                // Logged by `upgrade` when it does not happen.
                tokio::task::spawn_local(async move { let _ = upgrade::upgrade(&d, None).await; });
            }
        }
    }
}

/// The metrics endpoint, when configured: the listener the previous image
/// handed over if it is for the same address, else a new one.
fn serve_metrics(
    daemon: &Rc<Daemon>,
    inherited: Option<(std::net::SocketAddr, std::os::fd::OwnedFd)>,
) -> anyhow::Result<()> {
    let Some(addr) = daemon.config.borrow().metrics else {
        return Ok(());
    };
    let listener = match inherited {
        Some((was, fd)) if was == addr => {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true)?;
            l
        }
        _ => metrics::bind(addr)?,
    };
    daemon
        .metrics_listener
        .set(Some((addr, std::os::fd::AsRawFd::as_raw_fd(&listener))));
    metrics::spawn(daemon, listener)?;
    Ok(())
}

/// After a crash restart: listeners systemd kept that no container claims
/// are closed once every host has resynced (the planner does that), or
/// when `connect_wait` has passed, whichever comes first; their ports are
/// free again.
fn release_stored_after(daemon: &Rc<Daemon>, wait: Duration) {
    let count = daemon.serve.stored.len();
    if count == 0 {
        return;
    }
    tracing::info!(event = "fdstore_restored", count, "{count} listening sockets kept by systemd across the restart: clients queued on them are served once the links are up");
    let d = daemon.clone();
    tokio::task::spawn_local(async move {
        tokio::time::sleep(wait).await;
        daemon::release_stored(&d.serve.stored);
    });
}

/// Network changes and wake-ups make every host check its link at once.
fn spawn_wakers(daemon: &Rc<Daemon>, mut net_changes: watch::Receiver<u64>) {
    let d = daemon.clone();
    tokio::task::spawn_local(async move {
        while net_changes.changed().await.is_ok() {
            let usable = *d.net_usable.borrow();
            for h in d.hosts() {
                h.send(fwd_core::Input::Network { usable });
            }
        }
    });
    let d = daemon.clone();
    sleepwatch::spawn(move || {
        for h in d.hosts() {
            h.send(fwd_core::Input::Resumed);
        }
    });
}
