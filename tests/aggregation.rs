//! `kubectl certrotate aggregation` end to end: the built plugin rotates the aggregation
//! (front-proxy) CA of a real control plane whose PKI is a real Terraform-made asset dir, with
//! real helm 3 and helm 4, real terraform and the lokoctl test double; an extension API
//! server (metrics-server) must keep answering, or answer again, through the aggregated API.
//!
//! One `#[test]` = one environment (docs/test-harness.md); steps that build on one cluster
//! state share it. Scenarios:
//!
//! | test | proves |
//! |---|---|
//! | `full_rotation_with_helm3_…` | `--phase all --cleanup -y -v` with helm 3, `HELM_DEBUG=1`, `TF_LOG=TRACE` and a 0755 kubeconfig (stdout alone is parsed, `-v` streams stderr, no key shown): new CA in files and state, backups, journal, only the new CA trusted at the end, API works, `status` exits 0, a further run changes nothing |
//! | `full_rotation_with_helm4_…` | the same with helm 4 at `-vvv` through argv-recording wrappers: no private key in stdout, stderr, journal or any argv; helm values only in 0600 files, removed; children get the verified kubeconfig explicitly |
//! | `phases_one_by_one_…` | each phase alone, its dry run first (plan, nothing changed), then twice (second: already done, nothing changed); what each phase leaves; predecessors enforced |
//! | `an_expired_aggregation_ca_…` | certificates issued two years ago: auto-detected expired path, plan, run, API works again |
//! | `kill9_during_the_ca_apply_…` | one rotation at a time (pid in the refusal); kill -9 in the `ca` phase's terraform apply: the child gets SIGINT and dies too, the state stays valid and was kept in the run folder (0600), the re-run completes with exactly one new CA |
//! | `kill9_during_the_bundle_helm_wait_…` | kill -9 in `helm upgrade --wait`: helm gets SIGINT and stops, release `failed` or `pending-upgrade`; the re-run (rolling back a pending one) completes |
//! | `a_release_left_pending_behind_lokoctl_…` | lokoctl's helm killed in `apply`, release `pending-upgrade`: the re-run rolls it back before lokoctl and completes |
//! | `sigterm_and_sighup_stop_the_run_…` | SIGTERM in terraform apply, SIGHUP in helm `--wait`: exit 130, children got SIGINT and are gone, state valid and kept; the re-run completes with one new CA |
//! | `cut_off_runs_destroyed_resources_…` | a run folder without journal passed over; a CA key destroyed and not re-created; a re-run while kube-apiserver restarts waits; a failed cleanup's run finished by the next invocation, `--new-run` accepted; a cleanup half done by hand is completed (extension servers restarted) |
//! | `a_failing_helm_is_retried_and_sigint_…` | a helm upgrade failing once is retried; SIGINT in the restart wait: exit 130, nothing left running, journal says interrupted; the re-run completes |
//! | `refusals_and_dry_runs_without_a_cluster_…` | another cluster's kubeconfig, missing helm/terraform/lokoctl, a wrong --module, no -y, a held Terraform state lock: exit 1, clear message, nothing changed; dry runs with an unreachable cluster or no terraform |

mod common;
mod support;

#[path = "aggregation/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::leaks::{self, Needles};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use support::{
    AssetOptions, Assets, ExtApiServer, Helm, Output, TestEnv, Tools, free_port, wait_for,
};

use helpers::*;

// ---------------------------------------------------------------------------------------
// Setup and shared checks

/// A copy of the admin kubeconfig whose server is a closed loopback port: this cluster's
/// credentials, no cluster behind them.
fn unreachable_kubeconfig(env: &TestEnv) -> PathBuf {
    let text = std::fs::read_to_string(env.kubeconfig()).unwrap();
    let from = format!("https://127.0.0.1:{}", env.assets.api_port);
    assert!(text.contains(&from), "the admin kubeconfig names {from}");
    let to = format!("https://127.0.0.1:{}", free_port());
    let path = env.dir().join("unreachable-kubeconfig");
    std::fs::write(&path, text.replace(&from, &to)).unwrap();
    path
}

/// The `-o json` summary of a completed run.
fn check_summary(env: &TestEnv, s: &Value, phases: &[&str], path: &str) {
    let dir = run_dir(env);
    assert_eq!(s["run"], dir.file_name().unwrap().to_str().unwrap(), "{s:#}");
    let journal_path = PathBuf::from(s["journal"].as_str().unwrap_or_default());
    assert_eq!(
        std::fs::canonicalize(&journal_path).ok(),
        std::fs::canonicalize(dir.join("journal.json")).ok(),
        "summary names the journal: {s:#}"
    );
    assert_eq!(s["path"], path, "{s:#}");
    for phase in phases {
        assert_eq!(result_of(s, phase), "done", "{phase}: {s:#}");
        let p = s["phases"].as_array().unwrap().iter().find(|p| p["name"] == *phase).unwrap();
        assert!(p["seconds"].is_number(), "seconds of {phase}: {p:#}");
    }
    assert_eq!(s["fingerprints"], journal(env)["fingerprints"], "{s:#}");
    assert!(s["next"].is_string(), "says what to run next: {s:#}");
}

