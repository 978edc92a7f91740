//! The one-year cliff: every certificate of a Lokomotive cluster, the CAs included, is issued
//! for 8760 h at install, so they all expire together. These tests install a cluster whose
//! certificates expire a few minutes after it is up (the test providers' clock,
//! `AssetOptions::expiring_in`) and cross that moment on the test control plane, where every
//! certificate matters as on a real cluster (docs/test-harness.md): etcd's serving and client
//! certificates, kube-apiserver's from its Secret, kube-controller-manager's CA copy, the
//! node's kubelet certificate.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::x509::X509;
use serde_json::{Value, json};
use support::{AssetOptions, Cmd, EnvOptions, Helm, TestEnv, Tools, wait_for};

/// Validity of every certificate, counted from just before the asset dir is made: the
/// environment and the charts are up in well under a minute, which leaves a minute or two
/// of a working cluster before the cliff.
const VALIDITY: Duration = Duration::from_secs(150);

/// Seconds until the certificate in `path` expires (negative once it has).
fn seconds_left(path: &Path) -> i64 {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cert = X509::from_pem(&pem).unwrap();
    let now = Asn1Time::days_from_now(0).unwrap();
    let diff = now.diff(cert.not_after()).unwrap();
    i64::from(diff.days) * 86_400 + i64::from(diff.secs)
}

/// kubectl with another kubeconfig than the admin one.
fn kubectl_with(kubeconfig: &Path) -> Cmd {
    Cmd::new(&Tools::get().kubectl).env("KUBECONFIG", kubeconfig).timeout(Duration::from_secs(60))
}

/// The admin kubeconfig's user (its client certificate) without verifying the server: shows
/// that the API refuses the expired client certificate itself, not only that kubectl refuses
/// the expired serving certificate.
fn admin_without_server_check(env: &TestEnv) -> PathBuf {
    let text = std::fs::read_to_string(env.kubeconfig()).unwrap();
    let mut doc: Value = serde_saphyr::from_str(&text).unwrap();
    for cluster in doc["clusters"].as_array_mut().unwrap() {
        let c = cluster["cluster"].as_object_mut().unwrap();
        c.remove("certificate-authority-data");
        c.insert("insecure-skip-tls-verify".into(), json!(true));
    }
    env.values_file("admin-unverified-kubeconfig", &doc)
}

/// `status` of the node's Ready condition, as the observer sees it.
fn node_ready(observer: &Path, node: &str) -> Result<String, String> {
    let out = kubectl_with(observer)
        .args(["get", "node", node])
        .arg("-o=jsonpath={.status.conditions[?(@.type==\"Ready\")].status}")
        .run();
    if out.success() { Ok(out.stdout.trim().to_string()) } else { Err(out.to_string()) }
}

#[test]
fn without_renewal_the_cluster_breaks_at_the_cliff() {
    let env = TestEnv::start_with(
        "cliff",
        EnvOptions { assets: AssetOptions::default().expiring_in(VALIDITY), ..Default::default() },
    );
    env.step("the control-plane charts: kube-apiserver, kubernetes (kube-controller-manager's pod), kubelet");
    env.install_kube_apiserver_chart(Helm::V3);
    env.install_kubernetes_chart(Helm::V3);
    env.install_kubelet_chart(Helm::V3);
    assert!(
        env.controller_manager.restarts() >= 1,
        "kube-controller-manager was not restarted for the kubernetes chart's pod"
    );
    let observer = env.observer_kubeconfig();
    let node = env.kubelet.nodes()[0].clone();

    env.step("before the cliff: the cluster works");
    let left = seconds_left(&env.assets.tls("ca.crt"));
    assert!(left > 20, "the certificates expire in {left} s: too soon to see the cluster work");
    for name in ["apiserver.crt", "admin.crt", "kubelet.crt", "etcd/server.crt", "etcd-client.crt"]
    {
        let other = seconds_left(&env.assets.tls(name));
        assert!((other - left).abs() <= 5, "{name} expires in {other} s, the CA in {left} s");
    }
    env.kubectl().args(["get", "nodes"]).ok();
    assert_eq!(node_ready(&observer, &node).unwrap(), "True");
    env.kubectl().args(["create", "namespace", "before-the-cliff"]).ok();
    wait_for(
        "kube-controller-manager to issue a token in a new namespace",
        Duration::from_secs(60),
        || {
            let out = env
                .kubectl()
                .args(["-n", "before-the-cliff", "get", "serviceaccount", "default"])
                .arg("-o=jsonpath={.secrets[0].name}")
                .run();
            if out.success() && !out.stdout.trim().is_empty() {
                Ok(())
            } else {
                Err(out.to_string())
            }
        },
    );

    let left = seconds_left(&env.assets.tls("ca.crt"));
    env.step(&format!("waiting {left} s for every certificate to expire"));
    std::thread::sleep(Duration::from_secs(u64::try_from(left.max(0)).unwrap() + 3));
    assert!(seconds_left(&env.assets.tls("admin.crt")) < 0);

    env.step("after the cliff: the admin kubeconfig is refused");
    let admin = env.kubectl().args(["get", "nodes"]).timeout(Duration::from_secs(60)).run();
    assert!(!admin.success(), "the admin kubeconfig still works after the cliff: {admin}");
    assert!(admin.stderr.contains("expired"), "not refused for an expired certificate: {admin}");
    let unverified = kubectl_with(&admin_without_server_check(&env)).args(["get", "nodes"]).run();
    assert!(
        !unverified.success() && unverified.stderr.contains("Unauthorized"),
        "the API does not refuse the expired admin certificate: {unverified}"
    );

    env.step("after the cliff: the node goes NotReady (its kubelet certificate expired)");
    let status =
        wait_for("the node to be NotReady", Duration::from_secs(120), || {
            match node_ready(&observer, &node)? {
                ready if ready == "True" => Err("still Ready".to_string()),
                other => Ok(other),
            }
        });
    env.step(&format!("node {node}: Ready={status}"));
}

