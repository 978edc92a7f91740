//! krew packaging: the manifest follows krew's rules, the release script renders it from the
//! archives it is given, and an archive packed by that script installs the way krew installs it,
//! after which the real kubectl finds the plugin and runs it.
//!
//! Name rule: krew-index keeps a manifest as `plugins/<metadata.name>.yaml` and requires the
//! file name to be the plugin name. This repository keeps the same manifest under the fixed name
//! `plugin.yaml`, so the rule is checked against the name it is published under: the file the
//! release script writes for krew-index (`certrotate.yaml`, asserted below).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const PLUGIN: &str = "certrotate";
const INDEX_FILE: &str = "certrotate.yaml";
const BIN: &str = "kubectl-certrotate";
const API_VERSION: &str = "krew.googlecontainertools.github.com/v1alpha2";
const RELEASES: &str = "https://github.com/kubectl-certrotate/kubectl-certrotate/releases/download";
/// The platforms a release covers.
const PLATFORMS: [(&str, &str); 4] =
    [("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64"), ("darwin", "arm64")];
/// Every os/arch pair krew runs on; a platform selector must pick at least one of them.
const KREW_PLATFORMS: [(&str, &str); 9] = [
    ("linux", "amd64"),
    ("linux", "arm64"),
    ("linux", "arm"),
    ("linux", "386"),
    ("darwin", "amd64"),
    ("darwin", "arm64"),
    ("windows", "amd64"),
    ("windows", "arm64"),
    ("windows", "386"),
];
/// The programs the plugin runs, which the caveats must name.
const EXTERNAL_PROGRAMS: [&str; 3] = ["helm", "terraform", "lokoctl"];

