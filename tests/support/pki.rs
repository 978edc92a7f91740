//! Certificates the harness needs for itself (serving certificates of the simulated kubelet
//! and of extension API servers, which nothing verifies) and helpers to compare CA bundles.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509Builder, X509NameBuilder, X509NameRef};

/// A certificate and key on disk (the key file is 0600).
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed serving certificate for `localhost` / `127.0.0.1`, written to
/// `dir/<name>.crt` and `dir/<name>.key`. EC P-256: generating RSA keys would cost a test
/// seconds for a certificate nobody verifies.
pub fn self_signed_serving(dir: &Path, name: &str) -> CertFiles {
    let key = ec_key();
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_nid(Nid::COMMONNAME, name).unwrap();
    let subject = subject.build();
    let mut b = builder(&subject, &subject, &key, 30);
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let files =
        CertFiles { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    std::fs::write(&files.cert, b.build().to_pem().unwrap()).unwrap();
    write_private(&files.key, &key.private_key_to_pem_pkcs8().unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", files.key.display()));
    files
}

/// A client certificate for `user` in `groups` (the subject's CN and O, as kube-apiserver reads
/// them), issued by the CA of `ca_cert`/`ca_key`: `(certificate PEM, key PEM)`. EC P-256, as
/// above.
pub fn client_certificate(
    ca_cert: &Path,
    ca_key: &Path,
    user: &str,
    groups: &[&str],
) -> (Vec<u8>, Vec<u8>) {
    let read =
        |path: &Path| std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ca = X509::from_pem(&read(ca_cert)).unwrap();
    let ca_key = PKey::private_key_from_pem(&read(ca_key)).unwrap();
    let key = ec_key();
    let mut subject = X509NameBuilder::new().unwrap();
    for group in groups {
        subject.append_entry_by_nid(Nid::ORGANIZATIONNAME, group).unwrap();
    }
    subject.append_entry_by_nid(Nid::COMMONNAME, user).unwrap();
    let mut b = builder(&subject.build(), ca.subject_name(), &key, 1);
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    (b.build().to_pem().unwrap(), key.private_key_to_pem_pkcs8().unwrap())
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A certificate of `key` for `subject` by `issuer`, valid from now for `days`, to be signed.
fn builder(
    subject: &X509NameRef,
    issuer: &X509NameRef,
    key: &PKey<Private>,
    days: u32,
) -> X509Builder {
    let mut serial = BigNum::new().unwrap();
    serial.rand(127, MsbOption::MAYBE_ZERO, false).unwrap();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap()).unwrap();
    b.set_subject_name(subject).unwrap();
    b.set_issuer_name(issuer).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(days).unwrap()).unwrap();
    b
}

/// Writes a file readable by its owner only, as a mounted Secret or a key file is, atomically
/// (a process starting meanwhile never reads half a file).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The permission bits of a file (`0o600`, …), for the checks that keys and journals are
/// private.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// SHA-256 fingerprints (hex) of every certificate in a PEM bundle, in bundle order; the way
/// to compare "which CAs does this ConfigMap hold" with the asset dir's files.
pub fn fingerprints(pem: &[u8]) -> Vec<String> {
    X509::stack_from_pem(pem)
        .unwrap_or_else(|e| panic!("not a PEM certificate bundle: {e}"))
        .iter()
        .map(|c| {
            c.digest(MessageDigest::sha256())
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
        .collect()
}

/// [`fingerprints`] of a PEM file.
pub fn file_fingerprints(path: &Path) -> Vec<String> {
    fingerprints(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// SHA-256 fingerprint (hex) of the leaf certificate a TLS server on `127.0.0.1:port` presents,
/// read from the handshake itself: what the process really serves, not the file it was given.
/// The certificate is taken as it arrives (nothing is verified, no client certificate is
/// offered), so a server that requires client certificates (etcd) shows its certificate too
/// before it ends the handshake.
pub fn served_fingerprint(port: u16) -> Result<String, String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let mut builder =
        SslConnector::builder(SslMethod::tls_client()).map_err(|e| format!("openssl: {e}"))?;
    let keep = Arc::clone(&seen);
    builder.set_verify_callback(SslVerifyMode::PEER, move |_, ctx| {
        if ctx.error_depth() == 0
            && let Some(cert) = ctx.current_cert()
            && let Ok(der) = cert.to_der()
        {
            *keep.lock().unwrap() =
                Some(fingerprints(&X509::from_der(&der).unwrap().to_pem().unwrap())[0].clone());
        }
        true
    });
    let connector = builder.build();
    let stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok();
    let mut config = connector.configure().map_err(|e| format!("openssl: {e}"))?;
    config.set_verify_hostname(false);
    // The handshake may fail afterwards (a server that wants a client certificate): the
    // certificate it sent was seen all the same.
    let handshake = config.connect("localhost", stream).map(|_| ()).map_err(|e| e.to_string());
    let fingerprint = seen.lock().unwrap().take();
    fingerprint.ok_or_else(|| {
        format!(
            "127.0.0.1:{port} presented no certificate ({})",
            handshake.err().unwrap_or_default()
        )
    })
}
