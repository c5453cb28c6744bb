//! Which way a forward's connections reach its container.
//!
//! The published port goes through Docker's userland proxy (docker-proxy),
//! which accepts before the container listens: a young container's "not
//! yet" then looks like a connection that opens and ends, which fwd can
//! only guess at with a probe channel and a wait. The container's own
//! address on a bridge network of a rootful engine is reachable from the
//! host itself (sshd connects there like docker-proxy does), and there a
//! container that does not listen yet refuses at once: an exact answer in
//! one round trip, and one hop fewer for every byte.
//!
//! [`decide`] picks the route from what the engine said (the container's
//! networks and their drivers, whether it runs rootless) and the host's
//! configuration; [`judge_direct_failure`] reads why a channel on the direct
//! route failed, from the master's log, and says whether to wait for the
//! container or leave the route.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Where the Docker host side of a forward connects, as seen from the host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Remote {
    pub ip: String,
    pub port: u16,
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ip.contains(':') {
            write!(f, "[{}]:{}", self.ip, self.port)
        } else {
            write!(f, "{}:{}", self.ip, self.port)
        }
    }
}

/// One network a container is attached to, as its inspect says, with the
/// network's driver (asked of the engine once per network).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetworkAttachment {
    /// The network's name (`bridge`, `podman`, `proj_default`, `host`, …).
    pub name: String,
    /// `bridge`, `macvlan`, `ipvlan`, `overlay`, `host`, `null`, …;
    /// `None` when the engine did not say.
    pub driver: Option<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// What a host's route decisions depend on besides the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteFacts {
    /// The host's `direct_route` setting (on by default).
    pub direct_allowed: bool,
    /// Whether the engine runs rootless, as it said; `None` until it has.
    pub rootless: Option<bool>,
}

impl RouteFacts {
    /// The published port only, whatever the engine (tests, and hosts
    /// whose configuration says so).
    pub const PUBLISHED_ONLY: RouteFacts = RouteFacts {
        direct_allowed: false,
        rootless: None,
    };
}

/// Where a forward's connections go on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// To the container's own address on `network`, at the container port.
    Direct { to: Remote, network: String },
    /// To the port published on the host.
    Published(PublishedWhy),
}

/// Why a forward takes the published port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishedWhy {
    /// The host's configuration says so (`direct_route = false`).
    Configured,
    /// A rootless engine's containers live in a namespace of their own
    /// (rootlesskit, slirp4netns, pasta): no address the host can reach.
    Rootless,
    /// The engine has not said yet whether it runs rootless.
    EngineNotKnown,
    /// Created, not started: it has no address yet.
    NotStarted,
    /// On no bridge network with an address (host or no network, another
    /// container's, macvlan, ipvlan, overlay, a driver not known).
    NoBridgeAddress,
}

impl Route {
    /// Why this route, for status.
    pub fn why(&self) -> String {
        match self {
            Route::Direct { network, .. } => {
                format!("the container's address on bridge network {network}")
            }
            Route::Published(why) => why.to_string(),
        }
    }

    pub fn is_direct(&self) -> bool {
        matches!(self, Route::Direct { .. })
    }
}

impl std::fmt::Display for PublishedWhy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublishedWhy::Configured => "direct_route is off for this host",
            PublishedWhy::Rootless => {
                "the engine runs rootless: its containers' addresses are not reachable from the host"
            }
            PublishedWhy::EngineNotKnown => "not yet known whether the engine runs rootless",
            PublishedWhy::NotStarted => "the container has not started",
            PublishedWhy::NoBridgeAddress => "the container has no address on a bridge network",
        })
    }
}

