//! Single-object operations the rotation steps need: delete a ConfigMap or a
//! MutatingWebhookConfiguration, read the certificates a Secret holds.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams};

use crate::error::{Error, Result};
use crate::pki::{self, CertInfo};

/// Whether a delete removed something or found nothing to remove (both leave the object gone,
/// which is what a re-run needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Removed,
    WasAbsent,
}

async fn delete<K>(api: Api<K>, name: &str, what: &str) -> Result<Deleted>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(Deleted::Removed),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Deleted::WasAbsent),
        Err(e) => Err(Error::kube(format!("delete {what}"), e)),
    }
}

/// Deletes ConfigMap `namespace/name`.
pub async fn delete_configmap(client: &Client, namespace: &str, name: &str) -> Result<Deleted> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    delete(api, name, &format!("configmap {namespace}/{name}")).await
}

/// Deletes the cluster-scoped MutatingWebhookConfiguration `name`.
pub async fn delete_mutating_webhook(client: &Client, name: &str) -> Result<Deleted> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    delete(api, name, &format!("mutatingwebhookconfiguration {name}")).await
}

/// The certificates (a bundle gives several) under `key` of Secret `namespace/name`.
pub async fn secret_certificates(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Vec<CertInfo>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("secret {namespace}/{name}");
    let secret = api.get(name).await.map_err(|e| Error::kube(format!("read {what}"), e))?;
    let pem = secret.data.as_ref().and_then(|d| d.get(key)).ok_or_else(|| {
        Error::ClusterObject { object: what.clone(), reason: format!("has no {key}") }
    })?;
    pki::parse_certs(&pem.0)
        .map_err(|p| Error::ClusterObject { object: what, reason: format!("{key}: {}", p.0) })
}

/// The certificates under `key` of ConfigMap `namespace/name`; `None` while it does not exist
/// (kube-apiserver recreates `extension-apiserver-authentication` when it starts).
pub async fn configmap_certificates(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<Vec<CertInfo>>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let what = format!("configmap {namespace}/{name}");
    let Some(map) = api.get_opt(name).await.map_err(|e| Error::kube(format!("read {what}"), e))?
    else {
        return Ok(None);
    };
    let pem = map.data.as_ref().and_then(|d| d.get(key)).ok_or_else(|| Error::ClusterObject {
        object: what.clone(),
        reason: format!("has no {key}"),
    })?;
    pki::parse_certs(pem.as_bytes())
        .map(Some)
        .map_err(|p| Error::ClusterObject { object: what, reason: format!("{key}: {}", p.0) })
}
