//! etcd, kube-apiserver and kube-controller-manager on loopback, with the asset dir's PKI, so
//! that the cluster *is* the asset dir's cluster and its admin kubeconfig works.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::assets::{Assets, free_port};
use super::audit;
use super::node::ControllerNode;
use super::pki::write_private;
use super::process::{EventLog, ProcId, ProcSpec, Supervisor};
use super::tools::Tools;
use super::wait::wait_for_async;

/// Bound for one kube-apiserver (re)start to reach `/readyz` ok (measured: 5–15 s).
pub const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The keys of Secret `kube-system/kube-apiserver` that the kube-apiserver chart mounts and its
/// flags name; each is also the name of the asset dir file (`tls/<key>`) terraform rendered
/// into the chart's values. `token-auth-file` is left out: the harness's process has no token
/// file.
pub const SECRET_FILES: [&str; 10] = [
    "apiserver.crt",
    "apiserver.key",
    "service-account.key",
    "ca.crt",
    "etcd-client-ca.crt",
    "etcd-client.crt",
    "etcd-client.key",
    "aggregation-ca.crt",
    "aggregation-client.crt",
    "aggregation-client.key",
];

/// What a kube-apiserver pod mounts from Secret `kube-apiserver`: every key of
/// [`SECRET_FILES`], as files of one folder that the process's flags name. Never printed (it
/// holds keys: no Debug).
#[derive(Clone, PartialEq, Eq)]
pub struct Mounted(pub BTreeMap<String, Vec<u8>>);

impl Mounted {
    /// The asset dir's files, as the Secret holds them at install.
    pub fn from_assets(assets: &Assets) -> Mounted {
        Mounted::read(&assets.tls(""))
    }

    fn read(dir: &Path) -> Mounted {
        Mounted(
            SECRET_FILES
                .iter()
                .map(|key| {
                    let path = dir.join(key);
                    let data =
                        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    (key.to_string(), data)
                })
                .collect(),
        )
    }

    fn write(&self, dir: &Path) -> Result<(), String> {
        self.0
            .iter()
            .try_for_each(|(name, data)| write_private(&dir.join(name), data))
            .map_err(|e| format!("writing the kube-apiserver's Secret files: {e}"))
    }

    /// One key's data (empty if absent).
    pub fn get(&self, key: &str) -> &[u8] {
        self.0.get(key).map(Vec::as_slice).unwrap_or_default()
    }
}

/// The real kube-apiserver process, restartable with new Secret files like a pod whose
/// Secret volume changed.
pub struct ApiServer {
    sup: Arc<Supervisor>,
    spec: ProcSpec,
    /// Where the Secret's files the process reads live (the "mounted Secret").
    secrets_dir: PathBuf,
    client: Client,
    events: Arc<EventLog>,
    /// The running process; the lock serialises restarts.
    current: tokio::sync::Mutex<Option<ProcId>>,
    restarts: AtomicU32,
}

impl ApiServer {
    /// The Secret's files the running process was started with.
    pub async fn mounted(&self) -> Mounted {
        let _current = self.current.lock().await;
        Mounted::read(&self.secrets_dir)
    }

    /// How many times the process was restarted since the control plane started.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// Restarts the process with the same flags; when `decide` returns new Secret files
    /// (given the ones in use) the files are replaced first. `decide` returning `None`
    /// means "no restart". Waits for `/readyz`. The API is down meanwhile, as on a real
    /// single-replica cluster.
    pub async fn restart_if(
        &self,
        reason: &str,
        decide: impl FnOnce(&Mounted) -> Option<Mounted>,
    ) -> Result<bool, String> {
        let mut current = self.current.lock().await;
        let Some(next) = decide(&Mounted::read(&self.secrets_dir)) else {
            return Ok(false);
        };
        self.events.line(format!("kube-apiserver: restarting ({reason})"));
        let started = Instant::now();
        if let Some(id) = current.take() {
            self.sup.stop(id);
        }
        next.write(&self.secrets_dir)?;
        let id = self.sup.spawn(&self.spec).map_err(|e| format!("starting kube-apiserver: {e}"))?;
        *current = Some(id);
        self.restarts.fetch_add(1, Ordering::SeqCst);
        self.wait_ready(id).await?;
        self.events.line(format!("kube-apiserver: ready again after {:?}", started.elapsed()));
        Ok(true)
    }

