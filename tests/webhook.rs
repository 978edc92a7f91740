//! End-to-end tests of `kubectl certrotate webhook` (issue 10): the admission webhook
//! server's serving certificate rotated on a real control plane, with the real
//! `admission-webhook` double serving it behind the Service's ClusterIP, so whether the
//! rotation worked is decided by the kube-apiserver's own webhook call (a new namespace's
//! `default` ServiceAccount comes out with `automountServiceAccountToken: false` only when the
//! apiserver reached the webhook over TLS with the configured `caBundle`).
//!
//! One `#[test]` = one environment (docs/test-harness.md); the steps of a scenario share it.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::Value;
use support::{AssetOptions, Assets, Cmd, Helm, Spawned, TestEnv, Tools, free_port, wait_for};

#[path = "webhook/helpers.rs"]
mod helpers;

use helpers::*;

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
            "#!/usr/bin/env bash\nset -eu\nrm -f {fifo}\nmkfifo {fifo}\nexec 3<>{fifo}\n\
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
    let j = journal_of(&latest_run(env));
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
    // What a `verify` killed during its admission check leaves behind.
    let left = "certrotate-webhook-check-killed";
    env.kubectl().args(["create", "namespace", left]).ok();
    env.kubectl()
        .args(["label", "namespace", left, "app.kubernetes.io/managed-by=kubectl-certrotate"])
        .ok();
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
    let gone = env
        .kubectl()
        .args(["get", "namespace", left, "--ignore-not-found", "-o=jsonpath={.status.phase}"])
        .ok();
    assert!(
        matches!(gone.stdout.trim(), "" | "Terminating"),
        "verify removes the namespace a killed check left: {gone}"
    );

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
            "#!/usr/bin/env bash\nprintf '%s\\n' \"$*\" >>{}\nexec {} \"$@\"\n",
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
    // What lokoctl's terraform leaves when it is stopped while replacing `local_file` for the
    // values: the old file deleted, the new one not yet written (a campaign found the re-run
    // refusing to start on it). Its apply writes it again.
    std::fs::remove_file(env.assets.dir.join(VALUES)).unwrap();

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
    let j = journal_of(&latest_run(&env));
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

/// lokoctl failing: exit 1 naming its command line; then killed inside lokoctl between its
/// terraform apply and its helm upgrade, and the not-expired run is completed by a plain
/// re-run (which must run lokoctl again); on the (forced) expired path the error also says how
/// to restore.
#[test]
fn a_failing_lokoctl_fails_with_its_command_line_and_the_way_back() {
    let env = cluster("webhook-lokoctl-fails");
    let before = Before::take(&env);
    let failing = script(
        &env,
        "failing-lokoctl",
        "#!/usr/bin/env bash\necho 'lokoctl: error: simulated failure: the cloud API refused the request' >&2\nexit 1\n",
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

    // Killed inside lokoctl after its terraform apply wrote the new certificate to the files
    // and the state, while its helm upgrade had not yet put it into the cluster.
    let upgrading = env.dir().join("helm-upgrading");
    let helm_hangs = script(
        &env,
        "helm-hangs-on-upgrade",
        &format!(
            "#!/usr/bin/env bash\nif [ \"$1\" = upgrade ]; then touch {marker}; exec sleep 300; fi\nexec {real} \"$@\"\n",
            marker = shell_quote(&upgrading),
            real = shell_quote(&Tools::get().helm3),
        ),
    );
    let mut rotation = webhook(&env).arg("-y").env("HELM", &helm_hangs).spawn();
    wait_for("lokoctl's helm upgrade to start", Duration::from_secs(180), || {
        if !rotation.is_running() {
            panic!("the rotation ended before lokoctl's helm upgrade: {}", rotation.kill());
        }
        if upgrading.exists() { Ok(()) } else { Err("not yet".to_string()) }
    });
    rotation.kill();
    env.step("rotation SIGKILLed during lokoctl's helm upgrade (files and state already new)");
    assert_ne!(read(&env.assets.dir.join(VALUES)), before.values, "terraform wrote the files");
    assert_eq!(fp(&secret_pair(&env).0), before.fp, "the cluster still has the old certificate");

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
    let mut j = journal_of(&run);
    j["assetsDir"] = other.dir.display().to_string().into();
    j["phases"] = Value::Array(vec![]);
    j["events"] = Value::Array(vec![]);
    j["fingerprints"] = serde_json::json!({});
    std::fs::write(other_run.join("journal.json"), serde_json::to_vec_pretty(&j).unwrap()).unwrap();
    env.step(&format!("{} also in progress on another asset dir", j["run"]));

    // Nothing serves the other cluster's API, and a re-run of a run in progress waits for a
    // restarting kube-apiserver within --timeout: keep that wait short.
    let out = webhook(&env)
        .args(["-y", "--timeout", "5s", "--assets-dir"])
        .arg(&other.dir)
        .env("ASSET_DIR", &other.dir)
        .env("CONFIG_DIR", &other.config_dir)
        .env("KUBECONFIG", other.kubeconfig())
        .run();
    env.step(&format!("webhook -y on the other asset dir: exit {:?}", out.code()));
    let error = logged_error(&env, &out);
    assert!(error.contains("did not answer within 5s"), "{out}");
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
