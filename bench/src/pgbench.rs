//! The `pgbench` figures (issue 11): a real client against a real server. PostgreSQL
//! (the runner's own binaries, bind-mounted into the sandbox's busybox image, as the
//! burst group does with Python) runs in a container on the Docker host; `pgbench` on the
//! runner connects through fwd's forward and, alternating, through a plain `ssh -L` of
//! its own (own connection, a session open: what a user runs instead).
//!
//! Two workloads, read-only (`-S`, scale 1), 4 clients, `--pgbench-secs` each:
//! connect-per-transaction (`-C`: every transaction a new TCP connection and a new
//! backend, the cost connect-per-request clients pay) and persistent connections.
//! Rounds alternate fwd / ssh -L; the figure is the ratio of median tps.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{pct, poll, sorted, Ctx, Fwdd};

const PORT: u16 = 24400;
const SSH_L_PORT: u16 = 24401;

/// The newest `/usr/lib/postgresql/<major>/bin` with a server in it.
fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// tps from pgbench's summary ("tps = 1234.5 (without initial connection time)").
fn tps(out: &str) -> Option<f64> {
    out.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

impl Ctx<'_> {
    fn pgbench_run(&self, port: u16, args: &[&str]) -> Result<String, String> {
        let mut cmd = self.host.runner_command("pgbench");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .env("PGCONNECT_TIMEOUT", "10");
        let out = cmd.output().map_err(|e| format!("pgbench: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "pgbench {args:?} on port {port}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    pub(crate) fn pgbench(&mut self, fwdd: &Fwdd, rounds: usize, secs: u64) {
        let Some(pg) =
            pg_bin().filter(|_| Command::new("pgbench").arg("--version").output().is_ok())
        else {
            self.rep.note(
                "pgbench: skipped, no PostgreSQL server under /usr/lib/postgresql or no pgbench (apt-get install postgresql)".to_string(),
            );
            return;
        };
        let pg = pg.display();
        println!("[pgbench] PostgreSQL in a container; {rounds} rounds × (-C, persistent), fwd vs ssh -L");
        let script = format!(
            "{pg}/initdb -D /pg/data -A trust -U postgres >/dev/null && \
             echo 'host all all all trust' >> /pg/data/pg_hba.conf && \
             exec {pg}/postgres -D /pg/data -c listen_addresses=* -c max_connections=100 -k /pg"
        );
        self.host.run_with_host_binaries(&[
            "-v",
            "/etc/passwd:/etc/passwd:ro",
            "-v",
            "/etc/group:/etc/group:ro",
            // The data directory, the server's own (the image's /tmp is root's).
            "--tmpfs",
            "/pg:rw,uid=65534,gid=65534,mode=0700",
            "--user",
            "65534:65534",
            "-p",
            &format!("{PORT}:5432"),
            &self.host.image,
            "/bin/sh",
            "-c",
            &script,
        ]);
        let mut last = String::new();
        let up = poll(Duration::from_secs(60), || {
            match self.pgbench_run(PORT, &["-i", "-s", "1", "-q"]) {
                Ok(_) => true,
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        assert!(up, "PostgreSQL never answered through fwd: {last}");
        let remote = fwdd.remote_of(PORT).expect("the forward's remote end");
        let mut ssh_l = self.ssh_l_serving(SSH_L_PORT, &remote);
        let t = secs.to_string();
        let workloads: [(&str, Vec<&str>); 2] = [
            (
                "connect per transaction (-C -S, 4 clients)",
                vec!["-C", "-S", "-c", "4", "-j", "2", "-T", &t],
            ),
            (
                "persistent connections (-S, 4 clients)",
                vec!["-S", "-c", "4", "-j", "2", "-T", &t],
            ),
        ];
        for (name, args) in &workloads {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                for (port, v) in [(PORT, &mut a), (SSH_L_PORT, &mut b)] {
                    match self.pgbench_run(port, args) {
                        Ok(out) => v.extend(tps(&out)),
                        Err(e) => self.rep.note(e),
                    }
                }
            }
            self.rep.note(format!(
                "pgbench {name}: fwd tps {a:.0?}, ssh -L tps {b:.0?}"
            ));
            let (a, b) = (sorted(a), sorted(b));
            if a.is_empty() || b.is_empty() {
                self.rep.row(
                    &format!("pgbench {name}"),
                    "no result".into(),
                    "≥ 0.98×",
                    Some(false),
                );
                continue;
            }
            let ratio = pct(&a, 50.0) / pct(&b, 50.0);
            self.rep.row(
                &format!("pgbench {name}: tps, fwd / separate ssh -L (median of {rounds})"),
                format!(
                    "{ratio:.2}× ({:.0} vs {:.0} tps)",
                    pct(&a, 50.0),
                    pct(&b, 50.0)
                ),
                "≥ 0.98×",
                Some(ratio >= 0.98),
            );
        }
        let _ = ssh_l.kill();
        let _ = ssh_l.wait();
        self.rm_all();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tps_is_read_from_the_summary() {
        let out = "number of transactions actually processed: 4000\n\
                   latency average = 2.345 ms\n\
                   tps = 1705.123456 (without initial connection time)\n";
        assert_eq!(super::tps(out), Some(1705.123456));
        assert_eq!(super::tps("nothing"), None);
    }
}
