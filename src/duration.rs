//! Durations as operators type them: `30d`, `720h`, `1h30m`, `90s`, or a bare number of seconds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A non-negative duration parsed from a human string; keeps what was typed for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanDuration {
    pub duration: Duration,
    text: String,
}

impl HumanDuration {
    pub fn as_secs(&self) -> u64 {
        self.duration.as_secs()
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!(
                "invalid duration {text:?}: use a number followed by d, h, m or s \
                 (e.g. 30d, 720h, 1h30m, 90s)"
            )
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(invalid());
        }
        if let Ok(secs) = trimmed.parse::<u64>() {
            return Ok(Self { duration: Duration::from_secs(secs), text: text.to_string() });
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in trimmed.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                'd' => 86_400,
                'h' => 3_600,
                'm' => 60,
                's' => 1,
                _ => return Err(invalid()),
            };
            let value: u64 = digits.parse().map_err(|_| invalid())?;
            total = value
                .checked_mul(unit)
                .and_then(|part| total.checked_add(part))
                .ok_or_else(invalid)?;
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(invalid());
        }
        Ok(Self { duration: Duration::from_secs(total), text: text.to_string() })
    }
}

/// Runs `future` for at most `limit`, `None` when that ran out. A zero limit means no limit, as
/// for `kubectl rollout status --timeout 0`.
pub async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    if limit.is_zero() {
        return Some(future.await);
    }
    tokio::time::timeout(limit, future).await.ok()
}

/// Calls `check` every `every` until it succeeds or `limit` ends (zero: no limit); the error
/// is what it said last.
pub async fn poll<T>(
    limit: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    let mut last = String::from("nothing was checked yet");
    let polled = within(limit, async {
        loop {
            match check().await {
                Ok(value) => return value,
                Err(why) => last = why,
            }
            tokio::time::sleep(every).await;
        }
    })
    .await;
    polled.ok_or(last)
}

/// Short residual time as kubeadm prints it: `348d`, `5h`, `12m`, `40s`; negative with a sign.
pub fn short_residual(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let abs = secs.unsigned_abs();
    let body = if abs >= 2 * 86_400 {
        format!("{}d", abs / 86_400)
    } else if abs >= 2 * 3_600 {
        format!("{}h", abs / 3_600)
    } else if abs >= 2 * 60 {
        format!("{}m", abs / 60)
    } else {
        format!("{abs}s")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> u64 {
        text.parse::<HumanDuration>().unwrap().as_secs()
    }

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(secs("30d"), 30 * 86_400);
        assert_eq!(secs("720h"), 720 * 3_600);
        assert_eq!(secs("1h30m"), 5_400);
        assert_eq!(secs("90s"), 90);
        assert_eq!(secs("0"), 0);
        assert_eq!(secs("15"), 15);
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        for bad in ["", "soon", "10x", "h", "5h3", "-1s", "1.5h"] {
            let err = bad.parse::<HumanDuration>().unwrap_err();
            assert!(err.contains("e.g. 30d"), "{bad}: {err}");
        }
    }

    #[test]
    fn residual_is_short() {
        assert_eq!(short_residual(348 * 86_400 + 5), "348d");
        assert_eq!(short_residual(5 * 3_600), "5h");
        assert_eq!(short_residual(-3 * 86_400), "-3d");
        assert_eq!(short_residual(59), "59s");
    }
}
