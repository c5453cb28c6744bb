//! The `upgrade` figures (issue 12): `fwdctl upgrade` onto a binary replaced on disk,
//! against what a user does without it — a restart (SIGTERM, start again, as
//! `systemctl restart` does). Both run with an HTTP probe (new connection + `GET /`)
//! every 10 ms through a forwarded port and with 20 idle connections held open through
//! it; the figures are probes refused or failed, the longest probe, and how many held
//! connections still carry a request afterwards.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::HTTP_REQ;
use super::{dist, local, poll, sorted, spawn_in_ns, Ctx, Fwdd, Outcome, Probe, Prober};

const PORT: u16 = 24300;
const HELD: usize = 20;

/// What one trial saw.
struct Trial {
    /// `fwdctl upgrade`'s wall time, or the restart's SIGTERM → serving again.
    took_ms: f64,
    probes: usize,
    refused: usize,
    failed: usize,
    longest_ms: f64,
    held_alive: usize,
    /// Probes that did not succeed or took over 500 ms: start relative to the upgrade/stop, outcome.
    misses: Vec<String>,
}

fn misses(probes: &[Probe], t0: Instant) -> Vec<String> {
    probes
        .iter()
        .filter(|p| {
            p.outcome != Outcome::Ok || p.end.duration_since(p.start) > Duration::from_millis(500)
        })
        .map(|p| {
            let at = if p.start >= t0 {
                p.start.duration_since(t0).as_secs_f64() * 1e3
            } else {
                -(t0.duration_since(p.start).as_secs_f64() * 1e3)
            };
            format!(
                "{at:+.1} ms, took {:.1} ms: {:?}",
                p.end.duration_since(p.start).as_secs_f64() * 1e3,
                p.outcome
            )
        })
        .collect()
}

fn summarise(probes: &[Probe]) -> (usize, usize, usize, f64) {
    let refused = probes
        .iter()
        .filter(|p| p.outcome == Outcome::Refused)
        .count();
    let failed = probes
        .iter()
        .filter(|p| matches!(p.outcome, Outcome::Failed(_)))
        .count();
    let longest = probes
        .iter()
        .map(|p| p.end.duration_since(p.start).as_secs_f64() * 1e3)
        .fold(0.0, f64::max);
    (probes.len(), refused, failed, longest)
}

/// `HELD` connections through the forward, idle: busybox httpd waits for a
/// request on each.
fn hold(ns: &str) -> Vec<TcpStream> {
    spawn_in_ns(ns, || {
        // One at a time: busybox httpd listens with a backlog of 9, and a
        // burst would be dropped at SYN inside the container.
        (0..HELD)
            .filter_map(|_| {
                let c = TcpStream::connect_timeout(&local(PORT), Duration::from_secs(5)).ok();
                std::thread::sleep(Duration::from_millis(20));
                c
            })
            .collect()
    })
    .join()
    .expect("hold thread")
}

/// How many held connections still answer a request.
fn still_alive(held: Vec<TcpStream>) -> usize {
    held.into_iter()
        .filter(|s| {
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if s.write_all(HTTP_REQ).is_err() {
                return false;
            }
            let mut b = [0u8; 16];
            matches!(s.read(&mut b), Ok(n) if n > 0 && b.starts_with(b"HTTP/1."))
        })
        .count()
}

/// A new file renamed over the old one, as dpkg does.
fn replace(from: &Path, at: &Path) {
    let tmp = at.with_extension("new");
    fs::copy(from, &tmp).expect("copy fwdd");
    fs::rename(&tmp, at).expect("rename fwdd");
}

