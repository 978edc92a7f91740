//! No private key byte reaches the operator's screen: files that hold a key (the webhook's
//! chart values, a kubeconfig with `client-key-data`) are damaged the ways an editor or a full
//! disk damages them, and no message — table, JSON, stderr, at `-vvv` — quotes any part of the
//! key. Messages name the file, the line and the column instead.

mod common;

use std::fs;
use std::path::Path;

use base64::Engine as _;
use common::sample_assets::{SampleOptions, write_sample_assets};
use common::{Run, run, snapshot_tree};

const VALUES: &str = "cluster-assets/charts/lokomotive-system/lokomotive.yaml";
const KUBECONFIG: &str = "cluster-assets/auth/kubeconfig";

/// Every 16-character run of a key that no other key shares: of the base64 value as the file
/// holds it (base64 of the PEM text) and of the PEM's own base64 lines, without the parts
/// that encode the `-----BEGIN/END PRIVATE KEY-----` lines.
fn secret_runs(value: &str) -> Vec<String> {
    let pem = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(value).unwrap())
        .unwrap();
    let lines: Vec<&str> = pem.lines().collect();
    assert!(lines[0].starts_with("-----BEGIN") && lines.last().unwrap().starts_with("-----END"));
    // Base64 turns 3 bytes into 4 characters: skip whole groups that touch the armour lines.
    let header = lines[0].len() + 1;
    let footer = lines.last().unwrap().len() + 1;
    let start = (header / 3 + 1) * 4;
    let end = value.len() - (footer / 3 + 2) * 4;
    let mut sources = vec![&value[start..end]];
    sources.extend(&lines[1..lines.len() - 1]);
    let mut runs = Vec::new();
    for source in sources {
        for i in 0..=source.len().saturating_sub(16) {
            runs.push(source[i..i + 16].to_string());
        }
    }
    assert!(runs.len() > 1000, "a 2048-bit key has a long body");
    runs
}

/// The value of `key:` on its line in a YAML file.
fn yaml_value(file: &Path, key: &str) -> String {
    let text = fs::read_to_string(file).unwrap();
    let prefix = format!("{key}: ");
    text.lines().find_map(|l| l.trim().strip_prefix(&prefix)).unwrap().to_string()
}

/// Damages the line of `key:` as `case` says (which may make it several lines).
fn damage_line(file: &Path, key: &str, case: &str) {
    let text = fs::read_to_string(file).unwrap();
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with(&format!("{key}: ")) {
                found = true;
                damaged(case, line)
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(found, "no {key} line in {}", file.display());
    fs::write(file, out.join("\n") + "\n").unwrap();
}

/// The ways a long base64 line gets damaged, by an editor or a full disk.
const DAMAGES: &[&str] = &[
    "stray characters",
    "line cut in two",
    "tab in the indentation",
    "tab in the value",
    "not base64",
];

/// `line` damaged the way `case` says.
fn damaged(case: &str, line: &str) -> String {
    let (head, tail) = line.split_at(line.len() / 2);
    match case {
        "stray characters" => format!("{head}\": [{tail}"),
        "line cut in two" => format!("{head}\n{tail}"),
        "tab in the indentation" => format!("\t{}", line.trim_start()),
        "tab in the value" => format!("{head}\t{tail}"),
        "not base64" => format!("{head}*{}", &tail[1..]),
        _ => unreachable!("{case}"),
    }
}

/// Fails if any run of the key appears in what the operator sees.
fn assert_no_key(runs: &[String], case: &str, run: &Run) {
    let all = run.all();
    if let Some(leak) = runs.iter().find(|r| all.contains(r.as_str())) {
        let lines: Vec<&str> = all.lines().filter(|l| l.contains(leak.as_str())).collect();
        panic!("{case}: the output quotes the private key ({leak:?}):\n{}", lines.join("\n"));
    }
}

#[test]
fn damaged_webhook_values_never_quote_the_key() {
    for &case in DAMAGES {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("assets");
        write_sample_assets(&dir, &SampleOptions::default()).unwrap();
        let values = dir.join(VALUES);
        let runs = secret_runs(&yaml_value(&values, "servingKey"));
        damage_line(&values, "servingKey", case);
        let before = snapshot_tree(&dir);
        let assets = dir.to_str().unwrap();
        let mut problems = Vec::new();
        for output in [&["-o", "json"][..], &[][..]] {
            let mut args = vec!["status", "--assets-dir", assets, "-vvv"];
            args.extend_from_slice(output);
            let run = run(&args, tmp.path());
            assert_no_key(&runs, case, &run);
            assert_eq!(run.code, 4, "{case}: the webhook row is invalid:\n{}", run.all());
            problems.push(run.stdout);
        }
        assert_eq!(before, snapshot_tree(&dir), "{case}: status changed nothing");
        let doc: serde_json::Value = serde_json::from_str(&problems[0]).unwrap();
        let row = doc["reports"][0]["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "admission-webhook")
            .unwrap()
            .clone();
        assert_eq!(row["status"], "INVALID", "{case}: {row:#}");
        let problem = row["problems"][0].as_str().unwrap();
        assert!(problem.contains(VALUES), "{case}: names the file: {problem}");
        assert!(problem.contains("terraform apply"), "{case}: says what to do: {problem}");
        assert!(
            problem.contains("line ") && problem.contains("column "),
            "{case}: says where: {problem}"
        );
        // The table shows the same problem.
        assert!(problems[1].contains(problem), "{case}: {}", problems[1]);
    }
}

#[test]
fn damaged_kubeconfig_never_quotes_the_client_key() {
    for &case in DAMAGES {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("assets");
        // Nothing listens on port 9: the kubeconfig is read, the cluster never reached.
        let opts =
            SampleOptions { api_server: Some("https://127.0.0.1:9".into()), ..Default::default() };
        write_sample_assets(&dir, &opts).unwrap();
        let kubeconfig = dir.join(KUBECONFIG);
        let runs = secret_runs(&yaml_value(&kubeconfig, "client-key-data"));
        damage_line(&kubeconfig, "client-key-data", case);
        let before = snapshot_tree(&dir);
        let assets = dir.to_str().unwrap();
        let status = run(&["status", "--assets-dir", assets, "-vvv", "-o", "json"], tmp.path());
        assert_no_key(&runs, case, &status);
        let doc = status.json();
        let error = doc["reports"][0]["cluster"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(&kubeconfig.display().to_string()), "{case}: {error}");
        if ["tab in the value", "not base64"].contains(&case) {
            // Valid YAML; the value fails only as base64, which kube decodes without a position.
            assert!(error.contains("client-key-data is not valid base64"), "{case}: {error}");
        } else {
            assert!(error.contains("line ") && error.contains("column "), "{case}: {error}");
        }
        assert!(error.contains("--kubeconfig"), "{case}: says what to do: {error}");
        let table = run(&["status", "--assets-dir", assets, "-vvv"], tmp.path());
        assert_no_key(&runs, case, &table);
        for args in [&["extension-servers"][..], &["extension-servers", "--restart", "-y"][..]] {
            let mut args = args.to_vec();
            args.extend(["--assets-dir", assets, "-vvv", "-o", "json"]);
            let listed = run(&args, tmp.path());
            assert_no_key(&runs, case, &listed);
            assert_eq!(listed.code, 1, "{case}: {}", listed.all());
            assert!(listed.stderr.contains(error), "{case}: {}", listed.stderr);
        }
        assert_eq!(before, snapshot_tree(&dir), "{case}: nothing changed");
    }
}
