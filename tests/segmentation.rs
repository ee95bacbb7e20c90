//! Segmentation never outlives its window, with the real nftables in a network namespace and otpatchd (fake
//! backends except the firewall) running inside it: SIGKILL mid-window and restart while the window is open
//! (reconciled, then lifted at the end), restart after the window is over (lifted), and the unit's stop path
//! (SIGTERM lifts it). Needs root, iproute2 and nft.

#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use otpatch_common::api::OutcomeKind;
use otpatch_tests::*;

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("otseg{}{tag}", std::process::id() % 100_000);
        let st = Command::new("ip").args(["netns", "add", &name]).status().unwrap();
        assert!(st.success());
        let st = Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).status().unwrap();
        assert!(st.success());
        Netns(name)
    }

    fn segmented(&self) -> bool {
        let out = Command::new("ip").args(["netns", "exec", &self.0, "nft", "list", "tables"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("table inet otpatch")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

const SLOW_POLICY: &str = r#"
[gateway]
id = "gw-seg"
compatible = "otpatch-demo"

[trust]
anchors = ["/etc/otpatch/trust/demo-ca.pem"]

[segmentation]
backend = "nftables"

[rollback]
observation = "15s"

[probe.boiler]
tcp = "127.0.0.1:5020"
address = 1
min = 10
max = 90
"#;

fn start(bus: &Bus, gw: &Gateway, ns: &Netns, failpoints: &str) -> Daemon {
    Daemon::spawn_full(bus, gw, "", failpoints, &[("OTPATCH_REAL_FIREWALL", "1")], Some(&ns.0)).on_bus(bus)
}

#[test]
fn sigkill_mid_window_then_restart_reconciles_and_the_end_lifts() {
    let ns = Netns::new("a");
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(SLOW_POLICY);
    let mut d = start(&bus, &gw, &ns, "journal:observing=crash");
    let o = ctl(&bus, &["window", "schedule", "--start", &start_in(2), "--duration", "10m"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let st = d.wait_exit(Duration::from_secs(60));
    assert_eq!(st.signal(), Some(9), "{}", d.log_text());
    assert!(ns.segmented(), "a crashed daemon leaves its segmentation behind");
    drop(d);
    let _d = start(&bus, &gw, &ns, "");
    wait_for(Duration::from_secs(60), "the window to finish", || {
        status(&bus)["last_outcome"].as_str().is_some_and(|s| OutcomeKind::of(s) == Some(OutcomeKind::RolledBack))
    });
    assert!(!ns.segmented(), "lifted once the recovered window ended");
}

#[test]
fn a_restart_after_the_window_is_over_lifts_it() {
    let ns = Netns::new("b");
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(SLOW_POLICY);
    let mut d = start(&bus, &gw, &ns, "journal:segmented=crash");
    let o = ctl(&bus, &["window", "schedule", "--start", &start_in(2), "--duration", "8s"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(d.wait_exit(Duration::from_secs(60)).signal(), Some(9), "{}", d.log_text());
    assert!(ns.segmented());
    drop(d);
    // Down until past the window's end.
    std::thread::sleep(Duration::from_secs(11));
    let _d = start(&bus, &gw, &ns, "");
    wait_for(Duration::from_secs(30), "the expired window to be closed", || {
        status(&bus)["last_outcome"].as_str().is_some_and(|s| s.starts_with("failed: window ended"))
    });
    assert!(!ns.segmented());
}

#[test]
fn stopping_the_daemon_mid_window_lifts_segmentation_and_a_restart_segments_again() {
    let ns = Netns::new("c");
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(SLOW_POLICY);
    let d = start(&bus, &gw, &ns, "");
    let o = ctl(&bus, &["window", "schedule", "--start", &start_in(2), "--duration", "10m"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    wait_for(Duration::from_secs(30), "segmentation", || ns.segmented());
    wait_for(Duration::from_secs(30), "the observation", || status(&bus)["state"] == "observing");
    let st = status(&bus);
    assert_eq!(st["segmentation_backend"], "nftables", "{st}");
    assert!(st["segmentation_ruleset"].as_str().unwrap().contains("127.0.0.1"), "{st}");
    assert!(d.stop().success());
    assert!(!ns.segmented(), "the stop path lifted segmentation");
    // The window is still open: recovery rolls back what was observed and lifts at the end.
    let _d = start(&bus, &gw, &ns, "");
    wait_for(Duration::from_secs(60), "the window to finish", || {
        status(&bus)["last_outcome"].as_str().is_some_and(|s| !s.is_empty())
    });
    assert!(!ns.segmented());
    assert!(gw.audit_text().contains(r#""kind":"shutdown""#));
}

impl Netns {
    fn sh(&self, args: &[&str]) {
        let st = Command::new("ip").args(["netns", "exec", &self.0]).args(args).status().unwrap();
        assert!(st.success(), "{args:?}");
    }

    /// What a crashed otpatchd of either backend leaves: the nftables table and the iptables chains.
    fn leave_both_backends_behind(&self) {
        self.sh(&[
            "nft",
            "add table inet otpatch; add chain inet otpatch input { type filter hook input priority -10; }",
        ]);
        for tool in ["iptables", "ip6tables"] {
            self.sh(&[tool, "-N", "OTPATCH-INPUT"]);
            self.sh(&[tool, "-A", "OTPATCH-INPUT", "-j", "DROP"]);
            self.sh(&[tool, "-I", "INPUT", "1", "-j", "OTPATCH-INPUT"]);
        }
    }

    fn iptables_segmented(&self) -> bool {
        ["iptables", "ip6tables"].iter().any(|tool| {
            let out = Command::new("ip").args(["netns", "exec", &self.0, tool, "-S"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).contains("OTPATCH")
        })
    }
}

#[test]
fn a_start_with_a_bad_policy_still_lifts_what_either_backend_left() {
    let ns = Netns::new("d");
    ns.leave_both_backends_behind();
    assert!(ns.segmented() && ns.iptables_segmented());
    let bus = Bus::start(BusPolicy::Shipped);
    // A policy edited into something invalid while the window ran.
    let gw = Gateway::new("[gateway]\nid = \"gw-seg\"\n[segmentation]\nbackend = \"ipchains\"\n");
    let mut d = Daemon::spawn_full(&bus, &gw, "", "", &[("OTPATCH_REAL_FIREWALL", "1")], Some(&ns.0));
    let st = d.wait_exit(Duration::from_secs(30));
    assert!(!st.success(), "the start fails: {}", d.log_text());
    assert!(d.log_text().contains("policy is invalid"), "{}", d.log_text());
    assert!(!ns.segmented(), "the nftables table is lifted: {}", d.log_text());
    assert!(!ns.iptables_segmented(), "the iptables chains are lifted: {}", d.log_text());
}

#[test]
fn a_normal_start_lifts_the_other_backends_leftovers_and_the_stop_path_lifts_both() {
    let ns = Netns::new("e");
    ns.leave_both_backends_behind();
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(SLOW_POLICY);
    let d = start(&bus, &gw, &ns, "");
    assert!(!ns.iptables_segmented(), "chains of the backend the policy does not use are stale: lifted");
    assert!(!ns.segmented(), "and so is the table of the one it uses");
    assert!(d.stop().success());
    // ExecStopPost= of the unit: whatever is left once the daemon is gone, for both backends, without a policy.
    ns.leave_both_backends_behind();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(bin("otpatchd"))
        .args(["--root", "/nonexistent", "--lift-segmentation"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!ns.segmented() && !ns.iptables_segmented());
}
