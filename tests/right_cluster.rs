//! The children of a rotation act on the cluster the plugin verified, and only on it (issue
//! 14, item 3), end to end on real control planes with real helm and the lokoctl double.
//!
//! | test | proves |
//! |---|---|
//! | `a_config_dir_naming_a_copy_of_the_asset_dir_is_refused_before_any_change` | `$CONFIG_DIR` left on a config dir whose lokocfg names a copy of the asset dir: refused before any change, naming both asset dirs and `--config-dir`; the dry run shows it as unresolved; lokoctl never runs; the cluster, the asset dir and the copy unchanged |
//! | `a_lokoctl_that_applies_other_values_fails_the_apply_check` | a lokoctl that applies a copy of the asset dir (the old CA and client certificate) whatever the lokocfg says: the `apply` phase fails, reading what Secret `kube-system/kube-apiserver` serves, and says lokoctl applied other values; the same command with the right lokoctl then completes |
//! | `a_merged_kubeconfig_and_helm_variables_for_another_cluster_change_only_the_verified_one` | two real clusters in one kubeconfig, the current context the asset dir's, `HELM_KUBECONTEXT` and the other `HELM_KUBE*` naming the other cluster: the rotation lands on the verified cluster; the other's objects are unchanged; every helm and lokoctl call got a 0600 kubeconfig of that context alone (removed after) and none of the variables |

mod support;

#[path = "aggregation/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{AssetOptions, Cmd, EnvOptions, ExtApiServer, Helm, TestEnv, Tools};

use helpers::*;

/// A cluster with the kube-apiserver chart installed (helm 3, as lokoctl) and, with
/// `extension_server`, metrics-server Available.
fn cluster(name: &str, options: EnvOptions, extension_server: bool) -> TestEnv {
    let env = TestEnv::start_with(name, options);
    env.install_kube_apiserver_chart(Helm::V3);
    if extension_server {
        env.deploy_ext_apiserver(&ExtApiServer::metrics_server());
        env.wait_rollout("kube-system", "deploy/metrics-server");
        env.wait_apiservice(APISERVICE, true, Duration::from_secs(120));
    }
    env.step("kube-apiserver chart installed");
    env
}

fn lokoctl_calls(env: &TestEnv) -> String {
    std::fs::read_to_string(env.dir().join("lokoctl-double.log")).unwrap_or_default()
}

#[test]
fn a_config_dir_naming_a_copy_of_the_asset_dir_is_refused_before_any_change() {
    let env = cluster("rc-copy", EnvOptions::default(), false);
    // What an operator of several clusters has: CONFIG_DIR still set for another config dir,
    // here one whose asset dir is a copy of this one taken before the rotation (same PKI,
    // same state: only the path tells them apart).
    let (stale, copy) = stale_config_dir(&env);
    let copy_files = || file_tree(&copy, &|_: &Path| false);
    let (before, copy_before) = (world(&env), copy_files());

    env.step("the rotation is refused before any change");
    let out = agg(&env).env("CONFIG_DIR", &stale).args(["-y"]).args(WAIT).run();
    assert_unchanged(&env, &before, "the refused rotation");
    assert!(copy_files() == copy_before, "the copy of the asset dir is unchanged");
    assert_eq!(lokoctl_calls(&env), "", "lokoctl never ran");
    assert!(run_dirs(&env).is_empty(), "no run was started");
    assert_eq!(out.code(), Some(1), "{out}");
    let said = text(&out);
    for needle in [
        format!("names the asset dir \"./assets\" ({})", copy.display()),
        format!("not {}", env.assets.dir.display()),
        format!("{}, line 2, column 3", stale.join("cluster.lokocfg").display()),
        "(from $CONFIG_DIR)".into(),
        "pass --config-dir DIR".into(),
        "Nothing was changed".into(),
    ] {
        assert!(said.contains(&needle), "the refusal says {needle:?}: {out}");
    }

    env.step("dry run: the refusal is shown as unresolved, nothing changes");
    let out = agg(&env).env("CONFIG_DIR", &stale).args(["--dry-run", "-o", "json"]).run();
    assert_eq!(out.code(), Some(0), "{out}");
    let notes = unresolved_notes(&plan(&out));
    for needle in [copy.display().to_string(), env.assets.dir.display().to_string()] {
        assert!(notes.contains(&needle), "the dry run's unresolved notes name {needle}: {notes}");
    }
    assert_unchanged(&env, &before, "the dry run");

    env.step("--config-dir naming the right config dir is accepted");
    let out = agg(&env)
        .env("CONFIG_DIR", &stale)
        .arg("--config-dir")
        .arg(&env.assets.config_dir)
        .args(["--dry-run", "-o", "json"])
        .run();
    assert_eq!(out.code(), Some(0), "{out}");
    let notes = unresolved_notes(&plan(&out));
    assert!(!notes.contains("lokoctl"), "nothing about lokoctl left unresolved: {notes}");
}

