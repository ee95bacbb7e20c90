#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::civil::{Time, Weekday};

use super::*;

const GATEWAY: &str = r#"[gateway]
id = "gw-test"
compatible = "acme-gw-x86"

[trust]
anchors = ["/etc/otpatch/trust/site-ca.pem"]
"#;

fn src(name: &str, text: &str) -> (PathBuf, String) {
    (PathBuf::from(name), text.to_string())
}

fn no_files() -> LoadOptions {
    LoadOptions::default()
}

#[track_caller]
fn ok(sources: &[(PathBuf, String)]) -> Settings {
    match parse_sources(sources, &no_files()) {
        Ok(s) => s,
        Err(e) => panic!("expected a valid policy, got:\n{e}"),
    }
}

#[track_caller]
fn errors(sources: &[(PathBuf, String)]) -> Vec<PolicyError> {
    match parse_sources(sources, &no_files()) {
        Ok(s) => panic!("expected errors, got {s:#?}"),
        Err(e) => e.0,
    }
}

/// The errors as `file:line:column: key: message` lines.
#[track_caller]
fn error_lines(sources: &[(PathBuf, String)]) -> Vec<String> {
    errors(sources).iter().map(|e| e.to_string()).collect()
}

/// A valid policy with `extra` appended to the gateway/trust part.
fn with(extra: &str) -> Vec<(PathBuf, String)> {
    vec![src("site.toml", &format!("{GATEWAY}{extra}"))]
}

/// A valid policy with top-level keys `extra` put before the gateway/trust part (so `extra` starts on line 1).
fn top(extra: &str) -> Vec<(PathBuf, String)> {
    vec![src("site.toml", &format!("{extra}{GATEWAY}"))]
}

/// Line of the first line of `extra` in `with(extra)`.
const EXTRA_LINE: usize = 7;

#[track_caller]
fn one_error(sources: &[(PathBuf, String)]) -> PolicyError {
    let errs = errors(sources);
    assert_eq!(errs.len(), 1, "expected exactly one error, got: {errs:#?}");
    errs.into_iter().next().unwrap()
}

#[track_caller]
fn assert_error(e: &PolicyError, file: &str, line: usize, column: usize, key: &str, message_part: &str) {
    assert_eq!(
        (e.file.as_path(), e.line, e.column, e.key.as_str()),
        (Path::new(file), line, column, key),
        "wrong place for error: {e}"
    );
    assert!(e.message.contains(message_part), "message {:?} does not contain {message_part:?}", e.message);
}

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

// ----- defaults and values -----

#[test]
fn minimal_policy_gets_every_default() {
    let s = ok(&with(""));
    assert_eq!(s.gateway, Gateway { id: "gw-test".into(), compatible: "acme-gw-x86".into() });
    assert_eq!(s.server, None);
    assert_eq!(
        s.trust,
        Trust {
            anchors: vec![PathBuf::from("/etc/otpatch/trust/site-ca.pem")],
            allowed_signers: vec![],
            allow_downgrade: false,
            crl: None,
            crl_issuer: None,
            time_source: TimeSource::SystemWithFloor,
        }
    );
    assert_eq!(s.limits, Limits { max_window: Duration::from_secs(4 * 3600), max_download: 1 << 30 });
    assert_eq!(s.access, Access { group: "otpatch".into() });
    assert_eq!(
        s.rollback,
        RollbackRules {
            observation: Duration::from_secs(300),
            on_degraded: DegradedAction::Keep,
            allow_force: false,
            transition_timeout: Duration::from_secs(60),
        }
    );
    assert_eq!(
        s.segmentation,
        Segmentation { enabled: true, backend: FirewallBackend::Auto, log_drops: false, allow: vec![] }
    );
    assert!(s.windows.is_empty() && s.processes.is_empty() && s.probes.is_empty());
    assert_eq!(s.sources, vec![PathBuf::from("site.toml")]);
}

#[test]
fn probe_defaults() {
    let s = ok(&with("[probe.p]\ntcp = \"10.0.5.10\"\naddress = 7\nmin = 1\n"));
    assert_eq!(
        s.probes,
        vec![Probe {
            name: "p".into(),
            target: ProbeTarget::Tcp { addr: "10.0.5.10:502".parse().unwrap() },
            unit_id: 1,
            function: RegisterKind::Holding,
            address: 7,
            count: 1,
            data_type: DataType::U16,
            word_order: WordOrder::Big,
            scale: 1.0,
            offset: 0.0,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            trip_after: 3,
            critical: true,
            checks: vec![Check::Range { min: Some(1.0), max: None }],
        }]
    );
}