// ------------------------------------------------------------------ helpers --

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn release_script() -> Command {
    let mut cmd = Command::new(repo().join("krew-manifest/release.sh"));
    cmd.current_dir(repo());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Runs a command that must fail; returns its stderr.
fn run_fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        !out.status.success(),
        "{cmd:?} should have failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sha256_hex(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    openssl::sha::sha256(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("not valid YAML: {e}\n{text}"))
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// The krew os/arch of the machine the test runs on.
fn host_platform() -> (&'static str, &'static str) {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    (os, arch)
}

/// Writes `kubectl-certrotate_<os>_<arch>.tar.gz` into `dir` with the given entries
/// (name, content, mode), packed by tar; returns its path.
fn make_archive(dir: &Path, os: &str, arch: &str, entries: &[(&str, &[u8], u32)]) -> PathBuf {
    let stage = dir.join(format!("stage-{os}-{arch}"));
    fs::create_dir_all(&stage).unwrap();
    for (name, content, mode) in entries {
        let path = stage.join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
    }
    let archive = dir.join(format!("{BIN}_{os}_{arch}.tar.gz"));
    let names: Vec<&str> = entries.iter().map(|e| e.0).collect();
    run_ok(Command::new("tar").arg("-czf").arg(&archive).arg("-C").arg(&stage).args(&names));
    archive
}

/// An archive as a CI runner of another platform would make it: a stand-in executable that
/// differs per platform (so the sha256 values differ) and the LICENSE.
fn stand_in_archive(dir: &Path, os: &str, arch: &str) -> PathBuf {
    let license = fs::read(repo().join("LICENSE")).expect("LICENSE at the repository root");
    let exe = format!("#!/bin/sh\necho stand-in for {os}/{arch}\n");
    make_archive(dir, os, arch, &[(BIN, exe.as_bytes(), 0o755), ("LICENSE", &license, 0o644)])
}

// --------------------------------------------------------------- validation --

/// Checks a manifest by the rules krew and krew-index apply (structure, name, version, platform
/// selectors, sha256, files, line lengths) and by this project's release conventions (one
/// archive per platform under the release URL, binary and LICENSE extracted). `file_name` is
/// the name the manifest is published under in krew-index. Returns every violation.
fn violations(file_name: &str, manifest: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let mut fail = |msg: String| errors.push(msg);

    let name = str_at(manifest, "/metadata/name").unwrap_or_default();
    match file_name.strip_suffix(".yaml") {
        Some(stem) if stem == name => {}
        _ => fail(format!("file {file_name} must be named after metadata.name {name:?} + .yaml")),
    }
    let kebab = !name.is_empty()
        && name.split('-').all(|w| {
            !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if !kebab {
        fail(format!("metadata.name {name:?} is not lowercase kebab-case"));
    }
    if str_at(manifest, "/apiVersion") != Some(API_VERSION) {
        fail(format!("apiVersion must be {API_VERSION}"));
    }
    if str_at(manifest, "/kind") != Some("Plugin") {
        fail("kind must be Plugin".into());
    }

    let version = str_at(manifest, "/spec/version").unwrap_or_default();
    if !is_v_semver(version) {
        fail(format!("spec.version {version:?} is not semver with a leading v"));
    }
    if !str_at(manifest, "/spec/homepage").is_some_and(|h| h.starts_with("https://")) {
        fail("spec.homepage must be an https URL".into());
    }
    for (field, max) in [("shortDescription", 70), ("description", 80), ("caveats", 80)] {
        let text = str_at(manifest, &format!("/spec/{field}")).unwrap_or_default();
        if text.trim().is_empty() {
            fail(format!("spec.{field} is missing"));
        }
        for line in text.lines().filter(|l| l.len() > max && l.trim().contains(' ')) {
            fail(format!("spec.{field} has a line over {max} characters: {line:?}"));
        }
    }
    let caveats = str_at(manifest, "/spec/caveats").unwrap_or_default();
    for program in EXTERNAL_PROGRAMS.iter().filter(|p| !caveats.contains(*p)) {
        fail(format!("spec.caveats does not name {program}"));
    }

    let platforms = manifest.pointer("/spec/platforms").and_then(Value::as_array);
    let platforms = platforms.map(Vec::as_slice).unwrap_or_default();
    if platforms.is_empty() {
        fail("spec.platforms is empty".into());
    }
    for (i, platform) in platforms.iter().enumerate() {
        for msg in platform_violations(platform, version) {
            fail(format!("spec.platforms[{i}]: {msg}"));
        }
    }
    for (os, arch) in KREW_PLATFORMS {
        let chosen: Vec<usize> = (0..platforms.len())
            .filter(|&i| selects(&platforms[i]["selector"], os, arch) == Some(true))
            .collect();
        if chosen.len() > 1 {
            fail(format!("{os}/{arch} is selected by several platforms {chosen:?}"));
        }
    }
    errors
}

fn platform_violations(platform: &Value, version: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let selector = &platform["selector"];
    let labels = selector.get("matchLabels").and_then(Value::as_object);
    let exprs = selector.get("matchExpressions").and_then(Value::as_array);
    if labels.is_none_or(|l| l.is_empty()) && exprs.is_none_or(|e| e.is_empty()) {
        errors.push("selector is missing or empty".into());
    }
    let keys = labels.into_iter().flat_map(|l| l.keys().map(String::as_str));
    let keys = keys.chain(exprs.into_iter().flatten().filter_map(|e| e["key"].as_str()));
    for key in keys.filter(|k| *k != "os" && *k != "arch") {
        errors.push(format!("selector key {key:?} is neither os nor arch"));
    }
    let matched: Vec<_> = KREW_PLATFORMS
        .iter()
        .filter(|(os, arch)| selects(selector, os, arch) == Some(true))
        .collect();
    if matched.is_empty() {
        errors.push("the selector matches no platform krew runs on".into());
    }

    let uri = platform["uri"].as_str().unwrap_or_default();
    if !(uri.ends_with(".tar.gz") || uri.ends_with(".zip")) {
        errors.push(format!("uri {uri:?} is not a .tar.gz or .zip"));
    }
    let sha = platform["sha256"].as_str().unwrap_or_default();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        errors.push(format!("sha256 {sha:?} is not 64 lowercase hex digits"));
    }
    let bin = platform["bin"].as_str().unwrap_or_default();
    let files = platform["files"].as_array().map(Vec::as_slice).unwrap_or_default();
    if bin.is_empty() {
        errors.push("bin is missing".into());
    }
    if files.is_empty() {
        errors.push("files is missing".into());
    }
    for file in files {
        if file["from"].as_str().is_none_or(str::is_empty)
            || file["to"].as_str().is_none_or(str::is_empty)
        {
            errors.push(format!("files entry {file} needs from and to"));
        }
    }

    // This project's conventions: one platform per archive, both files at the archive root.
    if let [(os, arch)] = matched.as_slice() {
        let want = format!("{RELEASES}/{version}/{BIN}_{os}_{arch}.tar.gz");
        if uri != want {
            errors.push(format!("uri {uri:?} should be {want:?}"));
        }
    } else {
        errors.push(format!("the selector should pick one os/arch, it picks {matched:?}"));
    }
    if bin != BIN {
        errors.push(format!("bin {bin:?} should be {BIN}"));
    }
    let want_files = serde_json::json!([{"from": BIN, "to": "."}, {"from": "LICENSE", "to": "."}]);
    if platform["files"] != want_files {
        errors.push(format!("files should be {want_files} (the binary and the LICENSE)"));
    }
    errors
}

/// Whether a krew platform selector picks os/arch (label selector semantics); None when the
/// selector is malformed.
fn selects(selector: &Value, os: &str, arch: &str) -> Option<bool> {
    let label = |key: &str| match key {
        "os" => Some(os),
        "arch" => Some(arch),
        _ => None,
    };
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (key, want) in labels {
            if label(key) != Some(want.as_str()?) {
                return Some(false);
            }
        }
    }
    for expr in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let have = label(expr["key"].as_str()?);
        let values: Vec<&str> = match expr.get("values").and_then(Value::as_array) {
            Some(v) => v.iter().map(Value::as_str).collect::<Option<_>>()?,
            None => Vec::new(),
        };
        let ok = match expr["operator"].as_str()? {
            "In" => have.is_some_and(|h| values.contains(&h)),
            "NotIn" => have.is_none_or(|h| !values.contains(&h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => return None,
        };
        if !ok {
            return Some(false);
        }
    }
    Some(true)
}

/// `vMAJOR.MINOR.PATCH`, with an optional pre-release and build part (semver 2.0.0).
fn is_v_semver(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else { return false };
    let (rest, build) = rest.split_once('+').map_or((rest, None), |(a, b)| (a, Some(b)));
    let (core, pre) = rest.split_once('-').map_or((rest, None), |(a, b)| (a, Some(b)));
    let numeric = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| numeric(p))
        && pre.is_none_or(|p| p.split('.').all(ident))
        && build.is_none_or(|b| b.split('.').all(ident))
}

/// MAJOR.MINOR.PATCH of a version with or without the leading v.
fn version_core(version: &str) -> (u64, u64, u64) {
    let core = version.trim_start_matches('v').split(['-', '+']).next().unwrap_or_default();
    let n: Vec<u64> = core.split('.').map(|p| p.parse().expect("numeric version part")).collect();
    (n[0], n[1], n[2])
}

fn assert_valid(file_name: &str, manifest: &Value) {
    let errors = violations(file_name, manifest);
    assert!(errors.is_empty(), "{file_name} breaks krew's rules:\n  {}", errors.join("\n  "));
}

fn platform_of(manifest: &Value, os: &str, arch: &str) -> Value {
    let platforms = manifest["spec"]["platforms"].as_array().expect("spec.platforms");
    let found = platforms.iter().find(|p| selects(&p["selector"], os, arch) == Some(true));
    found.unwrap_or_else(|| panic!("no platform selects {os}/{arch}")).clone()
}

fn os_arch(platform: &Value) -> (String, String) {
    let labels = &platform["selector"]["matchLabels"];
    (labels["os"].as_str().unwrap().to_owned(), labels["arch"].as_str().unwrap().to_owned())
}

// -------------------------------------------------------------------- tests --

#[test]
fn the_validator_catches_what_krew_rejects() {
    let good = parse_yaml(&fs::read_to_string(repo().join("plugin.yaml")).unwrap());
    assert_valid(INDEX_FILE, &good);
    assert!(!violations("plugin.yaml", &good).is_empty(), "the file-name rule must bite");

    let broken = |pointer: &str, value: Value| {
        let mut m = good.clone();
        *m.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer}")) = value;
        violations(INDEX_FILE, &m)
    };
    for (pointer, value) in [
        ("/metadata/name", "cert_rotate".into()),
        ("/apiVersion", "krew.googlecontainertools.github.com/v1alpha1".into()),
        ("/kind", "Plugins".into()),
        ("/spec/version", "0.1.0".into()),
        ("/spec/version", "v0.1".into()),
        ("/spec/shortDescription", "".into()),
        ("/spec/description", Value::Null),
        ("/spec/caveats", "Needs helm.".into()),
        ("/spec/platforms", serde_json::json!([])),
        ("/spec/platforms/0/selector", serde_json::json!({})),
        ("/spec/platforms/0/selector/matchLabels/os", "plan9".into()),
        ("/spec/platforms/0/uri", "https://example.invalid/kubectl-certrotate".into()),
        ("/spec/platforms/0/sha256", "ABCDEF".into()),
        ("/spec/platforms/0/sha256", "A".repeat(64).into()),
        ("/spec/platforms/0/bin", "".into()),
        ("/spec/platforms/0/files", serde_json::json!([{"from": BIN, "to": "."}])),
    ] {
        assert!(!broken(pointer, value.clone()).is_empty(), "{pointer} = {value} passed");
    }
    let mut twice = good.clone();
    let first = twice["spec"]["platforms"][0].clone();
    twice["spec"]["platforms"].as_array_mut().unwrap().push(first);
    let errors = violations(INDEX_FILE, &twice);
    assert!(errors.iter().any(|e| e.contains("several platforms")), "{errors:?}");
}

