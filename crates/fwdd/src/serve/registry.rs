//! Every client connection of a forward that fwdd still holds, and where it
//! is: what a binary upgrade hands to the next image, and what it waits for.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::rc::Rc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Accepted, waiting (for a master, a start, a listener): the socket.
    Queued(RawFd),
    /// A mux request carrying the socket is in flight.
    HandingOff,
    /// Handed to the master: the mux connection that keeps the tunnel.
    Tunnel(RawFd),
    /// Served by an `ssh -W` child (which outlives an upgrade on its own).
    Fallback,
}

/// Which listener a connection came from: a forward's port (on every
/// address it binds), or one port of a container's name (its own address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConnKey {
    Port(u16),
    Name(SocketAddrV4),
}

#[derive(Clone, Copy, Debug)]
struct Conn {
    key: ConnKey,
    state: ConnState,
}

/// What a frozen forward hands over: tunnels to keep, clients to serve again.
#[derive(Default, Debug)]
pub struct HeldConns {
    pub tunnels: Vec<RawFd>,
    pub queued: Vec<RawFd>,
}

#[derive(Default)]
pub struct Registry {
    conns: Rc<RefCell<BTreeMap<u64, Conn>>>,
    next: Cell<u64>,
}

/// A connection's entry; dropping it (the connection's task ends) removes it.
pub struct Registered {
    conns: Rc<RefCell<BTreeMap<u64, Conn>>>,
    id: u64,
}

impl Registered {
    pub fn set(&self, state: ConnState) {
        if let Some(c) = self.conns.borrow_mut().get_mut(&self.id) {
            c.state = state;
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.borrow_mut().remove(&self.id);
    }
}

impl Registry {
    /// Called in the same step as the accept (or the adoption): an upgrade
    /// that freezes right after must find the connection, not a task that has
    /// not run yet.
    pub fn register(&self, key: ConnKey, state: ConnState) -> Registered {
        let id = self.next.get();
        self.next.set(id + 1);
        self.conns.borrow_mut().insert(id, Conn { key, state });
        Registered {
            conns: self.conns.clone(),
            id,
        }
    }

    /// Hand-offs whose mux request is in flight: a binary upgrade waits for
    /// them, since the request's mux connection cannot be handed over
    /// mid-request.
    pub fn handing_off(&self) -> usize {
        self.conns
            .borrow()
            .values()
            .filter(|c| c.state == ConnState::HandingOff)
            .count()
    }

    /// Per listener, the tunnels and the waiting clients fwdd holds.
    pub fn held(&self) -> BTreeMap<ConnKey, HeldConns> {
        let mut out: BTreeMap<ConnKey, HeldConns> = BTreeMap::new();
        for c in self.conns.borrow().values() {
            let held = out.entry(c.key).or_default();
            match c.state {
                ConnState::Queued(fd) => held.queued.push(fd),
                ConnState::Tunnel(fd) => held.tunnels.push(fd),
                ConnState::HandingOff | ConnState::Fallback => {}
            }
        }
        out
    }
}
