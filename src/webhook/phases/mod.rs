//! The phases of the webhook certificate rotation, one module each: a phase's steps (one list
//! for the dry run and the real run), its "already done?" check from the real state, its
//! actions and what it verifies. What several phases read (the certificate of the values
//! file, the backup, the state, the cluster) is here.
//!
//! A new phase: its module here, its variant in [`Phase`] and its line in [`unit`] (and its
//! place in [`super::Webhook`]'s `path`).

mod backup;
mod certificate;
mod restart;
mod unhook;
mod verify;

use super::Phase;
use crate::assets::{self, LOKOMOTIVE_VALUES};
use crate::error::{Error, Result};
use crate::k8s::objects;
use crate::pki::{self, CertInfo};
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;

pub const CONFIGURATION: &str = "admission-webhook-server";
pub const NAMESPACE: &str = "lokomotive-system";
const DEPLOYMENT: &str = "admission-webhook-server";
const SECRET: &str = "admission-webhook-server";
/// Backups: the values file (it holds the key, hence 0600 like every backup) and, on the
/// expired path, the webhook configuration the run deletes.
pub const VALUES_BACKUP: &str = "lokomotive.yaml";
pub const MANIFEST_BACKUP: &str = "mutatingwebhookconfiguration.json";

/// The module of each phase: the one place the procedure dispatches from.
pub fn unit(phase: Phase) -> &'static dyn PhaseUnit {
    match phase {
        Phase::Backup => &backup::Backup,
        Phase::Unhook => &unhook::Unhook,
        Phase::Certificate => &certificate::Certificate,
        Phase::Restart => &restart::Restart,
        Phase::Verify => &verify::Verify,
    }
}

/// The certificate's Terraform resource, from the asset dir model (whose addresses a test
/// checks against real state).
fn cert_resource() -> &'static str {
    let credential = assets::credential("admission-webhook").expect("the model has the webhook");
    credential.terraform.cert.expect("the webhook credential has a certificate")
}

/// The serving certificate and key in `lokomotive.yaml`.
pub fn values_pair(ctx: &Ctx) -> Result<(CertInfo, Vec<u8>)> {
    let path = ctx.asset(LOKOMOTIVE_VALUES);
    let text = String::from_utf8(ctx.read_asset(LOKOMOTIVE_VALUES)?).map_err(|_| {
        Error::BadInputFile { path: path.clone(), reason: "is not UTF-8 text".into() }
    })?;
    let (cert, key) = assets::parse_webhook_values(&text)
        .map_err(|reason| Error::BadInputFile { path: path.clone(), reason })?;
    let cert = pki::parse_one_cert(&cert).map_err(|p| Error::BadInputFile {
        path,
        reason: format!("webhook.servingCert: {}", p.0),
    })?;
    Ok((cert, key))
}

/// The certificate the run started from (its backup of `lokomotive.yaml`).
fn old_cert(ctx: &Ctx) -> Result<CertInfo> {
    let text = String::from_utf8(ctx.read_backup(VALUES_BACKUP)?).unwrap_or_default();
    let path = ctx.run()?.backup_path(VALUES_BACKUP);
    let (cert, _) = assets::parse_webhook_values(&text)
        .map_err(|reason| Error::Journal { path: path.clone(), reason })?;
    pki::parse_one_cert(&cert).map_err(|p| Error::Journal { path, reason: p.0 })
}

/// The state's serving certificate, and whether it is tainted.
async fn state_cert(ctx: &Ctx) -> Result<(CertInfo, bool)> {
    let state = ctx.terraform()?.state().await?;
    let address = ctx.addr(cert_resource());
    let unusable =
        |reason: String| Error::TerraformState { dir: ctx.terraform_dir.clone(), reason };
    let instance = state
        .instance(&address)
        .ok_or_else(|| unusable(format!("has no {address}: is --module right?")))?;
    let pem = instance.attributes.get("cert_pem").and_then(|v| v.as_str()).unwrap_or_default();
    let cert = pki::parse_one_cert(pem.as_bytes())
        .map_err(|p| unusable(format!("holds an unusable certificate at {address} ({})", p.0)))?;
    Ok((cert, instance.tainted))
}

/// What keeps the cluster from serving the certificate and key of `lokomotive.yaml`: the
/// Secret the webhook's pods mount, and the caBundle the API server trusts when it calls it.
pub async fn served_problem(ctx: &Ctx) -> Result<Option<String>> {
    let (file, key) = values_pair(ctx)?;
    let client = &ctx.conn()?.client;
    let served = objects::secret_certificates(client, NAMESPACE, SECRET, "cert.pem").await?;
    if served.first().map(|c| &c.sha256) != Some(&file.sha256) {
        return Ok(Some(format!("secret {NAMESPACE}/{SECRET} does not hold the new certificate")));
    }
    let served_key = objects::secret_bytes(client, NAMESPACE, SECRET, "key.pem").await?;
    if pki::private_key_half(&served_key).ok() != pki::private_key_half(&key).ok() {
        return Ok(Some(format!("secret {NAMESPACE}/{SECRET} key.pem is not the new key")));
    }
    let Some(bundles) = objects::mutating_webhook_ca_bundles(client, CONFIGURATION).await? else {
        return Ok(Some(format!("mutatingwebhookconfiguration {CONFIGURATION} does not exist")));
    };
    let trusted = bundles.iter().all(|pem| {
        pki::parse_certs(pem).is_ok_and(|certs| certs.iter().any(|c| c.sha256 == file.sha256))
    });
    if bundles.is_empty() || !trusted {
        return Ok(Some(format!("the caBundle of {CONFIGURATION} is not the new certificate")));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rotation::engine::Procedure as _;
    use crate::rotation::plan::StepKind;
    use crate::rotation::step::testing;
    use crate::tools::Recorder;

    /// Every command step of every phase, on both paths: planned as the real run builds it.
    #[tokio::test]
    async fn every_command_step_is_planned_as_it_runs() {
        for expired in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let recorder = Recorder::default();
            let ctx = testing::ctx(tmp.path(), expired, Duration::ZERO, &recorder);
            let mut commands = 0;
            for &phase in super::super::Webhook::path(expired) {
                for planned in unit(phase).steps(&ctx) {
                    let cmd = planned.action.command(&ctx).unwrap();
                    assert_eq!(cmd.is_some(), planned.step.kind == StepKind::Command, "{phase:?}");
                    if let Some(cmd) = cmd {
                        testing::assert_runs_as_planned(&planned.step, &cmd, &recorder).await;
                        commands += 1;
                    }
                }
            }
            assert_eq!(commands, 3);
            let lokoctl =
                recorder.calls().into_iter().find(|c| c.line.contains("lokoctl")).unwrap();
            assert_eq!(
                lokoctl.argv.last().map(String::as_str) == Some("--skip-pre-update-health-check"),
                expired
            );
        }
    }
}
