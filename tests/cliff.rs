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

/// Validity of the cluster left alone, counted from just before its asset dir is made: the
/// environment and the charts are up in well under a minute, which leaves a minute or so of a
/// working cluster before its cliff.
const VALIDITY: Duration = Duration::from_secs(120);

/// Validity of the renewed cluster's original certificates: its environment, the charts and
/// the whole of `renew -y` (measured: 60-100 s) must end before it.
const RENEWED_VALIDITY: Duration = Duration::from_secs(180);

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

/// A control plane whose every certificate expires `validity` from now.
fn expiring_cluster(name: &str, validity: Duration) -> TestEnv {
    let assets = AssetOptions::default().expiring_in(validity);
    TestEnv::start_with(name, EnvOptions { assets, ..Default::default() })
}

/// The control-plane charts lokoctl installs, with `helm` (the `lokomotive` chart always with
/// helm 3: see `install_lokomotive_chart`).
fn install_charts(env: &TestEnv, helm: Helm, webhook: bool) {
    env.step(&format!("the control-plane charts with {helm:?}: kube-apiserver, kubernetes (kube-controller-manager's pod), kubelet{}", if webhook { ", lokomotive" } else { "" }));
    env.install_kube_apiserver_chart(helm);
    env.install_kubernetes_chart(helm);
    env.install_kubelet_chart(helm);
    if webhook {
        env.install_lokomotive_chart();
    }
    assert!(
        env.controller_manager.restarts() >= 1,
        "kube-controller-manager was not restarted for the kubernetes chart's pod"
    );
}

/// The name of a ServiceAccount's first token Secret in `namespace`, once
/// kube-controller-manager has issued it.
fn wait_for_token(env: &TestEnv, namespace: &str) {
    wait_for(
        &format!("kube-controller-manager to issue a token in namespace {namespace}"),
        Duration::from_secs(60),
        || {
            let out = env
                .kubectl()
                .args(["-n", namespace, "get", "serviceaccount", "default"])
                .arg("-o=jsonpath={.secrets[0].name}")
                .run();
            if out.success() && !out.stdout.trim().is_empty() {
                Ok(())
            } else {
                Err(out.to_string())
            }
        },
    );
}

/// Before the cliff: every certificate expires with the CA, and the cluster works (the admin
/// kubeconfig, the node Ready, kube-controller-manager issuing tokens).
fn works_before_the_cliff(env: &TestEnv, observer: &Path, node: &str) {
    env.step("before the cliff: the cluster works");
    let left = seconds_left(&env.assets.tls("ca.crt"));
    assert!(left > 20, "the certificates expire in {left} s: too soon to see the cluster work");
    for name in ["apiserver.crt", "admin.crt", "kubelet.crt", "etcd/server.crt", "etcd-client.crt"]
    {
        let other = seconds_left(&env.assets.tls(name));
        assert!((other - left).abs() <= 5, "{name} expires in {other} s, the CA in {left} s");
    }
    env.kubectl().args(["get", "nodes"]).ok();
    assert_eq!(node_ready(observer, node).unwrap(), "True");
    env.kubectl().args(["create", "namespace", "before-the-cliff"]).ok();
    wait_for_token(env, "before-the-cliff");
}

/// After the cliff, the cluster left alone is broken: its admin certificate is refused by the
/// API itself, and its node goes NotReady (its kubelet certificate expired).
fn broken_after_the_cliff(env: &TestEnv, observer: &Path, node: &str) {
    assert!(seconds_left(&env.assets.tls("admin.crt")) < 0);
    env.step("after the cliff, the cluster left alone: the admin kubeconfig is refused");
    let admin = env.kubectl().args(["get", "nodes"]).timeout(Duration::from_secs(60)).run();
    assert!(!admin.success(), "the admin kubeconfig still works after the cliff: {admin}");
    assert!(admin.stderr.contains("expired"), "not refused for an expired certificate: {admin}");
    let unverified = kubectl_with(&admin_without_server_check(env)).args(["get", "nodes"]).run();
    assert!(
        !unverified.success() && unverified.stderr.contains("Unauthorized"),
        "the API does not refuse the expired admin certificate: {unverified}"
    );

    env.step("after the cliff, the cluster left alone: the node goes NotReady");
    let status =
        wait_for("the node to be NotReady", Duration::from_secs(120), || {
            match node_ready(observer, node)? {
                ready if ready == "True" => Err("still Ready".to_string()),
                other => Ok(other),
            }
        });
    env.step(&format!("node {node}: Ready={status}"));
}

/// A copy (0600, in the test's dir) of a file as it is now.
fn keep_copy(env: &TestEnv, from: &Path, name: &str) -> PathBuf {
    let to = env.dir().join(name);
    support::pki::write_private(&to, &std::fs::read(from).unwrap()).unwrap();
    to
}

/// What the renewed cluster had before `renew`, to hold it to after the cliff.
struct Renewed {
    old_admin: PathBuf,
    old_ca: PathBuf,
    observer: PathBuf,
    node: String,
}

