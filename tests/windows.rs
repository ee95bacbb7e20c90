//! Whole windows through otpatchd and otpatchctl on a private bus, with the fake backends.

#![allow(clippy::unwrap_used)]

use otpatch_tests::*;

#[test]
fn a_window_runs_end_to_end_and_the_audit_chain_verifies() {
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(POLICY);
    let _d = Daemon::start(&bus, &gw, "delay=100ms", "");
    let start = start_in(2);
    let o = ctl(&bus, &["window", "schedule", "--start", &start, "--duration", "10m"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(id.starts_with("w-"), "{}", text(&o));
    let o = ctl(&bus, &["watch", "--exit-on-complete", "--max-wait", "60s"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for state in ["arming", "segmented", "verified", "checkpointed", "observing", "committed", "closed"] {
        assert!(out.contains(state), "watch shows {state}: {out}");
    }
    let w = gw.world();
    assert_eq!(w["committed"], serde_json::json!(["1.0.1"]));
    assert_eq!(w["segmentation_active"], false);
    let o = ctl(&bus, &["log", "--verify"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = ctl(&bus, &["--json", "status"], None);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["last_outcome"], "committed 1.0.1");
    assert_eq!(st["segmentation_active"], false);
    // What the segmentation dropped is kept for the operator and the audit log (the fake firewall says 42).
    assert_eq!(st["segmentation_dropped"], 42);
    assert!(gw.audit_text().contains(r#""kind":"segmentation-lifted""#));
    let o = ctl(&bus, &["--json", "window", "list"], None);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "done");
}

#[test]
fn a_health_failure_rolls_back_and_watch_says_so() {
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(POLICY);
    let _d = Daemon::start(&bus, &gw, "health=fail,health-fail-after=300ms", "");
    let start = start_in(2);
    let o = ctl(&bus, &["window", "schedule", "--start", &start, "--duration", "10m"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = ctl(&bus, &["watch", "--exit-on-complete", "--max-wait", "60s"], None);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("failed"), "{}", text(&o));
    // The probe table says which probe tripped, to everyone (a read).
    let o = ctl(&bus, &["health"], Some(NOBODY_UID));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("fake-critical") && out.contains("TRIPPED"), "{}", text(&o));
    // And the audit log kept the table with the verdict.
    assert!(gw.audit_text().contains(r#""kind":"verdict""#) && gw.audit_text().contains("fake-critical"));
    let w = gw.world();
    assert_eq!(w["applied"], serde_json::json!([]));
    assert_eq!(w["restored"].as_array().map(|a| a.len()), Some(1));
    assert_eq!(w["segmentation_active"], false);
    let o = ctl(&bus, &["log", "--verify"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_tampered_audit_log_is_detected() {
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(POLICY);
    let d = Daemon::start(&bus, &gw, "", "");
    let o = ctl(&bus, &["window", "schedule", "--start", &start_in(3600), "--duration", "10m"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(d.stop().success());
    let path = gw.path().join("var/lib/otpatch/audit.log");
    let edited = std::fs::read_to_string(&path).unwrap().replacen("\"actor_uid\":0", "\"actor_uid\":1000", 1);
    std::fs::write(&path, edited).unwrap();
    let _d = Daemon::start(&bus, &gw, "", "");
    let o = ctl(&bus, &["log", "--verify"], None);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
}
