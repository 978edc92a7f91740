//! Smoke tests of the test environment itself, each against the real components: they prove
//! that what later tests build on behaves as on a real cluster.
//!
//! Grouping: each `#[test]` owns one environment (one asset dir, one control plane) and runs
//! its steps in order on it; tests run in parallel with each other (see docs/test-harness.md).

mod support;

use std::any::Any;
use std::net::{Ipv4Addr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use support::process::DEATH_LOG_LINES;
use support::{
    AssetOptions, Assets, EnvOptions, ExtApiServer, Helm, KubeletConfig, Lokomotive, TestEnv,
    file_fingerprints, free_port, helm_history_rows, wait_for,
};

const ROLLOUT: Duration = Duration::from_secs(120);

fn names(out: &support::Output) -> Vec<String> {
    out.stdout.split_whitespace().map(str::to_string).collect()
}

fn label_is(pod: &Pod, key: &str, value: &str) -> bool {
    pod.metadata.labels.as_ref().and_then(|l| l.get(key)).is_some_and(|v| v == value)
}

/// `terraform taint <module>.<taint>` then `terraform apply -target <module>.<target>`, the
/// seed document's way to replace one certificate or key.
fn taint_and_apply(assets: &Assets, taint: &str, target: &str) {
    let module = assets.bootkube_module();
    let tainted = assets.terraform().args(["taint", &format!("{module}.{taint}")]).ok();
    assert!(tainted.stdout.contains("has been marked as tainted"), "{tainted}");
    assets
        .terraform()
        .args(["apply", "-auto-approve", "-input=false", "-no-color"])
        .args(["-target", &format!("{module}.{target}")])
        .ok();
}

/// A new aggregation CA (new key) in the asset dir, as the `ca` phase makes it.
fn new_aggregation_ca(assets: &Assets) {
    taint_and_apply(
        assets,
        "tls_private_key.aggregation-ca[0]",
        "local_file.aggregation-ca-crt[0]",
    );
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `helm upgrade kube-apiserver <asset dir chart> --reuse-values -f <values> --wait`.
fn upgrade_kube_apiserver(env: &TestEnv, helm: Helm, values: &Value) -> support::Output {
    let file = env.values_file("upgrade", values);
    env.helm(helm)
        .args(["upgrade", "kube-apiserver"])
        .arg(env.assets.chart("kube-system", "kube-apiserver"))
        .args(["--namespace", "kube-system", "--reuse-values", "--wait", "--timeout", "3m", "-f"])
        .arg(file)
        .ok()
}

/// `(revision, status, description)` of every revision of the kube-apiserver release.
fn helm_history(env: &TestEnv, helm: Helm) -> Vec<(u64, String, String)> {
    let out = env
        .helm(helm)
        .args(["history", "kube-apiserver", "--namespace", "kube-system", "-o", "json"])
        .ok();
    support::helm_history_rows(&out.stdout)
}

fn kubectl_jsonpath(env: &TestEnv, args: &[&str], path: &str) -> String {
    env.kubectl().args(args).arg(format!("-o=jsonpath={path}")).ok().stdout.trim().to_string()
}

/// A Deployment and a DaemonSet restarted with real `kubectl rollout restart` complete under
/// `kubectl rollout status`; a pod held not Ready stalls the rollout until released; and
/// `kubectl logs` reaches the simulated kubelet.
#[test]
fn kubectl_rollouts_complete_and_logs_reach_the_kubelet() {
    let env = TestEnv::start_with(
        "rollout",
        EnvOptions {
            kubelet: KubeletConfig { nodes: 2, ..KubeletConfig::default() },
            ..EnvOptions::default()
        },
    );
    let status = |workload: &str| {
        env.kubectl()
            .args(["rollout", "status", workload, &format!("--timeout={}s", ROLLOUT.as_secs())])
            .ok()
    };

    env.step("Deployment web, 2 replicas");
    env.kubectl().args(["create", "deployment", "web", "--image=web:1", "--replicas=2"]).ok();
    status("deploy/web");
    let rs_before = names(&env.kubectl().args(["get", "rs", "-l", "app=web", "-o", "name"]).ok());
    assert_eq!(rs_before.len(), 1, "one ReplicaSet before the restart: {rs_before:?}");

    env.step("kubectl rollout restart deploy/web");
    env.kubectl().args(["rollout", "restart", "deploy/web"]).ok();
    let out = status("deploy/web");
    assert!(out.stdout.contains("successfully rolled out"), "rollout status said: {}", out.stdout);
    let rs_after = names(&env.kubectl().args(["get", "rs", "-l", "app=web", "-o", "name"]).ok());
    assert_eq!(rs_after.len(), 2, "the restart made a new ReplicaSet: {rs_after:?}");
    let restarted_at = env
        .kubectl()
        .args([
            "get",
            "deploy/web",
            "-o",
            r#"jsonpath={.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}"#,
        ])
        .ok();
    assert!(!restarted_at.stdout.trim().is_empty(), "restartedAt annotation missing");
    let ready = env
        .kubectl()
        .args([
            "get",
            "deploy/web",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.updatedReplicas}",
        ])
        .ok();
    assert_eq!(ready.stdout.trim(), "2/2");

    env.step("pods held not Ready stall the rollout until released");
    env.kubelet.set_never_ready(Some(std::sync::Arc::new(
        |pod: &k8s_openapi::api::core::v1::Pod| {
            pod.metadata.labels.as_ref().and_then(|l| l.get("app")).is_some_and(|a| a == "web")
        },
    )));
    env.kubectl().args(["rollout", "restart", "deploy/web"]).ok();
    let stalled = env.kubectl().args(["rollout", "status", "deploy/web", "--timeout=5s"]).fails();
    assert!(
        stalled.stderr.contains("timed out") || stalled.stdout.contains("Waiting"),
        "a held rollout should time out: {stalled}"
    );
    env.kubelet.set_never_ready(None);
    status("deploy/web");

    env.step("DaemonSet on both nodes, rollout restart");
    let ds = env.dir().join("ds.json");
    std::fs::write(
        &ds,
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "agent", "image": "agent:1"}]},
                },
            },
        })
        .to_string(),
    )
    .unwrap();
    env.kubectl().arg("apply").arg("-f").arg(&ds).ok();
    status("ds/agent");
    let desired =
        env.kubectl().args(["get", "ds/agent", "-o", "jsonpath={.status.numberReady}"]).ok();
    assert_eq!(desired.stdout.trim(), "2", "one agent per node");
    env.rollout_restart("default", "ds/agent");

    env.step("kubectl logs through the kubelet endpoint");
    let pod = env
        .kubectl()
        .args(["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"])
        .ok()
        .stdout;
    env.kubelet.set_logs("default", pod.trim(), "web", "line one\nline two\n");
    let logs = env.kubectl().args(["logs", pod.trim(), "--tail=1"]).ok();
    assert_eq!(logs.stdout, "line two\n");
}

