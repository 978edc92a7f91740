//! The one place that talks to the Kubernetes API: choosing the kubeconfig, proving the
//! cluster is the asset dir's, and every read or write the commands need.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::assets::AssetDir;
use crate::cli::KubeOpts;
use crate::error::{Error, Result};
use crate::status::ApiServiceRow;

pub const AUTH_CONFIGMAP: &str = "configmap/kube-system/extension-apiserver-authentication";
pub const APISERVER_SECRET: &str = "secret/kube-system/kube-apiserver";
pub const WEBHOOK_SECRET: &str = "secret/lokomotive-system/admission-webhook-server";
pub const WEBHOOK_CONFIG: &str = "mutatingwebhookconfiguration/admission-webhook-server";

/// How long a read-only command waits for an API answer when `--request-timeout` is not set:
/// an unreachable cluster must not stall a status report.
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the kubeconfig came from, for `-v` and for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeconfigSource {
    Flag,
    EnvVar,
    AssetDir,
    Home,
}

impl KubeconfigSource {
    fn describe(self) -> &'static str {
        match self {
            Self::Flag => "--kubeconfig",
            Self::EnvVar => "$KUBECONFIG",
            Self::AssetDir => "the asset dir's kubeconfig",
            Self::Home => "~/.kube/config",
        }
    }
}

/// A client plus what is known about how it was made.
pub struct Connection {
    pub client: Client,
    pub server: String,
    pub kubeconfig: String,
    pub source: KubeconfigSource,
    root_certs: Vec<Vec<u8>>,
    insecure: bool,
    timeout: Duration,
}

impl Connection {
    /// Loads the kubeconfig in PRODUCT.md's order: `--kubeconfig`, `$KUBECONFIG`, the asset
    /// dir's `cluster-assets/auth/kubeconfig`, `~/.kube/config`. In a fleet each asset dir
    /// must use its own kubeconfig, so `$KUBECONFIG` is not consulted there.
    pub async fn open(
        opts: &KubeOpts,
        assets: Option<&AssetDir>,
        fleet: bool,
        verbose: u8,
    ) -> Result<Self> {
        let (kubeconfig, source, label) = load_kubeconfig(opts, assets, fleet)?;
        let options = KubeConfigOptions {
            context: opts.context.clone(),
            cluster: opts.cluster.clone(),
            user: opts.user.clone(),
        };
        let mut config =
            Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| {
                Error::Kubeconfig { path: PathBuf::from(&label), reason: e.to_string() }
            })?;
        let timeout = match &opts.request_timeout {
            Some(t) if t.duration.is_zero() => Duration::MAX,
            Some(t) => t.duration,
            None => DEFAULT_PROBE_TIMEOUT,
        };
        if let Some(t) = opts.request_timeout.as_ref().filter(|t| !t.duration.is_zero()) {
            config.connect_timeout = Some(t.duration);
            config.read_timeout = Some(t.duration);
        }
        let server = config.cluster_url.to_string().trim_end_matches('/').to_string();
        if verbose > 0 {
            eprintln!("using kubeconfig {label} ({}), server {server}", source.describe());
        }
        let root_certs = config.root_cert.clone().unwrap_or_default();
        let insecure = config.accept_invalid_certs;
        let client = Client::try_from(config).map_err(|e| Error::kube("build a client", e))?;
        Ok(Self { client, server, kubeconfig: label, source, root_certs, insecure, timeout })
    }

    pub fn kubeconfig_description(&self) -> String {
        format!("kubeconfig {} from {}", self.kubeconfig, self.source.describe())
    }

    /// Proves that the cluster behind this connection is the asset dir's: the kubeconfig
    /// must trust the asset dir's `tls/ca.crt`, so a successful TLS handshake means the API
    /// server's certificate was issued by that CA.
    pub fn verify_identity(&self, assets: &AssetDir) -> std::result::Result<(), String> {
        let ca_path = assets.asset("tls/ca.crt");
        let pointer = format!(
            "point at the right cluster with --kubeconfig {}",
            assets.asset(crate::assets::KUBECONFIG).display()
        );
        if self.insecure {
            return Err(format!(
                "{} skips TLS verification (insecure-skip-tls-verify), so it cannot be proven \
                 to reach the cluster of {}; {pointer}",
                self.kubeconfig,
                assets.root().display()
            ));
        }
        let ca = std::fs::read(&ca_path)
            .ok()
            .and_then(|pem| openssl::x509::X509::from_pem(&pem).ok())
            .and_then(|c| c.to_der().ok())
            .ok_or_else(|| {
                format!("cannot check which cluster this is: {} is unusable", ca_path.display())
            })?;
        if self.root_certs.contains(&ca) {
            return Ok(());
        }
        Err(format!(
            "{} ({}) does not trust {}: it points at another cluster than the asset dir {}; \
             {pointer}",
            self.kubeconfig,
            self.server,
            ca_path.display(),
            assets.root().display()
        ))
    }

    /// Runs one API call under the connection's bound.
    async fn bounded<T>(
        &self,
        action: &str,
        call: impl Future<Output = kube::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| Error::kube(action, e)),
            Err(_) => {
                Err(Error::KubeTimeout { action: action.to_string(), secs: self.timeout.as_secs() })
            }
        }
    }
}

