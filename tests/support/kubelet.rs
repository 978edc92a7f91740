//! A simulated kubelet: no containers run, but real controllers see real Nodes and pods go
//! through a kubelet's lifecycle (bound, Running, Ready, removed on deletion), so real
//! rollouts, `kubectl rollout status` and helm `--wait` behave as on a cluster. Pods that stand
//! for a real process (the kube-apiserver, extension API servers) get it started and stopped
//! by a [`PodRuntime`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::logserver::{LogLookup, LogServer};
use super::pki::CertFiles;
use super::process::EventLog;

/// Pod annotation: milliseconds between "container started" and Ready, overriding the
/// kubelet's default delay for that pod.
pub const READY_DELAY_ANNOTATION: &str = "certrotate-test/ready-delay-ms";
/// Pod label: `"true"` keeps the pod Running but never Ready (a stuck rollout).
pub const NEVER_READY_LABEL: &str = "certrotate-test/never-ready";

/// Labels every simulated node carries, those of a Lokomotive controller node.
pub const NODE_LABELS: [(&str, &str); 4] = [
    ("kubernetes.io/os", "linux"),
    ("kubernetes.io/arch", "amd64"),
    ("node.kubernetes.io/controller", "true"),
    ("node.kubernetes.io/master", ""),
];

const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often a held pod looks whether the test released it.
const HOLD_POLL: Duration = Duration::from_millis(250);
/// How long the kubelet keeps retrying one API write (bind, status, delete) while the API is
/// away, e.g. during kube-apiserver restarts.
const API_RETRY_FOR: Duration = Duration::from_secs(180);

pub type PodPredicate = Arc<dyn Fn(&Pod) -> bool + Send + Sync>;

/// The node's own credentials (its kubeconfig, read when the kubelet starts): replaced when a
/// kubelet chart pod starts, as a restarted kubelet reads its kubeconfig again (`node.rs`).
pub type NodeClient = Arc<RwLock<Client>>;

/// What "runs" the containers of the pods it matches.
pub trait PodRuntime: Send + Sync {
    fn matches(&self, pod: &Pod) -> bool;
    /// Starts the pod's process; the pod becomes Ready only after this returns `Ok`.
    fn start<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), String>>;
    /// The pod was marked Ready (e.g. it may now receive traffic).
    fn ready(&self, pod: &Pod);
    /// The pod is being removed: stop its process. May block for a stop grace period.
    fn stop(&self, pod: &Pod);
    /// The file holding the pod's container log.
    fn log_file(&self, pod: &Pod) -> Option<PathBuf>;
}

/// How the simulated kubelet behaves.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Node objects to create: `node-0`, `node-1`, …
    pub nodes: usize,
    /// Delay between a pod's start and Ready, unless its annotation says otherwise.
    pub ready_delay: Duration,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        KubeletConfig { nodes: 1, ready_delay: Duration::from_millis(300) }
    }
}

struct Tracked {
    pod: Pod,
    gone: watch::Sender<bool>,
}

struct Shared {
    /// The scheduler's and the pods' side (binding, pod status): the admin client.
    client: Client,
    /// The node's own side (registration, status heartbeats): the kubelet client certificate
    /// of the node's kubeconfig, trusting the node's CA copy.
    node_client: NodeClient,
    nodes: Vec<String>,
    ready_delay: Duration,
    runtimes: Vec<Arc<dyn PodRuntime>>,
    never_ready: RwLock<Option<PodPredicate>>,
    never_started: RwLock<Option<PodPredicate>>,
    registered_logs: Mutex<HashMap<(String, String, String), String>>,
    pods: Mutex<HashMap<String, Tracked>>,
    /// Uids of pods already removed: late events about them must not start them again.
    finished: Mutex<HashSet<String>>,
    tasks: Mutex<Vec<AbortHandle>>,
    events: Arc<EventLog>,
    next_node: AtomicUsize,
}

pub struct Kubelet {
    shared: Arc<Shared>,
    log_server: LogServer,
}

