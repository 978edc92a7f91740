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
    metrics_carry_the_cluster_rows(&env, cluster["server"].as_str().unwrap());

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
    let local = |name: &str| {
        let rows = report["certificates"].as_array().unwrap();
        rows.iter().find(|r| r["name"] == name).unwrap().clone()
    };
    let assets = report["assetsDir"].as_str().unwrap();
    // Applying the certificate file alone (as the manual procedure does) leaves the old key
    // file: write both again from the state.
    let ca = local("aggregation-ca");
    assert_eq!((ca["status"].as_str(), ca["key"].as_str()), (Some("INVALID"), Some("fail")));
    let ca_fix = ca["fix"].as_str().unwrap();
    assert!(
        ca_fix.starts_with(&format!("in {assets}/terraform: terraform apply "))
            && ca_fix.contains("-target='MODULE.local_file.aggregation-ca-key[0]'"),
        "{ca_fix}"
    );
    // The client certificate no longer chains to the new CA: the rotation re-issues it, in an
    // order that keeps the cluster trusting it.
    let client = local("aggregation-client");
    assert_eq!(client["chain"], "fail", "{client:#}");
    let client_fix = format!("kubectl certrotate aggregation --assets-dir {assets}");
    assert_eq!(client["fix"].as_str().unwrap(), client_fix);
    let table = env.certrotate().arg("status").run();
    assert!(
        table.stdout.lines().any(|l| l.contains("requestheader-client-ca-file[0]")
            && l.contains("not current aggregation-ca")),
        "{table}"
    );
    // Both INVALID: the first row in the table's order comes first.
    assert!(table.stdout.trim_end().ends_with(&format!("next: {ca_fix}")), "{table}");
    assert!(table.stdout.contains("v1beta1.metrics.k8s.io"), "{table}");
}

/// `-o prometheus` on the reached cluster: promtool accepts it, and each cluster-held
/// certificate carries x509-certificate-exporter's labels for its kind of object.
fn metrics_carry_the_cluster_rows(env: &TestEnv, server: &str) {
    let out = env.certrotate().args(["status", "-o", "prometheus"]).run();
    assert_eq!(out.code(), Some(0), "{out}");
    let promtool = which::which("promtool").expect(
        "promtool not found on PATH: run scripts/provision.sh (Debian's prometheus package)",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("status.prom");
    std::fs::write(&file, &out.stdout).unwrap();
    let checked = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stdout).to_string()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success() && said.trim().is_empty(), "promtool: {said}");
    let text = &out.stdout;
    let cluster = format!("cluster=\"{server}\"");
    for series in ["certrotate_cluster_reached{", "x509_cert_not_after{"] {
        assert!(
            text.lines().any(|l| l.starts_with(series) && l.contains(&cluster)),
            "{series} {cluster}\n{text}"
        );
    }
    for labels in [
        "configmap_namespace=\"kube-system\",configmap_name=\"extension-apiserver-authentication\",configmap_key=\"requestheader-client-ca-file\",bundle_index=\"0\"",
        "secret_namespace=\"kube-system\",secret_name=\"kube-apiserver\",secret_key=\"aggregation-client.crt\",bundle_index=\"0\"",
        "secret_namespace=\"lokomotive-system\",secret_name=\"admission-webhook-server\",secret_key=\"cert.pem\"",
        "cabundle_resource_kind=\"MutatingWebhookConfiguration\",cabundle_resource_name=\"admission-webhook-server\"",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with("x509_cert_not_after{") && l.contains(labels))
            .unwrap_or_else(|| panic!("no x509_cert_not_after with {labels}\n{text}"));
        assert!(line.contains("subject_CN=") && line.contains("serial_number="), "{line}");
    }
    let reached = text.lines().find(|l| l.starts_with("certrotate_cluster_reached{")).unwrap();
    assert!(reached.ends_with(" 1"), "{reached}");
}
