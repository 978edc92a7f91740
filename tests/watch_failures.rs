//! Watches say why they fail. A watch the API refuses (RBAC: patch allowed, watch not) fails at
//! once with the API's message, on the real control plane, in the words kubectl logs; one
//! that keeps failing for a transient reason is retried until `--timeout`, whose message then
//! carries the last error. `--timeout 0` means no limit, as for `kubectl rollout status`, and a
//! watch that is idle for longer than `--request-timeout` is not cut by it.

mod common;
mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use certrotate::cli::KubeOpts;
use certrotate::k8s::{Connection, rollout};
use common::sample_assets::{SampleOptions, write_sample_assets};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::{Value, json};
use support::{EnvOptions, ExtApiServer, KubeletConfig, TestEnv};

const MINUTES_3: Duration = Duration::from_secs(180);
const USER: &str = "certrotate-no-watch";

/// A Deployment whose rollout is not complete: the wait must watch it.
fn unfinished_deployment() -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "generation": 2,
                     "resourceVersion": "10"},
        "spec": {"replicas": 1, "selector": {}, "template": {}},
        "status": {"observedGeneration": 1}
    }))
    .unwrap()
}

/// A connection to a kubeconfig whose server refuses connections (nothing listens on port 9).
fn refused_connection(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) -> Connection {
    let opts =
        SampleOptions { api_server: Some("https://127.0.0.1:9".into()), ..Default::default() };
    write_sample_assets(dir, &opts).unwrap();
    let kube = KubeOpts {
        kubeconfig: Some(dir.join("cluster-assets/auth/kubeconfig")),
        ..Default::default()
    };
    runtime.block_on(Connection::open(&kube, None, false, 0)).unwrap()
}

#[test]
fn a_wait_that_runs_out_says_what_its_watch_last_failed_on() {
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let conn = refused_connection(&runtime, &tmp.path().join("assets"));
    let api: Api<Deployment> = Api::namespaced(conn.client.clone(), "default");
    let started = Instant::now();
    let err = runtime
        .block_on(rollout::wait(&api, unfinished_deployment(), Duration::from_secs(3), &|_| {}))
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    assert!(
        err.starts_with(
            "timed out after 3s waiting for deployment/web -n default: Waiting for deployment \
             spec update to be observed... (last error: cannot watch deployment/web -n default: \
             cannot reach https://127.0.0.1:9: Connection refused"
        ),
        "{err}"
    );

    // --timeout 0: no limit. The same wait is still waiting (retrying) well after 3 s.
    let unbounded = rollout::wait(&api, unfinished_deployment(), Duration::ZERO, &|_| {});
    let cut =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(4), unbounded).await });
    assert!(cut.is_err(), "a zero --timeout must not end the wait: {cut:?}");
}

/// A kubeconfig for a client-certificate user `USER`, issued by the asset dir's kube CA.
fn user_kubeconfig(env: &TestEnv) -> std::path::PathBuf {
    use openssl::{asn1::Asn1Time, bn::BigNum, hash::MessageDigest, pkey::PKey, rsa::Rsa};
    let read = |name: &str| std::fs::read(env.assets.tls(name)).unwrap();
    let ca = openssl::x509::X509::from_pem(&read("ca.crt")).unwrap();
    let ca_key = PKey::private_key_from_pem(&read("ca.key")).unwrap();
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", USER).unwrap();
    let name = name.build();
    let mut cert = openssl::x509::X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_serial_number(&BigNum::from_u32(4242).unwrap().to_asn1_integer().unwrap()).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(ca.subject_name()).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    cert.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let b64 = |pem: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(pem);
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": format!("https://127.0.0.1:{}", env.assets.api_port),
            "certificate-authority-data": b64(ca.to_pem().unwrap())}}],
        "users": [{"name": USER, "user": {
            "client-certificate-data": b64(cert.build().to_pem().unwrap()),
            "client-key-data": b64(key.private_key_to_pem_pkcs8().unwrap())}}],
        "contexts": [{"name": USER, "context": {"cluster": "c", "user": USER}}],
        "current-context": USER,
    });
    env.values_file("no-watch-kubeconfig", &kubeconfig)
}

