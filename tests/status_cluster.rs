//! `kubectl certrotate status` cluster rows against a real control plane whose PKI is a real
//! Terraform-made asset dir, with the control-plane charts installed by the lokoctl test double.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{ExtApiServer, TestEnv};

fn cluster_row<'a>(report: &'a Value, object: &str, key: &str, index: u64) -> &'a Value {
    report["cluster"]["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["object"] == object && r["key"] == key && r["index"] == index)
        .unwrap_or_else(|| panic!("no row {object} {key}[{index}] in {:#}", report["cluster"]))
}

fn status(env: &TestEnv) -> (Option<i32>, Value) {
    let out = env.certrotate().args(["status", "-o", "json"]).run();
    let doc: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    (out.code(), doc["reports"][0].clone())
}

#[test]
fn cluster_rows_compare_what_the_cluster_holds_with_the_asset_dir() {
    let env = TestEnv::start("status-cluster");
    env.lokoctl().args(["cluster", "apply", "--confirm"]).ok();
    env.step("control-plane charts installed by the lokoctl double");
    let metrics = ExtApiServer::metrics_server();
    env.deploy_ext_apiserver(&metrics);
    env.wait_apiservice(&metrics.apiservice(), true, Duration::from_secs(180));

    let (code, report) = status(&env);
    assert_eq!(code, Some(0), "{report:#}");
    let cluster = &report["cluster"];
    assert_eq!(cluster["reached"], true, "{cluster:#}");
    assert!(cluster["kubeconfig"].as_str().unwrap().contains("$KUBECONFIG"));
    for (object, key, compared_with) in [
        ("configmap/kube-system/extension-apiserver-authentication", "client-ca-file", "kube-ca"),
        (
            "configmap/kube-system/extension-apiserver-authentication",
            "requestheader-client-ca-file",
            "aggregation-ca",
        ),
        ("secret/kube-system/kube-apiserver", "aggregation-ca.crt", "aggregation-ca"),
        ("secret/kube-system/kube-apiserver", "aggregation-client.crt", "aggregation-client"),
        ("secret/lokomotive-system/admission-webhook-server", "cert.pem", "admission-webhook"),
        ("mutatingwebhookconfiguration/admission-webhook-server", "caBundle", "admission-webhook"),
    ] {
        let row = cluster_row(&report, object, key, 0);
        assert_eq!(row["comparedWith"], compared_with);
        assert_eq!(row["current"], true, "{row:#}");
        assert_eq!(row["status"], "OK", "{row:#}");
    }
    let services = cluster["apiServices"].as_array().unwrap();
    assert_eq!(services.len(), 1, "only APIServices backed by a service: {services:?}");
    assert_eq!(services[0]["name"], "v1beta1.metrics.k8s.io");
    assert_eq!(services[0]["service"], "kube-system/metrics-server");
    assert_eq!(services[0]["available"], "True");

    // A new aggregation CA in the asset dir (the rotation's `ca` phase by hand): the cluster
    // still trusts and serves the old one, and status says so.
    let module = env.assets.bootkube_module();
    env.terraform().arg("taint").arg(format!("{module}.tls_private_key.aggregation-ca[0]")).ok();
    env.terraform()
        .args(["apply", "-auto-approve", "-target"])
        .arg(format!("{module}.local_file.aggregation-ca-crt[0]"))
        .ok();
    let (code, report) = status(&env);
    assert_eq!(code, Some(4), "the asset dir's client certificate no longer chains to its CA");
    let requestheader = cluster_row(
        &report,
        "configmap/kube-system/extension-apiserver-authentication",
        "requestheader-client-ca-file",
        0,
    );
    assert_eq!(requestheader["current"], false, "{requestheader:#}");
    assert_eq!(
        cluster_row(&report, "secret/kube-system/kube-apiserver", "aggregation-ca.crt", 0)["current"],
        false
    );
    assert_eq!(
        cluster_row(
            &report,
            "configmap/kube-system/extension-apiserver-authentication",
            "client-ca-file",
            0
        )["current"],
        true
    );
    let table = env.certrotate().arg("status").run();
    assert!(
        table.stdout.lines().any(|l| l.contains("requestheader-client-ca-file[0]")
            && l.contains("not current aggregation-ca")),
        "{table}"
    );
    assert!(table.stdout.contains("v1beta1.metrics.k8s.io"), "{table}");
}
