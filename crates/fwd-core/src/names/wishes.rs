//! The names a container asks for, and how strongly: its own name first,
//! then compose's `<service>.<project>`, `<service>`, its network aliases.
//! Every name is a remote string; only valid host names come out.

use std::collections::BTreeMap;

use crate::hostsfile::normalise;
use crate::model::Container;

/// How strong a container's claim on a name is (lower wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The container's own name (`docker run --name`).
    ContainerName,
    /// compose's `<service>.<project>`.
    ServiceInProject,
    /// compose's `<service>`.
    Service,
    /// A network alias.
    Alias,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ContainerName => "container name",
            Kind::ServiceInProject => "compose service in its project",
            Kind::Service => "compose service",
            Kind::Alias => "network alias",
        }
    }
}

/// How names are spelled beyond the container's own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spelling {
    /// With several hosts, every name also as `<name>.<host>`.
    pub with_host: bool,
    /// Every name also as `<name>.<suffix>` (and `<name>.<host>.<suffix>`).
    pub suffix: Option<String>,
}

/// What a container asks for: valid names with their kind, and the raw
/// strings that are no host name (shown escaped, cut to 80 characters).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wishes {
    pub names: BTreeMap<String, Kind>,
    pub invalid: Vec<String>,
}

pub fn wishes(c: &Container, host: &str, spelling: &Spelling) -> Wishes {
    let mut bases: Vec<(String, Kind)> = vec![(c.name.clone(), Kind::ContainerName)];
    if let (Some(service), Some(project)) = (c.compose_service(), c.compose_project.as_deref()) {
        bases.push((format!("{service}.{project}"), Kind::ServiceInProject));
    }
    if let Some(service) = c.compose_service() {
        bases.push((service.to_string(), Kind::Service));
    }
    bases.extend(c.aliases.iter().map(|a| (a.clone(), Kind::Alias)));

    let host = normalise(host);
    let suffix = spelling.suffix.as_deref().and_then(normalise);
    let mut out = Wishes::default();
    for (raw, kind) in bases {
        if raw.is_empty() {
            continue;
        }
        // Docker's own names (`frosty_cray`) and compose v1's (`shop_db_1`)
        // have underscores, which no host name may: they answer with hyphens,
        // as compose v2 names its containers (`shop-db-1`).
        let Some(base) = normalise(&raw.replace('_', "-")) else {
            let shown = format!("{:?}", raw.chars().take(80).collect::<String>());
            if !out.invalid.contains(&shown) {
                out.invalid.push(shown);
            }
            continue;
        };
        let mut spelled = vec![base.clone()];
        if let (true, Some(h)) = (spelling.with_host, &host) {
            spelled.push(format!("{base}.{h}"));
        }
        if let Some(s) = &suffix {
            let with_suffix: Vec<String> = spelled.iter().map(|n| format!("{n}.{s}")).collect();
            spelled.extend(with_suffix);
        }
        for name in spelled.into_iter().filter_map(|n| normalise(&n)) {
            let k = out.names.entry(name).or_insert(kind);
            *k = (*k).min(kind);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{ContainerId, COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL};

    fn compose(name: &str, service: &str, project: &str, aliases: &[&str]) -> Container {
        let mut labels = BTreeMap::new();
        labels.insert(COMPOSE_SERVICE_LABEL.to_string(), service.to_string());
        labels.insert(COMPOSE_PROJECT_LABEL.to_string(), project.to_string());
        Container {
            id: ContainerId::parse("0123456789ab").expect("id"),
            name: name.into(),
            compose_project: Some(project.into()),
            started_at_ns: 1,
            pending: false,
            ports: vec![],
            labels,
            networks: vec![],
            exposed_ports: vec![],
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(w: &Wishes) -> Vec<(&str, Kind)> {
        w.names.iter().map(|(n, k)| (n.as_str(), *k)).collect()
    }

    /// compose v2: `shop-db-1`, service `db`, aliases `db` and the
    /// container name again: each name once, at its strongest kind.
    #[test]
    fn a_compose_service_answers_to_its_name_service_and_project() {
        let c = compose("shop-db-1", "db", "shop", &["db", "shop-db-1"]);
        let w = wishes(&c, "h", &Spelling::default());
        assert_eq!(
            names(&w),
            vec![
                ("db", Kind::Service),
                ("db.shop", Kind::ServiceInProject),
                ("shop-db-1", Kind::ContainerName),
            ]
        );
        assert!(w.invalid.is_empty());
    }

    /// compose v1 names containers `shop_db_1`, Docker `frosty_cray`:
    /// they answer with hyphens, as compose v2 names them.
    #[test]
    fn underscores_answer_as_hyphens() {
        let c = compose("shop_db_1", "db", "shop", &[]);
        let w = wishes(&c, "h", &Spelling::default());
        assert_eq!(
            names(&w),
            vec![
                ("db", Kind::Service),
                ("db.shop", Kind::ServiceInProject),
                ("shop-db-1", Kind::ContainerName)
            ]
        );
        assert!(w.invalid.is_empty());
    }

    /// A name that is no host name even so is left out, and said.
    #[test]
    fn a_name_that_is_no_host_name_is_left_out_and_said() {
        let c = compose("web", "db", "shop", &["x.y!"]);
        let w = wishes(&c, "h", &Spelling::default());
        assert_eq!(w.invalid, vec!["\"x.y!\"".to_string()]);
    }

    #[test]
    fn hostile_labels_give_no_name() {
        let c = compose(
            "web",
            "x\n1.2.3.4 github.com",
            "shop",
            &["a b", "-x", "1.2.3.4"],
        );
        let w = wishes(&c, "h", &Spelling::default());
        assert_eq!(names(&w), vec![("web", Kind::ContainerName)]);
        assert_eq!(w.invalid.len(), 5, "{:?}", w.invalid);
        assert!(w.invalid.iter().all(|s| !s.contains('\n')));
    }

    #[test]
    fn several_hosts_and_a_suffix_spell_each_name_more_ways() {
        let c = compose("Web", "web", "shop", &[]);
        let spelling = Spelling {
            with_host: true,
            suffix: Some("fwd".into()),
        };
        let w = wishes(&c, "ci1", &spelling);
        let got: Vec<&str> = w.names.keys().map(String::as_str).collect();
        assert_eq!(
            got,
            vec![
                "web",
                "web.ci1",
                "web.ci1.fwd",
                "web.fwd",
                "web.shop",
                "web.shop.ci1",
                "web.shop.ci1.fwd",
                "web.shop.fwd",
            ]
        );
        assert_eq!(w.names["web"], Kind::ContainerName);
    }
}
