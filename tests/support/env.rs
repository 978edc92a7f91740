//! [`TestEnv`]: one asset dir, one control plane on it, a simulated kubelet and the sync, for
//! the steps of one test; and the helpers tests act through.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Client;
use kube::Config;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::AbortHandle;

use super::assets::{AssetOptions, Assets, free_port};
use super::audit::{self, AuditedRequest};
use super::cmd::Cmd;
use super::control_plane::{ApiServer, ControlPlane, ControllerManager, Etcd};
use super::kcm::{ControllerManagerPods, token_kubeconfig};
use super::kubelet::{Kubelet, KubeletConfig, NodeClient, PodRuntime};
use super::node::{ControllerNode, KubeletChartPods};
use super::pki::{
    client_certificate, fingerprints, self_signed_serving, served_fingerprint, write_private,
};
use super::pods::{
    AdmissionWebhookProgram, EXT_APISERVER_LABEL, ExtApiServerProgram, GROUP_VERSION_ANNOTATION,
    PodsContext, ProcessPods,
};
use super::process::{Death, EventLog, Supervisor, death_report};
use super::service::ServiceProxies;
use super::sync::ApiServerPods;
use super::tools::Tools;
use super::wait::wait_for;

/// Lines of each component log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Which helm a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helm {
    V3,
    V4,
}

impl Helm {
    pub fn path(self) -> &'static Path {
        match self {
            Helm::V3 => &Tools::get().helm3,
            Helm::V4 => &Tools::get().helm4,
        }
    }

    fn dir_name(self) -> &'static str {
        match self {
            Helm::V3 => "helm3",
            Helm::V4 => "helm4",
        }
    }
}

/// How to build a [`TestEnv`].
#[derive(Debug, Clone, Default)]
pub struct EnvOptions {
    pub assets: AssetOptions,
    pub kubelet: KubeletConfig,
    /// kube-controller-manager's `--kube-api-qps` (burst twice that); its default of 20
    /// requests/s paces many concurrent rollouts.
    pub controller_api_qps: Option<u32>,
    /// Users whose requests kube-apiserver records in its audit log (level Metadata), for
    /// [`TestEnv::audited_requests`]; empty: no audit log.
    pub audit_users: Vec<String>,
}

/// An extension API server to deploy (think metrics-server).
#[derive(Debug, Clone)]
pub struct ExtApiServer {
    pub namespace: String,
    /// Name of the Deployment and of the Service, and the `app` label.
    pub name: String,
    pub group: String,
    pub version: String,
    pub replicas: i32,
}

impl ExtApiServer {
    /// `kube-system/metrics-server` serving `metrics.k8s.io/v1beta1`, one replica.
    pub fn metrics_server() -> Self {
        ExtApiServer {
            namespace: "kube-system".into(),
            name: "metrics-server".into(),
            group: "metrics.k8s.io".into(),
            version: "v1beta1".into(),
            replicas: 1,
        }
    }

    /// The APIService name, e.g. `v1beta1.metrics.k8s.io`.
    pub fn apiservice(&self) -> String {
        format!("{}.{}", self.version, self.group)
    }
}

/// One isolated test environment. Dropping it stops every process (and fails the test if
/// one is left); if the test is failing, it prints the tail of every component log first.
pub struct TestEnv {
    pub name: String,
    pub assets: Assets,
    /// The harness's client of the cluster (`system:masters`, its own client certificate, the
    /// server not verified: it works across a renewal and the cliff), bound to
    /// [`TestEnv::block_on`]'s runtime. `env.kubectl()` uses the asset dir's admin kubeconfig.
    pub client: Client,
    /// The real kube-apiserver (restart count, restart by hand).
    pub apiserver: Arc<ApiServer>,
    /// The real kube-controller-manager (bootstrap, then the `kubernetes` chart's pod).
    pub controller_manager: Arc<ControllerManager>,
    pub kubelet: Kubelet,
    /// How long starting the control plane took (after the asset dir was made).
    pub startup: Duration,
    /// etcd's client port on 127.0.0.1 (TLS, client certificates of the etcd CA required).
    pub etcd_port: u16,
    /// The supervised etcd (its restarts by the node's `systemctl`).
    pub etcd: Arc<Etcd>,
    /// The controller node: sshd, its files (`node.path("etc/ssl/etcd/etcd/server.crt")`).
    pub node: Arc<ControllerNode>,
    started: Instant,
    root: PathBuf,
    log_dump: LogDump,
    events: Arc<EventLog>,
    proxies: Arc<ServiceProxies>,
    secret_watch: AbortHandle,
    sup: Arc<Supervisor>,
    rt: Option<tokio::runtime::Runtime>,
    dir: Option<TempDir>,
}

