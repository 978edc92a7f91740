//! The reads `status` makes: every certificate-bearing object and the APIServices.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, ListParams};

use super::connection::Connection;
use super::discovery::available_condition;
use crate::error::Result;

pub const AUTH_CONFIGMAP: &str = "configmap/kube-system/extension-apiserver-authentication";
pub const APISERVER_SECRET: &str = "secret/kube-system/kube-apiserver";
pub const WEBHOOK_SECRET: &str = "secret/lokomotive-system/admission-webhook-server";
pub const WEBHOOK_CONFIG: &str = "mutatingwebhookconfiguration/admission-webhook-server";

/// An APIService backed by a Service, and its `Available` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServiceState {
    pub name: String,
    /// `namespace/name` of the backing Service.
    pub service: String,
    /// The condition's status (`True`, `False`), `Unknown` when it has none.
    pub available: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// The certificate-bearing objects and APIServices `status` reports, read in one go.
pub struct ClusterSnapshot {
    values: BTreeMap<(String, String), std::result::Result<Vec<u8>, String>>,
    pub api_services: Vec<ApiServiceState>,
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
            let condition = available_condition(&svc);
            Some(ApiServiceState {
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
