//! `fwd-udp-relay`: started by fwdd on a Docker host over its ssh master
//! (one session), it relays the datagrams framed on its stdin to UDP ports
//! of the host and frames the replies on its stdout (see
//! `fwd_core::udp::frame`). It lives exactly as long as that session: the
//! end of stdin ends it. Nothing else is read: no arguments, no
//! environment, no files.

use std::process::ExitCode;

mod relay;

fn main() -> ExitCode {
    match relay::run_stdio() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fwd-udp-relay: {e}");
            ExitCode::FAILURE
        }
    }
}
