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
                },
                events: StreamStatus {
                    state: StreamState::Streaming,
                    events_received: 1234,
                    last_event_ms: Some(1_700_000_190_000),
                    restarts: 1,
                },
                docker_version: Some("27.3.1".into()),
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
                },
                events: StreamStatus {
                    state: StreamState::Down,
                    events_received: 0,
                    last_event_ms: None,
                    restarts: 0,
                },
                docker_version: None,
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
                container_port: "80/tcp".into(),
                state: ForwardState::Active,
                reason: None,
                since_ms: 1_700_000_120_000,
                connections_open: 0,
                connections_total: 3,
            },
            ForwardStatus {
                host: "prod".into(),
                local_port: 5432,
                local_addrs: vec!["127.0.0.1:5432".into(), "[::1]:5432".into()],
                remote: "127.0.0.1:5432".into(),
                container_id: "4e5d6c7b8a90".repeat(6)[..64].to_string(),
                container_name: "shop-db-1".into(),
                compose_project: Some("shop".into()),
                container_port: "5432/tcp".into(),
                state: ForwardState::Active,
                reason: None,
                since_ms: 1_700_000_110_000,
                connections_open: 2,
                connections_total: 17,
            },
            ForwardStatus {
                host: "prod".into(),
                local_port: 6379,
                local_addrs: vec![],
                remote: "127.0.0.1:6379".into(),
                container_id: "0123456789ab".repeat(6)[..64].to_string(),
                container_name: "shop-cache-1".into(),
                compose_project: Some("shop".into()),
                container_port: "6379/tcp".into(),
                state: ForwardState::Conflict,
                reason: Some("127.0.0.1:6379 is in use by another process".into()),
                since_ms: 1_700_000_130_000,
                connections_open: 0,
                connections_total: 0,
            },
            ForwardStatus {
                host: "prod".into(),
                local_port: 5353,
                local_addrs: vec![],
                remote: "127.0.0.1:5353".into(),
                container_id: "abcdef012345".repeat(6)[..64].to_string(),
                container_name: "dns".into(),
                compose_project: None,
                container_port: "53/udp".into(),
                state: ForwardState::Unsupported,
                reason: Some("UDP ports are not forwarded".into()),
                since_ms: 1_700_000_140_000,
                connections_open: 0,
                connections_total: 0,
            },
            ForwardStatus {
                host: "staging".into(),
                local_port: 9000,
                local_addrs: vec![],
                remote: "127.0.0.1:9000".into(),
                container_id: "fedcba987654".repeat(6)[..64].to_string(),
                container_name: "minio".into(),
                compose_project: None,
                container_port: "9000/tcp".into(),
                state: ForwardState::Pending,
                reason: Some("waiting for the ssh master".into()),
                since_ms: 1_700_000_150_000,
                connections_open: 0,
                connections_total: 0,
            },
        ],
    }
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
    #[allow(clippy::single_element_loop)] // one entry per command; grows with the protocol
    for req in [Request::Status] {
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
        "unknown command \"launch\" (supported: status)"
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
        cmd in prop_oneof![Just("status".to_string()), "[a-z_]{0,12}".prop_map(String::from)],
        extra in ".{0,16}",
    ) {
        let line = serde_json::json!({"v": v, "cmd": cmd, "x": extra}).to_string();
        let _ = decode_request(line.as_bytes());
    }
}
