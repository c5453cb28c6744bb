//! What a hostile neighbour does on a shared runner, one test each: every
//! other party keeps being served, status answers, resources come back and
//! the log says it once (issue "No neighbour takes fwd down").

#[macro_use]
mod common;

#[path = "hostile/fds.rs"]
mod fds;
#[path = "hostile/metrics.rs"]
mod metrics;
#[path = "hostile/socket.rs"]
mod socket;