impl TestEnv {
    /// [`TestEnv::start_with`] with the defaults: one node, pods Ready after 0.3 s, the
    /// fixture asset dir with Lokomotive's defaults.
    pub fn start(name: &str) -> TestEnv {
        TestEnv::start_with(name, EnvOptions::default())
    }

    /// Makes a fresh asset dir (real terraform) whose kubeconfig points at a free port, then
    /// starts etcd, kube-apiserver (with that asset dir's PKI), kube-controller-manager, the
    /// simulated kubelet and the sync.
    pub fn start_with(name: &str, options: EnvOptions) -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix(&format!("certrotate-{name}-"))
            .tempdir()
            .expect("creating the test's temp dir");
        let root = dir.path().to_path_buf();
        let logs = root.join("logs");
        let work = root.join("work");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        // Declared after `dir`, so a failing start prints the logs before they are deleted.
        let log_dump = LogDump { name: name.to_string(), logs: logs.clone(), done: false };
        let started = Instant::now();
        let events = Arc::new(EventLog::create(&logs.join("harness.log")).unwrap());
        let sup = Supervisor::new();
        // The test runs on this thread: its waits and commands fail as soon as one dies.
        sup.fail_fast_here();
        // The controller node first: the asset dir's apply copies the etcd certificates and
        // the kubelet kubeconfig to it over SSH.
        let node = Arc::new(ControllerNode::start(&sup, &work, &logs, &events));
        events.line(format!("node: up in {:?}", started.elapsed()));
        let asset_options = AssetOptions { node: Some(node.ssh.clone()), ..options.assets.clone() };
        let assets = Assets::make(&root.join("config"), free_port(), &asset_options);
        events.line(format!("assets: made in {:?}", started.elapsed()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("certrotate-test-env")
            .enable_all()
            .build()
            .expect("building the environment's runtime");

        let serving = self_signed_serving(&work, "simulated-serving");
        let proxies = ServiceProxies::new(Arc::clone(&events));
        let (control_plane, kubelet, secret_watch) = rt.block_on(async {
            let cp = ControlPlane::start(
                &sup,
                &node,
                &assets,
                &work,
                &logs,
                &events,
                options.controller_api_qps,
                &options.audit_users,
            )
            .await;
            let apiserver_pods = ApiServerPods::new(
                Arc::clone(&cp.apiserver),
                cp.client.clone(),
                Arc::clone(&events),
                &logs.join("kube-apiserver.log"),
            );
            let secret_watch = apiserver_pods.watch_secret();
            let ctx = PodsContext {
                sup: Arc::clone(&sup),
                client: cp.client.clone(),
                proxies: Arc::clone(&proxies),
                events: Arc::clone(&events),
                work: work.clone(),
                logs: logs.clone(),
            };
            let kcm_pods = ControllerManagerPods::new(
                Arc::clone(&cp.controller_manager),
                cp.client.clone(),
                assets.api_port,
                &work,
                Arc::clone(&events),
            );
            let node_client: NodeClient =
                Arc::new(std::sync::RwLock::new(node_client(&cp.client, &node).await));
            let runtimes: Vec<Arc<dyn PodRuntime>> = vec![
                apiserver_pods,
                kcm_pods,
                KubeletChartPods::new(
                    Arc::clone(&node),
                    Arc::clone(&node_client),
                    Arc::clone(&events),
                ),
                ProcessPods::new(ExtApiServerProgram::new(&ctx, serving.clone()), &ctx),
                ProcessPods::new(AdmissionWebhookProgram::new(&ctx), &ctx),
            ];
            let kubelet = Kubelet::start(
                cp.client.clone(),
                node_client,
                &options.kubelet,
                runtimes,
                Arc::clone(&events),
                &serving,
            )
            .await;
            (cp, kubelet, secret_watch)
        });
        let env = TestEnv {
            name: name.to_string(),
            etcd_port: control_plane.etcd_port,
            etcd: control_plane.etcd,
            node,
            assets,
            client: control_plane.client,
            apiserver: control_plane.apiserver,
            controller_manager: control_plane.controller_manager,
            kubelet,
            startup: control_plane.startup,
            started,
            root,
            log_dump,
            events,
            proxies,
            secret_watch,
            sup,
            rt: Some(rt),
            dir: Some(dir),
        };
        env.step(&format!("control plane up in {:.1?}", env.startup));
        env
    }

    /// Runs a future on the environment's runtime (tests are plain `#[test]` functions);
    /// panics as soon as a component dies meanwhile, since the future may be waiting for it.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let mut deaths = self.sup.death_count();
        self.rt.as_ref().expect("runtime alive").block_on(async {
            tokio::select! {
                biased;
                out = future => out,
                _ = deaths.wait_for(|n| *n > 0) => {
                    panic!("{}", death_report(&self.sup.deaths()).unwrap_or_default())
                }
            }
        })
    }

