//! The control-plane sync: the kubelet's [`PodRuntime`] for the kube-apiserver chart's pods.
//!
//! Pods of the kube-apiserver chart (`kube-system`, `k8s-app: kube-apiserver`) are the one real
//! kube-apiserver. When such a pod of a new revision starts, or Secret
//! `kube-system/kube-apiserver` changes, the process is restarted with every key of the Secret
//! (the serving pair, `ca.crt`, `service-account.key`, the etcd client files, the aggregation
//! files) written to the files its flags name — what a real pod mounting that Secret gets.
//! The flags never change. Pods that run a process
//! of their own (extension API servers, the admission webhook) are in `pods.rs`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::task::AbortHandle;

use super::control_plane::{ApiServer, Mounted, SECRET_FILES};
use super::kubelet::PodRuntime;
use super::process::EventLog;

/// How long a Secret change waits for the pod rollout that usually follows it (the chart's
/// `checksum/secret` annotation), so that one change costs one restart, not two.
const SECRET_SETTLE: Duration = Duration::from_secs(3);
/// How long a kubelet takes from a new kube-apiserver pod to the old process stopped (its sync
/// loop, then the container's graceful stop): at least a second. Restarting at once (~40 ms
/// after the ReplicaSet) cut off the client that caused the rollout: `helm upgrade` failed writing
/// its release record ("connection refused", env_smoke's helm 4 test, 5 December).
const POD_START_DELAY: Duration = Duration::from_secs(1);
/// How long a starting pod waits for the API object it reads (the API may be restarting).
const READ_RETRY_FOR: Duration = Duration::from_secs(90);

/// Reads one object, retrying while the API is away or the object is missing (e.g. the
/// ConfigMap the apiserver recreates after a restart).
pub async fn read_retrying<T, F, Fut>(what: &str, mut read: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, kube::Error>>,
{
    let start = Instant::now();
    loop {
        let last = match read().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => format!("{what} not found"),
            Err(e) => format!("reading {what}: {e}"),
        };
        if start.elapsed() > READ_RETRY_FOR {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every key of [`SECRET_FILES`] of the Secret, or `None` if one is missing or empty.
fn mounted_from_secret(secret: &Secret) -> Option<Mounted> {
    let data = secret.data.as_ref()?;
    SECRET_FILES
        .iter()
        .map(|key| {
            let value = data.get(*key).map(|b| b.0.clone()).filter(|b| !b.is_empty())?;
            Some((key.to_string(), value))
        })
        .collect::<Option<_>>()
        .map(Mounted)
}

/// Plays the kubelet for the kube-apiserver chart's pods.
pub struct ApiServerPods {
    apiserver: Arc<ApiServer>,
    secrets: Api<Secret>,
    events: Arc<EventLog>,
    log: PathBuf,
    /// Pod template revision of the last pod started (`pod-template-hash` or
    /// `controller-revision-hash`).
    last_revision: Mutex<Option<String>>,
}

impl ApiServerPods {
    pub fn new(
        apiserver: Arc<ApiServer>,
        client: Client,
        events: Arc<EventLog>,
        log: &Path,
    ) -> Arc<Self> {
        Arc::new(ApiServerPods {
            apiserver,
            secrets: Api::namespaced(client, "kube-system"),
            events,
            log: log.to_path_buf(),
            last_revision: Mutex::new(None),
        })
    }

    async fn secret_files(&self) -> Result<Mounted, String> {
        let secret = read_retrying("Secret kube-system/kube-apiserver", || {
            self.secrets.get_opt("kube-apiserver")
        })
        .await?;
        mounted_from_secret(&secret).ok_or_else(|| {
            format!("Secret kube-system/kube-apiserver lacks one of {}", SECRET_FILES.join(", "))
        })
    }

    /// Watches the Secret and restarts the apiserver when its data changes and no
    /// pod start has already applied it.
    pub fn watch_secret(self: &Arc<Self>) -> AbortHandle {
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let config = watcher::Config::default().fields("metadata.name=kube-apiserver");
            let mut stream = watcher::watcher(this.secrets.clone(), config)
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(item) = stream.next().await {
                let Some(seen) = item.ok().as_ref().and_then(mounted_from_secret) else {
                    continue;
                };
                if seen == this.apiserver.mounted().await {
                    continue;
                }
                tokio::time::sleep(SECRET_SETTLE).await;
                let latest = match this.secret_files().await {
                    Ok(latest) => latest,
                    Err(e) => {
                        this.events.line(format!("sync: {e}"));
                        continue;
                    }
                };
                let restart =
                    this.apiserver.restart_if("Secret kube-system/kube-apiserver changed", |now| {
                        (*now != latest).then(|| latest.clone())
                    });
                if let Err(e) = restart.await {
                    this.events.line(format!("sync: restarting kube-apiserver failed: {e}"));
                }
            }
        });
        task.abort_handle()
    }
}

impl PodRuntime for ApiServerPods {
    fn matches(&self, pod: &Pod) -> bool {
        pod.namespace().as_deref() == Some("kube-system")
            && pod.labels().get("k8s-app").is_some_and(|v| v == "kube-apiserver")
    }

    /// A pod of a new revision is a restart (rollout restart, checksum change); a pod of the
    /// same revision with the same Secret (the first pod after install, a DaemonSet's second
    /// node) adopts the running process.
    fn start<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let labels = pod.labels();
            let revision = labels
                .get("pod-template-hash")
                .or_else(|| labels.get("controller-revision-hash"))
                .cloned()
                .unwrap_or_default();
            let wanted = self.secret_files().await?;
            let replaced = {
                let mut last = self.last_revision.lock().unwrap();
                last.replace(revision.clone()).is_some_and(|prev| prev != revision)
            };
            let reason = format!("pod kube-system/{} started", pod.name_any());
            tokio::time::sleep(POD_START_DELAY).await;
            self.apiserver
                .restart_if(&reason, |now| (replaced || *now != wanted).then(|| wanted.clone()))
                .await
                .map(|restarted| {
                    if !restarted {
                        self.events
                            .line(format!("sync: {reason}: adopts the running kube-apiserver"));
                    }
                })
        })
    }

    fn ready(&self, _pod: &Pod) {}

    /// The process stands for every apiserver pod: a pod going away does not stop it.
    fn stop(&self, _pod: &Pod) {}

    fn log_file(&self, _pod: &Pod) -> Option<PathBuf> {
        Some(self.log.clone())
    }
}
