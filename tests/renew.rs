//! `kubectl certrotate renew` end to end, its first phases (backup, taint, certificates): the
//! built plugin renews every certificate of a real Terraform-made asset dir next to the real
//! control plane that runs on it, with real terraform; the proof is made with the real files,
//! the real state and `openssl verify` both ways.
//!
//! One `#[test]` = one environment (docs/test-harness.md). The steps, on one cluster: another
//! cluster's kubeconfig refused, a dry run (its plan lists the commands; nothing changes), `--phase backup`, `--phase taint`,
//! their re-runs (already done, from the journal and, the journal's record removed, from the
//! real state), `--phase certificates` (at `-v`: terraform's output streamed, no key shown),
//! the verification facts, and a second run of everything (already done, nothing changed).

mod common;
mod support;

#[path = "renew/helpers.rs"]
mod helpers;

use std::path::PathBuf;

use common::leaks::Needles;
use serde_json::Value;
use support::{Cmd, Output, TestEnv, Tools, mode};

use helpers::*;

/// lokoctl's taint list (lokomotive-pki.md §1.10).
const TAINTED: [&str; 19] = certrotate::renew::phases::taint::LOKOCTL_TAINTS;

/// Runs `cmd`, which must succeed; its output must show no private key.
fn ok(env: &TestEnv, needles: &Needles, what: &str, cmd: Cmd) -> Output {
    env.step(what);
    let out = cmd.run();
    assert!(out.success(), "{what}: {out}");
    let leaked = needles.found_in(&format!("{}\n{}", out.stdout, out.stderr));
    assert!(leaked.is_empty(), "{what}: private key material in the output: {leaked:?}");
    out
}

/// `renew ARGS -y -o json` (`note` tells this run from others in the log), which must
/// succeed and show no key: its report, and the output.
fn run_json(env: &TestEnv, needles: &Needles, args: &[&str], note: &str) -> (Value, Output) {
    let what = format!("renew {} -y -o json{note}", args.join(" "));
    let out =
        ok(env, needles, &what, renew_reaching_etcd(env).args(args).args(["-y", "-o", "json"]));
    (json(&out), out)
}

