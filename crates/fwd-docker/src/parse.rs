//! Docker's JSON (events, inspect) → fwd-core's model.
//!
//! Everything here handles input from the remote side: it never panics,
//! bounds what it keeps, and reports malformed input as an error value the
//! caller logs (rate-limited) and skips.

use std::collections::HashMap;

use bollard_stubs::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum};
use fwd_core::{Container, ContainerId, NetworkAttachment, PortBinding, Protocol};
pub use fwd_core::{ContainerEvent, EventAction};

pub use fwd_core::model::COMPOSE_PROJECT_LABEL;

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not valid JSON for {what}: {}", brief(&.source.to_string()))]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the Docker engine sent something fwd cannot use: {0}")]
    Invalid(String),
}

/// Text from the remote side as an error may repeat it: its control
/// characters escaped, then at most 240 characters of that (the start and
/// the end, where serde says the position). serde repeats a string it did
/// not expect whole (an unknown variant raw), and an event line may be 1 MiB.
pub(crate) fn brief(text: &str) -> String {
    const HEAD: usize = 180;
    const TAIL: usize = 60;
    let mut escaped = String::new();
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    let n = escaped.chars().count();
    if n <= HEAD + TAIL {
        return escaped;
    }
    let head: String = escaped.chars().take(HEAD).collect();
    let tail: String = escaped.chars().skip(n - TAIL).collect();
    format!("{head}…{tail}")
}

/// Parses one line of the `/events` stream. A container's network connect
/// or disconnect comes back as that container's `Refresh` (its addresses,
/// and so its direct route, changed); other events (which a filtered
/// stream should not carry anyway) as `Ok(None)`.
pub fn parse_event(line: &[u8]) -> Result<Option<ContainerEvent>, ParseError> {
    let msg: EventMessage = serde_json::from_slice(line).map_err(|source| ParseError::Json {
        what: "an event",
        source,
    })?;
    let attribute = |key: &str| {
        msg.actor
            .as_ref()
            .and_then(|a| a.attributes.as_ref())
            .and_then(|a| a.get(key))
            .map(String::as_str)
    };
    let time_nano = msg
        .time_nano
        .or_else(|| msg.time.map(|t| t.saturating_mul(1_000_000_000)))
        .unwrap_or(0);
    if msg.typ == Some(EventMessageTypeEnum::NETWORK) {
        if !matches!(msg.action.as_deref(), Some("connect" | "disconnect")) {
            return Ok(None);
        }
        let id = attribute("container").ok_or_else(|| {
            ParseError::Invalid("network event without the container it concerns".into())
        })?;
        let id = ContainerId::parse(id).map_err(|e| ParseError::Invalid(e.to_string()))?;
        return Ok(Some(ContainerEvent {
            id,
            action: EventAction::Refresh,
            time_nano,
        }));
    }
    if msg.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return Ok(None);
    }
    let id = msg
        .actor
        .as_ref()
        .and_then(|a| a.id.as_deref())
        .ok_or_else(|| ParseError::Invalid("container event without an actor ID".into()))?;
    let id = ContainerId::parse(id).map_err(|e| ParseError::Invalid(e.to_string()))?;
    let signal = attribute("signal");
    let action = match msg.action.as_deref().unwrap_or("") {
        "create" => EventAction::Create,
        "start" => EventAction::Start,
        // Podman's compat API says "died" in some versions (podman#16857).
        "die" | "died" => EventAction::Die,
        "kill" if matches!(signal, Some("9" | "KILL" | "SIGKILL")) => EventAction::Die,
        // Podman 4 says "remove" where Docker says "destroy".
        "destroy" | "remove" => EventAction::Destroy,
        "rename" | "update" => EventAction::Refresh,
        _ => EventAction::Ignore,
    };
    Ok(Some(ContainerEvent {
        id,
        action,
        time_nano,
    }))
}

/// Parses `GET /containers/{id}/json`. A running container comes back with
/// its published ports; a created, never started one as `pending` with the
/// fixed host ports it asked for (`HostConfig.PortBindings`; ephemeral ones
/// are known only at start); anything else (exited, dead, …) as `Ok(None)`.
pub fn parse_inspect(body: &[u8]) -> Result<Option<Container>, ParseError> {
    Ok(parse_inspect_with_network_ids(body)?.map(|(c, _)| c))
}