/// Release lifecycle of the fixture kube-apiserver chart with one helm: install, upgrade with
/// `--reuse-values --set`, an upgrade killed during `--wait` on a pod that never becomes ready
/// (release left `pending-upgrade`, further upgrades refused), and `helm rollback`.
fn helm_release_lifecycle(helm: Helm, name: &str) {
    let env = TestEnv::start(name);
    let chart = env.assets.chart("kube-system", "kube-apiserver");
    let last = |env: &TestEnv| helm_history(env, helm).pop().expect("a release revision");
    let upgrade_set = |image: &str| {
        env.helm(helm)
            .args(["upgrade", "kube-apiserver"])
            .arg(&chart)
            .args(["--namespace", "kube-system", "--reuse-values", "--set"])
            .arg(format!("apiserver.image={image}"))
    };
    // Image and phase of each apiserver pod; `Err` while the API is away (restarting).
    let pods = |env: &TestEnv| {
        let out = env
            .kubectl()
            .args(["get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-apiserver"])
            .arg(r#"-o=jsonpath={range .items[*]}{.spec.containers[0].image} {.status.phase}{"\n"}{end}"#)
            .run();
        if out.success() { Ok(out.stdout) } else { Err(out.stderr) }
    };

    env.step("helm install kube-apiserver");
    env.install_kube_apiserver_chart(helm);
    assert_eq!(helm_history(&env, helm).len(), 1);
    assert_eq!(last(&env).1, "deployed");
    let secret_ca = kubectl_jsonpath(
        &env,
        &["get", "secret", "kube-apiserver", "-n", "kube-system"],
        r"{.data.aggregation-ca\.crt}",
    );
    let asset_ca = read(&env.assets.tls("aggregation-ca.crt"));
    assert_eq!(BASE64.decode(&secret_ca).unwrap(), asset_ca, "Secret holds the asset dir's CA");
    assert_eq!(env.apiserver.restarts(), 0, "the first apiserver pod adopts the running process");

    // Without --wait: the rollout restarts kube-apiserver, and helm 4's --wait (kstatus
    // watcher) was seen to fail when the API drops under it, while helm 3's rides through.
    env.step("helm upgrade --reuse-values --set apiserver.image");
    upgrade_set("kube-apiserver:v1.20.3").ok();
    env.wait_rollout("kube-system", "deploy/kube-apiserver");
    assert_eq!(last(&env).0, 2);
    assert_eq!(last(&env).1, "deployed");
    let image = kubectl_jsonpath(
        &env,
        &["get", "deploy", "kube-apiserver", "-n", "kube-system"],
        "{.spec.template.spec.containers[0].image}",
    );
    assert_eq!(image, "kube-apiserver:v1.20.3");
    let secret_ca_after = kubectl_jsonpath(
        &env,
        &["get", "secret", "kube-apiserver", "-n", "kube-system"],
        r"{.data.aggregation-ca\.crt}",
    );
    assert_eq!(secret_ca_after, secret_ca, "--reuse-values kept the certificates");
    assert_eq!(env.apiserver.restarts(), 1, "the replaced pod restarted the real apiserver");

    // The new pod never starts (so the API stays up): helm is left waiting, then killed.
    env.step("helm upgrade --wait on a pod that never becomes ready, killed");
    env.kubelet
        .set_never_started(Some(Arc::new(|pod: &Pod| label_is(pod, "k8s-app", "kube-apiserver"))));
    let mut stuck =
        upgrade_set("kube-apiserver:v1.20.4").args(["--wait", "--timeout", "10m"]).spawn();
    wait_for("helm waiting on a v1.20.4 pod held Pending", Duration::from_secs(120), || {
        if !stuck.is_running() {
            panic!("helm upgrade ended by itself: {}", stuck.kill());
        }
        let now = pods(&env)?;
        if now.lines().any(|l| l == "kube-apiserver:v1.20.4 Pending") {
            Ok(())
        } else {
            Err(format!("pods: {now:?}"))
        }
    });
    // Let helm's wait poll a few times before the kill.
    std::thread::sleep(Duration::from_secs(3));
    assert!(stuck.is_running(), "helm upgrade should still be waiting: {}", stuck.kill());
    stuck.kill();
    let (revision, status, _) = last(&env);
    assert_eq!((revision, status.as_str()), (3, "pending-upgrade"));
    let refused = upgrade_set("kube-apiserver:v1.20.5").fails();
    assert!(
        refused.stderr.contains("another operation (install/upgrade/rollback) is in progress"),
        "{refused}"
    );

    env.step("release the pod; helm rollback to the latest revision");
    env.kubelet.set_never_started(None);
    env.wait_rollout("kube-system", "deploy/kube-apiserver");
    assert_eq!(env.apiserver.restarts(), 2, "the released pod restarted the apiserver");
    env.helm(helm)
        .args(["rollback", "kube-apiserver", "3", "--namespace", "kube-system", "--wait"])
        .args(["--timeout", "3m"])
        .ok();
    let (revision, status, description) = last(&env);
    assert_eq!((revision, status.as_str()), (4, "deployed"), "{description}");
    assert!(description.contains("Rollback to 3"), "{description}");
}

#[test]
fn helm3_install_upgrade_pending_upgrade_and_rollback() {
    helm_release_lifecycle(Helm::V3, "helm3");
}

#[test]
fn helm4_install_upgrade_pending_upgrade_and_rollback() {
    helm_release_lifecycle(Helm::V4, "helm4");
}

/// `terraform taint` of the aggregation CA key and `apply -target` of its file replace
/// `tls/aggregation-ca.crt` (new key), and nothing else.
#[test]
fn terraform_taint_and_targeted_apply_replace_the_aggregation_ca() {
    let dir = tempfile::Builder::new().prefix("certrotate-terraform-").tempdir().unwrap();
    let assets = Assets::make(&dir.path().join("config"), free_port(), &AssetOptions::default());
    let module = assets.bootkube_module();
    assert!(module.starts_with("module.aws-") && module.ends_with(".module.bootkube"), "{module}");
    let state = assets.terraform().args(["state", "list"]).ok().stdout;
    for address in [
        "tls_private_key.aggregation-ca[0]",
        "tls_self_signed_cert.aggregation-ca[0]",
        "local_file.aggregation-ca-crt[0]",
        "tls_locally_signed_cert.aggregation-client[0]",
    ] {
        let full = format!("{module}.{address}");
        assert!(state.lines().any(|l| l == full), "{full} not in state:\n{state}");
    }
    let ca_before = read(&assets.tls("aggregation-ca.crt"));
    let client_before = read(&assets.tls("aggregation-client.crt"));
    let kube_ca_before = read(&assets.tls("ca.crt"));

    new_aggregation_ca(&assets);

    let ca_after = read(&assets.tls("aggregation-ca.crt"));
    assert_ne!(ca_after, ca_before, "tls/aggregation-ca.crt was replaced");
    let key_of = |pem: &[u8]| {
        openssl::x509::X509::from_pem(pem)
            .unwrap()
            .public_key()
            .unwrap()
            .public_key_to_der()
            .unwrap()
    };
    assert_ne!(key_of(&ca_after), key_of(&ca_before), "the new CA has a new key");
    assert_eq!(read(&assets.tls("aggregation-client.crt")), client_before, "not targeted");
    assert_eq!(read(&assets.tls("ca.crt")), kube_ca_before, "not targeted");
}

/// kube-apiserver merges CAs into `extension-apiserver-authentication`: restarted (by the
/// sync, after a helm upgrade) with only a new aggregation CA, the ConfigMap holds old and
/// new; after the ConfigMap is deleted and the apiserver restarted, only the new one. Two
/// controllers, so the chart runs a DaemonSet, restarted as the seed document does.
#[test]
fn auth_configmap_merges_a_new_aggregation_ca_until_deleted() {
    let env = TestEnv::start_with(
        "ca-merge",
        EnvOptions {
            assets: AssetOptions { controllers: Some(2), ..AssetOptions::default() },
            kubelet: KubeletConfig { nodes: 2, ..KubeletConfig::default() },
            ..EnvOptions::default()
        },
    );
    let cas = || env.auth_configmap_cas("requestheader-client-ca-file");
    let old = file_fingerprints(&env.assets.tls("aggregation-ca.crt"));
    env.install_kube_apiserver_chart(Helm::V3);
    let ready = kubectl_jsonpath(
        &env,
        &["get", "ds", "kube-apiserver", "-n", "kube-system"],
        "{.status.numberReady}",
    );
    assert_eq!(ready, "2", "one kube-apiserver pod per controller node");
    wait_for("the ConfigMap to hold the asset dir's CA", Duration::from_secs(60), || {
        let now = cas()?;
        if now == old { Ok(()) } else { Err(format!("{now:?}")) }
    });

    env.step("new aggregation CA; helm upgrade with only the new CA");
    new_aggregation_ca(&env.assets);
    let new = file_fingerprints(&env.assets.tls("aggregation-ca.crt"));
    assert_ne!(new, old);
    let new_pem = read(&env.assets.tls("aggregation-ca.crt"));
    upgrade_kube_apiserver(
        &env,
        Helm::V3,
        &json!({"apiserver": {"aggregationCaCert": BASE64.encode(&new_pem)}}),
    );
    let restarts = env.apiserver.restarts();
    // One restart, or two if the Secret watcher got there before the new pod started.
    assert!(restarts >= 1, "the checksum change restarted the apiserver");
    let merged = wait_for("the ConfigMap to hold old and new CA", Duration::from_secs(60), || {
        let now = cas()?;
        if now.len() == 2 && now.contains(&old[0]) && now.contains(&new[0]) {
            Ok(now)
        } else {
            Err(format!("{now:?}"))
        }
    });
    env.step(&format!("merged: {} CAs", merged.len()));

    env.step("delete the ConfigMap, rollout restart kube-apiserver");
    env.kubectl()
        .args(["delete", "configmap", "extension-apiserver-authentication", "-n", "kube-system"])
        .ok();
    env.rollout_restart("kube-system", "ds/kube-apiserver");
    assert!(env.apiserver.restarts() > restarts, "the rollout restarted the apiserver");
    wait_for("the ConfigMap to hold only the new CA", Duration::from_secs(60), || {
        let now = cas()?;
        if now == new { Ok(()) } else { Err(format!("{now:?}")) }
    });
}

/// An APIService backed by a real extension server is Available; once kube-apiserver runs
/// with an old+new CA bundle and a client certificate from the new CA, the server (which
/// loaded only the old CA at start) rejects it and the APIService goes unavailable; after
/// `kubectl rollout restart` of its Deployment it is Available again.
#[test]
fn apiservice_unavailable_after_ca_change_until_its_server_restarts() {
    let env = TestEnv::start("apiservice");
    env.install_kube_apiserver_chart(Helm::V3);
    let metrics = ExtApiServer::metrics_server();
    let name = metrics.apiservice();
    env.deploy_ext_apiserver(&metrics);
    env.kubectl()
        .args(["rollout", "status", "deploy/metrics-server", "-n", "kube-system", "--timeout=120s"])
        .ok();
    let why = env.wait_apiservice(&name, true, Duration::from_secs(90));
    env.step(&format!("{name} Available: {why}"));
    let logs =
        || env.kubectl().args(["logs", "deploy/metrics-server", "-n", "kube-system"]).ok().stdout;
    let loaded = |text: &str| text.lines().filter(|l| l.contains("loaded client CA")).count();
    assert_eq!(loaded(&logs()), 1, "one CA loaded at start:\n{}", logs());
    env.kubectl().args(["get", "--raw", "/apis/metrics.k8s.io/v1beta1"]).ok();

    env.step("new CA and client certificate; helm upgrade with old+new bundle and new client cert");
    let old_pem = read(&env.assets.tls("aggregation-ca.crt"));
    new_aggregation_ca(&env.assets);
    taint_and_apply(
        &env.assets,
        "tls_locally_signed_cert.aggregation-client[0]",
        "local_file.aggregation-client-crt[0]",
    );
    let mut bundle = old_pem.clone();
    bundle.extend(read(&env.assets.tls("aggregation-ca.crt")));
    upgrade_kube_apiserver(
        &env,
        Helm::V3,
        &json!({"apiserver": {
            "aggregationCaCert": BASE64.encode(&bundle),
            "aggregationClientCert": BASE64.encode(read(&env.assets.tls("aggregation-client.crt"))),
        }}),
    );
    let why = env.wait_apiservice(&name, false, Duration::from_secs(90));
    env.step(&format!("{name} unavailable: {why}"));
    let failed = env.kubectl().args(["get", "--raw", "/apis/metrics.k8s.io/v1beta1"]).fails();
    assert!(failed.stderr.contains("unable to handle the request"), "{failed}");
    assert!(logs().contains("Unable to authenticate the request"), "{}", logs());

    env.step("kubectl rollout restart deploy/metrics-server");
    env.rollout_restart("kube-system", "deploy/metrics-server");
    let why = env.wait_apiservice(&name, true, Duration::from_secs(120));
    env.step(&format!("{name} Available again: {why}"));
    assert_eq!(loaded(&logs()), 2, "the new pod loaded old and new CA:\n{}", logs());
    env.kubectl().args(["get", "--raw", "/apis/metrics.k8s.io/v1beta1"]).ok();
}

/// `automountServiceAccountToken` of a ServiceAccount once it exists (`""` when unset).
fn automount(env: &TestEnv, namespace: &str, name: &str) -> String {
    wait_for(&format!("ServiceAccount {namespace}/{name}"), Duration::from_secs(30), || {
        let out = env
            .kubectl()
            .args(["get", "serviceaccount", name, "-n", namespace])
            .arg("-o=jsonpath={.automountServiceAccountToken}")
            .run();
        if out.success() { Ok(out.stdout.trim().to_string()) } else { Err(out.to_string()) }
    })
}

/// Lokomotive's admission webhook, a real `admission-webhook` process behind its Service's
/// ClusterIP (TLS verified by the chart's caBundle), patches the `default` ServiceAccount of
/// every new namespace, and kube-apiserver survives it: built with Go 1.19 and Kubernetes 1.20's
/// reflect2 1.0.1 it died on the first JSON patch. Without a Ready webhook pod the ClusterIP
/// refuses connections and `failurePolicy: Ignore` lets the ServiceAccount through unpatched.
#[test]
fn mutating_webhook_patches_service_accounts_and_the_apiserver_survives() {
    const WEBHOOK_NS: &str = "lokomotive-system";
    let env = TestEnv::start("webhook");
    env.step("helm install lokomotive (helm 3, --wait)");
    env.install_lokomotive_chart();
    let pod = kubectl_jsonpath(
        &env,
        &["get", "pods", "-n", WEBHOOK_NS, "-l", "k8s-app=admission-webhook-server"],
        "{.items[0].metadata.name}",
    );
    let cluster_ip: Ipv4Addr = kubectl_jsonpath(
        &env,
        &["get", "service", "admission-webhook-server", "-n", WEBHOOK_NS],
        "{.spec.clusterIP}",
    )
    .parse()
    .expect("an IPv4 ClusterIP");
    assert!(cluster_ip.is_loopback(), "the service range is on loopback: {cluster_ip}");
    TcpStream::connect((cluster_ip, 443)).expect("the ClusterIP port forwards to the Ready pod");
    let apiserver_pid = env.component_pid("kube-apiserver").expect("kube-apiserver runs");
    let restarts = env.apiserver.restarts();

    env.step("five namespaces in a row: each default ServiceAccount patched by the webhook");
    for i in 0..5 {
        let ns = format!("patched-{i}");
        env.kubectl().args(["create", "namespace", &ns]).ok();
        assert_eq!(automount(&env, &ns, "default"), "false", "{ns}/default was not patched");
        let readyz = env.kubectl().args(["get", "--raw", "/readyz"]).ok();
        assert_eq!(readyz.stdout.trim(), "ok", "kube-apiserver ready after patch {i}");
    }
    assert_eq!(env.component_pid("kube-apiserver"), Some(apiserver_pid), "same process");
    assert_eq!(env.apiserver.restarts(), restarts, "no restart meanwhile");
    env.kubectl().args(["create", "serviceaccount", "other", "-n", "patched-0"]).ok();
    assert_eq!(automount(&env, "patched-0", "other"), "", "only `default` is patched");
    let logs = env.kubectl().args(["logs", "-n", WEBHOOK_NS, &pod]).ok().stdout;
    for i in 0..5 {
        let line = format!("CREATE ServiceAccount patched-{i}/default: patched");
        assert!(logs.contains(&line), "the webhook served {line:?}:\n{logs}");
    }
    assert!(logs.contains("CREATE ServiceAccount patched-0/other: allowed unchanged"), "{logs}");

    env.step("no Ready webhook pod: connection refused, failurePolicy Ignore");
    env.kubectl()
        .args(["scale", "deploy/admission-webhook-server", "-n", WEBHOOK_NS])
        .arg("--replicas=0")
        .ok();
    wait_for("the webhook pod to go", Duration::from_secs(60), || {
        let out = env.kubectl().args(["get", "pod", &pod, "-n", WEBHOOK_NS]).run();
        if out.success() { Err(out.stdout) } else { Ok(()) }
    });
    let refused =
        TcpStream::connect((cluster_ip, 443)).expect_err("nothing listens without a Ready pod");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
    env.kubectl().args(["create", "namespace", "unpatched"]).ok();
    assert_eq!(automount(&env, "unpatched", "default"), "", "no webhook, no patch");
    assert_eq!(env.component_pid("kube-apiserver"), Some(apiserver_pid));
    assert!(env.dead_components().is_empty(), "{:?}", env.dead_components());
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    }
}

