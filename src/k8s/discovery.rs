//! Finding extension API servers: every APIService backed by a Service, that Service, the
//! workloads whose pod templates its selector matches, and their pods.
//!
//! Lists are made once per namespace and kind (not per APIService), all concurrently.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::time::Duration;

use futures::future::try_join_all;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
    APIService, APIServiceCondition,
};
use kube::api::{Api, ListParams, LogParams, ObjectList, WatchParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use super::rollout::{Workload, WorkloadKind, WorkloadRef, restart_unless_ours};
use super::watch::{self, Change, LastError};
use crate::duration::within;
use crate::error::{Error, Result};

/// One APIService served by a Service in the cluster.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionServer {
    pub api_service: String,
    /// `namespace/name` of the backing Service.
    pub service: String,
    pub available: String,
    pub available_reason: Option<String>,
    pub workloads: Vec<WorkloadRef>,
    pub pods: Vec<PodReadiness>,
    /// Why its workloads could not be determined, when they could not.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReadiness {
    pub name: String,
    pub namespace: String,
    pub ready: bool,
    pub containers: Vec<String>,
    /// When the pod was created: a restart's pods are newer than what it had to pick up.
    #[serde(skip)]
    pub created: Option<jiff::Timestamp>,
}

/// Objects found by [`discover`], kept for the restarts that may follow.
#[derive(Default)]
pub struct Discovery {
    pub servers: Vec<ExtensionServer>,
    pub deployments: BTreeMap<WorkloadRef, Deployment>,
    pub daemonsets: BTreeMap<WorkloadRef, DaemonSet>,
    pub statefulsets: BTreeMap<WorkloadRef, StatefulSet>,
    /// resourceVersion of the APIService list, to watch availability from.
    pub api_services_version: String,
}

impl Discovery {
    /// The APIServices whose workloads a restart covers; the others (no selector, nothing
    /// matched) cannot be expected back and are reported as problems instead.
    pub fn restarted_api_services(&self) -> BTreeSet<String> {
        let served = self.servers.iter().filter(|s| !s.workloads.is_empty());
        served.map(|s| s.api_service.clone()).collect()
    }

    /// Every workload behind some extension server, each once.
    pub fn workloads(&self) -> BTreeSet<WorkloadRef> {
        self.servers.iter().flat_map(|s| s.workloads.iter().cloned()).collect()
    }
}

/// Objects of one namespace, listed once.
struct Namespace {
    services: ObjectList<Service>,
    deployments: ObjectList<Deployment>,
    daemonsets: ObjectList<DaemonSet>,
    statefulsets: ObjectList<StatefulSet>,
    pods: ObjectList<Pod>,
}

async fn list<K>(client: &Client, namespace: &str, what: &str) -> Result<ObjectList<K>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube(format!("list {what} in namespace {namespace}"), e))
}

async fn list_namespace(client: &Client, namespace: &str) -> Result<Namespace> {
    let (services, deployments, daemonsets, statefulsets, pods) = tokio::try_join!(
        list(client, namespace, "services"),
        list(client, namespace, "deployments"),
        list(client, namespace, "daemonsets"),
        list(client, namespace, "statefulsets"),
        list(client, namespace, "pods"),
    )?;
    Ok(Namespace { services, deployments, daemonsets, statefulsets, pods })
}

