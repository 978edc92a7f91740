//! `certificate`: terraform taint the serving certificate, `lokoctl cluster apply` (after
//! rolling back a release a killed helm left pending); `lokomotive.yaml` then holds a new
//! certificate, equal to the state's, matching its key, signed by the kube CA, naming the
//! Service.

use super::{
    CONFIGURATION, NAMESPACE, SECRET, cert_resource, old_cert, served_problem, state_cert,
    values_pair,
};
use crate::assets::LOKOMOTIVE_VALUES;
use crate::error::{Error, Result};
use crate::pki::{self, CertInfo};
use crate::rotation::context::Ctx;
use crate::rotation::engine::{Needs, PhaseUnit};
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, RecoverReleases, Running};
use crate::tools::Command;
use crate::tools::lokoctl::ApplyFlags;
use crate::webhook::Phase;

/// The names the API server may use for the webhook's Service.
const SERVICE_NAMES: [&str; 5] = [
    "admission-webhook-server",
    "admission-webhook-server.lokomotive-system",
    "admission-webhook-server.lokomotive-system.svc",
    "admission-webhook-server.lokomotive-system.svc.cluster",
    "admission-webhook-server.lokomotive-system.svc.cluster.local",
];

pub struct Certificate;

impl PhaseUnit for Certificate {
    fn needs(&self) -> Needs {
        Needs { terraform: true, helm: true, lokoctl: true }
    }

    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        vec![
            Planned::command(
                &ctx.taint_command(cert_resource()),
                " (skipped when the state's certificate is already a new one)",
                Step::Taint,
            ),
            RecoverReleases::planned(ctx),
            Planned::command(
                &ctx.plan_lokoctl(ApplyFlags::skipping_health_check(ctx.expired)),
                "",
                Step::Lokoctl,
            ),
            Planned::new(
                StepKind::Check,
                format!(
                    "{LOKOMOTIVE_VALUES} holds a new certificate, equal to the state's, matching its key, signed by the kube CA, naming the five service names"
                ),
                Step::CheckNew,
            ),
        ]
    }

    fn found_done<'a>(&'a self, ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(found_done(ctx))
    }
}

async fn found_done(ctx: &Ctx) -> Result<Option<String>> {
    // Before a run's backup, which certificate is the old one is not known.
    if ctx.run.is_none() {
        return Ok(None);
    }
    let (state, tainted) = state_cert(ctx).await?;
    // Missing when an apply that was replacing it was killed: lokoctl's apply writes it again.
    if !ctx.asset(LOKOMOTIVE_VALUES).exists() {
        return Ok(None);
    }
    let (file, _) = values_pair(ctx)?;
    let new = !tainted && state.sha256 != old_cert(ctx)?.sha256 && file.sha256 == state.sha256;
    // lokoctl writes the files before its helm upgrade puts them in the cluster: a run killed
    // in between must run lokoctl again.
    if !new || served_problem(ctx).await?.is_some() {
        return Ok(None);
    }
    Ok(Some(format!(
        "the state, {LOKOMOTIVE_VALUES}, secret {NAMESPACE}/{SECRET} and the caBundle already hold a new certificate"
    )))
}

enum Step {
    Taint,
    Lokoctl,
    CheckNew,
}

impl Action for Step {
    fn command(&self, ctx: &Ctx) -> Result<Option<Command>> {
        Ok(match self {
            Self::Taint => Some(ctx.terraform()?.taint_command(&ctx.addr(cert_resource()))),
            Self::Lokoctl => {
                Some(ctx.lokoctl()?.apply_command(ApplyFlags::skipping_health_check(ctx.expired))?)
            }
            Self::CheckNew => None,
        })
    }

    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::Taint => Box::pin(taint(ctx)),
            Self::Lokoctl => Box::pin(lokoctl(ctx)),
            Self::CheckNew => Box::pin(check_new(ctx)),
        }
    }
}

async fn taint(ctx: &mut Ctx) -> Result<String> {
    let address = ctx.addr(cert_resource());
    if ctx.terraform()?.state().await?.instance(&address).is_none() {
        return Ok(format!(
            "skipped: the state has no {address} (destroyed by an interrupted apply); lokoctl's apply creates it"
        ));
    }
    let (state, tainted) = state_cert(ctx).await?;
    if tainted {
        return Ok("skipped: already tainted (an earlier run stopped before applying)".into());
    }
    if state.sha256 != old_cert(ctx)?.sha256 {
        return Ok("skipped: the state already holds a new certificate".into());
    }
    let taint = Step::Taint.command(ctx)?.expect("a taint runs a command");
    ctx.terraform()?.change(taint).await?;
    Ok("tainted".into())
}

/// `lokoctl cluster apply`, after keeping the state its terraform apply changes.
async fn lokoctl(ctx: &mut Ctx) -> Result<String> {
    let applied = async {
        ctx.terraform()?.keep_state().await?;
        ctx.lokoctl()?.apply(ApplyFlags::skipping_health_check(ctx.expired)).await
    };
    match applied.await {
        Ok(()) => Ok("applied".into()),
        Err(e) if ctx.expired => Err(Error::PhaseStopped {
            phase: Phase::Certificate.name(),
            reason: format!(
                "{e}\nmutatingwebhookconfiguration {CONFIGURATION} is still deleted: fix the cause and run the same command again, or put the old configuration back with `kubectl certrotate webhook --restore-webhook`"
            ),
        }),
        Err(e) => Err(e),
    }
}

async fn check_new(ctx: &mut Ctx) -> Result<String> {
    let fail = |reason: String| Error::Verification { phase: Phase::Certificate.name(), reason };
    let (file, key) = values_pair(ctx)?;
    let (state, _) = state_cert(ctx).await?;
    if file.sha256 == old_cert(ctx)?.sha256 {
        return Err(fail(format!("{LOKOMOTIVE_VALUES} still holds the old certificate")));
    }
    if file.sha256 != state.sha256 {
        return Err(fail(format!("{LOKOMOTIVE_VALUES} is not the state's certificate")));
    }
    if pki::private_key_half(&key).ok() != pki::certificate_half(&file) {
        return Err(fail(format!("the key in {LOKOMOTIVE_VALUES} does not match its certificate")));
    }
    let ca = ctx.file_cert("tls/ca.crt")?;
    if !pki::issued_by(&file, &ca) {
        return Err(fail("the new certificate is not signed by the kube CA (tls/ca.crt)".into()));
    }
    let names = dns_names(&file);
    let missing: Vec<&str> =
        SERVICE_NAMES.iter().copied().filter(|n| !names.iter().any(|m| m == n)).collect();
    if !missing.is_empty() {
        return Err(fail(format!("the new certificate does not name {}", missing.join(", "))));
    }
    ctx.fingerprint("newWebhook", &file.sha256)?;
    Ok(format!("new certificate {} until {}", file.sha256, pki::human_date(file.not_after)))
}

fn dns_names(cert: &CertInfo) -> Vec<String> {
    cert.x509
        .subject_alt_names()
        .map(|names| names.iter().filter_map(|n| n.dnsname().map(str::to_string)).collect())
        .unwrap_or_default()
}
