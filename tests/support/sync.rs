//! The control-plane sync: the [`PodRuntime`]s that play the kubelet for pods that stand for
//! real processes.
//!
//! - [`ApiServerPods`]: pods of the kube-apiserver chart (`kube-system`, `k8s-app:
//!   kube-apiserver`) are the one real kube-apiserver. When such a pod of a new revision
//!   starts, or Secret `kube-system/kube-apiserver` changes, the process is restarted with the
//!   Secret's `aggregation-ca.crt` and `aggregation-client.crt/.key` written to the files its
//!   flags name — what a real pod mounting that Secret gets. Other flags never change.
//! - [`ExtServers`]: every pod labelled [`EXT_APISERVER_LABEL`] runs its own `ext-apiserver`
//!   process, which reads the requestheader CA bundle from ConfigMap
//!   `extension-apiserver-authentication` when it starts, and only then. Its Service's port is
//!   a [`ServiceProxy`] on 127.0.0.1 that forwards to the processes of the Ready pods, the way
//!   kube-proxy forwards to ready endpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::assets::free_port;
use super::control_plane::{Aggregation, ApiServer};
use super::kubelet::PodRuntime;
use super::pki::{CertFiles, write_private};
use super::process::{EventLog, ProcId, ProcSpec, Supervisor};
use super::tools::Tools;

/// Pod label that makes the kubelet run an `ext-apiserver` process for the pod.
pub const EXT_APISERVER_LABEL: &str = "certrotate-test/ext-apiserver";
/// Pod annotation: the `group/version` the `ext-apiserver` serves.
pub const GROUP_VERSION_ANNOTATION: &str = "certrotate-test/group-version";

/// How long a Secret change waits for the pod rollout that usually follows it (the chart's
/// `checksum/secret` annotation), so that one change costs one restart, not two.
const SECRET_SETTLE: Duration = Duration::from_secs(3);
/// How long a starting pod waits for the API object it reads (the API may be restarting).
const READ_RETRY_FOR: Duration = Duration::from_secs(90);

/// Reads one object, retrying while the API is away or the object is missing (e.g. the
/// ConfigMap the apiserver recreates after a restart).
async fn read_retrying<T, F, Fut>(what: &str, mut read: F) -> Result<T, String>
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

