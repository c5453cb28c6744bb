//! The `startup` figures (issue 13, "no race at container start"): the CI pattern
//! `docker run -d -p P:8080 … && connect at once`. fwdd binds a container's fixed host
//! ports at its `create` event and, for `startup_window` after the start, holds a client
//! until the container is seen listening.
//!
//! - N times `docker run -d -p P:8080 <busybox> /bin/httpd -f -p 8080 -h /www` with
//!   `DOCKER_HOST=ssh://<alias>` (the CLI's own ssh support, as runners use it today and
//!   as `run_via_ssh_url` in `tests/e2e/tests/startup.rs` does), and the moment the CLI
//!   returns ONE connection + `GET /` to `127.0.0.1:P` in the runner netns: no retry.
//!   Figures: first-attempt success rate, CLI return → first byte.
//! - a late listener: the container runs `sh -c 'sleep 1.5; exec httpd …'`; one
//!   connection at once; the figure is first byte − 1.5 s, the delay fwd adds for a
//!   client that had to wait (its retries run on a 2-20 ms schedule on the direct
//!   route, 25-250 ms with a probe channel each on the published port).
//!
//! The CLI runs in the runner netns with `ssh` first on `PATH` as a wrapper adding
//! `-F <host.ssh_config>`, like the `engine` group.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{dist, docker_times, local, now_ns, pct, poll, sorted, Ctx, Fwdd, HTTP_REQ};

/// Host ports of this group (the other figures use 20000-23999 and 30000+).
const FIRST_PORT: u16 = 24000;
const LATE_PORT: u16 = 24100;
/// The late listener's `sleep` before it execs httpd.
const LATE_SLEEP_MS: u64 = 1500;

/// One connection at once, no retry: what came back.
struct Attempt {
    /// Connect + request + first byte of the answer, from the CLI's return.
    first_byte_ms: Option<f64>,
    /// `now_ns()` at the first byte.
    first_byte_ns: Option<i128>,
    /// `Ok` for a whole 2xx answer with the body `hello\n`.
    outcome: Result<(), String>,
}

/// connect + `GET /` + read to the end, once. `t0` is the CLI's return.
fn get_once(addr: SocketAddr, t0: Instant) -> Attempt {
    let mut first_byte_ms = None;
    let mut first_byte_ns = None;
    let mut run = || -> io::Result<Result<(), String>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(20))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(HTTP_REQ)?;
        let mut buf = vec![0u8; 4096];
        let k = s.read(&mut buf)?;
        if k == 0 {
            return Ok(Err("closed before any byte (cut)".into()));
        }
        first_byte_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
        first_byte_ns = Some(now_ns());
        buf.truncate(k);
        s.take(64 * 1024).read_to_end(&mut buf)?;
        let ok = buf.starts_with(b"HTTP/1.") && buf.get(9) == Some(&b'2');
        Ok(if ok && buf.ends_with(b"\r\n\r\nhello\n") {
            Ok(())
        } else {
            Err(format!(
                "unexpected answer {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(40)])
            ))
        })
    };
    let outcome = match run() {
        Ok(r) => r,
        Err(e) => Err(format!("{}", e.kind())),
    };
    Attempt {
        first_byte_ms,
        first_byte_ns,
        outcome,
    }
}

