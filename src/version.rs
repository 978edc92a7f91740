//! Version strings: the crate version plus the git commit recorded by `build.rs`.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("CERTROTATE_GIT_COMMIT");
pub const SHORT: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("CERTROTATE_GIT_COMMIT"), ")");
pub const LONG: &str =
    concat!(env!("CARGO_PKG_VERSION"), "\ncommit: ", env!("CERTROTATE_GIT_COMMIT"),);
