//! Helpers of `tests/renew.rs` (and of `tests/renew_faults.rs` and the renew campaign of
//! `tests/fault_campaign.rs`): running the built plugin's `renew` command on a [`TestEnv`],
//! reading its run folders and the Terraform state, and the checks of everything a finished
//! renewal promises, however it got there (one run, or re-runs after kills).
//!
//! Everything here acts on one test's environment and its temp dir only.

// Each test crate uses only part of these.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use crate::common::leaks::Needles;
use crate::support::{Cmd, ExtApiServer, Helm, Output, TestEnv};

/// The certificates renewed, as `cluster-assets/tls/` names them, with their CA's file
/// (`None` for a CA). The webhook's certificate is inside `lokomotive.yaml`.
pub const CERTIFICATES: [(&str, Option<&str>); 11] = [
    ("ca.crt", None),
    ("apiserver.crt", Some("ca.crt")),
    ("admin.crt", Some("ca.crt")),
    ("kubelet.crt", Some("ca.crt")),
    ("etcd-ca.crt", None),
    ("etcd-client.crt", Some("etcd-ca.crt")),
    ("etcd/server.crt", Some("etcd-ca.crt")),
    ("etcd/peer.crt", Some("etcd-ca.crt")),
    ("aggregation-ca.crt", None),
    ("aggregation-client.crt", Some("aggregation-ca.crt")),
    ("webhook", Some("ca.crt")),
];

/// Keys never re-created: the CA keys and the service-account key pair.
pub const KEPT_KEYS: [&str; 5] =
    ["ca.key", "etcd-ca.key", "aggregation-ca.key", "service-account.key", "service-account.pub"];

/// The phases of a renewal, in order.
pub const PHASES: [&str; 8] =
    ["backup", "taint", "certificates", "etcd", "control-plane", "tokens", "restart", "verify"];

pub fn renew(env: &TestEnv) -> Cmd {
    env.certrotate().arg("renew").timeout(Duration::from_secs(300))
}

/// `renew` with the etcd member as this machine reaches it.
pub fn renew_reaching_etcd(env: &TestEnv) -> Cmd {
    renew(env).args(env.renew_etcd_flags())
}

/// A cluster `renew` puts every certificate in use on: the control-plane charts
/// (kube-apiserver, kubernetes, kubelet, lokomotive) and metrics-server, Available.
pub fn renewal_cluster(name: &str) -> TestEnv {
    let env = TestEnv::start(name);
    crate::support::renewal::install_control_plane(&env);
    observing_kubectl(&env);
    env
}

/// The test's own `system:masters` user, whose kubeconfig `renew` never rewrites: between a
/// kill and the re-run, `auth/kubeconfig` may be missing (a terraform cut off mid-replace).
const OBSERVER: &str = "renew-observer";

/// kubectl as [`OBSERVER`], its kubeconfig made the first time (before any renewal: it
/// trusts the kube CA certificate of then, whose key the renewal keeps).
pub fn observing_kubectl(env: &TestEnv) -> Cmd {
    let made = env.dir().join("values").join(format!("{OBSERVER}-kubeconfig.yaml"));
    let path =
        if made.is_file() { made } else { env.user_kubeconfig(OBSERVER, &["system:masters"]) };
    env.kubectl().env("KUBECONFIG", path)
}

pub fn json(out: &Output) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

pub fn results(report: &Value) -> Vec<(String, String)> {
    report["phases"]
        .as_array()
        .unwrap_or_else(|| panic!("no phases: {report:#}"))
        .iter()
        .map(|p| (p["name"].as_str().unwrap().into(), p["result"].as_str().unwrap().into()))
        .collect()
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// The run folders of `renew`, oldest first.
pub fn run_dirs(env: &TestEnv) -> Vec<PathBuf> {
    crate::support::rotation::run_folders(env, "renew")
}

/// The one run folder of `renew`.
pub fn run_dir(env: &TestEnv) -> PathBuf {
    let runs = run_dirs(env);
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.into_iter().next().unwrap()
}

/// The latest run folder of `renew`.
pub fn latest_run(env: &TestEnv) -> PathBuf {
    run_dirs(env).pop().expect("a renew run folder")
}

/// `terraform state pull`, as JSON.
pub fn state(env: &TestEnv) -> Value {
    let out = env.terraform().args(["state", "pull"]).ok();
    serde_json::from_str(&out.stdout).unwrap()
}

/// Every managed instance of the state by address: (id, tainted, attributes).
pub fn instances(state: &Value) -> BTreeMap<String, (String, bool, Value)> {
    let mut found = BTreeMap::new();
    for r in state["resources"].as_array().unwrap() {
        if r["mode"] != "managed" {
            continue;
        }
        let base = format!(
            "{}.{}.{}",
            r["module"].as_str().unwrap_or(""),
            r["type"].as_str().unwrap(),
            r["name"].as_str().unwrap()
        );
        for i in r["instances"].as_array().unwrap() {
            let address = match i["index_key"].as_u64() {
                Some(n) => format!("{base}[{n}]"),
                None => base.clone(),
            };
            let id = i["attributes"]["id"].as_str().unwrap_or_default().to_string();
            found.insert(address, (id, i["status"] == "tainted", i["attributes"].clone()));
        }
    }
    found
}

/// The PEM of certificate `name` (a `CERTIFICATES` name) in the `cluster-assets/` at `base`.
pub fn cert_pem(base: &Path, name: &str) -> Vec<u8> {
    if name != "webhook" {
        return std::fs::read(base.join("tls").join(name)).unwrap();
    }
    let text =
        std::fs::read_to_string(base.join("charts/lokomotive-system/lokomotive.yaml")).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with("servingCert:")).unwrap();
    let value = line.split_once(':').unwrap().1.trim().trim_matches('"');
    BASE64.decode(value).unwrap()
}

