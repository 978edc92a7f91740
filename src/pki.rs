//! Certificate and key facts, computed in-process with OpenSSL and no I/O.
//!
//! Keys are compared by their public halves only: loading an RSA 2048 private key with
//! OpenSSL's full consistency check took 55-70 ms when we measured it, about 1,000 times a
//! certificate parse, and even OpenSSL 3's plain key decoding costs ~1 ms, so RSA halves are
//! read from the DER directly.

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Public};
use openssl::x509::{X509, X509NameRef};

/// Why PEM input could not be used, worded for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemProblem(pub String);

/// The facts `status` reports about one certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// The attributes metrics label a name with (x509-certificate-exporter's `subject_CN` …).
    pub subject_attributes: NameAttributes,
    pub issuer_attributes: NameAttributes,
    pub not_before: i64,
    pub not_after: i64,
    /// Hexadecimal, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Decimal, as x509-certificate-exporter labels it.
    pub serial_decimal: String,
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
    let serial = x509.serial_number().to_bn().ok();
    let text = |s: Result<openssl::string::OpensslString, _>| s.map(|s| s.to_string()).ok();
    let serial_decimal = serial.as_ref().and_then(|bn| text(bn.to_dec_str())).unwrap_or_default();
    let serial = serial.as_ref().and_then(|bn| text(bn.to_hex_str())).unwrap_or_default();
    let sha256 = x509
        .digest(MessageDigest::sha256())
        .map(|d| hex(&d))
        .map_err(|_| PemProblem("cannot fingerprint certificate".into()))?;
    let subject = name_to_string(x509.subject_name());
    let issuer = name_to_string(x509.issuer_name());
    let self_signed = subject == issuer && x509.public_key().is_ok_and(|k| verifies(&x509, &k));
    Ok(CertInfo {
        subject_attributes: name_attributes(x509.subject_name()),
        issuer_attributes: name_attributes(x509.issuer_name()),
        subject,
        issuer,
        not_before,
        not_after,
        serial,
        serial_decimal,
        sha256,
        self_signed,
        x509,
    })
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

/// The first value of each name attribute x509-certificate-exporter labels certificates
/// with: C, ST, L, O, OU and CN, in that order.
pub type NameAttributes = [Option<String>; 6];

fn name_attributes(name: &X509NameRef) -> NameAttributes {
    let nids = [
        Nid::COUNTRYNAME,
        Nid::STATEORPROVINCENAME,
        Nid::LOCALITYNAME,
        Nid::ORGANIZATIONNAME,
        Nid::ORGANIZATIONALUNITNAME,
        Nid::COMMONNAME,
    ];
    nids.map(|nid| {
        let entry = name.entries_by_nid(nid).next()?;
        entry.data().to_string().ok().map(|s| s.to_string())
    })
}

/// Whether `cert` carries a valid signature by `key`.
fn verifies(cert: &X509, key: &PKey<Public>) -> bool {
    cert.verify(key).unwrap_or(false)
}

/// Whether `cert` was issued by `ca`: the issuer name matches and the signature verifies.
pub fn issued_by(cert: &CertInfo, ca: &CertInfo) -> bool {
    cert.issuer == ca.subject && ca.x509.public_key().is_ok_and(|k| verifies(&cert.x509, &k))
}

/// The public half of a key, in a form that compares equal for the two halves of one pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicHalf {
    /// RSA modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Any other algorithm: its SubjectPublicKeyInfo DER.
    Spki(Vec<u8>),
}

