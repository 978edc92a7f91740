//! The renewal an operator types by hand, the way lokoctl's `cluster certificate rotate`
//! does it (lokomotive-pki.md §1.10 and §4.4), one command after the other: what `renew` is
//! measured against (benches/renew.rs). One function, so the typed steps are written once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use certrotate::renew::phases::restart::lokoctl_list;
use certrotate::renew::phases::taint::LOKOCTL_TAINTS;
use serde_json::Value;

use super::env::{ExtApiServer, Helm, TestEnv};
use super::wait::wait_for;

/// The cluster `renew` is run on: the control-plane charts lokoctl installs (kube-apiserver,
/// kubernetes, kubelet, lokomotive; helm 3) and metrics-server as an extension API server,
/// Available. Returns metrics-server.
pub fn install_control_plane(env: &TestEnv) -> ExtApiServer {
    env.step("the control-plane charts (kube-apiserver, kubernetes, kubelet, lokomotive) and metrics-server");
    env.install_kube_apiserver_chart(Helm::V3);
    env.install_kubernetes_chart(Helm::V3);
    env.install_kubelet_chart(Helm::V3);
    env.install_lokomotive_chart();
    let metrics = ExtApiServer::metrics_server();
    env.deploy_ext_apiserver(&metrics);
    env.wait_apiservice(&metrics.apiservice(), true, Duration::from_secs(120));
    metrics
}

/// One group of typed commands and how long it took.
pub struct Timed {
    /// Named as the `renew` phase that does the same work.
    pub group: &'static str,
    pub started: Instant,
    pub seconds: f64,
}

/// The ServiceAccount token Secrets (`namespace/name`) whose `ca.crt` is not `ca` (PEM), as
/// the admin kubeconfig sees them.
pub fn tokens_without(env: &TestEnv, ca: &[u8]) -> Result<Vec<String>, String> {
    let out = env
        .kubectl()
        .args(["get", "secrets", "-A", "--field-selector=type=kubernetes.io/service-account-token"])
        .arg("-o=json")
        .run();
    if !out.success() {
        return Err(out.to_string());
    }
    let list: Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
    let want = base64::engine::general_purpose::STANDARD.encode(ca);
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["data"]["ca.crt"].as_str() != Some(want.as_str()))
        .map(|s| {
            let meta = &s["metadata"];
            format!(
                "{}/{}",
                meta["namespace"].as_str().unwrap_or(""),
                meta["name"].as_str().unwrap_or("")
            )
        })
        .collect())
}

/// The workloads of lokoctl's restart list (one controller: the control plane as
/// Deployments) that the cluster runs, in lokoctl's order (kube-apiserver first), then the
/// extension API servers: `(namespace, kind/name)` as `kubectl rollout` takes them. The
/// operator knows their cluster, so this is looked up before anything is timed.
fn restart_list(env: &TestEnv, extension_servers: &[ExtApiServer]) -> Vec<(String, String)> {
    let out = env.kubectl().args(["get", "deployments,daemonsets", "-A", "-o=json"]).ok();
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    let running: BTreeSet<(String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let kind = w["kind"].as_str().unwrap_or("").to_lowercase();
            let meta = &w["metadata"];
            let name = meta["name"].as_str().unwrap_or("");
            (meta["namespace"].as_str().unwrap_or("").to_string(), format!("{kind}/{name}"))
        })
        .collect();
    lokoctl_list(1)
        .into_iter()
        .map(|w| (w.namespace, format!("{}/{}", w.kind.resource(), w.name)))
        .filter(|workload| running.contains(workload))
        .chain(
            extension_servers
                .iter()
                .map(|s| (s.namespace.clone(), format!("deployment/{}", s.name))),
        )
        .collect()
}

/// The renewal typed by hand: lokoctl's 19 `terraform taint`, `terraform apply
/// -parallelism=1` (on Lokomotive v0.8+ its `copy-controller-secrets` pushes the new etcd
/// certificates and restarts etcd), `lokoctl cluster apply --confirm
/// --skip-pre-update-health-check --upgrade-kubelets`, a `kubectl get secrets` until every
/// token holds the new CA, then `kubectl rollout restart` + `kubectl rollout status` of each
/// workload of lokoctl's restart list the cluster runs and of `extension_servers`, one by
/// one. Every command must succeed. Returns each group's seconds.
pub fn by_hand(env: &TestEnv, extension_servers: &[ExtApiServer]) -> Vec<Timed> {
    let restarts = restart_list(env, extension_servers);
    let module = env.assets.bootkube_module();
    let mut timed = Vec::new();
    let mut group = |group: &'static str, what: &str, run: &mut dyn FnMut()| {
        env.step(&format!("typed: {what}"));
        let started = Instant::now();
        run();
        timed.push(Timed { group, started, seconds: started.elapsed().as_secs_f64() });
    };
    group("taint", "lokoctl's 19 terraform taint", &mut || {
        for resource in LOKOCTL_TAINTS {
            env.terraform().args(["taint", &format!("{module}.{resource}")]).ok();
        }
    });
    group("certificates", "terraform apply -parallelism=1", &mut || {
        env.terraform()
            .args(["apply", "-auto-approve", "-input=false", "-no-color", "-parallelism=1"])
            .ok();
    });
    group("control-plane", "lokoctl cluster apply --upgrade-kubelets", &mut || {
        env.lokoctl()
            .args([
                "cluster",
                "apply",
                "--confirm",
                "--skip-pre-update-health-check",
                "--upgrade-kubelets",
            ])
            .ok();
    });
    let new_ca = std::fs::read(env.assets.tls("ca.crt")).unwrap();
    group("tokens", "kubectl get secrets until every token holds the new CA", &mut || {
        wait_for("every token Secret's ca.crt to be the new CA", Duration::from_secs(120), || {
            match tokens_without(env, &new_ca)? {
                left if left.is_empty() => Ok(()),
                left => Err(format!("still another CA: {left:?}")),
            }
        });
    });
    let names: Vec<String> = restarts.iter().map(|(ns, w)| format!("{w} -n {ns}")).collect();
    group("restart", &format!("one by one: {}", names.join(", ")), &mut || {
        for (namespace, workload) in &restarts {
            env.rollout_restart(namespace, workload);
        }
    });
    timed
}