/// A component that exits on its own (kube-controller-manager, SIGKILLed by pid) fails the
/// test at once with its name, exit status and last log lines: a rollout wait that could only
/// time out (its pods are held not Ready) gives up instead of waiting out its 180 s. The
/// teardown reports the death too, and still leaves no process behind.
#[test]
fn a_component_that_dies_fails_the_test_at_once_with_its_log() {
    let env = TestEnv::start("death");
    env.kubelet.set_never_ready(Some(Arc::new(|pod: &Pod| label_is(pod, "app", "web"))));
    env.kubectl().args(["create", "deployment", "web", "--image=web:1"]).ok();
    let pid = env.component_pid("kube-controller-manager").expect("kube-controller-manager runs");
    env.step(&format!("kill -KILL {pid} (kube-controller-manager)"));
    // Not through `Cmd`: it fails as soon as the death is noticed, which is what is tested.
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -KILL {pid}");
    let killed = Instant::now();
    let waited = catch_unwind(AssertUnwindSafe(|| env.wait_rollout("default", "deploy/web")));
    let failed_after = killed.elapsed();
    let failure = panic_text(waited.expect_err("the rollout wait must fail on the death"));
    let deaths = env.dead_components();
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    let death = &deaths[0];
    env.step(&format!(
        "noticed after {:?}, the wait failed after {failed_after:?}",
        death.noticed.saturating_duration_since(killed)
    ));
    assert!(failed_after < Duration::from_secs(5), "failed only after {failed_after:?}");
    assert_eq!((death.component.as_str(), death.pid), ("kube-controller-manager", pid));
    assert_eq!(death.status, "signal: 9 (SIGKILL)");
    let log = read(&death.log);
    let log = String::from_utf8_lossy(&log);
    assert_eq!(death.log_tail.lines().count(), DEATH_LOG_LINES, "{}", death.log_tail);
    assert!(log.trim_end().ends_with(death.log_tail.trim_end()), "the tail of its log");
    assert!(
        failure.contains(&format!(
            "kube-controller-manager (pid {pid}) exited on its own (signal: 9 (SIGKILL))"
        )) && failure.contains(&death.log_tail),
        "the failure names it, its status and its log tail: {failure}"
    );

    env.step("teardown with the death still recorded");
    let teardown = catch_unwind(AssertUnwindSafe(move || drop(env)));
    let report = panic_text(teardown.expect_err("the teardown must fail on the death"));
    assert!(report.contains(&format!("kube-controller-manager (pid {pid})")), "{report}");
    assert!(!report.contains("left behind"), "{report}");
}

