//! Test-only stand-in for the `hashicorp/tls` Terraform provider 3.1.0.
//!
//! Terraform cannot download providers here (no network), yet the fixture must
//! use Lokomotive's real resource types so that `terraform state list`, `taint`
//! and `apply -target` see the addresses of a real cluster. This binary serves
//! `tls_private_key`, `tls_self_signed_cert`, `tls_cert_request` and
//! `tls_locally_signed_cert` with the attributes Lokomotive uses, from a
//! filesystem mirror (see scripts/provision.sh).
//!
//! Differences from the real provider are listed in docs/testenv.md; the main
//! one: `*_pem` inputs are stored as given, not as SHA-1 hashes, because the
//! plugin protocol this crate speaks (tfplugin6, non-legacy type system) does
//! not let a plan differ from the configuration.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, PKeyRef, Private, Public};
use openssl::rsa::Rsa;
use openssl::stack::Stack;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Extension, X509Name, X509NameRef, X509Req, X509ReqBuilder};
use serde::{Deserialize, Serialize};
use testenv::provider::ResourcesOnly;
use testenv::{now, parse_rfc3339, rfc3339, sha1_hex};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, NestedBlock, Schema,
};
use tf_provider::value::{Value, ValueEmpty, serde_as_vec};
use tf_provider::{AttributePath, Diagnostics, Resource, map, serve};

type Str = Value<String>;
type Num = Value<i64>;
type Bool = Value<bool>;
type StrList = Value<Vec<Str>>;

// ------------------------------------------------------------------ schema --

fn attr(t: AttributeType, c: AttributeConstraint, desc: &str) -> Attribute {
    Attribute {
        attr_type: t,
        description: Description::plain(desc),
        constraint: c,
        ..Default::default()
    }
}

fn secret(mut a: Attribute) -> Attribute {
    a.sensitive = true;
    a
}

fn string_list() -> AttributeType {
    AttributeType::List(Box::new(AttributeType::String))
}

use AttributeConstraint::{Computed, Optional, OptionalComputed, Required};

fn schema(desc: &str, attributes: HashMap<String, Attribute>) -> Schema {
    Schema {
        version: 0,
        block: Block {
            version: 0,
            description: Description::plain(desc),
            attributes,
            ..Default::default()
        },
    }
}

/// The `subject` block (list, at most one element), as in the real provider.
fn subject_block() -> NestedBlock {
    let s = |d| attr(AttributeType::String, Optional, d);
    NestedBlock::Optional(Block {
        version: 0,
        description: Description::plain("distinguished name"),
        attributes: map! {
            "common_name" => s("CN"),
            "organization" => s("O"),
            "organizational_unit" => s("OU"),
            "street_address" => attr(string_list(), Optional, "street"),
            "locality" => s("L"),
            "province" => s("ST"),
            "country" => s("C"),
            "postal_code" => s("postal code"),
            "serial_number" => s("serial number"),
        },
        ..Default::default()
    })
}

/// Attributes shared by `tls_self_signed_cert` and `tls_locally_signed_cert`.
fn cert_attributes() -> HashMap<String, Attribute> {
    map! {
        "id" => attr(AttributeType::String, Computed, "decimal serial number"),
        "validity_period_hours" => attr(AttributeType::Number, Required, "validity"),
        "early_renewal_hours" => attr(AttributeType::Number, OptionalComputed, "renew this long before expiry (default 0)"),
        "is_ca_certificate" => attr(AttributeType::Bool, OptionalComputed, "CA certificate"),
        "set_subject_key_id" => attr(AttributeType::Bool, OptionalComputed, "add a subject key id"),
        "allowed_uses" => attr(string_list(), Required, "key usages and extended key usages"),
        "cert_pem" => attr(AttributeType::String, Computed, "the certificate"),
        "ready_for_renewal" => attr(AttributeType::Bool, Computed, "validity has ended (minus early_renewal_hours)"),
        "validity_start_time" => attr(AttributeType::String, Computed, "RFC 3339"),
        "validity_end_time" => attr(AttributeType::String, Computed, "RFC 3339"),
    }
}

// ------------------------------------------------------------------ states --

#[derive(Serialize, Deserialize, Clone, PartialEq, Default)]
struct Subject {
    common_name: Str,
    organization: Str,
    organizational_unit: Str,
    street_address: StrList,
    locality: Str,
    province: Str,
    country: Str,
    postal_code: Str,
    serial_number: Str,
}

