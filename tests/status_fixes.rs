//! What `kubectl certrotate status` tells an operator to run: the fix of every row that is not
//! OK (table and JSON), the one next command the table ends with, and a rotation left in
//! progress, read from its journal, which comes first.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use certrotate::rotation::journal::{Journal, PhaseRecord, RunState};
use certrotate::rotation::phase::{PhaseOutcome, RunPath};
use common::sample_assets::{SampleOptions, Window};
use common::{BIN, Run, row, run, sample};

fn json(assets: &str, home: &Path) -> serde_json::Value {
    let out = run(&["status", "--assets-dir", assets, "-o", "json", "--local"], home);
    out.json()
}

fn fix(report: &serde_json::Value, name: &str) -> String {
    row(report, name)["fix"].as_str().unwrap_or_else(|| panic!("{name} has no fix")).to_string()
}

fn last_line(run: &Run) -> &str {
    run.stdout.lines().last().unwrap_or_default()
}

#[test]
fn every_row_that_is_not_ok_names_its_fix_and_the_table_ends_with_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = SampleOptions::default()
        .with("aggregation-ca", Window::expired())
        .with("admission-webhook", Window::expiring())
        .with("admin", Window::expiring())
        .with("etcd-peer", Window::not_yet_valid());
    let assets = sample(&tmp.path().join("assets"), opts);
    fs::remove_file(tmp.path().join("assets/cluster-assets/tls/apiserver.crt")).unwrap();
    let doc = json(&assets, tmp.path());
    let report = &doc["reports"][0];

    assert_eq!(
        fix(report, "aggregation-ca"),
        format!("kubectl certrotate aggregation --assets-dir {assets}")
    );
    assert_eq!(
        fix(report, "admission-webhook"),
        format!("kubectl certrotate webhook --assets-dir {assets}")
    );
    // Every certificate but the aggregation and webhook ones: renew.
    assert_eq!(fix(report, "admin"), format!("kubectl certrotate renew --assets-dir {assets}"));
    assert!(fix(report, "etcd-peer").contains("check the clocks"));
    let missing = fix(report, "apiserver");
    assert!(
        missing.starts_with(&format!("in {assets}/terraform: terraform apply "))
            && missing.contains("-target='MODULE.local_file.apiserver-key'")
            && missing.contains("-target='MODULE.local_file.apiserver-crt'"),
        "{missing}"
    );
    for name in ["kube-ca", "kubelet", "service-account", "etcd-ca", "aggregation-client"] {
        assert!(row(report, name)["fix"].is_null(), "{name} is OK: no fix");
    }
    // The worst first: a missing file (MISSING) before an expired CA (EXPIRED).
    assert_eq!(report["next"].as_str(), Some(missing.as_str()));
    assert_eq!(doc["next"].as_str(), Some(missing.as_str()));

    let table = run(&["status", "--assets-dir", &assets, "--local"], tmp.path());
    assert_eq!(table.code, 4);
    for name in ["aggregation-ca", "admission-webhook", "admin", "etcd-peer", "apiserver"] {
        let line = format!("{name}: fix: {}", fix(report, name));
        assert!(table.stdout.lines().any(|l| l == line), "{line}\n{}", table.stdout);
    }
    assert_eq!(last_line(&table), format!("next: {missing}"));

    // Run from inside the asset dir, the commands need no --assets-dir.
    let out = Command::new(BIN)
        .args(["status", "--local", "-o", "json"])
        .current_dir(&assets)
        .env_remove("ASSET_DIR")
        .env_remove("KUBECONFIG")
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    let here: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(fix(&here["reports"][0], "aggregation-ca"), "kubectl certrotate aggregation");
}

#[test]
fn all_ok_says_there_is_nothing_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = sample(&tmp.path().join("assets"), SampleOptions::default());
    let doc = json(&assets, tmp.path());
    assert!(doc["next"].is_null() && doc["reports"][0]["next"].is_null(), "{doc:#}");
    let table = run(&["status", "--assets-dir", &assets, "--local"], tmp.path());
    assert_eq!(table.code, 0);
    assert_eq!(last_line(&table), "next: nothing to do, every certificate is OK");
}

