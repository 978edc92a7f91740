//! Cluster comparison: the certificates the cluster holds and trusts, read through one
//! verified connection and compared with the asset dir's current ones.

use std::path::Path;

use crate::assets::AssetDir;
use crate::cli::GlobalOpts;
use crate::k8s::{self, ClusterSnapshot, Connection};
use crate::pki;

use super::report::{
    ApiServiceRow, CertFacts, ClusterCertRow, ClusterReport, ClusterSection, Validity,
};

/// The cluster section of one asset dir's report: connects (the asset dir's kubeconfig unless
/// the flags name another), refuses a cluster that is not the asset dir's, reads what the
/// cluster holds and compares it with the asset dir's rows. Never fails: what went wrong is the
/// section's `error`, because the local rows stand on their own.
pub async fn cluster_section(
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
    read_cluster_rows(&mut section, &conn, report, now, window).await;
    section
}

/// Reads what the cluster of `conn` (verified to be the asset dir's) holds into `section`.
pub async fn read_cluster_rows(
    section: &mut ClusterSection,
    conn: &Connection,
    report: &ClusterReport,
    now: i64,
    window: i64,
) {
    match k8s::snapshot(conn).await {
        Ok(snapshot) => {
            section.reached = true;
            fill_cluster_rows(section, &snapshot, report, now, window);
        }
        Err(err) => section.error = Some(err.to_string()),
    }
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
            fix: None,
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
    section.api_services = snapshot
        .api_services
        .iter()
        .map(|s| ApiServiceRow {
            name: s.name.clone(),
            service: s.service.clone(),
            available: s.available.clone(),
            reason: s.reason.clone(),
            message: s.message.clone(),
        })
        .collect();
}