#[test]
fn backup_taint_and_certificates_renew_every_certificate_with_the_ca_keys_kept() {
    let env = TestEnv::start("renew");
    let module = env.assets.bootkube_module();
    let assets = env.assets.cluster_assets();
    let original = common::snapshot_tree(&assets);
    let state_before = state(&env);
    let serial = |s: &Value| s["serial"].as_u64().unwrap();
    let mut needles = Needles::new();
    add_keys(&mut needles, &env);
    let tools = Tools::get();

    // 0. A kubeconfig of another cluster (it trusts another CA): refused, nothing changed.
    let other_ca = support::pki::self_signed_serving(env.dir(), "other-cluster-ca");
    let other = env.dir().join("other-cluster-kubeconfig");
    let admin = std::fs::read_to_string(env.kubeconfig()).unwrap();
    let ca_data = admin.lines().find_map(|l| l.trim().strip_prefix("certificate-authority-data:"));
    let other_data = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&other_ca.cert).unwrap())
    };
    std::fs::write(&other, admin.replace(ca_data.unwrap().trim(), &other_data)).unwrap();
    env.step("renew -y with another cluster's kubeconfig: refused");
    let out = renew(&env).args(["-y", "--kubeconfig"]).arg(&other).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("does not trust"), "{out}");
    assert_eq!(common::snapshot_tree(&assets), original, "the refused run changed the asset dir");
    assert_eq!(run_dirs(&env), Vec::<PathBuf>::new(), "the refused run made a run folder");

    // 1. The dry run: every phase's plan, its commands with the module resolved; nothing
    //    changes, not even a run folder or the lock.
    let out = ok(
        &env,
        &needles,
        "renew --dry-run -o json",
        renew(&env).args(["--dry-run", "-o", "json"]),
    );
    let plan = json(&out);
    assert_eq!(plan["kind"], "RenewalPlan", "{plan:#}");
    let names: Vec<&str> =
        plan["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["backup", "taint", "certificates", "etcd", "control-plane", "tokens", "restart", "verify"]
    );
    let argv_of = |phase: usize| -> Vec<Vec<String>> {
        plan["phases"][phase]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "command")
            .map(|s| serde_json::from_value(s["argv"].clone()).unwrap())
            .collect()
    };
    let terraform = tools.terraform.display().to_string();
    assert_eq!(argv_of(0), [vec![terraform.clone(), "state".into(), "pull".into()]]);
    let mut taints: Vec<String> = argv_of(1)
        .into_iter()
        .map(|argv| {
            assert_eq!(argv[..2], [terraform.clone(), "taint".into()], "{argv:?}");
            argv[2].clone()
        })
        .collect();
    taints.sort();
    let mut want: Vec<String> = TAINTED.iter().map(|r| format!("{module}.{r}")).collect();
    want.sort();
    assert_eq!(taints, want, "the plan taints lokoctl's list");
    assert_eq!(
        argv_of(2),
        [vec![
            terraform.clone(),
            "apply".into(),
            "-auto-approve".into(),
            "-input=false".into(),
            "-parallelism=1".into(),
            "-no-color".into()
        ]]
    );
    let text = ok(&env, &needles, "renew --dry-run", renew(&env).arg("--dry-run"));
    assert!(
        text.stdout.contains(&format!("taint {module}.tls_self_signed_cert.kube-ca")),
        "{text}"
    );
    assert_eq!(common::snapshot_tree(&assets), original, "the dry run changed the asset dir");
    assert_eq!(run_dirs(&env), Vec::<PathBuf>::new(), "the dry run made a run folder");
    assert_eq!(serial(&state(&env)), serial(&state_before));

    // 2. backup, then again: already done (the journal).
    let (report, _) = run_json(&env, &needles, &["--phase", "backup"], "");
    assert_eq!(results(&report), pairs(&[("backup", "done")]), "{report:#}");
    let run = run_dir(&env);
    assert_eq!(mode(&run), 0o700);
    let backup = run.join("backup");
    let kept = backup.join("cluster-assets");
    let mut files = 0;
    for (path, bytes) in &original {
        let relative = path.strip_prefix(&assets).unwrap();
        let top = relative.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        let values = relative.starts_with("charts")
            && relative.extension().is_some_and(|e| e == "yaml")
            && relative.components().count() == 3;
        if !(top == "tls" || top == "auth" || values) || path.is_dir() {
            continue;
        }
        let copy = kept.join(relative);
        assert_eq!(std::fs::read(&copy).ok().as_ref(), Some(bytes), "{}", copy.display());
        assert_eq!(mode(&copy), 0o600, "{}", copy.display());
        assert_eq!(mode(copy.parent().unwrap()), 0o700, "{}", copy.display());
        files += 1;
    }
    assert!(files >= 30, "only {files} files kept");
    for values in [
        "kube-system/kube-apiserver.yaml",
        "kube-system/kubernetes.yaml",
        "kube-system/kubelet.yaml",
        "lokomotive-system/lokomotive.yaml",
    ] {
        assert!(kept.join("charts").join(values).is_file(), "{values} not kept");
    }
    assert!(!kept.join("charts/kube-system/kube-apiserver").exists(), "a chart's own files kept");
    let kept_state: Value =
        serde_json::from_slice(&std::fs::read(backup.join("terraform.tfstate")).unwrap()).unwrap();
    assert_eq!(mode(&backup.join("terraform.tfstate")), 0o600);
    assert_eq!(kept_state, state_before, "the state kept is the state");
    let (report, _) = run_json(&env, &needles, &["--phase", "backup"], " (again)");
    assert_eq!(results(&report), pairs(&[("backup", "already-done")]), "{report:#}");

    // 3. taint: lokoctl's list, nothing else; again: already done.
    let (report, _) = run_json(&env, &needles, &["--phase", "taint"], "");
    assert_eq!(results(&report), pairs(&[("taint", "done")]), "{report:#}");
    let tainted_state = state(&env);
    let now = instances(&tainted_state);
    let tainted: Vec<String> =
        now.iter().filter(|(_, (_, t, _))| *t).map(|(a, _)| a.clone()).collect();
    assert_eq!(tainted, want, "exactly lokoctl's list is tainted");
    let (report, _) = run_json(&env, &needles, &["--phase", "taint"], " (again)");
    assert_eq!(results(&report), pairs(&[("taint", "already-done")]), "{report:#}");
    // A run cut off after the taints and before the journal's record: the state decides.
    let journal_path = run.join("journal.json");
    let mut journal: Value =
        serde_json::from_slice(&std::fs::read(&journal_path).unwrap()).unwrap();
    journal["phases"].as_array_mut().unwrap().retain(|p| p["name"] != "taint");
    std::fs::write(&journal_path, serde_json::to_vec_pretty(&journal).unwrap()).unwrap();
    let (report, _) = run_json(&env, &needles, &["--phase", "taint"], " (journal record removed)");
    assert_eq!(results(&report), pairs(&[("taint", "already-done")]), "{report:#}");
    assert!(report["phases"][0]["message"].as_str().unwrap().contains("19 tainted"), "{report:#}");
    assert_eq!(serial(&state(&env)), serial(&tainted_state), "tainted again");

    // 4. certificates, at -v (terraform's output streamed and redacted).
    let (report, out) = run_json(&env, &needles, &["--phase", "certificates", "-v"], "");
    assert_eq!(results(&report), pairs(&[("certificates", "done")]), "{report:#}");
    assert!(out.stderr.contains("apply"), "terraform's output is streamed at -v: {out}");
    for ca in ["KubeCa", "EtcdCa", "AggregationCa"] {
        let (old, new) = (
            &report["fingerprints"][format!("old{ca}")],
            &report["fingerprints"][format!("new{ca}")],
        );
        assert!(old.is_string() && new.is_string() && old != new, "{ca}: {report:#}");
    }
    assert_eq!(
        report["next"], "kubectl certrotate renew --phase etcd (or --phase all)",
        "{report:#}"
    );
    // The new keys too: the apply made them, and printed nothing of them either.
    add_keys(&mut needles, &env);
    let leaked = needles.found_in(&format!("{}\n{}", out.stdout, out.stderr));
    assert!(leaked.is_empty(), "the apply's output shows new key material: {leaked:?}");
    let journal = std::fs::read_to_string(run.join("journal.json")).unwrap();
    let leaked = needles.found_in(&journal);
    assert!(leaked.is_empty(), "the journal holds key material: {leaked:?}");

    // The facts, from the real files and state.
    let renewed = instances(&state(&env));
    let before = instances(&state_before);
    for address in &want {
        let (id, tainted, _) = &renewed[address];
        assert!(!tainted, "{address} still tainted");
        assert_ne!(id, &before[address].0, "{address} not re-issued");
    }
    for (address, (id, _, _)) in &before {
        if address.contains("tls_private_key.") && !want.contains(address) {
            assert_eq!(
                &renewed[address].0, id,
                "{address}: a key lokoctl never taints was re-created"
            );
        }
    }
    check_certificates_renewed(&env, &kept);
    env.step("the new admin kubeconfig reaches the API (its CA key and the API's are the same)");
    env.kubectl().args(["get", "nodes"]).ok();

    // 5. The three phases again: already done, nothing changed.
    let renewed_tree = common::snapshot_tree(&assets);
    let renewed_serial = serial(&state(&env));
    for phase in ["backup", "taint", "certificates"] {
        let (report, _) = run_json(&env, &needles, &["--phase", phase], " (again)");
        assert_eq!(results(&report), pairs(&[(phase, "already-done")]), "{report:#}");
    }
    let out = ok(
        &env,
        &needles,
        "renew --phase certificates -y (again; table)",
        renew(&env).args(["--phase", "certificates", "-y"]),
    );
    assert!(out.stdout.contains("nothing to do"), "{out}");
    assert_eq!(common::snapshot_tree(&assets), renewed_tree, "a second run changed files");
    assert_eq!(serial(&state(&env)), renewed_serial, "a second run changed the state");
}

