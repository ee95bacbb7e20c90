//! otpatchctl against a stand-in for otpatchd on a private dbus-daemon: the D-Bus wiring, the error-name to
//! exit-code mapping and `watch`, without the real daemon (whose process tests live in the workspace's `tests/`).
//! Skipped (with a note) when `dbus-daemon` is not installed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otpatch_common::api::{WindowInfo, BUS_NAME, OBJECT_PATH};
use otpatch_common::audit::{AuditRecord, GENESIS};
use zbus::object_server::SignalEmitter;

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "io.otpatch.Error")]
enum OtError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NotFound(String),
    InvalidState(String),
}

/// What the stand-in answers.
#[derive(Debug, Default)]
struct Fake {
    /// ScheduleWindow calls as `start|duration|timezone|auto_start`.
    calls: Arc<Mutex<Vec<String>>>,
    /// Records in the audit log.
    audit_len: u64,
    /// Edit this record (1-based) after hashing, to break the chain.
    tamper: Option<u64>,
    progress: (i32, String),
}

#[zbus::interface(name = "io.otpatch.Daemon1")]
impl Fake {
    async fn schedule_window(
        &self,
        start: &str,
        duration: &str,
        timezone: &str,
        auto_start: bool,
    ) -> zbus::fdo::Result<String> {
        self.calls.lock().expect("lock").push(format!("{start}|{duration}|{timezone}|{auto_start}"));
        if start == "yesterday" {
            return Err(zbus::fdo::Error::InvalidArgs(
                "start \"yesterday\" is not a time like 2026-12-01T02:00".into(),
            ));
        }
        Ok("w-20261201-0200".into())
    }

    async fn cancel_window(&self, id: &str) -> Result<(), OtError> {
        if id == "w-20261201-0200" {
            Ok(())
        } else {
            Err(OtError::NotFound(format!("no window {id}")))
        }
    }

    async fn list_windows(&self, horizon_days: u32) -> Vec<WindowInfo> {
        let start = 1_796_086_800 + i64::from(horizon_days);
        vec![WindowInfo {
            id: "w-20261201-0200".into(),
            source: "one-off".into(),
            timezone: "Europe/Berlin".into(),
            start,
            end: start + 5400,
            auto_start: true,
            status: "scheduled".into(),
        }]
    }

    /// Plays a window that rolls back: transition, progress, verdict, completion.
    async fn apply(&self, #[zbus(connection)] conn: &zbus::Connection) -> Result<String, OtError> {
        let conn = conn.clone();
        tokio::spawn(async move {
            let Ok(iface) = conn.object_server().interface::<_, Fake>(OBJECT_PATH).await else { return };
            let e = iface.signal_emitter();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = Fake::transition(e, "w-1", "open", "applying", "operator-apply").await;
            {
                let mut f = iface.get_mut().await;
                f.progress = (40, "installing livepatch".into());
                let _ = f.progress_changed(e).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = Fake::health_verdict(e, "w-1", "failed", "probe boiler-temp out of range").await;
            let _ = Fake::transition(e, "w-1", "observing", "rolling-back", "verdict-failed").await;
            let _ = Fake::window_completed(e, "w-1", "rolled-back: probe boiler-temp out of range").await;
        });
        Ok("w-1".into())
    }

    async fn rollback(&self) -> Result<(), OtError> {
        Err(OtError::InvalidState("no window is active".into()))
    }

    async fn retry(&self, version: &str) -> Result<(), OtError> {
        if version == "1.0.2" {
            Ok(())
        } else {
            Err(OtError::NotFound(format!("{version} was not rolled back on this gateway")))
        }
    }

    async fn reload(&self) -> zbus::fdo::Result<()> {
        Err(zbus::fdo::Error::AccessDenied("uid 1000 may not call Reload".into()))
    }

    async fn get_status(&self) -> String {
        serde_json::json!({
            "version": "0.1.0", "gateway_id": "gw-fake", "state": "idle", "active_window": "",
            "active_window_end": 0, "next_window": "w-20261201-0200", "next_window_start": 1_796_086_800,
            "last_error": "", "progress_percent": self.progress.0, "progress_message": self.progress.1,
            "last_outcome": "committed", "policy_sources": ["/etc/otpatch/policy.toml"],
            "segmentation_active": false,
        })
        .to_string()
    }

    async fn get_audit_log(&self, from_seq: u64, max: u32) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        let mut out = Vec::new();
        for seq in 1..=self.audit_len {
            let mut r = AuditRecord::new(
                seq,
                "2026-12-01T01:00:00Z".into(),
                "transition",
                Some("w-1".into()),
                Some(0),
                serde_json::json!({"n": seq}),
                &prev,
            );
            prev = r.hash.clone();
            if self.tamper == Some(seq) {
                r.kind = "operator".into();
            }
            if seq >= from_seq && out.len() < max as usize {
                out.push(serde_json::to_string(&r).expect("serializable"));
            }
        }
        out
    }

