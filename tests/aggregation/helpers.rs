//! Helpers of `tests/aggregation.rs` (and the aggregation campaign of
//! `tests/fault_campaign.rs`): running the built plugin's `aggregation` command on a
//! [`TestEnv`], reading its journal, snapshots that prove "nothing changed", wrapper scripts
//! around the real helm/terraform/lokoctl, process checks, what the private-key leak checks
//! read (the scanner itself is `common::leaks`, shared with tests/redaction.rs), and the check
//! of everything a finished rotation promises.
//!
//! Everything here acts on one test's environment and its temp dir only.

// Each test crate uses only part of these (and of the re-exports of `support::rotation`).
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams};
use openssl::x509::X509;
use serde_json::Value;

pub use crate::support::mode;
pub use crate::support::rotation::StateLock;
use crate::support::rotation::proc_stat;
pub use crate::support::rotation::{
    alive, cert, cert_key_der, expired, fp, journal_of, key_matches, pod_ready, read,
    reissue_two_years_back, run_folders, script, signed_by, text, timed,
};
use crate::support::{Cmd, ExtApiServer, Helm, Output, TestEnv, Tools, fingerprints, wait_for};

/// The built plugin, as cargo names it to integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_kubectl-certrotate");
/// Every process the plugin starts inherits this variable (value unique to the test), so the
/// test can find the plugin and all its descendants in /proc.
pub const TAG_VAR: &str = "CERTROTATE_AGGREGATION_TEST_TAG";
pub const APISERVICE: &str = "v1beta1.metrics.k8s.io";
pub const AUTH_CM: &str = "extension-apiserver-authentication";
pub const REQUESTHEADER: &str = "requestheader-client-ca-file";
/// The not-expired phases, in order (`cleanup` only with --cleanup / --phase cleanup).
pub const PHASES: [&str; 7] = ["backup", "ca", "bundle", "restart", "client", "apply", "cleanup"];
pub const EXPIRED_PHASES: [&str; 4] = ["backup", "ca", "apply", "restart"];
/// The plugin's own bound for each wait in these tests (the default is 10m).
pub const WAIT: [&str; 2] = ["--timeout", "3m"];

// ---------------------------------------------------------------------------------------
// Running the plugin

/// The tag of this environment's plugin runs (the temp dir is unique).
pub fn tag(env: &TestEnv) -> String {
    env.dir().display().to_string()
}

/// `kubectl certrotate aggregation` with the operator environment of `env` (KUBECONFIG,
/// ASSET_DIR, CONFIG_DIR, TERRAFORM, HELM = helm 3, LOKOCTL = the double) and the tag.
pub fn agg(env: &TestEnv) -> Cmd {
    env.certrotate()
        .arg("aggregation")
        .env(TAG_VAR, tag(env))
        .env("CERTROTATE_LOKOCTL_LOG", env.dir().join("lokoctl-double.log"))
        .timeout(Duration::from_secs(540))
}

/// The `-o json` document on stdout.
pub fn json_out(out: &Output) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out}"))
}

/// `-o json` of a run: `kind: AggregationRotation`.
pub fn summary(out: &Output) -> Value {
    let doc = json_out(out);
    assert_eq!(doc["apiVersion"], "certrotate.lokomotive.io/v1", "{doc:#}");
    assert_eq!(doc["kind"], "AggregationRotation", "{doc:#}");
    doc
}

