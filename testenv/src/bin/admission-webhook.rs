//! A test-only stand-in for Lokomotive's admission webhook server (the `lokomotive` chart's
//! `admission-webhook-server` Deployment).
//!
//! What matters for the certificate rotation, and is kept as in the real one: it reads its
//! serving certificate and key ONCE at start (a new certificate needs a restart), serves
//! HTTPS `POST /mutate` with AdmissionReview, and mutates as Lokomotive's does: a
//! ServiceAccount named `default` being created gets `automountServiceAccountToken: false`
//! through a JSON patch. Everything else is allowed unchanged. Each request is logged on
//! stderr, which is the pod's log.
//!
//! Usage: admission-webhook --listen 127.0.0.1:PORT --tls-cert F --tls-key F

use std::net::TcpListener;

use anyhow::{Context, Result, bail};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod};
use openssl::x509::X509;
use serde_json::{Value, json};
use testenv::serve::{Request, exit_on_signal, flags, log, serve_http, serve_tls};
use testenv::{asn1_to_time, go_time, hex};

/// The patch Lokomotive's webhook applies to every new `default` ServiceAccount.
const PATCH: &str = r#"[{"op":"add","path":"/automountServiceAccountToken","value":false}]"#;

fn main() -> Result<()> {
    let (mut listen, mut cert, mut key) = (None, None, None);
    for (name, value) in flags()? {
        match name.as_str() {
            "--listen" => listen = Some(value),
            "--tls-cert" => cert = Some(value),
            "--tls-key" => key = Some(value),
            other => bail!("unknown argument {other}"),
        }
    }
    let listen = listen.context("--listen is required")?;
    let (cert, key) =
        (cert.context("--tls-cert is required")?, key.context("--tls-key is required")?);

    // Read once, like the real server: a later change of the files is not seen.
    let cert_pem = std::fs::read(&cert).with_context(|| format!("reading --tls-cert {cert}"))?;
    let key_pem = std::fs::read(&key).with_context(|| format!("reading --tls-key {key}"))?;
    let chain = X509::stack_from_pem(&cert_pem).context("parsing --tls-cert")?;
    let leaf = chain.first().with_context(|| format!("no certificate in {cert}"))?;
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_certificate(leaf)?;
    for extra in &chain[1..] {
        b.add_extra_chain_cert(extra.clone())?;
    }
    let private_key = PKey::private_key_from_pem(&key_pem).context("parsing --tls-key")?;
    b.set_private_key(&private_key)?;
    b.check_private_key().context("--tls-key does not match --tls-cert")?;
    // The fingerprint lets a test tell which certificate a process serves.
    let cn = leaf
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default();
    log(
        'I',
        "main.go:52",
        &format!(
            "loaded serving certificate {cn:?} sha256={} valid until {}",
            hex(&leaf.digest(MessageDigest::sha256())?),
            go_time(asn1_to_time(leaf.not_after())?)
        ),
    );

    exit_on_signal()?;
    let listener = TcpListener::bind(&listen).with_context(|| format!("listening on {listen}"))?;
    serve_tls(listener, b.build(), |stream| serve_http(stream, handle))
}

fn handle(request: &Request) -> (u16, String) {
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/mutate") => match mutate(&request.body) {
            Ok(review) => (200, review.to_string()),
            Err(e) => {
                log('E', "main.go:88", &format!("bad AdmissionReview: {e:#}"));
                (400, format!("bad AdmissionReview: {e:#}\n"))
            }
        },
        (_, "/mutate") => (405, "method not allowed\n".into()),
        _ => (404, "404 page not found\n".into()),
    }
}

/// The AdmissionReview answer, in the version of the review asked (`admission.k8s.io/v1beta1`
/// or `v1`; the two have the same shape).
fn mutate(body: &[u8]) -> Result<Value> {
    let review: Value = serde_json::from_slice(body).context("not JSON")?;
    let api_version = review["apiVersion"].as_str().context("no apiVersion")?;
    if !matches!(api_version, "admission.k8s.io/v1beta1" | "admission.k8s.io/v1") {
        bail!("unsupported apiVersion {api_version}");
    }
    let request = &review["request"];
    let uid = request["uid"].as_str().context("no request.uid")?;
    let operation = request["operation"].as_str().unwrap_or_default();
    let kind = request["kind"]["kind"].as_str().unwrap_or_default();
    let namespace = request["namespace"].as_str().unwrap_or_default();
    // On CREATE the name may only be in the object.
    let name = request["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or_else(|| request["object"]["metadata"]["name"].as_str())
        .unwrap_or_default();
    let mut response = json!({"uid": uid, "allowed": true});
    let what = format!("{operation} {kind} {namespace}/{name}");
    if operation == "CREATE" && kind == "ServiceAccount" && name == "default" {
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(openssl::base64::encode_block(PATCH.as_bytes()));
        log('I', "main.go:120", &format!("{what}: patched automountServiceAccountToken=false"));
    } else {
        log('I', "main.go:124", &format!("{what}: allowed unchanged"));
    }
    Ok(json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(api_version: &str, name: &str, operation: &str) -> Vec<u8> {
        json!({"apiVersion": api_version, "kind": "AdmissionReview", "request": {
            "uid": "u-1", "operation": operation, "namespace": "ns1",
            "kind": {"group": "", "version": "v1", "kind": "ServiceAccount"},
            "object": {"metadata": {"name": name, "namespace": "ns1"}},
        }})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn patches_only_a_new_default_service_account() {
        let out = mutate(&review("admission.k8s.io/v1beta1", "default", "CREATE")).unwrap();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1beta1");
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let patch = openssl::base64::decode_block(out["response"]["patch"].as_str().unwrap());
        let patch: Value = serde_json::from_slice(&patch.unwrap()).unwrap();
        assert_eq!(
            patch,
            json!([{"op": "add", "path": "/automountServiceAccountToken", "value": false}])
        );

        for (name, op) in [("other", "CREATE"), ("default", "UPDATE")] {
            let out = mutate(&review("admission.k8s.io/v1", name, op)).unwrap();
            assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
            assert_eq!(out["response"]["allowed"], true);
            assert!(out["response"].get("patch").is_none(), "{name} {op}: {out}");
        }
    }

    #[test]
    fn rejects_what_is_not_an_admission_review() {
        assert!(mutate(b"not json").is_err());
        assert!(mutate(&review("admission.k8s.io/v2", "default", "CREATE")).is_err());
        let (status, _) =
            handle(&Request { method: "GET".into(), path: "/x".into(), body: vec![] });
        assert_eq!(status, 404);
    }
}
