//! Which published ports are forwarded, to which local port, on which
//! addresses.
//!
//! Semantics, in order:
//! 1. a container labelled `fwd.enable=false` is never forwarded;
//! 2. the configured rules are tried in order and the **first** whose
//!    conditions all match decides (`forward` or `skip`);
//! 3. no rule matched: the port is forwarded (same port number, loopback).
//!
//! A container label `fwd.port.<published port>=<local port>` remaps that
//! port and wins over a rule's `local_port` (the container knows best).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Label that opts a container out when set to "false".
pub const ENABLE_LABEL: &str = "fwd.enable";
/// Label prefix for remaps: `fwd.port.5432=15432`.
pub const PORT_LABEL_PREFIX: &str = "fwd.port.";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Only containers of this host (by configured name).
    pub host: Option<String>,
    /// Only published ports in this inclusive range.
    pub ports: Option<(u16, u16)>,
    /// Only containers with this label: key, and value if given.
    pub label: Option<(String, Option<String>)>,
    /// Only containers of this compose project.
    pub project: Option<String>,
    pub action: RuleAction,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleAction {
    Skip,
    Forward {
        /// Local port instead of the published one (single-port rules only).
        local_port: Option<u16>,
        /// Addresses to listen on instead of the default loopback ones.
        bind: Option<Vec<IpAddr>>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub rules: Vec<Rule>,
}

/// Where a forwarded port listens when no rule says otherwise.
pub fn default_bind() -> Vec<IpAddr> {
    vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Skip { reason: String },
    Forward { local_port: u16, bind: Vec<IpAddr> },
}

/// What a rule needs to know about one published port.
pub struct PortFacts<'a> {
    pub host: &'a str,
    pub published_port: u16,
    pub labels: &'a BTreeMap<String, String>,
    pub project: Option<&'a str>,
}

impl Rule {
    fn matches(&self, p: &PortFacts<'_>) -> bool {
        self.host.as_deref().is_none_or(|h| h == p.host)
            && self
                .ports
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&p.published_port))
            && self
                .label
                .as_ref()
                .is_none_or(|(k, v)| match p.labels.get(k) {
                    None => false,
                    Some(actual) => v.as_ref().is_none_or(|v| v == actual),
                })
            && self
                .project
                .as_deref()
                .is_none_or(|proj| p.project == Some(proj))
    }
}

impl Rules {
    pub fn decide(&self, p: &PortFacts<'_>) -> Decision {
        if p.labels.get(ENABLE_LABEL).map(String::as_str) == Some("false") {
            return Decision::Skip {
                reason: format!("container label {ENABLE_LABEL}=false"),
            };
        }
        let label_remap = p
            .labels
            .get(&format!("{PORT_LABEL_PREFIX}{}", p.published_port))
            .and_then(|v| v.parse::<u16>().ok())
            .filter(|v| *v != 0);
        let (rule_port, bind) = match self.rules.iter().enumerate().find(|(_, r)| r.matches(p)) {
            Some((
                i,
                Rule {
                    action: RuleAction::Skip,
                    ..
                },
            )) => {
                return Decision::Skip {
                    reason: format!("rule {} skips it", i + 1),
                }
            }
            Some((
                _,
                Rule {
                    action: RuleAction::Forward { local_port, bind },
                    ..
                },
            )) => (*local_port, bind.clone()),
            None => (None, None),
        };
        Decision::Forward {
            local_port: label_remap.or(rule_port).unwrap_or(p.published_port),
            bind: bind.unwrap_or_else(default_bind),
        }
    }
}

/// Parses "5432" or "8000-8099".
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let port = |t: &str| {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{t:?} is not a port from 1 to 65535"))
    };
    match s.split_once('-') {
        None => {
            let p = port(s)?;
            Ok((p, p))
        }
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("range {s:?} runs backwards"));
            }
            Ok((a, b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        port: u16,
        labels: &'a BTreeMap<String, String>,
        project: Option<&'a str>,
    ) -> PortFacts<'a> {
        PortFacts {
            host: "h",
            published_port: port,
            labels,
            project,
        }
    }

    fn forward(local: u16) -> Decision {
        Decision::Forward {
            local_port: local,
            bind: default_bind(),
        }
    }

    fn rule(action: RuleAction) -> Rule {
        Rule {
            host: None,
            ports: None,
            label: None,
            project: None,
            action,
        }
    }

    #[test]
    fn no_rules_forwards_everything_on_loopback() {
        let none = BTreeMap::new();
        assert_eq!(
            Rules { rules: vec![] }.decide(&facts(8080, &none, None)),
            forward(8080)
        );
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let none = BTreeMap::new();
        let rules = Rules {
            rules: vec![
                Rule {
                    ports: Some((5432, 5432)),
                    ..rule(RuleAction::Forward {
                        local_port: Some(15432),
                        bind: None,
                    })
                },
                Rule {
                    ports: Some((5000, 5999)),
                    ..rule(RuleAction::Skip)
                },
            ],
        };
        assert_eq!(rules.decide(&facts(5432, &none, None)), forward(15432));
        assert!(
            matches!(rules.decide(&facts(5433, &none, None)), Decision::Skip { reason } if reason == "rule 2 skips it")
        );
        assert_eq!(rules.decide(&facts(6000, &none, None)), forward(6000));
    }

    #[test]
    fn labels_opt_out_and_remap() {
        let mut labels = BTreeMap::new();
        labels.insert("fwd.port.5432".to_string(), "25432".to_string());
        let rules = Rules {
            rules: vec![Rule {
                ports: Some((5432, 5432)),
                ..rule(RuleAction::Forward {
                    local_port: Some(15432),
                    bind: None,
                })
            }],
        };
        // The container's own remap wins over the rule's.
        assert_eq!(rules.decide(&facts(5432, &labels, None)), forward(25432));
        labels.insert(ENABLE_LABEL.to_string(), "false".to_string());
        assert!(matches!(
            rules.decide(&facts(5432, &labels, None)),
            Decision::Skip { .. }
        ));
    }

    #[test]
    fn label_project_and_host_conditions() {
        let mut labels = BTreeMap::new();
        labels.insert("team".to_string(), "payments".to_string());
        let skip_team = Rules {
            rules: vec![Rule {
                label: Some(("team".into(), Some("payments".into()))),
                ..rule(RuleAction::Skip)
            }],
        };
        assert!(matches!(
            skip_team.decide(&facts(80, &labels, None)),
            Decision::Skip { .. }
        ));
        let none = BTreeMap::new();
        assert_eq!(skip_team.decide(&facts(80, &none, None)), forward(80));
        let only_project = Rules {
            rules: vec![
                Rule {
                    project: Some("app".into()),
                    ..rule(RuleAction::Forward {
                        local_port: None,
                        bind: None,
                    })
                },
                rule(RuleAction::Skip),
            ],
        };
        assert_eq!(
            only_project.decide(&facts(80, &none, Some("app"))),
            forward(80)
        );
        assert!(matches!(
            only_project.decide(&facts(80, &none, Some("other"))),
            Decision::Skip { .. }
        ));
        let other_host = Rules {
            rules: vec![Rule {
                host: Some("elsewhere".into()),
                ..rule(RuleAction::Skip)
            }],
        };
        assert_eq!(other_host.decide(&facts(80, &none, None)), forward(80));
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_port_range("5432"), Ok((5432, 5432)));
        assert_eq!(parse_port_range("8000-8099"), Ok((8000, 8099)));
        for bad in ["", "0", "70000", "9-1", "a-b", "1-"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }
}
