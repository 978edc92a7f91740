//! `restart`: everything that reads certificates only at start, restarted exactly as
//! `kubectl rollout restart` and waited for as `kubectl rollout status`: lokoctl's list
//! (lokomotive-pki.md §4.4: DaemonSets or Deployments by the controller count) and the
//! extension API servers. kube-apiserver first (the API drops while it restarts), unless the
//! `control-plane` phase's upgrade already rolled it onto its new Secret; then the others
//! concurrently; a workload the cluster does not run is skipped and said. Then every
//! APIService must be Available.

use std::collections::BTreeSet;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, ListParams};

use crate::error::{Error, Result};
use crate::k8s::discovery;
use crate::k8s::rollout::{self, Workload, WorkloadKind, WorkloadRef};
use crate::renew::Phase;
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};

/// The aggregation CA the extension API servers load at start.
const AGGREGATION_CA: &str = "tls/aggregation-ca.crt";
/// How often the APIServices are looked at again.
const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The annotation Lokomotive's kube-apiserver chart (v0.8+) gives its pod template: the hash
/// of its Secret, so that a helm upgrade that changes a certificate rolls the pods.
const SECRET_CHECKSUM: &str = "checksum/secret";

/// lokoctl's `CommonDaemonSets` and `CommonDeployments` (§4.4): always so.
const DAEMONSETS: [&str; 4] = ["calico-node", "pod-checkpointer", "kube-proxy", "kubelet"];
const DEPLOYMENTS: [(&str, &str); 2] =
    [("kube-system", "calico-kube-controllers"), ("lokomotive-system", "admission-webhook-server")];
/// DaemonSets with more than one controller, Deployments with one.
const BY_CONTROLLERS: [&str; 4] =
    ["kube-apiserver", "coredns", "kube-controller-manager", "kube-scheduler"];

/// lokoctl's list for `controllers` controllers, kube-apiserver first.
pub fn lokoctl_list(controllers: u64) -> Vec<WorkloadRef> {
    let by_count = if controllers > 1 { WorkloadKind::DaemonSet } else { WorkloadKind::Deployment };
    let at = |kind, namespace: &str, name: &str| WorkloadRef {
        kind,
        namespace: namespace.into(),
        name: name.into(),
    };
    let mut list: Vec<WorkloadRef> =
        BY_CONTROLLERS.iter().map(|n| at(by_count, "kube-system", n)).collect();
    list.extend(DAEMONSETS.iter().map(|n| at(WorkloadKind::DaemonSet, "kube-system", n)));
    list.extend(DEPLOYMENTS.iter().map(|(ns, n)| at(WorkloadKind::Deployment, ns, n)));
    list
}

/// What of `list` to restart, given the workloads the cluster has (`present`): each as the
/// kind lokoctl expects, else as the other kind of that name (a chart that chose otherwise,
/// as v0.5's kube-controller-manager DaemonSet on one controller); what is not there at all is
/// skipped, and named.
pub fn resolve(
    list: &[WorkloadRef],
    present: &BTreeSet<WorkloadRef>,
) -> (Vec<WorkloadRef>, Vec<String>) {
    let mut restart = Vec::new();
    let mut skipped = Vec::new();
    for wanted in list {
        let other = WorkloadRef {
            kind: match wanted.kind {
                WorkloadKind::Deployment => WorkloadKind::DaemonSet,
                _ => WorkloadKind::Deployment,
            },
            ..wanted.clone()
        };
        if present.contains(wanted) {
            restart.push(wanted.clone());
        } else if present.contains(&other) {
            restart.push(other);
        } else {
            skipped.push(format!("{}/{}", wanted.namespace, wanted.name));
        }
    }
    (restart, skipped)
}

/// The controller count, from the rendered kube-apiserver values (`apiserver.replicas`); one
/// when they do not say.
fn controllers(ctx: &Ctx) -> u64 {
    let text =
        ctx.read_asset(super::KUBE_APISERVER_VALUES).ok().and_then(|b| String::from_utf8(b).ok());
    let values: Option<serde_json::Value> = text.and_then(|t| serde_saphyr::from_str(&t).ok());
    values.and_then(|v| v["apiserver"]["replicas"].as_u64()).unwrap_or(1)
}

