//! Kill otpatchd with SIGKILL right after it journals each state of a window, restart it, and check what it
//! makes of it: before anything is applied the window resumes and commits; from the apply on it rolls back;
//! a committed change is never applied twice; segmentation is always lifted in the end.

#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use otpatch_common::api::OutcomeKind;
use otpatch_tests::*;

fn crash_at(state: &str, script: &str) -> (Gateway, serde_json::Value) {
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(POLICY);
    let mut d = Daemon::start(&bus, &gw, script, &format!("journal:{state}=crash"));
    let o = ctl(&bus, &["window", "schedule", "--start", &start_in(2), "--duration", "10m"], None);
    // A crash right as the window is taken up may beat the reply out of the door; the window was saved first.
    let accepted =
        if state == "scheduled" { [Some(0), Some(3)].contains(&o.status.code()) } else { o.status.success() };
    assert!(accepted, "{}", text(&o));
    let st = d.wait_exit(Duration::from_secs(60));
    assert_eq!(st.signal(), Some(9), "otpatchd should have crashed at {state}: {}", d.log_text());
    drop(d);
    let _d = Daemon::start(&bus, &gw, script, "");
    let mut status = serde_json::Value::Null;
    wait_for(Duration::from_secs(60), &format!("the window to finish after a crash at {state}"), || {
        status = otpatch_tests::status(&bus);
        status["last_outcome"].as_str().is_some_and(|s| !s.is_empty())
    });
    let w = gw.world();
    assert_eq!(w["segmentation_active"], false, "segmentation lifted after a crash at {state}");
    let in_window = !matches!(state, "closed" | "scheduled");
    assert!(gw.audit_text().contains("\"recovery\"") || !in_window, "recovery audited");
    (gw, status)
}

fn resumes_and_commits(state: &str) {
    let (gw, status) = crash_at(state, "");
    assert_eq!(status["last_outcome"], "committed 1.0.1", "after a crash at {state}: {status}");
    let w = gw.world();
    assert_eq!(w["counts"]["livepatch.apply"], 1, "applied exactly once");
    assert_eq!(w["committed"], serde_json::json!(["1.0.1"]));
}

fn rolls_back(state: &str, script: &str) {
    let (gw, status) = crash_at(state, script);
    let outcome = status["last_outcome"].as_str().unwrap();
    assert_eq!(OutcomeKind::of(outcome), Some(OutcomeKind::RolledBack), "after a crash at {state}: {outcome}");
    let w = gw.world();
    assert_eq!(w["applied"], serde_json::json!([]), "the change is out after a crash at {state}");
    assert_eq!(w["committed"], serde_json::json!([]));
    assert_eq!(w["restored"].as_array().map(|a| a.len()), Some(1), "checkpoint restored after a crash at {state}");
}

#[test]
fn crash_at_scheduled() {
    resumes_and_commits("scheduled");
}
#[test]
fn crash_at_arming() {
    resumes_and_commits("arming");
}
#[test]
fn crash_at_armed() {
    resumes_and_commits("armed");
}
#[test]
fn crash_at_segmented() {
    resumes_and_commits("segmented");
}
#[test]
fn crash_at_fetched() {
    resumes_and_commits("fetched");
}
#[test]
fn crash_at_verified() {
    resumes_and_commits("verified");
}
#[test]
fn crash_at_checkpointed() {
    rolls_back("checkpointed", "");
}
#[test]
fn crash_at_applying() {
    rolls_back("applying", "");
}
#[test]
fn crash_at_observing() {
    rolls_back("observing", "");
}
#[test]
fn crash_at_rolling_back() {
    rolls_back("rolling-back", "health=fail,health-fail-after=200ms");
}
#[test]
fn crash_at_committed_never_applies_twice() {
    resumes_and_commits("committed");
}
#[test]
fn crash_at_closed() {
    let (gw, status) = crash_at("closed", "");
    assert_eq!(status["last_outcome"], "committed 1.0.1");
    assert_eq!(gw.world()["counts"]["livepatch.apply"], 1);
}
#[test]
fn crash_at_rolled_back() {
    rolls_back("rolled-back", "health=fail,health-fail-after=200ms");
}
#[test]
fn crash_at_failed_applies_nothing() {
    let (gw, status) = crash_at("failed", "fail=verify");
    let outcome = status["last_outcome"].as_str().unwrap();
    assert!(outcome.starts_with("failed: bundle rejected"), "{outcome}");
    assert_eq!(gw.world()["applied"], serde_json::json!([]));
    assert!(gw.world()["counts"].get("livepatch.apply").is_none());
}
#[test]
fn crash_at_up_to_date() {
    let (gw, status) = crash_at("up-to-date", "nothing-to-fetch=true");
    assert_eq!(status["last_outcome"], "up-to-date");
    assert!(gw.world()["counts"].get("livepatch.apply").is_none());
}