impl Ctx<'_> {
    /// `docker` in the runner netns with `DOCKER_HOST=ssh://<alias>` and the wrapper.
    fn ssh_url_docker(&self) -> Command {
        let config = self.host.dir.join("docker-config");
        fs::create_dir_all(&config).expect("docker config dir");
        let path = self.host.ssh_url_path();
        let mut cmd = self.host.runner_command("docker");
        cmd.env("DOCKER_HOST", format!("ssh://{}", self.host.alias))
            .env("DOCKER_CONFIG", &config)
            .env("PATH", path)
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .stdin(Stdio::null());
        cmd
    }

    /// `docker run -d --label fwd-test=<label> <args>` over ssh://, then one connection
    /// to `port` the moment the CLI returns. (CLI ms, container id, attempt, CLI return ns)
    fn run_then_connect(
        &self,
        port: u16,
        args: &[&str],
    ) -> Result<(f64, String, Attempt, i128), String> {
        let label = format!("{}={}", fwd_e2e::LABEL_KEY, self.host.label);
        let mut cmd = self.ssh_url_docker();
        cmd.args(["run", "-d", "--label", &label]).args(args);
        let t_cli = Instant::now();
        let out = cmd.output().map_err(|e| format!("spawn docker: {e}"))?;
        let t_ret = Instant::now();
        let ret_ns = now_ns();
        // At once: this thread is in the runner netns (see `startup`).
        let attempt = get_once(local(port), t_ret);
        if !out.status.success() {
            return Err(format!(
                "docker run failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((
            t_ret.duration_since(t_cli).as_secs_f64() * 1e3,
            id,
            attempt,
            ret_ns,
        ))
    }

    pub(crate) fn startup(&mut self, fwdd: &Fwdd, n: usize, late: usize) {
        println!(
            "[startup] {n}× docker run -d over ssh:// → one GET at once; {late} late listener(s)"
        );
        assert!(fwdd.wait_connected(Duration::from_secs(30)));
        // The CLI over ssh:// works from the runner netns and reaches this host's sshd.
        let logins0 = self.host.sshd_connection_count();
        let mut v = self.ssh_url_docker();
        v.args(["version", "--format", "{{.Server.Version}}"]);
        let out = v.output().expect("spawn docker");
        if !out.status.success() || self.host.sshd_connection_count() == logins0 {
            self.rep.note(format!(
                "startup: DOCKER_HOST=ssh:// does not work here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            self.rep.row(
                "docker run over ssh:// → one connection at once",
                "ssh:// did not work".into(),
                "100 %",
                Some(false),
            );
            return;
        }
        let image = self.host.image.clone();
        let ns = self.ns();
        let (runs, lates) = fwd_e2e::in_netns(&ns, || {
            let mut runs = Vec::new();
            for i in 0..n {
                let port = FIRST_PORT + i as u16;
                let publish = format!("{port}:8080");
                let args = [
                    "-p",
                    &publish,
                    &image,
                    "/bin/httpd",
                    "-f",
                    "-p",
                    "8080",
                    "-h",
                    "/www",
                ];
                runs.push(self.run_then_connect(port, &args));
            }
            let mut lates = Vec::new();
            let script = format!(
                "sleep {}; exec /bin/httpd -f -p 8080 -h /www",
                LATE_SLEEP_MS as f64 / 1000.0
            );
            for k in 0..late {
                let port = LATE_PORT + k as u16;
                let publish = format!("{port}:8080");
                let args = ["-p", &publish, &image, "/bin/sh", "-c", &script];
                lates.push(self.run_then_connect(port, &args));
            }
            (runs, lates)
        });

        // --- the N plain starts
        let mut ids = Vec::new();
        let mut cli_ms = Vec::new();
        let mut ttfb = Vec::new();
        let mut failures = Vec::new();
        let mut ok = 0;
        let mut ret_and_fb: Vec<(String, i128, Option<i128>)> = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            let port = FIRST_PORT + i as u16;
            match r {
                Err(e) => failures.push(format!("{port}: {e}")),
                Ok((ms, id, a, ret_ns)) => {
                    cli_ms.push(*ms);
                    ids.push(id.clone());
                    ret_and_fb.push((id.clone(), *ret_ns, a.first_byte_ns));
                    match &a.outcome {
                        Ok(()) => {
                            ok += 1;
                            ttfb.extend(a.first_byte_ms);
                        }
                        Err(e) => failures.push(format!("{port}: {e}")),
                    }
                }
            }
        }
        let starts = docker_times(self.sb, &ids, "StartedAt");
        let ret_after_start: Vec<f64> = ret_and_fb
            .iter()
            .filter_map(|(id, ret, _)| Some((ret - starts.get(id)?) as f64 / 1e6))
            .collect();
        let fb_after_start: Vec<f64> = ret_and_fb
            .iter()
            .filter_map(|(id, _, fb)| Some((fb.as_ref()? - starts.get(id)?) as f64 / 1e6))
            .collect();
        self.rep.note(format!(
            "startup: docker run -d over ssh:// took {}",
            dist(&sorted(cli_ms))
        ));
        self.rep.note(format!(
            "startup: StartedAt → the CLI's return {}; StartedAt → first byte {}",
            dist(&sorted(ret_after_start)),
            dist(&sorted(fb_after_start))
        ));
        for f in failures.iter().take(5) {
            self.rep.note(format!("startup: not served at once: {f}"));
        }
        let rate = ok as f64 / n as f64 * 100.0;
        self.rep.row(
            &format!("docker run -d over ssh:// ×{n} → ONE connection at once: served"),
            format!("{ok}/{n} ({rate:.0} %)"),
            "100 %",
            Some(ok == n),
        );
        let t = sorted(ttfb);
        self.rep.row(
            "… the CLI's return → first byte",
            format!(
                "p50 {:.1} / p99 {:.1} ms (n={})",
                pct(&t, 50.0),
                pct(&t, 99.0),
                t.len()
            ),
            "- (no target)",
            None,
        );

        // --- the late listener
        if late > 0 {
            let mut added = Vec::new();
            let mut added_start = Vec::new();
            let mut late_fail = Vec::new();
            let mut late_ids = Vec::new();
            for (k, r) in lates.iter().enumerate() {
                let port = LATE_PORT + k as u16;
                match r {
                    Err(e) => late_fail.push(format!("{port}: {e}")),
                    Ok((_, id, a, _)) => {
                        late_ids.push((id.clone(), a.first_byte_ns));
                        match (&a.outcome, a.first_byte_ms) {
                            (Ok(()), Some(ms)) => added.push(ms - LATE_SLEEP_MS as f64),
                            (Err(e), _) => late_fail.push(format!("{port}: {e}")),
                            (Ok(()), None) => late_fail.push(format!("{port}: no first byte")),
                        }
                    }
                }
            }
            let lid: Vec<String> = late_ids.iter().map(|(i, _)| i.clone()).collect();
            let lst = docker_times(self.sb, &lid, "StartedAt");
            for (id, fb) in &late_ids {
                if let (Some(fb), Some(st)) = (fb, lst.get(id)) {
                    added_start.push((fb - st) as f64 / 1e6 - LATE_SLEEP_MS as f64);
                }
            }
            for f in &late_fail {
                self.rep
                    .note(format!("startup: late listener not served: {f}"));
            }
            let each = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            self.rep.note(format!(
                "startup: late listener, first byte − StartedAt − {LATE_SLEEP_MS} ms (the delay after the service could first have answered): {} ms",
                each(&added_start)
            ));
            let a = sorted(added.clone());
            let med = pct(&a, 50.0);
            self.rep.row(
                &format!(
                    "late listener (listens {:.1} s after start), one connection at once: first byte − {:.1} s",
                    LATE_SLEEP_MS as f64 / 1000.0,
                    LATE_SLEEP_MS as f64 / 1000.0
                ),
                format!(
                    "{med:.0} ms (median of {}: {} ms); {}/{late} served",
                    added.len(),
                    each(&added),
                    added.len()
                ),
                "~0.1 s (≤ 0.25 s, one retry step)",
                Some(late_fail.is_empty() && !added.is_empty() && med <= 250.0),
            );
        }
        // The containers go (by label), their ports with them.
        self.rm_all();
        let _ = poll(Duration::from_secs(10), || fwdd.active_count() == 0);
    }
}
