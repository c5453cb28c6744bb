//! Every default number of fwd in one table: what the daemon uses for a
//! setting the configuration leaves out, and what the core's policies
//! start from. `fwdd check-config` prints the effective values;
//! `config/fwdd.toml` and `docs/operations.md` document them.

use std::time::Duration;

// ---- the SSH master (per host) -------------------------------------------

/// `server_alive_interval`: how often ssh checks that the server answers.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// `server_alive_count_max`: keepalives missed before the master is dead.
pub const KEEPALIVE_COUNT: u32 = 2;
/// `connect_timeout`: how long ssh may take to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `strict_host_key_checking`: only hosts already in known_hosts.
pub const STRICT_HOST_KEY_CHECKING: &str = "yes";
/// `ssh_program`: `ssh` from `PATH`.
pub const SSH_PROGRAM: &str = "ssh";

// ---- the host supervisor (per host) --------------------------------------

/// `health_interval`: the health probe's period while the link is up.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(15);
/// `engine_gone_after`: how long a found engine may be gone before another
/// one found on the host is taken.
pub const ENGINE_GONE_AFTER: Duration = Duration::from_secs(300);
/// How long a created, never started container keeps its ports bound.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `ssh -M` may take to answer on its control socket when nothing
/// else is known (the daemon derives it from `connect_timeout`).
pub const MASTER_READY_TIMEOUT: Duration = Duration::from_secs(25);
/// How long one request to the engine may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the probe after a network change or resume may take.
pub const WAKE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A repeating failure is summarised at most this often.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(300);

// ---- reconnects (all hosts) ----------------------------------------------

/// `retry_first_delay`: the delay before the second retry.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// `retry_max_delay`: the longest delay between retries.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// `retry_jitter`: the relative spread of a delay (±25 %).
pub const BACKOFF_JITTER: f64 = 0.25;
/// `healthy_after`: a connection up this long forgets its failures.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// `permanent_retry`: the pace after a failure that will not heal by itself.
pub const PERMANENT_RETRY: Duration = Duration::from_secs(300);
/// `resync_interval`: how often the full container list is read again.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

// ---- the daemon's forwards (all hosts) -----------------------------------

/// `connect_wait`: how long a connection accepted while the master is down
/// waits for it (and `startup_window`'s default).
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// `conflict_retry`: how often a port taken by another program is tried.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(3);
/// A UDP session (one client address of a forward) without a datagram
/// either way for this long ends (`udp_idle`).
pub const UDP_IDLE: Duration = Duration::from_secs(60);

// The caps (`max_forwards_per_container`, …) have no fixed default: unset,
// they are shared out of the open-files limit (`crate::budget`).

#[cfg(test)]
mod tests {
    use super::*;

    /// The backoff's own default reads this table.
    #[test]
    fn the_backoff_default_is_the_table() {
        let b = crate::BackoffPolicy::default();
        assert_eq!(
            (b.base, b.cap, b.jitter, b.healthy_after),
            (BACKOFF_BASE, BACKOFF_CAP, BACKOFF_JITTER, HEALTHY_AFTER)
        );
    }
}