#[test]
fn rtu_probe_defaults_and_every_check() {
    let s = ok(&with(
        r#"[probe.level]
rtu = "/dev/ttyUSB0"
address = 200
type = "f32"
min = -1.5
max = 6
equals = 3
heartbeat = "5s"
deviation = 0.5
deviation_percent = 10
max_response = "200ms"
"#,
    ));
    let p = &s.probes[0];
    assert_eq!(
        p.target,
        ProbeTarget::Rtu {
            device: "/dev/ttyUSB0".into(),
            baud: 19200,
            parity: Parity::Even,
            stop_bits: 1,
            data_bits: 8
        }
    );
    assert_eq!(p.count, 2, "count defaults to the size of the type");
    assert_eq!(
        p.checks,
        vec![
            Check::Range { min: Some(-1.5), max: Some(6.0) },
            Check::Equals { value: 3.0 },
            Check::Heartbeat { max_stale: Duration::from_secs(5) },
            Check::Deviation { abs: Some(0.5), percent: Some(10.0) },
            Check::ResponseTime { max: Duration::from_millis(200) },
        ]
    );
}

#[test]
fn coils_read_as_bool_by_default() {
    let s = ok(&with("[probe.pump]\ntcp = \"[::1]:1502\"\nfunction = \"coils\"\naddress = 4\nequals = 1\n"));
    let p = &s.probes[0];
    assert_eq!(p.data_type, DataType::Bool);
    assert_eq!(p.count, 1);
    assert_eq!(p.target, ProbeTarget::Tcp { addr: "[::1]:1502".parse().unwrap() });
}

#[test]
fn keyed_tables_are_sorted_by_name() {
    let s = ok(&with(
        r#"[process.zeta]
unit = "zeta.service"
[process.alpha]
pidfile = "/run/alpha.pid"
[process.mid]
exe = "/opt/mid/bin/mid"
user = "plc"
pre_dump = true
"#,
    ));
    let names: Vec<&str> = s.processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["alpha", "mid", "zeta"]);
    assert_eq!(s.processes[0].selector, ProcessSelector::Pidfile("/run/alpha.pid".into()));
    assert_eq!(s.processes[1].selector, ProcessSelector::Exe("/opt/mid/bin/mid".into()));
    assert!(s.processes[1].pre_dump);
    assert_eq!((s.processes[0].user.as_deref(), s.processes[1].user.as_deref()), (None, Some("plc")));
    assert_eq!(s.processes[2].selector, ProcessSelector::Unit("zeta.service".into()));
}

#[test]
fn server_url_is_normalised() {
    let server = |url: &str| {
        let s = ok(&with(&format!(
            "[server]\nurl = \"{url}\"\nca = \"/etc/otpatch/ca.pem\"\nclient_cert = \"/etc/otpatch/c.pem\"\nclient_key = \"/etc/otpatch/c.key\"\n"
        )));
        let s = s.server.unwrap();
        (s.url, s.host, s.port)
    };
    assert_eq!(
        server("https://Patch.Example.net:8443/otpatch"),
        ("https://patch.example.net:8443/otpatch/".into(), "patch.example.net".into(), 8443)
    );
    assert_eq!(
        server("https://patch.example.net"),
        ("https://patch.example.net/".into(), "patch.example.net".into(), 443)
    );
    assert_eq!(server("https://[fd00::5]:9443/a/"), ("https://[fd00::5]:9443/a/".into(), "fd00::5".into(), 9443));
    for bad in ["http://patch.example.net/", "https://:8443/", "https://h:0/", "https://h/x?y", "https://u@h/"] {
        let e = one_error(&with(&format!(
            "[server]\nurl = \"{bad}\"\nca = \"/etc/otpatch/ca.pem\"\nclient_cert = \"/etc/otpatch/c.pem\"\nclient_key = \"/etc/otpatch/c.key\"\n"
        )));
        assert_error(&e, "site.toml", EXTRA_LINE + 1, 7, "server.url", "expected an https:// URL");
    }
}

#[test]
fn server_addresses_can_be_pinned() {
    let base = "[server]\nurl = \"https://patch.example.net/\"\nca = \"/etc/otpatch/ca.pem\"\nclient_cert = \"/etc/otpatch/c.pem\"\nclient_key = \"/etc/otpatch/c.key\"\n";
    assert!(ok(&with(base)).server.unwrap().addresses.is_empty());
    let s = ok(&with(&format!("{base}addresses = [\"10.0.5.20\", \"fd00::5\"]\n")));
    let want: Vec<std::net::IpAddr> = vec!["10.0.5.20".parse().unwrap(), "fd00::5".parse().unwrap()];
    assert_eq!(s.server.unwrap().addresses, want);
    let errs = error_lines(&with(&format!("{base}addresses = [\"10.0.5.300\"]\n")));
    assert!(errs.iter().any(|e| e.contains("server.addresses") && e.contains("an IP address")), "{errs:?}");
}

