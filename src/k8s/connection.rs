//! Choosing the kubeconfig, building the client and proving the cluster is the asset dir's.

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError, LoadDataError};
use kube::{Client, Config};

use crate::assets::AssetDir;
use crate::cli::KubeOpts;
use crate::error::{Error, Result};
use crate::secret_text;

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
                Error::Kubeconfig { path: PathBuf::from(&label), reason: kubeconfig_problem(&e) }
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
        let client = Client::try_from(config).map_err(|e| {
            // Key data is decoded only here, so a broken client-key-data surfaces now.
            match kubeconfig_cause(&e) {
                Some(cause) => Error::Kubeconfig {
                    path: PathBuf::from(&label),
                    reason: kubeconfig_problem(cause),
                },
                None => Error::kube("build a client", e),
            }
        })?;
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

    /// Runs one API call under the connection's request bound.
    pub(crate) async fn bounded<T>(
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
            .map_err(|e| Error::Kubeconfig { path, reason: kubeconfig_problem(&e) })
    };
    if let Some(path) = &opts.kubeconfig {
        return read(path.clone(), KubeconfigSource::Flag);
    }
    if !fleet && let Some(var) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        let label = var.to_string_lossy().into_owned();
        return match Kubeconfig::from_env() {
            Ok(Some(k)) => Ok((k, KubeconfigSource::EnvVar, label)),
            Ok(None) => Err(Error::NoKubeconfig),
            Err(e) => Err(Error::Kubeconfig { path: label.into(), reason: kubeconfig_problem(&e) }),
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

/// The kubeconfig problem behind a client that could not be built, if that is the cause.
fn kubeconfig_cause(err: &kube::Error) -> Option<&KubeconfigError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<KubeconfigError>() {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

/// What is wrong with a kubeconfig, without quoting it: it may hold `client-key-data`, and
/// kube's own messages carry the YAML parser's snippet or the offending base64 byte.
fn kubeconfig_problem(err: &KubeconfigError) -> String {
    let fix = "fix that line, or pass another kubeconfig with --kubeconfig";
    match err {
        KubeconfigError::Parse(yaml) => format!("{}; {fix}", secret_text::yaml_error(yaml)),
        KubeconfigError::LoadClientKey(LoadDataError::DecodeBase64(_)) => format!(
            "its client-key-data is not valid base64 (the value is not shown: it is a private \
             key); {fix}"
        ),
        other => other.to_string(),
    }
}