/// lokoctl's taint list (lokomotive-pki.md §1.10): every leaf certificate and non-CA key, and
/// the three CA certificates; never a CA key nor the service-account key.
const LOKOCTL_TAINTS: [&str; 19] = [
    "tls_locally_signed_cert.admin",
    "tls_locally_signed_cert.admission-webhook-server",
    "tls_locally_signed_cert.aggregation-client[0]",
    "tls_locally_signed_cert.apiserver",
    "tls_locally_signed_cert.client",
    "tls_locally_signed_cert.kubelet",
    "tls_locally_signed_cert.peer",
    "tls_locally_signed_cert.server",
    "tls_self_signed_cert.aggregation-ca[0]",
    "tls_self_signed_cert.etcd-ca",
    "tls_self_signed_cert.kube-ca",
    "tls_private_key.admin",
    "tls_private_key.admission-webhook-server",
    "tls_private_key.aggregation-client[0]",
    "tls_private_key.apiserver",
    "tls_private_key.client",
    "tls_private_key.kubelet",
    "tls_private_key.peer",
    "tls_private_key.server",
];

/// Validity of the renewed test's original certificates: the renewal typed by hand (19
/// taints, an apply with the SSH copy, lokoctl with its helm upgrades, the restarts) must end
/// before the cliff.
const RENEWED_VALIDITY: Duration = Duration::from_secs(300);

