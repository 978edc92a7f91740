//! `apply`: `lokoctl cluster apply` (after rolling back a release a killed helm left pending),
//! then the files equal the state and the cluster holds what lokoctl applied from them.

use super::state::{POLL, holds, secret_cas, state_ca, state_problem, trusted_cas, until};
use super::{AUTH_CONFIGMAP, CA_CERT, CA_KEY, CLIENT_CERT, NAMESPACE, SECRET};
use super::{client_cert, client_key};
use crate::aggregation::Phase;
use crate::error::{Error, Result};
use crate::pki;
use crate::rotation::context::Ctx;
use crate::rotation::engine::{Needs, PhaseUnit};
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, RecoverReleases, Running};
use crate::tools::Command;
use crate::tools::lokoctl::ApplyFlags;

pub struct Apply;

impl PhaseUnit for Apply {
    fn needs(&self) -> Needs {
        Needs { terraform: true, helm: true, lokoctl: true }
    }

    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        let verify = if ctx.expired {
            Planned::new(
                StepKind::Check,
                format!(
                    "the files equal the state; secret {NAMESPACE}/{SECRET} holds the files' CA and client certificate (what lokoctl applied); configmap {AUTH_CONFIGMAP} trusts the new CA"
                ),
                Step::NewCaServed,
            )
        } else {
            Planned::new(
                StepKind::Check,
                format!(
                    "terraform plan shows no change left to the aggregation resources; the files equal the state; secret {NAMESPACE}/{SECRET} holds the new CA and serves the new client certificate (what lokoctl applied)"
                ),
                Step::NothingPending,
            )
        };
        vec![
            RecoverReleases::planned(ctx),
            Planned::command(
                &ctx.plan_lokoctl(ApplyFlags::skipping_health_check(true)),
                "",
                Step::Lokoctl,
            ),
            verify,
        ]
    }
}

enum Step {
    /// `lokoctl cluster apply`, run with `--skip-pre-update-health-check`: a release left
    /// pending was rolled back by the step before.
    Lokoctl,
    /// Expired path: Secret and ConfigMap trust the new CA (it replaces, not bundles).
    NewCaServed,
    /// `terraform plan` has no aggregation change left, the files equal the state, and the
    /// Secret holds what lokoctl applied from them.
    NothingPending,
}

impl Action for Step {
    fn command(&self, ctx: &Ctx) -> Result<Option<Command>> {
        Ok(match self {
            Self::Lokoctl => {
                Some(ctx.lokoctl()?.apply_command(ApplyFlags::skipping_health_check(true))?)
            }
            Self::NewCaServed | Self::NothingPending => None,
        })
    }

    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::Lokoctl => Box::pin(async move {
                // lokoctl's terraform apply changes the state too.
                ctx.terraform()?.keep_state().await?;
                ctx.lokoctl()?.apply(ApplyFlags::skipping_health_check(true)).await?;
                Ok("applied".into())
            }),
            Self::NewCaServed => Box::pin(new_ca_served(ctx)),
            Self::NothingPending => Box::pin(nothing_pending(ctx)),
        }
    }
}

async fn new_ca_served(ctx: &mut Ctx) -> Result<String> {
    files_equal_state(ctx).await?;
    lokoctl_applied_the_files(ctx).await?;
    let new = ctx.file_cert(CA_CERT)?;
    ctx.fingerprint("newCa", &new.sha256)?;
    until(ctx, Phase::Apply, "the cluster trusting the new CA", async || {
        let secret = secret_cas(ctx, "aggregation-ca.crt").await?;
        if !holds(&secret, &new) {
            return Ok(Err(format!("secret {NAMESPACE}/{SECRET} does not hold the new CA")));
        }
        let trusted = trusted_cas(ctx).await?;
        Ok(if holds(&trusted, &new) {
            Ok(())
        } else {
            Err(format!("{AUTH_CONFIGMAP} does not hold the new CA yet"))
        })
    })
    .await?;
    Ok("the cluster trusts the new CA".into())
}

