//! Text for people: the status page, the window table, audit lines, progress bars. Pure functions of their
//! inputs (the clock and the local zone are passed in), so tests can pin the output.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use otpatch_common::api::{LivepatchInfo, ProbeReport, StatusSnapshot, WindowInfo};
use otpatch_common::audit::AuditRecord;

/// `2026-12-01 02:00 +01:00`: a Unix time local to `tz`.
pub fn local_time(secs: i64, tz: &TimeZone) -> String {
    match Timestamp::from_second(secs) {
        Ok(ts) => ts.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M %:z").to_string(),
        Err(_) => format!("@{secs}"),
    }
}

/// `2026-11-22 02:00:05`: a wall-clock stamp for event lines.
pub fn clock(now: Timestamp, tz: &TimeZone) -> String {
    now.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// The zone of a window: its own, or `fallback` when it names none (or one unknown here).
pub fn zone(name: &str, fallback: &TimeZone) -> TimeZone {
    if name.is_empty() {
        return fallback.clone();
    }
    TimeZone::get(name).unwrap_or_else(|_| fallback.clone())
}

/// A span of seconds in at most two units, for people: `42s`, `1h30m`, `2d3h`. Negative spans are shown as
/// their magnitude.
pub fn span(secs: i64) -> String {
    let mut s = secs.unsigned_abs();
    if s == 0 {
        return "0s".to_string();
    }
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400u64), ("h", 3_600), ("m", 60), ("s", 1)] {
        let n = s / size;
        s %= size;
        if n > 0 || !parts.is_empty() {
            parts.push((n, unit));
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.iter().filter(|(n, _)| *n > 0).map(|(n, u)| format!("{n}{u}")).collect()
}

/// `[##########----------]  50%`; an unknown percentage (negative) shows as `[~~~~…]   ?%`.
pub fn progress_bar(percent: i32) -> String {
    const WIDTH: usize = 20;
    if percent < 0 {
        return format!("[{}]   ?%", "~".repeat(WIDTH));
    }
    let p = percent.min(100) as usize;
    let full = p * WIDTH / 100;
    format!("[{}{}] {p:>3}%", "#".repeat(full), "-".repeat(WIDTH - full))
}

/// The progress as one line, or `None` when there is nothing to show.
pub fn progress_line(percent: i32, message: &str) -> Option<String> {
    if percent < 0 && message.is_empty() {
        return None;
    }
    let bar = progress_bar(percent);
    Some(if message.is_empty() { bar } else { format!("{bar} {message}") })
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "none"
    } else {
        s
    }
}

