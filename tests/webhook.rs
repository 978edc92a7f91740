//! End-to-end tests of `kubectl certrotate webhook` (issue 10): the admission webhook
//! server's serving certificate rotated on a real control plane, with the real
//! `admission-webhook` double serving it behind the Service's ClusterIP, so whether the
//! rotation worked is decided by the kube-apiserver's own webhook call (a new namespace's
//! `default` ServiceAccount comes out with `automountServiceAccountToken: false` only when the
//! apiserver reached the webhook over TLS with the configured `caBundle`).
//!
//! One `#[test]` = one environment (docs/test-harness.md); the steps of a scenario share it.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use openssl::asn1::Asn1Time;
use openssl::pkey::PKey;
use openssl::x509::X509;
use serde_json::Value;
use support::{
    AssetOptions, Assets, Cmd, Helm, Output, Spawned, TestEnv, Tools, fingerprints, free_port,
    wait_for,
};

const NS: &str = "lokomotive-system";
const NAME: &str = "admission-webhook-server";
const POD_LABEL: &str = "k8s-app=admission-webhook-server";
const VALUES: &str = "cluster-assets/charts/lokomotive-system/lokomotive.yaml";
const CERT_RESOURCE: &str = "tls_locally_signed_cert.admission-webhook-server";
const SERVICE_NAMES: [&str; 5] = [
    "admission-webhook-server",
    "admission-webhook-server.lokomotive-system",
    "admission-webhook-server.lokomotive-system.svc",
    "admission-webhook-server.lokomotive-system.svc.cluster",
    "admission-webhook-server.lokomotive-system.svc.cluster.local",
];
const NOT_EXPIRED_PHASES: [&str; 4] = ["backup", "certificate", "restart", "verify"];
const EXPIRED_PHASES: [&str; 5] = ["backup", "unhook", "certificate", "restart", "verify"];

// ----------------------------------------------------------------------------- reading ---

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fp(pem: &[u8]) -> String {
    fingerprints(pem).into_iter().next().expect("a certificate")
}

/// `webhook.servingCert` and `webhook.servingKey` of `lokomotive.yaml`, decoded (PEM).
fn values_pair(env: &TestEnv) -> (Vec<u8>, Vec<u8>) {
    let text = String::from_utf8(read(&env.assets.dir.join(VALUES))).unwrap();
    let field = |name: &str| {
        let value = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in {VALUES}:\n{text}"));
        BASE64.decode(value.trim().trim_matches('"')).expect("base64")
    };
    (field("servingCert"), field("servingKey"))
}

fn tfstate(env: &TestEnv) -> Vec<u8> {
    read(&env.assets.terraform_dir().join("terraform.tfstate"))
}

fn key_matches(cert: &[u8], key: &[u8]) -> bool {
    let cert = X509::from_pem(cert).unwrap();
    let key = PKey::private_key_from_pem(key).unwrap();
    cert.public_key().unwrap().public_eq(&key)
}

