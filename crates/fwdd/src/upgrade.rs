//! Zero-downtime binary upgrade: `fwdctl upgrade` or SIGUSR2 make fwdd
//! `execve` the binary now at the path it was started from, in place.
//!
//! In place, because the process must stay the same: the ssh masters are
//! its children (`PR_SET_PDEATHSIG` would end them with another parent,
//! and only a parent can wait for them), systemd's `MainPID` and launchd's
//! job stay valid, and every descriptor can be kept simply by clearing
//! `FD_CLOEXEC` on it.
//!
//! The steps, old image:
//! 1. `fwdd upgrade-check` is run from the new binary: it must run and
//!    accept [`HANDOVER_VERSION`]; otherwise nothing happens and the
//!    request is answered with why.
//! 2. Freeze ([`ServeContext::frozen`]): no listener accepts (the kernel's
//!    backlogs hold new clients), no hand-off to a master starts, engine
//!    relays stop between two writes. Hand-offs whose mux request is in
//!    flight are waited for (bounded): that request's connection becomes
//!    the tunnel's, which the master closes the tunnel with.
//! 3. The [`Document`] is written to an unlinked file, `FD_CLOEXEC` is
//!    cleared on it and on exactly the descriptors it names, and the binary
//!    is executed with the same arguments and `FWD_HANDOVER_FD`.
//!
//! If `execve` fails, the flags are restored and the image thaws: nothing
//! was lost. The new image owns every descriptor again
//! (`crate::handover::inherited`, first in `main` after systemd's stored
//! ones), and [`take_over`] resumes the forwards, then each host from its
//! [`fwd_core::Handover`], then the relays, and answers the `fwdctl
//! upgrade` connection itself.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::HostConfig;
use crate::daemon::Daemon;
use crate::handover::document::{ListenerDoc, SocketDoc};
use crate::handover::{
    environment, set_cloexec, write_bytes, CheckAnswer, Document, Takeover, HANDOVER_ENV,
    HANDOVER_VERSION,
};
use crate::host::HostTakeover;
use crate::version::VERSION;

/// How long `fwdd upgrade-check` may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// ETXTBSY: tries, and the pause between them (0.5 s in all).
const BUSY_RETRIES: usize = 25;
const BUSY_PAUSE: Duration = Duration::from_millis(20);
/// How long in-flight hand-offs and relay writes may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `binary upgrade-check`: does it run, and does it accept our document?
pub async fn check_binary(binary: &Path, args: &[OsString]) -> Result<CheckAnswer, String> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(args)
        .arg("upgrade-check")
        .env_remove("NOTIFY_SOCKET")
        .env_remove(HANDOVER_ENV)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let run = async {
        // A file still open for writing somewhere (a package manager that has
        // not closed it, another process's fork) cannot be executed yet.
        for _ in 0..BUSY_RETRIES {
            match cmd.output().await {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    tokio::time::sleep(BUSY_PAUSE).await;
                }
                other => return other,
            }
        }
        cmd.output().await
    };
    let out = match tokio::time::timeout(CHECK_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(format!(
                "the new binary {} does not run: {e}",
                binary.display()
            ))
        }
        Err(_) => {
            return Err(format!(
                "the new binary {} did not answer `upgrade-check` within {}s",
                binary.display(),
                CHECK_TIMEOUT.as_secs()
            ))
        }
    };
    let said = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        fwd_proto::term::for_terminal(&last.chars().take(300).collect::<String>()).into_owned()
    };
    if !out.status.success() {
        return Err(format!(
            "the new binary {} failed its check ({}): {}",
            binary.display(),
            out.status,
            said(&out.stderr)
        ));
    }
    let answer: CheckAnswer = serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "the new binary {} is not an fwdd that can take over (its check said: {})",
            binary.display(),
            said(&out.stdout)
        )
    })?;
    if !answer.handover_versions.contains(&HANDOVER_VERSION) {
        return Err(format!(
            "the new binary {} ({}) does not understand handover version {HANDOVER_VERSION} (it accepts {:?}); restart fwdd instead",
            binary.display(),
            answer.fwdd,
            answer.handover_versions
        ));
    }
    Ok(answer)
}

