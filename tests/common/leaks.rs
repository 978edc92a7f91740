//! Private keys placed every way a child program may print them, and the needles that find
//! any private byte of them in what the plugin showed.
//!
//! The placements are shell functions (`place_<name> KEY OTHER_KEY`), so that a real child
//! process prints them: a test's fake terraform, a wrapper of the real one, or `sh -c` under
//! the plugin's subprocess wrapper. A needle is a 16-character run of an encoding of a key's
//! private part only (an RSA key's private exponent and primes, an EC key's scalar), so a
//! certificate or public key of the same key pair is never taken for a leak.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use openssl::asn1::Asn1Time;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::{X509, X509NameBuilder};

/// The length of a needle.
pub const RUN: usize = 16;

/// Every placement `placement_functions` defines, in the order a test prints them.
pub const PLACEMENTS: &[&str] = &[
    "pem",
    "plan_diff",
    "pem_on_one_line",
    "json_two_keys",
    "glued_equals",
    "glued_colon",
    "quoted",
    "url_safe",
    "two_per_line",
    "wrapped_64",
    "wrapped_76",
    "yaml_wrapped",
    "json_wrapped",
    "twice",
    "kubeconfig_twice",
    "kubeconfig_twice_wrapped",
    "der_glued",
    "der_wrapped",
];

/// The kubeconfig text around the base64 key of the doubly encoded placements (the shell
/// prints it, the needles encode the same text).
const KUBECONFIG_HEAD: &str =
    "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n    client-key-data: ";
const KUBECONFIG_TAIL: &str = "\n";

/// Shell (POSIX sh, GNU coreutils): the functions `place_<name> KEY OTHER_KEY` of
/// [`PLACEMENTS`], and `place_public CERT PUBKEY`, which prints a certificate and a public
/// key the ways the key placements print keys.
pub fn placement_functions() -> String {
    format!(
        "KUBECONFIG_HEAD='{KUBECONFIG_HEAD}'\n\
         KUBECONFIG_TAIL='{KUBECONFIG_TAIL}'\n{}",
        r#"
esc() { awk '{ printf "%s\\n", $0 }' "$1"; }
kubeconfig() { printf '%s' "$KUBECONFIG_HEAD"; base64 -w0 "$1"; printf '%s' "$KUBECONFIG_TAIL"; }
place_pem() { cat "$1"; }
place_plan_diff() {
  echo '      - content              = <<~EOT'; sed 's/^/          /' "$1"; echo '        EOT -> null'
}
place_pem_on_one_line() { tr '\n' ' ' < "$1"; echo; }
place_json_two_keys() {
  printf '{"private_key_pem":"%s","id":"x","other_private_key_pem":"%s","algorithm":"RSA"}\n' \
    "$(esc "$1")" "$(esc "$2")"
}
place_glued_equals() { printf 'aggregationClientKey=%s\n' "$(base64 -w0 "$1")"; }
place_glued_colon() { printf 'aggregationClientKey:%s\n' "$(base64 -w0 "$1")"; }
place_quoted() { printf '  "aggregationClientKey": "%s",\n' "$(base64 -w0 "$1")"; }
place_url_safe() { printf 'key=%s\n' "$(base64 -w0 "$1" | tr '+/' '-_')"; }
place_two_per_line() { printf 'a=%s b=%s\n' "$(base64 -w0 "$1")" "$(base64 -w0 "$2")"; }
place_wrapped_64() { base64 -w64 "$1"; }
place_wrapped_76() { base64 -w76 "$1"; }
place_yaml_wrapped() { echo 'servingKey: |'; base64 -w76 "$1" | sed 's/^/  /'; }
place_json_wrapped() { printf '{"data":"%s"}\n' "$(base64 -w76 "$1" | esc /dev/stdin)"; }
place_twice() { printf 'value: %s\n' "$(base64 -w0 "$1" | base64 -w0)"; }
place_kubeconfig_twice() { printf 'kubeconfig=%s\n' "$(kubeconfig "$1" | base64 -w0)"; }
place_kubeconfig_twice_wrapped() { kubeconfig "$1" | base64 -w76; }
place_der_glued() { printf 'der=%s\n' "$(grep -v -- ----- "$1" | tr -d '\n')"; }
place_der_wrapped() { grep -v -- ----- "$1"; }
place_public() {
  cat "$1"; cat "$2"
  printf 'caCert=%s\n' "$(base64 -w0 "$1")"
  base64 -w76 "$1"
  printf '{"cert_pem":"%s","public_key_pem":"%s"}\n' "$(esc "$1")" "$(esc "$2")"
  grep -v -- ----- "$1"
}
"#
    )
}