/// Networks kept per container (a container has one or a few).
const MAX_NETWORKS: usize = 16;

/// [`parse_inspect`], with the ID of each of the container's networks (in
/// the order of `Container::networks`; Podman names the network there), to
/// ask the engine for the network's driver. Drivers are left unknown.
pub(crate) fn parse_inspect_with_network_ids(
    body: &[u8],
) -> Result<Option<(Container, Vec<String>)>, ParseError> {
    let resp: ContainerInspectResponse =
        serde_json::from_slice(body).map_err(|source| ParseError::Json {
            what: "container inspect output",
            source,
        })?;
    let id = resp
        .id
        .as_deref()
        .ok_or_else(|| ParseError::Invalid("inspect output without an Id".into()))?;
    let id = ContainerId::parse(id).map_err(|e| ParseError::Invalid(e.to_string()))?;
    let state = resp.state.as_ref();
    let running = state.and_then(|s| s.running).unwrap_or(false);
    let created = state.and_then(|s| s.status)
        == Some(bollard_stubs::models::ContainerStateStatusEnum::CREATED);
    if !running && !created {
        return Ok(None);
    }
    let pending = !running;
    let started_at_ns = if pending {
        resp.created.as_deref().and_then(parse_rfc3339_nanos)
    } else {
        state
            .and_then(|s| s.started_at.as_deref())
            .and_then(parse_rfc3339_nanos)
    }
    .unwrap_or(0);
    let name = resp
        .name
        .as_deref()
        .map(|n| n.trim_start_matches('/'))
        .unwrap_or("")
        .chars()
        .take(256)
        .collect();
    let all_labels = resp.config.as_ref().and_then(|c| c.labels.as_ref());
    let compose_project = all_labels
        .and_then(|l| l.get(COMPOSE_PROJECT_LABEL))
        .map(|p| p.chars().take(256).collect());
    // Kept for rules; bounded, since they come from the remote side.
    let labels = all_labels
        .map(|l| {
            l.iter()
                .filter(|(k, v)| k.len() <= 256 && v.len() <= 1024)
                .take(MAX_LABELS)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let ports = if pending {
        resp.host_config
            .as_ref()
            .and_then(|h| h.port_bindings.as_ref())
            .map(port_bindings)
            .unwrap_or_default()
            .into_iter()
            // Port 0 or none: Docker picks one at start.
            .filter(|b| b.host_port != 0)
            .collect()
    } else {
        resp.network_settings
            .as_ref()
            .and_then(|n| n.ports.as_ref())
            .map(port_bindings)
            .unwrap_or_default()
    };
    let exposed_ports = declared_tcp_ports(&resp);
    let mut networks = Vec::new();
    let mut network_ids = Vec::new();
    let mut aliases: Vec<String> = Vec::new();
    if !pending {
        let mut attached: Vec<_> = resp
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .into_iter()
            .flatten()
            .filter(|(name, _)| name.len() <= 256)
            .collect();
        attached.sort_by(|a, b| a.0.cmp(b.0));
        for (name, endpoint) in attached.into_iter().take(MAX_NETWORKS) {
            for alias in endpoint.aliases.iter().flatten() {
                if aliases.len() < MAX_ALIASES
                    && alias.len() <= 253
                    && !aliases.contains(alias)
                    // dockerd < 25 lists the short ID as an alias: no name.
                    && !id.as_str().starts_with(alias.as_str())
                {
                    aliases.push(alias.clone());
                }
            }
            networks.push(NetworkAttachment {
                name: name.clone(),
                driver: None,
                ipv4: endpoint.ip_address.as_ref().and_then(|s| s.parse().ok()),
                ipv6: endpoint
                    .global_ipv6_address
                    .as_ref()
                    .and_then(|s| s.parse().ok()),
            });
            network_ids.push(
                endpoint
                    .network_id
                    .clone()
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| name.clone()),
            );
        }
    }
    Ok(Some((
        Container {
            id,
            name,
            compose_project,
            started_at_ns,
            pending,
            ports,
            labels,
            networks,
            exposed_ports,
            aliases,
        },
        network_ids,
    )))
}

/// Aliases kept per container (compose gives one or two per network).
const MAX_ALIASES: usize = 32;

/// Declared ports kept per container: `--expose 1-65535` is legal, and a
/// name serves at most its per-container cap anyway (its lowest ports).
const MAX_DECLARED_PORTS: usize = 4096;

/// The TCP ports a container declares: `Config.ExposedPorts` (the image's
/// `EXPOSE` and `--expose`) and the keys of `NetworkSettings.Ports` (which
/// also lists exposed ports with no binding), lowest first.
fn declared_tcp_ports(resp: &ContainerInspectResponse) -> Vec<u16> {
    let from_config = resp
        .config
        .as_ref()
        .and_then(|c| c.exposed_ports.as_ref())
        .into_iter()
        .flatten();
    let from_settings = resp
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .into_iter()
        .flat_map(|m| m.keys());
    let ports: std::collections::BTreeSet<u16> = from_config
        .chain(from_settings)
        .filter_map(|key| {
            let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
            (proto == "tcp").then(|| port.parse::<u16>().ok()).flatten()
        })
        .filter(|p| *p != 0)
        .collect();
    ports.into_iter().take(MAX_DECLARED_PORTS).collect()
}

/// The driver of a network (`GET /networks/{id}`): `bridge`, `macvlan`, …
pub fn parse_network_driver(body: &[u8]) -> Result<Option<String>, ParseError> {
    #[derive(serde::Deserialize)]
    struct Network {
        #[serde(rename = "Driver")]
        driver: Option<String>,
    }
    let n: Network = serde_json::from_slice(body).map_err(|source| ParseError::Json {
        what: "the network",
        source,
    })?;
    Ok(n.driver.filter(|d| !d.is_empty() && d.len() <= 64))
}

/// Labels kept per container (rules look at a few; Docker allows many).
const MAX_LABELS: usize = 256;

/// `{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}], "81/tcp": null}`
/// → bindings. Entries that do not parse are skipped: one odd port must not
/// hide the others.
fn port_bindings(
    map: &HashMap<String, Option<Vec<bollard_stubs::models::PortBinding>>>,
) -> Vec<PortBinding> {
    let mut out = Vec::new();
    for (key, bindings) in map {
        let Some((port, proto)) = key.split_once('/') else {
            continue;
        };
        let (Ok(container_port), Some(protocol)) = (port.parse::<u16>(), Protocol::parse(proto))
        else {
            continue;
        };
        for b in bindings.iter().flatten() {
            let Some(Ok(host_port)) = b.host_port.as_deref().map(str::parse::<u16>) else {
                continue;
            };
            let host_ip = b.host_ip.clone().unwrap_or_default();
            if host_ip.len() > 64 {
                continue;
            }
            out.push(PortBinding {
                container_port,
                protocol,
                host_ip,
                host_port,
            });
        }
    }
    out.sort();
    out
}

/// Parses the IDs of `GET /containers/json`.
pub fn parse_container_list(body: &[u8]) -> Result<Vec<ContainerId>, ParseError> {
    #[derive(serde::Deserialize)]
    struct Summary {
        #[serde(rename = "Id")]
        id: String,
    }
    let list: Vec<Summary> = serde_json::from_slice(body).map_err(|source| ParseError::Json {
        what: "the container list",
        source,
    })?;
    list.iter()
        .map(|s| ContainerId::parse(&s.id).map_err(|e| ParseError::Invalid(e.to_string())))
        .collect()
}

/// `GET /networks/{name}` → the network's gateway addresses from its IPAM
/// configuration, IPv4 first. The default bridge's is what Docker's
/// `host-gateway` resolves to (unless dockerd sets `host-gateway-ip`).
pub fn parse_network_gateways(body: &[u8]) -> Result<Vec<std::net::IpAddr>, ParseError> {
    #[derive(serde::Deserialize)]
    struct Network {
        #[serde(rename = "IPAM")]
        ipam: Option<Ipam>,
    }
    #[derive(serde::Deserialize)]
    struct Ipam {
        #[serde(rename = "Config")]
        config: Option<Vec<IpamConfig>>,
    }
    #[derive(serde::Deserialize)]
    struct IpamConfig {
        #[serde(rename = "Gateway")]
        gateway: Option<String>,
        #[serde(rename = "Subnet")]
        subnet: Option<String>,
    }
    let n: Network = serde_json::from_slice(body).map_err(|source| ParseError::Json {
        what: "the network",
        source,
    })?;
    let mut gateways: Vec<std::net::IpAddr> = n
        .ipam
        .and_then(|i| i.config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| match c.gateway.filter(|g| !g.is_empty()) {
            Some(g) => g.parse().ok(),
            // dockerd 20.10 leaves the default bridge's gateway out: its
            // IPAM gives the bridge the subnet's first address (with `bip`
            // set, the gateway is written out).
            None => first_host(c.subnet.as_deref()?),
        })
        .collect();
    gateways.sort_by_key(|ip: &std::net::IpAddr| ip.is_ipv6());
    Ok(gateways)
}

/// The first address of an IPv4 subnet (`172.17.0.0/16` → `172.17.0.1`).
fn first_host(subnet: &str) -> Option<std::net::IpAddr> {
    let (net, len) = subnet.split_once('/')?;
    let net: std::net::Ipv4Addr = net.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 30)?;
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Some(std::net::IpAddr::V4(
        (u32::from(net) & mask).saturating_add(1).into(),
    ))
}