/// The whole upgrade, old image side. Returns only when it did not happen.
pub async fn upgrade(daemon: &Rc<Daemon>, reply_fd: Option<RawFd>) -> Result<Infallible, String> {
    if daemon.upgrading.replace(true) {
        return Err("an upgrade is already under way".into());
    }
    let result = attempt(daemon, reply_fd).await;
    daemon.upgrading.set(false);
    daemon.serve.frozen.send_replace(false);
    let Err(e) = result;
    tracing::error!(event = "upgrade_refused", error = %e, "not upgrading: {e}; this image keeps serving");
    Err(e)
}

async fn attempt(daemon: &Rc<Daemon>, reply_fd: Option<RawFd>) -> Result<Infallible, String> {
    let binary = daemon.image.binary.clone();
    let answer = check_binary(&binary, &daemon.image.args).await?;
    tracing::info!(event = "upgrade_started", binary = %binary.display(), to = %answer.fwdd, "upgrading to {} from {}", answer.fwdd, binary.display());
    daemon.serve.frozen.send_replace(true);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let busy = daemon.serve.registry.handing_off() + running_relays(daemon);
        if busy == 0 || Instant::now() >= deadline {
            if busy > 0 {
                tracing::warn!(event = "upgrade_drain_timeout", busy, "{busy} connections did not reach a point where they can be handed over; they end with this image");
            }
            break;
        }
        // Hand-offs take a mux round trip (well under a millisecond).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let doc = collect(daemon, reply_fd);
    let dir = daemon.config.borrow().runtime_dir.clone();
    exec(&binary, &daemon.image.args, &doc, &dir)
}

fn running_relays(daemon: &Daemon) -> usize {
    daemon
        .hosts()
        .iter()
        .map(|h| {
            let engine = h
                .engine_socket
                .borrow()
                .as_ref()
                .map_or(0, |s| s.running_relays());
            engine + h.exposures.running_relays()
        })
        .sum()
}

/// Everything this image hands over, synchronously: nothing may change
/// between this and `execve`. Each part writes its own.
fn collect(daemon: &Daemon, reply_fd: Option<RawFd>) -> Document {
    let now = Instant::now();
    let control = SocketDoc {
        path: daemon.control_socket.0.clone(),
        fd: daemon.control_socket.1,
    };
    let mut doc = daemon
        .image
        .document(control, reply_fd, daemon.next_host_id());
    for h in daemon.hosts() {
        h.to_doc(now, &mut doc);
    }
    doc.forwards = daemon.table.borrow().to_doc(&daemon.serve.registry);
    doc.names = daemon.names.borrow().to_doc(&daemon.serve.registry);
    doc.udp = daemon.udp.borrow().to_doc();
    doc.metrics = daemon
        .metrics_listener
        .get()
        .map(|(addr, fd)| ListenerDoc { addr, fd });
    doc
}

