//! Writes a realistic Lokomotive asset dir: RSA 2048 keys, the subjects, SANs, usages and
//! file names of the bootkube Terraform module, and chosen certificates backdated so that
//! they are expired, expiring or not yet valid.
//!
//! Shared by the integration tests and by `examples/sample-assets.rs` (the demo and the
//! benchmark), so everything here is plain std + openssl.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::OnceLock;

use base64::Engine as _;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Name, X509NameBuilder};

pub const HOUR: i64 = 3_600;
pub const DAY: i64 = 24 * HOUR;
/// Lokomotive's default `certs_validity_period_hours`.
pub const DEFAULT_VALIDITY_HOURS: i64 = 8_760;

/// Validity window relative to now, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// Issued `age` ago with Lokomotive's one-year validity.
    pub fn issued_ago(age: i64) -> Self {
        Self { start: -age, end: DEFAULT_VALIDITY_HOURS * HOUR - age }
    }
    pub fn expired() -> Self {
        Self::issued_ago(DEFAULT_VALIDITY_HOURS * HOUR + 3 * DAY)
    }
    pub fn expiring() -> Self {
        Self::issued_ago(DEFAULT_VALIDITY_HOURS * HOUR - 10 * DAY)
    }
    pub fn not_yet_valid() -> Self {
        Self { start: 2 * DAY, end: 300 * DAY }
    }
}

pub struct SampleOptions {
    pub cluster: String,
    /// Per credential name (`kube-ca`, `aggregation-client`, ...), a validity other than the
    /// default (issued 30 days ago, valid one year).
    pub windows: BTreeMap<String, Window>,
    pub aggregation: bool,
    /// When set, write `cluster-assets/auth/kubeconfig` pointing at this server.
    pub api_server: Option<String>,
    /// Generate new keys instead of the per-process pool (for a second, foreign cluster).
    pub fresh_keys: bool,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            cluster: "l8e-mat".into(),
            windows: BTreeMap::new(),
            aggregation: true,
            api_server: None,
            fresh_keys: false,
        }
    }
}

impl SampleOptions {
    pub fn with(mut self, name: &str, window: Window) -> Self {
        self.windows.insert(name.to_string(), window);
        self
    }
}

/// RSA key generation dominates the cost; one pool per process keeps tests fast while every
/// credential of a dir still gets its own key.
fn key_pool() -> &'static Vec<PKey<Private>> {
    static POOL: OnceLock<Vec<PKey<Private>>> = OnceLock::new();
    POOL.get_or_init(new_keys)
}

fn new_keys() -> Vec<PKey<Private>> {
    (0..13).map(|_| PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()).collect()
}

/// What the bootkube module puts in one certificate.
pub struct Spec {
    pub name: &'static str,
    pub cn: &'static str,
    pub org: Option<&'static str>,
    pub issuer: Option<&'static str>,
    pub usages: &'static [&'static str],
    pub dns: Vec<String>,
    pub ips: Vec<&'static str>,
}

