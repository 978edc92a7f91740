//! What every rotation shares: the journal and backups of a run, the lock that keeps one
//! rotation at a time per asset dir, atomic private files, and the plan of each phase.

pub mod context;
pub mod engine;
pub mod files;
pub mod journal;
pub mod lock;
pub mod phase;
pub mod plan;
pub mod signals;
pub mod step;

use std::path::PathBuf;

use crate::assets::AssetDir;

/// Where the runs of an asset dir live: `<assets>/certrotate/`.
pub fn runs_root(assets: &AssetDir) -> PathBuf {
    assets.root().join("certrotate")
}
