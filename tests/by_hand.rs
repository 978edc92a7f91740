//! Ad-hoc fixes (issue 18): rotations an operator began by hand, typing the manual procedure
//! (`../shared/seed/certificate-rotation.md`) up to some step, picked up by the tool from the
//! real state. Each scenario types the seed's commands verbatim (in a shell, in the asset
//! dir's `terraform/`, with `-auto-approve` where terraform would ask), then runs the tool,
//! and ends where a rotation the tool ran from the start ends, with the CA the cluster
//! trusted before in the run's backup.
//!
//! | test | begun by hand up to |
//! |---|---|
//! | `the_targeted_apply_…_by_phase_bundle` | `cp` + taint + targeted apply: `--phase bundle` picks it up, then the rest |
//! | `the_targeted_apply_…_without_its_copy_…` | the same with the `cp` file lost: a plain run keeps the old CA from the cluster's Secret |
//! | `a_failed_helm_upgrade_…` | the bundle's `helm upgrade` killed (release left pending): a plain run completes |
//! | `the_restarts_typed_by_hand_…` | up to the extension servers' restart: a plain run completes without a second new CA |
//! | `an_expired_webhook_…` | `kubectl delete MutatingWebhookConfiguration` and the taint (expired path): `webhook -y` completes |
//!
//! Each starts its own control plane: a second rotation on the cluster of a first one waited
//! minutes for kube-controller-manager, whose watches back off further with each kube-apiserver
//! restart (the two-scenario tests took 420-430 s, one scenario takes 80-90 s).

mod support;

#[path = "aggregation/helpers.rs"]
mod aggregation;
#[path = "webhook/helpers.rs"]
mod webhook;

use std::time::Duration;

use aggregation::{
    CaWatch, Original, WAIT, agg, check_rotated, fp, helm_history, journal, read, secret_cas,
};
use support::{Cmd, Output, TestEnv, Tools};