#[test]
fn checked_in_plugin_yaml_is_a_valid_rendering_of_the_template() {
    let text = fs::read_to_string(repo().join("plugin.yaml")).expect("plugin.yaml at the root");
    let manifest = parse_yaml(&text);
    assert_valid(INDEX_FILE, &manifest);
    assert_eq!(str_at(&manifest, "/metadata/name"), Some(PLUGIN));
    // plugin.yaml describes the latest release: never a version the sources have not reached.
    // (It lags Cargo.toml between a version bump and the release that renders it again.)
    let version = str_at(&manifest, "/spec/version").unwrap();
    assert!(
        version_core(version) <= version_core(env!("CARGO_PKG_VERSION")),
        "plugin.yaml is for {version}, newer than Cargo.toml's {}",
        env!("CARGO_PKG_VERSION")
    );

    let platforms: Vec<(String, String)> =
        manifest["spec"]["platforms"].as_array().unwrap().iter().map(os_arch).collect();
    for (os, arch) in &platforms {
        assert!(PLATFORMS.contains(&(os.as_str(), arch.as_str())), "unexpected {os}/{arch}");
    }
    // A manifest that lacks platforms says so where a reader sees it.
    let partial = text.lines().take_while(|l| l.starts_with('#')).any(|l| l.contains("PARTIAL"));
    assert_eq!(partial, platforms.len() < PLATFORMS.len(), "PARTIAL header of plugin.yaml");

    // Render the template for the same platforms and compare all but the sha256 values: the
    // checked-in file must not drift from the template by hand edits.
    let tmp = tempfile::tempdir().unwrap();
    let archives: Vec<PathBuf> =
        platforms.iter().map(|(os, arch)| stand_in_archive(tmp.path(), os, arch)).collect();
    let out = tmp.path().join("out");
    run_ok(
        release_script()
            .args(["render", "--partial", "--version", version, "--out-dir"])
            .arg(&out)
            .args(&archives),
    );
    let mut rendered = parse_yaml(&fs::read_to_string(out.join(INDEX_FILE)).unwrap());
    let mut checked_in = manifest.clone();
    for m in [&mut rendered, &mut checked_in] {
        for p in m["spec"]["platforms"].as_array_mut().unwrap() {
            p["sha256"] = Value::Null;
        }
    }
    assert_eq!(checked_in, rendered, "plugin.yaml differs from a rendering of the template");
}

