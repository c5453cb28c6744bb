//! The link: a host's usable ControlMaster, as its driver publishes it and
//! every connection waits for it.

use std::path::PathBuf;
use std::sync::Arc;

use fwd_core::EngineRoute;
use fwd_ssh::MasterConfig;
use tokio::sync::watch;

/// A usable ControlMaster of one host.
#[derive(Clone, Debug)]
pub struct Link {
    pub control_path: PathBuf,
    /// Increments with every new master, so waiters can tell old from new.
    pub generation: u64,
    pub ssh: Arc<MasterConfig>,
    /// How connections to the local engine socket reach the engine.
    pub engine: EngineRoute,
    /// The master's forward of the engine socket (used with `StreamLocal`).
    pub engine_forward: PathBuf,
    /// Why the master's channel opens failed, from its log: the only
    /// witness of why a direct route's channel was refused (`None`: the
    /// master's stderr is not followed).
    pub channel_failures: Option<fwd_ssh::ChannelFailures>,
}

/// `None` while the host has no usable master: connections wait on it.
pub type LinkWatch = watch::Receiver<Option<Link>>;