/// The public half of a PEM private key.
///
/// RSA keys (all of Lokomotive's) are read straight from their DER: OpenSSL 3's key decoder
/// costs ~1 ms per key, which for a dozen keys per asset dir would dominate `status`.
pub fn private_key_half(pem: &[u8]) -> Result<PublicHalf, PemProblem> {
    let (label, der) =
        pem_block(pem, &["PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])?;
    if label == "ENCRYPTED PRIVATE KEY" {
        return Err(PemProblem("the private key is encrypted; Lokomotive keys never are".into()));
    }
    let rsa =
        if label == "RSA PRIVATE KEY" { der::pkcs1_private(&der) } else { der::pkcs8_rsa(&der) };
    half(rsa, "private", || PKey::private_key_from_pem(pem)?.public_key_to_der())
}

/// The public half of a PEM public key (`service-account.pub`).
pub fn public_key_half(pem: &[u8]) -> Result<PublicHalf, PemProblem> {
    let (label, der) = pem_block(pem, &["PUBLIC KEY", "RSA PUBLIC KEY"])?;
    let rsa = if label == "RSA PUBLIC KEY" { der::pkcs1_public(&der) } else { der::spki_rsa(&der) };
    half(rsa, "public", || PKey::public_key_from_pem(pem)?.public_key_to_der())
}

/// The RSA half read from the DER, or for another algorithm (`None`) OpenSSL's SPKI.
fn half(
    rsa: der::Parsed,
    kind: &str,
    spki: impl FnOnce() -> Result<Vec<u8>, openssl::error::ErrorStack>,
) -> Result<PublicHalf, PemProblem> {
    match rsa {
        Some(Ok((n, e))) => Ok(PublicHalf::Rsa { n, e }),
        Some(Err(())) => Err(PemProblem(format!("corrupt {kind} key PEM (malformed DER)"))),
        None => spki()
            .map(PublicHalf::Spki)
            .map_err(|e| PemProblem(format!("corrupt {kind} key PEM ({})", first_reason(&e)))),
    }
}

/// The public half of the key a certificate certifies.
pub fn certificate_half(cert: &CertInfo) -> Option<PublicHalf> {
    let key: PKey<Public> = cert.x509.public_key().ok()?;
    match key.rsa() {
        Ok(rsa) => Some(PublicHalf::Rsa { n: rsa.n().to_vec(), e: rsa.e().to_vec() }),
        Err(_) => key.public_key_to_der().ok().map(PublicHalf::Spki),
    }
}

/// The label and DER bytes of the first PEM block whose label is one of `labels`.
fn pem_block(pem: &[u8], labels: &[&'static str]) -> Result<(&'static str, Vec<u8>), PemProblem> {
    use base64::Engine as _;
    let text = std::str::from_utf8(pem).map_err(|_| PemProblem("not a text PEM file".into()))?;
    if text.trim().is_empty() {
        return Err(PemProblem("the file is empty".into()));
    }
    let found = labels.iter().find_map(|label| {
        let begin = format!("{BEGIN}{label}-----");
        text.find(&begin).map(|at| (*label, &text[at + begin.len()..]))
    });
    let Some((label, body)) = found else {
        return Err(PemProblem(format!("no PEM {} block", labels[0])));
    };
    let end = format!("{END}{label}-----");
    let Some(body) = body.find(&end).map(|at| &body[..at]) else {
        return Err(PemProblem(format!("truncated PEM: a {label} block has no END line")));
    };
    let base64: String = body.split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .map_err(|_| PemProblem(format!("corrupt {label} PEM (invalid base64)")))?;
    Ok((label, der))
}

/// Just enough DER to find an RSA key's modulus and exponent. Each parser returns `None` for a
/// key that is not RSA (the caller falls back to OpenSSL) and `Some(Err)` for malformed input.
mod der {
    /// Modulus and exponent; `None` when the key is not RSA, `Some(Err)` when malformed.
    pub type Parsed = Option<Result<(Vec<u8>, Vec<u8>), ()>>;

    /// OID 1.2.840.113549.1.1.1, rsaEncryption.
    const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

    /// Splits one TLV off `input`: (tag, contents, rest).
    fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), ()> {
        let (&tag, rest) = input.split_first().ok_or(())?;
        let (&first, rest) = rest.split_first().ok_or(())?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return Err(());
            }
            let len = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[count..])
        };
        if rest.len() < len {
            return Err(());
        }
        Ok((tag, &rest[..len], &rest[len..]))
    }

    /// The whole input must be one TLV of `tag`.
    fn whole(input: &[u8], tag: u8) -> Result<&[u8], ()> {
        match tlv(input)? {
            (t, contents, []) if t == tag => Ok(contents),
            _ => Err(()),
        }
    }

    fn integer(input: &[u8]) -> Result<(Vec<u8>, &[u8]), ()> {
        let (tag, contents, rest) = tlv(input)?;
        if tag != 0x02 {
            return Err(());
        }
        let start = contents.iter().position(|b| *b != 0).unwrap_or(contents.len());
        Ok((contents[start..].to_vec(), rest))
    }

    fn n_and_e(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ()> {
        let (n, rest) = integer(input)?;
        let (e, _) = integer(rest)?;
        Ok((n, e))
    }

    /// RSAPrivateKey: SEQUENCE { version, n, e, … }.
    pub fn pkcs1_private(input: &[u8]) -> Parsed {
        Some(whole(input, 0x30).and_then(|seq| n_and_e(integer(seq)?.1)))
    }

    /// RSAPublicKey: SEQUENCE { n, e }.
    pub fn pkcs1_public(input: &[u8]) -> Parsed {
        Some(whole(input, 0x30).and_then(n_and_e))
    }

    /// AlgorithmIdentifier: `Ok(true)` for rsaEncryption.
    fn is_rsa(input: &[u8]) -> Result<(bool, &[u8]), ()> {
        let (tag, alg, rest) = tlv(input)?;
        let (oid_tag, oid, _) = tlv(alg)?;
        if tag != 0x30 || oid_tag != 0x06 {
            return Err(());
        }
        Ok((oid == RSA_OID, rest))
    }

    /// PrivateKeyInfo: SEQUENCE { version, AlgorithmIdentifier, OCTET STRING RSAPrivateKey }.
    pub fn pkcs8_rsa(input: &[u8]) -> Parsed {
        let parsed = whole(input, 0x30).and_then(|seq| {
            let (_, rest) = integer(seq)?;
            let (rsa, rest) = is_rsa(rest)?;
            let (tag, key, _) = tlv(rest)?;
            Ok((rsa, tag, key))
        });
        match parsed {
            Ok((false, _, _)) => None,
            Ok((true, 0x04, key)) => pkcs1_private(key),
            _ => Some(Err(())),
        }
    }

    /// SubjectPublicKeyInfo: SEQUENCE { AlgorithmIdentifier, BIT STRING RSAPublicKey }.
    pub fn spki_rsa(input: &[u8]) -> Parsed {
        let parsed = whole(input, 0x30).and_then(|seq| {
            let (rsa, rest) = is_rsa(seq)?;
            let (tag, bits, _) = tlv(rest)?;
            Ok((rsa, tag, bits))
        });
        match parsed {
            Ok((false, _, _)) => None,
            // The first byte of a BIT STRING counts unused bits: 0 for a key.
            Ok((true, 0x03, [0, key @ ..])) => pkcs1_public(key),
            _ => Some(Err(())),
        }
    }
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

    fn key_pems() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let rsa = key.rsa().unwrap();
        (
            key.private_key_to_pem_pkcs8().unwrap(),
            rsa.private_key_to_pem().unwrap(),
            key.public_key_to_pem().unwrap(),
            rsa.public_key_to_pem_pkcs1().unwrap(),
        )
    }

    #[test]
    fn rsa_halves_agree_with_openssl_in_every_encoding() {
        let (pkcs8, pkcs1, spki, pkcs1_pub) = key_pems();
        let via_openssl = PKey::private_key_from_pem(&pkcs8).unwrap().rsa().unwrap();
        let expected = PublicHalf::Rsa { n: via_openssl.n().to_vec(), e: via_openssl.e().to_vec() };
        assert_eq!(private_key_half(&pkcs8).unwrap(), expected);
        assert_eq!(private_key_half(&pkcs1).unwrap(), expected);
        assert_eq!(public_key_half(&spki).unwrap(), expected);
        assert_eq!(public_key_half(&pkcs1_pub).unwrap(), expected);
        let (other, ..) = key_pems();
        assert_ne!(private_key_half(&other).unwrap(), expected);
    }

    #[test]
    fn broken_keys_are_named() {
        let (pkcs8, ..) = key_pems();
        let text = String::from_utf8(pkcs8).unwrap();
        let cut = &text[..text.len() / 2];
        assert!(private_key_half(cut.as_bytes()).unwrap_err().0.contains("truncated"));
        // A valid base64 body whose DER length fields disagree with its size.
        let lines: Vec<&str> = text.lines().collect();
        let short = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[lines.len() - 1]);
        assert!(private_key_half(short.as_bytes()).unwrap_err().0.contains("malformed DER"));
        let bad = text.replacen("MII", "M*I", 1);
        assert!(private_key_half(bad.as_bytes()).unwrap_err().0.contains("invalid base64"));
        assert!(private_key_half(b"").unwrap_err().0.contains("empty"));
    }

    #[test]
    fn non_rsa_keys_fall_back_to_openssl() {
        let group = openssl::ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap();
        let private = private_key_half(&key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let public = public_key_half(&key.public_key_to_pem().unwrap()).unwrap();
        assert_eq!(private, public);
        assert!(matches!(private, PublicHalf::Spki(_)));
    }

    #[test]
    fn dates_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(human_date(1_637_257_843), "Nov 18, 2021 17:50 UTC");
    }
}