#[test]
fn release_script_renders_every_platform_from_its_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let archives: Vec<PathBuf> =
        PLATFORMS.iter().map(|(os, arch)| stand_in_archive(tmp.path(), os, arch)).collect();
    let out = tmp.path().join("index");
    let printed = run_ok(release_script().args(["render", "--out-dir"]).arg(&out).args(&archives));
    // The file for krew-index is named after the plugin: the name rule holds for it.
    let file = out.join(INDEX_FILE);
    assert_eq!(printed.trim(), file.to_str().unwrap());
    let text = fs::read_to_string(&file).unwrap();
    assert!(!text.contains("PARTIAL"), "a full rendering is not marked partial");
    let manifest = parse_yaml(&text);
    assert_valid(INDEX_FILE, &manifest);
    let crate_version = format!("v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(str_at(&manifest, "/spec/version"), Some(crate_version.as_str()), "from Cargo.toml");
    assert_eq!(manifest["spec"]["platforms"].as_array().unwrap().len(), PLATFORMS.len());
    let mut sums = BTreeSet::new();
    for ((os, arch), archive) in PLATFORMS.iter().zip(&archives) {
        let platform = platform_of(&manifest, os, arch);
        assert_eq!(platform["sha256"].as_str(), Some(sha256_hex(archive).as_str()), "{os}/{arch}");
        sums.insert(sha256_hex(archive));
    }
    assert_eq!(sums.len(), PLATFORMS.len(), "stand-in archives differ, so sums are not mixed up");

    // Without --partial every platform is needed; with it the rest is left out, visibly.
    let err =
        run_fails(release_script().args(["render", "--out-dir"]).arg(&out).args(&archives[..3]));
    assert!(err.contains("darwin/arm64"), "names the missing platform: {err}");
    run_ok(
        release_script().args(["render", "--partial", "--out-dir"]).arg(&out).args(&archives[..3]),
    );
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.lines().next().is_some_and(|l| l.starts_with('#')));
    assert!(text.contains("# PARTIAL: only linux/amd64 linux/arm64 darwin/amd64;"), "{text}");
    let manifest = parse_yaml(&text);
    assert_valid(INDEX_FILE, &manifest);
    assert_eq!(manifest["spec"]["platforms"].as_array().unwrap().len(), 3);

    // Another version (a release from another checkout) moves the version and every URL.
    let other = tmp.path().join("other");
    run_ok(
        release_script()
            .args(["render", "--version", "v9.8.7", "--out-dir"])
            .arg(&other)
            .args(&archives),
    );
    let manifest = parse_yaml(&fs::read_to_string(other.join(INDEX_FILE)).unwrap());
    assert_eq!(str_at(&manifest, "/spec/version"), Some("v9.8.7"));
    assert_valid(INDEX_FILE, &manifest);
    let err = run_fails(
        release_script()
            .args(["render", "--version", "9.8", "--out-dir"])
            .arg(&other)
            .args(&archives),
    );
    assert!(err.contains("not semver"), "{err}");

    // Archives krew could not install are refused.
    let bad = tmp.path().join("bad");
    fs::create_dir_all(&bad).unwrap();
    let license = fs::read(repo().join("LICENSE")).unwrap();
    for (entries, complaint) in [
        (vec![(BIN, &b"#!/bin/sh\n"[..], 0o755)], "LICENSE"),
        (vec![(BIN, &b"#!/bin/sh\n"[..], 0o644), ("LICENSE", &license[..], 0o644)], "executable"),
        (vec![("LICENSE", &license[..], 0o644)], BIN),
    ] {
        let archive = make_archive(&bad, "linux", "amd64", &entries);
        let err = run_fails(
            release_script().args(["render", "--partial", "--out-dir"]).arg(&bad).arg(&archive),
        );
        assert!(err.contains(complaint), "expected a complaint about {complaint}: {err}");
    }
    let odd = bad.join("kubectl-certrotate-linux-amd64.tgz");
    fs::copy(&archives[0], &odd).unwrap();
    let err = run_fails(release_script().args(["render", "--partial"]).arg(&odd));
    assert!(err.contains("_<os>_<arch>.tar.gz"), "{err}");
    let err = run_fails(
        release_script()
            .args(["render", "--partial", "--out-dir"])
            .arg(&bad)
            .args([&archives[0], &archives[0]]),
    );
    assert!(err.contains("two archives for linux/amd64"), "{err}");
}

