//! What the cluster's own mechanisms do for the nodes, by Lokomotive version
//! (lokomotive-pki.md §2, §3.3): v0.8 and v0.9 push new etcd certificates to the controllers
//! (`null_resource.copy-controller-secrets`, triggered by the etcd CA, server and peer
//! certificates, restarts etcd on them) and re-sync the nodes' CA copies (the kubelet chart's
//! `kubernetesCACert`, written into the nodes' kubeconfigs by its `ca-syncer`); v0.5 to v0.7
//! do neither, and their nodes break on day 365 unless the operator does it by hand.
//!
//! Decided from the real state (the triggers terraform recorded) and the rendered kubelet
//! values, before anything changes: `renew` refuses a cluster that lacks either, with the
//! exact steps, unless `--nodes-updated-by-hand` says the operator takes them.

use crate::tools::terraform::State;

/// The Terraform resource that copies the etcd certificates to each controller.
pub const COPY_RESOURCE: &str = "null_resource.copy-controller-secrets";
/// The triggers of v0.8+ (any one of them shows the kind).
pub const ETCD_TRIGGERS: [&str; 3] = ["etcd_ca_cert", "etcd_server_cert", "etcd_peer_cert"];
/// The rendered kubelet values; v0.8+ set `kubernetesCACert`.
pub const KUBELET_VALUES: &str = "charts/kube-system/kubelet.yaml";

/// What the cluster's own mechanisms do not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// New etcd certificates do not reach the controllers (and etcd is not restarted).
    EtcdPush,
    /// The nodes' kubeconfigs keep the old kube CA certificate.
    NodeCa,
}

/// What the asset dir shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The trigger names of each `copy-controller-secrets` instance of the state.
    pub copy_triggers: Vec<Vec<String>>,
    /// Whether the rendered kubelet values set a non-empty `kubernetesCACert`; `None` when
    /// there are none (no self-hosted kubelet).
    pub kubelet_ca_value: Option<bool>,
}

impl Evidence {
    /// Reads the state's triggers and the kubelet values text (`None`: no file).
    pub fn read(state: &State, kubelet_values: Option<&str>) -> Self {
        let copy_triggers = state
            .instances_of(COPY_RESOURCE)
            .map(|i| {
                i.attributes
                    .get("triggers")
                    .and_then(|t| t.as_object())
                    .map(|t| t.keys().cloned().collect())
                    .unwrap_or_default()
            })
            .collect();
        let kubelet_ca_value = kubelet_values.map(|text| {
            let values: Option<serde_json::Value> = serde_saphyr::from_str(text).ok();
            values
                .and_then(|v| {
                    v.get("kubernetesCACert").and_then(|c| c.as_str()).map(str::to_string)
                })
                .is_some_and(|c| !c.trim().is_empty())
        });
        Self { copy_triggers, kubelet_ca_value }
    }

    /// What the cluster does not do by itself.
    pub fn missing(&self) -> Vec<Missing> {
        let mut missing = Vec::new();
        let pushes = !self.copy_triggers.is_empty()
            && self
                .copy_triggers
                .iter()
                .all(|t| ETCD_TRIGGERS.iter().all(|e| t.iter().any(|k| k == e)));
        if !pushes {
            missing.push(Missing::EtcdPush);
        }
        if self.kubelet_ca_value != Some(true) {
            missing.push(Missing::NodeCa);
        }
        missing
    }

    /// How the evidence reads, for messages.
    pub fn described(&self) -> String {
        let copy = if self.copy_triggers.is_empty() {
            format!("the state has no {COPY_RESOURCE}")
        } else {
            let mut keys: Vec<&str> =
                self.copy_triggers.iter().flatten().map(String::as_str).collect();
            keys.sort_unstable();
            keys.dedup();
            format!("{COPY_RESOURCE} is triggered by {}", keys.join(", "))
        };
        let kubelet = match self.kubelet_ca_value {
            None => format!("there is no {KUBELET_VALUES} (no self-hosted kubelet)"),
            Some(false) => format!("{KUBELET_VALUES} sets no kubernetesCACert"),
            Some(true) => format!("{KUBELET_VALUES} sets kubernetesCACert"),
        };
        format!("{copy}; {kubelet}")
    }
}

