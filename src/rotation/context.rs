//! What every phase of every rotation works with: the asset dir, the verified cluster, the
//! external programs, the run's journal, and the bounds.

use std::path::PathBuf;
use std::time::Duration;

use super::journal::RunDir;
use crate::assets::AssetDir;
use crate::error::{Error, Result};
use crate::k8s::Connection;
use crate::output::Progress;
use crate::pki::{self, CertInfo};
use crate::tools::helm::Helm;
use crate::tools::lokoctl::{ApplyFlags, Lokoctl};
use crate::tools::terraform::Terraform;
use crate::tools::{Command, Program, Runner};

/// Shown in place of the module address when a dry run could not read the state.
const UNRESOLVED_MODULE: &str = "module.<unresolved>.module.bootkube";

pub struct Ctx {
    pub assets: AssetDir,
    pub module: Option<String>,
    pub conn: Option<Connection>,
    pub terraform: Option<Terraform>,
    pub helm: Option<Helm>,
    pub lokoctl: Option<Lokoctl>,
    pub run: Option<RunDir>,
    pub expired: bool,
    pub timeout: Duration,
    pub progress: Option<Progress>,
    pub progress_index: usize,
    pub terraform_dir: PathBuf,
    pub config_dir: PathBuf,
    /// The runner of this run's children; a dry run's plan builds its commands with it.
    pub runner: Runner,
    /// The workloads behind the extension API servers, once read from the cluster: the
    /// restart steps name them.
    pub extension_servers: Option<Vec<String>>,
}

impl Ctx {
    pub fn asset(&self, relative: &str) -> PathBuf {
        self.assets.asset(relative)
    }

    /// `<module>.<resource>`.
    pub fn addr(&self, resource: &str) -> String {
        format!("{}.{resource}", self.module.as_deref().unwrap_or(UNRESOLVED_MODULE))
    }

    pub fn read_asset(&self, relative: &str) -> Result<Vec<u8>> {
        let path = self.asset(relative);
        std::fs::read(&path).map_err(|e| Error::Unreadable { path, source: e })
    }

    pub fn file_cert(&self, relative: &str) -> Result<CertInfo> {
        let bytes = self.read_asset(relative)?;
        pki::parse_one_cert(&bytes)
            .map_err(|p| Error::BadInputFile { path: self.asset(relative), reason: p.0 })
    }

    /// Whether the key file `key` holds the private half of `cert`.
    pub fn key_matches(&self, key: &str, cert: &CertInfo) -> bool {
        let half = self.read_asset(key).ok().and_then(|pem| pki::private_key_half(&pem).ok());
        half.is_some() && half == pki::certificate_half(cert)
    }

    /// The bytes of backup `name` of this run.
    pub fn read_backup(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.run()?.backup_path(name);
        std::fs::read(&path)
            .map_err(|e| Error::Journal { path, reason: format!("backup unreadable: {e}") })
    }

    /// The certificate kept as backup `name`.
    pub fn backup_cert(&self, name: &str) -> Result<CertInfo> {
        let bytes = self.read_backup(name)?;
        let path = self.run()?.backup_path(name);
        pki::parse_one_cert(&bytes).map_err(|p| Error::Journal { path, reason: p.0 })
    }

    /// The run's journal and backups. Every step runs within a run (the engine creates it
    /// before the first step): a phase meeting none is a wiring bug, not the operator's usage.
    pub fn run(&self) -> Result<&RunDir> {
        self.run.as_ref().ok_or_else(|| Error::Wiring("a step ran without its run".into()))
    }

    pub fn run_mut(&mut self) -> &mut RunDir {
        self.run.as_mut().expect("a real run has its journal")
    }

    /// Records a fingerprint in the journal and saves it.
    pub fn fingerprint(&mut self, name: &str, sha256: &str) -> Result<()> {
        let run = self.run_mut();
        run.journal.fingerprints.insert(name.into(), sha256.into());
        run.save()
    }

    pub fn conn(&self) -> Result<&Connection> {
        self.conn
            .as_ref()
            .ok_or_else(|| Error::Wiring("a phase ran without the verified cluster".into()))
    }

    pub fn terraform(&self) -> Result<&Terraform> {
        self.terraform
            .as_ref()
            .ok_or_else(|| Error::Wiring("terraform is not set up for this phase".into()))
    }

    pub fn helm(&self) -> Result<&Helm> {
        self.helm.as_ref().ok_or_else(|| Error::Wiring("helm is not set up for this phase".into()))
    }

    pub fn lokoctl(&self) -> Result<&Lokoctl> {
        self.lokoctl
            .as_ref()
            .ok_or_else(|| Error::Wiring("lokoctl is not set up for this phase".into()))
    }

    /// Progress messages of the phase running now.
    pub fn reporter(&self) -> impl Fn(&str) + Sync + '_ {
        move |message: &str| {
            if let Some(progress) = &self.progress {
                progress.update(self.progress_index, message);
            }
        }
    }

    /// terraform as the plan shows it: the one found, else (a dry run) by its name.
    fn plan_terraform(&self) -> std::borrow::Cow<'_, Terraform> {
        match &self.terraform {
            Some(t) => std::borrow::Cow::Borrowed(t),
            None => std::borrow::Cow::Owned(Terraform::new(
                Program::unresolved("terraform"),
                self.terraform_dir.clone(),
                self.runner.clone(),
            )),
        }
    }

    /// `terraform taint <module>.<resource>`, as run.
    pub fn taint_command(&self, resource: &str) -> Command {
        self.plan_terraform().taint_command(&self.addr(resource))
    }

    /// `terraform apply -target=<module>.<target>…`, as run.
    pub fn apply_command(&self, targets: &[&str]) -> Command {
        let targets: Vec<String> = targets.iter().map(|t| self.addr(t)).collect();
        self.plan_terraform().apply_command(&targets)
    }

    /// `terraform apply` of everything, one resource at a time, as run.
    pub fn apply_one_at_a_time_command(&self) -> Command {
        self.plan_terraform().apply_one_at_a_time_command()
    }

    /// `terraform state pull`, as run.
    pub fn state_pull_command(&self) -> Command {
        self.plan_terraform().pull_command()
    }

    /// helm as the plan shows it: the one found (its kubeconfig named, not written), else
    /// (a dry run) by its name.
    pub fn plan_helm(&self) -> std::borrow::Cow<'_, Helm> {
        match &self.helm {
            Some(h) => std::borrow::Cow::Borrowed(h),
            None => std::borrow::Cow::Owned(Helm::new(
                Program::unresolved("helm"),
                self.runner.clone(),
                None,
            )),
        }
    }

    /// `lokoctl cluster apply --confirm …` in the config dir, as the plan shows it.
    pub fn plan_lokoctl(&self, flags: ApplyFlags) -> Command {
        match &self.lokoctl {
            Some(l) => l.plan_apply(flags),
            None => Lokoctl::new(
                Program::unresolved("lokoctl"),
                self.runner.clone(),
                &self.config_dir,
                None,
            )
            .plan_apply(flags),
        }
    }

    /// The plan line of the recovery of releases left pending (the list runs; what follows
    /// depends on what it lists).
    pub fn recover_releases_command(&self) -> (Command, String) {
        let helm = self.plan_helm();
        let list = helm.plan_list_pending();
        let name = list.argv()[0].clone();
        let note = format!(
            "; each release listed: {name} rollback <release> <its latest revision> -n <namespace> --wait, then {name} status shows it deployed"
        );
        (list, note)
    }
}
