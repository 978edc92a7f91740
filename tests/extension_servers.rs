//! `kubectl certrotate extension-servers` against a real control plane: discovery, restarts
//! compared side by side with real kubectl, failures of every kind, and a wait that rides
//! through an API server restart.

mod common;
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{
    EnvOptions, ExtApiServer, Helm, KubeletConfig, NEVER_READY_LABEL, TestEnv, wait_for,
};

const MINUTES_3: Duration = Duration::from_secs(180);

/// `kubectl apply -f` of a JSON document written to the test's dir.
fn apply(env: &TestEnv, name: &str, doc: &Value) {
    let path = env.dir().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    env.kubectl().arg("apply").arg("-f").arg(&path).ok();
}

/// A Deployment + ExternalName Service + APIService named after `name` in `default`, whose
/// backend never answers: enough for discovery and restarts.
fn backed_apiservice(name: &str, template_labels: Value, deployment_spec: Value) -> Value {
    backed_by("Deployment", name, template_labels, deployment_spec)
}

/// [`backed_apiservice`] with a workload of another `kind` (DaemonSet, StatefulSet).
fn backed_by(kind: &str, name: &str, template_labels: Value, workload_spec: Value) -> Value {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": template_labels},
                     "spec": {"containers": [{"name": name, "image": format!("{name}:test")}]}},
    });
    if kind != "DaemonSet" {
        spec["replicas"] = json!(1);
    }
    for (k, v) in workload_spec.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": kind,
         "metadata": {"name": name, "namespace": "default"}, "spec": spec},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "namespace": "default"},
         "spec": {"type": "ExternalName", "externalName": "localhost", "selector": {"app": name},
                  "ports": [{"port": 443}]}},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": format!("v1.{name}.example.com")},
         "spec": {"group": format!("{name}.example.com"), "version": "v1",
                  "service": {"namespace": "default", "name": name, "port": 443},
                  "insecureSkipTLSVerify": true, "groupPriorityMinimum": 100, "versionPriority": 100}},
    ]})
}

fn restarted_at(env: &TestEnv, namespace: &str, deployment: &str) -> String {
    env.kubectl()
        .args(["-n", namespace, "get", "deployment", deployment, "-o"])
        .arg(
            r#"jsonpath={.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}"#,
        )
        .ok()
        .stdout
}

/// The shape of a timestamp with every digit replaced: `DDDD-DD-DDTDD:DD:DDZ`.
fn form(timestamp: &str) -> String {
    timestamp.chars().map(|c| if c.is_ascii_digit() { 'D' } else { c }).collect()
}

/// The operation and annotation fields `manager` owns on deployment kube-system/metrics-server
/// (a later writer of the same field takes it over, so read right after each restart).
fn managed_restart_fields(env: &TestEnv, manager: &str) -> (Value, Value) {
    let out = env
        .kubectl()
        .args(["-n", "kube-system", "get", "deployment", "metrics-server", "-o", "json"])
        .arg("--show-managed-fields")
        .ok();
    let deployment: Value = serde_json::from_str(&out.stdout).unwrap();
    let entry = deployment["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["manager"] == manager)
        .unwrap_or_else(|| panic!("no managedFields entry of {manager}: {deployment:#}"))
        .clone();
    let annotations =
        entry["fieldsV1"]["f:spec"]["f:template"]["f:metadata"]["f:annotations"].clone();
    assert!(annotations.get("f:kubectl.kubernetes.io/restartedAt").is_some(), "{entry:#}");
    (entry["operation"].clone(), annotations)
}

fn server<'a>(report: &'a Value, api_service: &str) -> &'a Value {
    report["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["apiService"] == api_service)
        .unwrap_or_else(|| panic!("no {api_service} in {report:#}"))
}

