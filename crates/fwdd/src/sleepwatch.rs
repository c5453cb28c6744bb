//! Sleep and wake: after a laptop or VM resumes, every connection may be
//! dead while nothing has told us. Comparing a clock that counts suspended
//! time with one that does not reveals a sleep; fwdd then probes at once.

use std::time::Duration;

/// A sleep shorter than this is indistinguishable from scheduling noise.
const MIN_GAP: Duration = Duration::from_secs(2);
/// How often the clocks are compared: the idle cost is one wakeup per tick,
/// and a resume usually brings network changes that wake fwdd sooner.
const TICK: Duration = Duration::from_secs(30);

/// The time the machine was suspended between two readings of
/// (clock including suspend, clock excluding suspend), if noticeable.
pub fn slept(prev: (Duration, Duration), now: (Duration, Duration)) -> Option<Duration> {
    let with_suspend = now.0.saturating_sub(prev.0);
    let without = now.1.saturating_sub(prev.1);
    let gap = with_suspend.saturating_sub(without);
    (gap >= MIN_GAP).then_some(gap)
}

#[cfg(target_os = "linux")]
fn clocks() -> Option<(Duration, Duration)> {
    use nix::time::{clock_gettime, ClockId};
    let boot = clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?;
    let mono = clock_gettime(ClockId::CLOCK_MONOTONIC).ok()?;
    Some((Duration::from(boot), Duration::from(mono)))
}

#[cfg(target_os = "macos")]
fn clocks() -> Option<(Duration, Duration)> {
    // On macOS CLOCK_MONOTONIC keeps counting during sleep and
    // CLOCK_UPTIME_RAW does not.
    use nix::time::{clock_gettime, ClockId};
    let with = clock_gettime(ClockId::CLOCK_MONOTONIC).ok()?;
    let without = clock_gettime(ClockId::from_raw(nix::libc::CLOCK_UPTIME_RAW)).ok()?;
    Some((Duration::from(with), Duration::from(without)))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn clocks() -> Option<(Duration, Duration)> {
    None
}

/// Calls `on_wake` after every noticeable suspend.
pub fn spawn(on_wake: impl Fn() + 'static) {
    let Some(mut prev) = clocks() else { return };
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(now) = clocks() else { return };
            if let Some(gap) = slept(prev, now) {
                tracing::info!(
                    event = "resumed",
                    slept_ms = gap.as_millis() as u64,
                    "the machine slept {}s; checking every link",
                    gap.as_secs()
                );
                on_wake();
            }
            prev = now;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_suspend_shows_as_a_gap_between_the_clocks() {
        assert_eq!(slept((s(100), s(90)), (s(105), s(95))), None);
        assert_eq!(slept((s(100), s(90)), (s(165), s(95))), Some(s(60)));
        assert_eq!(slept((s(100), s(90)), (s(101), s(90))), None);
    }

    #[test]
    fn clocks_are_readable_here_and_no_sleep_is_seen_between_two_reads() {
        // Only differences matter: the clocks' origins differ (on some VMs
        // the boot clock even reads lower than the monotonic one).
        let a = clocks().expect("clocks");
        let b = clocks().expect("clocks");
        assert_eq!(slept(a, b), None);
    }
}