/// Everything `extension-servers --restart` reads, and patching deployments, but no watch of
/// deployments.
fn rbac_without_deployment_watch(env: &TestEnv) {
    let rules: Value = json!([
        {"apiGroups": [""], "resources": ["services", "pods"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "patch"]},
        {"apiGroups": ["apps"], "resources": ["daemonsets", "statefulsets"], "verbs": ["list"]},
    ]);
    let subject = json!([{"kind": "User", "name": USER, "apiGroup": "rbac.authorization.k8s.io"}]);
    let doc = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": USER},
         "rules": [{"apiGroups": ["apiregistration.k8s.io"], "resources": ["apiservices"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": USER}, "subjects": subject,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": USER}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": USER, "namespace": "kube-system"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": USER, "namespace": "kube-system"}, "subjects": subject,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": USER}},
    ]});
    let path = env.dir().join("no-watch-rbac.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    env.kubectl().arg("apply").arg("-f").arg(&path).ok();
}

#[test]
fn refused_watch_fails_at_once_and_timeout_0_waits_for_the_rollout() {
    // Pods become Ready 4 s after they start: the rollout watch idles longer than the 1 s
    // request timeout below.
    let kubelet = KubeletConfig { ready_delay: Duration::from_secs(4), ..Default::default() };
    let env = TestEnv::start_with("watch-failures", EnvOptions { kubelet, ..Default::default() });
    let metrics = ExtApiServer::metrics_server();
    env.deploy_ext_apiserver(&metrics);
    env.wait_apiservice(&metrics.apiservice(), true, MINUTES_3);
    env.step("metrics-server available");

    let started = Instant::now();
    let out = env
        .certrotate()
        .args(["extension-servers", "--restart", "-y", "--timeout", "0"])
        .args(["--request-timeout", "1s", "-o", "json"])
        .ok();
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["restarts"][0]["ok"], true, "{report:#}");
    assert!(
        out.stderr.contains("deployment \"metrics-server\" successfully rolled out"),
        "{}",
        out.stderr
    );
    env.step(&format!("--timeout 0, --request-timeout 1s: rolled out in {:?}", started.elapsed()));

    rbac_without_deployment_watch(&env);
    let kubeconfig = user_kubeconfig(&env);
    let generation = || {
        env.kubectl()
            .args(["-n", "kube-system", "get", "deployment", "metrics-server", "-o"])
            .arg("jsonpath={.metadata.generation}")
            .ok()
            .stdout
    };
    let patched_before = generation();
    let started = Instant::now();
    let out = env
        .certrotate()
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["extension-servers", "--restart", "-y", "--timeout", "5m", "-o", "json", "-v"])
        .fails();
    let elapsed = started.elapsed();
    env.step(&format!("refused watch: failed after {elapsed:?}"));
    assert!(elapsed < Duration::from_secs(30), "fails at once, not after --timeout: {elapsed:?}");
    assert_eq!(out.code(), Some(1), "{out}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let restart = &report["restarts"][0];
    assert_eq!(restart["ok"], false, "{report:#}");
    let message = restart["message"].as_str().unwrap();
    let refusal = format!(
        "deployments.apps \"metrics-server\" is forbidden: User \"{USER}\" cannot watch resource \
         \"deployments\" in API group \"apps\" in the namespace \"kube-system\""
    );
    assert!(
        message.starts_with("failed to watch deployment/metrics-server -n kube-system: ")
            && message.contains(&refusal)
            && message.contains("(Forbidden)"),
        "{message}"
    );
    assert!(!message.contains("timed out"), "{message}");
    // The patch was allowed and made: only the wait was refused.
    let patched_after = generation();
    assert_ne!(patched_before, patched_after, "the restart patch went through");
    // kubectl, as the same user, is refused in the same words. Its reflector logs the refusal
    // and falls back to listing again and again (so with list allowed it ends up seeing the
    // rollout through); we fail at once, as an operator must fix the RBAC either way.
    let kubectl = env
        .kubectl()
        .env("KUBECONFIG", &kubeconfig)
        .args(["-n", "kube-system", "rollout", "status", "deployment/metrics-server"])
        .args(["--timeout=60s"])
        .run();
    // klog quotes the error, so its quotes come escaped.
    let logged = format!("Failed to watch *unstructured.Unstructured: {refusal}");
    assert!(kubectl.stderr.contains(&logged.replace('"', "\\\"")), "{kubectl}");
}
