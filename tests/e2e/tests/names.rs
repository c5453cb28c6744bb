//! Every container by name (issue 31): a container's own loopback address
//! on the runner, its declared ports there, published or not, and its names
//! in fwd's hosts files. Names are resolved as programs resolve them:
//! curl through glibc, with the test's hosts file bind-mounted on
//! /etc/hosts in a mount namespace of the lookup's own.

#[macro_use]
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{httpd_serving, Fwdd};
use fwd_e2e::{wait_until, TestHost};
use fwd_proto::NameStatus;

/// A system hosts file as Debian writes it, with lines of the runner's own
/// (one without a final newline is not possible here: fwd appends).
const SYSTEM_HOSTS: &str = "127.0.0.1\tlocalhost\n127.0.1.1\trunner\n\n\
# The following lines are desirable for IPv6 capable hosts\n\
::1     localhost ip6-localhost ip6-loopback\n\
ff02::1 ip6-allnodes\n\
10.9.9.9 sysname   # a name of the system's: never shadowed\n";

fn config(host: &TestHost, hosts_file: &Path) -> String {
    format!(
        "hosts_file = \"{}\"\n[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{}\"\nnames = true\n",
        hosts_file.display(),
        host.alias,
        host.ssh_config.display()
    )
}

/// The test's system hosts file, written fresh.
fn system_hosts(host: &TestHost) -> PathBuf {
    let path = host.dir.join("etc-hosts");
    std::fs::write(&path, SYSTEM_HOSTS).expect("write hosts");
    path
}

