//! Update windows: one-off windows scheduled by an operator and recurring windows from the policy.
//!
//! Times are computed with `jiff` in a named IANA time zone. A window's length is elapsed (absolute) time, so a
//! window never shrinks or doubles on a daylight-saving night.
//!
//! # Recurring windows
//!
//! A [`RecurringWindow`] opens on each listed weekday (in its own time zone) at the local wall-clock time `start`,
//! and stays open for `duration` of elapsed time: its [`Occurrence`] is `[start, start + duration)`. Each listed
//! local date gives exactly one occurrence, with id `<name>@<local date YYYY-MM-DD>` (e.g. `sunday@2026-12-06`),
//! even on a daylight-saving night:
//!
//! - **Gap** (spring forward): if the start time does not exist that night (02:30 on 2026-03-29 in Europe/Berlin,
//!   where clocks jump from 02:00 to 03:00), the window opens at the instant the local time would have been,
//!   shifted forward by the length of the gap: 03:30 CEST (01:30 UTC). This is jiff's (and RFC 5545's)
//!   "compatible" disambiguation. The window still lasts its full `duration`.
//! - **Fold** (fall back): if the start time occurs twice that night (02:30 on 2026-10-25 in Europe/Berlin, where
//!   clocks go back from 03:00 to 02:00), the window opens at the *first* occurrence (02:30 CEST, 00:30 UTC), once
//!   only, and lasts its full `duration` of elapsed time (so it ends at 03:00 CET on the wall clock).
//!
//! # One-off windows
//!
//! An operator gives a start such as `2026-12-01T02:00` (local wall-clock time in the requested zone, or the
//! default zone) or with an explicit offset (`2026-12-01T02:00+01:00`, `2026-12-01T01:00Z`), and a duration; see
//! [`OneOffWindow::from_request`]. Unlike recurring windows, nothing is guessed for a one-off window: a local start
//! inside a gap is refused (it never happens on the wall clock), and a local start inside a fold is refused unless
//! an offset says which of the two is meant (the error shows both). Also refused: a start before `now`, a zero
//! duration, a duration over `limits.max_window`, an unknown time zone and text that is not a date and time.
//!
//! # Overlaps
//!
//! Windows are half-open intervals `[start, end)`: two windows overlap when they share an instant, so a window may
//! open exactly when another closes. [`Schedule::add`] refuses a one-off window that overlaps another one-off
//! window or any (not cancelled) occurrence of a recurring window, and [`Schedule::check_recurring`] refuses a
//! policy whose recurring windows overlap each other. A policy reload ([`Schedule::set_recurring`]) can still bring
//! a recurring window that overlaps a one-off window already scheduled: nothing is dropped then,
//! [`Schedule::upcoming`] returns both (sorted by start) and the daemon reports the overlap.
//!
//! Cancelling an occurrence of a recurring window ([`Schedule::cancel`]) records its id in [`Schedule::skipped`];
//! skipped occurrences are left out of [`Schedule::upcoming`], [`Schedule::current`] and [`Schedule::next`].

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::units::format_duration;

mod local;
#[cfg(test)]
mod tests;
pub mod weekdays;

use local::*;

/// How far [`Schedule::check_recurring`] looks ahead: more than a year, so both daylight-saving changes are covered.
const CHECK_HORIZON: Duration = Duration::from_secs(400 * 86_400);
/// [`Schedule::next`] searches recurring windows in steps of this length ...
const NEXT_STEP: Duration = Duration::from_secs(8 * 86_400);
/// ... up to this many steps (more than a year, in case many occurrences are cancelled).
const NEXT_MAX_STEPS: u32 = 50;

