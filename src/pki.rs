//! Certificate and key facts, computed in-process with OpenSSL and no I/O.
//!
//! Keys are compared by their public halves only: a full RSA private-key consistency check
//! costs ~1,000x a certificate parse (measured-costs.md) and would make `status` slower than
//! the openssl shell loop it replaces.

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private, Public};
use openssl::x509::{X509, X509NameRef};

/// Why PEM input could not be used, worded for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemProblem(pub String);

/// The facts `status` reports about one certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    pub serial: String,
    pub sha256: String,
    pub self_signed: bool,
    pub x509: X509,
}

const BEGIN: &str = "-----BEGIN ";
const END: &str = "-----END ";

/// Parses every certificate of a PEM bundle, refusing empty, truncated or corrupt input.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertInfo>, PemProblem> {
    check_pem_framing(pem, "CERTIFICATE")?;
    let certs = X509::stack_from_pem(pem)
        .map_err(|e| PemProblem(format!("corrupt certificate PEM ({})", first_reason(&e))))?;
    if certs.is_empty() {
        return Err(PemProblem("no certificate in the PEM data".into()));
    }
    certs.into_iter().map(cert_info).collect()
}

/// Parses exactly one certificate (a leaf file); extra blocks are a problem worth reporting.
pub fn parse_one_cert(pem: &[u8]) -> Result<CertInfo, PemProblem> {
    let mut certs = parse_certs(pem)?;
    if certs.len() > 1 {
        return Err(PemProblem(format!("expected one certificate, found {}", certs.len())));
    }
    Ok(certs.remove(0))
}

fn cert_info(x509: X509) -> Result<CertInfo, PemProblem> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).expect("epoch is a valid time");
    let seconds_since_epoch = |t: &openssl::asn1::Asn1TimeRef| -> Result<i64, PemProblem> {
        let diff = epoch.diff(t).map_err(|_| PemProblem("unreadable validity dates".into()))?;
        Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
    };
    let not_before = seconds_since_epoch(x509.not_before())?;
    let not_after = seconds_since_epoch(x509.not_after())?;
    let serial = x509
        .serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_default();
    let sha256 = x509
        .digest(MessageDigest::sha256())
        .map(|d| hex(&d))
        .map_err(|_| PemProblem("cannot fingerprint certificate".into()))?;
    let subject = name_to_string(x509.subject_name());
    let issuer = name_to_string(x509.issuer_name());
    let self_signed = subject == issuer && x509.public_key().is_ok_and(|k| verifies(&x509, &k));
    Ok(CertInfo { subject, issuer, not_before, not_after, serial, sha256, self_signed, x509 })
}

/// Catches what OpenSSL would silently skip: a file with no PEM block at all, or a block cut
/// off before its END line (truncated copy, full disk).
fn check_pem_framing(pem: &[u8], label: &str) -> Result<(), PemProblem> {
    let text = String::from_utf8_lossy(pem);
    if text.trim().is_empty() {
        return Err(PemProblem("the file is empty".into()));
    }
    let begins = text.matches(&format!("{BEGIN}{label}-----")).count();
    let ends = text.matches(&format!("{END}{label}-----")).count();
    if begins == 0 {
        return Err(PemProblem(format!("no PEM {label} block")));
    }
    if ends < begins {
        return Err(PemProblem(format!("truncated PEM: a {label} block has no END line")));
    }
    Ok(())
}

fn first_reason(err: &openssl::error::ErrorStack) -> String {
    err.errors()
        .first()
        .and_then(|e| e.reason().map(str::to_string))
        .unwrap_or_else(|| "unparseable".into())
}

/// `CN=kubernetes-ca, O=bootkube`: CN first, the way operators read subjects.
pub fn name_to_string(name: &X509NameRef) -> String {
    let mut parts: Vec<(i32, String)> = name
        .entries()
        .map(|e| {
            let short = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_default();
            let rank = if e.object().nid() == Nid::COMMONNAME { 0 } else { 1 };
            (rank, format!("{short}={value}"))
        })
        .collect();
    parts.sort_by_key(|(rank, _)| *rank);
    parts.into_iter().map(|(_, s)| s).collect::<Vec<_>>().join(", ")
}

/// Whether `cert` carries a valid signature by `key`.
fn verifies(cert: &X509, key: &PKey<Public>) -> bool {
    cert.verify(key).unwrap_or(false)
}

/// Whether `cert` was issued by `ca`: the issuer name matches and the signature verifies.
pub fn issued_by(cert: &CertInfo, ca: &CertInfo) -> bool {
    cert.issuer == ca.subject && ca.x509.public_key().is_ok_and(|k| verifies(&cert.x509, &k))
}

/// Loads a private key from PEM without OpenSSL's expensive consistency check.
pub fn parse_private_key(pem: &[u8]) -> Result<PKey<Private>, PemProblem> {
    check_pem_framing(pem, "PRIVATE KEY").or_else(|_| check_pem_framing(pem, "RSA PRIVATE KEY"))?;
    PKey::private_key_from_pem(pem)
        .map_err(|e| PemProblem(format!("corrupt private key PEM ({})", first_reason(&e))))
}

/// Loads a public key (`service-account.pub`).
pub fn parse_public_key(pem: &[u8]) -> Result<PKey<Public>, PemProblem> {
    check_pem_framing(pem, "PUBLIC KEY").or_else(|_| check_pem_framing(pem, "RSA PUBLIC KEY"))?;
    PKey::public_key_from_pem(pem)
        .or_else(|_| openssl::rsa::Rsa::public_key_from_pem_pkcs1(pem).and_then(PKey::from_rsa))
        .map_err(|e| PemProblem(format!("corrupt public key PEM ({})", first_reason(&e))))
}

/// Whether the private key is the other half of `public`.
pub fn key_matches(private: &PKey<Private>, public: &PKey<Public>) -> bool {
    private.public_eq(public)
}

/// The certificate's public key, for key-pair comparison.
pub fn public_key(cert: &CertInfo) -> Option<PKey<Public>> {
    cert.x509.public_key().ok()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats a Unix time as RFC 3339 (`2027-11-18T17:50:43Z`).
pub fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map(|t| t.to_string()).unwrap_or_else(|_| unix.to_string())
}

/// Formats a Unix time the way kubeadm prints expiry: `Nov 18, 2027 17:50 UTC`.
pub fn human_date(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%b %d, %Y %H:%M UTC").to_string())
        .unwrap_or_else(|_| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_garbage_are_named() {
        assert_eq!(parse_certs(b"").unwrap_err().0, "the file is empty");
        assert!(parse_certs(b"hello").unwrap_err().0.contains("no PEM CERTIFICATE block"));
        let cut = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(parse_certs(cut).unwrap_err().0.contains("truncated"));
        let corrupt = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(parse_certs(corrupt).unwrap_err().0.contains("corrupt"));
    }

    #[test]
    fn dates_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(human_date(1_637_257_843), "Nov 18, 2021 17:50 UTC");
    }
}