#[test]
fn discovers_restarts_like_kubectl_and_checks_the_loaded_ca() {
    // Pods become Ready 3 s after they start, so the two rollout watchers overlap.
    let kubelet = KubeletConfig { ready_delay: Duration::from_secs(3), ..Default::default() };
    let env = TestEnv::start_with("ext-servers", EnvOptions { kubelet, ..Default::default() });
    let metrics = ExtApiServer::metrics_server();
    env.deploy_ext_apiserver(&metrics);
    env.wait_apiservice(&metrics.apiservice(), true, MINUTES_3);
    env.step("metrics-server available");

    // An APIService whose Service has no selector, and one whose selector matches nothing.
    apply(
        &env,
        "orphans",
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "no-selector", "namespace": "default"},
             "spec": {"type": "ExternalName", "externalName": "localhost", "ports": [{"port": 443}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "no-match", "namespace": "default"},
             "spec": {"type": "ExternalName", "externalName": "localhost", "selector": {"app": "nothing-here"},
                      "ports": [{"port": 443}]}},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1.no-selector.example.com"},
             "spec": {"group": "no-selector.example.com", "version": "v1", "insecureSkipTLSVerify": true,
                      "service": {"namespace": "default", "name": "no-selector", "port": 443},
                      "groupPriorityMinimum": 100, "versionPriority": 100}},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1.no-match.example.com"},
             "spec": {"group": "no-match.example.com", "version": "v1", "insecureSkipTLSVerify": true,
                      "service": {"namespace": "default", "name": "no-match", "port": 443},
                      "groupPriorityMinimum": 100, "versionPriority": 100}},
        ]}),
    );

    // Without -y and with no terminal to ask on, a restart is refused before anything changes.
    let before = restarted_at(&env, "kube-system", "metrics-server");
    let refused = env.certrotate().args(["extension-servers", "--restart"]).fails();
    assert!(refused.stderr.contains("without confirmation: pass -y/--yes"), "{refused}");
    assert_eq!(restarted_at(&env, "kube-system", "metrics-server"), before);

    let listed = env.certrotate().args(["extension-servers", "-o", "json"]).ok();
    let report: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(report["kind"], "ExtensionServers");
    assert_eq!(
        report["servers"].as_array().unwrap().len(),
        3,
        "only APIServices with a service: {report:#}"
    );
    let m = server(&report, "v1beta1.metrics.k8s.io");
    assert_eq!(m["service"], "kube-system/metrics-server");
    assert_eq!(m["available"], "True");
    assert_eq!(
        m["workloads"],
        json!([{"kind": "Deployment", "namespace": "kube-system", "name": "metrics-server"}])
    );
    assert_eq!(m["pods"].as_array().unwrap().len(), 1);
    assert_eq!(m["pods"][0]["ready"], true);
    let problem = |name: &str| server(&report, name)["problems"][0].as_str().unwrap().to_string();
    assert!(problem("v1.no-selector.example.com").contains("has no selector"));
    assert!(problem("v1.no-match.example.com").contains("app=nothing-here"));
    let table = env.certrotate().args(["extension-servers"]).ok();
    let line = table.stdout.lines().find(|l| l.starts_with("v1beta1.metrics.k8s.io")).unwrap();
    assert!(
        line.contains("deployment/metrics-server") && line.contains("1/1") && line.contains("True"),
        "{line}"
    );

    // The listing says which cluster it read, and that it is the asset dir's.
    let server = format!("https://127.0.0.1:{}", env.assets.api_port);
    let cluster = &report["cluster"];
    assert_eq!(cluster["server"], server.as_str(), "{cluster:#}");
    assert!(cluster["kubeconfig"].as_str().unwrap().contains("from $KUBECONFIG"), "{cluster:#}");
    assert_eq!(cluster["assetsDir"], env.assets.dir.to_str().unwrap(), "{cluster:#}");
    assert_eq!(cluster["assetsDirCluster"], true, "{cluster:#}");
    assert!(cluster["reason"].is_null(), "{cluster:#}");
    let header = table.stdout.lines().next().unwrap();
    assert_eq!(
        header,
        format!(
            "cluster: {server} (kubeconfig {} from $KUBECONFIG): the cluster of asset dir {}",
            env.kubeconfig().display(),
            env.assets.dir.display()
        )
    );
    // Another cluster's asset dir: the listing still reads this cluster, and says it is not
    // that asset dir's; without an asset dir it says it could not compare.
    use common::sample_assets::{SampleOptions, write_sample_assets};
    let other = env.dir().join("other-assets");
    write_sample_assets(&other, &SampleOptions::default()).unwrap();
    let listed =
        env.certrotate().args(["extension-servers", "-o", "json", "--assets-dir"]).arg(&other).ok();
    let cluster = &serde_json::from_str::<Value>(&listed.stdout).unwrap()["cluster"];
    assert_eq!(cluster["server"], server.as_str(), "{cluster:#}");
    assert_eq!(cluster["assetsDirCluster"], false, "{cluster:#}");
    assert!(
        cluster["reason"].as_str().unwrap().contains("points at another cluster"),
        "{cluster:#}"
    );
    let table = env.certrotate().args(["extension-servers", "--assets-dir"]).arg(&other).ok();
    let header = table.stdout.lines().next().unwrap();
    assert!(
        header.starts_with(&format!("cluster: {server} (kubeconfig "))
            && header.contains("NOT the asset dir's cluster"),
        "{header}"
    );
    let nowhere = env.dir().join("no-such-assets");
    let listed = env
        .certrotate()
        .args(["extension-servers", "-o", "json", "--assets-dir"])
        .arg(&nowhere)
        .ok();
    let cluster = &serde_json::from_str::<Value>(&listed.stdout).unwrap()["cluster"];
    assert!(cluster["assetsDirCluster"].is_null() && cluster["assetsDir"].is_null(), "{cluster:#}");
    assert!(cluster["reason"].as_str().unwrap().contains("does not exist"), "{cluster:#}");

    // kubectl first: the annotation form to match.
    env.rollout_restart("kube-system", "deployment/metrics-server");
    let by_kubectl = restarted_at(&env, "kube-system", "metrics-server");
    assert!(!by_kubectl.is_empty());
    let kubectl_fields = managed_restart_fields(&env, "kubectl-rollout");

    // Then ours, with real `kubectl rollout status` watching the same rollout.
    let ours = env
        .certrotate()
        .args(["extension-servers", "--restart", "-y", "--timeout", "3m", "-o", "json"])
        .spawn();
    wait_for("our restart patch", MINUTES_3, || {
        let now = restarted_at(&env, "kube-system", "metrics-server");
        if now != by_kubectl { Ok(()) } else { Err(format!("still {now}")) }
    });
    let watched = env
        .kubectl()
        .args([
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/metrics-server",
            "--timeout=180s",
        ])
        .ok();
    let ours = ours.wait();
    let by_us = restarted_at(&env, "kube-system", "metrics-server");
    assert_eq!(
        form(&by_us),
        form(&by_kubectl),
        "same RFC 3339 form: ours {by_us}, kubectl's {by_kubectl}"
    );

    let final_line = watched.stdout.lines().last().unwrap().to_string();
    assert_eq!(final_line, "deployment \"metrics-server\" successfully rolled out");
    assert!(
        ours.stderr.contains(&final_line),
        "our progress ends as kubectl's does:\n{}",
        ours.stderr
    );
    for line in watched.stdout.lines() {
        assert!(ours.stderr.contains(line), "kubectl saw {line:?}, we did not:\n{}", ours.stderr);
    }
    // Orphan APIServices were reported, so the exit code is 1, yet metrics-server restarted.
    assert_eq!(ours.code(), Some(1), "{ours}");
    let report: Value = serde_json::from_str(&ours.stdout).unwrap();
    assert_eq!(report["restarts"].as_array().unwrap().len(), 1);
    assert_eq!(report["restarts"][0]["ok"], true, "{report:#}");
    assert_eq!(report["availableAfterRestart"]["v1beta1.metrics.k8s.io"], "True", "{report:#}");

    // Our patch is recorded as kubectl's was: an Update owning the same annotation field.
    let ours_fields = managed_restart_fields(&env, "kubectl-certrotate");
    assert_eq!(ours_fields, kubectl_fields);

    // The restarted server loaded the asset dir's aggregation CA (from its log), not the kube CA.
    let agg = env.assets.tls("aggregation-ca.crt");
    let check = env
        .certrotate()
        .arg("extension-servers")
        .arg("--check-ca")
        .arg(&agg)
        .args(["-o", "json"])
        .ok();
    let report: Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(report["cluster"]["assetsDirCluster"], true, "{report:#}");
    let checks = report["caChecks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{report:#}");
    assert_eq!(checks[0]["loaded"], true, "{report:#}");
    assert!(checks[0]["ca"].as_str().unwrap().starts_with("CN=kubernetes-front-proxy-ca"));
    let kube_ca = env.assets.tls("ca.crt");
    let check = env.certrotate().arg("extension-servers").arg("--check-ca").arg(&kube_ca).fails();
    assert_eq!(check.code(), Some(1));
    assert!(
        check.stdout.lines().any(|l| l.contains("metrics-server") && l.trim_end().ends_with("NO")),
        "{check}"
    );

    // A --check-ca file that is not a certificate is refused before anything is read.
    let bad = env.dir().join("not-a-ca.pem");
    std::fs::write(&bad, "hello").unwrap();
    let refused = env.certrotate().arg("extension-servers").arg("--check-ca").arg(&bad).fails();
    assert!(refused.stderr.contains("not-a-ca.pem: no PEM CERTIFICATE block"), "{refused}");
}

