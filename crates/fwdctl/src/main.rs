//! `fwdctl`: command-line client of the fwdd control socket.

use fwd_client as client;
mod doctor;
mod env;
mod expose;
mod human;
mod names;
mod wait;
mod watch;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use fwd_proto::term::for_terminal;
use fwd_proto::{decode_response, error_code, Request, Response};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FWD_GIT_COMMIT"), ")");

const MAIN_HELP: &str = "\
Examples:
  fwdctl status                     the links and every forward, for people
  fwdctl status --json | jq .       the same for scripts (schema: docs/control-api.md)
  fwdctl wait 5432 8080 --timeout 30s
                                    in CI, after `docker compose up -d`: block until
                                    the ports answer through their forwards
  fwdctl watch                      follow changes as they happen
  fwdctl reconnect                  replace the ssh master(s) now

Socket selection: --socket, else --runtime-dir/control.sock, else $FWD_SOCKET, else the
daemon's default ($XDG_RUNTIME_DIR/fwdd, or /run/fwdd as root, or /tmp/fwdd-<uid>).
A socket is refused (exit 2, nothing sent) unless its directory is yours or root's and
nobody else may write in it, and the socket and the process answering on it are yours
or root's (see docs/operations.md, \"Where fwdctl looks, and what it refuses\").

Exit codes: 0 success/healthy; 1 degraded (status), timed out (wait), unknown host
(reconnect, resync); 2 fwdd unreachable (not running, permission denied, a socket
refused as another user's, timeout, protocol error) or it went away; 64 invalid
command line.";

const STATUS_HELP: &str = "\
Exit codes:
  0   healthy
  1   degraded: a host's ssh master is not connected (or its docker event stream
      is down), or a forward is in conflict
  2   fwdd unreachable (not running, permission denied, a socket refused as another
      user's, timeout, protocol error)
  64  invalid command line

Socket selection: --socket, else --runtime-dir/control.sock, else $FWD_SOCKET, else the
daemon's default ($XDG_RUNTIME_DIR/fwdd, or /run/fwdd as root, or /tmp/fwdd-<uid>).
A socket is refused (exit 2, nothing sent) unless its directory is yours or root's and
nobody else may write in it, and the socket and the process answering on it are yours
or root's (see docs/operations.md, \"Where fwdctl looks, and what it refuses\").";

const WAIT_HELP: &str = "\
Each TARGET is one of:
  5432            a local port: ready when it is forwarded (state active) AND a
                  connection through the forward reaches a listener on the Docker host
  web, shop-db-1  a word, looked for as everything it may name, all of what exists:
  web.shop        the containers of that name, the containers of the compose service
                  of that name (`web` in any project, `web.shop` in project shop;
                  compose v1 and v2 alike, whatever they named the containers), and
                  the name fwd serves (hosts with names = true). Only when none of
                  these exists, the containers whose ID starts with it. Ready when
                  all their published TCP ports are, and every port of the name
                  answers as below.
  db:5432         a port of a name fwd serves (names = true): ready when the name is
                  served (state serving) with that port AND fwdctl's own connection to
                  the name's address (e.g. 127.77.0.2:5432) is accepted. That proves
                  fwdd's listener, so fwdctl must run where fwdd does. Unlike a
                  forward's, a name's port is not probed on the Docker host: fwdd
                  hands the connection on like any client's, and a client connecting
                  while the container starts waits for it.
  exposed:18080   an exposure's remote port: ready once fwdd verified it
Targets that do not exist yet are waited for: containers may start after `wait` does.
fwdd is asked every 100 ms.

Examples (CI):
  docker compose up -d
  fwdctl wait web db --timeout 60s         # the compose services, whatever their
                                           # containers are called
  fwdctl wait 5432 6379 --timeout 60s      # then run the tests against localhost

  docker run -d --name db -p 5432:5432 postgres:16
  fwdctl wait db --timeout 2m && psql -h localhost -U postgres -c 'select 1'

  # with names = true, unpublished ports too:
  docker run -d --name db --expose 5432 postgres:16
  fwdctl wait db:5432 --timeout 2m && psql -h db -U postgres -c 'select 1'

  # \"ready\" means the port accepts connections, not that the service finished
  # initialising: keep the service's own readiness check where it matters.

On success, prints `ready after 1.2s: port 5432, web, db:5432` and exits 0. On
timeout, prints one line naming each target still missing and why, e.g.
  fwdctl: timed out after 30s: port 5432 not forwarded (no running container publishes it)
and exits 1.

Exit codes:
  0   every target is served and answers
  1   timed out
  2   fwdd unreachable (not running, permission denied, protocol error)
  64  invalid command line (e.g. a bad --timeout or target)";

const WATCH_HELP: &str = "\
Prints one line per change: forwards added and removed, forward state changes (active,
conflict, pending, with the reason), ssh master state changes (with pid and last error)
and event stream restarts. The first line summarises the state when watching began.
Changes that happen faster than they are read are coalesced (the latest state is always
reported).

  15:04:05 watching fwdd 0.1.0 (pid 812): 1 host (1 connected), 2 forwards (2 active)
  15:04:09 forward added localhost:5432 → db (ci-docker)
  15:04:31 host ci-docker master connected → backoff: transient/lost: connection lost

