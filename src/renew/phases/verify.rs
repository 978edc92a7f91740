//! `verify`: the cluster really uses the new certificates. kube-apiserver presents the new
//! serving certificate (a TLS handshake); the asset dir's new admin kubeconfig reaches the API;
//! a real admission call is mutated by the webhook (the webhook rotation's own check); every
//! node is Ready; every etcd member still serves and accepts the new etcd certificates (the
//! restarts came after the `etcd` phase); and `status` finds every row OK, every certificate of
//! the asset dir issued in this run.

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
use crate::status::report::{Check, ClusterReport, Validity};
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
            Planned::new(
                StepKind::Check,
                "every etcd member again: it presents the new server and peer certificates and answers /health to the new client certificate",
                Step::Etcd,
            ),
            Planned::new(
                StepKind::Api,
                "kubectl certrotate status: every row of the asset dir and the cluster OK, every certificate of the asset dir issued in this run",
                Step::Status,
            ),
        ]
    }
}

enum Step {
    Serving,
    Admin,
    Webhook,
    Nodes,
    Etcd,
    Status,
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
            Self::Etcd => Box::pin(etcd(ctx)),
            Self::Status => Box::pin(status(ctx)),
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

async fn etcd(ctx: &Ctx) -> Result<String> {
    let members = super::etcd::resolve_members(ctx)?;
    for member in &members {
        until(
            ctx,
            &format!("etcd member {} does not use the new certificates", member.client),
            async || super::etcd::check(ctx, member).await,
        )
        .await?;
    }
    Ok(format!("{} etcd member(s) serve and accept the new certificates", members.len()))
}

/// `status`'s window for EXPIRING, its default.
const STATUS_WINDOW: i64 = 30 * 86_400;

/// What keeps `report` from proving the renewal: rows not OK (with the fix `status` names),
/// APIServices not Available, certificates of the asset dir issued before `since`.
fn status_problems(report: &ClusterReport, since: i64) -> Vec<String> {
    let mut problems = Vec::new();
    for row in &report.certificates {
        if row.status != Validity::Ok || row.chain == Check::Fail || row.key == Check::Fail {
            problems.push(format!("{} ({}): {}", row.name, row.file, row.problems.join("; ")));
        } else if let Some(cert) = row.cert.as_ref().filter(|c| c.not_before_unix < since) {
            problems.push(format!(
                "{} ({}) was issued at {}, before this run renewed the certificates",
                row.name, row.file, cert.not_before
            ));
        }
    }
    match &report.cluster {
        Some(section) if section.reached => {
            for row in section.certificates.iter().filter(|r| r.fix.is_some()) {
                problems.push(format!(
                    "{} {} [{}]: {} {}",
                    row.object,
                    row.key,
                    row.index,
                    row.status.label(),
                    row.problems.join("; ")
                ));
            }
            for service in section.api_services.iter().filter(|s| s.available != "True") {
                problems.push(format!(
                    "APIService {} not Available: {}",
                    service.name,
                    service.message.as_deref().unwrap_or("no message")
                ));
            }
        }
        Some(section) => problems.push(format!(
            "the cluster was not read: {}",
            section.error.as_deref().unwrap_or("no answer")
        )),
        None => problems.push(report.error.clone().unwrap_or_else(|| "no report".into())),
    }
    problems
}

async fn status(ctx: &Ctx) -> Result<String> {
    let conn = ctx.conn()?;
    let since = ctx
        .run()?
        .phase_first_began(Phase::Certificates.name())
        .map_or(i64::MIN, |t| t.as_second());
    let rows = until(ctx, "status does not find every row OK", async || {
        let now = jiff::Timestamp::now().as_second();
        let report = crate::status::assess(&ctx.assets, conn, now, STATUS_WINDOW).await;
        match status_problems(&report, since) {
            problems if problems.is_empty() => Ok(report.certificates.len()
                + report.cluster.as_ref().map_or(0, |c| c.certificates.len())),
            problems => Err(problems.join(", ")),
        }
    })
    .await?;
    Ok(format!("status: all {rows} rows OK, every certificate of the asset dir issued in this run"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::report::{ApiServiceRow, CertFacts, ClusterSection, LocalRow};

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

    fn row(name: &'static str, not_before: i64, status: Validity) -> LocalRow {
        let cert = CertFacts {
            subject: format!("CN={name}"),
            issuer: "<self>".into(),
            not_before: crate::pki::rfc3339(not_before),
            not_after: crate::pki::rfc3339(not_before + 86_400),
            residual_seconds: 86_400,
            serial: "01".into(),
            sha256: "ab".into(),
            not_before_unix: not_before,
            not_after_unix: not_before + 86_400,
            serial_decimal: "1".into(),
            subject_attributes: Default::default(),
            issuer_attributes: Default::default(),
        };
        LocalRow {
            name,
            file: format!("tls/{name}.crt"),
            key_file: None,
            ca: None,
            cert: Some(cert),
            status,
            chain: Check::Ok,
            key: Check::Ok,
            problems: vec![],
            fix: None,
        }
    }

    #[test]
    fn status_proves_the_renewal_only_with_every_row_ok_and_new() {
        let since = 1_000_000;
        let mut report = ClusterReport {
            assets_dir: "/a".into(),
            error: None,
            aggregation_enabled: true,
            certificates: vec![
                row("kube-ca", since, Validity::Ok),
                row("admin", since + 5, Validity::Ok),
            ],
            cluster: Some(ClusterSection { reached: true, ..Default::default() }),
            rotations: vec![],
            next: None,
            exit_code: 0,
        };
        assert!(status_problems(&report, since).is_empty());

        report.certificates.push(row("kubelet", since - 1, Validity::Ok));
        report.certificates.push(row("etcd-ca", since, Validity::Expiring));
        let mut bad_chain = row("etcd-client", since, Validity::Ok);
        bad_chain.chain = Check::Fail;
        report.certificates.push(bad_chain);
        report.cluster.as_mut().unwrap().api_services.push(ApiServiceRow {
            name: "v1beta1.metrics.k8s.io".into(),
            service: "kube-system/metrics-server".into(),
            available: "False".into(),
            reason: None,
            message: Some("failing".into()),
        });
        let problems = status_problems(&report, since);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("kubelet") && problems[0].contains("before this run"));
        assert!(problems[1].starts_with("etcd-ca"));
        assert!(problems[2].starts_with("etcd-client"));
        assert!(problems[3].contains("v1beta1.metrics.k8s.io not Available: failing"));

        report.cluster =
            Some(ClusterSection { error: Some("refused".into()), ..Default::default() });
        assert!(status_problems(&report, since).last().unwrap().contains("refused"));
    }
}
