//! What the rotation tests (`tests/aggregation.rs`, `tests/webhook.rs` and the scenarios built
//! from both) read and check alike: certificates, run folders and their journal, processes,
//! pods, the plugin's output. One copy here, so that the two procedures' tests cannot drift
//! apart (they did: `key_matches` took its arguments in opposite orders).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use openssl::asn1::Asn1Time;
use openssl::pkey::PKey;
use openssl::x509::X509;
use serde_json::Value;

use super::{Cmd, Output, TestEnv, Tools, fingerprints, wait_for};

// ---------------------------------------------------------------------------------------
// Certificates

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fingerprint of a PEM holding exactly one certificate.
pub fn fp(pem: &[u8]) -> String {
    let fps = fingerprints(pem);
    assert_eq!(fps.len(), 1, "one certificate expected, found {}", fps.len());
    fps.into_iter().next().unwrap()
}

pub fn cert(pem: &[u8]) -> X509 {
    X509::from_pem(pem).expect("a PEM certificate")
}

pub fn cert_key_der(pem: &[u8]) -> Vec<u8> {
    cert(pem).public_key().unwrap().public_key_to_der().unwrap()
}

/// Does the private key PEM belong to the certificate? (Never prints the key.)
pub fn key_matches(key_pem: &[u8], cert_pem: &[u8]) -> bool {
    let key = PKey::private_key_from_pem(key_pem).expect("a PEM private key");
    key.public_key_to_der().unwrap() == cert_key_der(cert_pem)
}

pub fn signed_by(cert_pem: &[u8], ca_pem: &[u8]) -> bool {
    cert(cert_pem).verify(&cert(ca_pem).public_key().unwrap()).unwrap_or(false)
}

pub fn expired(pem: &[u8]) -> bool {
    cert(pem).not_after() < Asn1Time::days_from_now(0).unwrap()
}

/// Re-issues the bootkube module's `resources` with a real `terraform apply -replace`, the
/// test provider's clock two years back (so what they sign expired a year ago); returns that
/// time.
pub fn reissue_two_years_back(env: &TestEnv, resources: &[&str]) -> String {
    let module = env.assets.bootkube_module();
    let then = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2 * 8760))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    env.terraform()
        .env("CERTROTATE_FAKE_NOW", &then)
        .args(["apply", "-auto-approve", "-input=false", "-no-color"])
        .args(resources.iter().map(|r| format!("-replace={module}.{r}")))
        .ok();
    then
}

// ---------------------------------------------------------------------------------------
// Running the plugin

/// stdout and stderr together, for assertions about what an operator reads.
pub fn text(out: &Output) -> String {
    format!("{}\n{}", out.stdout, out.stderr)
}

/// Runs `cmd`, logging `what` as a step before (a hang shows where it is) and its exit and
/// duration after.
pub fn timed(env: &TestEnv, what: &str, cmd: Cmd) -> Output {
    env.step(what);
    let started = Instant::now();
    let out = cmd.run();
    env.step(&format!("… exited {:?} after {:.1?}", out.code(), started.elapsed()));
    out
}

/// Writes an executable script (`body` starts with its `#!` line) into the test's `bin/`
/// folder.
pub fn script(env: &TestEnv, name: &str, body: &str) -> PathBuf {
    let dir = env.dir().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

// ---------------------------------------------------------------------------------------
// Run folders

/// Every `<assets>/certrotate/<rotation>-*` run folder, oldest first (the names are UTC
/// times).
pub fn run_folders(env: &TestEnv, rotation: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(env.assets.dir.join("certrotate")) else {
        return Vec::new();
    };
    let prefix = format!("{rotation}-");
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    dirs.sort();
    dirs
}

/// The `journal.json` of run folder `run`.
pub fn journal_of(run: &Path) -> Value {
    let path = run.join("journal.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Processes and pods

/// `(state, ppid, comm)` of `/proc/<pid>/stat`.
pub fn proc_stat(pid: u32) -> Option<(char, u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid, comm))
}

/// Is `pid` a live process (not gone, not a zombie)?
pub fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _, _)| state != 'Z' && state != 'X')
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A real `terraform console` in the asset dir's terraform root: it holds the local state
/// lock while its stdin is open. Ends (lock released) when dropped.
pub struct StateLock {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl StateLock {
    pub fn hold(env: &TestEnv) -> StateLock {
        let tools = Tools::get();
        let dir = env.assets.terraform_dir();
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(&tools.terraform)
            .arg("console")
            .current_dir(&dir)
            .env("TF_CLI_CONFIG_FILE", &tools.tf_cli_config)
            .env("TF_IN_AUTOMATION", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting terraform console");
        let mut lock = StateLock { child: Some(child), stdin: None };
        lock.stdin = lock.child.as_mut().unwrap().stdin.take();
        let info = dir.join(".terraform.tfstate.lock.info");
        wait_for("terraform console to hold the state lock", Duration::from_secs(30), || {
            if info.exists() { Ok(()) } else { Err("no .terraform.tfstate.lock.info yet".into()) }
        });
        // Prove the lock is real: terraform itself refuses to plan.
        let plan =
            env.terraform().args(["plan", "-input=false", "-no-color", "-lock-timeout=0s"]).run();
        assert!(
            !plan.success() && plan.stderr.contains("Error acquiring the state lock"),
            "terraform console should hold the state lock: {}",
            plan.stderr
        );
        lock
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"exit\n");
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            super::process::signal_group(child.id(), "KILL");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
