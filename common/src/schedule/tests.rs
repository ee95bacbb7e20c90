//! Tests of the schedule: daylight-saving nights, one-off validation, add/cancel/prune and serde.

use std::time::Duration;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::units::parse_duration;

const ALL_DAYS: [Weekday; 7] = [
    Weekday::Monday,
    Weekday::Tuesday,
    Weekday::Wednesday,
    Weekday::Thursday,
    Weekday::Friday,
    Weekday::Saturday,
    Weekday::Sunday,
];

fn ts(s: &str) -> Timestamp {
    s.parse().expect("test timestamp")
}

fn dur(s: &str) -> Duration {
    parse_duration(s).expect("test duration")
}

fn date(s: &str) -> Date {
    s.parse().expect("test date")
}

fn window(name: &str, days: &[Weekday], start: &str, length: &str, zone: &str) -> RecurringWindow {
    RecurringWindow {
        name: name.to_string(),
        days: days.to_vec(),
        start: start.parse::<Time>().expect("test time"),
        duration: dur(length),
        timezone: zone.to_string(),
        auto_start: false,
    }
}

fn req(start: &str, length: &str, zone: Option<&str>) -> OneOffRequest {
    OneOffRequest {
        start: start.to_string(),
        duration: dur(length),
        timezone: zone.map(str::to_string),
        auto_start: true,
    }
}

const NOW: &str = "2026-01-01T00:00:00Z";

/// Validates a request with the default zone Europe/Berlin, now = [`NOW`], a limit of 8h and id "w".
fn one_off(start: &str, length: &str, zone: Option<&str>) -> Result<OneOffWindow, ScheduleError> {
    OneOffWindow::from_request(&req(start, length, zone), "Europe/Berlin", ts(NOW), dur("8h"), "w".to_string(), Some(0))
}

fn ok_one_off(id: &str, start: &str, length: &str, zone: Option<&str>) -> OneOffWindow {
    let mut w = one_off(start, length, zone).expect("valid one-off");
    w.id = id.to_string();
    w
}

/// The local start of day `d` in `zone`, as an instant.
fn day_start(d: Date, zone: &str) -> Timestamp {
    d.to_zoned(TimeZone::get(zone).expect("zone")).expect("start of day").timestamp()
}

fn ids(occs: &[Occurrence]) -> Vec<&str> {
    occs.iter().map(|o| o.id.as_str()).collect()
}

// --- Daylight-saving nights -------------------------------------------------------------------------------------

/// (zone, DST date, local start, expected UTC starts on the day before, the day, the day after)
const DST_CASES: &[(&str, &str, &str, [&str; 3])] = &[
    // Europe/Berlin, spring forward 2026-03-29 at 01:00Z: 02:00 CET -> 03:00 CEST.
    ("Europe/Berlin", "2026-03-29", "02:30", ["2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"]),
    ("Europe/Berlin", "2026-03-29", "01:30", ["2026-03-28T00:30:00Z", "2026-03-29T00:30:00Z", "2026-03-29T23:30:00Z"]),
    ("Europe/Berlin", "2026-03-29", "02:00", ["2026-03-28T01:00:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"]),
    // Europe/Berlin, fall back 2026-10-25 at 01:00Z: 03:00 CEST -> 02:00 CET; 02:xx happens twice, first is taken.
    ("Europe/Berlin", "2026-10-25", "02:30", ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]),
    ("Europe/Berlin", "2026-10-25", "01:30", ["2026-10-23T23:30:00Z", "2026-10-24T23:30:00Z", "2026-10-26T00:30:00Z"]),
    ("Europe/Berlin", "2026-10-25", "02:00", ["2026-10-24T00:00:00Z", "2026-10-25T00:00:00Z", "2026-10-26T01:00:00Z"]),
    // America/New_York, spring forward 2026-03-08 at 07:00Z: 02:00 EST -> 03:00 EDT.
    (
        "America/New_York",
        "2026-03-08",
        "02:30",
        ["2026-03-07T07:30:00Z", "2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z"],
    ),
    (
        "America/New_York",
        "2026-03-08",
        "01:30",
        ["2026-03-07T06:30:00Z", "2026-03-08T06:30:00Z", "2026-03-09T05:30:00Z"],
    ),
    (
        "America/New_York",
        "2026-03-08",
        "02:00",
        ["2026-03-07T07:00:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"],
    ),
    // America/New_York, fall back 2026-11-01 at 06:00Z: 02:00 EDT -> 01:00 EST; 01:xx happens twice, first is taken.
    (
        "America/New_York",
        "2026-11-01",
        "02:30",
        ["2026-10-31T06:30:00Z", "2026-11-01T07:30:00Z", "2026-11-02T07:30:00Z"],
    ),
    (
        "America/New_York",
        "2026-11-01",
        "01:30",
        ["2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
    ),
    (
        "America/New_York",
        "2026-11-01",
        "02:00",
        ["2026-10-31T06:00:00Z", "2026-11-01T07:00:00Z", "2026-11-02T07:00:00Z"],
    ),
];