/// Writes the document to an unlinked private file, opens exactly its
/// descriptors to the next image and executes it. Returns only on failure,
/// with every flag restored.
fn exec(
    binary: &Path,
    args: &[OsString],
    doc: &Document,
    dir: &Path,
) -> Result<Infallible, String> {
    let file =
        write_document(doc, dir).map_err(|e| format!("cannot write the handover document: {e}"))?;
    let mut fds = doc.fds();
    fds.push(file.as_raw_fd());
    let c = |s: &std::ffi::OsStr| {
        CString::new(s.as_bytes()).map_err(|_| format!("{s:?} contains a NUL byte"))
    };
    let program = c(binary.as_os_str())?;
    let mut argv = vec![program.clone()];
    for a in args {
        argv.push(c(a)?);
    }
    let mut env = environment();
    env.push(c(std::ffi::OsStr::new(&format!(
        "{HANDOVER_ENV}={}",
        file.as_raw_fd()
    )))?);
    for (i, fd) in fds.iter().enumerate() {
        if let Err(e) = set_cloexec(*fd, false) {
            for fd in &fds[..i] {
                let _ = set_cloexec(*fd, true);
            }
            return Err(format!("cannot pass descriptor {fd} on: {e}"));
        }
    }
    tracing::info!(event = "upgrade_exec", binary = %binary.display(), listeners = doc.forwards.iter().map(|f| f.listeners.len()).sum::<usize>(), tunnels = doc.forwards.iter().map(|f| f.tunnels.len()).sum::<usize>(), "handing over to {}", binary.display());
    let mut err = nix::unistd::execve(&program, &argv, &env).err();
    for _ in 0..BUSY_RETRIES {
        if err != Some(nix::errno::Errno::ETXTBSY) {
            break;
        }
        std::thread::sleep(BUSY_PAUSE);
        err = nix::unistd::execve(&program, &argv, &env).err();
    }
    for fd in &fds {
        let _ = set_cloexec(*fd, true);
    }
    drop(file);
    Err(format!(
        "cannot execute {}: {}",
        binary.display(),
        err.map_or_else(|| "unknown error".to_string(), |e| e.desc().to_string())
    ))
}

/// In the runtime directory: private, and writable under the systemd
/// unit's `ProtectSystem=strict`, where /tmp may not be.
fn write_document(doc: &Document, dir: &Path) -> std::io::Result<std::fs::File> {
    write_bytes(&doc.to_json(), dir)
}

/// New image: tells `fwdctl upgrade` what was kept, on its connection.
pub fn answer(reply: OwnedFd, report: fwd_proto::UpgradeReport) {
    send(reply, &fwd_proto::Response::Upgrade(report));
}

/// The old image again, after a rollback: tells `fwdctl upgrade` why.
pub fn answer_error(reply: OwnedFd, message: String) {
    send(
        reply,
        &fwd_proto::Response::error_with_code(message, fwd_proto::error_code::UPGRADE_REFUSED),
    );
}

fn send(reply: OwnedFd, response: &fwd_proto::Response) {
    let mut stream = std::os::unix::net::UnixStream::from(reply);
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(&fwd_proto::encode_line(response));
}

/// New image: forwards first (so the first plan finds them held),
/// then each configured host from its handover, then the relays; then the
/// `fwdctl upgrade` that asked is told what was kept. Each part adopts its
/// own state and descriptors; what none takes is closed at the end.
pub fn take_over(daemon: &Rc<Daemon>, hosts: Vec<HostConfig>, t: Takeover) {
    let Takeover {
        doc_from,
        reply,
        rolled_back,
        doc,
        mut fds,
        ..
    } = t;
    let now = Instant::now();
    let listeners = doc
        .forwards
        .iter()
        .map(|f| f.listeners.len())
        .sum::<usize>()
        + doc
            .hosts
            .iter()
            .map(|h| h.engine_sockets.len() + h.exposures.len())
            .sum::<usize>()
        + 1;
    let listeners = listeners
        + doc
            .names
            .listeners
            .iter()
            .map(|f| f.listeners.len())
            .sum::<usize>();
    let tunnels = doc
        .forwards
        .iter()
        .chain(&doc.names.listeners)
        .map(|f| f.tunnels.len())
        .sum::<usize>();
    {
        let mut table = daemon.table.borrow_mut();
        for f in &doc.forwards {
            table.adopt(f, &mut fds, &daemon.serve, now);
        }
    }
    daemon
        .names
        .borrow_mut()
        .adopt(&doc.names, &mut fds, &daemon.serve, now);
    {
        let mut udp = daemon.udp.borrow_mut();
        for u in &doc.udp {
            udp.adopt(u, &mut fds, &daemon.serve);
        }
    }
    daemon.skip_host_ids_below(doc.next_host_id);
    let handed = doc
        .hosts
        .iter()
        .filter_map(|h| HostTakeover::from_doc(h, &mut fds))
        .collect();
    let masters = adopt_hosts(daemon, hosts, handed);
    for h in daemon.hosts() {
        h.resume_from(&doc, &mut fds);
    }
    daemon.request_plan();
    let kept = fwd_proto::UpgradeReport {
        from: doc_from,
        to: VERSION.to_string(),
        pid: std::process::id(),
        listeners,
        masters,
        tunnels,
        engine_connections: doc.engine_relays.len(),
    };
    report(kept, rolled_back, reply);
}