impl Kubelet {
    /// Creates the Node objects (with `node_client`, the node's own credentials) and starts
    /// the kubelet's tasks on the current runtime.
    pub async fn start(
        client: Client,
        node_client: NodeClient,
        config: &KubeletConfig,
        runtimes: Vec<Arc<dyn PodRuntime>>,
        events: Arc<EventLog>,
        cert: &CertFiles,
    ) -> Kubelet {
        let shared = Arc::new(Shared {
            client,
            node_client,
            nodes: (0..config.nodes.max(1)).map(|i| format!("node-{i}")).collect(),
            ready_delay: config.ready_delay,
            runtimes,
            never_ready: RwLock::new(None),
            never_started: RwLock::new(None),
            registered_logs: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            finished: Mutex::new(HashSet::new()),
            tasks: Mutex::new(Vec::new()),
            events,
            next_node: AtomicUsize::new(0),
        });
        let lookup_from = Arc::clone(&shared);
        let lookup: LogLookup =
            Arc::new(move |ns, pod, container| lookup_from.container_log(ns, pod, container));
        let log_server = LogServer::start(cert, lookup);
        let port = log_server.port();

        let nodes: Api<Node> = Api::all(shared.node_client.read().unwrap().clone());
        for name in &shared.nodes {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(node_labels(name)),
                    ..Default::default()
                },
                ..Default::default()
            };
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => panic!("creating Node {name}: {e}"),
            }
            nodes
                .patch_status(name, &PatchParams::default(), &Patch::Merge(node_status(port)))
                .await
                .unwrap_or_else(|e| panic!("setting the status of Node {name}: {e}"));
        }
        shared.events.line(format!(
            "kubelet: nodes {:?} ready, log endpoint https://127.0.0.1:{port}",
            shared.nodes
        ));

        let heartbeat = tokio::spawn(heartbeat(Arc::clone(&shared), port));
        let watch = tokio::spawn(watch_pods(Arc::clone(&shared)));
        shared.tasks.lock().unwrap().extend([heartbeat.abort_handle(), watch.abort_handle()]);
        Kubelet { shared, log_server }
    }

    /// Names of the simulated nodes.
    pub fn nodes(&self) -> &[String] {
        &self.shared.nodes
    }

    /// Pods for which `predicate` holds stay Running but not Ready (until the predicate is
    /// cleared with `None`, when they become Ready): a stuck rollout that can be released.
    pub fn set_never_ready(&self, predicate: Option<PodPredicate>) {
        *self.shared.never_ready.write().unwrap() = predicate;
    }

    /// Pods for which `predicate` holds are bound but stay Pending with their containers
    /// waiting (like an image that cannot be pulled): their process, if any, is not started
    /// (a stuck kube-apiserver pod does not restart the apiserver). `None` releases them.
    pub fn set_never_started(&self, predicate: Option<PodPredicate>) {
        *self.shared.never_started.write().unwrap() = predicate;
    }

    /// What `kubectl logs` shows for one container of a pod that runs no real process.
    pub fn set_logs(&self, namespace: &str, pod: &str, container: &str, text: &str) {
        self.shared
            .registered_logs
            .lock()
            .unwrap()
            .insert((namespace.into(), pod.into(), container.into()), text.into());
    }

    /// Stops every task (pods keep their last status; their processes are the supervisor's).
    pub fn shutdown(&self) {
        for task in self.shared.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn node_labels(name: &str) -> BTreeMap<String, String> {
    NODE_LABELS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("kubernetes.io/hostname".to_string(), name.to_string())])
        .collect()
}

/// API times are whole seconds, as Kubernetes writes them.
fn now() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

fn node_status(port: u16) -> Value {
    let resources = json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
    json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "simulated kubelet is posting ready status",
            "lastHeartbeatTime": now(), "lastTransitionTime": now(),
        }],
        "nodeInfo": {
            "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2",
            "operatingSystem": "linux", "architecture": "amd64",
            "containerRuntimeVersion": "simulated://1", "osImage": "simulated",
            "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
        },
    }})
}

