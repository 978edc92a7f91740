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

/// When ConfigMap `namespace/name` was created; `None` when it does not exist.
pub async fn configmap_created(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<jiff::Timestamp>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let map = api
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("read configmap {namespace}/{name}"), e))?;
    Ok(map.and_then(|m| m.metadata.creation_timestamp).map(|t| t.0))
}

/// MutatingWebhookConfiguration `name` as a manifest that can be created again (server-set
/// fields dropped); `None` when it does not exist.
pub async fn mutating_webhook_manifest(
    client: &Client,
    name: &str,
) -> Result<Option<serde_json::Value>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = format!("read mutatingwebhookconfiguration {name}");
    let Some(config) = api.get_opt(name).await.map_err(|e| Error::kube(what, e))? else {
        return Ok(None);
    };
    let mut manifest = serde_json::to_value(&config).expect("an object serializes");
    manifest["apiVersion"] = "admissionregistration.k8s.io/v1".into();
    manifest["kind"] = "MutatingWebhookConfiguration".into();
    if let Some(meta) = manifest["metadata"].as_object_mut() {
        for server_set in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "selfLink",
        ] {
            meta.remove(server_set);
        }
    }
    Ok(Some(manifest))
}

/// Creates a MutatingWebhookConfiguration from a manifest unless one of that name exists.
pub async fn restore_mutating_webhook(
    client: &Client,
    manifest: &serde_json::Value,
) -> Result<bool> {
    let config: MutatingWebhookConfiguration =
        serde_json::from_value(manifest.clone()).map_err(|e| Error::ClusterObject {
            object: "the kept mutatingwebhookconfiguration manifest".into(),
            reason: format!("is not one ({e})"),
        })?;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match api.create(&kube::api::PostParams::default(), &config).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(Error::kube("create mutatingwebhookconfiguration", e)),
    }
}

/// The `caBundle` of each webhook of MutatingWebhookConfiguration `name` (decoded PEM).
pub async fn mutating_webhook_ca_bundles(
    client: &Client,
    name: &str,
) -> Result<Option<Vec<Vec<u8>>>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = format!("read mutatingwebhookconfiguration {name}");
    let config = api.get_opt(name).await.map_err(|e| Error::kube(what, e))?;
    Ok(config.map(|c| {
        c.webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| w.client_config.ca_bundle.map(|b| b.0).unwrap_or_default())
            .collect()
    }))
}

const CHECK_PREFIX: &str = "certrotate-webhook-check-";
const CHECK_LABEL: &str = "app.kubernetes.io/managed-by=kubectl-certrotate";

/// A real admission call: a throw-away namespace whose `default` ServiceAccount the
/// controller manager creates, which Lokomotive's webhook mutates (no token automount).
/// Returns whether it was mutated; the namespace is deleted again either way.
pub async fn default_service_account_mutated(
    client: &Client,
    timeout: std::time::Duration,
) -> Result<bool> {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // A check that was killed left its namespace: remove it now (deleting one already being
    // deleted is harmless).
    let ours = kube::api::ListParams::default().labels(CHECK_LABEL);
    let left = namespaces
        .list_metadata(&ours)
        .await
        .map_err(|e| Error::kube("list the namespaces of earlier webhook checks", e))?;
    for namespace in left.items.iter().map(kube::ResourceExt::name_any) {
        if namespace.starts_with(CHECK_PREFIX) {
            let _ = namespaces.delete(&namespace, &DeleteParams::default()).await;
        }
    }
    let probe: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": CHECK_PREFIX, "labels": {"app.kubernetes.io/managed-by": "kubectl-certrotate"}}
    }))
    .expect("a namespace");
    let created = namespaces
        .create(&kube::api::PostParams::default(), &probe)
        .await
        .map_err(|e| Error::kube("create a namespace to check the webhook", e))?;
    let name = kube::ResourceExt::name_any(&created);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    let seen = crate::duration::poll(timeout, std::time::Duration::from_millis(300), async || {
        match accounts.get_opt("default").await {
            Ok(Some(account)) => Ok(Ok(account.automount_service_account_token == Some(false))),
            Ok(None) => Err(format!("serviceaccount default not yet created in namespace {name}")),
            Err(e) => Ok(Err(Error::kube(format!("read serviceaccount {name}/default"), e))),
        }
    })
    .await;
    let _ = namespaces.delete(&name, &DeleteParams::default()).await;
    match seen {
        Ok(result) => result,
        Err(last) => Err(Error::KubeTimeout { action: last, secs: timeout.as_secs() }),
    }
}

/// The raw bytes under `key` of Secret `namespace/name`.
pub async fn secret_bytes(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("secret {namespace}/{name}");
    let secret = api.get(name).await.map_err(|e| Error::kube(format!("read {what}"), e))?;
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|b| b.0)
        .ok_or_else(|| Error::ClusterObject { object: what, reason: format!("has no {key}") })
}