/// Shell: the functions of [`placement_functions`] and `place_every_key KEY…`, which prints
/// every placement (only `$CERTROTATE_TEST_PLACEMENT` when set) of each key file under a
/// line naming both; each placement's second key is the one before it.
pub fn place_every_key() -> String {
    let body = r##"
place_every_key() {
  other=
  for k in "$@"; do
    [ -f "$k" ] || continue
    for p in ${CERTROTATE_TEST_PLACEMENT:-PLACEMENTS}; do
      echo "# placement $p of $(basename "$k")"
      "place_$p" "$k" "${other:-$k}"
    done
    other=$k
  done
}
"##;
    placement_functions() + &body.replace("PLACEMENTS", &PLACEMENTS.join(" "))
}

/// Shell: prints every placement of each of `keys`, then the public material and a line of
/// ordinary output.
pub fn print_all(keys: &[&Path], cert: &Path, public_key: &Path) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("'{}'", k.display())).collect();
    format!(
        "{}
place_every_key {}
echo '# public material'
place_public '{}' '{}'
         echo 'Apply complete! Resources: 2 added, 0 changed, 2 destroyed.'
",
        place_every_key(),
        quoted.join(" "),
        cert.display(),
        public_key.display()
    )
}

/// Real keys of every kind a cluster has: RSA 2048 and EC P-256, each in its traditional
/// encoding (`RSA PRIVATE KEY`, `EC PRIVATE KEY`) and in PKCS#8 (`PRIVATE KEY`).
pub fn generated_keys() -> Vec<(String, Vec<u8>)> {
    let rsa = || PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let ec = || {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    };
    vec![
        ("rsa-pkcs1.key".into(), rsa().rsa().unwrap().private_key_to_pem().unwrap()),
        ("rsa-pkcs8.key".into(), rsa().private_key_to_pem_pkcs8().unwrap()),
        ("ec-sec1.key".into(), ec().ec_key().unwrap().private_key_to_pem().unwrap()),
        ("ec-pkcs8.key".into(), ec().private_key_to_pem_pkcs8().unwrap()),
    ]
}

/// A certificate and a public key (PEM) of key pairs other than `generated_keys`'.
pub fn public_material() -> (Vec<u8>, Vec<u8>) {
    let key: PKey<Private> = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "aggregation-ca").unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(365).unwrap()).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let other = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    (cert.build().to_pem().unwrap(), other.public_key_to_pem().unwrap())
}

/// What must still be in the output after redaction when `place_public` printed `cert` and
/// `public_key`: each PEM line, base64 of the certificate whole and wrapped.
pub fn public_texts(cert: &[u8], public_key: &[u8]) -> Vec<String> {
    let mut texts: Vec<String> = [cert, public_key]
        .iter()
        .flat_map(|pem| String::from_utf8_lossy(pem).lines().map(String::from).collect::<Vec<_>>())
        .collect();
    let b64 = STANDARD.encode(cert);
    texts.extend(b64.as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c).into_owned()));
    texts.push(format!("caCert={b64}"));
    texts
}

/// 16-character runs of private key material.
pub struct Needles {
    windows: HashMap<Vec<u8>, String>,
}

fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>()
}

/// The characters of base64 of some bytes that depend on `bytes` alone.
fn encoded(bytes: Range<usize>) -> Range<usize> {
    bytes.start.div_ceil(3) * 4..bytes.end / 3 * 4
}

impl Needles {
    pub fn new() -> Needles {
        Needles { windows: HashMap::new() }
    }

    /// Adds a private key: runs of its private part in every encoding a placement prints
    /// (the PEM body; base64 of the PEM, standard and URL-safe; base64 of that; base64 of a
    /// kubeconfig holding it).
    pub fn add_key(&mut self, label: &str, pem: &[u8]) {
        let text = String::from_utf8_lossy(pem);
        let body = pem_body(&text);
        let der = STANDARD.decode(&body).expect("a PEM body is base64");
        let private = private_part(pem, &der);
        let in_body = encoded(private);
        self.add_windows(label, &body.as_bytes()[in_body.clone()]);
        // Body character i sits after the BEGIN line, with a newline after every 64.
        let header = text.find('\n').expect("a PEM has lines") + 1;
        let at = |i: usize| header + i + i / 64;
        let in_pem = at(in_body.start)..at(in_body.end - 1) + 1;
        for engine in [&STANDARD, &URL_SAFE] {
            self.add_windows(label, &engine.encode(pem).as_bytes()[encoded(in_pem.clone())]);
        }
        let once = STANDARD.encode(pem);
        let in_once = encoded(in_pem);
        self.add_windows(label, &STANDARD.encode(&once).as_bytes()[encoded(in_once.clone())]);
        let kubeconfig = format!("{KUBECONFIG_HEAD}{once}{KUBECONFIG_TAIL}");
        let head = KUBECONFIG_HEAD.len();
        let in_kubeconfig = encoded(in_once.start + head..in_once.end + head);
        self.add_windows(label, &STANDARD.encode(&kubeconfig).as_bytes()[in_kubeconfig]);
    }

    /// Adds all of a certificate's material (for the command-line checks).
    pub fn add_cert(&mut self, label: &str, pem: &[u8]) {
        let text = String::from_utf8_lossy(pem);
        for enc in [pem_body(&text), STANDARD.encode(pem)] {
            // Skip the DER header common to every certificate.
            self.add_windows(label, &enc.as_bytes()[8.min(enc.len())..]);
        }
    }

    fn add_windows(&mut self, label: &str, bytes: &[u8]) {
        assert!(bytes.len() >= 2 * RUN, "{label}: too little material for needles");
        for w in bytes.windows(RUN) {
            self.windows.entry(w.to_vec()).or_insert_with(|| label.to_string());
        }
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Labels of the needles found in `hay` (whitespace and JSON `\n` escapes removed first, so
    /// a PEM broken over lines is still found).
    pub fn found_in(&self, hay: &str) -> Vec<String> {
        let flat: Vec<u8> = hay
            .replace("\\n", "")
            .replace("\\r", "")
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let mut found: Vec<String> =
            flat.windows(RUN).filter_map(|w| self.windows.get(w).cloned()).collect();
        found.sort();
        found.dedup();
        found
    }
}

/// The bytes of a key's DER that are secret: from an RSA key's private exponent to the end
/// (primes, exponents, coefficient), an EC key's scalar.
fn private_part(pem: &[u8], der: &[u8]) -> Range<usize> {
    let key = PKey::private_key_from_pem(pem).expect("a PEM private key");
    let find = |secret: &[u8]| {
        der.windows(secret.len())
            .position(|w| w == secret)
            .expect("the secret number is in the key's DER")
    };
    if let Ok(rsa) = key.rsa() {
        find(&rsa.d().to_vec())..der.len()
    } else {
        let scalar = key.ec_key().expect("an RSA or EC key").private_key().to_vec();
        let at = find(&scalar);
        at..at + scalar.len()
    }
}