    #[zbus(property)]
    fn state(&self) -> String {
        "idle".into()
    }

    #[zbus(property)]
    fn progress(&self) -> (i32, String) {
        self.progress.clone()
    }

    #[zbus(signal)]
    async fn transition(e: &SignalEmitter<'_>, window: &str, from: &str, to: &str, event: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn health_verdict(e: &SignalEmitter<'_>, window: &str, verdict: &str, reason: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn window_completed(e: &SignalEmitter<'_>, window: &str, outcome: &str) -> zbus::Result<()>;
}

/// A private bus, killed on drop.
struct Bus {
    daemon: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn dbus_daemon() -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join("dbus-daemon")).find(|p| p.is_file())
}

fn bus() -> Option<Bus> {
    let Some(exe) = dbus_daemon() else {
        eprintln!("note: dbus-daemon not found; skipping");
        return None;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bus.conf");
    std::fs::write(
        &config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
            dir.path().display()
        ),
    )
    .expect("write bus config");
    let mut daemon = Command::new(exe)
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        // It complains when it cannot raise its fd limit; nothing the tests care about.
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon starts");
    let mut line = String::new();
    BufReader::new(daemon.stdout.take().expect("stdout")).read_line(&mut line).expect("bus address");
    Some(Bus { daemon, address: line.trim().to_string(), _dir: dir })
}

/// Serves `fake` on `bus` from a thread of its own, until the process ends.
fn serve(bus: &Bus, fake: Fake) {
    let address = bus.address.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let conn = zbus::connection::Builder::address(address.as_str())
                .name(BUS_NAME)
                .serve_at(OBJECT_PATH, fake)
                .build()
                .await
                .expect("fake daemon on the bus");
            ready_tx.send(()).expect("test waits");
            std::future::pending::<()>().await;
            drop(conn);
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("fake daemon ready");
}

fn ctl(bus: &Bus) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_otpatchctl"));
    c.env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).args(["--timeout", "10s"]);
    c
}

