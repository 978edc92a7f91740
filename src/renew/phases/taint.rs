//! `taint`: lokoctl's list (lokomotive-pki.md §1.10), one `terraform taint` each: every leaf
//! certificate and non-CA key, and the three CA *certificates*. Never a CA key (the
//! re-issued CA certificates keep their public key, so old and new certificates verify under
//! each other) and never the service-account key (it has no certificate, so it never
//! expires, and every token was signed with it). Only addresses the state holds (aggregation
//! off: no `[0]`), and never one the state shows already tainted, or re-issued since the
//! run's backup of it (the state decides, not the journal).

use super::kept_state;
use crate::assets::CREDENTIALS;
use crate::error::{Error, Result};
use crate::renew::Phase;
use crate::rotation::context::Ctx;
use crate::rotation::engine::{Needs, PhaseUnit};
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};
use crate::tools::Command;
use crate::tools::terraform::State;

/// lokoctl's list as it writes it (`certificateResources()` in v0.8.0, v0.9.0 and HEAD), to
/// check [`resources`] against: the model's list is derived, this one is copied.
pub const LOKOCTL_TAINTS: [&str; 19] = [
    "tls_locally_signed_cert.admin",
    "tls_locally_signed_cert.admission-webhook-server",
    "tls_locally_signed_cert.aggregation-client[0]",
    "tls_locally_signed_cert.apiserver",
    "tls_locally_signed_cert.client",
    "tls_locally_signed_cert.kubelet",
    "tls_locally_signed_cert.peer",
    "tls_locally_signed_cert.server",
    "tls_self_signed_cert.aggregation-ca[0]",
    "tls_self_signed_cert.etcd-ca",
    "tls_self_signed_cert.kube-ca",
    "tls_private_key.admin",
    "tls_private_key.admission-webhook-server",
    "tls_private_key.aggregation-client[0]",
    "tls_private_key.apiserver",
    "tls_private_key.client",
    "tls_private_key.kubelet",
    "tls_private_key.peer",
    "tls_private_key.server",
];

/// The resources to taint, relative to the bootkube module, from the asset dir model: the
/// certificate of every credential (the CAs' included), the key of every leaf; with the
/// aggregation resources (`[0]`) when `aggregation`.
pub fn resources(aggregation: bool) -> Vec<&'static str> {
    let renewed = || {
        CREDENTIALS.iter().filter(move |c| c.copy_of.is_none() && (aggregation || !c.aggregation))
    };
    let certificates = renewed().filter_map(|c| c.terraform.cert);
    // A credential without a certificate (the service-account key pair) never expires.
    let keys =
        renewed().filter(|c| !c.is_ca && c.terraform.cert.is_some()).map(|c| c.terraform.key);
    certificates.chain(keys).collect()
}

/// The list for this asset dir (aggregation as its files say).
fn list(ctx: &Ctx) -> Vec<&'static str> {
    resources(ctx.assets.aggregation_enabled())
}

/// Where one address of the list stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// As the backup kept it (or, with no backup yet, not tainted): to taint.
    ToTaint,
    Tainted,
    /// Another instance than the backup's: this run's apply made it already.
    Reissued,
    /// In the backup, not in the state: an apply was cut between destroying the tainted
    /// instance and creating the new one (the next apply creates it).
    Destroyed,
    /// Neither in the state nor in the backup: not part of this cluster (aggregation off).
    Absent,
}

/// Where `address` stands in `state`, against the run's backup of the state (`kept`).
pub fn found(address: &str, state: &State, kept: Option<&State>) -> Found {
    let before = kept.and_then(|k| k.instance(address));
    match state.instance(address) {
        None if before.is_some() => Found::Destroyed,
        None => Found::Absent,
        Some(now) if now.tainted => Found::Tainted,
        Some(now) => match before {
            Some(before) if before.id() != now.id() => Found::Reissued,
            _ => Found::ToTaint,
        },
    }
}

pub struct Taint;

