//! Helpers of `tests/webhook.rs` (and the webhook campaign of `tests/fault_campaign.rs`):
//! reading the webhook certificate from the asset dir and the cluster, running the built
//! plugin's `webhook` command, the clusters the scenarios start from, and the check of
//! everything a finished rotation promises.
//!
//! Everything here acts on one test's environment and its temp dir only.

// Each test crate uses only part of these (and of the re-exports of `support::rotation`).
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use openssl::x509::X509;
use serde_json::Value;

pub use crate::support::mode;
pub use crate::support::rotation::{
    alive, expired, fp, journal_of, key_matches, pod_ready, read, run_folders, script, text, timed,
};
use crate::support::{Cmd, Helm, Output, TestEnv, fingerprints, wait_for};

pub const NS: &str = "lokomotive-system";
pub const NAME: &str = "admission-webhook-server";
pub const POD_LABEL: &str = "k8s-app=admission-webhook-server";
pub const VALUES: &str = "cluster-assets/charts/lokomotive-system/lokomotive.yaml";
pub const CERT_RESOURCE: &str = "tls_locally_signed_cert.admission-webhook-server";
pub const SERVICE_NAMES: [&str; 5] = [
    "admission-webhook-server",
    "admission-webhook-server.lokomotive-system",
    "admission-webhook-server.lokomotive-system.svc",
    "admission-webhook-server.lokomotive-system.svc.cluster",
    "admission-webhook-server.lokomotive-system.svc.cluster.local",
];
pub const NOT_EXPIRED_PHASES: [&str; 4] = ["backup", "certificate", "restart", "verify"];
pub const EXPIRED_PHASES: [&str; 5] = ["backup", "unhook", "certificate", "restart", "verify"];

// ----------------------------------------------------------------------------- reading ---

/// Field `name` of `lokomotive.yaml`'s text, base64-decoded; `None` when absent or not base64.
pub fn values_field(text: &str, name: &str) -> Option<Vec<u8>> {
    let value = text.lines().find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))?;
    BASE64.decode(value.trim().trim_matches('"')).ok()
}

/// `webhook.servingCert` and `webhook.servingKey` of `lokomotive.yaml`, decoded (PEM).
pub fn values_pair(env: &TestEnv) -> (Vec<u8>, Vec<u8>) {
    let text = String::from_utf8(read(&env.assets.dir.join(VALUES))).unwrap();
    // The text holds the private key: the message names the field, never quotes the file.
    let field = |name: &str| {
        values_field(&text, name).unwrap_or_else(|| panic!("no base64 {name} in {VALUES}"))
    };
    (field("servingCert"), field("servingKey"))
}

/// The fingerprint of the serving certificate in `lokomotive.yaml`'s bytes (for a watcher:
/// `None` while the file is being written).
pub fn serving_cert_fp(values: &[u8]) -> Option<String> {
    let cert = values_field(std::str::from_utf8(values).ok()?, "servingCert")?;
    let fps = fingerprints(&cert);
    (fps.len() == 1).then(|| fps[0].clone())
}

pub fn tfstate(env: &TestEnv) -> Vec<u8> {
    read(&env.assets.terraform_dir().join("terraform.tfstate"))
}

