//! `kubectl certrotate status` on asset dirs written on the fly: healthy, expired, expiring,
//! broken in each way an operator meets, and fleets. Cluster rows against a real control
//! plane are in `status_cluster.rs`.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::sample_assets::{DAY, SampleOptions, Window};
use common::{Run, row, run, sample, snapshot_tree};

fn status(assets: &str, home: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["status", "--assets-dir", assets];
    args.extend_from_slice(extra);
    run(&args, home)
}

/// The report of a single-cluster JSON run.
fn report(run: &Run) -> serde_json::Value {
    run.json()["reports"][0].clone()
}

const ALL_ROWS: &[&str] = &[
    "kube-ca",
    "apiserver",
    "admin",
    "kubelet",
    "admission-webhook",
    "service-account",
    "etcd-ca",
    "etcd-client-ca",
    "etcd-server-ca",
    "etcd-peer-ca",
    "etcd-client",
    "etcd-server",
    "etcd-peer",
    "aggregation-ca",
    "aggregation-client",
];

#[test]
fn healthy_asset_dir_is_all_ok_with_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = sample(&tmp.path().join("assets"), SampleOptions::default());
    let run = status(&assets, tmp.path(), &["-o", "json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let doc = run.json();
    assert_eq!(doc["apiVersion"], "certrotate.lokomotive.io/v1");
    assert_eq!(doc["kind"], "CertificateStatus");
    assert_eq!(doc["expiringWithinSeconds"], 30 * 86_400);
    let report = report(&run);
    let names: Vec<&str> = report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ALL_ROWS);
    for name in ALL_ROWS {
        let r = row(&report, name);
        assert_eq!(r["status"], "OK", "{r:#}");
        assert!(r["problems"].as_array().unwrap().is_empty(), "{r:#}");
    }
    let apiserver = row(&report, "apiserver");
    assert_eq!(apiserver["subject"], "CN=kube-apiserver, O=system:masters");
    assert_eq!(apiserver["issuer"], "CN=kubernetes-ca, O=bootkube");
    assert_eq!(apiserver["ca"], "kube-ca");
    assert_eq!(apiserver["chain"], "ok");
    assert_eq!(apiserver["key"], "ok");
    assert_eq!(apiserver["file"], "cluster-assets/tls/apiserver.crt");
    assert_eq!(apiserver["keyFile"], "cluster-assets/tls/apiserver.key");
    assert_eq!(row(&report, "kube-ca")["issuer"], "<self>");
    let webhook = row(&report, "admission-webhook");
    assert_eq!(webhook["file"], "cluster-assets/charts/lokomotive-system/lokomotive.yaml");
    assert_eq!(webhook["subject"], "CN=admission-webhook-server, O=kinvolk");
    let sa = row(&report, "service-account");
    assert_eq!(sa["key"], "ok");
    assert!(sa.get("notAfter").is_none(), "a bare key pair has no expiry: {sa:#}");
    let residual = apiserver["residualSeconds"].as_i64().unwrap();
    assert!((334 * DAY..=336 * DAY).contains(&residual), "{residual}");
    // No cluster could be reached, and the report says so instead of failing.
    assert_eq!(report["cluster"]["reached"], false);
    assert!(report["cluster"]["error"].as_str().unwrap().contains("no kubeconfig"));

    let table = status(&assets, tmp.path(), &[]);
    assert_eq!(table.code, 0, "{}", table.all());
    for name in ALL_ROWS {
        assert!(table.stdout.lines().any(|l| l.starts_with(name)), "{name}:\n{}", table.stdout);
    }
    assert!(table.stdout.contains("cluster: not reached"), "{}", table.stdout);
}

#[test]
fn expiring_certificate_gives_exit_3_and_window_is_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = SampleOptions::default().with("admin", Window::expiring());
    let assets = sample(&tmp.path().join("assets"), opts);
    let run = status(&assets, tmp.path(), &["-o", "json", "--local"]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert_eq!(row(&report(&run), "admin")["status"], "EXPIRING");
    assert_eq!(row(&report(&run), "kube-ca")["status"], "OK");
    assert!(report(&run)["cluster"].is_null(), "--local must not look at the cluster");

    let narrow = status(&assets, tmp.path(), &["-o", "json", "--expiring-within", "1d"]);
    assert_eq!(narrow.code, 0, "{}", narrow.all());
    let wide = status(&assets, tmp.path(), &["-o", "json", "--expiring-within", "9000h"]);
    assert_eq!(wide.code, 3, "{}", wide.all());
    assert_eq!(row(&report(&wide), "kube-ca")["status"], "EXPIRING");
}

