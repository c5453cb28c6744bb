//! The runner loopback addresses names are given from: a block inside
//! 127.0.0.0/8 that never hands out an address the system already uses.

use std::fmt;
use std::net::Ipv4Addr;

/// The default range: a /16 far from 127.0.0.1, 127.0.0.53 (systemd-resolved)
/// and 127.0.1.1 (Debian's hostname line).
pub const DEFAULT_RANGE: &str = "127.77.0.0/16";

/// Addresses on the loopback that belong to someone else, whatever range
/// is configured.
const SYSTEM_ADDRESSES: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 53),
    Ipv4Addr::new(127, 0, 1, 1),
];

/// A CIDR block inside 127.0.0.0/8, from /8 to /30.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    base: u32,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("expected an IPv4 block like 127.77.0.0/16, got {0:?}")]
    Syntax(String),
    #[error("{0} is not inside 127.0.0.0/8: names get loopback addresses only")]
    NotLoopback(String),
    #[error("the prefix length must be between 8 and 30, got /{0}")]
    Prefix(u8),
    #[error("{0} has bits set past its prefix (did you mean {1}?)")]
    HostBits(String, String),
}

impl AddressRange {
    pub fn parse(s: &str) -> Result<AddressRange, RangeError> {
        let syntax = || RangeError::Syntax(s.chars().take(64).collect());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if addr.octets()[0] != 127 {
            return Err(RangeError::NotLoopback(s.to_string()));
        }
        if !(8..=30).contains(&prefix) {
            return Err(RangeError::Prefix(prefix));
        }
        let mask = u32::MAX << (32 - prefix);
        let base = u32::from(addr);
        if base & !mask != 0 {
            let fixed = AddressRange {
                base: base & mask,
                prefix,
            };
            return Err(RangeError::HostBits(s.to_string(), fixed.to_string()));
        }
        Ok(AddressRange { base, prefix })
    }

    /// How many addresses the block holds (its first and last included).
    pub fn len(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The address at `index` in the block, if it may be given to a name:
    /// not the block's first or last address, nor one the system uses.
    pub fn usable(&self, index: u32) -> Option<Ipv4Addr> {
        if index == 0 || index >= self.len() - 1 {
            return None;
        }
        let addr = Ipv4Addr::from(self.base + index);
        (!SYSTEM_ADDRESSES.contains(&addr)).then_some(addr)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr).wrapping_sub(self.base) < self.len()
    }

    /// Where `addr` sits in the block.
    pub fn index_of(&self, addr: Ipv4Addr) -> Option<u32> {
        self.contains(addr)
            .then(|| u32::from(addr).wrapping_sub(self.base))
    }
}

impl Default for AddressRange {
    fn default() -> Self {
        AddressRange {
            base: u32::from(Ipv4Addr::new(127, 77, 0, 0)),
            prefix: 16,
        }
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_documented_block() {
        assert_eq!(
            AddressRange::parse(DEFAULT_RANGE),
            Ok(AddressRange::default())
        );
        assert_eq!(AddressRange::default().to_string(), DEFAULT_RANGE);
    }

    #[test]
    fn only_loopback_blocks_without_host_bits() {
        assert!(matches!(
            AddressRange::parse("10.0.0.0/16"),
            Err(RangeError::NotLoopback(_))
        ));
        assert_eq!(
            AddressRange::parse("127.77.0.1/16"),
            Err(RangeError::HostBits(
                "127.77.0.1/16".into(),
                "127.77.0.0/16".into()
            ))
        );
        assert_eq!(
            AddressRange::parse("127.0.0.0/31"),
            Err(RangeError::Prefix(31))
        );
        assert!(matches!(
            AddressRange::parse("127.77.0.0"),
            Err(RangeError::Syntax(_))
        ));
        assert!(matches!(
            AddressRange::parse("127.77.0.0/x"),
            Err(RangeError::Syntax(_))
        ));
    }

    /// A whole-127/8 range still never hands out the system's addresses.
    #[test]
    fn the_systems_addresses_and_the_blocks_ends_are_never_given() {
        let all = AddressRange::parse("127.0.0.0/8").expect("valid");
        for addr in SYSTEM_ADDRESSES {
            let i = all.index_of(addr).expect("inside");
            assert_eq!(all.usable(i), None, "{addr}");
        }
        assert_eq!(all.usable(0), None);
        assert_eq!(all.usable(all.len() - 1), None);
        let r = AddressRange::default();
        assert_eq!(r.usable(1), Some(Ipv4Addr::new(127, 77, 0, 1)));
        assert_eq!(r.usable(65534), Some(Ipv4Addr::new(127, 77, 255, 254)));
        assert!(!r.contains(Ipv4Addr::new(127, 78, 0, 1)));
        assert!(!r.contains(Ipv4Addr::new(127, 76, 255, 255)));
    }
}