/// The Terraform resource (in the bootkube module) of certificate `name`.
fn resource_of(name: &str) -> &'static str {
    match name {
        "ca.crt" => "tls_self_signed_cert.kube-ca",
        "etcd-ca.crt" => "tls_self_signed_cert.etcd-ca",
        "aggregation-ca.crt" => "tls_self_signed_cert.aggregation-ca[0]",
        "apiserver.crt" => "tls_locally_signed_cert.apiserver",
        "admin.crt" => "tls_locally_signed_cert.admin",
        "kubelet.crt" => "tls_locally_signed_cert.kubelet",
        "etcd-client.crt" => "tls_locally_signed_cert.client",
        "etcd/server.crt" => "tls_locally_signed_cert.server",
        "etcd/peer.crt" => "tls_locally_signed_cert.peer",
        "aggregation-client.crt" => "tls_locally_signed_cert.aggregation-client[0]",
        "webhook" => "tls_locally_signed_cert.admission-webhook-server",
        other => panic!("{other}"),
    }
}

/// `openssl verify -CAfile ca leaf`: whether the leaf verifies under the CA.
fn openssl_verifies(dir: &Path, ca: &[u8], leaf: &[u8]) -> Result<(), String> {
    let (ca_file, leaf_file) = (dir.join("ca.pem"), dir.join("leaf.pem"));
    std::fs::write(&ca_file, ca).unwrap();
    std::fs::write(&leaf_file, leaf).unwrap();
    let out = Cmd::new("openssl").arg("verify").arg("-CAfile").arg(&ca_file).arg(&leaf_file).run();
    if out.success() && out.stdout.contains(": OK") { Ok(()) } else { Err(out.to_string()) }
}

pub fn public_key(pem: &[u8]) -> Vec<u8> {
    openssl::x509::X509::from_pem(pem).unwrap().public_key().unwrap().public_key_to_der().unwrap()
}

/// Every private key of the asset dir (as it is now), as needles for the output checks.
pub fn add_keys(needles: &mut Needles, env: &TestEnv) {
    let tls = env.assets.cluster_assets().join("tls");
    for (path, bytes) in crate::common::snapshot_tree(&tls) {
        if String::from_utf8_lossy(&bytes).contains("PRIVATE KEY") {
            needles.add_key(&path.display().to_string(), &bytes);
        }
    }
}

