//! `kubectl certrotate status`: where every certificate stands, in the asset dir and in the
//! cluster, for one cluster or a fleet.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Serialize;

use crate::assets::{self, AssetDir, CREDENTIALS, Credential, Storage};
use crate::cli::{GlobalOpts, OutputFormat, StatusArgs};
use crate::duration::short_residual;
use crate::error::{Error, Result, exit};
use crate::k8s::{self, ClusterSnapshot, Connection};
use crate::output::{self, Table};
use crate::pki::{self, CertInfo, PemProblem};

/// Version of the JSON document; bumped only on incompatible changes (docs/status-json.md).
pub const JSON_API_VERSION: &str = "certrotate.lokomotive.io/v1";

/// Validity state of one row, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum Validity {
    Ok,
    Expiring,
    NotYetValid,
    Expired,
    Missing,
    Invalid,
}

impl Validity {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Expiring => "EXPIRING",
            Self::NotYetValid => "NOT-YET-VALID",
            Self::Expired => "EXPIRED",
            Self::Missing => "MISSING",
            Self::Invalid => "INVALID",
        }
    }

    fn exit_code(self) -> u8 {
        match self {
            Self::Ok => exit::OK,
            Self::Expiring => exit::EXPIRING,
            _ => exit::EXPIRED_OR_INVALID,
        }
    }

    /// Time-based state of a certificate at `now`.
    pub fn of_dates(not_before: i64, not_after: i64, now: i64, window: i64) -> Self {
        if now < not_before {
            Self::NotYetValid
        } else if now >= not_after {
            Self::Expired
        } else if not_after - now <= window {
            Self::Expiring
        } else {
            Self::Ok
        }
    }
}

/// Outcome of a yes/no check that may not apply or may not be decidable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    Ok,
    Fail,
    NotApplicable,
    Unknown,
}

impl Check {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Fail => "FAIL",
            Self::NotApplicable => "-",
            Self::Unknown => "?",
        }
    }
}

/// Dates and identity of a parsed certificate, as reported.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertFacts {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    pub residual_seconds: i64,
    pub serial: String,
    pub sha256: String,
    #[serde(skip)]
    pub not_after_unix: i64,
}

impl CertFacts {
    fn new(cert: &CertInfo, now: i64) -> Self {
        Self {
            subject: cert.subject.clone(),
            issuer: if cert.self_signed { "<self>".into() } else { cert.issuer.clone() },
            not_before: pki::rfc3339(cert.not_before),
            not_after: pki::rfc3339(cert.not_after),
            residual_seconds: cert.not_after - now,
            serial: cert.serial.clone(),
            sha256: cert.sha256.clone(),
            not_after_unix: cert.not_after,
        }
    }
}

/// One credential of the asset dir.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalRow {
    pub name: &'static str,
    /// Path relative to the asset dir.
    pub file: String,
    pub key_file: Option<String>,
    /// Name of the issuing CA's row; `null` for self-signed CAs and key pairs.
    pub ca: Option<&'static str>,
    #[serde(flatten)]
    pub cert: Option<CertFacts>,
    pub status: Validity,
    pub chain: Check,
    pub key: Check,
    pub problems: Vec<String>,
}

