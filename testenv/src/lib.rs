//! Shared helpers of the test-environment binaries: the clock (with the
//! `CERTROTATE_FAKE_NOW` test knob), the time formats Terraform and Go print,
//! small digest helpers, and what the test servers share ([`serve`]).

pub mod provider;
pub mod serve;

use anyhow::{Context, Result};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Environment variable that makes the test providers treat an instant as
/// "now" (RFC 3339), so tests can issue certificates that are already expired
/// or about to expire through a real `terraform apply`.
pub const FAKE_NOW_ENV: &str = "CERTROTATE_FAKE_NOW";

/// The current instant, or the one given by `CERTROTATE_FAKE_NOW`.
pub fn now() -> Result<OffsetDateTime> {
    match std::env::var(FAKE_NOW_ENV) {
        Ok(s) if !s.trim().is_empty() => parse_rfc3339(s.trim())
            .with_context(|| format!("{FAKE_NOW_ENV}={s:?} is not an RFC 3339 time")),
        _ => Ok(OffsetDateTime::now_utc()),
    }
}

pub fn parse_rfc3339(s: &str) -> Result<OffsetDateTime> {
    Ok(OffsetDateTime::parse(s, &Rfc3339)?.to_offset(time::UtcOffset::UTC))
}

/// RFC 3339 at second precision in UTC, as Go's `time.Format(time.RFC3339)`
/// prints it on a UTC machine (what the tls provider stores in
/// `validity_start_time` / `validity_end_time`).
pub fn rfc3339(t: OffsetDateTime) -> String {
    let f = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC).format(&f).unwrap_or_default()
}

/// Go's default `time.Time` string in UTC, e.g. `2020-11-18 17:50:43 +0000 UTC`,
/// with the fractional seconds Go prints (trailing zeros trimmed).
pub fn go_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let f = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let mut s = t.format(&f).unwrap_or_default();
    if t.nanosecond() != 0 {
        let frac = format!("{:09}", t.nanosecond());
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

/// The klog line header: `I1119 09:40:10.092021     123 file.go:178] `.
pub fn klog_header(severity: char, file_line: &str) -> String {
    let t = OffsetDateTime::now_utc();
    format!(
        "{severity}{:02}{:02} {:02}:{:02}:{:02}.{:06} {:>7} {file_line}] ",
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond(),
        std::process::id()
    )
}

/// An ASN.1 time (certificate validity bound) as an `OffsetDateTime`.
pub fn asn1_to_time(t: &Asn1TimeRef) -> Result<OffsetDateTime> {
    let epoch = Asn1Time::from_unix(0)?;
    let d = epoch.diff(t)?;
    let secs = i64::from(d.days) * 86_400 + i64::from(d.secs);
    Ok(OffsetDateTime::from_unix_timestamp(secs)?)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex SHA-1, the form both real providers use for ids.
pub fn sha1_hex(data: &[u8]) -> String {
    hex(&openssl::sha::sha1(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go() {
        let t = parse_rfc3339("2020-11-18T17:50:43Z").unwrap();
        assert_eq!(go_time(t), "2020-11-18 17:50:43 +0000 UTC");
        assert_eq!(rfc3339(t), "2020-11-18T17:50:43Z");
        let t = parse_rfc3339("2020-11-19T09:40:10.092007151+01:00").unwrap();
        assert_eq!(go_time(t), "2020-11-19 08:40:10.092007151 +0000 UTC");
    }

    #[test]
    fn asn1_round_trip() {
        let t = Asn1Time::from_unix(1_605_721_843).unwrap();
        let got = asn1_to_time(&t).unwrap();
        assert_eq!(rfc3339(got), "2020-11-18T17:50:43Z");
    }
}
