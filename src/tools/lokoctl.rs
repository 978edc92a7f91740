//! `lokoctl cluster apply`, run in the config dir (the folder with the `*.lokocfg`), which the
//! engine has checked names this asset dir ([`super::lokocfg::check_names`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cluster_env::ClusterEnv;
use super::{Command, Program, Runner};
use crate::error::{Error, Result};

/// lokoctl's flags bound through viper with `AutomaticEnv`: set in the caller's environment
/// they would make it read another lokocfg than the one checked.
const LOKOCFG_VARS: [&str; 2] = ["LOKOCFG", "LOKOCFG-VARS"];

/// The flags of a `lokoctl cluster apply` beyond `--confirm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyFlags {
    /// `--skip-pre-update-health-check`: where the rotation in progress (or an expired
    /// certificate) is exactly what makes the check fail, or a release left pending was
    /// rolled back by the step before.
    pub skip_health_check: bool,
    /// `--upgrade-kubelets`: the kubelet chart too (its `kubernetesCACert`), as lokoctl's own
    /// `cluster certificate rotate` does.
    pub upgrade_kubelets: bool,
}

impl ApplyFlags {
    /// The health check skipped or not; the kubelets left as they are.
    pub fn skipping_health_check(skip: bool) -> Self {
        Self { skip_health_check: skip, upgrade_kubelets: false }
    }
}

#[derive(Clone)]
pub struct Lokoctl {
    program: Program,
    runner: Runner,
    config_dir: PathBuf,
    /// `None` only for a dry run's plan (nothing runs without the verified cluster).
    cluster: Option<Arc<ClusterEnv>>,
}

impl Lokoctl {
    pub fn new(
        program: Program,
        runner: Runner,
        config_dir: &Path,
        cluster: Option<Arc<ClusterEnv>>,
    ) -> Self {
        Self { program, runner, config_dir: config_dir.to_path_buf(), cluster }
    }

    /// `--confirm`: on an existing cluster lokoctl otherwise asks on stdin and, with no
    /// answer, cancels silently with exit code 0. The health check is skipped where the
    /// rotation in progress (or an expired certificate) is exactly what makes it fail.
    /// lokoctl takes the cluster's kubeconfig from the asset dir its lokocfg names; where it
    /// reads `KUBECONFIG` (and helm's variables, through helm's library) it gets the verified
    /// cluster alone.
    pub fn apply_command(&self, flags: ApplyFlags) -> Result<Command> {
        let cluster = self.cluster.as_ref().ok_or_else(|| {
            Error::Wiring("lokoctl set up without the verified cluster ran a command".into())
        })?;
        let cmd = LOKOCFG_VARS
            .iter()
            .fold(self.runner.command(&self.program), |cmd, var| cmd.env_remove(var));
        Ok(Self::apply_args(cluster.confine(cmd)?, &self.config_dir, flags))
    }

    /// [`Lokoctl::apply_command`] as the plan shows it: the same program, folder and
    /// arguments (the environment is not shown), nothing written.
    pub fn plan_apply(&self, flags: ApplyFlags) -> Command {
        Self::apply_args(self.runner.command(&self.program), &self.config_dir, flags)
    }

    fn apply_args(cmd: Command, config_dir: &Path, flags: ApplyFlags) -> Command {
        let cmd = cmd.dir(config_dir).args(["cluster", "apply", "--confirm"]);
        let cmd =
            if flags.skip_health_check { cmd.arg("--skip-pre-update-health-check") } else { cmd };
        if flags.upgrade_kubelets { cmd.arg("--upgrade-kubelets") } else { cmd }
    }

    pub async fn apply(&self, flags: ApplyFlags) -> Result<()> {
        let cmd = self.apply_command(flags)?;
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
