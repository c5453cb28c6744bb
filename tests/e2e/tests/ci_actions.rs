//! The GitHub Action (`action.yml`: `action/main.js`, `action/post.js`) and
//! the GitLab CI/CD component (`templates/fwd.yml`) run as their CI runs
//! them, against the sandbox's host: the files and variables GitHub gives a
//! step (`INPUT_*`, `GITHUB_ENV`, `GITHUB_STATE`, `RUNNER_TEMP`, …), the
//! template's `before_script` and job script in one shell and its
//! `after_script` in another (`CI_PROJECT_DIR`, `CI_JOB_STATUS`, …). A later
//! step or the job's script reaches a container's port and the engine;
//! the end leaves no process and says what fwd did; a refused key fails the
//! start in `fwdctl doctor`'s words. Nothing is downloaded: the release path
//! is tested with a tarball built here, served from `file://`.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{bin, pid_alive};
use fwd_e2e::TestHost;

/// The port the GitHub test's container publishes (unique among the e2e
/// tests: they share the sandbox's engine).
const GITHUB_PORT: u16 = 24310;
/// The runner port the GitHub test exposes to the host's containers.
const GITHUB_EXPOSED: u16 = 24311;
const GITLAB_PORT: u16 = 24320;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository's root")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A YAML file as JSON (python3's yaml: the e2e crate has no YAML parser),
/// after `transform`, a Python expression over `docs` (the file's documents)
/// and `args` (the JSON given).
fn yaml_query(file: &Path, transform: &str, args: &serde_json::Value) -> serde_json::Value {
    let program = format!(
        "import json, sys, yaml\n\
         docs = list(yaml.safe_load_all(open(sys.argv[1])))\n\
         args = json.loads(sys.argv[2])\n\
         {transform}\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(program)
        .arg(file)
        .arg(args.to_string())
        .output()
        .expect("run python3 (with its yaml module: python3-yaml)");
    assert!(out.status.success(), "reading {file:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON from python3")
}

/// What `action.yml` declares: its inputs with their defaults (GitHub sets
/// `INPUT_<NAME>` for every one of them) and the files `runs.main` and
/// `runs.post` name.
struct ActionManifest {
    inputs: BTreeMap<String, String>,
    main: PathBuf,
    post: PathBuf,
}

fn action_manifest() -> ActionManifest {
    let v = yaml_query(
        &repo_root().join("action.yml"),
        "a = docs[0]\n\
         print(json.dumps({'inputs': {k: str(i.get('default', '')) for k, i in a['inputs'].items()},\n\
                           'using': a['runs']['using'], 'main': a['runs']['main'], 'post': a['runs']['post']}))",
        &serde_json::Value::Null,
    );
    assert!(
        v["using"].as_str().is_some_and(|u| u.starts_with("node")),
        "only a JavaScript action has a post step: {v}"
    );
    let file = |entry: &str| {
        let path = repo_root().join(v[entry].as_str().expect("a runs entry"));
        assert!(path.is_file(), "action.yml's {entry} {path:?} is missing");
        path
    };
    ActionManifest {
        inputs: v["inputs"]
            .as_object()
            .expect("inputs")
            .iter()
            .map(|(k, d)| (k.clone(), d.as_str().unwrap_or("").to_string()))
            .collect(),
        main: file("main"),
        post: file("post"),
    }
}

/// `NAME=value` lines of a GitHub environment or state file (and the
/// `NAME<<DELIMITER` form for values of several lines).
fn github_file_vars(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut vars = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delimiter)) = line.split_once("<<") {
            let value: Vec<&str> = lines.by_ref().take_while(|l| *l != delimiter).collect();
            vars.push((name.to_string(), value.join("\n")));
        } else if let Some((name, value)) = line.split_once('=') {
            vars.push((name.to_string(), value.to_string()));
        }
    }
    vars
}

fn var<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
    vars.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// What a GitHub-hosted runner gives the action: its temporary directory
/// and the step's command files, all under the test's directory.
struct GithubRunner {
    temp: PathBuf,
    env_file: PathBuf,
    output: PathBuf,
    state: PathBuf,
    path_file: PathBuf,
    summary: PathBuf,
    home: PathBuf,
}