impl PhaseUnit for Taint {
    fn needs(&self) -> Needs {
        Needs { terraform: true, ..Needs::default() }
    }

    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        let mut steps: Vec<Planned> = list(ctx)
            .into_iter()
            .map(|resource| {
                Planned::command(
                    &ctx.taint_command(resource),
                    " (skipped when the state shows it tainted, re-issued since the backup, or absent)",
                    Step::Taint(resource),
                )
            })
            .collect();
        steps.push(Planned::new(
            StepKind::Check,
            "every address of the list is tainted or re-issued since the backup; no CA key and not the service-account key tainted",
            Step::Check,
        ));
        steps
    }

    fn found_done<'a>(&'a self, ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(async move { Ok(tainted(ctx).await?.ok()) })
    }
}

enum Step {
    /// `terraform taint <module>.<resource>`, unless the state shows it tainted or re-issued.
    Taint(&'static str),
    /// Every address of the list is tainted or re-issued.
    Check,
}

impl Action for Step {
    fn command(&self, ctx: &Ctx) -> Result<Option<Command>> {
        Ok(match self {
            Self::Taint(resource) => Some(ctx.terraform()?.taint_command(&ctx.addr(resource))),
            Self::Check => None,
        })
    }

    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::Taint(resource) => Box::pin(taint(ctx, self, resource)),
            Self::Check => Box::pin(async move {
                tainted(ctx)
                    .await?
                    .map_err(|reason| Error::Verification { phase: Phase::Taint.name(), reason })
            }),
        }
    }
}

async fn taint(ctx: &mut Ctx, step: &Step, resource: &str) -> Result<String> {
    let address = ctx.addr(resource);
    let terraform = ctx.terraform()?;
    // One pull both decides and is the state kept before the taint: two per address cost
    // a third of the phase (docs/benchmarks.md).
    let (state, kept_now) = terraform.read_and_keep_state().await?;
    let kept = kept_state(ctx)?;
    Ok(match found(&address, &state, kept.as_ref()) {
        Found::ToTaint => {
            let cmd = step.command(ctx)?.expect("a taint runs a command");
            terraform.change_kept(cmd, kept_now).await?;
            "tainted".into()
        }
        Found::Tainted => "skipped: already tainted".into(),
        Found::Reissued => "skipped: re-issued since the backup".into(),
        Found::Destroyed => {
            "skipped: destroyed by an interrupted apply (the apply creates it)".into()
        }
        Found::Absent => "skipped: not in the state".into(),
    })
}

/// How many addresses of the list stand where (`Found` in declaration order).
fn count(ctx: &Ctx, state: &State, kept: Option<&State>) -> [usize; 5] {
    let mut counts = [0; 5];
    for resource in list(ctx) {
        counts[found(&ctx.addr(resource), state, kept) as usize] += 1;
    }
    counts
}

