//! A request and the descriptors it carries, onto the control socket: one
//! `SCM_RIGHTS` message per fd after the request, as the master's
//! `mm_receive_fd` reads them.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::Interest;
use tokio::net::UnixStream;

/// No SIGPIPE where the platform can say so per call (elsewhere the Rust
/// runtime ignores SIGPIPE).
pub(crate) fn send_flags() -> nix::sys::socket::MsgFlags {
    #[cfg(linux_calls)]
    return nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
    #[cfg(not(linux_calls))]
    return nix::sys::socket::MsgFlags::empty();
}

/// Sends `request`, then each of `fds` as a one-byte message carrying it in an
/// `SCM_RIGHTS` control message (what the master's `mm_receive_fd` reads).
///
/// On Linux all of it goes in one `sendmmsg`, so the master finds the request
/// and its fds queued together when it wakes. Sent one by one, every message
/// woke the master, which read on, found the next fd missing, slept again and
/// was woken once more: on two busy cores that ping-pong cost ~60 µs of every
/// connection's setup (the `perf sched` trace in `docs/benchmarks.md`).
/// Elsewhere, and for whatever one call leaves unsent, the pieces go one by one.
pub(crate) async fn send_with_fds(
    stream: &UnixStream,
    request: &[u8],
    fds: &[RawFd],
) -> io::Result<()> {
    let sock = stream.as_raw_fd();
    // First without asking the reactor: a socket it has only just begun to
    // watch (a spare, see `PendingMux`) counts as unwritable until its first
    // event, and waiting for that event costs a whole turn of the event loop.
    let mut sent = match send_some(sock, request, fds) {
        Ok(sent) => sent,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Sent::default(),
        Err(e) => return Err(e),
    };
    while sent.request < request.len() || sent.fds < fds.len() {
        let step = stream
            .async_io(Interest::WRITABLE, || {
                send_some(sock, &request[sent.request..], &fds[sent.fds..])
            })
            .await?;
        if step.request == 0 && step.fds == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "mux request not sent",
            ));
        }
        sent.request += step.request;
        sent.fds += step.fds;
    }
    Ok(())
}

/// How much of a request and its fds one call sent.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    request: usize,
    fds: usize,
}

/// Sends the rest of the request, or (once it is out) the next fd.
#[cfg(not(linux_calls))]
fn send_some(sock: RawFd, request: &[u8], fds: &[RawFd]) -> io::Result<Sent> {
    if !request.is_empty() {
        let n = nix::sys::socket::send(sock, request, send_flags())?;
        return Ok(Sent { request: n, fds: 0 });
    }
    send_one_fd(sock, fds[0])?;
    Ok(Sent { request: 0, fds: 1 })
}

#[cfg(not(linux_calls))]
fn send_one_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let byte = [0u8];
    let iov = [io::IoSlice::new(&byte)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    match sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::empty(), None)? {
        1 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "fd message not sent",
        )),
    }
}

#[cfg(linux_calls)]
/// The most fds one request carries (`MUX_C_NEW_SESSION`: stdin, stdout, stderr).
const MAX_REQUEST_FDS: usize = 3;

#[cfg(linux_calls)]
/// Larger than any stdio-forward or session request fwd sends, and small enough
/// that the kernel queues it as one buffer: all of it or nothing. A request
/// that went out short while its fds went too would corrupt the stream.
const ONE_CALL_REQUEST_LEN: usize = 2048;

/// One `sendmmsg`: the rest of the request, then one message per fd.
#[cfg(linux_calls)]
fn send_some(sock: RawFd, request: &[u8], fds: &[RawFd]) -> io::Result<Sent> {
    use nix::libc;
    if request.len() > ONE_CALL_REQUEST_LEN {
        // Not a request fwd sends: on its own, the fds in later calls.
        let n = nix::sys::socket::send(sock, request, send_flags())?;
        return Ok(Sent { request: n, fds: 0 });
    }
    // More fds than that: the rest in the next call.
    let fds = &fds[..fds.len().min(MAX_REQUEST_FDS)];
    const CMSG_BUF_LEN: usize = 32;
    let byte = [0u8; 1];
    // SAFETY: plain C structs, valid when zeroed.
    let mut iovs: [libc::iovec; 1 + MAX_REQUEST_FDS] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; 1 + MAX_REQUEST_FDS] = unsafe { std::mem::zeroed() };
    // u64 elements: cmsghdr alignment.
    let mut cmsgs = [[0u64; CMSG_BUF_LEN / 8]; MAX_REQUEST_FDS];
    // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
    let (space, len) = unsafe {
        let int = std::mem::size_of::<libc::c_int>() as libc::c_uint;
        (libc::CMSG_SPACE(int) as usize, libc::CMSG_LEN(int) as usize)
    };
    assert!(space <= CMSG_BUF_LEN);
    let mut count = 0;
    if !request.is_empty() {
        iovs[0] = libc::iovec {
            iov_base: request.as_ptr() as *mut libc::c_void,
            iov_len: request.len(),
        };
        count = 1;
    }
    for (i, &fd) in fds.iter().enumerate() {
        iovs[count] = libc::iovec {
            iov_base: byte.as_ptr() as *mut libc::c_void,
            iov_len: 1,
        };
        let hdr = &mut msgs[count].msg_hdr;
        hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, aligned bytes, room
        // for one cmsghdr and one int.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(hdr);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = len as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        }
        count += 1;
    }
    for (msg, iov) in msgs.iter_mut().zip(iovs.iter_mut()).take(count) {
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `count` initialised headers whose iovecs and control buffers
    // outlive the call.
    let n = unsafe {
        libc::sendmmsg(
            sock,
            msgs.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let mut sent = Sent::default();
    let mut messages = msgs[..n].iter();
    if !request.is_empty() {
        if let Some(first) = messages.next() {
            sent.request = first.msg_len as usize;
            if sent.request < request.len() && n > 1 {
                return Err(io::Error::other(
                    "mux request went out short, its fds after it",
                ));
            }
        }
    }
    sent.fds = messages.count();
    Ok(sent)
}
