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
    /// answer, cancels silently with exit code 0. The health check is skipped where the
    /// rotation in progress (or an expired certificate) is exactly what makes it fail.
    pub fn apply_command(&self, skip_health_check: bool) -> Command {
        let cmd = self
            .runner
            .command(&self.program)
            .dir(&self.config_dir)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["cluster", "apply", "--confirm"]);
        if skip_health_check { cmd.arg("--skip-pre-update-health-check") } else { cmd }
    }

    pub async fn apply(&self, skip_health_check: bool) -> Result<()> {
        let cmd = self.apply_command(skip_health_check);
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