/// `curl` of etcd's `/version` over TLS, trusting the etcd CA, with `cert` (certificate and
/// key file) or no client certificate.
fn curl_etcd(env: &TestEnv, cert: Option<(&str, &str)>) -> support::Output {
    let tls = |name: &str| env.assets.tls(name);
    let mut cmd = support::Cmd::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(tls("etcd/server-ca.crt"))
        .arg(format!("https://127.0.0.1:{}/version", env.etcd_port))
        .timeout(Duration::from_secs(30));
    if let Some((crt, key)) = cert {
        cmd = cmd.arg("--cert").arg(tls(crt)).arg("--key").arg(tls(key));
    }
    cmd.run()
}

#[test]
fn etcd_requires_client_certificates_and_the_node_heartbeats_with_the_kubelet_certificate() {
    let env = TestEnv::start_with(
        "etcd-kubelet",
        EnvOptions { audit_users: vec!["kubelet".into()], ..Default::default() },
    );

    env.step("etcd serves TLS with the asset dir's server certificate and refuses a client without a certificate");
    let without = curl_etcd(&env, None);
    assert!(!without.success(), "etcd answered a client without a certificate: {without}");
    let other_ca = env.dir().join("other-ca");
    std::fs::create_dir_all(&other_ca).unwrap();
    let with = curl_etcd(&env, Some(("etcd-client.crt", "etcd-client.key")));
    assert!(with.success() && with.stdout.contains("etcdserver"), "{with}");
    // A client certificate of another CA (the kube CA's admin-like one) is refused too.
    let (cert, key) = support::pki::client_certificate(
        &env.assets.tls("ca.crt"),
        &env.assets.tls("ca.key"),
        "x",
        &[],
    );
    std::fs::write(other_ca.join("c.crt"), cert).unwrap();
    support::pki::write_private(&other_ca.join("c.key"), &key).unwrap();
    let foreign = support::Cmd::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(env.assets.tls("etcd/server-ca.crt"))
        .arg("--cert")
        .arg(other_ca.join("c.crt"))
        .arg("--key")
        .arg(other_ca.join("c.key"))
        .arg(format!("https://127.0.0.1:{}/version", env.etcd_port))
        .timeout(Duration::from_secs(30))
        .run();
    assert!(!foreign.success(), "etcd answered a client of the kube CA: {foreign}");

    env.step(
        "the kube-apiserver reaches etcd with the etcd client certificate of its Secret files",
    );
    env.kubectl().args(["create", "namespace", "stored-in-etcd"]).ok();

    env.step(
        "the node registers and heartbeats as user kubelet (the asset dir's kubelet certificate)",
    );
    let node = env.kubelet.nodes()[0].clone();
    wait_for("a heartbeat of the node as user kubelet", Duration::from_secs(30), || {
        let by_kubelet: Vec<String> = env
            .audited_requests()
            .into_iter()
            .filter(|r| r.user == "kubelet" && r.uri.contains(&format!("/nodes/{node}/status")))
            .filter(|r| r.code == Some(200))
            .map(|r| r.to_string())
            .collect();
        if by_kubelet.is_empty() { Err("none yet".to_string()) } else { Ok(()) }
    });
    let ready = kubectl_jsonpath(
        &env,
        &["get", "node", &node],
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    );
    assert_eq!(ready, "True");
}