#[test]
fn dst_nights_give_one_full_length_occurrence_per_local_date() {
    for (zone, day, start, expected) in DST_CASES {
        let d = date(day);
        let w = window("w", &ALL_DAYS, start, "90m", zone);
        let from = day_start(d.yesterday().expect("date"), zone);
        let until = day_start(d.tomorrow().expect("date").tomorrow().expect("date"), zone);
        let occs = w.occurrences(from, until).expect("occurrences");
        let want_ids: Vec<String> =
            [d.yesterday().expect("date"), d, d.tomorrow().expect("date")].iter().map(|d| format!("w@{d}")).collect();
        assert_eq!(ids(&occs), want_ids, "{zone} {day} {start}");
        for (occ, want) in occs.iter().zip(expected) {
            assert_eq!(occ.start, ts(want), "{zone} {day} {start}: {}", occ.id);
            assert_eq!(occ.end.duration_since(occ.start), jiff::SignedDuration::from_mins(90), "{}", occ.id);
            assert_eq!(occ.source, WindowSource::Recurring("w".to_string()));
            assert_eq!(occ.timezone, *zone);
        }
    }
}

#[test]
fn dst_fold_window_lasts_elapsed_time_on_the_wall_clock() {
    // 02:30 CEST + 90 min = 03:00 CET on the wall clock: the window is not cut to the local 04:00.
    let w = window("w", &[Weekday::Sunday], "02:30", "90m", "Europe/Berlin");
    let occs = w.occurrences(ts("2026-10-24T12:00:00Z"), ts("2026-10-25T12:00:00Z")).expect("occurrences");
    assert_eq!(occs.len(), 1);
    assert_eq!(occs[0].end, ts("2026-10-25T02:00:00Z"));
    let berlin = TimeZone::get("Europe/Berlin").expect("zone");
    assert_eq!(berlin.to_datetime(occs[0].end).time(), "03:00".parse::<Time>().expect("time"));
}

// --- Ordinary recurring windows ---------------------------------------------------------------------------------

#[test]
fn window_crossing_midnight_is_included_while_open() {
    // Friday 2026-12-04 23:00 CET = 22:00Z, for 3h: ends Saturday 02:00 CET = 01:00Z.
    let w = window("night", &[Weekday::Friday], "23:00", "3h", "Europe/Berlin");
    let occs = w.occurrences(ts("2026-12-05T00:00:00Z"), ts("2026-12-05T00:30:00Z")).expect("occurrences");
    assert_eq!(ids(&occs), ["night@2026-12-04"]);
    assert_eq!(occs[0].start, ts("2026-12-04T22:00:00Z"));
    assert_eq!(occs[0].end, ts("2026-12-05T01:00:00Z"));
    // Half-open: from the end instant on, it is no longer included; up to its start instant, not yet.
    assert!(w.occurrences(ts("2026-12-05T01:00:00Z"), ts("2026-12-05T05:00:00Z")).expect("occ").is_empty());
    assert!(w.occurrences(ts("2026-12-04T12:00:00Z"), ts("2026-12-04T22:00:00Z")).expect("occ").is_empty());
    let just = w.occurrences(ts("2026-12-04T12:00:00Z"), ts("2026-12-04T22:00:00.000000001Z")).expect("occ");
    assert_eq!(ids(&just), ["night@2026-12-04"]);
}

#[test]
fn window_longer_than_a_day_started_well_before_from_is_included() {
    // Sunday 2026-12-06 00:00 UTC for 80h: still open on Wednesday morning.
    let w = window("long", &[Weekday::Sunday], "00:00", "80h", "UTC");
    let occs = w.occurrences(ts("2026-12-09T07:00:00Z"), ts("2026-12-09T07:30:00Z")).expect("occurrences");
    assert_eq!(ids(&occs), ["long@2026-12-06"]);
    assert_eq!(occs[0].end, ts("2026-12-09T08:00:00Z"));
}

#[test]
fn several_days_over_two_weeks() {
    let w = window("mwf", &[Weekday::Monday, Weekday::Wednesday, Weekday::Friday], "04:00", "1h", "Asia/Kolkata");
    // 2026-12-07 is a Monday. Kolkata is +05:30: 04:00 local = 22:30Z the day before.
    let occs = w.occurrences(ts("2026-12-06T18:30:00Z"), ts("2026-12-20T18:30:00Z")).expect("occurrences");
    assert_eq!(
        ids(&occs),
        ["mwf@2026-12-07", "mwf@2026-12-09", "mwf@2026-12-11", "mwf@2026-12-14", "mwf@2026-12-16", "mwf@2026-12-18"]
    );
    assert_eq!(occs[0].start, ts("2026-12-06T22:30:00Z"));
    assert_eq!(occs[5].start, ts("2026-12-17T22:30:00Z"));
    assert!(occs.windows(2).all(|p| p[0].start < p[1].start));
}

