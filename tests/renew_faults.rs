//! `kubectl certrotate renew` killed with SIGKILL at chosen moments (issue 16: "`kill -9`
//! during `certificates`, during `control-plane` and during `restart`, each re-run
//! completing"): the built plugin on a real control plane with the control-plane charts and
//! metrics-server, real terraform, helm 3 and the lokoctl double.
//!
//! One `#[test]`, one control plane, three renewals in a row (the second and third start with
//! `--new-run`). Each is killed at its moment, found from the processes the plugin started
//! and from its journal:
//!
//! | case | the moment |
//! |---|---|
//! | `certificates` | `terraform apply -parallelism=1` runs and has re-written a first file of `tls/` (half the files new, half old) |
//! | `control-plane` | lokoctl's `helm upgrade --install --atomic` runs (the plugin's grandchild, left running by the lokoctl script when the plugin dies) |
//! | `restart` | every workload restarted and their rollouts waited for (metrics-server's new pod held Pending until the kill) |
//!
//! After each kill the same command runs again (without `--new-run`, which a run in progress
//! refuses) and must complete; the end state must be an uninterrupted run's: every
//! certificate new in files, state and Secrets, chaining both ways, CA keys kept; every token
//! the new kube CA; every workload restarted since the run began and rolled out; the run
//! finished; exactly one new kube CA certificate; no process of the plugin or its children
//! left; no key in any output or the journal. After the restart case, the workloads the
//! killed run restarted are not restarted again (their rollouts are waited for).

mod common;
mod support;

#[path = "aggregation/helpers.rs"]
mod aggregation;
#[path = "renew/helpers.rs"]
mod renew;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use common::leaks::Needles;
use serde_json::Value;
use support::{Cmd, Output, TestEnv};

/// The plugin's bound for each wait, and the test's for an invocation (a resumed run may
/// wait several times: a rollback, lokoctl's upgrades, the rollouts).
const WAIT: &str = "5m";
const INVOCATION: Duration = Duration::from_secs(900);
/// Bound for reaching a moment from the invocation's start.
const TO_THE_MOMENT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Case {
    Certificates,
    ControlPlane,
    Restart,
}

impl Case {
    fn phase(self) -> &'static str {
        match self {
            Case::Certificates => "certificates",
            Case::ControlPlane => "control-plane",
            Case::Restart => "restart",
        }
    }
}

/// `renew -y -o json` with the etcd member as this machine reaches it, tagged so that every
/// process it starts is found.
fn command(env: &TestEnv) -> Cmd {
    renew::renew_reaching_etcd(env)
        .env(aggregation::TAG_VAR, aggregation::tag(env))
        .args(["-y", "-o", "json", "--timeout", WAIT])
        .timeout(INVOCATION)
}

/// The journal of the run in progress, if one is.
fn journal_in_progress(env: &TestEnv) -> Option<Value> {
    let run = renew::run_dirs(env).pop()?;
    let text = std::fs::read_to_string(run.join("journal.json")).ok()?;
    let journal: Value = serde_json::from_str(&text).ok()?;
    (journal["state"] == "in-progress").then_some(journal)
}

/// A running process of the plugin's run whose program is `program` and whose arguments hold
/// the word `word`: `(pid, its command line)`.
fn child(env: &TestEnv, program: &str, word: &str) -> Option<(u32, String)> {
    aggregation::tagged(&aggregation::tag(env))
        .into_iter()
        .find(|p| p.comm == program && p.args.split(' ').any(|a| a == word))
        .map(|p| (p.pid, p.args))
}

/// Whether the run in progress has begun the step of phase `phase` whose description starts
/// with `step` and not ended it.
fn step_running(env: &TestEnv, phase: &str, step: &str) -> bool {
    let Some(journal) = journal_in_progress(env) else { return false };
    journal["events"].as_array().is_some_and(|events| {
        events.iter().any(|e| {
            e["phase"] == phase
                && e["outcome"] == "started"
                && e["what"].as_str().is_some_and(|w| w.starts_with(step))
        })
    })
}

/// The `restartedAt` of each workload of [`renew::RESTARTED`].
fn restarts(env: &TestEnv) -> Vec<Option<String>> {
    renew::RESTARTED
        .iter()
        .map(|(ns, kind, name)| renew::restarted_at(env, ns, kind, name))
        .collect()
}

/// Whether every workload of [`renew::RESTARTED`] was restarted since the run in progress began.
fn all_restarted_by_this_run(env: &TestEnv) -> bool {
    let Some(journal) = journal_in_progress(env) else { return false };
    let began = renew::timestamp(journal["startedAt"].as_str().unwrap());
    restarts(env).iter().all(|at| at.as_deref().is_some_and(|at| renew::timestamp(at) >= began))
}

/// Waits for `case`'s moment in the running invocation and says what it found; panics with
/// the invocation's output if it ends first.
fn reach(env: &TestEnv, case: Case, run: &mut support::Spawned) -> String {
    let tls = env.assets.cluster_assets().join("tls");
    let original = common::snapshot_tree(&tls);
    support::wait_for(&format!("the {case:?} moment"), TO_THE_MOMENT, || {
        if !run.is_running() {
            panic!("the renewal ended before the {case:?} moment: {}", run.kill());
        }
        let found = match case {
            Case::Certificates => child(env, "terraform", "apply")
                .filter(|_| common::snapshot_tree(&tls) != original)
                .map(|(pid, args)| {
                    format!("terraform apply (pid {pid}: {args}) has re-written files of tls/")
                }),
            Case::ControlPlane => child(env, "helm", "upgrade")
                .map(|(pid, args)| format!("lokoctl's helm upgrade runs (pid {pid}: {args})")),
            Case::Restart => (step_running(env, "restart", "restart, concurrently")
                && all_restarted_by_this_run(env))
            .then(|| "the restart phase has restarted every workload and waits for the rollouts (metrics-server's held)".to_string()),
        };
        found.ok_or_else(|| "not yet".to_string())
    })
}