/// Why a window cannot be scheduled, cancelled or computed. Messages are meant for the plant engineer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The time zone is not a known IANA name.
    #[error("unknown time zone {zone:?}: expected an IANA name such as Europe/Berlin, America/New_York or UTC")]
    UnknownTimeZone { zone: String },
    /// The start text is not a date and time.
    #[error(
        "cannot read window start {input:?} ({detail}): expected a local date and time like 2026-12-01T02:00, \
         or one with an offset like 2026-12-01T02:00+01:00 or 2026-12-01T01:00Z"
    )]
    BadStart { input: String, detail: String },
    /// A local start time that the clocks skip that night (spring forward).
    #[error(
        "window start {} does not exist in {zone}: clocks jump from {} to {} that night",
        fmt_datetime(*.start), fmt_time(*.jump_from), fmt_time(*.jump_to)
    )]
    NonexistentLocalTime { start: DateTime, zone: String, jump_from: Time, jump_to: Time },
    /// A local start time that happens twice that night (fall back), given without an offset.
    #[error(
        "window start {} is ambiguous in {zone}: clocks go back from {} to {} that night, so it happens twice; \
         add the offset to choose: {}{} (the first, before the change) or {}{} (the second, after it)",
        fmt_datetime(*.start), fmt_time(*.back_from), fmt_time(*.back_to),
        fmt_datetime(*.start), fmt_offset(*.first), fmt_datetime(*.start), fmt_offset(*.second)
    )]
    AmbiguousLocalTime { start: DateTime, zone: String, back_from: Time, back_to: Time, first: Offset, second: Offset },
    /// The window would start before now.
    #[error("window start {} is in the past (it is now {})", fmt_in_zone(*.start, .zone), fmt_in_zone(*.now, .zone))]
    StartInPast { start: Timestamp, now: Timestamp, zone: String },
    /// A window of length zero.
    #[error("a window must last longer than zero: give a duration such as 90m or 2h")]
    ZeroDuration,
    /// A window longer than the policy allows.
    #[error(
        "window length {} is over the limit of {} (limits.max_window in the policy)",
        format_duration(*.duration), format_duration(*.max)
    )]
    TooLong { duration: Duration, max: Duration },
    /// A date or time outside the range that can be computed.
    #[error("time out of range: {detail}")]
    OutOfRange { detail: String },
    /// The new window overlaps one already scheduled.
    #[error("window {} ({}) overlaps {} {} ({})", .window.id, fmt_span(.window), kind(.other), .other.id, fmt_span(.other))]
    Overlap { window: Box<Occurrence>, other: Box<Occurrence> },
    /// Two recurring windows of the policy overlap.
    #[error(
        "recurring windows overlap: {} ({}) and {} ({})",
        .first.id, fmt_span(.first), .second.id, fmt_span(.second)
    )]
    RecurringOverlap { first: Box<Occurrence>, second: Box<Occurrence> },
    /// The id (or recurring window name) is already used.
    #[error("a window with id {id:?} already exists")]
    DuplicateId { id: String },
    /// No such one-off window or recurring occurrence.
    #[error(
        "no window {id:?} is scheduled: expected the id of a one-off window (e.g. w-20261201-0200) or of an \
         occurrence of a recurring window (e.g. sunday@2026-12-06)"
    )]
    UnknownWindow { id: String },
    /// The window is over; there is nothing left to cancel.
    #[error("window {id} already ended at {}: nothing to cancel", fmt_in_zone(*.end, .zone))]
    AlreadyEnded { id: String, end: Timestamp, zone: String },
    /// The recurring occurrence was cancelled before.
    #[error("window {id} is already cancelled")]
    AlreadyCancelled { id: String },
}

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

/// A request to schedule a one-off window, as the operator gave it (`otpatchctl window schedule`).
#[derive(Debug, Clone)]
pub struct OneOffRequest {
    /// `2026-12-01T02:00` (local, in `timezone` or the default zone), or with an offset: `2026-12-01T02:00+01:00`,
    /// `2026-12-01T01:00Z`.
    pub start: String,
    /// Elapsed length.
    pub duration: Duration,
    /// IANA time zone; `None` for the daemon's default zone.
    pub timezone: Option<String>,
    pub auto_start: bool,
}

/// The one-off and recurring windows the daemon knows, and the recurring occurrences that were cancelled.
/// Persisted by the daemon (serde).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// One-off windows, sorted by start.
    pub one_off: Vec<OneOffWindow>,
    /// Recurring windows from the policy.
    pub recurring: Vec<RecurringWindow>,
    /// Cancelled recurring occurrence ids (`<name>@<local date>`).
    pub skipped: BTreeSet<String>,
}