impl GithubRunner {
    fn new(host: &TestHost, name: &str) -> GithubRunner {
        let dir = host.dir.join(name);
        let files = dir.join("files");
        for d in [&dir, &files, &dir.join("tmp"), &dir.join("home")] {
            std::fs::create_dir_all(d).expect("create the runner's directories");
        }
        let runner = GithubRunner {
            temp: dir.join("tmp"),
            env_file: files.join("env"),
            output: files.join("output"),
            state: files.join("state"),
            path_file: files.join("path"),
            summary: files.join("summary.md"),
            home: dir.join("home"),
        };
        for f in [
            &runner.env_file,
            &runner.output,
            &runner.state,
            &runner.path_file,
            &runner.summary,
        ] {
            std::fs::write(f, "").expect("create a command file");
        }
        runner
    }

    /// A step's environment: what every step gets, nothing of the test's.
    fn step(&self, host: &TestHost, program: &str) -> Command {
        let mut cmd = host.runner_command(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("CI", "true")
            .env("GITHUB_ACTIONS", "true")
            .env("RUNNER_OS", "Linux")
            .env("RUNNER_TEMP", &self.temp)
            .env("GITHUB_ENV", &self.env_file)
            .env("GITHUB_OUTPUT", &self.output)
            .env("GITHUB_STATE", &self.state)
            .env("GITHUB_PATH", &self.path_file)
            .env("GITHUB_STEP_SUMMARY", &self.summary)
            .env("GITHUB_ACTION_PATH", repo_root())
            .env("GITHUB_ACTION_REPOSITORY", "example/fwd")
            .stdin(Stdio::null());
        cmd
    }

    /// The action's `main` or `post`, as the runner runs it: node with the
    /// entry point action.yml names (bash with the script where this
    /// machine has no node, except in CI), every declared input set, and
    /// for `post` the state `main` saved.
    fn run_action(&self, host: &TestHost, entry: &str, inputs: &[(&str, &str)]) -> Output {
        let has_node = Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            has_node || !in_ci,
            "node is missing but CI=true: install nodejs (scripts/install-deps.sh)"
        );
        let manifest = action_manifest();
        let js = if entry == "main" {
            &manifest.main
        } else {
            &manifest.post
        };
        let (program, script) = if has_node {
            ("node", js.clone())
        } else {
            ("bash", js.with_extension("sh"))
        };
        let mut cmd = self.step(host, program);
        cmd.arg(script);
        let mut values = manifest.inputs;
        for (k, v) in inputs {
            assert!(values.contains_key(*k), "action.yml declares no input {k}");
            values.insert(k.to_string(), v.to_string());
        }
        for (k, v) in &values {
            cmd.env(format!("INPUT_{}", k.to_uppercase()), v);
        }
        if entry == "post" {
            for (k, v) in github_file_vars(&self.state) {
                cmd.env(format!("STATE_{k}"), v);
            }
        }
        cmd.output().expect("run the action")
    }

    /// A later step of the job: `sh -c SCRIPT` with what the action put in
    /// GITHUB_ENV and GITHUB_PATH.
    fn later_step(&self, host: &TestHost, script: &str) -> Output {
        let mut cmd = self.step(host, "sh");
        let mut path: Vec<String> = std::fs::read_to_string(&self.path_file)
            .unwrap_or_default()
            .lines()
            .rev()
            .map(str::to_string)
            .collect();
        path.push(std::env::var("PATH").unwrap_or_default());
        cmd.env("PATH", path.join(":"));
        cmd.envs(github_file_vars(&self.env_file));
        cmd.args(["-ec", script])
            .output()
            .expect("run a later step")
    }
}

/// The inputs the sandbox's host needs: its URL, the key and known_hosts
/// as secrets hold them, and the workspace's binaries.
fn host_inputs(host: &TestHost) -> (String, String, String, String) {
    let url = format!("ssh://root@{}", host.remote_ip);
    let key = std::fs::read_to_string(&host.identity).expect("read the key");
    let known_hosts = std::fs::read_to_string(&host.known_hosts).expect("read known_hosts");
    let bin_dir = bin("fwdd")
        .parent()
        .expect("the binaries' directory")
        .to_string_lossy()
        .into_owned();
    // fwdctl too: the action runs both.
    bin("fwdctl");
    (url, key, known_hosts, bin_dir)
}

