//! Every container by name (issue 31), the daemon's side: after each plan
//! of forwards, the names are planned (`fwd_core::names`), their listeners
//! brought in line (`forwards::NameTable`), and the hosts files written —
//! fwd's own `<runtime>/hosts` always, and fwd's block in `hosts_file` when
//! configured. On a clean exit the block is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use fwd_core::hostsfile::{self, Entry};
use fwd_core::names::{NameBook, NamesPlan, NamesSettings, Reserved};
use fwd_core::{ContainerId, HostKey, HostView, Rules};

use crate::config::NamesConfig;
use crate::forwards::NameTable;
use crate::handover::document::{NameAddressDoc, NamesDoc};
use crate::handover::Descriptors;
use crate::loopback::Aliases;
use crate::serve::{Registry, ServeContext};

/// Where resolvers look when `hosts_file` is not set: fwd never shadows
/// its names, though it writes no block there.
const SYSTEM_HOSTS: &str = "/etc/hosts";

pub struct Names {
    book: NameBook,
    table: NameTable,
    plan: NamesPlan,
    /// The entries the files hold now (`None`: not written yet).
    written: Option<Vec<Entry>>,
    own_file: PathBuf,
    hosts_file: Option<PathBuf>,
    hostname: Option<String>,
    /// A file that could not be written or read, said once until it works.
    trouble_said: BTreeSet<PathBuf>,
    /// macOS: the lo0 aliases the names' addresses need.
    aliases: Aliases,
}