#[test]
fn pack_is_reproducible_and_checks_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let (os, arch) = host_platform();
    // A small real executable of this machine stands in for the plugin.
    let exe = which::which("true").expect("true(1) on PATH");
    let pack = |dir: &str| {
        let out = tmp.path().join(dir);
        let printed = run_ok(
            release_script()
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["pack", "--os", os, "--arch", arch, "--binary"])
                .arg(&exe)
                .arg("--out-dir")
                .arg(&out),
        );
        let archive = PathBuf::from(printed.trim());
        assert_eq!(archive, out.join(format!("{BIN}_{os}_{arch}.tar.gz")));
        let sum_file = fs::read_to_string(archive.with_extension("gz.sha256")).unwrap();
        assert_eq!(sum_file, format!("{}  {BIN}_{os}_{arch}.tar.gz\n", sha256_hex(&archive)));
        archive
    };
    let first = pack("one");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = pack("two");
    assert_eq!(sha256_hex(&first), sha256_hex(&second), "same inputs, same archive bytes");

    let listing = run_ok(Command::new("tar").arg("-tvzf").arg(&first));
    let entries: Vec<(&str, &str)> = listing
        .lines()
        .map(|l| (l.split_whitespace().next().unwrap(), l.split_whitespace().last().unwrap()))
        .collect();
    assert_eq!(entries.len(), 2, "{listing}");
    assert!(entries.contains(&("-rw-r--r--", "LICENSE")), "{listing}");
    assert!(entries.contains(&("-rwxr-xr-x", BIN)), "{listing}");

    if which::which("file").is_ok() {
        let other = if os == "darwin" { "linux" } else { "darwin" };
        let err = run_fails(
            release_script()
                .args(["pack", "--os", other, "--arch", arch, "--binary"])
                .arg(&exe)
                .arg("--out-dir")
                .arg(tmp.path().join("wrong")),
        );
        assert!(err.contains(&format!("is not a {other}/{arch} executable")), "{err}");
    }
    let err = run_fails(
        release_script().args(["pack", "--os", os, "--arch", "mips", "--binary"]).arg(&exe),
    );
    assert!(err.contains("not in"), "{err}");
}

