//! `lokoctl cluster apply`, run in the config dir (the folder with the `*.lokocfg`).

use std::path::{Path, PathBuf};

use super::{Command, Program, Runner};
use crate::error::{Error, Result};

pub struct Lokoctl {
    program: Program,
    runner: Runner,
    config_dir: PathBuf,
    kubeconfig: String,
}

impl Lokoctl {
    pub fn new(program: Program, runner: Runner, config_dir: &Path, kubeconfig: &str) -> Self {
        Self {
            program,
            runner,
            config_dir: config_dir.to_path_buf(),
            kubeconfig: kubeconfig.to_string(),
        }
    }

    /// `--confirm`: on an existing cluster lokoctl otherwise asks on stdin and, with no
    /// answer, cancels silently with exit code 0. The health check is skipped because a
    /// rotation in progress is exactly when it fails.
    pub fn apply_command(&self) -> Command {
        self.runner
            .command(&self.program)
            .dir(&self.config_dir)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["cluster", "apply", "--confirm", "--skip-pre-update-health-check"])
    }

    pub async fn apply(&self) -> Result<()> {
        let cmd = self.apply_command();
        let outcome = cmd.ok().await?;
        if outcome.output.to_lowercase().contains("cancelled") {
            return Err(Error::CommandFailed {
                line: cmd.line(),
                status: "cancelled the apply (exit code 0, nothing applied)".into(),
                tail: outcome.tail(),
            });
        }
        Ok(())
    }
}