/// Keeps the nodes Ready for the node lifecycle controller (grace period 40 s), which would
/// otherwise taint them and evict their pods. With the node's own credentials: once the API
/// refuses them (an expired kubelet certificate) or the node no longer trusts the API (its CA
/// copy), the heartbeats fail and the node lifecycle controller marks the node NotReady.
async fn heartbeat(shared: Arc<Shared>, port: u16) {
    let params = PatchParams::default();
    let mut failing = false;
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        // The credentials of the kubelet as it was last started.
        let nodes: Api<Node> = Api::all(shared.node_client.read().unwrap().clone());
        for name in &shared.nodes {
            let status = Patch::Merge(node_status(port));
            match (nodes.patch_status(name, &params, &status).await, failing) {
                (Ok(_), true) => {
                    failing = false;
                    shared.events.line("kubelet: node heartbeats work again");
                }
                (Err(e), false) => {
                    failing = true;
                    shared.events.line(format!("kubelet: node heartbeat failed: {e}"));
                }
                _ => {}
            }
        }
    }
}

async fn watch_pods(shared: Arc<Shared>) {
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let mut stream = watcher(pods).boxed();
    // Uids listed by the current (re-)list; pods deleted while the watch was down get no
    // Delete event, only their absence from the next list.
    let mut listed: Option<HashSet<String>> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listed = Some(HashSet::new()),
            Ok(Event::InitApply(pod)) => {
                if let Some(listed) = &mut listed {
                    listed.insert(pod.uid().unwrap_or_default());
                }
                shared.observe(pod);
            }
            Ok(Event::InitDone) => {
                if let Some(listed) = listed.take() {
                    let vanished: Vec<String> = shared
                        .pods
                        .lock()
                        .unwrap()
                        .keys()
                        .filter(|uid| !listed.contains(*uid))
                        .cloned()
                        .collect();
                    vanished.iter().for_each(|uid| shared.mark_gone(uid));
                }
                if failing {
                    failing = false;
                    shared.events.line("kubelet: pod watch re-established");
                }
            }
            Ok(Event::Apply(pod)) => shared.observe(pod),
            Ok(Event::Delete(pod)) => shared.mark_gone(&pod.uid().unwrap_or_default()),
            Err(e) if !failing => {
                failing = true;
                shared.events.line(format!("kubelet: pod watch failed (retrying): {e}"));
            }
            Err(_) => {}
        }
    }
}

fn watcher(pods: Api<Pod>) -> impl futures::Stream<Item = Result<Event<Pod>, watcher::Error>> {
    watcher::watcher(pods, watcher::Config::default()).default_backoff()
}

impl Shared {
    fn observe(self: &Arc<Self>, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        if self.finished.lock().unwrap().contains(&uid) {
            return;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            if self.pods.lock().unwrap().contains_key(&uid) {
                self.mark_gone(&uid);
            } else if self.is_ours(&pod) {
                // Never started here (e.g. deleted while Pending): just remove it.
                let shared = Arc::clone(self);
                self.spawn(async move { shared.remove(&pod).await });
            }
            return;
        }
        if !self.is_ours(&pod) {
            return;
        }
        let mut pods = self.pods.lock().unwrap();
        if pods.contains_key(&uid) {
            return;
        }
        let (gone, gone_rx) = watch::channel(false);
        pods.insert(uid, Tracked { pod: pod.clone(), gone });
        drop(pods);
        let shared = Arc::clone(self);
        self.spawn(async move { shared.run_pod(pod, gone_rx).await });
    }

