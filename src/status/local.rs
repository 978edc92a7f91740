//! Local checks: every credential of the asset dir read from its files, checked for its
//! dates, its chain to its CA and its key, with a problem text that says what to do.

use crate::assets::{self, AssetDir, CREDENTIALS, Credential, Storage};
use crate::pki::{self, CertInfo, PemProblem};

use super::report::{CertFacts, Check, LocalRow, Validity};

/// Parsed material of one credential, kept for the chain checks across rows.
struct Loaded {
    cert: Option<CertInfo>,
}

/// The certificates of one asset dir parsed so far, by their PEM bytes: the etcd CA is written
/// four times, and parsing a certificate is most of what `status` costs (OpenSSL 3 spends
/// ~0.1-0.3 ms in each), so identical files are parsed once.
#[derive(Default)]
struct Parsed(Vec<(Vec<u8>, CertInfo)>);

impl Parsed {
    fn one_cert(&mut self, pem: Vec<u8>) -> Result<CertInfo, PemProblem> {
        if let Some((_, cert)) = self.0.iter().find(|(bytes, _)| *bytes == pem) {
            return Ok(cert.clone());
        }
        let cert = pki::parse_one_cert(&pem)?;
        self.0.push((pem, cert.clone()));
        Ok(cert)
    }
}

/// Checks every credential of the asset dir.
pub fn local_rows(assets: &AssetDir, now: i64, window: i64) -> Vec<LocalRow> {
    let aggregation = assets.aggregation_enabled();
    let credentials: Vec<&Credential> =
        CREDENTIALS.iter().filter(|c| aggregation || !c.aggregation).collect();
    let mut parsed = Parsed::default();
    let (mut rows, loaded): (Vec<LocalRow>, Vec<Loaded>) =
        credentials.iter().map(|c| load_credential(assets, c, &mut parsed, now, window)).unzip();
    let cert_of = |name: &str| {
        credentials.iter().position(|c| c.name == name).and_then(|i| loaded[i].cert.as_ref())
    };
    for (i, credential) in credentials.iter().enumerate() {
        let Some(cert) = loaded[i].cert.as_ref() else { continue };
        let row = &mut rows[i];
        row.chain = chain_check(credential, cert, cert_of);
        if row.chain == Check::Fail {
            row.status = row.status.max(Validity::Invalid);
            row.problems.push(chain_problem(credential));
        }
    }
    rows
}

fn chain_check<'a>(
    credential: &Credential,
    cert: &CertInfo,
    cert_of: impl Fn(&str) -> Option<&'a CertInfo>,
) -> Check {
    if let Some(original) = credential.copy_of {
        return match cert_of(original) {
            Some(orig) if orig.sha256 == cert.sha256 => Check::Ok,
            Some(_) => Check::Fail,
            None => Check::Unknown,
        };
    }
    match credential.issuer {
        None if credential.is_ca => {
            if cert.self_signed {
                Check::Ok
            } else {
                Check::Fail
            }
        }
        None => Check::NotApplicable,
        Some(issuer) => match cert_of(issuer) {
            Some(ca) if pki::issued_by(cert, ca) => Check::Ok,
            Some(_) => Check::Fail,
            None => Check::Unknown,
        },
    }
}

fn chain_problem(credential: &Credential) -> String {
    let display = |name: &str| {
        assets::credential(name).map(|c| storage_file(&c.storage)).unwrap_or_else(|| name.into())
    };
    if let Some(original) = credential.copy_of {
        return format!(
            "differs from {} although it should be a copy of it: re-run terraform apply for {}",
            display(original),
            credential.terraform.files.join(", ")
        );
    }
    match credential.issuer {
        Some(issuer) => format!(
            "not signed by {issuer} ({}): the certificate and its CA do not belong together; \
             re-issue it by tainting {}",
            display(issuer),
            credential.terraform.cert.unwrap_or(credential.terraform.key)
        ),
        None => "claims to be a self-signed CA but its signature does not verify".into(),
    }
}

/// The file a credential is reported under, relative to the asset dir.
fn storage_file(storage: &Storage) -> String {
    let relative = match storage {
        Storage::Files { cert, .. } => cert,
        Storage::WebhookValues => assets::LOKOMOTIVE_VALUES,
        Storage::KeyPair { private, .. } => private,
    };
    format!("cluster-assets/{relative}")
}

enum ReadError {
    Missing,
    Unreadable(String),
}

fn read_asset(assets: &AssetDir, relative: &str) -> std::result::Result<Vec<u8>, ReadError> {
    std::fs::read(assets.asset(relative)).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing,
        _ => ReadError::Unreadable(e.to_string()),
    })
}

/// Row under construction: starts OK and only gets worse.
struct RowBuilder {
    row: LocalRow,
}

impl RowBuilder {
    fn new(credential: &Credential) -> Self {
        let key_file = match credential.storage {
            Storage::Files { key: Some(k), .. } => Some(format!("cluster-assets/{k}")),
            Storage::KeyPair { public, .. } => Some(format!("cluster-assets/{public}")),
            _ => None,
        };
        Self {
            row: LocalRow {
                name: credential.name,
                file: storage_file(&credential.storage),
                key_file,
                ca: credential.issuer,
                cert: None,
                status: Validity::Ok,
                chain: Check::Unknown,
                key: Check::NotApplicable,
                problems: Vec::new(),
                fix: None,
            },
        }
    }