/// `curl http://NAME:PORT/` in the runner's namespace, resolving through
/// `hosts` mounted on /etc/hosts (a mount namespace per lookup, so the
/// file fwdd just replaced is the one seen).
fn get_by_name(host: &TestHost, hosts: &Path, name: &str, port: u16) -> Result<String, String> {
    let url = format!("http://{name}:{port}/");
    let out = host
        .runner_command("unshare")
        .args(["-m", "sh", "-c"])
        .arg("mount --bind \"$1\" /etc/hosts && exec curl -sS --noproxy '*' --max-time 5 \"$2\"")
        .arg("sh")
        .arg(hosts)
        .arg(&url)
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn wait_get_by_name(fwdd: &Fwdd, hosts: &Path, name: &str, port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get_by_name(fwdd.host, hosts, name, port) {
            Ok(body) => return body,
            Err(e) if Instant::now() >= deadline => panic!(
                "{name}:{port} never answered: {e}\nnames: {:#?}\nhosts:\n{}\nlog:\n{}",
                fwdd.status().map(|s| s.names),
                std::fs::read_to_string(hosts).unwrap_or_default(),
                fwdd.log_tail(40)
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// fwdd with names for `host`, connected, and the system hosts file it
/// keeps its block in.
fn start(host: &TestHost) -> (PathBuf, Fwdd<'_>) {
    let hosts = system_hosts(host);
    let fwdd = Fwdd::spawn_with_config(host, &config(host, &hosts));
    fwdd.wait_connected();
    (hosts, fwdd)
}

/// A container named `name` serving `body` over HTTP on port 8080, which
/// it declares (`--expose`) and does not publish.
fn serve_named(host: &TestHost, name: &str, body: &str) -> String {
    host.run(&[
        "--name",
        name,
        "--expose",
        "8080",
        &host.image,
        "sh",
        "-c",
        &httpd_serving(body),
    ])
}

/// The host name a container's name answers as (underscores as hyphens:
/// the tests' labels hold their names).
fn dns(container_name: &str) -> String {
    container_name.replace('_', "-")
}

/// The status entry of the container named `container_name`.
fn name_of(fwdd: &Fwdd, container_name: &str) -> Option<NameStatus> {
    fwdd.status()?
        .names
        .into_iter()
        .find(|n| n.container_name == container_name)
}

fn wait_named(fwdd: &Fwdd, container_name: &str) -> NameStatus {
    fwdd.wait_for(
        Duration::from_secs(30),
        &format!("{container_name} served by name"),
        |st| {
            st.names
                .iter()
                .any(|n| n.container_name == container_name && n.state == "serving")
        },
    );
    name_of(fwdd, container_name).expect("named")
}

/// fwd's block of `text`, and the text without it.
fn split_block(text: &str) -> (Vec<String>, String) {
    let mut block = Vec::new();
    let mut outside = String::new();
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with("# >>> fwd names") {
            inside = true;
        }
        if inside {
            block.push(line.trim_end().to_string());
        } else {
            outside.push_str(line);
        }
        if line.starts_with("# <<< fwd names") {
            inside = false;
        }
    }
    (block, outside)
}

fn blocks_in(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("# >>> fwd names"))
        .count()
}

/// The issue's compose project: `db` and `web` publish nothing, and the
/// runner reaches them as `db:5432` and `web.<project>:8080`, through
/// the system resolver; the hosts file changes only inside fwd's block.
#[test]
fn a_compose_service_that_publishes_nothing_answers_by_name() {
    let host = sandbox_host!("names_compose");
    let (hosts, fwdd) = start(&host);
    let dir = host.dir.join("compose");
    std::fs::create_dir_all(&dir).expect("compose dir");
    let serve = |body: &str, port: u16| {
        format!(
            "[\"sh\", \"-c\", \"mkdir -p /w && echo {body} > /w/index.html && exec /bin/httpd -f -p {port} -h /w\"]"
        )
    };
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            r#"version: "3"
services:
  db:
    image: {image}
    command: {db}
    expose: ["5432"]
    labels:
      fwd-test: "{label}"
  web:
    image: {image}
    command: {web}
    expose: ["8080"]
    labels:
      fwd-test: "{label}"
"#,
            image = host.image,
            label = host.label,
            db = serve("db", 5432),
            web = serve("web", 8080),
        ),
    )
    .expect("write compose file");
    let project = format!("fwd{}", host.label.replace(['-', '_'], ""));
    common::compose(&host, &dir, &["-p", &project, "up", "-d"]);

    assert_eq!(wait_get_by_name(&fwdd, &hosts, "db", 5432), "db\n");
    assert_eq!(
        wait_get_by_name(&fwdd, &hosts, &format!("web.{project}"), 8080),
        "web\n"
    );
    // Nothing is published: the forwards have no port of theirs.
    let status = fwdd.status().expect("status");
    assert!(
        !status
            .forwards
            .iter()
            .any(|f| f.local_port == 5432 || f.local_port == 8080),
        "{:#?}",
        status.forwards
    );
    let db = status
        .names
        .iter()
        .find(|n| n.names.contains(&"db".to_string()))
        .expect("db named");
    assert_eq!(db.ports, vec![5432]);
    assert!(db.names.contains(&format!("db.{project}")), "{db:?}");
    // fwdctl names says the same.
    let listed = common::fwdctl(&fwdd, &["names"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(&format!("db, db.{project}")), "{listed}");
    let shown = common::fwdctl(&fwdd, &["status"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("NAMES") && shown.contains(&format!("db, db.{project}")),
        "{shown}"
    );

    let text = std::fs::read_to_string(&hosts).expect("hosts");
    let (block, outside) = split_block(&text);
    assert_eq!(outside, SYSTEM_HOSTS, "bytes outside fwd's block changed");
    assert!(
        block
            .iter()
            .any(|l| l.ends_with(&format!(" db.{project}"))
                || l.contains(&format!(" db.{project} "))),
        "{block:?}"
    );
    // fwd's own file holds the same names.
    let own = std::fs::read_to_string(fwdd.runtime_dir.join("hosts")).expect("own hosts file");
    assert!(own.contains(&format!("web.{project}")), "{own}");

    common::compose(&host, &dir, &["-p", &project, "down", "-t", "1"]);
    wait_until(
        Duration::from_secs(10),
        "names gone after compose down",
        || {
            !std::fs::read_to_string(&hosts)
                .unwrap_or_default()
                .contains(&format!("db.{project}"))
        },
    );
}

/// Two jobs' servers on the same unpublished port each answer at their
/// own name.
#[test]
fn two_containers_on_the_same_unpublished_port_answer_at_their_own_names() {
    let host = sandbox_host!("names_same_port");
    let (hosts, fwdd) = start(&host);
    let one = format!("{}-one", host.label);
    let two = format!("{}-two", host.label);
    serve_named(&host, &one, "one");
    serve_named(&host, &two, "two");
    assert_eq!(wait_get_by_name(&fwdd, &hosts, &dns(&one), 8080), "one\n");
    assert_eq!(wait_get_by_name(&fwdd, &hosts, &dns(&two), 8080), "two\n");
    let (a, b) = (wait_named(&fwdd, &one), wait_named(&fwdd, &two));
    assert_ne!(a.address, b.address);
}

/// `docker rm -f`: the name leaves fwd's block within a second, and its
/// address refuses connections.
#[test]
fn a_removed_container_loses_its_name_within_a_second() {
    let host = sandbox_host!("names_removed");
    let (hosts, fwdd) = start(&host);
    let name = format!("{}-gone", host.label);
    let id = serve_named(&host, &name, "gone");
    assert_eq!(wait_get_by_name(&fwdd, &hosts, &dns(&name), 8080), "gone\n");
    let address = wait_named(&fwdd, &name).address.expect("address");
    host.sandbox().docker_ok(&["rm", "-f", id.trim()]);
    let removed = Instant::now();
    wait_until(Duration::from_secs(5), "the name left the block", || {
        !std::fs::read_to_string(&hosts)
            .unwrap_or_default()
            .contains(&dns(&name))
    });
    let took = removed.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let refused = host.connect_addr(SocketAddr::from((address, 8080)));
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
}

/// A master SIGKILL: the names' listeners stay bound, and every client
/// that connects while the master comes back is served (none refused).
#[test]
fn names_refuse_nothing_while_the_master_comes_back() {
    let host = sandbox_host!("names_master_kill");
    let (hosts, fwdd) = start(&host);
    let name = format!("{}-steady", host.label);
    serve_named(&host, &name, "steady");
    assert_eq!(
        wait_get_by_name(&fwdd, &hosts, &dns(&name), 8080),
        "steady\n"
    );
    let address: Ipv4Addr = wait_named(&fwdd, &name).address.expect("address");
    let old = fwdd.master_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill master");
    let mut served = 0;
    let mut new_master = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match host.http_get_addr(SocketAddr::from((address, 8080))) {
            Ok(body) => {
                assert_eq!(body, "steady\n");
                served += 1;
            }
            Err(e) => panic!("a client was not served while the master came back: {e}"),
        }
        new_master = fwdd.status().is_some_and(|s| {
            s.hosts
                .iter()
                .any(|h| h.master.pid.is_some_and(|p| p != old))
        });
        if new_master && served > 5 {
            break;
        }
    }
    assert!(
        new_master && served > 5,
        "served {served}, new master {new_master}"
    );
}

/// fwdd killed with SIGKILL leaves its block; started again, it writes one
/// block, and every line outside it is as it was.
#[test]
fn a_restarted_fwdd_rewrites_its_block_never_duplicates_it() {
    let host = sandbox_host!("names_crash");
    let hosts = system_hosts(&host);
    let name = format!("{}-kept", host.label);
    serve_named(&host, &name, "kept");
    let toml = config(&host, &hosts);
    {
        let mut fwdd = Fwdd::spawn_with_config(&host, &toml);
        fwdd.wait_connected();
        assert_eq!(wait_get_by_name(&fwdd, &hosts, &dns(&name), 8080), "kept\n");
        fwdd.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = fwdd.child.wait();
    }
    let left = std::fs::read_to_string(&hosts).expect("hosts");
    assert_eq!(blocks_in(&left), 1, "{left}");
    let fwdd = Fwdd::spawn_with_config(&host, &toml);
    fwdd.wait_connected();
    assert_eq!(wait_get_by_name(&fwdd, &hosts, &dns(&name), 8080), "kept\n");
    let text = std::fs::read_to_string(&hosts).expect("hosts");
    assert_eq!(blocks_in(&text), 1, "{text}");
    assert_eq!(split_block(&text).1, SYSTEM_HOSTS);
    let mut fwdd = fwdd;
    fwdd.terminate();
    // A clean exit takes the block away.
    wait_until(Duration::from_secs(10), "the block removed at exit", || {
        std::fs::read_to_string(&hosts).is_ok_and(|t| t == SYSTEM_HOSTS)
    });
}

/// The issue's hostile compose label writes no line, and a container
/// named like a name of the system's does not shadow it.
#[test]
fn hostile_names_write_nothing_and_system_names_are_never_shadowed() {
    let host = sandbox_host!("names_hostile");
    let hosts = system_hosts(&host);
    let sys = format!("{}-sys", host.label);
    std::fs::write(&hosts, format!("{SYSTEM_HOSTS}10.9.9.8 {}\n", dns(&sys))).expect("hosts");
    let fwdd = Fwdd::spawn_with_config(&host, &config(&host, &hosts));
    fwdd.wait_connected();
    let name = format!("{}-odd", host.label);
    host.run(&[
        "--name",
        &name,
        "--expose",
        "8080",
        "--label",
        "com.docker.compose.service=x\n1.2.3.4 github.com",
        "--label",
        "com.docker.compose.project=shop",
        &host.image,
        "sh",
        "-c",
        &httpd_serving("odd"),
    ]);
    serve_named(&host, &sys, "sys");
    assert_eq!(wait_get_by_name(&fwdd, &hosts, &dns(&name), 8080), "odd\n");
    let shadowing = wait_named(&fwdd, &sys);
    assert!(
        shadowing.names.is_empty() && shadowing.refused.iter().any(|r| r.name == dns(&sys)),
        "{shadowing:?}"
    );
    let odd = wait_named(&fwdd, &name);
    assert!(
        odd.refused.iter().any(|r| r.name.contains("github.com")),
        "{odd:?}"
    );
    let text = std::fs::read_to_string(&hosts).expect("hosts");
    let (block, _) = split_block(&text);
    assert!(!text.contains("github.com"), "{text}");
    assert!(
        !block.iter().any(|l| l.contains(&dns(&sys))),
        "a system name shadowed: {block:?}"
    );
    // Each refused spelling (the service, the service in its project) is
    // said once in the log, however many plans ran since.
    let said = |log: &str| {
        log.lines()
            .filter(|l| l.contains("\"name_refused\"") && l.contains("github.com"))
            .count()
    };
    assert_eq!(said(&fwdd.log_text()), 2, "{}", fwdd.log_tail(40));
    host.run(&["--expose", "8080", &host.image, "sleep", "60"]);
    fwdd.wait_for(Duration::from_secs(30), "another plan", |st| {
        st.names.len() >= 3
    });
    assert_eq!(said(&fwdd.log_text()), 2, "{}", fwdd.log_tail(40));
}

/// The zero-downtime upgrade keeps every name's address and listener and
/// every open tunnel: a connection made before it echoes after it, new
/// ones are served by name, and the hosts file is untouched.
#[test]
fn an_upgrade_keeps_every_name_address_and_open_tunnel() {
    let host = sandbox_host!("names_upgrade");
    let hosts = system_hosts(&host);
    let dir = host.dir.join("bin");
    std::fs::create_dir_all(&dir).expect("bin dir");
    let binary = dir.join("fwdd");
    std::fs::copy(common::bin("fwdd"), &binary).expect("install fwdd");
    let toml_path = host.dir.join("fwdd.toml");
    std::fs::write(&toml_path, config(&host, &hosts)).expect("config");
    let toml_path = toml_path.to_string_lossy().into_owned();
    let fwdd = Fwdd::spawn_in(
        &host,
        &host.dir.join("rt"),
        &binary,
        &["--config", &toml_path],
        &[],
    );
    fwdd.wait_connected();
    let name = format!("{}-echo", host.label);
    host.run_with_host_binaries(&[
        "--name",
        &name,
        "--expose",
        "8080",
        &host.image,
        "/usr/bin/python3",
        "-u",
        "-c",
        common::ECHO_SERVER,
    ]);
    let before = wait_named(&fwdd, &name);
    let address = SocketAddr::from((before.address.expect("address"), 8080));
    let mut held = host.in_runner_ns(|| {
        wait_until(Duration::from_secs(20), "echo by name", || {
            host.connect_addr(address)
                .and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(5)))?;
                    common::echo(&mut c, "hello")
                })
                .is_ok()
        });
        host.connect_addr(address).expect("connect")
    });
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(common::echo(&mut held, "before").expect("echo"), "before");
    let text_before = std::fs::read_to_string(&hosts).expect("hosts");

    let out = common::fwdctl(&fwdd, &["upgrade"]);
    assert!(
        out.status.success(),
        "fwdctl upgrade: {} {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fwdd.log_tail(40)
    );
    assert_eq!(
        common::echo(&mut held, "after").expect("the held tunnel survives"),
        "after"
    );
    let after = name_of(&fwdd, &name).expect("still named");
    assert_eq!(after.address, before.address);
    assert_eq!(after.names, before.names);
    assert_eq!(after.state, "serving");
    let mut fresh = host.connect_addr(address).expect("a new connection");
    fresh
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(common::echo(&mut fresh, "new").expect("echo"), "new");
    assert_eq!(std::fs::read_to_string(&hosts).expect("hosts"), text_before);
    assert_eq!(fwdd.status().expect("status").daemon.upgrades, 1);
}
