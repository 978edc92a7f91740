//! What a child program prints never shows a private key. Real keys (RSA 2048 and EC P-256,
//! each traditional and PKCS#8) are placed every way terraform, helm and their logs print
//! them (`common::leaks`): through the subprocess wrapper with real children writing a few
//! bytes at a time on stdout and stderr at once, and through the built plugin, whose dry run
//! runs a failing fake terraform, at every verbosity and output format. Certificates, public
//! keys and ordinary text printed beside the keys survive. No cluster is needed.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use certrotate::tools::redact::Redactor;
use certrotate::tools::{Command, Program};
use common::leaks::{self, Needles};
use common::sample_assets::{SampleOptions, write_sample_assets};

/// Generated keys and public material, written to files a shell can place.
struct Fixture {
    dir: tempfile::TempDir,
    key_paths: Vec<PathBuf>,
    cert: PathBuf,
    public_key: PathBuf,
    public_texts: Vec<String>,
    needles: Needles,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut needles = Needles::new();
    let mut key_paths = Vec::new();
    for (name, pem) in leaks::generated_keys() {
        needles.add_key(&name, &pem);
        let path = dir.path().join(&name);
        std::fs::write(&path, &pem).unwrap();
        key_paths.push(path);
    }
    let (cert_pem, public_pem) = leaks::public_material();
    let cert = dir.path().join("aggregation-ca.crt");
    let public_key = dir.path().join("service-account.pub");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&public_key, &public_pem).unwrap();
    let public_texts = leaks::public_texts(&cert_pem, &public_pem);
    Fixture { dir, key_paths, cert, public_key, public_texts, needles }
}

impl Fixture {
    /// A shell script printing every placement of every key, then the public material.
    fn print_all_script(&self) -> PathBuf {
        let keys: Vec<&Path> = self.key_paths.iter().map(PathBuf::as_path).collect();
        let path = self.dir.path().join("print-all.sh");
        std::fs::write(&path, leaks::print_all(&keys, &self.cert, &self.public_key)).unwrap();
        path
    }

    /// What of `text` shows a run of a key: `place`, the keys and the first such line.
    fn leak(&self, place: &str, text: &str) -> Option<String> {
        let found = self.needles.found_in(text);
        if found.is_empty() {
            return None;
        }
        let line = text.lines().find(|l| !self.needles.found_in(l).is_empty()).unwrap_or("");
        let shown: String = line.chars().take(160).collect();
        Some(format!("{place}: runs of {found:?}, e.g. in the line {shown:?}"))
    }

    /// No run of any key in `text`.
    fn assert_no_key(&self, place: &str, text: &str) {
        if let Some(leak) = self.leak(place, text) {
            panic!("private key material shown: {leak}");
        }
    }

