//! Problems in files that hold private keys (the webhook's chart values, kubeconfigs with
//! `client-key-data`, `*.key`), described without quoting them.
//!
//! Parser and decoder messages show the input around the failure (a YAML error renders a
//! snippet of the line, a base64 error the offending character), and in these files that input
//! is key material. What the operator needs is where to look: the line and the column.

use serde_saphyr::Location;

/// Said after every such message, so the operator knows why the usual snippet is missing.
const NOT_SHOWN: &str = "its content is not shown because the file holds a private key";

/// A YAML parse error as `not valid YAML at line L, column C (…)`.
pub fn yaml_error(err: &serde_saphyr::Error) -> String {
    match err.location().filter(|at| at.line() > 0) {
        Some(at) => format!("not valid YAML at {} ({NOT_SHOWN})", position(&at)),
        None => format!("not valid YAML ({NOT_SHOWN})"),
    }
}

/// A base64 value that does not decode, as which character of it is wrong, never which byte.
pub fn base64_error(err: &base64::DecodeError) -> String {
    match err {
        base64::DecodeError::InvalidByte(at, _) => {
            format!("character {} is not a base64 character", at + 1)
        }
        base64::DecodeError::InvalidLastSymbol(at, _) => {
            format!("character {} ends the value wrongly (cut short?)", at + 1)
        }
        base64::DecodeError::InvalidLength(_) => {
            "its length is not that of base64 data (cut short?)".into()
        }
        base64::DecodeError::InvalidPadding => "its `=` padding is wrong (cut short?)".into(),
    }
}

/// `line L, column C`, as editors count them (from 1).
pub fn position(at: &Location) -> String {
    format!("line {}, column {}", at.line(), at.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";

    #[test]
    fn yaml_errors_give_the_position_not_the_text() {
        let text = format!("webhook:\n  servingKey: {}\": [{}\n", &SECRET[..20], &SECRET[20..]);
        let err = serde_saphyr::from_str::<serde_json::Value>(&text).unwrap_err();
        assert!(err.to_string().contains(&SECRET[..16]), "the parser's own text quotes it");
        let said = yaml_error(&err);
        assert!(said.starts_with("not valid YAML at line 2, column "), "{said}");
        assert!(!said.contains(&SECRET[..8]) && !said.contains(&SECRET[20..28]), "{said}");
    }

    #[test]
    fn base64_errors_name_the_character_not_its_value() {
        use base64::Engine as _;
        let err = base64::engine::general_purpose::STANDARD.decode("QUJD*EVG").unwrap_err();
        assert!(err.to_string().contains("42"), "the decoder's own text gives the byte");
        assert_eq!(base64_error(&err), "character 5 is not a base64 character");
    }
}
