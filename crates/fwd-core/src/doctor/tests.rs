use super::*;

fn verdicts(checks: &[Check]) -> Vec<(&str, Verdict)> {
    checks.iter().map(|c| (c.name, c.verdict)).collect()
}

#[test]
fn the_ssh_client() {
    let ok = ssh_client(Ok(
        "OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19 27 Jan 2026\n",
    ));
    assert_eq!(ok.verdict, Verdict::Pass);
    assert!(ok.detail.starts_with("OpenSSH_9.2p1"));
    assert_eq!(
        ssh_client(Ok("OpenSSH_7.6p1 Ubuntu")).verdict,
        Verdict::Pass
    );
    let old = ssh_client(Ok("OpenSSH_7.4p1, OpenSSL 1.0.2k"));
    assert_eq!(old.verdict, Verdict::Fail);
    assert!(old.detail.contains("older than 7.6"), "{}", old.detail);
    assert_eq!(ssh_client(Ok("Sun_SSH_1.1")).verdict, Verdict::Fail);
    assert!(ssh_client(Err("No such file or directory"))
        .fix
        .unwrap()
        .contains("openssh-client"));
}

#[test]
fn an_unknown_host_key_says_how_to_add_it_after_checking() {
    let c = connection(
        Err("No ED25519 host key is known for [10.1.2.3]:2222 and you have requested strict checking.\nHost key verification failed."),
        "10.1.2.3",
        Some(2222),
    );
    assert_eq!(
        verdicts(&c),
        [
            ("connection", Verdict::Pass),
            ("host key", Verdict::Fail),
            ("authentication", Verdict::Skip)
        ]
    );
    let fix = c[1].fix.as_deref().unwrap();
    assert!(
        fix.contains("ssh-keyscan -p 2222 10.1.2.3 >> ~/.ssh/known_hosts"),
        "{fix}"
    );
    assert!(
        fix.contains("ssh-keygen -lf"),
        "the fingerprint is checked first: {fix}"
    );
    let changed = connection(
        Err("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed."),
        "h",
        None,
    );
    assert!(changed[1].detail.contains("CHANGED"));
    assert!(!changed[1]
        .fix
        .as_deref()
        .unwrap()
        .contains(">> ~/.ssh/known_hosts"));
}

#[test]
fn a_refused_key_and_an_unreachable_host() {
    let c = connection(
        Err("ci@10.1.2.3: Permission denied (publickey)."),
        "10.1.2.3",
        None,
    );
    assert_eq!(c[2].verdict, Verdict::Fail);
    assert!(c[2].detail.contains("(publickey)"), "{}", c[2].detail);
    assert!(c[2].fix.as_deref().unwrap().contains("authorized_keys"));
    let c = connection(
        Err("ssh: connect to host 10.1.2.3 port 22: Connection refused"),
        "10.1.2.3",
        None,
    );
    assert_eq!(
        verdicts(&c),
        [
            ("connection", Verdict::Fail),
            ("host key", Verdict::Skip),
            ("authentication", Verdict::Skip)
        ]
    );
    let c = connection(Ok(()), "h", None);
    assert!(c.iter().all(|c| c.verdict == Verdict::Pass));
}