--json prints each event as one JSON object per line (the first has kind
\"snapshot\" and the full status); fields are documented in docs/control-api.md.

Exit codes:
  0   interrupted (Ctrl-C, SIGTERM)
  2   fwdd unreachable, or it went away while watching";

const HOSTS_HELP: &str = "\
HOST is a host name from fwdd's configuration (as shown by `fwdctl status`); without
it, every host.

Exit codes:
  0   done (the work happens in the background; see `fwdctl status` or `fwdctl watch`)
  1   no host of that name
  2   fwdd unreachable";

#[derive(Debug, Parser)]
#[command(
    name = "fwdctl",
    version = VERSION,
    about = "Query and control fwdd, the Docker port forwarding daemon",
    long_about = "Query and control fwdd, the daemon that keeps the published ports of \
containers on remote Docker hosts reachable on this machine's loopback.",
    after_help = MAIN_HELP
)]
struct Cli {
    /// Control socket of the daemon [env: FWD_SOCKET]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        conflicts_with = "runtime_dir"
    )]
    socket: Option<PathBuf>,

    /// Runtime directory of the daemon; the socket is DIR/control.sock
    #[arg(long, global = true, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the ssh masters, event streams and forwards (exit 1 if degraded)
    #[command(after_help = STATUS_HELP)]
    Status {
        /// Print the status object as sent by the daemon: compact JSON on one line
        /// (schema: docs/control-api.md)
        #[arg(long)]
        json: bool,
    },
    /// Block until ports, containers, compose services or names are served and answer
    /// (for CI scripts)
    #[command(after_help = WAIT_HELP)]
    Wait {
        /// Local port (5432), container, compose service or name (db, web.shop), a
        /// name's port (db:5432), or exposed:PORT
        #[arg(value_name = "TARGET", required = true, value_parser = parse_target)]
        targets: Vec<wait::Target>,
        /// Give up after this long (e.g. 30s, 2m, 1m30s)
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// List the containers served by name: names, address, ports, where
    /// connections go, and names refused (hosts with names = true)
    Names {
        /// Print the list as JSON: an array of the status's `names` objects
        /// (schema: docs/control-api.md)
        #[arg(long)]
        json: bool,
    },
    /// Print state changes as they happen, until interrupted
    #[command(after_help = WATCH_HELP)]
    Watch {
        /// One JSON object per event (schema: docs/control-api.md)
        #[arg(long)]
        json: bool,
    },
    /// Replace the ssh master of HOST (default: every host) now
    #[command(after_help = HOSTS_HELP)]
    Reconnect {
        /// Host name from fwdd's configuration
        host: Option<String>,
    },
    /// List and inspect the containers of HOST (default: every host) again now
    #[command(after_help = HOSTS_HELP)]
    Resync {
        /// Host name from fwdd's configuration
        host: Option<String>,
    },
    /// Replace the running fwdd with the binary now at the path it was started
    /// from, keeping every listener, ssh master and open tunnel
    #[command(after_help = UPGRADE_HELP)]
    Upgrade,
    /// Make a port of this machine reachable from HOST's containers at
    /// host.docker.internal (until `fwdctl unexpose` or fwdd stops)
    #[command(after_help = EXPOSE_HELP)]
    Expose {
        /// PORT, REMOTE_PORT:RUNNER_PORT or REMOTE_PORT:RUNNER_ADDRESS:RUNNER_PORT
        spec: String,
        /// Host name from fwdd's configuration (default: the first host)
        #[arg(long)]
        host: Option<String>,
        /// How long to wait for the verdict (0s: do not wait)
        ///
        /// Until sshd listens and a check through it arrived here, or the
        /// exposure failed. Registering and verifying take well under a second
        /// on a live master; a check may take 5 s to give up.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Check a Docker host's setup (ssh client, host key, key, sshd's
    /// forwarding, the engine, the clock) and say how to fix what fails
    #[command(after_help = DOCTOR_HELP)]
    Doctor {
        /// Check this host directly, without fwdd: ssh://[user@]host[:port]
        #[arg(long, value_name = "URL")]
        host: Option<String>,
        /// ssh client configuration file (ssh -F), with --host
        #[arg(long, value_name = "FILE", requires = "host")]
        ssh_config: Option<PathBuf>,
        /// Identity file (ssh -i), with --host
        #[arg(long, value_name = "FILE", requires = "host")]
        identity: Option<PathBuf>,
        /// The engine's socket on the host, with --host (default: ask its docker CLI)
        #[arg(long, value_name = "PATH", requires = "host")]
        engine_socket: Option<String>,
        /// One JSON array of hosts and their checks
        #[arg(long)]
        json: bool,
    },
    /// Print fwdd's Prometheus metrics (the classic text format, for
    /// node_exporter's textfile collector)
    #[command(after_help = METRICS_HELP)]
    Metrics,
    /// End an exposure made by `fwdctl expose` or the configuration
    #[command(after_help = EXPOSE_HELP)]
    Unexpose {
        /// The exposure's remote port
        port: u16,
        /// Host name from fwdd's configuration (default: the first host)
        #[arg(long)]
        host: Option<String>,
    },
    /// Print the variables that point docker, compose and Testcontainers at
    /// HOST's engine through fwdd (default: the first host)
    #[command(after_help = ENV_HELP)]
    Env {
        /// Host name from fwdd's configuration
        host: Option<String>,
        /// Output syntax
        #[arg(long, value_enum, default_value = "sh")]
        format: env::Format,
    },
    /// Print the shell completion script for SHELL
    ///
    /// The packages install them; by hand, e.g.
    /// `fwdctl completions zsh > ~/.zfunc/_fwdctl`.
    Completions { shell: fwd_manual::Shell },
    /// Write fwdctl.1 and a page per subcommand (fwdctl-status.1, ...) into DIR
    #[command(hide = true)]
    Man { dir: PathBuf },
}

const DOCTOR_HELP: &str = "\
Examples:
  fwdctl doctor                              every host of the running fwdd, as it sees them
  fwdctl doctor --host ssh://ci@docker-1     a host, before fwdd is set up for it
  fwdctl doctor --host ssh://ci@docker-1 --json

With --host, fwdctl opens its own ssh connection (your ssh configuration applies) and
checks: the ssh client, the host key (if unknown: the ssh-keyscan line to run after
checking the fingerprint), authentication, where the engine is, a stream-local channel
to it (sshd's AllowStreamLocalForwarding), the engine's answer (or why not: the docker
group, nothing listening), the host's clock, and GatewayPorts for `expose`.

Exit codes:
  0   every check passed (warnings allowed)
  1   a check failed (each failure says its fix)
  2   could not check (fwdd unreachable without --host, a bad URL)";

const METRICS_HELP: &str = "\
The same series fwdd serves on its metrics endpoint (metrics = \"ADDR\" in the
configuration, or fwdd --metrics ADDR), read over the control socket instead.
For node_exporter's textfile collector, write them atomically, e.g. every minute:
  fwdctl metrics > /var/lib/node_exporter/fwd.prom.$$ && \\
    mv /var/lib/node_exporter/fwd.prom.$$ /var/lib/node_exporter/fwd.prom
The metrics and the alert rules are described in docs/operations.md.

Exit codes:
  0   printed
  2   fwdd unreachable (not running, permission denied, timeout, protocol error)";

const EXPOSE_HELP: &str = "\
Examples:
  fwdctl expose 18080                 containers reach 127.0.0.1:18080 here at
                                      host.docker.internal:18080
  fwdctl expose 8080:3000 --host ci   ... at host.docker.internal:8080, on host ci
  fwdctl wait exposed:18080           until sshd listens and a check arrived here
  fwdctl unexpose 18080

Containers need `--add-host host.docker.internal:host-gateway` (compose:
extra_hosts: [\"host.docker.internal:host-gateway\"]). sshd on the host must allow it:
`GatewayPorts clientspecified`; `fwdctl status` says when it does not.

fwdctl expose waits (--timeout, 10s) until sshd listens on the host and a check
through it arrived here, then says how containers reach it; or why not, and the fix.
sshd applies GatewayPorts to new connections only: after changing it and reloading
sshd, `fwdctl reconnect HOST` gives fwdd a new one.

Exit codes:
  0   exposed and verified (with --timeout 0s: fwdd took it, and verifies it next)
  1   refused (bad entry, unknown host, port not exposed), failed (the message says
      why and what to do), or not verified within --timeout (fwdd keeps trying)
  2   fwdd unreachable (not running, permission denied, timeout, protocol error)";

const UPGRADE_HELP: &str = "\
fwdd runs `<binary> upgrade-check` first: a binary that does not run, or cannot take
over from this fwdd, is refused and the running fwdd keeps serving. Otherwise fwdd
executes the new binary in place (same pid, so the ssh masters and systemd's or
launchd's view of the service stay the same); the new image answers this command.
Connections arriving meanwhile wait in the listeners' queues: none is refused.

Exit codes:
  0   upgraded (prints what was kept)
  1   refused: the running fwdd keeps serving (the message says why)
  2   fwdd unreachable (not running, permission denied, timeout, protocol error)";

/// How long the old image checks the new binary and the new one takes over.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

const ENV_HELP: &str = "\
Examples:
  eval \"$(fwdctl env)\"                          sh, bash, zsh
  fwdctl env --format fish | source
  fwdctl env --format github >> \"$GITHUB_ENV\"   GitHub Actions: later steps see it
  fwdctl env staging --format json

Prints DOCKER_HOST=unix://<runtime dir>/docker-<host>.sock (fwdd's local socket for the
host's remote engine: every docker command goes over fwdd's one SSH connection),
TESTCONTAINERS_HOST_OVERRIDE=localhost (published ports are forwarded to this machine's
loopback) and TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE=<the engine's socket on the remote
host> (what Testcontainers' Ryuk mounts there).

Exit codes:
  0   printed
  1   unknown host, the host has no engine socket, or its socket is in a directory
      fwdctl would not trust (the message says why)
  2   fwdd unreachable (not running, permission denied, a socket refused as another
      user's, timeout, protocol error)";

fn parse_target(s: &str) -> Result<wait::Target, String> {
    wait::Target::parse(s)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 2m, 1m30s, 500ms)"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `"status"` member of a response, byte for byte.
#[derive(serde::Deserialize)]
struct RawStatus<'a> {
    #[serde(borrow)]
    status: &'a serde_json::value::RawValue,
}

/// Asks fwdd for its status: the decoded snapshot and the line as sent.
fn fetch_status(socket: &std::path::Path) -> Result<(fwd_proto::Status, Vec<u8>)> {
    let line = client::request(socket, &Request::Status, client::REQUEST_TIMEOUT)?;
    match decode_response(&line)
        .map_err(|e| anyhow!("bad answer from fwdd ({}): {e}", socket.display()))?
    {
        Response::Status(st) => Ok((st, line)),
        Response::Error { message, .. } => Err(anyhow!("fwdd refused the request: {message}")),
        other => Err(client::unexpected_answer(&other).into()),
    }
}

fn status(socket: &std::path::Path, json: bool) -> Result<i32> {
    let (status, line) = fetch_status(socket)?;
    let mut out = std::io::stdout().lock();
    if json {
        let raw: RawStatus = serde_json::from_slice(&line).context("bad answer from fwdd")?;
        writeln!(out, "{}", raw.status.get())?;
    } else {
        out.write_all(human::render_status(&status, now_ms()).as_bytes())?;
    }
    out.flush()?;
    Ok(human::exit_code(&status))
}

fn names_command(socket: &std::path::Path, json: bool) -> Result<i32> {
    let (status, _) = fetch_status(socket)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&status.names)?)?;
    } else {
        out.write_all(names::render(&status.names).as_bytes())?;
    }
    out.flush()?;
    Ok(0)
}

fn wait(socket: &std::path::Path, targets: &[wait::Target], timeout: Duration) -> Result<i32> {
    match wait::run(socket, targets, timeout)? {
        // Both lines carry container names and reasons from the daemon.
        wait::Outcome::Ready(line) => {
            println!("{}", for_terminal(&line));
            Ok(human::EXIT_HEALTHY)
        }
        wait::Outcome::TimedOut(line) => {
            eprintln!("fwdctl: {}", for_terminal(&line));
            Ok(human::EXIT_DEGRADED)
        }
    }
}

fn env_command(socket: &std::path::Path, host: Option<&str>, format: env::Format) -> Result<i32> {
    let (status, _) = fetch_status(socket)?;
    // The engine socket is checked as the control socket was: never printed
    // in a directory fwdctl would not trust (whatever the format).
    let checked = |vars: Vec<(&'static str, String)>| match env::local_socket(&vars) {
        Some(path) => client::check_engine_socket(path)
            .map(|()| vars)
            .map_err(|e| env::Unavailable {
                message: e.to_string(),
            }),
        None => Ok(vars),
    };
    match env::variables(&status, host)
        .and_then(checked)
        .and_then(|vars| env::render(&vars, format))
    {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(human::EXIT_HEALTHY)
        }
        Err(e) => {
            eprintln!("fwdctl: {}", for_terminal(&e.message));
            Ok(human::EXIT_DEGRADED)
        }
    }
}

