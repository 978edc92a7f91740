//! What several phases read of the real state: the old and the new CA (from the run's
//! backup, the files, the Terraform state, the cluster), and the bounded wait for the
//! cluster to show something.

use std::path::Path;
use std::time::Duration;

use super::{AUTH_CONFIGMAP, AUTH_KEY, CA_CERT, CHART, NAMESPACE, RELEASE, ca_cert};
use crate::aggregation::Phase;
use crate::error::{Error, Result};
use crate::k8s::objects;
use crate::pki::{self, CertInfo};
use crate::rotation::context::Ctx;
use crate::tools::helm::Release;
use crate::tools::terraform::State;

/// How often a wait for kube-apiserver to republish its ConfigMap looks again.
pub(super) const POLL: Duration = Duration::from_secs(1);

/// The backup's name of asset `file` (its file name).
pub(super) fn backup_name(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

/// The kube-apiserver release, its chart `chart` (`ctx.asset(CHART)`: lokoctl unpacked it
/// into the asset dir).
pub(super) fn release(chart: &Path) -> Release<'_> {
    Release { name: RELEASE, namespace: NAMESPACE, chart }
}

/// The CA the run started from (its backup); before the backup exists (a phase asked for
/// with no run in progress, whose predecessors the real state must show done), the CA the
/// cluster trusts.
pub(super) async fn old_ca(ctx: &Ctx) -> Result<CertInfo> {
    match &ctx.run {
        Some(run) if run.backup_path(backup_name(CA_CERT)).exists() => {
            ctx.backup_cert(backup_name(CA_CERT))
        }
        _ => Ok(crate::aggregation::old_ca::find(ctx).await?.cert),
    }
}

/// The CA the `ca` phase made; on the expired path the files hold it only after `apply`.
pub(super) async fn new_ca(ctx: &Ctx) -> Result<CertInfo> {
    let cert = ctx.file_cert(CA_CERT)?;
    if !ctx.expired && cert.sha256 == old_ca(ctx).await?.sha256 {
        return Err(Error::Precondition {
            phase: Phase::Ca.name(),
            reason: format!(
                "{} still holds the old CA: run --phase ca",
                ctx.asset(CA_CERT).display()
            ),
        });
    }
    Ok(cert)
}

/// The CA certificate of the Terraform state.
pub(super) fn state_ca(ctx: &Ctx, state: &State) -> Result<CertInfo> {
    let address = ctx.addr(ca_cert());
    let unusable =
        |reason: String| Error::TerraformState { dir: ctx.terraform_dir.clone(), reason };
    let pem = state.attribute(&address, "cert_pem").ok_or_else(|| {
        unusable(format!("has no {address}: is aggregation enabled, and --module right?"))
    })?;
    pki::parse_one_cert(pem.as_bytes())
        .map_err(|p| unusable(format!("holds an unusable certificate at {address} ({})", p.0)))
}

pub(super) fn state_problem(ctx: &Ctx, address: &str, p: pki::PemProblem) -> Error {
    Error::TerraformState {
        dir: ctx.terraform_dir.clone(),
        reason: format!("holds an unusable certificate at {address} ({})", p.0),
    }
}

/// The CAs configmap `extension-apiserver-authentication` trusts for client certificates.
pub(super) async fn trusted_cas(ctx: &Ctx) -> Result<Vec<CertInfo>> {
    let client = &ctx.conn()?.client;
    Ok(objects::configmap_certificates(client, NAMESPACE, AUTH_CONFIGMAP, AUTH_KEY)
        .await?
        .unwrap_or_default())
}

/// The certificates under `key` of secret kube-system/kube-apiserver.
pub(super) async fn secret_cas(ctx: &Ctx, key: &str) -> Result<Vec<CertInfo>> {
    objects::secret_certificates(&ctx.conn()?.client, NAMESPACE, super::SECRET, key).await
}

pub(super) fn holds(certs: &[CertInfo], cert: &CertInfo) -> bool {
    certs.iter().any(|c| c.sha256 == cert.sha256)
}

/// Whether the kube-apiserver release's latest revision is deployed (not left pending).
pub(super) async fn release_deployed(ctx: &Ctx) -> Result<bool> {
    let history = ctx.helm()?.history(&release(&ctx.asset(CHART))).await?;
    Ok(history.iter().max_by_key(|r| r.revision).is_some_and(|r| r.status == "deployed"))
}

/// Polls `check` until it holds or `--timeout` ends (kube-apiserver republishes its ConfigMap
/// only once it has restarted).
pub(super) async fn until(
    ctx: &Ctx,
    phase: Phase,
    what: &str,
    check: impl AsyncFn() -> Result<std::result::Result<(), String>>,
) -> Result<()> {
    crate::duration::poll(ctx.timeout, POLL, async || match check().await {
        Ok(result) => result,
        // The API drops while kube-apiserver restarts: look again.
        Err(e) => Err(e.to_string()),
    })
    .await
    .map_err(|last| Error::Verification {
        phase: phase.name(),
        reason: format!("{what}: still not so after {}s: {last}", ctx.timeout.as_secs()),
    })
}
