//! The ports a container's name serves: every TCP port it declares
//! (`EXPOSE`, `--expose`), every container port it publishes, and what its
//! `fwd.ports` label adds; rules skip as they do for forwards, matched
//! against the container port.

use std::collections::BTreeSet;

use crate::model::{Container, Protocol};
use crate::rules::{Decision, PortFacts, Rules};

/// The label that adds ports nothing declares: `fwd.ports=5432,8000-8010`.
pub const PORTS_LABEL: &str = "fwd.ports";

/// Ports one `fwd.ports` label may name (a name serves at most its
/// per-container cap of them anyway).
const LABEL_PORTS_AT_MOST: usize = 4096;

/// What a name serves, lowest first and at most `cap`, and what was wrong
/// with the container's `fwd.ports` label (shown escaped).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NamePorts {
    pub ports: Vec<u16>,
    /// Ports past the cap, left out.
    pub left_out: usize,
    pub label_error: Option<String>,
}

pub fn name_ports(c: &Container, host: &str, rules: &Rules, cap: usize) -> NamePorts {
    let mut wanted: BTreeSet<u16> = c.exposed_ports.iter().copied().collect();
    wanted.extend(
        c.ports
            .iter()
            .filter(|b| b.protocol == Protocol::Tcp)
            .map(|b| b.container_port),
    );
    let mut label_error = None;
    if let Some(value) = c.labels.get(PORTS_LABEL) {
        match parse_ports_label(value) {
            Ok(ports) => wanted.extend(ports),
            Err(e) => label_error = Some(e),
        }
    }
    let served: Vec<u16> = wanted
        .into_iter()
        .filter(|p| *p != 0)
        .filter(|p| {
            let facts = PortFacts {
                host,
                published_port: *p,
                labels: &c.labels,
                project: c.compose_project.as_deref(),
            };
            matches!(rules.decide(&facts), Decision::Forward { .. })
        })
        .collect();
    let left_out = served.len().saturating_sub(cap);
    NamePorts {
        ports: served.into_iter().take(cap).collect(),
        left_out,
        label_error,
    }
}

/// `5432`, `5432,6379`, `8000-8010`: ports and inclusive ranges, separated
/// by commas (spaces allowed). Anything else is refused whole, with the
/// part that is wrong.
pub fn parse_ports_label(value: &str) -> Result<BTreeSet<u16>, String> {
    let mut out = BTreeSet::new();
    let bad = |part: &str, why: &str| {
        format!(
            "{PORTS_LABEL}: {:?} {why}",
            part.chars().take(40).collect::<String>()
        )
    };
    for part in value.split(',').map(str::trim) {
        if part.is_empty() {
            continue;
        }
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p != 0);
        let (Some(lo), Some(hi)) = (port(lo), port(hi)) else {
            return Err(bad(part, "is not a port (1-65535) or a range of them"));
        };
        if lo > hi {
            return Err(bad(part, "is a range that ends before it starts"));
        }
        if out.len() + usize::from(hi - lo) + 1 > LABEL_PORTS_AT_MOST {
            return Err(bad(part, "makes more than 4096 ports"));
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{ContainerId, PortBinding};
    use crate::rules::{Rule, RuleAction};

    fn container(exposed: &[u16], published: &[(u16, Protocol)], label: Option<&str>) -> Container {
        let mut labels = BTreeMap::new();
        if let Some(v) = label {
            labels.insert(PORTS_LABEL.to_string(), v.to_string());
        }
        Container {
            id: ContainerId::parse("0123456789ab").expect("id"),
            name: "db".into(),
            compose_project: None,
            started_at_ns: 1,
            pending: false,
            ports: published
                .iter()
                .map(|(p, proto)| PortBinding {
                    container_port: *p,
                    protocol: *proto,
                    host_ip: "0.0.0.0".into(),
                    host_port: 30000 + *p,
                })
                .collect(),
            labels,
            networks: vec![],
            exposed_ports: exposed.to_vec(),
            aliases: vec![],
        }
    }

    fn no_rules() -> Rules {
        Rules { rules: vec![] }
    }

    #[test]
    fn declared_published_and_labelled_ports_all_served_once() {
        let c = container(
            &[5432, 80],
            &[(80, Protocol::Tcp), (53, Protocol::Udp)],
            Some("9000-9002, 80"),
        );
        let p = name_ports(&c, "h", &no_rules(), 100);
        assert_eq!(p.ports, vec![80, 5432, 9000, 9001, 9002]);
        assert_eq!((p.left_out, p.label_error), (0, None));
    }

    #[test]
    fn the_cap_keeps_the_lowest_and_counts_the_rest() {
        let c = container(&[1, 2, 3, 4, 5], &[], None);
        let p = name_ports(&c, "h", &no_rules(), 2);
        assert_eq!(p.ports, vec![1, 2]);
        assert_eq!(p.left_out, 3);
    }

    #[test]
    fn rules_skip_by_container_port_and_fwd_enable_false_skips_all() {
        let rules = Rules {
            rules: vec![Rule {
                host: None,
                ports: Some((80, 80)),
                label: None,
                project: None,
                action: RuleAction::Skip,
            }],
        };
        let c = container(&[80, 443], &[], None);
        assert_eq!(name_ports(&c, "h", &rules, 100).ports, vec![443]);
        let mut off = container(&[80, 443], &[], None);
        off.labels
            .insert(crate::rules::ENABLE_LABEL.into(), "false".into());
        assert!(name_ports(&off, "h", &no_rules(), 100).ports.is_empty());
    }

    #[test]
    fn a_bad_label_is_refused_whole_and_said() {
        for bad in ["x", "0", "70000", "9-1", "1-5000", "5432;rm"] {
            let c = container(&[5432], &[], Some(bad));
            let p = name_ports(&c, "h", &no_rules(), 100);
            assert_eq!(p.ports, vec![5432], "{bad}");
            assert!(p.label_error.is_some(), "{bad}");
        }
        assert_eq!(
            parse_ports_label(" 1 , 3-4,").expect("valid"),
            BTreeSet::from([1, 3, 4])
        );
    }
}