/// A fresh key sshd does not know.
fn unknown_key(host: &TestHost) -> String {
    let path = host.dir.join("unknown_key");
    let _ = std::fs::remove_file(&path);
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "not-authorized",
            "-f",
        ])
        .arg(&path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read_to_string(&path).expect("read the new key")
}

/// The summary's table rows: host → the columns after it.
fn summary_rows(summary: &str) -> BTreeMap<String, Vec<String>> {
    summary
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| host") && !l.starts_with("| ---"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            (cells[0].clone(), cells[1..].to_vec())
        })
        .collect()
}

/// fwdd's and its masters' pids, from its status.
fn fwd_processes(socket: &Path) -> Vec<u32> {
    let status =
        fwd_client::status(socket, Duration::from_secs(5)).expect("fwdd answers its status");
    let mut pids = vec![status.daemon.pid];
    pids.extend(status.hosts.iter().filter_map(|h| h.master.pid));
    pids
}

/// The pid in the state the scripts keep in their private directory.
fn state_pid(private_dir: &Path) -> u32 {
    let state = std::fs::read_to_string(private_dir.join("state")).expect("read the state");
    state
        .lines()
        .find_map(|l| l.strip_prefix("FWD_CI_PID="))
        .and_then(|p| p.parse().ok())
        .expect("FWD_CI_PID in the state")
}

#[test]
fn the_github_action_serves_later_steps_and_post_stops_it_with_a_summary() {
    let host = sandbox_host!("ci_action_github");
    host.add_sshd_config("GatewayPorts clientspecified");
    let id = host.httpd(&[&format!("{GITHUB_PORT}:8080")]);
    let (url, key, known_hosts, bin_dir) = host_inputs(&host);
    let runner = GithubRunner::new(&host, "gh");
    let exposed = GITHUB_EXPOSED.to_string();
    let inputs = [
        ("host", url.as_str()),
        ("ssh-key", key.as_str()),
        ("known-hosts", known_hosts.as_str()),
        ("fwd-path", bin_dir.as_str()),
        ("expose", exposed.as_str()),
        ("timeout", "30"),
    ];

    let main = runner.run_action(&host, "main", &inputs);
    assert!(main.status.success(), "main: {}", text(&main));
    let key_file = runner.temp.join("fwd/id");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file)
            .expect("the key's file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the key's file is private");

    let env = github_file_vars(&runner.env_file);
    let docker_host = var(&env, "DOCKER_HOST").expect("DOCKER_HOST in GITHUB_ENV");
    assert!(docker_host.starts_with("unix://"), "{docker_host}");
    let outputs = github_file_vars(&runner.output);
    assert_eq!(var(&outputs, "docker-host"), Some(docker_host));
    let log_path = var(&outputs, "log-path").expect("output log-path");
    assert!(Path::new(log_path).is_file(), "{log_path}");
    let socket = PathBuf::from(var(&outputs, "socket").expect("output socket"));
    assert_eq!(var(&env, "FWD_SOCKET"), socket.to_str());

    // A later step: the forwarded port, the engine through fwd's socket,
    // fwdctl on PATH, and the exposure main made.
    let step = runner.later_step(
        &host,
        &format!(
            "fwdctl wait {GITHUB_PORT} --timeout 30s\n\
             curl -fsS http://127.0.0.1:{GITHUB_PORT}/\n\
             docker ps --no-trunc --format '{{{{.ID}}}}'\n\
             fwdctl wait exposed:{GITHUB_EXPOSED} --timeout 10s"
        ),
    );
    let out = String::from_utf8_lossy(&step.stdout);
    assert!(step.status.success(), "later step: {}", text(&step));
    assert!(out.contains("hello"), "{out}");
    assert!(out.lines().any(|l| l == id), "docker ps lacks {id}: {out}");

    let pids = fwd_processes(&socket);
    assert_eq!(pids.len(), 2, "fwdd and one master: {pids:?}");
    let post = runner.run_action(&host, "post", &inputs);
    assert!(post.status.success(), "post: {}", text(&post));
    for pid in &pids {
        assert!(!pid_alive(*pid), "pid {pid} is left after post");
    }
    assert!(!key_file.exists(), "post leaves the key behind");

    let summary = std::fs::read_to_string(&runner.summary).expect("read the summary");
    assert!(summary.contains("### fwd"), "{summary}");
    let rows = summary_rows(&summary);
    assert_eq!(rows.len(), 1, "one host: {summary}");
    let row = rows.values().next().expect("a row");
    // connected, forwards now, connections forwarded, docker connections,
    // reconnects, failed connections, failed exposures
    assert_eq!(row[0], "yes", "{summary}");
    assert!(row[2].parse::<u64>().expect("a count") >= 1, "{summary}");
    assert!(row[3].parse::<u64>().expect("a count") >= 1, "{summary}");
    assert_eq!(&row[4..], ["0", "0", "0"], "{summary}");
    assert!(!summary.contains("last lines of fwdd's log"), "{summary}");
}

