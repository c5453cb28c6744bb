//! systemd's notify protocol: READY=1 once the control socket is up (SSH is not
//! waited for: an unreachable Docker host must not hold up boot), STATUS=
//! kept current, and WATCHDOG=1 only while every supervisor keeps its
//! promise to make progress — a wedged loop gets fwdd restarted.
//! Everything is a no-op outside systemd (no NOTIFY_SOCKET).

use std::rc::Rc;
use std::time::Duration;

use sd_notify::NotifyState;

use fwd_proto::{ForwardState, HealthState, MasterState};

use crate::daemon::Daemon;

fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

pub fn reloading() {
    let _ = sd_notify::notify(&[NotifyState::Reloading]);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// One line for `systemctl status`: counts, then the daemon's verdict (the
/// same one `fwdctl status` shows).
pub fn status_line(d: &Daemon) -> String {
    let st = crate::status::snapshot(d);
    let connected = st
        .hosts
        .iter()
        .filter(|h| h.master.state == MasterState::Connected)
        .count();
    let count = |state| st.forwards.iter().filter(|f| f.state == state).count();
    let active = count(ForwardState::Active) + count(ForwardState::Pending);
    let conflicts = count(ForwardState::Conflict);
    let health = st.health();
    let verdict = match health.state {
        HealthState::Healthy => "healthy".to_string(),
        HealthState::Degraded => format!("degraded: {}", health.reasons.join("; ")),
    };
    format!(
        "{connected}/{} hosts connected, {active} ports forwarded, {conflicts} in conflict; {verdict}",
        st.hosts.len()
    )
}

pub fn spawn(d: Rc<Daemon>) {
    if !under_systemd() {
        return;
    }
    let status_d = d.clone();
    tokio::task::spawn_local(async move {
        let mut changed = status_d.changed.subscribe();
        let mut last = String::new();
        loop {
            let line = status_line(&status_d);
            if line != last {
                let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
                last = line;
            }
            if changed.changed().await.is_err() {
                return;
            }
            // At most one update a second, however busy the daemon is.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    if let Some(timeout) = sd_notify::watchdog_enabled() {
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(timeout / 2);
            let mut withheld = false;
            loop {
                tick.tick().await;
                if d.making_progress() {
                    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                    withheld = false;
                } else if !withheld {
                    withheld = true;
                    tracing::error!(event = "watchdog_withheld", "a host supervisor stopped making progress; withholding the watchdog so systemd restarts fwdd");
                }
            }
        });
    }
}
