use super::*;

fn spec(remote: u16, target: &str) -> ExposeSpec {
    ExposeSpec {
        remote_port: remote,
        target: target.parse().unwrap(),
    }
}

fn gw() -> IpAddr {
    "172.17.0.1".parse().unwrap()
}

fn gateway_binds() -> Vec<RemoteBind> {
    remote_binds(&[BindScope::Gateway], Ok(gw())).unwrap()
}

#[test]
fn the_grammar() {
    assert_eq!(
        parse_expose("18080").unwrap(),
        spec(18080, "127.0.0.1:18080")
    );
    assert_eq!(
        parse_expose(" 8080:3000 ").unwrap(),
        spec(8080, "127.0.0.1:3000")
    );
    assert_eq!(
        parse_expose("8080:localhost:3000").unwrap(),
        spec(8080, "127.0.0.1:3000")
    );
    assert_eq!(
        parse_expose("8080:10.1.2.3:3000").unwrap(),
        spec(8080, "10.1.2.3:3000")
    );
    assert_eq!(
        parse_expose("8080:[::1]:3000").unwrap(),
        spec(8080, "[::1]:3000")
    );
    for (bad, says) in [
        ("0", "port is 0"),
        ("8080:0", "port is 0"),
        ("70000", "not a runner port"),
        ("x:3000", "not a remote port"),
        ("8080:example.com:3000", "not an IP address"),
        ("8080:::1:3000", "in brackets"),
        ("", "not a runner port"),
        ("8080:1.2.3.4:", "not a runner port"),
    ] {
        let e = parse_expose(bad).expect_err(bad);
        assert!(e.contains(says), "{bad:?}: {e}");
        assert!(
            e.contains("REMOTE_PORT:RUNNER_PORT"),
            "{bad:?} names the grammar: {e}"
        );
    }
}

#[test]
fn scopes_and_binds() {
    assert_eq!(parse_bind_scope("gateway").unwrap(), BindScope::Gateway);
    assert_eq!(parse_bind_scope("loopback").unwrap(), BindScope::Loopback);
    assert_eq!(parse_bind_scope("all").unwrap(), BindScope::All);
    assert_eq!(
        parse_bind_scope("172.18.0.1").unwrap(),
        BindScope::Addr("172.18.0.1".parse().unwrap())
    );
    assert!(parse_bind_scope("0.0.0.0/0")
        .unwrap_err()
        .contains("gateway"));
    // Every address is written `all`, never as an address sshd widens.
    for wide in [
        "0.0.0.0",
        "::",
        "::ffff:0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
    ] {
        let e = parse_bind_scope(wide).unwrap_err();
        assert!(e.contains("write all"), "{wide}: {e}");
    }

    let binds = remote_binds(
        &[
            BindScope::Gateway,
            BindScope::Addr("172.18.0.1".parse().unwrap()),
            BindScope::Addr(gw()),
        ],
        Ok(gw()),
    )
    .unwrap();
    let listens: Vec<&str> = binds.iter().map(|b| b.listen.as_str()).collect();
    assert_eq!(
        listens,
        ["172.17.0.1", "172.18.0.1"],
        "one bind per address"
    );
    let all = remote_binds(&[BindScope::All], Ok(gw())).unwrap();
    assert_eq!(all[0].listen, "*");
    assert_eq!(
        all[0].verify_at,
        gw(),
        "every address is checked at the gateway"
    );
    let e = remote_binds(&[BindScope::Gateway], Err("no bridge network")).unwrap_err();
    assert!(
        e.contains("no bridge network") && e.contains("expose_on"),
        "{e}"
    );
    assert!(
        remote_binds(&[BindScope::Loopback], Err("no bridge network")).is_ok(),
        "loopback needs no gateway"
    );
}

/// An engine that answers a gateway that is not one address (sshd would
/// read `0.0.0.0` or `::` as every address) gets no bind from it.
#[test]
fn a_gateway_that_is_not_one_address_is_refused() {
    for answer in [
        "0.0.0.0",
        "::",
        "::ffff:0.0.0.0",
        "0.1.2.3",
        "255.255.255.255",
        "224.0.0.1",
        "ff02::1",
    ] {
        let ip: IpAddr = answer.parse().unwrap();
        assert!(!is_one_address(ip), "{answer}");
        let e = remote_binds(&[BindScope::Loopback, BindScope::Gateway], Ok(ip)).expect_err(answer);
        assert!(
            e.contains(&format!("the engine answered {ip} ")) && e.contains("set expose_on"),
            "{e}"
        );
        // `all`, written on purpose, is still bound, but verified on
        // loopback rather than at the answer.
        let all = remote_binds(&[BindScope::All], Ok(ip)).unwrap();
        assert_eq!(all[0].verify_at, IpAddr::from([127, 0, 0, 1]), "{answer}");
    }
    for fine in ["172.17.0.1", "10.88.0.1", "fd00::1", "127.0.0.1"] {
        let ip: IpAddr = fine.parse().unwrap();
        assert!(is_one_address(ip), "{fine}");
        assert_eq!(
            remote_binds(&[BindScope::Gateway], Ok(ip)).unwrap()[0].listen,
            fine
        );
    }
}