#[test]
fn the_gitlab_component_serves_the_job_script_and_after_script_stops_it() {
    let host = sandbox_host!("ci_component_gitlab");
    let id = host.httpd(&[&format!("{GITLAB_PORT}:8080")]);
    let (url, key, known_hosts, bin_dir) = host_inputs(&host);
    let job = GitlabJob::new(
        &host,
        "gl",
        &[("host", url.as_str()), ("fwd-path", bin_dir.as_str())],
        &key,
        &known_hosts,
    );

    let script = job.run_script(
        &host,
        &format!(
            "fwdctl wait {GITLAB_PORT} --timeout 30s\n\
             curl -fsS http://127.0.0.1:{GITLAB_PORT}/\n\
             docker ps --no-trunc --format '{{{{.ID}}}}'\n\
             fwdctl status --json > \"$CI_PROJECT_DIR/status.json\""
        ),
    );
    let out = String::from_utf8_lossy(&script.stdout);
    assert!(
        script.status.success(),
        "before_script + script: {}",
        text(&script)
    );
    assert!(out.contains("hello"), "{out}");
    assert!(out.lines().any(|l| l == id), "docker ps lacks {id}: {out}");
    let status: fwd_proto::Status = serde_json::from_slice(
        &std::fs::read(job.project.join("status.json")).expect("read the status"),
    )
    .expect("a status");
    let mut pids = vec![status.daemon.pid];
    pids.extend(status.hosts.iter().filter_map(|h| h.master.pid));
    assert_eq!(pids.len(), 2, "fwdd and one master: {pids:?}");

    let after = job.run_after_script(&host, "success");
    let out = String::from_utf8_lossy(&after.stdout);
    assert!(after.status.success(), "after_script: {}", text(&after));
    for pid in &pids {
        assert!(!pid_alive(*pid), "pid {pid} is left after after_script");
    }
    let rows = summary_rows(&out);
    assert_eq!(rows.len(), 1, "one host: {out}");
    let row = rows.values().next().expect("a row");
    assert_eq!(row[0], "yes", "{out}");
    assert!(row[2].parse::<u64>().expect("a count") >= 1, "{out}");
    assert!(row[3].parse::<u64>().expect("a count") >= 1, "{out}");
    assert!(!out.contains("the last lines of fwdd's log"), "{out}");
    assert!(
        !job.tmp.join(format!("fwd-{}/id", job.job_id)).exists(),
        "after_script leaves the key behind"
    );
}