/// The Deployments and DaemonSets of lokoctl's names the cluster has.
async fn present(ctx: &Ctx, list: &[WorkloadRef]) -> Result<BTreeSet<WorkloadRef>> {
    let client = &ctx.conn()?.client;
    let mut found = BTreeSet::new();
    for wanted in list {
        let ns = wanted.namespace.as_str();
        let read =
            |e| Error::kube(format!("read {}/{} in {ns}", wanted.kind.resource(), wanted.name), e);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        if deployments.get_opt(&wanted.name).await.map_err(read)?.is_some() {
            found.insert(WorkloadRef { kind: WorkloadKind::Deployment, ..wanted.clone() });
        }
        let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
        if daemonsets.get_opt(&wanted.name).await.map_err(read)?.is_some() {
            found.insert(WorkloadRef { kind: WorkloadKind::DaemonSet, ..wanted.clone() });
        }
    }
    Ok(found)
}

/// What the cluster has of lokoctl's list, resolved: `(kube-apiserver, the others, skipped)`.
async fn targets(ctx: &Ctx) -> Result<(Vec<WorkloadRef>, Vec<WorkloadRef>, Vec<String>)> {
    let list = lokoctl_list(controllers(ctx));
    let (restart, skipped) = resolve(&list, &present(ctx, &list).await?);
    let (apiserver, others) = restart.into_iter().partition(|w| w.name == "kube-apiserver");
    Ok((apiserver, others, skipped))
}

pub struct Restart;

impl PhaseUnit for Restart {
    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        let list = lokoctl_list(controllers(ctx));
        let names: Vec<String> = list.iter().skip(1).map(|w| w.to_string()).collect();
        let servers = match &ctx.extension_servers {
            Some(found) if found.is_empty() => "none found now".into(),
            Some(found) => found.join(", "),
            None => "not resolved".into(),
        };
        vec![
            Planned::new(
                StepKind::Api,
                format!(
                    "restart {} (kubectl rollout restart) and wait as kubectl rollout status, unless the control-plane phase's upgrade rolled it onto its new Secret already ({SECRET_CHECKSUM}, rolled out, every pod started since); the API drops while it restarts",
                    list[0]
                ),
                Step::ApiServer,
            ),
            Planned::new(
                StepKind::Api,
                format!(
                    "restart, concurrently, as kubectl rollout restart and wait as kubectl rollout status: {}; and the extension API servers ({servers}); what the cluster does not run is skipped and said",
                    names.join(", ")
                ),
                Step::Others,
            ),
            Planned::new(StepKind::Check, "every APIService is Available", Step::Available),
        ]
    }

    fn found_done<'a>(&'a self, ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(found_done(ctx))
    }
}

/// Done when this run began the phase before and every workload of the list, and every one
/// behind an extension API server, has been restarted since and rolled out, and every
/// APIService is Available.
async fn found_done(ctx: &Ctx) -> Result<Option<String>> {
    let Some(since) = ctx.run.as_ref().and_then(|r| r.phase_first_began(Phase::Restart.name()))
    else {
        return Ok(None);
    };
    let (apiserver, others, _) = targets(ctx).await?;
    let client = &ctx.conn()?.client;
    let mut all: Vec<WorkloadRef> = apiserver.into_iter().chain(others).collect();
    if ctx.assets.aggregation_enabled() {
        all.extend(discovery::discover(client).await?.workloads());
    }
    for workload in &all {
        let restarted = restarted_and_rolled_out(client, workload, since).await?;
        // kube-apiserver is not restarted again when the upgrade rolled it already.
        let rolled =
            workload.name == "kube-apiserver" && rolled_by_control_plane(ctx, workload).await?;
        if !restarted && !rolled {
            return Ok(None);
        }
    }
    if !unavailable(ctx).await?.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "{} workloads restarted by this run and rolled out; every APIService Available",
        all.len()
    )))
}

async fn restarted_and_rolled_out(
    client: &kube::Client,
    workload: &WorkloadRef,
    since: jiff::Timestamp,
) -> Result<bool> {
    async fn one<K: Workload>(api: Api<K>, name: &str, since: jiff::Timestamp) -> Result<bool> {
        let current = api.get(name).await.map_err(|e| Error::kube(format!("read {name}"), e))?;
        Ok(rollout::restarted_since(&current, Some(since))
            && current.rollout_state().is_ok_and(|s| s.done))
    }
    let ns = workload.namespace.as_str();
    match workload.kind {
        WorkloadKind::Deployment => {
            one::<Deployment>(Api::namespaced(client.clone(), ns), &workload.name, since).await
        }
        WorkloadKind::DaemonSet => {
            one::<DaemonSet>(Api::namespaced(client.clone(), ns), &workload.name, since).await
        }
        WorkloadKind::StatefulSet => Ok(false),
    }
}

