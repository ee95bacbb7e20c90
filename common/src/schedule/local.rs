//! Local wall-clock time: reading an operator's start, resolving it in a time zone (gaps and folds refused with
//! both sides shown), and formatting instants, spans and window kinds for messages.

use super::*;

/// Whether two half-open intervals `[start, end)` intersect.
pub(super) fn overlaps(a: &Occurrence, b: &Occurrence) -> bool {
    a.start < b.end && b.start < a.end
}

pub(super) fn time_zone(zone: &str) -> Result<TimeZone, ScheduleError> {
    TimeZone::get(zone).map_err(|_| ScheduleError::UnknownTimeZone { zone: zone.to_string() })
}

pub(super) fn out_of_range(e: jiff::Error) -> ScheduleError {
    ScheduleError::OutOfRange { detail: e.to_string() }
}

pub(super) enum ParsedStart {
    /// Had an offset (or `Z`): an absolute instant.
    Instant(Timestamp),
    /// Local wall-clock time, to resolve in the zone.
    Local(DateTime),
}

/// Reads `YYYY-MM-DDTHH:MM[:SS]`, optionally followed by an offset (`+01:00`, `-05:00`, `Z`).
pub(super) fn parse_start(input: &str) -> Result<ParsedStart, ScheduleError> {
    let text = input.trim();
    let bad = |detail: &str| ScheduleError::BadStart { input: input.to_string(), detail: detail.to_string() };
    // The time part: after the date and its `T` (or space). A date alone is refused, not taken as midnight.
    if text.is_empty() {
        return Err(bad("nothing given"));
    }
    let time_part = match text.find(['T', 't', ' ']) {
        Some(i) if i > 0 => &text[i + 1..],
        _ => return Err(bad("no time of day")),
    };
    if text.contains('[') {
        return Err(bad("a [zone] annotation is not accepted; give the zone separately"));
    }
    if time_part.contains(['+', '-', 'Z', 'z']) {
        text.parse::<Timestamp>().map(ParsedStart::Instant).map_err(|e| bad(&e.to_string()))
    } else {
        text.parse::<DateTime>().map(ParsedStart::Local).map_err(|e| bad(&e.to_string()))
    }
}

/// The instant of a local start time that exists exactly once in `tz`.
pub(super) fn resolve_local(tz: &TimeZone, zone: &str, dt: DateTime) -> Result<Timestamp, ScheduleError> {
    let ambiguous = tz.to_ambiguous_timestamp(dt);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { .. } => ambiguous.unambiguous().map_err(out_of_range),
        AmbiguousOffset::Gap { before, after } => {
            let (jump_from, jump_to) = transition(tz, dt, before, after)?;
            Err(ScheduleError::NonexistentLocalTime { start: dt, zone: zone.to_string(), jump_from, jump_to })
        }
        AmbiguousOffset::Fold { before, after } => {
            let (back_from, back_to) = transition(tz, dt, before, after)?;
            Err(ScheduleError::AmbiguousLocalTime {
                start: dt,
                zone: zone.to_string(),
                back_from,
                back_to,
                first: before,
                second: after,
            })
        }
    }
}

/// The wall-clock times just before and just after the transition that makes `dt` a gap or a fold.
pub(super) fn transition(
    tz: &TimeZone,
    dt: DateTime,
    before: Offset,
    after: Offset,
) -> Result<(Time, Time), ScheduleError> {
    // Read with either offset, `dt` gives one instant before the transition (the earlier one) and one at or after.
    let a = before.to_timestamp(dt).map_err(out_of_range)?;
    let b = after.to_timestamp(dt).map_err(out_of_range)?;
    let at = tz
        .following(a.min(b))
        .next()
        .map(|t| t.timestamp())
        .ok_or_else(|| ScheduleError::OutOfRange { detail: format!("no time zone transition near {dt}") })?;
    Ok((before.to_datetime(at).time(), after.to_datetime(at).time()))
}

/// `HH:MM`, or `HH:MM:SS` when there are seconds.
pub(super) fn fmt_time(t: Time) -> String {
    if t.second() == 0 && t.subsec_nanosecond() == 0 {
        format!("{:02}:{:02}", t.hour(), t.minute())
    } else {
        t.to_string()
    }
}

/// `YYYY-MM-DDTHH:MM`, or with seconds when there are some.
pub(super) fn fmt_datetime(dt: DateTime) -> String {
    format!("{}T{}", dt.date(), fmt_time(dt.time()))
}

/// `+01:00`, `-05:00`, `+05:30`.
pub(super) fn fmt_offset(o: Offset) -> String {
    let secs = o.seconds();
    let sign = if secs < 0 { '-' } else { '+' };
    let abs = secs.unsigned_abs();
    let (h, m, s) = (abs / 3600, abs / 60 % 60, abs % 60);
    if s == 0 {
        format!("{sign}{h:02}:{m:02}")
    } else {
        format!("{sign}{h:02}:{m:02}:{s:02}")
    }
}

/// An instant as local time in `zone` with its offset, e.g. `2026-12-01T02:00+01:00`; UTC if the zone is unknown.
pub(super) fn fmt_in_zone(ts: Timestamp, zone: &str) -> String {
    let tz = TimeZone::get(zone).unwrap_or(TimeZone::UTC);
    format!("{}{}", fmt_datetime(tz.to_datetime(ts)), fmt_offset(tz.to_offset(ts)))
}

/// `<start> to <end> <zone>`.
pub(super) fn fmt_span(o: &Occurrence) -> String {
    format!("{} to {} {}", fmt_in_zone(o.start, &o.timezone), fmt_in_zone(o.end, &o.timezone), o.timezone)
}

/// How an occurrence's source is named in messages.
pub(super) fn kind(o: &Occurrence) -> String {
    match &o.source {
        WindowSource::OneOff => "one-off window".to_string(),
        WindowSource::Recurring(name) => format!("recurring window {name:?}, occurrence"),
    }
}
