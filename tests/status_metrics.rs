//! `kubectl certrotate status -o prometheus` and `--textfile`, checked by the real consumers:
//! Debian's `promtool check metrics`, and a real `prometheus-node-exporter` whose textfile
//! collector serves the file and is scraped over loopback. Cluster rows against a real control
//! plane are in `status_cluster.rs`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sample_assets::{SampleOptions, Window};
use common::{Run, row, run, sample};

/// A program of the test environment (Debian packages that scripts/provision.sh installs).
fn program(name: &str, package: &str) -> PathBuf {
    which::which(name).unwrap_or_else(|_| {
        panic!(
            "{name} not found on PATH: run scripts/provision.sh, which installs Debian's \
             {package} package"
        )
    })
}

/// The asset dir most tests use: one certificate in each state and a missing file.
fn troubled(tmp: &Path) -> String {
    let opts = SampleOptions::default()
        .with("aggregation-ca", Window::expired())
        .with("admin", Window::expiring())
        .with("etcd-peer", Window::not_yet_valid());
    let assets = sample(&tmp.join("assets"), opts);
    fs::remove_file(tmp.join("assets/cluster-assets/tls/apiserver.crt")).unwrap();
    assets
}

/// One sample of an exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format (comments skipped, label values unescaped).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("name{labels} value");
            let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
            let mut labels = BTreeMap::new();
            let mut chars = rest.chars().peekable();
            loop {
                let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                let key = key.trim_start_matches(',').to_string();
                if key.is_empty() || key == "}" {
                    break;
                }
                assert_eq!(chars.next(), Some('"'), "{line}");
                let mut value = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some(other) => value.push(other),
                            None => panic!("{line}"),
                        },
                        '"' => break,
                        other => value.push(other),
                    }
                }
                labels.insert(key, value);
            }
            Sample { name: name.to_string(), labels, value: value.parse().expect(line) }
        })
        .collect()
}

/// The samples of `name` whose labels include every pair of `with`.
fn find<'a>(samples: &'a [Sample], name: &str, with: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| with.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect()
}

fn one<'a>(samples: &'a [Sample], name: &str, with: &[(&str, &str)]) -> &'a Sample {
    match find(samples, name, with).as_slice() {
        [sample] => sample,
        other => panic!("expected one {name} with {with:?}, found {}: {other:#?}", other.len()),
    }
}

/// `promtool check metrics` on `text`: must accept it without a single lint remark.
fn promtool_accepts(text: &str) {
    let mut child = Command::new(program("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}\n{text}");
}

fn prometheus(assets: &str, home: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["status", "--assets-dir", assets, "-o", "prometheus"];
    args.extend_from_slice(extra);
    run(&args, home)
}

fn unix(rfc3339: &serde_json::Value) -> f64 {
    let t: jiff::Timestamp = rfc3339.as_str().unwrap().parse().unwrap();
    t.as_second() as f64
}

#[test]
fn exposition_passes_promtool_and_uses_the_exporters_names() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = troubled(tmp.path());
    let metrics = prometheus(&assets, tmp.path(), &[]);
    assert_eq!(metrics.code, 4, "exits as status does: {}", metrics.all());
    promtool_accepts(&metrics.stdout);
    let samples = parse(&metrics.stdout);
    let json = run(&["status", "--assets-dir", &assets, "-o", "json"], tmp.path()).json();
    let report = &json["reports"][0];

    let admin = row(report, "admin");
    let path = format!("{assets}/cluster-assets/tls/admin.crt");
    let at = [("credential", "admin"), ("filepath", path.as_str())];
    let not_after = one(&samples, "x509_cert_not_after", &at);
    assert_eq!(not_after.value, unix(&admin["notAfter"]));
    assert_eq!(one(&samples, "x509_cert_not_before", &at).value, unix(&admin["notBefore"]));
    for (label, value) in [
        ("assets_dir", assets.as_str()),
        ("filename", "admin.crt"),
        ("subject_CN", "kubernetes-admin"),
        ("subject_O", "system:masters"),
        ("issuer_CN", "kubernetes-ca"),
        ("issuer_O", "bootkube"),
    ] {
        assert_eq!(not_after.labels.get(label).map(String::as_str), Some(value), "{not_after:?}");
    }
    let serial = not_after.labels["serial_number"].clone();
    let hex = admin["serial"].as_str().unwrap();
    let decimal = openssl::bn::BigNum::from_hex_str(hex).unwrap().to_dec_str().unwrap();
    assert_eq!(serial, decimal.to_string(), "decimal, as the exporter labels it");
    assert_eq!(one(&samples, "x509_cert_expired", &at).value, 0.0);
    assert_eq!(one(&samples, "x509_cert_error", &at).value, 0.0);

    let expired = [("credential", "aggregation-ca")];
    assert_eq!(one(&samples, "x509_cert_expired", &expired).value, 1.0);
    // The exporter's alert expression sees it.
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(one(&samples, "x509_cert_not_after", &expired).value < now);

    // A missing file is an error series naming it, with no dates.
    let missing = [("credential", "apiserver")];
    assert_eq!(one(&samples, "x509_cert_error", &missing).value, 1.0);
    assert!(find(&samples, "x509_cert_not_after", &missing).is_empty());
    let missing_file = format!("{assets}/cluster-assets/tls/apiserver.crt");
    assert_eq!(one(&samples, "x509_cert_error", &missing).labels["filepath"], missing_file);

    // The service-account key pair is no certificate: status, key match, no x509 series.
    let sa = [("credential", "service-account")];
    assert!(find(&samples, "x509_cert_not_after", &sa).is_empty());
    assert!(find(&samples, "x509_cert_error", &sa).is_empty());
    assert_eq!(one(&samples, "certrotate_key_match", &sa).value, 1.0);
    assert_eq!(one(&samples, "certrotate_chain_valid", &[("credential", "etcd-peer")]).value, 1.0);

    // Every row's status, with the command that fixes it when it is not OK.
    for r in report["certificates"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        let status = one(&samples, "certrotate_cert_status", &[("credential", name)]);
        assert_eq!(status.labels["status"], r["status"].as_str().unwrap());
        assert_eq!(status.labels.get("fix").map(String::as_str), r["fix"].as_str(), "{name}");
        assert_eq!(status.value, 1.0);
    }
    let fix = &one(&samples, "certrotate_cert_status", &expired).labels["fix"];
    assert_eq!(fix, &format!("kubectl certrotate aggregation --assets-dir {assets}"));

    // No kubeconfig: the cluster was not reached, and says so; no rotation has run.
    assert_eq!(one(&samples, "certrotate_cluster_reached", &[]).value, 0.0);
    assert_eq!(one(&samples, "certrotate_assets_dir_error", &[]).value, 0.0);
    assert!(find(&samples, "certrotate_rotation_in_progress", &[]).is_empty());

    // --local: the same certificates, no cluster series.
    let local = prometheus(&assets, tmp.path(), &["--local"]);
    assert_eq!(local.code, 4);
    promtool_accepts(&local.stdout);
    assert!(!local.stdout.contains("certrotate_cluster_reached"), "{}", local.stdout);
}