#[test]
fn occurrences_refuse_unknown_zone_and_zero_length() {
    let w = window("w", &ALL_DAYS, "02:00", "1h", "Europe/Berln");
    assert_eq!(
        w.occurrences(ts(NOW), ts("2026-01-10T00:00:00Z")),
        Err(ScheduleError::UnknownTimeZone { zone: "Europe/Berln".to_string() })
    );
    let mut w = window("w", &ALL_DAYS, "02:00", "1h", "UTC");
    w.duration = Duration::ZERO;
    assert_eq!(w.occurrences(ts(NOW), ts("2026-01-10T00:00:00Z")), Err(ScheduleError::ZeroDuration));
    // An empty or reversed range has nothing.
    let w = window("w", &ALL_DAYS, "02:00", "1h", "UTC");
    assert!(w.occurrences(ts("2026-01-10T00:00:00Z"), ts(NOW)).expect("occ").is_empty());
}

// --- One-off validation -----------------------------------------------------------------------------------------

#[test]
fn one_off_local_start_in_gap_is_refused() {
    let err = one_off("2026-03-29T02:30", "1h", None).expect_err("gap");
    assert_eq!(
        err,
        ScheduleError::NonexistentLocalTime {
            start: "2026-03-29T02:30".parse().expect("dt"),
            zone: "Europe/Berlin".to_string(),
            jump_from: "02:00".parse().expect("t"),
            jump_to: "03:00".parse().expect("t"),
        }
    );
    assert_eq!(
        err.to_string(),
        "window start 2026-03-29T02:30 does not exist in Europe/Berlin: clocks jump from 02:00 to 03:00 that night"
    );
    let err = one_off("2026-03-08T02:00", "1h", Some("America/New_York")).expect_err("gap");
    assert_eq!(
        err.to_string(),
        "window start 2026-03-08T02:00 does not exist in America/New_York: clocks jump from 02:00 to 03:00 that night"
    );
    // The same local time is fine the day before, and the first instant after the gap is fine.
    assert_eq!(one_off("2026-03-28T02:30", "1h", None).expect("ok").start, ts("2026-03-28T01:30:00Z"));
    assert_eq!(one_off("2026-03-29T03:00", "1h", None).expect("ok").start, ts("2026-03-29T01:00:00Z"));
}

#[test]
fn one_off_local_start_in_fold_needs_an_offset() {
    let err = one_off("2026-10-25T02:30", "1h", None).expect_err("fold");
    let ScheduleError::AmbiguousLocalTime { first, second, back_from, back_to, .. } = &err else {
        panic!("expected AmbiguousLocalTime, got {err:?}");
    };
    assert_eq!((first.seconds(), second.seconds()), (7200, 3600));
    assert_eq!((back_from.to_string(), back_to.to_string()), ("03:00:00".to_string(), "02:00:00".to_string()));
    let msg = err.to_string();
    assert!(msg.contains("is ambiguous in Europe/Berlin"), "{msg}");
    assert!(msg.contains("clocks go back from 03:00 to 02:00"), "{msg}");
    assert!(msg.contains("2026-10-25T02:30+02:00") && msg.contains("2026-10-25T02:30+01:00"), "{msg}");

    let first = one_off("2026-10-25T02:30+02:00", "1h", None).expect("first");
    assert_eq!(first.start, ts("2026-10-25T00:30:00Z"));
    assert_eq!(first.end(), ts("2026-10-25T01:30:00Z"));
    assert_eq!(first.timezone, "Europe/Berlin");
    let second = one_off("2026-10-25T02:30+01:00", "1h", None).expect("second");
    assert_eq!(second.start, ts("2026-10-25T01:30:00Z"));

    let err = one_off("2026-11-01T01:30", "1h", Some("America/New_York")).expect_err("fold");
    assert!(err.to_string().contains("2026-11-01T01:30-04:00"), "{err}");
    assert!(err.to_string().contains("2026-11-01T01:30-05:00"), "{err}");
    let ny = one_off("2026-11-01T01:30-05:00", "1h", Some("America/New_York")).expect("second");
    assert_eq!(ny.start, ts("2026-11-01T06:30:00Z"));
    assert_eq!(ny.timezone, "America/New_York");
}

