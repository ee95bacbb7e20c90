//! Weekdays as their three-letter lower-case names (`mon` .. `sun`), as the policy writes them.

use jiff::civil::Weekday;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const NAMES: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

/// The weekday named `mon` .. `sun` (case-insensitive; full English names are accepted too).
pub fn parse(name: &str) -> Option<Weekday> {
    let lower = name.to_ascii_lowercase();
    let short = lower.get(..3)?;
    let full_ok = lower.len() == 3
        || matches!(lower.as_str(), "monday" | "tuesday" | "wednesday" | "thursday" | "friday" | "saturday" | "sunday");
    if !full_ok {
        return None;
    }
    NAMES.iter().find(|(n, _)| *n == short).map(|(_, d)| *d)
}

/// The three-letter name of a weekday.
pub fn name(day: Weekday) -> &'static str {
    NAMES.iter().find(|(_, d)| *d == day).map(|(n, _)| *n).unwrap_or("?")
}

pub fn serialize<S: Serializer>(days: &[Weekday], s: S) -> Result<S::Ok, S::Error> {
    days.iter().map(|d| name(*d)).collect::<Vec<_>>().serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Weekday>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names.iter().map(|n| parse(n).ok_or_else(|| serde::de::Error::custom(format!("unknown weekday {n:?}")))).collect()
}