/// Each configured host from the previous image's, or a new one; the
/// masters of hosts the configuration no longer has are ended. Returns
/// how many masters were handed over.
fn adopt_hosts(
    daemon: &Rc<Daemon>,
    hosts: Vec<HostConfig>,
    mut handed: Vec<HostTakeover>,
) -> usize {
    let mut masters = 0;
    for cfg in hosts {
        match handed.iter().position(|h| h.name == cfg.name) {
            Some(i) => {
                let h = handed.remove(i);
                masters += usize::from(h.master.is_some());
                daemon.adopt_host(cfg, h);
            }
            None => {
                daemon.add_host(cfg);
            }
        }
    }
    for h in handed {
        if let Some((pid, stderr)) = h.master {
            let path = daemon
                .config
                .borrow()
                .runtime_dir
                .join(format!("h{}.ctl", h.id));
            if let Ok((m, _)) = fwd_ssh::Master::adopt(pid, &path, stderr) {
                tokio::task::spawn_local(m.shutdown(Duration::from_millis(500)));
            }
        }
    }
    masters
}

/// Says what was kept, in the log and to the `fwdctl upgrade` that asked;
/// after a rollback, why the new image could not take over.
fn report(kept: fwd_proto::UpgradeReport, rolled_back: Option<String>, reply: Option<OwnedFd>) {
    let fwd_proto::UpgradeReport {
        listeners,
        masters,
        tunnels,
        engine_connections,
        ..
    } = kept;
    if let Some(why) = rolled_back {
        tracing::error!(event = "upgrade_rolled_back", error = %why, listeners, masters, tunnels,
            "the new binary could not take over ({why}); this image ({VERSION}) serves on with everything it had");
        if let Some(reply) = reply {
            answer_error(
                reply,
                format!("the new binary could not take over ({why}); rolled back: fwdd {VERSION} serves on, nothing was dropped"),
            );
        }
        return;
    }
    let from = &kept.from;
    tracing::info!(event = "upgraded", from = %from, to = VERSION, listeners, masters, tunnels, engine_connections,
        "upgraded from fwdd {from}: {listeners} listeners, {masters} masters, {tunnels} tunnels and {engine_connections} engine connections kept");
    if let Some(reply) = reply {
        answer(reply, kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_binary_that_is_not_fwdd_is_refused_with_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(name);
            std::fs::write(&p, body).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            p
        };
        let fails = write("fails", "#!/bin/sh\necho 'broken build' >&2\nexit 1\n");
        let e = check_binary(&fails, &[]).await.expect_err("refused");
        assert!(
            e.contains("failed its check") && e.contains("broken build"),
            "{e}"
        );
        let chatty = write("chatty", "#!/bin/sh\necho hello\n");
        let e = check_binary(&chatty, &[]).await.expect_err("refused");
        assert!(e.contains("not an fwdd") && e.contains("hello"), "{e}");
        let future = write(
            "future",
            "#!/bin/sh\necho '{\"fwdd\":\"9.0.0\",\"handover_versions\":[7]}'\n",
        );
        let e = check_binary(&future, &[]).await.expect_err("refused");
        assert!(e.contains("does not understand handover version 1"), "{e}");
        let e = check_binary(&dir.path().join("missing"), &[])
            .await
            .expect_err("refused");
        assert!(e.contains("does not run"), "{e}");
        let fine = write(
            "fine",
            "#!/bin/sh\n[ \"$1\" = upgrade-check ] && echo '{\"fwdd\":\"0.2.0\",\"handover_versions\":[1,2]}'\n",
        );
        assert_eq!(
            check_binary(&fine, &[]).await,
            Ok(CheckAnswer {
                fwdd: "0.2.0".into(),
                handover_versions: vec![1, 2]
            })
        );
    }
}
