//! `fwdctl doctor` against the sandbox's real sshd and dockerd: a good
//! host, an unknown host key, a refused key, sshd without stream-local
//! forwarding, and through a running fwdd.

#[macro_use]
mod common;

use std::process::Output;

use common::{bin, fwdctl, Fwdd};
use fwd_e2e::TestHost;

/// `fwdctl doctor --host ssh://<alias> --ssh-config <cfg> ARGS` in the runner's namespace.
fn doctor(host: &TestHost, args: &[&str]) -> Output {
    let mut cmd = host.runner_command(bin("fwdctl"));
    cmd.arg("--runtime-dir")
        .arg(host.dir.join("rt-doctor"))
        .arg("doctor")
        .arg("--host")
        .arg(format!("ssh://{}", host.alias))
        .arg("--ssh-config")
        .arg(&host.ssh_config)
        .args(args);
    cmd.output().expect("run fwdctl doctor")
}

/// (verdict, detail, fix) of the check `name`, from `--json`.
fn check(out: &Output, name: &str) -> (String, String, String) {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let c = v[0]["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name:?} in {v}"));
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    (s("verdict"), s("detail"), s("fix"))
}

#[test]
fn a_good_host_passes_and_gateway_ports_is_a_warning_with_its_fix() {
    let host = sandbox_host!("doctor_good");
    let out = doctor(&host, &["--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for name in [
        "ssh client",
        "connection",
        "host key",
        "authentication",
        "engine location",
        "stream-local forwarding",
        "engine",
        "clock",
        "sessions",
    ] {
        assert_eq!(
            check(&out, name).0,
            "pass",
            "{name}: {:?}",
            check(&out, name)
        );
    }
    assert!(
        check(&out, "engine").1.contains("API"),
        "{:?}",
        check(&out, "engine")
    );
    let gw = check(&out, "GatewayPorts (expose)");
    assert_eq!(gw.0, "warn", "{gw:?}");
    assert!(gw.2.contains("GatewayPorts clientspecified"), "{gw:?}");

    // For people: one line per check, the fix under a warning.
    let text = doctor(&host, &[]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("ok    host key")),
        "{text}"
    );
    assert!(text.contains("fix: for `expose`"), "{text}");

    host.add_sshd_config("GatewayPorts clientspecified");
    let out = doctor(&host, &["--json"]);
    assert_eq!(check(&out, "GatewayPorts (expose)").0, "pass");
}

#[test]
fn an_unknown_host_key_fails_with_the_keyscan_to_run_after_checking() {
    let host = sandbox_host!("doctor_hostkey");
    std::fs::write(&host.known_hosts, "").expect("empty known_hosts");
    let out = doctor(&host, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let (verdict, _, fix) = check(&out, "host key");
    assert_eq!(verdict, "fail");
    let keyscan = match host.ssh_port {
        22 => format!("ssh-keyscan {}", host.remote_ip),
        p => format!("ssh-keyscan -p {p} {}", host.remote_ip),
    };
    assert!(
        fix.contains(&format!("{keyscan} >> ~/.ssh/known_hosts")),
        "{fix}"
    );
    assert!(fix.contains("ssh-keygen -lf"), "{fix}");
    assert_eq!(check(&out, "engine").0, "skip");
}

#[test]
fn a_refused_key_fails_authentication() {
    let host = sandbox_host!("doctor_badkey");
    host.rotate_client_key_wrongly();
    let out = doctor(&host, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let (verdict, detail, fix) = check(&out, "authentication");
    assert_eq!(verdict, "fail", "{detail}");
    assert!(detail.contains("publickey"), "{detail}");
    // Which key: the one in the test's ssh config, by its fingerprint.
    assert!(detail.contains("SHA256:"), "{detail}");
    assert!(fix.contains("authorized_keys"), "{fix}");
    assert_eq!(check(&out, "host key").0, "pass");
}

#[test]
fn a_low_max_sessions_is_a_warning() {
    let host = sandbox_host!("doctor_sessions");
    host.add_sshd_config("MaxSessions 3");
    let out = doctor(&host, &["--json"]);
    let (verdict, detail, fix) = check(&out, "sessions");
    assert_eq!(verdict, "warn", "{detail}");
    assert!(detail.contains("only 3 of 8"), "{detail}");
    assert!(fix.contains("MaxSessions"), "{fix}");
}

#[test]
fn sshd_without_stream_local_forwarding_is_named_while_the_engine_answers() {
    let host = sandbox_host!("doctor_nostreamlocal");
    host.add_sshd_config("AllowStreamLocalForwarding no");
    let out = doctor(&host, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let (verdict, _, fix) = check(&out, "stream-local forwarding");
    assert_eq!(verdict, "fail");
    assert!(fix.contains("AllowStreamLocalForwarding"), "{fix}");
    assert_eq!(
        check(&out, "engine").0,
        "pass",
        "{:?}",
        check(&out, "engine")
    );
}

#[test]
fn through_a_running_fwdd_every_host_is_checked_as_it_sees_it() {
    let host = sandbox_host!("doctor_daemon");
    let fwdd = Fwdd::start(&host);
    let out = fwdctl(&fwdd, &["doctor", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(check(&out, "authentication").0, "pass");
    assert_eq!(check(&out, "engine").0, "pass");
}
