//! Update windows: one-off windows scheduled by an operator and recurring windows from the policy.
//!
//! Times are computed with `jiff` in a named IANA time zone. A window's length is elapsed (absolute) time, so a
//! window never shrinks or doubles on a daylight-saving night; see [`RecurringWindow::occurrences`] for how a start
//! time that falls in a gap or a fold is resolved.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A weekly recurring window from the policy (`[window.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecurringWindow {
    /// The policy's name for it (`[window.<name>]`).
    pub name: String,
    /// The days of the week it opens on, in the window's time zone. Never empty.
    #[serde(with = "weekdays")]
    pub days: Vec<jiff::civil::Weekday>,
    /// Local wall-clock start time.
    pub start: jiff::civil::Time,
    /// Elapsed length. Non-zero and within the policy's `limits.max_window`.
    pub duration: Duration,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// Whether work starts by itself when the window opens, or waits for `otpatchctl apply`.
    pub auto_start: bool,
}

/// A window scheduled once by an operator (`otpatchctl window schedule`). Persisted by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneOffWindow {
    pub id: String,
    pub start: Timestamp,
    pub duration: Duration,
    /// The time zone the operator gave (for display); the start is absolute.
    pub timezone: String,
    pub auto_start: bool,
    /// Who scheduled it (D-Bus caller uid), for the audit log.
    pub created_by: Option<u32>,
}

/// Where an occurrence came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowSource {
    OneOff,
    /// A recurring window, by its policy name.
    Recurring(String),
}

/// One concrete window in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occurrence {
    /// Stable id: the one-off id, or `<name>@<local date>` for a recurring window (e.g. `sunday@2026-12-06`).
    pub id: String,
    pub start: Timestamp,
    /// Hard end: `start + duration`.
    pub end: Timestamp,
    pub timezone: String,
    pub source: WindowSource,
    pub auto_start: bool,
}

/// Weekdays as their three-letter lower-case names (`mon` .. `sun`), as the policy writes them.
pub mod weekdays {
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
            || matches!(
                lower.as_str(),
                "monday" | "tuesday" | "wednesday" | "thursday" | "friday" | "saturday" | "sunday"
            );
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
        names
            .iter()
            .map(|n| parse(n).ok_or_else(|| serde::de::Error::custom(format!("unknown weekday {n:?}"))))
            .collect()
    }
}
