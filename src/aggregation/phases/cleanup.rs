//! `cleanup` (asked for with `--cleanup` or `--phase cleanup`): drop the old CA. kube-apiserver
//! only ever adds CAs to `extension-apiserver-authentication`, so the ConfigMap is deleted and
//! kube-apiserver restarted to publish it anew; then the extension servers restart to load it.

use super::actions::restart_extension_servers;
use super::state::{new_ca, trusted_cas, until};
use super::{AUTH_CONFIGMAP, NAMESPACE};
use crate::aggregation::Phase;
use crate::error::Result;
use crate::k8s::{objects, rollout};
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};

pub struct Cleanup;

impl PhaseUnit for Cleanup {
    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        vec![
            Planned::new(
                StepKind::Api,
                format!(
                    "DELETE configmap {NAMESPACE}/{AUTH_CONFIGMAP} (kube-apiserver only ever adds CAs to it)"
                ),
                Step::DeleteConfigMap,
            ),
            Planned::new(
                StepKind::Api,
                format!(
                    "restart kube-apiserver in {NAMESPACE} (kubectl rollout restart) and wait for it, riding through the API outage"
                ),
                Step::RestartKubeApiserver,
            ),
            Planned::new(
                StepKind::Check,
                format!("configmap {AUTH_CONFIGMAP} is back and trusts only the new CA"),
                Step::OnlyNewCaTrusted,
            ),
            restart_extension_servers(ctx, Phase::Cleanup, |servers| {
                format!(
                    "restart every extension API server again ({servers}), wait for their APIServices to be Available"
                )
            }),
        ]
    }

    fn found_done<'a>(&'a self, ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(found_done(ctx))
    }
}

async fn found_done(ctx: &Ctx) -> Result<Option<String>> {
    let new = new_ca(ctx).await?;
    let trusted = trusted_cas(ctx).await?;
    if !(trusted.len() == 1 && trusted[0].sha256 == new.sha256) {
        return Ok(None);
    }
    // The cleanup ends with the extension servers' restart: done only once every one of
    // their pods is younger than the ConfigMap they must load.
    let client = &ctx.conn()?.client;
    let Some(created) = objects::configmap_created(client, NAMESPACE, AUTH_CONFIGMAP).await? else {
        return Ok(None);
    };
    let found = crate::k8s::discovery::discover(client).await?;
    let restarted = found
        .servers
        .iter()
        .flat_map(|s| &s.pods)
        .all(|pod| pod.created.is_some_and(|at| at >= created));
    Ok(restarted.then(|| {
        format!(
            "{AUTH_CONFIGMAP} already trusts only the new CA, and every extension server was restarted after it"
        )
    }))
}

enum Step {
    DeleteConfigMap,
    RestartKubeApiserver,
    /// The ConfigMap trusts only the new CA.
    OnlyNewCaTrusted,
}

impl Action for Step {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::DeleteConfigMap => Box::pin(async move {
                let deleted =
                    objects::delete_configmap(&ctx.conn()?.client, NAMESPACE, AUTH_CONFIGMAP)
                        .await?;
                Ok(format!("{deleted:?}"))
            }),
            Self::RestartKubeApiserver => Box::pin(async move {
                let conn = ctx.conn()?;
                let report = ctx.reporter();
                let workload =
                    rollout::restart_kube_apiserver(&conn.client, ctx.timeout, &report).await?;
                Ok(format!("{workload} restarted"))
            }),
            Self::OnlyNewCaTrusted => Box::pin(async move {
                let new = new_ca(ctx).await?;
                until(ctx, Phase::Cleanup, "configmap trusting only the new CA", async || {
                    let trusted = trusted_cas(ctx).await?;
                    Ok(match trusted.as_slice() {
                        [only] if only.sha256 == new.sha256 => Ok(()),
                        [] => Err(format!("{AUTH_CONFIGMAP} is not back yet")),
                        more => Err(format!("{AUTH_CONFIGMAP} trusts {} CAs", more.len())),
                    })
                })
                .await?;
                Ok("only the new CA is trusted".into())
            }),
        }
    }
}