fn run(bus: &Bus, args: &[&str]) -> Output {
    ctl(bus).args(args).output().expect("otpatchctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn daemon_not_on_the_bus() {
    let Some(bus) = bus() else { return };
    let o = run(&bus, &["status"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("otpatchd is not running"), "{err}");
    assert!(err.contains(BUS_NAME) && err.contains("DBUS_SYSTEM_BUS_ADDRESS"), "{err}");
}

#[test]
fn commands_and_error_mapping() {
    let Some(bus) = bus() else { return };
    let calls = Arc::new(Mutex::new(Vec::new()));
    serve(&bus, Fake { calls: calls.clone(), ..Fake::default() });

    let o = run(&bus, &["window", "schedule", "--start", "2026-12-01T02:00", "--duration", "90m", "--manual"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "w-20261201-0200\n");
    let o = run(
        &bus,
        &["--json", "window", "schedule", "--start", "2026-12-01T02:00", "--duration", "1h 30m", "--tz", "UTC"],
    );
    assert_eq!(text(&o.stdout), "{\"id\":\"w-20261201-0200\"}\n");
    assert_eq!(
        *calls.lock().expect("lock"),
        vec!["2026-12-01T02:00|1h30m||false".to_string(), "2026-12-01T02:00|1h30m|UTC|true".to_string()]
    );

    let o = run(&bus, &["window", "schedule", "--start", "yesterday", "--duration", "1h"]);
    assert_eq!(o.status.code(), Some(5));
    assert!(text(&o.stderr).starts_with("otpatchctl: start \"yesterday\" is not a time"), "{}", text(&o.stderr));

    let o = run(&bus, &["window", "list", "--days", "7"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains("w-20261201-0200  one-off  2026-12-01 02:00 +01:00  2026-12-01 03:30 +01:00  1h30m"),
        "{table}"
    );
    let o = run(&bus, &["--json", "window", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v[0]["id"], "w-20261201-0200");
    assert_eq!(v[0]["start"], 1_796_086_800 + 14);

    let o = run(&bus, &["window", "cancel", "w-20261201-0200"]);
    assert_eq!((o.status.code(), text(&o.stdout)), (Some(0), "cancelled window w-20261201-0200\n".to_string()));
    let o = run(&bus, &["--json", "window", "cancel", "w-nope"]);
    assert_eq!(o.status.code(), Some(8));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v, serde_json::json!({"error": {"name": "io.otpatch.Error.NotFound", "message": "no window w-nope"}}));

    let o = run(&bus, &["rollback"]);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(text(&o.stderr), "otpatchctl: no window is active\n");

    let o = run(&bus, &["retry", "1.0.2"]);
    assert_eq!(
        (o.status.code(), text(&o.stdout)),
        (Some(0), "1.0.2 may be installed again by the next window\n".into())
    );
    let o = run(&bus, &["--json", "retry", "1.0.2"]);
    assert_eq!(text(&o.stdout), "{\"ok\":true,\"version\":\"1.0.2\"}\n");
    let o = run(&bus, &["retry", "9.9"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "otpatchctl: 9.9 was not rolled back on this gateway\n");

    let o = run(&bus, &["reload"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(text(&o.stderr).contains("must be root or in group otpatch"), "{}", text(&o.stderr));

    let o = run(&bus, &["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let page = text(&o.stdout);
    assert!(page.starts_with("otpatchd 0.1.0 on gateway gw-fake\n"), "{page}");
    assert!(page.contains("Last outcome:   committed\n"), "{page}");
    let o = run(&bus, &["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["gateway_id"], "gw-fake");
}

/// Characters a terminal acts on: C0 (but the line feed) and C1 controls, DEL, and the bidirectional overrides
/// that reorder what the operator reads.
fn terminal_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| (c.is_control() && *c != '\n') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .collect()
}

#[test]
fn text_from_the_daemon_is_escaped_before_it_reaches_the_terminal() {
    let Some(bus) = bus() else { return };
    // What a bundle name, a certificate subject or an error text relayed by the daemon could carry.
    let evil = "fetching \u{1b}[2J\u{1b}]0;owned\u{7}lp\u{9b}31m\u{202e}exe.ko";
    serve(&bus, Fake { progress: (40, evil.into()), ..Fake::default() });
    let o = run(&bus, &["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let page = text(&o.stdout);
    assert_eq!(terminal_controls(&page), Vec::<char>::new(), "{page:?}");
    assert!(page.contains(r"\x1b[2J") && page.contains("exe.ko"), "shown, escaped: {page}");
    let o = run(&bus, &["--json", "status"]);
    let out = text(&o.stdout);
    assert_eq!(terminal_controls(&out), Vec::<char>::new(), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
    assert_eq!(v["progress_message"], evil, "JSON readers get the text unchanged");
    // An error text of the daemon's, on stderr.
    let o = run(&bus, &["window", "cancel", "w-\u{1b}[2J\u{1b}[31m"]);
    assert_eq!(o.status.code(), Some(8));
    let err = text(&o.stderr);
    assert_eq!(terminal_controls(&err), Vec::<char>::new(), "{err:?}");
    assert!(err.contains(r"no window w-\x1b[2J"), "{err}");
}

#[test]
fn audit_log_pages_and_verifies() {
    let Some(bus) = bus() else { return };
    serve(&bus, Fake { audit_len: 1203, ..Fake::default() });
    let o = run(&bus, &["log"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(out.lines().count(), 1203);
    assert!(out.starts_with("1 2026-12-01T01:00:00Z transition w-1 0 {\"n\":1}\n"), "{}", &out[..200]);
    let o = run(&bus, &["--json", "log", "--from", "1200"]);
    let lines: Vec<String> = text(&o.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 4);
    let r: AuditRecord = serde_json::from_str(&lines[0]).expect("a record");
    assert_eq!(r.seq, 1200);

    let o = run(&bus, &["log", "--verify"]);
    assert_eq!((o.status.code(), text(&o.stdout)), (Some(0), "audit chain intact: 1203 records\n".to_string()));
    let o = run(&bus, &["log", "--verify", "--from", "1000"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text(&o.stdout), "audit chain intact: 204 records (from seq 1000)\n");
    assert!(text(&o.stderr).contains("prev hash"), "{}", text(&o.stderr));
}

#[test]
fn broken_audit_chain_exits_7() {
    let Some(bus) = bus() else { return };
    serve(&bus, Fake { audit_len: 600, tamper: Some(555), ..Fake::default() });
    let o = run(&bus, &["log", "--verify"]);
    assert_eq!(o.status.code(), Some(7));
    assert!(text(&o.stderr).contains("record 555: hash does not match"), "{}", text(&o.stderr));
    let o = run(&bus, &["--json", "log", "--verify"]);
    assert_eq!(o.status.code(), Some(7));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["intact"], false);
    assert_eq!(v["error"]["name"], "otpatchctl.AuditChainBroken");
}

/// Waits for a child, killing it after `limit`.
fn wait(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("otpatchctl did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `watch` with `args`, waits for its first line, runs `apply`, and returns (exit code, stdout lines).
fn watch_an_apply(bus: &Bus, args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut watch = ctl(bus).args(args).stdout(Stdio::piped()).spawn().expect("watch starts");
    let mut reader = BufReader::new(watch.stdout.take().expect("stdout"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("first line");
    let o = run(bus, &["apply"]);
    assert_eq!((o.status.code(), text(&o.stdout)), (Some(0), "w-1\n".to_string()));
    let code = wait(&mut watch, Duration::from_secs(20));
    let mut lines = vec![first.trim_end().to_string()];
    lines.extend(reader.lines().map(|l| l.expect("utf-8")));
    (code, lines)
}

#[test]
fn watch_follows_a_window_to_its_rollback() {
    let Some(bus) = bus() else { return };
    serve(&bus, Fake::default());

    let (code, lines) = watch_an_apply(&bus, &["--json", "watch", "--exit-on-complete", "--max-wait", "20s"]);
    assert_eq!(code, Some(9), "{lines:#?}");
    let events: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().expect("type")).collect();
    // In the order the daemon sent them, the progress change included.
    assert_eq!(kinds, ["status", "transition", "progress", "health", "transition", "completed"], "{lines:#?}");
    assert_eq!(events[0]["status"]["gateway_id"], "gw-fake");
    assert_eq!(
        (events[2]["percent"].as_i64(), events[2]["message"].as_str()),
        (Some(40), Some("installing livepatch"))
    );
    let done = events.last().expect("events");
    assert_eq!(done["outcome"], "rolled-back: probe boiler-temp out of range");
    assert!(events.iter().all(|e| e["time"].as_str().is_some_and(|t| t.ends_with('Z'))), "{lines:#?}");
}

#[test]
fn watch_for_people() {
    let Some(bus) = bus() else { return };
    serve(&bus, Fake::default());
    let (code, lines) = watch_an_apply(&bus, &["watch", "--exit-on-complete"]);
    assert_eq!(code, Some(9), "{lines:#?}");
    assert!(
        lines[0].contains("  state idle; no active window; next window w-20261201-0200 at 2026-12-0"),
        "{lines:#?}"
    );
    assert!(lines[0].ends_with("; last outcome: committed"), "{lines:#?}");
    let all = lines.join("\n");
    assert!(!lines[1].contains('%'), "no progress bar while no window is active: {all}");
    assert!(all.contains("  w-1: open -> applying (operator-apply)"), "{all}");
    assert!(all.contains("[########------------]  40% installing livepatch"), "{all}");
    assert!(all.contains("  w-1: health failed: probe boiler-temp out of range"), "{all}");
    assert!(all.ends_with("  w-1: window closed: rolled-back: probe boiler-temp out of range"), "{all}");
    assert!(!all.contains('\r'), "no carriage returns when stdout is not a terminal");
}

#[test]
fn watch_gives_up_after_max_wait() {
    let Some(bus) = bus() else { return };
    serve(&bus, Fake::default());
    let started = Instant::now();
    let o = run(&bus, &["--json", "watch", "--exit-on-complete", "--max-wait", "1s"]);
    assert_eq!(o.status.code(), Some(11), "{}", text(&o.stderr));
    assert!(started.elapsed() < Duration::from_secs(10));
    let last = text(&o.stdout).lines().last().map(String::from).expect("output");
    let v: serde_json::Value = serde_json::from_str(&last).expect("JSON");
    assert_eq!(v["error"]["name"], "otpatchctl.WaitTimeout");
}

/// The members of the `io.otpatch.Daemon1` interface in introspection XML, each as its normalized element
/// (`<method name="X">` .. `</method>`, `<signal ...>` .. `</signal>`, `<property .../>`), comments left out.
fn members(xml: &str) -> Vec<(String, String)> {
    let start = xml.find(r#"<interface name="io.otpatch.Daemon1">"#).expect("interface element present");
    let end = start + xml[start..].find("</interface>").expect("interface closed");
    let mut lines = Vec::new();
    let mut in_comment = false;
    for l in xml[start..end].lines().skip(1) {
        let l = l.trim();
        if in_comment || l.starts_with("<!--") {
            in_comment = !l.ends_with("-->");
            continue;
        }
        if !l.is_empty() {
            lines.push(l.to_string());
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let head = &lines[i];
        let name = head.split('"').nth(1).unwrap_or_default().to_string();
        let kind = head.trim_start_matches('<').split(' ').next().unwrap_or_default().to_string();
        let mut block = vec![head.clone()];
        if !head.ends_with("/>") {
            while i + 1 < lines.len() && block.last() != Some(&format!("</{kind}>")) {
                i += 1;
                block.push(lines[i].clone());
            }
        }
        out.push((format!("{kind} {name}"), block.join("\n")));
        i += 1;
    }
    out
}

/// The stand-in serves part of the interface: each member it has must be the committed one exactly (names,
/// argument names and types), so these tests cannot pass against a contract the real daemon does not have.
#[test]
fn the_stand_in_is_the_committed_interface_or_a_part_of_it() {
    let Some(bus) = bus() else { return };
    serve(&bus, Fake::default());
    let out = Command::new("dbus-send")
        .arg(format!("--bus={}", bus.address))
        .args(["--print-reply=literal", &format!("--dest={BUS_NAME}"), OBJECT_PATH])
        .arg("org.freedesktop.DBus.Introspectable.Introspect")
        .output()
        .expect("dbus-send runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fake = members(&text(&out.stdout));
    let xml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../daemon/dist/io.otpatch.Daemon1.xml"))
        .expect("the committed interface");
    let real = members(&xml);
    assert!(fake.len() >= 10, "the stand-in's members: {fake:?}");
    for (what, block) in &fake {
        let committed = real.iter().find(|(w, _)| w == what).map(|(_, b)| b);
        assert_eq!(committed, Some(block), "the stand-in's {what} is not the committed one");
    }
}