/// `reconnect`, `resync`, `expose`, `unexpose`.
fn host_command(socket: &std::path::Path, req: Request) -> Result<i32> {
    let line = client::request(socket, &req, client::REQUEST_TIMEOUT)?;
    let resp = decode_response(&line)
        .map_err(|e| anyhow!("bad answer from fwdd ({}): {e}", socket.display()))?;
    host_answer(resp)
}

/// `expose`, then (unless `wait` is zero) its verdict: active, or why not
/// and what to do. `socket_args` repeat the socket in suggested commands.
fn expose_command(
    socket: &std::path::Path,
    req: Request,
    wait: Duration,
    socket_args: &str,
) -> Result<i32> {
    let line = client::request(socket, &req, client::REQUEST_TIMEOUT)?;
    let resp = decode_response(&line)
        .map_err(|e| anyhow!("bad answer from fwdd ({}): {e}", socket.display()))?;
    let change = match resp {
        Response::Expose(change) if !wait.is_zero() => change,
        other => return host_answer(other),
    };
    let verdict = expose::await_verdict(
        || fetch_status(socket).map(|(st, _)| st),
        &change,
        wait,
        now_ms,
        socket_args,
    )?;
    // Host names and reasons come from fwdd: each line made safe alone.
    match verdict {
        expose::Verdict::Active(text) => {
            for line in text.lines() {
                println!("{}", for_terminal(line));
            }
            Ok(human::EXIT_HEALTHY)
        }
        expose::Verdict::NotActive(text) => {
            for (i, line) in text.lines().enumerate() {
                let lead = if i == 0 { "fwdctl: " } else { "  " };
                eprintln!("{lead}{}", for_terminal(line));
            }
            Ok(human::EXIT_DEGRADED)
        }
    }
}