pub fn specs(cluster: &str, aggregation: bool) -> Vec<Spec> {
    let ca_uses: &[&str] = &["key_encipherment", "digital_signature", "cert_signing"];
    let serving: &[&str] = &["key_encipherment", "digital_signature", "server_auth", "client_auth"];
    let etcd_dns = vec![format!("{cluster}-etcd0.example.com")];
    let mut etcd_local = etcd_dns.clone();
    etcd_local.push("localhost".into());
    let mut out = vec![
        Spec {
            name: "kube-ca",
            cn: "kubernetes-ca",
            org: Some("bootkube"),
            issuer: None,
            usages: ca_uses,
            dns: vec![],
            ips: vec![],
        },
        Spec {
            name: "apiserver",
            cn: "kube-apiserver",
            org: Some("system:masters"),
            issuer: Some("kube-ca"),
            usages: serving,
            dns: vec![
                format!("{cluster}.example.com"),
                "localhost".into(),
                "kubernetes".into(),
                "kubernetes.default".into(),
                "kubernetes.default.svc".into(),
                "kubernetes.default.svc.cluster.local".into(),
            ],
            ips: vec!["10.3.0.1", "127.0.0.1"],
        },
        Spec {
            name: "admin",
            cn: "kubernetes-admin",
            org: Some("system:masters"),
            issuer: Some("kube-ca"),
            usages: &["key_encipherment", "digital_signature", "client_auth"],
            dns: vec![],
            ips: vec![],
        },
        Spec {
            name: "kubelet",
            cn: "kubelet",
            org: Some("system:nodes"),
            issuer: Some("kube-ca"),
            usages: serving,
            dns: vec![],
            ips: vec![],
        },
        Spec {
            name: "admission-webhook",
            cn: "admission-webhook-server",
            org: Some("kinvolk"),
            issuer: Some("kube-ca"),
            usages: &["key_encipherment", "digital_signature", "server_auth"],
            dns: [
                "admission-webhook-server",
                "admission-webhook-server.lokomotive-system",
                "admission-webhook-server.lokomotive-system.svc",
                "admission-webhook-server.lokomotive-system.svc.cluster",
                "admission-webhook-server.lokomotive-system.svc.cluster.local",
            ]
            .map(String::from)
            .to_vec(),
            ips: vec![],
        },
        Spec {
            name: "etcd-ca",
            cn: "etcd-ca",
            org: Some("etcd"),
            issuer: None,
            usages: ca_uses,
            dns: vec![],
            ips: vec![],
        },
        Spec {
            name: "etcd-client",
            cn: "etcd-client",
            org: Some("etcd"),
            issuer: Some("etcd-ca"),
            usages: serving,
            dns: etcd_local.clone(),
            ips: vec!["127.0.0.1"],
        },
        Spec {
            name: "etcd-server",
            cn: "etcd-server",
            org: Some("etcd"),
            issuer: Some("etcd-ca"),
            usages: serving,
            dns: etcd_local,
            ips: vec!["127.0.0.1"],
        },
        Spec {
            name: "etcd-peer",
            cn: "etcd-peer",
            org: Some("etcd"),
            issuer: Some("etcd-ca"),
            usages: serving,
            dns: etcd_dns,
            ips: vec![],
        },
    ];
    if aggregation {
        out.push(Spec {
            name: "aggregation-ca",
            cn: "kubernetes-front-proxy-ca",
            org: None,
            issuer: None,
            usages: ca_uses,
            dns: vec![],
            ips: vec![],
        });
        out.push(Spec {
            name: "aggregation-client",
            cn: "kube-apiserver",
            org: None,
            issuer: Some("aggregation-ca"),
            usages: &["key_encipherment", "digital_signature", "client_auth"],
            dns: vec![],
            ips: vec![],
        });
    }
    out
}

fn name(cn: &str, org: Option<&str>) -> X509Name {
    let mut b = X509NameBuilder::new().unwrap();
    if let Some(org) = org {
        b.append_entry_by_text("O", org).unwrap();
    }
    b.append_entry_by_text("CN", cn).unwrap();
    b.build()
}

fn random_serial() -> Asn1Integer {
    let mut bn = BigNum::new().unwrap();
    bn.rand(128, MsbOption::MAYBE_ZERO, false).unwrap();
    bn.to_asn1_integer().unwrap()
}

/// Issues one certificate the way the tls provider does.
pub fn issue(
    spec: &Spec,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    window: Window,
) -> X509 {
    let (usages, dns, ips) = (spec.usages, &spec.dns, &spec.ips);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        as i64;
    let subject = name(spec.cn, spec.org);
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&random_serial()).unwrap();
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(issuer.map_or(&subject, |(c, _)| c.subject_name())).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(now + window.start).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + window.end).unwrap()).unwrap();
    let is_ca = usages.contains(&"cert_signing");
    let mut bc = BasicConstraints::new();
    if is_ca {
        bc.ca();
    }
    b.append_extension(bc.critical().build().unwrap()).unwrap();
    let mut ku = KeyUsage::new();
    ku.critical();
    for u in usages {
        match *u {
            "key_encipherment" => ku.key_encipherment(),
            "digital_signature" => ku.digital_signature(),
            "cert_signing" => ku.key_cert_sign(),
            _ => &mut ku,
        };
    }
    b.append_extension(ku.build().unwrap()).unwrap();
    let mut eku = ExtendedKeyUsage::new();
    let mut any_eku = false;
    for u in usages {
        match *u {
            "server_auth" => {
                eku.server_auth();
                any_eku = true;
            }
            "client_auth" => {
                eku.client_auth();
                any_eku = true;
            }
            _ => {}
        }
    }
    if any_eku {
        b.append_extension(eku.build().unwrap()).unwrap();
    }
    if is_ca {
        let skid = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None)).unwrap();
        b.append_extension(skid).unwrap();
    }
    if !dns.is_empty() || !ips.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for d in dns {
            san.dns(d);
        }
        for ip in ips {
            san.ip(ip);
        }
        let ext = san.build(&b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None)).unwrap();
        b.append_extension(ext).unwrap();
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