/// The seed's commands in a shell, in `terraform/`, with `terraform`, `helm` (3) and
/// `kubectl` on the PATH and `$ASSET_DIR`, `$CONFIG_DIR` set, as the operator had them.
fn typed(env: &TestEnv, what: &str, script: &str) -> Output {
    let bin = env.dir().join("operator-bin");
    if !bin.exists() {
        std::fs::create_dir_all(&bin).unwrap();
        let tools = Tools::get();
        for (name, real) in
            [("terraform", &tools.terraform), ("helm", &tools.helm3), ("kubectl", &tools.kubectl)]
        {
            std::os::unix::fs::symlink(real, bin.join(name)).unwrap();
        }
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Cmd::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .dir(env.assets.terraform_dir())
        .env("PATH", path)
        .env("ASSET_DIR", &env.assets.dir)
        .env("CONFIG_DIR", &env.assets.config_dir)
        .env("TF_CLI_CONFIG_FILE", &Tools::get().tf_cli_config)
        .env("TF_IN_AUTOMATION", "1")
        .timeout(Duration::from_secs(300))
        .run();
    env.step(&format!("typed by hand: {what}: exit {:?}", out.code()));
    out
}

/// The seed's first commands of the not-expired aggregation rotation: the backup copy (when
/// `copy`), the CA key's taint and the apply that targets only the certificate's file.
fn typed_up_to_the_targeted_apply(env: &TestEnv, copy: bool) {
    let module = env.assets.bootkube_module();
    let cp = if copy {
        "cp ../cluster-assets/tls/aggregation-ca.crt ./aggregation-ca.crt\n"
    } else {
        "rm -f ./aggregation-ca.crt\n"
    };
    let out = typed(
        env,
        "cp, terraform taint, terraform apply -target",
        &format!(
            "{cp}terraform taint {module}.tls_private_key.aggregation-ca[0]\n\
             terraform apply -auto-approve -target {module}.local_file.aggregation-ca-crt\n"
        ),
    );
    assert!(out.success(), "{out}");
}

/// The seed's bundle upgrade, verbatim (after `cat … >> ./aggregation-ca.crt`).
const BUNDLE_UPGRADE: &str = "cat ../cluster-assets/tls/aggregation-ca.crt >> ./aggregation-ca.crt\n\
     export KUBECONFIG=$ASSET_DIR/cluster-assets/auth/kubeconfig\n\
     helm upgrade -n kube-system kube-apiserver --reuse-values --set apiserver.aggregationCaCert=$(cat ./aggregation-ca.crt | base64 -w0) --wait ../cluster-assets/charts/kube-system/kube-apiserver --debug\n";

/// Runs the tool, logging its report (phases, seconds, by hand or not).
fn rotate(env: &TestEnv, args: &[&str]) -> Output {
    let out = agg(env).args(args).args(WAIT).run();
    env.step(&format!("aggregation {}: exit {:?}\n{}", args.join(" "), out.code(), out.stdout));
    out
}

/// The journal's record of phase `name` (the last one).
fn phase_message(j: &serde_json::Value, name: &str) -> String {
    let phases = j["phases"].as_array().cloned().unwrap_or_default();
    let record = phases.iter().rev().find(|p| p["name"] == name);
    record.map(|p| format!("{} {}", p["outcome"], p["message"])).unwrap_or_default()
}

fn assert_found_by_hand(j: &serde_json::Value, phases: &[&str]) {
    for phase in phases {
        let record = phase_message(j, phase);
        assert!(
            record.starts_with("\"done\"") && record.contains("by hand (real state)"),
            "phase {phase} is recorded as done by hand: {record}\n{j:#}"
        );
    }
}

#[test]
fn the_targeted_apply_typed_by_hand_is_picked_up_by_phase_bundle() {
    let env = aggregation::cluster("by-hand-targeted-apply");
    let module = env.assets.bootkube_module();
    let orig = Original::of(&env);
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    typed_up_to_the_targeted_apply(&env, true);
    let by_hand = fp(&read(&env.assets.tls("aggregation-ca.crt")));
    assert_ne!(by_hand, orig.ca_fp, "the targeted apply made a new CA");
    assert!(
        read(&env.assets.tls("aggregation-ca.key")) == orig.key,
        "the seed's targeted apply leaves the old key in tls/aggregation-ca.key"
    );

    let out = rotate(&env, &["--phase", "bundle", "-y"]);
    assert_eq!(out.code(), Some(0), "{out}");
    let j = journal(&env);
    assert_found_by_hand(&j, &["ca"]);
    let origin = j["origins"]["oldCa"].as_str().unwrap_or_default();
    assert!(
        origin.contains("terraform/aggregation-ca.crt")
            && origin.contains("tls/aggregation-ca.key"),
        "where the old CA and its key came from: {j:#}"
    );
    assert!(aggregation::text(&out).contains("by hand"), "the report says so: {out}");
    let trusted = secret_cas(&env, "aggregation-ca.crt");
    assert!(
        trusted.contains(&orig.ca_fp) && trusted.contains(&by_hand),
        "the bundle holds the CA the cluster trusted and the one made by hand: {trusted:?}"
    );

    let out = rotate(&env, &["--cleanup", "-y"]);
    assert_eq!(out.code(), Some(0), "{out}");
    let new = check_rotated(&env, &orig, &module, true);
    assert_eq!(new, by_hand, "the CA made by hand is the new CA");
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "no second new CA");
}

#[test]
fn the_targeted_apply_typed_by_hand_without_its_copy_keeps_the_old_ca_from_the_cluster() {
    let env = aggregation::cluster("by-hand-copy-lost");
    let module = env.assets.bootkube_module();
    let orig = Original::of(&env);
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    typed_up_to_the_targeted_apply(&env, false);
    let by_hand = fp(&read(&env.assets.tls("aggregation-ca.crt")));
    let out = rotate(&env, &["--cleanup", "-y"]);
    assert_eq!(out.code(), Some(0), "{out}");
    let j = journal(&env);
    assert_found_by_hand(&j, &["ca"]);
    let origin = j["origins"]["oldCa"].as_str().unwrap_or_default();
    assert!(origin.contains("secret kube-system/kube-apiserver"), "old CA from the cluster: {j:#}");
    let new = check_rotated(&env, &orig, &module, true);
    assert_eq!(new, by_hand, "the CA made by hand is the new CA");
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "no second new CA");
}

