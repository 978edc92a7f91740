//! `tokens`: kube-controller-manager, restarted on its new Secret by the `control-plane`
//! phase's upgrade, republishes its root CA into every ServiceAccount token Secret's `ca.crt`;
//! pods read the CA from there, so nothing is restarted before every one holds the new kube CA
//! certificate (lokoctl waits for the same, lokomotive-pki.md §4.4 step 6). One list, then a
//! watch from its version, bounded by `--timeout`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, WatchParams};

use super::{KUBE_CA, renewed};
use crate::duration::within;
use crate::error::{Error, Result};
use crate::k8s::watch::{self, Change, LastError};
use crate::pki::{self, CertInfo};
use crate::renew::Phase;
use crate::rotation::context::Ctx;
use crate::rotation::engine::PhaseUnit;
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};

/// The Secrets kube-controller-manager's tokens controller keeps.
const TOKEN_TYPE: &str = "type=kubernetes.io/service-account-token";

pub struct Tokens;

impl PhaseUnit for Tokens {
    fn steps(&self, _: &Ctx) -> Vec<Planned> {
        vec![Planned::new(
            StepKind::Api,
            format!(
                "list every secret of {TOKEN_TYPE} (all namespaces), then watch them until each one's ca.crt is the new {KUBE_CA} (kube-controller-manager republishes it), within --timeout"
            ),
            Wait,
        )]
    }

    fn found_done<'a>(&'a self, ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(async move {
            if !renewed(ctx)? {
                return Ok(None);
            }
            let new = ctx.file_cert(KUBE_CA)?;
            let api: Api<Secret> = Api::all(ctx.conn()?.client.clone());
            let (tokens, _) = list(&api, &new).await?;
            Ok(left_over(&tokens)
                .is_empty()
                .then(|| format!("all {} token secrets hold the new kube CA", tokens.len())))
        })
    }
}

/// Whether `ca.crt` is the new CA certificate alone.
pub fn holds_only(ca_crt: Option<&[u8]>, new: &CertInfo) -> bool {
    ca_crt
        .and_then(|pem| pki::parse_certs(pem).ok())
        .is_some_and(|certs| !certs.is_empty() && certs.iter().all(|c| c.sha256 == new.sha256))
}

fn judged(secret: &Secret, new: &CertInfo) -> bool {
    let ca = secret.data.as_ref().and_then(|d| d.get("ca.crt")).map(|b| b.0.as_slice());
    holds_only(ca, new)
}

/// The token Secrets by `namespace/name`, whether each holds the new CA, and the list's
/// version.
async fn list(api: &Api<Secret>, new: &CertInfo) -> Result<(BTreeMap<String, bool>, String)> {
    let params = ListParams::default().fields(TOKEN_TYPE);
    let list = api
        .list(&params)
        .await
        .map_err(|e| Error::kube("list the ServiceAccount token secrets", e))?;
    let version = list.metadata.resource_version.clone().unwrap_or_default();
    let tokens = list.items.iter().map(|s| (watch::key(s), judged(s, new))).collect();
    Ok((tokens, version))
}

/// The Secrets not holding the new CA yet.
fn left_over(tokens: &BTreeMap<String, bool>) -> Vec<&str> {
    tokens.iter().filter(|(_, ok)| !**ok).map(|(k, _)| k.as_str()).collect()
}

/// At most this many names in a message.
const NAMED: usize = 5;

fn named(left: &[&str]) -> String {
    let mut said = left.iter().take(NAMED).copied().collect::<Vec<_>>().join(", ");
    if left.len() > NAMED {
        said.push_str(&format!(" and {} more", left.len() - NAMED));
    }
    said
}

struct Wait;

impl Action for Wait {
    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        Box::pin(wait(ctx))
    }
}

async fn wait(ctx: &mut Ctx) -> Result<String> {
    let new = ctx.file_cert(KUBE_CA)?;
    let api: Api<Secret> = Api::all(ctx.conn()?.client.clone());
    let report = ctx.reporter();
    let (mut tokens, version) = list(&api, &new).await?;
    let total_at_start = tokens.len();
    if left_over(&tokens).is_empty() {
        return Ok(format!("all {total_at_start} token secrets hold the new kube CA"));
    }
    report(&format!(
        "{} of {} token secrets still hold another CA",
        left_over(&tokens).len(),
        tokens.len()
    ));
    let params = WatchParams::default().fields(TOKEN_TYPE);
    let known: Vec<String> = tokens.keys().cloned().collect();
    let last_error = LastError::default();
    let followed = watch::follow(
        &api,
        "the ServiceAccount token secrets",
        &params,
        version,
        known,
        &last_error,
        |change| {
            match change {
                Change::Applied(secret) => {
                    tokens.insert(watch::key(&secret), judged(&secret, &new));
                }
                Change::Deleted(key) => {
                    tokens.remove(&key);
                }
            }
            let left = left_over(&tokens).len();
            if left == 0 {
                return ControlFlow::Break(tokens.len());
            }
            report(&format!("{left} of {} token secrets still hold another CA", tokens.len()));
            ControlFlow::Continue(())
        },
    );
    match within(ctx.timeout, followed).await {
        Some(done) => Ok(format!("all {} token secrets hold the new kube CA", done?)),
        None => {
            // The closure holds `tokens` no more: read the state once again to name them.
            let (tokens, _) = list(&api, &new).await?;
            let left = left_over(&tokens);
            let mut reason = format!(
                "after {}s, {} of {} ServiceAccount token secrets still hold another ca.crt than the new {KUBE_CA} ({}): is kube-controller-manager running with the new Secret kube-system/kube-controller-manager?",
                ctx.timeout.as_secs(),
                left.len(),
                tokens.len(),
                named(&left)
            );
            if let Some(error) = last_error.get() {
                reason.push_str(&format!(" (last watch error: {error})"));
            }
            Err(Error::PhaseStopped { phase: Phase::Tokens.name(), reason })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_the_new_ca_alone_or_is_left_over() {
        let ca = |cn: &str| {
            let key =
                openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
            let mut name = openssl::x509::X509NameBuilder::new().unwrap();
            name.append_entry_by_text("CN", cn).unwrap();
            let name = name.build();
            let mut b = openssl::x509::X509Builder::new().unwrap();
            b.set_subject_name(&name).unwrap();
            b.set_issuer_name(&name).unwrap();
            b.set_pubkey(&key).unwrap();
            b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap()).unwrap();
            b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap()).unwrap();
            b.sign(&key, openssl::hash::MessageDigest::sha256()).unwrap();
            b.build().to_pem().unwrap()
        };
        let (new, old) = (ca("new"), ca("old"));
        let new_info = pki::parse_one_cert(&new).unwrap();
        assert!(holds_only(Some(&new), &new_info));
        assert!(!holds_only(Some(&old), &new_info), "the old CA");
        assert!(!holds_only(Some(&[old.clone(), new.clone()].concat()), &new_info), "a bundle");
        assert!(!holds_only(None, &new_info), "no ca.crt");
        assert!(!holds_only(Some(b"garbage"), &new_info));
        let tokens = BTreeMap::from([("a/x".to_string(), true), ("b/y".to_string(), false)]);
        assert_eq!(left_over(&tokens), ["b/y"]);
        let many: Vec<&str> = vec!["a", "b", "c", "d", "e", "f", "g"];
        assert_eq!(named(&many), "a, b, c, d, e and 2 more");
    }
}