#[test]
fn a_fleet_is_one_exposition() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = tmp.path().join("fleet");
    sample(&fleet.join("a/assets"), SampleOptions::default());
    sample(&fleet.join("b/assets"), SampleOptions::default().with("admin", Window::expiring()));
    let a = format!("{}/a/assets", fleet.display());
    let gone = format!("{}/gone/assets", fleet.display());
    let glob = format!("{}/*/assets", fleet.display());
    let metrics = run(
        &[
            "status",
            "--assets-dir",
            &glob,
            "--assets-dir",
            &gone,
            "--assets-dir",
            &a,
            "-o",
            "prometheus",
        ],
        tmp.path(),
    );
    assert_eq!(metrics.code, 1, "an asset dir that cannot be checked: {}", metrics.all());
    // Each family once, though three asset dirs (one of them twice) contribute to it.
    promtool_accepts(&metrics.stdout);
    assert_eq!(metrics.stdout.matches("# TYPE x509_cert_not_after gauge").count(), 1);
    let samples = parse(&metrics.stdout);
    let per_dir = |dir: &str| find(&samples, "x509_cert_not_after", &[("assets_dir", dir)]).len();
    assert_eq!(per_dir(&a), 14, "every certificate of a, once");
    assert_eq!(per_dir(&format!("{}/b/assets", fleet.display())), 14);
    assert_eq!(one(&samples, "certrotate_assets_dir_error", &[("assets_dir", &gone)]).value, 1.0);
    assert_eq!(one(&samples, "certrotate_assets_dir_error", &[("assets_dir", &a)]).value, 0.0);
}

#[test]
fn no_series_carries_key_material() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = troubled(tmp.path());
    let dir = Path::new(&assets).join("cluster-assets");
    // Every base64 line of every private key, and the webhook key as it sits in the values.
    let mut secrets: Vec<String> = Vec::new();
    for key in ["tls/ca.key", "tls/admin.key", "tls/service-account.key", "tls/etcd/peer.key"] {
        let pem = fs::read_to_string(dir.join(key)).unwrap();
        secrets.extend(pem.lines().filter(|l| !l.starts_with("-----")).map(str::to_string));
    }
    let yaml = fs::read_to_string(dir.join("charts/lokomotive-system/lokomotive.yaml")).unwrap();
    let webhook_key = yaml.lines().find_map(|l| l.trim().strip_prefix("servingKey: ")).unwrap();
    secrets.push(webhook_key[..40].to_string());
    let textfile = tmp.path().join("certrotate.prom");
    let metrics = prometheus(&assets, tmp.path(), &["--textfile", textfile.to_str().unwrap()]);
    for text in [metrics.all(), fs::read_to_string(&textfile).unwrap()] {
        assert!(!text.contains("PRIVATE KEY"));
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "key material in the metrics: {secret}");
        }
    }
}

