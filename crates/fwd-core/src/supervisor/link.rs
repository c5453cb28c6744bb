//! The link to the host: its master (a new generation each time one
//! answers), whether connections are handed to it (published, and on which
//! engine route), and why the last link that was up ended, for the
//! reconnect counts status keeps by reason.

use std::time::Duration;

use super::io::EngineRoute;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    master_pid: Option<u32>,
    generation: u64,
    /// Generation and engine route the link is published with.
    published: Option<(u64, EngineRoute)>,
    ever_connected: bool,
    /// What ended the link that was up last, until the next one is up.
    lost_reason: Option<&'static str>,
    /// The round trip of the channels' first request on this master, the
    /// first figure status shows for the probe.
    setup_rtt: Option<Duration>,
}

impl Link {
    /// The master the upgraded image handed over: connected already.
    pub fn adopted(master_pid: u32) -> Self {
        Link {
            master_pid: Some(master_pid),
            generation: 1,
            ever_connected: true,
            ..Link::default()
        }
    }

    /// A new master answers.
    pub fn master_ready(&mut self, pid: u32) {
        self.master_pid = Some(pid);
        self.generation += 1;
    }

    /// The channels' first request answered after `rtt`.
    pub fn setup_answered(&mut self, rtt: Duration) {
        self.setup_rtt = Some(rtt);
    }

    pub fn setup_rtt(&self) -> Option<Duration> {
        self.setup_rtt
    }

    pub fn master_pid(&self) -> Option<u32> {
        self.master_pid
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Hand connections to this generation's master on `route`: true when
    /// that is news to the shell.
    pub fn publish(&mut self, route: EngineRoute) -> bool {
        let link = (self.generation, route);
        if self.published == Some(link) {
            return false;
        }
        self.published = Some(link);
        true
    }

    /// Connections are no longer handed over: true when they were.
    pub fn withdraw(&mut self) -> bool {
        self.published.take().is_some()
    }

    /// The master is to go: true when there was one.
    pub fn end_master(&mut self) -> bool {
        self.master_pid.take().is_some()
    }

    /// The link that was up ended for `reason` (the first reason since it
    /// was up is the one kept).
    pub fn lost(&mut self, reason: &'static str) {
        if self.ever_connected {
            self.lost_reason.get_or_insert(reason);
        }
    }

    /// Connected: when a link was up before, why it ended ("unknown" if
    /// nothing said).
    pub fn connected(&mut self) -> Option<&'static str> {
        let again = self
            .ever_connected
            .then(|| self.lost_reason.take().unwrap_or("unknown"));
        self.ever_connected = true;
        again
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_is_counted_with_the_first_reason_the_old_link_ended() {
        let mut l = Link::default();
        l.lost("timeout");
        l.master_ready(10);
        assert_eq!(l.connected(), None, "the first link is no reconnect");
        l.lost("master_died");
        l.lost("timeout");
        assert!(l.end_master());
        assert!(!l.end_master());
        l.master_ready(11);
        assert_eq!(l.generation(), 2);
        assert_eq!(l.connected(), Some("master_died"));
        assert_eq!(l.connected(), Some("unknown"));
    }

    #[test]
    fn publishing_is_news_once_per_generation_and_route() {
        let mut l = Link::adopted(7);
        assert_eq!(l.master_pid(), Some(7));
        assert!(l.publish(EngineRoute::StreamLocal));
        assert!(!l.publish(EngineRoute::StreamLocal));
        assert!(l.publish(EngineRoute::DialStdio));
        l.master_ready(8);
        assert!(l.publish(EngineRoute::DialStdio));
        assert!(l.withdraw());
        assert!(!l.withdraw());
    }
}
