//! `restart`: the extension API servers restarted so that they load the new CA.

use super::actions::restart_extension_servers;
use crate::aggregation::Phase;
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;
use crate::rotation::step::Planned;

pub struct Restart;

impl PhaseUnit for Restart {
    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        vec![restart_extension_servers(ctx, Phase::Restart, |servers| {
            format!(
                "restart every extension API server ({servers}) as kubectl rollout restart, wait as kubectl rollout status, then for their APIServices to be Available and answer through the aggregator; read which CA each pod loaded"
            )
        })]
    }
}
