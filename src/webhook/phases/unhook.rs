//! `unhook` (expired path only): delete the webhook configuration, whose every call fails
//! with an expired certificate (so Helm could not upgrade); lokoctl creates it again.

use super::CONFIGURATION;
use crate::k8s::objects;
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};

pub struct Unhook;

impl PhaseUnit for Unhook {
    fn steps(&self, _: &Ctx) -> Vec<Planned> {
        vec![Planned::new(
            StepKind::Api,
            format!(
                "DELETE mutatingwebhookconfiguration {CONFIGURATION} (an expired certificate makes every call to it fail; lokoctl creates it again)"
            ),
            Delete,
        )]
    }

    fn found_done<'a>(&'a self, ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(async move {
            let bundles =
                objects::mutating_webhook_ca_bundles(&ctx.conn()?.client, CONFIGURATION).await?;
            Ok(bundles
                .is_none()
                .then(|| format!("mutatingwebhookconfiguration {CONFIGURATION} is already gone")))
        })
    }
}

struct Delete;

impl Action for Delete {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        Box::pin(async move {
            let deleted =
                objects::delete_mutating_webhook(&ctx.conn()?.client, CONFIGURATION).await?;
            Ok(format!("{deleted:?}"))
        })
    }
}