#[test]
fn windows() {
    let s = ok(&with(
        r#"[window.sunday-night]
days = ["sun", "Saturday"]
start = "02:00"
duration = "90m"
timezone = "Europe/Berlin"
[window.early]
days = ["mon"]
start = 05:30:15
duration = "4h"
timezone = "UTC"
auto_start = false
"#,
    ));
    assert_eq!(s.windows.len(), 2);
    let early = &s.windows[0];
    assert_eq!((early.name.as_str(), early.start, early.auto_start), ("early", Time::constant(5, 30, 15, 0), false));
    let sunday = &s.windows[1];
    assert_eq!(sunday.name, "sunday-night");
    assert_eq!(sunday.days, vec![Weekday::Sunday, Weekday::Saturday]);
    assert_eq!(sunday.start, Time::constant(2, 0, 0, 0));
    assert_eq!(sunday.duration, Duration::from_secs(5400));
    assert_eq!(sunday.timezone, "Europe/Berlin");
    assert!(sunday.auto_start);
}

#[test]
fn integers_are_accepted_for_floats_but_not_the_reverse() {
    let s = ok(&with("[probe.p]\ntcp = \"10.0.0.1\"\naddress = 1\nmin = 5\nscale = 2\n"));
    assert_eq!(s.probes[0].scale, 2.0);
    let e = one_error(&with("[probe.p]\ntcp = \"10.0.0.1\"\naddress = 1.0\nmin = 5\n"));
    assert_error(
        &e,
        "site.toml",
        EXTRA_LINE + 2,
        11,
        "probe.p.address",
        "expected an integer from 0 to 65535, found float 1",
    );
}

// ----- layering -----

#[test]
fn later_files_override_keys_not_tables() {
    let vendor = src(
        "vendor.toml",
        r#"[rollback]
observation = "5m"
on_degraded = "keep"
[limits]
max_window = "4h"
max_download = "1GiB"
"#,
    );
    let site = src(
        "site.toml",
        &format!(
            r#"{GATEWAY}
[rollback]
on_degraded = "rollback"
[probe.boiler-temp]
tcp = "10.0.5.10:502"
address = 100
type = "f32"
min = 50.0
max = 90.0
interval = "1s"
"#
        ),
    );
    let dropin = src(
        "50-dropin.toml",
        r#"rollback.observation = "10m"
[probe.boiler-temp]
interval = "250ms"
[trust]
anchors = ["/etc/otpatch/trust/other.pem", "/etc/otpatch/trust/new.pem"]
"#,
    );
    let s = ok(&[vendor, site, dropin]);
    assert_eq!(s.rollback.observation, Duration::from_secs(600));
    assert_eq!(s.rollback.on_degraded, DegradedAction::Rollback);
    assert_eq!(s.limits.max_download, 1 << 30);
    let p = &s.probes[0];
    assert_eq!(p.interval, Duration::from_millis(250), "drop-in overrides one field");
    assert_eq!((p.address, p.data_type), (100, DataType::F32), "other fields of the probe are kept");
    assert_eq!(p.checks, vec![Check::Range { min: Some(50.0), max: Some(90.0) }]);
    assert_eq!(s.trust.anchors.len(), 2, "arrays are replaced as a whole");
    assert_eq!(
        s.sources,
        vec![PathBuf::from("vendor.toml"), PathBuf::from("site.toml"), PathBuf::from("50-dropin.toml")]
    );
}

#[test]
fn files_on_disk_apply_in_order() {
    let root = tempfile::tempdir().unwrap();
    let paths = PolicyPaths::under(root.path());
    assert_eq!(paths.vendor_dir, root.path().join("usr/lib/otpatch/policy.d"));
    assert_eq!(paths.site_file, root.path().join("etc/otpatch/policy.toml"));
    assert_eq!(paths.site_dir, root.path().join("etc/otpatch/policy.d"));

    // No files at all is an error; missing directories are not.
    let e = load(&paths, &no_files()).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert!(e.0[0].message.starts_with("no policy files found in "), "{e}");

    fs::create_dir_all(&paths.vendor_dir).unwrap();
    fs::create_dir_all(&paths.site_dir).unwrap();
    fs::write(paths.vendor_dir.join("10-b.toml"), "[rollback]\nobservation = \"1m\"\nallow_force = true\n").unwrap();
    fs::write(paths.vendor_dir.join("00-a.toml"), "[rollback]\nobservation = \"2m\"\ntransition_timeout = \"5s\"\n")
        .unwrap();
    fs::write(paths.vendor_dir.join("README"), "not toml at all [").unwrap();
    fs::write(paths.vendor_dir.join("old.toml.bak"), "not toml at all [").unwrap();
    fs::write(&paths.site_file, format!("{GATEWAY}[rollback]\nobservation = \"3m\"\n")).unwrap();
    fs::write(paths.site_dir.join("90-late.toml"), "[access]\ngroup = \"late\"\n").unwrap();
    fs::write(paths.site_dir.join("20-early.toml"), "[access]\ngroup = \"early\"\n[rollback]\nobservation = \"4m\"\n")
        .unwrap();
    fs::create_dir(paths.site_dir.join("dir.toml")).unwrap();

    let files = paths.files().unwrap();
    let expected = vec![
        paths.vendor_dir.join("00-a.toml"),
        paths.vendor_dir.join("10-b.toml"),
        paths.site_file.clone(),
        paths.site_dir.join("20-early.toml"),
        paths.site_dir.join("90-late.toml"),
    ];
    assert_eq!(files, expected);

    let s = load(&paths, &no_files()).unwrap();
    assert_eq!(s.sources, expected);
    assert_eq!(s.access.group, "late");
    assert_eq!(s.rollback.observation, Duration::from_secs(240));
    assert_eq!(s.rollback.transition_timeout, Duration::from_secs(5));
    assert!(s.rollback.allow_force);

    // Without the site file, the drop-ins still apply (but the gateway is missing now).
    fs::remove_file(&paths.site_file).unwrap();
    let e = load(&paths, &no_files()).unwrap_err();
    assert!(e.0.iter().any(|e| e.key == "gateway.id"), "{e}");
}