/// `out` shows no private key of `needles`.
fn no_key_in(needles: &Needles, what: &str, out: &Output) {
    let leaked = needles.found_in(&format!("{}\n{}", out.stdout, out.stderr));
    assert!(leaked.is_empty(), "{what}: private key material in the output: {leaked:?}");
}

/// One renewal killed at `case`'s moment, then the same command again; checks the end state.
fn killed_and_rerun(env: &TestEnv, needles: &mut Needles, case: Case, new_run: bool) {
    let phase = case.phase();
    let ca = env.assets.tls("ca.crt");
    let old_ca = aggregation::fp(&aggregation::read(&ca));
    let watch = aggregation::CaWatch::start(ca.clone());
    env.step(&format!(
        "renew -y{}: SIGKILL during {phase}",
        if new_run { " --new-run" } else { "" }
    ));
    if case == Case::Restart {
        // Its new pod held Pending: the kill lands while its rollout is waited for.
        let metrics_server = |pod: &Pod| aggregation::label_is(pod, "app", "metrics-server");
        env.kubelet.set_never_started(Some(Arc::new(metrics_server)));
    }
    let mut run = command(env).args(new_run.then_some("--new-run")).spawn();
    let moment = reach(env, case, &mut run);
    let pid = run.id();
    aggregation::signal(pid, "KILL");
    env.step(&format!("SIGKILL to the plugin (pid {pid}): {moment}"));
    let killed = run.wait();
    assert_eq!(killed.code(), None, "killed by SIGKILL: {killed}");
    no_key_in(needles, "the killed run", &killed);
    let journal = journal_in_progress(env).expect("the killed run is in progress");
    let record = aggregation::journal_phase(&journal, phase);
    assert_eq!(record["outcome"], "running", "killed in {phase}: {journal:#}");
    let left = aggregation::tagged(&aggregation::tag(env));
    let left: Vec<String> = left.iter().map(|p| format!("{} ({})", p.comm, p.pid)).collect();
    env.step(&format!("left running by the killed plugin: {left:?}"));
    let restarted = restarts(env);
    env.kubelet.set_never_started(None);
    if case == Case::ControlPlane {
        // What a terraform cut off between deleting and writing it leaves: the re-run must
        // reach the cluster with the copy its backup kept, and lokoctl's apply writes it again.
        env.step("auth/kubeconfig removed, as a terraform cut off mid-replace leaves it");
        std::fs::remove_file(env.kubeconfig()).unwrap();
        // And the state emptied, as a terraform killed while writing it leaves it (it dies of
        // SIGPIPE once the plugin reading its output is gone): seen in the certificates case.
        env.step("terraform.tfstate emptied, as a terraform killed while writing it leaves it");
        std::fs::write(env.assets.dir.join("terraform/terraform.tfstate"), "").unwrap();
    }

    let out = aggregation::timed(
        env,
        &format!("the same command again, after the kill in {phase}"),
        command(env),
    );
    assert_eq!(out.code(), Some(0), "the re-run after a kill in {phase}: {out}");
    if case == Case::ControlPlane {
        assert!(out.stderr.contains("using the copy this run kept"), "{out}");
        assert!(out.stderr.contains("pushed back the state this run kept"), "{out}");
        assert!(
            env.kubeconfig().is_file(),
            "lokoctl's terraform apply wrote auth/kubeconfig again"
        );
    }
    no_key_in(needles, "the re-run", &out);
    let report = renew::json(&out);
    let results = renew::results(&report);
    let at = renew::PHASES.iter().position(|p| *p == phase).unwrap();
    for (name, result) in &results[..at] {
        assert_eq!(result, "already-done", "{name}, before {phase}: {report:#}");
    }
    for (name, result) in &results[at..] {
        assert!(["done", "already-done"].contains(&result.as_str()), "{name}: {report:#}");
    }
    if let Err(left) = aggregation::wait_all_gone(env, Duration::from_secs(15)) {
        aggregation::kill_leftovers(env);
        panic!("processes of the plugin left after the re-run: {left}");
    }
    if case == Case::Restart {
        assert_eq!(
            restarts(env),
            restarted,
            "the re-run restarted again what the killed run restarted (of {:?}), instead of waiting for those rollouts",
            renew::RESTARTED
        );
    }

    renew::add_keys(needles, env);
    renew::check_renewal_finished(env, needles);
    let new_ca = aggregation::fp(&aggregation::read(&ca));
    assert_eq!(watch.generations(), vec![old_ca, new_ca], "exactly one new kube CA certificate");
}

#[test]
fn renew_killed_in_certificates_control_plane_and_restart_completes_when_run_again() {
    let env = renew::renewal_cluster("renew-faults");
    let mut needles = Needles::new();
    renew::add_keys(&mut needles, &env);
    for (i, case) in [Case::Certificates, Case::ControlPlane, Case::Restart].into_iter().enumerate()
    {
        killed_and_rerun(&env, &mut needles, case, i > 0);
    }
    assert_eq!(renew::run_dirs(&env).len(), 3, "one run per renewal");
}
