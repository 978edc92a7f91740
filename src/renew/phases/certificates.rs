//! `certificates`: `terraform apply -auto-approve -input=false -parallelism=1` (lokoctl's
//! choice: one resource at a time, so only one etcd member can break at a time), which
//! re-creates everything the taint phase tainted and re-writes the asset dir's files from
//! the state. Then the proof, from the files, the state and the run's backup: every file
//! equals the state; every certificate is new, chains to its CA and matches its key; each CA
//! certificate keeps its old public key; old certificates verify under the new CA
//! certificates and new ones under the old (nothing has to trust two CAs); the CA keys and
//! the service-account key are untouched.

use super::kept_state;
use super::taint::{self, Found};
use crate::assets::{self, AssetDir, CREDENTIALS, Credential, Storage};
use crate::error::{Error, Result};
use crate::pki::{self, CertInfo, PublicHalf};
use crate::renew::Phase;
use crate::rotation::context::Ctx;
use crate::rotation::engine::{Needs, PhaseUnit};
use crate::rotation::plan::StepKind;
use crate::rotation::step::{Action, Planned, Running};
use crate::tools::Command;
use crate::tools::terraform::State;

/// The CAs whose certificates are re-issued with their own key.
pub const CAS: [&str; 3] = ["kube-ca", "etcd-ca", "aggregation-ca"];

pub struct Certificates;

impl PhaseUnit for Certificates {
    fn needs(&self) -> Needs {
        Needs { terraform: true, ..Needs::default() }
    }

    fn steps(&self, ctx: &Ctx) -> Vec<Planned> {
        vec![
            Planned::command(
                &ctx.apply_one_at_a_time_command(),
                " (re-creates what the taint phase tainted; re-writes the asset dir's files from the state)",
                Step::Apply,
            ),
            Planned::new(
                StepKind::Check,
                "every file equals the state; every certificate is new, chains to its CA and matches its key; each CA certificate keeps its old public key; old certificates verify under the new CA certificates and new ones under the old; the CA keys and the service-account key unchanged",
                Step::Verify,
            ),
        ]
    }

    fn found_done<'a>(&'a self, ctx: &'a Ctx) -> Running<'a, Option<String>> {
        Box::pin(async move { Ok(renewed_as_proven(ctx).await?.ok()) })
    }
}

enum Step {
    /// `terraform apply -parallelism=1`.
    Apply,
    /// Files equal the state; new, chained, keys matching; CA keys kept.
    Verify,
}

impl Action for Step {
    fn command(&self, ctx: &Ctx) -> Result<Option<Command>> {
        Ok(match self {
            Self::Apply => Some(ctx.terraform()?.apply_one_at_a_time_command()),
            Self::Verify => None,
        })
    }

    fn run<'a>(&'a self, ctx: &'a mut Ctx) -> Running<'a, String> {
        match self {
            Self::Apply => Box::pin(async move {
                let apply = self.command(ctx)?.expect("an apply runs a command");
                ctx.terraform()?.change(apply).await?;
                Ok("applied".into())
            }),
            Self::Verify => Box::pin(verify(ctx)),
        }
    }
}