/// `GET /version` → "20.10.24 (API 1.41)", or "Podman 4.3.1 (API 1.41)".
pub fn parse_version(body: &[u8]) -> Result<String, ParseError> {
    let v: bollard_stubs::models::SystemVersion =
        serde_json::from_slice(body).map_err(|source| ParseError::Json {
            what: "the version answer",
            source,
        })?;
    // Podman's compat API names itself among the components; Docker's
    // engine is the default, unnamed.
    let podman = v
        .components
        .iter()
        .flatten()
        .any(|c| c.name.contains("Podman"));
    // Kept in status and the handover: bounded, like every remote string.
    let field = |f: Option<&str>| {
        brief(f.unwrap_or("unknown"))
            .chars()
            .take(64)
            .collect::<String>()
    };
    Ok(format!(
        "{}{} (API {})",
        if podman { "Podman " } else { "" },
        field(v.version.as_deref()),
        field(v.api_version.as_deref())
    ))
}

/// Whether Docker's `/info` says the engine runs rootless (a security option
/// `name=rootless`).
pub fn parse_docker_rootless(body: &[u8]) -> Result<bool, ParseError> {
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "SecurityOptions", default)]
        security_options: Vec<String>,
    }
    let info: Info = serde_json::from_slice(body).map_err(|source| ParseError::Json {
        what: "the info answer",
        source,
    })?;
    Ok(info
        .security_options
        .iter()
        .any(|o| o.split(',').any(|kv| kv == "name=rootless")))
}