#[test]
fn one_off_start_forms() {
    assert_eq!(one_off("2026-12-01T02:00", "1h", None).expect("local").start, ts("2026-12-01T01:00:00Z"));
    assert_eq!(one_off(" 2026-12-01 02:00 ", "1h", None).expect("space").start, ts("2026-12-01T01:00:00Z"));
    assert_eq!(one_off("2026-12-01T02:00:30", "1h", None).expect("secs").start, ts("2026-12-01T01:00:30Z"));
    assert_eq!(one_off("2026-12-01T02:00Z", "1h", None).expect("Z").start, ts("2026-12-01T02:00:00Z"));
    assert_eq!(one_off("2026-12-01T02:00-05:00", "1h", None).expect("offset").start, ts("2026-12-01T07:00:00Z"));
    // The zone is canonicalised for display.
    assert_eq!(one_off("2026-12-01T02:00", "1h", Some("america/new_york")).expect("ok").timezone, "America/New_York");
    for bad in ["", "next tuesday", "2026-12-01", "2026-13-01T02:00", "2026-12-01T25:00", "2026-12-01T02:00+99:00"] {
        let err = one_off(bad, "1h", None).expect_err(bad);
        assert!(matches!(err, ScheduleError::BadStart { .. }), "{bad:?}: {err:?}");
        assert!(err.to_string().contains("expected a local date and time like 2026-12-01T02:00"), "{err}");
    }
    let err = one_off("2026-12-01T02:00[Europe/Berlin]", "1h", None).expect_err("annotation");
    assert!(matches!(err, ScheduleError::BadStart { .. }), "{err:?}");
}

#[test]
fn one_off_refusals() {
    assert_eq!(
        one_off("2025-12-31T23:00", "1h", None),
        Err(ScheduleError::StartInPast {
            start: ts("2025-12-31T22:00:00Z"),
            now: ts(NOW),
            zone: "Europe/Berlin".to_string()
        })
    );
    assert_eq!(
        one_off("2025-12-31T23:00", "1h", None).expect_err("past").to_string(),
        "window start 2025-12-31T23:00+01:00 is in the past (it is now 2026-01-01T01:00+01:00)"
    );
    // Starting exactly now is allowed.
    assert_eq!(one_off("2026-01-01T01:00", "1h", None).expect("now").start, ts(NOW));
    assert_eq!(one_off("2026-12-01T02:00", "0s", None), Err(ScheduleError::ZeroDuration));
    assert_eq!(
        one_off("2026-12-01T02:00", "8h1s", None),
        Err(ScheduleError::TooLong { duration: dur("8h1s"), max: dur("8h") })
    );
    assert!(one_off("2026-12-01T02:00", "8h", None).is_ok());
    let err = one_off("2026-12-01T02:00", "1h", Some("Mars/Olympus")).expect_err("zone");
    assert_eq!(err, ScheduleError::UnknownTimeZone { zone: "Mars/Olympus".to_string() });
    assert!(err.to_string().contains("unknown time zone \"Mars/Olympus\""), "{err}");
    // An unknown default zone is refused too, even with an explicit offset.
    let err = OneOffWindow::from_request(
        &req("2026-12-01T02:00Z", "1h", None),
        "Nowhere",
        ts(NOW),
        dur("8h"),
        "w".to_string(),
        None,
    );
    assert_eq!(err, Err(ScheduleError::UnknownTimeZone { zone: "Nowhere".to_string() }));
}

// --- Schedule ---------------------------------------------------------------------------------------------------

fn sunday_policy() -> Vec<RecurringWindow> {
    vec![window("sunday", &[Weekday::Sunday], "02:00", "3h", "Europe/Berlin")]
}

#[test]
fn add_refuses_overlap_with_one_off_naming_it() {
    let mut s = Schedule::new(Vec::new());
    let first = ok_one_off("w-a", "2026-12-01T02:00", "2h", None);
    let occ = s.add(first.clone(), ts(NOW)).expect("add");
    assert_eq!(occ, first.occurrence());
    assert_eq!(occ.source, WindowSource::OneOff);
    assert!(occ.auto_start);

    let err = s.add(ok_one_off("w-b", "2026-12-01T03:59", "1h", None), ts(NOW)).expect_err("overlap");
    let ScheduleError::Overlap { window, other } = &err else { panic!("expected Overlap, got {err:?}") };
    assert_eq!(window.id, "w-b");
    assert_eq!(**other, first.occurrence());
    assert_eq!(
        err.to_string(),
        "window w-b (2026-12-01T03:59+01:00 to 2026-12-01T04:59+01:00 Europe/Berlin) overlaps one-off window w-a \
         (2026-12-01T02:00+01:00 to 2026-12-01T04:00+01:00 Europe/Berlin)"
    );
    // Touching is not overlapping.
    s.add(ok_one_off("w-c", "2026-12-01T04:00", "1h", None), ts(NOW)).expect("adjacent after");
    s.add(ok_one_off("w-d", "2026-12-01T01:00", "1h", None), ts(NOW)).expect("adjacent before");
    assert_eq!(s.one_off.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["w-d", "w-a", "w-c"]);
    // The same id twice is refused.
    let err = s.add(ok_one_off("w-a", "2026-12-02T02:00", "1h", None), ts(NOW)).expect_err("dup");
    assert_eq!(err, ScheduleError::DuplicateId { id: "w-a".to_string() });
}

