//! The phases of `renew`, one module each (its steps, its "already done?" check from the
//! real state, its actions and its verification; [`super::Renew`] dispatches to them); this
//! module holds what they share: the actions, the commands they run, the run's kept state.

pub mod backup;
pub mod certificates;
pub mod taint;

use crate::error::{Error, Result};
use crate::rotation::context::Ctx;
use crate::tools::Command;
use crate::tools::terraform::State;

/// What one step does when it runs.
#[derive(Debug, Clone)]
pub enum Action {
    /// Copy tls/, auth/ and the chart values holding certificates or keys into the backup.
    KeepFiles,
    /// `terraform state pull` into the backup (0600: it holds every private key).
    KeepState,
    /// The backups read back equal.
    CheckBackup,
    /// `terraform taint <module>.<resource>`, unless the state shows it tainted or re-issued.
    Taint(&'static str),
    /// Every address of the list is tainted or re-issued.
    CheckTainted,
    /// `terraform apply -parallelism=1`.
    Apply,
    /// The new certificates: files equal the state, new, chained, keys matching, CA keys kept.
    CheckCertificates,
}

/// The command a command step runs, built as the real run builds it; `None` for a step that
/// runs none. The plan renders each of these from the same builders.
pub fn run_command(ctx: &Ctx, action: &Action) -> Result<Option<Command>> {
    let terraform = || ctx.terraform();
    Ok(Some(match action {
        Action::KeepState => terraform()?.pull_command(),
        Action::Taint(resource) => terraform()?.taint_command(&ctx.addr(resource)),
        Action::Apply => terraform()?.apply_one_at_a_time_command(),
        Action::KeepFiles
        | Action::CheckBackup
        | Action::CheckTainted
        | Action::CheckCertificates => return Ok(None),
    }))
}

/// The state as the run's backup kept it, before anything was tainted; `None` before the
/// run has one (a phase asked for with no run in progress).
fn kept_state(ctx: &Ctx) -> Result<Option<State>> {
    let Some(run) = &ctx.run else { return Ok(None) };
    let path = run.backup_path(backup::STATE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Journal { path: path.clone(), reason: e.to_string() })?;
    State::parse(&text).map(Some).map_err(|reason| Error::Journal { path, reason })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::renew::{Phase, Renew};
    use crate::rotation::engine::Procedure as _;
    use crate::rotation::step::testing;
    use crate::tools::Recorder;

    /// Every step of every phase, with aggregation on and off: a command step's plan line,
    /// argv and folder are those of the command the real run builds (for a recording
    /// runner), so `--dry-run` shows what runs.
    #[tokio::test]
    async fn every_command_step_is_planned_as_it_runs() {
        for aggregation in [true, false] {
            let tmp = tempfile::tempdir().unwrap();
            let recorder = Recorder::default();
            let ctx = testing::ctx(tmp.path(), false, Duration::from_secs(600), &recorder);
            if aggregation {
                let tls = ctx.asset("tls");
                std::fs::create_dir_all(&tls).unwrap();
                std::fs::write(tls.join("aggregation-ca.crt"), "").unwrap();
            }
            let phases = [Phase::Backup, Phase::Taint, Phase::Certificates];
            let planned = phases.iter().flat_map(|&p| Renew::steps(&ctx, p)).map(|p| {
                let cmd = run_command(&ctx, &p.action).unwrap();
                (p.step, cmd)
            });
            let commands = testing::check_commands_planned(planned, &recorder).await;
            let taints = if aggregation { 19 } else { 16 };
            assert_eq!(commands, 1 + taints + 1, "aggregation {aggregation}");
            let ran: Vec<String> = recorder.calls().into_iter().map(|c| c.line).collect();
            let apply = ran.iter().find(|l| l.contains(" apply ")).unwrap();
            assert!(apply.contains("-auto-approve -input=false -parallelism=1"), "{apply}");
            assert!(!apply.contains("-target"), "{apply}");
            assert_eq!(ran.iter().filter(|l| l.contains(" taint ")).count(), taints);
            assert!(ran.iter().any(|l| l.contains(" state pull")), "{ran:?}");
        }
    }
}
