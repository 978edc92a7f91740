//! `kubectl rollout restart` and `kubectl rollout status`, reproduced exactly: the same
//! annotation and patch, the same completion conditions and messages, in kubectl's order
//! (`pkg/cmd/rollout` and `pkg/polymorphichelpers/rollout_status.go` of kubernetes/kubectl).
//!
//! Waiting uses one watch per workload from the restart patch's resourceVersion, resumed when it
//! drops (an API server restart included), so a wait costs no list and no polling; when that
//! version is too old (410 Gone, as after a restart) it lists the workload by name (field
//! selector `metadata.name`) and watches from the list's version, as kubectl does
//! (`watch.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use std::ops::ControlFlow;

use kube::api::{Api, Patch, PatchParams, WatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::watch::{self, Change, LastError};
use crate::duration::within;
use crate::error::{Error, Result};

/// The annotation `kubectl rollout restart` sets on the pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// Field manager recorded for our patches (kubectl records `kubectl-rollout`).
pub const FIELD_MANAGER: &str = "kubectl-certrotate";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "PascalCase")]
pub enum WorkloadKind {
    Deployment,
    DaemonSet,
    StatefulSet,
}

impl WorkloadKind {
    /// kubectl's lower-case resource name (`deployment/metrics-server`).
    pub fn resource(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::DaemonSet => "daemonset",
            Self::StatefulSet => "statefulset",
        }
    }
}

/// A workload by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} -n {}", self.kind.resource(), self.name, self.namespace)
    }
}

/// One evaluation of `kubectl rollout status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutState {
    pub done: bool,
    /// kubectl's message, without its trailing newline.
    pub message: String,
}

impl RolloutState {
    fn waiting(message: String) -> Self {
        Self { done: false, message }
    }
    fn done(message: String) -> Self {
        Self { done: true, message }
    }
}

/// A kind that `kubectl rollout` supports.
pub trait Workload:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: WorkloadKind;

    /// kubectl refuses to restart a paused Deployment.
    fn paused(&self) -> bool {
        false
    }

    fn template(&self) -> Option<&PodTemplateSpec>;

    /// The labels of the pod template, matched against a Service's selector.
    fn template_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.template()?.metadata.as_ref()?.labels.as_ref()
    }

    /// When `kubectl rollout restart` (or we) last restarted it.
    fn restarted_at(&self) -> Option<&str> {
        let annotations = self.template()?.metadata.as_ref()?.annotations.as_ref()?;
        annotations.get(RESTARTED_AT).map(String::as_str)
    }

    /// kubectl's `rollout status` for this object: `Err` is a failure that ends the wait.
    fn rollout_state(&self) -> std::result::Result<RolloutState, String>;
}

fn generation_observed(meta_generation: Option<i64>, observed: Option<i64>) -> bool {
    meta_generation.unwrap_or(0) <= observed.unwrap_or(0)
}

impl Workload for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;

    fn paused(&self) -> bool {
        self.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
    }

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }

    fn rollout_state(&self) -> std::result::Result<RolloutState, String> {
        let name = self.name_any();
        let status = self.status.clone().unwrap_or_default();
        if !generation_observed(self.metadata.generation, status.observed_generation) {
            return Ok(RolloutState::waiting(
                "Waiting for deployment spec update to be observed...".into(),
            ));
        }
        let progressing = status.conditions.iter().flatten().find(|c| c.type_ == "Progressing");
        if progressing.is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")) {
            return Err(format!("deployment {name:?} exceeded its progress deadline"));
        }
        let updated = status.updated_replicas.unwrap_or(0);
        let replicas = status.replicas.unwrap_or(0);
        let available = status.available_replicas.unwrap_or(0);
        if let Some(wanted) = self.spec.as_ref().and_then(|s| s.replicas)
            && updated < wanted
        {
            return Ok(RolloutState::waiting(format!(
                "Waiting for deployment {name:?} rollout to finish: {updated} out of {wanted} new \
                 replicas have been updated..."
            )));
        }
        if replicas > updated {
            return Ok(RolloutState::waiting(format!(
                "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending \
                 termination...",
                replicas - updated
            )));
        }
        if available < updated {
            return Ok(RolloutState::waiting(format!(
                "Waiting for deployment {name:?} rollout to finish: {available} of {updated} \
                 updated replicas are available..."
            )));
        }
        Ok(RolloutState::done(format!("deployment {name:?} successfully rolled out")))
    }
}

const ROLLING_UPDATE_ONLY: &str =
    "rollout status is only available for RollingUpdate strategy type";