#[test]
fn a_failed_helm_upgrade_typed_by_hand_is_picked_up() {
    let env = aggregation::cluster("by-hand-helm");
    let module = env.assets.bootkube_module();
    let orig = Original::of(&env);
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    typed_up_to_the_targeted_apply(&env, true);
    // The operator's helm upgrade dies in its --wait (the session dropped): the release is
    // left pending-upgrade, and every later upgrade fails with "another operation … is in
    // progress".
    let script = BUNDLE_UPGRADE.replace(" --debug\n", " --debug & sleep 3; kill -9 $!\n");
    let out = typed(&env, "cat >> bundle, helm upgrade (killed in --wait)", &script);
    assert!(out.success(), "{out}");
    let last = helm_history(&env, "kube-apiserver", "kube-system").pop().unwrap();
    env.step(&format!("release kube-apiserver after the killed upgrade: {last:?}"));

    let out = rotate(&env, &["--cleanup", "-y"]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_found_by_hand(&journal(&env), &["ca"]);
    let new = check_rotated(&env, &orig, &module, true);
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "no second new CA");
    let last = helm_history(&env, "kube-apiserver", "kube-system").pop().unwrap();
    assert_eq!(last.1, "deployed", "{last:?}");
}

#[test]
fn the_restarts_typed_by_hand_are_picked_up() {
    let env = aggregation::cluster("by-hand-restarts");
    let module = env.assets.bootkube_module();
    let orig = Original::of(&env);
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    typed_up_to_the_targeted_apply(&env, true);
    let out = typed(
        &env,
        "cat >> bundle, helm upgrade, kubectl rollout restart + status",
        &format!(
            "{BUNDLE_UPGRADE}kubectl rollout restart -n kube-system deployment/metrics-server\n\
             kubectl rollout status -n kube-system deployment/metrics-server --watch\n"
        ),
    );
    assert!(out.success(), "{out}");
    let out = rotate(&env, &["--cleanup", "-y"]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_found_by_hand(&journal(&env), &["ca", "bundle"]);
    let new = check_rotated(&env, &orig, &module, true);
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "no second new CA");
}

#[test]
fn an_expired_webhook_unhooked_and_tainted_by_hand_is_picked_up() {
    let env = webhook::expired_cluster("by-hand-webhook-expired");
    let before = webhook::Before::take(&env);
    let module = env.assets.bootkube_module();
    let out = typed(
        &env,
        "kubectl delete MutatingWebhookConfiguration, terraform taint",
        &format!(
            "export KUBECONFIG=$ASSET_DIR/cluster-assets/auth/kubeconfig\n\
             kubectl delete MutatingWebhookConfiguration admission-webhook-server\n\
             terraform taint {module}.tls_locally_signed_cert.admission-webhook-server\n"
        ),
    );
    assert!(out.success(), "{out}");
    let out = webhook::webhook(&env).args(["-y"]).run();
    env.step(&format!("webhook -y: exit {:?}", out.code()));
    assert_eq!(out.code(), Some(0), "{out}");
    let j = webhook::journal_of(&webhook::latest_run(&env));
    assert_found_by_hand(&j, &["unhook"]);
    let events = j["events"].to_string();
    assert!(events.contains("did not exist"), "the backup says what it could not keep: {j:#}");
    assert!(events.contains("skipped: already tainted"), "no second taint: {j:#}");
    webhook::check_rotated_keeping(&env, &before, "expired", "after-rotation", false);
}
