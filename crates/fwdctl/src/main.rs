//! `fwdctl`: command-line client of the fwdd control socket.

mod client;
mod human;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use fwd_proto::{decode_response, Request, Response};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FWD_GIT_COMMIT"), ")");

const AFTER_HELP: &str = "\
Socket selection: --socket, else --runtime-dir/control.sock, else $FWD_SOCKET, else the
daemon's default ($XDG_RUNTIME_DIR/fwdd, or /run/fwdd as root, or /tmp/fwdd-<uid>).

Exit codes:
  0   healthy
  1   degraded: a host's ssh master is not connected, or a forward is in conflict
  2   fwdd unreachable (not running, permission denied, timeout, protocol error)
  64  invalid command line";

#[derive(Debug, Parser)]
#[command(
    name = "fwdctl",
    version = VERSION,
    about = "Query and control fwdd, the Docker port forwarding daemon",
    after_help = AFTER_HELP
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
    #[command(after_help = AFTER_HELP)]
    Status {
        /// Print the status object as sent by the daemon: compact JSON on one line
        /// (schema: docs/control-api.md)
        #[arg(long)]
        json: bool,
    },
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

fn status(socket: &std::path::Path, json: bool) -> Result<i32> {
    let line = client::request(socket, &Request::Status, client::REQUEST_TIMEOUT)?;
    let status = match decode_response(&line)
        .map_err(|e| anyhow!("bad answer from fwdd ({}): {e}", socket.display()))?
    {
        Response::Status(st) => st,
        Response::Error { message } => return Err(anyhow!("fwdd refused the request: {message}")),
    };
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                human::EXIT_USAGE as u8
            } else {
                0
            });
        }
    };
    let socket = client::resolve_socket(
        cli.socket,
        cli.runtime_dir,
        std::env::var_os(fwd_proto::SOCKET_ENV),
    );
    let result = match cli.command {
        Command::Status { json } => status(&socket, json),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("fwdctl: {e:#}");
            ExitCode::from(human::EXIT_UNREACHABLE as u8)
        }
    }
}
