use super::*;
use proptest::prelude::*;
use std::path::Path;

/// A status that exercises every field, with each optional field both set and `null`.
pub(crate) fn sample_status() -> Status {
    Status {
        daemon: DaemonInfo {
            version: "0.1.0".into(),
            pid: 4242,
            started_at_ms: 1_700_000_000_000,
            image_started_at_ms: None,
            upgrades: 0,
        },
        hosts: vec![
            HostStatus {
                name: "prod".into(),
                destination: "deploy@docker1.example.com".into(),
                master: MasterStatus {
                    state: MasterState::Connected,
                    pid: Some(4300),
                    since_ms: 1_700_000_100_000,
                    last_probe_rtt_ms: Some(1.75),
                    reconnects: 2,
                    consecutive_failures: 0,
                    last_error: Some(ErrorInfo {
                        class: "transient".into(),
                        kind: "connection_refused".into(),
                        message:
                            "ssh: connect to host docker1.example.com port 22: Connection refused"
                                .into(),
                        at_ms: 1_700_000_090_000,
                    }),
                    next_retry_ms: None,
                    network_lost_since_ms: None,
                },
                events: StreamStatus {
                    state: StreamState::Streaming,
                    events_received: 1234,
                    last_event_ms: Some(1_700_000_190_000),
                    restarts: 1,
                },
                docker_version: Some("27.3.1".into()),
                engine: Some(EngineStatus {
                    sockets: vec![
                        "/run/user/1000/fwd/docker.sock".into(),
                        "/run/user/1000/fwd/docker-prod.sock".into(),
                    ],
                    route: Some("stream_local".into()),
                    remote_socket: Some("/var/run/docker.sock".into()),
                    found_by: Some("docker context".into()),
                    rootless: Some(false),
                    reason: None,
                    connections_open: 1,
                    connections_total: 42,
                    connections_refused: 0,
                    bytes_up: 10_240,
                    bytes_down: 2_097_152,
                }),
            },
            HostStatus {
                name: "staging".into(),
                destination: "ci@docker2.example.com".into(),
                master: MasterStatus {
                    state: MasterState::Backoff,
                    pid: None,
                    since_ms: 1_700_000_150_000,
                    last_probe_rtt_ms: None,
                    reconnects: 0,
                    consecutive_failures: 3,
                    last_error: Some(ErrorInfo {
                        class: "permanent".into(),
                        kind: "auth_failed".into(),
                        message: "ci@docker2.example.com: Permission denied (publickey)".into(),
                        at_ms: 1_700_000_150_000,
                    }),
                    next_retry_ms: Some(1_700_000_210_000),
                    network_lost_since_ms: None,
                },
                events: StreamStatus {
                    state: StreamState::Down,
                    events_received: 0,
                    last_event_ms: None,
                    restarts: 0,
                },
                docker_version: None,
                engine: None,
            },
        ],
        forwards: vec![
            ForwardStatus {
                host: "prod".into(),
                local_port: 8080,
                local_addrs: vec!["127.0.0.1:8080".into()],
                remote: "127.0.0.1:8080".into(),
                container_id: "9f2c1a7e3b4d".repeat(6)[..64].to_string(),
                container_name: "web".into(),
                compose_project: None,
                compose_service: None,
                container_port: "80/tcp".into(),
                state: ForwardState::Active,
                reason: None,
                since_ms: 1_700_000_120_000,
                connections_open: 0,
                connections_total: 3,
                connections_refused: 12,
                route: Some(crate::ForwardRoute {
                    kind: crate::RouteKind::Direct,
                    to: "172.17.0.2:80".into(),
                    why: "the container's address on bridge network bridge".into(),
                    fell_back: false,
                }),
            },
            ForwardStatus {
                host: "prod".into(),
                local_port: 5432,
                local_addrs: vec!["127.0.0.1:5432".into(), "[::1]:5432".into()],
                remote: "127.0.0.1:5432".into(),
                container_id: "4e5d6c7b8a90".repeat(6)[..64].to_string(),
                container_name: "shop-db-1".into(),
                compose_project: Some("shop".into()),
                compose_service: Some("db".into()),
                container_port: "5432/tcp".into(),
                state: ForwardState::Active,
                reason: None,
                since_ms: 1_700_000_110_000,
                connections_open: 2,
                connections_total: 17,
                connections_refused: 0,
                route: Some(crate::ForwardRoute {
                    kind: crate::RouteKind::Published,
                    to: "127.0.0.1:5432".into(),
                    why: "the direct route to 172.18.0.3:5432 failed: administratively prohibited: open failed".into(),
                    fell_back: true,
                }),
            },
            ForwardStatus {
                host: "prod".into(),
                local_port: 6379,
                local_addrs: vec![],
                remote: "127.0.0.1:6379".into(),
                container_id: "0123456789ab".repeat(6)[..64].to_string(),
                container_name: "shop-cache-1".into(),
                compose_project: Some("shop".into()),
                compose_service: Some("cache".into()),
                container_port: "6379/tcp".into(),
                state: ForwardState::Conflict,
                reason: Some("127.0.0.1:6379 is in use by another process".into()),
                since_ms: 1_700_000_130_000,
                connections_open: 0,
                connections_total: 0,
                connections_refused: 0,
                route: Some(crate::ForwardRoute {
                    kind: crate::RouteKind::Published,
                    to: "127.0.0.1:6379".into(),
                    why: "direct_route is off for this host".into(),
                    fell_back: false,
                }),
            },
            ForwardStatus {
                host: "prod".into(),
                local_port: 5353,
                local_addrs: vec![],
                remote: "127.0.0.1:5353".into(),
                container_id: "abcdef012345".repeat(6)[..64].to_string(),
                container_name: "dns".into(),
                compose_project: None,
                compose_service: None,
                container_port: "53/udp".into(),
                state: ForwardState::Unsupported,
                reason: Some("UDP ports are not forwarded".into()),
                since_ms: 1_700_000_140_000,
                connections_open: 0,
                connections_total: 0,
                connections_refused: 0,
                route: None,
            },
            ForwardStatus {
                host: "staging".into(),
                local_port: 9000,
                local_addrs: vec![],
                remote: "127.0.0.1:9000".into(),
                container_id: "fedcba987654".repeat(6)[..64].to_string(),
                container_name: "minio".into(),
                compose_project: None,
                compose_service: None,
                container_port: "9000/tcp".into(),
                state: ForwardState::Pending,
                reason: Some("waiting for the ssh master".into()),
                since_ms: 1_700_000_150_000,
                connections_open: 0,
                connections_total: 0,
                connections_refused: 0,
                route: Some(crate::ForwardRoute {
                    kind: crate::RouteKind::Published,
                    to: "127.0.0.1:9000".into(),
                    why: "the engine runs rootless: its containers' addresses are not reachable from the host".into(),
                    fell_back: false,
                }),
            },
        ],
        exposed: vec![
            crate::ExposedStatus {
                host: "prod".into(),
                remote_port: 18080,
                runner: "127.0.0.1:18080".into(),
                binds: vec!["172.17.0.1:18080".into()],
                state: "active".into(),
                reason: None,
                reason_kind: None,
                source: "config".into(),
                connections_open: 1,
                connections_total: 5,
                connections_failed: 0,
                connections_refused: 0,
                next_retry_ms: None,
            },
            crate::ExposedStatus {
                host: "staging".into(),
                remote_port: 3000,
                runner: "127.0.0.1:3000".into(),
                binds: vec![],
                state: "waiting".into(),
                reason: Some("the host has no usable ssh master".into()),
                reason_kind: None,
                source: "runtime".into(),
                connections_open: 0,
                connections_total: 0,
                connections_failed: 0,
                connections_refused: 0,
                next_retry_ms: None,
            },
            crate::ExposedStatus {
                host: "prod".into(),
                remote_port: 18081,
                runner: "127.0.0.1:18081".into(),
                binds: vec![],
                state: "failed".into(),
                reason: Some(
                    "sshd refused the remote forward: remote port forwarding failed for listen port 18081"
                        .into(),
                ),
                reason_kind: Some("refused".into()),
                source: "runtime".into(),
                connections_open: 0,
                connections_total: 0,
                connections_failed: 0,
                connections_refused: 0,
                next_retry_ms: Some(1_700_000_230_000),
            },
        ],
        health: Some(Health {
            state: HealthState::Degraded,
            reasons: vec![
                "host staging is backoff".into(),
                "1 forward in conflict".into(),
                "host prod: exposed port 18081 failed (refused)".into(),
            ],
        }),
        names: Vec::new(),
        udp: Vec::new(),
        limits: Some(crate::LimitsStatus {
            open_files_limit: 20_000,
            open_files: Some(57),
            reserved: 256,
            forwards_per_container: 2_468,
            forwards_total: 4_936,
            forwards_left_out: 0,
            tunnels_per_forward: 1_645,
            tunnels_per_exposure: 2_468,
            engine_clients: 2_468,
            accept_failures: 0,
            capped: vec![crate::CappedContainer {
                host: "prod".into(),
                container_id: "0123456789ab".repeat(6)[..64].to_string(),
                container_name: "ports".into(),
                published: 3_000,
                forwarded: 2_468,
            }],
        }),
    }
}