#[test]
fn a_certificate_whose_ca_changed_is_re_issued_the_safe_way() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("foreign");
    sample(&foreign, SampleOptions { fresh_keys: true, ..Default::default() });
    let assets = sample(&tmp.path().join("assets"), SampleOptions::default());
    let tls = tmp.path().join("assets/cluster-assets/tls");
    // A new aggregation CA, as a CA rotation done by hand leaves it: the client certificate
    // no longer chains to it, and only the rotation re-issues it in a safe order.
    for file in ["aggregation-ca.crt", "aggregation-ca.key"] {
        fs::copy(foreign.join("cluster-assets/tls").join(file), tls.join(file)).unwrap();
    }
    // An etcd client certificate of another CA: re-issue it from its own CA.
    for file in ["etcd-client.crt", "etcd-client.key"] {
        fs::copy(foreign.join("cluster-assets/tls").join(file), tls.join(file)).unwrap();
    }
    let report = &json(&assets, tmp.path())["reports"][0];
    assert_eq!(row(report, "aggregation-client")["chain"], "fail");
    assert_eq!(
        fix(report, "aggregation-client"),
        format!("kubectl certrotate aggregation --assets-dir {assets}")
    );
    let etcd = fix(report, "etcd-client");
    assert!(
        etcd.contains("terraform taint MODULE.tls_locally_signed_cert.client && terraform apply")
            && etcd.contains("-target='MODULE.local_file.etcd_client_crt'"),
        "{etcd}"
    );
}

#[test]
fn a_fleet_ends_with_the_most_urgent_command_of_all() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = tmp.path().join("fleet");
    sample(&fleet.join("a/assets"), SampleOptions::default());
    sample(&fleet.join("b/assets"), SampleOptions::default().with("admin", Window::expiring()));
    sample(
        &fleet.join("c/assets"),
        SampleOptions::default().with("admission-webhook", Window::expired()),
    );
    let glob = format!("{}/*/assets", fleet.display());
    let c = format!("{}/c/assets", fleet.display());
    let doc = run(&["status", "--assets-dir", &glob, "--local", "-o", "json"], tmp.path()).json();
    let expected = format!("kubectl certrotate webhook --assets-dir {c}");
    assert_eq!(doc["next"].as_str(), Some(expected.as_str()));
    assert!(doc["reports"][1]["next"].as_str().unwrap().starts_with("kubectl certrotate renew"));
    let table = run(&["status", "--assets-dir", &glob, "--local"], tmp.path());
    assert_eq!(last_line(&table), format!("next: {expected}"));
}

/// Writes a journal of `rotation` as the rotation engine does (its own types, serialised).
fn journal(
    assets: &str,
    rotation: &str,
    run: &str,
    state: RunState,
    done: &[&str],
    finished_at: Option<&str>,
) {
    let dir = Path::new(assets).join("certrotate").join(run);
    fs::create_dir_all(&dir).unwrap();
    let phase = |name: &str| PhaseRecord {
        name: name.into(),
        started_at: "2026-11-20T08:00:00Z".into(),
        finished_at: Some("2026-11-20T08:00:05Z".into()),
        outcome: PhaseOutcome::Done,
        message: None,
    };
    let stamp = &run[rotation.len() + 1..];
    let started = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    );
    let journal = Journal {
        api_version: "certrotate.lokomotive.io/v1".into(),
        kind: "RotationJournal".into(),
        rotation: rotation.into(),
        run: run.into(),
        path: RunPath::NotExpired,
        state,
        assets_dir: assets.into(),
        started_at: started,
        finished_at: finished_at.map(str::to_string),
        fingerprints: Default::default(),
        origins: Default::default(),
        phases: done.iter().map(|p| phase(p)).collect(),
        events: Vec::new(),
    };
    fs::write(dir.join("journal.json"), serde_json::to_vec_pretty(&journal).unwrap()).unwrap();
}

