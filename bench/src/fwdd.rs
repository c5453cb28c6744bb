//! The daemon under test: spawned in the runner namespace, asked over the
//! control socket (`fwd-client`), stopped, its log kept on request.

#[allow(unused_imports)]
use super::*;

pub(crate) struct Fwdd {
    pub(crate) child: Child,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) log: PathBuf,
}

impl Fwdd {
    pub(crate) fn spawn(host: &TestHost, bin_dir: &Path) -> Fwdd {
        Fwdd::spawn_env(host, bin_dir, &[])
    }

    /// [`Fwdd::spawn`] with extra environment variables (e.g. `FWD_LOG`).
    pub(crate) fn spawn_env(host: &TestHost, bin_dir: &Path, env: &[(&str, &str)]) -> Fwdd {
        Fwdd::spawn_binary(host, &bin_dir.join("fwdd"), env)
    }

    /// fwdd started from `binary` (an installed copy, for the upgrade figures).
    pub(crate) fn spawn_binary(host: &TestHost, binary: &Path, env: &[(&str, &str)]) -> Fwdd {
        let host_args = [
            "--host".into(),
            format!("ssh://{}", host.alias).into(),
            "--ssh-config".into(),
            host.ssh_config.clone().into_os_string(),
        ];
        Fwdd::spawn_args(host, binary, &host_args, env)
    }

    /// fwdd with the configuration file `config` instead of `--host`.
    pub(crate) fn spawn_with_config(host: &TestHost, bin_dir: &Path, config: &Path) -> Fwdd {
        let args = ["--config".into(), config.as_os_str().to_owned()];
        Fwdd::spawn_args(host, &bin_dir.join("fwdd"), &args, &[])
    }

    fn spawn_args(
        host: &TestHost,
        binary: &Path,
        args: &[std::ffi::OsString],
        env: &[(&str, &str)],
    ) -> Fwdd {
        let runtime_dir = host.dir.join("rt");
        let log = host.dir.join("fwdd.log");
        let log_file = File::create(&log).expect("create fwdd log");
        let mut cmd = host.runner_command(binary);
        cmd.args(args)
            .arg("--runtime-dir")
            .arg(&runtime_dir)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // FWD_LOG passes through from the environment (default: info).
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn fwdd");
        Fwdd {
            child,
            runtime_dir,
            log,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn status(&self) -> Option<Status> {
        let socket = self.runtime_dir.join(fwd_proto::CONTROL_SOCKET_NAME);
        fwd_client::status(&socket, Duration::from_secs(5)).ok()
    }

    pub(crate) fn master_pid(&self) -> Option<u32> {
        let st = self.status()?;
        let h = st.hosts.first()?;
        (h.master.state == MasterState::Connected)
            .then_some(h.master.pid)
            .flatten()
    }

    pub(crate) fn wait_connected(&self, timeout: Duration) -> bool {
        poll(timeout, || self.master_pid().is_some())
    }

    pub(crate) fn active_count(&self) -> usize {
        self.status()
            .map(|s| {
                s.forwards
                    .iter()
                    .filter(|f| f.state == ForwardState::Active)
                    .count()
            })
            .unwrap_or(0)
    }

    pub(crate) fn remote_of(&self, port: u16) -> Option<String> {
        self.status()?
            .forwards
            .into_iter()
            .find(|f| f.local_port == port && f.state == ForwardState::Active)
            .map(|f| f.remote)
    }

    pub(crate) fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn log_lines(&self) -> usize {
        fs::read_to_string(&self.log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    pub(crate) fn stop(mut self) {
        self.keep_log();
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Fwdd {
    /// Copies fwdd's log to `$FWD_BENCH_LOGDIR` (if set) before the test host goes away.
    pub(crate) fn keep_log(&self) {
        if let Some(dir) = std::env::var_os("FWD_BENCH_LOGDIR").filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            let _ = fs::create_dir_all(&dir);
            let name = format!("fwdd-{}.log", self.child.id());
            let _ = fs::copy(&self.log, dir.join(name));
        }
    }
}

impl Drop for Fwdd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
