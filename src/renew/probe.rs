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
}
