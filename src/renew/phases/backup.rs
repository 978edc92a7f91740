//! `backup`: before anything is tainted, the run keeps `cluster-assets/tls/` whole, `auth/`
//! whole, every rendered chart values file holding a certificate or key, and the Terraform
//! state (`terraform state pull`), in its `backup/` folder (0600 files, 0700 folders); the
//! copies must read back equal.

use std::path::{Path, PathBuf};

use super::kept_state;
use crate::assets::AssetDir;
use crate::error::{Error, Result};
use crate::renew::Phase;
use crate::rotation::context::Ctx;
use crate::rotation::engine::{Needs, PhaseUnit};
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};
use crate::tools::Command;

/// The state's copy, inside the run's `backup/`.
pub const STATE: &str = "terraform.tfstate";
/// The asset files' copies, inside the run's `backup/`: under their own path, so that the
/// backup is an asset dir of its own ([`kept_assets`]).
const ASSETS: &str = "cluster-assets";
/// The folders kept whole, inside `cluster-assets/`.
const WHOLE: [&str; 2] = ["tls", "auth"];
/// The rendered chart values, `charts/<namespace>/<chart>.yaml`, inside `cluster-assets/`.
const CHARTS: &str = "charts";

pub struct Backup;

impl PhaseUnit for Backup {
    fn needs(&self) -> Needs {
        Needs { terraform: true, ..Needs::default() }
    }

    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        let values = values_files(&ctx.assets).unwrap_or_default();
        let values = if values.is_empty() { "none found now".into() } else { values.join(", ") };
        vec![
            Planned::new(
                StepKind::File,
                format!(
                    "copy cluster-assets/tls/ and auth/ whole, and the chart values files that hold a certificate or key ({values}), into the run's backup folder (0600 files, 0700 folders)"
                ),
                Step::KeepFiles,
            ),
            Planned::command(
                &ctx.state_pull_command(),
                &format!(" > <run>/backup/{STATE} (0600: it holds every private key; never shown)"),
                Step::KeepState,
            ),
            Planned::new(
                StepKind::Check,
                "the copies read back equal to the files and the state, each 0600",
                Step::ReadsBack,
            ),
        ]
    }

    // Never found done (the default): nothing has changed before the backup, so taking it
    // again is always right.
}

enum Step {
    /// tls/, auth/ and the chart values holding certificates or keys, into the backup.
    KeepFiles,
    /// `terraform state pull` into the backup (0600: it holds every private key).
    KeepState,
    ReadsBack,
}

impl Action for Step {
    fn command(&self, ctx: &Ctx) -> Result<Option<Command>> {
        Ok(match self {
            Self::KeepState => Some(ctx.terraform()?.pull_command()),
            Self::KeepFiles | Self::ReadsBack => None,
        })
    }

    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::KeepFiles => Box::pin(async move { keep_files(ctx) }),
            Self::KeepState => Box::pin(keep_state(ctx)),
            Self::ReadsBack => Box::pin(reads_back(ctx)),
        }
    }
}

/// Whether the text of a values file holds a certificate or key: PEM, or base64 of PEM (as
/// Lokomotive renders them: `base64encode(<pem>)`, each value a PEM from its start).
pub fn holds_pem(text: &str) -> bool {
    // "-----BEGIN" in base64, from a value's first byte.
    text.contains("-----BEGIN ") || text.contains("LS0tLS1CRUdJTi")
}

/// Every file below `dir`, relative to `base`, sorted; none when `dir` does not exist.
fn files_below(base: &Path, dir: &Path, found: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            files_below(base, &path, found)?;
        } else if meta.is_file() {
            let relative = path.strip_prefix(base).unwrap_or(&path);
            found.push(relative.display().to_string());
        }
    }
    Ok(())
}