pub fn dns_names(cert: &[u8]) -> Vec<String> {
    let cert = X509::from_pem(cert).unwrap();
    cert.subject_alt_names()
        .map(|n| n.iter().filter_map(|n| n.dnsname().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// `cert.pem` and `key.pem` of Secret `lokomotive-system/admission-webhook-server`.
pub fn secret_pair(env: &TestEnv) -> (Vec<u8>, Vec<u8>) {
    let api: Api<Secret> = Api::namespaced(env.client.clone(), NS);
    let data = env.block_on(api.get(NAME)).expect("the webhook Secret").data.unwrap_or_default();
    let get = |k: &str| data.get(k).unwrap_or_else(|| panic!("Secret has no {k}")).0.clone();
    (get("cert.pem"), get("key.pem"))
}

pub fn configuration(env: &TestEnv) -> Option<MutatingWebhookConfiguration> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(env.client.clone());
    env.block_on(api.get_opt(NAME)).expect("reading the MutatingWebhookConfiguration")
}

/// The `caBundle` (PEM) of the webhook configuration; `None` while it does not exist.
pub fn ca_bundle(env: &TestEnv) -> Option<Vec<u8>> {
    configuration(env).map(|c| {
        let hooks = c.webhooks.unwrap_or_default();
        assert_eq!(hooks.len(), 1, "one webhook: {hooks:?}");
        hooks[0].client_config.ca_bundle.clone().expect("a caBundle").0
    })
}

/// The webhooks of the configuration without server-set fields, to compare a re-created one.
pub fn webhooks_spec(env: &TestEnv) -> Value {
    serde_json::to_value(configuration(env).expect("the configuration").webhooks).unwrap()
}

pub fn is_webhook_pod(pod: &Pod) -> bool {
    pod.metadata.namespace.as_deref() == Some(NS)
        && pod.labels().get("k8s-app").is_some_and(|v| v == NAME)
}

/// The one webhook pod, once it is the only one and Ready (a rollout's old pod gone).
pub fn the_webhook_pod(env: &TestEnv) -> String {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), NS);
    wait_for("one Ready admission-webhook-server pod", Duration::from_secs(90), || {
        let pods = env
            .block_on(api.list(&ListParams::default().labels(POD_LABEL)))
            .map_err(|e| e.to_string())?
            .items;
        let seen: Vec<String> = pods
            .iter()
            .map(|p| {
                format!(
                    "{} ready={} deleting={}",
                    p.name_any(),
                    pod_ready(p),
                    p.metadata.deletion_timestamp.is_some()
                )
            })
            .collect();
        match pods.as_slice() {
            [pod] if pod_ready(pod) && pod.metadata.deletion_timestamp.is_none() => {
                Ok(pod.name_any())
            }
            _ => Err(format!("{seen:?}")),
        }
    })
}

pub fn pod_log(env: &TestEnv, pod: &str) -> String {
    env.kubectl().args(["logs", "-n", NS, pod]).ok().stdout
}

/// Creates namespace `ns` and tells whether the kube-apiserver's call to the webhook mutated
/// its `default` ServiceAccount (`false`: admitted unchanged, failurePolicy Ignore).
pub fn admission_mutates(env: &TestEnv, ns: &str) -> bool {
    env.kubectl().args(["create", "namespace", ns]).ok();
    let automount =
        wait_for(&format!("ServiceAccount {ns}/default"), Duration::from_secs(60), || {
            let out = env
                .kubectl()
                .args(["get", "serviceaccount", "default", "-n", ns])
                .arg("-o=jsonpath={.automountServiceAccountToken}")
                .run();
            if out.success() { Ok(out.stdout.trim().to_string()) } else { Err(out.to_string()) }
        });
    match automount.as_str() {
        "false" => true,
        "" => false,
        other => panic!("{ns}/default has automountServiceAccountToken {other:?}"),
    }
}

/// The webhook run folders, oldest first.
pub fn runs(env: &TestEnv) -> Vec<PathBuf> {
    run_folders(env, "webhook")
}

pub fn latest_run(env: &TestEnv) -> PathBuf {
    runs(env).pop().expect("a webhook run folder")
}

/// The outcome of the latest record of each phase, in the journal's order of first record.
pub fn phase_outcomes(journal: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for p in journal["phases"].as_array().expect("phases") {
        let (name, outcome) = (p["name"].as_str().unwrap(), p["outcome"].as_str().unwrap());
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = outcome.to_string(),
            None => out.push((name.to_string(), outcome.to_string())),
        }
    }
    out
}

// ---------------------------------------------------------------------------- commands ---

/// `kubectl certrotate webhook` with an operator's environment (LOKOCTL = the double).
pub fn webhook(env: &TestEnv) -> Cmd {
    env.certrotate().arg("webhook")
}

/// The tool's error (from the line starting `error: ` to the end of stderr), logged as a step.
pub fn logged_error(env: &TestEnv, out: &Output) -> String {
    let lines: Vec<&str> = out.stderr.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("error: ")).unwrap_or(lines.len());
    let error = lines[at..].join("\n");
    env.step(&format!("its error: {error}"));
    error
}

pub fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

// ------------------------------------------------------------------------------- setup ---