/// What fwdd answered a host command, said.
fn host_answer(resp: Response) -> Result<i32> {
    let (hosts, what) = match resp {
        Response::Reconnect { hosts } => (hosts, "replacing the ssh master"),
        Response::Resync { hosts } => (hosts, "listing and inspecting the containers again"),
        Response::Expose(c) => {
            println!(
                "{}",
                for_terminal(&format!(
                    "{}: containers reach {} here at host.docker.internal:{} (see fwdctl status)",
                    c.host, c.runner, c.remote_port
                ))
            );
            return Ok(human::EXIT_HEALTHY);
        }
        Response::Unexpose(c) => {
            println!(
                "{}",
                for_terminal(&format!(
                    "{}: port {} no longer exposed",
                    c.host, c.remote_port
                ))
            );
            return Ok(human::EXIT_HEALTHY);
        }
        Response::Error { message, code }
            if code.as_deref() == Some(error_code::EXPOSE_REFUSED) =>
        {
            eprintln!("fwdctl: {}", for_terminal(&message));
            return Ok(human::EXIT_DEGRADED);
        }
        Response::Error { message, code } if code.as_deref() == Some(error_code::UNKNOWN_HOST) => {
            eprintln!("fwdctl: {}", for_terminal(&message));
            return Ok(human::EXIT_DEGRADED);
        }
        Response::Error { message, .. } => {
            return Err(anyhow!("fwdd refused the request: {message}"))
        }
        other => return Err(client::unexpected_answer(&other).into()),
    };
    if hosts.is_empty() {
        println!("no hosts configured, nothing to do");
    }
    for h in hosts {
        println!("{}: {what}", for_terminal(&h));
    }
    Ok(human::EXIT_HEALTHY)
}