fn file_names(name: &str) -> (&'static str, &'static str) {
    match name {
        "kube-ca" => ("tls/ca.crt", "tls/ca.key"),
        "apiserver" => ("tls/apiserver.crt", "tls/apiserver.key"),
        "admin" => ("tls/admin.crt", "tls/admin.key"),
        "kubelet" => ("tls/kubelet.crt", "tls/kubelet.key"),
        "etcd-ca" => ("tls/etcd-ca.crt", "tls/etcd-ca.key"),
        "etcd-client" => ("tls/etcd-client.crt", "tls/etcd-client.key"),
        "etcd-server" => ("tls/etcd/server.crt", "tls/etcd/server.key"),
        "etcd-peer" => ("tls/etcd/peer.crt", "tls/etcd/peer.key"),
        "aggregation-ca" => ("tls/aggregation-ca.crt", "tls/aggregation-ca.key"),
        "aggregation-client" => ("tls/aggregation-client.crt", "tls/aggregation-client.key"),
        other => panic!("no files for {other}"),
    }
}

fn write(root: &Path, relative: &str, bytes: &[u8]) -> io::Result<()> {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(path, bytes)
}

/// Creates `dir` as a Lokomotive asset dir (`dir/terraform/`, `dir/cluster-assets/`).
pub fn write_sample_assets(dir: &Path, opts: &SampleOptions) -> io::Result<()> {
    let assets = dir.join("cluster-assets");
    fs::create_dir_all(dir.join("terraform"))?;
    fs::create_dir_all(&assets)?;
    let fresh;
    let keys = if opts.fresh_keys {
        fresh = new_keys();
        &fresh
    } else {
        key_pool()
    };
    let mut issued: BTreeMap<&str, (X509, PKey<Private>)> = BTreeMap::new();
    let default = Window::issued_ago(30 * DAY);
    for (i, spec) in specs(&opts.cluster, opts.aggregation).into_iter().enumerate() {
        let key = keys[i].clone();
        let window = opts.windows.get(spec.name).copied().unwrap_or(default);
        let issuer = spec.issuer.map(|n| &issued[n]);
        let cert = issue(&spec, &key, issuer.map(|(c, k)| (c, k)), window);
        let cert_pem = cert.to_pem().unwrap();
        let key_pem = key.private_key_to_pem_pkcs8().unwrap();
        if spec.name == "admission-webhook" {
            let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
            let values = format!(
                "webhook:\n  servingCert: {}\n  servingKey: {}\n",
                b64(&cert_pem),
                b64(&key_pem)
            );
            write(&assets, "charts/lokomotive-system/lokomotive.yaml", values.as_bytes())?;
        } else {
            let (crt, k) = file_names(spec.name);
            write(&assets, crt, &cert_pem)?;
            write(&assets, k, &key_pem)?;
        }
        if spec.name == "etcd-ca" {
            for copy in ["tls/etcd-client-ca.crt", "tls/etcd/server-ca.crt", "tls/etcd/peer-ca.crt"]
            {
                write(&assets, copy, &cert_pem)?;
            }
        }
        issued.insert(spec.name, (cert, key));
    }
    let sa = &keys[12];
    write(&assets, "tls/service-account.key", &sa.private_key_to_pem_pkcs8().unwrap())?;
    write(&assets, "tls/service-account.pub", &sa.public_key_to_pem().unwrap())?;
    if let Some(server) = &opts.api_server {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let (admin, admin_key) = &issued["admin"];
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {c}-cluster\n  cluster:\n    \
             server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {c}-user\n  \
             user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\n\
             contexts:\n- name: {c}-context\n  context:\n    cluster: {c}-cluster\n    \
             user: {c}-user\ncurrent-context: {c}-context\n",
            c = opts.cluster,
            ca = b64(&issued["kube-ca"].0.to_pem().unwrap()),
            crt = b64(&admin.to_pem().unwrap()),
            key = b64(&admin_key.private_key_to_pem_pkcs8().unwrap()),
        );
        write(&assets, "auth/kubeconfig", kubeconfig.as_bytes())?;
    }
    Ok(())
}