#[test]
fn kube_controller_manager_runs_as_the_kubernetes_charts_pod_with_its_token() {
    let kcm_user = "system:serviceaccount:kube-system:kube-controller-manager";
    let env = TestEnv::start_with(
        "kcm-pod",
        EnvOptions { audit_users: vec![kcm_user.into()], ..Default::default() },
    );
    let bootstrap = env.component_pid("kube-controller-manager").expect("the bootstrap kcm");

    env.step("helm install kubernetes: its pod restarts kube-controller-manager with the chart's Secret and its ServiceAccount's token");
    env.install_kubernetes_chart(Helm::V3);
    let first = env.component_pid("kube-controller-manager").expect("kcm for the pod");
    assert_ne!(first, bootstrap, "kube-controller-manager was not restarted for its pod");
    assert_eq!(env.controller_manager.restarts(), 1);
    env.kubectl().args(["create", "namespace", "kcm-pod-works"]).ok();
    wait_for("a token for the new namespace's default ServiceAccount", ROLLOUT, || {
        let name = kubectl_jsonpath(
            &env,
            &["-n", "kcm-pod-works", "get", "serviceaccount", "default"],
            "{.secrets[0].name}",
        );
        if name.is_empty() { Err("none yet".to_string()) } else { Ok(()) }
    });
    let as_pod = env
        .audited_requests()
        .into_iter()
        .filter(|r| r.user == kcm_user && r.code == Some(200))
        .count();
    assert!(as_pod > 0, "no request of kube-controller-manager as {kcm_user}");

    env.step("kubectl rollout restart of its Deployment restarts the process again");
    env.rollout_restart("kube-system", "deployment/kube-controller-manager");
    let second = env.component_pid("kube-controller-manager").expect("kcm for the new pod");
    assert_ne!(second, first);
    assert_eq!(env.controller_manager.restarts(), 2);

    env.step("the lokoctl double upgrades kubernetes, and kubelet with --upgrade-kubelets");
    env.install_kubelet_chart(Helm::V3);
    let revisions = |release: &str| {
        let out =
            env.helm(Helm::V3).args(["history", release, "-n", "kube-system", "-o", "json"]).ok();
        helm_history_rows(&out.stdout)
            .into_iter()
            .map(|(rev, status, _)| (rev, status))
            .max_by_key(|(rev, _)| *rev)
    };
    env.lokoctl().args(["cluster", "apply", "--confirm"]).ok();
    assert_eq!(revisions("kubernetes"), Some((2, "deployed".to_string())));
    assert_eq!(revisions("kubelet"), Some((1, "deployed".to_string())));
    env.lokoctl().args(["cluster", "apply", "--confirm", "--upgrade-kubelets"]).ok();
    assert_eq!(revisions("kubernetes"), Some((3, "deployed".to_string())));
    assert_eq!(revisions("kubelet"), Some((2, "deployed".to_string())));
}

