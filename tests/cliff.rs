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
