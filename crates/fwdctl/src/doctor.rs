//! `fwdctl doctor`: checks a Docker host's setup the way fwdd uses it.
//!
//! With `--host URL` it probes the host itself, without a daemon: a
//! temporary ControlMaster (the user's ssh configuration applies), the
//! remote CLI's engine, a stream-local channel to it, a remote forward on
//! the bridge gateway, the host's clock. Without `--host` it asks the
//! running fwdd what it knows of each configured host. What each answer
//! means is `fwd_core::doctor`'s to say.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use fwd_core::doctor::{self, Check, EngineProbe, Verdict};
use fwd_proto::term::for_terminal;
use fwd_ssh::{Master, MasterConfig, MasterError, MuxClient};
use tokio::io::AsyncReadExt;

const PROBE_WITHIN: Duration = Duration::from_secs(15);

pub struct Target {
    pub url: String,
    pub ssh_config: Option<PathBuf>,
    pub identity: Option<PathBuf>,
    pub engine_socket: Option<String>,
}

/// One host's checks, for printing.
pub struct Report {
    pub host: String,
    pub checks: Vec<Check>,
}

/// Probes `target` directly.
pub fn probe_host(target: &Target, runtime_dir: &Path) -> Result<Report> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let local = tokio::task::LocalSet::new();
    let checks = local.block_on(&runtime, probe(target, runtime_dir))?;
    Ok(Report {
        host: target.url.clone(),
        checks,
    })
}

/// The checks that need no host: the ssh client and the runtime directory.
pub fn local_checks(runtime_dir: &Path) -> Vec<Check> {
    let version = std::process::Command::new("ssh")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
    let ssh = match &version {
        Ok(v) => doctor::ssh_client(Ok(v)),
        Err(e) => doctor::ssh_client(Err(&e.to_string())),
    };
    let state = std::fs::symlink_metadata(runtime_dir).ok().map(|m| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        (m.permissions().mode() & 0o7777, m.uid())
    });
    vec![
        ssh,
        doctor::runtime_dir(
            &runtime_dir.display().to_string(),
            state,
            fwd_proto::effective_uid(),
        ),
    ]
}

async fn probe(target: &Target, runtime_dir: &Path) -> Result<Vec<Check>> {
    let mut checks = local_checks(runtime_dir);
    let (destination, port) = fwd_ssh::parse_host_url(&target.url).map_err(|e| anyhow!(e))?;
    let mut cfg = MasterConfig::new(destination.clone());
    cfg.port = port;
    cfg.ssh_config = target.ssh_config.clone();
    cfg.identity_file = target.identity.clone();
    // A short private directory: the ControlPath must fit in sun_path.
    let dir =
        nix::unistd::mkdtemp("/tmp/fwdoc.XXXXXX").context("cannot make a temporary directory")?;
    let _cleanup = RemoveDir(dir.clone());
    let ctl = dir.join("m.ctl");
    // Where ssh really goes (an alias, HostName, Port): for the fix lines.
    let (host, port) = resolved(&cfg).unwrap_or_else(|| {
        let h = destination
            .rsplit_once('@')
            .map_or(destination.as_str(), |(_, h)| h);
        (h.to_string(), port)
    });
    let host = host.as_str();
    let master = match Master::spawn(&cfg, &ctl, cfg.ready_timeout()).await {
        Ok((m, _lines)) => {
            checks.extend(doctor::connection(Ok(()), host, port));
            m
        }
        Err(MasterError::Exited { stderr_tail, .. } | MasterError::Timeout { stderr_tail, .. }) => {
            let said = stderr_tail.join("\n");
            let offered = match fwd_core::classify_ssh_failure(&said) {
                fwd_core::FailureKind::AuthRefused => offered_keys(&cfg),
                _ => Vec::new(),
            };
            checks.extend(doctor::connection_with_keys(
                Err(&said),
                host,
                port,
                &offered,
            ));
            checks.extend(skipped_after_connection());
            return Ok(checks);
        }
        Err(e) => {
            checks.extend(doctor::connection(Err(&e.to_string()), host, port));
            checks.extend(skipped_after_connection());
            return Ok(checks);
        }
    };
    let rest = probe_over(&ctl, &dir, target).await;
    master.shutdown(Duration::from_secs(1)).await;
    checks.extend(rest);
    Ok(checks)
}

