//! `kubectl certrotate aggregation`: the aggregation (front-proxy) CA and client certificate,
//! rotated phase by phase as the manual procedure does, resumable after any interruption.
//!
//! Not expired: backup, ca, bundle, restart, client, apply, and cleanup on request. Already
//! expired: backup, ca, apply, restart. Each phase is a module of [`phases`]; running them
//! (journal, lock, plan, resume) is the shared [`crate::rotation::engine`].

mod old_ca;
pub mod phases;

use crate::assets::AssetDir;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::cli::{AggregationArgs, GlobalOpts};
use crate::error::{Error, Result};
use crate::rotation::context::Ctx;
use crate::rotation::engine::{self, PhaseUnit, Procedure, Request};

/// A phase of the aggregation rotation; its doc comments are the `--phase` help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Keep the current CA certificate and key in the run's journal folder.
    Backup,
    /// New CA key and certificate (terraform taint + targeted apply).
    Ca,
    /// kube-apiserver trusts old + new CA (helm upgrade).
    Bundle,
    /// Restart the extension API servers so they load the new CA.
    Restart,
    /// New client certificate signed by the new CA (terraform, helm upgrade).
    Client,
    /// lokoctl cluster apply, then check nothing is left to apply.
    Apply,
    /// Drop the old CA: recreate extension-apiserver-authentication, restart everything.
    Cleanup,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Ca => "ca",
            Self::Bundle => "bundle",
            Self::Restart => "restart",
            Self::Client => "client",
            Self::Apply => "apply",
            Self::Cleanup => "cleanup",
        }
    }
}

pub struct Aggregation;

impl Procedure for Aggregation {
    type Phase = Phase;

    const NAME: &'static str = "aggregation";
    const REPORT_KIND: &'static str = "AggregationRotation";
    const PLAN_KIND: &'static str = "AggregationPlan";

    fn path(expired: bool) -> &'static [Phase] {
        if expired {
            &[Phase::Backup, Phase::Ca, Phase::Apply, Phase::Restart]
        } else {
            &[Phase::Backup, Phase::Ca, Phase::Bundle, Phase::Restart, Phase::Client, Phase::Apply]
        }
    }

    fn finale() -> Option<Phase> {
        Some(Phase::Cleanup)
    }

    fn phase_name(phase: Phase) -> &'static str {
        phase.name()
    }

    fn unit(phase: Phase) -> &'static dyn PhaseUnit {
        phases::unit(phase)
    }

    fn has_expired(assets: &AssetDir) -> Result<bool> {
        assets.cert_has_expired(phases::CA_CERT)
    }

    fn check_assets(assets: &AssetDir) -> Result<()> {
        if assets.aggregation_enabled() {
            return Ok(());
        }
        Err(Error::Usage(format!(
            "{} has no aggregation CA (enable_aggregation = false): there is nothing to rotate",
            assets.root().display()
        )))
    }

    async fn resolve(ctx: &mut Ctx) -> Result<()> {
        let what = "which extension API servers the restarts cover";
        let Some(conn) = &ctx.conn else {
            return Err(Error::Usage(format!("{what}: the cluster is not reachable")));
        };
        let found = crate::k8s::discovery::discover(&conn.client).await?;
        ctx.extension_servers = Some(found.workloads().iter().map(|w| w.to_string()).collect());
        Ok(())
    }
}

pub async fn run(global: &GlobalOpts, args: &AggregationArgs) -> Result<u8> {
    let request = Request {
        phase: args.phase.phase(),
        finale: args.cleanup,
        expired: args.expired,
        new_run: args.new_run,
    };
    engine::run::<Aggregation>(global, request).await
}