#[test]
fn a_refused_key_fails_the_start_in_doctors_words_and_the_end_leaves_nothing() {
    let host = sandbox_host!("ci_refused_key");
    let (url, _, known_hosts, bin_dir) = host_inputs(&host);
    let key = unknown_key(&host);

    // GitHub: main fails with doctor's words as an annotation; post stops
    // fwdd and puts the log's tail in the summary.
    let runner = GithubRunner::new(&host, "gh");
    let inputs = [
        ("host", url.as_str()),
        ("ssh-key", key.as_str()),
        ("known-hosts", known_hosts.as_str()),
        ("fwd-path", bin_dir.as_str()),
        ("timeout", "30"),
    ];
    let main = runner.run_action(&host, "main", &inputs);
    let out = String::from_utf8_lossy(&main.stdout);
    assert!(!main.status.success(), "main: {}", text(&main));
    let annotation = out
        .lines()
        .find(|l| l.starts_with("::error title=fwd::"))
        .unwrap_or_else(|| panic!("no error annotation: {}", text(&main)));
    assert!(
        annotation.contains("FAIL  authentication") && annotation.contains("publickey"),
        "{annotation}"
    );
    assert!(annotation.contains("fix: "), "{annotation}");
    assert!(
        var(&github_file_vars(&runner.env_file), "DOCKER_HOST").is_none(),
        "a failed start exports nothing"
    );
    let pid = state_pid(&runner.temp.join("fwd"));
    let post = runner.run_action(&host, "post", &inputs);
    assert!(post.status.success(), "post: {}", text(&post));
    assert!(!pid_alive(pid), "fwdd (pid {pid}) is left after post");
    let summary = std::fs::read_to_string(&runner.summary).expect("read the summary");
    assert!(summary.contains("**no**"), "{summary}");
    assert!(summary.contains("last lines of fwdd's log"), "{summary}");
    assert!(
        String::from_utf8_lossy(&post.stdout).contains("::warning title=fwd::"),
        "{}",
        text(&post)
    );

    // GitLab: before_script fails the job; after_script sees it failed,
    // shows the log's tail and stops fwdd; the log is where the template's
    // artifacts take it from.
    let job = GitlabJob::new(
        &host,
        "gl",
        &[("host", url.as_str()), ("fwd-path", bin_dir.as_str())],
        &key,
        &known_hosts,
    );
    let script = job.run_script(&host, "echo the job script ran");
    let out = String::from_utf8_lossy(&script.stdout);
    let err = String::from_utf8_lossy(&script.stderr);
    assert!(!script.status.success(), "{}", text(&script));
    assert!(!out.contains("the job script ran"), "{out}");
    assert!(
        err.contains("FAIL  authentication") && err.contains("publickey"),
        "{}",
        text(&script)
    );
    let pid = state_pid(&job.tmp.join(format!("fwd-{}", job.job_id)));
    let after = job.run_after_script(&host, "failed");
    let out = String::from_utf8_lossy(&after.stdout);
    assert!(after.status.success(), "after_script: {}", text(&after));
    assert!(
        !pid_alive(pid),
        "fwdd (pid {pid}) is left after after_script"
    );
    assert!(out.contains("the last lines of fwdd's log"), "{out}");
    for artifact in &job.artifacts {
        assert!(
            job.project.join(artifact).is_file(),
            "the artifact {artifact} is missing"
        );
    }
}

/// A job that extends the component's `.fwd`, as a GitLab runner with a
/// shell executor runs it: the template read with the inputs interpolated,
/// its variables expanded from the project's CI/CD variables (the key a
/// File variable, known_hosts a plain one), `before_script` and the script
/// in one `sh -e`, `after_script` in another.
struct GitlabJob {
    project: PathBuf,
    tmp: PathBuf,
    home: PathBuf,
    job_id: u32,
    variables: Vec<(String, String)>,
    before_script: Vec<String>,
    after_script: Vec<String>,
    artifacts: Vec<String>,
}

