//! The phases of the webhook certificate rotation, as the steps each takes (one list for the
//! dry run and the real run).

use super::Phase;
use crate::assets::{self, LOKOMOTIVE_VALUES};
use crate::error::{Error, Result};
use crate::k8s::{objects, rollout};
use crate::pki::{self, CertInfo};
use crate::rotation::context::Ctx;
use crate::rotation::engine::Planned;
use crate::rotation::plan::StepKind;
use crate::tools::Command;

pub const CONFIGURATION: &str = "admission-webhook-server";
pub const NAMESPACE: &str = "lokomotive-system";
const DEPLOYMENT: &str = "admission-webhook-server";
const SECRET: &str = "admission-webhook-server";
/// Backups: the values file (it holds the key, hence 0600 like every backup) and, on the
/// expired path, the webhook configuration the run deletes.
pub const VALUES_BACKUP: &str = "lokomotive.yaml";
pub const MANIFEST_BACKUP: &str = "mutatingwebhookconfiguration.json";
/// The names the API server may use for the webhook's Service.
const SERVICE_NAMES: [&str; 5] = [
    "admission-webhook-server",
    "admission-webhook-server.lokomotive-system",
    "admission-webhook-server.lokomotive-system.svc",
    "admission-webhook-server.lokomotive-system.svc.cluster",
    "admission-webhook-server.lokomotive-system.svc.cluster.local",
];

/// The certificate's Terraform resource, from the asset dir model (whose addresses a test
/// checks against real state).
fn cert_resource() -> &'static str {
    let credential = assets::credential("admission-webhook").expect("the model has the webhook");
    credential.terraform.cert.expect("the webhook credential has a certificate")
}

#[derive(Debug, Clone, Copy)]
pub enum Action {
    Backup,
    DeleteConfiguration,
    Taint,
    RecoverReleases,
    Lokoctl,
    CheckNewCertificate,
    Restart,
    CheckServed,
    CheckAdmission,
}