/// The journal's name of a CA's fingerprint: `oldKubeCa`, `newEtcdCa`, …
pub fn fingerprint_name(age: &str, ca: &str) -> String {
    let mut name = age.to_string();
    for part in ca.split('-') {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name
}

/// A certificate and the public half of its key, as one asset dir holds them.
struct Pair {
    cert: CertInfo,
    key: Option<PublicHalf>,
}

fn read(assets: &AssetDir, relative: &str) -> std::result::Result<Vec<u8>, String> {
    let path = assets.asset(relative);
    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(assets: &AssetDir, relative: &str, pem: &[u8]) -> std::result::Result<CertInfo, String> {
    pki::parse_one_cert(pem).map_err(|p| format!("{}: {}", assets.asset(relative).display(), p.0))
}

/// The certificate of credential `name` in `assets`.
pub fn cert_of(assets: &AssetDir, name: &str) -> std::result::Result<CertInfo, String> {
    let credential = assets::credential(name).ok_or_else(|| format!("no credential {name}"))?;
    pair(assets, credential).map(|p| p.cert)
}

/// Credential `c`'s certificate and key half in `assets` (not for a bare key pair).
fn pair(assets: &AssetDir, c: &Credential) -> std::result::Result<Pair, String> {
    match c.storage {
        Storage::Files { cert, key } => {
            let pem = read(assets, cert)?;
            let half = match key {
                Some(key) => Some(
                    pki::private_key_half(&read(assets, key)?)
                        .map_err(|p| format!("{}: {}", assets.asset(key).display(), p.0))?,
                ),
                None => None,
            };
            Ok(Pair { cert: parse(assets, cert, &pem)?, key: half })
        }
        Storage::WebhookValues => {
            let file = assets::LOKOMOTIVE_VALUES;
            let text = String::from_utf8(read(assets, file)?).unwrap_or_default();
            let (cert, key) = assets::parse_webhook_values(&text)
                .map_err(|why| format!("{}: {why}", assets.asset(file).display()))?;
            let half = pki::private_key_half(&key).map_err(|p| {
                format!("{}: webhook.servingKey: {}", assets.asset(file).display(), p.0)
            })?;
            Ok(Pair { cert: parse(assets, file, &cert)?, key: Some(half) })
        }
        Storage::KeyPair { .. } => Err(format!("{} has no certificate", c.name)),
    }
}

/// The credentials renewed in this asset dir, copies left out.
fn renewed(aggregation: bool) -> impl Iterator<Item = &'static Credential> {
    CREDENTIALS.iter().filter(move |c| {
        c.copy_of.is_none() && c.terraform.cert.is_some() && (aggregation || !c.aggregation)
    })
}

/// What one credential must show after the apply; `Err` lists what it does not.
fn check_credential(
    ctx: &Ctx,
    state: &State,
    c: &Credential,
    new: &[(&str, Pair)],
    old: &[(&str, Pair)],
) -> Vec<String> {
    let mut wrong = Vec::new();
    let of = |pairs: &'_ [(&str, Pair)], name: &str| {
        pairs.iter().find(|(n, _)| *n == name).map(|(_, p)| p.cert.clone())
    };
    let (Some(now), Some(before)) = (of(new, c.name), of(old, c.name)) else {
        return vec![format!("{}: unreadable", c.name)];
    };
    let address = ctx.addr(c.terraform.cert.unwrap_or_default());
    let in_state =
        state.attribute(&address, "cert_pem").map(|pem| pki::parse_one_cert(pem.as_bytes()));
    if !matches!(in_state, Some(Ok(ref s)) if s.sha256 == now.sha256) {
        wrong.push(format!("{}: the file is not the state's {address}", c.name));
    }
    let key = new.iter().find(|(n, _)| *n == c.name).and_then(|(_, p)| p.key.clone());
    let key_address = ctx.addr(c.terraform.key);
    let state_key = state
        .attribute(&key_address, "public_key_pem")
        .and_then(|pem| pki::public_key_half(pem.as_bytes()).ok());
    if key.is_some() && key != state_key {
        wrong.push(format!("{}: the key file is not the state's {key_address}", c.name));
    }
    if key.is_some() && key != pki::certificate_half(&now) {
        wrong.push(format!("{}: the certificate does not match its key", c.name));
    }
    if now.sha256 == before.sha256 {
        wrong.push(format!("{}: still the certificate the backup kept", c.name));
    }
    match c.issuer {
        // A CA: self-signed, with its old key (which is what makes the rest verify).
        None => {
            if !pki::issued_by(&now, &now) {
                wrong.push(format!("{}: not self-signed", c.name));
            }
            if pki::certificate_half(&now) != pki::certificate_half(&before) {
                wrong.push(format!(
                    "{}: its public key changed (the CA key was re-created)",
                    c.name
                ));
            }
        }
        Some(issuer) => {
            let (Some(ca_now), Some(ca_before)) = (of(new, issuer), of(old, issuer)) else {
                return vec![format!("{}: its CA {issuer} is unreadable", c.name)];
            };
            for (what, cert, ca) in [
                ("the new certificate under the new CA", &now, &ca_now),
                ("the old certificate under the new CA", &before, &ca_now),
                ("the new certificate under the old CA", &now, &ca_before),
            ] {
                if !pki::issued_by(cert, ca) {
                    wrong.push(format!("{}: {what} does not verify", c.name));
                }
            }
        }
    }
    wrong
}

