//! Watches say why they fail. A watch the API refuses (RBAC: patch allowed, watch not) fails at
//! once with the API's message, on the real control plane, in the words kubectl logs; one
//! that keeps failing for a transient reason is retried until `--timeout`, whose message then
//! carries the last error. `--timeout 0` means no limit, as for `kubectl rollout status`, and a
//! watch that is idle for longer than `--request-timeout` is not cut by it. A wait across a
//! kube-apiserver restart asks the restarted server for a handful of requests a second, counted
//! by the server's own audit log.

mod common;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certrotate::cli::KubeOpts;
use certrotate::k8s::{Connection, rollout};
use common::sample_assets::{SampleOptions, write_sample_assets};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::{Value, json};
use support::{AuditedRequest, EnvOptions, ExtApiServer, KubeletConfig, TestEnv, wait_for};

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
    let kubeconfig = env.user_kubeconfig(USER, &[]);
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

/// The user the tool runs as in the restart test, so that the audit log tells its requests from
/// the harness's (which uses the admin kubeconfig).
const WAITER: &str = "certrotate-waiter";
/// How long the rollout stays held once kube-apiserver is back: the wait goes on meanwhile.
const HELD_AFTER_RESTART: Duration = Duration::from_secs(10);
/// "A handful of requests a second", on average over the restart and the hold.
const MAX_REQUESTS_PER_SECOND: u64 = 5;

/// `observedGeneration generation replicas updatedReplicas` of deployment
/// kube-system/metrics-server.
fn rollout_status(env: &TestEnv) -> String {
    let fields = "{.status.observedGeneration} {.metadata.generation} {.status.replicas} \
                  {.status.updatedReplicas}";
    let out = env.kubectl().args(["-n", "kube-system", "get", "deployment", "metrics-server"]);
    out.arg("-o").arg(format!("jsonpath={fields}")).ok().stdout
}

/// The requests received from `from` to `to`, and how many fell in each second of it.
fn received_between(
    requests: &[AuditedRequest],
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> (Vec<&AuditedRequest>, BTreeMap<i64, usize>) {
    let within: Vec<&AuditedRequest> =
        requests.iter().filter(|r| r.received >= from && r.received <= to).collect();
    let mut per_second = BTreeMap::new();
    for r in &within {
        *per_second.entry(r.received.duration_since(from).as_secs()).or_default() += 1;
    }
    (within, per_second)
}

#[test]
fn a_wait_across_an_api_server_restart_makes_a_handful_of_requests_a_second() {
    let options = EnvOptions { audit_users: vec![WAITER.into()], ..Default::default() };
    let env = TestEnv::start_with("watch-restart", options);
    let metrics = ExtApiServer::metrics_server();
    env.deploy_ext_apiserver(&metrics);
    env.wait_apiservice(&metrics.apiservice(), true, MINUTES_3);
    // New metrics-server pods run but stay not Ready until released: the rollout, and the
    // wait, go on across the restart, on a Deployment that does not change meanwhile.
    let held = |pod: &Pod| pod.labels().get("app").is_some_and(|app| app == "metrics-server");
    env.kubelet.set_never_ready(Some(Arc::new(held)));
    let kubeconfig = env.user_kubeconfig(WAITER, &["system:masters"]);
    let wait = env
        .certrotate()
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["extension-servers", "--restart", "-y", "--timeout", "3m", "-v"])
        .spawn();
    wait_for("the rollout held: 2 replicas, 1 updated, status observed", MINUTES_3, || {
        let status = rollout_status(&env);
        let fields: Vec<&str> = status.split(' ').collect();
        match fields[..] {
            [observed, generation, "2", "1"] if observed == generation => Ok(()),
            _ => Err(status),
        }
    });
    wait_for("the tool's watch of the rollout", MINUTES_3, || {
        let requests = env.audited_requests();
        let watching =
            requests.iter().any(|r| r.verb == "watch" && r.uri.contains("/deployments?"));
        if watching { Ok(()) } else { Err(format!("{} requests, no watch yet", requests.len())) }
    });
    env.step("the tool waits for the held rollout");

    let from = jiff::Timestamp::now();
    env.block_on(env.apiserver.restart("test: the API restarts under a rollout wait")).unwrap();
    env.step("kube-apiserver restarted");
    std::thread::sleep(HELD_AFTER_RESTART);
    let to = jiff::Timestamp::now();
    env.kubelet.set_never_ready(None);
    let wait = wait.wait();
    assert!(wait.success(), "the wait completes once the rollout does: {wait}");
    assert!(wait.stdout.contains("restarted 1 workload(s), 0 failed"), "{wait}");

    let requests = env.audited_requests();
    let (within, per_second) = received_between(&requests, from, to);
    let secs = to.duration_since(from).as_secs_f64();
    let gone = wait.stderr.lines().filter(|l| l.contains("(410 Gone)")).count();
    env.step(&format!(
        "{} requests of the tool in the {secs:.1} s from the restart to the release \
         (per second: {per_second:?}); {gone} lines of its -v said 410 Gone",
        within.len()
    ));
    let listing: Vec<String> = within.iter().take(40).map(|r| r.to_string()).collect();
    assert!(
        within.len() as f64 <= MAX_REQUESTS_PER_SECOND as f64 * secs,
        "{} requests in {secs:.1} s, more than {MAX_REQUESTS_PER_SECOND} a second; the first \
         ones:\n{}",
        within.len(),
        listing.join("\n")
    );
    // After the restart the wait read the present state by a list of that one Deployment.
    assert!(
        within.iter().any(|r| r.verb == "list"
            && r.uri.contains("/namespaces/kube-system/deployments?")
            && r.uri.contains("fieldSelector=metadata.name%3Dmetrics-server")),
        "no list of deployment metrics-server after the restart:\n{}",
        listing.join("\n")
    );
}
