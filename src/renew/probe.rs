//! What a TLS server really serves: one handshake, the certificate it presents, and (for
//! etcd) one HTTPS request over that connection. Used by `renew` to prove that kube-apiserver
//! and each etcd member serve the new certificates and accept the new client certificates.
//!
//! The server is not verified here (the caller compares what it presents with the asset
//! dir's certificate, which proves more); a client certificate and key, when given, are
//! handed to OpenSSL in memory, never written or shown.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;

use crate::pki::{self, CertInfo};

/// Bound of one connect, handshake and request.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A client certificate and its key (PEM).
pub struct ClientCert {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// What one probe saw.
#[derive(Debug)]
pub struct Served {
    pub cert: CertInfo,
    /// The response to the request, when one was made: status line and body.
    pub response: Option<String>,
}

/// `host:port` of an `https://host:port[/…]` URL (port 443 when none).
pub fn host_port(url: &str) -> std::result::Result<(String, u16), String> {
    let rest = url.strip_prefix("https://").ok_or_else(|| format!("{url} is not an https URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            let port = port.parse().map_err(|_| format!("{url}: bad port {port:?}"))?;
            (host, port)
        }
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url} names no host"));
    }
    Ok((host.to_string(), port))
}

/// Connects to `url`, presents `client` if given, and returns the certificate the server
/// presents; with `path`, also GETs it over that connection. Blocking: run it off the runtime
/// ([`probe`]).
fn probe_blocking(
    url: &str,
    client: Option<&ClientCert>,
    path: Option<&str>,
) -> std::result::Result<Served, String> {
    let (host, port) = host_port(url)?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: {host} has no address"))?;
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("{url}: cannot connect: {e}"))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    builder.set_verify(SslVerifyMode::NONE);
    if let Some(client) = client {
        let cert = X509::from_pem(&client.cert).map_err(|_| "unusable client certificate")?;
        let key = PKey::private_key_from_pem(&client.key).map_err(|_| "unusable client key")?;
        builder.set_certificate(&cert).map_err(|e| e.to_string())?;
        builder.set_private_key(&key).map_err(|e| e.to_string())?;
    }
    let connector = builder.build();
    let mut config = connector.configure().map_err(|e| e.to_string())?;
    config.set_verify_hostname(false);
    let sni = host.parse::<std::net::IpAddr>().is_err();
    config.set_use_server_name_indication(sni);
    let mut tls =
        config.connect(&host, tcp).map_err(|e| format!("{url}: TLS handshake failed: {e}"))?;
    let peer =
        tls.ssl().peer_certificate().ok_or_else(|| format!("{url} presented no certificate"))?;
    let pem = peer.to_pem().map_err(|e| e.to_string())?;
    let cert = pki::parse_one_cert(&pem).map_err(|p| format!("{url}: {}", p.0))?;
    let response = match path {
        None => None,
        Some(path) => {
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            tls.write_all(request.as_bytes()).map_err(|e| format!("{url}{path}: {e}"))?;
            let mut body = Vec::new();
            // A server closing without close_notify still gave its answer.
            let _ = tls.read_to_end(&mut body);
            Some(String::from_utf8_lossy(&body).into_owned())
        }
    };
    Ok(Served { cert, response })
}

/// [`probe_blocking`] on a blocking thread.
pub async fn probe(
    url: &str,
    client: Option<ClientCert>,
    path: Option<&str>,
) -> std::result::Result<Served, String> {
    let (url, path) = (url.to_string(), path.map(str::to_string));
    tokio::task::spawn_blocking(move || probe_blocking(&url, client.as_ref(), path.as_deref()))
        .await
        .map_err(|e| format!("the probe stopped: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(host_port("https://10.0.0.1:2379").unwrap(), ("10.0.0.1".into(), 2379));
        assert_eq!(host_port("https://a.example:6443/").unwrap(), ("a.example".into(), 6443));
        assert_eq!(host_port("https://a.example").unwrap(), ("a.example".into(), 443));
        assert_eq!(host_port("https://[::1]:2380").unwrap(), ("::1".into(), 2380));
        assert!(host_port("http://a:1").is_err());
        assert!(host_port("https://a:port").is_err());
        assert!(host_port("https://:1").is_err());
    }

    /// Against a real TLS server (`openssl s_server -www`, which asks for a client
    /// certificate): the certificate it presents, and the answer to a GET.
    #[tokio::test]
    async fn a_handshake_shows_the_served_certificate_and_a_get_its_answer() {
        let tmp = tempfile::tempdir().unwrap();
        let key =
            openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "probe-test").unwrap();
        let name = name.build();
        let mut b = openssl::x509::X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap()).unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256()).unwrap();
        let cert = b.build().to_pem().unwrap();
        let key = key.private_key_to_pem_pkcs8().unwrap();
        let (cert_file, key_file) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-verify", "1", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert_file)
            .arg("-key")
            .arg(&key_file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("https://127.0.0.1:{port}");
        let mut served = Err("not tried".to_string());
        for _ in 0..50 {
            let client = ClientCert { cert: cert.clone(), key: key.clone() };
            served = probe(&url, Some(client), Some("/")).await;
            if served.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = server.kill();
        let _ = server.wait();
        let served = served.unwrap();
        assert_eq!(served.cert.sha256, pki::parse_one_cert(&cert).unwrap().sha256);
        let answer = served.response.unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        let refused = probe("https://127.0.0.1:1", None, None).await.unwrap_err();
        assert!(refused.contains("cannot connect"), "{refused}");
    }
}
