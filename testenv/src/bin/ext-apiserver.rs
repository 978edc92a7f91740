//! A tiny extension API server for tests (think metrics-server).
//!
//! What matters is the one behaviour the aggregation-CA rotation is about:
//! like a real extension API server it reads the requestheader client CA
//! bundle ONCE at start, logs a "loaded client CA" line per CA, and from then
//! on accepts the kube-apiserver's proxy client certificate only if it chains
//! to one of those CAs. After the aggregation CA changes, it rejects the
//! apiserver (so the APIService goes unavailable) until it is restarted.
//!
//! Usage: ext-apiserver --listen 127.0.0.1:PORT --tls-cert F --tls-key F
//!          --requestheader-client-ca F --group-version metrics.k8s.io/v1beta1
//!          [--allowed-names kube-apiserver[,other]]

use std::net::{TcpListener, TcpStream};

use anyhow::{Context, Result, bail};
use openssl::nid::Nid;
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::{X509, X509Ref, X509VerifyResult};
use serde_json::json;
use testenv::serve::{exit_on_signal, flags, log, serve_http, serve_tls};
use testenv::{asn1_to_time, go_time};

const CA_PROVIDER: &str =
    "client-ca::kube-system::extension-apiserver-authentication::requestheader-client-ca-file";

struct Config {
    listen: String,
    tls_cert: String,
    tls_key: String,
    client_ca: String,
    group: String,
    version: String,
    allowed_names: Vec<String>,
}

fn parse_args() -> Result<Config> {
    let (mut listen, mut cert, mut key, mut ca, mut gv, mut allowed) =
        (None, None, None, None, None, Vec::new());
    for (name, value) in flags()? {
        match name.as_str() {
            "--listen" => listen = Some(value),
            "--tls-cert" => cert = Some(value),
            "--tls-key" => key = Some(value),
            "--requestheader-client-ca" => ca = Some(value),
            "--group-version" => gv = Some(value),
            "--allowed-names" => {
                allowed.extend(value.split(',').filter(|s| !s.is_empty()).map(String::from))
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let gv: String = gv.context("--group-version is required")?;
    let (group, version) =
        gv.split_once('/').context("--group-version must look like group/version")?;
    Ok(Config {
        listen: listen.context("--listen is required")?,
        tls_cert: cert.context("--tls-cert is required")?,
        tls_key: key.context("--tls-key is required")?,
        client_ca: ca.context("--requestheader-client-ca is required")?,
        group: group.to_string(),
        version: version.to_string(),
        allowed_names: allowed,
    })
}

fn common_name(name: &openssl::x509::X509NameRef) -> String {
    name.entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default()
}

/// The certificate summary Kubernetes' dynamiccertificates package prints:
/// `"CN" [usages] groups=[O] validServingFor=[...] issuer="..." (from to to (now=...))`.
fn describe(cert: &X509Ref) -> Result<String> {
    let cn = common_name(cert.subject_name());
    let issuer = common_name(cert.issuer_name());
    let issuer = if issuer == cn { "<self>".to_string() } else { issuer };
    let orgs: Vec<String> = cert
        .subject_name()
        .entries_by_nid(Nid::ORGANIZATIONNAME)
        .filter_map(|e| e.data().to_string().ok())
        .collect();
    let groups =
        if orgs.is_empty() { String::new() } else { format!(" groups=[{}]", orgs.join(",")) };
    let serving: Vec<String> = cert
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| {
                    n.ipaddress().map(ip_string).or_else(|| n.dnsname().map(String::from))
                })
                .collect()
        })
        .unwrap_or_default();
    let serving = if serving.is_empty() {
        String::new()
    } else {
        format!(" validServingFor=[{}]", serving.join(","))
    };
    let usages = ext_key_usages(cert).join(",");
    Ok(format!(
        "{cn:?} [{usages}]{groups}{serving} issuer={issuer:?} ({} to {} (now={}))",
        go_time(asn1_to_time(cert.not_before())?),
        go_time(asn1_to_time(cert.not_after())?),
        go_time(time::OffsetDateTime::now_utc()),
    ))
}

fn ip_string(b: &[u8]) -> String {
    match b.len() {
        4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => {
            let a: [u8; 16] = b.try_into().unwrap_or([0; 16]);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => String::new(),
    }
}

/// "client"/"serving" for the two EKUs Kubernetes names; read from the text
/// form because the openssl crate has no typed EKU accessor.
fn ext_key_usages(cert: &X509Ref) -> Vec<&'static str> {
    let text = cert.to_text().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
    let mut out = Vec::new();
    if let Some(pos) = text.find("X509v3 Extended Key Usage:") {
        let line = text[pos..].lines().nth(1).unwrap_or("");
        for part in line.split(',').map(str::trim) {
            match part {
                "TLS Web Client Authentication" => out.push("client"),
                "TLS Web Server Authentication" => out.push("serving"),
                _ => {}
            }
        }
    }
    out
}