fn doctor_command(
    socket: &std::path::Path,
    target: Option<doctor::Target>,
    json: bool,
) -> Result<i32> {
    let runtime_dir = socket
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(fwd_proto::default_runtime_dir);
    let reports = match target {
        Some(t) => vec![doctor::probe_host(&t, &runtime_dir)?],
        None => {
            let (st, _) = fetch_status(socket).map_err(|e| {
                anyhow!("{e:#}; to check a host without fwdd, give --host ssh://user@host")
            })?;
            doctor::from_status(&st, &runtime_dir)
        }
    };
    if json {
        println!("{}", doctor::to_json(&reports));
    } else {
        print!("{}", doctor::render(&reports));
    }
    Ok(if doctor::passed(&reports) {
        human::EXIT_HEALTHY
    } else {
        human::EXIT_DEGRADED
    })
}

fn metrics(socket: &std::path::Path) -> Result<i32> {
    let line = client::request(socket, &Request::Metrics, client::REQUEST_TIMEOUT)?;
    match decode_response(&line)
        .map_err(|e| anyhow!("bad answer from fwdd ({}): {e}", socket.display()))?
    {
        Response::Metrics { text } => {
            // Names, labels and values fwdd wrote itself; escaped as the
            // format wants: printed as it is, for a file, not a person.
            print!("{text}");
            Ok(human::EXIT_HEALTHY)
        }
        Response::Error { message, .. } => Err(anyhow!("fwdd refused the request: {message}")),
        other => Err(client::unexpected_answer(&other).into()),
    }
}