    /// Restarts with unchanged files (what `kubectl rollout restart` does to a pod).
    pub async fn restart(&self, reason: &str) -> Result<(), String> {
        self.restart_if(reason, |now| Some(now.clone())).await.map(|_| ())
    }

    async fn wait_ready(&self, id: ProcId) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.sup.exit_status(id) {
                let log = self.spec.log.display();
                return Err(format!("kube-apiserver exited ({status}); its log: {log}"));
            }
            let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
            let probe =
                tokio::time::timeout(Duration::from_secs(5), self.client.request_text(request));
            match probe.await {
                Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                other if start.elapsed() > APISERVER_READY_TIMEOUT => {
                    return Err(format!(
                        "kube-apiserver not ready after {APISERVER_READY_TIMEOUT:?}: {}",
                        match other {
                            Ok(Ok(body)) => body,
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "readyz request timed out".into(),
                        }
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// The real kube-controller-manager process: first the bootstrap one (admin kubeconfig, the
/// asset dir's files), then, once the `kubernetes` chart is installed, restarted for each of
/// its pods with what the pod mounts (`kcm.rs`).
pub struct ControllerManager {
    sup: Arc<Supervisor>,
    /// The flags that never change (ports, cert dir, client rate).
    base: ProcSpec,
    secure_port: u16,
    events: Arc<EventLog>,
    /// The running process; the lock serialises restarts.
    current: tokio::sync::Mutex<Option<ProcId>>,
    restarts: AtomicU32,
}

impl ControllerManager {
    /// The flags of a run with `kubeconfig` and the files `ca.crt`, `ca.key`,
    /// `service-account.key` of `files`.
    fn spec(&self, kubeconfig: &Path, files: &Path) -> ProcSpec {
        self.base
            .clone()
            .arg(flag("kubeconfig", kubeconfig))
            .arg(flag("authentication-kubeconfig", kubeconfig))
            .arg(flag("authorization-kubeconfig", kubeconfig))
            .arg(flag("service-account-private-key-file", &files.join("service-account.key")))
            .arg(flag("root-ca-file", &files.join("ca.crt")))
            .arg(flag("cluster-signing-cert-file", &files.join("ca.crt")))
            .arg(flag("cluster-signing-key-file", &files.join("ca.key")))
    }

    /// Stops the running process and starts one with `kubeconfig` and `files`; returns once
    /// it serves its secure port.
    pub async fn restart(
        &self,
        reason: &str,
        kubeconfig: &Path,
        files: &Path,
    ) -> Result<(), String> {
        let mut current = self.current.lock().await;
        self.events.line(format!("kube-controller-manager: restarting ({reason})"));
        if let Some(id) = current.take() {
            self.sup.stop(id);
        }
        let id = self
            .sup
            .spawn(&self.spec(kubeconfig, files))
            .map_err(|e| format!("starting kube-controller-manager: {e}"))?;
        *current = Some(id);
        self.restarts.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        loop {
            if let Some(status) = self.sup.exit_status(id) {
                let log = self.base.log.display();
                return Err(format!("kube-controller-manager exited ({status}); its log: {log}"));
            }
            if TcpStream::connect(("127.0.0.1", self.secure_port)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err("kube-controller-manager does not serve its port after 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many times the process was restarted (for a pod) since the bootstrap one.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// Its log (appended across restarts).
    pub fn log(&self) -> PathBuf {
        self.base.log.clone()
    }
}

/// A running control plane. Its processes belong to the [`Supervisor`] it was given, which
/// stops them.
pub struct ControlPlane {
    pub apiserver: Arc<ApiServer>,
    pub controller_manager: Arc<ControllerManager>,
    /// A client with the asset dir's admin kubeconfig.
    pub client: Client,
    pub etcd_port: u16,
    pub etcd: Arc<Etcd>,
    /// How long [`ControlPlane::start`] took.
    pub startup: Duration,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver (port = the asset dir's kubeconfig port) and
    /// kube-controller-manager; returns once `/readyz` is ok and the controllers have created
    /// the `default` ServiceAccount (so pods can be created). The requests of `audit_users`
    /// are written to the audit log `logs/kube-apiserver-audit.log` (none: no audit log).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        sup: &Arc<Supervisor>,
        node: &ControllerNode,
        assets: &Assets,
        work: &Path,
        logs: &Path,
        events: &Arc<EventLog>,
        controller_api_qps: Option<u32>,
        audit_users: &[String],
    ) -> ControlPlane {
        let started = Instant::now();
        let tools = Tools::get();
        let etcd = Arc::new(Etcd::start_first(sup, node, work, logs));
        let etcd_port = etcd.port;
        events.line(format!("etcd: serving TLS on 127.0.0.1:{etcd_port}"));
        let unit = Arc::clone(&etcd);
        node.on_unit("etcd", Arc::new(move |action: &str| unit.systemctl(action)));

        let secrets_dir = work.join("kube-apiserver-secrets");
        let cert_dir = work.join("kube-apiserver-certs");
        std::fs::create_dir_all(&cert_dir).unwrap();
        std::fs::create_dir_all(&secrets_dir).unwrap();
        // At start the "mounted Secret" is the asset dir's files, as at bootstrap.
        Mounted::from_assets(assets).write(&secrets_dir).unwrap_or_else(|e| panic!("{e}"));
        let secret = |name: &str| secrets_dir.join(name);
        let spec = ProcSpec::new(
            "kube-apiserver",
            &tools.kube_apiserver,
            &logs.join("kube-apiserver.log"),
        )
        .arg(format!("--etcd-servers=https://127.0.0.1:{etcd_port}"))
        .arg(flag("etcd-cafile", &secret("etcd-client-ca.crt")))
        .arg(flag("etcd-certfile", &secret("etcd-client.crt")))
        .arg(flag("etcd-keyfile", &secret("etcd-client.key")))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", assets.api_port))
        // 1.20 still has the insecure port; parallel environments must not fight over 8080.
        .arg("--insecure-port=0")
        .arg(flag("cert-dir", &cert_dir))
        .arg(flag("tls-cert-file", &secret("apiserver.crt")))
        .arg(flag("tls-private-key-file", &secret("apiserver.key")))
        .arg(flag("client-ca-file", &secret("ca.crt")))
        .arg(flag("kubelet-client-certificate", &secret("apiserver.crt")))
        .arg(flag("kubelet-client-key", &secret("apiserver.key")))
        .arg("--kubelet-preferred-address-types=InternalIP")
        // As the chart since Lokomotive v0.7: the private key file for both.
        .arg(flag("service-account-key-file", &secret("service-account.key")))
        .arg(flag("service-account-signing-key-file", &secret("service-account.key")))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg("--authorization-mode=Node,RBAC")
        // Not Lokomotive's 10.3.0.0/16: the apiserver dials ClusterIPs itself (webhooks,
        // ClusterIP-backed APIServices), and no test traffic may leave loopback.
        .arg("--service-cluster-ip-range=127.3.0.0/16")
        .arg(flag("requestheader-client-ca-file", &secret("aggregation-ca.crt")))
        .arg(flag("proxy-client-cert-file", &secret("aggregation-client.crt")))
        .arg(flag("proxy-client-key-file", &secret("aggregation-client.key")))
        .arg("--requestheader-allowed-names=kube-apiserver")
        .arg("--requestheader-extra-headers-prefix=X-Remote-Extra-")
        .arg("--requestheader-group-headers=X-Remote-Group")
        .arg("--requestheader-username-headers=X-Remote-User")
        // Its graceful shutdown waits up to 60 s for open watches; a pod's grace period
        // would end it too, so keep restarts short.
        .stop_grace(Duration::from_secs(2));
        // Restarts keep the flags, so the log goes on across them (appended).
        let spec = if audit_users.is_empty() {
            spec
        } else {
            let policy = work.join("audit-policy.json");
            std::fs::write(&policy, audit::policy(audit_users).to_string()).unwrap();
            spec.arg(flag("audit-policy-file", &policy))
                .arg(flag("audit-log-path", &logs.join(audit::AUDIT_LOG)))
        };

        let client = harness_client(assets, work).await;
        let id = sup.spawn(&spec).expect("starting kube-apiserver");
        let apiserver = Arc::new(ApiServer {
            sup: Arc::clone(sup),
            spec,
            secrets_dir,
            client: client.clone(),
            events: Arc::clone(events),
            current: tokio::sync::Mutex::new(Some(id)),
            restarts: AtomicU32::new(0),
        });
        if let Err(e) = apiserver.wait_ready(id).await {
            panic!("{e}");
        }
        events.line(format!(
            "kube-apiserver: ready on 127.0.0.1:{} after {:?}",
            assets.api_port,
            started.elapsed()
        ));

        let kcm_certs = work.join("kube-controller-manager-certs");
        let kcm_log = logs.join("kube-controller-manager.log");
        let secure_port = free_port();
        let base =
            ProcSpec::new("kube-controller-manager", &tools.kube_controller_manager, &kcm_log)
                .arg("--leader-elect=false")
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={secure_port}"))
                .arg("--port=0")
                .arg(flag("cert-dir", &kcm_certs))
                .arg("--use-service-account-credentials=false");
        // Default client rate (20 requests/s) unless a benchmark asks for more.
        let base = match controller_api_qps {
            Some(qps) => base
                .arg(format!("--kube-api-qps={qps}"))
                .arg(format!("--kube-api-burst={}", qps * 2)),
            None => base,
        };
        let controller_manager = Arc::new(ControllerManager {
            sup: Arc::clone(sup),
            base,
            secure_port,
            events: Arc::clone(events),
            current: tokio::sync::Mutex::new(None),
            restarts: AtomicU32::new(0),
        });
        // The bootstrap process: the admin kubeconfig and the asset dir's tls/ca.crt, ca.key,
        // service-account.key (the names the chart's Secret has).
        let bootstrap = controller_manager.spec(&assets.kubeconfig(), &assets.tls(""));
        // Should it exit, the wait below fails with its death (the supervisor watches it).
        let id = sup.spawn(&bootstrap).expect("starting kube-controller-manager");
        *controller_manager.current.lock().await = Some(id);
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        wait_for_async(
            "kube-controller-manager to create ServiceAccount default/default",
            Duration::from_secs(90),
            || async {
                match accounts.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("not there yet".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
        let startup = started.elapsed();
        events.line(format!("control plane: up after {startup:?}"));
        ControlPlane { apiserver, controller_manager, client, etcd_port, etcd, startup }
    }
}

/// `--name=value` for a path value, which need not be UTF-8.
fn flag(name: &str, value: &Path) -> OsString {
    let mut flag = OsString::from(format!("--{name}="));
    flag.push(value);
    flag
}

/// The supervised etcd: one member playing the cluster's etcd on the controller node, started
/// and stopped as the node's `systemctl` asks (`copy-controller-secrets`).
///
/// It serves TLS with the node's etcd server and peer certificates and requires client
/// certificates of the etcd CA on both ports, as on a Lokomotive controller. It reads the
/// node's files (`work/node/etc/ssl/etcd/etcd/`, the node's `/etc/ssl/etcd/etcd/`), which
/// Terraform's `copy-controller-secrets` puts there over SSH: a new certificate in the asset
/// dir reaches it only by that copy and a restart, as on a node.
pub struct Etcd {
    sup: Arc<Supervisor>,
    spec: ProcSpec,
    pub port: u16,
    current: std::sync::Mutex<Option<ProcId>>,
    restarts: AtomicU32,
}

impl Etcd {
    /// Starts etcd on free loopback ports, retrying with new ports if another process took one
    /// between choosing and binding.
    fn start_first(sup: &Arc<Supervisor>, node: &ControllerNode, work: &Path, logs: &Path) -> Etcd {
        let tools = Tools::get();
        let file = |name: &str| node.path(&format!("etc/ssl/etcd/etcd/{name}"));
        for name in
            ["server-ca.crt", "server.crt", "server.key", "peer-ca.crt", "peer.crt", "peer.key"]
        {
            assert!(
                file(name).is_file(),
                "{} is missing: copy-controller-secrets did not reach the node",
                file(name).display()
            );
        }
        for attempt in 1..=3 {
            let (client_port, peer_port) = (free_port(), free_port());
            let data = work.join(format!("etcd-data-{attempt}"));
            let spec = ProcSpec::new("etcd", &tools.etcd, &logs.join("etcd.log"))
                .arg("--name=default")
                .arg(flag("data-dir", &data))
                .arg(format!("--listen-client-urls=https://127.0.0.1:{client_port}"))
                .arg(format!("--advertise-client-urls=https://127.0.0.1:{client_port}"))
                .arg(format!("--listen-peer-urls=https://127.0.0.1:{peer_port}"))
                .arg(format!("--initial-advertise-peer-urls=https://127.0.0.1:{peer_port}"))
                .arg(format!("--initial-cluster=default=https://127.0.0.1:{peer_port}"))
                .arg(flag("cert-file", &file("server.crt")))
                .arg(flag("key-file", &file("server.key")))
                .arg(flag("trusted-ca-file", &file("server-ca.crt")))
                .arg("--client-cert-auth")
                .arg(flag("peer-cert-file", &file("peer.crt")))
                .arg(flag("peer-key-file", &file("peer.key")))
                .arg(flag("peer-trusted-ca-file", &file("peer-ca.crt")))
                .arg("--peer-client-cert-auth")
                .stop_last();
            let etcd = Etcd {
                sup: Arc::clone(sup),
                spec,
                port: client_port,
                current: std::sync::Mutex::new(None),
                restarts: AtomicU32::new(0),
            };
            if etcd.spawn_and_wait().is_ok() {
                return etcd;
            }
        }
        panic!("etcd did not start in 3 attempts; see {}", logs.join("etcd.log").display());
    }

    /// Spawns the process and waits until it serves its client port; watched from then on
    /// (an exit before that, a port taken, is the caller's to retry).
    fn spawn_and_wait(&self) -> Result<(), String> {
        let id = self.sup.spawn_unwatched(&self.spec).map_err(|e| format!("starting etcd: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.sup.exit_status(id) {
                return Err(format!(
                    "etcd exited ({status}); its log: {}",
                    self.spec.log.display()
                ));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.sup.watch(id);
                *self.current.lock().unwrap() = Some(id);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.sup.stop(id);
        Err(format!("etcd does not serve 127.0.0.1:{} after 30 s", self.port))
    }

    /// `systemctl ACTION etcd` on the node: stop (asked for: no death), start on the node's
    /// files as they are now (same ports, same data), restart.
    pub fn systemctl(&self, action: &str) -> Result<(), String> {
        match action {
            "stop" => {
                self.stop();
                Ok(())
            }
            "start" if self.current.lock().unwrap().is_some() => Ok(()),
            "start" => self.start(),
            "restart" => {
                self.stop();
                self.start()
            }
            other => Err(format!("unknown action {other:?} (stop, start, restart)")),
        }
    }

    fn stop(&self) {
        if let Some(id) = self.current.lock().unwrap().take() {
            self.sup.stop(id);
        }
    }

    fn start(&self) -> Result<(), String> {
        self.spawn_and_wait()?;
        self.restarts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// How many times the node's systemctl started etcd again since the control plane started.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::SeqCst)
    }
}

/// The harness's own client (the scheduler's, the kubelet's pod side, the sync's, the
/// readiness probe's): `system:masters` with a client certificate of its own, issued at start by
/// the asset dir's kube CA key for a day, and no server verification. Not the asset dir's admin
/// kubeconfig, whose certificate expires with the cluster's (`tests/cliff.rs`): the harness
/// stands for components that a renewal does not concern, and must keep working across it. A
/// certificate of the kube CA's key verifies under a re-issued CA certificate (same key, same
/// name), so it works after `renew` too; a re-keyed kube CA would refuse it.
async fn harness_client(assets: &Assets, work: &Path) -> Client {
    use base64::Engine as _;
    let (cert, key) = super::pki::client_certificate(
        &assets.tls("ca.crt"),
        &assets.tls("ca.key"),
        "certrotate-harness",
        &["system:masters"],
    );
    let b64 = |pem: &[u8]| base64::engine::general_purpose::STANDARD.encode(pem);
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": format!("https://127.0.0.1:{}", assets.api_port),
            "insecure-skip-tls-verify": true}}],
        "users": [{"name": "harness", "user": {
            "client-certificate-data": b64(&cert), "client-key-data": b64(&key)}}],
        "contexts": [{"name": "harness", "context": {"cluster": "c", "user": "harness"}}],
        "current-context": "harness",
    });
    let path = work.join("harness-kubeconfig");
    write_private(&path, kubeconfig.to_string().as_bytes()).unwrap();
    admin_client(&path).await
}

/// A client with the admin credentials of a kubeconfig (must run inside a tokio runtime).
pub async fn admin_client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kubeconfig.display()));
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", kubeconfig.display()));
    Client::try_from(config).expect("building a kube client")
}