/// The keys ssh offers the host, from a verbose login attempt that runs
/// nothing (`BatchMode`, no master): for the authentication check's detail.
fn offered_keys(cfg: &MasterConfig) -> Vec<String> {
    let mut cmd = std::process::Command::new(&cfg.ssh_program);
    if let Some(f) = &cfg.ssh_config {
        cmd.arg("-F").arg(f);
    }
    if let Some(p) = cfg.port {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(i) = &cfg.identity_file {
        cmd.arg("-i").arg(i);
    }
    let out = cmd
        .args([
            "-v",
            "-o",
            "BatchMode=yes",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
        ])
        .arg("--")
        .arg(&cfg.destination)
        .arg("exit 0")
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) => doctor::offered_keys(&String::from_utf8_lossy(&o.stderr)),
        Err(_) => Vec::new(),
    }
}

/// `ssh -G`: the host name and port ssh resolves the destination to.
fn resolved(cfg: &MasterConfig) -> Option<(String, Option<u16>)> {
    let mut cmd = std::process::Command::new(&cfg.ssh_program);
    if let Some(f) = &cfg.ssh_config {
        cmd.arg("-F").arg(f);
    }
    if let Some(p) = cfg.port {
        cmd.arg("-p").arg(p.to_string());
    }
    let out = cmd
        .arg("-G")
        .arg("--")
        .arg(&cfg.destination)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ').map(str::to_string))
    };
    let host = field("hostname")?;
    let port = field("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 22);
    Some((host, port))
}

fn skipped_after_connection() -> Vec<Check> {
    [
        "engine location",
        "stream-local forwarding",
        "engine",
        "clock",
        "GatewayPorts (expose)",
    ]
    .into_iter()
    .map(|n| Check::skipped(n, "no connection"))
    .collect()
}