/// The plan of one phase names its commands and objects (module addresses resolved): what it
/// lacks, one line each.
fn check_plan_phase(plan: &Value, phase: &str, module: &str) -> Vec<String> {
    let text = plan_text(plan, phase);
    let want: Vec<String> = match phase {
        "backup" => vec!["aggregation-ca.crt".into(), "aggregation-ca.key".into()],
        "ca" => vec![
            "taint".into(),
            format!("{module}.tls_private_key.aggregation-ca[0]"),
            format!("{module}.local_file.aggregation-ca-crt[0]"),
            format!("{module}.local_file.aggregation-ca-key[0]"),
        ],
        "bundle" => vec![
            "upgrade".into(),
            "kube-apiserver".into(),
            "--reuse-values".into(),
            "aggregationCaCert".into(),
            AUTH_CM.into(),
        ],
        "restart" => vec!["metrics-server".into()],
        "client" => vec![
            format!("{module}.tls_locally_signed_cert.aggregation-client[0]"),
            format!("{module}.local_file.aggregation-client-crt[0]"),
            "aggregationClientCert".into(),
        ],
        "apply" => vec![
            "cluster apply".into(),
            "--confirm".into(),
            "--skip-pre-update-health-check".into(),
        ],
        "cleanup" => vec![AUTH_CM.into(), "kube-apiserver".into(), "metrics-server".into()],
        _ => unreachable!(),
    };
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    want.into_iter()
        .filter(|w| !text.contains(w))
        .map(|w| format!("the {phase} plan does not mention {w:?}:\n{text}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Full rotations

#[test]
/// With the noise an operator's machine has (issue 14, item 6): `HELM_DEBUG=1` and
/// `TF_LOG=TRACE` print on the children's stderr, and a group-readable kubeconfig makes some
/// helm 3 releases warn; only stdout is parsed, so the rotation completes, and `-v` streams
/// that stderr, redacted.
fn full_rotation_with_helm3_helm_debug_tf_log_trace_and_a_0755_kubeconfig_leaves_only_the_new_ca_trusted()
 {
    let env = cluster("agg-full-helm3");
    let orig = Original::of(&env);
    let module = env.assets.bootkube_module();
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    let keys_before = asset_keys(&env);
    let group_readable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(env.kubeconfig(), group_readable).unwrap();

    let out = timed(
        &env,
        "aggregation --phase all --cleanup -y -o json -v --helm <helm 3>, with HELM_DEBUG=1, TF_LOG=TRACE, a 0755 kubeconfig",
        agg(&env)
            .env("HELM_DEBUG", "1")
            .env("TF_LOG", "TRACE")
            .args(["--phase", "all", "--cleanup", "-y", "-o", "json", "-v"])
            .args(WAIT)
            .arg("--helm")
            .arg(Helm::V3.path()),
    );
    let last_lines = || {
        let lines: Vec<&str> = out.stderr.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert_eq!(
        out.code(),
        Some(0),
        "the rotation completes; stdout:\n{}\nlast lines of stderr:\n{}",
        out.stdout,
        last_lines()
    );
    check_summary(&env, &summary(&out), &PHASES, "not-expired");
    let new = check_rotated(&env, &orig, &module, true);
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "exactly one new CA");
    status_ok(&env);
    // Kept from stdout alone (no TF_LOG line), unredacted.
    check_state_backups(&env);
    let streamed = |program: &str, marker: &str| {
        let prefix = format!("    {program}: ");
        out.stderr.lines().any(|l| l.starts_with(&prefix) && l.contains(marker))
    };
    assert!(streamed("helm", "[debug]"), "-v streams helm's stderr:\n{}", last_lines());
    assert!(streamed("terraform", "[TRACE]"), "-v streams terraform's stderr");
    assert_no_key_shown(&env, keys_before, std::slice::from_ref(&out), Vec::new());

    env.step("the rotation is finished: another run says so and changes nothing");
    let before = world(&env);
    let again = agg(&env).args(["--cleanup", "-y"]).args(WAIT).run();
    assert_eq!(again.code(), Some(0), "{again}");
    assert!(
        text(&again).to_lowercase().contains("finished"),
        "says the rotation finished: {again}"
    );
    assert_unchanged(&env, &before, "a run after the rotation finished");
    assert_eq!(run_dirs(&env).len(), 1, "no new run without --new-run");
}

#[test]
fn full_rotation_with_helm4_at_vvv_leaks_no_private_key() {
    let env = cluster("agg-full-helm4");
    let orig = Original::of(&env);
    let module = env.assets.bootkube_module();
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    let keys_before = asset_keys(&env);
    let values_log = env.dir().join("helm-values-files.log");
    let tools = Tools::get();
    let helm = Wrapper::new(&env, "helm", Helm::V4.path(), &log_values_files(&values_log));
    // On top of the 0.13 plan diff, every other way a key gets printed: on stdout during an
    // apply, and on stderr (as `TF_LOG` would) during every call, `state pull` included.
    let printing_keys = format!(
        "{}\n{}\n\
         case \" $* \" in *\" apply \"*)\n\
           place_every_key ../cluster-assets/tls/*.key ../cluster-assets/tls/etcd/*.key;;\n\
         esac\n\
         place_every_key ../cluster-assets/tls/aggregation-*.key >&2",
        terraform_013_plan_diff(),
        leaks::place_every_key(),
    );
    let terraform = Wrapper::new(&env, "terraform", &tools.terraform, &printing_keys);
    let lokoctl = Wrapper::new(&env, "lokoctl", &tools.lokoctl_double, "");
    // $KUBECONFIG leads nowhere; only --kubeconfig names this cluster, so helm and lokoctl
    // work only if the plugin hands them the kubeconfig it resolved and verified.
    let stray = unreachable_kubeconfig(&env);

    let rotation = || {
        agg(&env)
            .env("KUBECONFIG", &stray)
            .arg("--kubeconfig")
            .arg(env.kubeconfig())
            .args(["--phase", "all", "--cleanup", "-y", "-vvv"])
            .args(WAIT)
            .arg("--helm")
            .arg(&helm.path)
            .arg("--terraform")
            .arg(&terraform.path)
            .arg("--lokoctl")
            .arg(&lokoctl.path)
    };
    let out = timed(
        &env,
        "aggregation --phase all --cleanup -y -vvv, helm 4, every program through a wrapper",
        rotation(),
    );
    // A failed first run is reported at the end; the same command again (as an operator
    // would) still lets the secrets checks below look at a whole rotation.
    let mut first_run_failed = None;
    let mut outs = vec![out.clone()];
    if out.code() != Some(0) {
        let tail: Vec<&str> = out.stderr.lines().rev().take(25).collect();
        first_run_failed = Some(format!(
            "the helm 4 rotation failed (exit {:?}); stdout:\n{}\nlast lines of stderr:\n{}",
            out.code(),
            out.stdout,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
        env.step("the rotation failed: the same command again");
        let again = timed(&env, "re-run", rotation());
        assert_eq!(again.code(), Some(0), "the re-run failed too: {again}\nfirst run: {out}");
        outs.push(again);
    }
    let out = outs.last().unwrap().clone();
    for phase in PHASES {
        assert!(out.stdout.contains(phase), "the summary table lists {phase}:\n{}", out.stdout);
    }
    assert!(!helm.calls_with("upgrade").is_empty(), "helm 4 ran the upgrades");
    let new = check_rotated(&env, &orig, &module, true);
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "exactly one new CA");
    status_ok(&env);

    env.step("no private key material anywhere");
    let argv_logs = [&helm, &terraform, &lokoctl]
        .iter()
        .map(|w| (w.log.display().to_string(), w.log_text()))
        .collect();
    assert_no_key_shown(&env, keys_before, &outs, argv_logs);
    // The wrapper printed every key as terraform 0.13 does; at -vvv the plugin streams child
    // output, so the keys went through the redaction (and were shown as redacted).
    assert!(
        outs.iter().any(|o| o.stderr.contains("[REDACTED PRIVATE KEY]")),
        "the 0.13-style plan diff was streamed redacted"
    );

    env.step("no key or certificate on any command line; values in 0600 files, removed");
    let mut cert_needles = Needles::new();
    for (label, pem) in [
        ("the old CA", orig.ca.clone()),
        ("the old client certificate", orig.client.clone()),
        ("the new CA", read(&env.assets.tls("aggregation-ca.crt"))),
        ("the new client certificate", read(&env.assets.tls("aggregation-client.crt"))),
    ] {
        cert_needles.add_cert(label, &pem);
    }
    for (place, argv) in [
        ("helm", helm.log_text()),
        ("terraform", terraform.log_text()),
        ("lokoctl", lokoctl.log_text()),
    ] {
        assert!(
            !argv.contains("PRIVATE KEY") && !argv.contains("-----BEGIN"),
            "PEM in {place} argv"
        );
        let found = cert_needles.found_in(&argv);
        assert!(found.is_empty(), "{place} argv carries certificate material of {found:?}");
    }
    let values = std::fs::read_to_string(&values_log).unwrap_or_default();
    let files: Vec<(String, String)> = values
        .lines()
        .filter_map(|l| l.strip_prefix("values-file "))
        .filter_map(|l| l.rsplit_once(' ').map(|(p, m)| (p.to_string(), m.to_string())))
        .collect();
    assert!(!files.is_empty(), "helm got its values with -f: {}", helm.log_text());
    for (path, mode) in &files {
        assert_eq!(mode, "600", "helm values file {path} has mode {mode}");
        assert!(!Path::new(path).exists(), "helm values file {path} was not removed");
    }
    if let Some(failure) = first_run_failed {
        panic!("{failure}");
    }
}

/// Fails when a 16-character run of a private key (any the asset dir held before the
/// rotation or holds now, and the run's backups) is in the runs' stdout or stderr, in
/// `more`, or in any file under `certrotate/` (the journal) but the backed-up keys and
/// Terraform states.
fn assert_no_key_shown(
    env: &TestEnv,
    keys_before: Vec<(String, Vec<u8>)>,
    outs: &[Output],
    more: Vec<(String, String)>,
) {
    let mut keys = keys_before;
    keys.extend(asset_keys(env));
    // The run's backup folder holds keys by design (the CA's and the client's): they are
    // needles, not haystacks.
    let backup = run_dir(env).join("backup");
    for (rel, _) in file_tree(&backup, &|_: &Path| false) {
        if rel.ends_with(".key") {
            keys.push((format!("the backup {rel}"), read(&backup.join(&rel))));
        }
    }
    let mut needles = Needles::new();
    for (label, pem) in &keys {
        needles.add_key(label, pem);
    }
    let mut hay = more;
    for (i, o) in outs.iter().enumerate() {
        hay.push((format!("stdout of run {}", i + 1), o.stdout.clone()));
        hay.push((format!("stderr of run {}", i + 1), o.stderr.clone()));
    }
    // So do the Terraform state backups (a whole state, to be pushed back).
    let states = run_dir(env).join("terraform-state");
    let holds_keys = move |p: &Path| {
        p.starts_with(&states)
            || (p.starts_with(&backup) && p.extension().is_some_and(|e| e == "key"))
    };
    for (path, text) in texts_under(&certrotate_dir(env), &holds_keys) {
        hay.push((path.display().to_string(), text));
    }
    let mut leaks = Vec::new();
    for (place, text) in &hay {
        for label in needles.found_in(text) {
            leaks.push(format!("{place}: a 16-character run of {label}"));
        }
    }
    assert!(leaks.is_empty(), "private key material leaked:\n  {}", leaks.join("\n  "));
}

/// Issue 14, item 6: what helm and terraform print on stderr (`HELM_DEBUG=1` debug lines,
/// `TF_LOG=TRACE` traces, helm's warning about a group-readable kubeconfig, which Lokomotive's
/// `auth/kubeconfig` is: a `local_file` with the provider's default mode) is never parsed. A
/// whole rotation completes; `-v` streams both streams; no key shows.
// ---------------------------------------------------------------------------------------
// 2. Phase by phase

#[test]
fn phases_one_by_one_each_twice_with_their_dry_runs() {
    let env = cluster("agg-phases");
    let orig = Original::of(&env);
    let module = env.assets.bootkube_module();
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    let run = |args: &[&str]| agg(&env).args(args).args(WAIT).run();
    // Where the output departs from the spec's contract without breaking the rotation:
    // collected, and reported together at the end.
    let mut deviations: Vec<String> = Vec::new();

    env.step("dry runs of the whole rotation");
    let w0 = world(&env);
    let p = plan(&run(&["--dry-run", "-o", "json"]));
    assert_eq!(plan_phases(&p), PHASES[..6], "without --cleanup: {p:#}");
    let p = plan(&run(&["--dry-run", "--cleanup", "-o", "json"]));
    assert_eq!(plan_phases(&p), PHASES, "{p:#}");
    for phase in PHASES {
        deviations.extend(check_plan_phase(&p, phase, &module));
    }
    let table = run(&["--dry-run", "--cleanup"]);
    assert_eq!(table.code(), Some(0), "{table}");
    assert!(
        table.stdout.contains(&format!("{module}.tls_private_key.aggregation-ca[0]")),
        "{table}"
    );
    assert_unchanged(&env, &w0, "--dry-run");
    assert!(run_dirs(&env).is_empty(), "a dry run starts no journal");

    // `backup` needs nothing of the real state, so the first phase that is not done is `ca`.
    env.step("--phase bundle before ca is refused");
    let out = run(&["--phase", "bundle", "-y"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(text(&out).contains("--phase ca"), "names the phase to run (ca): {out}");
    assert_unchanged(&env, &w0, "a refused --phase bundle");

    for phase in PHASES {
        env.step(&format!("--phase {phase} --dry-run"));
        let before = world(&env);
        let tree = journal_tree(&env);
        let p = plan(&run(&["--phase", phase, "--dry-run", "-o", "json"]));
        assert_eq!(plan_phases(&p), vec![phase], "{p:#}");
        deviations.extend(check_plan_phase(&p, phase, &module));
        assert_unchanged(&env, &before, &format!("--phase {phase} --dry-run"));
        assert_eq!(journal_tree(&env), tree, "--phase {phase} --dry-run touched the journal");

        let out = timed(
            &env,
            &format!("--phase {phase}"),
            agg(&env).args(["--phase", phase, "-y", "-o", "json"]).args(WAIT),
        );
        assert_eq!(out.code(), Some(0), "{out}");
        assert_eq!(result_of(&summary(&out), phase), "done", "{out}");
        assert_eq!(outcome(&journal(&env), phase), "done", "{:#}", journal(&env));
        check_after_phase(&env, phase, &orig, &module, &before);

        env.step(&format!("--phase {phase} again"));
        let after = world(&env);
        let again = run(&["--phase", phase, "-y", "-o", "json"]);
        assert_eq!(again.code(), Some(0), "{again}");
        assert_unchanged(&env, &after, &format!("--phase {phase} run again"));
        let s = summary(&again);
        let listed = s["phases"].as_array().unwrap().iter().find(|p| p["name"] == phase).cloned();
        match listed {
            Some(p) if p["result"] == "already-done" => {}
            other => deviations.push(format!(
                "--phase {phase} run again: the JSON summary should list {phase} as already-done, it has {other:?}"
            )),
        }
        let table = run(&["--phase", phase, "-y"]);
        assert_eq!(table.code(), Some(0), "{table}");
        assert_unchanged(&env, &after, &format!("--phase {phase} run a third time"));
        let said = text(&table).to_lowercase();
        if !["already done", "is done", "nothing to do"].iter().any(|w| said.contains(w)) {
            deviations.push(format!(
                "--phase {phase} run again does not say it is already done: {table}"
            ));
        }
    }

    env.step("the rotation is finished: another run says so and changes nothing");
    let before = world(&env);
    let again = run(&["-y"]);
    assert_eq!(again.code(), Some(0), "{again}");
    assert!(text(&again).to_lowercase().contains("finished"), "{again}");
    assert_unchanged(&env, &before, "a run after the rotation finished");
    let p = plan(&run(&["--dry-run", "--new-run", "-o", "json"]));
    assert_eq!(plan_phases(&p).first().map(String::as_str), Some("backup"), "{p:#}");
    assert_unchanged(&env, &before, "--dry-run --new-run");
    assert_eq!(run_dirs(&env).len(), 1);
    let new = fp(&read(&env.assets.tls("aggregation-ca.crt")));
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "exactly one new CA");
    status_ok(&env);
    assert!(
        deviations.is_empty(),
        "{} departure(s) from the spec:\n\n{}",
        deviations.len(),
        deviations.join("\n\n")
    );
}

/// What each phase leaves (`before`: the world just before it ran).
fn check_after_phase(env: &TestEnv, phase: &str, orig: &Original, module: &str, before: &World) {
    let now = world(env);
    let ca = read(&env.assets.tls("aggregation-ca.crt"));
    let client = read(&env.assets.tls("aggregation-client.crt"));
    let j = journal(env);
    let releases = |w: &World| {
        w.cluster.keys().filter(|k| k.contains("sh.helm.release.v1.kube-apiserver.")).count()
    };
    match phase {
        "backup" => {
            check_run_folder(env, orig);
            assert_eq!(j["path"], "not-expired", "{j:#}");
            assert_eq!(j["state"], "in-progress", "{j:#}");
            assert_eq!(now.files, before.files, "backup changes no file of the asset dir");
            assert_eq!(now.cluster, before.cluster, "backup changes nothing in the cluster");
        }
        "ca" => {
            assert_ne!(fp(&ca), orig.ca_fp, "a new CA in tls/aggregation-ca.crt");
            assert_ne!(cert_key_der(&ca), cert_key_der(&orig.ca), "with a new key");
            assert!(
                key_matches(&read(&env.assets.tls("aggregation-ca.key")), &ca),
                "key file matches"
            );
            let st = state(env);
            let state_ca =
                state_attr(&st, module, "tls_self_signed_cert.aggregation-ca[0]", "cert_pem");
            assert_eq!(fp(state_ca.as_bytes()), fp(&ca), "the state holds the new CA");
            assert!(client == orig.client, "the client certificate is not touched yet");
            assert_eq!(j["fingerprints"]["newCa"], fp(&ca).as_str(), "{j:#}");
            assert_eq!(now.cluster, before.cluster, "ca changes nothing in the cluster");
        }
        "bundle" => {
            let bundle = secret_cas(env, "aggregation-ca.crt");
            assert_eq!(bundle, vec![orig.ca_fp.clone(), fp(&ca)], "Secret holds old + new CA");
            assert_eq!(secret_cas(env, "aggregation-client.crt"), vec![orig.client_fp.clone()]);
            let cm = configmap_cas(env);
            assert!(
                cm.contains(&orig.ca_fp) && cm.contains(&fp(&ca)),
                "ConfigMap holds both: {cm:?}"
            );
            assert_eq!(releases(&now), releases(before) + 1, "one helm upgrade");
            let (_, status, _) = helm_history(env, "kube-apiserver", "kube-system").pop().unwrap();
            assert_eq!(status, "deployed");
            assert_eq!(now.files, before.files, "bundle changes no file of the asset dir");
            api_works(env);
        }
        "restart" => {
            let at = restarted_at(env, "metrics-server");
            assert!(!at.is_empty(), "metrics-server was restarted (restartedAt)");
            let logs =
                env.kubectl().args(["logs", "deploy/metrics-server", "-n", "kube-system"]).ok();
            let loaded = logs.stdout.lines().filter(|l| l.contains("loaded client CA")).count();
            assert_eq!(loaded, 2, "the restarted server loaded old and new CA:\n{}", logs.stdout);
            api_works(env);
        }
        "client" => {
            assert_ne!(fp(&client), orig.client_fp, "a new client certificate");
            assert!(signed_by(&client, &ca), "signed by the new CA");
            assert_eq!(j["fingerprints"]["newClient"], fp(&client).as_str(), "{j:#}");
            assert_eq!(secret_cas(env, "aggregation-client.crt"), vec![fp(&client)]);
            assert_eq!(secret_cas(env, "aggregation-ca.crt"), vec![orig.ca_fp.clone(), fp(&ca)]);
            assert_eq!(releases(&now), releases(before) + 1, "one helm upgrade");
            api_works(env);
        }
        "apply" => {
            let log =
                std::fs::read_to_string(env.dir().join("lokoctl-double.log")).unwrap_or_default();
            let last = log.lines().last().unwrap_or_default().to_string();
            assert!(
                last.starts_with("cluster apply")
                    && last.contains("--confirm")
                    && last.contains("--skip-pre-update-health-check"),
                "lokoctl cluster apply --confirm --skip-pre-update-health-check: {log:?}"
            );
            assert!(secret_cas(env, "aggregation-ca.crt").contains(&fp(&ca)));
            assert_eq!(secret_cas(env, "aggregation-client.crt"), vec![fp(&client)]);
            api_works(env);
        }
        "cleanup" => {
            assert_eq!(configmap_cas(env), vec![fp(&ca)], "only the new CA is trusted");
            let was = before.cluster.get("deployment/kube-system/metrics-server");
            let is = now.cluster.get("deployment/kube-system/metrics-server");
            assert_ne!(was, is, "metrics-server restarted again");
            assert_eq!(j["state"], "finished", "{j:#}");
            api_works(env);
        }
        _ => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------------
// 3. The expired path

#[test]
fn an_expired_aggregation_ca_takes_the_expired_path() {
    let env = TestEnv::start("agg-expired");
    let module = env.assets.bootkube_module();
    let then = reissue_two_years_back(
        &env,
        &[
            "tls_self_signed_cert.aggregation-ca[0]",
            "tls_locally_signed_cert.aggregation-client[0]",
        ],
    );
    env.step(&format!("aggregation CA and client certificate re-issued as of {then}"));
    let orig = Original::of(&env);
    assert!(expired(&orig.ca) && expired(&orig.client), "both expired");
    assert!(!expired(&read(&env.assets.tls("ca.crt"))), "the kube CA is not");
    env.install_kube_apiserver_chart(Helm::V3);
    assert!(env.apiserver.restarts() >= 1, "the apiserver runs with the expired certificates");
    env.deploy_ext_apiserver(&ExtApiServer::metrics_server());
    env.wait_rollout("kube-system", "deploy/metrics-server");
    // The symptom: metrics-server rejects the expired proxy client certificate.
    let start = Instant::now();
    let mut seen = String::new();
    while start.elapsed() < Duration::from_secs(90) {
        if let Ok((status, reason, message)) = env.apiservice_available(APISERVICE) {
            seen = format!("{status} {reason}: {message}");
            if status != "True" && message.contains("401") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!seen.starts_with("True"), "the expired CA breaks {APISERVICE}: {seen}");
    env.step(&format!("symptom: {APISERVICE} {seen}"));
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));

    env.step("dry run");
    let w0 = world(&env);
    let p = plan(&agg(&env).args(["--dry-run", "-o", "json"]).run());
    assert_eq!(plan_phases(&p), EXPIRED_PHASES, "{p:#}");
    let ca_plan = plan_text(&p, "ca");
    for w in [
        format!("{module}.tls_private_key.aggregation-ca[0]"),
        format!("{module}.tls_self_signed_cert.aggregation-ca[0]"),
    ] {
        assert!(ca_plan.contains(&w), "the ca plan names {w}:\n{ca_plan}");
    }
    assert!(plan_text(&p, "apply").contains("--skip-pre-update-health-check"), "{p:#}");
    assert_unchanged(&env, &w0, "--dry-run");

    let out = timed(
        &env,
        "aggregation -y -o json (expired: auto-detected)",
        agg(&env).args(["-y", "-o", "json"]).args(WAIT),
    );
    assert_eq!(out.code(), Some(0), "{out}");
    let s = summary(&out);
    check_summary(&env, &s, &EXPIRED_PHASES, "expired");
    check_run_folder(&env, &orig);
    let j = journal(&env);
    assert_eq!(j["path"], "expired", "{j:#}");
    assert_eq!(j["state"], "finished", "{j:#}");
    let ca = read(&env.assets.tls("aggregation-ca.crt"));
    let client = read(&env.assets.tls("aggregation-client.crt"));
    assert!(valid_for_days(&ca, 300), "the new CA is valid");
    assert_ne!(cert_key_der(&ca), cert_key_der(&orig.ca), "with a new key");
    assert!(key_matches(&read(&env.assets.tls("aggregation-ca.key")), &ca));
    let st = state(&env);
    let state_ca = state_attr(&st, &module, "tls_self_signed_cert.aggregation-ca[0]", "cert_pem");
    assert_eq!(fp(state_ca.as_bytes()), fp(&ca), "the state holds the new CA");
    assert!(
        valid_for_days(&client, 300) && signed_by(&client, &ca),
        "a valid client cert of the new CA"
    );
    assert_eq!(j["fingerprints"]["newCa"], fp(&ca).as_str(), "{j:#}");
    assert!(secret_cas(&env, "aggregation-ca.crt").contains(&fp(&ca)));
    assert_eq!(secret_cas(&env, "aggregation-client.crt"), vec![fp(&client)]);
    assert!(!restarted_at(&env, "metrics-server").is_empty(), "metrics-server was restarted");
    api_works(&env);
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), fp(&ca)], "exactly one new CA");

    env.step("finished: a further run changes nothing");
    let before = world(&env);
    let again = agg(&env).args(["-y"]).args(WAIT).run();
    assert_eq!(again.code(), Some(0), "{again}");
    assert_unchanged(&env, &before, "a run after the rotation finished");
}

// ---------------------------------------------------------------------------------------
// 4. Faults

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !alive(pid)
}

/// After a kill -9 of the plugin: the given child and every other process it started are
/// gone within a few seconds (killed along with it); otherwise they are killed and the
/// test fails.
fn assert_children_died(env: &TestEnv, child: u32, what: &str) {
    let gone = wait_gone(child, Duration::from_secs(5));
    let rest = wait_all_gone(env, Duration::from_secs(if gone { 10 } else { 0 }));
    if !gone || rest.is_err() {
        kill_leftovers(env);
        panic!(
            "{what} (pid {child}) {} after the plugin was killed with SIGKILL; left: {}: \
             children must die with the tool (PR_SET_PDEATHSIG)",
            if gone { "died, but not everything else" } else { "outlived it" },
            rest.err().unwrap_or_default()
        );
    }
}

#[test]
fn kill9_during_the_ca_apply_then_a_rerun_completes_with_one_new_ca() {
    let env = cluster("agg-kill-ca");
    let orig = Original::of(&env);
    let module = env.assets.bootkube_module();
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    let marker = env.dir().join("terraform-apply-held");
    let release = env.dir().join("terraform-apply-release");
    let sigs = env.dir().join("terraform-signals.log");
    let terraform = Wrapper::new(
        &env,
        "terraform",
        &Tools::get().terraform,
        &format!("{}\n{}", record_sigint(&sigs), hold_once("apply", &marker, &release)),
    );
    let rotation = || agg(&env).args(["-y"]).args(WAIT).arg("--terraform").arg(&terraform.path);

    env.step("aggregation -y, held by the wrapper before the ca phase's terraform apply");
    let mut first = rotation().spawn();
    let (wrapper_pid, parent) =
        wait_for("the ca phase's terraform apply", Duration::from_secs(120), || {
            if !first.is_running() {
                panic!("the rotation ended before its terraform apply: {}", first.kill());
            }
            read_marker(&marker).ok_or_else(|| "not yet".to_string())
        });
    let tool = plugin_pid(&env).expect("the running plugin in /proc");
    env.step(&format!("plugin pid {tool}; terraform apply pid {wrapper_pid} (parent {parent})"));
    let j = journal(&env);
    assert_eq!(outcome(&j, "backup"), "done", "{j:#}");
    assert_ne!(outcome(&j, "ca"), "done", "{j:#}");

    env.step("a second rotation meanwhile is refused");
    let before = world(&env);
    let second = rotation().run();
    assert_eq!(second.code(), Some(1), "{second}");
    assert!(text(&second).contains("another rotation"), "{second}");
    assert!(text(&second).contains(&tool.to_string()), "names the holder's pid {tool}: {second}");
    assert_unchanged(&env, &before, "the refused second rotation");
    assert_eq!(run_dirs(&env).len(), 1, "the refused rotation started no run");
    assert!(first.is_running(), "the first rotation still runs");

    env.step("kill -9 of the plugin (its pid only) while terraform apply waits");
    signal(tool, "KILL");
    let killed = first.wait();
    assert_eq!(killed.code(), None, "killed by SIGKILL: {killed}");
    assert_children_died(&env, wrapper_pid, "terraform apply");
    assert!(
        std::fs::read_to_string(&sigs).unwrap_or_default().contains("INT"),
        "the orphaned terraform apply got SIGINT (its death signal), so it could save its state"
    );
    assert_state_valid(&env);
    let kept = check_state_backups(&env);
    env.step(&format!("the orphan got SIGINT; {kept} state backup(s) kept, 0600"));
    let j = journal(&env);
    assert_ne!(outcome(&j, "ca"), "done", "{j:#}");
    assert!(read(&env.assets.tls("aggregation-ca.crt")) == orig.ca, "the apply never ran");
    let key = state_instance(&state(&env), &module, "tls_private_key.aggregation-ca[0]");
    env.step(&format!("after the kill: CA key state status {}", key["status"]));

    std::fs::write(&release, "").unwrap();
    let out = timed(&env, "the same command again", rotation().args(["-o", "json"]));
    assert_eq!(out.code(), Some(0), "{out}");
    // The summary lists what this run did (the killed run's backup is in the journal only).
    let s = summary(&out);
    for p in s["phases"].as_array().unwrap() {
        let r = p["result"].as_str().unwrap_or_default();
        assert!(r == "done" || r == "already-done", "{p:#}: {s:#}");
    }
    let new = check_rotated(&env, &orig, &module, false);
    assert_eq!(
        watch.generations(),
        vec![orig.ca_fp.clone(), new],
        "exactly one new CA generation: the re-run did not make a second one"
    );
    let ca = outcomes(&journal(&env), "ca");
    assert_eq!(
        ca.first().map(String::as_str),
        Some("interrupted"),
        "the journal keeps where the killed run stopped: {ca:?}"
    );
    assert_eq!(ca.last().map(String::as_str), Some("done"), "{ca:?}");
    // The killed run had tainted the CA key; the re-run found it tainted and did not taint again.
    let key_taints: Vec<String> = terraform
        .calls_with("taint")
        .into_iter()
        .map(|(_, _, args)| args)
        .filter(|a| a.contains("tls_private_key.aggregation-ca[0]"))
        .collect();
    assert_eq!(key_taints.len(), 1, "one terraform taint of the CA key in all: {key_taints:?}");
}

#[test]
fn kill9_during_the_bundle_helm_wait_then_a_rerun_rolls_back_and_completes() {
    let env = cluster("agg-kill-helm");
    let orig = Original::of(&env);
    let module = env.assets.bootkube_module();
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    let helm = Wrapper::new(&env, "helm", Helm::V3.path(), "");
    let rotation = || agg(&env).args(["-y"]).args(WAIT).arg("--helm").arg(&helm.path);
    let revisions = helm_history(&env, "kube-apiserver", "kube-system").len();

    env.step("kube-apiserver pods held Pending; aggregation -y until bundle's helm upgrade --wait");
    env.kubelet
        .set_never_started(Some(Arc::new(|pod: &Pod| label_is(pod, "k8s-app", "kube-apiserver"))));
    let mut first = rotation().spawn();
    wait_for("helm upgrade --wait on a pod held Pending", Duration::from_secs(180), || {
        if !first.is_running() {
            panic!("the rotation ended by itself: {}", first.kill());
        }
        let history = helm_history(&env, "kube-apiserver", "kube-system");
        let last = history.last().cloned().unwrap_or_default();
        let pending =
            pods(&env, "k8s-app=kube-apiserver").iter().any(|p| pod_phase(p) == "Pending");
        if history.len() > revisions && last.1 == "pending-upgrade" && pending {
            Ok(())
        } else {
            Err(format!("history {history:?}, a Pending pod: {pending}"))
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(first.is_running(), "helm still waits: {}", first.kill());
    let (helm_pid, _, _) = helm.calls_with("upgrade").pop().expect("a recorded helm upgrade");
    assert!(alive(helm_pid), "helm upgrade (pid {helm_pid}) is running");
    let tool = plugin_pid(&env).expect("the running plugin in /proc");

    env.step(&format!(
        "kill -9 of the plugin (pid {tool}) during helm upgrade --wait (pid {helm_pid})"
    ));
    signal(tool, "KILL");
    let killed = first.wait();
    assert_eq!(killed.code(), None, "killed by SIGKILL: {killed}");
    // Its death signal is SIGINT: helm cancels the upgrade and marks the release failed, or
    // is cut off in the middle of that and leaves it pending-upgrade.
    assert_children_died(&env, helm_pid, "helm upgrade");
    let (rev, status, _) = helm_history(&env, "kube-apiserver", "kube-system").pop().unwrap();
    assert!(
        status == "pending-upgrade" || status == "failed",
        "the release is left pending-upgrade or failed, not deployed: {status}"
    );
    env.step(&format!("after the kill: release revision {rev} {status}"));
    assert_ne!(outcome(&journal(&env), "bundle"), "done");

    env.step("release the held pod");
    env.kubelet.set_never_started(None);
    env.wait_rollout("kube-system", "deploy/kube-apiserver");
    let calls = helm.calls().len();
    let out = timed(&env, "the same command again", rotation().args(["-o", "json"]));
    assert_eq!(out.code(), Some(0), "{out}");
    let history = helm_history(&env, "kube-apiserver", "kube-system");
    if status == "pending-upgrade" {
        assert!(
            history.iter().any(|(_, _, d)| d.contains(&format!("Rollback to {rev}"))),
            "the re-run rolled back to the pending revision {rev}: {history:?}"
        );
        assert!(
            helm.calls()[calls..].iter().any(|(_, _, a)| a.split(' ').any(|w| w == "rollback")),
            "helm rollback was run: {}",
            helm.log_text()
        );
    }
    assert_eq!(history.last().unwrap().1, "deployed", "{history:?}");
    let new = check_rotated(&env, &orig, &module, false);
    let bundle = outcomes(&journal(&env), "bundle");
    assert_eq!(
        bundle.first().map(String::as_str),
        Some("interrupted"),
        "the journal keeps where the killed run stopped: {bundle:?}"
    );
    env.step(&format!("bundle outcomes {bundle:?}; helm history {history:?}"));
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "exactly one new CA");
}

#[test]
fn a_failing_helm_is_retried_and_sigint_during_the_restart_wait_stops_cleanly() {
    let env = cluster("agg-helm-fail-sigint");
    let orig = Original::of(&env);
    let module = env.assets.bootkube_module();
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    let flag = env.dir().join("helm-upgrade-failed-once");
    let helm = Wrapper::new(&env, "helm", Helm::V3.path(), &fail_once("upgrade", &flag));
    let rotation = || agg(&env).args(["-y", "-o", "json"]).args(WAIT).arg("--helm").arg(&helm.path);

    env.step("new metrics-server pods held not Ready; aggregation -y (first helm upgrade fails)");
    env.kubelet.set_never_ready(Some(Arc::new(|pod: &Pod| label_is(pod, "app", "metrics-server"))));
    let mut run = rotation().spawn();
    wait_for("the restart phase waiting on metrics-server", Duration::from_secs(300), || {
        if !run.is_running() {
            panic!("the rotation ended by itself: {}", run.kill());
        }
        let restarted = !restarted_at(&env, "metrics-server").is_empty();
        let held = pods(&env, "app=metrics-server")
            .iter()
            .any(|p| pod_phase(p) == "Running" && !pod_ready(p));
        if restarted && held { Ok(()) } else { Err(format!("restarted {restarted}, held {held}")) }
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(run.is_running(), "still waiting: {}", run.kill());
    let j = journal(&env);
    assert_eq!(outcome(&j, "bundle"), "done", "the failed helm upgrade was retried: {j:#}");
    assert!(flag.exists(), "the wrapper failed one upgrade");
    assert!(helm.calls_with("upgrade").len() >= 2, "helm upgrade ran again: {}", helm.log_text());

    let tool = plugin_pid(&env).expect("the running plugin in /proc");
    env.step(&format!("SIGINT to the plugin (pid {tool})"));
    signal(tool, "INT");
    let out = run.wait();
    assert_eq!(out.code(), Some(130), "{out}");
    if let Err(left) = wait_all_gone(&env, Duration::from_secs(10)) {
        kill_leftovers(&env);
        panic!("processes of the interrupted plugin still run: {left}");
    }
    let j = journal(&env);
    assert_eq!(outcome(&j, "restart"), "interrupted", "{j:#}");
    for phase in ["backup", "ca", "bundle"] {
        assert_eq!(outcome(&j, phase), "done", "{j:#}");
    }
    assert_eq!(result_of(&summary(&out), "restart"), "interrupted", "{out}");

    env.step("release the held pods; the same command again");
    env.kubelet.set_never_ready(None);
    let out = timed(&env, "re-run", rotation());
    assert_eq!(out.code(), Some(0), "{out}");
    let new = check_rotated(&env, &orig, &module, false);
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "exactly one new CA");
}

// ---------------------------------------------------------------------------------------
// Refusals before any change; dry runs that cannot reach everything

#[test]
fn refusals_and_dry_runs_without_a_cluster_change_nothing() {
    let env = cluster("agg-refusals");
    let module = env.assets.bootkube_module();
    let w0 = world(&env);
    let mut failures: Vec<String> = Vec::new();
    // `want`: each inner list is a requirement met by any of its (case-sensitive) texts.
    let orig = Original::of(&env);
    // `may_start_run`: the refusal may come from a phase after `backup` (the tool checks the
    // Terraform state lock when the ca phase runs): a run whose backup is done and nothing
    // else is accepted there (files, state and cluster must still be identical).
    let mut refused = |what: &str, cmd: support::Cmd, want: &[&[&str]], may_start_run: bool| {
        env.step(&format!("refusal: {what}"));
        let out = cmd.run();
        let all = text(&out);
        if out.code() != Some(1) {
            failures.push(format!("{what}: exit {:?}, want 1:\n{out}", out.code()));
        }
        for alternatives in want {
            if !alternatives.iter().any(|w| all.contains(w)) {
                failures.push(format!(
                    "{what}: the message should contain one of {alternatives:?}:\n{out}"
                ));
            }
        }
        let mut now = world(&env);
        let runs = run_dirs(&env);
        if may_start_run && runs.len() == 1 {
            let j = journal(&env);
            let done: Vec<&str> =
                PHASES.iter().copied().filter(|p| outcome(&j, p) == "done").collect();
            let backup = read(&runs[0].join("backup/aggregation-ca.crt"));
            if done != ["backup"] || backup != orig.ca {
                failures
                    .push(format!("{what}: the run it started did more than the backup: {j:#}"));
            }
            env.step(&format!(
                "{what}: a run was started, phases done {done:?}; ca: {}",
                outcome(&j, "ca")
            ));
            now.journal = None;
        }
        let d = diff(&w0, &now);
        if !d.is_empty() {
            failures.push(format!("{what}: changed things:\n  {}", d.join("\n  ")));
        }
        if !runs.is_empty() {
            if !may_start_run {
                failures.push(format!("{what}: started a run ({runs:?}) although it refused"));
            }
            let _ = std::fs::remove_dir_all(certrotate_dir(&env));
        }
    };

    let other = Assets::make(&env.dir().join("other"), free_port(), &AssetOptions::default());
    let ours = env.kubeconfig().display().to_string();
    refused(
        "--kubeconfig of another cluster",
        agg(&env).args(["-y"]).arg("--kubeconfig").arg(other.kubeconfig()),
        &[&[ours.as_str()]],
        false,
    );
    refused(
        "$KUBECONFIG of another cluster",
        agg(&env).args(["-y"]).env("KUBECONFIG", other.kubeconfig()),
        &[&[ours.as_str()]],
        false,
    );
    refused(
        "helm missing",
        agg(&env).args(["-y", "--helm", "/nonexistent/helm"]),
        &[&["helm"], &["--helm", "HELM"]],
        false,
    );
    refused(
        "terraform missing",
        agg(&env).args(["-y", "--terraform", "/nonexistent/terraform"]),
        &[&["terraform"], &["--terraform", "TERRAFORM"]],
        false,
    );
    refused(
        "lokoctl missing",
        agg(&env).args(["-y", "--lokoctl", "/nonexistent/lokoctl"]),
        &[&["lokoctl"], &["--lokoctl", "LOKOCTL"]],
        false,
    );
    refused(
        "a --module that is not in the state",
        agg(&env).args(["-y", "--module", "module.nope.module.bootkube"]),
        &[&[module.as_str()]],
        false,
    );
    refused("no -y and no terminal", agg(&env), &[&["refusing"], &["without confirmation"]], false);
    {
        let _lock = StateLock::hold(&env);
        refused(
            "the Terraform state lock held by terraform console",
            agg(&env).args(["-y"]),
            &[&["state lock", "state is locked", "locked"]],
            true,
        );
    }

    env.step("usage error");
    let out = agg(&env).args(["--phase", "bogus", "-y"]).run();
    if out.code() != Some(2) {
        failures.push(format!("--phase bogus: exit {:?}, want 2 (usage):\n{out}", out.code()));
    }

    env.step("dry run against an unreachable cluster");
    let unreachable = unreachable_kubeconfig(&env);
    let out = agg(&env)
        .args(["--dry-run", "--cleanup", "-o", "json"])
        .arg("--kubeconfig")
        .arg(&unreachable)
        .run();
    if out.code() != Some(0) {
        failures
            .push(format!("dry run, unreachable cluster: exit {:?}, want 0:\n{out}", out.code()));
    } else {
        let p = json_out(&out);
        let names: Vec<String> = p["phases"]
            .as_array()
            .map(|a| a.iter().map(|x| x["name"].as_str().unwrap_or_default().to_string()).collect())
            .unwrap_or_default();
        if names != PHASES {
            failures.push(format!("dry run, unreachable cluster: phases {names:?}:\n{out}"));
        } else {
            // Which extension servers to restart cannot be known: the restart steps or the
            // plan's notes (the tool's `unresolved` list) must say so.
            let restart = plan_text(&p, "restart");
            let notes = unresolved_notes(&p);
            if !(says_unresolved(&restart)
                || notes.contains("cluster")
                || notes.contains("extension"))
            {
                failures.push(format!(
                    "dry run, unreachable cluster: nothing says the extension servers could not be resolved:\nrestart steps: {restart}\nunresolved: {notes:?}"
                ));
            }
            if !plan_text(&p, "ca").contains(&format!("{module}.tls_private_key.aggregation-ca[0]"))
            {
                failures.push(format!("dry run, unreachable cluster: the state is readable, the ca plan should name {module}:\n{}", plan_text(&p, "ca")));
            }
        }
    }
    let out =
        agg(&env).args(["--dry-run", "--cleanup"]).arg("--kubeconfig").arg(&unreachable).run();
    if out.code() != Some(0) || !says_unresolved(&text(&out)) {
        failures.push(format!("dry run (table), unreachable cluster: want exit 0 and what could not be resolved:\n{out}"));
    }

    env.step("dry run without terraform (the state cannot be read)");
    let out =
        agg(&env).args(["--dry-run", "-o", "json", "--terraform", "/nonexistent/terraform"]).run();
    if out.code() != Some(0) {
        failures.push(format!("dry run without terraform: exit {:?}, want 0:\n{out}", out.code()));
    } else if !says_unresolved(&format!(
        "{}\n{}",
        unresolved_notes(&json_out(&out)),
        plan_text(&json_out(&out), "ca")
    )) {
        failures.push(format!(
            "dry run without terraform: should say the module address could not be resolved:\n{out}"
        ));
    }
    let d = diff(&w0, &world(&env));
    if !d.is_empty() {
        failures.push(format!("the dry runs changed things:\n  {}", d.join("\n  ")));
    }
    if !run_dirs(&env).is_empty() {
        failures.push("a dry run started a run folder".into());
    }

    assert!(failures.is_empty(), "{} failure(s):\n\n{}", failures.len(), failures.join("\n\n"));
}

// ---------------------------------------------------------------------------------------
// Interruptions an operator's machine has: releases left pending behind lokoctl, SIGTERM and
// SIGHUP, an API server restarting under the re-run, a cleanup that fails

/// Shell for a wrapper: on SIGINT, record it in `log` and exit 130 (what terraform does after
/// saving its state). Proves which signal a child got: SIGKILL would leave no line.
fn record_sigint(log: &Path) -> String {
    format!("trap 'echo INT >> {}; exit 130' INT", log.display())
}

/// The run's Terraform state backups: each is 0600 in a 0700 folder and a whole state, as
/// terraform wrote it (with its keys, so `terraform state push` of it restores them).
fn check_state_backups(env: &TestEnv) -> usize {
    let dir = run_dir(env).join("terraform-state");
    assert_eq!(mode(&dir), 0o700, "{} is 0700", dir.display());
    let kept: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!kept.is_empty(), "the state is kept before terraform changes it");
    for path in &kept {
        assert_eq!(mode(path), 0o600, "{} is 0600", path.display());
        let text = read(path);
        let state: Value = serde_json::from_slice(&text)
            .unwrap_or_else(|e| panic!("{} is not a whole state: {e}", path.display()));
        let text = String::from_utf8_lossy(&text);
        assert!(!text.contains("[REDACTED"), "{} holds the keys, not markers", path.display());
        assert!(text.contains("PRIVATE KEY-----"), "{} holds the keys", path.display());
        assert!(state["resources"].as_array().is_some_and(|r| !r.is_empty()), "{}", path.display());
    }
    kept.len()
}

/// The asset dir's terraform.tfstate parses as a state.
fn assert_state_valid(env: &TestEnv) {
    let path = env.assets.dir.join("terraform/terraform.tfstate");
    let state: Result<Value, _> = serde_json::from_slice(&read(&path));
    assert!(state.is_ok_and(|s| s["resources"].is_array()), "{} is a valid state", path.display());
}

/// Waits until the helm upgrade of kube-apiserver that `what` started is `pending-upgrade`
/// with a pod held Pending (`run` must still be running).
fn wait_upgrade_held(env: &TestEnv, what: &str, run: &mut support::Spawned, revisions: usize) {
    wait_for(what, Duration::from_secs(180), || {
        if !run.is_running() {
            panic!("the rotation ended by itself: {}", run.kill());
        }
        let history = helm_history(env, "kube-apiserver", "kube-system");
        let last = history.last().cloned().unwrap_or_default();
        let pending = pods(env, "k8s-app=kube-apiserver").iter().any(|p| pod_phase(p) == "Pending");
        if history.len() > revisions && last.1 == "pending-upgrade" && pending {
            Ok(())
        } else {
            Err(format!("history {history:?}, a Pending pod: {pending}"))
        }
    });
}

fn hold_kube_apiserver_pods(env: &TestEnv) {
    env.kubelet
        .set_never_started(Some(Arc::new(|pod: &Pod| label_is(pod, "k8s-app", "kube-apiserver"))));
}

/// Issue 14 item 1: lokoctl runs with --skip-pre-update-health-check, which is what would
/// roll back a release a killed helm left pending; so the tool recovers every pending release
/// before each lokoctl run.
#[test]
fn a_release_left_pending_behind_lokoctl_is_recovered_before_lokoctl_runs_again() {
    let env = cluster("agg-lokoctl-pending");
    let orig = Original::of(&env);
    let module = env.assets.bootkube_module();
    for phase in ["backup", "ca", "bundle", "restart", "client"] {
        let out = timed(
            &env,
            &format!("--phase {phase}"),
            agg(&env).args(["-y", "--phase", phase]).args(WAIT),
        );
        assert_eq!(out.code(), Some(0), "--phase {phase}: {out}");
    }
    let revisions = helm_history(&env, "kube-apiserver", "kube-system").len();

    env.step("kube-apiserver pods held Pending; aggregation -y until lokoctl's helm upgrade waits");
    hold_kube_apiserver_pods(&env);
    let mut first = agg(&env).args(["-y"]).args(WAIT).spawn();
    wait_upgrade_held(&env, "lokoctl's helm upgrade on a pod held Pending", &mut first, revisions);
    let tool = plugin_pid(&env).expect("the running plugin in /proc");
    signal(tool, "KILL");
    first.wait();
    // lokoctl's helm is the tool's grandchild: killed with -9 (an OOM kill, a lost session),
    // it leaves the release pending-upgrade.
    let helms: Vec<Tagged> =
        tagged(&tag(&env)).into_iter().filter(|p| p.comm.starts_with("helm")).collect();
    assert!(!helms.is_empty(), "lokoctl's helm upgrade runs: {:?}", tagged(&tag(&env)));
    for h in &helms {
        signal(h.pid, "KILL");
    }
    if let Err(left) = wait_all_gone(&env, Duration::from_secs(15)) {
        kill_leftovers(&env);
        panic!("left running: {left}");
    }
    let (rev, status, _) = helm_history(&env, "kube-apiserver", "kube-system").pop().unwrap();
    assert_eq!(status, "pending-upgrade", "the release is left pending-upgrade");
    env.step(&format!("kube-apiserver release left pending-upgrade at revision {rev}"));

    env.kubelet.set_never_started(None);
    env.wait_rollout("kube-system", "deploy/kube-apiserver");
    let out = timed(&env, "the same command again", agg(&env).args(["-y"]).args(WAIT));
    assert_eq!(out.code(), Some(0), "{out}");
    let history = helm_history(&env, "kube-apiserver", "kube-system");
    assert!(
        history.iter().any(|(_, _, d)| d.contains(&format!("Rollback to {rev}"))),
        "the re-run rolled back the pending revision {rev} before lokoctl: {history:?}"
    );
    assert_eq!(history.last().unwrap().1, "deployed", "{history:?}");
    let j = journal(&env);
    let recovered = j["events"].as_array().unwrap().iter().any(|e| {
        e["phase"] == "apply" && e["outcome"].as_str().unwrap_or("").contains("rolled back")
    });
    assert!(recovered, "the journal records the recovery: {j:#}");
    check_rotated(&env, &orig, &module, false);
}

/// Sends `sig` to the running plugin: it must stop as on Ctrl-C (exit 130, saying which
/// signal) and leave no child running.
fn stop_like_ctrl_c(env: &TestEnv, run: support::Spawned, sig: &str) {
    signal(plugin_pid(env).expect("the running plugin"), sig);
    let out = run.wait();
    assert_eq!(out.code(), Some(130), "SIG{sig} is handled as Ctrl-C: {out}");
    assert!(text(&out).contains(&format!("interrupted (SIG{sig})")), "{out}");
    if let Err(left) = wait_all_gone(env, Duration::from_secs(15)) {
        kill_leftovers(env);
        panic!("children outlived the SIG{sig}'d run: {left}");
    }
}

/// Issue 14 item 4: SIGTERM (during terraform apply) and SIGHUP (during helm upgrade --wait)
/// stop the run as Ctrl-C does; children get SIGINT; the state stays whole and is kept in the
/// run folder; a re-run completes with one new CA.
#[test]
fn sigterm_and_sighup_stop_the_run_as_ctrl_c_and_the_state_is_kept() {
    let env = cluster("agg-sigterm-sighup");
    let orig = Original::of(&env);
    let module = env.assets.bootkube_module();
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));
    let (marker, release) = (env.dir().join("apply-held"), env.dir().join("apply-release"));
    let sigs = env.dir().join("terraform-signals.log");
    let hold = format!("{}\n{}", record_sigint(&sigs), hold_once("apply", &marker, &release));
    let terraform = Wrapper::new(&env, "terraform", &Tools::get().terraform, &hold);
    let helm = Wrapper::new(&env, "helm", Helm::V3.path(), "");
    let rotation = || {
        agg(&env)
            .args(["-y"])
            .args(WAIT)
            .arg("--terraform")
            .arg(&terraform.path)
            .arg("--helm")
            .arg(&helm.path)
    };

    env.step("aggregation -y, held in the ca phase's terraform apply; then SIGTERM");
    let mut first = rotation().spawn();
    wait_for("the ca phase's terraform apply", Duration::from_secs(120), || {
        if !first.is_running() {
            panic!("the rotation ended before its terraform apply: {}", first.kill());
        }
        read_marker(&marker).ok_or_else(|| "not yet".to_string())
    });
    stop_like_ctrl_c(&env, first, "TERM");
    assert!(
        std::fs::read_to_string(&sigs).unwrap_or_default().contains("INT"),
        "terraform's wrapper was stopped with SIGINT"
    );
    assert_eq!(outcome(&journal(&env), "ca"), "interrupted");
    assert_state_valid(&env);
    let kept = check_state_backups(&env);
    env.step(&format!("{kept} state backup(s) in the run folder"));
    std::fs::write(&release, "").unwrap();

    env.step("the same command, held in bundle's helm upgrade --wait; then SIGHUP");
    let revisions = helm_history(&env, "kube-apiserver", "kube-system").len();
    hold_kube_apiserver_pods(&env);
    let mut second = rotation().spawn();
    wait_upgrade_held(&env, "bundle's helm upgrade --wait", &mut second, revisions);
    stop_like_ctrl_c(&env, second, "HUP");
    assert_eq!(outcome(&journal(&env), "bundle"), "interrupted");
    assert_state_valid(&env);

    env.kubelet.set_never_started(None);
    env.wait_rollout("kube-system", "deploy/kube-apiserver");
    let out = timed(&env, "the same command again", rotation());
    assert_eq!(out.code(), Some(0), "{out}");
    let new = check_rotated(&env, &orig, &module, false);
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "exactly one new CA");
    check_state_backups(&env);
}

/// Waits until nothing listens on the API port any more (the API server is down).
fn wait_api_down(env: &TestEnv) {
    let addr = format!("127.0.0.1:{}", env.assets.api_port);
    wait_for("kube-apiserver to go down", Duration::from_secs(30), || {
        match std::net::TcpStream::connect(&addr) {
            Ok(_) => Err("still listening".to_string()),
            Err(_) => Ok(()),
        }
    });
}

/// Issue 14 items 2, 4 and 5 on one cluster: a cut-off run folder is passed over; a taint of a
/// resource terraform destroyed and never re-created; a re-run while kube-apiserver restarts
/// waits for it; a cleanup that fails leaves a run that the next invocation finishes (so
/// --new-run works), and --phase cleanup can be run again; a cleanup found half done by hand
/// (ConfigMap re-created, extension servers not restarted) is not taken for done.
#[test]
fn cut_off_runs_destroyed_resources_restarting_apis_and_failed_cleanups_are_all_finished() {
    let env = cluster("agg-finish-runs");
    let orig = Original::of(&env);
    let module = env.assets.bootkube_module();
    let watch = CaWatch::start(env.assets.tls("aggregation-ca.crt"));

    env.step("a run folder whose creation was cut off (no journal.json), then --phase backup");
    let cut_off = certrotate_dir(&env).join("aggregation-29991231T235959Z");
    std::fs::create_dir_all(cut_off.join("backup")).unwrap();
    let out = agg(&env).args(["-y", "--phase", "backup"]).run();
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("passed over"), "says what the cut-off folder is: {out}");
    std::fs::remove_dir_all(&cut_off).unwrap();

    env.step("terraform state rm of the CA key: destroyed by an apply that never created it");
    let key = format!("{module}.tls_private_key.aggregation-ca[0]");
    let out = env.terraform().args(["state", "rm", &key]).run();
    assert_eq!(out.code(), Some(0), "{out}");

    env.step("kube-apiserver restarting while the run goes on (ca phase, then the rest)");
    let hold = "k8s.io/certrotate-test";
    let out = env
        .kubectl()
        .args(["-n", "kube-system", "patch", "configmap", AUTH_CM, "--type=merge", "-p"])
        .arg(format!("{{\"metadata\":{{\"finalizers\":[\"{hold}\"]}}}}"))
        .run();
    assert_eq!(out.code(), Some(0), "{out}");
    let out = std::thread::scope(|s| {
        let restart = s.spawn(|| env.block_on(env.apiserver.restart("by the test")));
        wait_api_down(&env);
        let out = agg(&env).args(["-y", "--cleanup", "--timeout", "60s"]).run();
        restart.join().unwrap().unwrap();
        out
    });
    env.step(&format!("aggregation --cleanup -y: exit {:?}", out.code()));
    assert!(
        out.stderr.contains("waiting for the API server"),
        "the re-run waited for kube-apiserver instead of failing: {out}"
    );
    let j = journal(&env);
    let taint = j["events"].as_array().unwrap().iter().find(|e| e["phase"] == "ca").cloned();
    assert!(
        taint
            .as_ref()
            .is_some_and(|e| e["outcome"].as_str().unwrap_or("").contains("the apply creates it")),
        "the taint of a destroyed key is skipped: {j:#}"
    );
    // The finalizer keeps the deleted ConfigMap with both CAs: the cleanup cannot verify.
    assert_eq!(out.code(), Some(1), "the cleanup fails: {out}");
    assert_eq!(outcome(&j, "cleanup"), "failed", "{j:#}");
    for phase in &PHASES[..6] {
        assert_eq!(outcome(&j, phase), "done", "{phase}: {j:#}");
    }

    env.step("aggregation -y: nothing to do, and the run is finished; --new-run is accepted");
    let out = agg(&env).args(["-y"]).run();
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("nothing to do"), "{out}");
    assert_eq!(journal(&env)["state"], "finished", "a run whose path is done is finished");
    let out = agg(&env).args(["--new-run", "--dry-run"]).run();
    assert_eq!(out.code(), Some(0), "--new-run is no longer refused: {out}");

    env.step("by hand: finalizer dropped; kube-apiserver re-creates the ConfigMap at once");
    let out = env
        .kubectl()
        .args(["-n", "kube-system", "patch", "configmap", AUTH_CM, "--type=json", "-p"])
        .arg(r#"[{"op":"remove","path":"/metadata/finalizers"}]"#)
        .run();
    assert_eq!(out.code(), Some(0), "{out}");
    let new = fp(&read(&env.assets.tls("aggregation-ca.crt")));
    wait_configmap(&env, &[new.as_str()], Duration::from_secs(60));
    let restarted = restarted_at(&env, "metrics-server");

    env.step("--phase cleanup: the extension servers still run from before the ConfigMap");
    let out = timed(
        &env,
        "--phase cleanup",
        agg(&env).args(["-y", "--phase", "cleanup", "-o", "json"]).args(WAIT),
    );
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(result_of(&summary(&out), "cleanup"), "done", "not already-done: {out}");
    assert_ne!(restarted_at(&env, "metrics-server"), restarted, "metrics-server restarted again");
    let new = check_rotated(&env, &orig, &module, true);
    assert_eq!(watch.generations(), vec![orig.ca_fp.clone(), new], "exactly one new CA");
}