/// Whether a workload whose template is `template` already runs on the Secret the
/// `control-plane` phase put in place: its chart rolls it when its Secret changes
/// ([`SECRET_CHECKSUM`]: the upgrade writes the Secret, then the template), its rollout is
/// complete, and every pod of it (`pods_created`) was created after `since`, when this run's
/// `control-plane` phase first began (whole seconds: the same second does not count). Its
/// processes then read the new certificates at start, and another restart would only drop
/// the API a second time.
pub fn started_on_the_new_secret(
    template: Option<&PodTemplateSpec>,
    rolled_out: bool,
    pods_created: &[jiff::Timestamp],
    since: jiff::Timestamp,
) -> bool {
    let annotations = template.and_then(|t| t.metadata.as_ref()?.annotations.as_ref());
    annotations.is_some_and(|a| a.contains_key(SECRET_CHECKSUM))
        && rolled_out
        && !pods_created.is_empty()
        && pods_created.iter().all(|at| at.as_second() > since.as_second())
}

/// [`started_on_the_new_secret`] for `workload` as the cluster has it now; never before this
/// run's `control-plane` phase began.
async fn rolled_by_control_plane(ctx: &Ctx, workload: &WorkloadRef) -> Result<bool> {
    let Some(since) =
        ctx.run.as_ref().and_then(|r| r.phase_first_began(Phase::ControlPlane.name()))
    else {
        return Ok(false);
    };
    async fn one<K: Workload>(
        client: &kube::Client,
        workload: &WorkloadRef,
        since: jiff::Timestamp,
    ) -> Result<bool> {
        let ns = workload.namespace.as_str();
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let current = api
            .get(&workload.name)
            .await
            .map_err(|e| Error::kube(format!("read {workload}"), e))?;
        let selector: Vec<String> = current
            .template_labels()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if selector.is_empty() {
            return Ok(false);
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let list = pods
            .list(&ListParams::default().labels(&selector.join(",")))
            .await
            .map_err(|e| Error::kube(format!("list the pods of {workload}"), e))?;
        let created: Vec<jiff::Timestamp> = list
            .items
            .iter()
            .filter_map(|p| Some(p.metadata.creation_timestamp.as_ref()?.0))
            .collect();
        let rolled_out = current.rollout_state().is_ok_and(|s| s.done);
        Ok(started_on_the_new_secret(current.template(), rolled_out, &created, since))
    }
    let client = &ctx.conn()?.client;
    match workload.kind {
        WorkloadKind::Deployment => one::<Deployment>(client, workload, since).await,
        WorkloadKind::DaemonSet => one::<DaemonSet>(client, workload, since).await,
        WorkloadKind::StatefulSet => Ok(false),
    }
}

/// Restarts `workload` (unless this run's restart of it is in place) and waits for it.
async fn restart_one(
    client: &kube::Client,
    workload: &WorkloadRef,
    since: Option<jiff::Timestamp>,
    timeout: std::time::Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    async fn one<K: Workload>(
        api: Api<K>,
        workload: &WorkloadRef,
        since: Option<jiff::Timestamp>,
        timeout: std::time::Duration,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<()> {
        let current = api
            .get(&workload.name)
            .await
            .map_err(|e| Error::kube(format!("read {workload}"), e))?;
        rollout::restart_unless_ours(&api, current, since, timeout, progress).await
    }
    let api_of = || (client.clone(), workload.namespace.as_str());
    match workload.kind {
        WorkloadKind::Deployment => {
            let (c, ns) = api_of();
            one::<Deployment>(Api::namespaced(c, ns), workload, since, timeout, progress).await
        }
        WorkloadKind::DaemonSet => {
            let (c, ns) = api_of();
            one::<DaemonSet>(Api::namespaced(c, ns), workload, since, timeout, progress).await
        }
        WorkloadKind::StatefulSet => Err(Error::Wiring("lokoctl's list has no StatefulSet".into())),
    }
}

enum Step {
    ApiServer,
    Others,
    Available,
}

fn fail(reason: String) -> Error {
    Error::Verification { phase: Phase::Restart.name(), reason }
}

impl Action for Step {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::ApiServer => Box::pin(restart_apiserver(ctx)),
            Self::Others => Box::pin(restart_others(ctx)),
            Self::Available => Box::pin(all_available(ctx)),
        }
    }
}