/// One certificate the cluster holds.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCertRow {
    /// `configmap/kube-system/extension-apiserver-authentication` and the like.
    pub object: String,
    pub key: String,
    /// Position inside a bundle.
    pub index: usize,
    #[serde(flatten)]
    pub cert: Option<CertFacts>,
    pub status: Validity,
    /// The asset dir credential this is compared with.
    pub compared_with: &'static str,
    /// Whether it is the asset dir's current certificate (`null` when that is unknown).
    pub current: Option<bool>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiServiceRow {
    pub name: String,
    pub service: String,
    pub available: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSection {
    pub reached: bool,
    pub server: Option<String>,
    pub kubeconfig: Option<String>,
    pub error: Option<String>,
    pub certificates: Vec<ClusterCertRow>,
    pub api_services: Vec<ApiServiceRow>,
}

/// Everything about one asset dir.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    pub assets_dir: String,
    pub error: Option<String>,
    pub aggregation_enabled: bool,
    pub certificates: Vec<LocalRow>,
    pub cluster: Option<ClusterSection>,
    pub exit_code: u8,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub clusters: usize,
    pub ok: usize,
    pub expiring: usize,
    pub not_yet_valid: usize,
    pub expired: usize,
    pub missing: usize,
    pub invalid: usize,
    pub errors: usize,
    pub exit_code: u8,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDocument {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub generated_at: String,
    pub expiring_within_seconds: u64,
    pub reports: Vec<ClusterReport>,
    pub summary: Summary,
}

/// Runs `status` and returns the exit code.
pub async fn run(global: &GlobalOpts, args: &StatusArgs) -> Result<u8> {
    let dirs = resolve_asset_dirs(&global.assets_dirs)?;
    let fleet = dirs.len() > 1;
    if fleet && global.kube.kubeconfig.is_some() {
        return Err(Error::Usage(
            "--kubeconfig names one cluster, but several asset dirs were given: with a fleet, \
             each asset dir uses its own cluster-assets/auth/kubeconfig"
                .into(),
        ));
    }
    if !fleet {
        // A single asset dir that is missing or wrong is an error for the whole command.
        AssetDir::open(&dirs[0])?;
    }
    let now = jiff::Timestamp::now().as_second();
    let window = i64::try_from(args.expiring_within.as_secs()).unwrap_or(i64::MAX);

    let mut reports = local_reports(&dirs, now, window);
    if !args.local {
        add_cluster_sections(&mut reports, &dirs, global, fleet, now, window).await;
    }
    for report in &mut reports {
        report.exit_code = report_exit_code(report);
    }
    let summary = summarize(&reports);
    let document = StatusDocument {
        api_version: JSON_API_VERSION,
        kind: "CertificateStatus",
        generated_at: pki::rfc3339(now),
        expiring_within_seconds: args.expiring_within.as_secs(),
        reports,
        summary,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match global.output {
        OutputFormat::Json => output::write_json(&mut out, &document),
        OutputFormat::Table => render_table(&mut out, &document, fleet).map_err(Error::Output),
    };
    output::ignore_broken_pipe(written)?;
    Ok(document.summary.exit_code)
}

/// `--assets-dir` values, globs expanded; `$ASSET_DIR` or the current folder when none given.
pub fn resolve_asset_dirs(given: &[String]) -> Result<Vec<PathBuf>> {
    if given.is_empty() {
        let dir = std::env::var_os("ASSET_DIR").map(PathBuf::from).unwrap_or_else(|| ".".into());
        return Ok(vec![dir]);
    }
    let mut dirs = Vec::new();
    for pattern in given {
        if !pattern.contains(['*', '?', '[']) {
            dirs.push(PathBuf::from(pattern));
            continue;
        }
        let paths = glob::glob(pattern)
            .map_err(|e| Error::BadGlob { pattern: pattern.clone(), reason: e.to_string() })?;
        let mut matched: Vec<PathBuf> =
            paths.filter_map(std::result::Result::ok).filter(|p| p.is_dir()).collect();
        if matched.is_empty() {
            return Err(Error::NoAssetDirMatches { pattern: pattern.clone() });
        }
        matched.sort();
        dirs.extend(matched);
    }
    Ok(dirs)
}

/// Local rows for every asset dir, spread over the machine's cores: the work is CPU-bound
/// parsing and each dir is independent.
fn local_reports(dirs: &[PathBuf], now: i64, window: i64) -> Vec<ClusterReport> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(dirs.len());
    if workers <= 1 {
        return dirs.iter().map(|d| local_report(d, now, window)).collect();
    }
    let chunk = dirs.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = dirs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter().map(|d| local_report(d, now, window)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("status worker panicked")).collect()
    })
}

fn local_report(dir: &Path, now: i64, window: i64) -> ClusterReport {
    match AssetDir::open(dir) {
        Ok(assets) => ClusterReport {
            assets_dir: assets.root().display().to_string(),
            error: None,
            aggregation_enabled: assets.aggregation_enabled(),
            certificates: local_rows(&assets, now, window),
            cluster: None,
            exit_code: exit::OK,
        },
        Err(err) => ClusterReport {
            assets_dir: dir.display().to_string(),
            error: Some(err.to_string()),
            aggregation_enabled: false,
            certificates: Vec::new(),
            cluster: None,
            exit_code: exit::ERROR,
        },
    }
}

/// Parsed material of one credential, kept for the chain checks across rows.
struct Loaded {
    cert: Option<CertInfo>,
}