pub fn steps(ctx: &Ctx, phase: Phase) -> Vec<Planned<Action>> {
    use Action as A;
    use StepKind as K;
    match phase {
        Phase::Backup => {
            let mut what = format!("copy {LOKOMOTIVE_VALUES} into the run's backup folder (0600)");
            if ctx.expired {
                what.push_str(&format!("; keep mutatingwebhookconfiguration {CONFIGURATION} as a manifest there"));
            }
            vec![Planned::new(K::File, what, A::Backup)]
        }
        Phase::Unhook => vec![Planned::new(
            K::Api,
            format!("DELETE mutatingwebhookconfiguration {CONFIGURATION} (an expired certificate makes every call to it fail; lokoctl creates it again)"),
            A::DeleteConfiguration,
        )],
        Phase::Certificate => {
            let (recover, then) = ctx.recover_releases_command();
            vec![
            Planned::command(
                &ctx.taint_command(cert_resource()),
                " (skipped when the state's certificate is already a new one)",
                A::Taint,
            ),
            Planned::command(&recover, &then, A::RecoverReleases),
            Planned::command(&ctx.plan_lokoctl(ctx.expired), "", A::Lokoctl),
            Planned::new(
                K::Check,
                format!("{LOKOMOTIVE_VALUES} holds a new certificate, equal to the state's, matching its key, signed by the kube CA, naming the five service names"),
                A::CheckNewCertificate,
            ),
        ]
        }
        Phase::Restart => vec![Planned::new(
            K::Api,
            format!("restart deployment/{DEPLOYMENT} -n {NAMESPACE} (kubectl rollout restart) and wait as kubectl rollout status"),
            A::Restart,
        )],
        Phase::Verify => vec![
            Planned::new(
                K::Check,
                format!("secret {NAMESPACE}/{SECRET} holds the new certificate and its key; mutatingwebhookconfiguration {CONFIGURATION} exists and its caBundle is the new certificate"),
                A::CheckServed,
            ),
            Planned::new(
                K::Api,
                "a real admission call: create a throw-away namespace, check its default ServiceAccount was mutated (automountServiceAccountToken: false), delete it".into(),
                A::CheckAdmission,
            ),
        ],
    }
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

fn old_cert(ctx: &Ctx) -> Result<CertInfo> {
    let text = String::from_utf8(ctx.read_backup(VALUES_BACKUP)?).unwrap_or_default();
    let path = ctx.run()?.backup_path(VALUES_BACKUP);
    let (cert, _) = assets::parse_webhook_values(&text)
        .map_err(|reason| Error::Journal { path: path.clone(), reason })?;
    pki::parse_one_cert(&cert).map_err(|p| Error::Journal { path, reason: p.0 })
}

/// The state's serving certificate.
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

pub async fn found_done(ctx: &Ctx, phase: Phase) -> Result<Option<String>> {
    match phase {
        Phase::Unhook => {
            let bundles =
                objects::mutating_webhook_ca_bundles(&ctx.conn()?.client, CONFIGURATION).await?;
            Ok(bundles
                .is_none()
                .then(|| format!("mutatingwebhookconfiguration {CONFIGURATION} is already gone")))
        }
        Phase::Certificate => {
            // Before a run's backup, which certificate is the old one is not known.
            if ctx.run.is_none() {
                return Ok(None);
            }
            let (state, tainted) = state_cert(ctx).await?;
            let (file, _) = values_pair(ctx)?;
            let new =
                !tainted && state.sha256 != old_cert(ctx)?.sha256 && file.sha256 == state.sha256;
            // lokoctl writes the files before its helm upgrade puts them in the cluster: a run
            // killed in between must run lokoctl again.
            if !new || served_problem(ctx).await?.is_some() {
                return Ok(None);
            }
            Ok(Some(format!(
                "the state, {LOKOMOTIVE_VALUES}, secret {NAMESPACE}/{SECRET} and the caBundle already hold a new certificate"
            )))
        }
        Phase::Backup | Phase::Restart | Phase::Verify => Ok(None),
    }
}

/// The command a command step runs, built as the real run builds it; `None` for a step
/// that runs none. The plan renders each of these from the same builders.
pub fn run_command(ctx: &Ctx, action: Action) -> Result<Option<Command>> {
    Ok(Some(match action {
        Action::Taint => ctx.terraform()?.taint_command(&ctx.addr(cert_resource())),
        Action::RecoverReleases => ctx.helm()?.list_pending_command()?,
        Action::Lokoctl => ctx.lokoctl()?.apply_command(ctx.expired)?,
        _ => return Ok(None),
    }))
}

pub async fn execute(ctx: &mut Ctx, phase: Phase, action: Action) -> Result<String> {
    let fail = |reason: String| Error::Verification { phase: phase.name(), reason };
    match action {
        Action::Backup => {
            let (cert, _) = values_pair(ctx)?;
            let bytes = ctx.read_asset(LOKOMOTIVE_VALUES)?;
            ctx.run_mut().write_backup(VALUES_BACKUP, &bytes)?;
            ctx.fingerprint("oldWebhook", &cert.sha256)?;
            if !ctx.expired {
                return Ok("backed up".into());
            }
            match objects::mutating_webhook_manifest(&ctx.conn()?.client, CONFIGURATION).await? {
                Some(manifest) => {
                    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
                    let path = ctx.run_mut().write_backup(MANIFEST_BACKUP, &text)?;
                    Ok(format!("backed up; webhook configuration kept in {}", path.display()))
                }
                None => Ok(format!(
                    "backed up; mutatingwebhookconfiguration {CONFIGURATION} did not exist"
                )),
            }
        }
        Action::DeleteConfiguration => {
            let deleted =
                objects::delete_mutating_webhook(&ctx.conn()?.client, CONFIGURATION).await?;
            Ok(format!("{deleted:?}"))
        }
        Action::Taint => {
            let address = ctx.addr(cert_resource());
            if ctx.terraform()?.state().await?.instance(&address).is_none() {
                return Ok(format!(
                    "skipped: the state has no {address} (destroyed by an interrupted apply); lokoctl's apply creates it"
                ));
            }
            let (state, tainted) = state_cert(ctx).await?;
            if tainted {
                return Ok(
                    "skipped: already tainted (an earlier run stopped before applying)".into()
                );
            }
            if state.sha256 != old_cert(ctx)?.sha256 {
                return Ok("skipped: the state already holds a new certificate".into());
            }
            let taint = run_command(ctx, action)?.expect("a taint runs a command");
            ctx.terraform()?.change(taint).await?;
            Ok("tainted".into())
        }
        Action::RecoverReleases => ctx.helm()?.recover_pending_releases().await,
        Action::Lokoctl => match lokoctl_apply(ctx).await {
            Ok(()) => Ok("applied".into()),
            Err(e) if ctx.expired => Err(Error::PhaseStopped {
                phase: phase.name(),
                reason: format!(
                    "{e}\nmutatingwebhookconfiguration {CONFIGURATION} is still deleted: fix the cause and run the same command again, or put the old configuration back with `kubectl certrotate webhook --restore-webhook`"
                ),
            }),
            Err(e) => Err(e),
        },
        Action::CheckNewCertificate => {
            let (file, key) = values_pair(ctx)?;
            let (state, _) = state_cert(ctx).await?;
            if file.sha256 == old_cert(ctx)?.sha256 {
                return Err(fail(format!("{LOKOMOTIVE_VALUES} still holds the old certificate")));
            }
            if file.sha256 != state.sha256 {
                return Err(fail(format!("{LOKOMOTIVE_VALUES} is not the state's certificate")));
            }
            if pki::private_key_half(&key).ok() != pki::certificate_half(&file) {
                return Err(fail(format!(
                    "the key in {LOKOMOTIVE_VALUES} does not match its certificate"
                )));
            }
            let ca = ctx.file_cert("tls/ca.crt")?;
            if !pki::issued_by(&file, &ca) {
                return Err(fail(
                    "the new certificate is not signed by the kube CA (tls/ca.crt)".into(),
                ));
            }
            let names = dns_names(&file);
            let missing: Vec<&str> =
                SERVICE_NAMES.iter().copied().filter(|n| !names.iter().any(|m| m == n)).collect();
            if !missing.is_empty() {
                return Err(fail(format!(
                    "the new certificate does not name {}",
                    missing.join(", ")
                )));
            }
            ctx.fingerprint("newWebhook", &file.sha256)?;
            Ok(format!("new certificate {} until {}", file.sha256, pki::human_date(file.not_after)))
        }
        Action::Restart => {
            let report = ctx.reporter();
            rollout::restart_deployment(
                &ctx.conn()?.client,
                NAMESPACE,
                DEPLOYMENT,
                ctx.run()?.phase_first_began(phase.name()),
                ctx.timeout,
                &report,
            )
            .await?;
            Ok(format!("deployment/{DEPLOYMENT} rolled out"))
        }
        Action::CheckServed => match served_problem(ctx).await? {
            Some(problem) => Err(fail(problem)),
            None => {
                // Again here: a `certificate` phase found done skipped its own record.
                let (file, _) = values_pair(ctx)?;
                ctx.fingerprint("newWebhook", &file.sha256)?;
                Ok("secret and caBundle carry the new certificate".into())
            }
        },
        Action::CheckAdmission => {
            if objects::default_service_account_mutated(&ctx.conn()?.client, ctx.timeout).await? {
                Ok("the API server called the webhook over TLS and it mutated the new default ServiceAccount".into())
            } else {
                Err(fail("a new namespace's default ServiceAccount was not mutated: the API server cannot call the webhook (is the new certificate served?)".into()))
            }
        }
    }
}

/// What keeps the cluster from serving the certificate and key of `lokomotive.yaml`: the
/// Secret the webhook's pods mount, and the caBundle the API server trusts when it calls it.
async fn served_problem(ctx: &Ctx) -> Result<Option<String>> {
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

/// `lokoctl cluster apply`, after keeping the state its terraform apply changes.
async fn lokoctl_apply(ctx: &Ctx) -> Result<()> {
    ctx.terraform()?.keep_state().await?;
    ctx.lokoctl()?.apply(ctx.expired).await
}

fn dns_names(cert: &CertInfo) -> Vec<String> {
    cert.x509
        .subject_alt_names()
        .map(|names| names.iter().filter_map(|n| n.dnsname().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rotation::engine::Procedure as _;
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
                for planned in steps(&ctx, phase) {
                    let cmd = run_command(&ctx, planned.action).unwrap();
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