/// `renew -y` alone (helm and lokoctl with `helm`), which must end before the cliff with every
/// phase done and every certificate renewed for a year.
fn renew(env: &TestEnv, helm: Helm) -> Renewed {
    let observer = env.observer_kubeconfig();
    let node = env.kubelet.nodes()[0].clone();
    works_before_the_cliff(env, &observer, &node);
    let old_admin = keep_copy(env, &env.kubeconfig(), "old-admin-kubeconfig");
    let old_ca = keep_copy(env, &env.assets.tls("ca.crt"), "old-ca.crt");
    let old_etcd = support::file_fingerprints(&env.assets.tls("etcd/server.crt"));

    env.step(&format!("kubectl certrotate renew -y, with {helm:?}"));
    let out = env
        .certrotate_with_helm(helm)
        .arg("renew")
        .args(env.renew_etcd_flags())
        .args(["-y", "-o", "json"])
        .run();
    assert!(out.success(), "renew: {out}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let results = report["phases"].as_array().unwrap();
    assert_eq!(results.len(), 8, "{report:#}");
    // `tokens` may find kube-controller-manager done already ("already-done").
    for phase in results {
        assert!(
            ["done", "already-done"].contains(&phase["result"].as_str().unwrap()),
            "{report:#}"
        );
    }
    let left = seconds_left(&old_ca);
    assert!(left > 5, "renew ended {} s after the cliff: raise RENEWED_VALIDITY", -left);
    assert!(seconds_left(&env.assets.tls("ca.crt")) > 86_400 * 300, "not renewed for a year");
    assert_eq!(env.etcd.restarts(), 1, "copy-controller-secrets did not restart etcd once");
    assert_ne!(support::file_fingerprints(&env.assets.tls("etcd/server.crt")), old_etcd);
    assert_eq!(
        env.node.ca_copy(),
        support::file_fingerprints(&env.assets.tls("ca.crt")),
        "the node's CA copy"
    );
    Renewed { old_admin, old_ca, observer, node }
}

/// After the cliff, the renewed cluster works: the new admin kubeconfig (the old one refused,
/// expired), kube-apiserver restarted reaches etcd, the webhook mutates, kube-controller-manager
/// restarted issues tokens, the node stays Ready past the node lifecycle's 40 s grace.
fn works_after_the_cliff(env: &TestEnv, renewed: &Renewed) {
    assert!(seconds_left(&renewed.old_ca) < 0);
    env.step(
        "after the cliff: the new admin kubeconfig works, the old admin certificate is refused",
    );
    env.kubectl().args(["get", "nodes"]).ok();
    let old = kubectl_with(&renewed.old_admin).args(["get", "nodes"]).run();
    assert!(!old.success() && old.stderr.contains("expired"), "the old admin kubeconfig: {old}");

    env.step("after the cliff: kube-apiserver restarted reaches etcd; the webhook mutates");
    env.block_on(env.apiserver.restart("after the cliff")).unwrap();
    env.kubectl().args(["create", "namespace", "after-the-cliff"]).ok();
    assert_eq!(
        env.etcd_serving_fingerprint().unwrap(),
        support::file_fingerprints(&env.assets.tls("etcd/server.crt"))[0]
    );
    wait_for(
        "the webhook to mutate the new default ServiceAccount",
        Duration::from_secs(60),
        || {
            let out = env
                .kubectl()
                .args(["-n", "after-the-cliff", "get", "serviceaccount", "default"])
                .arg("-o=jsonpath={.automountServiceAccountToken}")
                .run();
            if out.success() && out.stdout.trim() == "false" {
                Ok(())
            } else {
                Err(out.to_string())
            }
        },
    );

    env.step("after the cliff: kube-controller-manager restarted issues tokens");
    env.rollout_restart("kube-system", "deployment/kube-controller-manager");
    wait_for_token(env, "after-the-cliff");

    env.step("after the cliff: the node stays Ready past the node lifecycle's 40 s grace");
    let until = std::time::Instant::now() + Duration::from_secs(45);
    while std::time::Instant::now() < until {
        let ready = node_ready(&renewed.observer, &renewed.node).unwrap();
        assert_eq!(ready, "True", "node {} after the cliff", renewed.node);
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Sleeps until the certificate in `path` has expired.
fn wait_for_the_cliff(env: &TestEnv, path: &Path) {
    let left = seconds_left(path);
    env.step(&format!("waiting {left} s for the original certificates to expire"));
    std::thread::sleep(Duration::from_secs(u64::try_from(left.max(0)).unwrap() + 3));
}

/// The proof of issue 16: two clusters made alike, every certificate expiring minutes after
/// they are up. The one `renew -y` renewed (helm 3) crosses the cliff with nothing broken; the
/// one left alone breaks at it, in the same test, which proves the harness models the cliff.
#[test]
fn renew_crosses_the_cliff_and_the_same_cluster_left_alone_breaks() {
    let alone = expiring_cluster("cliff-alone", VALIDITY);
    install_charts(&alone, Helm::V3, false);
    let alone_observer = alone.observer_kubeconfig();
    let alone_node = alone.kubelet.nodes()[0].clone();
    works_before_the_cliff(&alone, &alone_observer, &alone_node);

    let env = expiring_cluster("cliff-renewed", RENEWED_VALIDITY);
    install_charts(&env, Helm::V3, true);
    let renewed = renew(&env, Helm::V3);
    // The cluster left alone was made first, with a shorter validity: its cliff is behind us.
    wait_for_the_cliff(&env, &renewed.old_ca);
    broken_after_the_cliff(&alone, &alone_observer, &alone_node);
    works_after_the_cliff(&env, &renewed);
}

/// The same proof with helm 4: the charts installed by it, and `renew` (its release recovery
/// and lokoctl's upgrades) running it.
#[test]
fn renew_with_helm4_crosses_the_cliff() {
    let env = expiring_cluster("cliff-renewed-helm4", RENEWED_VALIDITY);
    install_charts(&env, Helm::V4, true);
    let renewed = renew(&env, Helm::V4);
    wait_for_the_cliff(&env, &renewed.old_ca);
    works_after_the_cliff(&env, &renewed);
}
