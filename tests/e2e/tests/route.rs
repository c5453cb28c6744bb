//! Each forward's route on the sandbox's rootful engines: the container
//! itself where the host can reach it (IPv4, or IPv6 on Podman's IPv6-only
//! network), the published port where it cannot or where that fails, and
//! what status says of it. (The four engines'
//! routes are `engines.rs`'s; the start race and the late listener on the
//! direct route are `startup.rs`'s.) Host ports 21100-21199 are this file's.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Fwdd;
use fwd_e2e::{run_ok, TestHost};
use fwd_proto::{ForwardRoute, RouteKind};

fn config(host: &TestHost, extra: &str) -> String {
    format!(
        "[[host]]\nurl = \"ssh://{}\"\nssh_config = \"{}\"\n{extra}\n",
        host.alias,
        host.ssh_config.display()
    )
}

/// The container's address on `network`, as the engine says it.
fn address_on(host: &TestHost, id: &str, network: &str) -> String {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    host.sandbox()
        .docker_ok(&["inspect", "-f", &format, id])
        .trim()
        .to_string()
}

fn route(fwdd: &Fwdd, port: u16) -> ForwardRoute {
    fwdd.forward(port)
        .and_then(|f| f.route)
        .unwrap_or_else(|| panic!("no route for {port}: {:#?}", fwdd.status()))
}

/// Waits until the forward of `port` goes to `to`.
fn wait_route_to(fwdd: &Fwdd, port: u16, to: &str) -> ForwardRoute {
    fwdd.wait_for(
        Duration::from_secs(15),
        &format!("port {port} routed to {to}"),
        |st| {
            st.forwards
                .iter()
                .any(|f| f.local_port == port && f.route.as_ref().is_some_and(|r| r.to == to))
        },
    );
    route(fwdd, port)
}

/// A user network of the engine at `socket`, removed (with what is still on
/// it) at the end.
struct Network {
    socket: PathBuf,
    name: String,
}

impl Network {
    fn create(socket: &Path, name: String, options: &[&str]) -> Network {
        let net = Network {
            socket: socket.to_path_buf(),
            name,
        };
        run_ok(
            net.docker()
                .args(["network", "create"])
                .args(options)
                .arg(&net.name),
        );
        net
    }

    fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()));
        cmd
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let on = format!("network={}", self.name);
        if let Ok(out) = self.docker().args(["ps", "-aq", "--filter", &on]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.docker().args(["rm", "-f", id]).output();
            }
        }
        let _ = self.docker().args(["network", "rm", &self.name]).output();
    }
}

