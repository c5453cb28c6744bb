//! Which address each named container holds: kept while it runs, found
//! again for the same name when it comes back (`docker restart`, compose
//! re-creating a service), and spread over the range by a hash of the name
//! so a restarted fwdd tends to give the same answers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::range::AddressRange;
use crate::model::{ContainerId, HostKey};

/// Names remembered after their container went, at most: the oldest is
/// forgotten first.
const REMEMBERED_AT_MOST: usize = 4096;

/// A running container that holds an address.
pub type Holder = (HostKey, ContainerId);

#[derive(Clone, Debug, Default)]
pub struct Addresses {
    range: AddressRange,
    /// Each holder's address, and the identities it is remembered by.
    held: BTreeMap<Holder, (Ipv4Addr, Vec<String>)>,
    taken: BTreeSet<Ipv4Addr>,
    /// (host, identity) → the address its last container had, and when
    /// (a counter) it was let go.
    remembered: BTreeMap<(HostKey, String), (Ipv4Addr, u64)>,
    released: u64,
}

impl Addresses {
    pub fn new(range: AddressRange) -> Addresses {
        Addresses {
            range,
            ..Addresses::default()
        }
    }

    pub fn range(&self) -> AddressRange {
        self.range
    }

    /// A new range: every address is handed out again from it.
    pub fn set_range(&mut self, range: AddressRange) {
        if range != self.range {
            *self = Addresses::new(range);
        }
    }

    pub fn of(&self, holder: &Holder) -> Option<Ipv4Addr> {
        self.held.get(holder).map(|(a, _)| *a)
    }

    /// Every holder that is not in `alive` lets its address go; the
    /// address stays remembered under its identities.
    pub fn release_all_but(&mut self, alive: &BTreeSet<Holder>) {
        let gone: Vec<Holder> = self
            .held
            .keys()
            .filter(|h| !alive.contains(*h))
            .cloned()
            .collect();
        for holder in gone {
            let Some((addr, identities)) = self.held.remove(&holder) else {
                continue;
            };
            self.taken.remove(&addr);
            self.released += 1;
            for identity in identities {
                self.remembered
                    .insert((holder.0.clone(), identity), (addr, self.released));
            }
        }
        while self.remembered.len() > REMEMBERED_AT_MOST {
            let oldest = self
                .remembered
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.remembered.remove(&k),
                None => break,
            };
        }
    }

    /// The address `holder` has, or one for it: the one its identities
    /// had last (if free), else the first free address from where its first
    /// identity hashes to, preferring addresses no gone name remembers.
    /// `None`: the range is full.
    pub fn assign(&mut self, holder: &Holder, identities: &[String]) -> Option<Ipv4Addr> {
        if let Some((addr, known)) = self.held.get_mut(holder) {
            for identity in identities {
                if !known.contains(identity) {
                    known.push(identity.clone());
                }
            }
            return Some(*addr);
        }
        let host = &holder.0;
        let again = identities.iter().find_map(|identity| {
            self.remembered
                .get(&(host.clone(), identity.clone()))
                .map(|(a, _)| *a)
                .filter(|a| !self.taken.contains(a) && self.range.contains(*a))
        });
        let addr = again.or_else(|| self.free_from(hash(host, identities.first())))?;
        self.remembered.retain(|_, (a, _)| *a != addr);
        self.taken.insert(addr);
        self.held
            .insert(holder.clone(), (addr, identities.to_vec()));
        Some(addr)
    }

    fn free_from(&self, start: u32) -> Option<Ipv4Addr> {
        let len = self.range.len();
        let remembered: BTreeSet<Ipv4Addr> = self.remembered.values().map(|(a, _)| *a).collect();
        let mut fallback = None;
        for step in 0..len {
            let Some(addr) = self.range.usable((start.wrapping_add(step)) % len) else {
                continue;
            };
            if self.taken.contains(&addr) {
                continue;
            }
            if !remembered.contains(&addr) {
                return Some(addr);
            }
            fallback = fallback.or(Some(addr));
        }
        fallback
    }

    /// What an upgrade hands over: each holder's address and identities.
    pub fn held(&self) -> impl Iterator<Item = (&Holder, Ipv4Addr, &[String])> {
        self.held
            .iter()
            .map(|(h, (a, ids))| (h, *a, ids.as_slice()))
    }

    /// Takes over an address a previous image gave (ignored if it is
    /// outside the range or taken).
    pub fn restore(&mut self, holder: Holder, addr: Ipv4Addr, identities: Vec<String>) {
        if !self.range.contains(addr)
            || self.taken.contains(&addr)
            || self.held.contains_key(&holder)
        {
            return;
        }
        self.taken.insert(addr);
        self.held.insert(holder, (addr, identities));
    }
}

