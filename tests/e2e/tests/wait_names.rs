//! End to end: `fwdctl wait` on compose services (compose v1, and a
//! container labelled as compose v2 labels its own) and on names (hosts with
//! `names = true`), issue 32. Host ports 21300-21319 belong to this file.

#[macro_use]
mod common;

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, httpd_serving, Fwdd};
use fwd_e2e::TestHost;
use fwd_proto::ForwardState;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `fwdctl --socket <fwdd's> wait ARGS...` in the runner netns, where
/// fwdd's names' addresses are: `wait` connects to them itself.
fn wait_command(fwdd: &Fwdd, args: &[&str]) -> Command {
    let mut cmd = fwdd.host.runner_command(bin("fwdctl"));
    cmd.arg("--socket")
        .arg(fwdd.control_socket())
        .arg("wait")
        .args(args)
        .env_remove("FWD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn fwdctl_wait(fwdd: &Fwdd, args: &[&str]) -> Output {
    wait_command(fwdd, args).output().expect("run fwdctl wait")
}

/// Runs `wait` to completion within `within`, whatever was started
/// meanwhile by `meanwhile`.
fn wait_while(fwdd: &Fwdd, args: &[&str], within: Duration, meanwhile: impl FnOnce()) -> Output {
    let mut child = wait_command(fwdd, args).spawn().expect("spawn fwdctl wait");
    meanwhile();
    let deadline = Instant::now() + within;
    while child.try_wait().expect("wait for fwdctl").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fwdctl wait {args:?} still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().expect("fwdctl wait status");
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut stdout)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_end(&mut stderr)
        .expect("read stderr");
    Output {
        status,
        stdout,
        stderr,
    }
}

fn assert_ready(out: &Output, what: &str) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("ready after "), "{stdout}");
    assert!(
        stdout.trim_end().ends_with(&format!(": {what}")),
        "{stdout}"
    );
}

/// The README's `docker compose up -d; fwdctl wait web`: compose v1 names
/// the container `<project>_web_1`, v2 `<project>-web-1`; both label it
/// with the service, and `wait` finds it by that.
#[test]
fn wait_finds_compose_services_v1_and_v2() {
    let host = sandbox_host!("wait_compose");
    let fwdd = Fwdd::start(&host);
    let dir = host.dir.join("compose");
    std::fs::create_dir_all(&dir).expect("compose dir");
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            r#"version: "3"
services:
  web:
    image: {image}
    command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
    ports: ["21300:8080"]
    labels:
      fwd-test: "{label}"
"#,
            image = host.image,
            label = host.label
        ),
    )
    .expect("write compose file");
    let project = format!("fwdw{}", host.label.replace(['-', '_'], ""));
    common::compose(&host, &dir, &["-p", &project, "up", "-d"]);

    let out = fwdctl_wait(&fwdd, &["web", "--timeout", "60s"]);
    assert_ready(&out, "web");
    let f = fwdd.forward(21300).expect("the service's forward");
    assert_eq!(f.state, ForwardState::Active, "{f:?}");
    assert_eq!(f.container_name, format!("{project}_web_1"));
    assert_eq!(f.compose_service.as_deref(), Some("web"));
    assert_eq!(host.http_get(21300).expect("GET after wait"), "hello\n");
    assert_ready(
        &fwdctl_wait(&fwdd, &[&format!("web.{project}"), "--timeout", "10s"]),
        &format!("web.{project}"),
    );

    // Compose v2's spelling, labels as v2 puts them; wait runs first.
    let p2 = format!("p2w{}", std::process::id());
    let name = format!("{p2}-web-1");
    let service_in_p2 = format!("web.{p2}");
    let out = wait_while(
        &fwdd,
        &[&service_in_p2, "--timeout", "30s"],
        Duration::from_secs(40),
        || {
            host.run(&[
                "--label",
                "com.docker.compose.service=web",
                "--label",
                &format!("com.docker.compose.project={p2}"),
                "--name",
                &name,
                "-p",
                "21301:8080",
                &host.image,
                "/bin/httpd",
                "-f",
                "-p",
                "8080",
                "-h",
                "/www",
            ]);
        },
    );
    assert_ready(&out, &service_in_p2);
    assert_eq!(host.http_get(21301).expect("GET after wait"), "hello\n");
    // Another project's service is not this one.
    let out = fwdctl_wait(&fwdd, &["web.nosuchproject", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("web.nosuchproject not found"),
        "{}",
        text(&out.stderr)
    );

    common::compose(&host, &dir, &["-p", &project, "down", "-t", "1"]);
}

fn names_config(host: &TestHost) -> String {
    let hosts_file = host.dir.join("etc-hosts");
    std::fs::write(&hosts_file, "127.0.0.1\tlocalhost\n").expect("write hosts");
    format!(
        "hosts_file = \"{}\"\n[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{}\"\nnames = true\n",
        hosts_file.display(),
        host.alias,
        host.ssh_config.display()
    )
}

/// `wait NAME:PORT` on a port nothing publishes: it returns once the name
/// is served and its listener answers, and names what never came.
#[test]
fn wait_on_a_name_and_its_unpublished_port() {
    let host = sandbox_host!("wait_names");
    let fwdd = Fwdd::spawn_with_config(&host, &names_config(&host));
    fwdd.wait_connected();
    // Unique on the sandbox's shared engine: names are the containers'.
    let db = format!("waitdb{}", std::process::id());
    let target = format!("{db}:5432");
    let mut ran = None;
    let out = wait_while(
        &fwdd,
        &[&target, "--timeout", "30s"],
        Duration::from_secs(40),
        || {
            host.run(&[
                "--name",
                &db,
                "--expose",
                "5432",
                &host.image,
                "sh",
                "-c",
                &httpd_serving("db").replace("8080", "5432"),
            ]);
            ran = Some(Instant::now());
        },
    );
    assert_ready(&out, &target);
    let after_run = ran.expect("ran").elapsed();
    assert!(after_run < Duration::from_secs(10), "{after_run:?}");
    let status = fwdd.status().expect("status");
    let entry = status
        .names
        .iter()
        .find(|n| n.names.contains(&db))
        .expect("the name is listed");
    assert_eq!(entry.state, "serving");
    assert_eq!(entry.ports, vec![5432]);
    let address = entry.address.expect("an address");
    assert_eq!(
        host.http_get_addr((address, 5432).into())
            .expect("GET the name's address after wait"),
        "db\n"
    );
    // fwdctl elsewhere than fwdd (the root namespace) cannot reach the
    // name's listener, and says where to run.
    let elsewhere = common::fwdctl(&fwdd, &["wait", &target, "--timeout", "500ms"]);
    assert_eq!(elsewhere.status.code(), Some(1));
    assert!(
        text(&elsewhere.stderr).contains("fwdctl does not run in fwdd's network namespace"),
        "{}",
        text(&elsewhere.stderr)
    );
    // The bare name: every port it serves.
    assert_ready(&fwdctl_wait(&fwdd, &[&db, "--timeout", "10s"]), &db);

    // A port the name does not serve, and a name that never comes.
    let out = fwdctl_wait(&fwdd, &[&format!("{db}:5433"), "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("name {db} does not serve port 5433")),
        "{}",
        text(&out.stderr)
    );
    let never = format!("nosuch{}", std::process::id());
    let t = Instant::now();
    let out = fwdctl_wait(&fwdd, &[&format!("{never}:5432"), "--timeout", "1s"]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "fwdctl: timed out after 1s: name {never} not served (no running container has it"
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
    assert!(took >= Duration::from_secs(1), "{took:?}");
}
