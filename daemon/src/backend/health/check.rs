//! The per-probe bookkeeping that turns reads into a verdict: which checks a value fails, consecutive failures,
//! when a probe trips, and the reason a person reads (`boiler-temp: 95.2 above max 90 (3 consecutive)`).
//!
//! Pure logic: no I/O, time comes in as an argument, so it is tested without a PLC.

use std::time::Duration;

use otpatch_common::api::ProbeReport;
use otpatch_common::policy::{Check, Probe};
use otpatch_common::units::format_duration;
use tokio::time::Instant;

use super::decode::fmt_value;

/// One read as the checks see it: a value and how long the PLC took, or why there is no value.
pub(crate) type Reading = Result<(f64, Duration), String>;

/// What one read did to a probe.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Passed,
    /// The read or a check failed; the probe has not (newly) tripped.
    Failing(String),
    /// This read tripped the probe; the reason names the probe, the failure and the count.
    Tripped(String),
}

/// The state of one probe across a baseline and an observation.
#[derive(Debug, Default)]
pub(crate) struct ProbeState {
    /// The value read when the window armed.
    pub baseline: Option<f64>,
    pub last_value: Option<f64>,
    /// When the value last changed (heartbeat checks).
    last_change: Option<Instant>,
    /// The value the heartbeat compares with: the previous value read during this observation.
    heartbeat_value: Option<f64>,
    pub consecutive: u32,
    pub reads: u64,
    pub failures: u64,
    /// Why the probe tripped during this observation (it stays tripped until the next one).
    pub tripped: Option<String>,
    pub last_error: Option<String>,
    pub last_response: Option<Duration>,
}

impl ProbeState {
    /// Records the baseline read. Counters start over: the table shows the current window.
    pub fn set_baseline(&mut self, value: f64, elapsed: Duration) {
        *self = ProbeState {
            baseline: Some(value),
            last_value: Some(value),
            reads: 1,
            last_response: Some(elapsed),
            ..ProbeState::default()
        };
    }

    /// Starts an observation: trips and consecutive failures are forgotten, heartbeats start counting now.
    pub fn start_observation(&mut self, now: Instant) {
        self.consecutive = 0;
        self.tripped = None;
        self.last_error = None;
        self.last_change = Some(now);
        self.heartbeat_value = None;
    }

    /// Records one read and runs the probe's checks on it.
    pub fn record(&mut self, probe: &Probe, reading: Reading, now: Instant) -> Outcome {
        self.reads += 1;
        let failure = match reading {
            Err(why) => Some(why),
            Ok((value, elapsed)) => {
                self.last_value = Some(value);
                self.last_response = Some(elapsed);
                if self.baseline.is_none() {
                    // observe() without baseline(): the first value stands in, so that deviation checks still
                    // compare with something taken before most of the observation.
                    self.baseline = Some(value);
                }
                if self.heartbeat_value != Some(value) {
                    if self.heartbeat_value.is_some() || self.last_change.is_none() {
                        self.last_change = Some(now);
                    }
                    self.heartbeat_value = Some(value);
                }
                let failed: Vec<String> =
                    probe.checks.iter().filter_map(|check| self.failed_check(check, value, elapsed, now)).collect();
                if failed.is_empty() {
                    None
                } else {
                    Some(failed.join(", "))
                }
            }
        };
        match failure {
            None => {
                self.consecutive = 0;
                self.last_error = None;
                Outcome::Passed
            }
            Some(why) => {
                self.failures += 1;
                self.consecutive = self.consecutive.saturating_add(1);
                self.last_error = Some(why.clone());
                if self.tripped.is_none() && self.consecutive >= probe.trip_after {
                    let reason = format!("{}: {} ({} consecutive)", probe.name, why, self.consecutive);
                    self.tripped = Some(reason.clone());
                    Outcome::Tripped(reason)
                } else {
                    Outcome::Failing(why)
                }
            }
        }
    }

