//! `kubectl certrotate webhook`: the admission webhook server's serving certificate, which
//! Terraform signs with the kube CA and writes (base64) into `lokomotive.yaml`, the
//! `lokomotive` chart deploys as Secret `admission-webhook-server`, and the webhook
//! configuration trusts by its `caBundle` (the certificate itself).
//!
//! Not expired: backup, certificate, restart, verify. Expired: backup, unhook (delete the
//! webhook configuration, so Helm can upgrade), certificate, restart, verify.

pub mod phases;

use crate::assets::AssetDir;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::cli::{GlobalOpts, WebhookArgs};
use crate::error::{Error, Result, exit};
use crate::k8s::{Connection, objects};
use crate::rotation::context::Ctx;
use crate::rotation::engine::{self, PhaseUnit, Procedure, Request};
use crate::rotation::journal::{RunDir, RunState};
use crate::rotation::lock::RotationLock;
use crate::rotation::runs_root;

/// A phase of the webhook certificate rotation; its doc comments are the `--phase` help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Keep lokomotive.yaml (and, when expired, the webhook configuration) in the journal.
    Backup,
    /// Expired path only: delete MutatingWebhookConfiguration admission-webhook-server.
    Unhook,
    /// terraform taint the certificate, lokoctl cluster apply.
    Certificate,
    /// Restart Deployment admission-webhook-server (it reads its certificate only at start).
    Restart,
    /// Secret, caBundle, SANs, and a real admission call.
    Verify,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Unhook => "unhook",
            Self::Certificate => "certificate",
            Self::Restart => "restart",
            Self::Verify => "verify",
        }
    }
}

pub struct Webhook;

impl Procedure for Webhook {
    type Phase = Phase;

    const NAME: &'static str = "webhook";
    const REPORT_KIND: &'static str = "WebhookRotation";
    const PLAN_KIND: &'static str = "WebhookPlan";

    fn path(expired: bool) -> &'static [Phase] {
        if expired {
            &[Phase::Backup, Phase::Unhook, Phase::Certificate, Phase::Restart, Phase::Verify]
        } else {
            &[Phase::Backup, Phase::Certificate, Phase::Restart, Phase::Verify]
        }
    }

    fn finale() -> Option<Phase> {
        None
    }

    fn phase_name(phase: Phase) -> &'static str {
        phase.name()
    }

    fn unit(phase: Phase) -> &'static dyn PhaseUnit {
        phases::unit(phase)
    }

    fn has_expired(assets: &AssetDir) -> Result<bool> {
        let path = assets.asset(crate::assets::LOKOMOTIVE_VALUES);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::BadInputFile { path: path.clone(), reason: e.to_string() })?;
        let (cert, _) = crate::assets::parse_webhook_values(&text)
            .map_err(|reason| Error::BadInputFile { path: path.clone(), reason })?;
        let cert = crate::pki::parse_one_cert(&cert).map_err(|p| Error::BadInputFile {
            path,
            reason: format!("webhook.servingCert: {}", p.0),
        })?;
        Ok(cert.not_after <= jiff::Timestamp::now().as_second())
    }

    fn check_assets(assets: &AssetDir) -> Result<()> {
        Self::has_expired(assets).map(drop)
    }

    async fn resolve(ctx: &mut Ctx) -> Result<()> {
        let what = format!("mutatingwebhookconfiguration {}", phases::CONFIGURATION);
        let Some(conn) = &ctx.conn else {
            return Err(Error::Usage(format!("{what}: the cluster is not reachable")));
        };
        objects::mutating_webhook_ca_bundles(&conn.client, phases::CONFIGURATION).await.map(drop)
    }
}

pub async fn run(global: &GlobalOpts, args: &WebhookArgs) -> Result<u8> {
    if args.restore_webhook {
        return restore(global).await;
    }
    let request = Request {
        phase: args.phase.phase(),
        finale: false,
        expired: args.expired,
        new_run: args.new_run,
    };
    engine::run::<Webhook>(global, request).await
}

/// `--restore-webhook`: the webhook configuration kept by the latest run, created again.
async fn restore(global: &GlobalOpts) -> Result<u8> {
    let dir = &crate::assets::single_asset_dir(&global.assets_dirs, "webhook")?;
    let assets = AssetDir::open(dir)?;
    let root = runs_root(&assets);
    // Not while a rotation runs: it may be about to delete or re-create the configuration.
    let _lock = if global.dry_run { None } else { Some(RotationLock::acquire(&root)?) };
    let run = RunDir::latest(&root, Webhook::NAME)?.ok_or_else(|| {
        Error::Usage(
            "no webhook rotation was run on this asset dir: there is nothing to restore".into(),
        )
    })?;
    if run.journal.state == RunState::Finished {
        return Err(Error::Precondition {
            phase: "restore-webhook",
            reason: format!(
                "webhook rotation {} finished: lokoctl created the webhook configuration again with the new certificate, and the kept one would trust the old; nothing to restore",
                run.journal.run
            ),
        });
    }
    let path = run.backup_path(phases::MANIFEST_BACKUP);
    let text = std::fs::read(&path).map_err(|e| Error::Journal {
        path: path.clone(),
        reason: format!("holds no webhook configuration ({e}): only the expired path deletes it"),
    })?;
    let manifest: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::Journal { path: path.clone(), reason: e.to_string() })?;
    let conn = Connection::open(&global.kube, Some(&assets), false, global.verbose).await?;
    conn.verify_identity(&assets).map_err(Error::WrongCluster)?;
    if global.dry_run {
        println!(
            "plan (dry run, nothing is changed):\n   1. api   CREATE mutatingwebhookconfiguration {} from {} unless it exists",
            phases::CONFIGURATION,
            path.display()
        );
        return Ok(exit::OK);
    }
    crate::output::confirm(
        global.yes,
        &format!(
            "create mutatingwebhookconfiguration {} again from {}?",
            phases::CONFIGURATION,
            path.display()
        ),
    )?;
    if objects::restore_mutating_webhook(&conn.client, &manifest).await? {
        println!(
            "mutatingwebhookconfiguration {} created again from {}",
            phases::CONFIGURATION,
            path.display()
        );
    } else {
        println!(
            "mutatingwebhookconfiguration {} exists already: nothing to restore",
            phases::CONFIGURATION
        );
    }
    Ok(exit::OK)
}
