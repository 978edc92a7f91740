//! The phases of `renew`, one module each: a phase's steps (one list for the dry run and the
//! real run), its "already done?" check from the real state, its actions and what it
//! verifies. What they share, the run's kept state, is here.
//!
//! A new phase: its module here, its variant in [`Phase`] and its line in [`unit`] (and its
//! place in [`super::Renew`]'s `path`).

pub mod backup;
pub mod certificates;
pub mod control_plane;
pub mod etcd;
pub mod restart;
pub mod taint;
pub mod tokens;
pub mod verify;

use super::Phase;
use crate::error::{Error, Result};
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;
use crate::tools::terraform::State;

/// The module of each phase: the one place the procedure dispatches from.
pub fn unit(phase: Phase) -> &'static dyn PhaseUnit {
    match phase {
        Phase::Backup => &backup::Backup,
        Phase::Taint => &taint::Taint,
        Phase::Certificates => &certificates::Certificates,
        Phase::Etcd => &etcd::Etcd,
        Phase::ControlPlane => &control_plane::ControlPlane,
        Phase::Tokens => &tokens::Tokens,
        Phase::Restart => &restart::Restart,
        Phase::Verify => &verify::Verify,
    }
}

/// Whether this run's `certificates` renewed the kube CA certificate: the file is no longer
/// the one the backup recorded (`oldKubeCa`). Before that, the cluster holds the files
/// already, and no later phase can be found done from it.
fn renewed(ctx: &Ctx) -> Result<bool> {
    let Some(run) = &ctx.run else { return Ok(false) };
    let old = certificates::fingerprint_name("old", "kube-ca");
    let Some(old) = run.journal.fingerprints.get(&old) else { return Ok(false) };
    Ok(&ctx.file_cert(KUBE_CA)?.sha256 != old)
}

/// The rendered kube-apiserver values (the controller count, the etcd members).
const KUBE_APISERVER_VALUES: &str = "charts/kube-system/kube-apiserver.yaml";

/// The kube CA certificate of the asset dir.
const KUBE_CA: &str = "tls/ca.crt";

/// The state as the run's backup kept it, before anything was tainted; `None` before the
/// run has one (a phase asked for with no run in progress).
pub(crate) fn kept_state(ctx: &Ctx) -> Result<Option<State>> {
    let Some(run) = &ctx.run else { return Ok(None) };
    let path = run.backup_path(backup::STATE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::JournalIo { path: path.clone(), source: e })?;
    State::parse(&text).map(Some).map_err(|reason| Error::Journal { path, reason })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
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
            use crate::rotation::engine::Procedure as _;
            let phases = super::super::Renew::path(false);
            let planned = phases.iter().flat_map(|&p| unit(p).steps(&ctx)).map(|p| {
                let cmd = p.action.command(&ctx).unwrap();
                (p.step, cmd)
            });
            let commands = testing::check_commands_planned(planned, &recorder).await;
            let taints = if aggregation { 19 } else { 16 };
            // state pull, the taints, the apply, helm's list of pending releases, lokoctl.
            assert_eq!(commands, 1 + taints + 1 + 1 + 1, "aggregation {aggregation}");
            let ran: Vec<String> = recorder.calls().into_iter().map(|c| c.line).collect();
            let apply = ran.iter().find(|l| l.contains(" apply ")).unwrap();
            assert!(apply.contains("-auto-approve -input=false -parallelism=1"), "{apply}");
            assert!(!apply.contains("-target"), "{apply}");
            assert_eq!(ran.iter().filter(|l| l.contains(" taint ")).count(), taints);
            assert!(ran.iter().any(|l| l.contains(" state pull")), "{ran:?}");
            let lokoctl = ran.iter().find(|l| l.contains("lokoctl")).unwrap();
            assert!(
                lokoctl.contains(
                    "lokoctl cluster apply --confirm --skip-pre-update-health-check --upgrade-kubelets"
                ),
                "{lokoctl}"
            );
            let helm = ran.iter().position(|l| l.contains("helm")).unwrap();
            let lokoctl = ran.iter().position(|l| l.contains("lokoctl")).unwrap();
            assert!(helm < lokoctl, "pending releases are recovered before lokoctl: {ran:?}");
        }
    }
}