#[test]
fn the_verdict_names_every_reason_and_is_healthy_without_one() {
    let mut st = sample_status();
    assert_eq!(Some(verdict(&st)), st.health);
    st.hosts.truncate(1);
    st.forwards.retain(|f| f.state != ForwardState::Conflict);
    st.exposed.retain(|e| e.state != "failed");
    assert_eq!(verdict(&st).state, HealthState::Healthy);
    assert!(verdict(&st).reasons.is_empty());
    st.hosts[0].master.network_lost_since_ms = Some(1);
    assert_eq!(verdict(&st).reasons, vec!["host prod: no usable network"]);
    // An older daemon sends no verdict: the client computes the same one.
    st.health = None;
    assert_eq!(st.health().state, HealthState::Degraded);
}

fn golden_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/status.json")
}

/// Pins the JSON schema: a renamed, removed or retyped field fails here.
/// Regenerate deliberately with `UPDATE_GOLDEN=1 cargo test -p fwd-proto`.
#[test]
fn golden_status_json() {
    let mut actual = serde_json::to_string_pretty(&sample_status()).unwrap();
    actual.push('\n');
    let path = golden_path();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        actual, expected,
        "Status JSON changed; if intended, update docs/control-api.md and regenerate with UPDATE_GOLDEN=1"
    );
    // And the golden file reads back into the same value.
    let back: Status = serde_json::from_str(&expected).unwrap();
    assert_eq!(back, sample_status());
}