/// The `status` page.
pub fn status(s: &StatusSnapshot, now: Timestamp, tz: &TimeZone) -> String {
    let now = now.as_second();
    let mut rows: Vec<(&str, String)> = Vec::new();
    rows.push(("State", or_none(&s.state).to_string()));
    let active = if s.active_window.is_empty() {
        "none".to_string()
    } else if s.active_window_end == 0 {
        s.active_window.clone()
    } else {
        let left = s.active_window_end - now;
        let when = if left >= 0 { format!("{} left", span(left)) } else { format!("overran by {}", span(left)) };
        format!("{} (ends {}, {when})", s.active_window, local_time(s.active_window_end, tz))
    };
    rows.push(("Active window", active));
    let next = if s.next_window.is_empty() {
        "none".to_string()
    } else if s.next_window_start == 0 {
        s.next_window.clone()
    } else {
        let until = s.next_window_start - now;
        let when = if until > 0 { format!("in {}", span(until)) } else { "now".to_string() };
        format!("{} (starts {}, {when})", s.next_window, local_time(s.next_window_start, tz))
    };
    rows.push(("Next window", next));
    rows.push(("Progress", progress_line(s.progress_percent, &s.progress_message).unwrap_or_else(|| "-".into())));
    rows.push(("Last error", or_none(&s.last_error).to_string()));
    rows.push(("Last outcome", or_none(&s.last_outcome).to_string()));
    if !s.booted_slot.is_empty() {
        rows.push(("Booted slot", s.booted_slot.clone()));
    }
    let seg = if s.segmentation_active {
        let backend =
            if s.segmentation_backend.is_empty() { String::new() } else { format!(" ({})", s.segmentation_backend) };
        format!("active{backend}, {} packets dropped", s.segmentation_dropped)
    } else if s.segmentation_dropped > 0 {
        format!("off (last window dropped {} packets)", s.segmentation_dropped)
    } else {
        "off".to_string()
    };
    if !s.committed_not_in_place.is_empty() {
        // Said plainly: the gateway is less patched than what it committed.
        rows.push(("NOT CARRYING", s.committed_not_in_place.join("\n")));
    }
    if !s.rolled_back.is_empty() {
        // Not installed again by a window on its own; `otpatchctl retry VERSION` allows it.
        let lines: Vec<String> = s
            .rolled_back
            .iter()
            .map(|r| {
                format!(
                    "{} ({}) on {}: {}; `otpatchctl retry {}` to allow it",
                    r.version,
                    r.compatible,
                    local_time(r.rolled_back_at.as_second(), tz),
                    r.why,
                    r.version
                )
            })
            .collect();
        rows.push(("Rolled back", lines.join("\n")));
    }
    rows.push(("Segmentation", seg));
    if s.segmentation_active && !s.segmentation_ruleset.trim().is_empty() {
        // What the window lets through, as the firewall tool lists it (see README, "Segmentation").
        rows.push(("Ruleset", s.segmentation_ruleset.trim_end().to_string()));
    }
    let policy = if s.policy_sources.is_empty() { "none".to_string() } else { s.policy_sources.join("\n") };
    rows.push(("Policy files", policy));

    let mut out = String::new();
    let gateway = if s.gateway_id.is_empty() { String::new() } else { format!(" on gateway {}", s.gateway_id) };
    out.push_str(&format!("otpatchd {}{gateway}\n", or_none(&s.version)));
    let width = rows.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0) + 2;
    for (key, value) in rows {
        for (i, line) in value.lines().enumerate() {
            let label = if i == 0 { format!("{key}:") } else { String::new() };
            out.push_str(&format!("{label:<width$}{line}\n"));
        }
    }
    out
}

