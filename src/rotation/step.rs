//! A step of a phase as a value: what it is (a command, an API call, a check, a file write),
//! how the plan shows it, and, for a command, the exact program, arguments and folder it runs;
//! beside it ([`Planned`]), the [`Action`] that runs it.
//!
//! A command step's plan line is rendered from the [`Command`] itself (values files and the
//! kubeconfig as placeholders: they exist only while a run does), so the dry run and the real
//! run cannot drift apart; the `-o json` plan carries the same `argv` and `dir` as data.

use futures::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};

use super::context::Ctx;
use crate::error::Result;
use crate::tools::Command;

/// What a phase's step or check is doing: boxed, so that every phase's actions, each a type
/// of its own module, run through one `dyn` interface.
pub type Running<'a, T> = LocalBoxFuture<'a, Result<T>>;

/// What a step does when it runs.
pub trait Action {
    /// Runs the step; returns what the journal records of it.
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String>;

    /// The command a command step runs, built as the real run builds it (the plan renders
    /// its line from the same builders); `None` for a step that runs none.
    fn command(&self, _ctx: &Ctx) -> Result<Option<Command>> {
        Ok(None)
    }
}

/// A step of a phase: how it is described, and what it does when run.
pub struct Planned {
    pub step: Step,
    pub action: Box<dyn Action>,
}

impl Planned {
    pub fn new(
        kind: StepKind,
        description: impl Into<String>,
        action: impl Action + 'static,
    ) -> Self {
        Self { step: Step::new(kind, description), action: Box::new(action) }
    }

    /// A command step, shown as `cmd` renders itself, then `note`.
    pub fn command(cmd: &Command, note: &str, action: impl Action + 'static) -> Self {
        Self { step: Step::command(cmd, note), action: Box::new(action) }
    }
}

/// Every release a killed helm or lokoctl left `pending-*`, rolled back to its latest
/// revision: lokoctl, run with `--skip-pre-update-health-check`, would not. Both rotations
/// take this step before their lokoctl.
pub struct RecoverReleases;

impl RecoverReleases {
    pub fn planned(ctx: &Ctx) -> Planned {
        let (list, then) = ctx.recover_releases_command();
        Planned::command(&list, &then, Self)
    }
}

impl Action for RecoverReleases {
    fn command(&self, ctx: &Ctx) -> Result<Option<Command>> {
        Ok(Some(ctx.helm()?.list_pending_command()?))
    }

    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        Box::pin(async move { ctx.helm()?.recover_pending_releases().await })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Command,
    Api,
    Check,
    File,
}

impl StepKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Command => "run",
            Self::Api => "api",
            Self::Check => "check",
            Self::File => "file",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub kind: StepKind,
    pub description: String,
    /// A command step: the program as it will be invoked and every argument (placeholders
    /// for files that exist only while it runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// A command step: the folder it runs in, when not the tool's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

impl Step {
    pub fn new(kind: StepKind, description: impl Into<String>) -> Self {
        Self { kind, description: description.into(), argv: None, dir: None }
    }

    /// A command step: its line rendered from `cmd`, then `note` (what it skips, what
    /// follows), which starts with its own separator.
    pub fn command(cmd: &Command, note: &str) -> Self {
        Self {
            kind: StepKind::Command,
            description: format!("{}{note}", cmd.plan_line()),
            argv: Some(cmd.argv()),
            dir: cmd.workdir().map(|d| d.display().to_string()),
        }
    }
}

/// What the tests of the plans share: a context whose programs are found (at made-up paths)
/// and record what they would run, on the verified cluster of a made-up kubeconfig.
#[cfg(test)]
pub mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Step, StepKind};
    use crate::assets::AssetDir;
    use crate::rotation::context::Ctx;
    use crate::tools::cluster_env::ClusterEnv;
    use crate::tools::helm::Helm;
    use crate::tools::lokoctl::Lokoctl;
    use crate::tools::terraform::Terraform;
    use crate::tools::{Command, Program, Recorder, Runner};

    pub const MODULE: &str = "module.aws-x.module.bootkube";

    /// A context for path `expired` and `--timeout timeout`, its folders in `tmp`.
    pub fn ctx(
        tmp: &std::path::Path,
        expired: bool,
        timeout: Duration,
        recorder: &Recorder,
    ) -> Ctx {
        let root = tmp.join("assets");
        std::fs::create_dir_all(root.join("cluster-assets")).unwrap();
        let scratch = tmp.join("run");
        std::fs::create_dir_all(&scratch).unwrap();
        let assets = AssetDir::open(&root).unwrap();
        let runner = Runner::new("run@assets", &scratch, 0, timeout).recording(recorder);
        let program =
            |name: &'static str| Program { name, path: format!("/opt/bin/{name}").into() };
        let cluster = Arc::new(ClusterEnv::from_parts(
            b"{}",
            "context c (cluster s, user u)",
            runner.clone(),
        ));
        let terraform_dir = root.join("terraform");
        let config_dir = tmp.to_path_buf();
        Ctx {
            module: Some(MODULE.into()),
            conn: None,
            terraform: Some(Terraform::new(
                program("terraform"),
                terraform_dir.clone(),
                runner.clone(),
            )),
            helm: Some(Helm::new(program("helm"), runner.clone(), Some(cluster.clone()))),
            lokoctl: Some(Lokoctl::new(
                program("lokoctl"),
                runner.clone(),
                &config_dir,
                Some(cluster),
            )),
            run: None,
            expired,
            timeout,
            progress: None,
            progress_index: 0,
            terraform_dir,
            config_dir,
            runner,
            extension_servers: Some(vec!["deployment/metrics-server".into()]),
            assets,
        }
    }

    /// Runs each command step of `steps` (a step, and the command its action builds: `None`
    /// for a step that runs none) through `recorder` as [`assert_runs_as_planned`] does;
    /// returns how many commands ran.
    pub async fn check_commands_planned(
        steps: impl IntoIterator<Item = (Step, Option<Command>)>,
        recorder: &Recorder,
    ) -> usize {
        let mut commands = 0;
        for (step, cmd) in steps {
            assert_eq!(cmd.is_some(), step.kind == StepKind::Command, "{step:?}");
            if let Some(cmd) = cmd {
                assert_runs_as_planned(&step, &cmd, recorder).await;
                commands += 1;
            }
        }
        commands
    }

    /// Asserts that command step `step` is `cmd` as a recording runner receives it: the
    /// plan's line starts with the line run, and its argv and folder are the ones run.
    pub async fn assert_runs_as_planned(step: &Step, cmd: &Command, recorder: &Recorder) {
        assert_eq!(step.kind, StepKind::Command, "{step:?}");
        let before = recorder.calls().len();
        cmd.run().await.unwrap();
        let calls = recorder.calls();
        let ran = calls.get(before).expect("the command was recorded");
        assert!(
            step.description.starts_with(&ran.line),
            "plan line:\n  {}\nrun:\n  {}",
            step.description,
            ran.line
        );
        assert_eq!(step.argv.as_ref(), Some(&ran.argv), "{step:?}");
        assert_eq!(step.dir, ran.dir.as_ref().map(|d| d.display().to_string()), "{step:?}");
    }
}