/// `terraform taint` of each of `resources` (bootkube addresses), then one full
/// `terraform apply -parallelism=1`, as lokoctl's rotation does.
fn taint_all_and_apply(assets: &Assets, resources: &[&str]) {
    let module = assets.bootkube_module();
    for resource in resources {
        assets.terraform().args(["taint", &format!("{module}.{resource}")]).ok();
    }
    assets
        .terraform()
        .args(["apply", "-auto-approve", "-input=false", "-no-color", "-parallelism=1"])
        .ok();
}

#[test]
fn helm_upgrade_with_new_certificates_restarts_kube_apiserver_on_every_file_of_its_secret() {
    let env = TestEnv::start("apiserver-files");
    env.install_kube_apiserver_chart(Helm::V3);
    let old_serving = file_fingerprints(&env.assets.tls("apiserver.crt"))[0].clone();
    assert_eq!(env.apiserver_serving_fingerprint().unwrap(), old_serving);
    let restarts = env.apiserver.restarts();

    env.step(
        "new apiserver and etcd client certificates and keys (lokoctl's taints), terraform apply",
    );
    taint_all_and_apply(
        &env.assets,
        &[
            "tls_private_key.apiserver",
            "tls_locally_signed_cert.apiserver",
            "tls_private_key.client",
            "tls_locally_signed_cert.client",
        ],
    );
    let new_serving = file_fingerprints(&env.assets.tls("apiserver.crt"))[0].clone();
    assert_ne!(new_serving, old_serving);
    assert_eq!(
        env.apiserver_serving_fingerprint().unwrap(),
        old_serving,
        "served before the upgrade"
    );

    env.step("helm upgrade kube-apiserver with the rendered values: the pod rolls, the process restarts on the new files");
    env.helm(Helm::V3)
        .args(["upgrade", "kube-apiserver"])
        .arg(env.assets.chart("kube-system", "kube-apiserver"))
        .args(["--namespace", "kube-system", "--wait", "--timeout", "3m", "-f"])
        .arg(env.assets.chart_values("kube-system", "kube-apiserver"))
        .ok();
    wait_for("kube-apiserver to serve the new certificate", ROLLOUT, || {
        match env.apiserver_serving_fingerprint() {
            Ok(seen) if seen == new_serving => Ok(()),
            other => Err(format!("serves {other:?}")),
        }
    });
    assert!(env.apiserver.restarts() > restarts);
    // Every key of Secret `kube-system/kube-apiserver` a flag names, as the asset dir's file.
    for key in support::control_plane::SECRET_FILES {
        let file = env.assets.tls(key);
        assert_eq!(
            env.apiserver_mounted_file(key),
            read(&file),
            "kube-apiserver runs with another {key} than the asset dir's"
        );
    }

    env.step("kube-apiserver reaches etcd with the new client certificate: a write is stored");
    env.kubectl().args(["create", "namespace", "after-new-certificates"]).ok();
    env.kubectl().args(["get", "namespace", "after-new-certificates"]).ok();
}

