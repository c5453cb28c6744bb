//! UDP over the host's one SSH connection (issue 33), the pure parts: the
//! frames that carry datagrams over a stream ([`frame`]) and the runner's
//! sessions, one per client address, with idle expiry and bounded queues
//! ([`sessions`]). Not wired into fwdd yet: the relay at the far end and
//! the daemon's side come next.

pub mod frame;
pub mod sessions;

pub use frame::{Decoder, Frame, FrameError, SessionId, DATAGRAM_MAX, HELLO};
pub use sessions::{Opened, Queue, SessionSettings, Sessions};