/// Everything that needs the master.
async fn probe_over(ctl: &Path, dir: &Path, target: &Target) -> Vec<Check> {
    let mut checks = Vec::new();
    let socket = match &target.engine_socket {
        Some(s) => Ok((s.clone(), "engine_remote_socket")),
        None => match run_remote(ctl, fwd_core::discovery::DISCOVERY_SCRIPT).await {
            Ok((Some(0), out, _)) => {
                let candidates = fwd_core::discovery::parse(&out);
                fwd_core::discovery::choose(&candidates)
                    .map(|c| (c.path.clone(), c.source.as_str()))
            }
            Ok((status, _, err)) => Err(format!(
                "looking for the engine failed (exit {}): {}",
                status.map_or("unknown".into(), |s| s.to_string()),
                err.lines().last().unwrap_or("").trim()
            )),
            Err(e) => Err(e),
        },
    };
    checks.push(doctor::engine_location(
        socket
            .as_ref()
            .map(|(path, how)| (path.as_str(), *how))
            .map_err(String::as_str),
    ));
    let Ok((socket, _)) = socket else {
        checks.push(Check::skipped(
            "stream-local forwarding",
            "no engine socket",
        ));
        checks.push(Check::skipped("engine", "no engine socket"));
        checks.push(clock(ctl).await);
        checks.push(Check::skipped(
            "GatewayPorts (expose)",
            "no engine to ask for its gateway",
        ));
        return checks;
    };

    let forward = dir.join("e.sock");
    let api = tokio::time::timeout(PROBE_WITHIN, engine_api(ctl, &forward, &socket)).await;
    let mut api = match api {
        Ok(Ok(api)) => Ok(api),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no answer in time".to_string()),
    };
    let version = match &mut api {
        Ok(a) => a.version().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    let cli = match &version {
        Ok(_) => None,
        Err(_) => Some(
            match run_remote(ctl, "docker version --format '{{.Server.Version}}'").await {
                Ok((Some(0), out, _)) => Ok(out.trim().to_string()),
                Ok((_, out, err)) => Err(format!("{err}{out}").trim().to_string()),
                Err(e) => Err(e),
            },
        ),
    };
    checks.extend(doctor::engine(&EngineProbe {
        stream_local: version.as_deref().map_err(String::as_str),
        cli: cli.as_ref().map(|r| r.as_deref().map_err(String::as_str)),
        socket: &socket,
    }));
    checks.push(clock(ctl).await);
    checks.push(sessions(ctl).await);
    let gateway = match &mut api {
        Ok(a) => match a.network_gateways("bridge").await {
            Ok(Some(g)) => g.first().copied(),
            _ => None,
        },
        Err(_) => None,
    };
    checks.push(match gateway {
        Some(gw) => {
            let result = tokio::time::timeout(PROBE_WITHIN, gateway_ports(ctl, dir, gw)).await;
            let at = gw.to_string();
            match result {
                Ok(r) => doctor::gateway_ports(r.as_ref().map(|b| *b).map_err(String::as_str), &at),
                Err(_) => doctor::gateway_ports(Err("no answer in time"), &at),
            }
        }
        None => Check::skipped(
            "GatewayPorts (expose)",
            "the engine reported no bridge gateway",
        ),
    });
    checks
}

/// Sessions fwd's dial-stdio fallback may hold at once (its limit of 6, and
/// fwd's own two channels when they fall back too).
const SESSIONS_WANTED: usize = 8;

/// Opens [`SESSIONS_WANTED`] sessions, each `sleep 2`: one after the other,
/// so all are open at once (an open takes milliseconds); counts those the
/// host opened.
async fn sessions(ctl: &Path) -> Check {
    let mut open = Vec::new();
    for _ in 0..SESSIONS_WANTED {
        match tokio::time::timeout(PROBE_WITHIN, fwd_ssh::spawn_remote(ctl, "sleep 2")).await {
            Ok(Ok(s)) => open.push(s),
            _ => break,
        }
    }
    let count = open.len();
    for s in open {
        let _ = tokio::time::timeout(PROBE_WITHIN, s.session.wait()).await;
    }
    doctor::sessions(count, SESSIONS_WANTED)
}

/// An API connection to the engine through a stream-local forward of the master.
async fn engine_api(
    ctl: &Path,
    forward: &Path,
    socket: &str,
) -> Result<fwd_docker::DockerApi, String> {
    let mut mux = MuxClient::connect(ctl).await.map_err(|e| e.to_string())?;
    mux.open_local_path_forward(forward, socket)
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio::net::UnixStream::connect(forward)
        .await
        .map_err(|e| e.to_string())?;
    let (api, connection) = fwd_docker::connect(stream)
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_local(connection);
    Ok(api)
}

async fn clock(ctl: &Path) -> Check {
    let t0 = Instant::now();
    let remote = run_remote(ctl, "date +%s").await;
    let rtt = t0.elapsed().as_secs() as i64;
    let local = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match remote {
        Ok((Some(0), out, _)) => match out.trim().parse::<i64>() {
            Ok(r) => doctor::clock_skew(local, r, rtt + 1),
            Err(_) => Check::skipped("clock", "the host's `date +%s` said something else"),
        },
        _ => Check::skipped("clock", "`date +%s` did not run on the host"),
    }
}

/// A remote forward on `gw` to a socket here, and a channel to it: does
/// the connection arrive?
async fn gateway_ports(ctl: &Path, dir: &Path, gw: std::net::IpAddr) -> Result<bool, String> {
    let path = dir.join("g.sock");
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| e.to_string())?;
    // A port unlikely to be in use on the host; sshd says if it is.
    let port = 40000 + (std::process::id() % 20000) as u16;
    let mut mux = MuxClient::connect(ctl).await.map_err(|e| e.to_string())?;
    mux.open_remote_forward(&gw.to_string(), port, &path)
        .await
        .map_err(|e| e.to_string())?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let channel = MuxClient::connect(ctl)
        .await
        .map_err(|e| e.to_string())?
        .open_stdio_forward(&gw.to_string(), port, theirs.as_fd())
        .await;
    let arrived = match channel {
        Ok(_tunnel) => tokio::time::timeout(Duration::from_secs(3), listener.accept())
            .await
            .is_ok_and(|a| a.is_ok()),
        // Nothing listens on the gateway: sshd bound loopback.
        Err(_) => false,
    };
    drop(ours);
    let _ = mux.close_remote_forward(&gw.to_string(), port, &path).await;
    Ok(arrived)
}

