//! Choosing the kubeconfig, building the client and proving the cluster is the asset dir's.

use std::path::PathBuf;

use kube::client::ClientBuilder;
use kube::config::{
    KubeConfigOptions, Kubeconfig, KubeconfigError, LoadDataError, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use kube::{Client, Config};

use super::bound::{DEFAULT_REQUEST_TIMEOUT, RequestBound};

use crate::assets::AssetDir;
use crate::cli::KubeOpts;
use crate::error::{Error, Result};
use crate::secret_text;

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
    /// The context, cluster and user this connection uses, alone: what children get.
    selected: Selected,
}

/// One context of a kubeconfig with its cluster and user, as a kubeconfig of its own.
struct Selected {
    kubeconfig: Kubeconfig,
    description: String,
}

impl Connection {
    /// Loads the kubeconfig in the documented order (README): `--kubeconfig`, `$KUBECONFIG`,
    /// the asset dir's `cluster-assets/auth/kubeconfig`, `~/.kube/config`. In a fleet each
    /// asset dir must use its own kubeconfig, so `$KUBECONFIG` is not consulted there.
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
        let selected = select(&kubeconfig, &options);
        let config = Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| {
            Error::Kubeconfig { path: PathBuf::from(&label), reason: kubeconfig_problem(&e) }
        })?;
        // kube accepted the same choice, so only a kubeconfig kube reads otherwise fails here.
        let selected =
            selected.map_err(|reason| Error::Kubeconfig { path: PathBuf::from(&label), reason })?;
        let server = config.cluster_url.to_string().trim_end_matches('/').to_string();
        if verbose > 0 {
            eprintln!("using kubeconfig {label} ({}), server {server}", source.describe());
        }
        let root_certs = config.root_cert.clone().unwrap_or_default();
        let insecure = config.accept_invalid_certs;
        // kubectl's --request-timeout: the default when absent, no limit for 0. Connecting
        // keeps kube's own bound even then, as kubectl's dialer does.
        let limit = match &opts.request_timeout {
            None => Some(DEFAULT_REQUEST_TIMEOUT),
            Some(t) if t.duration.is_zero() => None,
            Some(t) => Some(t.duration),
        };
        let bound = RequestBound::new(limit, server.clone());
        let client = ClientBuilder::try_from(config)
            .map(|builder| builder.with_layer(&bound).build())
            .map_err(|e| {
                // Key data is decoded only here, so a broken client-key-data surfaces now.
                match kubeconfig_cause(&e) {
                    Some(cause) => Error::Kubeconfig {
                        path: PathBuf::from(&label),
                        reason: kubeconfig_problem(cause),
                    },
                    None => Error::kube("build a client", e),
                }
            })?;
        Ok(Self { client, server, kubeconfig: label, source, root_certs, insecure, selected })
    }

    /// A kubeconfig (JSON, which is YAML) holding only the context, cluster and user this
    /// connection uses, for the children that must act on this cluster alone. It holds the
    /// user's credentials: write it only to a private file.
    pub fn child_kubeconfig(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.selected.kubeconfig).expect("a kubeconfig serializes")
    }

    /// `context C (cluster S, user U)`, for plans and messages.
    pub fn selection(&self) -> &str {
        &self.selected.description
    }

    pub fn kubeconfig_description(&self) -> String {
        format!("kubeconfig {} from {}", self.kubeconfig, self.source.describe())
    }

    /// Proves that the cluster behind this connection is the asset dir's: the kubeconfig
    /// must trust the asset dir's `tls/ca.crt`, so a successful TLS handshake means the API
    /// server's certificate was issued by that CA.
    pub fn verify_identity(&self, assets: &AssetDir) -> std::result::Result<(), String> {
        self.verify_identity_resuming(assets, None)
    }

    /// [`Self::verify_identity`] for a run in progress, which may have been cut off while
    /// terraform re-wrote `tls/ca.crt` (a `local_file` is deleted first): then `kept_ca`, the
    /// run's copy of it, stands in. A CA is the same CA when its subject and key are (renew
    /// re-issues the CA certificate with its key, so a kubeconfig trusting the old one trusts
    /// the same servers).
    pub fn verify_identity_resuming(
        &self,
        assets: &AssetDir,
        kept_ca: Option<&std::path::Path>,
    ) -> std::result::Result<(), String> {
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
        let usable = |path: &std::path::Path| {
            std::fs::read(path).ok().and_then(|pem| openssl::x509::X509::from_pem(&pem).ok())
        };
        let ca = usable(&ca_path).or_else(|| kept_ca.and_then(usable)).ok_or_else(|| {
            format!("cannot check which cluster this is: {} is unusable", ca_path.display())
        })?;
        if self.root_certs.iter().any(|der| same_ca(&ca, der)) {
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
}

/// Whether the certificate `der` is CA `ca`: the same subject and public key.
fn same_ca(ca: &openssl::x509::X509Ref, der: &[u8]) -> bool {
    let Ok(other) = openssl::x509::X509::from_der(der) else { return false };
    let key = |c: &openssl::x509::X509Ref| c.public_key().and_then(|k| k.public_key_to_der()).ok();
    let subject = |c: &openssl::x509::X509Ref| c.subject_name().to_der().ok();
    key(ca).is_some() && key(ca) == key(&other) && subject(ca) == subject(&other)
}

/// The context `options` (else the current context) picks, with its cluster and user, or those
/// `options` name instead, as kube picks them (`ConfigLoader`).
fn select(
    kubeconfig: &Kubeconfig,
    options: &KubeConfigOptions,
) -> std::result::Result<Selected, String> {
    let context_name = options
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone())
        .ok_or("it sets no current-context: pass --context")?;
    let named = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .ok_or_else(|| format!("it has no context {context_name:?}"))?;
    let mut context = named.context.clone().unwrap_or_default();
    if let Some(cluster) = &options.cluster {
        context.cluster = cluster.clone();
    }
    if let Some(user) = &options.user {
        context.user = Some(user.clone());
    }
    let cluster: NamedCluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .cloned()
        .ok_or_else(|| format!("it has no cluster {:?}", context.cluster))?;
    // As kube and client-go: a context without (a known) user talks anonymously.
    let user: Option<NamedAuthInfo> = context
        .user
        .as_ref()
        .and_then(|name| kubeconfig.auth_infos.iter().find(|u| &u.name == name).cloned());
    context.user = user.as_ref().map(|u| u.name.clone());
    let description = format!(
        "context {context_name} (cluster {}, user {})",
        cluster.name,
        context.user.as_deref().unwrap_or("none")
    );
    let kubeconfig = Kubeconfig {
        kind: Some("Config".into()),
        api_version: Some("v1".into()),
        clusters: vec![cluster],
        auth_infos: user.into_iter().collect(),
        contexts: vec![NamedContext { context: Some(context), ..named.clone() }],
        current_context: Some(context_name),
        ..Kubeconfig::default()
    };
    Ok(Selected { kubeconfig, description })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clusters with a context each, the current one `staging`.
    const MERGED: &str = "apiVersion: v1\nkind: Config\ncurrent-context: staging\n\
        clusters:\n\
        - name: staging-cluster\n  cluster:\n    server: https://127.0.0.1:1\n\
        - name: prod-cluster\n  cluster:\n    server: https://127.0.0.1:2\n\
        users:\n\
        - name: staging-user\n  user:\n    token: staging-token\n\
        - name: prod-user\n  user:\n    token: prod-token\n\
        contexts:\n\
        - name: staging\n  context:\n    cluster: staging-cluster\n    user: staging-user\n    namespace: kube-system\n\
        - name: prod\n  context:\n    cluster: prod-cluster\n    user: prod-user\n";

    fn selected(
        context: Option<&str>,
        cluster: Option<&str>,
        user: Option<&str>,
    ) -> (String, String) {
        let kubeconfig = Kubeconfig::from_yaml(MERGED).unwrap();
        let options = KubeConfigOptions {
            context: context.map(Into::into),
            cluster: cluster.map(Into::into),
            user: user.map(Into::into),
        };
        let s = select(&kubeconfig, &options).unwrap();
        (serde_json::to_string(&s.kubeconfig).unwrap(), s.description)
    }

    #[test]
    fn the_child_kubeconfig_holds_the_current_context_alone() {
        let (json, description) = selected(None, None, None);
        assert_eq!(description, "context staging (cluster staging-cluster, user staging-user)");
        let back = Kubeconfig::from_yaml(&json).unwrap();
        assert_eq!(back.current_context.as_deref(), Some("staging"));
        assert_eq!(back.contexts.len(), 1);
        assert_eq!(back.clusters.len(), 1);
        assert_eq!(back.auth_infos.len(), 1);
        assert!(json.contains("https://127.0.0.1:1") && json.contains("staging-token"), "{json}");
        assert!(json.contains("kube-system"), "the context's namespace is kept: {json}");
        assert!(!json.contains("prod"), "{json}");
    }

    #[test]
    fn context_cluster_and_user_flags_pick_what_goes_in() {
        let (json, description) = selected(Some("prod"), None, None);
        assert_eq!(description, "context prod (cluster prod-cluster, user prod-user)");
        assert!(!json.contains("staging"), "{json}");
        let (json, description) = selected(None, Some("prod-cluster"), Some("prod-user"));
        assert_eq!(description, "context staging (cluster prod-cluster, user prod-user)");
        let back = Kubeconfig::from_yaml(&json).unwrap();
        let context = back.contexts[0].context.as_ref().unwrap();
        assert_eq!(context.cluster, "prod-cluster");
        assert_eq!(context.user.as_deref(), Some("prod-user"));
        assert!(!json.contains("staging-cluster") && !json.contains("staging-token"), "{json}");
    }

    #[test]
    fn an_unknown_context_or_cluster_is_refused() {
        let kubeconfig = Kubeconfig::from_yaml(MERGED).unwrap();
        let options =
            KubeConfigOptions { context: Some("dev".into()), ..KubeConfigOptions::default() };
        assert!(select(&kubeconfig, &options).err().unwrap().contains("no context \"dev\""));
        let options =
            KubeConfigOptions { cluster: Some("dev".into()), ..KubeConfigOptions::default() };
        assert!(select(&kubeconfig, &options).err().unwrap().contains("no cluster \"dev\""));
    }
}