#[test]
fn add_refuses_overlap_with_recurring_naming_the_occurrence() {
    let mut s = Schedule::new(sunday_policy());
    // Sunday 2026-12-06 02:00-05:00 CET. A window from 04:30 (in UTC: 03:30Z) overlaps.
    let err = s.add(ok_one_off("w-x", "2026-12-06T03:30Z", "1h", None), ts(NOW)).expect_err("overlap");
    let ScheduleError::Overlap { other, .. } = &err else { panic!("expected Overlap, got {err:?}") };
    assert_eq!(other.id, "sunday@2026-12-06");
    assert_eq!((other.start, other.end), (ts("2026-12-06T01:00:00Z"), ts("2026-12-06T04:00:00Z")));
    assert!(err.to_string().contains("overlaps recurring window \"sunday\", occurrence sunday@2026-12-06"), "{err}");
    assert!(err.to_string().contains("2026-12-06T02:00+01:00 to 2026-12-06T05:00+01:00 Europe/Berlin"), "{err}");
    // After that occurrence is cancelled, the slot is free.
    s.cancel("sunday@2026-12-06", ts(NOW)).expect("cancel");
    s.add(ok_one_off("w-x", "2026-12-06T03:30Z", "1h", None), ts(NOW)).expect("free slot");
    // add() checks the start against now too.
    let late = ok_one_off("w-y", "2026-12-07T03:30Z", "1h", None);
    assert!(matches!(s.add(late, ts("2026-12-08T00:00:00Z")), Err(ScheduleError::StartInPast { .. })));
}

#[test]
fn cancel_one_off_and_recurring_occurrences() {
    let mut s = Schedule::new(sunday_policy());
    let w = ok_one_off("w-20261201-0200", "2026-12-01T02:00", "1h", None);
    s.add(w.clone(), ts(NOW)).expect("add");
    assert_eq!(s.cancel("w-20261201-0200", ts(NOW)), Ok(w.occurrence()));
    assert!(s.one_off.is_empty());
    assert_eq!(
        s.cancel("w-20261201-0200", ts(NOW)),
        Err(ScheduleError::UnknownWindow { id: "w-20261201-0200".to_string() })
    );

    let now = ts("2026-12-05T00:00:00Z");
    let occ = s.cancel("sunday@2026-12-06", now).expect("cancel occurrence");
    assert_eq!((occ.start, occ.end), (ts("2026-12-06T01:00:00Z"), ts("2026-12-06T04:00:00Z")));
    assert!(s.skipped.contains("sunday@2026-12-06"));
    assert_eq!(ids(&s.upcoming(now, dur("10d"))), ["sunday@2026-12-13"]);
    assert_eq!(s.next(now).map(|o| o.id), Some("sunday@2026-12-13".to_string()));
    assert_eq!(s.current(ts("2026-12-06T02:00:00Z")), None);
    assert_eq!(
        s.cancel("sunday@2026-12-06", now),
        Err(ScheduleError::AlreadyCancelled { id: "sunday@2026-12-06".to_string() })
    );
    // Unknown: a day the window does not open on, a non-canonical date, an unknown name, garbage.
    for id in ["sunday@2026-12-07", "sunday@20261213", "saturday@2026-12-12", "nonsense", ""] {
        assert_eq!(s.cancel(id, now), Err(ScheduleError::UnknownWindow { id: id.to_string() }), "{id}");
    }
    // An occurrence that is over cannot be cancelled; one open now can.
    let err = s.cancel("sunday@2026-11-29", now).expect_err("ended");
    assert!(matches!(&err, ScheduleError::AlreadyEnded { id, .. } if id == "sunday@2026-11-29"), "{err:?}");
    assert!(err.to_string().contains("already ended at 2026-11-29T05:00+01:00"), "{err}");
    s.cancel("sunday@2026-12-13", ts("2026-12-13T03:59:59Z")).expect("open one");
    let past = ok_one_off("w-p", "2026-02-03T02:00", "1h", None);
    s.add(past, ts(NOW)).expect("add");
    assert!(matches!(s.cancel("w-p", now), Err(ScheduleError::AlreadyEnded { .. })));
}

