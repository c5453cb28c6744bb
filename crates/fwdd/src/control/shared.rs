//! What the control server's parts share: its limits, and the state every
//! connection task of one server sees.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use crate::handler::ControlHandler;
use crate::private_socket::RefusalLog;

/// Limits of the control server.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Time allowed to receive one complete request line, and to write one response.
    pub idle_timeout: Duration,
    /// Connections served concurrently; more are refused with an error response.
    pub max_connections: usize,
    /// Longest accepted request line in bytes, excluding the newline.
    pub max_line: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            idle_timeout: Duration::from_secs(10),
            max_connections: 64,
            max_line: fwd_proto::MAX_LINE,
        }
    }
}

/// What every connection task of one server shares.
pub(super) struct Shared {
    pub(super) handler: Box<dyn ControlHandler>,
    pub(super) config: ControlConfig,
    pub(super) euid: u32,
    pub(super) active: Cell<usize>,
    pub(super) refusals: RefCell<RefusalLog>,
}
