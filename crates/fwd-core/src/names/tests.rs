//! The names planner against compose-shaped containers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::*;
use crate::model::{PortBinding, COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL};
use crate::route::{NetworkAttachment, RouteFacts};

const ROOTFUL: RouteFacts = RouteFacts {
    direct_allowed: true,
    rootless: Some(false),
};

fn container(n: u8, name: &str, started: i64, ip: &str) -> Container {
    Container {
        id: ContainerId::parse(&format!("{n:012x}")).expect("id"),
        name: name.into(),
        compose_project: None,
        started_at_ns: started,
        pending: false,
        ports: vec![],
        labels: BTreeMap::new(),
        networks: vec![NetworkAttachment {
            name: "shop_default".into(),
            driver: Some("bridge".into()),
            ipv4: ip.parse().ok(),
            ipv6: None,
        }],
        exposed_ports: vec![],
        aliases: vec![],
    }
}

fn service(mut c: Container, service: &str, project: &str, exposed: &[u16]) -> Container {
    c.labels
        .insert(COMPOSE_SERVICE_LABEL.into(), service.into());
    c.labels
        .insert(COMPOSE_PROJECT_LABEL.into(), project.into());
    c.compose_project = Some(project.into());
    c.exposed_ports = exposed.to_vec();
    c
}

const ROOTLESS: RouteFacts = RouteFacts {
    direct_allowed: true,
    rootless: Some(true),
};

fn view<'a>(host: &'a HostKey, containers: &'a [Container], route: RouteFacts) -> HostView<'a> {
    HostView {
        host,
        max_forwards: None,
        forwards_per_container: None,
        route,
        containers: containers.iter().collect(),
    }
}

/// compose's `shop` project: `db` declares 5432, started first.
fn shop_db() -> Container {
    service(
        container(1, "shop-db-1", 10, "172.18.0.2"),
        "db",
        "shop",
        &[5432],
    )
}

/// compose's `shop` project: `web` declares `port`.
fn shop_web(port: u16) -> Container {
    service(
        container(2, "shop-web-1", 20, "172.18.0.3"),
        "web",
        "shop",
        &[port],
    )
}

fn settings() -> NamesSettings {
    NamesSettings {
        range: AddressRange::default(),
        spelling: Spelling::default(),
        ports_per_container: 64,
    }
}

fn plan_of(
    book: &mut NameBook,
    host: &str,
    containers: &[Container],
    reserved: &Reserved,
) -> NamesPlan {
    let key = HostKey::from(host);
    let views = [view(&key, containers, ROOTFUL)];
    book.plan(&settings(), &views, &Rules { rules: vec![] }, reserved)
}

fn named<'a>(plan: &'a NamesPlan, container_name: &str) -> &'a Named {
    plan.named
        .iter()
        .find(|n| n.container_name == container_name)
        .unwrap_or_else(|| panic!("{container_name} not named: {plan:?}"))
}

/// The compose file of the issue: `db` publishes nothing, yet answers at
/// `db:5432` and `db.shop:5432`, over the direct route to its address.
#[test]
fn an_unpublished_service_answers_by_its_names_on_its_own_address() {
    let mut book = NameBook::new(AddressRange::default());
    let db = shop_db();
    let web = shop_web(8080);
    let plan = plan_of(&mut book, "h", &[db, web], &Reserved::default());
    let db = named(&plan, "shop-db-1");
    assert_eq!(db.names, vec!["db", "db.shop", "shop-db-1"]);
    assert_eq!(db.ports().collect::<Vec<_>>(), vec![5432]);
    let claim = &db.claims[0];
    assert_eq!(claim.bind, vec![IpAddr::V4(db.address)]);
    assert_eq!(claim.local_port, 5432);
    assert_eq!(claim.connect_to().to_string(), "172.18.0.2:5432");
    assert!(AddressRange::default().contains(db.address));
    let web = named(&plan, "shop-web-1");
    assert_ne!(web.address, db.address);
    assert_eq!(plan.claims().len(), 2);
    let entries = plan.entries();
    assert_eq!(entries.len(), 2);
    assert!(
        plan.refused.is_empty() && plan.unnamed.is_empty(),
        "{plan:?}"
    );
}