#[test]
fn upcoming_current_next() {
    let mut s = Schedule::new(sunday_policy());
    s.add(ok_one_off("w-tue", "2026-12-08T02:00", "1h", None), ts(NOW)).expect("add");
    let now = ts("2026-12-06T02:00:00Z"); // 03:00 CET on Sunday: the Sunday window is open.
    let up = s.upcoming(now, dur("6d"));
    assert_eq!(ids(&up), ["sunday@2026-12-06", "w-tue"]);
    // 7 days on, the next Sunday's window (01:00Z) starts before the horizon (02:00Z).
    assert_eq!(ids(&s.upcoming(now, dur("7d"))), ["sunday@2026-12-06", "w-tue", "sunday@2026-12-13"]);
    assert_eq!(s.current(now).map(|o| o.id), Some("sunday@2026-12-06".to_string()));
    assert_eq!(s.next(now).map(|o| o.id), Some("sunday@2026-12-06".to_string()));
    // Just after it closes, nothing is open and the one-off is next.
    let after = ts("2026-12-06T04:00:00Z");
    assert_eq!(s.current(after), None);
    assert_eq!(s.next(after).map(|o| o.id), Some("w-tue".to_string()));
    assert_eq!(ids(&s.upcoming(after, dur("7d"))), ["w-tue", "sunday@2026-12-13"]);
    // The horizon bounds by start (exclusive).
    assert_eq!(ids(&s.upcoming(after, dur("45h"))), Vec::<&str>::new());
    assert_eq!(ids(&s.upcoming(after, dur("45h") + Duration::from_nanos(1))), ["w-tue"]);
    // A one-off far away beyond a year is still found by next() when there are no recurring windows.
    let mut far = Schedule::new(Vec::new());
    far.add(ok_one_off("w-far", "2027-12-24T10:00", "1h", None), ts(NOW)).expect("add");
    assert_eq!(far.next(ts(NOW)).map(|o| o.id), Some("w-far".to_string()));
    assert_eq!(Schedule::default().next(ts(NOW)), None);
    // With every Sunday of the next three weeks cancelled, next() looks further.
    let mut s = Schedule::new(sunday_policy());
    for d in ["2026-12-06", "2026-12-13", "2026-12-20"] {
        s.cancel(&format!("sunday@{d}"), ts("2026-12-05T00:00:00Z")).expect("cancel");
    }
    assert_eq!(s.next(ts("2026-12-05T00:00:00Z")).map(|o| o.id), Some("sunday@2026-12-27".to_string()));
}

#[test]
fn policy_reload_overlapping_a_one_off_keeps_both() {
    let mut s = Schedule::new(Vec::new());
    s.add(ok_one_off("w-x", "2026-12-06T03:00", "1h", None), ts(NOW)).expect("add");
    s.skipped.insert("sunday@2026-12-13".to_string());
    s.set_recurring(sunday_policy());
    assert_eq!(s.recurring, sunday_policy());
    assert_eq!(s.one_off.len(), 1);
    assert!(s.skipped.contains("sunday@2026-12-13"));
    let up = s.upcoming(ts("2026-12-05T00:00:00Z"), dur("16d"));
    assert_eq!(ids(&up), ["sunday@2026-12-06", "w-x", "sunday@2026-12-20"]);
    assert_eq!(s.current(ts("2026-12-06T02:30:00Z")).map(|o| o.id), Some("sunday@2026-12-06".to_string()));
}

#[test]
fn prune_drops_ended_windows_and_skips() {
    let mut s = Schedule::new(sunday_policy());
    s.add(ok_one_off("w-1", "2026-12-01T02:00", "1h", None), ts(NOW)).expect("add");
    s.add(ok_one_off("w-2", "2026-12-10T02:00", "1h", None), ts(NOW)).expect("add");
    s.cancel("sunday@2026-12-06", ts(NOW)).expect("cancel");
    s.cancel("sunday@2026-12-13", ts(NOW)).expect("cancel");
    s.skipped.insert("gone@2026-12-01".to_string());
    s.skipped.insert("gone@2026-12-07".to_string());
    s.skipped.insert("garbage".to_string());
    // 2026-12-06 05:00 CET = 04:00Z is the end of the first skipped occurrence: it has ended then.
    s.prune(ts("2026-12-06T04:00:00Z"));
    assert_eq!(s.one_off.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["w-2"]);
    assert_eq!(s.skipped.iter().map(String::as_str).collect::<Vec<_>>(), ["gone@2026-12-07", "sunday@2026-12-13"]);
    s.prune(ts("2026-12-06T03:59:59Z"));
    assert_eq!(s.skipped.len(), 2);
}

