//! `[[rule]]` tables → `fwd_core::Rules`.

use std::ops::Range;

use fwd_core::{Rule, RuleAction};

use super::error::{ConfigError, Key};
use super::file::{parts, FileRule, S};
use super::settings::HostConfig;

pub fn rules_config(
    rules: &[S<FileRule>],
    hosts: &[HostConfig],
) -> Result<fwd_core::Rules, ConfigError> {
    let rules = rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(&Key::file("rule").item(i), r.get_ref(), r.span(), hosts))
        .collect::<Result<_, _>>()?;
    Ok(fwd_core::Rules { rules })
}

/// One rule; `table` is the span of its `[[rule]]` table.
fn rule(
    key: &Key,
    r: &FileRule,
    table: Range<usize>,
    hosts: &[HostConfig],
) -> Result<Rule, ConfigError> {
    let ports = match parts(&r.ports) {
        None => None,
        Some((p, span)) => Some(fwd_core::rules::parse_port_range(p).map_err(|e| {
            key.field("ports").error(
                span,
                format!("{e}; write one port such as \"5432\" or a range such as \"8000-8099\""),
            )
        })?),
    };
    if let Some((h, span)) = parts(&r.host) {
        if !hosts.iter().any(|c| &c.name == h) {
            let names: Vec<String> = hosts.iter().map(|c| format!("{:?}", c.name)).collect();
            return Err(key.field("host").error(
                span,
                format!(
                    "no host named {h:?} is configured; use the name of a [[host]] ({})",
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(Rule {
        host: r.host.as_ref().map(|h| h.get_ref().clone()),
        ports,
        label: label(key, r)?,
        project: r.project.clone(),
        action: action(key, r, table, ports)?,
    })
}

/// `label = "key"` or `"key=value"`.
fn label(key: &Key, r: &FileRule) -> Result<Option<(String, Option<String>)>, ConfigError> {
    let Some((l, span)) = parts(&r.label) else {
        return Ok(None);
    };
    let (k, v) = match l.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (l.to_string(), None),
    };
    if k.is_empty() {
        return Err(key.field("label").error(
            span,
            format!(
                "{l:?} has no label key; write \"key\" or \"key=value\", e.g. \"team=payments\""
            ),
        ));
    }
    Ok(Some((k, v)))
}

/// `bind`: IP addresses, at least one.
fn bind(key: &Key, r: &FileRule) -> Result<Option<Vec<std::net::IpAddr>>, ConfigError> {
    let Some(list) = &r.bind else {
        return Ok(None);
    };
    let key = key.field("bind");
    if list.get_ref().is_empty() {
        return Err(key.error(
            list.span(),
            "the list is empty, so the port would listen nowhere; name at least one address \
             such as \"127.0.0.1\", or remove bind for the default (127.0.0.1 and ::1)",
        ));
    }
    let addrs = list.get_ref().iter().map(|a| {
        a.get_ref().parse::<std::net::IpAddr>().map_err(|_| {
            key.error(
                a.span(),
                format!(
                    "{:?} is not an IP address; write addresses such as \"127.0.0.1\" or \
                     \"::1\" (host names are not resolved)",
                    a.get_ref()
                ),
            )
        })
    });
    addrs.collect::<Result<Vec<_>, _>>().map(Some)
}

fn action(
    key: &Key,
    r: &FileRule,
    table: Range<usize>,
    ports: Option<(u16, u16)>,
) -> Result<RuleAction, ConfigError> {
    let bind = bind(key, r)?;
    let local_port = parts(&r.local_port);
    match parts(&r.action) {
        None => forward(key, local_port, ports, bind),
        Some((a, _)) if a == "forward" => forward(key, local_port, ports, bind),
        Some((a, _)) if a == "skip" => {
            if local_port.is_some() || bind.is_some() {
                return Err(key.error(
                    table,
                    "a skip rule forwards nothing, so local_port and bind have no use; remove \
                     them or set action = \"forward\"",
                ));
            }
            Ok(RuleAction::Skip)
        }
        Some((other, span)) => Err(key.field("action").error(
            span,
            format!("{other:?} is not an action; use \"forward\" or \"skip\""),
        )),
    }
}

fn forward(
    key: &Key,
    local_port: Option<(&u16, Range<usize>)>,
    ports: Option<(u16, u16)>,
    bind: Option<Vec<std::net::IpAddr>>,
) -> Result<RuleAction, ConfigError> {
    if let Some((&p, span)) = local_port.clone() {
        let key = key.field("local_port");
        if ports.is_none_or(|(a, b)| a != b) {
            let matched = match ports {
                None => "every port",
                Some(_) => "a range of ports",
            };
            return Err(key.error(
                span,
                format!(
                    "the rule matches {matched}, which cannot all move to one local port; give \
                     the rule a single port (ports = \"5432\") or remove local_port"
                ),
            ));
        }
        if p == 0 {
            return Err(key.error(span, "0 is not a port; use a port from 1 to 65535"));
        }
    }
    Ok(RuleAction::Forward {
        local_port: local_port.map(|(p, _)| *p),
        bind,
    })
}