#[test]
fn textfile_is_replaced_atomically_and_the_exit_code_is_status_s() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = troubled(tmp.path());
    let collector = tmp.path().join("textfile");
    fs::create_dir(&collector).unwrap();
    let textfile = collector.join("certrotate.prom");
    fs::write(&textfile, "# an older exposition\n").unwrap();
    let before = fs::metadata(&textfile).unwrap().ino();

    let table = run(
        &["status", "--assets-dir", &assets, "--textfile", textfile.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(table.code, 4, "{}", table.all());
    assert!(table.stdout.contains("NAME"), "stdout keeps the -o format: {}", table.stdout);
    let written = fs::read_to_string(&textfile).unwrap();
    promtool_accepts(&written);
    let stdout = prometheus(&assets, tmp.path(), &[]).stdout;
    assert_eq!(written, stdout, "the file holds what -o prometheus prints");
    let meta = fs::metadata(&textfile).unwrap();
    assert_ne!(meta.ino(), before, "a new file renamed over the old one, not rewritten in place");
    assert_eq!(meta.permissions().mode() & 0o777, 0o644, "node_exporter runs as another user");
    let left: Vec<_> = fs::read_dir(&collector).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["certrotate.prom"], "no temp file left behind");

    // A healthy asset dir exits 0 and writes its file as well.
    let healthy = sample(&tmp.path().join("healthy"), SampleOptions::default());
    let ok = run(
        &["status", "--assets-dir", &healthy, "--local", "--textfile", textfile.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(ok.code, 0, "{}", ok.all());
    assert!(fs::read_to_string(&textfile).unwrap().contains(&healthy));

    // A folder that does not exist: an error naming the path and what to do.
    let nowhere = tmp.path().join("no/such/dir/certrotate.prom");
    let failed = run(
        &["status", "--assets-dir", &assets, "--textfile", nowhere.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(failed.code, 1, "{}", failed.all());
    assert!(
        failed.stderr.contains(nowhere.to_str().unwrap())
            && failed.stderr.contains("--collector.textfile.directory"),
        "{}",
        failed.stderr
    );
}

/// node_exporter under `timeout`, so that it stops by itself even if the test process is
/// killed; dropped, it is stopped at once (SIGTERM, which `timeout` passes on).
struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    fn start(textfile_dir: &Path, log: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("timeout")
            .arg("120")
            .arg(program("prometheus-node-exporter", "prometheus-node-exporter"))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg(format!("--collector.textfile.directory={}", textfile_dir.display()))
            .stdout(fs::File::create(log).unwrap())
            .stderr(fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("start prometheus-node-exporter");
        Self { child, port }
    }

    /// `GET /metrics` over loopback, retried until it answers (bounded).
    fn scrape(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(body) = self.get("/metrics") {
                return body;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus-node-exporter exited: {status}");
            }
            assert!(Instant::now() < deadline, "prometheus-node-exporter did not answer in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get(&self, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
        Ok(body.to_string())
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

#[test]
fn node_exporter_serves_the_textfile() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = troubled(tmp.path());
    let collector = tmp.path().join("textfile");
    fs::create_dir(&collector).unwrap();
    let textfile = collector.join("certrotate.prom");
    let wrote = run(
        &["status", "--assets-dir", &assets, "--textfile", textfile.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(wrote.code, 4, "{}", wrote.all());

    let mut exporter = NodeExporter::start(&collector, &tmp.path().join("node-exporter.log"));
    let scraped = parse(&exporter.scrape());
    // The collector read the file without complaint …
    assert_eq!(one(&scraped, "node_textfile_scrape_error", &[]).value, 0.0);
    let file = textfile.to_str().unwrap();
    assert_eq!(find(&scraped, "node_textfile_mtime_seconds", &[("file", file)]).len(), 1);
    // … and serves every series of it as written.
    let written = parse(&fs::read_to_string(&textfile).unwrap());
    for sample in &written {
        let with: Vec<(&str, &str)> =
            sample.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(one(&scraped, &sample.name, &with).value, sample.value, "{sample:?}");
    }
    let expired = one(&scraped, "x509_cert_expired", &[("credential", "aggregation-ca")]);
    assert_eq!(expired.value, 1.0);
    assert!(expired.labels.contains_key("subject_CN"), "{expired:?}");
}

#[test]
fn prometheus_output_is_for_status_only() {
    let tmp = tempfile::tempdir().unwrap();
    let assets = sample(&tmp.path().join("assets"), SampleOptions::default());
    for command in ["aggregation", "webhook", "extension-servers"] {
        let out =
            run(&[command, "--assets-dir", &assets, "-o", "prometheus", "--dry-run"], tmp.path());
        assert_eq!(out.code, 2, "{command}: {}", out.all());
        assert!(out.stderr.contains("-o prometheus is only for"), "{}", out.stderr);
    }
}

#[test]
fn the_alert_rules_of_the_docs_pass_promtool() {
    let docs = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring.md"))
        .unwrap();
    let block = docs
        .split("<!-- alert-rules -->\n```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("docs/monitoring.md has the alert rules block");
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("rules.yaml");
    fs::write(&rules, block).unwrap();
    let out = Command::new(program("promtool", "prometheus"))
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("SUCCESS: 5 rules found"), "{said}");
}