    /// The components that exited on their own so far (none while all is well).
    pub fn dead_components(&self) -> Vec<Death> {
        self.sup.deaths()
    }

    /// The pid of a running component, e.g. `kube-controller-manager`, or
    /// `admission-webhook lokomotive-system/<pod>`.
    pub fn component_pid(&self, name: &str) -> Option<u32> {
        self.sup.pid_of(name)
    }

    /// Logs a step to stderr and the harness log, with the time since the environment began.
    pub fn step(&self, what: &str) {
        let line = format!("[{} +{:.1}s] {what}", self.name, self.started.elapsed().as_secs_f64());
        eprintln!("{line}");
        self.events.line(line);
    }

    /// The test's temp dir (its files go away with the environment).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.assets.kubeconfig()
    }

    /// SHA-256 fingerprint of the certificate kube-apiserver serves now (a TLS handshake).
    pub fn apiserver_serving_fingerprint(&self) -> Result<String, String> {
        served_fingerprint(self.assets.api_port)
    }

    /// SHA-256 fingerprint of the certificate etcd serves now on its client port (a TLS
    /// handshake), e.g. to compare with `file_fingerprints(&env.assets.tls("etcd/server.crt"))`.
    pub fn etcd_serving_fingerprint(&self) -> Result<String, String> {
        served_fingerprint(self.etcd_port)
    }

    /// The peer port etcd listens on, read from its command line (etcd is restarted on the
    /// same ports).
    pub fn etcd_peer_port(&self) -> u16 {
        let pid = self.component_pid("etcd").expect("etcd runs");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args = String::from_utf8_lossy(&cmdline).into_owned();
        let url = args
            .split('\0')
            .find_map(|a| a.strip_prefix("--listen-peer-urls="))
            .unwrap_or_else(|| panic!("no --listen-peer-urls in {args:?}"));
        url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// `renew`'s flags naming the etcd member as this machine reaches it: the harness's etcd
    /// listens on 127.0.0.1 and free ports, not under the values' `etcdServers` names.
    pub fn renew_etcd_flags(&self) -> [String; 4] {
        [
            "--etcd-endpoint".into(),
            format!("https://127.0.0.1:{}", self.etcd_port),
            "--etcd-peer-endpoint".into(),
            format!("https://127.0.0.1:{}", self.etcd_peer_port()),
        ]
    }

    /// A file of kube-apiserver's "mounted Secret" as the running process was started with it
    /// (`apiserver.crt`, `etcd-client.crt`, …: the keys of Secret `kube-system/kube-apiserver`).
    pub fn apiserver_mounted_file(&self, key: &str) -> Vec<u8> {
        let path = self.root.join("work").join("kube-apiserver-secrets").join(key);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The requests of [`EnvOptions::audit_users`] that kube-apiserver has recorded so far.
    pub fn audited_requests(&self) -> Vec<AuditedRequest> {
        audit::requests(&self.root.join("logs").join(audit::AUDIT_LOG))
    }

    /// A kubeconfig (0600, in the test's dir) for a client-certificate user of this cluster:
    /// CN `user`, O each of `groups` (`system:masters`: every right, without RBAC objects).
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        use base64::Engine as _;
        let (ca, ca_key) = (self.assets.tls("ca.crt"), self.assets.tls("ca.key"));
        let (cert, key) = client_certificate(&ca, &ca_key, user, groups);
        let b64 = |pem: &[u8]| base64::engine::general_purpose::STANDARD.encode(pem);
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {
                "server": format!("https://127.0.0.1:{}", self.assets.api_port),
                "certificate-authority-data": b64(&std::fs::read(&ca).unwrap())}}],
            "users": [{"name": user, "user": {
                "client-certificate-data": b64(&cert), "client-key-data": b64(&key)}}],
            "contexts": [{"name": user, "context": {"cluster": "c", "user": user}}],
            "current-context": user,
        });
        self.values_file(&format!("{user}-kubeconfig"), &kubeconfig)
    }

    /// Real kubectl with the asset dir's admin kubeconfig.
    pub fn kubectl(&self) -> Cmd {
        Cmd::new(&Tools::get().kubectl)
            .env("KUBECONFIG", self.kubeconfig())
            .timeout(Duration::from_secs(180))
    }

    /// Real helm (3 or 4) with the admin kubeconfig and helm state private to this test.
    pub fn helm(&self, helm: Helm) -> Cmd {
        self.with_helm_homes(Cmd::new(helm.path()), helm).env("KUBECONFIG", self.kubeconfig())
    }

    fn with_helm_homes(&self, cmd: Cmd, helm: Helm) -> Cmd {
        let home = self.root.join(helm.dir_name());
        cmd.env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
    }

    /// Real terraform in the asset dir's terraform root.
    pub fn terraform(&self) -> Cmd {
        self.assets.terraform()
    }

    /// The built plugin, with the environment of an operator of this cluster: `KUBECONFIG`,
    /// `ASSET_DIR`, `CONFIG_DIR`, and `TERRAFORM`, `HELM` (helm 3), `LOKOCTL` (the test double)
    /// naming the real programs. Tests of the defaults remove what they need with
    /// [`Cmd::env_remove`].
    pub fn certrotate(&self) -> Cmd {
        self.operator_env(Cmd::new(plugin_binary()))
    }

    /// [`TestEnv::certrotate`] with `helm` as `$HELM` (the plugin's helm, and the lokoctl test
    /// double's, which it runs), with that helm's own homes.
    pub fn certrotate_with_helm(&self, helm: Helm) -> Cmd {
        self.with_helm_homes(self.certrotate(), helm).env("HELM", helm.path())
    }

    /// `testenv/lokoctl`, the test double of `lokoctl cluster apply`, run in the config dir.
    pub fn lokoctl(&self) -> Cmd {
        self.operator_env(Cmd::new(&Tools::get().lokoctl_double)).dir(&self.assets.config_dir)
    }

    fn operator_env(&self, cmd: Cmd) -> Cmd {
        let tools = Tools::get();
        self.with_helm_homes(cmd, Helm::V3)
            .env("KUBECONFIG", self.kubeconfig())
            .env("ASSET_DIR", &self.assets.dir)
            .env("CONFIG_DIR", &self.assets.config_dir)
            .env("TERRAFORM", &tools.terraform)
            .env("HELM", &tools.helm3)
            .env("LOKOCTL", &tools.lokoctl_double)
            .env("TF_CLI_CONFIG_FILE", &tools.tf_cli_config)
            .timeout(Duration::from_secs(600))
    }

    /// Writes helm values (JSON is YAML) to a 0600 file for `-f`: values carry keys and must
    /// never be on a command line.
    pub fn values_file(&self, name: &str, values: &Value) -> PathBuf {
        let dir = self.root.join("values");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.yaml"));
        write_private(&path, serde_json::to_string_pretty(values).unwrap().as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// `helm install kube-apiserver` from the asset dir's chart and terraform-rendered values,
    /// as lokoctl does at cluster creation, with `--wait`.
    pub fn install_kube_apiserver_chart(&self, helm: Helm) {
        self.install_asset_chart(helm, "kube-system", "kube-apiserver");
    }

    /// `helm install lokomotive` (namespace `lokomotive-system`, created) from the asset dir,
    /// with `--wait`: the admission webhook's Secret, Service, Deployment (whose pod runs a real
    /// `admission-webhook`) and MutatingWebhookConfiguration. Always helm 3, as lokoctl: helm 4
    /// installs server-side, which this apiserver refuses for the chart's Service ports without
    /// `protocol` (upgrades work with either).
    pub fn install_lokomotive_chart(&self) {
        self.install_asset_chart(Helm::V3, "lokomotive-system", "lokomotive");
    }

    /// `helm install kubernetes` (kube-system) from the asset dir's chart and rendered values,
    /// with `--wait`: Secret `kube-controller-manager` (`ca.crt`, `ca.key`,
    /// `service-account.key`), its ServiceAccount and the workload whose pod restarts the real
    /// kube-controller-manager with them and the ServiceAccount's token (`kcm.rs`).
    pub fn install_kubernetes_chart(&self, helm: Helm) {
        self.install_asset_chart(helm, "kube-system", "kubernetes");
    }

    /// `helm install kubelet` (kube-system) from the asset dir, with `--wait`: the kubelet
    /// DaemonSet with `kubernetesCACert`, whose pods restart the node's kubelet after its
    /// `ca-syncer` (`node.rs`, `KubeletChartPods`).
    pub fn install_kubelet_chart(&self, helm: Helm) {
        self.install_asset_chart(helm, "kube-system", "kubelet");
    }

    /// A kubeconfig (0600) that still works once every certificate of the cluster has
    /// expired, for the test to look at such a cluster: the token of a ServiceAccount
    /// `kube-system/certrotate-observer` bound to `cluster-admin` (a token does not expire),
    /// and `insecure-skip-tls-verify` (the serving certificate will have). Only the test uses
    /// it; nothing of the cluster does.
    pub fn observer_kubeconfig(&self) -> PathBuf {
        let path = self.root.join("values").join("observer-kubeconfig");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let kubectl_apply = |doc: Value| {
            let file = self.root.join("values").join("observer.json");
            std::fs::write(&file, doc.to_string()).unwrap();
            self.kubectl().args(["apply", "-f"]).arg(&file).ok();
        };
        kubectl_apply(json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "certrotate-observer", "namespace": "kube-system"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "certrotate-observer"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [{"kind": "ServiceAccount", "name": "certrotate-observer", "namespace": "kube-system"}]},
        ]}));
        let token = wait_for(
            "the token of ServiceAccount kube-system/certrotate-observer",
            Duration::from_secs(60),
            || {
                let secret = self
                    .kubectl()
                    .args(["-n", "kube-system", "get", "serviceaccount", "certrotate-observer"])
                    .arg("-o=jsonpath={.secrets[0].name}")
                    .run();
                let name = secret.stdout.trim();
                if !secret.success() || name.is_empty() {
                    return Err(format!("no token Secret yet: {secret}"));
                }
                let token = self
                    .kubectl()
                    .args(["-n", "kube-system", "get", "secret", name, "-o=jsonpath={.data.token}"])
                    .run();
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(token.stdout.trim())
                    .ok()
                    .filter(|t| !t.is_empty())
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .ok_or_else(|| format!("no token yet: {token}"))
            },
        );
        token_kubeconfig(&path, self.assets.api_port, None, &token)
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }

    fn install_asset_chart(&self, helm: Helm, namespace: &str, chart: &str) {
        self.helm(helm)
            .args(["install", chart, "--namespace", namespace, "--create-namespace"])
            .args(["--wait", "--timeout", "3m"])
            .arg(self.assets.chart(namespace, chart))
            .arg("-f")
            .arg(self.assets.chart_values(namespace, chart))
            .ok();
    }

    /// Deploys an extension API server the way a cluster runs metrics-server: a Deployment
    /// whose pods each run a real `ext-apiserver`, an `ExternalName` Service to `localhost`
    /// (port = the Service port the harness forwards, selector = the Deployment's pods) and an
    /// APIService with `insecureSkipTLSVerify`. Returns the Service port.
    pub fn deploy_ext_apiserver(&self, spec: &ExtApiServer) -> u16 {
        let selector = BTreeMap::from([("app".to_string(), spec.name.clone())]);
        let (ns, name) = (spec.namespace.as_str(), spec.name.as_str());
        self.block_on(async {
            let proxy = self.proxies.open_local(ns, &selector).await;
            let port = proxy.port();
            let deployment: Deployment = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                "spec": {
                    "replicas": spec.replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {
                            "labels": {"app": name, EXT_APISERVER_LABEL: "true"},
                            "annotations": {
                                GROUP_VERSION_ANNOTATION: format!("{}/{}", spec.group, spec.version),
                            },
                        },
                        "spec": {"containers": [{"name": name, "image": format!("{name}:test")}]},
                    },
                },
            }))
            .unwrap();
            let service: Service = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                "spec": {
                    "type": "ExternalName",
                    "externalName": "localhost",
                    "selector": {"app": name},
                    "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
                },
            }))
            .unwrap();
            let apiservice: APIService = serde_json::from_value(json!({
                "metadata": {"name": spec.apiservice(), "labels": {"app": name}},
                "spec": {
                    "group": spec.group, "version": spec.version,
                    "service": {"namespace": ns, "name": name, "port": port},
                    "insecureSkipTLSVerify": true,
                    "groupPriorityMinimum": 100, "versionPriority": 100,
                },
            }))
            .unwrap();
            let pp = PostParams::default();
            Api::<Deployment>::namespaced(self.client.clone(), ns).create(&pp, &deployment).await.unwrap();
            Api::<Service>::namespaced(self.client.clone(), ns).create(&pp, &service).await.unwrap();
            Api::<APIService>::all(self.client.clone()).create(&pp, &apiservice).await.unwrap();
            port
        })
    }

    /// `(status, reason, message)` of an APIService's `Available` condition.
    pub fn apiservice_available(&self, name: &str) -> Result<(String, String, String), String> {
        let api: Api<APIService> = Api::all(self.client.clone());
        let svc = self
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), api.get(name)).await })
            .map_err(|_| format!("getting APIService {name} timed out"))?
            .map_err(|e| format!("getting APIService {name}: {e}"))?;
        svc.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Available")
            .map(|c| (c.status, c.reason.unwrap_or_default(), c.message.unwrap_or_default()))
            .ok_or_else(|| format!("APIService {name} has no Available condition yet"))
    }

    /// Waits until an APIService's `Available` is `True` (or, with `available = false`, not
    /// `True`); the aggregator checks periodically, so this can take ~30 s. Returns the
    /// condition's `reason: message`.
    pub fn wait_apiservice(&self, name: &str, available: bool, timeout: Duration) -> String {
        let want = if available { "Available=True" } else { "Available!=True" };
        wait_for(&format!("APIService {name} {want}"), timeout, || {
            let (status, reason, message) = self.apiservice_available(name)?;
            let seen = format!("{status} ({reason}: {message})");
            if (status == "True") == available {
                Ok(format!("{reason}: {message}"))
            } else {
                Err(seen)
            }
        })
    }

    /// SHA-256 fingerprints of the CAs under `key` of ConfigMap
    /// `kube-system/extension-apiserver-authentication` (`Err` while it is absent).
    pub fn auth_configmap_cas(&self, key: &str) -> Result<Vec<String>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), "kube-system");
        let cm = self
            .block_on(async {
                let get = api.get_opt("extension-apiserver-authentication");
                tokio::time::timeout(Duration::from_secs(10), get).await
            })
            .map_err(|_| "reading extension-apiserver-authentication timed out".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("extension-apiserver-authentication does not exist")?;
        let pem = cm
            .data
            .and_then(|d| d.get(key).cloned())
            .ok_or_else(|| format!("extension-apiserver-authentication has no {key}"))?;
        Ok(fingerprints(pem.as_bytes()))
    }

    /// `kubectl rollout restart` of `kind/name`, then [`TestEnv::wait_rollout`].
    pub fn rollout_restart(&self, namespace: &str, workload: &str) {
        self.kubectl().args(["-n", namespace, "rollout", "restart", workload]).ok();
        self.wait_rollout(namespace, workload);
    }

    /// `kubectl rollout status` of `kind/name` until it succeeds. It does not survive the API
    /// dropping (when the rollout restarts kube-apiserver itself): like an operator, it is
    /// run again, for at most 180 s in all.
    pub fn wait_rollout(&self, namespace: &str, workload: &str) {
        wait_for(&format!("kubectl rollout status {workload}"), Duration::from_secs(180), || {
            let out = self
                .kubectl()
                .args(["-n", namespace, "rollout", "status", workload, "--timeout=170s"])
                .run();
            if out.success() { Ok(()) } else { Err(out.to_string()) }
        });
    }
}