fn load_kubeconfig(
    opts: &KubeOpts,
    assets: Option<&AssetDir>,
    fleet: bool,
) -> Result<(Kubeconfig, KubeconfigSource, String)> {
    let read = |path: PathBuf, source| {
        let label = path.display().to_string();
        Kubeconfig::read_from(&path)
            .map(|k| (k, source, label))
            .map_err(|e| Error::Kubeconfig { path, reason: e.to_string() })
    };
    if let Some(path) = &opts.kubeconfig {
        return read(path.clone(), KubeconfigSource::Flag);
    }
    if !fleet && let Some(var) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        let label = var.to_string_lossy().into_owned();
        return match Kubeconfig::from_env() {
            Ok(Some(k)) => Ok((k, KubeconfigSource::EnvVar, label)),
            Ok(None) => Err(Error::NoKubeconfig),
            Err(e) => Err(Error::Kubeconfig { path: label.into(), reason: e.to_string() }),
        };
    }
    if let Some(path) = assets.and_then(AssetDir::kubeconfig) {
        return read(path, KubeconfigSource::AssetDir);
    }
    if fleet {
        return Err(Error::NoKubeconfig);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).ok_or(Error::NoKubeconfig)?;
    let path = home.join(".kube").join("config");
    if !path.is_file() {
        return Err(Error::NoKubeconfig);
    }
    read(path, KubeconfigSource::Home)
}

/// The certificate-bearing objects and APIServices `status` reports, read in one go.
pub struct ClusterSnapshot {
    values: BTreeMap<(String, String), std::result::Result<Vec<u8>, String>>,
    pub api_services: Vec<ApiServiceRow>,
}

impl ClusterSnapshot {
    /// The PEM stored under `key` of `object`, or why it is not there.
    pub fn get(&self, object: &str, key: &str) -> std::result::Result<&[u8], &str> {
        match self.values.get(&(object.to_string(), key.to_string())) {
            Some(Ok(bytes)) => Ok(bytes),
            Some(Err(reason)) => Err(reason),
            None => Err("not read"),
        }
    }
}

/// Reads everything `status` needs concurrently; a missing object becomes a reason, not an
/// error, because a half-rotated cluster is exactly what status must describe.
pub async fn snapshot(conn: &Connection) -> Result<ClusterSnapshot> {
    conn.bounded("reach the API server", conn.client.apiserver_version()).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(conn.client.clone(), "kube-system");
    let apiserver_secrets: Api<Secret> = Api::namespaced(conn.client.clone(), "kube-system");
    let webhook_secrets: Api<Secret> = Api::namespaced(conn.client.clone(), "lokomotive-system");
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(conn.client.clone());
    let api_services: Api<APIService> = Api::all(conn.client.clone());
    let list_all = ListParams::default();
    let (auth, apiserver, webhook_secret, webhook, services) = tokio::join!(
        conn.bounded(
            "read the extension-apiserver-authentication ConfigMap",
            configmaps.get_opt("extension-apiserver-authentication")
        ),
        conn.bounded("read the kube-apiserver Secret", apiserver_secrets.get_opt("kube-apiserver")),
        conn.bounded(
            "read the admission-webhook-server Secret",
            webhook_secrets.get_opt("admission-webhook-server")
        ),
        conn.bounded(
            "read the admission-webhook-server MutatingWebhookConfiguration",
            webhooks.get_opt("admission-webhook-server")
        ),
        conn.bounded("list APIServices", api_services.list(&list_all)),
    );
    let mut values = BTreeMap::new();
    let mut put = |object: &str, key: &str, value: std::result::Result<Vec<u8>, String>| {
        values.insert((object.to_string(), key.to_string()), value);
    };
    let not_found = |object: &str| format!("{object} not found");
    let not_in = |object: &str, key: &str| format!("{object} has no {key}");

    let auth = auth?;
    for key in ["client-ca-file", "requestheader-client-ca-file"] {
        let value = match &auth {
            None => Err(not_found(AUTH_CONFIGMAP)),
            Some(cm) => cm
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.as_bytes().to_vec())
                .ok_or_else(|| not_in(AUTH_CONFIGMAP, key)),
        };
        put(AUTH_CONFIGMAP, key, value);
    }
    for (object, secret, keys) in [
        (APISERVER_SECRET, apiserver?, &["aggregation-ca.crt", "aggregation-client.crt"][..]),
        (WEBHOOK_SECRET, webhook_secret?, &["cert.pem"][..]),
    ] {
        for key in keys {
            let value = match &secret {
                None => Err(not_found(object)),
                Some(s) => s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(*key))
                    .map(|v| v.0.clone())
                    .ok_or_else(|| not_in(object, key)),
            };
            put(object, key, value);
        }
    }
    let ca_bundle = match webhook? {
        None => Err(not_found(WEBHOOK_CONFIG)),
        Some(mwc) => mwc
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .find_map(|w| w.client_config.ca_bundle)
            .map(|b| b.0)
            .ok_or_else(|| not_in(WEBHOOK_CONFIG, "caBundle")),
    };
    put(WEBHOOK_CONFIG, "caBundle", ca_bundle);

    let api_services = services?
        .items
        .into_iter()
        .filter_map(|svc| {
            let service = svc.spec.as_ref()?.service.as_ref()?;
            let condition = svc
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Available"));
            Some(ApiServiceRow {
                name: svc.metadata.name.clone().unwrap_or_default(),
                service: format!(
                    "{}/{}",
                    service.namespace.as_deref().unwrap_or(""),
                    service.name.as_deref().unwrap_or("")
                ),
                available: condition.map_or("Unknown".into(), |c| c.status.clone()),
                reason: condition.and_then(|c| c.reason.clone()),
                message: condition.and_then(|c| c.message.clone()),
            })
        })
        .collect();
    Ok(ClusterSnapshot { values, api_services })
}