#[derive(Serialize, Deserialize, Clone, Default)]
struct PrivateKeyState {
    id: Str,
    algorithm: Str,
    rsa_bits: Num,
    ecdsa_curve: Str,
    private_key_pem: Str,
    public_key_pem: Str,
    public_key_openssh: Str,
    public_key_fingerprint_md5: Str,
}

#[derive(Serialize, Deserialize, Clone, Default)]
struct SelfSignedState {
    id: Str,
    key_algorithm: Str,
    private_key_pem: Str,
    #[serde(with = "serde_as_vec")]
    subject: Value<Subject>,
    dns_names: StrList,
    ip_addresses: StrList,
    uris: StrList,
    validity_period_hours: Num,
    early_renewal_hours: Num,
    is_ca_certificate: Bool,
    set_subject_key_id: Bool,
    allowed_uses: StrList,
    cert_pem: Str,
    ready_for_renewal: Bool,
    validity_start_time: Str,
    validity_end_time: Str,
}

#[derive(Serialize, Deserialize, Clone, Default)]
struct CertRequestState {
    id: Str,
    key_algorithm: Str,
    private_key_pem: Str,
    #[serde(with = "serde_as_vec")]
    subject: Value<Subject>,
    dns_names: StrList,
    ip_addresses: StrList,
    uris: StrList,
    cert_request_pem: Str,
}

#[derive(Serialize, Deserialize, Clone, Default)]
struct LocallySignedState {
    id: Str,
    cert_request_pem: Str,
    ca_key_algorithm: Str,
    ca_private_key_pem: Str,
    ca_cert_pem: Str,
    validity_period_hours: Num,
    early_renewal_hours: Num,
    is_ca_certificate: Bool,
    set_subject_key_id: Bool,
    allowed_uses: StrList,
    cert_pem: Str,
    ready_for_renewal: Bool,
    validity_start_time: Str,
    validity_end_time: Str,
}

/// Every configurable attribute of these resources is ForceNew in the real
/// provider: list the ones whose planned value differs from the prior state.
macro_rules! force_new {
    ($prior:expr, $planned:expr; $($field:ident),+ $(,)?) => {{
        let mut paths = Vec::new();
        $(
            if $prior.$field != $planned.$field {
                paths.push(AttributePath::new(stringify!($field)));
            }
        )+
        paths
    }};
}

// ----------------------------------------------------------------- helpers --

fn known<'s>(v: &'s Str, name: &str) -> Result<&'s str> {
    match v {
        Value::Value(s) => Ok(s),
        _ => bail!("{name} is not known"),
    }
}

fn known_list(v: &StrList) -> Vec<String> {
    match v {
        Value::Value(items) => items.iter().filter_map(|i| i.as_ref_option().cloned()).collect(),
        _ => Vec::new(),
    }
}

/// Report an error to Terraform and give up on the operation.
fn fail<T>(diags: &mut Diagnostics, what: &str, e: anyhow::Error) -> Option<T> {
    diags.root_error(format!("{what} failed"), format!("{e:#}"));
    None
}

fn parse_key(pem: &str, algorithm: &str) -> Result<PKey<Private>> {
    if algorithm != "RSA" {
        bail!("key algorithm {algorithm:?} is not supported by this test provider (only RSA)");
    }
    let key = PKey::private_key_from_pem(pem.as_bytes()).context("parsing private_key_pem")?;
    if key.rsa().is_err() {
        bail!("private key is not an RSA key but key_algorithm is RSA");
    }
    Ok(key)
}

/// Distinguished name in the RDN order Go's `pkix.Name` writes.
fn build_name(s: &Value<Subject>) -> Result<X509Name> {
    let mut b = X509Name::builder()?;
    if let Value::Value(s) = s {
        let mut add = |field: &str, v: &Str| -> Result<()> {
            if let Value::Value(v) = v {
                b.append_entry_by_text(field, v)?;
            }
            Ok(())
        };
        add("C", &s.country)?;
        add("ST", &s.province)?;
        add("L", &s.locality)?;
        for street in known_list(&s.street_address) {
            add("street", &Value::Value(street))?;
        }
        add("postalCode", &s.postal_code)?;
        add("O", &s.organization)?;
        add("OU", &s.organizational_unit)?;
        add("CN", &s.common_name)?;
        add("serialNumber", &s.serial_number)?;
    }
    Ok(b.build())
}