impl Workload for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }

    fn rollout_state(&self) -> std::result::Result<RolloutState, String> {
        let name = self.name_any();
        let strategy = self.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
        if strategy.and_then(|s| s.type_.as_deref()).is_some_and(|t| t != "RollingUpdate") {
            return Err(ROLLING_UPDATE_ONLY.into());
        }
        let status = self.status.clone().unwrap_or_default();
        if !generation_observed(self.metadata.generation, status.observed_generation) {
            return Ok(RolloutState::waiting(
                "Waiting for daemon set spec update to be observed...".into(),
            ));
        }
        let desired = status.desired_number_scheduled;
        let updated = status.updated_number_scheduled.unwrap_or(0);
        let available = status.number_available.unwrap_or(0);
        if updated < desired {
            return Ok(RolloutState::waiting(format!(
                "Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} \
                 new pods have been updated..."
            )));
        }
        if available < desired {
            return Ok(RolloutState::waiting(format!(
                "Waiting for daemon set {name:?} rollout to finish: {available} of {desired} \
                 updated pods are available..."
            )));
        }
        Ok(RolloutState::done(format!("daemon set {name:?} successfully rolled out")))
    }
}

impl Workload for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }

    fn rollout_state(&self) -> std::result::Result<RolloutState, String> {
        let spec = self.spec.as_ref();
        let strategy = spec.and_then(|s| s.update_strategy.as_ref());
        if strategy.and_then(|s| s.type_.as_deref()).is_some_and(|t| t != "RollingUpdate") {
            return Err(ROLLING_UPDATE_ONLY.into());
        }
        let status = self.status.clone().unwrap_or_default();
        let observed = status.observed_generation.unwrap_or(0);
        if observed == 0 || self.metadata.generation.unwrap_or(0) > observed {
            return Ok(RolloutState::waiting(
                "Waiting for statefulset spec update to be observed...".into(),
            ));
        }
        let replicas = spec.and_then(|s| s.replicas);
        let ready = status.ready_replicas.unwrap_or(0);
        if let Some(wanted) = replicas
            && ready < wanted
        {
            return Ok(RolloutState::waiting(format!(
                "Waiting for {} pods to be ready...",
                wanted - ready
            )));
        }
        let updated = status.updated_replicas.unwrap_or(0);
        // kubectl takes this branch whenever rollingUpdate is set (the API server defaults
        // its partition to 0), so most StatefulSets end with "partitioned roll out complete".
        if let Some(rolling) = strategy.and_then(|s| s.rolling_update.as_ref()) {
            if let (Some(wanted), Some(partition)) = (replicas, rolling.partition)
                && updated < wanted - partition
            {
                return Ok(RolloutState::waiting(format!(
                    "Waiting for partitioned roll out to finish: {updated} out of {} new pods \
                     have been updated...",
                    wanted - partition
                )));
            }
            return Ok(RolloutState::done(format!(
                "partitioned roll out complete: {updated} new pods have been updated..."
            )));
        }
        let update_revision = status.update_revision.unwrap_or_default();
        let current_revision = status.current_revision.unwrap_or_default();
        if update_revision != current_revision {
            return Ok(RolloutState::waiting(format!(
                "waiting for statefulset rolling update to complete {updated} pods at revision \
                 {update_revision}..."
            )));
        }
        Ok(RolloutState::done(format!(
            "statefulset rolling update complete {} pods at revision {current_revision}...",
            status.current_replicas.unwrap_or(0)
        )))
    }
}

/// The annotation value kubectl writes: local time with its offset, to the second, and `Z`
/// for UTC, as Go's `time.RFC3339` formats it.
pub fn restart_timestamp(now: &jiff::Zoned) -> String {
    let base = now.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    if now.offset().seconds() == 0 {
        format!("{base}Z")
    } else {
        format!("{base}{}", now.strftime("%:z"))
    }
}

/// The strategic merge patch `kubectl rollout restart` sends.
pub fn restart_patch(timestamp: &str) -> serde_json::Value {
    serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: timestamp}}}}
    })
}

fn reference<K: Workload>(obj: &K) -> WorkloadRef {
    WorkloadRef {
        kind: K::KIND,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    }
}

/// Restarts `current` (as last read) the way `kubectl rollout restart` does, and returns the
/// patched object, which the wait starts from.
pub async fn restart<K: Workload>(api: &Api<K>, current: &K) -> Result<K> {
    let workload = reference(current);
    if current.paused() {
        return Err(Error::Rollout {
            workload: workload.to_string(),
            reason: "can't restart paused deployment (run rollout resume first)".into(),
        });
    }
    let timestamp = restart_timestamp(&jiff::Zoned::now());
    if current.restarted_at() == Some(timestamp.as_str()) {
        return Err(Error::Rollout {
            workload: workload.to_string(),
            reason: "it was restarted within the past second; wait before restarting again".into(),
        });
    }
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    api.patch(&workload.name, &params, &Patch::Strategic(restart_patch(&timestamp)))
        .await
        .map_err(|e| Error::kube(format!("restart {workload}"), e))
}