/// A cluster with the control-plane charts installed by the lokoctl double (helm 3), the
/// webhook pod Ready.
pub fn cluster(name: &str) -> TestEnv {
    let env = TestEnv::start(name);
    env.lokoctl().args(["cluster", "apply", "--confirm"]).ok();
    the_webhook_pod(&env);
    env.step(
        "charts installed by `lokoctl cluster apply --confirm` (double, helm 3); webhook pod Ready",
    );
    env
}

/// A cluster whose webhook certificate alone has expired: re-issued by a real `terraform
/// apply -replace` with the test provider's clock two years back (so it expired a year ago),
/// before the charts are installed (lokoctl's apply would renew it: the charts are installed
/// with helm 3 as lokoctl does at cluster creation).
pub fn expired_cluster(name: &str) -> TestEnv {
    let env = TestEnv::start(name);
    let module = env.assets.bootkube_module();
    let others = ["ca.crt", "apiserver.crt", "aggregation-ca.crt", "aggregation-client.crt"];
    let before: Vec<Vec<u8>> = others.iter().map(|f| read(&env.assets.tls(f))).collect();
    let then = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2 * 8760))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    env.terraform()
        .env("CERTROTATE_FAKE_NOW", &then)
        .args(["apply", "-auto-approve", "-input=false", "-no-color"])
        .arg(format!("-replace={module}.{CERT_RESOURCE}"))
        .ok();
    let (cert, key) = values_pair(&env);
    assert!(expired(&cert), "the re-issued webhook certificate has expired");
    assert!(key_matches(&key, &cert));
    for (file, bytes) in others.iter().zip(&before) {
        assert_eq!(
            &read(&env.assets.tls(file)),
            bytes,
            "{file} is unchanged: only the webhook certificate is backdated"
        );
    }
    env.install_kube_apiserver_chart(Helm::V3);
    env.install_lokomotive_chart();
    the_webhook_pod(&env);
    env.step(&format!(
        "webhook certificate re-issued as of {then} (expired); charts installed with helm 3"
    ));
    env
}

/// What a rotation starts from.
pub struct Before {
    pub values: Vec<u8>,
    pub cert: Vec<u8>,
    pub fp: String,
    pub pod: String,
    pub webhooks: Value,
}

impl Before {
    pub fn take(env: &TestEnv) -> Before {
        let values = read(&env.assets.dir.join(VALUES));
        let (cert, _) = values_pair(env);
        let fp = fp(&cert);
        assert_eq!(secret_pair(env).0, cert, "the Secret serves lokomotive.yaml's certificate");
        assert_eq!(ca_bundle(env).as_deref(), Some(cert.as_slice()), "caBundle = the certificate");
        let pod = the_webhook_pod(env);
        assert!(pod_log(env, &pod).contains(&format!("sha256={fp}")), "the pod serves it");
        Before { values, cert, fp, pod, webhooks: webhooks_spec(env) }
    }
}

// ---------------------------------------------------------------------------- checking ---

/// `status` exits 0 and its webhook rows (Secret `cert.pem`, the configuration's `caBundle`)
/// are current and OK.
pub fn status_ok(env: &TestEnv) {
    let out = env.certrotate().args(["status", "-o", "json"]).run();
    assert_eq!(out.code(), Some(0), "status after the rotation: {out}");
    let doc: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    let rows: Vec<&Value> = doc["reports"][0]["cluster"]["certificates"]
        .as_array()
        .expect("cluster rows")
        .iter()
        .filter(|r| r["comparedWith"] == "admission-webhook")
        .collect();
    assert_eq!(rows.len(), 2, "the Secret and the caBundle rows: {rows:#?}");
    for row in rows {
        assert_eq!(
            (&row["status"], &row["current"]),
            (&Value::from("OK"), &Value::from(true)),
            "{row:#}"
        );
    }
}

/// Everything a finished rotation promises; returns the new certificate's fingerprint.
pub fn check_rotated(env: &TestEnv, before: &Before, path: &str, check_ns: &str) -> String {
    check_rotated_keeping(env, before, path, check_ns, path == "expired")
}

