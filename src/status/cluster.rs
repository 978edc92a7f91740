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

/// Whether `other` is an earlier issue of `current`: another certificate with its subject and
/// key (`renew` re-issues the CA certificates with their keys kept). It verifies exactly what
/// `current` verifies, and kube-apiserver keeps it in its ConfigMap, merged with what it
/// trusts now, until five minutes after it expires: nothing to do about it.
fn reissued(current: &pki::CertInfo, other: &pki::CertInfo) -> bool {
    other.sha256 != current.sha256
        && other.subject == current.subject
        && pki::certificate_half(other).is_some_and(|k| Some(k) == pki::certificate_half(current))
}

fn superseded(at: usize) -> String {
    format!(
        "an earlier issue of [{at}] (the current one) with the same key: it verifies what \
         [{at}] verifies; kube-apiserver drops it 5 minutes after it expires. Nothing to do"
    )
}

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
                    let current = certs.iter().position(|c| Some(&c.sha256) == local_sha.as_ref());
                    for (index, cert) in certs.iter().enumerate() {
                        let earlier = current.filter(|&at| reissued(&certs[at], cert));
                        let (status, notes) = match earlier {
                            Some(at) => (Validity::Ok, vec![superseded(at)]),
                            None => (
                                Validity::of_dates(cert.not_before, cert.not_after, now, window),
                                Vec::new(),
                            ),
                        };
                        section.certificates.push(row(
                            index,
                            Some(CertFacts::new(cert, now)),
                            status,
                            notes,
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

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::pkey::{PKey, Private};

    fn key() -> PKey<Private> {
        PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap()
    }

    fn ca(cn: &str, key: &PKey<Private>, serial: u32) -> pki::CertInfo {
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = openssl::x509::X509Builder::new().unwrap();
        b.set_serial_number(
            &openssl::bn::BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap(),
        )
        .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap()).unwrap();
        b.sign(key, openssl::hash::MessageDigest::sha256()).unwrap();
        pki::parse_one_cert(&b.build().to_pem().unwrap()).unwrap()
    }

    #[test]
    fn only_an_earlier_issue_with_the_same_subject_and_key_is_superseded() {
        let (kept, other) = (key(), key());
        let current = ca("kubernetes-ca", &kept, 2);
        assert!(reissued(&current, &ca("kubernetes-ca", &kept, 1)), "renew's re-issue");
        assert!(!reissued(&current, &current), "the current certificate itself");
        assert!(!reissued(&current, &ca("kubernetes-ca", &other, 1)), "a new CA key (aggregation)");
        assert!(!reissued(&current, &ca("another-ca", &kept, 1)), "another subject");
    }
}
