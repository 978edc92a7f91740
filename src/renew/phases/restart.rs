//! `restart`: everything that reads certificates only at start, restarted exactly as
//! `kubectl rollout restart` and waited for as `kubectl rollout status`: lokoctl's list
//! (lokomotive-pki.md §4.4: DaemonSets or Deployments by the controller count) and the
//! extension API servers. kube-apiserver first (the API drops while it restarts), then the
//! others concurrently; a workload the cluster does not run is skipped and said. Then every
//! APIService must be Available.

use std::collections::BTreeSet;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
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
                    "restart {} (kubectl rollout restart) and wait as kubectl rollout status; the API drops while it restarts",
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
        if !restarted_and_rolled_out(client, workload, since).await? {
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