    /// Why `value` fails `check`, or `None` when it passes.
    fn failed_check(&self, check: &Check, value: f64, elapsed: Duration, now: Instant) -> Option<String> {
        let v = fmt_value(value);
        match check {
            Check::Range { min, max } => {
                if let Some(min) = min.filter(|min| value < *min) {
                    return Some(format!("{v} below min {}", fmt_value(min)));
                }
                if let Some(max) = max.filter(|max| value > *max) {
                    return Some(format!("{v} above max {}", fmt_value(max)));
                }
                None
            }
            Check::Equals { value: want } => {
                // Scaled and f32 values are not exact: 12.3 read as 123 × 0.1 is 12.300000000000001.
                let tolerance = 1e-6 * want.abs().max(1.0);
                ((value - want).abs() > tolerance).then(|| format!("{v} is not {}", fmt_value(*want)))
            }
            Check::Heartbeat { max_stale } => {
                let since = self.last_change?;
                let stale = now.saturating_duration_since(since);
                (stale > *max_stale).then(|| {
                    format!(
                        "heartbeat stopped: {v} unchanged for {} (max {})",
                        format_duration(stale),
                        format_duration(*max_stale)
                    )
                })
            }
            Check::Deviation { abs, percent } => {
                let base = self.baseline?;
                let delta = (value - base).abs();
                if let Some(abs) = abs.filter(|abs| delta > *abs) {
                    return Some(format!(
                        "{v} deviates {} from baseline {} (max {})",
                        fmt_value(delta),
                        fmt_value(base),
                        fmt_value(abs)
                    ));
                }
                if let Some(percent) = *percent {
                    // From a baseline of 0 every change is an infinite percentage: any change fails.
                    let pct = if base == 0.0 {
                        if delta == 0.0 {
                            0.0
                        } else {
                            f64::INFINITY
                        }
                    } else {
                        delta / base.abs() * 100.0
                    };
                    if pct > percent {
                        return Some(format!(
                            "{v} deviates {}% from baseline {} (max {}%)",
                            fmt_value(pct),
                            fmt_value(base),
                            fmt_value(percent)
                        ));
                    }
                }
                None
            }
            Check::ResponseTime { max } => (elapsed > *max)
                .then(|| format!("response took {} (max {})", fmt_response(elapsed), format_duration(*max))),
        }
    }

    pub fn report(&self, probe: &Probe, target: &str) -> ProbeReport {
        ProbeReport {
            name: probe.name.clone(),
            target: target.to_string(),
            critical: probe.critical,
            last_value: self.last_value.map(fmt_value).unwrap_or_default(),
            last_error: self.last_error.clone().unwrap_or_default(),
            consecutive_failures: self.consecutive,
            trip_after: probe.trip_after,
            reads: self.reads,
            failures: self.failures,
            tripped: self.tripped.is_some(),
            last_response_us: self.last_response.map(|d| d.as_micros().min(u128::from(u64::MAX)) as u64).unwrap_or(0),
        }
    }
}