/// Every certificate of the asset dir renewed as `renew` promises, against `kept` (the
/// `cluster-assets/` the run's backup kept): equal to the state's, new, chaining to its CA
/// (new under new, old under new, new under old: `openssl verify`), matching its key; each CA
/// certificate with its old public key; the etcd CA's copies the new etcd CA; the CA keys and
/// the service-account key pair unchanged.
pub fn check_certificates_renewed(env: &TestEnv, kept: &Path) {
    env.step("every certificate new, equal to the state's, chaining both ways; CA keys kept");
    let assets = env.assets.cluster_assets();
    let module = env.assets.bootkube_module();
    let renewed = instances(&state(env));
    let state_cert = |name: &str| -> Vec<u8> {
        let address = format!("{module}.{}", resource_of(name));
        renewed[&address].2["cert_pem"].as_str().unwrap().as_bytes().to_vec()
    };
    let scratch = env.dir().join("openssl");
    std::fs::create_dir_all(&scratch).unwrap();
    for (name, ca) in CERTIFICATES {
        let (new, old) = (cert_pem(&assets, name), cert_pem(kept, name));
        assert_eq!(new, state_cert(name), "{name}: the file is not the state's");
        assert_ne!(new, old, "{name}: not new");
        match ca {
            None => {
                assert_eq!(public_key(&new), public_key(&old), "{name}: the CA's key changed");
                openssl_verifies(&scratch, &new, &new).unwrap();
            }
            Some(ca) => {
                let (new_ca, old_ca) = (cert_pem(&assets, ca), cert_pem(kept, ca));
                for (what, ca, leaf) in [
                    ("new under new", &new_ca, &new),
                    ("old under new", &new_ca, &old),
                    ("new under old", &old_ca, &new),
                ] {
                    openssl_verifies(&scratch, ca, leaf)
                        .unwrap_or_else(|e| panic!("{name}: {what}: {e}"));
                }
            }
        }
    }
    for name in ["etcd-client-ca.crt", "etcd/server-ca.crt", "etcd/peer-ca.crt"] {
        assert_eq!(cert_pem(&assets, name), cert_pem(&assets, "etcd-ca.crt"), "{name}");
    }
    for (cert, key) in [
        ("apiserver.crt", "apiserver.key"),
        ("admin.crt", "admin.key"),
        ("kubelet.crt", "kubelet.key"),
        ("etcd-client.crt", "etcd-client.key"),
        ("etcd/server.crt", "etcd/server.key"),
        ("etcd/peer.crt", "etcd/peer.key"),
        ("aggregation-client.crt", "aggregation-client.key"),
        ("ca.crt", "ca.key"),
    ] {
        let key = std::fs::read(assets.join("tls").join(key)).unwrap();
        let key = openssl::pkey::PKey::private_key_from_pem(&key).unwrap();
        assert_eq!(
            public_key(&cert_pem(&assets, cert)),
            key.public_key_to_der().unwrap(),
            "{cert} does not match its key"
        );
    }
    for key in KEPT_KEYS {
        assert_eq!(
            std::fs::read(assets.join("tls").join(key)).unwrap(),
            std::fs::read(kept.join("tls").join(key)).unwrap(),
            "{key} changed"
        );
    }
}

/// The bytes under `key` of Secret `namespace/name`, read with kubectl.
pub fn secret_key(env: &TestEnv, namespace: &str, name: &str, key: &str) -> Vec<u8> {
    let out = env.kubectl().args(["-n", namespace, "get", "secret", name, "-o", "json"]).ok();
    let secret: Value = serde_json::from_str(&out.stdout).unwrap();
    let value = secret["data"][key].as_str().unwrap_or_else(|| panic!("{name} has no {key}"));
    BASE64.decode(value).unwrap()
}

