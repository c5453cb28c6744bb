//! Native client of OpenSSH's control-socket ("mux") protocol, version 4.
//!
//! Wire format (openssh-portable `PROTOCOL.mux`, `mux.c`): every message is
//! `u32 length | payload`; strings are `u32 length | bytes`. Both sides start with
//! `MUX_MSG_HELLO | u32 version`; every later request is `u32 type | u32 request_id | …`.
//!
//! File descriptors are passed after a request as separate one-byte messages, each
//! carrying one fd in an `SCM_RIGHTS` control message (that is what the master's
//! `mm_receive_fd` expects).
//!
//! Every async fn here may be cancelled (dropped) at any await point; callers are
//! expected to wrap them in timeouts. A [`MuxClient`] whose request was cancelled
//! half-way refuses further requests ([`MuxError::Desynchronized`]); open a new one.
//!
//! The module by job:
//! * [`codec`]: message layouts, encoding and decoding, framing (pure but for
//!   reading one frame from a stream);
//! * [`fds`]: a request and its descriptors onto the socket, in one call
//!   where the platform allows;
//! * [`client`]: connections to a master and what they can ask of it.

mod client;
mod codec;
mod fds;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod fuzz_corpus;
#[cfg(test)]
mod tests;

pub use client::{spawn_remote, MuxClient, PendingMux, RemoteProcess, Session, StdioForward};
pub use codec::{
    MuxError, MAX_LOCAL_SOCKET_PATH_LEN, MAX_MESSAGE_LEN, MAX_REMOTE_SOCKET_PATH_LEN,
    MUX_C_ALIVE_CHECK, MUX_C_CLOSE_FWD, MUX_C_NEW_SESSION, MUX_C_NEW_STDIO_FWD, MUX_C_OPEN_FWD,
    MUX_C_TERMINATE, MUX_MSG_HELLO, MUX_S_ALIVE, MUX_S_EXIT_MESSAGE, MUX_S_FAILURE, MUX_S_OK,
    MUX_S_PERMISSION_DENIED, MUX_S_SESSION_OPENED, MUX_S_TTY_ALLOC_FAIL, MUX_VERSION,
};
