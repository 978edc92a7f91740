//! The status report model: what `status` says about each certificate, in the table and in
//! the JSON document (docs/status-json.md), and how rows add up to exit codes.

use serde::Serialize;

use crate::error::exit;
use crate::pki::{self, CertInfo};
use crate::rotation::journal::RunState;

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
    pub fn label(self) -> &'static str {
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
    pub not_before_unix: i64,
    #[serde(skip)]
    pub not_after_unix: i64,
    #[serde(skip)]
    pub serial_decimal: String,
    #[serde(skip)]
    pub subject_attributes: pki::NameAttributes,
    #[serde(skip)]
    pub issuer_attributes: pki::NameAttributes,
}

impl CertFacts {
    pub fn new(cert: &CertInfo, now: i64) -> Self {
        Self {
            subject: cert.subject.clone(),
            issuer: if cert.self_signed { "<self>".into() } else { cert.issuer.clone() },
            not_before: pki::rfc3339(cert.not_before),
            not_after: pki::rfc3339(cert.not_after),
            residual_seconds: cert.not_after - now,
            serial: cert.serial.clone(),
            sha256: cert.sha256.clone(),
            not_before_unix: cert.not_before,
            not_after_unix: cert.not_after,
            serial_decimal: cert.serial_decimal.clone(),
            subject_attributes: cert.subject_attributes.clone(),
            issuer_attributes: cert.issuer_attributes.clone(),
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
    /// What to run to make the row OK; `null` when it is.
    pub fix: Option<String>,
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
    /// What to run to make the row OK; `null` when it is.
    pub fix: Option<String>,
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

/// The latest run of one rotation command in the asset dir, from its journal.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationRow {
    /// `aggregation` or `webhook`: the command that runs it.
    pub rotation: &'static str,
    pub run: String,
    pub journal: String,
    /// `in-progress` or `finished`; `null` when the journal could not be read.
    pub state: Option<RunState>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The phases completed so far, in order.
    pub phases_done: Vec<String>,
    /// When the last finished run of this rotation (this one or an earlier one) finished.
    pub last_finished_at: Option<String>,
    /// Why the journal could not be read.
    pub error: Option<String>,
    #[serde(skip)]
    pub started_unix: Option<i64>,
    #[serde(skip)]
    pub last_finished_unix: Option<i64>,
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
    /// The latest run of each rotation that has run on this asset dir.
    pub rotations: Vec<RotationRow>,
    /// The one command to run next for this asset dir; `null` when every row is OK.
    pub next: Option<String>,
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
    /// The one command to run next, over every asset dir; `null` when every row is OK.
    pub next: Option<String>,
}

pub fn report_exit_code(report: &ClusterReport) -> u8 {
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

pub fn summarize(reports: &[ClusterReport]) -> Summary {
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
