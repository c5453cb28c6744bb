//! Where a forward's connections go: the claim it serves now, and what is
//! known of that container's start.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use fwd_core::Claim;

#[derive(Default, Debug)]
pub struct ConnStats {
    pub open: Cell<u64>,
    pub total: Cell<u64>,
}

/// Where a forward's connections go, and since when that container runs
/// (`None` while it is only created): a refusal from a container that
/// started a moment ago is retried, not passed on.
#[derive(Clone, Debug)]
pub struct Target {
    pub claim: Claim,
    pub running_since: Option<Instant>,
    /// The container was seen listening (a probe channel stayed open):
    /// later connections are handed over without probing.
    pub listening: Rc<Cell<bool>>,
}

impl Target {
    pub(super) fn new(claim: Claim, now: Instant) -> Target {
        let running_since = (!claim.pending).then_some(now);
        Target {
            claim,
            running_since,
            listening: Rc::default(),
        }
    }

    /// The next owner: the start time carries over while the same
    /// container keeps running.
    pub(super) fn next(&self, claim: Claim, now: Instant) -> Target {
        let same_run = self.claim.same_owner(&claim) && !self.claim.pending && !claim.pending;
        let running_since = match self.running_since {
            _ if claim.pending => None,
            Some(t) if same_run => Some(t),
            _ => Some(now),
        };
        Target {
            claim,
            running_since,
            listening: if same_run {
                self.listening.clone()
            } else {
                Rc::default()
            },
        }
    }
}