#[test]
fn check_recurring_finds_overlaps_including_dst_nights() {
    let now = ts(NOW);
    let a = window("a", &[Weekday::Sunday], "01:00", "2h", "Europe/Berlin");
    let b = window("b", &[Weekday::Sunday], "03:00", "1h", "Europe/Berlin");
    // On an ordinary Sunday a ends at 03:00 when b starts; on 2026-03-29 a lasts until 04:00 CEST, after b's 03:00.
    let err = Schedule::check_recurring(&[a.clone(), b.clone()], now).expect_err("dst overlap");
    let ScheduleError::RecurringOverlap { first, second } = &err else { panic!("expected overlap, got {err:?}") };
    assert_eq!((first.id.as_str(), second.id.as_str()), ("a@2026-03-29", "b@2026-03-29"));
    assert!(err.to_string().starts_with("recurring windows overlap: a@2026-03-29"), "{err}");
    // Looking from after that night, the next overlap is a year later (within 400 days).
    let err = Schedule::check_recurring(&[a.clone(), b.clone()], ts("2026-04-01T00:00:00Z")).expect_err("next year");
    assert!(matches!(&err, ScheduleError::RecurringOverlap { first, .. } if first.id == "a@2027-03-28"), "{err:?}");
    // Different days do not overlap; a window longer than a week overlaps itself.
    let c = window("c", &[Weekday::Saturday], "01:00", "2h", "Europe/Berlin");
    Schedule::check_recurring(&[a.clone(), c], now).expect("no overlap");
    let d = window("d", &[Weekday::Monday, Weekday::Tuesday], "01:00", "25h", "UTC");
    let err = Schedule::check_recurring(&[d], now).expect_err("self overlap");
    assert!(
        matches!(&err, ScheduleError::RecurringOverlap { first, second } if first.id.starts_with("d@") && second.id.starts_with("d@"))
    );
    // A long window enclosing two others is reported against the enclosing one.
    let big = window("big", &[Weekday::Sunday], "00:00", "6h", "UTC");
    let x = window("x", &[Weekday::Sunday], "01:00", "1h", "UTC");
    let y = window("y", &[Weekday::Sunday], "03:00", "1h", "UTC");
    let err = Schedule::check_recurring(&[x, y, big], now).expect_err("enclosed");
    assert!(matches!(&err, ScheduleError::RecurringOverlap { first, .. } if first.id == "big@2026-01-04"), "{err:?}");
    assert_eq!(
        Schedule::check_recurring(&[a.clone(), a], now),
        Err(ScheduleError::DuplicateId { id: "a".to_string() })
    );
    Schedule::check_recurring(&[], now).expect("empty");
}

#[test]
fn new_id_is_local_and_unique() {
    let mut s = Schedule::new(Vec::new());
    let start = ts("2026-12-01T01:00:00Z");
    let none = |_: &str| false;
    assert_eq!(s.new_id(start, "Europe/Berlin", &none), "w-20261201-0200");
    assert_eq!(s.new_id(start, "America/New_York", &none), "w-20261130-2000");
    assert_eq!(s.new_id(start, "not a zone", &none), "w-20261201-0100");
    // An id a finished window had is not handed out again.
    let ran = |id: &str| id == "w-20261201-0200";
    assert_eq!(s.new_id(start, "Europe/Berlin", &ran), "w-20261201-0200-2");
    for expected in ["w-20261201-0200", "w-20261201-0200-2", "w-20261201-0200-3"] {
        let id = s.new_id(start, "Europe/Berlin", &none);
        assert_eq!(id, expected);
        let mut w = ok_one_off(&id, "2026-12-01T02:00", "1h", None);
        // Different days, so they do not overlap; only the id collides.
        w.start = ts(&format!("2026-12-0{}T01:00:00Z", 1 + s.one_off.len()));
        s.add(w, ts(NOW)).expect("add");
    }
}

#[test]
fn schedule_serde_round_trip() {
    let mut s = Schedule::new(vec![
        window("sunday", &[Weekday::Sunday], "02:00", "3h", "Europe/Berlin"),
        window("weekday", &[Weekday::Monday, Weekday::Friday], "23:30", "90m", "America/New_York"),
    ]);
    s.add(ok_one_off("w-a", "2026-12-01T02:00", "1h", None), ts(NOW)).expect("add");
    s.add(ok_one_off("w-b", "2026-12-02T02:00:00.5", "1h", Some("Asia/Kolkata")), ts(NOW)).expect("add");
    s.cancel("sunday@2026-12-06", ts(NOW)).expect("cancel");
    let json = serde_json::to_string(&s).expect("serialize");
    assert!(json.contains("\"days\":[\"mon\",\"fri\"]"), "{json}");
    let back: Schedule = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, s);
    let empty: Schedule = serde_json::from_str(r#"{"one_off":[],"recurring":[],"skipped":[]}"#).expect("empty");
    assert_eq!(empty, Schedule::default());
}

// --- Property: one occurrence per local date --------------------------------------------------------------------

const ZONES: [&str; 5] = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "UTC"];

/// A first local date in 2026-2028: either any day, or a few days before one of the zone's transitions that year.
fn first_date(zone: &str, year: i16, day_of_year: i16, near_transition: Option<(usize, i16)>) -> Date {
    let jan1 = Date::new(year, 1, 1).expect("jan 1");
    if let Some((which, before)) = near_transition {
        let tz = TimeZone::get(zone).expect("zone");
        let transitions: Vec<Timestamp> = tz
            .following(day_start(jan1, zone))
            .map(|t| t.timestamp())
            .take_while(|t| tz.to_datetime(*t).year() == year)
            .collect();
        if !transitions.is_empty() {
            let at = tz.to_datetime(transitions[which % transitions.len()]).date();
            return at.checked_sub(jiff::Span::new().days(before)).expect("date");
        }
    }
    jan1.checked_add(jiff::Span::new().days(day_of_year % 365)).expect("date")
}

