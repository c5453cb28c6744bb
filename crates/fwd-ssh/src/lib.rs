//! `fwd-ssh`: the OpenSSH side of fwd.
//!
//! * [`mux`] — a native client of OpenSSH's control-socket ("mux") protocol, version 4
//!   (see `PROTOCOL.mux` / `mux.c` in openssh-portable): alive check, terminate, stdio
//!   forwards (`MUX_C_NEW_STDIO_FWD`, the socket fd handed over with `SCM_RIGHTS`),
//!   sessions (`MUX_C_NEW_SESSION`) and master-owned Unix-socket path forwards
//!   (`MUX_C_OPEN_FWD` / `MUX_C_CLOSE_FWD`, local path to remote path).
//! * [`master`] — the ControlMaster process: argument building, spawning as a direct
//!   child, readiness, stale control sockets, shutdown, and the `ssh -W` fallback.
//! * [`stderr`] — the master's stderr: lines for fwdd's log, and why channels failed.

pub mod master;
pub mod mux;
pub mod stderr;

pub use master::{
    check_control_path_len, clear_stale_control_socket, fallback_stdio_forward_command,
    master_args, parse_host_url, validate_destination, Master, MasterConfig, MasterError,
    SocketState, MAX_CONTROL_PATH_LEN,
};
pub use mux::{
    spawn_remote, MuxClient, MuxError, PendingMux, RemoteProcess, Session, StdioForward,
    MAX_LOCAL_SOCKET_PATH_LEN, MAX_REMOTE_SOCKET_PATH_LEN,
};
pub use stderr::{open_failure_reason, ChannelFailures, FailureMark};
