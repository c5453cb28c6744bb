//! The parsers against output captured from real engines (dockerd 20.10 and
//! 26.1, Podman 4.3 and 5.4) and written from the API 1.52 specification;
//! see testdata/README.md for how each sample was made.

use fwd_core::{HostKey, Protocol, PublishedWhy, Route, RouteFacts, Rules};
use fwd_docker::parse::{
    parse_container_list, parse_docker_rootless, parse_event, parse_inspect, parse_network_driver,
    parse_network_gateways, parse_podman_rootless, parse_version,
};
use fwd_docker::EventAction;

fn sample(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (local port, remote) of the claims, and (host port, protocol) of the
/// unsupported bindings, of one inspect sample.
type Forwards = (Vec<(u16, String)>, Vec<(u16, Protocol)>);

fn forwards(name: &str) -> Forwards {
    let c = parse_inspect(&sample(name))
        .expect("sample parses")
        .expect("sample container runs");
    assert!(
        c.started_at_ns > 1_700_000_000_000_000_000,
        "{}",
        c.started_at_ns
    );
    let (claims, unsupported) = c.claims(
        &HostKey::from("h"),
        &Rules { rules: vec![] },
        RouteFacts::PUBLISHED_ONLY,
    );
    (
        claims
            .iter()
            .map(|c| (c.local_port, c.remote.to_string()))
            .collect(),
        unsupported
            .iter()
            .map(|u| (u.binding.host_port, u.binding.protocol))
            .collect(),
    )
}

fn tcp(list: &[(u16, &str)]) -> Forwards {
    (
        list.iter().map(|(p, r)| (*p, r.to_string())).collect(),
        vec![],
    )
}

#[test]
fn inspect_samples_give_the_expected_forwards() {
    assert_eq!(
        forwards("inspect-p-v4v6.json"),
        tcp(&[(18080, "127.0.0.1:18080")])
    );
    assert_eq!(
        forwards("inspect-publish-all.json"),
        tcp(&[(32768, "127.0.0.1:32768")])
    );
    assert_eq!(
        forwards("inspect-p-ephemeral.json"),
        tcp(&[(32769, "127.0.0.1:32769")])
    );
    assert_eq!(
        forwards("inspect-p-loopback.json"),
        tcp(&[(18081, "127.0.0.1:18081")])
    );
    assert_eq!(
        forwards("inspect-p-several.json"),
        tcp(&[(18082, "127.0.0.1:18082"), (18083, "127.0.0.1:18083")])
    );
    assert_eq!(
        forwards("inspect-p-range.json"),
        tcp(&[(18090, "127.0.0.1:18090"), (18091, "127.0.0.1:18091")])
    );
    assert_eq!(forwards("inspect-no-ports.json"), tcp(&[]));
    let (claims, unsupported) = forwards("inspect-p-udp.json");
    assert!(claims.is_empty());
    // v4 and v6 bindings of the UDP port are both listed.
    assert_eq!(
        unsupported,
        vec![(18084, Protocol::Udp), (18084, Protocol::Udp)]
    );
}

#[test]
fn inspect_names_drop_the_slash() {
    let c = parse_inspect(&sample("inspect-p-v4v6.json"))
        .expect("parses")
        .expect("runs");
    assert_eq!(c.name, "sample-p-v4v6");
}

/// What a name serves and answers to: the declared port published or
/// not, the aliases without dockerd's short-ID one, the compose service.
#[test]
fn an_unpublished_container_declares_its_ports_and_aliases() {
    let c = parse_inspect(&sample("inspect-expose-alias.json"))
        .expect("parses")
        .expect("runs");
    assert!(c.ports.is_empty(), "{:?}", c.ports);
    assert_eq!(c.exposed_ports, vec![5432]);
    assert_eq!(c.aliases, vec!["db".to_string(), "db.shop".to_string()]);
    assert_eq!(c.compose_service(), Some("db"));
    assert_eq!(c.compose_project.as_deref(), Some("shop"));
    let publish_all = parse_inspect(&sample("inspect-p-several.json"))
        .expect("parses")
        .expect("runs");
    assert_eq!(publish_all.exposed_ports, vec![8080, 9090]);
    let udp = parse_inspect(&sample("inspect-p-udp.json"))
        .expect("parses")
        .expect("runs");
    assert!(udp.exposed_ports.is_empty(), "UDP is no TCP port");
}

#[test]
fn event_sample_parses_every_line_with_the_right_actions() {
    let text = sample("events.jsonl");
    let mut actions = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let ev = parse_event(line)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)))
            .expect("a container event");
        assert!(ev.time_nano > 1_700_000_000_000_000_000);
        actions.push(ev.action);
    }
    let count = |a: EventAction| actions.iter().filter(|x| **x == a).count();
    assert!(count(EventAction::Start) >= 3, "{actions:?}");
    assert!(count(EventAction::Die) >= 3, "{actions:?}");
    assert!(count(EventAction::Destroy) >= 1, "{actions:?}");
}

