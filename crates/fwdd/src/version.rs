//! This build's version, as every part of fwdd reports it: the package
//! version and the commit it was built from.

pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FWD_GIT_COMMIT"), ")");