impl RecurringWindow {
    /// Occurrences whose `[start, end)` intersects `[from, until)`, sorted by start.
    ///
    /// An occurrence that opened before `from` but is still open at `from` is included. Errors: unknown time zone,
    /// zero duration, dates out of range.
    pub fn occurrences(&self, from: Timestamp, until: Timestamp) -> Result<Vec<Occurrence>, ScheduleError> {
        let tz = time_zone(&self.timezone)?;
        if self.duration.is_zero() {
            return Err(ScheduleError::ZeroDuration);
        }
        if until <= from || self.days.is_empty() {
            return Ok(Vec::new());
        }
        // The first local date whose occurrence could still be open at `from`. Two days of margin cover the
        // difference between local dates and a start shifted forward by a gap.
        let earliest = from.checked_sub(self.duration).unwrap_or(Timestamp::MIN);
        let mut date = tz.to_datetime(earliest).date();
        for _ in 0..2 {
            date = date.yesterday().unwrap_or(date);
        }
        let last = tz.to_datetime(until).date().tomorrow().unwrap_or(Date::MAX);
        let mut out = Vec::new();
        while date <= last {
            if self.days.contains(&date.weekday()) {
                let occ = self.occurrence_on(&tz, date)?;
                if occ.start < until && occ.end > from {
                    out.push(occ);
                }
            }
            match date.tomorrow() {
                Ok(d) => date = d,
                Err(_) => break,
            }
        }
        out.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
        Ok(out)
    }

    /// The occurrence on a local date (whatever the weekday): opens at `start` on that date, resolved with the
    /// "compatible" rule (a gap shifts forward, a fold takes the first), and lasts `duration`.
    fn occurrence_on(&self, tz: &TimeZone, date: Date) -> Result<Occurrence, ScheduleError> {
        let start = tz.to_ambiguous_timestamp(date.to_datetime(self.start)).compatible().map_err(out_of_range)?;
        let end = start.checked_add(self.duration).map_err(out_of_range)?;
        Ok(Occurrence {
            id: format!("{}@{}", self.name, date),
            start,
            end,
            timezone: self.timezone.clone(),
            source: WindowSource::Recurring(self.name.clone()),
            auto_start: self.auto_start,
        })
    }

    /// The occurrence with this id (`<name>@<YYYY-MM-DD>`), if the id names a listed weekday of this window.
    fn occurrence_by_id(&self, id: &str) -> Option<Occurrence> {
        let (name, date) = id.rsplit_once('@')?;
        if name != self.name {
            return None;
        }
        let date: Date = date.parse().ok()?;
        if !self.days.contains(&date.weekday()) {
            return None;
        }
        let tz = TimeZone::get(&self.timezone).ok()?;
        let occ = self.occurrence_on(&tz, date).ok()?;
        // Only the canonical spelling of the date names the occurrence.
        (occ.id == id).then_some(occ)
    }
}

impl OneOffWindow {
    /// Validates a request (not overlap: that is [`Schedule::add`]'s job).
    ///
    /// The zone is `req.timezone`, else `default_tz`. A start without an offset is local time in that zone and must
    /// exist exactly once that night (no gap, no fold); a start with an offset is taken as that instant. The start
    /// must not be before `now`, and the duration must be non-zero and at most `max_window`.
    pub fn from_request(
        req: &OneOffRequest,
        default_tz: &str,
        now: Timestamp,
        max_window: Duration,
        id: String,
        created_by: Option<u32>,
    ) -> Result<OneOffWindow, ScheduleError> {
        let zone = req.timezone.as_deref().unwrap_or(default_tz);
        let tz = time_zone(zone)?;
        let zone = tz.iana_name().unwrap_or(zone).to_string();
        if req.duration.is_zero() {
            return Err(ScheduleError::ZeroDuration);
        }
        if req.duration > max_window {
            return Err(ScheduleError::TooLong { duration: req.duration, max: max_window });
        }
        let start = match parse_start(&req.start)? {
            ParsedStart::Instant(ts) => ts,
            ParsedStart::Local(dt) => resolve_local(&tz, &zone, dt)?,
        };
        if start < now {
            return Err(ScheduleError::StartInPast { start, now, zone });
        }
        start.checked_add(req.duration).map_err(out_of_range)?;
        Ok(OneOffWindow { id, start, duration: req.duration, timezone: zone, auto_start: req.auto_start, created_by })
    }

    /// The hard end, `start + duration` (saturating at the largest timestamp).
    pub fn end(&self) -> Timestamp {
        self.start.checked_add(self.duration).unwrap_or(Timestamp::MAX)
    }

    /// This window as an [`Occurrence`].
    pub fn occurrence(&self) -> Occurrence {
        Occurrence {
            id: self.id.clone(),
            start: self.start,
            end: self.end(),
            timezone: self.timezone.clone(),
            source: WindowSource::OneOff,
            auto_start: self.auto_start,
        }
    }
}