/// The whole path an operator takes: the release script packs this build of the binary,
/// renders its manifest, krew's install steps put it into a krew root, and kubectl runs it.
#[test]
fn archive_installs_like_krew_and_runs_through_kubectl() {
    let kubectl = which::which("kubectl").or_else(|_| {
        let default = PathBuf::from("/usr/bin/kubectl");
        if default.is_file() { Ok(default) } else { Err(()) }
    });
    let kubectl = kubectl.unwrap_or_else(|()| {
        panic!(
            "kubectl is not installed (not on PATH, not /usr/bin/kubectl): this test runs the \
             plugin through the real kubectl, so install kubectl 1.26 or later"
        )
    });
    let tmp = tempfile::tempdir().unwrap();
    let (os, arch) = host_platform();
    let binary = env!("CARGO_BIN_EXE_kubectl-certrotate");

    // Pack and render with the release script.
    let dist = tmp.path().join("dist");
    let printed = run_ok(
        release_script()
            .args(["pack", "--os", os, "--arch", arch, "--binary", binary, "--out-dir"])
            .arg(&dist),
    );
    let archive = PathBuf::from(printed.trim());
    run_ok(release_script().args(["render", "--partial", "--out-dir"]).arg(&dist).arg(&archive));
    let manifest = parse_yaml(&fs::read_to_string(dist.join(INDEX_FILE)).unwrap());
    assert_valid(INDEX_FILE, &manifest);
    let platform = platform_of(&manifest, os, arch);
    assert_eq!(platform["sha256"].as_str(), Some(sha256_hex(&archive).as_str()), "sha256");
    let uri = platform["uri"].as_str().unwrap();
    assert!(uri.ends_with(archive.file_name().unwrap().to_str().unwrap()), "{uri}");

    // Unpack as krew does, into a scratch folder first.
    let unpacked = tmp.path().join("download");
    fs::create_dir_all(&unpacked).unwrap();
    run_ok(Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(&unpacked));

    // Move each `files` entry into <root>/store/<plugin>/<version>/.
    let root = tmp.path().join("krew");
    let version = str_at(&manifest, "/spec/version").unwrap();
    let install_dir = root.join("store").join(PLUGIN).join(version);
    fs::create_dir_all(&install_dir).unwrap();
    for file in platform["files"].as_array().unwrap() {
        let (from, to) = (file["from"].as_str().unwrap(), file["to"].as_str().unwrap());
        let pattern = unpacked.join(from);
        let matches: Vec<PathBuf> =
            glob::glob(pattern.to_str().unwrap()).unwrap().map(Result::unwrap).collect();
        assert!(!matches.is_empty(), "files entry {from:?} matches nothing in the archive");
        let dest_dir = install_dir.join(to);
        fs::create_dir_all(&dest_dir).unwrap();
        for path in matches {
            fs::rename(&path, dest_dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    assert!(install_dir.join("LICENSE").is_file(), "krew-index wants the LICENSE extracted");
    let bin = install_dir.join(platform["bin"].as_str().unwrap());
    let mode = fs::metadata(&bin).expect("bin exists after install").permissions().mode();
    assert!(mode & 0o111 != 0, "bin {} is not executable ({mode:o})", bin.display());

    // Link it as krew does: kubectl-<name>, dashes of the name turned into underscores.
    let link_name = format!("kubectl-{}", PLUGIN.replace('-', "_"));
    assert_eq!(link_name, BIN);
    fs::create_dir_all(root.join("bin")).unwrap();
    let link = root.join("bin").join(&link_name);
    symlink(&bin, &link).unwrap();

    // kubectl sees only the krew bin folder and its own folder; no kubeconfig is read.
    let kubectl_dir = kubectl.parent().unwrap();
    let path = format!("{}:{}", root.join("bin").display(), kubectl_dir.display());
    let kubectl_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&kubectl);
        cmd.args(args)
            .env("PATH", &path)
            .env("KUBECONFIG", tmp.path().join("no-kubeconfig"))
            .env("KREW_ROOT", &root);
        cmd
    };

    let list = run_ok(&mut kubectl_cmd(&["plugin", "list"]));
    assert!(
        list.lines().any(|l| l.trim() == link.to_str().unwrap()),
        "kubectl plugin list does not show {}:\n{list}",
        link.display()
    );
    let help = run_ok(&mut kubectl_cmd(&["certrotate", "--help"]));
    assert!(help.contains("Usage: kubectl certrotate"), "{help}");
    let version_out = run_ok(&mut kubectl_cmd(&["certrotate", "version"]));
    let mut lines = version_out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("kubectl certrotate {}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert!(lines.next().is_some_and(|l| l.starts_with("commit: ")), "{version_out}");

    // kubectl's completion of plugin arguments goes through kubectl_complete-certrotate.
    symlink(
        repo().join("krew-manifest/kubectl_complete-certrotate"),
        root.join("bin/kubectl_complete-certrotate"),
    )
    .unwrap();
    let complete = |words: &[&str]| {
        let mut args = vec!["__complete", "certrotate"];
        args.extend_from_slice(words);
        let out = run_ok(&mut kubectl_cmd(&args));
        out.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    let words = complete(&["st"]);
    assert_eq!(words, ["status", ":4"], "kubectl __complete certrotate st");
    let words = complete(&["status", "--exp"]);
    assert_eq!(words, ["--expiring-within", ":4"], "kubectl __complete certrotate status --exp");
    let words = complete(&["completion", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(words.iter().any(|w| w == shell), "completion <TAB> offers {shell}: {words:?}");
    }
    let words = complete(&["-o", ""]);
    assert_eq!(words, ["table", "json", "prometheus", ":4"], "kubectl __complete certrotate -o ''");
}