/// A lokoctl that fails as a broken one does: a message, exit code 1, nothing applied.
fn failing_lokoctl(env: &TestEnv) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = env.dir().join("failing-lokoctl");
    std::fs::write(
        &path,
        "#!/bin/sh\necho 'lokoctl: error: cannot reach the cluster' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn renew_puts_every_new_certificate_in_use_and_a_rerun_finds_it_done() {
    let env = renewal_cluster("renew-all");
    let assets = env.assets.cluster_assets();
    let old_ca = std::fs::read(assets.join("tls/ca.crt")).unwrap();
    let mut needles = Needles::new();
    add_keys(&mut needles, &env);

    // 1. lokoctl failing: the run stops in control-plane, saying which command failed.
    env.step("renew -y with a lokoctl that fails: stops in control-plane");
    let out = renew_reaching_etcd(&env)
        .env("LOKOCTL", failing_lokoctl(&env))
        .args(["-y", "-o", "json"])
        .run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("cluster apply --confirm"), "the failed command is named: {out}");
    assert!(out.stderr.contains("cannot reach the cluster"), "its message is shown: {out}");
    let report = json(&out);
    assert_eq!(
        results(&report),
        pairs(&[
            ("backup", "done"),
            ("taint", "done"),
            ("certificates", "done"),
            ("etcd", "done"),
            ("control-plane", "failed")
        ]),
        "{report:#}"
    );
    add_keys(&mut needles, &env);

    // 2. The same command again, with lokoctl working: it goes on from control-plane.
    let apiserver_restarts = env.apiserver.restarts();
    let (report, _) = run_json(&env, &needles, &[], " (lokoctl working)");
    // kube-controller-manager may have republished every token before the phase looks: then
    // the real state shows it done.
    let mut got = results(&report);
    assert!(["done", "already-done"].contains(&got[5].1.as_str()), "{report:#}");
    got[5].1 = "done".into();
    assert_eq!(
        got,
        pairs(&[
            ("backup", "already-done"),
            ("taint", "already-done"),
            ("certificates", "already-done"),
            ("etcd", "already-done"),
            ("control-plane", "done"),
            ("tokens", "done"),
            ("restart", "done"),
            ("verify", "done")
        ]),
        "{report:#}"
    );
    let journal = std::fs::read_to_string(run_dir(&env).join("journal.json")).unwrap();
    assert!(
        journal.contains("not in this cluster, skipped: kube-system/coredns"),
        "the restart says what it skipped: {journal}"
    );

    let new_ca = std::fs::read(assets.join("tls/ca.crt")).unwrap();
    assert_ne!(new_ca, old_ca);
    check_renewal_finished(&env, &needles);
    env.step("kube-apiserver restarted once: by the control-plane upgrade (checksum/secret) alone");
    assert_eq!(env.apiserver.restarts() - apiserver_restarts, 1, "kube-apiserver restarts");
    assert_eq!(restarted_at(&env, "kube-system", "deployment", "kube-apiserver"), None);
    assert!(journal.contains("kube-apiserver -n kube-system not restarted again"), "{journal}");

    // 3. Again: the run is finished, nothing to do.
    let out = ok(&env, &needles, "renew -y (again; table)", renew_reaching_etcd(&env).arg("-y"));
    assert!(out.stdout.contains("nothing to do: this rotation finished"), "{out}");

    // 4. A run cut off after the work of control-plane, tokens and restart and before the
    //    journal's records: the real state shows each done; verify runs again.
    let run = run_dir(&env);
    let journal_path = run.join("journal.json");
    let mut journal: Value =
        serde_json::from_slice(&std::fs::read(&journal_path).unwrap()).unwrap();
    journal["state"] = "in-progress".into();
    journal.as_object_mut().unwrap().remove("finishedAt");
    let phases = journal["phases"].as_array_mut().unwrap();
    phases.retain(|p| p["name"] != "verify");
    for phase in phases.iter_mut() {
        if ["control-plane", "tokens", "restart"].contains(&phase["name"].as_str().unwrap()) {
            phase["outcome"] = "interrupted".into();
        }
    }
    std::fs::write(&journal_path, serde_json::to_vec_pretty(&journal).unwrap()).unwrap();
    let restarts_before =
        restarted_at(&env, "kube-system", "deployment", "kube-controller-manager");
    let (report, _) = run_json(&env, &needles, &[], " (journal records removed)");
    assert_eq!(
        results(&report),
        pairs(&[
            ("backup", "already-done"),
            ("taint", "already-done"),
            ("certificates", "already-done"),
            ("etcd", "already-done"),
            ("control-plane", "already-done"),
            ("tokens", "already-done"),
            ("restart", "already-done"),
            ("verify", "done")
        ]),
        "{report:#}"
    );
    assert_eq!(
        restarted_at(&env, "kube-system", "deployment", "kube-controller-manager"),
        restarts_before,
        "restarted again"
    );
    let journal = std::fs::read_to_string(&journal_path).unwrap();
    let leaked = needles.found_in(&journal);
    assert!(leaked.is_empty(), "the journal holds key material: {leaked:?}");
}