/// The `result` of `phase` in a run summary.
pub fn result_of(summary: &Value, phase: &str) -> String {
    summary["phases"]
        .as_array()
        .unwrap_or_else(|| panic!("no phases in {summary:#}"))
        .iter()
        .find(|p| p["name"] == phase)
        .unwrap_or_else(|| panic!("no phase {phase} in {summary:#}"))["result"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Step and event kinds. The spec names command, api and check; the tool adds `file` for the
/// backup's local copies (neither of the three), which these tests accept.
pub const KINDS: [&str; 4] = ["command", "api", "check", "file"];

/// `--dry-run -o json`: `kind: AggregationPlan`, each step of a known kind with a text.
pub fn plan(out: &Output) -> Value {
    assert_eq!(out.code(), Some(0), "a dry run exits 0: {out}");
    let doc = json_out(out);
    assert_eq!(doc["kind"], "AggregationPlan", "{doc:#}");
    for phase in doc["phases"].as_array().unwrap_or_else(|| panic!("no phases: {doc:#}")) {
        let steps = phase["steps"].as_array().unwrap_or_else(|| panic!("no steps: {phase:#}"));
        assert!(!steps.is_empty(), "a phase of the plan without steps: {phase:#}");
        for step in steps {
            let kind = step["kind"].as_str().unwrap_or_default();
            assert!(KINDS.contains(&kind), "step kind {kind:?}: {step:#}");
            assert!(
                !step["description"].as_str().unwrap_or_default().trim().is_empty(),
                "a step without description: {step:#}"
            );
        }
    }
    doc
}

pub fn plan_phases(plan: &Value) -> Vec<String> {
    plan["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The step descriptions of one phase of a plan, one per line.
pub fn plan_text(plan: &Value, phase: &str) -> String {
    let p = plan["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == phase)
        .unwrap_or_else(|| panic!("no phase {phase} in the plan {plan:#}"));
    p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["description"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The plan's notes on what it could not resolve (`unresolved`, an addition of the tool to
/// the spec's plan document), one per line.
pub fn unresolved_notes(plan: &Value) -> String {
    plan["unresolved"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// Does `hay` say that something could not be resolved (the wording is the tool's)?
pub fn says_unresolved(hay: &str) -> bool {
    let hay = hay.to_lowercase();
    ["could not", "cannot", "can't", "unresolved", "not resolved", "unknown", "unreachable"]
        .iter()
        .any(|w| hay.contains(w))
}

// ---------------------------------------------------------------------------------------
// Journal

pub fn certrotate_dir(env: &TestEnv) -> PathBuf {
    env.assets.dir.join("certrotate")
}

/// Every `<assets>/certrotate/aggregation-*` run folder.
pub fn run_dirs(env: &TestEnv) -> Vec<PathBuf> {
    run_folders(env, "aggregation")
}

/// The one run folder.
pub fn run_dir(env: &TestEnv) -> PathBuf {
    let dirs = run_dirs(env);
    assert_eq!(dirs.len(), 1, "exactly one run folder under certrotate/: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// The one run's journal.json.
pub fn journal(env: &TestEnv) -> Value {
    journal_of(&run_dir(env))
}

/// The journal's latest record of `phase` (Null when it has none). The journal appends one
/// record per attempt: a phase interrupted and then completed by a re-run appears twice.
pub fn journal_phase(journal: &Value, phase: &str) -> Value {
    journal["phases"]
        .as_array()
        .and_then(|ps| ps.iter().rev().find(|p| p["name"] == phase).cloned())
        .unwrap_or(Value::Null)
}

/// Every outcome the journal recorded for `phase`, in order.
pub fn outcomes(journal: &Value, phase: &str) -> Vec<String> {
    journal["phases"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["name"] == phase)
                .map(|p| p["outcome"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn outcome(journal: &Value, phase: &str) -> String {
    journal_phase(journal, phase)["outcome"].as_str().unwrap_or("<none>").to_string()
}

/// `aggregation-YYYYMMDDTHHMMSSZ`.
pub fn is_run_name(name: &str) -> bool {
    let Some(stamp) = name.strip_prefix("aggregation-") else { return false };
    let b = stamp.as_bytes();
    b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
}

// ---------------------------------------------------------------------------------------
// PKI

/// Valid for at least `days` more days.
pub fn valid_for_days(pem: &[u8], days: u32) -> bool {
    let then = openssl::asn1::Asn1Time::days_from_now(days).unwrap();
    let now = openssl::asn1::Asn1Time::days_from_now(0).unwrap();
    let c = cert(pem);
    c.not_after() > then && c.not_before() <= now
}

pub fn sha(data: &[u8]) -> String {
    openssl::sha::sha256(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The asset dir's aggregation files as they were before the rotation.
#[derive(Debug, Clone)]
pub struct Original {
    pub ca: Vec<u8>,
    pub key: Vec<u8>,
    pub client: Vec<u8>,
    pub ca_fp: String,
    pub client_fp: String,
}

impl Original {
    pub fn of(env: &TestEnv) -> Original {
        let ca = read(&env.assets.tls("aggregation-ca.crt"));
        let client = read(&env.assets.tls("aggregation-client.crt"));
        Original {
            ca_fp: fp(&ca),
            client_fp: fp(&client),
            key: read(&env.assets.tls("aggregation-ca.key")),
            ca,
            client,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Terraform state

/// `terraform state pull`.
pub fn state(env: &TestEnv) -> Value {
    let out = env.terraform().args(["state", "pull"]).run();
    assert!(out.success(), "terraform state pull failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("terraform state pull prints JSON")
}

/// The instance of `<module>.<type>.<name>[<index>]` in a pulled state.
pub fn state_instance(state: &Value, module: &str, address: &str) -> Value {
    let (ty, rest) = address.split_once('.').unwrap();
    let (name, index) = match rest.split_once('[') {
        Some((n, i)) => (n, i.trim_end_matches(']').parse::<i64>().ok()),
        None => (rest, None),
    };
    for r in state["resources"].as_array().unwrap() {
        if r["module"] == module && r["mode"] == "managed" && r["type"] == ty && r["name"] == name {
            for inst in r["instances"].as_array().unwrap() {
                if inst["index_key"].as_i64() == index {
                    return inst.clone();
                }
            }
        }
    }
    panic!("{module}.{address} not in the state")
}

pub fn state_attr(state: &Value, module: &str, address: &str, attr: &str) -> String {
    state_instance(state, module, address)["attributes"][attr]
        .as_str()
        .unwrap_or_else(|| panic!("{module}.{address} has no string attribute {attr}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------
// "Nothing changed"

/// What a refused, planned or already-done command must leave exactly as it was: every file
/// of the config dir (asset dir included; digests and modes, not contents, so messages never
/// quote keys) but the plugin's own `certrotate/` folder, and the cluster objects the
/// rotation touches.
#[derive(Debug, Clone, PartialEq)]
pub struct World {
    pub files: BTreeMap<String, String>,
    pub cluster: BTreeMap<String, String>,
    /// The journal's phases, fingerprints, path and state (`None` without a run).
    pub journal: Option<Value>,
}

pub fn file_tree(root: &Path, skip: &dyn Fn(&Path) -> bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if skip(&path) {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                out.insert(format!("{rel}/"), format!("{:o}", meta.permissions().mode() & 0o7777));
                stack.push(path);
            } else {
                let digest =
                    std::fs::read(&path).map(|b| sha(&b)).unwrap_or_else(|e| e.to_string());
                out.insert(rel, format!("{:o} {digest}", meta.permissions().mode() & 0o7777));
            }
        }
    }
    out
}

async fn cluster_objects(env: &TestEnv) -> Result<BTreeMap<String, String>, String> {
    let client = env.client.clone();
    let mut m = BTreeMap::new();
    let e = |e: kube::Error| e.to_string();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    match secrets.get_opt("kube-apiserver").await.map_err(e)? {
        Some(s) => {
            for (k, v) in s.data.unwrap_or_default() {
                m.insert(format!("secret/kube-system/kube-apiserver {k}"), sha(&v.0));
            }
        }
        None => {
            m.insert("secret/kube-system/kube-apiserver".into(), "absent".into());
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    match cms.get_opt(AUTH_CM).await.map_err(e)? {
        Some(cm) => {
            for (k, v) in cm.data.unwrap_or_default() {
                m.insert(format!("configmap/kube-system/{AUTH_CM} {k}"), sha(v.as_bytes()));
            }
        }
        None => {
            m.insert(format!("configmap/kube-system/{AUTH_CM}"), "absent".into());
        }
    }
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
    for name in ["kube-apiserver", "metrics-server"] {
        let key = format!("deployment/kube-system/{name}");
        match deploys.get_opt(name).await.map_err(e)? {
            Some(d) => {
                let annotations = d
                    .spec
                    .and_then(|s| s.template.metadata)
                    .and_then(|m| m.annotations)
                    .unwrap_or_default();
                m.insert(
                    key,
                    format!(
                        "generation {} template annotations {}",
                        d.metadata.generation.unwrap_or_default(),
                        serde_json::to_string(&annotations).unwrap()
                    ),
                );
            }
            None => {
                m.insert(key, "absent".into());
            }
        }
    }
    let all: Api<Secret> = Api::all(client.clone());
    for s in all.list(&ListParams::default().labels("owner=helm")).await.map_err(e)?.items {
        let labels = s.metadata.labels.unwrap_or_default();
        m.insert(
            format!(
                "helm release secret {}/{}",
                s.metadata.namespace.unwrap_or_default(),
                s.metadata.name.unwrap_or_default()
            ),
            labels.get("status").cloned().unwrap_or_default(),
        );
    }
    m.insert("kube-apiserver process restarts".into(), env.apiserver.restarts().to_string());
    Ok(m)
}

/// A [`World`] now (the API is retried for a minute, as it may be restarting).
pub fn world(env: &TestEnv) -> World {
    let assets = env.assets.dir.clone();
    let skip = move |p: &Path| {
        p == assets.join("certrotate")
            || p == assets.join("terraform").join(".terraform.tfstate.lock.info")
    };
    let files = file_tree(&env.assets.config_dir, &skip);
    let cluster = wait_for("a snapshot of the cluster objects", Duration::from_secs(60), || {
        env.block_on(async {
            tokio::time::timeout(Duration::from_secs(15), cluster_objects(env))
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
        })
    });
    let journal = match run_dirs(env).as_slice() {
        [] => None,
        [one] => std::fs::read_to_string(one.join("journal.json")).ok().map(|t| {
            let j: Value = serde_json::from_str(&t).unwrap_or(Value::String(t));
            serde_json::json!({
                "phases": j["phases"], "fingerprints": j["fingerprints"],
                "path": j["path"], "state": j["state"], "run": j["run"],
            })
        }),
        many => Some(Value::String(format!("{} run folders", many.len()))),
    };
    World { files, cluster, journal }
}

/// The differences between two worlds, one line each (names only, never contents).
pub fn diff(before: &World, after: &World) -> Vec<String> {
    let mut out = Vec::new();
    for (what, a, b) in
        [("file", &before.files, &after.files), ("cluster", &before.cluster, &after.cluster)]
    {
        for (k, v) in a {
            match b.get(k) {
                None => out.push(format!("{what} {k}: gone")),
                Some(w) if w != v => out.push(format!("{what} {k}: changed")),
                _ => {}
            }
        }
        for k in b.keys() {
            if !a.contains_key(k) {
                out.push(format!("{what} {k}: new"));
            }
        }
    }
    if before.journal != after.journal {
        out.push(format!(
            "journal: {} -> {}",
            serde_json::to_string(&before.journal).unwrap(),
            serde_json::to_string(&after.journal).unwrap()
        ));
    }
    out
}

pub fn assert_unchanged(env: &TestEnv, before: &World, what: &str) {
    let after = world(env);
    let d = diff(before, &after);
    assert!(d.is_empty(), "{what} changed things:\n  {}", d.join("\n  "));
}

/// Every file under the plugin's certrotate/ folder but the lock file (a dry run must not
/// touch even the journal).
pub fn journal_tree(env: &TestEnv) -> BTreeMap<String, String> {
    let root = certrotate_dir(env);
    let lock = root.join(".lock");
    file_tree(&root, &move |p: &Path| p == lock)
}

// ---------------------------------------------------------------------------------------
// Cluster reads

/// Fingerprints of the certificates under `key` of Secret kube-system/kube-apiserver.
pub fn secret_cas(env: &TestEnv, key: &str) -> Vec<String> {
    let api: Api<Secret> = Api::namespaced(env.client.clone(), "kube-system");
    wait_for(&format!("Secret kube-apiserver {key}"), Duration::from_secs(60), || {
        let s = env
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), api.get("kube-apiserver")).await
            })
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let data = s.data.unwrap_or_default();
        let v = data.get(key).ok_or(format!("no {key}"))?;
        Ok(fingerprints(&v.0))
    })
}

/// Fingerprints of the CAs in the auth ConfigMap's requestheader-client-ca-file.
pub fn configmap_cas(env: &TestEnv) -> Vec<String> {
    wait_for("the auth ConfigMap", Duration::from_secs(90), || {
        env.auth_configmap_cas(REQUESTHEADER)
    })
}

/// Waits until the auth ConfigMap holds exactly `want` (as a set).
pub fn wait_configmap(env: &TestEnv, want: &[&str], timeout: Duration) -> Vec<String> {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_for(&format!("{AUTH_CM} {REQUESTHEADER} = {want:?}"), timeout, || {
        let mut now = env.auth_configmap_cas(REQUESTHEADER)?;
        now.sort();
        if now == want { Ok(now) } else { Err(format!("{now:?}")) }
    })
}

/// The template annotation `kubectl.kubernetes.io/restartedAt` of a kube-system Deployment.
/// (Retried for a minute: the API drops while kube-apiserver restarts.)
pub fn restarted_at(env: &TestEnv, deployment: &str) -> String {
    wait_for(&format!("restartedAt of deployment {deployment}"), Duration::from_secs(60), || {
        let out = env
            .kubectl()
            .args(["-n", "kube-system", "get", "deployment", deployment, "-o"])
            .arg(
                r#"jsonpath={.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}"#,
            )
            .run();
        if out.success() { Ok(out.stdout.trim().to_string()) } else { Err(out.to_string()) }
    })
}

/// `(revision, status, description)` of each revision of a release (helm 3 reads either).
/// (Retried for a minute: the API drops while kube-apiserver restarts.)
pub fn helm_history(env: &TestEnv, release: &str, namespace: &str) -> Vec<(u64, String, String)> {
    let out = wait_for(&format!("helm history {release}"), Duration::from_secs(60), || {
        let out = env
            .helm(crate::support::Helm::V3)
            .args(["history", release, "--namespace", namespace, "-o", "json"])
            .run();
        if out.success() { Ok(out) } else { Err(out.to_string()) }
    });
    crate::support::helm_history_rows(&out.stdout)
}

/// APIService Available and a request through the aggregated API answered.
pub fn api_works(env: &TestEnv) {
    let why = env.wait_apiservice(APISERVICE, true, Duration::from_secs(120));
    env.step(&format!("{APISERVICE} Available ({why})"));
    wait_for("kubectl get --raw /apis/metrics.k8s.io/v1beta1", Duration::from_secs(60), || {
        let out = env.kubectl().args(["get", "--raw", "/apis/metrics.k8s.io/v1beta1"]).run();
        if out.success() { Ok(()) } else { Err(out.to_string()) }
    });
}

pub fn pods(env: &TestEnv, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), "kube-system");
    env.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            api.list(&ListParams::default().labels(selector)),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|l| l.items)
        .unwrap_or_default()
    })
}

pub fn pod_phase(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()
}

pub fn label_is(pod: &Pod, key: &str, value: &str) -> bool {
    pod.metadata.labels.as_ref().and_then(|l| l.get(key)).is_some_and(|v| v == value)
}

// ---------------------------------------------------------------------------------------
// Processes

/// A process of /proc whose environment carries `tag`: `(pid, ppid, comm, arguments, is the
/// plugin)`.
#[derive(Debug, Clone)]
pub struct Tagged {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// Its command line, the arguments joined by spaces.
    pub args: String,
    pub is_plugin: bool,
}

pub fn tagged(tag: &str) -> Vec<Tagged> {
    let needle = format!("{TAG_VAR}={tag}");
    let bin = std::fs::canonicalize(BIN).unwrap_or_else(|_| PathBuf::from(BIN));
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if !environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            continue;
        }
        let Some((state, ppid, comm)) = proc_stat(pid) else { continue };
        if state == 'Z' || state == 'X' {
            continue;
        }
        let exe = std::fs::read_link(entry.path().join("exe")).ok();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim_end().to_string();
        let is_plugin = exe.as_deref() == Some(bin.as_path());
        out.push(Tagged { pid, ppid, comm, args, is_plugin });
    }
    out
}

/// The pid of the running plugin of this environment (the one not started by another plugin).
pub fn plugin_pid(env: &TestEnv) -> Option<u32> {
    let procs = tagged(&tag(env));
    let plugins: Vec<&Tagged> = procs.iter().filter(|p| p.is_plugin).collect();
    plugins.iter().find(|p| !plugins.iter().any(|q| q.pid == p.ppid)).map(|p| p.pid)
}

/// Waits until no process of this environment's plugin runs (the plugin and everything it
/// started); `Err` lists what is left after `timeout`.
pub fn wait_all_gone(env: &TestEnv, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let left = tagged(&tag(env));
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(left
                .iter()
                .map(|p| format!("pid {} ({}, parent {})", p.pid, p.comm, p.ppid))
                .collect::<Vec<_>>()
                .join(", "));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills what is left of this environment's plugin runs (cleanup after a failed check: they
/// are this test's own processes).
pub fn kill_leftovers(env: &TestEnv) {
    for p in tagged(&tag(env)) {
        signal(p.pid, "KILL");
    }
}

/// `kill -s SIG pid` (one process, not its group).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running kill");
    assert!(status.success() || !alive(pid), "kill -s {sig} {pid} failed");
}

// ---------------------------------------------------------------------------------------
// Wrapper scripts

/// A wrapper of a real program: appends `<pid> <ppid> <args>` of each call to its log, runs
/// `extra` (shell), then execs the real program in the same process (so a signal to the
/// wrapper reaches the real program).
pub struct Wrapper {
    pub path: PathBuf,
    pub log: PathBuf,
}

impl Wrapper {
    pub fn new(env: &TestEnv, name: &str, real: &Path, extra: &str) -> Wrapper {
        let log = env.dir().join(format!("{name}-calls.log"));
        let body = format!(
            "#!/bin/sh\n\
             # Test wrapper of {real}: records each call, then runs the real program.\n\
             printf '%s %s %s\\n' \"$$\" \"$PPID\" \"$*\" >> '{log}'\n\
             {extra}\n\
             exec '{real}' \"$@\"\n",
            real = real.display(),
            log = log.display(),
        );
        Wrapper { path: script(env, name, &body), log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `(pid, ppid, args)` of each recorded call.
    pub fn calls(&self) -> Vec<(u32, u32, String)> {
        self.log_text()
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                let pid = parts.next()?.parse().ok()?;
                let ppid = parts.next()?.parse().ok()?;
                Some((pid, ppid, parts.next().unwrap_or_default().to_string()))
            })
            .collect()
    }

    /// Calls whose arguments hold the word `word` (e.g. "upgrade", "apply").
    pub fn calls_with(&self, word: &str) -> Vec<(u32, u32, String)> {
        self.calls().into_iter().filter(|(_, _, a)| a.split(' ').any(|w| w == word)).collect()
    }
}

/// Shell: on `apply`, print every key file of the asset dir the way terraform 0.13 (what
/// Lokomotive pins) prints a `local_file`'s old content in its plan diff, before running the
/// real terraform (1.11 here, which hides it): the plugin must redact what a child prints.
pub fn terraform_013_plan_diff() -> String {
    "case \" $* \" in *\" apply \"*)\n\
       for k in ../cluster-assets/tls/*.key ../cluster-assets/tls/etcd/*.key; do\n\
         [ -f \"$k\" ] || continue\n\
         echo \"  # local_file.$(basename \"$k\") must be replaced\"\n\
         echo '      - content              = <<~EOT'\n\
         sed 's/^/          /' \"$k\"\n\
         echo '        EOT -> null'\n\
       done;;\n\
     esac"
        .to_string()
}

/// Shell: on the first call whose arguments hold `word`, write `<pid> <ppid>` to `marker` and
/// wait (at most 180 s) until `release` exists. Later calls pass straight through.
pub fn hold_once(word: &str, marker: &Path, release: &Path) -> String {
    let once = marker.with_extension("once");
    format!(
        "case \" $* \" in *\" {word} \"*)\n\
           if mkdir '{once}' 2>/dev/null; then\n\
             echo \"$$ $PPID\" > '{marker}.tmp' && mv '{marker}.tmp' '{marker}'\n\
             i=0; while [ ! -e '{release}' ] && [ $i -lt 900 ]; do sleep 0.2; i=$((i+1)); done\n\
           fi;;\n\
         esac",
        once = once.display(),
        marker = marker.display(),
        release = release.display(),
    )
}

/// Shell: the first call whose arguments hold `word` fails with exit 1 and a helm-like
/// message; later calls pass through.
pub fn fail_once(word: &str, flag: &Path) -> String {
    format!(
        "case \" $* \" in *\" {word} \"*)\n\
           if mkdir '{flag}' 2>/dev/null; then\n\
             echo 'Error: UPGRADE FAILED: the test wrapper fails the first {word} (simulated transient failure)' >&2\n\
             exit 1\n\
           fi;;\n\
         esac",
        flag = flag.display(),
    )
}

/// Shell: logs `values-file <path> <mode>` for every `-f`/`--values` argument, so a test can
/// check that helm values went through 0600 files (and that they were removed afterwards).
pub fn log_values_files(log: &Path) -> String {
    format!(
        "prev=\n\
         for a in \"$@\"; do\n\
           case $prev in -f|--values) printf 'values-file %s %s\\n' \"$a\" \"$(stat -c %a \"$a\" 2>/dev/null || echo missing)\" >> '{log}';; esac\n\
           case $a in --values=*) v=${{a#--values=}}; printf 'values-file %s %s\\n' \"$v\" \"$(stat -c %a \"$v\" 2>/dev/null || echo missing)\" >> '{log}';; esac\n\
           prev=$a\n\
         done",
        log = log.display()
    )
}

/// Reads `<pid> <ppid>` from a marker a wrapper wrote.
pub fn read_marker(path: &Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

// ---------------------------------------------------------------------------------------
// Watching the CA file

/// Polls `tls/aggregation-ca.crt` every 50 ms and records each distinct CA in order: the
/// number of CA generations a scenario produced, kill -9s and re-runs included.
pub struct CaWatch {
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl CaWatch {
    pub fn start(path: PathBuf) -> CaWatch {
        CaWatch::start_with(path, |pem| {
            X509::stack_from_pem(pem).is_ok_and(|certs| certs.len() == 1).then(|| fp(pem))
        })
    }

    /// Watches a file that holds one certificate in another form (`lokomotive.yaml`):
    /// `certificate` gives its fingerprint, `None` while the file is being written.
    pub fn start_with(path: PathBuf, certificate: fn(&[u8]) -> Option<String>) -> CaWatch {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&seen), Arc::clone(&stop));
        let handle = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if let Ok(bytes) = std::fs::read(&path)
                    && let Some(f) = certificate(&bytes)
                {
                    let mut seen = s.lock().unwrap();
                    if !seen.contains(&f) {
                        seen.push(f);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // The first sample is the original CA.
        let w = CaWatch { seen, stop, handle: Some(handle) };
        wait_for("the CA watcher's first sample", Duration::from_secs(5), || {
            if w.generations().is_empty() { Err("none yet".to_string()) } else { Ok(()) }
        });
        w
    }

    /// Every distinct CA seen in the file, first the original.
    pub fn generations(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for CaWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// A Terraform state lock held by another process

// ---------------------------------------------------------------------------------------
// Private keys must never leak

/// Every private key PEM of the asset dir: `tls/**/*.key` and the admission webhook key
/// (base64 inside `charts/lokomotive-system/lokomotive.yaml`).
pub fn asset_keys(env: &TestEnv) -> Vec<(String, Vec<u8>)> {
    let mut keys = Vec::new();
    let tls = env.assets.cluster_assets().join("tls");
    let skip = |_: &Path| false;
    for (rel, _) in file_tree(&tls, &skip) {
        if rel.ends_with(".key") {
            keys.push((format!("tls/{rel}"), read(&tls.join(&rel))));
        }
    }
    let values = env.assets.chart_values("lokomotive-system", "lokomotive");
    let text = std::fs::read_to_string(&values).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("servingKey:"))
        .expect("servingKey in lokomotive.yaml");
    let pem = BASE64.decode(line.trim().trim_matches('"')).expect("servingKey is base64");
    assert!(String::from_utf8_lossy(&pem).contains("PRIVATE KEY"), "servingKey is a PEM key");
    keys.push(("charts/lokomotive-system/lokomotive.yaml servingKey".into(), pem));
    keys
}

/// Every file under `dir` (recursively) with its text, but those `skip` names.
pub fn texts_under(dir: &Path, skip: &dyn Fn(&Path) -> bool) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for (rel, _) in file_tree(dir, skip) {
        if rel.ends_with('/') {
            continue;
        }
        let path = dir.join(&rel);
        if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// A rotated cluster

/// A realistic cluster: the kube-apiserver chart installed with helm 3 (as lokoctl does) and
/// metrics-server deployed and Available.
pub fn cluster(name: &str) -> TestEnv {
    let env = TestEnv::start(name);
    env.install_kube_apiserver_chart(Helm::V3);
    env.deploy_ext_apiserver(&ExtApiServer::metrics_server());
    env.wait_rollout("kube-system", "deploy/metrics-server");
    env.wait_apiservice(APISERVICE, true, Duration::from_secs(120));
    env.step("kube-apiserver chart installed (helm 3), metrics-server Available");
    env
}

pub fn status_ok(env: &TestEnv) {
    let out = env.certrotate().arg("status").run();
    assert_eq!(out.code(), Some(0), "`certrotate status` after the rotation: {out}");
}

/// The run folder's files: modes, name, and backups equal to the original CA byte for byte.
pub fn check_run_folder(env: &TestEnv, orig: &Original) {
    let dir = run_dir(env);
    let name = dir.file_name().unwrap().to_str().unwrap().to_string();
    assert!(is_run_name(&name), "run folder name {name:?} is aggregation-<UTC YYYYMMDDTHHMMSSZ>");
    assert_eq!(mode(&dir), 0o700, "{} is 0700", dir.display());
    assert_eq!(mode(&dir.join("journal.json")), 0o600, "journal.json is 0600");
    let (crt, key) = (dir.join("backup/aggregation-ca.crt"), dir.join("backup/aggregation-ca.key"));
    assert!(
        read(&crt) == orig.ca,
        "{} is the original CA certificate byte for byte",
        crt.display()
    );
    assert!(read(&key) == orig.key, "{} is the original CA key byte for byte", key.display());
    assert_eq!(mode(&crt), 0o600, "{}", crt.display());
    assert_eq!(mode(&key), 0o600, "{}", key.display());
    let j = journal(env);
    assert_eq!(j["apiVersion"], "certrotate.lokomotive.io/v1", "{j:#}");
    assert_eq!(j["kind"], "RotationJournal", "{j:#}");
    assert_eq!(j["rotation"], "aggregation", "{j:#}");
    assert_eq!(j["run"], name.as_str(), "{j:#}");
    assert_eq!(j["fingerprints"]["oldCa"], orig.ca_fp.as_str(), "oldCa is the original CA: {j:#}");
    assert_eq!(j["fingerprints"]["oldClient"], orig.client_fp.as_str(), "{j:#}");
    for event in j["events"].as_array().unwrap_or_else(|| panic!("no events: {j:#}")) {
        for field in ["at", "phase", "kind", "what", "outcome"] {
            assert!(!event[field].is_null(), "event without {field}: {event:#}");
        }
        let kind = event["kind"].as_str().unwrap_or_default();
        assert!(KINDS.contains(&kind), "event kind {kind:?}: {event:#}");
    }
}

/// What a completed not-expired rotation leaves, however it got there (one run or a re-run
/// after a fault). Returns the new CA's fingerprint.
pub fn check_rotated(env: &TestEnv, orig: &Original, module: &str, cleanup: bool) -> String {
    env.step("checking the rotated cluster");
    let ca = read(&env.assets.tls("aggregation-ca.crt"));
    let key = read(&env.assets.tls("aggregation-ca.key"));
    let client = read(&env.assets.tls("aggregation-client.crt"));
    let (new, new_client) = (fp(&ca), fp(&client));
    assert_ne!(new, orig.ca_fp, "tls/aggregation-ca.crt holds a new CA");
    assert_ne!(cert_key_der(&ca), cert_key_der(&orig.ca), "the new CA has a new key");
    assert!(key_matches(&key, &ca), "tls/aggregation-ca.key is the new CA's key");
    assert!(valid_for_days(&ca, 300), "the new CA is valid for about a year");
    let st = state(env);
    let state_ca = state_attr(&st, module, "tls_self_signed_cert.aggregation-ca[0]", "cert_pem");
    assert_eq!(fp(state_ca.as_bytes()), new, "the state's CA is the file's");
    let state_key = state_attr(&st, module, "tls_private_key.aggregation-ca[0]", "private_key_pem");
    assert!(state_key.as_bytes() == key.as_slice(), "the state's CA key is tls/aggregation-ca.key");
    assert_ne!(new_client, orig.client_fp, "a new client certificate");
    assert!(signed_by(&client, &ca), "the client certificate is signed by the new CA");
    assert!(!signed_by(&client, &orig.ca), "… and not by the old one");

    check_run_folder(env, orig);
    let j = journal(env);
    assert_eq!(j["path"], "not-expired", "{j:#}");
    assert_eq!(j["fingerprints"]["newCa"], new.as_str(), "{j:#}");
    assert_eq!(j["fingerprints"]["newClient"], new_client.as_str(), "{j:#}");
    let phases = if cleanup { &PHASES[..] } else { &PHASES[..6] };
    for phase in phases {
        assert_eq!(outcome(&j, phase), "done", "journal phase {phase}: {j:#}");
    }
    if cleanup {
        assert_eq!(j["state"], "finished", "{j:#}");
    }

    let secret_ca = secret_cas(env, "aggregation-ca.crt");
    assert!(secret_ca.contains(&new), "Secret kube-apiserver aggregation-ca.crt has the new CA");
    assert_eq!(secret_cas(env, "aggregation-client.crt"), vec![new_client.clone()]);
    let cm = configmap_cas(env);
    if cleanup {
        assert_eq!(cm, vec![new.clone()], "after cleanup the ConfigMap holds only the new CA");
    } else {
        assert!(
            cm.contains(&new) && cm.contains(&orig.ca_fp),
            "without cleanup old and new stay trusted: {cm:?}"
        );
    }
    api_works(env);
    new
}