#[test]
fn unfiltered_stream_non_container_events_are_ignored_not_errors() {
    let text = sample("events-unfiltered.jsonl");
    let mut others = 0;
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match parse_event(line) {
            Ok(None) => others += 1,
            Ok(Some(_)) => {}
            Err(e) => panic!("{e}: {}", String::from_utf8_lossy(line)),
        }
    }
    assert!(others > 0);
}

#[test]
fn list_and_version_samples_parse() {
    let ids = parse_container_list(&sample("containers-json.json")).expect("parses");
    assert!(ids.len() >= 8, "{ids:?}");
    let v = parse_version(&sample("version.json")).expect("parses");
    assert!(v.starts_with("20.10") && v.ends_with("(API 1.41)"), "{v}");
}

#[test]
fn a_created_container_is_pending_with_its_fixed_host_ports_only() {
    // `docker create -p 20399:8080 -p 8081 …`: 8081 gets its host port at start.
    let c = parse_inspect(&sample("inspect-created.json"))
        .expect("sample parses")
        .expect("a created container is kept");
    assert!(c.pending);
    assert!(c.started_at_ns > 1_700_000_000_000_000_000, "creation time");
    let (claims, _) = c.claims(
        &HostKey::from("h"),
        &Rules { rules: vec![] },
        RouteFacts::PUBLISHED_ONLY,
    );
    let ports: Vec<(u16, bool)> = claims.iter().map(|c| (c.local_port, c.pending)).collect();
    assert_eq!(ports, vec![(20399, true)]);
}

