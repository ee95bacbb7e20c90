//! The D-Bus contract against a real dbus-daemon: introspection matches the committed XML, authorization is
//! enforced by the bus policy and by the daemon itself, bad input gets clear errors, bad policies are refused.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use otpatch_tests::*;

/// The raw `<interface name="io.otpatch.Daemon1">` element.
fn interface_element(xml: &str) -> &str {
    let start = xml.find(r#"<interface name="io.otpatch.Daemon1">"#).expect("interface element present");
    let end = start + xml[start..].find("</interface>").expect("interface closed") + "</interface>".len();
    &xml[start..end]
}

/// The interface element without comments, one trimmed line per line: what the contract is.
fn interface_block(xml: &str) -> Vec<String> {
    let mut text = interface_element(xml).to_string();
    while let Some(a) = text.find("<!--") {
        let b = text[a..].find("-->").map(|i| a + i + 3).expect("comment closed");
        text.replace_range(a..b, "");
    }
    text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn live_introspection_matches_the_committed_interface_xml() {
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(POLICY);
    let _d = Daemon::start(&bus, &gw, "", "");
    let out = std::process::Command::new("dbus-send")
        .args([
            "--system",
            "--print-reply=literal",
            "--dest=io.otpatch.Daemon1",
            "/io/otpatch/Daemon1",
            "org.freedesktop.DBus.Introspectable.Introspect",
        ])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let live = String::from_utf8(out.stdout).unwrap();
    let committed_path = repo_root().join("daemon/dist/io.otpatch.Daemon1.xml");
    if std::env::var_os("OTPATCH_BLESS").is_some() {
        let block = interface_element(&live);
        let xml = format!(
            "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<!-- The D-Bus contract of otpatchd. Generated from the live daemon by the dbus_api test run with OTPATCH_BLESS=1; that test checks that they match. -->\n<node name=\"/io/otpatch/Daemon1\">\n  {block}\n</node>\n"
        );
        std::fs::write(&committed_path, xml).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap();
    assert_eq!(
        interface_block(&live),
        interface_block(&committed),
        "the live interface differs from daemon/dist/io.otpatch.Daemon1.xml (regenerate with OTPATCH_BLESS=1 if intended)"
    );
}

#[test]
fn unprivileged_callers_may_read_but_not_change_anything() {
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(POLICY);
    let _d = Daemon::start(&bus, &gw, "", "");
    let start = start_in(3600);
    let nobody = Some(NOBODY_UID);
    for args in [
        vec!["window", "schedule", "--start", &start, "--duration", "30m"],
        vec!["window", "cancel", "w-1"],
        vec!["apply"],
        vec!["rollback"],
        vec!["reload"],
        vec!["retry", "1.0.2"],
    ] {
        let o = ctl(&bus, &args, nobody);
        assert_eq!(o.status.code(), Some(4), "{args:?} as nobody must be refused: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("denied"), "{}", text(&o));
    }
    // Reads work for everyone.
    for args in
        [vec!["status"], vec!["window", "list"], vec!["log"], vec!["--json", "status"], vec!["livepatch", "list"]]
    {
        let o = ctl(&bus, &args, nobody);
        assert_eq!(o.status.code(), Some(0), "{args:?} as nobody must work: {}", text(&o));
    }
    // Nothing changed: no window, no operator record.
    let o = ctl(&bus, &["--json", "window", "list"], None);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().map(|a| a.len()), Some(0), "{}", text(&o));
    assert!(!gw.audit_text().contains("\"operator\""));
    // Root may.
    let o = ctl(&bus, &["window", "schedule", "--start", &start, "--duration", "30m"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn the_daemon_checks_the_caller_even_when_the_bus_lets_everything_through() {
    let bus = Bus::start(BusPolicy::Permissive);
    let gw = Gateway::new(POLICY);
    let _d = Daemon::start(&bus, &gw, "", "");
    let start = start_in(3600);
    let o = ctl(&bus, &["window", "schedule", "--start", &start, "--duration", "30m"], Some(NOBODY_UID));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("uid 65534"), "{}", text(&o));
    // A member of the policy's group (here through its primary group in the gateway's /etc/passwd) may.
    let o = ctl(&bus, &["window", "schedule", "--start", &start, "--duration", "30m"], Some(OPERATOR_UID));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let audit = gw.audit_text();
    assert!(audit.contains(&format!("\"actor_uid\":{OPERATOR_UID}")), "operator action audited with its uid");
    assert!(!audit.contains("\"actor_uid\":65534"));
    // Retry (a rolled-back version may be installed again) is checked the same way: nobody is refused by the
    // daemon itself, a member of the group gets through to it (here: 1.0.2 was never rolled back, exit 8).
    let o = ctl(&bus, &["retry", "1.0.2"], Some(NOBODY_UID));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("uid 65534 may not call Retry"), "{}", text(&o));
    let o = ctl(&bus, &["retry", "1.0.2"], Some(OPERATOR_UID));
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1.0.2 was not rolled back on this gateway"), "{}", text(&o));
}

#[test]
fn retry_lets_a_rolled_back_version_in_again_and_is_audited_with_the_uid() {
    // Permissive bus: the operator (group otpatch in the gateway's /etc/passwd, not on this host) is let
    // through by the daemon's own check.
    let bus = Bus::start(BusPolicy::Permissive);
    let gw = Gateway::new(POLICY);
    let record = r#"{"versions":[{"compatible":"otpatch-demo","version":"1.0.2","digest":"fake-digest-1.0.2","rolled_back_at":"2026-12-01T00:20:00Z","why":"health failed: boiler"}]}"#;
    std::fs::create_dir_all(gw.path().join("var/lib/otpatch")).unwrap();
    std::fs::write(gw.path().join("var/lib/otpatch/rolled-back.json"), record).unwrap();
    let _d = Daemon::start(&bus, &gw, "", "");
    let o = ctl(&bus, &["status"], Some(NOBODY_UID));
    assert!(String::from_utf8_lossy(&o.stdout).contains("otpatchctl retry 1.0.2"), "{}", text(&o));
    let o = ctl(&bus, &["retry", "1.0.2"], Some(OPERATOR_UID));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "1.0.2 may be installed again by the next window\n");
    assert_eq!(status(&bus)["rolled_back"], serde_json::json!([]));
    let audit = gw.audit_text();
    let line = audit.lines().find(|l| l.contains("\"action\":\"retry\"")).unwrap_or_else(|| panic!("{audit}"));
    assert!(line.contains(&format!("\"actor_uid\":{OPERATOR_UID}")), "{line}");
    let o = ctl(&bus, &["retry", "1.0.2"], None);
    assert_eq!(o.status.code(), Some(8), "retried already: {}", text(&o));
}

#[test]
fn bad_arguments_get_clear_errors_and_the_daemon_keeps_running() {
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(POLICY);
    let mut d = Daemon::start(&bus, &gw, "", "");
    let start = start_in(3600);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        // otpatchctl reads the duration itself: a usage error before anything is sent.
        (vec!["window", "schedule", "--start", &start, "--duration", "ninety"], 2, "ninety"),
        (vec!["window", "schedule", "--start", "2020-01-01T02:00Z", "--duration", "30m"], 5, "past"),
        (vec!["window", "schedule", "--start", "tomorrow", "--duration", "30m"], 5, "start"),
        (vec!["window", "schedule", "--start", &start, "--duration", "30m", "--tz", "Mars/Olympus"], 5, "Mars/Olympus"),
        (vec!["window", "schedule", "--start", &start, "--duration", "5h"], 5, "1h"),
        (vec!["window", "cancel", "w-nonexistent"], 8, "w-nonexistent"),
        (vec!["apply"], 5, "no window is open"),
        (vec!["rollback"], 5, "nothing to roll back"),
    ];
    for (args, code, needle) in cases {
        let o = ctl(&bus, &args, None);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(err.contains(needle), "{args:?}: message should mention {needle:?}: {}", text(&o));
    }
    // The daemon reads it too, for callers that are not otpatchctl.
    let call = |args: &[&str]| {
        std::process::Command::new("dbus-send")
            .args(["--system", "--print-reply", "--dest=io.otpatch.Daemon1", "/io/otpatch/Daemon1"])
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .output()
            .unwrap()
    };
    let o = call(&[
        "io.otpatch.Daemon1.ScheduleWindow",
        &format!("string:{start}"),
        "string:ninety",
        "string:",
        "boolean:true",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("org.freedesktop.DBus.Error.InvalidArgs") && err.contains("ninety"), "{}", text(&o));
    let o = call(&["io.otpatch.Daemon1.ListWindows", "uint32:0"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("InvalidArgs"), "{}", text(&o));
    let o = call(&["io.otpatch.Daemon1.ScheduleWindow", "string:x"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("InvalidArgs"), "wrong signature: {}", text(&o));
    assert!(d.alive());
    assert_eq!(ctl(&bus, &["status"], None).status.code(), Some(0));
}

#[test]
fn a_bad_policy_is_refused_on_reload_and_the_running_one_stays() {
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(POLICY);
    let mut d = Daemon::start(&bus, &gw, "", "");
    let policy_file = gw.path().join("etc/otpatch/policy.toml");
    std::fs::write(&policy_file, format!("{POLICY}\n[rollback.extra]\nintervall = 3\n")).unwrap();
    let o = ctl(&bus, &["reload"], None);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("policy.toml:") && err.contains("rollback.extra"), "error names file and key: {}", text(&o));
    // SIGHUP with the same bad policy: logged, daemon stays.
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "the SIGHUP rejection in the log", || d.log_text().contains("policy rejected"));
    assert!(d.alive());
    // The running policy (max_window 1h) is still in force.
    let start = start_in(3600);
    let o = ctl(&bus, &["window", "schedule", "--start", &start, "--duration", "2h"], None);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    // A good policy with a longer limit is taken.
    std::fs::write(&policy_file, POLICY.replace("max_window = \"1h\"", "max_window = \"3h\"")).unwrap();
    let o = ctl(&bus, &["reload"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = ctl(&bus, &["window", "schedule", "--start", &start, "--duration", "2h"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(gw.audit_text().contains("policy-rejected") && gw.audit_text().contains("policy-reloaded"));
}

#[test]
fn systemd_hears_ready_after_the_name_is_owned_then_status_and_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(POLICY);
    let sock_path = gw.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _d = Daemon::spawn_with_env(
        &bus,
        &gw,
        "",
        "",
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")],
    );
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    // Bounded: at most 200 datagrams, each within the read timeout.
    for _ in 0..200 {
        let n = sock.recv(&mut buf).expect("a notification within 20 s");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if msg.contains("READY=1") {
            // READY comes only once recovery is done and the name is owned: the daemon answers at once.
            let o = ctl(&bus, &["status"], None);
            assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        }
        seen.push(msg);
        if seen.iter().any(|m| m.contains("READY=1")) && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2 {
            break;
        }
    }
    assert!(seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    assert!(seen.iter().any(|m| m.starts_with("STATUS=")), "{seen:?}");
    assert!(seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2, "watchdog pings: {seen:?}");
}

#[test]
fn livepatch_list_shows_what_the_kernel_has() {
    let bus = Bus::start(BusPolicy::Shipped);
    let gw = Gateway::new(POLICY);
    let _d = Daemon::start(&bus, &gw, "", "");
    let o = ctl(&bus, &["livepatch", "list"], Some(NOBODY_UID));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no livepatch applied"), "{}", text(&o));
    // The gateway root's sysfs: one patch in transition (loaded by hand, not from a window).
    let p = gw.path().join("sys/kernel/livepatch/lp_by_hand");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("enabled"), "1\n").unwrap();
    std::fs::write(p.join("transition"), "1\n").unwrap();
    let o = ctl(&bus, &["--json", "livepatch", "list"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "lp_by_hand", "{}", text(&o));
    assert_eq!(v[0]["in_transition"], true);
    assert_eq!(v[0]["version"], "");
    let o = ctl(&bus, &["livepatch", "list"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("lp_by_hand  enabling"), "{}", text(&o));
}
