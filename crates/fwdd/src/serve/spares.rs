//! Spare mux connections: per host, a few connections to the master already
//! past their hello, so an accepted client costs the master a single request.
//! `ssh -L` opens its channel straight from accept; connect + hello would add
//! ~0.2 ms (~20 %) to every connection's setup.

use std::cell::RefCell;
use std::collections::BTreeMap;

use fwd_core::HostKey;
use fwd_ssh::{MuxClient, MuxError};

use super::link::Link;

/// Spare mux connections kept per host: enough for the hand-offs a few
/// concurrent connect-per-request clients start at once (pgbench -C with 4
/// clients found the one spare taken and paid connect + hello on three of
/// four connections). Idle, each is one socket pair with the master.
const SPARES_PER_HOST: usize = 4;

#[derive(Default)]
pub struct Spares {
    pools: RefCell<BTreeMap<HostKey, Pool>>,
}

#[derive(Default)]
struct Pool {
    /// The master generation the connections talk to.
    generation: u64,
    ready: Vec<Spare>,
}

impl Pool {
    /// The spares of master `generation`; those of an earlier one are dropped.
    fn of(&mut self, generation: u64) -> &mut Vec<Spare> {
        if self.generation != generation {
            self.ready.clear();
            self.generation = generation;
        }
        &mut self.ready
    }
}

enum Spare {
    /// Made by `refill`: hello sent, the master's reply not read yet.
    Pending(fwd_ssh::PendingMux),
    /// Used by an alive check and put back.
    Client(MuxClient),
}

impl Spare {
    fn into_client(self) -> Result<MuxClient, MuxError> {
        match self {
            Spare::Pending(p) => p.into_client(),
            Spare::Client(c) => Ok(c),
        }
    }
}

impl Spares {
    /// A host joins: from now on its spares are kept (see [`Self::refill`]).
    pub fn add_host(&self, host: &HostKey) {
        self.pools.borrow_mut().entry(host.clone()).or_default();
    }

    /// The host left the configuration: its spares go too.
    pub fn forget_host(&self, host: &HostKey) {
        self.pools.borrow_mut().remove(host);
    }

    /// A mux client for `link`: a spare if one belongs to this very master,
    /// else a fresh connection. The caller calls [`Self::refill`] once its
    /// request is answered.
    pub async fn client(&self, host: &HostKey, link: &Link) -> Result<MuxClient, MuxError> {
        let spare = self
            .pools
            .borrow_mut()
            .get_mut(host)
            .and_then(|pool| pool.of(link.generation).pop());
        match spare {
            Some(spare) => spare.into_client(),
            None => MuxClient::connect(&link.control_path).await,
        }
    }

    /// Keeps a client whose request was answered (an alive check) as a spare.
    pub fn put_back(&self, host: &HostKey, link: &Link, client: MuxClient) {
        let mut pools = self.pools.borrow_mut();
        if let Some(pool) = pools.get_mut(host) {
            let ready = pool.of(link.generation);
            if ready.len() < SPARES_PER_HOST {
                ready.push(Spare::Client(client));
            }
        }
    }

    /// Prepares the next spares. Called after a request is answered, not
    /// before it is sent: a refill's connect and hello keep fwdd on the CPU
    /// the master was just woken on, and the master then waited for it.
    pub fn refill(&self, host: &HostKey, link: &Link) {
        let mut pools = self.pools.borrow_mut();
        // Only for a host still configured.
        let Some(pool) = pools.get_mut(host) else {
            return;
        };
        let ready = pool.of(link.generation);
        // No wait and no task: each connect and hello is queued at once, or
        // (a master whose listen queue is full) the next request makes its
        // own connection.
        while ready.len() < SPARES_PER_HOST {
            match fwd_ssh::PendingMux::connect_now(&link.control_path) {
                Ok(pending) => ready.push(Spare::Pending(pending)),
                Err(_) => break,
            }
        }
    }
}
