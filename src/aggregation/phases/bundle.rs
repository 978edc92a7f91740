//! `bundle`: kube-apiserver trusts the old and the new CA (helm upgrade with the bundle), seen
//! in its Secret and its `extension-apiserver-authentication` ConfigMap.

use super::actions::{ChartValue, upgrade_steps};
use super::state::{holds, new_ca, old_ca, release_deployed, secret_cas, trusted_cas, until};
use super::{AUTH_CONFIGMAP, AUTH_KEY, NAMESPACE, SECRET};
use crate::aggregation::Phase;
use crate::error::Result;
use crate::pki::CertInfo;
use crate::rotation::context::Ctx;
use crate::rotation::engine::{Needs, PhaseUnit};
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};

pub struct Bundle;

impl PhaseUnit for Bundle {
    fn needs(&self) -> Needs {
        Needs { helm: true, ..Needs::default() }
    }

    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        let mut steps = upgrade_steps(ctx, ChartValue::CaBundle);
        steps.push(Planned::new(
            StepKind::Check,
            format!(
                "secret {NAMESPACE}/{SECRET} and configmap {NAMESPACE}/{AUTH_CONFIGMAP} ({AUTH_KEY}) trust the old and the new CA"
            ),
            Verify,
        ));
        steps
    }

    fn found_done<'a>(&'a self, ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(async move {
            // A release left pending (helm killed during --wait) goes through the recovery.
            if !release_deployed(ctx).await? {
                return Ok(None);
            }
            let (old, new) = (old_ca(ctx).await?, new_ca(ctx).await?);
            Ok(bundle_served(ctx, &old, &new)
                .await?
                .is_ok()
                .then(|| "the cluster already trusts both CAs".into()))
        })
    }
}

/// `Ok(Ok)` when the Secret and the ConfigMap trust both CAs, `Ok(Err(what is missing))` if not.
async fn bundle_served(
    ctx: &Ctx,
    old: &CertInfo,
    new: &CertInfo,
) -> Result<std::result::Result<(), String>> {
    let secret = secret_cas(ctx, "aggregation-ca.crt").await?;
    if !(holds(&secret, old) && holds(&secret, new)) {
        return Ok(Err(format!("secret {NAMESPACE}/{SECRET} does not hold both CAs")));
    }
    let trusted = trusted_cas(ctx).await?;
    if !holds(&trusted, new) {
        return Ok(Err(format!(
            "configmap {AUTH_CONFIGMAP} ({AUTH_KEY}) does not hold the new CA yet"
        )));
    }
    Ok(Ok(()))
}

/// Secret and ConfigMap trust old and new CA.
struct Verify;

impl Action for Verify {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        Box::pin(async move {
            let (old, new) = (old_ca(ctx).await?, new_ca(ctx).await?);
            until(ctx, Phase::Bundle, "the cluster trusting both CAs", async || {
                bundle_served(ctx, &old, &new).await
            })
            .await?;
            Ok("secret and configmap trust old and new CA".into())
        })
    }
}