fn began(ctx: &Ctx) -> Result<Option<jiff::Timestamp>> {
    Ok(ctx.run()?.phase_first_began(Phase::Restart.name()))
}

async fn restart_apiserver(ctx: &Ctx) -> Result<String> {
    let (apiserver, _, _) = targets(ctx).await?;
    let Some(workload) = apiserver.first() else {
        return Err(fail(
            "neither a Deployment nor a DaemonSet kube-system/kube-apiserver exists: is the kube-apiserver chart installed?".into(),
        ));
    };
    if rolled_by_control_plane(ctx, workload).await? {
        return Ok(format!(
            "{workload} not restarted again: the control-plane phase's upgrade rolled it onto its new Secret ({SECRET_CHECKSUM}), every pod started since, rolled out"
        ));
    }
    let report = ctx.reporter();
    restart_one(&ctx.conn()?.client, workload, began(ctx)?, ctx.timeout, &report).await?;
    Ok(format!("{workload} rolled out"))
}

async fn restart_others(ctx: &Ctx) -> Result<String> {
    let (_, others, skipped) = targets(ctx).await?;
    let client = &ctx.conn()?.client;
    let since = began(ctx)?;
    let report = ctx.reporter();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = others.len();
    let runs = others.iter().map(|workload| {
        let (report, done) = (&report, &done);
        async move {
            let quiet = |_: &str| {};
            let result = restart_one(client, workload, since, ctx.timeout, &quiet).await;
            let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            report(&format!("{n} of {total} rolled out ({workload} last)"));
            result.map_err(|e| format!("{workload}: {e}"))
        }
    });
    let extension = async {
        if !ctx.assets.aggregation_enabled() {
            return Ok(None);
        }
        let new = ctx.file_cert(AGGREGATION_CA)?;
        crate::extension_servers::restart_for_rotation(ctx.conn()?, since, ctx.timeout, &new)
            .await
            .map(Some)
    };
    let (results, extension) = tokio::join!(join_all(runs), extension);
    let mut problems: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
    let servers = match extension? {
        Some(done) => {
            problems.extend(done.problems);
            format!("; {} extension API server workload(s) restarted", done.restarted)
        }
        None => "; aggregation off: no extension API servers".into(),
    };
    if !problems.is_empty() {
        return Err(fail(problems.join("; ")));
    }
    let restarted: Vec<String> = others.iter().map(|w| w.to_string()).collect();
    let mut said = format!("rolled out: {}{servers}", restarted.join(", "));
    if !skipped.is_empty() {
        said.push_str(&format!("; not in this cluster, skipped: {}", skipped.join(", ")));
    }
    Ok(said)
}

