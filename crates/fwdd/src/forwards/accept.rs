//! The listeners of a forward: binding every address, and one accept loop
//! per listener that hands each client on at once.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::rc::Rc;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::handoff::spawn_served;
use super::target::{ConnStats, Target};
use crate::serve::ServeContext;

/// A forward's or a name's listeners: their descriptors (what an upgrade
/// hands over) and their accept tasks. Dropping it stops the tasks, which
/// close the listeners, and takes them out of systemd's store, which would
/// otherwise keep the ports bound.
#[derive(Default)]
pub(super) struct Listening {
    pub fds: Vec<(SocketAddr, RawFd)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for (addr, _) in &self.fds {
            crate::fdstore::remove_fd(&crate::fdstore::tcp_fd_name(*addr));
        }
    }
}

/// One accept task per listener; the addresses they listen on.
pub(super) fn serve_listeners(
    listeners: Vec<TcpListener>,
    target: &watch::Sender<Target>,
    stats: &Rc<ConnStats>,
    ctx: &Rc<ServeContext>,
) -> (Vec<SocketAddr>, Listening) {
    let mut addrs = Vec::new();
    let mut listening = Listening::default();
    for l in listeners {
        if let Ok(addr) = l.local_addr() {
            addrs.push(addr);
            listening.fds.push((addr, l.as_raw_fd()));
        }
        listening.tasks.push(tokio::task::spawn_local(accept_loop(
            l,
            target.subscribe(),
            stats.clone(),
            ctx.clone(),
        )));
    }
    (addrs, listening)
}

/// Binds `port` on every address (by default 127.0.0.1 and [::1]). Any
/// address being taken is a conflict: a client resolving `localhost` may
/// try either. IPv6 loopback missing on the machine is not an error.
pub(super) fn bind_all(
    port: u16,
    addrs: &[IpAddr],
    stored: &crate::fdstore::StoredFds,
) -> Result<Vec<TcpListener>, String> {
    let mut out = Vec::new();
    for ip in addrs {
        let addr = SocketAddr::new(*ip, port);
        let name = crate::fdstore::tcp_fd_name(addr);
        // After a crash: the listener the previous process had, with the
        // clients that queued on it meanwhile.
        if let Some(fd) = stored.take(&name) {
            out.push(TcpListener::from(fd));
            continue;
        }
        match listen(addr).inspect(|l| crate::fdstore::store_fd(&name, l.as_fd())) {
            Ok(l) => {
                if !ip.is_loopback() {
                    tracing::warn!(event = "wide_bind", address = %addr, "listening on {addr}: reachable beyond this machine (configured by a rule)");
                }
                out.push(l)
            }
            Err(e)
                if *ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
                    && (e.kind() == io::ErrorKind::AddrNotAvailable
                        || e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT)) => {}
            Err(e) => return Err(describe_bind_error(addr, &e)),
        }
    }
    if out.is_empty() {
        return Err(format!("no address to listen on for port {port}"));
    }
    Ok(out)
}

/// Asked of `listen(2)`; the kernel silently caps it at its own limit
/// (`net.core.somaxconn`, `kern.ipc.somaxconn`). std's 128 drops a CI burst
/// at SYN, and the clients' kernels retry only after 1, 3, 7 s.
const LISTEN_BACKLOG: u32 = 65_535;

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // What std does for a listener: a restarted fwdd rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

fn describe_bind_error(addr: SocketAddr, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::AddrInUse {
        format!("{addr} is already in use by another program")
    } else {
        format!("cannot bind {addr}: {e}")
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: watch::Receiver<Target>,
    stats: Rc<ConnStats>,
    ctx: Rc<ServeContext>,
) {
    // Accepted sockets are never read or written here, only handed to the
    // master, so they skip tokio's reactor: registering and deregistering
    // each one cost two epoll_ctl calls on every connection's setup.
    let listener = match listener.set_nonblocking(true).and_then(|()| {
        // SAFETY: a std TcpListener owns its descriptor for its whole life.
        unsafe { AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)
    }) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(event = "accept_failed", error = %e, "a listener cannot be watched: {e}");
            return;
        }
    };
    let mut backoff = fwd_core::AcceptBackoff::default();
    let socket = listener
        .get_ref()
        .local_addr()
        .map_or_else(|_| "a forward's listener".to_string(), |a| a.to_string());
    let mut frozen = ctx.frozen.subscribe();
    loop {
        let _ = frozen.wait_for(|f| !*f).await;
        let accepted = tokio::select! {
            accepted = listener.async_io(tokio::io::Interest::READABLE, accept_nonblocking) => accepted,
            _ = frozen.wait_for(|f| *f) => continue,
        };
        match accepted {
            Ok(sock) => {
                ctx.accept_succeeded(&mut backoff, &socket);
                if !stats.admit(&target.borrow(), &ctx) {
                    continue;
                }
                // What ssh -L does for its own accepted sockets (set_nodelay in
                // channels.c): the master writes each channel packet to this
                // socket as it comes, and Nagle would hold a reply's second
                // small write until the first is acknowledged.
                let _ = sock.set_nodelay(true);
                spawn_served(sock, target.clone(), stats.clone(), ctx.clone());
            }
            // EMFILE and friends: back off instead of spinning.
            Err(e) => ctx.accept_failed(&mut backoff, &socket, &e).await,
        }
    }
}

/// A client socket, non-blocking as the master and the fd handover expect.
fn accept_nonblocking(listener: &std::net::TcpListener) -> io::Result<std::net::TcpStream> {
    #[cfg(linux_calls)]
    {
        use nix::sys::socket::{accept4, SockFlag};
        use std::os::fd::{FromRawFd, OwnedFd};
        let fd = accept4(
            listener.as_raw_fd(),
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )?;
        // SAFETY: accept4 just returned this descriptor; nothing else owns it.
        Ok(std::net::TcpStream::from(unsafe {
            OwnedFd::from_raw_fd(fd)
        }))
    }
    #[cfg(not(linux_calls))]
    {
        let (sock, _) = listener.accept()?;
        sock.set_nonblocking(true)?;
        Ok(sock)
    }
}
