//! `cfg(linux_calls)`: the Linux-only calls fwd makes where it can
//! (`sendmmsg`, `accept4`, `SOCK_NONBLOCK`, `MSG_NOSIGNAL`, `prctl`,
//! `/proc/self/exe` and `fexecve`, netlink, `getgrouplist`). It is off on
//! every other target, and on Linux with the crate's `portable` feature:
//! then the code macOS runs instead is built, and tested, on Linux too
//! (no Apple toolchain is needed for anything but the few Apple-only calls).

pub fn declare_linux_calls() {
    println!("cargo:rustc-check-cfg=cfg(linux_calls)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let portable = std::env::var_os("CARGO_FEATURE_PORTABLE").is_some();
    if matches!(os.as_str(), "linux" | "android") && !portable {
        println!("cargo:rustc-cfg=linux_calls");
    }
}