impl Ctx<'_> {
    pub(crate) fn upgrade(&mut self, trials: usize) {
        let dir = self.host.dir.join("installed");
        fs::create_dir_all(&dir).expect("dir");
        let installed = dir.join("fwdd");
        replace(&self.bin_dir.join("fwdd"), &installed);
        let fwdd = Fwdd::spawn_binary(self.host, &installed, &[]);
        assert!(
            fwdd.wait_connected(Duration::from_secs(30)),
            "fwdd did not connect"
        );
        self.host.httpd(&[&format!("{PORT}:8080")]);
        assert!(
            poll(Duration::from_secs(20), || self.host.http_get(PORT).is_ok()),
            "the forward never served"
        );
        let socket = fwdd.runtime_dir.join(fwd_proto::CONTROL_SOCKET_NAME);
        // The restarts replace it.
        let mut fwdd = Some(fwdd);
        let mut upgrades = Vec::new();
        for _ in 0..trials {
            replace(&self.bin_dir.join("fwdd"), &installed);
            upgrades.push(self.trial(2000, true, |_| {
                let t0 = Instant::now();
                let out = Command::new(self.bin_dir.join("fwdctl"))
                    .arg("upgrade")
                    .env("FWD_SOCKET", &socket)
                    .output()
                    .expect("fwdctl upgrade");
                assert!(
                    out.status.success(),
                    "fwdctl upgrade: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                t0.elapsed().as_secs_f64() * 1e3
            }));
        }
        let mut restarts = Vec::new();
        for _ in 0..trials {
            // The refusals are the point here: not noted one by one.
            restarts.push(self.trial(3000, false, |prober| {
                let t0 = Instant::now();
                if let Some(old) = fwdd.take() {
                    old.stop();
                }
                let started = Instant::now();
                fwdd = Some(Fwdd::spawn_binary(self.host, &installed, &[]));
                poll(Duration::from_secs(30), || prober.ok_since(started));
                t0.elapsed().as_secs_f64() * 1e3
            }));
        }
        if let Some(last) = fwdd {
            last.stop();
        }
        self.rm_all();
        self.report_upgrade("fwdctl upgrade", &upgrades, true);
        self.report_upgrade("restart (SIGTERM + start)", &restarts, false);
    }

    /// One trial: `HELD` idle connections and a probe every 10 ms around `act`
    /// (the upgrade or the restart), which returns its wall time in ms.
    fn trial(
        &self,
        max_probes: usize,
        keep_misses: bool,
        act: impl FnOnce(&Prober) -> f64,
    ) -> Trial {
        let held = hold(&self.ns());
        let prober = Prober::start(&self.ns(), PORT, Duration::from_millis(10), max_probes);
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        let took_ms = act(&prober);
        std::thread::sleep(Duration::from_millis(300));
        let all = prober.finish();
        let (probes, refused, failed, longest_ms) = summarise(&all);
        Trial {
            took_ms,
            probes,
            refused,
            failed,
            longest_ms,
            held_alive: still_alive(held),
            misses: if keep_misses {
                misses(&all, t0)
            } else {
                Vec::new()
            },
        }
    }

    fn report_upgrade(&mut self, what: &str, trials: &[Trial], targeted: bool) {
        let took = sorted(trials.iter().map(|t| t.took_ms).collect());
        let longest = sorted(trials.iter().map(|t| t.longest_ms).collect());
        let probes: usize = trials.iter().map(|t| t.probes).sum();
        let refused: usize = trials.iter().map(|t| t.refused).sum();
        let failed: usize = trials.iter().map(|t| t.failed).sum();
        let alive: usize = trials.iter().map(|t| t.held_alive).sum();
        let held = trials.len() * HELD;
        let n = trials.len();
        for (i, t) in trials.iter().enumerate() {
            for m in &t.misses {
                self.rep.note(format!("{what}, trial {i}: probe {m}"));
            }
        }
        self.rep.row(
            &format!("{what}: wall time, {n} trials"),
            dist(&took),
            "—",
            None,
        );
        self.rep.row(
            &format!("{what}: probes refused or failed (every 10 ms)"),
            format!("{refused} refused, {failed} failed of {probes}"),
            if targeted { "0" } else { "—" },
            targeted.then_some(refused + failed == 0),
        );
        self.rep.row(
            &format!("{what}: longest probe (connect + GET)"),
            dist(&longest),
            "—",
            None,
        );
        self.rep.row(
            &format!("{what}: held connections that still answer"),
            format!("{alive} of {held}"),
            if targeted { "all" } else { "—" },
            targeted.then_some(alive == held),
        );
    }
}