/// A forward as a daemon before `compose_service` wrote it still reads.
#[test]
fn a_forward_without_compose_service_reads() {
    let mut value = serde_json::to_value(&sample_status().forwards[1]).unwrap();
    assert_eq!(value["compose_service"], "db");
    value.as_object_mut().unwrap().remove("compose_service");
    let back: ForwardStatus = serde_json::from_value(value).unwrap();
    assert_eq!(back.compose_service, None);
    assert_eq!(back.compose_project.as_deref(), Some("shop"));
}

/// An exposure as a daemon before `next_retry_ms` wrote it still reads.
#[test]
fn an_exposure_without_next_retry_reads() {
    let mut value = serde_json::to_value(&sample_status().exposed[2]).unwrap();
    value.as_object_mut().unwrap().remove("next_retry_ms");
    let back: ExposedStatus = serde_json::from_value(value).unwrap();
    assert_eq!(back.next_retry_ms, None);
    assert_eq!(back.reason_kind.as_deref(), Some("refused"));
}

#[test]
fn status_response_round_trip() {
    let resp = Response::Status(sample_status());
    let line = encode_line(&resp);
    assert!(line.starts_with(br#"{"v":1,"ok":true,"status":{"daemon":"#));
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(decode_response(&line).unwrap(), resp);
}

#[test]
fn error_response_wire_shape() {
    let line = encode_line(&Response::error("nope"));
    assert_eq!(line, b"{\"v\":1,\"ok\":false,\"error\":\"nope\"}\n");
    assert_eq!(decode_response(&line).unwrap(), Response::error("nope"));
}

#[test]
fn response_checks_version_and_payload() {
    assert_eq!(
        decode_response(br#"{"v":2,"ok":true,"status":{}}"#),
        Err(DecodeError::UnsupportedVersion("2".into()))
    );
    assert!(matches!(
        decode_response(br#"{"v":1,"ok":true}"#),
        Err(DecodeError::InvalidResponse(_))
    ));
    assert_eq!(
        decode_response(br#"{"v":1,"ok":false}"#).unwrap(),
        Response::error("unspecified error")
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let mut v = serde_json::to_value(sample_status()).unwrap();
    v["future_field"] = serde_json::json!({"x": 1});
    v["hosts"][0]["master"]["future"] = serde_json::json!(true);
    let back: Status = serde_json::from_value(v).unwrap();
    assert_eq!(back, sample_status());
}

#[test]
fn request_wire_shape() {
    assert_eq!(
        encode_request(&Request::Status),
        b"{\"v\":1,\"cmd\":\"status\"}\n"
    );
    assert_eq!(
        decode_request(b"{\"v\":1,\"cmd\":\"status\"}\n"),
        Ok(Request::Status)
    );
    assert_eq!(
        decode_request(b"{\"cmd\":\"status\",\"v\":1,\"extra\":[1]}\r\n"),
        Ok(Request::Status)
    );
    for req in all_requests() {
        assert!(Request::COMMANDS.contains(&req.cmd()));
        assert_eq!(decode_request(&encode_request(&req)), Ok(req));
    }
}

#[test]
fn request_rejections() {
    let cases: &[(&[u8], DecodeError)] = &[
        (b"", DecodeError::Empty),
        (b"  \n", DecodeError::Empty),
        (b"\xff\xfe", DecodeError::InvalidUtf8 { valid_up_to: 0 }),
        (b"[1,2]", DecodeError::NotAnObject),
        (b"{\"cmd\":\"status\"}", DecodeError::MissingVersion),
        (
            b"{\"v\":2,\"cmd\":\"status\"}",
            DecodeError::UnsupportedVersion("2".into()),
        ),
        (
            b"{\"v\":\"1\",\"cmd\":\"status\"}",
            DecodeError::UnsupportedVersion("\"1\"".into()),
        ),
        (b"{\"v\":1}", DecodeError::MissingCmd),
        (b"{\"v\":1,\"cmd\":5}", DecodeError::MissingCmd),
        (
            b"{\"v\":1,\"cmd\":\"launch\"}",
            DecodeError::UnknownCmd("launch".into()),
        ),
    ];
    for (line, want) in cases {
        assert_eq!(
            decode_request(line).as_ref(),
            Err(want),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    assert!(matches!(
        decode_request(b"{\"v\":1,"),
        Err(DecodeError::InvalidJson(_))
    ));
    assert_eq!(
        DecodeError::UnknownCmd("launch".into()).to_string(),
        "unknown command \"launch\" (supported: status, probe, watch, reconnect, resync, upgrade, \
         expose, unexpose, metrics)"
    );
}

#[test]
fn request_length_limit() {
    let mut ok = br#"{"v":1,"cmd":"status","pad":""#.to_vec();
    ok.resize(MAX_LINE - 2, b'x');
    ok.extend_from_slice(b"\"}");
    assert_eq!(ok.len(), MAX_LINE);
    assert_eq!(decode_request(&ok), Ok(Request::Status));
    ok.push(b'\n');
    assert_eq!(decode_request(&ok), Ok(Request::Status));

    let mut long = vec![b' '; MAX_LINE + 1];
    long.push(b'\n');
    assert_eq!(
        decode_request(&long),
        Err(DecodeError::TooLong {
            len: MAX_LINE + 1,
            max: MAX_LINE
        })
    );
}

#[test]
fn runtime_dir_rules() {
    assert_eq!(
        runtime_dir_for(Some("/run/user/1000".into()), 1000),
        Path::new("/run/user/1000/fwdd")
    );
    assert_eq!(
        runtime_dir_for(Some("/run/user/0".into()), 0),
        Path::new("/run/user/0/fwdd")
    );
    assert_eq!(runtime_dir_for(None, 0), Path::new("/run/fwdd"));
    assert_eq!(runtime_dir_for(None, 1000), Path::new("/tmp/fwdd-1000"));
    // Empty or relative values are invalid per the XDG spec and ignored.
    assert_eq!(
        runtime_dir_for(Some("".into()), 1000),
        Path::new("/tmp/fwdd-1000")
    );
    assert_eq!(
        runtime_dir_for(Some("rel/dir".into()), 0),
        Path::new("/run/fwdd")
    );
    assert!(default_control_socket().ends_with(CONTROL_SOCKET_NAME));
}

/// One of each request shape.
fn all_requests() -> Vec<Request> {
    vec![
        Request::Status,
        Request::Probe { port: 5432 },
        Request::Watch,
        Request::Reconnect { host: None },
        Request::Reconnect {
            host: Some("prod".into()),
        },
        Request::Resync { host: None },
        Request::Resync {
            host: Some("staging".into()),
        },
        Request::Upgrade,
        Request::Expose {
            host: None,
            spec: "18080".into(),
        },
        Request::Expose {
            host: Some("prod".into()),
            spec: "8080:127.0.0.1:3000".into(),
        },
        Request::Unexpose {
            host: None,
            port: 18080,
        },
        Request::Metrics,
    ]
}

fn small_status() -> Status {
    Status {
        daemon: sample_status().daemon,
        hosts: vec![],
        forwards: vec![],
        health: None,
        exposed: vec![],
        limits: None,
        names: Vec::new(),
        udp: Vec::new(),
    }
}

/// One event of each kind (the snapshot with a small status).
fn all_events() -> Vec<Event> {
    let st = sample_status();
    let at_ms = 1_700_000_200_000;
    vec![
        Event::Snapshot {
            at_ms,
            status: small_status(),
        },
        Event::ForwardAdded {
            at_ms,
            forward: st.forwards[0].clone(),
        },
        Event::ForwardRemoved {
            at_ms,
            forward: st.forwards[1].clone(),
        },
        Event::ForwardStateChanged {
            at_ms,
            previous_state: ForwardState::Active,
            forward: st.forwards[2].clone(),
        },
        Event::ForwardRouteChanged {
            at_ms,
            previous_route: st.forwards[0].route.clone(),
            forward: st.forwards[1].clone(),
        },
        Event::MasterStateChanged {
            at_ms,
            host: "staging".into(),
            previous_state: Some(MasterState::Connecting),
            master: st.hosts[1].master.clone(),
        },
        Event::StreamStateChanged {
            at_ms,
            host: "prod".into(),
            previous_state: Some(StreamState::Resyncing),
            stream: st.hosts[0].events.clone(),
        },
    ]
}

/// Every request, every non-status response and every event kind, one compact line
/// each, as sent on the wire.
fn protocol_lines() -> String {
    let mut out = String::new();
    let mut push = |line: Vec<u8>| out.push_str(std::str::from_utf8(&line).unwrap());
    for req in all_requests() {
        push(encode_request(&req));
    }
    push(encode_line(&Response::Probe { port: 5432 }));
    push(encode_line(&Response::Reconnect {
        hosts: vec!["prod".into(), "staging".into()],
    }));
    push(encode_line(&Response::Resync {
        hosts: vec!["prod".into()],
    }));
    push(encode_line(&Response::Upgrade(crate::UpgradeReport {
        from: "0.1.0 (f0bab13)".into(),
        to: "0.2.0 (1a2b3c4)".into(),
        pid: 812,
        listeners: 9,
        masters: 1,
        tunnels: 37,
        engine_connections: 2,
    })));
    push(encode_line(&Response::error_with_code(
        "the new binary /usr/bin/fwdd failed its check (exit status: 1): broken",
        error_code::UPGRADE_REFUSED,
    )));
    push(encode_line(&Response::error_with_code(
        "no host named \"nope\" (configured: prod, staging)",
        error_code::UNKNOWN_HOST,
    )));
    push(encode_line(&Response::error_with_code(
        "nothing accepts connections at 127.0.0.1:5432 on prod: open failed",
        error_code::PROBE_FAILED,
    )));
    let change = crate::ExposeChange {
        host: "prod".into(),
        remote_port: 18080,
        runner: "127.0.0.1:18080".into(),
    };
    push(encode_line(&Response::Expose(change.clone())));
    push(encode_line(&Response::Unexpose(change)));
    push(encode_line(&Response::Metrics {
        text: "# HELP fwd_host_up 1 while the host's ssh master is connected.\n# TYPE fwd_host_up gauge\nfwd_host_up{host=\"prod\"} 1\n".into(),
    }));
    push(encode_line(&Response::error_with_code(
        "port 18080 is not exposed to prod",
        error_code::EXPOSE_REFUSED,
    )));
    for e in all_events() {
        push(encode_line(&Response::Event(e)));
    }
    out
}

/// Pins the wire shape of requests, the other responses and the watch events.
/// Regenerate deliberately with `UPDATE_GOLDEN=1 cargo test -p fwd-proto`.
#[test]
fn golden_protocol_lines() {
    let actual = protocol_lines();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/protocol.ndjson");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        actual, expected,
        "wire shapes changed; if intended, update docs/control-api.md and regenerate with UPDATE_GOLDEN=1"
    );
    // Each line decodes back to what produced it.
    let mut lines = expected.lines();
    for req in all_requests() {
        assert_eq!(decode_request(lines.next().unwrap().as_bytes()), Ok(req));
    }
    for line in lines {
        let r = decode_response(line.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(encode_line(&r)).unwrap(),
            format!("{line}\n")
        );
    }
}

#[test]
fn new_request_decoding() {
    assert_eq!(
        decode_request(br#"{"v":1,"cmd":"probe","port":8080}"#),
        Ok(Request::Probe { port: 8080 })
    );
    assert_eq!(
        decode_request(br#"{"v":1,"cmd":"reconnect"}"#),
        Ok(Request::Reconnect { host: None })
    );
    assert_eq!(
        decode_request(br#"{"v":1,"cmd":"resync","host":null}"#),
        Ok(Request::Resync { host: None })
    );
    assert_eq!(
        decode_request(br#"{"v":1,"cmd":"resync","host":"a b"}"#),
        Ok(Request::Resync {
            host: Some("a b".into())
        })
    );
    assert_eq!(
        decode_request(br#"{"v":1,"cmd":"watch","since":3}"#),
        Ok(Request::Watch)
    );
    for (line, what) in [
        (&br#"{"v":1,"cmd":"probe"}"#[..], "missing field `port`"),
        (
            br#"{"v":1,"cmd":"probe","port":0}"#,
            "port 0 is not a TCP port; use 1 to 65535",
        ),
        (
            br#"{"v":1,"cmd":"probe","port":70000}"#,
            "port 70000 is not a TCP port; use 1 to 65535",
        ),
        (br#"{"v":1,"cmd":"probe","port":-1}"#, "invalid value"),
        (br#"{"v":1,"cmd":"probe","port":"80"}"#, "invalid type"),
        (br#"{"v":1,"cmd":"reconnect","host":5}"#, "invalid type"),
    ] {
        match decode_request(line) {
            Err(e @ DecodeError::InvalidRequest { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(what), "{msg}");
                assert!(msg.ends_with("described in docs/control-api.md"), "{msg}");
                assert!(!msg.contains('\n'));
            }
            other => panic!("{}: {other:?}", String::from_utf8_lossy(line)),
        }
    }
}

/// Decoding errors tell the other side what to send instead.
#[test]
fn decode_errors_say_what_to_send() {
    for (line, says) in [
        (&b""[..], r#"e.g. {"v":1,"cmd":"status"}"#),
        (
            b"[1]",
            r#"expected a JSON object, e.g. {"v":1,"cmd":"status"}"#,
        ),
        (br#"{"cmd":"status"}"#, r#"add "v":1"#),
        (
            br#"{"v":1}"#,
            "add one of status, probe, watch, reconnect, resync",
        ),
        (br#"{"v":2,"cmd":"status"}"#, "from the same release"),
        (b"nope", "send one JSON object per line"),
    ] {
        let msg = decode_request(line).expect_err("invalid").to_string();
        assert!(msg.contains(says), "{msg}");
    }
    let msg = decode_response(br#"{"v":1,"ok":true,"future":{}}"#)
        .expect_err("invalid")
        .to_string();
    assert!(
        msg.contains("no payload this side knows; use fwdd and fwdctl from the same release"),
        "{msg}"
    );
}

#[test]
fn error_code_is_optional_on_the_wire() {
    let line = encode_line(&Response::error_with_code("x", error_code::UNKNOWN_HOST));
    assert_eq!(
        line,
        b"{\"v\":1,\"ok\":false,\"error\":\"x\",\"code\":\"unknown_host\"}\n"
    );
    assert_eq!(
        decode_response(br#"{"v":1,"ok":false,"error":"x"}"#).unwrap(),
        Response::error("x")
    );
}

#[test]
fn unknown_event_kind_is_an_invalid_response() {
    // fwdctl reads event lines leniently (it prints raw JSON and skips unknown kinds);
    // the typed decoder rejects them.
    assert!(matches!(
        decode_response(br#"{"v":1,"ok":true,"event":{"kind":"future","at_ms":1}}"#),
        Err(DecodeError::InvalidResponse(_))
    ));
}

mod diff_tests {
    use super::*;

    const T: u64 = 1_800_000_000_000;

    fn kinds(events: &[Event]) -> Vec<&'static str> {
        events.iter().map(Event::kind).collect()
    }

    #[test]
    fn identical_snapshots_give_nothing() {
        assert!(diff(&sample_status(), &sample_status(), T).is_empty());
    }

    #[test]
    fn counters_alone_give_nothing() {
        let old = sample_status();
        let mut new = old.clone();
        new.forwards[1].connections_open += 5;
        new.forwards[1].connections_total += 5;
        new.hosts[0].events.events_received += 10;
        new.hosts[0].events.last_event_ms = Some(T);
        new.hosts[0].master.last_probe_rtt_ms = Some(9.5);
        new.daemon.pid = 1;
        assert!(diff(&old, &new, T).is_empty());
    }

    #[test]
    fn forward_added_and_removed() {
        let old = sample_status();
        let mut new = old.clone();
        let gone = new.forwards.remove(1); // 5432
        let mut added = gone.clone();
        added.local_port = 15432;
        added.container_id = "1".repeat(64);
        new.forwards.push(added.clone());
        let ev = diff(&old, &new, T);
        assert_eq!(
            ev,
            vec![
                Event::ForwardRemoved {
                    at_ms: T,
                    forward: gone
                },
                Event::ForwardAdded {
                    at_ms: T,
                    forward: added
                },
            ]
        );
        assert!(ev.iter().all(|e| e.at_ms() == T));
    }

    #[test]
    fn port_handed_to_another_container_reads_removed_then_added() {
        let old = sample_status();
        let mut new = old.clone();
        new.forwards[1].container_id = "2".repeat(64);
        new.forwards[1].container_name = "shop-db-2".into();
        let ev = diff(&old, &new, T);
        assert_eq!(kinds(&ev), ["forward_removed", "forward_added"]);
    }

    #[test]
    fn forward_state_changed_with_reason() {
        let old = sample_status();
        let mut new = old.clone();
        new.forwards[0].state = ForwardState::Conflict;
        new.forwards[0].reason = Some("127.0.0.1:8080 is in use by another process".into());
        new.forwards[0].local_addrs.clear();
        let ev = diff(&old, &new, T);
        assert_eq!(
            ev,
            vec![Event::ForwardStateChanged {
                at_ms: T,
                previous_state: ForwardState::Active,
                forward: new.forwards[0].clone(),
            }]
        );
        // A reason alone changing (same state) is not an event.
        let mut newer = new.clone();
        newer.forwards[0].reason = Some("still busy".into());
        assert!(diff(&new, &newer, T).is_empty());
    }

    /// A serving forward that takes another route is an event; a start's
    /// change of route rides on its state change.
    #[test]
    fn an_active_forwards_new_route_is_an_event() {
        let old = sample_status();
        let mut new = old.clone();
        let before = old.forwards[0].route.clone();
        new.forwards[0].route = Some(crate::ForwardRoute {
            kind: crate::RouteKind::Published,
            to: "127.0.0.1:8080".into(),
            why:
                "the direct route to 172.17.0.2:80 failed: administratively prohibited: open failed"
                    .into(),
            fell_back: true,
        });
        assert_eq!(
            diff(&old, &new, T),
            vec![Event::ForwardRouteChanged {
                at_ms: T,
                previous_route: before,
                forward: new.forwards[0].clone(),
            }]
        );
        let mut pending = old.clone();
        pending.forwards[0].state = ForwardState::Pending;
        assert_eq!(kinds(&diff(&pending, &new, T)), ["forward_state_changed"]);
    }

    #[test]
    fn master_state_and_pid_changes() {
        let old = sample_status();
        let mut down = old.clone();
        down.hosts[0].master.state = MasterState::Backoff;
        down.hosts[0].master.pid = None;
        down.hosts[0].master.last_error = Some(ErrorInfo {
            class: "transient".into(),
            kind: "lost".into(),
            message: "connection lost".into(),
            at_ms: T,
        });
        let ev = diff(&old, &down, T);
        assert_eq!(
            ev,
            vec![Event::MasterStateChanged {
                at_ms: T,
                host: "prod".into(),
                previous_state: Some(MasterState::Connected),
                master: down.hosts[0].master.clone(),
            }]
        );
        // Coalesced reconnect: connected before and after, but a new master process.
        let mut replaced = old.clone();
        replaced.hosts[0].master.pid = Some(9999);
        replaced.hosts[0].master.reconnects += 1;
        assert_eq!(kinds(&diff(&old, &replaced, T)), ["master_state_changed"]);
    }

    #[test]
    fn stream_state_and_restarts() {
        let old = sample_status();
        let mut new = old.clone();
        new.hosts[1].events.state = StreamState::Resyncing;
        let ev = diff(&old, &new, T);
        assert_eq!(
            ev,
            vec![Event::StreamStateChanged {
                at_ms: T,
                host: "staging".into(),
                previous_state: Some(StreamState::Down),
                stream: new.hosts[1].events.clone(),
            }]
        );
        let mut restarted = old.clone();
        restarted.hosts[0].events.restarts += 1;
        assert_eq!(kinds(&diff(&old, &restarted, T)), ["stream_state_changed"]);
    }

    #[test]
    fn new_host_has_no_previous_state() {
        let old = small_status();
        let new = sample_status();
        let ev = diff(&old, &new, T);
        assert_eq!(
            kinds(&ev),
            [
                "master_state_changed",
                "stream_state_changed",
                "master_state_changed",
                "stream_state_changed",
                "forward_added",
                "forward_added",
                "forward_added",
                "forward_added",
                "forward_added",
            ]
        );
        assert!(matches!(
            &ev[0],
            Event::MasterStateChanged { previous_state: None, host, .. } if host == "prod"
        ));
        // Forwards come sorted by local port.
        let ports: Vec<u16> = ev
            .iter()
            .filter_map(|e| match e {
                Event::ForwardAdded { forward, .. } => Some(forward.local_port),
                _ => None,
            })
            .collect();
        assert_eq!(ports, [5353, 5432, 6379, 8080, 9000]);
        // And everything goes away again.
        assert_eq!(diff(&new, &old, T).len(), 5);
    }

    #[test]
    fn same_port_on_two_hosts_is_two_forwards() {
        let old = sample_status();
        let mut new = old.clone();
        let mut other = new.forwards[1].clone();
        other.host = "staging".into();
        other.state = ForwardState::Conflict;
        new.forwards.push(other.clone());
        assert_eq!(
            diff(&old, &new, T),
            vec![Event::ForwardAdded {
                at_ms: T,
                forward: other
            }]
        );
    }

    /// Status for a daemon with `n` active forwards (for the size/time measurement).
    pub(crate) fn big_status(n: usize) -> Status {
        let mut st = sample_status();
        let template = st.forwards[1].clone();
        st.forwards = (0..n)
            .map(|i| {
                let mut f = template.clone();
                f.local_port = 20_000 + i as u16;
                f.container_id = format!("{:064x}", i + 1);
                f.container_name = format!("svc-{i}");
                f
            })
            .collect();
        st
    }

    /// Not a benchmark with assertions: prints how long serializing (and diffing) a
    /// status with 500 forwards takes, for the record.
    #[test]
    fn serialize_500_forwards_timing() {
        let st = big_status(500);
        let resp = Response::Status(st.clone());
        let _ = encode_line(&resp); // warm up
        let rounds = 50;
        let t0 = std::time::Instant::now();
        let mut len = 0;
        for _ in 0..rounds {
            len = encode_line(&resp).len();
        }
        let per = t0.elapsed() / rounds;
        let mut changed = st.clone();
        changed.forwards[250].state = ForwardState::Conflict;
        let t1 = std::time::Instant::now();
        for _ in 0..rounds {
            assert_eq!(diff(&st, &changed, T).len(), 1);
        }
        let per_diff = t1.elapsed() / rounds;
        println!(
            "status with 500 forwards: {len} bytes, encode {per:?} per response, diff {per_diff:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_request_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
    }

    #[test]
    fn decode_request_never_panics_on_jsonish(s in r#"[{}\[\]":,0-9a-z\\ vcmdstatu\n\r-]{0,200}"#) {
        let r = decode_request(s.as_bytes());
        if let Err(e) = r {
            // Every error renders to a non-empty, single-line message.
            let msg = e.to_string();
            prop_assert!(!msg.is_empty());
            prop_assert!(!msg.contains('\n'));
        }
        let _ = decode_response(s.as_bytes());
    }

    #[test]
    fn decode_request_never_panics_on_objects(
        v in prop_oneof![Just(serde_json::json!(1)), any::<i64>().prop_map(|n| serde_json::json!(n)), ".{0,8}".prop_map(serde_json::Value::from)],
        cmd in prop_oneof![
            Just("status".to_string()),
            Just("probe".to_string()),
            Just("watch".to_string()),
            Just("reconnect".to_string()),
            Just("resync".to_string()),
            "[a-z_]{0,12}".prop_map(String::from),
        ],
        port in prop_oneof![Just(serde_json::Value::Null), any::<i64>().prop_map(|n| serde_json::json!(n)), ".{0,6}".prop_map(serde_json::Value::from)],
        host in prop_oneof![Just(serde_json::Value::Null), any::<i32>().prop_map(|n| serde_json::json!(n)), ".{0,12}".prop_map(serde_json::Value::from)],
        extra in ".{0,16}",
    ) {
        let line = serde_json::json!({"v": v, "cmd": cmd, "port": port, "host": host, "x": extra}).to_string();
        match decode_request(line.as_bytes()) {
            // Whatever decodes re-encodes to something that decodes the same.
            Ok(req) => prop_assert_eq!(decode_request(&encode_request(&req)), Ok(req)),
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
    }
}
