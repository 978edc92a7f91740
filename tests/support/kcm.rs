//! kube-controller-manager as the `kubernetes` chart's pod.
//!
//! At start the control plane runs kube-controller-manager as a bootstrap process with the
//! admin kubeconfig and the asset dir's `ca.crt`, `ca.key` and `service-account.key` (as
//! bootkube's temporary control plane does). Once the `kubernetes` chart is installed, each of
//! its pods (`kube-system`, `k8s-app: kube-controller-manager`) that the simulated kubelet
//! starts restarts the one real process the way the pod would run it:
//! - the files of Secret `kube-system/kube-controller-manager` (`ca.crt`, `ca.key`,
//!   `service-account.key`) as they are when the pod starts, written to the files its flags
//!   name (the mounted Secret);
//! - a kubeconfig with the token of the pod's ServiceAccount and the `ca.crt` of that token's
//!   Secret (Lokomotive's `kubeconfig-in-cluster`): the CA copy it started with, trusted until
//!   the next start.
//!
//! A pod going away does not stop the process (it stands for every pod of the chart, as the
//! kube-apiserver process does in `sync.rs`); every pod start restarts it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::control_plane::ControllerManager;
use super::kubelet::PodRuntime;
use super::pki::write_private;
use super::process::EventLog;
use super::sync::read_retrying;

/// The keys of Secret `kube-system/kube-controller-manager`, as the chart's flags name them.
pub const KCM_SECRET_FILES: [&str; 3] = ["ca.crt", "ca.key", "service-account.key"];

/// Plays the kubelet for the `kubernetes` chart's kube-controller-manager pods.
pub struct ControllerManagerPods {
    kcm: Arc<ControllerManager>,
    client: Client,
    api_port: u16,
    work: PathBuf,
    events: Arc<EventLog>,
}

impl ControllerManagerPods {
    pub fn new(
        kcm: Arc<ControllerManager>,
        client: Client,
        api_port: u16,
        work: &Path,
        events: Arc<EventLog>,
    ) -> Arc<Self> {
        Arc::new(ControllerManagerPods { kcm, client, api_port, work: work.to_path_buf(), events })
    }

    /// `(token, ca.crt)` of the ServiceAccount's token Secret (waits for kube-controller-manager's
    /// token controller to make it).
    async fn token(&self, namespace: &str, account: &str) -> Result<(String, Vec<u8>), String> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("the token Secret of ServiceAccount {namespace}/{account}");
        read_retrying(&what, || async {
            let Some(sa) = accounts.get_opt(account).await? else { return Ok(None) };
            for name in sa.secrets.unwrap_or_default().into_iter().filter_map(|r| r.name) {
                let Some(secret) = secrets.get_opt(&name).await? else { continue };
                if secret.type_.as_deref() != Some("kubernetes.io/service-account-token") {
                    continue;
                }
                let data = secret.data.unwrap_or_default();
                if let (Some(token), Some(ca)) = (data.get("token"), data.get("ca.crt")) {
                    let token = String::from_utf8_lossy(&token.0).into_owned();
                    return Ok(Some((token, ca.0.clone())));
                }
            }
            Ok(None)
        })
        .await
    }
}

/// A kubeconfig (0600) for a ServiceAccount token: the server, the CA it trusts, the token.
pub fn token_kubeconfig(
    path: &Path,
    api_port: u16,
    ca: Option<&[u8]>,
    token: &str,
) -> Result<(), String> {
    let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);
    let mut cluster = json!({"server": format!("https://127.0.0.1:{api_port}")});
    match ca {
        Some(ca) => cluster["certificate-authority-data"] = json!(b64(ca)),
        None => cluster["insecure-skip-tls-verify"] = json!(true),
    }
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    });
    write_private(path, kubeconfig.to_string().as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl PodRuntime for ControllerManagerPods {
    fn matches(&self, pod: &Pod) -> bool {
        pod.namespace().as_deref() == Some("kube-system")
            && pod.labels().get("k8s-app").is_some_and(|v| v == "kube-controller-manager")
    }

    fn start<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let name = pod.name_any();
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), "kube-system");
            let secret = read_retrying("Secret kube-system/kube-controller-manager", || {
                secrets.get_opt("kube-controller-manager")
            })
            .await?;
            let data = secret.data.unwrap_or_default();
            let dir = self.work.join(format!("kube-controller-manager-{name}"));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for key in KCM_SECRET_FILES {
                let value = data.get(key).map(|b| b.0.clone()).filter(|b| !b.is_empty());
                let value = value.ok_or_else(|| {
                    format!("Secret kube-system/kube-controller-manager has no {key}")
                })?;
                write_private(&dir.join(key), &value)
                    .map_err(|e| format!("{}: {e}", dir.join(key).display()))?;
            }
            let account = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            let (token, ca) = self.token("kube-system", &account).await?;
            let kubeconfig = dir.join("kubeconfig");
            token_kubeconfig(&kubeconfig, self.api_port, Some(&ca), &token)?;
            let reason = format!("pod kube-system/{name} started (ServiceAccount {account})");
            self.kcm.restart(&reason, &kubeconfig, &dir).await?;
            self.events
                .line(format!("sync: kube-controller-manager runs for pod kube-system/{name}"));
            Ok(())
        })
    }

    fn ready(&self, _pod: &Pod) {}

    /// The process stands for every pod of the chart: a pod going away does not stop it.
    fn stop(&self, _pod: &Pod) {}

    fn log_file(&self, _pod: &Pod) -> Option<PathBuf> {
        Some(self.kcm.log())
    }
}