/// The `kubectl.kubernetes.io/restartedAt` of `kind/name` in `namespace`, if any.
pub fn restarted_at(env: &TestEnv, namespace: &str, kind: &str, name: &str) -> Option<String> {
    let out = observing_kubectl(env).args(["-n", namespace, "get", kind, name, "-o", "json"]).ok();
    let object: Value = serde_json::from_str(&out.stdout).unwrap();
    object["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
        .as_str()
        .map(str::to_string)
}

/// The workloads of lokoctl's restart list a [`renewal_cluster`] runs, and metrics-server.
pub const RESTARTED: [(&str, &str, &str); 4] = [
    ("kube-system", "deployment", "kube-controller-manager"),
    ("kube-system", "daemonset", "kubelet"),
    ("lokomotive-system", "deployment", "admission-webhook-server"),
    ("kube-system", "deployment", "metrics-server"),
];

pub fn timestamp(text: &str) -> jiff::Timestamp {
    text.parse().unwrap_or_else(|e| panic!("{text:?} is not a timestamp: {e}"))
}

/// The new certificates in use on a [`renewal_cluster`]: every control-plane release
/// deployed (none left pending by a killed helm), every Secret and the kubelet release hold
/// the asset dir's, every ServiceAccount token the new kube CA, every workload
/// of [`RESTARTED`] restarted after `since` and rolled out, metrics-server's APIService
/// Available, and the new admin kubeconfig reaches the API.
pub fn check_in_use(env: &TestEnv, since: jiff::Timestamp) {
    let assets = env.assets.cluster_assets();
    env.step("every release and Secret holds the new certificates");
    for (namespace, secret, key, file) in [
        ("kube-system", "kube-apiserver", "apiserver.crt", "tls/apiserver.crt"),
        ("kube-system", "kube-apiserver", "ca.crt", "tls/ca.crt"),
        ("kube-system", "kube-apiserver", "etcd-client.crt", "tls/etcd-client.crt"),
        ("kube-system", "kube-apiserver", "aggregation-client.crt", "tls/aggregation-client.crt"),
        ("kube-system", "kube-controller-manager", "ca.crt", "tls/ca.crt"),
    ] {
        assert_eq!(
            secret_key(env, namespace, secret, key),
            std::fs::read(assets.join(file)).unwrap(),
            "secret {namespace}/{secret} {key} is not the new {file}"
        );
    }
    assert_eq!(
        secret_key(env, "lokomotive-system", "admission-webhook-server", "cert.pem"),
        cert_pem(&assets, "webhook")
    );
    for (release, namespace) in [
        ("kube-apiserver", "kube-system"),
        ("kubernetes", "kube-system"),
        ("kubelet", "kube-system"),
        ("lokomotive", "lokomotive-system"),
    ] {
        // History, not status: `helm status -o json` prints the values, keys included.
        let out = env.helm(Helm::V3).args(["history", release, "-n", namespace]);
        let out = out.args(["--max", "1", "-o", "json"]).ok();
        let latest = crate::support::helm_history_rows(&out.stdout).pop();
        let status = latest.map(|(_, status, _)| status);
        assert_eq!(status.as_deref(), Some("deployed"), "release {namespace}/{release}");
    }
    let new_ca = std::fs::read(assets.join("tls/ca.crt")).unwrap();
    let kubelet = env
        .helm(Helm::V3)
        .args(["get", "values", "kubelet", "-n", "kube-system"])
        .args(["-o", "json"])
        .ok();
    let kubelet: Value = serde_json::from_str(&kubelet.stdout).unwrap();
    let value = kubelet["kubernetesCACert"].as_str().unwrap();
    assert_eq!(BASE64.decode(value).unwrap(), new_ca, "the kubelet release's kubernetesCACert");

    env.step("every ServiceAccount token holds the new kube CA");
    let tokens = env
        .kubectl()
        .args(["get", "secrets", "-A", "--field-selector"])
        .args(["type=kubernetes.io/service-account-token", "-o", "json"])
        .ok();
    let tokens: Value = serde_json::from_str(&tokens.stdout).unwrap();
    let items = tokens["items"].as_array().unwrap();
    assert!(items.len() >= 5, "{} token secrets", items.len());
    for item in items {
        let ca = item["data"]["ca.crt"].as_str().unwrap();
        assert_eq!(
            BASE64.decode(ca).unwrap(),
            new_ca,
            "{}/{}",
            item["metadata"]["namespace"],
            item["metadata"]["name"]
        );
    }

    env.step("every workload of lokoctl's list the cluster runs, and metrics-server, restarted");
    for (namespace, kind, name) in RESTARTED {
        let at = restarted_at(env, namespace, kind, name)
            .unwrap_or_else(|| panic!("{kind}/{name} never restarted"));
        assert!(timestamp(&at) >= since, "{kind}/{name} restarted at {at}, before {since}");
        env.kubectl()
            .args(["-n", namespace, "rollout", "status", &format!("{kind}/{name}"), "--timeout=1s"])
            .ok();
    }
    // kube-apiserver is rolled onto its new Secret by control-plane's upgrade, or restarted by
    // `restart` when that did not happen (docs/renew.md): either way it runs on the new files.
    env.kubectl()
        .args(["-n", "kube-system", "rollout", "status", "deployment/kube-apiserver"])
        .arg("--timeout=1s")
        .ok();
    assert_eq!(
        env.apiserver_mounted_file("apiserver.crt"),
        std::fs::read(assets.join("tls/apiserver.crt")).unwrap(),
        "kube-apiserver runs on the new Secret"
    );
    let metrics = ExtApiServer::metrics_server();
    env.wait_apiservice(&metrics.apiservice(), true, Duration::from_secs(5));
    env.step("the new admin kubeconfig reaches the API");
    env.kubectl().args(["get", "nodes"]).ok();
}

/// What a finished renewal of a [`renewal_cluster`] leaves, however it got there: the latest
/// run finished with every phase done, every certificate renewed against that run's backup
/// and in use since the run began, and no key in its journal. Returns the run folder.
pub fn check_renewal_finished(env: &TestEnv, needles: &Needles) -> PathBuf {
    let run = latest_run(env);
    let text = std::fs::read_to_string(run.join("journal.json")).unwrap();
    let journal: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(journal["state"], "finished", "{journal:#}");
    for phase in PHASES {
        let last = journal["phases"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|p| p["name"] == phase)
            .unwrap_or_else(|| panic!("no record of {phase}: {journal:#}"));
        assert_eq!(last["outcome"], "done", "{phase}: {journal:#}");
    }
    check_certificates_renewed(env, &run.join("backup/cluster-assets"));
    check_in_use(env, timestamp(journal["startedAt"].as_str().unwrap()));
    let leaked = needles.found_in(&text);
    assert!(leaked.is_empty(), "the journal holds key material: {leaked:?}");
    run
}