#[test]
fn unreadable_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    fs::write(&good, GATEWAY).unwrap();
    let gone = dir.path().join("gone.toml");
    let e = load_files(&[good, gone.clone()], &no_files()).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!((e.0[0].file.as_path(), e.0[0].line), (gone.as_path(), 0));
    assert!(e.0[0].message.starts_with("cannot read: "), "{e}");
}

// ----- error classes -----

#[test]
fn syntax_error() {
    let e = one_error(&[src("site.toml", "[gateway]\nid = \"gw\"\ncompatible = acme\n")]);
    assert_error(&e, "site.toml", 3, 14, "", "invalid TOML");
}

#[test]
fn syntax_errors_of_every_file_are_reported() {
    let errs = errors(&[
        src("a.toml", "[gateway\n"),
        src("b.toml", &format!("{GATEWAY}\n[limits]\nmax_window = \n")),
        src("c.toml", "x = 1\nx = 2\n"),
    ]);
    let places: Vec<(&Path, usize)> = errs.iter().map(|e| (e.file.as_path(), e.line)).collect();
    assert!(places.contains(&(Path::new("a.toml"), 1)), "{errs:#?}");
    assert!(places.contains(&(Path::new("b.toml"), 9)), "{errs:#?}");
    assert!(places.contains(&(Path::new("c.toml"), 2)), "{errs:#?}");
    assert!(errs.iter().all(|e| e.message.starts_with("invalid TOML")), "{errs:#?}");
}

#[test]
fn unknown_key_at_top_level() {
    let e = one_error(&with("[limit]\nmax_window = \"1h\"\n"));
    assert_error(&e, "site.toml", EXTRA_LINE, 2, "limit", "unknown key \"limit\" (did you mean \"limits\"?)");
}