/// The APIServices whose `Available` condition is not `True`, with what it says.
async fn unavailable(ctx: &Ctx) -> Result<Vec<String>> {
    let api: Api<APIService> = Api::all(ctx.conn()?.client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list the APIServices", e))?;
    Ok(list
        .items
        .iter()
        .filter_map(|svc| {
            let condition = discovery::available_condition(svc);
            if condition.is_some_and(|c| c.status == "True") {
                return None;
            }
            let name = svc.metadata.name.clone().unwrap_or_default();
            let why = condition
                .map(|c| format!("{} ({})", c.status, c.message.clone().unwrap_or_default()))
                .unwrap_or_else(|| "no Available condition".into());
            Some(format!("{name}: {why}"))
        })
        .collect())
}

async fn all_available(ctx: &Ctx) -> Result<String> {
    let mut last = Vec::new();
    let waited = crate::duration::poll(ctx.timeout, POLL, async || match unavailable(ctx).await {
        Ok(left) if left.is_empty() => Ok(Ok(())),
        Ok(left) => {
            last = left;
            Err(last.join("; "))
        }
        Err(e) if e.is_api_outage() => Err(e.to_string()),
        Err(e) => Ok(Err(e)),
    })
    .await;
    match waited {
        Ok(result) => result.map(|()| "every APIService is Available".into()),
        Err(said) => Err(fail(format!(
            "after {}s not every APIService is Available: {said}",
            ctx.timeout.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(kind: WorkloadKind, namespace: &str, name: &str) -> WorkloadRef {
        WorkloadRef { kind, namespace: namespace.into(), name: name.into() }
    }

    /// lokoctl's list (lokomotive-pki.md §4.4): the four of the control plane as Deployments
    /// with one controller, DaemonSets with more; kube-apiserver first.
    #[test]
    fn the_list_is_lokoctls_by_controller_count() {
        use WorkloadKind::{DaemonSet as Ds, Deployment as De};
        for (controllers, kind) in [(1, De), (3, Ds)] {
            let list = lokoctl_list(controllers);
            assert_eq!(list.len(), 10);
            assert_eq!(list[0], at(kind, "kube-system", "kube-apiserver"));
            for name in BY_CONTROLLERS {
                assert!(list.contains(&at(kind, "kube-system", name)), "{name}, {controllers}");
            }
            for name in ["calico-node", "pod-checkpointer", "kube-proxy", "kubelet"] {
                assert!(list.contains(&at(Ds, "kube-system", name)), "{name}");
            }
            assert!(list.contains(&at(De, "kube-system", "calico-kube-controllers")));
            assert!(list.contains(&at(De, "lokomotive-system", "admission-webhook-server")));
        }
    }

    /// kube-apiserver is not restarted again only when its chart rolls it on a Secret change,
    /// its rollout is complete and every pod of it began after the control-plane phase did.
    #[test]
    fn a_workload_rolled_onto_its_new_secret_is_recognised() {
        let since: jiff::Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let template = |annotation: Option<&str>| PodTemplateSpec {
            metadata: Some(kube::api::ObjectMeta {
                annotations: annotation.map(|a| {
                    std::collections::BTreeMap::from([(a.to_string(), "0123abcd".to_string())])
                }),
                ..Default::default()
            }),
            spec: None,
        };
        let rolling = template(Some(SECRET_CHECKSUM));
        let later = [at("2026-12-05T10:00:09Z"), at("2026-12-05T10:00:12Z")];
        assert!(started_on_the_new_secret(Some(&rolling), true, &later, since));
        // v0.5-v0.7's chart: a Secret change does not roll the pods.
        assert!(!started_on_the_new_secret(Some(&template(None)), true, &later, since));
        assert!(!started_on_the_new_secret(Some(&template(Some("other"))), true, &later, since));
        assert!(!started_on_the_new_secret(None, true, &later, since));
        assert!(!started_on_the_new_secret(Some(&rolling), false, &later, since));
        assert!(!started_on_the_new_secret(Some(&rolling), true, &[], since));
        // One pod from before the phase, or from its very second, may hold the old Secret.
        let one_old = [later[0], at("2026-12-05T09:59:00Z")];
        assert!(!started_on_the_new_secret(Some(&rolling), true, &one_old, since));
        let same_second = [at("2026-12-05T10:00:00.900Z")];
        assert!(!started_on_the_new_secret(Some(&rolling), true, &same_second, since));
    }

    /// What the cluster does not run is skipped and named; a workload of the other kind is
    /// restarted as what it is.
    #[test]
    fn absent_workloads_are_skipped_and_the_other_kind_is_taken() {
        use WorkloadKind::{DaemonSet as Ds, Deployment as De};
        let list = lokoctl_list(1);
        let present = BTreeSet::from([
            at(De, "kube-system", "kube-apiserver"),
            at(Ds, "kube-system", "kube-controller-manager"),
            at(Ds, "kube-system", "kubelet"),
            at(De, "lokomotive-system", "admission-webhook-server"),
            at(De, "other", "calico-node"),
        ]);
        let (restart, skipped) = resolve(&list, &present);
        assert_eq!(
            restart,
            [
                at(De, "kube-system", "kube-apiserver"),
                at(Ds, "kube-system", "kube-controller-manager"),
                at(Ds, "kube-system", "kubelet"),
                at(De, "lokomotive-system", "admission-webhook-server"),
            ]
        );
        assert_eq!(
            skipped,
            [
                "kube-system/coredns",
                "kube-system/kube-scheduler",
                "kube-system/calico-node",
                "kube-system/pod-checkpointer",
                "kube-system/kube-proxy",
                "kube-system/calico-kube-controllers",
            ]
        );
    }
}