/// Whether Podman's `/libpod/info` says it runs rootless
/// (`host.security.rootless`; its Docker-compatible `/info` does not say).
pub fn parse_podman_rootless(body: &[u8]) -> Result<bool, ParseError> {
    #[derive(serde::Deserialize)]
    struct Security {
        rootless: bool,
    }
    #[derive(serde::Deserialize)]
    struct Host {
        security: Security,
    }
    #[derive(serde::Deserialize)]
    struct Info {
        host: Host,
    }
    let info: Info = serde_json::from_slice(body).map_err(|source| ParseError::Json {
        what: "Podman's info answer",
        source,
    })?;
    Ok(info.host.security.rootless)
}

/// Docker's timestamps: `2026-11-23T15:30:00.123456789Z` (UTC; an offset is
/// accepted too). Returns nanoseconds since the epoch.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut scaled: String = frac[..digits].chars().take(9).collect();
        while scaled.len() < 9 {
            scaled.push('0');
        }
        nanos = scaled.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos("2026-11-23T15:30:00.123456789Z"),
            Some(1_795_447_800_123_456_789)
        );
        assert_eq!(
            parse_rfc3339_nanos("2026-11-23T16:30:00.5+01:00"),
            Some(1_795_447_800_500_000_000)
        );
        // Docker's "never started" is outside the nanosecond range: no value.
        assert_eq!(parse_rfc3339_nanos("0001-01-01T00:00:00Z"), None);
        for bad in [
            "",
            "2026-11-23",
            "2026-13-01T00:00:00Z",
            "2026-11-23T15:30:00.Z",
            "2026-11-23T15:30:00",
        ] {
            assert_eq!(parse_rfc3339_nanos(bad), None, "{bad}");
        }
    }

    #[test]
    fn malformed_events_are_errors_not_panics() {
        assert!(parse_event(b"not json").is_err());
        assert!(parse_event(br#"{"Type":"container","Action":"start"}"#).is_err());
        assert!(
            parse_event(br#"{"Type":"container","Action":"start","Actor":{"ID":"x;rm -rf"}}"#)
                .is_err()
        );
        assert!(parse_event(br#"{"Type":"martian"}"#).is_err());
        // A connect must say which container.
        assert!(parse_event(br#"{"Type":"network","Action":"connect"}"#).is_err());
        assert!(parse_event(
            br#"{"Type":"network","Action":"connect","Actor":{"ID":"3a94","Attributes":{"container":"$(x)"}}}"#
        )
        .is_err());
    }

    /// dockerd 20.10's own lines (`docker network connect`, `disconnect`,
    /// `create`, `destroy`): a container's connect or disconnect is that
    /// container's refresh (its addresses changed); a network's own life is
    /// nothing to do.
    #[test]
    fn a_containers_network_connect_or_disconnect_refreshes_it() {
        let container = "bacef2fa9ed8b0f4b86077599557f78ed0feb0567341bffd51ab68b2f8e680a9";
        for action in ["connect", "disconnect"] {
            let line = format!(
                r#"{{"Type":"network","Action":"{action}","Actor":{{"ID":"3a9469124a77afd3fd603c488d318cf04107e978063391b18ea0ad88b16ca0e2","Attributes":{{"container":"{container}","name":"bridge","type":"bridge"}}}},"scope":"local","time":1796388485,"timeNano":1796388485099748312}}"#
            );
            let ev = parse_event(line.as_bytes())
                .expect("parses")
                .expect("an event");
            assert_eq!(ev.id.as_str(), container);
            assert_eq!(ev.action, EventAction::Refresh);
            assert_eq!(ev.time_nano, 1796388485099748312);
        }
        for action in ["create", "destroy"] {
            let line = format!(
                r#"{{"Type":"network","Action":"{action}","Actor":{{"ID":"5847ece56ac3e95a5a452430a6050038126497094cab9c795a6766acc2d622b0","Attributes":{{"name":"fwdcap","type":"bridge"}}}},"scope":"local","time":1796388484,"timeNano":1796388484726358924}}"#
            );
            assert_eq!(parse_event(line.as_bytes()).ok(), Some(None), "{action}");
        }
    }

    #[test]
    fn sigkill_counts_as_death_and_other_signals_do_not() {
        let ev = |signal: &str| {
            let line = format!(
                r#"{{"Type":"container","Action":"kill","Actor":{{"ID":"0123456789ab","Attributes":{{"signal":"{signal}"}}}},"timeNano":5}}"#
            );
            parse_event(line.as_bytes())
                .expect("parses")
                .expect("container event")
                .action
        };
        assert_eq!(ev("9"), EventAction::Die);
        assert_eq!(ev("SIGKILL"), EventAction::Die);
        assert_eq!(ev("15"), EventAction::Ignore);
        assert_eq!(ev("HUP"), EventAction::Ignore);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_event(&bytes);
            let _ = parse_inspect(&bytes);
            let _ = parse_container_list(&bytes);
            let _ = parse_version(&bytes);
        }

        #[test]
        fn timestamp_parser_never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339_nanos(&s);
        }
    }
}
