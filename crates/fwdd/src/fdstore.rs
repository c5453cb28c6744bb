//! systemd's file descriptor store.
//!
//! Under systemd with `FileDescriptorStoreMax=` (the shipped unit sets it and
//! `FWD_FDSTORE=1`), every listening socket fwdd binds is also stored in
//! systemd's fd store, by name. After a crash, `Restart=` starts fwdd again
//! with them (`LISTEN_FDS`, `LISTEN_FDNAMES`): the ports were never unbound,
//! so a client connecting meanwhile waits in the listen queue instead of being
//! refused, and is served once the new process has its master. A port fwdd
//! releases is removed from the store (systemd would keep it bound otherwise).
//!
//! A leaf: whatever binds a listener (forwards, the engine and control
//! sockets) stores it here; nothing here knows who.

use sd_notify::NotifyState;

fn fdstore_enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
        && std::env::var_os("FWD_FDSTORE").is_some_and(|v| v == "1")
}

/// The store's name for a TCP listener: `tcp-<port>-<ip>`, with `:` (which
/// systemd does not allow in a name) written as `_`.
pub fn tcp_fd_name(addr: std::net::SocketAddr) -> String {
    format!(
        "tcp-{}-{}",
        addr.port(),
        addr.ip().to_string().replace(':', "_")
    )
}

/// The store's name for a Unix socket fwdd serves: `unix-<file name>`.
pub fn unix_fd_name(path: &std::path::Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().replace(':', "_"))
        .unwrap_or_default();
    format!("unix-{name}")
}

/// Stores a listener (no-op outside systemd or with the store off).
pub fn store_fd(name: &str, fd: std::os::fd::BorrowedFd<'_>) {
    if !fdstore_enabled() {
        return;
    }
    if let Err(e) =
        sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
    {
        tracing::debug!(name, error = %e, "could not store a descriptor with systemd");
    }
}

/// Removes a released listener from the store.
pub fn remove_fd(name: &str) {
    if !fdstore_enabled() {
        return;
    }
    let _ = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]);
}

/// The listeners systemd gave back at start (`LISTEN_FDS` for this pid),
/// by name, close-on-exec. Read first thing in `main`, before any descriptor
/// is opened; the variables are removed so no child or later image sees them.
pub fn take_stored_fds() -> StoredFds {
    let mut out = std::collections::BTreeMap::new();
    // SAFETY: called first thing in main, before any other thread exists.
    let Ok(fds) = (unsafe { sd_notify::listen_fds_with_names_and_unset_env() }) else {
        return StoredFds(std::cell::RefCell::new(out));
    };
    for (fd, name) in fds {
        use std::os::fd::FromRawFd;
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        // SAFETY: systemd passed this descriptor to this very process
        // (LISTEN_PID), once; nothing else owns it.
        out.insert(name, unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    }
    StoredFds(std::cell::RefCell::new(out))
}

/// Listeners from systemd's store not yet taken back by the forward table,
/// the engine sockets or the control socket.
#[derive(Default)]
pub struct StoredFds(std::cell::RefCell<std::collections::BTreeMap<String, std::os::fd::OwnedFd>>);

impl StoredFds {
    pub fn take(&self, name: &str) -> Option<std::os::fd::OwnedFd> {
        self.0.borrow_mut().remove(name)
    }

    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    /// Closes what nobody claimed (ports no container wants any more) and
    /// removes it from the store.
    pub fn release_rest(&self) -> usize {
        let rest = std::mem::take(&mut *self.0.borrow_mut());
        for name in rest.keys() {
            remove_fd(name);
        }
        rest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_carry_no_colon() {
        let v4: std::net::SocketAddr = "127.0.0.1:5432".parse().expect("addr");
        let v6: std::net::SocketAddr = "[::1]:5432".parse().expect("addr");
        assert_eq!(tcp_fd_name(v4), "tcp-5432-127.0.0.1");
        assert_eq!(tcp_fd_name(v6), "tcp-5432-__1");
        assert_eq!(
            unix_fd_name(std::path::Path::new("/run/fwdd/docker-ci.sock")),
            "unix-docker-ci.sock"
        );
        for n in [
            tcp_fd_name(v6),
            unix_fd_name(std::path::Path::new("/x/a:b")),
        ] {
            assert!(!n.contains(':') && n.len() <= 255, "{n}");
        }
    }
}