/// Two jobs' postgres, both on 5432, nothing published: each its own
/// address and listener.
#[test]
fn the_same_unpublished_port_twice_is_two_listeners() {
    let mut book = NameBook::new(AddressRange::default());
    let a = service(container(1, "a-db-1", 10, "172.18.0.2"), "db", "a", &[5432]);
    let b = service(container(2, "b-db-1", 20, "172.19.0.2"), "db", "b", &[5432]);
    let plan = plan_of(&mut book, "h", &[a, b], &Reserved::default());
    let claims = plan.claims();
    assert_eq!(claims.len(), 2);
    assert!(claims.keys().all(|k| k.port() == 5432));
    // `db` goes to the one started first; each keeps `db.<project>`.
    assert_eq!(named(&plan, "a-db-1").names, vec!["a-db-1", "db", "db.a"]);
    assert_eq!(named(&plan, "b-db-1").names, vec!["b-db-1", "db.b"]);
    assert_eq!(plan.refused.len(), 1);
    let lost = &plan.refused[0];
    assert_eq!(
        (lost.container_name.as_str(), lost.name.as_str()),
        ("b-db-1", "db")
    );
    assert!(lost.why.contains("a-db-1"), "{}", lost.why);
    // The same answer whichever order the engine listed them in.
    let mut again = NameBook::new(AddressRange::default());
    let a = service(container(1, "a-db-1", 10, "172.18.0.2"), "db", "a", &[5432]);
    let b = service(container(2, "b-db-1", 20, "172.19.0.2"), "db", "b", &[5432]);
    let swapped = plan_of(&mut again, "h", &[b, a], &Reserved::default());
    assert_eq!(swapped.named, plan.named);
}

/// A container's own name beats another's alias or service, whatever
/// their start order.
#[test]
fn a_container_name_beats_an_alias() {
    let mut book = NameBook::new(AddressRange::default());
    let mut aliased = container(1, "x", 10, "172.18.0.2");
    aliased.aliases = vec!["cache".into()];
    let own = container(2, "cache", 20, "172.18.0.3");
    let plan = plan_of(&mut book, "h", &[aliased, own], &Reserved::default());
    assert_eq!(named(&plan, "cache").names, vec!["cache"]);
    assert_eq!(named(&plan, "x").names, vec!["x"]);
}

#[test]
fn system_names_localhost_and_the_runners_name_are_never_shadowed() {
    let mut book = NameBook::new(AddressRange::default());
    let reserved = Reserved::new(
        ["GitHub.com".to_string()].into_iter().collect(),
        Some("runner-7.example"),
    );
    let mut c = container(1, "github.com", 10, "172.18.0.2");
    c.aliases = vec!["localhost".into(), "runner-7".into(), "ok".into()];
    let plan = plan_of(&mut book, "h", &[c], &reserved);
    assert_eq!(named(&plan, "github.com").names, vec!["ok"]);
    let refused: Vec<&str> = plan.refused.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(refused, vec!["github.com", "localhost", "runner-7"]);
    assert!(plan
        .refused
        .iter()
        .all(|r| r.why.starts_with("never shadowed")));
}

/// The hostile label: no line of a hosts file comes from it.
#[test]
fn a_hostile_compose_label_writes_nothing() {
    let mut book = NameBook::new(AddressRange::default());
    let c = service(
        container(1, "web", 10, "172.18.0.2"),
        "x\n1.2.3.4 github.com",
        "shop",
        &[80],
    );
    let plan = plan_of(&mut book, "h", &[c], &Reserved::default());
    let entries = plan.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].names, vec!["web"]);
    let block = crate::hostsfile::render_block(&entries);
    assert!(!block.contains("github.com"), "{block}");
    assert_eq!(
        plan.news.len(),
        2,
        "each invalid name said: {:?}",
        plan.news
    );
    assert!(plan.news.iter().all(|n| !n.text.contains('\n')));
}

/// A rootless engine's containers have no address the host reaches: no
/// name, and why.
#[test]
fn a_rootless_engines_containers_are_unnamed_with_the_reason() {
    let mut book = NameBook::new(AddressRange::default());
    let key = HostKey::from("h");
    let c = container(1, "db", 10, "172.18.0.2");
    let views = [view(&key, std::slice::from_ref(&c), ROOTLESS)];
    let plan = book.plan(
        &settings(),
        &views,
        &Rules { rules: vec![] },
        &Reserved::default(),
    );
    assert!(plan.named.is_empty());
    assert_eq!(plan.unnamed.len(), 1);
    assert!(
        plan.unnamed[0].why.contains("rootless"),
        "{:?}",
        plan.unnamed
    );
}

