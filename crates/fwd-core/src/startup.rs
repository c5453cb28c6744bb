//! Holding a client while a young container's service starts listening.
//!
//! A container runs before the process in it listens (every database takes
//! a moment), so a client that connects the instant `docker run` returns
//! gets its channel refused by the remote side ("connect failed: Connection
//! refused"). For a forward that became active within the startup window
//! the open is retried on a short schedule instead of cutting the client:
//! the client sees a slow connect, not an error. Outside the window a
//! refusal is a real "nothing listens there" and closes the client at once.
//!
//! Docker's userland proxy makes it subtler: it listens on the published
//! port from the start, accepts, and closes the connection when the
//! container refuses it. The channel then opens fine and ends at once, and
//! a client handed over would be cut with its first bytes lost. So until a
//! young container is seen listening, fwd first opens a probe channel and
//! waits [`listen_probe_wait`] for it to end: ended means "not yet".

use std::time::Duration;

const FIRST_RETRY: Duration = Duration::from_millis(25);
const MAX_RETRY: Duration = Duration::from_millis(250);

/// After the `attempt`-th refusal (0-based) of a forward active for
/// `active_for`: how long to wait before opening again, or `None` to give
/// up. The retries never reach past the end of `window` (zero turns it off).
pub fn retry_refused(active_for: Duration, attempt: u32, window: Duration) -> Option<Duration> {
    doubling_within_window(FIRST_RETRY, MAX_RETRY, active_for, attempt, window)
}

/// `first` doubled per attempt, capped at `max`, never past the end of
/// `window` (zero turns it off): the shape of every startup retry schedule.
pub(crate) fn doubling_within_window(
    first: Duration,
    max: Duration,
    active_for: Duration,
    attempt: u32,
    window: Duration,
) -> Option<Duration> {
    let left = window.checked_sub(active_for)?;
    if left.is_zero() {
        return None;
    }
    let delay = first.saturating_mul(1 << attempt.min(8)).min(max);
    Some(delay.min(left))
}

/// How long a probe channel that opened in `open_rtt` must stay open to
/// count as reaching a listener: the userland proxy's close arrives about
/// one round trip after the open.
pub fn listen_probe_wait(open_rtt: Duration) -> Duration {
    open_rtt
        .saturating_mul(3)
        .clamp(Duration::from_millis(10), Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    #[test]
    fn quick_at_first_then_capped_and_never_past_the_window() {
        let ms = |n| Duration::from_millis(n);
        let delays: Vec<_> = (0..6).map(|a| retry_refused(ms(0), a, WINDOW)).collect();
        assert_eq!(
            delays,
            vec![
                Some(ms(25)),
                Some(ms(50)),
                Some(ms(100)),
                Some(ms(200)),
                Some(ms(250)),
                Some(ms(250))
            ]
        );
        assert_eq!(retry_refused(ms(9_900), 9, WINDOW), Some(ms(100)));
        assert_eq!(retry_refused(WINDOW, 0, WINDOW), None);
        assert_eq!(retry_refused(ms(60_000), 0, WINDOW), None);
        assert_eq!(retry_refused(ms(0), 0, Duration::ZERO), None, "off");
    }

    #[test]
    fn the_probe_waits_a_few_round_trips_within_bounds() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(listen_probe_wait(Duration::from_micros(300)), ms(10));
        assert_eq!(listen_probe_wait(ms(20)), ms(60));
        assert_eq!(listen_probe_wait(ms(400)), ms(100));
    }

    #[test]
    fn a_service_listening_1_5_s_after_start_is_reached_within_a_retry() {
        // Simulate: refusals until 1.5 s, count the time the client waits.
        let mut t = Duration::ZERO;
        let mut attempt = 0;
        while t < Duration::from_millis(1500) {
            t += retry_refused(t, attempt, WINDOW).expect("still in the window");
            attempt += 1;
        }
        assert!(t < Duration::from_millis(1750), "{t:?}");
    }
}
