//! The caps of `fwd_core::budget` as the accept loops meet them: a client
//! over a cap is closed at once, counted and said once per episode; an
//! accept that fails is counted, said once per episode and waited out.

use std::io;
use std::time::Instant;

use fwd_core::{AcceptBackoff, Admit, RefusalLog, Refusals, Verdict};

/// Who holds the connections a cap counts, for the log.
pub struct Holder<'a> {
    /// E.g. "local port 8080", "exposed port 3000", "the engine socket".
    pub what: &'a str,
    pub host: &'a str,
    /// The setting that changes the cap.
    pub setting: &'static str,
}

/// A new client of `holder`, which holds `held` under `cap`: `true` to
/// serve it; `false` when it is to be closed at once (counted in
/// `refusals`, said once per episode).
pub fn admit(refusals: &mut Refusals, held: u64, cap: u64, holder: &Holder<'_>) -> bool {
    match refusals.admit(held, cap, Instant::now()) {
        Admit::Yes => true,
        Admit::Refused { log } => {
            if let Some(log) = log {
                log_refusals(&log, cap, holder);
            }
            false
        }
    }
}

/// A client of `holder` ended, leaving `held` under `cap`.
pub fn released(refusals: &mut Refusals, held: u64, cap: u64, holder: &Holder<'_>) {
    if let Some(log) = refusals.released(held, cap) {
        log_refusals(&log, cap, holder);
    }
}

/// `accept(2)` on `socket` failed: counted, said once per episode, and
/// waited out on `backoff`'s schedule (an accept loop never spins).
pub async fn accept_failed(backoff: &mut AcceptBackoff, socket: &str, e: &io::Error) {
    let failed = backoff.failed(&e.to_string(), Instant::now());
    match failed.log {
        Some(Verdict::Summary { repeats }) => tracing::warn!(
            event = "accept_failed",
            socket,
            error = %e,
            repeats,
            "accepting on {socket} still fails: {e} ({repeats} more since the last line)"
        ),
        Some(_) => tracing::warn!(
            event = "accept_failed",
            socket,
            error = %e,
            "accepting a connection on {socket} failed: {e}; trying again with backoff \
             (fwdctl status shows the open-files limit and what holds descriptors)"
        ),
        None => {}
    }
    tokio::time::sleep(failed.wait).await;
}

/// An accept on `socket` succeeded: an episode of failures that has been
/// quiet for long enough is over.
pub fn accept_succeeded(backoff: &mut AcceptBackoff, socket: &str) {
    if let Some(failures) = backoff.succeeded(Instant::now()) {
        tracing::info!(
            event = "accept_recovered",
            socket,
            failures,
            "accepting on {socket} works again after {failures} failures"
        );
    }
}

fn log_refusals(log: &RefusalLog, cap: u64, h: &Holder<'_>) {
    let (what, host, setting) = (h.what, h.host, h.setting);
    match log {
        RefusalLog::Started => tracing::warn!(
            event = "connection_cap_reached",
            host,
            holder = what,
            cap,
            "{what} (host {host}) holds {cap} connections, its cap: new ones are closed at once \
             until some end (set {setting} in fwdd.toml to change the cap)"
        ),
        RefusalLog::Summary { repeats } => tracing::warn!(
            event = "connection_cap_reached",
            host,
            holder = what,
            cap,
            repeats,
            "{what} (host {host}) is still at its cap of {cap} connections: {repeats} more closed"
        ),
        RefusalLog::Ended { refused } => tracing::info!(
            event = "connection_cap_cleared",
            host,
            holder = what,
            cap,
            refused,
            "{what} (host {host}) is well below its cap of {cap} again; {refused} connections were closed at the cap"
        ),
    }
}