/// The chart values files (`charts/<namespace>/<chart>.yaml`) holding a certificate or key.
fn values_files(assets: &AssetDir) -> Result<Vec<String>> {
    let base = assets.cluster_assets();
    let unreadable =
        |path: &Path, e: std::io::Error| Error::Unreadable { path: path.into(), source: e };
    let charts = base.join(CHARTS);
    let Ok(namespaces) = std::fs::read_dir(&charts) else { return Ok(Vec::new()) };
    let mut found = Vec::new();
    for namespace in namespaces {
        let namespace = namespace.map_err(|e| unreadable(&charts, e))?.path();
        let Ok(files) = std::fs::read_dir(&namespace) else { continue };
        for file in files {
            let path = file.map_err(|e| unreadable(&namespace, e))?.path();
            if !path.is_file() || path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read(&path).map_err(|e| unreadable(&path, e))?;
            if holds_pem(&String::from_utf8_lossy(&text)) {
                found.push(path.strip_prefix(&base).unwrap_or(&path).display().to_string());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Every file the backup keeps, relative to `cluster-assets/`.
fn files_to_keep(assets: &AssetDir) -> Result<Vec<String>> {
    let base = assets.cluster_assets();
    let mut files = Vec::new();
    for folder in WHOLE {
        let dir = base.join(folder);
        files_below(&base, &dir, &mut files)
            .map_err(|e| Error::Unreadable { path: dir, source: e })?;
    }
    files.sort();
    files.extend(values_files(assets)?);
    Ok(files)
}

fn kept_name(file: &str) -> String {
    format!("{ASSETS}/{file}")
}

/// File `file` of `cluster-assets/` as the run's backup kept it, when it did; else as it is
/// now (a run's apply cut off half way leaves the rendered files being re-written); with
/// the path it was read from.
pub fn kept_or_current(ctx: &Ctx, file: &str) -> Result<(PathBuf, Vec<u8>)> {
    if let Some(run) = &ctx.run
        && let Ok(bytes) = ctx.read_backup(&kept_name(file))
    {
        return Ok((run.backup_path(&kept_name(file)), bytes));
    }
    Ok((ctx.asset(file), ctx.read_asset(file)?))
}

/// The backup as an asset dir: the files as they were before the run changed anything.
pub fn kept_assets(ctx: &Ctx) -> Result<AssetDir> {
    AssetDir::open(&ctx.run()?.backup_path(""))
}

fn keep_files(ctx: &mut Ctx) -> Result<String> {
    let files = files_to_keep(&ctx.assets)?;
    if !files.iter().any(|f| f.starts_with("tls/")) {
        return Err(Error::Precondition {
            phase: "backup",
            reason: format!("{} holds no files: nothing to renew", ctx.asset("tls").display()),
        });
    }
    for file in &files {
        let bytes = ctx.read_asset(file)?;
        ctx.run()?.write_backup(&kept_name(file), &bytes)?;
    }
    let values = files.iter().filter(|f| f.starts_with(CHARTS)).count();
    Ok(format!("kept {} files ({values} chart values files)", files.len()))
}

async fn keep_state(ctx: &mut Ctx) -> Result<String> {
    let (serial, state) = ctx.terraform()?.pull_to_keep().await?;
    ctx.run()?.write_backup(STATE, state.bytes())?;
    Ok(format!("kept the state at serial {serial}"))
}

async fn reads_back(ctx: &mut Ctx) -> Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let fail = |reason: String| Error::Verification { phase: Phase::Backup.name(), reason };
    let files = files_to_keep(&ctx.assets)?;
    for file in &files {
        let name = kept_name(file);
        if ctx.read_backup(&name)? != ctx.read_asset(file)? {
            return Err(fail(format!("the backup of {file} differs from the original")));
        }
    }
    let run = ctx.run()?;
    let mut kept = files.iter().map(|f| kept_name(f)).collect::<Vec<_>>();
    kept.push(STATE.into());
    for name in &kept {
        let path = run.backup_path(name);
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        if !matches!(mode, Ok(0o600)) {
            return Err(fail(format!("{} is not a 0600 file ({mode:?})", path.display())));
        }
    }
    let state = kept_state(ctx)?.ok_or_else(|| fail(format!("the backup has no {STATE}")))?;
    let module = ctx.module.clone().unwrap_or_default();
    if !state.bootkube_modules().contains(&module) {
        return Err(fail(format!("the kept state holds no {module}")));
    }
    let now = ctx.terraform()?.state().await?;
    if now.serial != state.serial {
        return Err(fail(format!(
            "the state moved from serial {} to {} while it was kept: run --phase backup again",
            state.serial, now.serial
        )));
    }
    let old = kept_assets(ctx)?;
    for ca in super::certificates::CAS {
        if let Ok(cert) = super::certificates::cert_of(&old, ca) {
            ctx.fingerprint(&super::certificates::fingerprint_name("old", ca), &cert.sha256)?;
        }
    }
    Ok(format!("{} files and the state (serial {}) read back equal", files.len(), state.serial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_files_holding_pem_are_found() {
        assert!(holds_pem("apiserver:\n  caCert: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1J\n"));
        assert!(holds_pem("cert: |\n  -----BEGIN CERTIFICATE-----\n"));
        assert!(!holds_pem("calico:\n  mtu: 1480\n  image: calico/node\n"));
        let tmp = tempfile::tempdir().unwrap();
        let charts = tmp.path().join("cluster-assets/charts");
        std::fs::create_dir_all(charts.join("kube-system/kube-apiserver")).unwrap();
        std::fs::create_dir_all(charts.join("lokomotive-system")).unwrap();
        std::fs::write(charts.join("kube-system/kube-apiserver.yaml"), "a: LS0tLS1CRUdJTiBS\n")
            .unwrap();
        std::fs::write(charts.join("kube-system/calico.yaml"), "mtu: 1480\n").unwrap();
        // A chart's own files are not values files.
        std::fs::write(charts.join("kube-system/kube-apiserver/values.yaml"), "-----BEGIN ")
            .unwrap();
        std::fs::write(charts.join("lokomotive-system/lokomotive.yaml"), "-----BEGIN C").unwrap();
        let assets = AssetDir::open(tmp.path()).unwrap();
        assert_eq!(
            values_files(&assets).unwrap(),
            ["charts/kube-system/kube-apiserver.yaml", "charts/lokomotive-system/lokomotive.yaml"]
        );
    }
}
