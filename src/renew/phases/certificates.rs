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

/// One credential as the asset dir holds it now and as the backup kept it, and what the
/// state holds of it (its certificate, its key's public half), with the addresses to name.
struct Seen<'a> {
    name: &'a str,
    now: &'a Pair,
    before: &'a Pair,
    state_cert: Option<CertInfo>,
    state_key: Option<PublicHalf>,
    cert_address: String,
    key_address: String,
}

/// What is wrong with one credential after the apply (nothing, when it is renewed as it must
/// be); `ca`: its CA's certificates now and before, `None` for a CA itself.
fn judge(seen: &Seen, ca: Option<(&CertInfo, &CertInfo)>) -> Vec<String> {
    let name = seen.name;
    let (now, before) = (&seen.now.cert, &seen.before.cert);
    let mut wrong = Vec::new();
    if seen.state_cert.as_ref().map(|c| &c.sha256) != Some(&now.sha256) {
        wrong.push(format!("{name}: the file is not the state's {}", seen.cert_address));
    }
    if let Some(key) = &seen.now.key {
        if seen.state_key.as_ref() != Some(key) {
            wrong.push(format!("{name}: the key file is not the state's {}", seen.key_address));
        }
        if pki::certificate_half(now).as_ref() != Some(key) {
            wrong.push(format!("{name}: the certificate does not match its key"));
        }
    }
    if now.sha256 == before.sha256 {
        wrong.push(format!("{name}: still the certificate the backup kept"));
    }
    match ca {
        // A CA: self-signed, with its old key (which is what makes the rest verify).
        None => {
            if !pki::issued_by(now, now) {
                wrong.push(format!("{name}: not self-signed"));
            }
            if pki::certificate_half(now) != pki::certificate_half(before) {
                wrong.push(format!("{name}: its public key changed (the CA key was re-created)"));
            }
        }
        Some((ca_now, ca_before)) => {
            for (what, cert, ca) in [
                ("the new certificate under the new CA", now, ca_now),
                ("the old certificate under the new CA", before, ca_now),
                ("the new certificate under the old CA", now, ca_before),
            ] {
                if !pki::issued_by(cert, ca) {
                    wrong.push(format!("{name}: {what} does not verify"));
                }
            }
        }
    }
    wrong
}

/// [`judge`] of credential `c`, from the pairs read now (`new`) and from the backup (`old`).
fn check_credential(
    ctx: &Ctx,
    state: &State,
    c: &Credential,
    new: &[(&str, Pair)],
    old: &[(&str, Pair)],
) -> Vec<String> {
    fn of<'a>(pairs: &'a [(&str, Pair)], name: &str) -> Option<&'a Pair> {
        pairs.iter().find(|(n, _)| *n == name).map(|(_, p)| p)
    }
    let (Some(now), Some(before)) = (of(new, c.name), of(old, c.name)) else {
        return vec![format!("{}: unreadable", c.name)];
    };
    let cert_address = ctx.addr(c.terraform.cert.unwrap_or_default());
    let key_address = ctx.addr(c.terraform.key);
    let seen = Seen {
        name: c.name,
        now,
        before,
        state_cert: state
            .attribute(&cert_address, "cert_pem")
            .and_then(|pem| pki::parse_one_cert(pem.as_bytes()).ok()),
        state_key: state
            .attribute(&key_address, "public_key_pem")
            .and_then(|pem| pki::public_key_half(pem.as_bytes()).ok()),
        cert_address,
        key_address,
    };
    let ca = match c.issuer {
        None => None,
        Some(issuer) => match (of(new, issuer), of(old, issuer)) {
            (Some(ca_now), Some(ca_before)) => Some((&ca_now.cert, &ca_before.cert)),
            _ => return vec![format!("{}: its CA {issuer} is unreadable", c.name)],
        },
    };
    judge(&seen, ca)
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
    if let Err(why) = kubeconfig_renewed(&ctx.assets, &new) {
        wrong.push(why);
    }
    if !wrong.is_empty() {
        return Ok(Err(wrong.join("; ")));
    }
    Ok(Ok(format!(
        "{} certificates re-issued: new, equal to the state, chained to their CA, keys matching; old and new verify under each other's CA; the CA keys and the service-account key kept",
        new.len()
    )))
}