impl Names {
    pub fn new(runtime_dir: &Path, cfg: &NamesConfig) -> Names {
        Names {
            book: NameBook::new(cfg.range),
            table: NameTable::default(),
            plan: NamesPlan::default(),
            written: None,
            own_file: runtime_dir.join("hosts"),
            hosts_file: cfg.hosts_file.clone(),
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok()),
            trouble_said: BTreeSet::new(),
            aliases: Aliases::default(),
        }
    }

    /// A reload: a new `hosts_file` takes the block (the old file loses it).
    pub fn configure(&mut self, cfg: &NamesConfig) {
        if self.hosts_file != cfg.hosts_file {
            if let Some(old) = self.hosts_file.take() {
                self.update_system_file(&old, None);
            }
            self.hosts_file = cfg.hosts_file.clone();
            self.written = None;
        }
    }

    /// Plans the names of `hosts` (those with `names = true`), binds and
    /// closes their listeners, and writes the files when the names changed.
    /// `settled`: every such host has listed its containers; until then an
    /// empty plan does not empty the files (a restarted fwdd keeps the
    /// names it wrote while it reconnects).
    pub fn plan(
        &mut self,
        settings: &NamesSettings,
        hosts: &[HostView<'_>],
        rules: &Rules,
        settled: bool,
        ctx: &Rc<ServeContext>,
        now: Instant,
    ) {
        let reserved = Reserved::new(self.system_names(), self.hostname.as_deref());
        let plan = self.book.plan(settings, hosts, rules, &reserved);
        for n in &plan.news {
            tracing::warn!(
                event = "name_refused",
                host = %n.host,
                container = %n.container_name,
                container_id = %n.container,
                "container {}: {}",
                n.container_name,
                n.text
            );
        }
        self.say_changes(&plan);
        let claims = plan.claims();
        let addresses = claims.keys().map(|a| *a.ip()).collect();
        for (addr, why) in self.aliases.keep(&addresses) {
            tracing::warn!(event = "name_address_unavailable", address = %addr, "{why}");
        }
        self.table.apply(claims, ctx, now);
        self.plan = plan;
        let entries = self.plan.entries();
        if self.written.as_ref() != Some(&entries) && (settled || !entries.is_empty()) {
            self.write(&entries);
        }
    }

    /// At a clean exit: the listeners close and fwd's block leaves the
    /// system hosts file; fwd's own file goes with the runtime directory's
    /// other files.
    pub fn clear(&mut self) {
        self.table.listeners.clear();
        self.aliases.clear();
        if let Some(path) = self.hosts_file.clone() {
            self.update_system_file(&path, None);
        }
        let _ = std::fs::remove_file(&self.own_file);
        self.written = None;
    }

    /// What an upgrade hands over: the addresses given, the listeners with
    /// their connections.
    pub fn to_doc(&self, registry: &Registry) -> NamesDoc {
        NamesDoc {
            addresses: self
                .book
                .addresses()
                .held()
                .map(|((host, id), address, identities)| NameAddressDoc {
                    host: host.to_string(),
                    container: id.as_str().to_string(),
                    address,
                    identities: identities.to_vec(),
                })
                .collect(),
            listeners: self.table.to_doc(registry),
        }
    }

    /// The new image takes over every address and listener: the first plan
    /// finds them held, so a name keeps its address and its open tunnels.
    pub fn adopt(
        &mut self,
        doc: &NamesDoc,
        fds: &mut Descriptors,
        ctx: &Rc<ServeContext>,
        now: Instant,
    ) {
        for a in &doc.addresses {
            let Ok(id) = ContainerId::parse(&a.container) else {
                continue;
            };
            self.book.addresses_mut().restore(
                (HostKey::from(a.host.as_str()), id),
                a.address,
                a.identities.clone(),
            );
        }
        for f in &doc.listeners {
            self.table.adopt(f, fds, ctx, now);
        }
    }

    pub fn last_plan(&self) -> &NamesPlan {
        &self.plan
    }

    pub fn table(&self) -> &NameTable {
        &self.table
    }

    /// The names the system has outside fwd's block (never shadowed).
    fn system_names(&mut self) -> BTreeSet<String> {
        let path = self
            .hosts_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_HOSTS));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                self.trouble_said.remove(&path);
                hostsfile::names_outside_block(&text)
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound
                    && self.trouble_said.insert(path.clone())
                {
                    tracing::warn!(
                        event = "hosts_file_unreadable",
                        path = %path.display(),
                        error = %e,
                        "cannot read {}: {e}; names it holds may be shadowed",
                        path.display()
                    );
                }
                BTreeSet::new()
            }
        }
    }

    fn write(&mut self, entries: &[Entry]) {
        let own = hostsfile::render_file(entries);
        match crate::hostsfile::write_atomically(
            &self.own_file,
            own.as_bytes(),
            crate::hostsfile::NEW_FILE_MODE,
        ) {
            Ok(()) => {
                self.trouble_said.remove(&self.own_file);
            }
            Err(e) => self.say_trouble(&self.own_file.clone(), &e),
        }
        if let Some(path) = self.hosts_file.clone() {
            let block = (!entries.is_empty()).then(|| hostsfile::render_block(entries));
            self.update_system_file(&path, block.as_deref());
        }
        self.written = Some(entries.to_vec());
    }

    fn update_system_file(&mut self, path: &Path, block: Option<&str>) {
        match crate::hostsfile::update_block(path, block) {
            Ok(_) => {
                self.trouble_said.remove(path);
            }
            Err(e) => self.say_trouble(path, &e),
        }
    }

    fn say_trouble(&mut self, path: &Path, e: &std::io::Error) {
        if !self.trouble_said.insert(path.to_path_buf()) {
            return;
        }
        let fix = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "; fwdd's user may not write it: run fwdd as root for hosts_file, or unset \
             hosts_file and point your resolver at fwd's own file"
        } else {
            ""
        };
        tracing::warn!(
            event = "hosts_file_unwritable",
            path = %path.display(),
            error = %e,
            "cannot write names to {}: {e}{fix}",
            path.display()
        );
    }

    /// One line per container whose names appeared, changed or went.
    fn say_changes(&self, new: &NamesPlan) {
        type Key = (HostKey, ContainerId);
        let before: BTreeMap<Key, _> = self
            .plan
            .named
            .iter()
            .map(|n| ((n.host.clone(), n.container.clone()), n))
            .collect();
        let after: BTreeMap<Key, _> = new
            .named
            .iter()
            .map(|n| ((n.host.clone(), n.container.clone()), n))
            .collect();
        for (key, n) in &after {
            let ports: Vec<u16> = n.ports().collect();
            let same = before
                .get(key)
                .is_some_and(|b| b.names == n.names && b.ports().eq(n.ports()) && b.to == n.to);
            if same {
                continue;
            }
            let message = if n.names.is_empty() {
                format!(
                    "container {} holds {} (ports {ports:?}, to {}) but no name of its own \
                     (fwdctl names says why)",
                    n.container_name, n.address, n.to
                )
            } else {
                format!(
                    "container {} answers as {} at {} (ports {ports:?}, to {})",
                    n.container_name,
                    n.names.join(", "),
                    n.address,
                    n.to
                )
            };
            tracing::info!(
                event = "name_added",
                host = %n.host,
                container = %n.container_name,
                container_id = %n.container,
                address = %n.address,
                names = %n.names.join(" "),
                ports = ?ports,
                to = %n.to,
                "{message}"
            );
        }
        for (key, n) in &before {
            if !after.contains_key(key) {
                tracing::info!(
                    event = "name_removed",
                    host = %n.host,
                    container = %n.container_name,
                    container_id = %n.container,
                    address = %n.address,
                    "container {}'s names are gone ({})",
                    n.container_name,
                    n.address
                );
            }
        }
    }
}
