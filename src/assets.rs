//! The Lokomotive asset dir: where every certificate and key lives, which CA issues it, and
//! which Terraform resources produce it, as Lokomotive's bootkube module names them
//! (`tests/terraform_addresses.rs` checks every address against real state).

use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use crate::error::{Error, Result};
use crate::secret_text;

/// Where a credential is stored inside `cluster-assets/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// A PEM certificate file, with its private key file when the asset dir keeps one.
    Files { cert: &'static str, key: Option<&'static str> },
    /// Base64 PEM inside the `lokomotive` chart values (`webhook.servingCert` / `servingKey`).
    WebhookValues,
    /// A bare key pair with no certificate, hence no expiry (the service-account key).
    KeyPair { private: &'static str, public: &'static str },
}

/// Terraform resources, relative to the bootkube module (`<module>.<address>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerraformResources {
    pub key: &'static str,
    /// The `tls_self_signed_cert` or `tls_locally_signed_cert`; `None` for a bare key pair.
    pub cert: Option<&'static str>,
    /// The `local_file` resources that write this credential to disk.
    pub files: &'static [&'static str],
}

/// One credential of the cluster's PKI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    /// Stable name used in output and JSON (`aggregation-ca`).
    pub name: &'static str,
    pub storage: Storage,
    /// Name of the issuing CA's credential; `None` for a self-signed CA or a key pair.
    pub issuer: Option<&'static str>,
    pub is_ca: bool,
    /// Name of the credential this file is a copy of (the etcd CA is written four times).
    pub copy_of: Option<&'static str>,
    pub terraform: TerraformResources,
    /// Only present when aggregation is enabled (`count = enable_aggregation ? 1 : 0`).
    pub aggregation: bool,
}

const fn files(cert: &'static str, key: &'static str) -> Storage {
    Storage::Files { cert, key: Some(key) }
}

/// Every credential of a Lokomotive cluster, CAs first, in the order `status` lists them.
pub const CREDENTIALS: &[Credential] = &[
    Credential {
        name: "kube-ca",
        storage: files("tls/ca.crt", "tls/ca.key"),
        issuer: None,
        is_ca: true,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.kube-ca",
            cert: Some("tls_self_signed_cert.kube-ca"),
            files: &["local_file.kube-ca-key", "local_file.kube-ca-crt"],
        },
        aggregation: false,
    },
    Credential {
        name: "apiserver",
        storage: files("tls/apiserver.crt", "tls/apiserver.key"),
        issuer: Some("kube-ca"),
        is_ca: false,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.apiserver",
            cert: Some("tls_locally_signed_cert.apiserver"),
            files: &["local_file.apiserver-key", "local_file.apiserver-crt"],
        },
        aggregation: false,
    },
    Credential {
        name: "admin",
        storage: files("tls/admin.crt", "tls/admin.key"),
        issuer: Some("kube-ca"),
        is_ca: false,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.admin",
            cert: Some("tls_locally_signed_cert.admin"),
            files: &["local_file.admin-key", "local_file.admin-crt"],
        },
        aggregation: false,
    },
    Credential {
        name: "kubelet",
        storage: files("tls/kubelet.crt", "tls/kubelet.key"),
        issuer: Some("kube-ca"),
        is_ca: false,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.kubelet",
            cert: Some("tls_locally_signed_cert.kubelet"),
            files: &["local_file.kubelet-key", "local_file.kubelet-crt"],
        },
        aggregation: false,
    },
    Credential {
        name: "admission-webhook",
        storage: Storage::WebhookValues,
        issuer: Some("kube-ca"),
        is_ca: false,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.admission-webhook-server",
            cert: Some("tls_locally_signed_cert.admission-webhook-server"),
            files: &["local_file.lokomotive"],
        },
        aggregation: false,
    },
    Credential {
        name: "service-account",
        storage: Storage::KeyPair {
            private: "tls/service-account.key",
            public: "tls/service-account.pub",
        },
        issuer: None,
        is_ca: false,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.service-account",
            cert: None,
            files: &["local_file.service-account-key", "local_file.service-account-crt"],
        },
        aggregation: false,
    },
    Credential {
        name: "etcd-ca",
        storage: files("tls/etcd-ca.crt", "tls/etcd-ca.key"),
        issuer: None,
        is_ca: true,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.etcd-ca",
            cert: Some("tls_self_signed_cert.etcd-ca"),
            files: &["local_file.etcd_ca_key", "local_file.etcd_ca_crt"],
        },
        aggregation: false,
    },
    etcd_ca_copy("etcd-client-ca", "tls/etcd-client-ca.crt", &["local_file.etcd_client_ca_crt"]),
    etcd_ca_copy("etcd-server-ca", "tls/etcd/server-ca.crt", &["local_file.etcd_server_ca_crt"]),
    etcd_ca_copy("etcd-peer-ca", "tls/etcd/peer-ca.crt", &["local_file.etcd_peer_ca_crt"]),
    Credential {
        name: "etcd-client",
        storage: files("tls/etcd-client.crt", "tls/etcd-client.key"),
        issuer: Some("etcd-ca"),
        is_ca: false,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.client",
            cert: Some("tls_locally_signed_cert.client"),
            files: &["local_file.etcd_client_key", "local_file.etcd_client_crt"],
        },
        aggregation: false,
    },
    Credential {
        name: "etcd-server",
        storage: files("tls/etcd/server.crt", "tls/etcd/server.key"),
        issuer: Some("etcd-ca"),
        is_ca: false,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.server",
            cert: Some("tls_locally_signed_cert.server"),
            files: &["local_file.etcd_server_key", "local_file.etcd_server_crt"],
        },
        aggregation: false,
    },
    Credential {
        name: "etcd-peer",
        storage: files("tls/etcd/peer.crt", "tls/etcd/peer.key"),
        issuer: Some("etcd-ca"),
        is_ca: false,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.peer",
            cert: Some("tls_locally_signed_cert.peer"),
            files: &["local_file.etcd_peer_key", "local_file.etcd_peer_crt"],
        },
        aggregation: false,
    },
    Credential {
        name: "aggregation-ca",
        storage: files("tls/aggregation-ca.crt", "tls/aggregation-ca.key"),
        issuer: None,
        is_ca: true,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.aggregation-ca[0]",
            cert: Some("tls_self_signed_cert.aggregation-ca[0]"),
            files: &["local_file.aggregation-ca-key[0]", "local_file.aggregation-ca-crt[0]"],
        },
        aggregation: true,
    },
    Credential {
        name: "aggregation-client",
        storage: files("tls/aggregation-client.crt", "tls/aggregation-client.key"),
        issuer: Some("aggregation-ca"),
        is_ca: false,
        copy_of: None,
        terraform: TerraformResources {
            key: "tls_private_key.aggregation-client[0]",
            cert: Some("tls_locally_signed_cert.aggregation-client[0]"),
            files: &[
                "local_file.aggregation-client-key[0]",
                "local_file.aggregation-client-crt[0]",
            ],
        },
        aggregation: true,
    },
];

