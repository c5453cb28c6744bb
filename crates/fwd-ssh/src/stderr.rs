//! The master's stderr: every line goes to fwdd (which decides what to log),
//! the last few are kept for error reports, and the reasons of channels the
//! master could not open are kept to be read back.
//!
//! Those reasons are the only witness of *why* a channel failed: the mux
//! client is told "Session open refused by peer" whatever happened, while
//! the master logs `channel N: open failed: connect failed: Connection
//! refused` (or `No route to host`, `administratively prohibited: …`) at
//! INFO. It writes that line before it answers the mux client, so a reader
//! that drains the pipe after the answer has it: [`ChannelFailures::since`]
//! drains on the spot instead of waiting for the background reader's turn.
//! (docs/openssh-channel-failures.md has the measurements.)

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// How many stderr lines of the master are kept for error reports.
pub(crate) const STDERR_TAIL_LINES: usize = 20;
/// Longest stderr line kept (longer ones are split).
const STDERR_MAX_LINE: usize = 4096;
/// Capacity of the stderr line channel; lines are dropped (and counted) when full so a
/// slow consumer can never block ssh on a full stderr pipe.
pub(crate) const STDERR_CHANNEL_CAP: usize = 256;
/// Failure reasons kept to be read back (a hand-off reads its own within
/// microseconds of the answer).
const FAILURES_KEPT: usize = 256;

pub(crate) type Tail = Arc<Mutex<VecDeque<String>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn tail_snapshot(tail: &Tail) -> Vec<String> {
    lock(tail).iter().cloned().collect()
}

/// The reason in one of ssh's `channel N: open failed: <reason>` lines.
pub fn open_failure_reason(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("channel ")?;
    let (id, reason) = rest.split_once(": open failed: ")?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(reason)
}

/// The reasons the master gave for channels it could not open, in order;
/// see the module's documentation.
#[derive(Clone, Debug)]
pub struct ChannelFailures(Arc<Reader>);

/// A position in the master's failures: take it before a request, read
/// what came after with [`ChannelFailures::since`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureMark(u64);

impl ChannelFailures {
    pub fn mark(&self) -> FailureMark {
        FailureMark(lock(&self.0.state).next_failure)
    }

    /// Every reason logged after `mark` and before now (the pipe is read
    /// first, so a reason written before an answer that has arrived is in).
    /// `None` when some of them are no longer kept.
    pub fn since(&self, mark: FailureMark) -> Option<Vec<String>> {
        self.0.drain();
        let state = lock(&self.0.state);
        let oldest = state.next_failure - state.failures.len() as u64;
        if mark.0 < oldest {
            return None;
        }
        let skip = (mark.0 - oldest) as usize;
        Some(state.failures.iter().skip(skip).cloned().collect())
    }
}

#[derive(Debug)]
struct Reader {
    pipe: pipe::Receiver,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    partial: Vec<u8>,
    ended: bool,
    tail: Tail,
    /// Closed once the pipe ends, so the receiver sees the end too.
    lines: Option<mpsc::Sender<String>>,
    dropped: u64,
    failures: VecDeque<String>,
    /// Number of the next failure (those before were pushed out, or are in `failures`).
    next_failure: u64,
}

impl Reader {
    /// Reads what the pipe holds now. Returns whether it has ended.
    ///
    /// Reads the descriptor itself: tokio's `try_read` answers "would block"
    /// without reading until its reactor has seen the pipe readable, which
    /// is exactly the moment a hand-off cannot wait for.
    fn drain(&self) -> bool {
        let mut state = lock(&self.state);
        let mut buf = [0u8; 8192];
        while !state.ended {
            match nix::unistd::read(self.pipe.as_raw_fd(), &mut buf) {
                Ok(0) => state.ended = true,
                Ok(n) => state.take(&buf[..n]),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => state.ended = true,
            }
        }
        if state.ended {
            let rest = std::mem::take(&mut state.partial);
            state.line(&rest);
            state.lines = None;
        }
        state.ended
    }
}

impl State {
    fn take(&mut self, mut bytes: &[u8]) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&bytes[..nl]);
            self.line(&line);
            bytes = &bytes[nl + 1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() >= STDERR_MAX_LINE {
            let rest = self.partial.split_off(STDERR_MAX_LINE);
            let line = std::mem::replace(&mut self.partial, rest);
            self.line(&line);
        }
    }

    fn line(&mut self, raw: &[u8]) {
        let line = String::from_utf8_lossy(raw)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        if line.is_empty() {
            return;
        }
        if let Some(reason) = open_failure_reason(&line) {
            if self.failures.len() == FAILURES_KEPT {
                self.failures.pop_front();
            }
            self.failures.push_back(reason.to_string());
            self.next_failure += 1;
        }
        {
            let mut t = lock(&self.tail);
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.clone());
        }
        if let Some(lines) = &self.lines {
            if lines.try_send(line).is_err() {
                self.dropped += 1;
            }
        }
    }
}