/// Waits like `kubectl rollout status` until `start`'s rollout is complete, reporting each new
/// message to `progress`, for at most `timeout` (zero: no limit, as kubectl's `--timeout 0`).
pub async fn wait<K: Workload>(
    api: &Api<K>,
    start: K,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let workload = reference(&start);
    let mut last = String::new();
    let last_error = LastError::default();
    match within(timeout, follow(api, start, &mut last, &last_error, progress)).await {
        Some(result) => result,
        None => {
            let mut waiting_for = if last.is_empty() { "the first status".into() } else { last };
            if let Some(error) = last_error.get() {
                waiting_for = format!("{waiting_for} (last error: {error})");
            }
            Err(Error::RolloutTimeout {
                workload: workload.to_string(),
                secs: timeout.as_secs(),
                waiting_for,
            })
        }
    }
}

async fn follow<K: Workload>(
    api: &Api<K>,
    start: K,
    last: &mut String,
    last_error: &LastError,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let workload = reference(&start);
    let mut observe = |obj: &K| -> Result<bool> {
        let state = obj
            .rollout_state()
            .map_err(|reason| Error::Rollout { workload: workload.to_string(), reason })?;
        if state.message != *last {
            progress(&state.message);
            *last = state.message;
        }
        Ok(state.done)
    };
    if observe(&start)? {
        return Ok(());
    }
    let params = WatchParams::default().fields(&format!("metadata.name={}", workload.name));
    let version = start.resource_version().unwrap_or_default();
    let what = workload.to_string();
    let known = [watch::key(&start)];
    watch::follow(api, &what, &params, version, known, last_error, |change| match change {
        Change::Applied(obj) => match observe(&obj) {
            Ok(false) => ControlFlow::Continue(()),
            Ok(true) => ControlFlow::Break(Ok(())),
            Err(err) => ControlFlow::Break(Err(err)),
        },
        Change::Deleted(_) => ControlFlow::Break(Err(Error::Rollout {
            workload: workload.to_string(),
            reason: "object has been deleted".into(),
        })),
    })
    .await?
}

/// Restarts `current` and waits for its rollout: `kubectl rollout restart` followed by
/// `kubectl rollout status --timeout`.
pub async fn restart_and_wait<K: Workload>(
    api: &Api<K>,
    current: &K,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let patched = restart(api, current).await?;
    progress("restarted");
    wait(api, patched, timeout, progress).await
}

/// `kubectl rollout restart deployment/<name> -n <namespace>`, then `kubectl rollout status`.
/// A restart made at or after `ours_since` (when the interrupted phase first began) is this
/// run's own: its rollout is waited for, not started again (kubectl would refuse a second
/// restart within the same second, and a second rollout is only longer).
pub async fn restart_deployment(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    ours_since: Option<jiff::Timestamp>,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let current = api
        .get(name)
        .await
        .map_err(|e| Error::kube(format!("read deployment {name} in {namespace}"), e))?;
    restart_unless_ours(&api, current, ours_since, timeout, progress).await
}

/// [`restart_and_wait`] of `current`, unless a restart made at or after `ours_since` (this
/// run's own, before it was cut off) is in place: then only its rollout is waited for.
pub async fn restart_unless_ours<K: Workload>(
    api: &Api<K>,
    current: K,
    ours_since: Option<jiff::Timestamp>,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    if restarted_since(&current, ours_since) {
        progress("restarted already by this run: waiting for that rollout");
        return wait(api, current, timeout, progress).await;
    }
    restart_and_wait(api, &current, timeout, progress).await
}

/// Whether `obj` was restarted at or after `since` (to the second, as the annotation is).
pub fn restarted_since<K: Workload>(obj: &K, since: Option<jiff::Timestamp>) -> bool {
    let restarted = obj.restarted_at().and_then(|at| at.parse::<jiff::Timestamp>().ok());
    // The annotation has whole seconds: a restart in the very second the phase began is ours.
    matches!((restarted, since), (Some(at), Some(since)) if at.as_second() >= since.as_second())
}

