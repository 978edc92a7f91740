//! `verify`: the cluster really uses the new certificates. kube-apiserver presents the new
//! serving certificate (a TLS handshake); the asset dir's new admin kubeconfig reaches the API;
//! a real admission call is mutated by the webhook (the webhook rotation's own check); every
//! node is Ready.

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::assets::KUBECONFIG;
use crate::error::{Error, Result};
use crate::k8s::objects;
use crate::renew::Phase;
use crate::renew::probe;
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};
use crate::webhook::phases::CONFIGURATION;

const APISERVER_CERT: &str = "tls/apiserver.crt";
const POLL: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Verify;

impl PhaseUnit for Verify {
    fn steps(&self, _: &Ctx) -> Vec<Planned> {
        vec![
            Planned::new(
                StepKind::Check,
                format!(
                    "a TLS handshake with the API server: it presents the new {APISERVER_CERT}"
                ),
                Step::Serving,
            ),
            Planned::new(
                StepKind::Api,
                format!(
                    "the new admin kubeconfig ({KUBECONFIG}) reaches the API: list namespaces with its certificate"
                ),
                Step::Admin,
            ),
            Planned::new(
                StepKind::Api,
                format!(
                    "a real admission call: a throw-away namespace's default ServiceAccount is mutated by the webhook (skipped and said when mutatingwebhookconfiguration {CONFIGURATION} does not exist)"
                ),
                Step::Webhook,
            ),
            Planned::new(StepKind::Check, "every node is Ready", Step::Nodes),
        ]
    }
}

enum Step {
    Serving,
    Admin,
    Webhook,
    Nodes,
}

fn fail(reason: String) -> Error {
    Error::Verification { phase: Phase::Verify.name(), reason }
}

impl Action for Step {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::Serving => Box::pin(serving(ctx)),
            Self::Admin => Box::pin(admin(ctx)),
            Self::Webhook => Box::pin(webhook(ctx)),
            Self::Nodes => Box::pin(nodes(ctx)),
        }
    }
}

/// Polls `check` within `--timeout`: the API server may still be settling after the restarts.
async fn until<T>(
    ctx: &Ctx,
    what: &str,
    check: impl AsyncFnMut() -> std::result::Result<T, String>,
) -> Result<T> {
    crate::duration::poll(ctx.timeout, POLL, check)
        .await
        .map_err(|last| fail(format!("after {}s, {what}: {last}", ctx.timeout.as_secs())))
}

async fn serving(ctx: &Ctx) -> Result<String> {
    let want = ctx.file_cert(APISERVER_CERT)?;
    let server = ctx.conn()?.server.clone();
    let served = until(ctx, "the API server does not present the new certificate", async || {
        let served = probe::probe(&server, None, None).await?;
        if served.cert.sha256 == want.sha256 {
            Ok(served)
        } else {
            Err(format!(
                "{server} presents certificate {} (serial {}), not the new {APISERVER_CERT} ({})",
                served.cert.sha256, served.cert.serial, want.sha256
            ))
        }
    })
    .await?;
    Ok(format!(
        "{server} presents the new serving certificate, valid until {}",
        crate::pki::human_date(served.cert.not_after)
    ))
}

/// The asset dir's admin kubeconfig, pointed at the server the verified connection uses (a
/// workstation may reach it under another address than the one the kubeconfig names).
async fn admin_client(ctx: &Ctx) -> Result<kube::Client> {
    let path = ctx.asset(KUBECONFIG);
    let problem = |reason: String| Error::Kubeconfig { path: path.clone(), reason };
    let mut kubeconfig = Kubeconfig::read_from(&path).map_err(|e| problem(e.to_string()))?;
    let server = ctx.conn()?.server.clone();
    for cluster in &mut kubeconfig.clusters {
        if let Some(c) = cluster.cluster.as_mut() {
            c.server = Some(server.clone());
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| problem(e.to_string()))?;
    kube::Client::try_from(config)
        .map_err(|e| Error::kube("build a client of the new admin kubeconfig", e))
}

async fn admin(ctx: &Ctx) -> Result<String> {
    let client = admin_client(ctx).await?;
    let namespaces: Api<Namespace> = Api::all(client);
    until(ctx, "the new admin kubeconfig does not reach the API", async || {
        namespaces
            .list_metadata(&ListParams::default().limit(1))
            .await
            .map(drop)
            .map_err(|e| crate::error::describe_kube(&e))
    })
    .await?;
    Ok(format!("{KUBECONFIG} (the new admin certificate) lists namespaces"))
}

async fn webhook(ctx: &Ctx) -> Result<String> {
    let client = &ctx.conn()?.client;
    if objects::mutating_webhook_ca_bundles(client, CONFIGURATION).await?.is_none() {
        return Ok(format!(
            "skipped: mutatingwebhookconfiguration {CONFIGURATION} does not exist in this cluster"
        ));
    }
    if objects::default_service_account_mutated(client, ctx.timeout).await? {
        Ok("the API server called the webhook over TLS and it mutated the new default ServiceAccount".into())
    } else {
        Err(fail("a new namespace's default ServiceAccount was not mutated: the API server cannot call the webhook".into()))
    }
}

/// The nodes whose Ready condition is not True.
fn not_ready(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| {
            let conditions = n.status.as_ref().and_then(|s| s.conditions.as_ref());
            !conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|n| n.metadata.name.clone().unwrap_or_default())
        .collect()
}

async fn nodes(ctx: &Ctx) -> Result<String> {
    let api: Api<Node> = Api::all(ctx.conn()?.client.clone());
    let count = until(ctx, "not every node is Ready", async || {
        let list = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let left = not_ready(&list.items);
        if left.is_empty() {
            Ok(list.items.len())
        } else {
            Err(format!("not Ready: {}", left.join(", ")))
        }
    })
    .await?;
    Ok(format!("all {count} nodes Ready"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_ready_true_is_named() {
        let node = |name: &str, ready: Option<&str>| -> Node {
            let conditions: Vec<serde_json::Value> = ready
                .map(|s| vec![serde_json::json!({"type": "Ready", "status": s})])
                .unwrap_or_default();
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name}, "status": {"conditions": conditions}
            }))
            .unwrap()
        };
        let nodes = [
            node("a", Some("True")),
            node("b", Some("False")),
            node("c", None),
            node("d", Some("Unknown")),
        ];
        assert_eq!(not_ready(&nodes), ["b", "c", "d"]);
    }
}