/// The renewal as the files, the state and the backup show it; `Ok(Err(what is not so))`.
async fn renewed_as_proven(ctx: &Ctx) -> Result<std::result::Result<String, String>> {
    let Some(kept) = kept_state(ctx)? else {
        return Ok(Err("the run has no backup of the state".into()));
    };
    let state = ctx.terraform()?.state().await?;
    let aggregation = ctx.assets.aggregation_enabled();
    let mut wrong = Vec::new();
    for resource in taint::resources(aggregation) {
        let address = ctx.addr(resource);
        match taint::found(&address, &state, Some(&kept)) {
            Found::Reissued | Found::Absent => {}
            Found::Tainted => wrong.push(format!("{address} is still tainted")),
            Found::ToTaint => wrong.push(format!("{address} was not re-issued")),
            Found::Destroyed => wrong.push(format!("{address} is not in the state")),
        }
    }
    if !wrong.is_empty() {
        return Ok(Err(wrong.join("; ")));
    }
    let old_assets = super::backup::kept_assets(ctx)?;
    let read_all = |assets: &AssetDir| -> std::result::Result<Vec<(&str, Pair)>, String> {
        renewed(aggregation).map(|c| pair(assets, c).map(|p| (c.name, p))).collect()
    };
    let (new, old) = match (read_all(&ctx.assets), read_all(&old_assets)) {
        (Ok(new), Ok(old)) => (new, old),
        (Err(why), _) | (_, Err(why)) => return Ok(Err(why)),
    };
    for c in renewed(aggregation) {
        wrong.extend(check_credential(ctx, &state, c, &new, &old));
    }
    // The etcd CA's copies, and what is never re-created: the CA keys, the service-account key.
    for c in CREDENTIALS.iter().filter(|c| aggregation || !c.aggregation) {
        match (c.copy_of, c.storage) {
            (Some(original), Storage::Files { cert, .. }) => {
                let same = new.iter().find(|(n, _)| *n == original).map(|(_, p)| &p.cert.sha256);
                let copy = read(&ctx.assets, cert).and_then(|pem| parse(&ctx.assets, cert, &pem));
                if copy.as_ref().ok().map(|c| &c.sha256) != same {
                    wrong.push(format!("{cert} is not a copy of the new {original} certificate"));
                }
            }
            (None, Storage::Files { key: Some(key), .. }) if c.is_ca => {
                unchanged(ctx, &old_assets, key, &mut wrong)
            }
            (None, Storage::KeyPair { private, public }) => {
                unchanged(ctx, &old_assets, private, &mut wrong);
                unchanged(ctx, &old_assets, public, &mut wrong);
            }
            _ => {}
        }
    }
    if !wrong.is_empty() {
        return Ok(Err(wrong.join("; ")));
    }
    Ok(Ok(format!(
        "{} certificates re-issued: new, equal to the state, chained to their CA, keys matching; old and new verify under each other's CA; the CA keys and the service-account key kept",
        new.len()
    )))
}

/// File `relative` is as the backup kept it.
fn unchanged(ctx: &Ctx, old: &AssetDir, relative: &str, wrong: &mut Vec<String>) {
    if read(&ctx.assets, relative).ok() != read(old, relative).ok() {
        wrong.push(format!("{relative} changed (it must not be re-created)"));
    }
}

async fn verify(ctx: &mut Ctx) -> Result<String> {
    let proof = renewed_as_proven(ctx)
        .await?
        .map_err(|reason| Error::Verification { phase: Phase::Certificates.name(), reason })?;
    for ca in CAS {
        if let Ok(cert) = cert_of(&ctx.assets, ca) {
            ctx.fingerprint(&fingerprint_name("new", ca), &cert.sha256)?;
        }
    }
    Ok(proof)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_names_are_camel_case() {
        assert_eq!(fingerprint_name("old", "kube-ca"), "oldKubeCa");
        assert_eq!(fingerprint_name("new", "aggregation-ca"), "newAggregationCa");
    }
}