fn sans(dns: &StrList, ips: &StrList, uris: &StrList) -> Option<SubjectAlternativeName> {
    let (dns, ips, uris) = (known_list(dns), known_list(ips), known_list(uris));
    if dns.is_empty() && ips.is_empty() && uris.is_empty() {
        return None;
    }
    let mut san = SubjectAlternativeName::new();
    dns.iter().for_each(|d| {
        san.dns(d);
    });
    ips.iter().for_each(|i| {
        san.ip(i);
    });
    uris.iter().for_each(|u| {
        san.uri(u);
    });
    Some(san)
}

/// What a certificate is to be, independent of who signs it.
struct CertSpec<'a> {
    subject: &'a X509NameRef,
    public_key: &'a PKeyRef<Public>,
    validity_period_hours: i64,
    is_ca: bool,
    set_subject_key_id: bool,
    allowed_uses: Vec<String>,
    /// Extensions carried over from a CSR (its SANs) or built from the config.
    extra: Vec<X509Extension>,
    san: Option<SubjectAlternativeName>,
}

struct Issued {
    cert: X509,
    serial: String,
    start: time::OffsetDateTime,
    end: time::OffsetDateTime,
}

/// OpenSSL's short name of an extended key usage of `allowed_uses`.
fn ext_key_usage(usage: &str) -> Option<&'static str> {
    Some(match usage {
        "any_extended" => "anyExtendedKeyUsage",
        "server_auth" => "serverAuth",
        "client_auth" => "clientAuth",
        "code_signing" => "codeSigning",
        "email_protection" => "emailProtection",
        "ipsec_end_system" => "ipsecEndSystem",
        "ipsec_tunnel" => "ipsecTunnel",
        "ipsec_user" => "ipsecUser",
        "timestamping" => "timeStamping",
        "ocsp_signing" => "OCSPSigning",
        "microsoft_server_gated_crypto" => "msSGC",
        "netscape_server_gated_crypto" => "nsSGC",
        _ => return None,
    })
}

/// Issue a certificate the way the real provider's Go code does: random
/// 128-bit serial, v3, SHA-256 with RSA, BasicConstraints always present,
/// key usages and EKUs from `allowed_uses`, a subject key id on CAs and an
/// authority key id when the issuer has one. `issuer` is None for self-signed.
fn issue(
    spec: CertSpec,
    signer: &PKeyRef<Private>,
    issuer: Option<&openssl::x509::X509Ref>,
) -> Result<Issued> {
    let start = now()?;
    let end = start + time::Duration::hours(spec.validity_period_hours);
    let mut serial = BigNum::new()?;
    serial.rand(128, MsbOption::MAYBE_ZERO, false)?;

    let mut b = X509::builder()?;
    b.set_version(2)?;
    let serial_asn1 = serial.to_asn1_integer()?;
    b.set_serial_number(&serial_asn1)?;
    b.set_subject_name(spec.subject)?;
    b.set_issuer_name(issuer.map_or(spec.subject, |i| i.subject_name()))?;
    b.set_pubkey(spec.public_key)?;
    let not_before = Asn1Time::from_unix(start.unix_timestamp())?;
    let not_after = Asn1Time::from_unix(end.unix_timestamp())?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;

    let mut ku = KeyUsage::new();
    let mut eku = ExtendedKeyUsage::new();
    let (mut has_ku, mut has_eku) = (false, false);
    for usage in &spec.allowed_uses {
        if let Some(name) = ext_key_usage(usage) {
            eku.other(name);
            has_eku = true;
            continue;
        }
        match usage.as_str() {
            "digital_signature" => ku.digital_signature(),
            "content_commitment" => ku.non_repudiation(),
            "key_encipherment" => ku.key_encipherment(),
            "data_encipherment" => ku.data_encipherment(),
            "key_agreement" => ku.key_agreement(),
            "cert_signing" => ku.key_cert_sign(),
            "crl_signing" => ku.crl_sign(),
            "encipher_only" => ku.encipher_only(),
            "decipher_only" => ku.decipher_only(),
            other => bail!("unknown allowed_uses value {other:?}"),
        };
        has_ku = true;
    }
    // Go marks KeyUsage and BasicConstraints critical, EKU not.
    if has_ku {
        b.append_extension(ku.critical().build()?)?;
    }
    if has_eku {
        b.append_extension(eku.build()?)?;
    }
    let mut bc = BasicConstraints::new();
    bc.critical();
    if spec.is_ca {
        bc.ca();
    }
    b.append_extension(bc.build()?)?;
    if spec.is_ca || spec.set_subject_key_id {
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(issuer, None))?;
        b.append_extension(ski)?;
    }
    if let Some(i) = issuer
        && i.subject_key_id().is_some()
    {
        let aki =
            AuthorityKeyIdentifier::new().keyid(true).build(&b.x509v3_context(Some(i), None))?;
        b.append_extension(aki)?;
    }
    for ext in spec.extra {
        b.append_extension(ext)?;
    }
    if let Some(san) = spec.san {
        let ext = san.build(&b.x509v3_context(issuer, None))?;
        b.append_extension(ext)?;
    }
    b.sign(signer, MessageDigest::sha256())?;
    Ok(Issued { cert: b.build(), serial: serial.to_dec_str()?.to_string(), start, end })
}