impl GitlabJob {
    fn new(
        host: &TestHost,
        name: &str,
        inputs: &[(&str, &str)],
        key: &str,
        known_hosts: &str,
    ) -> GitlabJob {
        let dir = host.dir.join(name);
        let project = dir.join("project");
        let tmp = dir.join("tmp");
        let home = dir.join("home");
        let secrets = dir.join("secrets");
        for d in [&project, &tmp, &home, &secrets] {
            std::fs::create_dir_all(d).expect("create the job's directories");
        }
        let key_file = secrets.join("FWD_SSH_KEY");
        std::fs::write(&key_file, key).expect("write the key's File variable");
        let ci_variables = BTreeMap::from([
            (
                "FWD_SSH_KEY".to_string(),
                key_file.to_string_lossy().into_owned(),
            ),
            ("FWD_KNOWN_HOSTS".to_string(), known_hosts.to_string()),
        ]);

        let given: BTreeMap<&str, &str> = inputs.iter().copied().collect();
        let job = yaml_query(
            &repo_root().join("templates/fwd.yml"),
            "import re\n\
             spec, jobs = docs[0]['spec'], docs[1]\n\
             values = {k: str(i.get('default', '')) for k, i in spec['inputs'].items()}\n\
             for k in args: assert k in values, 'no input ' + k\n\
             values.update(args)\n\
             def fill(v):\n  \
               if isinstance(v, str): return re.sub(r'\\$\\[\\[\\s*inputs\\.([\\w-]+)\\s*\\]\\]', lambda m: values[m.group(1)], v)\n  \
               if isinstance(v, list): return [fill(x) for x in v]\n  \
               if isinstance(v, dict): return {k: fill(x) for k, x in v.items()}\n  \
               return v\n\
             print(json.dumps(fill(jobs['.fwd'])))",
            &serde_json::to_value(given).expect("inputs as JSON"),
        );
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .expect("a list")
                .iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        };
        let before_script = strings(&job["before_script"]);
        let after_script = strings(&job["after_script"]);
        let lib = std::fs::read_to_string(repo_root().join("action/fwd-ci.sh"))
            .expect("read action/fwd-ci.sh");
        assert_eq!(
            before_script[0], lib,
            "templates/fwd.yml must embed action/fwd-ci.sh verbatim (as its first before_script item)"
        );
        assert_eq!(after_script[0], lib, "after_script embeds it too");
        // GitLab expands variables in `variables:` when the job runs.
        let variables = job["variables"]
            .as_object()
            .expect("variables")
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().expect("a string value");
                let name = v.strip_prefix('$').unwrap_or("");
                let v = ci_variables.get(name).map_or(v, String::as_str);
                (k.clone(), v.to_string())
            })
            .collect();
        assert_eq!(job["artifacts"]["when"], "on_failure");
        GitlabJob {
            project,
            tmp,
            home,
            job_id: 4242,
            variables,
            before_script,
            after_script,
            artifacts: strings(&job["artifacts"]["paths"]),
        }
    }

    fn shell(&self, host: &TestHost, script: &str) -> Command {
        let mut cmd = host.runner_command("sh");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("TMPDIR", &self.tmp)
            .env("CI", "true")
            .env("GITLAB_CI", "true")
            .env("CI_JOB_ID", self.job_id.to_string())
            .env("CI_PROJECT_DIR", &self.project)
            .envs(self.variables.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.project)
            .args(["-ec", script])
            .stdin(Stdio::null());
        cmd
    }

    /// `before_script` and the job's `script`, in one shell.
    fn run_script(&self, host: &TestHost, script: &str) -> Output {
        let mut all = self.before_script.join("\n");
        all.push('\n');
        all.push_str(script);
        self.shell(host, &all)
            .output()
            .expect("run the job's script")
    }

    /// `after_script`, in a shell of its own, with the job's status.
    fn run_after_script(&self, host: &TestHost, job_status: &str) -> Output {
        self.shell(host, &self.after_script.join("\n"))
            .env("CI_JOB_STATUS", job_status)
            .output()
            .expect("run after_script")
    }
}