impl Schedule {
    /// A schedule with these recurring windows and nothing else.
    pub fn new(recurring: Vec<RecurringWindow>) -> Self {
        Schedule { one_off: Vec::new(), recurring, skipped: BTreeSet::new() }
    }

    /// Adds a validated one-off window; refuses a duplicate id, a zero length, a start before `now` and overlaps
    /// (with one-off windows and with recurring occurrences that are not skipped; the error names the earliest).
    pub fn add(&mut self, w: OneOffWindow, now: Timestamp) -> Result<Occurrence, ScheduleError> {
        if self.one_off.iter().any(|o| o.id == w.id) {
            return Err(ScheduleError::DuplicateId { id: w.id });
        }
        if w.duration.is_zero() {
            return Err(ScheduleError::ZeroDuration);
        }
        if w.start < now {
            return Err(ScheduleError::StartInPast { start: w.start, now, zone: w.timezone });
        }
        let occ = w.occurrence();
        let mut conflicts: Vec<Occurrence> =
            self.one_off.iter().map(OneOffWindow::occurrence).filter(|o| overlaps(o, &occ)).collect();
        for r in &self.recurring {
            conflicts.extend(r.occurrences(occ.start, occ.end)?.into_iter().filter(|o| !self.skipped.contains(&o.id)));
        }
        if let Some(other) = conflicts.into_iter().min_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id))) {
            return Err(ScheduleError::Overlap { window: Box::new(occ), other: Box::new(other) });
        }
        self.one_off.push(w);
        self.one_off.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
        Ok(occ)
    }

    /// Cancels a one-off window by id, or one occurrence of a recurring window by occurrence id (it is then
    /// skipped). Refuses an unknown id, an occurrence that has already ended and one already cancelled. A window
    /// that is open now can be cancelled; stopping work in progress is the caller's business.
    pub fn cancel(&mut self, id: &str, now: Timestamp) -> Result<Occurrence, ScheduleError> {
        if let Some(pos) = self.one_off.iter().position(|o| o.id == id) {
            let occ = self.one_off[pos].occurrence();
            if occ.end <= now {
                return Err(ScheduleError::AlreadyEnded { id: occ.id, end: occ.end, zone: occ.timezone });
            }
            self.one_off.remove(pos);
            return Ok(occ);
        }
        let occ = self
            .recurring
            .iter()
            .find_map(|r| r.occurrence_by_id(id))
            .ok_or_else(|| ScheduleError::UnknownWindow { id: id.to_string() })?;
        if occ.end <= now {
            return Err(ScheduleError::AlreadyEnded { id: occ.id, end: occ.end, zone: occ.timezone });
        }
        if !self.skipped.insert(occ.id.clone()) {
            return Err(ScheduleError::AlreadyCancelled { id: occ.id });
        }
        Ok(occ)
    }

    /// Every occurrence (one-off and recurring, not skipped) with `end > now` and `start < now + horizon`, sorted
    /// by start; includes one open now. Recurring windows that cannot be computed (unknown zone, zero length: the
    /// policy refuses those) are left out. Overlapping occurrences (possible after a policy reload) are all returned.
    pub fn upcoming(&self, now: Timestamp, horizon: Duration) -> Vec<Occurrence> {
        let until = now.checked_add(horizon).unwrap_or(Timestamp::MAX);
        let mut out: Vec<Occurrence> =
            self.one_off.iter().map(OneOffWindow::occurrence).filter(|o| o.end > now && o.start < until).collect();
        out.extend(self.recurring_between(now, until));
        out.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
        out
    }

    /// The occurrence open at `now` (`start <= now < end`), if any; if several are (overlap after a policy reload),
    /// the one that opened first.
    pub fn current(&self, now: Timestamp) -> Option<Occurrence> {
        self.upcoming(now, Duration::from_nanos(1)).into_iter().next()
    }

    /// The open occurrence, else the next to open: every one-off window is considered, and recurring windows are
    /// searched in 8-day steps for more than a year ahead (cancelled occurrences are passed over).
    pub fn next(&self, now: Timestamp) -> Option<Occurrence> {
        if let Some(open) = self.current(now) {
            return Some(open);
        }
        let one_off = self
            .one_off
            .iter()
            .filter(|o| o.start > now)
            .min_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)))
            .map(OneOffWindow::occurrence);
        let mut lo = now;
        for _ in 0..NEXT_MAX_STEPS {
            let hi = lo.checked_add(NEXT_STEP).unwrap_or(Timestamp::MAX);
            if let Some(rec) =
                self.recurring_between(lo, hi).into_iter().filter(|o| o.start > now).min_by_key(|o| o.start)
            {
                return match one_off {
                    Some(o) if (o.start, &o.id) < (rec.start, &rec.id) => Some(o),
                    _ => Some(rec),
                };
            }
            if one_off.as_ref().is_some_and(|o| o.start < hi) || hi == Timestamp::MAX {
                break;
            }
            lo = hi;
        }
        one_off
    }

    /// Replaces the recurring windows (policy reload), keeping one-off windows and skips. A new recurring window
    /// may overlap a one-off window already scheduled: both stay (see [`Schedule::upcoming`]).
    pub fn set_recurring(&mut self, recurring: Vec<RecurringWindow>) {
        self.recurring = recurring;
    }

    /// Drops one-off windows that ended at or before `now`, and skip entries whose occurrence has ended (or, for a
    /// window no longer in the policy or a weekday it no longer lists, whose date is more than two days past).
    pub fn prune(&mut self, now: Timestamp) {
        self.one_off.retain(|o| o.end() > now);
        let today_utc = now.to_zoned(TimeZone::UTC).date();
        let recurring = &self.recurring;
        self.skipped.retain(|id| {
            if let Some(occ) = recurring.iter().find_map(|r| r.occurrence_by_id(id)) {
                return occ.end > now;
            }
            match id.rsplit_once('@').and_then(|(_, d)| d.parse::<Date>().ok()) {
                Some(date) => date.checked_add(jiff::Span::new().days(2)).is_ok_and(|d| d >= today_utc),
                None => false,
            }
        });
    }

    /// The policy's recurring windows must not overlap each other (nor one window's occurrences each other);
    /// checked over 400 days from `now`, which covers both daylight-saving changes. Also refuses two windows with
    /// the same name and any window that cannot be computed (unknown zone, zero length).
    pub fn check_recurring(recurring: &[RecurringWindow], now: Timestamp) -> Result<(), ScheduleError> {
        let mut names = BTreeSet::new();
        for r in recurring {
            if !names.insert(r.name.as_str()) {
                return Err(ScheduleError::DuplicateId { id: r.name.clone() });
            }
        }
        let until = now.checked_add(CHECK_HORIZON).unwrap_or(Timestamp::MAX);
        let mut all = Vec::new();
        for r in recurring {
            all.extend(r.occurrences(now, until)?);
        }
        all.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
        // Sweep: `open` is the occurrence that ends last among those seen so far.
        let mut open: Option<Occurrence> = None;
        for occ in all {
            match &open {
                Some(prev) if occ.start < prev.end => {
                    return Err(ScheduleError::RecurringOverlap {
                        first: Box::new(prev.clone()),
                        second: Box::new(occ),
                    });
                }
                Some(prev) if occ.end <= prev.end => {}
                _ => open = Some(occ),
            }
        }
        Ok(())
    }

    /// A fresh one-off id not used yet: `w-YYYYMMDD-HHMM` from the start in zone `tz` (UTC if `tz` is unknown),
    /// with `-2`, `-3`, ... appended if taken by a scheduled window or by one that `used` says already ran or was
    /// cancelled (ended windows leave the schedule, but their ids stay in the daemon's history).
    pub fn new_id(&self, start: Timestamp, tz: &str, used: &dyn Fn(&str) -> bool) -> String {
        let zone = TimeZone::get(tz).unwrap_or(TimeZone::UTC);
        let base = start.to_zoned(zone).strftime("w-%Y%m%d-%H%M").to_string();
        let taken = |id: &str| used(id) || self.one_off.iter().any(|o| o.id == id);
        if !taken(&base) {
            return base;
        }
        (2u64..).map(|n| format!("{base}-{n}")).find(|id| !taken(id)).unwrap_or(base)
    }

    /// Recurring occurrences (not skipped) that intersect `[from, until)`; windows that cannot be computed are
    /// left out.
    fn recurring_between(&self, from: Timestamp, until: Timestamp) -> Vec<Occurrence> {
        self.recurring
            .iter()
            .flat_map(|r| r.occurrences(from, until).unwrap_or_default())
            .filter(|o| !self.skipped.contains(&o.id))
            .collect()
    }
}