/// Whether a Service selector selects `labels` (every selector pair present).
pub fn selects(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn matching<K: Workload>(
    objects: &ObjectList<K>,
    selector: &BTreeMap<String, String>,
    found: &mut BTreeMap<WorkloadRef, K>,
) -> Vec<WorkloadRef> {
    objects
        .items
        .iter()
        .filter(|o| selects(selector, o.template_labels()))
        .map(|o| {
            let reference = WorkloadRef {
                kind: K::KIND,
                namespace: o.namespace().unwrap_or_default(),
                name: o.name_any(),
            };
            found.insert(reference.clone(), o.clone());
            reference
        })
        .collect()
}

fn pod_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.into_iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Lists everything once and ties each non-local APIService to its workloads and pods.
pub async fn discover(client: &Client) -> Result<Discovery> {
    let api_services = Api::<APIService>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list APIServices", e))?;
    let backed: Vec<(APIService, String, String)> = api_services
        .items
        .iter()
        .filter_map(|a| {
            let svc = a.spec.as_ref()?.service.as_ref()?;
            Some((a.clone(), svc.namespace.clone()?, svc.name.clone()?))
        })
        .collect();
    let namespaces: BTreeSet<String> = backed.iter().map(|(_, ns, _)| ns.clone()).collect();
    let listed = try_join_all(namespaces.iter().map(|ns| list_namespace(client, ns))).await?;
    let by_namespace: BTreeMap<String, Namespace> = namespaces.into_iter().zip(listed).collect();

    let mut discovery = Discovery {
        api_services_version: api_services.metadata.resource_version.unwrap_or_default(),
        ..Default::default()
    };
    for (api_service, namespace, name) in backed {
        let condition = available_condition(&api_service);
        let mut server = ExtensionServer {
            api_service: api_service.name_any(),
            service: format!("{namespace}/{name}"),
            available: condition.map_or("Unknown".into(), |c| c.status.clone()),
            available_reason: condition.and_then(|c| c.reason.clone()),
            workloads: Vec::new(),
            pods: Vec::new(),
            problems: Vec::new(),
        };
        let objects = &by_namespace[&namespace];
        let Some(service) = objects.services.items.iter().find(|s| s.name_any() == name) else {
            server.problems.push(format!(
                "service {namespace}/{name} does not exist: fix or delete APIService {}",
                server.api_service
            ));
            discovery.servers.push(server);
            continue;
        };
        let selector = service.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        if selector.is_empty() {
            server.problems.push(format!(
                "service {namespace}/{name} has no selector, so its workloads cannot be found: \
                 restart them by hand"
            ));
            discovery.servers.push(server);
            continue;
        }
        server.workloads.extend(matching(
            &objects.deployments,
            &selector,
            &mut discovery.deployments,
        ));
        server.workloads.extend(matching(
            &objects.daemonsets,
            &selector,
            &mut discovery.daemonsets,
        ));
        server.workloads.extend(matching(
            &objects.statefulsets,
            &selector,
            &mut discovery.statefulsets,
        ));
        if server.workloads.is_empty() {
            let pairs: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            server.problems.push(format!(
                "no deployment, daemonset or statefulset in {namespace} has pod labels {}: \
                 restart its pods by hand",
                pairs.join(",")
            ));
        }
        server.pods = objects
            .pods
            .items
            .iter()
            .filter(|p| selects(&selector, p.metadata.labels.as_ref()))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| PodReadiness {
                name: p.name_any(),
                namespace: namespace.clone(),
                ready: pod_ready(p),
                created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                containers: p
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
                    .collect(),
            })
            .collect();
        discovery.servers.push(server);
    }
    Ok(discovery)
}

impl Discovery {
    /// Restarts one discovered workload as `kubectl rollout restart` does and waits for it as
    /// `kubectl rollout status` does; a restart made at or after `ours_since` (a resumed
    /// phase's own, before it was cut off) is waited for instead of made again.
    pub async fn restart_and_wait(
        &self,
        client: &Client,
        workload: &WorkloadRef,
        ours_since: Option<jiff::Timestamp>,
        timeout: Duration,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<()> {
        let ns = workload.namespace.as_str();
        match workload.kind {
            WorkloadKind::Deployment => {
                let api = Api::namespaced(client.clone(), ns);
                let current = self.deployments[workload].clone();
                restart_unless_ours(&api, current, ours_since, timeout, progress).await
            }
            WorkloadKind::DaemonSet => {
                let api = Api::namespaced(client.clone(), ns);
                let current = self.daemonsets[workload].clone();
                restart_unless_ours(&api, current, ours_since, timeout, progress).await
            }
            WorkloadKind::StatefulSet => {
                let api = Api::namespaced(client.clone(), ns);
                let current = self.statefulsets[workload].clone();
                restart_unless_ours(&api, current, ours_since, timeout, progress).await
            }
        }
    }
}

/// The `Available` condition of the APIServices a restart covers, kept current by one watch
/// of all APIServices that starts at discovery: the restarts happen while it follows, so no
/// second list is needed and no change in between is missed.
pub struct Availability {
    state: tokio::sync::watch::Sender<Seen>,
    last_error: LastError,
}

#[derive(Clone)]
struct Seen {
    available: BTreeMap<String, String>,
    /// Why the watch stopped for good (the API refused it), when it did.
    failed: Option<String>,
}

/// What [`Availability::until_available`] saw last.
pub struct Available {
    /// The `Available` status of each APIService.
    pub status: BTreeMap<String, String>,
    /// Why that may not be current: the watch was refused, or kept failing until the timeout.
    pub problem: Option<String>,
}

impl Availability {
    /// Starts from what discovery saw.
    pub fn new(discovery: &Discovery) -> Self {
        let names = discovery.restarted_api_services();
        let available = discovery
            .servers
            .iter()
            .filter(|s| names.contains(&s.api_service))
            .map(|s| (s.api_service.clone(), s.available.clone()))
            .collect();
        let state = tokio::sync::watch::Sender::new(Seen { available, failed: None });
        Self { state, last_error: LastError::default() }
    }