#[test]
fn unknown_key_nested() {
    let e =
        one_error(&with("[probe.boiler-temp]\ntcp = \"10.0.5.10:502\"\naddress = 100\nmin = 1\nintervall = \"1s\"\n"));
    assert_error(
        &e,
        "site.toml",
        EXTRA_LINE + 4,
        1,
        "probe.boiler-temp.intervall",
        "unknown key \"intervall\" (did you mean \"interval\"?)",
    );
    let e = one_error(&with("[segmentation.allow.h]\naddress = \"10.0.0.1\"\nport = 1\nproto = \"udp\"\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 3, 1, "segmentation.allow.h.proto", "(did you mean \"protocol\"?)");
    let e = one_error(&with(
        "[server]\nurl = \"https://h/\"\nca = \"/c\"\nclient_cert = \"/c\"\nclient_key = \"/k\"\nid = 1\n",
    ));
    assert_eq!(
        e.to_string(),
        "site.toml:12:1: server.id: unknown key \"id\"; the keys allowed in [server] are: url, ca, client_cert, client_key, addresses"
    );
}

#[test]
fn wrong_type() {
    let e = one_error(&with("[rollback]\nallow_force = \"yes\"\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 1, 15, "rollback.allow_force", "expected true or false, found \"yes\"");
    let e = one_error(&top("window = 5\n"));
    assert_error(&e, "site.toml", 1, 10, "window", "expected a table ([window]), found integer 5");
}

#[test]
fn bad_duration() {
    let e = one_error(&with(
        "[probe.boiler-temp]\ntcp = \"10.0.5.10\"\naddress = 1\nmin = 1\ninterval = \"ten seconds\"\n",
    ));
    assert_eq!(
        e.to_string(),
        "site.toml:11:12: probe.boiler-temp.interval: expected a duration like \"90m\" or \"500ms\", found \"ten seconds\""
    );
    let e = one_error(&with("[probe.p]\ntcp = \"10.0.5.10\"\naddress = 1\nmin = 1\ninterval = \"5ms\"\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 4, 12, "probe.p.interval", "expected a duration of at least 10ms");
    let e = one_error(&with("[rollback]\nobservation = \"0s\"\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 1, 15, "rollback.observation", "expected a duration greater than 0");
    let e = one_error(&with("[limits]\nmax_window = \"25h\"\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 1, 14, "limits.max_window", "expected a duration of at most 1d");
}

#[test]
fn missing_required_key_lists_the_files() {
    let errs = errors(&[
        src("vendor.toml", "[limits]\nmax_window = \"2h\"\n"),
        src("site.toml", "[gateway]\ncompatible = \"x\"\n[trust]\nanchors = [\"/a.pem\"]\n"),
    ]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        errs[0].to_string(),
        "site.toml: gateway.id: required key is missing; it is not set in any of the files read: vendor.toml, site.toml"
    );
    assert_eq!((errs[0].line, errs[0].column), (0, 0));
}

#[test]
fn missing_key_of_a_named_table_points_at_the_table() {
    let e = one_error(&with("[probe.p]\ntcp = \"10.0.0.1\"\nmin = 1\n"));
    assert_error(
        &e,
        "site.toml",
        EXTRA_LINE,
        1,
        "probe.p.address",
        "required key \"address\" is missing from [probe.p]",
    );
    let errs = errors(&with("[server]\nurl = \"https://h/\"\n"));
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["server.ca", "server.client_cert", "server.client_key"]);
    assert!(errs.iter().all(|e| e.line == EXTRA_LINE));
}

#[test]
fn semantic_error_points_at_the_file_that_set_the_key_last() {
    // min > max only because the drop-in raised min: the error is in the drop-in, at its line.
    let site = src(
        "site.toml",
        &format!("{GATEWAY}[probe.boiler-temp]\ntcp = \"10.0.5.10\"\naddress = 1\nmin = 50.0\nmax = 90.0\n"),
    );
    let dropin = src("50-dropin.toml", "# raise the floor\n[probe.boiler-temp]\nmin = 95.0\n");
    let e = one_error(&[site.clone(), dropin]);
    assert_error(&e, "50-dropin.toml", 3, 7, "probe.boiler-temp.min", "min (95) is greater than max (90)");

    // A drop-in that shortens max_window below an existing window.
    let site = src(
        "site.toml",
        &format!(
            "{GATEWAY}[window.sunday]\ndays = [\"sun\"]\nstart = \"02:00\"\nduration = \"3h\"\ntimezone = \"Europe/Berlin\"\n"
        ),
    );
    let dropin = src("60-short.toml", "\n\n[limits]\nmax_window = \"2h\"\n");
    let e = one_error(&[site.clone(), dropin]);
    assert_error(
        &e,
        "60-short.toml",
        4,
        14,
        "limits.max_window",
        "2h is shorter than window \"sunday\", which lasts 3h (set at site.toml:10)",
    );

    // The window set after max_window: the window's duration is blamed.
    let vendor = src("vendor.toml", "[limits]\nmax_window = \"2h\"\n");
    let e = one_error(&[vendor, site.clone()]);
    assert_error(
        &e,
        "site.toml",
        10,
        12,
        "window.sunday.duration",
        "window lasts 3h, longer than limits.max_window (2h, set at vendor.toml:2)",
    );

    // Unknown time zone set in a drop-in.
    let dropin = src("70-tz.toml", "window.sunday.timezone = \"Europe/Berln\"\n");
    let e = one_error(&[site, dropin]);
    assert_error(&e, "70-tz.toml", 1, 26, "window.sunday.timezone", "unknown time zone \"Europe/Berln\"");
}

#[test]
fn many_errors_at_once_sorted_by_file_then_line() {
    let vendor = src("z-vendor.toml", "[rollback]\non_degraded = \"maybe\"\n");
    let site = src(
        "a-site.toml",
        r#"[gateway]
id = "gw line 3"
compatible = ""
[trust]
anchors = []
[limits]
max_download = "12 parsecs"
bogus = 1
[window.w]
days = ["sun", "sunday", "xyz"]
start = "25:00"
duration = "1h"
timezone = "Europe/Berlin"
[process.p]
unit = "softplc"
[probe.p]
tcp = "10.0.0.1"
rtu = "/dev/ttyS0"
address = 1
function = "coils"
type = "u16"
"#,
    );
    let lines = error_lines(&[vendor, site]);
    assert_eq!(
        lines,
        [
            r#"z-vendor.toml:2:15: rollback.on_degraded: expected one of "keep", "rollback", found "maybe""#,
            r#"a-site.toml:2:6: gateway.id: expected a gateway id made of letters, digits, ".", "_" and "-", found "gw line 3""#,
            r#"a-site.toml:3:14: gateway.compatible: expected a non-empty string, found """#,
            r#"a-site.toml:5:11: trust.anchors: expected at least one trust anchor, found an empty array"#,
            r#"a-site.toml:7:16: limits.max_download: expected a size greater than 0 like "512MiB" or "1GiB", found "12 parsecs""#,
            r#"a-site.toml:8:1: limits.bogus: unknown key "bogus"; the keys allowed in [limits] are: max_window, max_download"#,
            r#"a-site.toml:10:16: window.w.days: "sun" is listed twice"#,
            r#"a-site.toml:10:26: window.w.days: expected a day of the week ("mon" .. "sun"), found "xyz""#,
            r#"a-site.toml:11:9: window.w.start: expected a local time like "02:00", found "25:00""#,
            r#"a-site.toml:15:8: process.p.unit: expected a systemd service unit like "softplc.service", found "softplc""#,
            r#"a-site.toml:16:1: probe.p: expected at least one check (min, max, equals, heartbeat, deviation, deviation_percent or max_response), found none"#,
            r#"a-site.toml:18:7: probe.p.rtu: expected exactly one of tcp or rtu, found both"#,
            r#"a-site.toml:21:8: probe.p.type: coils and discrete inputs are single bits: expected type "bool", found "u16""#,
        ]
    );
}

#[test]
fn probe_rules() {
    let probe = |body: &str| with(&format!("[probe.p]\n{body}"));
    // Serial settings with tcp.
    let e = one_error(&probe("tcp = \"10.0.0.1\"\naddress = 1\nmin = 1\nbaud = 9600\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 4, 1, "probe.p.baud", "baud is only valid with rtu");
    // Neither tcp nor rtu.
    let e = one_error(&probe("address = 1\nmin = 1\n"));
    assert_error(&e, "site.toml", EXTRA_LINE, 1, "probe.p", "expected exactly one of tcp (Modbus TCP) or rtu");
    // bool with registers.
    let e = one_error(&probe("tcp = \"10.0.0.1\"\naddress = 1\ntype = \"bool\"\nequals = 1\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 3, 8, "probe.p.type", "type \"bool\" is only for coils");
    // count too small for the type.
    let e = one_error(&probe("tcp = \"10.0.0.1\"\naddress = 1\ncount = 1\ntype = \"u32\"\nmin = 1\n"));
    assert_error(
        &e,
        "site.toml",
        EXTRA_LINE + 4,
        8,
        "probe.p.type",
        "count 1 is too small for type \"u32\", which needs 2",
    );
    // count too large.
    let e = one_error(&probe("tcp = \"10.0.0.1\"\naddress = 1\ncount = 126\nmin = 1\n"));
    assert_error(
        &e,
        "site.toml",
        EXTRA_LINE + 3,
        9,
        "probe.p.count",
        "expected an integer from 1 to 125, found integer 126",
    );
    // heartbeat not longer than interval.
    let e = one_error(&probe("tcp = \"10.0.0.1\"\naddress = 1\nheartbeat = \"1s\"\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 3, 13, "probe.p.heartbeat", "heartbeat (1s) must be longer than");
    // scale zero, unit id, bad address, negative deviation.
    let errs = errors(&probe(
        "tcp = \"10.0.0.1:0\"\naddress = 1\nscale = 0.0\nunit_id = 248\ndeviation = -1\nstop_bits = 3\n",
    ));
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["probe.p.tcp", "probe.p.scale", "probe.p.unit_id", "probe.p.deviation", "probe.p.stop_bits"]);
    // RTU serial settings are checked.
    let e = one_error(&probe("rtu = \"/dev/ttyS0\"\naddress = 1\nmin = 1\nparity = \"mark\"\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 4, 10, "probe.p.parity", "expected one of \"none\", \"even\", \"odd\"");
}

#[test]
fn process_needs_exactly_one_selector() {
    let e = one_error(&with("[process.p]\ntcp_established = true\n"));
    assert_error(
        &e,
        "site.toml",
        EXTRA_LINE,
        1,
        "process.p",
        "expected exactly one of unit, pidfile or exe, found none",
    );
    let e = one_error(&with("[process.p]\nexe = \"/usr/bin/plc\"\nunit = \"plc.service\"\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 2, 8, "process.p.unit", "found unit and exe");
    let e = one_error(&with("[process.p]\npidfile = \"run/p.pid\"\n"));
    assert_error(
        &e,
        "site.toml",
        EXTRA_LINE + 1,
        11,
        "process.p.pidfile",
        "expected an absolute path, found \"run/p.pid\"",
    );
    let e = one_error(&with(
        "[process.p]
unit = \"plc.service\"
user = \"plc\"
",
    ));
    assert_error(&e, "site.toml", EXTRA_LINE + 2, 8, "process.p.user", "user applies to an exe selector only");
    let e = one_error(&with(
        "[process.p]
exe = \"/usr/bin/plc\"
user = \"plc user\"
",
    ));
    assert_error(&e, "site.toml", EXTRA_LINE + 2, 8, "process.p.user", "expected a user name or a numeric uid");
}

#[test]
fn names_of_keyed_tables_are_checked() {
    let e = one_error(&with(
        "[window.\"sunday night\"]\ndays = [\"sun\"]\nstart = \"02:00\"\nduration = \"1h\"\ntimezone = \"UTC\"\n",
    ));
    assert_error(&e, "site.toml", EXTRA_LINE, 9, "window.\"sunday night\"", "invalid name \"sunday night\"");
}

#[test]
fn flows() {
    let s = ok(&with(
        "[segmentation.allow.ntp]\naddress = \"10.0.0.1\"\nport = 123\nprotocol = \"udp\"\ndirection = \"both\"\n\
         routed = true\n[segmentation.allow.historian]\naddress = \"fd00::20\"\nport = 4840\n",
    ));
    assert_eq!(
        s.segmentation.allow,
        vec![
            Flow {
                name: "historian".into(),
                address: "fd00::20".parse().unwrap(),
                port: 4840,
                protocol: Protocol::Tcp,
                direction: Direction::Outbound,
                routed: false,
            },
            Flow {
                name: "ntp".into(),
                address: "10.0.0.1".parse().unwrap(),
                port: 123,
                protocol: Protocol::Udp,
                direction: Direction::Both,
                routed: true,
            },
        ]
    );
    let errs = error_lines(&with("[segmentation.allow.x]\naddress = \"10.0.0.300\"\nport = 0\n"));
    assert_eq!(
        errs,
        [
            "site.toml:8:11: segmentation.allow.x.address: expected an IP address like \"10.0.5.20\", found \"10.0.0.300\"",
            "site.toml:9:8: segmentation.allow.x.port: expected an integer from 1 to 65535, found integer 0",
        ]
    );
}

#[test]
fn display_formats() {
    let e = PolicyError {
        file: "a.toml".into(),
        line: 3,
        column: 7,
        key: "probe.x.interval".into(),
        message: "bad".into(),
    };
    assert_eq!(e.to_string(), "a.toml:3:7: probe.x.interval: bad");
    let no_pos = PolicyError { line: 0, column: 0, ..e.clone() };
    assert_eq!(no_pos.to_string(), "a.toml: probe.x.interval: bad");
    assert_eq!(
        PolicyErrors(vec![e, no_pos]).to_string(),
        "a.toml:3:7: probe.x.interval: bad\na.toml: probe.x.interval: bad"
    );
    let e = parse_sources(&[], &no_files()).unwrap_err();
    assert_eq!(e.to_string(), "no policy files given");
}

#[test]
fn columns_count_characters() {
    let errs = errors(&top("rollback = { \"é\" = 1, observation = \"x\" }\n"));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_error(&errs[0], "site.toml", 1, 14, "rollback.\"é\"", "unknown key \"é\"");
    assert_error(&errs[1], "site.toml", 1, 37, "rollback.observation", "expected a duration");
}

// ----- the example policies -----

#[test]
fn example_policies_are_valid_on_top_of_the_vendor_defaults() {
    let dir = policies_dir();
    let vendor = dir.join("vendor/00-defaults.toml");
    let mut examples: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    let names: Vec<String> = examples.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["demo.toml", "site-minimal.toml", "water-treatment.toml"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    for example in &examples {
        let s = load_files(&[vendor.clone(), example.clone()], &no_files())
            .unwrap_or_else(|e| panic!("{} is not valid:\n{e}", example.display()));
        assert_eq!(s.sources, vec![vendor.clone(), example.clone()]);
    }
}

#[test]
fn vendor_defaults_alone_are_not_a_policy() {
    let vendor = policies_dir().join("vendor/00-defaults.toml");
    let e = load_files(std::slice::from_ref(&vendor), &no_files()).unwrap_err();
    let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["gateway.id", "gateway.compatible", "trust.anchors"], "{e}");
    assert!(e.0.iter().all(|e| e.file == vendor && e.line == 0));
}

#[test]
fn vendor_defaults_equal_the_built_in_defaults() {
    let dir = policies_dir();
    let with_vendor =
        load_files(&[dir.join("vendor/00-defaults.toml"), dir.join("site-minimal.toml")], &no_files()).unwrap();
    let without = load_files(&[dir.join("site-minimal.toml")], &no_files()).unwrap();
    assert_eq!(Settings { sources: vec![], ..with_vendor }, Settings { sources: vec![], ..without });
}

#[test]
fn demo_policy() {
    let dir = policies_dir();
    let s = load_files(&[dir.join("vendor/00-defaults.toml"), dir.join("demo.toml")], &no_files()).unwrap();
    assert_eq!(s.gateway, Gateway { id: "demo-gw".into(), compatible: "otpatch-demo".into() });
    assert_eq!(s.trust.anchors, vec![PathBuf::from("/etc/otpatch/trust/demo-ca.pem")]);
    assert_eq!(s.rollback.observation, Duration::from_secs(3));
    assert_eq!(s.limits.max_window, Duration::from_secs(3600));
    assert!(s.windows.is_empty());
    assert_eq!(s.probes.len(), 1);
    assert_eq!(s.probes[0].target, ProbeTarget::Tcp { addr: "127.0.0.1:5020".parse().unwrap() });
    assert!(matches!(s.probes[0].checks[..], [Check::Range { min: Some(_), max: Some(_) }]));
}

#[test]
fn water_treatment_policy() {
    let dir = policies_dir();
    let s = load_files(&[dir.join("vendor/00-defaults.toml"), dir.join("water-treatment.toml")], &no_files()).unwrap();
    let server = s.server.as_ref().unwrap();
    assert_eq!(server.url, "https://patch.wtp-north.example.net:8443/otpatch/");
    assert_eq!(s.windows.len(), 2);
    assert!(s.windows.iter().all(|w| w.timezone == "Europe/Berlin"));
    assert_eq!(s.processes.len(), 2);
    assert_eq!(s.probes.len(), 4);
    assert_eq!(s.probes.iter().filter(|p| matches!(p.target, ProbeTarget::Rtu { .. })).count(), 1);
    assert!(!s.segmentation.allow.is_empty());
}

// ----- check_files -----

#[test]
fn check_files_looks_under_the_root() {
    let root = tempfile::tempdir().unwrap();
    let policy = format!(
        r#"{GATEWAY}crl = "/etc/otpatch/trust/site.crl"
[server]
url = "https://patch.example.net/"
ca = "/etc/otpatch/server-ca.pem"
client_cert = "/etc/otpatch/client.pem"
client_key = "/etc/otpatch"
"#
    );
    let opts = LoadOptions { check_files: true, file_root: root.path().to_path_buf() };
    let e = parse_sources(&[src("site.toml", &policy)], &opts).unwrap_err();
    let places: Vec<(usize, &str)> = e.0.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        places,
        [
            (6, "trust.anchors"),
            (7, "trust.crl"),
            (10, "server.ca"),
            (11, "server.client_cert"),
            (12, "server.client_key"),
        ],
        "{e}"
    );
    let shown = root.path().join("etc/otpatch/trust/site-ca.pem").display().to_string();
    assert!(e.0[0].message.starts_with("cannot read \"/etc/otpatch/trust/site-ca.pem\" (looked up as "), "{e}");
    assert!(e.0[0].message.contains(&shown), "{e}");

    fs::create_dir_all(root.path().join("etc/otpatch/trust")).unwrap();
    for file in ["trust/site-ca.pem", "trust/site.crl", "server-ca.pem", "client.pem"] {
        fs::write(root.path().join("etc/otpatch").join(file), "x").unwrap();
    }
    let e = parse_sources(&[src("site.toml", &policy)], &opts).unwrap_err();
    // The files exist now; with the verifier built in, the CRL is read as it will read it (and "x" is no CRL).
    let crl_read = usize::from(cfg!(feature = "bundle"));
    assert_eq!(e.0.len(), 1 + crl_read, "{e}");
    if crl_read == 1 {
        assert_error(&e.0[0], "site.toml", 7, 7, "trust.crl", "the CRL cannot be used");
    }
    assert_error(&e.0[crl_read], "site.toml", 12, 14, "server.client_key", "is not a regular file");

    // Without check_files nothing is looked up.
    parse_sources(&[src("site.toml", &policy)], &no_files()).unwrap();
}

#[test]
fn ab_rules_default_to_staging_and_name_bad_values() {
    let s = ok(&with(""));
    assert_eq!(s.ab, AbRules::default());
    assert_eq!(s.ab.reboot, RebootPolicy::Never);
    let s = ok(&with(
        "[ab]\nreboot = \"in-window\"\nreboot_timeout = \"90s\"\nfallback_bundle = \"gateway-os-2.1.raucb\"\n",
    ));
    assert_eq!(s.ab.reboot, RebootPolicy::InWindow);
    assert_eq!(s.ab.reboot_timeout, Duration::from_secs(90));
    assert_eq!(s.ab.fallback_bundle.as_deref(), Some("gateway-os-2.1.raucb"));
    let e = one_error(&with("[ab]\nreboot = \"always\"\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 1, 10, "ab.reboot", "expected one of \"never\", \"in-window\"");
    let e = one_error(&with("[ab]\nfallback_bundle = \"../etc/shadow\"\n"));
    assert_error(&e, "site.toml", EXTRA_LINE + 1, 19, "ab.fallback_bundle", "RAUC bundle's file name");
}