    /// No run of any key, and the public material and ordinary text printed beside the keys
    /// are all there.
    fn assert_redacted(&self, place: &str, text: &str) {
        self.assert_no_key(place, text);
        for public in &self.public_texts {
            assert!(text.contains(public.as_str()), "{place} lost {public:?}:\n{text}");
        }
        for placement in leaks::PLACEMENTS {
            let label = format!("# placement {placement} of ec-pkcs8.key");
            assert!(text.contains(&label), "{place} lost the line {label:?}:\n{text}");
        }
        assert!(text.contains("Apply complete! Resources: 2 added"), "{place}:\n{text}");
        assert!(text.contains("[REDACTED PRIVATE KEY]"), "{place} says what it hid:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_printed_every_way_in_small_writes_on_stdout_and_stderr_are_redacted() {
    let f = fixture();
    let script = f.print_all_script();
    // Both streams at once, each in writes of a few bytes: lines, PEM blocks and base64
    // tokens arrive cut across many reads, interleaved with the other stream's.
    let both = format!(
        "sh '{s}' | dd bs=7 status=none & sh '{s}' | dd bs=5 status=none >&2 & wait; exit 3",
        s = script.display()
    );
    let sh = Program { name: "sh", path: "/bin/sh".into() };
    let cmd = Command::new(&sh, Duration::from_secs(120)).args(["-c", &both]);
    let outcome = cmd.run().await.unwrap();
    assert_eq!(outcome.code, Some(3), "{}", outcome.tail());
    f.assert_redacted("stdout", &outcome.stdout);
    f.assert_redacted("stderr", &outcome.stderr);
    f.assert_redacted("stdout and stderr together", &outcome.output);
    let lines = |text: &str| text.lines().count();
    assert_eq!(lines(&outcome.stdout), lines(&outcome.stderr), "each stream whole, none lost");
    assert_eq!(lines(&outcome.output), 2 * lines(&outcome.stdout));
    f.assert_no_key("the error message", &cmd.failed(&outcome).to_string());
}

#[test]
fn fed_in_reads_of_any_size_the_redactor_shows_the_same_safe_lines() {
    let f = fixture();
    let raw = std::process::Command::new("sh").arg(f.print_all_script()).output().unwrap();
    assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
    let raw = raw.stdout;
    let mut first: Option<Vec<String>> = None;
    for size in [1, 2, 3, 5, 7, 13, 64, 76, 1000, 4096, raw.len()] {
        let mut redactor = Redactor::default();
        let mut lines = Vec::new();
        for read in raw.chunks(size) {
            lines.extend(redactor.feed(read));
        }
        lines.extend(redactor.finish());
        let place = format!("reads of {size} bytes");
        f.assert_redacted(&place, &lines.join("\n"));
        assert_eq!(lines.len(), raw.split(|&b| b == b'\n').count() - 1, "{place}: lines kept");
        match &first {
            Some(expected) => assert_eq!(&lines, expected, "{place}: not as whole"),
            None => first = Some(lines),
        }
    }
}

/// `aggregation --dry-run` still runs `terraform state pull`; a fake terraform prints one
/// placement (per run) of every key on stdout and stderr, then fails. The failure (with the tail of
/// what it printed) reaches the plan's unresolved list; nothing anywhere shows a key.
#[test]
fn a_failing_terraform_printing_keys_leaks_nothing_at_any_verbosity_or_format() {
    let f = fixture();
    let home = f.dir.path().join("home");
    let assets = f.dir.path().join("assets");
    let options =
        SampleOptions { api_server: Some("https://127.0.0.1:9".into()), ..Default::default() };
    write_sample_assets(&assets, &options).unwrap();
    let keys: Vec<String> = f.key_paths.iter().map(|p| format!("'{}'", p.display())).collect();
    let fake = f.dir.path().join("terraform");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n{functions}\n\
             place_every_key {keys}\n\
             place_every_key {keys} >&2\n\
             echo 'Error: fake terraform fails after printing keys' >&2\n\
             exit 1\n",
            functions = leaks::place_every_key(),
            keys = keys.join(" "),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let assets_arg = assets.display().to_string();
    let fake_arg = fake.display().to_string();
    let mut leaked = Vec::new();
    for placement in leaks::PLACEMENTS {
        for verbosity in ["-v", "-vv", "-vvv"] {
            for output in ["table", "json"] {
                let run = common::run_with_env(
                    &[
                        "aggregation",
                        "--dry-run",
                        verbosity,
                        "-o",
                        output,
                        "--assets-dir",
                        &assets_arg,
                        "--terraform",
                        &fake_arg,
                        "--helm",
                        "/bin/false",
                        "--lokoctl",
                        "/bin/false",
                    ],
                    &home,
                    &[("CERTROTATE_TEST_PLACEMENT", placement)],
                );
                let place = format!("{placement} {verbosity} -o {output}");
                let all = run.all();
                assert!(
                    all.contains("terraform state pull") && all.contains("fake terraform fails"),
                    "{place}: the plan names the failed state pull and its output:\n{all}"
                );
                leaked.extend(f.leak(&place, &all));
            }
        }
    }
    assert!(leaked.is_empty(), "private key material shown:\n{}", leaked.join("\n"));
}
