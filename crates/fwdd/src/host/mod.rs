//! The Docker hosts: for each, the state the daemon sees ([`Host`]) and the
//! driver task that runs its supervisor ([`start`]).
//!
//! Every remote command goes through the host's master socket: nothing here
//! can open a second SSH connection.

mod driver;
mod handover;
mod log;
mod ops;
mod state;

pub use driver::{sleep_until, start, Outputs};
pub use handover::HostTakeover;
pub use state::Host;
