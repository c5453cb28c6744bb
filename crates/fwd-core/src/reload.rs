//! What a new configuration means for the hosts that run (SIGHUP).
//!
//! A host is known by its name. Unchanged hosts are left alone, with their
//! masters and forwards; changed ones are stopped and started again; hosts
//! that left the configuration are stopped, and new ones started.

/// The plan, by host name, each list in configuration order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan<'a> {
    /// Same name, same settings: left alone (a failing one is retried at once).
    pub keep: Vec<&'a str>,
    /// Same name, new settings: stopped, then started with the new ones.
    pub restart: Vec<&'a str>,
    /// No longer configured: stopped.
    pub remove: Vec<&'a str>,
    /// Newly configured: started.
    pub add: Vec<&'a str>,
}

impl ReloadPlan<'_> {
    /// Whether host `name` is to be started (new, or restarted).
    pub fn starts(&self, name: &str) -> bool {
        self.add.contains(&name) || self.restart.contains(&name)
    }
}

/// Compares the running hosts' settings with the wanted ones.
pub fn reload_plan<'a, T: PartialEq>(
    running: &[(&'a str, &T)],
    wanted: &[(&'a str, &T)],
) -> ReloadPlan<'a> {
    let mut plan = ReloadPlan::default();
    for (name, cfg) in running {
        match wanted.iter().find(|(n, _)| n == name) {
            Some((_, new)) if *new == *cfg => plan.keep.push(name),
            Some(_) => plan.restart.push(name),
            None => plan.remove.push(name),
        }
    }
    for (name, _) in wanted {
        if !running.iter().any(|(n, _)| n == name) {
            plan.add.push(name);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_changed_gone_and_new_hosts() {
        let running = [("a", &1), ("b", &2), ("c", &3)];
        let wanted = [("d", &4), ("b", &20), ("a", &1)];
        let plan = reload_plan(&running, &wanted);
        assert_eq!(
            plan,
            ReloadPlan {
                keep: vec!["a"],
                restart: vec!["b"],
                remove: vec!["c"],
                add: vec!["d"],
            }
        );
        assert!(plan.starts("b") && plan.starts("d"));
        assert!(!plan.starts("a") && !plan.starts("c"));
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let hosts = [("a", &1), ("b", &2)];
        let plan = reload_plan(&hosts, &hosts);
        assert_eq!(plan.keep, vec!["a", "b"]);
        assert!(plan.restart.is_empty() && plan.remove.is_empty() && plan.add.is_empty());
    }
}