#[test]
fn every_failure_is_reported_after_all_restarts_were_attempted() {
    let env = TestEnv::start("ext-failures");
    let metrics = ExtApiServer::metrics_server();
    env.deploy_ext_apiserver(&metrics);
    let never_ready = json!({"app": "x", NEVER_READY_LABEL: "true"});
    let labels = |name: &str| {
        let mut l = never_ready.clone();
        l["app"] = json!(name);
        l
    };
    apply(&env, "stuck", &backed_apiservice("stuck", labels("stuck"), json!({})));
    apply(
        &env,
        "deadline",
        &backed_apiservice("deadline", labels("deadline"), json!({"progressDeadlineSeconds": 5})),
    );
    apply(
        &env,
        "paused",
        &backed_apiservice("paused", json!({"app": "paused"}), json!({"paused": true})),
    );
    // Healthy workloads of the other two kinds `kubectl rollout` supports.
    apply(
        &env,
        "ds",
        &backed_by("DaemonSet", "node-agent", json!({"app": "node-agent"}), json!({})),
    );
    let sts_spec = json!({"serviceName": "store"});
    apply(&env, "sts", &backed_by("StatefulSet", "store", json!({"app": "store"}), sts_spec));
    env.wait_apiservice(&metrics.apiservice(), true, MINUTES_3);

    // kubectl's own verdicts on the same objects, to compare with ours.
    let kubectl_paused = env.kubectl().args(["rollout", "restart", "deployment/paused"]).fails();
    assert!(
        kubectl_paused
            .stderr
            .contains("can't restart paused deployment (run rollout resume first)")
    );

    let out = env
        .certrotate()
        .args(["extension-servers", "--restart", "-y", "--timeout", "40s", "-o", "json"])
        .fails();
    assert_eq!(out.code(), Some(1), "{out}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let result = |name: &str| {
        report["restarts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["workload"]["name"] == name)
            .unwrap_or_else(|| panic!("no restart of {name}: {report:#}"))
            .clone()
    };
    assert_eq!(result("metrics-server")["ok"], true, "the healthy one still restarted: {report:#}");
    assert_eq!(report["restarts"].as_array().unwrap().len(), 6, "every workload was attempted");
    for healthy in ["node-agent", "store"] {
        assert_eq!(result(healthy)["ok"], true, "{healthy}: {report:#}");
    }
    // kubectl's verdict on both finished rollouts is the last thing our progress said of them
    // (plain progress lines read `HH:MM:SS <workload>: <message>`).
    for (workload, shown) in [
        ("daemonset/node-agent", "daemonset/node-agent -n default: "),
        ("statefulset/store", "statefulset/store -n default: "),
    ] {
        let status = env.kubectl().args(["rollout", "status", workload, "--timeout=60s"]).ok();
        let kubectl_last = status.stdout.lines().last().unwrap();
        let ours_last = out
            .stderr
            .lines()
            .filter_map(|line| line.split_once(' ')?.1.strip_prefix(shown))
            .rfind(|message| *message != "restarted" && !message.starts_with("done: "))
            .unwrap_or_else(|| panic!("no progress of {workload}:\n{}", out.stderr));
        assert_eq!(ours_last, kubectl_last, "{workload}");
    }
    let paused = result("paused");
    assert_eq!(paused["ok"], false);
    assert_eq!(
        paused["message"],
        "deployment/paused -n default: can't restart paused deployment (run rollout resume first)"
    );
    let stuck = result("stuck")["message"].as_str().unwrap().to_string();
    assert!(
        stuck.starts_with("timed out after 40s waiting for deployment/stuck -n default: Waiting for deployment \"stuck\" rollout to finish"),
        "names the workload and what it still waits for: {stuck}"
    );
    let deadline = result("deadline")["message"].as_str().unwrap().to_string();
    assert_eq!(
        deadline,
        "deployment/deadline -n default: deployment \"deadline\" exceeded its progress deadline"
    );
    // kubectl rollout status agrees on the same object.
    let kubectl_deadline =
        env.kubectl().args(["rollout", "status", "deployment/deadline", "--timeout=60s"]).fails();
    assert!(
        kubectl_deadline.stderr.contains("deployment \"deadline\" exceeded its progress deadline"),
        "{kubectl_deadline}"
    );
    // Plain progress lines on a non-terminal, one per workload event.
    assert!(out.stderr.contains("deployment/paused -n default: FAILED"), "{}", out.stderr);
}

#[test]
fn waits_ride_through_an_api_server_restart() {
    let kubelet = KubeletConfig { ready_delay: Duration::from_secs(6), ..Default::default() };
    let env =
        TestEnv::start_with("ext-apiserver-restart", EnvOptions { kubelet, ..Default::default() });
    let metrics = ExtApiServer::metrics_server();
    env.deploy_ext_apiserver(&metrics);
    env.wait_apiservice(&metrics.apiservice(), true, MINUTES_3);
    let before = restarted_at(&env, "kube-system", "metrics-server");

    let ours =
        env.certrotate().args(["extension-servers", "--restart", "-y", "--timeout", "4m"]).spawn();
    wait_for("our restart patch", MINUTES_3, || {
        let now = restarted_at(&env, "kube-system", "metrics-server");
        if now != before { Ok(()) } else { Err("not patched yet".into()) }
    });
    let restarts = env.apiserver.restarts();
    env.block_on(env.apiserver.restart("test: the API drops in the middle of a rollout wait"))
        .unwrap();
    assert_eq!(env.apiserver.restarts(), restarts + 1);
    let ours = ours.wait();
    assert!(ours.success(), "the wait survived the API server restart: {ours}");
    assert!(ours.stdout.contains("restarted 1 workload(s), 0 failed"), "{ours}");
    assert!(ours.stdout.contains("apiservice v1beta1.metrics.k8s.io: Available=True"), "{ours}");

    // The kube-apiserver workload itself: restarting it drops the API until the new process
    // is up, and the helper's wait rides through that.
    env.install_kube_apiserver_chart(Helm::V3);
    let restarts = env.apiserver.restarts();
    let messages = std::sync::Mutex::new(Vec::new());
    let record = |m: &str| messages.lock().unwrap().push(m.to_string());
    let workload = env
        .block_on(certrotate::k8s::rollout::restart_kube_apiserver(&env.client, MINUTES_3, &record))
        .unwrap();
    assert_eq!(workload.to_string(), "deployment/kube-apiserver -n kube-system");
    assert!(env.apiserver.restarts() > restarts, "the real API server process was restarted");
    let messages = messages.into_inner().unwrap();
    assert_eq!(
        messages.last().unwrap(),
        "deployment \"kube-apiserver\" successfully rolled out",
        "{messages:?}"
    );

    // The single-object helpers the rotation steps use.
    use certrotate::k8s::objects::{self, Deleted};
    let client = &env.client;
    let agg = env
        .block_on(objects::secret_certificates(
            client,
            "kube-system",
            "kube-apiserver",
            "aggregation-ca.crt",
        ))
        .unwrap();
    assert_eq!(agg.len(), 1);
    assert_eq!(agg[0].subject, "CN=kubernetes-front-proxy-ca");
    let missing =
        env.block_on(objects::secret_certificates(client, "kube-system", "kube-apiserver", "nope"));
    assert!(
        missing.unwrap_err().to_string().contains("secret kube-system/kube-apiserver has no nope")
    );
    let cm = |c| {
        env.block_on(objects::delete_configmap(
            c,
            "kube-system",
            "extension-apiserver-authentication",
        ))
        .unwrap()
    };
    assert_eq!(cm(client), Deleted::Removed);
    assert_eq!(cm(client), Deleted::WasAbsent);
    apply(
        &env,
        "webhook",
        &json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "admission-webhook-server"}, "webhooks": []}),
    );
    let mwc =
        |c| env.block_on(objects::delete_mutating_webhook(c, "admission-webhook-server")).unwrap();
    assert_eq!(mwc(client), Deleted::Removed);
    assert_eq!(mwc(client), Deleted::WasAbsent);
}

#[test]
fn restart_refuses_a_kubeconfig_of_another_cluster() {
    use common::sample_assets::{SampleOptions, write_sample_assets};
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours");
    write_sample_assets(&ours, &SampleOptions::default()).unwrap();
    // Another cluster's kubeconfig, pointing at a port where nothing listens: the refusal
    // must come before any API call.
    let other = tmp.path().join("other");
    let opts = SampleOptions {
        api_server: Some("https://127.0.0.1:9".into()),
        fresh_keys: true,
        ..Default::default()
    };
    write_sample_assets(&other, &opts).unwrap();
    let kubeconfig = other.join("cluster-assets/auth/kubeconfig");
    let run = common::run(
        &[
            "extension-servers",
            "--restart",
            "-y",
            "--assets-dir",
            ours.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("refusing to change the cluster:"), "{}", run.stderr);
    assert!(
        run.stderr.contains("does not trust") && run.stderr.contains("--kubeconfig"),
        "{}",
        run.stderr
    );
}
