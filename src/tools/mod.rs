//! The external programs a rotation drives: terraform (the PKI), helm (the control plane) and
//! lokoctl (the whole cluster), all through one subprocess wrapper.

pub mod cluster_env;
pub mod helm;
pub mod lokocfg;
pub mod lokoctl;
pub mod process;
pub mod redact;
pub mod terraform;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use process::{Command, Outcome, Program, Recorded, Recorder};

/// Margin over `--timeout` for a child's own bound: helm's `--wait --timeout` must end first
/// and report why.
const CHILD_TIMEOUT_MARGIN: Duration = Duration::from_secs(120);

/// What every child of one rotation run shares: the run marker, `-v` streaming, the bound.
#[derive(Debug, Clone)]
pub struct Runner {
    marker: String,
    scratch: PathBuf,
    echo: bool,
    timeout: Duration,
    /// Set: commands are recorded, not run (tests of the engine and of the plans).
    recorder: Option<process::Recorder>,
}

impl Runner {
    /// `marker` goes into every child's environment; `scratch` (the run's private folder)
    /// holds the temp files of children (values files, plan files).
    pub fn new(marker: &str, scratch: &Path, verbose: u8, timeout: Duration) -> Self {
        Self {
            marker: marker.into(),
            scratch: scratch.into(),
            echo: verbose > 0,
            timeout,
            recorder: None,
        }
    }

    /// A runner whose commands are recorded in `recorder` instead of run.
    pub fn recording(mut self, recorder: &process::Recorder) -> Self {
        self.recorder = Some(recorder.clone());
        self
    }

    /// A private temp dir inside the run's folder, removed on drop (a killed run's leftovers
    /// stay inside the 0700 run folder, not in /tmp).
    pub fn private_temp(&self, prefix: &str) -> crate::error::Result<tempfile::TempDir> {
        tempfile::Builder::new().prefix(prefix).tempdir_in(&self.scratch).map_err(|e| {
            crate::error::Error::TempFile {
                place: format!("in {}", self.scratch.display()),
                source: e,
            }
        })
    }

    /// `bytes` as file `name` (0600) of a new [`Runner::private_temp`]: values and kubeconfigs
    /// for children, which hold keys. The file goes when the returned dir is dropped.
    pub fn private_file(
        &self,
        prefix: &str,
        name: &str,
        bytes: &[u8],
    ) -> crate::error::Result<tempfile::TempDir> {
        let dir = self.private_temp(prefix)?;
        let path = dir.path().join(name);
        crate::rotation::files::write_atomic(&path, bytes, 0o600).map_err(|e| {
            crate::error::Error::TempFile { place: path.display().to_string(), source: e }
        })?;
        Ok(dir)
    }

    /// `<run folder>/<folder>`, where [`Runner::keep_private`] keeps files.
    pub fn kept_folder(&self, folder: &str) -> PathBuf {
        self.scratch.join(folder)
    }

    /// Keeps `bytes` as `<run folder>/<folder>/<name>` (0600, in a 0700 folder), atomically.
    pub fn keep_private(
        &self,
        folder: &str,
        name: &str,
        bytes: &[u8],
    ) -> crate::error::Result<PathBuf> {
        use crate::rotation::files::{private_dir, write_atomic};
        let dir = self.scratch.join(folder);
        let path = dir.join(name);
        private_dir(&dir)
            .and_then(|()| write_atomic(&path, bytes, 0o600))
            .map_err(|e| crate::error::Error::JournalIo { path: path.clone(), source: e })?;
        Ok(path)
    }

    /// `--timeout` (zero: no limit).
    pub fn wait_limit(&self) -> Duration {
        self.timeout
    }

    /// `--timeout` as helm's `--timeout` value; helm has no "no limit", so `0` becomes a
    /// century.
    pub fn helm_timeout(&self) -> String {
        if self.timeout.is_zero() {
            "876000h".into()
        } else {
            format!("{}s", self.timeout.as_secs())
        }
    }

    pub fn command(&self, program: &Program) -> Command {
        // `--timeout 0` means no limit, for the children too.
        let bound = if self.timeout.is_zero() {
            Duration::MAX
        } else {
            self.timeout.saturating_add(CHILD_TIMEOUT_MARGIN)
        };
        Command::new(program, bound)
            .env(process::RUN_ENV, &self.marker)
            .echo(self.echo)
            .recorded_by(self.recorder.clone())
    }
}