/// lokoctl's taints of the etcd PKI: the CA certificate (its key kept) and every etcd leaf
/// certificate and key.
const ETCD_TAINTS: [&str; 7] = [
    "tls_self_signed_cert.etcd-ca",
    "tls_private_key.server",
    "tls_locally_signed_cert.server",
    "tls_private_key.peer",
    "tls_locally_signed_cert.peer",
    "tls_private_key.client",
    "tls_locally_signed_cert.client",
];

/// The trigger names of `null_resource.copy-controller-secrets[0]` in the state.
fn copy_triggers(env: &TestEnv) -> Vec<String> {
    let out = env.terraform().args(["show", "-json"]).ok();
    let state: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut found = Vec::new();
    let mut modules = vec![&state["values"]["root_module"]];
    while let Some(module) = modules.pop() {
        for resource in module["resources"].as_array().into_iter().flatten() {
            if resource["address"]
                .as_str()
                .is_some_and(|a| a.ends_with("null_resource.copy-controller-secrets[0]"))
            {
                found.extend(resource["values"]["triggers"].as_object().unwrap().keys().cloned());
            }
        }
        modules.extend(module["child_modules"].as_array().into_iter().flatten());
    }
    found.sort();
    found
}

#[test]
fn new_etcd_certificates_reach_the_node_over_ssh_and_etcd_restarts_on_them() {
    let env = TestEnv::start("etcd-copy");
    let old_server = file_fingerprints(&env.assets.tls("etcd/server.crt"))[0].clone();
    env.step("at install copy-controller-secrets put the asset dir's etcd files on the node, and etcd serves them");
    assert_eq!(
        read(&env.node.path("etc/ssl/etcd/etcd/server.crt")),
        read(&env.assets.tls("etcd/server.crt"))
    );
    assert_eq!(
        read(&env.node.path("etc/ssl/etcd/etcd-client.crt")),
        read(&env.assets.tls("etcd-client.crt"))
    );
    assert_eq!(env.etcd_serving_fingerprint().unwrap(), old_server);
    assert_eq!(
        copy_triggers(&env),
        ["controller_id", "etcd_ca_cert", "etcd_peer_cert", "etcd_server_cert"]
    );

    env.step(
        "lokoctl's etcd taints and terraform apply -parallelism=1: the copy runs again over SSH",
    );
    taint_all_and_apply(&env.assets, &ETCD_TAINTS);
    let new_server = file_fingerprints(&env.assets.tls("etcd/server.crt"))[0].clone();
    assert_ne!(new_server, old_server);
    assert_eq!(env.etcd.restarts(), 1, "etcd was not restarted once by the node's systemctl");
    assert_eq!(
        env.etcd_serving_fingerprint().unwrap(),
        new_server,
        "etcd does not serve the new certificate"
    );
    assert_eq!(
        read(&env.node.path("etc/ssl/etcd/etcd/server.crt")),
        read(&env.assets.tls("etcd/server.crt"))
    );
    assert_eq!(
        file_fingerprints(&env.node.path("etc/ssl/etcd.old/etcd/server.crt"))[0],
        old_server,
        "the old files are not kept in /etc/ssl/etcd.old"
    );

    env.step("kube-apiserver reaches the restarted etcd (the CA key was kept): a write is stored");
    wait_for("a namespace stored after the etcd restart", ROLLOUT, || {
        let out = env.kubectl().args(["create", "namespace", "after-etcd-restart"]).run();
        if out.success() { Ok(()) } else { Err(out.to_string()) }
    });
    assert!(env.dead_components().is_empty(), "{:?}", env.dead_components());
}