/// The exact steps the operator takes for what is `missing`, numbered.
pub fn steps(missing: &[Missing]) -> String {
    let mut steps = Vec::new();
    if missing.contains(&Missing::EtcdPush) {
        steps.push(
            "after renew's certificates phase, on each controller in turn: copy the asset dir's \
             cluster-assets/tls/etcd-client-ca.crt, etcd-client.crt and etcd-client.key to \
             /etc/ssl/etcd/, and tls/etcd/server-ca.crt, server.crt, server.key, peer-ca.crt, \
             peer.crt and peer.key to /etc/ssl/etcd/etcd/ (owner etcd:etcd, mode 0500, as \
             Lokomotive installs them); `sudo systemctl restart etcd`; wait until `etcdctl \
             endpoint health` answers healthy before the next controller",
        );
    }
    if missing.contains(&Missing::NodeCa) {
        steps.push(
            "on every node: set certificate-authority-data in /etc/kubernetes/kubeconfig and \
             /var/lib/kubelet/kubeconfig to the base64 of the new cluster-assets/tls/ca.crt, \
             then `sudo systemctl restart kubelet` (its ExecStartPre rebuilds \
             /etc/kubernetes/ca.crt from it)",
        );
    }
    steps.iter().enumerate().map(|(i, s)| format!("({}) {s}", i + 1)).collect::<Vec<_>>().join("; ")
}

/// The refusal for `evidence`, `None` when the cluster does everything itself.
pub fn refusal(evidence: &Evidence) -> Option<String> {
    let missing = evidence.missing();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "this cluster's own mechanisms do not renew what its nodes hold, as Lokomotive v0.5-v0.7 \
         ({}): without the steps below its etcd members and nodes break when the old \
         certificates expire. Nothing was changed. Take these steps yourself: {}; then run renew \
         with --nodes-updated-by-hand (its etcd phase waits, within --timeout, for every etcd \
         member to serve the new certificates; if it runs out, finish the steps and run the same \
         command again)",
        evidence.described(),
        steps(&missing)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(triggers: &[&[&str]]) -> State {
        let instances: Vec<serde_json::Value> = triggers
            .iter()
            .enumerate()
            .map(|(i, keys)| {
                let t: serde_json::Map<String, serde_json::Value> =
                    keys.iter().map(|k| (k.to_string(), "x".into())).collect();
                serde_json::json!({"index_key": i, "attributes": {"id": "1", "triggers": t}})
            })
            .collect();
        let json = serde_json::json!({"serial": 1, "resources": [{
            "module": "module.aws-c", "mode": "managed", "type": "null_resource",
            "name": "copy-controller-secrets", "instances": instances
        }]});
        State::parse(&json.to_string()).unwrap()
    }

    const V08: &[&str] = &["controller_id", "etcd_ca_cert", "etcd_server_cert", "etcd_peer_cert"];
    const V07: &[&str] = &["controller_id"];
    const KUBELET_08: &str = "clusterDNS: 10.3.0.10\nkubernetesCACert: TFMwdExTMUNSVWRK\n";
    const KUBELET_07: &str = "clusterDNS: 10.3.0.10\nenableTLSBootstrap: false\n";

    #[test]
    fn versions_are_told_by_the_triggers_and_the_kubelet_values() {
        let judge = |triggers: &[&[&str]], kubelet: Option<&str>| {
            Evidence::read(&state(triggers), kubelet).missing()
        };
        assert_eq!(judge(&[V08, V08, V08], Some(KUBELET_08)), []);
        assert_eq!(judge(&[V07], Some(KUBELET_07)), [Missing::EtcdPush, Missing::NodeCa]);
        assert_eq!(judge(&[V08], Some(KUBELET_07)), [Missing::NodeCa]);
        assert_eq!(judge(&[V08, V07], Some(KUBELET_08)), [Missing::EtcdPush], "one controller");
        assert_eq!(judge(&[], Some(KUBELET_08)), [Missing::EtcdPush], "no copy at all");
        assert_eq!(judge(&[V08], None), [Missing::NodeCa], "no self-hosted kubelet");
        let empty = "kubernetesCACert: \"\"\n";
        assert_eq!(judge(&[V08], Some(empty)), [Missing::NodeCa]);
    }

    #[test]
    fn the_refusal_names_the_evidence_and_the_exact_steps() {
        assert_eq!(refusal(&Evidence::read(&state(&[V08]), Some(KUBELET_08))), None);
        let said = refusal(&Evidence::read(&state(&[V07]), Some(KUBELET_07))).unwrap();
        for needed in [
            "Nothing was changed",
            "null_resource.copy-controller-secrets is triggered by controller_id",
            "sets no kubernetesCACert",
            "(1) after renew's certificates phase",
            "/etc/ssl/etcd/etcd/",
            "systemctl restart etcd",
            "(2) on every node",
            "systemctl restart kubelet",
            "--nodes-updated-by-hand",
        ] {
            assert!(said.contains(needed), "{needed:?} not in {said}");
        }
        let only_ca = refusal(&Evidence::read(&state(&[V08]), None)).unwrap();
        assert!(
            only_ca.contains("(1) on every node") && !only_ca.contains("systemctl restart etcd")
        );
    }
}