#[test]
fn expired_and_not_yet_valid_give_exit_4() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = SampleOptions::default()
        .with("aggregation-ca", Window::expired())
        .with("admin", Window::expiring())
        .with("etcd-peer", Window::not_yet_valid());
    let assets = sample(&tmp.path().join("assets"), opts);
    let run = status(&assets, tmp.path(), &["-o", "json"]);
    assert_eq!(run.code, 4, "{}", run.all());
    let report = report(&run);
    assert_eq!(row(&report, "aggregation-ca")["status"], "EXPIRED");
    assert!(row(&report, "aggregation-ca")["residualSeconds"].as_i64().unwrap() < 0);
    assert_eq!(row(&report, "etcd-peer")["status"], "NOT-YET-VALID");
    assert_eq!(row(&report, "admin")["status"], "EXPIRING");
    // An expired CA still signed its client: the chain itself is intact.
    assert_eq!(row(&report, "aggregation-client")["chain"], "ok");

    let table = status(&assets, tmp.path(), &[]);
    assert_eq!(table.code, 4);
    let line = table.stdout.lines().find(|l| l.starts_with("aggregation-ca")).unwrap();
    assert!(line.contains("EXPIRED") && line.contains("-3d"), "{line}");
}

/// `notAfter=Nov 18 17:50:43 2027 GMT` as printed by the openssl CLI, in RFC 3339.
fn openssl_enddate(file: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(file)
        .output()
        .expect("run openssl (the openssl CLI is part of the test environment)");
    assert!(out.status.success(), "openssl failed on {}", file.display());
    let text = String::from_utf8(out.stdout).unwrap();
    let date = text.trim().strip_prefix("notAfter=").expect("notAfter= line").replace("  ", " ");
    let parsed = jiff::fmt::strtime::parse("%b %d %H:%M:%S %Y GMT", &date)
        .unwrap_or_else(|e| panic!("cannot parse {date:?}: {e}"));
    parsed.to_datetime().unwrap().to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp().to_string()
}

#[test]
fn not_after_equals_what_openssl_prints_for_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = SampleOptions::default()
        .with("aggregation-ca", Window::expired())
        .with("kubelet", Window::expiring());
    let dir = tmp.path().join("assets");
    let assets = sample(&dir, opts);
    let report = report(&status(&assets, tmp.path(), &["-o", "json"]));
    let mut compared = 0;
    for r in report["certificates"].as_array().unwrap() {
        let Some(not_after) = r["notAfter"].as_str() else { continue };
        let file = if r["name"] == "admission-webhook" {
            // The webhook certificate lives base64-encoded in the chart values.
            let yaml = fs::read_to_string(dir.join(r["file"].as_str().unwrap())).unwrap();
            let (cert, _) = certrotate::assets::parse_webhook_values(&yaml).unwrap();
            let path = tmp.path().join("webhook.crt");
            fs::write(&path, cert).unwrap();
            path
        } else {
            dir.join(r["file"].as_str().unwrap())
        };
        assert_eq!(not_after, openssl_enddate(&file), "{}", r["name"]);
        compared += 1;
    }
    assert_eq!(compared, ALL_ROWS.len() - 1, "every certificate row (all but the key pair)");
}

/// Runs status on a broken asset dir and checks it named the problem and changed nothing.
fn broken(name: &str, breakage: impl FnOnce(&Path)) -> (Run, serde_json::Value) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("assets");
    let assets = sample(&dir, SampleOptions::default());
    breakage(&dir.join("cluster-assets"));
    let before = snapshot_tree(&dir);
    let run = status(&assets, tmp.path(), &["-o", "json"]);
    assert_eq!(before, snapshot_tree(&dir), "{name}: status must change nothing");
    let table = status(&assets, tmp.path(), &[]);
    assert_eq!(table.code, run.code, "{name}: table and JSON agree on the exit code");
    assert!(!table.all().contains("PRIVATE KEY") && !run.all().contains("PRIVATE KEY"));
    let report = report(&run);
    (table, report)
}