#[test]
fn the_engine_through_a_channel_or_only_through_its_cli() {
    let socket = "/var/run/docker.sock";
    let ok = engine(&EngineProbe {
        stream_local: Ok("20.10.24 (API 1.41)"),
        cli: None,
        socket,
    });
    assert!(ok.iter().all(|c| c.verdict == Verdict::Pass));
    let blocked = engine(&EngineProbe {
        stream_local: Err("the channel closed at once"),
        cli: Some(Ok("20.10.24")),
        socket,
    });
    assert_eq!(blocked[0].verdict, Verdict::Fail);
    assert!(blocked[0]
        .fix
        .as_deref()
        .unwrap()
        .contains("AllowStreamLocalForwarding"));
    assert_eq!(blocked[1].verdict, Verdict::Pass);
    let denied = engine(&EngineProbe {
        stream_local: Err("closed"),
        cli: Some(Err("permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock")),
        socket,
    });
    assert_eq!(
        verdicts(&denied),
        [
            ("stream-local forwarding", Verdict::Skip),
            ("engine", Verdict::Fail)
        ]
    );
    assert!(denied[1].fix.as_deref().unwrap().contains("docker group"));
    let absent = engine(&EngineProbe {
        stream_local: Err("closed"),
        cli: Some(Err("Cannot connect to the Docker daemon at unix:///var/run/docker.sock: no such file or directory")),
        socket,
    });
    assert!(absent[1]
        .fix
        .as_deref()
        .unwrap()
        .contains("engine_remote_socket"));
}

#[test]
fn gateway_ports_clock_and_runtime_dir() {
    assert_eq!(gateway_ports(Ok(true), "172.17.0.1").verdict, Verdict::Pass);
    let lo = gateway_ports(Ok(false), "172.17.0.1");
    assert_eq!(lo.verdict, Verdict::Warn);
    assert!(lo.fix.unwrap().contains("GatewayPorts clientspecified"));
    assert_eq!(clock_skew(1000, 1003, 1).verdict, Verdict::Pass);
    assert_eq!(
        clock_skew(1000, 1000, 2).verdict,
        Verdict::Pass,
        "a round trip longer than the skew"
    );
    assert_eq!(clock_skew(1000, 1030, 0).verdict, Verdict::Warn);
    let far = clock_skew(1000, 100, 0);
    assert_eq!(far.verdict, Verdict::Fail);
    assert!(far.detail.contains("900s behind"), "{}", far.detail);
    assert_eq!(
        runtime_dir("/run/user/1000/fwdd", None, 1000).verdict,
        Verdict::Pass
    );
    assert_eq!(
        runtime_dir("/d", Some((0o700, 1000)), 1000).verdict,
        Verdict::Pass
    );
    assert_eq!(
        runtime_dir("/d", Some((0o710, 1000)), 1000).verdict,
        Verdict::Pass,
        "a shared group may traverse"
    );
    assert_eq!(
        runtime_dir("/d", Some((0o755, 1000)), 1000).verdict,
        Verdict::Fail
    );
    assert_eq!(
        runtime_dir("/d", Some((0o700, 0)), 1000).verdict,
        Verdict::Fail
    );
    assert_eq!(
        engine_location(Err("no engine found on the host; tried …")).verdict,
        Verdict::Fail
    );
    assert!(
        engine_location(Ok(("/run/podman/podman.sock", "Podman's socket")))
            .detail
            .contains("Podman's socket")
    );
}

#[test]
fn which_keys_were_refused_and_how_many_sessions_open() {
    let verbose = "debug1: Will attempt key: /root/.ssh/id_ed25519 ED25519 SHA256:abc explicit\n\
        debug1: Offering public key: /root/.ssh/id_ed25519 ED25519 SHA256:abc explicit\n\
        debug1: Authentications that can continue: publickey\n\
        debug1: Offering public key: /root/.ssh/id_ed25519 ED25519 SHA256:abc explicit\n\
        debug1: Offering public key: agent-key RSA SHA256:def agent\n";
    let keys = offered_keys(verbose);
    assert_eq!(
        keys,
        [
            "/root/.ssh/id_ed25519 ED25519 SHA256:abc explicit",
            "agent-key RSA SHA256:def agent"
        ]
    );
    let c = connection_with_keys(Err("u@h: Permission denied (publickey)."), "h", None, &keys);
    assert!(c[2].detail.contains("SHA256:abc"), "{}", c[2].detail);
    assert_eq!(sessions(8, 8).verdict, Verdict::Pass);
    let few = sessions(2, 8);
    assert_eq!(few.verdict, Verdict::Warn);
    assert!(few.fix.unwrap().contains("MaxSessions"));
}
