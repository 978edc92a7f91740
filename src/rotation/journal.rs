//! The journal of one rotation run: `<assets>/certrotate/<run>/journal.json` (0600, in a 0700
//! folder) with the phases done, the fingerprints involved and every command and API change,
//! next to the backups of what the run replaces. Every write is atomic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{private_dir, write_atomic};
use super::phase::{PhaseOutcome, RunPath};
use super::plan::StepKind;
use crate::error::{Error, Result};

pub const JOURNAL_FILE: &str = "journal.json";
const BACKUP_DIR: &str = "backup";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    InProgress,
    Finished,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseRecord {
    pub name: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// `running`, `done`, `failed` or `interrupted`.
    pub outcome: PhaseOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at: String,
    pub phase: String,
    pub kind: StepKind,
    pub what: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    pub api_version: String,
    pub kind: String,
    pub rotation: String,
    pub run: String,
    /// `not-expired` or `expired`.
    pub path: RunPath,
    pub state: RunState,
    pub assets_dir: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// SHA-256 of the certificates' DER (lowercase hex): `oldCa`, `newCa`, `oldClient`, …
    #[serde(default)]
    pub fingerprints: BTreeMap<String, String>,
    /// Where the run found what it keeps, which is not always the asset dir's files (a
    /// rotation begun by hand): `oldCa` → "old CA from …; its key from …".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub origins: BTreeMap<String, String>,
    #[serde(default)]
    pub phases: Vec<PhaseRecord>,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// A run's folder and its journal, as last saved.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
    pub journal: Journal,
}

pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl RunDir {
    /// The most recent run of `rotation` under `root` (`<assets>/certrotate`), if any.
    pub fn latest(root: &Path, rotation: &str) -> Result<Option<RunDir>> {
        let Ok(entries) = std::fs::read_dir(root) else { return Ok(None) };
        let prefix = format!("{rotation}-");
        let mut runs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .collect();
        runs.sort();
        while let Some(dir) = runs.pop() {
            if dir.join(JOURNAL_FILE).exists() {
                return Self::open(&dir).map(Some);
            }
            Self::never_started(&dir)?;
        }
        Ok(None)
    }

    /// A run folder without a journal: its creation was cut off (killed, disk full) before
    /// the journal was first written, so no phase of it ran. With nothing kept in it, it is
    /// passed over (and said so); with backups in it, someone must look.
    fn never_started(dir: &Path) -> Result<()> {
        let kept = std::fs::read_dir(dir.join(BACKUP_DIR)).map(|d| d.count()).unwrap_or(0);
        if kept == 0 {
            eprintln!(
                "note: {} has no {JOURNAL_FILE}: its creation was cut off before any phase ran; it is passed over (remove it at will)",
                dir.display()
            );
            return Ok(());
        }
        Err(Error::Journal {
            path: dir.join(JOURNAL_FILE),
            reason: format!(
                "is missing, yet {} holds {kept} backup file(s): this is not a run folder this tool left; move the folder aside (keep its backups) and run again",
                dir.join(BACKUP_DIR).display()
            ),
        })
    }

    fn open(dir: &Path) -> Result<RunDir> {
        let path = dir.join(JOURNAL_FILE);
        let bad = |reason: String| Error::Journal { path: path.clone(), reason };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::JournalIo { path: path.clone(), source: e })?;
        let journal = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "is not a journal this version reads ({e}); move the folder aside to start over"
            ))
        })?;
        Ok(RunDir { dir: dir.to_path_buf(), journal })
    }

    /// The name a new run of `rotation` under `root` gets: `<rotation>-<UTC time>`.
    pub fn new_name(root: &Path, rotation: &str) -> String {
        let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
        let mut run = format!("{rotation}-{stamp}");
        let mut n = 1;
        while root.join(&run).exists() {
            n += 1;
            run = format!("{rotation}-{stamp}-{n}");
        }
        run
    }

    /// Starts run `run` (a [`RunDir::new_name`]) of `rotation` on `path` (`expired` or
    /// `not-expired`).
    pub fn create(
        root: &Path,
        assets_dir: &Path,
        rotation: &str,
        run: &str,
        path: RunPath,
    ) -> Result<RunDir> {
        let dir = root.join(run);
        private_dir(&dir.join(BACKUP_DIR))
            .map_err(|e| Error::JournalIo { path: dir.clone(), source: e })?;
        let journal = Journal {
            api_version: crate::output::JSON_API_VERSION.into(),
            kind: "RotationJournal".into(),
            rotation: rotation.into(),
            run: run.into(),
            path,
            state: RunState::InProgress,
            assets_dir: assets_dir.display().to_string(),
            started_at: now(),
            finished_at: None,
            fingerprints: BTreeMap::new(),
            origins: BTreeMap::new(),
            phases: Vec::new(),
            events: Vec::new(),
        };
        let run = RunDir { dir, journal };
        run.save()?;
        Ok(run)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    pub fn save(&self) -> Result<()> {
        let path = self.journal_path();
        let text = serde_json::to_vec_pretty(&self.journal).expect("a journal serializes");
        write_atomic(&path, &text, 0o600).map_err(|e| Error::JournalIo { path, source: e })
    }

    /// Removes the temp dirs of children (values, plan and kubeconfig files) a killed
    /// invocation left in the run's folder.
    pub fn remove_scratch(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.path().is_dir()
                && ["values-", "plan-", "kubeconfig-"].iter().any(|p| name.starts_with(p))
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    pub fn backup_path(&self, name: &str) -> PathBuf {
        self.dir.join(BACKUP_DIR).join(name)
    }

    /// Keeps `bytes` as backup `name` (0600); a name with folders (`cluster-assets/tls/x`)
    /// gets them, each 0700.
    pub fn write_backup(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.backup_path(name);
        let parent = path.parent().unwrap_or(&self.dir);
        private_dir(parent)
            .and_then(|()| write_atomic(&path, bytes, 0o600))
            .map_err(|e| Error::JournalIo { path: path.clone(), source: e })?;
        Ok(path)
    }

    pub fn phase_done(&self, name: &str) -> bool {
        self.journal.phases.iter().any(|p| p.name == name && p.outcome == PhaseOutcome::Done)
    }

    pub fn begin_phase(&mut self, name: &str) -> Result<()> {
        self.journal.phases.push(PhaseRecord {
            name: name.into(),
            started_at: now(),
            finished_at: None,
            outcome: PhaseOutcome::Running,
            message: None,
        });
        self.save()
    }

    /// Ends the phase begun last under `name`.
    pub fn end_phase(
        &mut self,
        name: &str,
        outcome: PhaseOutcome,
        message: Option<String>,
    ) -> Result<()> {
        if let Some(record) = self
            .journal
            .phases
            .iter_mut()
            .rev()
            .find(|p| p.name == name && p.outcome == PhaseOutcome::Running)
        {
            record.finished_at = Some(now());
            record.outcome = outcome;
            record.message = message;
        }
        self.save()
    }

    /// Records where the run found `name` (see [`Journal::origins`]).
    pub fn note_origin(&mut self, name: &str, origin: &str) -> Result<()> {
        self.journal.origins.insert(name.into(), origin.into());
        self.save()
    }

    /// When phase `name` first began in this run (an interrupted phase begins again on a
    /// re-run; what it did before can be recognised by being later than this).
    pub fn phase_first_began(&self, name: &str) -> Option<jiff::Timestamp> {
        let first = self.journal.phases.iter().find(|p| p.name == name)?;
        first.started_at.parse().ok()
    }

    /// The phase still marked running (a run that was killed, or is being interrupted).
    pub fn running_phase(&self) -> Option<String> {
        self.journal
            .phases
            .iter()
            .rev()
            .find(|p| p.outcome == PhaseOutcome::Running)
            .map(|p| p.name.clone())
    }

    /// Records a step as started; returns its index for [`RunDir::end_event`].
    pub fn begin_event(&mut self, phase: &str, kind: StepKind, what: &str) -> Result<usize> {
        self.journal.events.push(Event {
            at: now(),
            phase: phase.into(),
            kind,
            what: what.into(),
            outcome: "started".into(),
        });
        self.save()?;
        Ok(self.journal.events.len() - 1)
    }

    pub fn end_event(&mut self, index: usize, outcome: &str) -> Result<()> {
        if let Some(event) = self.journal.events.get_mut(index) {
            event.outcome = outcome.into();
        }
        self.save()
    }

    pub fn finish(&mut self) -> Result<()> {
        self.journal.state = RunState::Finished;
        self.journal.finished_at = Some(now());
        self.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_round_trips_and_the_latest_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("certrotate");
        let name = RunDir::new_name(&root, "aggregation");
        let mut run =
            RunDir::create(&root, dir.path(), "aggregation", &name, RunPath::NotExpired).unwrap();
        run.begin_phase("backup").unwrap();
        let e = run.begin_event("backup", StepKind::File, "copy").unwrap();
        run.end_event(e, "ok").unwrap();
        run.end_phase("backup", PhaseOutcome::Done, None).unwrap();
        let again = RunDir::latest(&root, "aggregation").unwrap().unwrap();
        assert!(again.phase_done("backup"));
        assert_eq!(again.journal.events[0].outcome, "ok");
        assert_eq!(again.journal.state, RunState::InProgress);
        assert!(RunDir::latest(&root, "webhook").unwrap().is_none());
    }

    #[test]
    fn a_run_folder_whose_creation_was_cut_off_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("certrotate");
        let name = "aggregation-20260101T000000Z";
        RunDir::create(&root, dir.path(), "aggregation", name, RunPath::NotExpired).unwrap();
        // Killed inside the next run's creation: its folder exists, its journal does not.
        private_dir(&root.join("aggregation-20260102T000000Z").join(BACKUP_DIR)).unwrap();
        let latest = RunDir::latest(&root, "aggregation").unwrap().unwrap();
        assert_eq!(latest.journal.run, name);
        // Only a cut-off folder: no run at all.
        let other = dir.path().join("other");
        private_dir(&other.join("aggregation-20260103T000000Z")).unwrap();
        assert!(RunDir::latest(&other, "aggregation").unwrap().is_none());
    }

    #[test]
    fn a_folder_with_backups_but_no_journal_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("certrotate");
        let backups = root.join("aggregation-20260102T000000Z").join(BACKUP_DIR);
        private_dir(&backups).unwrap();
        std::fs::write(backups.join("aggregation-ca.crt"), "x").unwrap();
        let err = RunDir::latest(&root, "aggregation").unwrap_err().to_string();
        assert!(err.contains("journal.json") && err.contains("move the folder aside"), "{err}");
    }
}