/// Lokomotive v0.5-v0.7 (`copy-controller-secrets` triggered by `controller_id` only): the
/// cluster would not push the new etcd certificates to its controllers, so `renew` refuses
/// before any change, with the steps to take by hand; the dry run names the refusal.
#[test]
fn a_lokomotive_v0_7_cluster_is_refused_before_any_change() {
    use support::assets::Lokomotive;
    use support::{AssetOptions, EnvOptions};
    let env = TestEnv::start_with(
        "renew-v07",
        EnvOptions {
            assets: AssetOptions { lokomotive: Lokomotive::V0_7, ..Default::default() },
            ..Default::default()
        },
    );
    let assets = env.assets.cluster_assets();
    let original = common::snapshot_tree(&assets);
    let serial = state(&env)["serial"].as_u64().unwrap();
    let mut needles = Needles::new();
    add_keys(&mut needles, &env);

    env.step("renew -y on a v0.7 asset dir: refused, nothing changed");
    let out = renew_reaching_etcd(&env).arg("-y").run();
    assert_eq!(out.code(), Some(1), "{out}");
    for needed in [
        "phase etcd cannot run",
        "Lokomotive v0.5-v0.7",
        "copy-controller-secrets is triggered by controller_id",
        "Nothing was changed",
        "/etc/ssl/etcd/etcd/",
        "systemctl restart etcd",
        "--nodes-updated-by-hand",
    ] {
        assert!(out.stderr.contains(needed), "{needed:?} not said: {out}");
    }
    assert!(needles.found_in(&format!("{}\n{}", out.stdout, out.stderr)).is_empty());
    assert_eq!(common::snapshot_tree(&assets), original, "the refused run changed the asset dir");
    assert_eq!(run_dirs(&env), Vec::<PathBuf>::new(), "the refused run made a run folder");
    assert_eq!(
        state(&env)["serial"].as_u64().unwrap(),
        serial,
        "the refused run changed the state"
    );

    env.step("renew --dry-run on it: the plan, and the refusal among what is unresolved");
    let out = ok(
        &env,
        &needles,
        "renew --dry-run -o json",
        renew(&env).args(["--dry-run", "-o", "json"]),
    );
    let plan = json(&out);
    let unresolved = plan["unresolved"].to_string();
    assert!(unresolved.contains("--nodes-updated-by-hand"), "{plan:#}");
    assert_eq!(common::snapshot_tree(&assets), original, "the dry run changed the asset dir");

    // With the flag the run goes on; a Terraform state lock held by another process stops
    // the taint phase before any taint, saying so; once it is free the same command goes on.
    let lock = support::rotation::StateLock::hold(&env);
    env.step("renew --nodes-updated-by-hand --phase taint, the state locked: refused");
    let by_hand = || renew_reaching_etcd(&env).args(["--nodes-updated-by-hand", "-y"]);
    let out = by_hand().args(["--phase", "taint"]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("locked by another process"), "{out}");
    let locked = instances(&state(&env));
    assert!(locked.values().all(|(_, tainted, _)| !tainted), "tainted under a lock");
    assert_eq!(state(&env)["serial"].as_u64().unwrap(), serial, "the state changed under a lock");
    drop(lock);
    let (report, _) = run_json(
        &env,
        &needles,
        &["--nodes-updated-by-hand", "--phase", "taint"],
        " (the lock free)",
    );
    assert_eq!(results(&report), pairs(&[("taint", "done")]), "{report:#}");
    let tainted = instances(&state(&env)).values().filter(|(_, t, _)| *t).count();
    assert_eq!(tainted, TAINTED.len());
}
