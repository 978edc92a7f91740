//! `client`: a new client certificate signed by the new CA (terraform taint, targeted apply),
//! served by kube-apiserver (helm upgrade), the APIServices Available again.

use super::actions::{ChartValue, TerraformApply, destroyed_not_created, upgrade_steps};
use super::state::{new_ca, release_deployed, secret_cas, state_problem, until};
use super::{CLIENT_CERT, NAMESPACE, SECRET, client_cert};
use crate::aggregation::Phase;
use crate::error::{Error, Result};
use crate::pki::{self, CertInfo};
use crate::rotation::context::Ctx;
use crate::rotation::engine::{Needs, PhaseUnit};
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};
use crate::tools::Command;

pub struct Client;

impl PhaseUnit for Client {
    fn needs(&self) -> Needs {
        Needs { terraform: true, helm: true, ..Needs::default() }
    }

    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        let mut steps = vec![
            Planned::command(
                &ctx.taint_command(client_cert()),
                " (skipped when the state's certificate is already signed by the new CA)",
                Step::TaintCert,
            ),
            TerraformApply::planned(ctx, vec![client_cert_file()]),
        ];
        steps.extend(upgrade_steps(ctx, ChartValue::ClientCert));
        steps.push(Planned::new(
            StepKind::Check,
            format!(
                "secret {NAMESPACE}/{SECRET} serves the new client certificate, signed by the new CA; APIServices Available"
            ),
            Step::Verify,
        ));
        steps
    }

    fn found_done<'a>(&'a self, ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(async move {
            if !release_deployed(ctx).await? {
                return Ok(None);
            }
            let new = new_ca(ctx).await?;
            let served = client_served(ctx, &new).await?;
            Ok(served
                .is_ok()
                .then(|| "the cluster already serves a client certificate of the new CA".into()))
        })
    }
}

/// The `local_file` that writes the client certificate (not its key).
fn client_cert_file() -> &'static str {
    let files = super::resources("aggregation-client").files;
    files.iter().find(|f| f.contains("-crt")).expect("the client certificate has a local_file")
}

async fn client_served(ctx: &Ctx, new: &CertInfo) -> Result<std::result::Result<(), String>> {
    let served = secret_cas(ctx, "aggregation-client.crt").await?;
    let file = ctx.file_cert(CLIENT_CERT)?;
    match served.first() {
        Some(cert) if cert.sha256 == file.sha256 && pki::issued_by(cert, new) => Ok(Ok(())),
        _ => Ok(Err(format!(
            "secret {NAMESPACE}/{SECRET} does not serve {CLIENT_CERT} signed by the new CA"
        ))),
    }
}

enum Step {
    /// `terraform taint` the client certificate, unless the state's is already new.
    TaintCert,
    /// The Secret serves a client certificate of the new CA.
    Verify,
}

impl Action for Step {
    fn command(&self, ctx: &Ctx) -> Result<Option<Command>> {
        Ok(match self {
            Self::TaintCert => Some(ctx.terraform()?.taint_command(&ctx.addr(client_cert()))),
            Self::Verify => None,
        })
    }

    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::TaintCert => Box::pin(taint_cert(ctx)),
            Self::Verify => Box::pin(verify(ctx)),
        }
    }
}

async fn taint_cert(ctx: &mut Ctx) -> Result<String> {
    let state = ctx.terraform()?.state().await?;
    let address = ctx.addr(client_cert());
    let Some(instance) = state.instance(&address) else {
        return Ok(destroyed_not_created(&address));
    };
    if instance.tainted {
        return Ok("skipped: already tainted".into());
    }
    let pem = instance.attributes.get("cert_pem").and_then(|v| v.as_str()).unwrap_or_default();
    let cert = pki::parse_one_cert(pem.as_bytes()).map_err(|p| state_problem(ctx, &address, p))?;
    if pki::issued_by(&cert, &new_ca(ctx).await?) {
        return Ok("skipped: the state's client certificate is already signed by the new CA".into());
    }
    let taint = Step::TaintCert.command(ctx)?.expect("a taint runs a command");
    ctx.terraform()?.change(taint).await?;
    Ok("tainted".into())
}

async fn verify(ctx: &mut Ctx) -> Result<String> {
    let new = new_ca(ctx).await?;
    until(ctx, Phase::Client, "the new client certificate served", async || {
        client_served(ctx, &new).await
    })
    .await?;
    let client = &ctx.conn()?.client;
    let served = crate::k8s::discovery::discover(client).await?.restarted_api_services();
    crate::k8s::discovery::probe_until(client, &served, ctx.timeout)
        .await
        .map_err(|why| Error::Verification { phase: Phase::Client.name(), reason: why })?;
    let client = ctx.file_cert(CLIENT_CERT)?;
    ctx.fingerprint("newClient", &client.sha256)?;
    Ok("new client certificate served".into())
}