#[test]
fn missing_certificate_file_is_a_missing_row() {
    let (table, report) =
        broken("missing", |a| fs::remove_file(a.join("tls/apiserver.crt")).unwrap());
    assert_eq!(table.code, 4, "{}", table.all());
    let r = row(&report, "apiserver");
    assert_eq!(r["status"], "MISSING");
    assert!(
        r["problems"][0].as_str().unwrap().contains("cluster-assets/tls/apiserver.crt is missing")
    );
    assert_eq!(row(&report, "admin")["status"], "OK", "other rows still reported");
    assert!(table.stdout.contains("apiserver: cluster-assets/tls/apiserver.crt is missing"));
}

#[test]
fn truncated_pem_is_invalid_and_names_the_file() {
    let (table, report) = broken("truncated", |a| {
        let path = a.join("tls/admin.crt");
        let pem = fs::read(&path).unwrap();
        fs::write(&path, &pem[..pem.len() / 2]).unwrap();
    });
    assert_eq!(table.code, 4);
    let r = row(&report, "admin");
    assert_eq!(r["status"], "INVALID");
    let problem = r["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("cluster-assets/tls/admin.crt") && problem.contains("truncated"),
        "{problem}"
    );
    assert!(
        table.stdout.contains("admin: cluster-assets/tls/admin.crt: truncated PEM"),
        "{}",
        table.stdout
    );
}

#[test]
fn corrupt_pem_is_invalid() {
    let (table, report) = broken("corrupt", |a| {
        let path = a.join("tls/kubelet.crt");
        let pem = fs::read_to_string(&path).unwrap();
        // Flip characters in the middle of the base64 body.
        let mid = pem.len() / 2;
        let corrupted = format!("{}AAAAAAAAAAAAAAAA{}", &pem[..mid], &pem[mid + 16..]);
        fs::write(&path, corrupted).unwrap();
    });
    assert_eq!(table.code, 4);
    let r = row(&report, "kubelet");
    assert_eq!(r["status"], "INVALID");
    assert!(r["problems"][0].as_str().unwrap().contains("cluster-assets/tls/kubelet.crt"));
}

#[test]
fn key_that_does_not_match_is_invalid() {
    let (table, report) = broken("key mismatch", |a| {
        fs::copy(a.join("tls/admin.key"), a.join("tls/apiserver.key")).unwrap();
    });
    assert_eq!(table.code, 4);
    let r = row(&report, "apiserver");
    assert_eq!(r["status"], "INVALID");
    assert_eq!(r["key"], "fail");
    let problem = r["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("does not match the certificate cluster-assets/tls/apiserver.crt"),
        "{problem}"
    );
}

#[test]
fn service_account_halves_that_do_not_match_are_invalid() {
    let (table, report) = broken("sa mismatch", |a| {
        let other = openssl::rsa::Rsa::generate(2048).unwrap();
        let public = openssl::pkey::PKey::from_rsa(other).unwrap().public_key_to_pem().unwrap();
        fs::write(a.join("tls/service-account.pub"), public).unwrap();
    });
    assert_eq!(table.code, 4);
    let r = row(&report, "service-account");
    assert_eq!((r["status"].as_str(), r["key"].as_str()), (Some("INVALID"), Some("fail")));
}

#[test]
fn certificate_not_signed_by_its_ca_is_invalid() {
    let other = tempfile::tempdir().unwrap();
    let foreign = other.path().join("assets");
    sample(&foreign, SampleOptions { fresh_keys: true, ..Default::default() });
    let (table, report) = broken("foreign issuer", |a| {
        // A certificate and key from another cluster's CA: the pair matches, the chain does not.
        let src = foreign.join("cluster-assets/tls");
        fs::copy(src.join("etcd-client.crt"), a.join("tls/etcd-client.crt")).unwrap();
        fs::copy(src.join("etcd-client.key"), a.join("tls/etcd-client.key")).unwrap();
    });
    assert_eq!(table.code, 4);
    let r = row(&report, "etcd-client");
    assert_eq!(
        (r["status"].as_str(), r["chain"].as_str(), r["key"].as_str()),
        (Some("INVALID"), Some("fail"), Some("ok"))
    );
    let problem = r["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("not signed by etcd-ca (cluster-assets/tls/etcd-ca.crt)"),
        "{problem}"
    );
}