async fn nothing_pending(ctx: &mut Ctx) -> Result<String> {
    let pending: Vec<String> = ctx
        .terraform()?
        .pending_changes()
        .await?
        .into_iter()
        .filter(|a| a.contains("aggregation"))
        .collect();
    if !pending.is_empty() {
        return Err(fail(format!("terraform plan still changes {}", pending.join(", "))));
    }
    files_equal_state(ctx).await?;
    lokoctl_applied_the_files(ctx).await?;
    // Again here: a `ca` or `client` phase found done skipped its own record.
    let (ca, client) = (ctx.file_cert(CA_CERT)?, ctx.file_cert(CLIENT_CERT)?);
    ctx.fingerprint("newCa", &ca.sha256)?;
    ctx.fingerprint("newClient", &client.sha256)?;
    Ok("no aggregation change pending; files equal the state; the secret serves them".into())
}

fn fail(reason: String) -> Error {
    Error::Verification { phase: Phase::Apply.name(), reason }
}

/// Secret kube-system/kube-apiserver holds the asset dir's CA (alone or in a bundle) and its
/// client certificate: lokoctl applies the values of the asset dir its lokocfg names, so other
/// values mean it applied another one, and the checks of the files alone would not see it.
/// Read once the API answers (kube-apiserver restarts for the new Secret), judged at once.
async fn lokoctl_applied_the_files(ctx: &Ctx) -> Result<()> {
    let (ca, client) = (ctx.file_cert(CA_CERT)?, ctx.file_cert(CLIENT_CERT)?);
    let (cas, served) = crate::duration::poll(ctx.timeout, POLL, async || {
        match (
            secret_cas(ctx, "aggregation-ca.crt").await,
            secret_cas(ctx, "aggregation-client.crt").await,
        ) {
            (Ok(cas), Ok(served)) => Ok((cas, served)),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        }
    })
    .await
    .map_err(|last| {
        fail(format!("secret {NAMESPACE}/{SECRET} unreadable until --timeout: {last}"))
    })?;
    let mut wrong = Vec::new();
    if !holds(&cas, &ca) {
        wrong.push(format!("its aggregation-ca.crt does not hold the CA of {CA_CERT}"));
    }
    if served.first().map(|c| &c.sha256) != Some(&client.sha256) {
        wrong.push(format!("its aggregation-client.crt is not {CLIENT_CERT}"));
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(fail(format!(
        "secret {NAMESPACE}/{SECRET}: {}: lokoctl applied other values than this asset dir's \
         (does a lokocfg in {} name another asset dir?); run this phase again once lokoctl \
         applies {}",
        wrong.join(" and "),
        ctx.config_dir.display(),
        ctx.assets.root().display()
    )))
}

/// The asset dir's aggregation files hold what the state holds.
async fn files_equal_state(ctx: &Ctx) -> Result<()> {
    let state = ctx.terraform()?.state().await?;
    let ca = state_ca(ctx, &state)?;
    let file = ctx.file_cert(CA_CERT)?;
    if file.sha256 != ca.sha256 {
        return Err(fail(format!("{CA_CERT} differs from the state's CA")));
    }
    if !ctx.key_matches(CA_KEY, &file) {
        return Err(fail(format!("{CA_KEY} does not match {CA_CERT}")));
    }
    let client_address = ctx.addr(client_cert());
    let client_pem = state.attribute(&client_address, "cert_pem").unwrap_or_default();
    let client = ctx.file_cert(CLIENT_CERT)?;
    let state_client = pki::parse_one_cert(client_pem.as_bytes())
        .map_err(|p| state_problem(ctx, &client_address, p))?;
    if client.sha256 != state_client.sha256 || !pki::issued_by(&client, &ca) {
        return Err(fail(format!(
            "{CLIENT_CERT} is not the state's client certificate of the new CA"
        )));
    }
    let key_address = ctx.addr(client_key());
    let key_pem = state.attribute(&key_address, "public_key_pem").unwrap_or_default();
    if pki::public_key_half(key_pem.as_bytes()).ok() != pki::certificate_half(&client) {
        return Err(fail(format!("{CLIENT_CERT} does not match the state's client key")));
    }
    Ok(())
}
