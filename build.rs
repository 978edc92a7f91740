//! Records the git commit the binary is built from, for `kubectl certrotate version`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CERTROTATE_GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("CERTROTATE_GIT_COMMIT").ok().or_else(git_commit);
    println!("cargo:rustc-env=CERTROTATE_GIT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}

fn git_commit() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let commit = text.trim();
    (out.status.success() && !commit.is_empty()).then(|| commit.to_string())
}