/// A constant command in a session of the master: (exit status, stdout, stderr).
async fn run_remote(ctl: &Path, command: &str) -> Result<(Option<u32>, String, String), String> {
    let run = async {
        let mut remote = fwd_ssh::spawn_remote(ctl, command)
            .await
            .map_err(|e| e.to_string())?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut stdout = (&mut remote.stdio).take(4096);
        let mut stderr = (&mut remote.stderr).take(4096);
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        let status = remote.session.wait().await.map_err(|e| e.to_string())?;
        Ok((
            status,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        ))
    };
    tokio::time::timeout(PROBE_WITHIN, run)
        .await
        .unwrap_or_else(|_| Err(format!("`{command}` did not finish in time")))
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What fwdd knows of each host, as checks: its link, its engine route,
/// its exposures.
pub fn from_status(st: &fwd_proto::Status, runtime_dir: &Path) -> Vec<Report> {
    let local = local_checks(runtime_dir);
    st.hosts
        .iter()
        .map(|h| {
            let mut checks = local.clone();
            let connected = h.master.state == fwd_proto::MasterState::Connected;
            let (host, port) = split_destination(&h.destination);
            match (&h.master.last_error, connected) {
                (_, true) => checks.extend(doctor::connection(Ok(()), &host, port)),
                (Some(e), false) => checks.extend(doctor::connection(Err(&e.message), &host, port)),
                (None, false) => {
                    checks.push(Check::skipped("connection", "fwdd is still connecting"))
                }
            }
            if let Some(engine) = &h.engine {
                let socket = engine.remote_socket.clone().unwrap_or_default();
                let stream_local_blocked = engine.route.as_deref() == Some("dial_stdio")
                    && engine
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.contains("stream-local"));
                let version = h.docker_version.clone().unwrap_or_default();
                let probe = if stream_local_blocked {
                    EngineProbe {
                        stream_local: Err(engine.reason.as_deref().unwrap_or("")),
                        cli: Some(Ok(&version)),
                        socket: &socket,
                    }
                } else {
                    EngineProbe {
                        stream_local: Ok(&version),
                        cli: None,
                        socket: &socket,
                    }
                };
                if connected && !version.is_empty() {
                    checks.extend(doctor::engine(&probe));
                }
            }
            for e in st.exposed.iter().filter(|e| e.host == h.name) {
                let at = e
                    .binds
                    .first()
                    .cloned()
                    .unwrap_or_else(|| format!(":{}", e.remote_port));
                match (e.state.as_str(), e.reason_kind.as_deref()) {
                    ("active", _) => checks.push(doctor::gateway_ports(Ok(true), &at)),
                    (_, Some("gateway_ports")) => {
                        checks.push(doctor::gateway_ports(Ok(false), &at))
                    }
                    (_, Some("refused")) => checks.push(doctor::gateway_ports(
                        Err(e.reason.as_deref().unwrap_or("refused")),
                        &at,
                    )),
                    _ => {}
                }
            }
            Report {
                host: h.name.clone(),
                checks,
            }
        })
        .collect()
}

fn split_destination(d: &str) -> (String, Option<u16>) {
    let host = d.rsplit_once('@').map_or(d, |(_, h)| h);
    (host.to_string(), None)
}

/// People's lines: one per check, its fix under it.
pub fn render(reports: &[Report]) -> String {
    let mut out = String::new();
    for r in reports {
        out.push_str(&format!("{}\n", for_terminal(&r.host)));
        for c in &r.checks {
            let mark = match c.verdict {
                Verdict::Pass => "ok  ",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            out.push_str(&format!(
                "  {mark}  {:<24} {}\n",
                c.name,
                for_terminal(&c.detail)
            ));
            if let Some(fix) = &c.fix {
                if c.verdict != Verdict::Pass {
                    out.push_str(&format!("        fix: {}\n", for_terminal(fix)));
                }
            }
        }
        let count = |v| r.checks.iter().filter(|c| c.verdict == v).count();
        out.push_str(&format!(
            "  {} passed, {} warnings, {} failed, {} not checked\n",
            count(Verdict::Pass),
            count(Verdict::Warn),
            count(Verdict::Fail),
            count(Verdict::Skip)
        ));
    }
    out
}

/// `--json`: `[{"host":…,"ok":…,"checks":[{"name","verdict","detail","fix"}]}]`.
pub fn to_json(reports: &[Report]) -> serde_json::Value {
    serde_json::Value::Array(
        reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "host": r.host,
                    "ok": passed(std::slice::from_ref(r)),
                    "checks": r.checks.iter().map(|c| serde_json::json!({
                        "name": c.name,
                        "verdict": c.verdict.as_str(),
                        "detail": c.detail,
                        "fix": c.fix,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// No check failed.
pub fn passed(reports: &[Report]) -> bool {
    reports
        .iter()
        .all(|r| r.checks.iter().all(|c| c.verdict != Verdict::Fail))
}
