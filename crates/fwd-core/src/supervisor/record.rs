//! What the machine asks to be logged: stable event names, the wording is
//! the shell's.

use std::time::Duration;

use crate::classify::FailureKind;
use crate::model::ContainerId;
use crate::repeat::Verdict;

/// What to log. Each has a stable event name ([`Record::event`]); the shell
/// picks the level and the wording.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    LinkFailed {
        kind: FailureKind,
        consecutive_failures: u32,
        retry_in: Duration,
        message: String,
    },
    LinkStillFailing {
        kind: FailureKind,
        consecutive_failures: u32,
        repeats: u64,
        message: String,
    },
    LinkUp {
        master_pid: u32,
        failures_before: u64,
    },
    DockerVersion {
        version: String,
    },
    StreamRestarting {
        message: String,
        retry_in: Duration,
    },
    StreamStillRestarting {
        message: String,
        repeats: u64,
    },
    ReconnectRequested,
    ResyncRequested,
    EventSkipped {
        reason: String,
    },
    InspectUnparsable {
        container: ContainerId,
        error: String,
    },
    /// A line of ssh's stderr, the first of its kind in a while.
    SshStderr {
        line: String,
    },
    /// ssh reporting one refused channel ("open failed"): about a container
    /// not listening, not about the link; for debugging only.
    ChannelOpenFailed {
        line: String,
    },
    /// No usable network while the master is up: it is kept for now.
    /// `repeats`: outages not logged since the last line (a flapping link).
    NetworkLost {
        repeats: u64,
    },
    /// A network is back after `after`; the master is being probed.
    NetworkBack {
        after: Duration,
    },
    /// A retry is due but no network is usable: waiting for one.
    WaitingForNetwork,
    /// The engine found first was gone for `gone_for` (at least
    /// `engine_gone_after`), and another engine of the host answered: it
    /// is the host's engine now.
    EngineReplaced {
        from: String,
        from_found_by: &'static str,
        to: String,
        to_found_by: &'static str,
        gone_for: Duration,
    },
}

impl Record {
    /// The link failed: said as its episode's verdict says (the first
    /// failure of a kind, then a summary now and then).
    pub fn link_failed(
        verdict: Verdict,
        kind: FailureKind,
        consecutive_failures: u32,
        retry_in: Duration,
        message: String,
    ) -> Option<Record> {
        match verdict {
            Verdict::Log => Some(Record::LinkFailed {
                kind,
                consecutive_failures,
                retry_in,
                message,
            }),
            Verdict::Summary { repeats } => Some(Record::LinkStillFailing {
                kind,
                consecutive_failures,
                repeats,
                message,
            }),
            Verdict::Suppress => None,
        }
    }

    /// The Docker channels ended on a live master: said likewise.
    pub fn stream_restarting(
        verdict: Verdict,
        retry_in: Duration,
        message: String,
    ) -> Option<Record> {
        match verdict {
            Verdict::Log => Some(Record::StreamRestarting { message, retry_in }),
            Verdict::Summary { repeats } => {
                Some(Record::StreamStillRestarting { message, repeats })
            }
            Verdict::Suppress => None,
        }
    }

    /// No network is usable while the master is up: said likewise.
    pub fn network_lost(verdict: Verdict) -> Option<Record> {
        match verdict {
            Verdict::Log => Some(Record::NetworkLost { repeats: 0 }),
            Verdict::Summary { repeats } => Some(Record::NetworkLost { repeats }),
            Verdict::Suppress => None,
        }
    }

    pub fn event(&self) -> &'static str {
        match self {
            Record::LinkFailed { .. } => "link_failed",
            Record::LinkStillFailing { .. } => "link_still_failing",
            Record::LinkUp { .. } => "link_up",
            Record::DockerVersion { .. } => "docker_version",
            Record::StreamRestarting { .. } => "stream_restarting",
            Record::StreamStillRestarting { .. } => "stream_still_restarting",
            Record::ReconnectRequested => "reconnect_requested",
            Record::ResyncRequested => "resync_requested",
            Record::EventSkipped { .. } => "event_skipped",
            Record::InspectUnparsable { .. } => "inspect_unparsable",
            Record::SshStderr { .. } => "ssh_stderr",
            Record::ChannelOpenFailed { .. } => "ssh_channel_open_failed",
            Record::NetworkLost { .. } => "network_lost",
            Record::NetworkBack { .. } => "network_back",
            Record::WaitingForNetwork => "waiting_for_network",
            Record::EngineReplaced { .. } => "engine_replaced",
        }
    }
}
