//! Addresses of 127.0.0.0/8 beyond 127.0.0.1, for names' listeners.
//!
//! Linux routes all of 127/8 to `lo`: any address there can be bound with
//! no setup. macOS (and the BSDs) answer only on the addresses `lo0` has:
//! each name's address needs an alias (`ifconfig lo0 alias A up`), which
//! only root may add — fwdd run by launchd as a daemon can. An alias fwdd
//! added is removed when the name goes and at exit.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

/// Whether every 127/8 address is this machine's without setup.
pub const ALL_OF_127_IS_LOCAL: bool = cfg!(target_os = "linux");

/// The command that adds (or removes) `addr` on the loopback interface.
/// The address comes from fwd's own range, never from the remote side.
pub fn alias_command(addr: Ipv4Addr, add: bool) -> Command {
    let mut cmd = Command::new("/sbin/ifconfig");
    cmd.arg("lo0").arg(if add { "alias" } else { "-alias" });
    cmd.arg(addr.to_string());
    if add {
        cmd.args(["netmask", "255.255.255.255", "up"]);
    }
    cmd
}

/// The aliases fwdd added and still owns.
#[derive(Default)]
pub struct Aliases {
    added: BTreeSet<Ipv4Addr>,
    /// Addresses whose alias failed and was said: tried at every plan,
    /// said once until it works.
    said: BTreeSet<Ipv4Addr>,
}

impl Aliases {
    /// Makes `wanted` bindable and drops the aliases no longer wanted.
    /// Returns why an address could not be added, the first time it fails
    /// (its listeners fail to bind, and status says so each time).
    pub fn keep(&mut self, wanted: &BTreeSet<Ipv4Addr>) -> Vec<(Ipv4Addr, String)> {
        if ALL_OF_127_IS_LOCAL {
            return Vec::new();
        }
        let gone: Vec<Ipv4Addr> = self.added.difference(wanted).copied().collect();
        for addr in gone {
            let _ = alias_command(addr, false).output();
            self.added.remove(&addr);
        }
        let mut failed = Vec::new();
        for addr in wanted.difference(&self.added.clone()) {
            let result = match alias_command(*addr, true).output() {
                Ok(out) if out.status.success() => {
                    self.added.insert(*addr);
                    self.said.remove(addr);
                    continue;
                }
                Ok(out) => (
                    *addr,
                    format!(
                        "ifconfig lo0 alias {addr}: {} (names on macOS need fwdd run as root, \
                         e.g. by its launchd daemon)",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                ),
                Err(e) => (*addr, format!("ifconfig lo0 alias {addr}: {e}")),
            };
            if self.said.insert(*addr) {
                failed.push(result);
            }
        }
        self.said.retain(|a| wanted.contains(a));
        failed
    }

    /// At exit: every alias fwdd added goes.
    pub fn clear(&mut self) {
        self.keep(&BTreeSet::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alias_commands_name_only_the_address() {
        let add = alias_command(Ipv4Addr::new(127, 77, 0, 5), true);
        let args: Vec<String> = add
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(add.get_program(), "/sbin/ifconfig");
        assert_eq!(
            args,
            [
                "lo0",
                "alias",
                "127.77.0.5",
                "netmask",
                "255.255.255.255",
                "up"
            ]
        );
        let remove = alias_command(Ipv4Addr::new(127, 77, 0, 5), false);
        let args: Vec<String> = remove
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["lo0", "-alias", "127.77.0.5"]);
    }

    /// On Linux nothing is run: all of 127/8 is local already.
    #[cfg(target_os = "linux")]
    #[test]
    fn linux_needs_no_alias() {
        let mut aliases = Aliases::default();
        let wanted = BTreeSet::from([Ipv4Addr::new(127, 77, 0, 5)]);
        assert!(aliases.keep(&wanted).is_empty());
        assert!(aliases.added.is_empty());
    }
}