fn dns_names(cert: &[u8]) -> Vec<String> {
    let cert = X509::from_pem(cert).unwrap();
    cert.subject_alt_names()
        .map(|n| n.iter().filter_map(|n| n.dnsname().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn expired(cert: &[u8]) -> bool {
    X509::from_pem(cert).unwrap().not_after() < Asn1Time::days_from_now(0).unwrap()
}

/// `cert.pem` and `key.pem` of Secret `lokomotive-system/admission-webhook-server`.
fn secret_pair(env: &TestEnv) -> (Vec<u8>, Vec<u8>) {
    let api: Api<Secret> = Api::namespaced(env.client.clone(), NS);
    let data = env.block_on(api.get(NAME)).expect("the webhook Secret").data.unwrap_or_default();
    let get = |k: &str| data.get(k).unwrap_or_else(|| panic!("Secret has no {k}")).0.clone();
    (get("cert.pem"), get("key.pem"))
}

fn configuration(env: &TestEnv) -> Option<MutatingWebhookConfiguration> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(env.client.clone());
    env.block_on(api.get_opt(NAME)).expect("reading the MutatingWebhookConfiguration")
}

/// The `caBundle` (PEM) of the webhook configuration; `None` while it does not exist.
fn ca_bundle(env: &TestEnv) -> Option<Vec<u8>> {
    configuration(env).map(|c| {
        let hooks = c.webhooks.unwrap_or_default();
        assert_eq!(hooks.len(), 1, "one webhook: {hooks:?}");
        hooks[0].client_config.ca_bundle.clone().expect("a caBundle").0
    })
}

/// The webhooks of the configuration without server-set fields, to compare a re-created one.
fn webhooks_spec(env: &TestEnv) -> Value {
    serde_json::to_value(configuration(env).expect("the configuration").webhooks).unwrap()
}

fn is_webhook_pod(pod: &Pod) -> bool {
    pod.metadata.namespace.as_deref() == Some(NS)
        && pod.labels().get("k8s-app").is_some_and(|v| v == NAME)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The one webhook pod, once it is the only one and Ready (a rollout's old pod gone).
fn the_webhook_pod(env: &TestEnv) -> String {
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

fn pod_log(env: &TestEnv, pod: &str) -> String {
    env.kubectl().args(["logs", "-n", NS, pod]).ok().stdout
}

/// Creates namespace `ns` and tells whether the kube-apiserver's call to the webhook mutated
/// its `default` ServiceAccount (`false`: admitted unchanged, failurePolicy Ignore).
fn admission_mutates(env: &TestEnv, ns: &str) -> bool {
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
fn runs(env: &TestEnv) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(env.assets.dir.join("certrotate")) else {
        return Vec::new();
    };
    let mut runs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("webhook-"))
        .collect();
    runs.sort();
    runs
}

fn latest_run(env: &TestEnv) -> PathBuf {
    runs(env).pop().expect("a webhook run folder")
}

fn journal(run: &Path) -> Value {
    serde_json::from_slice(&read(&run.join("journal.json"))).expect("journal.json is JSON")
}

/// The outcome of the latest record of each phase, in the journal's order of first record.
fn phase_outcomes(journal: &Value) -> Vec<(String, String)> {
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

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

// ---------------------------------------------------------------------------- commands ---

/// `kubectl certrotate webhook` with an operator's environment (LOKOCTL = the double).
fn webhook(env: &TestEnv) -> Cmd {
    env.certrotate().arg("webhook")
}

fn timed(env: &TestEnv, what: &str, cmd: Cmd) -> Output {
    let started = Instant::now();
    let out = cmd.run();
    env.step(&format!("{what}: exit {:?} in {:.1?}", out.code(), started.elapsed()));
    out
}

fn text(out: &Output) -> String {
    format!("{}\n{}", out.stdout, out.stderr)
}

/// The tool's error (from the line starting `error: ` to the end of stderr), logged as a step.
fn logged_error(env: &TestEnv, out: &Output) -> String {
    let lines: Vec<&str> = out.stderr.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("error: ")).unwrap_or(lines.len());
    let error = lines[at..].join("\n");
    env.step(&format!("its error: {error}"));
    error
}

/// An executable script in the test's temp dir.
fn script(env: &TestEnv, name: &str, body: &str) -> PathBuf {
    let dir = env.dir().join("scripts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/usr/bin/env bash\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

// ------------------------------------------------------------------------------- setup ---

/// A cluster with the control-plane charts installed by the lokoctl double (helm 3), the
/// webhook pod Ready.
fn cluster(name: &str) -> TestEnv {
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
fn expired_cluster(name: &str) -> TestEnv {
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
    assert!(key_matches(&cert, &key));
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
struct Before {
    values: Vec<u8>,
    cert: Vec<u8>,
    fp: String,
    pod: String,
    webhooks: Value,
}

impl Before {
    fn take(env: &TestEnv) -> Before {
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
fn status_ok(env: &TestEnv) {
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
fn check_rotated(env: &TestEnv, before: &Before, path: &str, check_ns: &str) -> String {
    let (cert, key) = values_pair(env);
    let new = fp(&cert);
    assert_ne!(new, before.fp, "lokomotive.yaml holds a new certificate");
    assert!(!expired(&cert), "the new certificate is valid");
    assert!(key_matches(&cert, &key), "lokomotive.yaml's key matches its certificate");
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
    assert!(key_matches(&served, &served_key), "the Secret's key.pem matches cert.pem");
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
    let j = journal(&run);
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
    if path == "expired" {
        let kept: Value = serde_json::from_slice(&read(&manifest)).unwrap();
        assert_eq!(kept["kind"], "MutatingWebhookConfiguration");
        let kept_bundle = BASE64
            .decode(kept["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap())
            .unwrap();
        assert_eq!(kept_bundle, before.cert, "the kept manifest trusts the old certificate");
        assert_eq!(mode(&manifest), 0o600);
    } else {
        assert!(!manifest.exists(), "the not-expired path keeps no manifest");
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

/// Whether a process is alive (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

/// A process of ours that must not outlive the test: SIGKILLed when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ =
                std::process::Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
        }
    }
}

/// A rotation waiting in its lokoctl: the expired path has deleted the configuration, the
/// not-expired one has tainted, nothing is applied yet.
struct InLokoctl {
    rotation: Spawned,
    /// The lokoctl wrapper, a direct child of the tool.
    lokoctl: u32,
    /// A background child of the wrapper standing for lokoctl's own terraform or helm: a
    /// grandchild of the tool, which no death signal reaches; it carries the run's
    /// `KUBECTL_CERTROTATE_RUN` like any process of the run.
    grandchild: KillOnDrop,
}

/// Starts the rotation with a lokoctl that waits 60 s before exec'ing the double, and
/// returns once the wrapper runs.
fn rotation_in_slow_lokoctl(env: &TestEnv) -> InLokoctl {
    rotation_in_slow_lokoctl_via(env, &env.assets.dir)
}

/// [`rotation_in_slow_lokoctl`] with the asset dir spelled `asset_dir` (a symlink, say).
fn rotation_in_slow_lokoctl_via(env: &TestEnv, asset_dir: &Path) -> InLokoctl {
    let marker = env.dir().join("slow-lokoctl.pids");
    let fifo = env.dir().join("slow-lokoctl.fifo");
    // The wrapper waits without a child process (`read -t` on a FIFO opened read-write), so
    // once it dies of its death signal only the grandchild is left.
    let slow = script(
        env,
        "slow-lokoctl",
        &format!(
            "set -eu\nrm -f {fifo}\nmkfifo {fifo}\nexec 3<>{fifo}\n\
             sleep 300 </dev/null >/dev/null 2>&1 &\necho $$ $! >{marker}\n\
             read -r -t 60 -u 3 || true\nexec {real} \"$@\"\n",
            fifo = shell_quote(&fifo),
            marker = shell_quote(&marker),
            real = shell_quote(&Tools::get().lokoctl_double),
        ),
    );
    let _ = std::fs::remove_file(&marker);
    let mut rotation =
        webhook(env).env("ASSET_DIR", asset_dir).args(["-y", "--lokoctl"]).arg(&slow).spawn();
    let (lokoctl, grandchild) =
        wait_for("the slow lokoctl to start", Duration::from_secs(120), || {
            if !rotation.is_running() {
                panic!("the rotation ended before lokoctl: {}", rotation.kill());
            }
            let text = std::fs::read_to_string(&marker).map_err(|e| e.to_string())?;
            match text.split_whitespace().map(str::parse).collect::<Result<Vec<u32>, _>>() {
                Ok(pids) if pids.len() == 2 => Ok((pids[0], pids[1])),
                _ => Err(format!("{text:?}")),
            }
        });
    InLokoctl { rotation, lokoctl, grandchild: KillOnDrop(grandchild) }
}

/// The rotation is killed (SIGKILL) while its lokoctl waits, i.e. after the expired path
/// deleted the webhook configuration and before anything was applied. Returns the
/// grandchild left behind.
fn kill_during_lokoctl(env: &TestEnv) -> KillOnDrop {
    kill_during_lokoctl_via(env, &env.assets.dir)
}

/// [`kill_during_lokoctl`] with the asset dir spelled `asset_dir`.
fn kill_during_lokoctl_via(env: &TestEnv, asset_dir: &Path) -> KillOnDrop {
    let InLokoctl { mut rotation, lokoctl, grandchild } =
        rotation_in_slow_lokoctl_via(env, asset_dir);
    let out = rotation.kill();
    env.step(&format!("rotation SIGKILLed while lokoctl (pid {lokoctl}) waits"));
    wait_for("the lokoctl wrapper to die with the tool", Duration::from_secs(5), || {
        if alive(lokoctl) { Err(format!("pid {lokoctl} alive")) } else { Ok(()) }
    });
    assert!(alive(grandchild.0), "the grandchild outlives the tool (no death signal)");
    assert!(
        ca_bundle(env).is_none(),
        "the configuration is deleted (unhook) and not yet re-created:\n{out}"
    );
    let j = journal(&latest_run(env));
    let outcomes = phase_outcomes(&j);
    assert_eq!(
        outcomes,
        [("backup", "done"), ("unhook", "done"), ("certificate", "running")]
            .map(|(n, o)| (n.to_string(), o.to_string())),
        "{j:#}"
    );
    grandchild
}

// ------------------------------------------------------------------------------- tests ---

/// Not-expired path, lokoctl's upgrades with helm 3: the whole rotation end to end, then a
/// re-run has nothing to do.
#[test]
fn rotation_with_lokoctl_on_helm3_serves_the_new_certificate() {
    let env = cluster("webhook-helm3");
    let before = Before::take(&env);
    assert!(admission_mutates(&env, "before-rotation"), "the webhook works before");
    let lokoctl_log = env.dir().join("lokoctl.log");
    let out = timed(
        &env,
        "webhook -y",
        webhook(&env)
            .args(["-y", "--helm"])
            .arg(&Tools::get().helm3)
            .env("CERTROTATE_LOKOCTL_LOG", &lokoctl_log),
    );
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("(not-expired path)"), "{out}");
    assert_eq!(String::from_utf8(read(&lokoctl_log)).unwrap(), "cluster apply --confirm\n");
    let new = check_rotated(&env, &before, "not-expired", "after-rotation");
    assert!(out.stdout.contains(&format!("newWebhook: sha256 {new}")), "{out}");

    let pod = the_webhook_pod(&env);
    let again = timed(&env, "webhook -y again", webhook(&env).arg("-y"));
    assert_eq!(again.code(), Some(0), "{again}");
    assert!(again.stdout.contains("nothing to do"), "{again}");
    assert_eq!(fp(&values_pair(&env).0), new, "nothing changed");
    assert_eq!(the_webhook_pod(&env), pod, "no restart");
    assert_eq!(runs(&env).len(), 1, "no new run");

    // --restore-webhook: never while a rotation holds the lock, never for a finished run
    // (lokoctl re-created the configuration with the new certificate).
    let lock = env.assets.dir.join("certrotate/.lock");
    let mut holder = Cmd::new("flock").arg(&lock).args(["sleep", "60"]).spawn();
    wait_for("flock to hold the rotation lock", Duration::from_secs(10), || {
        let probe = Cmd::new("flock").args(["-n"]).arg(&lock).arg("true").run();
        if probe.code() == Some(1) { Ok(()) } else { Err(format!("{probe}")) }
    });
    let locked = webhook(&env).args(["--restore-webhook", "-y"]).run();
    holder.kill();
    assert_eq!(locked.code(), Some(1), "{locked}");
    assert!(text(&locked).contains("another rotation"), "{locked}");
    let finished = webhook(&env).args(["--restore-webhook", "-y"]).run();
    assert_eq!(finished.code(), Some(1), "{finished}");
    assert!(text(&finished).contains("finished"), "{finished}");
    assert_eq!(fp(ca_bundle(&env).as_deref().unwrap_or_default()), new, "caBundle unchanged");
}

/// Not-expired path, lokoctl's helm is helm 4 (upgrading the releases helm 3 installed);
/// the JSON report.
#[test]
fn rotation_with_lokoctl_on_helm4_reports_json() {
    let env = cluster("webhook-helm4");
    let before = Before::take(&env);
    assert!(admission_mutates(&env, "before-rotation"), "the webhook works before");
    let helm_log = env.dir().join("helm4.log");
    let helm4 = script(
        &env,
        "helm4",
        &format!(
            "printf '%s\\n' \"$*\" >>{}\nexec {} \"$@\"\n",
            shell_quote(&helm_log),
            shell_quote(&Tools::get().helm4)
        ),
    );
    let out = timed(
        &env,
        "webhook -y -o json (HELM=helm 4 for lokoctl)",
        webhook(&env)
            .args(["-y", "-o", "json", "--helm"])
            .arg(&Tools::get().helm3)
            .env("HELM", &helm4),
    );
    assert_eq!(out.code(), Some(0), "{out}");
    let helm_calls = String::from_utf8(read(&helm_log)).unwrap();
    assert!(
        helm_calls.contains("upgrade --install --atomic lokomotive"),
        "lokoctl upgraded with helm 4: {helm_calls}"
    );
    let new = check_rotated(&env, &before, "not-expired", "after-rotation");
    let report: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["kind"], "WebhookRotation", "{report:#}");
    assert_eq!(report["path"], "not-expired", "{report:#}");
    let phases: Vec<(&str, &str)> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["result"].as_str().unwrap()))
        .collect();
    assert_eq!(phases, NOT_EXPIRED_PHASES.map(|n| (n, "done")), "{report:#}");
    assert_eq!(report["fingerprints"]["oldWebhook"], before.fp.as_str());
    assert_eq!(report["fingerprints"]["newWebhook"], new.as_str());
    assert_eq!(report["next"], "nothing: the rotation is complete", "{report:#}");
    let history = env
        .helm(Helm::V4)
        .args(["history", "lokomotive", "-n", NS, "--max", "1", "-o", "json"])
        .ok();
    assert!(history.stdout.contains("\"deployed\""), "{history}");
}

/// An expired certificate: the apiserver's webhook call fails TLS (ServiceAccounts go through
/// unpatched); the dry run and the rotation take the expired path by themselves, and after it
/// the webhook works again.
#[test]
fn expired_certificate_takes_the_expired_path_and_the_webhook_works_again() {
    let env = expired_cluster("webhook-expired");
    let before = Before::take(&env);
    assert!(
        !admission_mutates(&env, "while-expired"),
        "an expired serving certificate: the call fails, failurePolicy Ignore admits unchanged"
    );
    assert!(
        !pod_log(&env, &before.pod).contains("while-expired/default"),
        "the webhook never got that request"
    );

    let plan = webhook(&env).args(["--dry-run", "-o", "json"]).ok();
    let plan: Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(plan["kind"], "WebhookPlan", "{plan:#}");
    assert_eq!(plan["path"], "expired", "{plan:#}");
    let names: Vec<&str> =
        plan["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, EXPIRED_PHASES, "{plan:#}");
    assert_eq!(plan["unresolved"], Value::Array(vec![]), "{plan:#}");
    let table = webhook(&env).arg("--dry-run").ok();
    assert!(
        table.stdout.contains("DELETE mutatingwebhookconfiguration admission-webhook-server"),
        "{table}"
    );
    assert!(table.stdout.contains("--skip-pre-update-health-check"), "{table}");
    assert!(
        !env.assets.dir.join("certrotate").exists(),
        "a dry run writes nothing, not even the lock"
    );
    assert_eq!(read(&env.assets.dir.join(VALUES)), before.values);
    assert_eq!(webhooks_spec(&env), before.webhooks, "the configuration is untouched");

    let lokoctl_log = env.dir().join("lokoctl.log");
    let out = timed(
        &env,
        "webhook -y",
        webhook(&env).arg("-y").env("CERTROTATE_LOKOCTL_LOG", &lokoctl_log),
    );
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("(expired path)"), "{out}");
    assert_eq!(
        String::from_utf8(read(&lokoctl_log)).unwrap(),
        "cluster apply --confirm --skip-pre-update-health-check\n"
    );
    check_rotated(&env, &before, "expired", "after-rotation");
}

/// Killed (SIGKILL) after the expired path deleted the configuration and before lokoctl
/// applied: the configuration stays deleted; a plain re-run completes and it is back.
#[test]
fn killed_after_unhook_a_plain_rerun_restores_the_webhook_and_completes() {
    let env = expired_cluster("webhook-kill");
    let before = Before::take(&env);
    // The killed run spells the asset dir through a symlink, the re-run does not: they share
    // the lock, and must share the marker that finds the killed run's children.
    let link = env.dir().join("assets-link");
    std::os::unix::fs::symlink(&env.assets.dir, &link).unwrap();
    let leftover = kill_during_lokoctl_via(&env, &link);
    assert_eq!(read(&env.assets.dir.join(VALUES)), before.values, "nothing applied yet");

    let out = timed(&env, "webhook -y (re-run)", webhook(&env).arg("-y"));
    assert_eq!(out.code(), Some(0), "{out}");
    // The summary accounts for every phase: unhook as done by the killed invocation.
    let unhook: Vec<&str> =
        out.stdout.lines().filter(|l| l.trim_start().starts_with("unhook")).collect();
    assert!(
        unhook.len() == 1 && unhook[0].contains("already-done"),
        "unhook is not run again: {out}"
    );
    check_rotated(&env, &before, "expired", "after-rerun");
    let j = journal(&latest_run(&env));
    assert!(
        j["phases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "certificate" && p["outcome"] == "interrupted"),
        "the killed attempt is recorded as interrupted: {j:#}"
    );
    assert_eq!(runs(&env).len(), 1, "the re-run resumed the same run");
    // docs/rotations.md: "the next invocation kills whatever of a killed run is left
    // (lokoctl's own terraform and helm) before it decides what is done".
    assert!(
        !alive(leftover.0),
        "the re-run stopped what the killed run left running (pid {}, {})",
        leftover.0,
        std::fs::read_to_string(format!("/proc/{}/environ", leftover.0))
            .unwrap_or_default()
            .split('\0')
            .find(|v| v.starts_with("KUBECTL_CERTROTATE_RUN="))
            .unwrap_or("no KUBECTL_CERTROTATE_RUN")
    );
}

/// The same situation abandoned: `--restore-webhook` (its dry run first) creates the kept
/// configuration again, trusting the OLD certificate, and changes nothing else.
#[test]
fn killed_after_unhook_then_restore_webhook_puts_the_old_configuration_back() {
    let env = expired_cluster("webhook-restore");
    let before = Before::take(&env);
    let _leftover = kill_during_lokoctl(&env);
    let state = tfstate(&env);
    let journal_before = read(&latest_run(&env).join("journal.json"));

    let plan = webhook(&env).args(["--restore-webhook", "--dry-run"]).run();
    assert_eq!(plan.code(), Some(0), "{plan}");
    assert!(
        plan.stdout.contains("CREATE mutatingwebhookconfiguration admission-webhook-server"),
        "{plan}"
    );
    assert!(
        plan.stdout.contains("mutatingwebhookconfiguration.json"),
        "names the kept manifest: {plan}"
    );
    assert!(ca_bundle(&env).is_none(), "the dry run created nothing");

    let out = timed(
        &env,
        "webhook --restore-webhook -y",
        webhook(&env).args(["--restore-webhook", "-y"]),
    );
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("created again"), "{out}");
    assert_eq!(
        ca_bundle(&env).as_deref(),
        Some(before.cert.as_slice()),
        "caBundle = the OLD certificate"
    );
    assert_eq!(webhooks_spec(&env), before.webhooks, "the configuration as it was");
    assert_eq!(read(&env.assets.dir.join(VALUES)), before.values, "lokomotive.yaml unchanged");
    assert_eq!(tfstate(&env), state, "the terraform state unchanged by the restore");
    assert_eq!(secret_pair(&env).0, before.cert, "the Secret unchanged");
    assert_eq!(the_webhook_pod(&env), before.pod, "no restart");
    assert_eq!(
        read(&latest_run(&env).join("journal.json")),
        journal_before,
        "the journal unchanged"
    );

    let again = webhook(&env).args(["--restore-webhook", "-y"]).run();
    assert_eq!(again.code(), Some(0), "{again}");
    assert!(again.stdout.contains("exists already"), "{again}");
}

/// lokoctl failing: exit 1 naming its command line; the not-expired run is then completed by
/// a plain re-run; on the (forced) expired path the error also says how to restore.
#[test]
fn a_failing_lokoctl_fails_with_its_command_line_and_the_way_back() {
    let env = cluster("webhook-lokoctl-fails");
    let before = Before::take(&env);
    let failing = script(
        &env,
        "failing-lokoctl",
        "echo 'lokoctl: error: simulated failure: the cloud API refused the request' >&2\nexit 1\n",
    );
    let out = timed(
        &env,
        "webhook -y (failing lokoctl)",
        webhook(&env).args(["-y", "--lokoctl"]).arg(&failing),
    );
    assert_eq!(out.code(), Some(1), "{out}");
    let all = text(&out);
    logged_error(&env, &out);
    assert!(
        all.contains("error: `lokoctl cluster apply --confirm` failed (exit code 1)"),
        "names the command line: {out}"
    );
    assert!(all.contains("simulated failure"), "shows lokoctl's output: {out}");
    assert!(
        !all.contains("--restore-webhook"),
        "nothing to restore on the not-expired path: {out}"
    );
    assert_eq!(
        ca_bundle(&env).as_deref(),
        Some(before.cert.as_slice()),
        "the configuration untouched"
    );
    assert_eq!(read(&env.assets.dir.join(VALUES)), before.values, "nothing applied");

    let out = timed(&env, "webhook -y (re-run, real double)", webhook(&env).arg("-y"));
    assert_eq!(out.code(), Some(0), "{out}");
    check_rotated(&env, &before, "not-expired", "after-rerun");

    let out = timed(
        &env,
        "webhook -y --new-run --expired (failing lokoctl)",
        webhook(&env).args(["-y", "--new-run", "--expired", "--lokoctl"]).arg(&failing),
    );
    assert_eq!(out.code(), Some(1), "{out}");
    let all = text(&out);
    logged_error(&env, &out);
    assert!(
        all.contains(
            "`lokoctl cluster apply --confirm --skip-pre-update-health-check` failed (exit code 1)"
        ),
        "names the command line: {out}"
    );
    assert!(all.contains("simulated failure"), "{out}");
    assert!(
        all.contains("kubectl certrotate webhook --restore-webhook"),
        "says how to restore: {out}"
    );
    assert!(ca_bundle(&env).is_none(), "the expired path deleted the configuration");
    assert_eq!(runs(&env).len(), 2);
}

/// The new webhook pods never become Ready: the restart fails after about `--timeout`, with
/// kubectl's rollout status wording, and the configuration stays; released, a re-run
/// completes.
#[test]
fn a_webhook_deployment_that_never_gets_ready_fails_the_restart_in_time() {
    let env = cluster("webhook-never-ready");
    let before = Before::take(&env);
    let old = before.pod.clone();
    env.kubelet.set_never_ready(Some(Arc::new(move |pod: &Pod| {
        is_webhook_pod(pod) && pod.name_any() != old
    })));
    for phase in ["backup", "certificate"] {
        let out = timed(
            &env,
            &format!("webhook -y --phase {phase}"),
            webhook(&env).args(["-y", "--phase", phase]),
        );
        assert_eq!(out.code(), Some(0), "{out}");
    }
    let started = Instant::now();
    let out = timed(
        &env,
        "webhook -y --phase restart --timeout 30s",
        webhook(&env).args(["-y", "--phase", "restart", "--timeout", "30s"]),
    );
    let took = started.elapsed();
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        took >= Duration::from_secs(29) && took <= Duration::from_secs(45),
        "failed after {took:?}"
    );
    let all = text(&out);
    logged_error(&env, &out);
    assert!(all.contains("deployment/admission-webhook-server"), "{out}");
    assert!(
        all.contains("Waiting for deployment \"admission-webhook-server\" rollout to finish"),
        "says what it still waits for, as kubectl rollout status: {out}"
    );
    assert!(ca_bundle(&env).is_some(), "the configuration is present");

    env.kubelet.set_never_ready(None);
    let out = timed(&env, "webhook -y (released)", webhook(&env).arg("-y"));
    assert_eq!(out.code(), Some(0), "{out}");
    check_rotated(&env, &before, "not-expired", "after-release");
}

/// Refusals before any change (another cluster's kubeconfig, a missing lokoctl or
/// terraform), and the dry runs of both paths: nothing changes.
#[test]
fn refusals_and_dry_runs_change_nothing() {
    let env = cluster("webhook-refusals");
    let module = env.assets.bootkube_module();
    let snapshot = || {
        let config = configuration(&env).expect("the configuration");
        (
            read(&env.assets.dir.join(VALUES)),
            tfstate(&env),
            config.metadata.resource_version,
            webhooks_spec(&env),
        )
    };
    let original = snapshot();

    for (flags, path, phases) in [
        (&[][..], "not-expired", &NOT_EXPIRED_PHASES[..]),
        (&["--expired"][..], "expired", &EXPIRED_PHASES[..]),
    ] {
        let out = webhook(&env).args(["--dry-run", "-o", "json"]).args(flags).run();
        assert_eq!(out.code(), Some(0), "{out}");
        let plan: Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(
            (&plan["kind"], &plan["path"]),
            (&Value::from("WebhookPlan"), &Value::from(path)),
            "{plan:#}"
        );
        let names: Vec<&str> = plan["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, phases, "{plan:#}");
        let table = webhook(&env).arg("--dry-run").args(flags).ok();
        assert!(
            table.stdout.contains(&format!("terraform taint {module}.{CERT_RESOURCE}")),
            "{table}"
        );
        assert!(table.stdout.contains("lokoctl cluster apply --confirm"), "{table}");
        assert!(table.stdout.contains("deployment/admission-webhook-server"), "{table}");
        assert_eq!(
            table.stdout.contains("DELETE mutatingwebhookconfiguration"),
            path == "expired",
            "{table}"
        );
    }
    let restore = webhook(&env).args(["--restore-webhook", "--dry-run"]).run();
    env.step(&format!("--restore-webhook --dry-run without a run: exit {:?}", restore.code()));
    assert_ne!(restore.code(), Some(0), "no run, nothing to restore: {restore}");
    assert!(text(&restore).contains("nothing to restore"), "{restore}");
    assert!(
        !env.assets.dir.join("certrotate").exists(),
        "the dry runs wrote nothing, not even the lock"
    );

    let other = Assets::make(
        &env.dir().join("other-cluster"),
        free_port(),
        &AssetOptions { cluster: Some("other".into()), ..AssetOptions::default() },
    );
    let refusals = [
        (
            "another cluster's kubeconfig",
            webhook(&env).env("KUBECONFIG", other.kubeconfig()),
            &["points at another cluster"][..],
        ),
        (
            "--lokoctl /nonexistent",
            webhook(&env).args(["--lokoctl", "/nonexistent"]),
            &["/nonexistent", "--lokoctl"][..],
        ),
        (
            "--terraform /nonexistent",
            webhook(&env).args(["--terraform", "/nonexistent"]),
            &["/nonexistent", "--terraform"][..],
        ),
    ];
    for (what, cmd, needles) in refusals {
        let out = cmd.arg("-y").run();
        let error = out.stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
        env.step(&format!("{what}: exit {:?}, {error}", out.code()));
        assert_eq!(out.code(), Some(1), "{out}");
        for needle in needles {
            assert!(error.contains(needle), "{what}: the error names {needle:?}: {out}");
        }
    }
    assert!(
        original == snapshot(),
        "lokomotive.yaml, the state and the configuration are unchanged"
    );
    assert!(runs(&env).is_empty(), "no run was started");
}

/// Two rotations of different clusters started in the same UTC second get the same run name
/// (`webhook-<second>`, the `KUBECTL_CERTROTATE_RUN` of their children). A re-run on the
/// other asset dir must not stop this cluster's programs. Made deterministic by giving a
/// second asset dir an in-progress run of the same name (what a same-second start gives).
#[test]
fn same_second_runs_on_two_asset_dirs_leave_each_other_alone() {
    let env = cluster("webhook-same-run-name");
    // The run exists before lokoctl starts (a resumed run), so its children carry its name.
    let out =
        timed(&env, "webhook -y --phase backup", webhook(&env).args(["-y", "--phase", "backup"]));
    assert_eq!(out.code(), Some(0), "{out}");
    let InLokoctl { mut rotation, lokoctl, grandchild } = rotation_in_slow_lokoctl(&env);
    let run = latest_run(&env);
    let other = Assets::make(
        &env.dir().join("other-cluster"),
        free_port(),
        &AssetOptions { cluster: Some("other".into()), ..AssetOptions::default() },
    );
    let other_run = other.dir.join("certrotate").join(run.file_name().unwrap());
    std::fs::create_dir_all(other_run.join("backup")).unwrap();
    let mut j = journal(&run);
    j["assetsDir"] = other.dir.display().to_string().into();
    j["phases"] = Value::Array(vec![]);
    j["events"] = Value::Array(vec![]);
    j["fingerprints"] = serde_json::json!({});
    std::fs::write(other_run.join("journal.json"), serde_json::to_vec_pretty(&j).unwrap()).unwrap();
    env.step(&format!("{} also in progress on another asset dir", j["run"]));

    let out = webhook(&env)
        .args(["-y", "--assets-dir"])
        .arg(&other.dir)
        .env("ASSET_DIR", &other.dir)
        .env("CONFIG_DIR", &other.config_dir)
        .env("KUBECONFIG", other.kubeconfig())
        .run();
    env.step(&format!("webhook -y on the other asset dir: exit {:?}", out.code()));
    logged_error(&env, &out);
    std::thread::sleep(Duration::from_millis(500));
    let (wrapper, child) = (alive(lokoctl), alive(grandchild.0));
    let running = rotation.is_running();
    let this = rotation.kill();
    assert!(
        wrapper && child && running,
        "the other asset dir's re-run stopped this cluster's rotation (lokoctl alive: {wrapper}, \
         its child alive: {child}, rotation running: {running}):\n--- the other re-run \
         ---\n{out}\n--- this rotation ---\n{this}"
    );
}