/// Drives the machine as the shell would, answering with `answer`.
fn run(
    m: &mut ExposeMachine,
    now: Instant,
    mut answer: impl FnMut(&ExposeCommand) -> Option<VerifyResult>,
) -> Vec<ExposeCommand> {
    let mut seen = Vec::new();
    while let Some(c) = m.poll_command() {
        seen.push(c.clone());
        match c {
            ExposeCommand::Register { epoch, port, binds } => {
                m.registered(epoch, port, binds, None, now)
            }
            ExposeCommand::Verify { epoch, port, .. } => {
                let r = answer(&seen[seen.len() - 1]).unwrap_or(VerifyResult::Arrived);
                m.verified(epoch, port, r, now)
            }
            ExposeCommand::Unregister { epoch, .. } => m.unregistered(epoch),
            ExposeCommand::Say(_) => {}
        }
    }
    seen
}

fn said(commands: &[ExposeCommand]) -> Vec<&ExposeNotice> {
    commands
        .iter()
        .filter_map(|c| match c {
            ExposeCommand::Say(n) => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn registered_verified_then_active_on_every_new_master() {
    let t0 = Instant::now();
    let mut m = ExposeMachine::default();
    m.set_wanted(
        ExposeSource::Config,
        vec![spec(18080, "127.0.0.1:18080")],
        t0,
    );
    assert_eq!(
        m.exposure(18080).unwrap().state,
        ExposeState::WaitingForLink
    );
    assert_eq!(m.poll_command(), None, "nothing to do without a master");

    m.link_up(Ok(gateway_binds()), t0);
    let done = run(&mut m, t0, |_| None);
    assert!(
        matches!(&done[0], ExposeCommand::Register { port: 18080, binds, .. } if binds == &gateway_binds())
    );
    assert!(matches!(&done[1], ExposeCommand::Verify { port: 18080, at, .. } if *at == gw()));
    assert_eq!(m.exposure(18080).unwrap().state, ExposeState::Active);
    let n = said(&done);
    assert_eq!(n.len(), 1);
    assert!(
        n[0].message.contains("host.docker.internal:18080"),
        "{}",
        n[0].message
    );

    // The master dies: waiting; the next one registers everything again.
    m.link_down();
    assert_eq!(
        m.exposure(18080).unwrap().state,
        ExposeState::WaitingForLink
    );
    assert!(m.exposure(18080).unwrap().registered.is_empty());
    assert_eq!(m.poll_command(), None);
    m.link_up(Ok(gateway_binds()), t0);
    let again = run(&mut m, t0, |_| None);
    assert!(matches!(
        again[0],
        ExposeCommand::Register { port: 18080, .. }
    ));
    assert_eq!(m.exposure(18080).unwrap().state, ExposeState::Active);
}

#[test]
fn a_silent_loopback_bind_is_caught_said_once_and_tried_again_on_the_next_master() {
    let t0 = Instant::now();
    let mut m = ExposeMachine::default();
    m.link_up(Ok(gateway_binds()), t0);
    m.add(ExposeSource::Config, spec(18080, "127.0.0.1:18080"), t0);
    let refused = || {
        Some(VerifyResult::Refused(
            "connect failed: Connection refused".into(),
        ))
    };
    let first = run(&mut m, t0, |_| refused());
    let ExposeState::Failed { failure, retry_at } = &m.exposure(18080).unwrap().state else {
        panic!("{:?}", m.exposure(18080));
    };
    assert_eq!(failure.kind(), "gateway_ports");
    let reason = failure.to_string();
    assert!(reason.contains("GatewayPorts clientspecified"), "{reason}");
    assert!(reason.contains("172.17.0.1:18080"), "{reason}");
    assert!(reason.contains("reload sshd"), "{reason}");
    assert!(reason.contains("then run `fwdctl reconnect`"), "{reason}");
    // sshd's setting is the connection's: this master would only fail again.
    assert_eq!(*retry_at, None);
    assert_eq!(m.poll_timeout(), None);
    // What sshd bound on loopback is closed again: never left behind.
    assert!(
        matches!(first.last(), Some(ExposeCommand::Unregister { port: 18080, binds, .. }) if binds == &gateway_binds()),
        "{first:?}"
    );
    let n = said(&first);
    assert_eq!(n.len(), 1);
    assert!(n[0]
        .message
        .contains("tried again with the next connection"));

    // `fwdctl expose` again tries at once, on this master: the same
    // failure, not said again.
    let later = t0 + Duration::from_secs(5);
    m.add(ExposeSource::Runtime, spec(18080, "127.0.0.1:18080"), later);
    assert_eq!(m.exposure(18080).unwrap().state, ExposeState::Registering);
    let again = run(&mut m, later, |_| refused());
    assert!(matches!(
        again[0],
        ExposeCommand::Register { port: 18080, .. }
    ));
    assert!(said(&again).is_empty(), "{again:?}");
    assert!(matches!(
        m.exposure(18080).unwrap().state,
        ExposeState::Failed { retry_at: None, .. }
    ));

    // sshd fixed and reloaded, then a new master (`fwdctl reconnect`):
    // active, and said so.
    m.link_down();
    m.link_up(Ok(gateway_binds()), later);
    let done = run(&mut m, later, |_| None);
    assert_eq!(m.exposure(18080).unwrap().state, ExposeState::Active);
    assert!(said(&done)[0].message.starts_with("again exposed"));
}

#[test]
fn a_refused_forward_is_retried_on_a_capped_schedule() {
    let t0 = Instant::now();
    let mut m = ExposeMachine::default();
    m.link_up(Ok(gateway_binds()), t0);
    m.add(ExposeSource::Config, spec(18080, "127.0.0.1:18080"), t0);
    let refuse = |m: &mut ExposeMachine, now: Instant| -> Vec<ExposeCommand> {
        let mut seen = Vec::new();
        while let Some(c) = m.poll_command() {
            if let ExposeCommand::Register { epoch, port, .. } = &c {
                m.registered(
                    *epoch,
                    *port,
                    Vec::new(),
                    Some("remote port forwarding failed for listen port 18080".into()),
                    now,
                );
            }
            seen.push(c);
        }
        seen
    };
    let first = refuse(&mut m, t0);
    assert_eq!(said(&first).len(), 1);
    assert!(
        said(&first)[0].message.contains("at least every 30 s"),
        "{first:?}"
    );
    let ExposeState::Failed { failure, retry_at } = &m.exposure(18080).unwrap().state else {
        panic!("{:?}", m.exposure(18080));
    };
    assert_eq!(failure.kind(), "refused");
    assert_eq!(*retry_at, Some(t0 + RETRY_FIRST));

    // Retries: each after a longer wait, capped at 30 s; the same failure
    // is not said again.
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..9 {
        let at = m.poll_timeout().unwrap();
        waits.push(at - now);
        now = at;
        m.handle_timeout(now);
        let done = refuse(&mut m, now);
        assert!(said(&done).is_empty(), "said again: {done:?}");
    }
    assert_eq!(waits[0], RETRY_FIRST);
    assert!(waits.windows(2).all(|w| w[1] >= w[0]));
    assert_eq!(*waits.last().unwrap(), RETRY_CAP);
    assert_eq!(RETRY_CAP, Duration::from_secs(30));
    // Not before its time.
    let at = m.poll_timeout().unwrap();
    m.handle_timeout(at - Duration::from_millis(1));
    assert!(matches!(
        m.exposure(18080).unwrap().state,
        ExposeState::Failed { .. }
    ));

    // The port freed: the next retry makes it active, and says so.
    m.handle_timeout(at);
    let done = run(&mut m, at, |_| None);
    assert_eq!(m.exposure(18080).unwrap().state, ExposeState::Active);
    assert!(said(&done)[0].message.starts_with("again exposed"));
}

#[test]
fn a_refused_forward_keeps_what_others_registered_and_closes_its_own_partial_binds() {
    let t0 = Instant::now();
    let two = remote_binds(
        &[
            BindScope::Gateway,
            BindScope::Addr("172.18.0.1".parse().unwrap()),
        ],
        Ok(gw()),
    )
    .unwrap();
    let mut m = ExposeMachine::default();
    m.link_up(Ok(two.clone()), t0);
    m.add(ExposeSource::Config, spec(1, "127.0.0.1:1"), t0);
    m.add(ExposeSource::Config, spec(2, "127.0.0.1:2"), t0);
    let Some(ExposeCommand::Register { epoch, port: 1, .. }) = m.poll_command() else {
        panic!()
    };
    // sshd took the first bind and refused the second (port in use there).
    m.registered(
        epoch,
        1,
        vec![two[0].clone()],
        Some("remote port forwarding failed for listen port 1".into()),
        t0,
    );
    let ExposeState::Failed { failure, .. } = &m.exposure(1).unwrap().state else {
        panic!()
    };
    assert_eq!(failure.kind(), "refused");
    let done = run(&mut m, t0, |_| None);
    assert!(done.iter().any(
        |c| matches!(c, ExposeCommand::Unregister { port: 1, binds, .. } if binds == &vec![two[0].clone()])
    ));
    // Both binds of port 2 verified, in turn.
    let verified: Vec<IpAddr> = done
        .iter()
        .filter_map(|c| match c {
            ExposeCommand::Verify { port: 2, at, .. } => Some(*at),
            _ => None,
        })
        .collect();
    assert_eq!(verified, [two[0].verify_at, two[1].verify_at]);
    assert_eq!(m.exposure(2).unwrap().state, ExposeState::Active);
}

#[test]
fn answers_from_an_earlier_master_are_ignored() {
    let t0 = Instant::now();
    let mut m = ExposeMachine::default();
    m.link_up(Ok(gateway_binds()), t0);
    m.add(ExposeSource::Config, spec(5, "127.0.0.1:5"), t0);
    let Some(ExposeCommand::Register { epoch, binds, .. }) = m.poll_command() else {
        panic!()
    };
    m.link_down();
    m.link_up(Ok(gateway_binds()), t0);
    m.registered(epoch, 5, binds, None, t0);
    assert_eq!(m.exposure(5).unwrap().state, ExposeState::Registering);
    assert!(matches!(
        m.poll_command(),
        Some(ExposeCommand::Register { port: 5, .. })
    ));
}

#[test]
fn removal_unregisters_and_reload_keeps_runtime_exposures() {
    let t0 = Instant::now();
    let mut m = ExposeMachine::default();
    m.link_up(Ok(gateway_binds()), t0);
    m.set_wanted(
        ExposeSource::Config,
        vec![spec(1, "127.0.0.1:1"), spec(2, "127.0.0.1:2")],
        t0,
    );
    m.add(ExposeSource::Runtime, spec(3, "127.0.0.1:3"), t0);
    run(&mut m, t0, |_| None);

    // A reload without port 1, with port 2 retargeted: 1 is closed, 2 and 3 stay.
    m.set_wanted(
        ExposeSource::Config,
        vec![spec(2, "127.0.0.1:2002"), spec(3, "127.0.0.1:9")],
        t0,
    );
    let done = run(&mut m, t0, |_| None);
    assert!(
        matches!(&done[..], [ExposeCommand::Say(n), ExposeCommand::Unregister { port: 1, .. }] if n.event == "expose_removed"),
        "{done:?}"
    );
    assert!(m.exposure(1).is_none());
    assert_eq!(
        m.exposure(2).unwrap().spec.target,
        "127.0.0.1:2002".parse().unwrap()
    );
    assert_eq!(
        m.exposure(2).unwrap().state,
        ExposeState::Active,
        "a new target needs no new forward"
    );
    assert_eq!(
        m.exposure(3).unwrap().spec.target,
        "127.0.0.1:3".parse().unwrap(),
        "fwdctl expose is the later word"
    );
    assert!(m.remove(3));
    assert!(!m.remove(3));
    // Removed while no master: nothing to close.
    m.link_down();
    assert!(m.remove(2));
    let done = run(&mut m, t0, |_| None);
    assert_eq!(said(&done).len(), 2, "3 and 2 removed: {done:?}");
    assert_eq!(
        done.len(),
        2,
        "port 2 had no master to close it on: {done:?}"
    );
}

#[test]
fn without_a_gateway_each_exposure_says_why_and_waits_for_the_next_master() {
    let t0 = Instant::now();
    let mut m = ExposeMachine::default();
    m.add(ExposeSource::Config, spec(7, "127.0.0.1:7"), t0);
    m.link_up(Err("the engine has no bridge network".into()), t0);
    let ExposeState::Failed { failure, retry_at } = &m.exposure(7).unwrap().state else {
        panic!()
    };
    assert_eq!(failure.kind(), "no_bind");
    assert_eq!(*retry_at, None);
    assert_eq!(m.poll_timeout(), None);
    let done = run(&mut m, t0, |_| None);
    assert_eq!(said(&done).len(), 1);
    assert!(said(&done)[0].message.contains("next connection"));
    m.add(ExposeSource::Runtime, spec(8, "127.0.0.1:8"), t0);
    assert!(matches!(
        m.exposure(8).unwrap().state,
        ExposeState::Failed { .. }
    ));
}