/// A config dir `stale-config` beside the test's, whose lokocfg names `stale-config/assets`, a
/// copy of the asset dir as it is now (same PKI and state: only the path tells them apart).
/// Returns the config dir and the copy.
fn stale_config_dir(env: &TestEnv) -> (PathBuf, PathBuf) {
    let stale = env.dir().join("stale-config");
    std::fs::create_dir_all(&stale).unwrap();
    let copy = stale.join("assets");
    Cmd::new("cp").arg("-a").arg(&env.assets.dir).arg(&copy).ok();
    std::fs::write(
        stale.join("cluster.lokocfg"),
        "cluster \"aws\" {\n  asset_dir    = \"./assets\"\n  cluster_name = \"l8e-mat\"\n}\n",
    )
    .unwrap();
    (stale, copy)
}

#[test]
fn a_lokoctl_that_applies_other_values_fails_the_apply_check() {
    let env = cluster("rc-apply-check", EnvOptions::default(), false);
    let (stale, _copy) = stale_config_dir(&env);
    // What the config dir check cannot see: a lokoctl that, whatever the lokocfg here says,
    // applies the copy taken before the rotation (the old CA and client certificate).
    let elsewhere = script(
        &env,
        "lokoctl-elsewhere",
        &format!(
            "#!/bin/sh\n# Test double: lokoctl applying another asset dir.\ncd '{}' && exec '{}' \"$@\"\n",
            stale.display(),
            Tools::get().lokoctl_double.display()
        ),
    );

    env.step("aggregation -y, lokoctl applying the copy");
    let out = agg(&env).args(["-y"]).args(WAIT).arg("--lokoctl").arg(&elsewhere).run();
    env.step(&format!("… exited {:?}", out.code()));
    let j = journal(&env);
    assert_eq!(outcome(&j, "client"), "done", "the phases before apply ran: {out}");
    assert_eq!(outcome(&j, "apply"), "failed", "the apply check saw the Secret: {out}");
    assert_eq!(out.code(), Some(1), "{out}");
    let said = text(&out);
    for needle in [
        "secret kube-system/kube-apiserver",
        "aggregation-ca.crt does not hold the CA of tls/aggregation-ca.crt",
        "aggregation-client.crt is not tls/aggregation-client.crt",
        "lokoctl applied other values than this asset dir's",
    ] {
        assert!(said.contains(needle), "the failure says {needle:?}: {out}");
    }

    env.step("the same command with the right lokoctl completes the rotation");
    let out = agg(&env).args(["-y"]).args(WAIT).run();
    assert_eq!(out.code(), Some(0), "{out}");
    let ca = fp(&read(&env.assets.tls("aggregation-ca.crt")));
    assert!(secret_cas(&env, "aggregation-ca.crt").contains(&ca), "the Secret holds the new CA");
}

/// Shell for a wrapper of helm or lokoctl: records the kubeconfig it was given (the
/// `--kubeconfig` argument, else `$KUBECONFIG`), that file's mode and servers, and every
/// helm variable that would override it.
fn record_kubeconfig(log: &Path) -> String {
    format!(
        "kc=${{KUBECONFIG:-}}; prev=\n\
         for a in \"$@\"; do [ \"$prev\" = --kubeconfig ] && kc=$a; prev=$a; done\n\
         if [ -f \"$kc\" ]; then\n\
           printf 'kubeconfig %s %s %s\\n' \"$kc\" \"$(stat -c %a \"$kc\")\" \"$(grep -o 'https://127.0.0.1:[0-9]*' \"$kc\" | tr '\\n' ,)\" >> '{log}'\n\
         else printf 'kubeconfig %s missing\\n' \"$kc\" >> '{log}'; fi\n\
         env | grep -E '^HELM_(KUBE|NAMESPACE)' | sed 's/^/inherited /' >> '{log}' || true",
        log = log.display()
    )
}