/// The route for a container's `container_port`: its address on a bridge
/// network of a rootful engine (the first by name with an IPv4 address,
/// else one with an IPv6 address), or the published port.
pub fn decide(
    networks: &[NetworkAttachment],
    pending: bool,
    container_port: u16,
    facts: RouteFacts,
) -> Route {
    if !facts.direct_allowed {
        return Route::Published(PublishedWhy::Configured);
    }
    match facts.rootless {
        None => return Route::Published(PublishedWhy::EngineNotKnown),
        Some(true) => return Route::Published(PublishedWhy::Rootless),
        Some(false) => {}
    }
    if pending {
        return Route::Published(PublishedWhy::NotStarted);
    }
    let mut bridges: Vec<&NetworkAttachment> = networks
        .iter()
        .filter(|n| n.driver.as_deref() == Some("bridge"))
        .collect();
    bridges.sort_by(|a, b| a.name.cmp(&b.name));
    let usable_v4 = |ip: &Ipv4Addr| !ip.is_unspecified() && !ip.is_loopback();
    let usable_v6 = |ip: &Ipv6Addr| !ip.is_unspecified() && !ip.is_loopback();
    let by_v4 = bridges
        .iter()
        .find_map(|n| n.ipv4.filter(usable_v4).map(|ip| (n, ip.to_string())));
    let chosen = by_v4.or_else(|| {
        bridges
            .iter()
            .find_map(|n| n.ipv6.filter(usable_v6).map(|ip| (n, ip.to_string())))
    });
    match chosen {
        Some((n, ip)) => Route::Direct {
            to: Remote {
                ip,
                port: container_port,
            },
            network: n.name.clone(),
        },
        None => Route::Published(PublishedWhy::NoBridgeAddress),
    }
}

/// What a failed channel open on the direct route means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectFailure {
    /// Refused: nothing listens there yet. Wait for the container.
    NotListening,
    /// The address does not work (no route, a timeout, sshd refusing to
    /// open it, or the master did not say): leave the route for the
    /// published port. The text says why.
    RouteFailed(String),
}

/// ssh's text for a channel the remote host refused to connect.
const REFUSED: &str = "connect failed: Connection refused";

/// Judges a refused channel open on the direct route from the reasons the
/// master logged between the request and its answer (`channel N: open
/// failed: <reason>`, the master's only witness: the mux client is told
/// "Session open refused by peer" whatever happened). Lines carry no
/// address, so concurrent opens mix: only when every reason logged meanwhile
/// is a refusal is it one; anything else leaves the route, which is never
/// wrong, only slower.
pub fn judge_direct_failure(reasons: &[String]) -> DirectFailure {
    if reasons.is_empty() {
        return DirectFailure::RouteFailed(
            "the ssh master did not say why (is its LogLevel below INFO?)".into(),
        );
    }
    match reasons.iter().find(|r| r.as_str() != REFUSED) {
        None => DirectFailure::NotListening,
        Some(other) => DirectFailure::RouteFailed(other.chars().take(200).collect()),
    }
}

/// How long a channel open on the direct route may take before it counts as
/// unanswered ([`judge_direct_silence`]): an address that drops packets (a
/// firewall) leaves sshd's connect waiting for TCP's own timeout, minutes,
/// and every client with it. A healthy open takes one round trip to the
/// host and a connect on its bridge (with one SYN retransmission, 1 s).
pub const DIRECT_OPEN_WITHIN: Duration = Duration::from_secs(3);

/// How often a young container's direct route is tried again while its
/// address does not answer yet: an IPv6 address is tentative for about a
/// second after the container starts, and a SYN lost meanwhile is sent
/// again only after TCP's own second (then three more).
const YOUNG_OPEN_WITHIN: Duration = Duration::from_millis(250);

/// How long a check of the direct route may wait for its channel to open,
/// for a container running for `active_for`: short within the startup
/// `window` (silence there is "not yet", tried again), else
/// [`DIRECT_OPEN_WITHIN`].
pub fn direct_open_within(active_for: Option<Duration>, window: Duration) -> Duration {
    match active_for {
        Some(d) if d < window => YOUNG_OPEN_WITHIN,
        _ => DIRECT_OPEN_WITHIN,
    }
}