/// The ServiceAccount token Secrets whose `ca.crt` is not `ca` yet (`namespace/name`).
fn tokens_without(observer: &Path, ca: &[u8]) -> Result<Vec<String>, String> {
    use base64::Engine as _;
    let out = kubectl_with(observer)
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
            format!(
                "{}/{}",
                s["metadata"]["namespace"].as_str().unwrap_or(""),
                s["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect())
}

/// A copy (0600, in the test's dir) of a file as it is now.
fn keep_copy(env: &TestEnv, from: &Path, name: &str) -> PathBuf {
    let to = env.dir().join(name);
    support::pki::write_private(&to, &std::fs::read(from).unwrap()).unwrap();
    to
}

#[test]
fn renewed_by_hand_the_cluster_crosses_the_cliff() {
    let env = TestEnv::start_with(
        "cliff-renewed",
        EnvOptions {
            assets: AssetOptions::default().expiring_in(RENEWED_VALIDITY),
            ..Default::default()
        },
    );
    env.step("the control-plane charts: kube-apiserver, kubernetes, kubelet");
    env.install_kube_apiserver_chart(Helm::V3);
    env.install_kubernetes_chart(Helm::V3);
    env.install_kubelet_chart(Helm::V3);
    let observer = env.observer_kubeconfig();
    let node = env.kubelet.nodes()[0].clone();
    let old_admin = keep_copy(&env, &env.kubeconfig(), "old-admin-kubeconfig");
    let old_ca = keep_copy(&env, &env.assets.tls("ca.crt"), "old-ca.crt");
    let old_etcd = support::file_fingerprints(&env.assets.tls("etcd/server.crt"));
    assert_eq!(env.node.ca_copy(), support::file_fingerprints(&old_ca));

    env.step(
        "renewal typed by hand, as lokoctl's rotate: 19 taints, terraform apply -parallelism=1",
    );
    let module = env.assets.bootkube_module();
    for resource in LOKOCTL_TAINTS {
        env.terraform().args(["taint", &format!("{module}.{resource}")]).ok();
    }
    env.terraform()
        .args(["apply", "-auto-approve", "-input=false", "-no-color", "-parallelism=1"])
        .ok();
    assert_eq!(env.etcd.restarts(), 1, "copy-controller-secrets did not restart etcd");
    let new_etcd = support::file_fingerprints(&env.assets.tls("etcd/server.crt"));
    assert_ne!(new_etcd, old_etcd);
    assert_eq!(env.etcd_serving_fingerprint().unwrap(), new_etcd[0]);

    env.step("lokoctl cluster apply --upgrade-kubelets: every control-plane chart with the new certificates");
    env.lokoctl()
        .args([
            "cluster",
            "apply",
            "--confirm",
            "--skip-pre-update-health-check",
            "--upgrade-kubelets",
        ])
        .ok();
    let new_ca = std::fs::read(env.assets.tls("ca.crt")).unwrap();
    wait_for("every token Secret's ca.crt to be the new CA", Duration::from_secs(120), || {
        match tokens_without(&observer, &new_ca)? {
            left if left.is_empty() => Ok(()),
            left => Err(format!("still the old CA: {left:?}")),
        }
    });

    env.step("the restarts: kube-controller-manager, kubelet, kube-apiserver");
    env.rollout_restart("kube-system", "deployment/kube-controller-manager");
    env.rollout_restart("kube-system", "daemonset/kubelet");
    env.rollout_restart("kube-system", "deployment/kube-apiserver");
    assert_eq!(env.node.ca_copy(), support::fingerprints(&new_ca), "the node's CA copy");
    assert_eq!(
        env.apiserver_serving_fingerprint().unwrap(),
        support::file_fingerprints(&env.assets.tls("apiserver.crt"))[0]
    );
    let left = seconds_left(&old_ca);
    assert!(left > 5, "the renewal ended {} s after the cliff: raise RENEWED_VALIDITY", -left);
    assert!(seconds_left(&env.assets.tls("ca.crt")) > 86_400 * 300);

    env.step(&format!("waiting {left} s for the original certificates to expire"));
    std::thread::sleep(Duration::from_secs(u64::try_from(left).unwrap() + 3));
    assert!(seconds_left(&old_ca) < 0);

    env.step(
        "after the cliff: the new admin kubeconfig works, the old admin certificate is refused",
    );
    env.kubectl().args(["get", "nodes"]).ok();
    let old = kubectl_with(&old_admin).args(["get", "nodes"]).run();
    assert!(!old.success() && old.stderr.contains("expired"), "the old admin kubeconfig: {old}");

    env.step("after the cliff: kube-apiserver restarted reaches etcd (new client certificate, new etcd serving certificate)");
    env.block_on(env.apiserver.restart("after the cliff")).unwrap();
    env.kubectl().args(["create", "namespace", "after-the-cliff"]).ok();
    assert_eq!(env.etcd_serving_fingerprint().unwrap(), new_etcd[0]);

    env.step("after the cliff: kube-controller-manager restarted issues tokens");
    env.rollout_restart("kube-system", "deployment/kube-controller-manager");
    wait_for("a token in the namespace made after the cliff", Duration::from_secs(60), || {
        let out = env
            .kubectl()
            .args(["-n", "after-the-cliff", "get", "serviceaccount", "default"])
            .arg("-o=jsonpath={.secrets[0].name}")
            .run();
        if out.success() && !out.stdout.trim().is_empty() { Ok(()) } else { Err(out.to_string()) }
    });

    env.step("after the cliff: the node stays Ready past the node lifecycle's 40 s grace");
    let until = std::time::Instant::now() + Duration::from_secs(50);
    while std::time::Instant::now() < until {
        assert_eq!(node_ready(&observer, &node).unwrap(), "True", "node {node} after the cliff");
        std::thread::sleep(Duration::from_secs(5));
    }
}
