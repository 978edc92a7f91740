//! Pods that run a real process of their own, one each: started when the simulated kubelet
//! starts the pod, from what the real program would read at that moment, and stopped when the
//! pod is deleted.
//!
//! - [`ExtApiServerProgram`]: every pod labelled [`EXT_APISERVER_LABEL`] runs `ext-apiserver`,
//!   which reads the requestheader CA bundle from ConfigMap
//!   `kube-system/extension-apiserver-authentication` when it starts, and only then.
//! - [`AdmissionWebhookProgram`]: the pods of the lokomotive chart's Deployment
//!   `lokomotive-system/admission-webhook-server` run `admission-webhook` with `cert.pem` and
//!   `key.pem` of Secret `lokomotive-system/admission-webhook-server` as they are when the pod
//!   starts (a new certificate needs a new pod, as with Lokomotive's server).
//!
//! A Ready pod's process backs the Service ports that select it (`service.rs`): the local port
//! `TestEnv::deploy_ext_apiserver` opens, and `<clusterIP>:<port>` of every ClusterIP Service
//! selecting the pod when it starts (the kube-apiserver dials that for webhooks). Every port of
//! such a Service goes to the process's one listening port, whatever the `targetPort`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::assets::free_port;
use super::kubelet::PodRuntime;
use super::pki::{CertFiles, write_private};
use super::process::{EventLog, ProcId, ProcSpec, Supervisor};
use super::service::ServiceProxies;
use super::sync::read_retrying;
use super::tools::Tools;

/// Pod label that makes the kubelet run an `ext-apiserver` process for the pod.
pub const EXT_APISERVER_LABEL: &str = "certrotate-test/ext-apiserver";
/// Pod annotation: the `group/version` the `ext-apiserver` serves.
pub const GROUP_VERSION_ANNOTATION: &str = "certrotate-test/group-version";
/// Namespace of the lokomotive chart.
pub const WEBHOOK_NAMESPACE: &str = "lokomotive-system";
/// Name of the webhook's Deployment, Secret and Service, and its pods' `k8s-app` label.
pub const WEBHOOK_NAME: &str = "admission-webhook-server";

/// How long a started process gets to listen on its port.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// What one kind of pod runs: a program that takes `--listen <addr>` and logs
/// `Serving securely on <addr>` once it listens (the testenv servers do).
pub trait PodProgram: Send + Sync + 'static {
    /// Names the processes (`<NAME> <namespace>/<pod>`), their logs and work folders.
    const NAME: &'static str;
    fn program(&self) -> &'static Path;
    fn matches(&self, pod: &Pod) -> bool;
    /// Reads what the program reads at start, writes it to files in `dir`, and returns the
    /// program's other arguments.
    fn args(
        &self,
        pod: &Pod,
        dir: &Path,
    ) -> impl Future<Output = Result<Vec<OsString>, String>> + Send;
}

/// What the process-backed pods of one environment share.
#[derive(Clone)]
pub struct PodsContext {
    pub sup: Arc<Supervisor>,
    pub client: Client,
    pub proxies: Arc<ServiceProxies>,
    pub events: Arc<EventLog>,
    /// Per-pod folders with the files a process reads.
    pub work: PathBuf,
    pub logs: PathBuf,
}

/// The kubelet's [`PodRuntime`] for the pods of one [`PodProgram`].
pub struct ProcessPods<P> {
    program: P,
    ctx: PodsContext,
    /// Pod uid → its process and the port it listens on.
    running: Mutex<HashMap<String, (ProcId, u16)>>,
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

impl<P: PodProgram> ProcessPods<P> {
    pub fn new(program: P, ctx: &PodsContext) -> Arc<Self> {
        Arc::new(ProcessPods { program, ctx: ctx.clone(), running: Mutex::new(HashMap::new()) })
    }

    fn file_name(pod: &Pod) -> String {
        format!("{}-{}-{}", P::NAME, pod.namespace().unwrap_or_default(), pod.name_any())
    }