fn start_time() -> impl Strategy<Value = Time> {
    let hour = prop_oneof![0i8..24, 0i8..4];
    let minute = prop_oneof![Just(0i8), Just(30i8), 0i8..60];
    (hour, minute).prop_map(|(h, m)| Time::new(h, m, 0, 0).expect("time"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Over ten local days (local midnight to local midnight), a window on every day that never reaches the next
    /// midnight has exactly one occurrence per local date, each lasting exactly its duration, in increasing order.
    #[test]
    fn one_occurrence_per_local_date(
        zone in prop::sample::select(ZONES.to_vec()),
        year in 2026i16..=2028,
        day_of_year in 0i16..365,
        near in prop::option::of((0usize..4, 0i16..10)),
        start in start_time(),
        minutes in 1u64..=(22 * 60),
    ) {
        let start_min = u64::try_from(start.hour()).unwrap_or(0) * 60 + u64::try_from(start.minute()).unwrap_or(0);
        // Keep start + duration (+ up to an hour of shift on a DST night) before the next local midnight.
        let minutes = minutes.min((22 * 60u64).saturating_sub(start_min)).max(1);
        let length = Duration::from_secs(minutes * 60);
        let w = RecurringWindow {
            name: "p".to_string(),
            days: ALL_DAYS.to_vec(),
            start,
            duration: length,
            timezone: zone.to_string(),
            auto_start: false,
        };
        let d0 = first_date(zone, year, day_of_year, near);
        let d10 = d0.checked_add(jiff::Span::new().days(10)).expect("date");
        let occs = w.occurrences(day_start(d0, zone), day_start(d10, zone)).expect("occurrences");
        let want: Vec<String> = (0..10)
            .map(|i| format!("p@{}", d0.checked_add(jiff::Span::new().days(i)).expect("date")))
            .collect();
        prop_assert_eq!(ids(&occs), want.iter().map(String::as_str).collect::<Vec<_>>());
        let tz = TimeZone::get(zone).expect("zone");
        for o in &occs {
            prop_assert_eq!(o.end.duration_since(o.start), jiff::SignedDuration::try_from(length).expect("len"));
            // The local start is the wall-clock start, unless that time does not exist (then it is later), and on
            // a fold it is the first of the two.
            let local_date: Date = o.id["p@".len()..].parse().expect("date");
            let local = tz.to_datetime(o.start);
            match tz.to_ambiguous_timestamp(local_date.to_datetime(start)).offset() {
                AmbiguousOffset::Unambiguous { .. } => prop_assert_eq!(local, local_date.to_datetime(start)),
                AmbiguousOffset::Gap { .. } => prop_assert!(local > local_date.to_datetime(start)),
                AmbiguousOffset::Fold { before, .. } => {
                    prop_assert_eq!(local, local_date.to_datetime(start));
                    prop_assert_eq!(tz.to_offset(o.start), before);
                }
            }
        }
        prop_assert!(occs.windows(2).all(|p| p[0].start < p[1].start && p[0].end <= p[1].start));
    }

    /// Any range gives the same occurrences as a wider range filtered to those that intersect it (so occurrences
    /// that opened before `from` are found, however long the window).
    #[test]
    fn range_queries_agree(
        zone in prop::sample::select(ZONES.to_vec()),
        from_secs in 1_767_225_600i64..1_861_920_000, // 2026-01-01 .. 2029-01-01
        span_hours in 1i64..(24 * 10),
        start in start_time(),
        minutes in prop_oneof![1u64..(24 * 60), 1u64..(100 * 60)],
        day_mask in 1u8..128,
    ) {
        let days: Vec<Weekday> = ALL_DAYS.iter().enumerate().filter(|(i, _)| day_mask & (1 << i) != 0).map(|(_, d)| *d).collect();
        let w = RecurringWindow {
            name: "r".to_string(),
            days,
            start,
            duration: Duration::from_secs(minutes * 60),
            timezone: zone.to_string(),
            auto_start: false,
        };
        let from = Timestamp::from_second(from_secs).expect("ts");
        let until = Timestamp::from_second(from_secs + span_hours * 3600).expect("ts");
        let wide = w
            .occurrences(Timestamp::from_second(from_secs - 6 * 86_400).expect("ts"), Timestamp::from_second(from_secs + 12 * 86_400).expect("ts"))
            .expect("wide");
        let want: Vec<Occurrence> = wide.into_iter().filter(|o| o.start < until && o.end > from).collect();
        prop_assert_eq!(w.occurrences(from, until).expect("narrow"), want);
    }
}
