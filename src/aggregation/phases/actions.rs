//! The steps several phases take: a targeted `terraform apply`, the `helm upgrade` of
//! kube-apiserver with the wait for its rollout, the restart of the extension API servers.

use base64::Engine as _;
use serde_json::json;

use super::state::{backup_name, new_ca, release};
use super::{CA_CERT, CHART, CLIENT_CERT, NAMESPACE};
use crate::aggregation::Phase;
use crate::error::{Error, Result};
use crate::k8s::rollout;
use crate::rotation::context::Ctx;
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};
use crate::tools::Command;

/// `terraform apply -target …` of these resources of the bootkube module.
pub(super) struct TerraformApply(pub Vec<&'static str>);

impl TerraformApply {
    pub(super) fn planned(ctx: &Ctx, targets: Vec<&'static str>) -> Planned {
        Planned::command(&ctx.apply_command(&targets), "", Self(targets))
    }
}

impl Action for TerraformApply {
    fn command(&self, ctx: &Ctx) -> Result<Option<Command>> {
        let targets: Vec<String> = self.0.iter().map(|t| ctx.addr(t)).collect();
        Ok(Some(ctx.terraform()?.apply_command(&targets)))
    }

    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        Box::pin(async move {
            let apply = self.command(ctx)?.expect("an apply runs a command");
            ctx.terraform()?.change(apply).await?;
            Ok("applied".into())
        })
    }
}

/// A taint step's outcome when its resource is missing from the state: terraform was killed
/// between destroying the tainted instance and creating the new one, and the apply that
/// follows creates it.
pub(super) fn destroyed_not_created(address: &str) -> String {
    format!(
        "skipped: the state has no {address} (destroyed by an interrupted apply); the apply creates it"
    )
}

/// The value of the kube-apiserver chart a `helm upgrade` sets.
#[derive(Debug, Clone, Copy)]
pub(super) enum ChartValue {
    /// `apiserver.aggregationCaCert` = base64(old CA + new CA).
    CaBundle,
    /// `apiserver.aggregationClientCert` = base64(the new client certificate).
    ClientCert,
}

impl ChartValue {
    /// What the values file sets, as plans and command lines show it.
    fn shown(self) -> String {
        match self {
            Self::CaBundle => "apiserver.aggregationCaCert = base64(old CA + new CA)".into(),
            Self::ClientCert => format!("apiserver.aggregationClientCert = base64({CLIENT_CERT})"),
        }
    }
}

/// A helm upgrade of kube-apiserver setting one value, and the wait for the rollout it starts.
pub(super) fn upgrade_steps(ctx: &Ctx, value: ChartValue) -> Vec<Planned> {
    let chart = ctx.asset(CHART);
    vec![
        Planned::command(
            &ctx.plan_helm().plan_upgrade(&release(&chart), &value.shown()),
            " (a release left pending is rolled back to its latest revision first; a failed upgrade is retried)",
            HelmUpgrade(value),
        ),
        Planned::new(
            StepKind::Api,
            format!("watch the kube-apiserver rollout in {NAMESPACE} until complete"),
            WaitKubeApiserver,
        ),
    ]
}

/// `helm upgrade kube-apiserver` with one value set from the asset dir.
struct HelmUpgrade(ChartValue);

impl Action for HelmUpgrade {
    fn command(&self, ctx: &Ctx) -> Result<Option<Command>> {
        // The real file is written by the upgrade itself; every line shows it as what it
        // sets, so any path stands for it here (and nothing is written).
        let chart = ctx.asset(CHART);
        Ok(Some(ctx.helm()?.upgrade_command(&release(&chart), "values.json", &self.0.shown())?))
    }

    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        Box::pin(helm_upgrade(ctx, self.0))
    }
}

async fn helm_upgrade(ctx: &Ctx, value: ChartValue) -> Result<String> {
    let (key, data) = match value {
        ChartValue::CaBundle => {
            let old = ctx.read_backup(backup_name(CA_CERT))?;
            let new = ctx.read_asset(CA_CERT)?;
            let mut bundle = old;
            if !bundle.ends_with(b"\n") {
                bundle.push(b'\n');
            }
            bundle.extend_from_slice(&new);
            ("aggregationCaCert", bundle)
        }
        ChartValue::ClientCert => ("aggregationClientCert", ctx.read_asset(CLIENT_CERT)?),
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
    let values = json!({"apiserver": {key: encoded}});
    let chart = ctx.asset(CHART);
    let shown = &value.shown();
    let in_place =
        |current: &serde_json::Value| current["apiserver"][key].as_str() == Some(encoded.as_str());
    let notes = std::sync::Mutex::new(Vec::new());
    let note = |line: &str, outcome: &str| {
        notes.lock().expect("notes").push((line.to_string(), outcome.to_string()))
    };
    let result =
        ctx.helm()?.upgrade_with_recovery(&release(&chart), &values, shown, in_place, &note).await;
    let notes = notes.into_inner().expect("notes");
    let summary = notes.iter().map(|(l, o)| format!("{l}: {o}")).collect::<Vec<_>>().join("; ");
    result?;
    Ok(summary)
}

/// Wait for the kube-apiserver rollout the upgrade started.
struct WaitKubeApiserver;

impl Action for WaitKubeApiserver {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        Box::pin(async move {
            let conn = ctx.conn()?;
            let report = ctx.reporter();
            let workload = rollout::wait_kube_apiserver(&conn.client, ctx.timeout, &report).await?;
            Ok(format!("{workload} rolled out"))
        })
    }
}

/// Restart every extension API server (in `phase`) and wait for their APIServices; the plan
/// line is `describe` of the workloads, as far as they are resolved.
pub(super) fn restart_extension_servers(
    ctx: &Ctx,
    phase: Phase,
    describe: impl FnOnce(&str) -> String,
) -> Planned {
    let servers: String = match &ctx.extension_servers {
        Some(found) if found.is_empty() => "none found now".into(),
        Some(found) => found.join(", "),
        None => "not resolved".into(),
    };
    Planned::new(StepKind::Api, describe(&servers), RestartExtensionServers(phase))
}

struct RestartExtensionServers(Phase);

impl Action for RestartExtensionServers {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        Box::pin(async move {
            let new = new_ca(ctx).await?;
            let ours_since = ctx.run()?.phase_first_began(self.0.name());
            let conn = ctx.conn()?;
            let done =
                crate::extension_servers::restart_for_rotation(conn, ours_since, ctx.timeout, &new)
                    .await?;
            if !done.problems.is_empty() {
                return Err(Error::Verification {
                    phase: self.0.name(),
                    reason: done.problems.join("; "),
                });
            }
            let loaded = if done.loaded_ca.is_empty() {
                String::new()
            } else {
                format!("; {}", done.loaded_ca.join(", "))
            };
            Ok(format!("restarted {} workload(s), APIServices Available{loaded}", done.restarted))
        })
    }
}