/// A response time: milliseconds with one decimal below 10 s (`3.2ms`), else as a duration.
pub(crate) fn fmt_response(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1}ms", d.as_secs_f64() * 1000.0)
    } else {
        format_duration(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::testutil::probe;

    const MS: Duration = Duration::from_millis(1);

    fn ok(v: f64) -> Reading {
        Ok((v, MS))
    }

    #[test]
    fn range_trips_after_n_consecutive_with_reason() {
        let mut p = probe("boiler-temp");
        p.checks = vec![Check::Range { min: Some(50.0), max: Some(90.0) }];
        p.trip_after = 3;
        let mut s = ProbeState::default();
        let t = Instant::now();
        s.set_baseline(70.0, MS);
        s.start_observation(t);
        assert_eq!(s.record(&p, ok(f64::from(95.2f32)), t), Outcome::Failing("95.2 above max 90".into()));
        assert_eq!(s.record(&p, ok(95.2), t), Outcome::Failing("95.2 above max 90".into()));
        assert_eq!(
            s.record(&p, ok(95.2), t),
            Outcome::Tripped("boiler-temp: 95.2 above max 90 (3 consecutive)".into())
        );
        // Tripped once per observation; it stays tripped.
        assert_eq!(s.record(&p, ok(96.0), t), Outcome::Failing("96 above max 90".into()));
        assert_eq!(s.record(&p, ok(70.0), t), Outcome::Passed);
        assert!(s.tripped.is_some());
        assert_eq!(s.consecutive, 0);
        assert_eq!((s.reads, s.failures), (6, 4));
        assert_eq!(s.record(&p, ok(12.0), t), Outcome::Failing("12 below min 50".into()));
    }

    #[test]
    fn a_good_read_resets_the_count() {
        let mut p = probe("p");
        p.checks = vec![Check::Range { min: None, max: Some(10.0) }];
        p.trip_after = 2;
        let mut s = ProbeState::default();
        let t = Instant::now();
        s.start_observation(t);
        assert!(matches!(s.record(&p, ok(11.0), t), Outcome::Failing(_)));
        assert_eq!(s.record(&p, ok(9.0), t), Outcome::Passed);
        assert!(matches!(s.record(&p, ok(11.0), t), Outcome::Failing(_)));
        assert!(matches!(s.record(&p, ok(11.0), t), Outcome::Tripped(_)));
    }

    #[test]
    fn read_errors_count_as_failures() {
        let mut p = probe("flow");
        p.trip_after = 2;
        let mut s = ProbeState::default();
        let t = Instant::now();
        s.start_observation(t);
        let why = "Modbus exception 0x02 (illegal data address)".to_string();
        assert_eq!(s.record(&p, Err(why.clone()), t), Outcome::Failing(why.clone()));
        assert_eq!(s.record(&p, Err(why.clone()), t), Outcome::Tripped(format!("flow: {why} (2 consecutive)")));
        assert_eq!(s.last_error.as_deref(), Some(why.as_str()));
    }

    #[test]
    fn equals_tolerates_float_noise() {
        let mut p = probe("mode");
        p.checks = vec![Check::Equals { value: 12.3 }];
        p.trip_after = 1;
        let mut s = ProbeState::default();
        let t = Instant::now();
        s.start_observation(t);
        assert_eq!(s.record(&p, ok(123.0 * 0.1), t), Outcome::Passed);
        assert_eq!(s.record(&p, ok(12.4), t), Outcome::Tripped("mode: 12.4 is not 12.3 (1 consecutive)".into()));
    }

    #[test]
    fn heartbeat_must_change_in_time() {
        let mut p = probe("hb");
        p.checks = vec![Check::Heartbeat { max_stale: Duration::from_secs(2) }];
        p.trip_after = 2;
        let mut s = ProbeState::default();
        let t0 = Instant::now();
        s.set_baseline(5.0, MS);
        s.start_observation(t0);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(s.record(&p, ok(5.0), at(0)), Outcome::Passed);
        assert_eq!(s.record(&p, ok(6.0), at(1)), Outcome::Passed);
        assert_eq!(s.record(&p, ok(6.0), at(3)), Outcome::Passed);
        assert_eq!(
            s.record(&p, ok(6.0), at(4)),
            Outcome::Failing("heartbeat stopped: 6 unchanged for 3s (max 2s)".into())
        );
        assert_eq!(
            s.record(&p, ok(6.0), at(5)),
            Outcome::Tripped("hb: heartbeat stopped: 6 unchanged for 4s (max 2s) (2 consecutive)".into())
        );
        assert_eq!(s.record(&p, ok(7.0), at(6)), Outcome::Passed);
    }

    #[test]
    fn heartbeat_counts_from_the_start_of_the_observation() {
        let mut p = probe("hb");
        p.checks = vec![Check::Heartbeat { max_stale: Duration::from_secs(2) }];
        p.trip_after = 1;
        let mut s = ProbeState::default();
        let t0 = Instant::now();
        s.start_observation(t0);
        // Never changed since the observation started.
        assert_eq!(s.record(&p, ok(5.0), t0 + Duration::from_secs(1)), Outcome::Passed);
        assert!(matches!(s.record(&p, ok(5.0), t0 + Duration::from_secs(3)), Outcome::Tripped(_)));
    }

    #[test]
    fn deviation_from_the_baseline() {
        let mut p = probe("pressure");
        p.checks = vec![Check::Deviation { abs: Some(2.0), percent: None }];
        p.trip_after = 1;
        let mut s = ProbeState::default();
        let t = Instant::now();
        s.set_baseline(10.0, MS);
        s.start_observation(t);
        assert_eq!(s.record(&p, ok(11.5), t), Outcome::Passed);
        assert_eq!(
            s.record(&p, ok(12.5), t),
            Outcome::Tripped("pressure: 12.5 deviates 2.5 from baseline 10 (max 2) (1 consecutive)".into())
        );

        p.checks = vec![Check::Deviation { abs: None, percent: Some(10.0) }];
        let mut s = ProbeState::default();
        s.set_baseline(200.0, MS);
        s.start_observation(t);
        assert_eq!(s.record(&p, ok(181.0), t), Outcome::Passed);
        assert_eq!(
            s.record(&p, ok(170.0), t),
            Outcome::Tripped("pressure: 170 deviates 15% from baseline 200 (max 10%) (1 consecutive)".into())
        );

        let mut s = ProbeState::default();
        s.set_baseline(0.0, MS);
        s.start_observation(t);
        assert_eq!(s.record(&p, ok(0.0), t), Outcome::Passed);
        assert!(matches!(s.record(&p, ok(0.5), t), Outcome::Tripped(r) if r.contains("deviates inf% from baseline 0")));
    }

    #[test]
    fn response_time_limit() {
        let mut p = probe("slow");
        p.checks = vec![Check::ResponseTime { max: Duration::from_millis(100) }];
        p.trip_after = 1;
        let mut s = ProbeState::default();
        let t = Instant::now();
        s.start_observation(t);
        assert_eq!(s.record(&p, Ok((1.0, Duration::from_millis(99))), t), Outcome::Passed);
        assert_eq!(
            s.record(&p, Ok((1.0, Duration::from_micros(250_400))), t),
            Outcome::Tripped("slow: response took 250.4ms (max 100ms) (1 consecutive)".into())
        );
    }

    #[test]
    fn several_failed_checks_are_all_named() {
        let mut p = probe("p");
        p.checks = vec![Check::Range { min: None, max: Some(5.0) }, Check::Deviation { abs: Some(1.0), percent: None }];
        p.trip_after = 1;
        let mut s = ProbeState::default();
        let t = Instant::now();
        s.set_baseline(3.0, MS);
        s.start_observation(t);
        assert_eq!(
            s.record(&p, ok(6.0), t),
            Outcome::Tripped("p: 6 above max 5, 6 deviates 3 from baseline 3 (max 1) (1 consecutive)".into())
        );
    }

    #[test]
    fn report_shows_the_table_row() {
        let p = probe("p");
        let mut s = ProbeState::default();
        let t = Instant::now();
        s.set_baseline(3.25, Duration::from_micros(1500));
        s.start_observation(t);
        s.record(&p, Err("no response within 1s".into()), t);
        let r = s.report(&p, "tcp 127.0.0.1:502 unit 1 holding 0 (u16)");
        assert_eq!(r.last_value, "3.25");
        assert_eq!(r.last_error, "no response within 1s");
        assert_eq!((r.consecutive_failures, r.reads, r.failures, r.tripped), (1, 2, 1, false));
        assert_eq!(r.last_response_us, 1500);
    }
}
