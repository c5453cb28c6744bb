//! The machine's log records as `tracing` events: stable event names
//! (`Record::event`) and fields, so log-based alerts can match them.

use fwd_core::Record;

/// The machine's log records, with their stable event names and fields,
/// by what they are about.
pub fn log_record(host: &str, r: Record) {
    let event = r.event();
    match r {
        r @ (Record::LinkFailed { .. }
        | Record::LinkStillFailing { .. }
        | Record::LinkUp { .. }
        | Record::ReconnectRequested
        | Record::NetworkLost { .. }
        | Record::NetworkBack { .. }
        | Record::WaitingForNetwork) => log_link(host, event, r),
        r @ (Record::StreamRestarting { .. }
        | Record::StreamStillRestarting { .. }
        | Record::ResyncRequested
        | Record::EventSkipped { .. }) => log_stream(host, event, r),
        r @ (Record::DockerVersion { .. }
        | Record::InspectUnparsable { .. }
        | Record::EngineReplaced { .. }) => log_engine(host, event, r),
        r @ (Record::SshStderr { .. } | Record::ChannelOpenFailed { .. }) => {
            log_ssh(host, event, r)
        }
    }
}

/// Records about the master and the network it needs: failures, retries, the link up.
fn log_link(host: &str, event: &'static str, r: Record) {
    match r {
        Record::LinkFailed {
            kind,
            consecutive_failures,
            retry_in,
            message,
        } => tracing::warn!(
            event,
            host,
            kind = kind.as_str(),
            class = kind.class().as_str(),
            consecutive_failures,
            retry_in_ms = retry_in.as_millis() as u64,
            error = %message,
            hint = kind.hint(),
            "link to {host} failed: {message}"
        ),
        Record::LinkStillFailing {
            kind,
            consecutive_failures,
            repeats,
            message,
        } => tracing::warn!(
            event,
            host,
            kind = kind.as_str(),
            consecutive_failures,
            repeats,
            error = %message,
            "link to {host} still failing ({repeats} more failures): {message}"
        ),
        Record::LinkUp {
            master_pid,
            failures_before,
        } => tracing::info!(
            event,
            host,
            master_pid,
            failures_before,
            "connected to {host} (ssh master pid {master_pid})"
        ),
        Record::ReconnectRequested => {
            tracing::info!(event, host, "replacing the master of {host} on request")
        }
        Record::NetworkLost { repeats } => tracing::info!(
            event,
            host,
            repeats,
            "no usable network; keeping the connection to {host} in case the link returns"
        ),
        Record::NetworkBack { after } => tracing::debug!(
            event,
            host,
            after_ms = after.as_millis() as u64,
            "a network is back after {after:?}; probing {host}"
        ),
        Record::WaitingForNetwork => tracing::debug!(
            event,
            host,
            "no usable network link; waiting for one before retrying {host}"
        ),
        // `log_record` hands every other record to its own group.
        _ => {}
    }
}

/// Records about the Docker channels: the event stream ending, resyncs, event lines skipped.
fn log_stream(host: &str, event: &'static str, r: Record) {
    match r {
        Record::StreamRestarting { message, retry_in } => tracing::info!(
            event,
            host,
            error = %message,
            retry_in_ms = retry_in.as_millis() as u64,
            "docker channel to {host} ended ({message}); reopening"
        ),
        Record::StreamStillRestarting { message, repeats } => tracing::info!(
            event,
            host,
            error = %message,
            repeats,
            "docker channel to {host} keeps ending ({repeats} more times): {message}"
        ),
        Record::ResyncRequested => {
            tracing::info!(event, host, "resyncing {host} on request")
        }
        Record::EventSkipped { reason } => tracing::warn!(
            event,
            host,
            reason = %reason,
            "skipped an event line from {host}: {reason}"
        ),
        // `log_record` hands every other record to its own group.
        _ => {}
    }
}

/// Records about the engine: its version, containers it describes oddly, its replacement.
fn log_engine(host: &str, event: &'static str, r: Record) {
    match r {
        Record::DockerVersion { version } => {
            tracing::info!(event, host, version = %version, "Docker engine on {host}: {version}")
        }
        Record::InspectUnparsable { container, error } => tracing::warn!(
            event,
            host,
            container_id = %container,
            error = %error,
            "skipping container {container}: {error}"
        ),
        Record::EngineReplaced {
            from,
            from_found_by,
            to,
            to_found_by,
            gone_for,
        } => tracing::warn!(
            event,
            host,
            from = %from,
            from_found_by,
            to = %to,
            to_found_by,
            gone_for_ms = gone_for.as_millis() as u64,
            "the engine of {host} at {from} ({from_found_by}) was gone for {}s: now using the \
             one at {to} ({to_found_by}); containers of the first engine are no longer \
             forwarded (engine_gone_after sets how long fwd waits)",
            gone_for.as_secs()
        ),
        // `log_record` hands every other record to its own group.
        _ => {}
    }
}

/// Records about what ssh itself said.
fn log_ssh(host: &str, event: &'static str, r: Record) {
    match r {
        Record::SshStderr { line } => {
            tracing::info!(event, host, line = %line, "ssh: {line}")
        }
        Record::ChannelOpenFailed { line } => {
            tracing::debug!(event, host, line = %line, "ssh: {line}")
        }
        // `log_record` hands every other record to its own group.
        _ => {}
    }
}