/// The `window list` table. Start and end are local to each window's zone (`fallback` when it names none).
pub fn window_table(windows: &[WindowInfo], fallback: &TimeZone) -> String {
    let header = ["ID", "SOURCE", "START", "END", "LENGTH", "AUTO", "STATUS"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for w in windows {
        let tz = zone(&w.timezone, fallback);
        rows.push(vec![
            w.id.clone(),
            w.source.clone(),
            local_time(w.start, &tz),
            local_time(w.end, &tz),
            span(w.end - w.start),
            if w.auto_start { "yes" } else { "no" }.to_string(),
            w.status.clone(),
        ]);
    }
    table(&rows)
}

/// The `health` table: one row per probe.
pub fn probe_table(probes: &[ProbeReport]) -> String {
    let header = ["PROBE", "TARGET", "KIND", "VALUE", "READS", "FAILS", "STATE", "RESPONSE", "LAST ERROR"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for p in probes {
        let state = if p.tripped {
            "TRIPPED".to_string()
        } else if p.consecutive_failures > 0 {
            format!("failing {}/{}", p.consecutive_failures, p.trip_after)
        } else if p.reads == 0 {
            "-".to_string()
        } else {
            "ok".to_string()
        };
        rows.push(vec![
            p.name.clone(),
            p.target.clone(),
            if p.critical { "critical" } else { "advisory" }.to_string(),
            or_dash(&p.last_value).to_string(),
            p.reads.to_string(),
            p.failures.to_string(),
            state,
            if p.last_response_us == 0 {
                "-".to_string()
            } else {
                format!("{:.1} ms", p.last_response_us as f64 / 1000.0)
            },
            or_dash(&p.last_error).to_string(),
        ]);
    }
    table(&rows)
}

pub(crate) fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// The `livepatch list` table.
pub fn livepatch_table(list: &[LivepatchInfo]) -> String {
    let header = ["PATCH", "STATE", "VERSION", "COMPATIBLE", "COMMITTED"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for p in list {
        let state = match (p.enabled, p.in_transition) {
            (true, true) => "enabling",
            (false, true) => "disabling",
            (true, false) => "enabled",
            (false, false) => "disabled",
        };
        rows.push(vec![
            or_dash(&p.name).to_string(),
            state.into(),
            or_dash(&p.version).to_string(),
            or_dash(&p.compatible).to_string(),
            or_dash(&p.committed_at).to_string(),
        ]);
    }
    table(&rows)
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One audit record: `seq time kind window uid detail`, `-` for what is not set.
pub fn audit_line(r: &AuditRecord) -> String {
    let window = r.window.as_deref().unwrap_or("-");
    let uid = r.actor_uid.map_or_else(|| "-".to_string(), |u| u.to_string());
    let detail = match &r.detail {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::Object(m) if m.is_empty() => "-".to_string(),
        d => d.to_string(),
    };
    format!("{} {} {} {window} {uid} {detail}", r.seq, r.time, r.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").expect("bundled tzdb")
    }

    /// 2026-12-01T01:00:00Z = 02:00 in Berlin.
    const DEC1_0200_BERLIN: i64 = 1_796_086_800;

    fn now() -> Timestamp {
        Timestamp::from_second(DEC1_0200_BERLIN + 48 * 60).expect("valid")
    }

    #[test]
    fn spans() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(42), "42s");
        assert_eq!(span(5400), "1h30m");
        assert_eq!(span(3600), "1h");
        assert_eq!(span(86_400 + 3 * 3600 + 59), "1d3h");
        assert_eq!(span(86_400 + 59), "1d");
        assert_eq!(span(-90), "1m30s");
    }

    #[test]
    fn bars() {
        assert_eq!(progress_bar(0), "[--------------------]   0%");
        assert_eq!(progress_bar(50), "[##########----------]  50%");
        assert_eq!(progress_bar(100), "[####################] 100%");
        assert_eq!(progress_bar(150), "[####################] 100%");
        assert_eq!(progress_bar(-1), "[~~~~~~~~~~~~~~~~~~~~]   ?%");
        assert_eq!(progress_line(-1, ""), None);
        assert_eq!(progress_line(-1, "waiting").as_deref(), Some("[~~~~~~~~~~~~~~~~~~~~]   ?% waiting"));
    }

    #[test]
    fn local_times_carry_their_offset() {
        assert_eq!(local_time(DEC1_0200_BERLIN, &berlin()), "2026-12-01 02:00 +01:00");
        assert_eq!(local_time(DEC1_0200_BERLIN, &TimeZone::UTC), "2026-12-01 01:00 +00:00");
        // Summer time.
        assert_eq!(local_time(DEC1_0200_BERLIN - 150 * 86_400, &berlin()), "2026-07-04 03:00 +02:00");
    }

    fn snapshot() -> StatusSnapshot {
        StatusSnapshot {
            version: "0.1.0".into(),
            gateway_id: "gw-line3".into(),
            state: "observing".into(),
            active_window: "w-20261201-0200".into(),
            active_window_end: DEC1_0200_BERLIN + 90 * 60,
            next_window: "weekly-sun@2026-12-06".into(),
            next_window_start: DEC1_0200_BERLIN + 5 * 86_400,
            last_error: String::new(),
            progress_percent: 50,
            progress_message: "observing health".into(),
            last_outcome: "committed".into(),
            policy_sources: vec!["/etc/otpatch/policy.toml".into(), "/etc/otpatch/policy.d/10-line3.toml".into()],
            segmentation_active: true,
            segmentation_backend: "nftables".into(),
            segmentation_dropped: 17,
            segmentation_ruleset: String::new(),
            committed_not_in_place: vec![],
            rolled_back: vec![],
            booted_slot: "B".into(),
        }
    }

    #[test]
    fn livepatch_table_shows_where_each_patch_came_from() {
        let lp = |name: &str, in_transition: bool, compatible: &str, version: &str, at: &str| LivepatchInfo {
            name: name.into(),
            enabled: true,
            in_transition,
            compatible: compatible.into(),
            version: version.into(),
            committed_at: at.into(),
        };
        let list = vec![lp("lp_fix", false, "gw", "1.3.0", "2026-12-01T02:10:00Z"), lp("by_hand", true, "", "", "")];
        let text = livepatch_table(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("lp_fix") && lines[1].contains("enabled") && lines[1].contains("1.3.0"), "{text}");
        assert!(lines[2].contains("enabling") && lines[2].ends_with("-"), "{text}");
    }

    #[test]
    fn probe_table_shows_state_per_probe() {
        let p = |name: &str, reads: u64, consecutive: u32, tripped: bool| ProbeReport {
            name: name.into(),
            target: "tcp 127.0.0.1:5020 unit 1 holding 0 (u16)".into(),
            critical: name != "flow",
            last_value: if reads > 0 { "42".into() } else { String::new() },
            last_error: if consecutive > 0 { "95 above max 90".into() } else { String::new() },
            consecutive_failures: consecutive,
            trip_after: 3,
            reads,
            failures: u64::from(consecutive),
            tripped,
            last_response_us: if reads > 0 { 1500 } else { 0 },
        };
        let text = probe_table(&[
            p("temp", 10, 0, false),
            p("flow", 10, 1, false),
            p("level", 12, 3, true),
            p("new", 0, 0, false),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("PROBE  TARGET"), "{text}");
        assert!(lines[1].contains("critical") && lines[1].contains(" ok ") && lines[1].contains("1.5 ms"), "{text}");
        assert!(lines[2].contains("advisory") && lines[2].contains("failing 1/3"), "{text}");
        assert!(lines[3].contains("TRIPPED") && lines[3].ends_with("95 above max 90"), "{text}");
        assert!(lines[4].ends_with("-"), "{text}");
    }

    #[test]
    fn status_page() {
        let text = status(&snapshot(), now(), &berlin());
        let expected = "\
otpatchd 0.1.0 on gateway gw-line3
State:          observing
Active window:  w-20261201-0200 (ends 2026-12-01 03:30 +01:00, 42m left)
Next window:    weekly-sun@2026-12-06 (starts 2026-12-06 02:00 +01:00, in 4d23h)
Progress:       [##########----------]  50% observing health
Last error:     none
Last outcome:   committed
Booted slot:    B
Segmentation:   active (nftables), 17 packets dropped
Policy files:   /etc/otpatch/policy.toml
                /etc/otpatch/policy.d/10-line3.toml
";
        assert_eq!(text, expected);
    }

    #[test]
    fn status_page_shows_rolled_back_versions_and_how_to_retry_them() {
        let mut s = snapshot();
        s.rolled_back.push(otpatch_common::api::RolledBackVersion {
            compatible: "acme-gw-x86".into(),
            version: "1.0.2".into(),
            digest: "ab".repeat(32),
            rolled_back_at: Timestamp::from_second(DEC1_0200_BERLIN).expect("valid"),
            why: "health failed: boiler out of range".into(),
        });
        let page = status(&s, now(), &berlin());
        let line = page.lines().find(|l| l.contains("Rolled back")).unwrap_or_else(|| panic!("{page}"));
        assert!(
            line.contains("1.0.2 (acme-gw-x86) on 2026-12-01 02:00 +01:00: health failed: boiler out of range"),
            "{line}"
        );
        assert!(line.contains("otpatchctl retry 1.0.2"), "{line}");
        assert!(!status(&snapshot(), now(), &berlin()).contains("Rolled back"));
    }

    #[test]
    fn status_page_shows_the_ruleset_in_place() {
        let mut s = snapshot();
        s.segmentation_ruleset = "table inet otpatch {\n  chain input {\n  }\n}\n".into();
        let text = status(&s, now(), &berlin());
        assert!(text.contains("Ruleset:        table inet otpatch {\n                  chain input {\n"), "{text}");
        s.segmentation_active = false;
        assert!(!status(&s, now(), &berlin()).contains("Ruleset:"));
    }

    #[test]
    fn idle_status_page() {
        let s = StatusSnapshot {
            version: "0.1.0".into(),
            state: "idle".into(),
            progress_percent: -1,
            last_error: "fetch failed: connection refused".into(),
            ..StatusSnapshot::default()
        };
        let text = status(&s, now(), &TimeZone::UTC);
        assert!(text.starts_with("otpatchd 0.1.0\n"), "{text}");
        assert!(text.contains("Active window:  none\n"), "{text}");
        assert!(text.contains("Next window:    none\n"), "{text}");
        assert!(text.contains("Progress:       -\n"), "{text}");
        assert!(text.contains("Last error:     fetch failed: connection refused\n"), "{text}");
        assert!(text.contains("Segmentation:   off\n"), "{text}");
        assert!(!text.contains("Booted slot"), "a gateway without slots shows none: {text}");
        assert!(text.contains("Policy files:   none\n"), "{text}");
    }

    #[test]
    fn overrun_window() {
        let mut s = snapshot();
        s.active_window_end = now().as_second() - 120;
        let text = status(&s, now(), &berlin());
        assert!(text.contains("overran by 2m)"), "{text}");
    }

    #[test]
    fn table_of_windows() {
        let windows = vec![
            WindowInfo {
                id: "w-20261201-0200".into(),
                source: "one-off".into(),
                timezone: "Europe/Berlin".into(),
                start: DEC1_0200_BERLIN,
                end: DEC1_0200_BERLIN + 5400,
                auto_start: true,
                status: "active".into(),
            },
            WindowInfo {
                id: "nightly@2026-12-02".into(),
                source: "recurring:nightly".into(),
                timezone: "America/New_York".into(),
                start: DEC1_0200_BERLIN + 86_400,
                end: DEC1_0200_BERLIN + 86_400 + 3600,
                auto_start: false,
                status: "scheduled".into(),
            },
        ];
        let text = window_table(&windows, &TimeZone::UTC);
        let expected = "\
ID                  SOURCE             START                    END                      LENGTH  AUTO  STATUS
w-20261201-0200     one-off            2026-12-01 02:00 +01:00  2026-12-01 03:30 +01:00  1h30m   yes   active
nightly@2026-12-02  recurring:nightly  2026-12-01 20:00 -05:00  2026-12-01 21:00 -05:00  1h      no    scheduled
";
        assert_eq!(text, expected);
    }

    #[test]
    fn windows_without_zone_use_the_fallback() {
        let w = WindowInfo {
            id: "w-1".into(),
            source: "one-off".into(),
            timezone: String::new(),
            start: DEC1_0200_BERLIN,
            end: DEC1_0200_BERLIN + 60,
            auto_start: true,
            status: "scheduled".into(),
        };
        let text = window_table(&[w], &berlin());
        assert!(text.contains("2026-12-01 02:00 +01:00  2026-12-01 02:01 +01:00  1m"), "{text}");
    }

    #[test]
    fn audit_lines() {
        let r = AuditRecord::new(
            7,
            "2026-12-01T01:00:05Z".into(),
            "operator",
            Some("w-20261201-0200".into()),
            Some(0),
            serde_json::json!({"action": "apply"}),
            otpatch_common::audit::GENESIS,
        );
        assert_eq!(audit_line(&r), r#"7 2026-12-01T01:00:05Z operator w-20261201-0200 0 {"action":"apply"}"#);
        let r = AuditRecord::new(1, "t".into(), "daemon-start", None, None, serde_json::json!({}), "x");
        assert_eq!(audit_line(&r), "1 t daemon-start - - -");
    }
}
