//! `kubectl certrotate renew`: every other certificate of the cluster re-issued the way
//! lokoctl's `cluster certificate rotate` does it (CA keys kept, so old and new certificates
//! verify under each other), phase by phase, backed up, planned and resumable.
//!
//! `backup`, `taint` and `certificates` work from the asset dir and the Terraform state alone
//! (the cluster is not asked anything: the next step is the cluster whose certificates have
//! all expired); `etcd` proves every member uses the new etcd certificates (pushed by
//! Lokomotive v0.8+'s own Terraform; v0.5-v0.7 are refused before any change unless the
//! operator takes those steps, [`nodes`]); `control-plane` (lokoctl), `tokens`, `restart` and
//! `verify` put the new certificates in use and prove it (docs/renew.md). Each phase is a module of [`phases`];
//! running them (journal, lock, plan, resume) is the shared [`crate::rotation::engine`].

pub mod nodes;
pub mod phases;
pub mod probe;

use std::sync::OnceLock;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::assets::AssetDir;
use crate::cli::{GlobalOpts, RenewArgs};
use crate::error::{Error, Result};
use crate::rotation::context::Ctx;
use crate::rotation::engine::{self, PhaseUnit, Procedure, Request};

/// A phase of `renew`; its doc comments are the `--phase` help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Keep tls/, auth/, the chart values holding certificates or keys, and the Terraform
    /// state in the run's folder.
    Backup,
    /// terraform taint lokoctl's list: every leaf certificate and non-CA key, the three CA
    /// certificates (never a CA key, never the service-account key).
    Taint,
    /// terraform apply -parallelism=1, then prove the new certificates (CA keys kept).
    Certificates,
    /// Every etcd member serves the new server and peer certificates and accepts the new client
    /// certificate (pushed by the certificates phase's apply on Lokomotive v0.8+).
    Etcd,
    /// Roll back releases left pending, then lokoctl cluster apply --confirm
    /// --skip-pre-update-health-check --upgrade-kubelets; the releases and Secrets hold the new
    /// certificates.
    #[value(name = "control-plane")]
    #[serde(rename = "control-plane")]
    ControlPlane,
    /// Wait until every ServiceAccount token Secret's ca.crt is the new kube CA.
    Tokens,
    /// Restart lokoctl's list and the extension API servers as kubectl rollout restart, wait as
    /// kubectl rollout status (kube-apiserver only when control-plane's upgrade did not already
    /// roll it onto its new Secret); every APIService Available.
    Restart,
    /// The API server and etcd serve the new certificates, the new admin kubeconfig works, the
    /// webhook mutates, every node is Ready, status finds every row OK and renewed.
    Verify,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Taint => "taint",
            Self::Certificates => "certificates",
            Self::Etcd => "etcd",
            Self::ControlPlane => "control-plane",
            Self::Tokens => "tokens",
            Self::Restart => "restart",
            Self::Verify => "verify",
        }
    }
}

/// The kube CA certificate, whose expiry names the run's path (both paths are the same
/// phases for now).
const KUBE_CA: &str = "tls/ca.crt";

/// What `renew` is asked beyond the phase: how this machine reaches the etcd members, and
/// whether the operator takes the node steps Lokomotive v0.5-v0.7 does not.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub etcd_endpoints: Vec<String>,
    pub etcd_peer_endpoints: Vec<String>,
    pub nodes_updated_by_hand: bool,
}

/// Set once by [`run`], before the engine asks the phases anything.
static OPTIONS: OnceLock<Options> = OnceLock::new();

/// The options of this invocation (the defaults where none were set: a lib test).
pub fn options() -> &'static Options {
    OPTIONS.get_or_init(Options::default)
}

pub struct Renew;

impl Procedure for Renew {
    type Phase = Phase;

    const NAME: &'static str = "renew";
    const REPORT_KIND: &'static str = "Renewal";
    const PLAN_KIND: &'static str = "RenewalPlan";

    fn path(_expired: bool) -> &'static [Phase] {
        &[
            Phase::Backup,
            Phase::Taint,
            Phase::Certificates,
            Phase::Etcd,
            Phase::ControlPlane,
            Phase::Tokens,
            Phase::Restart,
            Phase::Verify,
        ]
    }

    fn finale() -> Option<Phase> {
        None
    }

    fn phase_name(phase: Phase) -> &'static str {
        phase.name()
    }

    fn has_expired(assets: &AssetDir) -> Result<bool> {
        assets.cert_has_expired(KUBE_CA)
    }

    fn check_assets(assets: &AssetDir) -> Result<()> {
        Self::has_expired(assets).map(drop)
    }

    fn unit(phase: Phase) -> &'static dyn PhaseUnit {
        phases::unit(phase)
    }

    /// Before anything changes: what the cluster's own mechanisms do for its nodes (refused
    /// unless `--nodes-updated-by-hand` when they do not push the etcd certificates or
    /// re-sync the nodes' CA: Lokomotive v0.5-v0.7), and the etcd members named right. Then
    /// the extension API servers the restart phase covers, for the plan, when the cluster
    /// answers: `backup`, `taint` and `certificates` need the asset dir and the state alone,
    /// so a cluster that cannot be read does not stop them (the plan says "not resolved").
    async fn resolve(ctx: &mut Ctx) -> Result<()> {
        let certificates_done =
            ctx.run.as_ref().is_some_and(|r| r.phase_done(Phase::Certificates.name()));
        if !certificates_done && let Some(terraform) = &ctx.terraform {
            // What the cluster was before this run changed anything: an apply cut off half
            // way leaves copy-controller-secrets destroyed and the values being re-written.
            let state = match phases::kept_state(ctx)? {
                Some(kept) => kept,
                None => terraform.state().await?,
            };
            let kubelet = phases::backup::kept_or_current(ctx, nodes::KUBELET_VALUES).ok();
            let kubelet = kubelet.as_ref().map(|(_, bytes)| String::from_utf8_lossy(bytes));
            let evidence = nodes::Evidence::read(&state, kubelet.as_deref());
            if let Some(refusal) = nodes::refusal(&evidence)
                && !options().nodes_updated_by_hand
            {
                return Err(Error::Precondition { phase: Phase::Etcd.name(), reason: refusal });
            }
        }
        phases::etcd::resolve_members(ctx)?;
        if let Some(conn) = &ctx.conn
            && let Ok(found) = crate::k8s::discovery::discover(&conn.client).await
        {
            ctx.extension_servers = Some(found.workloads().iter().map(|w| w.to_string()).collect());
        }
        Ok(())
    }
}

pub async fn run(global: &GlobalOpts, args: &RenewArgs) -> Result<u8> {
    let _ = OPTIONS.set(Options {
        etcd_endpoints: args.etcd_endpoints.clone(),
        etcd_peer_endpoints: args.etcd_peer_endpoints.clone(),
        nodes_updated_by_hand: args.nodes_updated_by_hand,
    });
    let request =
        Request { phase: args.phase.phase(), finale: false, expired: false, new_run: args.new_run };
    engine::run::<Renew>(global, request).await
}