/// FNV-1a: stable across processes and releases (std's hasher is seeded).
fn hash(host: &str, identity: Option<&String>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let bytes = host.bytes().chain(std::iter::once(0)).chain(
        identity
            .map(|s| s.as_bytes())
            .unwrap_or_default()
            .iter()
            .copied(),
    );
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(host: &str, n: u8) -> Holder {
        (
            HostKey::from(host),
            ContainerId::parse(&format!("{n:012x}")).expect("id"),
        )
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn alive(holders: &[&Holder]) -> BTreeSet<Holder> {
        holders.iter().map(|h| (*h).clone()).collect()
    }

    #[test]
    fn a_holder_keeps_its_address_and_two_never_share_one() {
        let mut book = Addresses::new(AddressRange::default());
        let a = holder("h", 1);
        let b = holder("h", 2);
        let first = book.assign(&a, &ids(&["db"])).expect("room");
        let second = book.assign(&b, &ids(&["web"])).expect("room");
        assert_ne!(first, second);
        assert_eq!(book.assign(&a, &ids(&["db"])), Some(first));
        assert!(AddressRange::default().contains(first));
    }

    /// compose re-creates a service: a new container ID with the same
    /// name finds the address the old one had.
    #[test]
    fn the_same_name_gets_its_address_back_after_its_container_went() {
        let mut book = Addresses::new(AddressRange::default());
        let old = holder("h", 1);
        let addr = book
            .assign(&old, &ids(&["shop-db-1", "db.shop"]))
            .expect("room");
        book.release_all_but(&alive(&[]));
        assert_eq!(book.of(&old), None);
        // Someone else asks in between: not given the remembered address.
        let other = holder("h", 3);
        let mut others = Vec::new();
        for n in 0..50u8 {
            let o = holder("h", 100 + n);
            others.push(book.assign(&o, &ids(&[&format!("x{n}")])).expect("room"));
        }
        assert!(!others.contains(&addr));
        let _ = other;
        let new = holder("h", 2);
        assert_eq!(book.assign(&new, &ids(&["db.shop"])), Some(addr));
        // Another host's container of that name is someone else.
        let elsewhere = holder("g", 4);
        assert_ne!(book.assign(&elsewhere, &ids(&["db.shop"])), Some(addr));
    }

    /// The same names get the same addresses in a fresh book (a restarted
    /// fwdd), whatever the order they arrive in, while nothing collides.
    #[test]
    fn addresses_follow_the_name_not_the_order() {
        let names = ["db", "web", "cache", "queue"];
        let mut one = Addresses::new(AddressRange::default());
        let mut two = Addresses::new(AddressRange::default());
        let forward: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| one.assign(&holder("h", i as u8), &ids(&[n])))
            .collect();
        let mut backward: Vec<_> = names
            .iter()
            .enumerate()
            .rev()
            .map(|(i, n)| two.assign(&holder("h", i as u8), &ids(&[n])))
            .collect();
        backward.reverse();
        assert_eq!(forward, backward);
    }

    #[test]
    fn a_full_range_gives_none_and_remembered_addresses_go_last() {
        let range = AddressRange::parse("127.200.0.0/30").expect("valid");
        let mut book = Addresses::new(range);
        // A /30 holds two usable addresses.
        let a = book.assign(&holder("h", 1), &ids(&["a"])).expect("room");
        let b = book.assign(&holder("h", 2), &ids(&["b"])).expect("room");
        assert_ne!(a, b);
        assert_eq!(book.assign(&holder("h", 3), &ids(&["c"])), None);
        book.release_all_but(&alive(&[&holder("h", 2)]));
        // Only the remembered address is left: given, and forgotten.
        assert_eq!(book.assign(&holder("h", 3), &ids(&["c"])), Some(a));
        book.release_all_but(&alive(&[&holder("h", 2)]));
        assert_eq!(book.assign(&holder("h", 4), &ids(&["a"])), Some(a));
    }

    #[test]
    fn memory_is_bounded() {
        let mut book = Addresses::new(AddressRange::default());
        for n in 0..(REMEMBERED_AT_MOST + 10) {
            let h = (
                HostKey::from("h"),
                ContainerId::parse(&format!("{n:012x}")).expect("id"),
            );
            book.assign(&h, &ids(&[&format!("c{n}")]));
            book.release_all_but(&BTreeSet::new());
        }
        assert!(book.remembered.len() <= REMEMBERED_AT_MOST);
    }

    #[test]
    fn a_new_range_starts_afresh_and_restore_refuses_what_does_not_fit() {
        let mut book = Addresses::new(AddressRange::default());
        let a = holder("h", 1);
        book.assign(&a, &ids(&["a"]));
        book.set_range(AddressRange::parse("127.99.0.0/24").expect("valid"));
        assert_eq!(book.of(&a), None);
        book.restore(a.clone(), Ipv4Addr::new(127, 77, 0, 9), ids(&["a"]));
        assert_eq!(book.of(&a), None, "outside the range");
        book.restore(a.clone(), Ipv4Addr::new(127, 99, 0, 9), ids(&["a"]));
        assert_eq!(book.of(&a), Some(Ipv4Addr::new(127, 99, 0, 9)));
        let b = holder("h", 2);
        book.restore(b.clone(), Ipv4Addr::new(127, 99, 0, 9), ids(&["b"]));
        assert_eq!(book.of(&b), None, "taken");
    }
}