/// [`check_rotated`], saying whether the run kept the webhook configuration as a manifest (not
/// when it was deleted by hand before the run).
pub fn check_rotated_keeping(
    env: &TestEnv,
    before: &Before,
    path: &str,
    check_ns: &str,
    kept_manifest: bool,
) -> String {
    let (cert, key) = values_pair(env);
    let new = fp(&cert);
    assert_ne!(new, before.fp, "lokomotive.yaml holds a new certificate");
    assert!(!expired(&cert), "the new certificate is valid");
    assert!(key_matches(&key, &cert), "lokomotive.yaml's key matches its certificate");
    let ca = X509::from_pem(&read(&env.assets.tls("ca.crt"))).unwrap();
    assert!(
        X509::from_pem(&cert).unwrap().verify(&ca.public_key().unwrap()).unwrap(),
        "signed by the kube CA"
    );
    let names = dns_names(&cert);
    for name in SERVICE_NAMES {
        assert!(names.iter().any(|n| n == name), "SAN {name} missing from {names:?}");
    }
    let (served, served_key) = secret_pair(env);
    assert_eq!(fp(&served), new, "the Secret's cert.pem is the new certificate");
    assert!(key_matches(&served_key, &served), "the Secret's key.pem matches cert.pem");
    assert_eq!(served_key, key, "the Secret's key.pem is lokomotive.yaml's key");
    let bundle = ca_bundle(env).expect("the MutatingWebhookConfiguration exists");
    assert_eq!(fingerprints(&bundle), vec![new.clone()], "caBundle is the new certificate");
    let pod = the_webhook_pod(env);
    assert_ne!(pod, before.pod, "a new webhook pod");
    let log = pod_log(env, &pod);
    assert!(
        log.contains(&format!("sha256={new}")),
        "the new pod loaded the new certificate:\n{log}"
    );
    assert!(
        admission_mutates(env, check_ns),
        "after the rotation the apiserver's webhook call mutates {check_ns}/default"
    );
    let log = pod_log(env, &pod);
    assert!(log.contains(&format!("CREATE ServiceAccount {check_ns}/default: patched")), "{log}");
    status_ok(env);

    let run = latest_run(env);
    let j = journal_of(&run);
    assert_eq!(j["rotation"], "webhook", "{j:#}");
    assert_eq!(j["path"], path, "{j:#}");
    assert_eq!(j["state"], "finished", "{j:#}");
    assert_eq!(j["fingerprints"]["oldWebhook"], before.fp.as_str(), "{j:#}");
    assert_eq!(j["fingerprints"]["newWebhook"], new.as_str(), "{j:#}");
    let phases = if path == "expired" { &EXPIRED_PHASES[..] } else { &NOT_EXPIRED_PHASES[..] };
    let outcomes = phase_outcomes(&j);
    let names: Vec<&str> = outcomes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, phases, "{j:#}");
    assert!(outcomes.iter().all(|(_, o)| o == "done"), "{outcomes:?}");
    assert_eq!(mode(&run.join("journal.json")), 0o600);
    let backup = run.join("backup");
    assert_eq!(
        read(&backup.join("lokomotive.yaml")),
        before.values,
        "the backup is the old lokomotive.yaml"
    );
    assert_eq!(mode(&backup.join("lokomotive.yaml")), 0o600);
    let manifest = backup.join("mutatingwebhookconfiguration.json");
    if kept_manifest {
        let kept: Value = serde_json::from_slice(&read(&manifest)).unwrap();
        assert_eq!(kept["kind"], "MutatingWebhookConfiguration");
        let kept_bundle = BASE64
            .decode(kept["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap())
            .unwrap();
        assert_eq!(kept_bundle, before.cert, "the kept manifest trusts the old certificate");
        assert_eq!(mode(&manifest), 0o600);
    } else {
        assert!(!manifest.exists(), "no manifest kept (not-expired path, or deleted by hand)");
    }
    env.step(&format!(
        "verified: new certificate sha256 {new}, pod {pod}; kube-apiserver restarts so far: {}",
        env.apiserver.restarts()
    ));
    // The check namespaces of `verify` are deleted again.
    wait_for("no certrotate-webhook-check-* namespace left", Duration::from_secs(90), || {
        let out = env.kubectl().args(["get", "namespaces", "-o=name"]).ok();
        let left: Vec<&str> =
            out.stdout.lines().filter(|l| l.contains("certrotate-webhook-check-")).collect();
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
    new
}