#[test]
fn the_default_bridges_gateway_is_its_subnets_first_address_when_left_out() {
    // dockerd 20.10 writes only the subnet for its default bridge.
    assert_eq!(
        parse_network_gateways(&sample("network-bridge.json")).unwrap(),
        ["172.17.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    // A written gateway wins (`bip`, user networks), IPv4 before IPv6.
    let written = br#"{"IPAM":{"Config":[
        {"Subnet":"fd00::/64","Gateway":"fd00::1"},
        {"Subnet":"192.168.5.0/24","Gateway":"192.168.5.9"}]}}"#;
    let got = parse_network_gateways(written).unwrap();
    assert_eq!(got[0], "192.168.5.9".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(got[1], "fd00::1".parse::<std::net::IpAddr>().unwrap());
    assert!(parse_network_gateways(br#"{"IPAM":{"Config":null}}"#)
        .unwrap()
        .is_empty());
    assert!(parse_network_gateways(b"not json").is_err());
}

// Podman 4.3.1's compat API (Debian 12), captured in the sandbox: see
// testdata/README.md.

/// The action of each container event of a `.jsonl` sample.
fn event_actions(jsonl: &[u8]) -> Vec<EventAction> {
    String::from_utf8_lossy(jsonl)
        .lines()
        .map(|l| parse_event(l.as_bytes()).unwrap().unwrap().action)
        .collect()
}

fn podman(name: &str) -> Vec<u8> {
    sample(&format!("podman-4.3/{name}"))
}

#[test]
fn podman_events_map_like_dockers() {
    let actions = event_actions(&podman("events.jsonl"));
    assert_eq!(
        actions,
        [
            EventAction::Create,
            EventAction::Ignore, // init
            EventAction::Start,
            EventAction::Ignore, // kill, no signal attribute
            EventAction::Die,
            EventAction::Ignore,  // cleanup
            EventAction::Destroy, // "remove", Podman's destroy
        ]
    );
    let died = br#"{"Type":"container","Action":"died","Actor":{"ID":"0123456789ab0123456789ab0123456789ab0123456789ab0123456789ab0123"},"timeNano":1}"#;
    assert_eq!(parse_event(died).unwrap().unwrap().action, EventAction::Die);
}

#[test]
fn podman_inspect_with_an_empty_host_ip_forwards_to_loopback() {
    let c = parse_inspect(&podman("inspect-p.json")).unwrap().unwrap();
    assert!(!c.pending);
    assert_eq!(c.ports.len(), 1);
    assert_eq!(
        c.ports[0].host_ip, "",
        "Podman says \"\" where Docker says 0.0.0.0"
    );
    let (claims, _) = c.claims(
        &HostKey::from("h"),
        &Rules { rules: vec![] },
        RouteFacts::PUBLISHED_ONLY,
    );
    assert_eq!(claims[0].local_port, 20901);
    assert_eq!(claims[0].remote.to_string(), "127.0.0.1:20901");
    let created = parse_inspect(&podman("inspect-created.json"))
        .unwrap()
        .unwrap();
    assert!(created.pending);
    assert_eq!(created.ports[0].host_port, 20901);
}

#[test]
fn podman_version_list_and_network() {
    assert_eq!(
        parse_version(&podman("version.json")).unwrap(),
        "Podman 4.3.1 (API 1.41)"
    );
    assert_eq!(
        parse_container_list(&podman("containers-json.json"))
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        parse_network_gateways(&podman("network-bridge.json")).unwrap(),
        ["10.88.0.1".parse::<std::net::IpAddr>().unwrap()],
        "Podman answers for \"bridge\" with its own network"
    );
}

// Docker Engine API 1.52 (Engine 29) shapes, written from its published
// specification: see testdata/README.md.

#[test]
fn api_1_52_events_without_the_legacy_fields_map_the_same() {
    let actions = event_actions(&sample("api-1.52/events.jsonl"));
    assert_eq!(
        actions,
        [
            EventAction::Create,
            EventAction::Start,
            EventAction::Ignore, // health_status: healthy
            EventAction::Die,    // kill with signal 9
            EventAction::Die,
            EventAction::Destroy,
        ]
    );
}

#[test]
fn api_1_52_inspect_without_the_top_level_network_fields() {
    let c = parse_inspect(&sample("api-1.52/inspect-p-v4v6.json"))
        .unwrap()
        .unwrap();
    assert_eq!(c.compose_project.as_deref(), Some("shop"));
    let (claims, unsupported) = c.claims(
        &HostKey::from("h"),
        &Rules { rules: vec![] },
        RouteFacts::PUBLISHED_ONLY,
    );
    assert!(unsupported.is_empty());
    assert_eq!(
        claims.len(),
        1,
        "0.0.0.0 and :: for one port are one forward"
    );
    assert_eq!(claims[0].local_port, 18080);
    assert_eq!(claims[0].remote.to_string(), "127.0.0.1:18080");
}

#[test]
fn rootless_or_not_as_each_engine_says() {
    // dockerd 20.10 rootful and under rootlesskit (dockerd-rootless.sh).
    assert!(!parse_docker_rootless(&sample("info.json")).unwrap());
    assert!(parse_docker_rootless(&sample("info-rootless.json")).unwrap());
    // Podman 4.3: its compat /info does not say; /libpod/info does.
    assert!(!parse_podman_rootless(&podman("libpod-info.json")).unwrap());
    assert!(parse_podman_rootless(&podman("libpod-info-rootless.json")).unwrap());
    assert!(parse_podman_rootless(b"{}").is_err());
}

#[test]
fn a_running_containers_networks_and_their_drivers_give_the_direct_route() {
    let rootful = RouteFacts {
        direct_allowed: true,
        rootless: Some(false),
    };
    for (inspect, network, expected_name, expected_ip, port) in [
        (
            "inspect-p-v4v6.json",
            "network-bridge.json",
            "bridge",
            "172.17.0.9",
            18080,
        ),
        (
            "podman-4.3/inspect-p.json",
            "podman-4.3/network-bridge.json",
            "podman",
            "10.88.0.3",
            0,
        ),
    ] {
        let mut c = parse_inspect(&sample(inspect)).unwrap().unwrap();
        assert_eq!(c.networks.len(), 1, "{inspect}: {:?}", c.networks);
        assert_eq!(c.networks[0].name, expected_name);
        assert_eq!(
            c.networks[0].ipv4.map(|ip| ip.to_string()).as_deref(),
            Some(expected_ip)
        );
        assert_eq!(c.networks[0].driver, None, "asked separately");
        c.networks[0].driver = parse_network_driver(&sample(network)).unwrap();
        assert_eq!(c.networks[0].driver.as_deref(), Some("bridge"));
        let (claims, _) = c.claims(&HostKey::from("h"), &Rules { rules: vec![] }, rootful);
        let claim = claims
            .iter()
            .find(|cl| port == 0 || cl.local_port == port)
            .expect("a claim");
        match &claim.route {
            Route::Direct { to, network } => {
                assert_eq!(network, expected_name);
                assert_eq!(to.ip, expected_ip);
                assert_eq!(to.port, claim.container_port, "the container's own port");
            }
            other => panic!("{inspect}: {other:?}"),
        }
        assert_eq!(
            claim.connect_to(),
            match &claim.route {
                Route::Direct { to, .. } => to,
                _ => unreachable!(),
            }
        );
    }
    let created = parse_inspect(&sample("inspect-created.json"))
        .unwrap()
        .unwrap();
    assert!(created.networks.is_empty(), "no address before the start");
}

// Today's engines, captured in the sandbox (Debian 13's, run beside Debian
// 12's): dockerd 26.1 (API 1.45) and Podman 5.4. See testdata/README.md.

fn docker26(name: &str) -> Vec<u8> {
    sample(&format!("docker-26.1/{name}"))
}

fn podman5(name: &str) -> Vec<u8> {
    sample(&format!("podman-5.4/{name}"))
}

#[test]
fn docker_26_events_map_like_20_10s() {
    // `create -p`, `start`, `stop -t 1` (httpd ignores SIGTERM), `rm`: 26
    // still sends the legacy `status`, `id` and `from` beside `Action`.
    let actions = event_actions(&docker26("events.jsonl"));
    assert_eq!(
        actions,
        [
            EventAction::Create,
            EventAction::Start,
            EventAction::Ignore, // kill, signal 15
            EventAction::Die,    // kill, signal 9
            EventAction::Ignore, // stop, sent before die here
            EventAction::Die,
            EventAction::Destroy,
        ]
    );
}

#[test]
fn docker_26_inspect_version_list_network_and_rootless() {
    assert_eq!(
        parse_version(&docker26("version.json")).unwrap(),
        "26.1.5+dfsg1 (API 1.45)"
    );
    let mut c = parse_inspect(&docker26("inspect-p-v4v6.json"))
        .unwrap()
        .unwrap();
    assert!(!c.pending);
    assert!(c.started_at_ns > 1_700_000_000_000_000_000);
    let hosts: Vec<&str> = c.ports.iter().map(|p| p.host_ip.as_str()).collect();
    assert_eq!(hosts, ["0.0.0.0", "::"]);
    assert_eq!(c.networks.len(), 1, "{:?}", c.networks);
    assert_eq!(c.networks[0].name, "bridge");
    c.networks[0].driver = parse_network_driver(&docker26("network-bridge.json")).unwrap();
    let rootful = RouteFacts {
        direct_allowed: true,
        rootless: Some(false),
    };
    let (claims, unsupported) = c.claims(&HostKey::from("h"), &Rules { rules: vec![] }, rootful);
    assert!(unsupported.is_empty());
    assert_eq!(claims.len(), 1, "0.0.0.0 and :: for one port: one forward");
    assert_eq!(claims[0].local_port, 20399);
    match &claims[0].route {
        Route::Direct { to, network } => {
            assert_eq!(network, "bridge");
            assert_eq!(to.to_string(), "172.30.0.2:8080");
        }
        other => panic!("{other:?}"),
    }

    let created = parse_inspect(&docker26("inspect-created.json"))
        .unwrap()
        .unwrap();
    assert!(created.pending);
    let (claims, _) = created.claims(
        &HostKey::from("h"),
        &Rules { rules: vec![] },
        RouteFacts::PUBLISHED_ONLY,
    );
    let ports: Vec<(u16, bool)> = claims.iter().map(|c| (c.local_port, c.pending)).collect();
    assert_eq!(ports, vec![(20399, true)]);

    assert_eq!(
        parse_container_list(&docker26("containers-json.json"))
            .unwrap()
            .len(),
        1
    );
    // dockerd 26 writes its bridge's gateway (20.10 left it out).
    assert_eq!(
        parse_network_gateways(&docker26("network-bridge.json")).unwrap(),
        ["172.30.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(!parse_docker_rootless(&docker26("info.json")).unwrap());
    assert!(parse_docker_rootless(&docker26("info-rootless.json")).unwrap());
}

#[test]
fn podman_5_events_map_like_4_3s_without_the_kill() {
    let actions = event_actions(&podman5("events.jsonl"));
    assert_eq!(
        actions,
        [
            EventAction::Create,
            EventAction::Ignore, // init
            EventAction::Start,
            EventAction::Die,     // `stop -t 1`: no kill events on Podman 5
            EventAction::Ignore,  // cleanup
            EventAction::Destroy, // remove
        ]
    );
}

#[test]
fn podman_5_inspect_version_list_network_and_rootless() {
    assert_eq!(
        parse_version(&podman5("version.json")).unwrap(),
        "Podman 5.4.2 (API 1.41)"
    );
    let mut c = parse_inspect(&podman5("inspect-p.json")).unwrap().unwrap();
    assert!(!c.pending);
    assert_eq!(c.ports.len(), 1);
    assert_eq!(
        c.ports[0].host_ip, "0.0.0.0",
        "Podman 5 writes 0.0.0.0 where 4.3 wrote \"\""
    );
    assert_eq!(c.networks.len(), 1, "{:?}", c.networks);
    assert_eq!(c.networks[0].name, "podman");
    c.networks[0].driver = parse_network_driver(&podman5("network-bridge.json")).unwrap();
    let rootful = RouteFacts {
        direct_allowed: true,
        rootless: Some(false),
    };
    let (claims, _) = c.claims(&HostKey::from("h"), &Rules { rules: vec![] }, rootful);
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].local_port, 20399);
    match &claims[0].route {
        Route::Direct { to, network } => {
            assert_eq!(network, "podman");
            assert_eq!(to.to_string(), "10.250.0.16:8080");
        }
        other => panic!("{other:?}"),
    }

    // Created, not started: Podman 5 already lists the bindings under
    // NetworkSettings.Ports (Docker leaves them out until the start).
    let created = parse_inspect(&podman5("inspect-created.json"))
        .unwrap()
        .unwrap();
    assert!(created.pending);
    assert_eq!(created.ports[0].host_port, 20399);

    // Rootless (pasta): the container has an address, in a namespace of the
    // user's that the host cannot reach; only the engine's word tells.
    let rootless = parse_inspect(&podman5("inspect-p-rootless.json"))
        .unwrap()
        .unwrap();
    assert_eq!(
        rootless.networks[0]
            .ipv4
            .map(|ip| ip.to_string())
            .as_deref(),
        Some("10.88.0.9")
    );
    let facts = RouteFacts {
        direct_allowed: true,
        rootless: Some(true),
    };
    let (claims, _) = rootless.claims(&HostKey::from("h"), &Rules { rules: vec![] }, facts);
    assert_eq!(claims[0].connect_to().to_string(), "127.0.0.1:20399");
    assert_eq!(claims[0].route, Route::Published(PublishedWhy::Rootless));

    assert_eq!(
        parse_container_list(&podman5("containers-json.json"))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        parse_network_gateways(&podman5("network-bridge.json")).unwrap(),
        ["10.250.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(!parse_podman_rootless(&podman5("libpod-info.json")).unwrap());
    assert!(parse_podman_rootless(&podman5("libpod-info-rootless.json")).unwrap());
}