#[test]
fn a_container_on_the_default_bridge_is_reached_at_its_own_address() {
    let host = sandbox_host!("route_direct");
    let fwdd = Fwdd::start(&host);
    fwdd.wait_engine_known();
    // Published on the host's loopback only: the direct route does not
    // care where the port is published.
    let id = host.httpd(&["127.0.0.1:21100:8080"]);
    assert_eq!(fwdd.wait_http(21100), "hello\n");
    let r = route(&fwdd, 21100);
    assert_eq!(
        r,
        ForwardRoute {
            kind: RouteKind::Direct,
            to: format!("{}:8080", address_on(&host, &id, "bridge")),
            why: "the container's address on bridge network bridge".into(),
            fell_back: false,
        }
    );
    let f = fwdd.forward(21100).expect("forward");
    assert_eq!(
        f.remote, "127.0.0.1:21100",
        "the published port, still shown"
    );
    // fwdctl wait probes where connections go.
    let out = common::fwdctl(&fwdd, &["wait", "21100", "--timeout", "10s"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn direct_route_off_takes_the_published_port() {
    let host = sandbox_host!("route_off");
    let fwdd = Fwdd::spawn_with_config(&host, &config(&host, "direct_route = false"));
    fwdd.wait_connected();
    host.httpd(&["21110:8080"]);
    assert_eq!(fwdd.wait_http(21110), "hello\n");
    assert_eq!(
        route(&fwdd, 21110),
        ForwardRoute {
            kind: RouteKind::Published,
            to: "127.0.0.1:21110".into(),
            why: "direct_route is off for this host".into(),
            fell_back: false,
        }
    );
}

/// sshd opens channels to its own loopback only (`PermitOpen`): the first
/// connection's direct channel is refused "administratively", which is not
/// "nothing listens yet". That connection is served on the published port
/// at once, the forward stays there and says why, and the log says it once.
#[test]
fn a_direct_route_sshd_will_not_open_falls_back_to_the_published_port_at_once() {
    let host = sandbox_host!("route_permitopen");
    host.add_sshd_config("PermitOpen 127.0.0.1:*");
    let fwdd = Fwdd::start(&host);
    fwdd.wait_engine_known();
    let ids = [host.httpd(&["21120:8080"]), host.httpd(&["21121:8080"])];
    for (port, id) in [21120, 21121].into_iter().zip(&ids) {
        fwdd.wait_forward_state(port, fwd_proto::ForwardState::Active);
        // One attempt: the fallback is the same connection, not a retry.
        let body = host
            .http_get(port)
            .unwrap_or_else(|e| panic!("not served on the fallback: {e}\n{}", fwdd.log_tail(60)));
        assert_eq!(body, "hello\n");
        let r = route(&fwdd, port);
        let direct = format!("{}:8080", address_on(&host, id, "bridge"));
        assert_eq!(r.kind, RouteKind::Published, "{r:?}");
        assert_eq!(r.to, format!("127.0.0.1:{port}"), "{r:?}");
        assert!(r.fell_back, "{r:?}");
        assert!(
            r.why
                .starts_with(&format!("the direct route to {direct} failed: "))
                && r.why.contains("administratively prohibited"),
            "{r:?}"
        );
        // Later connections go straight to the published port.
        assert_eq!(host.http_get(port).expect("served again"), "hello\n");
    }
    let said = fwdd.log_text().matches("\"direct_route_failed\"").count();
    assert_eq!(
        said,
        1,
        "said once per host and reason:\n{}",
        fwdd.log_tail(60)
    );
    let human = common::fwdctl(&fwdd, &["status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("published") && human.contains("administratively prohibited"),
        "{human}"
    );
}

/// The container's address drops sshd's packets (a firewall): the direct
/// channel never opens, and sshd would wait minutes for TCP. The first
/// client is served on the published port once the open has taken
/// `DIRECT_OPEN_WITHIN`, the forward stays there and says why, and the next
/// client goes straight there.
#[test]
fn a_direct_route_that_never_answers_falls_back_after_the_open_limit() {
    let host = sandbox_host!("route_black_hole");
    // Outside a startup window, silence is a failed route at once (inside
    // it, a young container's address may not answer yet).
    let toml = format!("startup_window = \"0s\"\n{}", config(&host, ""));
    let fwdd = Fwdd::spawn_with_config(&host, &toml);
    fwdd.wait_connected();
    fwdd.wait_engine_known();
    let id = host.httpd(&["21160:8080"]);
    let ip = address_on(&host, &id, "bridge");
    let direct = format!("{ip}:8080");
    wait_route_to(&fwdd, 21160, &direct);
    let _dropped = host.drop_sshd_packets_to(&ip);
    let t0 = std::time::Instant::now();
    let mut s = host.connect(21160).expect("the local port accepts");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
    let mut answer = String::new();
    let read = s.read_to_string(&mut answer);
    let waited = t0.elapsed();
    assert!(
        read.is_ok() && answer.ends_with("\r\n\r\nhello\n"),
        "not served on the fallback after {waited:?}: {read:?} {answer:?}\n{}",
        fwdd.log_tail(40)
    );
    assert!(
        waited >= fwd_core::DIRECT_OPEN_WITHIN && waited < fwd_core::DIRECT_OPEN_WITHIN * 2,
        "served after {waited:?}"
    );
    let r = route(&fwdd, 21160);
    assert_eq!(r.kind, RouteKind::Published, "{r:?}");
    assert!(r.fell_back, "{r:?}");
    assert_eq!(
        r.why,
        format!(
            "the direct route to {direct} failed: the channel did not open within {} s",
            fwd_core::DIRECT_OPEN_WITHIN.as_secs()
        )
    );
    let t1 = std::time::Instant::now();
    assert_eq!(host.http_get(21160).expect("served again"), "hello\n");
    assert!(t1.elapsed() < Duration::from_secs(1), "{:?}", t1.elapsed());
}

/// On two bridge networks the first by name is taken; a disconnect (the
/// engine's network event) moves the forward to the address left, and
/// connections follow.
#[test]
fn a_container_on_two_networks_follows_a_disconnect() {
    let host = sandbox_host!("route_two_networks");
    // "a-…" sorts before "bridge".
    let net = Network::create(
        &host.sandbox().docker_sock,
        format!("a-{}", host.label),
        &[],
    );
    let fwdd = Fwdd::start(&host);
    fwdd.wait_engine_known();
    let id = host.httpd_with(&["--network", &net.name, "-p", "21130:8080"]);
    host.sandbox()
        .docker_ok(&["network", "connect", "bridge", &id]);
    let on_net = format!("{}:8080", address_on(&host, &id, &net.name));
    let r = wait_route_to(&fwdd, 21130, &on_net);
    assert_eq!(r.kind, RouteKind::Direct, "{r:?}");
    assert_eq!(
        r.why,
        format!("the container's address on bridge network {}", net.name)
    );
    assert_eq!(fwdd.wait_http(21130), "hello\n");

    // A watcher is told of the move.
    let mut watch = common::fwdctl_command(&fwdd, &["watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn fwdctl watch");
    let lines = common::line_reader(&mut watch);
    common::expect_line(&lines, Duration::from_secs(5), "the snapshot", |_| true);
    host.sandbox()
        .docker_ok(&["network", "disconnect", &net.name, &id]);
    let on_bridge = format!("{}:8080", address_on(&host, &id, "bridge"));
    let r = wait_route_to(&fwdd, 21130, &on_bridge);
    assert_eq!(r.kind, RouteKind::Direct, "{r:?}");
    assert_eq!(host.http_get(21130).expect("served on bridge"), "hello\n");
    let moved = common::expect_line(
        &lines,
        Duration::from_secs(5),
        "forward_route_changed 21130",
        |l| {
            l.starts_with(r#"{"kind":"forward_route_changed""#)
                && l.contains(r#""local_port":21130"#)
        },
    );
    assert!(
        moved.contains(&format!(r#""to":"{on_net}""#))
            && moved.contains(&format!(r#""to":"{on_bridge}""#)),
        "{moved}"
    );
    let _ = watch.kill();
    let _ = watch.wait();
}

/// Podman's network with an IPv6 subnet only: the container's one address
/// is IPv6, and the direct route goes there (the channel names the address
/// bare; the master connects over IPv6 on the host).
#[test]
fn a_container_on_an_ipv6_only_network_is_reached_at_its_ipv6_address() {
    let host = sandbox_host!("route_ipv6_only");
    let sb = host.sandbox();
    let podman = host.containers_on(&sb.podman_sock);
    host.set_session_env("");
    let podman_dir = sb.podman_sock.parent().expect("podman's directory");
    host.bind_on_remote(podman_dir, Path::new("/run/podman"));
    let net = Network::create(
        &sb.podman_sock,
        format!("v6-{}", host.label),
        &["--subnet", "fd00:f0d:18::/64"],
    );
    let fwdd = Fwdd::start(&host);
    fwdd.wait_engine_known();
    let label = format!("fwd-test={}", host.label);
    let mut run = podman.docker();
    run.args(["run", "-d", "--label", &label]);
    run.args(host.httpd_args(&["--network", &net.name, "-p", "21150:8080"]));
    let id = run_ok(&mut run);
    let ip = run_ok(podman.docker().args([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}",
        id.trim(),
    ]));
    assert!(ip.trim().starts_with("fd00:f0d:18::"), "{ip}");
    let r = wait_route_to(&fwdd, 21150, &format!("[{}]:8080", ip.trim()));
    assert_eq!(r.kind, RouteKind::Direct, "{r:?}");
    assert_eq!(fwdd.wait_http(21150), "hello\n");
}