/// Follows the master's stderr pipe in a task of its own: lines go to the
/// returned receiver (dropped, and counted, when it is full), the last ones
/// to `tail`. The task ends with the pipe.
pub(crate) fn follow(
    fd: OwnedFd,
    tail: Tail,
    pid: u32,
) -> io::Result<(
    ChannelFailures,
    mpsc::Receiver<String>,
    tokio::task::JoinHandle<()>,
)> {
    let pipe = pipe::Receiver::from_owned_fd(fd)?;
    let (tx, rx) = mpsc::channel(STDERR_CHANNEL_CAP);
    let reader = Arc::new(Reader {
        pipe,
        state: Mutex::new(State {
            partial: Vec::new(),
            ended: false,
            tail,
            lines: Some(tx),
            dropped: 0,
            failures: VecDeque::new(),
            next_failure: 0,
        }),
    });
    let following = reader.clone();
    let task = tokio::spawn(async move {
        loop {
            if following.pipe.readable().await.is_err() || following.drain() {
                break;
            }
            // Read to "would block" above: tell tokio, or it would wake
            // this loop again at once.
            let _ = following
                .pipe
                .try_io(|| -> io::Result<()> { Err(io::ErrorKind::WouldBlock.into()) });
        }
        let dropped = lock(&following.state).dropped;
        if dropped > 0 {
            tracing::warn!(pid, dropped, "ssh stderr lines dropped (consumer too slow)");
        }
    });
    Ok((ChannelFailures(reader), rx, task))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn the_reason_of_an_open_failure_line() {
        assert_eq!(
            open_failure_reason("channel 2: open failed: connect failed: Connection refused"),
            Some("connect failed: Connection refused")
        );
        assert_eq!(
            open_failure_reason(
                "channel 13: open failed: administratively prohibited: open failed"
            ),
            Some("administratively prohibited: open failed")
        );
        for other in [
            "channel x: open failed: connect failed: Connection refused",
            "debug1: channel 2: open failed: y",
            "Warning: Permanently added '[127.0.0.1]:2299' (ED25519) to the list of known hosts.",
            "channel : open failed: z",
        ] {
            assert_eq!(open_failure_reason(other), None, "{other}");
        }
    }

    fn pipe_pair() -> (OwnedFd, std::fs::File) {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        (r, std::fs::File::from(w))
    }

    /// What the master wrote before its answer is read back at once, without
    /// waiting for the background reader to get its turn.
    #[tokio::test(flavor = "current_thread")]
    async fn reasons_written_before_now_are_read_on_the_spot() {
        let (r, mut w) = pipe_pair();
        let tail = Tail::default();
        let (failures, mut lines, _task) = follow(r, tail.clone(), 1).expect("follow");
        let before = failures.mark();
        w.write_all(
            b"Warning: added\nchannel 2: open failed: connect failed: Connection refused\n",
        )
        .expect("write");
        // No await between the write and the read: only an on-the-spot read sees it.
        assert_eq!(
            failures.since(before),
            Some(vec!["connect failed: Connection refused".to_string()])
        );
        let after = failures.mark();
        w.write_all(
            b"channel 3: open failed: connect failed: No route to host\nchannel 4: open fai",
        )
        .expect("write");
        assert_eq!(
            failures.since(after),
            Some(vec!["connect failed: No route to host".to_string()])
        );
        w.write_all(b"led: administratively prohibited: open failed\n")
            .expect("write");
        assert_eq!(
            failures.since(after).map(|f| f.len()),
            Some(2),
            "a line split across writes is one line"
        );
        assert_eq!(lines.recv().await.as_deref(), Some("Warning: added"));
        drop(w);
        let mut rest = Vec::new();
        while let Some(l) = lines.recv().await {
            rest.push(l);
        }
        assert_eq!(rest.len(), 3, "{rest:?}");
        assert_eq!(tail_snapshot(&tail).len(), 4);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_mark_older_than_what_is_kept_says_so() {
        let (r, mut w) = pipe_pair();
        let (failures, _lines, _task) = follow(r, Tail::default(), 1).expect("follow");
        let mark = failures.mark();
        for i in 0..FAILURES_KEPT + 1 {
            writeln!(
                w,
                "channel {i}: open failed: connect failed: Connection refused"
            )
            .expect("write");
            failures.since(mark);
        }
        assert_eq!(failures.since(mark), None);
        assert_eq!(failures.since(failures.mark()), Some(vec![]));
    }
}
