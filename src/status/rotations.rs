//! The rotations this tool runs on an asset dir: which credentials each one replaces, and where
//! their runs stand, read from the journals (`<assets>/certrotate/<run>/journal.json`).

use crate::aggregation::Aggregation;
use crate::assets::AssetDir;
use crate::rotation::engine::Procedure;
use crate::rotation::journal::{JOURNAL_FILE, Journal, RunState};
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
];

/// The rotation command that replaces `credential`, if there is one yet.
pub fn rotation_of(credential: &str) -> Option<&'static str> {
    ROTATIONS.iter().find(|r| r.credentials.contains(&credential)).map(|r| r.name)
}

/// The latest run of each rotation that has run on the asset dir, in [`ROTATIONS`] order.
pub fn rotation_rows(assets: &AssetDir) -> Vec<RotationRow> {
    let root = runs_root(assets);
    let Ok(entries) = std::fs::read_dir(&root) else { return Vec::new() };
    let mut runs: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // Run names end in their UTC start time, so name order is start order.
    runs.sort();
    ROTATIONS
        .iter()
        .filter_map(|rotation| {
            let prefix = format!("{}-", rotation.name);
            let mine: Vec<&String> = runs.iter().filter(|r| r.starts_with(&prefix)).collect();
            let (latest, earlier) = mine.split_last()?;
            let read = |run: &str| read_journal(&root.join(run).join(JOURNAL_FILE));
            let mut row = row_of(rotation.name, latest, &root, read(latest));
            // The last finished run: this one, or the newest finished one before it.
            let finished = |j: Journal| j.finished_at.filter(|_| j.state == RunState::Finished);
            let last_finished = match row.state {
                Some(RunState::Finished) => row.finished_at.clone(),
                _ => earlier.iter().rev().find_map(|run| read(run).ok().and_then(finished)),
            };
            row.last_finished_unix = last_finished.as_deref().and_then(unix);
            row.last_finished_at = last_finished;
            Some(row)
        })
        .collect()
}

fn read_journal(path: &std::path::Path) -> Result<Journal, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{} is not a journal this version reads ({e}); move its folder aside to start over",
            path.display()
        )
    })
}

fn row_of(
    rotation: &'static str,
    run: &str,
    root: &std::path::Path,
    journal: Result<Journal, String>,
) -> RotationRow {
    let mut row = RotationRow {
        rotation,
        run: run.to_string(),
        journal: root.join(run).join(JOURNAL_FILE).display().to_string(),
        state: None,
        started_at: None,
        finished_at: None,
        phases_done: Vec::new(),
        last_finished_at: None,
        error: None,
        started_unix: None,
        last_finished_unix: None,
    };
    match journal {
        Ok(journal) => {
            row.state = Some(journal.state);
            row.started_unix = unix(&journal.started_at);
            row.started_at = Some(journal.started_at);
            row.finished_at = journal.finished_at;
            row.phases_done = journal
                .phases
                .into_iter()
                .filter(|p| p.outcome == "done")
                .map(|p| p.name)
                .collect();
        }
        Err(reason) => row.error = Some(reason),
    }
    row
}

fn unix(rfc3339: &str) -> Option<i64> {
    rfc3339.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}