/// The release path: a tarball built here (packaging/build-release.sh from
/// the workspace's binaries) installed from `file://` after its checksum
/// matched; a wrong pinned checksum installs nothing. No sandbox needed.
#[test]
fn a_release_is_installed_only_when_its_checksum_matches() {
    // fwdd, fwdctl and the UDP relay built static, as a release has them.
    let bin_dir = fwd_packaging_tests::bin_dir();
    let work = tempfile::tempdir().expect("a temporary directory");
    let dist = work.path().join("dist");
    let out = Command::new("bash")
        .arg(repo_root().join("packaging/build-release.sh"))
        .env("FWD_BIN_DIR", bin_dir)
        .env("DIST", &dist)
        .output()
        .expect("run build-release.sh");
    assert!(out.status.success(), "build-release.sh: {}", text(&out));
    let tarball = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let name = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .expect("the tarball's name")
        .to_string();
    let version = name
        .strip_prefix("fwd-")
        .and_then(|n| n.split('-').next())
        .expect("fwd-VERSION-TARGET.tar.gz");
    let lib = repo_root().join("action/fwd-ci.sh");
    let install = |private: &str, sha256: &str| {
        Command::new("sh")
            .arg("-ec")
            .arg(". \"$1\"; mkdir -p \"$FWD_CI_DIR\"; fwd_ci_install; \"$FWD_CI_BIN/fwdctl\" --version")
            .arg("sh")
            .arg(&lib)
            .env("FWD_CI_DIR", work.path().join(private))
            .env("FWD_CI_VERSION", version)
            .env("FWD_CI_RELEASE_URL", format!("file://{}", dist.display()))
            .env("FWD_CI_SHA256", sha256)
            .env("FWD_CI_FLAVOR", "github")
            .output()
            .expect("run fwd_ci_install")
    };

    let good = install("good", "");
    assert!(good.status.success(), "{}", text(&good));
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(out.contains(&format!("fwdctl {version}")), "{out}");
    let published =
        std::fs::read_to_string(dist.join(format!("{name}.sha256"))).expect("read the .sha256");
    let sum = published.split_whitespace().next().expect("a checksum");
    assert!(out.contains(&format!("sha256 {sum}")), "{out}");

    let pinned = install("pinned", &sum.to_uppercase());
    assert!(pinned.status.success(), "{}", text(&pinned));

    let wrong = "0".repeat(64);
    let refused = install("wrong", &wrong);
    assert!(!refused.status.success(), "{}", text(&refused));
    let err = String::from_utf8_lossy(&refused.stdout);
    assert!(
        err.contains("::error title=fwd::")
            && err.contains(&format!(
                "has sha256 {sum}, but the sha256 input says {wrong}"
            )),
        "{}",
        text(&refused)
    );
    assert!(
        !work.path().join("wrong/download").join(&name).exists(),
        "a tarball that failed its check is removed"
    );
    assert!(
        !work
            .path()
            .join("wrong/download")
            .join(name.trim_end_matches(".tar.gz"))
            .exists(),
        "nothing is unpacked"
    );

    // A corrupt download fails against the published checksum too.
    let mut bytes = std::fs::read(&tarball).expect("read the tarball");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&tarball, bytes).expect("corrupt the tarball");
    let corrupt = install("corrupt", "");
    assert!(!corrupt.status.success(), "{}", text(&corrupt));
    assert!(
        String::from_utf8_lossy(&corrupt.stdout).contains(".sha256 says"),
        "{}",
        text(&corrupt)
    );
}

/// The shared script is POSIX sh (GitLab's job images may have no bash):
/// it parses under dash and `sh`, and every script passes shellcheck
/// (required where CI=true).
#[test]
fn the_ci_scripts_parse_as_sh_and_pass_shellcheck() {
    let root = repo_root();
    for shell in ["sh", "dash"] {
        let Ok(out) = Command::new(shell)
            .arg("-n")
            .arg(root.join("action/fwd-ci.sh"))
            .output()
        else {
            continue;
        };
        assert!(out.status.success(), "{shell} -n: {}", text(&out));
    }
    let shellcheck = Command::new("shellcheck").arg("--version").output();
    if !shellcheck.is_ok_and(|o| o.status.success()) {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !in_ci,
            "shellcheck is missing but CI=true: install shellcheck (scripts/install-deps.sh)"
        );
        eprintln!("SKIPPED: shellcheck not found");
        return;
    }
    let out = Command::new("shellcheck")
        .arg("-x")
        .args([
            "action/fwd-ci.sh",
            "action/main.sh",
            "action/post.sh",
            "action/sync-gitlab-template.sh",
        ])
        .current_dir(&root)
        .output()
        .expect("run shellcheck");
    assert!(out.status.success(), "shellcheck: {}", text(&out));
}