/// The real provider's `CustomizeCertificateDiff`: once "now" has reached
/// `validity_end_time - early_renewal_hours`, plan `ready_for_renewal = true`
/// and force a replacement. A missing or unparsable end time counts as due.
fn renewal_due(end: &Str, early_renewal_hours: &Num) -> Result<bool> {
    let early = match early_renewal_hours {
        Value::Value(h) => *h,
        _ => 0,
    };
    let Value::Value(end) = end else {
        return Ok(true);
    };
    let Ok(end) = parse_rfc3339(end) else {
        return Ok(true);
    };
    Ok(now()? >= end - time::Duration::hours(early))
}

/// Optional attributes whose real defaults Terraform stores in the state.
fn cert_defaults(early: &mut Num, is_ca: &mut Bool, set_ski: &mut Bool) {
    if early.is_null() {
        *early = Value::Value(0);
    }
    if is_ca.is_null() {
        *is_ca = Value::Value(false);
    }
    if set_ski.is_null() {
        *set_ski = Value::Value(false);
    }
}

fn pem_string(bytes: Vec<u8>) -> Str {
    Value::Value(String::from_utf8_lossy(&bytes).into_owned())
}

// --------------------------------------------------------- tls_private_key --

struct PrivateKey;

/// `ssh-rsa` public key in OpenSSH's authorized_keys format, and the MD5
/// fingerprint of its blob, as the real provider computes them.
fn openssh_rsa(key: &PKeyRef<Private>) -> Result<(String, String)> {
    fn put(buf: &mut Vec<u8>, data: &[u8]) {
        buf.extend_from_slice(&(data.len() as u32).to_be_bytes());
        buf.extend_from_slice(data);
    }
    fn mpint(n: &openssl::bn::BigNumRef) -> Vec<u8> {
        let mut v = n.to_vec();
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        v
    }
    let rsa = key.rsa()?;
    let mut blob = Vec::new();
    put(&mut blob, b"ssh-rsa");
    put(&mut blob, &mpint(rsa.e()));
    put(&mut blob, &mpint(rsa.n()));
    let line = format!("ssh-rsa {}\n", openssl::base64::encode_block(&blob));
    let md5 = openssl::hash::hash(MessageDigest::md5(), &blob)?;
    let fp = md5.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    Ok((line, fp))
}

impl PrivateKey {
    fn generate(state: &mut PrivateKeyState) -> Result<()> {
        let algorithm = known(&state.algorithm, "algorithm")?;
        if algorithm != "RSA" {
            bail!("algorithm {algorithm:?} is not supported by this test provider (only RSA)");
        }
        let bits = match state.rsa_bits {
            Value::Value(b) => u32::try_from(b).context("rsa_bits")?,
            _ => 2048,
        };
        let key = PKey::from_rsa(Rsa::generate(bits)?)?;
        // Go's MarshalPKCS1PrivateKey: "BEGIN RSA PRIVATE KEY".
        state.private_key_pem = pem_string(key.rsa()?.private_key_to_pem()?);
        state.public_key_pem = pem_string(key.public_key_to_pem()?);
        let (ssh, md5) = openssh_rsa(&key)?;
        state.public_key_openssh = Value::Value(ssh);
        state.public_key_fingerprint_md5 = Value::Value(md5);
        state.id = Value::Value(sha1_hex(&key.public_key_to_der()?));
        Ok(())
    }
}