/// The node's client: its `/etc/kubernetes/kubeconfig`, which `copy-controller-secrets` put
/// there over SSH (the asset dir's `auth/kubeconfig-kubelet`: the static kubelet client
/// certificate, CN `kubelet`, O `system:nodes`, and the kube CA, as with
/// `enable_tls_bootstrap = false`), so the node trusts the CA copy it was given. Group
/// `system:nodes` gets ClusterRole `system:node`, as Lokomotive binds it for kubelets.
async fn node_client(admin: &Client, node: &ControllerNode) -> Client {
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "kubelet-nodes"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
    }))
    .unwrap();
    match Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating ClusterRoleBinding kubelet-nodes: {e}"),
    }
    node.kubelet_client().await.unwrap_or_else(|e| panic!("the node's kubelet: {e}"))
}

/// The built plugin: cargo names it to tests and benches; an example (the demo) finds it in
/// the profile folder above its own `examples/` folder.
fn plugin_binary() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_kubectl-certrotate") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("the running program's path");
            let profile = exe.parent().and_then(Path::parent).expect("target/<profile>/examples/");
            profile.join("kubectl-certrotate")
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let teardown = Instant::now();
        // The logs as they were when the test failed, before teardown adds to them.
        let failing = std::thread::panicking();
        if failing {
            self.log_dump.print();
        }
        self.kubelet.shutdown();
        self.proxies.shutdown();
        self.secret_watch.abort();
        let left = self.sup.shutdown();
        let deaths = death_report(&self.sup.deaths());
        if let Some(rt) = self.rt.take() {
            // Blocking shutdown lets a task finish what it is doing before the temp dir goes;
            // inside an async context only the background form is allowed.
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(10));
            }
        }
        if std::env::var_os("CERTROTATE_KEEP_TESTDIR").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("[{}] kept {}", self.name, dir.keep().display());
        }
        eprintln!(
            "[{} +{:.1}s] torn down in {:.1?}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            teardown.elapsed()
        );
        let left =
            (!left.is_empty()).then(|| format!("processes left behind: {}", left.join("; ")));
        let problems: Vec<String> = deaths.into_iter().chain(left).collect();
        if !problems.is_empty() {
            let message = problems.join("\n");
            if failing {
                eprintln!("[{}] {message}", self.name);
            } else {
                panic!("{message}");
            }
        }
    }
}

/// Prints the tail of every component log once, when a test fails: from [`TestEnv`]'s drop
/// before teardown, or from its own drop if the environment failed to start.
struct LogDump {
    name: String,
    logs: PathBuf,
    done: bool,
}

impl LogDump {
    fn print(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        eprintln!("===== {}: component logs (last {LOG_TAIL_LINES} lines each) =====", self.name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.logs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {} -----", file.display());
            for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
                eprintln!("{line}");
            }
        }
        eprintln!("===== end of {} logs =====", self.name);
    }
}

impl Drop for LogDump {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print();
        }
    }
}

/// `(revision, status, description)` of each row `helm history -o json` printed.
pub fn helm_history_rows(json: &str) -> Vec<(u64, String, String)> {
    let entries: Vec<Value> =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("helm history -o json: {e}: {json}"));
    entries
        .iter()
        .map(|e| {
            (
                e["revision"].as_u64().unwrap_or_default(),
                e["status"].as_str().unwrap_or_default().to_string(),
                e["description"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}