    fn is_ours(&self, pod: &Pod) -> bool {
        match pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
            Some(node) => self.nodes.contains(node),
            None => true,
        }
    }

    fn mark_gone(&self, uid: &str) {
        if let Some(tracked) = self.pods.lock().unwrap().get(uid) {
            let _ = tracked.gone.send(true);
        }
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        let mut tasks = self.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle.abort_handle());
    }

    fn runtime_for(&self, pod: &Pod) -> Option<Arc<dyn PodRuntime>> {
        self.runtimes.iter().find(|r| r.matches(pod)).cloned()
    }

    /// One pod's life: bind, start, Ready after its delay (unless held back), and on deletion
    /// stop and remove it.
    async fn run_pod(self: Arc<Self>, mut pod: Pod, mut gone: watch::Receiver<bool>) {
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let key = format!("{ns}/{name}");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
            let Some(node) = self.choose_node(&pod) else {
                self.events.line(format!("kubelet: {key}: no node fits its selector; Pending"));
                wait_gone(&mut gone).await;
                return self.finish(&pod, None).await;
            };
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            let params = PostParams::default();
            let bound = self
                .retry(&key, "bind", &mut gone, || async {
                    let post =
                        api.create_subresource::<_, Value>("binding", &name, &params, &binding);
                    match post.await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                        Err(e) => Err(e.to_string()),
                    }
                })
                .await;
            if !bound {
                return self.finish(&pod, None).await;
            }
            self.events.line(format!("kubelet: {key}: bound to {node}"));
            pod.spec.get_or_insert_default().node_name = Some(node);
        }

        if holds(&self.never_started, &pod) {
            self.events.line(format!("kubelet: {key}: held before start"));
            if !self.set_status(&api, &pod, Phase::Waiting, &mut gone).await {
                return self.finish(&pod, None).await;
            }
            while holds(&self.never_started, &pod) {
                tokio::select! {
                    _ = tokio::time::sleep(HOLD_POLL) => {}
                    _ = wait_gone(&mut gone) => return self.finish(&pod, None).await,
                }
            }
        }

        let runtime = self.runtime_for(&pod);
        let started_at = now();
        let not_ready = Phase::Running { ready: false, started_at: &started_at };
        if let Some(rt) = &runtime
            && let Err(e) = rt.start(&pod).await
        {
            // Like a container that fails to start: Running, never Ready.
            self.events.line(format!("kubelet: {key}: start failed: {e}"));
            let _ = self.set_status(&api, &pod, not_ready, &mut gone).await;
            wait_gone(&mut gone).await;
            return self.finish(&pod, runtime.as_ref()).await;
        }
        if !self.set_status(&api, &pod, not_ready, &mut gone).await {
            return self.finish(&pod, runtime.as_ref()).await;
        }

        let delay = pod
            .annotations()
            .get(READY_DELAY_ANNOTATION)
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(self.ready_delay);
        let mut held = false;
        let mut wait = delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wait_gone(&mut gone) => return self.finish(&pod, runtime.as_ref()).await,
            }
            if !self.held_back(&pod) {
                break;
            }
            if !held {
                held = true;
                self.events.line(format!("kubelet: {key}: held not Ready"));
            }
            wait = HOLD_POLL;
        }
        let ready = Phase::Running { ready: true, started_at: &started_at };
        if !self.set_status(&api, &pod, ready, &mut gone).await {
            return self.finish(&pod, runtime.as_ref()).await;
        }
        self.events.line(format!("kubelet: {key}: Ready"));
        if let Some(rt) = &runtime {
            rt.ready(&pod);
        }
        wait_gone(&mut gone).await;
        self.finish(&pod, runtime.as_ref()).await
    }

    fn held_back(&self, pod: &Pod) -> bool {
        pod.labels().get(NEVER_READY_LABEL).is_some_and(|v| v == "true")
            || holds(&self.never_ready, pod)
    }

    /// Stops the pod's process and removes the pod object (grace period 0, as the kubelet
    /// does once its containers are gone).
    async fn finish(&self, pod: &Pod, runtime: Option<&Arc<dyn PodRuntime>>) {
        if let Some(rt) = runtime {
            tokio::task::block_in_place(|| rt.stop(pod));
        }
        let uid = pod.uid().unwrap_or_default();
        self.finished.lock().unwrap().insert(uid.clone());
        self.remove(pod).await;
        self.pods.lock().unwrap().remove(&uid);
    }

    async fn remove(&self, pod: &Pod) {
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }),
            ..Default::default()
        };
        let (_never, mut not_gone) = watch::channel(false);
        self.retry(&format!("{ns}/{name}"), "remove", &mut not_gone, || async {
            match api.delete(&name, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        self.events.line(format!("kubelet: {ns}/{name}: removed"));
    }

    async fn set_status(
        &self,
        api: &Api<Pod>,
        pod: &Pod,
        phase: Phase<'_>,
        gone: &mut watch::Receiver<bool>,
    ) -> bool {
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let status = pod_status(pod, phase);
        self.retry(&key, "status", gone, || async {
            match api
                .patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&status))
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    /// Retries an API write until it works, the pod goes, or [`API_RETRY_FOR`] passes.
    async fn retry<F, Fut>(
        &self,
        key: &str,
        what: &str,
        gone: &mut watch::Receiver<bool>,
        mut call: F,
    ) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let start = Instant::now();
        loop {
            let last = match call().await {
                Ok(()) => return true,
                Err(e) => e,
            };
            if *gone.borrow() {
                return false;
            }
            if start.elapsed() > API_RETRY_FOR {
                self.events.line(format!(
                    "kubelet: {key}: gave up {what} after {API_RETRY_FOR:?}: {last}"
                ));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn choose_node(&self, pod: &Pod) -> Option<String> {
        let fits: Vec<&String> = self.nodes.iter().filter(|n| fits(pod, n)).collect();
        if fits.is_empty() {
            return None;
        }
        let i = self.next_node.fetch_add(1, Ordering::SeqCst) % fits.len();
        Some(fits[i].clone())
    }

    fn container_log(&self, ns: &str, pod: &str, container: &str) -> Option<String> {
        let key = (ns.to_string(), pod.to_string(), container.to_string());
        if let Some(text) = self.registered_logs.lock().unwrap().get(&key) {
            return Some(text.clone());
        }
        let pods = self.pods.lock().unwrap();
        let tracked = pods
            .values()
            .find(|t| t.pod.namespace().as_deref() == Some(ns) && t.pod.name_any() == pod)?;
        let file = self.runtime_for(&tracked.pod).and_then(|rt| rt.log_file(&tracked.pod));
        Some(file.and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default())
    }
}

fn holds(predicate: &RwLock<Option<PodPredicate>>, pod: &Pod) -> bool {
    predicate.read().unwrap().as_ref().is_some_and(|p| p(pod))
}

async fn wait_gone(gone: &mut watch::Receiver<bool>) {
    let _ = gone.wait_for(|g| *g).await;
}

/// Whether a pod may run on `node`: its nodeSelector and required node affinity (the
/// DaemonSet controller pins its pods with `matchFields` on `metadata.name`).
fn fits(pod: &Pod, node: &str) -> bool {
    let labels = node_labels(node);
    let Some(spec) = &pod.spec else { return true };
    let selector_ok = spec.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    let affinity_ok = required.is_none_or(|sel| {
        sel.node_selector_terms.iter().any(|term| {
            let name_field = BTreeMap::from([("metadata.name".to_string(), node.to_string())]);
            term.match_fields.iter().flatten().all(|r| requirement_holds(r, &name_field))
                && term.match_expressions.iter().flatten().all(|r| requirement_holds(r, &labels))
        })
    });
    selector_ok && affinity_ok
}

fn requirement_holds(r: &NodeSelectorRequirement, values: &BTreeMap<String, String>) -> bool {
    let value = values.get(&r.key);
    let listed = |v: &String| r.values.iter().flatten().any(|x| x == v);
    match r.operator.as_str() {
        "In" => value.is_some_and(listed),
        "NotIn" => !value.is_some_and(listed),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// What the kubelet reports about a pod's containers.
#[derive(Clone, Copy)]
enum Phase<'a> {
    /// Bound, containers not started (held by the test).
    Waiting,
    Running {
        ready: bool,
        started_at: &'a str,
    },
}

fn pod_status(pod: &Pod, phase: Phase<'_>) -> Value {
    let at = now();
    let (phase, ready, started, start_time, state) = match phase {
        Phase::Waiting => (
            "Pending",
            false,
            false,
            at.as_str(),
            json!({"waiting": {"reason": "ContainerCreating", "message": "held by the test"}}),
        ),
        Phase::Running { ready, started_at } => {
            ("Running", ready, true, started_at, json!({"running": {"startedAt": started_at}}))
        }
    };
    let ready_s = if ready { "True" } else { "False" };
    let condition = |kind: &str, status: &str| json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": at});
    let uid = pod.uid().unwrap_or_default();
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| {
            let mut status = json!({
                "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "ready": ready, "started": started, "restartCount": 0, "state": state,
            });
            if started {
                status["containerID"] = json!(format!("simulated://{uid}/{}", c.name));
            }
            status
        })
        .collect();
    json!({"status": {
        "phase": phase,
        "hostIP": "127.0.0.1",
        "startTime": start_time,
        "conditions": [
            condition("Initialized", "True"),
            condition("Ready", ready_s),
            condition("ContainersReady", ready_s),
            condition("PodScheduled", "True"),
        ],
        "containerStatuses": containers,
    }})
}
