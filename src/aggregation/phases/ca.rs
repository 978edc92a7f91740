//! `ca`: a new CA key and certificate (terraform taint of the key, targeted apply), found in
//! the state (and, on the not-expired path, in the files).

use super::actions::{TerraformApply, destroyed_not_created};
use super::state::{old_ca, state_ca};
use super::{CA_CERT, CA_KEY, ca_cert, ca_key};
use crate::aggregation::Phase;
use crate::error::{Error, Result};
use crate::pki;
use crate::rotation::context::Ctx;
use crate::rotation::engine::{Needs, PhaseUnit};
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};
use crate::tools::Command;

pub struct Ca;

impl PhaseUnit for Ca {
    fn needs(&self) -> Needs {
        Needs { terraform: true, ..Needs::default() }
    }

    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        let expired = ctx.expired;
        let targets = if expired {
            vec![ca_cert()]
        } else {
            super::resources("aggregation-ca").files.to_vec()
        };
        vec![
            Planned::command(
                &ctx.taint_command(ca_key()),
                " (skipped when the state already holds a new or tainted CA key)",
                Step::TaintKey,
            ),
            TerraformApply::planned(ctx, targets),
            Planned::new(
                StepKind::Check,
                if expired {
                    "the state holds a new CA certificate, not the backed-up one".into()
                } else {
                    format!(
                        "{CA_CERT} and {CA_KEY} hold a new CA, equal to the state, key matching"
                    )
                },
                Step::Verify,
            ),
        ]
    }

    fn found_done<'a>(&'a self, ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(found_done(ctx))
    }
}

async fn found_done(ctx: &Ctx) -> Result<Option<String>> {
    let state = ctx.terraform()?.state().await?;
    let new = state_ca(ctx, &state)?;
    let old = old_ca(ctx).await?;
    let key_tainted = state.instance(&ctx.addr(ca_key())).is_some_and(|i| i.tainted);
    if new.sha256 == old.sha256 || key_tainted {
        return Ok(None);
    }
    if ctx.expired {
        return Ok(Some("the state already holds a new CA".into()));
    }
    let file = ctx.file_cert(CA_CERT)?;
    if file.sha256 != new.sha256 {
        return Ok(None);
    }
    if ctx.key_matches(CA_KEY, &file) {
        return Ok(Some("the state and the files already hold a new CA".into()));
    }
    // Asked before a run exists (a phase after `ca` with no run in progress): the manual
    // procedure's targeted apply leaves the key file stale, which the new run's backup
    // re-writes from the state; within a run a stale key file means `ca`'s apply did not
    // finish.
    let state_key = state.attribute(&ctx.addr(ca_key()), "public_key_pem").unwrap_or_default();
    let by_hand = ctx.run.is_none()
        && pki::public_key_half(state_key.as_bytes()).ok() == pki::certificate_half(&file);
    Ok(by_hand.then(|| {
        format!("the state and {CA_CERT} hold a new CA (its key file is re-written by the backup)")
    }))
}

enum Step {
    /// `terraform taint` the CA key, unless the state already holds a new or tainted one.
    TaintKey,
    /// The state holds a new CA; on the not-expired path the asset dir's files hold it too.
    Verify,
}

impl Action for Step {
    fn command(&self, ctx: &Ctx) -> Result<Option<Command>> {
        Ok(match self {
            Self::TaintKey => Some(ctx.terraform()?.taint_command(&ctx.addr(ca_key()))),
            Self::Verify => None,
        })
    }

    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::TaintKey => Box::pin(taint_key(ctx)),
            Self::Verify => Box::pin(verify(ctx)),
        }
    }
}

async fn taint_key(ctx: &mut Ctx) -> Result<String> {
    let state = ctx.terraform()?.state().await?;
    let address = ctx.addr(ca_key());
    let Some(key) = state.instance(&address) else {
        return Ok(destroyed_not_created(&address));
    };
    if key.tainted {
        return Ok(
            "skipped: the CA key is already tainted (an earlier run stopped before applying)"
                .into(),
        );
    }
    let state_key =
        key.attributes.get("public_key_pem").and_then(|v| v.as_str()).unwrap_or_default();
    let old = old_ca(ctx).await?;
    let same_key = pki::public_key_half(state_key.as_bytes()).ok() == pki::certificate_half(&old);
    if !same_key {
        return Ok("skipped: the state already holds a new CA key".into());
    }
    let taint = Step::TaintKey.command(ctx)?.expect("a taint runs a command");
    ctx.terraform()?.change(taint).await?;
    Ok("tainted".into())
}

async fn verify(ctx: &mut Ctx) -> Result<String> {
    let fail = |reason: String| Error::Verification { phase: Phase::Ca.name(), reason };
    let state = ctx.terraform()?.state().await?;
    let new = state_ca(ctx, &state)?;
    let old = old_ca(ctx).await?;
    if new.sha256 == old.sha256 {
        return Err(fail("the state still holds the backed-up CA".into()));
    }
    if !ctx.expired {
        let file = ctx.file_cert(CA_CERT)?;
        if file.sha256 != new.sha256 {
            return Err(fail(format!("{CA_CERT} is not the state's CA")));
        }
        if !ctx.key_matches(CA_KEY, &file) {
            return Err(fail(format!("{CA_KEY} does not match the new CA")));
        }
    }
    ctx.fingerprint("newCa", &new.sha256)?;
    Ok(format!("new CA {}", new.sha256))
}
