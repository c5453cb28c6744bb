//! The open-files limit fwdd and its ssh masters run with: raised at start
//! from the soft limit to the hard one, as Go's runtime does (on macOS
//! capped at `kern.maxfilesperproc`, as Go caps it). The masters are fwdd's
//! children and inherit it. What the limit allows is shared out by
//! `fwd_core::budget`.

/// The limit before and after [`raise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raised {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. A limit that cannot
/// be raised is kept (the budget is then shared out of it).
pub fn raise() -> std::io::Result<Raised> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (before, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = platform_cap(hard);
    if want > before {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard)?;
    }
    Ok(Raised {
        before,
        now: current(),
        hard,
    })
}

/// The soft limit now.
pub fn current() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// Descriptors fwdd has open now (`None` where it cannot be counted).
pub fn open_now() -> Option<u64> {
    let dir = if cfg!(target_os = "linux") {
        "/proc/self/fd"
    } else {
        "/dev/fd"
    };
    // One of the entries is the directory being read.
    Some(std::fs::read_dir(dir).ok()?.count().saturating_sub(1) as u64)
}

/// macOS refuses a soft limit above `kern.maxfilesperproc` (and an
/// infinite one): Go's `os` package caps it there.
#[cfg(target_os = "macos")]
fn platform_cap(hard: u64) -> u64 {
    let mut n: nix::libc::c_int = 0;
    let mut size = std::mem::size_of::<nix::libc::c_int>();
    // SAFETY: a NUL-terminated name, and an output buffer of the size given.
    let rc = unsafe {
        nix::libc::sysctlbyname(
            c"kern.maxfilesperproc".as_ptr(),
            std::ptr::addr_of_mut!(n).cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    // OPEN_MAX: what older Go used when the sysctl is not there.
    let per_process = if rc == 0 && n > 0 { n as u64 } else { 10_240 };
    hard.min(per_process)
}

/// Linux never lets the hard limit exceed `fs.nr_open`: it can be taken as is.
#[cfg(not(target_os = "macos"))]
fn platform_cap(hard: u64) -> u64 {
    hard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_is_idempotent() {
        let r = raise().expect("raise");
        assert_eq!(r.now, platform_cap(r.hard));
        assert!(r.now >= r.before);
        let again = raise().expect("raise again");
        assert_eq!(again.before, r.now);
        assert_eq!(again.now, r.now);
        assert!(open_now().is_some_and(|n| n >= 3));
    }
}