const fn etcd_ca_copy(
    name: &'static str,
    cert: &'static str,
    local_files: &'static [&'static str],
) -> Credential {
    Credential {
        name,
        storage: Storage::Files { cert, key: None },
        issuer: None,
        is_ca: true,
        copy_of: Some("etcd-ca"),
        terraform: TerraformResources {
            key: "tls_private_key.etcd-ca",
            cert: Some("tls_self_signed_cert.etcd-ca"),
            files: local_files,
        },
        aggregation: false,
    }
}

/// Looks a credential up by its stable name.
pub fn credential(name: &str) -> Option<&'static Credential> {
    CREDENTIALS.iter().find(|c| c.name == name)
}

/// Relative paths inside `cluster-assets/`.
pub const KUBECONFIG: &str = "auth/kubeconfig";
pub const LOKOMOTIVE_VALUES: &str = "charts/lokomotive-system/lokomotive.yaml";

/// A validated Lokomotive asset dir.
#[derive(Debug, Clone)]
pub struct AssetDir {
    root: PathBuf,
}

impl AssetDir {
    /// Opens `path` after checking that it looks like an asset dir (it has `cluster-assets/`).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::AssetDirMissing { path: path.to_path_buf() });
        }
        if !path.join("cluster-assets").is_dir() {
            return Err(Error::NotAnAssetDir {
                path: path.to_path_buf(),
                missing: "cluster-assets/ folder",
            });
        }
        let root = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cluster_assets(&self) -> PathBuf {
        self.root.join("cluster-assets")
    }

    /// A path inside `cluster-assets/`.
    pub fn asset(&self, relative: &str) -> PathBuf {
        self.cluster_assets().join(relative)
    }

    /// Whether the certificate in file `relative` has expired (a run's path is picked by it).
    pub fn cert_has_expired(&self, relative: &str) -> Result<bool> {
        let path = self.asset(relative);
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::Unreadable { path: path.clone(), source: e })?;
        let cert = crate::pki::parse_one_cert(&bytes)
            .map_err(|p| Error::BadInputFile { path, reason: p.0 })?;
        Ok(cert.not_after <= jiff::Timestamp::now().as_second())
    }

    /// The admin kubeconfig Lokomotive writes, when it exists.
    pub fn kubeconfig(&self) -> Option<PathBuf> {
        Some(self.asset(KUBECONFIG)).filter(|p| p.is_file())
    }

    /// Aggregation is enabled unless none of its files exist (`enable_aggregation = false`
    /// leaves them out entirely).
    pub fn aggregation_enabled(&self) -> bool {
        CREDENTIALS.iter().filter(|c| c.aggregation).any(|c| match c.storage {
            Storage::Files { cert, key } => {
                self.asset(cert).exists() || key.is_some_and(|k| self.asset(k).exists())
            }
            _ => false,
        })
    }
}

