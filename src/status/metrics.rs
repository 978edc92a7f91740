//! `status -o prometheus` and `--textfile`: the report in the Prometheus text exposition
//! format, one exposition for every asset dir given. Certificates carry
//! x509-certificate-exporter's metric and label names, so that its alert rules and dashboard
//! work on them unchanged; what only this tool knows (chains, keys, what to run, rotations)
//! has `certrotate_` names. docs/monitoring.md lists every series.
//!
//! Labels hold names, paths, serial numbers and commands, never key material.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use crate::assets::{self, Storage};
use crate::error::{Error, Result};
use crate::rotation::files::write_atomic;
use crate::rotation::journal::RunState;

use super::report::{CertFacts, Check, ClusterCertRow, ClusterReport, StatusDocument};

type Labels = Vec<(&'static str, String)>;

/// The metric families, in the order they are written.
#[derive(Clone, Copy)]
enum Metric {
    NotBefore,
    NotAfter,
    Expired,
    CertError,
    Status,
    ChainValid,
    KeyMatch,
    ClusterReached,
    AssetsDirError,
    RotationInProgress,
    RotationStarted,
    LastRotation,
}

const METRICS: usize = 12;

impl Metric {
    fn name_and_help(self) -> (&'static str, &'static str) {
        match self {
            Self::NotBefore => {
                ("x509_cert_not_before", "Unix time of the certificate's notBefore.")
            }
            Self::NotAfter => ("x509_cert_not_after", "Unix time of the certificate's notAfter."),
            Self::Expired => ("x509_cert_expired", "1 if the certificate has expired, else 0."),
            Self::CertError => (
                "x509_cert_error",
                "1 if the certificate could not be read (missing, corrupt), else 0.",
            ),
            Self::Status => (
                "certrotate_cert_status",
                "Always 1: the row's status (OK, EXPIRING, NOT-YET-VALID, EXPIRED, MISSING, \
                 INVALID) and, when it is not OK, the command that fixes it, as labels.",
            ),
            Self::ChainValid => (
                "certrotate_chain_valid",
                "1 if the certificate is signed by its CA (a self-signed CA: by itself; an etcd \
                 CA copy: identical to tls/etcd-ca.crt), 0 if not.",
            ),
            Self::KeyMatch => (
                "certrotate_key_match",
                "1 if the private key belongs to the certificate, 0 if not.",
            ),
            Self::ClusterReached => (
                "certrotate_cluster_reached",
                "1 if the cluster answered and is the asset dir's cluster, else 0.",
            ),
            Self::AssetsDirError => (
                "certrotate_assets_dir_error",
                "1 if the asset dir could not be checked at all, else 0.",
            ),
            Self::RotationInProgress => (
                "certrotate_rotation_in_progress",
                "1 if the latest run of the rotation is in progress (run the same command again \
                 to finish it), 0 if it finished.",
            ),
            Self::RotationStarted => (
                "certrotate_rotation_started_timestamp_seconds",
                "Unix time the latest run of the rotation started.",
            ),
            Self::LastRotation => (
                "certrotate_last_rotation_timestamp_seconds",
                "Unix time the last finished run of the rotation finished.",
            ),
        }
    }
}

/// Samples per family, indexed by `Metric as usize`: every sample of a name is written
/// together, after its HELP and TYPE.
struct Exposition {
    samples: [Vec<(Labels, i64)>; METRICS],
}

impl Exposition {
    fn new() -> Self {
        Self { samples: std::array::from_fn(|_| Vec::new()) }
    }

    fn add(&mut self, metric: Metric, labels: Labels, value: i64) {
        self.samples[metric as usize].push((labels, value));
    }

    fn check(&mut self, metric: Metric, labels: &Labels, check: Check) {
        match check {
            Check::Ok => self.add(metric, labels.clone(), 1),
            Check::Fail => self.add(metric, labels.clone(), 0),
            Check::NotApplicable | Check::Unknown => {}
        }
    }

    fn text(&self) -> String {
        const ALL: [Metric; METRICS] = [
            Metric::NotBefore,
            Metric::NotAfter,
            Metric::Expired,
            Metric::CertError,
            Metric::Status,
            Metric::ChainValid,
            Metric::KeyMatch,
            Metric::ClusterReached,
            Metric::AssetsDirError,
            Metric::RotationInProgress,
            Metric::RotationStarted,
            Metric::LastRotation,
        ];
        let mut out = String::new();
        for metric in ALL {
            let samples = &self.samples[metric as usize];
            if samples.is_empty() {
                continue;
            }
            let (name, help) = metric.name_and_help();
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (labels, value) in samples {
                out.push_str(name);
                out.push('{');
                for (i, (label, text)) in labels.iter().enumerate() {
                    let comma = if i > 0 { "," } else { "" };
                    let _ = write!(out, "{comma}{label}=\"{}\"", escape(text));
                }
                let _ = writeln!(out, "}} {value}");
            }
        }
        out
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// The exposition of the whole document at `now`.
pub fn exposition(doc: &StatusDocument, now: i64) -> String {
    let mut exp = Exposition::new();
    let mut seen = HashSet::new();
    // The same asset dir given twice would repeat every series, which makes Prometheus and
    // node_exporter reject the whole exposition.
    for report in doc.reports.iter().filter(|r| seen.insert(r.assets_dir.as_str())) {
        add_report(&mut exp, report, now);
    }
    exp.text()
}

fn add_report(exp: &mut Exposition, report: &ClusterReport, now: i64) {
    let mut base: Labels = vec![("assets_dir", report.assets_dir.clone())];
    if let Some(server) = report.cluster.as_ref().and_then(|c| c.server.clone()) {
        base.push(("cluster", server));
    }
    exp.add(Metric::AssetsDirError, base.clone(), i64::from(report.error.is_some()));
    if report.error.is_some() {
        return;
    }
    let root = Path::new(&report.assets_dir);
    for row in &report.certificates {
        let path = root.join(&row.file);
        let mut labels = base.clone();
        labels.push(("credential", row.name.to_string()));
        labels.push(("filename", file_name(&path)));
        labels.push(("filepath", path.display().to_string()));
        let is_certificate = !matches!(
            assets::credential(row.name).map(|c| c.storage),
            Some(Storage::KeyPair { .. })
        );
        if is_certificate {
            add_certificate(exp, &labels, row.cert.as_ref(), now);
        }
        add_status(exp, &labels, row.status.label(), row.fix.as_deref());
        exp.check(Metric::ChainValid, &labels, row.chain);
        exp.check(Metric::KeyMatch, &labels, row.key);
    }
    if let Some(cluster) = &report.cluster {
        exp.add(Metric::ClusterReached, base.clone(), i64::from(cluster.reached));
        for row in &cluster.certificates {
            let mut labels = base.clone();
            labels.push(("credential", row.compared_with.to_string()));
            labels.extend(object_labels(row));
            labels.push(("bundle_index", row.index.to_string()));
            add_certificate(exp, &labels, row.cert.as_ref(), now);
            add_status(exp, &labels, row.status.label(), row.fix.as_deref());
        }
    }
    for rotation in &report.rotations {
        let Some(state) = rotation.state else { continue };
        let mut labels = base.clone();
        labels.push(("rotation", rotation.rotation.to_string()));
        if let Some(at) = rotation.last_finished_unix {
            exp.add(Metric::LastRotation, labels.clone(), at);
        }
        labels.push(("run", rotation.run.clone()));
        exp.add(
            Metric::RotationInProgress,
            labels.clone(),
            i64::from(state == RunState::InProgress),
        );
        if let Some(at) = rotation.started_unix {
            exp.add(Metric::RotationStarted, labels, at);
        }
    }
}

/// The x509 series of one certificate: its dates, or an error when it could not be read.
fn add_certificate(exp: &mut Exposition, location: &Labels, cert: Option<&CertFacts>, now: i64) {
    let Some(cert) = cert else {
        exp.add(Metric::CertError, location.clone(), 1);
        return;
    };
    let mut labels = location.clone();
    labels.push(("serial_number", cert.serial_decimal.clone()));
    const SUBJECT: [&str; 6] =
        ["subject_C", "subject_ST", "subject_L", "subject_O", "subject_OU", "subject_CN"];
    const ISSUER: [&str; 6] =
        ["issuer_C", "issuer_ST", "issuer_L", "issuer_O", "issuer_OU", "issuer_CN"];
    let attributes = SUBJECT.iter().zip(&cert.subject_attributes);
    for (name, value) in attributes.chain(ISSUER.iter().zip(&cert.issuer_attributes)) {
        if let Some(value) = value {
            labels.push((name, value.clone()));
        }
    }
    exp.add(Metric::NotBefore, labels.clone(), cert.not_before_unix);
    exp.add(Metric::NotAfter, labels.clone(), cert.not_after_unix);
    exp.add(Metric::Expired, labels.clone(), i64::from(now >= cert.not_after_unix));
    exp.add(Metric::CertError, labels, 0);
}

fn add_status(exp: &mut Exposition, location: &Labels, status: &str, fix: Option<&str>) {
    let mut labels = location.clone();
    labels.push(("status", status.to_string()));
    if let Some(fix) = fix {
        labels.push(("fix", fix.to_string()));
    }
    exp.add(Metric::Status, labels, 1);
}

/// Where a cluster-held certificate is, with the exporter's labels for each kind of object:
/// `secret_*` for Secrets, `configmap_*` for ConfigMaps, `cabundle_*` for a webhook's
/// `caBundle`.
fn object_labels(row: &ClusterCertRow) -> Labels {
    let parts: Vec<&str> = row.object.split('/').collect();
    match parts.as_slice() {
        ["secret", namespace, name] => vec![
            ("secret_namespace", namespace.to_string()),
            ("secret_name", name.to_string()),
            ("secret_key", row.key.clone()),
        ],
        ["configmap", namespace, name] => vec![
            ("configmap_namespace", namespace.to_string()),
            ("configmap_name", name.to_string()),
            ("configmap_key", row.key.clone()),
        ],
        ["mutatingwebhookconfiguration", name] => vec![
            ("cabundle_resource_kind", "MutatingWebhookConfiguration".to_string()),
            ("cabundle_resource_name", name.to_string()),
        ],
        _ => vec![("object", row.object.clone()), ("key", row.key.clone())],
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Writes the exposition for node_exporter's textfile collector: a temp file in the same
/// folder (its name does not end in `.prom`, so the collector never reads it half-written),
/// then a rename over `path`. World-readable: the collector runs as another user.
pub fn write_textfile(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes(), 0o644)
        .map_err(|e| Error::Textfile { path: path.to_path_buf(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape("two\nlines"), r"two\nlines");
    }

    #[test]
    fn families_are_written_whole_in_their_order() {
        let mut exp = Exposition::new();
        let labels = |dir: &str| vec![("assets_dir", dir.to_string())];
        exp.add(Metric::AssetsDirError, labels("/b"), 1);
        exp.add(Metric::NotAfter, labels("/a"), 7);
        exp.add(Metric::AssetsDirError, labels("/a"), 0);
        let text = exp.text();
        let names: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("# TYPE"))
            .map(|l| l.split(' ').nth(2).unwrap())
            .collect();
        assert_eq!(names, ["x509_cert_not_after", "certrotate_assets_dir_error"]);
        assert!(text.ends_with(
            "certrotate_assets_dir_error{assets_dir=\"/b\"} 1\ncertrotate_assets_dir_error{assets_dir=\"/a\"} 0\n"
        ));
    }
}
