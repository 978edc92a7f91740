//! Which aggregation CA is the old one, and where its certificate and key are kept, read from
//! the real state: an operator may have typed the manual procedure up to some step before
//! reaching for the tool (its taint and targeted apply make a new CA in the files and the
//! state while the cluster still trusts the old one), so "the files' CA" is the old CA only
//! when the cluster trusts it alone.

use crate::error::{Error, Result};
use crate::k8s::objects;
use crate::pki::{self, CertInfo};
use crate::rotation::context::Ctx;

use super::phases::{CA_CERT, CA_KEY, NAMESPACE, SECRET};

/// The copy the manual procedure makes before its taint, in the terraform root.
const SEED_COPY: &str = "aggregation-ca.crt";
/// Written by terraform, in the terraform root, before each change of the local state: after
/// the manual procedure's taint it still holds the old CA key.
const STATE_BACKUP: &str = "terraform.tfstate.backup";

/// The CA the cluster trusts (the one being replaced), and where it was found.
pub struct OldCa {
    pub cert: CertInfo,
    pub pem: Vec<u8>,
    pub from: String,
    /// Its private key and where it was found; `None`: gone (the rotation does not need it).
    pub key: Option<(Vec<u8>, String)>,
}

impl OldCa {
    /// How the journal and the report say where the old CA came from.
    pub fn origin(&self) -> String {
        let key = match &self.key {
            Some((_, from)) => format!("its key from {from}"),
            None => "its key is gone (the state and the files hold only the new one; the rotation does not need it)".into(),
        };
        format!("old CA from {}; {key}", self.from)
    }

    /// Whether the files' CA is this one: nothing of the rotation was done by hand.
    pub fn is_the_files(&self, ctx: &Ctx) -> Result<bool> {
        Ok(ctx.file_cert(CA_CERT)?.sha256 == self.cert.sha256)
    }
}

/// The CA the cluster trusts, from where it is: the files when the cluster trusts the files'
/// CA alone (no rotation begun), else the manual procedure's copy, else the Secret of
/// kube-apiserver itself.
pub async fn find(ctx: &Ctx) -> Result<OldCa> {
    let file = ctx.file_cert(CA_CERT)?;
    let trusted =
        objects::secret_certificates(&ctx.conn()?.client, NAMESPACE, SECRET, "aggregation-ca.crt")
            .await?;
    let old = match trusted.as_slice() {
        [only] if only.sha256 == file.sha256 => {
            let key = ctx.key_matches(CA_KEY, &file).then(|| ctx.read_asset(CA_KEY)).transpose()?;
            let key =
                key.map(|k| (k, CA_KEY.to_string())).or_else(|| key_from_state_backup(ctx, &file));
            return Ok(OldCa {
                pem: ctx.read_asset(CA_CERT)?,
                cert: file,
                from: CA_CERT.into(),
                key,
            });
        }
        // A bundle upgrade typed by hand: the CA trusted besides the files' (new) one.
        _ => trusted.iter().find(|c| c.sha256 != file.sha256).ok_or_else(|| {
            Error::ClusterObject {
                object: format!("secret {NAMESPACE}/{SECRET}"),
                reason: "its aggregation-ca.crt holds no CA".into(),
            }
        })?,
    };
    let (pem, from) = match seed_copy(ctx, old) {
        Some(pem) => (pem, format!("terraform/{SEED_COPY} (the manual procedure's copy)")),
        None => (
            old.x509.to_pem().expect("a parsed certificate encodes"),
            format!("secret {NAMESPACE}/{SECRET} (aggregation-ca.crt, what the cluster trusts)"),
        ),
    };
    let key = ctx
        .key_matches(CA_KEY, old)
        .then(|| ctx.read_asset(CA_KEY))
        .transpose()?
        .map(|k| (k, format!("{CA_KEY} (left as it was by the manual procedure's targeted apply)")))
        .or_else(|| key_from_state_backup(ctx, old));
    Ok(OldCa { cert: old.clone(), pem, from, key })
}

/// The manual procedure's copy, its first certificate (the procedure appends the new CA to
/// it), when that is `old`.
fn seed_copy(ctx: &Ctx, old: &CertInfo) -> Option<Vec<u8>> {
    let bytes = std::fs::read(ctx.terraform_dir.join(SEED_COPY)).ok()?;
    let first = pki::parse_certs(&bytes).ok()?.into_iter().next()?;
    (first.sha256 == old.sha256).then(|| first.x509.to_pem().expect("a parsed certificate encodes"))
}

/// The CA key in terraform's backup of the local state, when it is `old`'s.
fn key_from_state_backup(ctx: &Ctx, old: &CertInfo) -> Option<(Vec<u8>, String)> {
    let text = std::fs::read_to_string(ctx.terraform_dir.join(STATE_BACKUP)).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    let resources = state["resources"].as_array()?;
    let key = resources
        .iter()
        .filter(|r| r["type"] == "tls_private_key" && r["name"] == "aggregation-ca")
        .flat_map(|r| r["instances"].as_array().cloned().unwrap_or_default())
        .filter_map(|i| i["attributes"]["private_key_pem"].as_str().map(str::to_owned))
        .find(|pem| pki::private_key_half(pem.as_bytes()).ok() == pki::certificate_half(old))?;
    Some((key.into_bytes(), format!("terraform/{STATE_BACKUP}")))
}
