//! The phases of the aggregation rotation, one module each: a phase's steps (one list for the
//! dry run and the real run, so the plan printed is the plan run), its "already done?" check
//! from the real state, its actions and what it verifies are all in its own file. What
//! several phases read of the real state is in [`state`], the steps several phases take in
//! [`actions`].
//!
//! A new phase: its module here, its variant in [`Phase`] and its line in [`unit`] (and its
//! place in [`super::Aggregation`]'s `path`).

mod actions;
mod apply;
mod backup;
mod bundle;
mod ca;
mod cleanup;
mod client;
mod restart;
mod state;

use super::Phase;
use crate::assets::{self, TerraformResources};
use crate::rotation::engine::PhaseUnit;

pub const CA_CERT: &str = "tls/aggregation-ca.crt";
pub const CA_KEY: &str = "tls/aggregation-ca.key";
pub const CLIENT_CERT: &str = "tls/aggregation-client.crt";
pub const CLIENT_KEY: &str = "tls/aggregation-client.key";
const RELEASE: &str = "kube-apiserver";
/// The chart lokoctl unpacked into the asset dir, inside `cluster-assets/`.
const CHART: &str = "charts/kube-system/kube-apiserver";
pub const NAMESPACE: &str = "kube-system";
pub const SECRET: &str = "kube-apiserver";
const AUTH_CONFIGMAP: &str = "extension-apiserver-authentication";
const AUTH_KEY: &str = "requestheader-client-ca-file";

/// The module of each phase: the one place the procedure dispatches from.
pub fn unit(phase: Phase) -> &'static dyn PhaseUnit {
    match phase {
        Phase::Backup => &backup::Backup,
        Phase::Ca => &ca::Ca,
        Phase::Bundle => &bundle::Bundle,
        Phase::Restart => &restart::Restart,
        Phase::Client => &client::Client,
        Phase::Apply => &apply::Apply,
        Phase::Cleanup => &cleanup::Cleanup,
    }
}

/// The Terraform resources of the aggregation CA and client certificate, from the asset dir
/// model (whose addresses a test checks against real state).
fn resources(credential: &str) -> &'static TerraformResources {
    &assets::credential(credential)
        .expect("the asset dir model has the aggregation credentials")
        .terraform
}

fn ca_key() -> &'static str {
    resources("aggregation-ca").key
}

fn ca_cert() -> &'static str {
    resources("aggregation-ca").cert.expect("the aggregation CA has a certificate")
}

fn client_key() -> &'static str {
    resources("aggregation-client").key
}

fn client_cert() -> &'static str {
    resources("aggregation-client").cert.expect("the aggregation client has a certificate")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rotation::engine::Procedure as _;
    use crate::rotation::plan::StepKind;
    use crate::rotation::step::testing;
    use crate::tools::Recorder;

    /// Every step of every phase, on both paths and with and without a `--timeout`: a
    /// command step's plan line, argv and folder are those of the command the real run builds
    /// (for a recording runner), so `--dry-run` shows what runs.
    #[tokio::test]
    async fn every_command_step_is_planned_as_it_runs() {
        for expired in [false, true] {
            for timeout in [Duration::ZERO, Duration::from_secs(600)] {
                let tmp = tempfile::tempdir().unwrap();
                let recorder = Recorder::default();
                let ctx = testing::ctx(tmp.path(), expired, timeout, &recorder);
                let finale = super::super::Aggregation::finale();
                let phases = super::super::Aggregation::path(expired).iter().chain(finale.iter());
                let mut commands = 0;
                for &phase in phases {
                    for planned in unit(phase).steps(&ctx) {
                        let cmd = planned.action.command(&ctx).unwrap();
                        assert_eq!(
                            cmd.is_some(),
                            planned.step.kind == StepKind::Command,
                            "{phase:?}: {:?}",
                            planned.step
                        );
                        if let Some(cmd) = cmd {
                            testing::assert_runs_as_planned(&planned.step, &cmd, &recorder).await;
                            commands += 1;
                        }
                    }
                }
                assert_eq!(commands, if expired { 4 } else { 8 });
                // The drifts the plan once had: terraform's -no-color, helm's timeout under
                // `--timeout 0`, the kubeconfig helm gets.
                let ran: Vec<String> = recorder.calls().into_iter().map(|c| c.line).collect();
                let taint = ran.iter().find(|l| l.contains(" taint ")).unwrap();
                assert!(taint.contains("-no-color"), "{taint}");
                if expired {
                    continue;
                }
                let upgrade = ran.iter().find(|l| l.contains(" upgrade ")).unwrap();
                let helm_timeout = if timeout.is_zero() { "876000h" } else { "600s" };
                assert!(upgrade.contains(&format!("--timeout {helm_timeout} ")), "{upgrade}");
                assert!(upgrade.contains("--kubeconfig <0600 kubeconfig"), "{upgrade}");
                assert!(upgrade.contains("context c (cluster s, user u)"), "{upgrade}");
            }
        }
    }
}