#[test]
fn etcd_ca_copy_that_diverged_is_invalid() {
    let other = tempfile::tempdir().unwrap();
    sample(&other.path().join("a"), SampleOptions::default());
    let (table, report) = broken("diverged copy", |a| {
        fs::copy(
            other.path().join("a/cluster-assets/tls/etcd-ca.crt"),
            a.join("tls/etcd/server-ca.crt"),
        )
        .unwrap();
    });
    assert_eq!(table.code, 4);
    let r = row(&report, "etcd-server-ca");
    assert_eq!((r["status"].as_str(), r["chain"].as_str()), (Some("INVALID"), Some("fail")));
    assert!(r["problems"][0].as_str().unwrap().contains("copy of it"));
}

#[test]
fn unreadable_file_is_invalid_with_the_reason() {
    // Tests run as root here, so permissions cannot make a file unreadable: a directory in
    // place of the file fails the read the same way.
    let (table, report) = broken("unreadable", |a| {
        let path = a.join("tls/etcd/peer.key");
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
    });
    assert_eq!(table.code, 4);
    let r = row(&report, "etcd-peer");
    assert_eq!(r["status"], "INVALID");
    let problem = r["problems"][0].as_str().unwrap();
    assert!(problem.starts_with("cannot read cluster-assets/tls/etcd/peer.key:"), "{problem}");
}

#[test]
fn lokomotive_yaml_without_webhook_values_is_invalid() {
    let (table, report) = broken("no webhook values", |a| {
        fs::write(a.join("charts/lokomotive-system/lokomotive.yaml"), "webhook:\n  other: 1\n")
            .unwrap();
    });
    assert_eq!(table.code, 4);
    let r = row(&report, "admission-webhook");
    assert_eq!(r["status"], "INVALID");
    let problem = r["problems"][0].as_str().unwrap();
    assert!(problem.contains("lokomotive.yaml: has no webhook.servingCert value"), "{problem}");
    assert!(problem.contains("local_file.lokomotive"), "says how to re-create it: {problem}");
}

#[test]
fn webhook_key_never_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("assets");
    let assets = sample(&dir, SampleOptions::default());
    let yaml =
        fs::read_to_string(dir.join("cluster-assets/charts/lokomotive-system/lokomotive.yaml"))
            .unwrap();
    let key_b64 = yaml.lines().find_map(|l| l.trim().strip_prefix("servingKey: ")).unwrap();
    for extra in [&["-o", "json"][..], &[][..], &["-vv"][..]] {
        let run = status(&assets, tmp.path(), extra);
        let all = run.all();
        assert!(!all.contains(&key_b64[..40]) && !all.contains("PRIVATE KEY"), "{extra:?}");
    }
}