/// Go's wording for the verification errors a test can provoke.
fn go_x509_error(r: X509VerifyResult) -> String {
    match r.as_raw() {
        // unable to get (local) issuer, signature failure, self-signed in chain
        2 | 7 | 18 | 19 | 20 | 21 => "x509: certificate signed by unknown authority".into(),
        9 | 10 => "x509: certificate has expired or is not yet valid".into(),
        _ => format!("x509: {}", r.error_string()),
    }
}

struct Server {
    group: String,
    version: String,
    allowed_names: Vec<String>,
}

enum Auth {
    Ok,
    Denied(String),
}

fn main() -> Result<()> {
    let cfg = parse_args()?;

    // Read the CA bundle once; like the real servers, never reload it.
    let pem = std::fs::read(&cfg.client_ca)
        .with_context(|| format!("reading --requestheader-client-ca {}", cfg.client_ca))?;
    let cas = X509::stack_from_pem(&pem).context("parsing the client CA bundle")?;
    if cas.is_empty() {
        bail!("no certificate in {}", cfg.client_ca);
    }
    for (i, ca) in cas.iter().enumerate() {
        log(
            'I',
            "tlsconfig.go:178",
            &format!("loaded client CA [{i}/{CA_PROVIDER:?}]: {}", describe(ca)?),
        );
    }

    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_certificate_chain_file(&cfg.tls_cert)
        .with_context(|| format!("loading --tls-cert {}", cfg.tls_cert))?;
    b.set_private_key_file(&cfg.tls_key, SslFiletype::PEM)
        .with_context(|| format!("loading --tls-key {}", cfg.tls_key))?;
    b.check_private_key()?;
    for ca in cas {
        b.cert_store_mut().add_cert(ca)?;
    }
    // Ask for a client certificate but let the handshake finish whatever it
    // is: the verdict is given at the HTTP layer (401 plus the log line), as a
    // Go server with RequestClientCert does. No CA names are sent, so Go
    // clients always present their certificate.
    b.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
    let server =
        Server { group: cfg.group, version: cfg.version, allowed_names: cfg.allowed_names };

    exit_on_signal()?;
    let listener =
        TcpListener::bind(&cfg.listen).with_context(|| format!("listening on {}", cfg.listen))?;
    serve_tls(listener, b.build(), move |stream| {
        let auth = server.authenticate(&stream);
        serve_http(stream, |request| server.route(&request.method, &request.path, &auth))
    })
}

impl Server {
    fn authenticate(&self, stream: &SslStream<TcpStream>) -> Auth {
        let ssl = stream.ssl();
        let Some(cert) = ssl.peer_certificate() else {
            return Auth::Denied("no client certificate".into());
        };
        let verdict = ssl.verify_result();
        if verdict != X509VerifyResult::OK {
            return Auth::Denied(go_x509_error(verdict));
        }
        let cn = common_name(cert.subject_name());
        if !self.allowed_names.is_empty() && !self.allowed_names.contains(&cn) {
            return Auth::Denied(format!("x509: subject with cn={cn} is not in the allowed list"));
        }
        Auth::Ok
    }

    fn route(&self, method: &str, path: &str, auth: &Auth) -> (u16, String) {
        // Probes come without a client certificate, as from a kubelet.
        if matches!(path, "/healthz" | "/readyz" | "/livez") {
            return (200, "ok".into());
        }
        if let Auth::Denied(why) = auth {
            log(
                'E',
                "authentication.go:53",
                &format!("Unable to authenticate the request due to an error: [{why}]"),
            );
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401});
            return (401, status.to_string());
        }
        if method != "GET" {
            return (405, "method not allowed".into());
        }
        let (g, v) = (&self.group, &self.version);
        let gv = format!("{g}/{v}");
        let group = json!({"name": g, "versions": [{"groupVersion": gv, "version": v}],
            "preferredVersion": {"groupVersion": gv, "version": v}});
        if path == "/apis" || path == "/apis/" {
            let list = json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]});
            return (200, list.to_string());
        }
        if path == format!("/apis/{g}") {
            let mut group = group;
            group["kind"] = json!("APIGroup");
            group["apiVersion"] = json!("v1");
            return (200, group.to_string());
        }
        if path == format!("/apis/{gv}") {
            return (200, self.resource_list(&gv).to_string());
        }
        (404, "404 page not found\n".into())
    }

    /// Discovery document: metrics-server's two resources for
    /// metrics.k8s.io, else a single namespaced example resource.
    fn resource_list(&self, gv: &str) -> serde_json::Value {
        let verbs = json!(["get", "list"]);
        let resources = if self.group == "metrics.k8s.io" {
            json!([
                {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": verbs},
                {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": verbs},
            ])
        } else {
            json!([{"name": "examples", "singularName": "example", "namespaced": true, "kind": "Example", "verbs": verbs}])
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
    }
}