/// Every address of the list is tainted, re-issued or destroyed (none left to taint), and
/// at least one of them is there at all.
async fn tainted(ctx: &Ctx) -> Result<std::result::Result<String, String>> {
    let state = ctx.terraform()?.state().await?;
    let kept = kept_state(ctx)?;
    let left: Vec<String> = list(ctx)
        .into_iter()
        .map(|r| ctx.addr(r))
        .filter(|a| found(a, &state, kept.as_ref()) == Found::ToTaint)
        .collect();
    if !left.is_empty() {
        return Ok(Err(format!("not tainted: {}", left.join(", "))));
    }
    let [_, tainted, reissued, destroyed, absent] = count(ctx, &state, kept.as_ref());
    if tainted + reissued + destroyed == 0 {
        return Ok(Err("the state holds none of the list: is --module right?".into()));
    }
    Ok(Ok(format!(
        "{tainted} tainted, {reissued} re-issued, {destroyed} to be created by the apply, {absent} not in the state"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(list: &[&'static str]) -> Vec<&'static str> {
        let mut list = list.to_vec();
        list.sort();
        list
    }

    #[test]
    fn the_list_is_lokoctls_and_never_holds_a_ca_key() {
        assert_eq!(sorted(&resources(true)), sorted(&LOKOCTL_TAINTS));
        let without: Vec<&str> =
            LOKOCTL_TAINTS.into_iter().filter(|r| !r.ends_with("[0]")).collect();
        assert_eq!(sorted(&resources(false)), sorted(&without));
        for aggregation in [true, false] {
            let list = resources(aggregation);
            for never in [
                "tls_private_key.kube-ca",
                "tls_private_key.etcd-ca",
                "tls_private_key.aggregation-ca[0]",
                "tls_private_key.service-account",
            ] {
                assert!(!list.contains(&never), "{never} listed (aggregation {aggregation})");
            }
            let mut unique = list.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), list.len(), "an address listed twice");
        }
    }

    const M: &str = "module.aws-x.module.bootkube";

    /// A state of `instances` (`(resource, id, tainted)`), in the bootkube module.
    fn state(instances: &[(&str, &str, bool)]) -> State {
        let resources: Vec<serde_json::Value> = instances
            .iter()
            .map(|(resource, id, tainted)| {
                let (kind, rest) = resource.split_once('.').unwrap();
                let (name, index) = match rest.strip_suffix("[0]") {
                    Some(name) => (name, Some(0)),
                    None => (rest, None),
                };
                let mut instance = serde_json::json!({"attributes": {"id": id}});
                if let Some(i) = index {
                    instance["index_key"] = i.into();
                }
                if *tainted {
                    instance["status"] = "tainted".into();
                }
                serde_json::json!({"module": M, "mode": "managed", "type": kind, "name": name,
                                   "instances": [instance]})
            })
            .collect();
        State::parse(&serde_json::json!({"serial": 3, "resources": resources}).to_string()).unwrap()
    }

    #[test]
    fn the_state_decides_what_is_tainted() {
        let addr = |r: &str| format!("{M}.{r}");
        let kept = state(&[
            ("tls_locally_signed_cert.admin", "1", false),
            ("tls_locally_signed_cert.apiserver", "2", false),
            ("tls_locally_signed_cert.kubelet", "3", false),
            ("tls_self_signed_cert.kube-ca", "4", false),
            ("tls_private_key.admin", "k1", false),
        ]);
        let now = state(&[
            // Re-issued by this run's apply: not tainted again.
            ("tls_locally_signed_cert.admin", "10", false),
            ("tls_locally_signed_cert.apiserver", "2", true),
            ("tls_locally_signed_cert.kubelet", "3", false),
            // tls_self_signed_cert.kube-ca destroyed, not created yet.
            ("tls_private_key.admin", "k1", false),
        ]);
        let cases = [
            ("tls_locally_signed_cert.admin", Found::Reissued),
            ("tls_locally_signed_cert.apiserver", Found::Tainted),
            ("tls_locally_signed_cert.kubelet", Found::ToTaint),
            ("tls_self_signed_cert.kube-ca", Found::Destroyed),
            ("tls_private_key.admin", Found::ToTaint),
            // Aggregation off: no [0] in the state, nor in the backup.
            ("tls_self_signed_cert.aggregation-ca[0]", Found::Absent),
        ];
        for (resource, want) in cases {
            assert_eq!(found(&addr(resource), &now, Some(&kept)), want, "{resource}");
        }
        // Without a backup (no run yet), only a taint shows the work done.
        let admin = addr("tls_locally_signed_cert.admin");
        assert_eq!(found(&admin, &now, None), Found::ToTaint);
        let apiserver = addr("tls_locally_signed_cert.apiserver");
        assert_eq!(found(&apiserver, &now, None), Found::Tainted);
        // The aggregation addresses are counted ones, as the state spells them.
        let with = state(&[("tls_self_signed_cert.aggregation-ca[0]", "5", false)]);
        let aggregation = addr("tls_self_signed_cert.aggregation-ca[0]");
        assert_eq!(found(&aggregation, &with, Some(&with)), Found::ToTaint);
    }
}