/// Restarts the control plane's kube-apiserver (a Deployment when the chart runs one replica,
/// a DaemonSet otherwise) and waits for it; the API drops while it restarts, and the wait
/// rides through that.
pub async fn restart_kube_apiserver(
    client: &kube::Client,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<WorkloadRef> {
    kube_apiserver(client, true, timeout, progress).await
}

/// Waits, as `kubectl rollout status` does, for the kube-apiserver rollout a helm upgrade
/// started.
pub async fn wait_kube_apiserver(
    client: &kube::Client,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<WorkloadRef> {
    kube_apiserver(client, false, timeout, progress).await
}

async fn kube_apiserver(
    client: &kube::Client,
    restart_first: bool,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<WorkloadRef> {
    async fn one<K: Workload>(
        api: &Api<K>,
        current: K,
        restart_first: bool,
        timeout: Duration,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<WorkloadRef> {
        let workload = reference(&current);
        if restart_first {
            restart_and_wait(api, &current, timeout, progress).await?;
        } else {
            wait(api, current, timeout, progress).await?;
        }
        Ok(workload)
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let read = |e| Error::kube("read the kube-apiserver workload in kube-system", e);
    if let Some(current) = deployments.get_opt("kube-apiserver").await.map_err(read)? {
        return one(&deployments, current, restart_first, timeout, progress).await;
    }
    match daemonsets.get_opt("kube-apiserver").await.map_err(read)? {
        Some(current) => one(&daemonsets, current, restart_first, timeout, progress).await,
        None => Err(Error::Rollout {
            workload: "kube-apiserver -n kube-system".into(),
            reason: "neither a Deployment nor a DaemonSet of that name exists: is the \
                     kube-apiserver chart installed?"
                .into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(value: serde_json::Value) -> Deployment {
        serde_json::from_value(value).unwrap()
    }

    fn deploy(generation: i64, observed: i64, spec: i64, status: [i64; 3]) -> Deployment {
        let [replicas, updated, available] = status;
        deployment(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "generation": generation},
            "spec": {"replicas": spec, "selector": {}, "template": {}},
            "status": {"observedGeneration": observed, "replicas": replicas,
                       "updatedReplicas": updated, "availableReplicas": available}
        }))
    }

    #[test]
    /// A resumed restart recognises its own restart by the annotation's time, whatever offset
    /// kubectl (or this tool) wrote it with.
    fn a_restart_since_the_phase_began_is_ours() {
        let restarted = |at: &str| {
            deployment(serde_json::json!({
                "metadata": {"name": "web"},
                "spec": {"selector": {}, "template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}
            }))
        };
        let began: jiff::Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        assert!(restarted_since(&restarted("2026-12-04T10:00:00Z"), Some(began)));
        assert!(restarted_since(&restarted("2026-12-04T11:00:05+01:00"), Some(began)));
        assert!(!restarted_since(&restarted("2026-12-04T09:59:59Z"), Some(began)));
        assert!(!restarted_since(&restarted("2026-12-04T10:59:59+01:00"), Some(began)));
        assert!(!restarted_since(&restarted("not a time"), Some(began)));
        let within_the_second: jiff::Timestamp = "2026-12-04T10:00:00.7Z".parse().unwrap();
        assert!(restarted_since(&restarted("2026-12-04T10:00:00Z"), Some(within_the_second)));
        assert!(!restarted_since(&deploy(1, 1, 1, [1, 1, 1]), Some(began)));
        assert!(!restarted_since(&restarted("2026-12-04T10:00:00Z"), None));
    }

    #[test]
    /// Every branch of kubectl's deployment status, in kubectl's order and words.
    fn deployment_states() {
        let msg = |d: Deployment| d.rollout_state().unwrap().message;
        assert_eq!(
            msg(deploy(3, 2, 2, [2, 2, 2])),
            "Waiting for deployment spec update to be observed..."
        );
        assert_eq!(
            msg(deploy(3, 3, 2, [3, 1, 1])),
            "Waiting for deployment \"web\" rollout to finish: 1 out of 2 new replicas have been updated..."
        );
        assert_eq!(
            msg(deploy(3, 3, 2, [3, 2, 2])),
            "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination..."
        );
        assert_eq!(
            msg(deploy(3, 3, 2, [2, 2, 1])),
            "Waiting for deployment \"web\" rollout to finish: 1 of 2 updated replicas are available..."
        );
        let done = deploy(3, 3, 2, [2, 2, 2]).rollout_state().unwrap();
        assert!(done.done);
        assert_eq!(done.message, "deployment \"web\" successfully rolled out");
    }

    #[test]
    fn progress_deadline_fails_at_once() {
        let mut d = deploy(3, 3, 2, [3, 1, 1]);
        d.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(serde_json::json!({
                "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"
            }))
            .unwrap(),
        ]);
        assert_eq!(
            d.rollout_state().unwrap_err(),
            "deployment \"web\" exceeded its progress deadline"
        );
    }

    #[test]
    fn daemonset_states() {
        let ds = |gen_: i64,
                  desired: i32,
                  updated: i32,
                  available: i32,
                  strategy: &str|
         -> DaemonSet {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "kube-apiserver", "generation": gen_},
                "spec": {"selector": {}, "template": {}, "updateStrategy": {"type": strategy}},
                "status": {"observedGeneration": 2, "desiredNumberScheduled": desired,
                           "updatedNumberScheduled": updated, "numberAvailable": available,
                           "currentNumberScheduled": desired, "numberMisscheduled": 0, "numberReady": available}
            }))
            .unwrap()
        };
        let msg = |d: DaemonSet| d.rollout_state().unwrap().message;
        assert_eq!(
            msg(ds(3, 2, 2, 2, "RollingUpdate")),
            "Waiting for daemon set spec update to be observed..."
        );
        assert_eq!(
            msg(ds(2, 3, 1, 1, "RollingUpdate")),
            "Waiting for daemon set \"kube-apiserver\" rollout to finish: 1 out of 3 new pods have been updated..."
        );
        assert_eq!(
            msg(ds(2, 3, 3, 2, "RollingUpdate")),
            "Waiting for daemon set \"kube-apiserver\" rollout to finish: 2 of 3 updated pods are available..."
        );
        assert!(ds(2, 3, 3, 3, "RollingUpdate").rollout_state().unwrap().done);
        assert_eq!(ds(2, 3, 3, 3, "OnDelete").rollout_state().unwrap_err(), ROLLING_UPDATE_ONLY);
    }

    #[test]
    fn statefulset_states() {
        let sts = |observed: i64,
                   ready: i32,
                   updated: i32,
                   partition: Option<i32>,
                   revs: (&str, &str)|
         -> StatefulSet {
            let mut strategy = serde_json::json!({"type": "RollingUpdate"});
            if let Some(p) = partition {
                strategy["rollingUpdate"] = serde_json::json!({"partition": p});
            }
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "db", "generation": 2},
                "spec": {"replicas": 3, "selector": {}, "template": {}, "serviceName": "db",
                         "updateStrategy": strategy},
                "status": {"observedGeneration": observed, "replicas": 3, "readyReplicas": ready,
                           "updatedReplicas": updated, "currentReplicas": 3,
                           "updateRevision": revs.0, "currentRevision": revs.1}
            }))
            .unwrap()
        };
        let msg = |s: StatefulSet| s.rollout_state().unwrap().message;
        assert_eq!(
            msg(sts(0, 3, 3, None, ("a", "a"))),
            "Waiting for statefulset spec update to be observed..."
        );
        assert_eq!(msg(sts(2, 1, 3, None, ("a", "a"))), "Waiting for 2 pods to be ready...");
        assert_eq!(
            msg(sts(2, 3, 0, Some(2), ("b", "a"))),
            "Waiting for partitioned roll out to finish: 0 out of 1 new pods have been updated..."
        );
        assert!(sts(2, 3, 1, Some(2), ("b", "a")).rollout_state().unwrap().done);
        assert_eq!(
            msg(sts(2, 3, 3, Some(0), ("b", "a"))),
            "partitioned roll out complete: 3 new pods have been updated..."
        );
        assert_eq!(
            msg(sts(2, 3, 1, None, ("b", "a"))),
            "waiting for statefulset rolling update to complete 1 pods at revision b..."
        );
        let done = sts(2, 3, 3, None, ("b", "b")).rollout_state().unwrap();
        assert_eq!(
            (done.done, done.message.as_str()),
            (true, "statefulset rolling update complete 3 pods at revision b...")
        );
    }

    #[test]
    fn timestamp_is_go_rfc3339() {
        let utc: jiff::Zoned = "2025-10-10T21:43:59.5+00:00[UTC]".parse().unwrap();
        assert_eq!(restart_timestamp(&utc), "2025-10-10T21:43:59Z");
        let chicago: jiff::Zoned = "2025-10-10T21:43:59-05:00[America/Chicago]".parse().unwrap();
        assert_eq!(restart_timestamp(&chicago), "2025-10-10T21:43:59-05:00");
        assert_eq!(
            restart_patch("t"),
            serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "t"}}}}})
        );
    }

    #[test]
    fn paused_deployment_is_detected() {
        let mut d = deploy(1, 1, 1, [1, 1, 1]);
        assert!(!d.paused());
        d.spec.as_mut().unwrap().paused = Some(true);
        assert!(d.paused());
    }
}
