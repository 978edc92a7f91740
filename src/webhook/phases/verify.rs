//! `verify`: the cluster serves the new certificate (Secret, caBundle), and a real admission
//! call shows the API server reaches the webhook over TLS with it.

use super::{CONFIGURATION, NAMESPACE, SECRET, served_problem, values_pair};
use crate::error::Error;
use crate::k8s::objects;
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};
use crate::webhook::Phase;

pub struct Verify;

impl PhaseUnit for Verify {
    fn steps(&self, _: &Ctx) -> Vec<Planned> {
        vec![
            Planned::new(
                StepKind::Check,
                format!(
                    "secret {NAMESPACE}/{SECRET} holds the new certificate and its key; mutatingwebhookconfiguration {CONFIGURATION} exists and its caBundle is the new certificate"
                ),
                Step::Served,
            ),
            Planned::new(
                StepKind::Api,
                "a real admission call: create a throw-away namespace, check its default ServiceAccount was mutated (automountServiceAccountToken: false), delete it",
                Step::Admission,
            ),
        ]
    }
}

enum Step {
    Served,
    Admission,
}

fn fail(reason: String) -> Error {
    Error::Verification { phase: Phase::Verify.name(), reason }
}

impl Action for Step {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::Served => Box::pin(async move {
                if let Some(problem) = served_problem(ctx).await? {
                    return Err(fail(problem));
                }
                // Again here: a `certificate` phase found done skipped its own record.
                let (file, _) = values_pair(ctx)?;
                ctx.fingerprint("newWebhook", &file.sha256)?;
                Ok("secret and caBundle carry the new certificate".into())
            }),
            Self::Admission => Box::pin(async move {
                if objects::default_service_account_mutated(&ctx.conn()?.client, ctx.timeout)
                    .await?
                {
                    Ok("the API server called the webhook over TLS and it mutated the new default ServiceAccount".into())
                } else {
                    Err(fail("a new namespace's default ServiceAccount was not mutated: the API server cannot call the webhook (is the new certificate served?)".into()))
                }
            }),
        }
    }
}