/// `--assets-dir` values, globs expanded; `$ASSET_DIR` or the current folder when none given.
/// The one asset dir a command that changes a cluster works on (`command` names it in the
/// error when several are given).
pub fn single_asset_dir(given: &[String], command: &str) -> Result<PathBuf> {
    let mut dirs = resolve_asset_dirs(given)?;
    if dirs.len() != 1 {
        return Err(Error::Usage(format!("{command} works on one asset dir at a time")));
    }
    Ok(dirs.remove(0))
}

pub fn resolve_asset_dirs(given: &[String]) -> Result<Vec<PathBuf>> {
    if given.is_empty() {
        let dir = std::env::var_os("ASSET_DIR").map(PathBuf::from).unwrap_or_else(|| ".".into());
        return Ok(vec![dir]);
    }
    let mut dirs = Vec::new();
    for pattern in given {
        if !pattern.contains(['*', '?', '[']) {
            dirs.push(PathBuf::from(pattern));
            continue;
        }
        let paths = glob::glob(pattern)
            .map_err(|e| Error::BadGlob { pattern: pattern.clone(), source: e })?;
        let mut matched: Vec<PathBuf> =
            paths.filter_map(std::result::Result::ok).filter(|p| p.is_dir()).collect();
        if matched.is_empty() {
            return Err(Error::NoAssetDirMatches { pattern: pattern.clone() });
        }
        matched.sort();
        dirs.extend(matched);
    }
    Ok(dirs)
}

#[derive(serde::Deserialize)]
struct LokomotiveValues {
    webhook: Option<WebhookValues>,
}

/// Each value with where it stands, so that a broken one is named by line and column.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebhookValues {
    serving_cert: Option<Spanned<String>>,
    serving_key: Option<Spanned<String>>,
}

/// Decodes `webhook.servingCert` and `webhook.servingKey` (base64 PEM) from the text of
/// `lokomotive.yaml`; the error says which value is missing or broken, and where, but never
/// quotes the file: it holds the webhook's private key.
pub fn parse_webhook_values(yaml: &str) -> std::result::Result<(Vec<u8>, Vec<u8>), String> {
    use base64::Engine as _;
    let values: LokomotiveValues =
        serde_saphyr::from_str(yaml).map_err(|e| secret_text::yaml_error(&e))?;
    let webhook = values.webhook.ok_or("has no webhook: section")?;
    let decode = |name: &str, value: Option<Spanned<String>>| {
        let value = value.filter(|v| !v.value.trim().is_empty());
        let value = value.ok_or_else(|| format!("has no webhook.{name} value"))?;
        base64::engine::general_purpose::STANDARD.decode(value.value.trim()).map_err(|e| {
            format!(
                "webhook.{name} at {} is not valid base64: {}",
                secret_text::position(&value.referenced),
                secret_text::base64_error(&e)
            )
        })
    };
    let cert = decode("servingCert", webhook.serving_cert)?;
    let key = decode("servingKey", webhook.serving_key)?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_values_name_what_is_missing() {
        assert_eq!(parse_webhook_values("other: 1\n").unwrap_err(), "has no webhook: section");
        let err = parse_webhook_values("webhook:\n  servingKey: aGk=\n").unwrap_err();
        assert_eq!(err, "has no webhook.servingCert value");
        let err = parse_webhook_values("webhook:\n  servingCert: '!!'\n  servingKey: aGk=\n");
        assert!(err.unwrap_err().contains("not valid base64"));
        let ok = parse_webhook_values("webhook:\n  servingCert: aGk=\n  servingKey: aGk=\n");
        assert_eq!(ok.unwrap(), (b"hi".to_vec(), b"hi".to_vec()));
    }

    #[test]
    fn every_issuer_is_a_known_ca() {
        for c in CREDENTIALS {
            if let Some(issuer) = c.issuer {
                let ca = credential(issuer).expect(issuer);
                assert!(ca.is_ca && ca.copy_of.is_none(), "{} -> {issuer}", c.name);
            }
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = CREDENTIALS.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CREDENTIALS.len());
    }

    #[test]
    fn aggregation_addresses_are_counted() {
        for c in CREDENTIALS.iter().filter(|c| c.aggregation) {
            assert!(c.terraform.key.ends_with("[0]"));
            assert!(c.terraform.files.iter().all(|f| f.ends_with("[0]")));
        }
    }
}