/// Checks every credential of the asset dir.
pub fn local_rows(assets: &AssetDir, now: i64, window: i64) -> Vec<LocalRow> {
    let aggregation = assets.aggregation_enabled();
    let credentials: Vec<&Credential> =
        CREDENTIALS.iter().filter(|c| aggregation || !c.aggregation).collect();
    let (mut rows, loaded): (Vec<LocalRow>, Vec<Loaded>) =
        credentials.iter().map(|c| load_credential(assets, c, now, window)).unzip();
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
    let cert = match pki::parse_one_cert(&cert_pem) {
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
                         {}: find the matching key (see the rotation journal under \
                         certrotate/) or re-issue both",
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

async fn add_cluster_sections(
    reports: &mut [ClusterReport],
    dirs: &[PathBuf],
    global: &GlobalOpts,
    fleet: bool,
    now: i64,
    window: i64,
) {
    // Independent clusters are probed concurrently; a slow one does not hold up the others.
    let sections: Vec<(usize, ClusterSection)> =
        futures::stream::iter(reports.iter().enumerate().filter(|(_, r)| r.error.is_none()))
            .map(|(i, report)| {
                let dir = &dirs[i];
                async move {
                    let section = cluster_section(dir, report, global, fleet, now, window).await;
                    (i, section)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
    for (i, section) in sections {
        reports[i].cluster = Some(section);
    }
}

async fn cluster_section(
    dir: &Path,
    report: &ClusterReport,
    global: &GlobalOpts,
    fleet: bool,
    now: i64,
    window: i64,
) -> ClusterSection {
    let assets = match AssetDir::open(dir) {
        Ok(a) => a,
        Err(err) => return ClusterSection { error: Some(err.to_string()), ..Default::default() },
    };
    let conn = match Connection::open(&global.kube, Some(&assets), fleet, global.verbose).await {
        Ok(conn) => conn,
        Err(err) => return ClusterSection { error: Some(err.to_string()), ..Default::default() },
    };
    let mut section = ClusterSection {
        server: Some(conn.server.clone()),
        kubeconfig: Some(conn.kubeconfig_description()),
        ..Default::default()
    };
    if let Err(reason) = conn.verify_identity(&assets) {
        section.error = Some(reason);
        return section;
    }
    match k8s::snapshot(&conn).await {
        Ok(snapshot) => {
            section.reached = true;
            fill_cluster_rows(&mut section, &snapshot, report, now, window);
        }
        Err(err) => section.error = Some(err.to_string()),
    }
    section
}

/// Which asset dir credential each cluster-held certificate is compared with.
const CLUSTER_CERTS: &[(&str, &str, &str)] = &[
    (k8s::AUTH_CONFIGMAP, "client-ca-file", "kube-ca"),
    (k8s::AUTH_CONFIGMAP, "requestheader-client-ca-file", "aggregation-ca"),
    (k8s::APISERVER_SECRET, "aggregation-ca.crt", "aggregation-ca"),
    (k8s::APISERVER_SECRET, "aggregation-client.crt", "aggregation-client"),
    (k8s::WEBHOOK_SECRET, "cert.pem", "admission-webhook"),
    (k8s::WEBHOOK_CONFIG, "caBundle", "admission-webhook"),
];

fn fill_cluster_rows(
    section: &mut ClusterSection,
    snapshot: &ClusterSnapshot,
    report: &ClusterReport,
    now: i64,
    window: i64,
) {
    for &(object, key, compared_with) in CLUSTER_CERTS {
        if !report.aggregation_enabled && compared_with.starts_with("aggregation") {
            continue;
        }
        let local_sha = report
            .certificates
            .iter()
            .find(|r| r.name == compared_with)
            .and_then(|r| r.cert.as_ref())
            .map(|c| c.sha256.clone());
        let row = |index, cert: Option<CertFacts>, status, problems| ClusterCertRow {
            object: object.to_string(),
            key: key.to_string(),
            index,
            current: match (&cert, &local_sha) {
                (Some(c), Some(local)) => Some(&c.sha256 == local),
                _ => None,
            },
            cert,
            status,
            compared_with,
            problems,
        };
        match snapshot.get(object, key) {
            Err(missing) => section.certificates.push(row(
                0,
                None,
                Validity::Missing,
                vec![missing.to_string()],
            )),
            Ok(pem) => match pki::parse_certs(pem) {
                Err(problem) => section.certificates.push(row(
                    0,
                    None,
                    Validity::Invalid,
                    vec![format!("{object} {key}: {}", problem.0)],
                )),
                Ok(certs) => {
                    for (index, cert) in certs.iter().enumerate() {
                        let status =
                            Validity::of_dates(cert.not_before, cert.not_after, now, window);
                        section.certificates.push(row(
                            index,
                            Some(CertFacts::new(cert, now)),
                            status,
                            Vec::new(),
                        ));
                    }
                }
            },
        }
    }
    section.api_services = snapshot.api_services.clone();
}

fn report_exit_code(report: &ClusterReport) -> u8 {
    if report.error.is_some() {
        return exit::ERROR;
    }
    let local = report.certificates.iter().map(|r| r.status);
    let cluster = report.cluster.iter().flat_map(|c| c.certificates.iter().map(|r| r.status));
    let worst = local.chain(cluster).max().unwrap_or(Validity::Ok);
    worst.exit_code()
}

/// Expired or invalid certificates outrank a cluster that could not be assessed, which
/// outranks certificates that merely expire soon: the order an operator must act in.
fn exit_rank(code: u8) -> u8 {
    match code {
        exit::OK => 0,
        exit::EXPIRING => 1,
        exit::ERROR => 2,
        _ => 3,
    }
}

fn summarize(reports: &[ClusterReport]) -> Summary {
    let mut s = Summary {
        clusters: reports.len(),
        ok: 0,
        expiring: 0,
        not_yet_valid: 0,
        expired: 0,
        missing: 0,
        invalid: 0,
        errors: 0,
        exit_code: exit::OK,
    };
    for report in reports {
        if report.error.is_some() {
            s.errors += 1;
        }
        for row in &report.certificates {
            match row.status {
                Validity::Ok => s.ok += 1,
                Validity::Expiring => s.expiring += 1,
                Validity::NotYetValid => s.not_yet_valid += 1,
                Validity::Expired => s.expired += 1,
                Validity::Missing => s.missing += 1,
                Validity::Invalid => s.invalid += 1,
            }
        }
        if exit_rank(report.exit_code) > exit_rank(s.exit_code) {
            s.exit_code = report.exit_code;
        }
    }
    s
}

fn render_table(out: &mut impl Write, doc: &StatusDocument, fleet: bool) -> std::io::Result<()> {
    for (i, report) in doc.reports.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        if fleet || report.error.is_some() {
            writeln!(out, "== {} ==", report.assets_dir)?;
        }
        if let Some(error) = &report.error {
            writeln!(out, "error: {error}")?;
            continue;
        }
        render_local(out, report)?;
        if let Some(cluster) = &report.cluster {
            writeln!(out)?;
            render_cluster(out, cluster)?;
        }
    }
    if fleet {
        let s = &doc.summary;
        writeln!(out)?;
        writeln!(
            out,
            "SUMMARY: {} clusters, {} errors; certificates: {} ok, {} expiring, {} expired, \
             {} not yet valid, {} missing, {} invalid",
            s.clusters,
            s.errors,
            s.ok,
            s.expiring,
            s.expired,
            s.not_yet_valid,
            s.missing,
            s.invalid
        )?;
    }
    Ok(())
}

fn render_local(out: &mut impl Write, report: &ClusterReport) -> std::io::Result<()> {
    let mut table = Table::new(&[
        "NAME", "FILE", "SUBJECT", "CA", "EXPIRES", "RESIDUAL", "STATUS", "CHAIN", "KEY",
    ]);
    for row in &report.certificates {
        let no_expiry = row.chain == Check::NotApplicable && row.ca.is_none();
        let (subject, expires, residual) = cert_columns(row.cert.as_ref(), no_expiry);
        let ca = match (row.ca, &row.cert) {
            (Some(ca), _) => ca,
            (None, Some(_)) => "<self>",
            (None, None) => "-",
        };
        table.row(vec![
            row.name.to_string(),
            row.file.trim_start_matches("cluster-assets/").to_string(),
            subject,
            ca.to_string(),
            expires,
            residual,
            row.status.label().to_string(),
            row.chain.label().to_string(),
            row.key.label().to_string(),
        ]);
    }
    table.write(out)?;
    if !report.aggregation_enabled {
        writeln!(out, "aggregation: not enabled (no tls/aggregation-* files)")?;
    }
    for row in &report.certificates {
        for problem in &row.problems {
            writeln!(out, "{}: {problem}", row.name)?;
        }
    }
    Ok(())
}

/// Subject, expiry date and residual time columns.
fn cert_columns(cert: Option<&CertFacts>, no_expiry: bool) -> (String, String, String) {
    match cert {
        Some(c) => (
            c.subject.clone(),
            pki::human_date(c.not_after_unix),
            short_residual(c.residual_seconds),
        ),
        None if no_expiry => ("-".into(), "never".into(), "-".into()),
        None => ("-".into(), "-".into(), "-".into()),
    }
}

fn render_cluster(out: &mut impl Write, cluster: &ClusterSection) -> std::io::Result<()> {
    let target = match (&cluster.server, &cluster.kubeconfig) {
        (Some(server), Some(kubeconfig)) => format!(" {server} ({kubeconfig})"),
        _ => String::new(),
    };
    if !cluster.reached {
        let reason = cluster.error.as_deref().unwrap_or("unknown reason");
        writeln!(out, "cluster:{target} not reached: {reason}")?;
        writeln!(out, "cluster: only the asset dir was checked")?;
        return Ok(());
    }
    writeln!(out, "cluster:{target}")?;
    let mut table =
        Table::new(&["OBJECT", "KEY", "SUBJECT", "EXPIRES", "RESIDUAL", "STATUS", "ASSET DIR"]);
    for row in &cluster.certificates {
        let (subject, expires, residual) = cert_columns(row.cert.as_ref(), false);
        let key = if row.index > 0 || row.key.ends_with("ca-file") || row.key.ends_with("ca.crt") {
            format!("{}[{}]", row.key, row.index)
        } else {
            row.key.clone()
        };
        let current = match row.current {
            Some(true) => format!("current {}", row.compared_with),
            Some(false) => format!("not current {}", row.compared_with),
            None => "?".into(),
        };
        table.row(vec![
            row.object.clone(),
            key,
            subject,
            expires,
            residual,
            row.status.label().to_string(),
            current,
        ]);
    }
    table.write(out)?;
    for row in &cluster.certificates {
        for problem in &row.problems {
            writeln!(out, "{}: {problem}", row.object)?;
        }
    }
    if cluster.api_services.is_empty() {
        writeln!(out, "apiservices: none backed by a service")?;
        return Ok(());
    }
    writeln!(out)?;
    let mut table = Table::new(&["APISERVICE", "SERVICE", "AVAILABLE", "REASON"]);
    for svc in &cluster.api_services {
        table.row(vec![
            svc.name.clone(),
            svc.service.clone(),
            svc.available.clone(),
            svc.reason.clone().unwrap_or_default(),
        ]);
    }
    table.write(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_from_dates() {
        let day = 86_400;
        assert_eq!(Validity::of_dates(0, 100 * day, 10 * day, 30 * day), Validity::Ok);
        assert_eq!(Validity::of_dates(0, 100 * day, 80 * day, 30 * day), Validity::Expiring);
        assert_eq!(Validity::of_dates(0, 100 * day, 100 * day, 30 * day), Validity::Expired);
        assert_eq!(Validity::of_dates(5 * day, 100 * day, day, 30 * day), Validity::NotYetValid);
    }

    #[test]
    fn exit_code_ranks_expired_over_errors_over_expiring() {
        let ranked = [exit::OK, exit::EXPIRING, exit::ERROR, exit::EXPIRED_OR_INVALID];
        for pair in ranked.windows(2) {
            assert!(exit_rank(pair[0]) < exit_rank(pair[1]));
        }
    }

    #[test]
    fn json_labels_are_stable() {
        let labels: Vec<String> = [
            Validity::Ok,
            Validity::Expiring,
            Validity::NotYetValid,
            Validity::Expired,
            Validity::Missing,
            Validity::Invalid,
        ]
        .iter()
        .map(|v| serde_json::to_string(v).unwrap())
        .collect();
        assert_eq!(
            labels,
            [
                "\"OK\"",
                "\"EXPIRING\"",
                "\"NOT-YET-VALID\"",
                "\"EXPIRED\"",
                "\"MISSING\"",
                "\"INVALID\""
            ]
        );
        assert_eq!(serde_json::to_string(&Check::NotApplicable).unwrap(), "\"not-applicable\"");
    }
}