#[async_trait]
impl Resource for PrivateKey {
    type State<'a> = PrivateKeyState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _: &mut Diagnostics) -> Option<Schema> {
        let s = |c, d| attr(AttributeType::String, c, d);
        Some(schema(
            "private key",
            map! {
                "id" => s(Computed, "SHA-1 of the public key (DER)"),
                "algorithm" => s(Required, "RSA (ECDSA is not supported here)"),
                "rsa_bits" => attr(AttributeType::Number, OptionalComputed, "default 2048"),
                "ecdsa_curve" => s(OptionalComputed, "default P224; unused"),
                "private_key_pem" => secret(s(Computed, "PKCS#1 PEM")),
                "public_key_pem" => s(Computed, "PKIX PEM"),
                "public_key_openssh" => s(Computed, "authorized_keys line"),
                "public_key_fingerprint_md5" => s(Computed, "MD5 fingerprint"),
            },
        ))
    }

    async fn read<'a>(
        &self,
        _: &mut Diagnostics,
        state: PrivateKeyState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(PrivateKeyState, ValueEmpty)> {
        Some((state, private))
    }

    async fn plan_create<'a>(
        &self,
        _: &mut Diagnostics,
        mut s: PrivateKeyState,
        _: PrivateKeyState,
        _: ValueEmpty,
    ) -> Option<(PrivateKeyState, ValueEmpty)> {
        if s.rsa_bits.is_null() {
            s.rsa_bits = Value::Value(2048);
        }
        if s.ecdsa_curve.is_null() {
            s.ecdsa_curve = Value::Value("P224".into());
        }
        s.id = Value::Unknown;
        s.private_key_pem = Value::Unknown;
        s.public_key_pem = Value::Unknown;
        s.public_key_openssh = Value::Unknown;
        s.public_key_fingerprint_md5 = Value::Unknown;
        Some((s, ValueEmpty::default()))
    }

    async fn plan_update<'a>(
        &self,
        _: &mut Diagnostics,
        prior: PrivateKeyState,
        proposed: PrivateKeyState,
        _: PrivateKeyState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(PrivateKeyState, ValueEmpty, Vec<AttributePath>)> {
        let replace = force_new!(prior, proposed; algorithm, rsa_bits, ecdsa_curve);
        Some((proposed, private, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _: &mut Diagnostics,
        _: PrivateKeyState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<ValueEmpty> {
        Some(private)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        mut planned: PrivateKeyState,
        _: PrivateKeyState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(PrivateKeyState, ValueEmpty)> {
        match Self::generate(&mut planned) {
            Ok(()) => Some((planned, private)),
            Err(e) => fail(diags, "tls_private_key", e),
        }
    }

    async fn update<'a>(
        &self,
        _: &mut Diagnostics,
        _: PrivateKeyState,
        planned: PrivateKeyState,
        _: PrivateKeyState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(PrivateKeyState, ValueEmpty)> {
        Some((planned, private))
    }

    async fn destroy<'a>(
        &self,
        _: &mut Diagnostics,
        _: PrivateKeyState,
        _: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<()> {
        Some(())
    }
}

// ---------------------------------------------------- tls_self_signed_cert --

struct SelfSignedCert;

impl SelfSignedCert {
    fn sign(s: &mut SelfSignedState) -> Result<()> {
        let key = parse_key(
            known(&s.private_key_pem, "private_key_pem")?,
            known(&s.key_algorithm, "key_algorithm")?,
        )?;
        let public = PKey::public_key_from_der(&key.public_key_to_der()?)?;
        let name = build_name(&s.subject)?;
        let issued = issue(
            CertSpec {
                subject: &name,
                public_key: &public,
                validity_period_hours: s.validity_period_hours.unwrap_or(0),
                is_ca: s.is_ca_certificate.unwrap_or(false),
                set_subject_key_id: s.set_subject_key_id.unwrap_or(false),
                allowed_uses: known_list(&s.allowed_uses),
                extra: Vec::new(),
                san: sans(&s.dns_names, &s.ip_addresses, &s.uris),
            },
            &key,
            None,
        )?;
        s.cert_pem = pem_string(issued.cert.to_pem()?);
        s.id = Value::Value(issued.serial);
        s.validity_start_time = Value::Value(rfc3339(issued.start));
        s.validity_end_time = Value::Value(rfc3339(issued.end));
        s.ready_for_renewal = Value::Value(false);
        Ok(())
    }
}

fn self_signed_schema() -> Schema {
    let mut attributes = cert_attributes();
    let s = |c, d| attr(AttributeType::String, c, d);
    let own: HashMap<String, Attribute> = map! {
        "key_algorithm" => s(Required, "RSA"),
        "private_key_pem" => secret(s(Required, "the key to self-sign with (stored as given, see docs)")),
        "dns_names" => attr(string_list(), Optional, "DNS SANs"),
        "ip_addresses" => attr(string_list(), Optional, "IP SANs"),
        "uris" => attr(string_list(), Optional, "URI SANs"),
    };
    attributes.extend(own);
    let mut sc = schema("self-signed certificate", attributes);
    sc.block.blocks = map! { "subject" => subject_block() };
    sc
}

#[async_trait]
impl Resource for SelfSignedCert {
    type State<'a> = SelfSignedState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _: &mut Diagnostics) -> Option<Schema> {
        Some(self_signed_schema())
    }

    async fn read<'a>(
        &self,
        _: &mut Diagnostics,
        state: SelfSignedState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(SelfSignedState, ValueEmpty)> {
        Some((state, private))
    }

    async fn plan_create<'a>(
        &self,
        _: &mut Diagnostics,
        mut s: SelfSignedState,
        _: SelfSignedState,
        _: ValueEmpty,
    ) -> Option<(SelfSignedState, ValueEmpty)> {
        cert_defaults(
            &mut s.early_renewal_hours,
            &mut s.is_ca_certificate,
            &mut s.set_subject_key_id,
        );
        s.id = Value::Unknown;
        s.cert_pem = Value::Unknown;
        s.validity_start_time = Value::Unknown;
        s.validity_end_time = Value::Unknown;
        s.ready_for_renewal = Value::Unknown;
        Some((s, ValueEmpty::default()))
    }

    async fn plan_update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior: SelfSignedState,
        mut planned: SelfSignedState,
        _: SelfSignedState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(SelfSignedState, ValueEmpty, Vec<AttributePath>)> {
        cert_defaults(
            &mut planned.early_renewal_hours,
            &mut planned.is_ca_certificate,
            &mut planned.set_subject_key_id,
        );
        let mut replace = force_new!(prior, planned;
            key_algorithm, private_key_pem, subject, dns_names, ip_addresses, uris,
            validity_period_hours, early_renewal_hours, is_ca_certificate,
            set_subject_key_id, allowed_uses);
        match renewal_due(&prior.validity_end_time, &planned.early_renewal_hours) {
            Ok(true) => {
                planned.ready_for_renewal = Value::Value(true);
                replace.push(AttributePath::new("ready_for_renewal"));
            }
            Ok(false) => {}
            Err(e) => return fail(diags, "planning tls_self_signed_cert", e),
        }
        Some((planned, private, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _: &mut Diagnostics,
        _: SelfSignedState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<ValueEmpty> {
        Some(private)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        mut planned: SelfSignedState,
        _: SelfSignedState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(SelfSignedState, ValueEmpty)> {
        match Self::sign(&mut planned) {
            Ok(()) => Some((planned, private)),
            Err(e) => fail(diags, "tls_self_signed_cert", e),
        }
    }

    async fn update<'a>(
        &self,
        _: &mut Diagnostics,
        _: SelfSignedState,
        planned: SelfSignedState,
        _: SelfSignedState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(SelfSignedState, ValueEmpty)> {
        Some((planned, private))
    }

    async fn destroy<'a>(
        &self,
        _: &mut Diagnostics,
        _: SelfSignedState,
        _: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<()> {
        Some(())
    }
}

// -------------------------------------------------------- tls_cert_request --

struct CertRequest;

impl CertRequest {
    fn build(s: &mut CertRequestState) -> Result<()> {
        let key = parse_key(
            known(&s.private_key_pem, "private_key_pem")?,
            known(&s.key_algorithm, "key_algorithm")?,
        )?;
        let mut b = X509ReqBuilder::new()?;
        b.set_version(0)?;
        let name = build_name(&s.subject)?;
        b.set_subject_name(&name)?;
        b.set_pubkey(&key)?;
        if let Some(san) = sans(&s.dns_names, &s.ip_addresses, &s.uris) {
            let ext = san.build(&b.x509v3_context(None))?;
            let mut exts = Stack::new()?;
            exts.push(ext)?;
            b.add_extensions(&exts)?;
        }
        b.sign(&key, MessageDigest::sha256())?;
        let req = b.build();
        s.cert_request_pem = pem_string(req.to_pem()?);
        s.id = Value::Value(sha1_hex(&req.to_der()?));
        Ok(())
    }
}

#[async_trait]
impl Resource for CertRequest {
    type State<'a> = CertRequestState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _: &mut Diagnostics) -> Option<Schema> {
        let s = |c, d| attr(AttributeType::String, c, d);
        let mut sc = schema(
            "certificate request",
            map! {
                "id" => s(Computed, "SHA-1 of the request (DER)"),
                "key_algorithm" => s(Required, "RSA"),
                "private_key_pem" => secret(s(Required, "the requester's key (stored as given, see docs)")),
                "dns_names" => attr(string_list(), Optional, "DNS SANs"),
                "ip_addresses" => attr(string_list(), Optional, "IP SANs"),
                "uris" => attr(string_list(), Optional, "URI SANs"),
                "cert_request_pem" => s(Computed, "PKCS#10 PEM"),
            },
        );
        sc.block.blocks = map! { "subject" => subject_block() };
        Some(sc)
    }

    async fn read<'a>(
        &self,
        _: &mut Diagnostics,
        state: CertRequestState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(CertRequestState, ValueEmpty)> {
        Some((state, private))
    }

    async fn plan_create<'a>(
        &self,
        _: &mut Diagnostics,
        mut s: CertRequestState,
        _: CertRequestState,
        _: ValueEmpty,
    ) -> Option<(CertRequestState, ValueEmpty)> {
        s.id = Value::Unknown;
        s.cert_request_pem = Value::Unknown;
        Some((s, ValueEmpty::default()))
    }

    async fn plan_update<'a>(
        &self,
        _: &mut Diagnostics,
        prior: CertRequestState,
        proposed: CertRequestState,
        _: CertRequestState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(CertRequestState, ValueEmpty, Vec<AttributePath>)> {
        let replace = force_new!(prior, proposed;
            key_algorithm, private_key_pem, subject, dns_names, ip_addresses, uris);
        Some((proposed, private, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _: &mut Diagnostics,
        _: CertRequestState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<ValueEmpty> {
        Some(private)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        mut planned: CertRequestState,
        _: CertRequestState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(CertRequestState, ValueEmpty)> {
        match Self::build(&mut planned) {
            Ok(()) => Some((planned, private)),
            Err(e) => fail(diags, "tls_cert_request", e),
        }
    }

    async fn update<'a>(
        &self,
        _: &mut Diagnostics,
        _: CertRequestState,
        planned: CertRequestState,
        _: CertRequestState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(CertRequestState, ValueEmpty)> {
        Some((planned, private))
    }

    async fn destroy<'a>(
        &self,
        _: &mut Diagnostics,
        _: CertRequestState,
        _: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<()> {
        Some(())
    }
}

// ------------------------------------------------- tls_locally_signed_cert --

struct LocallySignedCert;

impl LocallySignedCert {
    fn sign(s: &mut LocallySignedState) -> Result<()> {
        let req = X509Req::from_pem(known(&s.cert_request_pem, "cert_request_pem")?.as_bytes())
            .context("parsing cert_request_pem")?;
        let public = req.public_key()?;
        if !req.verify(&public)? {
            bail!("the certificate request's signature does not verify");
        }
        let ca_key = parse_key(
            known(&s.ca_private_key_pem, "ca_private_key_pem")?,
            known(&s.ca_key_algorithm, "ca_key_algorithm")?,
        )?;
        let ca_cert = X509::from_pem(known(&s.ca_cert_pem, "ca_cert_pem")?.as_bytes())
            .context("parsing ca_cert_pem")?;
        if !ca_cert.public_key()?.public_eq(&ca_key) {
            bail!("ca_private_key_pem does not match the public key of ca_cert_pem");
        }
        // The CSR's requested extensions are its SANs (this provider writes
        // no others), which the real provider copies into the certificate.
        let extra: Vec<X509Extension> =
            req.extensions().map(|stack| stack.into_iter().collect()).unwrap_or_default();
        let issued = issue(
            CertSpec {
                subject: req.subject_name(),
                public_key: &public,
                validity_period_hours: s.validity_period_hours.unwrap_or(0),
                is_ca: s.is_ca_certificate.unwrap_or(false),
                set_subject_key_id: s.set_subject_key_id.unwrap_or(false),
                allowed_uses: known_list(&s.allowed_uses),
                extra,
                san: None,
            },
            &ca_key,
            Some(&ca_cert),
        )?;
        s.cert_pem = pem_string(issued.cert.to_pem()?);
        s.id = Value::Value(issued.serial);
        s.validity_start_time = Value::Value(rfc3339(issued.start));
        s.validity_end_time = Value::Value(rfc3339(issued.end));
        s.ready_for_renewal = Value::Value(false);
        Ok(())
    }
}

#[async_trait]
impl Resource for LocallySignedCert {
    type State<'a> = LocallySignedState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _: &mut Diagnostics) -> Option<Schema> {
        let mut attributes = cert_attributes();
        let s = |c, d| attr(AttributeType::String, c, d);
        let own: HashMap<String, Attribute> = map! {
            "cert_request_pem" => s(Required, "PKCS#10 PEM (stored as given, see docs)"),
            "ca_key_algorithm" => s(Required, "RSA"),
            "ca_private_key_pem" => secret(s(Required, "CA key (stored as given, see docs)")),
            "ca_cert_pem" => s(Required, "CA certificate (stored as given, see docs)"),
        };
        attributes.extend(own);
        Some(schema("locally signed certificate", attributes))
    }

    async fn read<'a>(
        &self,
        _: &mut Diagnostics,
        state: LocallySignedState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(LocallySignedState, ValueEmpty)> {
        Some((state, private))
    }

    async fn plan_create<'a>(
        &self,
        _: &mut Diagnostics,
        mut s: LocallySignedState,
        _: LocallySignedState,
        _: ValueEmpty,
    ) -> Option<(LocallySignedState, ValueEmpty)> {
        cert_defaults(
            &mut s.early_renewal_hours,
            &mut s.is_ca_certificate,
            &mut s.set_subject_key_id,
        );
        s.id = Value::Unknown;
        s.cert_pem = Value::Unknown;
        s.validity_start_time = Value::Unknown;
        s.validity_end_time = Value::Unknown;
        s.ready_for_renewal = Value::Unknown;
        Some((s, ValueEmpty::default()))
    }

    async fn plan_update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior: LocallySignedState,
        mut planned: LocallySignedState,
        _: LocallySignedState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(LocallySignedState, ValueEmpty, Vec<AttributePath>)> {
        cert_defaults(
            &mut planned.early_renewal_hours,
            &mut planned.is_ca_certificate,
            &mut planned.set_subject_key_id,
        );
        let mut replace = force_new!(prior, planned;
            cert_request_pem, ca_key_algorithm, ca_private_key_pem, ca_cert_pem,
            validity_period_hours, early_renewal_hours, is_ca_certificate,
            set_subject_key_id, allowed_uses);
        match renewal_due(&prior.validity_end_time, &planned.early_renewal_hours) {
            Ok(true) => {
                planned.ready_for_renewal = Value::Value(true);
                replace.push(AttributePath::new("ready_for_renewal"));
            }
            Ok(false) => {}
            Err(e) => return fail(diags, "planning tls_locally_signed_cert", e),
        }
        Some((planned, private, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _: &mut Diagnostics,
        _: LocallySignedState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<ValueEmpty> {
        Some(private)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        mut planned: LocallySignedState,
        _: LocallySignedState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(LocallySignedState, ValueEmpty)> {
        match Self::sign(&mut planned) {
            Ok(()) => Some((planned, private)),
            Err(e) => fail(diags, "tls_locally_signed_cert", e),
        }
    }

    async fn update<'a>(
        &self,
        _: &mut Diagnostics,
        _: LocallySignedState,
        planned: LocallySignedState,
        _: LocallySignedState,
        private: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<(LocallySignedState, ValueEmpty)> {
        Some((planned, private))
    }

    async fn destroy<'a>(
        &self,
        _: &mut Diagnostics,
        _: LocallySignedState,
        _: ValueEmpty,
        _: ValueEmpty,
    ) -> Option<()> {
        Some(())
    }
}

// ---------------------------------------------------------------- provider --

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let provider = ResourcesOnly {
        description: "tls (test-only stand-in)",
        resources: || {
            map! {
                "private_key" => PrivateKey,
                "self_signed_cert" => SelfSignedCert,
                "cert_request" => CertRequest,
                "locally_signed_cert" => LocallySignedCert,
            }
        },
    };
    serve("tls", provider).await
}
