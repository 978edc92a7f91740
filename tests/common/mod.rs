//! Helpers for tests that run the built binary on asset dirs written by `sample_assets`.

#![allow(dead_code)]

pub mod leaks;
pub mod sample_assets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Writes a sample asset dir at `dir` and returns its path as `--assets-dir` takes it.
pub fn sample(dir: &Path, opts: sample_assets::SampleOptions) -> String {
    sample_assets::write_sample_assets(dir, &opts).expect("write sample asset dir");
    dir.to_str().unwrap().to_string()
}

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kubectl-certrotate");

/// Result of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }

    /// Both streams, for assertions about what an operator sees.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the binary with an environment that cannot reach a real kubeconfig by accident.
pub fn run(args: &[&str], home: &Path) -> Run {
    run_with_env(args, home, &[])
}

pub fn run_with_env(args: &[&str], home: &Path, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("KUBECONFIG").env_remove("ASSET_DIR").env("HOME", home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output { status, stdout, stderr } = cmd.output().expect("run kubectl-certrotate");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Every file under `dir` with its bytes, to prove a command changed nothing.
pub fn snapshot_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.insert(path.clone(), Vec::new());
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    out
}

/// The row named `name` in a status JSON report.
pub fn row<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["certificates"]
        .as_array()
        .expect("certificates array")
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row {name} in {report:#}"))
}