#[test]
fn lokomotive_v0_7_does_not_push_new_etcd_certificates() {
    let env = TestEnv::start_with(
        "etcd-copy-v07",
        EnvOptions {
            assets: AssetOptions { lokomotive: Lokomotive::V0_7, ..AssetOptions::default() },
            ..Default::default()
        },
    );
    let old_server = file_fingerprints(&env.assets.tls("etcd/server.crt"))[0].clone();
    assert_eq!(env.etcd_serving_fingerprint().unwrap(), old_server);
    assert_eq!(copy_triggers(&env), ["controller_id"]);

    env.step("the same taints and apply: nothing reaches the node, etcd keeps serving the old certificate");
    taint_all_and_apply(&env.assets, &ETCD_TAINTS);
    assert_ne!(file_fingerprints(&env.assets.tls("etcd/server.crt"))[0], old_server);
    assert_eq!(env.etcd.restarts(), 0);
    assert_eq!(file_fingerprints(&env.node.path("etc/ssl/etcd/etcd/server.crt"))[0], old_server);
    assert_eq!(env.etcd_serving_fingerprint().unwrap(), old_server);
    assert!(!env.node.path("etc/ssl/etcd.old").exists());

    env.step("v0.7's kubelet chart: no ca-syncer, no kubernetesCACert; its pod restarts the kubelet on the node's files as they are");
    let values =
        std::fs::read_to_string(env.assets.chart_values("kube-system", "kubelet")).unwrap();
    assert!(!values.contains("kubernetesCACert"), "{values}");
    let ca_copy = env.node.ca_copy();
    env.install_kubelet_chart(Helm::V3);
    let init = kubectl_jsonpath(
        &env,
        &["-n", "kube-system", "get", "daemonset", "kubelet"],
        "{.spec.template.spec.initContainers}",
    );
    assert!(init.is_empty(), "the v0.7 kubelet DaemonSet has init containers: {init}");
    assert_eq!(env.node.ca_copy(), ca_copy);
}
