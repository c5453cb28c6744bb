//! UDP over the host's one SSH connection (issue 33), the pure parts: the
//! frames that carry datagrams over a stream ([`frame`]) and the runner's
//! sessions, one per client address, with idle expiry and bounded queues
//! ([`sessions`]), which published UDP ports are forwarded ([`plan`]), and
//! how the relay gets onto a host ([`deploy`]).

pub mod deploy;
pub mod frame;
pub mod plan;
pub mod sessions;

pub use deploy::Check;
pub use frame::{Decoder, Frame, FrameError, SessionId, DATAGRAM_MAX, HELLO};
pub use plan::{plan, UdpClaim, UdpPlan};
pub use sessions::{Opened, Queue, SessionSettings, Sessions};