fn aggregation_from_secret(secret: &Secret) -> Option<Aggregation> {
    let data = secret.data.as_ref()?;
    let get = |key: &str| data.get(key).map(|b| b.0.clone()).filter(|b| !b.is_empty());
    Some(Aggregation {
        ca_bundle: get("aggregation-ca.crt")?,
        client_cert: get("aggregation-client.crt")?,
        client_key: get("aggregation-client.key")?,
    })
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

    async fn secret_aggregation(&self) -> Result<Aggregation, String> {
        let secret = read_retrying("Secret kube-system/kube-apiserver", || {
            self.secrets.get_opt("kube-apiserver")
        })
        .await?;
        aggregation_from_secret(&secret).ok_or_else(|| {
            "Secret kube-system/kube-apiserver lacks aggregation-ca.crt or aggregation-client.crt/.key"
                .to_string()
        })
    }

    /// Watches the Secret and restarts the apiserver when its aggregation data changes and no
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
                let Some(seen) = item.ok().as_ref().and_then(aggregation_from_secret) else {
                    continue;
                };
                if seen == this.apiserver.aggregation().await {
                    continue;
                }
                tokio::time::sleep(SECRET_SETTLE).await;
                let latest = match this.secret_aggregation().await {
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
            let wanted = self.secret_aggregation().await?;
            let replaced = {
                let mut last = self.last_revision.lock().unwrap();
                last.replace(revision.clone()).is_some_and(|prev| prev != revision)
            };
            let reason = format!("pod kube-system/{} started", pod.name_any());
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

/// A Service port on 127.0.0.1 forwarding each connection to one Ready backend process
/// (round robin); with none Ready the connection is closed, like a Service without endpoints.
pub struct ServiceProxy {
    namespace: String,
    selector: BTreeMap<String, String>,
    port: u16,
    backends: Mutex<Vec<(String, u16)>>,
    next: AtomicUsize,
    task: Mutex<Option<AbortHandle>>,
}

impl ServiceProxy {
    pub fn port(&self) -> u16 {
        self.port
    }

    fn selects(&self, pod: &Pod) -> bool {
        pod.namespace().as_deref() == Some(self.namespace.as_str())
            && self.selector.iter().all(|(k, v)| pod.labels().get(k) == Some(v))
    }

    fn pick(&self) -> Option<u16> {
        let backends = self.backends.lock().unwrap();
        if backends.is_empty() {
            return None;
        }
        Some(backends[self.next.fetch_add(1, Ordering::SeqCst) % backends.len()].1)
    }
}

struct ExtProc {
    id: ProcId,
    port: u16,
    proxy: Arc<ServiceProxy>,
}

/// Plays the kubelet for extension API server pods.
pub struct ExtServers {
    sup: Arc<Supervisor>,
    configmaps: Api<ConfigMap>,
    events: Arc<EventLog>,
    work: PathBuf,
    logs: PathBuf,
    serving: CertFiles,
    proxies: Mutex<Vec<Arc<ServiceProxy>>>,
    running: Mutex<HashMap<String, ExtProc>>,
}

impl ExtServers {
    pub fn new(
        sup: &Arc<Supervisor>,
        client: Client,
        events: Arc<EventLog>,
        work: &Path,
        logs: &Path,
        serving: CertFiles,
    ) -> Arc<Self> {
        Arc::new(ExtServers {
            sup: Arc::clone(sup),
            configmaps: Api::namespaced(client, "kube-system"),
            events,
            work: work.to_path_buf(),
            logs: logs.to_path_buf(),
            serving,
            proxies: Mutex::new(Vec::new()),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Opens the port of a Service selecting `selector` in `namespace` (must run inside the
    /// environment's runtime).
    pub async fn service_proxy(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Arc<ServiceProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a Service port");
        let proxy = Arc::new(ServiceProxy {
            namespace: namespace.to_string(),
            selector: selector.clone(),
            port: listener.local_addr().unwrap().port(),
            backends: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            task: Mutex::new(None),
        });
        let serving = Arc::clone(&proxy);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Some(port) = serving.pick() else { continue };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *proxy.task.lock().unwrap() = Some(task.abort_handle());
        self.proxies.lock().unwrap().push(Arc::clone(&proxy));
        proxy
    }

    /// Closes every Service port.
    pub fn shutdown(&self) {
        for proxy in self.proxies.lock().unwrap().iter() {
            if let Some(task) = proxy.task.lock().unwrap().take() {
                task.abort();
            }
        }
    }

    fn log_path(&self, pod: &Pod) -> PathBuf {
        self.logs.join(format!(
            "ext-apiserver-{}-{}.log",
            pod.namespace().unwrap_or_default(),
            pod.name_any()
        ))
    }

    async fn start_process(&self, pod: &Pod) -> Result<(), String> {
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let proxy = self
            .proxies
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.selects(pod))
            .cloned()
            .ok_or_else(|| format!("no Service port selects pod {key}: deploy it with TestEnv::deploy_ext_apiserver"))?;
        let group_version = pod
            .annotations()
            .get(GROUP_VERSION_ANNOTATION)
            .cloned()
            .ok_or_else(|| format!("pod {key} lacks annotation {GROUP_VERSION_ANNOTATION}"))?;
        // What a real extension API server does at start: read the requestheader CA bundle
        // (and allowed names) published by the kube-apiserver.
        let cm = read_retrying("ConfigMap kube-system/extension-apiserver-authentication", || {
            self.configmaps.get_opt("extension-apiserver-authentication")
        })
        .await?;
        let data = cm.data.unwrap_or_default();
        let ca = data
            .get("requestheader-client-ca-file")
            .ok_or("extension-apiserver-authentication has no requestheader-client-ca-file")?;
        let allowed: Vec<String> = data
            .get("requestheader-allowed-names")
            .and_then(|names| serde_json::from_str(names).ok())
            .unwrap_or_default();

        let dir = self.work.join(format!("ext-{}", key.replace('/', "-")));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ca_file = dir.join("requestheader-client-ca-file");
        write_private(&ca_file, ca.as_bytes())
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        let port = free_port();
        let mut spec = ProcSpec::new(
            format!("ext-apiserver {key}"),
            &Tools::get().ext_apiserver,
            &self.log_path(pod),
        )
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(&self.serving.cert)
        .arg("--tls-key")
        .arg(&self.serving.key)
        .arg("--requestheader-client-ca")
        .arg(&ca_file)
        .args(["--group-version", &group_version]);
        if !allowed.is_empty() {
            spec = spec.args(["--allowed-names", &allowed.join(",")]);
        }
        let id =
            self.sup.spawn(&spec).map_err(|e| format!("starting ext-apiserver for {key}: {e}"))?;
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Some(status) = self.sup.exit_status(id) {
                return Err(format!("ext-apiserver for {key} exited ({status})"));
            }
            if start.elapsed() > Duration::from_secs(15) {
                self.sup.stop(id);
                return Err(format!("ext-apiserver for {key} not listening after 15 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.events.line(format!("sync: ext-apiserver for {key} serving on 127.0.0.1:{port}"));
        self.running
            .lock()
            .unwrap()
            .insert(pod.uid().unwrap_or_default(), ExtProc { id, port, proxy });
        Ok(())
    }
}

impl PodRuntime for ExtServers {
    fn matches(&self, pod: &Pod) -> bool {
        pod.labels().get(EXT_APISERVER_LABEL).is_some_and(|v| v == "true")
    }

    fn start<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.start_process(pod))
    }

    fn ready(&self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        if let Some(p) = self.running.lock().unwrap().get(&uid) {
            p.proxy.backends.lock().unwrap().push((uid, p.port));
        }
    }

    fn stop(&self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        let Some(p) = self.running.lock().unwrap().remove(&uid) else { return };
        p.proxy.backends.lock().unwrap().retain(|(u, _)| *u != uid);
        self.sup.stop(p.id);
        self.events.line(format!(
            "sync: ext-apiserver for {}/{} stopped",
            pod.namespace().unwrap_or_default(),
            pod.name_any()
        ));
    }

    fn log_file(&self, pod: &Pod) -> Option<PathBuf> {
        Some(self.log_path(pod))
    }
}