    fn problem(&mut self, status: Validity, text: String) {
        self.row.status = self.row.status.max(status);
        self.row.problems.push(text);
    }

    fn read_error(&mut self, relative: &str, err: ReadError, what: &str) {
        match err {
            ReadError::Missing => self.problem(
                Validity::Missing,
                format!("cluster-assets/{relative} is missing: {what}"),
            ),
            ReadError::Unreadable(reason) => self.problem(
                Validity::Invalid,
                format!("cannot read cluster-assets/{relative}: {reason}"),
            ),
        }
    }

    fn pem_problem(&mut self, relative: &str, problem: PemProblem) {
        self.problem(
            Validity::Invalid,
            format!(
                "cluster-assets/{relative}: {}; restore it from a backup or re-create it with \
                 terraform apply",
                problem.0
            ),
        );
    }
}

fn load_credential(
    assets: &AssetDir,
    credential: &Credential,
    parsed: &mut Parsed,
    now: i64,
    window: i64,
) -> (LocalRow, Loaded) {
    let mut b = RowBuilder::new(credential);
    let restore = "restore it from a backup or re-create it with terraform apply";
    let (cert_pem, key_pem) = match credential.storage {
        Storage::KeyPair { private, public } => {
            load_key_pair(assets, &mut b, private, public, restore);
            return (b.row, Loaded { cert: None });
        }
        Storage::Files { cert, key } => {
            let cert_pem = match read_asset(assets, cert) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    b.read_error(cert, e, restore);
                    None
                }
            };
            let key_pem = key.and_then(|k| match read_asset(assets, k) {
                Ok(pem) => Some((k.to_string(), pem)),
                Err(e) => {
                    b.read_error(k, e, restore);
                    None
                }
            });
            (cert_pem, key_pem)
        }
        Storage::WebhookValues => match webhook_values(assets, &mut b) {
            Some((cert, key)) => (Some(cert), Some((assets::LOKOMOTIVE_VALUES.to_string(), key))),
            None => (None, None),
        },
    };
    let Some(cert_pem) = cert_pem else {
        return (b.row, Loaded { cert: None });
    };
    let cert_file = b.row.file.trim_start_matches("cluster-assets/").to_string();
    let cert = match parsed.one_cert(cert_pem) {
        Ok(cert) => cert,
        Err(problem) => {
            b.pem_problem(&cert_file, problem);
            return (b.row, Loaded { cert: None });
        }
    };
    b.row.cert = Some(CertFacts::new(&cert, now));
    b.row.status =
        b.row.status.max(Validity::of_dates(cert.not_before, cert.not_after, now, window));
    if let Some((key_file, key_pem)) = key_pem {
        b.row.key = match (pki::private_key_half(&key_pem), pki::certificate_half(&cert)) {
            (Ok(private), Some(public)) if private == public => Check::Ok,
            (Ok(_), _) => {
                b.problem(
                    Validity::Invalid,
                    format!(
                        "the key in cluster-assets/{key_file} does not match the certificate \
                         {}: find the key that belongs to it (if a rotation replaced it, the \
                         old one is kept under certrotate/<run>/backup/ in the asset dir) or \
                         re-issue both",
                        b.row.file
                    ),
                );
                Check::Fail
            }
            (Err(problem), _) => {
                b.pem_problem(&key_file, problem);
                Check::Unknown
            }
        };
    }
    (b.row, Loaded { cert: Some(cert) })
}

fn load_key_pair(
    assets: &AssetDir,
    b: &mut RowBuilder,
    private: &str,
    public: &str,
    restore: &str,
) {
    b.row.chain = Check::NotApplicable;
    let private_key = match read_asset(assets, private) {
        Ok(pem) => pki::private_key_half(&pem).map_err(|p| b.pem_problem(private, p)).ok(),
        Err(e) => {
            b.read_error(private, e, restore);
            None
        }
    };
    let public_key = match read_asset(assets, public) {
        Ok(pem) => pki::public_key_half(&pem).map_err(|p| b.pem_problem(public, p)).ok(),
        Err(e) => {
            b.read_error(public, e, restore);
            None
        }
    };
    b.row.key = match (private_key, public_key) {
        (Some(private), Some(public)) if private == public => Check::Ok,
        (Some(_), Some(_)) => {
            b.problem(
                Validity::Invalid,
                format!(
                    "cluster-assets/{private} and cluster-assets/{public} are not halves of one \
                     key pair: service-account tokens would not verify; restore the pair from \
                     a backup"
                ),
            );
            Check::Fail
        }
        _ => Check::Unknown,
    };
}

/// The webhook serving certificate and key, base64 PEM inside the lokomotive chart values.
fn webhook_values(assets: &AssetDir, b: &mut RowBuilder) -> Option<(Vec<u8>, Vec<u8>)> {
    let hint = "it is written by terraform (local_file.lokomotive): run terraform apply, or \
                lokoctl cluster apply, to re-create it";
    let bytes = read_asset(assets, assets::LOKOMOTIVE_VALUES)
        .map_err(|e| b.read_error(assets::LOKOMOTIVE_VALUES, e, hint))
        .ok()?;
    let text = String::from_utf8_lossy(&bytes);
    assets::parse_webhook_values(&text)
        .map_err(|reason| {
            let file = format!("cluster-assets/{}", assets::LOKOMOTIVE_VALUES);
            b.problem(Validity::Invalid, format!("{file}: {reason}; {hint}"));
        })
        .ok()
}
