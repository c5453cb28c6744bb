//! Network awareness: the kernel announces link and address changes, so a
//! reloaded interface is noticed at once instead of after ssh's keepalive
//! budget (15 s × 3 by default), and while no link is usable nothing
//! retries or logs in a loop.
//!
//! Linux: a netlink route socket subscribed to link and address groups.
//! macOS: a PF_ROUTE socket (every routing message is a change). Both are
//! only "something changed" signals; what is usable is then read with
//! getifaddrs, which is portable.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::net::if_::InterfaceFlags;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// Whether any non-loopback interface is up with a carrier. A machine that
/// has no such interface at all counts as usable: there is nothing to wait
/// for (e.g. a host reached over loopback in a container).
pub fn network_usable() -> bool {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return true;
    };
    let mut any = false;
    for a in addrs {
        if a.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            continue;
        }
        any = true;
        if a.flags
            .contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING)
        {
            return true;
        }
    }
    !any
}

pub struct NetWatch {
    /// Current usability, updated on every change.
    pub usable: watch::Receiver<bool>,
    /// Bumped on every (debounced) change, usable or not.
    pub changes: watch::Receiver<u64>,
}

/// Starts watching. Without a change socket (unsupported platform, or the
/// sandbox forbids it) usability is read once and never changes: fwdd then
/// relies on keepalives and health probes alone.
pub fn spawn() -> NetWatch {
    let (usable_tx, usable) = watch::channel(network_usable());
    let (changes_tx, changes) = watch::channel(0u64);
    match open_change_socket().and_then(register) {
        Ok(fd) => {
            tokio::task::spawn_local(watch_changes(fd, usable_tx, changes_tx));
        }
        Err(e) => {
            tracing::info!(event = "netwatch_unavailable", error = %e, "not watching network changes: {e}");
        }
    }
    NetWatch { usable, changes }
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open
    // and refers to the same socket for the AsyncFd's whole life.
    unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))
}

async fn watch_changes(
    fd: AsyncFd<OwnedFd>,
    usable: watch::Sender<bool>,
    changes: watch::Sender<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if drain_when_readable(&fd, &mut buf).await.is_err() {
            return;
        }
        // An interface reload produces a burst of messages: let it settle.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = drain_now(&fd, &mut buf);
        let now_usable = network_usable();
        let was = *usable.borrow();
        if was != now_usable {
            tracing::debug!(usable = now_usable, "network usability changed");
            usable.send_replace(now_usable);
        }
        changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

async fn drain_when_readable(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<()> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| recv(inner.get_ref(), buf)) {
            Ok(Ok(_)) => return Ok(()),
            // ENOBUFS: the kernel dropped messages; that too means "changed".
            Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

fn drain_now(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<()> {
    loop {
        match recv(fd.get_ref(), buf) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    nix::sys::socket::recv(
        fd.as_raw_fd(),
        buf,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)
}

#[cfg(linux_calls)]
fn open_change_socket() -> io::Result<OwnedFd> {
    use nix::sys::socket::{
        bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
    };
    const RTMGRP_LINK: u32 = 0x1;
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(
        fd.as_raw_fd(),
        &NetlinkAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR),
    )?;
    Ok(fd)
}

/// macOS, and the portable build on Linux (where it is a netlink socket
/// without subscriptions: it opens and is read, and tells nothing).
#[cfg(all(
    not(linux_calls),
    any(target_os = "macos", target_os = "linux", target_os = "android")
))]
fn open_change_socket() -> io::Result<OwnedFd> {
    open_bsd_route_socket()
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
fn open_change_socket() -> io::Result<OwnedFd> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no network change notifications on this platform",
    ))
}

/// The BSD/macOS routing socket: every message on it (RTM_IFINFO,
/// RTM_NEWADDR, RTM_DELADDR, …) is a change. Written with plain libc
/// constants so it also compiles on Linux, where PF_ROUTE is an alias of
/// PF_NETLINK; macOS and the portable build use it.
#[cfg_attr(linux_calls, allow(dead_code))]
fn open_bsd_route_socket() -> io::Result<OwnedFd> {
    use nix::libc;
    // SAFETY: socket(2) with constant arguments; the result is checked and
    // owned exactly once below.
    let raw = unsafe { libc::socket(libc::PF_ROUTE, libc::SOCK_RAW, libc::AF_UNSPEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usability_can_be_read() {
        // Whatever this machine has, the answer is a plain bool and getifaddrs works.
        let _ = network_usable();
    }

    #[test]
    fn the_bsd_route_socket_code_builds_and_opens_here_too() {
        // On Linux this opens a netlink route socket without subscriptions;
        // the point is that the macOS path is compiled and exercised in CI.
        assert!(open_bsd_route_socket().is_ok());
    }

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn the_change_socket_opens() {
        assert!(open_change_socket().is_ok());
    }
}
