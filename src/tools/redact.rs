//! Redaction of what child programs print, before it is shown, logged or journaled.
//!
//! Terraform 0.13 (what Lokomotive pins) prints a `local_file`'s old content in its plan diff,
//! so `apply -target local_file.aggregation-ca-key[0]` shows a CA private key; `helm --debug`
//! and `helm get values` print base64 PEM keys. Two rules cover both: every line of a PEM
//! private-key block (from its BEGIN line to its END line, also when a JSON string holds the
//! whole block on one line), and every base64 token that decodes to such a block.

use base64::Engine as _;

const REDACTED: &str = "[REDACTED PRIVATE KEY]";
/// Shorter base64 tokens cannot hold a PEM header, let alone a key.
const MIN_BASE64_TOKEN: usize = 40;

/// Redacts a stream line by line; it remembers when it is inside a PEM private-key block.
#[derive(Debug, Default)]
pub struct Redactor {
    in_key_block: bool,
}

impl Redactor {
    /// The line as it may be shown (without its newline).
    pub fn line(&mut self, line: &str) -> String {
        if self.in_key_block {
            if is_key_pem_marker(line, "-----END ") {
                self.in_key_block = false;
            }
            return keep_indent(line, REDACTED);
        }
        if let Some(start) = key_begin(line) {
            let rest = &line[start..];
            // A block whose END is on the same line (JSON strings with `\n` escapes).
            if let Some(end) = rest.find("-----END ") {
                let after = &rest[end + "-----END ".len()..];
                let close = after.find("-----").map_or(after.len(), |i| i + "-----".len());
                let tail = &after[close..];
                return format!("{}{REDACTED}{}", &line[..start], redact_tokens(tail));
            }
            self.in_key_block = true;
            return format!("{}{REDACTED}", &line[..start]);
        }
        redact_tokens(line)
    }

    /// Redacts a whole text (a captured output), keeping its lines.
    pub fn text(text: &str) -> String {
        let mut redactor = Redactor::default();
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            out.push_str(&redactor.line(line));
            out.push('\n');
        }
        out
    }
}

fn keep_indent(line: &str, replacement: &str) -> String {
    let indent = line.len() - line.trim_start().len();
    format!("{}{replacement}", &line[..indent])
}

/// Where a `-----BEGIN … PRIVATE KEY-----` marker starts in the line.
fn key_begin(line: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = line[from..].find("-----BEGIN ") {
        let at = from + i;
        if is_key_pem_marker(&line[at..], "-----BEGIN ") {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn is_key_pem_marker(text: &str, marker: &str) -> bool {
    text.find(marker).is_some_and(|i| {
        let label = &text[i + marker.len()..];
        label.find("-----").is_some_and(|end| label[..end].ends_with("PRIVATE KEY"))
    })
}

fn is_base64_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_')
}

/// Replaces base64 tokens that decode to a PEM private key.
fn redact_tokens(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut token_start = None;
    for (i, c) in line.char_indices().chain(std::iter::once((line.len(), ' '))) {
        if i < line.len() && is_base64_char(c) {
            token_start.get_or_insert(i);
            continue;
        }
        if let Some(start) = token_start.take() {
            let token = &line[start..i];
            out.push_str(if holds_private_key(token) { REDACTED } else { token });
        }
        if i < line.len() {
            out.push(c);
        }
    }
    out
}

fn holds_private_key(token: &str) -> bool {
    if token.len() < MIN_BASE64_TOKEN {
        return false;
    }
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
    ];
    engines.iter().any(|engine| {
        engine.decode(token).is_ok_and(|bytes| {
            let text = String::from_utf8_lossy(&bytes);
            text.contains("PRIVATE KEY")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretbody1234567890abcdef\nQWERTYsecretline2\n-----END RSA PRIVATE KEY-----\n";

    #[test]
    fn pem_blocks_in_a_terraform_plan_diff_are_redacted() {
        let plan = format!(
            "  # local_file.aggregation-ca-key[0] must be replaced\n      - content = <<~EOT\n{}      EOT -> null\n  id = \"abc\"\n",
            KEY.lines().map(|l| format!("          {l}\n")).collect::<String>()
        );
        let out = Redactor::text(&plan);
        assert!(!out.contains("secretbody") && !out.contains("secretline2"), "{out}");
        assert!(out.contains("must be replaced") && out.contains("EOT -> null"), "{out}");
        assert!(out.contains("id = \"abc\""), "{out}");
    }

    #[test]
    fn one_line_json_blocks_are_redacted_and_the_rest_kept() {
        let line = format!("{{\"private_key_pem\":{:?},\"id\":\"1\"}}", KEY);
        let out = Redactor::text(&line);
        assert!(!out.contains("secretbody"), "{out}");
        assert!(out.contains("\"id\":\"1\""), "{out}");
    }

    #[test]
    fn base64_encoded_keys_are_redacted_certificates_kept() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(KEY);
        let cert = base64::engine::general_purpose::STANDARD
            .encode("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        let out = Redactor::text(&format!("aggregationClientKey: {b64}\ncaCert: {cert}\n"));
        assert!(!out.contains(&b64[..20]), "{out}");
        assert!(out.contains(&cert), "{out}");
    }

    #[test]
    fn public_keys_and_plain_text_pass() {
        let text =
            "-----BEGIN PUBLIC KEY-----\nMIIBIjAN\n-----END PUBLIC KEY-----\nApply complete!\n";
        assert_eq!(Redactor::text(text), text);
    }
}