#[test]
fn missing_or_wrong_asset_dir_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let run = status(missing.to_str().unwrap(), tmp.path(), &[]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("does not exist") && run.stderr.contains("--assets-dir"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
    assert!(!missing.exists(), "nothing created");

    let not_assets = tmp.path().join("terraform-only");
    fs::create_dir_all(not_assets.join("terraform")).unwrap();
    let run = status(not_assets.to_str().unwrap(), tmp.path(), &[]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("is not a Lokomotive asset dir: it has no cluster-assets/ folder"),
        "{}",
        run.stderr
    );

    // ASSET_DIR is honoured when --assets-dir is absent.
    let good = tmp.path().join("good");
    sample(&good, SampleOptions::default());
    let run =
        common::run_with_env(&["status"], tmp.path(), &[("ASSET_DIR", good.to_str().unwrap())]);
    assert_eq!(run.code, 0, "{}", run.all());
}

#[test]
fn aggregation_disabled_leaves_its_rows_out() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = SampleOptions { aggregation: false, ..Default::default() };
    let assets = sample(&tmp.path().join("assets"), opts);
    let run = status(&assets, tmp.path(), &["-o", "json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let report = report(&run);
    assert_eq!(report["aggregationEnabled"], false);
    assert!(
        report["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !r["name"].as_str().unwrap().starts_with("aggregation"))
    );
    let table = status(&assets, tmp.path(), &[]);
    assert!(table.stdout.contains("aggregation: not enabled"));
}

#[test]
fn fleet_reports_each_cluster_and_exits_with_the_worst() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = tmp.path().join("fleet");
    sample(&fleet.join("a/assets"), SampleOptions::default());
    sample(&fleet.join("b/assets"), SampleOptions::default().with("admin", Window::expiring()));
    sample(&fleet.join("c/assets"), SampleOptions::default().with("kube-ca", Window::expired()));
    let glob = format!("{}/*/assets", fleet.display());

    let run = run(&["status", "--assets-dir", &glob, "-o", "json"], tmp.path());
    assert_eq!(run.code, 4, "{}", run.all());
    let doc = run.json();
    let dirs: Vec<String> = doc["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["assetsDir"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dirs.len(), 3);
    assert!(dirs[0].ends_with("a/assets") && dirs[2].ends_with("c/assets"), "{dirs:?}");
    let codes: Vec<i64> = doc["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["exitCode"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [0, 3, 4]);
    assert_eq!(doc["summary"]["clusters"], 3);
    assert_eq!(doc["summary"]["expired"], 1);
    assert_eq!(doc["summary"]["expiring"], 1);
    assert_eq!(doc["summary"]["exitCode"], 4);

    // Repeated flags and a missing member: the others are still reported.
    let a = format!("{}/a/assets", fleet.display());
    let b = format!("{}/b/assets", fleet.display());
    let gone = format!("{}/gone/assets", fleet.display());
    let run = common::run(
        &["status", "--assets-dir", &a, "--assets-dir", &gone, "--assets-dir", &b],
        tmp.path(),
    );
    assert_eq!(
        run.code,
        1,
        "an unassessable cluster outranks one that only expires soon:\n{}",
        run.all()
    );
    assert!(
        run.stdout.contains(&format!("== {gone} ==")) && run.stdout.contains("does not exist"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("SUMMARY: 3 clusters, 1 errors"), "{}", run.stdout);
    let b_section = run.stdout.split(&format!("== {b} ==")).nth(1).expect("b section");
    assert!(b_section.contains("EXPIRING"));

    let run = common::run(
        &["status", "--assets-dir", &format!("{}/*/nothing", fleet.display())],
        tmp.path(),
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no asset dir matches"), "{}", run.stderr);

    let run = common::run(
        &["status", "--assets-dir", &a, "--assets-dir", &b, "--kubeconfig", "k"],
        tmp.path(),
    );
    assert_eq!(run.code, 2, "--kubeconfig with a fleet is a usage error: {}", run.all());
}

#[test]
fn unreachable_cluster_reports_local_rows_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    let opts =
        SampleOptions { api_server: Some("https://127.0.0.1:9".into()), ..Default::default() }
            .with("aggregation-client", Window::expired());
    let assets = sample(&tmp.path().join("assets"), opts);
    let run = status(&assets, tmp.path(), &["-o", "json", "--request-timeout", "5s"]);
    assert_eq!(run.code, 4, "exit code from the local rows: {}", run.all());
    let report = report(&run);
    assert_eq!(report["cluster"]["reached"], false);
    assert_eq!(report["cluster"]["server"], "https://127.0.0.1:9");
    assert!(
        report["cluster"]["kubeconfig"].as_str().unwrap().contains("the asset dir's kubeconfig")
    );
    let table = status(&assets, tmp.path(), &["--request-timeout", "5s"]);
    assert!(table.stdout.contains("cluster: https://127.0.0.1:9"), "{}", table.stdout);
    assert!(
        table.stdout.contains("not reached")
            && table.stdout.contains("only the asset dir was checked")
    );
}

#[test]
fn kubeconfig_of_another_cluster_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = sample(&tmp.path().join("assets"), SampleOptions::default());
    let other = tmp.path().join("other");
    // Keys of its own: a CA with the same subject and key is the same CA (renew re-issues it so).
    let opts = SampleOptions {
        api_server: Some("https://127.0.0.1:9".into()),
        fresh_keys: true,
        ..Default::default()
    };
    sample(&other, opts);
    let kubeconfig = other.join("cluster-assets/auth/kubeconfig");
    let run =
        status(&assets, tmp.path(), &["-o", "json", "--kubeconfig", kubeconfig.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.all());
    let error = report(&run)["cluster"]["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("does not trust") && error.contains("points at another cluster"),
        "{error}"
    );
    assert!(error.contains("--kubeconfig"), "says how to point at the right one: {error}");
}