fn upgrade(socket: &std::path::Path) -> Result<i32> {
    let (before, _) = fetch_status(socket)?;
    let line = client::request(socket, &Request::Upgrade, UPGRADE_TIMEOUT)?;
    match decode_response(&line)
        .map_err(|e| anyhow!("bad answer from fwdd ({}): {e}", socket.display()))?
    {
        Response::Upgrade(r) => {
            let old_pid = before.daemon.pid;
            println!(
                "{}",
                for_terminal(&format!(
                    "fwdd {} (pid {old_pid}) → {}: {} listeners, {} masters and {} open tunnels kept{}",
                    r.from,
                    r.to,
                    r.listeners,
                    r.masters,
                    r.tunnels,
                    match r.engine_connections {
                        0 => String::new(),
                        n => format!(", {n} engine connections carried on"),
                    }
                ))
            );
            Ok(human::EXIT_HEALTHY)
        }
        Response::Error { message, .. } => {
            eprintln!("fwdctl: not upgraded: {}", for_terminal(&message));
            Ok(human::EXIT_DEGRADED)
        }
        other => Err(client::unexpected_answer(&other).into()),
    }
}

/// Prints clap's usage error or help: coloured only under the same rule as fwdd's
/// logs (a terminal, and `NO_COLOR` unset or empty), whichever clap features the
/// build unified in.
fn print_clap(e: &clap::Error) {
    use std::io::IsTerminal;
    let terminal = if e.use_stderr() {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    if fwd_proto::term::use_colour(terminal, std::env::var_os("NO_COLOR").as_deref()) {
        let _ = e.print();
        return;
    }
    // StyledStr's Display is the text without its styles.
    let text = e.render().to_string();
    let _ = if e.use_stderr() {
        std::io::stderr().lock().write_all(text.as_bytes())
    } else {
        std::io::stdout().lock().write_all(text.as_bytes())
    };
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            print_clap(&e);
            return ExitCode::from(if e.use_stderr() {
                human::EXIT_USAGE as u8
            } else {
                0
            });
        }
    };
    let socket_chosen = cli.socket.is_some() || cli.runtime_dir.is_some();
    let socket = client::resolve_socket(
        cli.socket,
        cli.runtime_dir,
        std::env::var_os(fwd_proto::SOCKET_ENV),
    );
    let result = match cli.command {
        Command::Status { json } => status(&socket, json),
        Command::Names { json } => names_command(&socket, json),
        Command::Wait { targets, timeout } => wait(&socket, &targets, timeout),
        Command::Watch { json } => {
            watch::exit_0_on_interrupt();
            watch::run(&socket, json)
        }
        Command::Reconnect { host } => host_command(&socket, Request::Reconnect { host }),
        Command::Resync { host } => host_command(&socket, Request::Resync { host }),
        Command::Env { host, format } => env_command(&socket, host.as_deref(), format),
        Command::Upgrade => upgrade(&socket),
        Command::Metrics => metrics(&socket),
        Command::Doctor {
            host,
            ssh_config,
            identity,
            engine_socket,
            json,
        } => doctor_command(
            &socket,
            host.map(|url| doctor::Target {
                url,
                ssh_config,
                identity,
                engine_socket,
            }),
            json,
        ),
        Command::Expose {
            spec,
            host,
            timeout,
        } => expose_command(
            &socket,
            Request::Expose { host, spec },
            timeout,
            &expose::socket_args(socket_chosen.then_some(socket.as_path())),
        ),
        Command::Unexpose { port, host } => host_command(&socket, Request::Unexpose { host, port }),
        Command::Completions { shell } => {
            fwd_manual::print_completion_script(<Cli as clap::CommandFactory>::command(), shell)
                .map(|()| human::EXIT_HEALTHY)
        }
        Command::Man { dir } => {
            fwd_manual::write_man_pages(<Cli as clap::CommandFactory>::command(), &dir)
                .map(|_| human::EXIT_HEALTHY)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            // The chain may hold the daemon's error message or parts of its answer.
            eprintln!("fwdctl: {}", for_terminal(&format!("{e:#}")));
            ExitCode::from(human::EXIT_UNREACHABLE as u8)
        }
    }
}