/// What a direct open that got no answer within [`direct_open_within`]
/// means, for a container running for `active_for` (`None`: not known):
/// within the startup `window` its address may not answer yet (an IPv6
/// address is tentative until duplicate address detection is done, a
/// bridge port may still be learning), so it is tried again; after it,
/// the route has failed.
pub fn judge_direct_silence(active_for: Option<Duration>, window: Duration) -> DirectFailure {
    match active_for {
        Some(d) if d < window => DirectFailure::NotListening,
        _ => DirectFailure::RouteFailed(format!(
            "the channel did not open within {} s",
            DIRECT_OPEN_WITHIN.as_secs()
        )),
    }
}

const FIRST_DIRECT_RETRY: Duration = Duration::from_millis(2);
const MAX_DIRECT_RETRY: Duration = Duration::from_millis(20);

/// After the `attempt`-th refusal (0-based) on the direct route of a
/// container running for `active_for`: how long to wait before opening
/// again, or `None` outside the startup `window`. A refusal there is exact
/// and costs one round trip, so the schedule starts at a few ms and stays
/// short: a late listener is reached within 20 ms of listening.
pub fn retry_direct_refused(
    active_for: Duration,
    attempt: u32,
    window: Duration,
) -> Option<Duration> {
    crate::startup::doubling_within_window(
        FIRST_DIRECT_RETRY,
        MAX_DIRECT_RETRY,
        active_for,
        attempt,
        window,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Silence from a young container's address is "not yet"; from an
    /// older one's, or one whose start is not known, a failed route.
    #[test]
    fn a_direct_open_without_answer_waits_only_within_the_startup_window() {
        let window = Duration::from_secs(10);
        assert_eq!(
            judge_direct_silence(Some(Duration::from_secs(4)), window),
            DirectFailure::NotListening
        );
        for older in [Some(window), Some(Duration::from_secs(60)), None] {
            assert_eq!(
                judge_direct_silence(older, window),
                DirectFailure::RouteFailed("the channel did not open within 3 s".into()),
                "{older:?}"
            );
        }
        assert_eq!(
            judge_direct_silence(Some(Duration::ZERO), Duration::ZERO),
            DirectFailure::RouteFailed("the channel did not open within 3 s".into()),
            "no window, no waiting"
        );
        // A young one is asked again often; an older one is given time.
        assert_eq!(
            direct_open_within(Some(Duration::from_secs(1)), window),
            Duration::from_millis(250)
        );
        assert_eq!(direct_open_within(Some(window), window), DIRECT_OPEN_WITHIN);
        assert_eq!(direct_open_within(None, window), DIRECT_OPEN_WITHIN);
    }

    const ROOTFUL: RouteFacts = RouteFacts {
        direct_allowed: true,
        rootless: Some(false),
    };

    fn net(
        name: &str,
        driver: Option<&str>,
        v4: Option<&str>,
        v6: Option<&str>,
    ) -> NetworkAttachment {
        NetworkAttachment {
            name: name.into(),
            driver: driver.map(str::to_string),
            ipv4: v4.map(|s| s.parse().expect("v4")),
            ipv6: v6.map(|s| s.parse().expect("v6")),
        }
    }

    fn direct(ip: &str, port: u16, network: &str) -> Route {
        Route::Direct {
            to: Remote {
                ip: ip.into(),
                port,
            },
            network: network.into(),
        }
    }

    #[test]
    fn a_rootful_bridge_address_is_the_route() {
        let nets = [net("bridge", Some("bridge"), Some("172.17.0.2"), None)];
        assert_eq!(
            decide(&nets, false, 80, ROOTFUL),
            direct("172.17.0.2", 80, "bridge")
        );
    }

    #[test]
    fn the_published_port_where_the_host_cannot_reach_the_container() {
        let nets = [net("bridge", Some("bridge"), Some("172.17.0.2"), None)];
        let with = |direct_allowed, rootless| RouteFacts {
            direct_allowed,
            rootless,
        };
        let published = |why| Route::Published(why);
        assert_eq!(
            decide(&nets, false, 80, with(false, Some(false))),
            published(PublishedWhy::Configured)
        );
        assert_eq!(
            decide(&nets, false, 80, with(true, Some(true))),
            published(PublishedWhy::Rootless)
        );
        assert_eq!(
            decide(&nets, false, 80, with(true, None)),
            published(PublishedWhy::EngineNotKnown)
        );
        assert_eq!(
            decide(&nets, true, 80, ROOTFUL),
            published(PublishedWhy::NotStarted)
        );
        for nets in [
            vec![],
            vec![net("host", Some("host"), None, None)],
            vec![net("lan", Some("macvlan"), Some("192.168.1.50"), None)],
            vec![net("l2", Some("ipvlan"), Some("192.168.1.51"), None)],
            vec![net("swarm", Some("overlay"), Some("10.0.1.5"), None)],
            vec![net("mystery", None, Some("172.30.0.2"), None)],
            vec![net("bridge", Some("bridge"), None, None)],
            vec![net("bridge", Some("bridge"), Some("0.0.0.0"), None)],
        ] {
            assert_eq!(
                decide(&nets, false, 80, ROOTFUL),
                published(PublishedWhy::NoBridgeAddress),
                "{nets:?}"
            );
        }
    }

    #[test]
    fn two_networks_choose_the_first_bridge_by_name_and_ipv4_first() {
        let nets = [
            net("zeta", Some("bridge"), Some("172.20.0.2"), None),
            net("lan", Some("macvlan"), Some("192.168.1.50"), None),
            net("alpha", Some("bridge"), Some("172.19.0.2"), None),
        ];
        assert_eq!(
            decide(&nets, false, 5432, ROOTFUL),
            direct("172.19.0.2", 5432, "alpha")
        );
        let nets = [
            net("alpha", Some("bridge"), None, Some("fd00:1::2")),
            net("beta", Some("bridge"), Some("172.19.0.2"), None),
        ];
        assert_eq!(
            decide(&nets, false, 80, ROOTFUL),
            direct("172.19.0.2", 80, "beta")
        );
    }

    #[test]
    fn an_ipv6_only_bridge_is_reached_over_ipv6() {
        let nets = [net("v6", Some("bridge"), None, Some("fd00:1::2"))];
        let route = decide(&nets, false, 80, ROOTFUL);
        assert_eq!(route, direct("fd00:1::2", 80, "v6"));
        let Route::Direct { to, .. } = route else {
            unreachable!()
        };
        assert_eq!(to.to_string(), "[fd00:1::2]:80");
    }

    #[test]
    fn only_refusals_mean_not_listening() {
        let r = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            judge_direct_failure(&r(&[REFUSED])),
            DirectFailure::NotListening
        );
        assert_eq!(
            judge_direct_failure(&r(&[REFUSED, REFUSED])),
            DirectFailure::NotListening
        );
        for other in [
            "connect failed: No route to host",
            "connect failed: Connection timed out",
            "connect failed: open failed",
            "administratively prohibited: open failed",
        ] {
            assert_eq!(
                judge_direct_failure(&r(&[REFUSED, other])),
                DirectFailure::RouteFailed(other.into()),
                "{other}"
            );
        }
        assert!(matches!(
            judge_direct_failure(&[]),
            DirectFailure::RouteFailed(_)
        ));
    }

    #[test]
    fn the_direct_schedule_starts_at_a_few_ms_and_stays_short() {
        let ms = |n| Duration::from_millis(n);
        let window = Duration::from_secs(10);
        let delays: Vec<_> = (0..6)
            .map(|a| retry_direct_refused(ms(0), a, window))
            .collect();
        assert_eq!(
            delays,
            vec![
                Some(ms(2)),
                Some(ms(4)),
                Some(ms(8)),
                Some(ms(16)),
                Some(ms(20)),
                Some(ms(20))
            ]
        );
        assert_eq!(retry_direct_refused(ms(9_995), 9, window), Some(ms(5)));
        assert_eq!(retry_direct_refused(window, 0, window), None);
        assert_eq!(retry_direct_refused(ms(0), 0, Duration::ZERO), None);
    }
}