#[test]
fn a_merged_kubeconfig_and_helm_variables_for_another_cluster_change_only_the_verified_one() {
    let env = cluster("rc-merged", EnvOptions::default(), true);
    let other_options = EnvOptions {
        assets: AssetOptions { cluster: Some("other".into()), ..AssetOptions::default() },
        ..EnvOptions::default()
    };
    let other = cluster("rc-merged-other", other_options, false);
    let server = format!("https://127.0.0.1:{}", env.assets.api_port);
    let other_server = format!("https://127.0.0.1:{}", other.assets.api_port);

    // One kubeconfig with both clusters, its current context this asset dir's (the first
    // file's), as `kubectl config view --flatten` merges them.
    let both = format!("{}:{}", env.kubeconfig().display(), other.kubeconfig().display());
    let merged = env.dir().join("merged-kubeconfig");
    let flat = env.kubectl().env("KUBECONFIG", &both).args(["config", "view", "--flatten"]).ok();
    std::fs::write(&merged, &flat.stdout).unwrap();
    assert!(flat.stdout.contains("other-context"), "{}", flat.stdout);

    let log = env.dir().join("kubeconfigs.log");
    let tools = Tools::get();
    let helm = Wrapper::new(&env, "helm", Helm::V3.path(), &record_kubeconfig(&log));
    let lokoctl = Wrapper::new(&env, "lokoctl", &tools.lokoctl_double, &record_kubeconfig(&log));
    let (other_before, ca_before) =
        (world(&other), fp(&read(&env.assets.tls("aggregation-ca.crt"))));

    env.step("aggregation -y with a merged kubeconfig and HELM_KUBE* naming the other cluster");
    let out = agg(&env)
        .env("KUBECONFIG", &merged)
        .env("HELM_KUBECONTEXT", "other-context")
        .env("HELM_KUBEAPISERVER", &other_server)
        .env("HELM_KUBEINSECURE_SKIP_TLS_VERIFY", "true")
        .env("HELM_KUBEASUSER", "certrotate-test-other")
        .env("HELM_KUBEASGROUPS", "system:masters")
        .env("HELM_KUBETOKEN", "not-a-token-of-this-cluster")
        .env("HELM_NAMESPACE", "default")
        .args(["-y"])
        .args(WAIT)
        .arg("--helm")
        .arg(&helm.path)
        .arg("--lokoctl")
        .arg(&lokoctl.path)
        .run();
    env.step(&format!("… exited {:?}", out.code()));

    env.step("the other cluster is unchanged");
    assert_unchanged(&other, &other_before, "a rotation of another cluster");

    env.step("the rotation landed on the verified cluster");
    assert_eq!(out.code(), Some(0), "{out}");
    let ca = read(&env.assets.tls("aggregation-ca.crt"));
    assert_ne!(fp(&ca), ca_before, "a new CA in the files");
    assert!(secret_cas(&env, "aggregation-ca.crt").contains(&fp(&ca)), "the Secret has it");
    let client = fp(&read(&env.assets.tls("aggregation-client.crt")));
    assert_eq!(secret_cas(&env, "aggregation-client.crt"), vec![client], "and the client cert");

    env.step("every helm and lokoctl call got this context alone, and no HELM_KUBE*");
    let recorded = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!helm.calls_with("upgrade").is_empty(), "helm ran upgrades: {}", helm.log_text());
    assert!(!lokoctl.calls().is_empty(), "lokoctl ran");
    let calls = helm.calls().len() + lokoctl.calls().len();
    let given: Vec<&str> = recorded.lines().filter(|l| l.starts_with("kubeconfig ")).collect();
    assert_eq!(given.len(), calls, "one kubeconfig per call:\n{recorded}");
    for line in &given {
        let [_, path, mode, servers] = line.splitn(4, ' ').collect::<Vec<_>>()[..] else {
            panic!("a call without a kubeconfig file: {line}\n{recorded}");
        };
        assert_eq!(mode, "600", "{line}");
        assert_eq!(servers, format!("{server},"), "only this cluster's server: {line}");
        assert!(!Path::new(path).exists(), "{path} was removed after the run");
    }
    let inherited: Vec<&str> = recorded.lines().filter(|l| l.starts_with("inherited ")).collect();
    assert!(inherited.is_empty(), "children inherited {inherited:?}");
}