/// `docker compose up` re-creates `db`: a new ID, the same address, so a
/// connection string (and a resolver's cache) stays right.
#[test]
fn a_recreated_service_keeps_its_address_and_a_removed_one_lets_it_go() {
    let mut book = NameBook::new(AddressRange::default());
    let db = shop_db();
    let web = shop_web(80);
    let first = plan_of(&mut book, "h", &[db, web.clone()], &Reserved::default());
    let address = named(&first, "shop-db-1").address;

    let gone = plan_of(
        &mut book,
        "h",
        std::slice::from_ref(&web),
        &Reserved::default(),
    );
    assert_eq!(gone.named.len(), 1);
    assert!(!gone.claims().keys().any(|k| *k.ip() == address));

    let recreated = service(
        container(3, "shop-db-1", 30, "172.18.0.4"),
        "db",
        "shop",
        &[5432],
    );
    let back = plan_of(&mut book, "h", &[recreated, web], &Reserved::default());
    assert_eq!(named(&back, "shop-db-1").address, address);
    assert_eq!(
        named(&back, "shop-db-1").claims[0].connect_to().to_string(),
        "172.18.0.4:5432"
    );
}

/// A port the container also publishes falls back to the published port
/// if its direct route fails, as forwards do.
#[test]
fn a_published_port_is_the_fallback() {
    let mut book = NameBook::new(AddressRange::default());
    let mut c = container(1, "web", 10, "172.18.0.2");
    c.ports = vec![PortBinding {
        container_port: 80,
        protocol: Protocol::Tcp,
        host_ip: "0.0.0.0".into(),
        host_port: 8080,
    }];
    c.exposed_ports = vec![80, 9000];
    let plan = plan_of(&mut book, "h", &[c], &Reserved::default());
    let n = named(&plan, "web");
    assert_eq!(n.claims[0].remote.to_string(), "127.0.0.1:8080");
    assert_eq!(n.claims[1].remote.to_string(), "172.18.0.2:9000");
}

/// A notice is said once while it holds; again if it comes back.
#[test]
fn notices_are_said_once() {
    let mut book = NameBook::new(AddressRange::default());
    let c = container(1, "bad!name", 10, "172.18.0.2");
    let first = plan_of(
        &mut book,
        "h",
        std::slice::from_ref(&c),
        &Reserved::default(),
    );
    assert_eq!(first.news.len(), 1);
    assert_eq!(first.refused.len(), 1);
    let second = plan_of(
        &mut book,
        "h",
        std::slice::from_ref(&c),
        &Reserved::default(),
    );
    assert!(second.news.is_empty());
    assert_eq!(second.refused.len(), 1, "still listed");
    plan_of(&mut book, "h", &[], &Reserved::default());
    let back = plan_of(
        &mut book,
        "h",
        std::slice::from_ref(&c),
        &Reserved::default(),
    );
    assert_eq!(back.news.len(), 1);
}

/// Several hosts: every name also as `<name>.<host>`, and the same
/// container name on two hosts goes to the one started first.
#[test]
fn several_hosts_qualify_names() {
    let mut book = NameBook::new(AddressRange::default());
    let (h1, h2) = (HostKey::from("ci1"), HostKey::from("ci2"));
    let a = container(1, "web", 10, "172.18.0.2");
    let b = container(2, "web", 20, "172.18.0.2");
    let views = [
        view(&h1, std::slice::from_ref(&a), ROOTFUL),
        view(&h2, std::slice::from_ref(&b), ROOTFUL),
    ];
    let mut s = settings();
    s.spelling.with_host = true;
    let plan = book.plan(&s, &views, &Rules { rules: vec![] }, &Reserved::default());
    let by_host = |h: &str| {
        plan.named
            .iter()
            .find(|n| &*n.host == h)
            .map(|n| n.names.clone())
            .unwrap_or_default()
    };
    assert_eq!(by_host("ci1"), vec!["web", "web.ci1"]);
    assert_eq!(by_host("ci2"), vec!["web.ci2"]);
    assert_ne!(plan.named[0].address, plan.named[1].address);
    let _ = Ipv4Addr::LOCALHOST;
}
