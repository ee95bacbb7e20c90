//! Durations and sizes as people write them in policies and on the command line.
//!
//! Durations are one or more `<number><unit>` groups, optionally separated by spaces, with units `ms`, `s`, `m`,
//! `h`, `d` (`90m`, `1h30m`, `1h 30m`, `500ms`). Sizes are a number with an optional binary or decimal unit
//! (`512MiB`, `2GiB`, `100MB`, `4096`).

use std::time::Duration;

/// Why a duration or size could not be read. The message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty duration: expected e.g. \"90m\", \"1h30m\" or \"500ms\"")]
    EmptyDuration,
    #[error("invalid duration {0:?}: expected groups of <number><unit> with unit ms, s, m, h or d (e.g. \"1h30m\")")]
    BadDuration(String),
    #[error("duration {0:?} is too large")]
    DurationOverflow(String),
    #[error("invalid size {0:?}: expected a number with an optional unit B, KiB, MiB, GiB, TiB, kB, MB, GB or TB (e.g. \"512MiB\")")]
    BadSize(String),
    #[error("size {0:?} is too large")]
    SizeOverflow(String),
}

/// Parses a human duration such as `90m`, `1h30m`, `1h 30m` or `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError::EmptyDuration);
    }
    let bad = || UnitError::BadDuration(text.to_string());
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u128 = 0;
    let mut groups = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i == bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(bad());
        }
        let n: u128 = s[start..i].parse().map_err(|_| UnitError::DurationOverflow(text.to_string()))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor: u128 = match &s[ustart..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        total_ms = n
            .checked_mul(factor)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| UnitError::DurationOverflow(text.to_string()))?;
        groups += 1;
    }
    if groups == 0 {
        return Err(bad());
    }
    let ms = u64::try_from(total_ms).map_err(|_| UnitError::DurationOverflow(text.to_string()))?;
    Ok(Duration::from_millis(ms))
}

/// Writes a duration the way [`parse_duration`] reads it, shortest form first (`1h30m`, `500ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{}", ms / size, unit));
            ms %= size;
        }
    }
    out
}

/// Parses a size such as `512MiB`, `2GiB`, `100MB` or a plain byte count.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(UnitError::BadSize(text.to_string()));
    }
    let n: u64 = num.parse().map_err(|_| UnitError::SizeOverflow(text.to_string()))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(UnitError::BadSize(text.to_string())),
    };
    n.checked_mul(factor).ok_or_else(|| UnitError::SizeOverflow(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations_say_why() {
        assert_eq!(parse_duration(""), Err(UnitError::EmptyDuration));
        assert!(matches!(parse_duration("90"), Err(UnitError::BadDuration(_))));
        assert!(matches!(parse_duration("m"), Err(UnitError::BadDuration(_))));
        assert!(matches!(parse_duration("5 weeks"), Err(UnitError::BadDuration(_))));
        assert!(matches!(parse_duration("-5m"), Err(UnitError::BadDuration(_))));
        assert!(matches!(
            parse_duration("99999999999999999999999999999999999999999d"),
            Err(UnitError::DurationOverflow(_))
        ));
    }

    #[test]
    fn durations_round_trip() {
        for text in ["1h30m", "500ms", "2d3h", "45s", "1m1s1ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(matches!(parse_size("12 parsecs"), Err(UnitError::BadSize(_))));
        assert!(matches!(parse_size("99999999999TiB"), Err(UnitError::SizeOverflow(_))));
    }
}
