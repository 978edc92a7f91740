//! `restart`: the webhook's Deployment restarted (it reads its certificate only at start).

use super::{DEPLOYMENT, NAMESPACE};
use crate::k8s::rollout;
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};
use crate::webhook::Phase;

pub struct Restart;

impl PhaseUnit for Restart {
    fn steps(&self, _: &Ctx) -> Vec<Planned> {
        vec![Planned::new(
            StepKind::Api,
            format!(
                "restart deployment/{DEPLOYMENT} -n {NAMESPACE} (kubectl rollout restart) and wait as kubectl rollout status"
            ),
            Rollout,
        )]
    }
}

struct Rollout;

impl Action for Rollout {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        Box::pin(async move {
            let report = ctx.reporter();
            // A resumed restart waits for its own rollout, begun when the phase first began.
            rollout::restart_deployment(
                &ctx.conn()?.client,
                NAMESPACE,
                DEPLOYMENT,
                ctx.run()?.phase_first_began(Phase::Restart.name()),
                ctx.timeout,
                &report,
            )
            .await?;
            Ok(format!("deployment/{DEPLOYMENT} rolled out"))
        })
    }
}