/// The admin kubeconfig holds the new admin certificate: the same apply re-writes it, and one
/// cut off mid-replace leaves it deleted, which only another apply makes again.
fn kubeconfig_renewed(assets: &AssetDir, new: &[(&str, Pair)]) -> std::result::Result<(), String> {
    use base64::Engine as _;
    let path = assets.asset(assets::KUBECONFIG);
    if !path.is_file() {
        return Err(format!("{} is missing", path.display()));
    }
    // Its parser's message may quote the file, keys included: not shown.
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .map_err(|_| format!("{} is not a readable kubeconfig", path.display()))?;
    let admin = new.iter().find(|(n, _)| *n == "admin").map(|(_, p)| &p.cert.sha256);
    let holds_admin = kubeconfig.auth_infos.iter().any(|named| {
        let data = named.auth_info.as_ref().and_then(|a| a.client_certificate_data.as_deref());
        let pem = data.and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok());
        let cert = pem.and_then(|pem| pki::parse_one_cert(&pem).ok());
        cert.is_some_and(|c| Some(&c.sha256) == admin)
    });
    if holds_admin {
        Ok(())
    } else {
        Err(format!("{} does not hold the new admin certificate", path.display()))
    }
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

    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::{X509, X509NameBuilder};

    fn key() -> PKey<Private> {
        let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1);
        PKey::from_ec_key(openssl::ec::EcKey::generate(&group.unwrap()).unwrap()).unwrap()
    }

    /// A certificate for `cn` with `key`, signed by `issuer` (its name and key), or by
    /// itself; a fresh serial each time.
    fn cert(
        cn: &str,
        key: &PKey<Private>,
        issuer: Option<(&CertInfo, &PKey<Private>)>,
    ) -> CertInfo {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        let serial = openssl::bn::BigNum::from_u32(next_serial()).unwrap();
        b.set_serial_number(&serial.to_asn1_integer().unwrap()).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap()).unwrap();
        match issuer {
            Some((ca, ca_key)) => {
                b.set_issuer_name(ca.x509.subject_name()).unwrap();
                b.sign(ca_key, MessageDigest::sha256()).unwrap();
            }
            None => {
                b.set_issuer_name(&name).unwrap();
                b.sign(key, MessageDigest::sha256()).unwrap();
            }
        }
        pki::parse_one_cert(&b.build().to_pem().unwrap()).unwrap()
    }

    fn next_serial() -> u32 {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn pair(cert: &CertInfo, key: Option<&PKey<Private>>) -> Pair {
        let key =
            key.map(|k| pki::private_key_half(&k.private_key_to_pem_pkcs8().unwrap()).unwrap());
        Pair { cert: cert.clone(), key }
    }

    fn seen<'a>(now: &'a Pair, before: &'a Pair) -> Seen<'a> {
        Seen {
            name: "x",
            now,
            before,
            state_cert: Some(now.cert.clone()),
            state_key: now.key.clone(),
            cert_address: "cert".into(),
            key_address: "key".into(),
        }
    }

    /// Renewed as lokoctl does (CA key kept, leaf key new): nothing wrong; and each way of
    /// getting it wrong is named.
    #[test]
    fn a_renewal_is_judged_by_its_keys_and_chains() {
        let (ca_key, old_leaf_key, new_leaf_key) = (key(), key(), key());
        let old_ca = cert("kubernetes-ca", &ca_key, None);
        let new_ca = cert("kubernetes-ca", &ca_key, None);
        let old_leaf = cert("kube-apiserver", &old_leaf_key, Some((&old_ca, &ca_key)));
        let new_leaf = cert("kube-apiserver", &new_leaf_key, Some((&new_ca, &ca_key)));
        let (ca_now, ca_before) = (pair(&new_ca, Some(&ca_key)), pair(&old_ca, Some(&ca_key)));
        assert_eq!(judge(&seen(&ca_now, &ca_before), None), Vec::<String>::new());
        let (now, before) =
            (pair(&new_leaf, Some(&new_leaf_key)), pair(&old_leaf, Some(&old_leaf_key)));
        assert_eq!(judge(&seen(&now, &before), Some((&new_ca, &old_ca))), Vec::<String>::new());

        // The CA key re-created: the CA's key changed, and old and new no longer cross.
        let other_key = key();
        let rekeyed_ca = cert("kubernetes-ca", &other_key, None);
        let rekeyed = pair(&rekeyed_ca, Some(&other_key));
        let wrong = judge(&seen(&rekeyed, &ca_before), None);
        assert!(wrong.iter().any(|w| w.contains("public key changed")), "{wrong:?}");
        let leaf = cert("kube-apiserver", &new_leaf_key, Some((&rekeyed_ca, &other_key)));
        let leaf = pair(&leaf, Some(&new_leaf_key));
        let wrong = judge(&seen(&leaf, &before), Some((&rekeyed_ca, &old_ca)));
        assert!(wrong.iter().any(|w| w.contains("old certificate under the new CA")), "{wrong:?}");
        assert!(wrong.iter().any(|w| w.contains("new certificate under the old CA")), "{wrong:?}");
        // Not re-issued; not the state's; a key file of another key.
        let wrong = judge(&seen(&before, &before), Some((&new_ca, &old_ca)));
        assert!(wrong.iter().any(|w| w.contains("still the certificate the backup kept")));
        let mut stale = seen(&now, &before);
        stale.state_cert = Some(old_leaf.clone());
        let wrong = judge(&stale, Some((&new_ca, &old_ca)));
        assert!(wrong.iter().any(|w| w.contains("not the state's cert")), "{wrong:?}");
        let mismatched = pair(&new_leaf, Some(&old_leaf_key));
        let wrong = judge(&seen(&mismatched, &before), Some((&new_ca, &old_ca)));
        assert!(wrong.iter().any(|w| w.contains("does not match its key")), "{wrong:?}");
    }

    #[test]
    fn fingerprint_names_are_camel_case() {
        assert_eq!(fingerprint_name("old", "kube-ca"), "oldKubeCa");
        assert_eq!(fingerprint_name("new", "aggregation-ca"), "newAggregationCa");
    }

    /// The admin kubeconfig counts as renewed only when it holds the new admin certificate; a
    /// missing or unreadable one is named without quoting it.
    #[test]
    fn the_admin_kubeconfig_must_hold_the_new_admin_certificate() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cluster-assets/auth")).unwrap();
        let assets = AssetDir::open(dir.path()).unwrap();
        let admin_key = key();
        let (old, new) = (cert("admin", &admin_key, None), cert("admin", &admin_key, None));
        let pairs = [("admin", pair(&new, None))];
        let path = assets.asset(assets::KUBECONFIG);
        let holding = |c: &CertInfo| {
            let data = base64::engine::general_purpose::STANDARD.encode(c.x509.to_pem().unwrap());
            format!(
                "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n    client-certificate-data: {data}\n"
            )
        };
        let err = kubeconfig_renewed(&assets, &pairs).unwrap_err();
        assert!(err.ends_with("auth/kubeconfig is missing"), "{err}");
        std::fs::write(&path, holding(&old)).unwrap();
        let err = kubeconfig_renewed(&assets, &pairs).unwrap_err();
        assert!(err.ends_with("does not hold the new admin certificate"), "{err}");
        std::fs::write(&path, holding(&new)).unwrap();
        assert_eq!(kubeconfig_renewed(&assets, &pairs), Ok(()));
        std::fs::write(&path, "users: [client-key-data: SECRET-BYTES\n").unwrap();
        let err = kubeconfig_renewed(&assets, &pairs).unwrap_err();
        assert!(err.ends_with("is not a readable kubeconfig") && !err.contains("SECRET"), "{err}");
    }
}