    /// Follows every change from `version` (the discovery list's) on; never returns, so run it
    /// beside the work that needs it. A refused watch ends the waits of `until_available`.
    pub async fn follow(&self, client: &Client, version: &str) -> Infallible {
        let api = Api::<APIService>::all(client.clone());
        let known: Vec<String> = self.state.borrow().available.keys().cloned().collect();
        let followed = watch::follow(
            &api,
            "apiservices",
            &WatchParams::default(),
            version.to_string(),
            known,
            &self.last_error,
            |change| {
                if let Change::Applied(svc) = change {
                    self.state.send_modify(|state| record_available(&svc, &mut state.available));
                }
                ControlFlow::<Infallible>::Continue(())
            },
        )
        .await;
        let Err(refused) = followed;
        self.state.send_modify(|state| state.failed = Some(refused.to_string()));
        std::future::pending().await
    }

    /// Waits until all are `Available=True`, at most `timeout` (zero: no limit; `follow` must
    /// be running), and returns the last status of each.
    pub async fn until_available(&self, timeout: Duration) -> Available {
        let mut seen = self.state.subscribe();
        let settled =
            |s: &Seen| s.failed.is_some() || s.available.values().all(|status| status == "True");
        let in_time = within(timeout, seen.wait_for(settled)).await.is_some();
        let Seen { available, failed } = self.state.borrow().clone();
        let problem = match failed {
            Some(refused) => Some(refused),
            None if in_time => None,
            None => self.last_error.get(),
        };
        Available { status: available, problem }
    }
}

/// The `Available` condition of an APIService, which the aggregator keeps current.
pub fn available_condition(svc: &APIService) -> Option<&APIServiceCondition> {
    let conditions = svc.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == "Available")
}

fn record_available(svc: &APIService, available: &mut BTreeMap<String, String>) {
    let name = svc.name_any();
    if let Some(slot) = available.get_mut(&name) {
        let condition = available_condition(svc);
        *slot = condition.map_or("Unknown".into(), |c| c.status.clone());
    }
}

/// Asks each APIService (`v1beta1.metrics.k8s.io`) for its discovery document through the
/// aggregator: an answer means the extension server accepted kube-apiserver's proxy client
/// certificate, which an `Available` condition set before a change does not prove.
pub async fn probe(
    client: &Client,
    api_services: &BTreeSet<String>,
) -> Vec<(String, std::result::Result<(), String>)> {
    let probes = api_services.iter().map(|name| async move {
        let Some((version, group)) = name.split_once('.') else {
            return (name.clone(), Err("is not named version.group".to_string()));
        };
        let request = http::Request::get(format!("/apis/{group}/{version}")).body(Vec::new());
        let answer = match request {
            Ok(request) => client.request_text(request).await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        (name.clone(), answer)
    });
    futures::future::join_all(probes).await
}

/// [`probe`] until every APIService answers or `timeout` ends (right after a restart the
/// aggregator may still hold connections to the replaced server); `Err` names those that
/// did not answer.
pub async fn probe_until(
    client: &Client,
    api_services: &BTreeSet<String>,
    timeout: Duration,
) -> std::result::Result<(), String> {
    crate::duration::poll(timeout, Duration::from_secs(1), async || {
        let failed: Vec<String> = probe(client, api_services)
            .await
            .into_iter()
            .filter_map(|(name, answer)| {
                answer.err().map(|why| {
                    format!("apiservice {name} does not answer through the aggregator: {why}")
                })
            })
            .collect();
        if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) }
    })
    .await
}

/// The log of one container of a pod (what `kubectl logs` prints).
pub async fn pod_logs(
    client: &Client,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<String> {
    let params = LogParams { container: Some(container.to_string()), ..Default::default() };
    Api::<Pod>::namespaced(client.clone(), namespace).logs(pod, &params).await.map_err(|e| {
        Error::kube(format!("read the logs of pod {namespace}/{pod} ({container})"), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_must_be_non_empty_and_contained() {
        let sel: BTreeMap<String, String> = [("app".into(), "m".into())].into();
        let labels: BTreeMap<String, String> =
            [("app".into(), "m".into()), ("x".into(), "y".into())].into();
        assert!(selects(&sel, Some(&labels)));
        assert!(!selects(&sel, None));
        assert!(!selects(&BTreeMap::new(), Some(&labels)));
        let other: BTreeMap<String, String> = [("app".into(), "n".into())].into();
        assert!(!selects(&sel, Some(&other)));
    }
}
