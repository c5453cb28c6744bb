//! Docker, reached over the SSH ControlMaster.
//!
//! [`api`] speaks the Engine API over one byte stream (a remote
//! `docker system dial-stdio` session); [`parse`] turns Docker's JSON into
//! fwd-core's model. No ssh here: the daemon hands this crate a stream.

pub mod api;
pub mod parse;

pub use api::{
    connect, ApiError, DockerApi, EventStream, NetworkDrivers, StreamItem, DIAL_STDIO_COMMAND,
};
pub use parse::{ContainerEvent, EventAction, ParseError};