#[test]
fn a_rotation_in_progress_is_resumed_first_and_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = SampleOptions::default().with("aggregation-ca", Window::expiring());
    let assets = sample(&tmp.path().join("assets"), opts);
    fs::remove_file(tmp.path().join("assets/cluster-assets/tls/kubelet.crt")).unwrap();
    let first = "aggregation-20251120T080000Z";
    let second = "aggregation-20261120T080000Z";
    let finished = Some("2025-11-20T08:30:00Z");
    journal(&assets, "aggregation", first, RunState::Finished, &["backup", "ca"], finished);
    journal(&assets, "aggregation", second, RunState::InProgress, &["backup", "ca"], None);

    let doc = json(&assets, tmp.path());
    let report = &doc["reports"][0];
    let resume = format!(
        "resume the rotation in progress: kubectl certrotate aggregation --assets-dir {assets} \
         (run {second}, done up to phase ca)"
    );
    assert_eq!(fix(report, "aggregation-ca"), resume);
    // A missing file is worse than an expiring CA, but the half-done rotation comes first.
    assert_eq!(row(report, "kubelet")["status"], "MISSING");
    assert_eq!(report["next"].as_str(), Some(resume.as_str()));
    let rotation = &report["rotations"][0];
    assert_eq!(rotation["rotation"], "aggregation");
    assert_eq!(rotation["run"], second);
    assert_eq!(rotation["state"], "in-progress");
    assert_eq!(rotation["phasesDone"], serde_json::json!(["backup", "ca"]));
    assert_eq!(rotation["lastFinishedAt"], "2025-11-20T08:30:00Z");

    let table = run(&["status", "--assets-dir", &assets, "--local"], tmp.path());
    assert!(
        table.stdout.contains(&format!(
            "rotation aggregation: run {second} IN PROGRESS since 2026-11-20T08:00:00Z (phases \
             done: backup, ca)"
        )),
        "{}",
        table.stdout
    );
    assert_eq!(last_line(&table), format!("next: {resume}"));

    let metrics =
        run(&["status", "--assets-dir", &assets, "--local", "-o", "prometheus"], tmp.path());
    let lines: Vec<&str> = metrics.stdout.lines().collect();
    let sample = |name: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("no {name} in\n{}", metrics.stdout))
            .to_string()
    };
    let labels = format!("assets_dir=\"{assets}\",rotation=\"aggregation\"");
    assert_eq!(
        sample("certrotate_rotation_in_progress"),
        format!("certrotate_rotation_in_progress{{{labels},run=\"{second}\"}} 1")
    );
    let started = "2026-11-20T08:00:00Z".parse::<jiff::Timestamp>().unwrap().as_second();
    assert_eq!(
        sample("certrotate_rotation_started_timestamp_seconds"),
        format!(
            "certrotate_rotation_started_timestamp_seconds{{{labels},run=\"{second}\"}} {started}"
        )
    );
    let finished = "2025-11-20T08:30:00Z".parse::<jiff::Timestamp>().unwrap().as_second();
    assert_eq!(
        sample("certrotate_last_rotation_timestamp_seconds"),
        format!("certrotate_last_rotation_timestamp_seconds{{{labels}}} {finished}")
    );
}

#[test]
fn a_rotation_in_progress_is_next_even_when_every_row_is_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = sample(&tmp.path().join("assets"), SampleOptions::default());
    let run = "webhook-20261120T080000Z";
    journal(&assets, "webhook", run, RunState::InProgress, &["backup", "unhook"], None);
    let doc = json(&assets, tmp.path());
    let resume = format!(
        "resume the rotation in progress: kubectl certrotate webhook --assets-dir {assets} (run \
         {run}, done up to phase unhook)"
    );
    assert!(
        doc["reports"][0]["certificates"].as_array().unwrap().iter().all(|r| r["fix"].is_null())
    );
    assert_eq!(doc["next"].as_str(), Some(resume.as_str()));
    let table = common::run(&["status", "--assets-dir", &assets, "--local"], tmp.path());
    assert_eq!(table.code, 0, "every certificate is fine: {}", table.all());
    assert_eq!(last_line(&table), format!("next: {resume}"));
}

#[test]
fn an_unreadable_journal_is_reported_and_status_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = sample(&tmp.path().join("assets"), SampleOptions::default());
    let run = Path::new(&assets).join("certrotate/aggregation-20261120T080000Z");
    fs::create_dir_all(&run).unwrap();
    fs::write(run.join("journal.json"), "{ cut off").unwrap();
    let doc = json(&assets, tmp.path());
    let rotation = &doc["reports"][0]["rotations"][0];
    assert_eq!(rotation["run"], "aggregation-20261120T080000Z");
    assert!(rotation["state"].is_null());
    let error = rotation["error"].as_str().unwrap();
    assert!(error.contains("is not a journal this version reads"), "{error}");
    let table = common::run(&["status", "--assets-dir", &assets, "--local"], tmp.path());
    assert_eq!(table.code, 0, "{}", table.all());
    assert!(
        table
            .stdout
            .contains("rotation aggregation: run aggregation-20261120T080000Z: rotation journal"),
        "{}",
        table.stdout
    );
}