    fn log_path(&self, pod: &Pod) -> PathBuf {
        self.ctx.logs.join(format!("{}.log", Self::file_name(pod)))
    }

    /// Makes the ClusterIP ports of the Services that select `pod` (kube-proxy's view of them).
    async fn open_cluster_ips(&self, pod: &Pod) -> Result<(), String> {
        let ns = pod.namespace().unwrap_or_default();
        let services: Api<Service> = Api::namespaced(self.ctx.client.clone(), &ns);
        let list = read_retrying(&format!("the Services of namespace {ns}"), || async {
            services.list(&ListParams::default()).await.map(Some)
        })
        .await?;
        for spec in list.into_iter().filter_map(|s| s.spec) {
            let selector = spec.selector.unwrap_or_default();
            if selector.is_empty() || selector.iter().any(|(k, v)| pod.labels().get(k) != Some(v)) {
                continue;
            }
            // Headless ("None") and ExternalName Services have no ClusterIP; the service range
            // is on loopback, and nothing may listen or dial beyond it.
            let Some(ip) = spec.cluster_ip.and_then(|ip| ip.parse::<IpAddr>().ok()) else {
                continue;
            };
            if !ip.is_loopback() {
                continue;
            }
            for port in spec.ports.unwrap_or_default() {
                let port = u16::try_from(port.port).map_err(|e| format!("Service port: {e}"))?;
                self.ctx.proxies.cluster_ip(SocketAddr::new(ip, port), &ns, &selector);
            }
        }
        Ok(())
    }

