//! The rotations this tool runs on an asset dir: which credentials each one replaces, and where
//! their runs stand, read from the journals (`<assets>/certrotate/<run>/journal.json`) the way
//! the rotation commands read them.

use std::path::Path;

use crate::aggregation::Aggregation;
use crate::assets::AssetDir;
use crate::error::Error;
use crate::renew::Renew;
use crate::rotation::engine::Procedure;
use crate::rotation::journal::{JOURNAL_FILE, Journal, RunDir, RunState};
use crate::rotation::runs_root;
use crate::webhook::Webhook;

use super::report::RotationRow;

/// A rotation command and the credentials (status row names) it replaces.
pub struct Rotation {
    pub name: &'static str,
    pub credentials: &'static [&'static str],
}

pub const ROTATIONS: &[Rotation] = &[
    Rotation { name: Aggregation::NAME, credentials: &["aggregation-ca", "aggregation-client"] },
    Rotation { name: Webhook::NAME, credentials: &["admission-webhook"] },
    // Every other certificate (renew re-issues the two above too, but their own commands
    // come first: they are what such a row needs).
    Rotation {
        name: Renew::NAME,
        credentials: &[
            "kube-ca",
            "apiserver",
            "admin",
            "kubelet",
            "etcd-ca",
            "etcd-client",
            "etcd-server",
            "etcd-peer",
        ],
    },
];

/// The rotation command that replaces `credential`, if there is one yet.
pub fn rotation_of(credential: &str) -> Option<&'static str> {
    ROTATIONS.iter().find(|r| r.credentials.contains(&credential)).map(|r| r.name)
}

/// The latest run of each rotation that has run on the asset dir (the run the rotation command
/// would resume or report), in [`ROTATIONS`] order.
pub fn rotation_rows(assets: &AssetDir) -> Vec<RotationRow> {
    let root = runs_root(assets);
    ROTATIONS
        .iter()
        .filter_map(|rotation| match RunDir::latest(&root, rotation.name) {
            Ok(run) => run.map(|run| row_of(rotation.name, &root, &run)),
            Err(err) => Some(unreadable(rotation.name, err)),
        })
        .collect()
}

fn row_of(rotation: &'static str, root: &Path, run: &RunDir) -> RotationRow {
    let journal = &run.journal;
    // The last finished run: this one, or the newest finished one before it.
    let last_finished = match journal.state {
        RunState::Finished => journal.finished_at.clone(),
        RunState::InProgress => finished_before(root, rotation, &journal.run),
    };
    RotationRow {
        rotation,
        run: journal.run.clone(),
        journal: run.journal_path().display().to_string(),
        state: Some(journal.state),
        started_at: Some(journal.started_at.clone()),
        finished_at: journal.finished_at.clone(),
        phases_done: journal
            .phases
            .iter()
            .filter(|p| p.outcome == crate::rotation::phase::PhaseOutcome::Done)
            .map(|p| p.name.clone())
            .collect(),
        last_finished_unix: last_finished.as_deref().and_then(unix),
        last_finished_at: last_finished,
        error: None,
        started_unix: unix(&journal.started_at),
    }
}

/// A latest run whose journal cannot be read: the row says why, and what to do.
fn unreadable(rotation: &'static str, err: Error) -> RotationRow {
    let journal = match &err {
        Error::Journal { path, .. } => path.display().to_string(),
        _ => String::new(),
    };
    let run = Path::new(&journal).parent().and_then(|d| d.file_name());
    RotationRow {
        rotation,
        run: run.map(|r| r.to_string_lossy().into_owned()).unwrap_or_default(),
        journal,
        state: None,
        started_at: None,
        finished_at: None,
        phases_done: Vec::new(),
        last_finished_at: None,
        error: Some(err.to_string()),
        started_unix: None,
        last_finished_unix: None,
    }
}

/// When the newest finished run of `rotation` older than `run` finished.
fn finished_before(root: &Path, rotation: &str, run: &str) -> Option<String> {
    let prefix = format!("{rotation}-");
    let mut earlier: Vec<String> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix) && name.as_str() < run)
        .collect();
    // Run names end in their UTC start time, so name order is start order.
    earlier.sort();
    earlier.iter().rev().find_map(|name| {
        let bytes = std::fs::read(root.join(name).join(JOURNAL_FILE)).ok()?;
        let journal: Journal = serde_json::from_slice(&bytes).ok()?;
        journal.finished_at.filter(|_| journal.state == RunState::Finished)
    })
}

fn unix(rfc3339: &str) -> Option<i64> {
    rfc3339.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}
