//! `backup`: keep `lokomotive.yaml` (and, on the expired path, the webhook configuration the
//! `unhook` phase deletes) in the run's backup folder.

use super::{CONFIGURATION, MANIFEST_BACKUP, VALUES_BACKUP, values_pair};
use crate::assets::LOKOMOTIVE_VALUES;
use crate::error::Result;
use crate::k8s::objects;
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};

pub struct Backup;

impl PhaseUnit for Backup {
    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        let mut what = format!("copy {LOKOMOTIVE_VALUES} into the run's backup folder (0600)");
        if ctx.expired {
            what.push_str(&format!(
                "; keep mutatingwebhookconfiguration {CONFIGURATION} as a manifest there"
            ));
        }
        vec![Planned::new(StepKind::File, what, Copy)]
    }
}

struct Copy;

impl Action for Copy {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        Box::pin(copy(ctx))
    }
}

async fn copy(ctx: &mut Ctx) -> Result<String> {
    let (cert, _) = values_pair(ctx)?;
    let bytes = ctx.read_asset(LOKOMOTIVE_VALUES)?;
    ctx.run_mut().write_backup(VALUES_BACKUP, &bytes)?;
    ctx.fingerprint("oldWebhook", &cert.sha256)?;
    if !ctx.expired {
        return Ok("backed up".into());
    }
    match objects::mutating_webhook_manifest(&ctx.conn()?.client, CONFIGURATION).await? {
        Some(manifest) => {
            let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
            let path = ctx.run_mut().write_backup(MANIFEST_BACKUP, &text)?;
            Ok(format!("backed up; webhook configuration kept in {}", path.display()))
        }
        None => {
            Ok(format!("backed up; mutatingwebhookconfiguration {CONFIGURATION} did not exist"))
        }
    }
}