    async fn start_process(&self, pod: &Pod) -> Result<(), String> {
        let key = pod_key(pod);
        self.open_cluster_ips(pod).await?;
        let dir = self.ctx.work.join(Self::file_name(pod));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = free_port();
        let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let args = self.program.args(pod, &dir).await?;
        let log = self.log_path(pod);
        let spec = ProcSpec::new(format!("{} {key}", P::NAME), self.program.program(), &log)
            .args(["--listen".to_string(), listen.to_string()])
            .args(args);
        let name = P::NAME;
        let id =
            self.ctx.sup.spawn(&spec).map_err(|e| format!("starting {name} for {key}: {e}"))?;
        let start = Instant::now();
        // Its log says when it listens; a probe connection would show up in the pod's log as
        // a failed TLS handshake.
        let serving = format!("Serving securely on {listen}");
        while !std::fs::read_to_string(&log).is_ok_and(|text| text.contains(&serving)) {
            if let Some(status) = self.ctx.sup.exit_status(id) {
                return Err(format!("{name} for {key} exited ({status})"));
            }
            if start.elapsed() > LISTEN_TIMEOUT {
                self.ctx.sup.stop(id);
                return Err(format!("{name} for {key} not listening after {LISTEN_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.ctx.events.line(format!("pods: {name} for {key} serving on {listen}"));
        self.running.lock().unwrap().insert(pod.uid().unwrap_or_default(), (id, port));
        Ok(())
    }
}

impl<P: PodProgram> PodRuntime for ProcessPods<P> {
    fn matches(&self, pod: &Pod) -> bool {
        self.program.matches(pod)
    }

    fn start<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.start_process(pod))
    }

    fn ready(&self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        if let Some((_, port)) = self.running.lock().unwrap().get(&uid) {
            self.ctx.proxies.add_backend(pod, *port);
        }
    }

    fn stop(&self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        let Some((id, _)) = self.running.lock().unwrap().remove(&uid) else { return };
        self.ctx.proxies.remove_backend(&uid);
        self.ctx.sup.stop(id);
        self.ctx.events.line(format!("pods: {} for {} stopped", P::NAME, pod_key(pod)));
    }

    fn log_file(&self, pod: &Pod) -> Option<PathBuf> {
        Some(self.log_path(pod))
    }
}

/// `ext-apiserver` for the pods [`TestEnv::deploy_ext_apiserver`](super::TestEnv) makes.
pub struct ExtApiServerProgram {
    configmaps: Api<ConfigMap>,
    proxies: Arc<ServiceProxies>,
    /// Its serving certificate (the APIService skips verification).
    serving: CertFiles,
}

impl ExtApiServerProgram {
    pub fn new(ctx: &PodsContext, serving: CertFiles) -> Self {
        ExtApiServerProgram {
            configmaps: Api::namespaced(ctx.client.clone(), "kube-system"),
            proxies: Arc::clone(&ctx.proxies),
            serving,
        }
    }
}

impl PodProgram for ExtApiServerProgram {
    const NAME: &'static str = "ext-apiserver";

    fn program(&self) -> &'static Path {
        &Tools::get().ext_apiserver
    }

    fn matches(&self, pod: &Pod) -> bool {
        pod.labels().get(EXT_APISERVER_LABEL).is_some_and(|v| v == "true")
    }

    async fn args(&self, pod: &Pod, dir: &Path) -> Result<Vec<OsString>, String> {
        let key = pod_key(pod);
        if !self.proxies.selects(pod) {
            return Err(format!(
                "no Service port selects pod {key}: deploy it with TestEnv::deploy_ext_apiserver"
            ));
        }
        let group_version = pod
            .annotations()
            .get(GROUP_VERSION_ANNOTATION)
            .cloned()
            .ok_or_else(|| format!("pod {key} lacks annotation {GROUP_VERSION_ANNOTATION}"))?;
        // What a real extension API server does at start: read the requestheader CA
        // bundle (and allowed names) published by the kube-apiserver.
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
        let ca_file = dir.join("requestheader-client-ca-file");
        write_private(&ca_file, ca.as_bytes())
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        let mut args: Vec<OsString> = vec![
            "--tls-cert".into(),
            self.serving.cert.clone().into(),
            "--tls-key".into(),
            self.serving.key.clone().into(),
            "--requestheader-client-ca".into(),
            ca_file.into(),
            "--group-version".into(),
            group_version.into(),
        ];
        if !allowed.is_empty() {
            args.extend(["--allowed-names".into(), allowed.join(",").into()]);
        }
        Ok(args)
    }
}

/// `admission-webhook` for the lokomotive chart's webhook pods.
pub struct AdmissionWebhookProgram {
    secrets: Api<Secret>,
}

impl AdmissionWebhookProgram {
    pub fn new(ctx: &PodsContext) -> Self {
        AdmissionWebhookProgram { secrets: Api::namespaced(ctx.client.clone(), WEBHOOK_NAMESPACE) }
    }
}

impl PodProgram for AdmissionWebhookProgram {
    const NAME: &'static str = "admission-webhook";

    fn program(&self) -> &'static Path {
        &Tools::get().admission_webhook
    }

    fn matches(&self, pod: &Pod) -> bool {
        pod.namespace().as_deref() == Some(WEBHOOK_NAMESPACE)
            && pod.labels().get("k8s-app").is_some_and(|v| v == WEBHOOK_NAME)
    }

    async fn args(&self, _pod: &Pod, dir: &Path) -> Result<Vec<OsString>, String> {
        // What the pod's Secret volume holds at this moment.
        let what = format!("Secret {WEBHOOK_NAMESPACE}/{WEBHOOK_NAME}");
        let secret = read_retrying(&what, || self.secrets.get_opt(WEBHOOK_NAME)).await?;
        let data = secret.data.unwrap_or_default();
        let mut args: Vec<OsString> = Vec::new();
        for (key, flag) in [("cert.pem", "--tls-cert"), ("key.pem", "--tls-key")] {
            let value = data
                .get(key)
                .filter(|v| !v.0.is_empty())
                .ok_or_else(|| format!("{what} has no {key}"))?;
            let file = dir.join(key);
            write_private(&file, &value.0).map_err(|e| format!("{}: {e}", file.display()))?;
            args.extend([flag.into(), file.into()]);
        }
        Ok(args)
    }
}
